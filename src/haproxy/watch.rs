//! The HAProxy watcher: is HAProxy alive, which worker runs, which
//! frontends does it serve — as HAProxy itself says.
//!
//! One small task probes the runtime socket every 200 ms with `show info`
//! and, whenever the answering worker changes (and every few seconds
//! anyway), reads the frontends it runs from `show stat -1 1 -1`. It
//! publishes a [`HaproxyView`] on a `watch` channel:
//! - the anycast side withdraws everything when HAProxy is down (an event,
//!   not a check result), and counts a service healthy only while its
//!   frontend is in [`HaproxyView::frontends`]: a check answered by a
//!   foreign listener on the VIP port can then never pass for HAProxy;
//! - the reconciler re-verifies when the worker changes behind its back
//!   (a restart by systemd, a crash, a reload by someone else).
//!
//! "Down" needs two failed probes in a row, so one slow answer during a
//! reload is not a death; a frozen HAProxy (SIGSTOP) accepts the connection
//! but never answers, so the probe has a timeout and counts as failed.
//! The decisions ([`step`], [`wants_frontends`]) are pure; the probe is thin.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::parse;
use super::runtime::RuntimeClient;

/// Probe period.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Bound on each exchange of a probe (connect, `show info`, `show stat`).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Frontends are re-read this often even when the worker did not change.
pub const FRONTENDS_REFRESH: Duration = Duration::from_secs(10);
/// Failed probes in a row before HAProxy counts as down (once it was up).
pub const DOWN_AFTER: u32 = 2;

/// What the watcher knows about the running HAProxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaproxyView {
    /// `Some(true)` while the runtime socket answers; `None` before the first probe.
    pub up: Option<bool>,
    /// Pid of the worker that answered the last successful probe.
    pub worker_pid: Option<u32>,
    /// Frontends that worker serves; `None` until read, and while down.
    pub frontends: Option<Arc<BTreeSet<String>>>,
    /// Why the last probe failed.
    pub error: Option<String>,
}

impl HaproxyView {
    /// True when HAProxy itself says it runs frontend `name`.
    pub fn runs(&self, name: &str) -> bool {
        self.up == Some(true) && self.frontends.as_ref().is_some_and(|f| f.contains(name))
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `show info` answered; `frontends` when they were read in this probe.
    Answered {
        /// The answering worker.
        pid: u32,
        /// The frontends it runs, if read this time.
        frontends: Option<BTreeSet<String>>,
    },
    /// Connect, exchange or parse failed.
    Failed(String),
}

/// Pure: the next view after a probe. `failures` counts failed probes in a row.
pub fn step(prev: &HaproxyView, failures: &mut u32, probe: Probe) -> HaproxyView {
    match probe {
        Probe::Answered { pid, frontends } => {
            *failures = 0;
            let same_worker = prev.worker_pid == Some(pid);
            let frontends = match frontends {
                Some(f) => Some(Arc::new(f)),
                // A new worker's frontends are unknown until read.
                None if same_worker => prev.frontends.clone(),
                None => None,
            };
            HaproxyView {
                up: Some(true),
                worker_pid: Some(pid),
                frontends,
                error: None,
            }
        }
        Probe::Failed(error) => {
            *failures = failures.saturating_add(1);
            let still_up = prev.up == Some(true) && *failures < DOWN_AFTER;
            if still_up {
                HaproxyView {
                    error: Some(error),
                    ..prev.clone()
                }
            } else {
                HaproxyView {
                    up: Some(false),
                    worker_pid: prev.worker_pid,
                    frontends: None,
                    error: Some(error),
                }
            }
        }
    }
}

/// Pure: whether this probe should also read the frontends of worker `pid`.
pub fn wants_frontends(
    prev: &HaproxyView,
    pid: u32,
    last_read: Option<Instant>,
    now: Instant,
) -> bool {
    prev.worker_pid != Some(pid)
        || prev.frontends.is_none()
        || last_read.is_none_or(|t| now.saturating_duration_since(t) >= FRONTENDS_REFRESH)
}

/// Probes once: `show info`, then `show stat` when `want_frontends` says so
/// for the worker that answered.
async fn probe(client: &RuntimeClient, want_frontends: impl FnOnce(u32) -> bool) -> Probe {
    let mut s = match client.connect().await {
        Ok(s) => s,
        Err(e) => return Probe::Failed(e.to_string()),
    };
    let r = async {
        let pid = parse::info_pid(&s.command("show info").await?)?;
        let frontends = if want_frontends(pid) {
            Some(parse::stat_frontends(
                &s.command("show stat -1 1 -1").await?,
            )?)
        } else {
            None
        };
        Ok::<_, anyhow::Error>(Probe::Answered { pid, frontends })
    }
    .await;
    s.quit().await;
    r.unwrap_or_else(|e| Probe::Failed(format!("{e:#}")))
}

/// Runs until `cancel` fires, publishing into `tx`.
pub async fn run(socket: PathBuf, tx: watch::Sender<HaproxyView>, cancel: CancellationToken) {
    let client = RuntimeClient::new(&socket, PROBE_TIMEOUT);
    let mut failures = 0u32;
    let mut last_read: Option<Instant> = None;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let prev = tx.borrow().clone();
        let now = Instant::now();
        let p = tokio::select! {
            _ = cancel.cancelled() => return,
            p = probe(&client, |pid| wants_frontends(&prev, pid, last_read, now)) => p,
        };
        if matches!(
            &p,
            Probe::Answered {
                frontends: Some(_),
                ..
            }
        ) {
            last_read = Some(now);
        }
        let next = step(&prev, &mut failures, p);
        log_transition(&prev, &next, &socket);
        tx.send_if_modified(|cur| {
            let changed = *cur != next;
            if changed {
                *cur = next;
            }
            changed
        });
    }
}

