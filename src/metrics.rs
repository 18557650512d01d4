//! Prometheus metrics (every family: docs/status.md, "Metrics"), served at `/metrics` on the status socket
//! and, optionally, on `status.metrics_listen`.
//!
//! Two mechanisms, chosen by who owns the number:
//!
//! - **Derived at scrape time from the latest [`Snapshot`].** The components
//!   already count polls, runtime commands, reloads, convergence failures and
//!   BIRD reconfigures, and the status socket shows those counters. A custom
//!   [`Collector`] reads the snapshot's `watch` channel on every scrape and
//!   encodes them, so `/metrics` and `/v1/status` can never disagree and no
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

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::status::types::{Snapshot, SourceState};

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

/// Encodes the snapshot-derived families and the per-service check series.
#[derive(Debug)]
struct SnapshotCollector {
    snapshot: watch::Receiver<Snapshot>,
    checks: Arc<Mutex<CheckMap>>,
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge<N>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: Option<N>,
) -> std::fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let me = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    match v {
        Some(v) => ConstGauge::new(v).encode(me),
        None => Ok(()),
    }
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

impl Collector for SnapshotCollector {
    // long: the exposition written family by family; to be split by section (issue 13, not done yet)
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.snapshot.borrow();

        let info = Info::new([("version", s.version.as_str())]);
        info.encode(enc.encode_descriptor(
            "lb_agent_build",
            "Agent version",
            None,
            MetricType::Info,
        )?)?;

        gauge(
            &mut enc,
            "lb_agent_applied_revision",
            "Revision of the document in force (absent before the first apply)",
            None,
            s.revision.map(|r| r as i64),
        )?;
        gauge(
            &mut enc,
            "lb_agent_drained",
            "1 while the node is drained",
            None,
            Some(flag(s.drained)),
        )?;

