//! A simulated HAProxy: the planner's test double, and the benchmark's.
//!
//! It models exactly the server semantics of HAProxy 2.6 that the planner
//! relies on (admin-state bits of `set server ... state`, slots loaded
//! `disabled`, `add server` only on dynamic algorithms and created in
//! maintenance, `del server` only in maintenance) so property tests can apply
//! plans without a real HAProxy. Integration tests check the same behaviour
//! against the real one.

use std::collections::BTreeMap;

use crate::config::SlotPolicy;
use crate::model::observed::{admin, ObservedBackend, ObservedServer, ObservedServers};
use crate::model::{DesiredState, ServerState};

use super::layout::pool_layout;
use super::Command;

/// One simulated backend.
#[derive(Debug, Clone)]
pub struct SimBackend {
    /// Whether the algorithm allows `add server`.
    pub dynamic: bool,
    pub servers: Vec<ObservedServer>,
}

/// A simulated HAProxy's servers.
#[derive(Debug, Clone, Default)]
pub struct SimHaproxy {
    pub backends: BTreeMap<String, SimBackend>,
}

impl SimHaproxy {
    /// What HAProxy holds right after loading the config rendered for `d`
    /// (no server-state file).
    pub fn load(d: &DesiredState, policy: SlotPolicy) -> SimHaproxy {
        let mut backends = BTreeMap::new();
        for (i, b) in super::az::backends(d).iter().enumerate() {
            let pool = b.pool.as_ref();
            let servers = pool_layout(pool, policy)
                .into_iter()
                .enumerate()
                .map(|(j, l)| ObservedServer {
                    id: j as u32 + 1,
                    name: l.name,
                    addr: l.addr,
                    port: l.port,
                    op_state: 2,
                    admin_state: if l.disabled {
                        admin::FMAINT | admin::CMAINT
                    } else {
                        0
                    },
                    uweight: l.weight,
                    iweight: l.weight,
                })
                .collect();
            let _ = i;
            backends.insert(
                pool.name.to_string(),
                SimBackend {
                    dynamic: pool.balance.is_dynamic(),
                    servers,
                },
            );
        }
        SimHaproxy { backends }
    }

    /// Applies one command the way HAProxy 2.6 would, or refuses it.
    pub fn apply(&mut self, c: &Command) -> Result<(), String> {
        if !matches!(
            c,
            Command::SetAddr { .. }
                | Command::SetWeight { .. }
                | Command::SetState { .. }
                | Command::AddServer { .. }
                | Command::EnableHealth { .. }
                | Command::DelServer { .. }
        ) {
            return Err(format!("the simulator models servers only, not {c}"));
        }
        let be = self
            .backends
            .get_mut(c.backend())
            .ok_or("No such backend.")?;
        let find = |be: &mut SimBackend, name: &str| -> Result<usize, String> {
            be.servers
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| "No such server.".to_string())
        };
        match c {
            Command::SetAddr {
                server, addr, port, ..
            } => {
                let i = find(be, server)?;
                be.servers[i].addr = *addr;
                be.servers[i].port = *port;
            }
            Command::SetWeight { server, weight, .. } => {
                if *weight > 256 {
                    return Err("Absolute weight can only be between 0 and 256 inclusive.".into());
                }
                let i = find(be, server)?;
                be.servers[i].uweight = *weight;
            }
            Command::SetState { server, state, .. } => {
                let i = find(be, server)?;
                let s = &mut be.servers[i].admin_state;
                match state {
                    ServerState::Ready => *s &= !(admin::FMAINT | admin::FDRAIN),
                    ServerState::Drain => *s = (*s | admin::FDRAIN) & !admin::FMAINT,
                    ServerState::Maint => *s = (*s | admin::FMAINT) & !admin::FDRAIN,
                }
            }
            Command::AddServer {
                server,
                addr,
                port,
                weight,
                ..
            } => {
                if !be.dynamic {
                    return Err(
                        "Backend must use a dynamic load balancing to support dynamic servers."
                            .into(),
                    );
                }
                if be.servers.iter().any(|s| s.name == *server) {
                    return Err("Already exists a server with the same name in backend.".into());
                }
                let id = be.servers.iter().map(|s| s.id).max().unwrap_or(0) + 1;
                be.servers.push(ObservedServer {
                    id,
                    name: server.clone(),
                    addr: *addr,
                    port: *port,
                    op_state: 2,
                    admin_state: admin::FMAINT,
                    uweight: *weight,
                    iweight: *weight,
                });
            }
            Command::EnableHealth { server, .. } => {
                find(be, server)?;
            }
            Command::DelServer { server, .. } => {
                let i = find(be, server)?;
                if !be.servers[i].in_maint() {
                    return Err("Only servers in maintenance mode can be deleted.".into());
                }
                be.servers.remove(i);
            }
            _ => unreachable!("filtered above"),
        }
        Ok(())
    }

    /// What `show servers state` would print, parsed.
    pub fn observe(&self) -> ObservedServers {
        ObservedServers {
            backends: self
                .backends
                .iter()
                .enumerate()
                .map(|(i, (name, b))| {
                    (
                        name.clone(),
                        ObservedBackend {
                            id: i as u32 + 1,
                            servers: b.servers.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}
