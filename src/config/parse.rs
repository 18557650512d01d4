//! Parsing and validating `agent.toml` into a [`Config`].
//!
//! Why a hand-written walk instead of `#[derive(Deserialize)]` with
//! `deny_unknown_fields`: serde stops at the first problem, and an operator
//! fixing a broken file on a host should see *every* problem in one run of
//! `lb-agent check-config`, each with file, line and the dotted key. So the
//! document is parsed into spanned TOML tables ([`toml::de::DeTable`]) and
//! each section is walked here: every known key is converted (recording an
//! error and falling back to the default when it is wrong), and whatever key
//! was not asked for is reported as unknown, with a "did you mean" hint.
//!
//! Defaults live in one place, [`defaults`], which the packaged
//! `packaging/agent.toml` documents (a unit test keeps the two in step).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{
    BirdConfig, Config, CpuMap, EtcdUrl, HaproxyConfig, HealthConfig, LocalCheck, LocalCheckKind,
    LogAddr, LogTarget, NodeConfig, OnStop, OnUnhealthy, SlotPolicy, SourceConfig, SourceUrl,
    StatusConfig, TlsMinVersion, VipConfig,
};

mod host_haproxy;
pub use host_haproxy::MAX_THREADS;

/// One problem in agent.toml.
///
/// `line` is 1-based; 0 means the problem is not tied to a line (the file
/// could not be read, the hostname could not be determined). `key` is the
/// dotted key (`source.poll_interval`, `check[1].command`), empty for TOML
/// syntax errors.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in agent.toml, sorted by line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Reads and validates the agent configuration at `path`.
///
/// Errors name `path` as given (so the operator sees the file they passed).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_str(&text, &file),
        Err(error) => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 0,
            key: String::new(),
            message: format!("cannot read the configuration: {error}"),
        }])),
    }
}

/// Validates agent.toml content; `file` is only used in error messages.
///
/// A missing section or key takes its default. All problems are reported at
/// once, sorted by line.
pub fn parse_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    parse_collecting(text, file).0
}

/// [`parse_str`], also returning every dotted key the walker knows, so tests
/// can check the packaged file documents all of them.
fn parse_collecting(text: &str, file: &str) -> (Result<Config, ConfigErrors>, Vec<String>) {
    let mut cx = Cx {
        file,
        text,
        errors: Vec::new(),
        known: Vec::new(),
    };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // The recovered tree is a best effort; walking it would report
        // follow-on errors that only confuse. Syntax first.
        for error in syntax {
            let offset = error.span().map(|s| s.start).unwrap_or(0);
            let message = format!("TOML syntax error: {}", error.message().trim_end());
            cx.error(offset, String::new(), message);
        }
        return (Err(cx.take_errors()), cx.known);
    }
    let config = walk(&mut cx, doc.get_ref());
    let known = std::mem::take(&mut cx.known);
    if cx.errors.is_empty() {
        (Ok(config), known)
    } else {
        (Err(cx.take_errors()), known)
    }
}

/// The configuration used for every key that is not set.
///
/// `node_name` is the default for `node.name` (the hostname at run time).
fn defaults(node_name: String) -> Config {
    Config {
        node: NodeConfig {
            name: node_name,
            group: "default".into(),
            az: None,
            state_dir: "/var/lib/lb-agent".into(),
        },
        source: SourceConfig {
            url: SourceUrl::File("/etc/lb-agent/desired.json".into()),
            poll_interval: Duration::from_secs(5),
            long_poll: Duration::from_secs(30),
            token_file: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            cache: "/var/lib/lb-agent/last-good.json".into(),
            max_removal_ratio: 0.5,
            connect_timeout: Duration::from_secs(3),
            max_document_size: 16 << 20,
            username: None,
            password_file: None,
        },
        haproxy: HaproxyConfig {
            config: "/etc/haproxy/haproxy.cfg".into(),
            runtime_socket: "/run/haproxy/admin.sock".into(),
            master_socket: "/run/haproxy-master.sock".into(),
            binary: "/usr/sbin/haproxy".into(),
            reload_command: vec!["systemctl".into(), "reload".into(), "haproxy".into()],
            templates: "/etc/lb-agent/templates".into(),
            min_reload_interval: Duration::from_secs(5),
            max_runtime_ops: 500,
            server_slots: SlotPolicy::Pow2,
            state_file: "/var/lib/lb-agent/haproxy-server-state".into(),
            data_dir: "/etc/haproxy/lb-agent".into(),
            hard_stop_after: Duration::from_secs(30),
            reload_timeout: Duration::from_secs(15),
            verify_interval: Duration::from_secs(60),
            log: vec![LogTarget {
                addr: LogAddr::Unix("/dev/log".into()),
                facility: "local0".into(),
                level: None,
            }],
            nbthread: None,
            cpu_map: CpuMap::None,
            maxconn: None,
            tls_min_version: TlsMinVersion::Tls12,
            prometheus_listen: None,
            stats_listen: None,
            stats_uri: "/stats".into(),
        },
        health: HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 3,
            fall: 2,
            fast_interval: Duration::from_millis(200),
        },
        bird: BirdConfig {
            include_file: "/etc/bird/lb-agent-prefixes.conf".into(),
            control_socket: "/run/bird/bird.ctl".into(),
            ipv4_variable: "ACAST_PS_ADVERTISE".into(),
            ipv6_variable: "ACAST6_PS_ADVERTISE".into(),
            dummy_ipv4: "10.189.200.255/32".parse().expect("valid literal"),
            dummy_ipv6: "2001:db8:ffff::1/128".parse().expect("valid literal"),
            drain_variable: None,
            drain_grace: Duration::from_secs(30),
            demote_variable: None,
            on_unhealthy: OnUnhealthy::Withdraw,
            on_stop: OnStop::Withdraw,
            export_protocols: Vec::new(),
        },
        vip: VipConfig {
            interface: "lo".into(),
            manage: true,
            // Every prefix (with the length cap and the host checks still
            // applied): hosts upgraded from a version without the key keep
            // their VIPs; the agent warns until it is set.
            allowed_prefixes: vec![
                "0.0.0.0/0".parse().expect("valid literal"),
                "::/0".parse().expect("valid literal"),
            ],
            min_prefix_len_v4: 24,
            min_prefix_len_v6: 64,
        },
        status: StatusConfig {
            socket: "/run/lb-agent/status.sock".into(),
            mode: 0o660,
            group: "lb-agent".into(),
            metrics_listen: None,
            max_connections: 64,
            metrics_max_connections: 16,
        },
        checks: Vec::new(),
    }
}

/// Error collector plus the source text (for offsets → lines).
struct Cx<'t> {
    file: &'t str,
    text: &'t str,
    errors: Vec<ConfigError>,
    /// Every dotted key asked for, in walk order.
    known: Vec<String>,
}

