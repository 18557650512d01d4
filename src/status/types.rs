//! Wire types of the status socket, shared by the server (which serializes
//! them) and the CLI (which deserializes them).
//!
//! The key names are a contract (docs/status.md, "GET /v1/status"): scripts and dashboards read them.
//! Everything beyond the documented minimum is an *extra*: it carries
//! `#[serde(default)]` so that a CLI of one version can read the answer of an
//! agent of another, and the daemon can leave it at its default. Unknown keys
//! are ignored on input for the same reason.
//!
//! Timestamps travel as RFC 3339 UTC strings with millisecond precision
//! (`2026-11-05T10:00:00.123Z`); in Rust they are [`Timestamp`]s wrapping a
//! [`SystemTime`], so the daemon can store what its components already hold.
//!
//! Building a [`Snapshot`] from the components is the daemon's job; this
//! module holds data only.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, serialized as an RFC 3339 UTC string with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

/// The latest instant `humantime` can format (9999-12-31T23:59:59.999Z).
const MAX_FORMATTABLE: Duration = Duration::from_millis(253_402_300_799_999);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        Timestamp(crate::clock::wall())
    }

    /// The RFC 3339 form. Times before 1970 or after 9999 are clamped to
    /// those bounds instead of failing: a clock gone wrong must not break
    /// the status socket.
    pub fn to_rfc3339(&self) -> String {
        let clamped = match self.0.duration_since(UNIX_EPOCH) {
            Err(_) => UNIX_EPOCH,
            Ok(d) if d > MAX_FORMATTABLE => UNIX_EPOCH + MAX_FORMATTABLE,
            Ok(_) => self.0,
        };
        humantime::format_rfc3339_millis(clamped).to_string()
    }

    /// Parses an RFC 3339 UTC timestamp (`Z` or `+00:00`, any fraction).
    pub fn parse(s: &str) -> Result<Timestamp, humantime::TimestampError> {
        humantime::parse_rfc3339(s).map(Timestamp)
    }

    /// How long before `now` this was; zero when it lies in the future.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.0).unwrap_or(Duration::ZERO)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        Timestamp(t)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(|e| serde::de::Error::custom(format!("timestamp {s:?}: {e}")))
    }
}

/// Everything `GET /v1/status` answers: the state of this node's agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `node.name` from agent.toml.
    pub node: String,
    /// `node.group`: the load-balancer group whose document is applied.
    pub group: String,
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Revision of the document in force; `null` before the first apply.
    pub revision: Option<u64>,
    /// True while the node is drained (every VIP withdrawn on purpose).
    pub drained: bool,
    /// Extra: who drained, why and since when; present while drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainInfo>,
    /// The central API poller.
    pub source: SourceStatus,
    /// The HAProxy side: runtime commands, reloads, convergence.
    pub haproxy: HaproxyStatus,
    /// BIRD: include file and reconfigures.
    pub bird: BirdStatus,
    /// Every VIP of the document in force, with its services.
    pub vips: Vec<VipStatus>,
    /// Extra: when this agent process started.
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// Extra: when the daemon built this snapshot.
    #[serde(default)]
    pub updated_at: Option<Timestamp>,
}

impl Snapshot {
    /// An empty snapshot for `node` in `group` carrying this build's version;
    /// the daemon fills the rest as its components report.
    pub fn new(node: impl Into<String>, group: impl Into<String>) -> Snapshot {
        Snapshot {
            node: node.into(),
            group: group.into(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }
    }
}

/// Why and since when the node is drained.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainInfo {
    /// The operator's `--reason`.
    pub reason: String,
    /// When the drain was requested (it survives restarts).
    #[serde(default)]
    pub since: Option<Timestamp>,
    /// Who asked, e.g. `uid 0 (root)`.
    #[serde(default)]
    pub by: Option<String>,
    /// With a graceful drain (`bird.drain_variable`): when the VIPs leave
    /// the drain set and are withdrawn entirely.
    #[serde(default)]
    pub withdraw_at: Option<Timestamp>,
}

/// Health of the central-API poller, as the status socket shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// No poll has completed yet.
    #[default]
    Init,
    /// The last poll succeeded.
    Ok,
    /// The last poll failed.
    Error,
    /// Several polls in a row failed; the applied state may be outdated.
    Stale,
    /// A state this CLI does not know (sent by a newer agent).
    #[serde(other)]
    Unknown,
}

