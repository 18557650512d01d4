//! Cost of the health checks: runs the real monitor with N services against
//! local servers for a few seconds per check kind and PRINTS the CPU time
//! this process spent per check (getrusage, user + system). It measures,
//! it does not assert: the figure to compare with is SPEC's 2,000 checks/s
//! under 10% of one core, i.e. 50 µs per check.
//!
//! The servers run in a child process (this binary re-executed with
//! `--serve`) so their CPU is not counted as the checker's; the child's own
//! CPU is printed at the end for context.
//!
//! ```text
//! cargo run --release --example health_bench -- [services] [seconds] [workers] [phases]
//! ```
//! Defaults: 2000 services at a 1 s interval (2,000 checks/s), 5 s per
//! phase, a current-thread runtime (`workers` > 0: multi-thread with that
//! many workers), every phase (`phases`: comma-separated subset of
//! `tcp,http,tcp+http,tls+http`).

#![allow(clippy::disallowed_methods)] // it measures real elapsed time

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_agent::health::monitor;
use lb_agent::health::{
    Checker, HealthSnapshot, HttpRequestSpec, MonitorOptions, Probe, ServiceCheck, ServiceKey,
    ServiceOrigin,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve();
    }
    let services: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let workers: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let only: Option<&str> = args.get(4).map(String::as_str);

    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    BufReader::new(stdout).read_line(&mut line)?;
    let addrs: Vec<SocketAddr> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [tcp, http, tls] = addrs[..] else {
        anyhow::bail!("server said {line:?}");
    };

    // 0 workers: a current-thread runtime (what a dedicated health thread would run).
    let runtime = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    let flavor = match workers {
        0 => "current-thread runtime".to_string(),
        n => format!("multi-thread runtime, {n} workers"),
    };
    println!(
        "{services} services at a 1s interval ({services} checks/s; tls+http: a quarter), \
         {seconds}s per phase, {flavor}"
    );
    println!(
        "{:<10} {:>8} {:>7} {:>13} {:>10} {:>10} {:>13}",
        "phase", "checks", "failed", "cpu/check", "user", "sys", "% of 1 core"
    );
    let result = runtime.block_on(async {
        for (phase, kinds) in [
            ("tcp", &["tcp"][..]),
            ("http", &["http"][..]),
            ("tcp+http", &["tcp", "http"][..]),
            ("tls+http", &["tls"][..]),
        ] {
            if only.is_some_and(|o| !o.split(',').any(|p| p == phase)) {
                continue;
            }
            // TLS costs the (test) server a handshake per check; at the full
            // rate it starves on 2 cores and its accept queue overflows,
            // which measures the server, not the checker. Quarter rate.
            let count = if phase == "tls+http" {
                services / 4
            } else {
                services
            };
            let set: Vec<ServiceCheck> = (0..count)
                .map(|i| {
                    let probe = match kinds[i % kinds.len()] {
                        "tcp" => Probe::Tcp { addr: tcp },
                        "http" => Probe::Http {
                            addr: http,
                            request: get(),
                        },
                        _ => Probe::Tls {
                            addr: tls,
                            sni: Some("svc.example.test".into()),
                            request: Some(get()),
                        },
                    };
                    ServiceCheck {
                        key: ServiceKey {
                            vip: format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255)
                                .parse()
                                .expect("vip"),
                            origin: ServiceOrigin::Frontend,
                            name: format!("svc{i}"),
                        },
                        probe,
                        interval: Duration::from_secs(1),
                        fast_interval: Duration::from_millis(200),
                        timeout: Duration::from_millis(500),
                        rise: 3,
                        fall: 2,
                    }
                })
                .collect();
            measure(phase, set, Duration::from_secs(seconds)).await?;
        }
        Ok::<_, anyhow::Error>(())
    });

    // Stop the server child by its PID and reap it, then show its CPU.
    drop(child.stdin.take());
    child.kill()?;
    child.wait()?;
    let server = rusage(libc::RUSAGE_CHILDREN);
    println!(
        "server process (not counted above): {:.2}s cpu total",
        (server.user + server.sys).as_secs_f64()
    );
    result
}

