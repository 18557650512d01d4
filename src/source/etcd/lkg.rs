//! The etcd source's last-known-good cache, written off the async threads
//! (docs/etcd.md, "Last-known-good cache").
//!
//! The incremental path never assembles the document, and assembling
//! 20,000 servers costs milliseconds, so the cache is not written from the
//! bytes of each revision. Instead a thread keeps its own copy of the keys
//! (a second [`Store`], fed the same listings and watch events as the
//! watcher's; the values are shared `Bytes`). When the daemon has applied
//! revision R it asks for R ([`Writer::request`], through the
//! [`DeferredCache`] of the accepted document); the thread brings its copy
//! to R — never past it, so what it writes is exactly the applied revision
//! —, assembles the document and writes it atomically.
//!
//! Requests are coalesced: the thread waits until the feed has been quiet
//! for [`SETTLE`] (at most [`MAX_DELAY`] after the first request), then
//! writes the newest requested revision once. A crash in between leaves the
//! previous file, an older but valid document (the write is a rename).
//!
//! The copy waits at the newest requested revision, so events past it are
//! queued; while the daemon applies nothing (HAProxy refusing every
//! document, say) the queue could grow without end, so past
//! [`MAX_QUEUED`] events the copy catches up with the feed, and a request
//! for a revision it has passed is dropped (the next applied revision is
//! written instead).
//!
//! [`Mirror`] is the pure part (feed, request, what to write); the thread
//! only receives, waits and writes.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::store::{Event, Store};
use crate::source::DeferredCache;

/// How long the feed must be quiet before a requested write happens.
pub const SETTLE: Duration = Duration::from_millis(200);
/// The longest a requested write waits for the feed to settle.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// Queued events past the requested revision before the copy catches up.
pub const MAX_QUEUED: usize = 100_000;

/// One message to the cache thread.
#[derive(Debug)]
pub enum Feed {
    /// A full listing at a revision.
    Reset {
        revision: u64,
        kvs: Vec<(String, Bytes)>,
    },
    /// The events of one watch response.
    Apply(Vec<Event>),
    /// The daemon applied this revision: write it.
    Write(u64),
}

/// The thread's copy of the keys and the write it owes.
#[derive(Debug)]
pub struct Mirror {
    store: Store,
    max_document_bytes: usize,
    /// Feed not applied yet (past the requested revision).
    queue: VecDeque<Feed>,
    queued_events: usize,
    /// The newest requested revision.
    wanted: Option<u64>,
    /// The revision last written.
    written: Option<u64>,
}

/// The revision a feed message brings the copy to (`None`: a request).
fn revision_of(f: &Feed) -> Option<u64> {
    match f {
        Feed::Reset { revision, .. } => Some(*revision),
        Feed::Apply(events) => events.iter().map(|e| e.revision).max(),
        Feed::Write(_) => None,
    }
}

impl Mirror {
    pub fn new(max_document_bytes: usize) -> Self {
        Mirror {
            store: Store::new(max_document_bytes),
            max_document_bytes,
            queue: VecDeque::new(),
            queued_events: 0,
            wanted: None,
            written: None,
        }
    }

    /// Takes one message: a request is noted, the feed is queued.
    pub fn push(&mut self, f: Feed) {
        match f {
            Feed::Write(r) => self.wanted = self.wanted.max(Some(r)),
            Feed::Apply(events) if events.is_empty() => {}
            feed => {
                if let Feed::Apply(e) = &feed {
                    self.queued_events += e.len();
                }
                self.queue.push_back(feed);
            }
        }
        if self.queued_events > MAX_QUEUED {
            self.catch_up(u64::MAX);
        }
    }

    /// True when a requested revision has not been written yet.
    pub fn owed(&self) -> bool {
        self.wanted.is_some_and(|w| Some(w) > self.written)
    }

    /// Applies the queued feed up to revision `upto` (inclusive).
    fn catch_up(&mut self, upto: u64) {
        while let Some(f) = self.queue.front() {
            if revision_of(f).is_some_and(|r| r > upto) {
                break;
            }
            match self.queue.pop_front() {
                Some(Feed::Reset { revision, kvs }) => self.store.reset(revision, kvs),
                Some(Feed::Apply(events)) => {
                    self.queued_events -= events.len();
                    self.store.apply(&events);
                }
                _ => {}
            }
        }
        // The record of changed keys is the watcher's business, not ours.
        let _ = self.store.take_changes();
    }

    /// The document to write now, if one is owed: `(revision, bytes)`. A
    /// request for a revision the copy cannot be at (passed, or not fed)
    /// is dropped.
    pub fn due(&mut self) -> Option<(u64, Vec<u8>)> {
        if !self.owed() {
            return None;
        }
        let wanted = self.wanted?;
        self.catch_up(wanted);
        self.written = Some(wanted);
        if self.store.revision() != wanted {
            debug!(
                wanted,
                copy = self.store.revision(),
                "cache request for a revision the copy is not at; skipped"
            );
            return None;
        }
        match self.store.document(self.max_document_bytes) {
            Ok((raw, _)) => Some((wanted, raw)),
            Err(e) => {
                warn!(revision = wanted, error = %e.message, "the applied etcd revision does not assemble; cache not written");
                None
            }
        }
    }
}

/// The sending side: feeds the thread and hands out [`DeferredCache`]s.
#[derive(Clone)]
pub struct Writer {
    tx: Sender<Feed>,
}

