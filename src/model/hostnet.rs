//! Which VIP prefixes this host accepts from the API: the allow-list and
//! length cap of `[vip]`, the special-purpose ranges, the `[bird]` dummy
//! prefixes, and the addresses and routes the host itself uses.
//!
//! Why: the agent adds every document VIP to `[vip] interface` (`lo`), and
//! an address on `lo` makes its whole prefix local. A VIP of `10.0.0.0/8`
//! made the host route that range to itself, a VIP equal to a peer's address
//! cut the host off from that peer, and `0.0.0.0/0` was re-added every second
//! (issue 14). The API is trusted to describe load balancing, not to reshape
//! the host's routing, so these VIPs are validation errors and the document
//! is refused as a whole (`docs/security.md`, "VIP restrictions").
//!
//! Everything here is pure: the host's addresses and routes
//! ([`HostNetworks`]) are observed by `vip::host` (an rtnetlink dump, once
//! per document) and passed in as data; [`VipPolicy::check`] returns the
//! problems of one VIP as messages, which `validate` files under the VIP's
//! JSON path (`vips[3].address`).
//!
//! What counts as "the host's own" and conflicts with a VIP `v`:
//! - an interface address inside `v` (`127.0.0.1` on `lo` included), or a
//!   point-to-point peer inside `v`;
//! - the subnet of an address on a non-loopback interface overlapping `v`
//!   (its neighbours, the ToR peer and the gateway among them, would become
//!   local addresses);
//! - a unicast route whose destination lies inside `v`, whose gateway lies
//!   inside `v`, or, for a directly connected route (no gateway) on a
//!   non-loopback interface, whose destination contains `v`.
//!
//! Routes through a gateway that merely *contain* `v` (the default route, an
//! aggregate) are normal: the VIP is more specific and local. Addresses the
//! agent added itself on `[vip] interface` (its owned VIPs) and addresses
//! there equal to a VIP of the document being checked are the VIPs
//! themselves, not conflicts; neither are the routes the kernel derives
//! from them on that interface. Subnets on loopback interfaces (`127.0.0.0/8`
//! on `lo`) are already local, so a VIP inside one changes no route; such a
//! VIP still needs an explicit allow-list entry (special-purpose range).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{BirdConfig, VipConfig};

/// Most conflicts reported per VIP; the rest are counted.
const MAX_CONFLICTS_SHOWN: usize = 3;

/// An address configured on an interface of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddress {
    /// Interface name (`eth0`, `lo`).
    pub interface: String,
    /// The interface is a loopback device (`IFF_LOOPBACK`).
    pub loopback: bool,
    /// The address and its prefix length, as configured (`10.0.1.2/24`).
    pub address: IpNet,
    /// The peer of a point-to-point address, when it differs from the local one.
    pub peer: Option<IpAddr>,
}

/// A unicast route of the host (any table but `local`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    /// Destination prefix (`0.0.0.0/0` for a default route).
    pub destination: IpNet,
    /// Next hop, when the route goes through a gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface name, when the route names one.
    pub interface: Option<String>,
    /// The output interface is a loopback device.
    pub loopback: bool,
    /// Routing table id (254 = main).
    pub table: u32,
}

/// The host's addresses and routes, as far as VIP validation cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNetworks {
    pub addresses: Vec<HostAddress>,
    pub routes: Vec<HostRoute>,
}

/// The host as [`VipPolicy::check`] sees it: its networks, and which of
/// the addresses on the VIP interface are the agent's own VIPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub networks: HostNetworks,
    /// `[vip] interface`.
    pub vip_interface: String,
    /// Addresses the agent added on `vip_interface` (owned-vips.json).
    pub owned: BTreeSet<IpNet>,
}

/// Everything a document VIP is checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct VipPolicy {
    /// `[vip] allowed_prefixes`; empty refuses every VIP.
    pub allowed: Vec<IpNet>,
    /// `[vip] min_prefix_len_v4`.
    pub min_prefix_len_v4: u8,
    /// `[vip] min_prefix_len_v6`.
    pub min_prefix_len_v6: u8,
    /// Prefixes a VIP must never overlap, with the key that names them
    /// (the `[bird]` dummy prefixes: a VIP there could never be withdrawn).
    pub reserved: Vec<(IpNet, &'static str)>,
    /// The host's networks; `None` checks the document against the
    /// configuration alone (unit tests, tools without a host).
    pub host: Option<HostView>,
}

