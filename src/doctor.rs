//! `lb-agent doctor`: checks that this host can run the agent as agent.toml
//! describes it, and prints a concrete fix for every check that fails
//! (docs/status.md, "lb-agent doctor").
//!
//! Each check is split in two: a thin observation of the live host (a socket
//! exchange, a file read, a stat) and a pure decision over what was observed,
//! [`Check`] with the fix. The decisions and the bird.conf scanners are pure
//! and table-tested; [`run`] only gathers the facts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::bird::include::IncludeLayout;
use crate::config::Config;

/// Default `--bird-conf`: Debian's bird2 main configuration.
pub const DEFAULT_BIRD_CONF: &str = "/etc/bird/bird.conf";

/// Bound on every socket exchange of a check.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(3);

/// Lowest supported HAProxy (major, minor).
pub const MIN_HAPROXY: (u32, u32) = (2, 6);
/// Lowest supported BIRD major version.
pub const MIN_BIRD_MAJOR: u32 = 2;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable identifier (`bird-control`, `state-dir`, ...).
    pub name: &'static str,
    pub ok: bool,
    /// What was observed.
    pub detail: String,
    /// What to run or edit; present exactly when the check failed.
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// One line: `ok   name: detail` or `FAIL name: detail; fix: ...`.
    pub fn line(&self) -> String {
        match &self.fix {
            None => format!("ok   {}: {}", self.name, self.detail),
            Some(fix) => format!("FAIL {}: {}; fix: {fix}", self.name, self.detail),
        }
    }
}

// --- bird.conf scanning (pure) ---

/// bird.conf without its comments (`# ...` to the end of the line and
/// `/* ... */`), string literals kept as they are.
pub fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '#' => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                    }
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The file names of the `include "<name>";` statements outside comments.
pub fn include_targets(text: &str) -> Vec<String> {
    let code = strip_comments(text);
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = find_word(rest, "include") {
        let after = rest[i + "include".len()..].trim_start();
        if let Some(quoted) = after.strip_prefix('"') {
            if let Some(end) = quoted.find('"') {
                found.push(quoted[..end].to_string());
            }
        }
        rest = &rest[i + "include".len()..];
    }
    found
}

/// Whether one of bird.conf's includes names `include_file`. Relative
/// names are resolved against bird.conf's directory (as BIRD does); `*` and
/// `?` wildcards (which BIRD's include accepts) match.
pub fn includes_file(bird_conf_text: &str, bird_conf: &Path, include_file: &Path) -> bool {
    let base = bird_conf.parent().unwrap_or(Path::new("/"));
    let wanted = include_file.to_string_lossy();
    include_targets(bird_conf_text).iter().any(|t| {
        let resolved = base.join(t);
        wildcard_match(&resolved.to_string_lossy(), &wanted)
    })
}

/// `*` (any run of characters but `/`) and `?` (one character but `/`).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len())
                .take_while(|&k| k == 0 || n[k - 1] != '/')
                .any(|k| go(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && n[0] != '/' && go(&p[1..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

/// Byte offset of the first occurrence of `word` as a whole BIRD symbol.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_sym = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let start = from + i;
        let end = start + word.len();
        let before_ok = !text[..start].chars().next_back().is_some_and(is_sym);
        let after_ok = !text[end..].chars().next().is_some_and(is_sym);
        if before_ok && after_ok {
            return Some(start);
        }
        from = end;
    }
    None
}

/// The agent's set names that bird.conf never mentions outside comments
/// and string literals (a filter that does not test a set exports nothing
/// of it).
pub fn unreferenced_sets<'a>(bird_conf_text: &str, names: &[&'a str]) -> Vec<&'a str> {
    let code = strip_strings(&strip_comments(bird_conf_text));
    names
        .iter()
        .copied()
        .filter(|n| find_word(&code, n).is_none())
        .collect()
}

fn strip_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    for c in text.chars() {
        if c == '"' {
            in_string = !in_string;
            out.push(' ');
        } else if !in_string {
            out.push(c);
        }
    }
    out
}