impl Cx<'_> {
    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn error(&mut self, offset: usize, key: String, message: String) {
        let line = self.line(offset);
        self.error_at_line(line, key, message);
    }

    fn error_at_line(&mut self, line: usize, key: String, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            key,
            message,
        });
    }

    fn take_errors(&mut self) -> ConfigErrors {
        let mut errors = std::mem::take(&mut self.errors);
        // Stable: errors on one line keep the walk order.
        errors.sort_by_key(|e| e.line);
        ConfigErrors(errors)
    }
}

type Table<'i> = DeTable<'i>;

/// One TOML table being walked: remembers which keys were asked for so the
/// rest can be reported as unknown.
struct Section<'a, 'i> {
    /// Dotted prefix (`source`, `check[0]`); empty for the document root.
    path: String,
    table: Option<&'a Table<'i>>,
    /// Offset of the table (its header) for errors about missing keys.
    offset: usize,
    asked: Vec<&'static str>,
}

impl<'a, 'i> Section<'a, 'i> {
    fn new(path: String, table: Option<&'a Table<'i>>, offset: usize) -> Self {
        Section {
            path,
            table,
            offset,
            asked: Vec::new(),
        }
    }

    fn dotted(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The raw value of `key`, marking it as known.
    fn raw(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.asked.push(key);
        cx.known.push(self.dotted(key));
        self.table?.get(key)
    }

    /// Offset of `key` in the text (for errors involving several keys).
    fn key_offset(&self, key: &str) -> usize {
        self.table
            .and_then(|t| t.get_key_value(key))
            .map(|(k, _)| k.span().start)
            .unwrap_or(self.offset)
    }

    fn is_set(&self, key: &str) -> bool {
        self.table.is_some_and(|t| t.get(key).is_some())
    }

    /// Converts `key` with `conv`; records the error and returns `None` when
    /// the value is wrong, returns `None` silently when the key is absent.
    fn take<T>(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
        conv: impl FnOnce(&DeValue<'_>) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.raw(cx, key)?;
        match conv(value.get_ref()) {
            Ok(v) => Some(v),
            Err(message) => {
                cx.error(value.span().start, self.dotted(key), message);
                None
            }
        }
    }

    /// A sub-table; a missing one is an empty section.
    fn section(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Section<'a, 'i> {
        let path = self.dotted(key);
        match self.raw(cx, key) {
            None => Section::new(path, None, 0),
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => Section::new(path, Some(t), v.span().start),
                other => {
                    cx.error(
                        v.span().start,
                        path.clone(),
                        format!("expected a table, found {}", found(other)),
                    );
                    Section::new(path, None, v.span().start)
                }
            },
        }
    }

    /// Reports every key that was not asked for.
    fn finish(self, cx: &mut Cx<'_>) {
        let Some(table) = self.table else { return };
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if self.asked.contains(&name) {
                continue;
            }
            let message = match closest(name, &self.asked) {
                Some(hint) => format!("unknown key (did you mean `{hint}`?)"),
                None => "unknown key".to_string(),
            };
            cx.error(key.span().start, self.dotted(name), message);
        }
    }
}

/// The known key closest to a misspelt one, if it is plausibly a typo.
fn closest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Value conversions. Each returns the message "what was expected" on error.

fn found(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("{s:?}"),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        other => format!("a {}", other.type_str()),
    }
}

fn string(v: &DeValue<'_>) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("expected a string, found {}", found(v)))
}

fn boolean(v: &DeValue<'_>) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, found {}", found(v)))
}

/// An integer in `min..=max`.
fn int_in(v: &DeValue<'_>, min: i64, max: i64) -> Result<i64, String> {
    let range = || {
        if max >= i64::from(u32::MAX) {
            format!("an integer of at least {min}")
        } else {
            format!("an integer from {min} to {max}")
        }
    };
    let i = v
        .as_integer()
        .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok())
        .ok_or_else(|| format!("expected {}, found {}", range(), found(v)))?;
    if i < min || i > max {
        return Err(format!("expected {}, found {i}", range()));
    }
    Ok(i)
}

fn u32_at_least(min: i64) -> impl Fn(&DeValue<'_>) -> Result<u32, String> {
    move |v| int_in(v, min, u32::MAX.into()).map(|i| i as u32)
}

fn duration(v: &DeValue<'_>) -> Result<Duration, String> {
    let expected = "expected a duration such as \"5s\", \"500ms\" or \"1m 30s\"";
    let s = v
        .as_str()
        .ok_or_else(|| format!("{expected}, found {}", found(v)))?;
    humantime::parse_duration(s).map_err(|e| format!("{expected}, found {s:?} ({e})"))
}

fn positive_duration(v: &DeValue<'_>) -> Result<Duration, String> {
    let d = duration(v)?;
    if d.is_zero() {
        return Err("expected a duration greater than zero".into());
    }
    Ok(d)
}

/// An absolute path: the daemon's working directory is not something an
/// operator should have to think about.
fn abs_path(v: &DeValue<'_>) -> Result<PathBuf, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("expected an absolute path, found {}", found(v)))?;
    if !s.starts_with('/') {
        return Err(format!("expected an absolute path, found {s:?}"));
    }
    Ok(PathBuf::from(s))
}

/// An optional absolute path; `""` means unset.
fn opt_abs_path(v: &DeValue<'_>) -> Result<Option<PathBuf>, String> {
    match v.as_str() {
        Some("") => Ok(None),
        _ => abs_path(v).map(Some),
    }
}

fn string_array(v: &DeValue<'_>) -> Result<Vec<String>, String> {
    let expected = "expected an array of non-empty strings";
    let items = v
        .as_array()
        .ok_or_else(|| format!("{expected}, found {}", found(v)))?;
    items
        .iter()
        .map(|item| match item.get_ref().as_str() {
            Some(s) if !s.is_empty() => Ok(s.to_string()),
            _ => Err(format!("{expected}, found {}", found(item.get_ref()))),
        })
        .collect()
}

/// Host-name-like identifier: it ends up in the User-Agent header, log
/// fields and templates, so keep it to letters, digits, `.`, `_`, `-`.
fn identifier(v: &DeValue<'_>) -> Result<String, String> {
    let s = string(v)?;
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(format!(
            "expected 1-253 letters, digits, '.', '_' or '-', found {s:?}"
        ));
    }
    Ok(s)
}

fn opt_identifier(v: &DeValue<'_>) -> Result<Option<String>, String> {
    match v.as_str() {
        Some("") => Ok(None),
        _ => identifier(v).map(Some),
    }
}

/// A BIRD symbol name (it is written into the include file verbatim).
/// BIRD's limit on symbol names (`SYM_MAX_LEN`).
pub const BIRD_SYMBOL_MAX_LEN: usize = 64;

fn bird_symbol(v: &DeValue<'_>) -> Result<String, String> {
    let s = string(v)?;
    let mut chars = s.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(format!(
            "expected a BIRD symbol name (a letter or '_', then letters, digits, '_'), found {s:?}"
        ));
    }
    if s.len() > BIRD_SYMBOL_MAX_LEN {
        return Err(format!(
            "a BIRD symbol name is at most {BIRD_SYMBOL_MAX_LEN} bytes (BIRD's SYM_MAX_LEN), found {} bytes",
            s.len()
        ));
    }
    Ok(s)
}

