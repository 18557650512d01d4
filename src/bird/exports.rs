//! Which BGP protocols confirm that BIRD exports the agent's prefixes, and
//! what their answers mean (pure; docs/gating.md, "Export confirmation").
//!
//! With `[bird] export_protocols` set, those protocols are asked. With the
//! default `[]`, the protocols are discovered from `show protocols`: every
//! protocol of type `BGP` whose state is `up` (an established session). A
//! session that is down exports nothing (`No valid tables`), so it is no
//! evidence about bird.conf: when no BGP session is up, the check reports
//! [`ExportScope::NoSessionUp`] and flags nothing.
//!
//! A desired prefix is *exported* when at least one asked protocol exports
//! it (one ToR session carrying it is enough for the VIP to attract
//! traffic; a route collector or iBGP session that exports nothing must not
//! make every VIP look broken).

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::control::ProtocolRow;

/// The protocols an export check asks, and how they were chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ExportScope {
    /// Not known: no check has completed since the last failed pass (BIRD
    /// not answering, `configure` refused, sets not confirmed).
    #[default]
    Unknown,
    /// `[bird] export_protocols`, asked whatever their state.
    Configured(Vec<String>),
    /// `export_protocols = []`: the BGP protocols that are up now.
    Discovered(Vec<String>),
    /// `export_protocols = []` and no BGP protocol is up: nothing can be
    /// confirmed, nothing is flagged.
    NoSessionUp,
}

impl ExportScope {
    /// The label used on the status socket and in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExportScope::Unknown => "unknown",
            ExportScope::Configured(_) => "configured",
            ExportScope::Discovered(_) => "discovered",
            ExportScope::NoSessionUp => "no_bgp_session_up",
        }
    }

    /// The protocols asked (empty for `Unknown` and `NoSessionUp`).
    pub fn protocols(&self) -> &[String] {
        match self {
            ExportScope::Configured(p) | ExportScope::Discovered(p) => p,
            ExportScope::Unknown | ExportScope::NoSessionUp => &[],
        }
    }

    /// True when the check ran and its `not_exported` means something.
    pub fn is_known(&self) -> bool {
        matches!(
            self,
            ExportScope::Configured(_) | ExportScope::Discovered(_)
        )
    }
}

/// The protocols to ask: `configured` when set, else the BGP rows of
/// `show protocols` that are `up`.
pub fn scope(configured: &[String], rows: &[ProtocolRow]) -> ExportScope {
    if !configured.is_empty() {
        return ExportScope::Configured(configured.to_vec());
    }
    let up: Vec<String> = rows
        .iter()
        .filter(|r| r.proto.eq_ignore_ascii_case("BGP") && r.state == "up")
        .map(|r| r.name.clone())
        .collect();
    if up.is_empty() {
        ExportScope::NoSessionUp
    } else {
        ExportScope::Discovered(up)
    }
}

/// The desired prefixes no asked protocol exports (`exported`: the union of
/// their `show route export`).
pub fn not_exported(wanted: &BTreeSet<IpNet>, exported: &BTreeSet<IpNet>) -> BTreeSet<IpNet> {
    wanted.difference(exported).copied().collect()
}

/// One VIP's `exported` on the status socket: `None` when it is in none of
/// the sets BIRD runs (nothing to export) or the check did not run, else
/// whether an asked protocol exports it.
pub fn vip_exported(
    scope: &ExportScope,
    in_bird_sets: bool,
    not_exported: &BTreeSet<IpNet>,
    vip: &IpNet,
) -> Option<bool> {
    (in_bird_sets && scope.is_known()).then(|| !not_exported.contains(vip))
}

/// What changed between two known results, for a log line per transition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transition {
    /// Newly found not exported (a WARN).
    pub flagged: BTreeSet<IpNet>,
    /// Exported again, or no longer desired (an INFO).
    pub cleared: BTreeSet<IpNet>,
}

