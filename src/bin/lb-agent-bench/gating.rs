//! Health gating CPU (docs/performance.md, "The targets"): the whole lb-agent process checking 1,000
//! VIPs × 2 services at a 1 s interval through a real HAProxy, next to
//! anycast-healthchecker on the same services at the largest scale it
//! sustains.
//!
//! Everything runs in a namespace of its own (`lbbench-gate`): the VIPs
//! (198.18.0.0/15, the benchmarking range) on its loopback, a HAProxy 2.6
//! master whose frontends answer the checks themselves (`http-request return
//! status 200`, so no backend's cost is in the figure, and the same for both
//! checkers), and a BIRD that includes the prefix file. Checks done are
//! counted by HAProxy (sum of the frontends' `req_tot`), CPU by /proc
//! (user + system of the checker and of the children it waited for).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lb_agent::config::builder::AgentToml;
use serde_json::json;

use crate::ach::{self, Ach};
use crate::sys::{self, Daemon, Netns};

const NETNS: &str = "lbbench-gate";
const INTERVAL_S: f64 = 1.0;
const TIMEOUT_S: f64 = 0.5;

/// Sizes of one run.
pub struct GateSizes {
    pub vips: usize,
    /// Servers of the pool behind each VIP's frontends (the agent holds them
    /// all, so the run also gives the whole agent's resident memory).
    pub servers: usize,
    /// Seconds of steady state measured per run.
    pub window: Duration,
    /// anycast-healthchecker VIP counts tried (two services each), smallest
    /// first; the series stops at the first it does not sustain.
    pub ach_scales: Vec<usize>,
}

impl GateSizes {
    pub fn new(quick: bool) -> GateSizes {
        if quick {
            GateSizes {
                vips: 50,
                servers: 20,
                window: Duration::from_secs(3),
                ach_scales: vec![5, 10],
            }
        } else {
            GateSizes {
                vips: 1000,
                servers: 20,
                window: Duration::from_secs(30),
                ach_scales: vec![25, 50, 100, 200, 300, 400],
            }
        }
    }
}

/// The `i`-th VIP, in 198.18.0.0/15.
fn vip(i: usize) -> String {
    format!("198.18.{}.{}", i / 250, i % 250 + 1)
}

/// What one checker did over a window.
struct Sample {
    cpu: Duration,
    /// The part of `cpu` spent in the kernel.
    system: Duration,
    wall: Duration,
    checks: u64,
    rss_kb: Option<u64>,
    hwm_kb: Option<u64>,
    /// Resident anonymous memory (heap, stacks) and file-backed pages (the
    /// binary's code, libraries: shared page cache).
    anon_kb: Option<u64>,
    file_kb: Option<u64>,
}

impl Sample {
    fn core_pct(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
    fn per_check_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.checks.max(1) as f64
    }
    fn kernel_pct(&self) -> f64 {
        100.0 * self.system.as_secs_f64() / self.cpu.as_secs_f64().max(1e-9)
    }
    fn rate(&self) -> f64 {
        self.checks as f64 / self.wall.as_secs_f64()
    }
}

