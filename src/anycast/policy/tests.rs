use std::sync::Arc;

use super::*;
use crate::config::HealthConfig;
use crate::gate::{self, DrainState, GateInput, ServiceState};
use crate::health::monitor::ServiceStatus;
use crate::health::spec::desired_checks;
use crate::health::ServiceHealth;
use crate::model::validate::{parse_document, ValidateContext};

const VIP: &str = "192.0.2.10/32";

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn health_cfg() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        rise: 3,
        fall: 2,
        fast_interval: Duration::from_millis(200),
    }
}

const LIMITS: Limits = Limits {
    install: Duration::from_secs(30),
};

fn services(frontends: &[&str]) -> Services {
    let fe: Vec<serde_json::Value> = frontends
        .iter()
        .enumerate()
        .map(|(i, n)| serde_json::json!({"name": n, "bind": [format!("192.0.2.10:{}", 80 + i)], "mode": "tcp", "default_pool": "p"}))
        .collect();
    let body = serde_json::json!({
        "schema": 1, "revision": 1, "group": "blue",
        "vips": [{"address": VIP}],
        "frontends": fe,
        "pools": [{"name": "p", "mode": "tcp", "servers": []}]
    });
    let d = parse_document(
        &serde_json::to_vec(&body).unwrap(),
        &ValidateContext {
            group: "blue".into(),
        },
    )
    .unwrap();
    Services::new(&d, desired_checks(&d, &health_cfg(), &[]))
}

/// The world as the policy sees it, built step by step.
struct World {
    services: Services,
    install: FrontendInstall,
    haproxy: HaproxyView,
    health: HealthSnapshot,
    present: BTreeSet<IpNet>,
}

impl World {
    fn new(frontends: &[&str]) -> World {
        World {
            services: services(frontends),
            install: FrontendInstall::default(),
            haproxy: HaproxyView {
                up: Some(true),
                worker_pid: Some(1),
                frontends: Some(Arc::new(BTreeSet::new())),
                error: None,
            },
            health: HealthSnapshot::default(),
            present: BTreeSet::from([net(VIP)]),
        }
    }

    /// `name` installed, listed by HAProxy, with `health`.
    fn serving(&mut self, name: &str, health: Option<ServiceHealth>) {
        self.install.frontends.insert(name.into(), Install::Running);
        let mut f = (**self.haproxy.frontends.as_ref().unwrap()).clone();
        f.insert(name.into());
        self.haproxy.frontends = Some(Arc::new(f));
        self.set_health(name, health);
    }

    fn set_health(&mut self, name: &str, health: Option<ServiceHealth>) {
        let check = self
            .services
            .all()
            .find(|c| c.key.name == name)
            .unwrap()
            .clone();
        match health {
            Some(h) => {
                self.health
                    .services
                    .insert(check.key.clone(), ServiceStatus::of(&check, h, 1));
            }
            None => {
                self.health.services.remove(&check.key);
            }
        }
    }

    fn obs(&self, now: Instant) -> Observation<'_> {
        Observation {
            services: &self.services,
            install: &self.install,
            haproxy: &self.haproxy,
            health: &self.health,
            present: &self.present,
            now,
        }
    }
}

fn healthy() -> ServiceHealth {
    ServiceHealth {
        healthy: true,
        ok_streak: 3,
        checks: 3,
        ..ServiceHealth::new()
    }
}

fn streak(ok: u32, fail: u32, error: Option<&str>) -> ServiceHealth {
    ServiceHealth {
        healthy: false,
        ok_streak: ok,
        fail_streak: fail,
        checks: (ok + fail) as u64,
        last_error: error.map(str::to_string),
        ..ServiceHealth::new()
    }
}

/// One decision: observe, view, decide (HAProxy up, undrained), record.
fn step(st: &mut AnycastState, w: &World, now: Instant) -> (Vec<VipView>, Vec<VipDecision>) {
    let o = w.obs(now);
    st.observe(&o);
    let views = st.views(&o, LIMITS);
    let decisions = gate::decide(&GateInput {
        vips: &views,
        haproxy_up: w.haproxy.up == Some(true),
        host_fault: None,
        drain: &DrainState::Undrained,
        graceful: false,
        drain_grace: Duration::from_secs(30),
        on_unhealthy: crate::config::OnUnhealthy::Withdraw,
        interface: "lo",
        now: now.into_std(),
    });
    st.record(&decisions);
    (views, decisions)
}

fn state_of<'a>(views: &'a [VipView], name: &str) -> &'a ServiceState {
    &views[0]
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap()
        .state
}

fn is_pending(s: &ServiceState, part: &str) -> bool {
    matches!(s, ServiceState::Pending(t) if t.contains(part))
}

fn is_unhealthy(s: &ServiceState, part: &str) -> bool {
    matches!(s, ServiceState::Unhealthy(Some(t)) if t.contains(part))
}

