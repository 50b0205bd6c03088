//! The StatefulSet controller: pods with stable identities, created, removed and updated in
//! order.
//!
//! A [`Controller`] over StatefulSets that `owns` Pods. Pod `i` of StatefulSet `web` is always
//! called `web-i`, with `hostname: web-i` and `subdomain: <serviceName>` (so the governing
//! headless Service gives it the stable DNS name `web-i.<serviceName>`), and the labels
//! `statefulset.kubernetes.io/pod-name` and `apps.kubernetes.io/pod-index`. As in Kubernetes:
//! - **OrderedReady** (the default): pods are created `0, 1, 2, ...`, each only once every lower
//!   ordinal is Running and Ready; on scale-down the highest ordinal goes first, and the next
//!   only once it is gone and the rest are healthy. **Parallel** creates and deletes without
//!   waiting.
//! - **ControllerRevisions** hold each template version (`<name>-<hash>`, shared with the
//!   DaemonSet controller: [`crate::revision`]); pods carry the revision's name in
//!   `controller-revision-hash`. `status.currentRevision` is the version pods below the
//!   partition run, `status.updateRevision` the newest; when every pod is updated and ready the
//!   first becomes the second.
//! - **RollingUpdate** replaces pods from the highest ordinal down to `partition`, one at a
//!   time, each after the previous is Running and Ready again; pods below `partition` keep (and
//!   are recreated at) the current revision. **OnDelete** leaves running pods alone and
//!   recreates deleted ones at the update revision.
//! - A pod that failed or succeeded is deleted and recreated under the same name.
//!
//! **volumeClaimTemplates**: Berth's API server does not serve PersistentVolumeClaims, so no
//! claim is created. So that a template whose containers mount a claim by name still runs, each
//! claim template becomes an `emptyDir` volume of that name in the pod (unless the template
//! already has a volume of that name): the pod starts, but its data lives and dies with the pod
//! instead of following the ordinal. A Warning Event (`VolumeClaimTemplatesNotServed`) says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, Pod, PodTemplateSpec, Volume};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::deployment::template_hash;
use crate::error::{Error, Result, is_conflict, is_not_found};
use crate::pods::{self, Selector};
use crate::replicaset::{by_name, seen_pod};
use crate::revision::{self, REVISION_HASH};
use crate::runtime::{self, Context, EventType, Index, Recorder};

/// The label with a StatefulSet pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

struct State {
    ctx: Context,
    pods: Index<Pod>,
    revisions: Store<ControllerRevision>,
    recorder: Recorder,
}

/// Builds the StatefulSet controller on `ctx` (see [`crate::manager::ControllerSpec`]).
pub fn start(ctx: &Context) -> BoxFuture<'static, ()> {
    let sets = ctx.informers.subscribe::<StatefulSet>();
    let reader = ctx.informers.reader::<StatefulSet>();
    let controller = Controller::for_shared_stream(sets, reader)
        .owns_shared_stream(ctx.informers.subscribe::<Pod>());
    let state = Arc::new(State {
        pods: ctx.informers.index::<Pod>(),
        revisions: ctx.informers.reader::<ControllerRevision>(),
        recorder: ctx.recorder("statefulset-controller"),
        ctx: ctx.clone(),
    });
    runtime::drive("statefulset", controller, ctx, state, reconcile)
}

/// The ordinal of pod `pod_name` of StatefulSet `set`, if the name is `<set>-<n>`.
pub fn ordinal_of(set: &str, pod_name: &str) -> Option<usize> {
    let rest = pod_name.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

/// Running and Ready, not being deleted (Kubernetes' `isRunningAndReady`).
fn healthy(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && pods::phase(p) == "Running" && pods::is_ready(p)
}

fn finished(p: &Pod) -> bool {
    matches!(pods::phase(p), "Succeeded" | "Failed")
}

/// One step the controller takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create pod `ordinal`, at the update revision (`true`) or the current one.
    Create {
        /// Its ordinal.
        ordinal: usize,
        /// Whether it gets the update revision.
        update: bool,
    },
    /// Delete this pod (condemned, finished, or to be replaced by the update revision).
    Delete(String),
}

/// What a StatefulSet's pods look like to [`plan`].
#[derive(Debug, Clone)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Running and Ready and not terminating.
    pub healthy: bool,
    /// Has a deletionTimestamp.
    pub terminating: bool,
    /// Phase Succeeded or Failed.
    pub finished: bool,
    /// Runs the update revision.
    pub updated: bool,
}

