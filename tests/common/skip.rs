//! The one skip policy of the integration tests (docs/testing.md).
//!
//! A test that cannot run here (no root, no namespaces, a missing tool)
//! calls [`skip`] (or a `require_*` helper built on it) and returns. Every
//! skip is:
//!
//! - **loud**: a banner on the process's stderr, written directly so that
//!   libtest's capture of passing tests does not hide it;
//! - **counted**: one line `test<TAB>reason<TAB>kind` appended to the file
//!   named by `LB_AGENT_SKIP_LOG`, when set (`./test.sh` sets it and prints
//!   the list at the end);
//! - **fatal under CI**: with `LB_AGENT_NO_SKIP=1` (exported by `.ci/run`,
//!   which has root and every package) [`skip`] panics instead, so a test
//!   that silently stopped running fails the build.
//!
//! [`expected_skip`] is the allow-list: a skip that depends on the host
//! rather than on what is installed (more CPUs than a setting allows, IPv6
//! disabled by the kernel), legitimate even on CI. It is logged and printed
//! like any other, and never panics.

use std::io::Write;
use std::path::Path;

/// Names the file every skip appends one line to.
pub const SKIP_LOG_ENV: &str = "LB_AGENT_SKIP_LOG";
/// `1`: a [`skip`] panics instead of skipping (CI).
pub const NO_SKIP_ENV: &str = "LB_AGENT_NO_SKIP";

/// `test` cannot run here because of `reason` (what is missing and how to
/// get it). Panics under `LB_AGENT_NO_SKIP=1`.
pub fn skip(test: &str, reason: &str) {
    if std::env::var(NO_SKIP_ENV).is_ok_and(|v| v == "1") {
        record(test, reason, "refused");
        panic!("{test} would be skipped ({reason}), and {NO_SKIP_ENV}=1 forbids skips");
    }
    announce(test, reason, "skip");
}

/// `test` (or a part of it) cannot run on this host because of `reason`,
/// a property of the host that CI may have too (`why_allowed` says why
/// that is acceptable). Never panics; logged and printed like [`skip`].
pub fn expected_skip(test: &str, reason: &str, why_allowed: &str) {
    announce(
        test,
        &format!("{reason} (allowed: {why_allowed})"),
        "expected",
    );
}

/// True when `path` exists; otherwise skips `test`, naming the Debian
/// package that provides it.
pub fn require_path(test: &str, path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    skip(
        test,
        &format!("{path} not found; apt-get install -y {package} (.ci/run does)"),
    );
    false
}

fn announce(test: &str, reason: &str, kind: &str) {
    record(test, reason, kind);
    let bar = "!".repeat(64);
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\n{bar}\n!!! SKIPPED {test}: {reason}\n{bar}\n");
}

/// Appends one line to `$LB_AGENT_SKIP_LOG` (O_APPEND: lines from parallel
/// test binaries do not interleave).
fn record(test: &str, reason: &str, kind: &str) {
    let Some(path) = std::env::var_os(SKIP_LOG_ENV) else {
        return;
    };
    let line = format!("{test}\t{}\t{kind}\n", reason.replace(['\t', '\n'], " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!(
            "{SKIP_LOG_ENV}={}: cannot record the skip of {test}: {e}",
            Path::new(&path).display()
        );
    }
}