// --- versions (pure) ---

/// (major, minor, patch) of the first `N.N[.N]` after `marker` in `text`.
fn version_after(text: &str, marker: &str) -> Option<(u32, u32, u32)> {
    let i = text.find(marker)?;
    let rest = text[i + marker.len()..].trim_start();
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = token.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// The version in `haproxy -v` (`HAProxy version 2.6.12-1+deb12u4 ...`).
pub fn parse_haproxy_version(text: &str) -> Option<(u32, u32, u32)> {
    version_after(text, "HAProxy version")
}

/// The version in BIRD's greeting (`BIRD 2.0.12 ready.`) or in
/// `bird --version` (`BIRD version 2.0.12`).
pub fn parse_bird_version(text: &str) -> Option<(u32, u32, u32)> {
    version_after(text, "BIRD version").or_else(|| version_after(text, "BIRD"))
}

fn show_version(v: (u32, u32, u32)) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

/// The HAProxy version check over `haproxy -v`'s output (or why it failed).
pub fn haproxy_version_check(binary: &Path, output: Result<String, String>) -> Check {
    const NAME: &str = "haproxy-version";
    let install = "install HAProxy 2.6 or later (Debian 12: `apt-get install haproxy`) \
                   or set [haproxy] binary";
    match output {
        Err(e) => Check::fail(NAME, format!("{} -v: {e}", binary.display()), install),
        Ok(text) => match parse_haproxy_version(&text) {
            None => Check::fail(
                NAME,
                format!("{} -v printed no HAProxy version", binary.display()),
                install,
            ),
            Some(v) if (v.0, v.1) < MIN_HAPROXY => Check::fail(
                NAME,
                format!("HAProxy {} is older than 2.6", show_version(v)),
                install,
            ),
            Some(v) => Check::pass(NAME, format!("HAProxy {}", show_version(v))),
        },
    }
}

/// The BIRD version check over the greeting or `bird --version`.
pub fn bird_version_check(source: &str, output: Result<String, String>) -> Check {
    const NAME: &str = "bird-version";
    let install = "install BIRD 2 (Debian 12: `apt-get install bird2`)";
    match output {
        Err(e) => Check::fail(NAME, format!("{source}: {e}"), install),
        Ok(text) => match parse_bird_version(&text) {
            None => Check::fail(NAME, format!("{source} gave no BIRD version"), install),
            Some(v) if v.0 < MIN_BIRD_MAJOR => Check::fail(
                NAME,
                format!("BIRD {} is older than 2", show_version(v)),
                install,
            ),
            Some(v) => Check::pass(NAME, format!("BIRD {} ({source})", show_version(v))),
        },
    }
}

// --- the other decisions (pure) ---

/// HAProxy's master socket answered `show proc` (with this many workers) or failed.
pub fn master_check(path: &Path, observed: Result<usize, String>) -> Check {
    const NAME: &str = "haproxy-master";
    match observed {
        Ok(0) => Check::fail(
            NAME,
            format!("{} answers show proc but lists no worker", path.display()),
            "look at `journalctl -u haproxy` for why the worker exited, then `systemctl restart haproxy`",
        ),
        Ok(n) => Check::pass(
            NAME,
            format!("{} answers show proc ({n} worker(s))", path.display()),
        ),
        Err(e) => Check::fail(
            NAME,
            e,
            format!(
                "run HAProxy in master-worker mode with `-S {}` (Debian's haproxy.service passes \
                 `-S /run/haproxy-master.sock` unless EXTRAOPTS in /etc/default/haproxy replaces it; \
                 `systemctl start haproxy`), or set [haproxy] master_socket",
                path.display()
            ),
        ),
    }
}

/// HAProxy's admin socket answered `show info` (its text) or failed.
pub fn admin_check(path: &Path, observed: Result<String, String>) -> Check {
    const NAME: &str = "haproxy-admin";
    let fix = format!(
        "give haproxy.cfg's global section `stats socket {} mode 660 level admin` \
         (the config lb-agent renders has it: `systemctl start lb-agent`), or set [haproxy] runtime_socket",
        path.display()
    );
    match observed {
        Ok(text) if text.contains("Name: HAProxy") => {
            let version = text
                .lines()
                .find_map(|l| l.strip_prefix("Version: "))
                .unwrap_or("?");
            Check::pass(
                NAME,
                format!("{} answers show info (HAProxy {version})", path.display()),
            )
        }
        Ok(text) => Check::fail(
            NAME,
            format!(
                "{} answered show info without `Name: HAProxy`: {}",
                path.display(),
                text.lines().next().unwrap_or("(empty)")
            ),
            fix,
        ),
        Err(e) => Check::fail(NAME, e, fix),
    }
}

/// BIRD's control socket answered `show status` or failed.
pub fn bird_control_check(path: &Path, observed: Result<String, String>) -> Check {
    const NAME: &str = "bird-control";
    match observed {
        Ok(status) => Check::pass(
            NAME,
            format!("{} answers show status ({status})", path.display()),
        ),
        Err(e) => Check::fail(
            NAME,
            e,
            format!(
                "start BIRD with its control socket at {} (`systemctl start bird`; Debian's is \
                 /run/bird/bird.ctl), or set [bird] control_socket",
                path.display()
            ),
        ),
    }
}

/// One file of BIRD's configuration: bird.conf or a file it includes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfFile {
    pub path: PathBuf,
    pub text: String,
}

