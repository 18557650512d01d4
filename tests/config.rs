//! agent.toml fixtures: every valid one loads, every invalid one is rejected
//! with exactly the messages its `# expect:` lines list (all of them, in
//! order), and the packaged conffile is the defaults.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_agent::config::{self, LocalCheckKind, OnStop, OnUnhealthy, SlotPolicy, SourceUrl};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/config")
        .join(kind);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_valid_fixture_loads() {
    let files = fixtures("valid");
    assert!(files.len() >= 3, "valid fixtures missing: {files:?}");
    for path in files {
        if let Err(e) = config::load(&path) {
            panic!("{} should be valid:\n{e}", path.display());
        }
    }
}

#[test]
fn every_invalid_fixture_is_rejected_with_exactly_the_expected_messages() {
    let files = fixtures("invalid");
    assert!(files.len() >= 10, "invalid fixtures missing: {files:?}");
    let mut failures = Vec::new();
    for path in &files {
        let text = fs::read_to_string(path).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            path.display()
        );
        let got: Vec<String> = match config::parse_str(&text, "agent.toml") {
            Ok(_) => vec!["<accepted>".into()],
            Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
        };
        if got != expected {
            failures.push(format!(
                "{}:\n  expected:\n    {}\n  got:\n    {}",
                path.display(),
                expected.join("\n    "),
                got.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn full_fixture_sets_every_value() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/config/valid/full.toml");
    let c = config::load(&path).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(c.node.name, "lb7.ams1");
    assert_eq!(c.node.group, "blue");
    assert_eq!(c.node.az.as_deref(), Some("az2"));
    assert_eq!(c.node.state_dir, Path::new("/srv/lb-agent/state"));

    assert_eq!(
        c.source.url,
        SourceUrl::Http("https://balancer.example.net/v1/groups/blue/config?format=json".into())
    );
    assert_eq!(c.source.poll_interval, Duration::from_secs(2));
    assert_eq!(c.source.long_poll, Duration::from_secs(45));
    assert_eq!(c.source.connect_timeout, Duration::from_millis(1500));
    assert_eq!(
        c.source.token_file.as_deref(),
        Some(Path::new("/etc/lb-agent/token"))
    );
    assert_eq!(
        c.source.ca_file.as_deref(),
        Some(Path::new("/etc/lb-agent/ca.pem"))
    );
    assert_eq!(
        c.source.client_cert.as_deref(),
        Some(Path::new("/etc/lb-agent/client.pem"))
    );
    assert_eq!(
        c.source.client_key.as_deref(),
        Some(Path::new("/etc/lb-agent/client.key"))
    );
    assert_eq!(
        c.source.cache,
        Path::new("/srv/lb-agent/state/last-good.json")
    );
    assert_eq!(c.source.max_removal_ratio, 0.25);
    assert_eq!(c.source.max_document_size, 4 << 20);

    assert_eq!(c.haproxy.config, Path::new("/etc/haproxy/lb.cfg"));
    assert_eq!(
        c.haproxy.runtime_socket,
        Path::new("/run/haproxy/lb-admin.sock")
    );
    assert_eq!(
        c.haproxy.master_socket,
        Path::new("/run/haproxy/master.sock")
    );
    assert_eq!(c.haproxy.binary, Path::new("/opt/haproxy/sbin/haproxy"));
    assert!(c.haproxy.reload_command.is_empty());
    assert_eq!(c.haproxy.templates, Path::new("/srv/lb-agent/templates"));
    assert_eq!(c.haproxy.min_reload_interval, Duration::from_secs(10));
    assert_eq!(c.haproxy.max_runtime_ops, 2000);
    assert_eq!(c.haproxy.server_slots, SlotPolicy::Exact);
    assert_eq!(
        c.haproxy.state_file,
        Path::new("/srv/lb-agent/state/server-state")
    );
    assert_eq!(c.haproxy.data_dir, Path::new("/srv/haproxy/data"));
    assert_eq!(c.haproxy.hard_stop_after, Duration::from_secs(300));
    assert_eq!(c.haproxy.reload_timeout, Duration::from_secs(20));
    assert_eq!(c.haproxy.verify_interval, Duration::from_secs(120));
    assert_eq!(
        c.haproxy.log,
        vec![
            config::LogTarget {
                addr: config::LogAddr::Udp("127.0.0.1:514".parse().unwrap()),
                facility: "local0".into(),
                level: None,
            },
            config::LogTarget {
                addr: config::LogAddr::Unix("/dev/log".into()),
                facility: "local1".into(),
                level: Some("notice".into()),
            },
        ]
    );
    assert_eq!(c.haproxy.nbthread, Some(4));
    assert_eq!(c.haproxy.cpu_map, config::CpuMap::None);
    assert_eq!(c.haproxy.maxconn, Some(100_000));
    assert_eq!(c.haproxy.tls_min_version, config::TlsMinVersion::Tls13);
    assert_eq!(
        c.haproxy.prometheus_listen,
        Some("127.0.0.1:8405".parse().unwrap())
    );
    assert_eq!(c.haproxy.stats_listen, Some("[::1]:8404".parse().unwrap()));
    assert_eq!(c.haproxy.stats_uri, "/haproxy-stats");

    assert_eq!(c.health.interval, Duration::from_secs(2));
    assert_eq!(c.health.timeout, Duration::from_secs(1));
    assert_eq!((c.health.rise, c.health.fall), (5, 1));
    assert_eq!(c.health.fast_interval, Duration::from_millis(100));

    assert_eq!(c.bird.include_file, Path::new("/run/bird/lb-agent.conf"));
    assert_eq!(c.bird.control_socket, Path::new("/run/bird/bird2.ctl"));
    assert_eq!(c.bird.ipv4_variable, "LB_V4");
    assert_eq!(c.bird.ipv6_variable, "LB_V6");
    assert_eq!(c.bird.dummy_ipv4.to_string(), "192.0.2.255/32");
    assert_eq!(c.bird.dummy_ipv6.to_string(), "2001:db8:eeee::1/128");
    assert_eq!(c.bird.drain_variable.as_deref(), Some("LB_DRAIN"));
    assert_eq!(c.bird.drain_grace, Duration::from_secs(60));
    assert_eq!(c.bird.demote_variable.as_deref(), Some("LB_DEMOTE"));
    assert_eq!(c.bird.on_unhealthy, OnUnhealthy::Demote);
    assert_eq!(c.bird.on_stop, OnStop::Keep);
    assert_eq!(c.bird.export_protocols, ["tor1", "tor2"]);

    assert_eq!(c.vip.interface, "dummy0");
    assert!(!c.vip.manage);
    // A repeated prefix is kept once.
    assert_eq!(
        c.vip
            .allowed_prefixes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["192.0.2.0/24", "2001:db8:10::/48"]
    );
    assert!(!c.vip.allows_everything());
    assert_eq!((c.vip.min_prefix_len_v4, c.vip.min_prefix_len_v6), (28, 56));

    assert_eq!(c.status.socket, Path::new("/run/lb-agent/agent.sock"));
    assert_eq!(c.status.mode, 0o600);
    assert_eq!(c.status.group, "lbops");
    assert_eq!(
        c.status.metrics_listen,
        Some("127.0.0.1:9477".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(c.status.max_connections, 32);
    assert_eq!(c.status.metrics_max_connections, 4);

    assert_eq!(c.checks.len(), 3);
    let uplink = &c.checks[0];
    assert_eq!(uplink.name, "uplink");
    assert_eq!(uplink.vip.to_string(), "192.0.2.10/32");
    assert_eq!(
        uplink.kind,
        LocalCheckKind::Exec {
            command: vec!["/usr/local/bin/check-uplink".into(), "--quiet".into()]
        }
    );
    assert_eq!(uplink.timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        (uplink.interval, uplink.rise, uplink.fall),
        (None, None, None)
    );

    let app = &c.checks[1];
    assert_eq!(app.vip.to_string(), "2001:db8:10::/64");
    assert_eq!(
        app.kind,
        LocalCheckKind::Http {
            target: "[::1]:8080".parse().unwrap(),
            path: "/healthz".into(),
            host: Some("www.example.com".into()),
            expect_status: vec![200, 204],
        }
    );
    assert_eq!(app.interval, Some(Duration::from_secs(5)));
    assert_eq!((app.rise, app.fall), (Some(2), Some(4)));

    assert_eq!(
        c.checks[2].kind,
        LocalCheckKind::Tcp {
            target: "127.0.0.1:22".parse().unwrap()
        }
    );
}

#[test]
fn dotted_keys_and_inline_tables_work_like_sections() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/config/valid/file-source.toml");
    let c = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.node.name, "demo");
    assert_eq!(
        c.source.url,
        SourceUrl::File("/etc/lb-agent/desired.json".into())
    );
    assert_eq!(c.source.poll_interval, Duration::from_secs(1));
    assert_eq!(c.status.mode, 0o640);
}

#[test]
fn empty_file_and_packaged_file_are_the_defaults() {
    let empty = config::parse_str("", "agent.toml").unwrap();
    let mut packaged =
        config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/agent.toml"))
            .unwrap_or_else(|e| panic!("packaging/agent.toml:\n{e}"));
    // ... but for the two sets the example bird.conf exports (it refers to
    // them, so BIRD would refuse it without them).
    assert_eq!(
        packaged.bird.drain_variable.as_deref(),
        Some("ACAST_PS_DRAIN")
    );
    assert_eq!(
        packaged.bird.demote_variable.as_deref(),
        Some("ACAST_PS_DEMOTE")
    );
    packaged.bird.drain_variable = None;
    packaged.bird.demote_variable = None;
    assert_eq!(packaged, empty);

    // The documented defaults (docs/config.md), spelled out once more from the contract.
    assert_eq!(empty.node.group, "default");
    assert_eq!(empty.source.poll_interval, Duration::from_secs(5));
    assert_eq!(empty.source.long_poll, Duration::from_secs(30));
    assert_eq!(empty.source.max_removal_ratio, 0.5);
    assert_eq!(
        empty.source.cache,
        Path::new("/var/lib/lb-agent/last-good.json")
    );
    assert_eq!(
        empty.haproxy.reload_command,
        ["systemctl", "reload", "haproxy"]
    );
    assert_eq!(empty.haproxy.max_runtime_ops, 500);
    assert_eq!(empty.haproxy.server_slots, SlotPolicy::Pow2);
    assert_eq!(empty.health.timeout, Duration::from_millis(500));
    assert_eq!((empty.health.rise, empty.health.fall), (3, 2));
    assert_eq!(empty.bird.ipv4_variable, "ACAST_PS_ADVERTISE");
    assert_eq!(empty.bird.dummy_ipv6.to_string(), "2001:db8:ffff::1/128");
    assert_eq!(empty.bird.on_stop, OnStop::Withdraw);
    assert_eq!(empty.bird.on_unhealthy, OnUnhealthy::Withdraw);
    assert_eq!(empty.bird.drain_variable, None);
    assert_eq!(empty.bird.demote_variable, None);
    assert_eq!(empty.status.mode, 0o660);
    assert_eq!(empty.status.metrics_listen, None);
    assert!(empty.checks.is_empty());
}

#[test]
fn unreadable_file_is_one_error_without_a_line() {
    let errors = config::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    let e = &errors.0[0];
    assert_eq!((e.line, e.key.as_str()), (0, ""));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/agent.toml: cannot read the configuration: "),
        "{e}"
    );
}

#[test]
fn errors_name_the_file_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    fs::write(&path, "[node]\nnmae = \"x\"\n").unwrap();
    let errors = config::load(&path).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "{}:2: node.nmae: unknown key (did you mean `name`?)",
            path.display()
        )
    );
}

