//! The persisted drain flag (docs/gating.md, "Sets": drained state survives agent
//! restarts until `lb-agent undrain`).
//!
//! A drain is an operator's promise to the platform that this host is going
//! away; forgetting it across a crash or a package upgrade would put the host
//! back into ECMP mid-maintenance. So the flag lives in
//! `<state_dir>/drain.json`, written atomically through
//! [`crate::fsutil::write_atomic`], with the drain's start in *wall-clock*
//! time (`Instant`s do not survive a restart). [`DrainStore::gate_state`]
//! converts it into the monotonic [`crate::gate::DrainState`] the gate needs,
//! so a graceful drain's grace period keeps counting across restarts.
//!
//! Fail-safe rules, because the cost of a wrong "undrained" is traffic to a
//! host under maintenance while a wrong "drained" only costs capacity:
//!
//! - a missing file means undrained (a fresh host);
//! - an unreadable or corrupt file means **drained**: [`DrainStore::load`]
//!   returns a [`DrainLoadError`] naming the file and carrying a drained
//!   store (reason says why; `since` is the file's modification time, the
//!   last time the agent wrote it, or the Unix epoch when even that is
//!   unknown, which ends any graceful period at once). `lb-agent undrain`
//!   rewrites the file and clears it;
//! - a drain that cannot be persisted still takes effect in memory (the
//!   error is returned so the operator learns it will not survive a
//!   restart); an undrain that cannot be persisted does not take effect.
//!
//! File format (unknown fields are ignored for forward compatibility):
//!
//! ```json
//! { "drained": true, "reason": "kernel upgrade", "since": "2026-05-01T10:00:00.123Z" }
//! ```

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::gate::DrainState;

/// File name of the drain flag inside `state_dir`.
pub const FILE_NAME: &str = "drain.json";

/// Permission bits of the drain file: root/agent-writable, world-readable
/// (it holds nothing secret, and operators like to `cat` it).
const FILE_MODE: u32 = 0o644;

/// An active drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// The operator's reason (`lb-agent drain --reason`), possibly empty.
    pub reason: String,
    /// Wall-clock start of the drain; the graceful period runs from here.
    pub since: SystemTime,
}

