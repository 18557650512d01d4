//! AZ routing: the backends a routed pool becomes, and that everything the
//! issue wants at runtime (health aside, which HAProxy does itself) plans to
//! runtime commands on the simulator with no reload.

use std::sync::Arc;

use super::*;
use crate::config::SlotPolicy;
use crate::model::validate::{parse_document, ValidateContext};
use crate::plan::sim::SimHaproxy;
use crate::plan::{plan, PlanOptions, Structure};

const OPTS: PlanOptions = PlanOptions {
    max_runtime_ops: 10_000,
};

fn doc(evacuated: &[&str], clients: serde_json::Value, servers: serde_json::Value) -> DesiredState {
    let body = serde_json::json!({
        "schema": 1, "revision": 1, "group": "blue",
        "availability_zones": {"zones": ["az1", "az2", "az3"], "evacuated": evacuated,
                               "client_subnets": clients},
        "vips": [{"address": "192.0.2.10/32"}],
        "frontends": [{"name": "f", "bind": ["192.0.2.10:80"], "mode": "http", "default_pool": "www"}],
        "pools": [{"name": "www", "mode": "http", "routing": "az", "stickiness": "source",
                   "check": {"type": "http"}, "servers": servers}]
    });
    parse_document(
        body.to_string().as_bytes(),
        &ValidateContext {
            group: "blue".into(),
        },
    )
    .unwrap()
}

fn six() -> serde_json::Value {
    serde_json::json!([
        {"name": "a1", "address": "10.1.0.1", "port": 80, "az": "az1"},
        {"name": "a2", "address": "10.1.0.2", "port": 80, "az": "az1"},
        {"name": "b1", "address": "10.2.0.1", "port": 80, "az": "az2"},
        {"name": "b2", "address": "10.2.0.2", "port": 80, "az": "az2"},
        {"name": "c1", "address": "10.3.0.1", "port": 80, "az": "az3"},
        {"name": "c2", "address": "10.3.0.2", "port": 80, "az": "az3"}
    ])
}

fn clients() -> serde_json::Value {
    serde_json::json!({"10.101.0.0/16": "az1", "10.102.0.0/16": "az2"})
}

/// Plans `to` against a HAProxy that loaded `from`; returns the plan after
/// checking that applying it converges (a second plan is empty).
fn runtime_only(from: &DesiredState, to: &DesiredState) -> Vec<String> {
    let mut sim = SimHaproxy::load(from, SlotPolicy::Pow2);
    let loaded = Structure::of(from, "g");
    let next = Structure::of(to, "g");
    let p = plan(to, &next, Some(&loaded), &sim.observe(), OPTS);
    assert!(p.reload.is_empty(), "needs a reload: {:?}", p.reload);
    for c in &p.commands {
        sim.apply(c).unwrap_or_else(|e| panic!("{c}: {e}"));
    }
    let again = plan(to, &next, Some(&next), &sim.observe(), OPTS);
    assert!(again.is_converged(), "not converged: {:?}", again.commands);
    p.commands.iter().map(|c| c.to_string()).collect()
}

#[test]
fn a_routed_pool_is_a_spill_backend_and_one_per_zone() {
    let d = doc(&[], clients(), six());
    let b = backends(&d);
    let names: Vec<&str> = b.iter().map(|b| b.pool.name.as_str()).collect();
    assert_eq!(names, ["www", "www:az1", "www:az2", "www:az3"]);
    assert_eq!(b[0].pool.servers.len(), 6);
    for (i, z) in ["a", "b", "c"].iter().enumerate() {
        let names: Vec<&str> = b[i + 1].pool.servers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, [format!("{z}1"), format!("{z}2")]);
    }
}

#[test]
fn evacuation_is_maint_in_every_backend_and_only_runtime() {
    let from = doc(&[], clients(), six());
    let to = doc(&["az1"], clients(), six());
    let cmds = runtime_only(&from, &to);
    assert_eq!(
        cmds,
        [
            "set server www/a1 state maint",
            "set server www/a2 state maint",
            "set server www:az1/a1 state maint",
            "set server www:az1/a2 state maint",
        ]
    );
    // And back.
    let back = runtime_only(&to, &from);
    assert_eq!(back.len(), 4, "{back:?}");
    assert!(back.iter().all(|c| c.ends_with("state ready")), "{back:?}");
}

#[test]
fn client_map_entries_are_runtime_and_not_structure() {
    let a = doc(&[], clients(), six());
    let b = doc(
        &[],
        serde_json::json!({"10.101.0.0/16": "az3", "10.103.0.0/16": "az3"}),
        six(),
    );
    assert_eq!(Structure::of(&a, "g"), Structure::of(&b, "g"));
    let m = client_map(&b).unwrap();
    assert_eq!(m.name.as_str(), CLIENT_MAP);
    assert_eq!(m.entries["10.101.0.0/16"], "az3");
    assert_eq!(m.entries.len(), 2);
}

