//! Builders from a validated [`Config`] shared by `lb-agent run` and the CLI.
//!
//! `check-config` and `render` must build exactly what the daemon builds
//! (the same host `global` settings, the same renderer), yet the CLI must not
//! reach into the daemon's wiring (docs/architecture.md, "Module layering").
//! These functions read the templates and the allowed CPUs; they spawn
//! nothing.

use anyhow::Context;

use crate::config::Config;
use crate::haproxy::render::{RenderSettings, Renderer};

/// The renderer for a configuration (templates + host settings).
pub fn renderer(cfg: &Config) -> anyhow::Result<Renderer> {
    let h = &cfg.haproxy;
    Renderer::new(
        Some(&h.templates),
        RenderSettings {
            runtime_socket: h.runtime_socket.clone(),
            state_file: h.state_file.clone(),
            hard_stop_after: h.hard_stop_after,
            data_dir: h.data_dir.clone(),
            slot_policy_pow2: h.server_slots == crate::config::SlotPolicy::Pow2,
            node_name: cfg.node.name.clone(),
            node_group: cfg.node.group.clone(),
            node_az: cfg.node.az.clone(),
            global: host_global(cfg)?,
        },
    )
    .context("loading templates")
}

/// The `global` settings of `[haproxy]` for this host (its CPUs).
pub fn host_global(cfg: &Config) -> anyhow::Result<crate::haproxy::global::GlobalSettings> {
    use crate::haproxy::global::{allowed_cpus, GlobalSettings};
    Ok(GlobalSettings::resolve(&cfg.haproxy, &allowed_cpus())?)
}