/// Errors of the drain store.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The file exists but could not be read.
    #[error("cannot read drain state file {path}: {source}")]
    Read {
        /// The drain file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's content is not a valid drain state.
    #[error("drain state file {path} is corrupt: {detail}")]
    Corrupt {
        /// The drain file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Writing the file failed; the previous file is intact.
    #[error("cannot write drain state file {path}: {source}")]
    Write {
        /// The drain file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// [`DrainStore::load`] could not trust the file: the host is treated as
/// drained (fail-safe) and `store` is that drained store.
#[derive(Debug, thiserror::Error)]
#[error("{error}; treating the host as drained until `lb-agent undrain`")]
pub struct DrainLoadError {
    /// What was wrong.
    #[source]
    pub error: DrainError,
    /// The fail-safe store to continue with: drained, with a reason naming the file.
    pub store: DrainStore,
}

/// The on-disk form.
#[derive(Debug, Serialize, Deserialize)]
struct WireDrain {
    drained: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
}

/// The drain flag and where it is persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainStore {
    /// `<state_dir>/drain.json`.
    path: PathBuf,
    /// The current state; `None` = undrained.
    state: Option<Drained>,
}

impl DrainStore {
    /// Loads `<dir>/drain.json`. A missing file is undrained; an unreadable or
    /// corrupt one is an error that carries a drained store to continue with.
    pub fn load(dir: &Path) -> Result<DrainStore, DrainLoadError> {
        let path = dir.join(FILE_NAME);
        let fail_safe = |error: DrainError| {
            let since = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            DrainLoadError {
                store: DrainStore {
                    path: path.clone(),
                    state: Some(Drained {
                        reason: format!("{error} (fail-safe)"),
                        since,
                    }),
                },
                error,
            }
        };
        let bytes = match crate::fsutil::read_optional(&path) {
            Ok(None) => return Ok(DrainStore { path, state: None }),
            Ok(Some(b)) => b,
            Err(source) => {
                return Err(fail_safe(DrainError::Read {
                    path: path.clone(),
                    source,
                }))
            }
        };
        match parse(&bytes) {
            Ok(state) => Ok(DrainStore { path, state }),
            Err(detail) => Err(fail_safe(DrainError::Corrupt {
                path: path.clone(),
                detail,
            })),
        }
    }

    /// Drains the host, persisting the flag.
    ///
    /// Draining an already drained host updates the reason but keeps the
    /// original `since`: restarting the grace period would put VIPs that were
    /// already withdrawn back into the drain set. On a write error the drain
    /// still takes effect in memory (fail-safe) and the error says it will
    /// not survive a restart.
    pub fn drain(&mut self, reason: &str, now: SystemTime) -> Result<(), DrainError> {
        let since = self.state.as_ref().map_or(now, |d| d.since);
        self.state = Some(Drained {
            reason: reason.to_string(),
            since,
        });
        self.persist(self.state.as_ref())
    }

    /// Undrains the host, persisting the flag. On a write error the host
    /// stays drained (nothing changes) and the error is returned.
    pub fn undrain(&mut self) -> Result<(), DrainError> {
        self.persist(None)?;
        self.state = None;
        Ok(())
    }

    /// The current drain, `None` when undrained.
    pub fn state(&self) -> Option<&Drained> {
        self.state.as_ref()
    }

    /// True while drained.
    pub fn is_drained(&self) -> bool {
        self.state.is_some()
    }

    /// The path of the drain file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The gate's view of the drain, in monotonic time: `since` is placed as
    /// far before `now` as the wall clock says the drain is old. A `since` in
    /// the future (the wall clock stepped back) counts as "just now".
    pub fn gate_state(&self, wall_now: SystemTime, now: Instant) -> DrainState {
        match &self.state {
            None => DrainState::Undrained,
            Some(d) => {
                let age = wall_now.duration_since(d.since).unwrap_or_default();
                DrainState::Drained {
                    // An age beyond what `Instant` can go back to (boot time)
                    // means "long ago": the earliest representable instant
                    // is just as expired.
                    since: now.checked_sub(age).unwrap_or_else(|| earliest(now)),
                    reason: d.reason.clone(),
                }
            }
        }
    }

    fn persist(&self, state: Option<&Drained>) -> Result<(), DrainError> {
        let wire = match state {
            None => WireDrain {
                drained: false,
                reason: None,
                since: None,
            },
            Some(d) => WireDrain {
                drained: true,
                reason: Some(d.reason.clone()),
                since: Some(humantime::format_rfc3339_millis(d.since.max(UNIX_EPOCH)).to_string()),
            },
        };
        let mut body = serde_json::to_vec_pretty(&wire).map_err(|e| DrainError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        body.push(b'\n');
        crate::fsutil::write_atomic(&self.path, &body, FILE_MODE).map_err(|source| {
            DrainError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }
}

/// The instant furthest before `now` (by a power of two seconds) that
/// `Instant` can represent; bounded to 63 attempts.
fn earliest(now: Instant) -> Instant {
    (0..63u32)
        .rev()
        .find_map(|shift| now.checked_sub(std::time::Duration::from_secs(1u64 << shift)))
        .unwrap_or(now)
}

fn parse(bytes: &[u8]) -> Result<Option<Drained>, String> {
    let wire: WireDrain = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !wire.drained {
        return Ok(None);
    }
    let since = wire
        .since
        .as_deref()
        .ok_or_else(|| "\"drained\": true without \"since\"".to_string())?;
    let since = humantime::parse_rfc3339(since)
        .map_err(|e| format!("\"since\": {since:?} is not an RFC 3339 UTC time ({e})"))?;
    Ok(Some(Drained {
        reason: wire.reason.unwrap_or_default(),
        since,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn missing_file_is_undrained_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = DrainStore::load(dir.path()).unwrap();
        assert!(!s.is_drained());
        assert_eq!(s.state(), None);
        assert!(!dir.path().join(FILE_NAME).exists());
    }

    #[test]
    fn drain_survives_reload_with_reason_and_since() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DrainStore::load(dir.path()).unwrap();
        let since = t(0) + Duration::from_millis(123);
        s.drain("kernel upgrade", since).unwrap();
        let again = DrainStore::load(dir.path()).unwrap();
        assert_eq!(
            again.state(),
            Some(&Drained {
                reason: "kernel upgrade".into(),
                since
            })
        );
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(
            text.contains("\"since\": \"2027-01-15T08:00:00.123Z\""),
            "{text}"
        );
    }

    #[test]
    fn undrain_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DrainStore::load(dir.path()).unwrap();
        s.drain("x", t(0)).unwrap();
        s.undrain().unwrap();
        assert!(!s.is_drained());
        assert!(!DrainStore::load(dir.path()).unwrap().is_drained());
    }

    #[test]
    fn redrain_keeps_since_updates_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DrainStore::load(dir.path()).unwrap();
        s.drain("first", t(0)).unwrap();
        s.drain("second", t(100)).unwrap();
        let got = DrainStore::load(dir.path()).unwrap();
        assert_eq!(got.state().unwrap().since, t(0));
        assert_eq!(got.state().unwrap().reason, "second");
    }

    #[test]
    fn corrupt_files_fail_safe_to_drained() {
        let cases: &[(&str, &str)] = &[
            ("{not json", "key must be a string"),
            ("", "EOF while parsing"),
            (r#"{"drained": true}"#, "without \"since\""),
            (
                r#"{"drained": true, "since": "yesterday"}"#,
                "not an RFC 3339",
            ),
            (r#"{"drained": "yes"}"#, "invalid type"),
            (r#"{"reason": "x"}"#, "missing field `drained`"),
        ];
        for (body, detail) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(FILE_NAME);
            std::fs::write(&path, body).unwrap();
            let err = DrainStore::load(dir.path()).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{body}: {msg}");
            assert!(msg.contains(detail), "{body}: {msg}");
            assert!(msg.contains("treating the host as drained"), "{msg}");
            assert!(matches!(err.error, DrainError::Corrupt { .. }), "{body}");
            let store = err.store;
            assert!(store.is_drained(), "{body}");
            let d = store.state().unwrap();
            assert!(d.reason.contains("is corrupt"), "{}", d.reason);
            // since = the file's mtime.
            let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
            assert_eq!(d.since, mtime);
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            r#"{"drained": true, "reason": "r", "since": "2027-01-15T08:00:00Z", "by": "alice"}"#,
        )
        .unwrap();
        let s = DrainStore::load(dir.path()).unwrap();
        assert_eq!(s.state().unwrap().since, t(0));
    }

    #[test]
    fn undrain_repairs_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "garbage").unwrap();
        let mut s = DrainStore::load(dir.path()).unwrap_err().store;
        s.undrain().unwrap();
        assert!(!DrainStore::load(dir.path()).unwrap().is_drained());
    }

    #[test]
    fn unwritable_dir_drain_applies_in_memory_undrain_does_not() {
        if nix::unistd::geteuid().is_root() {
            // root ignores directory permissions; use a parent that is a file.
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("not-a-dir");
            std::fs::write(&file, "").unwrap();
            check_unwritable(&file);
        } else {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
            check_unwritable(dir.path());
        }
    }

    fn check_unwritable(dir: &Path) {
        let mut s = DrainStore {
            path: dir.join(FILE_NAME),
            state: None,
        };
        let err = s.drain("m", t(0)).unwrap_err();
        assert!(matches!(err, DrainError::Write { .. }), "{err}");
        assert!(
            s.is_drained(),
            "drain must apply in memory even if not persisted"
        );
        let err = s.undrain().unwrap_err();
        assert!(
            err.to_string().contains("cannot write drain state file"),
            "{err}"
        );
        assert!(s.is_drained(), "undrain must not apply when not persisted");
    }

    #[test]
    fn gate_state_carries_age_into_monotonic_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DrainStore::load(dir.path()).unwrap();
        let now = crate::clock::now();
        assert_eq!(s.gate_state(t(0), now), DrainState::Undrained);
        s.drain("m", t(0)).unwrap();
        // Ten seconds after the drain began (across a "restart": a fresh load).
        let s = DrainStore::load(dir.path()).unwrap();
        match s.gate_state(t(10), now) {
            DrainState::Drained { since, reason } => {
                assert_eq!(reason, "m");
                assert_eq!(now.duration_since(since), Duration::from_secs(10));
            }
            other => panic!("{other:?}"),
        }
        // Wall clock stepped back before the drain: counts as just begun.
        match s.gate_state(t(0) - Duration::from_secs(5), now) {
            DrainState::Drained { since, .. } => assert_eq!(since, now),
            other => panic!("{other:?}"),
        }
        // Older than the monotonic clock can express: clamps, stays in the past.
        match s.gate_state(t(0) + Duration::from_secs(1 << 50), now) {
            DrainState::Drained { since, .. } => {
                assert!(now.duration_since(since) > Duration::ZERO)
            }
            other => panic!("{other:?}"),
        }
    }
}
