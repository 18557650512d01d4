//! Real local servers for the health-check tests, all on 127.0.0.1:0, each
//! stopped when its handle is dropped (the accept loop is aborted and every
//! connection it holds is closed with it).
//!
//! Included with `#[path]` by the `health_*` test crates; not every crate
//! uses every server.
#![allow(dead_code)]
#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A server task; aborted on drop.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("local addr");
    (l, addr)
}

/// Shared state of the HTTP test server: the status `/` answers with, and
/// when each request arrived.
#[derive(Clone)]
pub struct HttpState {
    pub status: Arc<AtomicU16>,
    pub hits: Arc<Mutex<Vec<Instant>>>,
}

impl HttpState {
    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    pub fn hits(&self) -> Vec<Instant> {
        self.hits.lock().expect("lock").clone()
    }
}

/// An axum HTTP/1.1 server:
/// - `/` answers the settable status (initially 200) and logs the hit;
/// - `/healthz` answers 200 only with `Host: svc.example.test`, else 421;
/// - `/status/{code}` answers `code`;
/// - `/big` answers 200 with a 4 MiB body.
pub async fn http_server() -> (Server, HttpState) {
    let state = HttpState {
        status: Arc::new(AtomicU16::new(200)),
        hits: Arc::new(Mutex::new(Vec::new())),
    };
    let app = Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/status/{code}", get(status))
        .route("/big", get(|| async { vec![b'x'; 4 << 20] }))
        .with_state(state.clone());
    let (l, addr) = listener().await;
    let task = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (Server { addr, task }, state)
}

async fn root(State(s): State<HttpState>) -> StatusCode {
    s.hits.lock().expect("lock").push(Instant::now());
    StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::IM_A_TEAPOT)
}

async fn healthz(headers: HeaderMap) -> StatusCode {
    match headers.get("host").and_then(|h| h.to_str().ok()) {
        Some("svc.example.test") => StatusCode::OK,
        _ => StatusCode::MISDIRECTED_REQUEST,
    }
}

async fn status(axum::extract::Path(code): axum::extract::Path<u16>) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT)
}

/// Accepts connections and reads from them, but never answers.
pub async fn silent_server() -> Server {
    let (l, addr) = listener().await;
    let task = tokio::spawn(async move {
        // A JoinSet aborts its tasks when dropped with the accept loop.
        let mut held = tokio::task::JoinSet::new();
        while let Ok((s, _)) = l.accept().await {
            while held.try_join_next().is_some() {}
            held.spawn(async move {
                let mut s = s;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    Server { addr, task }
}

/// Accepts, reads whatever arrives first, then closes without answering.
pub async fn closing_server() -> Server {
    let (l, addr) = listener().await;
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            drop(s);
        }
    });
    Server { addr, task }
}

/// An address nothing listens on: bound, then released.
pub async fn refused_addr() -> SocketAddr {
    let (l, addr) = listener().await;
    drop(l);
    addr
}

/// A listener whose accept queue is full, so a further connect gets no
/// SYN-ACK and hangs (Linux drops SYNs on a full accept queue). Stays on
/// loopback; the held connections close when the value is dropped.
pub struct FullBacklog {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _held: Vec<TcpStream>,
}

pub async fn full_backlog() -> FullBacklog {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut held = Vec::new();
    // Fill the queue: connect until one attempt hangs. Bounded: a backlog
    // of 0 holds one or two connections.
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => panic!("filling backlog: {e}"),
            Err(_) => {
                return FullBacklog {
                    addr,
                    _listener: listener,
                    _held: held,
                }
            }
        }
    }
    panic!("accept queue never filled");
}

/// A self-signed certificate for `svc.example.test` and its key.
pub struct TestCert {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

pub fn test_cert() -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec!["svc.example.test".to_string()])
        .expect("generate cert");
    TestCert {
        cert: ck.cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the TLS server saw.
#[derive(Clone, Default)]
pub struct TlsSeen {
    /// SNI of each completed handshake (`None`: no SNI sent).
    pub sni: Arc<Mutex<Vec<Option<String>>>>,
    /// Whether each completed handshake resumed a session.
    pub resumed: Arc<Mutex<Vec<bool>>>,
}

impl TlsSeen {
    pub fn sni(&self) -> Vec<Option<String>> {
        self.sni.lock().expect("lock").clone()
    }

    pub fn resumed(&self) -> Vec<bool> {
        self.resumed.lock().expect("lock").clone()
    }
}

/// A rustls server answering every request on a completed handshake with
/// `status` (a minimal HTTP/1.1 responder; the request head is read first).
pub async fn tls_server(status: u16) -> (Server, TlsSeen) {
    let c = test_cert();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![c.cert], c.key)
        .expect("server config");
    tls_server_with(Arc::new(config), status).await
}

/// A rustls server that presents the certificate of one key pair but signs
/// the handshake with another: a client checking handshake signatures must
/// refuse it.
pub async fn tls_server_wrong_key() -> Server {
    let presented = test_cert();
    let other = test_cert();
    let key = rustls::crypto::ring::sign::any_supported_type(&other.key).expect("signing key");
    let resolver = FixedCert(Arc::new(CertifiedKey::new(vec![presented.cert], key)));
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    tls_server_with(Arc::new(config), 200).await.0
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

async fn tls_server_with(config: Arc<ServerConfig>, status: u16) -> (Server, TlsSeen) {
    let acceptor = TlsAcceptor::from(config);
    let seen = TlsSeen::default();
    let (l, addr) = listener().await;
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            while conns.try_join_next().is_some() {}
            conns.spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let conn = tls.get_ref().1;
                let sni = conn.server_name().map(str::to_string);
                let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                seen.sni.lock().expect("lock").push(sni);
                seen.resumed.lock().expect("lock").push(resumed);
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                // Read the request head (bounded), if any arrives.
                while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status} Test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (Server { addr, task }, seen)
}

/// Kills a process by PID when dropped, unless it is already gone: the
/// safety net for processes a test provoked (the check under test is what
/// should have killed them).
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if process_alive(self.0) {
            // SAFETY: plain kill(2) on a PID this test created.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
            }
        }
    }
}

/// Whether `pid` is a live process: it exists and is not a zombie (an
/// orphaned zombie waits for init to reap it, but runs nothing).
pub fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?");
    state != "Z" && state != "X"
}

/// Live processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest: state ppid pgrp ...
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}
