//! The anycast half of the agent: VIP addresses, health, gate, BIRD.
//!
//! One task owns the decision of what this host announces. It *observes*
//! the applied desired state (which VIPs and services exist), which of its
//! frontends the running HAProxy serves (the reconciler's install view and
//! the HAProxy watcher), the health monitor's results, the drain flag, the
//! VIP addresses on the interface and the clock; asks the pure [`policy`]
//! and [`gate`] what to announce; and *executes*: the check set goes to the
//! monitor, the announcements to BIRD through an [`Announcer`], addresses
//! through the [`VipManager`]. Both executors are traits, so the loop runs
//! under paused time in unit tests with scripted faults.
//!
//! Ordering (docs/reliability.md): a VIP's address is added before it can
//! be announced (the gate requires it present); an address the agent added
//! is removed only after BIRD confirmed the prefix is no longer exported,
//! and only when the VIP left the desired state.
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
//! withdrawal confirmed (bounded) before the task returns; with `"keep"`,
//! a configuration reload, or after an operator hand-over, the
//! announcements are left to the next agent.

pub mod policy;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::bird::publisher::{read_announced, BirdStatus, Publisher, PublisherOptions};
use crate::bird::DesiredAnnouncements;
use crate::config::{BirdConfig, HealthConfig, LocalCheck, OnStop, VipConfig};
use crate::drain::{DrainStore, Drained};
use crate::gate::{self, GateInput, VipDecision, VipView};
use crate::haproxy::watch::HaproxyView;
use crate::health::monitor::HealthSnapshot;
use crate::health::spec::{desired_checks, ServiceCheck};
use crate::model::DesiredState;
use crate::reconcile::FrontendInstall;
use crate::timeutil::sleep_until_opt;
use crate::vip::{AddressOps, VipManager};

use policy::{AnycastState, Limits, Observation, Services, StopMode};

/// How often VIP presence is re-read and missing addresses re-added.
const TICK: Duration = Duration::from_secs(1);
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
    pub publisher: PublisherOptions,
    /// Bounds of the admission rule (see [`policy`]).
    pub limits: Limits,
    /// VIPs announced when the agent started (read from the include by
    /// [`adopted_prefixes`]; the monitor starts their services healthy).
    pub adopted: BTreeSet<IpNet>,
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
    /// What the gate saw per VIP: each service healthy, pending or unhealthy.
    pub views: Vec<VipView>,
    /// VIP prefixes present on the interface.
    pub present: BTreeSet<IpNet>,
    /// HAProxy answers on its runtime socket (`None`: not probed yet).
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

/// The anycast task's inputs.
pub struct AnycastInputs {
    /// The document in force (from the reconciler).
    pub applied: watch::Receiver<Option<Arc<DesiredState>>>,
    /// Which of its frontends the running config has (from the reconciler).
    pub install: watch::Receiver<FrontendInstall>,
    /// What HAProxy itself says (from the watcher).
    pub haproxy: watch::Receiver<HaproxyView>,
    /// The monitor's results.
    pub health: watch::Receiver<HealthSnapshot>,
    /// Drain and undrain.
    pub requests: mpsc::Receiver<AnycastRequest>,
}

/// The anycast task's outputs besides BIRD and the addresses.
pub struct AnycastOutputs {
    /// The monitor's check set.
    pub checks: watch::Sender<Vec<ServiceCheck>>,
    /// Status for the socket.
    pub status: watch::Sender<AnycastStatus>,
}

