//! The reconcile loop: makes the local HAProxy match the desired state.
//!
//! Activated by a new document, a periodic verification tick, an operator's
//! `reconcile` request, and the reload timer; the reason is only logged. Each
//! pass observes HAProxy (`show servers state`), asks the pure planner what
//! to do, applies runtime commands, reads the state back and repairs what did
//! not take (convergence is checked, not assumed), and, when the planner
//! says so, schedules a reload. Reloads are coalesced: at most one per
//! `min_reload_interval`, always of the newest document.
//!
//! Safety rules it enforces (SPEC §7): a document that removes too much, or
//! whose rendered config fails `haproxy -c`, is rejected as a whole before
//! anything of it is applied; a failed reload is rolled back and the same
//! structure is not retried in a loop; revisions never go backwards.
//!
//! The outcome of every pass is published on a `watch` channel
//! ([`HaproxyStatus`]) that the status socket, metrics and sd-notify read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::timeutil::sleep_until_opt;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::config::HaproxyConfig;
use crate::fsutil::{read_optional, write_atomic};
use crate::haproxy::master::MasterClient;
use crate::haproxy::reload::{Installer, ReloadError};
use crate::haproxy::render::{acl_path, cert_path, map_path};
use crate::haproxy::render::{embedded_structure_digest, Renderer};
use crate::haproxy::runtime::{RuntimeClient, Session};
use crate::haproxy::state_file;
use crate::model::observed::{ObservedData, ObservedServers};
use crate::model::validate::removal_guard;
use crate::model::{DesiredState, Revision};
use crate::plan::{plan_with_data, Plan, PlanOptions, Structure};

/// A document offered to the reconciler.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub desired: Arc<DesiredState>,
    /// The raw body, stored as the last-known-good cache once applied.
    pub raw: Option<bytes::Bytes>,
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
    pub runtime_commands: u64,
    pub runtime_failures: u64,
    pub convergence_failures: u64,
    pub last_reload: Option<SystemTime>,
    pub last_apply: Option<SystemTime>,
    /// Duration of the last pass that changed something, in seconds.
    pub last_apply_seconds: Option<f64>,
    /// Reasons of a reload waiting for `min_reload_interval`.
    pub pending_reload: Vec<String>,
    pub worker_pid: Option<u32>,
    pub old_workers: usize,
    pub error: Option<String>,
    pub rejected: Option<Rejection>,
    /// Documents rejected so far.
    pub rejections: u64,
    /// Passes so far, for tests and the watchdog.
    pub passes: u64,
}

/// Coarse reload reason for metrics labels (bounded cardinality).
pub fn reason_kind(reason: &str) -> &'static str {
    if reason.contains("exceed max_runtime_ops") {
        "runtime_ops_limit"
    } else if reason.contains("no free server slot") {
        "no_free_slot"
    } else if reason.starts_with("convergence") {
        "convergence"
    } else if reason.contains("unknown") || reason.contains("missing in the running") {
        "unknown_config"
    } else if reason.starts_with("operator") {
        "manual"
    } else {
        "structure"
    }
}

/// Requests from the operator surface.
#[derive(Debug)]
pub enum Trigger {
    /// Full re-render, re-validation and convergence check; allows retrying a failed reload.
    Reconcile,
}

