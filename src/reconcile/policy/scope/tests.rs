//! The pass-scope decision and the deferred persist, as tables.

use std::sync::Arc;

use super::*;
use crate::model::validate::{parse_document, ValidateContext};

fn doc(revision: u64, weight: u16, balance: &str) -> DesiredState {
    let body = serde_json::json!({
        "schema": 1, "revision": revision, "group": "blue",
        "vips": [{"address": "192.0.2.10/32"}],
        "frontends": [{"name": "www", "bind": ["192.0.2.10:80"], "mode": "http", "default_pool": "p"}],
        "pools": [
            {"name": "p", "mode": "http", "balance": balance,
             "servers": [{"name": "s1", "address": "10.0.0.1", "port": 80, "weight": weight}]},
            {"name": "q", "mode": "http",
             "servers": [{"name": "s1", "address": "10.0.0.2", "port": 80}]}
        ]
    });
    parse_document(
        &serde_json::to_vec(&body).unwrap(),
        &ValidateContext {
            group: "blue".into(),
        },
    )
    .unwrap()
}

/// What, verified, next, fresh, reload pending, the scope.
type Case<'a> = (
    &'a str,
    Option<&'a DesiredState>,
    &'a DesiredState,
    bool,
    bool,
    PassScope,
);

#[test]
fn pass_scope_table() {
    let v = doc(1, 10, "roundrobin");
    let weight = doc(2, 20, "roundrobin");
    let balance = doc(2, 10, "leastconn");
    let same = doc(2, 10, "roundrobin");
    let p = || PassScope::Pools([Name::try_new("p").unwrap()].into());
    #[rustfmt::skip]
    let cases: Vec<Case<'_>> = vec![
        ("a weight after a converged pass", Some(&v), &weight, true, false, p()),
        ("no document (verify tick, operator, reload)", Some(&v), &weight, false, false, PassScope::Full(WhyFull::NotADocument)),
        ("a reload wanted or failing", Some(&v), &weight, true, true, PassScope::Full(WhyFull::ReloadPending)),
        ("the last pass did not converge", None, &weight, true, false, PassScope::Full(WhyFull::NotVerified)),
        ("a balance change", Some(&v), &balance, true, false, PassScope::Full(WhyFull::WiderChange)),
        ("a new revision of the same content", Some(&v), &same, true, false, PassScope::Pools(Default::default())),
    ];
    for (what, verified, next, fresh, reload_pending, want) in cases {
        let got = pass_scope(ScopeInputs {
            verified,
            next,
            fresh,
            reload_pending,
        });
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn an_etcd_patched_state_scopes_by_pointer() {
    let v = doc(1, 10, "roundrobin");
    let mut next = v.clone();
    next.revision = 2;
    Arc::make_mut(next.pools.get_mut("q").unwrap())
        .servers
        .values_mut()
        .for_each(|s| s.weight = 3);
    let got = pass_scope(ScopeInputs {
        verified: Some(&v),
        next: &next,
        fresh: true,
        reload_pending: false,
    });
    assert_eq!(got, PassScope::Pools([Name::try_new("q").unwrap()].into()));
}

#[test]
fn the_config_file_follows_quiet_or_at_most_ten_seconds_late() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    #[rustfmt::skip]
    let cases = [
        ("one change", t0, t0, t0 + s(2)),
        ("a burst over 3 s", t0, t0 + s(3), t0 + s(5)),
        ("a change every second for a minute", t0, t0 + s(59), t0 + s(10)),
        ("the last change 8.5 s after the first", t0, t0 + Duration::from_millis(8_500), t0 + s(10)),
    ];
    for (what, first, last, want) in cases {
        assert_eq!(persist_at(first, last), want, "{what}");
    }
}
