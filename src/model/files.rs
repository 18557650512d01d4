//! Where the document's data files live below `[haproxy] data_dir` (pure).
//!
//! The planner (which names the files in runtime commands), the logic
//! sandbox (which lets snippets reference only these files) and the HAProxy
//! renderer (which writes them) must agree on one naming. It sits in
//! `model` so the decision side never imports the executor
//! (docs/architecture.md, "Module layering").

use std::path::PathBuf;

/// Relative path of a map file below `data_dir`.
pub fn map_path(name: &str) -> PathBuf {
    PathBuf::from("maps").join(format!("{name}.map"))
}

/// Relative path of an ACL pattern file below `data_dir`.
pub fn acl_path(name: &str) -> PathBuf {
    PathBuf::from("acls").join(format!("{name}.acl"))
}

/// Relative path of a certificate bundle below `data_dir`.
pub fn cert_path(name: &str) -> PathBuf {
    PathBuf::from("certs").join(format!("{name}.pem"))
}
