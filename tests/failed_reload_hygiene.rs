//! Failed-reload hygiene against a real HAProxy 2.6 (docs/reliability.md, "Failed reloads").
//!
//! A reload whose new frontend binds a port that another process holds passes
//! `haproxy -c` and then fails; while the new process retries its bind (about
//! two seconds) the serving worker has paused every listener, so existing
//! frontends refuse connections. These tests put an existing frontend under
//! continuous client load and
//! - `bind_check_keeps_existing_frontends_serving`: make 20 such reload
//!   attempts through `Installer::check_binds` first, as the reconciler does
//!   (0 refused), then, in the same run, the same reload without the check
//!   (the old code path), and print both figures;
//! - `bind_check_against_real_haproxy`: check the module's verdicts against a
//!   running HAProxy and real foreign listeners (plain and SO_REUSEPORT, IPv4
//!   and IPv6), including what the SO_REUSEPORT case does when not refused;
//! - `failed_reload_variants` (ignored: about four minutes): the HAProxy-side
//!   variants (socket transfer, `expose-fd listeners`, no master-worker, bind
//!   order), 20 failed reloads each, refused counts side by side.
//!
//! Traffic stays on 127.0.0.0/8 and ::1; every process is killed by PID on drop.

#[path = "common/backend.rs"]
mod backend;
#[path = "common/haproxy.rs"]
mod haproxy;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend::{free_port, Backend};
use haproxy::{Haproxy, Lab, HAPROXY};
use lb_agent::haproxy::bindcheck::{self, ConflictKind};
use lb_agent::haproxy::master::MasterClient;
use lb_agent::haproxy::reload::{Installer, ReloadError};
use lb_agent::haproxy::render::Rendered;
use lb_agent::model::validate::{parse_document, ValidateContext};
use lb_agent::model::DesiredState;
use serde_json::{json, Value};

/// The VIP of the tests: local on Linux without adding it.
const VIP: &str = "127.0.0.41";

// ------------------------------------------------------------ client load

/// Outcome counters of the client load; monotonic, read as deltas per phase.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    timeout: AtomicU64,
    other: AtomicU64,
    /// When each failed request failed, to measure the outage windows.
    failures: Mutex<Vec<Instant>>,
}

/// A snapshot of [`Tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    ok: u64,
    refused: u64,
    reset: u64,
    timeout: u64,
    other: u64,
}

impl Counts {
    fn failed(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.other
    }
    fn since(&self, before: &Counts) -> Counts {
        Counts {
            ok: self.ok - before.ok,
            refused: self.refused - before.refused,
            reset: self.reset - before.reset,
            timeout: self.timeout - before.timeout,
            other: self.other - before.other,
        }
    }
}