/// The StatefulSet's shape for [`plan`].
#[derive(Debug, Clone, Copy)]
pub struct PlanSpec {
    /// `spec.replicas`.
    pub replicas: usize,
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    /// `updateStrategy.type: RollingUpdate` (else OnDelete).
    pub rolling: bool,
    /// `updateStrategy.rollingUpdate.partition`.
    pub partition: usize,
}

/// Decides the next steps from the pods by ordinal (Kubernetes' `updateStatefulSet`): under
/// OrderedReady at most one step and none while a lower ordinal is unhealthy; under Parallel
/// every creation and deletion at once; a rolling update always one pod at a time.
pub fn plan(spec: PlanSpec, by_ordinal: &BTreeMap<usize, PodView>) -> Vec<Step> {
    let ordered = !spec.parallel;
    let mut steps = Vec::new();
    let mut unhealthy = 0usize;
    for ord in 0..spec.replicas {
        let update = !(spec.rolling && ord < spec.partition);
        match by_ordinal.get(&ord) {
            None => {
                steps.push(Step::Create {
                    ordinal: ord,
                    update,
                });
                unhealthy += 1;
            }
            Some(p) if p.finished && !p.terminating => {
                steps.push(Step::Delete(p.name.clone()));
                unhealthy += 1;
            }
            Some(p) if !p.healthy => unhealthy += 1,
            Some(_) => {}
        }
        if ordered && unhealthy > 0 {
            return steps;
        }
    }
    // Condemned pods, highest ordinal first.
    for (_, p) in by_ordinal.range(spec.replicas..).rev() {
        if p.terminating {
            if ordered {
                return steps;
            }
            continue;
        }
        if ordered && unhealthy > 0 {
            return steps;
        }
        steps.push(Step::Delete(p.name.clone()));
        if ordered {
            return steps;
        }
    }
    if !steps.is_empty() || unhealthy > 0 || !spec.rolling {
        return steps;
    }
    // Rolling update: from the highest ordinal down to the partition, one at a time.
    for ord in (spec.partition.min(spec.replicas)..spec.replicas).rev() {
        let Some(p) = by_ordinal.get(&ord) else {
            return steps;
        };
        if !p.updated && !p.terminating {
            steps.push(Step::Delete(p.name.clone()));
            return steps;
        }
        if !p.healthy {
            return steps;
        }
    }
    steps
}

