//! The garbage collector: Background, Foreground and Orphan deletion.

mod common;

use std::time::Duration;

use berth_controllers::ControllerManager;
use common::*;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
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

async fn with_pods(client: &Client, name: &str, n: usize) -> anyhow::Result<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    let rs = api
        .create(&PostParams::default(), &replicaset(name, n as i32))
        .await?;
    wait_for("pods", 20, || async {
        Ok((live_pods(client, "default", name).await?.len() == n).then_some(()))
    })
    .await?;
    Ok(rs)
}

fn manager(client: &Client) -> anyhow::Result<berth_controllers::ManagerHandle> {
    Ok(ControllerManager::new(client.clone())
        .controllers(["replicaset", "garbagecollector"])?
        .spawn())
}

#[tokio::test]
async fn background_deletion_collects_the_dependents() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let m = manager(&client)?;
    with_pods(&client, "bg", 3).await?;
    let api: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    api.delete("bg", &DeleteParams::background()).await?;
    wait_for("pods collected", 20, || async {
        let pods: Api<Pod> = Api::default_namespaced(client.clone());
        Ok(pods
            .list(&ListParams::default().labels("app=bg"))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    m.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn foreground_deletion_removes_dependents_before_the_owner() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    // Pods only: no ReplicaSet controller to replace them; the owner is a ReplicaSet object.
    let m = manager(&client)?;
    let rs = with_pods(&client, "fg", 3).await?;
    m.shutdown().await?;
    let m = ControllerManager::new(client.clone())
        .controllers(["garbagecollector"])?
        .spawn();
    // A pod of the ReplicaSet gets a finalizer of its own so the order can be seen.
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let held = live_pods(&client, "default", "fg").await?.remove(0);
    pods.patch(
        &held.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"finalizers": ["test/hold"]}})),
    )
    .await?;
    let api: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    api.delete("fg", &DeleteParams::foreground()).await?;
    // The other pods go; the owner waits for the held one.
    wait_for("unheld pods collected", 20, || async {
        let left = pods
            .list(&ListParams::default().labels("app=fg"))
            .await?
            .items;
        Ok((left.len() == 1).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let owner = api.get("fg").await?;
    assert_eq!(owner.uid(), rs.uid());
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert!(owner.finalizers().iter().any(|f| f == "foregroundDeletion"));
    let p = pods.get(&held.name_any()).await?;
    assert!(
        p.metadata.deletion_timestamp.is_some(),
        "the held pod is being deleted"
    );
    // Release the pod: then the owner goes.
    pods.patch(
        &held.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    wait_for("owner gone", 20, || async {
        Ok(api.get_opt("fg").await?.is_none().then_some(()))
    })
    .await?;
    m.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn orphan_deletion_leaves_the_dependents_without_the_reference() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let m = manager(&client)?;
    let rs = with_pods(&client, "orph", 2).await?;
    let api: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    api.delete("orph", &DeleteParams::orphan()).await?;
    wait_for("owner gone", 20, || async {
        Ok(api.get_opt("orph").await?.is_none().then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pods = live_pods(&client, "default", "orph").await?;
    assert_eq!(pods.len(), 2, "the pods stay");
    let uid = rs.uid().unwrap();
    for p in pods {
        assert!(
            p.owner_references().iter().all(|r| r.uid != uid),
            "reference removed"
        );
    }
    m.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_object_with_one_owner_left_keeps_it() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mk = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    let a = cms.create(&PostParams::default(), &mk("a")).await?;
    let b = cms.create(&PostParams::default(), &mk("b")).await?;
    let refs: Vec<_> = [&a, &b]
        .iter()
        .map(|o| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o.name_any(), "uid": o.uid()}))
        .collect();
    let dep: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "dep", "ownerReferences": refs}}))?;
    cms.create(&PostParams::default(), &dep).await?;
    let m = manager(&client)?;
    cms.delete("a", &DeleteParams::background()).await?;
    wait_for("dangling reference removed", 20, || async {
        let d = cms.get("dep").await?;
        Ok((d.owner_references().len() == 1).then_some(d))
    })
    .await?;
    cms.delete("b", &DeleteParams::background()).await?;
    wait_for("dependent collected", 20, || async {
        Ok(cms.get_opt("dep").await?.is_none().then_some(()))
    })
    .await?;
    m.shutdown().await?;
    Ok(())
}
