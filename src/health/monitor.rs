//! The health monitor: runs every service's check on its schedule and
//! publishes the resulting health flags.
//!
//! Inputs: the set of [`ServiceCheck`]s on a `watch` channel (re-derived by
//! the daemon when the desired state or agent.toml changes) and a
//! cancellation token. Output: a [`HealthSnapshot`] on a `watch` channel.
//!
//! Why it looks like this:
//! - **One task per service**, each sleeping until its next check, so a
//!   slow or hung check delays only its own service. Each check runs in a
//!   task of its own, so a panicking check is a failed check (the service
//!   goes unhealthy) and never takes the agent down.
//! - **Spread**: a service's first check is offset by a hash of its key
//!   within the interval, and later checks keep that phase, so 2,000
//!   services at 1 s are ~2 checks per millisecond, not a burst each second.
//! - **Fast interval**: while a rise or fall streak is in progress the
//!   service is re-checked at `fast_interval` (ExaBGP's idea), so a failure
//!   is confirmed in `fall × fast_interval`, not `fall × interval`.
//! - **Updates keep state**: a service whose key stays in the set keeps its
//!   health (a changed definition restarts its schedule, not its
//!   hysteresis); removed services disappear from the snapshot.
//! - **Cheap publishing**: each result is written into the snapshot in
//!   place; receivers are woken only when a healthy flag flips or the set of
//!   services changes. `borrow()` always shows the latest results (for the
//!   status socket); `changed()` is the "something flipped" notification
//!   the gate waits on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::spec::{ServiceCheck, ServiceKey, ServiceOrigin};
use super::{CheckResult, Checker, ServiceHealth};

/// Extra time a check gets beyond its own timeout before the monitor gives
/// up on it (the probes enforce the timeout themselves; this is the net
/// under them).
const OVERRUN_GRACE: Duration = Duration::from_secs(1);

/// Granularity of the spread: services sharing a slot are checked in the
/// same timer wake-up, which costs less than one wake-up per check.
const SPREAD_SLOT: Duration = Duration::from_millis(10);

/// Floor of the delay between two checks of one service, whatever the
/// configuration says (a zero interval must not become a busy loop).
const MIN_DELAY: Duration = Duration::from_millis(10);

/// Runs the check of one service. Implemented by [`Checker`]; tests supply
/// scripted runners.
pub trait CheckRunner: Send + Sync + 'static {
    /// Starts one check. The future owns what it needs; it is spawned on
    /// its own task.
    fn run(&self, check: Arc<ServiceCheck>) -> impl Future<Output = CheckResult> + Send + 'static;
}

impl CheckRunner for Checker {
    fn run(&self, check: Arc<ServiceCheck>) -> impl Future<Output = CheckResult> + Send + 'static {
        let checker = self.clone();
        async move { checker.check(&check.probe, check.timeout).await }
    }
}

/// Startup options.
#[derive(Debug, Clone, Default)]
pub struct MonitorOptions {
    /// VIPs that were announced when the agent started. Their services
    /// start healthy ([`ServiceHealth::adopted`]) the first time they appear
    /// in the check set, so an agent restart does not withdraw a working
    /// VIP; `fall` failures still take them down.
    pub adopt: BTreeSet<IpNet>,
}

/// Published state of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The VIP this service gates (same as the key's).
    pub vip: IpNet,
    /// Service name for status output (frontend or local check name).
    pub name: String,
    /// Frontend or local check.
    pub origin: ServiceOrigin,
    /// Probe kind ("tcp", "http", "tls", "exec").
    pub kind: &'static str,
    /// Rise/fall state and last result.
    pub health: ServiceHealth,
    /// Bumped whenever the service's check definition changes; results of
    /// a check started under an older definition are discarded.
    pub definition: u64,
}

