//! Issue 3 end to end: the real `lb-agent` binary gating anycast
//! announcements in the lab of docs/architecture.md ("The test labs").
//!
//! Each test builds its own throwaway topology (`lab::Lab`): a ToR
//! namespace running BIRD (`merge paths on`, ip_forward=1, L4 multipath
//! hash), LB namespaces each running BIRD, HAProxy (master-worker), two
//! backends and `lb-agent run` (VIP on `lo`, `file://` source, health
//! interval 200 ms, timeout 150 ms, rise 2, fall 2, fast interval 100 ms).
//! Every claim is checked on the ToR's kernel routing table, and the
//! reaction times are printed (run with `--nocapture` to see them).
//!
//! What each test proves:
//! - `health_gates_the_tor_route`: both LBs healthy → 2 nexthops and HTTP
//!   through the VIP reaches both; a failing service withdraws its LB
//!   within fall × interval + timeout + BIRD, `lb-agent vips --json` names
//!   the service, rise brings it back; one failing service out of two
//!   withdraws the VIP; 20 flaps leave the ToR's BGP sessions untouched.
//! - `drain_survives_a_restart_and_sigterm_withdraws_before_exit`: drain
//!   withdraws, stays drained across an agent restart, undrain announces;
//!   SIGTERM withdraws before the process is gone.
//! - `keep_restart_never_drops_the_route_and_unknown_prefixes_are_purged`:
//!   `on_stop = "keep"` stop/start never costs the ToR its nexthop (polled
//!   and `ip monitor`ed throughout); a hand-added prefix in the include is
//!   purged at start while the known one stays announced.
//! - `an_include_bird_rejects_is_never_left_in_place`: at the agent level,
//!   a layout BIRD refuses (a clash with bird.conf, via SIGHUP) never stays
//!   on disk and never withdraws; fixing agent.toml (SIGHUP again)
//!   recovers; the ToR keeps the route throughout.
//!
//! Every test also watches each include file the whole time: every version
//! on disk parses (atomic writes, never a torn file).

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::{bird, lab, netns};

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use lb_agent::config::OnStop;
use nix::sys::signal::Signal;
use serde_json::Value;

use lab::{
    ms, Lab, LabOptions, RouteMonitor, TorPoller, FALL, FAST_INTERVAL, INTERVAL, RISE, TIMEOUT,
    VIP, VIP_NET,
};
use netns::skip_without_netns_loudly;

const LB1: &str = "via 10.0.1.2 dev tor-lb1";
const LB2: &str = "via 10.0.2.2 dev tor-lb2";

/// Allowance for BIRD, BGP and the ToR's kernel on top of the health bound.
/// Typically 5–15 ms; most of it is the include's fsync, which stalled for
/// up to ~300 ms on this disk while parallel builds ran, hence the margin.
const BIRD_SLACK: Duration = Duration::from_millis(750);

/// docs/gating.md: a failing service is withdrawn within fall × interval + timeout
/// (+ BIRD time).
fn withdraw_bound() -> Duration {
    INTERVAL * FALL + TIMEOUT + BIRD_SLACK
}

