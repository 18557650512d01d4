//! Refuse a reload that would fail to bind, before HAProxy tries it.
//!
//! Why this exists (docs/reliability.md, "Failed reloads"): when a reload of
//! HAProxy 2.6 cannot bind one of its addresses, the new process does not
//! just fail. It sends SIGTTOU to the serving worker, which pauses *every*
//! listener (on Linux `connect(AF_UNSPEC)` on the listening socket: its
//! accept queue is reset and new SYNs are answered with RST), retries the
//! bind 200 times 10 ms apart, and only then gives up and sends SIGTTIN to
//! resume them. Every existing frontend therefore refuses connections for
//! about two seconds per failed attempt. No 2.6 setting avoids it (socket
//! transfer, `expose-fd listeners` and the order of binds were measured and
//! change nothing), so the agent must never start such a reload.
//!
//! Inputs: the candidate haproxy.cfg, the installed one (what the running
//! HAProxy loaded) and the PIDs of the running HAProxy. Output: nothing, or
//! every address that would fail, each with the reason and who holds it.
//!
//! - pure: [`config_binds`] (the `bind` addresses of a config), [`to_probe`]
//!   (candidate binds the running HAProxy does not hold already), [`judge`]
//!   (probe results + listening sockets → conflicts);
//! - I/O, thin: [`observe`] binds a throw-away socket to each address the way
//!   HAProxy does (SO_REUSEADDR + SO_REUSEPORT, never `listen`), and lists the
//!   listening TCP sockets (sock_diag) with the process owning each (`/proc/*/fd`).
//!
//! Why both: a probe with SO_REUSEPORT fails with EADDRINUSE on a foreign
//! listener without SO_REUSEPORT (or of another uid), like HAProxy's bind will.
//! A foreign listener that *also* sets SO_REUSEPORT under HAProxy's uid lets
//! both binds succeed and then silently takes a share of the new frontend's
//! connections; only the socket table shows it, so it is refused too. Ports the
//! running HAProxy already holds are never probed: its own sockets would be
//! reported by the table, and a probe from another uid than HAProxy's would
//! fail on them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One TCP address a config binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bind {
    pub addr: SocketAddr,
    /// `v6only` (`Some(true)`) or `v4v6` (`Some(false)`) on the bind line;
    /// `None`: the system default (`net.ipv6.bindv6only`), as HAProxy does.
    pub v6only: Option<bool>,
}

/// The process owning a listening socket, when `/proc` lets us see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/<pid>/comm`.
    pub command: String,
}

/// A listening TCP socket of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub uid: u32,
    pub inode: u64,
    /// `None` when no visible process has the socket open (another uid without
    /// CAP_SYS_PTRACE, or it exited meanwhile).
    pub owner: Option<Owner>,
}

/// The result of binding a probe socket to one address.
pub type ProbeResult = Result<(), i32>;

/// Why one candidate address cannot be bound (or should not be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictKind {
    /// EADDRINUSE: another process holds the port; HAProxy's bind would fail.
    Held,
    /// The bind would succeed but share the port with a foreign SO_REUSEPORT
    /// listener, which would then take part of the frontend's connections.
    Shared,
    /// EADDRNOTAVAIL: the address is not on this host.
    AddressMissing,
    /// Any other bind error (errno), e.g. EACCES for a port below 1024.
    Refused(i32),
}

/// One address of the candidate that must not go into a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub addr: SocketAddr,
    pub kind: ConflictKind,
    /// The foreign listeners found on the address (may be empty: a socket that
    /// is bound but not listening holds a port too).
    pub holders: Vec<Listener>,
}

/// Every conflict of a candidate; the reload is not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BindConflicts(pub Vec<Conflict>);

impl fmt::Display for BindConflicts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (port, ip) = (self.addr.port(), self.addr.ip());
        match &self.kind {
            ConflictKind::Held => write!(f, "port {port} on {ip} held by another process")?,
            ConflictKind::Shared => write!(
                f,
                "port {port} on {ip} has a listener of another process with SO_REUSEPORT, \
                 which would take part of the connections"
            )?,
            ConflictKind::AddressMissing => {
                return write!(f, "address {ip} (port {port}) is not on this host")
            }
            ConflictKind::Refused(errno) => {
                return write!(
                    f,
                    "binding port {port} on {ip} fails: {}",
                    std::io::Error::from_raw_os_error(*errno)
                )
            }
        }
        let holders: Vec<String> = self.holders.iter().map(describe).collect();
        if !holders.is_empty() {
            write!(f, " ({})", holders.join(", "))?;
        }
        Ok(())
    }
}

