//! Everything that talks to or writes for the local HAProxy.
//!
//! - [`parse`]: pure parsers of runtime/master CLI output.
//! - [`global`]: agent.toml's host settings → the `global` section and the
//!   host-local listeners (threads, CPU pinning, logs, exporter; pure).
//! - [`render`]: desired state → haproxy.cfg + map/ACL/certificate files (pure, tera).
//! - [`runtime`]: the admin socket (prompt mode, pipelined, strict replies).
//! - [`master`]: the master CLI (`show proc`, `reload`).
//! - [`reload`]: validate → install keeping the last-known-good → reload → confirm → roll back.
//! - [`state_file`]: the server-state file written before each reload.
//! - [`watch`]: liveness, the current worker and the frontends it runs, as HAProxy says.
//! - [`bindcheck`]: refuses a reload whose new binds would fail (a port held by
//!   another process), which in 2.6 pauses every existing listener.

pub mod bindcheck;
pub mod global;
pub mod master;
pub mod parse;
pub mod reload;
pub mod render;
pub mod runtime;
pub mod state_file;
pub mod watch;
