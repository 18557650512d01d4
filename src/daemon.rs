//! `lb-agent run`: wiring of the long-lived tasks, signals, sd-notify and shutdown.
//!
//! A *generation* is one set of tasks built from one agent.toml: status
//! socket, source poller, reconciler, anycast (health → gate → BIRD, VIP
//! addresses) and the snapshot builder that feeds the status socket,
//! metrics and systemd's STATUS line. SIGHUP validates the new agent.toml;
//! when it is valid the generation is stopped *keeping* announcements and a
//! new one starts (RELOADING=1 … READY=1); when it is not, the error is
//! logged and shown and the old generation keeps running. SIGTERM/SIGINT
//! stop the generation with the `on_stop` policy (withdraw first by
//! default), then the process exits.
//!
//! sd-notify: READY=1 only once the first document was fully applied (from
//! the API or the cache); WATCHDOG=1 comes from inside the reconcile loop,
//! so a wedged loop gets the agent restarted.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::anycast::{self, AnycastRequest, AnycastSettings, AnycastStatus};
use crate::bird::publisher::{BirdStatus, PublisherOptions};
use crate::config::{self, Config};
use crate::gate::Announcement;
use crate::haproxy::watch::HaproxyView;
use crate::health::monitor::HealthSnapshot;
use crate::health::{CheckResult, Checker};
use crate::metrics::CheckOutcome;
use crate::metrics::Metrics;
use crate::model::DesiredState;
use crate::reconcile::{
    Candidate, FrontendInstall, HaproxyStatus, Reconciler, ReconcilerSettings, Trigger,
};
use crate::source::{self, Accepted, Parser, SourceStatus};
use crate::status::types::{DrainInfo, ServiceStatus, Timestamp, VipStatus};
use crate::status::{Action, Request, ServerOptions, Snapshot, StatusServer};

/// How long running tasks get to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
/// Period of the snapshot refresh (check streaks change without flips).
const SNAPSHOT_PERIOD: Duration = Duration::from_millis(500);

/// The document parser the source uses: JSON → validated [`DesiredState`],
/// with logic snippets rendered and checked for this host and the VIPs
/// checked against `[vip]` and this host's networks (`vip::HostValidator`).
pub fn parser(cfg: &Config) -> Parser<DesiredState> {
    let validator = crate::vip::HostValidator::new(cfg);
    Arc::new(move |body: &[u8]| validator.parse(body).map_err(|e| e.to_string()))
}

/// Offers every document the source accepted to the reconciler, with its raw
/// body (the last-known-good cache) and whether it came from that cache.
pub async fn forward_candidates(
    mut docs: watch::Receiver<Option<Arc<Accepted<DesiredState>>>>,
    out: watch::Sender<Option<Candidate>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = docs.changed() => {
                if r.is_err() {
                    break;
                }
                let a = docs.borrow_and_update().clone();
                if let Some(a) = a {
                    out.send_replace(Some(Candidate { desired: a.doc.clone(), raw: Some(a.raw.clone()), from_cache: a.from_cache }));
                }
            }
        }
    }
}

/// Runs the checks through [`Checker`] and feeds every result to the metrics.
struct MeteredChecker {
    checker: Checker,
    metrics: Arc<Metrics>,
}

impl crate::health::monitor::CheckRunner for MeteredChecker {
    fn run(
        &self,
        check: Arc<crate::health::spec::ServiceCheck>,
    ) -> impl std::future::Future<Output = CheckResult> + Send + 'static {
        let checker = self.checker.clone();
        let metrics = self.metrics.clone();
        async move {
            let r = checker.check(&check.probe, check.timeout).await;
            let outcome = match (&r.ok, &r.error) {
                (true, _) => CheckOutcome::Ok,
                (false, Some(e)) if e.starts_with("timeout") => CheckOutcome::Timeout,
                _ => CheckOutcome::Fail,
            };
            metrics.observe_check(
                &check.key.vip.to_string(),
                &check.key.name,
                outcome,
                r.latency,
            );
            r
        }
    }
}

