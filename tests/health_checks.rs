//! Every check kind against real local servers: each passes when it should
//! and is shown to fail the way an operator would see it.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

#[path = "health_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use lb_agent::health::{CheckResult, Checker, HttpRequestSpec, Probe};
use support::*;

const LIMIT: Duration = Duration::from_millis(300);

fn checker() -> Checker {
    Checker::new().expect("tls client config")
}

fn get(path: &str) -> HttpRequestSpec {
    HttpRequestSpec {
        path: path.to_string(),
        host: None,
        expect_status: Vec::new(),
    }
}

fn assert_pass(r: &CheckResult) {
    assert!(r.ok, "expected pass, got {r:?}");
    assert_eq!(r.error, None);
}

fn assert_fail(r: &CheckResult, error: &str) {
    assert!(!r.ok, "expected failure, got {r:?}");
    assert_eq!(r.error.as_deref(), Some(error), "{r:?}");
}

fn assert_fail_starting(r: &CheckResult, prefix: &str) {
    assert!(!r.ok, "expected failure, got {r:?}");
    let e = r.error.as_deref().unwrap_or("");
    eprintln!("error text: {e}");
    assert!(
        e.starts_with(prefix),
        "error {e:?} should start with {prefix:?}"
    );
}

/// A timeout took about the limit: not much less, not hanging on.
fn assert_took_the_limit(r: &CheckResult) {
    assert!(r.latency >= LIMIT, "{r:?}");
    assert!(r.latency < LIMIT + Duration::from_secs(1), "{r:?}");
}

// ---------------------------------------------------------------- tcp

#[tokio::test]
async fn tcp_passes_against_a_listener() {
    let (server, _) = http_server().await;
    let r = checker()
        .check(&Probe::Tcp { addr: server.addr }, LIMIT)
        .await;
    assert_pass(&r);
    assert!(r.latency < LIMIT);
}

#[tokio::test]
async fn tcp_fails_refused() {
    let addr = refused_addr().await;
    let r = checker().check(&Probe::Tcp { addr }, LIMIT).await;
    assert_fail(&r, "connection refused");
}

#[tokio::test]
async fn tcp_fails_on_timeout_when_the_accept_queue_is_full() {
    let full = full_backlog().await;
    let r = checker()
        .check(&Probe::Tcp { addr: full.addr }, LIMIT)
        .await;
    assert_fail(&r, "timeout after 300ms (connect)");
    assert_took_the_limit(&r);
}

#[tokio::test]
async fn tcp_and_http_work_over_ipv6() {
    // VIPs come in both families; the default Host header of an IPv6
    // target is the bracketed form.
    let listener = tokio::net::TcpListener::bind("[::1]:0")
        .await
        .expect("bind [::1] (IPv6 loopback is required)");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move |headers: axum::http::HeaderMap| async move {
            let host = headers.get("host").and_then(|h| h.to_str().ok());
            if host == Some(addr.to_string().as_str()) {
                axum::http::StatusCode::OK
            } else {
                axum::http::StatusCode::BAD_REQUEST
            }
        }),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let c = checker();
    assert_pass(&c.check(&Probe::Tcp { addr }, LIMIT).await);
    assert_pass(
        &c.check(
            &Probe::Http {
                addr,
                request: get("/"),
            },
            LIMIT,
        )
        .await,
    );
    server.abort();
}

// ---------------------------------------------------------------- http

#[tokio::test]
async fn http_passes_on_2xx_and_3xx_by_default() {
    let (server, state) = http_server().await;
    let c = checker();
    for path in ["/", "/status/204", "/status/302"] {
        let r = c
            .check(
                &Probe::Http {
                    addr: server.addr,
                    request: get(path),
                },
                LIMIT,
            )
            .await;
        assert_pass(&r);
    }
    assert_eq!(state.hits().len(), 1, "GET / reached the server");
}

