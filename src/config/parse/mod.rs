//! Parsing and validating `agent.toml` into a [`Config`].
//!
//! Why a hand-written walk instead of `#[derive(Deserialize)]` with
//! `deny_unknown_fields`: serde stops at the first problem, and an operator
//! fixing a broken file on a host should see *every* problem in one run of
//! `lb-agent check-config`, each with file, line and the dotted key. So the
//! document is parsed into spanned TOML tables ([`toml::de::DeTable`]) and
//! each section is walked here: every known key is converted (recording an
//! error and falling back to the default when it is wrong), and whatever key
//! was not asked for is reported as unknown, with a "did you mean" hint.
//!
//! Defaults live in one place, [`defaults`], which the packaged
//! `packaging/agent.toml` documents (a unit test keeps the two in step).

mod schema;
mod walker;

use schema::*;
pub use walker::*;

use std::fmt;
use std::path::Path;

use toml::de::DeTable;

use crate::config::Config;

mod host_haproxy;
pub use host_haproxy::MAX_THREADS;

/// One problem in agent.toml.
///
/// `line` is 1-based; 0 means the problem is not tied to a line (the file
/// could not be read, the hostname could not be determined). `key` is the
/// dotted key (`source.poll_interval`, `check[1].command`), empty for TOML
/// syntax errors.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in agent.toml, sorted by line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Reads and validates the agent configuration at `path`.
///
/// Errors name `path` as given (so the operator sees the file they passed).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_str(&text, &file),
        Err(error) => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 0,
            key: String::new(),
            message: format!("cannot read the configuration: {error}"),
        }])),
    }
}

/// Validates agent.toml content; `file` is only used in error messages.
///
/// A missing section or key takes its default. All problems are reported at
/// once, sorted by line.
pub fn parse_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    parse_collecting(text, file).0
}

/// [`parse_str`], also returning every dotted key the walker knows, so tests
/// can check the packaged file documents all of them.
fn parse_collecting(text: &str, file: &str) -> (Result<Config, ConfigErrors>, Vec<String>) {
    let mut cx = Cx::new(file, text);
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // The recovered tree is a best effort; walking it would report
        // follow-on errors that only confuse. Syntax first.
        for error in syntax {
            let offset = error.span().map(|s| s.start).unwrap_or(0);
            let message = format!("TOML syntax error: {}", error.message().trim_end());
            cx.error(offset, String::new(), message);
        }
        return (Err(cx.take_errors()), cx.known);
    }
    let config = walk(&mut cx, doc.get_ref());
    let known = std::mem::take(&mut cx.known);
    if cx.errors.is_empty() {
        (Ok(config), known)
    } else {
        (Err(cx.take_errors()), known)
    }
}

fn hostname() -> Result<String, String> {
    let h = nix::unistd::gethostname()
        .map_err(|e| format!("cannot determine the hostname ({e}); set node.name"))?;
    let h = h
        .into_string()
        .map_err(|_| "the hostname is not UTF-8; set node.name".to_string())?;
    if h.is_empty() {
        return Err("the hostname is empty; set node.name".into());
    }
    Ok(h)
}

#[cfg(test)]
mod tests;
