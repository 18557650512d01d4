//! Which checks gate which VIP (pure).
//!
//! The services behind a VIP are the frontends binding an address inside the
//! VIP prefix (docs/api.md, `frontends`), plus the local `[[check]]` tables naming that
//! prefix (docs/config.md, `[[check]]`). Each becomes one [`ServiceCheck`]: what to probe, how
//! often, and the rise/fall thresholds. Frontend checks go to the frontend's
//! own bind address inside the VIP, so they exercise the local HAProxy the
//! way a client routed here by ECMP would.
//!
//! Derivation is a pure function of the desired state and agent.toml; the
//! daemon re-runs it whenever either changes and hands the result to the
//! monitor, which keeps the health state of services whose key is unchanged.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use crate::config::{HealthConfig, LocalCheck, LocalCheckKind};
use crate::model::{DesiredState, Frontend, HealthKind, Mode, Vip};

/// Where a service comes from; part of its key so a local check may share a
/// name with a frontend without the two being confused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceOrigin {
    /// A frontend of the desired state (check derived from its mode / `health`).
    Frontend,
    /// A local `[[check]]` table of agent.toml.
    Local,
}

/// Stable identity of a service behind a VIP. A frontend binding two VIPs
/// (say IPv4 and IPv6) is two services: each VIP is gated on its own bind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceKey {
    /// The VIP prefix this service gates.
    pub vip: IpNet,
    /// Frontend or local check.
    pub origin: ServiceOrigin,
    /// Frontend name or local check name (what status output shows).
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.origin {
            ServiceOrigin::Frontend => write!(f, "{}@{}", self.name, self.vip),
            ServiceOrigin::Local => write!(f, "check:{}@{}", self.name, self.vip),
        }
    }
}

/// The HTTP exchange of an `http` or `tls` probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequestSpec {
    /// Request path (origin form, always starting with `/`).
    pub path: String,
    /// `Host` header; `None` sends the target address (`192.0.2.10:80`).
    pub host: Option<String>,
    /// Statuses that pass; empty means any 2xx or 3xx.
    pub expect_status: Vec<u16>,
}

/// What one check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// TCP connect to `addr`.
    Tcp {
        /// Target address.
        addr: SocketAddr,
    },
    /// HTTP/1.1 `GET` on `addr`.
    Http {
        /// Target address.
        addr: SocketAddr,
        /// The request and the expected status.
        request: HttpRequestSpec,
    },
    /// TLS handshake with `addr`, then (if `request` is set) the HTTP check
    /// over the TLS session.
    Tls {
        /// Target address.
        addr: SocketAddr,
        /// SNI server name; `None` sends no SNI.
        sni: Option<String>,
        /// HTTP check after the handshake; `None` = handshake only.
        request: Option<HttpRequestSpec>,
    },
    /// Run a command (argv, no shell) in its own process group; exit 0 passes.
    /// Only ever built from agent.toml, never from the API document.
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

impl Probe {
    /// Short name of the probe kind, for logs and status output.
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Tcp { .. } => "tcp",
            Probe::Http { .. } => "http",
            Probe::Tls { .. } => "tls",
            Probe::Exec { .. } => "exec",
        }
    }
}

/// One service to check: identity, probe, schedule and thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCheck {
    /// Stable identity (VIP, origin, name).
    pub key: ServiceKey,
    /// What to do on each check.
    pub probe: Probe,
    /// Period between checks while the state is stable.
    pub interval: Duration,
    /// Period between checks while a rise or fall streak is in progress
    /// (never longer than `interval`).
    pub fast_interval: Duration,
    /// Deadline of one check, everything included.
    pub timeout: Duration,
    /// Consecutive passes before the service counts as healthy (≥ 1).
    pub rise: u32,
    /// Consecutive failures before the service counts as unhealthy (≥ 1).
    pub fall: u32,
}

