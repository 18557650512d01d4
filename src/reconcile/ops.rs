//! The reconciler's executor: everything it does to the local HAProxy, behind
//! one trait so the loop can run against a scripted HAProxy under paused
//! time in unit tests, and against the real one ([`RealHaproxy`]) in the
//! agent and the integration tests.
//!
//! Executors are thin: they carry out one action and report its result.
//! The only state they keep is caches that make repeated work cheap
//! (the digest of what was last written, of what last passed `haproxy -c`);
//! every decision stays in [`super::policy`].

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::fsutil::{read_optional, write_atomic};
use crate::haproxy::master::MasterClient;
use crate::haproxy::reload::{Installer, ReloadError, ReloadOutcome};
use crate::haproxy::render::{acl_path, cert_path, embedded_structure_digest, map_path};
use crate::haproxy::render::{Rendered, Renderer};
use crate::haproxy::runtime::{ApplyReport, RuntimeClient, Session};
use crate::haproxy::state_file;
use crate::model::observed::{ObservedData, ObservedServers, ProcStatus};
use crate::model::DesiredState;
use crate::plan::{Command, Structure};

use super::policy::LoadedRecord;
use super::ReconcilerSettings;

/// What one observation of HAProxy returned.
#[derive(Debug, Clone)]
pub struct Observed {
    /// `show servers state`.
    pub servers: ObservedServers,
    /// Maps, ACLs and certificates of the document's data files.
    pub data: ObservedData,
}

/// What the agent can read from disk about the running config (for
/// [`super::policy::resolve_loaded`]).
#[derive(Debug, Clone, Default)]
pub struct LoadedHints {
    /// The record of the last confirmed reload.
    pub record: Option<LoadedRecord>,
    /// The structure digest embedded in the config file on disk.
    pub file_digest: Option<String>,
}

/// The actions the reconciler takes on HAProxy.
///
/// Every method reports its outcome; none retries on its own beyond what
/// the protocol needs (the master socket refuses while it re-executes).
pub trait HaproxyOps: Send + 'static {
    /// The reload-relevant structure of `d` (templates included). Pure.
    fn structure(&self, d: &DesiredState) -> Structure;
    /// The master's `show proc`, bounded.
    fn proc_status(&mut self) -> impl Future<Output = Result<ProcStatus, String>> + Send;
    /// Opens the runtime session (if not open) and reads servers and the
    /// document's data files.
    fn observe(
        &mut self,
        d: &DesiredState,
    ) -> impl Future<Output = Result<Observed, String>> + Send;
    /// Opens the runtime session (if not open) and reads the servers of
    /// `backends` alone: the observation of a scoped pass
    /// ([`crate::plan::scope`]).
    fn observe_backends(
        &mut self,
        backends: &[String],
    ) -> impl Future<Output = Result<ObservedServers, String>> + Send;
    /// Sends runtime commands on the open session.
    fn apply(
        &mut self,
        cmds: &[Command],
    ) -> impl Future<Output = Result<ApplyReport, String>> + Send;
    /// Ends the runtime session.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
    /// `haproxy -c` on the rendered candidate (cached by rendered content).
    fn validate(
        &mut self,
        d: &DesiredState,
    ) -> impl Future<Output = Result<(), ReloadError>> + Send;
    /// Makes the config and data files on disk equal to `d`'s render without
    /// a reload (validating first when they differ); with `dump_state`, the
    /// server-state file is rewritten too. Returns whether anything was written.
    fn persist(
        &mut self,
        d: &DesiredState,
        dump_state: bool,
    ) -> impl Future<Output = Result<bool, ReloadError>> + Send;
    /// Installs `d` (keeping the last-known-good), dumps server state,
    /// reloads and waits for confirmation; on failure puts the previous
    /// files back.
    fn reload(
        &mut self,
        d: &DesiredState,
    ) -> impl Future<Output = Result<ReloadOutcome, ReloadError>> + Send;
    /// Bind addresses of `d` this host does not have (a VIP being added).
    fn unbindable(&self, d: &DesiredState) -> Vec<IpAddr>;
    /// What the disk says about the running config.
    fn loaded_hints(&self) -> LoadedHints;
    /// Records what a confirmed reload loaded.
    fn record_loaded(&self, r: &LoadedRecord) -> Result<(), String>;
    /// Stores a document as the last-known-good cache.
    fn store_cache(&self, raw: &[u8]) -> Result<(), String>;
    /// Forgets the caches: the next persist re-renders and re-compares.
    fn forget(&mut self);
}

