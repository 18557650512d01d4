//! The probes: one async function per check kind, one deadline per check.
//!
//! Checks run in-process on the agent's runtime (no fork, except `exec`),
//! because the target is thousands of checks per second on a host whose CPU
//! belongs to HAProxy. Each check gets a single deadline covering every
//! phase; a timeout names the phase it hit ("timeout after 500ms (connect)")
//! so an operator can tell a dead listener from a slow backend.
//!
//! Connection handling, chosen for cost and for the peer's sake:
//! - `tcp`: connect, then close with a zero linger (RST): no TIME_WAIT
//!   entry per check on this host.
//! - `http`: hyper's HTTP/1.1 client connection driven inline (no extra
//!   task), `Connection: close`, status decided on the response head, at most
//!   [`MAX_BODY`] bytes of body read so HAProxy sees a complete exchange.
//! - `tls`: see `tls` for the verification policy; a handshake-only check
//!   closes with close_notify and waits for the peer's close, so the server
//!   never logs it as a failed handshake.
//!
//! Errors are short, lower-case and stable enough to show on the status
//! socket and in VIP withdrawal reasons.

use std::error::Error as _;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderValue, CONNECTION, HOST, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;

use super::spec::{HttpRequestSpec, Probe};
use super::{exec, fmt_duration, tls, CheckResult};

/// Most response-body bytes read per HTTP check; the rest is dropped with
/// the connection.
pub const MAX_BODY: usize = 16 * 1024;

const USER_AGENT_VALUE: &str = concat!("lb-agent/", env!("CARGO_PKG_VERSION"), " health-check");

/// Runs probes. Cheap to clone: the TLS configuration is built once and shared.
#[derive(Clone)]
pub struct Checker {
    tls: TlsConnector,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker").finish_non_exhaustive()
    }
}

impl Checker {
    /// Builds the shared TLS client configuration (ring provider, policy in
    /// the `tls` module docs).
    pub fn new() -> Result<Self, rustls::Error> {
        Ok(Checker {
            tls: TlsConnector::from(tls::client_config()?),
        })
    }

    /// Runs one probe with `limit` as its deadline. Never panics on I/O
    /// errors: every failure is a failing [`CheckResult`].
    pub async fn check(&self, probe: &Probe, limit: Duration) -> CheckResult {
        let start = Instant::now();
        let deadline = start + limit;
        let outcome = match probe {
            Probe::Tcp { addr } => tcp(*addr, deadline, limit).await,
            Probe::Http { addr, request } => http(*addr, request, deadline, limit).await,
            Probe::Tls { addr, sni, request } => {
                self.tls(*addr, sni.as_deref(), request.as_ref(), deadline, limit)
                    .await
            }
            Probe::Exec { argv } => exec::run(argv, limit).await,
        };
        let latency = start.elapsed();
        match outcome {
            Ok(()) => CheckResult::pass(latency),
            Err(error) => CheckResult::fail(latency, error),
        }
    }

    async fn tls(
        &self,
        addr: SocketAddr,
        sni: Option<&str>,
        request: Option<&HttpRequestSpec>,
        deadline: Instant,
        limit: Duration,
    ) -> Result<(), String> {
        // An IP address as server name makes rustls send no SNI.
        let name = match sni {
            Some(host) => ServerName::try_from(host.to_string())
                .map_err(|_| format!("invalid tls server name {host:?}"))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let stream = connect(addr, deadline, limit).await?;
        let _ = stream.set_nodelay(true);
        let tls = timeout_at(deadline, self.tls.connect(name, stream))
            .await
            .map_err(|_| timeout_text(limit, "tls handshake"))?
            .map_err(|e| format!("tls handshake: {}", tls_error_text(&e)))?;
        match request {
            Some(request) => exchange(tls, addr, request, deadline, limit).await,
            None => {
                close_tls(tls, deadline).await;
                Ok(())
            }
        }
    }
}

/// Ends a handshake-only check politely: close_notify, then wait (at most
/// until the deadline) for the peer to close. An abrupt close here would
/// reach the server before it processed our Finished message, and HAProxy
/// would log a failed handshake for every check. The check already passed;
/// nothing here can fail it.
async fn close_tls<S>(mut tls: tokio_rustls::client::TlsStream<S>, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = timeout_at(deadline, async {
        tls.shutdown().await?;
        let mut sink = [0u8; 512];
        // Ends at EOF or error; bounded by the deadline.
        while tls.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

async fn tcp(addr: SocketAddr, deadline: Instant, limit: Duration) -> Result<(), String> {
    let stream = connect(addr, deadline, limit).await?;
    // Close with RST: the check is done and a FIN would leave a TIME_WAIT
    // entry on this host for each of thousands of checks per second.
    let _ = stream.set_zero_linger();
    Ok(())
}

async fn http(
    addr: SocketAddr,
    request: &HttpRequestSpec,
    deadline: Instant,
    limit: Duration,
) -> Result<(), String> {
    let stream = connect(addr, deadline, limit).await?;
    // The request goes out in one write; don't let Nagle hold it back.
    let _ = stream.set_nodelay(true);
    exchange(stream, addr, request, deadline, limit).await
}

async fn connect(
    addr: SocketAddr,
    deadline: Instant,
    limit: Duration,
) -> Result<TcpStream, String> {
    let stream = timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| timeout_text(limit, "connect"))?
        .map_err(|e| io_error_text(&e))?;
    Ok(stream)
}

/// One HTTP/1.1 GET over an established stream (plain or TLS).
async fn exchange<S>(
    io: S,
    addr: SocketAddr,
    spec: &HttpRequestSpec,
    deadline: Instant,
    limit: Duration,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let host = match &spec.host {
        Some(h) => HeaderValue::from_str(h),
        None => HeaderValue::from_str(&addr.to_string()),
    }
    .map_err(|_| "invalid host header".to_string())?;
    let request = Request::get(spec.path.as_str())
        .header(HOST, host)
        .header(CONNECTION, HeaderValue::from_static("close"))
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("invalid request: {e}"))?;

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| hyper_error_text(&e))?;
    let response = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        // Read (a bounded part of) the body so the server sees a complete
        // exchange; its content does not matter. Each turn consumes a frame
        // or ends the loop.
        let mut body = response.into_body();
        let mut read = 0usize;
        while read < MAX_BODY {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(_)) | None => break,
            }
        }
        Ok::<_, hyper::Error>(status)
    };

    let exchanged = timeout_at(deadline, async {
        tokio::pin!(conn);
        tokio::pin!(response);
        tokio::select! {
            biased;
            r = &mut response => r,
            c = &mut conn => match c {
                Err(e) => Err(e),
                // The connection ended cleanly: the response is complete.
                Ok(()) => response.await,
            },
        }
    })
    .await
    .map_err(|_| timeout_text(limit, "waiting for response"))?
    .map_err(|e| hyper_error_text(&e))?;
    judge_status(exchanged, &spec.expect_status)
}

