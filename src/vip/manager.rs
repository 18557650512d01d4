//! [`VipManager`]: the executor that puts VIP addresses on the interface and
//! takes off only the ones it put there.
//!
//! Ownership is the safety mechanism (docs/safety.md: never remove an address the
//! agent did not add). An address counts as owned only when an add by this
//! agent returned [`AddOutcome::Added`]; an address that was already there
//! (`EEXIST`) belongs to whoever put it there, even if the agent wants it too.
//! Ownership is persisted in `<state_dir>/owned-vips.json` (atomic writes) so
//! a restarted agent can still clean up after itself, and it is *forgotten*
//! as soon as the agent observes the address gone from the interface (an
//! operator removed it, or the host rebooted: addresses on `lo` do not survive
//! a reboot but the state directory does). Without that, an address an
//! operator later added by hand would be mistaken for the agent's.
//!
//! The manager never decides anything: the daemon passes the desired set to
//! [`VipManager::ensure`], and calls [`VipManager::release`] for each address
//! the gate has withdrawn and BIRD has confirmed gone (docs/gating.md, "Ordering of addresses and announcements").
//!
//! A corrupt or unreadable ownership file must never turn into "owns
//! nothing, carry on": the gate depends on the manager (an address must be
//! present before its VIP is announced), and a task that gave up on the file
//! left BIRD announcing with nobody gating (issue 14). So
//! [`VipManager::open`] then returns a [`VipOpenError`] carrying a manager
//! in *fail-closed* mode, the way `DrainStore::load` does for the drain
//! flag: it touches no address, [`VipManager::present`] reports the error
//! (so no VIP counts as present and the gate withdraws every one), and the
//! file is left as it is for the operator. Each [`VipManager::ensure`]
//! re-reads the file; once it is fixed or moved aside the manager works
//! normally again, without a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{AddOutcome, AddressOps, DelOutcome, VipError};
use crate::config::VipConfig;

/// File name of the ownership record inside `state_dir`.
pub const OWNED_FILE_NAME: &str = "owned-vips.json";

/// The ownership file is not secret; operators may read it.
const FILE_MODE: u32 = 0o644;

/// What [`VipManager::ensure`] did, per address.
#[derive(Debug, Default)]
pub struct EnsureReport {
    /// Desired addresses this call added (now owned).
    pub added: BTreeSet<IpNet>,
    /// Desired addresses that were already on the interface (owned or not).
    pub present: BTreeSet<IpNet>,
    /// Desired addresses that are missing and stay missing because
    /// `manage = false`.
    pub missing_unmanaged: BTreeSet<IpNet>,
    /// Desired addresses whose add failed, with the error.
    pub failed: BTreeMap<IpNet, VipError>,
    /// Owned addresses no longer on the interface; ownership was dropped.
    pub forgotten: BTreeSet<IpNet>,
    /// The ownership file could not be written (retried on the next call).
    pub persist_error: Option<VipError>,
}

impl EnsureReport {
    /// True when every desired address is on the interface and ownership is
    /// persisted.
    pub fn is_complete(&self) -> bool {
        self.missing_unmanaged.is_empty() && self.failed.is_empty() && self.persist_error.is_none()
    }
}

/// What [`VipManager::release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The agent owned the address and removed it.
    Removed,
    /// The agent owned the address but it was already gone; ownership dropped.
    AlreadyGone,
    /// The agent does not own the address (an operator's, or never added):
    /// nothing was touched.
    NotOwned,
    /// `manage = false`: nothing is ever removed.
    NotManaged,
}

/// On-disk form of the ownership record. Keyed by interface so a change of
/// `vip.interface` neither loses nor misapplies older ownership.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WireOwned {
    version: u32,
    owned: BTreeMap<String, BTreeSet<IpNet>>,
}

const WIRE_VERSION: u32 = 1;

