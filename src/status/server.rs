//! The status socket server: axum routes on a `tokio::net::UnixListener`,
//! plus an optional TCP listener that serves only `/metrics` (for a
//! Prometheus that cannot reach a UNIX socket). Both are served by the
//! capped accept loop of `status::listener` (connection cap, header/idle
//! timeout, maximum connection age: the descriptor budget).
//!
//! [`StatusServer::bind`] does every side effect that can fail at startup
//! (directory, stale socket, bind, group, mode) so the daemon can refuse to
//! start with a clear error; [`StatusServer::run`] then serves until the
//! cancellation token fires, lets in-flight requests finish for a bounded
//! time, and removes the socket file if it is still the one it created.
//!
//! Routes (docs/status.md): `GET /v1/status`, `GET /v1/vips`, `GET /metrics`,
//! `POST /v1/drain` `{"reason": "..."}`, `POST /v1/undrain`,
//! `POST /v1/reconcile`. Every error is `{"error": "..."}` with a status
//! code: 400 bad body, 403 peer not allowed (naming the peer and the rule),
//! 404 unknown path, 405 wrong method (with `Allow`), 413 body too large,
//! 500 the daemon answered an error, 503 the daemon is gone, 504 it did not
//! answer in time.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::access::{self, AccessPolicy, Peer};
use super::listener::{self, Limits};
use super::types::{DrainBody, ErrorBody, OkBody, Snapshot};
use super::{Action, Request};
use crate::config::StatusConfig;
use crate::exposition::{self, Format};

/// The text served at `/metrics`, in OpenMetrics form, produced by the caller.
///
/// The server knows nothing of what is measured: the agent's `Metrics`
/// implements this, so `metrics` imports `status` and never the reverse
/// (docs/architecture.md, "Module layering").
pub trait MetricsText: Send + Sync + std::fmt::Debug {
    /// One scrape's exposition (OpenMetrics text, `# EOF` included).
    fn encode(&self) -> Result<String, std::fmt::Error>;
}

/// How long a mutation waits for the daemon by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long in-flight requests get after cancellation.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Request bodies are tiny (`{"reason": "..."}`).
const BODY_LIMIT: usize = 16 * 1024;
/// Longest accepted drain reason, in characters.
const MAX_REASON_CHARS: usize = 512;

/// Which group owns the socket, and therefore who may mutate besides root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketGroup {
    /// Give the socket to this group (`status.group`); it must exist, or
    /// [`StatusServer::bind`] fails naming it. Its members may mutate.
    Named(String),
    /// Leave the socket's group as created and grant mutations only to uid 0
    /// and the agent's own uid. For unprivileged runs (tests, a developer's
    /// laptop) where no status group exists and `chown` would fail.
    Unmanaged,
}

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Path of the UNIX socket (`status.socket`).
    pub socket: PathBuf,
    /// Permission bits of the socket file (`status.mode`, e.g. `0o660`).
    pub mode: u32,
    /// Owner group of the socket file (`status.group`).
    pub group: SocketGroup,
    /// Optional TCP address serving `/metrics` only (`status.metrics_listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// How long a mutation waits for the daemon's answer.
    pub request_timeout: Duration,
    /// Most connections open at once on the socket (`status.max_connections`).
    pub max_connections: usize,
    /// Most connections open at once on the metrics listener.
    pub metrics_max_connections: usize,
    /// Longest wait for a request head, idle keep-alive included.
    pub header_timeout: Duration,
    /// Longest life of a connection (longer than `request_timeout`).
    pub max_connection_age: Duration,
}

/// Default [`ServerOptions::header_timeout`]: the CLI and Prometheus send
/// their request at once; anything slower is idle or hostile.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`ServerOptions::max_connection_age`]: a drain waits up to
/// [`DEFAULT_REQUEST_TIMEOUT`] for the daemon, plus room to send the answer.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(90);

impl ServerOptions {
    /// The options agent.toml asks for (the group must exist).
    pub fn from_config(cfg: &StatusConfig) -> ServerOptions {
        ServerOptions {
            socket: cfg.socket.clone(),
            mode: cfg.mode,
            group: SocketGroup::Named(cfg.group.clone()),
            metrics_listen: cfg.metrics_listen,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: cfg.max_connections,
            metrics_max_connections: cfg.metrics_max_connections,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connection_age: DEFAULT_MAX_CONNECTION_AGE,
        }
    }
}

