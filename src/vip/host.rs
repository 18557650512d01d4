//! Observing the host's own addresses and routes for VIP validation.
//!
//! The document parser calls [`HostObserver::observe`] once per document
//! (the API's answer, a `file://` change, the cache at start), before the
//! pure check in `model::hostnet`: documents are rare and a fresh view
//! can never be stale, while a cached one would need invalidation on every
//! address or route change. It runs in the parser's blocking thread, so the
//! dump uses a plain blocking netlink socket (no runtime needed, which also
//! suits `lb-agent render`), bounded by a receive timeout, a total deadline
//! and a message count.
//!
//! Only entries that could collide with one of the document's VIPs are kept
//! ([`address_matters`], [`route_matters`]), so a host carrying a full
//! routing table costs one pass over it, not its copy in memory.
//!
//! Which addresses on `[vip] interface` are the agent's own comes from the
//! ownership file the [`super::VipManager`] writes; a corrupt file counts as
//! owning nothing here (the manager itself fails closed on it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType, RouteVia,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::manager::read_owned;
use super::{VipError, OWNED_FILE_NAME};
use crate::config::{Config, VipConfig};
use crate::model::hostnet::{
    address_matters, route_matters, HostAddress, HostNetworks, HostRoute, HostView, PrefixIndex,
    VipPolicy,
};
use crate::model::validate::{
    document_vips, parse_document_on_host, ValidateContext, ValidationError, ValidationErrors,
};
use crate::model::DesiredState;

/// Longest a single `recv` may block (the kernel answers dumps at once).
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one whole observation may take (links, addresses, routes).
const DEADLINE: Duration = Duration::from_secs(20);
/// Most netlink messages read per dump (a few million routes at most).
const MAX_MESSAGES: usize = 10_000_000;
/// Receive buffer for one datagram of a dump (the kernel sends at most 32 KiB).
const RECV_BUFFER: usize = 64 * 1024;
/// The kernel's `local` table: it mirrors the interface addresses.
const RT_TABLE_LOCAL: u32 = 255;

/// Observes the host for VIP validation; cheap to clone and to keep in the
/// parser closure.
#[derive(Debug, Clone)]
pub struct HostObserver {
    interface: String,
    owned_file: PathBuf,
}

impl HostObserver {
    /// An observer for `[vip] interface` and the ownership file in `state_dir`.
    pub fn new(vip: &VipConfig, state_dir: &Path) -> HostObserver {
        HostObserver {
            interface: vip.interface.clone(),
            owned_file: state_dir.join(OWNED_FILE_NAME),
        }
    }

    /// The host as VIP validation needs it, keeping only what could collide
    /// with `vips` (the prefixes the document names).
    pub fn observe(&self, vips: &[IpNet]) -> Result<HostView, VipError> {
        let owned = match read_owned(&self.owned_file) {
            Ok(map) => map.get(&self.interface).cloned().unwrap_or_default(),
            // The manager refuses to run on it and keeps the host withdrawn;
            // here it only means "nothing on the interface is known to be ours".
            Err(_) => BTreeSet::new(),
        };
        let index = PrefixIndex::new(vips.iter().copied());
        Ok(HostView {
            networks: observe_networks(&index)?,
            vip_interface: self.interface.clone(),
            owned,
        })
    }
}

/// Validates documents the way the agent applies them: group, the whole
/// schema, and every VIP against `[vip]`, `[bird]` and a fresh view of this
/// host (see `model::hostnet`). Used by the daemon's parser and by
/// `lb-agent render`, so a dry run refuses what the agent would refuse.
#[derive(Debug, Clone)]
pub struct HostValidator {
    ctx: ValidateContext,
    logic: crate::logic::LogicHost,
    policy: VipPolicy,
    observer: HostObserver,
}

impl HostValidator {
    /// The validator for this agent.toml (group and node facts for logic,
    /// `[vip]`, `[bird]`, state dir).
    pub fn new(cfg: &Config) -> HostValidator {
        HostValidator {
            ctx: ValidateContext {
                group: cfg.node.group.clone(),
            },
            logic: crate::logic::LogicHost::from_config(cfg),
            policy: VipPolicy::from_config(&cfg.vip, &cfg.bird),
            observer: HostObserver::new(&cfg.vip, &cfg.node.state_dir),
        }
    }

