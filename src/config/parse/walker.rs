//! The TOML walker: the error collector ([`Cx`]), one table being walked
//! ([`Section`]: every key asked for is converted, every other key is
//! reported as unknown with a "did you mean" hint) and the value conversions,
//! each returning what was expected on error.
//! Part of [`crate::config::parse`] (docs/architecture.md).

use super::{ConfigError, ConfigErrors};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::config::{EtcdUrl, SourceUrl};

/// Error collector plus where the source text's lines start (for offsets →
/// lines).
pub(super) struct Cx<'t> {
    pub(super) file: &'t str,
    /// Byte offsets of the text's newlines, found once: counting them again
    /// for every error made a file with thousands of errors quadratic (8 KiB
    /// took 150 ms; the agent_toml fuzz target ran at 100 inputs a second).
    newlines: Vec<usize>,
    pub(super) errors: Vec<ConfigError>,
    /// Every dotted key asked for, in walk order.
    pub(super) known: Vec<String>,
}

impl<'t> Cx<'t> {
    pub(super) fn new(file: &'t str, text: &str) -> Cx<'t> {
        Cx {
            file,
            newlines: (text.bytes().enumerate())
                .filter_map(|(i, b)| (b == b'\n').then_some(i))
                .collect(),
            errors: Vec::new(),
            known: Vec::new(),
        }
    }

    /// 1-based line of a byte offset (one past the newlines before it).
    pub(super) fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&p| p < offset) + 1
    }

    pub(super) fn error(&mut self, offset: usize, key: String, message: String) {
        let line = self.line(offset);
        self.error_at_line(line, key, message);
    }

    pub(super) fn error_at_line(&mut self, line: usize, key: String, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            key,
            message,
        });
    }

    pub(super) fn take_errors(&mut self) -> ConfigErrors {
        let mut errors = std::mem::take(&mut self.errors);
        // Stable: errors on one line keep the walk order.
        errors.sort_by_key(|e| e.line);
        ConfigErrors(errors)
    }
}

pub(super) type Table<'i> = DeTable<'i>;

/// One TOML table being walked: remembers which keys were asked for so the
/// rest can be reported as unknown.
pub(super) struct Section<'a, 'i> {
    /// Dotted prefix (`source`, `check[0]`); empty for the document root.
    pub(super) path: String,
    pub(super) table: Option<&'a Table<'i>>,
    /// Offset of the table (its header) for errors about missing keys.
    pub(super) offset: usize,
    pub(super) asked: Vec<&'static str>,
}

impl<'a, 'i> Section<'a, 'i> {
    pub(super) fn new(path: String, table: Option<&'a Table<'i>>, offset: usize) -> Self {
        Section {
            path,
            table,
            offset,
            asked: Vec::new(),
        }
    }

