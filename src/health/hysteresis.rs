//! Rise/fall hysteresis (pure): from a stream of check results to a healthy
//! flag that does not flap.
//!
//! A single lost packet must not withdraw a VIP from the whole ECMP group,
//! and a service that answered once after a crash must not attract traffic
//! yet. So a service becomes healthy after `rise` consecutive passes and
//! unhealthy after `fall` consecutive failures; anything else only moves the
//! streak counters. A new service starts unhealthy; a service adopted at
//! startup (its VIP was already announced by the previous agent process)
//! starts healthy so a restart does not withdraw a working VIP, and then
//! needs `fall` failures like any healthy service.
//!
//! No clock, no I/O: the monitor feeds results in and reads the flag out.

use std::time::Duration;

use super::CheckResult;

/// Health state of one service, as published in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    /// The flag the gate acts on.
    pub healthy: bool,
    /// Consecutive passes up to and including the last result (0 after a failure).
    pub ok_streak: u32,
    /// Consecutive failures up to and including the last result (0 after a pass).
    pub fail_streak: u32,
    /// Latency of the last check, `None` before the first one.
    pub last_latency: Option<Duration>,
    /// Reason of the last failure while the last result failed; `None` after a pass.
    pub last_error: Option<String>,
    /// Results observed so far (0: never checked; for an adopted service this
    /// says the flag is still the adopted one).
    pub checks: u64,
    /// Of those, how many failed (a counter for metrics).
    pub failures: u64,
}

impl Default for ServiceHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl ServiceHealth {
    /// A new service: unhealthy until `rise` consecutive passes.
    pub fn new() -> Self {
        ServiceHealth {
            healthy: false,
            ok_streak: 0,
            fail_streak: 0,
            last_latency: None,
            last_error: None,
            checks: 0,
            failures: 0,
        }
    }

    /// A service adopted as healthy at startup: stays healthy until `fall`
    /// consecutive failures.
    pub fn adopted() -> Self {
        ServiceHealth {
            healthy: true,
            ..Self::new()
        }
    }

    /// Records one result and applies rise/fall (each treated as at least 1).
    /// Returns whether the healthy flag flipped.
    pub fn observe(&mut self, result: &CheckResult, rise: u32, fall: u32) -> bool {
        self.checks = self.checks.saturating_add(1);
        self.last_latency = Some(result.latency);
        let before = self.healthy;
        if result.ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
            self.last_error = None;
            if self.ok_streak >= rise.max(1) {
                self.healthy = true;
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
            self.last_error = Some(
                result
                    .error
                    .clone()
                    .unwrap_or_else(|| "check failed".to_string()),
            );
            if self.fail_streak >= fall.max(1) {
                self.healthy = false;
            }
        }
        self.healthy != before
    }

