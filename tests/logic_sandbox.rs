//! The business-logic sandbox end to end (issue 14, findings 1 and 2):
//!
//! - a snippet that opens `global` and loads Lua (smuggled in as a map
//!   entry) is refused at validation with its JSON path, and the renderer
//!   refuses it too, so the real `haproxy -c` never runs it: the marker file
//!   its `os.execute` would create never appears (while a hand-written
//!   config with the same Lua does create it, proving `-c` runs Lua);
//! - hostile templates (recursive macros, a huge range, endless nested
//!   loops) in a document served to the real `lb-agent run` are rejected
//!   within a bounded time, the status socket keeps answering, a corrected
//!   document is accepted, and SIGTERM stops the agent.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::{agent, haproxy};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent::{write_lab_toml, Agent};
use haproxy::{Lab, HAPROXY};
use lb_agent::haproxy::reload::{Installer, ReloadError};
use lb_agent::model::validate::{parse_document, ValidateContext};
use serde_json::{json, Value};

fn ctx() -> ValidateContext {
    ValidateContext {
        group: "blue".into(),
    }
}

fn installer(lab: &Lab) -> Installer {
    lab.installer(Duration::from_secs(10), Duration::from_secs(2))
}

/// The hostile fixture with its marker path filled in.
fn lua_document(marker: &Path) -> Value {
    let text = std::fs::read_to_string("fixtures/hostile/logic-opens-global-lua.json").unwrap();
    serde_json::from_str(&text.replace("@MARKER@", &marker.display().to_string())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_in_a_snippet_never_runs_in_haproxy_check() {
    if !haproxy::available("lua_in_a_snippet_never_runs_in_haproxy_check") {
        return;
    }
    let lab = Lab::new();
    let marker = lab.dir.path().join("lua-ran");

    // Control: this HAProxy does run Lua while checking a config (`-c`).
    let control_marker = lab.dir.path().join("control-lua-ran");
    let lua = lab.dir.path().join("control.lua");
    std::fs::write(
        &lua,
        format!("os.execute(\"touch {}\")\n", control_marker.display()),
    )
    .unwrap();
    let cfg = lab.dir.path().join("control.cfg");
    std::fs::write(&cfg, format!("global\n    lua-load {}\n", lua.display())).unwrap();
    let out = Command::new(HAPROXY)
        .args(["-c", "-f"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        control_marker.exists(),
        "haproxy -c did not run Lua here, so this test would prove nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 1. Validation refuses the document, naming the JSON path and the line.
    let doc = lua_document(&marker);
    let errs = parse_document(&serde_json::to_vec(&doc).unwrap(), &ctx()).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, "logic[0].template");
    assert!(
        errs.0[0]
            .message
            .starts_with("rendered for frontends[0] (web): line 2 \"global\": \"global\" opens a new configuration section"),
        "{errs}"
    );

    // 2. Past validation (a caller that skips it), the renderer refuses, so
    //    the installer never runs `haproxy -c` on the candidate.
    let mut benign = doc.clone();
    benign["logic"][0]["template"] = json!("http-request del-header X-Internal");
    let mut d = parse_document(&serde_json::to_vec(&benign).unwrap(), &ctx()).unwrap();
    let renderer = lab.renderer();
    let inst = installer(&lab);
    inst.validate(|dir| renderer.render(&d, dir).map_err(|e| e.to_string()))
        .await
        .expect("the benign twin passes haproxy -c");
    let hostile = doc["logic"][0]["template"].as_str().unwrap().to_string();
    d.logic.values_mut().next().unwrap().template = hostile;
    let err = inst
        .validate(|dir| renderer.render(&d, dir).map_err(|e| e.to_string()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ReloadError::Invalid(m) if m.contains("opens a new configuration section")),
        "{err}"
    );
    assert!(
        !marker.exists(),
        "the document's Lua ran as root during haproxy -c"
    );
    // Nothing was installed either.
    assert!(!lab.config.exists());
}

/// Runs the CLI; returns (exit code, stdout, how long it took).
fn cli(args: &[&str]) -> (i32, String, Duration) {
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        t.elapsed(),
    )
}

fn document(revision: u64, template: &str) -> Value {
    json!({
        "schema": 1, "revision": revision, "group": "blue",
        "vips": [{"address": "127.0.0.41/32"}],
        "frontends": [{"name": "web", "bind": ["127.0.0.41:18441"], "mode": "http",
                       "default_pool": "www", "logic": ["l"]}],
        "pools": [{"name": "www", "mode": "http",
                   "servers": [{"name": "a", "address": "127.0.0.1", "port": 1}]}],
        "logic": [{"name": "l", "template": template}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_templates_are_rejected_and_the_agent_stays_responsive() {
    if !haproxy::available("hostile_templates_are_rejected_and_the_agent_stays_responsive") {
        return;
    }
    let lab = Lab::new();
    let desired = lab.dir.path().join("desired.json");
    let cfg = write_lab_toml(&lab, &format!("file://{}", desired.display()));
    let sock = lab.dir.path().join("status.sock");
    let sock = sock.to_str().unwrap().to_string();
    let nested = format!(
        "{{% set l = [0,1,2,3,4,5,6,7,8,9] %}}{}x{}",
        (0..9)
            .map(|i| format!("{{% for v{i} in l %}}"))
            .collect::<String>(),
        "{% endfor %}".repeat(9)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "recursive macro (tera syntax, as in the issue)",
            "{% macro f(n) %}{{ self::f(n=n+1) }}{% endmacro f %}{{ self::f(n=0) }}".into(),
            "template does not parse",
        ),
        (
            "recursive macro",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}".into(),
            "recursion deeper than",
        ),
        (
            "huge range",
            "{% for i in range(end=3000000000) %}x{% endfor %}".into(),
            "rendering failed",
        ),
        ("endless nested loops", nested, "exceeded its fuel"),
        (
            "get_env",
            "http-response set-header X-T {{ get_env(name=\"HOME\") }}".into(),
            "unknown function",
        ),
    ];
    std::fs::write(&desired, document(1, &cases[0].1).to_string()).unwrap();
    let mut agent = Agent::start(&cfg, &[]);
    let mut slowest_status = Duration::ZERO;
    for (i, (what, template, want)) in cases.iter().enumerate() {
        let written = Instant::now();
        std::fs::write(&desired, document(i as u64 + 1, template).to_string()).unwrap();
        let deadline = written + Duration::from_secs(15);
        loop {
            let (code, out, took) = cli(&["status", "--json", "--socket", &sock]);
            slowest_status = slowest_status.max(took);
            if code == 0 {
                let v: Value = serde_json::from_str(&out).unwrap();
                let err = v["source"]["error"].as_str().unwrap_or_default();
                if err.contains("logic[0].template") && err.contains(want) {
                    println!(
                        "{what}: rejected {:.0} ms after the file changed: {err}",
                        written.elapsed().as_secs_f64() * 1e3
                    );
                    break;
                }
            }
            assert!(
                agent.running(),
                "the agent died on the {what}:\n{}",
                agent.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "the {what} was not rejected within 15 s (last status: {out}):\n{}",
                agent.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "slowest status answer while hostile documents were served: {:.0} ms",
        slowest_status.as_secs_f64() * 1e3
    );
    // A corrected document is accepted.
    std::fs::write(
        &desired,
        document(50, "http-request set-header X-LB {{ node.name }}").to_string(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, out, _) = cli(&["status", "--json", "--socket", &sock]);
        if code == 0 {
            let v: Value = serde_json::from_str(&out).unwrap();
            if v["source"]["state"] == json!("ok") && v["source"]["error"].is_null() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the corrected document was not accepted: {out}\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The reconciler rendered it (HAProxy is not running: the file is written for its start).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&lab.config)
        .unwrap_or_default()
        .contains("http-request set-header X-LB lb-test")
    {
        assert!(
            Instant::now() < deadline,
            "haproxy.cfg was never written:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
}
