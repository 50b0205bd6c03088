//! berth-apiserver performance against the issue's goals: durable creates per second with 1 and
//! 16 clients (embedded store; kube-rs clients and a raw hyper client over loopback, kube-rs
//! and raw requests in-process), a list of 10,000 pods, watch fan-out to 1,000 watchers
//! (delivery p50/p99), and the server's memory for 10,000 pods against their serialized size.
//!
//! Run: `cargo build --profile perf -p berth-benches --bin apiserver_perf &&
//! target/perf/apiserver_perf [PODS] [WATCHERS]` (defaults 10000, 1000). The loopback server
//! runs in a child process (this binary with `--serve DIR`), so its memory and CPU time are
//! its own: besides rates, the bench prints the server's and the clients' CPU time per create,
//! which a loaded machine does not distort the way it distorts wall-clock rates. Figures go to
//! BENCHMARKS.md (API server section).

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_apiserver::ApiServer;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use tower::ServiceExt;

fn pod_json(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
            "ports": [{"containerPort": 80}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    })
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(pod_json(name)).expect("a pod")
}

/// VmRSS of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// User + system CPU time of a process so far, seconds.
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based); `rest` starts at field 3.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// CPU seconds of the server process and of this one over a phase.
struct CpuMeter {
    server: u32,
    at: (f64, f64),
}

impl CpuMeter {
    fn start(server: u32) -> Self {
        CpuMeter {
            server,
            at: (cpu(server), cpu(std::process::id())),
        }
    }

    /// "server X us, clients Y us per op".
    fn per_op(&self, ops: usize) -> String {
        let s = (cpu(self.server) - self.at.0) / ops as f64 * 1e6;
        let c = (cpu(std::process::id()) - self.at.1) / ops as f64 * 1e6;
        format!("CPU per create: server {s:.0} us, clients {c:.0} us")
    }
}

/// Creates `total` pods named `<prefix>-<n>` with `clients` concurrent kube-rs clients;
/// creates/s.
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

/// The bodies a raw client posts (serialized before the clock starts).
fn bodies(prefix: &str, clients: usize, per: usize) -> Vec<Vec<Bytes>> {
    (0..clients)
        .map(|c| {
            (0..per)
                .map(|i| {
                    Bytes::from(
                        serde_json::to_vec(&pod_json(&format!("{prefix}-{c}-{i}"))).expect("JSON"),
                    )
                })
                .collect()
        })
        .collect()
}

fn create_request(ns: &str, body: Bytes) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("/api/v1/namespaces/{ns}/pods"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(body))
        .expect("a request")
}

