//! The API poller against a real HTTP(S) server playing scripted scenarios
//! (docs/api.md, "Polling protocol"): every request the agent sends is matched against what the
//! protocol says it must send, and every answer's effect is checked on the
//! poller's output and status channels. Every wait is bounded.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::fake_api;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_api::{pki, FakeApi, Reply, Step};
use lb_agent::config::{SourceConfig, SourceUrl};
use lb_agent::source::{self, Accepted, Document, Parser, SourceState, SourceStatus, Tuning};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NODE: &str = "test-node";
const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// The document type of these tests: any JSON object with a `revision`.
#[derive(Debug)]
struct Doc {
    revision: u64,
    json: serde_json::Value,
}

impl Document for Doc {
    fn revision(&self) -> u64 {
        self.revision
    }
}

fn parser() -> Parser<Doc> {
    Arc::new(|raw: &[u8]| {
        let json: serde_json::Value = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
        let revision = json["revision"]
            .as_u64()
            .ok_or_else(|| "revision: missing or not an integer".to_string())?;
        Ok(Doc { revision, json })
    })
}

fn doc(revision: u64) -> String {
    format!(r#"{{"schema": 1, "revision": {revision}, "group": "blue"}}"#)
}

fn user_agent() -> String {
    format!("lb-agent/{} ({NODE})", env!("CARGO_PKG_VERSION"))
}

/// The first request of a fresh poller.
fn first(label: &str) -> Step {
    Step::get(label)
        .no_long_poll()
        .no_header("if-none-match")
        .header("accept", "application/json")
        .header_contains("accept-encoding", "gzip")
        .header("user-agent", &user_agent())
}

/// A follow-up request after accepting `revision` with `etag`.
fn next(label: &str, revision: u64, etag: &str) -> Step {
    Step::get(label)
        .long_poll(revision)
        .header("if-none-match", etag)
        .header("user-agent", &user_agent())
}

fn config(url: SourceUrl, dir: &Path) -> SourceConfig {
    SourceConfig {
        url,
        poll_interval: 200 * MS,
        long_poll: 30 * S,
        token_file: None,
        ca_file: None,
        client_cert: None,
        client_key: None,
        cache: dir.join("last-good.json"),
        max_removal_ratio: 0.5,
        connect_timeout: 2 * S,
        max_document_size: 16 << 20,
        username: None,
        password_file: None,
    }
}

fn http(url: String, dir: &Path) -> SourceConfig {
    config(SourceUrl::Http(url), dir)
}

/// A running poller and its two output channels.
struct Poller {
    out: watch::Receiver<Option<Arc<Accepted<Doc>>>>,
    status: watch::Receiver<SourceStatus>,
    /// Every revision delivered, in order (a task watches `out`).
    delivered: Arc<std::sync::Mutex<Vec<(u64, bool)>>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
}

fn spawn(cfg: SourceConfig) -> Poller {
    let (out_tx, out) = watch::channel(None);
    let (status_tx, status) = watch::channel(SourceStatus::default());
    let cancel = CancellationToken::new();
    // Short backoff so error scenarios run in milliseconds.
    let tuning = Tuning {
        backoff_base: 20 * MS,
        backoff_cap: 100 * MS,
        backoff_floor: 5 * MS,
        ..Tuning::default()
    };
    let task = tokio::spawn(source::run_with(
        cfg,
        NODE.into(),
        parser(),
        out_tx,
        status_tx,
        cancel.clone(),
        tuning,
    ));
    let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut watcher = out.clone();
    let log = Arc::clone(&delivered);
    let watcher = tokio::spawn(async move {
        while watcher.changed().await.is_ok() {
            if let Some(a) = watcher.borrow_and_update().as_ref() {
                log.lock().unwrap().push((a.doc.revision, a.from_cache));
            }
        }
    });
    Poller {
        out,
        status,
        delivered,
        cancel,
        task,
        watcher,
    }
}

impl Poller {
    /// Waits for a delivered document with `revision`.
    async fn revision(&mut self, revision: u64, timeout: Duration) -> Arc<Accepted<Doc>> {
        let got = tokio::time::timeout(
            timeout,
            self.out
                .wait_for(|a| a.as_ref().is_some_and(|a| a.doc.revision == revision)),
        )
        .await;
        match got {
            Ok(Ok(a)) => a.clone().unwrap(),
            _ => panic!(
                "revision {revision} not delivered within {timeout:?}; status: {:?}",
                *self.status.borrow()
            ),
        }
    }

    /// Waits until the status satisfies `pred`.
    async fn status_until(
        &mut self,
        timeout: Duration,
        pred: impl FnMut(&SourceStatus) -> bool,
    ) -> SourceStatus {
        let got = tokio::time::timeout(timeout, self.status.wait_for(pred))
            .await
            .ok()
            .and_then(|r| r.ok().map(|s| s.clone()));
        match got {
            Some(s) => s,
            None => panic!(
                "status condition not met within {timeout:?}; status: {:?}",
                *self.status.borrow()
            ),
        }
    }

    fn status(&self) -> SourceStatus {
        self.status.borrow().clone()
    }

    /// Stops the poller; returns every delivery seen (revision, from_cache).
    async fn stop(self) -> Vec<(u64, bool)> {
        self.cancel.cancel();
        tokio::time::timeout(5 * S, self.task)
            .await
            .expect("poller stops on cancel")
            .expect("poller task");
        // The poller dropped its sender: the watcher drains and ends.
        tokio::time::timeout(5 * S, self.watcher)
            .await
            .expect("watcher ends with the poller")
            .expect("watcher task");
        let delivered = self.delivered.lock().unwrap().clone();
        delivered
    }
}

#[tokio::test]
async fn initial_200_with_etag_then_304_with_if_none_match() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(vec![
        first("initial")
            .no_header("authorization")
            .reply(Reply::json(&doc(1)).etag("\"rev-1\"")),
        next("conditional 1", 1, "\"rev-1\"").reply(Reply::not_modified()),
        next("conditional 2", 1, "\"rev-1\"").reply(Reply::not_modified()),
        next("idle", 1, "\"rev-1\"").reply(Reply::idle()),
    ])
    .await;
    let mut p = spawn(http(api.url(), dir.path()));

    let a = p.revision(1, 5 * S).await;
    assert_eq!(a.etag.as_deref(), Some("\"rev-1\""));
    assert!(!a.from_cache);
    assert_eq!(a.doc.json["group"], "blue");
    assert_eq!(a.raw.bytes().unwrap(), doc(1).as_bytes());

    api.wait_for_requests(4, 5 * S).await;
    let st = p.status();
    assert_eq!(st.state, SourceState::Ok);
    assert_eq!(
        (st.polls_ok, st.polls_not_modified, st.polls_error),
        (1, 2, 0)
    );
    assert_eq!(st.revision, Some(1));
    assert_eq!(st.url, api.url());
    assert!(st.last_success.is_some());

    let arrivals = api.arrivals();
    // After a new revision: at once. After a fast 304: poll_interval ±10%.
    let gap = |i: usize| arrivals[i].at - arrivals[i - 1].at;
    assert!(
        gap(1) < 150 * MS,
        "re-poll after a new revision took {:?}",
        gap(1)
    );
    for i in [2, 3] {
        assert!(
            gap(i) >= 180 * MS && gap(i) < 1000 * MS,
            "gap before request {i} is {:?}, expected ~200ms",
            gap(i)
        );
    }
    let delivered = p.stop().await;
    api.finish().await;
    assert_eq!(delivered, [(1, false)], "304s deliver nothing");
}