/// Special-purpose ranges: a VIP inside one needs an allow-list entry
/// inside the same range (a catch-all `0.0.0.0/0` does not count).
const SPECIAL: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

fn special_ranges() -> impl Iterator<Item = (IpNet, &'static str)> {
    SPECIAL
        .iter()
        .map(|(net, what)| (net.parse().expect("valid literal"), *what))
}

impl VipPolicy {
    /// The configuration half of the policy (no host view yet).
    pub fn from_config(vip: &VipConfig, bird: &BirdConfig) -> VipPolicy {
        VipPolicy {
            allowed: vip.allowed_prefixes.clone(),
            min_prefix_len_v4: vip.min_prefix_len_v4,
            min_prefix_len_v6: vip.min_prefix_len_v6,
            reserved: vec![
                (bird.dummy_ipv4, "[bird] dummy_ipv4"),
                (bird.dummy_ipv6, "[bird] dummy_ipv6"),
            ],
            host: None,
        }
    }

    /// Every problem of `vip` (canonical, no host bits), as messages.
    /// `document_vips` are all VIPs of the document being checked: an
    /// address on the VIP interface equal to one of them is that VIP.
    pub fn check(&self, vip: IpNet, document_vips: &BTreeSet<IpNet>) -> Vec<String> {
        let mut out = Vec::new();
        self.check_allowed(vip, &mut out);
        let min = match vip {
            IpNet::V4(_) => (self.min_prefix_len_v4, "min_prefix_len_v4"),
            IpNet::V6(_) => (self.min_prefix_len_v6, "min_prefix_len_v6"),
        };
        if vip.prefix_len() < min.0 {
            out.push(format!(
                "VIP {vip} is shorter than /{} ([vip] {}): a VIP must be a /{} or longer",
                min.0, min.1, min.0
            ));
        }
        for (net, key) in &self.reserved {
            if overlaps(*net, vip) {
                out.push(format!(
                    "VIP {vip} overlaps {key} {net}, which is never announced"
                ));
            }
        }
        if let Some(host) = &self.host {
            let conflicts = host_conflicts(vip, host, document_vips);
            let more = conflicts.len().saturating_sub(MAX_CONFLICTS_SHOWN);
            let mut shown: Vec<String> = conflicts.into_iter().take(MAX_CONFLICTS_SHOWN).collect();
            if more > 0 {
                shown.push(format!("{more} more"));
            }
            if !shown.is_empty() {
                out.push(format!(
                    "VIP {vip} overlaps this host's own networks: it {}",
                    shown.join("; ")
                ));
            }
        }
        out
    }

    fn check_allowed(&self, vip: IpNet, out: &mut Vec<String>) {
        if self.allowed.is_empty() {
            out.push(format!(
                "VIP {vip} is not allowed: [vip] allowed_prefixes is empty, so this host accepts no VIP"
            ));
            return;
        }
        let covering: Vec<&IpNet> = self.allowed.iter().filter(|a| a.contains(&vip)).collect();
        if covering.is_empty() {
            let list: Vec<String> = self
                .allowed
                .iter()
                .take(5)
                .map(ToString::to_string)
                .collect();
            let more = if self.allowed.len() > 5 { ", ..." } else { "" };
            out.push(format!(
                "VIP {vip} is outside [vip] allowed_prefixes ({}{more})",
                list.join(", ")
            ));
            return;
        }
        for (range, what) in special_ranges() {
            if !overlaps(range, vip) {
                continue;
            }
            let explicit = covering.iter().any(|a| range.contains(*a));
            if !explicit || !range.contains(&vip) {
                out.push(format!(
                    "VIP {vip} is in the {what} range {range}: only a prefix inside {range} \
                     listed in [vip] allowed_prefixes allows it"
                ));
            }
        }
    }
}

/// True when either prefix contains the other (prefixes overlap exactly then).
pub fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b) || b.contains(&a)
}

/// Whether a host entry on the VIP interface is one of the VIPs themselves.
fn is_ours(
    host: &HostView,
    interface: Option<&str>,
    net: IpNet,
    document: &BTreeSet<IpNet>,
) -> bool {
    let net = net.trunc();
    interface == Some(host.vip_interface.as_str())
        && (host.owned.contains(&net) || document.contains(&net))
}

