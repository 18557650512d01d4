//! The task that owns BIRD for the agent: desired announcements in, confirmed
//! announcements out.
//!
//! Input is a `watch` of [`DesiredAnnouncements`] (the gate's verdict), output
//! a `watch` of [`BirdStatus`] (served on the status socket, and watched by
//! the VIP executor, which may remove a VIP address only once its withdrawal
//! is *confirmed*). One pass:
//!
//! 1. take the latest desired value, after a short settle window, so ten VIPs
//!    flipping in the same moment cost one write and one `configure`;
//! 2. render the include and re-parse it ([`include::render`]); write it
//!    atomically only when the bytes on disk differ (a hand-edited or
//!    corrupted file is thereby repaired too);
//! 3. if nothing was written, first check whether BIRD already runs the
//!    desired sets (then there is nothing to do); otherwise `configure` over
//!    the persistent control connection;
//! 4. confirm the effect: `eval <VARIABLE>` shows the prefix set the running
//!    configuration holds for every variable of the layout (advertise, drain
//!    and demote alike; membership queries when the set is too large for
//!    one output line); with `export_protocols` configured,
//!    `show route export <protocol>` must not list a prefix that was
//!    withdrawn; and a desired prefix that no protocol exports (the
//!    configured ones, else the BGP protocols that are up: see
//!    [`super::exports`]) is reported in [`BirdStatus::not_exported`].
//!
//! A failed pass (BIRD down, `8002`, confirmation mismatch) is reported and
//! retried with capped exponential backoff; a new desired value is acted on
//! at once regardless. On `8002` the include is never left in a state BIRD
//! refuses: see [`Publisher`].

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::timeutil::sleep_until_opt;
use tracing::{debug, info, warn};

use super::control::{
    BirdControl, ConfigRejection, ConfigureOutcome, ControlError, ControlOptions, EvalSet,
};
use super::exports::{self, ExportScope};
use super::include::{self, Announced, Family, IncludeLayout, LayoutError, RenderError};
use super::DesiredAnnouncements;
use crate::config::BirdConfig;
use crate::fsutil;

/// Permission bits of the include file (BIRD runs as its own user and must read it).
pub const INCLUDE_MODE: u32 = 0o644;

/// How soon a pass that newly found a prefix not exported is followed by a
/// check (a confirm-only resync) rather than after `resync_interval`.
pub const EXPORT_RECHECK: Duration = Duration::from_secs(1);

/// Tuning of the [`Publisher`]; the defaults suit production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublisherOptions {
    /// How long to wait after a change for more changes before acting.
    pub settle: Duration,
    /// First retry delay after a failed pass.
    pub backoff_initial: Duration,
    /// Cap of the retry delay.
    pub backoff_max: Duration,
    /// Period of the drift check (confirm only; reconfigure on mismatch).
    pub resync_interval: Duration,
    /// Period of the probe that notices a restarted BIRD (one `show status`
    /// on the open connection): a BIRD started again reads the include the
    /// packages reset to the dummies, so it must be published again at once,
    /// not at the next resync.
    pub probe_interval: Duration,
    /// Control-socket timeouts.
    pub control: ControlOptions,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            settle: Duration::from_millis(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            resync_interval: Duration::from_secs(30),
            probe_interval: Duration::from_secs(1),
            control: ControlOptions::default(),
        }
    }
}

