#[test]
fn agent_owned_files_follow_state_dir_unless_set() {
    let c = super::parse_str(
        "[node]\ngroup = \"blue\"\nstate_dir = \"/srv/lb\"\n",
        "a.toml",
    )
    .unwrap();
    assert_eq!(
        c.source.cache,
        std::path::Path::new("/srv/lb/last-good.json")
    );
    assert_eq!(
        c.haproxy.state_file,
        std::path::Path::new("/srv/lb/haproxy-server-state")
    );
    let c = super::parse_str(
            "[node]\ngroup = \"blue\"\nstate_dir = \"/srv/lb\"\n[haproxy]\nstate_file = \"/run/hs\"\n[source]\ncache = \"/var/cache/doc.json\"\n",
            "a.toml",
        )
        .unwrap();
    assert_eq!(c.haproxy.state_file, std::path::Path::new("/run/hs"));
    assert_eq!(c.source.cache, std::path::Path::new("/var/cache/doc.json"));
    let c = super::parse_str("[node]\ngroup = \"blue\"\n", "a.toml").unwrap();
    assert_eq!(
        c.haproxy.state_file,
        std::path::Path::new("/var/lib/lb-agent/haproxy-server-state")
    );
}

use super::*;

use crate::config::{LocalCheckKind, SourceUrl};

fn errors(text: &str) -> Vec<String> {
    match parse_str(text, "agent.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn empty_file_is_all_defaults() {
    let c = parse_str("", "agent.toml").expect("empty file is valid");
    assert_eq!(c, defaults(c.node.name.clone()));
    assert_eq!(c.node.name, hostname().unwrap());
}

#[test]
fn all_errors_at_once_sorted_by_line() {
    let text = "[source]\npol_interval = \"5s\"\nlong_poll = 3\n[health]\nrise = 0\n";
    assert_eq!(
            errors(text),
            vec![
                "agent.toml:2: source.pol_interval: unknown key (did you mean `poll_interval`?)",
                "agent.toml:3: source.long_poll: expected a duration such as \"5s\", \"500ms\" or \"1m 30s\", found 3",
                "agent.toml:5: health.rise: expected an integer of at least 1, found 0",
            ]
        );
}

#[test]
fn syntax_error_has_a_line() {
    let errs = errors("[node]\nname = \"a\"\ngroup = \n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("agent.toml:3: TOML syntax error"),
        "{errs:?}"
    );
}

#[test]
fn suggestions_only_for_near_misses() {
    assert_eq!(
        closest("pol_interval", &["poll_interval", "url"]),
        Some("poll_interval")
    );
    assert_eq!(closest("zzz", &["poll_interval", "url"]), None);
    assert_eq!(closest("ur", &["url"]), Some("url"));
    assert_eq!(closest("x", &["az"]), None);
}

#[test]
fn octal_modes() {
    let ok = |t: &str| parse_str(&format!("[status]\nmode = {t}\n"), "a").map(|c| c.status.mode);
    assert_eq!(ok("\"0660\""), Ok(0o660));
    assert_eq!(ok("\"600\""), Ok(0o600));
    assert_eq!(ok("0o640"), Ok(0o640));
    assert!(ok("660").is_err());
    assert!(ok("\"0680\"").is_err());
    assert!(ok("\"01777\"").is_err());
}

#[test]
fn file_urls() {
    let url = |u: &str| parse_str(&format!("[source]\nurl = {u:?}\n"), "a").map(|c| c.source.url);
    assert_eq!(
        url("file:///etc/lb-agent/d.json"),
        Ok(SourceUrl::File("/etc/lb-agent/d.json".into()))
    );
    assert_eq!(
        url("https://api.example.net/v1?x=1"),
        Ok(SourceUrl::Http("https://api.example.net/v1?x=1".into()))
    );
    assert!(url("file://remote/etc/x").is_err());
    assert!(url("file:///etc/").is_err());
    assert!(url("ftp://x/y").is_err());
    assert!(url("https://").is_err());
    assert!(url("file:relative/path").is_err());
    assert!(url("http:api.example.net/config").is_err());
    assert_eq!(
        url("file:///etc/lb%20agent/d.json"),
        Ok(SourceUrl::File("/etc/lb agent/d.json".into()))
    );
}

/// The keys packaging/agent.toml sets away from the built-in defaults
/// (sorted): the sets the example bird.conf refers to, which BIRD
/// would otherwise refuse as undefined symbols.
const PACKAGED_OVERRIDES: [&str; 2] = ["bird.demote_variable", "bird.drain_variable"];

/// The packaged agent.toml documents every key: each one appears in it
/// (as a comment), and uncommenting every `#key = value` line reproduces
/// exactly the built-in defaults, but for [`PACKAGED_OVERRIDES`].
#[test]
fn packaged_file_documents_every_key_with_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/agent.toml");
    let text = std::fs::read_to_string(path).expect("packaging/agent.toml");

    let (_, known) = parse_collecting("", "agent.toml");
    let mut missing = Vec::new();
    let mut section = String::new();
    let mut documented = std::collections::BTreeSet::new();
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        if let Some(h) = l.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
            section = format!("{h}[]");
        } else if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = h.to_string();
        } else if let Some((k, _)) = l.split_once('=') {
            let k = k.trim();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                documented.insert(format!("{section}.{k}"));
            }
        }
    }
    for key in &known {
        if key == "node"
            || key == "source"
            || key == "haproxy"
            || key == "health"
            || key == "bird"
            || key == "vip"
            || key == "status"
            || key == "check"
        {
            continue;
        }
        if !documented.contains(key.as_str()) {
            missing.push(key.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "keys not documented in packaging/agent.toml: {missing:?}"
    );

    // `#key = value` (no space after '#') marks a default; uncomment them
    // all, except where the file sets the key itself (the sets the
    // example bird.conf needs, see PACKAGED_OVERRIDES).
    let key_of = |l: &str| l.split_once('=').map(|(k, _)| k.trim().to_string());
    let active: std::collections::BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()))
        .filter_map(key_of)
        .collect();
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest)
                if rest.starts_with(|c: char| c.is_ascii_lowercase())
                    && !key_of(rest).is_some_and(|k| active.contains(&k)) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let overridden: Vec<String> = PACKAGED_OVERRIDES
        .iter()
        .map(|k| k.rsplit('.').next().unwrap().to_string())
        .collect();
    assert_eq!(
        active.iter().cloned().collect::<Vec<_>>(),
        overridden,
        "packaging/agent.toml may set only the keys the example bird.conf needs"
    );
    let parsed = parse_str(&uncommented, "agent.toml (uncommented)")
        .unwrap_or_else(|e| panic!("uncommented defaults do not parse:\n{e}"));
    let mut expected = defaults(parsed.node.name.clone());
    expected.node.name = parsed.node.name.clone();
    expected.bird.demote_variable = Some("ACAST_PS_DEMOTE".into());
    expected.bird.drain_variable = Some("ACAST_PS_DRAIN".into());
    assert_eq!(
        parsed, expected,
        "documented defaults differ from the built-in ones"
    );

    // The commented [[check]] examples are valid when uncommented.
    let start = text.find("# [[check]]").expect("a [[check]] example");
    let example: String = text[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let parsed = parse_str(&example, "check example")
        .unwrap_or_else(|e| panic!("[[check]] example does not parse:\n{e}"));
    assert_eq!(parsed.checks.len(), 2);
    assert!(matches!(parsed.checks[0].kind, LocalCheckKind::Exec { .. }));
    assert!(matches!(parsed.checks[1].kind, LocalCheckKind::Http { .. }));
}

