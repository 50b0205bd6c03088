//! kube-rs against the in-process server: every verb, every patch type, watch semantics,
//! a watcher + reflector staying in sync while objects churn, and a small Controller.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use berth_api::store::{MemoryStore, Store};
use berth_apiserver::ApiServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{Controller, WatchStreamExt, controller::Action, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

async fn client() -> Result<(Client, Arc<MemoryStore>)> {
    let store = Arc::new(MemoryStore::new());
    let server = ApiServer::new(store.clone()).await?;
    Ok((Client::new(server.router(), "default"), store))
}

fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app": "demo"}},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap()
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]},
            },
        },
    }))
    .unwrap()
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_and_every_patch_type() -> Result<()> {
    let (client, _) = client().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let created = cms
        .create(&PostParams::default(), &configmap("a", &[("k", "1")]))
        .await?;
    assert!(created.uid().is_some());
    assert!(created.creation_timestamp().is_some());
    let rv1 = created.resource_version().unwrap();
    assert_eq!(
        api_error(
            cms.create(&PostParams::default(), &configmap("a", &[]))
                .await
                .unwrap_err()
        ),
        (409, "AlreadyExists".into())
    );
    let got = cms.get("a").await?;
    assert_eq!(got.data.as_ref().unwrap()["k"], "1");

    // Replace with the current resourceVersion works; a stale one is a conflict.
    let mut fresh = got.clone();
    fresh.data.as_mut().unwrap().insert("k".into(), "2".into());
    let replaced = cms.replace("a", &PostParams::default(), &fresh).await?;
    assert_ne!(replaced.resource_version().unwrap(), rv1);
    let mut stale = got.clone();
    stale.data.as_mut().unwrap().insert("k".into(), "3".into());
    assert_eq!(
        api_error(
            cms.replace("a", &PostParams::default(), &stale)
                .await
                .unwrap_err()
        ),
        (409, "Conflict".into())
    );
    assert_eq!(cms.get("a").await?.data.unwrap()["k"], "2");

    // Merge, JSON, strategic merge and apply patches.
    let pp = PatchParams::default();
    cms.patch("a", &pp, &Patch::Merge(json!({"data": {"m": "merge"}})))
        .await?;
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/data/j", "value": "json"},
        {"op": "remove", "path": "/data/k"},
    ]))?;
    cms.patch("a", &pp, &Patch::<()>::Json(ops)).await?;
    cms.patch(
        "a",
        &pp,
        &Patch::Strategic(json!({"metadata": {"labels": {"s": "smp"}}})),
    )
    .await?;
    let apply = PatchParams::apply("test").force();
    cms.patch(
        "a",
        &apply,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"ap": "apply"}})),
    )
    .await?;
    let cm = cms.get("a").await?;
    let data = cm.data.unwrap();
    assert_eq!(data.get("m").map(String::as_str), Some("merge"));
    assert_eq!(data.get("j").map(String::as_str), Some("json"));
    assert_eq!(data.get("ap").map(String::as_str), Some("apply"));
    assert!(!data.contains_key("k"));
    assert_eq!(cm.metadata.labels.unwrap()["s"], "smp");
    // Apply creates what does not exist.
    cms.patch(
        "applied",
        &apply,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"x": "y"}})),
    )
    .await?;
    assert_eq!(cms.get("applied").await?.data.unwrap()["x"], "y");

    // List with a label selector, limit and continue.
    for i in 0..5 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("page-{i}"), &[]),
        )
        .await?;
    }
    let page1 = cms.list(&ListParams::default().limit(3)).await?;
    assert_eq!(page1.items.len(), 3);
    let token = page1.metadata.continue_.clone().expect("more pages");
    let page2 = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await?;
    let page3 = cms
        .list(
            &ListParams::default()
                .limit(3)
                .continue_token(page2.metadata.continue_.as_deref().unwrap()),
        )
        .await?;
    assert_eq!(page1.items.len() + page2.items.len() + page3.items.len(), 7);
    assert!(page3.metadata.continue_.is_none());
    let labelled = cms.list(&ListParams::default().labels("s=smp")).await?;
    assert_eq!(labelled.items.len(), 1);
    let not = cms
        .list(&ListParams::default().labels("s notin (smp),app"))
        .await?;
    assert_eq!(
        not.items.len(),
        5,
        "the pages, not a (s=smp) nor applied (no app)"
    );
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=page-1"))
        .await?;
    assert_eq!(by_name.items.len(), 1);
    assert_eq!(
        api_error(
            cms.list(&ListParams::default().fields("spec.bogus=1"))
                .await
                .unwrap_err()
        ),
        (400, "BadRequest".into())
    );

    // Delete, then NotFound.
    cms.delete("a", &DeleteParams::default()).await?;
    assert_eq!(
        api_error(cms.get("a").await.unwrap_err()),
        (404, "NotFound".into())
    );
    let deleted = cms
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=demo"),
        )
        .await?;
    assert!(deleted.is_left());
    let left: Vec<String> = cms
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(left, ["applied"], "only the unlabelled one is left");
    Ok(())
}