fn opt_bird_symbol(v: &DeValue<'_>) -> Result<Option<String>, String> {
    match v.as_str() {
        Some("") => Ok(None),
        _ => bird_symbol(v).map(Some),
    }
}

fn bird_symbols(v: &DeValue<'_>) -> Result<Vec<String>, String> {
    let items = v.as_array().ok_or_else(|| {
        format!(
            "expected an array of BIRD protocol names, found {}",
            found(v)
        )
    })?;
    items.iter().map(|i| bird_symbol(i.get_ref())).collect()
}

/// An IP prefix in canonical form (no host bits set).
fn prefix(v: &DeValue<'_>) -> Result<IpNet, String> {
    let expected = "expected an IP prefix such as \"192.0.2.10/32\" or \"2001:db8::10/128\"";
    let s = v
        .as_str()
        .ok_or_else(|| format!("{expected}, found {}", found(v)))?;
    let net: IpNet = s.parse().map_err(|_| format!("{expected}, found {s:?}"))?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set; the prefix is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A list of canonical prefixes (`[vip] allowed_prefixes`).
fn prefixes(v: &DeValue<'_>) -> Result<Vec<IpNet>, String> {
    let items = v.as_array().ok_or_else(|| {
        format!(
            "expected an array of IP prefixes such as [\"192.0.2.0/24\", \"2001:db8:10::/48\"], found {}",
            found(v)
        )
    })?;
    let mut out: Vec<IpNet> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let net = prefix(item.get_ref()).map_err(|e| format!("item {i}: {e}"))?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

/// A connection cap of a listener: at least 1, at most 4096 (each open
/// connection holds a descriptor; see the descriptor budget).
fn connection_cap(v: &DeValue<'_>) -> Result<usize, String> {
    int_in(v, 1, 4096).map(|i| i as usize)
}

/// A size in bytes in `min..=max`: an integer (bytes) or a string with a
/// binary unit (`"512KiB"`, `"16MiB"`, `"1GiB"`; `"B"` or no unit: bytes).
fn byte_size(min: usize, max: usize) -> impl Fn(&DeValue<'_>) -> Result<usize, String> {
    move |v| {
        let expected = format!(
            "expected a size such as \"16MiB\" or \"512KiB\" (from {} to {})",
            fmt_size(min),
            fmt_size(max)
        );
        let bytes: u128 = match v {
            DeValue::Integer(_) => int_in(v, 0, i64::MAX)
                .map_err(|_| format!("{expected}, found {}", found(v)))?
                as u128,
            DeValue::String(s) => {
                parse_size(s).ok_or_else(|| format!("{expected}, found {s:?}"))?
            }
            other => return Err(format!("{expected}, found {}", found(other))),
        };
        if bytes < min as u128 || bytes > max as u128 {
            return Err(format!("{expected}, found {}", found(v)));
        }
        Ok(bytes as usize)
    }
}

fn parse_size(s: &str) -> Option<u128> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u128 = digits.parse().ok()?;
    let mult: u128 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `16777216` → `"16MiB"` (for messages and the packaged defaults).
fn fmt_size(n: usize) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

fn prefix_v4(v: &DeValue<'_>) -> Result<IpNet, String> {
    let net = prefix(v)?;
    match net {
        IpNet::V4(_) => Ok(net),
        IpNet::V6(_) => Err(format!("expected an IPv4 prefix, found {net}")),
    }
}

fn prefix_v6(v: &DeValue<'_>) -> Result<IpNet, String> {
    let net = prefix(v)?;
    match net {
        IpNet::V6(_) => Ok(net),
        IpNet::V4(_) => Err(format!("expected an IPv6 prefix, found {net}")),
    }
}

fn socket_addr(v: &DeValue<'_>) -> Result<SocketAddr, String> {
    let expected = "expected \"ip:port\" such as \"127.0.0.1:9477\" or \"[::1]:9477\"";
    let s = v
        .as_str()
        .ok_or_else(|| format!("{expected}, found {}", found(v)))?;
    s.parse().map_err(|_| format!("{expected}, found {s:?}"))
}

fn opt_socket_addr(v: &DeValue<'_>) -> Result<Option<SocketAddr>, String> {
    match v.as_str() {
        Some("") => Ok(None),
        _ => socket_addr(v).map(Some),
    }
}

/// Permission bits: an octal string (`"0660"`) or a TOML octal integer (`0o660`).
fn octal_mode(v: &DeValue<'_>) -> Result<u32, String> {
    let expected = "expected an octal mode string such as \"0660\"";
    let mode = match v {
        DeValue::String(s) => {
            let digits = s.strip_prefix("0o").unwrap_or(s);
            if digits.is_empty() || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
                return Err(format!("{expected}, found {s:?}"));
            }
            u32::from_str_radix(digits, 8).map_err(|_| format!("{expected}, found {s:?}"))?
        }
        DeValue::Integer(i) if i.radix() == 8 => {
            u32::from_str_radix(i.as_str(), 8).map_err(|_| format!("{expected}, found {i}"))?
        }
        other => return Err(format!("{expected}, found {}", found(other))),
    };
    if mode > 0o777 {
        return Err(format!("{expected}, found {mode:o} (above 0777)"));
    }
    Ok(mode)
}

fn ratio(v: &DeValue<'_>) -> Result<f64, String> {
    let expected = "expected a number from 0.0 to 1.0";
    let x = match v {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        DeValue::Integer(_) => int_in(v, 0, 1).ok().map(|i| i as f64),
        _ => None,
    }
    .ok_or_else(|| format!("{expected}, found {}", found(v)))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{expected}, found {x}"));
    }
    Ok(x)
}

fn source_url(v: &DeValue<'_>) -> Result<SourceUrl, String> {
    let expected = "expected an http://, https://, file:// or etcd:// URL";
    let s = v
        .as_str()
        .ok_or_else(|| format!("{expected}, found {}", found(v)))?;
    if let Some(rest) = s.strip_prefix("etcd://") {
        return etcd_url(rest).map(SourceUrl::Etcd);
    }
    let url = url::Url::parse(s).map_err(|e| format!("{expected}, found {s:?} ({e})"))?;
    // The URL parser is lenient ("http:host" means "http://host/"); an
    // operator's typo should not be silently "fixed".
    if !s
        .get(url.scheme().len()..)
        .is_some_and(|rest| rest.starts_with("://"))
    {
        return Err(format!(
            "{expected}, found {s:?} (missing \"//\" after the scheme)"
        ));
    }
    match url.scheme() {
        "http" | "https" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("{expected}, found {s:?} (no host)"));
            }
            Ok(SourceUrl::Http(s.to_string()))
        }
        "file" => {
            if url
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(format!(
                    "{expected}; a file:// URL names a local path (file:///etc/...), found {s:?}"
                ));
            }
            let path = url
                .to_file_path()
                .map_err(|()| format!("{expected}, found {s:?} (not a usable file path)"))?;
            if path.as_os_str() == "/" || s.ends_with('/') {
                return Err(format!("{expected}, found {s:?} (names a directory)"));
            }
            Ok(SourceUrl::File(path))
        }
        other => Err(format!("{expected}, found scheme {other:?}")),
    }
}

