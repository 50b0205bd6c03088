//! NodeResourcesFit (filter and the LeastAllocated, MostAllocated and
//! RequestedToCapacityRatio scores) and NodeResourcesBalancedAllocation.

use std::borrow::Cow;

use serde::Deserialize;

use crate::cache::NodeId;
use crate::error::{Error, Result};
use crate::framework::{
    CycleContext, CycleState, Events, FilterPlugin, MAX_NODE_SCORE, NodeFilter, NodeScorer, Plugin,
    Reject, Scope, ScorePlugin,
};
use crate::pod::{CPU, EPHEMERAL, MEMORY, PODS};

/// A resource and its weight in a score.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpec {
    /// `cpu`, `memory`, `ephemeral-storage` or an extended resource.
    pub name: String,
    /// Its weight (default 1).
    #[serde(default = "one")]
    pub weight: i64,
}

fn one() -> i64 {
    1
}

/// One point of the RequestedToCapacityRatio shape: utilisation (0-100) to score (0-10).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShapePoint {
    /// Utilisation in percent.
    pub utilization: i64,
    /// Score, 0 to 10.
    pub score: i64,
}

/// How NodeResourcesFit scores.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Prefer emptier nodes (spread).
    LeastAllocated,
    /// Prefer fuller nodes (bin packing).
    MostAllocated,
    /// A piecewise-linear function of utilisation.
    RequestedToCapacityRatio(Vec<ShapePoint>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FitArgs {
    #[serde(default)]
    ignored_resources: Vec<String>,
    #[serde(default)]
    ignored_resource_groups: Vec<String>,
    #[serde(default)]
    scoring_strategy: Option<StrategyArgs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StrategyArgs {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    resources: Option<Vec<ResourceSpec>>,
    #[serde(default)]
    requested_to_capacity_ratio: Option<RtcrArgs>,
}

#[derive(Debug, Default, Deserialize)]
struct RtcrArgs {
    shape: Vec<ShapePoint>,
}

fn default_resources() -> Vec<ResourceSpec> {
    vec![
        ResourceSpec {
            name: "cpu".into(),
            weight: 1,
        },
        ResourceSpec {
            name: "memory".into(),
            weight: 1,
        },
    ]
}

/// Rules out nodes without room for the pod's requests; scores by the configured strategy.
#[derive(Debug)]
pub struct NodeResourcesFit {
    strategy: Strategy,
    resources: Vec<ResourceSpec>,
    ignored: Vec<String>,
    ignored_groups: Vec<String>,
}

impl Default for NodeResourcesFit {
    fn default() -> Self {
        NodeResourcesFit {
            strategy: Strategy::LeastAllocated,
            resources: default_resources(),
            ignored: Vec::new(),
            ignored_groups: Vec::new(),
        }
    }
}

impl NodeResourcesFit {
    /// A plugin scoring with `strategy` over `resources`.
    pub fn new(strategy: Strategy, resources: Vec<ResourceSpec>) -> Self {
        NodeResourcesFit {
            strategy,
            resources,
            ..Default::default()
        }
    }

    /// Reads `NodeResourcesFitArgs`.
    pub fn from_args(args: Option<&serde_json::Value>) -> Result<Self> {
        let a: FitArgs = match args {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::Config(format!("NodeResourcesFit args: {e}")))?,
            None => FitArgs::default(),
        };
        let s = a.scoring_strategy.unwrap_or_default();
        let strategy = match s.kind.as_deref().unwrap_or("LeastAllocated") {
            "LeastAllocated" => Strategy::LeastAllocated,
            "MostAllocated" => Strategy::MostAllocated,
            "RequestedToCapacityRatio" => {
                let shape = s
                    .requested_to_capacity_ratio
                    .map(|r| r.shape)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        Error::Config("RequestedToCapacityRatio needs a shape".into())
                    })?;
                for w in shape.windows(2) {
                    if w[1].utilization <= w[0].utilization {
                        return Err(Error::Config("shape utilizations must increase".into()));
                    }
                }
                if shape
                    .iter()
                    .any(|p| !(0..=100).contains(&p.utilization) || !(0..=10).contains(&p.score))
                {
                    return Err(Error::Config(
                        "shape utilization must be 0-100 and score 0-10".into(),
                    ));
                }
                Strategy::RequestedToCapacityRatio(shape)
            }
            other => {
                return Err(Error::Config(format!("unknown scoring strategy {other:?}")));
            }
        };
        let resources = s.resources.unwrap_or_else(default_resources);
        if resources.iter().any(|r| r.weight < 1 || r.weight > 100) {
            return Err(Error::Config("resource weights must be 1-100".into()));
        }
        Ok(NodeResourcesFit {
            strategy,
            resources,
            ignored: a.ignored_resources,
            ignored_groups: a.ignored_resource_groups,
        })
    }

    fn ignores(&self, name: &str) -> bool {
        self.ignored.iter().any(|r| r == name)
            || name
                .split_once('/')
                .is_some_and(|(g, _)| self.ignored_groups.iter().any(|x| x == g))
    }
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn events(&self) -> Events {
        Events::NODE_ADD
            .or(Events::NODE_UPDATE)
            .or(Events::POD_DELETE)
    }
}

