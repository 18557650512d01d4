//! PURE: every decision the reconcile loop makes, as data in → data out.
//!
//! The loop ([`super::Reconciler`]) observes (documents, HAProxy's state
//! through [`super::ops::HaproxyOps`]), asks these functions what to do, and
//! carries it out. Nothing here awaits, touches a file or a socket, or reads
//! a clock: `now` is passed in. So every rule is a table test below:
//!
//! - **document acceptance** ([`accept`]): newer revisions only, the
//!   removal-ratio guard, no absurd revision jumps;
//! - **repair or reload** ([`after_apply`]): runtime commands that did not
//!   take are repaired once, then reloaded — once per revision, never in a loop;
//! - **reload scheduling** ([`ReloadState`]): coalescing (at most one attempt
//!   per `min_reload_interval`), bounded exponential backoff after a failure
//!   (5 s doubling to 5 min), and an immediate retry on a new revision, an
//!   operator's `reconcile`, or a change of HAProxy's master or worker;
//! - **HAProxy restarts** ([`identity_changed`], [`resolve_loaded`]): what the
//!   running HAProxy loaded after a restart nobody announced;
//! - **installation** ([`install_view`]): which frontends of the document the
//!   running HAProxy serves, which wait for a reload, which failed to install;
//! - **pass scope** ([`scope`]): a server-only change after a converged pass
//!   reads and plans only the pools it touches; the config file follows.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::model::removal::removal_guard;
use crate::model::{DesiredState, Revision};
use crate::plan::{ReloadReason, Structure};

/// Revisions above this are refused: they would pin the agent (no later
/// document could ever be newer). 2^53 − 1 is also the largest integer every
/// JSON implementation represents exactly.
pub const MAX_REVISION: Revision = (1 << 53) - 1;
/// A jump larger than this over the revision in force is refused unless the
/// document says `"force": true`: it is a corrupted or hostile counter, and
/// applying it would make every honest later revision look old.
pub const MAX_REVISION_JUMP: Revision = 1 << 32;

/// Why a document is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It would remove more than `max_removal_ratio` of the VIPs or servers.
    RemovesTooMuch(String),
    /// Its revision is beyond [`MAX_REVISION`].
    RevisionTooLarge {
        /// The offered revision.
        offered: Revision,
    },
    /// Its revision jumps more than [`MAX_REVISION_JUMP`] over the one in force.
    RevisionJump {
        /// The revision in force.
        applied: Revision,
        /// The offered revision.
        offered: Revision,
    },
    /// Its rendered config does not pass `haproxy -c` (or does not render).
    Invalid(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::RemovesTooMuch(e) => f.write_str(e),
            Refusal::RevisionTooLarge { offered } => write!(
                f,
                "revision {offered} is above the largest accepted revision {MAX_REVISION}"
            ),
            Refusal::RevisionJump { applied, offered } => write!(
                f,
                "revision {offered} jumps more than {MAX_REVISION_JUMP} over the applied revision {applied}; publish it with \"force\": true if that is intended"
            ),
            Refusal::Invalid(e) => f.write_str(e),
        }
    }
}

/// What to do with an offered document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// Newer than the one in force (or the first): converge to it.
    Fresh,
    /// The revision in force: nothing new.
    Same,
    /// Older than the one in force: ignored, never applied.
    Older {
        /// The revision in force.
        applied: Revision,
    },
    /// Refused as a whole; the one in force stays.
    Refused(Refusal),
}

/// Decides whether `offered` replaces `applied`.
pub fn accept(
    applied: Option<&DesiredState>,
    offered: &DesiredState,
    max_removal_ratio: f64,
) -> Acceptance {
    let rev = offered.revision;
    if rev > MAX_REVISION {
        return Acceptance::Refused(Refusal::RevisionTooLarge { offered: rev });
    }
    let Some(a) = applied else {
        return Acceptance::Fresh;
    };
    if rev < a.revision {
        return Acceptance::Older {
            applied: a.revision,
        };
    }
    if rev == a.revision {
        return Acceptance::Same;
    }
    if rev - a.revision > MAX_REVISION_JUMP && !offered.force {
        return Acceptance::Refused(Refusal::RevisionJump {
            applied: a.revision,
            offered: rev,
        });
    }
    match removal_guard(a, offered, max_removal_ratio) {
        Ok(()) => Acceptance::Fresh,
        Err(e) => Acceptance::Refused(Refusal::RemovesTooMuch(e)),
    }
}

