//! Pod startup latency on a real cluster: the time from each pod's create request to the
//! pod watch reporting it Running (containers started by the node agents, image already on
//! the nodes), p50/p99 over `--pods` pods created `--parallel` at a time. Run against
//! `berth cluster up` by `benches/scripts/pod_startup.sh`:
//!
//! `pod_startup --kubeconfig FILE --image REF [--pods 100] [--parallel 10]`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use tokio::sync::Mutex;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kubeconfig = arg("--kubeconfig").context("--kubeconfig FILE")?;
    let image = arg("--image").context("--image REF")?;
    let pods: usize = arg("--pods").map_or(Ok(100), |v| v.parse())?;
    let parallel: usize = arg("--parallel").map_or(Ok(10), |v| v.parse())?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let api: Api<Pod> = Api::namespaced(client, "default");
    let run = format!("startup-{}", std::process::id());
    let selector = format!("bench={run}");

    // Watch first, so no Running transition is missed.
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let running: Arc<Mutex<HashMap<String, Duration>>> = Arc::default();
    let watch = {
        let (api, created, running) = (api.clone(), created.clone(), running.clone());
        let selector = selector.clone();
        tokio::spawn(async move {
            let stream = watcher::watcher(api, watcher::Config::default().labels(&selector));
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let pod = match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                    _ => continue,
                };
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if phase != Some("Running") {
                    continue;
                }
                let seen = Instant::now();
                let name = pod.metadata.name.clone().unwrap_or_default();
                if let Some(t0) = created.lock().await.get(&name) {
                    running.lock().await.entry(name).or_insert(seen - *t0);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let mut next = 0;
    while next < pods {
        let batch: Vec<usize> = (next..(next + parallel).min(pods)).collect();
        next += batch.len();
        let mut tasks = Vec::new();
        for i in batch {
            let (api, created, image, run) =
                (api.clone(), created.clone(), image.clone(), run.clone());
            tasks.push(tokio::spawn(async move {
                let name = format!("{run}-{i}");
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "labels": {"bench": run}},
                    "spec": {
                        "terminationGracePeriodSeconds": 0,
                        "containers": [{
                            "name": "c", "image": image, "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "3600"],
                        }],
                    },
                }))?;
                created.lock().await.insert(name.clone(), Instant::now());
                api.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.lock().await.len() < pods {
        if Instant::now() > deadline {
            bail!(
                "only {} of {pods} pods Running after 120 s",
                running.lock().await.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = started.elapsed();
    watch.abort();
    let mut samples: Vec<Duration> = running.lock().await.values().copied().collect();
    samples.sort();
    println!(
        "pod startup (create -> Running on the watch), {pods} pods, {parallel} at a time: \
         p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; all Running in {:.2} s",
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.90).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        total.as_secs_f64()
    );
    // Leave the cluster as found.
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(&selector),
    )
    .await?;
    Ok(())
}
