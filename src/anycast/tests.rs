//! The anycast loop with in-memory executors (addresses, BIRD) and scripted
//! inputs (documents, install view, HAProxy watcher, health), under paused
//! time: fault sequences and what is announced, moment by moment. The real
//! components prove the same rules in `tests/anycast_lab.rs` and `tests/faults.rs`.

use std::sync::Mutex;

use super::*;
use crate::bird::publisher::BirdStatus;
use crate::health::monitor::ServiceStatus;
use crate::health::ServiceHealth;
use crate::model::validate::{parse_document, ValidateContext};
use crate::reconcile::policy::Install;
use crate::vip::MemoryAddressOps;

const VIP: &str = "192.0.2.10/32";

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Every announcement handed to BIRD, with the paused clock's time.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(Instant, DesiredAnnouncements)>>>);

/// Confirms every announcement at once, as a healthy BIRD would, until
/// frozen: then it records announcements and confirms none.
struct MemoryAnnouncer {
    log: Log,
    status: watch::Sender<BirdStatus>,
    started: bool,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl Announcer for MemoryAnnouncer {
    fn announce(&mut self, want: DesiredAnnouncements) -> anyhow::Result<()> {
        self.started = true;
        let mut log = self.log.0.lock().unwrap();
        if log.last().map(|(_, a)| a) != Some(&want) {
            log.push((Instant::now(), want.clone()));
        }
        if self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        // Like the real publisher: the status changes only when BIRD's sets do.
        self.status.send_if_modified(|s| {
            let changed = s.announced.as_ref() != Some(&want);
            s.ok = true;
            s.announced = Some(want);
            changed
        });
        Ok(())
    }

    fn started(&self) -> bool {
        self.started
    }

    fn status(&self) -> watch::Receiver<BirdStatus> {
        self.status.subscribe()
    }

    async fn withdrawn_without_bird(&self) -> bool {
        false
    }

    async fn stop(self) {}
}

fn doc(revision: u64, frontends: &[&str]) -> Arc<DesiredState> {
    let fe: Vec<serde_json::Value> = frontends
        .iter()
        .enumerate()
        .map(|(i, n)| serde_json::json!({"name": n, "bind": [format!("192.0.2.10:{}", 80 + i)], "mode": "tcp", "default_pool": "p"}))
        .collect();
    let body = serde_json::json!({
        "schema": 1, "revision": revision, "group": "blue",
        "vips": [{"address": VIP}],
        "frontends": fe,
        "pools": [{"name": "p", "mode": "tcp", "servers": []}]
    });
    Arc::new(
        parse_document(
            &serde_json::to_vec(&body).unwrap(),
            &ValidateContext {
                group: "blue".into(),
            },
        )
        .unwrap(),
    )
}

/// The loop and the handles a test scripts it with.
struct Harness {
    applied: watch::Sender<Option<Arc<DesiredState>>>,
    install: watch::Sender<FrontendInstall>,
    haproxy: watch::Sender<HaproxyView>,
    health: watch::Sender<HealthSnapshot>,
    checks: watch::Receiver<Vec<ServiceCheck>>,
    status: watch::Receiver<AnycastStatus>,
    log: Log,
    /// Set: BIRD stops confirming.
    bird_frozen: Arc<std::sync::atomic::AtomicBool>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start(adopted: &[&str]) -> Harness {
        Harness::start_in(adopted, tempfile::tempdir().unwrap())
    }