/// Carries announcements to BIRD. The real one is [`BirdAnnouncer`]; unit
/// tests use an in-memory one that confirms (or fails) as scripted.
pub trait Announcer: Send {
    /// Asks for `want` to be announced; the first call starts the publisher
    /// (never earlier, so adopted prefixes are not withdrawn by a placeholder).
    fn announce(&mut self, want: DesiredAnnouncements) -> anyhow::Result<()>;
    /// Whether [`announce`](Self::announce) was called once.
    fn started(&self) -> bool;
    /// What BIRD was confirmed to run.
    fn status(&self) -> watch::Receiver<BirdStatus>;
    /// True when nothing is announced without BIRD's help: BIRD is not
    /// running and the include announces nothing.
    fn withdrawn_without_bird(&self) -> impl Future<Output = bool> + Send;
    /// Stops the publisher.
    fn stop(self) -> impl Future<Output = ()> + Send;
}

/// The real announcer: BIRD's include file and control socket.
pub struct BirdAnnouncer {
    cfg: BirdConfig,
    opts: PublisherOptions,
    status: watch::Sender<BirdStatus>,
    running: Option<(
        watch::Sender<DesiredAnnouncements>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
}

impl BirdAnnouncer {
    /// An announcer publishing its confirmations on `status`.
    pub fn new(
        cfg: &BirdConfig,
        opts: PublisherOptions,
        status: watch::Sender<BirdStatus>,
    ) -> Self {
        BirdAnnouncer {
            cfg: cfg.clone(),
            opts,
            status,
            running: None,
        }
    }
}

impl Announcer for BirdAnnouncer {
    fn announce(&mut self, want: DesiredAnnouncements) -> anyhow::Result<()> {
        match &self.running {
            Some((tx, _, _)) => {
                tx.send_if_modified(|cur| {
                    if *cur == want {
                        return false;
                    }
                    log_change(cur, &want);
                    *cur = want;
                    true
                });
            }
            None => {
                info!(advertise = ?want.advertise, drain = ?want.drain, demote = ?want.demote, "first announcement");
                let (tx, rx) = watch::channel(want);
                let token = CancellationToken::new();
                let p = Publisher::new(&self.cfg, self.opts)?;
                let handle = tokio::spawn(p.run(rx, self.status.clone(), token.clone()));
                self.running = Some((tx, token, handle));
            }
        }
        Ok(())
    }

    fn started(&self) -> bool {
        self.running.is_some()
    }

    fn status(&self) -> watch::Receiver<BirdStatus> {
        self.status.subscribe()
    }

    async fn withdrawn_without_bird(&self) -> bool {
        // Only "no socket" or "nobody listening" means no BIRD: a frozen
        // BIRD whose accept backlog is full refuses with EAGAIN, and still
        // announces what it last loaded.
        let down = match tokio::net::UnixStream::connect(&self.cfg.control_socket).await {
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
        };
        down && matches!(read_announced(&self.cfg), Ok(Some(a)) if a.announcements.is_empty())
    }