/// The checks gating `vip`: one per frontend with a bind inside the VIP
/// prefix, then one per local `[[check]]` whose `vip` equals the prefix.
///
/// Frontend checks (docs/api.md, `frontends`) target the frontend's first bind address
/// inside the VIP (HAProxy binds all of a frontend's addresses or fails to
/// start, so one is representative). Without a `health.type`, the probe
/// follows the mode: `tcp` → TCP connect; `http` → `GET /` expecting
/// 2xx/3xx; `http` with `tls` → TLS handshake (SNI = `health.host`) then the
/// HTTP check; `tcp` with `tls` → TLS handshake only (the payload is not
/// HTTP). `health` overrides kind, path, host and expected statuses.
pub fn service_checks(
    desired: &DesiredState,
    vip: &Vip,
    defaults: &HealthConfig,
    local: &[LocalCheck],
) -> Vec<ServiceCheck> {
    let mut out: Vec<ServiceCheck> = desired
        .services_of(vip)
        .filter_map(|f| frontend_check(f, vip, defaults))
        .collect();
    out.extend(
        local
            .iter()
            .filter(|c| c.vip == vip.address)
            .map(|c| local_check(c, defaults)),
    );
    out
}

/// The checks of every VIP of the desired state, in VIP order: the set the
/// daemon hands to the monitor.
pub fn desired_checks(
    desired: &DesiredState,
    defaults: &HealthConfig,
    local: &[LocalCheck],
) -> Vec<ServiceCheck> {
    desired
        .vips
        .iter()
        .flat_map(|vip| service_checks(desired, vip, defaults, local))
        .collect()
}

fn frontend_check(f: &Frontend, vip: &Vip, defaults: &HealthConfig) -> Option<ServiceCheck> {
    let addr = *f.bind.iter().find(|b| vip.address.contains(&b.ip()))?;
    let health = f.health.as_ref();
    let host = health.and_then(|h| h.host.clone());
    let request = || HttpRequestSpec {
        path: normalize_path(health.and_then(|h| h.path.as_deref())),
        host: host.clone(),
        expect_status: health.map(|h| h.expect_status.clone()).unwrap_or_default(),
    };
    let probe = match (health.and_then(|h| h.kind), f.mode, f.tls.is_some()) {
        (Some(HealthKind::Tcp), _, _) | (None, Mode::Tcp, false) => Probe::Tcp { addr },
        (Some(HealthKind::Http), _, _) | (None, Mode::Http, false) => Probe::Http {
            addr,
            request: request(),
        },
        (Some(HealthKind::Tls), _, _) | (None, Mode::Http, true) => Probe::Tls {
            addr,
            sni: host.clone(),
            request: Some(request()),
        },
        (None, Mode::Tcp, true) => Probe::Tls {
            addr,
            sni: host.clone(),
            request: None,
        },
    };
    Some(ServiceCheck {
        key: ServiceKey {
            vip: vip.address,
            origin: ServiceOrigin::Frontend,
            name: f.name.to_string(),
        },
        probe,
        interval: defaults.interval,
        fast_interval: defaults.fast_interval.min(defaults.interval),
        timeout: defaults.timeout,
        rise: defaults.rise.max(1),
        fall: defaults.fall.max(1),
    })
}

fn local_check(c: &LocalCheck, defaults: &HealthConfig) -> ServiceCheck {
    let probe = match &c.kind {
        LocalCheckKind::Exec { command } => Probe::Exec {
            argv: command.clone(),
        },
        LocalCheckKind::Tcp { target } => Probe::Tcp { addr: *target },
        LocalCheckKind::Http {
            target,
            path,
            host,
            expect_status,
        } => Probe::Http {
            addr: *target,
            request: HttpRequestSpec {
                path: normalize_path(Some(path)),
                host: host.clone(),
                expect_status: expect_status.clone(),
            },
        },
    };
    let interval = c.interval.unwrap_or(defaults.interval);
    ServiceCheck {
        key: ServiceKey {
            vip: c.vip,
            origin: ServiceOrigin::Local,
            name: c.name.clone(),
        },
        probe,
        interval,
        fast_interval: defaults.fast_interval.min(interval),
        timeout: c.timeout.unwrap_or(defaults.timeout),
        rise: c.rise.unwrap_or(defaults.rise).max(1),
        fall: c.fall.unwrap_or(defaults.fall).max(1),
    }
}

