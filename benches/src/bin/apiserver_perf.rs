//! berth-apiserver performance against the goals, with kube-rs clients:
//! durable creates per second with 1 and 16 clients (embedded store, over loopback HTTP and
//! in-process), a list of 10,000 pods, watch fan-out to 1,000 watchers (delivery p50/p99), and
//! the server's memory for 10,000 pods against their serialized size.
//!
//! Run: `cargo build --release -p berth-benches --bin apiserver_perf &&
//! target/release/apiserver_perf [PODS] [WATCHERS]` (defaults 10000, 1000). Figures go to
//! BENCHMARKS.md (API server section).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth_apiserver::ApiServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
            "ports": [{"containerPort": 80}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    }))
    .expect("a pod")
}

/// Resident set size of this process, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Creates `total` pods named `<prefix>-<n>` with `clients` concurrent clients; creates/s.
async fn creates(clients: &[Client], ns: &str, prefix: &str, total: usize) -> Result<f64> {
    let start = Instant::now();
    let per = total / clients.len();
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                api.create(&PostParams::default(), &pod(&format!("{prefix}-{c}-{i}")))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((per * clients.len()) as f64 / start.elapsed().as_secs_f64())
}

fn http_client(addr: std::net::SocketAddr) -> Result<Client> {
    let mut config = kube::Config::new(format!("http://{addr}").parse()?);
    config.read_timeout = Some(Duration::from_secs(600));
    Ok(Client::try_from(config)?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let watchers: usize = args.next().map_or(Ok(1_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let rss_empty = rss();
    let server = ApiServer::open(dir.path().join("store")).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = server.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let admin = http_client(addr)?;
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    for ns in ["bench", "warm", "inproc"] {
        ns_api
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                )?,
            )
            .await?;
    }
    println!(
        "# berth-apiserver, durable embedded store in {}",
        dir.path().display()
    );

    // Creates: 1 client, then 16 (loopback), then 16 in-process.
    creates(std::slice::from_ref(&admin), "warm", "w", 200).await?;
    let one = creates(std::slice::from_ref(&admin), "warm", "one", 1_000.min(pods)).await?;
    println!("creates/s, 1 client, loopback: {one:.0}");
    let sixteen: Vec<Client> = (0..16).map(|_| http_client(addr)).collect::<Result<_>>()?;
    let rss_before_pods = rss();
    let many = creates(&sixteen, "bench", "p", pods).await?;
    println!("creates/s, 16 clients, loopback ({pods} pods): {many:.0}");
    let inproc: Vec<Client> = (0..16)
        .map(|_| Client::new(server.router(), "default"))
        .collect();
    let local = creates(&inproc, "inproc", "i", 2_000.min(pods)).await?;
    println!("creates/s, 16 clients, in-process: {local:.0}");

    // List of the 10,000 pods (median of 5).
    let bench_pods: Api<Pod> = Api::namespaced(admin.clone(), "bench");
    let mut times = Vec::new();
    let mut serialized = 0usize;
    for _ in 0..5 {
        let t = Instant::now();
        let list = bench_pods.list(&ListParams::default()).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        serialized = list
            .items
            .iter()
            .map(|p| serde_json::to_vec(p).map(|v| v.len()).unwrap_or(0))
            .sum();
        anyhow::ensure!(list.items.len() == pods, "listed {}", list.items.len());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "list of {pods} pods, loopback: median {:.1} ms (min {:.1})",
        times[2], times[0]
    );
    let rss_after_pods = rss();
    let grown = rss_after_pods.saturating_sub(rss_before_pods);
    println!(
        "memory: RSS {:.1} MiB before the pods, {:.1} MiB after ({:.1} MiB grown, clients included); serialized pods {:.1} MiB; ratio {:.2}x (empty process {:.1} MiB)",
        rss_before_pods as f64 / 1048576.0,
        rss_after_pods as f64 / 1048576.0,
        grown as f64 / 1048576.0,
        serialized as f64 / 1048576.0,
        grown as f64 / serialized as f64,
        rss_empty as f64 / 1048576.0,
    );

    // Watch fan-out: `watchers` watches of one ConfigMap's namespace, then updates; each event
    // carries the time it was written.
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "warm");
    let cm: ConfigMap = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tick"}, "data": {"t": "0"}}))?;
    let rv = cms
        .create(&PostParams::default(), &cm)
        .await?
        .metadata
        .resource_version
        .context("no resourceVersion")?;
    let epoch = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let updates = 50usize;
    let watch_clients: Vec<Client> = (0..8).map(|_| http_client(addr)).collect::<Result<_>>()?;
    let mut tasks = Vec::new();
    let ready = Arc::new(tokio::sync::Barrier::new(watchers + 1));
    for w in 0..watchers {
        let api: Api<ConfigMap> = Api::namespaced(watch_clients[w % 8].clone(), "warm");
        let rv = rv.clone();
        let lat = latencies.clone();
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let params = WatchParams::default()
                .fields("metadata.name=tick")
                .timeout(290);
            let mut stream = api.watch(&params, &rv).await?.boxed();
            ready.wait().await;
            let mut seen = 0;
            while seen < updates {
                let Some(ev) = stream.try_next().await? else {
                    break;
                };
                if let WatchEvent::Modified(cm) = ev {
                    let sent: f64 = cm
                        .data
                        .and_then(|d| d.get("t").and_then(|t| t.parse().ok()))
                        .unwrap_or(0.0);
                    let now = epoch.elapsed().as_secs_f64() * 1e3;
                    lat.lock().expect("lock").push(now - sent);
                    seen += 1;
                }
            }
            anyhow::Ok(())
        }));
    }
    ready.wait().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..updates {
        let t = epoch.elapsed().as_secs_f64() * 1e3;
        cms.patch(
            "tick",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"t": format!("{t:.3}")}})),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.await??;
    }
    let mut lat = latencies.lock().expect("lock").clone();
    lat.sort_by(f64::total_cmp);
    println!(
        "watch fan-out, {watchers} watchers x {updates} updates ({} deliveries): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    );
    let _ = futures::stream::iter(Vec::<u8>::new()).count().await;
    Ok(())
}