/// bird.conf and the files it includes (or why bird.conf could not be
/// read), as [`read_bird_conf`] gathers them.
pub type BirdConfFiles = Result<Vec<ConfFile>, String>;

/// bird.conf, or a file it includes, includes the agent's file.
pub fn include_check(bird_conf: &Path, files: &BirdConfFiles, include_file: &Path) -> Check {
    const NAME: &str = "bird-include";
    let fix = format!(
        "add `include \"{}\";` to {} before the filters that use its sets \
         (see the packaged example bird.conf), then `birdc configure`",
        include_file.display(),
        bird_conf.display()
    );
    let files = match files {
        Err(e) => return Check::fail(NAME, e.clone(), fix),
        Ok(f) => f,
    };
    match files
        .iter()
        .find(|f| includes_file(&f.text, &f.path, include_file))
    {
        Some(f) => Check::pass(
            NAME,
            format!("{} includes {}", f.path.display(), include_file.display()),
        ),
        None => Check::fail(
            NAME,
            format!(
                "{} has no include of {}{}",
                bird_conf.display(),
                include_file.display(),
                searched(files)
            ),
            fix,
        ),
    }
}

/// ` (nor the N files it includes)` when bird.conf includes others.
fn searched(files: &[ConfFile]) -> String {
    match files.len() {
        0 | 1 => String::new(),
        n => format!(" (nor the {} files it includes)", n - 1),
    }
}

/// BIRD's configuration uses every set the agent writes.
pub fn export_filter_check(bird_conf: &Path, files: &BirdConfFiles, names: &[&str]) -> Check {
    const NAME: &str = "bird-export-filter";
    let fix_for = |missing: &[&str]| {
        format!(
            "test {} in the BGP export filter of {} (e.g. `if net ~ {} then accept;`, as the packaged \
             example bird.conf does), or set the [bird] variable names to the ones it uses",
            missing.join(", "),
            bird_conf.display(),
            missing.first().copied().unwrap_or("ACAST_PS_ADVERTISE")
        )
    };
    let files = match files {
        Err(e) => return Check::fail(NAME, e.clone(), fix_for(names)),
        Ok(f) => f,
    };
    // Each file on its own: a comment left open in one does not hide the next.
    let mut missing: Vec<&str> = names.to_vec();
    for f in files {
        missing = unreferenced_sets(&f.text, &missing);
    }
    if missing.is_empty() {
        Check::pass(
            NAME,
            format!("{} uses {}", bird_conf.display(), names.join(", ")),
        )
    } else {
        Check::fail(
            NAME,
            format!(
                "{} never uses {}{}",
                bird_conf.display(),
                missing.join(", "),
                searched(files)
            ),
            fix_for(&missing),
        )
    }
}