fn describe(l: &Listener) -> String {
    match &l.owner {
        Some(o) => format!("pid {} {} listening on {}", o.pid, o.command, l.addr),
        None => format!("uid {} listening on {}, process not visible", l.uid, l.addr),
    }
}

// ---------------------------------------------------------------- pure part

/// The TCP addresses of every `bind` line (and inet `stats socket`) of an
/// HAProxy config, deduplicated, in order.
///
/// Understands what HAProxy 2.6 accepts for TCP: `a.b.c.d:port`, `[v6]:port`,
/// `v6:port` (the last colon separates the port), an empty or `*` host
/// (0.0.0.0), the `ipv4@`/`ipv6@`/`tcp@`/`tcp4@`/`tcp6@` prefixes, port ranges
/// `80-81` and comma-separated lists. Anything else (UNIX paths, `abns@`,
/// `fd@`, `sockpair@`, UDP/QUIC, `${ENV}` addresses) is not a TCP port this
/// check can probe and is skipped.
pub fn config_binds(config: &str) -> Vec<Bind> {
    let mut out: Vec<Bind> = Vec::new();
    for line in config.lines() {
        let mut words = line.split_whitespace();
        let spec = match (words.next(), words.next()) {
            (Some("bind"), Some(spec)) => spec,
            (Some("stats"), Some("socket")) => match words.next() {
                Some(spec) => spec,
                None => continue,
            },
            _ => continue,
        };
        let rest: Vec<&str> = words.collect();
        let v6only = if rest.contains(&"v6only") {
            Some(true)
        } else if rest.contains(&"v4v6") {
            Some(false)
        } else {
            None
        };
        for one in spec.split(',') {
            for addr in parse_addr(one) {
                let b = Bind { addr, v6only };
                if !out.contains(&b) {
                    out.push(b);
                }
            }
        }
    }
    out
}

/// One address of a bind line → its socket addresses (several for a range).
fn parse_addr(spec: &str) -> Vec<SocketAddr> {
    let (family, spec) = match spec.split_once('@') {
        None => (None, spec),
        Some(("ipv4" | "tcp4", rest)) => (Some(false), rest),
        Some(("ipv6" | "tcp6", rest)) => (Some(true), rest),
        Some(("tcp", rest)) => (None, rest),
        Some(_) => return Vec::new(),
    };
    let (host, ports) = if let Some(rest) = spec.strip_prefix('[') {
        match rest.split_once("]:") {
            Some(hp) => hp,
            None => return Vec::new(),
        }
    } else {
        match spec.rsplit_once(':') {
            Some(hp) => hp,
            None => return Vec::new(),
        }
    };
    let ip: IpAddr = match host {
        "" | "*" if family == Some(true) => Ipv6Addr::UNSPECIFIED.into(),
        "" | "*" => Ipv4Addr::UNSPECIFIED.into(),
        h => match h.parse() {
            Ok(ip) => ip,
            Err(_) => return Vec::new(),
        },
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (a.parse::<u16>(), b.parse::<u16>()),
        None => (ports.parse::<u16>(), ports.parse::<u16>()),
    };
    match (lo, hi) {
        (Ok(lo), Ok(hi)) if lo > 0 && lo <= hi => {
            (lo..=hi).map(|p| SocketAddr::new(ip, p)).collect()
        }
        _ => Vec::new(),
    }
}

/// The candidate's binds that the running HAProxy does not hold already.
///
/// `running` is `None` when the installed config could not be read: then
/// every candidate bind is probed (correct as long as the agent runs under
/// HAProxy's uid, root by default; see the module doc).
pub fn to_probe(candidate: &[Bind], running: Option<&[Bind]>) -> Vec<Bind> {
    let held: BTreeSet<SocketAddr> = running.unwrap_or_default().iter().map(|b| b.addr).collect();
    candidate
        .iter()
        .filter(|b| !held.contains(&b.addr))
        .copied()
        .collect()
}

/// True when a socket bound to `listener` and one bound to `bind` compete for
/// the same port (a bind conflict unless both use SO_REUSEPORT).
pub fn overlaps(bind: &Bind, listener: SocketAddr) -> bool {
    if bind.addr.port() != listener.port() {
        return false;
    }
    let (b, l) = (bind.addr.ip(), listener.ip());
    b == l || covers(bind, l) || (l.is_unspecified() && same_family(b, l))
}