/// Runtime application rounds per pass: apply, read back, repair once.
pub const APPLY_ROUNDS: u32 = 2;

/// What follows a round of runtime commands and their read-back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterApply {
    /// Nothing left to apply.
    Converged,
    /// Apply what is still planned once more (the repair).
    Repair,
    /// The runtime changes do not take: reload to make HAProxy match.
    Reload(ReloadReason),
    /// A reload for this revision did not make them take either: give up
    /// until the next document (reloading again would only loop).
    GiveUp {
        /// Commands still planned.
        remaining: usize,
        /// The first failure.
        first: String,
    },
}

/// Decides after `rounds` rounds of runtime commands with `remaining`
/// commands still planned. `reloaded_for_convergence` is true when a reload
/// was already done for this revision because runtime changes did not take;
/// `unsent` when the last round had commands the client will not send at
/// all (they cannot be repaired at runtime, only by a reload).
pub fn after_apply(
    remaining: usize,
    rounds: u32,
    first: &str,
    reloaded_for_convergence: bool,
    unsent: bool,
) -> AfterApply {
    if remaining == 0 {
        AfterApply::Converged
    } else if rounds < APPLY_ROUNDS && !unsent {
        AfterApply::Repair
    } else if reloaded_for_convergence {
        AfterApply::GiveUp {
            remaining,
            first: first.to_string(),
        }
    } else {
        AfterApply::Reload(ReloadReason::Convergence {
            remaining,
            first: first.to_string(),
        })
    }
}

/// Bounded exponential backoff for failed reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub first: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
}

/// The reload backoff: 5 s, doubling, at most 5 min.
pub const RELOAD_BACKOFF: Backoff = Backoff {
    first: Duration::from_secs(5),
    max: Duration::from_secs(300),
};

impl Backoff {
    /// Delay after `failures` consecutive failures (≥ 1).
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// Why a reload is retried before its backoff ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// A new revision arrived.
    NewRevision,
    /// An operator asked (`lb-agent reconcile`).
    Operator,
    /// HAProxy's master or worker changed behind the agent's back.
    HaproxyChanged,
}

/// A reload attempt that failed; kept until a reload succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadFailure {
    /// Structure digest of the config that failed to load.
    pub digest: String,
    /// Why (the installer's error).
    pub error: String,
}

/// The reload scheduler's state: what is wanted, when it may run next.
#[derive(Debug, Clone, Default)]
pub struct ReloadState {
    /// Why a reload is wanted; empty: none.
    pub wanted: Vec<ReloadReason>,
    /// When the last attempt started.
    pub last_attempt: Option<Instant>,
    /// Consecutive failed attempts (0 after a success).
    pub failures: u32,
    /// The last failure, until a reload succeeds.
    pub failure: Option<ReloadFailure>,
    /// No automatic retry before this (the backoff); cleared by a [`Kick`].
    pub retry_at: Option<Instant>,
    /// The candidate binds addresses the host does not have yet (a VIP being
    /// added): the attempt waits, polling at [`ADDRESS_RETRY`].
    pub waiting_for: Vec<IpAddr>,
    /// When the address wait is checked again.
    pub address_retry_at: Option<Instant>,
}

/// How often a reload waiting for its bind addresses checks again.
pub const ADDRESS_RETRY: Duration = Duration::from_millis(200);

impl ReloadState {
    /// Adds the reasons of a pass that needs a reload; returns the new ones.
    pub fn want(&mut self, reasons: &[ReloadReason]) -> Vec<ReloadReason> {
        let mut new = Vec::new();
        for r in reasons {
            if !self.wanted.contains(r) {
                self.wanted.push(r.clone());
                new.push(r.clone());
            }
        }
        new
    }

    /// A pass found nothing needing a reload.
    pub fn settle(&mut self) {
        self.wanted.clear();
        self.waiting_for.clear();
        self.address_retry_at = None;
    }

    /// When the wanted reload may be attempted (`now` at the earliest);
    /// `None` when none is wanted. Never earlier than one `min_interval`
    /// after the last attempt, nor before the backoff or the address wait ends.
    pub fn due(&self, min_interval: Duration, now: Instant) -> Option<Instant> {
        if self.wanted.is_empty() {
            return None;
        }
        let coalesced = self.last_attempt.map_or(now, |t| t + min_interval);
        Some(
            [Some(coalesced), self.retry_at, self.address_retry_at]
                .into_iter()
                .flatten()
                .fold(now, Instant::max),
        )
    }

