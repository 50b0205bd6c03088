//! The Job controller: retries with exponential backoff up to backoffLimit, Indexed completion,
//! activeDeadlineSeconds and ttlSecondsAfterFinished.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use berth_controllers::ControllerManager;
use berth_controllers::job::COMPLETION_INDEX;
use berth_controllers::runtime::Settings;
use common::*;
use futures::TryStreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

fn job(name: &str, spec: serde_json::Value) -> Job {
    let mut spec = spec;
    spec["template"] = json!({
        "metadata": {"labels": {"app": name}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
    });
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn manager(client: &Client) -> anyhow::Result<berth_controllers::ManagerHandle> {
    let settings = Settings {
        job_backoff: Duration::from_millis(50),
        ..Settings::default()
    };
    Ok(ControllerManager::new(client.clone())
        .controllers(["job", "garbagecollector"])?
        .settings(settings)
        .spawn())
}

/// A kubelet that ends every new pod of `app` in `phase` after `delay`.
fn finish_pods(client: &Client, app: &str, phase: &'static str, delay: Duration) {
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    tokio::spawn(async move {
        let stream = watcher(api.clone(), cfg).applied_objects();
        futures::pin_mut!(stream);
        while let Ok(Some(p)) = stream.try_next().await {
            if berth_controllers::pods::phase(&p) != "Pending"
                || p.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let api = api.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = api
                    .patch_status(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"phase": phase}})),
                    )
                    .await;
            });
        }
    });
}

fn condition(j: &Job, type_: &str) -> Option<String> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .and_then(|c| c.reason.clone())
}

#[tokio::test]
async fn a_failing_job_retries_with_backoff_then_fails() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    finish_pods(&client, "fail", "Failed", Duration::from_millis(10));
    let m = manager(&client)?;
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    let started = std::time::Instant::now();
    jobs.create(
        &PostParams::default(),
        &job("fail", json!({"backoffLimit": 3})),
    )
    .await?;
    let j = wait_for("Failed condition", 30, || async {
        let j = jobs.get("fail").await?;
        Ok(condition(&j, "Failed").map(|r| (j, r)))
    })
    .await?;
    assert_eq!(j.1, "BackoffLimitExceeded");
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let mut list = pods
        .list(&ListParams::default().labels("app=fail"))
        .await?
        .items;
    assert_eq!(list.len(), 4, "backoffLimit 3: one run and three retries");
    assert_eq!(j.0.status.as_ref().unwrap().failed, Some(4));
    // The retries waited 50 + 100 + 200 ms of backoff (the pods fail after 10 ms each).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350),
        "no backoff: failed after {took:?}"
    );
    list.clear();
    m.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_indexed_job_completes_every_index_once() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    finish_pods(&client, "idx", "Succeeded", Duration::from_millis(20));
    let m = manager(&client)?;
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    jobs.create(
        &PostParams::default(),
        &job(
            "idx",
            json!({"completions": 5, "parallelism": 2, "completionMode": "Indexed"}),
        ),
    )
    .await?;
    let j = wait_for("Complete condition", 30, || async {
        let j = jobs.get("idx").await?;
        Ok(condition(&j, "Complete").map(|_| j))
    })
    .await?;
    let s = j.status.unwrap();
    assert_eq!(s.completed_indexes.as_deref(), Some("0-4"));
    assert_eq!(s.succeeded, Some(5));
    assert!(s.completion_time.is_some());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let list = pods
        .list(&ListParams::default().labels("app=idx"))
        .await?
        .items;
    let mut per_index: HashMap<String, usize> = HashMap::new();
    for p in &list {
        assert_eq!(berth_controllers::pods::phase(p), "Succeeded");
        let i = p.annotations().get(COMPLETION_INDEX).unwrap().clone();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(format!("idx-{i}").as_str()));
        let env = spec.containers[0].env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX" && e.value.as_deref() == Some(i.as_str())));
        *per_index.entry(i).or_default() += 1;
    }
    assert_eq!(per_index.len(), 5);
    assert!(per_index.values().all(|n| *n == 1), "{per_index:?}");
    m.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn deadline_fails_and_ttl_deletes_the_job() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let m = manager(&client)?;
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    // Pods never finish: the deadline fails the Job and its running pods are removed.
    jobs.create(
        &PostParams::default(),
        &job(
            "late",
            json!({"activeDeadlineSeconds": 1, "parallelism": 2, "completions": 4}),
        ),
    )
    .await?;
    let j = wait_for("Failed condition", 30, || async {
        let j = jobs.get("late").await?;
        Ok(condition(&j, "Failed").map(|r| (j, r)))
    })
    .await?;
    assert_eq!(j.1, "DeadlineExceeded");
    wait_for("pods removed", 20, || async {
        Ok(live_pods(&client, "default", "late")
            .await?
            .is_empty()
            .then_some(()))
    })
    .await?;
    // A finished Job with a TTL goes away.
    finish_pods(&client, "ttl", "Succeeded", Duration::from_millis(10));
    jobs.create(
        &PostParams::default(),
        &job("ttl", json!({"ttlSecondsAfterFinished": 1})),
    )
    .await?;
    wait_for("Complete", 20, || async {
        let j = jobs.get("ttl").await?;
        Ok(condition(&j, "Complete").map(|_| ()))
    })
    .await?;
    wait_for("ttl deletion", 20, || async {
        Ok(jobs.get_opt("ttl").await?.is_none().then_some(()))
    })
    .await?;
    m.shutdown().await?;
    Ok(())
}

/// podFailurePolicy: a disrupted pod (DisruptionTarget) is ignored and replaced without
/// counting; a pod exiting 42 fails the Job at once, long before backoffLimit.
#[tokio::test]
async fn pod_failure_policy_ignores_disruptions_and_fails_on_an_exit_code() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let m = manager(&client)?;
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    let mut j = job(
        "pfp",
        json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]}}),
    );
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("Never".into());
    jobs.create(&PostParams::default(), &j).await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let fail = |name: String, code: i32, disrupted: bool| {
        let pods = pods.clone();
        async move {
            let conditions = if disrupted {
                json!([{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}])
            } else {
                json!([])
            };
            pods.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "phase": "Failed",
                    "conditions": conditions,
                    "containerStatuses": [{"name": "c", "image": "busybox", "imageID": "",
                        "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": code, "reason": "Error"}}}],
                }})),
            )
            .await
        }
    };
    let pending = || async {
        let list = pods.list(&ListParams::default().labels("app=pfp")).await?;
        Ok::<_, anyhow::Error>(
            list.items
                .into_iter()
                .find(|p| berth_controllers::pods::phase(p) == "Pending")
                .map(|p| p.name_any()),
        )
    };
    let first = wait_for("first pod", 20, pending).await?;
    fail(first.clone(), 137, true).await?;
    let second = wait_for("a replacement", 20, || async {
        Ok(pending().await?.filter(|n| *n != first))
    })
    .await?;
    let status = jobs.get("pfp").await?.status.unwrap_or_default();
    assert_eq!(
        status.failed.unwrap_or(0),
        0,
        "the disruption is not counted"
    );
    assert!(condition(&jobs.get("pfp").await?, "Failed").is_none());
    fail(second, 42, false).await?;
    let reason = wait_for("Failed condition", 20, || async {
        Ok(condition(&jobs.get("pfp").await?, "Failed"))
    })
    .await?;
    assert_eq!(reason, "PodFailurePolicy");
    let j = jobs.get("pfp").await?;
    let message = j
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Failed"))
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("exit code 42"), "{message}");
    m.shutdown().await?;
    Ok(())
}