    /// Parses and validates `body`, observing the host first. A host that
    /// cannot be observed refuses the document (the previous state keeps
    /// running) rather than accepting VIPs unchecked.
    pub fn parse(&self, body: &[u8]) -> Result<DesiredState, ValidationErrors> {
        let host = self.observer.observe(&document_vips(body)).map_err(|e| {
            ValidationErrors(vec![ValidationError {
                path: "vips".into(),
                message: format!("cannot check the VIPs against this host: {e}"),
            }])
        })?;
        let policy = VipPolicy {
            host: Some(host),
            ..self.policy.clone()
        };
        parse_document_on_host(body, &self.ctx, &self.logic, &policy)
    }
}

/// Dumps links, addresses and routes of the current network namespace,
/// keeping the entries that could collide with a prefix of `vips`.
pub fn observe_networks(vips: &PrefixIndex) -> Result<HostNetworks, VipError> {
    let deadline = crate::clock::now() + DEADLINE;
    let mut nl = Dumper::open(deadline)?;
    let mut links: BTreeMap<u32, (String, bool)> = BTreeMap::new();
    nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), |m| {
        if let RouteNetlinkMessage::NewLink(l) = m {
            links.insert(l.header.index, link_of(&l));
        }
    })?;
    let name = |index: u32| -> (String, bool) {
        links
            .get(&index)
            .cloned()
            .unwrap_or_else(|| (format!("if{index}"), false))
    };
    let mut out = HostNetworks::default();
    if vips.is_empty() {
        return Ok(out);
    }
    nl.dump(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        |m| {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                let (interface, loopback) = name(a.header.index);
                if let Some(a) = address_of(&a, interface, loopback) {
                    if address_matters(&a, vips) {
                        out.addresses.push(a);
                    }
                }
            }
        },
    )?;
    nl.dump(
        RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        |m| {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                for route in routes_of(&r, &name) {
                    if route_matters(&route, vips) {
                        out.routes.push(route);
                    }
                }
            }
        },
    )?;
    Ok(out)
}

fn link_of(l: &LinkMessage) -> (String, bool) {
    let name = l
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("if{}", l.header.index));
    (name, l.header.flags.contains(LinkFlags::Loopback))
}