impl SourceState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Init => "init",
            SourceState::Ok => "ok",
            SourceState::Error => "error",
            SourceState::Stale => "stale",
            SourceState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for SourceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Poll outcomes since the agent started (counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollCounts {
    /// `200` answers carrying a valid document.
    #[serde(default)]
    pub ok: u64,
    /// `304` answers (and long-polls that expired unchanged).
    #[serde(default)]
    pub not_modified: u64,
    /// Failed polls: connect, timeout, 5xx, invalid document.
    #[serde(default)]
    pub error: u64,
}

/// The `source` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// `init`, `ok`, `error` or `stale`.
    pub state: SourceState,
    /// The configured URL (credentials masked by the source).
    pub url: String,
    /// When a poll last succeeded (200 or 304).
    pub last_success: Option<Timestamp>,
    /// Why the last poll failed; `null` after a success.
    pub error: Option<String>,
    /// Extra: failed polls in a row.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Extra: when a poll last completed, successfully or not.
    #[serde(default)]
    pub last_attempt: Option<Timestamp>,
    /// Extra: the newest revision the source accepted (may be ahead of the
    /// applied `revision`, or rejected).
    #[serde(default)]
    pub revision: Option<u64>,
    /// Extra: ETag of that document.
    #[serde(default)]
    pub etag: Option<String>,
    /// Extra: true while running from the cached last-known-good document.
    #[serde(default)]
    pub from_cache: bool,
    /// Extra: poll outcome counters (the `lb_agent_source_polls_total` metric).
    #[serde(default)]
    pub polls: PollCounts,
    /// Extra: valid documents ignored because their revision went backwards.
    #[serde(default)]
    pub ignored_older: u64,
    /// Extra, watch-based sources (etcd) only: endpoint, watch state, revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
}

/// The connection and watch of a watch-based source (`source.stream`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// The member talked to (`host:port`).
    pub endpoint: String,
    /// `connecting`, `listing`, `watching`, `disconnected` or `backoff`.
    pub watch_state: String,
    /// The newest etcd revision applied to the agent's copy of the keys
    /// (valid or not; `source.revision` is the newest accepted one).
    pub revision: Option<u64>,
    /// Full listings of the prefix.
    #[serde(default)]
    pub lists: u64,
    /// Watches canceled because their start revision was compacted.
    #[serde(default)]
    pub compactions: u64,
    /// Transactions applied from the watch.
    #[serde(default)]
    pub transactions: u64,
    /// Events applied from the watch.
    #[serde(default)]
    pub events: u64,
    /// The newest revision, when it was rejected.
    #[serde(default)]
    pub rejected_revision: Option<u64>,
    /// The etcd key at fault in it, when known.
    #[serde(default)]
    pub rejected_key: Option<String>,
    /// Store revisions validated by patching the last accepted state
    /// (only the changed pools re-validated).
    #[serde(default)]
    pub revisions_incremental: u64,
    /// Store revisions validated by assembling and parsing the whole document.
    #[serde(default)]
    pub revisions_full: u64,
}

/// A document refused as a whole (docs/safety.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// Its revision.
    pub revision: u64,
    /// Why (validation errors, removal ratio, `haproxy -c` output, failed reload).
    pub error: String,
    /// When it was refused.
    #[serde(default)]
    pub at: Option<Timestamp>,
}

