//! The `pools` section: each pool and its check and servers, names unique
//! among pools. [`revalidate_pool`] validates one pool on its own for the
//! etcd incremental path (docs/etcd.md) with the same functions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::health::{check_health_kind, check_host, check_path};
use super::wire::{WireCheck, WirePool, WireServer};
use super::Errs;
use crate::model::{
    AzSection, Balance, HealthKind, Logic, Mode, Name, Pool, PoolCheck, Routing, Server,
    ServerState, Stickiness,
};

/// Validates one pool object (JSON, its `servers` included) on its own, as
/// the full path validates `pools[i]`: the incremental path
/// (`source::etcd::incr`) re-validates only the pools whose servers changed.
///
/// `None` when the pool has any problem or an unknown field in a server:
/// the caller then runs the full path, which reports the problem with the
/// path and wording of the whole document. Cross-pool rules (unique pool
/// names) and references to the pool (frontends' `default_pool` mode, logic
/// context: name, mode, balance) are the caller's: they hold as long as the
/// pool's own key did not change.
pub fn revalidate_pool(
    body: &[u8],
    availability_zones: Option<&AzSection>,
    logic: &BTreeMap<Name, Logic>,
) -> Option<Pool> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let servers_known = v
        .get("servers")
        .and_then(serde_json::Value::as_array)
        .is_none_or(|list| {
            list.iter().all(|s| {
                s.as_object().is_some_and(|o| {
                    o.keys()
                        .all(|k| crate::model::unknown::SERVER.contains(&k.as_str()))
                })
            })
        });
    if !servers_known {
        return None;
    }
    // From the bytes, not the value: a duplicate field is an error there, as
    // in the whole document.
    let wire: WirePool = serde_json::from_slice(body).ok()?;
    let mut errs = Errs(Vec::new());
    let pool = validate_pool(&mut errs, "pools[0]", &wire, availability_zones, logic)?;
    errs.0.is_empty().then_some(pool)
}

/// The `pools` section (`pools[i]`), by name; a pool with a problem is left
/// out. Servers may name the document's availability zones, pools its logic.
pub(super) fn validate_pools(
    errs: &mut Errs,
    list: &[WirePool],
    availability_zones: Option<&AzSection>,
    logic: &BTreeMap<Name, Logic>,
) -> BTreeMap<Name, Arc<Pool>> {
    let mut pools = BTreeMap::new();
    for (i, p) in list.iter().enumerate() {
        let base = format!("pools[{i}]");
        if let Some(pool) = validate_pool(errs, &base, p, availability_zones, logic) {
            if pools.contains_key(&pool.name) {
                errs.push(
                    format!("{base}.name"),
                    format!("duplicate pool name {}", pool.name),
                );
            } else {
                pools.insert(pool.name.clone(), Arc::new(pool));
            }
        }
    }
    pools
}

/// Balance algorithms accepted in a pool (no parameters: the value reaches haproxy.cfg).
const BALANCES: &[&str] = &[
    "roundrobin",
    "static-rr",
    "leastconn",
    "first",
    "source",
    "uri",
    "random",
];

/// One pool of the document at `base` (`pools[3]`), its servers included;
/// `None` when it has a problem (pushed to `errs`). Uniqueness among pools
/// is the caller's. Both the full and the incremental path
/// (`source::etcd::incr`, through [`revalidate_pool`]) validate a pool with this.
fn validate_pool(
    errs: &mut Errs,
    base: &str,
    p: &WirePool,
    availability_zones: Option<&AzSection>,
    logic: &BTreeMap<Name, Logic>,
) -> Option<Pool> {
    let name = errs.name(&p.name, format!("{base}.name"));
    let mode = errs.mode(&p.mode, format!("{base}.mode"));
    let routing = crate::model::az::parse_routing(
        p.routing.as_deref(),
        format!("{base}.routing"),
        &mut errs.0,
    );
    let stickiness = crate::model::az::parse_stickiness(
        p.stickiness.as_deref(),
        format!("{base}.stickiness"),
        &mut errs.0,
    );
    if stickiness == Some(Stickiness::Cookie) && mode == Some(Mode::Tcp) {
        errs.push(
            format!("{base}.stickiness"),
            "cookie stickiness needs an http pool (use \"source\" in tcp mode)",
        );
    }
    if routing == Some(Routing::Az) {
        let azs: Vec<(usize, Option<&str>)> = p
            .servers
            .iter()
            .enumerate()
            .map(|(j, s)| (j, s.az.as_deref()))
            .collect();
        crate::model::az::check_routed_pool(base, availability_zones, &azs, &mut errs.0);
    }
    let balance = match p.balance.as_deref() {
        None => Some(Balance("roundrobin".into())),
        Some(b) if BALANCES.contains(&b) => Some(Balance(b.to_string())),
        Some(b) => {
            errs.push(
                format!("{base}.balance"),
                format!(
                    "unknown balance {b:?}, expected one of {}",
                    BALANCES.join(", ")
                ),
            );
            None
        }
    };
    let check = p
        .check
        .as_ref()
        .map(|c| validate_check(errs, &format!("{base}.check"), c));
    let mut options = crate::model::options::parse(
        &crate::model::options::WireOptions {
            timeouts: p.timeouts.as_ref(),
            retries: p.retries,
            redispatch: p.redispatch,
            http_reuse: p.http_reuse.as_deref(),
            slowstart: p.slowstart.as_deref(),
        },
        base,
        mode,
        &mut errs.0,
    );
    let plogic = super::logic::logic_refs(errs, &p.logic, logic, base);
    let (servers, backup) = validate_servers(errs, base, &p.servers);
    options.backup = backup;
    let (name, mode, balance, routing, stickiness) =
        (name?, mode?, balance?, routing?, stickiness?);
    Some(Pool {
        name,
        mode,
        balance,
        check,
        servers,
        routing,
        stickiness,
        logic: plogic,
        options,
    })
}