struct FitCheck<'a> {
    cx: CycleContext<'a>,
    plugin: &'a NodeResourcesFit,
}

impl NodeFilter for FitCheck<'_> {
    fn scope(&self) -> Scope {
        Scope::Class
    }
    #[inline]
    fn filter(&self, node: NodeId) -> Result<(), Reject> {
        let cache = self.cx.cache;
        let req = cache.requested(node);
        let alloc = cache.allocatable(node);
        let want = &self.cx.pod.requests;
        let pods_ok = req[PODS] < alloc[PODS];
        let fits = |i: usize| want.core[i] == 0 || want.core[i] <= alloc[i] - req[i];
        if pods_ok && fits(CPU) && fits(MEMORY) && fits(EPHEMERAL) && want.scalars.is_empty() {
            return Ok(());
        }
        let mut reasons: Vec<Cow<'static, str>> = Vec::new();
        let mut unresolvable = true;
        if !pods_ok {
            reasons.push("Too many pods".into());
            unresolvable &= alloc[PODS] == 0;
        }
        for (i, r) in [
            (CPU, "Insufficient cpu"),
            (MEMORY, "Insufficient memory"),
            (EPHEMERAL, "Insufficient ephemeral-storage"),
        ] {
            if !fits(i) {
                reasons.push(r.into());
                unresolvable &= want.core[i] > alloc[i];
            }
        }
        let node_alloc = &cache.node(node).alloc_scalars;
        let node_req = cache.scalar_requested(node);
        for (name, v) in &want.scalars {
            if *v == 0 || self.plugin.ignores(name) {
                continue;
            }
            let a = node_alloc
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |x| x.1);
            let r = node_req.iter().find(|(n, _)| n == name).map_or(0, |x| x.1);
            if *v > a - r {
                reasons.push(format!("Insufficient {name}").into());
                unresolvable &= *v > a;
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Reject {
                reasons,
                unresolvable,
            })
        }
    }
}

impl FilterPlugin for NodeResourcesFit {
    fn prepare<'a>(
        &'a self,
        cx: CycleContext<'a>,
        _: &'a CycleState,
    ) -> Option<Box<dyn NodeFilter + 'a>> {
        Some(Box::new(FitCheck { cx, plugin: self }))
    }
}

/// Requested (pod included) and allocatable amounts of one resource on a node, for scoring.
/// CPU and memory count kube-scheduler's defaults for pods that request none when `nonzero`.
fn amounts(cx: &CycleContext<'_>, node: NodeId, name: &str, nonzero: bool) -> (i64, i64) {
    let c = cx.cache;
    let pod = &cx.pod.requests;
    match name {
        "cpu" if nonzero => (
            c.nonzero_requested(node)[CPU] + pod.nonzero[CPU],
            c.allocatable(node)[CPU],
        ),
        "memory" if nonzero => (
            c.nonzero_requested(node)[MEMORY] + pod.nonzero[MEMORY],
            c.allocatable(node)[MEMORY],
        ),
        "cpu" => (
            c.requested(node)[CPU] + pod.core[CPU],
            c.allocatable(node)[CPU],
        ),
        "memory" => (
            c.requested(node)[MEMORY] + pod.core[MEMORY],
            c.allocatable(node)[MEMORY],
        ),
        "ephemeral-storage" => (
            c.requested(node)[EPHEMERAL] + pod.core[EPHEMERAL],
            c.allocatable(node)[EPHEMERAL],
        ),
        "pods" => (c.requested(node)[PODS] + 1, c.allocatable(node)[PODS]),
        other => {
            let r = c
                .scalar_requested(node)
                .iter()
                .find(|(n, _)| n == other)
                .map_or(0, |x| x.1);
            let p = pod
                .scalars
                .iter()
                .find(|(n, _)| n == other)
                .map_or(0, |x| x.1);
            let a = c
                .node(node)
                .alloc_scalars
                .iter()
                .find(|(n, _)| n == other)
                .map_or(0, |x| x.1);
            (r + p, a)
        }
    }
}

/// kube's `BuildBrokenLinearFunction` over a shape scaled to 0-100.
fn broken_linear(shape: &[ShapePoint], p: i64) -> i64 {
    let scaled = |s: i64| s * (MAX_NODE_SCORE / 10);
    for i in 0..shape.len() {
        if p <= shape[i].utilization {
            if i == 0 {
                return scaled(shape[0].score);
            }
            let (a, b) = (shape[i - 1], shape[i]);
            return scaled(a.score)
                + (scaled(b.score) - scaled(a.score)) * (p - a.utilization)
                    / (b.utilization - a.utilization);
        }
    }
    scaled(shape[shape.len() - 1].score)
}

struct FitScorer<'a> {
    cx: CycleContext<'a>,
    plugin: &'a NodeResourcesFit,
}

