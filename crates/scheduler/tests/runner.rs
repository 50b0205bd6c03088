//! The runner against the in-process API server (berth-apiserver driven by kube-rs): pending
//! pods get bound through `pods/binding`, a pod that fits nowhere gets kube-scheduler's
//! explained PodScheduled condition and a FailedScheduling Event, and becomes scheduled when a
//! node that fits it is added.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use berth_apiserver::ApiServer;
use berth_scheduler::runner::{RunnerOptions, SchedulerRunner};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn client() -> Result<Client> {
    let server = ApiServer::in_memory().await?;
    Ok(Client::new(server.router(), "default"))
}

async fn add_node(client: &Client, name: &str, cpu: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let status = json!({"status": {
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

async fn add_pod(client: &Client, name: &str, cpu: &str) -> Result<()> {
    add_pod_with(client, name, cpu, json!({})).await
}

/// A pod with `extra` merged into its spec.
async fn add_pod_with(
    client: &Client,
    name: &str,
    cpu: &str,
    extra: serde_json::Value,
) -> Result<()> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        pod["spec"][k] = v.clone();
    }
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?;
    Ok(())
}

/// Polls `check` every 50 ms until it returns `Some`, for at most 20 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn node_of(pods: &Api<Pod>, name: &str) -> Result<Option<String>> {
    Ok(pods.get(name).await?.spec.and_then(|s| s.node_name))
}

#[tokio::test]
async fn binds_pending_pods_explains_unschedulable_ones_and_retries_on_node_add() -> Result<()> {
    let client = client().await?;
    add_node(&client, "n1", "2").await?;
    add_node(&client, "n2", "2").await?;
    for i in 0..6 {
        add_pod(&client, &format!("web-{i}"), "500m").await?;
    }
    add_pod(&client, "big", "3").await?;
    // A pod for another scheduler stays pending untouched.
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let other: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other"},
        "spec": {"schedulerName": "someone-else", "containers": [{"name": "c", "image": "busybox"}]},
    }))?;
    pods.create(&PostParams::default(), &other).await?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = SchedulerRunner::new(client.clone(), &berth_scheduler::Config::default())?
        .options(RunnerOptions {
            tick: Duration::from_millis(20),
            ..Default::default()
        });
    let task = tokio::spawn(runner.run(async {
        let _ = stopped.await;
    }));

    // Every small pod is bound, spread over both nodes (LeastAllocated + balanced: 3 and 3).
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..6 {
        let name = format!("web-{i}");
        let node = eventually(&format!("{name} bound"), || node_of(&pods, &name)).await?;
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(per_node.len(), 2, "{per_node:?}");
    assert!(per_node.values().all(|&n| n == 3), "{per_node:?}");

    // The big pod gets kube-scheduler's explanation in its condition and an Event.
    let message = "0/2 nodes are available: 2 Insufficient cpu.";
    let cond = eventually("big's PodScheduled condition", || async {
        let pod = pods.get("big").await?;
        Ok(pod
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled"))
    })
    .await?;
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert!(
        cond.message.as_deref().unwrap_or("").starts_with(message),
        "{:?}",
        cond.message
    );
    let events: Api<Event> = Api::default_namespaced(client.clone());
    let failed = eventually("a FailedScheduling event", || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.involved_object.name.as_deref() == Some("big")
            }))
    })
    .await?;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(failed.message, cond.message);
    assert_eq!(
        failed.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("default-scheduler")
    );
    assert!(node_of(&pods, "big").await?.is_none());

    // A node that fits it makes it schedulable: it is bound there.
    add_node(&client, "n3", "8").await?;
    let node = eventually("big bound after n3 was added", || node_of(&pods, "big")).await?;
    assert_eq!(node, "n3");

    // Each binding got a Scheduled event; the other scheduler's pod was left alone.
    let scheduled = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Scheduled"))
        .count();
    assert!(scheduled >= 7, "{scheduled} Scheduled events");
    assert!(node_of(&pods, "other").await?.is_none());
    let other = pods.get("other").await?;
    assert!(
        other
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .is_empty()
    );

    stop.send(()).ok();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .context("the runner did not stop")???;
    Ok(())
}

#[tokio::test]
async fn preemption_evicts_nominates_and_waits_for_the_victim_to_go() -> Result<()> {
    let client = client().await?;
    add_node(&client, "n1", "2").await?;
    for name in ["low-a", "low-b"] {
        add_pod_with(&client, name, "1", json!({"nodeName": "n1", "priority": 1})).await?;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = SchedulerRunner::new(client.clone(), &berth_scheduler::Config::default())?
        .options(RunnerOptions {
            tick: Duration::from_millis(20),
            ..Default::default()
        });
    let task = tokio::spawn(runner.run(async {
        let _ = stopped.await;
    }));
    add_pod_with(&client, "high", "1", json!({"priority": 100})).await?;

    // One victim (the fewest that make room) is deleted; the API server keeps it terminating
    // for its grace period, as it does for a pod on a node.
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let victim = eventually("a victim terminating", || async {
        for name in ["low-a", "low-b"] {
            if pods.get(name).await?.metadata.deletion_timestamp.is_some() {
                return Ok(Some(name));
            }
        }
        Ok(None)
    })
    .await?;
    let nominated = eventually("high nominated", || async {
        Ok(pods
            .get("high")
            .await?
            .status
            .and_then(|s| s.nominated_node_name))
    })
    .await?;
    assert_eq!(nominated, "n1");
    // While the victim terminates, the preemptor waits: no second victim, not bound.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let survivor = if victim == "low-a" { "low-b" } else { "low-a" };
    assert!(
        pods.get(survivor)
            .await?
            .metadata
            .deletion_timestamp
            .is_none()
    );
    assert!(node_of(&pods, "high").await?.is_none());

    // The node agent's part: the victim is gone. The preemptor is bound where it was nominated.
    pods.delete(victim, &kube::api::DeleteParams::default().grace_period(0))
        .await?;
    let node = eventually("high bound", || node_of(&pods, "high")).await?;
    assert_eq!(node, "n1");

    stop.send(()).ok();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .context("the runner did not stop")???;
    Ok(())
}