#[tokio::test]
async fn http_fails_on_a_wrong_status() {
    let (server, state) = http_server().await;
    state.set_status(503);
    let c = checker();
    let r = c
        .check(
            &Probe::Http {
                addr: server.addr,
                request: get("/"),
            },
            LIMIT,
        )
        .await;
    assert_fail(&r, "status 503, expected 2xx/3xx");
    let r = c
        .check(
            &Probe::Http {
                addr: server.addr,
                request: get("/nope"),
            },
            LIMIT,
        )
        .await;
    assert_fail(&r, "status 404, expected 2xx/3xx");
}

#[tokio::test]
async fn http_sends_path_and_host_and_honours_expect_status() {
    let (server, _) = http_server().await;
    let c = checker();
    let probe = |host: Option<&str>, expect: &[u16]| Probe::Http {
        addr: server.addr,
        request: HttpRequestSpec {
            path: "/healthz".into(),
            host: host.map(str::to_string),
            expect_status: expect.to_vec(),
        },
    };
    // The server answers 200 only for the right Host header.
    assert_pass(
        &c.check(&probe(Some("svc.example.test"), &[200]), LIMIT)
            .await,
    );
    assert_fail(
        &c.check(&probe(Some("other.example"), &[200]), LIMIT).await,
        "status 421, expected 200",
    );
    // Without a host, the target address is sent (and is not the right one).
    assert_fail(
        &c.check(&probe(None, &[]), LIMIT).await,
        "status 421, expected 2xx/3xx",
    );
    // An explicit list replaces 2xx/3xx: 421 may be what is expected.
    assert_pass(&c.check(&probe(Some("other.example"), &[421]), LIMIT).await);
    assert_fail(
        &c.check(&probe(Some("svc.example.test"), &[204, 301]), LIMIT)
            .await,
        "status 200, expected 204/301",
    );
}