#[tokio::test]
async fn long_poll_delivers_a_published_change_in_well_under_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (held, publish) = Reply::json(&doc(2)).etag("\"rev-2\"").held();
    let api = FakeApi::start(vec![
        first("initial").reply(Reply::json(&doc(1)).etag("\"rev-1\"")),
        next("long-poll held until a change", 1, "\"rev-1\"").reply(held),
        next("next long-poll", 2, "\"rev-2\"").reply(Reply::idle()),
    ])
    .await;
    let mut p = spawn(http(api.url(), dir.path()));
    p.revision(1, 5 * S).await;
    api.wait_for_requests(2, 5 * S).await;

    // The server holds the request; the poller waits without re-polling.
    tokio::time::sleep(500 * MS).await;
    assert_eq!(
        api.arrivals().len(),
        2,
        "the poller must not re-poll while held"
    );
    assert_eq!(p.status().state, SourceState::Ok);

    let published = publish.release();
    p.revision(2, 5 * S).await;
    let latency = published.elapsed();
    println!("long-poll: published change delivered after {latency:?}");
    assert!(latency < 500 * MS, "change took {latency:?}");

    api.wait_for_requests(3, 5 * S).await;
    let delivered = p.stop().await;
    api.finish().await;
    assert_eq!(delivered, [(1, false), (2, false)]);
}

