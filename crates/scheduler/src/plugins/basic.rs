//! The small plugins: PrioritySort, NodeName, NodeUnschedulable, TaintToleration, NodePorts and
//! DefaultBinder.

use std::borrow::Cow;

use crate::cache::{NodeId, Taint};
use crate::framework::{
    BindPlugin, Binder, Binding, CycleContext, CycleState, Events, FilterPlugin, MAX_NODE_SCORE,
    NodeFilter, NodeScorer, Plugin, QueueSortPlugin, Reject, Scope, ScorePlugin, Status,
};
use crate::pod::{PodInfo, Toleration};
use crate::queue::QueuedPod;

/// Higher priority first, then earlier arrival (kube's `PrioritySort`).
#[derive(Debug, Default)]
pub struct PrioritySort;

impl Plugin for PrioritySort {
    fn name(&self) -> &'static str {
        "PrioritySort"
    }
}

impl QueueSortPlugin for PrioritySort {
    fn less(&self, a: &QueuedPod, b: &QueuedPod) -> bool {
        let (pa, pb) = (a.info.priority, b.info.priority);
        pa > pb || (pa == pb && a.timestamp < b.timestamp)
    }
}

/// A pod naming a node (`spec.nodeName`) fits only that node.
#[derive(Debug, Default)]
pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }
    fn events(&self) -> Events {
        Events::NODE_ADD
    }
}

struct NodeNameCheck<'a>(CycleContext<'a>, &'a str);

impl NodeFilter for NodeNameCheck<'_> {
    fn filter(&self, node: NodeId) -> Result<(), Reject> {
        if self.0.cache.node(node).name == self.1 {
            Ok(())
        } else {
            Err(Reject::unresolvable(
                "node(s) didn't match the requested node name",
            ))
        }
    }
}

impl FilterPlugin for NodeName {
    fn prepare<'a>(
        &'a self,
        cx: CycleContext<'a>,
        _: &'a CycleState,
    ) -> Option<Box<dyn NodeFilter + 'a>> {
        let name = cx.pod.node_name.as_deref()?;
        Some(Box::new(NodeNameCheck(cx, name)))
    }
}

/// Cordoned nodes take no pods, unless the pod tolerates the
/// `node.kubernetes.io/unschedulable:NoSchedule` taint.
#[derive(Debug, Default)]
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn events(&self) -> Events {
        Events::NODE_ADD.or(Events::NODE_UPDATE)
    }
}

struct CordonCheck<'a>(CycleContext<'a>);

impl NodeFilter for CordonCheck<'_> {
    fn scope(&self) -> Scope {
        Scope::Class
    }
    fn filter(&self, node: NodeId) -> Result<(), Reject> {
        if self.0.cache.node(node).unschedulable {
            Err(Reject::unresolvable("node(s) were unschedulable"))
        } else {
            Ok(())
        }
    }
}

impl FilterPlugin for NodeUnschedulable {
    fn prepare<'a>(
        &'a self,
        cx: CycleContext<'a>,
        _: &'a CycleState,
    ) -> Option<Box<dyn NodeFilter + 'a>> {
        let tolerated = cx
            .pod
            .tolerations
            .iter()
            .any(|t| t.tolerates("node.kubernetes.io/unschedulable", "", "NoSchedule"));
        (!tolerated).then(|| Box::new(CordonCheck(cx)) as Box<dyn NodeFilter>)
    }
}

/// Untolerated `NoSchedule`/`NoExecute` taints rule a node out; untolerated `PreferNoSchedule`
/// taints lower its score.
#[derive(Debug, Default)]
pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn events(&self) -> Events {
        Events::NODE_ADD.or(Events::NODE_UPDATE)
    }
}

/// The first `NoSchedule`/`NoExecute` taint none of `tolerations` tolerates.
pub fn untolerated<'t>(taints: &'t [Taint], tolerations: &[Toleration]) -> Option<&'t Taint> {
    taints.iter().find(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute")
            && !tolerations
                .iter()
                .any(|tol| tol.tolerates(&t.key, &t.value, &t.effect))
    })
}

