//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets.
//!
//! A [`Controller`] over Deployments that `owns` ReplicaSets; `reconcile` finds the
//! Deployment's ReplicaSets (adopting orphans that match), picks the *new* one (whose template
//! equals the Deployment's, ignoring the `pod-template-hash` label) and creates it if needed,
//! then moves replicas from the old ones to it:
//! - **RollingUpdate**: scale the new ReplicaSet up while the pods of all ReplicaSets stay within
//!   `replicas + maxSurge`, scale old ones down while at least `replicas - maxUnavailable` pods
//!   stay available. Counts use what the pod cache shows when it is more conservative than the
//!   ReplicaSets' specs and statuses (pods not yet deleted count as present, pods of a
//!   ReplicaSet scaled down count as available only up to its new size), so the bounds hold at
//!   every moment a watcher of pods can observe, not only eventually;
//! - **Recreate**: scale every old ReplicaSet to zero, wait until their pods are gone, then
//!   scale the new one up.
//!
//! It keeps Kubernetes' bookkeeping so `kubectl rollout status|history|undo|pause|resume` work:
//! `deployment.kubernetes.io/revision` on ReplicaSets and the Deployment (a rolled-back
//! template's ReplicaSet gets the next revision and remembers its old ones in
//! `revision-history`), `revisionHistoryLimit` (oldest empty ReplicaSets are deleted),
//! `paused` (no new ReplicaSet, scaling only), `progressDeadlineSeconds` with the
//! `Progressing` and `Available` conditions, `observedGeneration`, `updatedReplicas` and
//! `availableReplicas`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::error::{Error, Result, is_conflict, is_not_found};
use crate::pods::{self, Selector};
use crate::runtime::clock::{Timestamp, plus_secs, until};
use crate::runtime::{self, Context, EventType, Index, Recorder};

/// The label that tells a Deployment's ReplicaSets (and their pods) apart.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// A ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet had before a rollback made it current again.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// replicas + maxSurge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Annotations of a Deployment never copied to its ReplicaSets (and kubectl's rollback never
/// copies back).
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

struct State {
    ctx: Context,
    rs: Index<ReplicaSet>,
    pods: Index<Pod>,
    recorder: Recorder,
}

/// Builds the Deployment controller on `ctx` (see [`crate::manager::ControllerSpec`]).
pub fn start(ctx: &Context) -> BoxFuture<'static, ()> {
    let deployments = ctx.informers.subscribe::<Deployment>();
    let reader = ctx.informers.reader::<Deployment>();
    let rs = ctx.informers.subscribe::<ReplicaSet>();
    let controller = Controller::for_shared_stream(deployments, reader).owns_shared_stream(rs);
    let state = Arc::new(State {
        rs: ctx.informers.index::<ReplicaSet>(),
        pods: ctx.informers.index::<Pod>(),
        recorder: ctx.recorder("deployment-controller"),
        ctx: ctx.clone(),
    });
    runtime::drive("deployment", controller, ctx, state, reconcile)
}

/// A ReplicaSet as the rollout sees it, with what the pod cache says about it.
#[derive(Debug, Clone)]
struct Rs {
    obj: Arc<ReplicaSet>,
    /// spec.replicas.
    spec: i32,
    /// Active pods in the cache.
    pods: i32,
    /// Available pods in the cache.
    available: i32,
}

impl Rs {
    /// Pods it may have at this moment: its size, or more while deletions are in flight.
    fn present(&self) -> i32 {
        self.spec.max(self.pods).max(self.status().replicas)
    }
    /// Pods that count as available: never more than its size (the extra are being deleted).
    fn counted_available(&self) -> i32 {
        self.available.min(self.spec).min(
            self.status()
                .available_replicas
                .unwrap_or(0)
                .max(self.available),
        )
    }
    fn status(&self) -> k8s_openapi::api::apps::v1::ReplicaSetStatus {
        self.obj.status.clone().unwrap_or_default()
    }
    fn revision(&self) -> i64 {
        revision_of(&self.obj.metadata)
    }
    fn name(&self) -> String {
        self.obj.name_any()
    }
}

