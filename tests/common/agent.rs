//! Test harness: the real `lb-agent` binary, configured for a test lab.
//!
//! Writes an agent.toml whose every path lives in the lab's temp dir
//! (VIP management off unless a test runs it inside its own namespace) with
//! `lb_agent::config::builder::AgentToml`, spawns `lb-agent run`, and stops
//! it by PID on drop (SIGTERM, then SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lb_agent::config::builder::AgentToml;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::haproxy::Lab;

/// What every harness lab's agent.toml shares: the agent's files below
/// `dir` ([`AgentToml::in_dir`]), group `blue`, timers short enough for a
/// test, reloads on the master socket, a status socket owned by root.
pub fn harness_toml(dir: &Path, name: &str) -> AgentToml {
    AgentToml::in_dir(dir)
        .name(name)
        .group("blue")
        .poll_interval(Duration::from_millis(200))
        .reload_command(&[])
        .min_reload_interval(Duration::from_millis(500))
        .hard_stop_after(Duration::from_secs(5))
        .verify_interval(Duration::from_secs(2))
        .status_group("root")
}

/// The agent.toml of the one-host lab ([`Lab`]): `url` as the source, the
/// lab's HAProxy, VIP management off.
pub fn lab_toml(lab: &Lab, url: &str) -> AgentToml {
    harness_toml(lab.dir.path(), "lb-test")
        .url(url)
        .long_poll(Duration::from_secs(30))
        .haproxy_config(&lab.config)
        .runtime_socket(&lab.admin)
        .master_socket(&lab.master)
        .manage_vips(false)
        // The tests' VIPs are loopback addresses (127.0.0.3x) in the root
        // namespace: a special-purpose range, so it must be listed explicitly.
        .allowed_prefixes(&["127.0.0.0/24".parse().unwrap()])
}

/// Writes `toml` to `<dir>/agent.toml` (creating `<dir>/bird`) and returns
/// its path.
pub fn write_toml(dir: &Path, toml: &AgentToml) -> PathBuf {
    std::fs::create_dir_all(dir.join("bird")).unwrap();
    let p = dir.join("agent.toml");
    toml.write(&p).unwrap();
    p
}

/// [`lab_toml`] written to the lab's dir; returns its path.
pub fn write_lab_toml(lab: &Lab, url: &str) -> PathBuf {
    write_toml(lab.dir.path(), &lab_toml(lab, url))
}

/// A running `lb-agent run`.
pub struct Agent {
    child: Option<Child>,
    pub pid: u32,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Agent {
        let log = config.with_file_name("agent.log");
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb-agent"));
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "lb_agent=debug,info")
            .env_remove("JOURNAL_STREAM");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawning lb-agent");
        let pid = child.id();
        Agent {
            child: Some(child),
            pid,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid as i32), sig);
    }

    /// SIGTERM and wait (bounded); returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "lb-agent did not stop within 20 s after SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