#[test]
fn adding_removing_and_moving_servers_between_zones_is_runtime() {
    let from = doc(&[], clients(), six());
    let mut grown = six();
    grown
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "c3", "address": "10.3.0.3", "port": 80, "az": "az3"}));
    let to = doc(&[], clients(), grown);
    let cmds = runtime_only(&from, &to);
    assert!(
        cmds.iter()
            .any(|c| c.starts_with("set server www:az3/_slot1 addr 10.3.0.3")),
        "{cmds:?}"
    );
    // The spill backend rescales az3's weights: three servers share its total.
    assert!(
        cmds.iter().any(|c| c == "set server www/c1 weight 171"),
        "{cmds:?}"
    );

    let mut moved = six();
    moved.as_array_mut().unwrap()[0]["az"] = "az2".into();
    let to = doc(&[], clients(), moved);
    let cmds = runtime_only(&from, &to);
    assert!(
        cmds.contains(&"set server www:az1/a1 state maint".to_string()),
        "{cmds:?}"
    );
    assert!(
        cmds.iter()
            .any(|c| c.starts_with("set server www:az2/_slot1 addr 10.1.0.1")),
        "{cmds:?}"
    );

    let mut shrunk = six();
    shrunk.as_array_mut().unwrap().remove(5);
    let cmds = runtime_only(&from, &doc(&[], clients(), shrunk));
    assert!(
        cmds.contains(&"set server www:az3/c2 state maint".to_string()),
        "{cmds:?}"
    );
    assert!(
        cmds.contains(&"set server www/c2 state maint".to_string()),
        "{cmds:?}"
    );
}

#[test]
fn what_needs_a_reload_does() {
    let base = doc(&[], clients(), six());
    let mut zones = base.clone();
    zones.availability_zones.as_mut().unwrap().zones.pop();
    let mut sticky = base.clone();
    Arc::make_mut(sticky.pools.get_mut("www").unwrap()).stickiness = Stickiness::Cookie;
    let mut plain = base.clone();
    Arc::make_mut(plain.pools.get_mut("www").unwrap()).routing = Routing::None;
    for (what, d) in [("zones", zones), ("stickiness", sticky), ("routing", plain)] {
        let diff = Structure::of(&base, "g").diff(&Structure::of(&d, "g"));
        assert!(!diff.is_empty(), "{what} changed without a reload");
    }
}

#[test]
fn spill_weights_give_every_zone_the_same_share() {
    let d = doc(
        &[],
        clients(),
        serde_json::json!([
            {"name": "a1", "address": "10.1.0.1", "port": 80, "az": "az1", "weight": 10},
            {"name": "b1", "address": "10.2.0.1", "port": 80, "az": "az2"},
            {"name": "b2", "address": "10.2.0.2", "port": 80, "az": "az2", "weight": 3},
            {"name": "c1", "address": "10.3.0.1", "port": 80, "az": "az3", "state": "drain"},
            {"name": "c2", "address": "10.3.0.2", "port": 80, "az": "az3"}
        ]),
    );
    let w = spill_weights(&d.pools["www"]);
    let share = |names: &[&str]| -> u32 { names.iter().map(|n| u32::from(w[*n])).sum() };
    let (a, b, c) = (share(&["a1"]), share(&["b1", "b2"]), share(&["c2"]));
    assert_eq!((a, b, c), (256, 256, 256), "{w:?}");
    assert_eq!(w["b2"], 192);
}

#[test]
fn frontend_rules_use_the_map_with_the_node_zone_as_default() {
    let d = doc(&[], clients(), six());
    let r = frontend_rules(&d, &d.pools["www"], "/m/c.map", Some("az2"));
    assert_eq!(r.len(), 3);
    assert_eq!(
        r[0],
        "use_backend www:az1 if { src,map_ip(/m/c.map,az2) -m str az1 } { nbsrv(www:az1) gt 0 }"
    );
    let unknown = frontend_rules(&d, &d.pools["www"], "/m/c.map", Some("az9"));
    assert!(unknown[0].contains("map_ip(/m/c.map,-)"), "{unknown:?}");
}

#[test]
fn destination_says_where_a_zone_goes() {
    let d = doc(&["az3"], clients(), six());
    let az = d.availability_zones.as_ref().unwrap();
    let n = |s: &str| Name::try_new(s).unwrap();
    let usable: BTreeMap<Name, usize> = [(n("az1"), 0), (n("az2"), 2), (n("az3"), 2)].into();
    assert_eq!(destination(az, &n("az2"), &usable), (vec![n("az2")], None));
    assert_eq!(
        destination(az, &n("az1"), &usable),
        (vec![n("az2")], Some("az1 has no usable server".into()))
    );
    let usable: BTreeMap<Name, usize> = [(n("az1"), 2), (n("az2"), 2), (n("az3"), 2)].into();
    assert_eq!(
        destination(az, &n("az3"), &usable),
        (vec![n("az1"), n("az2")], Some("az3 evacuated".into()))
    );
}