    async fn stop(self) {
        if let Some((_, token, handle)) = self.running {
            token.cancel();
            let _ = handle.await;
        }
    }
}

/// Logs the change, not the whole set: with a thousand VIPs a line per flap must stay readable.
fn log_change(cur: &DesiredAnnouncements, want: &DesiredAnnouncements) {
    let new =
        |a: &BTreeSet<IpNet>, b: &BTreeSet<IpNet>| a.difference(b).copied().collect::<Vec<_>>();
    info!(
        announce = ?new(&want.advertise, &cur.advertise),
        withdraw = ?new(&cur.advertise, &want.advertise),
        drain = ?new(&want.drain, &cur.drain),
        undrain = ?new(&cur.drain, &want.drain),
        demote = ?new(&want.demote, &cur.demote),
        undemote = ?new(&cur.demote, &want.demote),
        advertised = want.advertise.len(),
        draining = want.drain.len(),
        demoted = want.demote.len(),
        "announcements changed"
    );
}

/// What BIRD announced before the agent started: candidates for adoption.
pub fn adopted_prefixes(cfg: &BirdConfig) -> BTreeSet<IpNet> {
    match read_announced(cfg) {
        Ok(Some(a)) => a.announcements.all(),
        Ok(None) => BTreeSet::new(),
        Err(e) => {
            warn!(error = %e, "could not read the BIRD include at start; adopting nothing");
            BTreeSet::new()
        }
    }
}

/// True when an operator asked, recently, for the next stop to keep announcements.
fn handover_requested(state_dir: &std::path::Path) -> bool {
    let p = state_dir.join(HANDOVER_FILE);
    match std::fs::metadata(&p).and_then(|m| m.modified()) {
        // A flag from the future (a clock gone wrong) is not fresh: keeping
        // announcements is the fail-open direction.
        Ok(t) => crate::clock::wall()
            .duration_since(t)
            .is_ok_and(|age| age < HANDOVER_VALIDITY),
        Err(_) => false,
    }
}

/// Everything the loop observes, kept between turns.
struct Observed {
    desired: Option<Arc<DesiredState>>,
    services: Services,
    present: BTreeSet<IpNet>,
    vip_errors: Vec<String>,
    /// A state file the gate depends on is unusable: nothing may be announced.
    host_fault: Option<String>,
}

/// The anycast task: see the module docs. Returns after `cancel` fired and
/// the stop policy was carried out.
// long: the anycast task's one select! loop over shared mutable state; not split (issue 13 keeps src/anycast/** as is)
pub async fn run<A: AddressOps, B: Announcer>(
    s: AnycastSettings,
    mut vips: VipManager<A>,
    mut announcer: B,
    mut inputs: AnycastInputs,
    out: AnycastOutputs,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let graceful = s.bird.drain_variable.is_some();
    // Persistent state: drain flag (fail-safe: unreadable = drained).
    let mut drain = match DrainStore::load(&s.state_dir) {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e.error, "drain flag unreadable; staying drained until `lb-agent undrain`");
            e.store
        }
    };
    if !s.adopted.is_empty() {
        info!(prefixes = ?s.adopted, "adopting prefixes announced before the start until checks decide");
    }
    if handover_requested(&s.state_dir) {
        let _ = std::fs::remove_file(s.state_dir.join(HANDOVER_FILE));
    }
    let mut bird_status = announcer.status();
    let adoption_limit = s.health.interval * s.health.rise + s.health.timeout;
    let mut state = AnycastState::new(&s.adopted);
    let mut seen = Observed {
        desired: None,
        services: Services::default(),
        present: BTreeSet::new(),
        vip_errors: Vec::new(),
        host_fault: None,
    };
    let mut announced_since: std::collections::BTreeMap<IpNet, SystemTime> = Default::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    inputs.applied.mark_changed();
    let mut deadline: Option<Instant> = None;

    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = inputs.applied.changed() => {
                if changed.is_err() {
                    break;
                }
                let d = inputs.applied.borrow_and_update().clone();
                if let Some(d) = d {
                    seen.services = Services::new(&d, desired_checks(&d, &s.health, &s.checks));
                    seen.vip_errors = ensure_vips(&mut vips, &d).await;
                    seen.desired = Some(d);
                }
            }
            r = inputs.install.changed() => { if r.is_err() { break; } inputs.install.borrow_and_update(); }
            r = inputs.health.changed() => { if r.is_err() { break; } inputs.health.borrow_and_update(); }
            r = inputs.haproxy.changed() => { if r.is_err() { break; } inputs.haproxy.borrow_and_update(); }
            r = bird_status.changed() => { if r.is_err() { break; } bird_status.borrow_and_update(); }
            Some(req) = inputs.requests.recv() => handle_request(&mut drain, req),
            _ = tick.tick() => {
                if let Some(d) = &seen.desired {
                    seen.vip_errors = ensure_vips(&mut vips, d).await;
                }
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => {}
        }
        // Observe the interface every time: it is one netlink dump.
        match vips.present().await {
            Ok(p) => seen.present = p,
            Err(e) => {
                // Unknown is absent (fail closed).
                seen.present = BTreeSet::new();
                seen.vip_errors = vec![format!("listing addresses on {}: {e}", s.vip.interface)]
            }
        }
        seen.host_fault = vips.fail_closed().map(|r| {
            format!(
                "VIP ownership file unusable ({r}); every VIP stays withdrawn until it is fixed or moved aside"
            )
        });
        let turn = Turn {
            s: &s,
            graceful,
            started,
            adoption_limit,
        };
        deadline = turn
            .decide(&mut state, &seen, &inputs, &drain, &mut announcer, &out)
            .await?;
        let confirmed = bird_status.borrow().announced.as_ref().map(|a| a.all());
        release_addresses(&mut vips, &seen, confirmed.as_ref()).await;
        let decisions = out.status.borrow().decisions.clone();
        let wall = crate::clock::wall();
        for d in &decisions {
            if d.announcement.is_announced() {
                announced_since.entry(d.vip).or_insert(wall);
            } else {
                announced_since.remove(&d.vip);
            }
        }
        out.status.send_modify(|st| {
            st.present = seen.present.clone();
            st.adopted = s.adopted.clone();
            st.published = announcer.started();
            st.vip_errors = seen.vip_errors.clone();
            st.announced_since = announced_since.clone();
        });
    }
    stop(&s, announcer, bird_status).await
}