        // Source.
        {
            let p = s.source.polls;
            let mut me = enc.encode_descriptor(
                "lb_agent_source_polls",
                "Polls of the central API by result",
                None,
                MetricType::Counter,
            )?;
            for (result, v) in [
                ("ok", p.ok),
                ("not_modified", p.not_modified),
                ("error", p.error),
            ] {
                ConstCounter::new(v).encode(me.encode_family(&[("result", result)])?)?;
            }
        }
        {
            let mut me = enc.encode_descriptor(
                "lb_agent_source_state",
                "1 for the source's current state",
                None,
                MetricType::Gauge,
            )?;
            for st in [
                SourceState::Init,
                SourceState::Ok,
                SourceState::Error,
                SourceState::Stale,
            ] {
                ConstGauge::new(flag(s.source.state == st))
                    .encode(me.encode_family(&[("state", st.as_str())])?)?;
            }
        }
        gauge(
            &mut enc,
            "lb_agent_source_consecutive_failures",
            "Failed polls in a row",
            None,
            Some(i64::from(s.source.consecutive_failures)),
        )?;
        gauge(
            &mut enc,
            "lb_agent_source_last_success_timestamp",
            "Unix time of the last successful poll",
            Some(&SECONDS),
            s.source.last_success.map(|t| {
                t.0.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64())
            }),
        )?;
        counter(
            &mut enc,
            "lb_agent_document_rejections",
            "Documents refused as a whole (invalid, removal ratio, failed validation or reload)",
            s.haproxy.rejections,
        )?;

        // HAProxy.
        let h = &s.haproxy;
        gauge(
            &mut enc,
            "lb_agent_haproxy_converged",
            "1 when HAProxy matched the desired state at the last pass",
            None,
            Some(flag(h.converged)),
        )?;
        counter(
            &mut enc,
            "lb_agent_runtime_commands",
            "Runtime-socket commands sent",
            h.runtime_commands,
        )?;
        counter(
            &mut enc,
            "lb_agent_runtime_command_failures",
            "Runtime-socket commands HAProxy refused",
            h.runtime_failures,
        )?;
        {
            let mut me = enc.encode_descriptor(
                "lb_agent_reloads",
                "Confirmed HAProxy reloads by reason",
                None,
                MetricType::Counter,
            )?;
            let by_reason: u64 = h.reloads_by_reason.values().sum();
            for (reason, v) in &h.reloads_by_reason {
                ConstCounter::new(*v).encode(me.encode_family(&[("reason", reason.as_str())])?)?;
            }
            // Reloads the daemon did not break down by reason still count.
            if h.reloads > by_reason || h.reloads_by_reason.is_empty() {
                ConstCounter::new(h.reloads.saturating_sub(by_reason))
                    .encode(me.encode_family(&[("reason", "unknown")])?)?;
            }
        }
        counter(
            &mut enc,
            "lb_agent_reload_failures",
            "Reloads that did not produce a healthy new worker",
            h.reload_failures,
        )?;
        counter(
            &mut enc,
            "lb_agent_convergence_failures",
            "Passes whose read-back disagreed with what was applied",
            h.convergence_failures,
        )?;
        gauge(
            &mut enc,
            "lb_agent_haproxy_old_workers",
            "Old HAProxy workers still finishing connections",
            None,
            Some(i64::from(h.old_workers)),
        )?;
        gauge(
            &mut enc,
            "lb_agent_haproxy_reload_pending",
            "1 while a reload waits for min_reload_interval",
            None,
            Some(flag(!h.pending_reload.is_empty())),
        )?;
        gauge(
            &mut enc,
            "lb_agent_haproxy_reload_attempts",
            "Failed reload attempts in a row (0 after a confirmed reload); retried with backoff",
            None,
            Some(i64::from(h.reload_attempts)),
        )?;
        gauge(
            &mut enc,
            "lb_agent_haproxy_next_reload_timestamp_seconds",
            "When the wanted reload is attempted next (Unix time); absent when none is wanted",
            None,
            h.next_reload_at.map(|t| {
                t.0.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64)
            }),
        )?;

        az_routing(&mut enc, &h.az_routing)?;

        // BIRD.
        {
            let mut me = enc.encode_descriptor(
                "lb_agent_bird_reconfigures",
                "BIRD reconfigure passes by result",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(s.bird.reconfigures)
                .encode(me.encode_family(&[("result", "ok")])?)?;
            ConstCounter::new(s.bird.failures).encode(me.encode_family(&[("result", "error")])?)?;
        }
        gauge(
            &mut enc,
            "lb_agent_bird_ok",
            "1 when BIRD was confirmed to run the desired prefix sets",
            None,
            Some(flag(s.bird.ok)),
        )?;
        let export_known = matches!(s.bird.export_check.as_str(), "configured" | "discovered");
        gauge(
            &mut enc,
            "lb_agent_bird_not_exported",
            "Prefixes in BIRD's sets that no BGP protocol exports (bird.conf or VIP interface problem); absent when the check cannot run",
            None,
            export_known.then_some(s.bird.not_exported.len() as i64),
        )?;

        // VIPs and services.
        {
            let mut me = enc.encode_descriptor(
                "lb_agent_vip_announced",
                "1 when the VIP's prefix is announced",
                None,
                MetricType::Gauge,
            )?;
            for v in &s.vips {
                ConstGauge::new(flag(v.announced))
                    .encode(me.encode_family(&[("vip", v.address.as_str())])?)?;
            }
        }
        {
            let mut me = enc.encode_descriptor(
                "lb_agent_vip_exported",
                "1 when a BGP protocol exports the VIP's prefix BIRD holds in a set, 0 when none does; absent when unknown",
                None,
                MetricType::Gauge,
            )?;
            for v in &s.vips {
                if let Some(e) = v.exported {
                    ConstGauge::new(flag(e))
                        .encode(me.encode_family(&[("vip", v.address.as_str())])?)?;
                }
            }
        }
        {
            let mut me = enc.encode_descriptor(
                "lb_agent_service_healthy",
                "1 when the service passes its checks (rise/fall applied)",
                None,
                MetricType::Gauge,
            )?;
            for v in &s.vips {
                for svc in &v.services {
                    ConstGauge::new(flag(svc.healthy)).encode(me.encode_family(&[
                        ("vip", v.address.as_str()),
                        ("service", svc.name.as_str()),
                    ])?)?;
                }
            }
        }

        let present: BTreeSet<(&str, &str)> = s
            .vips
            .iter()
            .flat_map(|v| {
                v.services
                    .iter()
                    .map(move |svc| (v.address.as_str(), svc.name.as_str()))
            })
            .collect();
        let mut checks = lock(&self.checks);
        checks.retain(|(vip, svc), _| present.contains(&(vip.as_str(), svc.as_str())));
        {
            let mut me = enc.encode_descriptor(
                "lb_agent_check_results",
                "Health checks by VIP, service and result",
                None,
                MetricType::Counter,
            )?;
            for ((vip, svc), c) in checks.iter() {
                for (result, v) in [("ok", c.ok), ("fail", c.fail), ("timeout", c.timeout)] {
                    ConstCounter::new(v).encode(me.encode_family(&[
                        ("vip", vip.as_str()),
                        ("service", svc.as_str()),
                        ("result", result),
                    ])?)?;
                }
            }
        }
        {
            let mut me = enc.encode_descriptor(
                "lb_agent_check_duration",
                "Health check duration by VIP and service",
                Some(&SECONDS),
                MetricType::Histogram,
            )?;
            for ((vip, svc), c) in checks.iter() {
                c.latency.encode(
                    me.encode_family(&[("vip", vip.as_str()), ("service", svc.as_str())])?,
                )?;
            }
        }
        Ok(())
    }
}