/// What is recorded after each confirmed reload, to know what HAProxy runs after a restart.
#[derive(Debug, Serialize, Deserialize)]
struct LoadedRecord {
    worker_pid: u32,
    structure: Structure,
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

/// The HAProxy reconciler. Create with [`Reconciler::new`], drive with [`Reconciler::run`].
pub struct Reconciler {
    s: ReconcilerSettings,
    renderer: Renderer,
    runtime: RuntimeClient,
    installer: Installer,
    /// The document in force.
    applied: Option<Candidate>,
    /// Structure of the config the running HAProxy loaded; `None` = unknown.
    loaded: Option<Structure>,
    loaded_resolved: bool,
    /// Revision whose candidate config passed `haproxy -c`.
    validated: Option<(Revision, String)>,
    pending_reload: Vec<String>,
    last_reload_attempt: Option<Instant>,
    /// A reload postponed because a bind address is not on the host yet
    /// (the VIP is being added): retried at this time.
    reload_retry_at: Option<Instant>,
    /// Structure digest whose reload failed: not retried until it changes or an operator asks.
    failed_reload: Option<String>,
    /// Revision for which a reload was done to repair convergence (not repeated).
    convergence_reloaded: Option<Revision>,
    /// Digest of the rendered config + data files last written by a persist or reload.
    persisted: Option<String>,
    cached_revision: Option<Revision>,
    status: watch::Sender<HaproxyStatus>,
    /// The document in force, for the anycast side (which VIPs and services exist).
    applied_tx: Option<watch::Sender<Option<Arc<DesiredState>>>>,
    /// Watchdog ping period (half of systemd's WatchdogSec), sent from this loop
    /// so that a wedged reconcile loop gets the agent restarted.
    watchdog: Option<Duration>,
}

impl Reconciler {
    pub fn new(
        s: ReconcilerSettings,
        renderer: Renderer,
        status: watch::Sender<HaproxyStatus>,
    ) -> Reconciler {
        let h = &s.haproxy;
        let runtime = RuntimeClient::new(&h.runtime_socket, s.socket_timeout);
        let installer = Installer {
            binary: h.binary.clone(),
            config: h.config.clone(),
            data_dir: h.data_dir.clone(),
            reload_command: h.reload_command.clone(),
            reload_timeout: h.reload_timeout,
            master: MasterClient::new(&h.master_socket, s.socket_timeout),
        };
        Reconciler {
            s,
            renderer,
            runtime,
            installer,
            applied: None,
            loaded: None,
            loaded_resolved: false,
            validated: None,
            pending_reload: Vec::new(),
            last_reload_attempt: None,
            reload_retry_at: None,
            failed_reload: None,
            persisted: None,
            convergence_reloaded: None,
            cached_revision: None,
            status,
            applied_tx: None,
            watchdog: None,
        }
    }

    /// Publishes the document in force on `tx` after every pass.
    pub fn with_applied(mut self, tx: watch::Sender<Option<Arc<DesiredState>>>) -> Reconciler {
        self.applied_tx = Some(tx);
        self
    }

    /// Sends `WATCHDOG=1` to systemd every `every` from the reconcile loop.
    pub fn with_watchdog(mut self, every: Option<Duration>) -> Reconciler {
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
        loop {
            let reload_at = (!self.pending_reload.is_empty()).then(|| self.next_reload_allowed());
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
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
                        self.pass("document", Some(c), false).await;
                    }
                }
                Some(t) = triggers.recv() => match t {
                    Trigger::Reconcile => {
                        self.failed_reload = None;
                        self.persisted = None;
                        self.validated = None;
                        self.pass("operator", None, true).await;
                    }
                },
                _ = verify.tick() => {
                    self.pass("verify", None, false).await;
                }
                _ = watchdog.tick(), if self.watchdog.is_some() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
        debug!("reconciler stopped");
    }

