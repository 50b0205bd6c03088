//! Pod startup latency on one node agent: create to Running (as the API reports it), for `N`
//! pods created one after another, with the image already on the node. Needs root.
//!
//! `cargo run --release -p berth-node --example pod_startup -- 100`

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth_image::{BaseImage, Reference};
use berth_node::{Agent, NodeConfig};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher;

fn main() -> Result<()> {
    berth_namespaces::init::main_if_init();
    berth_node::shim::main_if_shim();
    let n: usize = std::env::args().nth(1).map_or(Ok(20), |a| a.parse())?;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let server = rt.block_on(berth_apiserver::ApiServer::in_memory())?;
    let client = {
        let _guard = rt.enter();
        kube::Client::new(server.router(), "default")
    };
    let name = format!("bench-{}", std::process::id());
    let mut config = NodeConfig::new(&name, dir.path().join("root"));
    config.cgroup_parent = format!("berth-bench/{name}").into();
    config.port = 0;
    config.sync_period = Duration::from_millis(20);
    let store = berth_image::ImageStore::open(config.root.join("engine/image"))?;
    BaseImage::busybox(Path::new("/bin/busybox"))?
        .commit(&store, Some(&Reference::parse("busybox:bench")?))?;
    let agent = Agent::new(client.clone(), config.clone())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut latencies = Vec::new();
    rt.block_on(async {
        let mut events = std::pin::pin!(watcher(pods.clone(), watcher::Config::default()));
        for i in 0..n {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("p{i}")},
                "spec": {"nodeName": name, "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": "busybox:bench", "command": ["sleep", "3600"]}]},
            }))?;
            let started = Instant::now();
            pods.create(&PostParams::default(), &pod).await?;
            loop {
                let event = events.next().await.context("watch ended")??;
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = event
                    && p.metadata.name.as_deref() == Some(&format!("p{i}"))
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                {
                    latencies.push(started.elapsed());
                    break;
                }
            }
        }
        anyhow::Ok(())
    })?;
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "{n} pods, create -> Running: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    rt.block_on(async {
        for i in 0..n {
            let _ = pods
                .delete(&format!("p{i}"), &DeleteParams::default().grace_period(0))
                .await;
        }
        while !pods.list(&Default::default()).await?.items.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    })?;
    let _ = stop.send(());
    rt.block_on(task)??;
    for controller in [
        "memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "devices", "freezer", "systemd",
    ] {
        let _ = std::fs::remove_dir(
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("berth-bench")
                .join(&name)
                .join("kubepods/besteffort"),
        );
        let _ = std::fs::remove_dir(
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("berth-bench")
                .join(&name)
                .join("kubepods"),
        );
        let _ = std::fs::remove_dir(
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("berth-bench")
                .join(&name),
        );
        let _ = std::fs::remove_dir(
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("berth-bench"),
        );
    }
    Ok(())
}
