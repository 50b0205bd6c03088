//! The node lifecycle controller on the test cluster: a silent node goes Unknown after the
//! grace period, gets the unreachable taints, its pods turn not Ready and are evicted after
//! their toleration time; a node back clears the taints; pods of a removed node are deleted.

use std::time::{Duration, Instant};

use berth_controllers::node_lifecycle::{
    NodeLifecycleConfig, NodeLifecycleController, TAINT_UNREACHABLE, node_ready,
};
use berth_testcluster::{NodeConfig, TestCluster, eventually};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;

fn pod(name: &str, node: &str, toleration_seconds: Option<i64>) -> Pod {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    });
    if let Some(s) = toleration_seconds {
        v["spec"]["tolerations"] = json!([{
            "key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
            "tolerationSeconds": s,
        }]);
    }
    serde_json::from_value(v).unwrap()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn cluster(default_toleration_seconds: i64) -> anyhow::Result<TestCluster> {
    let config = NodeLifecycleConfig {
        node_monitor_period: Duration::from_millis(100),
        node_monitor_grace_period: Duration::from_millis(1500),
        default_toleration_seconds,
        orphan_pod_quarantine: Duration::from_millis(300),
        ..NodeLifecycleConfig::default()
    };
    Ok(TestCluster::builder()
        .nodes(2)
        .node_config(NodeConfig {
            heartbeat_interval: Duration::from_millis(200),
            ..NodeConfig::default()
        })
        .component("node-lifecycle", move |client| {
            NodeLifecycleController::new(client, config).run()
        })
        .start()
        .await?)
}

#[tokio::test]
async fn silent_node_goes_unknown_tainted_and_its_pods_are_evicted_in_time() -> anyhow::Result<()> {
    let cluster = cluster(3).await?;
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    let nodes: Api<Node> = Api::all(cluster.client());
    pods.create(&PostParams::default(), &pod("default-tol", "node-1", None))
        .await?;
    pods.create(
        &PostParams::default(),
        &pod("long-tol", "node-1", Some(3600)),
    )
    .await?;
    pods.create(&PostParams::default(), &pod("other", "node-0", None))
        .await?;
    assert!(
        eventually(Duration::from_secs(10), || async {
            for n in ["default-tol", "long-tol", "other"] {
                if !pods.get(n).await.is_ok_and(|p| is_ready(&p)) {
                    return false;
                }
            }
            true
        })
        .await
    );
    // Healthy nodes stay Ready past the grace period.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node_ready(&nodes.get("node-1").await?), Some("True"));

    let silenced = Instant::now();
    cluster.node("node-1").go_silent()?;
    assert!(
        eventually(Duration::from_secs(10), || async {
            node_ready(&nodes.get("node-1").await.unwrap()) == Some("Unknown")
        })
        .await,
        "the silent node did not go Unknown"
    );
    assert!(
        silenced.elapsed() >= Duration::from_millis(1200),
        "Unknown before the grace period: {:?}",
        silenced.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            let n = nodes.get("node-1").await.unwrap();
            let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
            ["NoSchedule", "NoExecute"].iter().all(|e| {
                taints
                    .iter()
                    .any(|t| t.key == TAINT_UNREACHABLE && t.effect == *e)
            })
        })
        .await,
        "no unreachable taints"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            !is_ready(&pods.get("long-tol").await.unwrap())
        })
        .await,
        "pods on the silent node stayed Ready"
    );
    // The default toleration (3 s here) runs out: evicted (marked for deletion).
    let tainted = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async {
            pods.get("default-tol")
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
                .is_some()
        })
        .await,
        "the pod was not evicted"
    );
    assert!(
        tainted.elapsed() >= Duration::from_secs(2),
        "evicted too early"
    );
    let long = pods.get("long-tol").await?;
    assert!(
        long.metadata.deletion_timestamp.is_none(),
        "an hour's toleration was not honoured"
    );
    let other = pods.get("other").await?;
    assert!(other.metadata.deletion_timestamp.is_none() && is_ready(&other));

    // The node comes back: Ready, taints gone, its evicted pod removed, the other Ready again.
    cluster.node("node-1").come_back().await?;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let n = nodes.get("node-1").await.unwrap();
            node_ready(&n) == Some("True")
                && n.spec.and_then(|s| s.taints).unwrap_or_default().is_empty()
        })
        .await,
        "taints stayed after the node came back"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            pods.get_opt("default-tol").await.unwrap().is_none()
                && is_ready(&pods.get("long-tol").await.unwrap())
        })
        .await
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn pods_of_a_removed_node_are_deleted() -> anyhow::Result<()> {
    let cluster = cluster(300).await?;
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    pods.create(&PostParams::default(), &pod("orphan", "node-0", None))
        .await?;
    assert!(
        eventually(Duration::from_secs(10), || async {
            is_ready(&pods.get("orphan").await.unwrap())
        })
        .await
    );
    cluster.node("node-0").remove().await?;
    assert!(
        eventually(Duration::from_secs(10), || async {
            pods.get_opt("orphan").await.unwrap().is_none()
        })
        .await,
        "the pod of a removed node was not deleted"
    );
    cluster.shutdown().await;
    Ok(())
}
