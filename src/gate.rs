//! The anycast gate: which VIPs may be announced, and why the others are not
//! (docs/gating.md, "The rule").
//!
//! This is the heart of the "only announce what works" promise, so it is a
//! pure function: [`decide`] takes a snapshot of everything the rule depends
//! on ([`GateInput`]: per-VIP address presence and service health, whether
//! HAProxy runs, the drain state, and `now`) and returns one [`VipDecision`]
//! per VIP. No clock is read, nothing is awaited, nothing is written; the
//! daemon gathers the inputs (health module, [`crate::vip::VipManager`],
//! [`crate::drain::DrainStore`]) and feeds [`announcements`] of the result
//! to the BIRD publisher. Because time enters only as `now`, graceful drain
//! expiry is just another input change: [`next_deadline`] tells the caller
//! when to run the gate again.
//!
//! The rule: a VIP is advertised ⇔ not drained ∧ its address is present on
//! `vip.interface` ∧ HAProxy is running ∧ the VIP has at least one service ∧
//! every one of those services is healthy (or pending: new behind an
//! announced VIP and still having its chance). With `[bird] on_unhealthy =
//! "demote"`, a VIP whose only problems are unhealthy services goes to the
//! demote set instead of being withdrawn; host-local problems (HAProxy
//! down, address missing, no service, a host fault, drained) always withdraw. When drained with a graceful
//! drain variable configured, VIPs that would otherwise be advertised sit in
//! the drain set until `since + drain_grace`, then are withdrawn. HAProxy not
//! running withdraws everything at once, drain set included: the drain set is
//! still an announcement and would attract traffic nobody serves.
//!
//! Reasons are operator text (status socket, `lb-agent vips`): every failed
//! condition is named, in a fixed order, joined by `"; "`.

#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::config::OnUnhealthy;

/// What the agent wants BIRD to announce: the output of [`announcements`], the
/// input of the BIRD publisher (`crate::bird::Publisher`).
///
/// Every set holds IPv4 and IPv6 prefixes mixed; the include file splits them
/// into the per-family variables. A prefix in `drain` is announced through the
/// operator's drain filter (AS-path prepend or GRACEFUL_SHUTDOWN), so traffic
/// moves away before the prefix is withdrawn. A prefix in `demote` is
/// announced with a longer AS path still (`on_unhealthy = "demote"`): the
/// ToR prefers every host that announces it normally, and falls back to the
/// demoted hosts only when no such host is left, so a group-wide failure
/// does not blackhole the VIP. A prefix is in at most one set; see
/// `crate::bird::include::normalize` for which set wins.
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

/// Where a service behind a VIP stands, as the gate needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// Healthy after hysteresis (rise/fall applied), and HAProxy runs it.
    Healthy,
    /// New behind an announced VIP and still having its chance (not
    /// installed yet, or not yet `rise` passes nor `fall` failures): it
    /// does not withdraw the VIP. The text says what it waits for.
    Pending(String),
    /// Failing: the check's error, or why it cannot be checked ("not installed").
    Unhealthy(Option<String>),
}

/// One service (frontend or local check) behind a VIP, as the gate needs it.
///
/// Deliberately independent of the health module's types: the anycast
/// policy maps health, installation and admission onto this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// Frontend name, used in the reason text.
    pub name: String,
    /// Healthy, pending or unhealthy.
    pub state: ServiceState,
}

impl ServiceView {
    /// A healthy service.
    pub fn healthy(name: impl Into<String>) -> Self {
        ServiceView {
            name: name.into(),
            state: ServiceState::Healthy,
        }
    }

    /// An unhealthy service with the error its check reported.
    pub fn unhealthy(name: impl Into<String>, error: impl Into<String>) -> Self {
        ServiceView {
            name: name.into(),
            state: ServiceState::Unhealthy(Some(error.into())),
        }
    }

    /// A pending service, waiting for `what`.
    pub fn pending(name: impl Into<String>, what: impl Into<String>) -> Self {
        ServiceView {
            name: name.into(),
            state: ServiceState::Pending(what.into()),
        }
    }