    /// A reason to retry before the backoff ends (still coalesced).
    pub fn kick(&mut self, _why: Kick) {
        self.retry_at = None;
    }

    /// The candidate binds `missing` addresses the host lacks: wait for them.
    pub fn wait_for_addresses(&mut self, missing: Vec<IpAddr>, now: Instant) {
        self.waiting_for = missing;
        self.address_retry_at = Some(now + ADDRESS_RETRY);
    }

    /// An attempt starts now; returns the reasons it carries.
    pub fn attempt(&mut self, now: Instant) -> Vec<ReloadReason> {
        self.last_attempt = Some(now);
        self.waiting_for.clear();
        self.address_retry_at = None;
        std::mem::take(&mut self.wanted)
    }

    /// The attempt failed: back off.
    pub fn failed(&mut self, digest: String, error: String, now: Instant, backoff: Backoff) {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + backoff.after(self.failures));
        self.failure = Some(ReloadFailure { digest, error });
    }

    /// The attempt was confirmed.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.failure = None;
    }

    /// The failure of `digest`, if the last attempt for it failed.
    pub fn failure_of(&self, digest: &str) -> Option<&ReloadFailure> {
        self.failure.as_ref().filter(|f| f.digest == digest)
    }
}

/// Who runs HAProxy: the master and its current worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The master's pid.
    pub master: u32,
    /// The current worker's pid.
    pub worker: u32,
}

/// True when HAProxy's master or worker is not the one the agent last knew:
/// it was restarted or reloaded by someone else, so what it loaded must be
/// worked out again. `known = None` (never seen) is not a change.
pub fn identity_changed(known: Option<Identity>, seen: Option<Identity>) -> bool {
    matches!((known, seen), (Some(k), Some(s)) if k != s)
}

/// What is recorded after each confirmed reload, to know what HAProxy runs
/// after an agent restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedRecord {
    /// The worker that loaded `structure`.
    pub worker_pid: u32,
    /// What it loaded.
    pub structure: Structure,
}

/// Works out the structure the running HAProxy loaded, from the agent's
/// record of its last confirmed reload, the current worker, and the
/// structure digest embedded in the config file on disk (which is what a
/// restarted HAProxy reads). `None`: unknown, so a reload is planned.
pub fn resolve_loaded(
    record: Option<&LoadedRecord>,
    worker: Option<u32>,
    file_digest: Option<&str>,
    desired: &Structure,
) -> Option<Structure> {
    match record {
        Some(r) if worker.is_some() && Some(r.worker_pid) == worker => Some(r.structure.clone()),
        Some(r) if file_digest == Some(r.structure.digest().as_str()) => Some(r.structure.clone()),
        _ if file_digest == Some(desired.digest().as_str()) => Some(desired.clone()),
        _ => None,
    }
}

/// Whether a frontend of the document is served by the running HAProxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Install {
    /// The running config has this frontend exactly as desired.
    Running,
    /// Not yet: a reload is wanted or under way (the reason says which).
    Pending(String),
    /// The reload that would install it failed (the reason says why).
    Failed(String),
}

/// Per frontend of `d`: is it running as desired, waiting, or failed?
/// `loaded` is the structure of the running config (`None`: unknown);
/// `reachable` is false while HAProxy's runtime socket does not answer.
pub fn install_view(
    desired: &Structure,
    loaded: Option<&Structure>,
    reload: &ReloadState,
    reachable: bool,
) -> BTreeMap<String, Install> {
    let failure = reload.failure_of(&desired.digest());
    desired
        .frontends
        .iter()
        .map(|(name, digest)| {
            let running = loaded.and_then(|l| l.frontends.get(name)) == Some(digest);
            let state = if running {
                Install::Running
            } else if let Some(f) = failure {
                Install::Failed(format!("reload failed: {}", f.error))
            } else if !reachable {
                Install::Pending("HAProxy's runtime socket does not answer".into())
            } else if !reload.waiting_for.is_empty() {
                let list: Vec<String> = reload.waiting_for.iter().map(|a| a.to_string()).collect();
                Install::Pending(format!(
                    "reload waits for bind address(es) {} to be on this host",
                    list.join(", ")
                ))
            } else {
                Install::Pending("reload pending".into())
            };
            (name.clone(), state)
        })
        .collect()
}

pub mod scope;

#[cfg(test)]
mod tests;