/// A VIP announced with `www`; then `api` is pushed onto it.
fn announced_with_www(t0: Instant) -> (AnycastState, World) {
    let mut st = AnycastState::default();
    let mut w = World::new(&["www"]);
    w.serving("www", Some(healthy()));
    let (_, d) = step(&mut st, &w, t0);
    assert_eq!(d[0].announcement, Announcement::Advertise);
    let www = w.health.services.values().next().unwrap().clone();
    let mut w2 = World::new(&["www", "api"]);
    w2.install = w.install.clone();
    w2.haproxy = w.haproxy.clone();
    w2.health.services.insert(
        w2.services
            .all()
            .find(|c| c.key.name == "www")
            .unwrap()
            .key
            .clone(),
        www,
    );
    (st, w2)
}

#[test]
fn a_service_pushed_onto_an_announced_vip_is_pending_until_it_rises() {
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_millis(n);
    let (mut st, mut w) = announced_with_www(t0);
    w.install
        .frontends
        .insert("api".into(), Install::Pending("reload pending".into()));
    // The document arrives: api is not installed yet, the VIP stays announced.
    let (v, d) = step(&mut st, &w, s(10));
    assert!(
        is_pending(state_of(&v, "api"), "not installed yet"),
        "{v:?}"
    );
    assert_eq!(d[0].announcement, Announcement::Advertise);
    // The reload: installed, HAProxy lists it, not checked yet.
    w.serving("api", None);
    let (v, d) = step(&mut st, &w, s(5_000));
    assert!(is_pending(state_of(&v, "api"), "not checked yet"), "{v:?}");
    assert_eq!(d[0].announcement, Announcement::Advertise);
    // Rising: still pending, still announced.
    w.set_health("api", Some(streak(2, 0, None)));
    let (v, d) = step(&mut st, &w, s(6_500));
    assert!(is_pending(state_of(&v, "api"), "not risen yet"));
    assert_eq!(d[0].announcement, Announcement::Advertise);
    // Risen.
    w.set_health("api", Some(healthy()));
    let (v, d) = step(&mut st, &w, s(7_000));
    assert_eq!(state_of(&v, "api"), &ServiceState::Healthy);
    assert_eq!(d[0].announcement, Announcement::Advertise);
}

#[test]
fn a_pending_service_that_fails_fall_checks_withdraws() {
    let t0 = Instant::now();
    let (mut st, mut w) = announced_with_www(t0);
    w.serving("api", Some(streak(0, 1, Some("connection refused"))));
    let (v, d) = step(&mut st, &w, t0 + Duration::from_secs(1));
    assert!(is_pending(state_of(&v, "api"), "connection refused"));
    assert_eq!(d[0].announcement, Announcement::Advertise);
    w.set_health("api", Some(streak(0, 2, Some("connection refused"))));
    let (v, d) = step(&mut st, &w, t0 + Duration::from_secs(2));
    assert!(is_unhealthy(state_of(&v, "api"), "connection refused"));
    assert_eq!(d[0].announcement, Announcement::Withdrawn);
    assert_eq!(
        d[0].reason.as_deref(),
        Some("service api unhealthy: connection refused")
    );
}

#[test]
fn the_chance_is_bounded_by_rise_interval_timeout_from_confirmation() {
    let t0 = Instant::now();
    let (mut st, mut w) = announced_with_www(t0);
    let confirmed = t0 + Duration::from_secs(4);
    w.serving("api", None);
    let (_, d) = step(&mut st, &w, confirmed);
    assert_eq!(d[0].announcement, Announcement::Advertise);
    // rise 3 × 1 s + 500 ms.
    let end = confirmed + Duration::from_millis(3_500);
    assert_eq!(st.next_deadline(&w.obs(confirmed), LIMITS), Some(end));
    let (_, d) = step(&mut st, &w, end - Duration::from_millis(1));
    assert_eq!(d[0].announcement, Announcement::Advertise);
    let (v, d) = step(&mut st, &w, end);
    assert!(is_unhealthy(state_of(&v, "api"), "not checked yet"));
    assert_eq!(d[0].announcement, Announcement::Withdrawn);
    assert_eq!(st.next_deadline(&w.obs(end), LIMITS), None);
}

#[test]
fn an_install_that_takes_too_long_or_fails_ends_the_chance() {
    let t0 = Instant::now();
    let (mut st, mut w) = announced_with_www(t0);
    w.install
        .frontends
        .insert("api".into(), Install::Pending("reload pending".into()));
    let (_, d) = step(&mut st, &w, t0);
    assert_eq!(d[0].announcement, Announcement::Advertise);
    let (v, d) = step(&mut st, &w, t0 + LIMITS.install);
    assert!(is_unhealthy(state_of(&v, "api"), "not installed yet"));
    assert_eq!(d[0].announcement, Announcement::Withdrawn);

    let (mut st, mut w) = announced_with_www(t0);
    w.install.frontends.insert(
        "api".into(),
        Install::Failed("reload failed: cannot bind socket".into()),
    );
    let (v, d) = step(&mut st, &w, t0);
    assert!(is_unhealthy(
        state_of(&v, "api"),
        "not installed: reload failed: cannot bind socket"
    ));
    assert_eq!(d[0].announcement, Announcement::Withdrawn);
}

