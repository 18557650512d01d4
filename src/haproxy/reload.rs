//! Validate → install (keeping the last-known-good) → reload → confirm → roll back.
//!
//! `haproxy -c` is necessary but not sufficient (a port already in use
//! passes it and fails the reload), and in 2.6 neither the master's `reload`
//! nor the reload command's exit code says whether the new worker came up.
//! So a reload counts as done only when the master's `show proc` shows its
//! reload counter moved, no `[failed: N]`, and a new current worker. On
//! failure the previous files are put back, so the file on disk always
//! matches what the running worker loaded, and the old worker, which kept
//! serving, stays in charge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command as Process;
use tokio::time::{sleep, timeout, Instant};

use crate::fsutil::{read_optional, write_atomic};
use crate::model::observed::ProcStatus;

use super::bindcheck::{self, BindConflicts};
use super::master::MasterClient;
use super::render::Rendered;

/// Why a config could not be validated, installed or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("haproxy -c rejected the configuration: {0}")]
    Invalid(String),
    #[error("running {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reload command {command:?} failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("master socket: {0}")]
    Master(String),
    #[error("reload not confirmed: {0}")]
    NotConfirmed(String),
    /// Found before the reload was started: nothing was installed or signalled.
    #[error("reload not started: {0}")]
    Binds(#[from] BindConflicts),
}

/// Paths and commands of the local HAProxy.
#[derive(Debug, Clone)]
pub struct Installer {
    pub binary: PathBuf,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// Empty: send `reload` on the master socket.
    pub reload_command: Vec<String>,
    pub reload_timeout: Duration,
    pub master: MasterClient,
}

/// What was on disk before an install, to put back on failure.
#[derive(Debug, Default)]
pub struct Snapshot {
    files: BTreeMap<PathBuf, Option<Vec<u8>>>,
}

/// A confirmed reload.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub worker_pid: u32,
    pub took: Duration,
    pub old_workers: usize,
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

