//! The host part of haproxy.cfg's `global` section and the host-local
//! listeners (pure): `[haproxy]` keys of agent.toml → the values the
//! `global.cfg.tera` template writes (docs/config.md, "HAProxy host settings").
//!
//! Only [`allowed_cpus`] reads the host (the agent's CPU affinity, which
//! `cpu_map = "auto"` pins HAProxy's threads to); [`GlobalSettings::resolve`]
//! takes that list as input, so the derivation is table-tested. The result
//! is part of [`super::render::RenderSettings`], whose serialised form goes
//! into the structure digest: a change of any of these reloads HAProxy once,
//! and an unchanged one never does.

use serde::Serialize;

use crate::config::{CpuMap, HaproxyConfig, LogAddr, LogTarget, MAX_THREADS};

/// Frontend name of the Prometheus exporter (`prometheus_listen`). The
/// leading `_` is outside the document's name rule, so no document
/// frontend can take it.
pub const PROMETHEUS_FRONTEND: &str = "_prometheus";
/// Frontend name of the stats page (`stats_listen`).
pub const STATS_FRONTEND: &str = "_stats";

/// What `global.cfg.tera` renders from agent.toml, ready to print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GlobalSettings {
    /// Arguments of each `log` line (`127.0.0.1:514 local0 info`).
    pub log: Vec<String>,
    /// `nbthread`; `None` leaves HAProxy's default.
    pub nbthread: Option<u16>,
    /// Arguments of `cpu-map` (`auto:1/1-4 0-3`); `None`: no pinning.
    pub cpu_map: Option<String>,
    /// Global `maxconn`; `None` leaves HAProxy's derivation.
    pub maxconn: Option<u32>,
    /// `ssl-min-ver` of `ssl-default-bind-options`.
    pub tls_min_version: String,
    /// Bind address of the Prometheus exporter frontend.
    pub prometheus_listen: Option<String>,
    /// Bind address of the stats page frontend.
    pub stats_listen: Option<String>,
    /// `stats uri` of the stats page.
    pub stats_uri: String,
}

impl Default for GlobalSettings {
    /// The agent.toml defaults (what an empty `[haproxy]` renders).
    fn default() -> Self {
        GlobalSettings {
            log: vec!["/dev/log local0".into()],
            nbthread: None,
            cpu_map: None,
            maxconn: None,
            tls_min_version: "TLSv1.2".into(),
            prometheus_listen: None,
            stats_listen: None,
            stats_uri: "/stats".into(),
        }
    }
}

/// A host setting that cannot be applied on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TuningError {
    /// The agent.toml key to change (`haproxy.nbthread`).
    pub key: &'static str,
    pub message: String,
}

impl GlobalSettings {
    /// Derives the global settings from `[haproxy]` and the CPUs the agent
    /// may run on (`allowed`, ascending, from [`allowed_cpus`]).
    ///
    /// `cpu_map = "auto"` pins thread i to the i-th allowed CPU, so it needs
    /// a thread count: `nbthread`, or with `"auto"` one thread per allowed
    /// CPU (at most [`MAX_THREADS`]). More threads than CPUs cannot be pinned
    /// one to one, and is refused naming the key.
    pub fn resolve(h: &HaproxyConfig, allowed: &[usize]) -> Result<GlobalSettings, TuningError> {
        let (nbthread, cpu_map) = match h.cpu_map {
            CpuMap::None => (h.nbthread, None),
            CpuMap::Auto => {
                if allowed.is_empty() {
                    return Err(TuningError {
                        key: "haproxy.cpu_map",
                        message: "\"auto\" needs the CPUs this process may use, and they could not be read (sched_getaffinity); set \"none\"".into(),
                    });
                }
                let max = allowed.len().min(MAX_THREADS as usize);
                let n = h.nbthread.map_or(max, usize::from);
                if n > allowed.len() {
                    return Err(TuningError {
                        key: "haproxy.nbthread",
                        message: format!(
                            "{n} threads cannot be pinned one per CPU with cpu_map = \"auto\": this host allows {} CPU(s) ({}); lower nbthread, set it to \"auto\", or set cpu_map = \"none\"",
                            allowed.len(),
                            cpu_list(allowed)
                        ),
                    });
                }
                (
                    Some(n as u16),
                    // HAProxy 2.6 reads "0-1,4-5" as a different size than
                    // its CPUs; ranges separated by spaces are what it counts.
                    Some(format!(
                        "auto:1/1-{n} {}",
                        cpu_list(&allowed[..n]).replace(',', " ")
                    )),
                )
            }
        };
        Ok(GlobalSettings {
            log: h.log.iter().map(log_line).collect(),
            nbthread,
            cpu_map,
            maxconn: h.maxconn,
            tls_min_version: h.tls_min_version.as_str().into(),
            prometheus_listen: h.prometheus_listen.map(|a| a.to_string()),
            stats_listen: h.stats_listen.map(|a| a.to_string()),
            stats_uri: h.stats_uri.clone(),
        })
    }
}

/// The arguments of one `log` line.
fn log_line(t: &LogTarget) -> String {
    let mut s = match &t.addr {
        LogAddr::Unix(p) => p.display().to_string(),
        // A bare address is UDP to HAProxy; `[v6]:port` is accepted as is.
        LogAddr::Udp(a) => a.to_string(),
    };
    s.push(' ');
    s.push_str(&t.facility);
    if let Some(l) = &t.level {
        s.push(' ');
        s.push_str(l);
    }
    s
}

