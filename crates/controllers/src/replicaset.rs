//! The ReplicaSet controller: keeps `spec.replicas` pods matching the selector alive.
//!
//! Written the way a kube-runtime operator is: a [`Controller`] over ReplicaSets that also
//! `owns` Pods (a pod change wakes its controller), one `reconcile` function that compares the
//! desired count with the active pods in the shared cache and acts, and a status update.
//! What Kubernetes adds, and this does too:
//! - **expectations**: creates and deletes issued but not yet in the cache block the next
//!   count, so a stale cache never creates duplicates ([`crate::runtime::expectations`]);
//! - **burst limits**: at most `burst_replicas` (500) creations or deletions per sync, created
//!   in slow-start batches (1, 2, 4, ...) that stop at the first failure, so a quota or a broken
//!   template fails after one request, not 500;
//! - **deletion ranking** on scale-down: unscheduled before scheduled, pending before running,
//!   not ready before ready, recently ready before long ready, more restarts first, newest
//!   first (`kubectl scale` then removes the pods that matter least);
//! - **adoption and orphaning**: an orphan pod matching the selector is adopted (controller
//!   owner reference), an owned pod that stopped matching is released.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::error::{Error, Result, is_not_found};
use crate::pods::{self, Selector};
use crate::runtime::{self, Context, EventType, Index, Recorder, Seen};

/// The controller's state: the shared context, its caches and its recorder.
struct State {
    ctx: Context,
    pods: Index<Pod>,
    recorder: Recorder,
}

/// Builds the ReplicaSet controller on `ctx` (see [`crate::manager::ControllerSpec`]).
pub fn start(ctx: &Context) -> BoxFuture<'static, ()> {
    let rs = ctx.informers.subscribe::<ReplicaSet>();
    let rs_store = ctx.informers.reader::<ReplicaSet>();
    let pods = ctx.informers.subscribe::<Pod>();
    let controller = Controller::for_shared_stream(rs, rs_store).owns_shared_stream(pods);
    let state = Arc::new(State {
        pods: ctx.informers.index::<Pod>(),
        recorder: ctx.recorder("replicaset-controller"),
        ctx: ctx.clone(),
    });
    runtime::drive("replicaset", controller, ctx, state, reconcile)
}

/// Looks `name` up among `pods` (an owner's claimable pods: what it created is owned by it,
/// what it deleted was), for expectations.
pub(crate) fn seen_pod<'a>(pods: &'a HashMap<&str, &Arc<Pod>>, name: &str) -> Seen<'a> {
    match pods.get(name) {
        Some(p) => Seen::Present {
            uid: p.metadata.uid.as_deref().unwrap_or(""),
            terminating: p.metadata.deletion_timestamp.is_some(),
        },
        None => Seen::Absent,
    }
}

/// The pods `owner` may claim in `ns` (its own and the orphans), by name.
pub(crate) fn by_name(pods: &[Arc<Pod>]) -> HashMap<&str, &Arc<Pod>> {
    pods.iter()
        .filter_map(|p| Some((p.metadata.name.as_deref()?, p)))
        .collect()
}

