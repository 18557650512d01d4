//! `agent.toml`: the host-local configuration of lb-agent (reference: docs/config.md).
//!
//! [`Config`] is the validated form every other module receives; it is built
//! once by [`load`] (or [`parse_str`]) and never mutated (SIGHUP builds a new
//! one and swaps it in whole). Parsing is in `parse`: unknown keys and bad
//! values are reported all at once, each with file, line and key, so an
//! operator fixes a broken file in one round trip.

pub mod builder;
mod parse;
mod warnings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use parse::{load, parse_str, ConfigError, ConfigErrors, BIRD_SYMBOL_MAX_LEN, MAX_THREADS};
pub use warnings::{warnings, warnings_for};

/// Default location of the agent configuration.
pub const DEFAULT_PATH: &str = "/etc/lb-agent/agent.toml";

/// The whole validated agent configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: NodeConfig,
    pub source: SourceConfig,
    pub haproxy: HaproxyConfig,
    pub health: HealthConfig,
    pub bird: BirdConfig,
    pub vip: VipConfig,
    pub status: StatusConfig,
    /// Local `[[check]]` tables: extra health checks the API cannot express.
    pub checks: Vec<LocalCheck>,
}

/// `[node]`: who this host is.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Node name (default: the hostname). Sent in the User-Agent, shown on the status socket.
    pub name: String,
    /// Load-balancer group whose configuration is fetched (default `"default"`).
    pub group: String,
    /// Availability zone of this host, exposed to logic templates as `node.az`.
    pub az: Option<String>,
    /// Directory for everything that must survive a restart (drain flag, owned VIPs, ...).
    pub state_dir: PathBuf,
}

/// Where the desired-state document comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUrl {
    /// `http://` or `https://` URL, kept verbatim.
    Http(String),
    /// `file://` URL: a local file, polled every `poll_interval`.
    File(PathBuf),
    /// `etcd://host:port[,host:port…]/<prefix>`: an etcd v3 cluster, one key
    /// per object under the prefix (docs/etcd.md).
    Etcd(EtcdUrl),
}

/// A parsed `etcd://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `host:port` of every member to try, in the configured order.
    pub endpoints: Vec<String>,
    /// Key prefix, always starting and ending with `/` (`/lb/blue/`).
    pub prefix: String,
}

impl EtcdUrl {
    /// The URL as written in agent.toml (`etcd://a:2379,b:2379/lb/blue`).
    pub fn display(&self) -> String {
        format!(
            "etcd://{}{}",
            self.endpoints.join(","),
            self.prefix.trim_end_matches('/')
        )
    }
}

/// `[source]`: the central API poller.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub url: SourceUrl,
    /// Pause between polls when the server does not hold the request (±10% jitter).
    pub poll_interval: Duration,
    /// How long a long-poll may be held by the server (`?wait=`).
    pub long_poll: Duration,
    /// Bearer token file (content trimmed), read at every request so rotation needs no restart.
    pub token_file: Option<PathBuf>,
    /// Extra CA bundle (PEM) trusted for the API.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; requires `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mTLS; requires `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Last-known-good document, applied at start when the API is unreachable.
    pub cache: PathBuf,
    /// Refuse a document removing more than this share of VIPs or servers (1.0 disables).
    pub max_removal_ratio: f64,
    /// Connect timeout for the API (the request timeout is `long_poll` + this).
    pub connect_timeout: Duration,
    /// Largest document accepted from the API, a `file://` source or the
    /// cache, in bytes: a bigger one is refused before it is parsed.
    pub max_document_size: usize,
    /// etcd only: user name for etcd authentication; requires `password_file`.
    pub username: Option<String>,
    /// etcd only: file holding the etcd user's password (content trimmed).
    pub password_file: Option<PathBuf>,
}

/// How backend server slots are allocated in the rendered config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotPolicy {
    /// Round up to the next power of two strictly above the server count (min 4), so
    /// servers can be added at runtime without a reload.
    Pow2,
    /// Exactly as many slots as servers.
    Exact,
}

