//! The DaemonSet controller: one pod per eligible node.
//!
//! A [`Controller`] over DaemonSets that `owns` Pods and watches Nodes (any node change
//! re-checks every DaemonSet). A node is eligible when the pod template's `nodeSelector` and
//! required node affinity match it and it has no `NoSchedule`/`NoExecute` taint the pod does not
//! tolerate (counting the tolerations every DaemonSet pod gets: not-ready, unreachable,
//! disk/memory/pid pressure, unschedulable). As Kubernetes does, the pod is placed by node
//! affinity (`matchFields metadata.name In [node]`), not by `nodeName`, so the scheduler binds
//! it. Pods on nodes that stopped being eligible (or left) are deleted, as are duplicates.
//! Each template version is recorded as a `ControllerRevision` (`<ds>-<hash>`, pods labelled
//! `controller-revision-hash`); `RollingUpdate` replaces old pods at most `maxUnavailable` at
//! a time (counting pods that are not available), `OnDelete` waits for users to delete them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, Toleration,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::deployment::template_hash;
use crate::error::{Error, Result, is_not_found};
use crate::pods::{self, Selector};
use crate::replicaset::{by_name, seen_pod};
use crate::revision;
use crate::runtime::{self, Context, EventType, Index, Recorder};

pub use crate::revision::REVISION_HASH;

struct State {
    ctx: Context,
    pods: Index<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    recorder: Recorder,
}

/// Builds the DaemonSet controller on `ctx` (see [`crate::manager::ControllerSpec`]).
pub fn start(ctx: &Context) -> BoxFuture<'static, ()> {
    let sets = ctx.informers.subscribe::<DaemonSet>();
    let reader = ctx.informers.reader::<DaemonSet>();
    let all = reader.clone();
    let controller = Controller::for_shared_stream(sets, reader)
        .owns_shared_stream(ctx.informers.subscribe::<Pod>())
        .watches_shared_stream(ctx.informers.subscribe::<Node>(), move |_node| {
            all.state()
                .iter()
                .map(|d| ObjectRef::from_obj(&**d))
                .collect::<Vec<_>>()
        });
    let state = Arc::new(State {
        pods: ctx.informers.index::<Pod>(),
        nodes: ctx.informers.reader::<Node>(),
        revisions: ctx.informers.reader::<ControllerRevision>(),
        recorder: ctx.recorder("daemonset-controller"),
        ctx: ctx.clone(),
    });
    runtime::drive("daemonset", controller, ctx, state, reconcile)
}

/// The tolerations every DaemonSet pod gets (Kubernetes' `AddOrUpdateDaemonPodTolerations`).
pub fn default_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