    /// Starts with `dir` as state_dir (its files as a test left them).
    fn start_in(adopted: &[&str], dir: tempfile::TempDir) -> Harness {
        let cfg = crate::config::parse_str("[node]\ngroup = \"blue\"\n", "agent.toml").unwrap();
        let ops = MemoryAddressOps::with_interfaces(&["lo"]);
        let vips = match VipManager::open(ops, &cfg.vip, dir.path()) {
            Ok(m) => m,
            Err(e) => *e.manager,
        };
        let (bird_tx, _) = watch::channel(BirdStatus::default());
        let log = Log::default();
        let bird_frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let announcer = MemoryAnnouncer {
            log: log.clone(),
            status: bird_tx,
            started: false,
            frozen: bird_frozen.clone(),
        };
        let (applied, applied_rx) = watch::channel(None);
        let (install, install_rx) = watch::channel(FrontendInstall::default());
        let (haproxy, haproxy_rx) = watch::channel(HaproxyView::default());
        let (health, health_rx) = watch::channel(HealthSnapshot::default());
        let (_req_tx, req_rx) = mpsc::channel(1);
        let (checks_tx, checks) = watch::channel(Vec::new());
        let (status_tx, status) = watch::channel(AnycastStatus::default());
        let cancel = CancellationToken::new();
        let settings = AnycastSettings {
            health: cfg.health.clone(),
            bird: cfg.bird.clone(),
            vip: cfg.vip.clone(),
            checks: vec![],
            state_dir: dir.path().to_path_buf(),
            publisher: PublisherOptions::default(),
            limits: Limits {
                install: Duration::from_secs(30),
            },
            adopted: adopted.iter().map(|a| net(a)).collect(),
            keep_on_stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let task = tokio::spawn(run(
            settings,
            vips,
            announcer,
            AnycastInputs {
                applied: applied_rx,
                install: install_rx,
                haproxy: haproxy_rx,
                health: health_rx,
                requests: req_rx,
            },
            AnycastOutputs {
                checks: checks_tx,
                status: status_tx,
            },
            cancel.clone(),
        ));
        Harness {
            applied,
            install,
            haproxy,
            health,
            checks,
            status,
            log,
            bird_frozen,
            cancel,
            task,
            _dir: dir,
        }
    }

    /// HAProxy up, running `frontends`, the reconciler saying they are installed.
    fn haproxy_runs(&self, frontends: &[&str]) {
        self.haproxy.send_replace(HaproxyView {
            up: Some(true),
            worker_pid: Some(7),
            frontends: Some(Arc::new(frontends.iter().map(|f| f.to_string()).collect())),
            error: None,
        });
    }

    fn installed(&self, states: &[(&str, Install)]) {
        self.install.send_replace(FrontendInstall {
            revision: None,
            frontends: states
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect(),
        });
    }

    /// The monitor's verdict for every service of the current check set.
    fn checked(&self, healthy: impl Fn(&str) -> ServiceHealth) {
        let set = self.checks.borrow().clone();
        self.health.send_modify(|h| {
            h.services.clear();
            for c in &set {
                h.services
                    .insert(c.key.clone(), ServiceStatus::of(c, healthy(&c.key.name), 1));
            }
        });
    }

    fn advertised(&self) -> bool {
        self.log
            .0
            .lock()
            .unwrap()
            .last()
            .is_some_and(|(_, a)| a.advertise.contains(&net(VIP)))
    }

    /// How many times the VIP left the advertise set after first entering it.
    fn withdrawals(&self) -> usize {
        let log = self.log.0.lock().unwrap();
        log.windows(2)
            .filter(|w| {
                w[0].1.advertise.contains(&net(VIP)) && !w[1].1.advertise.contains(&net(VIP))
            })
            .count()
    }

    async fn stop(self) -> Log {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
        self.log
    }
}

fn up() -> ServiceHealth {
    ServiceHealth {
        healthy: true,
        ok_streak: 3,
        checks: 3,
        ..ServiceHealth::new()
    }
}

fn rising(n: u32) -> ServiceHealth {
    ServiceHealth {
        ok_streak: n,
        checks: n as u64,
        ..ServiceHealth::new()
    }
}

fn failing(n: u32) -> ServiceHealth {
    ServiceHealth {
        fail_streak: n,
        checks: n as u64,
        last_error: Some("connection refused".into()),
        ..ServiceHealth::new()
    }
}

async fn run_for(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Brings the VIP up with `www` healthy.
async fn announced_www() -> Harness {
    let h = Harness::start(&[]);
    h.applied.send_replace(Some(doc(1, &["www"])));
    h.installed(&[("www", Install::Running)]);
    h.haproxy_runs(&["www"]);
    run_for(100).await;
    h.checked(|_| up());
    run_for(100).await;
    assert!(h.advertised(), "{:?}", h.status.borrow().decisions);
    h
}

#[tokio::test(start_paused = true)]
async fn a_pushed_service_does_not_withdraw_a_live_vip_while_it_rises() {
    let h = announced_www().await;
    // The push: api is new; the reconciler's reload is pending for 5 s.
    h.applied.send_replace(Some(doc(2, &["www", "api"])));
    h.installed(&[
        ("www", Install::Running),
        ("api", Install::Pending("reload pending".into())),
    ]);
    run_for(5_000).await;
    assert!(h.advertised());
    assert_eq!(
        h.checks.borrow().len(),
        1,
        "api is not checked before it is installed"
    );
    // Reloaded: installed and listed; the monitor starts it unhealthy.
    h.installed(&[("www", Install::Running), ("api", Install::Running)]);
    h.haproxy_runs(&["www", "api"]);
    run_for(100).await;
    assert_eq!(h.checks.borrow().len(), 2);
    h.checked(|n| if n == "api" { rising(0) } else { up() });
    run_for(1_000).await;
    let st = h.status.borrow().clone();
    let api = st.views[0]
        .services
        .iter()
        .find(|s| s.name == "api")
        .unwrap();
    assert!(
        matches!(api.state, gate::ServiceState::Pending(_)),
        "{api:?}"
    );
    h.checked(|n| if n == "api" { rising(2) } else { up() });
    run_for(1_000).await;
    h.checked(|_| up());
    run_for(100).await;
    assert!(h.advertised());
    assert_eq!(h.withdrawals(), 0, "{:?}", h.log.0.lock().unwrap());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pushed_service_that_fails_its_checks_withdraws_after_fall() {
    let h = announced_www().await;
    h.applied.send_replace(Some(doc(2, &["www", "api"])));
    h.installed(&[("www", Install::Running), ("api", Install::Running)]);
    h.haproxy_runs(&["www", "api"]);
    run_for(100).await;
    h.checked(|n| if n == "api" { failing(1) } else { up() });
    run_for(500).await;
    assert!(h.advertised(), "one failure is not `fall`");
    h.checked(|n| if n == "api" { failing(2) } else { up() });
    run_for(100).await;
    assert!(!h.advertised());
    let reason = h.status.borrow().decisions[0].reason.clone().unwrap();
    assert_eq!(reason, "service api unhealthy: connection refused");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pushed_service_never_checked_withdraws_when_its_chance_ends() {
    let h = announced_www().await;
    h.applied.send_replace(Some(doc(2, &["www", "api"])));
    h.installed(&[("www", Install::Running), ("api", Install::Running)]);
    h.haproxy_runs(&["www", "api"]);
    // The monitor never reports api (wedged check): rise 3 × 1 s + 500 ms.
    run_for(3_400).await;
    assert!(h.advertised());
    run_for(200).await;
    assert!(
        !h.advertised(),
        "withdrawn at the window's end, with no other event"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_install_withdraws_and_the_retry_brings_it_back() {
    let h = announced_www().await;
    h.applied.send_replace(Some(doc(2, &["www", "api"])));
    h.installed(&[
        ("www", Install::Running),
        (
            "api",
            Install::Failed("reload failed: cannot bind socket".into()),
        ),
    ]);
    run_for(100).await;
    assert!(!h.advertised());
    let reason = h.status.borrow().decisions[0].reason.clone().unwrap();
    assert!(reason.contains("not installed: reload failed"), "{reason}");
    // The backoff's retry succeeds: api installed, checked, risen.
    h.installed(&[("www", Install::Running), ("api", Install::Running)]);
    h.haproxy_runs(&["www", "api"]);
    run_for(100).await;
    h.checked(|n| if n == "api" { rising(1) } else { up() });
    run_for(100).await;
    assert!(!h.advertised(), "withdrawn: it waits for all its services");
    h.checked(|_| up());
    run_for(100).await;
    assert!(h.advertised());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn haproxy_down_withdraws_at_once_and_its_return_waits_for_checks() {
    let h = announced_www().await;
    h.haproxy.send_replace(HaproxyView {
        up: Some(false),
        worker_pid: Some(7),
        frontends: None,
        error: Some("refused".into()),
    });
    run_for(10).await;
    assert!(!h.advertised());
    // Back with a new worker; the monitor still holds the old verdicts, but
    // the VIP was withdrawn, so nothing is admitted: it needs fresh checks.
    h.haproxy_runs(&["www"]);
    h.checked(|_| rising(1));
    run_for(100).await;
    assert!(!h.advertised());
    h.checked(|_| up());
    run_for(100).await;
    assert!(h.advertised());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_adopted_vip_keeps_its_route_through_a_restart_and_stop_withdraws() {
    let h = Harness::start(&[VIP]);
    h.applied.send_replace(Some(doc(1, &["www"])));
    // The reconciler and the watcher answer a little later.
    run_for(300).await;
    h.installed(&[("www", Install::Running)]);
    h.haproxy_runs(&["www"]);
    run_for(100).await;
    h.checked(|_| ServiceHealth::adopted());
    run_for(2_000).await;
    assert!(h.advertised());
    assert_eq!(h.withdrawals(), 0, "{:?}", h.log.0.lock().unwrap());
    let log = h.stop().await;
    let last = log.0.lock().unwrap().last().unwrap().1.clone();
    assert!(last.is_empty(), "on_stop = withdraw: {last:?}");
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_ownership_file_keeps_every_vip_withdrawn_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(crate::vip::OWNED_FILE_NAME), b"{not json").unwrap();
    let h = Harness::start_in(&[VIP], dir);
    h.applied.send_replace(Some(doc(1, &["www"])));
    h.installed(&[("www", Install::Running)]);
    h.haproxy_runs(&["www"]);
    run_for(100).await;
    h.checked(|_| up());
    run_for(2_000).await;
    assert!(!h.advertised(), "{:?}", h.log.0.lock().unwrap());
    let st = h.status.borrow().clone();
    let reason = st.decisions[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("VIP ownership file unusable"), "{reason}");
    assert!(h.log.0.lock().unwrap().iter().all(|(_, a)| a.is_empty()));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_withdrawal_bird_never_confirms_fails_the_stop() {
    let h = Harness::start(&[VIP]);
    h.applied.send_replace(Some(doc(1, &["www"])));
    run_for(300).await;
    h.installed(&[("www", Install::Running)]);
    h.haproxy_runs(&["www"]);
    run_for(100).await;
    h.checked(|_| ServiceHealth::adopted());
    run_for(2_000).await;
    assert!(h.advertised());
    h.bird_frozen
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let t0 = Instant::now();
    h.cancel.cancel();
    let e = h
        .task
        .await
        .unwrap()
        .expect_err("an unconfirmed withdrawal is an error");
    assert!(
        e.to_string().contains("did not confirm the withdrawal"),
        "{e:#}"
    );
    assert!(t0.elapsed() >= STOP_WITHDRAW_LIMIT, "{:?}", t0.elapsed());
    let last = h.log.0.lock().unwrap().last().unwrap().1.clone();
    assert!(
        last.is_empty(),
        "the withdrawal was still handed over: {last:?}"
    );
}