/// Sum of `req_tot` over the FRONTEND rows of `show stat`.
fn requests(admin: &Path) -> Result<u64> {
    let mut s =
        UnixStream::connect(admin).with_context(|| format!("connecting to {}", admin.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"show stat\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let mut lines = out.lines();
    let header = lines.next().context("empty show stat")?;
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let col = |n: &str| {
        cols.iter()
            .position(|c| *c == n)
            .with_context(|| format!("no {n} column in show stat"))
    };
    let (sv, req) = (col("svname")?, col("req_tot")?);
    let mut total = 0;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if f.get(sv) == Some(&"FRONTEND") {
            total += f.get(req).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Measures `pid` for `window` after it has run for `warmup`.
fn sample(d: &mut Daemon, admin: &Path, warmup: Duration, window: Duration) -> Result<Sample> {
    std::thread::sleep(warmup);
    d.check_running()?;
    let (c0, r0, t0) = (sys::cpu_times(d.pid())?, requests(admin)?, Instant::now());
    std::thread::sleep(window);
    d.check_running()?;
    let (c1, r1, wall) = (sys::cpu_times(d.pid())?, requests(admin)?, t0.elapsed());
    let system = c1.1.saturating_sub(c0.1);
    Ok(Sample {
        cpu: c1.0.saturating_sub(c0.0) + system,
        system,
        wall,
        checks: r1.saturating_sub(r0),
        rss_kb: sys::status_kb(d.pid(), "VmRSS:"),
        hwm_kb: sys::status_kb(d.pid(), "VmHWM:"),
        anon_kb: sys::status_kb(d.pid(), "RssAnon:"),
        file_kb: sys::status_kb(d.pid(), "RssFile:"),
    })
}

/// Prefixes (other than the dummy) in the include file.
fn announced(include: &Path) -> usize {
    std::fs::read_to_string(include)
        .unwrap_or_default()
        .matches("198.18.")
        .count()
}

/// The namespace, HAProxy and BIRD both checkers run against.
struct Lab {
    dir: tempfile::TempDir,
    // Drop order: daemons first, then the namespace.
    bird: Option<Daemon>,
    haproxy: Option<Daemon>,
    _ns: Netns,
}

impl Lab {
    fn p(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    fn start(vips: usize) -> Result<Lab> {
        let ns = Netns::create(NETNS)?;
        let dir = tempfile::Builder::new()
            .prefix("lb-agent-bench-gate.")
            .tempdir()?;
        let mut lab = Lab {
            dir,
            bird: None,
            haproxy: None,
            _ns: ns,
        };
        let lines: Vec<String> = (0..vips)
            .map(|i| format!("address add {}/32 dev lo", vip(i)))
            .collect();
        sys::ip_batch(Some(NETNS), &lines)?;

        // BIRD: every VIP as a static route, exported only when in the set.
        std::fs::write(lab.p("prefixes.conf"), ach::DUMMY_INCLUDE)?;
        let mut bird = format!(
            "router id 10.0.0.1;\nlog \"{}\" all;\ninclude \"{}\";\nprotocol device {{ }}\n\
             protocol static vips {{\n    ipv4;\n",
            lab.p("bird.log").display(),
            lab.p("prefixes.conf").display()
        );
        for i in 0..vips {
            bird.push_str(&format!("    route {}/32 blackhole;\n", vip(i)));
        }
        bird.push_str("}\n");
        std::fs::write(lab.p("bird.conf"), bird)?;
        lab.bird = Some(sys::start_bird("bird", Some(NETNS), lab.dir.path())?);

        // HAProxy: a bootstrap config with the admin socket; lb-agent
        // renders the real one and reloads through the master socket.
        std::fs::write(
            lab.p("haproxy.cfg"),
            format!(
                "global\n    stats socket {} mode 600 level admin\n\
                 defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n",
                lab.p("admin.sock").display()
            ),
        )?;
        lab.haproxy = Some(sys::start_haproxy(
            "haproxy",
            Some(NETNS),
            lab.dir.path(),
            Duration::from_secs(20),
        )?);
        Ok(lab)
    }

    /// Desired state: `vips` VIPs, each with two HTTP frontends (ports 80
    /// and 81) that answer 200 themselves, in front of a pool of `servers`
    /// servers (never used: no traffic reaches them, and they have no
    /// HAProxy checks).
    fn document(&self, vips: usize, servers: usize) -> Result<PathBuf> {
        let doc = json!({
            "schema": 1,
            "revision": 1,
            "group": "bench",
            "vips": (0..vips).map(|i| json!({"address": format!("{}/32", vip(i))})).collect::<Vec<_>>(),
            "frontends": (0..vips).flat_map(|i| [(i, 'a', 80), (i, 'b', 81)]).map(|(i, s, port)| json!({
                "name": format!("v{i}{s}"),
                "bind": [format!("{}:{port}", vip(i))],
                "mode": "http",
                "default_pool": format!("pool{i:04}"),
                "logic": ["ok"],
                "health": {"type": "http", "path": "/"},
            })).collect::<Vec<_>>(),
            "pools": (0..vips).map(|i| json!({
                "name": format!("pool{i:04}"),
                "mode": "http",
                "balance": "roundrobin",
                "servers": (0..servers).map(|k| json!({
                    "name": format!("s{k:03}"),
                    "address": format!("10.{}.{}.{}", i / 250, i % 250, k + 1),
                    "port": 8080,
                    "weight": 10,
                    "state": "ready",
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "logic": [{"name": "ok", "template": "http-request return status 200"}],
        });
        let path = self.p("desired.json");
        std::fs::write(&path, serde_json::to_vec(&doc)?)?;
        Ok(path)
    }

    fn agent_toml(&self, doc: &Path) -> Result<PathBuf> {
        let state = self.p("state");
        std::fs::create_dir_all(&state)?;
        std::fs::create_dir_all(self.p("data"))?;
        let path = self.p("agent.toml");
        AgentToml::new()
            .name("bench")
            .group("bench")
            .state_dir(&state)
            .url(&format!("file://{}", doc.display()))
            .poll_interval(Duration::from_secs(1))
            .cache(&state.join("last-good.json"))
            .haproxy_config(&self.p("haproxy.cfg"))
            .runtime_socket(&self.p("admin.sock"))
            .master_socket(&self.p("master.sock"))
            .haproxy_binary(Path::new(crate::HAPROXY))
            .reload_command(&[])
            .min_reload_interval(Duration::from_secs(1))
            .haproxy_state_file(&state.join("server-state"))
            .data_dir(&self.p("data"))
            .reload_timeout(Duration::from_secs(60))
            .health_interval(Duration::from_secs_f64(INTERVAL_S))
            .health_timeout(Duration::from_secs_f64(TIMEOUT_S))
            .rise(2)
            .fall(3)
            .include_file(&self.p("prefixes.conf"))
            .control_socket(&self.p("bird.ctl"))
            .vip_interface("lo")
            .manage_vips(false)
            .status_socket(&self.p("status.sock"))
            .status_group("root")
            .write(&path)?;
        Ok(path)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut h) = self.haproxy.take() {
            h.stop();
        }
        if let Some(mut b) = self.bird.take() {
            b.stop();
        }
    }
}

/// lb-agent on every service: returns the sample. `profile` (a shell
/// command, `{pid}` replaced by the agent's) runs during the window.
fn run_agent(lab: &Lab, agent: &Path, sz: &GateSizes, profile: Option<&str>) -> Result<Sample> {
    let doc = lab.document(sz.vips, sz.servers)?;
    let toml = lab.agent_toml(&doc)?;
    let mut d = Daemon::spawn(
        "lb-agent",
        Some(NETNS),
        agent,
        &["run", "--config", &toml.display().to_string()],
        &lab.p("agent.log"),
    )?;
    let include = lab.p("prefixes.conf");
    let started = Instant::now();
    let mut last = 0;
    sys::wait_for(
        "lb-agent announcing every VIP",
        Duration::from_secs(180),
        || {
            d.check_running()?;
            last = announced(&include);
            Ok(last == sz.vips)
        },
    )
    .with_context(|| {
        format!(
            "{last} of {} VIPs announced; agent log:\n{}",
            sz.vips,
            sys::tail(&lab.p("agent.log"), 20)
        )
    })?;
    eprintln!(
        "      lb-agent: {} VIPs announced {:.1} s after start; measuring {} s",
        sz.vips,
        started.elapsed().as_secs_f64(),
        sz.window.as_secs()
    );
    let profiler = match profile {
        Some(cmd) => {
            let cmd = cmd.replace("{pid}", &d.pid().to_string());
            eprintln!("      profiling: {cmd}");
            Some(
                std::process::Command::new("sh")
                    .args(["-c", &cmd])
                    .spawn()
                    .with_context(|| format!("starting {cmd:?}"))?,
            )
        }
        None => None,
    };
    let s = sample(
        &mut d,
        &lab.p("admin.sock"),
        Duration::from_secs(2),
        sz.window,
    );
    if let Some(mut p) = profiler {
        // Bounded: the profiler gets the window plus 60 s to finish.
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if p.try_wait()?.is_none() {
            eprintln!("      profiler still running after the window + 60 s: killed");
            let _ = p.kill();
            let _ = p.wait();
        }
    }
    d.stop();
    s
}

/// anycast-healthchecker on the first `n` VIPs (2 `n` services).
fn run_ach(lab: &Lab, ach: &Ach, n: usize, window: Duration) -> Result<Sample> {
    std::fs::write(lab.p("prefixes.conf"), ach::DUMMY_INCLUDE)?;
    let dir = lab.p(&format!("ach-{n}"));
    std::fs::create_dir_all(&dir)?;
    let settings = ach::Settings {
        interval: INTERVAL_S,
        timeout: TIMEOUT_S,
        rise: 2,
        fall: 3,
        interface: "lo".into(),
        bird_conf: lab.p("prefixes.conf"),
        bird_reconfigure_cmd: format!(
            "/usr/sbin/birdc -s {} configure",
            lab.p("bird.ctl").display()
        ),
    };
    // One check per VIP (anycast-healthchecker refuses two checks of one
    // prefix), covering both of its services.
    let services: Vec<ach::Service> = (0..n)
        .map(|i| ach::Service {
            name: format!("v{i}"),
            prefix: format!("{}/32", vip(i)),
            check_cmd: ach::http_checks_cmd(
                &[80, 81].map(|port| format!("http://{}:{port}/", vip(i))),
                TIMEOUT_S,
            ),
        })
        .collect();
    let (conf, confd) = ach::write_config(&dir, &settings, &services)?;
    let mut d = ach::spawn(ach, &dir, &conf, &confd, Some(NETNS))?;
    // Rise 2 at 1 s: the prefixes are in after about 2 s when it keeps up.
    let s = sample(&mut d, &lab.p("admin.sock"), Duration::from_secs(4), window);
    let got = announced(&lab.p("prefixes.conf"));
    d.stop();
    let s = s.with_context(|| format!("ach log:\n{}", sys::tail(&dir.join("ach.log"), 20)))?;
    eprintln!(
        "      anycast-healthchecker, {n} VIPs ({} services): {:.0} checks/s, {:.0}% of one core, {got} of {n} prefixes announced",
        2 * n,
        s.rate(),
        s.core_pct(),
    );
    Ok(s)
}

/// What the run measured.
pub struct Gating {
    /// (lb-agent cell, baseline cell) of the gating row.
    pub row: (String, String),
    /// The whole agent's memory while it held the run's servers and VIPs.
    pub agent_memory: String,
}

/// The figure.
pub fn fig_gating(
    sz: &GateSizes,
    agent: &Path,
    ach: Result<&Ach, String>,
    profile: Option<&str>,
) -> Result<Gating> {
    if let Err(why) = sys::can_netns() {
        bail!("{why}");
    }
    if !Path::new(sys::BIRD).exists() {
        bail!("{} not found (apt-get install -y bird2)", sys::BIRD);
    }
    if !agent.exists() {
        bail!(
            "lb-agent binary {} not found (cargo build --release, or --agent PATH)",
            agent.display()
        );
    }
    let lab = Lab::start(sz.vips)?;
    let services = 2 * sz.vips;
    let nominal = services as f64 / INTERVAL_S;
    let a = run_agent(&lab, agent, sz, profile)?;
    let ours = format!(
        "{:.1}% of one core = {:.0} µs CPU per check ({:.0}% of it in the kernel: loopback TCP: the kernel runs much of HAProxy's side of each connection in the checker's context); RSS {:.1} MB; {:.0} checks/s done ({} services on {} VIPs at {} s, HTTP GET through HAProxy, timeout {} ms; whole agent process over {} s)",
        a.core_pct(),
        a.per_check_us(),
        a.kernel_pct(),
        a.rss_kb.unwrap_or(0) as f64 / 1024.0,
        a.rate(),
        services,
        sz.vips,
        INTERVAL_S,
        TIMEOUT_S * 1000.0,
        a.wall.as_secs()
    );
    let mb = |kb: Option<u64>| kb.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    let agent_memory = format!(
        "whole lb-agent process: VmRSS {} MB = {} MB anonymous (heap, stacks) + {} MB file-backed (its code and libraries, shared page cache); peak VmHWM {} MB, transient, while the first document was applied (rendering haproxy.cfg; docs/performance.md); holding {} servers in {} pools and {} VIPs with {} checked services (the gating run)",
        mb(a.rss_kb),
        mb(a.anon_kb),
        mb(a.file_kb),
        mb(a.hwm_kb),
        sz.vips * sz.servers,
        sz.vips,
        sz.vips,
        services
    );
    let ach = match ach {
        Ok(a) => a,
        Err(why) => {
            return Ok(Gating {
                row: (ours, format!("n/a (anycast-healthchecker: {why})")),
                agent_memory,
            })
        }
    };
    let mut sustained: Option<(usize, Sample)> = None;
    let mut failed: Option<(usize, Sample)> = None;
    for &n in &sz.ach_scales {
        let window = sz.window.min(Duration::from_secs(15));
        let s = run_ach(&lab, ach, n, window)?;
        if s.rate() >= 0.95 * (2 * n) as f64 / INTERVAL_S {
            sustained = Some((n, s));
        } else {
            failed = Some((n, s));
            break;
        }
    }
    let mut base = format!(
        "anycast-healthchecker {} (a thread per VIP, one check per VIP: `ip address show` + one curl fetching both services; log level warning): ",
        ach::VERSION
    );
    match &sustained {
        Some((n, s)) => base.push_str(&format!(
            "largest scale sustained of {:?} VIPs: {n} VIPs = {:.0} service checks/s at {:.0}% of one core = {:.2} ms CPU per service check ({:.0}× lb-agent's), RSS {:.1} MB",
            sz.ach_scales,
            s.rate(),
            s.core_pct(),
            s.per_check_us() / 1000.0,
            s.per_check_us() / a.per_check_us().max(0.001),
            s.rss_kb.unwrap_or(0) as f64 / 1024.0
        )),
        None => base.push_str("did not sustain even the smallest scale"),
    }
    if let Some((n, s)) = &failed {
        let want = (2 * n) as f64 / INTERVAL_S;
        base.push_str(&format!(
            "; at {n} VIPs only {:.0} of {want:.0} checks/s ({:.1}%, below the 95% counted as sustained) at {:.0}% of one core",
            s.rate(),
            100.0 * s.rate() / want,
            s.core_pct()
        ));
    }
    if let Some((_, s)) = &sustained {
        base.push_str(&format!(
            "; {nominal:.0} checks/s would take ≈ {:.1} cores",
            s.per_check_us() * nominal / 1e6
        ));
    }
    Ok(Gating {
        row: (ours, base),
        agent_memory,
    })
}
