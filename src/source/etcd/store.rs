//! The in-memory copy of the keys under the prefix, as of one etcd revision.
//!
//! Pure. The watcher feeds it a full listing ([`Store::reset`]) or the
//! events of a watch response ([`Store::apply`]); it applies them
//! transaction by transaction (all events of one revision together, in
//! revision order), skips any revision it already holds (so a resumed watch
//! can never apply a revision twice), and checks each value as it arrives
//! (`layout::check_value`), keeping the error instead of the value for a bad
//! one. The store always mirrors etcd, bad values included: a later
//! revision that fixes the key makes the document whole again.
//! [`Store::document`] assembles the schema-1 document of the current
//! revision or says which key is at fault.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::layout::{self, AssembleError, Index, Slot};

/// One change of one key (the prefix already removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put { key: String, value: Bytes },
    Delete { key: String },
}

/// One event as the watch delivers it: the revision of its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub revision: u64,
    pub change: Change,
}

/// A key's value: checked, or why it is not usable.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Ok(Slot, Bytes),
    Bad(String),
}

/// What [`Store::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Transactions (revisions) applied.
    pub revisions: usize,
    /// Events applied.
    pub events: usize,
    /// Events skipped because their revision was already held.
    pub skipped: usize,
}

/// The keys under the prefix at [`Store::revision`].
#[derive(Debug, Clone, Default)]
pub struct Store {
    entries: BTreeMap<String, Entry>,
    revision: u64,
    /// Sum of key and value sizes of every entry (bounded by the caller's cap).
    bytes: usize,
    max_value_bytes: usize,
    /// Keys whose entry changed (put with another value, or deleted)
    /// since the last [`Store::take_changes`]; `None`
    /// after a [`Store::reset`] (everything may have changed).
    changed: Option<BTreeSet<String>>,
}

/// What changed since the last [`Store::take_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// A re-listing replaced everything.
    All,
    /// These relative keys were put or deleted.
    Keys(BTreeSet<String>),
}

impl Store {
    /// An empty store; values over `max_value_bytes` are kept as errors.
    pub fn new(max_value_bytes: usize) -> Self {
        Store {
            max_value_bytes,
            ..Store::default()
        }
    }

    /// The etcd revision the store reflects (0 before the first listing).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replaces everything with a listing taken at `revision`.
    pub fn reset(&mut self, revision: u64, kvs: impl IntoIterator<Item = (String, Bytes)>) {
        self.entries.clear();
        self.changed = None;
        self.bytes = 0;
        for (key, value) in kvs {
            let _ = self.put(key, &value);
        }
        self.revision = revision;
    }

    /// Applies the events of one watch response, transaction by
    /// transaction. Events of a revision the store already holds are
    /// skipped; the response is trusted to hold whole transactions (etcd
    /// never splits one unless asked to fragment, which the agent does not).
    pub fn apply(&mut self, events: &[Event]) -> Applied {
        let mut done = Applied::default();
        let mut i = 0;
        while i < events.len() {
            let revision = events[i].revision;
            let end = events[i..]
                .iter()
                .position(|e| e.revision != revision)
                .map_or(events.len(), |n| i + n);
            if revision <= self.revision {
                done.skipped += end - i;
            } else {
                for e in &events[i..end] {
                    // A put of the value a key already holds (every
                    // `publish` rewrites the group key) is no change.
                    let (key, changed) = match &e.change {
                        Change::Put { key, value } => (key, self.put(key.clone(), value)),
                        Change::Delete { key } => (key, self.delete(key)),
                    };
                    if let (true, Some(c)) = (changed, self.changed.as_mut()) {
                        c.insert(key.clone());
                    }
                }
                self.revision = revision;
                done.revisions += 1;
                done.events += end - i;
            }
            i = end;
        }
        done
    }

    /// Puts `key`; false when it already held exactly this.
    fn put(&mut self, key: String, value: &[u8]) -> bool {
        let entry = match layout::classify(&key) {
            Ok(slot) => match layout::check_value(&slot, value, self.max_value_bytes) {
                Ok(bytes) => Entry::Ok(slot, bytes),
                Err(e) => Entry::Bad(e),
            },
            Err(e) => Entry::Bad(e),
        };
        if self.entries.get(&key) == Some(&entry) {
            return false;
        }
        self.delete(&key);
        self.bytes += key.len() + entry_size(&entry);
        self.entries.insert(key, entry);
        true
    }

