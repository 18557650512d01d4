//! The planner is deterministic across processes, not only within one.
//!
//! `plan::tests::plan_is_deterministic` compares two plans computed in one
//! process, where a hash map's iteration order is the same both times. Here
//! the same test binary runs twice as a child (each with its own random
//! hash seeds), plans every ordered pair of valid fixture documents (from
//! a simulated HAProxy running the first to the second, both slot
//! policies) and prints the plans; the parent requires both outputs equal,
//! byte for byte, and non-trivial.

use std::path::PathBuf;
use std::process::Command;

use lb_agent::config::SlotPolicy;
use lb_agent::model::validate::{parse_document, ValidateContext};
use lb_agent::model::DesiredState;
use lb_agent::plan::sim::SimHaproxy;
use lb_agent::plan::{plan, PlanOptions, Structure};

const CHILD_ENV: &str = "LB_AGENT_DETERMINISM_CHILD";
const BEGIN: &str = "=== plans begin ===";
const END: &str = "=== plans end ===";

fn fixtures() -> Vec<(String, DesiredState)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir("fixtures/api/valid")
        .expect("fixtures/api/valid")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let ctx = ValidateContext {
        group: "blue".into(),
    };
    paths
        .iter()
        .map(|p| {
            let body = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let d = parse_document(&body, &ctx).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_stem().unwrap().to_string_lossy().into_owned(), d)
        })
        .collect()
}

/// Every plan, one block per (from, to, policy), as text.
fn all_plans() -> String {
    let docs = fixtures();
    assert!(docs.len() >= 3, "too few valid fixtures: {}", docs.len());
    let opts = PlanOptions {
        max_runtime_ops: 10_000,
    };
    let mut out = String::new();
    for policy in [SlotPolicy::Exact, SlotPolicy::Pow2] {
        for (from, a) in &docs {
            let sim = SimHaproxy::load(a, policy);
            let loaded = Structure::of(a, "g");
            for (to, b) in &docs {
                let p = plan(
                    b,
                    &Structure::of(b, "g"),
                    Some(&loaded),
                    &sim.observe(),
                    opts,
                );
                out.push_str(&format!(
                    "{from} -> {to} ({policy:?}): commands={} reload={} | {p:?}\n",
                    p.commands.len(),
                    p.reload.len()
                ));
            }
        }
    }
    out
}

#[test]
fn plans_are_identical_in_two_processes() {
    if std::env::var_os(CHILD_ENV).is_some() {
        println!("{BEGIN}\n{}{END}", all_plans());
        return;
    }
    let exe = std::env::current_exe().expect("current test binary");
    let run = || {
        let out = Command::new(&exe)
            .args([
                "--exact",
                "plans_are_identical_in_two_processes",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(CHILD_ENV, "1")
            .output()
            .expect("running the test binary as a child");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "child failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let start = text.find(BEGIN).expect("child printed no plans") + BEGIN.len();
        let end = text.find(END).expect("child output truncated");
        text[start..end].trim_start_matches('\n').to_string()
    };
    let (first, second) = (run(), run());
    let blocks = first.lines().count();
    assert!(blocks >= 18, "too few plans compared: {blocks}");
    let busy = first
        .lines()
        .filter(|l| !l.contains(": commands=0 reload=0 |"))
        .count();
    assert!(
        busy > 0,
        "every plan is empty; the comparison would prove nothing:\n{first}"
    );
    for (n, (a, b)) in first.lines().zip(second.lines()).enumerate() {
        assert_eq!(a, b, "plan {n} differs between two processes");
    }
    assert_eq!(first, second, "the two processes printed different plans");
    println!(
        "{blocks} plans ({busy} with commands or a reload), identical in two processes ({} bytes each)",
        first.len()
    );
}
