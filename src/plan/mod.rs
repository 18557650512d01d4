//! PURE: desired state vs what HAProxy runs → a [`Plan`].
//!
//! The planner decides, for every difference, whether the runtime socket can
//! carry it (docs/api.md, "What is applied how") or whether the rendered config must be reloaded, and
//! says why. It reads no clock, opens no socket and touches no file, so every
//! decision is unit- and property-tested here: `plan(d, d)` is empty, and
//! applying a plan to the simulated HAProxy in [`sim`] converges to `d`.
//!
//! Two inputs describe the running HAProxy:
//! - the [`Structure`] it loaded (frontends, pools, logic, map/ACL/certificate
//!   names, templates): anything there that differs needs a reload;
//! - its servers as observed through `show servers state`: those are
//!   converged with runtime commands.
//!
//! Servers live in pools rendered by [`layout`]: every desired server under
//! its own name, plus free slots (`_slotN`, `disabled`, 127.0.0.1:1) so new
//! servers can be placed at runtime without a reload. A removed server is put
//! in maintenance (and deleted when HAProxy allows it); a new one takes a free
//! slot, or is added with `add server` on dynamic-algorithm pools.

pub mod az;
pub mod command;
pub mod data;
pub mod layout;
pub mod reason;
pub mod scope;
pub mod sim;
mod structure;

use std::collections::{BTreeMap, BTreeSet};

use crate::model::observed::{ObservedBackend, ObservedServer, ObservedServers};
use crate::model::{DesiredState, Name, Pool, Server, ServerState};

pub use command::Command;
pub use layout::{check_keywords, is_slot_name, pool_layout, slot_count, SlotLine, SLOT_PREFIX};
pub use reason::{Change, ReloadReason};
pub use structure::Structure;

/// The outcome of planning: runtime commands, and whether a reload is needed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Runtime commands that converge the servers of the running HAProxy, in order.
    pub commands: Vec<Command>,
    /// Best-effort cleanup (`del server` of removed servers already in
    /// maintenance); HAProxy may refuse while connections linger, which is fine.
    pub cleanup: Vec<Command>,
    /// Why the rendered config must be reloaded; empty = no reload needed.
    pub reload: Vec<ReloadReason>,
}

impl Plan {
    /// A change needing more runtime commands than `max` reloads instead (docs/api.md, "What is applied how").
    pub fn limit_runtime_ops(&mut self, max: usize) {
        if self.commands.len() > max {
            self.reload.push(ReloadReason::RuntimeOpsLimit {
                commands: self.commands.len(),
                max,
            });
            self.commands.clear();
            self.cleanup.clear();
        }
    }

    /// True when the running HAProxy already matches the desired state.
    pub fn is_converged(&self) -> bool {
        self.commands.is_empty() && self.reload.is_empty()
    }
}

/// Knobs of the planner (from `[haproxy]`).
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// More runtime commands than this → reload instead.
    pub max_runtime_ops: usize,
}

/// Plans the change from what HAProxy runs to `desired`.
///
/// `loaded` is the structure of the running config, `None` when unknown
/// (then a reload is planned). Runtime commands are planned for every pool
/// that is running even when a reload is needed too, so traffic converges
/// before the (coalesced, possibly delayed) reload.
pub fn plan(
    desired: &DesiredState,
    desired_structure: &Structure,
    loaded: Option<&Structure>,
    observed: &ObservedServers,
    opts: PlanOptions,
) -> Plan {
    let mut p = plan_servers(desired, desired_structure, loaded, observed);
    p.limit_runtime_ops(opts.max_runtime_ops);
    p
}

/// [`plan`] plus maps, ACLs and certificates (`data` observed for the files
/// below `data_dir`); the `max_runtime_ops` limit applies to the whole plan.
pub fn plan_with_data(
    desired: &DesiredState,
    desired_structure: &Structure,
    loaded: Option<&Structure>,
    observed: &ObservedServers,
    data_dir: &std::path::Path,
    data: &crate::model::observed::ObservedData,
    opts: PlanOptions,
) -> Plan {
    let mut p = plan_servers(desired, desired_structure, loaded, observed);
    data::plan_data(desired, data_dir, data, &mut p);
    p.limit_runtime_ops(opts.max_runtime_ops);
    p
}

