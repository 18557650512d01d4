//! The accept loop of the status socket and the metrics listener, with a
//! connection cap, a header/idle timeout and a maximum connection age.
//!
//! Why not `axum::serve`: it accepts without limit and keeps idle
//! connections forever, so 1,100 idle connections (any local user can open
//! them on the metrics port) used every descriptor of the agent; health
//! checks then failed with "too many open files", and so did the BIRD
//! passes that should have withdrawn (issue 14). Here every listener has a
//! budget ([`Limits::max_connections`]): a connection over it is answered a
//! fixed `503` with a non-blocking write and closed at once, so refusing
//! costs a descriptor for microseconds, never for the flooder's lifetime.
//! Within the budget, hyper closes a connection that has not sent a complete
//! request head within [`Limits::header_timeout`] (this also bounds idle
//! keep-alive connections: the timer runs while hyper waits for the next
//! head), and no connection lives longer than [`Limits::max_age`]
//! (slow bodies, slow readers). `docs/security.md`, "Descriptor budget".
//!
//! Accept errors (`EMFILE` from something else using descriptors) are
//! logged, rate-limited, and retried after a short pause instead of spinning.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

/// What a connection over the cap gets before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 71\r\n\r\n\
{\"error\":\"too many connections to lb-agent; retry in a moment please\"}\n";

/// Pause after an accept error other than an aborted connection.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// At most one warning per interval about refusals or accept errors.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The budget of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Name in logs (`status socket`, `metrics listener`).
    pub what: &'static str,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Longest wait for a complete request head, idle keep-alive included.
    pub header_timeout: Duration,
    /// Longest life of a connection.
    pub max_age: Duration,
}

/// A listener whose connections can be refused without blocking.
pub(crate) trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
    /// Writes as much of `bytes` as the socket buffer takes, never waiting.
    fn try_write(io: &Self::Io, bytes: &[u8]);
}

impl Accept for UnixListener {
    type Io = UnixStream;
    async fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(s, _)| s)
    }
    fn try_write(io: &UnixStream, bytes: &[u8]) {
        let _ = io.try_write(bytes);
    }
}

impl Accept for TcpListener {
    type Io = TcpStream;
    async fn accept(&self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }
    fn try_write(io: &TcpStream, bytes: &[u8]) {
        let _ = io.try_write(bytes);
    }
}

/// Rate-limited warnings: counts events, logs at most once per interval.
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn new() -> Self {
        Throttle {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(count since the last warning)` when it is time to warn again.
    fn tick(&mut self) -> Option<u64> {
        self.suppressed += 1;
        let due = self.last.is_none_or(|t| t.elapsed() >= WARN_INTERVAL);
        if due {
            self.last = Some(crate::clock::now());
            Some(std::mem::take(&mut self.suppressed))
        } else {
            None
        }
    }
}

/// Serves `router` on `listener` until `cancel` fires, within `limits`.
/// `peer` computes each connection's [`ConnectInfo`] (the UNIX socket's
/// SO_PEERCRED) at accept time. After cancellation it stops accepting,
/// asks every open connection to finish its request, and returns once
/// they are all closed (each is bounded by `max_age`).
pub(crate) async fn serve<L, P>(
    listener: L,
    router: Router,
    limits: Limits,
    peer: impl Fn(&L::Io) -> P + Send + 'static,
    cancel: CancellationToken,
) where
    L: Accept,
    P: Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let mut refused = Throttle::new();
    let mut errors = Throttle::new();
    loop {
        let io = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let io = match io {
            Ok(io) => io,
            Err(e) if is_connection_error(&e) => continue,
            Err(error) => {
                if let Some(n) = errors.tick() {
                    warn!(%error, listener = limits.what, errors = n, "accepting a connection failed; retrying");
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            L::try_write(&io, REFUSAL);
            drop(io);
            if let Some(n) = refused.tick() {
                warn!(
                    listener = limits.what,
                    max_connections = limits.max_connections,
                    refused = n,
                    "connection cap reached; refusing new connections"
                );
            }
            continue;
        };
        let info = ConnectInfo(peer(&io));
        let router = router.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _permit = permit;
            serve_one(io, router, info, limits, cancel).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// One HTTP/1.1 connection, bounded by the header timeout and `max_age`.
async fn serve_one<I, P>(
    io: I,
    router: Router,
    info: ConnectInfo<P>,
    limits: Limits,
    cancel: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Clone + Send + Sync + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        let router = router.clone();
        async move {
            Ok::<_, Infallible>(
                router
                    .oneshot(req.map(axum::body::Body::new))
                    .await
                    .unwrap_or_else(|never| match never {}),
            )
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(limits.max_age);
    tokio::pin!(deadline);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(error) = r {
                    debug!(%error, listener = limits.what, "connection ended with an error");
                }
                return;
            }
            _ = &mut deadline => {
                debug!(listener = limits.what, max_age = ?limits.max_age, "connection closed at its maximum age");
                return;
            }
            _ = cancel.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
