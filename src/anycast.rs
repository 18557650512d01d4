//! The anycast half of the agent: VIP addresses, health, gate, BIRD.
//!
//! One task owns the decision of what this host announces. It reacts to the
//! applied desired state (which VIPs and services exist), the health
//! monitor's flips, HAProxy liveness, the drain flag, the VIP addresses seen
//! on the interface, and a clock tick for time-based changes (drain grace,
//! startup adoption). Each time it recomputes the pure [`gate::decide`] and
//! hands the resulting sets to the BIRD publisher, which coalesces, writes
//! the include and confirms the effect.
//!
//! Ordering (SPEC §3): a VIP's address is added before it can be announced
//! (the gate requires it present); an address the agent added is removed
//! only after BIRD confirmed the prefix is no longer exported, and only when
//! the VIP left the desired state.
//!
//! Startup: prefixes found in the include are adopted when still desired
//! (their services start healthy and need `fall` failures to go down), so a
//! restart of a healthy agent never makes the ToR lose the route; prefixes
//! the desired state does not know are purged by the first publication.
//! Nothing is published before the first desired state, for at most
//! `rise × interval + timeout`; after that an agent without any desired
//! state announces nothing.
//!
//! Stop: with `on_stop = "withdraw"` every prefix is withdrawn and the
//! withdrawal confirmed (bounded) before the task returns; with `"keep"`, or
//! after an operator hand-over, the announcements are left to the next agent.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::timeutil::sleep_until_opt;
use tracing::{debug, error, info, warn};

use crate::bird::publisher::{read_announced, BirdStatus, Publisher, PublisherOptions};
use crate::bird::DesiredAnnouncements;
use crate::config::{BirdConfig, HealthConfig, LocalCheck, OnStop, VipConfig};
use crate::drain::{DrainStore, Drained};
use crate::gate::{self, GateInput, ServiceView, VipDecision, VipView};
use crate::health::monitor::{self, CheckRunner, HealthSnapshot, MonitorOptions};
use crate::health::spec::{desired_checks, ServiceCheck};
use crate::health::{CheckResult, Checker};
use crate::metrics::{CheckOutcome, Metrics};
use crate::model::DesiredState;
use crate::vip::{NetlinkAddressOps, VipManager};

/// How often VIP presence is re-read and HAProxy liveness probed.
const TICK: Duration = Duration::from_secs(1);
/// Liveness probe period of the HAProxy runtime socket.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(200);
/// Upper bound on waiting for BIRD to confirm the withdrawal at stop.
const STOP_WITHDRAW_LIMIT: Duration = Duration::from_secs(5);
/// Name of the hand-over flag in `state_dir` (written by `lb-agent handover`).
pub const HANDOVER_FILE: &str = "handover";
/// How long a hand-over flag stays valid.
pub const HANDOVER_VALIDITY: Duration = Duration::from_secs(120);