/// `host:port[,host:port…]/<prefix>` (after `etcd://`). The port defaults
/// to 2379; the prefix is one or more `/`-separated segments of
/// `[A-Za-z0-9_.-]` and is normalised to `/seg/…/`.
fn etcd_url(rest: &str) -> Result<EtcdUrl, String> {
    let expected = "expected etcd://host:port[,host:port...]/<prefix>";
    let (hosts, prefix) = rest.split_once('/').ok_or_else(|| {
        format!(
            "{expected}, found {:?} (no key prefix)",
            format!("etcd://{rest}")
        )
    })?;
    let mut endpoints = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        let (name, port) = match host.strip_prefix('[').and_then(|h| h.split_once(']')) {
            Some((v6, rest)) => (&host[..v6.len() + 2], rest.strip_prefix(':')),
            None => match host.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (host, None),
            },
        };
        let ok_name = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
        if !ok_name {
            return Err(format!("{expected}; bad host {host:?}"));
        }
        let port = match port {
            None => 2379,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{expected}; bad port in {host:?}"))?,
        };
        endpoints.push(format!("{name}:{port}"));
    }
    let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    let segment_ok = |s: &&str| {
        s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && *s != "."
            && *s != ".."
    };
    if segments.is_empty() || !segments.iter().all(segment_ok) {
        return Err(format!(
            "{expected}; the prefix {prefix:?} must be one or more segments of letters, digits, '_', '.', '-'"
        ));
    }
    Ok(EtcdUrl {
        endpoints,
        prefix: format!("/{}/", segments.join("/")),
    })
}

fn linux_ifname(v: &DeValue<'_>) -> Result<String, String> {
    let s = string(v)?;
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if !ok {
        return Err(format!(
            "expected a network interface name (1-15 characters, no '/', ':' or spaces), found {s:?}"
        ));
    }
    Ok(s)
}

fn one_of<T: Copy>(
    choices: &'static [(&'static str, T)],
) -> impl Fn(&DeValue<'_>) -> Result<T, String> {
    move |v| {
        let names = choices
            .iter()
            .map(|(n, _)| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let s = v
            .as_str()
            .ok_or_else(|| format!("expected {names}, found {}", found(v)))?;
        choices
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, t)| *t)
            .ok_or_else(|| format!("expected {names}, found {s:?}"))
    }
}

// ---------------------------------------------------------------------------
// The walk.

fn walk(cx: &mut Cx<'_>, doc: &Table<'_>) -> Config {
    let mut root = Section::new(String::new(), Some(doc), 0);

    // `node.name` defaults to the hostname; only look it up when needed.
    let mut node = root.section(cx, "node");
    let name = node.take(cx, "name", identifier);
    let name = match name {
        Some(n) => n,
        None if node.is_set("name") => String::new(), // error already recorded
        None => match hostname() {
            Ok(h) => h,
            Err(message) => {
                cx.error_at_line(0, "node.name".into(), message);
                String::new()
            }
        },
    };
    let mut d = defaults(name);

    let node_cfg = NodeConfig {
        group: node.take(cx, "group", identifier).unwrap_or(d.node.group),
        az: node.take(cx, "az", opt_identifier).unwrap_or(d.node.az),
        state_dir: node
            .take(cx, "state_dir", abs_path)
            .unwrap_or(d.node.state_dir),
        name: d.node.name.clone(),
    };
    node.finish(cx);
    // Agent-owned files live in state_dir unless set explicitly.
    d.source.cache = node_cfg.state_dir.join("last-good.json");
    d.haproxy.state_file = node_cfg.state_dir.join("haproxy-server-state");

    let source = walk_source(cx, &mut root, d.source);
    // `[vip]` first: the HAProxy listeners are checked against its prefixes.
    let vip_cfg = walk_vip(cx, &mut root, d.vip);
    let haproxy = walk_haproxy(cx, &mut root, d.haproxy, &vip_cfg);
    let health = walk_health(cx, &mut root, d.health);
    let bird = walk_bird(cx, &mut root, d.bird);

    let mut status = root.section(cx, "status");
    let status_cfg = StatusConfig {
        socket: status
            .take(cx, "socket", abs_path)
            .unwrap_or(d.status.socket),
        mode: status.take(cx, "mode", octal_mode).unwrap_or(d.status.mode),
        group: status
            .take(cx, "group", identifier)
            .unwrap_or(d.status.group),
        metrics_listen: status
            .take(cx, "metrics_listen", opt_socket_addr)
            .unwrap_or(d.status.metrics_listen),
        max_connections: status
            .take(cx, "max_connections", connection_cap)
            .unwrap_or(d.status.max_connections),
        metrics_max_connections: status
            .take(cx, "metrics_max_connections", connection_cap)
            .unwrap_or(d.status.metrics_max_connections),
    };
    if let Some(addr) = status_cfg.metrics_listen {
        let taken = [
            ("haproxy.prometheus_listen", haproxy.prometheus_listen),
            ("haproxy.stats_listen", haproxy.stats_listen),
        ];
        if let Some((other, _)) = taken.iter().find(|(_, a)| *a == Some(addr)) {
            cx.error(
                status.key_offset("metrics_listen"),
                status.dotted("metrics_listen"),
                format!("{addr} is also {other}: the agent and HAProxy cannot both listen there"),
            );
        }
    }
    status.finish(cx);

    let checks = walk_checks(cx, &mut root);
    root.finish(cx);

    Config {
        node: node_cfg,
        source,
        haproxy,
        health,
        bird,
        vip: vip_cfg,
        status: status_cfg,
        checks,
    }
}

