//! The runtime-socket client against a real HAProxy 2.6: strict replies,
//! 2.6's framing traps, and a measured throughput figure (printed, not asserted).

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::haproxy;

use std::time::{Duration, Instant};

use haproxy::{Haproxy, Lab};
use lb_agent::haproxy::runtime::{RuntimeClient, RuntimeError};
use lb_agent::model::ServerState;
use lb_agent::plan::Command;

fn config(lab: &Lab, servers: usize) -> String {
    let mut s = format!(
        "global\n    stats socket {} mode 600 level admin\n\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\nbackend be\n    balance roundrobin\n",
        lab.admin.display()
    );
    for i in 0..servers {
        s.push_str(&format!(
            "    server s{i} 127.0.0.1:{} weight 10\n",
            20000 + i
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_framed_and_checked_on_real_haproxy() {
    if !haproxy::available("replies_are_framed_and_checked_on_real_haproxy") {
        return;
    }
    let lab = Lab::new();
    std::fs::write(&lab.config, config(&lab, 2)).unwrap();
    let _hp = Haproxy::start(&lab);
    let client = RuntimeClient::new(&lab.admin, Duration::from_secs(5));
    let mut s = client.connect().await.unwrap();
    // add/del server replies lack the blank line in 2.6; prompt framing keeps them apart.
    let cmds = vec![
        Command::AddServer {
            backend: "be".into(),
            server: "dyn".into(),
            addr: "127.0.0.1".parse().unwrap(),
            port: 1,
            weight: 1,
            check: None,
        },
        Command::SetState {
            backend: "be".into(),
            server: "dyn".into(),
            state: ServerState::Maint,
        },
        Command::DelServer {
            backend: "be".into(),
            server: "dyn".into(),
        },
        Command::SetWeight {
            backend: "be".into(),
            server: "nosuch".into(),
            weight: 1,
        },
        Command::SetAddr {
            backend: "be".into(),
            server: "s0".into(),
            addr: "127.0.0.2".parse().unwrap(),
            port: 30000,
        },
    ];
    let r = s.apply(&cmds).await.unwrap();
    assert_eq!(r.ok, 4, "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert!(r.failed[0].contains("No such server."), "{r:?}");
    // Replies stay in step after a failure.
    assert_eq!(
        s.command("show servers state nosuch").await.unwrap(),
        "Can't find backend."
    );
    let st = s.servers_state().await.unwrap();
    let s0 = st.backends["be"]
        .servers
        .iter()
        .find(|x| x.name == "s0")
        .unwrap();
    assert_eq!(
        (s0.addr.to_string(), s0.port),
        ("127.0.0.2".to_string(), 30000)
    );
    assert_eq!(
        st.backends["be"].servers.len(),
        2,
        "the dynamic server was deleted"
    );
    // Dangerous lines never leave the process.
    assert!(matches!(
        s.command("show info;").await,
        Err(RuntimeError::BadLine(_))
    ));
    assert!(matches!(s.command("").await, Err(RuntimeError::BadLine(_))));
    assert!(s.command("show version").await.unwrap().starts_with("2.6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_of_server_changes_is_measured() {
    if !haproxy::available("throughput_of_server_changes_is_measured") {
        return;
    }
    let lab = Lab::new();
    std::fs::write(&lab.config, config(&lab, 1000)).unwrap();
    let _hp = Haproxy::start(&lab);
    let client = RuntimeClient::new(&lab.admin, Duration::from_secs(5));
    let mut s = client.connect().await.unwrap();
    // 2,000 changes: a weight and a state for each of 1,000 servers.
    let mut cmds = Vec::new();
    for i in 0..1000 {
        cmds.push(Command::SetWeight {
            backend: "be".into(),
            server: format!("s{i}"),
            weight: 20 + (i % 100) as u16,
        });
        cmds.push(Command::SetState {
            backend: "be".into(),
            server: format!("s{i}"),
            state: if i % 2 == 0 {
                ServerState::Drain
            } else {
                ServerState::Ready
            },
        });
    }
    let t = Instant::now();
    let r = s.apply(&cmds).await.unwrap();
    let apply = t.elapsed();
    assert_eq!((r.ok, r.failed.len()), (2000, 0), "{:?}", r.failed.first());
    let t = Instant::now();
    let st = s.servers_state().await.unwrap();
    let readback = t.elapsed();
    let be = &st.backends["be"];
    for (i, srv) in be.servers.iter().enumerate() {
        assert_eq!(srv.uweight, 20 + (i % 100) as u16);
        assert_eq!(srv.in_drain(), i % 2 == 0);
    }
    println!(
        "runtime socket: 2000 server changes applied in {:.1} ms ({:.0} changes/s) on one connection, read back 1000 servers in {:.1} ms, 0 reloads",
        apply.as_secs_f64() * 1e3,
        2000.0 / apply.as_secs_f64(),
        readback.as_secs_f64() * 1e3
    );
}

/// A command the client refuses (a `;`, a line over HAProxy's 16 KiB buffer,
/// a payload entry too large) is reported and skipped; the commands around it
/// still apply on the same session, and values with spaces round-trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_data_command_does_not_block_the_others() {
    if !haproxy::available("a_refused_data_command_does_not_block_the_others") {
        return;
    }
    let lab = Lab::new();
    let map = lab.dir.path().join("m.map");
    std::fs::write(&map, "a.example www\n").unwrap();
    let mut cfg = config(&lab, 2);
    cfg.push_str(&format!(
        "    http-request set-header X-Pool %[req.hdr(host),lower,map({},none)]\n",
        map.display()
    ));
    std::fs::write(&lab.config, cfg).unwrap();
    let _hp = Haproxy::start(&lab);
    let client = RuntimeClient::new(&lab.admin, Duration::from_secs(5));
    let mut s = client.connect().await.unwrap();
    let file = map.display().to_string();
    let add = |k: &str, v: &str| Command::AddMap {
        file: file.clone(),
        key: k.into(),
        value: v.into(),
    };
    let cmds = vec![
        Command::SetWeight {
            backend: "be".into(),
            server: "s0".into(),
            weight: 7,
        },
        add("semi.example", "www;show info"),
        add("big.example", &"v".repeat(20 * 1024)),
        Command::ReplaceMap {
            file: file.clone(),
            entries: vec![("huge.example".into(), "v".repeat(16 * 1024))],
        },
        Command::SetState {
            backend: "be".into(),
            server: "s1".into(),
            state: ServerState::Drain,
        },
        Command::SetMap {
            file: file.clone(),
            key: "a.example".into(),
            value: "a b  c".into(),
        },
        add("c.example", "text/html charset=utf-8"),
    ];
    let r = s
        .apply(&cmds)
        .await
        .expect("the session survives refused commands");
    assert_eq!(r.ok, 4, "{r:#?}");
    assert_eq!(r.failed.len(), 3, "{r:#?}");
    assert!(
        r.failed.iter().all(|f| f.starts_with("not sent:")),
        "{r:#?}"
    );
    let st = s.servers_state().await.unwrap();
    let be = &st.backends["be"];
    assert_eq!(be.servers[0].uweight, 7);
    assert!(be.servers[1].in_drain());
    let shown = s.command(&format!("show map {file}")).await.unwrap();
    let entries = lb_agent::haproxy::parse::map_entries(&shown).unwrap();
    assert_eq!(
        entries,
        vec![
            ("a.example".to_string(), "a b  c".to_string()),
            (
                "c.example".to_string(),
                "text/html charset=utf-8".to_string()
            ),
        ],
        "{shown}"
    );
    assert!(s.command("show version").await.unwrap().starts_with("2.6"));
}
