//! [`AddressOps`] over rtnetlink: the real kernel operations.
//!
//! One netlink socket per [`NetlinkAddressOps`]; its connection task runs on
//! the tokio runtime that created it. The interface index is resolved by name
//! on every call, so an interface that is recreated (new index) is followed.
//! The socket belongs to the network namespace of the thread that created it,
//! which is what the namespace tests rely on.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use nix::errno::Errno;

use super::{AddOutcome, AddressOps, DelOutcome, VipError};

/// Linux `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME: usize = 15;

/// Interface addresses through an rtnetlink socket.
#[derive(Debug, Clone)]
pub struct NetlinkAddressOps {
    handle: rtnetlink::Handle,
}

impl NetlinkAddressOps {
    /// Opens a netlink route socket and spawns its connection task.
    ///
    /// Must be called from within a tokio runtime (an error otherwise); the
    /// task lives on that runtime and ends when the last clone of this value
    /// is dropped.
    pub fn connect() -> Result<Self, VipError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| VipError::Netlink {
            what: "opening a netlink route socket".into(),
            source: std::io::Error::other(e),
        })?;
        let _entered = runtime.enter();
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| VipError::Netlink {
                what: "opening a netlink route socket".into(),
                source,
            })?;
        runtime.spawn(connection);
        Ok(NetlinkAddressOps { handle })
    }

    /// Wraps a handle whose connection task the caller already runs.
    pub fn from_handle(handle: rtnetlink::Handle) -> Self {
        NetlinkAddressOps { handle }
    }

    /// The index of `interface`, or [`VipError::InterfaceNotFound`].
    async fn index(&self, interface: &str) -> Result<u32, VipError> {
        let not_found = || VipError::InterfaceNotFound {
            interface: interface.to_string(),
        };
        // A name the kernel cannot hold cannot exist; asking would give a
        // less clear EINVAL.
        if interface.is_empty() || interface.len() > MAX_IFNAME {
            return Err(not_found());
        }
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(interface.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(not_found()),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Err(not_found()),
            Err(e) => Err(netlink_error(
                format!("looking up interface {interface}"),
                e,
            )),
        }
    }

    /// The kernel's messages for addresses on `index`, optionally only `address`.
    async fn dump(
        &self,
        index: u32,
        address: Option<IpNet>,
    ) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
        let mut req = self.handle.address().get().set_link_index_filter(index);
        if let Some(a) = address {
            req = req
                .set_address_filter(a.addr())
                .set_prefix_length_filter(a.prefix_len());
        }
        // Read the whole dump: dropping a half-read response would leave the
        // kernel's remaining messages to the connection task to discard.
        req.execute().try_collect().await
    }
}

impl AddressOps for NetlinkAddressOps {
    async fn list(&self, interface: &str) -> Result<BTreeSet<IpNet>, VipError> {
        let index = self.index(interface).await?;
        let msgs = self
            .dump(index, None)
            .await
            .map_err(|e| netlink_error(format!("listing addresses of {interface}"), e))?;
        Ok(msgs.iter().filter_map(prefix_of).collect())
    }

    async fn add(&self, interface: &str, address: IpNet) -> Result<AddOutcome, VipError> {
        let address = address.trunc();
        let index = self.index(interface).await?;
        let mut req = self
            .handle
            .address()
            .add(index, address.addr(), address.prefix_len());
        let msg = req.message_mut();
        // `ip addr add` sets no broadcast unless asked (`brd +`); rtnetlink's
        // builder adds one for IPv4 prefixes shorter than /31, which would
        // make the prefix's last address a local broadcast address.
        msg.attributes
            .retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
        if address.addr().is_ipv6() {
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(AddOutcome::Added),
            Err(e) if errno_of(&e) == Some(Errno::EEXIST) => Ok(AddOutcome::AlreadyPresent),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Err(VipError::InterfaceNotFound {
                interface: interface.to_string(),
            }),
            Err(e) => Err(netlink_error(format!("adding {address} to {interface}"), e)),
        }
    }

    async fn del(&self, interface: &str, address: IpNet) -> Result<DelOutcome, VipError> {
        let address = address.trunc();
        let what = || format!("deleting {address} from {interface}");
        let index = self.index(interface).await?;
        // RTM_DELADDR wants the kernel's own message for the address.
        let found = self
            .dump(index, Some(address))
            .await
            .map_err(|e| netlink_error(what(), e))?;
        let Some(msg) = found.into_iter().next() else {
            return Ok(DelOutcome::NotPresent);
        };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(DelOutcome::Removed),
            // Gone between the dump and the delete.
            Err(e) if matches!(errno_of(&e), Some(Errno::EADDRNOTAVAIL | Errno::ENOENT)) => {
                Ok(DelOutcome::NotPresent)
            }
            Err(e) => Err(netlink_error(what(), e)),
        }
    }
}

/// The prefix an address message describes: for IPv4 the local address
/// (`IFA_LOCAL`; `IFA_ADDRESS` is the peer on point-to-point links), for IPv6
/// `IFA_ADDRESS`.
fn prefix_of(msg: &AddressMessage) -> Option<IpNet> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    let ip: IpAddr = local.or(address)?;
    IpNet::new(ip, msg.header.prefix_len).ok()
}

/// The errno of a kernel NACK, if `e` is one.
fn errno_of(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => {
            Some(Errno::from_raw(m.raw_code().abs()))
        }
        _ => None,
    }
}

fn netlink_error(what: String, e: rtnetlink::Error) -> VipError {
    let source = match &e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    };
    VipError::Netlink { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::AddressFamily;

    fn msg(family: AddressFamily, len: u8, attrs: Vec<AddressAttribute>) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = family;
        m.header.prefix_len = len;
        m.attributes = attrs;
        m
    }

    #[test]
    fn connect_outside_a_runtime_is_an_error_not_a_panic() {
        let err = NetlinkAddressOps::connect().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("netlink: opening a netlink route socket: "),
            "{err}"
        );
    }

    #[test]
    fn prefix_prefers_local_for_ipv4() {
        let m = msg(
            AddressFamily::Inet,
            32,
            vec![
                AddressAttribute::Address("10.0.0.2".parse().unwrap()),
                AddressAttribute::Local("192.0.2.10".parse().unwrap()),
            ],
        );
        assert_eq!(prefix_of(&m), Some("192.0.2.10/32".parse().unwrap()));
        let v6 = msg(
            AddressFamily::Inet6,
            128,
            vec![AddressAttribute::Address("2001:db8::1".parse().unwrap())],
        );
        assert_eq!(prefix_of(&v6), Some("2001:db8::1/128".parse().unwrap()));
        assert_eq!(prefix_of(&msg(AddressFamily::Inet, 32, vec![])), None);
        // An impossible prefix length is skipped, not a panic.
        let bad = msg(
            AddressFamily::Inet,
            40,
            vec![AddressAttribute::Local("192.0.2.10".parse().unwrap())],
        );
        assert_eq!(prefix_of(&bad), None);
    }
}
