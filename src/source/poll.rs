//! The poll loop: fetch → parse → accept or ignore → publish → wait.
//!
//! Generic over [`Fetch`] (HTTP or file) so the revision, ETag, cache and
//! status rules are written once, and so they are tested here under paused
//! time with a scripted fetcher. What a poll *means* for the next delay is
//! decided by the pure `schedule::next_delay`; this loop only keeps state,
//! publishes on the two `watch` channels, and sleeps (always `select!`ing on
//! the cancellation token).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::schedule::{next_delay, Answer, Pacing, Tuning};
use super::{Accepted, CacheBody, Document, FetchError, Parser, SourceState, SourceStatus};

/// What the poller already has, sent with the next request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Known {
    /// ETag of the accepted document (never of a rejected or ignored one).
    pub(crate) etag: Option<String>,
    /// Revision of the accepted document.
    pub(crate) revision: Option<u64>,
}

/// One answer of a source.
#[derive(Debug)]
pub(crate) enum Fetched {
    Document { raw: Bytes, etag: Option<String> },
    NotModified,
}

/// One way to fetch the document (HTTP, file, or a script in tests).
pub(crate) trait Fetch: Send {
    fn fetch(&mut self, known: Known) -> impl Future<Output = Result<Fetched, FetchError>> + Send;
}

/// Outputs and inputs of the loop that are not the fetcher.
pub(crate) struct Wiring<T> {
    pub(crate) parser: Parser<T>,
    pub(crate) out: watch::Sender<Option<Arc<Accepted<T>>>>,
    pub(crate) status: watch::Sender<SourceStatus>,
    pub(crate) cancel: CancellationToken,
}

/// State carried from one poll to the next.
struct Loop<T> {
    wiring: Wiring<T>,
    pacing: Pacing,
    tuning: Tuning,
    cache: PathBuf,
    known: Known,
    /// Until the first poll has an outcome, a failure may fall back to the cache.
    cache_allowed: bool,
    failures: u32,
    /// Last ignored lower revision, so a server stuck on it is logged once.
    last_ignored: Option<u64>,
}

/// Runs until `wiring.cancel` fires.
pub(crate) async fn poll_loop<T: Document, F: Fetch>(
    mut fetcher: F,
    pacing: Pacing,
    tuning: Tuning,
    cache: PathBuf,
    wiring: Wiring<T>,
) {
    let mut rng = StdRng::from_os_rng();
    let mut state = Loop {
        wiring,
        pacing,
        tuning,
        cache,
        known: Known::default(),
        cache_allowed: true,
        failures: 0,
        last_ignored: None,
    };
    let cancel = state.wiring.cancel.clone();
    let mut last_start: Option<Instant> = None;
    loop {
        if let Some(previous) = last_start {
            let earliest = previous + state.tuning.min_poll_gap;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(earliest) => {}
            }
        }
        let started = Instant::now();
        last_start = Some(started);
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = fetcher.fetch(state.known.clone()) => r,
        };
        let elapsed = started.elapsed();
        let answer = match result {
            Ok(Fetched::NotModified) if state.known.revision.is_none() => {
                state.failed(FetchError::UnexpectedNotModified).await
            }
            Ok(Fetched::NotModified) => {
                state.succeeded(|s| s.polls_not_modified += 1);
                debug!(elapsed_ms = elapsed.as_millis() as u64, "not modified");
                Answer::NotModified { elapsed }
            }
            Ok(Fetched::Document { raw, etag }) => {
                match parse(&state.wiring.parser, raw.clone()).await {
                    Ok(doc) => state.document(doc, raw, etag),
                    Err(reason) => state.failed(FetchError::Invalid(reason)).await,
                }
            }
            Err(error) => state.failed(error).await,
        };
        state.cache_allowed = false;
        let delay = next_delay(state.pacing, &state.tuning, answer, &mut rng);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs the parser off the async threads: validating a large document takes
/// milliseconds of CPU that the health checks' timers should not wait for.
async fn parse<T: Document>(parser: &Parser<T>, raw: Bytes) -> Result<T, String> {
    let parser = Arc::clone(parser);
    tokio::task::spawn_blocking(move || parser(&raw))
        .await
        .unwrap_or_else(|e| Err(format!("the document parser panicked: {e}")))
}

