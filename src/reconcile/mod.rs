//! The reconcile loop: makes the local HAProxy match the desired state.
//!
//! Activated by a new document, a periodic verification tick, an operator's
//! `reconcile` request, a change of HAProxy's worker seen by the watcher
//! ([`crate::haproxy::watch`]), and the reload timer; the reason is only
//! logged. Each pass *observes* (HAProxy's master and worker, `show servers
//! state`, the data files), asks the pure [`policy`] and planner what to do,
//! and *executes* through [`ops::HaproxyOps`]: runtime commands, read back,
//! one repair, then either a persist of the rendered files or a wanted
//! reload. Reloads are coalesced (at most one attempt per
//! `min_reload_interval`, always of the newest document) and, after a
//! failure, retried with bounded backoff — at once on a new revision, an
//! operator's request, or a new HAProxy master/worker.
//!
//! Safety rules (docs/reliability.md): a document that removes too much, or
//! whose rendered config fails `haproxy -c`, is refused as a whole before
//! anything of it is applied; a failed reload is rolled back; revisions
//! never go backwards.
//!
//! Outputs, on `watch` channels: [`HaproxyStatus`] after every pass (status
//! socket, metrics, sd-notify), the document in force and which of its
//! frontends HAProxy runs ([`FrontendInstall`], for the anycast side).

pub mod ops;
pub mod policy;
mod scoped;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::config::HaproxyConfig;
use crate::haproxy::reload::{ReloadError, ReloadOutcome};
use crate::haproxy::render::Renderer;
use crate::haproxy::runtime::ApplyReport;
use crate::haproxy::watch::HaproxyView;
use crate::model::{DesiredState, Revision};
use crate::plan::{plan_with_data, Plan, PlanOptions, ReloadReason, Structure};
use crate::timeutil::sleep_until_opt;

use ops::{HaproxyOps, Observed, RealHaproxy};
use policy::scope::{pass_scope, PassScope, ScopeInputs};
use policy::{
    accept, after_apply, identity_changed, install_view, resolve_loaded, Acceptance, AfterApply,
    Identity, Install, Kick, LoadedRecord, Refusal, ReloadState, RELOAD_BACKOFF,
};

/// A document offered to the reconciler.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub desired: Arc<DesiredState>,
    /// What the last-known-good cache stores once applied.
    pub raw: Option<crate::source::CacheBody>,
    /// True when it came from the cache at start (it is not written back).
    pub from_cache: bool,
}

/// A refused document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub revision: Revision,
    pub error: String,
}

/// What the HAProxy side looks like, published after every pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HaproxyStatus {
    /// Revision of the document in force (applied or being converged to).
    pub revision: Option<Revision>,
    /// True when the last pass found nothing left to do.
    pub converged: bool,
    /// True once a document has been fully applied at least once (sd-notify READY).
    pub ready: bool,
    pub reloads: u64,
    /// Confirmed reloads by reason kind.
    pub reloads_by_reason: BTreeMap<String, u64>,
    pub reload_failures: u64,
    /// Failed reload attempts in a row (0 after a confirmed reload).
    pub reload_attempts: u32,
    /// When the wanted reload is attempted next (coalescing, backoff).
    pub next_reload_at: Option<SystemTime>,
    pub runtime_commands: u64,
    pub runtime_failures: u64,
    pub convergence_failures: u64,
    pub last_reload: Option<SystemTime>,
    pub last_apply: Option<SystemTime>,
    /// Duration of the last pass that changed something, in seconds.
    pub last_apply_seconds: Option<f64>,
    /// Reasons of the wanted reload.
    pub pending_reload: Vec<String>,
    pub worker_pid: Option<u32>,
    pub old_workers: usize,
    pub error: Option<String>,
    pub rejected: Option<Rejection>,
    /// Documents rejected so far.
    pub rejections: u64,
    /// Passes so far, for tests and the watchdog.
    pub passes: u64,
    /// Where each zone of each AZ-routed pool sends its requests, as of the
    /// last pass that observed HAProxy (`plan::az::routes`).
    pub az_routing: Vec<crate::plan::az::PoolRoutes>,
    /// Fields of the document in force that the agent ignored.
    pub document_warnings: Vec<String>,
    /// Passes that read and planned only the pools a server change touched.
    pub scoped_passes: u64,
    /// The config file on disk lags the runtime state (it follows within
    /// 10 s of a scoped pass, and at stop).
    pub config_file_behind: bool,
}

