//! DefaultPreemption: when no node fits, find a node where evicting lower-priority pods makes
//! the pod fit, evicting as few and as unimportant pods as possible and respecting
//! PodDisruptionBudgets where it can (kube's `defaultpreemption`).
//!
//! Victims are chosen per node the way kube-scheduler does: remove every lower-priority pod,
//! check the pod fits, then add pods back, most important first (those whose eviction would
//! violate a PDB before the others), keeping each one that still lets the pod fit. The node is
//! chosen by fewest PDB violations, then the lowest highest-victim priority, the lowest sum of
//! priorities, the fewest victims. Trying a node changes the cache and undoes the change.

use std::sync::Arc;

use serde::Deserialize;

use crate::cache::NodeId;
use crate::error::{Error, Result};
use crate::framework::{Diagnosis, Plugin, PostFilterPlugin, PostFilterResult, Simulation};
use crate::pod::{CPU, EPHEMERAL, MEMORY, PODS, PodInfo};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Args {
    #[serde(default = "ten")]
    min_candidate_nodes_percentage: u32,
    #[serde(default = "hundred")]
    min_candidate_nodes_absolute: u32,
}

fn ten() -> u32 {
    10
}
fn hundred() -> u32 {
    100
}

/// See the module documentation.
#[derive(Debug)]
pub struct DefaultPreemption {
    pct: u32,
    abs: u32,
}

impl Default for DefaultPreemption {
    fn default() -> Self {
        DefaultPreemption { pct: 10, abs: 100 }
    }
}

impl DefaultPreemption {
    /// Reads `DefaultPreemptionArgs`.
    pub fn from_args(args: Option<&serde_json::Value>) -> Result<Self> {
        let Some(v) = args else {
            return Ok(Self::default());
        };
        let a: Args = serde_json::from_value(v.clone())
            .map_err(|e| Error::Config(format!("DefaultPreemption args: {e}")))?;
        if a.min_candidate_nodes_percentage > 100 {
            return Err(Error::Config(
                "minCandidateNodesPercentage must be 0-100".into(),
            ));
        }
        Ok(DefaultPreemption {
            pct: a.min_candidate_nodes_percentage,
            abs: a.min_candidate_nodes_absolute,
        })
    }
}

impl Plugin for DefaultPreemption {
    fn name(&self) -> &'static str {
        "DefaultPreemption"
    }
}

struct Candidate {
    node: NodeId,
    victims: Vec<Arc<PodInfo>>,
    violations: usize,
}

impl Candidate {
    fn rank(&self) -> (usize, i64, i64, usize) {
        let top = self
            .victims
            .iter()
            .map(|v| v.priority)
            .max()
            .unwrap_or(i32::MIN);
        let sum: i64 = self
            .victims
            .iter()
            .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
            .sum();
        (self.violations, i64::from(top), sum, self.victims.len())
    }
}

