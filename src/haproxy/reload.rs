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
//!
//! File hygiene: certificate files (they hold private keys) are written
//! 0600 and stay 0600 through every rollback; every other copy the installer
//! makes (`haproxy.cfg.lkg`, the rolled-back files) keeps the mode of what
//! it copies (for a `haproxy.cfg` that is a symlink, the mode of the file it
//! points to); files of maps, ACLs and certificates that left the document
//! are removed once a reload without them is confirmed
//! ([`Installer::remove_stale`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command as Process;
use tokio::time::{sleep, timeout, Instant};

use crate::fsutil::{mode_of, read_optional, write_atomic};
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
    /// Path → previous content and permission bits (`None`: it did not exist).
    files: BTreeMap<PathBuf, Option<(Vec<u8>, u32)>>,
}

/// Mode of a map or ACL file the agent writes.
const DATA_MODE: u32 = 0o644;
/// Mode of a certificate file (it holds the private key).
const CERT_MODE: u32 = 0o600;
/// Mode of a new haproxy.cfg (an existing one keeps its mode).
const CONFIG_MODE: u32 = 0o644;

/// The data-file kinds the agent owns below `data_dir`: (subdirectory, extension).
const DATA_KINDS: &[(&str, &str)] = &[("maps", "map"), ("acls", "acl"), ("certs", "pem")];

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
        // The staging directory is private (0700); the files in it are too,
        // certificates included.
        for (rel, body) in &rendered.files {
            let p = dir.path().join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|source| ReloadError::Write {
                    path: parent.into(),
                    source,
                })?;
            }
            write_private(&p, body).map_err(|source| ReloadError::Write {
                path: p.clone(),
                source,
            })?;
        }
        let cfg = dir.path().join("haproxy.cfg");
        write_private(&cfg, rendered.config.as_bytes()).map_err(|source| ReloadError::Write {
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
    /// what was there before. The previous config is also kept as `<config>.lkg`,
    /// with the mode of the file it copies.
    pub fn install(&self, rendered: &Rendered) -> Result<Snapshot, ReloadError> {
        let mut snap = Snapshot::default();
        let mut targets: Vec<(PathBuf, &[u8])> = rendered
            .files
            .iter()
            .map(|(rel, body)| (self.data_dir.join(rel), body.as_slice()))
            .collect();
        targets.push((self.config.clone(), rendered.config.as_bytes()));
        for (path, body) in targets {
            let werr = |source| ReloadError::Write {
                path: path.clone(),
                source,
            };
            let old = read_optional(&path).map_err(werr)?;
            let old_mode = mode_of(&path).map_err(werr)?;
            if old.as_deref() == Some(body) && old_mode.map(|m| self.mode_for(&path, m)) == old_mode
            {
                continue;
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| ReloadError::Write {
                    path: parent.into(),
                    source,
                })?;
            }
            let old = old.map(|b| (b, old_mode.unwrap_or(CONFIG_MODE)));
            if path == self.config {
                if let Some((o, mode)) = &old {
                    let lkg = lkg_path(&self.config);
                    write_atomic(&lkg, o, *mode)
                        .map_err(|source| ReloadError::Write { path: lkg, source })?;
                }
            }
            let mode = self.mode_for(&path, old.as_ref().map_or(CONFIG_MODE, |o| o.1));
            snap.files.insert(path.clone(), old);
            if let Err(source) = write_atomic(&path, body, mode) {
                self.restore(snap);
                return Err(ReloadError::Write { path, source });
            }
        }
        Ok(snap)
    }

    /// The mode a file gets: certificates 0600; maps and ACLs 0644; the
    /// config keeps `existing` (the mode it has now, or 0644 when new).
    fn mode_for(&self, path: &Path, existing: u32) -> u32 {
        if *path == self.config {
            existing
        } else if path.starts_with(self.data_dir.join("certs")) {
            CERT_MODE
        } else {
            DATA_MODE
        }
    }

    /// Puts back what [`install`](Self::install) replaced (best effort; logged),
    /// each file with the mode it had (a certificate never looser than 0600).
    pub fn restore(&self, snap: Snapshot) {
        for (path, old) in snap.files {
            let r = match old {
                Some((body, mode)) => {
                    let mode = if path.starts_with(self.data_dir.join("certs")) {
                        mode & CERT_MODE
                    } else {
                        mode
                    };
                    write_atomic(&path, &body, mode)
                }
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

    /// Removes the map, ACL and certificate files below `data_dir` that
    /// `current` no longer has; returns the paths removed.
    ///
    /// Call it only after a reload of `current` was confirmed: until then the
    /// running worker may still refer to them (and a rollback needs them).
    /// Only files the agent owns are touched: `maps/NAME.map`,
    /// `acls/NAME.acl`, `certs/NAME.pem` with NAME a valid object name;
    /// a symlink is removed, never followed.
    pub fn remove_stale(&self, current: &Rendered) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for (sub, ext) in DATA_KINDS {
            let dir = self.data_dir.join(sub);
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    tracing::warn!(%error, dir = %dir.display(), "listing data files failed");
                    continue;
                }
            };
            for e in entries.flatten() {
                let path = e.path();
                let owned = path.extension().is_some_and(|x| x == *ext)
                    && path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .is_some_and(|s| crate::model::Name::try_new(s).is_ok());
                let rel = PathBuf::from(sub).join(e.file_name());
                let kind = std::fs::symlink_metadata(&path).map(|m| m.file_type());
                let file_like = kind.is_ok_and(|t| t.is_file() || t.is_symlink());
                if !owned || !file_like || current.files.contains_key(&rel) {
                    continue;
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => removed.push(path),
                    Err(error) => {
                        tracing::warn!(%error, path = %path.display(), "removing a stale data file failed")
                    }
                }
            }
        }
        if !removed.is_empty() {
            tracing::info!(
                count = removed.len(),
                "data files that left the document removed"
            );
        }
        removed
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

/// Creates (or truncates) a file readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::haproxy::render::{RenderSettings, Renderer};

    fn installer(dir: &Path) -> Installer {
        Installer {
            binary: "/usr/sbin/haproxy".into(),
            config: dir.join("haproxy.cfg"),
            data_dir: dir.join("data"),
            reload_command: vec![],
            reload_timeout: Duration::from_secs(1),
            master: MasterClient::new(dir.join("master.sock"), Duration::from_secs(1)),
        }
    }

    /// A render of a document with the given maps and certificates (by name).
    fn rendered(data_dir: &Path, maps: &[&str], certs: &[(&str, &str)]) -> Rendered {
        let body = serde_json::json!({
            "schema": 1, "revision": 1, "group": "blue",
            "maps": maps.iter().map(|m| serde_json::json!({"name": m, "entries": {"a": "b"}})).collect::<Vec<_>>(),
            "certificates": certs.iter().map(|(n, pem)| serde_json::json!({"name": n, "pem": pem})).collect::<Vec<_>>(),
        });
        let d = crate::model::validate::parse_document(
            &serde_json::to_vec(&body).unwrap(),
            &crate::model::validate::ValidateContext {
                group: "blue".into(),
            },
        )
        .unwrap();
        let r = Renderer::new(
            None,
            RenderSettings {
                runtime_socket: "/run/admin.sock".into(),
                state_file: "/run/state".into(),
                hard_stop_after: Duration::from_secs(1),
                data_dir: data_dir.into(),
                slot_policy_pow2: true,
                node_name: "lb1".into(),
                node_group: "blue".into(),
                node_az: None,
                global: Default::default(),
            },
        )
        .unwrap();
        r.render(&d, data_dir).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    const PEM_A: &str = "-----BEGIN PRIVATE KEY-----\nA\n-----END PRIVATE KEY-----\n";
    const PEM_B: &str = "-----BEGIN PRIVATE KEY-----\nB\n-----END PRIVATE KEY-----\n";

    #[test]
    fn certificate_keys_stay_0600_through_install_and_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let inst = installer(dir.path());
        let cert = inst.data_dir.join("certs/c.pem");
        inst.install(&rendered(&inst.data_dir, &[], &[("c", PEM_A)]))
            .unwrap();
        assert_eq!(mode(&cert), 0o600);
        let snap = inst
            .install(&rendered(&inst.data_dir, &[], &[("c", PEM_B)]))
            .unwrap();
        assert_eq!(mode(&cert), 0o600);
        // The failed reload's rollback puts the old key back, still 0600.
        inst.restore(snap);
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), PEM_A);
        assert_eq!(mode(&cert), 0o600);
        // A key left world-readable (by an older agent) is tightened on the next install.
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
        inst.install(&rendered(&inst.data_dir, &[], &[("c", PEM_A)]))
            .unwrap();
        assert_eq!(mode(&cert), 0o600);
    }

    #[test]
    fn lkg_keeps_the_mode_of_a_symlinked_root_only_config() {
        let dir = tempfile::tempdir().unwrap();
        let inst = installer(dir.path());
        let secret = dir.path().join("root-only.cfg");
        std::fs::write(&secret, "global\n    # a secret\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&secret, &inst.config).unwrap();
        let snap = inst.install(&rendered(&inst.data_dir, &[], &[])).unwrap();
        let lkg = lkg_path(&inst.config);
        assert_eq!(
            std::fs::read_to_string(&lkg).unwrap(),
            "global\n    # a secret\n"
        );
        assert_eq!(
            mode(&lkg),
            0o600,
            "the copy must not be looser than what it copies"
        );
        assert_eq!(mode(&inst.config), 0o600, "the config keeps its mode");
        inst.restore(snap);
        assert_eq!(mode(&inst.config), 0o600);
        // No temporary files left in the directory.
        let stray: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }

    #[test]
    fn stale_data_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let inst = installer(dir.path());
        inst.install(&rendered(&inst.data_dir, &["m1", "m2"], &[("c1", PEM_A)]))
            .unwrap();
        let foreign = [
            inst.data_dir.join("maps/notes.txt"),
            inst.data_dir.join("maps/bad name.map"),
            inst.data_dir.join("certs/operator.key"),
        ];
        for f in &foreign {
            std::fs::write(f, "keep").unwrap();
        }
        let outside = dir.path().join("outside.pem");
        std::fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, inst.data_dir.join("certs/link.pem")).unwrap();
        let now = rendered(&inst.data_dir, &["m2"], &[]);
        inst.install(&now).unwrap();
        let mut removed = inst.remove_stale(&now);
        removed.sort();
        assert_eq!(
            removed,
            vec![
                inst.data_dir.join("certs/c1.pem"),
                inst.data_dir.join("certs/link.pem"),
                inst.data_dir.join("maps/m1.map"),
            ]
        );
        assert!(inst.data_dir.join("maps/m2.map").exists());
        for f in foreign.iter().chain([&outside]) {
            assert!(f.exists(), "{} must be kept", f.display());
        }
        assert!(inst.remove_stale(&now).is_empty());
    }
}
