//! The etcd source against real etcd members the tests start (issue 11):
//! list then watch, transaction-by-transaction delivery, a bad key rejected
//! by name, compaction, a member killed under the agent, etcd down at start,
//! a 20k-server transaction, publish/export round trip, racing publishers,
//! and the real agent binary driving a real HAProxy from etcd.
//!
//! The source under test is the agent's own (`source::run_with`) with the
//! agent's validator as its parser. Every wait is bounded; every process is
//! killed by PID on drop. Skips loudly without `etcd`.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::{agent, backend, etcd, fake_api, haproxy};

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd::{txn, Cable, Cluster};
use lb_agent::config::{EtcdUrl, SourceConfig, SourceUrl};
use lb_agent::model::DesiredState;
use lb_agent::publish::{self, PublishError};
use lb_agent::source::etcd::Credentials;
use lb_agent::source::{self, Accepted, Parser, SourceState, SourceStatus, Tuning};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "/lb/blue/";
const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn parser() -> Parser<DesiredState> {
    let ctx = lb_agent::model::validate::ValidateContext {
        group: "blue".into(),
    };
    Arc::new(move |raw: &[u8]| {
        lb_agent::model::validate::parse_document(raw, &ctx).map_err(|e| e.to_string())
    })
}

/// A group with `pools` pools of `servers` servers each.
fn doc(pools: usize, servers: usize, weight: u32) -> Value {
    json!({
        "schema": 1, "revision": 1, "group": "blue",
        "vips": [{"address": "192.0.2.10/32"}],
        "frontends": [{"name": "www", "bind": ["192.0.2.10:80"], "mode": "http", "default_pool": "p0"}],
        "pools": (0..pools).map(|p| json!({
            "name": format!("p{p}"), "mode": "http",
            "servers": (0..servers).map(|s| json!({
                "name": format!("s{s}"), "address": format!("10.{}.{}.{}", p / 250, p % 250, s % 250 + 1),
                "port": 8080, "weight": weight
            })).collect::<Vec<_>>()
        })).collect::<Vec<_>>()
    })
}

fn server(pool: usize, s: usize, weight: u32) -> (String, String) {
    (
        format!("servers/p{pool}/s{s}"),
        json!({"name": format!("s{s}"), "address": format!("10.{}.{}.{}", pool / 250, pool % 250, s % 250 + 1), "port": 8080, "weight": weight}).to_string(),
    )
}

fn url(endpoints: Vec<String>) -> EtcdUrl {
    EtcdUrl {
        endpoints,
        prefix: PREFIX.into(),
    }
}

async fn publish_doc(endpoints: Vec<String>, d: &Value) -> i64 {
    let r = publish::publish(
        &url(endpoints),
        &Credentials::default(),
        d.to_string().as_bytes(),
        false,
        64 << 20,
    )
    .await
    .expect("publish");
    r.revision.expect("something was written")
}

