//! Benchmark harness (docs/performance.md, "The targets"): measures lb-agent against real components and
//! prints one markdown table, each figure next to the naive way measured in
//! the same run. It never asserts timings; anything it cannot measure is
//! printed as `n/a (reason)`.
//!
//! `./bench.sh [--quick] [--out docs/benchmarks.md] [--only LIST]` (installs what it
//! needs, builds, runs this binary; `--help` lists the options)

#![allow(clippy::disallowed_methods)] // it measures real elapsed time

mod ach;
mod change;
mod fleet;
mod gating;
mod sys;
mod tor;

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use lb_agent::config::{HaproxyConfig, SlotPolicy};
use lb_agent::haproxy::master::MasterClient;
use lb_agent::haproxy::render::{RenderSettings, Renderer};
use lb_agent::haproxy::runtime::{RuntimeClient, Session};
use lb_agent::model::observed::ObservedServers;
use lb_agent::model::validate::{parse_document, ValidateContext};
use lb_agent::model::{DesiredState, ServerState};
use lb_agent::plan::sim::SimHaproxy;
use lb_agent::plan::{plan, Plan, PlanOptions, Structure};
use lb_agent::reconcile::{Candidate, HaproxyStatus, Reconciler, ReconcilerSettings};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const HAPROXY: &str = "/usr/sbin/haproxy";
const HEADER: &str = "| figure | lb-agent | baseline in the same run |";

/// Sizes of one run.
struct Sizes {
    pools: usize,
    servers: usize,
    plan_runs: usize,
    hap_pools: usize,
    changes: usize,
    repeats: usize,
    reloads: usize,
    readbacks: usize,
    burst: usize,
    burst_window: Duration,
    min_reload: Duration,
    /// Published changes measured with the long-polling API.
    longpoll_changes: usize,
    /// Published changes measured with the plain (non-holding) API, and its poll interval.
    plain_changes: usize,
    plain_interval: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                pools: 100,
                servers: 20,
                plan_runs: 20,
                hap_pools: 50,
                changes: 200,
                repeats: 3,
                reloads: 1,
                readbacks: 5,
                burst: 20,
                burst_window: Duration::from_secs(2),
                min_reload: Duration::from_secs(1),
                longpoll_changes: 20,
                plain_changes: 5,
                plain_interval: Duration::from_millis(200),
            }
        } else {
            Sizes {
                pools: 1000,
                servers: 20,
                plan_runs: 100,
                hap_pools: 1000,
                changes: 2000,
                repeats: 5,
                reloads: 3,
                readbacks: 20,
                burst: 100,
                burst_window: Duration::from_secs(10),
                min_reload: Duration::from_secs(5),
                longpoll_changes: 100,
                plain_changes: 20,
                plain_interval: Duration::from_secs(1),
            }
        }
    }
}

struct Row {
    figure: String,
    ours: String,
    baseline: String,
}

fn na(reason: impl std::fmt::Display) -> String {
    format!("n/a ({reason})")
}

