//! The fault suite: the real `lb-agent` binary, HAProxy 2.6 and BIRD 2 in
//! the netns lab of `tests/common/lab.rs` (a ToR with `merge paths on`,
//! two LBs, a client), one fault per test, each claim read where it
//! matters (the ToR's kernel route, the client's answers, the agent's
//! status). Every test prints its figures — time to recover, requests
//! failed — beside the bound it asserts (run with `--nocapture`); the
//! table in docs/reliability.md comes from these lines.
//!
//! - a service pushed onto a live VIP, under client load: the VIP is never
//!   withdrawn on any host, 0 requests fail;
//! - a reload that fails (a foreign process holds the new port, and
//!   answers HTTP there): the foreign listener never passes for HAProxy,
//!   the host withdraws, and once the port is free the backoff's retry
//!   installs it with no operator;
//! - HAProxy killed with SIGKILL, then restarted by "systemd" (on the
//!   agent's file, then on a stale distro file): withdrawn at once,
//!   converged and announced again with no operator;
//! - BIRD killed with SIGKILL, then restarted from a reset include;
//! - the agent killed with SIGKILL: with `on_stop = "keep"` a restart never
//!   flaps the route; the unit's `ExecStopPost` reset fails closed.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::{lab, netns};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_agent::config::{OnStop, OnUnhealthy};
use nix::sys::signal::Signal;
use serde_json::Value;

use lab::{ms, Lab, LabOptions, LbHost, RouteMonitor, INTERVAL, RISE, VIP};
use netns::{skip_without_netns_loudly, Netns};

const LB1: &str = "via 10.0.1.2 dev tor-lb1";
const LB2: &str = "via 10.0.2.2 dev tor-lb2";

/// Allowance for BIRD, BGP and the ToR's kernel on top of a health bound
/// (see tests/anycast_lab.rs: the include's fsync stalls under parallel builds).
const BIRD_SLACK: Duration = Duration::from_millis(750);

/// The service named `name` in a `lb-agent vips --json` entry.
fn service<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["services"].as_array()?.iter().find(|s| s["name"] == name)
}

fn healthy(v: &Value, name: &str) -> bool {
    service(v, name).is_some_and(|s| s["healthy"] == true)
}

