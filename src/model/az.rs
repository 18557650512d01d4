//! AZ-aware routing in the document: the group's availability zones and a
//! pool's routing and stickiness (pure data and their validation).
//!
//! Backward-compatible with schema 1: every field is optional, a document
//! without them means what it meant before (no pool routes by AZ, no
//! stickiness). What the agent renders from it is in `plan::az`; the design
//! and the measured behaviour are in `docs/routing.md`.
//!
//! ```json
//! "availability_zones": {
//!   "zones": ["az1", "az2", "az3"],
//!   "evacuated": ["az1"],
//!   "client_subnets": {"10.1.0.0/16": "az1", "2001:db8:1::/48": "az1"}
//! },
//! "pools": [{"name": "www", "routing": "az", "stickiness": "source", ...}]
//! ```

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::validate::ValidationError;
use super::Name;

/// At most this many zones (each is a backend per routed pool, and each
/// server is health-checked in its zone's backend and in the pool's).
pub const MAX_ZONES: usize = 16;

/// The group-level AZ section (`availability_zones`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AzSection {
    /// The zones, in document order (the order of the frontend rules).
    pub zones: Vec<Name>,
    /// Zones whose servers take no traffic: their clients spill evenly over
    /// the others. Applied at runtime (servers to `maint`), no reload.
    pub evacuated: BTreeSet<Name>,
    /// Client subnet → the client's zone (longest prefix wins, HAProxy `map_ip`).
    pub client_subnets: BTreeMap<IpNet, Name>,
}

impl AzSection {
    /// True when `az` is one of the zones.
    pub fn has_zone(&self, az: &str) -> bool {
        self.zones.iter().any(|z| z.as_str() == az)
    }

    /// True when `az` is evacuated.
    pub fn is_evacuated(&self, az: &str) -> bool {
        self.evacuated.contains(az)
    }
}

/// How a pool picks servers (`pools[].routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// One backend with every server (schema 1 before AZ routing).
    #[default]
    None,
    /// By availability zone: the request's zone first, then an even spill.
    Az,
}

/// How a client keeps hitting the same server, and so the same zone
/// (`pools[].stickiness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stickiness {
    #[default]
    None,
    /// A stick table keyed on the client address (`stick on src`).
    Source,
    /// An inserted cookie naming the server (HTTP pools only).
    Cookie,
}

impl Stickiness {
    pub fn as_str(self) -> &'static str {
        match self {
            Stickiness::None => "none",
            Stickiness::Source => "source",
            Stickiness::Cookie => "cookie",
        }
    }
}

/// `availability_zones` as sent: everything optional so problems get paths.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireAz {
    #[serde(default)]
    zones: Vec<String>,
    #[serde(default)]
    evacuated: Vec<String>,
    #[serde(default)]
    client_subnets: BTreeMap<String, String>,
}

fn push(errs: &mut Vec<ValidationError>, path: impl Into<String>, message: impl Into<String>) {
    errs.push(ValidationError {
        path: path.into(),
        message: message.into(),
    });
}

/// Validates `availability_zones`; problems go to `errs` with their paths.
pub(crate) fn validate_section(w: &WireAz, errs: &mut Vec<ValidationError>) -> AzSection {
    const BASE: &str = "availability_zones";
    let mut zones: Vec<Name> = Vec::new();
    if w.zones.is_empty() {
        push(errs, format!("{BASE}.zones"), "at least one zone is needed");
    }
    if w.zones.len() > MAX_ZONES {
        push(
            errs,
            format!("{BASE}.zones"),
            format!("{} zones, at most {MAX_ZONES}", w.zones.len()),
        );
    }
    for (i, z) in w.zones.iter().enumerate() {
        match Name::try_new(z) {
            Ok(n) if zones.contains(&n) => push(
                errs,
                format!("{BASE}.zones[{i}]"),
                format!("duplicate zone {z}"),
            ),
            Ok(n) => zones.push(n),
            Err(e) => push(
                errs,
                format!("{BASE}.zones[{i}]"),
                format!("invalid zone {z:?}: {e}"),
            ),
        }
    }
    let known = |z: &str| zones.iter().any(|n| n.as_str() == z);
    let mut evacuated = BTreeSet::new();
    for (i, z) in w.evacuated.iter().enumerate() {
        if !known(z) {
            push(
                errs,
                format!("{BASE}.evacuated[{i}]"),
                format!("unknown zone {z:?}, not in availability_zones.zones"),
            );
        } else if let Ok(n) = Name::try_new(z) {
            evacuated.insert(n);
        }
    }
    if !zones.is_empty() && evacuated.len() == zones.len() {
        push(
            errs,
            format!("{BASE}.evacuated"),
            "every zone is evacuated: no server would take traffic",
        );
    }
    let mut client_subnets = BTreeMap::new();
    for (k, z) in &w.client_subnets {
        let path = format!("{BASE}.client_subnets.{k}");
        let net = match k.parse::<IpNet>() {
            Ok(n) if n.trunc() != n => {
                push(
                    errs,
                    path,
                    format!("{k} has host bits set (did you mean {}?)", n.trunc()),
                );
                continue;
            }
            Ok(n) => n,
            Err(_) => {
                push(
                    errs,
                    path,
                    format!("invalid subnet {k:?}, expected e.g. \"10.1.0.0/16\""),
                );
                continue;
            }
        };
        if !known(z) {
            push(
                errs,
                path,
                format!("unknown zone {z:?}, not in availability_zones.zones"),
            );
        } else if let Ok(n) = Name::try_new(z) {
            client_subnets.insert(net, n);
        }
    }
    AzSection {
        zones,
        evacuated,
        client_subnets,
    }
}

