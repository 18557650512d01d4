//! PURE: whether a pass over a new document may be scoped to the pools whose
//! servers changed ([`crate::plan::scope`]), and when the config file
//! a scoped pass did not write is written (docs/etcd.md, "O(change) on the
//! agent").

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{DesiredState, Name};
use crate::plan::scope::server_scope;

/// How much of HAProxy a pass reads, plans and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassScope {
    /// Every backend and data file observed and planned; the config file
    /// written when it differs.
    Full(WhyFull),
    /// Only these pools' backends observed and planned; the config file
    /// written later ([`persist_at`]).
    Pools(BTreeSet<Name>),
}

/// Why a pass looks at everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhyFull {
    /// No new document: a verification, an operator, a reload or HAProxy changed.
    NotADocument,
    /// The last pass did not end converged, so HAProxy may not run the
    /// previous document exactly.
    NotVerified,
    /// A reload is wanted or failing: the full pass owns that.
    ReloadPending,
    /// The document changes more than servers.
    WiderChange,
}

/// What [`pass_scope`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct ScopeInputs<'a> {
    /// The document HAProxy ran exactly at the end of the last pass, if it
    /// ended converged (and nothing since has put that in doubt).
    pub verified: Option<&'a DesiredState>,
    /// The document this pass converges to.
    pub next: &'a DesiredState,
    /// The pass was started by a new document.
    pub fresh: bool,
    /// A reload is wanted, or the last one failed.
    pub reload_pending: bool,
}

/// Decides the scope of a pass.
pub fn pass_scope(i: ScopeInputs<'_>) -> PassScope {
    if !i.fresh {
        return PassScope::Full(WhyFull::NotADocument);
    }
    if i.reload_pending {
        return PassScope::Full(WhyFull::ReloadPending);
    }
    let Some(v) = i.verified else {
        return PassScope::Full(WhyFull::NotVerified);
    };
    match server_scope(v, i.next) {
        Some(pools) => PassScope::Pools(pools),
        None => PassScope::Full(WhyFull::WiderChange),
    }
}

/// A scoped pass leaves the config file behind the runtime state; it is
/// written once documents have been quiet this long ...
pub const PERSIST_QUIET: Duration = Duration::from_secs(2);
/// ... and at most this long after the first change it lags.
pub const PERSIST_MAX_LAG: Duration = Duration::from_secs(10);

/// When the config file is written after scoped passes: [`PERSIST_QUIET`]
/// after the last one, but no later than [`PERSIST_MAX_LAG`] after the first
/// one it lags (a steady stream of changes writes it every 10 s, not on
/// every change).
pub fn persist_at(first_lag: Instant, last_change: Instant) -> Instant {
    (last_change + PERSIST_QUIET).min(first_lag + PERSIST_MAX_LAG)
}

#[cfg(test)]
mod tests;