/// An address message as a [`HostAddress`]: the local address is `IFA_LOCAL`
/// when present (IPv4, point-to-point), else `IFA_ADDRESS`; a differing
/// `IFA_ADDRESS` next to `IFA_LOCAL` is the peer.
fn address_of(m: &AddressMessage, interface: String, loopback: bool) -> Option<HostAddress> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    let ip: IpAddr = local.or(address)?;
    let peer = match (local, address) {
        (Some(l), Some(a)) if l != a => Some(a),
        _ => None,
    };
    Some(HostAddress {
        interface,
        loopback,
        address: IpNet::new(ip, m.header.prefix_len).ok()?,
        peer,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn gateway_of(attrs: &[RouteAttribute]) -> Option<IpAddr> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => route_ip(g),
        RouteAttribute::Via(RouteVia::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Via(RouteVia::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

/// A unicast route (one entry per next hop) outside the `local` table;
/// other kinds (local, broadcast, blackhole, unreachable, ...) reach no
/// neighbour, so a VIP there cuts nothing off.
fn routes_of(m: &RouteMessage, name: &dyn Fn(u32) -> (String, bool)) -> Vec<HostRoute> {
    if m.header.kind != RouteType::Unicast {
        return Vec::new();
    }
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    if table == RT_TABLE_LOCAL || table == u32::from(RouteHeader::RT_TABLE_UNSPEC) {
        return Vec::new();
    }
    let family_any: IpAddr = match m.header.address_family {
        netlink_packet_route::AddressFamily::Inet => IpAddr::from([0u8; 4]),
        netlink_packet_route::AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
        _ => return Vec::new(),
    };
    let dst_ip = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(d) => route_ip(d),
            _ => None,
        })
        .unwrap_or(family_any);
    let Ok(destination) = IpNet::new(dst_ip, m.header.destination_prefix_length) else {
        return Vec::new();
    };
    let destination = destination.trunc();
    let mut hops: Vec<(Option<u32>, Option<IpAddr>)> = Vec::new();
    for a in &m.attributes {
        if let RouteAttribute::MultiPath(nexthops) = a {
            for h in nexthops {
                hops.push((Some(h.interface_index), gateway_of(&h.attributes)));
            }
        }
    }
    if hops.is_empty() {
        let oif = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        hops.push((oif, gateway_of(&m.attributes)));
    }
    hops.into_iter()
        .map(|(oif, gateway)| {
            let (interface, loopback) = match oif {
                Some(i) => {
                    let (n, l) = name(i);
                    (Some(n), l)
                }
                None => (None, false),
            };
            HostRoute {
                destination,
                gateway,
                interface,
                loopback,
                table,
            }
        })
        .collect()
}

/// A blocking rtnetlink socket running one dump at a time.
struct Dumper {
    socket: Socket,
    seq: u32,
    deadline: Instant,
    buf: Vec<u8>,
}

fn nl_error(what: &str, source: std::io::Error) -> VipError {
    VipError::Netlink {
        what: format!("observing the host's addresses and routes: {what}"),
        source,
    }
}

impl Dumper {
    fn open(deadline: Instant) -> Result<Dumper, VipError> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| nl_error("opening a netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| nl_error("binding the netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| nl_error("connecting the netlink socket", e))?;
        set_recv_timeout(&socket, RECV_TIMEOUT)
            .map_err(|e| nl_error("setting the receive timeout", e))?;
        Ok(Dumper {
            socket,
            seq: 0,
            deadline,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Sends `request` as a dump and hands every answer to `each`.
    fn dump(
        &mut self,
        request: RouteNetlinkMessage,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), VipError> {
        self.seq += 1;
        let what = match &request {
            RouteNetlinkMessage::GetLink(_) => "dumping links",
            RouteNetlinkMessage::GetAddress(_) => "dumping addresses",
            _ => "dumping routes",
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0).map_err(|e| nl_error(what, e))?;
        let mut seen = 0usize;
        loop {
            if crate::clock::now() > self.deadline {
                return Err(nl_error(
                    what,
                    std::io::Error::other(format!("not done within {DEADLINE:?}")),
                ));
            }
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| nl_error(what, e))?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                    .map_err(|e| nl_error(what, std::io::Error::other(e.to_string())))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::Error(e) => {
                            return Err(nl_error(what, e.to_io()));
                        }
                        NetlinkPayload::InnerMessage(inner) => {
                            seen += 1;
                            if seen > MAX_MESSAGES {
                                return Err(nl_error(
                                    what,
                                    std::io::Error::other(format!(
                                        "more than {MAX_MESSAGES} entries"
                                    )),
                                ));
                            }
                            each(inner);
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

fn set_recv_timeout(socket: &Socket, t: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket descriptor and a properly sized timeval.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's own namespace always has `lo` with 127.0.0.1/8 (a
    /// dump needs no privilege): the observation finds it, names it, flags
    /// it as loopback, and keeps only what matters for the VIPs asked about.
    #[test]
    fn observes_loopback_of_the_current_namespace() {
        let idx = PrefixIndex::new(["127.0.0.0/24".parse().unwrap()]);
        let n = observe_networks(&idx).expect("netlink dump");
        let lo = n
            .addresses
            .iter()
            .find(|a| a.address == "127.0.0.1/8".parse().unwrap())
            .unwrap_or_else(|| panic!("no 127.0.0.1/8 in {n:#?}"));
        assert!(lo.loopback, "{lo:?}");
        assert!(
            n.addresses.iter().all(|a| a.address.addr().is_ipv4()
                && "127.0.0.0/8"
                    .parse::<IpNet>()
                    .unwrap()
                    .contains(&a.address.addr())),
            "only entries that could collide with 127.0.0.0/24 are kept: {n:#?}"
        );
        let none = observe_networks(&PrefixIndex::default()).unwrap();
        assert_eq!(none, HostNetworks::default());
    }
}
