//! BIRD: the include file that gates anycast announcements, and BIRD's
//! control socket (docs/gating.md, "Publishing to BIRD").
//!
//! The agent never talks BGP itself. It decides *which* VIP prefixes may be
//! announced and hands that set to BIRD the way anycast-healthchecker does:
//! it rewrites a small include file that defines the prefix sets used by the
//! operator's BGP export filter (`net ~ ACAST_PS_ADVERTISE`) and asks BIRD to
//! `configure`. Changing only a prefix set makes BIRD refeed the export
//! channel, so the prefix is announced or withdrawn without a session reset.
//! The include format, the drain and demote sets and the packaged bird.conf
//! that exports them are described in `docs/bird.md`.
//!
//! - [`include`] (pure): render, parse and validate the include file.
//! - [`control`]: a native client for BIRD's control-socket line protocol
//!   (no `birdc` process per call), with pure parsers for the replies.
//! - [`exports`] (pure): which BGP protocols confirm the exports, and
//!   what their answers mean.
//! - [`publisher`]: the long-lived task that owns BIRD for the agent. It takes
//!   the desired announcements from a `watch` channel, coalesces bursts,
//!   writes the include atomically, reconfigures, *confirms the effect* and
//!   publishes a [`publisher::BirdStatus`]. [`publisher::reset`] is the
//!   fail-closed reset used by the packages and the CLI.

#![warn(missing_docs)]

pub mod control;
pub mod exports;
pub mod include;
pub mod publisher;

pub use control::{BirdControl, ConfigureOutcome, ControlError, ControlOptions, Reply};
pub use include::{IncludeLayout, LayoutError};
pub use publisher::{
    read_announced, reset, BirdStatus, Publisher, PublisherOptions, ResetBird, ResetReport,
};

/// The gate's output, the [`Publisher`]'s input: owned by the decision side.
pub use crate::gate::DesiredAnnouncements;