/// What the publisher reports; `Default` is the state before the first pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BirdStatus {
    /// The last pass confirmed that BIRD runs the desired sets.
    pub ok: bool,
    /// When BIRD last answered a `configure`.
    pub last_reconfigure: Option<SystemTime>,
    /// When BIRD's sets were last confirmed equal to the desired ones.
    pub last_confirmed: Option<SystemTime>,
    /// Why the last pass failed (cleared by a successful pass).
    pub error: Option<String>,
    /// `configure` commands BIRD answered (accepted or rejected).
    pub reconfigures: u64,
    /// Include files written.
    pub writes: u64,
    /// Failed passes.
    pub failures: u64,
    /// The announcements BIRD was last confirmed to run (`None` before the first confirmation).
    pub announced: Option<DesiredAnnouncements>,
    /// BIRD's answer to the last accepted `configure`.
    pub last_outcome: Option<ConfigureOutcome>,
    /// Desired prefixes dropped by [`include::normalize`], and other non-fatal notes.
    pub warnings: Vec<String>,
    /// Desired prefixes that no asked protocol exports (BIRD has no route
    /// for them: with the packaged bird.conf, no address on the VIP
    /// interface, or outside its VIP ranges; or a configured session is
    /// down). Empty unless [`BirdStatus::export_scope`] is known.
    pub not_exported: BTreeSet<IpNet>,
    /// Which protocols the last export check asked (see [`exports`]).
    pub export_scope: ExportScope,
    /// Where the time of the last successful pass went.
    pub last_pass: Option<PassTiming>,
}

/// Durations of the steps of one successful pass (for metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassTiming {
    /// Writing the include (temp file, fsync, rename, directory fsync), if written.
    pub write: Option<Duration>,
    /// `configure` round trip, if one was needed.
    pub configure: Option<Duration>,
    /// The confirmation queries (of the last confirmation in the pass).
    pub confirm: Duration,
    /// The whole pass, from taking the desired value to confirmation.
    pub total: Duration,
}

/// A failed pass: what went wrong, for the status and the log.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error("rendering the include: {0}")]
    Render(#[from] RenderError),
    #[error("{action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Rejected(String),
    #[error("BIRD does not run the desired sets: {0}")]
    Mismatch(String),
}

/// Owns the include file and BIRD's control connection for the agent.
///
/// On `8002` after writing the include it decides what to leave on disk:
/// - the file on disk is not what was written (someone else changed it in
///   between) → the rendered file is written again;
/// - otherwise the last include BIRD accepted (from this run, else the valid
///   file found at start, else the dummy-only render) is put back and BIRD
///   is asked to `configure check`: if that passes, the new include was the
///   problem (for example a variable name bird.conf also defines) and the
///   restored one stays, so a BIRD restart still starts and announces what
///   BIRD runs now; if bird.conf fails even so, the new include is written
///   again, since it is what BIRD should load once bird.conf is fixed.
#[derive(Debug)]
pub struct Publisher {
    include_file: PathBuf,
    layout: IncludeLayout,
    export_protocols: Vec<String>,
    ctl: BirdControl,
    opts: PublisherOptions,
    /// Include text BIRD last accepted (or the valid file found at start).
    accepted: Option<String>,
    /// Every prefix this publisher has seen desired or found announced:
    /// the ones a confirmation must prove absent when not desired.
    universe: BTreeSet<IpNet>,
    status: BirdStatus,
    backoff: Duration,
    /// The not-exported prefixes of the last *known* export check (kept
    /// across failed passes, so a WARN is logged once per transition).
    warned: BTreeSet<IpNet>,
    /// A prefix was newly found not exported: check again soon (BIRD's
    /// `protocol direct` may learn a just-added address a moment later).
    recheck_exports: bool,
}

/// Why a pass runs (logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Start,
    Change,
    Retry,
    Resync,
    /// The control connection had to be opened again: BIRD was restarted.
    BirdRestarted,
}

impl Publisher {
    /// A publisher for `[bird]`; fails when the include layout is invalid.
    pub fn new(cfg: &BirdConfig, opts: PublisherOptions) -> Result<Self, LayoutError> {
        Ok(Publisher {
            include_file: cfg.include_file.clone(),
            layout: IncludeLayout::from_config(cfg)?,
            export_protocols: cfg.export_protocols.clone(),
            ctl: BirdControl::new(&cfg.control_socket, opts.control),
            opts,
            accepted: None,
            universe: BTreeSet::new(),
            status: BirdStatus::default(),
            backoff: opts.backoff_initial,
            warned: BTreeSet::new(),
            recheck_exports: false,
        })
    }