/// Compares the last known flagged set with the new one. Unknown periods in
/// between (BIRD down) are not transitions: the caller keeps `before` from
/// the last *known* result, so a prefix still missing after BIRD comes back
/// is not warned about again.
pub fn transition(before: &BTreeSet<IpNet>, now: &BTreeSet<IpNet>) -> Transition {
    Transition {
        flagged: now.difference(before).copied().collect(),
        cleared: before.difference(now).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, proto: &str, state: &str) -> ProtocolRow {
        ProtocolRow {
            name: name.into(),
            proto: proto.into(),
            table: "---".into(),
            state: state.into(),
            since: "05:16:46.109".into(),
            info: String::new(),
        }
    }

    fn nets(v: &[&str]) -> BTreeSet<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scope_table() {
        let rows = [
            row("device1", "Device", "up"),
            row("acast_direct", "Direct", "up"),
            row("kernel4", "Kernel", "up"),
            row("tor1", "BGP", "up"),
            row("tor2", "BGP", "start"),
            row("collector", "BGP", "down"),
            row("tor3", "BGP", "up"),
        ];
        let down_only = [row("device1", "Device", "up"), row("tor1", "BGP", "start")];
        let cases: &[(&[&str], &[ProtocolRow], ExportScope)] = &[
            // Configured protocols are asked whatever BIRD shows.
            (&["tor2"], &rows, ExportScope::Configured(names(&["tor2"]))),
            (&["x"], &[], ExportScope::Configured(names(&["x"]))),
            // Discovery: BGP and up only, in BIRD's order.
            (
                &[],
                &rows,
                ExportScope::Discovered(names(&["tor1", "tor3"])),
            ),
            (&[], &down_only, ExportScope::NoSessionUp),
            (&[], &[], ExportScope::NoSessionUp),
        ];
        for (configured, rows, want) in cases {
            assert_eq!(
                &scope(&names(configured), rows),
                want,
                "{configured:?} {rows:?}"
            );
        }
    }

    #[test]
    fn scope_labels_and_knowledge() {
        let cases = [
            (ExportScope::Unknown, "unknown", false, 0),
            (
                ExportScope::Configured(names(&["a"])),
                "configured",
                true,
                1,
            ),
            (
                ExportScope::Discovered(names(&["a", "b"])),
                "discovered",
                true,
                2,
            ),
            (ExportScope::NoSessionUp, "no_bgp_session_up", false, 0),
        ];
        for (s, label, known, n) in cases {
            assert_eq!(
                (s.as_str(), s.is_known(), s.protocols().len()),
                (label, known, n)
            );
        }
    }

    #[test]
    fn not_exported_table() {
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (&[], &[], &[]),
            (&["192.0.2.10/32"], &["192.0.2.10/32"], &[]),
            (&["192.0.2.10/32"], &[], &["192.0.2.10/32"]),
            // Exports beyond the desired ones are not this check's concern.
            (
                &["192.0.2.10/32", "2001:db8::1/128"],
                &["192.0.2.10/32", "192.0.2.99/32"],
                &["2001:db8::1/128"],
            ),
        ];
        for (wanted, exported, want) in cases {
            assert_eq!(
                not_exported(&nets(wanted), &nets(exported)),
                nets(want),
                "{wanted:?} {exported:?}"
            );
        }
    }

    #[test]
    fn vip_exported_table() {
        let vip: IpNet = "192.0.2.10/32".parse().unwrap();
        let flagged = nets(&["192.0.2.10/32"]);
        let none = BTreeSet::new();
        let d = ExportScope::Discovered(names(&["tor1"]));
        let cases = [
            (d.clone(), true, &none, Some(true)),
            (d.clone(), true, &flagged, Some(false)),
            (d.clone(), false, &flagged, None),
            (
                ExportScope::Configured(names(&["tor1"])),
                true,
                &flagged,
                Some(false),
            ),
            (ExportScope::NoSessionUp, true, &none, None),
            (ExportScope::Unknown, true, &none, None),
        ];
        for (scope, in_sets, not, want) in cases {
            assert_eq!(
                vip_exported(&scope, in_sets, not, &vip),
                want,
                "{scope:?} {in_sets}"
            );
        }
    }

    #[test]
    fn transition_table() {
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            (&[], &[], &[], &[]),
            (&[], &["192.0.2.10/32"], &["192.0.2.10/32"], &[]),
            // Still missing: no new log line.
            (&["192.0.2.10/32"], &["192.0.2.10/32"], &[], &[]),
            (&["192.0.2.10/32"], &[], &[], &["192.0.2.10/32"]),
            (
                &["192.0.2.10/32"],
                &["192.0.2.11/32"],
                &["192.0.2.11/32"],
                &["192.0.2.10/32"],
            ),
        ];
        for (before, now, flagged, cleared) in cases {
            assert_eq!(
                transition(&nets(before), &nets(now)),
                Transition {
                    flagged: nets(flagged),
                    cleared: nets(cleared)
                },
                "{before:?} → {now:?}"
            );
        }
    }
}