fn walk_source(cx: &mut Cx<'_>, root: &mut Section<'_, '_>, d: SourceConfig) -> SourceConfig {
    let mut s = root.section(cx, "source");
    let cfg = SourceConfig {
        url: s.take(cx, "url", source_url).unwrap_or(d.url),
        poll_interval: s
            .take(cx, "poll_interval", positive_duration)
            .unwrap_or(d.poll_interval),
        long_poll: s
            .take(cx, "long_poll", |v| {
                let d = duration(v)?;
                if d < Duration::from_secs(1) {
                    return Err("expected a duration of at least \"1s\" (the server is asked to hold for whole seconds)".into());
                }
                Ok(d)
            })
            .unwrap_or(d.long_poll),
        token_file: s.take(cx, "token_file", opt_abs_path).unwrap_or(d.token_file),
        ca_file: s.take(cx, "ca_file", opt_abs_path).unwrap_or(d.ca_file),
        client_cert: s.take(cx, "client_cert", opt_abs_path).unwrap_or(d.client_cert),
        client_key: s.take(cx, "client_key", opt_abs_path).unwrap_or(d.client_key),
        cache: s.take(cx, "cache", abs_path).unwrap_or(d.cache),
        max_removal_ratio: s
            .take(cx, "max_removal_ratio", ratio)
            .unwrap_or(d.max_removal_ratio),
        connect_timeout: s
            .take(cx, "connect_timeout", positive_duration)
            .unwrap_or(d.connect_timeout),
        max_document_size: s
            .take(cx, "max_document_size", byte_size(64 << 10, 1 << 30))
            .unwrap_or(d.max_document_size),
        username: s
            .take(cx, "username", |v| {
                let u = string(v)?;
                if u.is_empty() {
                    return Ok(None);
                }
                if u.len() > 128 || u.chars().any(char::is_control) {
                    return Err("expected a user name of at most 128 characters, without control characters".into());
                }
                Ok(Some(u))
            })
            .unwrap_or(d.username),
        password_file: s
            .take(cx, "password_file", opt_abs_path)
            .unwrap_or(d.password_file),
    };
    // The key an authentication error is reported at: the one that is set.
    let auth_key = if cfg.username.is_some() {
        "username"
    } else {
        "password_file"
    };
    if cfg.username.is_some() != cfg.password_file.is_some()
        && !(set_non_empty(&s, "username") && set_non_empty(&s, "password_file"))
    {
        cx.error(
            s.key_offset(auth_key),
            s.dotted(auth_key),
            "username and password_file go together (etcd authentication)".into(),
        );
    }
    if (cfg.username.is_some() || cfg.password_file.is_some())
        && !matches!(cfg.url, SourceUrl::Etcd(_))
    {
        cx.error(
            s.key_offset(auth_key),
            s.dotted(auth_key),
            "only an etcd:// source uses username/password_file (an HTTP API takes token_file)"
                .into(),
        );
    }
    // mTLS needs both halves. Only complain when the set half parsed (a bad
    // value already has its own error).
    match (&cfg.client_cert, &cfg.client_key) {
        (Some(_), None) if !set_non_empty(&s, "client_key") => cx.error(
            s.key_offset("client_cert"),
            s.dotted("client_cert"),
            "client_cert requires client_key (the private key of the client certificate)".into(),
        ),
        (None, Some(_)) if !set_non_empty(&s, "client_cert") => cx.error(
            s.key_offset("client_key"),
            s.dotted("client_key"),
            "client_key requires client_cert (the client certificate to present)".into(),
        ),
        _ => {}
    }
    s.finish(cx);
    cfg
}

/// True when `key` is present with a non-empty value (so if the result lacks
/// it, its conversion failed and was reported already).
fn set_non_empty(s: &Section<'_, '_>, key: &str) -> bool {
    s.table
        .and_then(|t| t.get(key))
        .is_some_and(|v| v.get_ref().as_str() != Some(""))
}

fn walk_vip(cx: &mut Cx<'_>, root: &mut Section<'_, '_>, d: VipConfig) -> VipConfig {
    let mut s = root.section(cx, "vip");
    let cfg = VipConfig {
        interface: s.take(cx, "interface", linux_ifname).unwrap_or(d.interface),
        manage: s.take(cx, "manage", boolean).unwrap_or(d.manage),
        allowed_prefixes: s
            .take(cx, "allowed_prefixes", prefixes)
            .unwrap_or(d.allowed_prefixes),
        min_prefix_len_v4: s
            .take(cx, "min_prefix_len_v4", |v| {
                int_in(v, 8, 32).map(|i| i as u8)
            })
            .unwrap_or(d.min_prefix_len_v4),
        min_prefix_len_v6: s
            .take(cx, "min_prefix_len_v6", |v| {
                int_in(v, 16, 128).map(|i| i as u8)
            })
            .unwrap_or(d.min_prefix_len_v6),
    };
    s.finish(cx);
    cfg
}

fn walk_haproxy(
    cx: &mut Cx<'_>,
    root: &mut Section<'_, '_>,
    d: HaproxyConfig,
    vip: &VipConfig,
) -> HaproxyConfig {
    use host_haproxy as h;
    let mut s = root.section(cx, "haproxy");
    let cfg = HaproxyConfig {
        config: s.take(cx, "config", abs_path).unwrap_or(d.config),
        runtime_socket: s
            .take(cx, "runtime_socket", abs_path)
            .unwrap_or(d.runtime_socket),
        master_socket: s
            .take(cx, "master_socket", abs_path)
            .unwrap_or(d.master_socket),
        binary: s.take(cx, "binary", abs_path).unwrap_or(d.binary),
        reload_command: s
            .take(cx, "reload_command", string_array)
            .unwrap_or(d.reload_command),
        templates: s.take(cx, "templates", abs_path).unwrap_or(d.templates),
        min_reload_interval: s
            .take(cx, "min_reload_interval", duration)
            .unwrap_or(d.min_reload_interval),
        max_runtime_ops: s
            .take(cx, "max_runtime_ops", |v| {
                int_in(v, 0, i64::MAX).map(|i| i as usize)
            })
            .unwrap_or(d.max_runtime_ops),
        server_slots: s
            .take(
                cx,
                "server_slots",
                one_of(&[("pow2", SlotPolicy::Pow2), ("exact", SlotPolicy::Exact)]),
            )
            .unwrap_or(d.server_slots),
        state_file: s.take(cx, "state_file", abs_path).unwrap_or(d.state_file),
        data_dir: s.take(cx, "data_dir", abs_path).unwrap_or(d.data_dir),
        hard_stop_after: s
            .take(cx, "hard_stop_after", positive_duration)
            .unwrap_or(d.hard_stop_after),
        reload_timeout: s
            .take(cx, "reload_timeout", positive_duration)
            .unwrap_or(d.reload_timeout),
        verify_interval: s
            .take(cx, "verify_interval", positive_duration)
            .unwrap_or(d.verify_interval),
        log: s.take(cx, "log", h::log_targets).unwrap_or(d.log),
        nbthread: s.take(cx, "nbthread", h::nbthread).unwrap_or(d.nbthread),
        cpu_map: s
            .take(
                cx,
                "cpu_map",
                one_of(&[("none", CpuMap::None), ("auto", CpuMap::Auto)]),
            )
            .unwrap_or(d.cpu_map),
        maxconn: s.take(cx, "maxconn", h::maxconn).unwrap_or(d.maxconn),
        tls_min_version: s
            .take(
                cx,
                "tls_min_version",
                one_of(&[
                    ("TLSv1.2", TlsMinVersion::Tls12),
                    ("TLSv1.3", TlsMinVersion::Tls13),
                ]),
            )
            .unwrap_or(d.tls_min_version),
        prometheus_listen: s
            .take(cx, "prometheus_listen", h::listener)
            .unwrap_or(d.prometheus_listen),
        stats_listen: s
            .take(cx, "stats_listen", h::listener)
            .unwrap_or(d.stats_listen),
        stats_uri: s.take(cx, "stats_uri", h::stats_uri).unwrap_or(d.stats_uri),
    };
    check_listeners(cx, &s, &cfg, vip);
    s.finish(cx);
    cfg
}

