//! The desired-state source: polls the central API (or a local file) and
//! publishes every newer document (docs/api.md, "Polling protocol").
//!
//! Why it is shaped like this:
//!
//! - It is generic over the document type ([`Document`] + a [`Parser`]): the
//!   source knows HTTP, ETags, revisions, backoff and the cache; what a valid
//!   document is belongs to `model::validate`, which the daemon passes in as
//!   the parser. A document that fails the parser is a failed poll.
//! - Output is two `watch` channels: the latest [`Accepted`] document (the
//!   reconcile loop only ever wants the newest one, so intermediate revisions
//!   may be skipped) and a [`SourceStatus`] snapshot for the status socket.
//! - It never moves backwards: a revision lower than the accepted one is
//!   ignored (logged), an equal one is not delivered again.
//! - Only the ETag of an *accepted* document is sent as `If-None-Match`, so a
//!   rejected document is fetched (and rejected) again instead of being
//!   "not modified" into an `ok` state.
//! - Timing (long-poll detection, pacing, backoff) is a pure policy in the
//!   `schedule` submodule, whose docs state the exact rule; [`Tuning`] holds
//!   its knobs.
//! - On start, if the very first poll fails, the cached last-known-good
//!   document is delivered (`from_cache: true`) so a host can boot without
//!   the API. The daemon stores the cache after a successful apply
//!   ([`store_cache`]).
//!
//! - Watch-based sources (`etcd://`, module `etcd`) keep the same outputs:
//!   they hold the keys in memory, assemble the document of each revision
//!   and run the same parser; [`SourceStatus::stream`] adds the endpoint,
//!   the watch state and the store revision.
//!
//! [`run`] is a long-lived task: spawn it, and cancel the token to stop it.

mod cache;
pub mod etcd;
mod file;
mod http;
mod poll;
mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use cache::{load_cache, store_cache, CacheError};
pub use http::ensure_crypto_provider;
pub use schedule::Tuning;

use crate::config::{SourceConfig, SourceUrl};
use crate::model::DesiredState;

/// Consecutive failed polls after which the source is reported `stale`.
pub const STALE_AFTER: u32 = 3;

/// A desired-state document as far as the source is concerned.
pub trait Document: Send + Sync + 'static {
    /// The document's revision; it only ever increases (docs/api.md, "Revision and removal rules").
    fn revision(&self) -> u64;

    /// The document as a [`DesiredState`], for the etcd source's
    /// incremental path (docs/etcd.md, "Incremental validation"), which
    /// patches the last accepted state instead of parsing the whole
    /// document again. `None` (the default): every revision takes the full
    /// path through the parser.
    fn to_state(_doc: &Arc<Self>) -> Option<Arc<DesiredState>> {
        None
    }

    /// The inverse of [`Document::to_state`] for a patched state.
    fn from_state(_state: Arc<DesiredState>) -> Option<Arc<Self>> {
        None
    }
}

impl Document for DesiredState {
    fn revision(&self) -> u64 {
        self.revision
    }

    fn to_state(doc: &Arc<Self>) -> Option<Arc<DesiredState>> {
        Some(Arc::clone(doc))
    }

    fn from_state(state: Arc<DesiredState>) -> Option<Arc<Self>> {
        Some(state)
    }
}

/// Turns a raw body into a document, or says why it is not one.
///
/// Called off the async threads (it may validate a large document).
pub type Parser<T> = Arc<dyn Fn(&[u8]) -> Result<T, String> + Send + Sync>;

/// A document the source accepted (or loaded from the cache).
#[derive(Debug)]
pub struct Accepted<T> {
    pub doc: Arc<T>,
    /// What the last-known-good cache stores once the document is applied.
    pub raw: CacheBody,
    /// The server's ETag (for `file://` sources: the content's SHA-256).
    pub etag: Option<String>,
    /// True when this came from `source.cache` because the first poll failed.
    pub from_cache: bool,
}

/// What the last-known-good cache (`source.cache`) stores for a document.
#[derive(Debug, Clone)]
pub enum CacheBody {
    /// The exact bytes received, decompressed (HTTP, file, the cache
    /// itself): the daemon writes them.
    Bytes(Bytes),
    /// The source writes the document itself, off the async threads and
    /// coalesced, when asked ([`DeferredCache::store`]): the etcd source,
    /// whose incremental path never assembles the document (docs/etcd.md,
    /// "Last-known-good cache").
    Deferred(DeferredCache),
}

impl CacheBody {
    /// The bytes, when the source handed them over.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            CacheBody::Bytes(b) => Some(b),
            CacheBody::Deferred(_) => None,
        }
    }
}

impl From<Bytes> for CacheBody {
    fn from(b: Bytes) -> Self {
        CacheBody::Bytes(b)
    }
}

impl From<Vec<u8>> for CacheBody {
    fn from(b: Vec<u8>) -> Self {
        CacheBody::Bytes(Bytes::from(b))
    }
}

/// A request to the source to write the cache of one revision.
#[derive(Clone)]
pub struct DeferredCache {
    revision: u64,
    request: Arc<dyn Fn(u64) + Send + Sync>,
}

impl DeferredCache {
    pub fn new(revision: u64, request: Arc<dyn Fn(u64) + Send + Sync>) -> Self {
        DeferredCache { revision, request }
    }

    /// Asks for the cache to hold this revision; returns at once (the
    /// write happens later, on another thread; a newer request wins).
    pub fn store(&self) {
        (self.request)(self.revision)
    }
}

impl std::fmt::Debug for DeferredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredCache")
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Health of the source, as the status socket shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceState {
    /// No poll has completed yet.
    #[default]
    Init,
    /// The last poll succeeded.
    Ok,
    /// The last poll failed (fewer than [`STALE_AFTER`] in a row).
    Error,
    /// [`STALE_AFTER`] or more polls in a row failed.
    Stale,
}