/// A pool's `check` object at `cb` (`pools[3].check`).
fn validate_check(errs: &mut Errs, cb: &str, c: &WireCheck) -> PoolCheck {
    let kind = check_health_kind(errs, &c.kind, format!("{cb}.type")).unwrap_or(HealthKind::Tcp);
    let path = check_path(errs, &c.path, format!("{cb}.path"));
    let host = check_host(errs, &c.host, format!("{cb}.host"));
    let interval = c
        .interval
        .as_ref()
        .and_then(|s| match humantime::parse_duration(s) {
            Ok(d) if d >= Duration::from_millis(10) => Some(d),
            _ => {
                errs.push(
                    format!("{cb}.interval"),
                    format!("invalid interval {s:?}, expected e.g. \"2s\" (at least 10ms)"),
                );
                None
            }
        });
    let mut count = |v: Option<i64>, field: &str| match v {
        None => None,
        Some(n) if (1..=100).contains(&n) => Some(n as u32),
        Some(n) => {
            errs.push(format!("{cb}.{field}"), format!("{n} out of range 1-100"));
            None
        }
    };
    let rise = count(c.rise, "rise");
    let fall = count(c.fall, "fall");
    PoolCheck {
        kind,
        path,
        host,
        interval,
        rise,
        fall,
    }
}

/// A pool's servers (`{base}.servers[j]`): names and endpoints unique
/// within the pool; with the names of its backup servers.
fn validate_servers(
    errs: &mut Errs,
    base: &str,
    list: &[WireServer],
) -> (BTreeMap<Name, Server>, BTreeSet<Name>) {
    let mut servers = BTreeMap::new();
    let mut backup = BTreeSet::new();
    let mut endpoints = BTreeSet::new();
    for (j, s) in list.iter().enumerate() {
        let sb = format!("{base}.servers[{j}]");
        let sname = errs.name(&s.name, format!("{sb}.name"));
        let address = errs.required(&s.address, format!("{sb}.address")).and_then(|a| {
            a.parse::<IpAddr>().map_err(|_| errs.push(format!("{sb}.address"), format!("{a:?} is not an IP address (HAProxy's runtime API takes IP literals only)"))).ok()
        });
        let port = errs
            .required(&s.port, format!("{sb}.port"))
            .and_then(|p| check_port(errs, *p, format!("{sb}.port")));
        let weight = match s.weight {
            None => Some(1),
            Some(wt) if (0..=256).contains(&wt) => Some(wt as u16),
            Some(wt) => {
                errs.push(
                    format!("{sb}.weight"),
                    format!("weight {wt} out of range 0-256"),
                );
                None
            }
        };
        let state = match s.state.as_deref() {
            None | Some("ready") => Some(ServerState::Ready),
            Some("drain") => Some(ServerState::Drain),
            Some("maint") => Some(ServerState::Maint),
            Some(o) => {
                errs.push(
                    format!("{sb}.state"),
                    format!("unknown state {o:?}, expected \"ready\", \"drain\" or \"maint\""),
                );
                None
            }
        };
        if let Some(az) = &s.az {
            if Name::try_new(az).is_err() {
                errs.push(
                    format!("{sb}.az"),
                    format!("invalid availability zone {az:?}"),
                );
            }
        }
        if let (Some(name), Some(address), Some(port), Some(weight), Some(state)) =
            (sname, address, port, weight, state)
        {
            if servers.contains_key(&name) {
                errs.push(
                    format!("{sb}.name"),
                    format!("duplicate server name {name} in pool"),
                );
            } else if !endpoints.insert((address, port)) {
                errs.push(
                    format!("{sb}.address"),
                    format!(
                        "{} is already used by another server of this pool",
                        SocketAddr::new(address, port)
                    ),
                );
            } else {
                if s.backup {
                    backup.insert(name.clone());
                }
                servers.insert(
                    name.clone(),
                    Server {
                        name,
                        address,
                        port,
                        weight,
                        state,
                        az: s.az.clone(),
                    },
                );
            }
        }
    }
    (servers, backup)
}

/// A port number at `path`, 1-65535.
fn check_port(errs: &mut Errs, p: i64, path: String) -> Option<u16> {
    if (1..=65535).contains(&p) {
        Some(p as u16)
    } else {
        errs.push(path, format!("port {p} out of range 1-65535"));
        None
    }
}
