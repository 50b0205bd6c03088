//! The node IPAM controller: kube-controller-manager's `nodeipam` with the range allocator. It
//! hands every Node one pod subnet (`spec.podCIDR` and `spec.podCIDRs`) carved out of the cluster
//! CIDR, which the node agent's pod network then leases pod addresses from.
//!
//! A node gets its subnet once: a node that has one keeps it (the subnet is recorded as taken at
//! start, so allocation recovers from the existing nodes before it hands out anything), and the
//! patch that sets it carries the node's resourceVersion, so a concurrent writer makes it re-read
//! rather than set a second value. A deleted node's subnet is free again; nodes waiting because
//! the cluster CIDR was full are then served. The cluster CIDR and mask size come from
//! [`NodeIpamConfig`] (`BERTH_CLUSTER_CIDR`, `BERTH_NODE_CIDR_MASK_SIZE` for the built-in
//! controller; Kubernetes' `--cluster-cidr` and `--node-cidr-mask-size`).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::error::{Error, Result};

/// The cluster CIDR and the size of each node's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIpamConfig {
    base: u32,
    prefix: u8,
    node_mask: u8,
}

impl NodeIpamConfig {
    /// `cluster_cidr` ("10.244.0.0/16") split into subnets of `node_mask` bits ("/24"). At most
    /// 2^16 subnets, each with room for a gateway and a pod (at most /30).
    pub fn new(cluster_cidr: &str, node_mask: u8) -> Result<NodeIpamConfig> {
        let invalid = |message: String| Error::Invalid {
            what: format!("cluster CIDR {cluster_cidr}/node mask {node_mask}"),
            message,
        };
        let (base, prefix) =
            parse_cidr(cluster_cidr).ok_or_else(|| invalid("not an IPv4 CIDR".into()))?;
        if node_mask < prefix || node_mask > 30 || node_mask - prefix > 16 {
            return Err(invalid(format!(
                "the node mask must lie in /{prefix}../30 and give at most 65536 subnets"
            )));
        }
        Ok(NodeIpamConfig {
            base,
            prefix,
            node_mask,
        })
    }

    /// From `BERTH_CLUSTER_CIDR` (default 10.244.0.0/16) and `BERTH_NODE_CIDR_MASK_SIZE`
    /// (default 24).
    pub fn from_env() -> Result<NodeIpamConfig> {
        let cidr = std::env::var("BERTH_CLUSTER_CIDR").unwrap_or_else(|_| "10.244.0.0/16".into());
        let mask = match std::env::var("BERTH_NODE_CIDR_MASK_SIZE") {
            Ok(m) => m.parse().map_err(|_| Error::Invalid {
                what: "BERTH_NODE_CIDR_MASK_SIZE".into(),
                message: format!("{m:?} is not a number"),
            })?,
            Err(_) => 24,
        };
        NodeIpamConfig::new(&cidr, mask)
    }

    fn count(&self) -> u32 {
        1 << (self.node_mask - self.prefix)
    }

    fn subnet(&self, i: u32) -> String {
        let addr = self.base + (i << (32 - self.node_mask));
        format!("{}/{}", Ipv4Addr::from(addr), self.node_mask)
    }

    /// The index of `cidr` if it is one of this config's subnets.
    fn index(&self, cidr: &str) -> Option<u32> {
        let (addr, len) = parse_cidr(cidr)?;
        let mask = prefix_mask(self.prefix);
        if len != self.node_mask || addr & mask != self.base {
            return None;
        }
        Some((addr - self.base) >> (32 - self.node_mask))
    }
}

fn prefix_mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// Parses "a.b.c.d/n" with no host bits set.
fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr = u32::from(addr.parse::<Ipv4Addr>().ok()?);
    let len: u8 = len.parse().ok()?;
    if len > 32 || addr & !prefix_mask(len) != 0 {
        return None;
    }
    Some((addr, len))
}

/// The allocator's state: which subnets are taken, by which node.
#[derive(Debug)]
struct CidrSet {
    config: NodeIpamConfig,
    taken: HashMap<u32, String>,
    by_node: HashMap<String, u32>,
    next: u32,
}

impl CidrSet {
    fn new(config: NodeIpamConfig) -> Self {
        CidrSet {
            config,
            taken: HashMap::new(),
            by_node: HashMap::new(),
            next: 0,
        }
    }

    /// Records that `node` holds `cidr`; false when it is not ours or another node holds it.
    fn occupy(&mut self, node: &str, cidr: &str) -> bool {
        let Some(i) = self.config.index(cidr) else {
            return false;
        };
        match self.taken.get(&i) {
            Some(owner) if owner != node => false,
            _ => {
                self.taken.insert(i, node.to_owned());
                self.by_node.insert(node.to_owned(), i);
                true
            }
        }
    }

    /// Takes the next free subnet (round robin) for `node`.
    fn allocate(&mut self, node: &str) -> Option<String> {
        if let Some(i) = self.by_node.get(node) {
            return Some(self.config.subnet(*i));
        }
        let n = self.config.count();
        let i = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|i| !self.taken.contains_key(i))?;
        self.next = (i + 1) % n;
        self.taken.insert(i, node.to_owned());
        self.by_node.insert(node.to_owned(), i);
        Some(self.config.subnet(i))
    }

    fn release(&mut self, node: &str) -> bool {
        match self.by_node.remove(node) {
            Some(i) => {
                self.taken.remove(&i);
                true
            }
            None => false,
        }
    }
}