async fn reconcile(rs: Arc<ReplicaSet>, st: Arc<State>) -> Result<Action> {
    let ns = rs.namespace().unwrap_or_default();
    let key = format!("ReplicaSet/{}", pods::key_of(&*rs));
    if rs.metadata.deletion_timestamp.is_some() {
        st.ctx.expectations.forget(&key);
        return Ok(Action::await_change());
    }
    let uid = rs.uid().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let selector = Selector::new(Some(&spec.selector), &format!("ReplicaSet {key} selector"))?;
    let in_ns: Vec<Arc<Pod>> = st.pods.claimable(&ns, &uid);
    let names = by_name(&in_ns);
    let satisfied = st
        .ctx
        .expectations
        .satisfied(&key, |name| seen_pod(&names, name));
    let api: Api<Pod> = Api::namespaced(st.ctx.client.clone(), &ns);
    let owned = pods::claim(&api, &*rs, &uid, &selector, &in_ns).await?;
    let active: Vec<Arc<Pod>> = owned
        .iter()
        .filter(|p| pods::is_active(p))
        .cloned()
        .collect();
    let want = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let mut manage_err = None;
    if satisfied && let Err(e) = manage(&st, &rs, &key, &api, &active, want).await {
        manage_err = Some(e);
    }
    let now = st.ctx.clock.now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let status = ReplicaSetStatus {
        replicas: i32::try_from(active.len()).unwrap_or(i32::MAX),
        fully_labeled_replicas: Some(count(&active, |p| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.as_ref())
                .is_none_or(|want| want.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        })),
        ready_replicas: Some(count(&active, pods::is_ready)),
        available_replicas: Some(count(&active, |p| pods::is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    update_status(&st, &rs, status.clone()).await?;
    if let Some(e) = manage_err {
        return Err(e);
    }
    if !satisfied {
        // The watch will wake us when the cache catches up; this is the safety net.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // Pods ready but not yet available: look again when they become available.
    if min_ready > 0 && status.ready_replicas != status.available_replicas {
        return Ok(runtime::requeue_at(
            &*st.ctx.clock,
            Duration::from_secs(u64::try_from(min_ready).unwrap_or(1)),
        ));
    }
    Ok(Action::await_change())
}

fn count(pods: &[Arc<Pod>], f: impl Fn(&Pod) -> bool) -> i32 {
    i32::try_from(pods.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
}

/// Creates or deletes pods to reach `want` (Kubernetes' `manageReplicas`).
async fn manage(
    st: &State,
    rs: &ReplicaSet,
    key: &str,
    api: &Api<Pod>,
    active: &[Arc<Pod>],
    want: usize,
) -> Result<()> {
    let burst = st.ctx.settings.burst_replicas.max(1);
    if active.len() < want {
        let n = (want - active.len()).min(burst);
        let Some(template) = rs.spec.as_ref().and_then(|s| s.template.as_ref()) else {
            return Err(Error::Invalid {
                what: format!("ReplicaSet {key}"),
                message: "spec.template is required".into(),
            });
        };
        let pod = pods::pod_from_template(template, rs, &format!("{}-", rs.name_any()));
        let created = slow_start(n, |_| {
            let pod = pod.clone();
            async move {
                let p = api.create(&PostParams::default(), &pod).await?;
                st.ctx.expectations.created(key, &p.name_any());
                Ok::<_, kube::Error>(())
            }
        })
        .await;
        st.recorder.pods_created(rs, key, created)?;
    } else if active.len() > want {
        let n = (active.len() - want).min(burst);
        let mut ranked: Vec<&Arc<Pod>> = active.iter().collect();
        ranked.sort_by(|a, b| deletion_rank(a, b));
        let victims = &ranked[..n];
        let results = futures::future::join_all(victims.iter().map(|p| async move {
            let name = p.name_any();
            let uid = p.uid().unwrap_or_default();
            st.ctx.expectations.deleted(key, &name, &uid);
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => Ok(name),
                Err(e) if is_not_found(&e) => Ok(name),
                Err(e) => Err(e),
            }
        }))
        .await;
        let deleted = results.iter().filter(|r| r.is_ok()).count();
        if deleted > 0 {
            st.recorder.publish(
                rs,
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted {deleted} pod(s)"),
            );
        }
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            return Err(Error::api(format!("delete pods of {key}"))(e));
        }
    }
    Ok(())
}

/// Runs `n` calls of `f` in batches of 1, 2, 4, ... (Kubernetes' `slowStartBatch`), stopping
/// after the first batch with a failure. Returns how many succeeded and the first error.
pub(crate) async fn slow_start<F, Fut, E>(n: usize, f: F) -> (usize, Option<E>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), E>>,
{
    let mut done = 0;
    let mut batch = 1;
    while done < n {
        let size = batch.min(n - done);
        let results = futures::future::join_all((done..done + size).map(&f)).await;
        let mut first_err = None;
        let mut ok = 0;
        for r in results {
            match r {
                Ok(()) => ok += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        done += ok;
        if first_err.is_some() {
            return (done, first_err);
        }
        batch *= 2;
    }
    (done, None)
}

/// Which of two pods to delete first (Kubernetes' `ActivePods` ordering): the smaller is
/// deleted first.
pub fn deletion_rank(a: &Pod, b: &Pod) -> Ordering {
    let scheduled = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let phase_rank = |p: &Pod| match pods::phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| {
                cs.iter().map(|c| c.restart_count).max().unwrap_or(0)
            })
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    scheduled(a)
        .cmp(&scheduled(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(pods::is_ready(a).cmp(&pods::is_ready(b)))
        // Both ready: the more recently ready goes first.
        .then_with(|| match (pods::ready_since(a), pods::ready_since(b)) {
            (Some(Some(x)), Some(Some(y))) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        .then(restarts(b).cmp(&restarts(a)))
        // Newest first.
        .then(created(b).cmp(&created(a)))
}

async fn update_status(st: &State, rs: &ReplicaSet, status: ReplicaSetStatus) -> Result<()> {
    let old = rs.status.clone().unwrap_or_default();
    if old == status {
        return Ok(());
    }
    let api: Api<ReplicaSet> =
        Api::namespaced(st.ctx.client.clone(), &rs.namespace().unwrap_or_default());
    match api
        .patch_status(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::api(format!(
            "update status of ReplicaSet {}",
            rs.name_any()
        ))(e)),
    }
}

/// The key a ReplicaSet's expectations are recorded under.
pub fn expectations_key(rs: &ReplicaSet) -> String {
    format!("ReplicaSet/{}", pods::key_of(rs))
}
