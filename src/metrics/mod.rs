//! Prometheus metrics (every family: docs/status.md, "Metrics"), served at `/metrics` on the status socket
//! and, optionally, on `status.metrics_listen`.
//!
//! Two mechanisms, chosen by who owns the number:
//!
//! - **Derived at scrape time from the latest [`Snapshot`].** The components
//!   already count polls, runtime commands, reloads, convergence failures and
//!   BIRD reconfigures, and the status socket shows those counters. A custom
//!   [`Collector`](prometheus_client::collector::Collector) (`collector.rs`,
//!   one function per section) reads the snapshot's `watch` channel on
//!   every scrape and encodes them, so `/metrics` and `/v1/status` can never disagree and no
//!   component has to know about Prometheus. Gauges (applied revision, VIP
//!   announced, service healthy, drained, ...) come from the same place.
//! - **Observed as events happen.** Distributions cannot be rebuilt from a
//!   snapshot, so the daemon calls [`Metrics::observe_apply`] after each
//!   reconcile pass that changed something and [`Metrics::observe_check`]
//!   after every health check. Per-service series live in a map keyed by
//!   (VIP, service); at scrape time only pairs present in the snapshot are
//!   encoded and the others are dropped, so a removed service does not leave
//!   a series behind forever.
//!
//! The encoding is OpenMetrics text (what prometheus-client writes):
//! counters are declared without and sampled with `_total`, seconds carry
//! a `# UNIT` line, and it ends with `# EOF` ([`CONTENT_TYPE`]). `/metrics`
//! serves it to scrapers that prefer it and the Prometheus text format to
//! all others ([`crate::exposition`]). Every name starts with `lb_agent_`
//! and is stable.
//!
//! `parse.rs` holds [`parse_exposition`], a strict reader of this text for
//! tests and tools.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::status::types::Snapshot;

mod collector;
mod parse;

use collector::SnapshotCollector;
pub use parse::{describe, parse_exposition, Sample};

/// The `Content-Type` of [`Metrics::encode`]'s OpenMetrics.
pub const CONTENT_TYPE: &str = crate::exposition::OPENMETRICS_CONTENT_TYPE;

/// Buckets of `lb_agent_apply_duration_seconds`: a runtime-only pass takes
/// milliseconds, a reload with `haproxy -c` and a new worker about a second,
/// a slow one tens of seconds.
const APPLY_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets of `lb_agent_check_duration_seconds`: a local TCP connect takes
/// about 0.1 ms; the check timeout is typically 500 ms.
const CHECK_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

static SECONDS: Unit = Unit::Seconds;

/// The result of one health check, as counted by
/// `lb_agent_check_results_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckOutcome {
    /// The check passed.
    Ok,
    /// The check failed (refused, bad status, exec exit ≠ 0, ...).
    Fail,
    /// The check did not finish within `health.timeout`.
    Timeout,
}

impl CheckOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckOutcome::Ok => "ok",
            CheckOutcome::Fail => "fail",
            CheckOutcome::Timeout => "timeout",
        }
    }
}

/// Per-(VIP, service) series fed by [`Metrics::observe_check`].
#[derive(Debug)]
struct CheckSeries {
    ok: u64,
    fail: u64,
    timeout: u64,
    latency: Histogram,
}

impl CheckSeries {
    fn new() -> CheckSeries {
        CheckSeries {
            ok: 0,
            fail: 0,
            timeout: 0,
            latency: Histogram::new(CHECK_BUCKETS),
        }
    }
}

type CheckMap = BTreeMap<(String, String), CheckSeries>;

/// The agent's metrics: a registry plus the handles the daemon feeds.
///
/// Cheap to share behind an [`Arc`]; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    apply: Histogram,
    checks: Arc<Mutex<CheckMap>>,
}

