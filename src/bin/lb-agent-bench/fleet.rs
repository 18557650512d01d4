//! The fleet figure (docs/fleet.md): N agents' desired-state sources on one
//! etcd, against the same N on an HTTP long-poll server that answers with the
//! whole document, for one one-server change in a large group.
//!
//! Both sides run the agent's real source component (`source::run`: the etcd
//! watcher with its store, incremental validation and recovery; the HTTP
//! poller with reqwest, gzip and the long-poll pacing) with the agent's own
//! parser and validator (`daemon::parser`), **many per process**: every
//! watcher is a task in this bench process with its own connection. So an
//! etcd watcher patches the changed pool of its held state (docs/etcd.md,
//! "Incremental validation") while an HTTP watcher parses and validates the
//! whole new document, as each would on its own host. Each watcher's
//! connection goes through its own TCP forwarder, which counts the bytes
//! the watcher received and when the first of them arrived after the change.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use lb_agent::config::{EtcdUrl, SourceUrl};
use lb_agent::model::DesiredState;
use lb_agent::source::{Accepted, Document, SourceStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ms, parse, stats, sys};

const PREFIX: &str = "/lb/blue/";

/// Sizes of one fleet run.
pub struct FleetSizes {
    pub watchers: usize,
    pub pools: usize,
    pub servers: usize,
    /// Watchers started together (each waits for its first document).
    batch: usize,
    /// Bound on loading the group into every watcher, per side.
    load_limit: Duration,
    /// Bound on the change reaching every watcher.
    change_limit: Duration,
}

impl FleetSizes {
    pub fn new(quick: bool, watchers: Option<usize>) -> FleetSizes {
        let (w, pools) = if quick { (100, 100) } else { (1000, 1000) };
        FleetSizes {
            watchers: watchers.unwrap_or(w),
            pools,
            servers: 20,
            batch: 50,
            load_limit: Duration::from_secs(if quick { 120 } else { 900 }),
            // The HTTP side validates N whole documents on this machine's cores.
            change_limit: Duration::from_secs(if quick { 120 } else { 900 }),
        }
    }
}

// ------------------------------------------------------------- forwarders

/// The clock every forwarder stamps with, the instant of the change, and
/// the runtime the forwarders run on: a thread of their own, so a watcher
/// busy assembling a document on the main runtime does not delay the
/// stamps.
struct Clock {
    wire: tokio::runtime::Handle,
    epoch: Instant,
    /// ns since `epoch` of the change; 0 = not armed.
    armed: AtomicU64,
}

impl Clock {
    fn ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// What one watcher's forwarder saw.
#[derive(Default)]
struct Tap {
    received: AtomicU64,
    /// ns since the epoch of the first bytes received after the change; 0 = none yet.
    first_after: AtomicU64,
}

/// A TCP forwarder `127.0.0.1:<port>` → `target` counting what flows back
/// (what the watcher received). Stops with `cancel`.
async fn forwarder(
    target: SocketAddr,
    tap: Arc<Tap>,
    clock: Arc<Clock>,
    cancel: CancellationToken,
) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let wire = clock.wire.clone();
    wire.spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        loop {
            let inbound = tokio::select! {
                _ = cancel.cancelled() => return,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(_) => return,
                },
            };
            let (tap, clock, cancel) = (tap.clone(), clock.clone(), cancel.clone());
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (mut ci, mut co) = inbound.into_split();
                let (mut si, mut so) = outbound.into_split();
                let up = async move {
                    let _ = tokio::io::copy(&mut ci, &mut so).await;
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match si.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        tap.received.fetch_add(n as u64, Ordering::SeqCst);
                        let armed = clock.armed.load(Ordering::SeqCst);
                        if armed > 0 {
                            let now = clock.ns();
                            if now >= armed {
                                let _ = tap.first_after.compare_exchange(
                                    0,
                                    now,
                                    Ordering::SeqCst,
                                    Ordering::SeqCst,
                                );
                            }
                        }
                        if co.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = async { tokio::join!(up, down) } => {}
                    _ = cancel.cancelled() => {}
                }
            });
        }
    });
    Ok(addr)
}

// ------------------------------------------------------------- watchers

/// One in-process agent source and what it received.
struct Watcher {
    out: watch::Receiver<Option<Arc<Accepted<DesiredState>>>>,
    status: watch::Receiver<SourceStatus>,
    tap: Arc<Tap>,
}