struct TaintCheck<'a>(CycleContext<'a>);

impl NodeFilter for TaintCheck<'_> {
    fn scope(&self) -> Scope {
        Scope::Class
    }
    fn filter(&self, node: NodeId) -> Result<(), Reject> {
        match untolerated(&self.0.cache.node(node).taints, &self.0.pod.tolerations) {
            None => Ok(()),
            Some(t) => Err(Reject::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key, t.value
            ))),
        }
    }
}

impl FilterPlugin for TaintToleration {
    fn prepare<'a>(
        &'a self,
        cx: CycleContext<'a>,
        _: &'a CycleState,
    ) -> Option<Box<dyn NodeFilter + 'a>> {
        Some(Box::new(TaintCheck(cx)))
    }
}

struct TaintScorer<'a>(CycleContext<'a>, Vec<&'a Toleration>);

impl NodeScorer for TaintScorer<'_> {
    fn score(&self, node: NodeId) -> i64 {
        self.0
            .cache
            .node(node)
            .taints
            .iter()
            .filter(|t| {
                t.effect == "PreferNoSchedule"
                    && !self
                        .1
                        .iter()
                        .any(|tol| tol.tolerates(&t.key, &t.value, &t.effect))
            })
            .count() as i64
    }
    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(scores, true);
    }
}

impl ScorePlugin for TaintToleration {
    fn scope(&self, cx: CycleContext<'_>, _: &CycleState) -> Option<Scope> {
        cx.cache.any_prefer_no_schedule().then_some(Scope::Class)
    }
    fn prepare<'a>(&'a self, cx: CycleContext<'a>, _: &'a CycleState) -> Box<dyn NodeScorer + 'a> {
        let tols = cx
            .pod
            .tolerations
            .iter()
            .filter(|t| t.effect.as_deref().is_none_or(|e| e == "PreferNoSchedule"))
            .collect();
        Box::new(TaintScorer(cx, tols))
    }
}

/// kube's `DefaultNormalizeScore`: scale to `0..=100` by the maximum, reversed if asked.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

/// A node fits only if none of the pod's host ports is taken there.
#[derive(Debug, Default)]
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn events(&self) -> Events {
        Events::NODE_ADD.or(Events::POD_DELETE)
    }
}

struct PortCheck<'a>(CycleContext<'a>);

impl NodeFilter for PortCheck<'_> {
    fn filter(&self, node: NodeId) -> Result<(), Reject> {
        let used = self.0.cache.used_ports(node);
        if self
            .0
            .pod
            .host_ports
            .iter()
            .any(|p| used.iter().any(|u| u.conflicts(p)))
        {
            Err(Reject::unschedulable(Cow::Borrowed(
                "node(s) didn't have free ports for the requested pod ports",
            )))
        } else {
            Ok(())
        }
    }
}

impl FilterPlugin for NodePorts {
    fn prepare<'a>(
        &'a self,
        cx: CycleContext<'a>,
        _: &'a CycleState,
    ) -> Option<Box<dyn NodeFilter + 'a>> {
        (!cx.pod.host_ports.is_empty()).then(|| Box::new(PortCheck(cx)) as Box<dyn NodeFilter>)
    }
}

/// Binds through the caller's [`Binder`].
#[derive(Debug, Default)]
pub struct DefaultBinder;

impl Plugin for DefaultBinder {
    fn name(&self) -> &'static str {
        "DefaultBinder"
    }
}

impl BindPlugin for DefaultBinder {
    fn bind(
        &self,
        cx: CycleContext<'_>,
        node: NodeId,
        binder: &mut dyn Binder,
    ) -> Option<Result<(), Status>> {
        Some(
            binder
                .bind(&binding(cx.pod, &cx.cache.node(node).name))
                .map_err(|e| Status::error("DefaultBinder", e.0)),
        )
    }
}

/// The binding of `pod` to `node`.
pub fn binding(pod: &PodInfo, node: &str) -> Binding {
    Binding {
        namespace: pod.namespace.clone(),
        name: pod.pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.pod.metadata.uid.clone(),
        node: node.to_owned(),
    }
}