impl SourceState {
    /// The status-socket spelling: `init`, `ok`, `error`, `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Init => "init",
            SourceState::Ok => "ok",
            SourceState::Error => "error",
            SourceState::Stale => "stale",
        }
    }
}

impl std::fmt::Display for SourceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Snapshot of the source for the status socket and metrics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SourceStatus {
    pub state: SourceState,
    /// The configured URL (a password in it is masked).
    pub url: String,
    /// When a poll last succeeded (200 or 304).
    pub last_success: Option<SystemTime>,
    /// When a poll last completed, successfully or not.
    pub last_attempt: Option<SystemTime>,
    /// When the current revision was accepted.
    pub last_change: Option<SystemTime>,
    /// Why the last poll failed; `None` after a success.
    pub error: Option<String>,
    /// Failed polls in a row.
    pub consecutive_failures: u32,
    /// Revision of the accepted document.
    pub revision: Option<u64>,
    /// ETag of the accepted document.
    pub etag: Option<String>,
    /// True while the accepted document is the cached one.
    pub from_cache: bool,
    /// `200` answers with a valid document (new, same or older).
    pub polls_ok: u64,
    /// `304` answers.
    pub polls_not_modified: u64,
    /// Failed polls (connect, timeout, status, invalid document, ...).
    pub polls_error: u64,
    /// Valid documents ignored because their revision was lower than the accepted one.
    pub ignored_older: u64,
    /// Watch-based sources (etcd): the connection and the watch.
    pub stream: Option<StreamStatus>,
}

/// The state of a watch-based source (etcd today; a Consul source would
/// fill the same fields).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamStatus {
    /// The member the agent talks to (`host:port`).
    pub endpoint: String,
    /// `connecting`, `listing`, `watching`, `disconnected` or `backoff`.
    pub watch_state: String,
    /// The store revision: the newest revision applied from the store, valid or not.
    pub revision: Option<u64>,
    /// Full listings (the first one, and one after every compaction).
    pub lists: u64,
    /// Watches canceled because their start revision was compacted.
    pub compactions: u64,
    /// Transactions (revisions) applied from the watch.
    pub transactions: u64,
    /// Events applied from the watch.
    pub events: u64,
    /// The store revision that failed to assemble or validate, while it is the newest.
    pub rejected_revision: Option<u64>,
    /// The key at fault in that revision, when one is known.
    pub rejected_key: Option<String>,
    /// Store revisions validated by patching the last accepted state (only
    /// the changed pools re-validated; docs/etcd.md, "Incremental validation").
    pub revisions_incremental: u64,
    /// Store revisions validated by assembling and parsing the whole document.
    pub revisions_full: u64,
}

impl SourceStatus {
    /// The status before the first poll.
    pub fn new(url: String) -> Self {
        SourceStatus {
            url,
            ..SourceStatus::default()
        }
    }
}

/// Why one poll failed. Shown as text on the status socket and in logs.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid source URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("token file {}: {reason}", path.display())]
    Token { path: PathBuf, reason: String },
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("no complete answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("request failed: {0}")]
    Request(String),
    #[error("HTTP {status} {reason}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        status: u16,
        reason: String,
        body: String,
    },
    #[error("document larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid document: {0}")]
    Invalid(String),
    #[error("304 Not Modified, but no document was ever received")]
    UnexpectedNotModified,
}

/// Polls `cfg.url` until `cancel` fires, with the production [`Tuning`].
///
/// Publishes every newer document on `out` and a status snapshot on
/// `status` after every poll. Never returns an error: failures are in the
/// status, retried with backoff.
pub async fn run<T: Document>(
    cfg: SourceConfig,
    node_name: String,
    parser: Parser<T>,
    out: watch::Sender<Option<Arc<Accepted<T>>>>,
    status: watch::Sender<SourceStatus>,
    cancel: CancellationToken,
) {
    let tuning = Tuning {
        max_document_bytes: cfg.max_document_size,
        ..Tuning::default()
    };
    run_with(cfg, node_name, parser, out, status, cancel, tuning).await;
}

/// [`run`] with explicit timing knobs (tests use a short backoff).
pub async fn run_with<T: Document>(
    cfg: SourceConfig,
    node_name: String,
    parser: Parser<T>,
    out: watch::Sender<Option<Arc<Accepted<T>>>>,
    status: watch::Sender<SourceStatus>,
    cancel: CancellationToken,
    tuning: Tuning,
) {
    let display_url = match &cfg.url {
        SourceUrl::Http(u) => http::redact(u),
        SourceUrl::File(p) => format!("file://{}", p.display()),
        SourceUrl::Etcd(e) => e.display(),
    };
    status.send_modify(|s| {
        *s = SourceStatus::new(display_url);
    });
    let wiring = poll::Wiring {
        parser,
        out,
        status,
        cancel,
    };
    let cache = cfg.cache.clone();
    match cfg.url.clone() {
        SourceUrl::Http(url) => {
            let pacing = schedule::Pacing::Http {
                poll_interval: cfg.poll_interval,
                long_poll: cfg.long_poll,
            };
            let fetcher = http::HttpFetcher::new(&url, cfg, &node_name, tuning.max_document_bytes);
            poll::poll_loop(fetcher, pacing, tuning, cache, wiring).await;
        }
        SourceUrl::File(path) => {
            let pacing = schedule::Pacing::File {
                poll_interval: cfg.poll_interval,
            };
            let fetcher = file::FileFetcher::new(path, tuning.max_document_bytes);
            poll::poll_loop(fetcher, pacing, tuning, cache, wiring).await;
        }
        SourceUrl::Etcd(url) => etcd::run(url, cfg, tuning, wiring).await,
    }
}
