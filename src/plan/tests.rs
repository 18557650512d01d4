//! Planner tests: examples for each rule, and properties over random states.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;

use super::sim::SimHaproxy;
use super::*;
use crate::config::SlotPolicy;
use crate::model::{Balance, HealthKind, Mode, Name, Pool, PoolCheck};

const OPTS: PlanOptions = PlanOptions {
    max_runtime_ops: 10_000,
};

pub(super) fn server(name: &str, addr: &str, port: u16, weight: u16, state: ServerState) -> Server {
    Server {
        name: Name::try_new(name).unwrap(),
        address: addr.parse().unwrap(),
        port,
        weight,
        state,
        az: None,
    }
}

fn state_with(pools: Vec<(&str, &str, Vec<Server>)>) -> DesiredState {
    let mut d = DesiredState::empty("blue");
    for (name, balance, servers) in pools {
        let pool = Pool {
            name: Name::try_new(name).unwrap(),
            mode: Mode::Http,
            balance: Balance(balance.into()),
            check: Some(PoolCheck {
                kind: HealthKind::Http,
                path: None,
                host: None,
                interval: None,
                rise: None,
                fall: None,
            }),
            servers: servers.into_iter().map(|s| (s.name.clone(), s)).collect(),
            routing: Default::default(),
            stickiness: Default::default(),
            logic: Vec::new(),
            options: Default::default(),
        };
        d.pools.insert(pool.name.clone(), Arc::new(pool));
    }
    d
}

fn plan_for(d: &DesiredState, sim: &SimHaproxy) -> Plan {
    let st = Structure::of(d, "g");
    plan(d, &st, Some(&st), &sim.observe(), OPTS)
}

/// Applies a plan's commands and cleanup to the simulator; commands must all succeed.
fn apply(sim: &mut SimHaproxy, p: &Plan) {
    for c in &p.commands {
        sim.apply(c).unwrap_or_else(|e| panic!("{c}: {e}"));
    }
    for c in &p.cleanup {
        let _ = sim.apply(c);
    }
}

/// The logical state the simulator serves for `d`: every desired server hosted
/// with its address, effective state and weight; nothing else in service.
fn assert_serves(d: &DesiredState, sim: &SimHaproxy) {
    for pool in d.pools.values() {
        let be = &sim.backends[pool.name.as_str()];
        let mut hosted = 0;
        for o in &be.servers {
            let want = pool.servers.values().find(|s| {
                s.address == o.addr
                    && s.port == o.port
                    && (s.name.as_str() == o.name || is_slot_name(&o.name))
            });
            match want {
                Some(s) if s.state != ServerState::Maint => {
                    assert!(!o.in_maint(), "{} hosting {} is in maint", o.name, s.name);
                    match s.state {
                        ServerState::Ready => {
                            assert!(!o.in_drain() && o.uweight == s.weight, "{o:?} vs {s:?}");
                        }
                        _ => assert!(o.in_drain() || o.uweight == 0, "{o:?} should drain"),
                    }
                    hosted += 1;
                }
                Some(_) => assert!(o.in_maint(), "{o:?} should be in maint"),
                None => assert!(
                    o.in_maint(),
                    "{} serves {}:{} which is not desired",
                    o.name,
                    o.addr,
                    o.port
                ),
            }
        }
        let active = pool
            .servers
            .values()
            .filter(|s| s.state != ServerState::Maint)
            .count();
        assert_eq!(hosted, active, "pool {}", pool.name);
    }
}

#[test]
fn plan_of_loaded_state_is_empty() {
    let d = state_with(vec![(
        "www",
        "roundrobin",
        vec![
            server("a", "10.0.0.1", 80, 100, ServerState::Ready),
            server("b", "10.0.0.2", 80, 50, ServerState::Drain),
            server("c", "10.0.0.3", 80, 1, ServerState::Maint),
        ],
    )]);
    let sim = SimHaproxy::load(&d, SlotPolicy::Pow2);
    assert_eq!(plan_for(&d, &sim), Plan::default());
}

