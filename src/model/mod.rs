//! Pure data: the validated desired state and what was observed of HAProxy.
//!
//! Nothing here does I/O. [`DesiredState`] is built only through validation
//! (`model::validate`, from the wire document the source fetched), so every
//! other module may rely on its invariants: names are safe to put in a config
//! file or on the runtime socket, references resolve, binds sit inside a VIP.

pub mod az;
pub mod files;
pub mod grammar;
pub mod hostnet;
mod names;
pub mod observed;
pub mod options;
pub mod removal;
pub mod unknown;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

pub use az::{AzSection, Routing, Stickiness};
pub use names::{Name, NameError};

/// Monotonically increasing revision of the desired-state document.
pub type Revision = u64;

/// The validated desired state of one load-balancer group (schema 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredState {
    pub revision: Revision,
    pub group: String,
    /// `"force": true` lifts the removal-ratio guard for this document.
    pub force: bool,
    pub vips: Vec<Vip>,
    /// Frontends by name (sorted: rendering and planning are deterministic).
    pub frontends: BTreeMap<Name, Frontend>,
    /// Pools by name, each shared (`Arc`): a state patched from another
    /// (the etcd source's incremental path) shares every pool it did not
    /// change, so copying a state is O(pools), and a consumer can skip an
    /// unchanged pool by pointer ([`std::sync::Arc::ptr_eq`]).
    pub pools: BTreeMap<Name, Arc<Pool>>,
    pub logic: BTreeMap<Name, Logic>,
    pub maps: BTreeMap<Name, MapDef>,
    pub acls: BTreeMap<Name, AclDef>,
    pub certificates: BTreeMap<Name, Certificate>,
    /// The group's availability zones (`availability_zones`), if any.
    pub availability_zones: Option<AzSection>,
    /// Fields of the document the agent ignored (`model::unknown`), as
    /// `path: message`; logged and shown on the status socket.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// An anycast VIP prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Vip {
    pub address: IpNet,
}

/// Proxy mode of a frontend or pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Http,
    Tcp,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }
}

/// A virtual server (HAProxy frontend).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frontend {
    pub name: Name,
    pub bind: Vec<SocketAddr>,
    pub mode: Mode,
    pub tls: Option<FrontendTls>,
    pub default_pool: Option<Name>,
    pub logic: Vec<Name>,
    pub maxconn: Option<u32>,
    pub health: Option<HealthSpec>,
}

/// TLS termination on a frontend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrontendTls {
    pub certificates: Vec<Name>,
}

/// Kind of a VIP service health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    Tcp,
    Http,
    /// TLS handshake (SNI = host) then the HTTP check.
    Tls,
}

/// A frontend's health check override (`health` in the document).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthSpec {
    pub kind: Option<HealthKind>,
    pub path: Option<String>,
    pub host: Option<String>,
    /// Accepted statuses; empty means any 2xx/3xx.
    pub expect_status: Vec<u16>,
}

/// Load-balancing algorithm of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Balance(pub String);

impl Balance {
    /// Algorithms that support `add server` / `del server` in HAProxy 2.6
    /// (and non-binary weights).
    pub fn is_dynamic(&self) -> bool {
        matches!(
            self.0.as_str(),
            "roundrobin" | "leastconn" | "first" | "random"
        )
    }
}

/// A backend's server health check (HAProxy `check`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolCheck {
    pub kind: HealthKind,
    pub path: Option<String>,
    pub host: Option<String>,
    pub interval: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

/// A pool (HAProxy backend).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pool {
    pub name: Name,
    pub mode: Mode,
    pub balance: Balance,
    pub check: Option<PoolCheck>,
    /// Servers by name.
    pub servers: BTreeMap<Name, Server>,
    /// `az`: a backend per zone plus the pool's own as the spill (`plan::az`).
    pub routing: Routing,
    pub stickiness: Stickiness,
    /// Logic objects rendered into the pool's backend(s), in order.
    pub logic: Vec<Name>,
    /// Typed options (timeouts, retries, http-reuse, slowstart, backup servers).
    pub options: PoolOptions,
}

/// `http-reuse` of an http pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpReuse {
    Never,
    Safe,
    Aggressive,
    Always,
}

