use super::*;
use crate::model::validate::{parse_document, ValidateContext};

fn doc(revision: u64, servers: usize, force: bool) -> DesiredState {
    let servers: Vec<serde_json::Value> = (0..servers)
        .map(
            |i| serde_json::json!({"name": format!("s{i}"), "address": "10.0.0.1", "port": 80 + i}),
        )
        .collect();
    let body = serde_json::json!({
        "schema": 1, "revision": revision, "group": "blue", "force": force,
        "vips": [{"address": "192.0.2.10/32"}],
        "frontends": [{"name": "www", "bind": ["192.0.2.10:80"], "mode": "http", "default_pool": "p"}],
        "pools": [{"name": "p", "mode": "http", "servers": servers}]
    });
    parse_document(
        &serde_json::to_vec(&body).unwrap(),
        &ValidateContext {
            group: "blue".into(),
        },
    )
    .unwrap()
}

#[test]
fn acceptance_table() {
    let cases: Vec<(&str, Option<DesiredState>, DesiredState, Acceptance)> = vec![
        ("first document", None, doc(5, 4, false), Acceptance::Fresh),
        (
            "newer",
            Some(doc(5, 4, false)),
            doc(6, 4, false),
            Acceptance::Fresh,
        ),
        (
            "same revision",
            Some(doc(5, 4, false)),
            doc(5, 4, false),
            Acceptance::Same,
        ),
        (
            "older",
            Some(doc(5, 4, false)),
            doc(4, 4, false),
            Acceptance::Older { applied: 5 },
        ),
        (
            "removes 3 of 4 servers",
            Some(doc(5, 4, false)),
            doc(6, 1, false),
            Acceptance::Refused(Refusal::RemovesTooMuch(String::new())),
        ),
        (
            "removes 3 of 4 servers, forced",
            Some(doc(5, 4, false)),
            doc(6, 1, true),
            Acceptance::Fresh,
        ),
        (
            "absurd jump",
            Some(doc(5, 4, false)),
            doc(5 + MAX_REVISION_JUMP + 1, 4, false),
            Acceptance::Refused(Refusal::RevisionJump {
                applied: 5,
                offered: 5 + MAX_REVISION_JUMP + 1,
            }),
        ),
        (
            "the largest jump allowed",
            Some(doc(5, 4, false)),
            doc(5 + MAX_REVISION_JUMP, 4, false),
            Acceptance::Fresh,
        ),
        (
            "forced jump",
            Some(doc(5, 4, false)),
            doc(5 + MAX_REVISION_JUMP + 1, 4, true),
            Acceptance::Fresh,
        ),
        (
            "a revision that would pin the agent, even as the first document",
            None,
            doc(MAX_REVISION + 1, 4, true),
            Acceptance::Refused(Refusal::RevisionTooLarge {
                offered: MAX_REVISION + 1,
            }),
        ),
    ];
    for (name, applied, offered, want) in cases {
        let got = accept(applied.as_ref(), &offered, 0.5);
        match (&got, &want) {
            // The guard's text is its own module's business; the variant is ours.
            (
                Acceptance::Refused(Refusal::RemovesTooMuch(e)),
                Acceptance::Refused(Refusal::RemovesTooMuch(_)),
            ) => assert!(e.contains("3 of 4 servers"), "{name}: {e}"),
            _ => assert_eq!(got, want, "{name}"),
        }
    }
}

#[test]
fn repair_or_reload_table() {
    let reload = AfterApply::Reload(ReloadReason::Convergence {
        remaining: 2,
        first: "x".into(),
    });
    let give_up = AfterApply::GiveUp {
        remaining: 2,
        first: "x".into(),
    };
    let cases = [
        ("nothing left", 0, 1, false, false, AfterApply::Converged),
        (
            "first round left some",
            2,
            1,
            false,
            false,
            AfterApply::Repair,
        ),
        ("repair did not take", 2, 2, false, false, reload.clone()),
        (
            "a convergence reload did not fix it either",
            2,
            2,
            true,
            false,
            give_up.clone(),
        ),
        (
            "a command the client will not send: no repair, reload at once",
            2,
            1,
            false,
            true,
            reload,
        ),
        ("unsendable even after a reload", 2, 1, true, true, give_up),
        (
            "nothing left, some unsent earlier",
            0,
            1,
            false,
            true,
            AfterApply::Converged,
        ),
    ];
    for (name, remaining, rounds, reloaded, unsent, want) in cases {
        assert_eq!(
            after_apply(remaining, rounds, "x", reloaded, unsent),
            want,
            "{name}"
        );
    }
}