/// A process that is not HAProxy listening on the VIP port `port` in `ns`
/// and answering every request with HTTP 200 — what a health check through
/// the VIP would happily accept.
struct Squatter {
    hits: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Squatter {
    fn start(ns: &Netns, port: u16) -> Squatter {
        let listener = ns
            .run_inside(|| std::net::TcpListener::bind((VIP, port)))
            .unwrap_or_else(|e| panic!("squatter bind {VIP}:{port}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                h.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nsquatter\n")
                        .await;
                });
            }
        });
        Squatter {
            hits,
            task: Some(task),
        }
    }

    /// Closes the listener; returns once the port is free.
    async fn stop(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Route messages for the VIP that left the ToR with fewer than `n`
/// nexthops (a deletion, or a multipath route that lost one).
fn losses(mon: &RouteMonitor, n: usize) -> Vec<String> {
    mon.events(VIP)
        .into_iter()
        .filter(|e| e.is_delete() || e.nexthops() < n)
        .map(|e| e.text)
        .collect()
}

fn push_all(lab: &mut Lab, extra: &[(&str, u16)]) {
    for lb in &mut lab.lbs {
        lb.write_desired_with(extra);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_pushed_onto_a_live_vip_under_load_never_withdraws_it() {
    if skip_without_netns_loudly("a_service_pushed_onto_a_live_vip_under_load_never_withdraws_it") {
        return;
    }
    let mut lab = Lab::start(LabOptions {
        client: true,
        ..Default::default()
    })
    .await;
    let mon = RouteMonitor::start(&lab.tor);
    let load = lab.client_load(&format!("{VIP}:80"), 100_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The routine push: a new frontend on the announced VIP, to every host
    // of the group at the same moment. It needs a reload, then rise checks.
    let t0 = Instant::now();
    push_all(&mut lab, &[("extra", 8081)]);
    for lb in &lab.lbs {
        lb.wait_vip_status("extra healthy", Duration::from_secs(30), |v| {
            healthy(v, "extra")
        });
    }
    let settled = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.finish();
    let lost = losses(&mon, 2);
    let bodies = lab.client_gets(&format!("{VIP}:8081"), 8);
    eprintln!(
        "service pushed onto the live VIP of 2 LBs under load: healthy everywhere after {:.0} ms; \
         ToR route changes below 2 nexthops: {}; client requests {} ok, {} failed",
        ms(settled),
        lost.len(),
        report.ok,
        report.failed.len()
    );
    assert!(
        lost.is_empty(),
        "the VIP lost a nexthop: {lost:?}\n{}",
        lab.logs()
    );
    assert!(report.ok > 50, "the load ran: {report:?}");
    assert!(
        report.failed.is_empty(),
        "requests failed during the push: {:?}",
        report.failed
    );
    assert!(
        bodies
            .iter()
            .all(|b| b.as_deref().is_ok_and(|b| b.ends_with("-web"))),
        "the new service serves through the VIP: {bodies:?}"
    );
    assert_eq!(lab.tor_nexthops(VIP).await, [LB1, LB2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_is_retried_once_the_port_is_free_and_a_foreign_listener_never_passes() {
    if skip_without_netns_loudly(
        "a_failed_reload_is_retried_once_the_port_is_free_and_a_foreign_listener_never_passes",
    ) {
        return;
    }
    let mut lab = Lab::start(LabOptions {
        client: true,
        ..Default::default()
    })
    .await;
    // Another process holds VIP:8081 on lb1 and answers HTTP 200 there.
    let squatter = Squatter::start(&lab.lbs[0].ns, 8081);
    let load = lab.client_load(&format!("{VIP}:80"), 100_000);
    push_all(&mut lab, &[("extra", 8081)]);
    // lb2 installs it; lb1's reload cannot bind and is rolled back.
    lab.lbs[1].wait_vip_status("extra healthy on lb2", Duration::from_secs(30), |v| {
        healthy(v, "extra")
    });
    let v =
        lab.lbs[0].wait_vip_status("extra not installed on lb1", Duration::from_secs(30), |v| {
            service(v, "extra").is_some_and(|s| {
                s["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("not installed: reload failed"))
            })
        });
    let failed_at = Instant::now();
    assert!(!healthy(&v, "extra"), "the squatter never passes: {v:#}");
    assert_eq!(v["announced"], false, "{v:#}");
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    assert_eq!(lab.tor_nexthops(VIP).await, [LB2]);
    let (_, status, _) = lab.lbs[0].cli(&["status", "--json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert!(
        status["haproxy"]["reload_attempts"].as_u64() >= Some(1),
        "{status:#}"
    );
    assert!(!status["haproxy"]["next_reload_at"].is_null(), "{status:#}");
    // The port is freed: the backoff's retry (5 s, then 10 s ...) installs
    // the frontend with no operator and no new revision.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let squatter_hits = squatter.hits.load(Ordering::Relaxed);
    squatter.stop().await;
    let freed = Instant::now();
    lab.lbs[0].wait_vip_status("extra healthy on lb1", Duration::from_secs(40), |v| {
        healthy(v, "extra") && v["announced"] == true
    });
    let recovered = freed.elapsed();
    lab.wait_nexthops(VIP, 2, Duration::from_secs(5)).await;
    let report = load.finish();
    eprintln!(
        "failed reload (port held by a foreign listener that answered {squatter_hits} requests): \
         lb1 withdrawn, lb2 kept serving; port freed {:.0} ms after the failure, lb1 retried, \
         installed and announced {:.0} ms later (backoff 5 s doubling); client requests {} ok, {} failed",
        ms(freed - failed_at),
        ms(recovered),
        report.ok,
        report.failed.len()
    );
    for (at, e) in &report.failed {
        eprintln!(
            "  failed {:.0} ms after the port was freed: {e}",
            ms(at.saturating_duration_since(freed))
        );
    }
    assert!(recovered < Duration::from_secs(40));
    // The bind check refuses the reload before HAProxy pauses its listeners
    // (docs/reliability.md, "Failed reloads"): a paused listener refuses
    // connections, so none may be refused. (A connection in flight when the
    // ToR moves lb1's flows to lb2 at the withdrawal is reset by lb2, which
    // has no state for it: ECMP without consistent hashing, not a reload.)
    let refused: Vec<&String> = report
        .failed
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.contains("refused"))
        .collect();
    assert!(
        refused.is_empty(),
        "{} requests to the existing frontend refused: {refused:?}",
        refused.len()
    );
    assert!(report.ok > 0, "the client load never got through");
}

/// SIGKILL the LB's HAProxy, check the withdrawal, restart it, check the recovery.
async fn kill_and_restart_haproxy(lab: &mut Lab, what: &str) -> (Duration, Duration) {
    let t0 = Instant::now();
    lab.lbs[0].haproxy.kill9();
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    let withdrawn = t0.elapsed();
    assert_eq!(lab.tor_nexthops(VIP).await, [LB2], "{what}");
    let lb: &mut LbHost = &mut lab.lbs[0];
    let t1 = Instant::now();
    lb.haproxy.respawn(&lb.ns);
    lab.wait_nexthops(VIP, 2, Duration::from_secs(30)).await;
    (withdrawn, t1.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_killed_and_restarted_is_converged_and_announced_with_no_operator() {
    if skip_without_netns_loudly(
        "haproxy_killed_and_restarted_is_converged_and_announced_with_no_operator",
    ) {
        return;
    }
    let mut lab = Lab::start(LabOptions::default()).await;
    let reloads = |lb: &LbHost| -> u64 {
        let (_, out, _) = lb.cli(&["status", "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        v["haproxy"]["reloads"].as_u64().unwrap_or(0)
    };
    let before = reloads(&lab.lbs[0]);
    // 1. systemd restarts it on the agent's own file: nothing to reload.
    let (down, up) = kill_and_restart_haproxy(&mut lab, "restart on the agent's file").await;
    eprintln!(
        "HAProxy SIGKILLed: ToR down to lb2 after {:.0} ms; restarted on the agent's file: \
         announced again {:.0} ms later (rise {RISE} × {:.0} ms)",
        ms(down),
        ms(up),
        ms(INTERVAL)
    );
    assert!(down < Duration::from_secs(2) + BIRD_SLACK, "{down:?}");
    lab.lbs[0].wait_vip_status("converged", Duration::from_secs(10), |v| {
        v["announced"] == true
    });
    assert_eq!(
        reloads(&lab.lbs[0]),
        before,
        "it loaded the desired file itself"
    );

    // 2. Killed again, and restarted on a stale distro config (a package
    //    reinstall): the agent finds a running config it did not write and
    //    reloads it to the desired one, with no operator.
    let lb = &lab.lbs[0];
    let stale = lab::bootstrap_haproxy_cfg(&lb.haproxy.admin);
    lab.lbs[0].haproxy.kill9();
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    std::fs::write(&lab.lbs[0].haproxy.config, stale).unwrap();
    let t0 = Instant::now();
    let lb = &mut lab.lbs[0];
    lb.haproxy.respawn(&lb.ns);
    lab.wait_nexthops(VIP, 2, Duration::from_secs(30)).await;
    let recovered = t0.elapsed();
    eprintln!(
        "HAProxy restarted on a stale config: reloaded by the agent and announced again {:.0} ms after the restart",
        ms(recovered)
    );
    assert!(reloads(&lab.lbs[0]) > before, "the agent reloaded it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_killed_and_restarted_from_a_reset_include_is_published_again() {
    if skip_without_netns_loudly(
        "bird_killed_and_restarted_from_a_reset_include_is_published_again",
    ) {
        return;
    }
    let mut lab = Lab::start(LabOptions::default()).await;
    let t0 = Instant::now();
    lab.lbs[0].bird.signal(Signal::SIGKILL);
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    let down = t0.elapsed();
    // What the packaged bird.service drop-in does before BIRD starts.
    let (code, _, err) = lab.lbs[0].cli_config(&["reset"]);
    assert_eq!(code, 0, "lb-agent reset: {err}");
    let include = std::fs::read_to_string(&lab.lbs[0].bird_cfg.include_file).unwrap();
    assert!(
        !include.contains("192.0.2.10/32"),
        "reset to dummies: {include}"
    );
    let t1 = Instant::now();
    lab.lbs[0].bird.restart();
    lab.wait_nexthops(VIP, 2, Duration::from_secs(30)).await;
    let up = t1.elapsed();
    eprintln!(
        "BIRD SIGKILLed: ToR down to lb2 after {:.0} ms; restarted from a reset include: \
         the agent published again and the ToR has both LBs {:.0} ms later",
        ms(down),
        ms(up)
    );
    lab.lbs[0].wait_vip_status("announced", Duration::from_secs(5), |v| {
        v["announced"] == true
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_with_sigkill_keeps_or_fails_closed_as_configured() {
    if skip_without_netns_loudly("an_agent_killed_with_sigkill_keeps_or_fails_closed_as_configured")
    {
        return;
    }
    let mut lab = Lab::start(LabOptions {
        start_agents: false,
        ..Default::default()
    })
    .await;
    for lb in &mut lab.lbs {
        lb.write_agent_toml_with(|t| t.on_stop(OnStop::Keep));
        lb.start_agent();
    }
    lab.wait_nexthops(VIP, 2, Duration::from_secs(30)).await;
    let mon = RouteMonitor::start(&lab.tor);
    // 1. SIGKILL, no ExecStopPost (on_stop = keep, a crash loop's restart):
    //    BIRD keeps announcing; the restarted agent adopts; no flap.
    let t0 = Instant::now();
    let mut agent = lab.lbs[0].agent.take().unwrap();
    agent.signal(Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.try_exit().is_none() {
        assert!(Instant::now() < deadline, "agent survived SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(agent);
    lab.lbs[0].start_agent();
    lab.lbs[0].wait_vip_status("adopted and checked", Duration::from_secs(20), |v| {
        v["announced"] == true && healthy(v, "web") && healthy(v, "api")
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lost = losses(&mon, 2);
    eprintln!(
        "agent SIGKILLed and restarted with on_stop = keep: announced and checked again {:.0} ms later; \
         ToR route changes below 2 nexthops: {}",
        ms(t0.elapsed()),
        lost.len()
    );
    assert!(lost.is_empty(), "{lost:?}\n{}", lab.logs());
    // 2. SIGKILL, then the unit's ExecStopPost: fail closed.
    let mut agent = lab.lbs[0].agent.take().unwrap();
    agent.signal(Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.try_exit().is_none() {
        assert!(Instant::now() < deadline, "agent survived SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
    }
    let t1 = Instant::now();
    let (code, _, err) =
        lab.lbs[0].cli_config_env(&["reset", "--if-failed"], &[("SERVICE_RESULT", "signal")]);
    assert_eq!(code, 0, "lb-agent reset --if-failed: {err}");
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    eprintln!(
        "agent SIGKILLed, then ExecStopPost's `lb-agent reset --if-failed`: ToR down to lb2 {:.0} ms after the reset started",
        ms(t1.elapsed())
    );
    assert_eq!(lab.tor_nexthops(VIP).await, [LB2]);
}

/// A stop whose withdrawal BIRD never confirms (BIRD frozen) exits non-zero,
/// so systemd's `$SERVICE_RESULT` is not `success` and the unit's
/// `ExecStopPost=lb-agent reset --if-failed` acts (before, the agent exited 0
/// and the reset skipped itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_bird_never_confirms_exits_non_zero_so_the_reset_runs() {
    if skip_without_netns_loudly("a_stop_bird_never_confirms_exits_non_zero_so_the_reset_runs") {
        return;
    }
    let mut lab = Lab::start(LabOptions::default()).await;
    lab.wait_nexthops(VIP, 2, Duration::from_secs(30)).await;
    lab.lbs[0].bird.signal(Signal::SIGSTOP);
    let t0 = Instant::now();
    let status = lab.lbs[0].stop_agent();
    let took = t0.elapsed();
    lab.lbs[0].bird.signal(Signal::SIGCONT);
    let logs = lab.lbs[0].agent_logs();
    assert_eq!(status.code(), Some(1), "exit status {status:?}\n{logs}");
    assert!(logs.contains("did not confirm the withdrawal"), "{logs}");
    // What ExecStopPost then runs, with what systemd sets for a failed exit.
    let (code, out, err) = lab.lbs[0].cli_config_env(
        &["reset", "--if-failed"],
        &[("SERVICE_RESULT", "exit-code")],
    );
    assert_eq!(code, 0, "lb-agent reset --if-failed: {out}{err}");
    assert!(
        !out.contains("announcements left as they are"),
        "the reset skipped itself: {out}{err}"
    );
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    assert_eq!(lab.tor_nexthops(VIP).await, [LB2]);
    assert!(lab.lbs[0].exported().await.is_empty());
    eprintln!(
        "BIRD frozen at stop: the agent gave up waiting for the withdrawal after {:.0} ms and exited 1; \
         `reset --if-failed` (SERVICE_RESULT=exit-code) left lb1 exporting nothing",
        ms(took)
    );
}

/// `reloads` and `runtime_commands` of an LB's agent.
fn counters(lb: &LbHost) -> (u64, u64) {
    let (_, out, _) = lb.cli(&["status", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    (
        v["haproxy"]["reloads"].as_u64().unwrap_or(0),
        v["haproxy"]["runtime_commands"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_load_through_50_runtime_and_5_reload_changes_loses_nothing() {
    if skip_without_netns_loudly(
        "client_load_through_50_runtime_and_5_reload_changes_loses_nothing",
    ) {
        return;
    }
    let mut lab = Lab::start(LabOptions {
        client: true,
        ..Default::default()
    })
    .await;
    let before: Vec<(u64, u64)> = lab.lbs.iter().map(counters).collect();
    let mon = RouteMonitor::start(&lab.tor);
    let load = lab.client_load(&format!("{VIP}:80"), 1_000_000);
    let t0 = Instant::now();
    let mut extra: Vec<(String, u16)> = Vec::new();
    for i in 1..=55u16 {
        // Every 11th change adds a frontend (a reload); the others change
        // the web server's weight (runtime commands only).
        if i % 11 == 0 {
            extra.push((format!("extra{}", i / 11), 8100 + i / 11));
        }
        let names: Vec<(&str, u16)> = extra.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        for lb in &mut lab.lbs {
            lb.write_desired_doc(&names, 1 + i % 7);
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    for lb in &lab.lbs {
        lb.wait_vip_status(
            "every extra frontend healthy",
            Duration::from_secs(30),
            |v| (1..=5).all(|k| healthy(v, &format!("extra{k}"))),
        );
    }
    // At least 2,000 requests in all (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.done() < 2_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = load.finish();
    let after: Vec<(u64, u64)> = lab.lbs.iter().map(counters).collect();
    let lost = losses(&mon, 2);
    let reloads: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.0 - b.0).collect();
    let commands: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).collect();
    eprintln!(
        "55 changes in {:.1} s (50 runtime, 5 reload-needing) on 2 LBs under load: reloads per LB {reloads:?} \
         (coalesced), runtime commands per LB {commands:?}; client requests {} ok, {} failed; ToR route losses {}",
        ms(t0.elapsed()) / 1e3,
        report.ok,
        report.failed.len(),
        lost.len()
    );
    assert!(report.ok >= 2_000, "not enough load: {report:?}");
    assert!(
        report.failed.is_empty(),
        "failed requests: {:?}",
        report.failed
    );
    assert!(lost.is_empty(), "{lost:?}");
    assert!(reloads.iter().all(|r| (1..=5).contains(r)), "{reloads:?}");
}

/// Runs `sh -c script` in the mount namespace of `pid` (an agent started
/// by `ip netns exec`, which gives it a private one): file-system faults
/// for the agent alone, invisible to BIRD and the test.
fn in_mount_ns(pid: u32, script: &str) {
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--", "sh", "-c", script])
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_include_directory_is_reported_and_recovered_from() {
    if skip_without_netns_loudly("a_read_only_include_directory_is_reported_and_recovered_from") {
        return;
    }
    let lab = Lab::start(LabOptions::default()).await;
    let pid = lab.lbs[0].agent.as_ref().unwrap().pid;
    let dir = lab.lbs[0]
        .bird_cfg
        .include_file
        .parent()
        .unwrap()
        .display()
        .to_string();
    // The include's directory turns read-only for the agent; then its web
    // service fails, so it must withdraw but cannot write the include.
    in_mount_ns(
        pid,
        &format!("mount --bind {dir} {dir} && mount -o remount,bind,ro {dir}"),
    );
    lab.lbs[0].web.set_status(503);
    let v = lab.lbs[0].wait_vip_status("withdrawal not confirmed", Duration::from_secs(10), |v| {
        v["reason"].as_str().is_some_and(|r| {
            r.contains("BIRD still announces") && r.contains("service web unhealthy")
        })
    });
    assert_eq!(v["announced"], true, "status says what BIRD runs: {v:#}");
    let (_, out, _) = lab.lbs[0].cli(&["status", "--json"]);
    let st: Value = serde_json::from_str(&out).unwrap();
    let err = st["bird"]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.to_lowercase().contains("read-only"), "{st:#}");
    // Writable again: the retry withdraws.
    let t0 = Instant::now();
    in_mount_ns(pid, &format!("umount {dir}"));
    lab.wait_nexthops(VIP, 1, Duration::from_secs(10)).await;
    eprintln!(
        "read-only include directory: the withdrawal could not be written; once writable, withdrawn {:.0} ms later; \
         meanwhile the status said \"{}\"",
        ms(t0.elapsed()),
        v["reason"].as_str().unwrap_or_default(),
    );
    assert_eq!(lab.tor_nexthops(VIP).await, [LB2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_dir_loses_no_decision() {
    if skip_without_netns_loudly("a_full_state_dir_loses_no_decision") {
        return;
    }
    let mut lab = Lab::start(LabOptions::default()).await;
    let pid = lab.lbs[0].agent.as_ref().unwrap().pid;
    let state = lab.lbs[0].dir.join("state").display().to_string();
    // A 64 KiB tmpfs over state_dir, filled up: every write there fails with ENOSPC.
    in_mount_ns(
        pid,
        &format!("mount -t tmpfs -o size=64k tmpfs {state} && (dd if=/dev/zero of={state}/filler bs=4k 2>/dev/null || true)"),
    );
    // A drain cannot be persisted, but it applies.
    let (code, _, err) = lab.lbs[0].cli(&["drain", "--reason", "full disk test"]);
    assert_eq!(code, 0, "drain: {err}");
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    // An undrain that cannot be persisted is refused: the host stays
    // drained (fail safe), and the operator is told why.
    let (code, out, err) = lab.lbs[0].cli(&["undrain"]);
    assert_ne!(code, 0, "undrain on a full disk: {out}");
    assert!(err.contains("No space left on device"), "{err}");
    lab.hold_nexthops(VIP, 1, Duration::from_millis(500), "still drained")
        .await;
    in_mount_ns(pid, &format!("rm {state}/filler"));
    let (code, _, err) = lab.lbs[0].cli(&["undrain"]);
    assert_eq!(code, 0, "undrain once there is space: {err}");
    lab.wait_nexthops(VIP, 2, Duration::from_secs(10)).await;
    in_mount_ns(
        pid,
        &format!("dd if=/dev/zero of={state}/filler bs=4k 2>/dev/null || true"),
    );
    // A new document (the cache cannot be written) still applies.
    lab.lbs[0].write_desired_with(&[("extra", 8081)]);
    lab.lbs[0].wait_vip_status("extra healthy", Duration::from_secs(20), |v| {
        healthy(v, "extra") && v["announced"] == true
    });
    // Health decisions too: a failing service withdraws.
    lab.lbs[0].web.set_status(503);
    let t0 = Instant::now();
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    let logs = lab.lbs[0].agent_logs();
    eprintln!(
        "full state_dir (ENOSPC): a drain applied, an undrain was refused (stays drained) until there \
         was space, a new document and a withdrawal took effect (withdrawn {:.0} ms after the failure); \
         write errors logged: {}",
        ms(t0.elapsed()),
        logs.matches("No space left on device").count()
    );
    assert!(
        logs.contains("No space left on device"),
        "the failures are reported:\n{logs}"
    );
    assert!(
        lab.lbs[0].agent.as_mut().unwrap().try_exit().is_none(),
        "the agent runs on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demote_keeps_a_vip_reachable_when_every_host_fails_at_once() {
    if skip_without_netns_loudly("demote_keeps_a_vip_reachable_when_every_host_fails_at_once") {
        return;
    }
    let mut lab = Lab::start(LabOptions {
        start_agents: false,
        ..Default::default()
    })
    .await;
    for lb in &mut lab.lbs {
        lb.write_agent_toml_with(|t| t.on_unhealthy(OnUnhealthy::Demote));
        lb.start_agent();
    }
    // Demoted routes count as nexthops too (a host whose services have not
    // risen yet is demoted, not withdrawn): wait for both to be healthy.
    for lb in &lab.lbs {
        lb.wait_vip_status("announced, not demoted", Duration::from_secs(30), |v| {
            v["announced"] == true && v["demoted"] == false
        });
    }
    lab.wait_nexthops(VIP, 2, Duration::from_secs(30)).await;
    // One host's service fails: it is demoted, the ToR prefers the healthy one.
    let t0 = Instant::now();
    lab.lbs[0].web.set_status(503);
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    let one = t0.elapsed();
    assert_eq!(lab.tor_nexthops(VIP).await, [LB2]);
    let v = lab.lbs[0].wait_vip_status("demoted", Duration::from_secs(5), |v| v["demoted"] == true);
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("demoted: service web unhealthy")),
        "{v:#}"
    );
    // Every host fails at once (a backend-wide outage): the VIP stays
    // reachable through both demoted hosts; the route is never deleted.
    let mon = RouteMonitor::start(&lab.tor);
    lab.lbs[1].web.set_status(503);
    lab.wait_nexthops(VIP, 2, Duration::from_secs(5)).await;
    lab.hold_nexthops(VIP, 2, Duration::from_millis(500), "both demoted")
        .await;
    let deleted: Vec<String> = mon
        .events(VIP)
        .into_iter()
        .filter(|e| e.is_delete() || e.nexthops() == 0)
        .map(|e| e.text)
        .collect();
    assert!(deleted.is_empty(), "the route vanished: {deleted:?}");
    // Host-local failures still withdraw: HAProxy down on lb1.
    lab.lbs[0].haproxy.kill9();
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    assert_eq!(lab.tor_nexthops(VIP).await, [LB2]);
    eprintln!(
        "on_unhealthy = demote: a failing service demoted lb1 and the ToR used lb2 alone after {:.0} ms; \
         both failing: the ToR kept both (demoted) nexthops, route never deleted; HAProxy down on lb1 withdrew it",
        ms(one)
    );
}