fn tolerates(tolerations: &[Toleration], key: &str, value: &str, effect: &str) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == effect);
        let key_ok = t.key.as_deref().is_none_or(|k| k.is_empty() || k == key);
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == value,
        };
        effect_ok && key_ok && value_ok
    })
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.labels();
    let req = |r: &NodeSelectorRequirement, v: Option<&str>| -> bool {
        let vals = r.values.clone().unwrap_or_default();
        match r.operator.as_str() {
            "In" => v.is_some_and(|v| vals.iter().any(|x| x == v)),
            "NotIn" => v.is_none_or(|v| !vals.iter().any(|x| x == v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            "Gt" | "Lt" => {
                let (Some(v), Some(x)) = (
                    v.and_then(|v| v.parse::<i64>().ok()),
                    vals.first().and_then(|x| x.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if r.operator == "Gt" { v > x } else { v < x }
            }
            _ => false,
        }
    };
    let name = node.name_any();
    term.match_expressions
        .iter()
        .flatten()
        .all(|r| req(r, labels.get(&r.key).map(String::as_str)))
        && term
            .match_fields
            .iter()
            .flatten()
            .all(|r| r.key == "metadata.name" && req(r, Some(&name)))
}

/// Whether the DaemonSet's pod should run on `node`.
pub fn should_run(ds: &DaemonSet, node: &Node) -> bool {
    let Some(spec) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return false;
    };
    let labels = node.labels();
    if !spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    if let Some(sel) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        && !sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node))
    {
        return false;
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(default_tolerations());
    node.spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .all(|t| {
            t.effect == "PreferNoSchedule"
                || tolerates(
                    &tolerations,
                    &t.key,
                    t.value.as_deref().unwrap_or(""),
                    &t.effect,
                )
        })
}

/// The node a DaemonSet pod is for: its nodeName, else its node-affinity pin.
fn node_of(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = &spec.node_name {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

async fn reconcile(ds: Arc<DaemonSet>, st: Arc<State>) -> Result<Action> {
    let ns = ds.namespace().unwrap_or_default();
    let key = format!("DaemonSet/{}", pods::key_of(&*ds));
    if ds.metadata.deletion_timestamp.is_some() {
        st.ctx.expectations.forget(&key);
        return Ok(Action::await_change());
    }
    let spec = ds.spec.clone().unwrap_or_default();
    let uid = ds.uid().unwrap_or_default();
    let selector = Selector::new(Some(&spec.selector), &format!("DaemonSet {key} selector"))?;
    let in_ns: Vec<Arc<Pod>> = st.pods.claimable(&ns, &uid);
    let names = by_name(&in_ns);
    let satisfied = st.ctx.expectations.satisfied(&key, |n| seen_pod(&names, n));
    let api: Api<Pod> = Api::namespaced(st.ctx.client.clone(), &ns);
    let owned = pods::claim(&api, &*ds, &uid, &selector, &in_ns).await?;
    let hash = template_hash(
        &spec.template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    );
    let mine = revision::owned_by(&st.revisions, &ns, &uid);
    revision::ensure(
        &st.ctx.client,
        &*ds,
        &mine,
        spec.selector.match_labels.clone().unwrap_or_default(),
        &spec.template,
        &hash,
    )
    .await?;
    let nodes = st.nodes.state();
    let now = st.ctx.clock.now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for p in owned.iter().filter(|p| pods::is_active(p)) {
        by_node
            .entry(node_of(p).unwrap_or_default())
            .or_default()
            .push(p.clone());
    }
    let eligible: Vec<&Arc<Node>> = nodes.iter().filter(|n| should_run(&ds, n)).collect();
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let desired = i32::try_from(eligible.len()).unwrap_or(i32::MAX);
    let rolling_params = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let max_surge = if rolling {
        pods::int_or_percent(
            rolling_params.and_then(|r| r.max_surge.as_ref()),
            desired,
            true,
            "0",
        )?
    } else {
        0
    };
    let current = |p: &Pod| p.labels().get(REVISION_HASH) == Some(&hash);
    let mut create_on: Vec<String> = Vec::new();
    let mut delete: Vec<Arc<Pod>> = Vec::new();
    for n in &eligible {
        match by_node.get(&n.name_any()) {
            None => create_on.push(n.name_any()),
            Some(ps) if ps.len() > 1 => {
                let mut ps = ps.clone();
                ps.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
                if max_surge > 0 {
                    // Surging: one old and one new pod may share a node; keep the oldest
                    // of each.
                    let (new, old): (Vec<_>, Vec<_>) = ps.into_iter().partition(|p| current(p));
                    delete.extend(new.into_iter().skip(1));
                    delete.extend(old.into_iter().skip(1));
                } else {
                    delete.extend(ps.into_iter().skip(1));
                }
            }
            Some(_) => {}
        }
    }
    let misscheduled: Vec<Arc<Pod>> = by_node
        .iter()
        .filter(|(n, _)| !eligible.iter().any(|e| e.name_any() == **n))
        .flat_map(|(_, ps)| ps.clone())
        .collect();
    delete.extend(misscheduled.iter().cloned());
    if rolling && satisfied && max_surge > 0 {
        // Surge (Kubernetes' `rollingUpdate` with maxSurge): a new pod starts beside the old
        // one, which goes once the new one is available; at most maxSurge nodes are surging,
        // and a node whose old pod is unavailable anyway gets its new pod at once.
        let (plan_create, plan_delete) = surge(&eligible, &by_node, &current, max_surge, |p| {
            pods::is_available(p, min_ready, now)
        });
        create_on.extend(plan_create);
        delete.extend(plan_delete);
    } else if rolling && satisfied {
        // Old pods go, at most maxUnavailable unavailable at once.
        let max_unavailable = pods::int_or_percent(
            rolling_params.and_then(|r| r.max_unavailable.as_ref()),
            desired,
            true,
            "1",
        )?
        .max(1);
        let mut unavailable = i32::try_from(create_on.len()).unwrap_or(0);
        let mut old_available = Vec::new();
        for n in &eligible {
            if let Some(p) = by_node.get(&n.name_any()).and_then(|ps| ps.first()) {
                let available = pods::is_available(p, min_ready, now);
                if !available {
                    unavailable += 1;
                }
                if !current(p) {
                    if available {
                        old_available.push(p.clone());
                    } else {
                        // An old pod that is not available anyway: replace it now.
                        delete.push(p.clone());
                    }
                }
            }
        }
        for p in old_available {
            if unavailable >= max_unavailable {
                break;
            }
            delete.push(p);
            unavailable += 1;
        }
    }
    if satisfied {
        for p in &delete {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: p.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            st.ctx
                .expectations
                .deleted(&key, &p.name_any(), &p.uid().unwrap_or_default());
            match api.delete(&p.name_any(), &dp).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(Error::api(format!("delete pod {} of {key}", p.name_any()))(
                        e,
                    ));
                }
            }
        }
        for node in &create_on {
            let mut pod =
                pods::pod_from_template(&spec.template, &*ds, &format!("{}-", ds.name_any()));
            pod.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(REVISION_HASH.into(), hash.clone());
            if let Some(ps) = pod.spec.as_mut() {
                let aff = ps.affinity.get_or_insert_with(Default::default);
                let na = aff.node_affinity.get_or_insert_with(NodeAffinity::default);
                na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: None,
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.name".into(),
                            operator: "In".into(),
                            values: Some(vec![node.clone()]),
                        }]),
                    }],
                });
                let tol = ps.tolerations.get_or_insert_with(Vec::new);
                for t in default_tolerations() {
                    if !tol.iter().any(|x| x.key == t.key && x.effect == t.effect) {
                        tol.push(t);
                    }
                }
            }
            let p = api
                .create(&PostParams::default(), &pod)
                .await
                .map_err(Error::api(format!("create pod of {key} for node {node}")))?;
            st.ctx.expectations.created(&key, &p.name_any());
        }
        if !create_on.is_empty() {
            st.recorder.publish(
                &*ds,
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created {} pod(s)", create_on.len()),
            );
        }
    }
    // Status.
    let scheduled: Vec<&Arc<Pod>> = eligible
        .iter()
        .filter_map(|n| by_node.get(&n.name_any()).and_then(|ps| ps.first()))
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(scheduled.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let desired = i32::try_from(eligible.len()).unwrap_or(i32::MAX);
    let available = count(&|p| pods::is_available(p, min_ready, now));
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: i32::try_from(scheduled.len()).unwrap_or(i32::MAX),
        number_misscheduled: i32::try_from(misscheduled.len()).unwrap_or(i32::MAX),
        number_ready: count(&|p| pods::is_ready(p)),
        number_available: Some(available),
        number_unavailable: Some((desired - available).max(0)),
        updated_number_scheduled: Some(count(&|p| current(p))),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: None,
    };
    if ds.status.as_ref() != Some(&status) {
        let dsapi: Api<DaemonSet> = Api::namespaced(st.ctx.client.clone(), &ns);
        match dsapi
            .patch_status(
                &ds.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::api(format!("update status of {key}"))(e)),
        }
    }
    Ok(if satisfied {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(1))
    })
}

/// The surge step of a rolling update: nodes to create a new pod on, old pods to delete.
fn surge(
    eligible: &[&Arc<Node>],
    by_node: &BTreeMap<String, Vec<Arc<Pod>>>,
    current: &dyn Fn(&Pod) -> bool,
    max_surge: i32,
    available: impl Fn(&Pod) -> bool,
) -> (Vec<String>, Vec<Arc<Pod>>) {
    let mut create = Vec::new();
    let mut candidates = Vec::new();
    let mut delete = Vec::new();
    let mut surging = 0;
    for n in eligible {
        let name = n.name_any();
        let Some(ps) = by_node.get(&name) else {
            continue;
        };
        let new = ps.iter().find(|p| current(p));
        let old = ps.iter().find(|p| !current(p));
        match (old, new) {
            (None, _) => {}
            (Some(old), None) if !available(old) => create.push(name),
            (Some(_), None) => candidates.push(name),
            (Some(old), Some(new)) => {
                if available(new) {
                    delete.push(old.clone());
                } else {
                    surging += 1;
                }
            }
        }
    }
    let room = usize::try_from((max_surge - surging).max(0)).unwrap_or(0);
    create.extend(candidates.into_iter().take(room));
    (create, delete)
}
