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
//! (finding a pool's index among the pools is a walk over the pool names),
//! plus one copy of the state when the previous one is still held (the
//! watcher's case: the daemon holds the document it applied).

use std::collections::BTreeSet;
use std::sync::Arc;

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

/// The fast path alone: the last accepted state and whether it mirrors the
/// store. A caller that runs the full path itself (the watcher runs it with
/// the daemon's parser, off the async threads) reports its outcome with
/// [`Patcher::accepted`] or [`Patcher::rejected`]; [`Incremental`] is the
/// two together.
#[derive(Debug, Clone, Default)]
pub struct Patcher {
    max_document_bytes: usize,
    state: Option<Arc<DesiredState>>,
    /// True when `state` is the store's document at its last revision.
    synced: bool,
}

impl Patcher {
    pub fn new(max_document_bytes: usize) -> Self {
        Patcher {
            max_document_bytes,
            state: None,
            synced: false,
        }
    }

    /// The last accepted state (kept serving across rejections).
    pub fn state(&self) -> Option<&Arc<DesiredState>> {
        self.state.as_ref()
    }

    /// The full path accepted `state`: it is the store's document at the
    /// store's revision.
    pub fn accepted(&mut self, state: Arc<DesiredState>) {
        self.state = Some(state);
        self.synced = true;
    }

    /// The full path rejected the store's revision: the state keeps
    /// serving but no longer mirrors the store, so the next revision takes
    /// the full path.
    pub fn rejected(&mut self) {
        self.synced = false;
    }

    /// The store's revision as a patch of the accepted state, or `None`
    /// (nothing changed) when the fast path does not apply.
    ///
    /// The new state shares nothing with the previous one while that one
    /// is still held elsewhere (`Arc::make_mut` copies it): the daemon
    /// keeps the previous document until the new one is applied.
    pub fn patch(&mut self, store: &Store, changes: &Changes) -> Option<Arc<DesiredState>> {
        let Changes::Keys(keys) = changes else {
            return None;
        };
        let state = self.state.as_mut().filter(|_| self.synced)?;
        let new = changed_pools(state, store, keys, self.max_document_bytes)?;
        let patched = Arc::make_mut(state);
        for p in new {
            patched.pools.insert(p.name.clone(), Arc::new(p));
        }
        patched.revision = store.revision();
        Some(Arc::clone(state))
    }
}

/// The re-validated pools of a change of server keys only, or `None` when
/// the change is of another kind or a pool does not validate alone.
fn changed_pools(
    state: &DesiredState,
    store: &Store,
    keys: &BTreeSet<String>,
    max_document_bytes: usize,
) -> Option<Vec<Pool>> {
    if store.bytes() > max_document_bytes {
        return None;
    }
    let mut touched: BTreeSet<&str> = BTreeSet::new();
    for key in keys {
        let slot = match store.slot(key) {
            Some(Ok(slot)) => slot.clone(),
            Some(Err(_)) => return None,
            // Deleted: what the key was.
            None => layout::classify(key).ok()?,
        };
        match slot {
            Slot::Server { .. } => {
                let pool = key["servers/".len()..].split('/').next().unwrap_or("");
                if keys.contains(&format!("pools/{pool}")) {
                    return None;
                }
                touched.insert(pool);
            }
            Slot::Unknown => {}
            Slot::Group | Slot::Object { .. } => return None,
        }
    }
    let mut new: Vec<Pool> = Vec::with_capacity(touched.len());
    for pool in touched {
        let name = Name::try_new(pool).ok()?;
        let index = state.pools.keys().position(|n| *n == name)?;
        let inside = format!("pools[{index}].servers[");
        if state.warnings.iter().any(|w| w.starts_with(&inside)) {
            return None;
        }
        let body = store.pool_body(pool)?;
        match revalidate_pool(&body, state.availability_zones.as_ref(), &state.logic) {
            Some(p) if p.name == name => new.push(p),
            _ => return None,
        }
    }
    Some(new)
}

/// The fast path and the full path together, with the parser.
pub struct Incremental {
    parser: Box<Parser>,
    prefix: String,
    patcher: Patcher,
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
            prefix: prefix.to_string(),
            patcher: Patcher::new(max_document_bytes),
            stats: Stats::default(),
        }
    }

    /// The last accepted state (kept serving across rejections).
    pub fn state(&self) -> Option<&DesiredState> {
        self.patcher.state().map(|s| &**s)
    }

    /// Brings the state to the store's revision: `Ok` with the path taken,
    /// or the full path's rejection (the previous state is kept).
    pub fn update(&mut self, store: &Store, changes: &Changes) -> Result<Path, String> {
        if self.patcher.patch(store, changes).is_some() {
            self.stats.incremental += 1;
            return Ok(Path::Incremental);
        }
        self.stats.full += 1;
        let max = self.patcher.max_document_bytes;
        match full(store, &*self.parser, max, &self.prefix) {
            Ok(d) => {
                self.patcher.accepted(Arc::new(d));
                Ok(Path::Full)
            }
            Err(e) => {
                self.patcher.rejected();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