/// What the anycast task needs from agent.toml.
#[derive(Debug, Clone)]
pub struct AnycastSettings {
    pub health: HealthConfig,
    pub bird: BirdConfig,
    pub vip: VipConfig,
    pub checks: Vec<LocalCheck>,
    pub state_dir: PathBuf,
    pub runtime_socket: PathBuf,
    pub publisher: PublisherOptions,
    /// Set by the daemon before a configuration reload: keep announcements
    /// for the next generation instead of applying `on_stop`.
    pub keep_on_stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Operator requests the anycast task answers.
#[derive(Debug)]
pub enum AnycastRequest {
    Drain {
        reason: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Undrain {
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// What the anycast side looks like, for the status socket.
#[derive(Debug, Clone, Default)]
pub struct AnycastStatus {
    /// The gate's decision per desired VIP, with the reason when not advertised.
    pub decisions: Vec<VipDecision>,
    /// VIP prefixes present on the interface.
    pub present: BTreeSet<IpNet>,
    /// HAProxy's runtime socket accepts connections (`None`: not probed yet).
    pub haproxy_up: Option<bool>,
    pub drain: Option<Drained>,
    /// When a graceful drain withdraws its VIPs.
    pub drain_withdraw_at: Option<SystemTime>,
    /// VIPs adopted from the include at start.
    pub adopted: BTreeSet<IpNet>,
    /// Whether the first announcement was published.
    pub published: bool,
    /// VIP address problems (add failures, ownership file).
    pub vip_errors: Vec<String>,
    /// Since when each announced VIP has been announced.
    pub announced_since: std::collections::BTreeMap<IpNet, SystemTime>,
}

/// Runs the checks through [`Checker`] and feeds every result to the metrics.
struct MeteredChecker {
    checker: Checker,
    metrics: Arc<Metrics>,
}

impl CheckRunner for MeteredChecker {
    fn run(
        &self,
        check: Arc<ServiceCheck>,
    ) -> impl std::future::Future<Output = CheckResult> + Send + 'static {
        let checker = self.checker.clone();
        let metrics = self.metrics.clone();
        async move {
            let r = checker.check(&check.probe, check.timeout).await;
            let outcome = match (&r.ok, &r.error) {
                (true, _) => CheckOutcome::Ok,
                (false, Some(e)) if e.starts_with("timeout") => CheckOutcome::Timeout,
                _ => CheckOutcome::Fail,
            };
            metrics.observe_check(
                &check.key.vip.to_string(),
                &check.key.name,
                outcome,
                r.latency,
            );
            r
        }
    }
}

/// Probes the runtime socket: `true` while it accepts connections.
///
/// HAProxy's death is an event, not a check result: two refused connects in a
/// row (200 ms apart) withdraw everything at once. The socket stays available
/// across master-worker reloads, so a reload is not mistaken for a death.
async fn liveness(path: PathBuf, tx: watch::Sender<Option<bool>>, cancel: CancellationToken) {
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::UnixStream::connect(&path),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let up = if ok {
            failures = 0;
            true
        } else {
            failures += 1;
            failures < 2 && tx.borrow().unwrap_or(false)
        };
        tx.send_if_modified(|v| {
            if *v != Some(up) {
                if v.is_some() {
                    if up {
                        info!("HAProxy runtime socket is back");
                    } else {
                        warn!(socket = %path.display(), "HAProxy is down or not answering: its runtime socket does not accept connections");
                    }
                }
                *v = Some(up);
                true
            } else {
                false
            }
        });
    }
}

/// True when an operator asked, recently, for the next stop to keep announcements.
fn handover_requested(state_dir: &std::path::Path) -> bool {
    let p = state_dir.join(HANDOVER_FILE);
    match std::fs::metadata(&p).and_then(|m| m.modified()) {
        Ok(t) => SystemTime::now().duration_since(t).unwrap_or_default() < HANDOVER_VALIDITY,
        Err(_) => false,
    }
}

/// The anycast task: see the module docs. Returns after `cancel` fired and
/// the stop policy was carried out.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    s: AnycastSettings,
    mut applied: watch::Receiver<Option<Arc<DesiredState>>>,
    bird_status_tx: watch::Sender<BirdStatus>,
    health_tx: watch::Sender<HealthSnapshot>,
    status_tx: watch::Sender<AnycastStatus>,
    mut requests: mpsc::Receiver<AnycastRequest>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let graceful = s.bird.drain_variable.is_some();

