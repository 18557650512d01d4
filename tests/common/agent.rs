//! Test harness: the real `lb-agent` binary, configured for a test lab.
//!
//! Writes an agent.toml whose every path lives in the lab's temp dir
//! (VIP management off unless a test runs it inside its own namespace),
//! spawns `lb-agent run`, and stops it by PID on drop (SIGTERM, then SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Values that differ between tests; everything else comes from the lab dir.
pub struct AgentToml<'a> {
    pub dir: &'a Path,
    pub url: String,
    pub haproxy_config: &'a Path,
    pub admin: &'a Path,
    pub master: &'a Path,
    pub extra: &'a str,
}

impl AgentToml<'_> {
    /// Writes `<dir>/agent.toml` and returns its path.
    pub fn write(&self) -> PathBuf {
        let d = self.dir;
        let text = format!(
            r#"[node]
name = "lb-test"
group = "blue"
state_dir = "{d}/state"

[source]
url = "{url}"
poll_interval = "200ms"
long_poll = "30s"
cache = "{d}/state/last-good.json"

[haproxy]
config = "{cfg}"
runtime_socket = "{admin}"
master_socket = "{master}"
reload_command = []
templates = "{d}/templates"
min_reload_interval = "500ms"
state_file = "{d}/server-state"
data_dir = "{d}/data"
hard_stop_after = "5s"
verify_interval = "2s"

[bird]
include_file = "{d}/bird/lb-agent-prefixes.conf"
control_socket = "{d}/bird/bird.ctl"

[vip]
manage = false
# The tests' VIPs are loopback addresses (127.0.0.3x) in the root namespace:
# a special-purpose range, so it must be listed explicitly.
allowed_prefixes = ["127.0.0.0/24"]

[status]
socket = "{d}/status.sock"
group = "root"
{extra}
"#,
            d = d.display(),
            url = self.url,
            cfg = self.haproxy_config.display(),
            admin = self.admin.display(),
            master = self.master.display(),
            extra = self.extra,
        );
        std::fs::create_dir_all(d.join("bird")).unwrap();
        let p = d.join("agent.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
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
