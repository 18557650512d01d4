//! A pool's typed options in the document and their validation (pure).
//!
//! ```json
//! "pools": [{"name": "www", "mode": "http",
//!   "timeouts": {"connect": "2s", "server": "30s", "queue": "5s"},
//!   "retries": 2, "redispatch": true, "http_reuse": "safe", "slowstart": "10s",
//!   "servers": [{"name": "b1", ..., "backup": true}]}]
//! ```
//!
//! Each is rendered into the pool's backend(s) and is part of the pool's
//! structure digest: changing one is a reload (HAProxy 2.6 has no runtime
//! command for a backend's timeouts, retries, redispatch or http-reuse, nor
//! for a server's backup flag or slowstart).

use std::time::Duration;

use serde::Deserialize;

use super::validate::ValidationError;
use super::{HttpReuse, Mode, PoolOptions};

/// `pools[].timeouts`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireTimeouts {
    pub connect: Option<String>,
    pub server: Option<String>,
    pub queue: Option<String>,
}

/// The option fields of a wire pool.
#[derive(Debug, Default)]
pub(crate) struct WireOptions<'a> {
    pub timeouts: Option<&'a WireTimeouts>,
    pub retries: Option<i64>,
    pub redispatch: Option<bool>,
    pub http_reuse: Option<&'a str>,
    pub slowstart: Option<&'a str>,
}

/// Bounds (inclusive) of each duration option.
pub const CONNECT: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(300));
pub const SERVER: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(86_400));
pub const QUEUE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3_600));
pub const SLOWSTART: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3_600));
/// Most retries accepted.
pub const MAX_RETRIES: i64 = 10;

fn duration(
    v: Option<&str>,
    path: String,
    (lo, hi): (Duration, Duration),
    out: &mut Vec<ValidationError>,
) -> Option<Duration> {
    let s = v?;
    match humantime::parse_duration(s) {
        Ok(d) if d >= lo && d <= hi => Some(d),
        _ => {
            out.push(ValidationError {
                path,
                message: format!(
                    "invalid duration {s:?}, expected e.g. \"5s\" between {} and {}",
                    humantime::format_duration(lo),
                    humantime::format_duration(hi)
                ),
            });
            None
        }
    }
}

/// Validates the options of the pool at `base` (`pools[i]`) in `mode`;
/// `backup` are the servers marked `backup` (already validated names).
/// Errors go to `out`; what is valid is kept.
pub(crate) fn parse(
    w: &WireOptions<'_>,
    base: &str,
    mode: Option<Mode>,
    out: &mut Vec<ValidationError>,
) -> PoolOptions {
    let mut o = PoolOptions::default();
    if let Some(t) = w.timeouts {
        let tb = format!("{base}.timeouts");
        o.timeout_connect = duration(t.connect.as_deref(), format!("{tb}.connect"), CONNECT, out);
        o.timeout_server = duration(t.server.as_deref(), format!("{tb}.server"), SERVER, out);
        o.timeout_queue = duration(t.queue.as_deref(), format!("{tb}.queue"), QUEUE, out);
    }
    o.retries = match w.retries {
        None => None,
        Some(n) if (0..=MAX_RETRIES).contains(&n) => Some(n as u32),
        Some(n) => {
            out.push(ValidationError {
                path: format!("{base}.retries"),
                message: format!("{n} out of range 0-{MAX_RETRIES}"),
            });
            None
        }
    };
    o.redispatch = w.redispatch;
    o.http_reuse = match w.http_reuse {
        None => None,
        Some(r) => {
            let v = match r {
                "never" => Some(HttpReuse::Never),
                "safe" => Some(HttpReuse::Safe),
                "aggressive" => Some(HttpReuse::Aggressive),
                "always" => Some(HttpReuse::Always),
                _ => None,
            };
            let path = format!("{base}.http_reuse");
            match (v, mode) {
                (None, _) => {
                    out.push(ValidationError {
                        path,
                        message: format!(
                            "unknown http_reuse {r:?}, expected \"never\", \"safe\", \"aggressive\" or \"always\""
                        ),
                    });
                    None
                }
                (Some(_), Some(Mode::Tcp)) => {
                    out.push(ValidationError {
                        path,
                        message: "http_reuse needs an http pool".into(),
                    });
                    None
                }
                (v, _) => v,
            }
        }
    };
    o.slowstart = duration(w.slowstart, format!("{base}.slowstart"), SLOWSTART, out);
    o
}

