//! The monitor in real time against a real HTTP server whose answer the
//! test flips: rise and fall take `rise`/`fall` checks spaced by
//! `fast_interval` (not `interval`), the steady state is checked at
//! `interval`, and receivers are woken only by flips.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

#[path = "health_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_agent::health::monitor;
use lb_agent::health::{
    Checker, HealthSnapshot, HttpRequestSpec, MonitorOptions, Probe, ServiceCheck, ServiceKey,
    ServiceOrigin,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_millis(600);
const FAST: Duration = Duration::from_millis(30);
/// Gaps below this are fast re-checks; at or above `STEADY`, normal ones.
/// The margin absorbs scheduling noise on a busy machine.
const FAST_MAX: Duration = Duration::from_millis(250);
const STEADY_MIN: Duration = Duration::from_millis(500);

fn healthy(s: &HealthSnapshot) -> Option<bool> {
    s.services.values().next().map(|s| s.health.healthy)
}

/// Waits (bounded) until `pred` holds; returns when it was seen.
async fn wait_for(
    rx: &mut watch::Receiver<HealthSnapshot>,
    pred: impl Fn(&HealthSnapshot) -> bool,
    limit: Duration,
) -> Instant {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if pred(&rx.borrow_and_update()) {
            return Instant::now();
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("monitor dropped the snapshot"),
            Err(_) => panic!("condition not reached within {limit:?}"),
        }
    }
}