/// Why the server could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket's directory could not be created.
    #[error("creating the status socket directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Something that is not a socket sits at the socket path.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A live server answers on the socket path (another agent?).
    #[error("another process is already serving on {path}")]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket file could not be removed.
    #[error("removing the stale socket {path}: {source}")]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `bind()` failed.
    #[error("binding the status socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `status.group` names no group.
    #[error("status.group {0:?} does not exist: create the group (the packages do, via sysusers) or set status.group in agent.toml")]
    GroupNotFound(String),
    /// The group database could not be read.
    #[error("looking up status.group {name:?}: {source}")]
    GroupLookup {
        /// The group.
        name: String,
        /// The cause.
        source: nix::Error,
    },
    /// `chown` to the status group failed.
    #[error("giving {path} to group {group}: {source}")]
    Chown {
        /// The socket.
        path: PathBuf,
        /// The group.
        group: String,
        /// The cause.
        source: nix::Error,
    },
    /// `chmod` failed.
    #[error("setting mode {mode:04o} on {path}: {source}")]
    Chmod {
        /// The socket.
        path: PathBuf,
        /// The mode.
        mode: u32,
        /// The cause.
        source: io::Error,
    },
    /// The mode has bits outside 0o777.
    #[error("status.mode {0:o} is not a permission mode (0000-0777)")]
    BadMode(u32),
    /// The metrics TCP listener could not bind.
    #[error("binding the metrics listener {addr}: {source}")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// A listener failed while serving.
    #[error("serving {what}: {source}")]
    Serve {
        /// Which listener.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
}

/// A bound, not yet serving, status server.
#[derive(Debug)]
pub struct StatusServer {
    socket: PathBuf,
    /// Identity of the socket file we created, to remove only ours.
    socket_id: FileId,
    unix: UnixListener,
    tcp: Option<TcpListener>,
    state: AppState,
    limits: (Limits, Limits),
}

#[derive(Debug, Clone)]
struct AppState {
    snapshot: watch::Receiver<Snapshot>,
    requests: mpsc::Sender<Request>,
    metrics: Arc<dyn MetricsText>,
    access: Arc<AccessPolicy>,
    timeout: Duration,
}

impl StatusServer {
    /// Prepares and binds the socket (and the metrics listener): creates the
    /// parent directory, removes a stale socket (refusing when another
    /// server answers on it or when the path is not a socket), binds, gives
    /// the file to the status group and sets its mode.
    ///
    /// `snapshot` is what the GET routes serve; `requests` receives the
    /// authorized mutations; `metrics` is encoded at `/metrics`.
    pub async fn bind(
        opts: &ServerOptions,
        snapshot: watch::Receiver<Snapshot>,
        requests: mpsc::Sender<Request>,
        metrics: Arc<dyn MetricsText>,
    ) -> Result<StatusServer, ServeError> {
        if opts.mode & !0o777 != 0 {
            return Err(ServeError::BadMode(opts.mode));
        }
        let group = match &opts.group {
            SocketGroup::Named(name) => match access::lookup_group(name) {
                Ok(Some(gid)) => Some((name.clone(), gid)),
                Ok(None) => return Err(ServeError::GroupNotFound(name.clone())),
                Err(source) => {
                    return Err(ServeError::GroupLookup {
                        name: name.clone(),
                        source,
                    })
                }
            },
            SocketGroup::Unmanaged => None,
        };
        let path = opts.socket.clone();
        prepare_path(&path).await?;
        let unix = UnixListener::bind(&path).map_err(|source| ServeError::Bind {
            path: path.clone(),
            source,
        })?;
        let socket_id = match finish_socket(&path, opts.mode, group.as_ref()) {
            Ok(id) => id,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        let tcp = match opts.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| {
                let _ = std::fs::remove_file(&path);
                ServeError::MetricsBind { addr, source }
            })?),
            None => None,
        };
        let access = Arc::new(AccessPolicy::new(
            group,
            nix::unistd::Uid::effective().as_raw(),
        ));
        info!(
            socket = %path.display(),
            mode = format!("{:04o}", opts.mode),
            group = ?opts.group,
            max_connections = opts.max_connections,
            "status socket listening"
        );
        let limits = |what, max_connections| Limits {
            what,
            max_connections,
            header_timeout: opts.header_timeout,
            max_age: opts.max_connection_age,
        };
        Ok(StatusServer {
            limits: (
                limits("status socket", opts.max_connections),
                limits("metrics listener", opts.metrics_max_connections),
            ),
            socket: path,
            socket_id,
            unix,
            tcp,
            state: AppState {
                snapshot,
                requests,
                metrics,
                access,
                timeout: opts.request_timeout,
            },
        })
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The bound metrics address (with the real port when `:0` was asked).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `cancel` fires, then stops accepting, gives in-flight
    /// requests a few seconds, and removes the socket file if it is still
    /// the one [`StatusServer::bind`] created.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), ServeError> {
        let StatusServer {
            socket,
            socket_id,
            unix,
            tcp,
            state,
            limits: (uds_limits, tcp_limits),
        } = self;
        let uds = listener::serve(
            unix,
            router(state.clone()),
            uds_limits,
            |s: &tokio::net::UnixStream| {
                PeerInfo(s.peer_cred().ok().map(|c| Peer {
                    uid: c.uid(),
                    gid: c.gid(),
                    pid: c.pid(),
                }))
            },
            cancel.clone(),
        );
        let metrics_only = async {
            if let Some(l) = tcp {
                listener::serve(
                    l,
                    metrics_router(state.clone()),
                    tcp_limits,
                    |_: &tokio::net::TcpStream| (),
                    cancel.clone(),
                )
                .await;
            }
        };
        let both = async {
            tokio::join!(uds, metrics_only);
            Ok(())
        };
        let result = tokio::select! {
            r = both => r,
            _ = async { cancel.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                warn!(grace = ?SHUTDOWN_GRACE, "status requests still in flight at shutdown; closing them");
                Ok(())
            }
        };
        remove_if_ours(&socket, socket_id);
        info!(socket = %socket.display(), "status socket closed");
        result
    }
}

