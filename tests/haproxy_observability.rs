//! HAProxy's own observability from agent.toml's `[haproxy]` host settings,
//! against a real HAProxy 2.6: the built-in Prometheus exporter and the
//! stats page on host-local listeners, and log lines sent to a syslog
//! target over UDP (a socket this test binds on 127.0.0.1).
//!
//! The config is the agent's render (built-in templates) of a small
//! document whose VIP is a loopback address; HAProxy runs it in
//! master-worker mode from the lab, stopped by PID on drop.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::{backend, haproxy};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use backend::{free_port, get, Backend};
use haproxy::{Haproxy, Lab};
use lb_agent::haproxy::global::GlobalSettings;
use lb_agent::haproxy::render::Rendered;
use lb_agent::model::validate::{parse_document, ValidateContext};
use serde_json::json;

/// A blocking HTTP/1.0 GET of `path` (HTTP/1.0: the reply is not chunked
/// and ends when HAProxy closes); (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: lb\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {out:?}"))?;
    Ok((code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

/// The value of the first exposition sample named `name` whose labels
/// include every `labels` pair.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (labels_part, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let all = labels
            .iter()
            .all(|(k, v)| labels_part.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.trim().parse().ok()).flatten()
    })
}

/// The fields of an httplog line received over syslog:
/// `... haproxy[pid]: ip:port [date] frontend backend/server timers status ...`.
fn httplog_fields(line: &str) -> Option<(String, String, u16)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.starts_with('[') && w.ends_with(']') && w.contains(':'))?;
    let frontend = words.get(i + 1)?.to_string();
    let server = words.get(i + 2)?.to_string();
    let status = words.get(i + 4)?.parse().ok()?;
    Some((frontend, server, status))
}

/// A pool of one server, checked over HTTP.
fn pool(name: &str, mode: &str, be: &Backend) -> serde_json::Value {
    json!({"name": name, "mode": mode, "balance": "roundrobin",
           "check": {"type": if mode == "http" { "http" } else { "tcp" }, "interval": "500ms", "rise": 1, "fall": 1},
           "servers": [{"name": "s1", "address": be.addr.ip().to_string(), "port": be.addr.port(), "weight": 10}]})
}

/// Renders `doc` with the agent's built-in templates under these
/// `[haproxy]` keys (parsed as agent.toml), installs it in the lab and
/// starts HAProxy on it.
fn start(lab: &Lab, haproxy_keys: &str, doc: &serde_json::Value) -> (Haproxy, Rendered) {
    let toml = format!("[node]\nname = \"lb1\"\n[haproxy]\n{haproxy_keys}");
    let cfg = lb_agent::config::parse_str(&toml, "agent.toml").unwrap();
    let global = GlobalSettings::resolve(&cfg.haproxy, &[0]).unwrap();
    let d = parse_document(
        &serde_json::to_vec(doc).unwrap(),
        &ValidateContext {
            group: "blue".into(),
        },
    )
    .unwrap();
    let out = lab.renderer_with(global).render(&d, &lab.data_dir).unwrap();
    for (rel, body) in &out.files {
        let f = lab.data_dir.join(rel);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, body).unwrap();
    }
    std::fs::write(&lab.config, &out.config).unwrap();
    (Haproxy::start(lab), out)
}

