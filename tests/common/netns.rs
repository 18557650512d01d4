//! Throwaway network namespaces and veth pairs for integration tests.
//!
//! Every namespace gets a unique name (label + pid + counter + random bits)
//! so test binaries and tests inside one binary can run in parallel. A
//! [`Netns`] deletes itself on drop, panicking test or not: it first kills
//! (by PID) whatever still runs inside it — only processes a test started
//! there can be inside a namespace named for that test — then `ip netns
//! del`, which also destroys its veth ends. Nothing in the root namespace is
//! touched: veth pairs are created directly between two test namespaces.
//!
//! Tests that need namespaces call [`skip_without_netns`] first: without
//! root or without `ip netns` support they skip through [`super::skip`]
//! (a loud banner, counted; a failure under `LB_AGENT_NO_SKIP=1`, as on CI).

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A suffix no other test (in this or a parallel process) uses.
pub fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{:04x}", std::process::id(), n, rand::random::<u16>())
}

/// Why namespace tests cannot run here, if they cannot.
pub fn netns_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root (ip netns needs CAP_SYS_ADMIN)".into());
    }
    let probe = format!("lbat-probe-{}", unique_suffix());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Err(e) => Some(format!(
            "cannot run `ip`: {e} (apt-get install -y iproute2)"
        )),
        Ok(o) if !o.status.success() => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
    }
}

/// True when the calling test must skip (no root or no namespaces here):
/// the skip goes through [`super::skip`] (loud, counted, fatal on CI).
pub fn skip_without_netns(test: &str) -> bool {
    match netns_unavailable() {
        None => false,
        Some(reason) => {
            super::skip::skip(
                test,
                &format!("{reason}; this test needs root and network namespaces (run .ci/run)"),
            );
            true
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace that is deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `lbat-<label>-<unique>` with `lo` up.
    pub fn new(label: &str) -> Netns {
        let name = format!("lbat-{label}-{}", unique_suffix());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name (for `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`; panics with stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip -n <ns> <args>`, whatever the outcome.
    pub fn try_ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Sets a sysctl inside the namespace (`ip netns exec <ns> sysctl -w`).
    pub fn sysctl(&self, key: &str, value: &str) {
        run_ok(
            self.command("sysctl")
                .args(["-q", "-w", &format!("{key}={value}")]),
        );
        let got = run_ok(self.command("sysctl").args(["-n", key]));
        assert_eq!(got.trim(), value, "sysctl {key} in {}", self.name);
    }

    /// A command that runs `program` inside the namespace. `ip netns exec`
    /// execs the program, so a spawned child's PID is the program's PID.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// PIDs of processes still inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        let out = run(Command::new("ip").args(["netns", "pids", &self.name]));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes the test started in here and did not stop (a panic
        // between spawn and guard, say): kill them by PID so the namespace
        // really goes away.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = run(Command::new("ip").args(["netns", "del", &self.name]));
        if !out.status.success() {
            eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

impl Netns {
    /// Runs `f` on a fresh thread that has joined this namespace and returns
    /// its result; a panic in `f` is resumed in the caller.
    ///
    /// `setns(2)` moves only the calling thread, and the thread exits when
    /// `f` returns, so nothing else in the test process changes namespace.
    /// Sockets created inside `f` (netlink included) belong to this
    /// namespace; build any async runtime inside `f` too, so its tasks run
    /// on this thread.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let fd = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns({path}): {e}"));
                f()
            });
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// The same as [`skip_without_netns`] (kept for the tests that call it by
/// this name): every skip banner now bypasses libtest's capture.
pub fn skip_without_netns_loudly(test: &str) -> bool {
    skip_without_netns(test)
}