    /// Deletes `key`; false when it was absent.
    fn delete(&mut self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some(old) => {
                self.bytes -= key.len() + entry_size(&old);
                true
            }
            None => false,
        }
    }

    /// The keys changed since the last call (all of them after a reset),
    /// and starts a new record.
    pub fn take_changes(&mut self) -> Changes {
        match self.changed.replace(BTreeSet::new()) {
            Some(keys) => Changes::Keys(keys),
            None => Changes::All,
        }
    }

    /// What `key` holds now: `None` when absent, `Err` for a bad value.
    pub fn slot(&self, key: &str) -> Option<Result<&Slot, &str>> {
        self.entries.get(key).map(|e| match e {
            Entry::Ok(slot, _) => Ok(slot),
            Entry::Bad(m) => Err(m.as_str()),
        })
    }

    /// Pool `pool` as it appears in the assembled document (its servers
    /// inside), from its key and its server keys only: O(pool), not
    /// O(document). `None` when the pool key is absent or a value is bad.
    pub fn pool_body(&self, pool: &str) -> Option<Vec<u8>> {
        let Some(Entry::Ok(_, value)) = self.entries.get(&format!("pools/{pool}")) else {
            return None;
        };
        let from = format!("servers/{pool}/");
        let mut servers = Vec::new();
        for (k, e) in self.entries.range(from.clone()..) {
            if !k.starts_with(&from) {
                break;
            }
            match e {
                Entry::Ok(Slot::Server { .. }, b) => servers.push((k.as_str(), b)),
                _ => return None,
            }
        }
        let mut out = Vec::with_capacity(
            value.len() + servers.iter().map(|s| s.1.len() + 1).sum::<usize>() + 16,
        );
        layout::pool_with_servers(&mut out, value, &servers);
        Some(out)
    }

    /// Bytes held (keys and checked values).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The schema-1 document of the current revision, or the first key at
    /// fault. `max_bytes` caps the whole document.
    pub fn document(&self, max_bytes: usize) -> Result<(Vec<u8>, Index), AssembleError> {
        if let Some((key, Entry::Bad(message))) = self
            .entries
            .iter()
            .find(|(_, e)| matches!(e, Entry::Bad(_)))
        {
            return Err(AssembleError {
                key: Some(key.clone()),
                message: message.clone(),
            });
        }
        if self.bytes > max_bytes {
            return Err(AssembleError {
                key: None,
                message: format!(
                    "{} bytes under the prefix exceed max_document_size ({max_bytes} bytes)",
                    self.bytes
                ),
            });
        }
        let values = self.entries.iter().filter_map(|(k, e)| match e {
            Entry::Ok(slot, b) => Some((k.as_str(), slot, b)),
            Entry::Bad(_) => None,
        });
        layout::assemble(self.revision, values)
    }
}