/// True when `listener` would receive connections meant for a new `bind`:
/// the same address, or any address of the family when `bind` is a wildcard
/// (the kernel prefers the more specific listener). A foreign wildcard
/// listener does not take traffic from a specific bind.
pub fn steals(bind: &Bind, listener: SocketAddr) -> bool {
    bind.addr.port() == listener.port()
        && (bind.addr.ip() == listener.ip() || covers(bind, listener.ip()))
}

/// A wildcard `bind` covers every address of its family (and IPv4 too for a
/// dual-stack `::`, unless `v6only`).
fn covers(bind: &Bind, ip: IpAddr) -> bool {
    let b = bind.addr.ip();
    if !b.is_unspecified() {
        return false;
    }
    same_family(b, ip) || (b.is_ipv6() && bind.v6only != Some(true) && ip.is_ipv4())
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// Decides from the probes and the socket table which candidate addresses
/// must not go into a reload.
///
/// A listener counts as the running HAProxy's own when its address is bound
/// by the running config or its owner is one of `haproxy_pids`; every other
/// listener is foreign. EADDRINUSE caused only by HAProxy's own sockets (a
/// probe from another uid) is no conflict: HAProxy's bind will succeed.
pub fn judge(
    probes: &[(Bind, ProbeResult)],
    listeners: &[Listener],
    running: &[Bind],
    haproxy_pids: &BTreeSet<u32>,
) -> Vec<Conflict> {
    let own = |l: &Listener| {
        running.iter().any(|b| b.addr == l.addr)
            || l.owner
                .as_ref()
                .is_some_and(|o| haproxy_pids.contains(&o.pid))
    };
    let mut out = Vec::new();
    for (bind, result) in probes {
        let near = |f: fn(&Bind, SocketAddr) -> bool| -> (Vec<Listener>, usize) {
            let all: Vec<&Listener> = listeners.iter().filter(|l| f(bind, l.addr)).collect();
            let n = all.len();
            (all.into_iter().filter(|l| !own(l)).cloned().collect(), n)
        };
        let conflict = |kind, holders| Conflict {
            addr: bind.addr,
            kind,
            holders,
        };
        match *result {
            Err(libc::EADDRINUSE) => {
                let (foreign, all) = near(overlaps);
                if foreign.is_empty() && all > 0 {
                    continue;
                }
                out.push(conflict(ConflictKind::Held, foreign));
            }
            Err(libc::EADDRNOTAVAIL) => out.push(conflict(ConflictKind::AddressMissing, vec![])),
            Err(errno) => out.push(conflict(ConflictKind::Refused(errno), vec![])),
            Ok(()) => {
                let (foreign, _) = near(steals);
                if !foreign.is_empty() {
                    out.push(conflict(ConflictKind::Shared, foreign));
                }
            }
        }
    }
    out
}

// ------------------------------------------------------------------ I/O part

/// Checks a candidate config against the running one; `Err` lists every
/// address that would fail (or be shared), and then no reload must be started.
///
/// `running_config` is the installed haproxy.cfg (what the running HAProxy
/// loaded), `None` if unreadable; `haproxy_pids` are the master's and the
/// workers' PIDs (`show proc`), to recognise HAProxy's own sockets. Blocking:
/// a few syscalls per new address, and a walk of `/proc/*/fd` only when a
/// listener sits on one of them.
pub fn check(
    candidate_config: &str,
    running_config: Option<&str>,
    haproxy_pids: &BTreeSet<u32>,
) -> Result<(), BindConflicts> {
    let running = running_config.map(config_binds);
    let targets = to_probe(&config_binds(candidate_config), running.as_deref());
    if targets.is_empty() {
        return Ok(());
    }
    let (probes, listeners) = observe(&targets, haproxy_pids);
    let conflicts = judge(
        &probes,
        &listeners,
        running.as_deref().unwrap_or_default(),
        haproxy_pids,
    );
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(BindConflicts(conflicts))
    }
}

/// Probes every target and lists the listening sockets that overlap any of
/// them, with their owners (`haproxy_pids` are looked through last).
pub fn observe(
    targets: &[Bind],
    haproxy_pids: &BTreeSet<u32>,
) -> (Vec<(Bind, ProbeResult)>, Vec<Listener>) {
    let probes = targets.iter().map(|b| (*b, probe(b))).collect();
    let mut listeners: Vec<Listener> = listening_sockets()
        .into_iter()
        .filter(|l| targets.iter().any(|b| overlaps(b, l.addr)))
        .collect();
    if !listeners.is_empty() {
        let inodes = listeners.iter().map(|l| l.inode).collect();
        let owners = socket_owners(&inodes, haproxy_pids);
        for l in &mut listeners {
            l.owner = owners.get(&l.inode).cloned();
        }
    }
    (probes, listeners)
}

