//! The schema-1 wire document → [`DesiredState`], or every reason why not.
//!
//! This is where untrusted input from the central API becomes trusted model
//! data (docs/api.md, docs/safety.md). The wire structs (`Wire*`) accept anything
//! shape-compatible: unknown fields are ignored for forward compatibility and
//! every field is optional, so that a missing required field is reported with
//! its full JSON path (`pools[3].servers[7].port`) instead of serde's
//! "missing field". Validation then collects *all* problems at once; a
//! document with any problem is rejected as a whole.
//!
//! [`removal_guard`] is separate because it compares two documents: it is run
//! by the reconciler against the state currently applied.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::hostnet::VipPolicy;
use super::*;
use crate::logic::LogicHost;

/// One problem in a document, with the JSON path of the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// JSON path like `pools[3].servers[7].port`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All problems of a rejected document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 20;
        for (i, e) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, "; and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// What validation needs to know about the host.
#[derive(Debug, Clone)]
pub struct ValidateContext {
    /// The group this host belongs to; a document for another group is refused.
    pub group: String,
}

/// Parses and validates a document body (JSON bytes) on its own, rendering
/// its logic snippets with placeholder host facts ([`LogicHost::unknown`])
/// and checking no VIP against any host.
///
/// The agent validates with [`parse_document_on_host`]; the renderer checks
/// the snippets again with the real host facts. This is for tools and tests
/// that only care about the document's own consistency.
pub fn parse_document(
    body: &[u8],
    ctx: &ValidateContext,
) -> Result<DesiredState, ValidationErrors> {
    parse_with(body, ctx, &LogicHost::unknown(&ctx.group), None)
}

/// Parses and validates a document body, rendering every logic snippet for
/// every frontend it is attached to with this host's facts.
pub fn parse_document_for(
    body: &[u8],
    ctx: &ValidateContext,
    host: &LogicHost,
) -> Result<DesiredState, ValidationErrors> {
    parse_with(body, ctx, host, None)
}

/// Parses and validates a document body for this host: on top of
/// [`parse_document_for`], every VIP must pass `policy` (allow-list, length
/// cap, the host's own addresses and routes; see `model::hostnet`), each
/// problem reported at the VIP's path (`vips[3].address`).
pub fn parse_document_on_host(
    body: &[u8],
    ctx: &ValidateContext,
    host: &LogicHost,
    policy: &VipPolicy,
) -> Result<DesiredState, ValidationErrors> {
    parse_with(body, ctx, host, Some(policy))
}

/// The VIP prefixes a body names, without validating anything else: what
/// the host observation needs to know before validation (it keeps only the
/// host's addresses and routes that could collide with them). Unparsable
/// bodies and entries give an empty or partial list; validation reports them.
pub fn document_vips(body: &[u8]) -> Vec<IpNet> {
    #[derive(Deserialize)]
    struct OnlyVips {
        #[serde(default)]
        vips: Vec<WireVip>,
    }
    serde_json::from_slice::<OnlyVips>(body)
        .map(|d| {
            d.vips
                .iter()
                .filter_map(|v| v.address.as_deref()?.parse::<IpNet>().ok())
                .map(|n| n.trunc())
                .collect()
        })
        .unwrap_or_default()
}

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
                        .all(|k| super::unknown::SERVER.contains(&k.as_str()))
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

fn parse_with(
    body: &[u8],
    ctx: &ValidateContext,
    host: &LogicHost,
    policy: Option<&VipPolicy>,
) -> Result<DesiredState, ValidationErrors> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let wire: WireDocument = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." || path == "?" {
            String::new()
        } else {
            path
        };
        ValidationErrors(vec![ValidationError {
            path,
            message: e.into_inner().to_string(),
        }])
    })?;
    let mut d = validate(wire, ctx, host, policy)?;
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        d.warnings = super::unknown::unknown_fields(&v);
    }
    Ok(d)
}

// ---------------------------------------------------------------------------
// Wire types: permissive, everything optional, unknown fields ignored.

#[derive(Debug, Default, Deserialize)]
struct WireDocument {
    schema: Option<i64>,
    revision: Option<i64>,
    group: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    vips: Vec<WireVip>,
    #[serde(default)]
    frontends: Vec<WireFrontend>,
    #[serde(default)]
    pools: Vec<WirePool>,
    #[serde(default)]
    logic: Vec<WireLogic>,
    #[serde(default)]
    maps: Vec<WireMap>,
    #[serde(default)]
    acls: Vec<WireAcl>,
    #[serde(default)]
    certificates: Vec<WireCertificate>,
    availability_zones: Option<super::az::WireAz>,
}

