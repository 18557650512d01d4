//! Scope: which changes are server-scoped (table), and that the scoped
//! plan of such a change equals the full plan (property, over sequences of
//! changes on the simulator, AZ-routed and sticky pools included).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::config::SlotPolicy;
use crate::model::observed::ObservedServers;
use crate::model::{AzSection, Balance, Mode, Server, Stickiness};
use crate::plan::sim::SimHaproxy;
use crate::plan::{plan, plan_scoped, Command, PlanOptions, Structure};

const OPTS: PlanOptions = PlanOptions {
    max_runtime_ops: 10_000,
};

fn name(s: &str) -> Name {
    Name::try_new(s).unwrap()
}

fn pool(n: &str, balance: &str, servers: BTreeMap<Name, Server>) -> Pool {
    Pool {
        name: name(n),
        mode: Mode::Tcp,
        balance: Balance(balance.into()),
        check: None,
        servers,
        routing: Default::default(),
        stickiness: Default::default(),
        logic: Vec::new(),
        options: Default::default(),
    }
}

fn zones() -> AzSection {
    AzSection {
        zones: vec![name("az1"), name("az2")],
        evacuated: BTreeSet::new(),
        client_subnets: BTreeMap::new(),
    }
}

/// Three pools of one server each: `a`, `b`, and `c` routed by AZ.
fn base() -> DesiredState {
    let mut d = DesiredState::empty("blue");
    d.availability_zones = Some(zones());
    for n in ["a", "b", "c"] {
        let s =
            crate::plan::tests::server("s1", "10.0.0.1", 80, 10, crate::model::ServerState::Ready);
        let mut p = pool(n, "roundrobin", BTreeMap::from([(s.name.clone(), s)]));
        if n == "c" {
            p.routing = Routing::Az;
            for s in p.servers.values_mut() {
                s.az = Some("az1".into());
            }
        }
        d.pools.insert(p.name.clone(), Arc::new(p));
    }
    d
}

fn with_pool(d: &DesiredState, n: &str, f: impl FnOnce(&mut Pool)) -> DesiredState {
    let mut d = d.clone();
    f(Arc::make_mut(d.pools.get_mut(n).unwrap()));
    d
}

#[test]
fn server_changes_are_scoped_to_their_pools_and_nothing_else_is() {
    let d = base();
    let weight = |p: &mut Pool| p.servers.values_mut().for_each(|s| s.weight = 77);
    let scoped: Vec<(&str, DesiredState, Option<Vec<&str>>)> = vec![
        ("nothing changed", d.clone(), Some(vec![])),
        (
            "a new revision alone",
            DesiredState {
                revision: 9,
                ..d.clone()
            },
            Some(vec![]),
        ),
        ("a weight in b", with_pool(&d, "b", weight), Some(vec!["b"])),
        (
            "a server of routed c",
            with_pool(&d, "c", weight),
            Some(vec!["c"]),
        ),
        (
            "an equal copy of a",
            with_pool(&d, "a", |_| {}),
            Some(vec![]),
        ),
        (
            "a balance",
            with_pool(&d, "a", |p| p.balance = Balance("leastconn".into())),
            None,
        ),
        (
            "a stickiness",
            with_pool(&d, "a", |p| p.stickiness = Stickiness::Source),
            None,
        ),
        (
            "a pool's logic",
            with_pool(&d, "a", |p| p.logic.push(name("l"))),
            None,
        ),
        (
            "a pool removed",
            {
                let mut e = d.clone();
                e.pools.remove("a");
                e
            },
            None,
        ),
        (
            "the zones",
            {
                let mut e = d.clone();
                e.availability_zones
                    .as_mut()
                    .unwrap()
                    .evacuated
                    .insert(name("az1"));
                e
            },
            None,
        ),
        (
            "the group",
            DesiredState {
                group: "green".into(),
                ..d.clone()
            },
            None,
        ),
        (
            "a VIP",
            {
                let mut e = d.clone();
                e.vips.push(crate::model::Vip {
                    address: "192.0.2.1/32".parse().unwrap(),
                });
                e
            },
            None,
        ),
    ];
    for (what, next, want) in scoped {
        let got = server_scope(&d, &next);
        let want: Option<BTreeSet<Name>> = want.map(|v| v.into_iter().map(name).collect());
        assert_eq!(got, want, "{what}");
        if got.is_some() {
            assert_eq!(
                Structure::of(&d, "g"),
                Structure::of(&next, "g"),
                "{what}: a scoped change keeps the structure"
            );
        }
    }
}