/// HAProxy's host-local listeners stay off the VIP ranges and apart from
/// each other.
fn check_listeners(cx: &mut Cx<'_>, s: &Section<'_, '_>, cfg: &HaproxyConfig, vip: &VipConfig) {
    let listeners = [
        ("prometheus_listen", cfg.prometheus_listen),
        ("stats_listen", cfg.stats_listen),
    ];
    for (key, addr) in listeners {
        let Some(addr) = addr else { continue };
        if let Some(net) = host_haproxy::in_vip_range(addr, &vip.allowed_prefixes) {
            cx.error(
                s.key_offset(key),
                s.dotted(key),
                format!(
                    "{addr} is inside vip.allowed_prefixes {net}: a document may claim that \
                     address as a VIP; use 127.0.0.1 or a management address"
                ),
            );
        }
    }
    if cfg.prometheus_listen.is_some() && cfg.prometheus_listen == cfg.stats_listen {
        cx.error(
            s.key_offset("stats_listen"),
            s.dotted("stats_listen"),
            "must differ from prometheus_listen (HAProxy would share the port between the two)"
                .into(),
        );
    }
}

fn walk_health(cx: &mut Cx<'_>, root: &mut Section<'_, '_>, d: HealthConfig) -> HealthConfig {
    let mut s = root.section(cx, "health");
    let cfg = HealthConfig {
        interval: s
            .take(cx, "interval", positive_duration)
            .unwrap_or(d.interval),
        timeout: s
            .take(cx, "timeout", positive_duration)
            .unwrap_or(d.timeout),
        rise: s.take(cx, "rise", u32_at_least(1)).unwrap_or(d.rise),
        fall: s.take(cx, "fall", u32_at_least(1)).unwrap_or(d.fall),
        fast_interval: s
            .take(cx, "fast_interval", positive_duration)
            .unwrap_or(d.fast_interval),
    };
    s.finish(cx);
    cfg
}

fn walk_bird(cx: &mut Cx<'_>, root: &mut Section<'_, '_>, d: BirdConfig) -> BirdConfig {
    let mut s = root.section(cx, "bird");
    let cfg = BirdConfig {
        include_file: s
            .take(cx, "include_file", abs_path)
            .unwrap_or(d.include_file),
        control_socket: s
            .take(cx, "control_socket", abs_path)
            .unwrap_or(d.control_socket),
        ipv4_variable: s
            .take(cx, "ipv4_variable", bird_symbol)
            .unwrap_or(d.ipv4_variable),
        ipv6_variable: s
            .take(cx, "ipv6_variable", bird_symbol)
            .unwrap_or(d.ipv6_variable),
        dummy_ipv4: s.take(cx, "dummy_ipv4", prefix_v4).unwrap_or(d.dummy_ipv4),
        dummy_ipv6: s.take(cx, "dummy_ipv6", prefix_v6).unwrap_or(d.dummy_ipv6),
        drain_variable: s
            .take(cx, "drain_variable", opt_bird_symbol)
            .unwrap_or(d.drain_variable),
        drain_grace: s.take(cx, "drain_grace", duration).unwrap_or(d.drain_grace),
        demote_variable: s
            .take(cx, "demote_variable", opt_bird_symbol)
            .unwrap_or(d.demote_variable),
        on_unhealthy: s
            .take(
                cx,
                "on_unhealthy",
                one_of(&[
                    ("withdraw", OnUnhealthy::Withdraw),
                    ("demote", OnUnhealthy::Demote),
                ]),
            )
            .unwrap_or(d.on_unhealthy),
        on_stop: s
            .take(
                cx,
                "on_stop",
                one_of(&[("withdraw", OnStop::Withdraw), ("keep", OnStop::Keep)]),
            )
            .unwrap_or(d.on_stop),
        export_protocols: s
            .take(cx, "export_protocols", bird_symbols)
            .unwrap_or(d.export_protocols),
    };
    // The three sets are distinct BIRD symbols; a clash would make the
    // include file redefine one of them, which BIRD rejects.
    if cfg.ipv4_variable == cfg.ipv6_variable {
        let key = if s.is_set("ipv6_variable") {
            "ipv6_variable"
        } else {
            "ipv4_variable"
        };
        cx.error(
            s.key_offset(key),
            s.dotted(key),
            format!(
                "ipv4_variable and ipv6_variable must differ, both are {:?}",
                cfg.ipv4_variable
            ),
        );
    }
    check_set_names(cx, &s, &cfg);
    if cfg.on_unhealthy == OnUnhealthy::Demote && cfg.demote_variable.is_none() {
        cx.error(
            s.key_offset("on_unhealthy"),
            s.dotted("on_unhealthy"),
            "\"demote\" needs bird.demote_variable (e.g. \"ACAST_PS_DEMOTE\"), the set your \
             bird.conf exports with a longer AS path"
                .into(),
        );
    }
    s.finish(cx);
    cfg
}

/// The drain and demote sets are BIRD symbols next to the advertise ones,
/// each with a derived IPv6 name: a clash would make the include define a
/// symbol twice, which BIRD rejects (and the agent could not publish).
fn check_set_names(cx: &mut Cx<'_>, s: &Section<'_, '_>, cfg: &BirdConfig) {
    use crate::bird::include::ipv6_variable_for;
    let mut taken: Vec<(String, String)> = vec![
        ("ipv4_variable".into(), cfg.ipv4_variable.clone()),
        ("ipv6_variable".into(), cfg.ipv6_variable.clone()),
    ];
    let extra = [
        ("drain_variable", &cfg.drain_variable),
        ("demote_variable", &cfg.demote_variable),
    ];
    for (key, name) in extra {
        let Some(name) = name else { continue };
        let v6 = ipv6_variable_for(name);
        let by = |wanted: &str| {
            taken
                .iter()
                .find(|(_, t)| t == wanted)
                .map(|(k, _)| k.clone())
        };
        let why = match (by(name), by(&v6)) {
            (Some(other), _) => Some(format!("{name:?} is already used by {other}")),
            (None, Some(other)) => Some(format!(
                "its IPv6 set would be {v6:?}, already used by {other}"
            )),
            (None, None) => None,
        };
        if let Some(why) = why {
            cx.error(
                s.key_offset(key),
                s.dotted(key),
                format!("must differ from the other set names: {why}"),
            );
        } else if v6.len() > BIRD_SYMBOL_MAX_LEN {
            cx.error(
                s.key_offset(key),
                s.dotted(key),
                format!(
                    "its IPv6 set {v6:?} would be {} bytes, over BIRD's {BIRD_SYMBOL_MAX_LEN}",
                    v6.len()
                ),
            );
        }
        taken.push((key.into(), name.clone()));
        taken.push((format!("the IPv6 set of {key}"), v6));
    }
}

/// What a `[[check]]` table holds before the per-type rules apply.
struct RawCheck {
    name: Option<String>,
    vip: Option<IpNet>,
    kind: Option<&'static str>,
    command: Option<Vec<String>>,
    target: Option<SocketAddr>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<Vec<u16>>,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
}