impl ServiceStatus {
    /// The published state of `check` with `health`, under `definition`.
    pub fn of(check: &ServiceCheck, health: ServiceHealth, definition: u64) -> ServiceStatus {
        ServiceStatus {
            vip: check.key.vip,
            name: check.key.name.clone(),
            origin: check.key.origin,
            kind: check.probe.kind(),
            health,
            definition,
        }
    }
}

/// All services' health, by key (ordered by VIP, then origin, then name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Every service of the current check set.
    pub services: BTreeMap<ServiceKey, ServiceStatus>,
    /// Number of healthy-flag flips since the monitor started.
    pub flips: u64,
}

impl HealthSnapshot {
    /// The services gating `vip`, in key order.
    pub fn services_of<'a>(
        &'a self,
        vip: &'a IpNet,
    ) -> impl Iterator<Item = (&'a ServiceKey, &'a ServiceStatus)> + 'a {
        let from = ServiceKey {
            vip: *vip,
            origin: ServiceOrigin::Frontend,
            name: String::new(),
        };
        self.services
            .range(from..)
            .take_while(move |(k, _)| k.vip == *vip)
    }
}

/// A running service task, as the monitor tracks it.
struct Running {
    check: Arc<ServiceCheck>,
    definition: u64,
    cancel: CancellationToken,
    abort: AbortHandle,
}

/// Runs until `cancel` fires: keeps one task per service of the latest set
/// on `checks`, and publishes into `snapshot`. On return every service task
/// and every check in flight (including exec process groups) is stopped.
pub async fn run<R: CheckRunner>(
    runner: Arc<R>,
    mut checks: watch::Receiver<Vec<ServiceCheck>>,
    snapshot: watch::Sender<HealthSnapshot>,
    options: MonitorOptions,
    cancel: CancellationToken,
) {
    let mut monitor = Monitor {
        runner,
        snapshot,
        adopt: options.adopt,
        running: HashMap::new(),
        by_task: HashMap::new(),
        tasks: JoinSet::new(),
        definitions: 0,
        cancel: cancel.clone(),
    };
    checks.mark_changed();
    let mut source_open = true;
    // Runs until cancelled; each turn handles one event.
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = checks.changed(), if source_open => match changed {
                Ok(()) => {
                    let set = checks.borrow_and_update().clone();
                    monitor.apply_set(&set);
                }
                Err(_) => {
                    // The deriving side is gone (shutdown in progress): keep
                    // checking the last set until cancelled.
                    source_open = false;
                }
            },
            Some(joined) = monitor.tasks.join_next_with_id() => monitor.task_ended(joined),
        }
    }
    monitor.tasks.shutdown().await;
    debug!("health monitor stopped");
}

/// Runs [`run`] on a dedicated OS thread ("lb-health") with its own
/// current-thread tokio runtime, returning when the thread is started.
///
/// Why a thread of its own: check timing then does not depend on what else
/// the agent's runtime is busy with (a large render or plan), and all of a
/// check's wake-ups stay on one thread. Measured with `examples/health_bench`
/// on 2 cores: a mixed tcp+http load cost about a third less CPU per check
/// on a current-thread runtime than on a 2-worker multi-thread one. The
/// channels and the token work across runtimes; the thread ends when
/// `cancel` fires and [`run`] has stopped its tasks.
pub fn spawn_thread<R: CheckRunner>(
    runner: Arc<R>,
    checks: watch::Receiver<Vec<ServiceCheck>>,
    snapshot: watch::Sender<HealthSnapshot>,
    options: MonitorOptions,
    cancel: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("lb-health".to_string())
        .spawn(move || runtime.block_on(run(runner, checks, snapshot, options, cancel)))
}

struct Monitor<R> {
    runner: Arc<R>,
    snapshot: watch::Sender<HealthSnapshot>,
    adopt: BTreeSet<IpNet>,
    running: HashMap<ServiceKey, Running>,
    by_task: HashMap<Id, ServiceKey>,
    tasks: JoinSet<()>,
    definitions: u64,
    cancel: CancellationToken,
}

