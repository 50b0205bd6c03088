//! The node IPAM controller against the in-process API server: every node gets one distinct pod
//! CIDR, existing ones are kept and never handed out again, a deleted node's CIDR is reused once
//! the cluster CIDR is full.

mod common;

use std::collections::BTreeSet;

use berth_controllers::node_ipam::{NodeIpamConfig, run_node_ipam};
use common::*;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn node(client: &Client, name: &str, cidr: Option<&str>) -> anyhow::Result<()> {
    let mut spec = json!({});
    if let Some(c) = cidr {
        spec = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await?;
    Ok(())
}

async fn cidr_of(client: &Client, name: &str) -> anyhow::Result<Option<String>> {
    let n = Api::<Node>::all(client.clone()).get(name).await?;
    Ok(n.spec.and_then(|s| s.pod_cidr))
}

#[tokio::test]
async fn nodes_get_distinct_cidrs_once_and_deleted_ones_are_reused() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    // A node that already has a subnet before the controller starts keeps it.
    node(&client, "old", Some("10.9.0.0/24")).await?;
    node(&client, "a", None).await?;
    let config = NodeIpamConfig::new("10.9.0.0/22", 24)?;
    let task = tokio::spawn(run_node_ipam(client.clone(), config));

    node(&client, "b", None).await?;
    node(&client, "c", None).await?;
    let mut got = BTreeSet::new();
    for n in ["a", "b", "c"] {
        let c = wait_for("a pod CIDR", 20, || async { cidr_of(&client, n).await }).await?;
        assert!(got.insert(c.clone()), "{c} handed out twice");
        let node = Api::<Node>::all(client.clone()).get(n).await?;
        assert_eq!(node.spec.unwrap().pod_cidrs, Some(vec![c]));
    }
    assert_eq!(
        got,
        ["10.9.1.0/24", "10.9.2.0/24", "10.9.3.0/24"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        cidr_of(&client, "old").await?.as_deref(),
        Some("10.9.0.0/24")
    );

    // Full: d waits; its status heartbeats don't get it a CIDR.
    node(&client, "d", None).await?;
    Api::<Node>::all(client.clone())
        .patch_status(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(cidr_of(&client, "d").await?, None);

    // b leaves: d gets b's subnet.
    let b = cidr_of(&client, "b").await?.unwrap();
    Api::<Node>::all(client.clone())
        .delete("b", &DeleteParams::default())
        .await?;
    let d = wait_for("d's pod CIDR", 20, || async { cidr_of(&client, "d").await }).await?;
    assert_eq!(d, b);

    // A restarted controller recovers from the nodes: nothing changes, nothing doubles.
    task.abort();
    let task = tokio::spawn(run_node_ipam(client.clone(), config));
    node(&client, "e", None).await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        cidr_of(&client, "e").await?,
        None,
        "the cluster CIDR is full"
    );
    assert_eq!(cidr_of(&client, "d").await?, Some(d));
    task.abort();
    Ok(())
}
