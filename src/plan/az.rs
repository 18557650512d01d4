//! PURE: AZ-aware routing → the HAProxy backends, frontend rules and map
//! that carry it (design and figures: `docs/routing.md`).
//!
//! A pool with `routing: "az"` becomes several backends, each an ordinary
//! pool for the planner (servers by name plus free slots, so servers are
//! added, removed and moved between zones at runtime):
//! - `POOL:ZONE` for every zone of the group, with that zone's servers;
//! - `POOL` itself, the spill backend, with every server, their weights
//!   scaled so each zone carries the same total (an even spill whatever
//!   the zones' sizes).
//!
//! A frontend whose default pool routes by AZ gets one rule per zone:
//! `use_backend POOL:ZONE if { src,map_ip(CLIENTS,NODE_AZ) -m str ZONE }
//! { nbsrv(POOL:ZONE) gt 0 }`, then its `default_backend POOL`. So the
//! request's zone is the client's (from the client-subnet map, changed at
//! runtime) or else this node's; it is served in that zone while the zone
//! has a usable server, and spills evenly over every usable server of the
//! other zones otherwise. An evacuated zone's servers are put in `maint` in
//! every backend (runtime commands): its zone backend has `nbsrv` 0, so its
//! clients spill, and no spill reaches it.
//!
//! Stickiness (any pool): `source` is `balance source` with `hash-type
//! consistent` in each backend, so a client stays on one server, hence one
//! zone, and every LB of the group picks the same one (a stick table would
//! be per LB, and ECMP spreads a client's connections over the LBs);
//! `cookie` is an inserted cookie naming the server.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::observed::{ObservedServer, ObservedServers};
use crate::model::{AzSection, DesiredState, MapDef, Name, Pool, Routing, ServerState, Stickiness};

/// Name of the agent's own client-subnet → zone map (a leading `_` is never
/// a document map's name).
pub const CLIENT_MAP: &str = "_az_clients";

/// What a rendered backend is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A pool that does not route by AZ: the pool as it is.
    Plain,
    /// The spill backend of a routed pool (named like the pool).
    Spill,
    /// The backend of one zone of a routed pool.
    Zone(Name),
}

/// One HAProxy backend and the pool it comes from.
#[derive(Debug, Clone)]
pub struct Backend<'a> {
    /// The backend as the planner and renderer see it: its name, and the
    /// servers with their effective weight and state.
    pub pool: Cow<'a, Pool>,
    /// The document's pool.
    pub base: &'a Pool,
    pub role: Role,
}

/// The backend name of `zone` in `pool`.
pub fn zone_backend(pool: &Name, zone: &Name) -> Name {
    Name::derived(format!("{pool}:{zone}"))
}

/// Every backend of `d`, in a stable order (by pool, the spill backend
/// first, then the zones in document order).
pub fn backends(d: &DesiredState) -> Vec<Backend<'_>> {
    backends_of(d, d.pools.values().map(|p| &**p))
}

/// The backends of `pools` (pools of `d`), in the order of [`backends`].
pub fn backends_of<'a>(
    d: &'a DesiredState,
    pools: impl Iterator<Item = &'a Pool>,
) -> Vec<Backend<'a>> {
    let mut out = Vec::with_capacity(pools.size_hint().0);
    for p in pools {
        match (p.routing, d.availability_zones.as_ref()) {
            (Routing::Az, Some(az)) => {
                out.push(Backend {
                    pool: Cow::Owned(spill_pool(p, az)),
                    base: p,
                    role: Role::Spill,
                });
                for z in &az.zones {
                    out.push(Backend {
                        pool: Cow::Owned(zone_pool(p, az, z)),
                        base: p,
                        role: Role::Zone(z.clone()),
                    });
                }
            }
            _ if p.stickiness == Stickiness::Source => out.push(Backend {
                pool: Cow::Owned(source_hashed(Pool::clone(p))),
                base: p,
                role: Role::Plain,
            }),
            _ => out.push(Backend {
                pool: Cow::Borrowed(p),
                base: p,
                role: Role::Plain,
            }),
        }
    }
    out
}

/// A server's state once evacuation is applied.
fn effective_state(az: &AzSection, zone: Option<&str>, state: ServerState) -> ServerState {
    match zone {
        Some(z) if az.is_evacuated(z) => ServerState::Maint,
        _ => state,
    }
}