impl<R: CheckRunner> Monitor<R> {
    /// Reconciles the running service tasks with `set`.
    fn apply_set(&mut self, set: &[ServiceCheck]) {
        let mut wanted: BTreeMap<&ServiceKey, &ServiceCheck> = BTreeMap::new();
        for c in set {
            if wanted.insert(&c.key, c).is_some() {
                warn!(vip = %c.key.vip, service = %c.key.name, "duplicate service in check set; keeping the last");
            }
        }

        let removed: Vec<ServiceKey> = self
            .running
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .cloned()
            .collect();
        for key in &removed {
            if let Some(r) = self.running.remove(key) {
                r.cancel.cancel();
                r.abort.abort();
            }
        }

        let mut started: Vec<(Arc<ServiceCheck>, u64, ServiceHealth)> = Vec::new();
        let mut redefined: Vec<(Arc<ServiceCheck>, u64)> = Vec::new();
        for (key, c) in &wanted {
            match self.running.get(*key) {
                Some(r) if *r.check == **c => {}
                Some(r) => {
                    r.cancel.cancel();
                    r.abort.abort();
                    self.definitions += 1;
                    redefined.push((Arc::new((*c).clone()), self.definitions));
                }
                None => {
                    self.definitions += 1;
                    let health = if self.adopt.contains(&key.vip) {
                        ServiceHealth::adopted()
                    } else {
                        ServiceHealth::new()
                    };
                    started.push((Arc::new((*c).clone()), self.definitions, health));
                }
            }
        }
        // Adoption is a startup affair: once a VIP's services have been
        // seen, later additions to it start unhealthy like any new service.
        let seen: BTreeSet<IpNet> = wanted.keys().map(|k| k.vip).collect();
        self.adopt.retain(|v| !seen.contains(v));

        if removed.is_empty() && started.is_empty() && redefined.is_empty() {
            return;
        }
        self.snapshot.send_modify(|snap| {
            for key in &removed {
                snap.services.remove(key);
            }
            for (c, definition, health) in &started {
                snap.services.insert(
                    c.key.clone(),
                    ServiceStatus::of(c, health.clone(), *definition),
                );
            }
            for (c, definition) in &redefined {
                if let Some(s) = snap.services.get_mut(&c.key) {
                    s.definition = *definition;
                    s.kind = c.probe.kind();
                }
            }
        });
        info!(
            added = started.len(),
            changed = redefined.len(),
            removed = removed.len(),
            total = wanted.len(),
            "health check set updated"
        );
        for (c, definition, _) in started {
            self.spawn_service(c, definition);
        }
        for (c, definition) in redefined {
            self.spawn_service(c, definition);
        }
    }

    fn spawn_service(&mut self, check: Arc<ServiceCheck>, definition: u64) {
        let cancel = self.cancel.child_token();
        let first = Instant::now() + phase(&check.key, check.interval);
        let task = ServiceTask {
            runner: self.runner.clone(),
            check: check.clone(),
            definition,
            snapshot: self.snapshot.clone(),
            cancel: cancel.clone(),
        };
        let abort = self.tasks.spawn(task.run(first));
        self.by_task.insert(abort.id(), check.key.clone());
        self.running.insert(
            check.key.clone(),
            Running {
                check,
                definition,
                cancel,
                abort,
            },
        );
    }

    /// A service task ended. Normal only when it was cancelled or aborted;
    /// a panic leaves the service unhealthy and restarts its task.
    fn task_ended(&mut self, joined: Result<(Id, ()), tokio::task::JoinError>) {
        let (id, panicked) = match joined {
            Ok((id, ())) => (id, false),
            Err(e) => (e.id(), e.is_panic()),
        };
        let Some(key) = self.by_task.remove(&id) else {
            return;
        };
        let Some(r) = self.running.get(&key) else {
            return; // removed from the set
        };
        if r.abort.id() != id || r.cancel.is_cancelled() {
            return; // superseded by a newer definition, or shutting down
        }
        if !panicked {
            return;
        }
        error!(vip = %key.vip, service = %key.name, "health check task panicked; service marked unhealthy, restarting its checks");
        let definition = r.definition;
        let check = r.check.clone();
        let mut flipped = false;
        self.snapshot.send_if_modified(|snap| {
            if let Some(s) = snap.services.get_mut(&key) {
                flipped = s
                    .health
                    .force_unhealthy("internal error: check task panicked");
                if flipped {
                    snap.flips += 1;
                }
            }
            flipped
        });
        self.spawn_service(check, definition);
    }
}