    /// True while it counts as serving (healthy or pending).
    pub fn serves(&self) -> bool {
        !matches!(self.state, ServiceState::Unhealthy(_))
    }
}

/// Everything the gate knows about one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipView {
    /// The VIP prefix (what BIRD announces).
    pub vip: IpNet,
    /// The VIP's address (exactly this prefix) is configured on `vip.interface`.
    pub address_present: bool,
    /// The frontends binding inside the VIP, with their health.
    pub services: Vec<ServiceView>,
}

/// Whether the host is drained (docs/gating.md, "Sets"), in monotonic time.
///
/// [`crate::drain::DrainStore::gate_state`] converts the persisted
/// wall-clock state into this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainState {
    /// Normal operation.
    Undrained,
    /// `lb-agent drain` is in effect.
    Drained {
        /// When the drain began; the graceful period runs from here.
        since: Instant,
        /// The operator's reason (may be empty).
        reason: String,
    },
}

/// The gate's whole input: one snapshot, no I/O behind it.
#[derive(Debug, Clone)]
pub struct GateInput<'a> {
    /// Every desired VIP.
    pub vips: &'a [VipView],
    /// HAProxy's master and admin socket are alive.
    pub haproxy_up: bool,
    /// A host-local fault that makes every announcement unsafe (a corrupt
    /// state file the gate depends on); withdraws every VIP with this text.
    pub host_fault: Option<&'a str>,
    /// The drain state.
    pub drain: &'a DrainState,
    /// A drain variable is configured (`[bird] drain_variable`), so drains are graceful.
    pub graceful: bool,
    /// How long a graceful drain keeps VIPs in the drain set (`[bird] drain_grace`).
    pub drain_grace: Duration,
    /// `[bird] on_unhealthy`: what a VIP whose only problems are unhealthy
    /// services becomes (withdrawn, or demoted).
    pub on_unhealthy: OnUnhealthy,
    /// `[vip] interface`, named in the reason text.
    pub interface: &'a str,
    /// The current time; the only clock the gate sees.
    pub now: Instant,
}

/// What happens to one VIP's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Announcement {
    /// In the advertise set: announced normally.
    Advertise,
    /// In the graceful drain set: still announced, with the operator's
    /// drain treatment (AS-path prepend, GRACEFUL_SHUTDOWN), until the grace ends.
    Drain,
    /// In the demote set (`on_unhealthy = "demote"`): a service is
    /// unhealthy, but nothing host-local is wrong; announced with a longer
    /// AS path, so the ToR prefers healthy hosts and falls back to this one
    /// only when no host of the group is healthy.
    Demote,
    /// Not announced.
    Withdrawn,
}

impl Announcement {
    /// True while BIRD announces the prefix in any form (advertise or drain set).
    pub fn is_announced(self) -> bool {
        !matches!(self, Announcement::Withdrawn)
    }

    /// Stable lower-case name for status output and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Announcement::Advertise => "advertise",
            Announcement::Drain => "drain",
            Announcement::Demote => "demote",
            Announcement::Withdrawn => "withdrawn",
        }
    }
}

/// The gate's verdict on one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipDecision {
    /// The VIP prefix.
    pub vip: IpNet,
    /// Advertise, drain set or withdrawn.
    pub announcement: Announcement,
    /// Why the VIP is not advertised normally; `None` exactly when advertised.
    pub reason: Option<String>,
}

/// Decides every VIP of `input`, in input order.
pub fn decide(input: &GateInput) -> Vec<VipDecision> {
    input.vips.iter().map(|v| decide_one(input, v)).collect()
}

