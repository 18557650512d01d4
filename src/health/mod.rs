//! Health checks of the services behind each VIP, and the rise/fall logic
//! that turns check results into the healthy flags gating BGP announcements.
//!
//! Why this module exists: a VIP prefix may only be announced while *every*
//! service behind it answers through the local HAProxy (docs/gating.md, "Health checks"). A wrong
//! "healthy" attracts ECMP traffic to a broken host; a wrong "unhealthy"
//! needlessly moves traffic away. So checks are real (TCP connect, HTTP
//! status, TLS handshake, or a local command) and their results go through
//! hysteresis before anyone acts on them.
//!
//! Layout, pure parts first:
//!
//! - [`spec`] (pure): desired state + `[health]` + local `[[check]]` →
//!   [`ServiceCheck`]s, one per service of each VIP.
//! - [`hysteresis`] (pure): [`ServiceHealth::observe`] applies rise/fall.
//! - [`check`]: the async probes ([`Checker`]); `tls` and `exec` hold the
//!   TLS client policy and the process-group handling of command checks.
//! - [`monitor`]: the long-lived task that schedules checks (spread over the
//!   interval, `fast_interval` while a state is changing) and publishes a
//!   [`HealthSnapshot`] on a `watch` channel.
//!
//! Who runs it: the daemon derives the check set with [`desired_checks`]
//! whenever the desired state or agent.toml changes, feeds it to
//! [`monitor::run`], and the gate reads the snapshot.

pub mod check;
mod exec;
pub mod hysteresis;
pub mod monitor;
pub mod spec;
mod tls;

use std::time::Duration;

pub use check::Checker;
pub use hysteresis::ServiceHealth;
pub use monitor::{CheckRunner, HealthSnapshot, MonitorOptions, ServiceStatus};
pub use spec::{
    desired_checks, service_checks, HttpRequestSpec, Probe, ServiceCheck, ServiceKey, ServiceOrigin,
};

/// The outcome of one check of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Whether the check passed.
    pub ok: bool,
    /// Time from the start of the check to its outcome (pass or failure).
    pub latency: Duration,
    /// Short, operator-grade reason of a failure ("connection refused",
    /// "timeout after 500ms (connect)", "status 503, expected 2xx/3xx").
    /// `None` when `ok`.
    pub error: Option<String>,
}

impl CheckResult {
    /// A passing result.
    pub fn pass(latency: Duration) -> Self {
        CheckResult {
            ok: true,
            latency,
            error: None,
        }
    }

    /// A failing result with its reason.
    pub fn fail(latency: Duration, error: impl Into<String>) -> Self {
        CheckResult {
            ok: false,
            latency,
            error: Some(error.into()),
        }
    }
}

/// Formats a duration the way operators write them in agent.toml ("500ms", "2s").
pub(crate) fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
