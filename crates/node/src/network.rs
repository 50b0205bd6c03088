//! The pod network of a node agent, on berth-net: once the control plane has given this Node a
//! pod subnet (`spec.podCIDR`, from the node IPAM controller), the node gets a bridge of its own
//! (`bn` + a hash of the node name, so several agents share a host) and each pod sandbox gets a
//! veth into its network namespace with an address from that subnet, a default route via the
//! bridge, and its `status.podIP`. Routes to other nodes' pod subnets (through their InternalIP)
//! follow the Node watch. Leases live under `<root>/net`, so an agent restart finds the
//! addresses of the pods it adopts, and the pods it drops are torn down.
//!
//! A node that has no pod subnet (a cluster without the node IPAM controller) runs its pods as
//! before: in a network namespace with loopback only.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use berth_net::{BridgeConfig, BridgeNetwork, Ipv4Net, PeerRoute, PodNetwork};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};

use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::host::Host;

/// How long a sandbox waits for the first Node list to tell whether this node has a subnet.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
enum State {
    /// The Node watch has not listed yet.
    #[default]
    Unknown,
    /// This Node has no pod subnet: pods get loopback only.
    NoSubnet,
    /// The bridge network of this node.
    Ready(Arc<BridgeNetwork>),
}

/// A node's pod network; [`Host`] holds one.
#[derive(Debug)]
pub struct NodeNetwork {
    config: NodeConfig,
    state: Mutex<State>,
    changed: Condvar,
}

/// The bridge name of node `name`: `bn` and 11 hex digits of a hash of the name.
pub fn bridge_name(node: &str) -> String {
    format!("bn{}", &berth_net::host_veth_name("node", node)[2..13])
}

impl NodeNetwork {
    /// The network of the node `config` describes; it starts unconfigured.
    pub fn new(config: &NodeConfig) -> NodeNetwork {
        NodeNetwork {
            config: config.clone(),
            state: Mutex::new(State::Unknown),
            changed: Condvar::new(),
        }
    }

    fn set(&self, state: State) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.changed.notify_all();
    }

    /// The bridge network, waiting (a little) for the first Node list.
    fn ready(&self) -> Option<Arc<BridgeNetwork>> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, FIRST_LIST_WAIT, |s| matches!(s, State::Unknown))
            .unwrap_or_else(|p| p.into_inner());
        match &*guard {
            State::Ready(net) => Some(net.clone()),
            _ => None,
        }
    }

    /// Gives the sandbox `pid` of pod `uid` its network (nothing when the node has no subnet).
    /// Blocking.
    pub fn attach(&self, uid: &str, pid: i32) -> Result<()> {
        let Some(net) = self.ready() else {
            return Ok(());
        };
        let got = net
            .setup(format!("/proc/{pid}/ns/net").as_ref(), uid)
            .map_err(|e| Error::Start {
                what: "pod network".into(),
                message: crate::shim::error_chain(&e),
            })?;
        tracing::debug!(uid, address = %got.address, "pod network attached");
        Ok(())
    }

    /// Takes pod `uid`'s network away (its veth, its address). Blocking.
    pub fn detach(&self, uid: &str) {
        let net = match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Ready(net) => net.clone(),
            _ => return,
        };
        if let Err(e) = net.teardown(uid) {
            tracing::warn!(uid, error = %e, "pod network teardown failed");
        }
    }

    /// Pod `uid`'s address, while it has one.
    pub fn pod_ip(&self, uid: &str) -> Option<String> {
        let net = match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Ready(net) => net.clone(),
            _ => return None,
        };
        net.attachment(uid)
            .ok()
            .flatten()
            .map(|a| a.address.addr().to_string())
    }

    /// Configures the bridge for `subnet` (once; a changed subnet is refused by the leases),
    /// and tears down pods no longer on disk.
    fn configure(&self, host: &Host, subnet: Ipv4Net) -> Result<Arc<BridgeNetwork>> {
        if let State::Ready(net) = &*self.state.lock().unwrap_or_else(|p| p.into_inner())
            && net.subnet() == subnet
        {
            return Ok(net.clone());
        }
        let net = BridgeNetwork::new(BridgeConfig::new(
            bridge_name(&self.config.name),
            subnet,
            self.config.root.join("net"),
        ))
        .map_err(|e| Error::Start {
            what: "pod network".into(),
            message: crate::shim::error_chain(&e),
        })?;
        let on_disk: Vec<String> = host.pods_on_disk().into_iter().map(|p| p.uid).collect();
        let live: Vec<&str> = on_disk.iter().map(String::as_str).collect();
        if let Ok(gone) = net.retain(&live)
            && !gone.is_empty()
        {
            tracing::info!(?gone, "released the addresses of pods that are gone");
        }
        let net = Arc::new(net);
        self.set(State::Ready(net.clone()));
        tracing::info!(bridge = net.bridge(), %subnet, "pod network ready");
        Ok(net)
    }
}