#[tokio::test]
async fn deployments_default_generation_status_and_scale() -> Result<()> {
    let (client, _) = client().await?;
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    let d = deploys
        .create(&PostParams::default(), &deployment("web"))
        .await?;
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    let ru = spec
        .strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    assert_eq!(serde_json::to_value(&ru.max_surge)?, json!("25%"));
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        c.ports.as_ref().unwrap()[0].protocol.as_deref(),
        Some("TCP")
    );
    assert_eq!(d.metadata.generation, Some(1));

    // A label change keeps the generation; a spec change bumps it.
    let pp = PatchParams::default();
    let d = deploys
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await?;
    assert_eq!(d.metadata.generation, Some(1));
    let d = deploys
        .patch(
            "web",
            &pp,
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}}}})),
        )
        .await?;
    assert_eq!(d.metadata.generation, Some(2));
    let c = &d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(c.image.as_deref(), Some("nginx:1.28"));
    assert_eq!(
        c.ports.as_ref().unwrap()[0].container_port,
        80,
        "merged by name"
    );

    // Status goes through /status only.
    let d = deploys
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"status": {"replicas": 5}})),
        )
        .await?;
    assert!(d.status.is_none_or(|s| s.replicas.is_none()));
    let d = deploys
        .patch_status(
            "web",
            &pp,
            &Patch::Merge(json!({"status": {"replicas": 5}})),
        )
        .await?;
    assert_eq!(d.status.unwrap().replicas, Some(5));
    assert_eq!(d.metadata.generation, Some(2));

    // Scale subresource.
    let scale = deploys.get_scale("web").await?;
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=web"));
    deploys
        .patch_scale("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await?;
    let d = deploys.get("web").await?;
    assert_eq!(d.spec.unwrap().replicas, Some(3));
    assert_eq!(d.metadata.generation, Some(3));

    // Invalid: selector does not match the template.
    let mut bad = deployment("bad");
    bad.spec.as_mut().unwrap().selector.match_labels =
        Some(BTreeMap::from([("app".into(), "other".into())]));
    assert_eq!(
        api_error(
            deploys
                .create(&PostParams::default(), &bad)
                .await
                .unwrap_err()
        ),
        (422, "Invalid".into())
    );
    Ok(())
}

