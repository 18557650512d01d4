//! Pool logic and typed pool options against a real HAProxy 2.6 (issue 10):
//! a response header set by a pool's snippet reaches a client through the
//! frontend, and a backup server takes traffic only once the primaries are
//! down (real failures: their listeners closed, HAProxy's checks see it).

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::{backend, haproxy};

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backend::{free_port, get, get_raw, Backend};
use haproxy::{Haproxy, Lab};
use lb_agent::model::validate::{parse_document, ValidateContext};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_snippet_header_and_backup_server() {
    if !haproxy::available("pool_snippet_header_and_backup_server") {
        return;
    }
    let lab = Lab::new();
    let _hp = Haproxy::start(&lab);
    let p1 = Backend::start("p1").await;
    let p2 = Backend::start("p2").await;
    let bk = Backend::start("bk").await;
    let vip = "127.0.0.23";
    let fe: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let server = |name: &str, b: &Backend, backup: bool| json!({"name": name, "address": b.addr.ip().to_string(), "port": b.addr.port(), "backup": backup});
    let doc = json!({
        "schema": 1, "revision": 1, "group": "blue",
        "vips": [{"address": format!("{vip}/32")}],
        "frontends": [{"name": "web", "bind": [fe.to_string()], "mode": "http", "default_pool": "web"}],
        "pools": [{
            "name": "web", "mode": "http", "logic": ["tag"],
            "timeouts": {"connect": "1s", "server": "5s"}, "retries": 1, "redispatch": true,
            "http_reuse": "safe", "slowstart": "1s",
            "check": {"type": "tcp", "interval": "100ms", "rise": 1, "fall": 1},
            "servers": [server("p1", &p1, false), server("p2", &p2, false), server("bk", &bk, true)]
        }],
        "logic": [{"name": "tag", "template": "http-response set-header X-Pool {{ pool.name }}-{{ node.az }}-{{ pools | length }}"}]
    });
    let d = parse_document(
        &serde_json::to_vec(&doc).unwrap(),
        &ValidateContext {
            group: "blue".into(),
        },
    )
    .unwrap();
    let rendered = lab.renderer().render(&d, &lab.data_dir).unwrap();
    assert!(
        rendered.config.contains(" backup slowstart 1000ms"),
        "{}",
        rendered.config
    );
    let inst = lab.installer(Duration::from_secs(15), Duration::from_secs(5));
    inst.install(&rendered).unwrap();
    inst.reload_and_confirm().await.unwrap();

    // Primaries up: every request served by p1/p2, with the pool's header.
    let start = Instant::now();
    let mut served = 0;
    while served < 40 && start.elapsed() < Duration::from_secs(10) {
        match get_raw(fe).await {
            Ok(r) if r.starts_with("HTTP/1.1 200") => {
                assert!(
                    r.lines()
                        .any(|l| l.eq_ignore_ascii_case("x-pool: web-az1-1")),
                    "the pool snippet's header is missing: {r}"
                );
                served += 1;
            }
            // Right after the reload the slowstart ramp may refuse nothing
            // but a connect can race: bounded retry.
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(served, 40, "not served within 10 s");
    let primaries = p1.hits.load(Ordering::Relaxed) + p2.hits.load(Ordering::Relaxed);
    println!(
        "primaries up: p1+p2 served {primaries}, backup {}",
        bk.hits.load(Ordering::Relaxed)
    );
    assert_eq!(
        bk.hits.load(Ordering::Relaxed),
        0,
        "the backup took traffic while primaries were up"
    );
    assert!(primaries >= 40);

    // Primaries down (listeners closed): the backup takes over once
    // HAProxy's checks mark them down.
    drop(p1);
    drop(p2);
    let down = Instant::now();
    loop {
        if let Ok(b) = get(fe).await {
            if b == "bk" {
                break;
            }
        }
        assert!(
            down.elapsed() < Duration::from_secs(10),
            "backup never took over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "backup took over {:?} after the primaries closed",
        down.elapsed()
    );
    for _ in 0..20 {
        assert_eq!(get(fe).await.as_deref(), Ok("bk"));
    }
    let stat = Haproxy::cli(&lab.admin, "show servers state web");
    println!("{stat}");
}