#[test]
fn backoff_doubles_and_is_bounded() {
    let b = RELOAD_BACKOFF;
    let got: Vec<u64> = (1..=9).map(|n| b.after(n).as_secs()).collect();
    assert_eq!(got, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(b.after(u32::MAX), b.max);
    assert_eq!(b.after(0), b.first);
}

/// A scripted sequence of scheduler events and the due time after each,
/// in seconds from t0 (`None`: nothing due).
#[test]
fn reload_schedule_table() {
    enum Ev {
        Want,
        Settle,
        Attempt,
        Fail,
        Succeed,
        Kicked(super::Kick),
        Addresses,
    }
    use Ev::*;
    let min = Duration::from_secs(5);
    type Steps = Vec<(u64, Ev, Option<u64>)>;
    let cases: Vec<(&str, Steps)> = vec![
        (
            "first reload is due at once, the next one coalesced",
            vec![
                (0, Want, Some(0)),
                (0, Attempt, None),
                (0, Succeed, None),
                (1, Want, Some(5)),
                (3, Want, Some(5)),
            ],
        ),
        (
            "a failure backs off 5 s, 10 s, 20 s; never faster than min_reload_interval",
            vec![
                (0, Want, Some(0)),
                (0, Attempt, None),
                (1, Fail, None),
                (1, Want, Some(6)),
                (6, Attempt, None),
                (7, Fail, None),
                (7, Want, Some(17)),
                (17, Attempt, None),
                (18, Fail, None),
                (18, Want, Some(38)),
            ],
        ),
        (
            "a new revision retries at once, but still coalesced",
            vec![
                (0, Want, Some(0)),
                (0, Attempt, None),
                (1, Fail, None),
                (1, Want, Some(6)),
                (2, Kicked(super::Kick::NewRevision), Some(5)),
            ],
        ),
        (
            "the operator and a HAProxy change retry at once",
            vec![
                (0, Want, Some(0)),
                (0, Attempt, None),
                (0, Fail, None),
                (0, Want, Some(5)),
                (0, Attempt, None),
                (0, Fail, None),
                (0, Want, Some(10)),
                (8, Kicked(super::Kick::Operator), Some(8)),
                (8, Attempt, None),
                (8, Fail, None),
                (8, Want, Some(28)),
                (20, Kicked(super::Kick::HaproxyChanged), Some(20)),
            ],
        ),
        (
            "success resets the backoff",
            vec![
                (0, Want, Some(0)),
                (0, Attempt, None),
                (0, Fail, None),
                (0, Want, Some(5)),
                (5, Attempt, None),
                (5, Succeed, None),
                (20, Want, Some(20)),
            ],
        ),
        (
            "nothing wanted any more: nothing due",
            vec![(0, Want, Some(0)), (0, Settle, None)],
        ),
        (
            "waiting for bind addresses polls at 200 ms",
            vec![(0, Want, Some(0)), (0, Addresses, Some(0))],
        ),
    ];
    for (name, steps) in cases {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut st = ReloadState::default();
        for (i, (t, ev, want)) in steps.into_iter().enumerate() {
            let now = at(t);
            match ev {
                Want => {
                    st.want(&[ReloadReason::Global]);
                }
                Settle => st.settle(),
                Attempt => {
                    assert_eq!(
                        st.attempt(now),
                        vec![ReloadReason::Global],
                        "{name} step {i}"
                    );
                }
                Fail => st.failed("d".into(), "port in use".into(), now, RELOAD_BACKOFF),
                Succeed => st.succeeded(),
                Kicked(k) => st.kick(k),
                Addresses => {
                    st.wait_for_addresses(vec!["192.0.2.10".parse().unwrap()], now);
                    assert_eq!(
                        st.due(min, now),
                        Some(now + ADDRESS_RETRY),
                        "{name} step {i}"
                    );
                    continue;
                }
            }
            assert_eq!(st.due(min, now), want.map(at), "{name} step {i}");
        }
    }
}

#[test]
fn a_reason_is_wanted_once() {
    let mut st = ReloadState::default();
    assert_eq!(st.want(&[ReloadReason::Global]).len(), 1);
    assert!(st.want(&[ReloadReason::Global]).is_empty());
    assert_eq!(st.wanted.len(), 1);
}

#[test]
fn identity_changes() {
    let a = Identity {
        master: 1,
        worker: 2,
    };
    let reloaded_by_someone = Identity {
        master: 1,
        worker: 3,
    };
    let restarted = Identity {
        master: 7,
        worker: 8,
    };
    assert!(
        !identity_changed(None, Some(a)),
        "first sight is not a change"
    );
    assert!(!identity_changed(Some(a), Some(a)));
    assert!(
        !identity_changed(Some(a), None),
        "unreachable is not a change"
    );
    assert!(identity_changed(Some(a), Some(reloaded_by_someone)));
    assert!(identity_changed(Some(a), Some(restarted)));
}

#[test]
fn resolve_loaded_table() {
    let d = doc(1, 2, false);
    let desired = Structure::of(&d, "g");
    let mut other_doc = d.clone();
    other_doc.frontends.clear();
    let other = Structure::of(&other_doc, "g");
    let rec = LoadedRecord {
        worker_pid: 10,
        structure: other.clone(),
    };
    type Case<'a> = (
        &'a str,
        Option<&'a LoadedRecord>,
        Option<u32>,
        Option<String>,
        Option<&'a Structure>,
    );
    let cases: Vec<Case> = vec![
        (
            "record of the running worker",
            Some(&rec),
            Some(10),
            None,
            Some(&other),
        ),
        (
            "restarted worker, file still the recorded one",
            Some(&rec),
            Some(11),
            Some(other.digest()),
            Some(&other),
        ),
        (
            "restarted worker, file holds the desired structure",
            Some(&rec),
            Some(11),
            Some(desired.digest()),
            Some(&desired),
        ),
        (
            "no record, file desired",
            None,
            Some(11),
            Some(desired.digest()),
            Some(&desired),
        ),
        (
            "no record, foreign file",
            None,
            Some(11),
            Some("x".into()),
            None,
        ),
        ("nothing known", None, None, None, None),
    ];
    for (name, record, worker, file, want) in cases {
        assert_eq!(
            resolve_loaded(record, worker, file.as_deref(), &desired).as_ref(),
            want,
            "{name}"
        );
    }
}

