//! The function-length rule, as a unit test: no function in `src/` longer
//! than [`LIMIT`] lines unless a `// long: <reason>` comment stands on the
//! line above its `fn` line (attribute lines in between are skipped), so a
//! long function is a decision someone wrote down (docs/architecture.md,
//! "Function length").
//!
//! How it counts, and its limits: it reads rustfmt-formatted source as text.
//! A function starts at a line whose first word (after `pub`, `pub(...)`,
//! `const`, `async`, `unsafe`) is `fn`; its body ends at the first later line
//! that is a lone `}` at the `fn` line's indentation. Lines are counted from
//! the `fn` line to that brace, both included. A signature ending in `;` (a
//! trait method without a body) is skipped. Nested functions are counted on
//! their own too. Closures, macro bodies and functions written on one line
//! are not seen. Excluded: `src/bin/lb-agent-bench/` (a benchmark, not the
//! agent), `tests.rs` files, and everything from a `#[cfg(test)]` `mod tests`
//! to the end of its file.

use std::path::{Path, PathBuf};

/// Most lines a function may have without a `// long:` reason.
const LIMIT: usize = 100;

/// One function over the limit.
#[derive(Debug)]
struct Long {
    file: PathBuf,
    line: usize,
    name: String,
    lines: usize,
    reasoned: bool,
}

/// The name of the function declared on `line`, with its indentation, if
/// `line` declares one.
fn fn_name(line: &str) -> Option<(usize, &str)> {
    let indent = line.len() - line.trim_start().len();
    let mut rest = line.trim_start();
    if let Some(r) = rest.strip_prefix("pub(") {
        rest = r.split_once(") ")?.1;
    } else if let Some(r) = rest.strip_prefix("pub ") {
        rest = r;
    }
    for word in ["const ", "async ", "unsafe "] {
        rest = rest.strip_prefix(word).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("fn ")?;
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    Some((indent, &rest[..end]))
}

/// Whether a `// long:` comment stands above line `i` (skipping attributes).
fn reasoned(lines: &[&str], i: usize) -> bool {
    lines[..i]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.starts_with("#["))
        .is_some_and(|l| l.starts_with("// long:") && l.len() > "// long:".len() + 1)
}

/// Every function of `text` longer than [`LIMIT`] lines.
fn long_functions(file: &Path, text: &str) -> Vec<Long> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().trim_start_matches("pub ") == "mod tests {")
        {
            break;
        }
        let Some((indent, name)) = fn_name(line) else {
            continue;
        };
        // The signature ends at the first line ending in `{` (a body) or `;`.
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = lines[j].trim_end();
            l.ends_with('{') || l.ends_with(';')
        }) else {
            continue;
        };
        if lines[open].trim_end().ends_with(';') {
            continue;
        }
        let close = format!("{}}}", " ".repeat(indent));
        let Some(end) = (open..lines.len()).find(|&j| lines[j].trim_end() == close) else {
            continue;
        };
        let n = end - i + 1;
        if n > LIMIT {
            out.push(Long {
                file: file.to_path_buf(),
                line: i + 1,
                name: name.to_string(),
                lines: n,
                reasoned: reasoned(&lines, i),
            });
        }
    }
    out
}

/// Every `.rs` file below `dir`, minus the exclusions of the module docs.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.ends_with("bin/lb-agent-bench") {
            continue;
        }
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") && !p.ends_with("tests.rs") {
            out.push(p);
        }
    }
}

#[test]
fn long_functions_carry_a_reason() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 50, "found only {} files in src/", files.len());
    let mut all = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("a readable source file");
        all.extend(long_functions(f.strip_prefix(&root).unwrap_or(f), &text));
    }
    for l in &all {
        eprintln!(
            "{}:{} {} is {} lines{}",
            l.file.display(),
            l.line,
            l.name,
            l.lines,
            if l.reasoned { " (reasoned)" } else { "" }
        );
    }
    let bare: Vec<String> = all
        .iter()
        .filter(|l| !l.reasoned)
        .map(|l| {
            format!(
                "src/{}:{} fn {} ({} lines)",
                l.file.display(),
                l.line,
                l.name,
                l.lines
            )
        })
        .collect();
    assert!(
        bare.is_empty(),
        "functions over {LIMIT} lines without a `// long: <reason>` comment above them:\n{}",
        bare.join("\n")
    );
}

#[test]
fn the_counter_sees_long_functions_and_reasons() {
    let body = "    x();\n".repeat(LIMIT);
    let text = format!(
        "/// doc\npub fn a() {{\n{body}}}\n\n// long: one table\n#[allow(x)]\nfn b() {{\n{body}}}\n\n\
         fn short() {{\n    x();\n}}\n\ntrait T {{\n    fn sig(&self);\n}}\n\n\
         #[cfg(test)]\nmod tests {{\n    fn c() {{\n{body}    }}\n}}\n"
    );
    let found = long_functions(Path::new("x.rs"), &text);
    let names: Vec<(&str, usize, bool)> = found
        .iter()
        .map(|l| (l.name.as_str(), l.lines, l.reasoned))
        .collect();
    assert_eq!(names, vec![("a", LIMIT + 2, false), ("b", LIMIT + 2, true)]);
    assert!(!reasoned(&["// long:"], 1), "an empty reason is no reason");
}
