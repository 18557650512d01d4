//! The built `lb-agent run` end to end against a real HAProxy 2.6 and a fake
//! central API: boot from the cache with the API down, a long-polled change
//! reaching HAProxy's runtime state (latency printed), a `file://` source,
//! and a clean stop on SIGTERM.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::{agent, backend, fake_api, haproxy};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent::{write_lab_toml, Agent};
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
    let cfg = write_lab_toml(
        &lab,
        &format!("http://127.0.0.1:{closed}/v1/groups/blue/config"),
    );
    // Under systemd without a journal socket: logs fall back to stderr, no panic.
    let agent = Agent::start(&cfg, &[("JOURNAL_STREAM", "8:12345")]);
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
    let cfg = write_lab_toml(&lab, &api.url());
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
    let cfg = write_lab_toml(&lab, &format!("file://{}", desired.display()));
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

/// Collects sd_notify datagrams sent to a fake NOTIFY_SOCKET, with arrival times.
fn collect_notifications(
    sock: std::os::unix::net::UnixDatagram,
    until: Instant,
) -> Vec<(Instant, String)> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            out.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_watchdog_reload_stopping() {
    if !haproxy::available("sd_notify_ready_watchdog_reload_stopping") {
        return;
    }
    let lab = Lab::new();
    let _hp = Haproxy::start(&lab);
    let a = Backend::start("a").await;
    let vip = "127.0.0.34";
    let fe: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let desired = lab.dir.path().join("desired.json");
    std::fs::write(&desired, doc(1, vip, fe, &[("s_a", &a, 1)]).to_string()).unwrap();
    let cfg = write_lab_toml(&lab, &format!("file://{}", desired.display()));
    let notify_path = lab.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    let agent = Agent::start(
        &cfg,
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let t0 = Instant::now();
    let collector =
        std::thread::spawn(move || collect_notifications(sock, t0 + Duration::from_secs(9)));

    wait_body(fe, "a", Duration::from_secs(20), &agent).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SIGHUP with an invalid agent.toml: the running config is kept.
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{good}\n[source]\nbogus_key = 1\n")).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // SIGHUP with a valid changed agent.toml: RELOADING=1 ... READY=1.
    std::fs::write(
        &cfg,
        good.replace("verify_interval = \"2s\"", "verify_interval = \"3s\""),
    )
    .unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_body(fe, "a", Duration::from_secs(5), &agent).await;
    let log = agent.log_text();
    let status = agent.stop();
    assert!(status.success(), "{status:?}\n{log}");
    let msgs = collector.join().unwrap();
    let text: Vec<&str> = msgs.iter().map(|(_, m)| m.as_str()).collect();
    let pos = |pred: &dyn Fn(&str) -> bool| text.iter().position(|m| pred(m));
    let ready = pos(&|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 in {text:#?}\n{log}"));
    assert!(
        text[ready].contains("STATUS=rev 1"),
        "READY carries the status line: {:?}",
        text[ready]
    );
    let reloading = pos(&|m| m.contains("RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 in {text:#?}"));
    assert!(
        text[reloading].contains("MONOTONIC_USEC="),
        "{:?}",
        text[reloading]
    );
    assert!(reloading > ready);
    assert!(
        text[reloading + 1..]
            .iter()
            .any(|m| m.lines().any(|l| l == "READY=1")),
        "READY=1 after the reload: {text:#?}"
    );
    assert!(log.contains("new configuration is invalid"), "{log}");
    assert_eq!(
        text.iter().filter(|m| m.contains("RELOADING=1")).count(),
        1,
        "the invalid file caused no reload: {text:#?}"
    );
    assert!(text.iter().any(|m| m.contains("STOPPING=1")), "{text:#?}");
    // Watchdog every WATCHDOG_USEC/2 from the reconcile loop.
    let pings: Vec<Instant> = msgs
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings.len() >= 6,
        "expected a ping every 0.5 s, got {} in {text:#?}",
        pings.len()
    );
    let max_gap = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    println!(
        "sd_notify: {} messages, {} watchdog pings, largest gap {max_gap:?}",
        msgs.len(),
        pings.len()
    );
    assert!(
        max_gap < Duration::from_millis(1000),
        "watchdog gap {max_gap:?}"
    );
}

/// Runs the CLI against the agent's status socket; returns (exit code, stdout).
fn cli(args: &[&str]) -> (i32, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_command_against_a_running_agent() {
    if !haproxy::available("every_cli_command_against_a_running_agent") {
        return;
    }
    let lab = Lab::new();
    let _hp = Haproxy::start(&lab);
    let a = Backend::start("a").await;
    let vip = "127.0.0.35";
    let fe: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let desired = lab.dir.path().join("desired.json");
    std::fs::write(&desired, doc(3, vip, fe, &[("s_a", &a, 1)]).to_string()).unwrap();
    let cfg = write_lab_toml(&lab, &format!("file://{}", desired.display()));
    let agent = Agent::start(&cfg, &[]);
    wait_body(fe, "a", Duration::from_secs(20), &agent).await;
    let sock = lab.dir.path().join("status.sock");
    let sock = sock.to_str().unwrap();
    // The status socket answers with the applied revision (bounded wait for the snapshot).
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (code, out) = cli(&["status", "--json", "--socket", sock]);
        if code == 0 {
            let v: Value = serde_json::from_str(&out).unwrap();
            if v["revision"] == json!(3) && v["haproxy"]["converged"] == json!(true) {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "status never showed revision 3: {out}\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for key in [
        "node", "group", "version", "revision", "drained", "source", "haproxy", "bird", "vips",
    ] {
        assert!(status.get(key).is_some(), "missing {key} in {status}");
    }
    assert_eq!(status["node"], json!("lb-test"));
    assert_eq!(status["source"]["state"], json!("ok"));
    assert_eq!(status["vips"][0]["address"], json!(format!("{vip}/32")));
    // Human output, and the VIP table with its reason (no BIRD runs here: not announced).
    let (code, out) = cli(&["status", "--socket", sock]);
    assert_eq!(code, 0);
    assert!(out.contains("lb-test") && out.contains(vip), "{out}");
    let (code, out) = cli(&["vips", "--socket", sock]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(vip), "{out}");
    // Mutations as root.
    assert_eq!(cli(&["reconcile", "--socket", sock]).0, 0);
    assert_eq!(
        cli(&["drain", "--reason", "cli test", "--socket", sock]).0,
        0
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, out) = cli(&["status", "--json", "--socket", sock]);
        let v: Value = serde_json::from_str(&out).unwrap_or(json!({}));
        if v["drained"] == json!(true) {
            assert_eq!(v["drain"]["reason"], json!("cli test"));
            break;
        }
        assert!(Instant::now() < deadline, "drain not shown: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lab.dir.path().join("state/drain.json").exists(),
        "the drain is persisted"
    );
    assert_eq!(cli(&["undrain", "--socket", sock]).0, 0);
    // Metrics on the same socket.
    let (code, out) = cli(&["status", "--json", "--socket", "/nonexistent/status.sock"]);
    assert_eq!(code, 3, "unreachable agent: {out}");
    let metrics = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    };
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for family in [
        "lb_agent_applied_revision",
        "lb_agent_reloads",
        "lb_agent_runtime_commands",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    // `status | head -1` ends quietly.
    let o = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} status --socket {sock} | head -1; exit ${{PIPESTATUS[0]}}",
            env!("CARGO_BIN_EXE_lb-agent")
        ))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
}

/// `lb-agent status --json` of the agent whose status socket is `sock`.
fn status_json(sock: &std::path::Path) -> Value {
    let (code, out) = cli(&["status", "--json", "--socket", sock.to_str().unwrap()]);
    assert_eq!(code, 0, "status: {out}");
    serde_json::from_str(&out).unwrap()
}

/// Polls the status (bounded) until `pred` holds; returns that status.
fn wait_status(
    sock: &std::path::Path,
    what: &str,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let st = status_json(sock);
        if pred(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {limit:?}: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fault suite's API cases: an API that fails (503), answers garbage,
/// and accepts a request but never answers. Each time HAProxy keeps serving
/// the last applied document, the status says what is wrong, and the next
/// good document is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_never_touch_what_haproxy_serves() {
    if !haproxy::available("api_faults_never_touch_what_haproxy_serves") {
        return;
    }
    let lab = Lab::new();
    let _hp = Haproxy::start(&lab);
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let vip = "127.0.0.36";
    let fe: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let d1 = doc(1, vip, fe, &[("s_a", &a, 1)]);
    // Revision 2 moves the traffic to b (a stays, at weight 0).
    let d2 = doc(2, vip, fe, &[("s_a", &a, 0), ("s_b", &b, 1)]);
    let api = FakeApi::start(vec![
        Step::get("initial").reply(Reply::json(&d1.to_string()).etag("\"r1\"")),
        Step::get("503")
            .query("wait", "1s")
            .query("revision", "1")
            .reply(Reply::status(503)),
        Step::get("garbage")
            .query("wait", "1s")
            .query("revision", "1")
            .reply(Reply::json("{\"schema\": 1, \"revision\": ")),
        Step::get("accepts, never answers")
            .query("wait", "1s")
            .query("revision", "1")
            .reply(Reply::idle()),
        Step::get("good again")
            .query("wait", "1s")
            .query("revision", "1")
            .reply(Reply::json(&d2.to_string()).etag("\"r2\"")),
        Step::get("quiet")
            .query("wait", "1s")
            .query("revision", "2")
            .reply(Reply::idle()),
    ])
    .await;
    let cfg = write_lab_toml(&lab, &api.url());
    // A short long-poll, so a request that is never answered times out in
    // long_poll + connect_timeout = 2 s.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "long_poll = \"30s\"",
        "long_poll = \"1s\"\nconnect_timeout = \"1s\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let sock = lab.dir.path().join("status.sock");
    let agent = Agent::start(&cfg, &[]);
    wait_body(fe, "a", Duration::from_secs(20), &agent).await;
    let t0 = Instant::now();
    let mut served_a = 0;
    let mut errors_seen = std::collections::BTreeSet::new();
    // Through the three faults: HAProxy serves "a" on every request, the
    // agent answers on its socket, the source reports each error.
    while api.arrivals().len() < 5 {
        assert_eq!(get(fe).await.as_deref(), Ok("a"), "HAProxy keeps serving");
        served_a += 1;
        let st = status_json(&sock);
        assert_eq!(st["revision"], 1, "{st:#}");
        if let Some(e) = st["source"]["error"].as_str() {
            errors_seen.insert(e.split(':').next().unwrap_or(e).to_string());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "faults took too long: {:?}",
            api.report()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let through_faults = t0.elapsed();
    wait_body(fe, "b", Duration::from_secs(20), &agent).await;
    let st = wait_status(&sock, "source ok", Duration::from_secs(10), |s| {
        s["source"]["state"] == "ok" && s["revision"] == 2
    });
    println!(
        "API faults (503, garbage, accepted and never answered): {served_a} requests through the VIP all served by the last good document over {:.1} s; source errors reported: {errors_seen:?}; the next good document applied",
        through_faults.as_secs_f64()
    );
    assert!(
        errors_seen.len() >= 2,
        "the status named the faults: {errors_seen:?} {st:#}"
    );
    // The source long-polls on from revision 2 (the "quiet" step). The
    // request follows the applied revision, not the status, so wait for it
    // (bounded) rather than race it on a slow machine.
    api.wait_for_requests(6, Duration::from_secs(15)).await;
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    api.finish().await;
}
