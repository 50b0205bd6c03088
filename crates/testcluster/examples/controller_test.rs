//! A user's own kube-rs controller tested on the in-process test cluster: the controller labels
//! every Running pod with the node it runs on (`example.com/node`). The test cluster's simulated
//! nodes start the pods; the example then fails one node's pods and checks the labels.
//!
//! Run: `cargo run -p berth-testcluster --example controller_test`

use std::sync::Arc;
use std::time::Duration;

use berth_testcluster::{NodeConfig, TestCluster, eventually};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{Controller, controller::Action, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

/// The controller under test: a plain kube-rs `Controller`, unaware of the test cluster.
mod node_labeller {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error(transparent)]
    pub(crate) struct Error(#[from] kube::Error);

    async fn reconcile(pod: Arc<Pod>, client: Arc<Client>) -> Result<Action, Error> {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let label = pod.labels().get("example.com/node").cloned();
        if let (true, Some(node)) = (running, node)
            && label.as_ref() != Some(&node)
        {
            let api: Api<Pod> =
                Api::namespaced((*client).clone(), &pod.namespace().unwrap_or_default());
            api.patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"example.com/node": node}}})),
            )
            .await?;
        }
        Ok(Action::await_change())
    }

    fn error_policy(_: Arc<Pod>, _: &Error, _: Arc<Client>) -> Action {
        Action::requeue(Duration::from_millis(200))
    }

    pub(crate) async fn run(client: Client) {
        Controller::new(Api::<Pod>::all(client.clone()), watcher::Config::default())
            .run(reconcile, error_policy, Arc::new(client))
            .for_each(|_| async {})
            .await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    // Three simulated nodes, the API server in memory, and the controller under test beside it.
    let cluster = TestCluster::builder()
        .nodes(3)
        .node_config(NodeConfig {
            heartbeat_interval: Duration::from_millis(500),
            ..NodeConfig::default()
        })
        .component("node-labeller", node_labeller::run)
        .start()
        .await?;
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    for (i, node) in cluster.node_names().iter().enumerate() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{i}")},
            "spec": {"nodeName": node, "restartPolicy": "Never",
                     "containers": [{"name": "web", "image": "nginx"}]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    // The simulated nodes run the pods; the controller labels them.
    let labelled = eventually(Duration::from_secs(10), || async {
        pods.list(&ListParams::default().labels("example.com/node"))
            .await
            .is_ok_and(|l| l.items.len() == 3)
    })
    .await;
    anyhow::ensure!(labelled, "the controller did not label the running pods");
    for p in pods.list(&ListParams::default()).await? {
        println!("{} -> {}", p.name_any(), p.labels()["example.com/node"]);
    }
    // A pod that fails keeps its label (the controller only labels Running pods).
    cluster.fail_pod("default", "web-0", 1).await?;
    let failed = pods.get("web-0").await?;
    println!(
        "web-0 after fail_pod: {}",
        failed.status.and_then(|s| s.phase).unwrap_or_default()
    );
    cluster.shutdown().await;
    Ok(())
}
