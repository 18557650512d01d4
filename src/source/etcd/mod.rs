//! The `etcd://` source: an etcd v3 cluster holding one key per object
//! under a prefix (layout in `layout`, docs/etcd.md).
//!
//! The watcher range-gets the prefix (the document revision is the etcd
//! revision of that listing), then watches the prefix from revision + 1 and
//! applies each watch response to an in-memory `store::Store` transaction by
//! transaction. After every listing and every response that applied
//! something, the store is assembled into a schema-1 document and handed to
//! the daemon's parser (`model::validate`) off the async threads; a document
//! that fails is rejected whole (the previous one keeps serving) and the
//! status names the etcd key at fault. The recovery rules (re-list on
//! compaction, resume on another endpoint after a disconnect, fall back to
//! the cache at boot) are the pure `policy::next`; this module only carries
//! them out.
//!
//! Output is the same as every source's: a `watch` of [`Accepted`]
//! documents and a [`SourceStatus`], whose `stream` part holds the endpoint,
//! the store's revision and the watch state. A Consul source would be one
//! more module shaped like this one: its own layout, store and policy, the
//! same outputs.
//!
//! One endpoint is used at a time (not the client's load balancer), so the
//! status can say which member the agent is connected to and a broken watch
//! moves to the next member deterministically. Requests carry
//! `require-leader`, so a member cut off from the quorum cancels the watch
//! instead of serving stale revisions silently; HTTP/2 keep-alives detect a
//! dead connection within seconds.

