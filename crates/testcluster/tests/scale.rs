//! 5,000 simulated nodes in one process: one watch and one heartbeat loop serve them all.

use std::time::{Duration, Instant};

use berth_testcluster::{NodeConfig, TestCluster, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_nodes_register_heartbeat_and_run_pods() -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = TestCluster::builder()
        .nodes(5_000)
        .node_config(NodeConfig {
            heartbeat_interval: Duration::from_secs(20),
            ..NodeConfig::default()
        })
        .start()
        .await?;
    let registered = started.elapsed();
    eprintln!("5,000 nodes registered in {registered:?}");
    let nodes: Api<Node> = Api::all(cluster.client());
    assert_eq!(nodes.list(&ListParams::default()).await?.items.len(), 5_000);
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    for i in 0..1_000 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{i}")},
            "spec": {"nodeName": format!("node-{}", i * 5), "containers": [{"name": "c", "image": "x"}]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(60), || async {
            pods.list(&ListParams::default()).await.is_ok_and(|l| {
                l.items
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count()
                    == 1_000
            })
        })
        .await,
        "pods did not all run"
    );
    eprintln!("1,000 pods Running in {:?}", t.elapsed());
    // Every lease was renewed within one interval and a bit.
    let leases: Api<Lease> = Api::namespaced(cluster.client(), "kube-node-lease");
    let before = leases.get("node-4999").await?.spec.unwrap().renew_time;
    assert!(
        eventually(Duration::from_secs(40), || async {
            leases
                .get("node-4999")
                .await
                .unwrap()
                .spec
                .unwrap()
                .renew_time
                != before
        })
        .await
    );
    eprintln!(
        "5,000 nodes registered in {registered:?}; total {:?}",
        started.elapsed()
    );
    Ok(())
}
