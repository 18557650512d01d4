//! docs/performance.md's "failed service → prefix gone from the ToR's routing table", for
//! lb-agent and, in the same lab, anycast-healthchecker.
//!
//! The lab (namespaces `lbbench-tor-<pid>-tor` and `lbbench-tor-<pid>-lb`):
//!
//! ```text
//!  tor: BIRD AS65000, kernel4 `merge paths on`, eBGP lb1 ── veth 10.0.1.0/24 ── lb: BIRD AS65001
//!  lb:  192.0.2.10/32 on lo; BIRD static blackhole + export `net ~ ACAST_PS_ADVERTISE`
//!       (include written by the checker under test); HAProxy 2.6 master-worker
//!       (bootstrap config: VIP:80 → backend; lb-agent renders and reloads its own,
//!       which stays for the baseline run); backend 127.0.0.1:8080 = a thread
//!       of this process answering 200 or 503.
//! ```
//!
//! The observer is a thread in the ToR namespace that dumps the kernel's
//! routing table over rtnetlink every 2 ms and timestamps each appearance and
//! disappearance of 192.0.2.10/32. A sample is: backend switched to 503 at t0
//! → first poll that no longer sees the route. Each failure starts after a
//! random 0–interval pause, so the checker's phase is sampled fairly; so
//! does each recovery (backend 200 again → route back).
//!
//! Everything is stopped by PID and the namespaces deleted on drop, also on
//! error; namespaces of an interrupted run (owner PID gone) are removed first.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use lb_agent::config::builder::AgentToml;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};

use crate::ach;
use crate::sys::{self, Daemon, Netns, BIRD};
use crate::HAPROXY;

/// The row's figure text.
pub const FIGURE: &str = "failed service → prefix gone from the ToR's kernel table, netns lab (target ≤ fall × interval + 200 ms)";

const BIRDC: &str = "/usr/sbin/birdc";
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const BACKEND_PORT: u16 = 8080;
const NS_PREFIX: &str = "lbbench-tor-";
/// Pause between two route dumps of the observer.
const POLL: Duration = Duration::from_millis(2);
/// Lab BGP timers (tests/common/bird.rs): up in about a second, no reset on a busy machine.
const TIMERS: &str = "hold time 30; keepalive time 10; connect delay time 1; connect retry time 2; error wait time 1, 10;";

/// The checker settings both runs share.
struct Timing {
    samples: usize,
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
    /// lb-agent only: re-check interval while a service's state is changing.
    fast_interval: Duration,
}

impl Timing {
    fn new(quick: bool) -> Timing {
        if quick {
            Timing {
                samples: 2,
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(100),
                rise: 2,
                fall: 2,
                fast_interval: Duration::from_millis(100),
            }
        } else {
            Timing {
                samples: 10,
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                rise: 2,
                fall: 3,
                fast_interval: Duration::from_millis(200),
            }
        }
    }