/// Creates the directories of every agent-owned file at start, so a missing
/// one is a clear start-up error (naming the key) rather than a warning on
/// every pass.
fn ensure_dirs(cfg: &Config) -> anyhow::Result<()> {
    let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
    let dirs = [
        ("node.state_dir", cfg.node.state_dir.clone()),
        ("source.cache", parent(&cfg.source.cache)),
        ("haproxy.state_file", parent(&cfg.haproxy.state_file)),
        ("haproxy.data_dir", cfg.haproxy.data_dir.clone()),
    ];
    for (key, dir) in dirs {
        if dir.as_os_str().is_empty() {
            continue;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the directory of {key} ({})", dir.display()))?;
    }
    Ok(())
}

/// How a generation ended.
enum Outcome {
    Stop,
    Reload(Box<Config>),
}

/// The signals the daemon reacts to, installed once.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(cfg: Config, config_path: &Path) -> anyhow::Result<()> {
    source::ensure_crypto_provider();
    let mut signals = Signals {
        term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
    };
    let mut cfg = cfg;
    let mut generation = 1u64;
    loop {
        match run_generation(&cfg, config_path, generation, &mut signals).await? {
            Outcome::Stop => {
                info!("stopped");
                return Ok(());
            }
            Outcome::Reload(new) => {
                cfg = *new;
                generation += 1;
            }
        }
    }
}

/// Everything one generation publishes, for the snapshot builder.
struct Feeds {
    source: watch::Receiver<SourceStatus>,
    haproxy: watch::Receiver<HaproxyStatus>,
    bird: watch::Receiver<BirdStatus>,
    anycast: watch::Receiver<AnycastStatus>,
    health: watch::Receiver<HealthSnapshot>,
}