fn row(figure: String, r: Result<(String, String)>) -> Row {
    match r {
        Ok((ours, baseline)) => Row {
            figure,
            ours,
            baseline,
        },
        Err(e) => Row {
            figure,
            ours: na(format!("{e:#}").replace('|', "/")),
            baseline: "—".into(),
        },
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and p99 (nearest rank) of durations, in ms.
fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let med = if v.len() % 2 == 1 {
        ms(v[v.len() / 2])
    } else {
        (ms(v[v.len() / 2 - 1]) + ms(v[v.len() / 2])) / 2.0
    };
    let rank = ((v.len() as f64) * 0.99).ceil() as usize;
    (med, ms(v[rank.clamp(1, v.len()) - 1]))
}

fn median(v: Vec<Duration>) -> f64 {
    stats(v).0
}

// ---------------------------------------------------------------- documents

/// A desired-state document: `pools` pools × `servers` servers, and with
/// `frontends` one VIP + one frontend per pool. Written as text straight away
/// (as an API body arrives), so no JSON tree inflates the memory figure.
fn document(revision: u64, pools: usize, servers: usize, frontends: bool) -> String {
    let mut vips = Vec::new();
    let mut fes = Vec::new();
    let mut ps = Vec::with_capacity(pools);
    for p in 0..pools {
        let srv: Vec<String> = (0..servers)
            .map(|i| {
                format!(
                    r#"{{"name":"s{i:03}","address":"10.{}.{}.{}","port":8080,"weight":10,"state":"ready"}}"#,
                    p / 256,
                    p % 256,
                    i + 1
                )
            })
            .collect();
        ps.push(format!(
            r#"{{"name":"pool{p:04}","mode":"http","balance":"roundrobin","servers":[{}]}}"#,
            srv.join(",")
        ));
        if frontends {
            let vip = format!("198.18.{}.{}", p / 256, p % 256);
            vips.push(format!(r#"{{"address":"{vip}/32"}}"#));
            fes.push(format!(
                r#"{{"name":"fe{p:04}","bind":["{vip}:80"],"mode":"http","default_pool":"pool{p:04}"}}"#
            ));
        }
    }
    format!(
        r#"{{"schema":1,"revision":{revision},"group":"blue","vips":[{}],"frontends":[{}],"pools":[{}]}}"#,
        vips.join(","),
        fes.join(","),
        ps.join(",")
    )
}

fn parse(raw: &[u8]) -> Result<DesiredState> {
    parse_document(
        raw,
        &ValidateContext {
            group: "blue".into(),
        },
    )
    .map_err(|e| anyhow!("document rejected: {e:?}"))
}

/// Changes `n` servers of `d` (pool by pool): even ones get a new weight, odd ones drain
/// (`back` = the other way round, so runs can alternate).
fn change_servers(d: &DesiredState, n: usize, back: bool) -> DesiredState {
    let mut d2 = d.clone();
    let mut k = 0;
    'outer: for pool in d2.pools.values_mut() {
        for s in std::sync::Arc::make_mut(pool).servers.values_mut() {
            if k >= n {
                break 'outer;
            }
            if back {
                s.weight = 10;
                s.state = ServerState::Ready;
            } else if k % 2 == 0 {
                s.weight = 7;
            } else {
                s.state = ServerState::Drain;
            }
            k += 1;
        }
    }
    d2
}

const OPTS: PlanOptions = PlanOptions {
    max_runtime_ops: usize::MAX,
};

// ---------------------------------------------------------------- figure 1 and 5

fn fig_plan(sz: &Sizes) -> Result<(String, String, DesiredState, Plan)> {
    let d = parse(document(1, sz.pools, sz.servers, true).as_bytes())?;
    let observed = SimHaproxy::load(&d, SlotPolicy::Pow2).observe();
    let loaded = Structure::of(&d, "bench");
    let mut times = Vec::with_capacity(sz.plan_runs);
    let mut digests = Vec::with_capacity(sz.plan_runs);
    let mut plans = Vec::with_capacity(sz.plan_runs);
    let mut last = Plan::default();
    for run in 0..sz.plan_runs {
        let mut d2 = d.clone();
        let pool = d2
            .pools
            .values_mut()
            .nth(run % sz.pools)
            .context("no pool")?;
        let s = std::sync::Arc::make_mut(pool)
            .servers
            .values_mut()
            .next()
            .context("no server")?;
        s.weight = 11 + (run % 200) as u16;
        let t = Instant::now();
        let st = Structure::of(&d2, "bench");
        let t2 = Instant::now();
        let p = plan(&d2, &st, Some(&loaded), &observed, OPTS);
        plans.push(t2.elapsed());
        digests.push(t2 - t);
        times.push(t.elapsed());
        if p.commands.len() != 1 || !p.reload.is_empty() {
            bail!(
                "unexpected plan: {} commands, reload {:?}",
                p.commands.len(),
                p.reload
            );
        }
        last = p;
    }
    let (med, p99) = stats(times);
    let (dmed, dp99) = stats(digests);
    let (pmed, pp99) = stats(plans);
    Ok((
        format!(
            "median {med:.2} ms, p99 {p99:.2} ms over {} runs = structure digest (median {dmed:.2} / p99 {dp99:.2} ms) + plan (median {pmed:.2} / p99 {pp99:.2} ms); 1 runtime command, no reload",
            sz.plan_runs
        ),
        "—".into(),
        d,
        last,
    ))
}

/// A `kB` field of this process's /proc status.
fn proc_status_kb(field: &str) -> Option<u64> {
    sys::status_kb(std::process::id(), field)
}

// ---------------------------------------------------------------- HAProxy

/// A HAProxy master started for the bench; stopped by PID on drop.
struct Hap {
    // Before `_dir`: HAProxy stops before its directory is removed.
    _daemon: sys::Daemon,
    _dir: tempfile::TempDir,
    config: PathBuf,
    admin: PathBuf,
    master: PathBuf,
}

impl Hap {
    fn new_dir() -> Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix("lb-agent-bench.")
            .tempdir()?)
    }

    /// `haproxy -W -S master.sock -f cfg`; waits until both sockets answer.
    fn start(dir: tempfile::TempDir, config_text: &str) -> Result<Hap> {
        let p = |n: &str| dir.path().join(n);
        let (config, admin, master) = (p("haproxy.cfg"), p("admin.sock"), p("master.sock"));
        std::fs::write(&config, config_text)?;
        let daemon = sys::start_haproxy("haproxy", None, dir.path(), Duration::from_secs(60))?;
        Ok(Hap {
            _daemon: daemon,
            _dir: dir,
            config,
            admin,
            master,
        })
    }
}

fn renderer(dir: &Path, admin: &Path, pow2: bool) -> Result<Renderer> {
    Renderer::new(
        None,
        RenderSettings {
            runtime_socket: admin.to_path_buf(),
            state_file: dir.join("server-state"),
            hard_stop_after: Duration::from_secs(5),
            data_dir: dir.join("data"),
            slot_policy_pow2: pow2,
            node_name: "bench".into(),
            node_group: "blue".into(),
            node_az: None,
            global: Default::default(),
        },
    )
    .map_err(|e| anyhow!("renderer: {e}"))
}

