//! The CLI commands that talk to a running agent over its status socket
//! (`status`, `vips`, `drain`, `undrain`, `reconcile`), plus `completions`
//! and the hidden `man` used by the packages.
//!
//! Each command is one HTTP/1.1 request on a fresh connection to the UNIX
//! socket (hyper's client connection over `tokio::net::UnixStream`; no
//! pool, nothing to keep alive for a one-shot tool). Read commands print a
//! human view by default and the agent's JSON unchanged with `--json`, so
//! scripts see exactly what the socket serves, including keys this CLI
//! does not know yet.
//!
//! Exit codes (docs/status.md, "CLI"): 0 ok; 1 runtime error (the agent answered an
//! error, refused the request, or sent something unreadable; permission
//! denied on the socket); 2 usage (clap); 3 agent unreachable (no socket,
//! connection refused, or no answer within `--timeout`).

#![warn(missing_docs)]

mod commands;
mod man;
mod table;
mod transport;
mod views;

pub use commands::*;
pub use man::*;
pub use table::*;
pub use transport::*;
pub use views::*;

#[cfg(test)]
mod tests;
