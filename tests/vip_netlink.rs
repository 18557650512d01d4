//! VIP addresses through real rtnetlink, inside throwaway network namespaces.
//!
//! How the tests reach a namespace: each test creates one with `ip netns
//! add` ([`netns::Netns`], deleted on drop even when the test panics) and
//! runs its netlink part through [`netns::Netns::run_inside`]: a dedicated
//! thread does `setns(CLONE_NEWNET)` and then builds its own current-thread
//! tokio runtime, so the netlink socket, its connection task and every
//! socket a test binds live in the namespace, while the test thread and the
//! other tests stay in theirs. This was preferred over re-executing a helper
//! under `ip netns exec`: no second binary or argument protocol, panics and
//! assertions surface directly, and `ip -n <ns>` (the "operator") checks the
//! effect independently of the code under test.
//!
//! Every netlink conversation is bounded by a timeout; without root (or
//! without `ip netns`) each test prints a loud SKIPPED banner and returns.

mod common;
use common::netns;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use ipnet::IpNet;
use lb_agent::config::VipConfig;
use lb_agent::vip::{
    AddOutcome, AddressOps, DelOutcome, NetlinkAddressOps, ReleaseOutcome, VipError, VipManager,
    OWNED_FILE_NAME,
};
use netns::{skip_without_netns_loudly, Netns};

const V4: &str = "192.0.2.10/32";
const V6: &str = "2001:db8:10::10/128";
const OPERATOR_V4: &str = "192.0.2.99/32";

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn set(items: &[&str]) -> BTreeSet<IpNet> {
    items.iter().map(|s| net(s)).collect()
}

fn lo(manage: bool) -> VipConfig {
    iface("lo", manage)
}

fn iface(interface: &str, manage: bool) -> VipConfig {
    let mut c = lb_agent::config::parse_str("", "agent.toml").unwrap().vip;
    c.interface = interface.into();
    c.manage = manage;
    c
}

/// Runs `f` inside `ns` on a current-thread runtime, bounded to 20 s.
fn in_ns<T, Fut>(ns: &Netns, f: impl FnOnce() -> Fut + Send) -> T
where
    Fut: Future<Output = T>,
    T: Send,
{
    ns.run_inside(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), f())
                .await
                .expect("netlink conversation timed out after 20 s")
        })
    })
}

fn connect() -> NetlinkAddressOps {
    NetlinkAddressOps::connect().expect("netlink socket")
}

/// `ip -o addr show dev <dev>` lines, as an operator sees them.
fn ip_lines(ns: &Netns, dev: &str) -> Vec<String> {
    ns.ip(&["-o", "addr", "show", "dev", dev])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The prefixes `ip` shows on `dev` (`inet`/`inet6` followed by the prefix).
fn ip_prefixes(ns: &Netns, dev: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in ip_lines(ns, dev) {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" || w == "inet6" {
                if let Some(p) = words.next() {
                    out.push(p.to_string());
                }
            }
        }
    }
    out
}

fn count(ns: &Netns, dev: &str, prefix: &str) -> usize {
    ip_prefixes(ns, dev).iter().filter(|p| *p == prefix).count()
}

/// The address is usable: a TCP listener can bind it (from inside the namespace).
fn bindable(ip: std::net::IpAddr) -> std::io::Result<()> {
    std::net::TcpListener::bind((ip, 0)).map(drop)
}

#[test]
fn add_and_delete_are_idempotent_for_ipv4_and_ipv6_on_lo() {
    if skip_without_netns_loudly("add_and_delete_are_idempotent_for_ipv4_and_ipv6_on_lo") {
        return;
    }
    let ns = Netns::new("vipadd");
    for vip in [V4, V6] {
        let (first, second) = in_ns(&ns, || async move {
            let ops = connect();
            (
                ops.add("lo", net(vip)).await.unwrap(),
                ops.add("lo", net(vip)).await.unwrap(),
            )
        });
        assert_eq!(first, AddOutcome::Added, "{vip}");
        assert_eq!(second, AddOutcome::AlreadyPresent, "{vip}");
        assert_eq!(count(&ns, "lo", vip), 1, "{vip}: {:?}", ip_lines(&ns, "lo"));
        ns.run_inside(|| bindable(net(vip).addr()))
            .unwrap_or_else(|e| panic!("{vip} not usable right after add: {e}"));
    }

    let listed = in_ns(&ns, || async move { connect().list("lo").await.unwrap() });
    assert_eq!(listed, set(&["127.0.0.1/8", "::1/128", V4, V6]));

    for vip in [V4, V6] {
        let (first, second) = in_ns(&ns, || async move {
            let ops = connect();
            (
                ops.del("lo", net(vip)).await.unwrap(),
                ops.del("lo", net(vip)).await.unwrap(),
            )
        });
        assert_eq!(first, DelOutcome::Removed, "{vip}");
        assert_eq!(second, DelOutcome::NotPresent, "{vip}");
        assert_eq!(count(&ns, "lo", vip), 0, "{vip}: {:?}", ip_lines(&ns, "lo"));
    }
    // The namespace's own addresses were never touched.
    assert_eq!(count(&ns, "lo", "127.0.0.1/8"), 1);
    assert_eq!(count(&ns, "lo", "::1/128"), 1);
}