/// The `haproxy` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HaproxyStatus {
    /// True when the last pass found HAProxy equal to the desired state.
    pub converged: bool,
    /// Confirmed reloads since the agent started.
    pub reloads: u64,
    /// Runtime-socket commands sent since the agent started.
    pub runtime_commands: u64,
    /// When the last confirmed reload happened.
    pub last_reload: Option<Timestamp>,
    /// The last pass's error; `null` when it succeeded.
    pub error: Option<String>,
    /// Extra: confirmed reloads by coarse reason (`structure`, `runtime_ops_limit`,
    /// `no_free_slot`, `convergence`, `unknown_config`, `manual`, ...);
    /// the label set of `lb_agent_reloads_total`.
    #[serde(default)]
    pub reloads_by_reason: BTreeMap<String, u64>,
    /// Extra: reloads that failed (no new worker, or `[failed: N]`).
    #[serde(default)]
    pub reload_failures: u64,
    /// Extra: runtime commands HAProxy refused.
    #[serde(default)]
    pub runtime_failures: u64,
    /// Extra: passes whose read-back disagreed with what was sent.
    #[serde(default)]
    pub convergence_failures: u64,
    /// Extra: reasons of the wanted reload (coalescing, backoff).
    #[serde(default)]
    pub pending_reload: Vec<String>,
    /// Extra: failed reload attempts in a row (0 after a confirmed reload).
    #[serde(default)]
    pub reload_attempts: u32,
    /// Extra: when the wanted reload is attempted next.
    #[serde(default)]
    pub next_reload_at: Option<Timestamp>,
    /// Extra: pid of the current worker.
    #[serde(default)]
    pub worker_pid: Option<u32>,
    /// Extra: old workers still finishing connections after reloads.
    #[serde(default)]
    pub old_workers: u32,
    /// Extra: when a pass last changed something.
    #[serde(default)]
    pub last_apply: Option<Timestamp>,
    /// Extra: how long that pass took, in seconds.
    #[serde(default)]
    pub last_apply_seconds: Option<f64>,
    /// Extra: the last document refused, while it is the newest one seen.
    #[serde(default)]
    pub rejected: Option<Rejected>,
    /// Extra: documents refused since the agent started.
    #[serde(default)]
    pub rejections: u64,
    /// Extra: per AZ-routed pool and zone, the usable servers and where the
    /// zone's requests go now (as of the last reconcile pass).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub az_routing: Vec<crate::plan::az::PoolRoutes>,
    /// Extra: fields of the document in force that the agent ignored
    /// (`pools[0].timeout: unknown field, ignored ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub document_warnings: Vec<String>,
    /// Extra: passes that read and planned only the pools a server change
    /// touched (docs/etcd.md, O(change) on the agent).
    #[serde(default)]
    pub scoped_passes: u64,
    /// Extra: the config file on disk lags the runtime state after a scoped
    /// pass; it follows within 10 s, and at stop.
    #[serde(default)]
    pub config_file_behind: bool,
}

/// The `bird` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BirdStatus {
    /// The last pass confirmed that BIRD runs the desired prefix sets.
    pub ok: bool,
    /// When BIRD last accepted a `configure`.
    pub last_reconfigure: Option<Timestamp>,
    /// Why the last pass failed; `null` after a success.
    pub error: Option<String>,
    /// Extra: `configure` commands BIRD accepted.
    #[serde(default)]
    pub reconfigures: u64,
    /// Extra: failed passes (BIRD unreachable, `configure` refused, effect not confirmed).
    #[serde(default)]
    pub failures: u64,
    /// Extra: when BIRD's sets were last confirmed equal to the desired ones.
    #[serde(default)]
    pub last_confirmed: Option<Timestamp>,
    /// Extra: announced prefixes no BGP protocol exports (a bird.conf problem).
    /// Meaningful only when `export_check` is `configured` or `discovered`.
    #[serde(default)]
    pub not_exported: Vec<String>,
    /// Extra: how the export check chose its protocols: `configured`
    /// (`[bird] export_protocols`), `discovered` (the BGP protocols up),
    /// `no_bgp_session_up` (nothing to confirm against) or `unknown` (the
    /// last pass failed, or none ran yet).
    #[serde(default)]
    pub export_check: String,
    /// Extra: the protocols the export check asked.
    #[serde(default)]
    pub export_protocols: Vec<String>,
    /// Extra: non-fatal notes (prefixes dropped from the include, ...).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One VIP and the services gating its announcement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    /// The prefix, e.g. `192.0.2.10/32`.
    pub address: String,
    /// True when the prefix is in the advertise set BIRD runs.
    pub announced: bool,
    /// Why it is not announced (`drained`, `service git_ssh unhealthy: ...`,
    /// `address missing on lo`, ...); `null` when announced.
    pub reason: Option<String>,
    /// The frontends bound inside this prefix.
    pub services: Vec<ServiceStatus>,
    /// Extra: when `announced` last changed.
    #[serde(default)]
    pub since: Option<Timestamp>,
    /// Extra: true while kept announced after a restart until the first
    /// round of checks decides (adoption).
    #[serde(default)]
    pub adopted: bool,
    /// Extra: true while in the graceful drain set.
    #[serde(default)]
    pub draining: bool,
    /// Extra: true while in the demote set (`on_unhealthy = "demote"`):
    /// announced with a longer AS path because a service is unhealthy.
    #[serde(default)]
    pub demoted: bool,
    /// Extra: whether a BGP protocol exports the prefix BIRD holds in one
    /// of its sets (`bird.export_check`); `null` when the prefix is in no
    /// set or the check could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported: Option<bool>,
}