/// [`plan`] of the pools in `pools` alone, for a server-scoped change
/// ([`scope::server_scope`]) over a HAProxy that ran the previous state
/// exactly: the same plan as [`plan`], reading only those pools' backends
/// of `observed` (so an observation of those alone,
/// [`scope::scope_backends`], is enough). Only best-effort cleanup left
/// over in other pools (a `del server` HAProxy refused) waits for the next
/// full pass.
pub fn plan_scoped(
    desired: &DesiredState,
    desired_structure: &Structure,
    loaded: Option<&Structure>,
    observed: &ObservedServers,
    pools: &BTreeSet<Name>,
    opts: PlanOptions,
) -> Plan {
    let of = pools
        .iter()
        .filter_map(|n| desired.pools.get(n))
        .map(|p| &**p);
    let backends = az::backends_of(desired, of);
    let mut p = plan_backends(backends, desired_structure, loaded, observed);
    p.limit_runtime_ops(opts.max_runtime_ops);
    p
}

/// Structure and server planning, without the runtime-ops limit.
fn plan_servers(
    desired: &DesiredState,
    desired_structure: &Structure,
    loaded: Option<&Structure>,
    observed: &ObservedServers,
) -> Plan {
    plan_backends(az::backends(desired), desired_structure, loaded, observed)
}

/// The structure's reload reasons and the server plan of `backends`.
fn plan_backends(
    backends: Vec<az::Backend<'_>>,
    desired_structure: &Structure,
    loaded: Option<&Structure>,
    observed: &ObservedServers,
) -> Plan {
    let mut p = Plan::default();
    match loaded {
        None => p.reload.push(ReloadReason::RunningUnknown),
        Some(l) => p.reload.extend(l.diff(desired_structure)),
    }
    // Routed pools are several backends (`az`), each planned like a pool.
    for b in backends {
        let pool = b.pool.as_ref();
        match observed.backends.get(pool.name.as_str()) {
            Some(be) => plan_pool(pool, be, &mut p),
            None => {
                // Only worth saying when the structure claims the pool is loaded.
                if loaded.is_some_and(|l| l.has_pool(b.base.name.as_str())) {
                    p.reload.push(ReloadReason::BackendMissing {
                        pool: pool.name.to_string(),
                    });
                }
            }
        }
    }
    p
}

/// Which running server hosts each desired server of a pool.
#[derive(Debug, Default)]
struct Assignment<'a> {
    hosted: BTreeMap<&'a str, &'a ObservedServer>,
    /// Desired servers with no running server yet.
    unplaced: Vec<&'a Server>,
}

/// Maps desired servers onto running servers, deterministically and from the
/// observation alone (so an agent restart finds the same mapping):
/// 1. a running server with the desired server's name;
/// 2. a slot already pointing at the desired server's address and port;
/// 3. the lowest free slot.
fn assign<'a>(pool: &'a Pool, be: &'a ObservedBackend) -> Assignment<'a> {
    let mut a = Assignment::default();
    let mut used: BTreeSet<&str> = BTreeSet::new();
    let by_name: BTreeMap<&str, &ObservedServer> =
        be.servers.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut pending = Vec::new();
    for s in pool.servers.values() {
        match by_name.get(s.name.as_str()) {
            Some(o) => {
                a.hosted.insert(s.name.as_str(), o);
                used.insert(o.name.as_str());
            }
            None => pending.push(s),
        }
    }
    let slots: Vec<&ObservedServer> = be
        .servers
        .iter()
        .filter(|o| is_slot_name(&o.name))
        .collect();
    let mut still = Vec::new();
    for s in pending {
        // Prefer a slot in service (it is really carrying this server) over one in maintenance.
        let found = slots
            .iter()
            .filter(|o| !used.contains(o.name.as_str()) && o.addr == s.address && o.port == s.port)
            .min_by_key(|o| (o.in_maint(), o.id));
        match found {
            Some(o) => {
                a.hosted.insert(s.name.as_str(), o);
                used.insert(o.name.as_str());
            }
            None => still.push(s),
        }
    }
    for s in still {
        match slots.iter().find(|o| !used.contains(o.name.as_str())) {
            Some(o) => {
                a.hosted.insert(s.name.as_str(), o);
                used.insert(o.name.as_str());
            }
            None => a.unplaced.push(s),
        }
    }
    a
}

