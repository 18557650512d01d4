//! `lb-agent run`: wiring of the long-lived tasks, signals and shutdown.
//!
//! Building the configuration has no side effects; then the tasks are
//! spawned (source poller → reconciler), and the daemon waits for SIGTERM or
//! SIGINT, cancels everything and gives the tasks a bounded grace period to
//! finish their current step.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::haproxy::render::{RenderSettings, Renderer};
use crate::model::validate::{parse_document, ValidateContext};
use crate::model::DesiredState;
use crate::reconcile::{Candidate, HaproxyStatus, Reconciler, ReconcilerSettings};
use crate::source::{self, Accepted, Parser, SourceStatus};

/// How long running tasks get to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The renderer for a configuration (templates + host settings).
pub fn renderer(cfg: &Config) -> anyhow::Result<Renderer> {
    let h = &cfg.haproxy;
    Renderer::new(
        Some(&h.templates),
        RenderSettings {
            runtime_socket: h.runtime_socket.clone(),
            state_file: h.state_file.clone(),
            hard_stop_after: h.hard_stop_after,
            data_dir: h.data_dir.clone(),
            slot_policy_pow2: h.server_slots == crate::config::SlotPolicy::Pow2,
            node_name: cfg.node.name.clone(),
            node_group: cfg.node.group.clone(),
            node_az: cfg.node.az.clone(),
        },
    )
    .context("loading templates")
}

/// The document parser the source uses: JSON → validated [`DesiredState`].
pub fn parser(group: &str) -> Parser<DesiredState> {
    let ctx = ValidateContext {
        group: group.to_string(),
    };
    Arc::new(move |body: &[u8]| parse_document(body, &ctx).map_err(|e| e.to_string()))
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(cfg: Config, config_path: &Path) -> anyhow::Result<()> {
    source::ensure_crypto_provider();
    std::fs::create_dir_all(&cfg.node.state_dir)
        .with_context(|| format!("creating state_dir {}", cfg.node.state_dir.display()))?;
    let renderer = renderer(&cfg)?;
    info!(config = %config_path.display(), node = %cfg.node.name, group = %cfg.node.group, "lb-agent starting");

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Source → reconciler.
    let (doc_tx, mut doc_rx) = watch::channel::<Option<Arc<Accepted<DesiredState>>>>(None);
    let (source_status_tx, _source_status) = watch::channel(SourceStatus::default());
    tracker.spawn(source::run(
        cfg.source.clone(),
        cfg.node.name.clone(),
        parser(&cfg.node.group),
        doc_tx,
        source_status_tx,
        cancel.clone(),
    ));

    let (cand_tx, cand_rx) = watch::channel::<Option<Candidate>>(None);
    {
        let cancel = cancel.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = doc_rx.changed() => {
                        if r.is_err() { break; }
                        let a = doc_rx.borrow_and_update().clone();
                        if let Some(a) = a {
                            cand_tx.send_replace(Some(Candidate { desired: a.doc.clone(), raw: Some(a.raw.clone()), from_cache: a.from_cache }));
                        }
                    }
                }
            }
        });
    }

    let (status_tx, _status) = watch::channel(HaproxyStatus::default());
    let (_trigger_tx, trigger_rx) = mpsc::channel(8);
    let reconciler = Reconciler::new(
        ReconcilerSettings {
            haproxy: cfg.haproxy.clone(),
            state_dir: cfg.node.state_dir.clone(),
            cache: cfg.source.cache.clone(),
            max_removal_ratio: cfg.source.max_removal_ratio,
            socket_timeout: Duration::from_secs(5),
        },
        renderer,
        status_tx,
    );
    tracker.spawn(reconciler.run(cand_rx, trigger_rx, cancel.clone()));
    tracker.close();

    wait_for_stop().await?;
    info!("stopping");
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!(grace = ?SHUTDOWN_GRACE, "tasks did not finish in time; exiting anyway");
    }
    info!("stopped");
    Ok(())
}

async fn wait_for_stop() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "signal received"),
        _ = int.recv() => info!(signal = "SIGINT", "signal received"),
    }
    Ok(())
}
