//! Conversions from the components' own status structs to the wire
//! sections, so the daemon assembles a [`Snapshot`](super::Snapshot) by
//! field, not by hand-copying counters (and every daemon build maps them the
//! same way, which keeps `/v1/status` and `/metrics` consistent).
//!
//! The health/gate side has no struct to convert yet; the daemon fills
//! [`VipStatus`](super::types::VipStatus) itself.

use super::types::{
    BirdStatus, HaproxyStatus, PollCounts, Rejected, SourceState, SourceStatus, Timestamp,
};

impl From<crate::source::SourceState> for SourceState {
    fn from(s: crate::source::SourceState) -> SourceState {
        use crate::source::SourceState as S;
        match s {
            S::Init => SourceState::Init,
            S::Ok => SourceState::Ok,
            S::Error => SourceState::Error,
            S::Stale => SourceState::Stale,
        }
    }
}

impl From<&crate::source::SourceStatus> for SourceStatus {
    fn from(s: &crate::source::SourceStatus) -> SourceStatus {
        SourceStatus {
            state: s.state.into(),
            url: s.url.clone(),
            last_success: s.last_success.map(Timestamp),
            error: s.error.clone(),
            consecutive_failures: s.consecutive_failures,
            last_attempt: s.last_attempt.map(Timestamp),
            revision: s.revision,
            etag: s.etag.clone(),
            from_cache: s.from_cache,
            polls: PollCounts {
                ok: s.polls_ok,
                not_modified: s.polls_not_modified,
                error: s.polls_error,
            },
            ignored_older: s.ignored_older,
            stream: s.stream.as_ref().map(|t| super::types::StreamStatus {
                endpoint: t.endpoint.clone(),
                watch_state: t.watch_state.clone(),
                revision: t.revision,
                lists: t.lists,
                compactions: t.compactions,
                transactions: t.transactions,
                events: t.events,
                rejected_revision: t.rejected_revision,
                rejected_key: t.rejected_key.clone(),
                revisions_incremental: t.revisions_incremental,
                revisions_full: t.revisions_full,
            }),
        }
    }
}

impl From<&crate::reconcile::HaproxyStatus> for HaproxyStatus {
    fn from(h: &crate::reconcile::HaproxyStatus) -> HaproxyStatus {
        HaproxyStatus {
            converged: h.converged,
            reloads: h.reloads,
            runtime_commands: h.runtime_commands,
            last_reload: h.last_reload.map(Timestamp),
            error: h.error.clone(),
            reloads_by_reason: h.reloads_by_reason.clone(),
            reload_failures: h.reload_failures,
            runtime_failures: h.runtime_failures,
            convergence_failures: h.convergence_failures,
            pending_reload: h.pending_reload.clone(),
            reload_attempts: h.reload_attempts,
            next_reload_at: h.next_reload_at.map(Timestamp),
            worker_pid: h.worker_pid,
            old_workers: u32::try_from(h.old_workers).unwrap_or(u32::MAX),
            last_apply: h.last_apply.map(Timestamp),
            last_apply_seconds: h.last_apply_seconds,
            rejected: h.rejected.as_ref().map(|r| Rejected {
                revision: r.revision,
                error: r.error.clone(),
                at: None,
            }),
            rejections: h.rejections,
            az_routing: h.az_routing.clone(),
            document_warnings: h.document_warnings.clone(),
            scoped_passes: h.scoped_passes,
            config_file_behind: h.config_file_behind,
        }
    }
}

impl From<&crate::bird::publisher::BirdStatus> for BirdStatus {
    fn from(b: &crate::bird::publisher::BirdStatus) -> BirdStatus {
        BirdStatus {
            ok: b.ok,
            last_reconfigure: b.last_reconfigure.map(Timestamp),
            error: b.error.clone(),
            reconfigures: b.reconfigures,
            failures: b.failures,
            last_confirmed: b.last_confirmed.map(Timestamp),
            not_exported: b.not_exported.iter().map(ToString::to_string).collect(),
            export_check: b.export_scope.as_str().to_string(),
            export_protocols: b.export_scope.protocols().to_vec(),
            warnings: b.warnings.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn component_statuses_map_field_by_field() {
        let t = UNIX_EPOCH + Duration::from_secs(1_793_000_000);
        let src = crate::source::SourceStatus {
            state: crate::source::SourceState::Stale,
            url: "https://api/x".into(),
            last_success: Some(t),
            error: Some("timeout".into()),
            consecutive_failures: 3,
            polls_ok: 1,
            polls_not_modified: 2,
            polls_error: 3,
            ..Default::default()
        };
        let w = SourceStatus::from(&src);
        assert_eq!(w.state, SourceState::Stale);
        assert_eq!(w.last_success, Some(Timestamp(t)));
        assert_eq!(
            w.polls,
            PollCounts {
                ok: 1,
                not_modified: 2,
                error: 3
            }
        );
        assert_eq!(w.consecutive_failures, 3);

        let h = crate::reconcile::HaproxyStatus {
            converged: true,
            reloads: 4,
            runtime_commands: 9,
            old_workers: 2,
            pending_reload: vec!["new pool".into()],
            rejected: Some(crate::reconcile::Rejection {
                revision: 7,
                error: "bad".into(),
            }),
            ..Default::default()
        };
        let w = HaproxyStatus::from(&h);
        assert_eq!(
            (w.converged, w.reloads, w.runtime_commands, w.old_workers),
            (true, 4, 9, 2)
        );
        assert_eq!(
            w.rejected.map(|r| (r.revision, r.error)),
            Some((7, "bad".to_string()))
        );

        let b = crate::bird::publisher::BirdStatus {
            ok: true,
            reconfigures: 5,
            failures: 1,
            not_exported: ["192.0.2.10/32".parse().unwrap()].into_iter().collect(),
            export_scope: crate::bird::exports::ExportScope::Discovered(vec!["tor1".into()]),
            ..Default::default()
        };
        let w = BirdStatus::from(&b);
        assert_eq!((w.ok, w.reconfigures, w.failures), (true, 5, 1));
        assert_eq!(w.not_exported, vec!["192.0.2.10/32".to_string()]);
        assert_eq!(
            (w.export_check.as_str(), w.export_protocols),
            ("discovered", vec!["tor1".to_string()])
        );
        let w = BirdStatus::from(&crate::bird::publisher::BirdStatus::default());
        assert_eq!(w.export_check, "unknown");
    }
}
