use super::*;
use crate::status::types::*;
use std::time::UNIX_EPOCH;

fn snapshot() -> Snapshot {
    let mut reasons = BTreeMap::new();
    reasons.insert("structure".to_string(), 2);
    reasons.insert("convergence".to_string(), 1);
    Snapshot {
        node: "lb1".into(),
        group: "blue".into(),
        version: "0.1.0".into(),
        revision: Some(1042),
        drained: false,
        source: SourceStatus {
            state: SourceState::Stale,
            last_success: Some(Timestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_000))),
            consecutive_failures: 4,
            polls: PollCounts {
                ok: 10,
                not_modified: 20,
                error: 4,
            },
            ..Default::default()
        },
        haproxy: HaproxyStatus {
            converged: true,
            reloads: 3,
            reloads_by_reason: reasons,
            runtime_commands: 120,
            runtime_failures: 1,
            convergence_failures: 2,
            reload_failures: 5,
            old_workers: 1,
            rejections: 6,
            scoped_passes: 9,
            config_file_behind: true,
            ..Default::default()
        },
        bird: BirdStatus {
            ok: true,
            reconfigures: 7,
            failures: 8,
            not_exported: vec!["192.0.2.10/32".into()],
            export_check: "discovered".into(),
            export_protocols: vec!["tor1".into()],
            ..Default::default()
        },
        vips: vec![VipStatus {
            address: "192.0.2.10/32".into(),
            announced: true,
            exported: Some(false),
            services: vec![
                ServiceStatus {
                    name: "www_https".into(),
                    healthy: true,
                    ..Default::default()
                },
                ServiceStatus {
                    name: "git_ssh".into(),
                    healthy: false,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
}

#[test]
fn every_family_is_declared_once_with_its_type() {
    let (_tx, rx) = watch::channel(snapshot());
    let text = Metrics::new(rx).encode().unwrap();
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    for (name, kind) in FAMILIES {
        let line = format!("# TYPE {name} {kind}");
        assert_eq!(
            types.iter().filter(|l| **l == line).count(),
            1,
            "{line} missing or repeated in\n{text}"
        );
    }
    assert_eq!(
        types.len(),
        FAMILIES.len(),
        "undocumented family in\n{text}"
    );
    assert!(text.contains("# UNIT lb_agent_apply_duration_seconds seconds"));
    assert!(
        text.lines()
            .all(|l| l.starts_with('#') || l.starts_with("lb_agent_")),
        "{text}"
    );
}

#[test]
fn snapshot_values_become_samples() {
    let (tx, rx) = watch::channel(snapshot());
    let m = Metrics::new(rx);
    let s = parse_exposition(&m.encode().unwrap()).unwrap();
    let d = describe(&s);
    assert_eq!(
        value(&s, "lb_agent_build_info", &[("version", "0.1.0")]),
        Some(1.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_applied_revision", &[]),
        Some(1042.0),
        "{d}"
    );
    assert_eq!(
        value(
            &s,
            "lb_agent_source_polls_total",
            &[("result", "not_modified")]
        ),
        Some(20.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_source_polls_total", &[("result", "error")]),
        Some(4.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_source_state", &[("state", "stale")]),
        Some(1.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_source_state", &[("state", "ok")]),
        Some(0.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_source_last_success_timestamp_seconds", &[]),
        Some(1_700_000_000.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_reloads_total", &[("reason", "structure")]),
        Some(2.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_reloads_total", &[("reason", "convergence")]),
        Some(1.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_reloads_total", &[("reason", "unknown")]),
        None,
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_runtime_commands_total", &[]),
        Some(120.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_convergence_failures_total", &[]),
        Some(2.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_document_rejections_total", &[]),
        Some(6.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_scoped_passes_total", &[]),
        Some(9.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_haproxy_config_file_behind", &[]),
        Some(1.0),
        "{d}"
    );
    assert_eq!(
        value(
            &s,
            "lb_agent_bird_reconfigures_total",
            &[("result", "error")]
        ),
        Some(8.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_vip_announced", &[("vip", "192.0.2.10/32")]),
        Some(1.0),
        "{d}"
    );
    assert_eq!(
        value(
            &s,
            "lb_agent_service_healthy",
            &[("vip", "192.0.2.10/32"), ("service", "git_ssh")]
        ),
        Some(0.0),
        "{d}"
    );

    assert_eq!(
        value(&s, "lb_agent_bird_not_exported", &[]),
        Some(1.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_vip_exported", &[("vip", "192.0.2.10/32")]),
        Some(0.0),
        "{d}"
    );

    // A new snapshot is what the next scrape shows.
    let mut next = snapshot();
    next.bird.export_check = "unknown".into();
    next.vips[0].exported = None;
    next.revision = None;
    next.drained = true;
    next.vips[0].announced = false;
    next.haproxy.reloads_by_reason.clear();
    tx.send_replace(next);
    let s = parse_exposition(&m.encode().unwrap()).unwrap();
    assert_eq!(value(&s, "lb_agent_applied_revision", &[]), None);
    assert_eq!(value(&s, "lb_agent_bird_not_exported", &[]), None);
    assert_eq!(
        value(&s, "lb_agent_vip_exported", &[("vip", "192.0.2.10/32")]),
        None
    );
    assert_eq!(value(&s, "lb_agent_drained", &[]), Some(1.0));
    assert_eq!(
        value(&s, "lb_agent_vip_announced", &[("vip", "192.0.2.10/32")]),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "lb_agent_reloads_total", &[("reason", "unknown")]),
        Some(3.0)
    );
}

#[test]
fn observations_feed_histograms_and_check_counters_for_known_services_only() {
    let (tx, rx) = watch::channel(snapshot());
    let m = Metrics::new(rx);
    m.observe_apply(0.02);
    m.observe_apply(3.0);
    m.observe_apply(f64::NAN);
    m.observe_apply(-1.0);
    m.observe_check(
        "192.0.2.10/32",
        "www_https",
        CheckOutcome::Ok,
        Duration::from_micros(300),
    );
    m.observe_check(
        "192.0.2.10/32",
        "www_https",
        CheckOutcome::Ok,
        Duration::from_millis(2),
    );
    m.observe_check(
        "192.0.2.10/32",
        "git_ssh",
        CheckOutcome::Timeout,
        Duration::from_millis(500),
    );
    m.observe_check(
        "198.51.100.1/32",
        "gone",
        CheckOutcome::Fail,
        Duration::from_millis(1),
    );
    let s = parse_exposition(&m.encode().unwrap()).unwrap();
    let d = describe(&s);
    assert_eq!(
        value(&s, "lb_agent_apply_duration_seconds_count", &[]),
        Some(2.0),
        "{d}"
    );
    assert_eq!(
        value(
            &s,
            "lb_agent_apply_duration_seconds_bucket",
            &[("le", "0.025")]
        ),
        Some(1.0),
        "{d}"
    );
    assert_eq!(
        value(
            &s,
            "lb_agent_apply_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(2.0),
        "{d}"
    );
    let www = [("vip", "192.0.2.10/32"), ("service", "www_https")];
    assert_eq!(
        value(
            &s,
            "lb_agent_check_results_total",
            &[www[0], www[1], ("result", "ok")]
        ),
        Some(2.0),
        "{d}"
    );
    assert_eq!(
        value(
            &s,
            "lb_agent_check_results_total",
            &[www[0], www[1], ("result", "fail")]
        ),
        Some(0.0),
        "{d}"
    );
    assert_eq!(
        value(
            &s,
            "lb_agent_check_results_total",
            &[
                ("vip", "192.0.2.10/32"),
                ("service", "git_ssh"),
                ("result", "timeout")
            ]
        ),
        Some(1.0),
        "{d}"
    );
    assert_eq!(
        value(&s, "lb_agent_check_duration_seconds_count", &www),
        Some(2.0),
        "{d}"
    );
    assert_eq!(
        value(
            &s,
            "lb_agent_check_duration_seconds_bucket",
            &[www[0], www[1], ("le", "0.0005")]
        ),
        Some(1.0),
        "{d}"
    );
    assert!(
        !d.contains("gone"),
        "a service absent from the snapshot is exported:\n{d}"
    );

    // A service leaving the snapshot takes its series with it.
    let mut next = snapshot();
    next.vips[0].services.retain(|s| s.name != "git_ssh");
    tx.send_replace(next);
    let d = describe(&parse_exposition(&m.encode().unwrap()).unwrap());
    assert!(!d.contains("git_ssh"), "{d}");
    tx.send_replace(snapshot());
    let s = parse_exposition(&m.encode().unwrap()).unwrap();
    assert_eq!(
        value(
            &s,
            "lb_agent_check_duration_seconds_count",
            &[("vip", "192.0.2.10/32"), ("service", "git_ssh")]
        ),
        None
    );
}

/// [`snapshot`] with every optional part of the exposition present:
/// reloads of no known reason, a wanted reload, AZ routing with a
/// spilling zone, a second VIP of unknown export, check observations
/// (one of a service the snapshot no longer has).
fn rich_metrics() -> Metrics {
    let mut s = snapshot();
    s.drained = true;
    s.haproxy.reloads = 5;
    s.haproxy.pending_reload = vec!["new frontend".into()];
    s.haproxy.reload_attempts = 2;
    s.haproxy.next_reload_at = Some(Timestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_030)));
    let zone = |zone: &str, servers, healthy, reason: Option<&str>| crate::plan::az::ZoneRoute {
        zone: zone.into(),
        servers,
        healthy,
        evacuated: false,
        to: vec![zone.into()],
        reason: reason.map(Into::into),
    };
    s.haproxy.az_routing = vec![crate::plan::az::PoolRoutes {
        pool: "www".into(),
        zones: vec![
            zone("az1", 2, 2, None),
            zone("az2", 1, 0, Some("az2 has no usable server")),
        ],
    }];
    s.vips.push(VipStatus {
        address: "2001:db8:10::10/128".into(),
        announced: false,
        exported: None,
        services: vec![ServiceStatus {
            name: "www_https".into(),
            healthy: true,
            ..Default::default()
        }],
        ..Default::default()
    });
    // The receiver keeps the last value after the sender is gone.
    let (_, rx) = watch::channel(s);
    let m = Metrics::new(rx);
    m.observe_apply(0.02);
    m.observe_apply(3.0);
    for (vip, service, outcome, ms) in [
        ("192.0.2.10/32", "www_https", CheckOutcome::Ok, 1),
        ("192.0.2.10/32", "www_https", CheckOutcome::Fail, 40),
        ("192.0.2.10/32", "git_ssh", CheckOutcome::Timeout, 500),
        ("2001:db8:10::10/128", "www_https", CheckOutcome::Ok, 2),
        ("198.51.100.1/32", "gone", CheckOutcome::Fail, 1),
    ] {
        m.observe_check(vip, service, outcome, Duration::from_millis(ms));
    }
    m
}

/// The whole exposition of [`rich_metrics`], byte for byte: families,
/// order, HELP and UNIT lines. `UPDATE_GOLDEN=1 cargo test --lib metrics`
/// rewrites the golden file; review its diff like any other change.
#[test]
fn the_exposition_is_the_golden_file() {
    let text = rich_metrics().encode().unwrap();
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden/metrics.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", golden.display()));
    assert_eq!(
        text,
        want,
        "{} differs from the exposition",
        golden.display()
    );
}

#[test]
fn label_values_are_escaped() {
    let mut snap = snapshot();
    snap.vips[0].address = "we\"ird\\vip\n".into();
    let (_tx, rx) = watch::channel(snap);
    let s = parse_exposition(&Metrics::new(rx).encode().unwrap()).unwrap();
    assert_eq!(
        value(&s, "lb_agent_vip_announced", &[("vip", "we\"ird\\vip\n")]),
        Some(1.0)
    );
}

#[test]
fn the_parser_rejects_garbage() {
    assert!(parse_exposition("lb_agent_x 1\n").is_err(), "no EOF");
    assert!(parse_exposition("lb_agent_x\n# EOF\n").is_err());
    assert!(parse_exposition("lb_agent_x{a=\"b} 1\n# EOF\n").is_err());
    assert!(parse_exposition("lb_agent_x one\n# EOF\n").is_err());
    assert!(parse_exposition("# EOF\nlb_agent_x 1\n").is_err());
    assert_eq!(
        parse_exposition("lb_agent_x{a=\"b\",c=\"d\"} 1.5\n# EOF\n").unwrap()[0]
            .labels
            .len(),
        2
    );
}