async fn reconcile(set: Arc<StatefulSet>, st: Arc<State>) -> Result<Action> {
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let key = format!("StatefulSet/{}", pods::key_of(&*set));
    if set.metadata.deletion_timestamp.is_some() {
        st.ctx.expectations.forget(&key);
        return Ok(Action::await_change());
    }
    let spec = set.spec.clone().unwrap_or_default();
    let uid = set.uid().unwrap_or_default();
    let selector = Selector::new(Some(&spec.selector), &format!("StatefulSet {key} selector"))?;
    let in_ns: Vec<Arc<Pod>> = st.pods.claimable(&ns, &uid);
    let names = by_name(&in_ns);
    let satisfied = st.ctx.expectations.satisfied(&key, |n| seen_pod(&names, n));
    let api: Api<Pod> = Api::namespaced(st.ctx.client.clone(), &ns);
    let owned = pods::claim(&api, &*set, &uid, &selector, &in_ns).await?;

    // Revisions.
    let collision = set.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collision);
    let mine = revision::owned_by(&st.revisions, &ns, &uid);
    let update_rev = revision::ensure(
        &st.ctx.client,
        &*set,
        &mine,
        spec.selector.match_labels.clone().unwrap_or_default(),
        &spec.template,
        &hash,
    )
    .await?;
    let current_rev = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|c| mine.iter().any(|r| r.name_any() == *c))
        .unwrap_or_else(|| update_rev.clone());
    let current_template = mine
        .iter()
        .find(|r| r.name_any() == current_rev)
        .and_then(|r| revision::template_of(r))
        .unwrap_or_else(|| spec.template.clone());

    let revision_of = |p: &Pod| p.labels().get(REVISION_HASH).cloned().unwrap_or_default();
    let mut by_ordinal: BTreeMap<usize, PodView> = BTreeMap::new();
    let mut pod_of: BTreeMap<usize, Arc<Pod>> = BTreeMap::new();
    for p in &owned {
        let Some(ord) = ordinal_of(&name, &p.name_any()) else {
            continue;
        };
        by_ordinal.insert(
            ord,
            PodView {
                name: p.name_any(),
                healthy: healthy(p),
                terminating: p.metadata.deletion_timestamp.is_some(),
                finished: finished(p),
                updated: revision_of(p) == update_rev,
            },
        );
        pod_of.insert(ord, p.clone());
    }
    let replicas = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let plan_spec = PlanSpec {
        replicas,
        parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
        rolling,
        partition: usize::try_from(partition.max(0)).unwrap_or(0),
    };
    let steps = if satisfied {
        plan(plan_spec, &by_ordinal)
    } else {
        Vec::new()
    };
    if !steps.is_empty()
        && spec
            .volume_claim_templates
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        && steps.iter().any(|s| matches!(s, Step::Create { .. }))
    {
        st.recorder.publish(
            &*set,
            EventType::Warning,
            "VolumeClaimTemplatesNotServed",
            "PersistentVolumeClaims are not served: each claim template is an emptyDir volume \
             that lives as long as its pod"
                .to_owned(),
        );
    }
    let mut first_err = None;
    let results = futures::future::join_all(steps.iter().map(|step| {
        let st = &st;
        let api = &api;
        let key = &key;
        let set = &*set;
        let (update_rev, current_rev) = (&update_rev, &current_rev);
        let (template, current_template) = (&spec.template, &current_template);
        let pod_of = &pod_of;
        async move {
            match step {
                Step::Create { ordinal, update } => {
                    let (t, rev) = if *update {
                        (template, update_rev)
                    } else {
                        (current_template, current_rev)
                    };
                    let pod = pod_for(set, t, rev, *ordinal);
                    let pod_name = pod.name_any();
                    st.ctx.expectations.created(key, &pod_name);
                    match api.create(&PostParams::default(), &pod).await {
                        Ok(_) => Ok(Some((
                            "SuccessfulCreate",
                            format!(
                                "create Pod {pod_name} in StatefulSet {} successful",
                                set.name_any()
                            ),
                        ))),
                        // The old pod of that name is still going away: the watch brings us back.
                        Err(e) if is_conflict(&e) => Ok(None),
                        Err(e) => Err(Error::api(format!("create pod {pod_name} of {key}"))(e)),
                    }
                }
                Step::Delete(pod_name) => {
                    let p = pod_of.values().find(|p| p.name_any() == *pod_name);
                    let uid = p.and_then(|p| p.uid()).unwrap_or_default();
                    st.ctx.expectations.deleted(key, pod_name, &uid);
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: Some(uid),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    match api.delete(pod_name, &dp).await {
                        Ok(_) => Ok(Some((
                            "SuccessfulDelete",
                            format!(
                                "delete Pod {pod_name} in StatefulSet {} successful",
                                set.name_any()
                            ),
                        ))),
                        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(None),
                        Err(e) => Err(Error::api(format!("delete pod {pod_name} of {key}"))(e)),
                    }
                }
            }
        }
    }))
    .await;
    for r in results {
        match r {
            Ok(Some((reason, msg))) => {
                st.recorder.publish(&*set, EventType::Normal, reason, msg);
            }
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }

    // Status.
    let now = st.ctx.clock.now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let live: Vec<&Arc<Pod>> = pod_of
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let ready = count(&|p| healthy(p));
    let updated = count(&|p| revision_of(p) == update_rev);
    let want = i32::try_from(replicas).unwrap_or(i32::MAX);
    let (current_rev, current) = if updated == want && ready == want && live.len() == replicas {
        (update_rev.clone(), updated)
    } else {
        (
            current_rev.clone(),
            count(&|p| revision_of(p) == current_rev),
        )
    };
    let status = StatefulSetStatus {
        replicas: i32::try_from(live.len()).unwrap_or(i32::MAX),
        ready_replicas: Some(ready),
        available_replicas: Some(count(&|p| {
            healthy(p) && pods::is_available(p, min_ready, now)
        })),
        current_replicas: Some(current),
        updated_replicas: Some(updated),
        current_revision: Some(current_rev.clone()),
        update_revision: Some(update_rev.clone()),
        observed_generation: set.metadata.generation,
        collision_count: collision,
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    if set.status.as_ref() != Some(&status) {
        let sapi: Api<StatefulSet> = Api::namespaced(st.ctx.client.clone(), &ns);
        match sapi
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::api(format!("update status of {key}"))(e)),
        }
    }
    // History beyond revisionHistoryLimit, never a revision in use.
    let in_use: Vec<String> = owned.iter().map(|p| revision_of(p)).collect();
    let mut keep: Vec<&str> = in_use.iter().map(String::as_str).collect();
    keep.push(&current_rev);
    keep.push(&update_rev);
    revision::prune(
        &st.ctx.client,
        &ns,
        &mine,
        &keep,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    if let Some(e) = first_err {
        return Err(e);
    }
    if !satisfied {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if min_ready > 0 && status.ready_replicas != status.available_replicas {
        return Ok(runtime::requeue_at(
            &*st.ctx.clock,
            Duration::from_secs(u64::try_from(min_ready).unwrap_or(1)),
        ));
    }
    Ok(Action::await_change())
}

/// Pod `ordinal` of `set` from `template` at revision `rev`.
pub fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, rev: &str, ordinal: usize) -> Pod {
    let name = format!("{}-{ordinal}", set.name_any());
    let mut pod = pods::pod_from_template(template, set, "");
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(REVISION_HASH.into(), rev.to_owned());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    let service = set.spec.as_ref().and_then(|s| s.service_name.clone());
    let claims: Vec<String> = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    if let Some(spec) = pod.spec.as_mut() {
        spec.hostname = Some(name);
        if let Some(svc) = service.filter(|s| !s.is_empty()) {
            spec.subdomain = Some(svc);
        }
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        for claim in claims {
            if !volumes.iter().any(|v| v.name == claim) {
                volumes.push(Volume {
                    name: claim,
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                });
            }
        }
        if volumes.is_empty() {
            spec.volumes = None;
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, healthy: bool, updated: bool) -> PodView {
        PodView {
            name: name.into(),
            healthy,
            terminating: false,
            finished: false,
            updated,
        }
    }

    fn spec(replicas: usize, parallel: bool, partition: usize) -> PlanSpec {
        PlanSpec {
            replicas,
            parallel,
            rolling: true,
            partition,
        }
    }

    #[test]
    fn ordinals_parse_only_exact_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webs-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time() {
        let mut pods = BTreeMap::new();
        assert_eq!(
            plan(spec(3, false, 0), &pods),
            vec![Step::Create {
                ordinal: 0,
                update: true
            }]
        );
        pods.insert(0, view("web-0", false, true));
        assert!(plan(spec(3, false, 0), &pods).is_empty(), "web-0 not ready");
        pods.insert(0, view("web-0", true, true));
        assert_eq!(
            plan(spec(3, false, 0), &pods),
            vec![Step::Create {
                ordinal: 1,
                update: true
            }]
        );
        // Parallel: everything missing at once.
        let pods = BTreeMap::new();
        assert_eq!(plan(spec(3, true, 0), &pods).len(), 3);
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first() {
        let pods: BTreeMap<usize, PodView> = (0..4)
            .map(|i| (i, view(&format!("web-{i}"), true, true)))
            .collect();
        assert_eq!(
            plan(spec(2, false, 0), &pods),
            vec![Step::Delete("web-3".into())]
        );
        let mut waiting = pods.clone();
        waiting.get_mut(&3).unwrap().terminating = true;
        assert!(
            plan(spec(2, false, 0), &waiting).is_empty(),
            "web-2 waits until web-3 is gone"
        );
        assert_eq!(
            plan(spec(2, true, 0), &pods),
            vec![Step::Delete("web-3".into()), Step::Delete("web-2".into())]
        );
    }

    #[test]
    fn rolling_update_goes_down_to_the_partition() {
        let mut pods: BTreeMap<usize, PodView> = (0..3)
            .map(|i| (i, view(&format!("web-{i}"), true, false)))
            .collect();
        assert_eq!(
            plan(spec(3, false, 1), &pods),
            vec![Step::Delete("web-2".into())]
        );
        pods.insert(2, view("web-2", false, true));
        assert!(plan(spec(3, false, 1), &pods).is_empty(), "web-2 not ready");
        pods.insert(2, view("web-2", true, true));
        assert_eq!(
            plan(spec(3, false, 1), &pods),
            vec![Step::Delete("web-1".into())]
        );
        pods.insert(1, view("web-1", true, true));
        assert!(
            plan(spec(3, false, 1), &pods).is_empty(),
            "web-0 is below the partition"
        );
        // A missing pod below the partition comes back at the current revision.
        pods.remove(&0);
        assert_eq!(
            plan(spec(3, false, 1), &pods),
            vec![Step::Create {
                ordinal: 0,
                update: false
            }]
        );
    }
}
