//! `cluster_perf`: pods per second end to end on simulated nodes. A Deployment of N replicas
//! from create to every pod Running through the real API server on the durable embedded store,
//! Berth's scheduler and controller manager, and berth-testcluster's simulated nodes; over
//! loopback HTTP, then in-process; then a rolling update. Prints pod startup latency (first
//! seen on the watch to Running on the watch) p50/p99, and pods/s of the HTTP run as its last line.
//!
//! Run: `cargo build --release -p berth-benches --bin cluster_perf &&
//! target/release/cluster_perf [--nodes 5000] [--replicas 10000] [--mode http|inproc|both]
//! [--no-rollout] [--heartbeat SECONDS]` (each simulated node renews its Lease every 10 s by
//! default, as a kubelet does: 500 writes/s at 5,000 nodes, part of the load). For a profile:
//! `cargo build --profile perf -p berth-benches --bin cluster_perf` and
//! `perf record -g target/perf/cluster_perf ...`.

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
    heartbeat: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        nodes: 5_000,
        replicas: 10_000,
        modes: vec![true, false],
        rollout: true,
        heartbeat: Duration::from_secs(10),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--nodes" => a.nodes = it.next().context("--nodes N")?.parse()?,
            "--replicas" => a.replicas = it.next().context("--replicas N")?.parse()?,
            "--no-rollout" => a.rollout = false,
            "--heartbeat" => {
                a.heartbeat =
                    Duration::from_secs_f64(it.next().context("--heartbeat SECONDS")?.parse()?)
            }
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

/// One pod event on the watch.
struct Seen {
    uid: String,
    bound: bool,
    running: bool,
    hash: String,
    at: Instant,
}

/// Watches pods and records, per pod uid, when it was first seen, bound and Running.
#[derive(Default)]
struct Observer {
    first: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
    running: HashMap<String, Instant>,
    hash: HashMap<String, String>,
}

impl Observer {
    fn note(&mut self, s: Seen) {
        self.first.entry(s.uid.clone()).or_insert(s.at);
        if s.bound {
            self.bound.entry(s.uid.clone()).or_insert(s.at);
        }
        if s.running {
            self.running.entry(s.uid.clone()).or_insert(s.at);
        }
        self.hash.insert(s.uid, s.hash);
    }

    /// p50/p99 of first seen -> bound and bound -> Running, for the pods in `running`.
    fn phases(&self, uids: impl Iterator<Item = String>) -> String {
        let mut sched = Vec::new();
        let mut start = Vec::new();
        for uid in uids {
            if let (Some(f), Some(b), Some(r)) = (
                self.first.get(&uid),
                self.bound.get(&uid),
                self.running.get(&uid),
            ) {
                sched.push(b.duration_since(*f));
                start.push(r.duration_since(*b));
            }
        }
        sched.sort();
        start.sort();
        format!(
            "created->bound p50 {:.0?} p99 {:.0?}, bound->Running p50 {:.0?} p99 {:.0?}",
            pct(&sched, 0.5),
            pct(&sched, 0.99),
            pct(&start, 0.5),
            pct(&start, 0.99)
        )
    }
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
            heartbeat_interval: a.heartbeat,
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
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
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
                let bound = p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
                let seen = Seen {
                    uid,
                    bound,
                    running,
                    hash,
                    at: Instant::now(),
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        }
    });
    let mut obs = Observer::default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment(a.replicas)?)
        .await?;
    let want = a.replicas as usize;
    let deadline = start + Duration::from_secs(600);
    while obs.running.len() < want {
        let Ok(Some(seen)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
            anyhow::bail!(
                "[{mode}] timed out: {} of {want} pods Running",
                obs.running.len()
            );
        };
        obs.note(seen);
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
    println!(
        "[{mode}] create: {}",
        obs.phases(obs.running.keys().cloned())
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
        let mut new = Observer::default();
        while new.running.len() < want {
            let Ok(Some(seen)) =
                tokio::time::timeout_at((start + Duration::from_secs(600)).into(), rx.recv()).await
            else {
                anyhow::bail!(
                    "[{mode}] rollout timed out: {} of {want} new pods Running",
                    new.running.len()
                );
            };
            if old.contains(&seen.hash) {
                continue;
            }
            new.note(seen);
        }
        let (new_running, new_first) = (&new.running, &new.first);
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
        println!(
            "[{mode}] rolling update: {}",
            new.phases(new.running.keys().cloned())
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