impl HttpReuse {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpReuse::Never => "never",
            HttpReuse::Safe => "safe",
            HttpReuse::Aggressive => "aggressive",
            HttpReuse::Always => "always",
        }
    }
}

/// A pool's typed options (`pools[].timeouts`, `retries`, `redispatch`,
/// `http_reuse`, `slowstart`, `servers[].backup`). All of them need a
/// reload to change (they are in the pool's structure digest).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PoolOptions {
    pub timeout_connect: Option<Duration>,
    pub timeout_server: Option<Duration>,
    pub timeout_queue: Option<Duration>,
    pub retries: Option<u32>,
    pub redispatch: Option<bool>,
    pub http_reuse: Option<HttpReuse>,
    pub slowstart: Option<Duration>,
    /// Servers that take traffic only while no primary server is usable.
    pub backup: BTreeSet<Name>,
}

impl PoolOptions {
    pub fn is_default(&self) -> bool {
        *self == PoolOptions::default()
    }
}

/// Administrative state of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    Ready,
    Drain,
    Maint,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Drain => "drain",
            ServerState::Maint => "maint",
        }
    }
}

/// A backend server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Server {
    pub name: Name,
    pub address: IpAddr,
    pub port: u16,
    /// 0–256.
    pub weight: u16,
    pub state: ServerState,
    pub az: Option<String>,
}

/// A business-logic snippet: a document template (minijinja, bounded; see
/// `crate::logic`) rendered per attached object and checked before use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Logic {
    pub name: Name,
    pub template: String,
}

/// A map file (key → value).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MapDef {
    pub name: Name,
    pub entries: BTreeMap<String, String>,
}

/// An ACL pattern file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AclDef {
    pub name: Name,
    pub entries: Vec<String>,
}

/// A certificate (PEM bundle: certificate chain + key).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Certificate {
    pub name: Name,
    pub pem: String,
}

impl DesiredState {
    /// An empty state (nothing configured), used before any document arrived.
    pub fn empty(group: &str) -> Self {
        DesiredState {
            revision: 0,
            group: group.to_string(),
            force: false,
            vips: Vec::new(),
            frontends: BTreeMap::new(),
            pools: BTreeMap::new(),
            logic: BTreeMap::new(),
            maps: BTreeMap::new(),
            acls: BTreeMap::new(),
            certificates: BTreeMap::new(),
            availability_zones: None,
            warnings: Vec::new(),
        }
    }

    /// The frontends whose binds fall inside `vip` (the VIP's services), by name.
    pub fn services_of<'a>(&'a self, vip: &'a Vip) -> impl Iterator<Item = &'a Frontend> + 'a {
        self.frontends
            .values()
            .filter(move |f| f.bind.iter().any(|b| vip.address.contains(&b.ip())))
    }

    /// Every VIP's services at once, keyed by the VIP's address: the same
    /// frontends, in the same order, as [`services_of`](Self::services_of)
    /// gives for each VIP, in O(binds × distinct prefix lengths) instead of
    /// O(VIPs × binds) — the gate asks for all of them on every decision.
    pub fn services_by_vip(&self) -> BTreeMap<IpNet, Vec<&Frontend>> {
        let mut out: BTreeMap<IpNet, Vec<&Frontend>> = self
            .vips
            .iter()
            .map(|v| (v.address.trunc(), Vec::new()))
            .collect();
        let lens: BTreeSet<(bool, u8)> = self
            .vips
            .iter()
            .map(|v| (v.address.addr().is_ipv4(), v.address.prefix_len()))
            .collect();
        let mut keyed: BTreeMap<IpNet, Vec<&Frontend>> = BTreeMap::new();
        for f in self.frontends.values() {
            let mut inside: BTreeSet<IpNet> = BTreeSet::new();
            for b in &f.bind {
                for &(v4, len) in &lens {
                    if b.ip().is_ipv4() != v4 {
                        continue;
                    }
                    if let Ok(net) = IpNet::new(b.ip(), len) {
                        let net = net.trunc();
                        if out.contains_key(&net) && inside.insert(net) {
                            keyed.entry(net).or_default().push(f);
                        }
                    }
                }
            }
        }
        for (net, fs) in keyed {
            out.insert(net, fs);
        }
        out
    }

    /// Total number of servers over all pools.
    pub fn server_count(&self) -> usize {
        self.pools.values().map(|p| p.servers.len()).sum()
    }
}