/// The real HAProxy: runtime socket, master CLI, renderer and installer.
pub struct RealHaproxy {
    renderer: Renderer,
    runtime: RuntimeClient,
    installer: Installer,
    session: Option<Session>,
    data_dir: PathBuf,
    state_file: PathBuf,
    record: PathBuf,
    cache: PathBuf,
    /// Digest of the render last written by a persist or a reload.
    persisted: Option<String>,
    /// Digest of the render that last passed `haproxy -c`.
    validated: Option<String>,
}

impl RealHaproxy {
    /// Builds the executor for these settings.
    pub fn new(s: &ReconcilerSettings, renderer: Renderer) -> RealHaproxy {
        let h = &s.haproxy;
        RealHaproxy {
            renderer,
            runtime: RuntimeClient::new(&h.runtime_socket, s.socket_timeout),
            installer: Installer {
                binary: h.binary.clone(),
                config: h.config.clone(),
                data_dir: h.data_dir.clone(),
                reload_command: h.reload_command.clone(),
                reload_timeout: h.reload_timeout,
                master: MasterClient::new(&h.master_socket, s.socket_timeout),
            },
            session: None,
            data_dir: h.data_dir.clone(),
            state_file: h.state_file.clone(),
            record: s.state_dir.join("haproxy-loaded.json"),
            cache: s.cache.clone(),
            persisted: None,
            validated: None,
        }
    }

    fn render(&self, d: &DesiredState) -> Result<Rendered, ReloadError> {
        off_runtime(|| self.renderer.render(d, &self.data_dir))
            .map_err(|e| ReloadError::Invalid(e.to_string()))
    }

    fn differs_from_disk(&self, r: &Rendered) -> bool {
        let read = |p: &std::path::Path| read_optional(p).ok().flatten();
        read(&self.installer.config).as_deref() != Some(r.config.as_bytes())
            || r.files
                .iter()
                .any(|(rel, b)| read(&self.data_dir.join(rel)).as_deref() != Some(b.as_slice()))
    }

    /// Dumps `show servers state`, filtered against `d`'s layout, into the server-state file.
    async fn write_state_file(&mut self, d: &DesiredState) {
        let dump = match self.runtime.connect().await {
            Ok(mut s) => {
                let r = s.servers_state_raw().await;
                s.quit().await;
                r
            }
            Err(e) => Err(e),
        };
        match dump {
            Ok(text) => {
                let layout = state_file::layout_of(d, self.renderer.settings().slot_policy());
                let (text, dropped) = state_file::filter(&text, &layout);
                match write_atomic(&self.state_file, text.as_bytes(), 0o644) {
                    Ok(()) => debug!(dropped, "server-state file written"),
                    Err(error) => {
                        warn!(%error, path = %self.state_file.display(), "writing the server-state file failed")
                    }
                }
            }
            Err(error) => {
                warn!(%error, "could not dump server state; the next reload starts servers from the config")
            }
        }
    }

    async fn session(&mut self) -> Result<&mut Session, String> {
        if self.session.is_none() {
            self.session = Some(self.runtime.connect().await.map_err(|e| e.to_string())?);
        }
        Ok(self.session.as_mut().expect("just opened"))
    }