#[tokio::test]
async fn regressing_revision_is_ignored_and_its_etag_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(vec![
        first("initial").reply(Reply::json(&doc(5)).etag("\"rev-5\"")),
        next("answered with an older revision", 5, "\"rev-5\"")
            .reply(Reply::json(&doc(4)).etag("\"rev-4\"")),
        next("still revision 5 and its ETag", 5, "\"rev-5\"")
            .reply(Reply::json(&doc(6)).etag("\"rev-6\"")),
        next("idle", 6, "\"rev-6\"").reply(Reply::idle()),
    ])
    .await;
    let mut p = spawn(http(api.url(), dir.path()));
    p.revision(6, 5 * S).await;
    api.wait_for_requests(4, 5 * S).await;
    let st = p.status();
    assert_eq!(st.ignored_older, 1);
    assert_eq!(st.state, SourceState::Ok);
    let delivered = p.stop().await;
    api.finish().await;
    assert_eq!(
        delivered,
        [(5, false), (6, false)],
        "revision 4 must never be delivered"
    );
}

#[tokio::test]
async fn server_errors_back_off_then_go_stale_then_recover() {
    let dir = tempfile::tempdir().unwrap();
    let (second, release_second) = Reply::status(503).body("maintenance").held();
    let (fourth, release_fourth) = Reply::json(&doc(1)).etag("\"rev-1\"").held();
    let api = FakeApi::start(vec![
        first("503 #1").reply(Reply::status(503).body("maintenance")),
        first("503 #2 (held)").reply(second),
        first("503 #3").reply(Reply::status(503)),
        first("recovery (held)").reply(fourth),
        next("idle", 1, "\"rev-1\"").reply(Reply::idle()),
    ])
    .await;
    let mut p = spawn(http(api.url(), dir.path()));

    // While request 2 is held, the status shows the first failure.
    api.wait_for_requests(2, 5 * S).await;
    let st = p.status();
    assert_eq!((st.state, st.consecutive_failures), (SourceState::Error, 1));
    assert_eq!(
        st.error.as_deref(),
        Some("HTTP 503 Service Unavailable: maintenance")
    );
    release_second.release();

    // While request 4 is held: three failures in a row → stale.
    api.wait_for_requests(4, 5 * S).await;
    let st = p.status();
    assert_eq!((st.state, st.consecutive_failures), (SourceState::Stale, 3));
    assert_eq!(st.polls_error, 3);
    assert!(p.out.borrow().is_none(), "nothing to deliver yet");
    release_fourth.release();

    p.revision(1, 5 * S).await;
    let st = p.status_until(5 * S, |s| s.state == SourceState::Ok).await;
    assert_eq!((st.consecutive_failures, st.error), (0, None));
    api.wait_for_requests(5, 5 * S).await;

    // Backoff: each retry waited at least the floor (5 ms) and at most the
    // cap (100 ms) plus scheduling slack.
    let arrivals = api.arrivals();
    for i in 1..4 {
        let gap = arrivals[i].at - arrivals[i - 1].at;
        assert!(gap >= 5 * MS, "retry {i} after {gap:?}");
    }
    let gap = arrivals[3].at - arrivals[2].at;
    assert!(gap < 600 * MS, "retry 3 after {gap:?}");
    p.stop().await;
    api.finish().await;
}

