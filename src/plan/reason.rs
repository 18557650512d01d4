//! Why a reload is needed: a typed reason per cause (pure data).
//!
//! The planner, the reconcile policy and the status surfaces share these.
//! [`ReloadReason::kind`] is the bounded label set of the
//! `lb_agent_reloads_total` metric; `Display` is the operator text shown in
//! `pending_reload` and in the log.

use std::fmt;

/// What happened to a reload-relevant object between two structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    /// New in the desired state.
    Added,
    /// Present in both, with a different definition.
    Changed,
    /// Gone from the desired state.
    Removed,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Changed => "changed",
            Change::Removed => "removed",
        }
    }
}

/// One reason why the rendered config must be reloaded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReloadReason {
    /// The structure of the running config is not known (first start, lost record).
    RunningUnknown,
    /// A frontend, pool, logic snippet, map, ACL or certificate was added,
    /// changed or removed (`object` is that kind, lower case).
    Structure {
        /// `frontend`, `pool`, `logic`, `map`, `acl` or `certificate`.
        object: &'static str,
        /// The object's name.
        name: String,
        /// What happened to it.
        change: Change,
    },
    /// Templates or host settings rendered into global/defaults changed.
    Global,
    /// The structure says a backend is loaded, but HAProxy does not list it.
    BackendMissing {
        /// The pool's name.
        pool: String,
    },
    /// A static-algorithm pool has no free slot for a new server.
    NoFreeSlot {
        /// The pool.
        pool: String,
        /// The server that found no slot.
        server: String,
        /// The pool's balance algorithm.
        balance: String,
    },
    /// A certificate too large for one runtime-socket payload.
    CertificateTooLarge {
        /// The certificate's name.
        name: String,
    },
    /// More runtime commands than `max_runtime_ops`.
    RuntimeOpsLimit {
        /// Commands the plan had.
        commands: usize,
        /// The limit.
        max: usize,
    },
    /// Runtime changes did not take, even after a repair.
    Convergence {
        /// Commands still planned after the repair.
        remaining: usize,
        /// The first failure (or the first remaining command).
        first: String,
    },
}

impl ReloadReason {
    /// Coarse kind for metrics labels (bounded cardinality).
    pub fn kind(&self) -> &'static str {
        match self {
            ReloadReason::RunningUnknown | ReloadReason::BackendMissing { .. } => "unknown_config",
            ReloadReason::Structure { .. }
            | ReloadReason::Global
            | ReloadReason::CertificateTooLarge { .. } => "structure",
            ReloadReason::NoFreeSlot { .. } => "no_free_slot",
            ReloadReason::RuntimeOpsLimit { .. } => "runtime_ops_limit",
            ReloadReason::Convergence { .. } => "convergence",
        }
    }
}

impl fmt::Display for ReloadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadReason::RunningUnknown => f.write_str("running configuration unknown"),
            ReloadReason::Structure {
                object,
                name,
                change,
            } => write!(f, "{object} {name} {}", change.as_str()),
            ReloadReason::Global => f.write_str("templates or global settings changed"),
            ReloadReason::BackendMissing { pool } => {
                write!(f, "backend {pool} missing in the running HAProxy")
            }
            ReloadReason::NoFreeSlot {
                pool,
                server,
                balance,
            } => write!(
                f,
                "pool {pool}: no free server slot for {server} (balance {balance} cannot add servers at runtime)"
            ),
            ReloadReason::CertificateTooLarge { name } => {
                write!(f, "certificate {name} is too large for the runtime socket")
            }
            ReloadReason::RuntimeOpsLimit { commands, max } => {
                write!(f, "{commands} runtime commands exceed max_runtime_ops {max}")
            }
            ReloadReason::Convergence { remaining, first } => write!(
                f,
                "convergence: {remaining} runtime changes did not take ({first})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_bounded_and_texts_stable() {
        let cases = [
            (ReloadReason::RunningUnknown, "unknown_config", "running configuration unknown"),
            (
                ReloadReason::Structure {
                    object: "frontend",
                    name: "www".into(),
                    change: Change::Added,
                },
                "structure",
                "frontend www added",
            ),
            (ReloadReason::Global, "structure", "templates or global settings changed"),
            (
                ReloadReason::NoFreeSlot {
                    pool: "p".into(),
                    server: "s".into(),
                    balance: "static-rr".into(),
                },
                "no_free_slot",
                "pool p: no free server slot for s (balance static-rr cannot add servers at runtime)",
            ),
            (
                ReloadReason::RuntimeOpsLimit { commands: 12, max: 5 },
                "runtime_ops_limit",
                "12 runtime commands exceed max_runtime_ops 5",
            ),
            (
                ReloadReason::Convergence {
                    remaining: 1,
                    first: "x".into(),
                },
                "convergence",
                "convergence: 1 runtime changes did not take (x)",
            ),
            (
                ReloadReason::BackendMissing { pool: "p".into() },
                "unknown_config",
                "backend p missing in the running HAProxy",
            ),
        ];
        for (r, kind, text) in cases {
            assert_eq!(r.kind(), kind, "{r:?}");
            assert_eq!(r.to_string(), text);
        }
    }
}