/// A UDP "syslog server" on 127.0.0.1 (ephemeral port).
fn syslog_socket() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// Receives datagrams for at most `limit` until `count` of them match.
fn receive(
    s: &UdpSocket,
    count: usize,
    limit: Duration,
    want: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    let mut buf = [0u8; 8192];
    while lines.len() < count && Instant::now() < deadline {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            if want(&line) {
                lines.push(line);
            }
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_stats_page_and_udp_logs_on_a_real_haproxy() {
    if !haproxy::available("exporter_stats_page_and_udp_logs_on_a_real_haproxy") {
        return;
    }
    let lab = Lab::new();
    let be = Backend::start("s1").await;
    let vip = "127.0.0.41";
    let fe: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let stats: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let (syslog, syslog_addr) = syslog_socket();

    let doc = json!({
        "schema": 1, "revision": 1, "group": "blue",
        "vips": [{"address": format!("{vip}/32")}],
        "frontends": [{"name": "web", "bind": [fe.to_string()], "mode": "http", "default_pool": "www"}],
        "pools": [pool("www", "http", &be)]
    });
    let haproxy = format!(
        "log = [\"udp@{syslog_addr} local0 info\"]\n\
         prometheus_listen = \"{prom}\"\nstats_listen = \"{stats}\"\nstats_uri = \"/lb-stats\"\n"
    );
    let (_hp, out) = start(&lab, &haproxy, &doc);

    // Requests through the VIP (bounded wait for the first one: the worker
    // binds right after the sockets answer).
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(fe).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{fe} never served:\n{}",
            out.config
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    const REQUESTS: usize = 5;
    for _ in 0..REQUESTS {
        assert_eq!(get(fe).await.as_deref(), Ok("s1"));
    }
    let sent = REQUESTS + 1;

    // Log lines: one per request, frontend and status code in place.
    let lines = receive(&syslog, sent, Duration::from_secs(10), |l| {
        httplog_fields(l).is_some_and(|(f, _, _)| f == "web")
    });
    assert_eq!(lines.len(), sent, "log lines for frontend web: {lines:#?}");
    println!("a received log line: {}", lines[0].trim_end());
    assert!(lines[0].starts_with("<134>"), "local0.info: {}", lines[0]);
    for l in &lines {
        assert_eq!(
            httplog_fields(l),
            Some(("web".into(), "www/s1".into(), 200)),
            "{l}"
        );
    }

    // The exporter: per-frontend and per-server series.
    let (code, body) = http_get(prom, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    let fe_requests = sample(
        &body,
        "haproxy_frontend_http_requests_total",
        &[("proxy", "web")],
    );
    assert!(
        fe_requests.is_some_and(|v| v >= sent as f64),
        "haproxy_frontend_http_requests_total{{proxy=\"web\"}} = {fe_requests:?}"
    );
    let responses = sample(
        &body,
        "haproxy_server_http_responses_total",
        &[("proxy", "www"), ("server", "s1"), ("code", "2xx")],
    );
    assert!(
        responses.is_some_and(|v| v >= sent as f64),
        "haproxy_server_http_responses_total{{proxy=\"www\",server=\"s1\",code=\"2xx\"}} = {responses:?}"
    );
    let up = sample(
        &body,
        "haproxy_server_status",
        &[("proxy", "www"), ("server", "s1"), ("state", "UP")],
    );
    assert_eq!(up, Some(1.0), "haproxy_server_status of www/s1 UP");
    println!(
        "exporter: {} bytes, {} samples; web requests {fe_requests:?}, www/s1 2xx {responses:?}",
        body.len(),
        body.lines().filter(|l| !l.starts_with('#')).count()
    );
    // Only /metrics is served there.
    assert_eq!(http_get(prom, "/").unwrap().0, 404);
    // The exporter's own listener does not log (`no log`): no line for it.
    let own = receive(&syslog, 1, Duration::from_millis(500), |l| {
        l.contains("_prometheus")
    });
    assert!(own.is_empty(), "{own:?}");

    // The stats page, and its CSV export naming the frontend and server.
    let (code, html) = http_get(stats, "/lb-stats").unwrap();
    assert_eq!(code, 200);
    assert!(html.contains("Statistics Report"), "{html}");
    let (code, csv) = http_get(stats, "/lb-stats;csv").unwrap();
    assert_eq!(code, 200);
    assert!(csv.lines().any(|l| l.starts_with("web,FRONTEND,")), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("www,s1,")), "{csv}");
}

/// `curl -k` through a TLS frontend, with SNI `lb.example` (resolved to
/// the VIP); the body.
fn curl_tls(addr: SocketAddr) -> Result<String, String> {
    let o = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "5", "--resolve"])
        .arg(format!("lb.example:{}:{}", addr.port(), addr.ip()))
        .arg(format!("https://lb.example:{}/", addr.port()))
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "curl: {:?} {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// TLS frontends log their TLS fields: `option httpslog` for HTTP (the
/// frontend shown as `name~`, version/cipher and SNI at the end), tcplog
/// plus `%sslv/%sslc` and the SNI for TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_frontends_log_tls_version_cipher_and_sni() {
    if !haproxy::available("tls_frontends_log_tls_version_cipher_and_sni") {
        return;
    }
    if !common::skip::require_path(
        "tls_frontends_log_tls_version_cipher_and_sni",
        "/usr/bin/curl",
        "curl",
    ) {
        return;
    }
    let lab = Lab::new();
    let be = Backend::start("s1").await;
    let vip = "127.0.0.42";
    let https: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let tcps: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let (syslog, syslog_addr) = syslog_socket();
    let ck = rcgen::generate_simple_self_signed(vec!["lb.example".to_string()]).unwrap();
    let pem = format!("{}{}", ck.cert.pem(), ck.signing_key.serialize_pem());
    let tls = json!({"certificates": ["site"]});
    let doc = json!({
        "schema": 1, "revision": 1, "group": "blue",
        "vips": [{"address": format!("{vip}/32")}],
        "frontends": [
            {"name": "webs", "bind": [https.to_string()], "mode": "http", "tls": tls, "default_pool": "www"},
            {"name": "tcps", "bind": [tcps.to_string()], "mode": "tcp", "tls": tls, "default_pool": "raw"}
        ],
        "pools": [pool("www", "http", &be), pool("raw", "tcp", &be)],
        "certificates": [{"name": "site", "pem": pem}]
    });
    let (_hp, out) = start(&lab, &format!("log = [\"{syslog_addr} local0\"]\n"), &doc);
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl_tls(https).is_err() {
        assert!(
            Instant::now() < deadline,
            "{https} never served:\n{}",
            out.config
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(curl_tls(tcps).as_deref(), Ok("s1"));

    let http = receive(&syslog, 1, Duration::from_secs(10), |l| {
        l.contains(" webs~ ")
    });
    let tcp = receive(&syslog, 1, Duration::from_secs(10), |l| {
        l.contains(" tcps~ ")
    });
    assert_eq!((http.len(), tcp.len()), (1, 1), "{http:?} {tcp:?}");
    println!("https log line: {}", http[0].trim_end());
    println!("tcp+tls log line: {}", tcp[0].trim_end());
    let tls_field = |l: &str| {
        l.split_whitespace()
            .chain(l.split('/'))
            .any(|w| w.starts_with("TLSv1.2") || w.starts_with("TLSv1.3"))
    };
    for l in [&http[0], &tcp[0]] {
        assert!(tls_field(l), "no TLS version: {l}");
        assert!(l.contains("lb.example"), "no SNI: {l}");
    }
    assert!(http[0].contains(" 200 "), "{}", http[0]);
    assert!(tcp[0].contains(" raw/s1 "), "{}", tcp[0]);
}

/// An `rsyslogd -n` this test started; SIGTERM then SIGKILL by PID on drop.
struct Rsyslogd(std::process::Child);

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The packaged rsyslog drop-in, verbatim but for its port (an ephemeral
/// one) and its log file (in the lab), run by a real rsyslogd: a real
/// HAProxy's local0 lines land in the file; another facility does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packaged_rsyslog_dropin_writes_haproxy_lines() {
    const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
    if !haproxy::available("packaged_rsyslog_dropin_writes_haproxy_lines") {
        return;
    }
    if !common::skip::require_path(
        "packaged_rsyslog_dropin_writes_haproxy_lines",
        RSYSLOGD,
        "rsyslog",
    ) {
        return;
    }
    let lab = Lab::new();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = lab.dir.path().join("haproxy-lb.log");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/rsyslog/49-lb-agent-haproxy.conf"
    ))
    .unwrap();
    assert!(text.contains("port=\"514\"") && text.contains("/var/log/haproxy-lb.log"));
    let conf = lab.dir.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        text.replace("port=\"514\"", &format!("port=\"{port}\""))
            .replace("/var/log/haproxy-lb.log", &file.display().to_string()),
    )
    .unwrap();
    let check = std::process::Command::new(RSYSLOGD)
        .args(["-N1", "-f"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "rsyslogd -N1: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _rsyslogd = Rsyslogd(
        std::process::Command::new(RSYSLOGD)
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(lab.dir.path().join("rsyslogd.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );

    let be = Backend::start("s1").await;
    let vip = "127.0.0.43";
    let fe: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let doc = json!({
        "schema": 1, "revision": 1, "group": "blue",
        "vips": [{"address": format!("{vip}/32")}],
        "frontends": [{"name": "web", "bind": [fe.to_string()], "mode": "http", "default_pool": "www"}],
        "pools": [pool("www", "http", &be)]
    });
    let (_hp, _) = start(
        &lab,
        &format!("log = [\"udp@127.0.0.1:{port} local0\"]\n"),
        &doc,
    );
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Until rsyslogd listens, datagrams are lost: request (and send a
    // local1 line) until a line of frontend web is in the file.
    let deadline = Instant::now() + Duration::from_secs(15);
    let written = loop {
        let _ = get(fe).await;
        let _ = other.send_to(
            b"<139>Dec  3 00:00:00 other: local1 line",
            ("127.0.0.1", port),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let written = std::fs::read_to_string(&file).unwrap_or_default();
        if written.lines().any(|l| {
            httplog_fields(l).is_some_and(|(f, s, c)| f == "web" && s == "www/s1" && c == 200)
        }) {
            break written;
        }
        assert!(
            Instant::now() < deadline,
            "no HAProxy line in {}: {written:?}",
            file.display()
        );
    };
    println!(
        "{} holds: {}",
        file.display(),
        written.lines().next().unwrap_or("")
    );
    // rsyslogd listens now: a local1 line, then a request; once the
    // request's line is written, the local1 one was received before it.
    let web_lines = |t: &str| t.lines().filter(|l| l.contains(" web www/s1 ")).count();
    let before = web_lines(&std::fs::read_to_string(&file).unwrap());
    other
        .send_to(
            b"<139>Dec  3 00:00:00 other: local1 line",
            ("127.0.0.1", port),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(fe).await.as_deref(), Ok("s1"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let written = loop {
        let t = std::fs::read_to_string(&file).unwrap();
        if web_lines(&t) > before {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the last request was not logged: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !written.contains("local1 line"),
        "another facility was written: {written}"
    );
}

#[test]
fn log_line_fields_parse() {
    let line = "<134>Dec  3 16:50:01 haproxy[4242]: 127.0.0.1:50000 [03/Dec/2026:16:50:01.123] web www/s1 0/0/0/1/1 200 130 - - ---- 1/1/0/0/0 0/0 \"GET / HTTP/1.1\"";
    assert_eq!(
        httplog_fields(line),
        Some(("web".into(), "www/s1".into(), 200))
    );
    assert_eq!(httplog_fields("<134>garbage"), None);
    let body = "# TYPE x counter\nx{proxy=\"web\",code=\"2xx\"} 7\nx{proxy=\"api\"} 1\ny 3\n";
    assert_eq!(sample(body, "x", &[("proxy", "web")]), Some(7.0));
    assert_eq!(sample(body, "x", &[("proxy", "api")]), Some(1.0));
    assert_eq!(sample(body, "y", &[]), Some(3.0));
    assert_eq!(sample(body, "x", &[("proxy", "nope")]), None);
}