/// Creates with raw HTTP/1.1 connections (hyper, one per client, bodies prepared in advance,
/// answers read but not decoded): what the server sustains without kube-rs' client work.
async fn raw_creates(
    addr: std::net::SocketAddr,
    ns: &str,
    prefix: &str,
    total: usize,
    clients: usize,
) -> Result<f64> {
    let per = total / clients;
    let bodies = bodies(prefix, clients, per);
    let mut senders = Vec::new();
    for _ in 0..clients {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        senders.push(sender);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut sender, bodies) in senders.into_iter().zip(bodies) {
        let ns = ns.to_owned();
        tasks.push(tokio::spawn(async move {
            for body in bodies {
                let mut req = create_request(&ns, body);
                req.headers_mut()
                    .insert(http::header::HOST, http::HeaderValue::from_static("bench"));
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let _ = resp.into_body().collect().await?;
                if status != http::StatusCode::CREATED {
                    bail!("create answered {status}");
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((per * clients) as f64 / start.elapsed().as_secs_f64())
}

/// Creates through the in-process Router with prepared bodies (no client, no socket): the
/// server's own cost.
async fn router_creates(
    server: &ApiServer,
    ns: &str,
    prefix: &str,
    total: usize,
    clients: usize,
) -> Result<f64> {
    let per = total / clients;
    let bodies = bodies(prefix, clients, per);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for bodies in bodies {
        let router = server.router();
        let ns = ns.to_owned();
        tasks.push(tokio::spawn(async move {
            for body in bodies {
                let req = create_request(&ns, body).map(axum::body::Body::new);
                let resp = router.clone().oneshot(req).await?;
                let status = resp.status();
                let _ = resp.into_body().collect().await?;
                if status != http::StatusCode::CREATED {
                    bail!("create answered {status}");
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((per * clients) as f64 / start.elapsed().as_secs_f64())
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

/// `--serve DIR`: the loopback server process. Prints `ADDR host:port`, serves until killed.
async fn serve(dir: &str) -> Result<()> {
    let server = ApiServer::open(dir).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("ADDR {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    axum::serve(listener, server.router()).await?;
    Ok(())
}

/// Kills the server process when the bench ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn namespaces(client: &Client, names: &[&str]) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in names {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )?,
        )
        .await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--serve") {
        return serve(&args.next().context("--serve DIR")?).await;
    }
    let pods: usize = first.map_or(Ok(10_000), |a| a.parse())?;
    let watchers: usize = args.next().map_or(Ok(1_000), |a| a.parse())?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("# load average at start: {}", load.trim());
    let dir =
        tempfile::tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(dir.path().join("store"))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
    let server_pid = child.id();
    let _child = Child(child);
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("ADDR ")
        .with_context(|| format!("server said {line:?}"))?
        .parse()?;
    let admin = http_client(addr)?;
    namespaces(&admin, &["bench", "warm", "raw"]).await?;
    println!(
        "# berth-apiserver (pid {server_pid}, durable embedded store in {}) on {addr}",
        dir.path().display()
    );

    // Creates over loopback: kube-rs with 1 client, then 16; raw hyper with 16.
    creates(std::slice::from_ref(&admin), "warm", "w", 200).await?;
    let meter = CpuMeter::start(server_pid);
    let n = 1_000.min(pods);
    let one = creates(std::slice::from_ref(&admin), "warm", "one", n).await?;
    println!(
        "creates/s, 1 client, kube-rs, loopback: {one:.0} ({})",
        meter.per_op(n)
    );
    let sixteen: Vec<Client> = (0..16).map(|_| http_client(addr)).collect::<Result<_>>()?;
    let rss_before_pods = rss(server_pid);
    let meter = CpuMeter::start(server_pid);
    let many = creates(&sixteen, "bench", "p", pods).await?;
    println!(
        "creates/s, 16 clients, kube-rs, loopback ({pods} pods): {many:.0} ({})",
        meter.per_op(pods)
    );
    let rss_after_pods = rss(server_pid);
    let meter = CpuMeter::start(server_pid);
    let raw = raw_creates(addr, "raw", "r", pods, 16).await?;
    println!(
        "creates/s, 16 clients, raw hyper HTTP/1.1, loopback ({pods} pods): {raw:.0} ({})",
        meter.per_op(pods)
    );

    // In-process: a second server in this process, on its own durable store.
    {
        let local = ApiServer::open(dir.path().join("inproc")).await?;
        let kube_local = Client::new(local.router(), "default");
        namespaces(&kube_local, &["inproc", "router"]).await?;
        let n = 2_000.min(pods);
        let inproc: Vec<Client> = (0..16)
            .map(|_| Client::new(local.router(), "default"))
            .collect();
        let t = cpu(std::process::id());
        let rate = creates(&inproc, "inproc", "i", n).await?;
        println!(
            "creates/s, 16 clients, kube-rs, in-process: {rate:.0} (CPU per create {:.0} us)",
            (cpu(std::process::id()) - t) / n as f64 * 1e6
        );
        let t = cpu(std::process::id());
        let rate = router_creates(&local, "router", "q", n, 16).await?;
        println!(
            "creates/s, 16 tasks, raw requests to the Router, in-process: {rate:.0} (CPU per create {:.0} us)",
            (cpu(std::process::id()) - t) / n as f64 * 1e6
        );
    }

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
        "list of {pods} pods, kube-rs, loopback: median {:.1} ms (min {:.1})",
        times[2], times[0]
    );
    let grown = rss_after_pods.saturating_sub(rss_before_pods);
    println!(
        "server memory: RSS {:.1} MiB before the {pods} pods, {:.1} MiB after ({:.1} MiB grown; {:.1} MiB after the raw creates and 5 lists); serialized pods {:.1} MiB; grown / serialized {:.2}x",
        rss_before_pods as f64 / 1048576.0,
        rss_after_pods as f64 / 1048576.0,
        grown as f64 / 1048576.0,
        rss(server_pid) as f64 / 1048576.0,
        serialized as f64 / 1048576.0,
        grown as f64 / serialized as f64,
    );

    // Watch fan-out: `watchers` watches of one ConfigMap, then updates; each event carries the
    // time it was written.
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
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("# load average at the end: {}", load.trim());
    Ok(())
}