    /// Forces the service unhealthy (an internal failure of its checker, not a
    /// check result). Returns whether the flag flipped.
    pub fn force_unhealthy(&mut self, error: impl Into<String>) -> bool {
        let before = self.healthy;
        self.healthy = false;
        self.ok_streak = 0;
        self.fail_streak = self.fail_streak.saturating_add(1);
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error.into());
        before
    }

    /// Whether a streak towards a flip is in progress: passes while unhealthy
    /// or failures while healthy. The monitor re-checks at `fast_interval`
    /// then, so rise/fall do not multiply the reaction time by the interval.
    pub fn is_changing(&self) -> bool {
        if self.healthy {
            self.fail_streak > 0
        } else {
            self.ok_streak > 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mut h: ServiceHealth, rise: u32, fall: u32, results: &str) -> (ServiceHealth, String) {
        // One char per result: '+' pass, '-' fail. Returns the flag after
        // each result ('H'/'u') and marks flips with '!'.
        let mut trace = String::new();
        for c in results.chars() {
            let r = if c == '+' {
                CheckResult::pass(Duration::from_millis(1))
            } else {
                CheckResult::fail(Duration::from_millis(2), "connection refused")
            };
            let flipped = h.observe(&r, rise, fall);
            trace.push(if h.healthy { 'H' } else { 'u' });
            if flipped {
                trace.push('!');
            }
        }
        (h, trace)
    }

    #[test]
    fn transition_table() {
        // (start adopted?, rise, fall, results, expected trace)
        let table: &[(bool, u32, u32, &str, &str)] = &[
            // New services start unhealthy and need `rise` passes.
            (false, 3, 2, "+++", "uuH!"),
            (false, 3, 2, "++-+++", "uuuuuH!"),
            (false, 1, 1, "+", "H!"),
            // Failures while unhealthy change nothing but the streak.
            (false, 3, 2, "---", "uuu"),
            // Healthy services need `fall` failures; a pass resets the streak.
            (false, 1, 2, "+-+-", "H!HHH"),
            (false, 1, 2, "+--", "H!Hu!"),
            (false, 2, 3, "++---++", "uH!HHu!uH!"),
            // Adopted services start healthy and need `fall` failures.
            (true, 3, 2, "-", "H"),
            (true, 3, 2, "--", "Hu!"),
            (true, 3, 2, "+", "H"),
            (true, 3, 2, "-+-", "HHH"),
            // rise/fall of 0 behave as 1.
            (false, 0, 0, "+-", "H!u!"),
        ];
        for (adopted, rise, fall, results, want) in table {
            let start = if *adopted {
                ServiceHealth::adopted()
            } else {
                ServiceHealth::new()
            };
            let (_, got) = run(start, *rise, *fall, results);
            assert_eq!(
                &got, want,
                "adopted={adopted} rise={rise} fall={fall} results={results}"
            );
        }
    }

    #[test]
    fn streaks_errors_and_counters() {
        let (h, _) = run(ServiceHealth::new(), 3, 2, "++-");
        assert_eq!((h.ok_streak, h.fail_streak), (0, 1));
        assert_eq!(h.last_error.as_deref(), Some("connection refused"));
        assert_eq!(h.last_latency, Some(Duration::from_millis(2)));
        assert_eq!((h.checks, h.failures), (3, 1));

        let (h, _) = run(h, 3, 2, "++");
        assert_eq!((h.ok_streak, h.fail_streak), (2, 0));
        assert_eq!(h.last_error, None);
        assert_eq!(h.last_latency, Some(Duration::from_millis(1)));
    }

    #[test]
    fn failure_without_text_still_has_a_reason() {
        let mut h = ServiceHealth::adopted();
        let r = CheckResult {
            ok: false,
            latency: Duration::ZERO,
            error: None,
        };
        h.observe(&r, 1, 1);
        assert_eq!(h.last_error.as_deref(), Some("check failed"));
        assert!(!h.healthy);
    }

    #[test]
    fn changing_means_a_streak_towards_a_flip() {
        let table: &[(bool, &str, bool)] = &[
            (false, "", false),
            (false, "+", true),
            (false, "++", true),
            (false, "+++", false), // became healthy: stable
            (false, "-", false),   // unhealthy and failing: stable
            (true, "", false),
            (true, "-", true),
            (true, "--", false), // became unhealthy: stable
            (true, "-+", false),
        ];
        for (adopted, results, want) in table {
            let start = if *adopted {
                ServiceHealth::adopted()
            } else {
                ServiceHealth::new()
            };
            let (h, _) = run(start, 3, 2, results);
            assert_eq!(h.is_changing(), *want, "adopted={adopted} {results}");
        }
    }

    #[test]
    fn force_unhealthy_flips_only_a_healthy_service() {
        let mut h = ServiceHealth::adopted();
        assert!(h.force_unhealthy("check task panicked"));
        assert!(!h.healthy);
        assert!(!h.force_unhealthy("again"));
        assert_eq!(h.last_error.as_deref(), Some("again"));
    }

    #[test]
    fn streaks_saturate() {
        let mut h = ServiceHealth {
            ok_streak: u32::MAX,
            healthy: true,
            ..ServiceHealth::new()
        };
        assert!(!h.observe(&CheckResult::pass(Duration::ZERO), 3, 2));
        assert_eq!(h.ok_streak, u32::MAX);
    }
}
