//! The ReplicaSet controller against the in-process API server.

mod common;

use std::time::Duration;

use berth_controllers::ControllerManager;
use common::*;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn replicaset(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}
            }
        }
    }))
    .unwrap()
}

async fn scale(api: &Api<ReplicaSet>, name: &str, n: i32) -> anyhow::Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": n}})),
    )
    .await?;
    Ok(())
}

async fn wait_count(client: &kube::Client, app: &str, n: usize) -> anyhow::Result<Vec<Pod>> {
    wait_for(&format!("{n} pods of {app}"), 20, || async {
        let pods = live_pods(client, "default", app).await?;
        Ok((pods.len() == n).then_some(pods))
    })
    .await
}

#[tokio::test]
async fn scales_up_and_down_with_owned_pods_and_status() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let manager = ControllerManager::new(client.clone())
        .controllers(["replicaset"])?
        .spawn();
    let api: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    let rs = api
        .create(&PostParams::default(), &replicaset("web", 3))
        .await?;
    let pods = wait_count(&client, "web", 3).await?;
    for p in &pods {
        let owner = berth_controllers::pods::controller_of(&p.metadata).expect("controller ref");
        assert_eq!(owner.uid, rs.uid().unwrap());
        assert_eq!(owner.kind, "ReplicaSet");
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert!(p.name_any().starts_with("web-"));
    }
    // Ready pods show in the status.
    for p in &pods {
        mark_ready(&client, p).await?;
    }
    wait_for("status with 3 ready", 10, || async {
        let s = api.get("web").await?.status.unwrap_or_default();
        Ok(
            (s.ready_replicas == Some(3) && s.available_replicas == Some(3) && s.replicas == 3)
                .then_some(()),
        )
    })
    .await?;
    scale(&api, "web", 7).await?;
    wait_count(&client, "web", 7).await?;
    scale(&api, "web", 2).await?;
    let left = wait_count(&client, "web", 2).await?;
    // Scale-down takes the not-ready pods first: the two left are ready ones.
    assert!(
        left.iter().all(berth_controllers::pods::is_ready),
        "kept not-ready pods: {left:?}"
    );
    // And it stays at 2 (no churn).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(live_pods(&client, "default", "web").await?.len(), 2);
    let s = api.get("web").await?.status.unwrap_or_default();
    assert_eq!(
        s.observed_generation,
        api.get("web").await?.metadata.generation
    );
    manager.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn adopts_matching_orphans_and_releases_pods_that_stop_matching() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "labels": {"app": "adopt"}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}
    }))?;
    pods.create(&PostParams::default(), &orphan).await?;
    let manager = ControllerManager::new(client.clone())
        .controllers(["replicaset"])?
        .spawn();
    let api: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    let rs = api
        .create(&PostParams::default(), &replicaset("adopt", 2))
        .await?;
    let got = wait_count(&client, "adopt", 2).await?;
    assert!(got.iter().any(|p| p.name_any() == "orphan"), "orphan kept");
    wait_for("orphan adopted", 10, || async {
        let p = pods.get("orphan").await?;
        Ok(berth_controllers::pods::controlled_by(&p, &rs.uid().unwrap()).then_some(()))
    })
    .await?;
    // Relabel one: it is released and replaced.
    pods.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await?;
    wait_for("orphan released", 10, || async {
        let p = pods.get("orphan").await?;
        Ok(berth_controllers::pods::controller_of(&p.metadata)
            .is_none()
            .then_some(()))
    })
    .await?;
    wait_count(&client, "adopt", 2).await?;
    manager.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_restarted_manager_never_creates_duplicates() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let api: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &replicaset("dup", 20))
        .await?;
    for _ in 0..5 {
        let manager = ControllerManager::new(client.clone())
            .controllers(["replicaset"])?
            .spawn();
        tokio::time::sleep(Duration::from_millis(30)).await;
        manager.abort();
    }
    let manager = ControllerManager::new(client.clone())
        .controllers(["replicaset"])?
        .spawn();
    wait_count(&client, "dup", 20).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(live_pods(&client, "default", "dup").await?.len(), 20);
    manager.shutdown().await?;
    Ok(())
}
