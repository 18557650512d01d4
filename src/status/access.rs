//! Who may mutate the agent through the status socket.
//!
//! Reading needs only permission to connect, which the socket file's mode
//! and group grant (`status.mode`, `status.group`). Mutations (drain,
//! undrain, reconcile) additionally check the peer's credentials as the
//! kernel reports them for the connection (`SO_PEERCRED`): allowed are uid 0,
//! the agent's own uid (e.g. `ExecReload` running as the service user), and
//! members of the status group.
//!
//! Membership is decided from the *peer process's* credentials, not from
//! the group database: the primary gid from `SO_PEERCRED`, and the
//! supplementary groups from the `Groups:` line of `/proc/<pid>/status`.
//! That is what the kernel itself uses for file access, so a user freshly
//! added to the group (who has not logged in again) is treated the same by
//! the socket file and by this check. To guard against the peer having exited
//! and its pid being reused, the effective uid on the `Uid:` line must match
//! the uid from `SO_PEERCRED`; otherwise the supplementary groups are not
//! trusted. Only when `/proc/<pid>/status` cannot be read at all (a pid from
//! another pid namespace, `hidepid=`) does the check fall back to the group
//! database (`getgrouplist` of the peer's user name).

use std::fmt;

use nix::unistd::{Gid, Group, Uid, User};

/// The credentials of a connected client, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid at `connect()`.
    pub uid: u32,
    /// Effective gid at `connect()`.
    pub gid: u32,
    /// Process id, when the kernel could report one in our pid namespace.
    pub pid: Option<i32>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match User::from_uid(Uid::from_raw(self.uid)) {
            Ok(Some(u)) => write!(f, "uid {} ({})", self.uid, u.name)?,
            _ => write!(f, "uid {}", self.uid)?,
        }
        write!(f, ", gid {}", self.gid)?;
        if let Some(pid) = self.pid {
            write!(f, ", pid {pid}")?;
        }
        Ok(())
    }
}

/// The mutation rule for one server.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// The status group, when one is managed: `(name, gid)`.
    group: Option<(String, u32)>,
    /// The agent's own effective uid.
    own_uid: u32,
}

/// Why a peer was allowed (for the log line of a mutation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// uid 0.
    Root,
    /// The same uid as the agent.
    SameUser,
    /// The peer's primary gid is the status group.
    PrimaryGroup,
    /// The status group is among the peer's supplementary groups (`/proc`).
    SupplementaryGroup,
    /// The group database lists the peer's user in the status group.
    GroupDatabase,
}

/// A refused peer, with the rule it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{peer} is not allowed to {action}: {rule}")]
pub struct Denied {
    /// Who.
    pub peer: Peer,
    /// What they tried.
    pub action: &'static str,
    /// What would have been needed.
    pub rule: String,
}

impl AccessPolicy {
    /// A policy for a socket owned by the status group `(name, gid)` (or no
    /// managed group: then only uid 0 and the agent's uid may mutate).
    pub fn new(group: Option<(String, u32)>, own_uid: u32) -> AccessPolicy {
        AccessPolicy { group, own_uid }
    }

    /// Decides whether `peer` may perform `action`, reading the peer's
    /// supplementary groups when its uid and primary gid do not settle it.
    pub fn check(&self, peer: &Peer, action: &'static str) -> Result<Grant, Denied> {
        self.decide(peer, action, || peer_groups(peer))
    }

    /// The decision, with the supplementary-group lookup injected (pure when
    /// `groups` is).
    pub fn decide(
        &self,
        peer: &Peer,
        action: &'static str,
        groups: impl FnOnce() -> Option<(Vec<u32>, GroupsFrom)>,
    ) -> Result<Grant, Denied> {
        if peer.uid == 0 {
            return Ok(Grant::Root);
        }
        if peer.uid == self.own_uid {
            return Ok(Grant::SameUser);
        }
        let rule = self.rule();
        let Some((_, gid)) = &self.group else {
            return Err(Denied {
                peer: *peer,
                action,
                rule,
            });
        };
        if peer.gid == *gid {
            return Ok(Grant::PrimaryGroup);
        }
        match groups() {
            Some((list, from)) if list.contains(gid) => Ok(match from {
                GroupsFrom::Proc => Grant::SupplementaryGroup,
                GroupsFrom::Database => Grant::GroupDatabase,
            }),
            _ => Err(Denied {
                peer: *peer,
                action,
                rule,
            }),
        }
    }
}

impl AccessPolicy {
    /// Who may mutate, in words: `needs uid 0, uid 995 or membership of group lb-agent`.
    fn rule(&self) -> String {
        let mut who = vec!["uid 0".to_string()];
        if self.own_uid != 0 {
            who.push(format!("uid {}", self.own_uid));
        }
        if let Some((name, _)) = &self.group {
            who.push(format!("membership of group {name}"));
        }
        let last = who.pop().unwrap_or_default();
        if who.is_empty() {
            format!("needs {last}")
        } else {
            format!("needs {} or {last}", who.join(", "))
        }
    }
}

/// Where a peer's supplementary groups came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupsFrom {
    /// `/proc/<pid>/status` of the peer process.
    Proc,
    /// The group database (`getgrouplist`).
    Database,
}

