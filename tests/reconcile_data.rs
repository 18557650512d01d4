//! Maps, ACLs and certificates converge through the runtime socket of a real
//! HAProxy 2.6 without reloads (docs/api.md, "What is applied how"), and the files on disk follow.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::{backend, haproxy};

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::{free_port, get_host, Backend};
use haproxy::{Haproxy, Lab};
use lb_agent::model::validate::{parse_document, ValidateContext};
use lb_agent::plan::data::pem_fingerprint;
use lb_agent::reconcile::{Candidate, HaproxyStatus, Reconciler};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn start(
    lab: &Lab,
) -> (
    watch::Sender<Option<Candidate>>,
    watch::Receiver<HaproxyStatus>,
    CancellationToken,
) {
    let settings = lab.reconciler_settings(Duration::from_millis(100), 1.0);
    let renderer = lab.renderer();
    let (status_tx, status) = watch::channel(HaproxyStatus::default());
    let (tx, rx) = watch::channel(None);
    let (_ttx, trx) = mpsc::channel(1);
    std::mem::forget(_ttx);
    let cancel = CancellationToken::new();
    tokio::spawn(Reconciler::new(settings, renderer, status_tx).run(rx, trx, cancel.clone()));
    (tx, status, cancel)
}

fn push(tx: &watch::Sender<Option<Candidate>>, doc: &Value) {
    let raw = serde_json::to_vec(doc).unwrap();
    let d = parse_document(
        &raw,
        &ValidateContext {
            group: "blue".into(),
        },
    )
    .unwrap();
    tx.send_replace(Some(Candidate {
        desired: Arc::new(d),
        raw: Some(raw.into()),
        from_cache: false,
    }));
}

async fn wait(
    status: &mut watch::Receiver<HaproxyStatus>,
    what: &str,
    cond: impl Fn(&HaproxyStatus) -> bool,
) -> HaproxyStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        {
            let st = status.borrow_and_update();
            if cond(&st) {
                return st.clone();
            }
        }
        if tokio::time::timeout_at(deadline, status.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}: {:#?}", *status.borrow());
        }
    }
}

/// Polls (bounded) until a request with `host` through `addr` gets `want` (status, body).
async fn wait_answer(addr: SocketAddr, host: &str, want: (u16, &str)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = get_host(addr, host).await;
        if let Ok((code, body)) = &last {
            if *code == want.0 && (want.1.is_empty() || body == want.1) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{host} via {addr}: wanted {want:?}, last {last:?}");
}

fn self_signed(dir: &std::path::Path, cn: &str) -> String {
    let (k, c) = (dir.join(format!("{cn}.key")), dir.join(format!("{cn}.crt")));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
        ])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::read_to_string(c).unwrap() + &std::fs::read_to_string(k).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn doc(
    rev: u64,
    vip: &str,
    web: SocketAddr,
    tls: SocketAddr,
    a: &Backend,
    b: &Backend,
    routes: Value,
    deny: Value,
    pem: &str,
) -> Value {
    json!({
        "schema": 1, "revision": rev, "group": "blue",
        "vips": [{"address": format!("{vip}/32")}],
        "frontends": [
            {"name": "web", "bind": [web.to_string()], "mode": "http", "default_pool": "www", "logic": ["route", "deny"]},
            {"name": "secure", "bind": [tls.to_string()], "mode": "http", "default_pool": "www", "tls": {"certificates": ["site"]}}
        ],
        "pools": [
            {"name": "www", "mode": "http", "servers": [{"name": "a", "address": "127.0.0.1", "port": a.addr.port(), "weight": 1}]},
            {"name": "api", "mode": "http", "servers": [{"name": "b", "address": "127.0.0.1", "port": b.addr.port(), "weight": 1}]}
        ],
        "logic": [
            {"name": "route", "template": "use_backend %[req.hdr(host),lower,map({{ maps.routes }},www)]"},
            {"name": "deny", "template": "http-request deny if { src -f {{ acls.deny }} }"}
        ],
        "maps": [{"name": "routes", "entries": routes}],
        "acls": [{"name": "deny", "entries": deny}],
        "certificates": [{"name": "site", "pem": pem}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_acls_and_certificates_change_at_runtime() {
    if !haproxy::available("maps_acls_and_certificates_change_at_runtime") {
        return;
    }
    let lab = Lab::new();
    let _hp = Haproxy::start(&lab);
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let vip = "127.0.0.21";
    let web: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let tls: SocketAddr = format!("{vip}:{}", free_port(vip)).parse().unwrap();
    let pem1 = self_signed(lab.dir.path(), "one.example");
    let pem2 = self_signed(lab.dir.path(), "two.example");
    let (tx, mut status, cancel) = start(&lab);

    push(
        &tx,
        &doc(
            1,
            vip,
            web,
            tls,
            &a,
            &b,
            json!({"api.example": "api"}),
            json!(["203.0.113.0/24"]),
            &pem1,
        ),
    );
    let st = wait(&mut status, "first", |s| {
        s.converged && s.revision == Some(1)
    })
    .await;
    assert_eq!(st.reloads, 1);
    wait_answer(web, "api.example", (200, "b")).await;
    wait_answer(web, "other.example", (200, "a")).await;

    // Map entries: changed, added. ACL: the test client's network denied. Certificate replaced.
    push(
        &tx,
        &doc(
            2,
            vip,
            web,
            tls,
            &a,
            &b,
            json!({"api.example": "www", "x.example": "api"}),
            json!(["203.0.113.0/24", "127.0.0.0/8"]),
            &pem2,
        ),
    );
    let st = wait(&mut status, "runtime data", |s| {
        s.converged && s.revision == Some(2)
    })
    .await;
    assert_eq!(
        st.reloads, 1,
        "maps, ACLs and certificate content need no reload: {st:#?}"
    );
    wait_answer(web, "x.example", (403, "")).await;
    let cert = Haproxy::cli(
        &lab.admin,
        &format!(
            "show ssl cert {}",
            lab.data_dir.join("certs/site.pem").display()
        ),
    );
    assert!(
        cert.contains(&format!(
            "SHA1 FingerPrint: {}",
            pem_fingerprint(&pem2).unwrap()
        )),
        "{cert}"
    );
    // The files on disk follow, so a reload keeps the change.
    let map = std::fs::read_to_string(lab.data_dir.join("maps/routes.map")).unwrap();
    assert_eq!(map, "api.example www\nx.example api\n");
    assert_eq!(
        std::fs::read_to_string(lab.data_dir.join("certs/site.pem"))
            .unwrap()
            .trim(),
        pem2.trim()
    );

    // ACL entry removed again; a large map change goes through one atomic, chunked replacement.
    let many: serde_json::Map<String, Value> = (0..2000)
        .map(|i| (format!("host{i:04}.example.org"), json!("api")))
        .collect();
    push(
        &tx,
        &doc(
            3,
            vip,
            web,
            tls,
            &a,
            &b,
            Value::Object(many),
            json!(["203.0.113.0/24"]),
            &pem2,
        ),
    );
    let st = wait(&mut status, "large map", |s| {
        s.converged && s.revision == Some(3)
    })
    .await;
    assert_eq!(st.reloads, 1, "{st:#?}");
    wait_answer(web, "host1999.example.org", (200, "b")).await;
    wait_answer(web, "api.example", (200, "a")).await;
    let shown = Haproxy::cli(
        &lab.admin,
        &format!(
            "show map {}",
            lab.data_dir.join("maps/routes.map").display()
        ),
    );
    assert_eq!(shown.lines().filter(|l| l.starts_with("0x")).count(), 2000);
    cancel.cancel();
}