/// The same bound for recovery: rise passes, the first at most one interval
/// away, the next ones at the fast interval.
fn recovery_bound() -> Duration {
    INTERVAL * RISE + TIMEOUT + BIRD_SLACK
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn services(v: &Value) -> BTreeMap<String, bool> {
    v["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap_or("").to_string(),
                        s["healthy"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True once every service of the VIP has passed at least `rise` checks in a
/// row: the checks have decided, adoption or not.
fn checks_decided(v: &Value) -> bool {
    let s = v["services"].as_array().cloned().unwrap_or_default();
    s.len() == 2
        && s.iter()
            .all(|x| x["ok_streak"].as_u64().unwrap_or(0) >= u64::from(RISE))
}

fn reason(v: &Value) -> String {
    v["reason"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_gates_the_tor_route() {
    if skip_without_netns_loudly("health_gates_the_tor_route") {
        return;
    }
    let test_t0 = Instant::now();
    let mut lab = Lab::start(LabOptions {
        client: true,
        ..Default::default()
    })
    .await;

    // 1. Both LBs healthy: one multipath route with a nexthop per LB, and
    //    traffic from the client through the VIP reaches both HAProxys.
    assert_eq!(lab.tor_nexthops(VIP).await, [LB1, LB2]);
    let bodies = lab.client_gets(&format!("{VIP}:80"), 32);
    let mut by_lb: BTreeMap<String, usize> = BTreeMap::new();
    for b in &bodies {
        let name = b
            .as_ref()
            .unwrap_or_else(|e| panic!("GET via the VIP: {e}"));
        *by_lb.entry(name.clone()).or_default() += 1;
    }
    assert_eq!(
        by_lb.keys().collect::<Vec<_>>(),
        ["lb1-web", "lb2-web"],
        "32 connections through the VIP reach both LBs: {by_lb:?}"
    );
    eprintln!(
        "both healthy: 2 nexthops; 32 GETs via {VIP} from the client, all HTTP 200: {by_lb:?}"
    );
    let sessions_before = lab.tor_sessions().await;
    assert!(sessions_before.iter().all(|r| r.info == "Established"));
    let mut lb_sessions_before = Vec::new();
    for lb in &lab.lbs {
        lb_sessions_before.push(lb.bird_ctl().show_protocols().await.unwrap());
    }

    // 2. lb1's web backend fails: HAProxy answers 503, the check fails, the
    //    agent withdraws; the ToR keeps only lb2.
    let t0 = Instant::now();
    lab.lbs[0].web.set_status(503);
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    let withdraw = t0.elapsed();
    assert_eq!(lab.tor_nexthops(VIP).await, [LB2]);
    eprintln!(
        "lb1 web → 503: ToR down to 1 nexthop after {:.0} ms (bound fall × interval + timeout = {:.0} ms, + {:.0} ms BIRD slack)",
        ms(withdraw),
        ms(INTERVAL * FALL + TIMEOUT),
        ms(BIRD_SLACK)
    );
    assert!(withdraw <= withdraw_bound(), "withdrawal took {withdraw:?}");
    let v = lab.lbs[0].wait_vip_status("not announced", Duration::from_secs(2), |v| {
        v["announced"] == false
    });
    let why = reason(&v);
    assert!(
        why.contains("service web unhealthy") && why.contains("503"),
        "reason names the service and the failure: {v:#}"
    );
    assert!(!services(&v)["web"], "{v:#}");
    assert!(services(&v)["api"], "{v:#}");
    assert_eq!(lab.lbs[1].vip_status()["announced"], true);
    eprintln!("lb1 `lb-agent vips --json`: announced=false, reason {why:?}");
    let bodies = lab.client_gets(&format!("{VIP}:80"), 8);
    assert!(
        bodies.iter().all(|b| b.as_deref() == Ok("lb2-web")),
        "only lb2 serves now: {bodies:?}"
    );

    // Recovery after rise passes.
    let t0 = Instant::now();
    lab.lbs[0].web.set_status(200);
    lab.wait_nexthops(VIP, 2, Duration::from_secs(5)).await;
    let recovery = t0.elapsed();
    eprintln!(
        "lb1 web → 200: ToR back to 2 nexthops after {:.0} ms (rise {RISE}, interval {:.0} ms, fast interval {:.0} ms)",
        ms(recovery),
        ms(INTERVAL),
        ms(FAST_INTERVAL)
    );
    assert!(recovery <= recovery_bound(), "recovery took {recovery:?}");
    assert_eq!(lab.tor_nexthops(VIP).await, [LB1, LB2]);

    // 3. One failing service out of two behind the VIP withdraws it: lb1's
    //    api backend stops listening (connection refused behind HAProxy).
    let t0 = Instant::now();
    lab.lbs[0].api.close().await;
    lab.wait_nexthops(VIP, 1, Duration::from_secs(5)).await;
    let api_withdraw = t0.elapsed();
    assert_eq!(lab.tor_nexthops(VIP).await, [LB2]);
    let v = lab.lbs[0].wait_vip_status("api unhealthy", Duration::from_secs(2), |v| {
        v["announced"] == false
    });
    assert!(
        reason(&v).contains("service api unhealthy") && !reason(&v).contains("web"),
        "only api is named: {v:#}"
    );
    assert_eq!(
        services(&v),
        [("api".to_string(), false), ("web".to_string(), true)].into()
    );
    eprintln!(
        "lb1 api backend stopped (web healthy): withdrawn after {:.0} ms, reason {:?}",
        ms(api_withdraw),
        reason(&v)
    );
    assert!(api_withdraw <= withdraw_bound(), "{api_withdraw:?}");
    let lb = &mut lab.lbs[0];
    lb.api.reopen(&lb.ns);
    lab.wait_nexthops(VIP, 2, recovery_bound()).await;

    // 8. 20 flaps of lb1's web service; every transition seen on the ToR.
    let flaps = 20;
    let (mut downs, mut ups) = (Vec::new(), Vec::new());
    for _ in 0..flaps {
        let t0 = Instant::now();
        lab.lbs[0].web.set_status(503);
        lab.wait_nexthops(VIP, 1, withdraw_bound()).await;
        downs.push(t0.elapsed());
        let t0 = Instant::now();
        lab.lbs[0].web.set_status(200);
        lab.wait_nexthops(VIP, 2, recovery_bound()).await;
        ups.push(t0.elapsed());
    }
    eprintln!(
        "{flaps} flaps of lb1 web (median / max): failure → withdrawn {:.0} / {:.0} ms, recovery → announced {:.0} / {:.0} ms",
        ms(median(&downs)),
        ms(*downs.iter().max().unwrap()),
        ms(median(&ups)),
        ms(*ups.iter().max().unwrap())
    );

    // The BGP sessions were never reset: same "Since", still Established,
    // on the ToR and on both LBs.
    let sessions_after = lab.tor_sessions().await;
    bird::assert_sessions_kept(
        &sessions_before,
        &sessions_after,
        &format!("ToR across {} reconfigures", 2 * flaps + 4),
    );
    for (lb, before) in lab.lbs.iter().zip(&lb_sessions_before) {
        let after = lb.bird_ctl().show_protocols().await.unwrap();
        bird::assert_sessions_kept(before, &after, "LB BIRD");
    }
    let st: Value = serde_json::from_str(&lab.lbs[0].cli(&["status", "--json"]).1).unwrap();
    eprintln!(
        "ToR sessions unchanged after {} reconfigures of lb1's BIRD: {:?}; lb1 bird status {}",
        2 * flaps + 4,
        sessions_after
            .iter()
            .map(|r| format!("{} {} since {}", r.name, r.info, r.since))
            .collect::<Vec<_>>(),
        st["bird"]
    );

    let reports = lab.assert_includes_always_parsed();
    assert!(
        reports[0].versions.len() > 2 * flaps,
        "the watcher saw the flaps: {}",
        reports[0].versions.len()
    );
    eprintln!(
        "include watchers: {:?} reads, {:?} versions, none broken; test took {:.1} s",
        reports.iter().map(|r| r.reads).collect::<Vec<_>>(),
        reports.iter().map(|r| r.versions.len()).collect::<Vec<_>>(),
        test_t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_survives_a_restart_and_sigterm_withdraws_before_exit() {
    if skip_without_netns_loudly("drain_survives_a_restart_and_sigterm_withdraws_before_exit") {
        return;
    }
    let test_t0 = Instant::now();
    let mut lab = Lab::start(LabOptions::default()).await;

    // 4. Drain: withdrawn at once.
    let t0 = Instant::now();
    let (code, out, err) = lab.lbs[0].cli(&["drain", "--reason", "test"]);
    assert_eq!(code, 0, "drain: {out}{err}");
    lab.wait_nexthops(VIP, 1, Duration::from_secs(2)).await;
    eprintln!(
        "`lb-agent drain --reason test` → ToR down to 1 nexthop after {:.0} ms",
        ms(t0.elapsed())
    );
    assert_eq!(lab.tor_nexthops(VIP).await, [LB2]);
    let v = lab.lbs[0].vip_status();
    assert_eq!(v["announced"], false, "{v:#}");
    assert!(reason(&v).contains("drained: test"), "{v:#}");

    // The drain survives a restart of the agent: the ToR never sees lb1
    // again while the new agent starts, checks (healthy) and decides.
    let st = lab.lbs[0].stop_agent();
    assert!(st.success(), "{st:?}");
    let poller = TorPoller::start(&lab.tor, VIP);
    lab.lbs[0].start_agent();
    let v = lab.lbs[0].wait_vip_status(
        "services checked healthy while drained",
        Duration::from_secs(10),
        |v| checks_decided(v) && v["announced"] == false,
    );
    assert!(reason(&v).contains("drained: test"), "{v:#}");
    // A few more check rounds while polling.
    lab.hold_nexthops(VIP, 1, INTERVAL * 3, "drained after restart")
        .await;
    let seen = poller.finish();
    assert!(
        seen.iter().all(|(_, n)| *n == 1),
        "lb1 re-announced while drained: {seen:?}\n{}",
        lab.logs()
    );
    let (code, out, _) = lab.lbs[0].cli(&["status", "--json"]);
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["drained"], true, "{status:#}");
    eprintln!(
        "drain survived an agent restart: {} ToR polls over {:.0} ms, all 1 nexthop; status drained=true",
        seen.len(),
        ms(seen.last().map(|s| s.0).unwrap_or_default())
    );

    // Undrain: announced again.
    let t0 = Instant::now();
    let (code, out, err) = lab.lbs[0].cli(&["undrain"]);
    assert_eq!(code, 0, "undrain: {out}{err}");
    lab.wait_nexthops(VIP, 2, Duration::from_secs(2)).await;
    eprintln!(
        "`lb-agent undrain` → ToR back to 2 nexthops after {:.0} ms",
        ms(t0.elapsed())
    );

    // 5. SIGTERM: the prefix is withdrawn before the process is gone.
    let mon = RouteMonitor::start(&lab.tor);
    let sent = SystemTime::now();
    let t0 = Instant::now();
    lab.lbs[0].agent.as_ref().unwrap().signal(Signal::SIGTERM);
    let deadline = t0 + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = lab.lbs[0].agent.as_mut().unwrap().try_exit() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let exited = t0.elapsed();
    let gone_at = SystemTime::now();
    // The agent's own guarantee, checked right at exit: lb1's BIRD no longer
    // exports the VIP to the ToR (the agent confirmed that before exiting).
    let exported = lab.lbs[0].exported().await;
    let log = lab.lbs[0].agent.take().unwrap().log_text();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        exported.is_empty(),
        "lb1's BIRD still exports {exported:?} after the agent exited\n{log}"
    );
    // The ToR: BGP carries the withdrawal in milliseconds. The agent cannot
    // wait for the ToR, so allow the UPDATE's flight (and the occasional
    // ~42 ms Nagle stall of the lab notes) after the exit, and report the order.
    lab.wait_nexthops(VIP, 1, Duration::from_millis(200)).await;
    assert_eq!(lab.tor_nexthops(VIP).await, [LB2]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let events = mon.events(VIP);
    let change = events
        .iter()
        .find(|e| e.nexthops() == 1)
        .unwrap_or_else(|| panic!("no 2 → 1 route change seen by ip monitor: {events:?}"));
    let to_route = change.at.duration_since(sent).unwrap_or_default();
    let order = match gone_at.duration_since(change.at) {
        Ok(d) => format!(
            "the ToR route changed {:.1} ms before the process was seen gone",
            ms(d)
        ),
        Err(e) => format!(
            "the ToR route changed {:.1} ms after the process was seen gone",
            ms(e.duration())
        ),
    };
    eprintln!(
        "SIGTERM → ToR route down to 1 nexthop {:.1} ms (ip monitor); SIGTERM → process gone {:.1} ms; {order}",
        ms(to_route),
        ms(exited)
    );
    assert!(
        log.contains("withdrawal confirmed by BIRD"),
        "the agent confirmed the withdrawal:\n{log}"
    );

    let reports = lab.assert_includes_always_parsed();
    eprintln!(
        "include watchers: {:?} versions, none broken; test took {:.1} s",
        reports.iter().map(|r| r.versions.len()).collect::<Vec<_>>(),
        test_t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_restart_never_drops_the_route_and_unknown_prefixes_are_purged() {
    if skip_without_netns_loudly(
        "keep_restart_never_drops_the_route_and_unknown_prefixes_are_purged",
    ) {
        return;
    }
    let test_t0 = Instant::now();
    let mut lab = Lab::start(LabOptions {
        start_agents: false,
        ..Default::default()
    })
    .await;
    lab.lbs[0].write_agent_toml_with(|t| t.on_stop(OnStop::Keep));
    for lb in &mut lab.lbs {
        lb.start_agent();
    }
    lab.wait_nexthops(VIP, 2, Duration::from_secs(30)).await;
    lab.lbs[0].wait_vip_status("checks decided", Duration::from_secs(5), checks_decided);

    // 6. Stop (keep) and start lb1's agent: the ToR never loses lb1's nexthop.
    let mon = RouteMonitor::start(&lab.tor);
    let poller = TorPoller::start(&lab.tor, VIP);
    let t0 = Instant::now();
    let st = lab.lbs[0].stop_agent();
    assert!(st.success(), "{st:?}");
    let stopped = t0.elapsed();
    // BIRD keeps announcing while no agent runs.
    lab.hold_nexthops(
        VIP,
        2,
        Duration::from_millis(300),
        "agent stopped with keep",
    )
    .await;
    let t1 = Instant::now();
    lab.lbs[0].start_agent();
    // Until the new agent's checks have decided (rise passes), and a bit more.
    let v = lab.lbs[0].wait_vip_status(
        "checks decided after restart",
        Duration::from_secs(10),
        |v| checks_decided(v) && v["announced"] == true,
    );
    let decided = t1.elapsed();
    lab.hold_nexthops(VIP, 2, INTERVAL * 2, "after restart")
        .await;
    let seen = poller.finish();
    let events = mon.events(VIP);
    let dips: Vec<_> = seen.iter().filter(|(_, n)| *n != 2).collect();
    assert!(
        dips.is_empty(),
        "the ToR lost a nexthop during the keep restart: {dips:?}\n{}",
        lab.logs()
    );
    assert!(
        events.is_empty(),
        "the ToR's route for {VIP} changed during the keep restart: {events:?}\n{}",
        lab.logs()
    );
    let log = lab.lbs[0].agent.as_ref().unwrap().log_text();
    assert!(
        log.contains("adopting prefixes"),
        "the new agent adopted the announced prefix:\n{log}"
    );
    eprintln!(
        "on_stop=keep restart: stop took {:.0} ms, agent down {:.0} ms, restarted agent's checks decided {:.0} ms after start; \
         {} ToR polls over {:.0} ms all showed 2 nexthops, ip monitor saw no change; adopted={}",
        ms(stopped),
        ms(t1 - t0 - stopped),
        ms(decided),
        seen.len(),
        ms(seen.last().map(|s| s.0).unwrap_or_default()),
        v["adopted"]
    );

    // 7. An unknown prefix hand-added to the include (and live in BIRD, so
    //    the ToR has it) is purged when the agent starts; the known VIP
    //    stays announced throughout.
    let st = lab.lbs[0].stop_agent();
    assert!(st.success(), "{st:?}");
    lab.lbs[0].hand_publish(&[VIP_NET, "192.0.2.15/32"]).await;
    lab.wait_nexthops("192.0.2.15", 1, Duration::from_secs(5))
        .await;
    assert_eq!(lab.tor_nexthops("192.0.2.15").await, [LB1]);
    let poller = TorPoller::start(&lab.tor, VIP);
    let t0 = Instant::now();
    lab.lbs[0].start_agent();
    lab.wait_nexthops("192.0.2.15", 0, Duration::from_secs(10))
        .await;
    let purged = t0.elapsed();
    lab.lbs[0].wait_vip_status(
        "checks decided after restart",
        Duration::from_secs(10),
        |v| checks_decided(v) && v["announced"] == true,
    );
    let seen = poller.finish();
    assert!(
        seen.iter().all(|(_, n)| *n == 2),
        "{VIP} lost a nexthop while 192.0.2.15 was purged: {seen:?}"
    );
    let include = std::fs::read_to_string(&lab.lbs[0].bird_cfg.include_file).unwrap();
    assert!(
        include.contains("192.0.2.10/32") && !include.contains("192.0.2.15"),
        "{include}"
    );
    assert_eq!(
        lab.lbs[0].exported().await,
        [VIP_NET.to_string()].into(),
        "lb1's BIRD exports only the desired VIP"
    );
    eprintln!(
        "unknown 192.0.2.15/32 in the include: purged from the ToR {:.0} ms after the agent started; \
         {VIP} kept 2 nexthops ({} polls)",
        ms(purged),
        seen.len()
    );

    let reports = lab.assert_includes_always_parsed();
    eprintln!(
        "include watchers: {:?} versions, none broken; test took {:.1} s",
        reports.iter().map(|r| r.versions.len()).collect::<Vec<_>>(),
        test_t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_include_bird_rejects_is_never_left_in_place() {
    if skip_without_netns_loudly("an_include_bird_rejects_is_never_left_in_place") {
        return;
    }
    let test_t0 = Instant::now();
    let mut lab = Lab::start(LabOptions {
        lbs: 1,
        ..Default::default()
    })
    .await;
    let lb = &lab.lbs[0];
    lb.wait_vip_status("checks decided", Duration::from_secs(5), checks_decided);
    let good = std::fs::read_to_string(&lb.bird_cfg.include_file).unwrap();
    assert!(good.contains(VIP_NET), "{good}");

    // agent.toml now names a drain variable that bird.conf defines too
    // (LB_RESERVED): every include the agent renders is refused by BIRD
    // (`8002 ... already defined`). SIGHUP applies it.
    lb.write_agent_toml_with(|t| t.drain_variable("LB_RESERVED"));
    // Neither SIGHUP (generations hand announcements over) nor the refused
    // includes may cost the ToR the route: polled from here to the end.
    let poller = TorPoller::start(&lab.tor, VIP);
    let t_hup = Instant::now();
    lb.agent.as_ref().unwrap().signal(Signal::SIGHUP);
    let status = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, out, _) = lb.cli(&["status", "--json"]);
            if code == 0 {
                let s: Value = serde_json::from_str(&out).unwrap();
                if s["bird"]["ok"] == false
                    && s["bird"]["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("restored"))
                {
                    break s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the agent never reported the rejection\n{}",
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    eprintln!(
        "rejected layout reported {:.0} ms after SIGHUP: bird.error = {}",
        ms(t_hup.elapsed()),
        status["bird"]["error"]
    );
    // BIRD keeps running the last good include: a rejected include is not a
    // withdrawal, and the ToR keeps the route while the agent retries.
    lab.hold_nexthops(VIP, 1, Duration::from_millis(1500), "while BIRD rejects")
        .await;
    let lb = &lab.lbs[0];
    // The include on disk is one BIRD accepts. Sampled: the agent retries
    // (write, refused, restore) with backoff, so one sample could land in a
    // retry's few-millisecond window; the watcher below checks every version.
    let mut accepted_samples = 0;
    for _ in 0..5 {
        if lb.bird_ctl().configure_check().await.is_ok() {
            accepted_samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    assert!(
        accepted_samples >= 4,
        "the include on disk is refused by BIRD ({accepted_samples}/5 samples accepted):\n{}\n{}",
        std::fs::read_to_string(&lb.bird_cfg.include_file).unwrap(),
        lab.logs()
    );

    // Fix agent.toml: the next generation publishes normally again.
    lb.write_agent_toml();
    lb.agent.as_ref().unwrap().signal(Signal::SIGHUP);
    lb.wait_vip_status("announced after the fix", Duration::from_secs(10), |v| {
        v["announced"] == true
    });
    let (_, out, _) = lb.cli(&["status", "--json"]);
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["bird"]["ok"], true, "{s:#}");
    assert_eq!(
        std::fs::read_to_string(&lb.bird_cfg.include_file).unwrap(),
        good
    );
    lab.hold_nexthops(VIP, 1, Duration::from_millis(200), "after the fix")
        .await;
    let seen = poller.finish();
    assert!(
        seen.iter().all(|(_, n)| *n == 1),
        "the ToR lost the route across the SIGHUPs: {seen:?}"
    );
    eprintln!(
        "two SIGHUPs (refused layout, then fixed): {} ToR polls over {:.0} ms, the route never dropped",
        seen.len(),
        ms(seen.last().map(|x| x.0).unwrap_or_default())
    );

    // Every version of the include that was on disk: those BIRD refuses
    // (they define LB_RESERVED) were replaced within a moment.
    let reports = lab.assert_includes_always_parsed();
    let versions = &reports[0].versions;
    let mut rejected = 0;
    let mut longest = Duration::ZERO;
    for (i, (at, text)) in versions.iter().enumerate() {
        if text.contains("LB_RESERVED") {
            rejected += 1;
            let next = versions
                .get(i + 1)
                .unwrap_or_else(|| panic!("a refused include was left on disk:\n{text}"));
            longest = longest.max(next.0 - *at);
        }
    }
    assert!(
        longest < Duration::from_millis(500),
        "a refused include stayed {longest:?}"
    );
    eprintln!(
        "include versions on disk: {}; refused ones seen by the 2 ms watcher: {rejected}, each replaced within {:.0} ms; \
         test took {:.1} s",
        versions.len(),
        ms(longest),
        test_t0.elapsed().as_secs_f64()
    );
}
