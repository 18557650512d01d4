//! The rendered-snippet checker (`logic::check_snippet`) and the HAProxy
//! line lexer under it.
//!
//! Input: byte 0 picks the section (even: frontend, odd: backend) and
//! whether the document declares a data file; the rest is the rendered text.
//! Properties, on text the checker accepts (re-lexed here):
//! - every line lexes, has no control character but TAB, no NUL after
//!   escapes, is at most `MAX_LINE` bytes and does not open a `[scope]`;
//! - no line's keyword (after `no`/`default`) is a section keyword or a
//!   `.if`-style directive;
//! - no word anywhere names Lua, `env(` or `jwt_verify(` (at the start of
//!   an identifier), and every `-f`
//!   argument is a declared data file;
//! - the lines the renderer inserts (trimmed, blank lines dropped) are
//!   accepted again, so what is checked is what ends up in haproxy.cfg.
#![no_main]

use std::collections::BTreeSet;

use lb_agent::logic::check::{MAX_LINE, SECTION_KEYWORDS};
use lb_agent::logic::lexer;
use lb_agent::logic::{check_snippet_with_files, Section};
use libfuzzer_sys::fuzz_target;

/// Whether `word` contains `name` at the start of an identifier (HAProxy
/// reads `x.env(` as the name `x.env`, not the fetch `env`).
fn names(word: &str, name: &str) -> bool {
    let ident = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-');
    word.match_indices(name)
        .any(|(i, _)| i == 0 || !ident(word.as_bytes()[i - 1]))
}

const MAP: &str = "/etc/haproxy/lb-agent/maps/hosts.map";

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let section = if sel & 1 == 0 {
        Section::Frontend
    } else {
        Section::Backend
    };
    let files: BTreeSet<String> = if sel & 2 == 0 {
        BTreeSet::new()
    } else {
        [MAP.to_string()].into()
    };
    // The lexer alone never panics, whatever the line.
    for line in text.split('\n') {
        let _ = lexer::words(line);
    }
    if check_snippet_with_files(text, section, &files).is_err() {
        return;
    }
    for line in text.split('\n') {
        assert!(line.len() <= MAX_LINE);
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "accepted a control character: {line:?}"
        );
        assert!(
            !line.trim_start().starts_with('['),
            "accepted a scope: {line:?}"
        );
        let words = lexer::words(line).expect("accepted text lexes");
        assert!(words.iter().all(|w| !w.text.contains(&0)));
        if let Some(first) = words
            .iter()
            .map(|w| w.as_str().into_owned())
            .find(|w| w != "no" && w != "default")
        {
            assert!(
                !SECTION_KEYWORDS.contains(&first.as_str()),
                "accepted section keyword {first:?} in {line:?}"
            );
            assert!(!first.starts_with('.'), "accepted directive {first:?}");
        }
        for (i, w) in words.iter().enumerate() {
            let lower = w.as_str().to_ascii_lowercase();
            for name in ["lua.", "env(", "jwt_verify("] {
                assert!(!names(&lower, name), "accepted {name:?}: {line:?}");
            }
            if w.text == b"-f" {
                let next = words.get(i + 1).map(|n| n.as_str().into_owned());
                assert!(
                    next.as_deref().is_some_and(|f| files.contains(f)),
                    "accepted -f {next:?}: {line:?}"
                );
            }
        }
    }
    let inserted: Vec<&str> = text
        .split('\n')
        .map(|l| l.trim_matches(|c| c == ' ' || c == '\t'))
        .filter(|l| !l.is_empty())
        .collect();
    if let Err(v) = check_snippet_with_files(&inserted.join("\n"), section, &files) {
        panic!("accepted {text:?}, but its inserted lines are refused: {v}");
    }
});
