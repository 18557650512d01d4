//! Issue 14, finding 4: a health check that cannot get a descriptor fails
//! (fail closed); it never passes, panics or stops the checker, and checks
//! pass again as soon as descriptors are free.
//!
//! This binary holds a single test on purpose: it lowers its own
//! `RLIMIT_NOFILE` and uses every descriptor, which would break any test
//! running beside it in the same process.

use std::time::Duration;

use lb_agent::health::{Checker, HttpRequestSpec, Probe};

#[test]
fn checks_without_descriptors_fail_and_recover() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A tiny HTTP server on a thread: answers every connection with 200.
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in listener.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let checker = Checker::new().unwrap();
    let tcp = Probe::Tcp { addr };
    let http = Probe::Http {
        addr,
        request: HttpRequestSpec {
            path: "/".into(),
            host: None,
            expect_status: vec![],
        },
    };
    let limit = Duration::from_millis(500);
    for p in [&tcp, &http] {
        let r = rt.block_on(checker.check(p, limit));
        assert!(r.ok, "baseline {p:?}: {r:?}");
    }

    // Use up every descriptor under a low soft limit.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(Resource::RLIMIT_NOFILE, open + 32, hard).unwrap();
    let mut hogs = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hogs.push(f);
        assert!(hogs.len() < 10_000, "the limit did not take");
    }
    let results: Vec<_> = [&tcp, &http]
        .iter()
        .map(|p| rt.block_on(checker.check(p, limit)))
        .collect();
    drop(hogs);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    for (p, r) in [&tcp, &http].iter().zip(&results) {
        println!("{p:?} without descriptors: {r:?}");
        assert!(!r.ok, "a check without descriptors must fail: {r:?}");
        let e = r.error.as_deref().unwrap_or_default().to_lowercase();
        assert!(e.contains("too many open files"), "{e}");
    }
    for p in [&tcp, &http] {
        let r = rt.block_on(checker.check(p, limit));
        assert!(r.ok, "after the descriptors came back {p:?}: {r:?}");
    }
}