/// Adds desired VIP addresses to `vip.interface` and removes only those it added.
#[derive(Debug)]
pub struct VipManager<A> {
    /// The kernel operations (netlink in production).
    ops: A,
    /// `[vip] interface`.
    interface: String,
    /// `[vip] manage`; when false the manager only observes.
    manage: bool,
    /// `<state_dir>/owned-vips.json`.
    path: PathBuf,
    /// Addresses the agent added, per interface; only `interface`'s entry is
    /// ever changed.
    owned: BTreeMap<String, BTreeSet<IpNet>>,
    /// The file is behind memory (a write failed); written on the next call.
    dirty: bool,
    /// Fail-closed: why the ownership file cannot be trusted. While set the
    /// manager touches no address and reports no address present.
    untrusted: Option<String>,
}

/// [`VipManager::open`] could not trust the ownership file: `manager` is
/// in fail-closed mode (see the module docs) and is what the caller must
/// continue with; `error` says what is wrong and how to start over.
#[derive(Debug, thiserror::Error)]
#[error("{error}; every VIP stays withdrawn and no address is added or removed until the file is fixed or moved aside")]
pub struct VipOpenError<A: std::fmt::Debug> {
    /// What was wrong with the file.
    #[source]
    pub error: VipError,
    /// The fail-closed manager to continue with (boxed: it is large next to
    /// the error).
    pub manager: Box<VipManager<A>>,
}

