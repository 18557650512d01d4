//! When to poll next: retry backoff, pacing, jitter (pure, no clock, no I/O).
//!
//! The whole timing policy of the poller lives here so it can be read in one
//! place and tested without a server:
//!
//! - **New revision** (a `200` with a revision above the accepted one): poll
//!   again at once. A long-polling server then holds the next request until
//!   the revision after that; a plain server answers `304`/same and we fall
//!   into pacing. This costs one extra request per change and never delays a
//!   burst of changes behind `poll_interval`.
//! - **Held** (a `304` that took at least [`hold_threshold`] =
//!   min(1 s, long_poll / 2)): the server supports long-poll and its wait
//!   expired; poll again at once. Only a `304` counts, because a long-polling
//!   server only answers `200` when it has something newer than `revision=`:
//!   a slow `200` with the same document is a slow server, and re-polling it
//!   at once would make an overloaded API busier.
//! - **Anything else successful** (a fast `304`, a `200` with the same or an
//!   older revision): the server does not long-poll; wait `poll_interval`
//!   ±10% (uniform), so a fleet started together spreads out.
//! - **Failure**: exponential backoff with full jitter: the n-th consecutive
//!   failure waits uniform(0, min(cap, base × 2ⁿ⁻¹)), floored at
//!   `backoff_floor` so a retry is never a hot loop.
//! - Whatever the decision, two requests never *start* closer than
//!   `min_poll_gap` (enforced by the loop), which bounds a misbehaving server
//!   that announces a new revision on every request.
//!
//! `file://` sources are simply re-checked every `poll_interval`, success or
//! not: a local file has no server to spare and nothing to long-poll.

use std::time::Duration;

use rand::Rng;

/// Timing knobs of the poller. [`Tuning::default`] is the production policy;
/// tests shrink the backoff to run fast.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// Ceiling of the first retry delay; doubles with each consecutive failure.
    pub backoff_base: Duration,
    /// Largest retry ceiling (docs/api.md, "Timing": 30 s).
    pub backoff_cap: Duration,
    /// Smallest retry delay (full jitter could otherwise pick ~0).
    pub backoff_floor: Duration,
    /// Smallest time between the starts of two requests.
    pub min_poll_gap: Duration,
    /// Largest document accepted, in bytes (a runaway body must not eat the
    /// host's memory). [`crate::source::run`] takes it from
    /// `[source] max_document_size`.
    pub max_document_bytes: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            backoff_floor: Duration::from_millis(100),
            min_poll_gap: Duration::from_millis(50),
            max_document_bytes: 16 << 20,
        }
    }
}

/// How a source is paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Pacing {
    /// HTTP(S): long-poll aware, jittered pacing, exponential backoff.
    Http {
        poll_interval: Duration,
        long_poll: Duration,
    },
    /// `file://`: a fixed re-check interval.
    File { poll_interval: Duration },
}

/// What the last poll came to, as far as timing is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Answer {
    /// A document with a higher revision was accepted.
    NewRevision,
    /// `304 Not Modified` after `elapsed`.
    NotModified { elapsed: Duration },
    /// A valid document that was not newer (same or lower revision).
    NotNewer,
    /// The poll failed; `failures` consecutive failures so far (≥ 1).
    Failed { failures: u32 },
}

/// A `304` that took at least this long was held by a long-polling server.
pub(crate) fn hold_threshold(long_poll: Duration) -> Duration {
    (long_poll / 2).min(Duration::from_secs(1))
}

/// Ceiling of the retry delay after `failures` consecutive failures.
pub(crate) fn backoff_ceiling(t: &Tuning, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    t.backoff_base
        .saturating_mul(1u32 << doublings)
        .min(t.backoff_cap)
}