/// Source stickiness is a consistent hash of the client address: every LB
/// of the group computes the same server for a client (same servers, ids
/// and weights), where a stick table would be per LB and the ToR's ECMP
/// hash spreads one client's connections over the LBs.
fn source_hashed(mut p: Pool) -> Pool {
    if p.stickiness == Stickiness::Source {
        p.balance = crate::model::Balance("source".into());
    }
    p
}

fn zone_pool(p: &Pool, az: &AzSection, zone: &Name) -> Pool {
    let mut out = source_hashed(p.clone());
    out.name = zone_backend(&p.name, zone);
    out.servers
        .retain(|_, s| s.az.as_deref() == Some(zone.as_str()));
    for s in out.servers.values_mut() {
        s.state = effective_state(az, s.az.as_deref(), s.state);
    }
    out
}

fn spill_pool(p: &Pool, az: &AzSection) -> Pool {
    // Weights from the document's states, before evacuation: evacuating a
    // zone then changes only its own servers' states, nothing else.
    let weights = spill_weights(p);
    let mut out = source_hashed(p.clone());
    for s in out.servers.values_mut() {
        s.state = effective_state(az, s.az.as_deref(), s.state);
        s.weight = weights.get(&s.name).copied().unwrap_or(s.weight);
    }
    out
}

/// Weights that give every zone the same share of the spill: a server's
/// weight divided by its zone's total (of servers in service), scaled so the
/// largest is 256; never 0 for a server whose own weight is not 0.
///
/// Only the document's states count (the planner knows no health): a zone
/// with one of two servers down carries half its share until the document
/// says otherwise (`docs/routing.md`).
pub fn spill_weights(p: &Pool) -> BTreeMap<Name, u16> {
    let mut totals: BTreeMap<Option<&str>, u32> = BTreeMap::new();
    for s in p.servers.values().filter(|s| s.state == ServerState::Ready) {
        *totals.entry(s.az.as_deref()).or_default() += u32::from(s.weight);
    }
    // share(s) = w / total(zone); scale = 256 / max share.
    let max_share = p
        .servers
        .values()
        .filter(|s| s.state == ServerState::Ready && s.weight > 0)
        .map(|s| f64::from(s.weight) / f64::from(totals[&s.az.as_deref()]))
        .fold(0.0_f64, f64::max);
    p.servers
        .values()
        .map(|s| {
            let w = match totals.get(&s.az.as_deref()) {
                Some(&t) if t > 0 && s.weight > 0 && max_share > 0.0 => {
                    let share = f64::from(s.weight) / f64::from(t);
                    ((share / max_share) * 256.0).round().clamp(1.0, 256.0) as u16
                }
                _ => s.weight,
            };
            (s.name.clone(), w)
        })
        .collect()
}

/// Backend directives for a pool's stickiness (same in every backend of a
/// routed pool; the cookie is named after the document's pool).
pub fn stickiness_lines(base: &Pool) -> Vec<String> {
    match base.stickiness {
        Stickiness::None => Vec::new(),
        // With `balance source` (see `source_hashed`): consistent, so a
        // server going down moves only its own clients, and weights can
        // change at runtime.
        Stickiness::Source => vec!["hash-type consistent".to_string()],
        Stickiness::Cookie => vec![format!("cookie lb_{} insert indirect nocache", base.name)],
    }
}

/// The client-subnet map, present whenever the group has zones (even with
/// no entries, so the first entry is added at runtime without a reload).
pub fn client_map(d: &DesiredState) -> Option<MapDef> {
    let az = d.availability_zones.as_ref()?;
    Some(MapDef {
        name: Name::derived(CLIENT_MAP.to_string()),
        entries: az
            .client_subnets
            .iter()
            .map(|(net, z)| (net.to_string(), z.to_string()))
            .collect(),
    })
}

/// The document's maps plus the agent's own.
pub fn all_maps(d: &DesiredState) -> Vec<Cow<'_, MapDef>> {
    let mut out: Vec<Cow<'_, MapDef>> = d.maps.values().map(Cow::Borrowed).collect();
    out.extend(client_map(d).map(Cow::Owned));
    out
}

