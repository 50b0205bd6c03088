//! Leader election: two managers on one API server, one acts; the other takes over within the
//! lease duration when the first dies, at once when it shuts down.

mod common;

use std::time::Duration;

use berth_controllers::ControllerManager;
use berth_controllers::leader::LeaseConfig;
use common::*;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn lease(id: &str) -> LeaseConfig {
    LeaseConfig::new("kube-system", "berth-controller-manager", id).timings(
        Duration::from_secs(2),
        Duration::from_millis(1500),
        Duration::from_millis(200),
    )
}

fn manager(client: &Client, id: &str) -> anyhow::Result<berth_controllers::ManagerHandle> {
    Ok(ControllerManager::new(client.clone())
        .controllers(["replicaset"])?
        .leader_election(lease(id))
        .spawn())
}

async fn holder(client: &Client) -> anyhow::Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    Ok(leases
        .get_opt("berth-controller-manager")
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

fn replicaset(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}
            }
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn one_leader_acts_and_the_other_takes_over_when_it_dies() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let a = manager(&client, "a")?;
    wait_for("a leads", 10, || async {
        Ok((holder(&client).await?.as_deref() == Some("a")).then_some(()))
    })
    .await?;
    let b = manager(&client, "b")?;
    let rs: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    rs.create(&PostParams::default(), &replicaset("le", 4))
        .await?;
    wait_for("4 pods", 10, || async {
        Ok((live_pods(&client, "default", "le").await?.len() == 4).then_some(()))
    })
    .await?;
    // Both "act" on the same ReplicaSet only if both lead: no duplicates means one did.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(live_pods(&client, "default", "le").await?.len(), 4);
    assert_eq!(
        holder(&client).await?.as_deref(),
        Some("a"),
        "b never took the lease"
    );
    // a dies without releasing: b takes over within the lease duration (+ a retry period).
    let died = std::time::Instant::now();
    a.abort();
    wait_for("b leads", 10, || async {
        Ok((holder(&client).await?.as_deref() == Some("b")).then_some(()))
    })
    .await?;
    let took = died.elapsed();
    // The lease lasts 2 s from b's last sight of a renewal (at most one retry period before
    // a died); b looks every 200 ms.
    assert!(
        took < Duration::from_millis(2000 + 200 + 600),
        "takeover took {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1800),
        "took the lease of a live holder: {took:?}"
    );
    // b acts.
    rs.patch(
        "le",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 6}})),
    )
    .await?;
    wait_for("6 pods", 10, || async {
        Ok((live_pods(&client, "default", "le").await?.len() == 6).then_some(()))
    })
    .await?;
    // A graceful shutdown releases the lease: c takes it at once.
    let c = manager(&client, "c")?;
    let released = std::time::Instant::now();
    b.shutdown().await?;
    wait_for("c leads", 10, || async {
        Ok((holder(&client).await?.as_deref() == Some("c")).then_some(()))
    })
    .await?;
    assert!(
        released.elapsed() < Duration::from_millis(1000),
        "release was not used"
    );
    c.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_acting() -> anyhow::Result<()> {
    init_tracing();
    let (_server, client) = server().await?;
    let a = manager(&client, "a")?;
    wait_for("a leads", 10, || async {
        Ok((holder(&client).await?.as_deref() == Some("a")).then_some(()))
    })
    .await?;
    // Someone else takes the lease behind a's back: a must notice and stop.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    leases
        .patch(
            "berth-controller-manager",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "intruder"}})),
        )
        .await?;
    wait_for("a stops", 10, || async {
        Ok(a.is_finished().then_some(()))
    })
    .await?;
    let r = a.shutdown().await;
    assert!(
        matches!(r, Err(berth_controllers::Error::LeaseLost(_))),
        "{r:?}"
    );
    Ok(())
}
