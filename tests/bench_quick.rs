//! The benchmark harness runs end to end in `--quick` mode and prints its
//! table. Only the shape is checked: timings are never asserted (docs/performance.md).

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[test]
fn bench_quick_prints_every_figure() {
    if !Path::new("/usr/sbin/haproxy").exists() {
        eprintln!("!!! SKIPPED bench_quick_prints_every_figure: /usr/sbin/haproxy not found; install it with `apt-get install -y haproxy` (.ci/run does)");
        return;
    }
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lb-agent-bench"))
        .arg("--quick")
        .args(["--agent", env!("CARGO_BIN_EXE_lb-agent")])
        .output()
        .expect("running lb-agent-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n(took {:?})", started.elapsed());
    assert!(
        out.status.success(),
        "lb-agent-bench --quick failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("| figure | lb-agent | baseline in the same run |"),
        "no table header:\n{stdout}"
    );
    let mut figures = vec![
        "| plan a change on ",
        "| apply ",
        "| read back `show servers state` for ",
        "| burst of ",
        "| published change (long-poll API) ",
        "| resident memory at ",
        "| health gating of ",
        "| failed service → prefix gone from the ToR's kernel table",
    ];
    // The fleet figure (docs/fleet.md) needs etcd; without it its one row says n/a.
    let have_etcd = Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_etcd {
        figures.extend([
            "| fleet, bytes received per agent: ",
            "| fleet, change → applied by every agent: ",
            "| fleet, server CPU and RSS during the change: ",
            "| fleet, memory and initial load: ",
            "| whole agent CPU per one-server change at ",
        ]);
    } else {
        eprintln!("!!! fleet rows not checked: etcd not installed (apt-get install etcd-server)");
    }
    for figure in figures {
        let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with(figure)).collect();
        assert_eq!(
            rows.len(),
            1,
            "expected one row starting with {figure:?}:\n{stdout}"
        );
        // As root with test.sh's packages every figure can run, so lb-agent's
        // own column must hold a figure (a baseline may still be n/a, e.g.
        // when PyPI is unreachable).
        if nix::unistd::geteuid().is_root() {
            let ours = rows[0].split(" | ").nth(1).unwrap_or("");
            assert!(
                !ours.starts_with("n/a"),
                "{figure:?} was not measured: {ours}\nstderr:\n{stderr}"
            );
            // Both sides of the fleet and whole-agent figures run on this
            // machine (etcd, the bench's own long-poll server, a file).
            let other = rows[0].split(" | ").nth(2).unwrap_or("");
            assert!(
                !(figure.starts_with("| fleet") || figure.starts_with("| whole agent"))
                    || !other.starts_with("n/a"),
                "{figure:?}: the HTTP side was not measured: {other}\nstderr:\n{stderr}"
            );
        }
    }
    for info in [
        "- date: ",
        "- commit: ",
        "- CPU: ",
        "- kernel: ",
        "- HAProxy: ",
    ] {
        assert!(stdout.contains(info), "no {info:?} line:\n{stdout}");
    }
}