/// Full-jitter retry delay: uniform in [floor, max(floor, ceiling)].
pub(crate) fn backoff_delay(t: &Tuning, failures: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = backoff_ceiling(t, failures).max(t.backoff_floor);
    let nanos = rng.random_range(t.backoff_floor.as_nanos()..=ceiling.as_nanos());
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// `interval` ±10%, uniform.
pub(crate) fn jitter(interval: Duration, rng: &mut impl Rng) -> Duration {
    interval.mul_f64(rng.random_range(0.9..=1.1))
}

/// Delay before the next poll (the loop also enforces `min_poll_gap`).
pub(crate) fn next_delay(
    pacing: Pacing,
    tuning: &Tuning,
    answer: Answer,
    rng: &mut impl Rng,
) -> Duration {
    match pacing {
        Pacing::File { poll_interval } => poll_interval,
        Pacing::Http {
            poll_interval,
            long_poll,
        } => match answer {
            Answer::NewRevision => Duration::ZERO,
            Answer::NotModified { elapsed } if elapsed >= hold_threshold(long_poll) => {
                Duration::ZERO
            }
            Answer::NotModified { .. } | Answer::NotNewer => jitter(poll_interval, rng),
            Answer::Failed { failures } => backoff_delay(tuning, failures, rng),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const S: Duration = Duration::from_secs(1);

    fn http() -> Pacing {
        Pacing::Http {
            poll_interval: 5 * S,
            long_poll: 30 * S,
        }
    }

    #[test]
    fn backoff_ceiling_doubles_to_the_cap() {
        let t = Tuning::default();
        let ceilings: Vec<u64> = (1..=8).map(|n| backoff_ceiling(&t, n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30, 30]);
        // No overflow, however long the outage.
        assert_eq!(backoff_ceiling(&t, u32::MAX), 30 * S);
        assert_eq!(backoff_ceiling(&t, 0), S);
    }

    #[test]
    fn full_jitter_stays_within_floor_and_ceiling_and_spreads() {
        let t = Tuning::default();
        let mut rng = StdRng::seed_from_u64(7);
        for n in 1..=10 {
            let ceiling = backoff_ceiling(&t, n);
            let delays: Vec<Duration> = (0..2000).map(|_| backoff_delay(&t, n, &mut rng)).collect();
            let min = *delays.iter().min().unwrap();
            let max = *delays.iter().max().unwrap();
            assert!(min >= t.backoff_floor, "n={n}: {min:?}");
            assert!(max <= ceiling, "n={n}: {max:?} > {ceiling:?}");
            // Full jitter: the whole range is used, not just the top.
            assert!(min < t.backoff_floor + ceiling / 10, "n={n}: min {min:?}");
            assert!(max > ceiling * 9 / 10, "n={n}: max {max:?}");
        }
    }

    #[test]
    fn jitter_is_ten_percent_each_way() {
        let mut rng = StdRng::seed_from_u64(1);
        let d: Vec<Duration> = (0..5000).map(|_| jitter(5 * S, &mut rng)).collect();
        let min = *d.iter().min().unwrap();
        let max = *d.iter().max().unwrap();
        assert!(min >= Duration::from_millis(4500) && max <= Duration::from_millis(5500));
        assert!(min < Duration::from_millis(4550), "{min:?}");
        assert!(max > Duration::from_millis(5450), "{max:?}");
    }

    #[test]
    fn hold_threshold_is_one_second_or_half_the_wait() {
        assert_eq!(hold_threshold(30 * S), S);
        assert_eq!(hold_threshold(S), Duration::from_millis(500));
    }

    #[test]
    fn pacing_rule() {
        let t = Tuning::default();
        let mut rng = StdRng::seed_from_u64(3);
        let mut next = |a| next_delay(http(), &t, a, &mut rng);

        assert_eq!(next(Answer::NewRevision), Duration::ZERO);
        // Held 304: again at once.
        assert_eq!(
            next(Answer::NotModified { elapsed: 30 * S }),
            Duration::ZERO
        );
        assert_eq!(next(Answer::NotModified { elapsed: S }), Duration::ZERO);
        // Fast 304 / same document: the server does not long-poll.
        for a in [
            Answer::NotModified {
                elapsed: Duration::from_millis(20),
            },
            Answer::NotNewer,
        ] {
            let d = next(a);
            assert!(
                d >= Duration::from_millis(4500) && d <= Duration::from_millis(5500),
                "{a:?}: {d:?}"
            );
        }
        let d = next(Answer::Failed { failures: 3 });
        assert!(d >= t.backoff_floor && d <= 4 * S, "{d:?}");

        let file = Pacing::File {
            poll_interval: 2 * S,
        };
        for a in [
            Answer::NewRevision,
            Answer::NotNewer,
            Answer::Failed { failures: 9 },
        ] {
            assert_eq!(next_delay(file, &t, a, &mut rng), 2 * S);
        }
    }
}