impl Writer {
    /// Starts the cache thread for `path`. It ends when every `Writer` and
    /// every [`DeferredCache`] of it is dropped (after writing what it owes).
    pub fn spawn(path: PathBuf, max_document_bytes: usize) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("lb-etcd-cache".into())
            .spawn(move || run(rx, path, Mirror::new(max_document_bytes)))?;
        Ok(Writer { tx })
    }

    /// Sends one message; a stopped thread is not an error of the source.
    pub fn send(&self, f: Feed) {
        let _ = self.tx.send(f);
    }

    /// Asks for `revision` to be written (returns at once).
    pub fn request(&self, revision: u64) {
        self.send(Feed::Write(revision));
    }

    /// The cache handle of an accepted revision.
    pub fn deferred(&self, revision: u64) -> DeferredCache {
        let me = self.clone();
        DeferredCache::new(revision, Arc::new(move |r| me.request(r)))
    }
}

/// The thread: receive, wait for the feed to settle when a write is owed,
/// write.
fn run(rx: Receiver<Feed>, path: PathBuf, mut mirror: Mirror) {
    loop {
        let Ok(first) = rx.recv() else {
            return;
        };
        mirror.push(first);
        if !mirror.owed() {
            continue;
        }
        let deadline = crate::clock::now() + MAX_DELAY;
        let mut open = true;
        while let Some(left) = deadline.checked_duration_since(crate::clock::now()) {
            match rx.recv_timeout(left.min(SETTLE)) {
                Ok(f) => mirror.push(f),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if let Some((revision, raw)) = mirror.due() {
            match crate::source::store_cache(&path, &raw) {
                Ok(()) => {
                    info!(revision, bytes = raw.len(), cache = %path.display(), "wrote the last-known-good cache")
                }
                Err(error) => {
                    warn!(%error, cache = %path.display(), "writing the last-known-good cache failed")
                }
            }
        }
        if !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::etcd::store::Change;

    fn listing() -> Vec<(String, Bytes)> {
        vec![
            (
                "group".into(),
                Bytes::from_static(br#"{"schema":1,"group":"g"}"#),
            ),
            ("pools/p".into(), Bytes::from_static(br#"{"name":"p"}"#)),
        ]
    }

    fn server(revision: u64, port: u64) -> Feed {
        Feed::Apply(vec![Event {
            revision,
            change: Change::Put {
                key: "servers/p/a".into(),
                value: Bytes::from(format!(r#"{{"name":"a","port":{port}}}"#)),
            },
        }])
    }

    fn port_and_revision(raw: &[u8]) -> (u64, u64) {
        let v: serde_json::Value = serde_json::from_slice(raw).unwrap();
        (
            v["pools"][0]["servers"][0]["port"].as_u64().unwrap(),
            v["revision"].as_u64().unwrap(),
        )
    }

    #[test]
    fn a_burst_writes_once_the_newest_requested_revision_and_never_past_it() {
        let mut m = Mirror::new(1 << 20);
        m.push(Feed::Reset {
            revision: 10,
            kvs: listing(),
        });
        for r in 11..=20 {
            m.push(server(r, r));
        }
        // Applied 12, then 15; 16..20 are not applied yet.
        m.push(Feed::Write(12));
        m.push(Feed::Write(15));
        let (revision, raw) = m.due().expect("a write is owed");
        assert_eq!(revision, 15);
        assert_eq!(port_and_revision(&raw), (15, 15));
        assert_eq!(m.due(), None, "written once");
        // An older request after a newer write is no write.
        m.push(Feed::Write(13));
        assert_eq!(m.due(), None);
        m.push(Feed::Write(20));
        assert_eq!(port_and_revision(&m.due().unwrap().1), (20, 20));
    }

    #[test]
    fn a_relisting_replaces_the_copy_and_an_unreachable_revision_is_skipped() {
        let mut m = Mirror::new(1 << 20);
        m.push(Feed::Reset {
            revision: 10,
            kvs: listing(),
        });
        m.push(server(11, 1));
        m.push(Feed::Reset {
            revision: 30,
            kvs: listing(),
        });
        m.push(server(31, 7));
        m.push(Feed::Write(31));
        assert_eq!(port_and_revision(&m.due().unwrap().1), (7, 31));
        // A request for a revision that was never fed (between listings).
        m.push(Feed::Write(35));
        assert_eq!(m.due(), None);
        assert!(!m.owed());
    }

    #[test]
    fn a_long_queue_catches_up_and_drops_requests_it_passed() {
        let mut m = Mirror::new(64 << 20);
        m.push(Feed::Reset {
            revision: 1,
            kvs: listing(),
        });
        let n = MAX_QUEUED as u64 + 5;
        for r in 2..=n {
            m.push(server(r, r % 60000 + 1));
        }
        assert!(m.queue.len() < 10, "caught up: {}", m.queue.len());
        m.push(Feed::Write(2));
        assert_eq!(m.due(), None, "revision 2 was passed");
        m.push(server(n + 1, 9));
        m.push(Feed::Write(n + 1));
        assert_eq!(port_and_revision(&m.due().unwrap().1), (9, n + 1));
    }

    #[test]
    fn the_thread_writes_the_file_and_ends_with_its_senders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache/last-good.json");
        let w = Writer::spawn(path.clone(), 1 << 20).unwrap();
        w.send(Feed::Reset {
            revision: 10,
            kvs: listing(),
        });
        w.send(server(11, 5));
        let d = w.deferred(11);
        drop(w);
        d.store();
        drop(d);
        // Every sender is gone: the thread writes what it owes and ends;
        // wait for the file, bounded.
        let deadline = crate::clock::now() + Duration::from_secs(10);
        while !path.exists() && crate::clock::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let raw = std::fs::read(&path).expect("cache written");
        assert_eq!(port_and_revision(&raw), (5, 11));
    }
}