/// The backend directives of `o`, one per line (the server keywords are
/// [`server_keywords`]).
pub fn backend_lines(o: &PoolOptions) -> Vec<String> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut out = Vec::new();
    if let Some(d) = o.timeout_connect {
        out.push(format!("timeout connect {}", ms(d)));
    }
    if let Some(d) = o.timeout_server {
        out.push(format!("timeout server {}", ms(d)));
    }
    if let Some(d) = o.timeout_queue {
        out.push(format!("timeout queue {}", ms(d)));
    }
    if let Some(n) = o.retries {
        out.push(format!("retries {n}"));
    }
    match o.redispatch {
        Some(true) => out.push("option redispatch".into()),
        Some(false) => out.push("no option redispatch".into()),
        None => {}
    }
    if let Some(r) = o.http_reuse {
        out.push(format!("http-reuse {}", r.as_str()));
    }
    out
}

/// Keywords every server line of the pool carries (`slowstart`), also sent
/// with `add server` so a server added at runtime has them too.
pub fn server_keywords(o: &PoolOptions) -> Option<String> {
    o.slowstart
        .map(|d| format!("slowstart {}ms", d.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(w: WireOptions<'_>, mode: Mode) -> (PoolOptions, Vec<String>) {
        let mut out = Vec::new();
        let o = parse(&w, "pools[3]", Some(mode), &mut out);
        (o, out.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn table() {
        let t = |c: Option<&str>, s: Option<&str>, q: Option<&str>| WireTimeouts {
            connect: c.map(str::to_string),
            server: s.map(str::to_string),
            queue: q.map(str::to_string),
        };
        let good = t(Some("2s"), Some("30s"), Some("5s"));
        let bad = t(Some("5ms"), Some("2d"), Some("soon"));
        let cases: Vec<(WireOptions<'_>, Mode, Vec<&str>, Vec<&str>)> = vec![
            (WireOptions::default(), Mode::Http, vec![], vec![]),
            (
                WireOptions {
                    timeouts: Some(&good),
                    retries: Some(2),
                    redispatch: Some(true),
                    http_reuse: Some("safe"),
                    slowstart: Some("10s"),
                },
                Mode::Http,
                vec![],
                vec![
                    "timeout connect 2000ms",
                    "timeout server 30000ms",
                    "timeout queue 5000ms",
                    "retries 2",
                    "option redispatch",
                    "http-reuse safe",
                ],
            ),
            (
                WireOptions {
                    redispatch: Some(false),
                    retries: Some(0),
                    ..Default::default()
                },
                Mode::Tcp,
                vec![],
                vec!["retries 0", "no option redispatch"],
            ),
            (
                WireOptions {
                    timeouts: Some(&bad),
                    ..Default::default()
                },
                Mode::Http,
                vec![
                    "pools[3].timeouts.connect: invalid duration \"5ms\", expected e.g. \"5s\" between 10ms and 5m",
                    "pools[3].timeouts.server: invalid duration \"2d\", expected e.g. \"5s\" between 100ms and 1day",
                    "pools[3].timeouts.queue: invalid duration \"soon\", expected e.g. \"5s\" between 10ms and 1h",
                ],
                vec![],
            ),
            (
                WireOptions {
                    retries: Some(11),
                    http_reuse: Some("sometimes"),
                    slowstart: Some("100ms"),
                    ..Default::default()
                },
                Mode::Http,
                vec![
                    "pools[3].retries: 11 out of range 0-10",
                    "pools[3].http_reuse: unknown http_reuse \"sometimes\", expected \"never\", \"safe\", \"aggressive\" or \"always\"",
                    "pools[3].slowstart: invalid duration \"100ms\", expected e.g. \"5s\" between 1s and 1h",
                ],
                vec![],
            ),
            (
                WireOptions {
                    http_reuse: Some("always"),
                    ..Default::default()
                },
                Mode::Tcp,
                vec!["pools[3].http_reuse: http_reuse needs an http pool"],
                vec![],
            ),
        ];
        for (i, (w, mode, errs, lines)) in cases.into_iter().enumerate() {
            let (o, got) = run(w, mode);
            assert_eq!(got, errs, "case {i}");
            assert_eq!(backend_lines(&o), lines, "case {i}");
        }
    }

    #[test]
    fn slowstart_is_a_server_keyword() {
        let (o, errs) = run(
            WireOptions {
                slowstart: Some("1m"),
                ..Default::default()
            },
            Mode::Tcp,
        );
        assert!(errs.is_empty());
        assert_eq!(server_keywords(&o).as_deref(), Some("slowstart 60000ms"));
        assert_eq!(server_keywords(&PoolOptions::default()), None);
    }
}
