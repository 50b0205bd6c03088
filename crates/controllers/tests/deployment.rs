//! The Deployment controller against the in-process API server: rolling updates within their
//! bounds, Recreate, rollback, pause, the status `kubectl rollout status` reads, and a manager
//! killed mid-rollout.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_controllers::ControllerManager;
use berth_controllers::deployment::{POD_TEMPLATE_HASH, REVISION, REVISION_HISTORY, revision_of};
use common::*;
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;

fn deployment(name: &str, replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]}
            }
        }
    }))
    .unwrap()
}

fn manager(client: &Client) -> anyhow::Result<berth_controllers::ManagerHandle> {
    Ok(ControllerManager::new(client.clone())
        .controllers(["replicaset", "deployment"])?
        .spawn())
}

async fn set_image(api: &Api<Deployment>, name: &str, image: &str) -> anyhow::Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}})),
    )
    .await?;
    Ok(())
}

/// What `kubectl rollout status` waits for.
async fn rolled_out(api: &Api<Deployment>, name: &str, secs: u64) -> anyhow::Result<Deployment> {
    wait_for(&format!("rollout of {name}"), secs, || async {
        let d = api.get(name).await?;
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let s = d.status.clone().unwrap_or_default();
        let done = s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(want)
            && s.replicas == Some(want)
            && s.available_replicas == Some(want);
        Ok(done.then_some(d))
    })
    .await
}

/// Watches the pods of `app` and records, at every event, (pods present, pods ready).
fn observe(client: &Client, app: &str) -> Arc<Mutex<Vec<(usize, usize)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    tokio::spawn(async move {
        let mut live: HashMap<String, bool> = HashMap::new();
        let mut listed = false;
        let stream = watcher(api, cfg);
        futures::pin_mut!(stream);
        while let Ok(Some(ev)) = stream.try_next().await {
            match ev {
                watcher::Event::InitDone => {
                    listed = true;
                }
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    if p.metadata.deletion_timestamp.is_some() {
                        live.remove(&p.name_any());
                    } else {
                        live.insert(p.name_any(), berth_controllers::pods::is_ready(&p));
                    }
                }
                watcher::Event::Delete(p) => {
                    live.remove(&p.name_any());
                }
                _ => continue,
            }
            if listed {
                let ready = live.values().filter(|r| **r).count();
                out.lock().push((live.len(), ready));
            }
        }
    });
    seen
}

#[tokio::test]
async fn rolling_update_stays_within_max_surge_and_max_unavailable() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let _kubelet = FakeKubelet::start(client.clone(), Duration::from_millis(30));
    let m = manager(&client)?;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 1}});
    api.create(
        &PostParams::default(),
        &deployment("roll", 6, "app:v1", strategy),
    )
    .await?;
    let d = rolled_out(&api, "roll", 20).await?;
    assert_eq!(d.annotations().get(REVISION).map(String::as_str), Some("1"));
    let seen = observe(&client, "roll");
    tokio::time::sleep(Duration::from_millis(200)).await;
    set_image(&api, "roll", "app:v2").await?;
    wait_for("all pods on v2", 30, || async {
        let pods = live_pods(&client, "default", "roll").await?;
        Ok((pods.len() == 6 && pods.iter().all(|p| image_of(p) == "app:v2")).then_some(()))
    })
    .await?;
    let d = rolled_out(&api, "roll", 20).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().clone();
    assert!(seen.len() > 12, "the watch saw the rollout: {seen:?}");
    for (i, (present, ready)) in seen.iter().enumerate() {
        assert!(
            *present <= 6 + 2,
            "event {i}: {present} pods > replicas + maxSurge: {seen:?}"
        );
        assert!(
            *ready >= 6 - 1,
            "event {i}: {ready} ready < replicas - maxUnavailable: {seen:?}"
        );
    }
    assert!(
        seen.iter().any(|(p, _)| *p > 6),
        "the rollout used its surge: {seen:?}"
    );
    // Bookkeeping for kubectl.
    assert_eq!(d.annotations().get(REVISION).map(String::as_str), Some("2"));
    let s = d.status.unwrap();
    let progressing = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        progressing.reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    let available = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Available")
        .unwrap();
    assert_eq!(available.status, "True");
    let rss: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    let list = rss.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 2);
    for rs in &list.items {
        let hash = rs.labels().get(POD_TEMPLATE_HASH).unwrap();
        assert!(rs.name_any().ends_with(hash.as_str()));
    }
    m.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn recreate_removes_every_old_pod_before_creating_new_ones() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let _kubelet = FakeKubelet::start(client.clone(), Duration::from_millis(10));
    let m = manager(&client)?;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    api.create(
        &PostParams::default(),
        &deployment("re", 3, "app:v1", json!({"type": "Recreate"})),
    )
    .await?;
    rolled_out(&api, "re", 20).await?;
    let seen_images = Arc::new(Mutex::new(Vec::<(usize, usize)>::new()));
    let out = seen_images.clone();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    tokio::spawn(async move {
        let mut live: HashMap<String, String> = HashMap::new();
        let stream = watcher(pods, watcher::Config::default().labels("app=re"));
        futures::pin_mut!(stream);
        while let Ok(Some(ev)) = stream.try_next().await {
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    live.insert(p.name_any(), image_of(&p));
                }
                watcher::Event::Delete(p) => {
                    live.remove(&p.name_any());
                }
                _ => continue,
            }
            let v1 = live.values().filter(|i| *i == "app:v1").count();
            let v2 = live.values().filter(|i| *i == "app:v2").count();
            out.lock().push((v1, v2));
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    set_image(&api, "re", "app:v2").await?;
    wait_for("all on v2", 20, || async {
        let pods = live_pods(&client, "default", "re").await?;
        Ok((pods.len() == 3 && pods.iter().all(|p| image_of(p) == "app:v2")).then_some(()))
    })
    .await?;
    rolled_out(&api, "re", 20).await?;
    for (v1, v2) in seen_images.lock().iter() {
        assert!(
            *v1 == 0 || *v2 == 0,
            "old and new pods together: {v1} v1, {v2} v2"
        );
    }
    m.shutdown().await?;
    Ok(())
}