/// Binds a socket to `bind` the way HAProxy 2.6 does (`sock_inet_bind_receiver`:
/// SO_REUSEADDR, SO_REUSEPORT, IPV6_V6ONLY as configured), without `listen`,
/// so it never receives a connection; closed on return.
pub fn probe(bind: &Bind) -> ProbeResult {
    use socket2::{Domain, Protocol, Socket, Type};
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let s = Socket::new(
        Domain::for_address(bind.addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(errno)?;
    s.set_reuse_address(true).map_err(errno)?;
    s.set_reuse_port(true).map_err(errno)?;
    if let (true, Some(only)) = (bind.addr.is_ipv6(), bind.v6only) {
        s.set_only_v6(only).map_err(errno)?;
    }
    s.bind(&bind.addr.into()).map_err(errno)
}

/// Listening TCP sockets of this network namespace.
///
/// Asked of the kernel over sock_diag with a LISTEN-only filter (what
/// `ss -ltn` does), so the cost does not grow with the host's connections:
/// `/proc/net/tcp` lists every connection and took seconds to read under the
/// test's client load. Falls back to `/proc/net/tcp{,6}` if sock_diag fails.
pub fn listening_sockets() -> Vec<Listener> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        match sock_diag_listeners(family) {
            Ok(mut l) => out.append(&mut l),
            Err(error) => {
                tracing::debug!(%error, family, "sock_diag failed; reading /proc/net/tcp");
                out.extend(proc_net_listeners(family));
            }
        }
    }
    out
}

fn sock_diag_listeners(family: u8) -> std::io::Result<Vec<Listener>> {
    use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
    };
    use netlink_packet_sock_diag::constants::IPPROTO_TCP;
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};

    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id: if family == libc::AF_INET as u8 {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut out = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    // A dump ends with NLMSG_DONE; the bound only guards against a kernel bug.
    for _ in 0..100_000 {
        let size = socket.recv(&mut &mut rx[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..size])
                .map_err(|e| bad(e.to_string()))?;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    out.push(Listener {
                        addr: SocketAddr::new(id.source_address, id.source_port),
                        uid: r.header.uid,
                        inode: u64::from(r.header.inode),
                        owner: None,
                    });
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(bad(format!("sock_diag: {e:?}"))),
                _ => {}
            }
            if msg.header.length == 0 {
                break;
            }
            offset += msg.header.length as usize;
        }
    }
    Err(bad("sock_diag dump did not end".into()))
}

fn proc_net_listeners(family: u8) -> Vec<Listener> {
    let table = if family == libc::AF_INET as u8 {
        procfs::net::tcp()
    } else {
        procfs::net::tcp6()
    };
    table
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.state == procfs::net::TcpState::Listen)
        .map(|e| Listener {
            addr: e.local_address,
            uid: e.uid,
            inode: e.inode,
            owner: None,
        })
        .collect()
}

