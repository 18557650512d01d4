//! The whole agent's CPU for a one-server change at 20k servers: the real
//! lb-agent binary on a real HAProxy, the change arriving through etcd (the
//! incremental patch and the scoped pass) against the same changes through
//! a file:// source (the document re-read, re-validated, re-planned, and the
//! config file rendered and checked on every change), in the same run.
//!
//! CPU is the agent process's utime + stime plus its reaped children's
//! (`haproxy -c`, shown apart) (/proc, 10 ms ticks) over a window holding
//! the changes, minus what the idle agent spends over as
//! long (its timers and the verify pass), divided by the number of changes.
//! The window ends when the agent's status says the config file caught up
//! (`config_file_behind` false; the scoped pass writes it 2 s after the
//! last change, at most 10 s after the first) and 1 s more, so that write
//! is paid for inside it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lb_agent::config::builder::AgentToml;
use lb_agent::config::EtcdUrl;

use super::{fleet, ms, sys};

const PREFIX: &str = "/lb/blue/";

/// Sizes of the figure.
pub struct ChangeSizes {
    pub pools: usize,
    pub servers: usize,
    /// Changes through etcd, one every `etcd_every`.
    pub etcd_changes: usize,
    pub etcd_every: Duration,
    /// Changes through the file source (each a full document), one every `file_every`.
    pub file_changes: usize,
    pub file_every: Duration,
    /// After the first document: settling, then the idle window measured.
    pub settle: Duration,
    pub idle: Duration,
}

impl ChangeSizes {
    pub fn new(quick: bool) -> ChangeSizes {
        ChangeSizes {
            pools: if quick { 100 } else { 1000 },
            servers: 20,
            etcd_changes: if quick { 10 } else { 50 },
            etcd_every: Duration::from_millis(200),
            file_changes: if quick { 3 } else { 10 },
            file_every: Duration::from_secs(3),
            settle: Duration::from_secs(if quick { 3 } else { 5 }),
            idle: Duration::from_secs(if quick { 5 } else { 10 }),
        }
    }
}

/// The changed server's weight in change `i` (10 in the document).
fn weight(i: usize) -> u16 {
    20 + (i % 200) as u16
}

/// The changed server, `pools/2` s007: its backend and its object at `weight`.
fn changed(pools: usize, weight: u16) -> (String, String) {
    let p = pools / 2;
    let addr = format!("10.{}.{}.8", p / 256, p % 256);
    (
        format!("pool{p:04}"),
        format!(
            r#"{{"name":"s007","address":"{addr}","port":8080,"weight":{weight},"state":"ready"}}"#
        ),
    )
}

/// HAProxy, BIRD and a directory for one side.
struct Lab {
    dir: tempfile::TempDir,
    haproxy: Option<sys::Daemon>,
    bird: Option<sys::Daemon>,
}

