//! The CronJob controller on a fake clock: runs on schedule, concurrency policies, missed
//! starts, history limits and time zones.

mod common;

use std::sync::Arc;
use std::time::Duration;

use berth_controllers::ControllerManager;
use berth_controllers::cronjob::SCHEDULED_TIMESTAMP;
use berth_controllers::runtime::FakeClock;
use berth_controllers::schedule::{Schedule, time_zone};
use common::*;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

fn cronjob(name: &str, schedule: &str, extra: serde_json::Value) -> CronJob {
    let mut spec = json!({
        "schedule": schedule,
        "jobTemplate": {"spec": {"template": {
            "metadata": {"labels": {"cron": name}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
        }}}
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

async fn setup() -> anyhow::Result<(
    berth_apiserver::ApiServer,
    Client,
    FakeClock,
    berth_controllers::ManagerHandle,
)> {
    init_tracing();
    let (server, client) = server().await?;
    let clock = FakeClock::new(Timestamp::now());
    let m = ControllerManager::new(client.clone())
        .controllers(["cronjob"])?
        .clock(Arc::new(clock.clone()))
        .spawn();
    Ok((server, client, clock, m))
}

async fn jobs_of(client: &Client, name: &str) -> anyhow::Result<Vec<Job>> {
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    Ok(jobs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| {
            j.name_any().starts_with(&format!("{name}-")) && j.metadata.deletion_timestamp.is_none()
        })
        .collect())
}

async fn wait_jobs(client: &Client, name: &str, n: usize) -> anyhow::Result<Vec<Job>> {
    wait_for(&format!("{n} jobs of {name}"), 20, || async {
        let j = jobs_of(client, name).await?;
        Ok((j.len() == n).then_some(j))
    })
    .await
}

async fn complete(client: &Client, job: &Job) -> anyhow::Result<()> {
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    let now = Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)?
        .to_string();
    jobs.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"completionTime": now, "conditions": [{"type": "Complete", "status": "True"}]}})),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn runs_on_schedule_and_forbid_skips_while_active() -> anyhow::Result<()> {
    let (_s, client, clock, m) = setup().await?;
    let api: Api<CronJob> = Api::default_namespaced(client.clone());
    api.create(
        &PostParams::default(),
        &cronjob(
            "tick",
            "* * * * *",
            json!({"concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 1}),
        ),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        jobs_of(&client, "tick").await?.is_empty(),
        "nothing before the first minute"
    );
    clock.advance(Duration::from_secs(61));
    let first = wait_jobs(&client, "tick", 1).await?;
    let at: Timestamp = first[0].annotations()[SCHEDULED_TIMESTAMP].parse()?;
    assert_eq!(at.as_second() % 60, 0, "scheduled on the minute");
    let cj = wait_for("status", 10, || async {
        let cj = api.get("tick").await?;
        Ok(cj
            .status
            .clone()
            .filter(|s| s.active.as_ref().is_some_and(|a| a.len() == 1))
            .map(|_| cj))
    })
    .await?;
    assert!(cj.status.unwrap().last_schedule_time.is_some());
    // Still running a minute later: Forbid skips.
    clock.advance(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(jobs_of(&client, "tick").await?.len(), 1);
    // Once it completed, the next minute runs; the history limit keeps one finished job.
    complete(&client, &first[0]).await?;
    clock.advance(Duration::from_secs(60));
    let two = wait_jobs(&client, "tick", 2).await?;
    complete(
        &client,
        two.iter()
            .find(|j| j.name_any() != first[0].name_any())
            .unwrap(),
    )
    .await?;
    wait_jobs(&client, "tick", 1).await?;
    m.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn replace_deletes_the_running_job_and_missed_starts_run_once() -> anyhow::Result<()> {
    let (_s, client, clock, m) = setup().await?;
    let api: Api<CronJob> = Api::default_namespaced(client.clone());
    api.create(
        &PostParams::default(),
        &cronjob(
            "rep",
            "*/5 * * * *",
            json!({"concurrencyPolicy": "Replace"}),
        ),
    )
    .await?;
    // An hour passes at once: twelve missed times, one Job (for the latest).
    clock.advance(Duration::from_secs(3600));
    let one = wait_jobs(&client, "rep", 1).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(jobs_of(&client, "rep").await?.len(), 1);
    let at: Timestamp = one[0].annotations()[SCHEDULED_TIMESTAMP].parse()?;
    assert!(
        clock_now(&clock).duration_since(at).as_secs() < 300,
        "the latest missed time ran"
    );
    clock.advance(Duration::from_secs(300));
    let next = wait_for("replacement", 20, || async {
        let j = jobs_of(&client, "rep").await?;
        Ok((j.len() == 1 && j[0].name_any() != one[0].name_any()).then_some(j))
    })
    .await?;
    assert_ne!(next[0].uid(), one[0].uid());
    m.shutdown().await?;
    Ok(())
}

fn clock_now(c: &FakeClock) -> Timestamp {
    use berth_controllers::runtime::Clock;
    c.now()
}

#[tokio::test]
async fn a_start_past_its_deadline_is_skipped_and_time_zones_apply() -> anyhow::Result<()> {
    let (_s, client, clock, m) = setup().await?;
    let api: Api<CronJob> = Api::default_namespaced(client.clone());
    api.create(
        &PostParams::default(),
        &cronjob("late", "0 * * * *", json!({"startingDeadlineSeconds": 30})),
    )
    .await?;
    // The hour passes, but the controller only looks 45 s after it: too late.
    let hour = Schedule::parse("0 * * * *")?
        .next_after(clock_now(&clock), &time_zone(None)?)
        .unwrap();
    clock.set(berth_controllers::runtime::clock::plus_secs(hour, 45));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        jobs_of(&client, "late").await?.is_empty(),
        "a start 45 s late with a 30 s deadline ran"
    );
    // 09:00 in Tokyo.
    api.create(
        &PostParams::default(),
        &cronjob("tokyo", "0 9 * * *", json!({"timeZone": "Asia/Tokyo"})),
    )
    .await?;
    let nine = Schedule::parse("0 9 * * *")?
        .next_after(clock_now(&clock), &time_zone(Some("Asia/Tokyo"))?)
        .unwrap();
    let zoned = nine.to_zoned(time_zone(Some("Asia/Tokyo"))?);
    assert_eq!(zoned.hour(), 9);
    clock.set(berth_controllers::runtime::clock::plus_secs(nine, 1));
    let j = wait_jobs(&client, "tokyo", 1).await?;
    assert_eq!(j[0].annotations()[SCHEDULED_TIMESTAMP], nine.to_string());
    m.shutdown().await?;
    Ok(())
}
