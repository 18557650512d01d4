//! Table tests of the pure decisions of `lb-agent doctor`.

use std::path::Path;

use super::*;

const CONF: &str = "/etc/bird/bird.conf";
const INC: &str = "/etc/bird/lb-agent-prefixes.conf";

type Version = (u32, u32, u32);

#[test]
fn include_detection() {
    let cases: &[(&str, &str, bool)] = &[
        (
            "absolute",
            "include \"/etc/bird/lb-agent-prefixes.conf\";\n",
            true,
        ),
        (
            "no space, tab",
            "include\t\"/etc/bird/lb-agent-prefixes.conf\";",
            true,
        ),
        (
            "relative to bird.conf's dir",
            "include \"lb-agent-prefixes.conf\";",
            true,
        ),
        ("wildcard", "include \"/etc/bird/*.conf\";", true),
        (
            "wildcard does not cross /",
            "include \"/etc/*.conf\";",
            false,
        ),
        (
            "commented with #",
            "# include \"/etc/bird/lb-agent-prefixes.conf\";\n",
            false,
        ),
        (
            "after code on a commented line",
            "router id 1.2.3.4; # include \"/etc/bird/lb-agent-prefixes.conf\";",
            false,
        ),
        (
            "in a block comment",
            "/* include \"/etc/bird/lb-agent-prefixes.conf\"; */",
            false,
        ),
        (
            "after a block comment",
            "/* old */ include \"/etc/bird/lb-agent-prefixes.conf\";",
            true,
        ),
        ("another file", "include \"/etc/bird/other.conf\";", false),
        (
            "a longer name",
            "include \"/etc/bird/lb-agent-prefixes.conf.bak\";",
            false,
        ),
        (
            "unquoted",
            "include /etc/bird/lb-agent-prefixes.conf;",
            false,
        ),
        (
            "inside a string",
            "description \"include /etc/bird/lb-agent-prefixes.conf\";",
            false,
        ),
        (
            "part of a word",
            "myinclude \"/etc/bird/lb-agent-prefixes.conf\";",
            false,
        ),
        (
            "# inside a string does not comment",
            "description \"#1\"; include \"/etc/bird/lb-agent-prefixes.conf\";",
            true,
        ),
        ("empty file", "", false),
    ];
    for (name, text, want) in cases {
        assert_eq!(
            includes_file(text, Path::new(CONF), Path::new(INC)),
            *want,
            "{name}: {text:?}"
        );
    }
}

#[test]
fn set_references() {
    let names = ["ACAST_PS_ADVERTISE", "ACAST6_PS_ADVERTISE"];
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "both used",
            "if net ~ ACAST_PS_ADVERTISE then accept;\nif net ~ ACAST6_PS_ADVERTISE then accept;",
            &[],
        ),
        ("v6 missing", "if net ~ ACAST_PS_ADVERTISE then accept;", &["ACAST6_PS_ADVERTISE"]),
        (
            "only in a comment",
            "# if net ~ ACAST_PS_ADVERTISE then accept;\nif net ~ ACAST6_PS_ADVERTISE then accept;",
            &["ACAST_PS_ADVERTISE"],
        ),
        (
            "a longer symbol is not a reference",
            "if net ~ ACAST_PS_ADVERTISE_OLD then accept; if net ~ ACAST6_PS_ADVERTISE then accept;",
            &["ACAST_PS_ADVERTISE"],
        ),
        (
            "only in a string",
            "description \"ACAST_PS_ADVERTISE\"; if net ~ ACAST6_PS_ADVERTISE then accept;",
            &["ACAST_PS_ADVERTISE"],
        ),
        (
            "in a block comment",
            "/* ACAST_PS_ADVERTISE */ if net ~ ACAST6_PS_ADVERTISE then accept;",
            &["ACAST_PS_ADVERTISE"],
        ),
        ("none", "protocol device {}", &["ACAST_PS_ADVERTISE", "ACAST6_PS_ADVERTISE"]),
    ];
    for (name, text, want) in cases {
        assert_eq!(unreferenced_sets(text, &names), *want, "{name}");
    }
}

