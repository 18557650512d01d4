//! The schema of `agent.toml`: the defaults ([`defaults`]) and the walk of
//! each section, which names every key, its conversion and its cross-checks.
//! Part of [`crate::config::parse`] (docs/architecture.md).

use super::{host_haproxy, hostname};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use toml::de::DeValue;
use toml::Spanned;

use crate::config::{
    BirdConfig, Config, CpuMap, HaproxyConfig, HealthConfig, LocalCheck, LocalCheckKind, LogAddr,
    LogTarget, NodeConfig, OnStop, OnUnhealthy, SlotPolicy, SourceConfig, SourceUrl, StatusConfig,
    TlsMinVersion, VipConfig,
};

use super::walker::{
    abs_path, bird_symbol, bird_symbols, boolean, byte_size, connection_cap, duration, found,
    identifier, int_in, linux_ifname, octal_mode, one_of, opt_abs_path, opt_bird_symbol,
    opt_identifier, opt_socket_addr, positive_duration, prefix, prefix_v4, prefix_v6, prefixes,
    ratio, socket_addr, source_url, string, string_array, u32_at_least, Cx, Section, Table,
    BIRD_SYMBOL_MAX_LEN,
};

/// The configuration used for every key that is not set.
///
/// `node_name` is the default for `node.name` (the hostname at run time).
pub(super) fn defaults(node_name: String) -> Config {
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

pub(super) fn walk(cx: &mut Cx<'_>, doc: &Table<'_>) -> Config {
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