impl Installer {
    /// Runs `haproxy -c` on `rendered`, staged in a scratch directory with its data files.
    ///
    /// `render_staged` renders the same state with data paths inside the
    /// staging directory, so the candidate is checked with its own maps and
    /// certificates and nothing real is touched.
    pub async fn validate(
        &self,
        render_staged: impl FnOnce(&Path) -> Result<Rendered, String>,
    ) -> Result<(), ReloadError> {
        let dir = tempfile::Builder::new()
            .prefix("lb-agent-stage.")
            .tempdir()
            .map_err(|source| ReloadError::Write {
                path: std::env::temp_dir(),
                source,
            })?;
        let rendered = render_staged(dir.path()).map_err(ReloadError::Invalid)?;
        for (rel, body) in &rendered.files {
            let p = dir.path().join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|source| ReloadError::Write {
                    path: parent.into(),
                    source,
                })?;
            }
            std::fs::write(&p, body).map_err(|source| ReloadError::Write {
                path: p.clone(),
                source,
            })?;
        }
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, &rendered.config).map_err(|source| ReloadError::Write {
            path: cfg.clone(),
            source,
        })?;
        let out = run(
            &self.binary.display().to_string(),
            &["-c".into(), "-f".into(), cfg.display().to_string()],
            Duration::from_secs(60),
        )
        .await?;
        if out.0 {
            Ok(())
        } else {
            // Point at the staged path's line numbers but not at the scratch path.
            let text = out
                .1
                .replace(&dir.path().display().to_string(), "<candidate>");
            Err(ReloadError::Invalid(last_lines(&text, 6)))
        }
    }

    /// Refuses a candidate whose new binds would fail or share a port with
    /// another process ([`bindcheck`]): a failed bind makes HAProxy 2.6 pause
    /// every existing listener for about two seconds. Call it after
    /// [`validate`](Self::validate) and before [`install`](Self::install), so a
    /// refusal touches nothing.
    ///
    /// The installed config stands for what the running HAProxy holds (it is
    /// what the running worker loaded: a failed reload puts it back); the
    /// master's `show proc` gives the PIDs whose sockets are HAProxy's own
    /// (best effort: without them the installed config still says which).
    pub async fn check_binds(&self, rendered: &Rendered) -> Result<(), ReloadError> {
        let running = std::fs::read_to_string(&self.config).ok();
        let pids = match self.master.show_proc().await {
            Ok(p) => std::iter::once(p.master_pid)
                .chain(p.workers.iter().chain(&p.old_workers).map(|w| w.pid))
                .collect(),
            Err(_) => Default::default(),
        };
        let candidate = rendered.config.clone();
        // A walk of /proc/*/fd when a listener sits on a new port: off the runtime's threads.
        tokio::task::spawn_blocking(move || {
            bindcheck::check(&candidate, running.as_deref(), &pids)
        })
        .await
        .map_err(|e| ReloadError::Spawn {
            what: "bind check".into(),
            source: std::io::Error::other(e),
        })??;
        Ok(())
    }

    /// Writes the data files and then the config, atomically each; returns
    /// what was there before. The previous config is also kept as `<config>.lkg`.
    pub fn install(&self, rendered: &Rendered) -> Result<Snapshot, ReloadError> {
        let mut snap = Snapshot::default();
        let mut targets: Vec<(PathBuf, &[u8], u32)> = rendered
            .files
            .iter()
            .map(|(rel, body)| {
                let mode = if rel.starts_with("certs") {
                    0o600
                } else {
                    0o644
                };
                (self.data_dir.join(rel), body.as_slice(), mode)
            })
            .collect();
        targets.push((self.config.clone(), rendered.config.as_bytes(), 0o644));
        for (path, body, mode) in targets {
            let old = read_optional(&path).map_err(|source| ReloadError::Write {
                path: path.clone(),
                source,
            })?;
            if old.as_deref() == Some(body) {
                continue;
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| ReloadError::Write {
                    path: parent.into(),
                    source,
                })?;
            }
            if path == self.config {
                if let Some(o) = &old {
                    let lkg = lkg_path(&self.config);
                    write_atomic(&lkg, o, 0o644)
                        .map_err(|source| ReloadError::Write { path: lkg, source })?;
                }
            }
            snap.files.insert(path.clone(), old);
            if let Err(source) = write_atomic(&path, body, mode) {
                self.restore(snap);
                return Err(ReloadError::Write { path, source });
            }
        }
        Ok(snap)
    }

    /// Puts back what [`install`](Self::install) replaced (best effort; logged).
    pub fn restore(&self, snap: Snapshot) {
        for (path, old) in snap.files {
            let r = match old {
                Some(body) => write_atomic(&path, &body, 0o644),
                None => std::fs::remove_file(&path).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                }),
            };
            if let Err(error) = r {
                tracing::error!(%error, path = %path.display(), "restoring the last-known-good file failed");
            }
        }
    }

    /// `show proc`, retried while the master re-executes (its socket refuses for a moment).
    pub async fn proc_status(&self, within: Duration) -> Result<ProcStatus, ReloadError> {
        let deadline = Instant::now() + within;
        let mut last;
        loop {
            match self.master.show_proc().await {
                Ok(p) => return Ok(p),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(ReloadError::Master(last));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Triggers a reload and waits for `show proc` to confirm a new worker.
    pub async fn reload_and_confirm(&self) -> Result<ReloadOutcome, ReloadError> {
        let started = Instant::now();
        let before = self.proc_status(Duration::from_secs(5)).await?;
        if self.reload_command.is_empty() {
            self.master
                .reload()
                .await
                .map_err(|e| ReloadError::Master(e.to_string()))?;
        } else {
            let (ok, output) = run(
                &self.reload_command[0],
                &self.reload_command[1..],
                self.reload_timeout,
            )
            .await?;
            if !ok {
                return Err(ReloadError::Command {
                    command: self.reload_command.join(" "),
                    status: "non-zero exit".into(),
                    output: last_lines(&output, 6),
                });
            }
        }
        let deadline = started + self.reload_timeout;
        loop {
            sleep(Duration::from_millis(50)).await;
            if let Ok(now) = self.master.show_proc().await {
                let attempted = now.master_reloads > before.master_reloads
                    || now.master_pid != before.master_pid;
                if attempted {
                    if now.failed > 0 {
                        return Err(ReloadError::NotConfirmed(format!(
                            "master reports [failed: {}]; the previous worker {} keeps serving",
                            now.failed,
                            before
                                .current_worker()
                                .map(|p| p.to_string())
                                .unwrap_or_else(|| "-".into())
                        )));
                    }
                    match now.current_worker() {
                        Some(pid) if Some(pid) != before.current_worker() => {
                            return Ok(ReloadOutcome {
                                worker_pid: pid,
                                took: started.elapsed(),
                                old_workers: now.old_workers.len(),
                            })
                        }
                        // The counter moved but the new worker is not listed yet.
                        _ => {}
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(ReloadError::Timeout {
                    what: "reload confirmation (show proc)".into(),
                    after: self.reload_timeout,
                });
            }
        }
    }
}

/// The last-known-good copy of a config file.
pub fn lkg_path(config: &Path) -> PathBuf {
    let mut s = config.as_os_str().to_owned();
    s.push(".lkg");
    PathBuf::from(s)
}

/// Runs a program with a timeout; returns (success, stdout+stderr).
async fn run(
    program: &str,
    args: &[String],
    limit: Duration,
) -> Result<(bool, String), ReloadError> {
    let child = Process::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ReloadError::Spawn {
            what: program.to_string(),
            source,
        })?;
    let out = timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| ReloadError::Timeout {
            what: program.to_string(),
            after: limit,
        })?
        .map_err(|source| ReloadError::Spawn {
            what: program.to_string(),
            source,
        })?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}
