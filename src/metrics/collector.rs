//! The snapshot-derived families and the per-service check series, written
//! at scrape time section by section in the order of
//! [`FAMILIES`](super::FAMILIES) (docs/status.md, "Metrics").

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use tokio::sync::watch;

use crate::status::types::{BirdStatus, HaproxyStatus, Snapshot, SourceState, VipStatus};

use super::{lock, CheckMap, SECONDS};

/// Encodes the snapshot-derived families and the per-service check series.
#[derive(Debug)]
pub(super) struct SnapshotCollector {
    pub(super) snapshot: watch::Receiver<Snapshot>,
    pub(super) checks: Arc<Mutex<CheckMap>>,
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
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.snapshot.borrow();
        agent(&mut enc, &s)?;
        source(&mut enc, &s)?;
        haproxy(&mut enc, &s.haproxy)?;
        reloads(&mut enc, &s.haproxy)?;
        az_routing(&mut enc, &s.haproxy.az_routing)?;
        bird(&mut enc, &s.bird)?;
        vips(&mut enc, &s.vips)?;
        checks(&mut enc, &s.vips, &self.checks)
    }
}

/// The agent and the document in force: version, applied revision, drained.
fn agent(enc: &mut DescriptorEncoder, s: &Snapshot) -> std::fmt::Result {
    let info = Info::new([("version", s.version.as_str())]);
    info.encode(enc.encode_descriptor(
        "lb_agent_build",
        "Agent version",
        None,
        MetricType::Info,
    )?)?;

    gauge(
        enc,
        "lb_agent_applied_revision",
        "Revision of the document in force (absent before the first apply)",
        None,
        s.revision.map(|r| r as i64),
    )?;
    gauge(
        enc,
        "lb_agent_drained",
        "1 while the node is drained",
        None,
        Some(flag(s.drained)),
    )?;
    Ok(())
}

/// The source: polls by result, its state, failures in a row, last success;
/// then the documents refused as a whole.
fn source(enc: &mut DescriptorEncoder, s: &Snapshot) -> std::fmt::Result {
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
        enc,
        "lb_agent_source_consecutive_failures",
        "Failed polls in a row",
        None,
        Some(i64::from(s.source.consecutive_failures)),
    )?;
    gauge(
        enc,
        "lb_agent_source_last_success_timestamp",
        "Unix time of the last successful poll",
        Some(&SECONDS),
        s.source.last_success.map(|t| {
            t.0.duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        }),
    )?;
    counter(
        enc,
        "lb_agent_document_rejections",
        "Documents refused as a whole (invalid, removal ratio, failed validation or reload)",
        s.haproxy.rejections,
    )?;
    Ok(())
}

/// HAProxy: converged, runtime commands sent and refused.
fn haproxy(enc: &mut DescriptorEncoder, h: &HaproxyStatus) -> std::fmt::Result {
    gauge(
        enc,
        "lb_agent_haproxy_converged",
        "1 when HAProxy matched the desired state at the last pass",
        None,
        Some(flag(h.converged)),
    )?;
    counter(
        enc,
        "lb_agent_runtime_commands",
        "Runtime-socket commands sent",
        h.runtime_commands,
    )?;
    counter(
        enc,
        "lb_agent_runtime_command_failures",
        "Runtime-socket commands HAProxy refused",
        h.runtime_failures,
    )?;
    Ok(())
}

/// HAProxy reloads: by reason, failed, the read-back failures, old workers,
/// and the wanted reload (pending, attempts, next attempt).
fn reloads(enc: &mut DescriptorEncoder, h: &HaproxyStatus) -> std::fmt::Result {
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
        enc,
        "lb_agent_reload_failures",
        "Reloads that did not produce a healthy new worker",
        h.reload_failures,
    )?;
    counter(
        enc,
        "lb_agent_convergence_failures",
        "Passes whose read-back disagreed with what was applied",
        h.convergence_failures,
    )?;
    counter(
        enc,
        "lb_agent_scoped_passes",
        "Passes that read and planned only the pools a server change touched",
        h.scoped_passes,
    )?;
    gauge(
        enc,
        "lb_agent_haproxy_config_file_behind",
        "1 while the config file on disk lags the runtime state after a scoped pass",
        None,
        Some(flag(h.config_file_behind)),
    )?;
    gauge(
        enc,
        "lb_agent_haproxy_old_workers",
        "Old HAProxy workers still finishing connections",
        None,
        Some(i64::from(h.old_workers)),
    )?;
    gauge(
        enc,
        "lb_agent_haproxy_reload_pending",
        "1 while a reload waits for min_reload_interval",
        None,
        Some(flag(!h.pending_reload.is_empty())),
    )?;
    gauge(
        enc,
        "lb_agent_haproxy_reload_attempts",
        "Failed reload attempts in a row (0 after a confirmed reload); retried with backoff",
        None,
        Some(i64::from(h.reload_attempts)),
    )?;
    gauge(
        enc,
        "lb_agent_haproxy_next_reload_timestamp_seconds",
        "When the wanted reload is attempted next (Unix time); absent when none is wanted",
        None,
        h.next_reload_at.map(|t| {
            t.0.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        }),
    )?;
    Ok(())
}

/// BIRD: reconfigures by result, confirmed, prefixes no BGP protocol exports.
fn bird(enc: &mut DescriptorEncoder, b: &BirdStatus) -> std::fmt::Result {
    {
        let mut me = enc.encode_descriptor(
            "lb_agent_bird_reconfigures",
            "BIRD reconfigure passes by result",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(b.reconfigures).encode(me.encode_family(&[("result", "ok")])?)?;
        ConstCounter::new(b.failures).encode(me.encode_family(&[("result", "error")])?)?;
    }
    gauge(
        enc,
        "lb_agent_bird_ok",
        "1 when BIRD was confirmed to run the desired prefix sets",
        None,
        Some(flag(b.ok)),
    )?;
    let export_known = matches!(b.export_check.as_str(), "configured" | "discovered");
    gauge(
        enc,
        "lb_agent_bird_not_exported",
        "Prefixes in BIRD's sets that no BGP protocol exports (bird.conf or VIP interface problem); absent when the check cannot run",
        None,
        export_known.then_some(b.not_exported.len() as i64),
    )?;
    Ok(())
}

/// Per VIP: announced, exported; per service: healthy.
fn vips(enc: &mut DescriptorEncoder, vips: &[VipStatus]) -> std::fmt::Result {
    {
        let mut me = enc.encode_descriptor(
            "lb_agent_vip_announced",
            "1 when the VIP's prefix is announced",
            None,
            MetricType::Gauge,
        )?;
        for v in vips {
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
        for v in vips {
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
        for v in vips {
            for svc in &v.services {
                ConstGauge::new(flag(svc.healthy)).encode(me.encode_family(&[
                    ("vip", v.address.as_str()),
                    ("service", svc.name.as_str()),
                ])?)?;
            }
        }
    }
    Ok(())
}

/// The check series of the services in the snapshot (the others are
/// dropped here, so a removed service leaves no series behind): results
/// and durations.
fn checks(
    enc: &mut DescriptorEncoder,
    vips: &[VipStatus],
    checks: &Mutex<CheckMap>,
) -> std::fmt::Result {
    let present: BTreeSet<(&str, &str)> = vips
        .iter()
        .flat_map(|v| {
            v.services
                .iter()
                .map(move |svc| (v.address.as_str(), svc.name.as_str()))
        })
        .collect();
    let mut checks = lock(checks);
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
            c.latency
                .encode(me.encode_family(&[("vip", vip.as_str()), ("service", svc.as_str())])?)?;
        }
    }
    Ok(())
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