#[derive(Debug, Deserialize)]
struct WireVip {
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireFrontend {
    name: Option<String>,
    bind: Option<Vec<String>>,
    mode: Option<String>,
    tls: Option<WireTls>,
    default_pool: Option<String>,
    #[serde(default)]
    logic: Vec<String>,
    maxconn: Option<i64>,
    health: Option<WireHealth>,
}

#[derive(Debug, Deserialize)]
struct WireTls {
    #[serde(default)]
    certificates: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct WireHealth {
    #[serde(rename = "type")]
    kind: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    expect_status: Vec<i64>,
}

#[derive(Debug, Deserialize)]
struct WirePool {
    name: Option<String>,
    mode: Option<String>,
    balance: Option<String>,
    check: Option<WireCheck>,
    #[serde(default)]
    servers: Vec<WireServer>,
    routing: Option<String>,
    stickiness: Option<String>,
    #[serde(default)]
    logic: Vec<String>,
    timeouts: Option<super::options::WireTimeouts>,
    retries: Option<i64>,
    redispatch: Option<bool>,
    http_reuse: Option<String>,
    slowstart: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireCheck {
    #[serde(rename = "type")]
    kind: Option<String>,
    path: Option<String>,
    host: Option<String>,
    interval: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct WireServer {
    name: Option<String>,
    address: Option<String>,
    port: Option<i64>,
    weight: Option<i64>,
    state: Option<String>,
    az: Option<String>,
    #[serde(default)]
    backup: bool,
}

#[derive(Debug, Deserialize)]
struct WireLogic {
    name: Option<String>,
    template: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireMap {
    name: Option<String>,
    #[serde(default)]
    entries: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct WireAcl {
    name: Option<String>,
    #[serde(default)]
    entries: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct WireCertificate {
    name: Option<String>,
    pem: Option<String>,
}

// ---------------------------------------------------------------------------
// Validation.

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

struct Errs(Vec<ValidationError>);

impl Errs {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn required<'a, T>(&mut self, v: &'a Option<T>, path: String) -> Option<&'a T> {
        if v.is_none() {
            self.push(path, "missing required field");
        }
        v.as_ref()
    }

    fn name(&mut self, v: &Option<String>, path: String) -> Option<Name> {
        let s = self.required(v, path.clone())?;
        match Name::try_new(s) {
            Ok(n) => Some(n),
            Err(e) => {
                self.push(path, format!("invalid name {s:?}: {e}"));
                None
            }
        }
    }

    fn mode(&mut self, v: &Option<String>, path: String) -> Option<Mode> {
        match self.required(v, path.clone())?.as_str() {
            "http" => Some(Mode::Http),
            "tcp" => Some(Mode::Tcp),
            other => {
                self.push(
                    path,
                    format!("unknown mode {other:?}, expected \"http\" or \"tcp\""),
                );
                None
            }
        }
    }
}

/// Characters allowed in values that reach haproxy.cfg unquoted (paths, hosts, map keys).
fn is_safe_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | '#'))
}

fn check_health_kind(errs: &mut Errs, v: &Option<String>, path: String) -> Option<HealthKind> {
    match v.as_deref()? {
        "tcp" => Some(HealthKind::Tcp),
        "http" => Some(HealthKind::Http),
        "tls" => Some(HealthKind::Tls),
        other => {
            errs.push(
                path,
                format!("unknown check type {other:?}, expected \"tcp\", \"http\" or \"tls\""),
            );
            None
        }
    }
}

fn check_path(errs: &mut Errs, v: &Option<String>, path: String) -> Option<String> {
    let p = v.as_ref()?;
    if !p.starts_with('/') || !is_safe_token(p) {
        errs.push(
            path,
            format!("invalid path {p:?}: must start with '/' and contain no spaces, quotes or '#'"),
        );
        return None;
    }
    Some(p.clone())
}

fn check_host(errs: &mut Errs, v: &Option<String>, path: String) -> Option<String> {
    let h = v.as_ref()?;
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    if !ok {
        errs.push(path, format!("invalid host {h:?}"));
        return None;
    }
    Some(h.clone())
}

fn check_statuses(errs: &mut Errs, v: &[i64], path: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for (i, s) in v.iter().enumerate() {
        if (100..=599).contains(s) {
            out.push(*s as u16);
        } else {
            errs.push(
                format!("{path}[{i}]"),
                format!("HTTP status {s} out of range 100-599"),
            );
        }
    }
    out
}

fn check_port(errs: &mut Errs, p: i64, path: String) -> Option<u16> {
    if (1..=65535).contains(&p) {
        Some(p as u16)
    } else {
        errs.push(path, format!("port {p} out of range 1-65535"));
        None
    }
}

/// Validates a parsed wire document.
// long: every section of the document validated in order; to be split per section (issue 13, not done yet)
fn validate(
    w: WireDocument,
    ctx: &ValidateContext,
    host: &LogicHost,
    policy: Option<&VipPolicy>,
) -> Result<DesiredState, ValidationErrors> {
    let mut errs = Errs(Vec::new());

    match w.schema {
        Some(1) => {}
        Some(n) => errs.push(
            "schema",
            format!("unsupported schema {n}, this agent understands schema 1"),
        ),
        None => errs.push("schema", "missing required field"),
    }
    let revision = match w.revision {
        Some(r) if r >= 0 => r as u64,
        Some(r) => {
            errs.push("revision", format!("revision {r} is negative"));
            0
        }
        None => {
            errs.push("revision", "missing required field");
            0
        }
    };
    let group = match &w.group {
        Some(g) if *g == ctx.group => g.clone(),
        Some(g) => {
            errs.push(
                "group",
                format!(
                    "document is for group {g:?}, this host is in group {:?}",
                    ctx.group
                ),
            );
            g.clone()
        }
        None => {
            errs.push("group", "missing required field");
            String::new()
        }
    };

    // VIPs.
    let document_vips: BTreeSet<IpNet> = w
        .vips
        .iter()
        .filter_map(|v| v.address.as_deref()?.parse::<IpNet>().ok())
        .collect();
    let mut vips: Vec<Vip> = Vec::new();
    for (i, v) in w.vips.iter().enumerate() {
        let path = format!("vips[{i}].address");
        let Some(a) = errs.required(&v.address, path.clone()) else {
            continue;
        };
        match a.parse::<IpNet>() {
            Ok(net) if net.trunc() != net => errs.push(
                path,
                format!("{a} has host bits set (did you mean {}?)", net.trunc()),
            ),
            Ok(net) => {
                for problem in policy
                    .map(|p| p.check(net, &document_vips))
                    .unwrap_or_default()
                {
                    errs.push(path.clone(), problem);
                }
                if vips.iter().any(|x| x.address == net) {
                    errs.push(path, format!("duplicate VIP {net}"));
                } else if let Some(o) = vips
                    .iter()
                    .find(|x| x.address.contains(&net) || net.contains(&x.address))
                {
                    errs.push(path, format!("VIP {net} overlaps VIP {}", o.address));
                } else {
                    vips.push(Vip { address: net });
                }
            }
            Err(_) => errs.push(
                path,
                format!("invalid prefix {a:?}, expected e.g. \"192.0.2.10/32\""),
            ),
        }
    }
    vips.sort();

    // Certificates, logic, maps, ACLs first: frontends refer to them.
    let mut certificates = BTreeMap::new();
    for (i, c) in w.certificates.iter().enumerate() {
        let name = errs.name(&c.name, format!("certificates[{i}].name"));
        let pem = errs.required(&c.pem, format!("certificates[{i}].pem"));
        if let Some(p) = pem {
            if let Err(e) = grammar::check_pem(p) {
                errs.push(format!("certificates[{i}].pem"), e);
            }
        }
        if let (Some(name), Some(pem)) = (name, pem) {
            if certificates.contains_key(&name) {
                errs.push(
                    format!("certificates[{i}].name"),
                    format!("duplicate certificate name {name}"),
                );
            } else {
                certificates.insert(
                    name.clone(),
                    Certificate {
                        name,
                        pem: pem.clone(),
                    },
                );
            }
        }
    }

    let mut logic = BTreeMap::new();
    let engine = crate::logic::Engine::default();
    for (i, l) in w.logic.iter().enumerate() {
        let name = errs.name(&l.name, format!("logic[{i}].name"));
        let template = errs.required(&l.template, format!("logic[{i}].template"));
        if let Some(t) = template {
            // The same engine and bounds the renderer uses; rendering per
            // frontend is checked once the whole document is known.
            if let Err(e) = engine.compile(t) {
                errs.push(format!("logic[{i}].template"), e.to_string());
            }
        }
        if let (Some(name), Some(template)) = (name, template) {
            if logic.contains_key(&name) {
                errs.push(
                    format!("logic[{i}].name"),
                    format!("duplicate logic name {name}"),
                );
            } else {
                logic.insert(
                    name.clone(),
                    Logic {
                        name,
                        template: template.clone(),
                    },
                );
            }
        }
    }

    let mut maps = BTreeMap::new();
    for (i, m) in w.maps.iter().enumerate() {
        let name = errs.name(&m.name, format!("maps[{i}].name"));
        for (k, v) in &m.entries {
            if let Err(e) = grammar::check_key(k, "key") {
                errs.push(format!("maps[{i}].entries"), e);
            } else if let Err(e) = grammar::check_value(v) {
                errs.push(format!("maps[{i}].entries.{k}"), e);
            }
        }
        if let Some(name) = name {
            if maps.contains_key(&name) {
                errs.push(
                    format!("maps[{i}].name"),
                    format!("duplicate map name {name}"),
                );
            } else {
                maps.insert(
                    name.clone(),
                    MapDef {
                        name,
                        entries: m.entries.clone(),
                    },
                );
            }
        }
    }

    let mut acls = BTreeMap::new();
    for (i, a) in w.acls.iter().enumerate() {
        let name = errs.name(&a.name, format!("acls[{i}].name"));
        for (j, e) in a.entries.iter().enumerate() {
            if let Err(e) = grammar::check_key(e, "pattern") {
                errs.push(format!("acls[{i}].entries[{j}]"), e);
            }
        }
        if let Some(name) = name {
            if acls.contains_key(&name) {
                errs.push(
                    format!("acls[{i}].name"),
                    format!("duplicate ACL name {name}"),
                );
            } else {
                let mut entries = a.entries.clone();
                entries.sort();
                entries.dedup();
                acls.insert(name.clone(), AclDef { name, entries });
            }
        }
    }

    let availability_zones = w
        .availability_zones
        .as_ref()
        .map(|a| super::az::validate_section(a, &mut errs.0));

    // Pools.
    let mut pools = BTreeMap::new();
    for (i, p) in w.pools.iter().enumerate() {
        let base = format!("pools[{i}]");
        if let Some(pool) = validate_pool(&mut errs, &base, p, availability_zones.as_ref(), &logic)
        {
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

    // Frontends.
    let mut frontends = BTreeMap::new();
    let mut binds_seen: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (i, f) in w.frontends.iter().enumerate() {
        let base = format!("frontends[{i}]");
        let name = errs.name(&f.name, format!("{base}.name"));
        let mode = errs.mode(&f.mode, format!("{base}.mode"));
        let mut bind = Vec::new();
        if let Some(list) = errs.required(&f.bind, format!("{base}.bind")) {
            if list.is_empty() {
                errs.push(
                    format!("{base}.bind"),
                    "a frontend needs at least one bind address",
                );
            }
            for (j, b) in list.iter().enumerate() {
                let bp = format!("{base}.bind[{j}]");
                let Some(sa) = parse_bind(b) else {
                    errs.push(bp, format!("invalid bind {b:?}, expected \"192.0.2.10:443\" or \"[2001:db8::10]:443\""));
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
        }
        let tls = f.tls.as_ref().map(|t| {
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
        });
        let default_pool = f
            .default_pool
            .as_ref()
            .and_then(|p| match Name::try_new(p) {
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
            });
        let flogic = logic_refs(&mut errs, &f.logic, &logic, &base);
        let maxconn = match f.maxconn {
            None => None,
            Some(m) if (1..=10_000_000).contains(&m) => Some(m as u32),
            Some(m) => {
                errs.push(
                    format!("{base}.maxconn"),
                    format!("maxconn {m} out of range 1-10000000"),
                );
                None
            }
        };
        let health = f.health.as_ref().map(|h| {
            let hb = format!("{base}.health");
            HealthSpec {
                kind: check_health_kind(&mut errs, &h.kind, format!("{hb}.type")),
                path: check_path(&mut errs, &h.path, format!("{hb}.path")),
                host: check_host(&mut errs, &h.host, format!("{hb}.host")),
                expect_status: check_statuses(
                    &mut errs,
                    &h.expect_status,
                    &format!("{hb}.expect_status"),
                ),
            }
        });
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

    if !errs.0.is_empty() {
        return Err(ValidationErrors(errs.0));
    }
    let d = DesiredState {
        revision,
        group,
        force: w.force,
        vips,
        frontends,
        pools,
        logic,
        maps,
        acls,
        certificates,
        availability_zones,
        warnings: Vec::new(),
    };
    check_logic(&d, &w, host)?;
    Ok(d)
}

/// The logic objects named by `refs` (`BASE.logic[j]`), each known.
fn logic_refs(
    errs: &mut Errs,
    refs: &[String],
    logic: &BTreeMap<Name, Logic>,
    base: &str,
) -> Vec<Name> {
    let mut out = Vec::new();
    for (j, l) in refs.iter().enumerate() {
        match Name::try_new(l) {
            Ok(n) if logic.contains_key(&n) => out.push(n),
            Ok(_) => errs.push(format!("{base}.logic[{j}]"), format!("unknown logic {l:?}")),
            Err(e) => errs.push(
                format!("{base}.logic[{j}]"),
                format!("invalid name {l:?}: {e}"),
            ),
        }
    }
    out
}

/// One pool of the document at `base` (`pools[3]`), its servers included;
/// `None` when it has a problem (pushed to `errs`). Uniqueness among pools
/// is the caller's. Both the full and the incremental path
/// (`model::incremental`) validate a pool with this.
fn validate_pool(
    errs: &mut Errs,
    base: &str,
    p: &WirePool,
    availability_zones: Option<&AzSection>,
    logic: &BTreeMap<Name, Logic>,
) -> Option<Pool> {
    let name = errs.name(&p.name, format!("{base}.name"));
    let mode = errs.mode(&p.mode, format!("{base}.mode"));
    let routing =
        super::az::parse_routing(p.routing.as_deref(), format!("{base}.routing"), &mut errs.0);
    let stickiness = super::az::parse_stickiness(
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
        super::az::check_routed_pool(base, availability_zones, &azs, &mut errs.0);
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
    let mut options = super::options::parse(
        &super::options::WireOptions {
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
    let plogic = logic_refs(errs, &p.logic, logic, base);
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

/// Renders every snippet for every frontend and pool it is attached to, as
/// the renderer will, and refuses the document if one exceeds its bounds or
/// leaves its section (`logic::check`). The error names the JSON path (a
/// frontend's: `logic[i].template` and the frontend; a pool's:
/// `pools[i].logic[j]` and the logic object).
fn check_logic(
    d: &DesiredState,
    w: &WireDocument,
    host: &LogicHost,
) -> Result<(), ValidationErrors> {
    let Err(problems) = crate::logic::render_logic(d, host) else {
        return Ok(());
    };
    let index = |names: Vec<Option<&String>>, n: &Name| {
        names
            .iter()
            .position(|x| x.map(String::as_str) == Some(n.as_str()))
            .unwrap_or(0)
    };
    let logic_names: Vec<Option<&String>> = w.logic.iter().map(|l| l.name.as_ref()).collect();
    let fe_names: Vec<Option<&String>> = w.frontends.iter().map(|f| f.name.as_ref()).collect();
    let pool_names: Vec<Option<&String>> = w.pools.iter().map(|p| p.name.as_ref()).collect();
    let errors = problems
        .into_iter()
        .map(|p| {
            use crate::logic::Target;
            // A frontend's snippet: the logic's template (as before pools
            // had logic); a pool's: the reference (`pools[3].logic[0]`).
            let reference = |base: String, refs: Option<&Vec<String>>| {
                let j = refs
                    .and_then(|r| r.iter().position(|x| x.as_str() == p.logic.as_str()))
                    .unwrap_or(0);
                format!("{base}.logic[{j}]")
            };
            let (path, mut message) = match &p.target {
                Some(Target::Frontend(f)) => (
                    format!("logic[{}].template", index(logic_names.clone(), &p.logic)),
                    format!(
                        "rendered for frontends[{}] ({f}): ",
                        index(fe_names.clone(), f)
                    ),
                ),
                Some(Target::Pool(n)) => {
                    let i = index(pool_names.clone(), n);
                    (
                        reference(format!("pools[{i}]"), w.pools.get(i).map(|x| &x.logic)),
                        format!(
                            "logic {} (logic[{}].template) rendered for pool {n}: ",
                            p.logic,
                            index(logic_names.clone(), &p.logic)
                        ),
                    )
                }
                None => (
                    format!("logic[{}].template", index(logic_names.clone(), &p.logic)),
                    String::new(),
                ),
            };
            match &p.problem {
                crate::logic::Problem::Template(e) => message.push_str(&e.to_string()),
                crate::logic::Problem::Violation(v) => message.push_str(&v.to_string()),
            }
            ValidationError { path, message }
        })
        .collect();
    Err(ValidationErrors(errors))
}

fn parse_bind(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok()
}

/// Formats an error with its sources (tera hides the useful part in the chain).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Refuses a document that removes too much at once (docs/safety.md, "A document that removes too much is refused"), unless it is forced.
///
/// Counts VIPs and servers (identified by pool + server name) present in
/// `prev` and absent from `next`; if either share exceeds `max_ratio`, the
/// document is refused with a message saying how much it would remove.
pub fn removal_guard(
    prev: &DesiredState,
    next: &DesiredState,
    max_ratio: f64,
) -> Result<(), String> {
    if next.force || max_ratio >= 1.0 {
        return Ok(());
    }
    let prev_vips: BTreeSet<_> = prev.vips.iter().map(|v| v.address).collect();
    let next_vips: BTreeSet<_> = next.vips.iter().map(|v| v.address).collect();
    let removed_vips = prev_vips.difference(&next_vips).count();
    let servers = |d: &DesiredState| -> BTreeSet<(String, String)> {
        d.pools
            .values()
            .flat_map(|p| {
                p.servers
                    .keys()
                    .map(move |s| (p.name.to_string(), s.to_string()))
            })
            .collect()
    };
    let prev_srv = servers(prev);
    let next_srv = servers(next);
    let removed_srv = prev_srv.difference(&next_srv).count();
    let mut problems = Vec::new();
    if !prev_vips.is_empty() && removed_vips as f64 / prev_vips.len() as f64 > max_ratio {
        problems.push(format!("{removed_vips} of {} VIPs", prev_vips.len()));
    }
    if !prev_srv.is_empty() && removed_srv as f64 / prev_srv.len() as f64 > max_ratio {
        problems.push(format!("{removed_srv} of {} servers", prev_srv.len()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "revision {} would remove {} at once (max_removal_ratio {max_ratio}); refused, set \"force\": true to apply",
            next.revision,
            problems.join(" and ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ValidateContext {
        ValidateContext {
            group: "blue".into(),
        }
    }

    fn doc(extra: serde_json::Value) -> Vec<u8> {
        let mut base = serde_json::json!({
            "schema": 1, "revision": 7, "group": "blue",
            "vips": [{"address": "192.0.2.10/32"}],
            "frontends": [{"name": "www", "bind": ["192.0.2.10:80"], "mode": "http", "default_pool": "web"}],
            "pools": [{"name": "web", "mode": "http", "servers": [
                {"name": "a", "address": "10.1.0.1", "port": 8080, "weight": 100}
            ]}]
        });
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::to_vec(&base).unwrap()
    }

    fn errors(body: &[u8]) -> Vec<String> {
        parse_document(body, &ctx())
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn valid_minimal() {
        let d = parse_document(&doc(serde_json::json!({})), &ctx()).unwrap();
        assert_eq!(d.revision, 7);
        assert_eq!(d.pools["web"].servers["a"].weight, 100);
        assert_eq!(d.services_of(&d.vips[0]).count(), 1);
    }

    #[test]
    fn services_by_vip_matches_services_of_for_every_vip() {
        let body = doc(serde_json::json!({
            "vips": [
                {"address": "192.0.2.10/32"},
                {"address": "198.51.100.0/24"},
                {"address": "2001:db8::10/128"},
                {"address": "192.0.2.99/32"}
            ],
            "frontends": [
                {"name": "www", "bind": ["192.0.2.10:80", "198.51.100.7:80", "198.51.100.8:80"], "mode": "http", "default_pool": "web"},
                {"name": "api", "bind": ["198.51.100.9:443"], "mode": "http", "default_pool": "web"},
                {"name": "v6", "bind": ["[2001:db8::10]:80"], "mode": "http", "default_pool": "web"},
                {"name": "alt", "bind": ["192.0.2.10:8080"], "mode": "http", "default_pool": "web"}
            ]
        }));
        let d = parse_document(&body, &ctx()).unwrap();
        let by_vip = d.services_by_vip();
        assert_eq!(by_vip.len(), d.vips.len());
        for v in &d.vips {
            let want: Vec<&str> = d.services_of(v).map(|f| f.name.as_str()).collect();
            let got: Vec<&str> = by_vip[&v.address].iter().map(|f| f.name.as_str()).collect();
            assert_eq!(got, want, "services of {}", v.address);
        }
        let names = |vip: &str| -> Vec<&str> {
            by_vip[&vip.parse().unwrap()]
                .iter()
                .map(|f| f.name.as_str())
                .collect()
        };
        assert_eq!(names("192.0.2.10/32"), ["alt", "www"]);
        // Two binds of www inside the /24 count once.
        assert_eq!(names("198.51.100.0/24"), ["api", "www"]);
        assert_eq!(names("2001:db8::10/128"), ["v6"]);
        assert!(names("192.0.2.99/32").is_empty());
    }

    #[test]
    fn missing_port_names_the_path() {
        let body = doc(
            serde_json::json!({"pools": [{"name": "web", "mode": "http", "servers": [
            {"name": "a", "address": "10.1.0.1", "port": 1}, {"name": "b", "address": "10.1.0.2"}]}]}),
        );
        assert_eq!(
            errors(&body),
            vec!["pools[0].servers[1].port: missing required field"]
        );
    }

    #[test]
    fn wrong_type_names_the_path() {
        let body = doc(
            serde_json::json!({"pools": [{"name": "web", "mode": "http", "servers": [
            {"name": "a", "address": "10.1.0.1", "port": "80"}]}]}),
        );
        let e = errors(&body);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("pools[0].servers[0].port: invalid type"),
            "{e:?}"
        );
    }

    #[test]
    fn reports_all_errors_at_once() {
        let body = doc(serde_json::json!({
            "frontends": [{"name": "bad name", "bind": ["198.51.100.1:80", "192.0.2.10:0"], "mode": "http", "default_pool": "nope"}],
            "pools": [{"name": "web", "mode": "http", "servers": [
                {"name": "a;b", "address": "10.1.0.1", "port": 70000, "weight": 300}]}]
        }));
        let e = errors(&body);
        for want in [
            "frontends[0].name: invalid name \"bad name\"",
            "frontends[0].bind[0]: bind address 198.51.100.1 is outside every VIP",
            "frontends[0].bind[1]: port 0 out of range",
            "frontends[0].default_pool: unknown pool \"nope\"",
            "pools[0].servers[0].name: invalid name \"a;b\"",
            "pools[0].servers[0].port: port 70000 out of range",
            "pools[0].servers[0].weight: weight 300 out of range",
        ] {
            assert!(
                e.iter().any(|x| x.starts_with(want)),
                "missing {want:?} in {e:#?}"
            );
        }
    }

    #[test]
    fn garbage_is_rejected() {
        let e = parse_document(b"<html>503</html>", &ctx()).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e.0[0].message.contains("expected value"), "{e}");
    }

    #[test]
    fn wrong_group_is_rejected() {
        let body = doc(serde_json::json!({"group": "green"}));
        assert_eq!(
            errors(&body),
            vec!["group: document is for group \"green\", this host is in group \"blue\""]
        );
    }

    #[test]
    fn removal_guard_refuses_emptying() {
        let prev = parse_document(&doc(serde_json::json!({})), &ctx()).unwrap();
        let mut next = DesiredState::empty("blue");
        next.revision = 8;
        let e = removal_guard(&prev, &next, 0.5).unwrap_err();
        assert!(
            e.contains("1 of 1 VIPs") && e.contains("1 of 1 servers"),
            "{e}"
        );
        next.force = true;
        assert!(removal_guard(&prev, &next, 0.5).is_ok());
        next.force = false;
        assert!(removal_guard(&prev, &next, 1.0).is_ok());
        // Removing nothing is always fine, also from an empty state.
        assert!(removal_guard(&prev, &prev, 0.0).is_ok());
        assert!(removal_guard(&DesiredState::empty("blue"), &prev, 0.0).is_ok());
    }
}
