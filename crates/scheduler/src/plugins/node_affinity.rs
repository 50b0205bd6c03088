//! NodeAffinity: `nodeSelector` and required node affinity as a filter (and, for
//! `metadata.name` terms, a PreFilter node restriction, as DaemonSet pods use), preferred node
//! affinity as a score.

use rustc_hash::FxHashSet;

use crate::cache::NodeId;
use crate::framework::{
    CycleContext, CycleState, Events, FilterPlugin, NodeFilter, NodeScorer, Plugin,
    PreFilterPlugin, PreFilterResult, Reject, Scope, ScorePlugin, Status,
};
use crate::plugins::basic::default_normalize;
use crate::pod::{HOSTNAME, PodInfo};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn events(&self) -> Events {
        Events::NODE_ADD.or(Events::NODE_UPDATE)
    }
}

fn reads_node_identity(pod: &PodInfo) -> bool {
    pod.node_selector
        .as_ref()
        .is_some_and(|s| s.reads(HOSTNAME))
        || pod
            .required_node_affinity
            .as_ref()
            .is_some_and(|t| t.0.iter().any(|t| t.reads_name_or(HOSTNAME)))
}

impl PreFilterPlugin for NodeAffinity {
    fn pre_filter(
        &self,
        cx: CycleContext<'_>,
        _: &mut CycleState,
    ) -> Result<PreFilterResult, Status> {
        let Some(terms) = &cx.pod.required_node_affinity else {
            return Ok(PreFilterResult::default());
        };
        // Only when every term names nodes can the set be narrowed.
        let mut names: FxHashSet<&str> = FxHashSet::default();
        for t in &terms.0 {
            match t.names() {
                Some(n) => names.extend(n.iter().map(String::as_str)),
                None => return Ok(PreFilterResult::default()),
            }
        }
        let mut nodes: Vec<NodeId> = names
            .into_iter()
            .filter_map(|n| cx.cache.node_id(n))
            .collect();
        nodes.sort_unstable();
        if nodes.is_empty() {
            return Err(Status::unresolvable(
                "NodeAffinity",
                "node(s) didn't match Pod's node affinity/selector",
            ));
        }
        Ok(PreFilterResult { nodes: Some(nodes) })
    }
}

struct AffinityCheck<'a> {
    cx: CycleContext<'a>,
    scope: Scope,
}

impl NodeFilter for AffinityCheck<'_> {
    fn scope(&self) -> Scope {
        self.scope.clone()
    }
    fn filter(&self, node: NodeId) -> Result<(), Reject> {
        let n = self.cx.cache.node(node);
        if self.cx.pod.matches_node_selection(&n.labels, &n.name) {
            Ok(())
        } else {
            Err(Reject::unresolvable(
                "node(s) didn't match Pod's node affinity/selector",
            ))
        }
    }
}

impl FilterPlugin for NodeAffinity {
    fn prepare<'a>(
        &'a self,
        cx: CycleContext<'a>,
        _: &'a CycleState,
    ) -> Option<Box<dyn NodeFilter + 'a>> {
        if cx.pod.node_selector.is_none() && cx.pod.required_node_affinity.is_none() {
            return None;
        }
        let scope = if reads_node_identity(cx.pod) {
            Scope::Node
        } else {
            Scope::Class
        };
        Some(Box::new(AffinityCheck { cx, scope }))
    }
}

struct PreferredScorer<'a>(CycleContext<'a>);

impl NodeScorer for PreferredScorer<'_> {
    fn score(&self, node: NodeId) -> i64 {
        let n = self.0.cache.node(node);
        self.0
            .pod
            .preferred_node_affinity
            .iter()
            .filter(|(_, t)| t.matches(&n.labels, &n.name))
            .map(|(w, _)| i64::from(*w))
            .sum()
    }
    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

impl ScorePlugin for NodeAffinity {
    fn scope(&self, cx: CycleContext<'_>, _: &CycleState) -> Option<Scope> {
        let p = &cx.pod.preferred_node_affinity;
        if p.is_empty() {
            None
        } else if p.iter().any(|(_, t)| t.reads_name_or(HOSTNAME)) {
            Some(Scope::Node)
        } else {
            Some(Scope::Class)
        }
    }
    fn prepare<'a>(&'a self, cx: CycleContext<'a>, _: &'a CycleState) -> Box<dyn NodeScorer + 'a> {
        Box::new(PreferredScorer(cx))
    }
}