    fn next_reload_allowed(&self) -> Instant {
        let coalesced = match self.last_reload_attempt {
            Some(t) => t + self.s.haproxy.min_reload_interval,
            None => Instant::now(),
        };
        coalesced.max(self.reload_retry_at.unwrap_or(coalesced))
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
    async fn pass(
        &mut self,
        reason: &'static str,
        offered: Option<Candidate>,
        force_persist: bool,
    ) {
        let revision = offered
            .as_ref()
            .or(self.applied.as_ref())
            .map(|c| c.desired.revision);
        let span = info_span!("reconcile", reason, revision = revision.unwrap_or(0));
        Box::pin(self.pass_inner(offered, force_persist).instrument(span)).await;
        crate::mem::release_free_memory();
        self.update(|st| st.passes += 1);
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
    }

    async fn pass_inner(&mut self, offered: Option<Candidate>, force_persist: bool) {
        let started = Instant::now();
        // 1. Decide which document to converge to.
        let mut fresh = false;
        let mut previous: Option<Candidate> = None;
        if let Some(c) = offered {
            let new_rev = c.desired.revision;
            let prev = self.applied.as_ref().map(|a| a.desired.clone());
            match &prev {
                Some(p) if new_rev < p.revision => {
                    warn!(
                        revision = new_rev,
                        applied = p.revision,
                        "ignoring a lower revision"
                    );
                }
                Some(p) if new_rev == p.revision => {}
                _ => {
                    let guard = prev.as_ref().map_or(Ok(()), |p| {
                        removal_guard(p, &c.desired, self.s.max_removal_ratio)
                    });
                    match guard {
                        Err(e) => self.reject(new_rev, e),
                        Ok(()) => {
                            previous = self.applied.replace(c);
                            fresh = true;
                        }
                    }
                }
            }
        }
        let Some(target) = self.applied.clone() else {
            debug!("no document yet");
            return;
        };
        let d = target.desired.clone();
        let structure = self.renderer.structure(&d);

        // 2. Observe.
        let mut session = match self.runtime.connect().await {
            Ok(s) => s,
            Err(e) => {
                // HAProxy is down or restarting: keep its file right so it starts with the desired state.
                let err = format!("HAProxy runtime socket unreachable: {e}");
                warn!(error = %err, "cannot observe HAProxy");
                if fresh || force_persist {
                    if let Err(e) = self.persist(&d, &structure, None).await {
                        self.on_invalid(fresh, previous.take(), &d, e);
                        return;
                    }
                }
                self.update(|st| {
                    st.revision = Some(d.revision);
                    st.converged = false;
                    st.error = Some(err);
                });
                return;
            }
        };
        let Some((observed, data)) = self.observe(&mut session, &d).await else {
            return;
        };
        if !self.loaded_resolved {
            self.resolve_loaded(&structure).await;
        }

        // 3. Plan.
        let opts = PlanOptions {
            max_runtime_ops: self.s.haproxy.max_runtime_ops,
        };
        let mut p = self.plan(&d, &structure, &observed, &data, opts);
        if !p.reload.is_empty() && self.validated.as_ref().map(|v| v.0) != Some(d.revision) {
            // A reload will install this document's config: validate it before applying anything of it.
            if let Err(e) = self.validate(&d).await {
                self.on_invalid(fresh, previous.take(), &d, e);
                return;
            }
            self.validated = Some((d.revision, structure.digest()));
        }

        // 4. Apply, read back, repair once.
        let mut changed = false;
        let mut attempts = 0;
        let mut last_failures: Vec<String> = Vec::new();
        while !p.commands.is_empty() && attempts < 2 {
            attempts += 1;
            changed = true;
            match self.apply(&mut session, &p).await {
                Ok(failed) => last_failures = failed,
                Err(e) => {
                    self.update(|st| {
                        st.converged = false;
                        st.error = Some(format!("runtime socket: {e}"));
                    });
                    return;
                }
            }
            match self.observe(&mut session, &d).await {
                Some((o, data)) => p = self.plan(&d, &structure, &o, &data, opts),
                None => return,
            }
        }
        if !p.commands.is_empty() {
            let n = p.commands.len();
            let first = last_failures
                .first()
                .cloned()
                .unwrap_or_else(|| p.commands[0].to_string());
            self.update(|st| st.convergence_failures += 1);
            if self.convergence_reloaded == Some(d.revision) {
                // A reload did not fix it either: reloading again would only loop.
                error!(remaining = n, first = %first, "runtime state still differs after a reload; giving up until the next document");
                self.update(|st| {
                    st.revision = Some(d.revision);
                    st.converged = false;
                    st.error = Some(format!(
                        "not converged: {n} runtime changes do not take ({first})"
                    ));
                });
                session.quit().await;
                return;
            }
            warn!(remaining = n, first = %first, "runtime state did not converge after repair; reloading");
            p.reload.push(format!(
                "convergence: {n} runtime changes did not take ({first})"
            ));
        }
        if !p.cleanup.is_empty() {
            if let Ok(r) = session.apply(&p.cleanup).await {
                debug!(
                    deleted = r.ok,
                    deferred = r.soft.len(),
                    "removed servers cleaned up"
                );
            }
        }
        session.quit().await;

        // 5. Reload or persist.
        if !p.reload.is_empty() {
            if self.failed_reload.as_deref() == Some(structure.digest().as_str()) {
                debug!("reload of this structure failed before; waiting for a new document or an operator");
                self.update(|st| {
                    st.revision = Some(d.revision);
                    st.converged = false;
                    st.pending_reload = Vec::new();
                });
                return;
            }
            for r in &p.reload {
                if !self.pending_reload.contains(r) {
                    info!(reason = %r, "reload needed");
                    self.pending_reload.push(r.clone());
                }
            }
            let pending = self.pending_reload.clone();
            self.update(|st| {
                st.revision = Some(d.revision);
                st.converged = false;
                st.pending_reload = pending;
            });
            return;
        }
        self.pending_reload.clear();
        if let Err(e) = self.persist(&d, &structure, Some(&observed)).await {
            // Only reachable through a broken template or certificate content.
            self.on_invalid(fresh, previous.take(), &d, e);
            return;
        }
        let elapsed = started.elapsed();
        self.store_cache(&target);
        self.update(|st| {
            st.revision = Some(d.revision);
            st.converged = true;
            st.ready = true;
            st.pending_reload = Vec::new();
            st.error = None;
            if changed {
                st.last_apply = Some(SystemTime::now());
                st.last_apply_seconds = Some(elapsed.as_secs_f64());
            }
        });
        if changed || fresh {
            info!(
                revision = d.revision,
                took_ms = elapsed.as_millis() as u64,
                "converged"
            );
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
            self.reject(d.revision, e.to_string());
            // Nothing of it was applied; what was in force before stays in force.
            self.applied = previous;
            self.validated = None;
        } else {
            error!(error = %e, "the applied document no longer renders a valid config");
            self.update(|st| {
                st.converged = false;
                st.error = Some(e.to_string());
            });
        }
    }

    async fn apply(
        &mut self,
        session: &mut Session,
        p: &Plan,
    ) -> Result<Vec<String>, crate::haproxy::runtime::RuntimeError> {
        let report = session.apply(&p.commands).await?;
        for f in &report.failed {
            warn!(failure = %f, "runtime command rejected");
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
        Ok(report.failed)
    }

    /// Reads servers and our map/ACL/certificate files from the runtime socket.
    async fn observe(
        &mut self,
        session: &mut Session,
        d: &DesiredState,
    ) -> Option<(ObservedServers, ObservedData)> {
        let dir = &self.s.haproxy.data_dir;
        let maps: Vec<String> = d
            .maps
            .keys()
            .map(|n| dir.join(map_path(n.as_str())).display().to_string())
            .collect();
        let acls: Vec<String> = d
            .acls
            .keys()
            .map(|n| dir.join(acl_path(n.as_str())).display().to_string())
            .collect();
        let certs: Vec<String> = d
            .certificates
            .keys()
            .map(|n| dir.join(cert_path(n.as_str())).display().to_string())
            .collect();
        let r = async {
            Ok::<_, crate::haproxy::runtime::RuntimeError>((
                session.servers_state().await?,
                session.data(&maps, &acls, &certs).await?,
            ))
        }
        .await;
        match r {
            Ok(o) => Some(o),
            Err(e) => {
                self.update(|st| {
                    st.converged = false;
                    st.error = Some(format!("observing HAProxy: {e}"));
                });
                None
            }
        }
    }

    fn plan(
        &self,
        d: &DesiredState,
        structure: &Structure,
        servers: &ObservedServers,
        data: &ObservedData,
        opts: PlanOptions,
    ) -> Plan {
        plan_with_data(
            d,
            structure,
            self.loaded.as_ref(),
            servers,
            &self.s.haproxy.data_dir,
            data,
            opts,
        )
    }

    /// Works out which structure the running HAProxy loaded (once, at start).
    async fn resolve_loaded(&mut self, desired: &Structure) {
        self.loaded_resolved = true;
        let worker = self
            .installer
            .proc_status(Duration::from_secs(2))
            .await
            .ok()
            .and_then(|p| p.current_worker());
        let record: Option<LoadedRecord> = read_optional(&self.record_path())
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let file_digest = read_optional(&self.s.haproxy.config)
            .ok()
            .flatten()
            .and_then(|b| embedded_structure_digest(&String::from_utf8_lossy(&b)));
        self.loaded = match record {
            Some(r) if worker.is_some() && Some(r.worker_pid) == worker => Some(r.structure),
            Some(r) if file_digest.as_deref() == Some(r.structure.digest().as_str()) => {
                Some(r.structure)
            }
            _ if file_digest.as_deref() == Some(desired.digest().as_str()) => Some(desired.clone()),
            _ => None,
        };
        info!(known = self.loaded.is_some(), worker = ?worker, "running HAProxy configuration resolved");
    }

    fn record_path(&self) -> PathBuf {
        self.s.state_dir.join("haproxy-loaded.json")
    }

    async fn validate(&self, d: &DesiredState) -> Result<(), ReloadError> {
        let r = &self.renderer;
        self.installer
            .validate(|dir| r.render(d, dir).map_err(|e| e.to_string()))
            .await
    }

    /// Writes the rendered config when it differs from what is on disk (no reload):
    /// a reload or reboot later then loads the full desired state.
    async fn persist(
        &mut self,
        d: &DesiredState,
        structure: &Structure,
        observed: Option<&ObservedServers>,
    ) -> Result<(), ReloadError> {
        let rendered = self
            .renderer
            .render(d, &self.s.haproxy.data_dir)
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let digest = rendered_digest(&rendered);
        if self.persisted.as_deref() == Some(digest.as_str()) {
            return Ok(());
        }
        let on_disk = read_optional(&self.s.haproxy.config).ok().flatten();
        let same_file = on_disk.as_deref() == Some(rendered.config.as_bytes());
        if !same_file
            || rendered.files.iter().any(|(rel, b)| {
                read_optional(&self.s.haproxy.data_dir.join(rel))
                    .ok()
                    .flatten()
                    .as_deref()
                    != Some(b.as_slice())
            })
        {
            if self.validated.as_ref() != Some(&(d.revision, structure.digest())) {
                self.validate(d).await?;
                self.validated = Some((d.revision, structure.digest()));
            }
            self.installer.install(&rendered)?;
            info!(path = %self.s.haproxy.config.display(), "configuration file updated (no reload needed)");
            if observed.is_some() {
                self.write_state_file(d).await;
            }
        }
        self.persisted = Some(digest);
        Ok(())
    }

    /// Dumps `show servers state`, filtered against the new layout, into the server-state file.
    async fn write_state_file(&self, d: &DesiredState) {
        let dump = match self.runtime.connect().await {
            Ok(mut s) => {
                let r = s.servers_state_raw().await;
                s.quit().await;
                r
            }
            Err(e) => Err(e),
        };
        match dump {
            Ok(text) => {
                let layout = state_file::layout_of(d, self.renderer.settings().slot_policy());
                let (text, dropped) = state_file::filter(&text, &layout);
                if let Err(error) = write_atomic(&self.s.haproxy.state_file, text.as_bytes(), 0o644)
                {
                    warn!(%error, path = %self.s.haproxy.state_file.display(), "writing the server-state file failed");
                } else {
                    debug!(dropped, "server-state file written");
                }
            }
            Err(error) => {
                warn!(%error, "could not dump server state; the next reload starts servers from the config")
            }
        }
    }

    fn store_cache(&mut self, c: &Candidate) {
        if c.from_cache || self.cached_revision == Some(c.desired.revision) {
            return;
        }
        if let Some(raw) = &c.raw {
            match write_atomic(&self.s.cache, raw, 0o640) {
                Ok(()) => self.cached_revision = Some(c.desired.revision),
                Err(error) => {
                    warn!(%error, path = %self.s.cache.display(), "writing the last-known-good cache failed")
                }
            }
        }
    }

    /// Performs the pending reload with the newest document.
    async fn reload(&mut self) {
        let Some(target) = self.applied.clone() else {
            self.pending_reload.clear();
            return;
        };
        let d = target.desired.clone();
        // HAProxy can only bind addresses the host has. A VIP address is added
        // by the anycast side at the same moment a new document arrives; a
        // reload that raced it would fail, so wait for the addresses instead.
        let missing = unbindable_addresses(&d);
        if !missing.is_empty() {
            let list = missing
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            debug!(addresses = %list, "reload postponed: bind addresses not on this host yet");
            self.reload_retry_at = Some(Instant::now() + RELOAD_ADDRESS_RETRY);
            self.update(|st| {
                st.error = Some(format!(
                    "reload waits for bind address(es) {list} to be on this host"
                ))
            });
            return;
        }
        self.reload_retry_at = None;
        let reasons = std::mem::take(&mut self.pending_reload);
        let structure = self.renderer.structure(&d);
        let span = info_span!("reload", revision = d.revision, reasons = %reasons.join("; "));
        async {
            self.last_reload_attempt = Some(Instant::now());
            let result = Box::pin(self.reload_inner(&d)).await;
            match result {
                Ok(outcome) => {
                    info!(
                        worker = outcome.worker_pid,
                        took_ms = outcome.took.as_millis() as u64,
                        "reload confirmed"
                    );
                    let record = LoadedRecord {
                        worker_pid: outcome.worker_pid,
                        structure: structure.clone(),
                    };
                    if let Err(error) = write_atomic(
                        &self.record_path(),
                        &serde_json::to_vec(&record).unwrap_or_default(),
                        0o644,
                    ) {
                        warn!(%error, "recording the loaded structure failed");
                    }
                    self.loaded = Some(structure.clone());
                    self.failed_reload = None;
                    if reasons.iter().any(|r| r.starts_with("convergence")) {
                        self.convergence_reloaded = Some(d.revision);
                    }
                    self.update(|st| {
                        st.reloads += 1;
                        for r in &reasons {
                            *st.reloads_by_reason
                                .entry(reason_kind(r).to_string())
                                .or_default() += 1;
                        }
                        st.last_reload = Some(SystemTime::now());
                        st.worker_pid = Some(outcome.worker_pid);
                        st.old_workers = outcome.old_workers;
                        st.pending_reload = Vec::new();
                    });
                }
                Err(e) => {
                    error!(error = %e, "reload failed; last-known-good configuration restored");
                    self.failed_reload = Some(structure.digest());
                    self.persisted = None;
                    self.update(|st| {
                        st.reload_failures += 1;
                        st.converged = false;
                        st.pending_reload = Vec::new();
                        st.error = Some(format!("reload for revision {} failed: {e}", d.revision));
                    });
                }
            }
        }
        .instrument(span)
        .await;
        // Converge the new worker (state file gaps, servers changed meanwhile).
        Box::pin(self.pass("after-reload", None, false)).await;
    }

    async fn reload_inner(
        &mut self,
        d: &DesiredState,
    ) -> Result<crate::haproxy::reload::ReloadOutcome, ReloadError> {
        let structure = self.renderer.structure(d);
        if self.validated.as_ref() != Some(&(d.revision, structure.digest())) {
            self.validate(d).await?;
            self.validated = Some((d.revision, structure.digest()));
        }
        let rendered = self
            .renderer
            .render(d, &self.s.haproxy.data_dir)
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let snapshot = self.installer.install(&rendered)?;
        self.write_state_file(d).await;
        match self.installer.reload_and_confirm().await {
            Ok(o) => {
                self.persisted = Some(rendered_digest(&rendered));
                Ok(o)
            }
            Err(e) => {
                self.installer.restore(snapshot);
                Err(e)
            }
        }
    }
}

/// How often a reload waiting for its bind addresses checks again.
const RELOAD_ADDRESS_RETRY: Duration = Duration::from_millis(200);

/// Frontend bind addresses this host cannot bind (not local yet).
///
/// Tried the way HAProxy will: binding a TCP socket to the address with an
/// ephemeral port. Only "address not available" counts; any other error
/// (permissions, exhausted ports) is left to the reload to report.
fn unbindable_addresses(d: &DesiredState) -> Vec<std::net::IpAddr> {
    let mut ips: Vec<std::net::IpAddr> = d
        .frontends
        .values()
        .flat_map(|f| f.bind.iter().map(|b| b.ip()))
        .collect();
    ips.sort();
    ips.dedup();
    ips.into_iter()
        .filter(|ip| match std::net::TcpListener::bind((*ip, 0)) {
            Ok(_) => false,
            Err(e) => e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL),
        })
        .collect()
}

/// Digest of a rendered config and its data files.
fn rendered_digest(r: &crate::haproxy::render::Rendered) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(r.config.as_bytes());
    for (p, b) in &r.files {
        h.update(p.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(b);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_not_on_the_host_are_found_before_a_reload() {
        let body = serde_json::json!({
            "schema": 1, "revision": 1, "group": "blue",
            "vips": [{"address": "127.0.0.0/8"}, {"address": "192.0.2.77/32"}],
            "frontends": [
                {"name": "local", "bind": ["127.0.0.5:80"], "mode": "tcp"},
                {"name": "vip", "bind": ["192.0.2.77:80"], "mode": "tcp"}
            ]
        });
        let d = crate::model::validate::parse_document(
            &serde_json::to_vec(&body).unwrap(),
            &crate::model::validate::ValidateContext {
                group: "blue".into(),
            },
        )
        .unwrap();
        // 127/8 is always local; 192.0.2.77 (TEST-NET-1) is on no interface of a test host.
        assert_eq!(
            unbindable_addresses(&d),
            vec!["192.0.2.77".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn reload_reasons_have_bounded_kinds() {
        assert_eq!(reason_kind("frontend www added"), "structure");
        assert_eq!(
            reason_kind("12 runtime commands exceed max_runtime_ops 5"),
            "runtime_ops_limit"
        );
        assert_eq!(reason_kind("pool p: no free server slot for s (balance static-rr cannot add servers at runtime)"), "no_free_slot");
        assert_eq!(
            reason_kind("convergence: 1 runtime changes did not take (x)"),
            "convergence"
        );
        assert_eq!(
            reason_kind("running configuration unknown"),
            "unknown_config"
        );
    }
}