#[test]
fn weight_state_and_address_are_runtime() {
    let before = state_with(vec![(
        "www",
        "static-rr",
        vec![server("a", "10.0.0.1", 80, 100, ServerState::Ready)],
    )]);
    let after = state_with(vec![(
        "www",
        "static-rr",
        vec![server("a", "10.0.0.9", 81, 7, ServerState::Drain)],
    )]);
    let mut sim = SimHaproxy::load(&before, SlotPolicy::Pow2);
    let p = plan_for(&after, &sim);
    assert!(p.reload.is_empty(), "{:?}", p.reload);
    let lines: Vec<String> = p.commands.iter().map(|c| c.to_line()).collect();
    assert_eq!(
        lines,
        vec![
            "set server www/a addr 10.0.0.9 port 81",
            "set server www/a state drain"
        ]
    );
    apply(&mut sim, &p);
    assert!(plan_for(&after, &sim).is_converged());
}

#[test]
fn new_server_takes_a_free_slot_in_order() {
    let before = state_with(vec![(
        "www",
        "static-rr",
        vec![server("a", "10.0.0.1", 80, 100, ServerState::Ready)],
    )]);
    let after = state_with(vec![(
        "www",
        "static-rr",
        vec![
            server("a", "10.0.0.1", 80, 100, ServerState::Ready),
            server("b", "10.0.0.2", 80, 3, ServerState::Ready),
        ],
    )]);
    let mut sim = SimHaproxy::load(&before, SlotPolicy::Pow2);
    let p = plan_for(&after, &sim);
    let lines: Vec<String> = p.commands.iter().map(|c| c.to_line()).collect();
    assert_eq!(
        lines,
        vec![
            "set server www/_slot1 addr 10.0.0.2 port 80",
            "set server www/_slot1 weight 3",
            "set server www/_slot1 state ready"
        ]
    );
    apply(&mut sim, &p);
    assert!(plan_for(&after, &sim).is_converged());
    // Removing it again frees the slot; nothing else changes.
    let p = plan_for(&before, &sim);
    let lines: Vec<String> = p.commands.iter().map(|c| c.to_line()).collect();
    assert_eq!(lines, vec!["set server www/_slot1 state maint"]);
}

#[test]
fn static_pool_without_slots_needs_reload_dynamic_pool_adds() {
    let one = vec![server("a", "10.0.0.1", 80, 1, ServerState::Ready)];
    let two = vec![
        server("a", "10.0.0.1", 80, 1, ServerState::Ready),
        server("b", "10.0.0.2", 80, 1, ServerState::Ready),
    ];
    for (balance, reload) in [("static-rr", true), ("roundrobin", false)] {
        let before = state_with(vec![("p", balance, one.clone())]);
        let after = state_with(vec![("p", balance, two.clone())]);
        let mut sim = SimHaproxy::load(&before, SlotPolicy::Exact);
        let p = plan_for(&after, &sim);
        assert_eq!(!p.reload.is_empty(), reload, "{balance}: {p:?}");
        if !reload {
            let lines: Vec<String> = p.commands.iter().map(|c| c.to_line()).collect();
            assert_eq!(
                lines,
                vec![
                    "add server p/b 10.0.0.2:80 weight 1 check",
                    "enable health p/b",
                    "set server p/b state ready"
                ]
            );
            apply(&mut sim, &p);
            assert!(plan_for(&after, &sim).is_converged());
            // Removal: maint first, then del server as cleanup on the next pass.
            let p1 = plan_for(&before, &sim);
            assert_eq!(p1.commands.len(), 1);
            apply(&mut sim, &p1);
            let p2 = plan_for(&before, &sim);
            assert!(p2.is_converged());
            assert_eq!(p2.cleanup.len(), 1);
            apply(&mut sim, &p2);
            assert_eq!(sim.backends["p"].servers.len(), 1);
        }
    }
}