impl NodeScorer for FitScorer<'_> {
    #[inline]
    fn score(&self, node: NodeId) -> i64 {
        let mut total = 0i64;
        let mut weights = 0i64;
        for r in &self.plugin.resources {
            let (req, cap) = amounts(&self.cx, node, &r.name, true);
            if cap == 0 {
                continue;
            }
            let s = match &self.plugin.strategy {
                Strategy::LeastAllocated => {
                    if req > cap {
                        0
                    } else {
                        (cap - req) * MAX_NODE_SCORE / cap
                    }
                }
                Strategy::MostAllocated => req.min(cap) * MAX_NODE_SCORE / cap,
                Strategy::RequestedToCapacityRatio(shape) => {
                    let u = if req > cap { 100 } else { req * 100 / cap };
                    broken_linear(shape, u)
                }
            };
            total += s * r.weight;
            weights += r.weight;
        }
        if weights == 0 {
            return 0;
        }
        match self.plugin.strategy {
            Strategy::RequestedToCapacityRatio(_) => (total as f64 / weights as f64).round() as i64,
            _ => total / weights,
        }
    }
}

impl ScorePlugin for NodeResourcesFit {
    fn scope(&self, _: CycleContext<'_>, _: &CycleState) -> Option<Scope> {
        Some(Scope::Class)
    }
    fn prepare<'a>(&'a self, cx: CycleContext<'a>, _: &'a CycleState) -> Box<dyn NodeScorer + 'a> {
        Box::new(FitScorer { cx, plugin: self })
    }
}

/// Prefers nodes whose resource use stays balanced across resources once the pod is placed.
#[derive(Debug)]
pub struct BalancedAllocation {
    resources: Vec<ResourceSpec>,
}

impl Default for BalancedAllocation {
    fn default() -> Self {
        BalancedAllocation {
            resources: default_resources(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct BalancedArgs {
    #[serde(default)]
    resources: Option<Vec<ResourceSpec>>,
}

impl BalancedAllocation {
    /// Reads `NodeResourcesBalancedAllocationArgs`.
    pub fn from_args(args: Option<&serde_json::Value>) -> Result<Self> {
        let a: BalancedArgs = match args {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::Config(format!("NodeResourcesBalancedAllocation args: {e}")))?,
            None => BalancedArgs::default(),
        };
        Ok(BalancedAllocation {
            resources: a.resources.unwrap_or_else(default_resources),
        })
    }
}

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
}

struct BalancedScorer<'a> {
    cx: CycleContext<'a>,
    plugin: &'a BalancedAllocation,
}

impl NodeScorer for BalancedScorer<'_> {
    #[inline]
    fn score(&self, node: NodeId) -> i64 {
        let mut f = [0f64; 8];
        let mut n = 0;
        for r in self.plugin.resources.iter().take(8) {
            let (req, cap) = amounts(&self.cx, node, &r.name, false);
            if cap == 0 {
                continue;
            }
            f[n] = (req as f64 / cap as f64).min(1.0);
            n += 1;
        }
        let std = match n {
            0 | 1 => 0.0,
            2 => (f[0] - f[1]).abs() / 2.0,
            _ => {
                let mean = f[..n].iter().sum::<f64>() / n as f64;
                (f[..n].iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64).sqrt()
            }
        };
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

impl ScorePlugin for BalancedAllocation {
    fn scope(&self, cx: CycleContext<'_>, _: &CycleState) -> Option<Scope> {
        // Best-effort pods (no requests for the scored resources) are not scored (kube 1.32+).
        let r = &cx.pod.requests;
        let requests_any = self.resources.iter().any(|s| match s.name.as_str() {
            "cpu" => r.core[CPU] > 0,
            "memory" => r.core[MEMORY] > 0,
            "ephemeral-storage" => r.core[EPHEMERAL] > 0,
            other => r.scalars.iter().any(|(n, v)| n == other && *v > 0),
        });
        requests_any.then_some(Scope::Class)
    }
    fn prepare<'a>(&'a self, cx: CycleContext<'a>, _: &'a CycleState) -> Box<dyn NodeScorer + 'a> {
        Box::new(BalancedScorer { cx, plugin: self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_linear_interpolates() {
        let shape = [
            ShapePoint {
                utilization: 0,
                score: 0,
            },
            ShapePoint {
                utilization: 100,
                score: 10,
            },
        ];
        assert_eq!(broken_linear(&shape, 0), 0);
        assert_eq!(broken_linear(&shape, 50), 50);
        assert_eq!(broken_linear(&shape, 100), 100);
    }

    #[test]
    fn args_are_checked() {
        let bad = serde_json::json!({"scoringStrategy": {"type": "Random"}});
        assert!(NodeResourcesFit::from_args(Some(&bad)).is_err());
        let bad = serde_json::json!({"scoringStrategy": {"type": "RequestedToCapacityRatio"}});
        assert!(NodeResourcesFit::from_args(Some(&bad)).is_err());
        let ok = serde_json::json!({"scoringStrategy": {"type": "MostAllocated",
            "resources": [{"name": "cpu", "weight": 2}]}});
        let p = NodeResourcesFit::from_args(Some(&ok)).unwrap();
        assert_eq!(p.strategy, Strategy::MostAllocated);
        assert_eq!(p.resources[0].weight, 2);
    }
}