fn select_victims(pod: &PodInfo, sim: &mut Simulation<'_>, node: NodeId) -> Option<Candidate> {
    let lower: Vec<Arc<PodInfo>> = sim
        .cache
        .pods_on(node)
        .iter()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    if lower.is_empty() {
        return None;
    }
    // Cheap necessary condition: evicting every lower-priority pod frees enough resources.
    let mut req = *sim.cache.requested(node);
    for p in &lower {
        for (i, r) in [CPU, MEMORY, EPHEMERAL].into_iter().enumerate() {
            req[r] -= p.requests.core[i];
        }
        req[PODS] -= 1;
    }
    let alloc = sim.cache.allocatable(node);
    let want = &pod.requests.core;
    if req[PODS] + 1 > alloc[PODS]
        || [CPU, MEMORY, EPHEMERAL]
            .into_iter()
            .any(|r| want[r] > 0 && req[r] + want[r] > alloc[r])
    {
        return None;
    }
    let node_name = sim.cache.node(node).name.clone();
    let mut removed: Vec<(Arc<PodInfo>, bool)> = Vec::new();
    for p in &lower {
        let assumed = sim.cache.is_assumed(&p.key);
        sim.cache.remove_pod(&p.key);
        removed.push((p.clone(), assumed));
    }
    let restore = |sim: &mut Simulation<'_>, pods: &[(Arc<PodInfo>, bool)]| {
        for (p, assumed) in pods {
            sim.cache.add_pod(p.clone(), &node_name, *assumed);
        }
    };
    if !sim.fits(pod, node) {
        restore(sim, &removed);
        return None;
    }
    // Most important first; PDB-violating pods are reprieved first.
    let mut ordered = removed.clone();
    ordered.sort_by(|(a, _), (b, _)| b.priority.cmp(&a.priority).then(a.key.cmp(&b.key)));
    let mut allowed: Vec<i32> = sim.pdbs.iter().map(|p| p.disruptions_allowed).collect();
    let mut violating = Vec::new();
    let mut fine = Vec::new();
    for (p, assumed) in ordered {
        let mut violates = false;
        for (i, pdb) in sim.pdbs.iter().enumerate() {
            if pdb.namespace == p.namespace && pdb.selector.matches(&p.labels) {
                allowed[i] -= 1;
                if allowed[i] < 0 {
                    violates = true;
                }
            }
        }
        if violates {
            violating.push((p, assumed));
        } else {
            fine.push((p, assumed));
        }
    }
    let mut victims = Vec::new();
    let mut violations = 0;
    let mut kept: Vec<(Arc<PodInfo>, bool)> = Vec::new();
    for (list, counts) in [(violating, true), (fine, false)] {
        for (p, assumed) in list {
            sim.cache.add_pod(p.clone(), &node_name, assumed);
            if sim.fits(pod, node) {
                kept.push((p, assumed));
            } else {
                sim.cache.remove_pod(&p.key);
                if counts {
                    violations += 1;
                }
                victims.push((p, assumed));
            }
        }
    }
    // Undo: the victims go back too.
    restore(sim, &victims);
    let _ = kept;
    Some(Candidate {
        node,
        victims: victims.into_iter().map(|(p, _)| p).collect(),
        violations,
    })
}

impl PostFilterPlugin for DefaultPreemption {
    fn post_filter(
        &self,
        pod: &Arc<PodInfo>,
        sim: &mut Simulation<'_>,
        diagnosis: &Diagnosis,
    ) -> PostFilterResult {
        let total = diagnosis.nodes;
        if pod.never_preempts {
            return PostFilterResult::NotHelpful(
                "preemption: not eligible due to preemptionPolicy=Never.".into(),
            );
        }
        let mut nodes = diagnosis.resolvable.clone();
        nodes.sort_unstable();
        nodes.dedup();
        let unhelpful = total - nodes.len();
        let wanted = (total as u64 * u64::from(self.pct) / 100).max(u64::from(self.abs)) as usize;
        let mut candidates = Vec::new();
        for n in nodes.iter().copied() {
            if candidates.len() >= wanted {
                break;
            }
            if let Some(c) = select_victims(pod, sim, n) {
                candidates.push(c);
            }
        }
        let Some(best) = candidates.into_iter().min_by_key(|c| (c.rank(), c.node)) else {
            let mut parts = Vec::new();
            if !nodes.is_empty() {
                parts.push(format!(
                    "{} No preemption victims found for incoming pod",
                    nodes.len()
                ));
            }
            if unhelpful > 0 {
                parts.push(format!(
                    "{unhelpful} Preemption is not helpful for scheduling"
                ));
            }
            parts.sort();
            return PostFilterResult::NotHelpful(format!(
                "preemption: 0/{total} nodes are available: {}.",
                parts.join(", ")
            ));
        };
        PostFilterResult::Nominated {
            node: best.node,
            victims: best.victims.iter().map(|v| v.key.clone()).collect(),
        }
    }
}