struct Src {
    out: watch::Receiver<Option<Arc<Accepted<DesiredState>>>>,
    status: watch::Receiver<SourceStatus>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn spawn(endpoints: Vec<String>) -> Src {
    spawn_with_cache(endpoints, None)
}

fn spawn_with_cache(endpoints: Vec<String>, cache: Option<&[u8]>) -> Src {
    spawn_full(endpoints, cache, Credentials::default())
}

fn spawn_full(endpoints: Vec<String>, cache: Option<&[u8]>, creds: Credentials) -> Src {
    let dir = tempfile::tempdir().unwrap();
    let cache_path = dir.path().join("last-good.json");
    if let Some(c) = cache {
        std::fs::write(&cache_path, c).unwrap();
    }
    let cfg = SourceConfig {
        url: SourceUrl::Etcd(url(endpoints)),
        poll_interval: S,
        long_poll: 10 * S,
        token_file: None,
        ca_file: None,
        client_cert: None,
        client_key: None,
        cache: cache_path,
        max_removal_ratio: 1.0,
        connect_timeout: S,
        max_document_size: 64 << 20,
        username: creds.username,
        password_file: creds.password_file,
    };
    let cfg = SourceConfig {
        ca_file: creds.ca_file,
        client_cert: creds.client_cert,
        client_key: creds.client_key,
        ..cfg
    };
    let tuning = Tuning {
        backoff_base: 20 * MS,
        backoff_cap: 200 * MS,
        backoff_floor: 10 * MS,
        max_document_bytes: 64 << 20,
        ..Tuning::default()
    };
    let (out_tx, out) = watch::channel(None);
    let (st_tx, status) = watch::channel(SourceStatus::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(source::run_with(
        cfg,
        "test".into(),
        parser(),
        out_tx,
        st_tx,
        cancel.clone(),
        tuning,
    ));
    Src {
        out,
        status,
        cancel,
        task,
        _dir: dir,
    }
}

impl Src {
    fn revision(&self) -> Option<u64> {
        self.out.borrow().as_ref().map(|a| a.doc.revision)
    }

    async fn wait_doc(
        &mut self,
        what: &str,
        limit: Duration,
        f: impl Fn(&Accepted<DesiredState>) -> bool,
    ) -> Arc<Accepted<DesiredState>> {
        let status = self.status.clone();
        match tokio::time::timeout(
            limit,
            self.out.wait_for(|a| a.as_ref().is_some_and(|a| f(a))),
        )
        .await
        {
            Ok(Ok(a)) => a.clone().unwrap(),
            _ => panic!(
                "{what}: not within {limit:?}; status {:#?}",
                status.borrow()
            ),
        }
    }

    async fn wait_status(
        &mut self,
        what: &str,
        limit: Duration,
        f: impl Fn(&SourceStatus) -> bool,
    ) -> SourceStatus {
        let mut rx = self.status.clone();
        let got = tokio::time::timeout(limit, rx.wait_for(|s| f(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match got {
            Ok(Ok(s)) => s,
            _ => panic!(
                "{what}: not within {limit:?}; status {:#?}",
                self.status.borrow()
            ),
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(5 * S, self.task)
            .await
            .expect("the source stops on cancel")
            .unwrap();
    }
}

fn weight(d: &DesiredState, pool: &str, server: &str) -> u16 {
    let p = d.pools.iter().find(|(n, _)| n.as_str() == pool).unwrap().1;
    p.servers
        .iter()
        .find(|(n, _)| n.as_str() == server)
        .unwrap()
        .1
        .weight
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_lists_then_applies_each_transaction() {
    if !etcd::available("single_member_lists_then_applies_each_transaction") {
        return;
    }
    let c = Cluster::start(1).await;
    let r1 = publish_doc(c.endpoints(), &doc(2, 3, 10)).await;
    let mut src = spawn(c.endpoints());
    let a = src
        .wait_doc("the listing", 10 * S, |a| a.doc.revision == r1 as u64)
        .await;
    assert_eq!(weight(&a.doc, "p1", "s2"), 10);
    assert!(!a.from_cache);

    let mut client = c.client().await;
    // One transaction of two events, then one that deletes a server.
    let r2 = txn(
        &mut client,
        PREFIX,
        &[server(0, 0, 20), server(1, 2, 30)],
        &[],
    )
    .await;
    let a = src
        .wait_doc("txn 1", 10 * S, |a| a.doc.revision == r2 as u64)
        .await;
    assert_eq!(
        (weight(&a.doc, "p0", "s0"), weight(&a.doc, "p1", "s2")),
        (20, 30)
    );
    let r3 = txn(&mut client, PREFIX, &[], &["servers/p1/s0".to_string()]).await;
    let a = src
        .wait_doc("txn 2", 10 * S, |a| a.doc.revision == r3 as u64)
        .await;
    let p1 = a
        .doc
        .pools
        .iter()
        .find(|(n, _)| n.as_str() == "p1")
        .unwrap()
        .1;
    assert_eq!(p1.servers.len(), 2);
    // A write outside the prefix is not an event for us.
    client.put("/lb/green/group", "{}", None).await.unwrap();
    let st = src
        .wait_status("watching", 5 * S, |s| {
            s.stream
                .as_ref()
                .is_some_and(|t| t.watch_state == "watching")
        })
        .await;
    let stream = st.stream.clone().unwrap();
    assert_eq!(stream.endpoint, c.endpoints()[0]);
    assert_eq!(stream.revision, Some(r3 as u64));
    assert_eq!(
        (stream.lists, stream.transactions, stream.events),
        (1, 2, 3)
    );
    assert_eq!(st.state, SourceState::Ok);
    src.stop().await;
}

/// `(incremental, full)` revision counts of the source's stream status.
fn paths(st: &SourceStatus) -> (u64, u64) {
    let t = st
        .stream
        .as_ref()
        .expect("an etcd source has a stream status");
    (t.revisions_incremental, t.revisions_full)
}

/// `d` as the full path parses it, at `revision`.
fn parsed(mut d: Value, revision: i64) -> DesiredState {
    d["revision"] = json!(revision);
    parser()(d.to_string().as_bytes()).expect("valid")
}

/// A one-server change takes the incremental path end to end (watch event
/// → accepted document, equal to the full path's); a change of another
/// kind, a rejected revision and the one after it take the full path; the
/// cache the daemon asks for is written off the async threads with the
/// applied revision, and a source that boots without etcd serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_changes_are_patched_in_place_and_the_cache_is_written_on_request() {
    if !etcd::available("server_changes_are_patched_in_place") {
        return;
    }
    let c = Cluster::start(1).await;
    let mut want = doc(3, 3, 10);
    let r1 = publish_doc(c.endpoints(), &want).await;
    let mut src = spawn(c.endpoints());
    src.wait_doc("the listing", 10 * S, |a| a.doc.revision == r1 as u64)
        .await;
    assert_eq!(paths(&src.status.borrow()), (0, 1), "the listing is full");

    let mut client = c.client().await;
    let r2 = txn(&mut client, PREFIX, &[server(1, 2, 20)], &[]).await;
    let a = src
        .wait_doc("a server change", 10 * S, |a| a.doc.revision == r2 as u64)
        .await;
    want["pools"][1]["servers"][2]["weight"] = json!(20);
    assert_eq!(*a.doc, parsed(want.clone(), r2), "incremental == full");
    assert_eq!(paths(&src.status.borrow()), (1, 1));

    // The group key: full path.
    let r3 = txn(
        &mut client,
        PREFIX,
        &[(
            "group".into(),
            json!({"schema": 1, "group": "blue", "force": true}).to_string(),
        )],
        &[],
    )
    .await;
    src.wait_doc("a group change", 10 * S, |a| a.doc.revision == r3 as u64)
        .await;
    assert_eq!(paths(&src.status.borrow()), (1, 2));
    want["force"] = json!(true);

    // A bad server: the incremental path does not apply, the full path
    // rejects it naming the key; its fix is validated whole again.
    let (key, _) = server(2, 0, 1);
    let bad = json!({"name": "s0", "address": "10.0.2.1", "port": 0}).to_string();
    let r4 = txn(&mut client, PREFIX, &[(key.clone(), bad)], &[]).await;
    let st = src
        .wait_status("the rejection", 10 * S, |s| {
            s.stream
                .as_ref()
                .is_some_and(|t| t.rejected_revision == Some(r4 as u64))
        })
        .await;
    assert_eq!(
        st.stream.as_ref().unwrap().rejected_key.as_deref(),
        Some("/lb/blue/servers/p2/s0")
    );
    assert_eq!(paths(&st), (1, 3));
    let r5 = txn(&mut client, PREFIX, &[server(2, 0, 5)], &[]).await;
    src.wait_doc("the fix", 10 * S, |a| a.doc.revision == r5 as u64)
        .await;
    assert_eq!(paths(&src.status.borrow()), (1, 4), "the fix is full");
    let r6 = txn(&mut client, PREFIX, &[server(0, 1, 7)], &[]).await;
    let a = src
        .wait_doc("a server change", 10 * S, |a| a.doc.revision == r6 as u64)
        .await;
    assert_eq!(paths(&src.status.borrow()), (2, 4));
    want["pools"][2]["servers"][0]["weight"] = json!(5);
    want["pools"][0]["servers"][1]["weight"] = json!(7);
    assert_eq!(*a.doc, parsed(want.clone(), r6), "incremental == full");

    // The daemon asks for the cache once it applied r6.
    let cache = src._dir.path().join("last-good.json");
    assert!(!cache.exists(), "nothing is cached before it is asked for");
    match &a.raw {
        source::CacheBody::Deferred(d) => d.store(),
        other => panic!("an etcd document's cache is written by the source: {other:?}"),
    }
    let deadline = Instant::now() + 10 * S;
    let written = loop {
        if let Ok(raw) = std::fs::read(&cache) {
            break raw;
        }
        assert!(Instant::now() < deadline, "the cache was not written");
        tokio::time::sleep(20 * MS).await;
    };
    src.stop().await;
    // Boot without etcd: the cache is r6's document.
    let mut boot = spawn_with_cache(
        vec![format!("127.0.0.1:{}", etcd::free_port())],
        Some(&written),
    );
    let b = boot.wait_doc("the cache", 10 * S, |a| a.from_cache).await;
    assert_eq!(*b.doc, parsed(want, r6));
    boot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_in_one_key_is_rejected_by_name_and_the_previous_document_stays() {
    if !etcd::available("invalid_json_in_one_key") {
        return;
    }
    let c = Cluster::start(1).await;
    let r1 = publish_doc(c.endpoints(), &doc(2, 2, 10)).await;
    let mut src = spawn(c.endpoints());
    src.wait_doc("the listing", 10 * S, |a| a.doc.revision == r1 as u64)
        .await;
    let mut client = c.client().await;

    // Not JSON.
    let bad = txn(
        &mut client,
        PREFIX,
        &[("servers/p1/s1".into(), "{\"name\": \"s1\", port".into())],
        &[],
    )
    .await;
    let st = src
        .wait_status("rejection", 10 * S, |s| {
            s.stream
                .as_ref()
                .is_some_and(|t| t.rejected_revision == Some(bad as u64))
        })
        .await;
    let stream = st.stream.unwrap();
    assert_eq!(
        stream.rejected_key.as_deref(),
        Some("/lb/blue/servers/p1/s1")
    );
    let error = st.error.unwrap();
    assert!(
        error.contains("/lb/blue/servers/p1/s1") && error.contains("invalid JSON"),
        "{error}"
    );
    assert_eq!(st.state, SourceState::Error);
    assert_eq!(
        src.revision(),
        Some(r1 as u64),
        "the previous document keeps serving"
    );

    // Valid JSON that the validator refuses: the error names the key too.
    let fixed_json = txn(&mut client, PREFIX, &[server(1, 1, 999)], &[]).await;
    let st = src
        .wait_status("validation rejection", 10 * S, |s| {
            s.stream
                .as_ref()
                .is_some_and(|t| t.rejected_revision == Some(fixed_json as u64))
        })
        .await;
    assert_eq!(
        st.stream.unwrap().rejected_key.as_deref(),
        Some("/lb/blue/servers/p1/s1")
    );
    assert!(
        st.error.as_deref().unwrap().contains("weight"),
        "{:?}",
        st.error
    );
    assert_eq!(src.revision(), Some(r1 as u64));

    // The fix is accepted, and includes every change since.
    let good = txn(&mut client, PREFIX, &[server(1, 1, 77)], &[]).await;
    let a = src
        .wait_doc("the fix", 10 * S, |a| a.doc.revision == good as u64)
        .await;
    assert_eq!(weight(&a.doc, "p1", "s1"), 77);
    let st = src.status.borrow().clone();
    assert_eq!(
        (st.state, st.stream.unwrap().rejected_key),
        (SourceState::Ok, None)
    );
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_resume_revision_relists() {
    if !etcd::available("a_compacted_resume_revision_relists") {
        return;
    }
    let c = Cluster::start(1).await;
    let r1 = publish_doc(c.endpoints(), &doc(1, 2, 10)).await;
    let cable = Cable::start(c.endpoints()[0].parse().unwrap()).await;
    let mut src = spawn(vec![cable.endpoint()]);
    src.wait_doc("the listing", 10 * S, |a| a.doc.revision == r1 as u64)
        .await;
    src.wait_status("watching", 5 * S, |s| {
        s.stream
            .as_ref()
            .is_some_and(|t| t.watch_state == "watching")
    })
    .await;

    // Cut off: changes happen and history is compacted behind the agent.
    cable.cut();
    src.wait_status("disconnected", 15 * S, |s| {
        s.stream
            .as_ref()
            .is_some_and(|t| t.watch_state != "watching")
    })
    .await;
    let mut client = c.client().await;
    let mut last = 0;
    for w in 11..16 {
        last = txn(&mut client, PREFIX, &[server(0, 1, w)], &[]).await;
    }
    client.compact(last, None).await.unwrap();
    cable.mend();
    let a = src
        .wait_doc("after re-list", 20 * S, |a| a.doc.revision == last as u64)
        .await;
    assert_eq!(weight(&a.doc, "p0", "s1"), 15);
    let stream = src.status.borrow().stream.clone().unwrap();
    assert_eq!(stream.compactions, 1, "{stream:?}");
    assert_eq!(stream.lists, 2, "{stream:?}");
    // And it watches again from there.
    let next = txn(&mut client, PREFIX, &[server(0, 1, 42)], &[]).await;
    let a = src
        .wait_doc("after the re-list, a watched change", 10 * S, |a| {
            a.doc.revision == next as u64
        })
        .await;
    assert_eq!(weight(&a.doc, "p0", "s1"), 42);
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_connected_member_resumes_on_another_without_gaps_or_repeats() {
    if !etcd::available("killing_the_connected_member") {
        return;
    }
    let mut c = Cluster::start(3).await;
    let r1 = publish_doc(c.endpoints(), &doc(1, 3, 10)).await;
    let mut src = spawn(c.endpoints());
    src.wait_doc("the listing", 15 * S, |a| a.doc.revision == r1 as u64)
        .await;
    let st = src
        .wait_status("watching", 5 * S, |s| {
            s.stream
                .as_ref()
                .is_some_and(|t| t.watch_state == "watching")
        })
        .await;
    let connected = st.stream.unwrap().endpoint;

    // Writes before, during and after the kill, through the surviving members.
    let mut client = c.client().await;
    let before = txn(&mut client, PREFIX, &[server(0, 0, 11)], &[]).await;
    src.wait_doc("before the kill", 10 * S, |a| {
        a.doc.revision == before as u64
    })
    .await;
    let killed_at = Instant::now();
    c.member_mut(&connected).kill();
    let mut client = c.client().await;
    let mut revisions = Vec::new();
    let deadline = Instant::now() + 20 * S;
    for w in [12u32, 13, 14] {
        // The cluster may be electing a new leader: retry (bounded).
        let rev = loop {
            let t = etcd_client::Txn::new().and_then([etcd_client::TxnOp::put(
                format!("{PREFIX}{}", server(0, 1, w).0),
                server(0, 1, w).1,
                None,
            )]);
            match client.txn(t).await {
                Ok(r) => break r.header().unwrap().revision(),
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no write accepted after the kill: {e}"
                    );
                    tokio::time::sleep(100 * MS).await;
                }
            }
        };
        revisions.push(rev);
    }
    let last = *revisions.last().unwrap();
    println!(
        "member killed -> the cluster accepted the three writes: {:.0} ms",
        killed_at.elapsed().as_secs_f64() * 1e3
    );
    let a = src
        .wait_doc("after the kill", 30 * S, |a| a.doc.revision == last as u64)
        .await;
    println!(
        "member killed -> agent has the revision written after it: {:.0} ms",
        killed_at.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(
        (weight(&a.doc, "p0", "s0"), weight(&a.doc, "p0", "s1")),
        (11, 14)
    );
    let stream = src.status.borrow().stream.clone().unwrap();
    assert_ne!(stream.endpoint, connected, "moved to another member");
    // Resumed, not re-listed; every transaction applied exactly once.
    assert_eq!(stream.lists, 1, "{stream:?}");
    assert_eq!(stream.transactions, 4, "{stream:?}");
    assert_eq!(stream.events, 4, "{stream:?}");
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_at_start_serves_the_cache_then_etcd() {
    if !etcd::available("etcd_down_at_start") {
        return;
    }
    let port = etcd::free_port();
    let mut cached = doc(1, 1, 5);
    cached["revision"] = json!(1);
    let mut src = spawn_with_cache(
        vec![format!("127.0.0.1:{port}")],
        Some(cached.to_string().as_bytes()),
    );
    let a = src.wait_doc("the cache", 10 * S, |a| a.from_cache).await;
    assert_eq!(weight(&a.doc, "p0", "s0"), 5);
    let st = src
        .wait_status("failing", 5 * S, |s| s.consecutive_failures >= 2)
        .await;
    assert!(st.from_cache && st.error.is_some(), "{st:?}");
    // etcd comes up on that port with a document.
    let c = Cluster::start_on(1, Some(port)).await;
    let r = publish_doc(c.endpoints(), &doc(1, 1, 6)).await;
    let a = src
        .wait_doc("etcd's document", 20 * S, |a| !a.from_cache)
        .await;
    assert_eq!((a.doc.revision, weight(&a.doc, "p0", "s0")), (r as u64, 6));
    assert!(!src.status.borrow().from_cache);
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20k_server_transaction_arrives_whole() {
    if !etcd::available("a_20k_server_transaction") {
        return;
    }
    let c = Cluster::start(1).await;
    let started = Instant::now();
    let r1 = publish_doc(c.endpoints(), &doc(1000, 20, 10)).await;
    println!(
        "publish of 1,000 pools x 20 servers (21,002 keys, one transaction): {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut src = spawn(c.endpoints());
    let started = Instant::now();
    src.wait_doc("the 20k listing", 120 * S, |a| a.doc.revision == r1 as u64)
        .await;
    println!(
        "list + assemble + validate 20k servers (debug build): {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    // One transaction changing every server's weight.
    let mut client = c.client().await;
    let all: Vec<(String, String)> = (0..1000)
        .flat_map(|p| (0..20).map(move |s| server(p, s, 20)))
        .collect();
    let started = Instant::now();
    let r2 = txn(&mut client, PREFIX, &all, &[]).await;
    let a = src
        .wait_doc("the 20k transaction", 120 * S, |a| {
            a.doc.revision == r2 as u64
        })
        .await;
    println!(
        "20k-event transaction -> validated document (debug build): {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(a
        .doc
        .pools
        .values()
        .all(|p| p.servers.values().all(|s| s.weight == 20)));
    let stream = src.status.borrow().stream.clone().unwrap();
    assert_eq!(
        (stream.transactions, stream.events),
        (1, 20_000),
        "{stream:?}"
    );
    src.stop().await;
}

/// Sorts every array of named objects by name (or address), drops the revision.
fn normal(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Array(a) => {
                a.iter_mut().for_each(walk);
                a.sort_by_key(|x| {
                    x.get("name")
                        .or_else(|| x.get("address"))
                        .map(ToString::to_string)
                        .unwrap_or_default()
                });
            }
            Value::Object(o) => o.values_mut().for_each(walk),
            _ => {}
        }
    }
    v.as_object_mut().unwrap().remove("revision");
    for k in [
        "vips",
        "frontends",
        "pools",
        "logic",
        "maps",
        "acls",
        "certificates",
    ] {
        v.as_object_mut().unwrap().entry(k).or_insert(json!([]));
    }
    walk(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_export_round_trip_and_diffs() {
    if !etcd::available("publish_export_round_trip") {
        return;
    }
    let c = Cluster::start(1).await;
    let u = url(c.endpoints());
    let creds = Credentials::default();
    let full = std::fs::read("fixtures/api/valid/full.json").unwrap();
    let r = publish::publish(&u, &creds, &full, true, 64 << 20)
        .await
        .unwrap();
    assert!(r.revision.is_none() && !r.changes.is_empty());
    let mut client = c.client().await;
    assert_eq!(
        client
            .get(
                PREFIX,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only()
                )
            )
            .await
            .unwrap()
            .count(),
        0,
        "a dry run writes nothing"
    );
    let r = publish::publish(&u, &creds, &full, false, 64 << 20)
        .await
        .unwrap();
    let written = r.revision.unwrap();
    let exported = publish::export(&u, &creds, 64 << 20).await.unwrap();
    assert_eq!(exported["revision"], json!(written));
    let original: Value = serde_json::from_slice(&full).unwrap();
    assert_eq!(normal(exported.clone()), normal(original.clone()));
    // The exported document publishes as "no change".
    let again = publish::publish(&u, &creds, exported.to_string().as_bytes(), false, 64 << 20)
        .await
        .unwrap();
    assert!(
        again.changes.is_empty() && again.revision.is_none(),
        "{again:?}"
    );
    // One weight: one changed key (plus the group key the guard rewrites).
    let mut changed = original.clone();
    changed["pools"][0]["servers"][0]["weight"] = json!(7);
    let r = publish::publish(&u, &creds, changed.to_string().as_bytes(), false, 64 << 20)
        .await
        .unwrap();
    let name = original["pools"][0]["servers"][0]["name"].as_str().unwrap();
    let pool = original["pools"][0]["name"].as_str().unwrap();
    assert_eq!(
        r.changes,
        [publish::KeyChange::Changed(format!(
            "servers/{pool}/{name}"
        ))]
    );
    // An invalid document is refused before anything is written.
    let mut bad = original.clone();
    bad["pools"][0]["servers"][0]["port"] = json!(70000);
    let e = publish::publish(&u, &creds, bad.to_string().as_bytes(), false, 64 << 20)
        .await
        .unwrap_err();
    assert!(matches!(e, PublishError::Invalid(_)), "{e}");
    assert_eq!(
        publish::export(&u, &creds, 64 << 20).await.unwrap()["revision"],
        json!(r.revision.unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishes_one_wins_whole_the_other_changes_nothing() {
    if !etcd::available("racing_publishes") {
        return;
    }
    let c = Cluster::start(1).await;
    let u = url(c.endpoints());
    publish_doc(c.endpoints(), &doc(2, 2, 10)).await;
    let a = doc(2, 2, 20).to_string();
    let mut b = doc(2, 3, 30);
    b["pools"].as_array_mut().unwrap().pop();
    let b = b.to_string();

    // Deterministic interleaving: both read, A commits, B's commit is refused.
    let creds = Credentials::default();
    let mut ca = lb_agent::source::etcd::connect(&u.endpoints, &creds)
        .await
        .unwrap();
    let mut cb = lb_agent::source::etcd::connect(&u.endpoints, &creds)
        .await
        .unwrap();
    let pa = publish::prepare(&mut ca, &u, a.as_bytes(), 64 << 20)
        .await
        .unwrap();
    let pb = publish::prepare(&mut cb, &u, b.as_bytes(), 64 << 20)
        .await
        .unwrap();
    publish::commit(&mut ca, &u, &pa).await.unwrap().unwrap();
    let e = publish::commit(&mut cb, &u, &pb).await.unwrap_err();
    assert!(matches!(e, PublishError::Raced { .. }), "{e}");
    let now = publish::export(&u, &creds, 64 << 20).await.unwrap();
    let want: Value = serde_json::from_str(&a).unwrap();
    assert_eq!(normal(now), normal(want));

    // Free-running races: etcd always ends up holding exactly one of them.
    let mut raced = 0;
    for round in 0..10 {
        let (x, y) = if round % 2 == 0 {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        let (u1, u2) = (u.clone(), u.clone());
        let t1 = tokio::spawn(async move {
            publish::publish(&u1, &Credentials::default(), x.as_bytes(), false, 64 << 20).await
        });
        let t2 = tokio::spawn(async move {
            publish::publish(&u2, &Credentials::default(), y.as_bytes(), false, 64 << 20).await
        });
        let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
        for r in [&r1, &r2] {
            match r {
                Ok(_) => {}
                Err(PublishError::Raced { .. }) => raced += 1,
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        let now = normal(publish::export(&u, &creds, 64 << 20).await.unwrap());
        let (na, nb) = (
            normal(serde_json::from_str(&a).unwrap()),
            normal(serde_json::from_str(&b).unwrap()),
        );
        assert!(
            now == na || now == nb,
            "round {round}: etcd holds a mix of two publishes: {now}"
        );
    }
    println!("free-running racing publishes: {raced} of 20 refused as raced (the rest ran one after the other)");
}

/// The built `lb-agent run` with `source.url = "etcd://…"` against a real
/// HAProxy: a published document serves traffic, a one-server publish
/// reaches HAProxy's runtime state (no reload), a bad key is refused while
/// traffic continues, and the status socket shows the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_serves_haproxy_from_etcd() {
    if !etcd::available("the_agent_binary_serves_haproxy_from_etcd")
        || !haproxy::available("the_agent_binary_serves_haproxy_from_etcd")
    {
        return;
    }
    let c = Cluster::start(1).await;
    let lab = haproxy::Lab::new();
    let _hp = haproxy::Haproxy::start(&lab);
    let (a, b) = (
        backend::Backend::start("a").await,
        backend::Backend::start("b").await,
    );
    let vip = "127.0.0.38";
    let fe: std::net::SocketAddr = format!("{vip}:{}", backend::free_port(vip))
        .parse()
        .unwrap();
    let doc_for = |wa: u32, sb_state: &str| {
        json!({
            "schema": 1, "group": "blue",
            "vips": [{"address": format!("{vip}/32")}],
            "frontends": [{"name": "web", "bind": [fe.to_string()], "mode": "http", "default_pool": "www"}],
            "pools": [{"name": "www", "mode": "http", "servers": [
                {"name": "s_a", "address": "127.0.0.1", "port": a.addr.port(), "weight": wa},
                {"name": "s_b", "address": "127.0.0.1", "port": b.addr.port(), "weight": 1, "state": sb_state}
            ]}]
        })
    };
    publish_doc(c.endpoints(), &doc_for(1, "maint")).await;
    let cfg = agent::write_lab_toml(&lab, &format!("etcd://{}/lb/blue", c.endpoints().join(",")));
    let agent = agent::Agent::start(&cfg, &[]);
    let wait_body = |want: &'static str, limit: Duration| {
        let agent = &agent;
        async move {
            let deadline = Instant::now() + limit;
            let mut last = Err(String::new());
            while Instant::now() < deadline {
                last = backend::get(fe).await;
                if last.as_deref() == Ok(want) {
                    return;
                }
                tokio::time::sleep(50 * MS).await;
            }
            panic!(
                "{fe}: wanted {want:?}, last {last:?}; agent log:\n{}",
                agent.log_text()
            );
        }
    };
    wait_body("a", 30 * S).await;
    let reloads = || {
        let st = status_json(&lab);
        st["haproxy"]["reloads"].as_u64().unwrap_or(0)
    };
    tokio::time::sleep(500 * MS).await;
    let before = reloads();

    // s_a to maint, s_b ready: one publish, two keys, runtime socket only.
    let published = Instant::now();
    let r = publish_doc(c.endpoints(), &doc_for(0, "ready")).await;
    let deadline = Instant::now() + 10 * S;
    let latency = loop {
        let st = haproxy::Haproxy::cli(&lab.admin, "show servers state www");
        // s_b out of maintenance (admin state 0, or 4: CMAINT stays after
        // a runtime `ready` of a server configured disabled).
        let ready = st.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 7 && f[3] == "s_b" && (f[6] == "0" || f[6] == "4")
        });
        if ready {
            break published.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "s_b never became ready:\n{st}\n{}",
            agent.log_text()
        );
        tokio::time::sleep(MS).await;
    };
    println!(
        "lb-agent publish -> HAProxy runtime state changed (etcd watch): {:.1} ms",
        latency.as_secs_f64() * 1e3
    );
    wait_body("b", 10 * S).await;
    let st = status_json(&lab);
    assert_eq!(st["source"]["revision"], json!(r));
    assert_eq!(st["source"]["stream"]["watch_state"], "watching");
    assert_eq!(st["source"]["stream"]["endpoint"], json!(c.endpoints()[0]));
    // The listing was validated whole; the two-server publish was patched
    // in place (its rewrite of the group key, same value, is no change).
    let stream = &st["source"]["stream"];
    assert_eq!(
        (
            stream["revisions_full"].clone(),
            stream["revisions_incremental"].clone()
        ),
        (json!(1), json!(1)),
        "{st:#}"
    );
    assert_eq!(
        reloads(),
        before,
        "a server change is applied without a reload"
    );
    let deadline = Instant::now() + 10 * S;
    while status_json(&lab)["revision"] != json!(r) {
        assert!(
            Instant::now() < deadline,
            "revision {r} never reported applied"
        );
        tokio::time::sleep(50 * MS).await;
    }

    // The applied revision reaches the last-known-good cache (written by
    // the source's cache thread once the agent applied it).
    let cache = lab.dir.path().join("state/last-good.json");
    let deadline = Instant::now() + 10 * S;
    loop {
        let cached: Option<Value> = std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if cached.as_ref().is_some_and(|c| c["revision"] == json!(r)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache never held revision {r}: {cached:?}"
        );
        tokio::time::sleep(50 * MS).await;
    }

    // A bad key: refused by name, traffic keeps flowing.
    let mut client = c.client().await;
    let bad = txn(
        &mut client,
        PREFIX,
        &[("pools/www".into(), "{\"name\": \"www\",".into())],
        &[],
    )
    .await;
    let deadline = Instant::now() + 10 * S;
    loop {
        let st = status_json(&lab);
        if st["source"]["stream"]["rejected_revision"] == json!(bad) {
            assert_eq!(st["source"]["stream"]["rejected_key"], "/lb/blue/pools/www");
            assert_eq!(
                st["source"]["revision"],
                json!(r),
                "the previous document stays: {st:#}"
            );
            assert_eq!(st["revision"], json!(r), "and stays applied");
            break;
        }
        assert!(Instant::now() < deadline, "rejection not reported: {st}");
        tokio::time::sleep(50 * MS).await;
    }
    wait_body("b", 2 * S).await;
    let exit = agent.stop();
    assert!(exit.success(), "{exit:?}");
}

/// `GET /v1/status` on the lab agent's socket, through the CLI.
fn status_json(lab: &haproxy::Lab) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["status", "--json", "--socket"])
        .arg(lab.dir.path().join("status.sock"))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// mTLS to etcd plus user/password authentication with a read-only role:
/// the agent's source reads and watches, a wrong password is an error on
/// the status, and publish needs a user that may write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_user_password_authentication() {
    if !etcd::available("tls_and_user_password_authentication") {
        return;
    }
    lb_agent::source::ensure_crypto_provider();
    let pki = tempfile::tempdir().unwrap();
    let ca = fake_api::pki::Ca::new("etcd test CA");
    let server_leaf = ca.server();
    let client_leaf = ca.client("lb-agent");
    let w = |name: &str, text: &str| {
        let p = pki.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_pem = w("ca.pem", &ca.pem());
    let (scert, skey) = (
        w("server.pem", &server_leaf.cert_pem),
        w("server.key", &server_leaf.key_pem),
    );
    let (ccert, ckey) = (
        w("client.pem", &client_leaf.cert_pem),
        w("client.key", &client_leaf.key_pem),
    );
    let tls = Credentials {
        ca_file: Some(ca_pem.clone()),
        client_cert: Some(ccert.clone()),
        client_key: Some(ckey.clone()),
        ..Credentials::default()
    };
    let c = etcd::start_tls(&scert, &skey, &ca_pem, &tls).await;
    let endpoints = c.endpoints();

    // Users: root (publisher) and a read-only agent user on the prefix.
    let mut admin = lb_agent::source::etcd::connect(&endpoints, &tls)
        .await
        .unwrap();
    admin.user_add("root", "rootpw", None).await.unwrap();
    let _ = admin.role_add("root").await;
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("reader").await.unwrap();
    admin
        .role_grant_permission(
            "reader",
            etcd_client::Permission::read(PREFIX).with_prefix(),
        )
        .await
        .unwrap();
    admin.user_add("agent", "agentpw", None).await.unwrap();
    admin.user_grant_role("agent", "reader").await.unwrap();
    admin.auth_enable().await.unwrap();

    let as_user = |user: &str, pw: &str| {
        let file = pki.path().join(format!("{user}.pw"));
        std::fs::write(&file, format!("{pw}\n")).unwrap();
        Credentials {
            username: Some(user.into()),
            password_file: Some(file),
            ..tls.clone()
        }
    };
    let body = doc(1, 2, 10).to_string();
    let e = publish::publish(
        &url(endpoints.clone()),
        &as_user("agent", "agentpw"),
        body.as_bytes(),
        false,
        64 << 20,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("permission denied"),
        "a read-only user cannot publish: {e}"
    );
    let r = publish::publish(
        &url(endpoints.clone()),
        &as_user("root", "rootpw"),
        body.as_bytes(),
        false,
        64 << 20,
    )
    .await
    .unwrap()
    .revision
    .unwrap();

    let mut src = spawn_full(endpoints.clone(), None, as_user("agent", "agentpw"));
    src.wait_doc("the listing over mTLS as agent", 15 * S, |a| {
        a.doc.revision == r as u64
    })
    .await;
    let mut root = lb_agent::source::etcd::connect(&endpoints, &as_user("root", "rootpw"))
        .await
        .unwrap();
    let r2 = txn(&mut root, PREFIX, &[server(0, 1, 55)], &[]).await;
    let a = src
        .wait_doc("a watched change", 10 * S, |a| a.doc.revision == r2 as u64)
        .await;
    assert_eq!(weight(&a.doc, "p0", "s1"), 55);
    src.stop().await;

    let mut bad = spawn_full(endpoints.clone(), None, as_user("agent", "wrong"));
    let st = bad
        .wait_status("auth failure", 10 * S, |s| s.error.is_some())
        .await;
    assert!(
        st.error
            .as_deref()
            .unwrap()
            .contains("authentication failed"),
        "{:?}",
        st.error
    );
    assert!(bad.revision().is_none());
    bad.stop().await;

    // Without a client certificate the TLS server refuses the connection.
    let no_cert = Credentials {
        ca_file: Some(ca_pem),
        client_cert: None,
        client_key: None,
        ..as_user("agent", "agentpw")
    };
    let mut bad = spawn_full(endpoints, None, no_cert);
    let st = bad
        .wait_status("no client certificate", 10 * S, |s| s.error.is_some())
        .await;
    assert!(bad.revision().is_none(), "{st:?}");
    bad.stop().await;
}

/// What one server change costs an etcd-watching agent on the wire, in a
/// 1,000-pool × 20-server group, measured on a forwarder between the agent
/// and etcd (printed, not asserted beyond "less than the document").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_received_for_a_one_server_change_at_20k_servers() {
    if !etcd::available("bytes_received_for_a_one_server_change") {
        return;
    }
    let c = Cluster::start(1).await;
    let r1 = publish_doc(c.endpoints(), &doc(1000, 20, 10)).await;
    let cable = Cable::start(c.endpoints()[0].parse().unwrap()).await;
    let mut src = spawn(vec![cable.endpoint()]);
    src.wait_doc("the 20k listing", 120 * S, |a| a.doc.revision == r1 as u64)
        .await;
    // What the HTTP source would receive: the whole document, compact.
    let document = doc(1000, 20, 10).to_string().len();
    src.wait_status("watching", 10 * S, |s| {
        s.stream
            .as_ref()
            .is_some_and(|t| t.watch_state == "watching")
    })
    .await;
    let listing = cable.received.load(std::sync::atomic::Ordering::SeqCst);
    let mut client = c.client().await;
    let mut per_change = Vec::new();
    for w in 0..5u32 {
        let before = cable.received.load(std::sync::atomic::Ordering::SeqCst);
        let r = txn(&mut client, PREFIX, &[server(500, 7, 30 + w)], &[]).await;
        src.wait_doc("a one-server change", 30 * S, |a| {
            a.doc.revision == r as u64
        })
        .await;
        per_change.push(cable.received.load(std::sync::atomic::Ordering::SeqCst) - before);
    }
    println!(
        "one-server change at 20k servers: {per_change:?} bytes received by the agent (gRPC/HTTP2 framing included); \
         the listing was {listing} bytes, the whole document {document} bytes (compact JSON)"
    );
    assert!(
        per_change.iter().all(|b| (*b as usize) < document / 100),
        "{per_change:?}"
    );
    src.stop().await;
}

/// The CLI: `publish --dry-run` prints the diff and writes nothing,
/// `publish` writes, `export` prints the document back, a bad document
/// exits 2 naming the path, an unreachable etcd exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_export_commands() {
    if !etcd::available("publish_and_export_commands") {
        return;
    }
    let c = Cluster::start(1).await;
    let to = format!("etcd://{}/lb/blue", c.endpoints()[0]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.json");
    std::fs::write(&file, doc(1, 2, 10).to_string()).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let f = file.to_str().unwrap();
    let (code, out, err) = run(&["publish", "--to", &to, f, "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("+ servers/p0/s1") && out.contains("dry run: 6 keys would change"),
        "{out}"
    );
    let (code, out, _) = run(&["export", "--from", &to]);
    assert_ne!(code, Some(0), "nothing published yet: {out}");
    let (code, out, err) = run(&["publish", "--to", &to, f]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("published 6 changed keys under /lb/blue/ as etcd revision"),
        "{out}"
    );
    let (code, out, err) = run(&["export", "--from", &to]);
    assert_eq!(code, Some(0), "{err}");
    let exported: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(normal(exported), normal(doc(1, 2, 10)));
    std::fs::write(&file, doc(1, 2, 999).to_string()).unwrap();
    let (code, _, err) = run(&["publish", "--to", &to, f]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("pools[0].servers[0].weight"), "{err}");
    let closed = format!("etcd://127.0.0.1:{}/lb/blue", etcd::free_port());
    let (code, _, err) = run(&["export", "--from", &closed]);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, err) = run(&["export", "--from", "etcd://x:1"]);
    assert_eq!(code, Some(2), "{err}");
}

/// Thread CPU time now (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Thread CPU of `f`, and its result.
fn cpu<R>(into: &mut Vec<Duration>, f: impl FnOnce() -> R) -> R {
    let t = thread_cpu();
    let r = f();
    into.push(thread_cpu() - t);
    r
}

/// Where an etcd-watching agent's CPU goes for a one-server change at
/// 1,000 pools × 20 servers, thread CPU, median of 20 changes, the full
/// path as the baseline in the same run: applying the event to the store,
/// validating (incremental: patch the last state, which the daemon still
/// holds, so it is copied; full: assemble the document and validate it),
/// then the reconciler's planning (the structure digest and the plan
/// against a simulated HAProxy that runs the previous revision). Printed;
/// run with `--release` for the figures docs/etcd.md quotes. No etcd needed.
#[test]
fn agent_cost_of_a_one_server_change_at_20k_servers() {
    use lb_agent::plan::{self, sim::SimHaproxy, PlanOptions, Structure};
    use lb_agent::source::etcd::{incr::Patcher, layout, store};
    let kv = layout::split(&doc(1000, 20, 10)).unwrap();
    let mut s = store::Store::new(64 << 20);
    s.reset(1, kv.into_iter().map(|(k, v)| (k, bytes::Bytes::from(v))));
    let p = parser();
    let (first, _) = s.document(64 << 20).unwrap();
    let mut patcher = Patcher::new(64 << 20);
    patcher.accepted(Arc::new(p(&first).unwrap()));
    let _ = s.take_changes();
    // HAProxy runs the first revision.
    let policy = lb_agent::config::SlotPolicy::Pow2;
    let mut held = Arc::clone(patcher.state().unwrap());
    let mut sim = SimHaproxy::load(&held, policy);
    let mut loaded = Structure::of(&held, "bench");
    let opts = PlanOptions {
        max_runtime_ops: 10_000,
    };
    let [mut apply, mut patch, mut structure, mut planning, mut assemble, mut validate] =
        std::array::from_fn(|_| Vec::new());
    let [mut accept, mut scoping, mut scoped_plan] = std::array::from_fn(|_| Vec::new());
    for i in 0..20u64 {
        let (k, v) = server(500, 7, 30 + i as u32);
        let e = store::Event {
            revision: 2 + i,
            change: store::Change::Put {
                key: k,
                value: bytes::Bytes::from(v),
            },
        };
        cpu(&mut apply, || assert_eq!(s.apply(&[e]).revisions, 1));
        let changes = s.take_changes();
        let d = cpu(&mut patch, || patcher.patch(&s, &changes)).expect("incremental");
        let accepted = cpu(&mut accept, || {
            lb_agent::reconcile::policy::accept(Some(&*held), &d, 0.5)
        });
        assert_eq!(accepted, lb_agent::reconcile::policy::Acceptance::Fresh);
        let st = cpu(&mut structure, || Structure::of(&d, "bench"));
        let observed = sim.observe();
        let plan = cpu(&mut planning, || {
            plan::plan(&d, &st, Some(&loaded), &observed, opts)
        });
        // The scoped pass: scope, then plan the changed pool from its
        // backend alone (the structure is the verified one's).
        let pools = cpu(&mut scoping, || plan::scope::server_scope(&held, &d)).expect("scoped");
        assert_eq!(pools.len(), 1);
        let mut seen = observed.clone();
        let backends = plan::scope::scope_backends(&d, &pools);
        seen.backends.retain(|k, _| backends.contains(k));
        let scoped = cpu(&mut scoped_plan, || {
            plan::plan_scoped(&d, &loaded, Some(&loaded), &seen, &pools, opts)
        });
        assert_eq!(scoped, plan, "scoped == full");
        assert!(plan.reload.is_empty(), "{:?}", plan.reload);
        assert_eq!(plan.commands.len(), 1, "{:?}", plan.commands);
        // The baseline: the full path on the same revision.
        let (raw, _) = cpu(&mut assemble, || s.document(64 << 20).unwrap());
        let full = cpu(&mut validate, || p(&raw).unwrap());
        assert_eq!(weight(&d, "p500", "s7"), 30 + i as u16);
        assert_eq!(*d, full, "incremental == full");
        // HAProxy applies it; the daemon now holds this revision.
        for c in &plan.commands {
            sim.apply(c).unwrap();
        }
        loaded = st;
        held = d;
    }
    drop(held);
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let (a, pa, st, pl) = (
        med(&mut apply),
        med(&mut patch),
        med(&mut structure),
        med(&mut planning),
    );
    let (asm, val) = (med(&mut assemble), med(&mut validate));
    let (acc, sc, sp) = (med(&mut accept), med(&mut scoping), med(&mut scoped_plan));
    println!(
        "the reconciler, scoped pass: acceptance (removal guard) {acc:.3} ms + scope {sc:.3} ms + plan of the changed pool {sp:.3} ms = {:.3} ms\n\
         incremental to planned, scoped: {:.3} ms (against the full path {:.2} ms + full planning {:.2} ms in the same run)",
        acc + sc + sp,
        a + pa + acc + sc + sp,
        a + asm + val,
        st + pl,
    );
    println!(
        "one-server change at 1,000 pools x 20 servers, agent thread CPU, median of 20, {} build:\n\
         incremental: apply {a:.3} ms + patch (copy of the held state included) {pa:.3} ms = {:.3} ms to the accepted document\n\
         full (baseline): apply {a:.3} ms + assemble {asm:.2} ms + validate {val:.2} ms = {:.2} ms\n\
         planning, either path: structure digest {st:.2} ms + plan {pl:.2} ms",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        a + pa,
        a + asm + val,
    );
}
