//! An in-memory [`AddressOps`] for tests of code that drives a
//! [`super::VipManager`] (the manager's own unit tests, the daemon's).
//!
//! It behaves like the kernel where the executor cares: adds and deletes are
//! idempotent outcomes, an unknown interface is [`VipError::InterfaceNotFound`].
//! Every call is recorded, so a test can assert that something was *not*
//! touched, and single operations can be made to fail.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;

use super::{AddOutcome, AddressOps, DelOutcome, VipError};

/// One recorded call on a [`MemoryAddressOps`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `list(interface)`.
    List(String),
    /// `add(interface, address)`.
    Add(String, IpNet),
    /// `del(interface, address)`.
    Del(String, IpNet),
}

#[derive(Debug, Default)]
struct Inner {
    interfaces: BTreeMap<String, BTreeSet<IpNet>>,
    calls: Vec<Call>,
    failing: BTreeSet<IpNet>,
    hidden: BTreeSet<IpNet>,
}

/// Interfaces and their addresses, in memory.
#[derive(Debug, Default)]
pub struct MemoryAddressOps {
    inner: Mutex<Inner>,
}

impl MemoryAddressOps {
    /// Interfaces `names`, each without addresses.
    pub fn with_interfaces(names: &[&str]) -> Self {
        let ops = MemoryAddressOps::default();
        for n in names {
            ops.lock()
                .interfaces
                .insert((*n).to_string(), BTreeSet::new());
        }
        ops
    }

    /// Puts `address` on `interface` behind the executor's back (an operator's
    /// `ip addr add`). Creates the interface if needed.
    pub fn insert(&self, interface: &str, address: IpNet) {
        self.lock()
            .interfaces
            .entry(interface.to_string())
            .or_default()
            .insert(address);
    }

    /// Removes `address` from `interface` behind the executor's back.
    pub fn remove(&self, interface: &str, address: IpNet) {
        if let Some(set) = self.lock().interfaces.get_mut(interface) {
            set.remove(&address);
        }
    }

    /// The addresses on `interface` (empty if it does not exist).
    pub fn addresses(&self, interface: &str) -> BTreeSet<IpNet> {
        self.lock()
            .interfaces
            .get(interface)
            .cloned()
            .unwrap_or_default()
    }

    /// Makes every add and delete of `address` fail with `EPERM`.
    pub fn fail_on(&self, address: IpNet) {
        self.lock().failing.insert(address);
    }

    /// Leaves `address` out of every listing while it stays on the interface:
    /// simulates an address that appears between a listing and an add (an
    /// operator racing the agent).
    pub fn hide_from_list(&self, address: IpNet) {
        self.lock().hidden.insert(address);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Calls that change something (adds and deletes), in order.
    pub fn mutations(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| !matches!(c, Call::List(_)))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock already failed; the
        // data is still meaningful for the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn not_found(interface: &str) -> VipError {
    VipError::InterfaceNotFound {
        interface: interface.to_string(),
    }
}

fn refused(what: String) -> VipError {
    VipError::Netlink {
        what,
        source: std::io::Error::from_raw_os_error(nix::errno::Errno::EPERM as i32),
    }
}

impl AddressOps for MemoryAddressOps {
    async fn list(&self, interface: &str) -> Result<BTreeSet<IpNet>, VipError> {
        let mut inner = self.lock();
        inner.calls.push(Call::List(interface.to_string()));
        let hidden = inner.hidden.clone();
        let mut set = inner
            .interfaces
            .get(interface)
            .cloned()
            .ok_or_else(|| not_found(interface))?;
        set.retain(|a| !hidden.contains(a));
        Ok(set)
    }

    async fn add(&self, interface: &str, address: IpNet) -> Result<AddOutcome, VipError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Add(interface.to_string(), address));
        if inner.failing.contains(&address) {
            return Err(refused(format!("adding {address} to {interface}")));
        }
        let set = inner
            .interfaces
            .get_mut(interface)
            .ok_or_else(|| not_found(interface))?;
        Ok(if set.insert(address) {
            AddOutcome::Added
        } else {
            AddOutcome::AlreadyPresent
        })
    }

    async fn del(&self, interface: &str, address: IpNet) -> Result<DelOutcome, VipError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Del(interface.to_string(), address));
        if inner.failing.contains(&address) {
            return Err(refused(format!("deleting {address} from {interface}")));
        }
        let set = inner
            .interfaces
            .get_mut(interface)
            .ok_or_else(|| not_found(interface))?;
        Ok(if set.remove(&address) {
            DelOutcome::Removed
        } else {
            DelOutcome::NotPresent
        })
    }
}