/// `Cx::line` (newline offsets found once, then a binary search) gives what
/// counting the newlines before the offset gives, for every offset of texts
/// with empty lines, a trailing newline, none, and offsets past the end.
#[test]
fn line_of_an_offset_counts_the_newlines_before_it() {
    for text in [
        "",
        "\n",
        "a",
        "a\nb",
        "[node]\n\nname = \"x\"\n",
        "\n\n\nx\n\n",
    ] {
        let cx = walker::Cx::new("agent.toml", text);
        for offset in 0..text.len() + 3 {
            let end = offset.min(text.len());
            let want = text.as_bytes()[..end]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            assert_eq!(cx.line(offset), want, "{text:?} at {offset}");
        }
    }
}

/// A file of thousands of errors: every one carries its own line. (The
/// agent_toml fuzz target found this shape quadratic; its cost is a figure
/// of the fuzz runs in docs/reliability.md, not a timed assertion here.)
#[test]
fn thousands_of_errors_each_name_their_line() {
    let text: String = (0..3000).map(|i| format!("unknown_{i} = 1\n")).collect();
    let errors = parse_str(&text, "agent.toml").unwrap_err();
    assert_eq!(errors.0.len(), 3000);
    for (i, e) in errors.0.iter().enumerate() {
        assert_eq!(e.line, i + 1, "{e}");
    }
}
