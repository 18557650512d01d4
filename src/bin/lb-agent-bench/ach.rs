//! anycast-healthchecker (the Python baseline of docs/performance.md), installed from
//! PyPI into a venv the bench owns, and configured for a set of services.
//!
//! Its model: one thread per service, each running `check_cmd` as a
//! subprocess every `check_interval` (after `ip address show` to see that the
//! prefix is on the interface), and on a change rewriting the BIRD include and
//! running `bird_reconfigure_cmd`. Its include has the same format as ours.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::sys::Daemon;

pub const VERSION: &str = "0.9.10";

/// What BIRD reads when no checker has spoken (fail-closed, dummy only), in
/// the layout anycast-healthchecker parses (one prefix a line); BIRD and
/// lb-agent read it too.
pub const DUMMY_INCLUDE: &str =
    "define ACAST_PS_ADVERTISE =\n    [\n        10.189.200.255/32\n    ];\n";

/// The installed checker.
pub struct Ach {
    pub exe: PathBuf,
}

/// Creates (or reuses) a venv at `venv` holding anycast-healthchecker
/// `VERSION` from PyPI.
pub fn install(venv: &Path) -> Result<Ach> {
    let exe = venv.join("bin/anycast-healthchecker");
    if exe.exists() && version_of(&exe).as_deref() == Some(VERSION) {
        return Ok(Ach { exe });
    }
    let _ = std::fs::remove_dir_all(venv);
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent)?;
    }
    run(Command::new("python3").arg("-m").arg("venv").arg(venv))
        .context("python3 -m venv (Debian: apt-get install -y python3-venv)")?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("anycast-healthchecker=={VERSION}"),
    ]))
    .context("pip install anycast-healthchecker from PyPI")?;
    match version_of(&exe) {
        Some(v) if v == VERSION => Ok(Ach { exe }),
        other => bail!(
            "{} reports version {other:?}, expected {VERSION}",
            exe.display()
        ),
    }
}

fn version_of(exe: &Path) -> Option<String> {
    let out = Command::new(exe).arg("--version").output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Settings shared by every service check (the `[DEFAULT]` section) and the
/// daemon (`[daemon]`).
pub struct Settings {
    /// Seconds (ACH takes floats).
    pub interval: f64,
    pub timeout: f64,
    pub rise: u32,
    pub fall: u32,
    /// Interface the prefixes must be on (`ip address show dev IF to PREFIX`).
    pub interface: String,
    /// The include BIRD reads (`define ACAST_PS_ADVERTISE = [...]`).
    pub bird_conf: PathBuf,
    pub bird_reconfigure_cmd: String,
}

/// One service check: a prefix and the command that says it is healthy.
pub struct Service {
    pub name: String,
    pub prefix: String,
    pub check_cmd: String,
}

/// The check command equivalent to lb-agent's HTTP check of `url`: a GET
/// that fails on a refused connection, a timeout or a status ≥ 400
/// (redirects count as healthy, as in lb-agent's default 2xx/3xx).
pub fn http_check_cmd(url: &str, timeout: f64) -> String {
    format!("/usr/bin/curl --fail --silent --output /dev/null --max-time {timeout} {url}")
}

/// One check command for several services of one prefix (anycast-
/// healthchecker allows one check per prefix): a single curl that fetches
/// every URL and fails as soon as one fails (`--fail-early`).
pub fn http_checks_cmd(urls: &[String], timeout: f64) -> String {
    let outputs = " --output /dev/null".repeat(urls.len());
    format!(
        "/usr/bin/curl --fail --fail-early --silent{outputs} --max-time {timeout} {}",
        urls.join(" ")
    )
}

/// Writes `dir/ach.conf` and `dir/ach.d/*.conf`; returns both paths.
/// Logs go to `dir/ach.log` at level `warning` (its default, `debug`, logs
/// several lines per check; warning gives the baseline its best case).
pub fn write_config(dir: &Path, s: &Settings, services: &[Service]) -> Result<(PathBuf, PathBuf)> {
    let confd = dir.join("ach.d");
    let _ = std::fs::remove_dir_all(&confd);
    std::fs::create_dir_all(&confd)?;
    let conf = dir.join("ach.conf");
    let mut c = String::new();
    let _ = writeln!(c, "[DEFAULT]");
    let _ = writeln!(c, "interface = {}", s.interface);
    let _ = writeln!(c, "check_interval = {}", s.interval);
    let _ = writeln!(c, "check_timeout = {}", s.timeout);
    let _ = writeln!(c, "check_rise = {}", s.rise);
    let _ = writeln!(c, "check_fail = {}", s.fall);
    let _ = writeln!(c, "check_disabled = false");
    let _ = writeln!(c, "on_disabled = withdraw");
    let _ = writeln!(c, "ip_check_disabled = false");
    let _ = writeln!(c, "\n[daemon]");
    let _ = writeln!(c, "ipv4 = true\nipv6 = false");
    let _ = writeln!(c, "bird_conf = {}", s.bird_conf.display());
    let _ = writeln!(c, "bird_variable = ACAST_PS_ADVERTISE");
    let _ = writeln!(c, "bird_reconfigure_cmd = {}", s.bird_reconfigure_cmd);
    let _ = writeln!(c, "dummy_ip_prefix = 10.189.200.255/32");
    let _ = writeln!(c, "purge_ip_prefixes = true");
    let _ = writeln!(c, "pidfile = {}", dir.join("ach.pid").display());
    let _ = writeln!(c, "loglevel = warning");
    let _ = writeln!(c, "log_file = {}", dir.join("ach.log").display());
    let _ = writeln!(c, "stderr_file = {}", dir.join("ach.stderr").display());
    std::fs::write(&conf, c)?;
    for svc in services {
        let body = format!(
            "[{}]\ncheck_cmd = {}\nip_prefix = {}\n",
            svc.name, svc.check_cmd, svc.prefix
        );
        std::fs::write(confd.join(format!("{}.conf", svc.name)), body)?;
    }
    Ok((conf, confd))
}

/// Starts the checker (in `netns` when given), logging its stdout/stderr to
/// `dir/ach.out`.
pub fn spawn(
    ach: &Ach,
    dir: &Path,
    conf: &Path,
    confd: &Path,
    netns: Option<&str>,
) -> Result<Daemon> {
    let (conf, confd) = (conf.display().to_string(), confd.display().to_string());
    Daemon::spawn(
        "anycast-healthchecker",
        netns,
        &ach.exe,
        &["-f", &conf, "-d", &confd],
        &dir.join("ach.out"),
    )
}