/// Reads an ownership file: addresses the agent added, per interface. A
/// missing file means the agent owns nothing.
pub(crate) fn read_owned(path: &Path) -> Result<BTreeMap<String, BTreeSet<IpNet>>, VipError> {
    let bytes = match crate::fsutil::read_optional(path) {
        Ok(None) => return Ok(BTreeMap::new()),
        Ok(Some(bytes)) => bytes,
        Err(source) => {
            return Err(VipError::OwnershipRead {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let wire: WireOwned =
        serde_json::from_slice(&bytes).map_err(|e| VipError::OwnershipCorrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if wire.version != WIRE_VERSION {
        return Err(VipError::OwnershipCorrupt {
            path: path.to_path_buf(),
            detail: format!(
                "version {} (this agent writes version {WIRE_VERSION})",
                wire.version
            ),
        });
    }
    Ok(wire.owned)
}

impl<A: AddressOps + std::fmt::Debug> VipManager<A> {
    /// Creates the manager and loads ownership from `state_dir`.
    ///
    /// A missing file means the agent owns nothing. An unreadable or corrupt
    /// file is a [`VipOpenError`] carrying a fail-closed manager: guessing
    /// could only make the agent remove an address it did not add (or forget
    /// ones it did), and the operator is better placed to judge; the error
    /// says how to start over.
    pub fn open(ops: A, config: &VipConfig, state_dir: &Path) -> Result<Self, VipOpenError<A>> {
        let path = state_dir.join(OWNED_FILE_NAME);
        let (owned, untrusted) = match read_owned(&path) {
            Ok(owned) => (owned, None),
            Err(e) => (BTreeMap::new(), Some(e)),
        };
        let manager = VipManager {
            ops,
            interface: config.interface.clone(),
            manage: config.manage,
            path,
            owned,
            dirty: false,
            untrusted: untrusted.as_ref().map(ToString::to_string),
        };
        match untrusted {
            None => Ok(manager),
            Some(error) => Err(VipOpenError {
                error,
                manager: Box::new(manager),
            }),
        }
    }
}

impl<A: AddressOps> VipManager<A> {
    /// The ownership problem that keeps the manager fail-closed, if any.
    pub fn fail_closed(&self) -> Option<&str> {
        self.untrusted.as_deref()
    }

    /// The error every operation returns while fail-closed.
    fn untrusted_error(&self) -> Option<VipError> {
        self.untrusted
            .as_ref()
            .map(|reason| VipError::OwnershipUntrusted {
                path: self.path.clone(),
                reason: reason.clone(),
            })
    }

    /// Leaves fail-closed mode when the file reads cleanly again (fixed,
    /// or moved aside: then the agent owns nothing).
    fn retry_untrusted(&mut self) {
        if self.untrusted.is_none() {
            return;
        }
        match read_owned(&self.path) {
            Ok(owned) => {
                tracing::info!(file = %self.path.display(), "VIP ownership file readable again; managing VIP addresses");
                self.owned = owned;
                self.untrusted = None;
            }
            Err(e) => self.untrusted = Some(e.to_string()),
        }
    }

    /// The interface VIPs live on.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Whether the manager may add and remove addresses (`[vip] manage`).
    pub fn manages(&self) -> bool {
        self.manage
    }

    /// The kernel operations (tests inspect a fake through this).
    pub fn ops(&self) -> &A {
        &self.ops
    }

    /// The addresses on the interface the agent owns.
    pub fn owned(&self) -> BTreeSet<IpNet> {
        self.owned.get(&self.interface).cloned().unwrap_or_default()
    }

    /// Every address on the interface, owned or not: the gate's "address
    /// present" input. A VIP is present when its exact prefix is in the set.
    ///
    /// While fail-closed this is an error, so that no VIP counts as present
    /// and the gate withdraws every one.
    pub async fn present(&self) -> Result<BTreeSet<IpNet>, VipError> {
        if let Some(e) = self.untrusted_error() {
            return Err(e);
        }
        self.ops.list(&self.interface).await
    }

    /// Makes every address in `desired` present on the interface.
    ///
    /// Call it before HAProxy is given binds on a new VIP (docs/gating.md, ordering: add the
    /// address, let HAProxy bind, check, then announce). Only adds: addresses
    /// no longer desired are removed by [`Self::release`], after withdrawal.
    /// Each address is attempted independently; the report says what happened
    /// to each. Fails as a whole only when the interface cannot be listed
    /// (e.g. [`VipError::InterfaceNotFound`]). With `manage = false` it only
    /// observes: nothing is added and no file is written.
    ///
    /// While fail-closed it first re-reads the ownership file; if that still
    /// fails it does nothing and returns the error.
    pub async fn ensure(&mut self, desired: &BTreeSet<IpNet>) -> Result<EnsureReport, VipError> {
        self.retry_untrusted();
        if let Some(e) = self.untrusted_error() {
            return Err(e);
        }
        // What the kernel holds is the network address (see the module docs);
        // compare and record in that form.
        let desired: BTreeSet<IpNet> = desired.iter().map(IpNet::trunc).collect();
        let on_interface = self.ops.list(&self.interface).await?;
        let mut report = EnsureReport {
            present: desired.intersection(&on_interface).copied().collect(),
            ..EnsureReport::default()
        };
        let missing: BTreeSet<IpNet> = desired.difference(&on_interface).copied().collect();
        if !self.manage {
            report.missing_unmanaged = missing;
            return Ok(report);
        }

        let mut changed = false;
        let owned = self.owned.entry(self.interface.clone()).or_default();
        report.forgotten = owned.difference(&on_interface).copied().collect();
        if !report.forgotten.is_empty() {
            owned.retain(|a| on_interface.contains(a));
            changed = true;
        }

        for address in missing {
            match self.ops.add(&self.interface, address).await {
                Ok(AddOutcome::Added) => {
                    owned.insert(address);
                    changed = true;
                    report.added.insert(address);
                }
                // Appeared since the listing (an operator, a racing tool):
                // present, and not ours.
                Ok(AddOutcome::AlreadyPresent) => {
                    report.present.insert(address);
                }
                Err(e) => {
                    report.failed.insert(address, e);
                }
            }
        }
        if changed || self.dirty {
            report.persist_error = self.persist().err();
        }
        Ok(report)
    }

    /// The owned addresses that are not in `desired`: what the daemon should
    /// [`Self::release`] once their withdrawal is confirmed.
    pub fn releasable(&self, desired: &BTreeSet<IpNet>) -> BTreeSet<IpNet> {
        self.owned().difference(desired).copied().collect()
    }

    /// Removes `address` from the interface if, and only if, the agent added it.
    ///
    /// **Contract (docs/gating.md, "Ordering of addresses and announcements"):** call this only after the VIP has been
    /// withdrawn from BIRD *and the withdrawal is confirmed* (the publisher
    /// observed BIRD no longer exporting it). Removing the address of a VIP
    /// that is still announced blackholes the flows ECMP still sends here.
    ///
    /// An address the agent does not own (an operator's, or one that was
    /// already present when the agent wanted it) is never removed:
    /// [`ReleaseOutcome::NotOwned`]. With `manage = false` nothing is removed.
    /// On a delete error the address stays owned, so a later call retries.
    /// If the ownership file cannot be written after a removal, the removal
    /// stands, the error is logged, and the write is retried on the next call.
    pub async fn release(&mut self, address: IpNet) -> Result<ReleaseOutcome, VipError> {
        let address = address.trunc();
        if !self.manage {
            return Ok(ReleaseOutcome::NotManaged);
        }
        if let Some(e) = self.untrusted_error() {
            return Err(e);
        }
        if !self.owned().contains(&address) {
            return Ok(ReleaseOutcome::NotOwned);
        }
        let outcome = match self.ops.del(&self.interface, address).await? {
            DelOutcome::Removed => ReleaseOutcome::Removed,
            DelOutcome::NotPresent => ReleaseOutcome::AlreadyGone,
        };
        if let Some(owned) = self.owned.get_mut(&self.interface) {
            owned.remove(&address);
        }
        if let Err(error) = self.persist() {
            tracing::warn!(%error, vip = %address, "VIP released but ownership not persisted; will retry");
        }
        Ok(outcome)
    }

    /// Writes the ownership file; marks it dirty on failure.
    fn persist(&mut self) -> Result<(), VipError> {
        let wire = WireOwned {
            version: WIRE_VERSION,
            owned: self
                .owned
                .iter()
                .filter(|(_, set)| !set.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let result = serde_json::to_vec_pretty(&wire)
            .map_err(std::io::Error::other)
            .and_then(|mut body| {
                body.push(b'\n');
                crate::fsutil::write_atomic(&self.path, &body, FILE_MODE)
            })
            .map_err(|source| VipError::OwnershipWrite {
                path: self.path.clone(),
                source,
            });
        self.dirty = result.is_err();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Call, MemoryAddressOps};
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn set(items: &[&str]) -> BTreeSet<IpNet> {
        items.iter().map(|s| net(s)).collect()
    }

    fn cfg(manage: bool) -> VipConfig {
        iface_cfg("lo", manage)
    }

    fn iface_cfg(interface: &str, manage: bool) -> VipConfig {
        let mut c = crate::config::parse_str("", "agent.toml").unwrap().vip;
        c.interface = interface.into();
        c.manage = manage;
        c
    }

    const A: &str = "192.0.2.10/32";
    const B: &str = "2001:db8:10::10/128";
    const OP: &str = "192.0.2.99/32";

    fn lo() -> MemoryAddressOps {
        let ops = MemoryAddressOps::with_interfaces(&["lo"]);
        ops.insert("lo", net("127.0.0.1/8"));
        ops
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn ensure_adds_missing_and_owns_only_what_it_added() {
        let dir = tempfile::tempdir().unwrap();
        let ops = lo();
        ops.insert("lo", net(OP));
        let mut m = VipManager::open(ops, &cfg(true), dir.path()).unwrap();
        let r = block_on(m.ensure(&set(&[A, B, OP]))).unwrap();
        assert_eq!(r.added, set(&[A, B]));
        assert_eq!(r.present, set(&[OP]));
        assert!(r.is_complete(), "{r:?}");
        assert_eq!(m.owned(), set(&[A, B]));
        assert_eq!(
            m.ops().mutations(),
            vec![
                Call::Add("lo".into(), net(A)),
                Call::Add("lo".into(), net(B))
            ]
        );
        // Second pass: nothing to do, nothing written.
        let r = block_on(m.ensure(&set(&[A, B, OP]))).unwrap();
        assert!(r.added.is_empty());
        assert_eq!(r.present, set(&[A, B, OP]));
        assert_eq!(m.ops().mutations().len(), 2);
    }

    #[test]
    fn ownership_survives_reopen_and_release_respects_it() {
        let dir = tempfile::tempdir().unwrap();
        let ops = lo();
        ops.insert("lo", net(OP));
        let mut m = VipManager::open(ops, &cfg(true), dir.path()).unwrap();
        block_on(m.ensure(&set(&[A, OP]))).unwrap();
        let VipManager { ops, .. } = m;

        let mut m = VipManager::open(ops, &cfg(true), dir.path()).unwrap();
        assert_eq!(m.owned(), set(&[A]));
        assert_eq!(m.releasable(&BTreeSet::new()), set(&[A]));
        assert_eq!(m.releasable(&set(&[A])), BTreeSet::new());
        assert_eq!(
            block_on(m.release(net(OP))).unwrap(),
            ReleaseOutcome::NotOwned
        );
        assert_eq!(
            block_on(m.release(net(A))).unwrap(),
            ReleaseOutcome::Removed
        );
        assert_eq!(m.ops().addresses("lo"), set(&["127.0.0.1/8", OP]));
        assert_eq!(
            m.ops().mutations().last(),
            Some(&Call::Del("lo".into(), net(A)))
        );
        assert!(!m
            .ops()
            .mutations()
            .contains(&Call::Del("lo".into(), net(OP))));
        // Released once: a second release is NotOwned, not a delete.
        assert_eq!(
            block_on(m.release(net(A))).unwrap(),
            ReleaseOutcome::NotOwned
        );
        let VipManager { ops, .. } = m;
        let m = VipManager::open(ops, &cfg(true), dir.path()).unwrap();
        assert_eq!(m.owned(), BTreeSet::new());
    }

    #[test]
    fn address_appearing_before_the_add_is_not_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let ops = lo();
        ops.insert("lo", net(OP));
        ops.hide_from_list(net(OP));
        let mut m = VipManager::open(ops, &cfg(true), dir.path()).unwrap();
        let r = block_on(m.ensure(&set(&[OP]))).unwrap();
        assert_eq!(m.ops().mutations(), vec![Call::Add("lo".into(), net(OP))]);
        assert!(r.added.is_empty());
        assert_eq!(r.present, set(&[OP]));
        assert_eq!(m.owned(), BTreeSet::new());
        assert_eq!(
            block_on(m.release(net(OP))).unwrap(),
            ReleaseOutcome::NotOwned
        );
    }

    #[test]
    fn host_bits_are_normalised_to_the_network_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = VipManager::open(lo(), &cfg(true), dir.path()).unwrap();
        let r = block_on(m.ensure(&set(&["198.51.100.7/24"]))).unwrap();
        assert_eq!(r.added, set(&["198.51.100.0/24"]));
        assert_eq!(m.owned(), set(&["198.51.100.0/24"]));
        let r = block_on(m.ensure(&set(&["198.51.100.7/24"]))).unwrap();
        assert_eq!(r.present, set(&["198.51.100.0/24"]));
        assert!(r.forgotten.is_empty() && r.added.is_empty(), "{r:?}");
        assert_eq!(
            block_on(m.release(net("198.51.100.7/24"))).unwrap(),
            ReleaseOutcome::Removed
        );
    }

    #[test]
    fn vanished_owned_address_is_forgotten_not_reclaimed() {
        // Reboot: the file says we own A, the interface lacks it, then an
        // operator adds A by hand. The agent must not remove it.
        let dir = tempfile::tempdir().unwrap();
        let mut m = VipManager::open(lo(), &cfg(true), dir.path()).unwrap();
        block_on(m.ensure(&set(&[A]))).unwrap();
        m.ops().remove("lo", net(A));
        let r = block_on(m.ensure(&BTreeSet::new())).unwrap();
        assert_eq!(r.forgotten, set(&[A]));
        assert_eq!(m.owned(), BTreeSet::new());
        m.ops().insert("lo", net(A));
        assert_eq!(
            block_on(m.release(net(A))).unwrap(),
            ReleaseOutcome::NotOwned
        );
        assert!(m.ops().addresses("lo").contains(&net(A)));
    }

    #[test]
    fn release_of_owned_but_gone_address_drops_ownership() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = VipManager::open(lo(), &cfg(true), dir.path()).unwrap();
        block_on(m.ensure(&set(&[A]))).unwrap();
        m.ops().remove("lo", net(A));
        assert_eq!(
            block_on(m.release(net(A))).unwrap(),
            ReleaseOutcome::AlreadyGone
        );
        assert_eq!(m.owned(), BTreeSet::new());
    }

    #[test]
    fn unmanaged_observes_only() {
        let dir = tempfile::tempdir().unwrap();
        // Ownership from an earlier managed run.
        let mut m = VipManager::open(lo(), &cfg(true), dir.path()).unwrap();
        block_on(m.ensure(&set(&[A]))).unwrap();
        let VipManager { ops, .. } = m;
        let file = std::fs::read(dir.path().join(OWNED_FILE_NAME)).unwrap();
        let before = ops.calls().len();

        let mut m = VipManager::open(ops, &cfg(false), dir.path()).unwrap();
        let r = block_on(m.ensure(&set(&[A, B]))).unwrap();
        assert_eq!(r.missing_unmanaged, set(&[B]));
        assert_eq!(r.present, set(&[A]));
        assert!(!r.is_complete());
        assert_eq!(
            block_on(m.release(net(A))).unwrap(),
            ReleaseOutcome::NotManaged
        );
        let calls = &m.ops().calls()[before..];
        assert_eq!(calls, &[Call::List("lo".into())]);
        assert_eq!(
            std::fs::read(dir.path().join(OWNED_FILE_NAME)).unwrap(),
            file
        );
    }

    #[test]
    fn failed_add_is_reported_per_address_and_not_owned() {
        let dir = tempfile::tempdir().unwrap();
        let ops = lo();
        ops.fail_on(net(A));
        let mut m = VipManager::open(ops, &cfg(true), dir.path()).unwrap();
        let r = block_on(m.ensure(&set(&[A, B]))).unwrap();
        assert_eq!(r.added, set(&[B]));
        let err = r.failed.get(&net(A)).unwrap().to_string();
        assert!(err.contains("adding 192.0.2.10/32 to lo"), "{err}");
        assert!(err.contains("Operation not permitted"), "{err}");
        assert_eq!(m.owned(), set(&[B]));
    }

    #[test]
    fn failed_delete_keeps_ownership_for_retry() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = VipManager::open(lo(), &cfg(true), dir.path()).unwrap();
        block_on(m.ensure(&set(&[A]))).unwrap();
        m.ops().fail_on(net(A));
        assert!(block_on(m.release(net(A))).is_err());
        assert_eq!(m.owned(), set(&[A]));
    }

    #[test]
    fn missing_interface_fails_ensure_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let c = iface_cfg("vip0", true);
        let mut m = VipManager::open(lo(), &c, dir.path()).unwrap();
        let err = block_on(m.ensure(&set(&[A]))).unwrap_err();
        assert_eq!(err.to_string(), "interface vip0 not found");
        assert!(block_on(m.present()).is_err());
    }

    #[test]
    fn ownership_of_other_interfaces_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ops = MemoryAddressOps::with_interfaces(&["lo", "vip0"]);
        let c0 = iface_cfg("vip0", true);
        let mut m = VipManager::open(ops, &c0, dir.path()).unwrap();
        block_on(m.ensure(&set(&[A]))).unwrap();
        let VipManager { ops, .. } = m;
        // Interface changed to lo: vip0's ownership is neither used nor lost.
        let mut m = VipManager::open(ops, &cfg(true), dir.path()).unwrap();
        assert_eq!(m.owned(), BTreeSet::new());
        block_on(m.ensure(&set(&[B]))).unwrap();
        assert_eq!(
            block_on(m.release(net(A))).unwrap(),
            ReleaseOutcome::NotOwned
        );
        let VipManager { ops, .. } = m;
        let m = VipManager::open(ops, &c0, dir.path()).unwrap();
        assert_eq!(m.owned(), set(&[A]));
    }

    #[test]
    fn corrupt_ownership_file_is_an_error_naming_it() {
        for body in [
            "{",
            r#"{"version": 2, "owned": {}}"#,
            r#"{"version": 1, "owned": {"lo": ["nope"]}}"#,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(OWNED_FILE_NAME);
            std::fs::write(&path, body).unwrap();
            let err = VipManager::open(lo(), &cfg(true), dir.path()).unwrap_err();
            assert!(
                matches!(err.error, VipError::OwnershipCorrupt { .. }),
                "{body}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("move it aside"), "{msg}");
            assert!(msg.contains("every VIP stays withdrawn"), "{msg}");
            assert!(err.manager.fail_closed().is_some());
        }
    }

    /// Issue 14: a corrupt owned-vips.json used to end the anycast task
    /// (`?`), leaving BIRD announcing with nobody gating. Now the manager
    /// carries on fail-closed: no address is touched, nothing counts as
    /// present (so the gate withdraws every VIP), the file is left for the
    /// operator; once it is moved aside, the next `ensure` works normally.
    #[test]
    fn corrupt_ownership_file_keeps_the_manager_fail_closed_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(OWNED_FILE_NAME);
        std::fs::write(&path, "{ garbage").unwrap();
        let ops = lo();
        ops.insert("lo", net(A)); // added by an earlier run, ownership unknown now
        let mut m = *VipManager::open(ops, &cfg(true), dir.path())
            .unwrap_err()
            .manager;
        let reason = m.fail_closed().unwrap().to_string();
        assert!(reason.contains("is corrupt"), "{reason}");

        let present = block_on(m.present()).unwrap_err();
        assert!(
            matches!(present, VipError::OwnershipUntrusted { .. }),
            "{present}"
        );
        assert!(
            present.to_string().contains(&path.display().to_string()),
            "{present}"
        );
        let ensured = block_on(m.ensure(&set(&[A, B]))).unwrap_err();
        assert!(
            matches!(ensured, VipError::OwnershipUntrusted { .. }),
            "{ensured}"
        );
        assert!(block_on(m.release(net(A))).is_err());
        assert!(m.releasable(&BTreeSet::new()).is_empty());
        // Nothing was added or removed, and the evidence is kept.
        assert!(m.ops().mutations().is_empty(), "{:?}", m.ops().mutations());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ garbage");

        // The operator moves the file aside: the manager recovers by itself.
        std::fs::rename(&path, dir.path().join("owned-vips.json.broken")).unwrap();
        let r = block_on(m.ensure(&set(&[A, B]))).unwrap();
        assert!(m.fail_closed().is_none());
        assert_eq!(r.added, set(&[B]));
        assert_eq!(r.present, set(&[A]));
        // A was there before: not ours, never removed.
        assert_eq!(m.owned(), set(&[B]));
        assert!(block_on(m.present()).unwrap().contains(&net(A)));
    }

    #[test]
    fn persist_failure_is_reported_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        // A state "directory" that is a file: every write fails, even as root.
        let bogus = dir.path().join("file");
        std::fs::write(&bogus, "").unwrap();
        let mut m = VipManager::open(lo(), &cfg(true), dir.path()).unwrap();
        m.path = bogus.join(OWNED_FILE_NAME);
        let r = block_on(m.ensure(&set(&[A]))).unwrap();
        assert_eq!(r.added, set(&[A]));
        assert!(matches!(
            r.persist_error,
            Some(VipError::OwnershipWrite { .. })
        ));
        // Memory still knows it added A.
        assert_eq!(m.owned(), set(&[A]));
        // Fixed disk: the next ensure writes even though nothing changed.
        m.path = dir.path().join(OWNED_FILE_NAME);
        let r = block_on(m.ensure(&set(&[A]))).unwrap();
        assert!(r.is_complete(), "{r:?}");
        let reopened = VipManager::open(lo(), &cfg(true), dir.path()).unwrap();
        assert_eq!(reopened.owned(), set(&[A]));
    }
}
