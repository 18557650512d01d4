//! The `frontends` section: names unique, every bind inside a VIP and bound
//! by one frontend only, and every reference (certificates, default pool,
//! logic) to an object of the document, validated before it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::health::{check_health_kind, check_host, check_path, check_statuses};
use super::logic::logic_refs;
use super::wire::{WireFrontend, WireHealth, WireTls};
use super::Errs;
use crate::model::{Certificate, Frontend, FrontendTls, HealthSpec, Logic, Mode, Name, Pool, Vip};

/// The `frontends` section (`frontends[i]`), by name. The sections it
/// refers to are already validated: a reference must name one of their
/// objects.
pub(super) fn validate_frontends(
    errs: &mut Errs,
    list: &[WireFrontend],
    vips: &[Vip],
    certificates: &BTreeMap<Name, Certificate>,
    pools: &BTreeMap<Name, Arc<Pool>>,
    logic: &BTreeMap<Name, Logic>,
) -> BTreeMap<Name, Frontend> {
    let mut frontends = BTreeMap::new();
    let mut binds_seen: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (i, f) in list.iter().enumerate() {
        let base = format!("frontends[{i}]");
        let name = errs.name(&f.name, format!("{base}.name"));
        let mode = errs.mode(&f.mode, format!("{base}.mode"));
        let bind = validate_binds(errs, &base, f, vips, &mut binds_seen);
        let tls = f
            .tls
            .as_ref()
            .map(|t| validate_tls(errs, &base, t, certificates));
        let default_pool = f
            .default_pool
            .as_ref()
            .and_then(|p| validate_default_pool(errs, &base, p, mode, pools));
        let flogic = logic_refs(errs, &f.logic, logic, &base);
        let maxconn = validate_maxconn(errs, &base, f.maxconn);
        let health = f.health.as_ref().map(|h| validate_health(errs, &base, h));
        if let (Some(name), Some(mode)) = (name, mode) {
            if frontends.contains_key(&name) {
                errs.push(
                    format!("{base}.name"),
                    format!("duplicate frontend name {name}"),
                );
            } else {
                frontends.insert(
                    name.clone(),
                    Frontend {
                        name,
                        bind,
                        mode,
                        tls,
                        default_pool,
                        logic: flogic,
                        maxconn,
                        health,
                    },
                );
            }
        }
    }
    frontends
}

/// A frontend's binds (`{base}.bind[j]`): at least one, each an address and
/// port inside a VIP and not bound already (`binds_seen`, across frontends).
fn validate_binds(
    errs: &mut Errs,
    base: &str,
    f: &WireFrontend,
    vips: &[Vip],
    binds_seen: &mut BTreeMap<SocketAddr, String>,
) -> Vec<SocketAddr> {
    let mut bind = Vec::new();
    let Some(list) = errs.required(&f.bind, format!("{base}.bind")) else {
        return bind;
    };
    if list.is_empty() {
        errs.push(
            format!("{base}.bind"),
            "a frontend needs at least one bind address",
        );
    }
    for (j, b) in list.iter().enumerate() {
        let bp = format!("{base}.bind[{j}]");
        let Some(sa) = parse_bind(b) else {
            errs.push(
                bp,
                format!(
                    "invalid bind {b:?}, expected \"192.0.2.10:443\" or \"[2001:db8::10]:443\""
                ),
            );
            continue;
        };
        if sa.port() == 0 {
            errs.push(bp, "port 0 out of range 1-65535");
            continue;
        }
        if !vips.iter().any(|v| v.address.contains(&sa.ip())) {
            errs.push(bp, format!("bind address {} is outside every VIP", sa.ip()));
            continue;
        }
        if let Some(other) = binds_seen.get(&sa) {
            errs.push(bp, format!("{sa} is already bound by frontend {other}"));
            continue;
        }
        binds_seen.insert(sa, f.name.clone().unwrap_or_default());
        bind.push(sa);
    }
    bind
}

/// A frontend's `tls` (`{base}.tls.certificates`): at least one
/// certificate, each of the document.
fn validate_tls(
    errs: &mut Errs,
    base: &str,
    t: &WireTls,
    certificates: &BTreeMap<Name, Certificate>,
) -> FrontendTls {
    if t.certificates.is_empty() {
        errs.push(
            format!("{base}.tls.certificates"),
            "TLS needs at least one certificate",
        );
    }
    let mut certs = Vec::new();
    for (j, c) in t.certificates.iter().enumerate() {
        match Name::try_new(c) {
            Ok(n) if certificates.contains_key(&n) => certs.push(n),
            Ok(_) => errs.push(
                format!("{base}.tls.certificates[{j}]"),
                format!("unknown certificate {c:?}"),
            ),
            Err(e) => errs.push(
                format!("{base}.tls.certificates[{j}]"),
                format!("invalid name {c:?}: {e}"),
            ),
        }
    }
    FrontendTls {
        certificates: certs,
    }
}

/// A frontend's `default_pool` (`{base}.default_pool`): a pool of the
/// document, in the frontend's mode.
fn validate_default_pool(
    errs: &mut Errs,
    base: &str,
    p: &str,
    mode: Option<Mode>,
    pools: &BTreeMap<Name, Arc<Pool>>,
) -> Option<Name> {
    match Name::try_new(p) {
        Ok(n) => match pools.get(&n) {
            Some(pool) => {
                if let Some(m) = mode {
                    if pool.mode != m {
                        errs.push(
                            format!("{base}.default_pool"),
                            format!(
                                "pool {p} is in {} mode but the frontend is in {} mode",
                                pool.mode.as_str(),
                                m.as_str()
                            ),
                        );
                    }
                }
                Some(n)
            }
            None => {
                errs.push(
                    format!("{base}.default_pool"),
                    format!("unknown pool {p:?}"),
                );
                None
            }
        },
        Err(e) => {
            errs.push(
                format!("{base}.default_pool"),
                format!("invalid name {p:?}: {e}"),
            );
            None
        }
    }
}

/// A frontend's `maxconn` (`{base}.maxconn`), 1-10000000 when given.
fn validate_maxconn(errs: &mut Errs, base: &str, maxconn: Option<i64>) -> Option<u32> {
    match maxconn {
        None => None,
        Some(m) if (1..=10_000_000).contains(&m) => Some(m as u32),
        Some(m) => {
            errs.push(
                format!("{base}.maxconn"),
                format!("maxconn {m} out of range 1-10000000"),
            );
            None
        }
    }
}

/// A frontend's `health` (`{base}.health`): its health check override.
fn validate_health(errs: &mut Errs, base: &str, h: &WireHealth) -> HealthSpec {
    let hb = format!("{base}.health");
    HealthSpec {
        kind: check_health_kind(errs, &h.kind, format!("{hb}.type")),
        path: check_path(errs, &h.path, format!("{hb}.path")),
        host: check_host(errs, &h.host, format!("{hb}.host")),
        expect_status: check_statuses(errs, &h.expect_status, &format!("{hb}.expect_status")),
    }
}

fn parse_bind(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok()
}
