//! The bridge implementation of [`PodNetwork`]: one Linux bridge per node (or per engine
//! network) holding the subnet's gateway address, one veth pair per pod with its host end a port
//! of the bridge and its other end moved into the pod's network namespace as `eth0`, an address
//! from [`Ipam`], a default route via the gateway, loopback up. Routes to other nodes' pod
//! subnets go through [`BridgeNetwork::sync_routes`].

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use crate::ipam::{Ipam, gateway};
use crate::netlink::{Netlink, ROUTE_PROTOCOL, Route};
use crate::{Attachment, Error, PodNetwork, Result, sysctl};

/// The interface name a pod sees.
pub const POD_INTERFACE: &str = "eth0";

/// How a [`BridgeNetwork`] is set up.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The bridge's name (at most 15 bytes): distinct per agent when several share a host.
    pub bridge: String,
    /// The pod subnet (the node's podCIDR); the bridge holds its first address, the gateway.
    pub subnet: Ipv4Net,
    /// Where the leases live (created when missing).
    pub state_dir: PathBuf,
    /// The namespace that plays "the host" (the bridge and the veths' host ends live there):
    /// `None` for the caller's own; a bound namespace file in tests that simulate several hosts.
    pub host_netns: Option<PathBuf>,
}

impl BridgeConfig {
    /// A configuration for `bridge` over `subnet`, leases under `state_dir`, in the caller's
    /// namespace.
    pub fn new(bridge: impl Into<String>, subnet: Ipv4Net, state_dir: impl Into<PathBuf>) -> Self {
        BridgeConfig {
            bridge: bridge.into(),
            subnet,
            state_dir: state_dir.into(),
            host_netns: None,
        }
    }

    /// Plays the host in the namespace at `netns`.
    pub fn host_netns(mut self, netns: impl Into<PathBuf>) -> Self {
        self.host_netns = Some(netns.into());
        self
    }
}

/// A route to another node's pod subnet through that node's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    /// The other node's pod subnet (its podCIDR).
    pub pod_cidr: Ipv4Net,
    /// The other node's address (its InternalIP).
    pub node_ip: Ipv4Addr,
}

/// What [`BridgeNetwork::sync_routes`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteChanges {
    /// Routes added or replaced.
    pub added: Vec<PeerRoute>,
    /// Routes of ours removed (their node left or changed address).
    pub removed: Vec<Ipv4Net>,
}

/// Pods on a Linux bridge; see the module documentation.
#[derive(Debug)]
pub struct BridgeNetwork {
    config: BridgeConfig,
    ipam: Ipam,
    host: Mutex<Netlink>,
    bridge_index: u32,
}

/// Checks a Linux interface name: 1-15 bytes, no `/`, `:`, whitespace or control characters.
pub fn check_link_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(Error::Invalid {
            what: "link name",
            reason: format!("{name:?} must be 1-15 bytes without '/', ':' or spaces"),
        });
    }
    Ok(())
}

/// The host-side veth name of pod `id` on `bridge`: `bv` and 12 hex digits of a hash of both, so
/// that agents sharing a host never pick the same name.
pub fn host_veth_name(bridge: &str, id: &str) -> String {
    let digest = Sha256::digest(format!("{bridge}/{id}").as_bytes());
    format!("bv{}", &hex::encode(digest)[..12])
}

impl BridgeNetwork {
    /// Creates the bridge (or adopts it: an agent restart finds it there) with the gateway
    /// address, turns forwarding on in the host namespace, and opens the leases.
    pub fn new(config: BridgeConfig) -> Result<BridgeNetwork> {
        check_link_name(&config.bridge)?;
        let ipam = Ipam::open(config.state_dir.join("ipam"), config.subnet)?;
        let host = Netlink::open(config.host_netns.as_deref())?;
        let bridge_index = host.ensure_bridge(&config.bridge)?;
        let gw = Ipv4Net::new(gateway(ipam.subnet()), ipam.subnet().prefix_len())
            .expect("prefix of a valid subnet");
        host.add_address(bridge_index, gw)?;
        sysctl::enable_ip_forward(config.host_netns.as_deref())?;
        Ok(BridgeNetwork {
            config,
            ipam,
            host: Mutex::new(host),
            bridge_index,
        })
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.config.bridge
    }

