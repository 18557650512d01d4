//! One HTTP/1.1 request to the agent on a fresh UNIX-socket connection
//! ([`call`]) and the ways it fails ([`ClientError`]).
//! Part of [`crate::cli::client`] (docs/architecture.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;

use crate::cli::{Failure, EXIT_RUNTIME, EXIT_UNREACHABLE};
use crate::status::types::ErrorBody;

use super::table::sanitize;

/// Why a request to the agent failed; [`ClientError::exit_code`] maps it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or nobody listening on it.
    #[error("cannot reach the agent at {socket}: {reason}")]
    Unreachable {
        /// The socket path.
        socket: PathBuf,
        /// What happened, with a hint.
        reason: String,
    },
    /// The socket exists but this user may not connect.
    #[error("permission denied on {socket}: run as root or as a member of the socket's group (status.group)")]
    PermissionDenied {
        /// The socket path.
        socket: PathBuf,
    },
    /// Connected, but no answer in time.
    #[error("the agent at {socket} did not answer within {}", humantime::format_duration(*.timeout))]
    Timeout {
        /// The socket path.
        socket: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// The HTTP exchange broke (agent died mid-request, ...).
    #[error("talking to the agent at {socket}: {source}")]
    Http {
        /// The socket path.
        socket: PathBuf,
        /// The cause.
        source: hyper::Error,
    },
    /// The agent answered with an error status.
    #[error("the agent answered {status}: {message}")]
    Agent {
        /// HTTP status.
        status: StatusCode,
        /// The agent's `error` text.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the agent: {0}")]
    BadAnswer(String),
}

impl ClientError {
    /// 3 when the agent cannot be reached, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => EXIT_UNREACHABLE,
            _ => EXIT_RUNTIME,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

/// One request to the agent: `method path` with an optional JSON body.
/// Returns the body of a 2xx answer; any other status is
/// [`ClientError::Agent`] with the agent's error text.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<Bytes, ClientError> {
    match tokio::time::timeout(timeout, exchange(socket, method, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            socket: socket.to_path_buf(),
            timeout,
        }),
    }
}

async fn exchange(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<Bytes, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| connect_error(socket, e))?;
    let http = |source| ClientError::Http {
        socket: socket.to_path_buf(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // The connection future drives the socket; its errors also fail
    // `send_request` below, which is where they are reported.
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, HeaderValue::from_static("lb-agent"))
        .header(
            USER_AGENT,
            HeaderValue::from_static(concat!("lb-agent-cli/", env!("CARGO_PKG_VERSION"))),
        );
    if body.is_some() {
        req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::BadAnswer(format!("building the request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
    driver.abort();
    if status.is_success() {
        return Ok(bytes);
    }
    let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(&bytes).trim().to_string(),
    };
    Err(ClientError::Agent {
        status,
        message: sanitize(&message),
    })
}

pub(super) fn connect_error(socket: &Path, e: std::io::Error) -> ClientError {
    use std::io::ErrorKind::*;
    let reason = match e.kind() {
        NotFound => {
            "no such socket (is lb-agent running? see --socket / LB_AGENT_SOCKET)".to_string()
        }
        ConnectionRefused => {
            "connection refused (the agent is not running; the socket is stale)".to_string()
        }
        PermissionDenied => {
            return ClientError::PermissionDenied {
                socket: socket.to_path_buf(),
            }
        }
        _ => e.to_string(),
    };
    ClientError::Unreachable {
        socket: socket.to_path_buf(),
        reason,
    }
}
