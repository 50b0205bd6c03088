//! The simulated nodes: registration, heartbeats, pods turned Running with unique IPs,
//! graceful deletion, and the controls (fail a pod, readiness, silence, come back, remove).

use std::collections::HashSet;
use std::time::Duration;

use berth_testcluster::{NodeConfig, StoreConfig, TestCluster, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

fn fast() -> NodeConfig {
    NodeConfig {
        heartbeat_interval: Duration::from_millis(200),
        ..NodeConfig::default()
    }
}

fn pod(name: &str, node: &str, restart: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "t"}},
        "spec": {
            "nodeName": node,
            "restartPolicy": restart,
            "containers": [{"name": "c", "image": "busybox"}],
        },
    }))
    .unwrap()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn nodes_register_and_heartbeat() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .nodes(3)
        .node_config(fast())
        .start()
        .await?;
    let nodes: Api<Node> = Api::all(cluster.client());
    let list = nodes.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 3);
    assert_eq!(cluster.node_names(), ["node-0", "node-1", "node-2"]);
    let n0 = nodes.get("node-0").await?;
    assert_eq!(
        n0.metadata.labels.as_ref().unwrap()["kubernetes.io/hostname"],
        "node-0"
    );
    let status = n0.status.unwrap();
    assert_eq!(status.capacity.as_ref().unwrap()["pods"].0, "110");
    assert!(status.allocatable.is_some());
    let conds = status.conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    let addrs = status.addresses.unwrap();
    assert!(addrs.iter().any(|a| a.type_ == "InternalIP"));
    let leases: Api<Lease> = Api::namespaced(cluster.client(), "kube-node-lease");
    let first = leases
        .get("node-1")
        .await?
        .spec
        .unwrap()
        .renew_time
        .unwrap();
    let renewed = eventually(Duration::from_secs(5), || async {
        let l = leases.get("node-1").await.unwrap();
        l.spec.unwrap().renew_time.unwrap() != first
    })
    .await;
    assert!(renewed, "the lease was not renewed");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bound_pods_run_with_unique_ips_and_deletion_completes() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .nodes(4)
        .node_config(fast())
        .start()
        .await?;
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    for i in 0..40 {
        let node = format!("node-{}", i % 4);
        pods.create(
            &PostParams::default(),
            &pod(&format!("p{i}"), &node, "Always"),
        )
        .await?;
    }
    let all_running = eventually(Duration::from_secs(20), || async {
        let list = pods.list(&ListParams::default()).await.unwrap();
        list.items.len() == 40 && list.items.iter().all(|p| phase(p) == "Running" && ready(p))
    })
    .await;
    assert!(all_running, "pods did not all turn Running and Ready");
    let list = pods.list(&ListParams::default()).await?;
    let ips: HashSet<String> = list
        .items
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
        .collect();
    assert_eq!(ips.len(), 40, "pod IPs are not unique");
    let p0 = pods.get("p0").await?;
    let st = p0.status.unwrap();
    assert!(st.host_ip.is_some());
    let cs = &st.container_statuses.unwrap()[0];
    assert!(cs.ready && cs.state.as_ref().unwrap().running.is_some());

    // A graceful delete marks the pod; the node then removes it.
    pods.delete("p0", &DeleteParams::default()).await?;
    let gone = eventually(Duration::from_secs(10), || async {
        pods.get_opt("p0").await.unwrap().is_none()
    })
    .await;
    assert!(gone, "the deleted pod was not removed by its node");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn fail_pod_and_readiness_controls() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .nodes(1)
        .node_config(fast())
        .start()
        .await?;
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    pods.create(&PostParams::default(), &pod("once", "node-0", "Never"))
        .await?;
    pods.create(&PostParams::default(), &pod("always", "node-0", "Always"))
        .await?;
    assert!(
        eventually(Duration::from_secs(10), || async {
            pods.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .all(|p| phase(p) == "Running")
        })
        .await
    );
    cluster.fail_pod("default", "once", 3).await?;
    let once = pods.get("once").await?;
    assert_eq!(phase(&once), "Failed");
    let term = once.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(term.exit_code, 3);

    cluster.fail_pod("default", "always", 1).await?;
    let always = pods.get("always").await?;
    assert_eq!(phase(&always), "Running");
    assert_eq!(
        always.status.unwrap().container_statuses.unwrap()[0].restart_count,
        1
    );

    cluster.set_ready("default", "always", false).await?;
    assert!(!ready(&pods.get("always").await?));
    // The node keeps it not Ready (no flapping back).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ready(&pods.get("always").await?));
    cluster.set_ready("default", "always", true).await?;
    assert!(ready(&pods.get("always").await?));

    assert!(matches!(
        cluster.fail_pod("default", "missing", 1).await,
        Err(berth_testcluster::Error::Kube(_))
    ));
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn silent_node_stops_then_catches_up_and_removed_node_goes() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .nodes(2)
        .node_config(fast())
        .start()
        .await?;
    let leases: Api<Lease> = Api::namespaced(cluster.client(), "kube-node-lease");
    cluster.node("node-1").go_silent()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = leases.get("node-1").await?.spec.unwrap().renew_time;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(leases.get("node-1").await?.spec.unwrap().renew_time, before);

    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    pods.create(&PostParams::default(), &pod("late", "node-1", "Always"))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(phase(&pods.get("late").await?), "Running");

    cluster.node("node-1").come_back().await?;
    assert!(
        eventually(Duration::from_secs(10), || async {
            phase(&pods.get("late").await.unwrap()) == "Running"
        })
        .await,
        "the pod did not start after the node came back"
    );
    assert_ne!(leases.get("node-1").await?.spec.unwrap().renew_time, before);

    let name = cluster.add_node().await?;
    assert_eq!(name, "node-2");
    cluster.node("node-0").remove().await?;
    let nodes: Api<Node> = Api::all(cluster.client());
    assert!(nodes.get_opt("node-0").await?.is_none());
    assert!(leases.get_opt("node-0").await?.is_none());
    assert!(!cluster.node("node-0").exists());
    assert!(matches!(
        cluster.node("nope").go_silent(),
        Err(berth_testcluster::Error::NoSuchNode(_))
    ));
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn over_http_on_the_embedded_store() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .nodes(2)
        .node_config(fast())
        .store(StoreConfig::EmbeddedTemp)
        .http(true)
        .start()
        .await?;
    assert!(cluster.http_addr().is_some());
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    pods.create(&PostParams::default(), &pod("h", "node-1", "Always"))
        .await?;
    assert!(
        eventually(Duration::from_secs(10), || async {
            phase(&pods.get("h").await.unwrap()) == "Running"
        })
        .await
    );
    let addr = cluster.http_addr().unwrap();
    cluster.shutdown().await;
    // Nothing serves the port any more.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    Ok(())
}

#[tokio::test]
async fn a_durable_store_survives_the_cluster() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = TestCluster::builder()
        .nodes(1)
        .store(StoreConfig::Embedded(dir.path().to_owned()))
        .start()
        .await?;
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    pods.create(&PostParams::default(), &pod("kept", "node-0", "Always"))
        .await?;
    // A client handed out keeps the in-process server (and its store) alive.
    drop(pods);
    cluster.shutdown().await;
    let again = TestCluster::builder()
        .store(StoreConfig::Embedded(dir.path().to_owned()))
        .start()
        .await?;
    let pods: Api<Pod> = Api::default_namespaced(again.client());
    assert!(pods.get_opt("kept").await?.is_some());
    again.shutdown().await;
    Ok(())
}
