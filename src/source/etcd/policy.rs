//! Recovery rules of the etcd watcher, as a pure decision (issue 11).
//!
//! The watcher is always doing one [`Step`] on one endpoint: listing the
//! prefix (range-get, which gives a revision) or watching it from a
//! revision. When a step ends, [`next`] decides the following one:
//!
//! | outcome | next |
//! |---|---|
//! | listed at revision R | watch from R + 1 on the same endpoint, at once |
//! | the list failed | list on the next endpoint; back off once every endpoint failed in a row |
//! | the watch's start revision was compacted | list again on the same endpoint, at once |
//! | the watch broke (disconnect, stream error, canceled e.g. "no leader") | resume: watch from the store's revision + 1 on the next endpoint, so no revision is missed or applied twice |
//! | the watch could not start (connect failed) | same as a break |
//!
//! A watch that was created (etcd answered `created`) resets the failure
//! count. The executor turns [`Delay::Backoff`] into a full-jitter delay
//! with the source's backoff policy.

/// What the watcher does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Range-get the prefix on `endpoint`.
    List { endpoint: usize },
    /// Watch the prefix on `endpoint` from `from` (inclusive).
    Watch { endpoint: usize, from: u64 },
}

/// How long to wait before the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    /// At once.
    Now,
    /// Back off: `n` consecutive rounds of every endpoint failing.
    Backoff(u32),
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Listed {
        revision: u64,
    },
    ListFailed,
    /// The watch was canceled because `from` is compacted.
    Compacted,
    /// The watch ended for another reason, or could not start.
    WatchBroke,
}

/// What the decision needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Number of configured endpoints (≥ 1).
    pub endpoints: usize,
    /// Failures in a row since the last success (a listing or a created watch).
    pub failures: u32,
    /// The store's revision (what a resumed watch continues after); 0 = none.
    pub revision: u64,
}

/// The endpoint of a step.
pub fn endpoint_of(step: Step) -> usize {
    match step {
        Step::List { endpoint } | Step::Watch { endpoint, .. } => endpoint,
    }
}

/// The step after `done` ended with `outcome`; also returns the new failure count.
pub fn next(p: Progress, done: Step, outcome: &Outcome) -> (Step, Delay, u32) {
    let n = p.endpoints.max(1);
    let here = endpoint_of(done) % n;
    let other = (here + 1) % n;
    let failed = |failures: u32| {
        let f = failures.saturating_add(1);
        // Try every endpoint once at once; back off per full failed round.
        let delay = if f as usize % n == 0 {
            Delay::Backoff(f / n as u32)
        } else {
            Delay::Now
        };
        (f, delay)
    };
    match outcome {
        Outcome::Listed { revision } => (
            Step::Watch {
                endpoint: here,
                from: revision + 1,
            },
            Delay::Now,
            0,
        ),
        Outcome::ListFailed => {
            let (f, d) = failed(p.failures);
            (Step::List { endpoint: other }, d, f)
        }
        Outcome::Compacted => (Step::List { endpoint: here }, Delay::Now, p.failures),
        Outcome::WatchBroke => {
            let (f, d) = failed(p.failures);
            let step = if p.revision == 0 {
                Step::List { endpoint: other }
            } else {
                Step::Watch {
                    endpoint: other,
                    from: p.revision + 1,
                }
            };
            (step, d, f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(endpoints: usize, failures: u32, revision: u64) -> Progress {
        Progress {
            endpoints,
            failures,
            revision,
        }
    }

    type Case = (&'static str, Progress, Step, Outcome, (Step, Delay, u32));

    #[test]
    fn decision_table() {
        use Delay::*;
        use Outcome::*;
        use Step::*;
        let cases: Vec<Case> = vec![
            (
                "listed → watch from R+1 here",
                p(3, 2, 0),
                List { endpoint: 1 },
                Listed { revision: 41 },
                (
                    Watch {
                        endpoint: 1,
                        from: 42,
                    },
                    Now,
                    0,
                ),
            ),
            (
                "first list failure → next endpoint at once",
                p(3, 0, 0),
                List { endpoint: 0 },
                ListFailed,
                (List { endpoint: 1 }, Now, 1),
            ),
            (
                "a full round failed → back off",
                p(3, 2, 0),
                List { endpoint: 2 },
                ListFailed,
                (List { endpoint: 0 }, Backoff(1), 3),
            ),
            (
                "single endpoint: every failure backs off",
                p(1, 1, 0),
                List { endpoint: 0 },
                ListFailed,
                (List { endpoint: 0 }, Backoff(2), 2),
            ),
            (
                "compacted → re-list here at once",
                p(3, 0, 50),
                Watch {
                    endpoint: 2,
                    from: 51,
                },
                Compacted,
                (List { endpoint: 2 }, Now, 0),
            ),
            (
                "disconnect → resume after the store's revision elsewhere",
                p(3, 0, 57),
                Watch {
                    endpoint: 0,
                    from: 51,
                },
                WatchBroke,
                (
                    Watch {
                        endpoint: 1,
                        from: 58,
                    },
                    Now,
                    1,
                ),
            ),
            (
                "resume keeps cycling, backing off per round",
                p(2, 1, 57),
                Watch {
                    endpoint: 1,
                    from: 58,
                },
                WatchBroke,
                (
                    Watch {
                        endpoint: 0,
                        from: 58,
                    },
                    Backoff(1),
                    2,
                ),
            ),
            (
                "broken before any listing → list",
                p(2, 0, 0),
                Watch {
                    endpoint: 0,
                    from: 1,
                },
                WatchBroke,
                (List { endpoint: 1 }, Now, 1),
            ),
        ];
        for (name, progress, done, outcome, want) in cases {
            assert_eq!(next(progress, done, &outcome), want, "{name}");
        }
    }

    #[test]
    fn a_resume_never_goes_backwards_or_skips() {
        // Whatever the failures, a watch resumes exactly after the store.
        for endpoints in 1..4 {
            for failures in 0..10 {
                for revision in [1u64, 7, 1 << 40] {
                    let (step, _, f) = next(
                        p(endpoints, failures, revision),
                        Step::Watch {
                            endpoint: 0,
                            from: 1,
                        },
                        &Outcome::WatchBroke,
                    );
                    assert_eq!(f, failures + 1);
                    assert!(matches!(step, Step::Watch { from, .. } if from == revision + 1));
                }
            }
        }
    }
}