/// `kubectl rollout undo`, as kubectl does it: find the ReplicaSet of the revision, patch its
/// template (without the hash label) and annotations back into the Deployment.
async fn rollout_undo(client: &Client, name: &str, to_revision: i64) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let d = deployments.get(name).await?;
    let rss: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    let uid = d.uid().unwrap();
    let rs = rss
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await?
        .items
        .into_iter()
        .filter(|rs| berth_controllers::pods::controlled_by(rs, &uid))
        .find(|rs| revision_of(&rs.metadata) == to_revision)
        .ok_or_else(|| anyhow::anyhow!("revision {to_revision} not found"))?;
    let mut template = serde_json::to_value(rs.spec.unwrap().template.unwrap())?;
    template["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove(POD_TEMPLATE_HASH);
    // Go's encoding of a PodTemplateSpec, as kubectl sends it, has these zero values.
    template["metadata"]["creationTimestamp"] = serde_json::Value::Null;
    template["spec"]["containers"][0]["resources"] = json!({});
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": {}},
    ]))?;
    deployments
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    Ok(())
}

#[tokio::test]
async fn rollback_restores_the_old_template_as_a_new_revision() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let _kubelet = FakeKubelet::start(client.clone(), Duration::from_millis(5));
    let m = manager(&client)?;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    api.create(
        &PostParams::default(),
        &deployment("undo", 3, "app:v1", strategy),
    )
    .await?;
    rolled_out(&api, "undo", 20).await?;
    set_image(&api, "undo", "app:v2").await?;
    wait_for("revision 2", 20, || async {
        let d = api.get("undo").await?;
        Ok((revision_of(&d.metadata) == 2).then_some(()))
    })
    .await?;
    rolled_out(&api, "undo", 20).await?;
    rollout_undo(&client, "undo", 1).await?;
    wait_for("all on v1 again", 20, || async {
        let pods = live_pods(&client, "default", "undo").await?;
        Ok((pods.len() == 3 && pods.iter().all(|p| image_of(p) == "app:v1")).then_some(()))
    })
    .await?;
    let d = wait_for("revision 3", 20, || async {
        let d = api.get("undo").await?;
        Ok((revision_of(&d.metadata) == 3).then_some(d))
    })
    .await?;
    rolled_out(&api, "undo", 20).await?;
    // The v1 ReplicaSet came back as revision 3 and remembers revision 1.
    let rss: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    let list = rss.list(&ListParams::default()).await?.items;
    assert_eq!(list.len(), 2, "the rollback reused the old ReplicaSet");
    let v1 = list
        .iter()
        .find(|rs| revision_of(&rs.metadata) == 3)
        .expect("revision 3");
    assert_eq!(
        v1.annotations().get(REVISION_HISTORY).map(String::as_str),
        Some("1")
    );
    assert_eq!(v1.spec.as_ref().unwrap().replicas, Some(3));
    let _ = d;
    m.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_paused_deployment_does_not_roll_until_resumed() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let _kubelet = FakeKubelet::start(client.clone(), Duration::from_millis(5));
    let m = manager(&client)?;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    api.create(
        &PostParams::default(),
        &deployment("pause", 2, "app:v1", json!({"type": "RollingUpdate"})),
    )
    .await?;
    rolled_out(&api, "pause", 20).await?;
    api.patch(
        "pause",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await?;
    set_image(&api, "pause", "app:v2").await?;
    // Scaling still works while paused.
    api.patch(
        "pause",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await?;
    wait_for("3 pods", 20, || async {
        Ok((live_pods(&client, "default", "pause").await?.len() == 3).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pods = live_pods(&client, "default", "pause").await?;
    assert!(
        pods.iter().all(|p| image_of(p) == "app:v1"),
        "rolled while paused"
    );
    let rss: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    assert_eq!(rss.list(&ListParams::default()).await?.items.len(), 1);
    let d = api.get("pause").await?;
    let progressing = d
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(progressing.reason.as_deref(), Some("DeploymentPaused"));
    api.patch(
        "pause",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await?;
    wait_for("all on v2", 20, || async {
        let pods = live_pods(&client, "default", "pause").await?;
        Ok((pods.len() == 3 && pods.iter().all(|p| image_of(p) == "app:v2")).then_some(()))
    })
    .await?;
    rolled_out(&api, "pause", 20).await?;
    m.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_manager_killed_mid_rollout_converges_without_duplicates() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let _kubelet = FakeKubelet::start(client.clone(), Duration::from_millis(40));
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}});
    api.create(
        &PostParams::default(),
        &deployment("kill", 10, "app:v1", strategy),
    )
    .await?;
    let m = manager(&client)?;
    rolled_out(&api, "kill", 20).await?;
    let seen = observe(&client, "kill");
    set_image(&api, "kill", "app:v2").await?;
    let mut m = Some(m);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        m.take().unwrap().abort();
        m = Some(manager(&client)?);
    }
    wait_for("all on v2", 30, || async {
        let pods = live_pods(&client, "default", "kill").await?;
        Ok((pods.len() == 10 && pods.iter().all(|p| image_of(p) == "app:v2")).then_some(()))
    })
    .await?;
    rolled_out(&api, "kill", 20).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(live_pods(&client, "default", "kill").await?.len(), 10);
    for (present, _) in seen.lock().iter() {
        assert!(*present <= 13, "{present} pods > replicas + maxSurge");
    }
    m.unwrap().shutdown().await?;
    Ok(())
}

/// Scaling a Deployment in the middle of a rollout shares the new replicas between the old and
/// the new ReplicaSet in proportion to their sizes (Kubernetes' proportional scaling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_mid_rollout_is_proportional() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let kubelet = FakeKubelet::start(client.clone(), Duration::from_millis(5));
    let m = manager(&client)?;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    api.create(
        &PostParams::default(),
        &deployment(
            "prop",
            10,
            "web:1",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 0}}),
        ),
    )
    .await?;
    rolled_out(&api, "prop", 30).await?;
    // New pods never become ready: the rollout stops at old 10 + new 3.
    kubelet.pause();
    set_image(&api, "prop", "web:2").await?;
    let rs: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    let sizes = || async {
        let mut by_image: Vec<(String, i32)> = rs
            .list(&ListParams::default().labels("app=prop"))
            .await?
            .items
            .iter()
            .map(|r| {
                let spec = r.spec.as_ref().unwrap();
                let image = spec
                    .template
                    .as_ref()
                    .unwrap()
                    .spec
                    .as_ref()
                    .unwrap()
                    .containers[0]
                    .image
                    .clone()
                    .unwrap_or_default();
                (image, spec.replicas.unwrap_or(0))
            })
            .collect();
        by_image.sort();
        Ok::<_, anyhow::Error>(by_image)
    };
    wait_for("old 10, new 3", 20, || async {
        Ok((sizes().await? == [("web:1".to_string(), 10), ("web:2".to_string(), 3)]).then_some(()))
    })
    .await?;
    // 20 replicas (23 with the surge): +10 shared 10*23/13 -> 18 and 3*23/13 -> 5.
    api.patch(
        "prop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 20}})),
    )
    .await?;
    wait_for("old 18, new 5", 20, || async {
        Ok((sizes().await? == [("web:1".to_string(), 18), ("web:2".to_string(), 5)]).then_some(()))
    })
    .await?;
    m.shutdown().await?;
    Ok(())
}
