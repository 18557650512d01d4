//! The runtime-socket and master-CLI reply parsers (`haproxy::parse`).
//!
//! Input: one reply as HAProxy would send it; every parser gets it.
//! Properties, beyond never panicking:
//! - `servers_state`: each backend's servers are sorted by id, and a server
//!   name is one non-empty column;
//! - `show_proc`: a `[failed: N]` with N > 0 is only read from a master row
//!   that says so;
//! - `map_entries` / `acl_entries`: one entry per non-blank line, and the
//!   entries printed back the way HAProxy prints them parse to the same list
//!   (unless one ends in '\r', which a `\n` line end would swallow);
//! - `info_pid`: a PID is never 0;
//! - `stat_frontends`: names are non-empty CSV cells;
//! - errors carry a line number within the reply.
#![no_main]

use lb_agent::haproxy::parse;
use libfuzzer_sys::fuzz_target;

fn line_ok(e: &parse::ParseError, text: &str) {
    assert!(
        e.line <= text.lines().count().max(1),
        "{}: line {} past the end",
        e.what,
        e.line
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let non_blank = text.lines().filter(|l| !l.trim().is_empty()).count();

    match parse::servers_state(text) {
        Ok(s) => {
            for be in s.backends.values() {
                assert!(be.servers.windows(2).all(|w| w[0].id <= w[1].id));
                for srv in &be.servers {
                    assert!(!srv.name.is_empty() && !srv.name.contains(' '));
                }
            }
        }
        Err(e) => line_ok(&e, text),
    }

    match parse::show_proc(text) {
        Ok(p) => {
            if p.failed > 0 {
                assert!(text.contains("[failed: "));
            }
            let _ = p.current_worker();
        }
        Err(e) => line_ok(&e, text),
    }

    match parse::map_entries(text) {
        Ok(entries) => {
            assert_eq!(entries.len(), non_blank);
            // Printed back one per `\n` line (a value ending in '\r' would
            // read back as a "\r\n" line ending: not a round trip to test).
            if entries
                .iter()
                .all(|(k, v)| !k.ends_with('\r') && !v.ends_with('\r'))
            {
                let printed: String = entries
                    .iter()
                    .map(|(k, v)| format!("0x1 {k} {v}\n"))
                    .collect();
                assert_eq!(parse::map_entries(&printed).as_ref(), Ok(&entries));
            }
        }
        Err(e) => line_ok(&e, text),
    }

    match parse::acl_entries(text) {
        Ok(entries) => {
            assert_eq!(entries.len(), non_blank);
            if entries.iter().all(|p| !p.ends_with('\r')) {
                let printed: String = entries.iter().map(|p| format!("0x1 {p}\n")).collect();
                assert_eq!(parse::acl_entries(&printed).as_ref(), Ok(&entries));
            }
        }
        Err(e) => line_ok(&e, text),
    }

    match parse::info_pid(text) {
        Ok(pid) => assert!(pid > 0),
        Err(e) => line_ok(&e, text),
    }

    match parse::stat_frontends(text) {
        Ok(names) => assert!(names.iter().all(|n| !n.is_empty() && !n.contains(','))),
        Err(e) => line_ok(&e, text),
    }

    let _ = parse::loaded_files(text);
    let _ = parse::cert_files(text);
    let _ = parse::cert_fingerprint(text);
});
