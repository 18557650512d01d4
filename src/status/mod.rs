//! The operating surface on the box: JSON over HTTP/1.1 on a UNIX socket
//! (SPEC §4), read by `lb-agent status`/`vips` and by scripts, and the way
//! operators drain, undrain and force a reconcile.
//!
//! The server only *reports* and *relays*: it serves the latest
//! [`Snapshot`] the daemon publishes on a `watch` channel, encodes
//! [`crate::metrics`] from it, and forwards mutations as [`Request`]s on an
//! `mpsc` channel, each with a `oneshot` for the daemon's answer. The daemon
//! owns every effect (the drain flag on disk, BIRD, HAProxy), so this module
//! holds no agent state and cannot contradict it.
//!
//! - [`types`]: the wire types (shared with the CLI).
//! - [`access`]: who may mutate (`SO_PEERCRED` + the status group).
//! - `convert`: `From` the source, reconciler and BIRD publisher statuses
//!   to the wire sections.
//! - [`server`]: the socket, the routes, graceful shutdown.

#![warn(missing_docs)]

pub mod access;
mod convert;
pub mod server;
pub mod types;

use std::fmt;

use tokio::sync::oneshot;

pub use access::Peer;
pub use server::{ServeError, ServerOptions, SocketGroup, StatusServer};
pub use types::Snapshot;

/// A mutation asked for on the socket, for the daemon to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Withdraw every VIP (gracefully when `bird.drain_variable` is set) and
    /// persist the drain until undrained.
    Drain {
        /// The operator's reason (trimmed, non-empty, one line).
        reason: String,
    },
    /// Lift a drain.
    Undrain,
    /// Full re-render and convergence check now.
    Reconcile,
}

impl Action {
    /// `drain`, `undrain` or `reconcile`.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Drain { .. } => "drain",
            Action::Undrain => "undrain",
            Action::Reconcile => "reconcile",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Drain { reason } => write!(f, "drain ({reason})"),
            other => f.write_str(other.name()),
        }
    }
}

/// One authorized mutation, delivered to the daemon.
///
/// The daemon must answer on `reply`: `Ok(())` once the effect is recorded
/// (for a drain: the flag persisted and the withdrawal under way), or
/// `Err(message)` (shown to the operator, CLI exit code 1). Dropping `reply`
/// unanswered is reported as "agent unavailable" (HTTP 503). The server waits
/// at most [`ServerOptions::request_timeout`] (HTTP 504 after that).
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub action: Action,
    /// Who asked (already authorized), for the log and `drain.by`.
    pub peer: Peer,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<(), String>>,
}