fn get() -> HttpRequestSpec {
    HttpRequestSpec {
        path: "/".into(),
        host: Some("svc.example.test".into()),
        expect_status: vec![],
    }
}

/// Runs the monitor over `set`, lets it reach the steady state, then
/// measures CPU and checks over `window`.
async fn measure(phase: &str, set: Vec<ServiceCheck>, window: Duration) -> anyhow::Result<()> {
    let (_set_tx, set_rx) = watch::channel(set);
    let (snap_tx, snap) = watch::channel(HealthSnapshot::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(monitor::run(
        Arc::new(Checker::new()?),
        set_rx,
        snap_tx,
        MonitorOptions::default(),
        cancel.clone(),
    ));
    // Warm-up: first round plus the fast rise checks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let count = |s: &HealthSnapshot| {
        s.services.values().fold((0u64, 0u64), |(c, f), s| {
            (c + s.health.checks, f + s.health.failures)
        })
    };
    let (checks0, failed0) = count(&snap.borrow());
    let (ru0, wall0) = (rusage(libc::RUSAGE_SELF), Instant::now());
    tokio::time::sleep(window).await;
    let (checks1, failed1) = count(&snap.borrow());
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    for s in snap.borrow().services.values() {
        if let Some(e) = &s.health.last_error {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    let (ru1, wall1) = (rusage(libc::RUSAGE_SELF), Instant::now());
    cancel.cancel();
    task.await?;

    let checks = checks1 - checks0;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / checks.max(1) as f64;
    let (user, sys) = (ru1.user - ru0.user, ru1.sys - ru0.sys);
    let core_share = (user + sys).as_secs_f64() / (wall1 - wall0).as_secs_f64() * 100.0;
    println!(
        "{:<10} {:>8} {:>7} {:>10.1} µs {:>7.1} µs {:>7.1} µs {:>12.1}%",
        phase,
        checks,
        failed1 - failed0,
        per(user + sys),
        per(user),
        per(sys),
        core_share
    );
    for (error, services) in errors {
        println!("           last error of {services} services: {error}");
    }
    std::io::stdout().flush()?;
    Ok(())
}

/// CPU time of a process (getrusage).
struct Cpu {
    user: Duration,
    sys: Duration,
}

fn rusage(who: libc::c_int) -> Cpu {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    if rc != 0 {
        return Cpu {
            user: Duration::ZERO,
            sys: Duration::ZERO,
        };
    }
    Cpu {
        user: tv(ru.ru_utime),
        sys: tv(ru.ru_stime),
    }
}

/// The server side, in its own process: a TCP acceptor, an HTTP server and
/// a TLS+HTTP server on 127.0.0.1. Prints `READY <tcp> <http> <tls>` and
/// runs until its stdin closes (the parent exited) or it is killed.
fn serve() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;

        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let tls = TcpListener::bind("127.0.0.1:0").await?;
        println!(
            "READY {} {} {}",
            tcp.local_addr()?,
            http.local_addr()?,
            tls.local_addr()?
        );
        std::io::stdout().flush()?;

        tokio::spawn(async move {
            while let Ok((s, _)) = tcp.accept().await {
                drop(s);
            }
        });
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move {
            let _ = axum::serve(http, app).await;
        });

        let ck = rcgen::generate_simple_self_signed(vec!["svc.example.test".to_string()])?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            while let Ok((s, _)) = tls.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = [0u8; 2048];
                    if s.read(&mut buf).await.unwrap_or(0) > 0 {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                            .await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });

        // Exit when the parent closes our stdin.
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while stdin.read(&mut buf).await.unwrap_or(0) > 0 {}
        Ok(())
    })
}
