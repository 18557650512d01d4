//! Everything that talks to or writes for the local HAProxy.
//!
//! - `parse`: pure parsers of runtime/master CLI output.
//! - `render`: desired state → haproxy.cfg + map/ACL/certificate files (pure, tera).
//! - `runtime`: the admin socket (prompt mode, pipelined, strict replies).
//! - `master`: the master CLI (`show proc`, `reload`).

pub mod master;
pub mod parse;
pub mod reload;
pub mod render;
pub mod runtime;
pub mod state_file;
