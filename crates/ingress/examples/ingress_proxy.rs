//! The Ingress proxy alone, for benchmarks: one Ingress (host `bench.local`, Prefix `/`) to a
//! Service whose endpoints are the given backends, the table built in-process (no API
//! server: the watch is not on the request path).
//!
//! `cargo run --profile perf -p berth-ingress --example ingress_proxy -- 127.0.0.1:8080 127.0.0.1:9000 [127.0.0.1:9001 ...]`
//! (listen address first, then the backends). benches/scripts/ingress_vs_nginx.sh runs it
//! side by side with nginx.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use berth_ingress::table::{Objects, RoutingTable};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().context("listen address")?.parse()?;
    let backends: Vec<SocketAddr> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    anyhow::ensure!(!backends.is_empty(), "give at least one backend address");

    let ingress: Ingress = serde_json::from_value(json!({
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {"rules": [{"host": "bench.local", "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "backend", "port": {"number": 80}}}}]}}]},
    }))?;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "backend", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.2", "ports": [{"name": "http", "port": 80}]},
    }))?;
    let slices: Vec<EndpointSlice> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("backend-{i}"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "backend"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": b.port()}],
                "endpoints": [{"addresses": [b.ip().to_string()]}],
            }))
        })
        .collect::<Result<_, _>>()?;
    let slice_refs: Vec<&EndpointSlice> = slices.iter().collect();
    let table = RoutingTable::build(Objects {
        ingresses: &[&ingress],
        services: &[&service],
        slices: &slice_refs,
        secrets: &[],
    });
    let proxy = berth_ingress::Proxy::new(Arc::new(ArcSwap::from_pointee(table)));
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("ingress_proxy: listening on {}", listener.local_addr()?);
        proxy.serve_http(listener).await?;
        anyhow::Ok(())
    })
}
