//! The watch loop against the in-process API server: Services and EndpointSlices created
//! through the API are programmed into a network namespace's nftables, re-programmed as an
//! endpoint turns ready, a LoadBalancer Service gets an address from the pool, and the table
//! goes away when the runner stops.

mod common;

use std::time::Duration;

use anyhow::Result;
use berth_proxy::Nft;
use berth_proxy::lb::LbPool;
use berth_proxy::runner::{ProxyRunner, RunnerOptions};
use berth_proxy::service::{ProxyConfig, SERVICE_NAME_LABEL};
use berth_testcluster::{StoreConfig, TestCluster, eventually};
use common::{NetNs, nft_list};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn slice(ready2: bool) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {SERVICE_NAME_LABEL: "web"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.1.2"], "nodeName": "n1", "conditions": {"ready": true}},
            {"addresses": ["10.244.2.2"], "nodeName": "n1", "conditions": {"ready": ready2}},
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_follows_the_api_and_assigns_load_balancer_addresses() -> Result<()> {
    if !common::privileged("proxy runner in netns") {
        return Ok(());
    }
    let ns = NetNs::new("prun")?;
    let cluster = TestCluster::builder()
        .nodes(0)
        .store(StoreConfig::InMemory)
        .start()
        .await?;
    let client = cluster.client();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))?;
    let svc = services.create(&PostParams::default(), &svc).await?;
    let vip = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .unwrap();
    slices.create(&PostParams::default(), &slice(false)).await?;

    let table = berth_testutil::unique_name("run");
    let cfg = ProxyConfig {
        table: table.clone(),
        node_name: "n1".into(),
        cluster_cidr: Some("10.244.0.0/16".parse()?),
    };
    let nft = ns.run(Nft::open)??;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = ProxyRunner::new(
        client.clone(),
        cfg,
        RunnerOptions {
            lb_pool: Some(LbPool::parse("10.79.0.10-10.79.0.12")?),
            policy: None,
            cleanup_on_exit: true,
        },
    )
    .with_nft(nft);
    let handle = tokio::spawn(runner.run(async {
        let _ = stop_rx.await;
    }));

    // The Service is programmed with its one ready endpoint.
    let listed = || nft_list(&ns, &table).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let l = listed();
            l.contains(&vip) && l.contains("dnat to 10.244.1.2:8080")
        })
        .await,
        "{}",
        listed()
    );
    assert!(!listed().contains("10.244.2.2"));
    // It gets a LoadBalancer address from the pool, which is then programmed too.
    assert!(
        eventually(Duration::from_secs(10), || async {
            services
                .get_status("web")
                .await
                .ok()
                .and_then(|s| berth_proxy::lb::ingress_ip(&s))
                == Some("10.79.0.10".parse().unwrap())
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            listed().contains("10.79.0.10")
        })
        .await,
        "{}",
        listed()
    );
    // The second endpoint turns ready: both get traffic.
    slices
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": slice(true).endpoints})),
        )
        .await?;
    assert!(
        eventually(Duration::from_secs(10), || async {
            listed().contains("dnat to 10.244.2.2:8080")
        })
        .await,
        "{}",
        listed()
    );
    // Stopping the runner removes the table.
    let _ = stop_tx.send(());
    handle.await??;
    assert!(nft_list(&ns, &table).is_none());
    cluster.shutdown().await;
    Ok(())
}