#[tokio::test]
async fn pods_bind_once_and_namespaces_cascade() -> Result<()> {
    let (client, _) = client().await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team"}}))?,
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))?;
    let p = pods.create(&PostParams::default(), &pod).await?;
    let spec = p.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("Always")
    );
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));

    // A binding for another pod of the same name (its uid) is refused, and changes nothing.
    let stale = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "p", "uid": "00000000-0000-0000-0000-000000000000"},
        "target": {"kind": "Node", "name": "n2"}});
    let req = http::Request::post("/api/v1/namespaces/team/pods/p/binding")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&stale)?)?;
    match client.request_text(req).await.unwrap_err() {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409, "{s:?}");
            assert!(s.message.contains("UID in precondition"), "{s:?}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert_eq!(pods.get("p").await?.spec.unwrap().node_name, None);
    let uid = p.metadata.uid.clone().unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p", "uid": uid}, "target": {"kind": "Node", "name": "n1"}});
    let req = http::Request::post("/api/v1/namespaces/team/pods/p/binding")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&binding)?)?;
    client.request_text(req).await?;
    assert_eq!(
        pods.get("p").await?.spec.unwrap().node_name.as_deref(),
        Some("n1")
    );
    let req = http::Request::post("/api/v1/namespaces/team/pods/p/binding")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&binding)?)?;
    assert_eq!(
        api_error(client.request_text(req).await.unwrap_err()).0,
        409
    );
    let by_node = pods
        .list(&ListParams::default().fields("spec.nodeName=n1,status.phase=Pending"))
        .await?;
    assert_eq!(by_node.items.len(), 1);

    // A bound pod is deleted gracefully: marked, still there.
    let marked = pods.delete("p", &DeleteParams::default()).await?;
    assert!(marked.left().unwrap().metadata.deletion_timestamp.is_some());
    assert!(pods.get("p").await.is_ok());

    // Deleting the namespace deletes what is in it.
    nss.delete("team", &DeleteParams::default()).await?;
    assert_eq!(api_error(pods.get("p").await.unwrap_err()).0, 404);
    assert_eq!(
        api_error(pods.create(&PostParams::default(), &pod).await.unwrap_err()).0,
        404,
        "no namespace, no pod"
    );
    Ok(())
}

#[tokio::test]
async fn watch_from_version_bookmarks_and_gone() -> Result<()> {
    let (client, store) = client().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let list = cms.list(&ListParams::default()).await?;
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(10), &rv)
        .await?
        .boxed();
    cms.create(&PostParams::default(), &configmap("w", &[]))
        .await?;
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "b"}})),
    )
    .await?;
    cms.delete("w", &DeleteParams::default()).await?;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match stream.try_next().await?.expect("stream open") {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                seen.push(("put", o.data.unwrap_or_default().len()))
            }
            WatchEvent::Deleted(_) => seen.push(("delete", 0)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec![("put", 0), ("put", 1), ("delete", 0)]);

    // Streaming list: initial ADDED events, then the initial-events-end bookmark.
    cms.create(&PostParams::default(), &configmap("x", &[]))
        .await?;
    let mut stream = cms
        .watch(&WatchParams::default().initial_events().timeout(5), "")
        .await?
        .boxed();
    assert!(matches!(stream.try_next().await?, Some(WatchEvent::Added(o)) if o.name_any() == "x"));
    match stream.try_next().await? {
        Some(WatchEvent::Bookmark(b)) => assert_eq!(
            b.metadata
                .annotations
                .get("k8s.io/initial-events-end")
                .map(String::as_str),
            Some("true")
        ),
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }

    // Past the store's history (compacted): 410 Gone, which makes clients relist.
    store.put("/filler", b"x".to_vec(), None).await?;
    store.compact(store.revision().await?).await?;
    let mut stream = cms.watch(&WatchParams::default(), &rv).await?.boxed();
    match stream.try_next().await? {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn reflector_stays_in_sync_while_objects_churn() -> Result<()> {
    let (client, _) = client().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for i in 0..20 {
        cms.create(&PostParams::default(), &configmap(&format!("c{i}"), &[]))
            .await?;
    }
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(cms.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    let task = tokio::spawn(async move { stream.for_each(|_| async {}).await });
    reader.wait_until_ready().await?;
    for i in 0..20 {
        if i % 2 == 0 {
            cms.delete(&format!("c{i}"), &DeleteParams::default())
                .await?;
        } else {
            cms.patch(
                &format!("c{i}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"v": i.to_string()}})),
            )
            .await?;
        }
        cms.create(&PostParams::default(), &configmap(&format!("n{i}"), &[]))
            .await?;
    }
    let want: Vec<String> = {
        let mut names: Vec<String> = cms
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|c| c.name_any())
            .collect();
        names.sort();
        names
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut have: Vec<String> = reader.state().iter().map(|c| c.name_any()).collect();
        have.sort();
        let patched_ok = reader
            .state()
            .iter()
            .filter(|c| c.name_any().starts_with('c'))
            .all(|c| c.data.as_ref().is_some_and(|d| d.contains_key("v")));
        if have == want && patched_ok {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector never caught up: {have:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ReconcileError(#[from] kube::Error);

#[tokio::test]
async fn controller_reconciles_configmaps() -> Result<()> {
    let (client, _) = client().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let ctx = Arc::new(cms.clone());
    async fn reconcile(
        cm: Arc<ConfigMap>,
        api: Arc<Api<ConfigMap>>,
    ) -> Result<Action, ReconcileError> {
        if cm.annotations().get("reconciled").is_none() {
            api.patch(
                &cm.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"reconciled": "yes"}}})),
            )
            .await?;
        }
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<ConfigMap>, _: &ReconcileError, _: Arc<Api<ConfigMap>>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let controller = Controller::new(cms.clone(), watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    let task = tokio::spawn(controller);
    for i in 0..5 {
        cms.create(&PostParams::default(), &configmap(&format!("r{i}"), &[]))
            .await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let done = cms
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|c| c.annotations().get("reconciled").is_some())
            .count();
        if done == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} reconciled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    Ok(())
}

#[tokio::test]
async fn foreground_deletion_waits_for_dependents_and_finalizers_hold() -> Result<()> {
    let (client, _) = client().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let owner = cms
        .create(&PostParams::default(), &configmap("owner", &[]))
        .await?;
    let mut child = configmap("child", &[]);
    child.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.uid().unwrap(),
            ..Default::default()
        },
    ]);
    cms.create(&PostParams::default(), &child).await?;
    cms.create(&PostParams::default(), &configmap("lonely", &[]))
        .await?;

    // No dependents: gone at once. Dependents: held by foregroundDeletion for the collector.
    cms.delete("lonely", &DeleteParams::foreground()).await?;
    assert_eq!(api_error(cms.get("lonely").await.unwrap_err()).0, 404);
    cms.delete("owner", &DeleteParams::foreground()).await?;
    let held = cms.get("owner").await?;
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.finalizers(), ["foregroundDeletion"]);

    // Removing the last finalizer completes the deletion.
    cms.patch(
        "owner",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert_eq!(api_error(cms.get("owner").await.unwrap_err()).0, 404);
    Ok(())
}

