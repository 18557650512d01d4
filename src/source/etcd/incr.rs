//! Incremental validation of the store's document, keyed on the changed keys.
//!
//! Pure. [`Incremental::update`] takes the keys changed since the last call
//! ([`Store::take_changes`]) and either patches the last accepted
//! [`DesiredState`] in place — re-validating only the pools whose servers
//! changed — or runs the full path (assemble the whole document, parse and
//! validate it) when the change is of another kind. The full path stays the
//! reference: the property test below checks that after every revision the
//! result (accepted state, or rejection message) is the one the full path
//! gives on the assembled document.
//!
//! The fast path applies only when all of these hold, otherwise the full
//! path runs (so its acceptance and its error messages are the full path's
//! by construction):
//! - the last revision was accepted (the state mirrors the store);
//! - every changed key is a server key (`servers/<pool>/<name>`, put or
//!   deleted) or a key this version ignores, and its value is usable;
//! - each touched pool exists, its own key did not change (so its name,
//!   mode, balance, routing and stickiness — all that frontends, logic
//!   rendering and the other pools see of it — are unchanged);
//! - the re-validated pool has no problem and no unknown server field, and
//!   the state had no warning inside that pool's servers (their indices
//!   would shift);
//! - the store's bytes stay under `max_document_size`.
//!
//! Cost of the fast path: O(changed pools' servers + log keys + pools)
//! (finding a pool's index among the pools is a walk over the pool names).

use std::collections::BTreeSet;

use super::layout::{self, Slot};
use super::store::{Changes, Store};
use crate::model::validate::{revalidate_pool, ValidationErrors};
use crate::model::{DesiredState, Name, Pool};

/// The full path's parser: document bytes → state (the agent's own
/// validator with its host facts and VIP policy).
pub type Parser = dyn Fn(&[u8]) -> Result<DesiredState, ValidationErrors> + Send + Sync;

/// How the last update was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Patched in place: only the changed pools were re-validated.
    Incremental,
    /// The whole document was assembled, parsed and validated.
    Full,
}

/// Counters of the paths taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub incremental: u64,
    pub full: u64,
}

/// The last accepted state and whether it mirrors the store.
pub struct Incremental {
    parser: Box<Parser>,
    max_document_bytes: usize,
    prefix: String,
    state: Option<DesiredState>,
    /// True when `state` is the store's document at its last revision.
    synced: bool,
    pub stats: Stats,
}

/// The full path on the store as it is: what the agent delivered before
/// this module, and the reference of the property test. The error names
/// the etcd key at fault (`key <prefix>servers/web/a: pools[0]…`).
pub fn full(
    store: &Store,
    parser: &Parser,
    max: usize,
    prefix: &str,
) -> Result<DesiredState, String> {
    let (raw, index) = store.document(max).map_err(|e| match e.key {
        Some(k) => format!("key {prefix}{k}: {}", e.message),
        None => e.message,
    })?;
    parser(&raw).map_err(|e| index.annotate(prefix, &e.to_string()))
}

impl Incremental {
    pub fn new(parser: Box<Parser>, max_document_bytes: usize, prefix: &str) -> Self {
        Incremental {
            parser,
            max_document_bytes,
            prefix: prefix.to_string(),
            state: None,
            synced: false,
            stats: Stats::default(),
        }
    }

    /// The last accepted state (kept serving across rejections).
    pub fn state(&self) -> Option<&DesiredState> {
        self.state.as_ref()
    }

    /// Brings the state to the store's revision: `Ok` with the path taken,
    /// or the full path's rejection (the previous state is kept).
    pub fn update(&mut self, store: &Store, changes: &Changes) -> Result<Path, String> {
        if let Changes::Keys(keys) = changes {
            if self.try_fast(store, keys) {
                self.stats.incremental += 1;
                return Ok(Path::Incremental);
            }
        }
        self.stats.full += 1;
        match full(store, &*self.parser, self.max_document_bytes, &self.prefix) {
            Ok(d) => {
                self.state = Some(d);
                self.synced = true;
                Ok(Path::Full)
            }
            Err(e) => {
                self.synced = false;
                Err(e)
            }
        }
    }

    /// The fast path; `false` (nothing changed) when it does not apply.
    fn try_fast(&mut self, store: &Store, keys: &BTreeSet<String>) -> bool {
        let Some(state) = self.state.as_mut().filter(|_| self.synced) else {
            return false;
        };
        if store.bytes() > self.max_document_bytes {
            return false;
        }
        let mut touched: BTreeSet<&str> = BTreeSet::new();
        for key in keys {
            let slot = match store.slot(key) {
                Some(Ok(slot)) => slot.clone(),
                Some(Err(_)) => return false,
                // Deleted: what the key was.
                None => match layout::classify(key) {
                    Ok(slot) => slot,
                    Err(_) => return false,
                },
            };
            match slot {
                Slot::Server { .. } => {
                    let pool = key["servers/".len()..].split('/').next().unwrap_or("");
                    if keys.contains(&format!("pools/{pool}")) {
                        return false;
                    }
                    touched.insert(pool);
                }
                Slot::Unknown => {}
                Slot::Group | Slot::Object { .. } => return false,
            }
        }
        let mut new: Vec<Pool> = Vec::with_capacity(touched.len());
        for pool in touched {
            let Ok(name) = Name::try_new(pool) else {
                return false;
            };
            let Some(index) = state.pools.keys().position(|n| *n == name) else {
                return false;
            };
            let inside = format!("pools[{index}].servers[");
            if state.warnings.iter().any(|w| w.starts_with(&inside)) {
                return false;
            }
            let Some(body) = store.pool_body(pool) else {
                return false;
            };
            match revalidate_pool(&body, state.availability_zones.as_ref(), &state.logic) {
                Some(p) if p.name == name => new.push(p),
                _ => return false,
            }
        }
        for p in new {
            state.pools.insert(p.name.clone(), p);
        }
        state.revision = store.revision();
        true
    }
}

#[cfg(test)]
mod tests;
