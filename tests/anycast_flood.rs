//! Issue 14, finding 4 end to end: a descriptor flood must never keep a
//! frozen HAProxy announced.
//!
//! The lab of `tests/anycast_lab.rs` with one LB whose agent runs with
//! `RLIMIT_NOFILE` 1024 (soft = hard, so the agent cannot raise it: the
//! limit the flood exhausted) and a metrics listener on
//! 127.0.0.1:9477 inside the LB namespace. The test opens 1,500 idle TCP
//! connections to the metrics listener and 1,500 to the status socket and
//! holds them, then:
//! 1. the VIP stays announced under the flood (checks still get sockets);
//! 2. HAProxy (master and worker) is frozen with SIGSTOP: the ToR loses the
//!    route within fall × interval + timeout + BIRD slack, the flood still
//!    held (the issue saw 24 s, the whole flood, instead of 0.8 s);
//! 3. SIGCONT brings the route back, flood still held;
//! 4. once the flood is dropped, `lb-agent vips` answers at once.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::{lab, netns};

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use lab::{ms, Lab, LabOptions, FALL, INTERVAL, TIMEOUT, VIP};
use netns::skip_without_netns_loudly;

/// Connections per listener: more than the agent's whole descriptor limit.
const FLOOD: usize = 1500;
const AGENT_NOFILE: u64 = 1024;
const METRICS: &str = "127.0.0.1:9477";
/// As in `anycast_lab.rs`: BIRD, BGP and the ToR's kernel on top of the bound.
const BIRD_SLACK: Duration = Duration::from_millis(750);

/// SIGSTOPs HAProxy's master and its workers; SIGCONT on drop (panic or not).
struct Frozen(Vec<i32>);

impl Frozen {
    fn freeze(master: u32) -> Frozen {
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        let mut pids: Vec<i32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        assert!(!pids.is_empty(), "haproxy master {master} has no worker");
        pids.push(master as i32);
        for &p in &pids {
            kill(Pid::from_raw(p), Signal::SIGSTOP).unwrap();
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &p in &self.0 {
            let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_flood_never_keeps_a_frozen_haproxy_announced() {
    if skip_without_netns_loudly("a_descriptor_flood_never_keeps_a_frozen_haproxy_announced") {
        return;
    }
    // The test itself holds 3,000 sockets.
    lb_agent::fdbudget::raise_nofile_limit().unwrap();
    let mut lab = Lab::start(LabOptions {
        lbs: 1,
        client: false,
        start_agents: false,
    })
    .await;
    {
        let lb = &mut lab.lbs[0];
        lb.agent_nofile = Some(AGENT_NOFILE);
        lb.write_agent_toml_with(|t| t.metrics_listen(METRICS.parse().unwrap()));
        lb.start_agent();
    }
    lab.wait_nexthops(VIP, 1, Duration::from_secs(30)).await;

    // The flood: idle connections, held until the end.
    let t0 = Instant::now();
    let tcp: Vec<std::net::TcpStream> = lab.lbs[0].ns.run_inside(|| {
        let addr = METRICS.parse().unwrap();
        (0..FLOOD)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            })
            .collect()
    });
    let mut uds = Vec::new();
    for _ in 0..FLOOD {
        let c = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::UnixStream::connect(&lab.lbs[0].status_socket),
        )
        .await;
        if let Ok(Ok(s)) = c {
            uds.push(s);
        }
    }
    eprintln!(
        "flood: {} TCP connections to the metrics listener and {} to the status socket held ({:.0} ms to open), agent RLIMIT_NOFILE {AGENT_NOFILE}",
        tcp.len(),
        uds.len(),
        ms(t0.elapsed())
    );
    assert!(
        tcp.len() + uds.len() > AGENT_NOFILE as usize,
        "the flood is bigger than the agent's limit"
    );

    // 1. Checks keep passing under the flood: the route never goes.
    let polls = lab
        .hold_nexthops(VIP, 1, Duration::from_secs(3), "under the flood")
        .await;
    eprintln!("under the flood: the ToR kept the route for 3 s ({polls} polls)");

    // 2. HAProxy frozen: withdrawn within the usual bound.
    let bound = INTERVAL * FALL + TIMEOUT + INTERVAL + BIRD_SLACK;
    let t0 = Instant::now();
    let frozen = Frozen::freeze(lab.lbs[0].haproxy.pid);
    lab.wait_nexthops(VIP, 0, Duration::from_secs(10)).await;
    let withdraw = t0.elapsed();
    eprintln!(
        "HAProxy frozen under the flood: ToR route gone after {:.0} ms (bound {:.0} ms)",
        ms(withdraw),
        ms(bound)
    );
    assert!(
        withdraw <= bound,
        "withdrawal took {withdraw:?} (bound {bound:?})"
    );

    // 3. Recovery, flood still held.
    let t0 = Instant::now();
    drop(frozen);
    lab.wait_nexthops(VIP, 1, Duration::from_secs(10)).await;
    eprintln!(
        "HAProxy thawed: route back after {:.0} ms",
        ms(t0.elapsed())
    );

    // 4. Flood gone: the status socket answers again.
    drop(tcp);
    drop(uds);
    let v = lab.lbs[0].wait_vip_status("after the flood", Duration::from_secs(10), |v| {
        v["announced"] == true
    });
    assert_eq!(v["announced"], true);
    let log = lab.lbs[0].agent.as_ref().unwrap().log_text();
    assert!(
        log.contains("connection cap reached"),
        "the refusals are logged:\n{log}"
    );
    assert!(
        !log.to_lowercase().contains("too many open files"),
        "the agent never ran out:\n{log}"
    );
}
