//! The agent's file-descriptor budget (`docs/security.md`, "Descriptor
//! budget").
//!
//! Health checks open a socket per check, a BIRD pass opens the include's
//! temporary file, and a withdrawal must never fail for want of a
//! descriptor: with HAProxy frozen during a flood of idle connections, BIRD
//! kept announcing for as long as the flood lasted (issue 14). So at start
//! `lb-agent run` raises its soft `RLIMIT_NOFILE` to the hard limit (the
//! unit sets `LimitNOFILE`), and the listeners anyone local can reach are
//! capped far below it (`[status] max_connections`,
//! `metrics_max_connections`). [`budget`] is the pure check that the caps
//! leave [`RESERVED`] descriptors for everything else.

/// Descriptors kept for everything but the two listeners: checks (one per
/// concurrently running check), the BIRD control connection and include
/// writes, the HAProxy sockets, the API, logs, netlink, reload files.
pub const RESERVED: u64 = 1024;

/// The soft and hard `RLIMIT_NOFILE` after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit before the raise.
    pub before: u64,
    /// The soft limit now (the hard limit, unless raising failed).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (allowed without
/// privilege). On error the limits stay as they were.
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok(NofileLimit {
        before: soft,
        soft: hard,
        hard,
    })
}

/// Whether the listener caps leave [`RESERVED`] descriptors under `soft`;
/// the problem in words when they do not.
pub fn budget(
    soft: u64,
    max_connections: usize,
    metrics_max_connections: Option<usize>,
) -> Result<(), String> {
    let listeners = max_connections as u64 + metrics_max_connections.unwrap_or(0) as u64;
    if soft >= listeners + RESERVED {
        return Ok(());
    }
    Err(format!(
        "the descriptor limit {soft} leaves fewer than {RESERVED} descriptors for health checks and BIRD \
         next to {listeners} connections of the status socket and metrics listener; raise LimitNOFILE \
         (the packaged unit sets 65536) or lower [status] max_connections / metrics_max_connections"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_the_reserve() {
        assert!(budget(65536, 64, Some(16)).is_ok());
        assert!(budget(1024 + 80, 64, Some(16)).is_ok());
        let e = budget(1024, 64, Some(16)).unwrap_err();
        assert!(e.contains("1024") && e.contains("80 connections"), "{e}");
        assert!(budget(1024 + 64, 64, None).is_ok());
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let l = raise_nofile_limit().unwrap();
        assert_eq!(l.soft, l.hard);
        assert!(l.before <= l.soft);
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, l.hard);
    }
}