/// The VIP interface exists (`/sys/class/net/<if>`).
pub fn interface_check(interface: &str, exists: bool, manage: bool) -> Check {
    const NAME: &str = "vip-interface";
    if exists {
        Check::pass(NAME, format!("{interface} exists (manage = {manage})"))
    } else {
        Check::fail(
            NAME,
            format!("no interface {interface} (/sys/class/net/{interface})"),
            format!(
                "create it (`ip link add {interface} type dummy && ip link set {interface} up`, \
                 persistently in /etc/network/interfaces or systemd-networkd) or set [vip] interface"
            ),
        )
    }
}

/// The status socket's group exists (its gid, or why not).
pub fn group_check(group: &str, gid: Result<Option<u32>, String>) -> Check {
    const NAME: &str = "status-group";
    let fix = format!(
        "`groupadd --system {group}` (the packages' sysusers.d file creates lb-agent) or set [status] group"
    );
    match gid {
        Ok(Some(gid)) => Check::pass(NAME, format!("group {group} exists (gid {gid})")),
        Ok(None) => Check::fail(NAME, format!("no group {group}"), fix),
        Err(e) => Check::fail(NAME, format!("looking up group {group}: {e}"), fix),
    }
}

/// A temporary file could be created and removed in the state dir.
pub fn state_dir_check(dir: &Path, observed: Result<(), String>) -> Check {
    const NAME: &str = "state-dir";
    match observed {
        Ok(()) => Check::pass(NAME, format!("{} is writable", dir.display())),
        Err(e) => Check::fail(
            NAME,
            format!("{} is not writable: {e}", dir.display()),
            format!(
                "`install -d -m 0750 -o lb-agent -g lb-agent {}` (the user lb-agent runs as; \
                 the unit's StateDirectory= does it for the default) or set [node] state_dir",
                dir.display()
            ),
        ),
    }
}

/// The agent's set names, the derived IPv6 ones included.
pub fn set_names(cfg: &Config) -> Result<Vec<String>, String> {
    IncludeLayout::from_config(&cfg.bird)
        .map(|l| l.variable_names().into_iter().map(str::to_string).collect())
        .map_err(|e| e.to_string())
}

// --- observation (thin) ---

/// Runs every check against the live host, in the order of the report.
pub fn run(cfg: &Config, bird_conf: &Path) -> Vec<Check> {
    let (master, admin, bird) = observe_sockets(cfg);
    let (bird_greeting, bird_status) = match bird {
        Ok((greeting, status)) => (Some(greeting), Ok(status)),
        Err(e) => (None, Err(e)),
    };
    let conf_files = read_bird_conf(bird_conf, &cfg.bird.include_file);
    let names = set_names(cfg).unwrap_or_default();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let interface = &cfg.vip.interface;
    let group = nix::unistd::Group::from_name(&cfg.status.group)
        .map(|g| g.map(|g| g.gid.as_raw()))
        .map_err(|e| e.to_string());
    let bird_version = match &bird_greeting {
        Some(g) => bird_version_check("control socket greeting", Ok(g.clone())),
        None => bird_version_check("bird --version", command_output("bird", &["--version"])),
    };
    vec![
        master_check(&cfg.haproxy.master_socket, master),
        admin_check(&cfg.haproxy.runtime_socket, admin),
        bird_control_check(&cfg.bird.control_socket, bird_status),
        include_check(bird_conf, &conf_files, &cfg.bird.include_file),
        export_filter_check(bird_conf, &conf_files, &names),
        interface_check(
            interface,
            Path::new("/sys/class/net").join(interface).exists(),
            cfg.vip.manage,
        ),
        group_check(&cfg.status.group, group),
        state_dir_check(&cfg.node.state_dir, probe_writable(&cfg.node.state_dir)),
        haproxy_version_check(
            &cfg.haproxy.binary,
            command_output(&cfg.haproxy.binary.to_string_lossy(), &["-v"]),
        ),
        bird_version,
    ]
}