    // Persistent state: drain flag (fail-safe: unreadable = drained), owned VIPs.
    let mut drain = match DrainStore::load(&s.state_dir) {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e.error, "drain flag unreadable; staying drained until `lb-agent undrain`");
            e.store
        }
    };
    let mut vips = VipManager::open(NetlinkAddressOps::connect()?, &s.vip, &s.state_dir)?;

    // What BIRD announced before we started: candidates for adoption.
    let adopted: BTreeSet<IpNet> = match read_announced(&s.bird) {
        Ok(Some(a)) => a.announcements.all(),
        Ok(None) => BTreeSet::new(),
        Err(e) => {
            warn!(error = %e, "could not read the BIRD include at start; adopting nothing");
            BTreeSet::new()
        }
    };
    if !adopted.is_empty() {
        info!(prefixes = ?adopted, "adopting prefixes announced before the start until checks decide");
    }
    if handover_requested(&s.state_dir) {
        let _ = std::fs::remove_file(s.state_dir.join(HANDOVER_FILE));
    }

    // Health monitor on its own thread.
    let (checks_tx, checks_rx) = watch::channel::<Vec<ServiceCheck>>(Vec::new());
    let mut health = health_tx.subscribe();
    let checker =
        Checker::new().map_err(|e| anyhow::anyhow!("building the TLS client for checks: {e}"))?;
    let monitor_cancel = cancel.child_token();
    let monitor_thread = monitor::spawn_thread(
        Arc::new(MeteredChecker { checker, metrics }),
        checks_rx,
        health_tx,
        MonitorOptions {
            adopt: adopted.clone(),
        },
        monitor_cancel.clone(),
    )?;

    // HAProxy liveness.
    let (alive_tx, mut alive) = watch::channel(None);
    let liveness_cancel = cancel.child_token();
    let liveness_task = tokio::spawn(liveness(
        s.runtime_socket.clone(),
        alive_tx,
        liveness_cancel.clone(),
    ));

    // The publisher is started with the first decision, never with an empty
    // placeholder that would withdraw adopted prefixes.
    let mut publisher: Option<(
        watch::Sender<DesiredAnnouncements>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    )> = None;
    let mut bird_status = bird_status_tx.subscribe();
    let adoption_limit = s.health.interval * s.health.rise + s.health.timeout;

    let mut desired: Option<Arc<DesiredState>> = None;
    let mut present: BTreeSet<IpNet> = BTreeSet::new();
    let mut vip_errors: Vec<String> = Vec::new();
    let mut announced_since: std::collections::BTreeMap<IpNet, SystemTime> = Default::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    applied.mark_changed();

    loop {
        let now = Instant::now();
        let drain_state = drain.gate_state(SystemTime::now(), now.into_std());
        // Earliest time-based change: drain grace, or the end of the wait for a first document.
        let deadline = {
            let d = desired.as_ref().and_then(|d| {
                let views = views(d, &present, &health.borrow());
                gate::next_deadline(&GateInput {
                    vips: &views,
                    haproxy_up: alive.borrow().unwrap_or(false),
                    drain: &drain_state,
                    graceful,
                    drain_grace: s.bird.drain_grace,
                    interface: &s.vip.interface,
                    now: now.into_std(),
                })
            });
            // Before the first publication: the end of the wait for a first
            // document, or for the monitor to take in the first check set.
            let first = (publisher.is_none() && now < started + adoption_limit)
                .then_some(started + adoption_limit);
            d.map(Instant::from_std).into_iter().chain(first).min()
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = applied.changed() => {
                if changed.is_err() {
                    break;
                }
                let d = applied.borrow_and_update().clone();
                if let Some(d) = d {
                    checks_tx.send_replace(desired_checks(&d, &s.health, &s.checks));
                    let want: BTreeSet<IpNet> = d.vips.iter().map(|v| v.address).collect();
                    vip_errors = ensure_vips(&mut vips, &want).await;
                    desired = Some(d);
                }
            }
            r = health.changed() => { if r.is_err() { break; } health.borrow_and_update(); }
            r = alive.changed() => { if r.is_err() { break; } alive.borrow_and_update(); }
            r = bird_status.changed() => { if r.is_err() { break; } bird_status.borrow_and_update(); }
            Some(req) = requests.recv() => handle_request(&mut drain, req),
            _ = tick.tick() => {
                if let Some(d) = &desired {
                    let want: BTreeSet<IpNet> = d.vips.iter().map(|v| v.address).collect();
                    vip_errors = ensure_vips(&mut vips, &want).await;
                }
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => {}
        }
        // Observe the interface every time: it is one netlink dump.
        match vips.present().await {
            Ok(p) => present = p,
            Err(e) => vip_errors = vec![format!("listing addresses on {}: {e}", s.vip.interface)],
        }

        // Decide.
        let now = Instant::now();
        let drain_state = drain.gate_state(SystemTime::now(), now.into_std());
        let haproxy_up = *alive.borrow();
        let decisions: Vec<VipDecision> = match &desired {
            Some(d) => {
                let views = views(d, &present, &health.borrow());
                gate::decide(&GateInput {
                    vips: &views,
                    haproxy_up: haproxy_up.unwrap_or(false),
                    drain: &drain_state,
                    graceful,
                    drain_grace: s.bird.drain_grace,
                    interface: &s.vip.interface,
                    now: now.into_std(),
                })
            }
            None => Vec::new(),
        };
        let ready_to_publish = match &desired {
            // Liveness must have answered once, so a slow first probe does not
            // withdraw; and the first publication waits (bounded) until the
            // monitor holds every service of the check set, adopted ones
            // included, or an adopted VIP would be withdrawn for services
            // that are merely "not checked yet".
            Some(_) => {
                haproxy_up.is_some()
                    && (publisher.is_some()
                        || monitor_caught_up(&checks_tx.borrow(), &health.borrow())
                        || now >= started + adoption_limit)
            }
            None => now >= started + adoption_limit,
        };
        if ready_to_publish {
            let want = gate::announcements(&decisions);
            match &publisher {
                Some((tx, _, _)) => {
                    tx.send_if_modified(|cur| {
                        if *cur != want {
                            // The change, not the whole set: with a thousand
                            // VIPs a line per flap must stay readable.
                            let new = |a: &BTreeSet<IpNet>, b: &BTreeSet<IpNet>| {
                                a.difference(b).copied().collect::<Vec<_>>()
                            };
                            info!(
                                announce = ?new(&want.advertise, &cur.advertise),
                                withdraw = ?new(&cur.advertise, &want.advertise),
                                drain = ?new(&want.drain, &cur.drain),
                                undrain = ?new(&cur.drain, &want.drain),
                                advertised = want.advertise.len(),
                                draining = want.drain.len(),
                                "announcements changed"
                            );
                            *cur = want.clone();
                            true
                        } else {
                            false
                        }
                    });
                }
                None => {
                    info!(advertise = ?want.advertise, drain = ?want.drain, "first announcement");
                    let (tx, rx) = watch::channel(want);
                    let token = CancellationToken::new();
                    let p = Publisher::new(&s.bird, s.publisher)?;
                    let handle = tokio::spawn(p.run(rx, bird_status_tx.clone(), token.clone()));
                    publisher = Some((tx, token, handle));
                }
            }
        }

        // Remove addresses of VIPs that left the desired state, once BIRD confirmed they are gone.
        if let Some(d) = &desired {
            let want: BTreeSet<IpNet> = d.vips.iter().map(|v| v.address).collect();
            let confirmed = bird_status.borrow().announced.as_ref().map(|a| a.all());
            if let Some(confirmed) = confirmed {
                for v in vips.releasable(&want) {
                    if !confirmed.contains(&v) {
                        match vips.release(v).await {
                            Ok(o) => {
                                info!(vip = %v, outcome = ?o, "VIP address released after withdrawal")
                            }
                            Err(e) => warn!(vip = %v, error = %e, "releasing a VIP address failed"),
                        }
                    }
                }
            }
        }

        // Publish status.
        let wall = SystemTime::now();
        for d in &decisions {
            if d.announcement.is_announced() {
                announced_since.entry(d.vip).or_insert(wall);
            } else {
                announced_since.remove(&d.vip);
            }
        }
        let drain_withdraw_at = match (&drain_state, graceful) {
            (gate::DrainState::Drained { since, .. }, true) => {
                let left = (*since + s.bird.drain_grace).saturating_duration_since(now.into_std());
                Some(wall + left)
            }
            _ => None,
        };
        status_tx.send_replace(AnycastStatus {
            decisions,
            present: present.clone(),
            haproxy_up,
            drain: drain.state().cloned(),
            drain_withdraw_at,
            adopted: adopted.clone(),
            published: publisher.is_some(),
            vip_errors: vip_errors.clone(),
            announced_since: announced_since.clone(),
        });
    }

    // Stop: withdraw (confirmed, bounded) unless told to keep.
    let keep = s.bird.on_stop == OnStop::Keep
        || s.keep_on_stop.load(std::sync::atomic::Ordering::SeqCst)
        || handover_requested(&s.state_dir);
    if let Some((tx, token, handle)) = publisher {
        if keep {
            info!("stopping with announcements kept (on_stop = keep or hand-over)");
        } else {
            info!("withdrawing every prefix before stopping");
            tx.send_replace(DesiredAnnouncements::default());
            let t0 = Instant::now();
            let confirmed = tokio::time::timeout(STOP_WITHDRAW_LIMIT, async {
                loop {
                    if bird_status
                        .borrow_and_update()
                        .announced
                        .as_ref()
                        .is_some_and(|a| a.is_empty())
                    {
                        return;
                    }
                    // No BIRD at all: nothing is announced once the include holds no prefix.
                    if withdrawn_without_bird(&s.bird).await {
                        return;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(100), bird_status.changed())
                        .await;
                }
            })
            .await;
            match confirmed {
                Ok(()) => info!(took_ms = t0.elapsed().as_millis() as u64, "withdrawal confirmed by BIRD"),
                Err(_) => error!("BIRD did not confirm the withdrawal in time; ExecStopPost's reset is the fallback"),
            }
        }
        token.cancel();
        let _ = handle.await;
    } else if !keep {
        debug!("nothing was published; leaving the include as it is");
    }
    monitor_cancel.cancel();
    liveness_cancel.cancel();
    let _ = liveness_task.await;
    let _ = tokio::task::spawn_blocking(move || monitor_thread.join()).await;
    Ok(())
}