fn decide_one(input: &GateInput, view: &VipView) -> VipDecision {
    // Conditions that are about the VIP itself (not the drain), in the order
    // an operator would check them.
    // Host-local problems: nothing here can serve, whatever the policy.
    let mut problems: Vec<String> = Vec::new();
    if let Some(f) = input.host_fault {
        problems.push(f.to_string());
    }
    if !input.haproxy_up {
        problems.push("HAProxy is down or not answering".to_string());
    }
    if !view.address_present {
        problems.push(format!("address missing on {}", input.interface));
    }
    if view.services.is_empty() {
        problems.push("no service binds this VIP".to_string());
    }
    let hard = problems.len();
    for s in view.services.iter() {
        let ServiceState::Unhealthy(error) = &s.state else {
            continue;
        };
        let first_line = error
            .as_deref()
            .and_then(|e| e.lines().map(str::trim).find(|l| !l.is_empty()));
        problems.push(match first_line {
            Some(e) => format!("service {} unhealthy: {e}", s.name),
            None => format!("service {} unhealthy", s.name),
        });
    }
    let serviceable = problems.is_empty();
    let demotable = hard == 0 && input.on_unhealthy == OnUnhealthy::Demote;

    let (announcement, reason) = match input.drain {
        DrainState::Undrained if serviceable => (Announcement::Advertise, None),
        DrainState::Undrained if demotable => (
            Announcement::Demote,
            Some(format!("demoted: {}", problems.join("; "))),
        ),
        DrainState::Undrained => (Announcement::Withdrawn, Some(problems.join("; "))),
        DrainState::Drained { since, reason } => {
            let drained = if reason.trim().is_empty() {
                "drained".to_string()
            } else {
                format!("drained: {}", reason.trim())
            };
            if serviceable && input.graceful && in_grace(input, *since) {
                (
                    Announcement::Drain,
                    Some(format!("{drained} (graceful: in the drain set)")),
                )
            } else {
                let mut all = vec![drained];
                all.append(&mut problems);
                (Announcement::Withdrawn, Some(all.join("; ")))
            }
        }
    };
    VipDecision {
        vip: view.vip,
        announcement,
        reason,
    }
}

/// The end of the graceful drain period, or `None` when it never ends
/// (`since + drain_grace` overflows `Instant`).
fn grace_end(input: &GateInput, since: Instant) -> Option<Instant> {
    since.checked_add(input.drain_grace)
}

fn in_grace(input: &GateInput, since: Instant) -> bool {
    match grace_end(input, since) {
        Some(end) => input.now < end,
        None => true,
    }
}

/// The desired BIRD announcements for these decisions.
pub fn announcements(decisions: &[VipDecision]) -> DesiredAnnouncements {
    let pick = |want: Announcement| -> BTreeSet<IpNet> {
        decisions
            .iter()
            .filter(|d| d.announcement == want)
            .map(|d| d.vip)
            .collect()
    };
    DesiredAnnouncements {
        advertise: pick(Announcement::Advertise),
        drain: pick(Announcement::Drain),
        demote: pick(Announcement::Demote),
    }
}