impl<T: Document> Loop<T> {
    /// Bookkeeping shared by every successful poll.
    fn succeeded(&mut self, count: impl FnOnce(&mut SourceStatus)) {
        if self.failures > 0 {
            info!(failures = self.failures, "source recovered");
        }
        self.failures = 0;
        self.wiring.status.send_modify(|s| {
            let now = crate::clock::wall();
            s.state = SourceState::Ok;
            s.error = None;
            s.consecutive_failures = 0;
            s.last_attempt = Some(now);
            s.last_success = Some(now);
            count(s);
        });
    }

    /// A valid document: accept it if it is newer, otherwise ignore it.
    fn document(&mut self, doc: T, raw: Bytes, etag: Option<String>) -> Answer {
        let revision = doc.revision();
        match self.known.revision {
            Some(current) if revision < current => {
                if self.last_ignored != Some(revision) {
                    warn!(
                        revision,
                        current, "ignoring a document older than the accepted one"
                    );
                } else {
                    debug!(revision, current, "ignoring an older document again");
                }
                self.last_ignored = Some(revision);
                self.succeeded(|s| {
                    s.polls_ok += 1;
                    s.ignored_older += 1;
                });
                Answer::NotNewer
            }
            Some(current) if revision == current => {
                // Same revision, same document: remember the ETag (the
                // server's may have changed, or the document came from the
                // cache) so the next poll can be answered with a 304.
                if etag.is_some() {
                    self.known.etag.clone_from(&etag);
                }
                self.succeeded(|s| {
                    s.polls_ok += 1;
                    if etag.is_some() {
                        s.etag.clone_from(&etag);
                    }
                });
                Answer::NotNewer
            }
            previous => {
                info!(
                    revision,
                    previous,
                    bytes = raw.len(),
                    etag = etag.as_deref().unwrap_or(""),
                    "accepted a new document"
                );
                self.known = Known {
                    etag: etag.clone(),
                    revision: Some(revision),
                };
                self.last_ignored = None;
                self.succeeded(|s| {
                    s.polls_ok += 1;
                    s.revision = Some(revision);
                    s.etag.clone_from(&etag);
                    s.from_cache = false;
                    s.last_change = s.last_success;
                });
                self.wiring.out.send_replace(Some(Arc::new(Accepted {
                    doc: Arc::new(doc),
                    raw: CacheBody::Bytes(raw),
                    etag,
                    from_cache: false,
                })));
                Answer::NewRevision
            }
        }
    }

    /// A failed poll: count it, report it, and on the very first poll fall
    /// back to the cache.
    async fn failed(&mut self, error: FetchError) -> Answer {
        self.failures = self.failures.saturating_add(1);
        let failures = self.failures;
        let state = if failures >= super::STALE_AFTER {
            SourceState::Stale
        } else {
            SourceState::Error
        };
        let url = self.wiring.status.borrow().url.clone();
        warn!(%error, %url, failures, state = state.as_str(), "poll failed");
        let text = error.to_string();
        self.wiring.status.send_modify(|s| {
            s.state = state;
            s.error = Some(text);
            s.consecutive_failures = failures;
            s.last_attempt = Some(crate::clock::wall());
            s.polls_error += 1;
        });
        if self.cache_allowed && self.known.revision.is_none() {
            self.deliver_cache().await;
        }
        Answer::Failed { failures }
    }

