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

/// A custom kind found through discovery: a custom resource whose owner (a ConfigMap) is
/// deleted is collected, and a ConfigMap owned by a custom resource goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_followed_through_discovery() -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    init_tracing();
    let (_server, client) = server().await?;
    // The manager starts first: the CRD comes later, as in a live cluster.
    let m = manager(&client)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}],
        }
    }))?;
    crds.create(&PostParams::default(), &crd).await?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let owner_ref = |api_version: &str, kind: &str, name: &str, uid: &str| json!([{"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}]);
    // Widget owned by a ConfigMap.
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}}))?;
    let cm = cms.create(&PostParams::default(), &cm).await?;
    let w: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "dependent",
            "ownerReferences": owner_ref("v1", "ConfigMap", "owner", &cm.uid().unwrap())},
    }))?;
    widgets.create(&PostParams::default(), &w).await?;
    // ConfigMap owned by a Widget.
    let w2: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "parent"},
    }))?;
    let w2 = widgets.create(&PostParams::default(), &w2).await?;
    let child: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "child",
        "ownerReferences": owner_ref("example.com/v1", "Widget", "parent", &w2.uid().unwrap())}}))?;
    cms.create(&PostParams::default(), &child).await?;
    // Give discovery its moment, then delete both owners.
    tokio::time::sleep(Duration::from_millis(800)).await;
    cms.delete("owner", &DeleteParams::background()).await?;
    widgets
        .delete("parent", &DeleteParams::background())
        .await?;
    wait_for("the widget collected", 20, || async {
        Ok(widgets.get_opt("dependent").await?.is_none().then_some(()))
    })
    .await?;
    wait_for("the configmap collected", 20, || async {
        Ok(cms.get_opt("child").await?.is_none().then_some(()))
    })
    .await?;
    m.shutdown().await?;
    Ok(())
}

/// Every namespace gets a `default` ServiceAccount (made again if deleted); deleting a
/// namespace removes what is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_get_a_default_service_account_and_delete_their_contents() -> anyhow::Result<()>
{
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    init_tracing();
    let (_server, client) = server().await?;
    let m = ControllerManager::new(client.clone())
        .controllers(["serviceaccount", "garbagecollector"])?
        .spawn();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "team-a");
    let first = wait_for("default ServiceAccount", 20, || async {
        Ok(sas.get_opt("default").await?)
    })
    .await?;
    sas.delete("default", &DeleteParams::default()).await?;
    wait_for("default ServiceAccount made again", 20, || async {
        Ok(sas
            .get_opt("default")
            .await?
            .filter(|s| s.uid() != first.uid()))
    })
    .await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "settings"}}))?;
    cms.create(&PostParams::default(), &cm).await?;
    namespaces
        .delete("team-a", &DeleteParams::default())
        .await?;
    wait_for("namespace gone", 20, || async {
        Ok(namespaces.get_opt("team-a").await?.is_none().then_some(()))
    })
    .await?;
    assert!(cms.get_opt("settings").await?.is_none());
    // None is made for a namespace that is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sas.get_opt("default").await?.is_none());
    m.shutdown().await?;
    Ok(())
}
