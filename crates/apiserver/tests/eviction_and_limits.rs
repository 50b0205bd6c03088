//! kube-rs against the in-process server: `pods/eviction` honouring a PodDisruptionBudget (429
//! TooManyRequests when the budget would break, the budget's status kept by the server),
//! `resourceVersionMatch` on lists, and the 1.5 MiB object limit.

use anyhow::Result;
use berth_apiserver::ApiServer;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, EvictParams, ListParams, PostParams, VersionMatch};
use serde_json::json;

async fn client() -> Result<Client> {
    Ok(Client::new(
        ApiServer::in_memory().await?.router(),
        "default",
    ))
}

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A running, ready pod labelled app=web.
async fn ready_pod(pods: &Api<Pod>, name: &str) -> Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    pods.patch_status(
        name,
        &Default::default(),
        &kube::api::Patch::Merge(json!({"status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn eviction_honours_the_disruption_budget() -> Result<()> {
    let client = client().await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(client.clone());
    for n in ["web-1", "web-2", "web-3"] {
        ready_pod(&pods, n).await?;
    }
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
    }))?;
    let created = pdbs.create(&PostParams::default(), &pdb).await?;
    let status = created.status.unwrap();
    assert_eq!(
        (
            status.expected_pods,
            status.current_healthy,
            status.desired_healthy,
            status.disruptions_allowed
        ),
        (3, 3, 2, 1)
    );
    // The first eviction fits the budget; the second would break it.
    pods.evict("web-1", &EvictParams::default()).await?;
    assert!(pods.get_opt("web-1").await?.is_none());
    let status = pdbs.get("web").await?.status.unwrap();
    assert_eq!(status.disruptions_allowed, 0);
    assert!(status.disrupted_pods.unwrap().contains_key("web-1"));
    let (code, reason, message) = api_error(
        pods.evict("web-2", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(
        message,
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert!(pods.get_opt("web-2").await?.is_some());
    // Pods the budget does not cover, or not running, go at once; unknown pods are 404.
    let lone: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "lone"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}))?;
    pods.create(&PostParams::default(), &lone).await?;
    pods.evict("lone", &EvictParams::default()).await?;
    let (code, _, _) = api_error(
        pods.evict("nope", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
    // A budget with both fields is invalid.
    let bad: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "bad"},
        "spec": {"minAvailable": 1, "maxUnavailable": 1, "selector": {}}}))?;
    let (code, reason, _) = api_error(pdbs.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    Ok(())
}

#[tokio::test]
async fn resource_version_match_exact_and_not_older_than() -> Result<()> {
    let client = client().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let cm = |name: &str| -> ConfigMap {
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}),
        )
        .unwrap()
    };
    cms.create(&PostParams::default(), &cm("one")).await?;
    let first = cms.list(&ListParams::default()).await?;
    let rv = first.metadata.resource_version.clone().unwrap();
    cms.create(&PostParams::default(), &cm("two")).await?;
    // Exact: the list as it was.
    let exact = cms
        .list(&ListParams::default().at(&rv).matching(VersionMatch::Exact))
        .await?;
    assert_eq!(exact.items.len(), 1);
    assert_eq!(
        exact.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    // NotOlderThan: the current list.
    let newer = cms
        .list(
            &ListParams::default()
                .at(&rv)
                .matching(VersionMatch::NotOlderThan),
        )
        .await?;
    assert_eq!(newer.items.len(), 2);
    // A version the store has not reached: 504 Timeout, "Too large resource version".
    let (code, reason, message) = api_error(
        cms.list(
            &ListParams::default()
                .at("999999")
                .matching(VersionMatch::NotOlderThan),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (504, "Timeout"));
    assert!(
        message.starts_with("Too large resource version"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn objects_over_one_and_a_half_mebibytes_are_refused() -> Result<()> {
    let client = client().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    // 2 MiB of data fits under the 3 MiB body limit but not the object limit.
    let big: ConfigMap = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big"}, "data": {"k": "x".repeat(2 << 20)}}))?;
    let (code, reason, _) = api_error(cms.create(&PostParams::default(), &big).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (413, "RequestEntityTooLarge"));
    assert!(cms.get_opt("big").await?.is_none());
    let fits: ConfigMap = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "fits"}, "data": {"k": "x".repeat(1 << 20)}}))?;
    cms.create(&PostParams::default(), &fits).await?;
    Ok(())
}