    fn bound(&self) -> Duration {
        self.interval * self.fall + Duration::from_millis(200)
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// One run's samples.
#[derive(Default)]
struct Samples {
    gone: Vec<Duration>,
    back: Vec<Duration>,
}

/// One table cell for a run.
fn cell(s: &Samples, settings: &str, t: &Timing, extra: &str) -> String {
    let max = s.gone.iter().max().copied().unwrap_or_default();
    format!(
        "failure → gone: median {:.0} ms, max {} ms over {}; recovery (200 again → route back): median {:.0} ms; {settings}; bound fall × interval + 200 ms = {} ms{extra}",
        crate::median(s.gone.clone()),
        ms(max),
        s.gone.len(),
        crate::median(s.back.clone()),
        ms(t.bound()),
    )
}

/// A table cell for an error: its first line, short, without `|`.
fn na_cell(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let mut first = text.lines().next().unwrap_or("").replace('|', "/");
    if first.len() > 300 {
        let mut cut = 300;
        while !first.is_char_boundary(cut) {
            cut -= 1;
        }
        first.truncate(cut);
        first.push('…');
    }
    format!("n/a ({first})")
}

/// Measures the figure; returns (lb-agent cell, anycast-healthchecker cell).
/// An error means the lab itself could not be built (no root, no BIRD, ...).
pub fn fig_tor(
    quick: bool,
    agent: &Path,
    ach: Result<&ach::Ach, String>,
) -> Result<(String, String)> {
    sys::can_netns().map_err(|e| anyhow!(e))?;
    for bin in [BIRD, BIRDC, HAPROXY] {
        if !Path::new(bin).exists() {
            bail!("{bin} not found");
        }
    }
    if !agent.exists() {
        bail!(
            "lb-agent binary {} not found (cargo build --release, or --agent PATH)",
            agent.display()
        );
    }
    let t = Timing::new(quick);
    remove_stale_namespaces();
    let lab = Lab::start().context("building the netns lab")?;

    eprintln!(
        "      run A: lb-agent, {} failures (interval {} ms, fall {})",
        t.samples,
        ms(t.interval),
        t.fall
    );
    let ours = match run_agent(&lab, agent, &t) {
        Ok(s) => cell(
            &s,
            &format!(
                "lb-agent [health] interval {} ms, fall {}, rise {}, timeout {} ms, fast_interval {} ms; BIRD configure on its control socket",
                ms(t.interval),
                t.fall,
                t.rise,
                ms(t.timeout),
                ms(t.fast_interval)
            ),
            &t,
            &{
                let (mean, longest) = lab.poller.gaps();
                format!(
                    "; ToR kernel route read by an rtnetlink dump every {} ms (mean gap {:.1} ms, longest {} ms)",
                    ms(POLL),
                    mean.as_secs_f64() * 1000.0,
                    ms(longest)
                )
            },
        ),
        Err(e) => {
            eprintln!("lb-agent run failed: {e:#}");
            na_cell(&e)
        }
    };
    let baseline = match ach {
        Err(reason) => na_cell(&anyhow!("anycast-healthchecker {}: {reason}", ach::VERSION)),
        Ok(a) => {
            eprintln!(
                "      run B: anycast-healthchecker {}, {} failures",
                ach::VERSION,
                t.samples
            );
            match run_ach(&lab, a, &t) {
                Ok(s) => cell(
                    &s,
                    &format!(
                        "anycast-healthchecker {} check_interval {} ms, check_fail {}, check_rise {}, check_timeout {} ms (no fast interval); curl check through HAProxy, `birdc configure`",
                        ach::VERSION,
                        ms(t.interval),
                        t.fall,
                        t.rise,
                        ms(t.timeout)
                    ),
                    &t,
                    "",
                ),
                Err(e) => {
                    eprintln!("anycast-healthchecker run failed: {e:#}");
                    na_cell(&e)
                }
            }
        }
    };
    drop(lab);
    Ok((ours, baseline))
}

// ---------------------------------------------------------------- runs

/// Run A: lb-agent reads a file:// document, renders HAProxy's config,
/// checks the frontend on the VIP and drives the LB BIRD.
fn run_agent(lab: &Lab, agent: &Path, t: &Timing) -> Result<Samples> {
    let dir = lab.dir.path().join("agent");
    std::fs::create_dir_all(dir.join("state"))?;
    let doc = dir.join("blue.json");
    std::fs::write(&doc, document())?;
    let toml = dir.join("agent.toml");
    agent_toml(lab, &dir, &doc, t).write(&toml)?;
    let out = Command::new(agent)
        .args(["check-config", "--config"])
        .arg(&toml)
        .output()
        .with_context(|| format!("running {} check-config", agent.display()))?;
    if !out.status.success() {
        bail!(
            "lb-agent check-config {}: {}{}",
            toml.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let toml_s = toml.display().to_string();
    let mut d = Daemon::spawn(
        "lb-agent",
        Some(&lab.lb.0.name),
        agent,
        &["run", "--config", &toml_s],
        &dir.join("agent.log"),
    )?;
    let r = lab.measure(&mut d, t, &[]);
    // on_stop = "withdraw": the agent takes the VIP out of the include.
    d.stop();
    lab.reset_include()?;
    r
}

/// Run B: anycast-healthchecker with the same settings and an equivalent check.
fn run_ach(lab: &Lab, a: &ach::Ach, t: &Timing) -> Result<Samples> {
    let dir = lab.dir.path().join("ach");
    std::fs::create_dir_all(&dir)?;
    lab.reset_include()?;
    let settings = ach::Settings {
        interval: t.interval.as_secs_f64(),
        timeout: t.timeout.as_secs_f64(),
        rise: t.rise,
        fall: t.fall,
        interface: "lo".into(),
        bird_conf: lab.include.clone(),
        bird_reconfigure_cmd: format!("{BIRDC} -s {} configure", lab.lb_sock.display()),
    };
    let svc = ach::Service {
        name: "www".into(),
        prefix: format!("{VIP}/32"),
        check_cmd: ach::http_check_cmd(&format!("http://{VIP}:80/"), t.timeout.as_secs_f64()),
    };
    let (conf, confd) = ach::write_config(&dir, &settings, &[svc])?;
    let mut d = ach::spawn(a, &dir, &conf, &confd, Some(&lab.lb.0.name))?;
    let r = lab.measure(&mut d, t, &[dir.join("ach.log"), dir.join("ach.stderr")]);
    d.stop();
    lab.reset_include()?;
    r
}

fn document() -> String {
    format!(
        r#"{{"schema":1,"revision":1,"group":"blue",
"vips":[{{"address":"{VIP}/32"}}],
"frontends":[{{"name":"www","bind":["{VIP}:80"],"mode":"http","default_pool":"web","health":{{"type":"http","path":"/"}}}}],
"pools":[{{"name":"web","mode":"http","balance":"roundrobin","servers":[{{"name":"be1","address":"127.0.0.1","port":{BACKEND_PORT},"weight":100,"state":"ready"}}]}}]}}
"#
    )
}

fn agent_toml(lab: &Lab, dir: &Path, doc: &Path, t: &Timing) -> AgentToml {
    let lb = lab.lb_dir();
    AgentToml::in_dir(dir)
        .name("lb1")
        .group("blue")
        .url(&format!("file://{}", doc.display()))
        .poll_interval(Duration::from_millis(500))
        .haproxy_config(&lb.join("haproxy.cfg"))
        .runtime_socket(&lb.join("admin.sock"))
        .master_socket(&lb.join("master.sock"))
        .haproxy_binary(Path::new(HAPROXY))
        .reload_command(&[])
        .min_reload_interval(Duration::from_secs(1))
        .hard_stop_after(Duration::from_secs(5))
        .health_interval(t.interval)
        .health_timeout(t.timeout)
        .rise(t.rise)
        .fall(t.fall)
        .fast_interval(t.fast_interval)
        .include_file(&lab.include)
        .control_socket(&lab.lb_sock)
        .export_protocols(&["tor"])
        .vip_interface("lo")
        .manage_vips(false)
        .status_group("root")
}

// ---------------------------------------------------------------- lab

/// A namespace whose leftover processes (say HAProxy workers of a master
/// that had to be SIGKILLed) are killed by PID before it is deleted. Only
/// the bench starts processes in a `lbbench-tor-*` namespace.
struct NsGuard(Netns);

impl Drop for NsGuard {
    fn drop(&mut self) {
        kill_pids_in(&self.0.name);
    }
}

fn netns_pids(ns: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|p| *p != me)
                .collect()
        })
        .unwrap_or_default()
}