/// `[haproxy]`: the local HAProxy.
#[derive(Debug, Clone, PartialEq)]
pub struct HaproxyConfig {
    /// The haproxy.cfg the agent renders and owns.
    pub config: PathBuf,
    /// Admin-level stats socket (runtime API).
    pub runtime_socket: PathBuf,
    /// Master CLI socket (`haproxy -W -S <this>`), used to confirm reloads.
    pub master_socket: PathBuf,
    /// haproxy binary, used for `-c` validation.
    pub binary: PathBuf,
    /// Command that reloads HAProxy. Empty: send `reload` on the master socket.
    pub reload_command: Vec<String>,
    /// Operator template overrides; missing files fall back to the built-in defaults.
    pub templates: PathBuf,
    /// Reloads are coalesced: at most one per interval.
    pub min_reload_interval: Duration,
    /// A change needing more runtime commands than this reloads instead.
    pub max_runtime_ops: usize,
    /// Server slot over-allocation policy.
    pub server_slots: SlotPolicy,
    /// `server-state-file` written right before every reload.
    pub state_file: PathBuf,
    /// Directory for map, ACL and certificate files referenced by the config.
    pub data_dir: PathBuf,
    /// `hard-stop-after` rendered into the global section.
    pub hard_stop_after: Duration,
    /// How long to wait for `show proc` to confirm a reload.
    pub reload_timeout: Duration,
    /// Period of the full convergence verification (read back + repair).
    pub verify_interval: Duration,
    /// `log` lines of the global section (empty: HAProxy logs nowhere).
    pub log: Vec<LogTarget>,
    /// `nbthread`; `None` (`"auto"`): HAProxy's own default, the CPUs its
    /// process is bound to at start, unless `cpu_map = "auto"` needs a count.
    pub nbthread: Option<u16>,
    /// `cpu-map` policy.
    pub cpu_map: CpuMap,
    /// Global `maxconn`; `None` (`"auto"`): HAProxy derives it from its
    /// descriptor limit.
    pub maxconn: Option<u32>,
    /// `ssl-default-bind-options ssl-min-ver`.
    pub tls_min_version: TlsMinVersion,
    /// Host-local listener of HAProxy's built-in Prometheus exporter.
    pub prometheus_listen: Option<SocketAddr>,
    /// Host-local listener of HAProxy's stats page.
    pub stats_listen: Option<SocketAddr>,
    /// Path of the stats page on `stats_listen`.
    pub stats_uri: String,
}

/// Where one HAProxy `log` line sends to (`[haproxy] log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogAddr {
    /// A syslog server over UDP (`127.0.0.1:514`, `udp@[::1]:514`).
    Udp(SocketAddr),
    /// A local datagram socket (`/dev/log`).
    Unix(PathBuf),
}

/// One `[haproxy] log` entry: `"<target> <facility> [<max level>]"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    pub addr: LogAddr,
    /// Syslog facility (`local0`, `daemon`, ...).
    pub facility: String,
    /// Most verbose level sent (`info`, `notice`, ...); `None`: every level.
    pub level: Option<String>,
}

/// `[haproxy] cpu_map`: whether HAProxy's threads are pinned to CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMap {
    /// No `cpu-map` (the kernel schedules the threads on the allowed CPUs).
    None,
    /// Thread i on the i-th CPU the agent may use (`cpu-map auto:1/1-N <cpus>`).
    Auto,
}

/// `[haproxy] tls_min_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMinVersion {
    Tls12,
    Tls13,
}

impl TlsMinVersion {
    /// The HAProxy spelling (`ssl-min-ver` argument).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMinVersion::Tls12 => "TLSv1.2",
            TlsMinVersion::Tls13 => "TLSv1.3",
        }
    }
}

/// `[health]`: defaults for the VIP service checks.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes before a service counts as healthy.
    pub rise: u32,
    /// Consecutive failures before a service counts as unhealthy.
    pub fall: u32,
    /// Re-check interval while a service's state is changing.
    pub fast_interval: Duration,
}

/// What the agent does with announcements when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    Withdraw,
    Keep,
}

