//! The built `lb-agent run` end to end against a real HAProxy 2.6 and a fake
//! central API: boot from the cache with the API down, a long-polled change
//! reaching HAProxy's runtime state (latency printed), a `file://` source,
//! and a clean stop on SIGTERM.

#[path = "common/agent.rs"]
mod agent;
#[path = "common/backend.rs"]
mod backend;
#[path = "common/fake_api.rs"]
mod fake_api;
#[path = "common/haproxy.rs"]
mod haproxy;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent::{Agent, AgentToml};
use backend::{free_port, get, Backend};
use fake_api::{FakeApi, Reply, Step};
use haproxy::{Haproxy, Lab};
use serde_json::{json, Value};

fn doc(rev: u64, vip: &str, fe: SocketAddr, servers: &[(&str, &Backend, u16)]) -> Value {
    json!({
        "schema": 1, "revision": rev, "group": "blue",
        "vips": [{"address": format!("{vip}/32")}],
        "frontends": [{"name": "web", "bind": [fe.to_string()], "mode": "http", "default_pool": "www"}],
        "pools": [{"name": "www", "mode": "http", "servers": servers.iter().map(|(n, b, w)| json!({
            "name": n, "address": "127.0.0.1", "port": b.addr.port(), "weight": w
        })).collect::<Vec<_>>()}]
    })
}

/// Polls (bounded) until `addr` answers with `want`.
async fn wait_body(addr: SocketAddr, want: &str, limit: Duration, agent: &Agent) {
    let deadline = Instant::now() + limit;
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = get(addr).await;
        if last.as_deref() == Ok(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{addr}: wanted {want:?}, last {last:?}; agent log:\n{}",
        agent.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_from_the_cache_with_the_api_down() {
    if !haproxy::available("boots_from_the_cache_with_the_api_down") {
        return;
    }
    let lab = Lab::new();
    let _hp = Haproxy::start(&lab);
    let a = Backend::start("a").await;
    let vip = "127.0.0.31";
    let fe: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    // The last-known-good document from an earlier run; the API port is closed.
    std::fs::write(
        &lab.cache,
        serde_json::to_vec(&doc(7, vip, fe, &[("s_a", &a, 1)])).unwrap(),
    )
    .unwrap();
    let closed = free_port("127.0.0.1");
    let cfg = AgentToml {
        dir: lab.dir.path(),
        url: format!("http://127.0.0.1:{closed}/v1/groups/blue/config"),
        haproxy_config: &lab.config,
        admin: &lab.admin,
        master: &lab.master,
        extra: "",
    }
    .write();
    let agent = Agent::start(&cfg, &[]);
    wait_body(fe, "a", Duration::from_secs(20), &agent).await;
    let status = agent.stop();
    let log = std::fs::read_to_string(lab.dir.path().join("agent.log")).unwrap();
    if std::env::var_os("SHOW_AGENT_LOG").is_some() {
        println!("{log}");
    }
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(
        log.contains("cache"),
        "the log says the cache was used:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polled_change_reaches_haproxy_quickly() {
    if !haproxy::available("long_polled_change_reaches_haproxy_quickly") {
        return;
    }
    let lab = Lab::new();
    let _hp = Haproxy::start(&lab);
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let vip = "127.0.0.32";
    let fe: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let d1 = doc(1, vip, fe, &[("s_a", &a, 10), ("s_b", &b, 10)]);
    let d2 = doc(2, vip, fe, &[("s_a", &a, 10), ("s_b", &b, 33)]);
    let (held, release) = Reply::json(&d2.to_string()).etag("\"r2\"").held();
    let api = FakeApi::start(vec![
        Step::get("initial")
            .no_header("If-None-Match")
            .header_contains("User-Agent", "lb-agent/")
            .reply(Reply::json(&d1.to_string()).etag("\"r1\"")),
        Step::get("long-poll held until published")
            .long_poll(1)
            .header("If-None-Match", "\"r1\"")
            .reply(held),
        Step::get("next long-poll")
            .long_poll(2)
            .header("If-None-Match", "\"r2\"")
            .reply(Reply::idle()),
    ])
    .await;
    let cfg = AgentToml {
        dir: lab.dir.path(),
        url: api.url(),
        haproxy_config: &lab.config,
        admin: &lab.admin,
        master: &lab.master,
        extra: "",
    }
    .write();
    let agent = Agent::start(&cfg, &[]);
    wait_body(fe, "a", Duration::from_secs(20), &agent).await;
    api.wait_for_requests(2, Duration::from_secs(10)).await;
    // Let the first apply settle (state file, persist), then publish revision 2.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = release.release();
    let deadline = Instant::now() + Duration::from_secs(10);
    let latency = loop {
        let st = Haproxy::cli(&lab.admin, "show servers state www");
        if st.contains(" s_b 127.0.0.1 2 0 33 ") {
            break published.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "weight 33 never applied:\n{st}\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    println!(
        "published change -> HAProxy runtime state changed: {:.1} ms (long-poll)",
        latency.as_secs_f64() * 1e3
    );
    api.wait_for_requests(3, Duration::from_secs(10)).await;
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_changes_are_applied() {
    if !haproxy::available("file_source_changes_are_applied") {
        return;
    }
    let lab = Lab::new();
    let _hp = Haproxy::start(&lab);
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let vip = "127.0.0.33";
    let fe: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let desired = lab.dir.path().join("desired.json");
    std::fs::write(&desired, doc(1, vip, fe, &[("s_a", &a, 1)]).to_string()).unwrap();
    let cfg = AgentToml {
        dir: lab.dir.path(),
        url: format!("file://{}", desired.display()),
        haproxy_config: &lab.config,
        admin: &lab.admin,
        master: &lab.master,
        extra: "",
    }
    .write();
    let agent = Agent::start(&cfg, &[]);
    wait_body(fe, "a", Duration::from_secs(20), &agent).await;
    // Add a server and put the old one in maintenance: runtime changes, noticed within poll_interval.
    let tmp = lab.dir.path().join("desired.json.tmp");
    let mut d2 = doc(2, vip, fe, &[("s_a", &a, 1), ("s_b", &b, 1)]);
    d2["pools"][0]["servers"][0]["state"] = json!("maint");
    std::fs::write(&tmp, d2.to_string()).unwrap();
    std::fs::rename(&tmp, &desired).unwrap();
    wait_body(fe, "b", Duration::from_secs(10), &agent).await;
    // A broken file is not applied; the last state keeps serving.
    std::fs::write(&tmp, "{ truncated").unwrap();
    std::fs::rename(&tmp, &desired).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    wait_body(fe, "b", Duration::from_secs(2), &agent).await;
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
}
