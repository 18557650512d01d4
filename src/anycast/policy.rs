//! PURE: the anycast loop's decisions, short of the gate's rule itself.
//!
//! The loop ([`super::run`]) observes the document in force, which of its
//! frontends HAProxy runs (the reconciler's [`FrontendInstall`] and the
//! watcher's [`HaproxyView`]), every service's health, the VIP addresses and
//! the drain flag; this module turns that into the gate's per-VIP views and
//! the monitor's check set, and decides when to publish, what to release
//! and how to stop. No clock, no I/O: `now` comes in.
//!
//! Rules (docs/reliability.md, "Gating"):
//! - **Checks prove HAProxy.** A frontend's service is checked only while the
//!   running config has it as desired, and counts healthy only while HAProxy
//!   itself lists the frontend: a foreign listener on the VIP port can never
//!   make it pass, and a frontend whose reload failed is "not installed".
//! - **Admission.** A service that appears (or changes) behind a VIP that is
//!   announced at that moment is *pending*: it does not withdraw the VIP
//!   until it has had its chance — `rise` passes or `fall` failures of checks
//!   that ran against the installed frontend, bounded by
//!   `rise × interval + timeout` from the moment its frontend is confirmed
//!   (and by [`Limits::install`] for the install itself). A VIP that is not
//!   announced waits for all of its services.
//! - **Fail closed.** Anything unknown is unhealthy: a service the monitor has
//!   not judged, a frontend HAProxy does not list, HAProxy not answering.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;

use crate::gate::{Announcement, ServiceView, VipDecision, VipView};
use crate::haproxy::watch::HaproxyView;
use crate::health::monitor::HealthSnapshot;
use crate::health::spec::{ServiceCheck, ServiceKey, ServiceOrigin};
use crate::model::DesiredState;
use crate::reconcile::policy::Install;
use crate::reconcile::FrontendInstall;

/// Bounds of the admission rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a new service may stay pending while its frontend is not
    /// installed yet (the reload is coalesced and may wait for its address):
    /// `min_reload_interval + reload_timeout` plus a check window.
    pub install: Duration,
}

/// How one service was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Admission {
    /// Its VIP was announced when it appeared: it may be pending.
    admitted: bool,
    /// When it appeared (or its frontend stopped running as desired).
    since: Instant,
    /// When its frontend was confirmed running as desired (it entered the check set).
    confirmed: Option<Instant>,
}

/// Every service of the document, by VIP, with its check definition.
#[derive(Debug, Clone, Default)]
pub struct Services {
    by_vip: BTreeMap<IpNet, Vec<ServiceCheck>>,
}

impl Services {
    /// Groups `checks` (from [`crate::health::spec::desired_checks`]) by VIP,
    /// with every VIP of `d` present (possibly without services).
    pub fn new(d: &DesiredState, checks: Vec<ServiceCheck>) -> Services {
        let mut by_vip: BTreeMap<IpNet, Vec<ServiceCheck>> =
            d.vips.iter().map(|v| (v.address, Vec::new())).collect();
        for c in checks {
            by_vip.entry(c.key.vip).or_default().push(c);
        }
        Services { by_vip }
    }

    fn all(&self) -> impl Iterator<Item = &ServiceCheck> {
        self.by_vip.values().flatten()
    }
}

/// True when a frontend service's frontend runs as desired.
fn running(c: &ServiceCheck, install: &FrontendInstall) -> bool {
    c.key.origin == ServiceOrigin::Local
        || install.frontends.get(&c.key.name) == Some(&Install::Running)
}

/// The monitor's check set: local checks always, frontend checks only while
/// the running config has the frontend as desired (a check against a
/// frontend that is not installed could only reach someone else).
pub fn check_set(services: &Services, install: &FrontendInstall) -> Vec<ServiceCheck> {
    services
        .all()
        .filter(|c| running(c, install))
        .cloned()
        .collect()
}

