//! Golden renders of the fixture documents, and `haproxy -c` on each of them.
//!
//! `UPDATE_GOLDEN=1 cargo test --test render_golden` rewrites the golden files;
//! review the diff like any other code change.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lb_agent::haproxy::render::{RenderSettings, Renderer};
use lb_agent::model::validate::{parse_document, ValidateContext};

fn settings() -> RenderSettings {
    RenderSettings {
        runtime_socket: "/run/haproxy/admin.sock".into(),
        state_file: "/var/lib/lb-agent/haproxy-server-state".into(),
        hard_stop_after: Duration::from_secs(30),
        data_dir: "/etc/haproxy/lb-agent".into(),
        slot_policy_pow2: true,
        node_name: "lb1".into(),
        node_group: "blue".into(),
        node_az: Some("az1".into()),
        global: Default::default(),
    }
}

/// Runs `haproxy -c` on a rendered config (with its data files) in a
/// temporary directory; `None` when HAProxy is not installed.
fn haproxy_check(out: &lb_agent::haproxy::render::Rendered, dir: &Path) -> Option<(bool, String)> {
    let haproxy = Path::new("/usr/sbin/haproxy");
    if !haproxy.exists() {
        return None;
    }
    for (rel, body) in &out.files {
        let f = dir.join(rel);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, body).unwrap();
    }
    let cfg = dir.join("haproxy.cfg");
    fs::write(&cfg, &out.config).unwrap();
    let o = Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    Some((
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    ))
}

fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir("fixtures/api/valid")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn golden_renders() {
    let r = Renderer::new(None, settings()).unwrap();
    for p in fixtures() {
        let d = parse_blue(&fs::read(&p).unwrap());
        let out = r.render(&d, Path::new("/etc/haproxy/lb-agent")).unwrap();
        let golden = Path::new("fixtures/golden")
            .join(p.file_stem().unwrap())
            .with_extension("cfg");
        assert_golden(&out.config, &golden);
    }
}

/// A fixture document of group `blue`, validated.
fn parse_blue(body: &[u8]) -> lb_agent::model::DesiredState {
    parse_document(
        body,
        &ValidateContext {
            group: "blue".into(),
        },
    )
    .unwrap()
}

/// `config` equals the golden file (rewritten first with `UPDATE_GOLDEN=1`).
fn assert_golden(config: &str, golden: &Path) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(golden, config).unwrap();
    }
    let want = fs::read_to_string(golden)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", golden.display()));
    assert_eq!(config, want, "{} differs from its render", golden.display());
}

#[test]
fn rendered_configs_pass_haproxy_check() {
    let haproxy = Path::new("/usr/sbin/haproxy");
    if !common::skip::require_path(
        "rendered_configs_pass_haproxy_check",
        "/usr/sbin/haproxy",
        "haproxy",
    ) {
        return;
    }
    let r = Renderer::new(None, settings()).unwrap();
    for p in fixtures() {
        let d = parse_blue(&fs::read(&p).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let out = r.render(&d, dir.path()).unwrap();
        for (rel, body) in &out.files {
            let f = dir.path().join(rel);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, body).unwrap();
        }
        let cfg = dir.path().join("haproxy.cfg");
        fs::write(&cfg, &out.config).unwrap();
        let o = Command::new(haproxy)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: haproxy -c failed:\n{}\n{}",
            p.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn operator_template_overrides_one_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("global.cfg.tera"),
        "global\n    # operator global\n\ndefaults\n    mode http\n",
    )
    .unwrap();
    let r = Renderer::new(Some(dir.path()), settings()).unwrap();
    let d = parse_blue(&fs::read("fixtures/api/valid/minimal.json").unwrap());
    let out = r.render(&d, Path::new("/x")).unwrap();
    assert!(out.config.contains("# operator global"));
    assert!(
        out.config.contains("backend web"),
        "other templates still built in"
    );
    // The templates are part of the structure: changing them needs a reload.
    let builtin = Renderer::new(None, settings()).unwrap();
    assert_ne!(builtin.global_digest(), r.global_digest());
    // A missing directory falls back to the built-in templates.
    let missing = Renderer::new(Some(Path::new("/nonexistent/templates")), settings()).unwrap();
    assert_eq!(missing.global_digest(), builtin.global_digest());
}