/// The peer's supplementary groups: from `/proc` when readable, else from
/// the group database. `None` when neither works or `/proc` shows a
/// different uid (the pid was reused).
fn peer_groups(peer: &Peer) -> Option<(Vec<u32>, GroupsFrom)> {
    if let Some(pid) = peer.pid.filter(|p| *p > 0) {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let (euid, groups) = parse_proc_status(&text)?;
            return (euid == peer.uid).then_some((groups, GroupsFrom::Proc));
        }
    }
    let user = User::from_uid(Uid::from_raw(peer.uid)).ok().flatten()?;
    let name = std::ffi::CString::new(user.name).ok()?;
    let groups = nix::unistd::getgrouplist(&name, Gid::from_raw(peer.gid)).ok()?;
    Some((
        groups.into_iter().map(Gid::as_raw).collect(),
        GroupsFrom::Database,
    ))
}

/// Extracts the effective uid (second field of `Uid:`) and the `Groups:`
/// list from the text of `/proc/<pid>/status`. `None` when either line is
/// missing or malformed.
pub fn parse_proc_status(text: &str) -> Option<(u32, Vec<u32>)> {
    let mut euid = None;
    let mut groups = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            euid = rest
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok());
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups = rest
                .split_whitespace()
                .map(|s| s.parse::<u32>().ok())
                .collect::<Option<Vec<_>>>();
        }
    }
    Some((euid?, groups?))
}

/// Resolves the status group's name to its gid.
pub fn lookup_group(name: &str) -> Result<Option<u32>, nix::Error> {
    Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\n\
        Uid:\t1000\t1001\t1001\t1001\nGid:\t100\t100\t100\t100\nFDSize:\t64\nGroups:\t4 24 27 999 \nNStgid:\t42\n";

    #[test]
    fn proc_status_yields_effective_uid_and_groups() {
        assert_eq!(
            parse_proc_status(STATUS),
            Some((1001, vec![4, 24, 27, 999]))
        );
        assert_eq!(
            parse_proc_status("Uid:\t5\t5\t5\t5\nGroups:\t\n"),
            Some((5, vec![]))
        );
        assert_eq!(parse_proc_status("Groups:\t1 2\n"), None);
        assert_eq!(parse_proc_status("Uid:\t5\t5\t5\t5\nGroups:\t1 x\n"), None);
        assert_eq!(parse_proc_status(""), None);
    }

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid,
            gid,
            pid: Some(42),
        }
    }

    fn never() -> Option<(Vec<u32>, GroupsFrom)> {
        panic!("supplementary groups must not be needed here")
    }

    #[test]
    fn root_and_own_uid_are_allowed_without_a_lookup() {
        let p = AccessPolicy::new(Some(("lb-agent".into(), 990)), 995);
        assert_eq!(p.decide(&peer(0, 0), "drain", never), Ok(Grant::Root));
        assert_eq!(
            p.decide(&peer(995, 995), "drain", never),
            Ok(Grant::SameUser)
        );
        assert_eq!(
            p.decide(&peer(1000, 990), "drain", never),
            Ok(Grant::PrimaryGroup)
        );
    }

    #[test]
    fn supplementary_membership_is_decided_from_the_lookup() {
        let p = AccessPolicy::new(Some(("lb-agent".into(), 990)), 995);
        let some = |v: Vec<u32>, f| move || Some((v, f));
        assert_eq!(
            p.decide(
                &peer(1000, 100),
                "drain",
                some(vec![4, 990], GroupsFrom::Proc)
            ),
            Ok(Grant::SupplementaryGroup)
        );
        assert_eq!(
            p.decide(
                &peer(1000, 100),
                "drain",
                some(vec![990], GroupsFrom::Database)
            ),
            Ok(Grant::GroupDatabase)
        );
        let denied = p
            .decide(
                &peer(1000, 100),
                "undrain",
                some(vec![4, 27], GroupsFrom::Proc),
            )
            .unwrap_err();
        assert_eq!(denied.action, "undrain");
        assert!(denied.to_string().contains("uid 1000"), "{denied}");
        assert!(
            denied.to_string().contains("membership of group lb-agent"),
            "{denied}"
        );
        assert!(p.decide(&peer(1000, 100), "drain", || None).is_err());
    }

    #[test]
    fn without_a_group_only_root_and_own_uid_pass() {
        let p = AccessPolicy::new(None, 995);
        assert!(p.decide(&peer(0, 0), "drain", never).is_ok());
        let denied = p.decide(&peer(1000, 990), "reconcile", never).unwrap_err();
        assert_eq!(denied.rule, "needs uid 0 or uid 995");
        assert_eq!(AccessPolicy::new(None, 0).rule(), "needs uid 0");
        assert_eq!(
            AccessPolicy::new(Some(("g".into(), 1)), 0).rule(),
            "needs uid 0 or membership of group g"
        );
        assert_eq!(
            AccessPolicy::new(Some(("g".into(), 1)), 7).rule(),
            "needs uid 0, uid 7 or membership of group g"
        );
    }

    #[test]
    fn the_real_proc_lookup_sees_this_process() {
        let me = Peer {
            uid: Uid::effective().as_raw(),
            gid: Gid::effective().as_raw(),
            pid: Some(std::process::id() as i32),
        };
        let (groups, from) = peer_groups(&me).expect("own /proc/self/status");
        assert_eq!(from, GroupsFrom::Proc);
        let expected: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        assert_eq!(groups, expected);
        // A pid whose uid differs (pid 1 is root's; pretend we are someone else).
        let imposter = Peer {
            uid: 4242,
            gid: 4242,
            pid: Some(1),
        };
        assert!(peer_groups(&imposter).is_none());
    }
}