/// Runs the node IPAM controller until the watch ends.
pub async fn run_node_ipam(client: Client, config: NodeIpamConfig) {
    let api: Api<Node> = Api::all(client);
    let mut set = CidrSet::new(config);
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut initial: Vec<Node> = Vec::new();
    let mut synced = false;
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "node watch failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        match event {
            watcher::Event::Init => initial.clear(),
            watcher::Event::InitApply(node) => initial.push(node),
            watcher::Event::InitDone => {
                // Record every subnet already held before handing out any.
                set = CidrSet::new(config);
                pending.clear();
                for node in &initial {
                    observe(&mut set, &mut pending, node);
                }
                initial.clear();
                synced = true;
            }
            watcher::Event::Apply(node) => observe(&mut set, &mut pending, &node),
            watcher::Event::Delete(node) => {
                pending.remove(&node.name_any());
                if set.release(&node.name_any()) {
                    tracing::info!(node = %node.name_any(), "released the node's pod CIDR");
                }
            }
        }
        if synced {
            serve(&api, &mut set, &mut pending).await;
        }
    }
}

fn pod_cidr(node: &Node) -> Option<&str> {
    node.spec
        .as_ref()?
        .pod_cidr
        .as_deref()
        .filter(|c| !c.is_empty())
}

fn observe(set: &mut CidrSet, pending: &mut BTreeSet<String>, node: &Node) {
    let name = node.name_any();
    match pod_cidr(node) {
        Some(cidr) => {
            pending.remove(&name);
            if !set.occupy(&name, cidr) {
                tracing::warn!(node = %name, cidr, "node's pod CIDR is outside the cluster CIDR or taken by another node");
            }
        }
        None if node.metadata.deletion_timestamp.is_none() => {
            pending.insert(name);
        }
        None => {}
    }
}

/// Gives each pending node a subnet.
async fn serve(api: &Api<Node>, set: &mut CidrSet, pending: &mut BTreeSet<String>) {
    for name in std::mem::take(pending) {
        match assign(api, set, &name).await {
            Ok(true) => {}
            Ok(false) => {
                pending.insert(name);
            }
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "could not set the node's pod CIDR");
                set.release(&name);
                pending.insert(name);
            }
        }
    }
}

/// Sets `name`'s pod CIDR unless it has one; false when none is free.
async fn assign(api: &Api<Node>, set: &mut CidrSet, name: &str) -> Result<bool> {
    for _ in 0..5 {
        let Some(node) = api.get_opt(name).await.map_err(|source| Error::Api {
            context: format!("get node {name}"),
            source,
        })?
        else {
            set.release(name);
            return Ok(true);
        };
        if let Some(cidr) = pod_cidr(&node) {
            set.release(name);
            set.occupy(name, cidr);
            return Ok(true);
        }
        let Some(cidr) = set.allocate(name) else {
            tracing::warn!(
                node = name,
                "no pod CIDR left in the cluster CIDR (CIDRNotAvailable)"
            );
            return Ok(false);
        };
        let patch = json!({
            "metadata": {"resourceVersion": node.resource_version()},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node = name, cidr, "assigned the node's pod CIDR");
                return Ok(true);
            }
            // Changed under us (a heartbeat): read it again.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(source) => {
                return Err(Error::Api {
                    context: format!("set the pod CIDR of node {name}"),
                    source,
                });
            }
        }
    }
    Ok(false)
}

fn start(ctx: &crate::runtime::Context) -> futures::future::BoxFuture<'static, ()> {
    let client = ctx.client.clone();
    let stop = ctx.shutdown.clone();
    Box::pin(async move {
        let config = match NodeIpamConfig::from_env() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "node IPAM controller not started");
                return;
            }
        };
        tokio::select! {
            () = run_node_ipam(client, config) => {}
            () = stop.cancelled() => {}
        }
    })
}

/// The [`crate::ControllerSpec`] of the node IPAM controller (`nodeipam`), configured from the
/// environment ([`NodeIpamConfig::from_env`]).
pub const NODE_IPAM_SPEC: crate::ControllerSpec = crate::ControllerSpec {
    name: "nodeipam",
    start,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validates_and_indexes() {
        let c = NodeIpamConfig::new("10.244.0.0/16", 24).unwrap();
        assert_eq!(c.count(), 256);
        assert_eq!(c.subnet(3), "10.244.3.0/24");
        assert_eq!(c.index("10.244.3.0/24"), Some(3));
        assert_eq!(c.index("10.245.3.0/24"), None);
        assert_eq!(c.index("10.244.3.0/25"), None);
        assert_eq!(c.index("10.244.3.1/24"), None);
        assert!(NodeIpamConfig::new("10.244.0.1/16", 24).is_err());
        assert!(NodeIpamConfig::new("10.244.0.0/16", 8).is_err());
        assert!(NodeIpamConfig::new("10.244.0.0/16", 31).is_err());
        assert!(NodeIpamConfig::new("10.0.0.0/8", 30).is_err());
        assert!(NodeIpamConfig::new("nonsense", 24).is_err());
    }

    #[test]
    fn cidr_set_never_hands_out_a_subnet_twice() {
        let mut s = CidrSet::new(NodeIpamConfig::new("10.0.0.0/22", 24).unwrap());
        assert!(s.occupy("old", "10.0.0.0/24"));
        assert!(!s.occupy("other", "10.0.0.0/24"));
        assert_eq!(s.allocate("a").unwrap(), "10.0.1.0/24");
        assert_eq!(s.allocate("a").unwrap(), "10.0.1.0/24");
        assert_eq!(s.allocate("b").unwrap(), "10.0.2.0/24");
        assert_eq!(s.allocate("c").unwrap(), "10.0.3.0/24");
        assert_eq!(s.allocate("d"), None);
        assert!(s.release("b"));
        assert_eq!(s.allocate("d").unwrap(), "10.0.2.0/24");
    }
}