/// One service (frontend) behind a VIP, with its rise/fall state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The frontend's name.
    pub name: String,
    /// The hysteresis verdict (rise/fall applied).
    pub healthy: bool,
    /// Passing checks in a row.
    pub ok_streak: u32,
    /// Failing checks in a row.
    pub fail_streak: u32,
    /// Duration of the last check in milliseconds; `null` before the first.
    pub last_latency_ms: Option<f64>,
    /// The last check's error; `null` when it passed.
    pub error: Option<String>,
    /// Extra: the check kind (`tcp`, `http`, `tls`, `exec`).
    #[serde(default)]
    pub check: Option<String>,
    /// Extra: what is checked (`192.0.2.10:443`, a command, ...).
    #[serde(default)]
    pub target: Option<String>,
    /// Extra: when the last check finished.
    #[serde(default)]
    pub last_check: Option<Timestamp>,
    /// Extra: when `healthy` last changed.
    #[serde(default)]
    pub since: Option<Timestamp>,
    /// Extra: true while new behind an announced VIP and still having its
    /// chance (not installed yet, not yet risen): it does not withdraw the VIP.
    #[serde(default)]
    pub pending: bool,
    /// Extra: why it does not count as healthy (`not installed: reload
    /// failed: ...`, `HAProxy does not list frontend x`, the check's error).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Body of `POST /v1/drain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    /// Why the node is drained (shown in the status and the logs).
    pub reason: String,
}

/// Body of every successful mutation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OkBody {
    /// Always true.
    pub ok: bool,
    /// What was done: `drain`, `undrain` or `reconcile`.
    pub action: String,
}

/// Body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis_and_round_trip() {
        let t = Timestamp(UNIX_EPOCH + Duration::from_millis(1_793_000_000_123));
        let s = t.to_rfc3339();
        assert_eq!(s, "2026-10-26T07:33:20.123Z");
        assert_eq!(Timestamp::parse(&s).unwrap(), t);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-10-26T07:33:20.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn out_of_range_times_are_clamped_not_panicking() {
        let before = Timestamp(UNIX_EPOCH - Duration::from_secs(10));
        assert_eq!(before.to_rfc3339(), "1970-01-01T00:00:00.000Z");
        let far = Timestamp(UNIX_EPOCH + Duration::from_secs(400_000_000_000));
        assert_eq!(far.to_rfc3339(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn bad_timestamps_are_errors() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00+02:00",
            "Tue, 15 Nov 1994 08:12:31 GMT",
        ] {
            assert!(
                serde_json::from_str::<Timestamp>(&format!("{bad:?}")).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn unknown_source_state_and_unknown_keys_are_tolerated() {
        let json = r#"{"state":"paused","url":"u","last_success":null,"error":null,"new_key":1}"#;
        let s: SourceStatus = serde_json::from_str(json).unwrap();
        assert_eq!(s.state, SourceState::Unknown);
        assert_eq!(s.polls, PollCounts::default());
    }

    #[test]
    fn minimal_spec_snapshot_parses_with_extras_defaulted() {
        let json = r#"{
          "node": "lb1", "group": "blue", "version": "0.1.0",
          "revision": 1042, "drained": false,
          "source": { "state": "ok", "url": "x", "last_success": "2026-01-01T00:00:00Z", "error": null },
          "haproxy": { "converged": true, "reloads": 3, "runtime_commands": 120,
                       "last_reload": "2026-01-01T00:00:00Z", "error": null },
          "bird": { "ok": true, "last_reconfigure": "2026-01-01T00:00:00Z", "error": null },
          "vips": [
            { "address": "192.0.2.10/32", "announced": true, "reason": null,
              "services": [ { "name": "www_https", "healthy": true, "ok_streak": 12,
                              "fail_streak": 0, "last_latency_ms": 0.8, "error": null } ] }
          ]
        }"#;
        let s: Snapshot = serde_json::from_str(json).unwrap();
        assert_eq!(s.revision, Some(1042));
        assert_eq!(s.source.state, SourceState::Ok);
        assert_eq!(s.vips[0].services[0].last_latency_ms, Some(0.8));
        assert!(s.drain.is_none());
        // And back: the serialized form parses to the same value.
        let again: Snapshot = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn drain_body_requires_reason_and_refuses_unknown_fields() {
        assert!(serde_json::from_str::<DrainBody>(r#"{}"#).is_err());
        assert!(serde_json::from_str::<DrainBody>(r#"{"reason":"x","ttl":5}"#).is_err());
        assert_eq!(
            serde_json::from_str::<DrainBody>(r#"{"reason":"x"}"#)
                .unwrap()
                .reason,
            "x"
        );
    }
}