/// `None`/empty → `/`; a path without a leading slash gets one (an origin-form
/// request target must start with `/`).
fn normalize_path(path: Option<&str>) -> String {
    match path {
        None | Some("") => "/".to_string(),
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{FrontendTls, HealthSpec, Name};

    fn defaults() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 3,
            fall: 2,
            fast_interval: Duration::from_millis(200),
        }
    }

    fn name(s: &str) -> Name {
        Name::try_new(s).expect("valid name")
    }

    fn frontend(n: &str, bind: &[&str], mode: Mode, tls: bool) -> Frontend {
        Frontend {
            name: name(n),
            bind: bind.iter().map(|b| b.parse().expect("addr")).collect(),
            mode,
            tls: tls.then(|| FrontendTls {
                certificates: vec![name("cert")],
            }),
            default_pool: None,
            logic: Vec::new(),
            maxconn: None,
            health: None,
        }
    }

    fn state(vips: &[&str], frontends: Vec<Frontend>) -> DesiredState {
        let mut d = DesiredState::empty("blue");
        d.vips = vips
            .iter()
            .map(|v| Vip {
                address: v.parse().expect("net"),
            })
            .collect();
        d.frontends = frontends
            .into_iter()
            .map(|f| (f.name.clone(), f))
            .collect::<BTreeMap<_, _>>();
        d
    }

    fn req(path: &str, host: Option<&str>, expect: &[u16]) -> HttpRequestSpec {
        HttpRequestSpec {
            path: path.to_string(),
            host: host.map(str::to_string),
            expect_status: expect.to_vec(),
        }
    }

    #[test]
    fn defaults_follow_the_mode() {
        let d = state(
            &["192.0.2.10/32"],
            vec![
                frontend("ssh", &["192.0.2.10:22"], Mode::Tcp, false),
                frontend("web", &["192.0.2.10:80"], Mode::Http, false),
                frontend("web_tls", &["192.0.2.10:443"], Mode::Http, true),
                frontend("imaps", &["192.0.2.10:993"], Mode::Tcp, true),
            ],
        );
        let checks = service_checks(&d, &d.vips[0], &defaults(), &[]);
        let probes: Vec<(&str, &Probe)> = checks
            .iter()
            .map(|c| (c.key.name.as_str(), &c.probe))
            .collect();
        assert_eq!(
            probes,
            vec![
                (
                    "imaps",
                    &Probe::Tls {
                        addr: "192.0.2.10:993".parse().expect("addr"),
                        sni: None,
                        request: None
                    }
                ),
                (
                    "ssh",
                    &Probe::Tcp {
                        addr: "192.0.2.10:22".parse().expect("addr")
                    }
                ),
                (
                    "web",
                    &Probe::Http {
                        addr: "192.0.2.10:80".parse().expect("addr"),
                        request: req("/", None, &[])
                    }
                ),
                (
                    "web_tls",
                    &Probe::Tls {
                        addr: "192.0.2.10:443".parse().expect("addr"),
                        sni: None,
                        request: Some(req("/", None, &[]))
                    }
                ),
            ]
        );
        let c = &checks[0];
        assert_eq!(c.key.vip, "192.0.2.10/32".parse::<IpNet>().expect("net"));
        assert_eq!(c.key.origin, ServiceOrigin::Frontend);
        assert_eq!(
            (c.interval, c.fast_interval, c.timeout, c.rise, c.fall),
            (
                Duration::from_secs(1),
                Duration::from_millis(200),
                Duration::from_millis(500),
                3,
                2
            )
        );
    }

    #[test]
    fn health_overrides_kind_path_host_and_status() {
        let mut www = frontend(
            "www_https",
            &["192.0.2.10:443", "[2001:db8:10::10]:443"],
            Mode::Http,
            true,
        );
        www.health = Some(HealthSpec {
            kind: None,
            path: Some("healthz".into()),
            host: Some("www.example.com".into()),
            expect_status: vec![200],
        });
        let mut plain = frontend("plain", &["192.0.2.10:8080"], Mode::Http, false);
        plain.health = Some(HealthSpec {
            kind: Some(HealthKind::Tcp),
            path: None,
            host: None,
            expect_status: vec![],
        });
        let d = state(&["192.0.2.10/32", "2001:db8:10::/64"], vec![www, plain]);

        let v4 = service_checks(&d, &d.vips[0], &defaults(), &[]);
        assert_eq!(v4.len(), 2);
        assert_eq!(
            v4[1].probe,
            Probe::Tls {
                addr: "192.0.2.10:443".parse().expect("addr"),
                sni: Some("www.example.com".into()),
                request: Some(req("/healthz", Some("www.example.com"), &[200])),
            }
        );
        assert_eq!(
            v4[0].probe,
            Probe::Tcp {
                addr: "192.0.2.10:8080".parse().expect("addr")
            }
        );

        // The same frontend gates the IPv6 VIP through its IPv6 bind.
        let v6 = service_checks(&d, &d.vips[1], &defaults(), &[]);
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].key.name, "www_https");
        assert!(matches!(
            v6[0].probe,
            Probe::Tls { addr, .. } if addr == "[2001:db8:10::10]:443".parse().expect("addr")
        ));
        assert_ne!(v4[1].key, v6[0].key);
    }

    #[test]
    fn explicit_http_on_tcp_frontend_and_tls_on_plain() {
        let mut a = frontend("a", &["192.0.2.10:81"], Mode::Tcp, false);
        a.health = Some(HealthSpec {
            kind: Some(HealthKind::Http),
            path: Some("/status".into()),
            host: Some("a.example".into()),
            expect_status: vec![204],
        });
        let mut b = frontend("b", &["192.0.2.10:82"], Mode::Tcp, false);
        b.health = Some(HealthSpec {
            kind: Some(HealthKind::Tls),
            path: None,
            host: Some("b.example".into()),
            expect_status: vec![],
        });
        let d = state(&["192.0.2.10/32"], vec![a, b]);
        let checks = service_checks(&d, &d.vips[0], &defaults(), &[]);
        assert_eq!(
            checks[0].probe,
            Probe::Http {
                addr: "192.0.2.10:81".parse().expect("addr"),
                request: req("/status", Some("a.example"), &[204])
            }
        );
        assert_eq!(
            checks[1].probe,
            Probe::Tls {
                addr: "192.0.2.10:82".parse().expect("addr"),
                sni: Some("b.example".into()),
                request: Some(req("/", Some("b.example"), &[]))
            }
        );
    }

    #[test]
    fn local_checks_join_their_vip_only_with_overrides() {
        let d = state(
            &["192.0.2.10/32", "192.0.2.11/32"],
            vec![frontend("ssh", &["192.0.2.10:22"], Mode::Tcp, false)],
        );
        let local = vec![
            LocalCheck {
                name: "ssh".into(), // same name as the frontend: distinct key
                vip: "192.0.2.10/32".parse().expect("net"),
                kind: LocalCheckKind::Exec {
                    command: vec!["/usr/bin/true".into()],
                },
                interval: Some(Duration::from_millis(100)),
                timeout: Some(Duration::from_secs(2)),
                rise: Some(0),
                fall: Some(5),
            },
            LocalCheck {
                name: "db".into(),
                vip: "192.0.2.11/32".parse().expect("net"),
                kind: LocalCheckKind::Http {
                    target: "127.0.0.1:9000".parse().expect("addr"),
                    path: "ready".into(),
                    host: None,
                    expect_status: vec![],
                },
                interval: None,
                timeout: None,
                rise: None,
                fall: None,
            },
        ];
        let first = service_checks(&d, &d.vips[0], &defaults(), &local);
        assert_eq!(first.len(), 2);
        assert_eq!(first[1].key.origin, ServiceOrigin::Local);
        assert_eq!(first[1].key.name, "ssh");
        assert_ne!(first[0].key, first[1].key);
        assert_eq!(first[1].key.to_string(), "check:ssh@192.0.2.10/32");
        assert_eq!(first[0].key.to_string(), "ssh@192.0.2.10/32");
        assert_eq!(
            first[1].probe,
            Probe::Exec {
                argv: vec!["/usr/bin/true".into()]
            }
        );
        assert_eq!(first[1].interval, Duration::from_millis(100));
        // fast_interval never exceeds the interval; rise 0 is treated as 1.
        assert_eq!(first[1].fast_interval, Duration::from_millis(100));
        assert_eq!(
            (first[1].timeout, first[1].rise, first[1].fall),
            (Duration::from_secs(2), 1, 5)
        );

        let second = service_checks(&d, &d.vips[1], &defaults(), &local);
        assert_eq!(second.len(), 1);
        assert_eq!(
            second[0].probe,
            Probe::Http {
                addr: "127.0.0.1:9000".parse().expect("addr"),
                request: req("/ready", None, &[])
            }
        );
        assert_eq!(second[0].interval, Duration::from_secs(1));

        let all = desired_checks(&d, &defaults(), &local);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].key.name, "db");
    }

    #[test]
    fn vip_without_services_has_no_checks() {
        let d = state(
            &["192.0.2.10/32", "192.0.2.99/32"],
            vec![frontend("ssh", &["192.0.2.10:22"], Mode::Tcp, false)],
        );
        assert!(service_checks(&d, &d.vips[1], &defaults(), &[]).is_empty());
    }
}