#[test]
fn a_shorter_prefix_is_added_as_its_network_address_without_broadcast() {
    if skip_without_netns_loudly(
        "a_shorter_prefix_is_added_as_its_network_address_without_broadcast",
    ) {
        return;
    }
    let ns = Netns::new("vippfx");
    let vip = "198.51.100.0/24";
    let got = in_ns(&ns, || async move {
        connect().add("lo", net(vip)).await.unwrap()
    });
    assert_eq!(got, AddOutcome::Added);
    let lines = ip_lines(&ns, "lo");
    let line = lines
        .iter()
        .find(|l| l.contains(vip))
        .unwrap_or_else(|| panic!("{vip} not on lo: {lines:?}"));
    assert!(
        !line.contains(" brd "),
        "like `ip addr add`, no broadcast: {line}"
    );
    // On lo the whole prefix is local: HAProxy could bind any address in it.
    let local = ns.ip(&["route", "show", "table", "local"]);
    assert!(local.contains("local 198.51.100.0/24 dev lo"), "{local}");
    ns.run_inside(|| bindable("198.51.100.77".parse().unwrap()))
        .expect("an address inside the prefix is bindable");
}

#[test]
fn ipv6_vip_skips_dad_and_is_usable_at_once_on_a_dad_interface() {
    if skip_without_netns_loudly("ipv6_vip_skips_dad_and_is_usable_at_once_on_a_dad_interface") {
        return;
    }
    let ns = Netns::new("vipdad");
    // A veth pair inside the namespace: unlike lo, it does DAD.
    ns.ip(&[
        "link", "add", "vip0", "type", "veth", "peer", "name", "vip1",
    ]);
    ns.ip(&["link", "set", "vip0", "up"]);
    ns.ip(&["link", "set", "vip1", "up"]);
    // Control: an address added the plain way is tentative right after the add.
    ns.ip(&["addr", "add", "2001:db8:20::2/128", "dev", "vip0"]);
    let control = ip_lines(&ns, "vip0");
    assert!(
        control
            .iter()
            .any(|l| l.contains("2001:db8:20::2/128") && l.contains("tentative")),
        "control address should be in DAD: {control:?}"
    );

    let vip = "2001:db8:20::1/128";
    let bound = in_ns(&ns, || async move {
        let got = connect().add("vip0", net(vip)).await.unwrap();
        assert_eq!(got, AddOutcome::Added);
        bindable(net(vip).addr())
    });
    bound.expect("VIP bindable immediately after add");
    let lines = ip_lines(&ns, "vip0");
    let line = lines.iter().find(|l| l.contains(vip)).unwrap();
    assert!(line.contains("nodad"), "{line}");
    assert!(!line.contains("tentative"), "{line}");
}

#[test]
fn manager_ownership_is_persisted_and_reloaded() {
    if skip_without_netns_loudly("manager_ownership_is_persisted_and_reloaded") {
        return;
    }
    let ns = Netns::new("vipown");
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();

    let report = in_ns(&ns, || async move {
        let mut m = VipManager::open(connect(), &lo(true), dir).unwrap();
        let r = m.ensure(&set(&[V4, V6])).await.unwrap();
        assert_eq!(m.owned(), set(&[V4, V6]));
        r
    });
    assert_eq!(report.added, set(&[V4, V6]));
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(count(&ns, "lo", V4), 1);
    assert_eq!(count(&ns, "lo", V6), 1);
    let file = std::fs::read_to_string(dir.join(OWNED_FILE_NAME)).unwrap();
    assert!(file.contains(V4) && file.contains(V6), "{file}");

    // A new manager (agent restart) knows what it owns and can clean it up.
    let outcome = in_ns(&ns, || async move {
        let mut m = VipManager::open(connect(), &lo(true), dir).unwrap();
        assert_eq!(m.owned(), set(&[V4, V6]));
        let again = m.ensure(&set(&[V4, V6])).await.unwrap();
        assert!(again.added.is_empty(), "{again:?}");
        m.release(net(V4)).await.unwrap()
    });
    assert_eq!(outcome, ReleaseOutcome::Removed);
    assert_eq!(count(&ns, "lo", V4), 0);
    assert_eq!(count(&ns, "lo", V6), 1);

    let owned = in_ns(&ns, || async move {
        VipManager::open(connect(), &lo(true), dir).unwrap().owned()
    });
    assert_eq!(owned, set(&[V6]));
}