#[test]
fn packaged_bird_conf_passes_with_the_packaged_agent_toml() {
    let conf = include_str!("../../packaging/bird.conf");
    let cfg = crate::config::parse_str(include_str!("../../packaging/agent.toml"), "agent.toml")
        .expect("the packaged agent.toml parses");
    assert!(includes_file(conf, Path::new(CONF), &cfg.bird.include_file));
    let names = set_names(&cfg).unwrap();
    assert_eq!(
        names.len(),
        6,
        "advertise, drain and demote, both families: {names:?}"
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(unreferenced_sets(conf, &names), Vec::<&str>::new());
}

#[test]
fn set_names_include_derived_ipv6_names() {
    let cfg = crate::config::parse_str(
        "[bird]\ndrain_variable = \"LB_DRAIN\"\ndemote_variable = \"\"\n",
        "t",
    )
    .unwrap();
    let names = set_names(&cfg).unwrap();
    assert!(names.contains(&"LB_DRAIN".to_string()), "{names:?}");
    assert!(names.contains(&"LB6_DRAIN".to_string()), "{names:?}");
    assert!(names.contains(&cfg.bird.ipv6_variable), "{names:?}");
}

#[test]
fn versions() {
    let cases: &[(&str, Option<Version>)] = &[
        (
            "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/\n",
            Some((2, 6, 12)),
        ),
        (
            "HAProxy version 2.4.22-0ubuntu0.22.04.3 2023/08/14",
            Some((2, 4, 22)),
        ),
        ("HAProxy version 3.0.5 2024/09/19", Some((3, 0, 5))),
        ("HAProxy version 2.8-dev1", Some((2, 8, 0))),
        ("HA-Proxy version 1.8.19 2019/02/11", None),
        ("garbage", None),
        ("", None),
    ];
    for (text, want) in cases {
        assert_eq!(parse_haproxy_version(text), *want, "{text:?}");
    }
    let cases: &[(&str, Option<Version>)] = &[
        ("BIRD version 2.0.12\n", Some((2, 0, 12))),
        ("BIRD 2.0.12 ready.", Some((2, 0, 12))),
        ("BIRD 1.6.8 ready.", Some((1, 6, 8))),
        ("BIRD version 3.0.0", Some((3, 0, 0))),
        ("bird: command not found", None),
    ];
    for (text, want) in cases {
        assert_eq!(parse_bird_version(text), *want, "{text:?}");
    }
}

#[test]
fn version_thresholds() {
    let bin = Path::new("/usr/sbin/haproxy");
    let cases: &[(&str, bool)] = &[
        ("HAProxy version 2.6.0", true),
        ("HAProxy version 2.6.12-1+deb12u4", true),
        ("HAProxy version 2.10.1", true),
        ("HAProxy version 3.0.0", true),
        ("HAProxy version 2.5.14", false),
        ("HAProxy version 1.9.9", false),
        ("nothing", false),
    ];
    for (text, ok) in cases {
        let c = haproxy_version_check(bin, Ok(text.to_string()));
        assert_eq!(c.ok, *ok, "{text}: {c:?}");
        assert_eq!(c.fix.is_some(), !*ok, "{text}");
    }
    assert!(!haproxy_version_check(bin, Err("No such file".into())).ok);
    let cases: &[(&str, bool)] = &[
        ("BIRD 2.0.12 ready.", true),
        ("BIRD version 2.0.0", true),
        ("BIRD version 3.0.1", true),
        ("BIRD 1.6.8 ready.", false),
        ("", false),
    ];
    for (text, ok) in cases {
        let c = bird_version_check("greeting", Ok(text.to_string()));
        assert_eq!(c.ok, *ok, "{text}: {c:?}");
    }
}

#[test]
fn socket_and_host_decisions() {
    let p = Path::new("/run/x.sock");
    let cases: Vec<(&str, Check, bool, &str)> = vec![
        ("master ok", master_check(p, Ok(1)), true, ""),
        (
            "master no worker",
            master_check(p, Ok(0)),
            false,
            "journalctl -u haproxy",
        ),
        (
            "master down",
            master_check(p, Err("refused".into())),
            false,
            "-S /run/x.sock",
        ),
        (
            "admin ok",
            admin_check(p, Ok("Name: HAProxy\nVersion: 2.6.12\n".into())),
            true,
            "",
        ),
        (
            "admin odd",
            admin_check(p, Ok("Unknown command".into())),
            false,
            "level admin",
        ),
        (
            "admin down",
            admin_check(p, Err("refused".into())),
            false,
            "stats socket /run/x.sock",
        ),
        (
            "bird ok",
            bird_control_check(p, Ok("Daemon is up and running".into())),
            true,
            "",
        ),
        (
            "bird down",
            bird_control_check(p, Err("refused".into())),
            false,
            "systemctl start bird",
        ),
        ("if ok", interface_check("lo", true, true), true, ""),
        (
            "if missing",
            interface_check("vip0", false, true),
            false,
            "ip link add vip0 type dummy",
        ),
        ("group ok", group_check("lb-agent", Ok(Some(999))), true, ""),
        (
            "group missing",
            group_check("lb-agent", Ok(None)),
            false,
            "groupadd --system lb-agent",
        ),
        ("state ok", state_dir_check(p, Ok(())), true, ""),
        (
            "state ro",
            state_dir_check(p, Err("Permission denied".into())),
            false,
            "install -d",
        ),
        (
            "include unreadable",
            include_check(
                Path::new(CONF),
                &Err("reading: ENOENT".into()),
                Path::new(INC),
            ),
            false,
            "include \"/etc/bird/lb-agent-prefixes.conf\";",
        ),
        (
            "filter missing",
            export_filter_check(Path::new(CONF), &Ok(vec![file(CONF, "")]), &["A_B"]),
            false,
            "if net ~ A_B then accept;",
        ),
    ];
    for (name, check, ok, fix_has) in cases {
        assert_eq!(check.ok, ok, "{name}: {check:?}");
        assert_eq!(check.fix.is_some(), !ok, "{name}");
        let line = check.line();
        assert!(
            line.starts_with(if ok { "ok   " } else { "FAIL " }),
            "{name}: {line}"
        );
        assert!(line.contains(fix_has), "{name}: {line}");
    }
}

fn file(path: &str, text: &str) -> ConfFile {
    ConfFile {
        path: path.into(),
        text: text.into(),
    }
}

#[test]
fn checks_over_included_files() {
    let inc = format!("include \"{INC}\";");
    let cases: Vec<(&str, Vec<ConfFile>, bool, bool)> = vec![
        (
            "all in bird.conf",
            vec![file(CONF, &format!("{inc}\nif net ~ A_B then accept;"))],
            true,
            true,
        ),
        (
            "include and filter in an included file",
            vec![
                file(CONF, "include \"conf.d/lb.conf\";"),
                file(
                    "/etc/bird/conf.d/lb.conf",
                    &format!("{inc}\nif net ~ A_B then accept;"),
                ),
            ],
            true,
            true,
        ),
        (
            "the filter in a file, the include missing",
            vec![
                file(CONF, "include \"filters.conf\";"),
                file("/etc/bird/filters.conf", "if net ~ A_B then accept;"),
            ],
            false,
            true,
        ),
        (
            "an open comment in one file does not hide the next",
            vec![
                file(CONF, &format!("{inc}\n/* unterminated")),
                file("/etc/bird/filters.conf", "if net ~ A_B then accept;"),
            ],
            true,
            true,
        ),
        ("nothing", vec![file(CONF, "")], false, false),
    ];
    for (name, files, include_ok, filter_ok) in cases {
        let files = Ok(files);
        let i = include_check(Path::new(CONF), &files, Path::new(INC));
        let f = export_filter_check(Path::new(CONF), &files, &["A_B"]);
        assert_eq!(i.ok, include_ok, "{name}: {i:?}");
        assert_eq!(f.ok, filter_ok, "{name}: {f:?}");
    }
}

#[test]
fn reads_included_files_but_not_the_agents_include() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bird.conf");
    let agent = dir.path().join("lb-agent-prefixes.conf");
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        &conf,
        "include \"lb-agent-prefixes.conf\";\ninclude \"conf.d/a.conf\";\ninclude \"missing.conf\";\ninclude \"conf.d/*.conf\";\n",
    )
    .unwrap();
    std::fs::write(&agent, "define A_B = [ 10.0.0.0/32 ];\n").unwrap();
    // a.conf includes bird.conf back: read once.
    std::fs::write(
        dir.path().join("conf.d/a.conf"),
        format!("include \"{}\";\nif net ~ X then accept;\n", conf.display()),
    )
    .unwrap();
    let files = read_bird_conf(&conf, &agent).unwrap();
    let paths: Vec<_> = files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(paths, vec![conf.clone(), dir.path().join("conf.d/a.conf")]);
    let ok = Ok(files);
    assert!(include_check(&conf, &ok, &agent).ok);
    // The agent's define is not a reference.
    let f = export_filter_check(&conf, &ok, &["A_B", "X"]);
    assert!(!f.ok && f.detail.contains("never uses A_B"), "{f:?}");
    assert!(read_bird_conf(&dir.path().join("none.conf"), &agent).is_err());
}
