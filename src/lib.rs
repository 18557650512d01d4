//! lb-agent: the node agent of an anycast + ECMP HAProxy load-balancing platform.
//!
//! Architecture map (data flows top to bottom):
//!
//! - [`config`]: `agent.toml` → validated [`config::Config`].
//! - [`source`]: polls the central API (or a file) → raw documents; [`model::validate`]
//!   turns one into a [`model::DesiredState`] or a list of errors with JSON paths.
//! - [`logic`] (pure): the business-logic sandbox: document templates rendered with bounded
//!   time, memory and recursion, and the rendered snippets confined to their section.
//! - [`plan`] (pure): desired vs observed HAProxy → runtime commands or a reload with reason.
//! - [`haproxy`]: runtime-socket client, config renderer (tera), reload scheduler.
//! - [`health`]: async tcp/http/tls/exec checks + rise/fall hysteresis.
//! - [`gate`] (pure): which VIPs may be announced, and why not.
//! - [`bird`]: the include file and BIRD's control socket; [`vip`]: VIP addresses via rtnetlink;
//!   [`drain`]: the persisted drain flag.
//! - [`anycast`]: health → gate → BIRD and the VIP addresses, wired into one task.
//! - [`reconcile`]: the HAProxy loop (observe → plan → apply → read back → reload or persist).
//! - [`status`], [`metrics`], [`cli`], [`daemon`], [`telemetry`]: the operating surface;
//!   [`setup`]: the builders `run` and the CLI share;
//!   [`fdbudget`]: the descriptor limit raised at start and checked against the listener caps;
//!   [`doctor`]: the host checks of `lb-agent doctor`.
//! - [`clock`]: the only reads of the std clocks.
//!
//! Imports go one way between layers (input, model, decisions, executors, loops,
//! surface): docs/architecture.md, "Module layering", checked by a unit test.

pub mod anycast;
pub mod bird;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod drain;
pub mod exposition;
pub mod fdbudget;
#[cfg(test)]
mod fnlength;
pub mod fsutil;
pub mod gate;
pub mod haproxy;
pub mod health;
#[cfg(test)]
mod layering;
pub mod logic;
pub mod mem;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod publish;
pub mod reconcile;
pub mod setup;
pub mod source;
pub mod status;
pub mod telemetry;
pub mod timeutil;
pub mod vip;