/// Creates the parent directory and clears a stale socket file.
async fn prepare_path(path: &Path) -> Result<(), ServeError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServeError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match tokio::net::UnixStream::connect(path).await {
        // A live listener (or one so busy its backlog is full).
        Ok(_) => {
            return Err(ServeError::InUse {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(ServeError::InUse {
                path: path.to_path_buf(),
            })
        }
        Err(_) => {}
    }
    match std::fs::remove_file(path) {
        Ok(()) => {
            info!(socket = %path.display(), "removed stale status socket");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServeError::RemoveStale {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Device, inode and change time of a file: enough to tell our socket from
/// a replacement even when the inode number is reused.
type FileId = (u64, u64, i64, i64);

fn file_id(m: &std::fs::Metadata) -> FileId {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

/// Applies group and mode to the freshly bound socket; returns its identity.
fn finish_socket(
    path: &Path,
    mode: u32,
    group: Option<&(String, u32)>,
) -> Result<FileId, ServeError> {
    if let Some((name, gid)) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(*gid))).map_err(
            |source| ServeError::Chown {
                path: path.to_path_buf(),
                group: name.clone(),
                source,
            },
        )?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ServeError::Chmod {
            path: path.to_path_buf(),
            mode,
            source,
        }
    })?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| ServeError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file_id(&meta))
}

/// Removes the socket file unless someone replaced it meanwhile.
fn remove_if_ours(path: &Path, id: FileId) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if file_id(&m) == id => {
            if let Err(error) = std::fs::remove_file(path) {
                warn!(%error, socket = %path.display(), "could not remove the status socket");
            }
        }
        _ => {}
    }
}

/// The peer of a UNIX-socket connection, captured at accept time.
#[derive(Debug, Clone, Copy)]
struct PeerInfo(Option<Peer>);

/// The UNIX-socket routes.
fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", only_get(get(get_status)))
        .route("/v1/vips", only_get(get(get_vips)))
        .route("/metrics", only_get(get(get_metrics)))
        .route("/v1/drain", only_post(post(post_drain)))
        .route("/v1/undrain", only_post(post(post_undrain)))
        .route("/v1/reconcile", only_post(post(post_reconcile)))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// The TCP routes: `/metrics` only, nothing else is exposed off the box.
fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", only_get(get(get_metrics)))
        .fallback(not_found)
        .with_state(state)
}

fn only_get(r: MethodRouter<AppState>) -> MethodRouter<AppState> {
    r.fallback(|m: Method| async move { wrong_method(m, "GET, HEAD") })
}

fn only_post(r: MethodRouter<AppState>) -> MethodRouter<AppState> {
    r.fallback(|m: Method| async move { wrong_method(m, "POST") })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

fn wrong_method(m: Method, allow: &'static str) -> Response {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {m} not allowed here; use {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint {}; available: GET /v1/status, GET /v1/vips, GET /metrics, POST /v1/drain, POST /v1/undrain, POST /v1/reconcile",
            uri.path()
        ),
    )
}

