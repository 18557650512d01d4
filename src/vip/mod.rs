//! VIP addresses on the local interface (docs/config.md `[vip]`, docs/gating.md ordering, docs/safety.md).
//!
//! HAProxy can only bind a VIP that is a local address, and the gate only
//! announces a VIP whose address is present, so the agent puts each desired
//! VIP on `vip.interface` (`lo` by default, as a /32 or /128) before HAProxy
//! binds it. Removing addresses is where this module can hurt: an address an
//! operator configured by hand may carry traffic the agent knows nothing
//! about. So the agent remembers which addresses *it* added, in
//! `<state_dir>/owned-vips.json`, and never removes any other (docs/safety.md).
//!
//! - [`AddressOps`]: the three kernel operations (list, add, delete), behind a
//!   trait so the executor can be tested without netlink.
//! - [`NetlinkAddressOps`]: the real implementation over `rtnetlink`.
//! - [`MemoryAddressOps`]: an in-memory implementation for tests.
//! - [`VipManager`]: the executor: [`VipManager::ensure`] adds what is
//!   missing and records ownership, [`VipManager::release`] removes only owned
//!   addresses, [`VipManager::present`] observes for the gate.
//!   A corrupt ownership file makes it fail closed ([`VipOpenError`]).
//! - [`host`]: the host's own addresses and routes, observed for VIP
//!   validation ([`HostValidator`], used by the document parser).
//!
//! What "the address of a VIP" is: the VIP prefix itself, network address and
//! prefix length, exactly like `ip addr add <network>/<len> dev <interface>`
//! (no broadcast, scope global, and for IPv6 `nodad`). A /32 or /128 is the
//! usual case. For a shorter prefix, e.g. `198.51.100.0/24` on `lo`, the
//! kernel makes the whole prefix local, so HAProxy can bind any address in it.
//! `nodad` keeps an IPv6 VIP usable at once: `lo` does no duplicate address
//! detection anyway, but on any other interface DAD would hold the address
//! tentative for a second or more, and an anycast address that *is*
//! configured on other hosts of a shared segment would fail DAD for good.

#![warn(missing_docs)]

pub mod host;
mod manager;
mod memory;
mod netlink;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;

use ipnet::IpNet;

pub use host::{HostObserver, HostValidator};
pub use manager::{EnsureReport, ReleaseOutcome, VipManager, VipOpenError, OWNED_FILE_NAME};
pub use memory::{Call, MemoryAddressOps};
pub use netlink::NetlinkAddressOps;

/// Result of adding an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// The address was added by this call.
    Added,
    /// The address was already there (`EEXIST`); nothing changed, and
    /// whoever put it there owns it.
    AlreadyPresent,
}

/// Result of deleting an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelOutcome {
    /// The address was removed by this call.
    Removed,
    /// The address was not there; nothing changed.
    NotPresent,
}

/// Errors of address operations and of the ownership file.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// No interface of that name exists (in this network namespace).
    #[error("interface {interface} not found")]
    InterfaceNotFound {
        /// The interface name asked for.
        interface: String,
    },
    /// The kernel (or the netlink socket) refused or failed an operation.
    #[error("netlink: {what}: {source}")]
    Netlink {
        /// What was attempted, e.g. `adding 192.0.2.10/32 to lo`.
        what: String,
        /// The errno or transport error.
        source: std::io::Error,
    },
    /// The ownership file exists but could not be read.
    #[error("cannot read VIP ownership file {path}: {source}")]
    OwnershipRead {
        /// The ownership file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The ownership file's content is invalid.
    #[error(
        "VIP ownership file {path} is corrupt: {detail}; move it aside to start \
         over (the agent then owns, and will remove, no address it did not add afterwards)"
    )]
    OwnershipCorrupt {
        /// The ownership file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The manager is fail-closed because the ownership file could not be
    /// trusted at start (see [`VipOpenError`]).
    #[error(
        "VIP ownership file {path} cannot be trusted ({reason}); VIP addresses are \
         left alone and no VIP counts as present until it is fixed or moved aside"
    )]
    OwnershipUntrusted {
        /// The ownership file.
        path: PathBuf,
        /// Why (the original read or parse error).
        reason: String,
    },
    /// Writing the ownership file failed; the previous file is intact.
    #[error("cannot write VIP ownership file {path}: {source}")]
    OwnershipWrite {
        /// The ownership file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The kernel operations on interface addresses the executor needs.
///
/// Implementations are idempotent: adding a present address and deleting a
/// missing one are outcomes, not errors. Addresses are exact prefixes
/// (address and prefix length); see the module docs for what is added.
pub trait AddressOps: Send + Sync {
    /// Every address configured on `interface` (including ones the agent did
    /// not add, such as `127.0.0.1/8` on `lo`).
    fn list(
        &self,
        interface: &str,
    ) -> impl Future<Output = Result<BTreeSet<IpNet>, VipError>> + Send;

    /// Adds `address` to `interface`.
    fn add(
        &self,
        interface: &str,
        address: IpNet,
    ) -> impl Future<Output = Result<AddOutcome, VipError>> + Send;

    /// Deletes `address` (same address and prefix length) from `interface`.
    fn del(
        &self,
        interface: &str,
        address: IpNet,
    ) -> impl Future<Output = Result<DelOutcome, VipError>> + Send;
}
