//! The CronJob controller: creates Jobs on a schedule.
//!
//! A [`Controller`] over CronJobs that `owns` Jobs. Each reconcile, on the context's
//! [`Clock`](crate::runtime::Clock) (tests use a fake one):
//! - refreshes `status.active` (running Jobs) and `status.lastSuccessfulTime`, and deletes the
//!   oldest finished Jobs beyond `successfulJobsHistoryLimit` / `failedJobsHistoryLimit`;
//! - finds the most recent scheduled time not yet run (in `spec.timeZone`, parsed by
//!   [`crate::schedule`]) since `status.lastScheduleTime` (or creation); with
//!   `startingDeadlineSeconds` only times within the deadline count, and a time that is too
//!   late is skipped with a `MissSchedule` event; of many missed times only the latest runs
//!   (a `TooManyMissedTimes` warning past 100), as Kubernetes does;
//! - applies `concurrencyPolicy`: `Allow` runs Jobs side by side, `Forbid` skips a run while
//!   one is active, `Replace` deletes the active Jobs first;
//! - creates the Job `<cronjob>-<minutes since the epoch>` (a deterministic name, so a retry or
//!   a second manager cannot run the same time twice) and requeues for the next time.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::error::{Error, Result, is_conflict, is_not_found};
use crate::pods;
use crate::runtime::clock::{Timestamp, plus_secs, until};
use crate::runtime::{self, Context, EventType, Recorder};
use crate::schedule::{Schedule, time_zone};

/// The annotation on a Job with the time it was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

struct State {
    ctx: Context,
    jobs: Store<Job>,
    recorder: Recorder,
}

/// Builds the CronJob controller on `ctx` (see [`crate::manager::ControllerSpec`]).
pub fn start(ctx: &Context) -> BoxFuture<'static, ()> {
    let cronjobs = ctx.informers.subscribe::<CronJob>();
    let reader = ctx.informers.reader::<CronJob>();
    let jobs = ctx.informers.subscribe::<Job>();
    let controller = Controller::for_shared_stream(cronjobs, reader).owns_shared_stream(jobs);
    let state = Arc::new(State {
        jobs: ctx.informers.reader::<Job>(),
        recorder: ctx.recorder("cronjob-controller"),
        ctx: ctx.clone(),
    });
    runtime::drive("cronjob", controller, ctx, state, reconcile)
}

/// `Some(true)` for a Job that completed, `Some(false)` for one that failed.
fn finished(job: &Job) -> Option<bool> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some(true),
            "Failed" => Some(false),
            _ => None,
        })
}