/// The revision annotation of an object (0 when absent or malformed).
pub fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn reconcile(d: Arc<Deployment>, st: Arc<State>) -> Result<Action> {
    let ns = d.namespace().unwrap_or_default();
    let key = pods::key_of(&*d);
    let spec = d.spec.clone().unwrap_or_default();
    let selector = Selector::new(Some(&spec.selector), &format!("Deployment {key} selector"))?;
    if spec
        .selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.is_empty())
        && spec
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty())
    {
        st.recorder.publish(
            &*d,
            EventType::Warning,
            "SelectingAll",
            "This deployment is selecting all pods. A non-empty selector is required.",
        );
        return Ok(Action::await_change());
    }
    let uid = d.uid().unwrap_or_default();
    let candidates: Vec<Arc<ReplicaSet>> = st.rs.claimable(&ns, &uid);
    let rs_api: Api<ReplicaSet> = Api::namespaced(st.ctx.client.clone(), &ns);
    let owned = pods::claim(&rs_api, &*d, &uid, &selector, &candidates).await?;
    let now = st.ctx.clock.now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let view = |obj: Arc<ReplicaSet>| {
        let rs_uid = obj.uid().unwrap_or_default();
        let mine: Vec<_> = st
            .pods
            .owned_by(&rs_uid)
            .into_iter()
            .filter(|p| pods::is_active(p))
            .collect();
        Rs {
            spec: obj.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
            pods: i32::try_from(mine.len()).unwrap_or(i32::MAX),
            available: i32::try_from(
                mine.iter()
                    .filter(|p| pods::is_available(p, min_ready, now))
                    .count(),
            )
            .unwrap_or(i32::MAX),
            obj,
        }
    };
    let all: Vec<Rs> = owned.into_iter().map(view).collect();
    if d.metadata.deletion_timestamp.is_some() {
        return sync_status(&st, &d, &all, None, now).await;
    }
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        != "Recreate";
    let paused = spec.paused.unwrap_or(false);
    let create = !paused;
    let (new, old) = new_and_old(&st, &d, all, create && rolling, now).await?;
    if paused || scaling_event(&d, new.as_ref(), &old) {
        // Scaling only (Kubernetes' `sync`): replicas changed, or the rollout is paused.
        scale_proportionally(&st, &d, new.as_ref(), &old, rolling).await?;
        cleanup(&st, &d, &old).await?;
        return sync_status(&st, &d, &old, new.as_ref(), now).await;
    }
    if rolling {
        let n = new.as_ref().expect("created when missing");
        if reconcile_new(&st, &d, n, &old).await? {
            return sync_status(&st, &d, &old, Some(n), now).await;
        }
        if reconcile_old(&st, &d, n, &old).await? {
            return sync_status(&st, &d, &old, Some(n), now).await;
        }
    } else {
        // Recreate: every old ReplicaSet to zero, wait for their pods to go, then the new one.
        let mut scaled = false;
        for o in old.iter().filter(|o| o.spec > 0) {
            scale(&st, &d, o, 0).await?;
            scaled = true;
        }
        if scaled || old.iter().any(|o| o.pods > 0 || o.status().replicas > 0) {
            return sync_status(&st, &d, &old, new.as_ref(), now).await;
        }
        let n = match new {
            Some(n) => n,
            None => {
                let (n, _) = new_and_old(&st, &d, old.clone(), true, now).await?;
                n.expect("created when missing")
            }
        };
        let want = spec.replicas.unwrap_or(1);
        if n.spec != want {
            scale(&st, &d, &n, want).await?;
            return sync_status(&st, &d, &old, Some(&n), now).await;
        }
        cleanup(&st, &d, &old).await?;
        return sync_status(&st, &d, &old, Some(&n), now).await;
    }
    cleanup(&st, &d, &old).await?;
    sync_status(&st, &d, &old, new.as_ref(), now).await
}