// long: the daemon's wiring of one generation: build, spawn, wait, drain, in order; not split (issue 13 keeps src/daemon.rs as is)
async fn run_generation(
    cfg: &Config,
    config_path: &Path,
    generation: u64,
    signals: &mut Signals,
) -> anyhow::Result<Outcome> {
    ensure_dirs(cfg)?;
    let renderer = crate::setup::renderer(cfg)?;
    info!(config = %config_path.display(), node = %cfg.node.name, group = %cfg.node.group, generation, "lb-agent starting");

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Status socket first: a missing group or a socket in use stops the start here.
    let (snapshot_tx, snapshot_rx) = watch::channel(Snapshot::new(&cfg.node.name, &cfg.node.group));
    let metrics = Arc::new(Metrics::new(snapshot_rx.clone()));
    let (req_tx, mut req_rx) = mpsc::channel::<Request>(16);
    let server = StatusServer::bind(
        &ServerOptions::from_config(&cfg.status),
        snapshot_rx.clone(),
        req_tx,
        metrics.clone(),
    )
    .await
    .context("starting the status socket")?;
    {
        let cancel = cancel.clone();
        tracker.spawn(async move {
            if let Err(e) = server.run(cancel).await {
                error!(error = %e, "status socket stopped");
            }
        });
    }

    // Source → reconciler.
    let (doc_tx, doc_rx) = watch::channel::<Option<Arc<Accepted<DesiredState>>>>(None);
    let (source_status_tx, source_status) = watch::channel(SourceStatus::default());
    tracker.spawn(source::run(
        cfg.source.clone(),
        cfg.node.name.clone(),
        parser(cfg),
        doc_tx,
        source_status_tx,
        cancel.clone(),
    ));
    let (cand_tx, cand_rx) = watch::channel::<Option<Candidate>>(None);
    tracker.spawn(forward_candidates(doc_rx, cand_tx, cancel.clone()));

    let (haproxy_tx, haproxy_status) = watch::channel(HaproxyStatus::default());
    let (trigger_tx, trigger_rx) = mpsc::channel(8);
    let (applied_tx, applied_rx) = watch::channel::<Option<Arc<DesiredState>>>(None);
    let (install_tx, install_rx) = watch::channel(FrontendInstall::default());
    let (view_tx, view_rx) = watch::channel(HaproxyView::default());
    tracker.spawn(crate::haproxy::watch::run(
        cfg.haproxy.runtime_socket.clone(),
        view_tx,
        cancel.clone(),
    ));
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let reconciler = Reconciler::new(
        ReconcilerSettings {
            haproxy: cfg.haproxy.clone(),
            state_dir: cfg.node.state_dir.clone(),
            cache: cfg.source.cache.clone(),
            max_removal_ratio: cfg.source.max_removal_ratio,
            socket_timeout: Duration::from_secs(5),
        },
        renderer,
        haproxy_tx,
    )
    .with_applied(applied_tx)
    .with_install(install_tx)
    .with_haproxy_view(view_rx.clone())
    .with_watchdog(watchdog);
    tracker.spawn(reconciler.run(cand_rx, trigger_rx, cancel.clone()));

    // Anycast: watcher, monitor, health → gate → BIRD, VIP addresses. The
    // anycast task runs past `cancel` to carry out the stop policy, so it
    // has its own token; the monitor stops after it.
    let (bird_tx, bird_status) = watch::channel(BirdStatus::default());
    let (health_tx, health) = watch::channel(HealthSnapshot::default());
    let (anycast_tx, anycast_status) = watch::channel(AnycastStatus::default());
    let (checks_tx, checks_rx) = watch::channel(Vec::new());
    let (any_req_tx, any_req_rx) = mpsc::channel::<AnycastRequest>(8);
    let keep_on_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let anycast_cancel = CancellationToken::new();
    let adopted = anycast::adopted_prefixes(&cfg.bird);
    let monitor_cancel = CancellationToken::new();
    let checker = crate::health::Checker::new()
        .map_err(|e| anyhow::anyhow!("building the TLS client for checks: {e}"))?;
    let monitor_thread = crate::health::monitor::spawn_thread(
        Arc::new(MeteredChecker {
            checker,
            metrics: metrics.clone(),
        }),
        checks_rx,
        health_tx,
        crate::health::monitor::MonitorOptions {
            adopt: adopted.clone(),
        },
        monitor_cancel.clone(),
    )
    .context("starting the health monitor")?;
    let vips = match crate::vip::VipManager::open(
        crate::vip::NetlinkAddressOps::connect()?,
        &cfg.vip,
        &cfg.node.state_dir,
    ) {
        Ok(m) => m,
        // Fail closed, loudly: the manager touches no address and every
        // VIP stays withdrawn (with this reason) until the file is fixed.
        Err(e) => {
            error!(error = %e.error, "VIP ownership file unusable; every VIP stays withdrawn");
            *e.manager
        }
    };
    let h = &cfg.health;
    let anycast_task = tokio::spawn(anycast::run(
        AnycastSettings {
            health: cfg.health.clone(),
            bird: cfg.bird.clone(),
            vip: cfg.vip.clone(),
            checks: cfg.checks.clone(),
            state_dir: cfg.node.state_dir.clone(),
            publisher: PublisherOptions::default(),
            limits: anycast::policy::Limits {
                install: cfg.haproxy.min_reload_interval
                    + cfg.haproxy.reload_timeout
                    + h.interval * h.rise
                    + h.timeout,
            },
            adopted,
            keep_on_stop: keep_on_stop.clone(),
        },
        vips,
        anycast::BirdAnnouncer::new(&cfg.bird, PublisherOptions::default(), bird_tx),
        anycast::AnycastInputs {
            applied: applied_rx,
            install: install_rx,
            haproxy: view_rx,
            health: health.clone(),
            requests: any_req_rx,
        },
        anycast::AnycastOutputs {
            checks: checks_tx,
            status: anycast_tx,
        },
        anycast_cancel.clone(),
    ));

    // Operator requests from the status socket.
    {
        let cancel = cancel.clone();
        tracker.spawn(async move {
            loop {
                let req = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = req_rx.recv() => match r { Some(r) => r, None => break },
                };
                info!(action = ?req.action, peer = %req.peer, "operator request");
                match req.action {
                    Action::Drain { reason } => {
                        let (reply, rx) = tokio::sync::oneshot::channel();
                        let r = match any_req_tx
                            .send(AnycastRequest::Drain { reason, reply })
                            .await
                        {
                            Ok(()) => rx
                                .await
                                .unwrap_or_else(|_| Err("the anycast task stopped".into())),
                            Err(_) => Err("the anycast task stopped".into()),
                        };
                        let _ = req.reply.send(r);
                    }
                    Action::Undrain => {
                        let (reply, rx) = tokio::sync::oneshot::channel();
                        let r = match any_req_tx.send(AnycastRequest::Undrain { reply }).await {
                            Ok(()) => rx
                                .await
                                .unwrap_or_else(|_| Err("the anycast task stopped".into())),
                            Err(_) => Err("the anycast task stopped".into()),
                        };
                        let _ = req.reply.send(r);
                    }
                    Action::Reconcile => {
                        let r = trigger_tx
                            .send(Trigger::Reconcile)
                            .await
                            .map_err(|_| "the reconciler stopped".to_string());
                        let _ = req.reply.send(r);
                    }
                }
            }
        });
    }

    // Snapshot builder: status socket, metrics, systemd STATUS and READY.
    {
        let cancel = cancel.clone();
        let cfg = cfg.clone();
        let metrics = metrics.clone();
        let mut feeds = Feeds {
            source: source_status,
            haproxy: haproxy_status,
            bird: bird_status,
            anycast: anycast_status,
            health,
        };
        let started = crate::clock::wall();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(SNAPSHOT_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_status_line = String::new();
            let mut ready_sent = generation > 1;
            let mut last_apply = None;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                    _ = feeds.source.changed() => {}
                    _ = feeds.haproxy.changed() => {}
                    _ = feeds.bird.changed() => {}
                    _ = feeds.anycast.changed() => {}
                    _ = feeds.health.changed() => {}
                }
                let snap = build_snapshot(&cfg, &mut feeds, started);
                let h = feeds.haproxy.borrow().clone();
                if h.last_apply != last_apply {
                    last_apply = h.last_apply;
                    if let Some(s) = h.last_apply_seconds {
                        metrics.observe_apply(s);
                    }
                }
                let line = status_line(&snap);
                if !ready_sent && h.ready {
                    ready_sent = true;
                    info!(revision = ?snap.revision, "first document applied; ready");
                    notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
                    last_status_line = line.clone();
                } else if line != last_status_line {
                    notify(&[NotifyState::Status(&line)]);
                    last_status_line = line;
                }
                snapshot_tx.send_replace(snap);
            }
        });
    }
    tracker.close();
    if generation > 1 {
        notify(&[
            NotifyState::Ready,
            NotifyState::Status("configuration reloaded"),
        ]);
    }

    // Wait for a stop or a valid reload.
    let outcome = loop {
        tokio::select! {
            _ = signals.term.recv() => { info!(signal = "SIGTERM", "stopping"); break Outcome::Stop; }
            _ = signals.int.recv() => { info!(signal = "SIGINT", "stopping"); break Outcome::Stop; }
            _ = signals.hup.recv() => {
                info!(config = %config_path.display(), "SIGHUP: re-reading the configuration");
                match config::load(config_path) {
                    Ok(new) if new == *cfg => {
                        info!("configuration unchanged");
                    }
                    Ok(new) => match crate::setup::renderer(&new) {
                        // Valid on its own but not on this host (more pinned
                        // threads than allowed CPUs) or templates that do not
                        // load: the next generation could not start.
                        Err(e) => {
                            error!(error = format!("{e:#}"), "new configuration cannot be applied on this host; keeping the running one");
                            notify(&[NotifyState::Status("agent.toml cannot be applied, running the previous configuration (see journal)")]);
                        }
                        Ok(_) => {
                            notify(&[NotifyState::Reloading, NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("reloading"))]);
                            break Outcome::Reload(Box::new(new));
                        }
                    },
                    Err(e) => {
                        error!(errors = %e, "new configuration is invalid; keeping the running one");
                        notify(&[NotifyState::Status("agent.toml invalid, running the previous configuration (see journal)")]);
                    }
                }
            }
        }
    };

    // Stop this generation. A reload keeps announcements for the next generation.
    if matches!(outcome, Outcome::Stop) {
        notify(&[NotifyState::Stopping]);
    } else {
        keep_on_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    anycast_cancel.cancel();
    // At a stop, an unconfirmed withdrawal fails the process (after the
    // cleanup below), so that the unit's ExecStopPost reset runs.
    let stop_failure = match tokio::time::timeout(SHUTDOWN_GRACE, anycast_task).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => {
            error!(error = %format!("{e:#}"), "anycast task failed");
            Some(e)
        }
        Ok(Err(e)) => {
            error!(error = %e, "anycast task panicked");
            Some(anyhow::anyhow!("the anycast task panicked: {e}"))
        }
        Err(_) => {
            warn!("anycast task did not stop in time");
            Some(anyhow::anyhow!(
                "the anycast task did not stop within {}s",
                SHUTDOWN_GRACE.as_secs()
            ))
        }
    };
    monitor_cancel.cancel();
    let _ = tokio::task::spawn_blocking(move || monitor_thread.join()).await;
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!(grace = ?SHUTDOWN_GRACE, "tasks did not finish in time; going on anyway");
    }
    match (outcome, stop_failure) {
        (Outcome::Stop, Some(e)) => Err(e.context("stopping")),
        (outcome, _) => Ok(outcome),
    }
}