#[test]
fn install_view_table() {
    let d = doc(1, 2, false);
    let desired = Structure::of(&d, "g");
    let mut without = d.clone();
    without.frontends.clear();
    let old = Structure::of(&without, "g");
    let mut failed = ReloadState::default();
    failed.failed(
        desired.digest(),
        "cannot bind".into(),
        Instant::now(),
        RELOAD_BACKOFF,
    );
    let mut other_failed = ReloadState::default();
    other_failed.failed("other".into(), "x".into(), Instant::now(), RELOAD_BACKOFF);
    let mut waiting = ReloadState::default();
    waiting.wait_for_addresses(vec!["192.0.2.10".parse().unwrap()], Instant::now());
    let idle = ReloadState::default();
    let cases: Vec<(&str, Option<&Structure>, &ReloadState, bool, Install)> = vec![
        (
            "loaded as desired",
            Some(&desired),
            &idle,
            true,
            Install::Running,
        ),
        (
            "loaded as desired, even while a failure of it is remembered",
            Some(&desired),
            &failed,
            true,
            Install::Running,
        ),
        (
            "not loaded, reload pending",
            Some(&old),
            &idle,
            true,
            Install::Pending("reload pending".into()),
        ),
        (
            "not loaded, running config unknown",
            None,
            &idle,
            true,
            Install::Pending("reload pending".into()),
        ),
        (
            "not loaded, the reload of this structure failed",
            Some(&old),
            &failed,
            true,
            Install::Failed("reload failed: cannot bind".into()),
        ),
        (
            "not loaded, an older structure failed: this one is still pending",
            Some(&old),
            &other_failed,
            true,
            Install::Pending("reload pending".into()),
        ),
        (
            "waiting for the VIP address",
            Some(&old),
            &waiting,
            true,
            Install::Pending(
                "reload waits for bind address(es) 192.0.2.10 to be on this host".into(),
            ),
        ),
        (
            "HAProxy unreachable",
            Some(&old),
            &idle,
            false,
            Install::Pending("HAProxy's runtime socket does not answer".into()),
        ),
    ];
    for (name, loaded, reload, reachable, want) in cases {
        let v = install_view(&desired, loaded, reload, reachable);
        assert_eq!(v.get("www"), Some(&want), "{name}");
    }
}