/// The template hash Kubernetes puts in `pod-template-hash` (FNV-1a of the template,
/// salted with the collision count, in the safe alphabet).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(&canonical(template)).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(c.to_string().as_bytes());
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// Drops nulls, empty objects and empty lists, recursively: Kubernetes' semantic equality treats
/// them as absent (a template kubectl wrote back from Go carries `resources: {}` and
/// `creationTimestamp: null`).
fn prune(v: &mut Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => {
            m.retain(|_, x| !prune(x));
            m.is_empty()
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                prune(x);
            }
            a.is_empty()
        }
        _ => false,
    }
}

/// A template as compared and hashed: without the `pod-template-hash` label, pruned.
fn canonical(t: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(l) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove(POD_TEMPLATE_HASH);
    }
    prune(&mut v);
    v
}

/// Templates equal once the `pod-template-hash` label is ignored (Kubernetes' `EqualIgnoreHash`,
/// with its semantic equality: empty and absent are the same).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    canonical(a) == canonical(b)
}

/// Finds (or, if `create`, creates) the new ReplicaSet and brings its revision up to date;
/// returns it and the old ones.
async fn new_and_old(
    st: &State,
    d: &Deployment,
    all: Vec<Rs>,
    create: bool,
    now: Timestamp,
) -> Result<(Option<Rs>, Vec<Rs>)> {
    let spec = d.spec.clone().unwrap_or_default();
    let template = spec.template.clone();
    // The oldest ReplicaSet with the Deployment's template is the new one.
    let mut sorted = all;
    sorted.sort_by_key(|r| r.obj.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let pos = sorted.iter().position(|r| {
        r.obj
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| equal_ignore_hash(t, &template))
    });
    let new = pos.map(|i| sorted.remove(i));
    let old = sorted;
    let max_old = old.iter().map(Rs::revision).max().unwrap_or(0);
    let next = max_old + 1;
    let rs_api: Api<ReplicaSet> =
        Api::namespaced(st.ctx.client.clone(), &d.namespace().unwrap_or_default());
    let new = match new {
        Some(mut n) => {
            // A template rolled back to gets the next revision; it remembers the old one.
            let cur = n.revision();
            let min_ready_differs =
                n.obj.spec.as_ref().and_then(|s| s.min_ready_seconds) != spec.min_ready_seconds;
            if cur < next || min_ready_differs {
                let mut annotations = n.obj.annotations().clone();
                if cur < next {
                    annotations.insert(REVISION.into(), next.to_string());
                    if cur > 0 {
                        let mut hist: Vec<String> = annotations
                            .get(REVISION_HISTORY)
                            .map(|h| h.split(',').map(str::to_owned).collect())
                            .unwrap_or_default();
                        hist.push(cur.to_string());
                        annotations.insert(REVISION_HISTORY.into(), hist.join(","));
                    }
                }
                let patch = json!({
                    "metadata": {"annotations": annotations, "resourceVersion": n.obj.metadata.resource_version},
                    "spec": {"minReadySeconds": spec.min_ready_seconds},
                });
                let updated = rs_api
                    .patch(&n.name(), &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(Error::api(format!("update revision of {}", n.name())))?;
                n.obj = Arc::new(updated);
            }
            Some(n)
        }
        None if create => Some(create_new(st, d, &rs_api, &old, next, now).await?),
        None => None,
    };
    // The Deployment carries its new ReplicaSet's revision.
    if let Some(n) = &new {
        let rev = n.revision().to_string();
        if d.annotations().get(REVISION) != Some(&rev) {
            let api: Api<Deployment> =
                Api::namespaced(st.ctx.client.clone(), &d.namespace().unwrap_or_default());
            api.patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {REVISION: rev}}})),
            )
            .await
            .map_err(Error::api(format!("annotate Deployment {}", d.name_any())))?;
        }
    }
    Ok((new, old))
}

