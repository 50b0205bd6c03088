//! Services for real, in network namespaces: a "node" namespace routes to three "pod" namespaces
//! (10.244.N.2, each behind its own veth) and to a "client" namespace outside the cluster
//! (10.78.0.2, whose default route is the node). The ruleset comes from Service and
//! EndpointSlice objects through the pure function and is installed with one netlink batch.

mod common;

use std::collections::BTreeMap;

use anyhow::Result;
use berth_proxy::Nft;
use berth_proxy::nft::Table;
use berth_proxy::service::{ProxyConfig, SERVICE_NAME_LABEL, service_table};
use common::{NetNs, PodNetwork, fetch, nft_list, nft_ruleset, pod_network};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

struct Cluster {
    net: PodNetwork,
    table: String,
}

impl std::ops::Deref for Cluster {
    type Target = PodNetwork;
    fn deref(&self) -> &PodNetwork {
        &self.net
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let table = self.table.clone();
        let _ = self
            .net
            .node
            .run(move || Nft::open().and_then(|n| n.delete_table(&table)));
    }
}

fn cluster(pods: usize) -> Result<Cluster> {
    Ok(Cluster {
        net: pod_network(pods)?,
        table: berth_testutil::unique_name("svc"),
    })
}

impl Cluster {
    fn cfg(&self) -> ProxyConfig {
        ProxyConfig {
            table: self.table.clone(),
            node_name: "node-a".into(),
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        }
    }

    fn program(&self, services: &[Service], slices: &[EndpointSlice]) -> Result<Table> {
        let table = service_table(&self.cfg(), services, slices);
        let t = table.clone();
        self.node
            .run(move || -> berth_proxy::Result<()> { Nft::open()?.replace(&t) })??;
        Ok(table)
    }
}

fn service(name: &str, spec: serde_json::Value, status: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec, "status": status,
    }))
    .unwrap()
}

/// Endpoints `(pod index, ready, node)` of Service `svc`, target port 8080.
fn slice(svc: &str, eps: &[(usize, bool, &str)]) -> EndpointSlice {
    let endpoints: Vec<_> = eps
        .iter()
        .map(|(i, ready, node)| {
            json!({"addresses": [format!("10.244.{i}.2")], "nodeName": node,
                   "conditions": {"ready": ready}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{svc}-1"), "namespace": "default",
                     "labels": {SERVICE_NAME_LABEL: svc}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap()
}

/// Which pods answered `n` requests to `addr` from `ns`, with counts.
fn spread(ns: &NetNs, addr: &str, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let line = fetch(ns, addr)?;
        let pod = line.split(' ').next().unwrap_or_default().to_string();
        *seen.entry(pod).or_insert(0) += 1;
    }
    Ok(seen)
}

fn web_spec(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"clusterIP": "10.96.0.10",
                          "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

#[test]
fn cluster_ip_spreads_over_ready_endpoints_and_follows_readiness() -> Result<()> {
    if !common::privileged("ClusterIP in netns") {
        return Ok(());
    }
    let c = cluster(3)?;
    let svc = [service("web", web_spec(json!({})), json!({}))];
    c.program(
        &svc,
        &[slice(
            "web",
            &[
                (1, true, "node-a"),
                (2, true, "node-a"),
                (3, false, "node-a"),
            ],
        )],
    )?;
    let listing = nft_list(&c.node, &c.table).expect("table exists");
    assert!(listing.contains("numgen random mod 2"), "{listing}");

    // From outside the cluster (masqueraded) and from the node itself.
    let seen = spread(&c.client, "10.96.0.10:80", 40)?;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["pod1", "pod2"],
        "{seen:?}"
    );
    let seen = spread(&c.node, "10.96.0.10:80", 40)?;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["pod1", "pod2"],
        "{seen:?}"
    );
    // From a pod (its own address is kept; hairpin to itself is masqueraded).
    let seen = spread(&c.pods[2], "10.96.0.10:80", 30)?;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["pod1", "pod2"],
        "{seen:?}"
    );
    assert!(fetch(&c.pods[0], "10.96.0.10:80").is_ok());

    // pod1 turns not-ready, pod3 ready: traffic follows.
    c.program(
        &svc,
        &[slice(
            "web",
            &[
                (1, false, "node-a"),
                (2, true, "node-a"),
                (3, true, "node-a"),
            ],
        )],
    )?;
    let seen = spread(&c.client, "10.96.0.10:80", 40)?;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["pod2", "pod3"],
        "{seen:?}"
    );

    // No ready endpoint: refused at once (ICMP port unreachable), not a timeout.
    c.program(&svc, &[slice("web", &[(1, false, "node-a")])])?;
    let err = fetch(&c.client, "10.96.0.10:80").unwrap_err();
    let io = err.downcast_ref::<std::io::Error>().map(|e| e.kind());
    assert_eq!(io, Some(std::io::ErrorKind::ConnectionRefused), "{err:#}");

    // Removal leaves nothing.
    let table = c.table.clone();
    c.node
        .run(move || Nft::open().and_then(|n| n.delete_table(&table)))??;
    assert!(
        nft_ruleset(&c.node).trim().is_empty(),
        "{}",
        nft_ruleset(&c.node)
    );
    Ok(())
}

#[test]
fn session_affinity_keeps_a_client_on_one_endpoint() -> Result<()> {
    if !common::privileged("session affinity in netns") {
        return Ok(());
    }
    let c = cluster(3)?;
    c.program(
        &[service(
            "web",
            web_spec(json!({"sessionAffinity": "ClientIP"})),
            json!({}),
        )],
        &[slice(
            "web",
            &[
                (1, true, "node-a"),
                (2, true, "node-a"),
                (3, true, "node-a"),
            ],
        )],
    )?;
    let seen = spread(&c.client, "10.96.0.10:80", 20)?;
    assert_eq!(seen.len(), 1, "{seen:?}");
    Ok(())
}

#[test]
fn node_port_and_load_balancer_addresses_answer() -> Result<()> {
    if !common::privileged("NodePort and LoadBalancer in netns") {
        return Ok(());
    }
    let c = cluster(2)?;
    let svc = service(
        "web",
        web_spec(json!({"type": "LoadBalancer",
                        "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
        json!({"loadBalancer": {"ingress": [{"ip": "10.79.0.10"}]}}),
    );
    c.program(
        &[svc],
        &[slice("web", &[(1, true, "node-a"), (2, true, "node-b")])],
    )?;
    // NodePort on the node's address, from the node itself and from outside.
    let seen = spread(&c.node, "10.78.0.1:30080", 30)?;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["pod1", "pod2"],
        "{seen:?}"
    );
    let seen = spread(&c.client, "10.78.0.1:30080", 30)?;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["pod1", "pod2"],
        "{seen:?}"
    );
    // The LoadBalancer address, from outside (routed to the node) and from the node.
    assert!(fetch(&c.client, "10.79.0.10:80")?.starts_with("pod"));
    assert!(fetch(&c.node, "10.79.0.10:80")?.starts_with("pod"));

    // externalTrafficPolicy Local: outside clients reach this node's endpoint only, and
    // keep their address.
    let svc = service(
        "web",
        web_spec(json!({"type": "NodePort", "externalTrafficPolicy": "Local",
                        "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
        json!({}),
    );
    c.program(
        &[svc],
        &[slice("web", &[(1, true, "node-a"), (2, true, "node-b")])],
    )?;
    let seen = spread(&c.client, "10.78.0.1:30080", 20)?;
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["pod1"], "{seen:?}");
    assert_eq!(fetch(&c.client, "10.78.0.1:30080")?, "pod1 10.78.0.2");
    Ok(())
}