#[tokio::test]
async fn garbage_body_is_an_error_and_the_previous_document_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (check, release) = Reply::not_modified().held();
    let api = FakeApi::start(vec![
        first("initial").reply(Reply::json(&doc(1)).etag("\"rev-1\"")),
        next("garbage", 1, "\"rev-1\"")
            .reply(Reply::json("<html>502 Bad Gateway</html>").etag("\"garbage\"")),
        next(
            "still conditional on the good document (held)",
            1,
            "\"rev-1\"",
        )
        .reply(check),
        next("idle", 1, "\"rev-1\"").reply(Reply::idle()),
    ])
    .await;
    let mut p = spawn(http(api.url(), dir.path()));
    p.revision(1, 5 * S).await;
    api.wait_for_requests(3, 5 * S).await;

    let st = p.status();
    assert_eq!(st.state, SourceState::Error);
    let error = st.error.unwrap();
    assert!(error.starts_with("invalid document: "), "{error}");
    assert_eq!(p.out.borrow().as_ref().unwrap().doc.revision, 1);
    assert_eq!(st.revision, Some(1));

    release.release();
    p.status_until(5 * S, |s| s.state == SourceState::Ok).await;
    api.wait_for_requests(4, 5 * S).await;
    let delivered = p.stop().await;
    api.finish().await;
    assert_eq!(delivered, [(1, false)]);
}

#[tokio::test]
async fn gzip_body_is_decompressed() {
    let dir = tempfile::tempdir().unwrap();
    let body = doc(3);
    let api = FakeApi::start(vec![
        first("gzip").reply(Reply::json(&body).etag("\"rev-3\"").gzip()),
        next("idle", 3, "\"rev-3\"").reply(Reply::idle()),
    ])
    .await;
    let mut p = spawn(http(api.url(), dir.path()));
    let a = p.revision(3, 5 * S).await;
    assert_eq!(
        a.raw.bytes().unwrap(),
        body.as_bytes(),
        "raw is the decompressed body"
    );
    api.wait_for_requests(2, 5 * S).await;
    p.stop().await;
    api.finish().await;
}

#[tokio::test]
async fn bearer_token_is_read_from_the_file_for_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "  s3cret\n").unwrap();
    let (initial, release) = Reply::json(&doc(1)).etag("\"rev-1\"").held();
    let api = FakeApi::start(vec![
        first("initial")
            .header("authorization", "Bearer s3cret")
            .reply(initial),
        next("after rotation", 1, "\"rev-1\"")
            .header("authorization", "Bearer rotated")
            .reply(Reply::idle()),
    ])
    .await;
    let mut cfg = http(api.url(), dir.path());
    cfg.token_file = Some(token.clone());
    let mut p = spawn(cfg);
    api.wait_for_requests(1, 5 * S).await;
    std::fs::write(&token, "rotated").unwrap();
    release.release();
    p.revision(1, 5 * S).await;
    api.wait_for_requests(2, 5 * S).await;
    p.stop().await;
    api.finish().await;
}

#[tokio::test]
async fn missing_token_file_fails_without_sending_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(vec![]).await;
    let mut cfg = http(api.url(), dir.path());
    cfg.token_file = Some(dir.path().join("no-such-token"));
    let mut p = spawn(cfg);
    let st = p
        .status_until(5 * S, |s| s.state == SourceState::Stale)
        .await;
    assert!(
        st.error.as_deref().unwrap().starts_with("token file "),
        "{st:?}"
    );
    p.stop().await;
    api.finish().await; // fails if any request arrived
}