/// Which frontends of the document in force the running HAProxy serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontendInstall {
    /// The document this is about.
    pub revision: Option<Revision>,
    /// Per frontend: running as desired, pending, or failed to install.
    pub frontends: BTreeMap<String, Install>,
}

/// Coarse reload reason for metrics labels (bounded cardinality).
pub fn reason_kind(reason: &ReloadReason) -> &'static str {
    reason.kind()
}

/// Requests from the operator surface.
#[derive(Debug)]
pub enum Trigger {
    /// Full re-render, re-validation and convergence check; retries a failed reload at once.
    Reconcile,
}

/// Everything the reconciler needs from agent.toml.
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    pub haproxy: HaproxyConfig,
    pub state_dir: PathBuf,
    pub cache: PathBuf,
    pub max_removal_ratio: f64,
    /// Per-reply bound on the runtime socket.
    pub socket_timeout: Duration,
}

/// Why a pass runs (logged only).
#[derive(Debug, Clone, Copy)]
enum PassReason {
    Document,
    Operator,
    Verify,
    HaproxyChanged,
    AfterReload,
}

impl PassReason {
    fn as_str(self) -> &'static str {
        match self {
            PassReason::Document => "document",
            PassReason::Operator => "operator",
            PassReason::Verify => "verify",
            PassReason::HaproxyChanged => "haproxy-changed",
            PassReason::AfterReload => "after-reload",
        }
    }
}

/// The HAProxy reconciler. Create with [`Reconciler::new`] (the real HAProxy)
/// or [`Reconciler::with_ops`], drive with [`Reconciler::run`].
pub struct Reconciler<H: HaproxyOps = RealHaproxy> {
    s: ReconcilerSettings,
    ops: H,
    /// The document in force.
    applied: Option<Candidate>,
    /// Structure of the config the running HAProxy loaded; `None` = unknown.
    loaded: Option<Structure>,
    loaded_resolved: bool,
    /// The master and worker last seen; a change means someone else
    /// restarted or reloaded HAProxy.
    identity: Option<Identity>,
    /// The reload scheduler.
    reload: ReloadState,
    /// Revision for which a reload was done to repair convergence (not repeated).
    convergence_reloaded: Option<Revision>,
    /// The runtime socket answered in the last pass.
    reachable: bool,
    cached_revision: Option<Revision>,
    status: watch::Sender<HaproxyStatus>,
    /// The document in force, for the anycast side (which VIPs and services exist).
    applied_tx: Option<watch::Sender<Option<Arc<DesiredState>>>>,
    /// Which of its frontends HAProxy runs, for the anycast side.
    install_tx: Option<watch::Sender<FrontendInstall>>,
    /// The watcher's view of HAProxy: a new worker triggers a pass.
    haproxy: Option<watch::Receiver<HaproxyView>>,
    /// Watchdog ping period (half of systemd's WatchdogSec), sent from this loop
    /// so that a wedged reconcile loop gets the agent restarted.
    watchdog: Option<Duration>,
    /// The document HAProxy ran exactly at the end of the last pass (a
    /// server-only change of it may take the scoped pass, [`scoped`]).
    verified: Option<scoped::Verified>,
    /// The config file lags the runtime state (after scoped passes).
    persist_lag: Option<scoped::PersistLag>,
}

impl Reconciler<RealHaproxy> {
    /// A reconciler of the real HAProxy described by `s`.
    pub fn new(
        s: ReconcilerSettings,
        renderer: Renderer,
        status: watch::Sender<HaproxyStatus>,
    ) -> Reconciler<RealHaproxy> {
        let ops = RealHaproxy::new(&s, renderer);
        Reconciler::with_ops(s, ops, status)
    }
}

impl<H: HaproxyOps> Reconciler<H> {
    /// A reconciler carrying out its decisions through `ops`.
    pub fn with_ops(s: ReconcilerSettings, ops: H, status: watch::Sender<HaproxyStatus>) -> Self {
        Reconciler {
            s,
            ops,
            applied: None,
            loaded: None,
            loaded_resolved: false,
            identity: None,
            reload: ReloadState::default(),
            convergence_reloaded: None,
            reachable: false,
            cached_revision: None,
            status,
            applied_tx: None,
            install_tx: None,
            haproxy: None,
            watchdog: None,
            verified: None,
            persist_lag: None,
        }
    }