/// Pass iff `status` is listed, or is 2xx/3xx when the list is empty.
fn judge_status(status: StatusCode, expect: &[u16]) -> Result<(), String> {
    let code = status.as_u16();
    if expect.is_empty() {
        if (200..400).contains(&code) {
            return Ok(());
        }
        return Err(format!("status {code}, expected 2xx/3xx"));
    }
    if expect.contains(&code) {
        return Ok(());
    }
    let list: Vec<String> = expect.iter().map(u16::to_string).collect();
    Err(format!("status {code}, expected {}", list.join("/")))
}

fn timeout_text(limit: Duration, phase: &str) -> String {
    format!("timeout after {} ({phase})", fmt_duration(limit))
}

/// Short text for socket errors: the kind operators know, without the
/// "(os error 111)" suffix.
fn io_error_text(e: &io::Error) -> String {
    use io::ErrorKind as K;
    let text = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::UnexpectedEof => "connection closed by peer",
        K::BrokenPipe => "broken pipe",
        K::AddrNotAvailable => "address not available",
        K::NetworkUnreachable => "network unreachable",
        K::HostUnreachable => "host unreachable",
        K::TimedOut => "timed out",
        K::PermissionDenied => "permission denied",
        _ => return strip_os_error(&e.to_string()).to_lowercase(),
    };
    text.to_string()
}

fn strip_os_error(s: &str) -> &str {
    match s.find(" (os error") {
        Some(i) => &s[..i],
        None => s,
    }
}

/// TLS failures arrive as io errors wrapping a rustls error; show the latter.
fn tls_error_text(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            "peer does not speak tls".to_string()
        }
        Some(tls) => tls.to_string(),
        None => io_error_text(e),
    }
}

fn hyper_error_text(e: &hyper::Error) -> String {
    if e.is_timeout() {
        return "timeout".to_string();
    }
    // Prefer the underlying socket error ("connection reset") when there is one.
    let mut source = e.source();
    // The chain is short (hyper wraps once or twice); bound the walk anyway.
    for _ in 0..4 {
        let Some(s) = source else { break };
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return format!("http: {}", tls_error_text(io));
        }
        source = s.source();
    }
    format!("http: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_judgement() {
        let ok = |c: u16, e: &[u16]| judge_status(StatusCode::from_u16(c).expect("code"), e);
        assert_eq!(ok(200, &[]), Ok(()));
        assert_eq!(ok(302, &[]), Ok(()));
        assert_eq!(ok(399, &[]), Ok(()));
        assert_eq!(ok(199, &[]), Err("status 199, expected 2xx/3xx".into()));
        assert_eq!(ok(503, &[]), Err("status 503, expected 2xx/3xx".into()));
        assert_eq!(ok(404, &[]), Err("status 404, expected 2xx/3xx".into()));
        assert_eq!(ok(503, &[503]), Ok(()));
        assert_eq!(ok(204, &[200]), Err("status 204, expected 200".into()));
        assert_eq!(
            ok(302, &[200, 204]),
            Err("status 302, expected 200/204".into())
        );
    }

    #[test]
    fn io_errors_are_short() {
        let refused = io::Error::from_raw_os_error(libc_econnrefused());
        assert_eq!(io_error_text(&refused), "connection refused");
        let other = io::Error::other("Something Odd (os error 99)");
        assert_eq!(io_error_text(&other), "something odd");
    }

    fn libc_econnrefused() -> i32 {
        nix::errno::Errno::ECONNREFUSED as i32
    }
}
