//! The status socket end to end: the real server on a UNIX socket in a temp
//! dir, a fake daemon on the request channel, a raw hyper client for the
//! HTTP contract (docs/status.md), and the built `lb-agent` binary for the CLI
//! (exit codes, output, `| head`), including a peer running as `nobody`
//! through `setpriv` (needs root, as in CI).

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, ALLOW, CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use lb_agent::exposition;
use lb_agent::metrics::{self, CheckOutcome, Metrics};
use lb_agent::status::types::*;
use lb_agent::status::{
    Action, Peer, Request, ServeError, ServerOptions, SocketGroup, StatusServer,
};

const BIN: &str = env!("CARGO_BIN_EXE_lb-agent");
/// Upper bound for any single step that waits (a request, a CLI run).
const STEP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- fixtures

fn at(secs: u64) -> Option<Timestamp> {
    Some(Timestamp(UNIX_EPOCH + Duration::from_secs(secs)))
}

fn service(name: &str, healthy: bool) -> ServiceStatus {
    ServiceStatus {
        name: name.into(),
        healthy,
        ok_streak: if healthy { 12 } else { 0 },
        fail_streak: if healthy { 0 } else { 3 },
        last_latency_ms: Some(0.8),
        error: (!healthy).then(|| "connection refused".to_string()),
        ..Default::default()
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        node: "lb1".into(),
        group: "blue".into(),
        version: "0.1.0".into(),
        revision: Some(1042),
        drained: false,
        source: SourceStatus {
            state: SourceState::Ok,
            url: "https://balancer.example.net/v1/groups/blue/config".into(),
            last_success: at(1_793_000_000),
            polls: PollCounts {
                ok: 5,
                not_modified: 40,
                error: 1,
            },
            ..Default::default()
        },
        haproxy: HaproxyStatus {
            converged: true,
            reloads: 3,
            runtime_commands: 120,
            last_reload: at(1_792_999_000),
            reloads_by_reason: [("structure".to_string(), 3)].into_iter().collect(),
            ..Default::default()
        },
        bird: BirdStatus {
            ok: true,
            last_reconfigure: at(1_792_999_500),
            reconfigures: 4,
            ..Default::default()
        },
        vips: vec![
            VipStatus {
                address: "192.0.2.10/32".into(),
                announced: true,
                reason: None,
                services: vec![service("www_https", true)],
                ..Default::default()
            },
            VipStatus {
                address: "192.0.2.20/32".into(),
                announced: false,
                reason: Some("service git_ssh unhealthy: connection refused".into()),
                services: vec![service("www_https", true), service("git_ssh", false)],
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// How the fake daemon answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Daemon {
    /// Records and answers `Ok`, except a drain with reason `refuse-me`
    /// (answers `Err`) and `drop-me` (drops the reply).
    Normal,
    /// Records and never answers.
    Silent,
    /// No daemon: the request receiver is dropped.
    Gone,
}

struct Harness {
    dir: tempfile::TempDir,
    socket: PathBuf,
    snapshot: watch::Sender<Snapshot>,
    metrics: Arc<Metrics>,
    metrics_addr: Option<std::net::SocketAddr>,
    seen: mpsc::UnboundedReceiver<(Action, Peer)>,
    cancel: CancellationToken,
    server: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl Harness {
    async fn start(daemon: Daemon, tune: impl FnOnce(&mut ServerOptions)) -> Harness {
        Harness::start_with(snapshot(), daemon, tune).await
    }

    async fn start_with(
        snap: Snapshot,
        daemon: Daemon,
        tune: impl FnOnce(&mut ServerOptions),
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/status.sock");
        let mut opts = ServerOptions {
            socket: socket.clone(),
            mode: 0o660,
            group: SocketGroup::Unmanaged,
            metrics_listen: None,
            request_timeout: Duration::from_secs(10),
            max_connections: 64,
            metrics_max_connections: 16,
            header_timeout: lb_agent::status::DEFAULT_HEADER_TIMEOUT,
            max_connection_age: lb_agent::status::DEFAULT_MAX_CONNECTION_AGE,
        };
        tune(&mut opts);
        let (snapshot, snap_rx) = watch::channel(snap);
        let metrics = Arc::new(Metrics::new(snap_rx.clone()));
        let (req_tx, mut req_rx) = mpsc::channel::<Request>(4);
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let server = StatusServer::bind(&opts, snap_rx, req_tx, metrics.clone())
            .await
            .expect("bind");
        let metrics_addr = server.metrics_addr();
        let cancel = CancellationToken::new();
        match daemon {
            Daemon::Gone => drop(req_rx),
            Daemon::Normal | Daemon::Silent => {
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    let mut parked = Vec::new();
                    loop {
                        let req = tokio::select! {
                            _ = cancel.cancelled() => break,
                            r = req_rx.recv() => match r { Some(r) => r, None => break },
                        };
                        let _ = seen_tx.send((req.action.clone(), req.peer));
                        match (&req.action, daemon) {
                            (_, Daemon::Silent) => parked.push(req.reply),
                            (Action::Drain { reason }, _) if reason == "refuse-me" => {
                                let _ = req.reply.send(Err(
                                    "the drain flag could not be written: read-only file system"
                                        .into(),
                                ));
                            }
                            (Action::Drain { reason }, _) if reason == "drop-me" => drop(req.reply),
                            _ => {
                                let _ = req.reply.send(Ok(()));
                            }
                        }
                    }
                });
            }
        }
        let server = Some(tokio::spawn(server.run(cancel.clone())));
        Harness {
            dir,
            socket,
            snapshot,
            metrics,
            metrics_addr,
            seen,
            cancel,
            server,
        }
    }

    fn sock(&self) -> &str {
        self.socket.to_str().expect("utf-8 temp path")
    }

    /// The next request the daemon received (bounded wait).
    async fn next_seen(&mut self) -> (Action, Peer) {
        tokio::time::timeout(Duration::from_secs(5), self.seen.recv())
            .await
            .expect("the daemon received nothing within 5s")
            .expect("daemon gone")
    }

    fn assert_nothing_seen(&mut self) {
        if let Ok(x) = self.seen.try_recv() {
            panic!("the daemon received {x:?}");
        }
    }

    /// Stops the server and checks it shut down cleanly and removed its socket.
    async fn stop(mut self) {
        self.cancel.cancel();
        let server = self.server.take().expect("running");
        let r = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server stopped within 10s");
        r.expect("server task").expect("server result");
        assert!(!self.socket.exists(), "socket removed on shutdown");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ------------------------------------------------------------- raw client

/// One HTTP/1.1 exchange over a UNIX socket, independent of the CLI's client.
async fn raw(
    socket: &Path,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    raw_with(socket, method, path, body, &[]).await
}

async fn raw_with(
    socket: &Path,
    method: Method,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    exchange(TokioIo::new(stream), method, path, body, headers).await
}

async fn raw_tcp(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    exchange(TokioIo::new(stream), method, path, "", &[]).await
}

async fn exchange<T>(
    io: TokioIo<T>,
    method: Method,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let fut = async {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        let driver = tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let resp = tx.send_request(req).await.expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        driver.abort();
        (status, headers, bytes)
    };
    tokio::time::timeout(STEP, fut)
        .await
        .expect("answer in time")
}

fn json(b: &Bytes) -> Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// Asserts an error answer: status, JSON `{"error": ...}` containing `needle`.
fn assert_error(r: &(StatusCode, HeaderMap, Bytes), status: StatusCode, needle: &str) {
    let body = String::from_utf8_lossy(&r.2);
    assert_eq!(r.0, status, "{body}");
    assert_eq!(
        r.1.get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/json"[..]),
        "{body}"
    );
    let v = json(&r.2);
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error key: {body}"));
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(1),
        "only the error key: {body}"
    );
}

// ---------------------------------------------------------------- CLI runner

async fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_cmd(BIN, args, env).await
}

async fn run_cmd(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_remove("LB_AGENT_SOCKET")
        .env_remove("NO_COLOR")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(STEP, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} still running after {STEP:?}"))
        .expect("spawn")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_exit(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: stdout:\n{}\nstderr:\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(
        !text(&o.stderr).contains("panicked"),
        "{what} panicked: {}",
        text(&o.stderr)
    );
}

// -------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_serves_the_snapshot_with_the_spec_keys() {
    let h = Harness::start(Daemon::Normal, |_| {}).await;
    let r = raw(&h.socket, Method::GET, "/v1/status", "").await;
    assert_eq!(r.0, StatusCode::OK);
    assert_eq!(
        r.1.get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    let v = json(&r.2);

    // Every key of docs/status.md's example, by presence (null counts as present).
    let has = |obj: &Value, keys: &[&str], at: &str| {
        let o = obj
            .as_object()
            .unwrap_or_else(|| panic!("{at} is not an object: {obj}"));
        for k in keys {
            assert!(o.contains_key(*k), "{at}.{k} missing in {obj}");
        }
    };
    has(
        &v,
        &[
            "node", "group", "version", "revision", "drained", "source", "haproxy", "bird", "vips",
        ],
        "",
    );
    has(
        &v["source"],
        &["state", "url", "last_success", "error"],
        "source",
    );
    has(
        &v["haproxy"],
        &[
            "converged",
            "reloads",
            "runtime_commands",
            "last_reload",
            "error",
        ],
        "haproxy",
    );
    has(&v["bird"], &["ok", "last_reconfigure", "error"], "bird");
    for (i, vip) in v["vips"].as_array().expect("vips array").iter().enumerate() {
        has(
            vip,
            &["address", "announced", "reason", "services"],
            &format!("vips[{i}]"),
        );
        for (j, s) in vip["services"]
            .as_array()
            .expect("services array")
            .iter()
            .enumerate()
        {
            has(
                s,
                &[
                    "name",
                    "healthy",
                    "ok_streak",
                    "fail_streak",
                    "last_latency_ms",
                    "error",
                ],
                &format!("vips[{i}].services[{j}]"),
            );
        }
    }

    // Values and JSON types.
    assert_eq!(v["node"], "lb1");
    assert_eq!(v["group"], "blue");
    assert_eq!(v["version"], "0.1.0");
    assert_eq!(v["revision"], 1042);
    assert_eq!(v["drained"], false);
    assert_eq!(v["source"]["state"], "ok");
    assert_eq!(v["source"]["error"], Value::Null);
    assert_eq!(v["source"]["last_success"], "2026-10-26T07:33:20.000Z");
    assert_eq!(v["haproxy"]["converged"], true);
    assert_eq!(v["haproxy"]["reloads"], 3);
    assert_eq!(v["haproxy"]["runtime_commands"], 120);
    assert_eq!(v["bird"]["ok"], true);
    assert_eq!(v["vips"][0]["address"], "192.0.2.10/32");
    assert_eq!(v["vips"][0]["announced"], true);
    assert_eq!(v["vips"][0]["reason"], Value::Null);
    assert_eq!(
        v["vips"][1]["reason"],
        "service git_ssh unhealthy: connection refused"
    );
    assert_eq!(v["vips"][0]["services"][0]["ok_streak"], 12);
    assert_eq!(v["vips"][0]["services"][0]["last_latency_ms"], 0.8);
    assert_eq!(v["vips"][1]["services"][1]["healthy"], false);
    assert_eq!(v["vips"][1]["services"][1]["fail_streak"], 3);
    assert_eq!(v["vips"][1]["services"][1]["error"], "connection refused");
    for ts in [
        &v["source"]["last_success"],
        &v["haproxy"]["last_reload"],
        &v["bird"]["last_reconfigure"],
    ] {
        let s = ts
            .as_str()
            .unwrap_or_else(|| panic!("timestamp not a string: {ts}"));
        assert!(
            s.len() == 24 && s.as_bytes()[10] == b'T' && s.ends_with('Z'),
            "not RFC 3339 UTC: {s}"
        );
        humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    // What the CLI deserializes is what the daemon published.
    let back: Snapshot = serde_json::from_slice(&r.2).expect("deserializes");
    assert_eq!(back, snapshot());

    // A newly published snapshot is served on the next request.
    h.snapshot.send_modify(|s| {
        s.revision = Some(1043);
        s.drained = true;
        s.drain = Some(DrainInfo {
            reason: "kernel upgrade".into(),
            since: at(1_793_000_100),
            by: Some("uid 0 (root)".into()),
            withdraw_at: None,
        });
    });
    let v = json(&raw(&h.socket, Method::GET, "/v1/status", "").await.2);
    assert_eq!(v["revision"], 1043);
    assert_eq!(v["drained"], true);
    assert_eq!(v["drain"]["reason"], "kernel upgrade");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vips_is_the_vips_array_of_the_status() {
    let h = Harness::start(Daemon::Normal, |_| {}).await;
    let status = json(&raw(&h.socket, Method::GET, "/v1/status", "").await.2);
    let r = raw(&h.socket, Method::GET, "/v1/vips", "").await;
    assert_eq!(r.0, StatusCode::OK);
    let vips = json(&r.2);
    assert!(vips.is_array(), "{vips}");
    assert_eq!(vips, status["vips"]);
    assert_eq!(vips.as_array().map(Vec::len), Some(2));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_the_socket_and_only_metrics_on_tcp() {
    let h = Harness::start(Daemon::Normal, |o| {
        o.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"))
    })
    .await;
    observe_one_apply_and_one_failed_check(&h.metrics);

    let r = scrape_as_prometheus(&h.socket).await;
    assert_eq!(r.0, StatusCode::OK);
    assert_eq!(
        r.1.get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(exposition::OPENMETRICS_CONTENT_TYPE.as_bytes())
    );
    let body = text(&r.2);
    for (name, kind) in metrics::FAMILIES {
        assert!(
            body.contains(&format!("\n# TYPE {name} {kind}\n")),
            "# TYPE {name} {kind} missing:\n{body}"
        );
    }
    let samples = metrics::parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let find = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.contains(&(k.to_string(), v.to_string())))
            })
            .map(|s| s.value)
    };
    assert_eq!(find("lb_agent_applied_revision", &[]), Some(1042.0));
    assert_eq!(
        find("lb_agent_source_polls_total", &[("result", "not_modified")]),
        Some(40.0)
    );
    assert_eq!(
        find("lb_agent_reloads_total", &[("reason", "structure")]),
        Some(3.0)
    );
    assert_eq!(find("lb_agent_runtime_commands_total", &[]), Some(120.0));
    assert_eq!(
        find("lb_agent_bird_reconfigures_total", &[("result", "ok")]),
        Some(4.0)
    );
    assert_eq!(
        find("lb_agent_vip_announced", &[("vip", "192.0.2.10/32")]),
        Some(1.0)
    );
    assert_eq!(
        find("lb_agent_vip_announced", &[("vip", "192.0.2.20/32")]),
        Some(0.0)
    );
    assert_eq!(
        find(
            "lb_agent_service_healthy",
            &[("vip", "192.0.2.20/32"), ("service", "git_ssh")]
        ),
        Some(0.0)
    );
    assert_eq!(
        find(
            "lb_agent_check_results_total",
            &[
                ("vip", "192.0.2.20/32"),
                ("service", "git_ssh"),
                ("result", "fail")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        find(
            "lb_agent_check_duration_seconds_count",
            &[("vip", "192.0.2.20/32"), ("service", "git_ssh")]
        ),
        Some(1.0)
    );
    assert_eq!(
        find("lb_agent_apply_duration_seconds_count", &[]),
        Some(1.0)
    );

    let addr = h.metrics_addr.expect("metrics listener bound");
    let r = raw_tcp(addr, Method::GET, "/metrics").await;
    assert_eq!(r.0, StatusCode::OK);
    assert_eq!(
        r.1.get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(exposition::TEXT_CONTENT_TYPE.as_bytes())
    );
    assert!(text(&r.2).contains("\n# TYPE lb_agent_reloads_total counter\n"));
    assert_error(
        &raw_tcp(addr, Method::GET, "/v1/status").await,
        StatusCode::NOT_FOUND,
        "no such endpoint /v1/status",
    );
    assert_error(
        &raw_tcp(addr, Method::POST, "/v1/drain").await,
        StatusCode::NOT_FOUND,
        "no such endpoint",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_reach_the_daemon_with_reason_and_peer() {
    let mut h = Harness::start(Daemon::Normal, |_| {}).await;
    let me = Peer {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        pid: Some(std::process::id() as i32),
    };

    let r = raw(
        &h.socket,
        Method::POST,
        "/v1/drain",
        r#"{"reason": "  kernel upgrade  "}"#,
    )
    .await;
    assert_eq!(r.0, StatusCode::OK, "{}", text(&r.2));
    assert_eq!(
        json(&r.2),
        serde_json::json!({"ok": true, "action": "drain"})
    );
    assert_eq!(
        h.next_seen().await,
        (
            Action::Drain {
                reason: "kernel upgrade".into()
            },
            me
        )
    );

    let r = raw(&h.socket, Method::POST, "/v1/undrain", "").await;
    assert_eq!(r.0, StatusCode::OK, "{}", text(&r.2));
    assert_eq!(json(&r.2)["action"], "undrain");
    assert_eq!(h.next_seen().await.0, Action::Undrain);

    let r = raw(&h.socket, Method::POST, "/v1/reconcile", "{}").await;
    assert_eq!(r.0, StatusCode::OK, "{}", text(&r.2));
    assert_eq!(h.next_seen().await.0, Action::Reconcile);
    h.assert_nothing_seen();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_never_reach_the_daemon() {
    let mut h = Harness::start(Daemon::Normal, |_| {}).await;
    let s = h.socket.clone();
    assert_error(
        &raw(&s, Method::POST, "/v1/drain", "").await,
        StatusCode::BAD_REQUEST,
        "missing body",
    );
    assert_error(
        &raw(&s, Method::POST, "/v1/drain", "{}").await,
        StatusCode::BAD_REQUEST,
        "missing field `reason`",
    );
    assert_error(
        &raw(&s, Method::POST, "/v1/drain", "reason=x").await,
        StatusCode::BAD_REQUEST,
        "bad drain body",
    );
    assert_error(
        &raw(&s, Method::POST, "/v1/drain", r#"{"reason":""}"#).await,
        StatusCode::BAD_REQUEST,
        "must not be empty",
    );
    assert_error(
        &raw(
            &s,
            Method::POST,
            "/v1/drain",
            r#"{"reason":"x","ttl":"1h"}"#,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unknown field",
    );
    let huge = format!(r#"{{"reason":"{}"}}"#, "x".repeat(64 * 1024));
    assert_error(
        &raw(&s, Method::POST, "/v1/drain", &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "",
    );

    assert_error(
        &raw(&s, Method::GET, "/v1/nope", "").await,
        StatusCode::NOT_FOUND,
        "no such endpoint /v1/nope",
    );
    assert_error(
        &raw(&s, Method::GET, "/", "").await,
        StatusCode::NOT_FOUND,
        "GET /v1/status",
    );

    let r = raw(&s, Method::GET, "/v1/drain", "").await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method GET not allowed");
    assert_eq!(r.1.get(ALLOW).map(|v| v.as_bytes()), Some(&b"POST"[..]));
    let r = raw(&s, Method::POST, "/v1/status", "").await;
    assert_error(
        &r,
        StatusCode::METHOD_NOT_ALLOWED,
        "method POST not allowed",
    );
    assert_eq!(
        r.1.get(ALLOW).map(|v| v.as_bytes()),
        Some(&b"GET, HEAD"[..])
    );
    assert_error(
        &raw(&s, Method::DELETE, "/metrics", "").await,
        StatusCode::METHOD_NOT_ALLOWED,
        "DELETE",
    );

    // Give a stray request time to arrive before asserting there was none.
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.assert_nothing_seen();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_failures_map_to_500_503_and_504() {
    let mut h = Harness::start(Daemon::Normal, |_| {}).await;
    let r = raw(
        &h.socket,
        Method::POST,
        "/v1/drain",
        r#"{"reason":"refuse-me"}"#,
    )
    .await;
    assert_error(
        &r,
        StatusCode::INTERNAL_SERVER_ERROR,
        "drain failed: the drain flag could not be written",
    );
    let r = raw(
        &h.socket,
        Method::POST,
        "/v1/drain",
        r#"{"reason":"drop-me"}"#,
    )
    .await;
    assert_error(
        &r,
        StatusCode::SERVICE_UNAVAILABLE,
        "dropped the drain request",
    );
    assert_eq!(
        h.next_seen().await.0,
        Action::Drain {
            reason: "refuse-me".into()
        }
    );
    h.stop().await;

    let h = Harness::start(Daemon::Gone, |_| {}).await;
    assert_error(
        &raw(&h.socket, Method::POST, "/v1/undrain", "").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not accepting requests",
    );
    // Reads still work without a daemon listening for requests.
    assert_eq!(
        raw(&h.socket, Method::GET, "/v1/status", "").await.0,
        StatusCode::OK
    );
    h.stop().await;

    let mut h = Harness::start(Daemon::Silent, |o| {
        o.request_timeout = Duration::from_millis(300)
    })
    .await;
    let started = std::time::Instant::now();
    assert_error(
        &raw(&h.socket, Method::POST, "/v1/reconcile", "").await,
        StatusCode::GATEWAY_TIMEOUT,
        "did not answer the reconcile request",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "timeout not applied: {:?}",
        started.elapsed()
    );
    assert_eq!(h.next_seen().await.0, Action::Reconcile);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_work_against_the_server() {
    let mut h = Harness::start(Daemon::Normal, |_| {}).await;
    let sock = h.sock().to_string();
    let s = sock.as_str();

    let o = cli(&["status", "--socket", s], &[]).await;
    assert_exit(&o, 0, "status");
    let out = text(&o.stdout);
    assert!(
        out.starts_with("node      lb1 (group blue), lb-agent 0.1.0\n"),
        "{out}"
    );
    assert!(out.contains("revision  1042\n"), "{out}");
    assert!(out.contains("vips      1/2 announced\n"), "{out}");
    assert!(
        out.contains("\nADDRESS        ANNOUNCED  HEALTHY  REASON\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "\n192.0.2.20/32  no         1/2      service git_ssh unhealthy: connection refused\n"
        ),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "colour on a pipe: {out:?}");

    let o = cli(&["status", "--json", "--socket", s], &[]).await;
    assert_exit(&o, 0, "status --json");
    let served = json(&raw(&h.socket, Method::GET, "/v1/status", "").await.2);
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).expect("JSON"),
        served
    );

    // LB_AGENT_SOCKET instead of --socket.
    let o = cli(&["vips"], &[("LB_AGENT_SOCKET", s)]).await;
    assert_exit(&o, 0, "vips");
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[1],
        "192.0.2.10/32  yes        www_https:up               -"
    );
    assert_eq!(lines[2], "192.0.2.20/32  no         www_https:up git_ssh:down  service git_ssh unhealthy: connection refused");

    let o = cli(&["vips", "--json", "--socket", s], &[]).await;
    assert_exit(&o, 0, "vips --json");
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).expect("JSON"),
        served["vips"]
    );

    let o = cli(
        &["drain", "--reason", "rack A2 maintenance", "--socket", s],
        &[],
    )
    .await;
    assert_exit(&o, 0, "drain");
    assert_eq!(text(&o.stdout), "drain: ok (reason: rack A2 maintenance)\n");
    let (action, peer) = h.next_seen().await;
    assert_eq!(
        action,
        Action::Drain {
            reason: "rack A2 maintenance".into()
        }
    );
    assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
    assert_ne!(
        peer.pid,
        Some(std::process::id() as i32),
        "the peer is the CLI process"
    );

    let o = cli(&["undrain", "--socket", s], &[]).await;
    assert_exit(&o, 0, "undrain");
    assert_eq!(text(&o.stdout), "undrain: ok\n");
    assert_eq!(h.next_seen().await.0, Action::Undrain);

    let o = cli(&["reconcile", "--socket", s], &[]).await;
    assert_exit(&o, 0, "reconcile");
    assert_eq!(h.next_seen().await.0, Action::Reconcile);

    // The agent answering an error: exit 1 with its message.
    let o = cli(&["drain", "--reason", "refuse-me", "--socket", s], &[]).await;
    assert_exit(&o, 1, "refused drain");
    let err = text(&o.stderr);
    assert!(
        err.contains("500") && err.contains("read-only file system"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
    h.next_seen().await;

    // Usage errors: exit 2, nothing sent.
    assert_exit(
        &cli(&["drain", "--socket", s], &[]).await,
        2,
        "drain without --reason",
    );
    assert_exit(
        &cli(&["status", "--timeout", "soon", "--socket", s], &[]).await,
        2,
        "bad --timeout",
    );
    assert_exit(
        &cli(&["completions", "tcsh"], &[]).await,
        2,
        "unknown shell",
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.assert_nothing_seen();

    for (shell, marker) in [
        ("bash", "-o default lb-agent"),
        ("zsh", "#compdef lb-agent"),
        ("fish", "complete -c lb-agent"),
    ] {
        let o = cli(&["completions", shell], &[]).await;
        assert_exit(&o, 0, shell);
        let out = text(&o.stdout);
        assert!(out.contains(marker), "{shell} completion lacks {marker:?}");
        assert!(
            out.contains("drain") && out.contains("socket"),
            "{shell} completion lacks subcommands/options"
        );
    }
    let o = cli(&["man"], &[]).await;
    assert_exit(&o, 0, "man");
    assert!(
        text(&o.stdout).contains(".TH lb-agent 8 "),
        "{}",
        text(&o.stdout)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_an_unreachable_agent_with_exit_3() {
    let dir = tempfile::tempdir().expect("tempdir");

    let missing = dir.path().join("missing.sock");
    for args in [
        vec!["status"],
        vec!["vips", "--json"],
        vec!["drain", "--reason", "x"],
        vec!["undrain"],
        vec!["reconcile"],
    ] {
        let mut a = args.clone();
        a.extend(["--socket", missing.to_str().expect("utf-8")]);
        let o = cli(&a, &[]).await;
        assert_exit(&o, 3, &format!("{args:?} on a missing socket"));
        let err = text(&o.stderr);
        assert!(
            err.contains("cannot reach the agent") && err.contains("no such socket"),
            "{err}"
        );
        assert!(o.stdout.is_empty());
    }

    // A stale socket file: nobody listening.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let o = cli(&["status", "--socket", stale.to_str().expect("utf-8")], &[]).await;
    assert_exit(&o, 3, "stale socket");
    assert!(
        text(&o.stderr).contains("connection refused"),
        "{}",
        text(&o.stderr)
    );

    // A listener that accepts but never answers.
    let hung = dir.path().join("hung.sock");
    let listener = tokio::net::UnixListener::bind(&hung).expect("bind");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let o = cli(
        &[
            "status",
            "--timeout",
            "300ms",
            "--socket",
            hung.to_str().expect("utf-8"),
        ],
        &[],
    )
    .await;
    assert_exit(&o, 3, "hung agent");
    assert!(
        text(&o.stderr).contains("did not answer within 300ms"),
        "{}",
        text(&o.stderr)
    );
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_piped_into_head_exits_0_without_a_panic() {
    // Enough VIPs that the output far exceeds a pipe buffer (64 KiB), so
    // the CLI is still writing when `head` exits and gets EPIPE.
    let mut snap = snapshot();
    snap.vips = (0..5000u32)
        .map(|i| VipStatus {
            address: format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255),
            announced: i % 2 == 0,
            reason: (i % 2 == 1).then(|| "service www_https unhealthy: timeout".to_string()),
            services: vec![service("www_https", i % 2 == 0), service("git_ssh", true)],
            ..Default::default()
        })
        .collect();
    let h = Harness::start_with(snap, Daemon::Normal, |_| {}).await;
    for (cmd, head, first) in [
        (
            "status",
            "-1",
            "node      lb1 (group blue), lb-agent 0.1.0\n",
        ),
        ("vips", "-1", "ADDRESS "),
        ("status --json", "-c 12", "{\"node\":\"lb1"),
    ] {
        let script = format!(
            r#""$0" {cmd} --socket "$1" | head {head}; echo "cli=${{PIPESTATUS[0]}} head=${{PIPESTATUS[1]}}" >&2"#
        );
        let o = run_cmd("bash", &["-c", &script, BIN, h.sock()], &[]).await;
        let err = text(&o.stderr);
        assert!(err.contains("cli=0 head=0"), "`{cmd} | head {head}`: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{err}"
        );
        let out = text(&o.stdout);
        assert!(out.starts_with(first), "{cmd}: {out}");
        assert!(out.len() <= 200, "{cmd}: more than head's share: {out}");
    }
    h.stop().await;
}

// ------------------------------------------------- unprivileged peers (root)

/// The built binary, or a copy in `dir` when `nobody` cannot reach it.
fn binary_for_nobody(dir: &Path) -> PathBuf {
    let bin = PathBuf::from(BIN);
    let reachable = bin
        .ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
        && std::fs::metadata(&bin).is_ok_and(|m| m.permissions().mode() & 0o005 == 0o005);
    if reachable {
        return bin;
    }
    let copy = dir.join("lb-agent");
    std::fs::copy(&bin, &copy).expect("copy binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

fn require_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} runs the CLI as uid 65534 through setpriv and needs root (CI runs as root)"
    );
}

/// Runs the CLI through `setpriv` with the given credential flags.
async fn cli_as(bin: &Path, creds: &[&str], args: &[&str]) -> Output {
    let mut all: Vec<&str> = creds.to_vec();
    all.push(bin.to_str().expect("utf-8"));
    all.extend(args);
    run_cmd("setpriv", &all, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_peer_may_read_but_not_mutate() {
    require_root("an_unprivileged_peer_may_read_but_not_mutate");
    let mut h = Harness::start(Daemon::Normal, |o| o.mode = 0o666).await;
    for d in [h.dir.path().to_path_buf(), h.dir.path().join("run")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    }
    let bin = binary_for_nobody(h.dir.path());
    let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let s = h.sock().to_string();

    let o = cli_as(&bin, &nobody, &["status", "--json", "--socket", &s]).await;
    assert_exit(&o, 0, "status as nobody");
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).expect("JSON")["node"],
        "lb1"
    );
    assert_exit(
        &cli_as(&bin, &nobody, &["vips", "--socket", &s]).await,
        0,
        "vips as nobody",
    );

    for args in [
        vec!["drain", "--reason", "x"],
        vec!["undrain"],
        vec!["reconcile"],
    ] {
        let mut a = args.clone();
        a.extend(["--socket", s.as_str()]);
        let o = cli_as(&bin, &nobody, &a).await;
        assert_exit(&o, 1, &format!("{args:?} as nobody"));
        let err = text(&o.stderr);
        assert!(err.contains("403 Forbidden"), "{err}");
        assert!(
            err.contains("uid 65534") && err.contains(&format!("not allowed to {}", args[0])),
            "{err}"
        );
        assert!(err.contains("needs uid 0"), "{err}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.assert_nothing_seen();

    // A socket whose permissions keep nobody out: it cannot even connect,
    // which is a runtime error (1), not "unreachable" (3).
    let closed = h.dir.path().join("run/closed.sock");
    let _closed = std::os::unix::net::UnixListener::bind(&closed).expect("bind");
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o660))
        .expect("chmod socket");
    let o = cli_as(
        &bin,
        &nobody,
        &["status", "--socket", closed.to_str().expect("utf-8")],
    )
    .await;
    assert_exit(&o, 1, "status as nobody on a 0660 root socket");
    assert!(
        text(&o.stderr).contains("permission denied"),
        "{}",
        text(&o.stderr)
    );

    // And root, through the same binary, is allowed.
    assert_exit(
        &cli_as(&bin, &["--reuid=0"], &["reconcile", "--socket", &s]).await,
        0,
        "reconcile as root",
    );
    assert_eq!(h.next_seen().await.0, Action::Reconcile);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_the_status_group_may_mutate() {
    require_root("members_of_the_status_group_may_mutate");
    // Any group that exists on a stock Debian; it only needs a gid nobody lacks.
    let group = "daemon";
    let gid = nix::unistd::Group::from_name(group)
        .expect("group db")
        .expect("group daemon exists")
        .gid
        .as_raw();
    let mut h = Harness::start(Daemon::Normal, |o| {
        o.mode = 0o666;
        o.group = SocketGroup::Named(group.into());
    })
    .await;
    for d in [h.dir.path().to_path_buf(), h.dir.path().join("run")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    }
    assert_eq!(
        std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(&h.socket).expect("socket")),
        gid,
        "socket given to the group"
    );
    let bin = binary_for_nobody(h.dir.path());
    let s = h.sock().to_string();

    // Supplementary membership (read from /proc/<pid>/status).
    let groups = format!("--groups={gid}");
    let o = cli_as(
        &bin,
        &["--reuid=65534", "--regid=65534", &groups],
        &["drain", "--reason", "via supplementary", "--socket", &s],
    )
    .await;
    assert_exit(
        &o,
        0,
        "drain as nobody with the group as a supplementary group",
    );
    let (action, peer) = h.next_seen().await;
    assert_eq!(
        action,
        Action::Drain {
            reason: "via supplementary".into()
        }
    );
    assert_eq!((peer.uid, peer.gid), (65534, 65534));

    // Primary group.
    let regid = format!("--regid={gid}");
    let o = cli_as(
        &bin,
        &["--reuid=65534", &regid, "--clear-groups"],
        &["undrain", "--socket", &s],
    )
    .await;
    assert_exit(&o, 0, "undrain as nobody with the group as primary group");
    assert_eq!(h.next_seen().await.1.gid, gid);

    // Neither: refused, and the message names the group.
    let o = cli_as(
        &bin,
        &["--reuid=65534", "--regid=65534", "--clear-groups"],
        &["undrain", "--socket", &s],
    )
    .await;
    assert_exit(&o, 1, "undrain as nobody without the group");
    assert!(
        text(&o.stderr).contains(&format!("membership of group {group}")),
        "{}",
        text(&o.stderr)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_renders_timestamps_at_or_after_now() {
    // Clock skew between the agent's stamps and the CLI's clock must not
    // panic the age computation.
    let mut snap = snapshot();
    snap.started_at = Some(Timestamp(SystemTime::now()));
    snap.source.last_success = Some(Timestamp(SystemTime::now() + Duration::from_secs(3600)));
    let h = Harness::start_with(snap, Daemon::Normal, |_| {}).await;
    let o = cli(&["status", "--socket", h.sock()], &[]).await;
    assert_exit(&o, 0, "status");
    assert!(
        text(&o.stdout).contains("last success 0s ago"),
        "{}",
        text(&o.stdout)
    );
    h.stop().await;
}

// ------------------------------------------------------- descriptor budget

/// Reads until EOF or `limit`; returns what arrived and whether EOF came.
async fn read_to_eof<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let r = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
    (String::from_utf8_lossy(&buf).into_owned(), r.is_ok())
}

/// Issue 14, finding 4: idle connections used to be kept forever and without
/// limit, so a flood of them used every descriptor of the agent. Now both
/// listeners cap their connections (the next one gets a 503 and is closed at
/// once), close a connection that sends no complete request head in time
/// (idle keep-alive and slowloris alike), and end connections at their
/// maximum age; normal requests work again as soon as slots free up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_idle_ones_closed() {
    use tokio::io::AsyncWriteExt;
    let header_timeout = Duration::from_millis(400);
    let h = Harness::start(Daemon::Normal, |o| {
        o.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        o.max_connections = 4;
        o.metrics_max_connections = 2;
        o.header_timeout = header_timeout;
        o.max_connection_age = Duration::from_secs(2);
    })
    .await;
    let tcp = h.metrics_addr.expect("metrics listener");

    // Fill the socket's four slots with idle connections (one slowloris).
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::UnixStream::connect(&h.socket).await.unwrap());
    }
    idle[0]
        .write_all(b"GET /v1/status HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // Let the server accept them before the fifth arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = std::time::Instant::now();
    let mut over = tokio::net::UnixStream::connect(&h.socket).await.unwrap();
    let (answer, eof) = read_to_eof(&mut over, Duration::from_secs(2)).await;
    assert!(eof, "the connection over the cap is closed at once");
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    assert!(answer.contains("too many connections"), "{answer:?}");
    println!("over the cap: 503 and closed after {:?}", t0.elapsed());

    // The idle ones (and the half-sent head) are closed after the header timeout.
    for (i, s) in idle.iter_mut().enumerate() {
        let (_, eof) = read_to_eof(s, header_timeout * 5).await;
        assert!(
            eof,
            "idle connection {i} still open after {:?}",
            header_timeout * 5
        );
    }
    let idle_closed = t0.elapsed();
    println!("4 idle connections closed {idle_closed:?} after the refusal (header timeout {header_timeout:?})");
    assert!(
        idle_closed >= header_timeout / 2,
        "closed too early: {idle_closed:?}"
    );

    // Slots are free again: a normal request works.
    let r = raw(&h.socket, Method::GET, "/v1/status", "").await;
    assert_eq!(r.0, StatusCode::OK);

    // The metrics listener: two slots.
    let a = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let b = tokio::net::TcpStream::connect(tcp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let (answer, eof) = read_to_eof(&mut c, Duration::from_secs(2)).await;
    assert!(eof && answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        raw_tcp(tcp, Method::GET, "/metrics").await.0,
        StatusCode::OK
    );

    // A busy keep-alive connection still ends at its maximum age (2 s).
    let mut busy = tokio::net::UnixStream::connect(&h.socket).await.unwrap();
    let t0 = std::time::Instant::now();
    let mut closed = false;
    while t0.elapsed() < Duration::from_secs(6) {
        let sent = busy
            .write_all(b"GET /v1/vips HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        if sent.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 4096];
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(Duration::from_secs(1), busy.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let age = t0.elapsed();
    println!(
        "keep-alive connection sending a request every ~100 ms closed after {age:?} (max age 2 s)"
    );
    assert!(closed, "still open after {age:?}");
    assert!(
        age >= Duration::from_millis(1500),
        "closed too early: {age:?}"
    );
    h.stop().await;
}

/// What Prometheus 2.x sends: OpenMetrics preferred, text format accepted.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Feeds an exposition to the Python Prometheus client's parser (Debian's
/// python3-prometheus-client): `module` is `prometheus_client.parser` (text
/// format 0.0.4) or `prometheus_client.openmetrics.parser` (strict
/// OpenMetrics). Returns `name type samples` per family, or the parser's error.
fn python_parse(module: &str, body: &str) -> Result<Vec<(String, String, usize)>, String> {
    use std::io::Write as _;
    let script = format!(
        "import sys\nfrom {module} import text_string_to_metric_families as parse\n\
         for f in parse(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n"
    );
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    Ok(text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            Some((w.next()?.into(), w.next()?.into(), w.next()?.parse().ok()?))
        })
        .collect())
}

fn python_client_missing() -> bool {
    let ok = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        common::skip::skip(
            "metrics_formats_parse_with_a_real_prometheus_parser",
            "/usr/bin/python3 cannot import prometheus_client; \
             apt-get install -y python3-prometheus-client (.ci/run does)",
        );
    }
    !ok
}

/// Without an `Accept` that prefers it, scrapers get the text format, which
/// a text-format parser reads family by family (an OpenMetrics body there
/// yields an `info` family with no samples and an `unknown` one); with
/// Prometheus's `Accept`, strict OpenMetrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_formats_parse_with_a_real_prometheus_parser() {
    if python_client_missing() {
        return;
    }
    let h = Harness::start(Daemon::Normal, |_| {}).await;
    observe_one_apply_and_one_failed_check(&h.metrics);
    let plain = raw(&h.socket, Method::GET, "/metrics", "").await;
    let om = scrape_as_prometheus(&h.socket).await;
    h.stop().await;
    assert_eq!(
        plain.1.get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(exposition::TEXT_CONTENT_TYPE.as_bytes())
    );
    let (plain, om) = (text(&plain.2), text(&om.2));
    assert!(!plain.contains("# EOF") && om.ends_with("# EOF\n"));

    let families = python_parse("prometheus_client.parser", &plain)
        .unwrap_or_else(|e| panic!("text format refused: {e}\n{plain}"));
    for (name, kind) in metrics::FAMILIES {
        let (name, kind) = match kind {
            "info" => (format!("{name}_info"), "gauge"),
            k => (name.to_string(), k),
        };
        assert!(
            families.iter().any(|(n, t, _)| *n == name && t == kind),
            "text format: no {kind} family {name}: {families:?}\n{plain}"
        );
    }
    for (n, t, samples) in &families {
        assert!(
            ["counter", "gauge", "histogram"].contains(&t.as_str()),
            "text format: family {n} has type {t}\n{plain}"
        );
        if n == "lb_agent_build_info" || n == "lb_agent_source_polls" {
            assert!(*samples > 0, "text format: {n} without samples\n{plain}");
        }
    }

    let strict = python_parse("prometheus_client.openmetrics.parser", &om)
        .unwrap_or_else(|e| panic!("OpenMetrics refused: {e}\n{om}"));
    for (name, kind) in metrics::FAMILIES {
        assert!(
            strict.iter().any(|(n, t, _)| n == name && t == kind),
            "OpenMetrics: no {kind} family {name}: {strict:?}"
        );
    }
    eprintln!(
        "text format: {} families, {} bytes; OpenMetrics: {} families, {} bytes; both parsed by prometheus_client",
        families.len(),
        plain.len(),
        strict.len(),
        om.len()
    );
}

fn observe_one_apply_and_one_failed_check(m: &Metrics) {
    m.observe_apply(0.04);
    m.observe_check(
        "192.0.2.20/32",
        "git_ssh",
        CheckOutcome::Fail,
        Duration::from_millis(3),
    );
}

/// `GET /metrics` with the `Accept` header Prometheus sends.
async fn scrape_as_prometheus(socket: &Path) -> (StatusCode, HeaderMap, Bytes) {
    raw_with(
        socket,
        Method::GET,
        "/metrics",
        "",
        &[("accept", PROMETHEUS_ACCEPT)],
    )
    .await
}
