//! The agent's only reads of the std clocks (docs/architecture.md, "Clocks").
//!
//! `clippy.toml` disallows `std::time::Instant::now` and
//! `std::time::SystemTime::now` everywhere else, so every clock read is one
//! of three kinds, chosen on purpose:
//!
//! - `tokio::time::Instant::now()` in code that runs under tokio: it obeys
//!   paused time, so `#[tokio::test(start_paused = true)]` owns the clock
//!   (not disallowed: it is already the testable clock);
//! - [`now`], the std monotonic clock, where the code runs outside tokio or
//!   must measure real time (CPU budgets, the health thread's deadlines);
//! - [`wall`], wall-clock time for what is shown or persisted (status
//!   timestamps, drain records, `STATUS=` lines).
//!
//! The pure side takes `now` as an argument and reads no clock at all.

use std::time::{Instant, SystemTime};

/// The std monotonic clock: real time, not paused by tokio's test clock.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// Wall-clock time.
#[allow(clippy::disallowed_methods)]
pub fn wall() -> SystemTime {
    SystemTime::now()
}
