//! Built-in filter and score plugins, named after their kube-scheduler counterparts.

use berth_api::objects::Pod;

use crate::framework::{FilterPlugin, NodeInfo, ScorePlugin};

/// Rules out cordoned nodes.
pub struct NodeUnschedulable;

impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn filter(&self, _pod: &Pod, node: &NodeInfo) -> Result<(), String> {
        if node.node.spec.unschedulable {
            Err("node is cordoned".into())
        } else {
            Ok(())
        }
    }
}

/// Rules out nodes whose allocatable CPU, memory or pod count can't take the pod's requests.
pub struct NodeResourcesFit;

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), String> {
        let want = pod.spec.total_requests();
        let alloc = &node.node.status.allocatable;
        if node.requested.cpu.0 + want.cpu.0 > alloc.cpu.0 {
            return Err(format!(
                "insufficient cpu: {}m requested, {}m free",
                want.cpu.0,
                alloc.cpu.0.saturating_sub(node.requested.cpu.0)
            ));
        }
        if node.requested.memory.0 + want.memory.0 > alloc.memory.0 {
            return Err(format!(
                "insufficient memory: {} requested, {} free",
                want.memory.0,
                alloc.memory.0.saturating_sub(node.requested.memory.0)
            ));
        }
        if let Some(max) = alloc.pods
            && node.pod_count >= max
        {
            return Err(format!("too many pods: {max} allowed"));
        }
        Ok(())
    }
}

/// Rules out nodes missing a label from the pod's `nodeSelector`.
pub struct NodeSelector;

impl FilterPlugin for NodeSelector {
    fn name(&self) -> &'static str {
        "NodeSelector"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), String> {
        let labels = &node.node.metadata.labels;
        match pod
            .spec
            .node_selector
            .iter()
            .find(|(k, v)| labels.get(*k) != Some(*v))
        {
            Some((k, v)) => Err(format!("node lacks label {k}={v}")),
            None => Ok(()),
        }
    }
}

/// Rules out nodes with a `NoSchedule`/`NoExecute` taint the pod doesn't tolerate.
pub struct TaintToleration;

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), String> {
        match node.node.spec.taints.iter().find(|t| {
            t.effect != "PreferNoSchedule"
                && !pod.spec.tolerations.iter().any(|tol| tol.tolerates(t))
        }) {
            Some(t) => Err(format!(
                "untolerated taint {}={}:{}",
                t.key, t.value, t.effect
            )),
            None => Ok(()),
        }
    }
}

fn free_fraction(requested: u64, want: u64, allocatable: u64) -> f64 {
    if allocatable == 0 {
        return 0.0;
    }
    1.0 - ((requested + want) as f64 / allocatable as f64).min(1.0)
}

/// Prefers nodes with the most free CPU and memory after placing the pod (spreads load).
pub struct LeastAllocated;

impl ScorePlugin for LeastAllocated {
    fn name(&self) -> &'static str {
        "LeastAllocated"
    }
    fn score(&self, pod: &Pod, node: &NodeInfo) -> u32 {
        let want = pod.spec.total_requests();
        let alloc = &node.node.status.allocatable;
        let cpu = free_fraction(node.requested.cpu.0, want.cpu.0, alloc.cpu.0);
        let mem = free_fraction(node.requested.memory.0, want.memory.0, alloc.memory.0);
        ((cpu + mem) / 2.0 * 100.0).round() as u32
    }
}

/// Prefers nodes whose CPU and memory use stay balanced after placing the pod.
pub struct BalancedAllocation;

impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "BalancedAllocation"
    }
    fn score(&self, pod: &Pod, node: &NodeInfo) -> u32 {
        let want = pod.spec.total_requests();
        let alloc = &node.node.status.allocatable;
        let cpu = 1.0 - free_fraction(node.requested.cpu.0, want.cpu.0, alloc.cpu.0);
        let mem = 1.0 - free_fraction(node.requested.memory.0, want.memory.0, alloc.memory.0);
        ((1.0 - (cpu - mem).abs()) * 100.0).round() as u32
    }
}