/// Everything the anycast policy observes at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The services of the document in force.
    pub services: &'a Services,
    /// Which frontends the running config has as desired.
    pub install: &'a FrontendInstall,
    /// What HAProxy itself says (liveness, frontends of the current worker).
    pub haproxy: &'a HaproxyView,
    /// The monitor's results.
    pub health: &'a HealthSnapshot,
    /// VIP prefixes present on the interface.
    pub present: &'a BTreeSet<IpNet>,
    /// The current time.
    pub now: Instant,
}

/// The policy's memory between decisions.
#[derive(Debug, Clone, Default)]
pub struct AnycastState {
    admissions: BTreeMap<ServiceKey, Admission>,
    /// The last decision per VIP; VIPs adopted at start count as advertised.
    previous: BTreeMap<IpNet, Announcement>,
}

impl AnycastState {
    /// The state at start: `adopted` VIPs (announced by the previous agent
    /// process) count as announced, so their services are admitted.
    pub fn new(adopted: &BTreeSet<IpNet>) -> AnycastState {
        AnycastState {
            admissions: BTreeMap::new(),
            previous: adopted
                .iter()
                .map(|v| (*v, Announcement::Advertise))
                .collect(),
        }
    }

    fn announced(&self, vip: &IpNet) -> bool {
        self.previous.get(vip) == Some(&Announcement::Advertise)
    }

    /// Takes an observation in: which services appeared, changed, or had
    /// their frontend confirmed.
    pub fn observe(&mut self, o: &Observation) {
        let mut seen: BTreeSet<&ServiceKey> = BTreeSet::new();
        for c in o.services.all() {
            seen.insert(&c.key);
            let run = running(c, o.install);
            let announced = self.announced(&c.key.vip);
            let fresh = Admission {
                admitted: announced,
                since: o.now,
                confirmed: run.then_some(o.now),
            };
            match self.admissions.get_mut(&c.key) {
                None => {
                    self.admissions.insert(c.key.clone(), fresh);
                }
                Some(a) => match (a.confirmed, run) {
                    (None, true) => a.confirmed = Some(o.now),
                    // Its frontend no longer runs as desired (changed, or
                    // HAProxy restarted with another config): admitted anew.
                    (Some(_), false) => *a = fresh,
                    _ => {}
                },
            }
        }
        self.admissions.retain(|k, _| seen.contains(k));
    }

    /// Remembers the decisions (for admission: is the VIP announced?).
    pub fn record(&mut self, decisions: &[VipDecision]) {
        self.previous = decisions.iter().map(|d| (d.vip, d.announcement)).collect();
    }

    /// The gate's view of every VIP of the document. Call after [`observe`](Self::observe).
    pub fn views(&self, o: &Observation, limits: Limits) -> Vec<VipView> {
        o.services
            .by_vip
            .iter()
            .map(|(vip, checks)| VipView {
                vip: *vip,
                address_present: o.present.contains(vip),
                services: checks
                    .iter()
                    .map(|c| self.service_view(c, o, limits))
                    .collect(),
            })
            .collect()
    }

    /// When a pending service's chance runs out: the next decision must
    /// happen then even if nothing else changes.
    pub fn next_deadline(&self, o: &Observation, limits: Limits) -> Option<Instant> {
        o.services
            .all()
            .filter_map(|c| {
                let a = self.admissions.get(&c.key)?;
                if !a.admitted || !self.announced(&c.key.vip) {
                    return None;
                }
                let end = window_end(c, a, limits);
                (end > o.now).then_some(end)
            })
            .min()
    }

    fn service_view(&self, c: &ServiceCheck, o: &Observation, limits: Limits) -> ServiceView {
        let name = c.key.name.as_str();
        let verdict = self.verdict(c, o);
        let Err(problem) = verdict else {
            return ServiceView::healthy(name);
        };
        let may_pend = problem.may_pend
            && self.announced(&c.key.vip)
            && self
                .admissions
                .get(&c.key)
                .is_some_and(|a| a.admitted && o.now < window_end(c, a, limits));
        if may_pend {
            ServiceView::pending(name, problem.text)
        } else {
            ServiceView::unhealthy(name, problem.text)
        }
    }