fn walk_checks(cx: &mut Cx<'_>, root: &mut Section<'_, '_>) -> Vec<LocalCheck> {
    let Some(value) = root.raw(cx, "check") else {
        // Still record the check keys as known (for the packaging test).
        let mut s = Section::new("check[]".into(), None, 0);
        let _ = read_check(cx, &mut s);
        return Vec::new();
    };
    let items: Vec<&Spanned<DeValue<'_>>> = match value.get_ref() {
        DeValue::Array(items) => items.iter().collect(),
        other => {
            cx.error(
                value.span().start,
                "check".into(),
                format!(
                    "expected an array of tables (write each check as [[check]]), found {}",
                    found(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut checks = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("check[{i}]");
        let DeValue::Table(table) = item.get_ref() else {
            cx.error(
                item.span().start,
                path,
                format!("expected a table, found {}", found(item.get_ref())),
            );
            continue;
        };
        let mut s = Section::new(path, Some(table), item.span().start);
        let raw = read_check(cx, &mut s);
        if let Some(check) = build_check(cx, &s, raw) {
            let line = cx.line(s.key_offset("name"));
            if let Some(first) = seen.get(&check.name) {
                cx.error_at_line(
                    line,
                    s.dotted("name"),
                    format!(
                        "duplicate check name {:?} (first defined on line {first})",
                        check.name
                    ),
                );
            } else {
                seen.insert(check.name.clone(), line);
                checks.push(check);
            }
        }
        s.finish(cx);
    }
    checks
}

fn read_check(cx: &mut Cx<'_>, s: &mut Section<'_, '_>) -> RawCheck {
    RawCheck {
        name: s.take(cx, "name", |v| {
            let n = string(v)?;
            crate::model::Name::try_new(&n)
                .map(|_| n.clone())
                .map_err(|e| format!("invalid check name {n:?}: {e}"))
        }),
        vip: s.take(cx, "vip", prefix),
        kind: s.take(
            cx,
            "type",
            one_of(&[("exec", "exec"), ("tcp", "tcp"), ("http", "http")]),
        ),
        command: s.take(cx, "command", |v| {
            let argv = string_array(v)?;
            if argv.is_empty() {
                return Err("expected a non-empty argv array such as [\"/usr/local/bin/check\", \"--quick\"]".into());
            }
            Ok(argv)
        }),
        target: s.take(cx, "target", socket_addr),
        path: s.take(cx, "path", |v| {
            let p = string(v)?;
            if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "expected an HTTP path starting with '/' and without spaces, found {p:?}"
                ));
            }
            Ok(p)
        }),
        host: s.take(cx, "host", |v| {
            let h = string(v)?;
            if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("expected a host name without spaces, found {h:?}"));
            }
            Ok(h)
        }),
        expect_status: s.take(cx, "expect_status", |v| {
            let items = v.as_array().ok_or_else(|| {
                format!("expected an array of HTTP status codes (100-599), found {}", found(v))
            })?;
            items
                .iter()
                .map(|i| int_in(i.get_ref(), 100, 599).map(|c| c as u16))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "expected an array of HTTP status codes (100-599)".to_string())
        }),
        interval: s.take(cx, "interval", positive_duration),
        timeout: s.take(cx, "timeout", positive_duration),
        rise: s.take(cx, "rise", u32_at_least(1)),
        fall: s.take(cx, "fall", u32_at_least(1)),
    }
}

/// Applies the per-type rules; `None` when something required is missing or
/// wrong (errors recorded).
fn build_check(cx: &mut Cx<'_>, s: &Section<'_, '_>, raw: RawCheck) -> Option<LocalCheck> {
    let mut ok = true;
    let mut require = |cx: &mut Cx<'_>, key: &str, present: bool, what: &str| {
        if !present && !s.is_set(key) {
            cx.error(s.offset, s.dotted(key), format!("missing; {what}"));
            ok = false;
        } else if !present {
            ok = false; // set but invalid: already reported
        }
    };
    require(cx, "name", raw.name.is_some(), "every check needs a name");
    require(
        cx,
        "vip",
        raw.vip.is_some(),
        "the VIP prefix this check gates",
    );
    require(
        cx,
        "type",
        raw.kind.is_some(),
        "expected \"exec\", \"tcp\" or \"http\"",
    );
    let kind = match raw.kind {
        Some("exec") => {
            require(
                cx,
                "command",
                raw.command.is_some(),
                "an exec check needs command = [\"/path/to/program\", \"arg\", ...]",
            );
            for key in ["target", "path", "host", "expect_status"] {
                if s.is_set(key) {
                    cx.error(
                        s.key_offset(key),
                        s.dotted(key),
                        format!("not valid for an exec check ({key} belongs to tcp/http checks)"),
                    );
                    ok = false;
                }
            }
            raw.command.map(|command| LocalCheckKind::Exec { command })
        }
        Some(kind @ ("tcp" | "http")) => {
            require(
                cx,
                "target",
                raw.target.is_some(),
                "a tcp/http check needs target = \"ip:port\"",
            );
            let only_http: &[&str] = if kind == "tcp" {
                &["path", "host", "expect_status"]
            } else {
                &[]
            };
            for key in std::iter::once(&"command").chain(only_http) {
                if s.is_set(key) {
                    let owner = if *key == "command" { "exec" } else { "http" };
                    cx.error(
                        s.key_offset(key),
                        s.dotted(key),
                        format!("not valid for a {kind} check ({key} belongs to {owner} checks)"),
                    );
                    ok = false;
                }
            }
            raw.target.map(|target| {
                if kind == "tcp" {
                    LocalCheckKind::Tcp { target }
                } else {
                    LocalCheckKind::Http {
                        target,
                        path: raw.path.unwrap_or_else(|| "/".into()),
                        host: raw.host,
                        expect_status: raw.expect_status.unwrap_or_default(),
                    }
                }
            })
        }
        _ => None,
    };
    if !ok {
        return None;
    }
    Some(LocalCheck {
        name: raw.name?,
        vip: raw.vip?,
        kind: kind?,
        interval: raw.interval,
        timeout: raw.timeout,
        rise: raw.rise,
        fall: raw.fall,
    })
}

