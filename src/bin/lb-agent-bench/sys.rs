//! Processes, namespaces and /proc readings shared by the figures that run
//! whole daemons (the gating CPU figure and the ToR lab figure).
//!
//! Everything started here is stopped by its PID on drop, and every
//! namespace is deleted on drop, so an error half way leaves nothing behind.

use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const BIRD: &str = "/usr/sbin/bird";

/// Runs `ip ARGS`; an error carries ip's stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `ip [-n NS] -batch -` with one command per line.
pub fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    {
        let mut stdin = child.stdin.take().context("ip stdin")?;
        for l in lines {
            writeln!(stdin, "{l}")?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether this process may create network namespaces (root, `ip` present).
pub fn can_netns() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("`ip` (iproute2) not found".into());
    }
    Ok(())
}

/// A network namespace made for a figure; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `name` (deleting a stale one of an interrupted run first),
    /// with its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.into() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A daemon started for a figure, optionally inside a namespace
/// (`ip netns exec` execs in place, so the PID is the daemon's own). Stopped
/// by its PID on drop: SIGTERM, then SIGKILL after 5 s.
pub struct Daemon {
    pub what: String,
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(
        what: &str,
        netns: Option<&str>,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> Result<Daemon> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {what} ({})", program.display()))?;
        Ok(Daemon {
            what: what.into(),
            child,
            log: log.into(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the daemon's log when it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); log {}:\n{}",
                self.what,
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` every 50 ms until it says true, for at most `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// User and system CPU time of a process and of its waited-for children
/// (utime + cutime, stime + cstime in /proc/PID/stat): a checker that forks
/// a command per check pays for those commands here.
pub fn cpu_times(pid: u32) -> Result<(Duration, Duration)> {
    let c = cpu_split(pid)?;
    Ok((c.utime + c.cutime, c.stime + c.cstime))
}

/// A process's own CPU and that of its reaped children, apart.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSplit {
    pub utime: Duration,
    pub stime: Duration,
    pub cutime: Duration,
    pub cstime: Duration,
}

impl CpuSplit {
    /// The process's own threads, user + system.
    pub fn own(&self) -> Duration {
        self.utime + self.stime
    }
    /// Its children that it waited for (`haproxy -c`, for the agent).
    pub fn children(&self) -> Duration {
        self.cutime + self.cstime
    }
}

/// utime, stime, cutime, cstime of /proc/PID/stat.
pub fn cpu_split(pid: u32) -> Result<CpuSplit> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after ')' are plain.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .collect();
    // rest starts at field 3 (state): utime, stime, cutime, cstime are
    // fields 14-17 → indexes 11-14.
    let [utime, stime, cutime, cstime] = f.get(11..15).context("short stat")? else {
        bail!("short stat");
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let d = |ticks: u64| Duration::from_nanos(ticks * 1_000_000_000 / hz);
    Ok(CpuSplit {
        utime: d(*utime),
        stime: d(*stime),
        cutime: d(*cutime),
        cstime: d(*cstime),
    })
}

/// A `kB` field of /proc/PID/status (`VmRSS:`, `VmHWM:`), in kB.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// BIRD on `dir/bird.conf` with its control socket at `dir/bird.ctl` (in
/// `netns` when given); waits for the socket's greeting. Its log is expected
/// at `dir/bird.log` (the config's `log` line).
pub fn start_bird(what: &str, netns: Option<&str>, dir: &Path) -> Result<Daemon> {
    let sock = dir.join("bird.ctl");
    let (c, s, p) = (
        dir.join("bird.conf").display().to_string(),
        sock.display().to_string(),
        dir.join("bird.pid").display().to_string(),
    );
    let mut d = Daemon::spawn(
        what,
        netns,
        Path::new(BIRD),
        &["-f", "-c", &c, "-s", &s, "-P", &p],
        &dir.join("bird.out"),
    )?;
    wait_for(
        &format!("{what} control socket"),
        Duration::from_secs(10),
        || {
            d.check_running()?;
            let Ok(stream) = UnixStream::connect(&sock) else {
                return Ok(false);
            };
            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            Ok(line.starts_with("0001 "))
        },
    )
    .map_err(|e| anyhow!("{e}; log:\n{}", tail(&dir.join("bird.log"), 20)))?;
    Ok(d)
}

/// `haproxy -W -S dir/master.sock -f dir/haproxy.cfg` (in `netns` when
/// given), logging to `dir/haproxy.log`; waits until the master socket and
/// the admin socket the config declares at `dir/admin.sock` both answer.
pub fn start_haproxy(
    what: &str,
    netns: Option<&str>,
    dir: &Path,
    limit: Duration,
) -> Result<Daemon> {
    let (cfg, master, admin) = (
        dir.join("haproxy.cfg"),
        dir.join("master.sock"),
        dir.join("admin.sock"),
    );
    let log = dir.join("haproxy.log");
    let mut d = Daemon::spawn(
        what,
        netns,
        Path::new(crate::HAPROXY),
        &[
            "-W",
            "-S",
            &master.display().to_string(),
            "-f",
            &cfg.display().to_string(),
        ],
        &log,
    )?;
    wait_for(&format!("{what} master and admin sockets"), limit, || {
        d.check_running()?;
        Ok(UnixStream::connect(&master).is_ok() && UnixStream::connect(&admin).is_ok())
    })
    .map_err(|e| anyhow!("{e}; log:\n{}", tail(&log, 20)))?;
    Ok(d)
}