/// Every way `vip` collides with the host's own addresses and routes, as
/// phrases completing "it ...".
fn host_conflicts(vip: IpNet, host: &HostView, document: &BTreeSet<IpNet>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    // Subnets already reported through an address: their connected route
    // says the same thing again.
    let mut subnets: BTreeSet<(IpNet, &str)> = BTreeSet::new();
    for a in &host.networks.addresses {
        if is_ours(host, Some(&a.interface), a.address, document) {
            continue;
        }
        if vip.contains(&a.address.addr()) {
            push(format!(
                "contains {}, an address of {}",
                a.address.addr(),
                a.interface
            ));
        }
        if let Some(peer) = a.peer.filter(|p| vip.contains(p)) {
            push(format!("contains {peer}, the peer of {}", a.interface));
        }
        let subnet = a.address.trunc();
        let host_route = subnet.prefix_len() == subnet.max_prefix_len();
        if !a.loopback && !host_route && overlaps(subnet, vip) {
            subnets.insert((subnet, a.interface.as_str()));
            push(format!(
                "overlaps {subnet}, the subnet of {} (its neighbours would become local addresses)",
                a.interface
            ));
        }
    }
    for r in &host.networks.routes {
        if is_ours(host, r.interface.as_deref(), r.destination, document) {
            continue;
        }
        let via = match (&r.gateway, &r.interface) {
            (Some(g), Some(i)) => format!(" via {g} dev {i}"),
            (Some(g), None) => format!(" via {g}"),
            (None, Some(i)) => format!(" dev {i}"),
            (None, None) => String::new(),
        };
        let table = if r.table == 254 {
            String::new()
        } else {
            format!(" (table {})", r.table)
        };
        if r.destination.prefix_len() > 0 && vip.contains(&r.destination) {
            push(format!(
                "contains the route to {}{via}{table}",
                r.destination
            ));
        }
        if let Some(g) = r.gateway.filter(|g| vip.contains(g)) {
            push(format!(
                "contains {g}, the gateway of the route to {}{table}",
                r.destination
            ));
        }
        let connected = r.gateway.is_none() && r.interface.is_some() && !r.loopback;
        let reported = r
            .interface
            .as_deref()
            .is_some_and(|i| subnets.contains(&(r.destination, i)));
        if connected && !reported && r.destination.contains(&vip) && r.destination != vip {
            push(format!(
                "lies in {}, reached directly{via}{table} (a neighbour's address would become local)",
                r.destination
            ));
        }
    }
    out
}

/// Fast "which prefix of a set covers this address or prefix", for the
/// host observation (a host may hold a full routing table): one hash lookup
/// per distinct prefix length instead of a scan of every VIP.
#[derive(Debug, Clone, Default)]
pub struct PrefixIndex {
    /// (is IPv4, prefix length) → the truncated prefixes of that length.
    by_len: BTreeMap<(bool, u8), BTreeSet<IpNet>>,
    /// Every prefix, for the rare reverse question ("inside this route").
    all: Vec<IpNet>,
}

impl PrefixIndex {
    pub fn new(prefixes: impl IntoIterator<Item = IpNet>) -> PrefixIndex {
        let mut idx = PrefixIndex::default();
        for p in prefixes {
            let p = p.trunc();
            idx.by_len
                .entry((p.addr().is_ipv4(), p.prefix_len()))
                .or_default()
                .insert(p);
            idx.all.push(p);
        }
        idx
    }

    /// A prefix of the set containing `addr`.
    pub fn covering_addr(&self, addr: IpAddr) -> Option<IpNet> {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        self.covering(IpNet::new(addr, len).ok()?)
    }

    /// A prefix of the set containing (or equal to) `net`.
    pub fn covering(&self, net: IpNet) -> Option<IpNet> {
        let v4 = net.addr().is_ipv4();
        self.by_len
            .range((v4, 0)..=(v4, net.prefix_len()))
            .find_map(|(&(_, len), set)| {
                let t = IpNet::new(net.addr(), len).ok()?.trunc();
                set.contains(&t).then_some(t)
            })
    }

    /// A prefix of the set inside (or equal to) `net` (linear; used only for
    /// directly connected routes, of which a host has few).
    pub fn inside(&self, net: IpNet) -> Option<IpNet> {
        self.all.iter().copied().find(|p| net.contains(p))
    }