/// One decision of the loop.
struct Turn<'a> {
    s: &'a AnycastSettings,
    graceful: bool,
    started: Instant,
    adoption_limit: Duration,
}

impl Turn<'_> {
    /// Observe → policy and gate → check set, announcements, status.
    /// Returns the next time-based deadline.
    async fn decide<B: Announcer>(
        &self,
        state: &mut AnycastState,
        seen: &Observed,
        inputs: &AnycastInputs,
        drain: &DrainStore,
        announcer: &mut B,
        out: &AnycastOutputs,
    ) -> anyhow::Result<Option<Instant>> {
        let s = self.s;
        let now = Instant::now();
        let drain_state = drain.gate_state(crate::clock::wall(), now.into_std());
        let install = inputs.install.borrow().clone();
        let haproxy = inputs.haproxy.borrow().clone();
        let health = inputs.health.borrow().clone();
        // The monitor checks only what HAProxy runs as desired.
        let checks = policy::check_set(&seen.services, &install);
        out.checks.send_if_modified(|cur| {
            let changed = *cur != checks;
            if changed {
                *cur = checks.clone();
            }
            changed
        });
        let o = Observation {
            services: &seen.services,
            install: &install,
            haproxy: &haproxy,
            health: &health,
            present: &seen.present,
            now,
        };
        state.observe(&o);
        let views = match &seen.desired {
            Some(_) => state.views(&o, s.limits),
            None => Vec::new(),
        };
        let input = GateInput {
            vips: &views,
            haproxy_up: haproxy.up == Some(true),
            host_fault: seen.host_fault.as_deref(),
            drain: &drain_state,
            graceful: self.graceful,
            drain_grace: s.bird.drain_grace,
            on_unhealthy: s.bird.on_unhealthy,
            interface: &s.vip.interface,
            now: now.into_std(),
        };
        let decisions = gate::decide(&input);
        let waited = now >= self.started + self.adoption_limit;
        let ready = announcer.started()
            || policy::ready_to_publish(
                seen.desired.is_some(),
                haproxy.up.is_some(),
                policy::monitor_caught_up(&checks, &health),
                waited,
            );
        if ready {
            state.record(&decisions);
            announcer.announce(gate::announcements(&decisions))?;
        }
        let first = (!announcer.started() && !waited).then_some(self.started + self.adoption_limit);
        let deadline = [
            gate::next_deadline(&input).map(Instant::from_std),
            state.next_deadline(&o, s.limits),
            first,
        ]
        .into_iter()
        .flatten()
        .min();
        let drain_withdraw_at = match (&drain_state, self.graceful) {
            (gate::DrainState::Drained { since, .. }, true) => {
                let left = (*since + s.bird.drain_grace).saturating_duration_since(now.into_std());
                Some(crate::clock::wall() + left)
            }
            _ => None,
        };
        out.status.send_modify(|st| {
            st.decisions = decisions;
            st.views = views;
            st.haproxy_up = haproxy.up;
            st.drain = drain.state().cloned();
            st.drain_withdraw_at = drain_withdraw_at;
        });
        Ok(deadline)
    }
}