    fn data_files(&self, d: &DesiredState) -> [Vec<String>; 3] {
        let path = |rel: PathBuf| self.data_dir.join(rel).display().to_string();
        [
            crate::plan::az::all_maps(d)
                .iter()
                .map(|m| path(map_path(m.name.as_str())))
                .collect(),
            d.acls.keys().map(|n| path(acl_path(n.as_str()))).collect(),
            d.certificates
                .keys()
                .map(|n| path(cert_path(n.as_str())))
                .collect(),
        ]
    }
}

/// Digest of a rendered config and its data files.
/// Runs CPU-bound work without holding an async worker: rendering runs the
/// document's templates (bounded by fuel, docs/logic.md) and takes tens of
/// milliseconds for large documents. On the daemon's multi-thread runtime
/// the worker first hands its other tasks to another thread, so the status
/// socket, the health loop and signals keep being served; on a
/// current-thread runtime (the paused-time tests) it runs inline.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn rendered_digest(r: &Rendered) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(r.config.as_bytes());
    for (p, b) in &r.files {
        h.update(p.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(b);
    }
    hex::encode(h.finalize())
}

impl HaproxyOps for RealHaproxy {
    fn structure(&self, d: &DesiredState) -> Structure {
        self.renderer.structure(d)
    }

    async fn proc_status(&mut self) -> Result<ProcStatus, String> {
        self.installer
            .proc_status(Duration::from_secs(2))
            .await
            .map_err(|e| e.to_string())
    }

    async fn observe(&mut self, d: &DesiredState) -> Result<Observed, String> {
        let [maps, acls, certs] = self.data_files(d);
        let r = async {
            let s = self.session().await?;
            let servers = s.servers_state().await.map_err(|e| e.to_string())?;
            let data = s
                .data(&maps, &acls, &certs)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Observed { servers, data })
        }
        .await;
        if r.is_err() {
            // A broken session is not reused.
            self.session = None;
        }
        r
    }

    async fn observe_backends(&mut self, backends: &[String]) -> Result<ObservedServers, String> {
        let r = async {
            let s = self.session().await?;
            let mut out = ObservedServers::default();
            for b in backends {
                let one = s
                    .servers_state_of(b)
                    .await
                    .map_err(|e| format!("{b}: {e}"))?;
                out.backends.extend(one.backends);
            }
            Ok(out)
        }
        .await;
        if r.is_err() {
            self.session = None;
        }
        r
    }

    async fn apply(&mut self, cmds: &[Command]) -> Result<ApplyReport, String> {
        let r = match self.session().await {
            Ok(s) => s.apply(cmds).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.session = None;
        }
        r
    }

    async fn close(&mut self) {
        if let Some(s) = self.session.take() {
            s.quit().await;
        }
    }

    async fn validate(&mut self, d: &DesiredState) -> Result<(), ReloadError> {
        let digest = rendered_digest(&self.render(d)?);
        if self.validated.as_deref() == Some(digest.as_str()) {
            return Ok(());
        }
        let r = &self.renderer;
        self.installer
            .validate(|dir| off_runtime(|| r.render(d, dir)).map_err(|e| e.to_string()))
            .await?;
        self.validated = Some(digest);
        Ok(())
    }

    async fn persist(&mut self, d: &DesiredState, dump_state: bool) -> Result<bool, ReloadError> {
        let rendered = self.render(d)?;
        let digest = rendered_digest(&rendered);
        if self.persisted.as_deref() == Some(digest.as_str()) {
            return Ok(false);
        }
        let wrote = self.differs_from_disk(&rendered);
        if wrote {
            self.validate(d).await?;
            self.installer.install(&rendered)?;
            info!(path = %self.installer.config.display(), "configuration file updated (no reload needed)");
            if dump_state {
                self.write_state_file(d).await;
            }
        }
        self.persisted = Some(digest);
        Ok(wrote)
    }

    async fn reload(&mut self, d: &DesiredState) -> Result<ReloadOutcome, ReloadError> {
        self.validate(d).await?;
        let rendered = self.render(d)?;
        // A bind that would fail pauses every existing listener for ~2 s
        // (docs/reliability.md, "Failed reloads"): refuse before touching files.
        self.installer.check_binds(&rendered).await?;
        let snapshot = self.installer.install(&rendered)?;
        self.write_state_file(d).await;
        match self.installer.reload_and_confirm().await {
            Ok(o) => {
                self.persisted = Some(rendered_digest(&rendered));
                // The new worker loaded only what this render names: files
                // that left the document are nobody's now.
                self.installer.remove_stale(&rendered);
                Ok(o)
            }
            Err(e) => {
                self.installer.restore(snapshot);
                self.persisted = None;
                Err(e)
            }
        }
    }

    fn unbindable(&self, d: &DesiredState) -> Vec<IpAddr> {
        unbindable_addresses(d)
    }

    fn loaded_hints(&self) -> LoadedHints {
        LoadedHints {
            record: read_optional(&self.record)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice(&b).ok()),
            file_digest: read_optional(&self.installer.config)
                .ok()
                .flatten()
                .and_then(|b| embedded_structure_digest(&String::from_utf8_lossy(&b))),
        }
    }

    fn record_loaded(&self, r: &LoadedRecord) -> Result<(), String> {
        let body = serde_json::to_vec(r).map_err(|e| e.to_string())?;
        write_atomic(&self.record, &body, 0o644).map_err(|e| e.to_string())
    }

    fn store_cache(&self, raw: &[u8]) -> Result<(), String> {
        write_atomic(&self.cache, raw, 0o640).map_err(|e| e.to_string())
    }

    fn forget(&mut self) {
        self.persisted = None;
        self.validated = None;
    }
}

