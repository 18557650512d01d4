//! The scoped pass: a document that changes only some pools' servers, over
//! a HAProxy that ran the previous document exactly, is observed (`show
//! servers state <backend>`), planned and applied for those pools alone
//! ([`crate::plan::scope`], decided by [`super::policy::scope`]). The config
//! file, which a reload or a restart of HAProxy reads, follows a little
//! later ([`super::policy::scope::persist_at`]): writing it means rendering
//! and checking the whole config, O(config) per change otherwise. Anything
//! unexpected (HAProxy restarted, a socket error, a command that does not
//! take) falls back to the full pass in the same pass.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::ops::HaproxyOps;
use super::policy::scope::persist_at;
use super::{Candidate, Reconciler};
use crate::model::{DesiredState, Name};
use crate::plan::scope::scope_backends;
use crate::plan::{plan_scoped, PlanOptions, Structure};

/// A document the running HAProxy ran exactly at the end of a pass, and
/// its structure (the same for every server-scoped change of it).
#[derive(Debug, Clone)]
pub(super) struct Verified {
    pub desired: Arc<DesiredState>,
    pub structure: Arc<Structure>,
}

/// The config file lags the runtime state since `first`; the last scoped
/// change was at `last`.
#[derive(Debug, Clone, Copy)]
pub(super) struct PersistLag {
    pub first: Instant,
    pub last: Instant,
}

impl PersistLag {
    /// When to write the file.
    pub fn due(&self) -> Instant {
        persist_at(self.first, self.last)
    }
}

impl<H: HaproxyOps> Reconciler<H> {
    /// Runs the scoped pass over `target` for `pools`; false when it fell
    /// back (then the caller runs the full pass).
    pub(super) async fn scoped_pass(
        &mut self,
        target: &Candidate,
        pools: &BTreeSet<Name>,
        started: Instant,
    ) -> bool {
        let Some(v) = self.verified.take() else {
            return false;
        };
        self.observe_identity().await;
        if !self.loaded_resolved {
            return false;
        }
        let d = &target.desired;
        let backends = scope_backends(d, pools);
        let opts = PlanOptions {
            max_runtime_ops: self.s.haproxy.max_runtime_ops,
        };
        let mut applied = false;
        let observed = loop {
            let observed = match self.ops.observe_backends(&backends).await {
                Ok(o) => o,
                Err(e) => {
                    debug!(error = %e, "scoped observation failed; full pass");
                    return false;
                }
            };
            let p = plan_scoped(
                d,
                &v.structure,
                self.loaded.as_ref(),
                &observed,
                pools,
                opts,
            );
            if !p.reload.is_empty() || (applied && !p.commands.is_empty()) {
                // The full pass owns reloads and repairs.
                return false;
            }
            if p.commands.is_empty() {
                self.cleanup(&p.cleanup).await;
                break observed;
            }
            match self.apply(&p).await {
                Some(r) if r.failed.is_empty() => applied = true,
                Some(_) => return false,
                None => return false,
            }
        };
        self.merge_routes(d, pools, &observed);
        let now = Instant::now();
        let first = self.persist_lag.map_or(now, |l| l.first);
        self.persist_lag = Some(PersistLag { first, last: now });
        self.update(|st| {
            st.scoped_passes += 1;
            st.config_file_behind = true;
        });
        self.verified = Some(Verified {
            desired: d.clone(),
            structure: v.structure,
        });
        debug!(
            pools = pools.len(),
            backends = backends.len(),
            "scoped pass"
        );
        self.converged(target, started, true);
        true
    }

    /// The AZ routes of the scoped pools, from their fresh observation; the
    /// other pools keep theirs.
    fn merge_routes(
        &self,
        d: &DesiredState,
        pools: &BTreeSet<Name>,
        observed: &crate::model::observed::ObservedServers,
    ) {
        let fresh: Vec<_> = crate::plan::az::routes(d, observed)
            .into_iter()
            .filter(|r| pools.iter().any(|p| p.as_str() == r.pool))
            .collect();
        if fresh.is_empty() {
            return;
        }
        self.update(|st| {
            for r in fresh {
                match st.az_routing.iter_mut().find(|o| o.pool == r.pool) {
                    Some(o) => *o = r,
                    None => st.az_routing.push(r),
                }
            }
        });
    }

    /// Writes the config file a scoped pass left behind.
    pub(super) async fn persist_lagging(&mut self) {
        if self.persist_lag.take().is_none() {
            return;
        }
        let Some(target) = self.applied.clone() else {
            return;
        };
        match self.ops.persist(&target.desired, true).await {
            Ok(wrote) => {
                debug!(wrote, "config file caught up with the runtime state");
                self.update(|st| st.config_file_behind = false);
            }
            Err(e) => {
                warn!(error = %e, "the applied document no longer renders a valid config");
                self.update(|st| {
                    st.converged = false;
                    st.error = Some(e.to_string());
                });
            }
        }
    }

    /// Best-effort `del server` of removed servers.
    pub(super) async fn cleanup(&mut self, cmds: &[crate::plan::Command]) {
        if cmds.is_empty() {
            return;
        }
        if let Ok(r) = self.ops.apply(cmds).await {
            debug!(
                deleted = r.ok,
                deferred = r.soft.len(),
                "removed servers cleaned up"
            );
        }
    }
}
