//! The Endpoints and EndpointSlice controllers on the test cluster.

use std::time::Duration;

use berth_controllers::endpoints::{
    EndpointsConfig, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, run_endpoint_slices,
    run_endpoints,
};
use berth_testcluster::{NodeConfig, TestCluster, eventually};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn pod(name: &str, app: &str, port_name: &str, port: i32) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": "node-0",
            "containers": [{"name": "c", "image": "nginx",
                "ports": [{"name": port_name, "containerPort": port}]}],
        },
    }))
    .unwrap()
}

fn service(name: &str, app: &str, target: serde_json::Value, extra: serde_json::Value) -> Service {
    let mut v = json!({
        "metadata": {"name": name, "labels": {"tier": "web"}},
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": target}]},
    });
    if let Some(m) = extra.as_object() {
        for (k, x) in m {
            v["spec"][k] = x.clone();
        }
    }
    serde_json::from_value(v).unwrap()
}

async fn cluster(max: usize) -> anyhow::Result<TestCluster> {
    let config = EndpointsConfig {
        max_endpoints_per_slice: max,
        ..EndpointsConfig::default()
    };
    let c2 = config.clone();
    Ok(TestCluster::builder()
        .nodes(2)
        .node_config(NodeConfig {
            heartbeat_interval: Duration::from_millis(500),
            ..NodeConfig::default()
        })
        .component("endpoints", move |client| run_endpoints(client, config))
        .component("endpointslices", move |client| {
            run_endpoint_slices(client, c2)
        })
        .start()
        .await?)
}

fn addresses(ep: &Endpoints) -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    let mut ports = Vec::new();
    for s in ep.subsets.clone().unwrap_or_default() {
        ready.extend(
            s.addresses
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.target_ref.unwrap().name.unwrap()),
        );
        not_ready.extend(
            s.not_ready_addresses
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.target_ref.unwrap().name.unwrap()),
        );
        ports.extend(s.ports.unwrap_or_default().into_iter().map(|p| p.port));
    }
    ready.sort();
    not_ready.sort();
    (ready, not_ready, ports)
}

async fn want(eps: &Api<Endpoints>, r: &[&str], n: &[&str]) -> bool {
    eventually(Duration::from_secs(10), || async {
        eps.get_opt("web").await.unwrap().is_some_and(|e| {
            let (ready, not_ready, _) = addresses(&e);
            ready == r && not_ready == n
        })
    })
    .await
}

#[tokio::test]
async fn endpoints_follow_pods_readiness_and_labels() -> anyhow::Result<()> {
    let cluster = cluster(100).await?;
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    let svcs: Api<Service> = Api::default_namespaced(cluster.client());
    let eps: Api<Endpoints> = Api::default_namespaced(cluster.client());
    for i in 0..3 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("web-{i}"), "web", "http", 8080),
        )
        .await?;
    }
    pods.create(&PostParams::default(), &pod("db", "db", "sql", 5432))
        .await?;
    // targetPort by name resolves to the container port.
    svcs.create(
        &PostParams::default(),
        &service("web", "web", json!("http"), json!({})),
    )
    .await?;
    assert!(
        want(&eps, &["web-0", "web-1", "web-2"], &[]).await,
        "{:?}",
        eps.get_opt("web").await?
    );
    let ep = eps.get("web").await?;
    assert_eq!(addresses(&ep).2, vec![8080]);
    let a = &ep.subsets.unwrap()[0].addresses.clone().unwrap()[0];
    assert_eq!(a.node_name.as_deref(), Some("node-0"));
    assert_eq!(ep.metadata.labels.unwrap()["tier"], "web");

    cluster.set_ready("default", "web-1", false).await?;
    assert!(want(&eps, &["web-0", "web-2"], &["web-1"]).await);

    // A pod relabelled away leaves; a deleted pod leaves.
    pods.patch(
        "web-2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await?;
    pods.delete("web-0", &DeleteParams::default()).await?;
    assert!(want(&eps, &[], &["web-1"]).await);

    // publishNotReadyAddresses puts not-ready pods in addresses.
    svcs.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"publishNotReadyAddresses": true}})),
    )
    .await?;
    assert!(want(&eps, &["web-1"], &[]).await);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn slices_split_at_the_maximum_and_carry_conditions() -> anyhow::Result<()> {
    let cluster = cluster(4).await?;
    let pods: Api<Pod> = Api::default_namespaced(cluster.client());
    let svcs: Api<Service> = Api::default_namespaced(cluster.client());
    let slices: Api<EndpointSlice> = Api::default_namespaced(cluster.client());
    for i in 0..10 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("w{i}"), "web", "http", 8080),
        )
        .await?;
    }
    // targetPort by number; headless.
    svcs.create(
        &PostParams::default(),
        &service("web", "web", json!(9090), json!({"clusterIP": "None"})),
    )
    .await?;
    let lp = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}=web"));
    let count = |want_ready: usize| {
        let slices = slices.clone();
        let lp = lp.clone();
        async move {
            eventually(Duration::from_secs(10), || async {
                let list = slices.list(&lp).await.unwrap().items;
                let eps: Vec<_> = list.iter().flat_map(|s| s.endpoints.clone()).collect();
                eps.len() == 10
                    && eps
                        .iter()
                        .filter(|e| e.conditions.as_ref().unwrap().ready == Some(true))
                        .count()
                        == want_ready
            })
            .await
        }
    };
    assert!(count(10).await);
    let list = slices.list(&lp).await?.items;
    assert_eq!(list.len(), 3, "10 endpoints at 4 per slice");
    for s in &list {
        assert!(s.endpoints.len() <= 4);
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(9090));
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Service"
        );
    }
    cluster.set_ready("default", "w3", false).await?;
    assert!(count(9).await);
    let list = slices.list(&lp).await?.items;
    let w3 = list
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .find(|e| e.target_ref.as_ref().unwrap().name.as_deref() == Some("w3"))
        .unwrap();
    let c = w3.conditions.as_ref().unwrap();
    assert_eq!(
        (c.ready, c.serving, c.terminating),
        (Some(false), Some(false), Some(false))
    );
    cluster.shutdown().await;
    Ok(())
}