/// When the decisions for `input` next change by the passage of time alone
/// (the graceful drain period ending while some VIP is in the drain set), so
/// the caller can arm a timer and run the gate again then. `None` when no
/// time-based change is pending.
pub fn next_deadline(input: &GateInput) -> Option<Instant> {
    let DrainState::Drained { since, .. } = input.drain else {
        return None;
    };
    let end = grace_end(input, *since)?;
    let draining = decide(input)
        .iter()
        .any(|d| d.announcement == Announcement::Drain);
    (draining && end > input.now).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "192.0.2.10/32";
    const V6: &str = "2001:db8:10::10/128";

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn view(vip: &str, present: bool, services: Vec<ServiceView>) -> VipView {
        VipView {
            vip: net(vip),
            address_present: present,
            services,
        }
    }

    fn ok(name: &str) -> ServiceView {
        ServiceView::healthy(name)
    }

    fn bad(name: &str, err: &str) -> ServiceView {
        ServiceView::unhealthy(name, err)
    }

    /// A fixed reference point; every other instant is an offset from it.
    struct Clock(Instant);

    impl Clock {
        fn at(&self, secs: u64) -> Instant {
            self.0 + Duration::from_secs(secs)
        }
    }

    struct Case {
        name: &'static str,
        vips: Vec<VipView>,
        haproxy_up: bool,
        host_fault: Option<&'static str>,
        /// `Some((since_secs, reason))` = drained since that offset.
        drained: Option<(u64, &'static str)>,
        graceful: bool,
        on_unhealthy: OnUnhealthy,
        now: u64,
        want: Vec<(Announcement, Option<&'static str>)>,
    }

    fn run(case: &Case) -> Vec<VipDecision> {
        let clock = Clock(crate::clock::now());
        let drain = match case.drained {
            None => DrainState::Undrained,
            Some((since, reason)) => DrainState::Drained {
                since: clock.at(since),
                reason: reason.to_string(),
            },
        };
        let input = GateInput {
            vips: &case.vips,
            haproxy_up: case.haproxy_up,
            host_fault: case.host_fault,
            drain: &drain,
            graceful: case.graceful,
            drain_grace: Duration::from_secs(30),
            on_unhealthy: case.on_unhealthy,
            interface: "lo",
            now: clock.at(case.now),
        };
        decide(&input)
    }

    use Announcement::{Advertise, Demote, Drain, Withdrawn};

    #[test]
    fn rule_table() {
        let cases = vec![
            Case {
                name: "all conditions hold",
                vips: vec![view(V4, true, vec![ok("www"), ok("git_ssh")])],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(Advertise, None)],
            },
            Case {
                name: "a pending service does not withdraw the VIP",
                vips: vec![view(
                    V4,
                    true,
                    vec![ok("www"), ServiceView::pending("api", "not risen yet")],
                )],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(Advertise, None)],
            },
            Case {
                name: "pending does not excuse another failure",
                vips: vec![view(
                    V4,
                    true,
                    vec![bad("www", "refused"), ServiceView::pending("api", "x")],
                )],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(Withdrawn, Some("service www unhealthy: refused"))],
            },
            Case {
                name: "a host fault withdraws every VIP, first in the reason",
                vips: vec![view(V4, true, vec![ok("www")]), view(V6, false, vec![])],
                haproxy_up: true,
                host_fault: Some("VIP ownership file corrupt"),
                drained: None,
                graceful: true,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![
                    (Withdrawn, Some("VIP ownership file corrupt")),
                    (
                        Withdrawn,
                        Some("VIP ownership file corrupt; address missing on lo; no service binds this VIP"),
                    ),
                ],
            },
            Case {
                name: "demote: unhealthy services demote, with the reason",
                vips: vec![view(V4, true, vec![ok("www"), bad("api", "HTTP 503")])],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Demote,
                now: 0,
                want: vec![(Demote, Some("demoted: service api unhealthy: HTTP 503"))],
            },
            Case {
                name: "demote: host-local failures still withdraw",
                vips: vec![
                    view(V4, false, vec![bad("www", "refused")]),
                    view(V6, true, vec![]),
                ],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Demote,
                now: 0,
                want: vec![
                    (
                        Withdrawn,
                        Some("address missing on lo; service www unhealthy: refused"),
                    ),
                    (Withdrawn, Some("no service binds this VIP")),
                ],
            },
            Case {
                name: "demote: HAProxy down withdraws",
                vips: vec![view(V4, true, vec![bad("www", "refused")])],
                haproxy_up: false,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Demote,
                now: 0,
                want: vec![(
                    Withdrawn,
                    Some("HAProxy is down or not answering; service www unhealthy: refused"),
                )],
            },
            Case {
                name: "demote: drained withdraws, the operator's word wins",
                vips: vec![view(V4, true, vec![bad("www", "refused")])],
                haproxy_up: true,
                host_fault: None,
                drained: Some((0, "m")),
                graceful: true,
                on_unhealthy: OnUnhealthy::Demote,
                now: 1,
                want: vec![(Withdrawn, Some("drained: m; service www unhealthy: refused"))],
            },
            Case {
                name: "demote: a healthy VIP is advertised",
                vips: vec![view(V4, true, vec![ok("www")])],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Demote,
                now: 0,
                want: vec![(Advertise, None)],
            },
            Case {
                name: "address missing",
                vips: vec![view(V4, false, vec![ok("www")])],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(Withdrawn, Some("address missing on lo"))],
            },
            Case {
                name: "haproxy down",
                vips: vec![view(V4, true, vec![ok("www")])],
                haproxy_up: false,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(Withdrawn, Some("HAProxy is down or not answering"))],
            },
            Case {
                name: "no service",
                vips: vec![view(V4, true, vec![])],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(Withdrawn, Some("no service binds this VIP"))],
            },
            Case {
                name: "one of two services unhealthy",
                vips: vec![view(
                    V4,
                    true,
                    vec![ok("www"), bad("git_ssh", "connection refused")],
                )],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(
                    Withdrawn,
                    Some("service git_ssh unhealthy: connection refused"),
                )],
            },
            Case {
                name: "every unhealthy service named, first error line each",
                vips: vec![view(
                    V4,
                    true,
                    vec![
                        bad("a", "timeout after 500ms\nsecond line"),
                        ok("b"),
                        bad("c", "\n  HTTP 503\nmore"),
                    ],
                )],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(
                    Withdrawn,
                    Some("service a unhealthy: timeout after 500ms; service c unhealthy: HTTP 503"),
                )],
            },
            Case {
                name: "unhealthy without error text",
                vips: vec![view(
                    V4,
                    true,
                    vec![ServiceView {
                        name: "www".into(),
                        state: ServiceState::Unhealthy(None),
                    }],
                )],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(Withdrawn, Some("service www unhealthy"))],
            },
            Case {
                name: "every failing condition listed in a fixed order",
                vips: vec![view(V4, false, vec![bad("www", "refused")])],
                haproxy_up: false,
                host_fault: None,
                drained: Some((0, "kernel upgrade")),
                graceful: true,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 1,
                want: vec![(
                    Withdrawn,
                    Some(
                        "drained: kernel upgrade; HAProxy is down or not answering; \
                         address missing on lo; service www unhealthy: refused",
                    ),
                )],
            },
            Case {
                name: "no service and address missing",
                vips: vec![view(V6, false, vec![])],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(
                    Withdrawn,
                    Some("address missing on lo; no service binds this VIP"),
                )],
            },
            Case {
                name: "drained, not graceful: withdrawn at once",
                vips: vec![view(V4, true, vec![ok("www")])],
                haproxy_up: true,
                host_fault: None,
                drained: Some((0, "maintenance")),
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(Withdrawn, Some("drained: maintenance"))],
            },
            Case {
                name: "drained with empty reason",
                vips: vec![view(V4, true, vec![ok("www")])],
                haproxy_up: true,
                host_fault: None,
                drained: Some((0, "  ")),
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![(Withdrawn, Some("drained"))],
            },
            Case {
                name: "graceful drain: healthy VIP in the drain set during grace",
                vips: vec![view(V4, true, vec![ok("www")])],
                haproxy_up: true,
                host_fault: None,
                drained: Some((10, "maintenance")),
                graceful: true,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 39,
                want: vec![(
                    Drain,
                    Some("drained: maintenance (graceful: in the drain set)"),
                )],
            },
            Case {
                name: "graceful drain: at since + grace exactly, withdrawn",
                vips: vec![view(V4, true, vec![ok("www")])],
                haproxy_up: true,
                host_fault: None,
                drained: Some((10, "maintenance")),
                graceful: true,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 40,
                want: vec![(Withdrawn, Some("drained: maintenance"))],
            },
            Case {
                name: "graceful drain: unhealthy VIP is withdrawn, not drained",
                vips: vec![
                    view(V4, true, vec![ok("www")]),
                    view(V6, true, vec![bad("www6", "refused")]),
                ],
                haproxy_up: true,
                host_fault: None,
                drained: Some((0, "m")),
                graceful: true,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 5,
                want: vec![
                    (Drain, Some("drained: m (graceful: in the drain set)")),
                    (
                        Withdrawn,
                        Some("drained: m; service www6 unhealthy: refused"),
                    ),
                ],
            },
            Case {
                name: "graceful drain: missing address is withdrawn",
                vips: vec![view(V4, false, vec![ok("www")])],
                haproxy_up: true,
                host_fault: None,
                drained: Some((0, "m")),
                graceful: true,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 5,
                want: vec![(Withdrawn, Some("drained: m; address missing on lo"))],
            },
            Case {
                name: "graceful drain but HAProxy down: no drain set",
                vips: vec![view(V4, true, vec![ok("www")])],
                haproxy_up: false,
                host_fault: None,
                drained: Some((0, "m")),
                graceful: true,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 5,
                want: vec![(
                    Withdrawn,
                    Some("drained: m; HAProxy is down or not answering"),
                )],
            },
            Case {
                name: "HAProxy down withdraws every VIP, healthy or not",
                vips: vec![
                    view(V4, true, vec![ok("www")]),
                    view(V6, true, vec![ok("www6")]),
                ],
                haproxy_up: false,
                host_fault: None,
                drained: None,
                graceful: true,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![
                    (Withdrawn, Some("HAProxy is down or not answering")),
                    (Withdrawn, Some("HAProxy is down or not answering")),
                ],
            },
            Case {
                name: "VIPs are independent",
                vips: vec![
                    view(V4, true, vec![ok("www")]),
                    view(V6, true, vec![bad("www6", "TLS handshake failed")]),
                    view("198.51.100.0/24", false, vec![ok("big")]),
                ],
                haproxy_up: true,
                host_fault: None,
                drained: None,
                graceful: false,
                on_unhealthy: OnUnhealthy::Withdraw,
                now: 0,
                want: vec![
                    (Advertise, None),
                    (
                        Withdrawn,
                        Some("service www6 unhealthy: TLS handshake failed"),
                    ),
                    (Withdrawn, Some("address missing on lo")),
                ],
            },
        ];
        for case in &cases {
            let got = run(case);
            assert_eq!(got.len(), case.vips.len(), "{}", case.name);
            for (i, (d, (ann, reason))) in got.iter().zip(&case.want).enumerate() {
                assert_eq!(d.vip, case.vips[i].vip, "{}: vip order", case.name);
                assert_eq!(d.announcement, *ann, "{}: VIP {i} announcement", case.name);
                assert_eq!(
                    d.reason.as_deref(),
                    *reason,
                    "{}: VIP {i} reason",
                    case.name
                );
                assert_eq!(
                    d.reason.is_none(),
                    d.announcement == Advertise,
                    "{}: a reason exactly when not advertised",
                    case.name
                );
            }
        }
    }

    /// Exhaustive over the five conditions (× drained/graceful/in grace): the
    /// announcement follows the documented formula (docs/gating.md) and only it.
    #[test]
    fn formula_holds_for_every_combination() {
        let clock = Clock(crate::clock::now());
        for bits in 0u32..(1 << 7) {
            let bit = |n: u32| bits & (1 << n) != 0;
            let (present, haproxy_up, has_service, all_healthy) = (bit(0), bit(1), bit(2), bit(3));
            let (drained, graceful, in_grace) = (bit(4), bit(5), bit(6));
            let services = match (has_service, all_healthy) {
                (false, _) => vec![],
                (true, true) => vec![ok("a"), ok("b")],
                (true, false) => vec![ok("a"), bad("b", "down")],
            };
            let vips = vec![view(V4, present, services)];
            let drain = if drained {
                DrainState::Drained {
                    since: clock.at(100),
                    reason: "r".into(),
                }
            } else {
                DrainState::Undrained
            };
            let input = GateInput {
                vips: &vips,
                haproxy_up,
                host_fault: None,
                drain: &drain,
                graceful,
                drain_grace: Duration::from_secs(30),
                on_unhealthy: OnUnhealthy::Withdraw,
                interface: "lo",
                now: clock.at(if in_grace { 110 } else { 200 }),
            };
            let serviceable = present && haproxy_up && has_service && all_healthy;
            let want = if serviceable && !drained {
                Advertise
            } else if serviceable && graceful && in_grace {
                Drain
            } else {
                Withdrawn
            };
            let got = decide(&input);
            assert_eq!(got[0].announcement, want, "bits {bits:07b}");
            let deadline = next_deadline(&input);
            assert_eq!(
                deadline.is_some(),
                want == Drain,
                "bits {bits:07b}: a deadline exactly while in the drain set"
            );
        }
    }

    #[test]
    fn announcements_split_sets() {
        let d = vec![
            VipDecision {
                vip: net(V4),
                announcement: Advertise,
                reason: None,
            },
            VipDecision {
                vip: net(V6),
                announcement: Drain,
                reason: Some("drained".into()),
            },
            VipDecision {
                vip: net("198.51.100.10/32"),
                announcement: Withdrawn,
                reason: Some("x".into()),
            },
            VipDecision {
                vip: net("198.51.100.11/32"),
                announcement: Demote,
                reason: Some("demoted: y".into()),
            },
        ];
        let a = announcements(&d);
        assert_eq!(a.advertise, BTreeSet::from([net(V4)]));
        assert_eq!(a.drain, BTreeSet::from([net(V6)]));
        assert_eq!(a.demote, BTreeSet::from([net("198.51.100.11/32")]));
        assert!(announcements(&[]).is_empty());
    }

    #[test]
    fn deadline_is_grace_end_while_draining() {
        let clock = Clock(crate::clock::now());
        let vips = vec![view(V4, true, vec![ok("www")])];
        let drain = DrainState::Drained {
            since: clock.at(10),
            reason: "m".into(),
        };
        let mut input = GateInput {
            vips: &vips,
            haproxy_up: true,
            host_fault: None,
            drain: &drain,
            graceful: true,
            drain_grace: Duration::from_secs(30),
            on_unhealthy: OnUnhealthy::Withdraw,
            interface: "lo",
            now: clock.at(12),
        };
        assert_eq!(next_deadline(&input), Some(clock.at(40)));
        // At the deadline the change has happened: nothing further pending.
        input.now = clock.at(40);
        assert_eq!(decide(&input)[0].announcement, Withdrawn);
        assert_eq!(next_deadline(&input), None);
        // Not graceful: nothing time-based.
        input.now = clock.at(12);
        input.graceful = false;
        assert_eq!(next_deadline(&input), None);
        // Undrained: nothing time-based.
        input.graceful = true;
        input.drain = &DrainState::Undrained;
        assert_eq!(next_deadline(&input), None);
    }

    #[test]
    fn zero_grace_withdraws_at_once() {
        let clock = Clock(crate::clock::now());
        let vips = vec![view(V4, true, vec![ok("www")])];
        let drain = DrainState::Drained {
            since: clock.at(10),
            reason: "m".into(),
        };
        let input = GateInput {
            vips: &vips,
            haproxy_up: true,
            host_fault: None,
            drain: &drain,
            graceful: true,
            drain_grace: Duration::ZERO,
            on_unhealthy: OnUnhealthy::Withdraw,
            interface: "lo",
            now: clock.at(10),
        };
        assert_eq!(decide(&input)[0].announcement, Withdrawn);
        assert_eq!(next_deadline(&input), None);
    }

    #[test]
    fn announcement_names() {
        assert!(Advertise.is_announced());
        assert!(Drain.is_announced());
        assert!(Demote.is_announced());
        assert!(!Withdrawn.is_announced());
        assert_eq!(
            [Advertise, Drain, Demote, Withdrawn].map(Announcement::as_str),
            ["advertise", "drain", "demote", "withdrawn"]
        );
    }
}