async fn create_new(
    st: &State,
    d: &Deployment,
    rs_api: &Api<ReplicaSet>,
    old: &[Rs],
    revision: i64,
    now: Timestamp,
) -> Result<Rs> {
    let spec = d.spec.clone().unwrap_or_default();
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collisions);
    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let want = spec.replicas.unwrap_or(1);
    // Rolling: as many as the surge allows now; Recreate: all (old ones are gone by now).
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        != "Recreate";
    let (surge, _) = surge_and_unavailable(d)?;
    let replicas = if rolling {
        let current: i32 = old.iter().map(Rs::present).sum();
        (want + surge - current).clamp(0, want)
    } else {
        want
    };
    let mut annotations: BTreeMap<String, String> = d
        .annotations()
        .iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(DESIRED_REPLICAS.into(), want.to_string());
    annotations.insert(MAX_REPLICAS.into(), (want + surge).to_string());
    let name = format!("{}-{hash}", d.name_any());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: d.namespace(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![pods::owner_ref(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    let created = match rs_api.create(&PostParams::default(), &rs).await {
        Ok(c) => {
            st.recorder.publish(
                d,
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {replicas}"),
            );
            set_progressing(
                st,
                d,
                "True",
                "NewReplicaSetCreated",
                &format!("Created new replica set \"{name}\""),
                now,
            )
            .await?;
            c
        }
        Err(e) if is_conflict(&e) => {
            let existing = rs_api
                .get(&name)
                .await
                .map_err(Error::api(format!("get ReplicaSet {name}")))?;
            let ours = pods::controlled_by(&existing, &d.uid().unwrap_or_default());
            let same = existing
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignore_hash(t, &spec.template));
            if !(ours && same) {
                // A hash collision: count it so the next hash differs.
                let api: Api<Deployment> =
                    Api::namespaced(st.ctx.client.clone(), &d.namespace().unwrap_or_default());
                let count = collisions.unwrap_or(0) + 1;
                api.patch_status(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"collisionCount": count}})),
                )
                .await
                .map_err(Error::api("record hash collision"))?;
            }
            return Err(Error::Api {
                context: format!("create ReplicaSet {name} (exists; waiting for the cache)"),
                source: e,
            });
        }
        Err(e) => return Err(Error::api(format!("create ReplicaSet {name}"))(e)),
    };
    Ok(Rs {
        obj: Arc::new(created),
        spec: replicas,
        pods: 0,
        available: 0,
    })
}

fn surge_and_unavailable(d: &Deployment) -> Result<(i32, i32)> {
    let spec = d.spec.clone().unwrap_or_default();
    let want = spec.replicas.unwrap_or(1);
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let surge = pods::int_or_percent(ru.and_then(|r| r.max_surge.as_ref()), want, true, "25%")?;
    let mut unavailable = pods::int_or_percent(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        want,
        false,
        "25%",
    )?;
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge, unavailable.min(want)))
}

/// Scales the new ReplicaSet up within maxSurge (or down to `replicas`). True if it scaled.
async fn reconcile_new(st: &State, d: &Deployment, new: &Rs, old: &[Rs]) -> Result<bool> {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if new.spec == want {
        return Ok(false);
    }
    if new.spec > want {
        scale(st, d, new, want).await?;
        return Ok(true);
    }
    let (surge, _) = surge_and_unavailable(d)?;
    let current: i32 = old.iter().map(Rs::present).sum::<i32>() + new.present();
    let max_total = want + surge;
    if current >= max_total {
        return Ok(false);
    }
    let up = (max_total - current).min(want - new.spec);
    if up <= 0 {
        return Ok(false);
    }
    scale(st, d, new, new.spec + up).await?;
    Ok(true)
}