fn json_bytes(body: Result<Vec<u8>, serde_json::Error>) -> Response {
    match body {
        Ok(b) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            b,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the snapshot: {e}"),
        ),
    }
}

// Clone, then serialize: the `watch` read lock is held only for the copy,
// so a slow reader never delays the daemon publishing the next snapshot.
async fn get_status(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.borrow().clone();
    json_bytes(serde_json::to_vec(&snap))
}

async fn get_vips(State(s): State<AppState>) -> Response {
    let vips = s.snapshot.borrow().vips.clone();
    json_bytes(serde_json::to_vec(&vips))
}

/// Prometheus text format unless the scraper prefers OpenMetrics
/// ([`crate::exposition`]).
async fn get_metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = exposition::negotiate(accept);
    match s.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            )],
            match format {
                Format::OpenMetrics => text,
                Format::Text => exposition::to_text(&text),
            },
        )
            .into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed"),
    }
}

async fn post_drain(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Authorize before looking at the body: a refused peer learns nothing else.
    let peer = match authorize(&s, peer, "drain").await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let body = match body {
        Ok(b) => b,
        Err(rej) => {
            return error(
                rej.status(),
                format!("reading the request body: {}", rej.body_text()),
            )
        }
    };
    let reason = match parse_drain(&body) {
        Ok(r) => r,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    forward(&s, peer, Action::Drain { reason }).await
}

async fn post_undrain(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
) -> Response {
    match authorize(&s, peer, "undrain").await {
        Ok(p) => forward(&s, p, Action::Undrain).await,
        Err(r) => r,
    }
}

async fn post_reconcile(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
) -> Response {
    match authorize(&s, peer, "reconcile").await {
        Ok(p) => forward(&s, p, Action::Reconcile).await,
        Err(r) => r,
    }
}

/// Validates a drain body: JSON `{"reason": "..."}`, nothing else; the
/// reason trimmed, non-empty, at most [`MAX_REASON_CHARS`], no control
/// characters (it ends up in logs and the state file).
fn parse_drain(body: &[u8]) -> Result<String, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("missing body: expected {\"reason\": \"...\"}".into());
    }
    let d: DrainBody = serde_json::from_slice(body)
        .map_err(|e| format!("bad drain body (expected {{\"reason\": \"...\"}}): {e}"))?;
    let reason = d.reason.trim();
    if reason.is_empty() {
        return Err("reason must not be empty".into());
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(format!(
            "reason is longer than {MAX_REASON_CHARS} characters"
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err("reason must be one line without control characters".into());
    }
    Ok(reason.to_string())
}

/// Checks the peer against the access policy (off the async threads: the
/// group-database fallback may block on NSS).
async fn authorize(s: &AppState, peer: PeerInfo, action: &'static str) -> Result<Peer, Response> {
    let Some(peer) = peer.0 else {
        warn!(action, "refused: peer credentials unavailable");
        return Err(error(
            StatusCode::FORBIDDEN,
            format!("not allowed to {action}: the peer's credentials are unavailable"),
        ));
    };
    let access = s.access.clone();
    let decision = tokio::task::spawn_blocking(move || access.check(&peer, action)).await;
    match decision {
        Ok(Ok(grant)) => {
            info!(action, %peer, ?grant, "status socket request authorized");
            Ok(peer)
        }
        Ok(Err(denied)) => {
            warn!(action, %peer, rule = %denied.rule, "status socket request refused");
            Err(error(StatusCode::FORBIDDEN, denied.to_string()))
        }
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("checking credentials: {e}"),
        )),
    }
}