/// The services of `vip` for the status socket: health from the monitor,
/// and the gate's verdict (healthy, pending, unhealthy and why) from the view.
/// A service the monitor does not check (its frontend is not installed) is
/// listed from the view alone.
fn service_statuses(
    health: &HealthSnapshot,
    vip: &ipnet::IpNet,
    view: Option<&crate::gate::VipView>,
) -> Vec<ServiceStatus> {
    use crate::gate::ServiceState;
    let state_of = |name: &str| view.and_then(|v| v.services.iter().find(|s| s.name == name));
    let mut out: Vec<ServiceStatus> = health
        .services_of(vip)
        .map(|(_, st)| ServiceStatus {
            name: st.name.clone(),
            healthy: st.health.healthy,
            ok_streak: st.health.ok_streak,
            fail_streak: st.health.fail_streak,
            last_latency_ms: st.health.last_latency.map(|l| l.as_secs_f64() * 1e3),
            error: st.health.last_error.clone(),
            check: Some(st.kind.to_string()),
            ..Default::default()
        })
        .collect();
    for s in view.map(|v| v.services.as_slice()).unwrap_or_default() {
        if !out.iter().any(|o| o.name == s.name) {
            out.push(ServiceStatus {
                name: s.name.clone(),
                ..Default::default()
            });
        }
    }
    for o in &mut out {
        match state_of(&o.name).map(|s| &s.state) {
            Some(ServiceState::Healthy) => o.healthy = true,
            Some(ServiceState::Pending(why)) => {
                o.healthy = false;
                o.pending = true;
                o.reason = Some(why.clone());
            }
            Some(ServiceState::Unhealthy(why)) => {
                o.healthy = false;
                o.reason = why.clone();
            }
            None => {}
        }
    }
    out
}