type BirdObserved = Result<(String, String), String>;

/// `show proc` on the master (worker count), `show info` on the admin
/// socket, greeting + `show status` on BIRD's socket; each bounded.
fn observe_sockets(cfg: &Config) -> (Result<usize, String>, Result<String, String>, BirdObserved) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = format!("starting the runtime: {e}");
            return (Err(e.clone()), Err(e.clone()), Err(e));
        }
    };
    rt.block_on(async {
        let master =
            crate::haproxy::master::MasterClient::new(&cfg.haproxy.master_socket, SOCKET_TIMEOUT)
                .show_proc()
                .await
                .map(|p| p.workers.len())
                .map_err(|e| e.to_string());
        let admin = async {
            let client = crate::haproxy::runtime::RuntimeClient::new(
                &cfg.haproxy.runtime_socket,
                SOCKET_TIMEOUT,
            );
            let mut s = client.connect().await?;
            let info = s.command("show info").await;
            s.quit().await;
            info
        }
        .await
        .map_err(|e| match e {
            // Names the socket already.
            crate::haproxy::runtime::RuntimeError::Connect { .. } => e.to_string(),
            e => format!("{}: {e}", cfg.haproxy.runtime_socket.display()),
        });
        let bird = async {
            let mut ctl = crate::bird::BirdControl::new(
                &cfg.bird.control_socket,
                crate::bird::ControlOptions {
                    connect_timeout: SOCKET_TIMEOUT,
                    reply_timeout: SOCKET_TIMEOUT,
                },
            );
            let greeting = ctl.connect().await?.to_string();
            let reply = ctl.request("show status").await?;
            if let Some(e) = crate::bird::control::reply_error(&reply) {
                return Err(e);
            }
            Ok((greeting, reply.message().to_string()))
        }
        .await
        .map_err(|e: crate::bird::ControlError| e.to_string());
        (master, admin, bird)
    })
}

/// Most files [`read_bird_conf`] reads (bird.conf included).
const MAX_CONF_FILES: usize = 64;

/// bird.conf and, recursively, the files its `include`s name, but not the
/// agent's own include (its `define`s are not references) and not wildcard
/// includes; an included file that cannot be read is left out.
pub fn read_bird_conf(bird_conf: &Path, agent_include: &Path) -> BirdConfFiles {
    let text = std::fs::read_to_string(bird_conf)
        .map_err(|e| format!("reading {}: {e}", bird_conf.display()))?;
    let mut files = vec![ConfFile {
        path: bird_conf.to_path_buf(),
        text,
    }];
    let mut next = 0;
    while next < files.len() && files.len() < MAX_CONF_FILES {
        let base = files[next]
            .path
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        let targets = include_targets(&files[next].text);
        next += 1;
        for t in targets {
            let path = base.join(&t);
            if t.contains(['*', '?'])
                || path == agent_include
                || files.iter().any(|f| f.path == path)
                || files.len() >= MAX_CONF_FILES
            {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(&path) {
                files.push(ConfFile { path, text });
            }
        }
    }
    Ok(files)
}

/// stdout + stderr of a command (BIRD prints its version on stderr).
fn command_output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Creates and removes a temporary file in `dir`.
fn probe_writable(dir: &Path) -> Result<(), String> {
    let f = tempfile::Builder::new()
        .prefix(".lb-agent-doctor.")
        .tempfile_in(dir)
        .map_err(|e| e.to_string())?;
    f.close()
        .map_err(|e| format!("removing the probe file: {e}"))
}

/// The JSON report of `--json`.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub ok: bool,
    pub config: PathBuf,
    pub bird_conf: PathBuf,
    pub checks: &'a [Check],
}

#[cfg(test)]
mod tests;
