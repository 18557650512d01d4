//! PURE: what a change of the desired state touches, so a pass over a
//! one-server change reads and plans one pool instead of 20,000 servers
//! (docs/etcd.md, "O(change) on the agent").
//!
//! A change is *server-scoped* when the two states differ only in the
//! servers of some pools: same VIPs, frontends, logic, data, zones and group,
//! the same pools by name, each with the same everything but its servers,
//! and no logic attached anywhere (a snippet may read any pool's servers, and
//! its rendered lines are structure). Then:
//! - the structure of both states is the same (a pool's digest never reads
//!   its servers), so no reload can be needed that was not needed before;
//! - planning the changed pools against HAProxy gives the same commands as
//!   planning everything, provided HAProxy ran the previous state exactly
//!   (the last pass converged). The periodic full verification
//!   (`verify_interval`) catches whatever changed HAProxy behind the agent.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::az::zone_backend;
use crate::model::{DesiredState, Name, Pool, Routing};

/// The pools whose servers differ from `prev` to `next` when nothing else
/// differs (see the module docs); `None` when the change is wider, then a
/// pass must look at everything. Unchanged pools are skipped by pointer
/// when the states share them (the etcd source's incremental path).
pub fn server_scope(prev: &DesiredState, next: &DesiredState) -> Option<BTreeSet<Name>> {
    // Destructured so a new field of the state cannot be forgotten here.
    let DesiredState {
        revision: _,
        group,
        force: _,
        vips,
        frontends,
        pools,
        logic,
        maps,
        acls,
        certificates,
        availability_zones,
        warnings: _,
    } = next;
    let same = *group == prev.group
        && *vips == prev.vips
        && *frontends == prev.frontends
        && *logic == prev.logic
        && *maps == prev.maps
        && *acls == prev.acls
        && *certificates == prev.certificates
        && *availability_zones == prev.availability_zones
        && pools.len() == prev.pools.len();
    if !same || frontends.values().any(|f| !f.logic.is_empty()) {
        return None;
    }
    let mut changed = BTreeSet::new();
    for ((name, p), (prev_name, q)) in pools.iter().zip(prev.pools.iter()) {
        if name != prev_name || !p.logic.is_empty() {
            return None;
        }
        if Arc::ptr_eq(p, q) {
            continue;
        }
        if !same_but_servers(p, q) {
            return None;
        }
        if p.servers != q.servers {
            changed.insert(name.clone());
        }
    }
    Some(changed)
}

/// Every field of the pool but its servers is equal.
fn same_but_servers(a: &Pool, b: &Pool) -> bool {
    let Pool {
        name,
        mode,
        balance,
        check,
        servers: _,
        routing,
        stickiness,
        logic,
        options,
    } = a;
    *name == b.name
        && *mode == b.mode
        && *balance == b.balance
        && *check == b.check
        && *routing == b.routing
        && *stickiness == b.stickiness
        && *logic == b.logic
        && *options == b.options
}

/// The HAProxy backends of `pools` in `d` (a routed pool is its spill
/// backend, then one per zone), in [`super::az::backends`] order.
pub fn scope_backends(d: &DesiredState, pools: &BTreeSet<Name>) -> Vec<String> {
    let mut out = Vec::new();
    for p in pools.iter().filter_map(|n| d.pools.get(n)) {
        out.push(p.name.to_string());
        if let (Routing::Az, Some(az)) = (p.routing, d.availability_zones.as_ref()) {
            out.extend(
                az.zones
                    .iter()
                    .map(|z| zone_backend(&p.name, z).to_string()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
