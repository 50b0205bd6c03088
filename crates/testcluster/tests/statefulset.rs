//! StatefulSets on the test cluster (scheduler, controllers, simulated nodes): ordered scale up
//! and down observed on the watch stream, and a rolling update with a partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_testcluster::{NodeConfig, Settings, TestCluster, eventually};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;

fn statefulset(name: &str, replicas: i32, image: &str) -> StatefulSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    }))
    .unwrap()
}

async fn cluster() -> anyhow::Result<TestCluster> {
    Ok(TestCluster::builder()
        .nodes(2)
        .node_config(NodeConfig {
            heartbeat_interval: Duration::from_millis(200),
            ..NodeConfig::default()
        })
        .scheduler(true)
        .controllers(Settings {
            events: false,
            ..Settings::default()
        })
        .start()
        .await?)
}

fn healthy(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && berth_controllers::pods::is_ready(p)
}

fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// What the watch stream showed, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// A pod name appeared; the ordinals below it that were healthy at that moment.
    Added(String, Vec<String>),
    /// A pod got its deletionTimestamp.
    Terminating(String),
    /// A pod is gone.
    Deleted(String),
}

/// Records pod events of `app` from the watch, with the pods' state as seen at each moment.
fn record(client: Client, app: &str) -> Arc<Mutex<Vec<Seen>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let out = log.clone();
    let api: Api<Pod> = Api::default_namespaced(client);
    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    tokio::spawn(async move {
        let mut state: BTreeMap<String, Pod> = BTreeMap::new();
        let mut stream = watcher(api, cfg).boxed();
        while let Some(Ok(ev)) = stream.next().await {
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let name = p.name_any();
                    let old = state.insert(name.clone(), p.clone());
                    if old.is_none() {
                        let healthy_now = state
                            .values()
                            .filter(|q| healthy(q))
                            .map(|q| q.name_any())
                            .collect();
                        out.lock().push(Seen::Added(name.clone(), healthy_now));
                    }
                    if p.metadata.deletion_timestamp.is_some()
                        && old.is_none_or(|o| o.metadata.deletion_timestamp.is_none())
                    {
                        out.lock().push(Seen::Terminating(name));
                    }
                }
                watcher::Event::Delete(p) => {
                    state.remove(&p.name_any());
                    out.lock().push(Seen::Deleted(p.name_any()));
                }
                _ => {}
            }
        }
    });
    log
}

async fn healthy_pods(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items.into_iter().filter(healthy).collect())
        .unwrap_or_default()
}

async fn all_pods(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn position(log: &[Seen], want: &Seen) -> usize {
    log.iter()
        .position(|s| s == want)
        .unwrap_or_else(|| panic!("{want:?} never seen in {log:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_scale_up_and_down() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let sets: Api<StatefulSet> = Api::default_namespaced(cluster.client());
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    let log = record(cluster.client(), "web");
    tokio::time::sleep(Duration::from_millis(200)).await;
    sets.create(&PostParams::default(), &statefulset("web", 3, "nginx:1"))
        .await?;
    assert!(
        eventually(Duration::from_secs(30), || async {
            healthy_pods(&pods, "web").await.len() == 3
        })
        .await,
        "three healthy pods: {:?}",
        log.lock()
    );
    // Each ordinal appeared only once every lower one was Running and Ready.
    {
        let log = log.lock().clone();
        for i in 0..3 {
            let added = log
                .iter()
                .find_map(|s| match s {
                    Seen::Added(n, healthy) if *n == format!("web-{i}") => Some(healthy.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("web-{i} never added: {log:?}"));
            for j in 0..i {
                assert!(
                    added.contains(&format!("web-{j}")),
                    "web-{i} created before web-{j} was ready: {log:?}"
                );
            }
        }
    }
    // Stable identity.
    let p1 = pods.get("web-1").await?;
    let spec = p1.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    assert_eq!(
        p1.labels()
            .get("statefulset.kubernetes.io/pod-name")
            .map(String::as_str),
        Some("web-1")
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            sets.get("web")
                .await
                .ok()
                .and_then(|s| s.status)
                .is_some_and(|s| s.ready_replicas == Some(3) && s.replicas == 3)
        })
        .await
    );

    // Scale down to 1: web-2 goes first, web-1 only once web-2 is gone.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await?;
    assert!(
        eventually(Duration::from_secs(30), || async {
            let all = all_pods(&pods, "web").await;
            all.len() == 1 && all[0].name_any() == "web-0"
        })
        .await,
        "only web-0 left: {:?}",
        log.lock()
    );
    let log = log.lock().clone();
    let gone2 = position(&log, &Seen::Deleted("web-2".into()));
    let term1 = position(&log, &Seen::Terminating("web-1".into()));
    let term2 = position(&log, &Seen::Terminating("web-2".into()));
    assert!(term2 < gone2 && gone2 < term1, "order: {log:?}");
    assert!(
        !log.contains(&Seen::Terminating("web-0".into())),
        "web-0 stays: {log:?}"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_with_a_partition() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let sets: Api<StatefulSet> = Api::default_namespaced(cluster.client());
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    sets.create(&PostParams::default(), &statefulset("db", 3, "db:1"))
        .await?;
    assert!(
        eventually(Duration::from_secs(30), || async {
            healthy_pods(&pods, "db").await.len() == 3
        })
        .await
    );
    let first = sets.get("db").await?.status.unwrap_or_default();
    let log = record(cluster.client(), "db");
    tokio::time::sleep(Duration::from_millis(200)).await;
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
            "template": {"spec": {"containers": [{"name": "c", "image": "db:2"}]}},
        }})),
    )
    .await?;
    let images = || async {
        let mut by: BTreeMap<String, String> = BTreeMap::new();
        for p in healthy_pods(&pods, "db").await {
            by.insert(p.name_any(), image_of(&p));
        }
        by
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            let by = images().await;
            by.get("db-1").map(String::as_str) == Some("db:2")
                && by.get("db-2").map(String::as_str) == Some("db:2")
                && by.len() == 3
        })
        .await,
        "db-1 and db-2 updated: {:?}",
        images().await
    );
    let status = sets.get("db").await?.status.unwrap_or_default();
    assert_eq!(status.updated_replicas, Some(2), "{status:?}");
    assert_eq!(status.current_revision, first.current_revision);
    assert_ne!(status.update_revision, status.current_revision);
    // Highest ordinal first, one at a time.
    {
        let log = log.lock().clone();
        let gone2 = position(&log, &Seen::Deleted("db-2".into()));
        let term1 = position(&log, &Seen::Terminating("db-1".into()));
        assert!(gone2 < term1, "db-2 replaced before db-1: {log:?}");
    }
    // Below the partition nothing moves.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(images().await.get("db-0").map(String::as_str), Some("db:1"));
    assert!(!log.lock().contains(&Seen::Terminating("db-0".into())));
    // Partition 0: db-0 follows, and the update revision becomes current.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await?;
    assert!(
        eventually(Duration::from_secs(30), || async {
            let Ok(s) = sets.get("db").await else {
                return false;
            };
            let s = s.status.unwrap_or_default();
            s.current_revision == s.update_revision
                && s.current_replicas == Some(3)
                && s.updated_replicas == Some(3)
                && s.ready_replicas == Some(3)
        })
        .await,
        "rollout complete: {:?}",
        sets.get("db").await?.status
    );
    assert!(images().await.values().all(|i| i == "db:2"));
    cluster.shutdown().await;
    Ok(())
}
