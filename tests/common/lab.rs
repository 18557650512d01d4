//! Test harness: the anycast lab of docs/architecture.md ("The test labs") driven by the real
//! `lb-agent` binary.
//!
//! Topology (every name carries a unique suffix, see [`super::netns`]):
//!
//! ```text
//!   client 10.0.9.2 ── tor (BIRD AS65000, merge paths on, ip_forward=1, L4 hash)
//!                      ├── lb1 10.0.1.2: BIRD AS65001, HAProxy, lb-agent, backends on 127.0.0.1
//!                      └── lb2 10.0.2.2: BIRD AS65002, HAProxy, lb-agent, backends on 127.0.0.1
//! ```
//!
//! Each LB serves VIP 192.0.2.10/32 with two frontends (`web` on :80 and
//! `api` on :8080), each with its own backend. The agent runs *inside* the
//! LB namespace with `vip.manage = true` on `lo`, a `file://` source and
//! short health timers, so it adds the VIP address, reconciles HAProxy,
//! checks the frontends through HAProxy on the VIP, and drives BIRD through
//! the include. Every claim is read where it matters: the ToR's kernel
//! routing table (`ip -n tor route show 192.0.2.10`).
//!
//! Teardown is by PID and by drop, panic or not: agents first (so a
//! withdrawing agent still finds its BIRD), then HAProxy, BIRD, backends,
//! and the namespaces last (which also kills by PID whatever is left in
//! them). Every wait is bounded in time.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::agent;
use super::bird::{tor_bird_conf, Bird, LAB_BFD, TIMERS};
use super::netns::{veth, Netns};
use lb_agent::bird::control::ProtocolRow;
use lb_agent::bird::include::{self, IncludeLayout};
use lb_agent::bird::{BirdControl, ControlOptions, DesiredAnnouncements};
use lb_agent::config::builder::AgentToml;
use lb_agent::config::{BirdConfig, OnStop, OnUnhealthy};

/// The VIP every LB serves.
pub const VIP: &str = "192.0.2.10";
/// The VIP as a prefix.
pub const VIP_NET: &str = "192.0.2.10/32";
/// Prefixes every LB BIRD has a static (blackhole) route for: 192.0.2.10–19.
/// Only 192.0.2.10 is in the desired state; the others can be hand-added to
/// an include to play "unknown prefix".
pub const STATIC_VIPS: std::ops::Range<u32> = 10..20;

/// Health timers of the lab agents (docs/gating.md bound: fall × interval + timeout).
pub const INTERVAL: Duration = Duration::from_millis(200);
pub const TIMEOUT: Duration = Duration::from_millis(150);
pub const FAST_INTERVAL: Duration = Duration::from_millis(100);
pub const RISE: u32 = 2;
pub const FALL: u32 = 2;

const HAPROXY: &str = "/usr/sbin/haproxy";

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// How the lab is built.
#[derive(Debug, Clone, Copy)]
pub struct LabOptions {
    /// Number of LB hosts (1 or 2).
    pub lbs: u32,
    /// A client namespace behind the ToR, for traffic through the VIP.
    pub client: bool,
    /// Start the agents (and wait until every LB announces the VIP).
    pub start_agents: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            lbs: 2,
            client: false,
            start_agents: true,
        }
    }
}

// ---------------------------------------------------------------- backends

/// A tiny HTTP backend whose listening socket lives in an LB namespace
/// (created by a thread that joined it; a socket stays in the namespace it
/// was created in) and is served by a task of the test's runtime. It answers
/// `status` with its name as the body; [`NsBackend::close`] closes the
/// listener (connection refused), [`NsBackend::reopen`] binds the same port.
pub struct NsBackend {
    pub name: String,
    pub port: u16,
    status: Arc<AtomicU16>,
    pub hits: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl NsBackend {
    pub fn start(ns: &Netns, name: &str) -> NsBackend {
        let mut b = NsBackend {
            name: name.to_string(),
            port: 0,
            status: Arc::new(AtomicU16::new(200)),
            hits: Arc::new(AtomicU64::new(0)),
            task: None,
        };
        b.listen(ns);
        b
    }

    fn listen(&mut self, ns: &Netns) {
        let port = self.port;
        let listener = ns
            .run_inside(|| std::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap_or_else(|e| panic!("backend {} bind :{port}: {e}", self.name));
        self.port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (name, status, hits) = (self.name.clone(), self.status.clone(), self.hits.clone());
        self.task = Some(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (name, status, hits) = (name.clone(), status.clone(), hits.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 2048];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    hits.fetch_add(1, Ordering::Relaxed);
                    let code = status.load(Ordering::SeqCst);
                    let body = format!("{name}\n");
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        }));
    }

