//! Logging: journald with structured fields under systemd, readable stderr otherwise.
//!
//! Under systemd (`JOURNAL_STREAM` set) and with the journal socket present,
//! events go to journald natively, so fields like `revision`, `vip`,
//! `frontend` and `pool` become journal fields (`journalctl
//! F_REVISION=1042`). Anywhere else (a terminal, a test, a container without
//! a journal) they are printed as text on stderr, coloured only on a TTY.
//! A missing journal never panics or loses logs: it falls back to stderr.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = registry
                .with(journald.with_syslog_identifier("lb-agent".into()))
                .try_init();
            return;
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false);
    let _ = registry.with(fmt).try_init();
}