fn hostname() -> Result<String, String> {
    let h = nix::unistd::gethostname()
        .map_err(|e| format!("cannot determine the hostname ({e}); set node.name"))?;
    let h = h
        .into_string()
        .map_err(|_| "the hostname is not UTF-8; set node.name".to_string())?;
    if h.is_empty() {
        return Err("the hostname is empty; set node.name".into());
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_owned_files_follow_state_dir_unless_set() {
        let c = super::parse_str(
            "[node]\ngroup = \"blue\"\nstate_dir = \"/srv/lb\"\n",
            "a.toml",
        )
        .unwrap();
        assert_eq!(
            c.source.cache,
            std::path::Path::new("/srv/lb/last-good.json")
        );
        assert_eq!(
            c.haproxy.state_file,
            std::path::Path::new("/srv/lb/haproxy-server-state")
        );
        let c = super::parse_str(
            "[node]\ngroup = \"blue\"\nstate_dir = \"/srv/lb\"\n[haproxy]\nstate_file = \"/run/hs\"\n[source]\ncache = \"/var/cache/doc.json\"\n",
            "a.toml",
        )
        .unwrap();
        assert_eq!(c.haproxy.state_file, std::path::Path::new("/run/hs"));
        assert_eq!(c.source.cache, std::path::Path::new("/var/cache/doc.json"));
        let c = super::parse_str("[node]\ngroup = \"blue\"\n", "a.toml").unwrap();
        assert_eq!(
            c.haproxy.state_file,
            std::path::Path::new("/var/lib/lb-agent/haproxy-server-state")
        );
    }

    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse_str(text, "agent.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse_str("", "agent.toml").expect("empty file is valid");
        assert_eq!(c, defaults(c.node.name.clone()));
        assert_eq!(c.node.name, hostname().unwrap());
    }

    #[test]
    fn all_errors_at_once_sorted_by_line() {
        let text = "[source]\npol_interval = \"5s\"\nlong_poll = 3\n[health]\nrise = 0\n";
        assert_eq!(
            errors(text),
            vec![
                "agent.toml:2: source.pol_interval: unknown key (did you mean `poll_interval`?)",
                "agent.toml:3: source.long_poll: expected a duration such as \"5s\", \"500ms\" or \"1m 30s\", found 3",
                "agent.toml:5: health.rise: expected an integer of at least 1, found 0",
            ]
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let errs = errors("[node]\nname = \"a\"\ngroup = \n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("agent.toml:3: TOML syntax error"),
            "{errs:?}"
        );
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(
            closest("pol_interval", &["poll_interval", "url"]),
            Some("poll_interval")
        );
        assert_eq!(closest("zzz", &["poll_interval", "url"]), None);
        assert_eq!(closest("ur", &["url"]), Some("url"));
        assert_eq!(closest("x", &["az"]), None);
    }

    #[test]
    fn octal_modes() {
        let ok =
            |t: &str| parse_str(&format!("[status]\nmode = {t}\n"), "a").map(|c| c.status.mode);
        assert_eq!(ok("\"0660\""), Ok(0o660));
        assert_eq!(ok("\"600\""), Ok(0o600));
        assert_eq!(ok("0o640"), Ok(0o640));
        assert!(ok("660").is_err());
        assert!(ok("\"0680\"").is_err());
        assert!(ok("\"01777\"").is_err());
    }

    #[test]
    fn file_urls() {
        let url =
            |u: &str| parse_str(&format!("[source]\nurl = {u:?}\n"), "a").map(|c| c.source.url);
        assert_eq!(
            url("file:///etc/lb-agent/d.json"),
            Ok(SourceUrl::File("/etc/lb-agent/d.json".into()))
        );
        assert_eq!(
            url("https://api.example.net/v1?x=1"),
            Ok(SourceUrl::Http("https://api.example.net/v1?x=1".into()))
        );
        assert!(url("file://remote/etc/x").is_err());
        assert!(url("file:///etc/").is_err());
        assert!(url("ftp://x/y").is_err());
        assert!(url("https://").is_err());
        assert!(url("file:relative/path").is_err());
        assert!(url("http:api.example.net/config").is_err());
        assert_eq!(
            url("file:///etc/lb%20agent/d.json"),
            Ok(SourceUrl::File("/etc/lb agent/d.json".into()))
        );
    }

    /// The keys packaging/agent.toml sets away from the built-in defaults
    /// (sorted): the sets the example bird.conf refers to, which BIRD
    /// would otherwise refuse as undefined symbols.
    const PACKAGED_OVERRIDES: [&str; 2] = ["bird.demote_variable", "bird.drain_variable"];

    /// The packaged agent.toml documents every key: each one appears in it
    /// (as a comment), and uncommenting every `#key = value` line reproduces
    /// exactly the built-in defaults, but for [`PACKAGED_OVERRIDES`].
    #[test]
    fn packaged_file_documents_every_key_with_its_default() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/agent.toml");
        let text = std::fs::read_to_string(path).expect("packaging/agent.toml");

        let (_, known) = parse_collecting("", "agent.toml");
        let mut missing = Vec::new();
        let mut section = String::new();
        let mut documented = std::collections::BTreeSet::new();
        for line in text.lines() {
            let l = line.trim_start_matches('#').trim();
            if let Some(h) = l.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
                section = format!("{h}[]");
            } else if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                section = h.to_string();
            } else if let Some((k, _)) = l.split_once('=') {
                let k = k.trim();
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    documented.insert(format!("{section}.{k}"));
                }
            }
        }
        for key in &known {
            if key == "node"
                || key == "source"
                || key == "haproxy"
                || key == "health"
                || key == "bird"
                || key == "vip"
                || key == "status"
                || key == "check"
            {
                continue;
            }
            if !documented.contains(key.as_str()) {
                missing.push(key.clone());
            }
        }
        assert!(
            missing.is_empty(),
            "keys not documented in packaging/agent.toml: {missing:?}"
        );

        // `#key = value` (no space after '#') marks a default; uncomment them
        // all, except where the file sets the key itself (the sets the
        // example bird.conf needs, see PACKAGED_OVERRIDES).
        let key_of = |l: &str| l.split_once('=').map(|(k, _)| k.trim().to_string());
        let active: std::collections::BTreeSet<String> = text
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()))
            .filter_map(key_of)
            .collect();
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest)
                    if rest.starts_with(|c: char| c.is_ascii_lowercase())
                        && !key_of(rest).is_some_and(|k| active.contains(&k)) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let overridden: Vec<String> = PACKAGED_OVERRIDES
            .iter()
            .map(|k| k.rsplit('.').next().unwrap().to_string())
            .collect();
        assert_eq!(
            active.iter().cloned().collect::<Vec<_>>(),
            overridden,
            "packaging/agent.toml may set only the keys the example bird.conf needs"
        );
        let parsed = parse_str(&uncommented, "agent.toml (uncommented)")
            .unwrap_or_else(|e| panic!("uncommented defaults do not parse:\n{e}"));
        let mut expected = defaults(parsed.node.name.clone());
        expected.node.name = parsed.node.name.clone();
        expected.bird.demote_variable = Some("ACAST_PS_DEMOTE".into());
        expected.bird.drain_variable = Some("ACAST_PS_DRAIN".into());
        assert_eq!(
            parsed, expected,
            "documented defaults differ from the built-in ones"
        );

        // The commented [[check]] examples are valid when uncommented.
        let start = text.find("# [[check]]").expect("a [[check]] example");
        let example: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let parsed = parse_str(&example, "check example")
            .unwrap_or_else(|e| panic!("[[check]] example does not parse:\n{e}"));
        assert_eq!(parsed.checks.len(), 2);
        assert!(matches!(parsed.checks[0].kind, LocalCheckKind::Exec { .. }));
        assert!(matches!(parsed.checks[1].kind, LocalCheckKind::Http { .. }));
    }
}
