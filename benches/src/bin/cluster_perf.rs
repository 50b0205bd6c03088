//! `cluster_perf`: pods per second end to end on simulated nodes. A Deployment of N replicas
//! from create to every pod Running through the real API server on the durable embedded store,
//! Berth's scheduler and controller manager, and berth-testcluster's simulated nodes; over
//! loopback HTTP, then in-process; then a rolling update. Prints pod startup latency (first
//! seen on the watch to Running on the watch) p50/p99, and pods/s of the HTTP run as its last line.
//!
//! Run: `cargo build --release -p berth-benches --bin cluster_perf &&
//! target/release/cluster_perf [--nodes 5000] [--replicas 10000] [--mode http|inproc|both]`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_testcluster::{NodeConfig, Settings, StoreConfig, TestCluster};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

struct Args {
    nodes: usize,
    replicas: i32,
    modes: Vec<bool>,
    rollout: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        nodes: 5_000,
        replicas: 10_000,
        modes: vec![true, false],
        rollout: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--nodes" => a.nodes = it.next().context("--nodes N")?.parse()?,
            "--replicas" => a.replicas = it.next().context("--replicas N")?.parse()?,
            "--no-rollout" => a.rollout = false,
            "--mode" => {
                a.modes = match it.next().context("--mode http|inproc|both")?.as_str() {
                    "http" => vec![true],
                    "inproc" => vec![false],
                    _ => vec![true, false],
                }
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Watches pods and records, per pod uid, when it was first seen and when it was first Running.
struct Observer {
    first: HashMap<String, Instant>,
    running: HashMap<String, Instant>,
    hash: HashMap<String, String>,
}

fn deployment(replicas: i32) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "perf"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "perf"}},
            "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "perf"}},
                "spec": {"containers": [{"name": "c", "image": "registry.local/perf:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
            },
        },
    }))?)
}

async fn run(a: &Args, http: bool) -> anyhow::Result<f64> {
    let mode = if http { "http" } else { "in-process" };
    let t0 = Instant::now();
    let cluster = TestCluster::builder()
        .nodes(a.nodes)
        .store(StoreConfig::EmbeddedTemp)
        .http(http)
        .node_config(NodeConfig {
            max_in_flight: 128,
            ..NodeConfig::default()
        })
        .scheduler(true)
        .controllers(Settings {
            events: false,
            burst_replicas: 500,
            concurrency: 5,
            ..Settings::default()
        })
        .start()
        .await?;
    eprintln!(
        "[{mode}] {} nodes registered in {:.1?}",
        a.nodes,
        t0.elapsed()
    );
    let client = cluster.client();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, bool, String, Instant)>();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let watch = tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(pods, watcher::Config::default().any_semantic()));
        while let Some(ev) = s.next().await {
            if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev {
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                let hash = p
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("pod-template-hash").cloned())
                    .unwrap_or_default();
                let uid = p.metadata.uid.clone().unwrap_or_default();
                if tx.send((uid, running, hash, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });
    let mut obs = Observer {
        first: HashMap::new(),
        running: HashMap::new(),
        hash: HashMap::new(),
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment(a.replicas)?)
        .await?;
    let want = a.replicas as usize;
    let deadline = start + Duration::from_secs(600);
    while obs.running.len() < want {
        let Ok(Some((uid, running, hash, at))) =
            tokio::time::timeout_at(deadline.into(), rx.recv()).await
        else {
            anyhow::bail!(
                "[{mode}] timed out: {} of {want} pods Running",
                obs.running.len()
            );
        };
        obs.first.entry(uid.clone()).or_insert(at);
        obs.hash.insert(uid.clone(), hash);
        if running {
            obs.running.entry(uid).or_insert(at);
        }
    }
    let elapsed = start.elapsed();
    let rate = want as f64 / elapsed.as_secs_f64();
    let mut lat: Vec<Duration> = obs
        .running
        .iter()
        .map(|(uid, r)| r.duration_since(obs.first[uid]))
        .collect();
    lat.sort();
    println!(
        "[{mode}] create: {want} pods Running in {:.2} s = {rate:.0} pods/s; startup latency p50 {:.0?} p99 {:.0?}",
        elapsed.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );

    if a.rollout {
        let old: std::collections::HashSet<String> = obs.hash.values().cloned().collect();
        let start = Instant::now();
        deployments
            .patch(
                "perf",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}}),
                ),
            )
            .await?;
        let mut new_running: HashMap<String, Instant> = HashMap::new();
        let mut new_first: HashMap<String, Instant> = HashMap::new();
        while new_running.len() < want {
            let Ok(Some((uid, running, hash, at))) =
                tokio::time::timeout_at((start + Duration::from_secs(600)).into(), rx.recv()).await
            else {
                anyhow::bail!(
                    "[{mode}] rollout timed out: {} of {want} new pods Running",
                    new_running.len()
                );
            };
            if old.contains(&hash) {
                continue;
            }
            new_first.entry(uid.clone()).or_insert(at);
            if running {
                new_running.entry(uid).or_insert(at);
            }
        }
        let elapsed = start.elapsed();
        let mut lat: Vec<Duration> = new_running
            .iter()
            .map(|(uid, r)| r.duration_since(new_first[uid]))
            .collect();
        lat.sort();
        println!(
            "[{mode}] rolling update: {want} new pods Running in {:.2} s = {:.0} pods/s; startup latency p50 {:.0?} p99 {:.0?}",
            elapsed.as_secs_f64(),
            want as f64 / elapsed.as_secs_f64(),
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }
    watch.abort();
    drop(deployments);
    drop(client);
    cluster.shutdown().await;
    Ok(rate)
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rates = Vec::new();
    for &http in &a.modes {
        rates.push((http, rt.block_on(run(&a, http))?));
    }
    // The last line: pods/s of the HTTP run (the goal's figure), else the in-process one.
    let rate = rates
        .iter()
        .find(|(h, _)| *h)
        .or(rates.first())
        .map(|r| r.1)
        .unwrap_or(0.0);
    println!("{rate:.0}");
    Ok(())
}