/// systemd's one-line STATUS: "rev 1042, 3/3 VIPs announced".
fn status_line(s: &Snapshot) -> String {
    let announced = s.vips.iter().filter(|v| v.announced).count();
    let mut line = match s.revision {
        Some(r) => format!("rev {r}, {announced}/{} VIPs announced", s.vips.len()),
        None => "waiting for the first document".to_string(),
    };
    if s.drained {
        line.push_str(", drained");
    }
    if !s.haproxy.converged && s.revision.is_some() {
        line.push_str(", HAProxy not converged");
    }
    if let Some(e) = &s.haproxy.error {
        line.push_str(&format!(" ({})", e.chars().take(80).collect::<String>()));
    }
    line
}

fn build_snapshot(cfg: &Config, f: &mut Feeds, started: SystemTime) -> Snapshot {
    let mut snap = Snapshot::new(&cfg.node.name, &cfg.node.group);
    let src = f.source.borrow_and_update().clone();
    let hap = f.haproxy.borrow_and_update().clone();
    let bird = f.bird.borrow_and_update().clone();
    let any = f.anycast.borrow_and_update().clone();
    let health = f.health.borrow_and_update().clone();
    snap.revision = hap.revision;
    snap.source = (&src).into();
    snap.haproxy = (&hap).into();
    snap.bird = (&bird).into();
    snap.drained = any.drain.is_some();
    snap.drain = any.drain.as_ref().map(|d| DrainInfo {
        reason: d.reason.clone(),
        since: Some(Timestamp(d.since)),
        by: None,
        withdraw_at: any.drain_withdraw_at.map(Timestamp),
    });
    let confirmed = bird.announced.clone().unwrap_or_default();
    let in_sets = confirmed.all();
    snap.vips = any
        .decisions
        .iter()
        .map(|d| {
            // `announced` is what BIRD was confirmed to run, not what the
            // agent wants: a withdrawal that could not be written (full disk,
            // BIRD refusing) leaves the prefix announced, and says so.
            let in_bird = confirmed.advertise.contains(&d.vip);
            let exported = crate::bird::exports::vip_exported(
                &bird.export_scope,
                in_sets.contains(&d.vip),
                &bird.not_exported,
                &d.vip,
            );
            let bird_error = bird
                .error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            let reason = match (&d.announcement, in_bird) {
                (Announcement::Advertise, true) => None,
                (Announcement::Advertise, false) => {
                    Some(format!("waiting for BIRD to confirm{bird_error}"))
                }
                (_, true) => Some(format!(
                    "{}; BIRD still announces it (the change is not confirmed{bird_error})",
                    d.reason.as_deref().unwrap_or("withdrawn")
                )),
                _ => d.reason.clone(),
            };
            let view = any.views.iter().find(|v| v.vip == d.vip);
            let services = service_statuses(&health, &d.vip, view);
            VipStatus {
                address: d.vip.to_string(),
                announced: in_bird,
                reason,
                services,
                since: any.announced_since.get(&d.vip).copied().map(Timestamp),
                adopted: any.adopted.contains(&d.vip),
                draining: d.announcement == Announcement::Drain,
                demoted: d.announcement == Announcement::Demote,
                exported,
            }
        })
        .collect();
    snap.started_at = Some(Timestamp(started));
    snap.updated_at = Some(Timestamp(crate::clock::wall()));
    snap
}