#[test]
fn structure_changes_need_reload_with_reason() {
    let a = state_with(vec![("www", "roundrobin", vec![])]);
    let mut b = a.clone();
    Arc::make_mut(b.pools.get_mut("www").unwrap()).balance = Balance("leastconn".into());
    let st_a = Structure::of(&a, "g");
    let st_b = Structure::of(&b, "g");
    let sim = SimHaproxy::load(&a, SlotPolicy::Pow2);
    let p = plan(&b, &st_b, Some(&st_a), &sim.observe(), OPTS);
    assert_eq!(texts(&p.reload), vec!["pool www changed"]);
    let p = plan(&b, &st_b, None, &sim.observe(), OPTS);
    assert_eq!(texts(&p.reload), vec!["running configuration unknown"]);
    assert_eq!(
        texts(&Structure::of(&a, "g2").diff(&st_a)),
        vec!["templates or global settings changed"]
    );
}

#[test]
fn too_many_runtime_ops_reload_instead() {
    let servers: Vec<Server> = (0..10)
        .map(|i| {
            server(
                &format!("s{i}"),
                &format!("10.0.0.{i}"),
                80,
                1,
                ServerState::Ready,
            )
        })
        .collect();
    let before = state_with(vec![("p", "roundrobin", servers.clone())]);
    let after = state_with(vec![(
        "p",
        "roundrobin",
        servers
            .iter()
            .map(|s| Server {
                weight: 9,
                ..s.clone()
            })
            .collect(),
    )]);
    let sim = SimHaproxy::load(&before, SlotPolicy::Pow2);
    let st = Structure::of(&after, "g");
    let p = plan(
        &after,
        &st,
        Some(&st),
        &sim.observe(),
        PlanOptions { max_runtime_ops: 5 },
    );
    assert!(p.commands.is_empty());
    assert_eq!(
        texts(&p.reload),
        vec!["10 runtime commands exceed max_runtime_ops 5"]
    );
}

#[test]
fn agent_restart_finds_servers_in_slots() {
    // A server placed in a slot by a previous agent process is found again by
    // its address, not moved to another slot.
    let before = state_with(vec![("www", "static-rr", vec![])]);
    let after = state_with(vec![(
        "www",
        "static-rr",
        vec![server("z", "10.0.0.5", 80, 1, ServerState::Ready)],
    )]);
    let mut sim = SimHaproxy::load(&before, SlotPolicy::Pow2);
    // Fill _slot3 behind the planner's back, as an earlier run could have.
    for c in [
        Command::SetAddr {
            backend: "www".into(),
            server: "_slot3".into(),
            addr: "10.0.0.5".parse().unwrap(),
            port: 80,
        },
        Command::SetState {
            backend: "www".into(),
            server: "_slot3".into(),
            state: ServerState::Ready,
        },
    ] {
        sim.apply(&c).unwrap();
    }
    assert!(plan_for(&after, &sim).is_converged());
}

// ---------------------------------------------------------------------------
// Properties.

fn arb_state() -> impl Strategy<Value = ServerState> {
    prop_oneof![
        Just(ServerState::Ready),
        Just(ServerState::Drain),
        Just(ServerState::Maint)
    ]
}

/// Servers drawn from a small universe so that two states overlap.
pub(super) fn arb_servers() -> impl Strategy<Value = BTreeMap<Name, Server>> {
    proptest::collection::btree_map(0u8..12, (0u8..3, 0u16..3, 0u16..=256, arb_state()), 0..9)
        .prop_map(|m| {
            m.into_iter()
                .map(|(i, (a, port, w, st))| {
                    let name = Name::try_new(&format!("srv{i}")).unwrap();
                    // Address depends on the name plus a variant, so addresses move sometimes.
                    let address: IpAddr = format!("10.{a}.0.{i}").parse().unwrap();
                    (
                        name.clone(),
                        Server {
                            name,
                            address,
                            port: 8000 + port,
                            weight: w,
                            state: st,
                            az: None,
                        },
                    )
                })
                .collect()
        })
}