    pub(super) fn dotted(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The raw value of `key`, marking it as known.
    pub(super) fn raw(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
    ) -> Option<&'a Spanned<DeValue<'i>>> {
        self.asked.push(key);
        cx.known.push(self.dotted(key));
        self.table?.get(key)
    }

    /// Offset of `key` in the text (for errors involving several keys).
    pub(super) fn key_offset(&self, key: &str) -> usize {
        self.table
            .and_then(|t| t.get_key_value(key))
            .map(|(k, _)| k.span().start)
            .unwrap_or(self.offset)
    }

    pub(super) fn is_set(&self, key: &str) -> bool {
        self.table.is_some_and(|t| t.get(key).is_some())
    }

    /// Converts `key` with `conv`; records the error and returns `None` when
    /// the value is wrong, returns `None` silently when the key is absent.
    pub(super) fn take<T>(
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
    pub(super) fn section(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Section<'a, 'i> {
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
    pub(super) fn finish(self, cx: &mut Cx<'_>) {
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
pub(super) fn closest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
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

pub(super) fn found(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("{s:?}"),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        other => format!("a {}", other.type_str()),
    }
}

pub(super) fn string(v: &DeValue<'_>) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("expected a string, found {}", found(v)))
}

pub(super) fn boolean(v: &DeValue<'_>) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, found {}", found(v)))
}

/// An integer in `min..=max`.
pub(super) fn int_in(v: &DeValue<'_>, min: i64, max: i64) -> Result<i64, String> {
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

pub(super) fn u32_at_least(min: i64) -> impl Fn(&DeValue<'_>) -> Result<u32, String> {
    move |v| int_in(v, min, u32::MAX.into()).map(|i| i as u32)
}

pub(super) fn duration(v: &DeValue<'_>) -> Result<Duration, String> {
    let expected = "expected a duration such as \"5s\", \"500ms\" or \"1m 30s\"";
    let s = v
        .as_str()
        .ok_or_else(|| format!("{expected}, found {}", found(v)))?;
    humantime::parse_duration(s).map_err(|e| format!("{expected}, found {s:?} ({e})"))
}

pub(super) fn positive_duration(v: &DeValue<'_>) -> Result<Duration, String> {
    let d = duration(v)?;
    if d.is_zero() {
        return Err("expected a duration greater than zero".into());
    }
    Ok(d)
}

/// An absolute path: the daemon's working directory is not something an
/// operator should have to think about.
pub(super) fn abs_path(v: &DeValue<'_>) -> Result<PathBuf, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("expected an absolute path, found {}", found(v)))?;
    if !s.starts_with('/') {
        return Err(format!("expected an absolute path, found {s:?}"));
    }
    Ok(PathBuf::from(s))
}

/// An optional absolute path; `""` means unset.
pub(super) fn opt_abs_path(v: &DeValue<'_>) -> Result<Option<PathBuf>, String> {
    match v.as_str() {
        Some("") => Ok(None),
        _ => abs_path(v).map(Some),
    }
}

pub(super) fn string_array(v: &DeValue<'_>) -> Result<Vec<String>, String> {
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
pub(super) fn identifier(v: &DeValue<'_>) -> Result<String, String> {
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

pub(super) fn opt_identifier(v: &DeValue<'_>) -> Result<Option<String>, String> {
    match v.as_str() {
        Some("") => Ok(None),
        _ => identifier(v).map(Some),
    }
}

/// A BIRD symbol name (it is written into the include file verbatim).
/// BIRD's limit on symbol names (`SYM_MAX_LEN`).
pub const BIRD_SYMBOL_MAX_LEN: usize = 64;

pub(super) fn bird_symbol(v: &DeValue<'_>) -> Result<String, String> {
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

pub(super) fn opt_bird_symbol(v: &DeValue<'_>) -> Result<Option<String>, String> {
    match v.as_str() {
        Some("") => Ok(None),
        _ => bird_symbol(v).map(Some),
    }
}

pub(super) fn bird_symbols(v: &DeValue<'_>) -> Result<Vec<String>, String> {
    let items = v.as_array().ok_or_else(|| {
        format!(
            "expected an array of BIRD protocol names, found {}",
            found(v)
        )
    })?;
    items.iter().map(|i| bird_symbol(i.get_ref())).collect()
}

/// An IP prefix in canonical form (no host bits set).
pub(super) fn prefix(v: &DeValue<'_>) -> Result<IpNet, String> {
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
pub(super) fn prefixes(v: &DeValue<'_>) -> Result<Vec<IpNet>, String> {
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
pub(super) fn connection_cap(v: &DeValue<'_>) -> Result<usize, String> {
    int_in(v, 1, 4096).map(|i| i as usize)
}

/// A size in bytes in `min..=max`: an integer (bytes) or a string with a
/// binary unit (`"512KiB"`, `"16MiB"`, `"1GiB"`; `"B"` or no unit: bytes).
pub(super) fn byte_size(min: usize, max: usize) -> impl Fn(&DeValue<'_>) -> Result<usize, String> {
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

pub(super) fn prefix_v4(v: &DeValue<'_>) -> Result<IpNet, String> {
    let net = prefix(v)?;
    match net {
        IpNet::V4(_) => Ok(net),
        IpNet::V6(_) => Err(format!("expected an IPv4 prefix, found {net}")),
    }
}

pub(super) fn prefix_v6(v: &DeValue<'_>) -> Result<IpNet, String> {
    let net = prefix(v)?;
    match net {
        IpNet::V6(_) => Ok(net),
        IpNet::V4(_) => Err(format!("expected an IPv6 prefix, found {net}")),
    }
}

pub(super) fn socket_addr(v: &DeValue<'_>) -> Result<SocketAddr, String> {
    let expected = "expected \"ip:port\" such as \"127.0.0.1:9477\" or \"[::1]:9477\"";
    let s = v
        .as_str()
        .ok_or_else(|| format!("{expected}, found {}", found(v)))?;
    s.parse().map_err(|_| format!("{expected}, found {s:?}"))
}

pub(super) fn opt_socket_addr(v: &DeValue<'_>) -> Result<Option<SocketAddr>, String> {
    match v.as_str() {
        Some("") => Ok(None),
        _ => socket_addr(v).map(Some),
    }
}

/// Permission bits: an octal string (`"0660"`) or a TOML octal integer (`0o660`).
pub(super) fn octal_mode(v: &DeValue<'_>) -> Result<u32, String> {
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

pub(super) fn ratio(v: &DeValue<'_>) -> Result<f64, String> {
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

pub(super) fn source_url(v: &DeValue<'_>) -> Result<SourceUrl, String> {
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

pub(super) fn linux_ifname(v: &DeValue<'_>) -> Result<String, String> {
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

pub(super) fn one_of<T: Copy>(
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