/// The routing rules of a frontend whose default pool is `pool` (empty when
/// it does not route by AZ). `clients` is the client map's path; `node_az`
/// the zone of requests from clients the map does not know.
pub fn frontend_rules(
    d: &DesiredState,
    pool: &Pool,
    clients: &str,
    node_az: Option<&str>,
) -> Vec<String> {
    let Some(az) = d.availability_zones.as_ref() else {
        return Vec::new();
    };
    if pool.routing != Routing::Az {
        return Vec::new();
    }
    // A node outside every zone (or with none) routes unknown clients to
    // the spill backend: `-` is never a zone name.
    let fallback = node_az.filter(|z| az.has_zone(z)).unwrap_or("-");
    az.zones
        .iter()
        .map(|z| {
            let be = zone_backend(&pool.name, z);
            format!(
                "use_backend {be} if {{ src,map_ip({clients},{fallback}) -m str {z} }} {{ nbsrv({be}) gt 0 }}"
            )
        })
        .collect()
}

/// Where one zone's requests go now, for status: `az1` (served in the
/// zone) or `az2+az3` (spilled), and why, from the document and the number
/// of usable servers each zone backend has (`usable`, by zone).
pub fn destination(
    az: &AzSection,
    zone: &Name,
    usable: &BTreeMap<Name, usize>,
) -> (Vec<Name>, Option<String>) {
    let n = |z: &Name| usable.get(z).copied().unwrap_or(0);
    if !az.is_evacuated(zone.as_str()) && n(zone) > 0 {
        return (vec![zone.clone()], None);
    }
    let why = if az.is_evacuated(zone.as_str()) {
        format!("{zone} evacuated")
    } else {
        format!("{zone} has no usable server")
    };
    let to = az
        .zones
        .iter()
        .filter(|z| *z != zone && !az.is_evacuated(z.as_str()) && n(z) > 0)
        .cloned()
        .collect();
    (to, Some(why))
}

/// Where one zone of a routed pool sends its requests now (status, CLI,
/// metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneRoute {
    pub zone: String,
    /// Servers of the zone in the document.
    pub servers: usize,
    /// Of those, usable in the zone's backend now (in service, up, weight > 0:
    /// what HAProxy's `nbsrv` counts).
    pub healthy: usize,
    pub evacuated: bool,
    /// The zones serving its requests: itself, or the zones it spills to.
    pub to: Vec<String>,
    /// Why it spills; `None` while served in the zone.
    pub reason: Option<String>,
}

impl ZoneRoute {
    /// `az1 → az1`, or `az1 → az2+az3 (az1 evacuated)`.
    pub fn arrow(&self) -> String {
        let to = if self.to.is_empty() {
            "nothing".to_string()
        } else {
            self.to.join("+")
        };
        match &self.reason {
            None => format!("{} → {to}", self.zone),
            Some(r) => format!("{} → {to} ({r})", self.zone),
        }
    }
}

/// The zones of one routed pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRoutes {
    pub pool: String,
    pub zones: Vec<ZoneRoute>,
}

/// Where every zone of every routed pool goes, from the document and what
/// HAProxy reports of each zone backend's servers.
pub fn routes(d: &DesiredState, observed: &ObservedServers) -> Vec<PoolRoutes> {
    let Some(az) = d.availability_zones.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in d.pools.values().filter(|p| p.routing == Routing::Az) {
        let usable: BTreeMap<Name, usize> = az
            .zones
            .iter()
            .map(|z| {
                let n = observed
                    .backends
                    .get(zone_backend(&p.name, z).as_str())
                    .map(|be| be.servers.iter().filter(|s| is_usable(s)).count())
                    .unwrap_or(0);
                (z.clone(), n)
            })
            .collect();
        let zones = az
            .zones
            .iter()
            .map(|z| {
                let (to, reason) = destination(az, z, &usable);
                ZoneRoute {
                    zone: z.to_string(),
                    servers: p
                        .servers
                        .values()
                        .filter(|s| s.az.as_deref() == Some(z.as_str()))
                        .count(),
                    healthy: usable[z],
                    evacuated: az.is_evacuated(z.as_str()),
                    to: to.iter().map(|n| n.to_string()).collect(),
                    reason,
                }
            })
            .collect();
        out.push(PoolRoutes {
            pool: p.name.to_string(),
            zones,
        });
    }
    out
}

/// What `nbsrv` counts: in service, running, weight above 0.
fn is_usable(s: &ObservedServer) -> bool {
    !s.in_maint() && !s.in_drain() && s.op_state == 2 && s.uweight > 0
}

#[cfg(test)]
mod tests;