fn arb_pair() -> impl Strategy<Value = (DesiredState, DesiredState, bool)> {
    let pools = proptest::collection::vec((any::<bool>(), arb_servers(), arb_servers()), 1..4);
    (pools, any::<bool>()).prop_map(|(pools, pow2)| {
        let mut a = DesiredState::empty("blue");
        let mut b = DesiredState::empty("blue");
        for (i, (dynamic, sa, sb)) in pools.into_iter().enumerate() {
            let name = Name::try_new(&format!("pool{i}")).unwrap();
            let balance = Balance(if dynamic { "roundrobin" } else { "static-rr" }.into());
            let mk = |servers| Pool {
                name: name.clone(),
                mode: Mode::Tcp,
                balance: balance.clone(),
                check: None,
                servers,
                routing: Default::default(),
                stickiness: Default::default(),
                logic: Vec::new(),
                options: Default::default(),
            };
            a.pools.insert(name.clone(), Arc::new(mk(sa)));
            b.pools.insert(name.clone(), Arc::new(mk(sb)));
        }
        (a, b, pow2)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// plan(d, d) is empty: a freshly loaded config needs nothing.
    #[test]
    fn plan_of_self_is_empty((a, _b, pow2) in arb_pair()) {
        let policy = if pow2 { SlotPolicy::Pow2 } else { SlotPolicy::Exact };
        let sim = SimHaproxy::load(&a, policy);
        let p = plan_for(&a, &sim);
        prop_assert!(p.is_converged() && p.cleanup.is_empty(), "{:?}", p);
    }

    /// Applying plan(b, observed(a)) to the simulator yields b (or a reload
    /// that is justified), and the next plan is empty.
    #[test]
    fn applying_the_plan_converges((a, b, pow2) in arb_pair()) {
        let policy = if pow2 { SlotPolicy::Pow2 } else { SlotPolicy::Exact };
        let mut sim = SimHaproxy::load(&a, policy);
        let p = plan_for(&b, &sim);
        // Runtime commands must always succeed on HAProxy.
        apply(&mut sim, &p);
        if p.reload.is_empty() {
            assert_serves(&b, &sim);
            let again = plan_for(&b, &sim);
            prop_assert!(again.is_converged(), "second plan not empty: {:?}", again);
            // Idempotent from there: a third pass changes nothing either.
            apply(&mut sim, &again);
            prop_assert!(plan_for(&b, &sim).is_converged());
        } else {
            for r in &p.reload {
                prop_assert!(matches!(r, crate::plan::ReloadReason::NoFreeSlot { .. }), "unexpected reload reason {r}");
            }
            prop_assert!(!pow2 || p.reload.iter().all(|r| r.to_string().contains("static-rr")));
            // After the reload the new config serves b with nothing to do.
            let sim = SimHaproxy::load(&b, policy);
            assert_serves(&b, &sim);
            prop_assert!(plan_for(&b, &sim).is_converged());
        }
    }

    /// The plan is deterministic within one process (`tests/determinism.rs`
    /// compares two processes, each with its own hash seeds).
    #[test]
    fn plan_is_deterministic((a, b, pow2) in arb_pair()) {
        let policy = if pow2 { SlotPolicy::Pow2 } else { SlotPolicy::Exact };
        let sim = SimHaproxy::load(&a, policy);
        prop_assert_eq!(plan_for(&b, &sim), plan_for(&b, &sim));
    }
}

fn texts(r: &[crate::plan::ReloadReason]) -> Vec<String> {
    r.iter().map(|r| r.to_string()).collect()
}

/// A server added at runtime carries the pool's `slowstart` next to its
/// check keywords (a dynamic server has no `default-server`; HAProxy 2.6's
/// `add server` accepts `slowstart`).
#[test]
fn added_servers_carry_slowstart() {
    let mut d = state_with(vec![("p", "roundrobin", vec![])]);
    let p = Arc::make_mut(d.pools.values_mut().next().unwrap());
    assert_eq!(super::server_keywords(p).as_deref(), Some("check"));
    p.options.slowstart = Some(std::time::Duration::from_secs(10));
    assert_eq!(
        super::server_keywords(p).as_deref(),
        Some("check slowstart 10000ms")
    );
    p.check = None;
    assert_eq!(
        super::server_keywords(p).as_deref(),
        Some("slowstart 10000ms")
    );
}