#[test]
fn a_vip_that_is_not_announced_waits_for_all_its_services() {
    let t0 = Instant::now();
    let mut st = AnycastState::default();
    let mut w = World::new(&["www", "api"]);
    w.serving("www", Some(healthy()));
    w.serving("api", None);
    let (v, d) = step(&mut st, &w, t0);
    assert!(is_unhealthy(state_of(&v, "api"), "not checked yet"));
    assert_eq!(d[0].announcement, Announcement::Withdrawn);
    // Even once www is healthy and api rising, the VIP stays withdrawn.
    w.set_health("api", Some(streak(2, 0, None)));
    let (_, d) = step(&mut st, &w, t0 + Duration::from_secs(1));
    assert_eq!(d[0].announcement, Announcement::Withdrawn);
    w.set_health("api", Some(healthy()));
    let (_, d) = step(&mut st, &w, t0 + Duration::from_secs(2));
    assert_eq!(d[0].announcement, Announcement::Advertise);
}

#[test]
fn a_check_answered_by_someone_else_never_makes_a_service_healthy() {
    let t0 = Instant::now();
    let mut st = AnycastState::default();
    let mut w = World::new(&["www"]);
    // The reconciler thinks the frontend is installed and the check passes
    // (a foreign listener answers on the port), but HAProxy's current worker
    // does not list the frontend.
    w.install.frontends.insert("www".into(), Install::Running);
    w.set_health("www", Some(healthy()));
    let (v, d) = step(&mut st, &w, t0);
    assert!(
        is_unhealthy(state_of(&v, "www"), "HAProxy does not list frontend www"),
        "{v:?}"
    );
    assert_eq!(d[0].announcement, Announcement::Withdrawn);
    // Not installed at all: never checked, whatever listens there.
    w.install.frontends.insert(
        "www".into(),
        Install::Failed("reload failed: cannot bind".into()),
    );
    let (v, _) = step(&mut st, &w, t0);
    assert!(is_unhealthy(state_of(&v, "www"), "not installed"));
    assert!(check_set(&w.services, &w.install).is_empty());
}

#[test]
fn adopted_vips_admit_their_services_at_start() {
    let t0 = Instant::now();
    let mut st = AnycastState::new(&BTreeSet::from([net(VIP)]));
    let mut w = World::new(&["www"]);
    // The reconciler has not reported yet: pending, the VIP keeps its route.
    let (v, d) = step(&mut st, &w, t0);
    assert!(is_pending(state_of(&v, "www"), "not installed yet"));
    assert_eq!(d[0].announcement, Announcement::Advertise);
    w.serving("www", Some(ServiceHealth::adopted()));
    let (v, d) = step(&mut st, &w, t0 + Duration::from_millis(300));
    assert_eq!(state_of(&v, "www"), &ServiceState::Healthy);
    assert_eq!(d[0].announcement, Announcement::Advertise);
}

#[test]
fn a_frontend_that_stops_running_as_desired_is_admitted_anew() {
    let t0 = Instant::now();
    let mut st = AnycastState::default();
    let mut w = World::new(&["www"]);
    w.serving("www", Some(healthy()));
    assert_eq!(
        step(&mut st, &w, t0).1[0].announcement,
        Announcement::Advertise
    );
    // Its definition changed: a reload is pending, the monitor forgot it.
    w.install
        .frontends
        .insert("www".into(), Install::Pending("reload pending".into()));
    w.set_health("www", None);
    let (v, d) = step(&mut st, &w, t0 + Duration::from_secs(1));
    assert!(is_pending(state_of(&v, "www"), "not installed yet"));
    assert_eq!(d[0].announcement, Announcement::Advertise);
}

#[test]
fn the_check_set_holds_installed_frontends_and_local_checks() {
    let mut w = World::new(&["www", "api"]);
    w.install.frontends.insert("www".into(), Install::Running);
    w.install
        .frontends
        .insert("api".into(), Install::Pending("x".into()));
    let names: Vec<String> = check_set(&w.services, &w.install)
        .into_iter()
        .map(|c| c.key.name)
        .collect();
    assert_eq!(names, vec!["www"]);
}

#[test]
fn publish_stop_and_release_rules() {
    // (document, probed, caught up, waited) → ready
    let cases = [
        (true, true, true, false, true),
        (true, false, true, true, false),
        (true, true, false, false, false),
        (true, true, false, true, true),
        (false, false, false, false, false),
        (false, false, false, true, true),
    ];
    for (doc, probed, caught, waited, want) in cases {
        assert_eq!(
            ready_to_publish(doc, probed, caught, waited),
            want,
            "{doc} {probed} {caught} {waited}"
        );
    }
    assert_eq!(stop_mode(false, false, false), StopMode::Withdraw);
    for (k, r, h) in [
        (true, false, false),
        (false, true, false),
        (false, false, true),
    ] {
        assert_eq!(stop_mode(k, r, h), StopMode::Keep);
    }
    let cands = BTreeSet::from([net("192.0.2.10/32"), net("192.0.2.11/32")]);
    assert!(releasable(&cands, None).is_empty(), "unconfirmed: nothing");
    assert_eq!(
        releasable(&cands, Some(&BTreeSet::from([net("192.0.2.10/32")]))),
        vec![net("192.0.2.11/32")]
    );
}