    /// Healthy, or the problem and whether admission may excuse it.
    fn verdict(&self, c: &ServiceCheck, o: &Observation) -> Result<(), Problem> {
        if c.key.origin == ServiceOrigin::Frontend {
            match o.install.frontends.get(&c.key.name) {
                Some(Install::Running) => {}
                Some(Install::Failed(why)) => {
                    return Err(Problem::final_(format!("not installed: {why}")))
                }
                Some(Install::Pending(why)) => {
                    return Err(Problem::pending(format!("not installed yet: {why}")))
                }
                None => return Err(Problem::pending("not installed yet")),
            }
            if !o.haproxy.runs(&c.key.name) {
                return Err(Problem::pending(format!(
                    "HAProxy does not list frontend {}",
                    c.key.name
                )));
            }
        }
        let Some(s) = o.health.services.get(&c.key) else {
            return Err(Problem::pending("not checked yet"));
        };
        if s.health.healthy {
            return Ok(());
        }
        let text = s
            .health
            .last_error
            .clone()
            .unwrap_or_else(|| "not risen yet".into());
        // `fall` failures of checks that could run: its chance is over.
        if s.health.fail_streak >= c.fall {
            Err(Problem::final_(text))
        } else {
            Err(Problem::pending(text))
        }
    }
}

/// Why a service does not count as healthy.
struct Problem {
    text: String,
    /// Admission may excuse it while the service has its chance.
    may_pend: bool,
}

impl Problem {
    fn pending(text: impl Into<String>) -> Problem {
        Problem {
            text: text.into(),
            may_pend: true,
        }
    }

    fn final_(text: impl Into<String>) -> Problem {
        Problem {
            text: text.into(),
            may_pend: false,
        }
    }
}

/// End of a service's chance: `rise × interval + timeout` after its frontend
/// was confirmed, or [`Limits::install`] after it appeared while not installed.
fn window_end(c: &ServiceCheck, a: &Admission, limits: Limits) -> Instant {
    match a.confirmed {
        Some(t) => t + c.interval * c.rise + c.timeout,
        None => a.since + limits.install,
    }
}

/// True once the first announcement may be published: HAProxy's liveness
/// answered once (a slow first probe must not withdraw), and the monitor
/// holds every service of its check set (adopted services start healthy;
/// "not checked yet" would withdraw an adopted VIP for a moment) — or the
/// bounded wait for both is over. Without a document, only the wait counts.
pub fn ready_to_publish(
    has_document: bool,
    haproxy_probed: bool,
    monitor_caught_up: bool,
    waited_enough: bool,
) -> bool {
    if has_document {
        haproxy_probed && (monitor_caught_up || waited_enough)
    } else {
        waited_enough
    }
}

/// True when the health snapshot holds every service of the check set the
/// monitor was last given.
pub fn monitor_caught_up(checks: &[ServiceCheck], h: &HealthSnapshot) -> bool {
    checks.iter().all(|c| h.services.contains_key(&c.key))
}

/// How the anycast task leaves BIRD when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Withdraw everything and wait (bounded) for BIRD to confirm.
    Withdraw,
    /// Leave the announcements to the next agent process.
    Keep,
}

/// `on_stop = keep`, a configuration reload (the next generation takes
/// over) or an operator's hand-over keep the announcements; anything else
/// withdraws them.
pub fn stop_mode(on_stop_keep: bool, generation_reload: bool, handover: bool) -> StopMode {
    if on_stop_keep || generation_reload || handover {
        StopMode::Keep
    } else {
        StopMode::Withdraw
    }
}

/// Addresses that may be removed now: owned, no longer desired, and BIRD
/// confirmed it announces them no more (`confirmed` is what BIRD runs;
/// `None`: not confirmed yet, so nothing is released).
pub fn releasable(candidates: &BTreeSet<IpNet>, confirmed: Option<&BTreeSet<IpNet>>) -> Vec<IpNet> {
    let Some(confirmed) = confirmed else {
        return Vec::new();
    };
    candidates
        .iter()
        .filter(|v| !confirmed.contains(v))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests;