/// What the watch knows of one Node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    pod_cidr: Option<Ipv4Net>,
    address: Option<Ipv4Addr>,
}

fn peer(node: &Node) -> Peer {
    let pod_cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .and_then(|c| c.parse().ok());
    let address = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .and_then(|a| a.address.parse().ok());
    Peer { pod_cidr, address }
}

/// Watches the Nodes: this node's subnet configures the network; the others' subnets and
/// addresses become routes. Runs until the watch ends.
pub async fn run(client: kube::Client, host: Arc<Host>) {
    let me = host.config.name.clone();
    let stream =
        watcher::watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut nodes: BTreeMap<String, Peer> = BTreeMap::new();
    let mut initial: BTreeMap<String, Peer> = BTreeMap::new();
    let mut listed = false;
    let mut routed: Option<Vec<PeerRoute>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => initial.clear(),
            Ok(Event::InitApply(n)) => {
                initial.insert(n.name_any(), peer(&n));
            }
            Ok(Event::InitDone) => {
                nodes = std::mem::take(&mut initial);
                listed = true;
            }
            Ok(Event::Apply(n)) => {
                nodes.insert(n.name_any(), peer(&n));
            }
            Ok(Event::Delete(n)) => {
                nodes.remove(&n.name_any());
            }
            Err(e) => {
                tracing::warn!(error = %e, "node watch failed; retrying");
                continue;
            }
        }
        if !listed {
            continue;
        }
        let Some(subnet) = nodes.get(&me).and_then(|p| p.pod_cidr) else {
            if matches!(
                *host.network.state.lock().unwrap_or_else(|p| p.into_inner()),
                State::Unknown
            ) {
                host.network.set(State::NoSubnet);
            }
            continue;
        };
        let peers: Vec<PeerRoute> = nodes
            .iter()
            .filter(|(name, _)| **name != me)
            .filter_map(|(_, p)| {
                Some(PeerRoute {
                    pod_cidr: p.pod_cidr?,
                    node_ip: p.address?,
                })
            })
            .collect();
        if routed.as_ref() == Some(&peers) {
            continue;
        }
        let h = host.clone();
        let want = peers.clone();
        let done = tokio::task::spawn_blocking(move || -> Result<()> {
            let net = h.network.configure(&h, subnet)?;
            let changes = net.sync_routes(&want).map_err(|e| Error::Start {
                what: "routes to other nodes' pods".into(),
                message: crate::shim::error_chain(&e),
            })?;
            if changes != Default::default() {
                tracing::info!(?changes, "routes to other nodes' pod subnets");
            }
            Ok(())
        })
        .await;
        match done {
            Ok(Ok(())) => routed = Some(peers),
            Ok(Err(e)) => tracing::warn!(error = %e, "pod network not configured"),
            Err(e) => tracing::warn!(error = %e, "pod network task failed"),
        }
    }
}
