//! `lb-agent doctor`, the built binary, against a real HAProxy 2.6 (master
//! and admin sockets) and a real BIRD 2, both started here on files in a
//! temp dir: every check ok → exit 0 (text and `--json`); then a bird.conf
//! without the agent's include, one whose filter never uses the IPv6 set,
//! and a stopped BIRD each FAIL their named check with its fix, exit 1; a
//! broken agent.toml exits 2.

mod common;
use common::{agent, bird, haproxy};

use std::path::Path;
use std::process::Command;

use agent::write_lab_toml;
use bird::Bird;
use haproxy::{Haproxy, Lab};

/// Runs `lb-agent doctor`; returns (exit code, stdout, stderr).
fn doctor(config: &Path, bird_conf: &Path, json: bool) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb-agent"));
    cmd.arg("doctor")
        .arg("--config")
        .arg(config)
        .arg("--bird-conf")
        .arg(bird_conf)
        .env_remove("LB_AGENT_CONFIG");
    if json {
        cmd.arg("--json");
    }
    let o = cmd.output().expect("running lb-agent doctor");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The report line of check `name`.
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{out}"))
}

/// bird.conf for the lab BIRD: the include (or not) and a filter testing `sets`.
fn bird_conf(dir: &Path, include: Option<&Path>, sets: &[&str]) -> String {
    let mut s = format!("router id 192.0.2.1;\n{}", Bird::log_line(dir));
    if let Some(p) = include {
        s += &format!("# The agent's prefix sets.\ninclude \"{}\";\n", p.display());
    } else {
        // Commented out: must not count.
        s += "# include \"lb-agent-prefixes.conf\";\n";
    }
    s += "filter lb_export {\n";
    for set in sets {
        s += &format!("    if net ~ {set} then accept;\n");
    }
    s += "    reject;\n}\nprotocol device {}\n";
    s
}

#[test]
fn doctor_on_a_live_host() {
    if !haproxy::available("doctor_on_a_live_host") {
        return;
    }
    let lab = Lab::new();
    let config = write_lab_toml(
        &lab,
        &format!("file://{}/desired.json", lab.dir.path().display()),
    );
    let bird_dir = lab.dir.path().join("bird");
    let include = bird_dir.join("lb-agent-prefixes.conf");
    // The dummy-only include the agent writes at reset.
    std::fs::write(
        &include,
        "define ACAST_PS_ADVERTISE = [ 10.189.200.255/32 ];\n\
         define ACAST6_PS_ADVERTISE = [ 2001:db8:ffff::1/128 ];\n",
    )
    .unwrap();
    let _haproxy = Haproxy::start(&lab);
    let all_sets = ["ACAST_PS_ADVERTISE", "ACAST6_PS_ADVERTISE"];
    let mut bird = Bird::start(
        &bird_dir,
        &bird_conf(&bird_dir, Some(&include), &all_sets),
        None,
    );

    // All ok.
    let (code, out, err) = doctor(&config, &bird.config, false);
    println!("--- all ok:\n{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 10, "{out}");
    assert!(out.lines().all(|l| l.starts_with("ok   ")), "{out}");
    assert!(
        line(&out, "haproxy-version").contains("HAProxy 2."),
        "{out}"
    );
    assert!(line(&out, "bird-version").contains("BIRD 2."), "{out}");

    let (code, out, _) = doctor(&config, &bird.config, true);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checks"].as_array().unwrap().len(), 10, "{v}");
    assert!(v["checks"][0]["fix"].is_null(), "{v}");

    // A bird.conf without the include (only a commented-out one).
    let no_include = lab.dir.path().join("bird-no-include.conf");
    std::fs::write(&no_include, bird_conf(&bird_dir, None, &all_sets)).unwrap();
    let (code, out, err) = doctor(&config, &no_include, false);
    println!("--- bird.conf without the include:\n{out}{err}");
    assert_eq!(code, 1, "{out}{err}");
    let l = line(&out, "bird-include");
    assert!(l.starts_with("FAIL "), "{l}");
    assert!(
        l.contains(&format!("fix: add `include \"{}\";`", include.display())),
        "{l}"
    );
    assert!(err.contains("1 of 10 checks failed"), "{err}");

    // A filter that never tests the IPv6 set.
    let v4_only = lab.dir.path().join("bird-v4-only.conf");
    std::fs::write(
        &v4_only,
        bird_conf(&bird_dir, Some(&include), &["ACAST_PS_ADVERTISE"]),
    )
    .unwrap();
    let (code, out, _) = doctor(&config, &v4_only, false);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "bird-export-filter");
    assert!(
        l.starts_with("FAIL ") && l.contains("never uses ACAST6_PS_ADVERTISE"),
        "{l}"
    );
    assert!(
        l.contains("if net ~ ACAST6_PS_ADVERTISE then accept;"),
        "{l}"
    );
    assert!(line(&out, "bird-include").starts_with("ok   "), "{out}");

    // BIRD stopped.
    bird.stop();
    let (code, out, err) = doctor(&config, &bird.config, true);
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    let (code, out, err) = doctor(&config, &bird.config, false);
    println!("--- BIRD stopped:\n{out}{err}");
    assert_eq!(code, 1, "{out}{err}");
    let l = line(&out, "bird-control");
    assert!(l.starts_with("FAIL "), "{l}");
    assert!(l.contains(&bird.socket.display().to_string()), "{l}");
    assert!(l.contains("fix: start BIRD"), "{l}");
    // The version still comes from `bird --version`.
    assert!(
        line(&out, "bird-version").contains("(bird --version)"),
        "{out}"
    );
    assert!(line(&out, "haproxy-master").starts_with("ok   "), "{out}");

    // A broken agent.toml: exit 2 like check-config, no checks run.
    let broken = lab.dir.path().join("broken.toml");
    std::fs::write(&broken, "[node]\nnmae = \"x\"\n").unwrap();
    let (code, out, err) = doctor(&broken, &bird.config, false);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("nmae"), "{err}");
}

