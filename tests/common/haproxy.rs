//! Test harness: a real HAProxy 2.6 in master-worker mode, sockets in a temp dir.
//!
//! Started with a bootstrap config (admin socket only) like a fresh host's
//! distro config; the agent then takes over. Stopped by PID on drop, even
//! when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// True when HAProxy is installed; skips `test` otherwise ([`super::skip`]).
pub fn available(test: &str) -> bool {
    super::skip::require_path(test, HAPROXY, "haproxy")
}

/// Paths of one HAProxy instance under test.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub admin: PathBuf,
    pub master: PathBuf,
    pub state_file: PathBuf,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cache: PathBuf,
    pub pidfile: PathBuf,
    pub log: PathBuf,
}

impl Lab {
    pub fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("lb-agent-test.")
            .tempdir()
            .unwrap();
        let p = |n: &str| dir.path().join(n);
        let lab = Lab {
            config: p("haproxy.cfg"),
            admin: p("admin.sock"),
            master: p("master.sock"),
            state_file: p("server-state"),
            data_dir: p("data"),
            state_dir: p("state"),
            cache: p("state/last-good.json"),
            pidfile: p("haproxy.pid"),
            log: p("haproxy.log"),
            dir,
        };
        std::fs::create_dir_all(&lab.state_dir).unwrap();
        lab
    }

    /// Reconciler settings pointing at this lab's HAProxy and files.
    pub fn reconciler_settings(
        &self,
        min_reload: Duration,
        max_removal_ratio: f64,
    ) -> lb_agent::reconcile::ReconcilerSettings {
        lb_agent::reconcile::ReconcilerSettings {
            haproxy: lb_agent::config::HaproxyConfig {
                config: self.config.clone(),
                runtime_socket: self.admin.clone(),
                master_socket: self.master.clone(),
                binary: HAPROXY.into(),
                reload_command: vec![],
                templates: self.dir.path().join("templates"),
                min_reload_interval: min_reload,
                max_runtime_ops: 500,
                server_slots: lb_agent::config::SlotPolicy::Pow2,
                state_file: self.state_file.clone(),
                data_dir: self.data_dir.clone(),
                hard_stop_after: Duration::from_secs(5),
                reload_timeout: Duration::from_secs(15),
                verify_interval: Duration::from_millis(500),
                // The host settings at their agent.toml defaults.
                ..lb_agent::config::parse_str("[node]\nname = \"lb1\"\n", "lab")
                    .expect("the built-in defaults parse")
                    .haproxy
            },
            state_dir: self.state_dir.clone(),
            cache: self.cache.clone(),
            max_removal_ratio,
            socket_timeout: Duration::from_secs(5),
        }
    }

    /// The installer the reconciler builds (`Reconciler::new`) for this lab,
    /// with the master socket's per-request timeout.
    pub fn installer(
        &self,
        reload_timeout: Duration,
        socket_timeout: Duration,
    ) -> lb_agent::haproxy::reload::Installer {
        lb_agent::haproxy::reload::Installer {
            binary: HAPROXY.into(),
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            reload_command: vec![],
            reload_timeout,
            master: lb_agent::haproxy::master::MasterClient::new(&self.master, socket_timeout),
        }
    }

    /// The built-in templates rendering for this lab's sockets and files.
    pub fn renderer(&self) -> lb_agent::haproxy::render::Renderer {
        self.renderer_with(Default::default())
    }

    /// [`Lab::renderer`] with these `[haproxy]` host settings (logs,
    /// listeners, threads).
    pub fn renderer_with(
        &self,
        global: lb_agent::haproxy::global::GlobalSettings,
    ) -> lb_agent::haproxy::render::Renderer {
        lb_agent::haproxy::render::Renderer::new(
            None,
            lb_agent::haproxy::render::RenderSettings {
                runtime_socket: self.admin.clone(),
                state_file: self.state_file.clone(),
                hard_stop_after: Duration::from_secs(5),
                data_dir: self.data_dir.clone(),
                slot_policy_pow2: true,
                node_name: "lb1".into(),
                node_group: "blue".into(),
                node_az: Some("az1".into()),
                global,
            },
        )
        .unwrap()
    }

    /// A minimal config with just the admin socket, as a distro would ship.
    pub fn bootstrap_config(&self) -> String {
        format!(
            "global\n    stats socket {} mode 600 level admin\n\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n",
            self.admin.display()
        )
    }
}

/// A running HAProxy master (and its workers).
pub struct Haproxy {
    child: Child,
    pub pid: u32,
}

impl Haproxy {
    /// Starts `haproxy -W -S master.sock -f config` and waits until both sockets answer.
    pub fn start(lab: &Lab) -> Haproxy {
        if !lab.config.exists() {
            std::fs::write(&lab.config, lab.bootstrap_config()).unwrap();
        }
        let log = std::fs::File::create(&lab.log).unwrap();
        let child = Command::new(HAPROXY)
            .arg("-W")
            .arg("-S")
            .arg(&lab.master)
            .arg("-f")
            .arg(&lab.config)
            .arg("-p")
            .arg(&lab.pidfile)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning haproxy");
        let pid = child.id();
        let h = Haproxy { child, pid };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = std::os::unix::net::UnixStream::connect(&lab.master).is_ok()
                && std::os::unix::net::UnixStream::connect(&lab.admin).is_ok();
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not come up: {}",
                std::fs::read_to_string(&lab.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// Sends one command to a socket in non-interactive mode and returns the reply.
    pub fn cli(sock: &Path, cmd: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