#[tokio::test]
async fn https_with_a_custom_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("lb-agent test CA");
    let server = ca.server();
    let tls = pki::server_config(&server, None);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let api = FakeApi::start_tls(
        vec![
            first("initial over TLS").reply(Reply::json(&doc(1)).etag("\"rev-1\"")),
            next("idle", 1, "\"rev-1\"").reply(Reply::idle()),
        ],
        Arc::clone(&tls),
    )
    .await;
    assert!(api.url().starts_with("https://127.0.0.1:"));
    let mut cfg = http(api.url(), dir.path());
    cfg.ca_file = Some(ca_file);
    let mut p = spawn(cfg);
    p.revision(1, 5 * S).await;
    api.wait_for_requests(2, 5 * S).await;
    p.stop().await;
    api.finish().await;

    // Without ca_file the private CA is not trusted: no request gets through.
    let api = FakeApi::start_tls(vec![], tls).await;
    let mut p = spawn(http(api.url(), dir.path()));
    let st = p.status_until(5 * S, |s| s.consecutive_failures >= 1).await;
    let error = st.error.unwrap();
    println!("untrusted server certificate: {error}");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    p.stop().await;
    api.finish().await;
}

/// Issue 14: reqwest's default policy follows a redirect from https to
/// http, which would hand the poll (and the document it returns) to anyone
/// on the path. The agent refuses it, and the plain-HTTP server never sees
/// a request.
#[tokio::test]
async fn a_redirect_from_https_to_http_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("lb-agent test CA");
    let tls = pki::server_config(&ca.server(), None);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    // The downgrade target: any request reaching it fails `finish()`.
    let plain = FakeApi::start(vec![]).await;
    let api =
        FakeApi::start_tls(
            vec![first("redirected to http")
                .reply(Reply::status(302).header("location", &plain.url()))],
            tls,
        )
        .await;
    let mut cfg = http(api.url(), dir.path());
    cfg.ca_file = Some(ca_file);
    let mut p = spawn(cfg);
    let st = p.status_until(5 * S, |s| s.consecutive_failures >= 1).await;
    let error = st.error.unwrap();
    println!("https -> http redirect: {error}");
    assert!(error.contains("leaves https"), "{error}");
    assert!(p.out.borrow().is_none());
    p.stop().await;
    api.finish().await;
    plain.finish().await;
}