/// Offset of a service's checks within its interval: stable per key, spread
/// evenly over many keys; whole milliseconds (the timer's resolution).
fn phase(key: &ServiceKey, interval: Duration) -> Duration {
    let slot = u64::try_from(SPREAD_SLOT.as_millis()).unwrap_or(1).max(1);
    let slots = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX) / slot;
    if slots == 0 {
        return Duration::ZERO;
    }
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    Duration::from_millis(h.finish() % slots * slot)
}

/// The loop of one service.
struct ServiceTask<R> {
    runner: Arc<R>,
    check: Arc<ServiceCheck>,
    definition: u64,
    snapshot: watch::Sender<HealthSnapshot>,
    cancel: CancellationToken,
}

/// Aborts the check task if the service task is dropped mid-check.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<R: CheckRunner> ServiceTask<R> {
    async fn run(self, first: Instant) {
        let mut next = first;
        // Runs until cancelled (or aborted); each turn is one check.
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = sleep_until(next) => {}
            }
            let started = Instant::now();
            let result = tokio::select! {
                () = self.cancel.cancelled() => return,
                r = self.check_once() => r,
            };
            let delay = self.record(&result);
            // Keep the phase: the next check is `delay` after this one
            // started, or right away if the check itself took longer.
            next = (started + delay).max(Instant::now());
        }
    }

    /// Runs one check on its own task; a panic or an overrun is a failure.
    async fn check_once(&self) -> CheckResult {
        let started = Instant::now();
        let handle = tokio::spawn(self.runner.run(self.check.clone()));
        let _abort = AbortOnDrop(handle.abort_handle());
        match timeout(self.check.timeout + OVERRUN_GRACE, handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) if e.is_panic() => {
                CheckResult::fail(started.elapsed(), "internal error: check panicked")
            }
            Ok(Err(_)) => CheckResult::fail(started.elapsed(), "check cancelled"),
            Err(_) => CheckResult::fail(
                started.elapsed(),
                "internal error: check overran its timeout",
            ),
        }
    }

    /// Applies a result to the snapshot; returns the delay until the next check.
    fn record(&self, result: &CheckResult) -> Duration {
        let c = &self.check;
        let mut outcome: Option<(bool, bool)> = None;
        self.snapshot.send_if_modified(|snap| {
            let Some(s) = snap.services.get_mut(&c.key) else {
                return false;
            };
            if s.definition != self.definition {
                return false;
            }
            let flipped = s.health.observe(result, c.rise, c.fall);
            if flipped {
                snap.flips += 1;
            }
            outcome = Some((flipped, s.health.is_changing()));
            flipped
        });
        let Some((flipped, changing)) = outcome else {
            return c.interval;
        };
        let error = result.error.as_deref().unwrap_or("");
        if flipped && result.ok {
            info!(vip = %c.key.vip, service = %c.key.name, kind = c.probe.kind(), "service healthy");
        } else if flipped {
            warn!(vip = %c.key.vip, service = %c.key.name, kind = c.probe.kind(), error, "service unhealthy");
        } else if !result.ok {
            debug!(vip = %c.key.vip, service = %c.key.name, kind = c.probe.kind(), error, "check failed");
        }
        let delay = if changing {
            c.fast_interval
        } else {
            c.interval
        };
        delay.max(MIN_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::health::spec::Probe;

    /// A runner whose results follow a per-service script; it records when
    /// each check started (in paused time, so exactly).
    #[derive(Default)]
    struct Scripted {
        log: Mutex<Vec<(String, Instant)>>,
        /// Per service name: '+' pass, '-' fail, 'p' panic, 'h' hang; the
        /// last char repeats.
        script: Mutex<HashMap<String, Vec<char>>>,
    }

    impl Scripted {
        fn with(scripts: &[(&str, &str)]) -> Arc<Self> {
            let s = Scripted::default();
            {
                let mut m = s.script.lock().expect("lock");
                for (name, script) in scripts {
                    m.insert((*name).to_string(), script.chars().collect());
                }
            }
            Arc::new(s)
        }

        fn starts(&self, name: &str) -> Vec<Instant> {
            self.log
                .lock()
                .expect("lock")
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, t)| *t)
                .collect()
        }
    }

    impl CheckRunner for Scripted {
        fn run(
            &self,
            check: Arc<ServiceCheck>,
        ) -> impl Future<Output = CheckResult> + Send + 'static {
            let name = check.key.name.clone();
            self.log
                .lock()
                .expect("lock")
                .push((name.clone(), Instant::now()));
            let step = {
                let mut m = self.script.lock().expect("lock");
                let s = m.entry(name).or_default();
                if s.len() > 1 {
                    s.remove(0)
                } else {
                    s.first().copied().unwrap_or('+')
                }
            };
            async move {
                match step {
                    '+' => CheckResult::pass(Duration::from_millis(1)),
                    'p' => panic!("scripted panic"),
                    'h' => std::future::pending::<CheckResult>().await,
                    _ => CheckResult::fail(Duration::from_millis(1), "scripted failure"),
                }
            }
        }
    }

    fn check(name: &str, vip: &str) -> ServiceCheck {
        ServiceCheck {
            key: ServiceKey {
                vip: vip.parse().expect("net"),
                origin: ServiceOrigin::Frontend,
                name: name.to_string(),
            },
            probe: Probe::Tcp {
                addr: "127.0.0.1:1".parse().expect("addr"),
            },
            interval: Duration::from_secs(1),
            fast_interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            rise: 3,
            fall: 2,
        }
    }

    struct Harness {
        set: watch::Sender<Vec<ServiceCheck>>,
        snap: watch::Receiver<HealthSnapshot>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        t0: Instant,
    }

    fn start(runner: Arc<Scripted>, set: Vec<ServiceCheck>, adopt: &[&str]) -> Harness {
        let (set_tx, set_rx) = watch::channel(set);
        let (snap_tx, snap_rx) = watch::channel(HealthSnapshot::default());
        let cancel = CancellationToken::new();
        let options = MonitorOptions {
            adopt: adopt.iter().map(|v| v.parse().expect("net")).collect(),
        };
        let t0 = Instant::now();
        let task = tokio::spawn(run(runner, set_rx, snap_tx, options, cancel.clone()));
        Harness {
            set: set_tx,
            snap: snap_rx,
            cancel,
            task,
            t0,
        }
    }

    impl Harness {
        fn health(&self, name: &str) -> Option<ServiceHealth> {
            self.snap
                .borrow()
                .services
                .values()
                .find(|s| s.name == name)
                .map(|s| s.health.clone())
        }

        async fn stop(self) {
            self.cancel.cancel();
            timeout(Duration::from_secs(5), self.task)
                .await
                .expect("monitor stops promptly")
                .expect("monitor did not panic");
        }
    }

    /// Lets spawned tasks run without advancing the paused clock.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn offsets(t0: Instant, starts: &[Instant]) -> Vec<Duration> {
        starts.iter().map(|t| *t - t0).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn rise_uses_fast_interval_then_settles() {
        let runner = Scripted::with(&[("web", "+")]);
        let c = check("web", "192.0.2.10/32");
        let p = phase(&c.key, c.interval);
        let mut h = start(runner.clone(), vec![c], &[]);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let starts = offsets(h.t0, &runner.starts("web"));
        // First check at the phase, then two fast re-checks while rising,
        // then the normal interval once healthy.
        let ms = Duration::from_millis;
        assert_eq!(
            starts[..5],
            [p, p + ms(100), p + ms(200), p + ms(1200), p + ms(2200)],
            "{starts:?}"
        );
        let health = h.health("web").expect("service");
        assert!(health.healthy);
        assert!(h.snap.has_changed().expect("open"), "flip notified");
        h.snap.borrow_and_update();
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn fall_is_fall_times_fast_interval_and_recovers() {
        // Healthy after 3 passes, then fails twice -> unhealthy, then passes.
        let runner = Scripted::with(&[("db", "+++--+++")]);
        let c = check("db", "192.0.2.10/32");
        let p = phase(&c.key, c.interval);
        let mut snap = {
            let h = start(runner.clone(), vec![c], &[]);
            tokio::time::sleep(Duration::from_secs(6)).await;
            let starts = offsets(h.t0, &runner.starts("db"));
            let ms = Duration::from_millis;
            // +(p) +(.1) +(.2) healthy; -(1.2) -(1.3) unhealthy; +(2.3)
            // +(2.4) +(2.5) healthy; then 3.5, 4.5 ...
            assert_eq!(
                starts[..9],
                [
                    p,
                    p + ms(100),
                    p + ms(200),
                    p + ms(1200),
                    p + ms(1300),
                    p + ms(2300),
                    p + ms(2400),
                    p + ms(2500),
                    p + ms(3500)
                ],
                "{starts:?}"
            );
            let snap = h.snap.clone();
            assert_eq!(snap.borrow().flips, 3);
            h.stop().await;
            snap
        };
        let s = snap.borrow_and_update();
        let health = &s.services.values().next().expect("service").health;
        assert!(health.healthy);
        assert_eq!(health.failures, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn adopted_vip_starts_healthy_and_needs_fall_failures() {
        let runner = Scripted::with(&[("a", "-"), ("b", "-")]);
        let a = check("a", "192.0.2.10/32");
        let pa = phase(&a.key, a.interval);
        let h = start(
            runner.clone(),
            vec![a, check("b", "192.0.2.11/32")],
            &["192.0.2.10/32"],
        );
        settle().await;
        let vip_a: IpNet = "192.0.2.10/32".parse().expect("net");
        let vip_b: IpNet = "192.0.2.11/32".parse().expect("net");
        let flag = |vip: &IpNet| {
            let snap = h.snap.borrow();
            let (_, st) = snap.services_of(vip).next().expect("one service");
            (st.health.healthy, st.health.last_error.clone())
        };
        assert_eq!(flag(&vip_a), (true, None), "adopted: healthy at once");
        assert_eq!(flag(&vip_b), (false, None), "not adopted: not risen yet");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let elapsed = h.t0.elapsed();
        assert_eq!(flag(&vip_a), (false, Some("scripted failure".into())));
        // Two fast checks to fall, then failing steadily at the interval.
        let ms = Duration::from_millis;
        let expected: Vec<Duration> = [
            pa,
            pa + ms(100),
            pa + ms(1100),
            pa + ms(2100),
            pa + ms(3100),
        ]
        .into_iter()
        .filter(|t| *t <= elapsed)
        .collect();
        assert_eq!(offsets(h.t0, &runner.starts("a")), expected);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn set_updates_keep_state_add_and_drop() {
        let runner = Scripted::with(&[("a", "+"), ("b", "+"), ("c", "-")]);
        let h = start(
            runner.clone(),
            vec![check("a", "192.0.2.10/32"), check("b", "192.0.2.10/32")],
            &[],
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(h.health("a").expect("a").healthy);
        let a_checks = h.health("a").expect("a").checks;

        // Same a (unchanged), b changed definition, c new.
        let mut b = check("b", "192.0.2.10/32");
        b.timeout = Duration::from_millis(300);
        h.set
            .send(vec![
                check("a", "192.0.2.10/32"),
                b,
                check("c", "192.0.2.10/32"),
            ])
            .expect("monitor alive");
        settle().await;
        let a = h.health("a").expect("a kept");
        assert!(a.healthy);
        assert_eq!(a.checks, a_checks, "state kept, not reset");
        assert!(h.health("b").expect("b kept").healthy, "b keeps its health");
        let c = h.health("c").expect("c added");
        assert!(!c.healthy && c.checks == 0);
        let vip: IpNet = "192.0.2.10/32".parse().expect("net");
        assert_eq!(h.snap.borrow().services_of(&vip).count(), 3);

        h.set
            .send(vec![check("c", "192.0.2.10/32")])
            .expect("alive");
        settle().await;
        assert!(h.health("a").is_none() && h.health("b").is_none());
        let a_before = runner.starts("a").len();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            runner.starts("a").len(),
            a_before,
            "removed service no longer checked"
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn panicking_and_hanging_checks_fail_the_service_only() {
        let runner = Scripted::with(&[("boom", "+++p"), ("hang", "+++h"), ("fine", "+")]);
        let mut hang = check("hang", "192.0.2.10/32");
        hang.fall = 1;
        let mut boom = check("boom", "192.0.2.10/32");
        boom.fall = 1;
        let h = start(
            runner.clone(),
            vec![boom, hang, check("fine", "192.0.2.10/32")],
            &[],
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let boom = h.health("boom").expect("boom");
        assert!(!boom.healthy);
        assert_eq!(
            boom.last_error.as_deref(),
            Some("internal error: check panicked")
        );
        let hang = h.health("hang").expect("hang");
        assert!(!hang.healthy);
        assert_eq!(
            hang.last_error.as_deref(),
            Some("internal error: check overran its timeout")
        );
        assert!(h.health("fine").expect("fine").healthy);
        // The panicking service keeps being checked.
        assert!(runner.starts("boom").len() >= 6);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn checks_are_spread_over_the_interval() {
        let runner = Scripted::with(&[]);
        let set: Vec<ServiceCheck> = (0..200)
            .map(|i| check(&format!("s{i}"), "192.0.2.10/32"))
            .collect();
        let h = start(runner.clone(), set, &[]);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut first: HashMap<String, Instant> = HashMap::new();
        for (name, t) in runner.log.lock().expect("lock").iter() {
            first.entry(name.clone()).or_insert(*t);
        }
        assert_eq!(
            first.len(),
            200,
            "every service checked in the first interval"
        );
        // 10 buckets of 100 ms, about 20 each: none nearly empty or crowded.
        let mut buckets = [0usize; 10];
        for t in first.values() {
            let i = usize::try_from((*t - h.t0).as_millis() / 100).expect("small");
            buckets[i.min(9)] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (5..=45).contains(&n)),
            "{buckets:?}"
        );
        h.stop().await;
    }

    #[test]
    fn services_of_a_vip_are_its_frontends_and_local_checks_only() {
        let mut snap = HealthSnapshot::default();
        let vip: IpNet = "192.0.2.10/32".parse().expect("net");
        let other: IpNet = "192.0.2.9/32".parse().expect("net");
        assert_eq!(snap.services_of(&vip).count(), 0);
        for (name, vip, origin) in [
            ("a", vip, ServiceOrigin::Frontend),
            ("disk", vip, ServiceOrigin::Local),
            ("z", other, ServiceOrigin::Frontend),
        ] {
            let key = ServiceKey {
                vip,
                origin,
                name: name.into(),
            };
            snap.services.insert(
                key,
                ServiceStatus {
                    vip,
                    name: name.into(),
                    origin,
                    kind: "tcp",
                    health: ServiceHealth::new(),
                    definition: 1,
                },
            );
        }
        let names: Vec<&str> = snap
            .services_of(&vip)
            .map(|(_, s)| s.name.as_str())
            .collect();
        assert_eq!(names, ["a", "disk"]);
        assert_eq!(snap.services_of(&other).count(), 1);
    }
}