#[tokio::test]
async fn http_reads_a_bounded_body() {
    let (server, _) = http_server().await;
    let started = Instant::now();
    let r = checker()
        .check(
            &Probe::Http {
                addr: server.addr,
                request: get("/big"),
            },
            Duration::from_secs(2),
        )
        .await;
    assert_pass(&r);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn http_fails_on_timeout_when_the_server_never_answers() {
    let server = silent_server().await;
    let r = checker()
        .check(
            &Probe::Http {
                addr: server.addr,
                request: get("/"),
            },
            LIMIT,
        )
        .await;
    assert_fail(&r, "timeout after 300ms (waiting for response)");
    assert_took_the_limit(&r);
}

#[tokio::test]
async fn http_fails_when_the_server_closes_without_answering() {
    let server = closing_server().await;
    let r = checker()
        .check(
            &Probe::Http {
                addr: server.addr,
                request: get("/"),
            },
            LIMIT,
        )
        .await;
    assert_fail_starting(&r, "http: ");
    assert!(r.latency < LIMIT, "{r:?}");
}

#[tokio::test]
async fn http_fails_refused_and_rejects_a_bad_host_header() {
    let addr = refused_addr().await;
    let c = checker();
    let r = c
        .check(
            &Probe::Http {
                addr,
                request: get("/"),
            },
            LIMIT,
        )
        .await;
    assert_fail(&r, "connection refused");

    let (server, state) = http_server().await;
    let r = c
        .check(
            &Probe::Http {
                addr: server.addr,
                request: HttpRequestSpec {
                    path: "/".into(),
                    host: Some("evil\r\nX-Injected: 1".into()),
                    expect_status: vec![],
                },
            },
            LIMIT,
        )
        .await;
    assert_fail(&r, "invalid host header");
    assert!(state.hits().is_empty(), "nothing was sent");
}

// ---------------------------------------------------------------- tls

#[tokio::test]
async fn tls_passes_with_sni_then_http() {
    let (server, seen) = tls_server(200).await;
    let r = checker()
        .check(
            &Probe::Tls {
                addr: server.addr,
                sni: Some("svc.example.test".into()),
                request: Some(HttpRequestSpec {
                    path: "/".into(),
                    host: Some("svc.example.test".into()),
                    expect_status: vec![200],
                }),
            },
            Duration::from_secs(2),
        )
        .await;
    assert_pass(&r);
    // Self-signed and not in any trust store: accepted by design.
    assert_eq!(seen.sni(), vec![Some("svc.example.test".to_string())]);
}

#[tokio::test]
async fn tls_sessions_are_resumed_across_checks() {
    // One shared client config: the second check resumes the first one's
    // session, sparing HAProxy a private-key operation per check.
    let (server, seen) = tls_server(200).await;
    let c = checker();
    let probe = Probe::Tls {
        addr: server.addr,
        sni: Some("svc.example.test".into()),
        request: Some(get("/")),
    };
    for _ in 0..3 {
        assert_pass(&c.check(&probe, Duration::from_secs(2)).await);
    }
    assert_eq!(seen.resumed(), vec![false, true, true]);
}

#[tokio::test]
async fn tls_handshake_only_and_without_sni() {
    let (server, seen) = tls_server(200).await;
    let r = checker()
        .check(
            &Probe::Tls {
                addr: server.addr,
                sni: None,
                request: None,
            },
            Duration::from_secs(2),
        )
        .await;
    assert_pass(&r);
    assert_eq!(seen.sni(), vec![None]);
}

#[tokio::test]
async fn tls_fails_on_a_wrong_status_over_tls() {
    let (server, _) = tls_server(503).await;
    let r = checker()
        .check(
            &Probe::Tls {
                addr: server.addr,
                sni: Some("svc.example.test".into()),
                request: Some(get("/")),
            },
            Duration::from_secs(2),
        )
        .await;
    assert_fail(&r, "status 503, expected 2xx/3xx");
}

#[tokio::test]
async fn tls_fails_against_a_plain_tcp_http_server() {
    let (server, _) = http_server().await;
    let r = checker()
        .check(
            &Probe::Tls {
                addr: server.addr,
                sni: Some("svc.example.test".into()),
                request: Some(get("/")),
            },
            Duration::from_secs(2),
        )
        .await;
    assert_fail(&r, "tls handshake: peer does not speak tls");
}

#[tokio::test]
async fn tls_fails_when_the_handshake_signature_does_not_match_the_certificate() {
    let server = tls_server_wrong_key().await;
    let r = checker()
        .check(
            &Probe::Tls {
                addr: server.addr,
                sni: Some("svc.example.test".into()),
                request: None,
            },
            Duration::from_secs(2),
        )
        .await;
    assert_fail_starting(&r, "tls handshake: ");
    assert!(
        r.error.as_deref().unwrap_or("").contains("ignature"),
        "names the signature problem: {r:?}"
    );
}

#[tokio::test]
async fn tls_fails_when_the_peer_aborts_the_handshake() {
    let server = closing_server().await;
    let r = checker()
        .check(
            &Probe::Tls {
                addr: server.addr,
                sni: Some("svc.example.test".into()),
                request: None,
            },
            LIMIT,
        )
        .await;
    assert_fail_starting(&r, "tls handshake: ");
}

#[tokio::test]
async fn tls_fails_on_timeout_when_the_peer_never_speaks() {
    let server = silent_server().await;
    let r = checker()
        .check(
            &Probe::Tls {
                addr: server.addr,
                sni: Some("svc.example.test".into()),
                request: None,
            },
            LIMIT,
        )
        .await;
    assert_fail(&r, "timeout after 300ms (tls handshake)");
    assert_took_the_limit(&r);
}

// ---------------------------------------------------------------- exec

fn exec(argv: &[&str]) -> Probe {
    Probe::Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn exec_passes_on_exit_0() {
    let r = checker().check(&exec(&["/bin/true"]), LIMIT).await;
    assert_pass(&r);
}

#[tokio::test]
async fn exec_fails_on_exit_1_with_the_first_stderr_line() {
    let r = checker()
        .check(
            &exec(&["/bin/sh", "-c", "echo; echo 'disk full' >&2; exit 1"]),
            Duration::from_secs(2),
        )
        .await;
    assert_fail(&r, "exit status 1: disk full");
    let r = checker().check(&exec(&["/bin/false"]), LIMIT).await;
    assert_fail(&r, "exit status 1");
}

#[tokio::test]
async fn exec_fails_on_a_missing_command_or_empty_argv() {
    let r = checker()
        .check(&exec(&["/nonexistent/lb-agent-check"]), LIMIT)
        .await;
    assert_fail(&r, "command not found: /nonexistent/lb-agent-check");
    let r = checker().check(&exec(&[]), LIMIT).await;
    assert_fail(&r, "empty command");
}

/// Runs `script` (which records `$$` and a background `sleep`'s pid in
/// `dir`), returning the result, the shell's pid (= its process group) and
/// the grandchild's pid.
async fn run_spawning_script(script: &str, limit: Duration) -> (CheckResult, i32, i32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = format!(
        "echo $$ > {d}/sh.pid; sleep 30 & echo $! > {d}/child.pid; {script}",
        d = dir.path().display()
    );
    let r = checker()
        .check(&exec(&["/bin/sh", "-c", &full]), limit)
        .await;
    let read = |f: &str| -> i32 {
        std::fs::read_to_string(dir.path().join(f))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    };
    (r, read("sh.pid"), read("child.pid"))
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group() {
    let (r, sh, child) = run_spawning_script("wait", LIMIT).await;
    let _guards = (KillOnDrop(child), KillOnDrop(sh));
    assert_fail(&r, "timeout after 300ms");
    assert_took_the_limit(&r);
    // The shell was the group leader; the background sleep is its child.
    // Both must be gone right after the check returned (the grandchild may
    // linger as a zombie until init reaps it: it runs nothing).
    assert!(!process_alive(child), "grandchild sleep {child} survived");
    assert!(!process_alive(sh), "shell {sh} survived");
    assert!(group_members(sh).is_empty(), "group {sh} still has members");
}

#[tokio::test]
async fn exec_success_does_not_leave_stragglers() {
    let (r, sh, child) = run_spawning_script("exit 0", Duration::from_secs(2)).await;
    let _guards = (KillOnDrop(child), KillOnDrop(sh));
    assert_pass(&r);
    assert!(
        r.latency < Duration::from_secs(1),
        "did not wait for the straggler"
    );
    assert!(!process_alive(child), "straggler sleep {child} survived");
    assert!(group_members(sh).is_empty());
}

#[tokio::test]
async fn exec_dropped_mid_check_kills_the_group() {
    // The monitor drops a check when its service is removed or the agent
    // stops: the process group must not outlive it.
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "echo $$ > {d}/sh.pid; sleep 30 & echo $! > {d}/child.pid; wait",
        d = dir.path().display()
    );
    let c = checker();
    let probe = exec(&["/bin/sh", "-c", &script]);
    let check = c.check(&probe, Duration::from_secs(10));
    let pidfile = dir.path().join("child.pid");
    let dropped = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::pin!(check);
        // Poll the check until the script has written both pids.
        loop {
            tokio::select! {
                r = &mut check => panic!("check finished early: {r:?}"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n')) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(dropped.is_ok(), "script did not start");
    let read = |f: &str| -> i32 {
        std::fs::read_to_string(dir.path().join(f))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    };
    let (sh, child) = (read("sh.pid"), read("child.pid"));
    let _guards = (KillOnDrop(child), KillOnDrop(sh));
    // The check future is gone now (dropped at the end of the block).
    let gone = async {
        for _ in 0..100 {
            if !process_alive(child) && !process_alive(sh) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(gone.await, "process group {sh} outlived the dropped check");
}