fn gaps(hits: &[Instant]) -> Vec<Duration> {
    hits.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rise_and_fall_use_the_fast_interval() {
    let (server, state) = support::http_server().await;
    let check = ServiceCheck {
        key: ServiceKey {
            vip: "192.0.2.10/32".parse().expect("net"),
            origin: ServiceOrigin::Frontend,
            name: "www".into(),
        },
        probe: Probe::Http {
            addr: server.addr,
            request: HttpRequestSpec {
                path: "/".into(),
                host: None,
                expect_status: vec![],
            },
        },
        interval: INTERVAL,
        fast_interval: FAST,
        timeout: Duration::from_millis(200),
        rise: 3,
        fall: 2,
    };
    let (_set_tx, set_rx) = watch::channel(vec![check]);
    let (snap_tx, mut snap) = watch::channel(HealthSnapshot::default());
    let cancel = CancellationToken::new();
    let t0 = Instant::now();
    let task = tokio::spawn(monitor::run(
        Arc::new(Checker::new().expect("checker")),
        set_rx,
        snap_tx,
        MonitorOptions::default(),
        cancel.clone(),
    ));

    // Rise: three passes, fast-spaced, within one interval plus two fast ones.
    let up = wait_for(
        &mut snap,
        |s| healthy(s) == Some(true),
        Duration::from_secs(3),
    )
    .await;
    let rising: Vec<Instant> = state.hits().into_iter().filter(|t| *t <= up).collect();
    assert_eq!(rising.len(), 3, "rise = 3 checks");
    assert!(
        gaps(&rising).iter().all(|g| *g < FAST_MAX),
        "{:?}",
        gaps(&rising)
    );
    assert!(
        up - t0 < INTERVAL + 2 * FAST + Duration::from_millis(500),
        "{:?}",
        up - t0
    );

    // Steady: checked at the interval, and nobody is woken for unchanged flags.
    tokio::time::sleep(3 * INTERVAL + INTERVAL / 2).await;
    let steady: Vec<Instant> = state.hits().into_iter().filter(|t| *t > up).collect();
    assert!(
        (2..=4).contains(&steady.len()),
        "{} steady checks",
        steady.len()
    );
    assert!(
        gaps(&steady).iter().all(|g| *g >= STEADY_MIN),
        "{:?}",
        gaps(&steady)
    );
    assert!(
        !snap.has_changed().expect("open"),
        "no wake-up without a flip"
    );

    // Fall: two failures, fast-spaced, then unhealthy with the reason.
    state.set_status(503);
    let broke = Instant::now();
    let down = wait_for(
        &mut snap,
        |s| healthy(s) == Some(false),
        Duration::from_secs(3),
    )
    .await;
    let failing: Vec<Instant> = state
        .hits()
        .into_iter()
        .filter(|t| *t > broke && *t <= down)
        .collect();
    assert_eq!(failing.len(), 2, "fall = 2 checks");
    assert!(
        gaps(&failing).iter().all(|g| *g < FAST_MAX),
        "{:?}",
        gaps(&failing)
    );
    assert!(
        down - broke < INTERVAL + FAST + Duration::from_millis(500),
        "{:?}",
        down - broke
    );
    {
        let s = snap.borrow();
        let h = &s.services.values().next().expect("service").health;
        assert_eq!(
            h.last_error.as_deref(),
            Some("status 503, expected 2xx/3xx")
        );
        assert_eq!(h.fail_streak, 2);
    }

    // Recovery: rise again at the fast interval.
    state.set_status(200);
    let fixed = Instant::now();
    let up2 = wait_for(
        &mut snap,
        |s| healthy(s) == Some(true),
        Duration::from_secs(3),
    )
    .await;
    let recovering: Vec<Instant> = state
        .hits()
        .into_iter()
        .filter(|t| *t > fixed && *t <= up2)
        .collect();
    assert_eq!(recovering.len(), 3);
    assert!(
        gaps(&recovering).iter().all(|g| *g < FAST_MAX),
        "{:?}",
        gaps(&recovering)
    );
    assert_eq!(snap.borrow().flips, 3);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("monitor stops on cancel")
        .expect("monitor did not panic");
    drop(server);
}

#[tokio::test]
async fn dedicated_thread_runs_exec_and_tcp_checks_and_stops_on_cancel() {
    let (server, _) = support::http_server().await;
    let vip: ipnet::IpNet = "192.0.2.20/32".parse().expect("net");
    let mk = |name: &str, probe: Probe| ServiceCheck {
        key: ServiceKey {
            vip,
            origin: ServiceOrigin::Local,
            name: name.into(),
        },
        probe,
        interval: Duration::from_millis(100),
        fast_interval: Duration::from_millis(10),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 1,
    };
    let set = vec![
        mk(
            "script",
            Probe::Exec {
                argv: vec!["/bin/true".into()],
            },
        ),
        mk("port", Probe::Tcp { addr: server.addr }),
    ];
    let (set_tx, set_rx) = watch::channel(set);
    let (snap_tx, mut snap) = watch::channel(HealthSnapshot::default());
    let cancel = CancellationToken::new();
    let thread = monitor::spawn_thread(
        Arc::new(Checker::new().expect("checker")),
        set_rx,
        snap_tx,
        MonitorOptions::default(),
        cancel.clone(),
    )
    .expect("thread");
    wait_for(
        &mut snap,
        |s| {
            s.services_of(&vip).count() == 2 && s.services_of(&vip).all(|(_, st)| st.health.healthy)
        },
        Duration::from_secs(3),
    )
    .await;

    // "port" is redefined as a failing command: its kept state falls and the
    // VIP goes down with the command's exit status as the reason.
    set_tx.send_modify(|set| {
        set[1].probe = Probe::Exec {
            argv: vec!["/bin/false".into()],
        };
    });
    wait_for(
        &mut snap,
        |s| {
            s.services_of(&vip).any(|(_, st)| {
                st.name == "port"
                    && !st.health.healthy
                    && st.health.last_error.as_deref() == Some("exit status 1")
            })
        },
        Duration::from_secs(3),
    )
    .await;

    cancel.cancel();
    let joined = tokio::task::spawn_blocking(move || thread.join());
    tokio::time::timeout(Duration::from_secs(5), joined)
        .await
        .expect("thread ends after cancel")
        .expect("join task")
        .expect("thread did not panic");
}
