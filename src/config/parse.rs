//! Parsing `agent.toml` (placeholder until the parser lands).
use std::path::Path;

use super::Config;

/// One problem in agent.toml.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// Every problem found in agent.toml.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

pub fn load(_path: &Path) -> Result<Config, ConfigErrors> {
    unimplemented!("config parser")
}

pub fn parse_str(_text: &str, _file: &str) -> Result<Config, ConfigErrors> {
    unimplemented!("config parser")
}