#[cfg(test)]
mod tests {
    use berth_api::objects::{Container, Node, Taint, Toleration};
    use berth_api::{Bytes, Cpu};
    use proptest::prelude::*;

    use crate::{Framework, NodeInfo};

    use super::*;

    fn node(name: &str, cpu: u64, mem: u64) -> NodeInfo {
        let mut n = Node::default();
        n.metadata.name = name.into();
        n.status.allocatable.cpu = Cpu(cpu);
        n.status.allocatable.memory = Bytes(mem);
        NodeInfo::new(n)
    }

    fn pod(cpu: u64, mem: u64) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = "p".into();
        let mut c = Container::default();
        c.resources.requests.cpu = Cpu(cpu);
        c.resources.requests.memory = Bytes(mem);
        p.spec.containers.push(c);
        p
    }

    #[test]
    fn picks_least_loaded_fitting_node() {
        let fw = Framework::with_default_plugins();
        let mut busy = node("busy", 2000, 1 << 30);
        busy.add_pod(&pod(1500, 512 << 20));
        let idle = node("idle", 2000, 1 << 30);
        let small = node("small", 100, 1 << 30);
        let d = fw
            .schedule(&pod(500, 64 << 20), &[busy, small, idle])
            .unwrap();
        assert_eq!(d.node, "idle");
    }

    #[test]
    fn explains_unschedulable() {
        let fw = Framework::with_default_plugins();
        let mut cordoned = node("a", 4000, 1 << 30);
        cordoned.node.spec.unschedulable = true;
        let mut tainted = node("b", 4000, 1 << 30);
        tainted.node.spec.taints.push(Taint {
            key: "gpu".into(),
            value: "yes".into(),
            effect: "NoSchedule".into(),
        });
        let err = fw
            .schedule(&pod(100, 1), &[cordoned, tainted.clone()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cordoned") && err.contains("untolerated taint"),
            "{err}"
        );

        let mut tolerant = pod(100, 1);
        tolerant.spec.tolerations.push(Toleration {
            key: "gpu".into(),
            operator: "Exists".into(),
            ..Default::default()
        });
        assert_eq!(fw.schedule(&tolerant, &[tainted]).unwrap().node, "b");
    }

    #[test]
    fn node_selector() {
        let fw = Framework::with_default_plugins();
        let mut ssd = node("ssd", 1000, 1 << 30);
        ssd.node.metadata.labels.insert("disk".into(), "ssd".into());
        let hdd = node("hdd", 8000, 8 << 30);
        let mut p = pod(100, 1);
        p.spec.node_selector.insert("disk".into(), "ssd".into());
        assert_eq!(fw.schedule(&p, &[hdd, ssd]).unwrap().node, "ssd");
    }

    proptest! {
        /// Scheduling pods one by one and binding each never overcommits any node.
        #[test]
        fn never_overcommits(
            nodes in prop::collection::vec((100u64..4000, 1u64..4096), 1..6),
            pods in prop::collection::vec((0u64..1500, 0u64..1024), 1..40),
        ) {
            let fw = Framework::with_default_plugins();
            let mut infos: Vec<NodeInfo> = nodes
                .iter()
                .enumerate()
                .map(|(i, (c, m))| node(&format!("n{i}"), *c, *m << 20))
                .collect();
            for (c, m) in pods {
                let p = pod(c, m << 20);
                if let Ok(d) = fw.schedule(&p, &infos) {
                    let n = infos.iter_mut().find(|n| n.name() == d.node).unwrap();
                    n.add_pod(&p);
                }
            }
            for n in &infos {
                prop_assert!(n.requested.cpu.0 <= n.node.status.allocatable.cpu.0);
                prop_assert!(n.requested.memory.0 <= n.node.status.allocatable.memory.0);
            }
        }
    }
}