/// Frontend bind addresses this host cannot bind (not local yet).
///
/// Tried the way HAProxy will: binding a TCP socket to the address with an
/// ephemeral port. Only "address not available" counts; any other error
/// (permissions, exhausted ports) is left to the reload to report.
pub fn unbindable_addresses(d: &DesiredState) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = d
        .frontends
        .values()
        .flat_map(|f| f.bind.iter().map(|b| b.ip()))
        .collect();
    ips.sort();
    ips.dedup();
    ips.into_iter()
        .filter(|ip| match std::net::TcpListener::bind((*ip, 0)) {
            Ok(_) => false,
            Err(e) => e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On one worker thread, a render held inline would stop every other
    /// task (the status socket, the health loop) for its duration.
    #[test]
    fn cpu_bound_work_leaves_the_worker_to_other_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ticks = rt.block_on(async {
            let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
            let t = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            tokio::task::yield_now().await;
            let during = tokio::spawn({
                let ticks = ticks.clone();
                async move {
                    off_runtime(|| {
                        let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(300));
                        ticks.load(std::sync::atomic::Ordering::Relaxed) - before
                    })
                }
            })
            .await
            .unwrap();
            ticker.abort();
            during
        });
        assert!(ticks >= 5, "the other task ran {ticks} times in 300 ms");
    }

    #[test]
    fn addresses_not_on_the_host_are_found_before_a_reload() {
        let body = serde_json::json!({
            "schema": 1, "revision": 1, "group": "blue",
            "vips": [{"address": "127.0.0.0/8"}, {"address": "192.0.2.77/32"}],
            "frontends": [
                {"name": "local", "bind": ["127.0.0.5:80"], "mode": "tcp"},
                {"name": "vip", "bind": ["192.0.2.77:80"], "mode": "tcp"}
            ]
        });
        let d = crate::model::validate::parse_document(
            &serde_json::to_vec(&body).unwrap(),
            &crate::model::validate::ValidateContext {
                group: "blue".into(),
            },
        )
        .unwrap();
        // 127/8 is always local; 192.0.2.77 (TEST-NET-1) is on no interface of a test host.
        assert_eq!(
            unbindable_addresses(&d),
            vec!["192.0.2.77".parse::<IpAddr>().unwrap()]
        );
    }
}
