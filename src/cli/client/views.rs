//! The human views of `status` and `vips` ([`render_status`],
//! [`render_vips`]): pure functions of a snapshot and `now`.
//! Part of [`crate::cli::client`] (docs/architecture.md).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::status::types::{
    BirdStatus, HaproxyStatus, Snapshot, SourceState, SourceStatus, Timestamp, VipStatus,
};

use super::table::{sanitize, table, Cell, Colour, Style};

/// `3m 12s ago`, or `never`; a time ahead of `now` (clock skew) reads `0s ago`.
pub(super) fn when(t: Option<&Timestamp>, now: SystemTime) -> String {
    match t {
        None => "never".to_string(),
        Some(t) => format!("{} ago", whole_secs(t.age(now))),
    }
}

/// `in 20s` for a time still to come (a scheduled retry), `now` once due.
pub(super) fn until(t: Option<&Timestamp>, now: SystemTime) -> String {
    match t.map(|t| t.0.duration_since(now)) {
        None => "never".to_string(),
        Some(Ok(ahead)) if ahead >= Duration::from_secs(1) => format!("in {}", whole_secs(ahead)),
        Some(_) => "now".to_string(),
    }
}

fn whole_secs(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

/// One line per zone of each AZ-routed pool: `www 2/2 healthy: az1 → az1`,
/// spills in yellow (`az1 → az2+az3 (az1 evacuated)`), a zone going
/// nowhere in red.
fn az_routing_lines(pools: &[crate::plan::az::PoolRoutes], style: Style) -> Vec<Line> {
    let mut out = Vec::new();
    for p in pools {
        for z in &p.zones {
            let arrow = sanitize(&z.arrow());
            let arrow = match (&z.reason, z.to.is_empty()) {
                (None, _) => arrow,
                (Some(_), false) => style.paint(Colour::Yellow, &arrow),
                (Some(_), true) => style.paint(Colour::Red, &arrow),
            };
            let label = if out.is_empty() { "routing" } else { "" };
            out.push((
                label,
                format!(
                    "{} {}/{} healthy: {arrow}",
                    sanitize(&p.pool),
                    z.healthy,
                    z.servers
                ),
            ));
        }
    }
    out
}

/// One line of the summary block of `lb-agent status`: its label (`""` on a
/// continuation line) and its value.
type Line = (&'static str, String);

/// The human view of `lb-agent status`: a summary block, then the VIP table.
pub fn render_status(s: &Snapshot, now: SystemTime, style: Style) -> String {
    let mut lines = node_lines(s, now, style);
    lines.extend(source_lines(&s.source, now, style));
    lines.extend(haproxy_lines(&s.haproxy, now, style));
    lines.extend(az_routing_lines(&s.haproxy.az_routing, style));
    lines.extend(bird_lines(&s.bird, now, style));
    let announced = s.vips.iter().filter(|v| v.announced).count();
    lines.push(("vips", format!("{announced}/{} announced", s.vips.len())));

    let mut out = String::new();
    for (label, value) in lines {
        let _ = writeln!(out, "{:<10}{}", label, value);
    }
    if !s.vips.is_empty() {
        out.push('\n');
        out.push_str(&vip_table(&s.vips, style));
    }
    out
}

/// `node` (name, group, version, uptime), `revision` and `drained` (why,
/// since when, by whom).
fn node_lines(s: &Snapshot, now: SystemTime, style: Style) -> Vec<Line> {
    let mut node = format!(
        "{} (group {}), lb-agent {}",
        sanitize(&s.node),
        sanitize(&s.group),
        sanitize(&s.version)
    );
    if let Some(t) = &s.started_at {
        let _ = write!(
            node,
            ", up {}",
            humantime::format_duration(Duration::from_secs(t.age(now).as_secs()))
        );
    }
    let revision = s
        .revision
        .map_or_else(|| "none applied yet".to_string(), |r| r.to_string());
    let drained = if s.drained {
        let mut d = style.paint(Colour::Yellow, "yes");
        if let Some(info) = &s.drain {
            let _ = write!(d, ": {}", sanitize(&info.reason));
            if let Some(since) = &info.since {
                let _ = write!(d, " (since {}, {})", since, when(Some(since), now));
            }
            if let Some(by) = &info.by {
                let _ = write!(d, " by {}", sanitize(by));
            }
        }
        d
    } else {
        "no".to_string()
    };
    vec![("node", node), ("revision", revision), ("drained", drained)]
}

/// `source`: its state in colour, URL, last success, the cached document;
/// the watch of a watch-based source; the last error.
fn source_lines(src: &SourceStatus, now: SystemTime, style: Style) -> Vec<Line> {
    let mut lines = Vec::new();
    let state_colour = match src.state {
        SourceState::Ok => Colour::Green,
        SourceState::Init | SourceState::Error => Colour::Yellow,
        SourceState::Stale | SourceState::Unknown => Colour::Red,
    };
    let mut source = style.paint(state_colour, src.state.as_str());
    if !src.url.is_empty() {
        let _ = write!(source, " {}", sanitize(&src.url));
    }
    let _ = write!(
        source,
        ", last success {}",
        when(src.last_success.as_ref(), now)
    );
    if src.from_cache {
        source.push_str(", running from the cached document");
    }
    lines.push(("source", source));
    if let Some(st) = &src.stream {
        let revision = st
            .revision
            .map_or_else(|| "none".to_string(), |r| r.to_string());
        lines.push((
            "",
            format!(
                "{} on {}, store revision {revision}, {} listings, {} compactions",
                sanitize(&st.watch_state),
                sanitize(&st.endpoint),
                st.lists,
                st.compactions
            ),
        ));
    }
    if let Some(e) = &src.error {
        let n = src.consecutive_failures;
        let times = if n > 0 {
            format!(" ({n} in a row)")
        } else {
            String::new()
        };
        lines.push((
            "",
            style.paint(Colour::Red, &format!("error{times}: {}", sanitize(e))),
        ));
    }
    lines
}

/// `haproxy`: converged, reloads, runtime commands, failed and retried
/// reloads, old workers; the last error, the pending reload; `rejected`
/// and `warnings` of the document.
fn haproxy_lines(h: &HaproxyStatus, now: SystemTime, style: Style) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut haproxy = if h.converged {
        style.paint(Colour::Green, "converged")
    } else {
        style.paint(Colour::Red, "not converged")
    };
    let _ = write!(
        haproxy,
        ", {} reloads (last {}), {} runtime commands",
        h.reloads,
        when(h.last_reload.as_ref(), now),
        h.runtime_commands
    );
    if h.reload_failures > 0 {
        let _ = write!(haproxy, ", {} failed reloads", h.reload_failures);
    }
    if h.reload_attempts > 0 {
        let _ = write!(
            haproxy,
            ", retrying (attempt {} failed, next {})",
            h.reload_attempts,
            until(h.next_reload_at.as_ref(), now)
        );
    }
    if h.old_workers > 0 {
        let _ = write!(haproxy, ", {} old workers", h.old_workers);
    }
    lines.push(("haproxy", haproxy));
    if let Some(e) = &h.error {
        lines.push((
            "",
            style.paint(Colour::Red, &format!("error: {}", sanitize(e))),
        ));
    }
    if !h.pending_reload.is_empty() {
        let reasons: Vec<String> = h.pending_reload.iter().map(|r| sanitize(r)).collect();
        lines.push(("", format!("reload pending: {}", reasons.join("; "))));
    }
    if let Some(rej) = &h.rejected {
        lines.push((
            "rejected",
            style.paint(
                Colour::Red,
                &format!("revision {}: {}", rej.revision, sanitize(&rej.error)),
            ),
        ));
    }

    for (i, w) in h.document_warnings.iter().enumerate() {
        lines.push((
            if i == 0 { "warnings" } else { "" },
            style.paint(Colour::Yellow, &sanitize(w)),
        ));
    }
    lines
}

/// `bird`: ok, last reconfigure; the last error; the export check.
fn bird_lines(b: &BirdStatus, now: SystemTime, style: Style) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut bird = if b.ok {
        style.paint(Colour::Green, "ok")
    } else {
        style.paint(Colour::Red, "not ok")
    };
    let _ = write!(
        bird,
        ", last reconfigure {}",
        when(b.last_reconfigure.as_ref(), now)
    );
    lines.push(("bird", bird));
    if let Some(e) = &b.error {
        lines.push((
            "",
            style.paint(Colour::Red, &format!("error: {}", sanitize(e))),
        ));
    }
    if let Some(line) = export_line(b) {
        lines.push(("", style.paint(Colour::Yellow, &line)));
    }
    lines
}

