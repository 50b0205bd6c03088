//! Berth's pod network: what a CNI bridge plugin with host-local IPAM does for Kubernetes, and
//! what Docker's bridge driver does for `docker run`, through netlink (rtnetlink), never by
//! running `ip`.
//!
//! - [`PodNetwork`] is the centre: `setup(netns, id)` gives the namespace at `netns` (a
//!   `/proc/PID/ns/net` file or a bound one) an interface and an address and returns them;
//!   `teardown(id)` takes them away; `attachment(id)` finds them again after a restart.
//! - [`BridgeNetwork`] implements it with a Linux bridge per node and a veth per pod;
//!   [`BridgeNetwork::sync_routes`] keeps routes to other nodes' pod subnets.
//! - [`Ipam`] leases a subnet's addresses, persisted under a state directory.
//! - [`AddressOnly`] leases addresses and touches no link: the fake for tests without root and
//!   for simulated nodes.
//! - [`Netlink`], [`netns`] and [`sysctl`] are the building blocks (links, addresses, routes; a
//!   namespace of our own; `/proc/sys` settings per namespace).
//!
//! # Multi-node design
//! Every node has a podCIDR (from the control plane) and a bridge holding its first address. A
//! pod's default route goes via that address; the host forwards (ip_forward=1). For every other
//! node, the host has a route `podCIDR via nodeIP`: across real hosts on one L2 segment that is
//! all it takes (as flannel's host-gw backend does). Several agents on one host each have their
//! own bridge (distinct names) in the host's namespace, so their subnets are connected routes of
//! the same table and no `via` route is added for a node whose address is local.
//!
//! ```no_run
//! use berth_net::{BridgeConfig, BridgeNetwork, PodNetwork};
//!
//! # fn main() -> berth_net::Result<()> {
//! let net = BridgeNetwork::new(BridgeConfig::new(
//!     "berth-n1",
//!     "10.244.1.0/24".parse().unwrap(),
//!     "/var/lib/berth-node/net",
//! ))?;
//! let pid = 4242; // the pod sandbox's pause process
//! let got = net.setup(format!("/proc/{pid}/ns/net").as_ref(), "pod-uid")?;
//! println!("pod address {} via {}", got.address, got.gateway);
//! net.teardown("pod-uid")?;
//! # Ok(())
//! # }
//! ```

mod bridge;
mod error;
pub mod ipam;
mod netlink;
pub mod netns;
pub mod sysctl;

use std::net::Ipv4Addr;
use std::path::Path;

pub use bridge::{
    BridgeConfig, BridgeNetwork, POD_INTERFACE, PeerRoute, RouteChanges, check_link_name,
    host_veth_name,
};
pub use error::{Error, Result};
pub use ipam::Ipam;
pub use ipnet::{self, Ipv4Net};
pub use netlink::{Link, Netlink, ROUTE_PROTOCOL, Route};

/// What a pod got from [`PodNetwork::setup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The interface inside the pod (`eth0`).
    pub interface: String,
    /// The pod's address with the subnet's prefix length.
    pub address: Ipv4Net,
    /// Its default gateway.
    pub gateway: Ipv4Addr,
    /// The interface's other end on the host (empty when there is none).
    pub host_interface: String,
}

/// Gives pods (network namespaces) a network; see the crate documentation.
///
/// Calls block (netlink round trips, an fsynced lease file): async callers use `spawn_blocking`.
pub trait PodNetwork: Send + Sync {
    /// Attaches the namespace at `netns` as `id` and returns what it got. Calling it again for
    /// the same id re-attaches with the same address; a failed setup leaves nothing behind.
    fn setup(&self, netns: &Path, id: &str) -> Result<Attachment>;
    /// Detaches `id`: its interface goes and its address is free again. Detaching an id that is
    /// not attached is not an error.
    fn teardown(&self, id: &str) -> Result<()>;
    /// What `id` got, when it is attached (from the persisted leases: works after a restart).
    fn attachment(&self, id: &str) -> Result<Option<Attachment>>;
}

/// A [`PodNetwork`] that only leases addresses: no link is made, no namespace touched. For tests
/// without root and for simulated nodes whose pods run no process.
#[derive(Debug, Clone)]
pub struct AddressOnly {
    ipam: Ipam,
}

impl AddressOnly {
    /// Leases from `subnet`, persisted under `state_dir`.
    pub fn new(subnet: Ipv4Net, state_dir: impl AsRef<Path>) -> Result<AddressOnly> {
        Ok(AddressOnly {
            ipam: Ipam::open(state_dir.as_ref().join("ipam"), subnet)?,
        })
    }

    fn attachment_of(&self, addr: Ipv4Addr) -> Attachment {
        Attachment {
            interface: POD_INTERFACE.to_owned(),
            address: Ipv4Net::new(addr, self.ipam.subnet().prefix_len()).expect("valid prefix"),
            gateway: self.ipam.gateway(),
            host_interface: String::new(),
        }
    }
}

impl PodNetwork for AddressOnly {
    fn setup(&self, _netns: &Path, id: &str) -> Result<Attachment> {
        Ok(self.attachment_of(self.ipam.allocate(id)?))
    }

    fn teardown(&self, id: &str) -> Result<()> {
        self.ipam.release(id).map(drop)
    }

    fn attachment(&self, id: &str) -> Result<Option<Attachment>> {
        Ok(self.ipam.get(id)?.map(|a| self.attachment_of(a)))
    }
}