fn log_transition(prev: &HaproxyView, next: &HaproxyView, socket: &std::path::Path) {
    match (prev.up, next.up) {
        (Some(false) | None, Some(true)) => {
            info!(worker = ?next.worker_pid, "HAProxy answers on its runtime socket")
        }
        (Some(true) | None, Some(false)) => warn!(
            socket = %socket.display(),
            error = next.error.as_deref().unwrap_or(""),
            "HAProxy is down or not answering on its runtime socket"
        ),
        _ => {}
    }
    if prev.up == Some(true) && next.up == Some(true) && prev.worker_pid != next.worker_pid {
        info!(old = ?prev.worker_pid, new = ?next.worker_pid, "HAProxy worker changed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(pid: u32, f: Option<&[&str]>) -> Probe {
        Probe::Answered {
            pid,
            frontends: f.map(|f| f.iter().map(|s| s.to_string()).collect()),
        }
    }

    /// A scripted probe sequence and the view after each probe:
    /// up flag, worker, frontends known.
    #[test]
    fn step_table() {
        type Want = (Option<bool>, Option<u32>, Option<usize>);
        let cases: Vec<(&str, Vec<Probe>, Vec<Want>)> = vec![
            (
                "first probe fails: down at once (never seen up)",
                vec![Probe::Failed("refused".into())],
                vec![(Some(false), None, None)],
            ),
            (
                "up, one failure is tolerated, two are down",
                vec![
                    answered(10, Some(&["www"])),
                    Probe::Failed("timeout".into()),
                    Probe::Failed("timeout".into()),
                ],
                vec![
                    (Some(true), Some(10), Some(1)),
                    (Some(true), Some(10), Some(1)),
                    (Some(false), Some(10), None),
                ],
            ),
            (
                "a failure between two answers resets the count",
                vec![
                    answered(10, Some(&["www"])),
                    Probe::Failed("timeout".into()),
                    answered(10, None),
                    Probe::Failed("timeout".into()),
                ],
                vec![
                    (Some(true), Some(10), Some(1)),
                    (Some(true), Some(10), Some(1)),
                    (Some(true), Some(10), Some(1)),
                    (Some(true), Some(10), Some(1)),
                ],
            ),
            (
                "a new worker's frontends are unknown until read",
                vec![
                    answered(10, Some(&["www"])),
                    answered(11, None),
                    answered(11, Some(&["www", "api"])),
                ],
                vec![
                    (Some(true), Some(10), Some(1)),
                    (Some(true), Some(11), None),
                    (Some(true), Some(11), Some(2)),
                ],
            ),
        ];
        for (name, probes, want) in cases {
            let mut view = HaproxyView::default();
            let mut failures = 0;
            for (i, (p, w)) in probes.into_iter().zip(want).enumerate() {
                view = step(&view, &mut failures, p);
                let got = (
                    view.up,
                    view.worker_pid,
                    view.frontends.as_ref().map(|f| f.len()),
                );
                assert_eq!(got, w, "{name}: after probe {i}");
            }
        }
    }

    #[test]
    fn runs_needs_up_and_the_frontend() {
        let mut v = HaproxyView::default();
        assert!(!v.runs("www"));
        let mut f = 0;
        v = step(&v, &mut f, answered(1, Some(&["www"])));
        assert!(v.runs("www") && !v.runs("api"));
        v = step(&v, &mut f, Probe::Failed("x".into()));
        v = step(&v, &mut f, Probe::Failed("x".into()));
        assert!(!v.runs("www"), "down: nothing runs");
    }

    #[test]
    fn frontends_are_read_for_a_new_worker_and_periodically() {
        let t0 = Instant::now();
        let mut f = 0;
        let v = step(&HaproxyView::default(), &mut f, answered(1, Some(&["www"])));
        assert!(!wants_frontends(
            &v,
            1,
            Some(t0),
            t0 + Duration::from_secs(1)
        ));
        assert!(wants_frontends(
            &v,
            2,
            Some(t0),
            t0 + Duration::from_secs(1)
        ));
        assert!(wants_frontends(&v, 1, Some(t0), t0 + FRONTENDS_REFRESH));
        assert!(wants_frontends(&v, 1, None, t0));
        assert!(wants_frontends(&HaproxyView::default(), 1, Some(t0), t0));
    }
}