    /// Runs until `cancel` fires or the desired-state sender is dropped.
    ///
    /// The first pass runs at once with the current desired value (this is
    /// the startup purge/adopt: the caller seeds the channel from
    /// [`read_announced`] and its own state). Then a pass runs on every
    /// change (after `settle`), on retry after a failure, and every
    /// `resync_interval`.
    ///
    /// Cancellation is honoured between passes: a pass in progress finishes
    /// first (it is bounded by the control-socket timeouts), so `run` never
    /// returns with a rejected include still on disk. To withdraw on stop,
    /// send the empty set, wait for [`BirdStatus::announced`] to show it, then
    /// cancel.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<DesiredAnnouncements>,
        status: watch::Sender<BirdStatus>,
        cancel: CancellationToken,
    ) {
        self.load_startup_include().await;
        let mut reason = Reason::Start;
        let mut retry_at: Option<Instant> = None;
        let mut resync_at = Instant::now() + self.opts.resync_interval;
        let mut probe_at = Instant::now() + self.opts.probe_interval;
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    changed = desired.changed() => {
                        if changed.is_err() {
                            info!("desired announcements channel closed; BIRD publisher stops");
                            break;
                        }
                        // Let a burst finish, then act on its last value.
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(self.opts.settle) => {}
                        }
                        reason = Reason::Change;
                    }
                    _ = sleep_until_opt(retry_at) => reason = Reason::Retry,
                    _ = tokio::time::sleep_until(resync_at) => reason = Reason::Resync,
                    _ = tokio::time::sleep_until(probe_at), if retry_at.is_none() => {
                        probe_at = Instant::now() + self.opts.probe_interval;
                        if !self.bird_restarted().await {
                            continue;
                        }
                        info!("BIRD was restarted (its control socket is a new one); publishing again");
                        reason = Reason::BirdRestarted;
                    }
                }
            }
            let target = desired.borrow_and_update().clone();
            let started = Instant::now();
            match self.pass(&target, reason).await {
                Ok(()) => {
                    retry_at = None;
                    self.backoff = self.opts.backoff_initial;
                }
                Err(error) => {
                    // Whatever the last check found is no longer known:
                    // BIRD not answering is not "not exported".
                    self.status.export_scope = ExportScope::Unknown;
                    self.status.not_exported.clear();
                    self.status.ok = false;
                    self.status.failures += 1;
                    self.status.error = Some(error.to_string());
                    warn!(%error, ?reason, retry_in_ms = self.backoff.as_millis() as u64, "BIRD pass failed");
                    retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(self.opts.backoff_max);
                }
            }
            debug!(
                ?reason,
                elapsed_us = started.elapsed().as_micros() as u64,
                "BIRD pass done"
            );
            status.send_replace(self.status.clone());
            resync_at = Instant::now() + self.opts.resync_interval;
            if std::mem::take(&mut self.recheck_exports) {
                resync_at = Instant::now() + self.opts.resync_interval.min(EXPORT_RECHECK);
            }
        }
    }

    /// True when BIRD answers on a connection opened anew since the last
    /// exchange: the BIRD the last pass confirmed is gone. BIRD down (no
    /// answer) is not a restart yet; the probe after it comes back is.
    async fn bird_restarted(&mut self) -> bool {
        let before = self.ctl.connects();
        match self.ctl.request("show status").await {
            Ok(_) => before > 0 && self.ctl.connects() != before,
            Err(e) => {
                debug!(error = %e, "BIRD probe failed");
                false
            }
        }
    }

    /// Reads the include present at start: it is the fallback to restore
    /// on a rejection, and its prefixes must be proven withdrawn when not
    /// desired.
    async fn load_startup_include(&mut self) {
        let include = self.include_file.display().to_string();
        let text = match read_text(&self.include_file).await {
            Ok(Some(text)) => text,
            Ok(None) => return info!(%include, "no include at start"),
            Err(error) => return warn!(%include, %error, "cannot read the include at start"),
        };
        let file = match include::parse(&text) {
            Ok(file) => file,
            Err(error) => {
                return warn!(%include, %error, "include found at start does not parse; it will be rewritten")
            }
        };
        match file.announcements(&self.layout) {
            Ok(a) => {
                info!(
                    %include,
                    advertised = a.announcements.advertise.len(),
                    drained = a.announcements.drain.len(),
                    demoted = a.announcements.demote.len(),
                    missing = ?a.missing,
                    unknown = ?a.unknown,
                    "include found at start"
                );
                self.universe.extend(a.announcements.all());
            }
            Err(error) => {
                warn!(%include, %error, "include found at start does not fit the configured layout")
            }
        }
        // Valid for BIRD and most likely what BIRD runs: even in another
        // layout (variables renamed or added in agent.toml since), it is the
        // fallback BIRD is known to accept.
        self.accepted = Some(text);
    }

    async fn pass(
        &mut self,
        target: &DesiredAnnouncements,
        reason: Reason,
    ) -> Result<(), PassError> {
        let (clean, problems) = include::normalize(&self.layout, target);
        for p in &problems {
            warn!(problem = %p, "desired announcement not publishable");
        }
        self.status.warnings = problems;
        self.universe.extend(clean.all());
        let text = include::render(&self.layout, &clean)?;
        let started = Instant::now();

        let on_disk = read_text(&self.include_file)
            .await
            .map_err(|source| PassError::File {
                action: "reading",
                path: self.include_file.clone(),
                source,
            })?;
        let wrote = on_disk.as_deref() != Some(text.as_str());
        let mut write = None;
        if wrote {
            let t = Instant::now();
            self.write(&text).await?;
            write = Some(t.elapsed());
        } else {
            let t = Instant::now();
            if self.confirm(&clean).await.is_ok() {
                // BIRD already runs these sets: nothing to do.
                self.status.last_pass = Some(PassTiming {
                    write: None,
                    configure: None,
                    confirm: t.elapsed(),
                    total: started.elapsed(),
                });
                self.succeed(&clean, &text);
                debug!(?reason, "BIRD already runs the desired sets");
                return Ok(());
            }
        }

        let t = Instant::now();
        let outcome = match self.ctl.configure().await {
            Ok(outcome) => outcome,
            Err(ControlError::ConfigRejected(rejection)) => {
                self.status.reconfigures += 1;
                self.status.last_reconfigure = Some(crate::clock::wall());
                return Err(self.handle_rejection(rejection, &text).await);
            }
            Err(e) => return Err(e.into()),
        };
        self.status.reconfigures += 1;
        self.status.last_reconfigure = Some(crate::clock::wall());
        self.status.last_outcome = Some(outcome);
        let configure = t.elapsed();

        let t = Instant::now();
        self.confirm(&clean).await?;
        let timing = PassTiming {
            write,
            configure: Some(configure),
            confirm: t.elapsed(),
            total: started.elapsed(),
        };
        self.status.last_pass = Some(timing);
        info!(
            ?reason,
            ?outcome,
            wrote,
            advertised = clean.advertise.len(),
            drained = clean.drain.len(),
            demoted = clean.demote.len(),
            write_us = write.map(|d| d.as_micros() as u64),
            configure_us = configure.as_micros() as u64,
            confirm_us = timing.confirm.as_micros() as u64,
            "BIRD runs the desired announcements"
        );
        self.succeed(&clean, &text);
        Ok(())
    }

    fn succeed(&mut self, clean: &DesiredAnnouncements, text: &str) {
        self.accepted = Some(text.to_string());
        self.status.ok = true;
        self.status.error = None;
        self.status.announced = Some(clean.clone());
        self.status.last_confirmed = Some(crate::clock::wall());
    }

    async fn write(&mut self, text: &str) -> Result<(), PassError> {
        let path = self.include_file.clone();
        let data = text.as_bytes().to_vec();
        let result =
            tokio::task::spawn_blocking(move || fsutil::write_atomic(&path, &data, INCLUDE_MODE))
                .await
                .unwrap_or_else(|join| Err(io::Error::other(join)));
        result.map_err(|source| PassError::File {
            action: "writing",
            path: self.include_file.clone(),
            source,
        })?;
        self.status.writes += 1;
        Ok(())
    }

    /// Leaves a file BIRD accepts on disk after `8002` (see [`Publisher`]).
    async fn handle_rejection(&mut self, rejection: ConfigRejection, written: &str) -> PassError {
        let on_disk = match read_text(&self.include_file).await {
            Ok(t) => t,
            Err(source) => {
                return PassError::File {
                    action: "reading",
                    path: self.include_file.clone(),
                    source,
                }
            }
        };
        if on_disk.as_deref() != Some(written) {
            warn!(%rejection, "include changed behind lb-agent's back and BIRD rejected it; rewriting it");
            if let Err(e) = self.write(written).await {
                return e;
            }
            return PassError::Rejected(format!(
                "BIRD rejected an include modified by someone else ({rejection}); rewritten"
            ));
        }
        // The file is exactly what was rendered. BIRD's blame is no guide
        // (a clash between the include and bird.conf is blamed on whichever
        // comes second), so test: put the last accepted include back and
        // ask BIRD to check the configuration without applying it.
        let fallback = match &self.accepted {
            Some(t) => t.clone(),
            None => match include::render(&self.layout, &DesiredAnnouncements::default()) {
                Ok(t) => t,
                Err(e) => return e.into(),
            },
        };
        if fallback == written {
            return PassError::Rejected(format!(
                "BIRD rejected its configuration with the last accepted include: {rejection}"
            ));
        }
        if let Err(e) = self.write(&fallback).await {
            return e;
        }
        match self.ctl.configure_check().await {
            Ok(()) => {
                warn!(%rejection, "BIRD rejected the new include; restored the last accepted one");
                PassError::Rejected(format!(
                    "BIRD rejected the new include ({rejection}); restored the last accepted include"
                ))
            }
            Err(ControlError::ConfigRejected(again)) => {
                // bird.conf is broken whatever the include says: keep the
                // desired include, it is what BIRD should load once fixed.
                warn!(%rejection, %again, "BIRD rejects its configuration even with the last accepted include");
                if let Err(e) = self.write(written).await {
                    return e;
                }
                PassError::Rejected(format!(
                    "BIRD rejects its configuration, not because of the include: {again}"
                ))
            }
            Err(e) => PassError::Rejected(format!(
                "BIRD rejected the new include ({rejection}); restored the last accepted include, \
                 but could not check it: {e}"
            )),
        }
    }

    /// Proves BIRD's running configuration holds `clean`'s sets and that no
    /// configured export protocol still exports a prefix that is not
    /// desired; then records which desired prefixes no protocol exports
    /// (see [`exports`] for which protocols are asked).
    async fn confirm(&mut self, clean: &DesiredAnnouncements) -> Result<(), PassError> {
        confirm_sets(&mut self.ctl, &self.layout, clean, &self.universe).await?;
        let rows = if self.export_protocols.is_empty() {
            self.ctl.show_protocols().await?
        } else {
            Vec::new()
        };
        let scope = exports::scope(&self.export_protocols, &rows);
        let wanted = clean.all();
        let stale_candidates: BTreeSet<IpNet> =
            self.universe.difference(&wanted).copied().collect();
        let mut exported_anywhere = BTreeSet::new();
        for protocol in scope.protocols() {
            let exported = self.ctl.show_route_export(protocol).await?;
            // Only configured protocols prove a withdrawal: a discovered
            // session may be one (a route collector, iBGP) whose filter
            // exports more than the agent's sets.
            let stale: Vec<String> = exported
                .intersection(&stale_candidates)
                .map(|n| n.to_string())
                .collect();
            if matches!(scope, ExportScope::Configured(_)) && !stale.is_empty() {
                return Err(PassError::Mismatch(format!(
                    "protocol {protocol} still exports {}",
                    stale.join(", ")
                )));
            }
            exported_anywhere.extend(exported);
        }
        let missing = if scope.is_known() {
            exports::not_exported(&wanted, &exported_anywhere)
        } else {
            BTreeSet::new()
        };
        self.record_exports(scope, missing);
        Ok(())
    }

    /// Publishes an export check's result and logs its transitions once.
    fn record_exports(&mut self, scope: ExportScope, missing: BTreeSet<IpNet>) {
        if scope != self.status.export_scope {
            info!(scope = scope.as_str(), protocols = ?scope.protocols(), "BIRD export check scope");
        }
        if scope.is_known() {
            let t = exports::transition(&self.warned, &missing);
            if !t.flagged.is_empty() {
                self.recheck_exports = true;
                warn!(
                    prefixes = ?t.flagged,
                    protocols = ?scope.protocols(),
                    "announced prefixes that BIRD does not export (no route for them, or bird.conf's export filter rejects them)"
                );
            }
            if !t.cleared.is_empty() {
                info!(prefixes = ?t.cleared, "prefixes no longer reported as not exported");
            }
            self.warned = missing.clone();
        }
        self.status.not_exported = missing;
        self.status.export_scope = scope;
    }
}