    /// True when no prefix was given.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

/// Whether an observed address could conflict with any VIP of `vips`
/// (the observation keeps only those; [`VipPolicy::check`] decides).
pub fn address_matters(a: &HostAddress, vips: &PrefixIndex) -> bool {
    vips.covering_addr(a.address.addr()).is_some()
        || a.peer.is_some_and(|p| vips.covering_addr(p).is_some())
        || (!a.loopback
            && (vips.covering(a.address.trunc()).is_some()
                || vips.inside(a.address.trunc()).is_some()))
}

/// Whether an observed route could conflict with any VIP of `vips`.
pub fn route_matters(r: &HostRoute, vips: &PrefixIndex) -> bool {
    (r.destination.prefix_len() > 0 && vips.covering(r.destination).is_some())
        || r.gateway.is_some_and(|g| vips.covering_addr(g).is_some())
        || (r.gateway.is_none()
            && r.interface.is_some()
            && !r.loopback
            && vips.inside(r.destination).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn addr(interface: &str, a: &str) -> HostAddress {
        HostAddress {
            interface: interface.into(),
            loopback: interface == "lo",
            address: net(a),
            peer: None,
        }
    }

    fn route(dst: &str, gw: Option<&str>, dev: &str) -> HostRoute {
        HostRoute {
            destination: net(dst),
            gateway: gw.map(|g| g.parse().unwrap()),
            interface: Some(dev.into()),
            loopback: dev == "lo",
            table: 254,
        }
    }

    /// A lab LB host: eth0 10.0.1.2/24 towards the ToR 10.0.1.1, backends
    /// behind 10.0.11.0/24 via the ToR, a default route, loopback.
    fn lab_host(owned: &[&str]) -> HostView {
        HostView {
            networks: HostNetworks {
                addresses: vec![
                    addr("lo", "127.0.0.1/8"),
                    addr("lo", "::1/128"),
                    addr("eth0", "10.0.1.2/24"),
                    addr("eth0", "2001:db8:1::2/64"),
                    addr("lo", "192.0.2.10/32"),
                    addr("lo", "198.51.100.7/32"),
                ],
                routes: vec![
                    route("0.0.0.0/0", Some("10.0.1.1"), "eth0"),
                    route("10.0.1.0/24", None, "eth0"),
                    route("10.0.11.0/24", Some("10.0.1.1"), "eth0"),
                    route("10.0.12.0/24", None, "eth0"),
                    route("2001:db8:1::/64", None, "eth0"),
                ],
            },
            vip_interface: "lo".into(),
            owned: owned.iter().map(|s| net(s)).collect(),
        }
    }

    fn policy(allowed: &[&str], host: Option<HostView>) -> VipPolicy {
        VipPolicy {
            allowed: allowed.iter().map(|s| net(s)).collect(),
            min_prefix_len_v4: 24,
            min_prefix_len_v6: 64,
            reserved: vec![(net("10.189.200.255/32"), "[bird] dummy_ipv4")],
            host,
        }
    }

    fn check(p: &VipPolicy, vip: &str, doc: &[&str]) -> Vec<String> {
        p.check(net(vip), &doc.iter().map(|s| net(s)).collect())
    }

    /// One row per case: VIP, the expected start of each message ("" = none).
    #[test]
    fn table_of_vips_against_the_lab_host() {
        let p = policy(
            &["0.0.0.0/0", "::/0", "127.0.0.0/24"],
            Some(lab_host(&["192.0.2.10/32"])),
        );
        let cases: &[(&str, &[&str])] = &[
            // Ordinary anycast VIPs.
            ("192.0.2.10/32", &[]),
            ("192.0.2.0/24", &[]), // contains the owned 192.0.2.10 on lo: ours
            ("2001:db8:10::10/128", &[]),
            // The three.
            ("10.0.0.0/8", &["VIP 10.0.0.0/8 is shorter than /24", "VIP 10.0.0.0/8 overlaps [bird] dummy_ipv4", "VIP 10.0.0.0/8 overlaps this host's own networks: it contains 10.0.1.2, an address of eth0; overlaps 10.0.1.0/24, the subnet of eth0"]),
            ("10.0.1.1/32", &["VIP 10.0.1.1/32 overlaps this host's own networks: it overlaps 10.0.1.0/24, the subnet of eth0"]),
            ("0.0.0.0/0", &["VIP 0.0.0.0/0 is in the \"this network\" range", "VIP 0.0.0.0/0 is in the loopback range", "VIP 0.0.0.0/0 is in the link-local range", "VIP 0.0.0.0/0 is in the multicast range", "VIP 0.0.0.0/0 is in the reserved range", "VIP 0.0.0.0/0 is shorter than /24", "VIP 0.0.0.0/0 overlaps [bird] dummy_ipv4", "VIP 0.0.0.0/0 overlaps this host's own networks"]),
            // Own address, a routed destination, the gateway.
            ("10.0.1.2/32", &["VIP 10.0.1.2/32 overlaps this host's own networks: it contains 10.0.1.2, an address of eth0"]),
            ("10.0.11.0/24", &["VIP 10.0.11.0/24 overlaps this host's own networks: it contains the route to 10.0.11.0/24 via 10.0.1.1 dev eth0"]),
            ("10.0.11.7/32", &[]), // inside a routed (not connected) prefix: more specific, fine
            // A connected route without an address (`ip route add ... dev eth0`).
            ("10.0.12.9/32", &["VIP 10.0.12.9/32 overlaps this host's own networks: it lies in 10.0.12.0/24, reached directly dev eth0"]),
            ("2001:db8:1::99/128", &["VIP 2001:db8:1::99/128 overlaps this host's own networks: it overlaps 2001:db8:1::/64, the subnet of eth0"]),
            // Loopback: only with an explicit entry, never 127.0.0.1 itself.
            ("127.0.0.31/32", &[]),
            ("127.0.0.1/32", &["VIP 127.0.0.1/32 overlaps this host's own networks: it contains 127.0.0.1, an address of lo"]),
            ("127.0.1.5/32", &["VIP 127.0.1.5/32 is in the loopback range 127.0.0.0/8: only a prefix inside"]),
            // ::1/128 on lo equals the document VIP (adoption of an existing
            // address): no host conflict, but the special range refuses it.
            ("::1/128", &["VIP ::1/128 is in the loopback range ::1/128"]),
            ("fe80::1/128", &["VIP fe80::1/128 is in the link-local range fe80::/10"]),
            // Not owned, not in the document: an operator's address on lo.
            ("198.51.100.0/24", &["VIP 198.51.100.0/24 overlaps this host's own networks: it contains 198.51.100.7, an address of lo"]),
            ("10.189.200.255/32", &["VIP 10.189.200.255/32 overlaps [bird] dummy_ipv4 10.189.200.255/32"]),
        ];
        let mut failures = Vec::new();
        for (vip, want) in cases {
            let got = check(&p, vip, &[vip]);
            let ok = got.len() == want.len()
                && got.iter().zip(want.iter()).all(|(g, w)| g.starts_with(w));
            if !ok {
                failures.push(format!("{vip}:\n  want {want:#?}\n  got  {got:#?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn an_address_on_the_vip_interface_equal_to_a_document_vip_is_that_vip() {
        // 198.51.100.7/32 is on lo but not owned (an operator put it there,
        // or an older agent did): the document's VIP of that exact prefix is
        // adopted, not a conflict; a different VIP covering it is.
        let p = policy(&["198.51.100.0/24"], Some(lab_host(&[])));
        assert_eq!(
            check(&p, "198.51.100.7/32", &["198.51.100.7/32"]),
            Vec::<String>::new()
        );
        assert_eq!(check(&p, "198.51.100.0/24", &["198.51.100.0/24"]).len(), 1);
        // On another interface the same address is the host's.
        let mut h = lab_host(&[]);
        h.networks.addresses.push(addr("eth1", "198.51.100.9/32"));
        let p = policy(&["198.51.100.0/24"], Some(h));
        assert_eq!(
            check(&p, "198.51.100.9/32", &["198.51.100.9/32"]),
            ["VIP 198.51.100.9/32 overlaps this host's own networks: it contains 198.51.100.9, an address of eth1"]
        );
    }

    #[test]
    fn allow_list_and_length_cap() {
        let p = policy(&["192.0.2.0/24", "2001:db8:10::/48"], None);
        assert!(check(&p, "192.0.2.10/32", &[]).is_empty());
        assert!(check(&p, "2001:db8:10::/64", &[]).is_empty());
        assert_eq!(
            check(&p, "198.51.100.10/32", &[]),
            ["VIP 198.51.100.10/32 is outside [vip] allowed_prefixes (192.0.2.0/24, 2001:db8:10::/48)"]
        );
        assert_eq!(
            check(&p, "2001:db8:10::/56", &[]),
            ["VIP 2001:db8:10::/56 is shorter than /64 ([vip] min_prefix_len_v6): a VIP must be a /64 or longer"]
        );
        // A VIP larger than the allowed prefix is outside it.
        assert_eq!(check(&p, "192.0.0.0/16", &[]).len(), 2);
        let none = policy(&[], None);
        assert_eq!(
            check(&none, "192.0.2.10/32", &[]),
            ["VIP 192.0.2.10/32 is not allowed: [vip] allowed_prefixes is empty, so this host accepts no VIP"]
        );
        // The special ranges apply even with a catch-all allow-list.
        let any = policy(&["0.0.0.0/0"], None);
        assert_eq!(check(&any, "169.254.1.1/32", &[]).len(), 1);
        assert!(check(&any, "203.0.113.9/32", &[]).is_empty());
    }

    #[test]
    fn kernel_routes_of_owned_vips_on_a_non_loopback_interface_are_not_conflicts() {
        // VIPs on a dummy interface: the kernel adds a prefix route per /24.
        let mut h = lab_host(&["198.18.0.0/24"]);
        h.vip_interface = "vip0".into();
        h.networks.addresses.push(HostAddress {
            interface: "vip0".into(),
            loopback: false,
            address: net("198.18.0.0/24"),
            peer: None,
        });
        h.networks.routes.push(route("198.18.0.0/24", None, "vip0"));
        let p = policy(&["198.18.0.0/15"], Some(h.clone()));
        assert!(check(&p, "198.18.0.0/24", &[]).is_empty());
        // Not owned any more (and not in this document): the host's.
        h.owned.clear();
        let p = policy(&["198.18.0.0/15"], Some(h));
        assert_eq!(check(&p, "198.18.0.0/24", &[]).len(), 1);
    }

    #[test]
    fn many_conflicts_are_summarised() {
        let mut h = lab_host(&[]);
        for i in 0..10 {
            h.networks.routes.push(route(
                &format!("203.0.113.{i}/32"),
                Some("10.0.1.1"),
                "eth0",
            ));
        }
        let p = policy(&["203.0.113.0/24"], Some(h));
        let got = check(&p, "203.0.113.0/24", &[]);
        assert_eq!(got.len(), 1);
        assert!(got[0].ends_with("; 7 more"), "{got:?}");
    }

    #[test]
    fn prefix_index_answers_like_a_scan() {
        let vips = [
            "192.0.2.10/32",
            "198.51.100.0/24",
            "2001:db8::/64",
            "10.0.0.0/8",
        ];
        let idx = PrefixIndex::new(vips.iter().map(|s| net(s)));
        let scan = |n: IpNet| vips.iter().map(|s| net(s)).find(|v| v.contains(&n));
        for probe in [
            "192.0.2.10/32",
            "192.0.2.11/32",
            "198.51.100.77/32",
            "198.51.100.0/25",
            "198.51.0.0/16",
            "2001:db8::1/128",
            "2001:db8:1::/64",
            "10.200.0.0/16",
            "0.0.0.0/0",
        ] {
            assert_eq!(idx.covering(net(probe)), scan(net(probe)), "{probe}");
        }
        assert_eq!(
            idx.inside(net("198.51.0.0/16")),
            Some(net("198.51.100.0/24"))
        );
        assert_eq!(idx.inside(net("203.0.113.0/24")), None);
        let r = route("10.9.9.0/24", Some("192.0.2.10"), "eth0");
        assert!(route_matters(&r, &idx), "gateway inside a VIP");
        let r = route("0.0.0.0/0", Some("172.16.0.1"), "eth0");
        assert!(
            !route_matters(&r, &idx),
            "a default route via an unrelated gateway"
        );
        assert!(address_matters(&addr("eth0", "198.51.0.1/16"), &idx));
        assert!(!address_matters(&addr("lo", "127.0.0.1/8"), &idx));
    }
}