fn entry_size(e: &Entry) -> usize {
    match e {
        Entry::Ok(_, b) => b.len(),
        Entry::Bad(m) => m.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: u64, key: &str, value: &str) -> Event {
        Event {
            revision,
            change: Change::Put {
                key: key.into(),
                value: Bytes::copy_from_slice(value.as_bytes()),
            },
        }
    }

    fn del(revision: u64, key: &str) -> Event {
        Event {
            revision,
            change: Change::Delete { key: key.into() },
        }
    }

    fn base() -> Store {
        let mut s = Store::new(1 << 20);
        s.reset(
            10,
            [
                (
                    "group".to_string(),
                    Bytes::from_static(b"{\"schema\":1,\"group\":\"g\"}"),
                ),
                (
                    "pools/p".to_string(),
                    Bytes::from_static(b"{\"name\":\"p\"}"),
                ),
                (
                    "servers/p/a".to_string(),
                    Bytes::from_static(b"{\"name\":\"a\",\"port\":1}"),
                ),
            ],
        );
        s
    }

    fn doc(s: &Store) -> serde_json::Value {
        serde_json::from_slice(&s.document(1 << 20).unwrap().0).unwrap()
    }

    #[test]
    fn transactions_apply_in_order_and_set_the_revision() {
        let mut s = base();
        let a = s.apply(&[
            put(11, "servers/p/b", "{\"name\":\"b\",\"port\":2}"),
            put(11, "servers/p/a", "{\"name\":\"a\",\"port\":3}"),
            del(12, "servers/p/b"),
        ]);
        assert_eq!(
            a,
            Applied {
                revisions: 2,
                events: 3,
                skipped: 0
            }
        );
        assert_eq!(s.revision(), 12);
        let d = doc(&s);
        assert_eq!(d["revision"], 12);
        assert_eq!(
            d["pools"][0]["servers"],
            serde_json::json!([{"name":"a","port":3}])
        );
    }

    #[test]
    fn revisions_already_held_are_never_applied_again() {
        let mut s = base();
        s.apply(&[put(11, "servers/p/a", "{\"name\":\"a\",\"port\":5}")]);
        // A resumed watch replays 11 (and 10) before 12: only 12 applies.
        let a = s.apply(&[
            put(10, "servers/p/a", "{\"name\":\"a\",\"port\":0}"),
            put(11, "servers/p/a", "{\"name\":\"a\",\"port\":0}"),
            put(12, "pools/q", "{\"name\":\"q\"}"),
        ]);
        assert_eq!(
            a,
            Applied {
                revisions: 1,
                events: 1,
                skipped: 2
            }
        );
        let d = doc(&s);
        assert_eq!(d["pools"][0]["servers"][0]["port"], 5);
        assert_eq!(d["pools"][1]["name"], "q");
    }

    #[test]
    fn a_bad_value_spoils_the_document_until_fixed_or_deleted() {
        let mut s = base();
        s.apply(&[put(11, "pools/p", "{\"name\": nope")]);
        let e = s.document(1 << 20).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("pools/p"));
        assert!(e.message.contains("invalid JSON"), "{}", e.message);
        s.apply(&[put(12, "pools/p", "{\"name\":\"p\",\"mode\":\"tcp\"}")]);
        assert_eq!(doc(&s)["pools"][0]["mode"], "tcp");
        s.apply(&[put(13, "maps/x", "[]")]);
        assert!(s.document(1 << 20).is_err());
        s.apply(&[del(14, "maps/x")]);
        assert_eq!(doc(&s)["revision"], 14);
    }

    #[test]
    fn size_is_tracked_and_capped() {
        let mut s = base();
        let before = s.bytes();
        s.apply(&[put(
            11,
            "maps/m",
            &format!(
                "{{\"name\":\"m\",\"entries\":{{\"k\":\"{}\"}}}}",
                "v".repeat(1000)
            ),
        )]);
        assert!(s.bytes() > before + 1000);
        let e = s.document(before + 500).unwrap_err();
        assert!(
            e.message.contains("exceed max_document_size"),
            "{}",
            e.message
        );
        s.apply(&[del(12, "maps/m")]);
        assert_eq!(s.bytes(), before);
        // Oversized single value: kept as an error, not as bytes.
        let mut small = Store::new(16);
        small.reset(1, [("pools/p".to_string(), Bytes::from(vec![b' '; 1000]))]);
        assert!(small.bytes() < 200);
        assert!(small
            .document(1 << 20)
            .unwrap_err()
            .message
            .contains("exceeds"));
    }

    #[test]
    fn only_real_changes_are_recorded() {
        let mut s = base();
        assert_eq!(s.take_changes(), Changes::All);
        s.apply(&[
            put(11, "group", "{\"schema\":1,\"group\":\"g\"}"),
            del(11, "servers/p/none"),
            put(11, "servers/p/a", "{\"name\":\"a\",\"port\":2}"),
        ]);
        assert_eq!(s.revision(), 11);
        assert_eq!(
            s.take_changes(),
            Changes::Keys(["servers/p/a".to_string()].into())
        );
        s.apply(&[del(12, "servers/p/a")]);
        assert_eq!(
            s.take_changes(),
            Changes::Keys(["servers/p/a".to_string()].into())
        );
    }

    #[test]
    fn reset_replaces_everything() {
        let mut s = base();
        s.apply(&[put(11, "pools/q", "{\"name\":\"q\"}")]);
        s.reset(20, [("group".to_string(), Bytes::from_static(b"{}"))]);
        assert_eq!((s.revision(), s.len()), (20, 1));
        let d = doc(&s);
        assert_eq!(d["pools"], serde_json::json!([]));
        assert_eq!(d["revision"], 20);
    }
}
