//! The reconcile loop against a scripted HAProxy, under paused time: fault
//! sequences (failed reloads, restarts, invalid configs) and what the loop
//! does about them, second by second. The real HAProxy proves the same
//! rules end to end in `tests/reconcile_haproxy.rs` and `tests/faults.rs`.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::ops::{HaproxyOps, LoadedHints, Observed};
use super::*;
use crate::config::SlotPolicy;
use crate::haproxy::runtime::ApplyReport;
use crate::model::observed::{ObservedData, ProcRow, ProcStatus};
use crate::model::validate::{parse_document, ValidateContext};
use crate::plan::sim::SimHaproxy;
use crate::plan::Command;

/// What the scripted HAProxy does and what was done to it.
#[derive(Default)]
struct Script {
    /// Results of the next reload attempts (empty: success).
    reloads: VecDeque<Result<(), String>>,
    /// Result of `haproxy -c`.
    invalid: Option<String>,
    /// The runtime socket refuses.
    down: bool,
    master: u32,
    worker: u32,
    sim: SimHaproxy,
    /// Structure digest of the config on disk.
    file_digest: Option<String>,
    record: Option<LoadedRecord>,
    unbindable: Vec<IpAddr>,
    /// Every action, with the paused clock's time since the start, in ms.
    log: Vec<(u64, String)>,
    t0: Option<Instant>,
}

impl Script {
    fn note(&mut self, what: impl Into<String>) {
        let t0 = *self.t0.get_or_insert_with(Instant::now);
        self.log.push((
            Instant::now().duration_since(t0).as_millis() as u64,
            what.into(),
        ));
    }
}

#[derive(Clone)]
struct Scripted(Arc<Mutex<Script>>);