/// What the gate does with a VIP whose own services fail (`[bird] on_unhealthy`).
/// Host-local hard failures (HAProxy down, address missing, drained, agent
/// stopping) withdraw whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnhealthy {
    /// Withdraw the prefix (docs/gating.md, "The rule"; the default).
    Withdraw,
    /// Move the prefix to the demote set (`demote_variable`), which bird.conf
    /// exports with a longer AS path: the ToR prefers the healthy hosts and
    /// keeps the VIP reachable when every host fails at once.
    Demote,
}

/// `[bird]`: the include file and BIRD's control socket.
#[derive(Debug, Clone, PartialEq)]
pub struct BirdConfig {
    pub include_file: PathBuf,
    pub control_socket: PathBuf,
    pub ipv4_variable: String,
    pub ipv6_variable: String,
    pub dummy_ipv4: IpNet,
    pub dummy_ipv6: IpNet,
    /// Graceful drain set variable; empty disables graceful drain.
    pub drain_variable: Option<String>,
    pub drain_grace: Duration,
    /// Demote set variable; empty means no demote set. Required by
    /// `on_unhealthy = "demote"`.
    pub demote_variable: Option<String>,
    pub on_unhealthy: OnUnhealthy,
    pub on_stop: OnStop,
    /// BGP protocol names whose `show route export` confirms the effect of a reconfigure.
    /// Empty: confirmation by reconfigure reply only.
    pub export_protocols: Vec<String>,
}

/// `[vip]`: VIP addresses on the local interface, and which VIPs the API
/// may ask for (see `docs/security.md`, "VIP restrictions").
#[derive(Debug, Clone, PartialEq)]
pub struct VipConfig {
    pub interface: String,
    pub manage: bool,
    /// A document VIP must lie inside one of these prefixes. Empty: every
    /// VIP is refused. A VIP in a special-purpose range (loopback,
    /// link-local, ...) needs an entry inside that range, not just `0.0.0.0/0`.
    pub allowed_prefixes: Vec<IpNet>,
    /// Shortest IPv4 VIP prefix accepted (24: a /24 or longer).
    pub min_prefix_len_v4: u8,
    /// Shortest IPv6 VIP prefix accepted (64: a /64 or longer).
    pub min_prefix_len_v6: u8,
}

impl VipConfig {
    /// True when `allowed_prefixes` lets every prefix of a family through
    /// (the built-in default, kept for fleets upgrading from versions
    /// without the key); the agent warns about it at start.
    pub fn allows_everything(&self) -> bool {
        self.allowed_prefixes.iter().any(|p| p.prefix_len() == 0)
    }
}

/// `[status]`: the local status socket.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusConfig {
    pub socket: PathBuf,
    /// Socket permission bits (parsed from an octal string like `"0660"`).
    pub mode: u32,
    /// Group owning the socket; members may read, and mutate.
    pub group: String,
    /// Optional TCP listener for Prometheus.
    pub metrics_listen: Option<SocketAddr>,
    /// Most connections open at once on the status socket; more are
    /// answered 503 and closed (the descriptor budget, `docs/security.md`).
    pub max_connections: usize,
    /// Most connections open at once on `metrics_listen`.
    pub metrics_max_connections: usize,
}

/// Kind of a local `[[check]]`.
#[derive(Debug, Clone, PartialEq)]
pub enum LocalCheckKind {
    /// Run a command (argv, no shell) in its own process group; exit 0 = pass.
    Exec { command: Vec<String> },
    /// TCP connect to `target`.
    Tcp { target: SocketAddr },
    /// HTTP GET `path` on `target`, expecting one of `expect_status` (empty: 2xx/3xx).
    Http {
        target: SocketAddr,
        path: String,
        host: Option<String>,
        expect_status: Vec<u16>,
    },
}

/// A local `[[check]]`: an extra service gating a VIP, defined only on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalCheck {
    /// Service name shown on the status socket.
    pub name: String,
    /// The VIP prefix this check gates.
    pub vip: IpNet,
    pub kind: LocalCheckKind,
    /// Overrides `[health] interval`/`timeout`/`rise`/`fall` when set.
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}