#[test]
fn a_routed_pool_scopes_to_its_spill_and_zone_backends() {
    let d = base();
    let got = scope_backends(&d, &BTreeSet::from([name("c"), name("a")]));
    assert_eq!(got, ["a", "c", "c:az1", "c:az2"]);
}

/// Only the named backends of an observation (what `show servers state
/// <backend>` for each of them returns).
fn only(o: &ObservedServers, backends: &[String]) -> ObservedServers {
    ObservedServers {
        backends: o
            .backends
            .iter()
            .filter(|(k, _)| backends.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A state with pools as given (pool `i` routed when `routed`, source-sticky
/// when `sticky`), servers spread over the two zones.
fn state(pools: &[(bool, bool, bool, BTreeMap<Name, Server>)]) -> DesiredState {
    let mut d = DesiredState::empty("blue");
    d.availability_zones = Some(zones());
    for (i, (dynamic, routed, sticky, servers)) in pools.iter().enumerate() {
        let balance = if *dynamic { "roundrobin" } else { "static-rr" };
        let mut p = pool(&format!("pool{i}"), balance, servers.clone());
        for (k, s) in p.servers.values_mut().enumerate() {
            s.az = Some(if k % 2 == 0 { "az1" } else { "az2" }.into());
        }
        if *routed {
            p.routing = Routing::Az;
        }
        if *sticky {
            p.stickiness = Stickiness::Source;
        }
        d.pools.insert(p.name.clone(), Arc::new(p));
    }
    d
}

/// Per pool: dynamic balance, routed, sticky.
type Kinds = Vec<(bool, bool, bool)>;
/// Per step, per pool: its new servers, or unchanged.
type Steps = Vec<Vec<Option<BTreeMap<Name, Server>>>>;

fn arb_steps() -> impl Strategy<Value = (Kinds, Steps)> {
    (1..4usize).prop_flat_map(|n| {
        let kinds = proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), n);
        // Each step replaces the servers of some pools (None: unchanged).
        let step =
            proptest::collection::vec(proptest::option::of(crate::plan::tests::arb_servers()), n);
        (kinds, proptest::collection::vec(step, 1..6))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Over a sequence of server changes, each applied to the simulated
    /// HAProxy: every change is server-scoped, keeps the structure, and its
    /// scoped plan, reading only the scoped backends, equals the full plan
    /// (but for best-effort cleanup left in pools outside the scope).
    #[test]
    fn the_scoped_plan_of_a_server_change_is_the_full_plan((kinds, steps) in arb_steps()) {
        let first: Vec<_> = kinds.iter().map(|&(d, r, s)| (d, r, s, BTreeMap::new())).collect();
        let mut prev = state(&first);
        let mut sim = SimHaproxy::load(&prev, SlotPolicy::Pow2);
        let st = Structure::of(&prev, "g");
        for step in steps {
            let mut next = prev.clone();
            next.revision += 1;
            for (i, servers) in step.into_iter().enumerate() {
                if let Some(servers) = servers {
                    let mut one = state(&[(kinds[i].0, kinds[i].1, kinds[i].2, servers)]);
                    let mut p = one.pools.pop_first().unwrap().1;
                    Arc::make_mut(&mut p).name = Name::try_new(&format!("pool{i}")).unwrap();
                    next.pools.insert(p.name.clone(), p);
                }
            }
            let scope = server_scope(&prev, &next);
            prop_assert!(scope.is_some(), "a server change is scoped");
            let scope = scope.unwrap();
            prop_assert_eq!(&Structure::of(&next, "g"), &st);
            let observed = sim.observe();
            let full = plan(&next, &st, Some(&st), &observed, OPTS);
            let seen = only(&observed, &scope_backends(&next, &scope));
            let scoped = plan_scoped(&next, &st, Some(&st), &seen, &scope, OPTS);
            prop_assert_eq!(&scoped.commands, &full.commands);
            prop_assert_eq!(&scoped.reload, &full.reload);
            // Best-effort cleanup left over in other pools waits for a full pass.
            let in_scope: Vec<&Command> = full.cleanup.iter().filter(|c| seen.backends.contains_key(c.backend())).collect();
            prop_assert_eq!(scoped.cleanup.iter().collect::<Vec<_>>(), in_scope);
            if full.reload.is_empty() {
                for c in full.commands.iter().chain(&full.cleanup) {
                    let _ = sim.apply(c);
                }
            } else {
                sim = SimHaproxy::load(&next, SlotPolicy::Pow2);
            }
            prop_assert!(plan(&next, &st, Some(&st), &sim.observe(), OPTS).is_converged());
            prev = next;
        }
    }
}