/// True when BIRD is not running (its control socket refuses or is absent)
/// and the include on disk announces nothing: the withdrawal needs no confirmation.
async fn withdrawn_without_bird(cfg: &BirdConfig) -> bool {
    let down = tokio::net::UnixStream::connect(&cfg.control_socket)
        .await
        .is_err();
    down && matches!(read_announced(cfg), Ok(Some(a)) if a.announcements.is_empty())
}

/// True when the health snapshot holds every service of the check set the
/// monitor was last given: the monitor has taken the set in (with adopted
/// services starting healthy), so the gate's view of it is meaningful.
fn monitor_caught_up(checks: &[ServiceCheck], h: &HealthSnapshot) -> bool {
    checks.iter().all(|c| h.services.contains_key(&c.key))
}

/// The gate's view of each desired VIP: presence and every service's health
/// (frontends and local checks); a service the monitor has not judged yet is
/// unhealthy (fail closed).
fn views(d: &DesiredState, present: &BTreeSet<IpNet>, h: &HealthSnapshot) -> Vec<VipView> {
    let frontends = d.services_by_vip();
    d.vips
        .iter()
        .map(|v| {
            let mut services: Vec<ServiceView> = h
                .services_of(&v.address)
                .map(|(_, st)| {
                    if st.health.healthy {
                        ServiceView::healthy(&st.name)
                    } else {
                        ServiceView::unhealthy(
                            &st.name,
                            st.health
                                .last_error
                                .clone()
                                .unwrap_or_else(|| "not risen yet".into()),
                        )
                    }
                })
                .collect();
            // Frontends the monitor does not know yet (set just changed).
            for f in frontends.get(&v.address.trunc()).into_iter().flatten() {
                if !services.iter().any(|s| s.name == f.name.as_str()) {
                    services.push(ServiceView::unhealthy(f.name.as_str(), "not checked yet"));
                }
            }
            VipView {
                vip: v.address,
                address_present: present.contains(&v.address),
                services,
            }
        })
        .collect()
}