/// Per AZ-routed pool and zone: servers, usable servers, and whether the
/// zone's requests spill to other zones (always described, even empty).
fn az_routing(
    enc: &mut DescriptorEncoder<'_>,
    pools: &[crate::plan::az::PoolRoutes],
) -> Result<(), std::fmt::Error> {
    type Value = fn(&crate::plan::az::ZoneRoute) -> i64;
    let families: [(&str, &str, Value); 3] = [
        (
            "lb_agent_az_servers",
            "Servers of the zone in the pool (document)",
            |z| z.servers as i64,
        ),
        (
            "lb_agent_az_healthy_servers",
            "Usable servers of the zone's backend (what nbsrv counts) at the last pass",
            |z| z.healthy as i64,
        ),
        (
            "lb_agent_az_spilling",
            "1 while the zone's requests are served by other zones (evacuated or no usable server)",
            |z| i64::from(z.reason.is_some()),
        ),
    ];
    for (name, help, value) in families {
        let mut me = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for p in pools {
            for z in &p.zones {
                ConstGauge::new(value(z)).encode(
                    me.encode_family(&[("pool", p.pool.as_str()), ("az", z.zone.as_str())])?,
                )?;
            }
        }
    }
    Ok(())
}

/// Names of every metric family, as they appear on `# TYPE` lines (for
/// documentation and tests).
pub const FAMILIES: [(&str, &str); 30] = [
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

/// A parsed sample line of the exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, with its `_total`/`_bucket`/... suffix.
    pub name: String,
    /// Label pairs in order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// A strict reader of the exposition this module writes, for tests and for
/// tools that want a value without a Prometheus server. Fails on any line
/// that is neither a `#` comment of a known kind nor a well-formed sample.
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut eof = false;
    for (i, line) in text.lines().enumerate() {
        let at = |m: &str| format!("line {}: {m}: {line:?}", i + 1);
        if eof {
            return Err(at("content after # EOF"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let kind = rest.split(' ').next().unwrap_or("");
            if !matches!(kind, "HELP" | "TYPE" | "UNIT") || rest.split(' ').count() < 3 {
                return Err(at("malformed comment"));
            }
            continue;
        }
        samples.push(parse_sample(line).map_err(|e| at(&e))?);
    }
    if !eof {
        return Err("missing # EOF".into());
    }
    Ok(samples)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut r = r;
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r.find("=\"").ok_or("bad label")?;
            let key = r[..eq].to_string();
            r = &r[eq + 2..];
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated escape".into()),
                    },
                    Some((j, '"')) => break j,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            };
            labels.push((key, value));
            r = &r[end + 1..];
            r = r.strip_prefix(',').unwrap_or(r);
        }
    }
    let value_text = rest.strip_prefix(' ').ok_or("no space before value")?;
    let value_text = value_text.split(' ').next().unwrap_or("");
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Renders samples back as `name{k="v",...} value` lines (for test diagnostics).
pub fn describe(samples: &[Sample]) -> String {
    let mut out = String::new();
    for s in samples {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        let _ = writeln!(out, "{}{{{}}} {}", s.name, labels.join(","), s.value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::types::*;
    use std::time::UNIX_EPOCH;

    fn snapshot() -> Snapshot {
        let mut reasons = BTreeMap::new();
        reasons.insert("structure".to_string(), 2);
        reasons.insert("convergence".to_string(), 1);
        Snapshot {
            node: "lb1".into(),
            group: "blue".into(),
            version: "0.1.0".into(),
            revision: Some(1042),
            drained: false,
            source: SourceStatus {
                state: SourceState::Stale,
                last_success: Some(Timestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_000))),
                consecutive_failures: 4,
                polls: PollCounts {
                    ok: 10,
                    not_modified: 20,
                    error: 4,
                },
                ..Default::default()
            },
            haproxy: HaproxyStatus {
                converged: true,
                reloads: 3,
                reloads_by_reason: reasons,
                runtime_commands: 120,
                runtime_failures: 1,
                convergence_failures: 2,
                reload_failures: 5,
                old_workers: 1,
                rejections: 6,
                ..Default::default()
            },
            bird: BirdStatus {
                ok: true,
                reconfigures: 7,
                failures: 8,
                not_exported: vec!["192.0.2.10/32".into()],
                export_check: "discovered".into(),
                export_protocols: vec!["tor1".into()],
                ..Default::default()
            },
            vips: vec![VipStatus {
                address: "192.0.2.10/32".into(),
                announced: true,
                exported: Some(false),
                services: vec![
                    ServiceStatus {
                        name: "www_https".into(),
                        healthy: true,
                        ..Default::default()
                    },
                    ServiceStatus {
                        name: "git_ssh".into(),
                        healthy: false,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
    }

    #[test]
    fn every_family_is_declared_once_with_its_type() {
        let (_tx, rx) = watch::channel(snapshot());
        let text = Metrics::new(rx).encode().unwrap();
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        for (name, kind) in FAMILIES {
            let line = format!("# TYPE {name} {kind}");
            assert_eq!(
                types.iter().filter(|l| **l == line).count(),
                1,
                "{line} missing or repeated in\n{text}"
            );
        }
        assert_eq!(
            types.len(),
            FAMILIES.len(),
            "undocumented family in\n{text}"
        );
        assert!(text.contains("# UNIT lb_agent_apply_duration_seconds seconds"));
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.starts_with("lb_agent_")),
            "{text}"
        );
    }

    #[test]
    fn snapshot_values_become_samples() {
        let (tx, rx) = watch::channel(snapshot());
        let m = Metrics::new(rx);
        let s = parse_exposition(&m.encode().unwrap()).unwrap();
        let d = describe(&s);
        assert_eq!(
            value(&s, "lb_agent_build_info", &[("version", "0.1.0")]),
            Some(1.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_applied_revision", &[]),
            Some(1042.0),
            "{d}"
        );
        assert_eq!(
            value(
                &s,
                "lb_agent_source_polls_total",
                &[("result", "not_modified")]
            ),
            Some(20.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_source_polls_total", &[("result", "error")]),
            Some(4.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_source_state", &[("state", "stale")]),
            Some(1.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_source_state", &[("state", "ok")]),
            Some(0.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_source_last_success_timestamp_seconds", &[]),
            Some(1_700_000_000.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_reloads_total", &[("reason", "structure")]),
            Some(2.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_reloads_total", &[("reason", "convergence")]),
            Some(1.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_reloads_total", &[("reason", "unknown")]),
            None,
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_runtime_commands_total", &[]),
            Some(120.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_convergence_failures_total", &[]),
            Some(2.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_document_rejections_total", &[]),
            Some(6.0),
            "{d}"
        );
        assert_eq!(
            value(
                &s,
                "lb_agent_bird_reconfigures_total",
                &[("result", "error")]
            ),
            Some(8.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_vip_announced", &[("vip", "192.0.2.10/32")]),
            Some(1.0),
            "{d}"
        );
        assert_eq!(
            value(
                &s,
                "lb_agent_service_healthy",
                &[("vip", "192.0.2.10/32"), ("service", "git_ssh")]
            ),
            Some(0.0),
            "{d}"
        );

        assert_eq!(
            value(&s, "lb_agent_bird_not_exported", &[]),
            Some(1.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_vip_exported", &[("vip", "192.0.2.10/32")]),
            Some(0.0),
            "{d}"
        );

        // A new snapshot is what the next scrape shows.
        let mut next = snapshot();
        next.bird.export_check = "unknown".into();
        next.vips[0].exported = None;
        next.revision = None;
        next.drained = true;
        next.vips[0].announced = false;
        next.haproxy.reloads_by_reason.clear();
        tx.send_replace(next);
        let s = parse_exposition(&m.encode().unwrap()).unwrap();
        assert_eq!(value(&s, "lb_agent_applied_revision", &[]), None);
        assert_eq!(value(&s, "lb_agent_bird_not_exported", &[]), None);
        assert_eq!(
            value(&s, "lb_agent_vip_exported", &[("vip", "192.0.2.10/32")]),
            None
        );
        assert_eq!(value(&s, "lb_agent_drained", &[]), Some(1.0));
        assert_eq!(
            value(&s, "lb_agent_vip_announced", &[("vip", "192.0.2.10/32")]),
            Some(0.0)
        );
        assert_eq!(
            value(&s, "lb_agent_reloads_total", &[("reason", "unknown")]),
            Some(3.0)
        );
    }

    #[test]
    fn observations_feed_histograms_and_check_counters_for_known_services_only() {
        let (tx, rx) = watch::channel(snapshot());
        let m = Metrics::new(rx);
        m.observe_apply(0.02);
        m.observe_apply(3.0);
        m.observe_apply(f64::NAN);
        m.observe_apply(-1.0);
        m.observe_check(
            "192.0.2.10/32",
            "www_https",
            CheckOutcome::Ok,
            Duration::from_micros(300),
        );
        m.observe_check(
            "192.0.2.10/32",
            "www_https",
            CheckOutcome::Ok,
            Duration::from_millis(2),
        );
        m.observe_check(
            "192.0.2.10/32",
            "git_ssh",
            CheckOutcome::Timeout,
            Duration::from_millis(500),
        );
        m.observe_check(
            "198.51.100.1/32",
            "gone",
            CheckOutcome::Fail,
            Duration::from_millis(1),
        );
        let s = parse_exposition(&m.encode().unwrap()).unwrap();
        let d = describe(&s);
        assert_eq!(
            value(&s, "lb_agent_apply_duration_seconds_count", &[]),
            Some(2.0),
            "{d}"
        );
        assert_eq!(
            value(
                &s,
                "lb_agent_apply_duration_seconds_bucket",
                &[("le", "0.025")]
            ),
            Some(1.0),
            "{d}"
        );
        assert_eq!(
            value(
                &s,
                "lb_agent_apply_duration_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Some(2.0),
            "{d}"
        );
        let www = [("vip", "192.0.2.10/32"), ("service", "www_https")];
        assert_eq!(
            value(
                &s,
                "lb_agent_check_results_total",
                &[www[0], www[1], ("result", "ok")]
            ),
            Some(2.0),
            "{d}"
        );
        assert_eq!(
            value(
                &s,
                "lb_agent_check_results_total",
                &[www[0], www[1], ("result", "fail")]
            ),
            Some(0.0),
            "{d}"
        );
        assert_eq!(
            value(
                &s,
                "lb_agent_check_results_total",
                &[
                    ("vip", "192.0.2.10/32"),
                    ("service", "git_ssh"),
                    ("result", "timeout")
                ]
            ),
            Some(1.0),
            "{d}"
        );
        assert_eq!(
            value(&s, "lb_agent_check_duration_seconds_count", &www),
            Some(2.0),
            "{d}"
        );
        assert_eq!(
            value(
                &s,
                "lb_agent_check_duration_seconds_bucket",
                &[www[0], www[1], ("le", "0.0005")]
            ),
            Some(1.0),
            "{d}"
        );
        assert!(
            !d.contains("gone"),
            "a service absent from the snapshot is exported:\n{d}"
        );

        // A service leaving the snapshot takes its series with it.
        let mut next = snapshot();
        next.vips[0].services.retain(|s| s.name != "git_ssh");
        tx.send_replace(next);
        let d = describe(&parse_exposition(&m.encode().unwrap()).unwrap());
        assert!(!d.contains("git_ssh"), "{d}");
        tx.send_replace(snapshot());
        let s = parse_exposition(&m.encode().unwrap()).unwrap();
        assert_eq!(
            value(
                &s,
                "lb_agent_check_duration_seconds_count",
                &[("vip", "192.0.2.10/32"), ("service", "git_ssh")]
            ),
            None
        );
    }

    /// [`snapshot`] with every optional part of the exposition present:
    /// reloads of no known reason, a wanted reload, AZ routing with a
    /// spilling zone, a second VIP of unknown export, check observations
    /// (one of a service the snapshot no longer has).
    fn rich_metrics() -> Metrics {
        let mut s = snapshot();
        s.drained = true;
        s.haproxy.reloads = 5;
        s.haproxy.pending_reload = vec!["new frontend".into()];
        s.haproxy.reload_attempts = 2;
        s.haproxy.next_reload_at = Some(Timestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_030)));
        let zone =
            |zone: &str, servers, healthy, reason: Option<&str>| crate::plan::az::ZoneRoute {
                zone: zone.into(),
                servers,
                healthy,
                evacuated: false,
                to: vec![zone.into()],
                reason: reason.map(Into::into),
            };
        s.haproxy.az_routing = vec![crate::plan::az::PoolRoutes {
            pool: "www".into(),
            zones: vec![
                zone("az1", 2, 2, None),
                zone("az2", 1, 0, Some("az2 has no usable server")),
            ],
        }];
        s.vips.push(VipStatus {
            address: "2001:db8:10::10/128".into(),
            announced: false,
            exported: None,
            services: vec![ServiceStatus {
                name: "www_https".into(),
                healthy: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        // The receiver keeps the last value after the sender is gone.
        let (_, rx) = watch::channel(s);
        let m = Metrics::new(rx);
        m.observe_apply(0.02);
        m.observe_apply(3.0);
        for (vip, service, outcome, ms) in [
            ("192.0.2.10/32", "www_https", CheckOutcome::Ok, 1),
            ("192.0.2.10/32", "www_https", CheckOutcome::Fail, 40),
            ("192.0.2.10/32", "git_ssh", CheckOutcome::Timeout, 500),
            ("2001:db8:10::10/128", "www_https", CheckOutcome::Ok, 2),
            ("198.51.100.1/32", "gone", CheckOutcome::Fail, 1),
        ] {
            m.observe_check(vip, service, outcome, Duration::from_millis(ms));
        }
        m
    }

    /// The whole exposition of [`rich_metrics`], byte for byte: families,
    /// order, HELP and UNIT lines. `UPDATE_GOLDEN=1 cargo test --lib metrics`
    /// rewrites the golden file; review its diff like any other change.
    #[test]
    fn the_exposition_is_the_golden_file() {
        let text = rich_metrics().encode().unwrap();
        let golden =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden/metrics.txt");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &text).unwrap();
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", golden.display()));
        assert_eq!(
            text,
            want,
            "{} differs from the exposition",
            golden.display()
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut snap = snapshot();
        snap.vips[0].address = "we\"ird\\vip\n".into();
        let (_tx, rx) = watch::channel(snap);
        let s = parse_exposition(&Metrics::new(rx).encode().unwrap()).unwrap();
        assert_eq!(
            value(&s, "lb_agent_vip_announced", &[("vip", "we\"ird\\vip\n")]),
            Some(1.0)
        );
    }

    #[test]
    fn the_parser_rejects_garbage() {
        assert!(parse_exposition("lb_agent_x 1\n").is_err(), "no EOF");
        assert!(parse_exposition("lb_agent_x\n# EOF\n").is_err());
        assert!(parse_exposition("lb_agent_x{a=\"b} 1\n# EOF\n").is_err());
        assert!(parse_exposition("lb_agent_x one\n# EOF\n").is_err());
        assert!(parse_exposition("# EOF\nlb_agent_x 1\n").is_err());
        assert_eq!(
            parse_exposition("lb_agent_x{a=\"b\",c=\"d\"} 1.5\n# EOF\n").unwrap()[0]
                .labels
                .len(),
            2
        );
    }
}