/// Scales old ReplicaSets down as far as maxUnavailable allows. True if it scaled.
async fn reconcile_old(st: &State, d: &Deployment, new: &Rs, old: &[Rs]) -> Result<bool> {
    let old_count: i32 = old.iter().map(|o| o.spec).sum();
    if old_count == 0 {
        return Ok(false);
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let (_, max_unavailable) = surge_and_unavailable(d)?;
    let min_available = want - max_unavailable;
    let all_count: i32 = old_count + new.spec;
    let new_unavailable = (new.spec - new.counted_available()).max(0);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Ok(false);
    }
    let mut sorted: Vec<&Rs> = old.iter().filter(|o| o.spec > 0).collect();
    sorted.sort_by_key(|o| o.obj.metadata.creation_timestamp.as_ref().map(|t| t.0));
    // First the old pods that are not available anyway (they cost no availability).
    let mut cleaned = 0;
    let mut after: Vec<(Rs, i32)> = Vec::new();
    for o in &sorted {
        let unhealthy = (o.spec - o.counted_available()).max(0);
        let down = unhealthy.min(max_scaled_down - cleaned);
        let size = o.spec - down;
        if down > 0 {
            scale(st, d, o, size).await?;
            cleaned += down;
        }
        after.push(((*o).clone(), size));
    }
    // Then available ones, while the total available stays at least minAvailable.
    let available: i32 = after
        .iter()
        .map(|(o, size)| o.counted_available().min(*size))
        .sum::<i32>()
        + new.counted_available();
    let mut budget = available - min_available;
    let mut scaled = cleaned;
    for (o, size) in &after {
        if budget <= 0 {
            break;
        }
        if *size == 0 {
            continue;
        }
        let down = (*size).min(budget);
        scale(st, d, o, size - down).await?;
        budget -= down;
        scaled += down;
    }
    Ok(scaled > 0)
}

/// Whether `spec.replicas` changed since the active ReplicaSets were last sized (their
/// `desired-replicas` annotation differs; Kubernetes' `isScalingEvent`).
fn scaling_event(d: &Deployment, new: Option<&Rs>, old: &[Rs]) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    new.into_iter().chain(old).filter(|r| r.spec > 0).any(|r| {
        r.obj
            .annotations()
            .get(DESIRED_REPLICAS)
            .and_then(|v| v.parse::<i32>().ok())
            .is_some_and(|desired| desired != want)
    })
}

/// The new sizes when a Deployment is scaled mid-rollout (Kubernetes' `scale`): with one active
/// ReplicaSet (or none: the newest), it takes all the replicas; when the new ReplicaSet is
/// saturated the old ones go to zero; otherwise the replicas to add or remove (up to
/// `replicas + maxSurge` in all) are shared out in proportion to each active ReplicaSet's size
/// (against its `max-replicas` annotation), larger ones first, the rounding leftover to the
/// first. `sets` are (spec.replicas, max-replicas annotation), oldest first; returns (index
/// into `sets`, new size) for the active ones.
pub fn proportional_sizes(
    want: i32,
    surge: i32,
    status_replicas: i32,
    sets: &[(i32, Option<i32>)],
) -> Vec<(usize, i32)> {
    let mut order: Vec<usize> = (0..sets.len()).filter(|&i| sets[i].0 > 0).collect();
    let total: i32 = order.iter().map(|&i| sets[i].0).sum();
    let allowed = if want > 0 { want + surge } else { 0 };
    let to_add = allowed - total;
    // Larger first; ties: the newer (later in `sets`) first when adding, older when removing.
    order.sort_by(|&a, &b| {
        sets[b]
            .0
            .cmp(&sets[a].0)
            .then(if to_add > 0 { b.cmp(&a) } else { a.cmp(&b) })
    });
    let mut sizes: Vec<(usize, i32)> = order.iter().map(|&i| (i, sets[i].0)).collect();
    if to_add == 0 {
        return sizes;
    }
    let mut added = 0;
    for (i, size) in &mut sizes {
        let (replicas, annotated) = sets[*i];
        if added == to_add {
            break;
        }
        let fraction = if want == 0 {
            -replicas
        } else {
            let base = annotated
                .filter(|a| *a > 0)
                .unwrap_or(status_replicas.max(1));
            let scaled = f64::from(replicas) * f64::from(want + surge) / f64::from(base);
            // Kubernetes' RoundToInt32: half away from zero.
            #[allow(clippy::cast_possible_truncation)]
            let rounded = scaled.round() as i32;
            rounded - replicas
        };
        let left = to_add - added;
        let p = if to_add > 0 {
            fraction.min(left)
        } else {
            fraction.max(left)
        };
        *size += p;
        added += p;
    }
    if let Some(first) = sizes.first_mut() {
        first.1 = (first.1 + to_add - added).max(0);
    }
    sizes
}