pub mod client;
pub mod incr;
pub mod layout;
pub mod lkg;
pub mod policy;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{EventType, GetOptions, WatchOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{debug, info, warn};

use super::poll::Wiring;
use super::schedule::{backoff_delay, Tuning};
use super::{Accepted, CacheBody, Document, SourceState, StreamStatus};
use crate::config::{EtcdUrl, SourceConfig};
use incr::Patcher;
use policy::{Delay, Outcome, Progress, Step};
use store::{Change, Event, Store};

pub use client::{connect, Credentials};

/// Extra room above `max_document_size` for gRPC framing of one response.
const MESSAGE_OVERHEAD: usize = 4 << 20;

/// Runs the etcd watcher until `wiring.cancel` fires.
pub(crate) async fn run<T: Document>(
    url: EtcdUrl,
    cfg: SourceConfig,
    tuning: Tuning,
    wiring: Wiring<T>,
) {
    let creds = Credentials::from_config(&cfg);
    let lkg = lkg::Writer::spawn(cfg.cache.clone(), tuning.max_document_bytes)
        .inspect_err(|error| warn!(%error, "cannot start the cache thread; the last-known-good cache will not be written"))
        .ok();
    let mut w = Watcher {
        store: Store::new(tuning.max_document_bytes),
        patcher: Patcher::new(tuning.max_document_bytes),
        lkg,
        url,
        creds,
        tuning,
        cache: cfg.cache.clone(),
        request_timeout: cfg.long_poll + cfg.connect_timeout,
        wiring,
        client: None,
        accepted: None,
        cache_allowed: true,
        failures: 0,
    };
    w.status(|s| {
        s.stream = Some(StreamStatus {
            endpoint: w.url.endpoints[0].clone(),
            watch_state: "connecting".into(),
            ..StreamStatus::default()
        })
    });
    let mut rng = StdRng::from_os_rng();
    let mut step = Step::List { endpoint: 0 };
    let cancel = w.wiring.cancel.clone();
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            o = w.step(step) => o,
        };
        let progress = Progress {
            endpoints: w.url.endpoints.len(),
            failures: w.failures,
            revision: w.store.revision(),
        };
        let (next, delay, failures) = policy::next(progress, step, &outcome);
        w.failures = failures;
        if policy::endpoint_of(next) != policy::endpoint_of(step) {
            w.client = None;
        }
        step = next;
        let wait = match delay {
            Delay::Now => Duration::ZERO,
            Delay::Backoff(n) => backoff_delay(&w.tuning, n, &mut rng),
        };
        if !wait.is_zero() {
            w.status(|s| {
                if let Some(st) = s.stream.as_mut() {
                    st.watch_state = "backoff".into();
                }
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// State of the watcher between steps.
struct Watcher<T> {
    store: Store,
    /// The incremental path: the last accepted state, patched in place.
    patcher: Patcher,
    /// The cache thread, fed the same keys as the store.
    lkg: Option<lkg::Writer>,
    url: EtcdUrl,
    creds: Credentials,
    tuning: Tuning,
    cache: PathBuf,
    request_timeout: Duration,
    wiring: Wiring<T>,
    /// The connected endpoint's index and client.
    client: Option<(usize, etcd_client::Client)>,
    /// Revision of the document delivered last.
    accepted: Option<u64>,
    /// Until the first listing has an outcome, a failure may fall back to the cache.
    cache_allowed: bool,
    /// Failures in a row (the policy's count).
    failures: u32,
}

impl<T: Document> Watcher<T> {
    fn status(&self, f: impl FnOnce(&mut super::SourceStatus)) {
        self.wiring.status.send_modify(f);
    }

    fn stream(&self, f: impl FnOnce(&mut StreamStatus)) {
        self.status(|s| f(s.stream.get_or_insert_with(StreamStatus::default)));
    }

    async fn step(&mut self, step: Step) -> Outcome {
        match step {
            Step::List { endpoint } => match self.list(endpoint).await {
                Ok(revision) => Outcome::Listed { revision },
                Err(error) => {
                    self.failed(&error, endpoint).await;
                    Outcome::ListFailed
                }
            },
            Step::Watch { endpoint, from } => self.watch(endpoint, from).await,
        }
    }

    async fn client(&mut self, endpoint: usize) -> Result<etcd_client::Client, String> {
        if let Some((e, c)) = &self.client {
            if *e == endpoint {
                return Ok(c.clone());
            }
        }
        let name = self.url.endpoints[endpoint].clone();
        self.stream(|st| {
            st.endpoint = name.clone();
            st.watch_state = "connecting".into();
        });
        let c = tokio::time::timeout(
            self.request_timeout,
            connect(std::slice::from_ref(&name), &self.creds),
        )
        .await
        .map_err(|_| {
            format!(
                "connecting to {name}: no answer within {:?}",
                self.request_timeout
            )
        })?
        .map_err(|e| format!("connecting to {name}: {e}"))?;
        self.client = Some((endpoint, c.clone()));
        Ok(c)
    }

    /// Range-gets the prefix; on success the store holds it and it was delivered.
    async fn list(&mut self, endpoint: usize) -> Result<u64, String> {
        let client = self.client(endpoint).await?;
        self.stream(|st| st.watch_state = "listing".into());
        let mut kv = client
            .kv_client()
            .max_decoding_message_size(self.tuning.max_document_bytes + MESSAGE_OVERHEAD);
        let prefix = self.url.prefix.clone();
        let get = kv.get(prefix.as_bytes(), Some(GetOptions::new().with_prefix()));
        let mut resp = tokio::time::timeout(self.request_timeout, get)
            .await
            .map_err(|_| {
                format!(
                    "listing {prefix}: no answer within {:?}",
                    self.request_timeout
                )
            })?
            .map_err(|e| format!("listing {prefix}: {e}"))?;
        let revision = resp.header().map_or(0, |h| h.revision()).max(0) as u64;
        let kvs: Vec<(String, Bytes)> = resp
            .take_kvs()
            .into_iter()
            .map(|kv| (self.relative(kv.key()), Bytes::copy_from_slice(kv.value())))
            .collect();
        let keys = kvs.len();
        if let Some(l) = &self.lkg {
            l.send(lkg::Feed::Reset {
                revision,
                kvs: kvs.clone(),
            });
        }
        self.store.reset(revision, kvs);
        self.cache_allowed = false;
        info!(revision, keys, endpoint = %self.url.endpoints[endpoint], "listed the etcd prefix");
        self.stream(|st| {
            st.revision = Some(revision);
            st.lists += 1;
        });
        self.mark_ok();
        self.deliver().await;
        Ok(revision)
    }

    /// Watches from `from` until the watch ends; returns how it ended.
    async fn watch(&mut self, endpoint: usize, from: u64) -> Outcome {
        let client = match self.client(endpoint).await {
            Ok(c) => c,
            Err(e) => {
                self.failed(&e, endpoint).await;
                return Outcome::WatchBroke;
            }
        };
        let mut wc = client
            .watch_client()
            .max_decoding_message_size(self.tuning.max_document_bytes + MESSAGE_OVERHEAD);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from as i64);
        let mut stream = match wc.watch(self.url.prefix.as_bytes(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                self.failed(&format!("starting the watch: {e}"), endpoint)
                    .await;
                return Outcome::WatchBroke;
            }
        };
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    self.failed("the watch stream ended", endpoint).await;
                    return Outcome::WatchBroke;
                }
                Err(e) => {
                    self.failed(&format!("watch: {e}"), endpoint).await;
                    return Outcome::WatchBroke;
                }
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    warn!(
                        from,
                        compacted = resp.compact_revision(),
                        "watch start revision compacted; re-listing"
                    );
                    self.stream(|st| st.compactions += 1);
                    return Outcome::Compacted;
                }
                let reason = format!("watch canceled by etcd: {}", resp.cancel_reason());
                self.failed(&reason, endpoint).await;
                return Outcome::WatchBroke;
            }
            if resp.created() {
                self.failures = 0;
                info!(from, endpoint = %self.url.endpoints[endpoint], "watching the etcd prefix");
                self.stream(|st| st.watch_state = "watching".into());
                self.mark_ok();
            }
            let events: Vec<Event> = resp.events().iter().filter_map(|e| self.event(e)).collect();
            if events.is_empty() {
                continue;
            }
            let applied = self.store.apply(&events);
            if let Some(l) = &self.lkg {
                l.send(lkg::Feed::Apply(events));
            }
            debug!(
                ?applied,
                revision = self.store.revision(),
                "applied watch events"
            );
            if applied.revisions > 0 {
                let revision = self.store.revision();
                self.stream(|st| {
                    st.revision = Some(revision);
                    st.transactions += applied.revisions as u64;
                    st.events += applied.events as u64;
                });
                self.mark_ok();
                self.deliver().await;
            }
        }
    }

    fn relative(&self, key: &[u8]) -> String {
        let rel = key.get(self.url.prefix.len()..).unwrap_or_default();
        String::from_utf8_lossy(rel).into_owned()
    }

    fn event(&self, e: &etcd_client::Event) -> Option<Event> {
        let kv = e.kv()?;
        let key = self.relative(kv.key());
        let revision = kv.mod_revision().max(0) as u64;
        let change = match e.event_type() {
            EventType::Put => Change::Put {
                key,
                value: Bytes::copy_from_slice(kv.value()),
            },
            EventType::Delete => Change::Delete { key },
        };
        Some(Event { revision, change })
    }

    fn mark_ok(&self) {
        self.status(|s| {
            let now = crate::clock::wall();
            s.last_success = Some(now);
            s.last_attempt = Some(now);
            if s.stream
                .as_ref()
                .is_none_or(|st| st.rejected_revision.is_none())
            {
                s.state = SourceState::Ok;
                s.error = None;
            }
            s.consecutive_failures = 0;
        });
    }

    /// A failed request or a broken watch.
    async fn failed(&mut self, error: &str, endpoint: usize) {
        let failures = self.failures.saturating_add(1);
        let state = if failures >= super::STALE_AFTER {
            SourceState::Stale
        } else {
            SourceState::Error
        };
        let name = self.url.endpoints[endpoint].clone();
        warn!(%error, endpoint = %name, failures, "etcd source failed");
        let text = format!("{name}: {error}");
        self.status(|s| {
            s.state = state;
            s.error = Some(text);
            s.consecutive_failures = failures;
            s.last_attempt = Some(crate::clock::wall());
            s.polls_error += 1;
            if let Some(st) = s.stream.as_mut() {
                st.watch_state = "disconnected".into();
            }
        });
        if self.cache_allowed && self.accepted.is_none() {
            self.cache_allowed = false;
            self.deliver_cache().await;
        }
    }

    async fn deliver_cache(&mut self) {
        let path = self.cache.clone();
        let parser = Arc::clone(&self.wiring.parser);
        let loaded = tokio::task::spawn_blocking(move || super::load_cache(&path, &parser)).await;
        match loaded {
            Ok(Ok(Some(accepted))) => {
                let revision = accepted.doc.revision();
                warn!(revision, cache = %self.cache.display(), "etcd unavailable at start; using the cached last-known-good document");
                self.accepted = Some(revision);
                self.status(|s| {
                    s.revision = Some(revision);
                    s.from_cache = true;
                    s.last_change = Some(crate::clock::wall());
                });
                self.wiring.out.send_replace(Some(Arc::new(accepted)));
            }
            Ok(Ok(None)) => {
                info!(cache = %self.cache.display(), "no cached document to fall back to")
            }
            Ok(Err(error)) => warn!(%error, "cannot use the cached document"),
            Err(error) => warn!(%error, "loading the cached document failed"),
        }
    }

    /// Brings the delivered document to the store's revision: patched in
    /// place when only servers of existing pools changed (`incr`),
    /// otherwise assembled and validated whole; delivers it if valid and
    /// newer, otherwise reports which key is at fault.
    async fn deliver(&mut self) {
        let changes = self.store.take_changes();
        let revision = self.store.revision();
        if let Some(doc) = self
            .patcher
            .patch(&self.store, &changes)
            .and_then(T::from_state)
        {
            self.stream(|st| st.revisions_incremental += 1);
            self.accept(revision, doc);
            return;
        }
        self.stream(|st| st.revisions_full += 1);
        match self.full().await {
            Ok(doc) => {
                let doc = Arc::new(doc);
                if let Some(state) = T::to_state(&doc) {
                    self.patcher.accepted(state);
                }
                self.accept(revision, doc);
            }
            Err((key, message)) => {
                self.patcher.rejected();
                self.rejected(revision, key, message);
            }
        }
    }

    /// The full path: assembles the store's document and runs the parser
    /// off the async threads. The error names the etcd key at fault.
    async fn full(&self) -> Result<T, (Option<String>, String)> {
        let prefix = &self.url.prefix;
        let (raw, index) = self
            .store
            .document(self.tuning.max_document_bytes)
            .map_err(|e| {
                let key = e.key.map(|k| format!("{prefix}{k}"));
                let message = match &key {
                    Some(k) => format!("key {k}: {}", e.message),
                    None => e.message,
                };
                (key, message)
            })?;
        let parser = Arc::clone(&self.wiring.parser);
        let parsed = tokio::task::spawn_blocking(move || parser(&raw))
            .await
            .unwrap_or_else(|e| Err(format!("the document parser panicked: {e}")));
        parsed.map_err(|message| {
            let first_key = message
                .split("; ")
                .find_map(|p| index.key_of(p.split_once(": ").map_or("", |(p, _)| p)))
                .map(|k| format!("{prefix}{k}"));
            (first_key, index.annotate(prefix, &message))
        })
    }

    /// Delivers a valid document of the store's revision unless it is
    /// older than (or the same as) the one delivered.
    fn accept(&mut self, revision: u64, doc: Arc<T>) {
        if let Some(current) = self.accepted.filter(|c| *c > doc.revision()) {
            warn!(
                revision,
                current,
                "etcd revision below the accepted one (cluster restored from a backup?); ignored"
            );
            self.status(|s| s.ignored_older += 1);
            return;
        }
        if self.accepted == Some(doc.revision()) && !self.status_from_cache() {
            return;
        }
        info!(revision, "accepted a new document from etcd");
        self.accepted = Some(revision);
        self.status(|s| {
            s.state = SourceState::Ok;
            s.error = None;
            s.polls_ok += 1;
            s.revision = Some(revision);
            s.etag = Some(format!("etcd-{revision}"));
            s.from_cache = false;
            s.last_change = Some(crate::clock::wall());
            if let Some(st) = s.stream.as_mut() {
                st.rejected_key = None;
                st.rejected_revision = None;
            }
        });
        // Without a cache thread the cache is not written: an empty body
        // would be no document.
        let raw = match &self.lkg {
            Some(l) => CacheBody::Deferred(l.deferred(revision)),
            None => CacheBody::Deferred(super::DeferredCache::new(revision, Arc::new(|_| {}))),
        };
        self.wiring.out.send_replace(Some(Arc::new(Accepted {
            doc,
            raw,
            etag: Some(format!("etcd-{revision}")),
            from_cache: false,
        })));
    }

    fn status_from_cache(&self) -> bool {
        self.wiring.status.borrow().from_cache
    }

    fn rejected(&self, revision: u64, key: Option<String>, message: String) {
        warn!(revision, key = key.as_deref().unwrap_or(""), error = %message, "etcd revision rejected; the previous document keeps serving");
        let text = format!("revision {revision} rejected: {message}");
        self.status(|s| {
            s.state = SourceState::Error;
            s.error = Some(text);
            s.polls_error += 1;
            if let Some(st) = s.stream.as_mut() {
                st.rejected_key = key;
                st.rejected_revision = Some(revision);
            }
        });
    }
}