#[tokio::test]
async fn services_get_unique_addresses_and_jobs_a_selector() -> Result<()> {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Service;
    let (client, _) = client().await?;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let svc = |name: &str, ty: &str, node_port: Option<i32>| -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"type": ty, "selector": {"app": name}, "ports": [{"port": 80, "nodePort": node_port}]},
        }))
        .unwrap()
    };
    let a = svcs
        .create(&PostParams::default(), &svc("a", "ClusterIP", None))
        .await?;
    let b = svcs
        .create(&PostParams::default(), &svc("b", "NodePort", None))
        .await?;
    let (a, b) = (a.spec.unwrap(), b.spec.unwrap());
    assert!(a.cluster_ip.as_deref().unwrap().starts_with("10.96."));
    assert_ne!(a.cluster_ip, b.cluster_ip);
    let port = &b.ports.unwrap()[0];
    assert!((30000..=32767).contains(&port.node_port.unwrap()));
    assert_eq!(serde_json::to_value(&port.target_port)?, json!(80));
    let taken = port.node_port;
    assert_eq!(
        api_error(
            svcs.create(&PostParams::default(), &svc("c", "NodePort", taken))
                .await
                .unwrap_err()
        )
        .0,
        422
    );
    // clusterIP is immutable.
    assert_eq!(
        api_error(
            svcs.patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"clusterIP": "10.96.9.9"}}))
            )
            .await
            .unwrap_err()
        )
        .0,
        422
    );

    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "pi"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "pi", "image": "perl:5.34.0", "command": ["perl", "-e", "print 1"]}]}}},
    }))?;
    let job = jobs.create(&PostParams::default(), &job).await?;
    let uid = job.uid().unwrap();
    let spec = job.spec.unwrap();
    assert_eq!(
        spec.selector.unwrap().match_labels.unwrap()["batch.kubernetes.io/controller-uid"],
        uid
    );
    assert_eq!(
        spec.template.metadata.unwrap().labels.unwrap()["job-name"],
        "pi"
    );
    assert_eq!(spec.backoff_limit, Some(6));
    Ok(())
}