/// Parses `pools[i].routing`.
pub(crate) fn parse_routing(
    v: Option<&str>,
    path: String,
    errs: &mut Vec<ValidationError>,
) -> Option<Routing> {
    match v {
        None | Some("none") => Some(Routing::None),
        Some("az") => Some(Routing::Az),
        Some(o) => {
            push(
                errs,
                path,
                format!("unknown routing {o:?}, expected \"az\" or \"none\""),
            );
            None
        }
    }
}

/// Parses `pools[i].stickiness`.
pub(crate) fn parse_stickiness(
    v: Option<&str>,
    path: String,
    errs: &mut Vec<ValidationError>,
) -> Option<Stickiness> {
    match v {
        None | Some("none") => Some(Stickiness::None),
        Some("source") => Some(Stickiness::Source),
        Some("cookie") => Some(Stickiness::Cookie),
        Some(o) => {
            push(
                errs,
                path,
                format!("unknown stickiness {o:?}, expected \"cookie\", \"source\" or \"none\""),
            );
            None
        }
    }
}

/// The checks of a pool that routes by AZ, once the whole pool is parsed:
/// the group must have zones, and every server must name one of them.
/// `servers` holds (JSON index, `az`) of each server as sent.
pub(crate) fn check_routed_pool(
    base: &str,
    section: Option<&AzSection>,
    servers: &[(usize, Option<&str>)],
    errs: &mut Vec<ValidationError>,
) {
    let Some(section) = section else {
        push(
            errs,
            format!("{base}.routing"),
            "routing \"az\" needs the group's availability_zones section",
        );
        return;
    };
    for (j, az) in servers {
        match az {
            None => push(
                errs,
                format!("{base}.servers[{j}].az"),
                "missing: every server of a pool that routes by AZ needs its zone",
            ),
            Some(z) if !section.has_zone(z) => push(
                errs,
                format!("{base}.servers[{j}].az"),
                format!("unknown zone {z:?}, not in availability_zones.zones"),
            ),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(json: serde_json::Value) -> WireAz {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_valid_section() {
        let mut errs = Vec::new();
        let s = validate_section(
            &wire(serde_json::json!({
                "zones": ["az1", "az2"], "evacuated": ["az2"],
                "client_subnets": {"10.1.0.0/16": "az1", "2001:db8::/32": "az2"}
            })),
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(s.zones.len(), 2);
        assert!(s.is_evacuated("az2") && !s.is_evacuated("az1"));
        assert_eq!(s.client_subnets.len(), 2);
    }

    #[test]
    fn every_problem_has_its_path() {
        let mut errs = Vec::new();
        validate_section(
            &wire(serde_json::json!({
                "zones": ["az1", "az1", "bad zone"], "evacuated": ["az9"],
                "client_subnets": {"10.1.0.1/16": "az1", "nope": "az1", "10.2.0.0/16": "az7"}
            })),
            &mut errs,
        );
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "availability_zones.zones[1]",
                "availability_zones.zones[2]",
                "availability_zones.evacuated[0]",
                "availability_zones.client_subnets.10.1.0.1/16",
                "availability_zones.client_subnets.10.2.0.0/16",
                "availability_zones.client_subnets.nope",
            ]
        );
    }

    #[test]
    fn evacuating_every_zone_is_refused() {
        let mut errs = Vec::new();
        validate_section(
            &wire(serde_json::json!({"zones": ["a", "b"], "evacuated": ["b", "a"]})),
            &mut errs,
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "availability_zones.evacuated");
    }
}
