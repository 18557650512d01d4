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

use std::collections::BTreeSet;

use ipnet::IpNet;

pub use control::{BirdControl, ConfigureOutcome, ControlError, ControlOptions, Reply};
pub use include::{IncludeLayout, LayoutError};
pub use publisher::{
    read_announced, reset, BirdStatus, Publisher, PublisherOptions, ResetBird, ResetReport,
};

/// What the agent wants BIRD to announce: the input of the [`Publisher`].
///
/// Every set holds IPv4 and IPv6 prefixes mixed; the include file splits them
/// into the per-family variables. A prefix in `drain` is announced through the
/// operator's drain filter (AS-path prepend or GRACEFUL_SHUTDOWN), so traffic
/// moves away before the prefix is withdrawn. A prefix in `demote` is
/// announced with a longer AS path still (`on_unhealthy = "demote"`): the
/// ToR prefers every host that announces it normally, and falls back to the
/// demoted hosts only when no such host is left, so a group-wide failure
/// does not blackhole the VIP. A prefix is in at most one set; see
/// [`include::normalize`] for which set wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DesiredAnnouncements {
    /// Prefixes announced normally (`ipv4_variable` / `ipv6_variable`).
    pub advertise: BTreeSet<IpNet>,
    /// Prefixes announced with the drain treatment (`drain_variable`); ignored
    /// (that is, withdrawn) when no drain variable is configured.
    pub drain: BTreeSet<IpNet>,
    /// Prefixes announced with the demote treatment (`demote_variable`);
    /// ignored (that is, withdrawn) when no demote variable is configured.
    pub demote: BTreeSet<IpNet>,
}

impl DesiredAnnouncements {
    /// Announcements with only an advertise set.
    pub fn advertise<I: IntoIterator<Item = IpNet>>(prefixes: I) -> Self {
        DesiredAnnouncements {
            advertise: prefixes.into_iter().collect(),
            ..DesiredAnnouncements::default()
        }
    }

    /// True when nothing at all is announced (a demoted prefix is announced).
    pub fn is_empty(&self) -> bool {
        self.advertise.is_empty() && self.drain.is_empty() && self.demote.is_empty()
    }

    /// Every announced prefix, whatever its treatment.
    pub fn all(&self) -> BTreeSet<IpNet> {
        self.advertise
            .iter()
            .chain(&self.drain)
            .chain(&self.demote)
            .copied()
            .collect()
    }
}
