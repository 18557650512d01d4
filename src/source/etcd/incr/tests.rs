//! Incremental == full, and what each path costs.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::model::validate::{parse_document, ValidateContext};
use crate::source::etcd::store::{Change, Event};

const MAX: usize = 64 << 20;

fn parser() -> Box<Parser> {
    let ctx = ValidateContext {
        group: "blue".into(),
    };
    Box::new(move |b: &[u8]| parse_document(b, &ctx))
}

fn kv(k: &str, v: String) -> (String, Bytes) {
    (k.to_string(), Bytes::from(v))
}

fn server(pool: usize, j: usize, port: i64, weight: i64) -> String {
    format!(
        r#"{{"name":"s{j}","address":"10.{}.{}.{}","port":{port},"weight":{weight}}}"#,
        pool / 250,
        pool % 250,
        j % 250 + 1
    )
}

/// `pools` pools of `servers` servers, one frontend per 10 pools.
fn fleet(pools: usize, servers: usize) -> Vec<(String, Bytes)> {
    let mut out = vec![
        kv("group", r#"{"schema":1,"group":"blue"}"#.into()),
        kv("vips/192.0.2.0_24", r#"{"address":"192.0.2.0/24"}"#.into()),
    ];
    for i in 0..pools {
        out.push(kv(
            &format!("pools/p{i}"),
            format!(
                r#"{{"name":"p{i}","mode":"http","check":{{"type":"http","path":"/healthz"}}}}"#
            ),
        ));
        for j in 0..servers {
            out.push(kv(&format!("servers/p{i}/s{j}"), server(i, j, 8080, 1)));
        }
        if i % 10 == 0 {
            out.push(kv(
                &format!("frontends/f{i}"),
                format!(
                    r#"{{"name":"f{i}","mode":"http","bind":["192.0.2.{}:80"],"default_pool":"p{i}"}}"#,
                    i / 10 % 250 + 1
                ),
            ));
        }
    }
    out
}

fn store_of(kvs: Vec<(String, Bytes)>) -> Store {
    let mut s = Store::new(MAX);
    s.reset(10, kvs);
    s
}

fn step(s: &mut Store, revision: u64, changes: Vec<Change>) {
    let events: Vec<Event> = changes
        .into_iter()
        .map(|change| Event { revision, change })
        .collect();
    s.apply(&events);
}

fn put(key: &str, value: String) -> Change {
    Change::Put {
        key: key.into(),
        value: Bytes::from(value),
    }
}

#[test]
fn a_server_change_is_patched_in_place_and_equals_the_full_path() {
    let mut s = store_of(fleet(30, 5));
    let mut inc = Incremental::new(parser(), MAX, "/lb/");
    assert_eq!(
        {
            let c = s.take_changes();
            inc.update(&s, &c)
        },
        Ok(Path::Full)
    );
    let cases: Vec<(Vec<Change>, Result<Path, ()>)> = vec![
        // weight, new server, removed server
        (
            vec![put("servers/p3/s1", server(3, 1, 8080, 7))],
            Ok(Path::Incremental),
        ),
        (
            vec![put("servers/p3/s9", server(3, 9, 8081, 1))],
            Ok(Path::Incremental),
        ),
        (
            vec![Change::Delete {
                key: "servers/p4/s0".into(),
            }],
            Ok(Path::Incremental),
        ),
        // two pools in one transaction
        (
            vec![
                put("servers/p5/s0", server(5, 0, 9000, 2)),
                put("servers/p6/s0", server(6, 0, 9000, 2)),
            ],
            Ok(Path::Incremental),
        ),
        // invalid port: the full path rejects it, naming the key
        (vec![put("servers/p3/s1", server(3, 1, 0, 1))], Err(())),
        // fixed again: full path (the state did not mirror the store)
        (
            vec![put("servers/p3/s1", server(3, 1, 8080, 1))],
            Ok(Path::Full),
        ),
        // endpoint clash inside the pool
        (vec![put("servers/p3/s2", server(3, 1, 8080, 1))], Err(())),
        (
            vec![put("servers/p3/s2", server(3, 2, 8080, 1))],
            Ok(Path::Full),
        ),
        // unknown field in a server: full path (warnings by index)
        (
            vec![put(
                "servers/p3/s2",
                r#"{"name":"s2","address":"10.0.3.3","port":8080,"wieght":3}"#.into(),
            )],
            Ok(Path::Full),
        ),
        // a pool's own key: full path
        (
            vec![put("pools/p7", r#"{"name":"p7","mode":"tcp"}"#.into())],
            Ok(Path::Full),
        ),
        // server of a missing pool: assembly error
        (vec![put("servers/nope/s0", server(0, 0, 1, 1))], Err(())),
    ];
    for (i, (changes, want)) in cases.into_iter().enumerate() {
        step(&mut s, 11 + i as u64, changes);
        let got = {
            let c = s.take_changes();
            inc.update(&s, &c)
        };
        let reference = full(&s, &*parser(), MAX, "/lb/");
        match (&got, &want) {
            (Ok(p), Ok(w)) => assert_eq!(p, w, "case {i}"),
            (Err(e), Err(())) => {
                assert_eq!(Err(e.clone()), reference.clone().map(|_| ()), "case {i}");
                assert!(e.contains("key /lb/"), "case {i}: {e}");
            }
            _ => panic!("case {i}: got {got:?}, wanted {want:?}"),
        }
        if let Ok(r) = &reference {
            assert_eq!(inc.state(), Some(r), "case {i}");
        }
    }
}

/// One random change of the small key space the property test uses.
fn arb_change() -> impl Strategy<Value = Change> {
    let pool = 0..4usize;
    let name = 0..4usize;
    prop_oneof![
        6 => (pool.clone(), name.clone(), prop_oneof![Just(0i64), 8080..8083i64, Just(70000)], 0..3i64, any::<bool>())
            .prop_map(|(p, j, port, w, odd)| {
                let v = if odd {
                    format!(r#"{{"name":"s{j}","address":"10.0.0.{}","port":{port},"weight":{w},"x":1}}"#, j % 2)
                } else {
                    format!(r#"{{"name":"s{j}","address":"10.0.0.{}","port":{port},"weight":{w}}}"#, j % 2)
                };
                put(&format!("servers/p{p}/s{j}"), v)
            }),
        3 => (pool.clone(), name.clone()).prop_map(|(p, j)| Change::Delete { key: format!("servers/p{p}/s{j}") }),
        1 => (pool.clone(), name).prop_map(|(p, j)| put(&format!("servers/p{p}/s{j}"), "{\"name\":".into())),
        1 => (pool.clone(), prop_oneof![Just("http"), Just("tcp"), Just("udp")], any::<bool>())
            .prop_map(|(p, m, az)| {
                let routing = if az { r#","routing":"az""# } else { "" };
                put(&format!("pools/p{p}"), format!(r#"{{"name":"p{p}","mode":"{m}"{routing}}}"#))
            }),
        1 => pool.clone().prop_map(|p| Change::Delete { key: format!("pools/p{p}") }),
        1 => (pool.clone(), 0..3usize, prop_oneof![Just("http"), Just("tcp")]).prop_map(|(p, f, m)| {
            put(
                &format!("frontends/f{f}"),
                format!(r#"{{"name":"f{f}","mode":"{m}","bind":["192.0.2.{}:80"],"default_pool":"p{p}"}}"#, f + 1),
            )
        }),
        1 => (0..3usize).prop_map(|f| Change::Delete { key: format!("frontends/f{f}") }),
        1 => any::<bool>().prop_map(|wide| {
            let a = if wide { "192.0.2.0/24" } else { "192.0.2.1/32" };
            put(&format!("vips/{}", layout::vip_id(a)), format!(r#"{{"address":"{a}"}}"#))
        }),
        1 => Just(Change::Delete { key: "vips/192.0.2.0_24".into() }),
        1 => Just(put("group", r#"{"schema":1,"group":"blue","availability_zones":{"zones":["a"]}}"#.into())),
        1 => Just(put("group", r#"{"schema":1,"group":"blue"}"#.into())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// After every revision the incremental result (state or rejection)
    /// is the full path's on the assembled document.
    #[test]
    fn incremental_equals_full(
        start in proptest::collection::vec(arb_change(), 0..12),
        revisions in proptest::collection::vec(proptest::collection::vec(arb_change(), 1..4), 1..25),
    ) {
        let mut s = store_of(fleet(4, 3));
        step(&mut s, 11, start);
        let mut inc = Incremental::new(parser(), MAX, "/lb/");
        let mut last_ok = None;
        for (i, changes) in revisions.into_iter().enumerate() {
            let changes_now = s.take_changes();
            let got = inc.update(&s, &changes_now);
            let reference = full(&s, &*parser(), MAX, "/lb/");
            match (&got, &reference) {
                (Ok(_), Ok(r)) => {
                    prop_assert_eq!(inc.state(), Some(r), "revision {}", s.revision());
                    last_ok = Some(r.clone());
                }
                (Err(e), Err(r)) => {
                    prop_assert_eq!(e, r);
                    // The previous state keeps serving.
                    prop_assert_eq!(inc.state(), last_ok.as_ref());
                }
                _ => prop_assert!(false, "revision {}: incremental {:?}, full {:?}", s.revision(), got, reference.map(|_| ())),
            }
            step(&mut s, 12 + i as u64, changes);
        }
    }
}

/// Thread CPU time now (CLOCK_THREAD_CPUTIME_ID), in microseconds.
fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// Prints the agent CPU per one-server change, incremental vs full, in
/// the same run. `LB_INCR_POOLS` sets the number of pools of 20 servers
/// (default 100; 1000 is the issue's 20k-server case).
#[test]
fn one_server_change_cost_incremental_vs_full() {
    let pools: usize = std::env::var("LB_INCR_POOLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut s = store_of(fleet(pools, 20));
    let mut inc = Incremental::new(parser(), MAX, "/lb/");
    assert_eq!(
        {
            let c = s.take_changes();
            inc.update(&s, &c)
        },
        Ok(Path::Full)
    );
    const CHANGES: u64 = 20;
    let (mut inc_cpu, mut inc_wall, mut full_cpu, mut full_wall) = (0.0, 0.0, 0.0, 0.0);
    for n in 0..CHANGES {
        let p = (n as usize * 7) % pools;
        step(
            &mut s,
            11 + n,
            vec![put(
                &format!("servers/p{p}/s3"),
                server(p, 3, 8080, 2 + n as i64 % 100),
            )],
        );
        let changes = s.take_changes();
        let (c0, w0) = (thread_cpu_us(), crate::clock::now());
        assert_eq!(inc.update(&s, &changes), Ok(Path::Incremental));
        inc_cpu += thread_cpu_us() - c0;
        inc_wall += w0.elapsed().as_secs_f64() * 1e6;
        let (c0, w0) = (thread_cpu_us(), crate::clock::now());
        let reference = full(&s, &*parser(), MAX, "/lb/").expect("valid");
        full_cpu += thread_cpu_us() - c0;
        full_wall += w0.elapsed().as_secs_f64() * 1e6;
        assert_eq!(inc.state(), Some(&reference));
    }
    let n = CHANGES as f64;
    println!(
        "one-server change at {pools} pools x 20 servers ({} keys, {} bytes), {CHANGES} changes, {} build: \
         incremental {:.1} us CPU ({:.1} us wall), full {:.1} us CPU ({:.1} us wall) per change",
        s.len(),
        s.bytes(),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        inc_cpu / n,
        inc_wall / n,
        full_cpu / n,
        full_wall / n
    );
}
