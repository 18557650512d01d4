//! Issue 14, finding 3: the API may not reshape the host's routing through
//! VIPs. In a throwaway namespace with real interfaces (a veth towards a
//! "ToR" namespace, a routed prefix behind it, a VIP the agent owns on
//! `lo`), documents are validated by the same code the daemon's parser and
//! `lb-agent render` run: VIPs outside `[vip] allowed_prefixes`, shorter
//! than the cap, or overlapping the host's own addresses, subnets, peers
//! and routes are refused with their JSON path; the agent's own VIP is not
//! a conflict with itself. `render` is also run as the real binary inside
//! the namespace.

mod common;
use common::netns;

use std::path::Path;

use lb_agent::config;
use lb_agent::config::builder::AgentToml;
use lb_agent::vip::HostValidator;
use netns::{skip_without_netns_loudly, veth, Netns};
use serde_json::json;

/// An LB host: eth0 10.77.1.2/24 towards the ToR (10.77.1.1), backends in
/// 10.77.9.0/24 behind it, 192.0.2.10/32 on lo added by the agent earlier.
fn lab() -> (Netns, Netns) {
    let lb = Netns::new("vpol-lb");
    let tor = Netns::new("vpol-tor");
    veth(&lb, "eth0", &tor, "tor-lb");
    lb.ip(&["addr", "add", "10.77.1.2/24", "dev", "eth0"]);
    tor.ip(&["addr", "add", "10.77.1.1/24", "dev", "tor-lb"]);
    lb.ip(&["route", "add", "10.77.9.0/24", "via", "10.77.1.1"]);
    lb.ip(&["addr", "add", "192.0.2.10/32", "dev", "lo"]);
    (lb, tor)
}

fn agent_toml(dir: &Path) -> std::path::PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    // What VipManager writes after adding 192.0.2.10/32 to lo.
    std::fs::write(
        state.join("owned-vips.json"),
        r#"{"version": 1, "owned": {"lo": ["192.0.2.10/32"]}}"#,
    )
    .unwrap();
    let p = dir.join("agent.toml");
    let allowed = ["192.0.2.0/24", "10.77.0.0/16", "198.51.100.0/24"].map(|n| n.parse().unwrap());
    AgentToml::new()
        .group("blue")
        .state_dir(&state)
        .data_dir(&dir.join("data"))
        .vip_interface("lo")
        .allowed_prefixes(&allowed)
        .write(&p)
        .unwrap();
    p
}

fn doc(vips: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schema": 1, "revision": 3, "group": "blue",
        "vips": vips.iter().map(|v| json!({"address": v})).collect::<Vec<_>>(),
        "frontends": [{"name": "web", "bind": ["192.0.2.10:80"], "mode": "tcp", "default_pool": "p"}],
        "pools": [{"name": "p", "mode": "tcp", "servers": [{"name": "a", "address": "10.77.9.5", "port": 80}]}]
    }))
    .unwrap()
}

#[test]
fn vips_overlapping_the_host_or_outside_the_allow_list_are_refused_in_a_namespace() {
    if skip_without_netns_loudly(
        "vips_overlapping_the_host_or_outside_the_allow_list_are_refused_in_a_namespace",
    ) {
        return;
    }
    let (lb, _tor) = lab();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::load(&agent_toml(dir.path())).unwrap();
    let validator = HostValidator::new(&cfg);
    let parser = lb_agent::daemon::parser(&cfg);

    // (VIPs, expected error prefixes; empty = accepted).
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // The agent's own VIP, and a /24 around it: ours, not the host's.
        (vec!["192.0.2.10/32"], vec![]),
        (vec!["192.0.2.0/24"], vec![]),
        (vec!["192.0.2.10/32", "198.51.100.10/32"], vec![]),
        // The ToR peer: the host would lose its uplink.
        (vec!["192.0.2.10/32", "10.77.1.1/32"], vec![
            "vips[1].address: VIP 10.77.1.1/32 overlaps this host's own networks: it overlaps 10.77.1.0/24, the subnet of eth0",
        ]),
        // The host's own address.
        (vec!["192.0.2.10/32", "10.77.1.2/32"], vec![
            "vips[1].address: VIP 10.77.1.2/32 overlaps this host's own networks: it contains 10.77.1.2, an address of eth0",
        ]),
        // The backends' prefix, routed via the ToR.
        (vec!["192.0.2.10/32", "10.77.9.0/24"], vec![
            "vips[1].address: VIP 10.77.9.0/24 overlaps this host's own networks: it contains the route to 10.77.9.0/24 via 10.77.1.1 dev eth0",
        ]),
        // Outside the allow-list.
        (vec!["192.0.2.10/32", "203.0.113.10/32"], vec![
            "vips[1].address: VIP 203.0.113.10/32 is outside [vip] allowed_prefixes (192.0.2.0/24, 10.77.0.0/16, 198.51.100.0/24)",
        ]),
        // Too short (and covering the host's whole network).
        (vec!["192.0.2.10/32", "10.77.0.0/16"], vec![
            "vips[1].address: VIP 10.77.0.0/16 is shorter than /24",
            "vips[1].address: VIP 10.77.0.0/16 overlaps this host's own networks: it contains 10.77.1.2, an address of eth0",
        ]),
        // Loopback: never without an explicit entry in the range.
        (vec!["192.0.2.10/32", "127.0.0.5/32"], vec![
            "vips[1].address: VIP 127.0.0.5/32 is outside [vip] allowed_prefixes",
        ]),
    ];
    let results = lb.run_inside(|| {
        cases
            .iter()
            .map(|(vips, _)| {
                let body = doc(vips);
                let direct = validator
                    .parse(&body)
                    .map(|_| ())
                    .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>());
                let via_daemon = parser(&body).map(|_| ());
                (direct, via_daemon)
            })
            .collect::<Vec<_>>()
    });
    let mut failures = Vec::new();
    for ((vips, want), (direct, via_daemon)) in cases.iter().zip(results) {
        let got = direct.clone().err().unwrap_or_default();
        let ok = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.starts_with(w));
        if !ok {
            failures.push(format!("{vips:?}:\n  want {want:#?}\n  got  {got:#?}"));
        }
        // The daemon's parser refuses exactly the same documents.
        if direct.is_ok() != via_daemon.is_ok() {
            failures.push(format!("{vips:?}: daemon parser gave {via_daemon:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn render_inside_the_namespace_refuses_a_peer_vip_and_renders_a_good_document() {
    if skip_without_netns_loudly(
        "render_inside_the_namespace_refuses_a_peer_vip_and_renders_a_good_document",
    ) {
        return;
    }
    let (lb, _tor) = lab();
    let dir = tempfile::tempdir().unwrap();
    let toml = agent_toml(dir.path());
    let bad = dir.path().join("bad.json");
    let good = dir.path().join("good.json");
    std::fs::write(&bad, doc(&["192.0.2.10/32", "10.77.1.1/32"])).unwrap();
    std::fs::write(&good, doc(&["192.0.2.10/32"])).unwrap();
    let render = |file: &Path, extra: &[&str]| {
        lb.command(env!("CARGO_BIN_EXE_lb-agent"))
            .arg("render")
            .arg("--config")
            .arg(&toml)
            .arg("--desired")
            .arg(file)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = render(&bad, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("vips[1].address: VIP 10.77.1.1/32 overlaps this host's own networks"),
        "{err}"
    );
    let out = render(&good, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.0.2.10:80"));
    // For another host's document: only the agent.toml rules apply.
    let out = render(&bad, &["--skip-host-check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
