//! The StatefulSet controller against the in-process API server: OrderedReady waits for each
//! pod to be ready, Parallel does not; OnDelete leaves pods alone; claim templates become
//! emptyDir volumes; ControllerRevisions record the templates.

mod common;

use std::time::Duration;

use berth_controllers::ControllerManager;
use common::*;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

fn set(name: &str, extra: serde_json::Value) -> StatefulSet {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 3,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "img:1"}]},
            },
        },
    });
    json_patch::merge(&mut v, &extra);
    serde_json::from_value(v).unwrap()
}

async fn names(client: &Client, app: &str) -> anyhow::Result<Vec<String>> {
    let mut n: Vec<String> = live_pods(client, "default", app)
        .await?
        .iter()
        .map(|p| p.name_any())
        .collect();
    n.sort();
    Ok(n)
}

fn manager(client: &Client) -> anyhow::Result<berth_controllers::ManagerHandle> {
    Ok(ControllerManager::new(client.clone())
        .controllers(["statefulset"])?
        .spawn())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_ready_waits_and_parallel_does_not() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let m = manager(&client)?;
    let sets: Api<StatefulSet> = Api::default_namespaced(client.clone());
    // No kubelet: pods stay Pending.
    sets.create(&PostParams::default(), &set("ord", json!({})))
        .await?;
    sets.create(
        &PostParams::default(),
        &set("par", json!({"spec": {"podManagementPolicy": "Parallel"}})),
    )
    .await?;
    wait_for("three Parallel pods", 20, || async {
        Ok((names(&client, "par").await? == ["par-0", "par-1", "par-2"]).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(names(&client, "ord").await?, ["ord-0"], "ord-1 waits");
    // web-0 becomes ready: web-1 follows, then web-2.
    for i in 0..3 {
        let p: Api<Pod> = Api::default_namespaced(client.clone());
        let pod = wait_for(&format!("ord-{i}"), 20, || async {
            Ok(p.get_opt(&format!("ord-{i}")).await?)
        })
        .await?;
        if i < 2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(names(&client, "ord").await?.len(), i + 1);
        }
        mark_ready(&client, &pod).await?;
    }
    wait_for("ready status", 20, || async {
        Ok(sets
            .get("ord")
            .await?
            .status
            .filter(|s| s.ready_replicas == Some(3))
            .map(|_| ()))
    })
    .await?;
    m.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_revisions_and_claim_templates() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let _kubelet = FakeKubelet::start(client.clone(), Duration::from_millis(10));
    let m = manager(&client)?;
    let sets: Api<StatefulSet> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    sets.create(
        &PostParams::default(),
        &set(
            "kv",
            json!({"spec": {
                "updateStrategy": {"type": "OnDelete"},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "1Gi"}}}}],
            }}),
        ),
    )
    .await?;
    wait_for("three ready", 20, || async {
        Ok(sets
            .get("kv")
            .await?
            .status
            .filter(|s| s.ready_replicas == Some(3))
            .map(|_| ()))
    })
    .await?;
    let p0 = pods.get("kv-0").await?;
    let vols = p0
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .clone()
        .unwrap_or_default();
    assert!(
        vols.iter()
            .any(|v| v.name == "data" && v.empty_dir.is_some()),
        "claim template as emptyDir: {vols:?}"
    );
    // A new template: OnDelete leaves the pods alone.
    sets.patch(
        "kv",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "img:2"}]}}}})),
    )
    .await?;
    let revisions: Api<ControllerRevision> = Api::default_namespaced(client.clone());
    wait_for("two revisions", 20, || async {
        Ok((revisions.list(&ListParams::default()).await?.items.len() == 2).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        live_pods(&client, "default", "kv")
            .await?
            .iter()
            .all(|p| image_of(p) == "img:1")
    );
    // Deleting one brings it back at the new revision.
    let uid = pods.get("kv-1").await?.uid();
    pods.delete("kv-1", &DeleteParams::default()).await?;
    let back = wait_for("kv-1 recreated", 20, || async {
        Ok(pods
            .get_opt("kv-1")
            .await?
            .filter(|p| p.uid() != uid && p.metadata.deletion_timestamp.is_none()))
    })
    .await?;
    assert_eq!(image_of(&back), "img:2");
    let st = wait_for("status", 20, || async {
        Ok(sets
            .get("kv")
            .await?
            .status
            .filter(|s| s.updated_replicas == Some(1) && s.ready_replicas == Some(3)))
    })
    .await?;
    assert_ne!(st.current_revision, st.update_revision);
    assert_eq!(st.current_replicas, Some(2));
    m.shutdown().await?;
    Ok(())
}