/// Hands an authorized action to the daemon and turns its answer into a response.
async fn forward(s: &AppState, peer: Peer, action: Action) -> Response {
    let name = action.name();
    let (reply, answer) = oneshot::channel();
    let exchange = async {
        if s.requests
            .send(Request {
                action,
                peer,
                reply,
            })
            .await
            .is_err()
        {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent is not accepting requests (shutting down?)",
            ));
        }
        answer.await.map_err(|_| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the agent dropped the {name} request (shutting down?)"),
            )
        })
    };
    match tokio::time::timeout(s.timeout, exchange).await {
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the agent did not answer the {name} request within {:?}",
                s.timeout
            ),
        ),
        Ok(Err(r)) => r,
        Ok(Ok(Err(msg))) => {
            warn!(action = name, error = %msg, "the agent refused the request");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{name} failed: {msg}"),
            )
        }
        Ok(Ok(Ok(()))) => (
            StatusCode::OK,
            Json(OkBody {
                ok: true,
                action: name.to_string(),
            }),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These tests serve no metrics; `tests/status_socket.rs` serves the real ones.
    #[derive(Debug)]
    struct NoMetrics;

    impl MetricsText for NoMetrics {
        fn encode(&self) -> Result<String, std::fmt::Error> {
            Ok("# EOF\n".into())
        }
    }

    #[test]
    fn drain_bodies_are_validated() {
        assert_eq!(
            parse_drain(br#"{"reason":"  kernel upgrade "}"#),
            Ok("kernel upgrade".into())
        );
        for (body, want) in [
            (&b""[..], "missing body"),
            (b"  \n", "missing body"),
            (b"{}", "missing field `reason`"),
            (b"not json", "bad drain body"),
            (br#"{"reason": 5}"#, "invalid type"),
            (br#"{"reason":"x","until":"5m"}"#, "unknown field `until`"),
            (br#"{"reason":"   "}"#, "must not be empty"),
            (br#"{"reason":"a\nb"}"#, "control characters"),
        ] {
            let e = parse_drain(body).unwrap_err();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(body));
        }
        let long = format!(r#"{{"reason":"{}"}}"#, "x".repeat(MAX_REASON_CHARS + 1));
        assert!(parse_drain(long.as_bytes())
            .unwrap_err()
            .contains("longer than"));
    }

    fn opts(dir: &Path) -> ServerOptions {
        ServerOptions {
            socket: dir.join("sub/dir/status.sock"),
            mode: 0o640,
            group: SocketGroup::Unmanaged,
            metrics_listen: None,
            request_timeout: Duration::from_secs(1),
            max_connections: 8,
            metrics_max_connections: 4,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connection_age: DEFAULT_MAX_CONNECTION_AGE,
        }
    }

    async fn bind(o: &ServerOptions) -> Result<StatusServer, ServeError> {
        let (_tx, rx) = watch::channel(Snapshot::default());
        let (req_tx, _req_rx) = mpsc::channel(1);
        StatusServer::bind(o, rx, req_tx, Arc::new(NoMetrics)).await
    }

    #[tokio::test]
    async fn bind_creates_the_directory_and_sets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let server = bind(&o).await.unwrap();
        let meta = std::fs::metadata(&o.socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!(server.socket_path(), o.socket);
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        // Stale: bound then dropped, the file stays and nobody listens.
        std::fs::create_dir_all(o.socket.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&o.socket).unwrap());
        assert!(o.socket.exists());
        let live = bind(&o).await.unwrap();
        // Live: the server above listens on it.
        match bind(&o).await {
            Err(ServeError::InUse { path }) => assert_eq!(path, o.socket),
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(live);
        // Not a socket.
        std::fs::remove_file(&o.socket).unwrap();
        std::fs::write(&o.socket, "precious").unwrap();
        let e = bind(&o).await.unwrap_err();
        assert!(matches!(e, ServeError::NotASocket { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&o.socket).unwrap(), "precious");
    }

    #[tokio::test]
    async fn a_missing_group_is_a_startup_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.group = SocketGroup::Named("lb-agent-no-such-group".into());
        let e = bind(&o).await.unwrap_err();
        assert!(matches!(e, ServeError::GroupNotFound(_)), "{e}");
        assert!(
            e.to_string()
                .contains("\"lb-agent-no-such-group\" does not exist"),
            "{e}"
        );
        assert!(!o.socket.exists(), "nothing is left behind");
    }

    #[tokio::test]
    async fn a_bad_mode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.mode = 0o4755;
        assert!(matches!(
            bind(&o).await.unwrap_err(),
            ServeError::BadMode(0o4755)
        ));
    }

    #[tokio::test]
    async fn run_removes_its_socket_on_cancel_but_not_a_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let server = bind(&o).await.unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.run(cancel.clone()));
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!o.socket.exists());

        // Someone else's socket at the path survives our shutdown.
        let server = bind(&o).await.unwrap();
        std::fs::remove_file(&o.socket).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&o.socket).unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), server.run(cancel))
            .await
            .unwrap()
            .unwrap();
        assert!(o.socket.exists());
    }
}