async fn reconcile(cj: Arc<CronJob>, st: Arc<State>) -> Result<Action> {
    let ns = cj.namespace().unwrap_or_default();
    let key = pods::key_of(&*cj);
    let now = st.ctx.clock.now();
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = cj.uid().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(st.ctx.client.clone(), &ns);
    let mut jobs: Vec<Arc<Job>> = st
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            j.metadata.namespace.as_deref() == Some(ns.as_str()) && pods::controlled_by(&**j, &uid)
        })
        .collect();
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let old_status = cj.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    let active: Vec<&Arc<Job>> = jobs
        .iter()
        .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();
    status.active =
        Some(active.iter().map(|j| job_ref(j)).collect()).filter(|v: &Vec<_>| !v.is_empty());
    if let Some(t) = jobs
        .iter()
        .filter(|j| finished(j) == Some(true))
        .filter_map(|j| j.status.as_ref()?.completion_time.as_ref().map(|t| t.0))
        .max()
        && status.last_successful_time.as_ref().is_none_or(|s| s.0 < t)
    {
        status.last_successful_time = Some(Time(t));
    }
    // History limits.
    for (ok, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Arc<Job>> = jobs
            .iter()
            .filter(|j| finished(j) == Some(ok) && j.metadata.deletion_timestamp.is_none())
            .collect();
        let extra = done
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        for j in &done[..extra] {
            delete_job(&jobs_api, j).await?;
        }
    }
    let write_status = |status: k8s_openapi::api::batch::v1::CronJobStatus| {
        let api: Api<CronJob> = Api::namespaced(st.ctx.client.clone(), &ns);
        let name = cj.name_any();
        let changed = status != old_status;
        async move {
            if changed {
                // `active: null` clears the list when it emptied.
                let mut body = serde_json::to_value(&status).map_err(|e| Error::Serde {
                    what: "CronJob status".into(),
                    source: e,
                })?;
                if status.active.is_none() {
                    body["active"] = serde_json::Value::Null;
                }
                match api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": body})),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => {
                        return Err(Error::api(format!("update status of CronJob {name}"))(e));
                    }
                }
            }
            Ok(())
        }
    };
    let sched = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            st.recorder
                .publish(&*cj, EventType::Warning, "InvalidSchedule", e.to_string());
            write_status(status).await?;
            return Ok(Action::await_change());
        }
    };
    let tz = match time_zone(spec.time_zone.as_deref()) {
        Ok(tz) => tz,
        Err(e) => {
            st.recorder
                .publish(&*cj, EventType::Warning, "UnknownTimeZone", e.to_string());
            write_status(status).await?;
            return Ok(Action::await_change());
        }
    };
    if spec.suspend.unwrap_or(false) {
        write_status(status).await?;
        return Ok(Action::await_change());
    }
    // The most recent unmet time.
    let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let mut earliest = status.last_schedule_time.as_ref().map_or(created, |t| t.0);
    if let Some(d) = spec.starting_deadline_seconds {
        earliest = earliest.max(plus_secs(now, -d));
    }
    let mut missed = 0u32;
    let mut latest: Option<Timestamp> = None;
    let mut t = earliest;
    while let Some(next) = sched.next_after(t, &tz) {
        if next > now {
            break;
        }
        missed += 1;
        latest = Some(next);
        t = next;
        if missed > 100_000 {
            break;
        }
    }
    let next_run = sched.next_after(now, &tz);
    let requeue = |next: Option<Timestamp>| match next {
        Some(n) => runtime::requeue_at(
            &*st.ctx.clock,
            until(now, n).max(Duration::from_millis(100)),
        ),
        None => Action::await_change(),
    };
    let Some(scheduled) = latest else {
        write_status(status).await?;
        return Ok(requeue(next_run));
    };
    if missed > 100 {
        st.recorder.publish(
            &*cj,
            EventType::Warning,
            "TooManyMissedTimes",
            format!("too many missed start times: {missed}; running only the latest"),
        );
    }
    if let Some(d) = spec.starting_deadline_seconds
        && plus_secs(scheduled, d) < now
    {
        st.recorder.publish(
            &*cj,
            EventType::Warning,
            "MissSchedule",
            format!("Missed scheduled time to start a job: {scheduled}"),
        );
        write_status(status).await?;
        return Ok(requeue(next_run));
    }
    match spec.concurrency_policy.as_deref().unwrap_or("Allow") {
        "Forbid" if !active.is_empty() => {
            tracing::debug!(cronjob = %key, "a job is still active: this run is skipped (Forbid)");
            write_status(status).await?;
            return Ok(requeue(next_run));
        }
        "Replace" => {
            for j in &active {
                delete_job(&jobs_api, j).await?;
                st.recorder.publish(
                    &*cj,
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted job {}", j.name_any()),
                );
            }
            status.active = None;
        }
        _ => {}
    }
    let name = format!("{}-{}", cj.name_any(), scheduled.as_second() / 60);
    let template = spec.job_template.clone();
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), scheduled.to_string());
    let job = Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![pods::owner_ref(&*cj)]),
            ..Default::default()
        },
        spec: Some(template.spec.unwrap_or_else(JobSpec::default)),
        status: None,
    };
    let created = match jobs_api.create(&PostParams::default(), &job).await {
        Ok(j) => {
            st.recorder.publish(
                &*cj,
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created job {name}"),
            );
            j
        }
        // Already created for this time (a retry after a lost status write).
        Err(e) if is_conflict(&e) => jobs_api
            .get(&name)
            .await
            .map_err(Error::api(format!("get Job {name}")))?,
        Err(e) => {
            st.recorder.publish(
                &*cj,
                EventType::Warning,
                "FailedCreate",
                format!("Error creating job: {e}"),
            );
            return Err(Error::api(format!("create Job {name}"))(e));
        }
    };
    let mut refs = status.active.take().unwrap_or_default();
    if !refs.iter().any(|r| r.uid == created.uid()) {
        refs.push(job_ref(&created));
    }
    status.active = Some(refs);
    status.last_schedule_time = Some(Time(scheduled));
    write_status(status).await?;
    Ok(requeue(next_run))
}

fn job_ref(j: &Job) -> ObjectReference {
    let mut r = j.object_ref(&());
    r.resource_version = None;
    r
}

async fn delete_job(api: &Api<Job>, j: &Job) -> Result<()> {
    match api.delete(&j.name_any(), &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::api(format!("delete Job {}", j.name_any()))(e)),
    }
}