    /// Publishes the document in force on `tx` after every pass.
    pub fn with_applied(mut self, tx: watch::Sender<Option<Arc<DesiredState>>>) -> Self {
        self.applied_tx = Some(tx);
        self
    }

    /// Publishes which frontends HAProxy runs on `tx` after every pass.
    pub fn with_install(mut self, tx: watch::Sender<FrontendInstall>) -> Self {
        self.install_tx = Some(tx);
        self
    }

    /// Re-verifies whenever the watcher sees a new HAProxy worker.
    pub fn with_haproxy_view(mut self, rx: watch::Receiver<HaproxyView>) -> Self {
        self.haproxy = Some(rx);
        self
    }

    /// Sends `WATCHDOG=1` to systemd every `every` from the reconcile loop.
    pub fn with_watchdog(mut self, every: Option<Duration>) -> Self {
        self.watchdog = every;
        self
    }

    /// Runs until `cancel` fires.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Option<Candidate>>,
        mut triggers: mpsc::Receiver<Trigger>,
        cancel: CancellationToken,
    ) {
        let mut verify = tokio::time::interval(self.s.haproxy.verify_interval);
        verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        verify.reset(); // the first pass comes from the first document
        desired.mark_changed();
        let mut watchdog =
            tokio::time::interval(self.watchdog.unwrap_or(Duration::from_secs(3600)));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut view = self.haproxy.take();
        let mut seen_worker = view.as_ref().and_then(|v| running_worker(&v.borrow()));
        loop {
            let reload_at = self
                .reload
                .due(self.s.haproxy.min_reload_interval, Instant::now());
            let persist_at = self.persist_lag.map(|l| l.due());
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = sleep_until_opt(persist_at), if persist_at.is_some() => {
                    self.persist_lagging().await;
                    self.ops.close().await;
                }
                _ = sleep_until_opt(reload_at), if reload_at.is_some() => {
                    Box::pin(self.reload()).await;
                    crate::mem::release_free_memory();
                }
                changed = desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let c = desired.borrow_and_update().clone();
                    if let Some(c) = c {
                        self.pass(PassReason::Document, Some(c)).await;
                    }
                }
                Some(t) = triggers.recv() => match t {
                    Trigger::Reconcile => {
                        self.reload.kick(Kick::Operator);
                        self.ops.forget();
                        self.pass(PassReason::Operator, None).await;
                    }
                },
                Some(worker) = changed_worker(view.as_mut(), seen_worker) => {
                    seen_worker = Some(worker);
                    self.pass(PassReason::HaproxyChanged, None).await;
                }
                _ = verify.tick() => self.pass(PassReason::Verify, None).await,
                _ = watchdog.tick(), if self.watchdog.is_some() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
        // HAProxy may start from the file while the agent is away.
        self.persist_lagging().await;
        self.ops.close().await;
        debug!("reconciler stopped");
    }

    /// The structure of `d`: the verified one's when `d` is it (a scoped
    /// pass computes none).
    fn structure_of(&self, d: &Arc<DesiredState>) -> Arc<Structure> {
        match &self.verified {
            Some(v) if Arc::ptr_eq(&v.desired, d) => v.structure.clone(),
            _ => Arc::new(self.ops.structure(d)),
        }
    }

    fn update(&self, f: impl FnOnce(&mut HaproxyStatus)) {
        self.status.send_modify(f);
    }

    fn reject(&mut self, revision: Revision, error: String) {
        warn!(revision, %error, "document rejected; the previous state keeps running");
        self.update(|st| {
            st.rejected = Some(Rejection {
                revision,
                error: error.clone(),
            });
            st.rejections += 1;
            st.error = Some(format!("revision {revision} rejected: {error}"));
        });
    }

    /// One reconcile pass. `offered` is a new document, if any.
    async fn pass(&mut self, reason: PassReason, offered: Option<Candidate>) {
        let revision = offered
            .as_ref()
            .or(self.applied.as_ref())
            .map(|c| c.desired.revision);
        let span = info_span!(
            "reconcile",
            reason = reason.as_str(),
            revision = revision.unwrap_or(0)
        );
        Box::pin(self.pass_inner(offered, matches!(reason, PassReason::Operator)))
            .instrument(span)
            .await;
        self.ops.close().await;
        crate::mem::release_free_memory();
        self.publish_after_pass();
    }

    /// The document in force, the install view and the schedule, after a pass.
    fn publish_after_pass(&mut self) {
        let min = self.s.haproxy.min_reload_interval;
        let next = self.reload.due(min, Instant::now()).map(wall_clock);
        let attempts = self.reload.failures;
        let pending: Vec<String> = self.reload.wanted.iter().map(|r| r.to_string()).collect();
        self.update(|st| {
            st.passes += 1;
            st.next_reload_at = next;
            st.reload_attempts = attempts;
            st.pending_reload = pending;
        });
        if let Some(tx) = &self.applied_tx {
            let now = self.applied.as_ref().map(|c| c.desired.clone());
            tx.send_if_modified(|cur| {
                let same = match (&*cur, &now) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    *cur = now.clone();
                }
                !same
            });
        }
        if let Some(tx) = &self.install_tx {
            let view = match &self.applied {
                Some(c) => FrontendInstall {
                    revision: Some(c.desired.revision),
                    frontends: install_view(
                        &self.structure_of(&c.desired),
                        self.loaded.as_ref(),
                        &self.reload,
                        self.reachable,
                    ),
                },
                None => FrontendInstall::default(),
            };
            tx.send_if_modified(|cur| {
                let changed = *cur != view;
                if changed {
                    *cur = view;
                }
                changed
            });
        }
    }

    /// Takes an offered document in (or not); returns whether it is fresh
    /// and what was in force before it.
    fn offer(&mut self, offered: Option<Candidate>) -> (bool, Option<Candidate>) {
        let Some(c) = offered else {
            return (false, None);
        };
        let applied = self.applied.as_ref().map(|a| a.desired.clone());
        match accept(applied.as_deref(), &c.desired, self.s.max_removal_ratio) {
            Acceptance::Fresh => {
                self.reload.kick(Kick::NewRevision);
                (true, self.applied.replace(c))
            }
            Acceptance::Same => (false, None),
            Acceptance::Older { applied } => {
                warn!(
                    revision = c.desired.revision,
                    applied, "ignoring a lower revision"
                );
                (false, None)
            }
            Acceptance::Refused(r) => {
                self.reject(c.desired.revision, r.to_string());
                (false, None)
            }
        }
    }

    async fn pass_inner(&mut self, offered: Option<Candidate>, force_persist: bool) {
        let started = Instant::now();
        let (fresh, previous) = self.offer(offered);
        let Some(target) = self.applied.clone() else {
            debug!("no document yet");
            return;
        };
        let d = target.desired.clone();
        if fresh {
            for w in &d.warnings {
                warn!(revision = d.revision, warning = %w, "document field ignored");
            }
            let warnings = d.warnings.clone();
            self.update(|st| st.document_warnings = warnings);
        }
        let scope = pass_scope(ScopeInputs {
            verified: self.verified.as_ref().map(|v| &*v.desired),
            next: &d,
            fresh,
            reload_pending: !self.reload.wanted.is_empty() || self.reload.failure.is_some(),
        });
        if let PassScope::Pools(pools) = scope {
            if self.scoped_pass(&target, &pools, started).await {
                return;
            }
        }
        // A full pass re-verifies everything.
        self.verified = None;
        let structure = self.ops.structure(&d);
        self.observe_identity().await;
        let observed = match self.ops.observe(&d).await {
            Ok(o) => o,
            Err(e) => {
                self.unreachable(fresh, force_persist, previous, &d, e)
                    .await;
                return;
            }
        };
        self.reachable = true;
        let routes = crate::plan::az::routes(&d, &observed.servers);
        self.update(|st| st.az_routing = routes);
        if !self.loaded_resolved {
            self.resolve_loaded(&structure);
        }
        let mut p = self.plan(&d, &structure, &observed);
        if !p.reload.is_empty() {
            // A reload will install this document's config: validate it before applying anything of it.
            if let Err(e) = self.ops.validate(&d).await {
                self.on_invalid(fresh, previous, &d, e);
                return;
            }
        }
        let Some(changed) = self.converge(&d, &structure, &mut p).await else {
            return;
        };
        self.cleanup(&p.cleanup).await;
        self.ops.close().await;
        if !p.reload.is_empty() {
            for r in self.reload.want(&p.reload) {
                info!(reason = %r, "reload needed");
            }
            self.update(|st| {
                st.revision = Some(d.revision);
                st.converged = false;
            });
            return;
        }
        self.reload.settle();
        if let Err(e) = self.ops.persist(&d, true).await {
            // Only reachable through a broken template or certificate content.
            self.on_invalid(fresh, previous, &d, e);
            return;
        }
        self.persist_lag = None;
        self.update(|st| st.config_file_behind = false);
        self.verified = Some(scoped::Verified {
            desired: d.clone(),
            structure: Arc::new(structure),
        });
        self.converged(&target, started, changed || fresh);
    }

    /// Reads who runs HAProxy; a master or worker the agent did not start
    /// means the running config must be worked out again.
    async fn observe_identity(&mut self) {
        let seen = match self.ops.proc_status().await {
            Ok(p) => p.current_worker().map(|w| Identity {
                master: p.master_pid,
                worker: w,
            }),
            Err(e) => {
                debug!(error = %e, "master CLI unreachable");
                None
            }
        };
        if identity_changed(self.identity, seen) {
            warn!(before = ?self.identity, now = ?seen, "HAProxy was restarted or reloaded by someone else; re-verifying what it runs");
            self.loaded_resolved = false;
            self.reload.kick(Kick::HaproxyChanged);
        }
        if seen.is_some() {
            self.identity = seen;
        }
    }

    /// HAProxy's runtime socket does not answer: keep its files right so it
    /// starts with the desired state.
    async fn unreachable(
        &mut self,
        fresh: bool,
        force_persist: bool,
        previous: Option<Candidate>,
        d: &DesiredState,
        e: String,
    ) {
        let err = format!("HAProxy runtime socket unreachable: {e}");
        warn!(error = %err, "cannot observe HAProxy");
        self.reachable = false;
        self.loaded_resolved = false;
        if fresh || force_persist {
            if let Err(e) = self.ops.persist(d, false).await {
                self.on_invalid(fresh, previous, d, e);
                return;
            }
        }
        self.update(|st| {
            st.revision = Some(d.revision);
            st.converged = false;
            st.error = Some(err);
        });
    }

    /// Applies the plan's runtime commands, reads back and repairs once.
    /// `None`: the pass ends here (socket trouble, or given up).
    async fn converge(
        &mut self,
        d: &DesiredState,
        structure: &Structure,
        p: &mut Plan,
    ) -> Option<bool> {
        let mut changed = false;
        let mut rounds = 0;
        let mut first_failure: Option<String> = None;
        let mut unsent = false;
        loop {
            let first = first_failure
                .clone()
                .or_else(|| p.commands.first().map(|c| c.to_string()))
                .unwrap_or_default();
            let reloaded = self.convergence_reloaded == Some(d.revision);
            match after_apply(p.commands.len(), rounds, &first, reloaded, unsent) {
                AfterApply::Converged => return Some(changed),
                AfterApply::Repair => {}
                AfterApply::Reload(r) => {
                    self.update(|st| st.convergence_failures += 1);
                    warn!(reason = %r, "runtime state did not converge after repair; reloading");
                    p.commands.clear();
                    p.reload.push(r);
                    return Some(changed);
                }
                AfterApply::GiveUp { remaining, first } => {
                    self.update(|st| st.convergence_failures += 1);
                    error!(remaining, first = %first, "runtime state still differs after a reload; giving up until the next document");
                    self.update(|st| {
                        st.revision = Some(d.revision);
                        st.converged = false;
                        st.error = Some(format!(
                            "not converged: {remaining} runtime changes do not take ({first})"
                        ));
                    });
                    return None;
                }
            }
            rounds += 1;
            changed = true;
            let report = self.apply(p).await?;
            unsent = report.unsent > 0;
            first_failure = report.failed.into_iter().next();
            let o = match self.ops.observe(d).await {
                Ok(o) => o,
                Err(e) => {
                    self.socket_error(e);
                    return None;
                }
            };
            *p = self.plan(d, structure, &o);
        }
    }

    fn socket_error(&self, e: String) {
        self.update(|st| {
            st.converged = false;
            st.error = Some(format!("runtime socket: {e}"));
        });
    }

    /// Sends the plan's commands; returns the report, `None` on socket trouble.
    async fn apply(&mut self, p: &Plan) -> Option<ApplyReport> {
        let report = match self.ops.apply(&p.commands).await {
            Ok(r) => r,
            Err(e) => {
                self.socket_error(e);
                return None;
            }
        };
        for f in &report.failed {
            if f.starts_with("not sent:") {
                error!(failure = %f, "runtime command cannot be sent; a reload will apply it from the files");
            } else {
                warn!(failure = %f, "runtime command rejected");
            }
        }
        let ok = report.ok as u64;
        let failed = report.failed.len() as u64;
        self.update(|st| {
            st.runtime_commands += ok;
            st.runtime_failures += failed;
        });
        debug!(
            commands = p.commands.len(),
            ok, failed, "runtime commands applied"
        );
        Some(report)
    }

    /// A pass with nothing left to do.
    fn converged(&mut self, target: &Candidate, started: Instant, log: bool) {
        let elapsed = started.elapsed();
        self.store_cache(target);
        let revision = target.desired.revision;
        self.update(|st| {
            st.revision = Some(revision);
            st.converged = true;
            st.ready = true;
            st.error = None;
            if log {
                st.last_apply = Some(crate::clock::wall());
                st.last_apply_seconds = Some(elapsed.as_secs_f64());
            }
        });
        if log {
            info!(revision, took_ms = elapsed.as_millis() as u64, "converged");
        }
    }

    /// A document whose config does not validate: reject it, fall back to the one before.
    fn on_invalid(
        &mut self,
        fresh: bool,
        previous: Option<Candidate>,
        d: &DesiredState,
        e: ReloadError,
    ) {
        if fresh {
            self.reject(d.revision, Refusal::Invalid(e.to_string()).to_string());
            // Nothing of it was applied; what was in force before stays in force.
            self.applied = previous;
        } else {
            error!(error = %e, "the applied document no longer renders a valid config");
            self.update(|st| {
                st.converged = false;
                st.error = Some(e.to_string());
            });
        }
    }

    fn plan(&self, d: &DesiredState, structure: &Structure, o: &Observed) -> Plan {
        plan_with_data(
            d,
            structure,
            self.loaded.as_ref(),
            &o.servers,
            &self.s.haproxy.data_dir,
            &o.data,
            PlanOptions {
                max_runtime_ops: self.s.haproxy.max_runtime_ops,
            },
        )
    }

    /// Works out which structure the running HAProxy loaded.
    fn resolve_loaded(&mut self, desired: &Structure) {
        self.loaded_resolved = true;
        let hints = self.ops.loaded_hints();
        let worker = self.identity.map(|i| i.worker);
        self.loaded = resolve_loaded(
            hints.record.as_ref(),
            worker,
            hints.file_digest.as_deref(),
            desired,
        );
        info!(known = self.loaded.is_some(), worker = ?worker, "running HAProxy configuration resolved");
    }

    fn store_cache(&mut self, c: &Candidate) {
        if c.from_cache || self.cached_revision == Some(c.desired.revision) {
            return;
        }
        match &c.raw {
            Some(crate::source::CacheBody::Bytes(raw)) => match self.ops.store_cache(raw) {
                Ok(()) => self.cached_revision = Some(c.desired.revision),
                Err(error) => {
                    warn!(%error, path = %self.s.cache.display(), "writing the last-known-good cache failed")
                }
            },
            // The source writes it off this thread (etcd).
            Some(crate::source::CacheBody::Deferred(d)) => {
                d.store();
                self.cached_revision = Some(c.desired.revision);
            }
            None => {}
        }
    }

    /// Attempts the wanted reload with the newest document.
    async fn reload(&mut self) {
        let Some(target) = self.applied.clone() else {
            self.reload.settle();
            return;
        };
        let d = target.desired.clone();
        // HAProxy can only bind addresses the host has. A VIP address is added
        // by the anycast side at the same moment a new document arrives; a
        // reload that raced it would fail, so wait for the addresses instead.
        let missing = self.ops.unbindable(&d);
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|a| a.to_string()).collect();
            debug!(addresses = %list.join(", "), "reload postponed: bind addresses not on this host yet");
            self.reload.wait_for_addresses(missing, Instant::now());
            self.update(|st| {
                st.error = Some(format!(
                    "reload waits for bind address(es) {} to be on this host",
                    list.join(", ")
                ))
            });
            self.publish_after_pass();
            return;
        }
        let reasons = self.reload.attempt(Instant::now());
        let structure = self.ops.structure(&d);
        let text: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
        let span = info_span!("reload", revision = d.revision, reasons = %text.join("; "));
        let result = Box::pin(self.ops.reload(&d)).instrument(span.clone()).await;
        let _enter = span.enter();
        match result {
            Ok(outcome) => self.reload_confirmed(&d, structure, &reasons, outcome),
            Err(e) => self.reload_failed(&d, structure, e),
        }
        drop(_enter);
        // Converge the new worker (state file gaps, servers changed meanwhile).
        Box::pin(self.pass(PassReason::AfterReload, None)).await;
    }

    fn reload_confirmed(
        &mut self,
        d: &DesiredState,
        structure: Structure,
        reasons: &[ReloadReason],
        outcome: ReloadOutcome,
    ) {
        info!(
            worker = outcome.worker_pid,
            took_ms = outcome.took.as_millis() as u64,
            "reload confirmed"
        );
        let record = LoadedRecord {
            worker_pid: outcome.worker_pid,
            structure: structure.clone(),
        };
        if let Err(error) = self.ops.record_loaded(&record) {
            warn!(%error, "recording the loaded structure failed");
        }
        self.loaded = Some(structure);
        self.loaded_resolved = true;
        // Our own reload changed the worker: the next observation is the new normal.
        self.identity = None;
        self.reload.succeeded();
        if reasons
            .iter()
            .any(|r| matches!(r, ReloadReason::Convergence { .. }))
        {
            self.convergence_reloaded = Some(d.revision);
        }
        self.update(|st| {
            st.reloads += 1;
            for r in reasons {
                *st.reloads_by_reason
                    .entry(r.kind().to_string())
                    .or_default() += 1;
            }
            st.last_reload = Some(crate::clock::wall());
            st.worker_pid = Some(outcome.worker_pid);
            st.old_workers = outcome.old_workers;
            st.reload_attempts = 0;
            st.next_reload_at = None;
        });
    }

    fn reload_failed(&mut self, d: &DesiredState, structure: Structure, e: ReloadError) {
        let now = Instant::now();
        self.reload
            .failed(structure.digest(), e.to_string(), now, RELOAD_BACKOFF);
        let attempts = self.reload.failures;
        let retry_in = self
            .reload
            .retry_at
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default();
        error!(error = %e, attempts, retry_in_s = retry_in.as_secs(), "reload failed; last-known-good configuration restored");
        let next = self
            .reload
            .retry_at
            .map(|t| wall_clock(t.max(now + self.s.haproxy.min_reload_interval)));
        self.update(|st| {
            st.reload_failures += 1;
            st.reload_attempts = attempts;
            st.next_reload_at = next;
            st.converged = false;
            st.error = Some(format!(
                "reload for revision {} failed (attempt {attempts}, next in {}s or on a new revision): {e}",
                d.revision,
                retry_in.as_secs()
            ));
        });
    }
}

/// The worker of a view, while HAProxy is up.
fn running_worker(v: &HaproxyView) -> Option<u32> {
    if v.up == Some(true) {
        v.worker_pid
    } else {
        None
    }
}

/// Resolves when the watcher reports a running worker other than `seen`.
async fn changed_worker(
    view: Option<&mut watch::Receiver<HaproxyView>>,
    seen: Option<u32>,
) -> Option<u32> {
    let Some(rx) = view else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        let now = running_worker(&rx.borrow_and_update());
        if let Some(w) = now {
            if Some(w) != seen {
                return Some(w);
            }
        }
    }
}

/// A monotonic instant as wall-clock time, for status output.
fn wall_clock(t: Instant) -> SystemTime {
    let now = Instant::now();
    if t >= now {
        crate::clock::wall() + (t - now)
    } else {
        crate::clock::wall() - (now - t)
    }
}

#[cfg(test)]
mod tests;