fn kill_pids_in(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = netns_pids(ns);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes `lbbench-tor-<pid>-*` namespaces whose bench process is gone
/// (an interrupted run), killing what still runs inside them first.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(owner) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::fs::read_to_string(format!("/proc/{owner}/comm"))
            .map(|c| c.trim().starts_with("lb-agent-bench"))
            .unwrap_or(false);
        if owner == std::process::id() || !alive {
            eprintln!("      removing stale namespace {name} of an interrupted run");
            kill_pids_in(name);
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// The lab. Fields drop in declaration order: observer and backend threads,
/// daemons, then the namespaces, then the directory.
struct Lab {
    poller: RoutePoller,
    haproxy: Daemon,
    _lb_bird: Daemon,
    _tor_bird: Daemon,
    backend: Backend,
    lb: NsGuard,
    _tor: NsGuard,
    dir: tempfile::TempDir,
    include: PathBuf,
    lb_sock: PathBuf,
}

impl Lab {
    fn start() -> Result<Lab> {
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("lb-agent-bench.tor.")
            .tempdir()?;
        let tor = NsGuard(Netns::create(&format!("{NS_PREFIX}{pid}-tor"))?);
        let lb = NsGuard(Netns::create(&format!("{NS_PREFIX}{pid}-lb"))?);
        let (tn, ln) = (tor.0.name.clone(), lb.0.name.clone());
        // The veth pair is made between the two namespaces, never in the root one.
        sys::ip(&[
            "-n", &tn, "link", "add", "tor-lb1", "type", "veth", "peer", "name", "eth0", "netns",
            &ln,
        ])?;
        sys::ip_batch(
            Some(&tn),
            &[
                "addr add 10.0.1.1/24 dev tor-lb1".into(),
                "link set tor-lb1 up".into(),
            ],
        )?;
        sys::ip_batch(
            Some(&ln),
            &[
                "addr add 10.0.1.2/24 dev eth0".into(),
                "link set eth0 up".into(),
                format!("addr add {VIP}/32 dev lo"),
            ],
        )?;
        let backend = Backend::start(&ln)?;

        let (tdir, ldir) = (dir.path().join("tor"), dir.path().join("lb"));
        std::fs::create_dir_all(&tdir)?;
        std::fs::create_dir_all(&ldir)?;
        let include = ldir.join("acast-prefixes.conf");
        std::fs::write(&include, ach::DUMMY_INCLUDE)?;
        std::fs::write(
            tdir.join("bird.conf"),
            format!(
                "router id 10.0.1.1;\nlog \"{}\" all;\nprotocol device {{ }}\n\
                 protocol kernel kernel4 {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
                 protocol bgp lb1 {{\n  local 10.0.1.1 as 65000; neighbor 10.0.1.2 as 65001;\n  {TIMERS}\n\
                 \x20 ipv4 {{ import where net ~ [ 192.0.2.0/24{{32,32}} ]; export none; }};\n}}\n",
                tdir.join("bird.log").display()
            ),
        )?;
        std::fs::write(
            ldir.join("bird.conf"),
            format!(
                "router id 10.0.1.2;\nlog \"{}\" all;\ninclude \"{}\";\nprotocol device {{ }}\n\
                 protocol static static_acast {{ ipv4; route {VIP}/32 blackhole; }}\n\
                 filter acast_export {{\n  if source != RTS_STATIC then reject;\n  if net ~ ACAST_PS_ADVERTISE then accept;\n  reject;\n}}\n\
                 protocol bgp tor {{\n  local 10.0.1.2 as 65001; neighbor 10.0.1.1 as 65000;\n  {TIMERS}\n\
                 \x20 ipv4 {{ import none; export filter acast_export; next hop self; }};\n}}\n",
                ldir.join("bird.log").display(),
                include.display()
            ),
        )?;
        let tor_bird = sys::start_bird("ToR BIRD", Some(&tn), &tdir)?;
        let lb_bird = sys::start_bird("LB BIRD", Some(&ln), &ldir)?;

        let cfg = ldir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n    stats socket {}/admin.sock mode 600 level admin\n\n\
                 defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\n\
                 frontend www\n    bind {VIP}:80\n    default_backend web\n\n\
                 backend web\n    server be1 127.0.0.1:{BACKEND_PORT}\n",
                ldir.display()
            ),
        )?;
        let haproxy =
            sys::start_haproxy("HAProxy master", Some(&ln), &ldir, Duration::from_secs(10))?;

        let tor_sock = tdir.join("bird.ctl");
        sys::wait_for(
            "BGP session ToR ↔ LB Established",
            Duration::from_secs(20),
            || Ok(birdc(&tor_sock, "show protocols lb1")?.contains("Established")),
        )
        .map_err(|e| {
            anyhow!(
                "{e}; ToR BIRD log:\n{}\nLB BIRD log:\n{}",
                sys::tail(&tdir.join("bird.log"), 15),
                sys::tail(&ldir.join("bird.log"), 15)
            )
        })?;
        let poller = RoutePoller::start(&tn)?;
        Ok(Lab {
            poller,
            haproxy,
            _lb_bird: lb_bird,
            _tor_bird: tor_bird,
            backend,
            lb,
            _tor: tor,
            lb_sock: ldir.join("bird.ctl"),
            include,
            dir,
        })
    }

    fn lb_dir(&self) -> PathBuf {
        self.dir.path().join("lb")
    }

    /// Dummy-only include, applied (what a stopped checker leaves behind at best).
    fn reset_include(&self) -> Result<()> {
        let tmp = self.include.with_extension("tmp");
        std::fs::write(&tmp, ach::DUMMY_INCLUDE)?;
        std::fs::rename(&tmp, &self.include)?;
        let reply = birdc(&self.lb_sock, "configure")?;
        if !reply.contains("Reconfigured") && !reply.contains("Reconfiguration in progress") {
            bail!("LB BIRD configure after reset: {}", reply.trim());
        }
        self.wait_route(false, Instant::now(), Duration::from_secs(10), None, &[])
            .context("ToR route after resetting the include to dummy only")?;
        Ok(())
    }

    /// Waits for the first poll after `after` that sees the route in state
    /// `present`; fails when the checker dies or `limit` passes.
    fn wait_route(
        &self,
        present: bool,
        after: Instant,
        limit: Duration,
        mut checker: Option<&mut Daemon>,
        logs: &[PathBuf],
    ) -> Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = self.poller.first(present, after)? {
                return Ok(at);
            }
            if let Some(c) = checker.as_deref_mut() {
                c.check_running()?;
            }
            if Instant::now() > deadline {
                let what = if present { "appear" } else { "disappear" };
                let mut msg =
                    format!("{VIP}/32 did not {what} in the ToR's kernel table within {limit:?}");
                if let Some(c) = checker.as_deref() {
                    let _ = write!(
                        msg,
                        "\n--- {} ({}):\n{}",
                        c.what,
                        c.log.display(),
                        sys::tail(&c.log, 20)
                    );
                }
                for l in logs {
                    let _ = write!(msg, "\n--- {}:\n{}", l.display(), sys::tail(l, 20));
                }
                let _ = write!(
                    msg,
                    "\n--- LB BIRD log:\n{}\n--- include:\n{}",
                    sys::tail(&self.lb_dir().join("bird.log"), 10),
                    std::fs::read_to_string(&self.include).unwrap_or_default()
                );
                bail!(msg);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The N failure/recovery samples against a running checker.
    fn measure(&self, checker: &mut Daemon, t: &Timing, logs: &[PathBuf]) -> Result<Samples> {
        self.backend.set(200);
        // Start-up: document, HAProxy reload, `rise` passes, announce.
        self.wait_route(
            true,
            Instant::now(),
            Duration::from_secs(30),
            Some(checker),
            logs,
        )
        .context("initial announcement")?;
        let fail_limit = t.interval * (t.fall + 2) + t.timeout + Duration::from_secs(10);
        let rise_limit = t.interval * (t.rise + 2) + t.timeout + Duration::from_secs(10);
        let mut s = Samples::default();
        for i in 0..t.samples {
            self.haproxy_alive()?;
            let pause = t.interval.mul_f64(rand::random::<f64>());
            std::thread::sleep(pause);
            let t0 = Instant::now();
            self.backend.set(503);
            let gone = self
                .wait_route(false, t0, fail_limit, Some(checker), logs)
                .with_context(|| format!("failure {}", i + 1))?;
            s.gone.push(gone - t0);
            // The recovery gets its own random phase too.
            std::thread::sleep(t.interval.mul_f64(rand::random::<f64>()));
            let t1 = Instant::now();
            self.backend.set(200);
            let back = self
                .wait_route(true, t1, rise_limit, Some(checker), logs)
                .with_context(|| format!("recovery {}", i + 1))?;
            s.back.push(back - t1);
            eprintln!(
                "        sample {}: gone after {} ms, back after {} ms",
                i + 1,
                ms(gone - t0),
                ms(back - t1)
            );
        }
        Ok(s)
    }

    fn haproxy_alive(&self) -> Result<()> {
        // check_running needs &mut; a dead master shows as a refused master socket.
        let m = self.lb_dir().join("master.sock");
        UnixStream::connect(&m).map(|_| ()).map_err(|e| {
            anyhow!(
                "HAProxy master socket {}: {e}; log:\n{}",
                m.display(),
                sys::tail(&self.haproxy.log, 20)
            )
        })
    }
}

/// `birdc -s SOCK CMD`; its output.
fn birdc(sock: &Path, cmd: &str) -> Result<String> {
    let out = Command::new(BIRDC)
        .arg("-s")
        .arg(sock)
        .args(cmd.split(' '))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running birdc {cmd}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------- backend

/// HTTP responder on 127.0.0.1:8080 inside the LB namespace: a thread of
/// this process whose listening socket was created after `setns` into the
/// namespace. Answers every request with the current status and closes.
struct Backend {
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    listener: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(ns: &str) -> Result<Backend> {
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<TcpListener, String>>();
        let path = format!("/run/netns/{ns}");
        let (st, sp) = (status.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("lbbench-backend".into())
            .spawn(move || {
                let bound = (|| -> Result<TcpListener> {
                    let f = std::fs::File::open(&path).with_context(|| path.clone())?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("setns({path})"))?;
                    Ok(TcpListener::bind(("127.0.0.1", BACKEND_PORT))?)
                })();
                let listener = match bound.and_then(|l| Ok((l.try_clone()?, l))) {
                    Ok((mine, theirs)) => {
                        let _ = tx.send(Ok(theirs));
                        mine
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                // Bounded by the stop flag: Drop shuts the socket down, which
                // wakes accept() with an error.
                while !sp.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let st = st.clone();
                            std::thread::spawn(move || serve(conn, &st));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })?;
        let listener = rx
            .recv_timeout(Duration::from_secs(5))
            .context("backend thread did not start")?
            .map_err(|e| anyhow!("backend on 127.0.0.1:{BACKEND_PORT} in {ns}: {e}"))?;
        Ok(Backend {
            status,
            stop,
            listener,
            thread: Some(thread),
        })
    }

    fn set(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }
}

fn serve(mut conn: TcpStream, status: &AtomicU16) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    let code = status.load(Ordering::SeqCst);
    let reason = if code == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let _ = conn.write_all(
        format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            .as_bytes(),
    );
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- observer

#[derive(Default)]
struct PollState {
    present: Option<bool>,
    /// Every change of presence, timestamped at the poll that saw it.
    events: Vec<(bool, Instant)>,
    first: Option<Instant>,
    last: Option<Instant>,
    polls: u32,
    max_gap: Duration,
    error: Option<String>,
}

/// A thread in the ToR namespace dumping the kernel's IPv4 routes over
/// rtnetlink every `POLL` (plus the dump's own time).
struct RoutePoller {
    state: Arc<Mutex<PollState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RoutePoller {
    fn start(ns: &str) -> Result<RoutePoller> {
        let state = Arc::new(Mutex::new(PollState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let path = format!("/run/netns/{ns}");
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("lbbench-tor-poll".into())
            .spawn(move || {
                let setup = (|| -> Result<tokio::runtime::Runtime> {
                    let f = std::fs::File::open(&path).with_context(|| path.clone())?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("setns({path})"))?;
                    Ok(tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?)
                })();
                let rt = match setup {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let handle = match rtnetlink::new_connection() {
                        Ok((conn, handle, _)) => {
                            tokio::spawn(conn);
                            handle
                        }
                        Err(e) => {
                            let _ = tx.send(Err(format!("netlink socket: {e}")));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(()));
                    while !sp.load(Ordering::SeqCst) {
                        let r = vip_present(&handle).await;
                        let now = Instant::now();
                        {
                            let mut s = st.lock().unwrap();
                            match r {
                                Ok(p) => {
                                    if s.present != Some(p) {
                                        s.present = Some(p);
                                        s.events.push((p, now));
                                    }
                                    if let Some(last) = s.last {
                                        s.max_gap = s.max_gap.max(now - last);
                                    }
                                    s.first.get_or_insert(now);
                                    s.last = Some(now);
                                    s.polls = s.polls.saturating_add(1);
                                }
                                Err(e) => {
                                    s.error = Some(format!("route dump in the ToR namespace: {e}"));
                                    return;
                                }
                            }
                        }
                        tokio::time::sleep(POLL).await;
                    }
                });
            })?;
        rx.recv_timeout(Duration::from_secs(5))
            .context("route observer did not start")?
            .map_err(|e| anyhow!(e))?;
        Ok(RoutePoller {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// The first observation at or after `after` of the route in state `present`.
    fn first(&self, present: bool, after: Instant) -> Result<Option<Instant>> {
        let s = self.state.lock().unwrap();
        if let Some(e) = &s.error {
            bail!("{e}");
        }
        // A state already holding at `after` counts from the first poll after it.
        let mut current = None;
        for &(p, at) in &s.events {
            if at < after {
                current = Some(p);
            } else if p == present {
                return Ok(Some(at));
            } else {
                current = Some(p);
            }
        }
        if current == Some(present) {
            if let Some(last) = s.last.filter(|l| *l >= after) {
                return Ok(Some(last));
            }
        }
        Ok(None)
    }

    /// (mean, longest) time between two polls so far.
    fn gaps(&self) -> (Duration, Duration) {
        let s = self.state.lock().unwrap();
        let mean = match (s.first, s.last) {
            (Some(f), Some(l)) if s.polls > 1 => (l - f) / (s.polls - 1),
            _ => Duration::ZERO,
        };
        (mean, s.max_gap)
    }
}

impl Drop for RoutePoller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether the main table holds 192.0.2.10/32.
async fn vip_present(h: &rtnetlink::Handle) -> Result<bool> {
    let msg = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut routes = h.route().get(msg).execute();
    let mut found = false;
    while let Some(r) = routes.try_next().await? {
        if r.header.table == 254
            && r.header.destination_prefix_length == 32
            && r.attributes.iter().any(
                |a| matches!(a, RouteAttribute::Destination(RouteAddress::Inet(ip)) if *ip == VIP),
            )
        {
            found = true;
        }
    }
    Ok(found)
}