/// Removes addresses of VIPs that left the desired state, once BIRD confirmed they are gone.
async fn release_addresses<A: AddressOps>(
    vips: &mut VipManager<A>,
    seen: &Observed,
    confirmed: Option<&BTreeSet<IpNet>>,
) {
    let Some(d) = &seen.desired else {
        return;
    };
    let want: BTreeSet<IpNet> = d.vips.iter().map(|v| v.address).collect();
    for v in policy::releasable(&vips.releasable(&want), confirmed) {
        match vips.release(v).await {
            Ok(o) => info!(vip = %v, outcome = ?o, "VIP address released after withdrawal"),
            Err(e) => warn!(vip = %v, error = %e, "releasing a VIP address failed"),
        }
    }
}

/// Carries out the stop policy: withdraw (confirmed, bounded) unless told to keep.
///
/// A withdrawal BIRD did not confirm is an error: the agent then exits
/// non-zero, so systemd's `$SERVICE_RESULT` is not `success` and the unit's
/// `ExecStopPost=lb-agent reset --if-failed` writes the dummy-only include
/// (docs/gating.md, "Start, stop and crash").
async fn stop<B: Announcer>(
    s: &AnycastSettings,
    mut announcer: B,
    mut bird_status: watch::Receiver<BirdStatus>,
) -> anyhow::Result<()> {
    let mode = policy::stop_mode(
        s.bird.on_stop == OnStop::Keep,
        s.keep_on_stop.load(std::sync::atomic::Ordering::SeqCst),
        handover_requested(&s.state_dir),
    );
    if !announcer.started() {
        debug!("nothing was published; leaving the include as it is");
        announcer.stop().await;
        return Ok(());
    }
    if mode == StopMode::Keep {
        info!("stopping with announcements kept (on_stop = keep, reload or hand-over)");
        announcer.stop().await;
        return Ok(());
    }
    info!("withdrawing every prefix before stopping");
    if let Err(e) = announcer.announce(DesiredAnnouncements::default()) {
        error!(error = %format!("{e:#}"), "withdrawal could not be handed to BIRD");
    }
    let t0 = Instant::now();
    let confirmed = tokio::time::timeout(STOP_WITHDRAW_LIMIT, async {
        loop {
            let empty = bird_status
                .borrow_and_update()
                .announced
                .as_ref()
                .is_some_and(|a| a.is_empty());
            // No BIRD at all: nothing is announced once the include holds no prefix.
            if empty || announcer.withdrawn_without_bird().await {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), bird_status.changed()).await;
        }
    })
    .await;
    let took = t0.elapsed();
    announcer.stop().await;
    match confirmed {
        Ok(()) => {
            info!(
                took_ms = took.as_millis() as u64,
                "withdrawal confirmed by BIRD"
            );
            Ok(())
        }
        Err(_) => {
            error!(
                "BIRD did not confirm the withdrawal in time; exiting with an error so that \
                 ExecStopPost's reset runs"
            );
            anyhow::bail!(
                "BIRD did not confirm the withdrawal within {}s",
                STOP_WITHDRAW_LIMIT.as_secs()
            )
        }
    }
}

async fn ensure_vips<A: AddressOps>(vips: &mut VipManager<A>, d: &DesiredState) -> Vec<String> {
    let want: BTreeSet<IpNet> = d.vips.iter().map(|v| v.address).collect();
    match vips.ensure(&want).await {
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
                .drain(&reason, crate::clock::wall())
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
mod tests;
