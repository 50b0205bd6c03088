//! Coscheduling (gang scheduling, after kubernetes-sigs/scheduler-plugins): pods labelled
//! `pod-group.scheduling.sigs.k8s.io/name` with `.../min-available: N` are placed all together
//! or not at all. Members wait at Permit (assumed, not bound) until N of the group are placed;
//! then all are allowed. When a member cannot be placed, or a waiting member times out, the
//! waiting siblings are rejected and their places released.
//!
//! Groups are declared with labels, as scheduler-plugins' first (label-based) coscheduling did,
//! not with its `PodGroup` custom resource (`scheduling.x-k8s.io/v1alpha1`, `spec.minMember`):
//! the API server serves no custom resources yet, and a label needs no second object to agree
//! with. A `PodGroup` watcher would only have to feed `(name, minMember)` to the same cache
//! counts.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::cache::NodeId;
use crate::error::{Error, Result};
use crate::framework::{
    CycleContext, CycleState, Diagnosis, Permit, PermitPlugin, Plugin, PostFilterPlugin,
    PostFilterResult, PreFilterPlugin, PreFilterResult, Simulation, Status, WaitingPods,
};
use crate::pod::PodInfo;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Args {
    permit_waiting_time_seconds: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Coscheduling {
    timeout: Duration,
}

impl Default for Coscheduling {
    fn default() -> Self {
        Coscheduling {
            timeout: Duration::from_secs(60),
        }
    }
}

impl Coscheduling {
    /// Reads `CoschedulingArgs` (`permitWaitingTimeSeconds`).
    pub fn from_args(args: Option<&serde_json::Value>) -> Result<Self> {
        let Some(v) = args else {
            return Ok(Self::default());
        };
        let a: Args = serde_json::from_value(v.clone())
            .map_err(|e| Error::Config(format!("Coscheduling args: {e}")))?;
        Ok(Coscheduling {
            timeout: Duration::from_secs(a.permit_waiting_time_seconds),
        })
    }

    fn reject_siblings(&self, pod: &PodInfo, waiting: &mut WaitingPods, why: &str) {
        let Some((g, _)) = &pod.group else { return };
        let siblings: Vec<Arc<str>> = waiting
            .iter()
            .filter(|(_, p)| p.group.as_ref().is_some_and(|(h, _)| h == g))
            .map(|(k, _)| k.clone())
            .collect();
        for k in siblings {
            waiting.reject(&k, why);
        }
    }
}

impl Plugin for Coscheduling {
    fn name(&self) -> &'static str {
        "Coscheduling"
    }
}

impl PreFilterPlugin for Coscheduling {
    fn pre_filter(
        &self,
        cx: CycleContext<'_>,
        _: &mut CycleState,
    ) -> Result<PreFilterResult, Status> {
        if let Some((g, min)) = &cx.pod.group {
            let known = cx.cache.group_known(g);
            if known < *min {
                return Err(Status::unresolvable(
                    "Coscheduling",
                    format!(
                        "pre-filter pod {} cannot find enough sibling pods, current pods number: {known}, minMember: {min}",
                        cx.pod.key
                    ),
                ));
            }
        }
        Ok(PreFilterResult::default())
    }
}

impl PermitPlugin for Coscheduling {
    fn permit(
        &self,
        cx: CycleContext<'_>,
        _: &mut CycleState,
        _: NodeId,
        waiting: &mut WaitingPods,
    ) -> Permit {
        let Some((g, min)) = &cx.pod.group else {
            return Permit::Allow;
        };
        if cx.cache.group_placed(g) < *min {
            return Permit::Wait(self.timeout);
        }
        let siblings: Vec<Arc<str>> = waiting
            .iter()
            .filter(|(_, p)| p.group.as_ref().is_some_and(|(h, _)| h == g))
            .map(|(k, _)| k.clone())
            .collect();
        for k in siblings {
            waiting.allow(&k, "Coscheduling");
        }
        Permit::Allow
    }

    fn rejected(&self, pod: &PodInfo, waiting: &mut WaitingPods) {
        self.reject_siblings(pod, waiting, "a member of the pod group was rejected");
    }
}

impl PostFilterPlugin for Coscheduling {
    fn post_filter(
        &self,
        pod: &Arc<PodInfo>,
        sim: &mut Simulation<'_>,
        _: &Diagnosis,
    ) -> PostFilterResult {
        if pod.group.is_some() {
            self.reject_siblings(
                pod,
                sim.waiting,
                "a member of the pod group is unschedulable",
            );
        }
        PostFilterResult::NotHelpful(String::new())
    }
}
