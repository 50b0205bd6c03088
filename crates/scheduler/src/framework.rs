//! The scheduling framework: filter plugins rule nodes out, score plugins rank the rest, and
//! [`Framework::schedule`] picks one. It decides only; binding (writing `spec.nodeName`) is the
//! caller's job, so the framework does no I/O and is trivially testable.

use berth_api::objects::{Node, Pod, ResourceList};

use crate::error::{Error, Result};

/// A node with what is already placed on it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The node object.
    pub node: Node,
    /// Sum of the requests of the pods bound to it.
    pub requested: ResourceList,
    /// How many pods are bound to it.
    pub pod_count: u32,
}

impl NodeInfo {
    /// A node with nothing placed on it.
    pub fn new(node: Node) -> Self {
        NodeInfo {
            node,
            ..Default::default()
        }
    }

    /// Accounts for `pod` being bound here.
    pub fn add_pod(&mut self, pod: &Pod) {
        let r = pod.spec.total_requests();
        self.requested.cpu.0 += r.cpu.0;
        self.requested.memory.0 += r.memory.0;
        self.pod_count += 1;
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.node.metadata.name
    }
}

/// Rules a node in or out for a pod.
pub trait FilterPlugin: Send + Sync {
    /// Plugin name, for diagnostics.
    fn name(&self) -> &'static str;
    /// `Err(reason)` when `pod` cannot run on `node`.
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), String>;
}

/// Ranks a feasible node for a pod.
pub trait ScorePlugin: Send + Sync {
    /// Plugin name, for diagnostics.
    fn name(&self) -> &'static str;
    /// A score from 0 (worst) to 100 (best).
    fn score(&self, pod: &Pod, node: &NodeInfo) -> u32;
    /// How much this plugin's score counts relative to the others.
    fn weight(&self) -> u32 {
        1
    }
}

/// Where a pod should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The chosen node's name.
    pub node: String,
    /// Its weighted total score.
    pub score: u64,
}

/// A set of filter and score plugins.
pub struct Framework {
    filters: Vec<Box<dyn FilterPlugin>>,
    scorers: Vec<Box<dyn ScorePlugin>>,
}

impl Default for Framework {
    fn default() -> Self {
        Self::with_default_plugins()
    }
}

impl Framework {
    /// A framework with no plugins (every node feasible, all scores equal).
    pub fn empty() -> Self {
        Framework {
            filters: Vec::new(),
            scorers: Vec::new(),
        }
    }

    /// The plugins kube-scheduler enables by default that apply to Berth's model:
    /// unschedulable, resources fit, node selector, taints; least-allocated and balanced scoring.
    pub fn with_default_plugins() -> Self {
        use crate::plugins::*;
        Self::empty()
            .filter(NodeUnschedulable)
            .filter(NodeResourcesFit)
            .filter(NodeSelector)
            .filter(TaintToleration)
            .score(LeastAllocated)
            .score(BalancedAllocation)
    }

    /// Adds a filter plugin.
    pub fn filter(mut self, plugin: impl FilterPlugin + 'static) -> Self {
        self.filters.push(Box::new(plugin));
        self
    }

    /// Adds a score plugin.
    pub fn score(mut self, plugin: impl ScorePlugin + 'static) -> Self {
        self.scorers.push(Box::new(plugin));
        self
    }

    /// Picks the best feasible node for `pod`; ties go to the first node in `nodes`.
    pub fn schedule(&self, pod: &Pod, nodes: &[NodeInfo]) -> Result<Decision> {
        let mut best: Option<Decision> = None;
        let mut reasons = Vec::new();
        for node in nodes {
            if let Some(reason) = self.filters.iter().find_map(|f| {
                f.filter(pod, node)
                    .err()
                    .map(|r| format!("{}: {r}", f.name()))
            }) {
                reasons.push(format!("{}: {reason}", node.name()));
                continue;
            }
            let score = self
                .scorers
                .iter()
                .map(|s| u64::from(s.score(pod, node).min(100)) * u64::from(s.weight()))
                .sum();
            if best.as_ref().is_none_or(|b| score > b.score) {
                best = Some(Decision {
                    node: node.name().to_owned(),
                    score,
                });
            }
        }
        best.ok_or_else(|| Error::Unschedulable {
            pod: pod.metadata.name.clone(),
            reasons,
        })
    }
}
