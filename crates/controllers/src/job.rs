//! The Job controller: runs pods to completion.
//!
//! A [`Controller`] over Jobs that `owns` Pods. Each reconcile counts the Job's pods by phase
//! and then, as Kubernetes' job controller does:
//! - keeps `min(parallelism, remaining completions)` pods active (creating with expectations and
//!   slow-start batches, deleting the least valuable extras);
//! - **Indexed** mode: every index `0..completions` gets its own pod (annotation and label
//!   `batch.kubernetes.io/job-completion-index`, env `JOB_COMPLETION_INDEX`, hostname
//!   `<job>-<index>`), an index completes once, `status.completedIndexes` lists them (`0-2,4`);
//! - **backoffLimit**: after a failure the next pod waits an exponential backoff (10 s doubling,
//!   at most 6 min; [`Settings::job_backoff`](crate::runtime::Settings)), and more than
//!   `backoffLimit` failures fail the Job (`Failed`, reason `BackoffLimitExceeded`);
//! - **activeDeadlineSeconds**: a Job running longer fails (`DeadlineExceeded`);
//! - on success the `Complete` condition and `completionTime`; finished Jobs have their active
//!   pods deleted, and with `ttlSecondsAfterFinished` the Job itself (and, through the garbage
//!   collector, its pods) is deleted that long after it finished;
//! - **podFailurePolicy**: the first rule matching a failed pod (`onExitCodes` with `In`/`NotIn`
//!   on a container's non-zero exit code, optionally one container; `onPodConditions` such as
//!   `DisruptionTarget`) decides: `FailJob` fails the Job at once (reason `PodFailurePolicy`),
//!   `Ignore` does not count the failure against `backoffLimit` (the pod is replaced),
//!   `Count` (and no match) counts it;
//! - `suspend: true` deletes the active pods and sets the `Suspended` condition.
//!
//! Every time-based decision reads the context's [`Clock`](crate::runtime::Clock).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;

use crate::error::{Error, Result, is_not_found};
use crate::pods::{self, Selector};
use crate::replicaset::{by_name, deletion_rank, seen_pod, slow_start};
use crate::runtime::clock::{Timestamp, plus, plus_secs, until};
use crate::runtime::{self, Context, EventType, Index, Recorder};

/// The annotation and label holding an Indexed Job pod's index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

struct State {
    ctx: Context,
    pods: Index<Pod>,
    recorder: Recorder,
    /// Per Job: (failures seen, when the last new failure was seen).
    failures: Mutex<HashMap<String, (i32, Timestamp)>>,
}

/// Builds the Job controller on `ctx` (see [`crate::manager::ControllerSpec`]).
pub fn start(ctx: &Context) -> BoxFuture<'static, ()> {
    let jobs = ctx.informers.subscribe::<Job>();
    let reader = ctx.informers.reader::<Job>();
    let pods = ctx.informers.subscribe::<Pod>();
    let controller = Controller::for_shared_stream(jobs, reader).owns_shared_stream(pods);
    let state = Arc::new(State {
        pods: ctx.informers.index::<Pod>(),
        recorder: ctx.recorder("job-controller"),
        ctx: ctx.clone(),
        failures: Mutex::new(HashMap::new()),
    });
    runtime::drive("job", controller, ctx, state, reconcile)
}

fn has_condition(status: &JobStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn set_condition(
    status: &mut JobStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value {
            c.last_transition_time = Some(Time(now));
        }
        c.status = value.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(Time(now));
    } else {
        conds.push(JobCondition {
            type_: type_.into(),
            status: value.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_probe_time: Some(Time(now)),
            last_transition_time: Some(Time(now)),
        });
    }
}

/// The index of an Indexed Job's pod.
fn index_of(p: &Pod) -> Option<i32> {
    p.annotations()
        .get(COMPLETION_INDEX)
        .or_else(|| p.labels().get(COMPLETION_INDEX))
        .and_then(|v| v.parse().ok())
}

/// `0-2,4` for {0, 1, 2, 4}.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut out = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().unwrap_or(end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