impl Lab {
    fn p(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    fn start() -> Result<Lab> {
        let dir = tempfile::Builder::new()
            .prefix("lb-agent-bench-change.")
            .tempdir()?;
        let mut lab = Lab {
            dir,
            haproxy: None,
            bird: None,
        };
        std::fs::write(lab.p("prefixes.conf"), super::ach::DUMMY_INCLUDE)?;
        std::fs::write(
            lab.p("bird.conf"),
            format!(
                "router id 10.0.0.1;\nlog \"{}\" all;\ninclude \"{}\";\nprotocol device {{ }}\n",
                lab.p("bird.log").display(),
                lab.p("prefixes.conf").display()
            ),
        )?;
        lab.bird = Some(sys::start_bird("bird", None, lab.dir.path())?);
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
            None,
            lab.dir.path(),
            Duration::from_secs(20),
        )?);
        Ok(lab)
    }

    fn agent_toml(&self, url: &str) -> Result<PathBuf> {
        let state = self.p("state");
        std::fs::create_dir_all(&state)?;
        std::fs::create_dir_all(self.p("data"))?;
        let path = self.p("agent.toml");
        AgentToml::new()
            .name("bench")
            .group("blue")
            .state_dir(&state)
            .url(url)
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
            .reload_timeout(Duration::from_secs(120))
            .include_file(&self.p("prefixes.conf"))
            .control_socket(&self.p("bird.ctl"))
            .vip_interface("lo")
            .manage_vips(false)
            .status_socket(&self.p("status.sock"))
            .status_group("root")
            .write(&path)?;
        Ok(path)
    }

    /// The runtime weight of `backend`/s007, from HAProxy itself.
    fn weight(&self, backend: &str) -> Result<Option<u16>> {
        let Ok(mut s) = UnixStream::connect(self.p("admin.sock")) else {
            return Ok(None);
        };
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("show servers state {backend}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.len() > 7 && f[3] == "s007")
            .and_then(|f| f[7].parse().ok()))
    }

    /// Whether the agent's status says its config file lags the runtime
    /// state (`config_file_behind`, docs/status.md).
    fn file_behind(&self) -> Result<bool> {
        let mut s = UnixStream::connect(self.p("status.sock")).context("the status socket")?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: lb-agent\r\nConnection: close\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(body).context("the status body")?;
        fn find(v: &serde_json::Value) -> Option<bool> {
            match v {
                serde_json::Value::Object(m) => m
                    .get("config_file_behind")
                    .and_then(|b| b.as_bool())
                    .or_else(|| m.values().find_map(find)),
                _ => None,
            }
        }
        find(&v).context("no config_file_behind in the status")
    }

    /// Waits (bounded) until the deferred config file write has run.
    fn wait_file_caught_up(&self, agent: &mut sys::Daemon, limit: Duration) -> Result<()> {
        let t = Instant::now();
        while self.file_behind()? {
            agent.check_running()?;
            if t.elapsed() > limit {
                bail!("the config file still lags after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits until HAProxy runs `weight` for the changed server.
    fn wait_weight(
        &self,
        agent: &mut sys::Daemon,
        backend: &str,
        w: u16,
        limit: Duration,
    ) -> Result<Duration> {
        let t = Instant::now();
        loop {
            if self.weight(backend)? == Some(w) {
                return Ok(t.elapsed());
            }
            agent.check_running()?;
            if t.elapsed() > limit {
                bail!(
                    "weight {w} not in HAProxy within {limit:?}; agent log:\n{}",
                    sys::tail(&agent.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
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

/// (own, children) CPU seconds of the process.
fn cpu(pid: u32) -> Result<(f64, f64)> {
    let c = sys::cpu_split(pid)?;
    Ok((c.own().as_secs_f64(), c.children().as_secs_f64()))
}

/// One side's figures.
struct Side {
    /// The agent's own threads and its children (`haproxy -c`), per change.
    per_change: Duration,
    children_per_change: Duration,
    changes: usize,
    applied_p50: Duration,
    idle_per_s: f64,
}

/// Starts the agent on `url`, waits for the first document in HAProxy,
/// then measures idle and `n` changes made by `change(i)`.
fn run_side(
    lab: &Lab,
    agent: &Path,
    url: &str,
    sz: &ChangeSizes,
    n: usize,
    every: Duration,
    mut change: impl FnMut(usize) -> Result<()>,
) -> Result<Side> {
    let toml = lab.agent_toml(url)?;
    let mut d = sys::Daemon::spawn(
        "lb-agent",
        None,
        agent,
        &["run", "--config", &toml.display().to_string()],
        &lab.p("agent.log"),
    )?;
    let backend = format!("pool{:04}", sz.pools / 2);
    lab.wait_weight(&mut d, &backend, 10, Duration::from_secs(180))
        .context("the first document")?;
    // Settle (the first reload's after-pass, the LKG cache), then idle.
    std::thread::sleep(sz.settle);
    let idle_window = sz.idle;
    let (c0, t0) = (cpu(d.pid())?, Instant::now());
    std::thread::sleep(idle_window);
    let c = cpu(d.pid())?;
    let idle_s = t0.elapsed().as_secs_f64();
    let idle = ((c.0 - c0.0) / idle_s, (c.1 - c0.1) / idle_s);
    let (c1, t1) = (cpu(d.pid())?, Instant::now());
    let mut applied = Vec::with_capacity(n);
    for i in 0..n {
        let next = t1 + every * i as u32;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        change(i)?;
        applied.push(lab.wait_weight(&mut d, &backend, weight(i), Duration::from_secs(60))?);
    }
    // The deferred config file write lands inside the window (2 s after
    // the last change), and the coalesced LKG cache write after it.
    std::thread::sleep(Duration::from_secs(2));
    lab.wait_file_caught_up(&mut d, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(1));
    let c2 = cpu(d.pid())?;
    let window = t1.elapsed().as_secs_f64();
    d.check_running()?;
    d.stop();
    applied.sort();
    let per = |busy: f64, idle: f64| {
        Duration::from_secs_f64(((busy - idle * window) / n as f64).max(0.0))
    };
    let own = per(c2.0 - c1.0, idle.0);
    let children = per(c2.1 - c1.1, idle.1);
    Ok(Side {
        per_change: own + children,
        children_per_change: children,
        changes: n,
        applied_p50: applied[applied.len() / 2],
        idle_per_s: idle.0 + idle.1,
    })
}

async fn etcd_side(agent: &Path, sz: &ChangeSizes, doc: &str) -> Result<Side> {
    let etcd = fleet::start_etcd().await?;
    let url = EtcdUrl {
        endpoints: vec![etcd.client.to_string()],
        prefix: PREFIX.into(),
    };
    lb_agent::publish::publish(
        &url,
        &lb_agent::source::etcd::Credentials::default(),
        doc.as_bytes(),
        false,
        64 << 20,
    )
    .await
    .map_err(|e| anyhow!("publishing the group: {e}"))?;
    let lab = Lab::start()?;
    let mut client = etcd_client::Client::connect([format!("http://{}", etcd.client)], None)
        .await
        .context("connecting the publisher")?;
    let rt = tokio::runtime::Handle::current();
    let agent_url = format!("etcd://{}{PREFIX}", etcd.client);
    let pools = sz.pools;
    tokio::task::block_in_place(|| {
        run_side(
            &lab,
            agent,
            &agent_url,
            sz,
            sz.etcd_changes,
            sz.etcd_every,
            |i| {
                let (pool, value) = changed(pools, weight(i));
                rt.block_on(client.put(format!("{PREFIX}servers/{pool}/s007"), value, None))
                    .context("the one-server put")?;
                Ok(())
            },
        )
    })
}

fn file_side(agent: &Path, sz: &ChangeSizes, doc: &str) -> Result<Side> {
    let lab = Lab::start()?;
    let path = lab.p("desired.json");
    std::fs::write(&path, doc)?;
    let url = format!("file://{}", path.display());
    let (_, old) = changed(sz.pools, 10);
    if !doc.contains(&old) {
        bail!("the changed server is not in the document");
    }
    run_side(&lab, agent, &url, sz, sz.file_changes, sz.file_every, |i| {
        let (_, new) = changed(sz.pools, weight(i));
        let body = doc.replacen(&old, &new, 1).replacen(
            "\"revision\":1,",
            &format!("\"revision\":{},", i + 2),
            1,
        );
        let tmp = lab.p("desired.json.tmp");
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    })
}

fn cell(s: &Side, how: &str) -> String {
    format!(
        "{how}: **{:.2} ms CPU per change**, of which {:.2} ms its `haproxy -c` children ({} changes; change → HAProxy p50 {:.1} ms; idle agent {:.1} ms CPU/s subtracted)",
        ms(s.per_change),
        ms(s.children_per_change),
        s.changes,
        ms(s.applied_p50),
        s.idle_per_s * 1e3
    )
}

/// The figure's row: etcd (ours) and the file source (baseline).
pub async fn fig_change(sz: &ChangeSizes, agent: &Path) -> Result<(String, String)> {
    let doc = super::document(1, sz.pools, sz.servers, false);
    eprintln!("[change] etcd source: {} changes", sz.etcd_changes);
    let etcd = etcd_side(agent, sz, &doc).await?;
    eprintln!("[change] file source: {} changes", sz.file_changes);
    let file = tokio::task::block_in_place(|| file_side(agent, sz, &doc));
    let file = match file {
        Ok(s) => cell(&s, "file:// source, the full document per change"),
        Err(e) => super::na(format!("file side: {e:#}").replace('|', "/")),
    };
    Ok((
        cell(&etcd, "etcd source, incremental patch + scoped pass"),
        file,
    ))
}