#[test]
fn doctor_with_haproxy_down() {
    // Nothing started: the socket checks fail with their fixes; the
    // host checks still pass.
    let lab = Lab::new();
    let config = write_lab_toml(&lab, "file:///nonexistent.json");
    let (code, out, err) = doctor(&config, &lab.dir.path().join("missing-bird.conf"), false);
    println!("--- nothing running:\n{out}{err}");
    assert_eq!(code, 1, "{out}{err}");
    let l = line(&out, "haproxy-master");
    assert!(
        l.starts_with("FAIL ") && l.contains(&format!("-S {}", lab.master.display())),
        "{l}"
    );
    let l = line(&out, "haproxy-admin");
    assert!(l.starts_with("FAIL ") && l.contains("level admin"), "{l}");
    assert!(line(&out, "bird-include").starts_with("FAIL "), "{out}");
    assert!(line(&out, "vip-interface").starts_with("ok   "), "{out}");
    assert!(line(&out, "status-group").starts_with("ok   "), "{out}");
    assert!(line(&out, "state-dir").starts_with("ok   "), "{out}");
}

/// Why no haproxy.service drop-in ships: Debian 12's unit already runs
/// HAProxy master-worker with `-S` at the default `[haproxy] master_socket`.
#[test]
fn debian_haproxy_unit_has_the_default_master_socket() {
    let unit = Path::new("/lib/systemd/system/haproxy.service");
    let Ok(text) = std::fs::read_to_string(unit) else {
        common::skip::skip(
            "debian_haproxy_unit_has_the_default_master_socket",
            &format!(
                "{} not found; apt-get install -y haproxy (.ci/run does)",
                unit.display()
            ),
        );
        return;
    };
    let defaults = lb_agent::config::parse_str("", "defaults").unwrap();
    let master = defaults.haproxy.master_socket.display().to_string();
    let exec = text
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("an ExecStart line");
    assert!(
        exec.contains(" -Ws ") && exec.contains("$EXTRAOPTS"),
        "{exec}"
    );
    let env = text
        .lines()
        .find(|l| l.starts_with("Environment=") && l.contains("EXTRAOPTS="))
        .expect("an Environment line setting EXTRAOPTS");
    assert!(
        env.contains(&format!("\"EXTRAOPTS=-S {master}\"")),
        "{env} does not put the master socket at {master}"
    );
    // /etc/default/haproxy overrides Environment=; Debian's leaves EXTRAOPTS commented.
    if let Ok(d) = std::fs::read_to_string("/etc/default/haproxy") {
        let set: Vec<&str> = d
            .lines()
            .filter(|l| l.trim_start().starts_with("EXTRAOPTS="))
            .collect();
        println!("/etc/default/haproxy EXTRAOPTS lines: {set:?}");
    }
    println!("{exec}\n{env}");
}