/// `[source] max_document_size` reaches the fetcher through `source::run`
/// (the production entry point): a document one byte over it is refused
/// before it is parsed, one at the limit is accepted.
#[tokio::test]
async fn max_document_size_from_the_config_bounds_documents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("desired.json");
    let limit = 64 << 10;
    let padded = |revision: u64, len: usize| {
        let head = format!(r#"{{"schema": 1, "revision": {revision}, "group": "blue", "pad": ""#);
        let pad = "x".repeat(len - head.len() - 2);
        format!("{head}{pad}\"}}")
    };
    std::fs::write(&path, padded(1, limit + 1)).unwrap();
    let mut cfg = config(SourceUrl::File(path.clone()), dir.path());
    cfg.poll_interval = 50 * MS;
    cfg.max_document_size = limit;
    let (out_tx, mut out) = watch::channel(None);
    let (status_tx, mut status) = watch::channel(SourceStatus::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(source::run(
        cfg,
        NODE.into(),
        parser(),
        out_tx,
        status_tx,
        cancel.clone(),
    ));
    let st = tokio::time::timeout(5 * S, status.wait_for(|s| s.error.is_some()))
        .await
        .expect("an error within 5 s")
        .unwrap()
        .clone();
    let error = st.error.unwrap();
    assert!(
        error.contains(&format!("larger than {limit} bytes")),
        "{error}"
    );
    assert!(out.borrow().is_none());

    std::fs::write(&path, padded(2, limit)).unwrap();
    tokio::time::timeout(
        5 * S,
        out.wait_for(|a| a.as_ref().is_some_and(|a| a.doc.revision == 2)),
    )
    .await
    .expect("the document at the limit is accepted")
    .unwrap();
    cancel.cancel();
    tokio::time::timeout(5 * S, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_replaced_ca_file_is_picked_up_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("lb-agent test CA");
    let tls = pki::server_config(&ca.server(), None);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, pki::Ca::new("some other CA").pem()).unwrap();

    let api = FakeApi::start_tls(
        vec![
            first("after the CA file was fixed").reply(Reply::json(&doc(1)).etag("\"rev-1\"")),
            next("idle", 1, "\"rev-1\"").reply(Reply::idle()),
        ],
        tls,
    )
    .await;
    let mut cfg = http(api.url(), dir.path());
    cfg.ca_file = Some(ca_file.clone());
    let mut p = spawn(cfg);
    let st = p.status_until(5 * S, |s| s.consecutive_failures >= 2).await;
    assert!(st.error.unwrap().contains("UnknownIssuer"));
    assert!(api.arrivals().is_empty());

    std::fs::write(&ca_file, ca.pem()).unwrap();
    p.revision(1, 5 * S).await;
    api.wait_for_requests(2, 5 * S).await;
    p.stop().await;
    api.finish().await;
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = pki::Ca::new("server CA");
    let client_ca = pki::Ca::new("client CA");
    let tls = pki::server_config(&server_ca.server(), Some(&client_ca));
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_file = write("ca.pem", &server_ca.pem());
    let client = client_ca.client(NODE);
    let cert = write("client.pem", &client.cert_pem);
    let key = write("client.key", &client.key_pem);

    let api = FakeApi::start_tls(
        vec![
            first("initial with a client certificate")
                .reply(Reply::json(&doc(1)).etag("\"rev-1\"")),
            next("idle", 1, "\"rev-1\"").reply(Reply::idle()),
        ],
        Arc::clone(&tls),
    )
    .await;
    let mut cfg = http(api.url(), dir.path());
    cfg.ca_file = Some(ca_file.clone());
    cfg.client_cert = Some(cert);
    cfg.client_key = Some(key);
    let mut p = spawn(cfg);
    p.revision(1, 5 * S).await;
    api.wait_for_requests(2, 5 * S).await;
    p.stop().await;
    api.finish().await;

    // Without a client certificate the server refuses the handshake.
    let api = FakeApi::start_tls(vec![], tls).await;
    let mut cfg = http(api.url(), dir.path());
    cfg.ca_file = Some(ca_file);
    let mut p = spawn(cfg);
    let st = p.status_until(5 * S, |s| s.consecutive_failures >= 1).await;
    println!("no client certificate: {}", st.error.as_deref().unwrap());
    assert_eq!(st.state, SourceState::Error);
    assert!(p.out.borrow().is_none());
    p.stop().await;
    api.finish().await;
}

#[tokio::test]
async fn file_source_notices_changes_within_poll_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("desired.json");
    // Rewrites the way config management does: new file, then rename.
    let publish = |text: &str| {
        let tmp = dir.path().join(".desired.json.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        Instant::now()
    };
    publish(&doc(1));
    let mut cfg = config(SourceUrl::File(path.clone()), dir.path());
    cfg.poll_interval = 100 * MS;
    let mut p = spawn(cfg);
    let a = p.revision(1, 5 * S).await;
    assert_eq!(
        a.etag.as_ref().map(String::len),
        Some(64),
        "sha-256 as etag"
    );

    let t = publish(&doc(2));
    p.revision(2, 5 * S).await;
    let noticed = t.elapsed();
    println!("file://: change noticed after {noticed:?} (poll_interval 100ms)");
    assert!(noticed < 600 * MS, "took {noticed:?}");

    // Same content rewritten: not delivered again.
    publish(&doc(2));
    tokio::time::sleep(300 * MS).await;

    // A broken file: error, then stale; the accepted document stays.
    publish("{ not json");
    let st = p
        .status_until(5 * S, |s| s.state == SourceState::Stale)
        .await;
    assert!(st.error.unwrap().starts_with("invalid document: "));
    assert_eq!(p.out.borrow().as_ref().unwrap().doc.revision, 2);

    publish(&doc(3));
    p.revision(3, 5 * S).await;
    p.status_until(5 * S, |s| s.state == SourceState::Ok).await;
    let delivered = p.stop().await;
    assert_eq!(delivered, [(1, false), (2, false), (3, false)]);
}

#[tokio::test]
async fn cache_is_delivered_when_the_api_is_down_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = http(format!("http://{closed}/v1/groups/blue/config"), dir.path());
    source::store_cache(&cfg.cache, doc(7).as_bytes()).unwrap();
    let mut p = spawn(cfg);
    let a = p.revision(7, 5 * S).await;
    assert!(a.from_cache);
    let st = p.status();
    assert!(st.from_cache);
    assert_eq!(st.revision, Some(7));
    let st = p
        .status_until(5 * S, |s| s.state == SourceState::Stale)
        .await;
    assert!(
        st.error.as_deref().unwrap().starts_with("connect failed: "),
        "{st:?}"
    );
    let delivered = p.stop().await;
    assert_eq!(delivered, [(7, true)]);
}