/// The processes that have these socket inodes open, from `/proc/*/fd`;
/// processes whose descriptors we may not read are skipped. HAProxy's own
/// processes (`last`) are walked last: they hold by far the most descriptors
/// and a foreign owner is usually found before them.
fn socket_owners(inodes: &BTreeSet<u64>, last: &BTreeSet<u32>) -> BTreeMap<u64, Owner> {
    let mut found = BTreeMap::new();
    let Ok(all) = procfs::process::all_processes() else {
        return found;
    };
    let (mut first, mut then): (Vec<_>, Vec<_>) =
        all.flatten().partition(|p| !last.contains(&(p.pid as u32)));
    first.append(&mut then);
    for p in first {
        if found.len() == inodes.len() {
            break;
        }
        let Ok(fds) = p.fd() else { continue };
        for fd in fds.flatten() {
            if let procfs::process::FDTarget::Socket(inode) = fd.target {
                if inodes.contains(&inode) && !found.contains_key(&inode) {
                    let command = std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                        .map(|c| c.trim().to_string())
                        .unwrap_or_default();
                    let pid = p.pid as u32;
                    found.insert(inode, Owner { pid, command });
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bind {
        Bind {
            addr: s.parse().unwrap(),
            v6only: None,
        }
    }
    fn addrs(binds: &[Bind]) -> Vec<String> {
        binds.iter().map(|b| b.addr.to_string()).collect()
    }
    fn lis(addr: &str, pid: Option<u32>) -> Listener {
        Listener {
            addr: addr.parse().unwrap(),
            uid: 0,
            inode: 7,
            owner: pid.map(|pid| Owner {
                pid,
                command: "python3".into(),
            }),
        }
    }

    #[test]
    fn parses_the_bind_forms_haproxy_accepts() {
        let cfg = "\
global
    stats socket /run/haproxy/admin.sock mode 660 level admin
    stats socket ipv4@127.0.0.1:9999 level operator
frontend web
    bind 192.0.2.10:80
    bind [2001:db8::10]:443 ssl crt /etc/x.pem
    bind :::8443 v6only
    bind :8080,127.0.0.1:81-82
    bind *:9000 v4v6
    bind ipv6@:7000
    # bind 10.0.0.1:1 is a comment
    bind unix@/run/x.sock
    bind /run/y.sock
    bind abns@foo
    bind fd@3
    bind quic4@:443
    bind 192.0.2.10:80
    bind nothost:80
    bind 1.2.3.4:0
    bind 1.2.3.4:99999
    bind 1.2.3.4:5-4
";
        let got = config_binds(cfg);
        assert_eq!(
            addrs(&got),
            [
                "127.0.0.1:9999",
                "192.0.2.10:80",
                "[2001:db8::10]:443",
                "[::]:8443",
                "0.0.0.0:8080",
                "127.0.0.1:81",
                "127.0.0.1:82",
                "0.0.0.0:9000",
                "[::]:7000",
            ]
        );
        assert_eq!(got[3].v6only, Some(true));
        assert_eq!(got[7].v6only, Some(false));
        assert_eq!(got[1].v6only, None);
    }

    #[test]
    fn parses_the_rendered_config() {
        let cfg = include_str!("../../fixtures/golden/full.cfg");
        assert_eq!(
            addrs(&config_binds(cfg)),
            [
                "192.0.2.10:22",
                "192.0.2.10:80",
                "192.0.2.10:443",
                "[2001:db8:10::10]:443"
            ]
        );
    }

    #[test]
    fn probes_only_what_the_running_haproxy_does_not_hold() {
        let cand = [b("192.0.2.10:80"), b("192.0.2.10:8081"), b("[::1]:80")];
        let running = [b("192.0.2.10:80"), b("192.0.2.11:80")];
        assert_eq!(
            addrs(&to_probe(&cand, Some(&running))),
            ["192.0.2.10:8081", "[::1]:80"]
        );
        assert_eq!(
            to_probe(&cand, None).len(),
            3,
            "unknown running config: probe all"
        );
        assert!(to_probe(&running, Some(&running)).is_empty());
    }

    #[test]
    fn overlap_and_steal_tables() {
        // (bind, listener, overlaps, steals)
        let rows = [
            ("127.0.0.1:80", "127.0.0.1:80", true, true),
            ("127.0.0.1:80", "127.0.0.1:81", false, false),
            ("127.0.0.1:80", "127.0.0.2:80", false, false),
            ("127.0.0.1:80", "0.0.0.0:80", true, false),
            ("0.0.0.0:80", "127.0.0.1:80", true, true),
            ("0.0.0.0:80", "[::1]:80", false, false),
            ("[::]:80", "127.0.0.1:80", true, true),
            ("[::]:80", "[::1]:80", true, true),
            ("[::1]:80", "[::]:80", true, false),
            ("[::1]:80", "0.0.0.0:80", false, false),
        ];
        for (bind, l, o, s) in rows {
            let (bb, la) = (b(bind), l.parse().unwrap());
            assert_eq!(overlaps(&bb, la), o, "overlaps({bind}, {l})");
            assert_eq!(steals(&bb, la), s, "steals({bind}, {l})");
        }
        let v6only = Bind {
            v6only: Some(true),
            ..b("[::]:80")
        };
        assert!(!overlaps(&v6only, "127.0.0.1:80".parse().unwrap()));
    }

    #[test]
    fn judge_table() {
        let pids: BTreeSet<u32> = [100, 101].into();
        let running = [b("127.0.0.1:80")];
        let new = b("127.0.0.1:8090");
        let inuse = Err(libc::EADDRINUSE);
        let kinds = |probes: &[(Bind, ProbeResult)], ls: &[Listener]| -> Vec<ConflictKind> {
            judge(probes, ls, &running, &pids)
                .into_iter()
                .map(|c| c.kind)
                .collect()
        };
        // A free port.
        assert!(kinds(&[(new, Ok(()))], &[]).is_empty());
        // A foreign listener without SO_REUSEPORT.
        let foreign = lis("127.0.0.1:8090", Some(4242));
        assert_eq!(
            kinds(&[(new, inuse)], std::slice::from_ref(&foreign)),
            [ConflictKind::Held]
        );
        // Held by a socket that is bound but not listening: still held.
        assert_eq!(kinds(&[(new, inuse)], &[]), [ConflictKind::Held]);
        // A foreign SO_REUSEPORT listener under the same uid: the bind succeeds.
        assert_eq!(
            kinds(&[(new, Ok(()))], std::slice::from_ref(&foreign)),
            [ConflictKind::Shared]
        );
        // ... unless the owner is HAProxy itself (an old worker, say).
        let haproxy = lis("127.0.0.1:8090", Some(101));
        assert!(kinds(&[(new, Ok(()))], std::slice::from_ref(&haproxy)).is_empty());
        // EADDRINUSE only from HAProxy's own socket (probe from another uid): fine.
        assert!(kinds(&[(new, inuse)], &[haproxy]).is_empty());
        // A wildcard foreign listener does not take a specific bind's traffic...
        let wild = lis("0.0.0.0:8090", None);
        assert!(kinds(&[(new, Ok(()))], std::slice::from_ref(&wild)).is_empty());
        // ... but is named when it makes the bind fail.
        let c = judge(&[(new, inuse)], &[wild], &running, &pids);
        assert_eq!(c[0].holders.len(), 1);
        // A new wildcard bind next to HAProxy's own specific listener is no conflict.
        let wild_bind = b("0.0.0.0:80");
        let own = lis("127.0.0.1:80", None);
        assert!(kinds(&[(wild_bind, Ok(()))], &[own]).is_empty());
        // Missing address, other errors.
        assert_eq!(
            kinds(
                &[
                    (new, Err(libc::EADDRNOTAVAIL)),
                    (b("1.1.1.1:80"), Err(libc::EACCES))
                ],
                &[]
            ),
            [
                ConflictKind::AddressMissing,
                ConflictKind::Refused(libc::EACCES)
            ]
        );
    }

    #[test]
    fn messages_name_port_address_and_holder() {
        let c = Conflict {
            addr: "127.0.0.1:8090".parse().unwrap(),
            kind: ConflictKind::Held,
            holders: vec![lis("127.0.0.1:8090", Some(4242)), lis("0.0.0.0:8090", None)],
        };
        assert_eq!(
            c.to_string(),
            "port 8090 on 127.0.0.1 held by another process (pid 4242 python3 listening on \
             127.0.0.1:8090, uid 0 listening on 0.0.0.0:8090, process not visible)"
        );
        let all = BindConflicts(vec![
            c,
            Conflict {
                addr: "[2001:db8::1]:443".parse().unwrap(),
                kind: ConflictKind::AddressMissing,
                holders: vec![],
            },
        ]);
        assert!(all
            .to_string()
            .ends_with("; address 2001:db8::1 (port 443) is not on this host"));
    }

    #[test]
    fn probe_sees_a_foreign_listener_and_ignores_a_shared_one() {
        use socket2::{Domain, Socket, Type};
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let held = Bind {
            addr: plain.local_addr().unwrap(),
            v6only: None,
        };
        assert_eq!(probe(&held), Err(libc::EADDRINUSE));
        // A listener with SO_REUSEPORT (same uid) lets the probe bind: the
        // socket table has to find it.
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        s.listen(8).unwrap();
        let shared = Bind {
            addr: s.local_addr().unwrap().as_socket().unwrap(),
            v6only: None,
        };
        assert_eq!(probe(&shared), Ok(()));
        let diag = sock_diag_listeners(libc::AF_INET as u8).expect("sock_diag works here");
        assert!(
            diag.iter().any(|l| l.addr == held.addr) && diag.iter().any(|l| l.addr == shared.addr)
        );
        let (probes, listeners) = observe(&[held, shared], &BTreeSet::new());
        let c = judge(&probes, &listeners, &[], &BTreeSet::new());
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(
            (c[0].kind.clone(), c[1].kind.clone()),
            (ConflictKind::Held, ConflictKind::Shared)
        );
        let me = std::process::id();
        assert!(
            c.iter().all(|c| c
                .holders
                .iter()
                .any(|h| h.owner.as_ref().map(|o| o.pid) == Some(me))),
            "the test process is named as the holder: {c:?}"
        );
    }
}