/// Keywords of a server added at runtime: the check's and the pool's
/// `slowstart` (a dynamic server has no `default-server`).
fn server_keywords(pool: &Pool) -> Option<String> {
    let check = pool.check.as_ref().map(layout::check_keywords);
    let slow = crate::model::options::server_keywords(&pool.options);
    match (check, slow) {
        (Some(c), Some(s)) => Some(format!("{c} {s}")),
        (c, s) => c.or(s),
    }
}

fn plan_pool(pool: &Pool, be: &ObservedBackend, p: &mut Plan) {
    let backend = pool.name.as_str();
    let a = assign(pool, be);
    for s in pool.servers.values() {
        if let Some(o) = a.hosted.get(s.name.as_str()) {
            converge_server(backend, &o.name, s, o, &mut p.commands);
        }
    }
    for s in &a.unplaced {
        if pool.balance.is_dynamic() {
            p.commands.push(Command::AddServer {
                backend: backend.into(),
                server: s.name.to_string(),
                addr: s.address,
                port: s.port,
                weight: s.weight,
                check: server_keywords(pool),
            });
            if pool.check.is_some() {
                p.commands.push(Command::EnableHealth {
                    backend: backend.into(),
                    server: s.name.to_string(),
                });
            }
            if s.state != ServerState::Maint {
                p.commands.push(Command::SetState {
                    backend: backend.into(),
                    server: s.name.to_string(),
                    state: s.state,
                });
            }
        } else {
            p.reload.push(ReloadReason::NoFreeSlot {
                pool: backend.to_string(),
                server: s.name.to_string(),
                balance: pool.balance.0.clone(),
            });
        }
    }
    let hosting: BTreeSet<&str> = a.hosted.values().map(|o| o.name.as_str()).collect();
    for o in &be.servers {
        if hosting.contains(o.name.as_str()) {
            continue;
        }
        if !o.in_maint() {
            p.commands.push(Command::SetState {
                backend: backend.into(),
                server: o.name.clone(),
                state: ServerState::Maint,
            });
        } else if !is_slot_name(&o.name) && pool.balance.is_dynamic() {
            p.cleanup.push(Command::DelServer {
                backend: backend.into(),
                server: o.name.clone(),
            });
        }
    }
}

/// Commands that bring running server `o` (named `hname` in HAProxy) to desired `s`.
///
/// Order matters: address and weight first, the state last, so a server
/// entering service never takes traffic at a stale address or weight.
fn converge_server(
    backend: &str,
    hname: &str,
    s: &Server,
    o: &ObservedServer,
    out: &mut Vec<Command>,
) {
    let srv = || hname.to_string();
    if o.addr != s.address || o.port != s.port {
        out.push(Command::SetAddr {
            backend: backend.into(),
            server: srv(),
            addr: s.address,
            port: s.port,
        });
    }
    match s.state {
        ServerState::Ready => {
            if o.uweight != s.weight {
                out.push(Command::SetWeight {
                    backend: backend.into(),
                    server: srv(),
                    weight: s.weight,
                });
            }
            if o.in_maint() || o.in_drain() {
                out.push(Command::SetState {
                    backend: backend.into(),
                    server: srv(),
                    state: ServerState::Ready,
                });
            }
        }
        ServerState::Drain => {
            // A drained server is rendered with weight 0 (the config has no
            // drain keyword), so "in service with weight 0" is drained too.
            let drained = !o.in_maint() && (o.in_drain() || o.uweight == 0);
            if !drained {
                out.push(Command::SetState {
                    backend: backend.into(),
                    server: srv(),
                    state: ServerState::Drain,
                });
            }
        }
        ServerState::Maint => {
            if !o.in_maint() {
                out.push(Command::SetState {
                    backend: backend.into(),
                    server: srv(),
                    state: ServerState::Maint,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