#[tokio::test]
async fn after_the_cache_the_api_is_long_polled_from_the_cached_revision() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(vec![
        first("down").reply(Reply::status(503)),
        Step::get("long-poll from the cached revision, no ETag known")
            .long_poll(7)
            .no_header("if-none-match")
            .reply(Reply::json(&doc(8)).etag("\"rev-8\"")),
        next("idle", 8, "\"rev-8\"").reply(Reply::idle()),
    ])
    .await;
    let cfg = http(api.url(), dir.path());
    source::store_cache(&cfg.cache, doc(7).as_bytes()).unwrap();
    let mut p = spawn(cfg);
    p.revision(8, 5 * S).await;
    api.wait_for_requests(3, 5 * S).await;
    assert!(!p.status().from_cache);
    let delivered = p.stop().await;
    api.finish().await;
    assert_eq!(delivered, [(7, true), (8, false)]);
}

#[tokio::test]
async fn cache_is_not_used_when_the_first_poll_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(vec![
        first("initial").reply(Reply::json(&doc(1)).etag("\"rev-1\"")),
        next("error", 1, "\"rev-1\"").reply(Reply::status(500)),
        next("idle", 1, "\"rev-1\"").reply(Reply::idle()),
    ])
    .await;
    let cfg = http(api.url(), dir.path());
    source::store_cache(&cfg.cache, doc(99).as_bytes()).unwrap();
    let mut p = spawn(cfg);
    p.revision(1, 5 * S).await;
    api.wait_for_requests(3, 5 * S).await;
    let delivered = p.stop().await;
    api.finish().await;
    assert_eq!(delivered, [(1, false)]);
}

// The harness itself must be able to fail, or the tests above prove nothing.

#[tokio::test]
async fn fake_api_fails_when_an_expected_request_never_comes() {
    let api = FakeApi::start(vec![first("never sent").reply(Reply::not_modified())]).await;
    let result = tokio::spawn(api.finish()).await;
    let panic = result.expect_err("finish must fail").into_panic();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("MISSING: never sent"), "{message}");
}

#[tokio::test]
async fn fake_api_fails_on_a_mismatching_or_unexpected_request() {
    let api = FakeApi::start(vec![Step::get("wants a token")
        .header("authorization", "Bearer x")
        .reply(Reply::not_modified())])
    .await;
    let client = reqwest_client();
    client.get(api.url()).send().await.unwrap();
    client.get(api.url()).send().await.unwrap();
    let result = tokio::spawn(api.finish()).await;
    let panic = result.expect_err("finish must fail").into_panic();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("header authorization: None"), "{message}");
    assert!(message.contains("unexpected request #2"), "{message}");
}

fn reqwest_client() -> reqwest::Client {
    source::ensure_crypto_provider();
    reqwest::Client::new()
}