    async fn deliver_cache(&mut self) {
        let path = self.cache.clone();
        let parser = Arc::clone(&self.wiring.parser);
        let loaded = tokio::task::spawn_blocking(move || super::load_cache(&path, &parser)).await;
        let cache = self.cache.display().to_string();
        match loaded {
            Ok(Ok(Some(accepted))) => {
                let revision = accepted.doc.revision();
                warn!(revision, %cache, "source unavailable at start; using the cached last-known-good document");
                self.known = Known {
                    etag: None,
                    revision: Some(revision),
                };
                self.wiring.status.send_modify(|s| {
                    s.revision = Some(revision);
                    s.from_cache = true;
                    s.last_change = Some(crate::clock::wall());
                });
                self.wiring.out.send_replace(Some(Arc::new(accepted)));
            }
            Ok(Ok(None)) => info!(%cache, "no cached document to fall back to"),
            Ok(Err(error)) => warn!(%error, "cannot use the cached document"),
            Err(error) => warn!(%error, "loading the cached document failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The loop under paused time, against a scripted fetcher: every
    //! request's start time is recorded, so pacing and backoff are checked
    //! against the clock the loop itself uses.

    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    #[derive(Debug)]
    struct Doc(u64);
    impl Document for Doc {
        fn revision(&self) -> u64 {
            self.0
        }
    }

    fn parser() -> Parser<Doc> {
        Arc::new(|raw: &[u8]| {
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Doc)
                .ok_or_else(|| format!("not a revision: {:?}", String::from_utf8_lossy(raw)))
        })
    }

    /// One scripted answer: how long the "server" takes, and what it says.
    enum Step {
        Doc(Duration, &'static str, Option<&'static str>),
        NotModified(Duration),
        Fail(Duration),
    }

    #[derive(Default)]
    struct Log {
        starts: Vec<Instant>,
        known: Vec<Known>,
    }

    struct Script {
        steps: VecDeque<Step>,
        log: Arc<Mutex<Log>>,
    }

    impl Fetch for Script {
        fn fetch(
            &mut self,
            known: Known,
        ) -> impl Future<Output = Result<Fetched, FetchError>> + Send {
            {
                let mut log = self.log.lock().unwrap();
                log.starts.push(Instant::now());
                log.known.push(known);
            }
            let step = self.steps.pop_front();
            async move {
                match step {
                    Some(Step::Doc(d, body, etag)) => {
                        tokio::time::sleep(d).await;
                        Ok(Fetched::Document {
                            raw: Bytes::from_static(body.as_bytes()),
                            etag: etag.map(str::to_string),
                        })
                    }
                    Some(Step::NotModified(d)) => {
                        tokio::time::sleep(d).await;
                        Ok(Fetched::NotModified)
                    }
                    Some(Step::Fail(d)) => {
                        tokio::time::sleep(d).await;
                        Err(FetchError::Status {
                            status: 503,
                            reason: "Service Unavailable".into(),
                            body: String::new(),
                        })
                    }
                    // End of script: hang like a held long-poll.
                    None => std::future::pending().await,
                }
            }
        }
    }

    struct Harness {
        log: Arc<Mutex<Log>>,
        out: watch::Receiver<Option<Arc<Accepted<Doc>>>>,
        status: watch::Receiver<SourceStatus>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        t0: Instant,
    }

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn start(steps: Vec<Step>, pacing: Pacing, cache: PathBuf) -> Harness {
        let log = Arc::new(Mutex::new(Log::default()));
        let (out_tx, out) = watch::channel(None);
        let (status_tx, status) = watch::channel(SourceStatus::new("script://".into()));
        let cancel = CancellationToken::new();
        let script = Script {
            steps: steps.into(),
            log: Arc::clone(&log),
        };
        let wiring = Wiring {
            parser: parser(),
            out: out_tx,
            status: status_tx,
            cancel: cancel.clone(),
        };
        let t0 = Instant::now();
        let task = tokio::spawn(poll_loop(script, pacing, Tuning::default(), cache, wiring));
        Harness {
            log,
            out,
            status,
            cancel,
            task,
            t0,
        }
    }

    impl Harness {
        /// Start offsets (from t0) of every request so far.
        fn starts(&self) -> Vec<Duration> {
            let log = self.log.lock().unwrap();
            log.starts.iter().map(|t| *t - self.t0).collect()
        }

        fn known(&self, i: usize) -> Known {
            self.log.lock().unwrap().known[i].clone()
        }

        fn revision(&self) -> Option<u64> {
            self.out.borrow().as_ref().map(|a| a.doc.0)
        }

        async fn stop(self) {
            self.cancel.cancel();
            tokio::time::timeout(S, self.task)
                .await
                .expect("the loop stops on cancel")
                .unwrap();
        }
    }

    fn http() -> Pacing {
        Pacing::Http {
            poll_interval: 5 * S,
            long_poll: 30 * S,
        }
    }

    fn no_cache() -> PathBuf {
        PathBuf::from("/nonexistent/lb-agent-test/cache.json")
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_server_is_re_polled_at_once() {
        let h = start(
            vec![
                Step::Doc(10 * MS, "1", Some("e1")),
                // Held for the whole wait, then 304.
                Step::NotModified(30 * S),
                // Held until a change is published.
                Step::Doc(7 * S, "2", Some("e2")),
            ],
            http(),
            no_cache(),
        );
        tokio::time::sleep(60 * S).await;
        let starts = h.starts();
        assert_eq!(starts.len(), 4, "{starts:?}");
        // New revision → at once (after the 50 ms gap floor).
        assert_eq!(starts[1], 50 * MS);
        // Held 304 → at once.
        assert_eq!(starts[2], starts[1] + 30 * S);
        // New revision → at once.
        assert_eq!(starts[3], starts[2] + 7 * S);
        assert_eq!(h.revision(), Some(2));
        assert_eq!(h.known(0).revision, None);
        assert_eq!(h.known(1).revision, Some(1));
        assert_eq!(h.known(1).etag.as_deref(), Some("e1"));
        assert_eq!(h.known(3).etag.as_deref(), Some("e2"));
        let st = h.status.borrow().clone();
        assert_eq!(
            (st.polls_ok, st.polls_not_modified, st.polls_error),
            (2, 1, 0)
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn plain_server_is_paced_by_poll_interval_with_jitter() {
        let h = start(
            vec![
                Step::Doc(10 * MS, "1", Some("e1")),
                Step::NotModified(10 * MS),
                Step::Doc(10 * MS, "1", Some("e1")),
                Step::NotModified(10 * MS),
            ],
            http(),
            no_cache(),
        );
        tokio::time::sleep(60 * S).await;
        let starts = h.starts();
        assert_eq!(starts.len(), 5, "{starts:?}");
        for w in starts[1..].windows(2) {
            let gap = w[1] - w[0] - 10 * MS;
            assert!(
                gap >= 4500 * MS && gap <= 5500 * MS,
                "gap {gap:?} outside poll_interval ±10%: {starts:?}"
            );
        }
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_go_stale_and_recover() {
        let h = start(
            vec![
                Step::Doc(Duration::ZERO, "1", Some("e1")),
                Step::Fail(Duration::ZERO),
                Step::Fail(Duration::ZERO),
                Step::Fail(Duration::ZERO),
                Step::Fail(Duration::ZERO),
                Step::Fail(Duration::ZERO),
                Step::Fail(Duration::ZERO),
                Step::Fail(Duration::ZERO),
                Step::Doc(Duration::ZERO, "2", Some("e2")),
            ],
            http(),
            no_cache(),
        );
        let mut status = h.status.clone();
        let seen = tokio::time::timeout(120 * S, async {
            let mut seen = Vec::new();
            loop {
                status.changed().await.unwrap();
                let s = status.borrow_and_update().clone();
                seen.push((s.state, s.consecutive_failures));
                if s.revision == Some(2) {
                    return seen;
                }
            }
        })
        .await
        .expect("recovers within two minutes of backoff");
        // Every poll publishes a status, and paused time lets us see each one.
        let states: Vec<_> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            states,
            [
                SourceState::Ok,
                SourceState::Error,
                SourceState::Error,
                SourceState::Stale,
                SourceState::Stale,
                SourceState::Stale,
                SourceState::Stale,
                SourceState::Stale,
                SourceState::Ok,
            ]
        );
        let starts = h.starts();
        // Retry n waits within [floor, min(30 s, 2^(n-1) s)].
        for n in 1..=7u32 {
            let gap = starts[n as usize + 1] - starts[n as usize];
            let ceiling = (S * 2u32.pow(n - 1)).min(30 * S);
            assert!(
                gap >= 100 * MS && gap <= ceiling,
                "retry {n}: {gap:?} not in [100ms, {ceiling:?}]"
            );
        }
        let st = h.status.borrow().clone();
        assert_eq!(st.error, None);
        assert_eq!(st.polls_error, 7);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn revision_rules_and_etag_of_accepted_documents_only() {
        let h = start(
            vec![
                Step::Doc(Duration::ZERO, "5", Some("e5")),
                Step::Doc(Duration::ZERO, "4", Some("e4")), // older: ignored
                Step::Doc(Duration::ZERO, "5", Some("e5b")), // same: not re-delivered, ETag adopted
                Step::Doc(Duration::ZERO, "garbage", Some("g")), // invalid: error, ETag not adopted
                Step::Doc(Duration::ZERO, "6", Some("e6")),
            ],
            http(),
            no_cache(),
        );
        let mut out = h.out.clone();
        let mut delivered = Vec::new();
        tokio::time::timeout(60 * S, async {
            loop {
                out.changed().await.unwrap();
                let rev = out.borrow_and_update().as_ref().map(|a| a.doc.0);
                delivered.push(rev);
                if rev == Some(6) {
                    break;
                }
            }
        })
        .await
        .expect("revision 6 arrives");
        assert_eq!(delivered, [Some(5), Some(6)]);
        assert_eq!(
            h.known(2).etag.as_deref(),
            Some("e5"),
            "older doc's ETag not adopted"
        );
        assert_eq!(
            h.known(3).etag.as_deref(),
            Some("e5b"),
            "same revision's new ETag adopted"
        );
        assert_eq!(
            h.known(4).etag.as_deref(),
            Some("e5b"),
            "invalid doc's ETag not adopted"
        );
        assert_eq!(h.known(4).revision, Some(5));
        let st = h.status.borrow().clone();
        assert_eq!(st.ignored_older, 1);
        assert_eq!(st.polls_error, 1);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn cache_is_delivered_only_when_the_first_poll_fails() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("last-good.json");
        std::fs::write(&cache, "7").unwrap();

        // First poll fails: the cache (revision 7) is delivered, and the next
        // poll long-polls from revision 7.
        let h = start(
            vec![
                Step::Fail(Duration::ZERO),
                Step::Doc(Duration::ZERO, "8", None),
            ],
            http(),
            cache.clone(),
        );
        let mut out = h.out.clone();
        let first = out
            .wait_for(Option::is_some)
            .await
            .unwrap()
            .clone()
            .unwrap();
        assert!(first.from_cache);
        assert_eq!(first.doc.0, 7);
        assert!(h.status.borrow().from_cache);
        let second = tokio::time::timeout(
            5 * S,
            out.wait_for(|a| a.as_ref().is_some_and(|a| a.doc.0 == 8)),
        )
        .await
        .expect("revision 8 arrives")
        .unwrap()
        .clone()
        .unwrap();
        assert!(!second.from_cache);
        assert_eq!(h.known(1).revision, Some(7));
        assert!(!h.status.borrow().from_cache);
        h.stop().await;

        // First poll succeeds: the cache is never read, even when later polls fail.
        let h = start(
            vec![
                Step::Doc(Duration::ZERO, "1", None),
                Step::Fail(Duration::ZERO),
                Step::Fail(Duration::ZERO),
            ],
            http(),
            cache,
        );
        tokio::time::sleep(10 * S).await;
        assert_eq!(h.starts().len(), 4);
        let a = h.out.borrow().clone().unwrap();
        assert_eq!((a.doc.0, a.from_cache), (1, false));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn not_modified_without_any_document_is_an_error() {
        let h = start(vec![Step::NotModified(Duration::ZERO)], http(), no_cache());
        tokio::time::sleep(S).await;
        let st = h.status.borrow().clone();
        assert_eq!(st.state, SourceState::Error);
        assert!(st.error.unwrap().contains("304"));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn file_pacing_is_the_poll_interval_even_after_errors() {
        let h = start(
            vec![
                Step::Fail(Duration::ZERO),
                Step::Doc(Duration::ZERO, "1", Some("h1")),
                Step::NotModified(Duration::ZERO),
            ],
            Pacing::File {
                poll_interval: 2 * S,
            },
            no_cache(),
        );
        tokio::time::sleep(7 * S).await;
        assert_eq!(h.starts(), [Duration::ZERO, 2 * S, 4 * S, 6 * S]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_interrupts_a_held_request_and_a_sleep() {
        // Held request (script exhausted = pending forever).
        let h = start(vec![], http(), no_cache());
        tokio::time::sleep(S).await;
        h.stop().await;
        // Sleeping between polls.
        let h = start(
            vec![
                Step::Doc(Duration::ZERO, "1", None),
                Step::NotModified(Duration::ZERO),
            ],
            http(),
            no_cache(),
        );
        tokio::time::sleep(S).await;
        h.stop().await;
    }
}