async fn scale_proportionally(
    st: &State,
    d: &Deployment,
    new: Option<&Rs>,
    old: &[Rs],
    rolling: bool,
) -> Result<()> {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let active: Vec<&Rs> = new.into_iter().chain(old).filter(|r| r.spec > 0).collect();
    let one = match active[..] {
        [one] => Some(one),
        [] => new.or_else(|| old.iter().max_by_key(|r| r.revision())),
        _ => None,
    };
    if let Some(one) = one {
        return scale(st, d, one, want).await;
    }
    if let Some(n) = new {
        let saturated = n.spec == want
            && n.obj
                .annotations()
                .get(DESIRED_REPLICAS)
                .and_then(|v| v.parse::<i32>().ok())
                == Some(want)
            && n.status().available_replicas.unwrap_or(0) >= want;
        if saturated {
            for o in old.iter().filter(|o| o.spec > 0) {
                scale(st, d, o, 0).await?;
            }
            return Ok(());
        }
    }
    if !rolling {
        return Ok(());
    }
    // Oldest first, the new ReplicaSet last (the newest).
    let mut sets: Vec<&Rs> = old.iter().filter(|o| o.spec > 0).collect();
    sets.sort_by_key(|o| o.obj.metadata.creation_timestamp.as_ref().map(|t| t.0));
    sets.extend(new.filter(|n| n.spec > 0));
    let (surge, _) = surge_and_unavailable(d)?;
    let shape: Vec<(i32, Option<i32>)> = sets
        .iter()
        .map(|r| {
            (
                r.spec,
                r.obj
                    .annotations()
                    .get(MAX_REPLICAS)
                    .and_then(|v| v.parse().ok()),
            )
        })
        .collect();
    let status_replicas = d.status.as_ref().map_or(0, |s| s.replicas.unwrap_or(0));
    for (i, size) in proportional_sizes(want, surge, status_replicas, &shape) {
        scale(st, d, sets[i], size).await?;
    }
    Ok(())
}