/// The VIP table under the summary: address, announced, healthy services,
/// reason.
fn vip_table(vips: &[VipStatus], style: Style) -> String {
    let rows: Vec<Vec<Cell>> = vips
        .iter()
        .map(|v| {
            let healthy = v.services.iter().filter(|s| s.healthy).count();
            let all = healthy == v.services.len() && !v.services.is_empty();
            vec![
                (sanitize(&v.address), Colour::None),
                announced_cell(v),
                (
                    format!("{healthy}/{}", v.services.len()),
                    if all { Colour::Green } else { Colour::Red },
                ),
                (
                    v.reason
                        .as_deref()
                        .map_or_else(|| "-".to_string(), sanitize),
                    Colour::None,
                ),
            ]
        })
        .collect();
    table(&["ADDRESS", "ANNOUNCED", "HEALTHY", "REASON"], &rows, style)
}

/// The export check's line under `bird`, when it has something to say.
fn export_line(b: &BirdStatus) -> Option<String> {
    let protocols: Vec<String> = b.export_protocols.iter().map(|p| sanitize(p)).collect();
    if !b.not_exported.is_empty() {
        let p: Vec<String> = b.not_exported.iter().map(|p| sanitize(p)).collect();
        return Some(format!(
            "not exported by any BGP protocol ({}): {}",
            protocols.join(", "),
            p.join(", ")
        ));
    }
    (b.export_check == "no_bgp_session_up")
        .then(|| "exports not confirmed: no BGP session is up".to_string())
}