impl Scripted {
    fn new() -> Scripted {
        Scripted(Arc::new(Mutex::new(Script {
            master: 100,
            worker: 101,
            t0: Some(Instant::now()),
            ..Default::default()
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    /// Times (ms) of the actions named `what`.
    fn times(&self, what: &str) -> Vec<u64> {
        self.with(|s| {
            s.log
                .iter()
                .filter(|(_, w)| w == what)
                .map(|(t, _)| *t)
                .collect()
        })
    }
}

impl HaproxyOps for Scripted {
    fn structure(&self, d: &DesiredState) -> Structure {
        Structure::of(d, "scripted")
    }

    async fn proc_status(&mut self) -> Result<ProcStatus, String> {
        self.with(|s| {
            if s.down {
                return Err("master socket refused".into());
            }
            Ok(ProcStatus {
                master_pid: s.master,
                master_reloads: 0,
                failed: 0,
                workers: vec![ProcRow {
                    pid: s.worker,
                    reloads: 0,
                }],
                old_workers: vec![],
            })
        })
    }

    async fn observe(&mut self, _d: &DesiredState) -> Result<Observed, String> {
        self.with(|s| {
            if s.down {
                return Err("connection refused".into());
            }
            s.note("observe");
            Ok(Observed {
                servers: s.sim.observe(),
                data: ObservedData::default(),
            })
        })
    }

    async fn observe_backends(
        &mut self,
        backends: &[String],
    ) -> Result<crate::model::observed::ObservedServers, String> {
        self.with(|s| {
            if s.down {
                return Err("connection refused".into());
            }
            s.note(format!("observe {}", backends.join(",")));
            let mut all = s.sim.observe();
            all.backends.retain(|k, _| backends.contains(k));
            Ok(all)
        })
    }

    async fn apply(&mut self, cmds: &[Command]) -> Result<ApplyReport, String> {
        self.with(|s| {
            let mut report = ApplyReport::default();
            for c in cmds {
                match s.sim.apply(c) {
                    Ok(()) => report.ok += 1,
                    Err(e) => report.failed.push(e),
                }
            }
            s.note("apply");
            Ok(report)
        })
    }

    async fn close(&mut self) {}

    async fn validate(&mut self, _d: &DesiredState) -> Result<(), ReloadError> {
        self.with(|s| {
            s.note("validate");
            match &s.invalid {
                Some(e) => Err(ReloadError::Invalid(e.clone())),
                None => Ok(()),
            }
        })
    }

    async fn persist(&mut self, d: &DesiredState, _dump: bool) -> Result<bool, ReloadError> {
        let digest = self.structure(d).digest();
        self.with(|s| {
            s.file_digest = Some(digest);
            s.note("persist");
        });
        Ok(true)
    }

    async fn reload(&mut self, d: &DesiredState) -> Result<ReloadOutcome, ReloadError> {
        let digest = self.structure(d).digest();
        self.with(|s| {
            s.note("reload");
            match s.reloads.pop_front().unwrap_or(Ok(())) {
                Ok(()) => {
                    s.worker += 1;
                    s.sim = SimHaproxy::load(d, SlotPolicy::Pow2);
                    s.file_digest = Some(digest);
                    Ok(ReloadOutcome {
                        worker_pid: s.worker,
                        took: Duration::from_millis(300),
                        old_workers: 0,
                    })
                }
                Err(e) => Err(ReloadError::NotConfirmed(e)),
            }
        })
    }

    fn unbindable(&self, _d: &DesiredState) -> Vec<IpAddr> {
        self.with(|s| s.unbindable.clone())
    }

    fn loaded_hints(&self) -> LoadedHints {
        self.with(|s| LoadedHints {
            record: s.record.clone(),
            file_digest: s.file_digest.clone(),
        })
    }

    fn record_loaded(&self, r: &LoadedRecord) -> Result<(), String> {
        self.with(|s| s.record = Some(r.clone()));
        Ok(())
    }

    fn store_cache(&self, _raw: &[u8]) -> Result<(), String> {
        Ok(())
    }

    fn forget(&mut self) {}
}

fn doc(revision: u64, frontends: &[&str]) -> Arc<DesiredState> {
    let fe: Vec<serde_json::Value> = frontends
        .iter()
        .enumerate()
        .map(|(i, n)| serde_json::json!({"name": n, "bind": [format!("192.0.2.10:{}", 80 + i)], "mode": "tcp", "default_pool": "p"}))
        .collect();
    let body = serde_json::json!({
        "schema": 1, "revision": revision, "group": "blue",
        "vips": [{"address": "192.0.2.10/32"}],
        "frontends": fe,
        "pools": [{"name": "p", "mode": "tcp", "servers": [{"name": "s1", "address": "10.0.0.1", "port": 80}]}]
    });
    Arc::new(
        parse_document(
            &serde_json::to_vec(&body).unwrap(),
            &ValidateContext {
                group: "blue".into(),
            },
        )
        .unwrap(),
    )
}

struct Loop {
    docs: watch::Sender<Option<Candidate>>,
    /// What the HAProxy watcher would report.
    view: watch::Sender<HaproxyView>,
    triggers: mpsc::Sender<Trigger>,
    status: watch::Receiver<HaproxyStatus>,
    install: watch::Receiver<FrontendInstall>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Loop {
    /// A reconciler over `ops` whose HAProxy runs `running` already.
    fn start(ops: Scripted, running: &DesiredState) -> Loop {
        let cfg = crate::config::parse_str("[node]\ngroup = \"blue\"\n", "agent.toml").unwrap();
        let s = ReconcilerSettings {
            haproxy: cfg.haproxy.clone(),
            state_dir: "/nonexistent".into(),
            cache: "/nonexistent/cache.json".into(),
            max_removal_ratio: 1.0,
            socket_timeout: Duration::from_secs(1),
        };
        let structure = ops.structure(running);
        ops.with(|sc| {
            sc.sim = SimHaproxy::load(running, SlotPolicy::Pow2);
            sc.file_digest = Some(structure.digest());
            sc.record = Some(LoadedRecord {
                worker_pid: sc.worker,
                structure,
            });
        });
        let (status_tx, status) = watch::channel(HaproxyStatus::default());
        let (install_tx, install) = watch::channel(FrontendInstall::default());
        let (docs, rx) = watch::channel(None);
        let (triggers, trx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let (view, view_rx) = watch::channel(HaproxyView::default());
        let r = Reconciler::with_ops(s, ops.clone(), status_tx)
            .with_install(install_tx)
            .with_haproxy_view(view_rx);
        let task = tokio::spawn(r.run(rx, trx, cancel.clone()));
        Loop {
            docs,
            view,
            triggers,
            status,
            install,
            cancel,
            task,
        }
    }

    fn offer(&self, d: Arc<DesiredState>) {
        self.docs.send_replace(Some(Candidate {
            desired: d,
            raw: None,
            from_cache: false,
        }));
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

/// Lets the paused clock run for `secs` seconds.
async fn run_for(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_reload_is_retried_with_backoff_until_it_succeeds() {
    let ops = Scripted::new();
    let l = Loop::start(ops.clone(), &doc(1, &["www"]));
    ops.with(|s| {
        s.reloads.extend([
            Err("port held".to_string()),
            Err("port held".to_string()),
            Err("port held".to_string()),
        ])
    });
    l.offer(doc(2, &["www", "api"]));
    run_for(1.0).await;
    let st = l.status.borrow().clone();
    assert_eq!(st.reload_failures, 1, "{st:#?}");
    assert_eq!(st.reload_attempts, 1);
    assert!(st.next_reload_at.is_some(), "the next attempt is scheduled");
    assert!(
        st.error.as_deref().unwrap_or("").contains("attempt 1"),
        "{st:#?}"
    );
    assert!(matches!(
        l.install.borrow().frontends.get("api"),
        Some(Install::Failed(e)) if e.contains("port held")
    ));
    assert_eq!(
        l.install.borrow().frontends.get("www"),
        Some(&Install::Running)
    );
    // 5 s, 10 s, 20 s after each failure; the fourth attempt succeeds.
    run_for(60.0).await;
    assert_eq!(ops.times("reload"), vec![0, 5000, 15000, 35000]);
    let st = l.status.borrow().clone();
    assert_eq!(
        (st.reloads, st.reload_failures, st.reload_attempts),
        (1, 3, 0)
    );
    assert!(st.converged && st.next_reload_at.is_none(), "{st:#?}");
    assert_eq!(
        l.install.borrow().frontends.get("api"),
        Some(&Install::Running)
    );
    // Nothing more happens once converged.
    run_for(600.0).await;
    assert_eq!(ops.times("reload").len(), 4);
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_revision_retries_at_once_but_never_faster_than_min_reload_interval() {
    let ops = Scripted::new();
    let l = Loop::start(ops.clone(), &doc(1, &["www"]));
    ops.with(|s| {
        s.reloads
            .extend(std::iter::repeat_n(Err("port held".to_string()), 2))
    });
    l.offer(doc(2, &["www", "api"]));
    run_for(6.0).await;
    assert_eq!(ops.times("reload"), vec![0, 5000]);
    // The backoff would wait until 15 s. The same structure is published
    // again as a new revision at 6 s (the port was freed meanwhile): due at
    // once, but coalesced to min_reload_interval (5 s) after the last attempt.
    l.offer(doc(3, &["www", "api"]));
    run_for(10.0).await;
    assert_eq!(ops.times("reload"), vec![0, 5000, 10000]);
    assert_eq!(l.status.borrow().revision, Some(3));
    assert!(l.status.borrow().converged);
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_operator_reconcile_and_a_haproxy_restart_retry_at_once() {
    let ops = Scripted::new();
    let l = Loop::start(ops.clone(), &doc(1, &["www"]));
    ops.with(|s| {
        s.reloads
            .extend(std::iter::repeat_n(Err("port held".to_string()), 3))
    });
    l.offer(doc(2, &["www", "api"]));
    run_for(6.0).await;
    assert_eq!(
        ops.times("reload"),
        vec![0, 5000],
        "the backoff's first retry"
    );
    // The next retry would be at 15 s; the operator asks at 8 s: due at
    // once, coalesced to 5 s after the last attempt.
    run_for(2.0).await;
    l.triggers.send(Trigger::Reconcile).await.unwrap();
    run_for(2.5).await;
    assert_eq!(ops.times("reload"), vec![0, 5000, 10000]);
    // The backoff is now 20 s (until 30 s). At 12 s HAProxy is restarted
    // (new master) with the last-known-good file a failed reload leaves on
    // disk; the watcher sees the new worker.
    run_for(1.5).await;
    ops.with(|s| {
        s.master = 200;
        s.worker = 201;
    });
    l.view.send_replace(HaproxyView {
        up: Some(true),
        worker_pid: Some(201),
        frontends: None,
        error: None,
    });
    run_for(5.0).await;
    assert_eq!(ops.times("reload"), vec![0, 5000, 10000, 15000]);
    assert!(l.status.borrow().converged, "{:#?}", l.status.borrow());
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_with_the_old_config_is_found_and_converged_without_an_operator() {
    let ops = Scripted::new();
    let l = Loop::start(ops.clone(), &doc(1, &["www"]));
    l.offer(doc(2, &["www", "api"]));
    run_for(1.0).await;
    assert_eq!(ops.times("reload"), vec![0]);
    assert!(l.status.borrow().converged);
    // Someone restarts HAProxy with an old file (a restore, a package
    // script): new master, and the old structure on disk.
    let old = ops.structure(&doc(1, &["www"]));
    ops.with(|s| {
        s.master = 300;
        s.worker = 301;
        s.file_digest = Some(old.digest());
        s.sim = SimHaproxy::load(&doc(1, &["www"]), SlotPolicy::Pow2);
    });
    // The verify tick (60 s) notices, re-resolves and reloads.
    run_for(61.0).await;
    assert_eq!(
        ops.times("reload").len(),
        2,
        "{:?}",
        ops.with(|s| s.log.clone())
    );
    assert!(l.status.borrow().converged);
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_is_refused_before_anything_is_applied() {
    let ops = Scripted::new();
    let l = Loop::start(ops.clone(), &doc(1, &["www"]));
    l.offer(doc(1, &["www"]));
    run_for(1.0).await;
    ops.with(|s| s.invalid = Some("[ALERT] parsing: unknown keyword".into()));
    l.offer(doc(2, &["www", "api"]));
    run_for(10.0).await;
    let st = l.status.borrow().clone();
    assert_eq!(st.rejections, 1, "{st:#?}");
    assert_eq!(st.revision, Some(1), "the previous document stays in force");
    assert!(ops.times("reload").is_empty());
    assert!(ops.times("apply").is_empty(), "nothing of it was applied");
    assert!(!l.install.borrow().frontends.contains_key("api"));
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_waits_for_its_bind_address_then_runs() {
    let ops = Scripted::new();
    let l = Loop::start(ops.clone(), &doc(1, &["www"]));
    ops.with(|s| s.unbindable = vec!["192.0.2.10".parse().unwrap()]);
    l.offer(doc(2, &["www", "api"]));
    run_for(1.0).await;
    assert!(ops.times("reload").is_empty());
    assert!(matches!(
        l.install.borrow().frontends.get("api"),
        Some(Install::Pending(r)) if r.contains("bind address")
    ));
    ops.with(|s| s.unbindable.clear());
    run_for(0.5).await;
    assert_eq!(ops.times("reload").len(), 1);
    assert_eq!(
        l.install.borrow().frontends.get("api"),
        Some(&Install::Running)
    );
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn haproxy_down_keeps_the_file_right_and_converges_when_it_is_back() {
    let ops = Scripted::new();
    let l = Loop::start(ops.clone(), &doc(1, &["www"]));
    ops.with(|s| s.down = true);
    l.offer(doc(2, &["www", "api"]));
    run_for(1.0).await;
    let st = l.status.borrow().clone();
    assert!(!st.converged && st.error.as_deref().unwrap_or("").contains("unreachable"));
    assert_eq!(
        ops.times("persist"),
        vec![0],
        "the file holds the new document"
    );
    assert!(matches!(
        l.install.borrow().frontends.get("api"),
        Some(Install::Pending(_))
    ));
    // HAProxy comes back (systemd restarted it with the persisted file).
    let new = ops.structure(&doc(2, &["www", "api"]));
    ops.with(|s| {
        s.down = false;
        s.master = 400;
        s.worker = 401;
        s.sim = SimHaproxy::load(&doc(2, &["www", "api"]), SlotPolicy::Pow2);
        s.file_digest = Some(new.digest());
    });
    run_for(61.0).await;
    assert!(l.status.borrow().converged, "{:#?}", l.status.borrow());
    assert!(
        ops.times("reload").is_empty(),
        "it loaded the desired file itself"
    );
    l.stop().await;
}

/// The end-to-end twin, on a real HAProxy and real sleeps, is
/// `tests/reconcile_haproxy.rs::burst_of_reload_changes_coalesces`; here the
/// paused clock makes the count exact.
#[tokio::test(start_paused = true)]
async fn a_burst_of_reload_changes_coalesces_into_one_reload_per_min_reload_interval() {
    let names: Vec<String> = (0..10).map(|k| format!("f{k}")).collect();
    let fes = |n: usize| names[..n].iter().map(String::as_str).collect::<Vec<_>>();
    let ops = Scripted::new();
    let l = Loop::start(ops.clone(), &doc(1, &fes(1)));
    // Nine documents 150 ms apart, each adding a frontend: each needs a reload.
    for i in 2..=10u64 {
        l.offer(doc(i, &fes(i as usize)));
        run_for(0.15).await;
    }
    run_for(30.0).await;
    // The first reload at once; the other eight changes, all inside the 5 s
    // min_reload_interval, coalesce into one reload of the last revision.
    assert_eq!(ops.times("reload"), vec![0, 5000]);
    let st = l.status.borrow().clone();
    assert!(st.converged, "{st:#?}");
    assert_eq!((st.revision, st.reloads), (Some(10), 2), "{st:#?}");
    let loaded = ops.with(|s| s.record.clone()).expect("a loaded record");
    assert_eq!(
        loaded.structure.digest(),
        ops.structure(&doc(10, &fes(10))).digest()
    );
    l.stop().await;
}

/// `doc(revision, ["www"])` with server `s1` of pool `p` at `weight`.
fn weighted(revision: u64, weight: u16) -> Arc<DesiredState> {
    let mut d = (*doc(revision, &["www"])).clone();
    let p = Arc::make_mut(d.pools.get_mut("p").unwrap());
    p.servers.values_mut().for_each(|s| s.weight = weight);
    Arc::new(d)
}

fn weight_in_haproxy(ops: &Scripted) -> u16 {
    ops.with(|s| {
        s.sim.observe().backends["p"]
            .servers
            .iter()
            .find(|o| o.name == "s1")
            .unwrap()
            .uweight
    })
}

/// A server change after a converged pass reads and plans its pool alone,
/// and the config file follows 2 s later (once).
#[tokio::test(start_paused = true)]
async fn a_server_change_takes_the_scoped_pass_and_the_file_follows() {
    let ops = Scripted::new();
    let l = Loop::start(ops.clone(), &weighted(1, 10));
    l.offer(weighted(1, 10));
    run_for(1.0).await;
    assert_eq!(
        ops.times("observe").len(),
        1,
        "the first document: a full pass"
    );
    assert_eq!(ops.times("persist"), vec![0]);
    l.offer(weighted(2, 20));
    run_for(0.5).await;
    assert_eq!(weight_in_haproxy(&ops), 20);
    assert_eq!(
        ops.times("observe p"),
        vec![1000, 1000],
        "pool p alone: read, apply, read back"
    );
    assert_eq!(ops.times("observe").len(), 1, "no full observation");
    assert_eq!(ops.times("persist"), vec![0], "the file waits");
    let st = l.status.borrow().clone();
    assert!(st.converged && st.revision == Some(2), "{st:#?}");
    run_for(2.0).await;
    assert_eq!(ops.times("persist"), vec![0, 3000], "2 s after the change");
    l.stop().await;
}

/// A steady stream of server changes writes the file every 10 s, and what
/// is still lagging when the agent stops is written at the stop.
#[tokio::test(start_paused = true)]
async fn a_stream_of_changes_writes_the_file_at_most_every_ten_seconds() {
    let ops = Scripted::new();
    let l = Loop::start(ops.clone(), &weighted(1, 10));
    l.offer(weighted(1, 10));
    for i in 1..=15u16 {
        run_for(1.0).await;
        l.offer(weighted(1 + u64::from(i), 10 + i));
    }
    run_for(0.5).await;
    assert_eq!(weight_in_haproxy(&ops), 25);
    assert_eq!(ops.times("observe").len(), 1, "every change scoped");
    assert_eq!(ops.times("persist"), vec![0, 11000]);
    run_for(3.0).await;
    assert_eq!(ops.times("persist"), vec![0, 11000, 17000], "2 s of quiet");
    l.offer(weighted(20, 40));
    run_for(0.5).await;
    l.stop().await;
    assert_eq!(
        ops.times("persist"),
        vec![0, 11000, 17000, 19000],
        "at the stop"
    );
}

/// Anything but a server change after a converged pass is a full pass: a
/// new frontend, a HAProxy restarted by someone else, the verify tick.
#[tokio::test(start_paused = true)]
async fn other_changes_and_doubt_take_the_full_pass() {
    let ops = Scripted::new();
    let l = Loop::start(ops.clone(), &weighted(1, 10));
    l.offer(weighted(1, 10));
    run_for(1.0).await;
    // Someone else restarted HAProxy (with the same config).
    ops.with(|s| {
        s.master += 10;
        s.worker += 10;
    });
    l.offer(weighted(2, 20));
    run_for(1.0).await;
    assert_eq!(weight_in_haproxy(&ops), 20);
    assert!(ops.times("observe p").is_empty(), "a new master: full pass");
    assert_eq!(ops.times("observe").len(), 3, "read, apply, read back");
    // Now verified again: a server change is scoped.
    l.offer(weighted(3, 30));
    run_for(1.0).await;
    assert_eq!(ops.times("observe p").len(), 2);
    // A new frontend is not a server change.
    let mut d = (*doc(4, &["www", "api"])).clone();
    let p = Arc::make_mut(d.pools.get_mut("p").unwrap());
    p.servers.values_mut().for_each(|s| s.weight = 30);
    l.offer(Arc::new(d));
    run_for(1.0).await;
    assert_eq!(ops.times("observe p").len(), 2, "a frontend: full pass");
    assert_eq!(ops.times("reload").len(), 1, "the new frontend is reloaded");
    assert_eq!(
        ops.times("observe").len(),
        5,
        "before the reload and after it"
    );
    // The verify tick is always full.
    let before = ops.times("observe").len();
    run_for(61.0).await;
    assert!(ops.times("observe").len() > before, "the verify tick");
    l.stop().await;
}