/// Sets a ReplicaSet's size (failing on a stale cache rather than acting on it).
async fn scale(st: &State, d: &Deployment, rs: &Rs, to: i32) -> Result<()> {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let (surge, _) = surge_and_unavailable(d)?;
    let annotated = |k: &str| {
        rs.obj
            .annotations()
            .get(k)
            .and_then(|v| v.parse::<i32>().ok())
    };
    let annotations_current =
        annotated(DESIRED_REPLICAS) == Some(want) && annotated(MAX_REPLICAS) == Some(want + surge);
    if rs.spec == to && (annotations_current || to == 0) {
        return Ok(());
    }
    let api: Api<ReplicaSet> = Api::namespaced(
        st.ctx.client.clone(),
        &rs.obj.namespace().unwrap_or_default(),
    );
    let patch = json!({
        "metadata": {
            "resourceVersion": rs.obj.metadata.resource_version,
            "annotations": {DESIRED_REPLICAS: want.to_string(), MAX_REPLICAS: (want + surge).to_string()},
        },
        "spec": {"replicas": to},
    });
    api.patch(&rs.name(), &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(Error::api(format!("scale ReplicaSet {}", rs.name())))?;
    if to == rs.spec {
        return Ok(());
    }
    let verb = if to > rs.spec { "up" } else { "down" };
    st.recorder.publish(
        d,
        EventType::Normal,
        "ScalingReplicaSet",
        format!(
            "Scaled {verb} replica set {} from {} to {to}",
            rs.name(),
            rs.spec
        ),
    );
    Ok(())
}

/// Deletes the oldest empty ReplicaSets beyond `revisionHistoryLimit`.
async fn cleanup(st: &State, d: &Deployment, old: &[Rs]) -> Result<()> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0);
    let mut empty: Vec<&Rs> = old
        .iter()
        .filter(|o| {
            o.spec == 0
                && o.status().replicas == 0
                && o.pods == 0
                && o.obj.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let limit = usize::try_from(limit).unwrap_or(0);
    if empty.len() <= limit {
        return Ok(());
    }
    empty.sort_by_key(|o| o.revision());
    let api: Api<ReplicaSet> =
        Api::namespaced(st.ctx.client.clone(), &d.namespace().unwrap_or_default());
    for o in &empty[..empty.len() - limit] {
        match api.delete(&o.name(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::api(format!("delete old ReplicaSet {}", o.name()))(e)),
        }
    }
    Ok(())
}

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

/// Sets condition `type_` in `status` (keeping its transition time when the status is the
/// same, and its update time too when the reason is).
fn set_condition(
    status: &mut DeploymentStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    let old = conds.iter().position(|c| c.type_ == type_);
    let mut c = DeploymentCondition {
        type_: type_.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    if let Some(i) = old {
        let prev = &conds[i];
        if prev.status == value {
            if prev.reason.as_deref() == Some(reason) && prev.message.as_deref() == Some(message) {
                return;
            }
            c.last_transition_time = prev.last_transition_time.clone();
        }
        conds[i] = c;
    } else {
        conds.push(c);
    }
}

async fn set_progressing(
    st: &State,
    d: &Deployment,
    value: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Result<()> {
    let mut status = d.status.clone().unwrap_or_default();
    set_condition(&mut status, "Progressing", value, reason, message, now);
    write_status(st, d, &status).await
}

async fn write_status(st: &State, d: &Deployment, status: &DeploymentStatus) -> Result<()> {
    let api: Api<Deployment> =
        Api::namespaced(st.ctx.client.clone(), &d.namespace().unwrap_or_default());
    match api
        .patch_status(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::api(format!(
            "update status of Deployment {}",
            d.name_any()
        ))(e)),
    }
}

/// Computes and writes the status and conditions; requeues for the progress deadline.
async fn sync_status(
    st: &State,
    d: &Deployment,
    old: &[Rs],
    new: Option<&Rs>,
    now: Timestamp,
) -> Result<Action> {
    let spec = d.spec.clone().unwrap_or_default();
    let want = spec.replicas.unwrap_or(1);
    let all: Vec<&Rs> = old.iter().chain(new).collect();
    let sum = |f: &dyn Fn(&Rs) -> i32| all.iter().map(|r| f(r)).sum::<i32>();
    let replicas = sum(&|r| r.status().replicas);
    let available = sum(&|r| r.status().available_replicas.unwrap_or(0));
    let ready = sum(&|r| r.status().ready_replicas.unwrap_or(0));
    let total_spec = sum(&|r| r.spec);
    let updated = new.map_or(0, |n| n.status().replicas);
    let prev = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((total_spec - available).max(0)),
        collision_count: prev.collision_count,
        conditions: prev.conditions.clone(),
        terminating_replicas: None,
    };
    let (_, max_unavailable) = surge_and_unavailable(d)?;
    if available >= want - max_unavailable {
        set_condition(
            &mut status,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            now,
        );
    } else {
        set_condition(
            &mut status,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            now,
        );
    }
    let new_name = new.map(Rs::name).unwrap_or_default();
    let mut requeue = None;
    let deadline = spec.progress_deadline_seconds;
    if spec.paused.unwrap_or(false) {
        if condition(&status, "Progressing").and_then(|c| c.reason.as_deref())
            != Some("DeploymentPaused")
        {
            set_condition(
                &mut status,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
                now,
            );
        }
    } else if let Some(deadline) = deadline {
        let cur = condition(&status, "Progressing").cloned();
        if cur.as_ref().and_then(|c| c.reason.as_deref()) == Some("DeploymentPaused") {
            set_condition(
                &mut status,
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed",
                now,
            );
        }
        let cur = condition(&status, "Progressing").cloned();
        let complete = updated == want
            && replicas == want
            && available == want
            && total_spec == want
            && status.observed_generation >= d.metadata.generation;
        let already_complete = replicas == updated
            && cur.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        if !already_complete || !complete {
            let progressed = updated > prev.updated_replicas.unwrap_or(0)
                || ready > prev.ready_replicas.unwrap_or(0)
                || available > prev.available_replicas.unwrap_or(0)
                || replicas - updated
                    < prev.replicas.unwrap_or(0) - prev.updated_replicas.unwrap_or(0);
            if complete {
                set_condition(
                    &mut status,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                    now,
                );
            } else if progressed || cur.is_none() {
                let message = format!("ReplicaSet \"{new_name}\" is progressing.");
                let conds = status.conditions.get_or_insert_with(Vec::new);
                match conds.iter_mut().find(|c| c.type_ == "Progressing") {
                    Some(c) if c.status == "True" => {
                        c.reason = Some("ReplicaSetUpdated".into());
                        c.message = Some(message);
                        c.last_update_time = Some(Time(now));
                    }
                    _ => set_condition(
                        &mut status,
                        "Progressing",
                        "True",
                        "ReplicaSetUpdated",
                        &message,
                        now,
                    ),
                }
            } else if let Some(c) = &cur
                && c.reason.as_deref() != Some("ProgressDeadlineExceeded")
            {
                let since = c.last_update_time.as_ref().map_or(now, |t| t.0);
                let at = plus_secs(since, i64::from(deadline));
                if at <= now {
                    set_condition(
                        &mut status,
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        &format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                        now,
                    );
                    st.recorder.publish(
                        d,
                        EventType::Warning,
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                    );
                } else {
                    requeue = Some(until(now, at).max(Duration::from_millis(10)));
                }
            }
            if !complete && requeue.is_none() {
                let c = condition(&status, "Progressing");
                if c.and_then(|c| c.reason.as_deref()) != Some("ProgressDeadlineExceeded") {
                    let since = c
                        .and_then(|c| c.last_update_time.as_ref())
                        .map_or(now, |t| t.0);
                    let at = plus_secs(since, i64::from(deadline));
                    requeue = Some(until(now, at).max(Duration::from_secs(1)));
                }
            }
        }
    }
    if status != prev {
        write_status(st, d, &status).await?;
    }
    Ok(match requeue {
        Some(after) => runtime::requeue_at(&*st.ctx.clock, after),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_absent_fields_are_the_same_template() {
        let a: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap();
        let b: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "x", POD_TEMPLATE_HASH: "abc"}, "annotations": {}},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {}, "env": []}]}
        }))
        .unwrap();
        assert!(equal_ignore_hash(&a, &b));
        assert_eq!(template_hash(&a, None), template_hash(&b, None));
        assert_ne!(template_hash(&a, None), template_hash(&a, Some(1)));
        let c: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "j"}]}
        }))
        .unwrap();
        assert!(!equal_ignore_hash(&a, &c));
    }
}