impl Metrics {
    /// Metrics derived from the snapshots published on `snapshot`, plus the
    /// event-fed histograms.
    pub fn new(snapshot: watch::Receiver<Snapshot>) -> Metrics {
        let mut registry = Registry::default();
        let apply = Histogram::new(APPLY_BUCKETS);
        registry.register_with_unit(
            "lb_agent_apply_duration",
            "Duration of reconcile passes that changed HAProxy (runtime commands or reload)",
            Unit::Seconds,
            apply.clone(),
        );
        let checks = Arc::new(Mutex::new(CheckMap::new()));
        registry.register_collector(Box::new(SnapshotCollector {
            snapshot,
            checks: checks.clone(),
        }));
        Metrics {
            registry,
            apply,
            checks,
        }
    }

    /// Records the duration of a reconcile pass that changed something.
    /// Negative and non-finite values are ignored.
    pub fn observe_apply(&self, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.apply.observe(seconds);
        }
    }

    /// Records one health check of `service` behind `vip` (the VIP's
    /// address as shown in the snapshot, e.g. `192.0.2.10/32`).
    pub fn observe_check(
        &self,
        vip: &str,
        service: &str,
        outcome: CheckOutcome,
        latency: Duration,
    ) {
        let mut map = lock(&self.checks);
        let series = map
            .entry((vip.to_string(), service.to_string()))
            .or_insert_with(CheckSeries::new);
        match outcome {
            CheckOutcome::Ok => series.ok += 1,
            CheckOutcome::Fail => series.fail += 1,
            CheckOutcome::Timeout => series.timeout += 1,
        }
        series.latency.observe(latency.as_secs_f64());
    }

    /// The exposition text, ending with `# EOF`.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl crate::status::MetricsText for Metrics {
    fn encode(&self) -> Result<String, std::fmt::Error> {
        Metrics::encode(self)
    }
}

/// A poisoned lock only means a panic elsewhere while counting; the counts
/// are still usable.
fn lock(m: &Mutex<CheckMap>) -> MutexGuard<'_, CheckMap> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Names of every metric family, as they appear on `# TYPE` lines (for
/// documentation and tests).
pub const FAMILIES: [(&str, &str); 32] = [
    ("lb_agent_apply_duration_seconds", "histogram"),
    ("lb_agent_build", "info"),
    ("lb_agent_applied_revision", "gauge"),
    ("lb_agent_drained", "gauge"),
    ("lb_agent_source_polls", "counter"),
    ("lb_agent_source_state", "gauge"),
    ("lb_agent_source_consecutive_failures", "gauge"),
    ("lb_agent_source_last_success_timestamp_seconds", "gauge"),
    ("lb_agent_document_rejections", "counter"),
    ("lb_agent_haproxy_converged", "gauge"),
    ("lb_agent_runtime_commands", "counter"),
    ("lb_agent_runtime_command_failures", "counter"),
    ("lb_agent_reloads", "counter"),
    ("lb_agent_reload_failures", "counter"),
    ("lb_agent_convergence_failures", "counter"),
    ("lb_agent_scoped_passes", "counter"),
    ("lb_agent_haproxy_config_file_behind", "gauge"),
    ("lb_agent_haproxy_old_workers", "gauge"),
    ("lb_agent_haproxy_reload_pending", "gauge"),
    ("lb_agent_haproxy_reload_attempts", "gauge"),
    ("lb_agent_haproxy_next_reload_timestamp_seconds", "gauge"),
    ("lb_agent_az_servers", "gauge"),
    ("lb_agent_az_healthy_servers", "gauge"),
    ("lb_agent_az_spilling", "gauge"),
    ("lb_agent_bird_reconfigures", "counter"),
    ("lb_agent_bird_ok", "gauge"),
    ("lb_agent_bird_not_exported", "gauge"),
    ("lb_agent_vip_announced", "gauge"),
    ("lb_agent_vip_exported", "gauge"),
    ("lb_agent_service_healthy", "gauge"),
    ("lb_agent_check_results", "counter"),
    ("lb_agent_check_duration_seconds", "histogram"),
];

#[cfg(test)]
mod tests;
