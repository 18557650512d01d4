//! The module layering of docs/architecture.md ("Module layering"), checked.
//!
//! Imports go one way: decisions never reach executors, loops or the
//! surface; executors never reach loops or the surface; the status server
//! never reaches the metrics it serves; the CLI never reaches the daemon.
//! This test reads the sources and fails naming the file, the line and the
//! rule when a `crate::` path points the wrong way. Comment lines are
//! skipped (docs may link anywhere). Edges the page lists as known are not
//! rules here yet.

use std::path::{Path, PathBuf};

/// Executors, loops and the operating surface: what the pure side must not use.
const NOT_FROM_DECISIONS: &[&str] = &[
    "haproxy",
    "bird",
    "health",
    "vip",
    "drain",
    "reconcile",
    "anycast",
    "status",
    "metrics",
    "cli",
    "daemon",
    "setup",
    "source",
    "doctor",
    "publish",
    "telemetry",
];
/// Loops and the operating surface: what executors must not use.
const NOT_FROM_EXECUTORS: &[&str] = &[
    "reconcile",
    "anycast",
    "status",
    "metrics",
    "cli",
    "daemon",
    "setup",
    "doctor",
    "publish",
    "telemetry",
];
/// The operating surface: what the loops must not use.
const NOT_FROM_LOOPS: &[&str] = &["status", "metrics", "cli", "daemon", "setup", "doctor"];

/// (file or directory below `src/`, modules it must not import, the layer it is in).
const RULES: &[(&str, &[&str], &str)] = &[
    ("model", NOT_FROM_DECISIONS, "model"),
    ("logic", NOT_FROM_DECISIONS, "model"),
    ("plan", NOT_FROM_DECISIONS, "decisions"),
    ("gate.rs", NOT_FROM_DECISIONS, "decisions"),
    ("reconcile/policy.rs", NOT_FROM_DECISIONS, "decisions"),
    ("health/hysteresis.rs", NOT_FROM_DECISIONS, "decisions"),
    ("health/spec.rs", NOT_FROM_DECISIONS, "decisions"),
    ("bird/include.rs", NOT_FROM_DECISIONS, "decisions"),
    ("source", NOT_FROM_DECISIONS, "input"),
    ("haproxy", NOT_FROM_EXECUTORS, "executors"),
    ("bird", NOT_FROM_EXECUTORS, "executors"),
    ("health", NOT_FROM_EXECUTORS, "executors"),
    ("vip", NOT_FROM_EXECUTORS, "executors"),
    ("drain.rs", NOT_FROM_EXECUTORS, "executors"),
    ("reconcile", NOT_FROM_LOOPS, "loops"),
    ("anycast", NOT_FROM_LOOPS, "loops"),
    (
        "status",
        &["metrics", "daemon", "cli", "setup"],
        "surface (status server)",
    ),
    ("metrics", &["daemon", "cli"], "surface (metrics)"),
    ("cli", &["daemon"], "surface (CLI)"),
    ("setup.rs", &["daemon", "cli"], "surface (builders)"),
];

fn rust_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for e in entries {
            rust_files(&e, out);
        }
    } else if p.extension().is_some_and(|x| x == "rs") {
        out.push(p.to_path_buf());
    }
}

/// The forbidden module `line` names as `crate::NAME`, if any.
fn forbidden_use<'a>(line: &str, forbidden: &[&'a str]) -> Option<&'a str> {
    if line.trim_start().starts_with("//") {
        return None;
    }
    line.match_indices("crate::").find_map(|(i, _)| {
        let rest = &line[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let before = line[..i].chars().next_back();
        let whole = !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        forbidden.iter().copied().find(|f| whole && *f == name)
    })
}

fn violations() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for (under, forbidden, layer) in RULES {
        // A module may name its own items by their `crate::` path.
        let own = under
            .split('/')
            .next()
            .unwrap_or(under)
            .trim_end_matches(".rs");
        let forbidden: Vec<&str> = forbidden.iter().copied().filter(|m| *m != own).collect();
        let mut files = Vec::new();
        rust_files(&src.join(under), &mut files);
        assert!(
            !files.is_empty(),
            "layering rule for src/{under}: no such file"
        );
        for f in files {
            let text = std::fs::read_to_string(&f)
                .unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
            for (n, line) in text.lines().enumerate() {
                if let Some(m) = forbidden_use(line, &forbidden) {
                    found.push(format!(
                        "{}:{}: {layer} code imports crate::{m}: {}",
                        f.strip_prefix(&src).unwrap_or(&f).display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn imports_follow_the_layering() {
    let v = violations();
    assert!(
        v.is_empty(),
        "backward imports (docs/architecture.md, \"Module layering\"):\n{}",
        v.join("\n")
    );
}

#[test]
fn a_backward_import_is_caught() {
    assert_eq!(
        forbidden_use("use crate::haproxy::render::map_path;", NOT_FROM_DECISIONS),
        Some("haproxy")
    );
    assert_eq!(
        forbidden_use("    let r = crate::daemon::renderer(&cfg);", &["daemon"]),
        Some("daemon")
    );
    assert_eq!(
        forbidden_use("/// see [`crate::haproxy`]", NOT_FROM_DECISIONS),
        None
    );
    assert_eq!(
        forbidden_use("use crate::model::files;", NOT_FROM_DECISIONS),
        None
    );
    assert_eq!(
        forbidden_use("use lb_crate::haproxy;", NOT_FROM_DECISIONS),
        None
    );
}