fn announced_cell(v: &VipStatus) -> Cell {
    if v.exported == Some(false) {
        let (text, _) = announced_cell(&VipStatus {
            exported: None,
            ..v.clone()
        });
        return (format!("{text}, not exported"), Colour::Red);
    }
    let (text, colour) = if v.draining {
        ("draining", Colour::Yellow)
    } else if v.demoted {
        ("demoted", Colour::Yellow)
    } else if v.announced {
        ("yes", Colour::Green)
    } else {
        ("no", Colour::Red)
    };
    (text.to_string(), colour)
}

/// The human view of `lb-agent vips`: a header, then one line per VIP.
pub fn render_vips(vips: &[VipStatus], style: Style) -> String {
    if vips.is_empty() {
        return "no VIPs in the applied document\n".to_string();
    }
    let rows: Vec<Vec<Cell>> = vips
        .iter()
        .map(|v| {
            // Colour inside the cell would skew the width; colour the whole
            // cell red when any service is down instead.
            let services: Vec<String> = v
                .services
                .iter()
                .map(|s| {
                    let state = match (s.healthy, s.pending) {
                        (true, _) => "up",
                        (false, true) => "pending",
                        (false, false) => "down",
                    };
                    format!("{}:{state}", sanitize(&s.name))
                })
                .collect();
            let any_down = v.services.iter().any(|s| !s.healthy && !s.pending);
            let text = if services.is_empty() {
                "(none)".to_string()
            } else {
                services.join(" ")
            };
            vec![
                (sanitize(&v.address), Colour::None),
                announced_cell(v),
                (
                    text,
                    if any_down || v.services.is_empty() {
                        Colour::Red
                    } else {
                        Colour::Green
                    },
                ),
                (
                    v.reason
                        .as_deref()
                        .map_or_else(|| "-".to_string(), sanitize),
                    Colour::None,
                ),
            ]
        })
        .collect();
    table(
        &["ADDRESS", "ANNOUNCED", "SERVICES", "REASON"],
        &rows,
        style,
    )
}
