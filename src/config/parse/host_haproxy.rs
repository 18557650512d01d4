//! The `[haproxy]` keys that shape HAProxy's `global` section and its
//! host-local listeners: log targets, threads, CPU pinning, `maxconn`, the
//! TLS floor, the Prometheus exporter and the stats page (docs/config.md).
//!
//! They come from agent.toml only, never from the document: the document
//! describes load balancing, these describe the host.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use toml::de::DeValue;

use super::{found, int_in, socket_addr};
use crate::config::{LogAddr, LogTarget};

/// Syslog facilities HAProxy knows (`log ... <facility>`).
pub(super) const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "auth2",
    "ftp", "ntp", "audit", "alert", "cron2", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// Syslog levels, most severe first (`log ... <facility> <max level>`).
pub(super) const LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// Most threads HAProxy 2.6 runs (`MAX_THREADS` of Debian's build, `haproxy -vv`).
pub const MAX_THREADS: i64 = 64;

/// `[haproxy] log`: an array of `"<target> <facility> [<max level>]"`.
pub(super) fn log_targets(v: &DeValue<'_>) -> Result<Vec<LogTarget>, String> {
    let items = v.as_array().ok_or_else(|| {
        format!(
            "expected an array such as [\"127.0.0.1:514 local0\", \"/dev/log local0 info\"], found {}",
            found(v)
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let s = item.get_ref().as_str().ok_or_else(|| {
                format!(
                    "item {i}: expected a string, found {}",
                    found(item.get_ref())
                )
            })?;
            log_target(s).map_err(|e| format!("item {i} ({s:?}): {e}"))
        })
        .collect()
}

/// One log entry. The target is an absolute path (a local datagram socket
/// such as `/dev/log`) or `[udp@]ip:port` (a syslog server over UDP).
pub(super) fn log_target(s: &str) -> Result<LogTarget, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let (target, facility, level) = match words.as_slice() {
        [t, f] => (*t, *f, None),
        [t, f, l] => (*t, *f, Some(*l)),
        _ => {
            return Err(
                "expected \"<target> <facility> [<level>]\" such as \"127.0.0.1:514 local0\" or \"/dev/log local0 info\""
                    .into(),
            )
        }
    };
    let addr = if target.starts_with('/') {
        if target
            .chars()
            .any(|c| c.is_control() || matches!(c, '#' | '"' | '\'' | '\\'))
        {
            return Err(format!(
                "the socket path {target:?} has a character HAProxy's config cannot hold"
            ));
        }
        LogAddr::Unix(PathBuf::from(target))
    } else {
        let ip_port = target.strip_prefix("udp@").unwrap_or(target);
        let addr: SocketAddr = ip_port.parse().map_err(|_| {
            format!(
                "the target {target:?} is neither an absolute socket path nor udp@ip:port (\"127.0.0.1:514\", \"[::1]:514\")"
            )
        })?;
        if addr.port() == 0 {
            return Err(format!("the target {target:?} has port 0"));
        }
        if addr.ip().is_unspecified() {
            return Err(format!(
                "the target {target:?} is a wildcard address, not a syslog server"
            ));
        }
        LogAddr::Udp(addr)
    };
    if !FACILITIES.contains(&facility) {
        return Err(format!(
            "unknown facility {facility:?}; expected one of {}",
            FACILITIES.join(", ")
        ));
    }
    if let Some(l) = level {
        if !LEVELS.contains(&l) {
            return Err(format!(
                "unknown level {l:?}; expected one of {}",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(LogTarget {
        addr,
        facility: facility.to_string(),
        level: level.map(str::to_string),
    })
}

/// `"auto"` (`None`) or an integer in `min..=max`.
fn auto_or(min: i64, max: i64) -> impl Fn(&DeValue<'_>) -> Result<Option<i64>, String> {
    move |v| match v.as_str() {
        Some("auto") => Ok(None),
        Some(s) => Err(format!(
            "expected \"auto\" or an integer from {min} to {max}, found {s:?}"
        )),
        None => int_in(v, min, max)
            .map(Some)
            .map_err(|e| format!("{e} (or \"auto\")")),
    }
}

/// `[haproxy] nbthread`: `"auto"` or 1 to [`MAX_THREADS`].
pub(super) fn nbthread(v: &DeValue<'_>) -> Result<Option<u16>, String> {
    auto_or(1, MAX_THREADS)(v).map(|n| n.map(|n| n as u16))
}

/// `[haproxy] maxconn`: `"auto"` or 1 to 10 000 000.
pub(super) fn maxconn(v: &DeValue<'_>) -> Result<Option<u32>, String> {
    auto_or(1, 10_000_000)(v).map(|n| n.map(|n| n as u32))
}

/// A host-local HAProxy listener (`prometheus_listen`, `stats_listen`):
/// `""` (off) or `ip:port` on one address. A wildcard is refused: HAProxy
/// would then answer on every VIP too, and a VIP is on the Internet.
pub(super) fn listener(v: &DeValue<'_>) -> Result<Option<SocketAddr>, String> {
    if v.as_str() == Some("") {
        return Ok(None);
    }
    let addr = socket_addr(v)?;
    if addr.ip().is_unspecified() {
        return Err(format!(
            "{addr} listens on every address, the VIPs included; use 127.0.0.1 or a management address"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("{addr} has port 0; name the port"));
    }
    Ok(Some(addr))
}

/// `[haproxy] stats_uri`: a path HAProxy's config holds as one word.
pub(super) fn stats_uri(v: &DeValue<'_>) -> Result<String, String> {
    let s = super::string(v)?;
    let ok = s.starts_with('/')
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.-~".contains(c));
    if !ok {
        return Err(format!(
            "expected a path such as \"/stats\" (at most 128 letters, digits, '/', '_', '.', '-', '~'), found {s:?}"
        ));
    }
    Ok(s)
}

/// Why a host-local listener may not use `addr`: it lies in a prefix the
/// document may claim as a VIP (a listener there could become reachable on
/// the anycast address). A catch-all prefix (`0.0.0.0/0`) is not counted;
/// the special ranges it leaves out (loopback) are refused to documents.
pub(super) fn in_vip_range(addr: SocketAddr, allowed: &[IpNet]) -> Option<IpNet> {
    allowed
        .iter()
        .find(|p| p.prefix_len() > 0 && p.contains(&addr.ip()))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(toml_value: &str) -> DeValue<'static> {
        let text: &'static str = Box::leak(toml_value.to_string().into_boxed_str());
        DeValue::parse(text).unwrap().into_inner()
    }

    #[test]
    fn log_entries() {
        let unix = |p: &str| LogAddr::Unix(p.into());
        let udp = |a: &str| LogAddr::Udp(a.parse().unwrap());
        let ok: &[(&str, LogAddr, &str, Option<&str>)] = &[
            ("/dev/log local0", unix("/dev/log"), "local0", None),
            (
                "/dev/log   daemon info",
                unix("/dev/log"),
                "daemon",
                Some("info"),
            ),
            ("127.0.0.1:514 local0", udp("127.0.0.1:514"), "local0", None),
            (
                "udp@127.0.0.1:1514 local7 notice",
                udp("127.0.0.1:1514"),
                "local7",
                Some("notice"),
            ),
            ("[::1]:514 local1", udp("[::1]:514"), "local1", None),
            (
                "udp@[2001:db8::5]:514 user debug",
                udp("[2001:db8::5]:514"),
                "user",
                Some("debug"),
            ),
        ];
        for (s, addr, facility, level) in ok {
            let t = log_target(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(&t.addr, addr, "{s}");
            assert_eq!(t.facility, *facility, "{s}");
            assert_eq!(t.level.as_deref(), *level, "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "expected \"<target> <facility> [<level>]\""),
            ("/dev/log", "expected \"<target> <facility> [<level>]\""),
            (
                "/dev/log local0 info extra",
                "expected \"<target> <facility> [<level>]\"",
            ),
            (
                "dev/log local0",
                "neither an absolute socket path nor udp@ip:port",
            ),
            (
                "tcp@127.0.0.1:514 local0",
                "neither an absolute socket path nor udp@ip:port",
            ),
            (
                "127.0.0.1 local0",
                "neither an absolute socket path nor udp@ip:port",
            ),
            (
                "syslog.example.net:514 local0",
                "neither an absolute socket path nor udp@ip:port",
            ),
            ("127.0.0.1:0 local0", "has port 0"),
            ("0.0.0.0:514 local0", "wildcard"),
            (
                "/dev/log#x local0",
                "character HAProxy's config cannot hold",
            ),
            ("/dev/log local9", "unknown facility \"local9\""),
            ("/dev/log LOCAL0", "unknown facility \"LOCAL0\""),
            ("/dev/log local0 verbose", "unknown level \"verbose\""),
        ];
        for (s, want) in bad {
            let e = log_target(s).expect_err(s);
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn log_array_names_the_item() {
        let e = log_targets(&value("[\"/dev/log local0\", \"x local0\"]")).unwrap_err();
        assert!(e.starts_with("item 1 (\"x local0\"): "), "{e}");
        let e = log_targets(&value("[\"/dev/log local0\", 5]")).unwrap_err();
        assert!(e.starts_with("item 1: expected a string"), "{e}");
        assert!(log_targets(&value("\"/dev/log local0\"")).is_err());
        assert_eq!(log_targets(&value("[]")), Ok(vec![]));
    }

    #[test]
    fn counts_or_auto() {
        let cases: &[(&str, Result<Option<u16>, &str>)] = &[
            ("\"auto\"", Ok(None)),
            ("1", Ok(Some(1))),
            ("64", Ok(Some(64))),
            (
                "0",
                Err("expected an integer from 1 to 64, found 0 (or \"auto\")"),
            ),
            (
                "65",
                Err("expected an integer from 1 to 64, found 65 (or \"auto\")"),
            ),
            (
                "\"4\"",
                Err("expected \"auto\" or an integer from 1 to 64, found \"4\""),
            ),
            (
                "true",
                Err("expected an integer from 1 to 64, found true (or \"auto\")"),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(nbthread(&value(v)), want.map_err(String::from), "{v}");
        }
        assert_eq!(maxconn(&value("50000")), Ok(Some(50000)));
        assert_eq!(maxconn(&value("\"auto\"")), Ok(None));
        assert!(maxconn(&value("0")).is_err());
        assert!(maxconn(&value("10000001")).is_err());
    }

    #[test]
    fn listeners() {
        assert_eq!(listener(&value("\"\"")), Ok(None));
        assert_eq!(
            listener(&value("\"127.0.0.1:8405\"")),
            Ok(Some("127.0.0.1:8405".parse().unwrap()))
        );
        assert_eq!(
            listener(&value("\"[::1]:8405\"")),
            Ok(Some("[::1]:8405".parse().unwrap()))
        );
        for (v, want) in [
            (
                "\"0.0.0.0:8405\"",
                "listens on every address, the VIPs included",
            ),
            (
                "\"[::]:8405\"",
                "listens on every address, the VIPs included",
            ),
            ("\"127.0.0.1:0\"", "port 0"),
            ("\"127.0.0.1\"", "expected \"ip:port\""),
            ("8405", "expected \"ip:port\""),
        ] {
            let e = listener(&value(v)).expect_err(v);
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn stats_uris() {
        assert_eq!(stats_uri(&value("\"/stats\"")), Ok("/stats".into()));
        assert_eq!(
            stats_uri(&value("\"/haproxy/stats\"")),
            Ok("/haproxy/stats".into())
        );
        for v in [
            "\"stats\"",
            "\"/st ats\"",
            "\"/stats#x\"",
            "\"/stats;\"",
            "\"\"",
            "1",
        ] {
            assert!(stats_uri(&value(v)).is_err(), "{v}");
        }
    }

    #[test]
    fn vip_ranges_except_catch_all() {
        let nets = |v: &[&str]| v.iter().map(|p| p.parse().unwrap()).collect::<Vec<IpNet>>();
        let a: SocketAddr = "192.0.2.7:8405".parse().unwrap();
        assert_eq!(
            in_vip_range(a, &nets(&["198.51.100.0/24", "192.0.2.0/24"])),
            Some("192.0.2.0/24".parse().unwrap())
        );
        assert_eq!(in_vip_range(a, &nets(&["0.0.0.0/0", "::/0"])), None);
        assert_eq!(in_vip_range(a, &nets(&["198.51.100.0/24"])), None);
    }
}
