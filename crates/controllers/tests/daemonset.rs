//! The DaemonSet controller: one pod per eligible node, following nodes joining and leaving,
//! selectors, taints, and a rolling update with ControllerRevisions.

mod common;

use std::time::Duration;

use berth_controllers::ControllerManager;
use berth_controllers::daemonset::REVISION_HASH;
use common::*;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

async fn node(
    client: &Client,
    name: &str,
    labels: serde_json::Value,
    taints: serde_json::Value,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let n: Node = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}),
    )?;
    nodes.create(&PostParams::default(), &n).await?;
    Ok(())
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .unwrap()
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms[0]
        .match_fields
        .as_ref()
        .unwrap()[0]
        .values
        .as_ref()
        .unwrap()[0]
        .clone()
}

async fn placed(client: &Client, want: &[&str]) -> anyhow::Result<Vec<Pod>> {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_for(&format!("pods on {want:?}"), 20, || {
        let want = want.clone();
        async move {
            let pods = live_pods(client, "default", "agent").await?;
            let mut on: Vec<String> = pods.iter().map(node_of).collect();
            on.sort();
            Ok((on == want).then_some(pods))
        }
    })
    .await
}

#[tokio::test]

async fn one_pod_per_eligible_node_following_nodes_and_updates() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let _kubelet = FakeKubelet::start(client.clone(), Duration::from_millis(5));
    node(&client, "n1", json!({"role": "worker"}), json!([])).await?;
    node(
        &client,
        "n2",
        json!({"role": "worker"}),
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await?;
    node(&client, "n3", json!({"role": "edge"}), json!([])).await?;
    // Not-ready nodes are still eligible: DaemonSet pods tolerate that taint by default.
    node(
        &client,
        "n4",
        json!({"role": "worker"}),
        json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
    )
    .await?;
    let m = ControllerManager::new(client.clone())
        .controllers(["daemonset"])?
        .spawn();
    let api: Api<DaemonSet> = Api::default_namespaced(client.clone());
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"nodeSelector": {"role": "worker"}, "containers": [{"name": "c", "image": "agent:v1"}]}
            }
        }
    }))?;
    api.create(&PostParams::default(), &ds).await?;
    let pods = placed(&client, &["n1", "n4"]).await?;
    for p in &pods {
        let tol = p.spec.as_ref().unwrap().tolerations.as_ref().unwrap();
        assert!(
            tol.iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable"))
        );
        assert!(
            p.spec.as_ref().unwrap().node_name.is_none(),
            "placed by affinity, bound by the scheduler"
        );
    }
    // A node joins; another leaves.
    node(&client, "n5", json!({"role": "worker"}), json!([])).await?;
    placed(&client, &["n1", "n4", "n5"]).await?;
    Api::<Node>::all(client.clone())
        .delete("n1", &DeleteParams::default())
        .await?;
    placed(&client, &["n4", "n5"]).await?;
    // Tolerating the taint makes n2 eligible too; the update rolls through every pod.
    api.patch(
        "agent",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"template": {"spec": {
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
            "containers": [{"name": "c", "image": "agent:v2"}]
        }}}})),
    )
    .await?;
    wait_for("all on v2", 20, || async {
        let pods = live_pods(&client, "default", "agent").await?;
        let mut on: Vec<String> = pods.iter().map(node_of).collect();
        on.sort();
        Ok(
            (on == ["n2", "n4", "n5"] && pods.iter().all(|p| image_of(p) == "agent:v2"))
                .then_some(()),
        )
    })
    .await?;
    let revs: Api<ControllerRevision> = Api::default_namespaced(client.clone());
    let revs = revs.list(&ListParams::default()).await?.items;
    assert_eq!(revs.len(), 2, "one ControllerRevision per template");
    let pods = live_pods(&client, "default", "agent").await?;
    let newest = revs.iter().max_by_key(|r| r.revision).unwrap();
    assert!(pods.iter().all(|p| Some(p.labels()[REVISION_HASH].as_str())
        == newest.labels().get(REVISION_HASH).map(String::as_str)));
    let status = wait_for("status", 10, || async {
        let s = api.get("agent").await?.status.unwrap_or_default();
        Ok((s.desired_number_scheduled == 3
            && s.updated_number_scheduled == Some(3)
            && s.number_ready == 3)
            .then_some(s))
    })
    .await?;
    assert_eq!(status.number_misscheduled, 0);
    m.shutdown().await?;
    Ok(())
}

/// maxSurge: the new pod starts beside the old one on its node, the old one goes once the new
/// one is ready; never more than maxSurge nodes surging, never a node without a ready pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surging_rolling_update_keeps_every_node_served() -> anyhow::Result<()> {
    use std::collections::HashMap;
    init_tracing();
    let (_server, client) = server().await?;
    let _kubelet = FakeKubelet::start(client.clone(), Duration::from_millis(100));
    for n in ["s1", "s2", "s3", "s4"] {
        node(&client, n, json!({}), json!([])).await?;
    }
    let m = ControllerManager::new(client.clone())
        .controllers(["daemonset"])?
        .spawn();
    let api: Api<DaemonSet> = Api::default_namespaced(client.clone());
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": "agent:v1"}]}
            }
        }
    }))?;
    api.create(&PostParams::default(), &ds).await?;
    wait_for("4 ready pods", 20, || async {
        let pods = live_pods(&client, "default", "agent").await?;
        Ok((pods.len() == 4 && pods.iter().all(berth_controllers::pods::is_ready)).then_some(()))
    })
    .await?;
    api.patch(
        "agent",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "agent:v2"}]
        }}}})),
    )
    .await?;
    let mut max_pods = 0;
    let mut saw_surge = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pods = live_pods(&client, "default", "agent").await?;
        let mut per_node: HashMap<String, (usize, usize)> = HashMap::new();
        for p in &pods {
            let e = per_node.entry(node_of(p)).or_default();
            e.0 += 1;
            if berth_controllers::pods::is_ready(p) {
                e.1 += 1;
            }
        }
        max_pods = max_pods.max(pods.len());
        saw_surge |= per_node.values().any(|(n, _)| *n == 2);
        assert_eq!(per_node.len(), 4, "a node lost its pod: {per_node:?}");
        assert!(
            per_node.values().all(|(_, ready)| *ready >= 1),
            "a node without a ready pod: {per_node:?}"
        );
        if pods.len() == 4 && pods.iter().all(|p| image_of(p) == "agent:v2") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rollout stuck");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_surge, "the new pod started beside the old one");
    assert!(max_pods <= 5, "more than maxSurge extra pods: {max_pods}");
    m.shutdown().await?;
    Ok(())
}