    /// Answer every request with `code` from now on.
    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// Closes the listener: HAProxy's connects are refused. Returns once closed.
    pub async fn close(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    pub fn reopen(&mut self, ns: &Netns) {
        assert!(self.task.is_none(), "backend {} is open", self.name);
        self.listen(ns);
    }
}

impl Drop for NsBackend {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------- HAProxy

/// A real HAProxy 2.6 (master-worker, `-W -S master.sock`) inside a namespace,
/// started with a bootstrap config holding only the admin socket, as a
/// fresh host's distro config would; the agent takes over from there.
pub struct NsHaproxy {
    child: Child,
    pub pid: u32,
    pub config: PathBuf,
    pub admin: PathBuf,
    pub master: PathBuf,
    pub log: PathBuf,
}

impl NsHaproxy {
    pub fn start(ns: &Netns, dir: &Path) -> NsHaproxy {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} not found: apt-get install -y haproxy (.ci/run does)"
        );
        let config = dir.join("haproxy.cfg");
        let admin = dir.join("admin.sock");
        std::fs::write(&config, bootstrap_haproxy_cfg(&admin)).unwrap();
        let log = dir.join("haproxy.log");
        let (child, pid) = spawn_haproxy(ns, dir, &config, &dir.join("master.sock"), &log);
        let h = NsHaproxy {
            child,
            pid,
            config,
            admin,
            master: dir.join("master.sock"),
            log,
        };
        h.wait_up();
        h
    }

    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(std::os::unix::net::UnixStream::connect(&self.master).is_ok()
            && std::os::unix::net::UnixStream::connect(&self.admin).is_ok())
        {
            assert!(
                Instant::now() < deadline,
                "haproxy did not come up: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the master (its workers follow it out); returns once the
    /// admin socket refuses connections (bounded).
    pub fn kill9(&mut self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.admin).is_ok() {
            assert!(
                Instant::now() < deadline,
                "HAProxy workers outlived their master"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts HAProxy again on the config file as it is now (what systemd's
    /// restart does), in the same namespace and with the same sockets.
    pub fn respawn(&mut self, ns: &Netns) {
        let dir = self.config.parent().unwrap().to_path_buf();
        let (child, pid) = spawn_haproxy(ns, &dir, &self.config, &self.master, &self.log);
        self.child = child;
        self.pid = pid;
        self.wait_up();
    }
}

/// A minimal config with just the admin socket, as a distro would ship.
pub fn bootstrap_haproxy_cfg(admin: &Path) -> String {
    format!(
        "global\n    stats socket {} mode 600 level admin\n\ndefaults\n    mode http\n    \
         timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n",
        admin.display()
    )
}

fn spawn_haproxy(ns: &Netns, dir: &Path, config: &Path, master: &Path, log: &Path) -> (Child, u32) {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = ns
        .command(HAPROXY)
        .arg("-W")
        .arg("-S")
        .arg(master)
        .arg("-f")
        .arg(config)
        .arg("-p")
        .arg(dir.join("haproxy.pid"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawning haproxy");
    let pid = child.id();
    (child, pid)
}

impl Drop for NsHaproxy {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

/// SIGTERM by PID, then SIGKILL after `grace`; reaps the child.
fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait().ok()
}

// ---------------------------------------------------------------- agent

/// A running `lb-agent run` inside an LB namespace.
pub struct NsAgent {
    child: Option<Child>,
    pub pid: u32,
    pub log: PathBuf,
}

impl NsAgent {
    fn start(ns: &Netns, config: &Path, log: &Path, nofile: Option<u64>) -> NsAgent {
        let out = std::fs::File::create(log).unwrap();
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_lb-agent"));
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec. The limit is inherited through the
            // exec of `ip netns exec` into the agent.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "lb_agent=debug,info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning lb-agent");
        let pid = child.id();
        NsAgent {
            child: Some(child),
            pid,
            log: log.to_path_buf(),
        }
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid as i32), sig);
    }

    /// The exit status once the process is gone (non-blocking).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NsAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
    }
}

// ---------------------------------------------------------------- include watcher

/// Reads an include file every 2 ms on a thread and parses every version it
/// sees with the agent's own parser (and layout): proof that no reader
/// (BIRD at a `configure` or a restart) ever finds a torn or broken file.
pub struct IncludeWatcher {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<WatchReport>>,
}

/// What an [`IncludeWatcher`] saw.
#[derive(Debug, Default, Clone)]
pub struct WatchReport {
    pub reads: u64,
    /// Every distinct content seen, in order, with when it was first seen.
    pub versions: Vec<(Instant, String)>,
    /// Contents that did not parse, with the error.
    pub broken: Vec<(String, String)>,
}

impl IncludeWatcher {
    pub fn start(cfg: &BirdConfig) -> IncludeWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let layout = IncludeLayout::from_config(cfg).unwrap();
        let path = cfg.include_file.clone();
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut r = WatchReport::default();
            let mut last = String::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    r.reads += 1;
                    if text != last {
                        r.versions.push((Instant::now(), text.clone()));
                        if let Err(e) = include::parse(&text).and_then(|f| f.announcements(&layout))
                        {
                            r.broken.push((text.clone(), e.to_string()));
                        }
                        last = text;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            r
        });
        IncludeWatcher {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for IncludeWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------- LB host

/// One LB host. Field order is drop order: the agent stops first (a
/// withdrawing agent still reaches its BIRD), the namespace goes last.
pub struct LbHost {
    pub n: u32,
    pub agent: Option<NsAgent>,
    pub haproxy: NsHaproxy,
    pub bird: Bird,
    pub web: NsBackend,
    pub api: NsBackend,
    pub watcher: Option<IncludeWatcher>,
    pub dir: PathBuf,
    pub bird_cfg: BirdConfig,
    pub status_socket: PathBuf,
    pub agent_toml: PathBuf,
    pub desired: PathBuf,
    starts: u32,
    revision: u64,
    web_weight: u16,
    /// `RLIMIT_NOFILE` (soft = hard) the agent is started with; `None`
    /// inherits the test's.
    pub agent_nofile: Option<u64>,
    pub ns: Netns,
}

impl LbHost {
    /// The lab's agent.toml for this host: [`agent::harness_toml`], a
    /// `file://` source, short health timers, export confirmation by the
    /// `tor` protocol, the demote set defined, `on_stop = "withdraw"`, VIPs
    /// managed on `lo` inside `192.0.2.0/24`.
    pub fn agent_toml_base(&self) -> AgentToml {
        agent::harness_toml(&self.dir, &format!("lb{}", self.n))
            .url(&format!("file://{}", self.desired.display()))
            .haproxy_config(&self.haproxy.config)
            .runtime_socket(&self.haproxy.admin)
            .master_socket(&self.haproxy.master)
            .health_interval(INTERVAL)
            .health_timeout(TIMEOUT)
            .rise(RISE)
            .fall(FALL)
            .fast_interval(FAST_INTERVAL)
            .include_file(&self.bird_cfg.include_file)
            .control_socket(&self.bird_cfg.control_socket)
            .export_protocols(&["tor"])
            .demote_variable("ACAST_PS_DEMOTE")
            .on_stop(OnStop::Withdraw)
            .vip_interface("lo")
            .manage_vips(true)
            .allowed_prefixes(&["192.0.2.0/24".parse().unwrap()])
            .status_socket(&self.status_socket)
    }

    /// Writes [`LbHost::agent_toml_base`] to `agent_toml`.
    pub fn write_agent_toml(&self) {
        self.write_agent_toml_with(|t| t);
    }

    /// Writes [`LbHost::agent_toml_base`] changed by `edit` (say
    /// `|t| t.on_stop(OnStop::Keep)`) to `agent_toml`.
    pub fn write_agent_toml_with(&self, edit: impl FnOnce(AgentToml) -> AgentToml) {
        edit(self.agent_toml_base())
            .write(&self.agent_toml)
            .unwrap();
    }

    /// Writes the desired state (a new revision each time): VIP 192.0.2.10
    /// with `web` on :80 and `api` on :8080, each with its own backend.
    pub fn write_desired(&mut self) {
        self.write_desired_with(&[]);
    }

    /// [`LbHost::write_desired`] plus `extra` HTTP frontends (name, port on
    /// the VIP), each served by the `web` backend's pool.
    pub fn write_desired_with(&mut self, extra: &[(&str, u16)]) {
        self.write_desired_doc(extra, self.web_weight);
    }

    /// The desired state with `extra` frontends and the `web1` server at `weight`.
    pub fn write_desired_doc(&mut self, extra: &[(&str, u16)], weight: u16) {
        self.revision += 1;
        self.web_weight = weight;
        let mut frontends = vec![
            json!({"name": "web", "bind": [format!("{VIP}:80")], "mode": "http", "default_pool": "web_pool"}),
            json!({"name": "api", "bind": [format!("{VIP}:8080")], "mode": "http", "default_pool": "api_pool"}),
        ];
        for (name, port) in extra {
            frontends.push(json!({"name": name, "bind": [format!("{VIP}:{port}")], "mode": "http", "default_pool": "web_pool"}));
        }
        let doc = json!({
            "schema": 1, "revision": self.revision, "group": "blue",
            "vips": [{"address": VIP_NET}],
            "frontends": frontends,
            "pools": [
                {"name": "web_pool", "mode": "http", "servers": [
                    {"name": "web1", "address": "127.0.0.1", "port": self.web.port, "weight": weight}]},
                {"name": "api_pool", "mode": "http", "servers": [
                    {"name": "api1", "address": "127.0.0.1", "port": self.api.port}]}
            ]
        });
        let tmp = self.desired.with_extension("tmp");
        std::fs::write(&tmp, doc.to_string()).unwrap();
        std::fs::rename(&tmp, &self.desired).unwrap();
    }

    /// Starts `lb-agent run` in the namespace (log: `agent.<k>.log`).
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "lb{}: agent already running", self.n);
        self.starts += 1;
        let log = self.dir.join(format!("agent.{}.log", self.starts));
        self.agent = Some(NsAgent::start(
            &self.ns,
            &self.agent_toml,
            &log,
            self.agent_nofile,
        ));
    }

    /// SIGTERM to the agent; waits (bounded) for it to exit.
    pub fn stop_agent(&mut self) -> ExitStatus {
        let mut a = self.agent.take().expect("agent running");
        a.signal(Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = a.try_exit() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "lb{}: agent did not exit within 20 s of SIGTERM:\n{}",
                self.n,
                tail(&a.log_text(), 60)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every agent log of this host, oldest first.
    pub fn agent_logs(&self) -> String {
        let mut out = String::new();
        for k in 1..=self.starts {
            let p = self.dir.join(format!("agent.{k}.log"));
            out.push_str(&format!(
                "--- lb{} agent run {k} ({}):\n",
                self.n,
                p.display()
            ));
            out.push_str(&tail(&std::fs::read_to_string(&p).unwrap_or_default(), 80));
        }
        out
    }

    /// `lb-agent <args> --socket <status socket> [--json]`; (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
            .args(args)
            .arg("--socket")
            .arg(&self.status_socket)
            .stdin(Stdio::null())
            .output()
            .expect("running lb-agent CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `lb-agent <args> --config <agent.toml>` with extra environment (the
    /// commands that work without the running agent: `reset`, `check-config`).
    pub fn cli_config_env(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
            .args(args)
            .arg("--config")
            .arg(&self.agent_toml)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("running lb-agent CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// [`LbHost::cli_config_env`] without extra environment.
    pub fn cli_config(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_config_env(args, &[])
    }

    /// `lb-agent vips --json`: the entry of the lab VIP.
    pub fn vip_status(&self) -> Value {
        self.try_vip_status()
            .unwrap_or_else(|e| panic!("lb{}: {e}", self.n))
    }

    /// [`LbHost::vip_status`], or why the agent could not answer (not up
    /// yet, or between two generations after SIGHUP).
    pub fn try_vip_status(&self) -> Result<Value, String> {
        let (code, out, err) = self.cli(&["vips", "--json"]);
        if code != 0 {
            return Err(format!("lb-agent vips --json exited {code}: {err}"));
        }
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        v.as_array()
            .and_then(|a| a.iter().find(|x| x["address"] == VIP_NET).cloned())
            .ok_or_else(|| format!("no {VIP_NET} in {out}"))
    }

    /// Polls `lb-agent vips --json` (bounded) until `pred` holds for the lab
    /// VIP; an agent that cannot answer yet is polled again.
    pub fn wait_vip_status(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.try_vip_status();
            if let Ok(v) = &v {
                if pred(v) {
                    return v.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "lb{}: {what} not seen in `lb-agent vips --json` within {limit:?}; last: {v:#?}\n{}",
                self.n,
                self.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A control connection to this LB's BIRD.
    pub fn bird_ctl(&self) -> BirdControl {
        BirdControl::new(&self.bird.socket, ControlOptions::default())
    }

    /// What this LB's BIRD exports to the ToR right now.
    pub async fn exported(&self) -> BTreeSet<String> {
        self.bird_ctl()
            .show_route_export("tor")
            .await
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    /// Writes an include announcing `prefixes` (behind the agent's back) and
    /// reconfigures this LB's BIRD over its control socket.
    pub async fn hand_publish(&self, prefixes: &[&str]) {
        let layout = IncludeLayout::from_config(&self.bird_cfg).unwrap();
        let want = DesiredAnnouncements::advertise(prefixes.iter().map(|p| p.parse().unwrap()));
        std::fs::write(
            &self.bird_cfg.include_file,
            include::render(&layout, &want).unwrap(),
        )
        .unwrap();
        self.bird_ctl().configure().await.unwrap();
    }

    /// Stops the include watcher and returns what it saw.
    pub fn finish_watcher(&mut self) -> WatchReport {
        self.watcher.take().map(|w| w.finish()).unwrap_or_default()
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut s = all[from..].join("\n");
    s.push('\n');
    s
}

// ---------------------------------------------------------------- the lab

/// The whole topology. Field order is drop order: LB hosts (agents,
/// HAProxy, BIRD, backends, namespace) first, then the ToR's BIRD, the
/// client and ToR namespaces, and the temp dir last.
pub struct Lab {
    pub lbs: Vec<LbHost>,
    pub tor_bird: Bird,
    pub client: Option<Netns>,
    pub tor: Netns,
    pub dir: tempfile::TempDir,
}

fn lb_bird_config(dir: &Path) -> BirdConfig {
    BirdConfig {
        include_file: dir.join("bird/lb-agent-prefixes.conf"),
        control_socket: dir.join("bird/bird.ctl"),
        ipv4_variable: "ACAST_PS_ADVERTISE".into(),
        ipv6_variable: "ACAST6_PS_ADVERTISE".into(),
        dummy_ipv4: "10.189.200.255/32".parse().unwrap(),
        dummy_ipv6: "2001:db8:ffff::1/128".parse().unwrap(),
        drain_variable: None,
        drain_grace: Duration::from_secs(30),
        // Always defined, so the lab's bird.conf can export the demote set;
        // agents demote only with `on_unhealthy = "demote"`.
        demote_variable: Some("ACAST_PS_DEMOTE".into()),
        on_unhealthy: OnUnhealthy::Withdraw,
        on_stop: OnStop::Withdraw,
        export_protocols: vec!["tor".into()],
    }
}

/// The LB's bird.conf: static blackholes for every VIP this host may serve,
/// export filter `net ~ ACAST_PS_ADVERTISE` (and the demote set with the AS
/// path prepended 6 times), eBGP with BFD to the ToR.
fn lb_bird_conf(dir: &Path, cfg: &BirdConfig, n: u32) -> String {
    let statics: String = STATIC_VIPS
        .map(|i| format!("    route 192.0.2.{i}/32 blackhole;\n"))
        .collect();
    format!(
        "router id 10.0.{n}.2;\n{log}include \"{inc}\";\n\
         # An operator's own constant (a test provokes a clash with it).\n\
         define LB_RESERVED = 1;\n\
         protocol device {{ }}\n{LAB_BFD}\
         protocol static static_acast {{\n    ipv4;\n{statics}}}\n\
         filter acast_export {{\n    if source != RTS_STATIC then reject;\n\
             if net ~ ACAST_PS_ADVERTISE then accept;\n\
             if net ~ ACAST_PS_DEMOTE then {{ {prepend} accept; }}\n    reject;\n}}\n\
         protocol bgp tor {{\n    local 10.0.{n}.2 as {asn}; neighbor 10.0.{n}.1 as 65000;\n    {TIMERS}\n    bfd on;\n\
             ipv4 {{ import none; export filter acast_export; next hop self; }};\n}}\n",
        log = Bird::log_line(dir),
        inc = cfg.include_file.display(),
        asn = 65000 + n,
        prepend = format!("bgp_path.prepend({});", 65000 + n).repeat(6),
    )
}

impl Lab {
    /// Builds the topology, starts BIRDs (sessions Established), HAProxys,
    /// backends and, unless told otherwise, the agents; then waits until the
    /// ToR has one nexthop per LB for the VIP.
    pub async fn start(opts: LabOptions) -> Lab {
        let t0 = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("lb-agent-lab.")
            .tempdir()
            .unwrap();
        let tor = Netns::new("tor");
        tor.sysctl("net.ipv4.ip_forward", "1");
        tor.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
        let client = opts.client.then(|| {
            let c = Netns::new("cl");
            veth(&tor, "tor-cl", &c, "eth0");
            tor.ip(&["addr", "add", "10.0.9.1/24", "dev", "tor-cl"]);
            c.ip(&["addr", "add", "10.0.9.2/24", "dev", "eth0"]);
            c.ip(&["route", "add", "default", "via", "10.0.9.1"]);
            c
        });
        let mut lbs = Vec::new();
        for n in 1..=opts.lbs {
            let ns = Netns::new(&format!("lb{n}"));
            let tor_if = format!("tor-lb{n}");
            veth(&tor, &tor_if, &ns, "eth0");
            tor.ip(&["addr", "add", &format!("10.0.{n}.1/24"), "dev", &tor_if]);
            ns.ip(&["addr", "add", &format!("10.0.{n}.2/24"), "dev", "eth0"]);
            ns.ip(&["route", "add", "default", "via", &format!("10.0.{n}.1")]);
            let lb_dir = dir.path().join(format!("lb{n}"));
            std::fs::create_dir_all(lb_dir.join("bird")).unwrap();
            std::fs::create_dir_all(lb_dir.join("state")).unwrap();
            let bird_cfg = lb_bird_config(&lb_dir);
            // BIRD starts from a dummy-only include (fail-closed, docs/gating.md).
            let layout = IncludeLayout::from_config(&bird_cfg).unwrap();
            std::fs::write(
                &bird_cfg.include_file,
                include::render(&layout, &DesiredAnnouncements::default()).unwrap(),
            )
            .unwrap();
            let bird_dir = lb_dir.join("bird");
            let bird = Bird::start(
                &bird_dir,
                &lb_bird_conf(&bird_dir, &bird_cfg, n),
                Some(ns.name()),
            );
            let haproxy = NsHaproxy::start(&ns, &lb_dir);
            let web = NsBackend::start(&ns, &format!("lb{n}-web"));
            let api = NsBackend::start(&ns, &format!("lb{n}-api"));
            let watcher = Some(IncludeWatcher::start(&bird_cfg));
            let mut lb = LbHost {
                n,
                agent: None,
                haproxy,
                bird,
                web,
                api,
                watcher,
                status_socket: lb_dir.join("status.sock"),
                agent_toml: lb_dir.join("agent.toml"),
                desired: lb_dir.join("desired.json"),
                dir: lb_dir,
                bird_cfg,
                starts: 0,
                revision: 0,
                web_weight: 1,
                agent_nofile: None,
                ns,
            };
            lb.write_agent_toml();
            lb.write_desired();
            lbs.push(lb);
        }
        let tor_dir = dir.path().join("tor");
        let tor_bird = Bird::start(
            &tor_dir,
            &tor_bird_conf(&tor_dir, opts.lbs),
            Some(tor.name()),
        );
        let mut lab = Lab {
            lbs,
            tor_bird,
            client,
            tor,
            dir,
        };
        lab.wait_established(Duration::from_secs(20)).await;
        let bgp = t0.elapsed();
        if opts.start_agents {
            for lb in &mut lab.lbs {
                lb.start_agent();
            }
            lab.wait_nexthops(VIP, opts.lbs as usize, Duration::from_secs(30))
                .await;
        }
        eprintln!(
            "lab up: BGP established {:.0} ms after start; {} LB(s) announcing {VIP} {:.0} ms after start",
            ms(bgp),
            if opts.start_agents { opts.lbs } else { 0 },
            ms(t0.elapsed())
        );
        lab
    }

    fn tor_ctl(&self) -> BirdControl {
        BirdControl::new(&self.tor_bird.socket, ControlOptions::default())
    }

    /// The ToR's BGP session rows.
    pub async fn tor_sessions(&self) -> Vec<ProtocolRow> {
        let mut rows = self.tor_ctl().show_protocols().await.unwrap();
        rows.retain(|r| r.proto == "BGP");
        rows
    }

    async fn wait_established(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let rows = self.tor_sessions().await;
            if rows.len() == self.lbs.len() && rows.iter().all(|r| r.info == "Established") {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "BGP sessions not established within {limit:?}: {rows:?}\ntor log:\n{}",
                self.tor_bird.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Nexthops of `addr` in the ToR's kernel table (`via <gw> dev <if>`).
    pub async fn tor_nexthops(&self, addr: &str) -> Vec<String> {
        let out = tokio::process::Command::new("ip")
            .args(["-n", self.tor.name(), "route", "show", addr])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_nexthops(&String::from_utf8_lossy(&out.stdout))
    }

    /// Polls the ToR's table until `addr` has `n` nexthops (bounded);
    /// returns how long it took.
    pub async fn wait_nexthops(&self, addr: &str, n: usize, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let hops = self.tor_nexthops(addr).await;
            if hops.len() == n {
                return started.elapsed();
            }
            if started.elapsed() >= limit {
                panic!(
                    "{addr} has nexthops {hops:?} on the ToR, expected {n}, after {limit:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Polls the ToR for `span`, asserting `addr` always has exactly `n` nexthops.
    pub async fn hold_nexthops(&self, addr: &str, n: usize, span: Duration, what: &str) -> u32 {
        let started = Instant::now();
        let mut polls = 0;
        while started.elapsed() < span {
            let hops = self.tor_nexthops(addr).await;
            polls += 1;
            assert_eq!(
                hops.len(),
                n,
                "{what}: {addr} has nexthops {hops:?} on the ToR {:?} into the check\n{}",
                started.elapsed(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        polls
    }

    /// Agent logs and BIRD logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for lb in &self.lbs {
            s.push_str(&lb.agent_logs());
        }
        s.push_str("--- tor bird log:\n");
        s.push_str(&tail(&self.tor_bird.log(), 30));
        s
    }

    /// `count` HTTP GETs to `addr` from the client namespace, each on a new
    /// connection (a new source port, so the ToR's L4 hash spreads them);
    /// returns the bodies (the serving backend's name) or error texts.
    pub fn client_gets(&self, addr: &str, count: usize) -> Vec<Result<String, String>> {
        let client = self.client.as_ref().expect("lab built with a client");
        let addr: SocketAddr = addr.parse().unwrap();
        tokio::task::block_in_place(|| {
            client.run_inside(|| (0..count).map(|_| http_get(addr)).collect())
        })
    }

    /// Starts a client load on `addr`: one GET after another on new
    /// connections from the client namespace, until [`Load::finish`] (or at
    /// most `max` requests).
    pub fn client_load(&self, addr: &str, max: usize) -> Load {
        let client = self.client.as_ref().expect("lab built with a client");
        let path = format!("/run/netns/{}", client.name());
        let addr: SocketAddr = addr.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        let handle = std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut r = LoadReport::default();
            while !s.load(Ordering::Relaxed) && r.ok + r.failed.len() < max {
                match http_get(addr) {
                    Ok(body) => {
                        r.ok += 1;
                        *r.served_by.entry(body).or_default() += 1;
                    }
                    Err(e) => r.failed.push((Instant::now(), e)),
                }
                d.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            r
        });
        Load {
            stop,
            done,
            handle: Some(handle),
        }
    }

    /// Stops every include watcher; panics if any saw a file that does not parse.
    pub fn assert_includes_always_parsed(&mut self) -> Vec<WatchReport> {
        let reports: Vec<WatchReport> = self.lbs.iter_mut().map(|l| l.finish_watcher()).collect();
        for (lb, r) in self.lbs.iter().zip(&reports) {
            assert!(
                r.broken.is_empty(),
                "lb{}: the include on disk did not parse at some point: {:?}",
                lb.n,
                r.broken
            );
        }
        reports
    }
}

/// A client load running on a thread (see [`Lab::client_load`]).
pub struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<LoadReport>>,
}

/// What a client load saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: usize,
    /// Failed requests: when, and the error.
    pub failed: Vec<(Instant, String)>,
    /// Answers by body (the backend's name).
    pub served_by: std::collections::BTreeMap<String, usize>,
}

impl Load {
    /// Requests completed so far (answered or failed).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the load and returns what it saw.
    pub fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A blocking HTTP/1.1 GET with short timeouts; the body or an error text.
pub fn http_get(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out.lines().next().unwrap_or("").to_string();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(status);
    }
    Ok(out
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string())
}

/// Parses `ip route show <addr>`: a single-path route names its gateway on
/// the route line, a multipath route lists `nexthop` lines.
pub fn parse_nexthops(out: &str) -> Vec<String> {
    let via = |l: &str| -> Option<String> {
        let w: Vec<&str> = l.split_whitespace().collect();
        let i = w.iter().position(|x| *x == "via")?;
        let d = w.iter().position(|x| *x == "dev")?;
        Some(format!("via {} dev {}", w.get(i + 1)?, w.get(d + 1)?))
    };
    let hops: Vec<String> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("nexthop"))
        .filter_map(via)
        .collect();
    if !hops.is_empty() {
        return hops;
    }
    out.lines().take(1).filter_map(via).collect()
}

// ---------------------------------------------------------------- route monitor

/// `ip -n tor monitor route`, read on a thread, every line time-stamped on
/// arrival: catches route changes that polling could miss (a nexthop gone
/// for a millisecond) and times them precisely.
pub struct RouteMonitor {
    child: Child,
    rx: mpsc::Receiver<(SystemTime, String)>,
}

/// One route message of `ip monitor`: its first line and continuation lines.
#[derive(Debug, Clone)]
pub struct RouteEvent {
    pub at: SystemTime,
    pub text: String,
}

impl RouteEvent {
    pub fn is_delete(&self) -> bool {
        self.text.starts_with("Deleted")
    }
    pub fn nexthops(&self) -> usize {
        parse_nexthops(&self.text).len()
    }
}

impl RouteMonitor {
    pub fn start(ns: &Netns) -> RouteMonitor {
        let mut child = Command::new("ip")
            .args(["-n", ns.name(), "monitor", "route"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((SystemTime::now(), line)).is_err() {
                    break;
                }
            }
        });
        // `ip monitor` needs a moment to subscribe.
        std::thread::sleep(Duration::from_millis(100));
        RouteMonitor { child, rx }
    }

    /// Every route message about `addr` received so far (consumed).
    pub fn events(&self, addr: &str) -> Vec<RouteEvent> {
        let mut events: Vec<RouteEvent> = Vec::new();
        let mut current: Option<RouteEvent> = None;
        while let Ok((at, line)) = self.rx.try_recv() {
            if line.starts_with(char::is_whitespace) {
                if let Some(c) = current.as_mut() {
                    c.text.push('\n');
                    c.text.push_str(&line);
                }
                continue;
            }
            events.extend(current.take());
            current = Some(RouteEvent { at, text: line });
        }
        events.extend(current);
        let head = |t: &str| -> bool {
            let first = t.lines().next().unwrap_or("");
            let first = first.strip_prefix("Deleted ").unwrap_or(first);
            first.split_whitespace().next() == Some(addr)
        };
        events.retain(|e| head(&e.text));
        events
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- ToR poller

/// Polls `ip -n tor route show <addr>` back to back on a thread (about 4 ms
/// per poll) and records every observation's nexthop count: for claims of
/// the form "the ToR never lost the route while ...".
pub struct TorPoller {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<(Duration, usize)>>>,
}

impl TorPoller {
    pub fn start(tor: &Netns, addr: &str) -> TorPoller {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, ns, addr) = (stop.clone(), tor.name().to_string(), addr.to_string());
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut seen = Vec::new();
            // Bounded: at most 2 minutes whatever the caller does.
            while !s.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
                let out = Command::new("ip")
                    .args(["-n", &ns, "route", "show", &addr])
                    .stdin(Stdio::null())
                    .output()
                    .expect("ip route show");
                seen.push((
                    t0.elapsed(),
                    parse_nexthops(&String::from_utf8_lossy(&out.stdout)).len(),
                ));
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        });
        TorPoller {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops polling; every (time since start, nexthop count) observed.
    pub fn finish(mut self) -> Vec<(Duration, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for TorPoller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