async fn reconcile(job: Arc<Job>, st: Arc<State>) -> Result<Action> {
    let ns = job.namespace().unwrap_or_default();
    let key = format!("Job/{}", pods::key_of(&*job));
    let now = st.ctx.clock.now();
    let spec = job.spec.clone().unwrap_or_default();
    let old_status = job.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    let api: Api<Pod> = Api::namespaced(st.ctx.client.clone(), &ns);
    if job.metadata.deletion_timestamp.is_some() {
        st.ctx.expectations.forget(&key);
        return Ok(Action::await_change());
    }
    let finished = has_condition(&status, "Complete") || has_condition(&status, "Failed");
    if finished {
        return ttl(&st, &job, &status, now).await;
    }
    let uid = job.uid().unwrap_or_default();
    let selector = Selector::new(spec.selector.as_ref(), &format!("Job {key} selector"))?;
    let in_ns: Vec<Arc<Pod>> = st.pods.claimable(&ns, &uid);
    let names = by_name(&in_ns);
    let satisfied = st.ctx.expectations.satisfied(&key, |n| seen_pod(&names, n));
    let owned = pods::claim(&api, &*job, &uid, &selector, &in_ns).await?;
    let active: Vec<Arc<Pod>> = owned
        .iter()
        .filter(|p| pods::is_active(p))
        .cloned()
        .collect();
    let succeeded_pods: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| pods::phase(p) == "Succeeded")
        .collect();
    // podFailurePolicy: each failed pod's first matching rule decides whether it fails the
    // Job, is ignored (not counted against backoffLimit) or counts.
    let policy = spec.pod_failure_policy.as_ref();
    let mut fail_job: Option<String> = None;
    let mut counted = 0usize;
    for p in owned.iter().filter(|p| pods::phase(p) == "Failed") {
        match policy.and_then(|pol| failure_rule(pol, p)) {
            Some((_, FailureAction::Ignore)) => {}
            Some((why, FailureAction::FailJob)) => {
                counted += 1;
                fail_job.get_or_insert(why);
            }
            _ => counted += 1,
        }
    }
    let failed = i32::try_from(counted)
        .unwrap_or(i32::MAX)
        .max(status.failed.unwrap_or(0));
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let mut done_indexes = BTreeSet::new();
    let succeeded = if indexed {
        for p in &succeeded_pods {
            if let Some(i) = index_of(p)
                && completions.is_none_or(|c| i < c)
            {
                done_indexes.insert(i);
            }
        }
        i32::try_from(done_indexes.len()).unwrap_or(i32::MAX)
    } else {
        i32::try_from(succeeded_pods.len())
            .unwrap_or(i32::MAX)
            .max(status.succeeded.unwrap_or(0))
    };
    if status.start_time.is_none() && !spec.suspend.unwrap_or(false) {
        status.start_time = Some(Time(now));
    }
    let mut requeue: Option<Duration> = None;
    // Decide whether the Job is finished.
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    let mut failure: Option<(&str, String)> = None;
    if !complete {
        if let Some(message) = fail_job {
            failure = Some(("PodFailurePolicy", message));
        } else if failed > backoff_limit {
            failure = Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".into(),
            ));
        } else if let (Some(deadline), Some(start)) =
            (spec.active_deadline_seconds, status.start_time.as_ref())
        {
            let end = plus_secs(start.0, deadline);
            if now >= end {
                failure = Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline".into(),
                ));
            } else {
                requeue = Some(until(now, end));
            }
        }
    }
    let mut manage_err = None;
    if complete || failure.is_some() {
        // Finished: no pod stays running.
        delete_pods(&st, &key, &api, &active, active.len()).await?;
        if complete {
            set_condition(
                &mut status,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            );
            set_condition(
                &mut status,
                "Complete",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            );
            status.completion_time = Some(Time(now));
            st.recorder
                .publish(&*job, EventType::Normal, "Completed", "Job completed");
        } else if let Some((reason, message)) = &failure {
            set_condition(&mut status, "FailureTarget", "True", reason, message, now);
            set_condition(&mut status, "Failed", "True", reason, message, now);
            st.recorder
                .publish(&*job, EventType::Warning, reason, message.clone());
        }
    } else if spec.suspend.unwrap_or(false) {
        delete_pods(&st, &key, &api, &active, active.len()).await?;
        set_condition(
            &mut status,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            now,
        );
    } else if satisfied {
        if has_condition(&status, "Suspended") {
            set_condition(
                &mut status,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now,
            );
        }
        // Exponential backoff after failures.
        let wait = {
            let mut f = st.failures.lock();
            let e = f.entry(key.clone()).or_insert((0, now));
            if failed > e.0 {
                *e = (failed, now);
            }
            if failed > 0 {
                let base = st.ctx.settings.job_backoff;
                let delay = base
                    .checked_mul(1u32 << u32::try_from(failed - 1).unwrap_or(0).min(20))
                    .unwrap_or(st.ctx.settings.job_backoff_max)
                    .min(st.ctx.settings.job_backoff_max);
                let ready_at = plus(e.1, delay);
                (ready_at > now).then(|| until(now, ready_at))
            } else {
                None
            }
        };
        if let Some(w) = wait {
            requeue = Some(requeue.map_or(w, |r| r.min(w)));
        } else if let Err(e) = manage(
            &st,
            &job,
            &key,
            &api,
            &active,
            indexed,
            &done_indexes,
            succeeded,
            parallelism,
        )
        .await
        {
            manage_err = Some(e);
        }
    }
    status.active = Some(i32::try_from(active.len()).unwrap_or(i32::MAX));
    status.ready = Some(
        i32::try_from(active.iter().filter(|p| pods::is_ready(p)).count()).unwrap_or(i32::MAX),
    );
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    if indexed {
        let s = format_indexes(&done_indexes);
        status.completed_indexes = (!s.is_empty()).then_some(s);
    }
    if status != old_status {
        let jobs: Api<Job> = Api::namespaced(st.ctx.client.clone(), &ns);
        match jobs
            .patch_status(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::api(format!("update status of Job {key}"))(e)),
        }
    }
    if let Some(e) = manage_err {
        return Err(e);
    }
    Ok(match requeue {
        Some(d) => runtime::requeue_at(&*st.ctx.clock, d),
        None if !satisfied => Action::requeue(Duration::from_secs(1)),
        None => Action::await_change(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn manage(
    st: &State,
    job: &Job,
    key: &str,
    api: &Api<Pod>,
    active: &[Arc<Pod>],
    indexed: bool,
    done: &BTreeSet<i32>,
    succeeded: i32,
    parallelism: i32,
) -> Result<()> {
    let spec = job.spec.clone().unwrap_or_default();
    let completions = spec.completions;
    let want = match completions {
        Some(c) => parallelism.min(c - succeeded).max(0),
        None if succeeded > 0 => 0,
        None => parallelism,
    };
    let want = usize::try_from(want).unwrap_or(0);
    let template = spec.template.clone();
    if indexed {
        // Pods of finished indexes or duplicates of an index go first.
        let mut by_index: HashMap<i32, Vec<&Arc<Pod>>> = HashMap::new();
        let mut extra: Vec<Arc<Pod>> = Vec::new();
        for p in active {
            match index_of(p) {
                Some(i) if !done.contains(&i) && completions.is_none_or(|c| i < c) => {
                    by_index.entry(i).or_default().push(p)
                }
                _ => extra.push(p.clone()),
            }
        }
        for pods in by_index.values_mut() {
            pods.sort_by(|a, b| deletion_rank(b, a));
            extra.extend(pods.iter().skip(1).map(|p| (*p).clone()));
        }
        let running = by_index.len();
        if !extra.is_empty() {
            delete_pods(st, key, api, &extra, extra.len()).await?;
        }
        if running < want {
            let total = completions.unwrap_or(0);
            let pending: Vec<i32> = (0..total)
                .filter(|i| !done.contains(i) && !by_index.contains_key(i))
                .take(want - running)
                .collect();
            let created = slow_start(pending.len(), |k| {
                let i = pending[k];
                let mut pod =
                    pods::pod_from_template(&template, job, &format!("{}-{i}-", job.name_any()));
                pod.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(COMPLETION_INDEX.into(), i.to_string());
                pod.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(COMPLETION_INDEX.into(), i.to_string());
                if let Some(spec) = pod.spec.as_mut() {
                    spec.hostname = Some(format!("{}-{i}", job.name_any()));
                    for c in spec
                        .containers
                        .iter_mut()
                        .chain(spec.init_containers.iter_mut().flatten())
                    {
                        c.env.get_or_insert_with(Vec::new).push(EnvVar {
                            name: "JOB_COMPLETION_INDEX".into(),
                            value: Some(i.to_string()),
                            value_from: None,
                        });
                    }
                }
                create(st, key, api, pod)
            })
            .await;
            st.recorder.pods_created(job, key, created)?;
        }
        return Ok(());
    }
    if active.len() > want {
        delete_pods(st, key, api, active, active.len() - want).await?;
    } else if active.len() < want {
        let n = (want - active.len()).min(st.ctx.settings.burst_replicas);
        let pod = pods::pod_from_template(&template, job, &format!("{}-", job.name_any()));
        let created = slow_start(n, |_| create(st, key, api, pod.clone())).await;
        st.recorder.pods_created(job, key, created)?;
    }
    Ok(())
}

async fn create(st: &State, key: &str, api: &Api<Pod>, pod: Pod) -> Result<(), kube::Error> {
    let p = api.create(&PostParams::default(), &pod).await?;
    st.ctx.expectations.created(key, &p.name_any());
    Ok(())
}

/// Deletes the `n` least valuable of `pods`.
async fn delete_pods(
    st: &State,
    key: &str,
    api: &Api<Pod>,
    pods: &[Arc<Pod>],
    n: usize,
) -> Result<()> {
    let mut ranked: Vec<&Arc<Pod>> = pods.iter().collect();
    ranked.sort_by(|a, b| deletion_rank(a, b));
    for p in ranked.into_iter().take(n) {
        let uid = p.uid().unwrap_or_default();
        st.ctx.expectations.deleted(key, &p.name_any(), &uid);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
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
    Ok(())
}

/// `ttlSecondsAfterFinished`: delete the finished Job (and its pods) when its time is up.
async fn ttl(st: &State, job: &Job, status: &JobStatus, now: Timestamp) -> Result<Action> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    let finished_at = status
        .completion_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| {
            status
                .conditions
                .iter()
                .flatten()
                .filter(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
                .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
                .max()
        })
        .unwrap_or(now);
    let expires = plus_secs(finished_at, i64::from(ttl));
    if expires > now {
        let left = until(now, expires);
        return Ok(runtime::requeue_at(&*st.ctx.clock, left));
    }
    let api: Api<Job> =
        Api::namespaced(st.ctx.client.clone(), &job.namespace().unwrap_or_default());
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&job.name_any(), &dp).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(Error::api(format!("delete expired Job {}", job.name_any()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_are_compressed_to_intervals() {
        let s: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&s), "0-2,4,6-7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }
}

/// What a podFailurePolicy rule does with a failed pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    /// Fail the Job.
    FailJob,
    /// Do not count the failure.
    Ignore,
    /// Count it against backoffLimit (the default).
    Count,
    /// Fail the pod's index (Indexed Jobs with backoffLimitPerIndex; counted here).
    FailIndex,
}

/// The first rule of `policy` matching failed pod `pod`: a message saying why, and the action.
pub fn failure_rule(
    policy: &k8s_openapi::api::batch::v1::PodFailurePolicy,
    pod: &Pod,
) -> Option<(String, FailureAction)> {
    let status = pod.status.as_ref();
    let terminated: Vec<(&str, i32)> = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .filter_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            Some((c.name.as_str(), t.exit_code))
        })
        .collect();
    let conditions: Vec<(&str, &str)> = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    for (i, rule) in policy.rules.iter().enumerate() {
        let action = match rule.action.as_str() {
            "FailJob" => FailureAction::FailJob,
            "Ignore" => FailureAction::Ignore,
            "FailIndex" => FailureAction::FailIndex,
            _ => FailureAction::Count,
        };
        if let Some(codes) = &rule.on_exit_codes {
            let hit = terminated.iter().find(|(name, code)| {
                *code != 0
                    && codes.container_name.as_deref().is_none_or(|c| c == *name)
                    && match codes.operator.as_str() {
                        "In" => codes.values.contains(code),
                        "NotIn" => !codes.values.contains(code),
                        _ => false,
                    }
            });
            if let Some((name, code)) = hit {
                return Some((
                    format!(
                        "Container {name} for pod {} failed with exit code {code} matching {} rule at index {i}",
                        pods::key_of(pod),
                        rule.action
                    ),
                    action,
                ));
            }
        }
        for pc in rule.on_pod_conditions.iter().flatten() {
            let want = if pc.status.is_empty() {
                "True"
            } else {
                pc.status.as_str()
            };
            if conditions.iter().any(|(t, s)| *t == pc.type_ && *s == want) {
                return Some((
                    format!(
                        "Pod {} has condition {} matching {} rule at index {i}",
                        pods::key_of(pod),
                        pc.type_,
                        rule.action
                    ),
                    action,
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod failure_policy_tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_decides() {
        let policy: k8s_openapi::api::batch::v1::PodFailurePolicy =
            serde_json::from_value(json!({"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1]}},
            ]}))
            .unwrap();
        let pod = |code: i32, name: &str, disrupted: bool| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "ns"},
                "status": {
                    "phase": "Failed",
                    "conditions": if disrupted { json!([{"type": "DisruptionTarget", "status": "True"}]) } else { json!([]) },
                    "containerStatuses": [{"name": name, "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                        "state": {"terminated": {"exitCode": code}}}],
                }
            }))
            .unwrap()
        };
        let action = |p: &Pod| failure_rule(&policy, p).map(|(_, a)| a);
        assert_eq!(
            action(&pod(42, "main", false)),
            Some(FailureAction::FailJob)
        );
        assert_eq!(action(&pod(42, "side", false)), Some(FailureAction::Count));
        assert_eq!(action(&pod(1, "main", true)), Some(FailureAction::Ignore));
        assert_eq!(action(&pod(1, "main", false)), None);
        assert_eq!(action(&pod(0, "main", false)), None, "exit 0 never matches");
        let (why, _) = failure_rule(&policy, &pod(42, "main", false)).unwrap();
        assert!(why.contains("exit code 42"), "{why}");
    }
}