    /// The pod subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.ipam.subnet()
    }

    /// The gateway address (on the bridge).
    pub fn gateway(&self) -> Ipv4Addr {
        self.ipam.gateway()
    }

    /// The leases.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The host-side veth name of pod `id`.
    pub fn host_veth(&self, id: &str) -> String {
        host_veth_name(&self.config.bridge, id)
    }

    fn host(&self) -> std::sync::MutexGuard<'_, Netlink> {
        self.host.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bridge's current ports (host-side veths), by name.
    pub fn ports(&self) -> Result<Vec<String>> {
        Ok(self
            .host()
            .links()?
            .into_iter()
            .filter(|l| l.controller == Some(self.bridge_index))
            .map(|l| l.name)
            .collect())
    }

    /// Tears down every pod whose id is not in `live` (leases and veths left by pods deleted
    /// while no agent ran); returns the ids torn down.
    pub fn retain(&self, live: &[&str]) -> Result<Vec<String>> {
        let mut gone: Vec<String> = self
            .ipam
            .leases()?
            .into_values()
            .filter(|id| !live.contains(&id.as_str()))
            .collect();
        gone.dedup();
        for id in &gone {
            self.teardown(id)?;
        }
        Ok(gone)
    }

    /// Makes the routes to other nodes' pod subnets those of `peers`: each through its node's
    /// address, skipping a node whose address is one of this host's own (several agents on one
    /// host: its bridge's connected route already reaches it) and this network's own subnet.
    /// Routes of ours (protocol [`ROUTE_PROTOCOL`], with a gateway) for other subnets go.
    pub fn sync_routes(&self, peers: &[PeerRoute]) -> Result<RouteChanges> {
        let host = self.host();
        let local = host.addresses()?;
        let mut desired: Vec<PeerRoute> = peers
            .iter()
            .filter(|p| p.pod_cidr.trunc() != self.subnet() && !local.contains(&p.node_ip))
            .copied()
            .collect();
        desired.sort();
        desired.dedup_by_key(|p| p.pod_cidr);
        let ours: Vec<Route> = host
            .routes()?
            .into_iter()
            .filter(|r| r.protocol == ROUTE_PROTOCOL && r.gateway.is_some())
            .collect();
        let mut changes = RouteChanges::default();
        for r in &ours {
            if !desired
                .iter()
                .any(|p| p.pod_cidr.trunc() == r.destination && Some(p.node_ip) == r.gateway)
            {
                host.delete_route(r)?;
                changes.removed.push(r.destination);
            }
        }
        for p in desired {
            if !ours
                .iter()
                .any(|r| p.pod_cidr.trunc() == r.destination && Some(p.node_ip) == r.gateway)
            {
                host.replace_route(p.pod_cidr.trunc(), Some(p.node_ip), None)?;
                changes.added.push(p);
            }
        }
        Ok(changes)
    }

    /// Removes what this network put on the host: every pod's veth and lease, its routes to
    /// other nodes, and the bridge (with its connected route). Forwarding stays on.
    pub fn destroy(self) -> Result<()> {
        self.retain(&[])?;
        self.sync_routes(&[])?;
        self.host().delete_link(&self.config.bridge)?;
        Ok(())
    }

    fn configure_pod(&self, netns: &Path, address: Ipv4Net) -> Result<()> {
        let gw = self.gateway();
        let pod = Netlink::open(Some(netns))?;
        if let Some(lo) = pod.link("lo")?
            && !lo.up
        {
            pod.set_up(lo.index)?;
        }
        let eth = pod
            .link(POD_INTERFACE)?
            .ok_or_else(|| Error::NoSuchLink(POD_INTERFACE.to_owned()))?;
        pod.add_address(eth.index, address)?;
        pod.set_up(eth.index)?;
        pod.replace_route(Ipv4Net::default(), Some(gw), Some(eth.index))
    }
}

impl PodNetwork for BridgeNetwork {
    fn setup(&self, netns: &Path, id: &str) -> Result<Attachment> {
        let ns = File::open(netns).map_err(Error::io("open network namespace", netns))?;
        let addr = self.ipam.allocate(id)?;
        let address = Ipv4Net::new(addr, self.subnet().prefix_len()).expect("valid prefix");
        let veth = self.host_veth(id);
        let made = (|| {
            let host = self.host();
            // A veth left by an earlier attempt (or an agent that died mid-setup) goes first.
            host.delete_link(&veth)?;
            let index = host.add_veth(&veth, POD_INTERFACE, ns.as_fd(), Some(self.bridge_index))?;
            host.set_hairpin(index)?;
            drop(host);
            self.configure_pod(netns, address)
        })();
        if let Err(e) = made {
            let _ = self.host().delete_link(&veth);
            let _ = self.ipam.release(id);
            return Err(e);
        }
        Ok(Attachment {
            interface: POD_INTERFACE.to_owned(),
            address,
            gateway: self.gateway(),
            host_interface: veth,
        })
    }

    fn teardown(&self, id: &str) -> Result<()> {
        self.host().delete_link(&self.host_veth(id))?;
        self.ipam.release(id)?;
        Ok(())
    }

    fn attachment(&self, id: &str) -> Result<Option<Attachment>> {
        Ok(self.ipam.get(id)?.map(|addr| Attachment {
            interface: POD_INTERFACE.to_owned(),
            address: Ipv4Net::new(addr, self.subnet().prefix_len()).expect("valid prefix"),
            gateway: self.gateway(),
            host_interface: self.host_veth(id),
        }))
    }
}
