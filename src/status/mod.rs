//! The operating surface on the box: JSON over HTTP/1.1 on a UNIX socket
//! (docs/status.md), read by `lb-agent status`/`vips` and by scripts, and the way
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
//!
//! Wiring in the daemon (bind early so a bad socket, group or mode stops
//! the start with a clear error; then serve until cancelled):
//!
//! ```no_run
//! # async fn wire(cfg: lb_agent::config::Config) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use lb_agent::metrics::{CheckOutcome, Metrics};
//! use lb_agent::status::{Action, Request, ServerOptions, Snapshot, StatusServer};
//! use tokio::sync::{mpsc, watch};
//!
//! let (snapshot_tx, snapshot_rx) = watch::channel(Snapshot::new(&cfg.node.name, &cfg.node.group));
//! let metrics = Arc::new(Metrics::new(snapshot_rx.clone()));
//! let (request_tx, mut requests) = mpsc::channel::<Request>(8);
//! let opts = ServerOptions::from_config(&cfg.status);
//! let server = StatusServer::bind(&opts, snapshot_rx, request_tx, metrics.clone()).await?;
//! let cancel = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(server.run(cancel.clone()));
//!
//! // Publish after every change: snapshot_tx.send_replace(build_snapshot(...));
//! // Feed the histograms: metrics.observe_apply(secs);
//! metrics.observe_check("192.0.2.10/32", "www_https", CheckOutcome::Ok, std::time::Duration::from_micros(120));
//! while let Some(Request { action, peer, reply }) = requests.recv().await {
//!     let outcome: Result<(), String> = match action {
//!         Action::Drain { reason } => Ok(()), // persist the flag, withdraw, record `peer`
//!         Action::Undrain => Ok(()),
//!         Action::Reconcile => Ok(()),
//!     };
//!     let _ = reply.send(outcome); // the requester may have given up
//! }
//! # Ok(()) }
//! ```
//! - [`server`]: the socket, the routes, graceful shutdown.

#![warn(missing_docs)]

pub mod access;
mod convert;
mod listener;
pub mod server;
pub mod types;

use std::fmt;

use tokio::sync::oneshot;

pub use access::Peer;
pub use server::{
    MetricsText, ServeError, ServerOptions, SocketGroup, StatusServer, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTION_AGE,
};
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