async fn read_text(path: &Path) -> io::Result<Option<String>> {
    let path = path.to_path_buf();
    let bytes = tokio::task::spawn_blocking(move || fsutil::read_optional(&path))
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join)))?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Checks every variable of `layout` in BIRD's running configuration against
/// `clean`. `universe` lists prefixes that must be proven absent when the set
/// is too large for `eval` to print.
async fn confirm_sets(
    ctl: &mut BirdControl,
    layout: &IncludeLayout,
    clean: &DesiredAnnouncements,
    universe: &BTreeSet<IpNet>,
) -> Result<(), PassError> {
    for set in layout.sets(clean) {
        let expected = set.with_dummy();
        match ctl.eval_prefix_set(&set.name).await {
            Ok(EvalSet::Complete(dump)) => {
                if dump.exact != expected || !dump.patterns.is_empty() {
                    let extra: Vec<String> = dump
                        .exact
                        .difference(&expected)
                        .map(|n| n.to_string())
                        .collect();
                    let lacking: Vec<String> = expected
                        .difference(&dump.exact)
                        .map(|n| n.to_string())
                        .collect();
                    return Err(PassError::Mismatch(format!(
                        "{}: lacks [{}], has extra [{}]{}",
                        set.name,
                        lacking.join(", "),
                        extra.join(", "),
                        if dump.patterns.is_empty() {
                            ""
                        } else {
                            " and range patterns"
                        }
                    )));
                }
            }
            Ok(EvalSet::TooLong) => {
                let probes: BTreeSet<IpNet> = universe
                    .iter()
                    .filter(|n| Family::of(n) == set.family)
                    .chain(expected.iter())
                    .copied()
                    .collect();
                let membership = ctl.eval_membership(&set.name, &probes).await?;
                let wrong: Vec<String> = membership
                    .iter()
                    .filter(|(net, present)| expected.contains(net) != **present)
                    .map(|(net, present)| {
                        format!("{net} {}", if *present { "present" } else { "absent" })
                    })
                    .collect();
                if !wrong.is_empty() {
                    return Err(PassError::Mismatch(format!(
                        "{}: {}",
                        set.name,
                        wrong.join(", ")
                    )));
                }
            }
            Err(ControlError::Command { code, text }) => {
                return Err(PassError::Mismatch(format!(
                    "{} is not defined in BIRD's running configuration ({code:04} {text})",
                    set.name
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads the include at `[bird] include_file`: what was announced before
/// this process started (`None`: no file). The agent uses it at startup to
/// purge prefixes it does not know and adopt the ones it does.
pub fn read_announced(cfg: &BirdConfig) -> Result<Option<Announced>, ReadError> {
    let layout = IncludeLayout::from_config(cfg)?;
    let Some(bytes) = fsutil::read_optional(&cfg.include_file).map_err(|source| ReadError::Io {
        path: cfg.include_file.clone(),
        source,
    })?
    else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let parsed = include::parse(&text)
        .and_then(|f| f.announcements(&layout))
        .map_err(|source| ReadError::Parse {
            path: cfg.include_file.clone(),
            source,
        })?;
    Ok(Some(parsed))
}

/// Why [`read_announced`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// `[bird]` names or dummies are invalid.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The file exists but cannot be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The include file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The file does not parse (the announced set is unknown).
    #[error("{path}: {source}")]
    Parse {
        /// The include file.
        path: PathBuf,
        /// Parse error with its line.
        #[source]
        source: include::ParseError,
    },
}

/// What [`reset`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    /// Whether the file had to be written (it did not already hold only the dummies).
    pub written: bool,
    /// What happened on BIRD's side.
    pub bird: ResetBird,
}

/// BIRD's side of a [`reset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetBird {
    /// No BIRD listens on the control socket (e.g. `ExecStartPre` before BIRD
    /// starts): it will read the dummy-only include when it does.
    NotRunning,
    /// BIRD reconfigured and was confirmed to hold only the dummies.
    Reconfigured(ConfigureOutcome),
}

/// Why [`reset`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// `[bird]` names or dummies are invalid.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Rendering the dummy-only include failed (a bug).
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Writing the include failed; the previous file is intact.
    #[error("writing {path}: {source}")]
    Write {
        /// The include file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// BIRD is running but the reconfigure failed (`8002` included).
    #[error(transparent)]
    Control(#[from] ControlError),
    /// BIRD reconfigured but still holds other prefixes.
    #[error("BIRD still announces after the reset: {0}")]
    NotConfirmed(String),
}

/// Fail-closed reset: writes the dummy-only include and reconfigures BIRD,
/// then confirms BIRD holds only the dummies. Used by the packages
/// (`ExecStartPre` of bird.service, `ExecStopPost` of lb-agent.service) and
/// the CLI. A BIRD that is not running is not an error: it reads the file
/// when it starts.
pub async fn reset(cfg: &BirdConfig) -> Result<ResetReport, ResetError> {
    reset_with(cfg, ControlOptions::default()).await
}

/// [`reset`] with explicit control-socket timeouts.
pub async fn reset_with(
    cfg: &BirdConfig,
    control: ControlOptions,
) -> Result<ResetReport, ResetError> {
    let layout = IncludeLayout::from_config(cfg)?;
    let empty = DesiredAnnouncements::default();
    let text = include::render(&layout, &empty)?;
    let on_disk = read_text(&cfg.include_file)
        .await
        .map_err(|source| ResetError::Write {
            path: cfg.include_file.clone(),
            source,
        })?;
    let written = on_disk.as_deref() != Some(text.as_str());
    if written {
        let path = cfg.include_file.clone();
        let data = text.clone().into_bytes();
        tokio::task::spawn_blocking(move || fsutil::write_atomic(&path, &data, INCLUDE_MODE))
            .await
            .unwrap_or_else(|join| Err(io::Error::other(join)))
            .map_err(|source| ResetError::Write {
                path: cfg.include_file.clone(),
                source,
            })?;
    }
    let mut ctl = BirdControl::new(&cfg.control_socket, control);
    let outcome = match ctl.configure().await {
        Ok(o) => o,
        Err(ControlError::Connect { source, .. })
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            info!(include = %cfg.include_file.display(), written, "include reset; BIRD is not running");
            return Ok(ResetReport {
                written,
                bird: ResetBird::NotRunning,
            });
        }
        Err(e) => return Err(e.into()),
    };
    // `0004`/`0005` apply asynchronously: give the new config a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match confirm_sets(&mut ctl, &layout, &empty, &BTreeSet::new()).await {
            Ok(()) => break,
            Err(PassError::Control(e)) => return Err(e.into()),
            Err(e) if Instant::now() >= deadline => {
                return Err(ResetError::NotConfirmed(e.to_string()))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    info!(include = %cfg.include_file.display(), written, ?outcome, "include reset; BIRD holds only the dummy prefixes");
    Ok(ResetReport {
        written,
        bird: ResetBird::Reconfigured(outcome),
    })
}