async fn ensure_vips(
    vips: &mut VipManager<NetlinkAddressOps>,
    want: &BTreeSet<IpNet>,
) -> Vec<String> {
    match vips.ensure(want).await {
        Ok(r) => {
            for a in &r.added {
                info!(vip = %a, interface = %vips.interface(), "VIP address added");
            }
            let mut errs: Vec<String> = r
                .failed
                .iter()
                .map(|(v, e)| format!("adding {v}: {e}"))
                .collect();
            if let Some(e) = &r.persist_error {
                errs.push(format!("recording owned VIPs: {e}"));
            }
            errs
        }
        Err(e) => vec![e.to_string()],
    }
}

fn handle_request(drain: &mut DrainStore, req: AnycastRequest) {
    match req {
        AnycastRequest::Drain { reason, reply } => {
            let r = drain
                .drain(&reason, SystemTime::now())
                .map_err(|e| e.to_string());
            match &r {
                Ok(()) => info!(%reason, "drained by operator"),
                Err(e) => warn!(error = %e, "drain applied in memory but not persisted"),
            }
            // A drain that could not be persisted still applies (fail safe).
            let _ = reply.send(if drain.is_drained() { Ok(()) } else { r });
        }
        AnycastRequest::Undrain { reply } => {
            let r = drain.undrain().map_err(|e| e.to_string());
            if r.is_ok() {
                info!("undrained by operator");
            }
            let _ = reply.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::monitor::ServiceStatus;
    use crate::health::spec::{Probe, ServiceKey, ServiceOrigin};
    use crate::health::ServiceHealth;

    fn check(name: &str) -> ServiceCheck {
        ServiceCheck {
            key: ServiceKey {
                vip: "192.0.2.10/32".parse().unwrap(),
                origin: ServiceOrigin::Frontend,
                name: name.into(),
            },
            probe: Probe::Tcp {
                addr: "192.0.2.10:80".parse().unwrap(),
            },
            interval: Duration::from_secs(1),
            fast_interval: Duration::from_millis(200),
            timeout: Duration::from_millis(500),
            rise: 3,
            fall: 2,
        }
    }

    fn snapshot(checks: &[ServiceCheck]) -> HealthSnapshot {
        let mut h = HealthSnapshot::default();
        for c in checks {
            h.services.insert(
                c.key.clone(),
                ServiceStatus::of(c, ServiceHealth::adopted(), 1),
            );
        }
        h
    }

    /// Regression (lab test `keep_restart_never_drops_the_route...`): the
    /// first publication after a restart must not happen while the monitor
    /// has not yet taken in the check set, or an adopted VIP is withdrawn
    /// for a moment because its services look "not checked yet".
    #[test]
    fn monitor_caught_up_needs_every_service_of_the_set() {
        let set = vec![check("web"), check("api")];
        assert!(!monitor_caught_up(&set, &HealthSnapshot::default()));
        assert!(!monitor_caught_up(&set, &snapshot(&set[..1])));
        assert!(monitor_caught_up(&set, &snapshot(&set)));
        // Extra services (being removed) do not matter; an empty set is trivially taken in.
        assert!(monitor_caught_up(&set[..1], &snapshot(&set)));
        assert!(monitor_caught_up(&[], &HealthSnapshot::default()));
    }
}