/// One connection per command, non-interactive mode; returns the number of non-empty replies.
async fn one_connection_per_command(admin: &Path, lines: &[String]) -> Result<usize> {
    let mut refused = 0;
    for l in lines {
        let mut s = tokio::net::UnixStream::connect(admin).await?;
        s.write_all(format!("{l}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        if !out.trim().is_empty() {
            refused += 1;
        }
    }
    Ok(refused)
}

/// The shell-script way: a `socat` process per command. `None` when socat
/// is not installed.
async fn socat_per_command(admin: &Path, lines: &[String]) -> Result<Option<Duration>> {
    if Proc::new("socat").arg("-V").output().is_err() {
        return Ok(None);
    }
    let target = format!("UNIX-CONNECT:{}", admin.display());
    let t = Instant::now();
    for l in lines {
        let mut child = tokio::process::Command::new("socat")
            .args(["-", &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting socat")?;
        let mut stdin = child.stdin.take().context("socat stdin")?;
        stdin.write_all(format!("{l}\n").as_bytes()).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        if !out.status.success() || !out.stdout.iter().all(u8::is_ascii_whitespace) {
            bail!(
                "socat {l:?}: {} {:?}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    Ok(Some(t.elapsed()))
}

/// Planned commands from `observed` to `d2` (must need no reload).
fn plan_runtime(d2: &DesiredState, loaded: &Structure, observed: &ObservedServers) -> Result<Plan> {
    let st = Structure::of(d2, "bench");
    let p = plan(d2, &st, Some(loaded), observed, OPTS);
    if !p.reload.is_empty() {
        bail!("plan wants a reload: {:?}", p.reload);
    }
    Ok(p)
}

/// Reads back the servers and checks that `d2` is what HAProxy runs.
async fn verify(session: &mut Session, d2: &DesiredState, loaded: &Structure) -> Result<()> {
    let obs = session.servers_state().await?;
    let left = plan_runtime(d2, loaded, &obs)?;
    if !left.commands.is_empty() {
        bail!(
            "read back: {} commands still needed, e.g. {}",
            left.commands.len(),
            left.commands[0]
        );
    }
    Ok(())
}

struct HapFigures {
    apply: Result<(String, String)>,
    readback: Result<(String, String)>,
}

async fn fig_haproxy(sz: &Sizes) -> Result<HapFigures> {
    let dir = Hap::new_dir()?;
    let admin = dir.path().join("admin.sock");
    let r = renderer(dir.path(), &admin, false)?;
    let d = parse(document(1, sz.hap_pools, sz.servers, false).as_bytes())?;
    let rendered = r
        .render(&d, &dir.path().join("data"))
        .map_err(|e| anyhow!("render: {e}"))?;
    let config = rendered.config.clone();
    let hap = Hap::start(dir, &config)?;
    let client = RuntimeClient::new(&hap.admin, Duration::from_secs(30));
    let mut session = client.connect().await?;
    let loaded = Structure::of(&d, "bench");

    // Figure 3: read back `show servers state`.
    let readback = async {
        let mut read = Vec::new();
        let mut parsed = Vec::new();
        let mut bytes = 0;
        let mut servers = 0;
        for _ in 0..sz.readbacks {
            let t = Instant::now();
            let raw = session.servers_state_raw().await?;
            read.push(t.elapsed());
            let t = Instant::now();
            let obs = lb_agent::haproxy::parse::servers_state(&raw)?;
            parsed.push(t.elapsed());
            bytes = raw.len();
            servers = obs
                .backends
                .values()
                .map(|b| b.servers.len())
                .sum::<usize>();
        }
        Ok::<_, anyhow::Error>((
            format!(
                "read {:.1} ms + parse {:.1} ms (median of {}), {:.2} MB, {} servers",
                median(read),
                median(parsed),
                sz.readbacks,
                bytes as f64 / 1e6,
                servers
            ),
            "—".into(),
        ))
    }
    .await;

    // Figure 2: apply server changes, pipelined vs one connection per command vs reload.
    let apply = async {
        let changed = change_servers(&d, sz.changes, false);
        let restored = change_servers(&d, sz.changes, true);
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut n_cmds = 0;
        for i in 0..sz.repeats {
            for (pipelined, target) in [(true, &changed), (false, &restored)] {
                let obs = session.servers_state().await?;
                let p = plan_runtime(target, &loaded, &obs)?;
                n_cmds = p.commands.len();
                if pipelined {
                    let t = Instant::now();
                    let rep = session.apply(&p.commands).await?;
                    ours.push(t.elapsed());
                    if !rep.failed.is_empty() || rep.ok != p.commands.len() {
                        bail!("pipelined apply: {} ok, failed {:?}", rep.ok, rep.failed);
                    }
                } else {
                    let lines: Vec<String> = p.commands.iter().map(|c| c.to_line()).collect();
                    let t = Instant::now();
                    let refused = one_connection_per_command(&hap.admin, &lines).await?;
                    theirs.push(t.elapsed());
                    if refused > 0 {
                        bail!("one connection per command: {refused} commands refused (run {i})");
                    }
                }
                verify(&mut session, target, &loaded).await?;
            }
        }
        // Once each: one command at a time on one connection (waiting for
        // each reply), then a socat process per command.
        let obs = session.servers_state().await?;
        let p = plan_runtime(&changed, &loaded, &obs)?;
        let t = Instant::now();
        for c in &p.commands {
            let line = c.to_line();
            let reply = session.command(&line).await?;
            if !reply.trim().is_empty() {
                bail!("one command at a time: {line:?} answered {reply:?}");
            }
        }
        let one_at_a_time = t.elapsed();
        verify(&mut session, &changed, &loaded).await?;
        let obs = session.servers_state().await?;
        let p = plan_runtime(&restored, &loaded, &obs)?;
        let lines: Vec<String> = p.commands.iter().map(|c| c.to_line()).collect();
        let socat = socat_per_command(&hap.admin, &lines).await?;
        if socat.is_some() {
            verify(&mut session, &restored, &loaded).await?;
        }
        let socat = match socat {
            Some(d) => format!("{:.0} ms", ms(d)),
            None => "n/a (socat not installed)".into(),
        };
        session.quit().await;

        // Reload baseline: `haproxy -c` then reload to a new worker.
        let mut checks = Vec::new();
        let mut reloads = Vec::new();
        let master = MasterClient::new(&hap.master, Duration::from_secs(10));
        for _ in 0..sz.reloads {
            let t = Instant::now();
            let out = Proc::new(HAPROXY)
                .arg("-c")
                .arg("-f")
                .arg(&hap.config)
                .output()?;
            checks.push(t.elapsed());
            if !out.status.success() {
                bail!("haproxy -c failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            reloads.push(reload_to_new_worker(&master).await?);
        }
        let servers = sz.hap_pools * sz.servers;
        Ok::<_, anyhow::Error>((
            format!(
                "{:.1} ms for {} commands (median of {}), 0 reloads; read back `show servers state`: all {} changes in force",
                median(ours),
                n_cmds,
                sz.repeats,
                sz.changes
            ),
            format!(
                "one connection per command: {:.1} ms (median of {}, read back: in force); one command at a time on one connection: {:.1} ms; a socat process per command: {socat} (one run each, read back: in force); reload of the {servers}-server config: `haproxy -c` {:.0} ms + reload to new worker {:.0} ms (median of {})",
                median(theirs),
                sz.repeats,
                ms(one_at_a_time),
                median(checks),
                median(reloads),
                sz.reloads
            ),
        ))
    }
    .await;
    drop(hap);
    Ok(HapFigures { apply, readback })
}

/// `reload` on the master socket, then `show proc` every 5 ms until a new worker is listed.
async fn reload_to_new_worker(master: &MasterClient) -> Result<Duration> {
    let before = master.show_proc().await?;
    let t = Instant::now();
    master.reload().await?;
    let deadline = t + Duration::from_secs(60);
    loop {
        if let Ok(now) = master.show_proc().await {
            if (now.master_reloads > before.master_reloads || now.master_pid != before.master_pid)
                && now.current_worker().is_some()
                && now.current_worker() != before.current_worker()
            {
                if now.failed > 0 {
                    bail!("reload failed");
                }
                return Ok(t.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("no new worker after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------- figure 4

/// Reconciler settings for a HAProxy started in `dir` (sockets and files there).
fn reconciler_settings(
    dir: &Path,
    admin: &Path,
    min_reload: Duration,
    verify: Duration,
    max_removal_ratio: f64,
) -> ReconcilerSettings {
    let p = |n: &str| dir.join(n);
    ReconcilerSettings {
        haproxy: HaproxyConfig {
            config: p("haproxy.cfg"),
            runtime_socket: admin.to_path_buf(),
            master_socket: p("master.sock"),
            binary: HAPROXY.into(),
            reload_command: vec![],
            templates: p("templates"),
            min_reload_interval: min_reload,
            max_runtime_ops: 500,
            server_slots: SlotPolicy::Pow2,
            state_file: p("server-state"),
            data_dir: p("data"),
            hard_stop_after: Duration::from_secs(5),
            reload_timeout: Duration::from_secs(15),
            verify_interval: verify,
            // The host tuning keys at their agent.toml defaults.
            ..lb_agent::config::parse_str("[node]\nname = \"bench\"\n", "bench")
                .expect("the built-in defaults parse")
                .haproxy
        },
        state_dir: p("state"),
        cache: p("state/last-good.json"),
        max_removal_ratio,
        socket_timeout: Duration::from_secs(5),
    }
}

async fn fig_burst(sz: &Sizes) -> Result<(String, String)> {
    let dir = Hap::new_dir()?;
    let p = |n: &str| dir.path().join(n);
    let admin = p("admin.sock");
    let bootstrap = format!(
        "global\n    stats socket {} mode 600 level admin\n\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n",
        admin.display()
    );
    let r = renderer(dir.path(), &admin, true)?;
    std::fs::create_dir_all(p("state"))?;
    let settings = reconciler_settings(
        dir.path(),
        &admin,
        sz.min_reload,
        Duration::from_millis(500),
        0.5,
    );
    let hap = Hap::start(dir, &bootstrap)?;
    let vip = "127.0.0.41";
    let port = TcpListener::bind((vip, 0))?.local_addr()?.port();
    let server_port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
    // Each document changes the pool's check interval: a reload-needing change.
    let doc = |rev: u64| {
        json!({"schema": 1, "revision": rev, "group": "blue",
               "vips": [{"address": format!("{vip}/32")}],
               "frontends": [{"name": "web", "bind": [format!("{vip}:{port}")], "mode": "http", "default_pool": "www"}],
               "pools": [{"name": "www", "mode": "http", "balance": "roundrobin",
                          "check": {"type": "tcp", "interval": format!("{}ms", 1000 + rev), "rise": 1, "fall": 1},
                          "servers": [{"name": "a", "address": "127.0.0.1", "port": server_port, "weight": 10, "state": "ready"}]}]})
    };
    let candidate = |rev: u64| -> Result<Candidate> {
        Ok(Candidate {
            desired: Arc::new(parse(&serde_json::to_vec(&doc(rev))?)?),
            raw: None,
            from_cache: false,
        })
    };
    let (status_tx, mut status) = watch::channel(HaproxyStatus::default());
    let (tx, rx) = watch::channel(None);
    let (_triggers, trx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Reconciler::new(settings, r, status_tx).run(rx, trx, cancel.clone()));
    let _stop = cancel.clone().drop_guard();

    let wait = |status: &mut watch::Receiver<HaproxyStatus>, rev: u64, limit: Duration| {
        let mut status = status.clone();
        async move {
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                {
                    let st = status.borrow_and_update();
                    if st.converged && st.revision == Some(rev) && st.pending_reload.is_empty() {
                        return Ok(st.clone());
                    }
                }
                if tokio::time::timeout_at(deadline, status.changed())
                    .await
                    .is_err()
                {
                    let st = status.borrow().clone();
                    bail!(
                        "revision {rev} not converged after {limit:?} (reloads {}, error {:?})",
                        st.reloads,
                        st.error
                    );
                }
            }
        }
    };
    tx.send_replace(Some(candidate(1)?));
    let first = wait(&mut status, 1, Duration::from_secs(30)).await?;
    let step = sz.burst_window / sz.burst as u32;
    let started = Instant::now();
    for i in 0..sz.burst as u64 {
        tx.send_replace(Some(candidate(2 + i)?));
        tokio::time::sleep_until((started + step * (i as u32 + 1)).into()).await;
    }
    let pushed = started.elapsed();
    let last = 1 + sz.burst as u64;
    let st = wait(
        &mut status,
        last,
        sz.min_reload * 2 + Duration::from_secs(30),
    )
    .await?;
    let converged = started.elapsed();
    cancel.cancel();
    let _ = task.await;
    drop(hap);
    Ok((
        format!(
            "{} reloads for {} changes pushed over {:.1} s (min_reload_interval {} s; converged {:.1} s after the first change)",
            st.reloads - first.reloads,
            sz.burst,
            pushed.as_secs_f64(),
            sz.min_reload.as_secs(),
            converged.as_secs_f64()
        ),
        format!("{} reloads (one per change)", sz.burst),
    ))
}

// ------------------------------------------------- published change → HAProxy

/// A tiny central API on 127.0.0.1: serves the current document with an
/// ETag; when `hold` is set it long-polls (`?wait=&revision=`: holds the
/// request until a newer revision is published), otherwise it answers at once
/// like a plain server.
#[derive(Clone)]
struct Api {
    doc: watch::Sender<(u64, String)>,
    hold: bool,
}

async fn api_handler(
    axum::extract::State(api): axum::extract::State<Api>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut rx = api.doc.subscribe();
    let known: Option<u64> = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "revision")
        .and_then(|(_, v)| v.parse().ok());
    if api.hold {
        if let Some(known) = known {
            let wait = Duration::from_secs(30);
            let _ = tokio::time::timeout(wait, rx.wait_for(|(rev, _)| *rev > known)).await;
        }
    }
    let (rev, body) = rx.borrow().clone();
    let etag = format!("\"r{rev}\"");
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return (axum::http::StatusCode::NOT_MODIFIED, [("etag", etag)]).into_response();
    }
    (
        [
            ("etag", etag),
            ("content-type", "application/json".to_string()),
        ],
        body,
    )
        .into_response()
}

/// Publishes weight changes one at a time on a fake API and measures, for
/// each, the time until HAProxy's runtime state shows it (source poller →
/// reconciler → runtime socket, all the real code).
async fn publish_latencies(
    hold: bool,
    changes: usize,
    poll_interval: Duration,
) -> Result<Vec<Duration>> {
    let dir = Hap::new_dir()?;
    let p = |n: &str| dir.path().join(n);
    let admin = p("admin.sock");
    let bootstrap = format!(
        "global\n    stats socket {} mode 600 level admin\n\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n",
        admin.display()
    );
    std::fs::create_dir_all(p("state"))?;
    let r = renderer(dir.path(), &admin, true)?;
    let settings = reconciler_settings(
        dir.path(),
        &admin,
        Duration::from_millis(100),
        Duration::from_secs(60),
        1.0,
    );
    let cache = p("state/last-good.json");
    let hap = Hap::start(dir, &bootstrap)?;
    let vip = "127.0.0.42";
    let port = TcpListener::bind((vip, 0))?.local_addr()?.port();
    let doc = |rev: u64| {
        json!({"schema": 1, "revision": rev, "group": "blue",
               "vips": [{"address": format!("{vip}/32")}],
               "frontends": [{"name": "web", "bind": [format!("{vip}:{port}")], "mode": "http", "default_pool": "www"}],
               "pools": [{"name": "www", "mode": "http", "balance": "roundrobin",
                          "servers": [{"name": "a", "address": "127.0.0.1", "port": 9, "weight": (rev % 200) + 1, "state": "ready"}]}]})
        .to_string()
    };
    let (doc_tx, _) = watch::channel((1u64, doc(1)));
    let api = Api {
        doc: doc_tx.clone(),
        hold,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/groups/blue/config", listener.local_addr()?);
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let app = axum::Router::new()
        .route("/v1/groups/blue/config", axum::routing::get(api_handler))
        .with_state(api);
    let server_cancel = cancel.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(server_cancel.cancelled_owned())
            .await;
    });

    // The VIP is a loopback address (no namespace needed): allow it explicitly.
    let agent_cfg = lb_agent::config::parse_str(
        "[node]\ngroup = \"blue\"\n[vip]\nallowed_prefixes = [\"127.0.0.0/24\"]\n",
        "<bench>",
    )
    .map_err(|e| anyhow!("{e}"))?;
    let mut source_cfg = agent_cfg.source.clone();
    source_cfg.url = lb_agent::config::SourceUrl::Http(url);
    source_cfg.poll_interval = poll_interval;
    source_cfg.cache = cache;
    let (acc_tx, acc_rx) = watch::channel(None);
    let (src_status, _) = watch::channel(lb_agent::source::SourceStatus::default());
    lb_agent::source::ensure_crypto_provider();
    tokio::spawn(lb_agent::source::run(
        source_cfg,
        "bench".into(),
        lb_agent::daemon::parser(&agent_cfg),
        acc_tx,
        src_status,
        cancel.clone(),
    ));
    let (cand_tx, cand_rx) = watch::channel(None);
    tokio::spawn(lb_agent::daemon::forward_candidates(
        acc_rx,
        cand_tx,
        cancel.clone(),
    ));
    let (status_tx, _status) = watch::channel(HaproxyStatus::default());
    let (_triggers, trx) = mpsc::channel(4);
    tokio::spawn(Reconciler::new(settings, r, status_tx).run(cand_rx, trx, cancel.clone()));

    let client = RuntimeClient::new(&admin, Duration::from_secs(5));
    let weight_of = |st: &ObservedServers| -> Option<u16> {
        st.backends
            .get("www")?
            .servers
            .iter()
            .find(|s| s.name == "a")
            .map(|s| s.uweight)
    };
    // First document (with the takeover reload), then one change at a time.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut session = loop {
        if let Ok(mut s) = client.connect().await {
            if let Ok(st) = s.servers_state().await {
                if weight_of(&st) == Some(2) {
                    break s;
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the first document never reached HAProxy");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut lat = Vec::with_capacity(changes);
    for i in 0..changes as u64 {
        let rev = 2 + i;
        let want = ((rev % 200) + 1) as u16;
        // Changes spaced like independent publications: the previous pass has
        // finished (it validates and writes haproxy.cfg after the runtime
        // apply; a change arriving during that `haproxy -c` waits for it).
        tokio::time::sleep(CHANGE_GAP).await;
        let t0 = Instant::now();
        doc_tx.send_replace((rev, doc(rev)));
        loop {
            let st = match session.servers_state().await {
                Ok(st) => st,
                Err(_) => {
                    // The worker changed under us (a reload): reconnect.
                    session = client.connect().await?;
                    continue;
                }
            };
            if weight_of(&st) == Some(want) {
                lat.push(t0.elapsed());
                break;
            }
            if t0.elapsed() > poll_interval * 3 + Duration::from_secs(10) {
                bail!("revision {rev} never reached HAProxy");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    cancel.cancel();
    drop(hap);
    Ok(lat)
}

/// Time between two published changes in the publish figure.
const CHANGE_GAP: Duration = Duration::from_millis(300);

async fn fig_publish(sz: &Sizes) -> Result<(String, String)> {
    let long = publish_latencies(true, sz.longpoll_changes, sz.plain_interval).await?;
    let plain = publish_latencies(false, sz.plain_changes, sz.plain_interval).await?;
    let (lp50, lp99) = stats(long.clone());
    let (pp50, pp99) = stats(plain.clone());
    Ok((
        format!(
            "p50 {lp50:.1} ms, p99 {lp99:.1} ms over {} changes {} ms apart (long-poll: the server holds the request)",
            long.len(),
            CHANGE_GAP.as_millis()
        ),
        format!(
            "polling every poll_interval = {} ms (±10%): p50 {pp50:.1} ms, p99 {pp99:.1} ms over {} changes",
            sz.plain_interval.as_millis(),
            plain.len()
        ),
    ))
}

// ---------------------------------------------------------------- machine info

fn sh(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Proc::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn machine_info(quick: bool) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let haproxy = sh(HAPROXY, &["-v"])
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "not found".into());
    let commit = sh("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_some();
    let date = httpdate::fmt_http_date(SystemTime::now());
    let mut s = String::new();
    let _ = writeln!(s, "- date: {date}");
    let _ = writeln!(
        s,
        "- commit: {commit}{}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "- CPU: {cpu}, {cores} cores available to the process");
    let _ = writeln!(s, "- kernel: {kernel}");
    let _ = writeln!(s, "- HAProxy: {haproxy}");
    let _ = writeln!(
        s,
        "- mode: {}, build: {}",
        if quick {
            "--quick (small sizes)"
        } else {
            "full"
        },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    s
}

// ---------------------------------------------------------------- main

const USAGE: &str = "usage: lb-agent-bench [--quick] [--out FILE] [--agent PATH] [--ach-venv DIR] \
[--only plan,runtime,burst,publish,fleet,change,gating,tor] [--watchers N] [--profile 'CMD {pid}']";
const FIGURES: [&str; 8] = [
    "plan", "runtime", "burst", "publish", "fleet", "change", "gating", "tor",
];

struct Args {
    quick: bool,
    out: Option<PathBuf>,
    /// The lb-agent binary the daemon figures run (default: next to this one).
    agent: PathBuf,
    /// Where anycast-healthchecker is installed from PyPI (a venv; reused).
    ach_venv: PathBuf,
    /// Figures to run (`--only`); all when empty.
    only: Vec<String>,
    /// Shell command run against the agent's PID during the gating window
    /// (`{pid}` replaced), e.g. `perf record -g -p {pid} -o /tmp/p.data -- sleep 10`.
    profile: Option<String>,
    /// Watchers of the fleet figure (default 1,000; 100 with --quick).
    watchers: Option<usize>,
}

impl Args {
    fn wants(&self, figure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|f| f == figure)
    }
}

fn args() -> Result<Args> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut a = Args {
        quick: false,
        out: None,
        agent: exe.with_file_name("lb-agent"),
        ach_venv: target.join(format!("bench/ach-{}", ach::VERSION)),
        only: Vec::new(),
        profile: None,
        watchers: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--quick" => a.quick = true,
            "--out" => a.out = Some(it.next().context("--out needs a path")?.into()),
            "--agent" => a.agent = it.next().context("--agent needs a path")?.into(),
            "--ach-venv" => a.ach_venv = it.next().context("--ach-venv needs a path")?.into(),
            "--only" => {
                let list = it.next().context("--only needs a list")?;
                for f in list.split(',') {
                    if !FIGURES.contains(&f) {
                        bail!(
                            "--only: unknown figure {f:?} (one of {})",
                            FIGURES.join(",")
                        );
                    }
                    a.only.push(f.to_string());
                }
            }
            "--profile" => a.profile = Some(it.next().context("--profile needs a command")?),
            "--watchers" => {
                let n = it.next().context("--watchers needs a number")?;
                let n: usize = n
                    .parse()
                    .with_context(|| format!("--watchers {n:?}: not a number"))?;
                if n == 0 {
                    bail!("--watchers must be at least 1");
                }
                a.watchers = Some(n);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} ({USAGE})"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = args()?;
    let sz = Sizes::new(a.quick);
    let servers = sz.pools * sz.servers;
    let hap_servers = sz.hap_pools * sz.servers;
    let mut rows = Vec::new();
    let step = |n: &str, what: String| eprintln!("[{n}] {what}");

    // Planning first, so its memory figure is the model + planner alone.
    let mut mem_bench: Option<Result<String>> = None;
    if a.wants("plan") {
        step(
            "plan",
            format!("planning on {} pools × {} servers", sz.pools, sz.servers),
        );
        let planned = fig_plan(&sz);
        mem_bench = Some(match &planned {
            Ok((_, _, d, p)) => match (proc_status_kb("VmHWM:"), proc_status_kb("VmRSS:")) {
                (Some(h), Some(r)) => Ok(format!(
                    "model + planner alone (this bench process): VmHWM {:.1} MB, VmRSS {:.1} MB ({} pools, {} servers, {} VIPs/frontends held with a plan of {} command(s))",
                    h as f64 / 1024.0,
                    r as f64 / 1024.0,
                    d.pools.len(),
                    d.pools.values().map(|p| p.servers.len()).sum::<usize>(),
                    d.frontends.len(),
                    p.commands.len()
                )),
                _ => Err(anyhow!("/proc/self/status unreadable")),
            },
            Err(e) => Err(anyhow!("planning failed: {e:#}")),
        });
        rows.push(row(
            format!(
                "plan a change on {} pools × {} servers ({servers} servers; one weight changed) (target < 5 ms)",
                sz.pools, sz.servers
            ),
            planned.map(|(o, b, _, _)| (o, b)),
        ));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let no_haproxy = || Err(anyhow!("{HAPROXY} not found"));
    let have_haproxy = Path::new(HAPROXY).exists();
    if a.wants("runtime") {
        let apply_fig = format!(
            "apply {} server state/weight changes on a real HAProxy 2.6 ({hap_servers} servers) (target < 50 ms, 0 reloads)",
            sz.changes
        );
        let read_fig =
            format!("read back `show servers state` for {hap_servers} servers (target < 40 ms)");
        if have_haproxy {
            step(
                "runtime",
                format!("runtime changes and read back on a real HAProxy ({hap_servers} servers)"),
            );
            match rt.block_on(fig_haproxy(&sz)) {
                Ok(f) => {
                    rows.push(row(apply_fig, f.apply));
                    rows.push(row(read_fig, f.readback));
                }
                Err(e) => {
                    rows.push(row(apply_fig, Err(anyhow!("{e:#}"))));
                    rows.push(row(read_fig, Err(anyhow!("{e:#}"))));
                }
            }
        } else {
            rows.push(row(apply_fig, no_haproxy()));
            rows.push(row(read_fig, no_haproxy()));
        }
    }
    if a.wants("burst") {
        let burst_fig = format!(
            "burst of {} reload-needing changes within {} s (target ≤ 3 reloads at 100 in 10 s)",
            sz.burst,
            sz.burst_window.as_secs()
        );
        step(
            "burst",
            format!("{} reload-needing changes through the Reconciler", sz.burst),
        );
        let r = if have_haproxy {
            rt.block_on(fig_burst(&sz))
        } else {
            no_haproxy()
        };
        rows.push(row(burst_fig, r));
    }
    if a.wants("publish") {
        let publish_fig =
            "published change (long-poll API) → HAProxy runtime state changed (target p99 < 100 ms)"
                .to_string();
        step(
            "publish",
            "published changes through the source poller and the reconciler".into(),
        );
        let r = if have_haproxy {
            rt.block_on(fig_publish(&sz))
        } else {
            no_haproxy()
        };
        rows.push(row(publish_fig, r));
    }
    if a.wants("fleet") {
        let fs = fleet::FleetSizes::new(a.quick, a.watchers);
        step(
            "fleet",
            format!(
                "{} watchers on one etcd, then on an HTTP long-poll server ({} pools × {} servers)",
                fs.watchers, fs.pools, fs.servers
            ),
        );
        let have_etcd = Proc::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if have_etcd {
            for (figure, r) in rt.block_on(fleet::fig_fleet(&fs)) {
                rows.push(row(figure, r));
            }
        } else {
            rows.push(row(
                "fleet: etcd watchers vs HTTP long-poll".into(),
                Err(anyhow!(
                    "etcd not installed (apt-get install etcd-server etcd-client)"
                )),
            ));
        }
    }
    if a.wants("change") {
        let cs = change::ChangeSizes::new(a.quick);
        let fig = format!(
            "whole agent CPU per one-server change at {} pools × {} servers: real lb-agent binary and HAProxy (goal < 1 ms)",
            cs.pools, cs.servers
        );
        step(
            "change",
            "one-server changes through etcd, then through a file:// source".into(),
        );
        let r = if have_haproxy {
            rt.block_on(change::fig_change(&cs, &a.agent))
        } else {
            no_haproxy()
        };
        rows.push(row(fig, r));
    }
    rt.shutdown_timeout(Duration::from_secs(5));

    let wants_ach = a.wants("gating") || a.wants("tor");
    let ach = if wants_ach {
        step(
            "ach",
            format!(
                "installing anycast-healthchecker {} from PyPI into {}",
                ach::VERSION,
                a.ach_venv.display()
            ),
        );
        sys::can_netns().and_then(|()| ach::install(&a.ach_venv).map_err(|e| format!("{e:#}")))
    } else {
        Err("not wanted".into())
    };
    let mut mem_agent: Option<String> = None;
    if a.wants("gating") {
        let gs = gating::GateSizes::new(a.quick);
        let gate_fig = format!(
            "health gating of {} VIPs × 2 services at 1 s interval ({} checks/s) (target < 10% of one core)",
            gs.vips,
            2 * gs.vips
        );
        step(
            "gating",
            format!("lb-agent on {} VIPs, then anycast-healthchecker", gs.vips),
        );
        let gated = gating::fig_gating(
            &gs,
            &a.agent,
            ach.as_ref().map_err(Clone::clone),
            a.profile.as_deref(),
        );
        mem_agent = Some(match &gated {
            Ok(g) => g.agent_memory.clone(),
            Err(e) => format!("whole agent: n/a ({e:#})"),
        });
        rows.push(row(gate_fig, gated.map(|g| g.row)));
    }
    if a.wants("tor") {
        step(
            "tor",
            "failed service → prefix gone from the ToR's kernel table (netns lab)".into(),
        );
        let tor = tor::fig_tor(a.quick, &a.agent, ach.as_ref().map_err(Clone::clone));
        rows.push(row(tor::FIGURE.into(), tor));
    }
    if mem_bench.is_some() || mem_agent.is_some() {
        let cell = match (mem_agent, mem_bench) {
            (Some(m), Some(Ok(b))) => Ok(format!("{m}; {b}")),
            (Some(m), _) => Ok(m),
            (None, Some(b)) => b,
            (None, None) => unreachable!("checked above"),
        };
        rows.push(row(
            format!(
                "resident memory at {servers} servers and {} VIPs (target < 40 MB)",
                sz.pools
            ),
            cell.map(|c| (c, "—".to_string())),
        ));
    }
    eprintln!("done");

    let mut out = String::new();
    out.push_str("# lb-agent benchmarks\n\n");
    out.push_str(
        "Produced by `./bench.sh --out docs/benchmarks.md` (builds and runs `lb-agent-bench`; \
targets: docs/performance.md). Figures are printed, never asserted; each is measured next to the naive way \
in the same run. Medians unless stated.\n\n",
    );
    out.push_str(HEADER);
    out.push('\n');
    out.push_str("|---|---|---|\n");
    for r in &rows {
        let _ = writeln!(out, "| {} | {} | {} |", r.figure, r.ours, r.baseline);
    }
    out.push('\n');
    out.push_str(&machine_info(a.quick));
    print!("{out}");
    if let Some(path) = &a.out {
        std::fs::write(path, &out).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("written to {}", path.display());
    }
    Ok(())
}