impl Tally {
    fn counts(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            reset: self.reset.load(Ordering::Relaxed),
            timeout: self.timeout.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

/// Client threads sending `GET /` (one connection each) to `addr` until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = (0..clients)
            .map(|_| {
                let (stop, tally) = (stop.clone(), tally.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let c = match request(addr) {
                            Ok(()) => &tally.ok,
                            Err(e) => {
                                tally.failures.lock().unwrap().push(Instant::now());
                                match e.kind() {
                                    std::io::ErrorKind::ConnectionRefused => &tally.refused,
                                    std::io::ErrorKind::ConnectionReset
                                    | std::io::ErrorKind::BrokenPipe
                                    | std::io::ErrorKind::UnexpectedEof => &tally.reset,
                                    std::io::ErrorKind::TimedOut
                                    | std::io::ErrorKind::WouldBlock => &tally.timeout,
                                    _ => &tally.other,
                                }
                            }
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
        }
    }

    fn counts(&self) -> Counts {
        self.tally.counts()
    }

    /// Outage windows in `[from, to)`: failures closer than 300 ms belong to
    /// one window; returns (windows, longest in ms).
    fn outages(&self, from: Instant, to: Instant) -> (usize, f64) {
        let mut t: Vec<Instant> = self.tally.failures.lock().unwrap().clone();
        t.retain(|i| *i >= from && *i < to);
        t.sort();
        let (mut windows, mut longest, mut start) = (0, Duration::ZERO, None::<Instant>);
        for (i, at) in t.iter().enumerate() {
            if i == 0 || at.duration_since(t[i - 1]) > Duration::from_millis(300) {
                windows += 1;
                start = Some(*at);
            }
            longest = longest.max(at.duration_since(start.unwrap()));
        }
        (windows, longest.as_secs_f64() * 1e3)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One HTTP/1.0 request on a new connection; Ok only for a 200 answer.
fn request(addr: SocketAddr) -> std::io::Result<()> {
    let limit = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    if out.starts_with(b"HTTP/1.1 200") || out.starts_with(b"HTTP/1.0 200") {
        Ok(())
    } else if out.is_empty() {
        Err(std::io::ErrorKind::UnexpectedEof.into())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out[..out.len().min(40)]).into_owned(),
        ))
    }
}

// ------------------------------------------------------------ agent side

/// The document: `web` on `web`, plus `new` on each of `extra`.
fn document(revision: u64, web: SocketAddr, extra: &[SocketAddr], b: &Backend) -> DesiredState {
    let mut frontends = vec![
        json!({"name": "web", "bind": [web.to_string()], "mode": "http", "default_pool": "www"}),
    ];
    for (i, a) in extra.iter().enumerate() {
        frontends.push(json!({"name": format!("new{i}"), "bind": [a.to_string()], "mode": "http", "default_pool": "www"}));
    }
    let mut vips: Vec<Value> = vec![json!({"address": format!("{VIP}/32")})];
    if extra.iter().chain([&web]).any(|a| a.is_ipv6()) {
        vips.push(json!({"address": "::1/128"}));
    }
    let doc = json!({
        "schema": 1, "revision": revision, "group": "blue",
        "vips": vips,
        "frontends": frontends,
        "pools": [{"name": "www", "mode": "http", "balance": "roundrobin",
                   "servers": [{"name": "b1", "address": b.addr.ip().to_string(), "port": b.addr.port(), "weight": 1, "state": "ready"}]}]
    });
    parse_document(
        &serde_json::to_vec(&doc).unwrap(),
        &ValidateContext {
            group: "blue".into(),
        },
    )
    .unwrap()
}

/// The installer the reconciler builds (`Reconciler::new`) for this lab.
fn installer(lab: &Lab) -> Installer {
    Installer {
        binary: HAPROXY.into(),
        config: lab.config.clone(),
        data_dir: lab.data_dir.clone(),
        reload_command: vec![],
        reload_timeout: Duration::from_secs(15),
        master: MasterClient::new(&lab.master, Duration::from_secs(5)),
    }
}

fn render(lab: &Lab, d: &DesiredState) -> Rendered {
    lab.renderer().render(d, &lab.data_dir).unwrap()
}

/// Installs and reloads `d`, expecting success.
async fn apply(lab: &Lab, inst: &Installer, d: &DesiredState) {
    inst.install(&render(lab, d)).unwrap();
    inst.reload_and_confirm()
        .await
        .expect("reload of a good config");
}

/// Waits (bounded) until `addr` answers 200.
fn wait_serving(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while request(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never served");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP listener with or without SO_REUSEPORT, held by this (test) process.
fn foreign_listener(addr: SocketAddr, reuseport: bool) -> socket2::Socket {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    if reuseport {
        s.set_reuse_port(true).unwrap();
    }
    s.bind(&addr.into()).unwrap();
    s.listen(64).unwrap();
    s
}

fn master_reloads(lab: &Lab) -> (u64, u64) {
    let p = lb_agent::haproxy::parse::show_proc(&Haproxy::cli(&lab.master, "show proc")).unwrap();
    (p.master_reloads, p.failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_check_keeps_existing_frontends_serving() {
    if !haproxy::available("bind_check_keeps_existing_frontends_serving") {
        return;
    }
    let checked_attempts = 20;
    let unchecked_attempts: usize = std::env::var("LB_HYGIENE_UNCHECKED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let lab = Lab::new();
    let b1 = Backend::start("b1").await;
    let web: SocketAddr = format!("{VIP}:{}", free_port(VIP)).parse().unwrap();
    let held: SocketAddr = format!("{VIP}:{}", free_port(VIP)).parse().unwrap();
    let _foreign = foreign_listener(held, false);
    let _hap = Haproxy::start(&lab);
    let inst = installer(&lab);
    let d1 = document(1, web, &[], &b1);
    apply(&lab, &inst, &d1).await;
    wait_serving(web);

    // The candidate passes `haproxy -c`: validation cannot see the held port.
    let d2 = document(2, web, &[held], &b1);
    inst.validate(|dir| lab.renderer().render(&d2, dir).map_err(|e| e.to_string()))
        .await
        .expect("haproxy -c accepts the candidate");

    let load = Load::start(web, 2);
    std::thread::sleep(Duration::from_millis(300));

    // With the bind check, as the reconciler runs it before `install`.
    let reloads_before = master_reloads(&lab);
    let (c0, t0) = (load.counts(), Instant::now());
    let mut check_took = Vec::new();
    for i in 0..checked_attempts {
        let rendered = render(&lab, &d2);
        let started = Instant::now();
        let res = inst.check_binds(&rendered).await;
        check_took.push(started.elapsed().as_secs_f64() * 1e3);
        match res {
            Err(ReloadError::Binds(c)) => {
                assert_eq!(c.0.len(), 1, "{c}");
                assert_eq!(c.0[0].kind, ConflictKind::Held);
                let msg = c.to_string();
                let want = format!("port {} on {VIP} held by another process", held.port());
                assert!(msg.contains(&want), "attempt {i}: {msg}");
                assert!(
                    msg.contains(&format!("pid {}", std::process::id())),
                    "{msg}"
                );
                if i == 0 {
                    println!("bind check: {msg}");
                }
            }
            other => panic!("attempt {i}: the bind check let the reload through: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (checked, t1) = (load.counts().since(&c0), Instant::now());
    assert_eq!(
        master_reloads(&lab),
        reloads_before,
        "no reload was attempted"
    );

    // The same candidate without the check: the old reload path.
    let c1 = load.counts();
    let mut took = Vec::new();
    for i in 0..unchecked_attempts {
        let snap = inst.install(&render(&lab, &d2)).unwrap();
        let started = Instant::now();
        let r = inst.reload_and_confirm().await;
        took.push(started.elapsed().as_secs_f64());
        inst.restore(snap);
        assert!(
            matches!(r, Err(ReloadError::NotConfirmed(_))),
            "attempt {i}: the reload should fail on the held port: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (unchecked, t2) = (load.counts().since(&c1), Instant::now());
    let (windows, longest) = load.outages(t1, t2);
    drop(load);
    println!(
        "failed-reload hygiene, client load on an existing frontend (2 clients, one connection per request):\n\
         | path | attempts | requests ok | refused | reset | timeout | other |\n\
         |---|---|---|---|---|---|---|\n\
         | bind check first (reload not started) | {checked_attempts} | {} | {} | {} | {} | {} |\n\
         | reload without the check (fails: port held) | {unchecked_attempts} | {} | {} | {} | {} | {} |\n\
         checked phase {:.1} s, unchecked phase {:.1} s, mean failed reload {:.2} s, \
         {windows} outage windows, longest {longest:.0} ms; bind check {:.1} ms mean, {:.1} ms max",
        checked.ok, checked.refused, checked.reset, checked.timeout, checked.other,
        unchecked.ok, unchecked.refused, unchecked.reset, unchecked.timeout, unchecked.other,
        t1.duration_since(t0).as_secs_f64(),
        t2.duration_since(t1).as_secs_f64(),
        took.iter().sum::<f64>() / took.len().max(1) as f64,
        check_took.iter().sum::<f64>() / check_took.len() as f64,
        check_took.iter().cloned().fold(0.0, f64::max),
    );
    assert_eq!(checked.failed(), 0, "with the bind check: {checked:?}");
    assert!(
        checked.ok > 100,
        "the load ran during the checked phase: {checked:?}"
    );
    // Proves the harness sees what the check prevents (HAProxy 2.6 behaviour).
    assert!(
        unchecked.refused > 0,
        "without the check HAProxy 2.6 pauses the listeners: {unchecked:?}"
    );
    wait_serving(web);
}

/// True when ::1 can be bound here (IPv6 enabled); prints a loud skip otherwise.
fn ipv6_available(test: &str) -> bool {
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        return true;
    }
    eprintln!("!!! SKIPPED {test} (IPv6 part): ::1 cannot be bound here");
    false
}

fn haproxy_pids(lab: &Lab) -> BTreeSet<u32> {
    let p = lb_agent::haproxy::parse::show_proc(&Haproxy::cli(&lab.master, "show proc")).unwrap();
    std::iter::once(p.master_pid)
        .chain(p.workers.iter().chain(&p.old_workers).map(|w| w.pid))
        .collect()
}

/// Connections to `addr` that the foreign `listener` accepted, out of `n`.
fn taken_by(listener: &socket2::Socket, addr: SocketAddr, n: usize) -> usize {
    listener.set_nonblocking(true).unwrap();
    let mut taken = 0;
    for _ in 0..n {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap();
        // The kernel queues it on one listener of the SO_REUSEPORT group; see which.
        std::thread::sleep(Duration::from_millis(2));
        while listener.accept().is_ok() {
            taken += 1;
        }
        drop(s);
    }
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_check_against_real_haproxy() {
    if !haproxy::available("bind_check_against_real_haproxy") {
        return;
    }
    let v6 = ipv6_available("bind_check_against_real_haproxy");
    let lab = Lab::new();
    let b1 = Backend::start("b1").await;
    let web: SocketAddr = format!("{VIP}:{}", free_port(VIP)).parse().unwrap();
    let mut new: Vec<SocketAddr> = vec![format!("{VIP}:{}", free_port(VIP)).parse().unwrap()];
    if v6 {
        new.push(format!("[::1]:{}", free_port("::1")).parse().unwrap());
    }
    let _hap = Haproxy::start(&lab);
    let inst = installer(&lab);
    let d1 = document(1, web, &[], &b1);
    apply(&lab, &inst, &d1).await;
    wait_serving(web);
    let pids = haproxy_pids(&lab);
    let running = std::fs::read_to_string(&lab.config).unwrap();
    let c1 = render(&lab, &d1).config;

    // Nothing new to bind.
    assert_eq!(bindcheck::check(&c1, Some(&running), &pids), Ok(()));
    // Running config unknown: HAProxy's own port is probed; the probe binds
    // next to it (SO_REUSEPORT, same uid) and the socket's owner is HAProxy.
    assert_eq!(bindcheck::check(&c1, None, &pids), Ok(()));
    // Knowing neither, HAProxy's own listener is taken for a foreign one: safe side.
    let blind = bindcheck::check(&c1, None, &BTreeSet::new()).unwrap_err();
    assert_eq!(blind.0[0].kind, ConflictKind::Shared, "{blind}");

    // New frontends on free ports.
    let d2 = document(2, web, &new, &b1);
    let rendered = render(&lab, &d2);
    inst.check_binds(&rendered).await.expect("free ports pass");

    // Foreign listeners without SO_REUSEPORT: held, the holder named.
    let me = format!("pid {}", std::process::id());
    {
        let _held: Vec<_> = new.iter().map(|a| foreign_listener(*a, false)).collect();
        let Err(ReloadError::Binds(c)) = inst.check_binds(&rendered).await else {
            panic!("held ports must be refused");
        };
        println!("held: {c}");
        assert_eq!(c.0.len(), new.len(), "{c}");
        for (conflict, addr) in c.0.iter().zip(&new) {
            assert_eq!(
                (conflict.kind.clone(), conflict.addr),
                (ConflictKind::Held, *addr)
            );
            let want = format!(
                "port {} on {} held by another process",
                addr.port(),
                addr.ip()
            );
            assert!(conflict.to_string().starts_with(&want), "{conflict}");
            assert!(conflict.to_string().contains(&me), "{conflict}");
        }
    }

    // Foreign listeners with SO_REUSEPORT under HAProxy's uid: every bind
    // succeeds, so only the socket table can tell.
    let shared: Vec<_> = new.iter().map(|a| foreign_listener(*a, true)).collect();
    for a in &new {
        let probe = bindcheck::probe(&bindcheck::Bind {
            addr: *a,
            v6only: None,
        });
        assert_eq!(
            probe,
            Ok(()),
            "{a}: the probe binds next to a SO_REUSEPORT listener"
        );
    }
    let Err(ReloadError::Binds(c)) = inst.check_binds(&rendered).await else {
        panic!("shared ports must be refused");
    };
    println!("shared: {c}");
    assert!(
        c.0.iter()
            .all(|c| c.kind == ConflictKind::Shared && c.to_string().contains(&me)),
        "{c}"
    );
    assert_eq!(c.0.len(), new.len());

    // What refusing it prevents: the reload succeeds and the foreign process
    // takes part of the new frontend's connections.
    apply(&lab, &inst, &d2).await;
    let n = 40;
    let taken = taken_by(&shared[0], new[0], n);
    println!(
        "without the check: the reload succeeded and {taken} of {n} connections to the new \
         frontend {} went to the foreign SO_REUSEPORT listener",
        new[0]
    );
    assert!(taken > 0 && taken < n, "the port is shared: {taken} of {n}");
}
