//! How a pool's servers are laid out in the rendered config (pure).
//!
//! Shared by the renderer and the planner's simulator so both agree on what a
//! freshly loaded HAProxy contains: every desired server under its own name,
//! then free slots for servers added at runtime.

use std::net::{IpAddr, Ipv4Addr};

use crate::config::SlotPolicy;
use crate::model::{Pool, PoolCheck, ServerState};

/// Name prefix of free server slots. Desired names cannot start with `_`,
/// so a slot can never collide with a real server.
pub const SLOT_PREFIX: &str = "_slot";

/// True for the names of pre-allocated slots.
pub fn is_slot_name(name: &str) -> bool {
    name.starts_with(SLOT_PREFIX)
}

/// Total server lines for a pool with `n` servers.
///
/// `Pow2`: the next power of two strictly above `n`, at least 4 — so there is
/// always at least one free slot and growth by doubling needs no reload.
pub fn slot_count(n: usize, policy: SlotPolicy) -> usize {
    match policy {
        SlotPolicy::Exact => n,
        SlotPolicy::Pow2 => (n + 1).next_power_of_two().max(4),
    }
}

/// One `server` line of a rendered backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotLine {
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u16,
    /// Rendered `disabled` (maintenance at load time).
    pub disabled: bool,
    pub is_slot: bool,
}

/// The server lines of a pool: desired servers by name, then free slots.
///
/// A drained server is rendered with weight 0 (HAProxy's config has no drain
/// keyword), a server in maintenance as `disabled`; so a reload without a
/// state file still honours every state.
pub fn pool_layout(pool: &Pool, policy: SlotPolicy) -> Vec<SlotLine> {
    let mut lines: Vec<SlotLine> = pool
        .servers
        .values()
        .map(|s| SlotLine {
            name: s.name.to_string(),
            addr: s.address,
            port: s.port,
            weight: if s.state == ServerState::Drain {
                0
            } else {
                s.weight
            },
            disabled: s.state == ServerState::Maint,
            is_slot: false,
        })
        .collect();
    let free = slot_count(lines.len(), policy) - lines.len();
    lines.extend((1..=free).map(|k| SlotLine {
        name: format!("{SLOT_PREFIX}{k}"),
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 1,
        weight: 1,
        disabled: true,
        is_slot: true,
    }));
    lines
}

/// The `check ...` server keywords for a pool's health check (also used by `add server`,
/// which does not inherit `default-server`).
pub fn check_keywords(c: &PoolCheck) -> String {
    let mut s = String::from("check");
    if let Some(i) = c.interval {
        s.push_str(&format!(" inter {}ms", i.as_millis()));
    }
    if let Some(r) = c.rise {
        s.push_str(&format!(" rise {r}"));
    }
    if let Some(f) = c.fall {
        s.push_str(&format!(" fall {f}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow2_always_leaves_a_free_slot() {
        for n in 0..200 {
            let c = slot_count(n, SlotPolicy::Pow2);
            assert!(c > n && c >= 4 && c.is_power_of_two(), "{n} -> {c}");
            assert!(c <= 2 * n.max(2), "over-allocation bounded: {n} -> {c}");
        }
        assert_eq!(slot_count(5, SlotPolicy::Exact), 5);
    }
}