/// A CPU list in `cpu-map` / `taskset -c` form: `0-3,6,8-9`.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// The CPUs this process may run on (its affinity mask, which systemd's
/// `CPUAffinity=` and `taskset` set), ascending; empty if unreadable.
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|c| set.is_set(*c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn haproxy(toml: &str) -> HaproxyConfig {
        crate::config::parse_str(&format!("[node]\nname = \"t\"\n[haproxy]\n{toml}"), "a")
            .unwrap()
            .haproxy
    }

    #[test]
    fn defaults_render_as_before() {
        assert_eq!(
            GlobalSettings::resolve(&haproxy(""), &[0, 1]).unwrap(),
            GlobalSettings::default()
        );
    }

    #[test]
    fn threads_and_pinning() {
        // (agent.toml, allowed CPUs, nbthread, cpu-map or the error)
        /// nbthread and cpu-map, or the start of the error.
        type Want = Result<(Option<u16>, Option<&'static str>), &'static str>;
        let cases: &[(&str, &[usize], Want)] = &[
            ("", &[0, 1, 2, 3], Ok((None, None))),
            ("nbthread = 3", &[0, 1], Ok((Some(3), None))),
            ("cpu_map = \"auto\"", &[0, 1, 2, 3], Ok((Some(4), Some("auto:1/1-4 0-3")))),
            ("cpu_map = \"auto\"", &[2, 3, 6], Ok((Some(3), Some("auto:1/1-3 2-3 6")))),
            ("cpu_map = \"auto\"", &[5], Ok((Some(1), Some("auto:1/1-1 5")))),
            (
                "cpu_map = \"auto\"\nnbthread = 2",
                &[0, 1, 2, 3],
                Ok((Some(2), Some("auto:1/1-2 0-1"))),
            ),
            (
                "cpu_map = \"auto\"\nnbthread = 5",
                &[0, 1, 2, 3],
                Err("haproxy.nbthread: 5 threads cannot be pinned one per CPU with cpu_map = \"auto\": this host allows 4 CPU(s) (0-3)"),
            ),
            (
                "cpu_map = \"auto\"",
                &[],
                Err("haproxy.cpu_map: \"auto\" needs the CPUs"),
            ),
        ];
        for (toml, cpus, want) in cases {
            let got = GlobalSettings::resolve(&haproxy(toml), cpus);
            match (got, want) {
                (Ok(g), Ok((n, m))) => {
                    assert_eq!(g.nbthread, *n, "{toml} on {cpus:?}");
                    assert_eq!(g.cpu_map.as_deref(), *m, "{toml} on {cpus:?}");
                }
                (Err(e), Err(prefix)) => {
                    assert!(e.to_string().starts_with(prefix), "{toml} on {cpus:?}: {e}")
                }
                (got, want) => panic!("{toml} on {cpus:?}: got {got:?}, want {want:?}"),
            }
        }
        // At most MAX_THREADS threads even on a bigger host.
        let many: Vec<usize> = (0..96).collect();
        let g = GlobalSettings::resolve(&haproxy("cpu_map = \"auto\""), &many).unwrap();
        assert_eq!(g.nbthread, Some(64));
        assert_eq!(g.cpu_map.as_deref(), Some("auto:1/1-64 0-63"));
    }

    #[test]
    fn logs_listeners_and_limits() {
        let g = GlobalSettings::resolve(
            &haproxy(
                "log = [\"udp@127.0.0.1:514 local0\", \"[::1]:1514 local1 notice\", \"/dev/log daemon\"]\n\
                 maxconn = 40000\ntls_min_version = \"TLSv1.3\"\n\
                 prometheus_listen = \"127.0.0.1:8405\"\nstats_listen = \"[::1]:8404\"\nstats_uri = \"/haproxy\"\n",
            ),
            &[0],
        )
        .unwrap();
        assert_eq!(
            g.log,
            [
                "127.0.0.1:514 local0",
                "[::1]:1514 local1 notice",
                "/dev/log daemon"
            ]
        );
        assert_eq!(g.maxconn, Some(40000));
        assert_eq!(g.tls_min_version, "TLSv1.3");
        assert_eq!(g.prometheus_listen.as_deref(), Some("127.0.0.1:8405"));
        assert_eq!(g.stats_listen.as_deref(), Some("[::1]:8404"));
        assert_eq!(g.stats_uri, "/haproxy");
        assert!(GlobalSettings::resolve(&haproxy("log = []"), &[0])
            .unwrap()
            .log
            .is_empty());
    }

    #[test]
    fn cpu_lists() {
        for (cpus, want) in [
            (&[][..], ""),
            (&[0][..], "0"),
            (&[0, 1, 2, 3][..], "0-3"),
            (&[0, 2, 4][..], "0,2,4"),
            (&[1, 2, 5, 6, 7, 9][..], "1-2,5-7,9"),
        ] {
            assert_eq!(cpu_list(cpus), want, "{cpus:?}");
        }
    }

    #[test]
    fn this_process_has_cpus() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
        println!("allowed CPUs: {}", cpu_list(&cpus));
    }
}