impl Watcher {
    fn revision(&self) -> u64 {
        self.out.borrow().as_ref().map_or(0, |a| a.doc.revision())
    }
}

/// The agent.toml every watcher starts from (its source url replaced).
fn base_config() -> Result<lb_agent::config::Config> {
    lb_agent::config::parse_str("[node]\ngroup = \"blue\"\n", "<bench fleet>")
        .map_err(|e| anyhow!("{e}"))
}

/// Starts `n` watchers of `url_of(forwarder)` in batches, each batch waiting
/// until all of it holds revision `want` (and `ready` says so), bounded by `limit`.
async fn start_watchers(
    sz: &FleetSizes,
    target: SocketAddr,
    url_of: impl Fn(SocketAddr) -> SourceUrl,
    want: u64,
    ready: impl Fn(&Watcher) -> bool,
    clock: &Arc<Clock>,
    cancel: &CancellationToken,
) -> Result<Vec<Watcher>> {
    let cfg = base_config()?;
    // The agent's own parser: JSON → validated state, as the daemon hands it.
    let parser = lb_agent::daemon::parser(&cfg);
    let base = cfg.source;
    let deadline = Instant::now() + sz.load_limit;
    let mut all = Vec::with_capacity(sz.watchers);
    while all.len() < sz.watchers {
        let first = all.len();
        for i in first..(first + sz.batch).min(sz.watchers) {
            let tap = Arc::new(Tap::default());
            let fwd = forwarder(target, tap.clone(), clock.clone(), cancel.clone()).await?;
            let mut cfg = base.clone();
            cfg.url = url_of(fwd);
            cfg.cache = format!("/nonexistent/lb-agent-bench-fleet/{i}.json").into();
            let (out_tx, out) = watch::channel(None);
            let (st_tx, status) = watch::channel(SourceStatus::default());
            tokio::spawn(lb_agent::source::run(
                cfg,
                format!("fleet{i}"),
                parser.clone(),
                out_tx,
                st_tx,
                cancel.clone(),
            ));
            all.push(Watcher { out, status, tap });
        }
        loop {
            if all[first..]
                .iter()
                .all(|w| w.revision() >= want && ready(w))
            {
                break;
            }
            if Instant::now() > deadline {
                let behind = all.iter().filter(|w| w.revision() < want).count();
                let err = all[first..]
                    .iter()
                    .find_map(|w| w.status.borrow().error.clone())
                    .unwrap_or_default();
                bail!(
                    "{behind} of {} watchers started so far lack revision {want} after {:?} ({err})",
                    all.len(),
                    sz.load_limit
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(all)
}

/// Waits (bounded) until every watcher holds `rev`; the instant each got it.
async fn applied_at(watchers: &[Watcher], rev: u64, limit: Duration) -> Vec<Option<Instant>> {
    let deadline = tokio::time::Instant::now() + limit;
    let tasks: Vec<_> = watchers
        .iter()
        .map(|w| {
            let mut out = w.out.clone();
            tokio::spawn(async move {
                loop {
                    if out
                        .borrow_and_update()
                        .as_ref()
                        .map_or(0, |a| a.doc.revision())
                        >= rev
                    {
                        return Some(Instant::now());
                    }
                    match tokio::time::timeout_at(deadline, out.changed()).await {
                        Ok(Ok(())) => {}
                        _ => return None,
                    }
                }
            })
        })
        .collect();
    let mut at = Vec::with_capacity(tasks.len());
    for t in tasks {
        at.push(t.await.ok().flatten());
    }
    at
}

// ------------------------------------------------------------- one side

/// What one side measured.
struct Side {
    watchers: usize,
    /// Bytes each watcher received from the change until all had applied it.
    bytes: Vec<u64>,
    /// Change → applied, per watcher that applied it.
    applied: Vec<Duration>,
    missed: usize,
    /// Change → first bytes at the watcher's forwarder.
    wire: Vec<Duration>,
    /// The server's CPU (user + system) and the wall time of the window.
    server_cpu: Duration,
    bench_cpu: Duration,
    window: Duration,
    server_rss_kb: Option<u64>,
    bench_rss_kb: Option<u64>,
    /// Loading the group into all watchers: time and median bytes per watcher.
    load: Duration,
    load_bytes: u64,
    note: String,
}

/// What a server used: a process (etcd) or a thread of this one (the
/// long-poll server; `/proc/TID/stat` would sum the whole process).
#[derive(Clone, Copy)]
enum Server {
    Process(u32),
    Thread(u32),
}

fn cpu(who: Server) -> Result<Duration> {
    match who {
        Server::Process(pid) => {
            let (u, s) = sys::cpu_times(pid)?;
            Ok(u + s)
        }
        Server::Thread(tid) => {
            let path = format!("/proc/self/task/{tid}/stat");
            let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            let rest = stat.rsplit_once(')').context("malformed stat")?.1;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            // utime and stime are fields 14 and 15; `rest` starts at field 3.
            let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
            let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .unwrap_or(100) as u64;
            Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
        }
    }
}

fn me() -> Server {
    Server::Process(std::process::id())
}

/// Arms the clock, runs `change` (which publishes and returns a note),
/// waits for every watcher, and collects the per-watcher figures.
async fn measure<F>(
    sz: &FleetSizes,
    watchers: &[Watcher],
    clock: &Clock,
    server: Server,
    change: F,
) -> Result<(Side, u64)>
where
    F: std::future::Future<Output = Result<(u64, String)>>,
{
    let before: Vec<u64> = watchers
        .iter()
        .map(|w| w.tap.received.load(Ordering::SeqCst))
        .collect();
    for w in watchers {
        w.tap.first_after.store(0, Ordering::SeqCst);
    }
    let (cpu0, bench0) = (cpu(server)?, cpu(me())?);
    let t0 = Instant::now();
    clock
        .armed
        .store(clock.ns().max(1), std::sync::atomic::Ordering::SeqCst);
    let (rev, note) = change.await?;
    let at = applied_at(watchers, rev, sz.change_limit).await;
    let window = t0.elapsed();
    let (cpu1, bench1) = (cpu(server)?, cpu(me())?);
    clock.armed.store(0, Ordering::SeqCst);
    let armed_ns = t0.duration_since(clock.epoch).as_nanos() as u64;
    let bytes = watchers
        .iter()
        .zip(&before)
        .map(|(w, b)| w.tap.received.load(Ordering::SeqCst) - b)
        .collect();
    let wire = watchers
        .iter()
        .filter_map(|w| match w.tap.first_after.load(Ordering::SeqCst) {
            0 => None,
            ns => Some(Duration::from_nanos(ns.saturating_sub(armed_ns))),
        })
        .collect();
    let applied: Vec<Duration> = at.iter().flatten().map(|i| *i - t0).collect();
    Ok((
        Side {
            watchers: watchers.len(),
            missed: at.len() - applied.len(),
            bytes,
            applied,
            wire,
            server_cpu: cpu1.saturating_sub(cpu0),
            bench_cpu: bench1.saturating_sub(bench0),
            window,
            server_rss_kb: match server {
                Server::Process(pid) => sys::status_kb(pid, "VmRSS:"),
                // A thread's VmRSS is the whole bench process's.
                Server::Thread(_) => None,
            },
            bench_rss_kb: sys::status_kb(std::process::id(), "VmRSS:"),
            load: Duration::ZERO,
            load_bytes: 0,
            note,
        },
        rev,
    ))
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

// ------------------------------------------------------------- etcd

/// An etcd member on loopback ports with its data in a temp dir; stopped by PID on drop.
pub(super) struct Etcd {
    // Before `_dir`: etcd stops before its directory is removed.
    daemon: sys::Daemon,
    _dir: tempfile::TempDir,
    pub client: SocketAddr,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A one-member etcd on free loopback ports, ready to serve.
pub(super) async fn start_etcd() -> Result<Etcd> {
    let dir = tempfile::Builder::new()
        .prefix("lb-agent-bench-etcd.")
        .tempdir()?;
    let (c, p) = (free_port()?, free_port()?);
    let data = dir.path().join("data");
    let curl = format!("http://127.0.0.1:{c}");
    let purl = format!("http://127.0.0.1:{p}");
    let initial = format!("bench={purl}");
    let args: Vec<&str> = vec![
        "--name",
        "bench",
        "--data-dir",
        data.to_str().context("temp dir not UTF-8")?,
        "--listen-client-urls",
        &curl,
        "--advertise-client-urls",
        &curl,
        "--listen-peer-urls",
        &purl,
        "--initial-advertise-peer-urls",
        &purl,
        "--initial-cluster",
        &initial,
        "--initial-cluster-state",
        "new",
        // The 21,002-key group is published in one transaction (docs/etcd.md).
        "--max-txn-ops",
        "100000",
        "--max-request-bytes",
        "67108864",
        "--logger",
        "zap",
        "--log-outputs",
        "stderr",
    ];
    let mut daemon = sys::Daemon::spawn(
        "etcd",
        None,
        Path::new("etcd"),
        &args,
        &dir.path().join("etcd.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        daemon.check_running()?;
        let probe = tokio::time::timeout(Duration::from_secs(2), async {
            let mut cl = etcd_client::Client::connect([curl.clone()], None).await?;
            cl.get("lb-agent-bench-ready", None).await
        })
        .await;
        if let Ok(Ok(_)) = probe {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "etcd not ready within 30 s:\n{}",
                sys::tail(&daemon.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Etcd {
        daemon,
        _dir: dir,
        client: format!("127.0.0.1:{c}").parse()?,
    })
}

/// The changed server: pool `pools/2`, server s007, weight 10 → 7.
fn changed_server(pools: usize) -> (String, String, String) {
    let p = pools / 2;
    let addr = format!("10.{}.{}.8", p / 256, p % 256);
    let old =
        format!(r#"{{"name":"s007","address":"{addr}","port":8080,"weight":10,"state":"ready"}}"#);
    let new = old.replace("\"weight\":10", "\"weight\":7");
    (format!("servers/pool{p:04}/s007"), old, new)
}

async fn etcd_side(sz: &FleetSizes, doc: &str, wire: &tokio::runtime::Handle) -> Result<Side> {
    let etcd = start_etcd().await?;
    let url = EtcdUrl {
        endpoints: vec![etcd.client.to_string()],
        prefix: PREFIX.into(),
    };
    let report = lb_agent::publish::publish(
        &url,
        &lb_agent::source::etcd::Credentials::default(),
        doc.as_bytes(),
        false,
        64 << 20,
    )
    .await
    .map_err(|e| anyhow!("publishing the group: {e}"))?;
    let r1 = report.revision.context("the publish wrote nothing")? as u64;
    let clock = Arc::new(Clock {
        wire: wire.clone(),
        epoch: Instant::now(),
        armed: AtomicU64::new(0),
    });
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let t = Instant::now();
    let watching = |w: &Watcher| {
        w.status
            .borrow()
            .stream
            .as_ref()
            .is_some_and(|s| s.watch_state == "watching")
    };
    let watchers = start_watchers(
        sz,
        etcd.client,
        |fwd| {
            SourceUrl::Etcd(EtcdUrl {
                endpoints: vec![fwd.to_string()],
                prefix: PREFIX.into(),
            })
        },
        r1,
        watching,
        &clock,
        &cancel,
    )
    .await?;
    let load = t.elapsed();
    let load_bytes = median_u64(
        watchers
            .iter()
            .map(|w| w.tap.received.load(Ordering::SeqCst))
            .collect(),
    );
    let mut client = etcd_client::Client::connect([format!("http://{}", etcd.client)], None)
        .await
        .context("connecting the publisher")?;
    let (key, _, new) = changed_server(sz.pools);
    let paths = |ws: &[Watcher]| -> Vec<(u64, u64)> {
        ws.iter()
            .map(|w| {
                w.status
                    .borrow()
                    .stream
                    .as_ref()
                    .map_or((0, 0), |s| (s.revisions_incremental, s.revisions_full))
            })
            .collect()
    };
    let paths0 = paths(&watchers);
    let change = async {
        let t = Instant::now();
        let r = client
            .put(format!("{PREFIX}{key}"), new, None)
            .await
            .context("the one-server put")?;
        let rev = r.header().context("no header")?.revision() as u64;
        Ok((
            rev,
            format!(
                "one put of {PREFIX}{key} (committed in {:.1} ms)",
                ms(t.elapsed())
            ),
        ))
    };
    let (mut side, _) = measure(
        sz,
        &watchers,
        &clock,
        Server::Process(etcd.daemon.pid()),
        change,
    )
    .await?;
    side.load = load;
    side.load_bytes = load_bytes;
    // The source counts the path before it delivers the document.
    let (mut incr, mut full) = (0, 0);
    for ((i1, f1), (i0, f0)) in paths(&watchers).into_iter().zip(paths0) {
        incr += usize::from(i1 > i0);
        full += usize::from(f1 > f0);
    }
    side.note = format!(
        "{}; validated incrementally by {incr} of {} watchers, by the full path by {full}",
        side.note,
        watchers.len()
    );
    cancel.cancel();
    drop(watchers);
    Ok(side)
}

// ------------------------------------------------------------- HTTP long-poll

/// The reference long-poll server's state: the current revision with its
/// body plain and gzipped, and how many requests it holds.
struct LongPoll {
    doc: watch::Sender<(u64, Bytes, Option<Bytes>)>,
    holding: AtomicUsize,
}

/// docs/api.md "Polling protocol": answers at once without `revision`,
/// otherwise holds the request until a newer revision (or `wait` passes);
/// `304` when the client's ETag is current; gzip when accepted.
async fn longpoll_handler(
    axum::extract::State(lp): axum::extract::State<Arc<LongPoll>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut rx = lp.doc.subscribe();
    let q: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let known: Option<u64> = get("revision").and_then(|v| v.parse().ok());
    let wait = get("wait")
        .and_then(|v| v.trim_end_matches('s').parse::<u64>().ok())
        .unwrap_or(30)
        .min(60);
    if let Some(known) = known {
        lp.holding.fetch_add(1, Ordering::SeqCst);
        let _ = tokio::time::timeout(
            Duration::from_secs(wait),
            rx.wait_for(|(rev, _, _)| *rev > known),
        )
        .await;
        lp.holding.fetch_sub(1, Ordering::SeqCst);
    }
    let (rev, plain, gz) = rx.borrow().clone();
    let etag = format!("\"r{rev}\"");
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return (axum::http::StatusCode::NOT_MODIFIED, [("etag", etag)]).into_response();
    }
    let gzip_ok = headers
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    match gz {
        Some(gz) if gzip_ok => (
            [
                ("etag", etag),
                ("content-type", "application/json".to_string()),
                ("content-encoding", "gzip".to_string()),
            ],
            gz,
        )
            .into_response(),
        _ => (
            [
                ("etag", etag),
                ("content-type", "application/json".to_string()),
            ],
            plain,
        )
            .into_response(),
    }
}

/// `gzip -6` of `body` (the server compresses each revision once); `None`
/// when gzip is not installed.
fn gzip(body: &[u8]) -> Result<Option<Bytes>> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = match Command::new("gzip")
        .args(["-c", "-6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return Ok(None),
    };
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = body.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow!("gzip writer panicked"))??;
    if !out.status.success() {
        bail!("gzip failed: {}", out.status);
    }
    Ok(Some(Bytes::from(out.stdout)))
}

/// Runs the reference server on a thread of its own (so its CPU is that
/// thread's); returns its address and thread id. Stops with `cancel`.
fn start_longpoll(lp: Arc<LongPoll>, cancel: CancellationToken) -> Result<(SocketAddr, u32)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fleet-longpoll".into())
        .spawn(move || {
            let started = (|| -> Result<_> {
                let tid: u32 = std::fs::read_link("/proc/thread-self")?
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("/proc/thread-self")?
                    .parse()?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
                Ok((tid, rt, listener))
            })();
            let (tid, rt, listener) = match started {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let addr = listener.local_addr().map_err(anyhow::Error::from);
            let _ = tx.send(addr.map(|a| (a, tid)));
            let app = axum::Router::new()
                .route(
                    "/v1/groups/blue/config",
                    axum::routing::get(longpoll_handler),
                )
                .with_state(lp);
            rt.block_on(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = axum::serve(listener, app) => {}
                }
            });
        })?;
    rx.recv_timeout(Duration::from_secs(10))
        .context("the long-poll server thread did not start")?
}

async fn http_side(sz: &FleetSizes, doc: &str, wire: &tokio::runtime::Handle) -> Result<Side> {
    let plain = Bytes::from(doc.to_string());
    let gz = gzip(&plain)?;
    let lp = Arc::new(LongPoll {
        doc: watch::channel((1, plain.clone(), gz)).0,
        holding: AtomicUsize::new(0),
    });
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let (addr, tid) = start_longpoll(lp.clone(), cancel.clone())?;
    let clock = Arc::new(Clock {
        wire: wire.clone(),
        epoch: Instant::now(),
        armed: AtomicU64::new(0),
    });
    let t = Instant::now();
    let watchers = start_watchers(
        sz,
        addr,
        |fwd| SourceUrl::Http(format!("http://{fwd}/v1/groups/blue/config")),
        1,
        |_| true,
        &clock,
        &cancel,
    )
    .await?;
    let load = t.elapsed();
    // Every watcher's next request is held before the change.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lp.holding.load(Ordering::SeqCst) < watchers.len() {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} requests held by the long-poll server after 30 s",
                lp.holding.load(Ordering::SeqCst),
                watchers.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load_bytes = median_u64(
        watchers
            .iter()
            .map(|w| w.tap.received.load(Ordering::SeqCst))
            .collect(),
    );
    let (_, old, new) = changed_server(sz.pools);
    let changed = doc
        .replacen("\"revision\":1,", "\"revision\":2,", 1)
        .replacen(&old, &new, 1);
    if changed == doc || !changed.contains(&new) {
        bail!("the one-server change did not apply to the document");
    }
    let size = changed.len();
    let change = async {
        let t = Instant::now();
        let body = Bytes::from(changed);
        let gz = gzip(&body)?;
        let zipped = gz.as_ref().map(Bytes::len);
        let gzip_ms = ms(t.elapsed());
        lp.doc.send_replace((2, body, gz));
        Ok((
            2,
            match zipped {
                Some(z) => format!(
                    "the whole document again: {size} bytes, gzip {z} bytes (gzip -6 once, {gzip_ms:.0} ms, in the latency)"
                ),
                None => format!("the whole document again: {size} bytes (gzip not installed: uncompressed)"),
            },
        ))
    };
    let (mut side, _) = measure(sz, &watchers, &clock, Server::Thread(tid), change).await?;
    side.load = load;
    side.load_bytes = load_bytes;
    cancel.cancel();
    drop(watchers);
    Ok(side)
}

// ------------------------------------------------------------- figures

/// Raises RLIMIT_NOFILE for ~5 descriptors per watcher (watcher, forwarder
/// both ways, listener; etcd inherits the limit for its side).
fn raise_nofile(watchers: usize) -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = (watchers as u64) * 6 + 1024;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(soft);
    }
    let hard = if hard < want && nix::unistd::geteuid().is_root() {
        want
    } else {
        hard
    };
    setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).context("raising RLIMIT_NOFILE")?;
    if want > hard {
        bail!("RLIMIT_NOFILE hard limit {hard} < {want} needed for {watchers} watchers");
    }
    Ok(want)
}

fn quantiles(v: &[Duration]) -> String {
    let (p50, p99) = stats(v.to_vec());
    let max = v.iter().max().copied().map_or(f64::NAN, ms);
    format!("p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms")
}

fn cell_bytes(s: &Side) -> String {
    let min = s.bytes.iter().min().copied().unwrap_or(0);
    let max = s.bytes.iter().max().copied().unwrap_or(0);
    format!(
        "median {} B (min {min}, max {max}) per watcher; {}",
        median_u64(s.bytes.clone()),
        s.note
    )
}

fn cell_latency(s: &Side) -> String {
    let missed = if s.missed > 0 {
        format!("; **{} of {} never applied it**", s.missed, s.watchers)
    } else {
        String::new()
    };
    format!(
        "applied by all {}: {}; first bytes at the watcher: {}{missed}",
        s.applied.len(),
        quantiles(&s.applied),
        quantiles(&s.wire)
    )
}

fn kb_mb(kb: Option<u64>) -> String {
    kb.map_or("n/a".into(), |k| format!("{:.0} MB", k as f64 / 1024.0))
}

fn cell_server(s: &Side, who: &str) -> String {
    let w = s.window.as_secs_f64();
    let rss = match s.server_rss_kb {
        Some(kb) => format!("RSS {}", kb_mb(Some(kb))),
        None => "RSS: part of the bench process".into(),
    };
    format!(
        "{who}: {:.0} ms CPU over the {:.0} ms window = {:.2} cores, {rss}; the whole bench process (all watchers and forwarders): {:.0} ms CPU ({:.2} ms per watcher)",
        ms(s.server_cpu),
        w * 1000.0,
        s.server_cpu.as_secs_f64() / w,
        ms(s.bench_cpu),
        ms(s.bench_cpu) / s.watchers as f64,
    )
}

fn cell_memory(s: &Side) -> String {
    format!(
        "bench process RSS {} with {} watchers ({:.1} MB each); loading the group into all: {:.1} s, {:.2} MB received per watcher",
        kb_mb(s.bench_rss_kb),
        s.watchers,
        s.bench_rss_kb.unwrap_or(0) as f64 / 1024.0 / s.watchers as f64,
        s.load.as_secs_f64(),
        s.load_bytes as f64 / 1e6
    )
}

/// The fleet rows: (figure, etcd cell | HTTP long-poll cell).
pub async fn fig_fleet(sz: &FleetSizes) -> Vec<(String, Result<(String, String)>)> {
    let what = format!(
        "{} watchers (in-process, the agent's source component), one-server change in {} pools × {} servers",
        sz.watchers, sz.pools, sz.servers
    );
    let figures = [
        format!("fleet, bytes received per agent: {what} (goal < 1 KB)"),
        format!("fleet, change → applied by every agent: {what} (goal p99 < 1 s)"),
        format!("fleet, server CPU and RSS during the change: {what} (goal etcd < 1 core)"),
        format!("fleet, memory and initial load: {what}"),
    ];
    let fail = |e: &anyhow::Error| -> Vec<(String, Result<(String, String)>)> {
        figures
            .iter()
            .map(|f| (f.clone(), Err(anyhow!("{e:#}"))))
            .collect()
    };
    if let Err(e) = raise_nofile(sz.watchers) {
        return fail(&e);
    }
    let doc = super::document(1, sz.pools, sz.servers, false);
    let t = Instant::now();
    let validate = parse(doc.as_bytes()).map(|_| t.elapsed());
    let wire = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fleet-wire")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow!("the forwarders' runtime: {e}")),
    };
    eprintln!("[fleet] etcd: {} watchers", sz.watchers);
    let etcd = etcd_side(sz, &doc, wire.handle()).await;
    eprintln!("[fleet] HTTP long-poll: {} watchers", sz.watchers);
    let http = http_side(sz, &doc, wire.handle()).await;
    // Inside an async context a runtime may only be shut down in the background.
    wire.shutdown_background();
    let etcd = match etcd {
        Ok(s) => s,
        Err(e) => return fail(&e.context("etcd side")),
    };
    let h = |f: &dyn Fn(&Side) -> String| match &http {
        Ok(s) => f(s),
        Err(e) => super::na(format!("HTTP side: {e:#}").replace('|', "/")),
    };
    let validate = match validate {
        Ok(d) => format!(
            "included on both sides (the agent's own parser); one full parse and validation of the {}-byte document took {:.0} ms in this run, before the watchers started",
            doc.len(),
            ms(d)
        ),
        Err(e) => format!("validation of the document failed: {e:#}"),
    };
    vec![
        (
            figures[0].clone(),
            Ok((
                format!("etcd watch: {}", cell_bytes(&etcd)),
                format!("HTTP long-poll, full document: {}", h(&cell_bytes)),
            )),
        ),
        (
            figures[1].clone(),
            Ok((
                format!("etcd watch: {}; {validate}", cell_latency(&etcd)),
                format!("HTTP long-poll: {}; {validate}", h(&cell_latency)),
            )),
        ),
        (
            figures[2].clone(),
            Ok((
                cell_server(&etcd, "etcd 3.4 (one member)"),
                h(&|s| cell_server(s, "reference long-poll server (its thread)")),
            )),
        ),
        (
            figures[3].clone(),
            Ok((
                format!("etcd watch: {}", cell_memory(&etcd)),
                format!("HTTP long-poll: {}", h(&cell_memory)),
            )),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_changed_server_is_in_the_document() {
        let doc = super::super::document(1, 10, 20, false);
        let (key, old, new) = changed_server(10);
        assert_eq!(key, "servers/pool0005/s007");
        assert_eq!(doc.matches(&old).count(), 1);
        assert_eq!(new, old.replace("\"weight\":10", "\"weight\":7"));
        assert_ne!(new, old);
    }
}