#[cfg(test)]
mod proportional_tests {
    use super::proportional_sizes;

    #[test]
    fn scaling_mid_rollout_shares_in_proportion() {
        // Kubernetes' documentation example: 10 replicas, maxSurge 3, mid-rollout the old RS
        // has 8 and the new 5 (13 = 10 + 3); scaled to 15 (surge 3 -> 18 allowed): +5 shared
        // 8*18/13 = 11 (+3), 5*18/13 = 7 (+2).
        let mut sizes = proportional_sizes(15, 3, 13, &[(8, Some(13)), (5, Some(13))]);
        sizes.sort();
        assert_eq!(sizes, vec![(0, 11), (1, 7)]);
        // Down to 5 (allowed 8): -5 shared, the larger first, leftover to the first.
        let mut sizes = proportional_sizes(5, 3, 13, &[(8, Some(13)), (5, Some(13))]);
        sizes.sort();
        let total: i32 = sizes.iter().map(|s| s.1).sum();
        assert_eq!(total, 8);
        assert_eq!(sizes, vec![(0, 5), (1, 3)]);
        // To zero: everything goes.
        let sizes = proportional_sizes(0, 3, 13, &[(8, Some(13)), (5, Some(13))]);
        assert!(sizes.iter().all(|s| s.1 == 0), "{sizes:?}");
    }
}