/// Every `[haproxy]` host key set (fixtures/config/valid/full.toml's log
/// targets and listeners, pinned threads on a fixed CPU list) renders into
/// `global` and the two host-local frontends as in
/// fixtures/golden/host-settings.cfg, and `haproxy -c` accepts it. The
/// document is full.json with its TCP frontend terminating TLS too, so both
/// TLS log formats appear.
#[test]
fn host_settings_render_in_global() {
    use lb_agent::haproxy::global::GlobalSettings;
    let mut cfg = lb_agent::config::load(Path::new("fixtures/config/valid/full.toml"))
        .unwrap()
        .haproxy;
    cfg.cpu_map = lb_agent::config::CpuMap::Auto;
    cfg.nbthread = None;
    let global = GlobalSettings::resolve(&cfg, &[0, 1, 4, 5]).unwrap();
    assert_ne!(global, GlobalSettings::default());
    let r = Renderer::new(
        None,
        RenderSettings {
            global,
            ..settings()
        },
    )
    .unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&fs::read("fixtures/api/valid/full.json").unwrap()).unwrap();
    let ssh = doc["frontends"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "git_ssh")
        .unwrap();
    ssh["tls"] = serde_json::json!({ "certificates": ["www_example_com"] });
    let d = parse_blue(&serde_json::to_vec(&doc).unwrap());
    let out = r.render(&d, Path::new("/etc/haproxy/lb-agent")).unwrap();
    let golden = Path::new("fixtures/golden/host-settings.cfg");
    assert_golden(&out.config, golden);
    // The parts this test is about, spelled out (the golden file could be
    // regenerated wrong).
    for line in [
        "    log 127.0.0.1:514 local0\n",
        "    log /dev/log local1 notice\n",
        "    nbthread 4\n",
        "    cpu-map auto:1/1-4 0-1 4-5\n",
        "    maxconn 100000\n",
        "    ssl-default-bind-options ssl-min-ver TLSv1.3\n",
        "frontend _prometheus\n",
        "    bind 127.0.0.1:8405\n",
        "    http-request use-service prometheus-exporter if { path /metrics }\n",
        "frontend _stats\n",
        "    bind [::1]:8404\n",
        "    stats uri /haproxy-stats\n",
        "    option httpslog\n",
        "%sslv/%sslc",
    ] {
        assert!(
            out.config.contains(line),
            "missing {line:?}:\n{}",
            out.config
        );
    }
    assert!(!out.config.contains("log /dev/log local0\n"));
    // The host-local listeners are binds like the VIPs': the reload
    // installer's bind check probes them before a reload.
    let binds: Vec<String> = lb_agent::haproxy::bindcheck::config_binds(&out.config)
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    for l in ["127.0.0.1:8405", "[::1]:8404"] {
        assert!(binds.iter().any(|b| b == l), "{l} not in {binds:?}");
    }
    // Unchanged host settings keep the structure (no reload); a changed
    // one changes it (one reload).
    assert_eq!(
        r.global_digest(),
        Renderer::new(None, r.settings().clone())
            .unwrap()
            .global_digest()
    );
    // A changed host setting changes the structure: one reload.
    assert_ne!(
        r.structure(&d).digest(),
        Renderer::new(None, settings())
            .unwrap()
            .structure(&d)
            .digest()
    );

    let dir = tempfile::tempdir().unwrap();
    // Validate with the data paths of the temporary directory.
    let staged = r.render(&d, dir.path()).unwrap();
    match haproxy_check(&staged, dir.path()) {
        None => common::skip::skip(
            "host_settings_render_in_global (haproxy -c)",
            "/usr/sbin/haproxy not found; apt-get install -y haproxy (.ci/run does)",
        ),
        Some((ok, output)) => assert!(ok, "haproxy -c failed:\n{output}"),
    }
}