#[test]
fn an_operators_address_is_present_but_never_claimed_or_removed() {
    if skip_without_netns_loudly("an_operators_address_is_present_but_never_claimed_or_removed") {
        return;
    }
    let ns = Netns::new("vipop");
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    ns.ip(&["addr", "add", OPERATOR_V4, "dev", "lo"]);

    let (report, present, owned, released) = in_ns(&ns, || async move {
        let mut m = VipManager::open(connect(), &lo(true), dir).unwrap();
        let r = m.ensure(&set(&[OPERATOR_V4, V4])).await.unwrap();
        let present = m.present().await.unwrap();
        let owned = m.owned();
        let released = m.release(net(OPERATOR_V4)).await.unwrap();
        (r, present, owned, released)
    });
    assert_eq!(report.added, set(&[V4]));
    assert_eq!(report.present, set(&[OPERATOR_V4]));
    assert!(present.contains(&net(OPERATOR_V4)) && present.contains(&net(V4)));
    assert_eq!(owned, set(&[V4]), "the operator's address is not claimed");
    assert_eq!(released, ReleaseOutcome::NotOwned);
    assert_eq!(
        count(&ns, "lo", OPERATOR_V4),
        1,
        "operator's address removed!"
    );

    // Not after a restart either.
    let released = in_ns(&ns, || async move {
        let mut m = VipManager::open(connect(), &lo(true), dir).unwrap();
        m.release(net(OPERATOR_V4)).await.unwrap()
    });
    assert_eq!(released, ReleaseOutcome::NotOwned);
    assert_eq!(count(&ns, "lo", OPERATOR_V4), 1);

    // Reboot: the agent's V4 is gone from lo while the state dir still says
    // it is owned; the agent observes that, forgets it, and an operator who
    // then adds the same address by hand keeps it.
    ns.ip(&["addr", "del", V4, "dev", "lo"]);
    let (forgotten, released) = in_ns(&ns, || async move {
        let mut m = VipManager::open(connect(), &lo(true), dir).unwrap();
        let r = m.ensure(&BTreeSet::new()).await.unwrap();
        (r.forgotten, m.owned())
    });
    assert_eq!(forgotten, set(&[V4]));
    assert_eq!(released, BTreeSet::new());
    ns.ip(&["addr", "add", V4, "dev", "lo"]);
    let released = in_ns(&ns, || async move {
        let mut m = VipManager::open(connect(), &lo(true), dir).unwrap();
        m.release(net(V4)).await.unwrap()
    });
    assert_eq!(released, ReleaseOutcome::NotOwned);
    assert_eq!(count(&ns, "lo", V4), 1);
}

#[test]
fn unmanaged_observes_and_touches_nothing() {
    if skip_without_netns_loudly("unmanaged_observes_and_touches_nothing") {
        return;
    }
    let ns = Netns::new("vipobs");
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    ns.ip(&["addr", "add", V4, "dev", "lo"]);
    // Ownership left by an earlier managed run.
    let file = dir.join(OWNED_FILE_NAME);
    let body = format!("{{\"version\": 1, \"owned\": {{\"lo\": [\"{V4}\"]}}}}\n");
    std::fs::write(&file, &body).unwrap();
    let before = ip_prefixes(&ns, "lo");

    let (report, present, released) = in_ns(&ns, || async move {
        let mut m = VipManager::open(connect(), &lo(false), dir).unwrap();
        let r = m.ensure(&set(&[V4, V6])).await.unwrap();
        let present = m.present().await.unwrap();
        let released = m.release(net(V4)).await.unwrap();
        (r, present, released)
    });
    assert_eq!(report.missing_unmanaged, set(&[V6]));
    assert_eq!(report.present, set(&[V4]));
    assert!(report.added.is_empty());
    assert!(present.contains(&net(V4)) && !present.contains(&net(V6)));
    assert_eq!(released, ReleaseOutcome::NotManaged);
    assert_eq!(ip_prefixes(&ns, "lo"), before, "addresses changed");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        body,
        "file rewritten"
    );
}

#[test]
fn a_missing_interface_is_a_clear_error() {
    if skip_without_netns_loudly("a_missing_interface_is_a_clear_error") {
        return;
    }
    let ns = Netns::new("vipnoif");
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    let errors = in_ns(&ns, || async move {
        let ops = connect();
        let mut errors: Vec<VipError> = vec![
            ops.list("vipx0").await.unwrap_err(),
            ops.add("vipx0", net(V4)).await.unwrap_err(),
            ops.del("vipx0", net(V4)).await.unwrap_err(),
            // Longer than IFNAMSIZ: cannot exist.
            ops.list("a-very-long-interface-name").await.unwrap_err(),
        ];
        let cfg = iface("vipx0", true);
        let mut m = VipManager::open(ops, &cfg, dir).unwrap();
        errors.push(m.ensure(&set(&[V4])).await.unwrap_err());
        errors.push(m.present().await.unwrap_err());
        errors
    });
    for (i, e) in errors.iter().enumerate() {
        assert!(
            matches!(e, VipError::InterfaceNotFound { .. }),
            "error {i}: {e:?}"
        );
    }
    assert_eq!(errors[0].to_string(), "interface vipx0 not found");
    assert_eq!(
        errors[3].to_string(),
        "interface a-very-long-interface-name not found"
    );
    assert!(!dir.join(OWNED_FILE_NAME).exists());
}