#[test]
fn etcd_source_fixture_parses_endpoints_prefix_tls_and_user() {
    let c = config::load(Path::new("fixtures/config/valid/etcd-source.toml")).unwrap();
    let SourceUrl::Etcd(url) = &c.source.url else {
        panic!("not an etcd URL: {:?}", c.source.url);
    };
    assert_eq!(
        url.endpoints,
        [
            "etcd1.example.net:2379",
            "etcd2.example.net:2379",
            "[2001:db8::3]:2380"
        ]
    );
    assert_eq!(url.prefix, "/lb/blue/");
    assert_eq!(
        url.display(),
        "etcd://etcd1.example.net:2379,etcd2.example.net:2379,[2001:db8::3]:2380/lb/blue"
    );
    assert_eq!(c.source.username.as_deref(), Some("lb-agent"));
    assert_eq!(
        c.source.password_file.as_deref(),
        Some(Path::new("/etc/lb-agent/etcd-password"))
    );
    assert!(c.source.client_key.is_some());
}

/// `lb-agent check-config` applies the host settings to this host's CPUs:
/// pinning more threads than the process may use fails it (exit 2, the key
/// named); as many threads as CPUs passes.
#[test]
fn check_config_refuses_more_pinned_threads_than_cpus() {
    let cpus = lb_agent::haproxy::global::allowed_cpus().len();
    if cpus + 1 > lb_agent::config::MAX_THREADS as usize {
        common::skip::expected_skip(
            "check_config_refuses_more_pinned_threads_than_cpus",
            &format!("{cpus} CPUs, no thread count above them is valid"),
            "a property of the host's CPU count, not of what is installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |threads: usize| {
        let path = dir.path().join(format!("agent-{threads}.toml"));
        fs::write(
            &path,
            format!("[haproxy]\ncpu_map = \"auto\"\nnbthread = {threads}\n"),
        )
        .unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(cpus + 1);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "haproxy.nbthread: {} threads cannot be pinned one per CPU with cpu_map = \"auto\": this host allows {cpus} CPU(s)",
            cpus + 1
        )),
        "{stderr}"
    );
    let (code, stderr) = run(cpus);
    assert_eq!(code, Some(0), "{stderr}");
}
