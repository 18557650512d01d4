//! What lb-agent observed of the running HAProxy (pure data).
//!
//! Filled by the runtime client's parsers (`haproxy::parse`) from
//! `show servers state`, and consumed by the planner. Only the columns the
//! agent acts on are kept.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Admin-state bits of `show servers state` (HAProxy's `srv_admin_state`).
pub mod admin {
    /// Forced maintenance (runtime `state maint`).
    pub const FMAINT: u8 = 0x01;
    /// Inherited maintenance (tracked server).
    pub const IMAINT: u8 = 0x02;
    /// `disabled` in the configuration; stays set after a runtime `state ready`.
    pub const CMAINT: u8 = 0x04;
    /// Forced drain (runtime `state drain`).
    pub const FDRAIN: u8 = 0x08;
    /// Inherited drain.
    pub const IDRAIN: u8 = 0x10;
    /// Maintenance because of DNS resolution.
    pub const RMAINT: u8 = 0x20;
    /// Maintenance because the hostname does not resolve.
    pub const HMAINT: u8 = 0x40;
    /// Any bit that keeps a server out of service.
    pub const ANY_MAINT: u8 = FMAINT | IMAINT | RMAINT | HMAINT;
    /// Any drain bit.
    pub const ANY_DRAIN: u8 = FDRAIN | IDRAIN;
}

/// One server line of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedServer {
    /// Server id inside the backend.
    pub id: u32,
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    /// 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    /// Bit mask, see [`admin`].
    pub admin_state: u8,
    /// Current (user) weight.
    pub uweight: u16,
    /// Initial weight from the configuration.
    pub iweight: u16,
}

impl ObservedServer {
    pub fn in_maint(&self) -> bool {
        self.admin_state & admin::ANY_MAINT != 0
    }

    pub fn in_drain(&self) -> bool {
        self.admin_state & admin::ANY_DRAIN != 0
    }
}

/// One backend: its servers in id order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedBackend {
    pub id: u32,
    pub servers: Vec<ObservedServer>,
}

/// The server view of a running HAProxy: backends by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedServers {
    pub backends: BTreeMap<String, ObservedBackend>,
}

/// One process row of the master CLI's `show proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRow {
    pub pid: u32,
    /// Reload counter of that process.
    pub reloads: u64,
}

/// The master CLI's `show proc`, the only reliable reload outcome in HAProxy 2.6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    pub master_pid: u32,
    /// Master's reload counter: goes up on every attempt, failed ones included.
    pub master_reloads: u64,
    /// `[failed: N]`: > 0 after a failed attempt, back to 0 on the next success.
    pub failed: u64,
    /// Current workers (normally one).
    pub workers: Vec<ProcRow>,
    /// Old workers still finishing connections.
    pub old_workers: Vec<ProcRow>,
}

impl ProcStatus {
    /// PID of the current worker (the newest if several are listed).
    pub fn current_worker(&self) -> Option<u32> {
        self.workers.iter().min_by_key(|w| w.reloads).map(|w| w.pid)
    }
}

/// Map, ACL and certificate contents of the running HAProxy, for the files
/// it has loaded (a file no config line refers to is not loaded, and then
/// rewriting it on disk is all there is to do).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedData {
    /// Map file path → entries, in HAProxy's order (duplicates possible: `add map` does not deduplicate).
    pub maps: BTreeMap<String, Vec<(String, String)>>,
    /// ACL pattern file path → patterns.
    pub acls: BTreeMap<String, Vec<String>>,
    /// Certificate file path → SHA-1 fingerprint of its leaf certificate (uppercase hex).
    pub certs: BTreeMap<String, String>,
}
