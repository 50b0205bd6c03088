//! `berth cluster up|down`: a whole cluster on one host, under one directory
//! (`<root>/cluster`).
//!
//! Process model: `berth cluster up` starts a **control plane** process (this binary again,
//! `berth cluster control-plane`, in its own process group) that runs the API server over TLS
//! on the embedded store (or etcd), Berth's registry, the scheduler, the controllers and the
//! node lifecycle controller, all in-process and talking to the API server without a socket.
//! Then it starts one **node agent** process per node (`berth node join`, each with its own
//! state root under `<root>/cluster/nodes/<name>`, as if on its own host): each trades the
//! cluster's join token for a node identity and runs the pods bound to it. `up` returns once
//! every Node is Ready (`--foreground` stays attached and tears down on Ctrl-C). Run again, `up`
//! starts what is not running (the control plane, or an agent that was killed) and keeps the
//! rest. `berth cluster down` stops the agents and the control plane, then removes every pod
//! they left (containers, mounts, cgroups), the cluster's cgroup tree and the directory.
//!
//! Files under `<root>/cluster`: `cluster.json` (what `up` was asked for), `control-plane.json`
//! (its pid and addresses, while it runs), `kubeconfig` (the administrator's), `join-token`,
//! `api/` (store and PKI), `registry/`, `nodes/<name>/` (agent root, `agent.pid`, `agent.log`),
//! `control-plane.log`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::Global;
use crate::api::{parse_store, write_private};

/// Cluster subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ClusterCommand {
    /// Bring a cluster up under `<root>/cluster`: API server, store, registry, scheduler,
    /// controllers and N node agents; returns once every node is Ready.
    Up(UpArgs),
    /// Stop the cluster under `<root>/cluster` and remove everything it made.
    Down,
    /// The control plane process `up` starts (not for direct use).
    #[command(hide = true)]
    ControlPlane,
}

/// Arguments of `berth cluster up`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// How many node agents to run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    nodes: u32,
    /// Where objects live: `embedded` (under `<root>/cluster/api/store`) or
    /// `etcd://HOST:PORT[,HOST:PORT...]`.
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Also write the administrator's kubeconfig here (it is always in
    /// `<root>/cluster/kubeconfig`).
    #[arg(long, value_name = "FILE")]
    kubeconfig_out: Option<PathBuf>,
    /// The API server's address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Stay attached: tear the cluster down on Ctrl-C or SIGTERM.
    #[arg(long)]
    foreground: bool,
    /// Seconds to wait for every node to be Ready.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Seconds between an agent's Lease renewals and node status updates.
    #[arg(long, default_value_t = 10.0)]
    lease_renew: f64,
    /// Seconds without a heartbeat before a node is marked NotReady.
    #[arg(long, default_value_t = 40.0)]
    node_monitor_grace: f64,
    /// Seconds pods that say nothing about it stay bound to a NotReady node before they are
    /// evicted (and recreated elsewhere by their controllers).
    #[arg(long, default_value_t = 300)]
    pod_eviction_timeout: u32,
    /// The first CrashLoopBackOff delay in seconds (doubling to 300).
    #[arg(long, default_value_t = 10.0)]
    backoff: f64,
    /// Each node's disk pressure threshold: the percentage of its filesystem that must stay
    /// free, or its pods are evicted (the kubelet's 10%).
    #[arg(long, default_value_t = 10.0)]
    eviction_disk_free: f64,
}

pub(crate) fn run(global: &Global, cmd: ClusterCommand) -> anyhow::Result<u8> {
    match cmd {
        ClusterCommand::Up(args) => up(global, args),
        ClusterCommand::Down => down(global).map(|()| 0),
        ClusterCommand::ControlPlane => control_plane(global),
    }
}

/// `<root>/cluster`.
fn cluster_dir(global: &Global) -> PathBuf {
    global.root.join("cluster")
}

fn read_json(path: &Path) -> anyhow::Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Whether `pid` runs (a zombie does not) and its command line contains `needle`: a pid
/// recorded in a file is only trusted while it still names our process.
fn ours(pid: i32, needle: &str) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
    {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        String::from_utf8_lossy(&c)
            .replace('\0', " ")
            .contains(needle)
    })
}

/// SIGTERM, up to `grace` for it to go, then SIGKILL and wait.
fn stop_process(pid: i32, needle: &str, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if !ours(pid, needle) {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while ours(pid, needle) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if ours(pid, needle) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ours(pid, needle) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn pid_in(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<f64> {
    if !s.is_finite() || s <= 0.0 {
        bail!("--{flag} must be a positive number of seconds");
    }
    Ok(s)
}

/// The cgroup every node's pods go under: unique per cluster, so clusters side by side on
/// one host never share a group.
fn cgroup_base(id: &str) -> PathBuf {
    PathBuf::from(format!("berth-cluster-{id}"))
}

fn node_names(n: u64) -> Vec<String> {
    (1..=n).map(|i| format!("node-{i}")).collect()
}

fn up(global: &Global, args: UpArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let dir = cluster_dir(global);
    parse_store(&args.store).map_err(anyhow::Error::msg)?;
    seconds("lease-renew", args.lease_renew)?;
    seconds("node-monitor-grace", args.node_monitor_grace)?;
    seconds("backoff", args.backoff)?;
    seconds("timeout", args.timeout)?;
    if !(0.0..=100.0).contains(&args.eviction_disk_free) {
        bail!("--eviction-disk-free is a percentage (0 to 100)");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec_path = dir.join("cluster.json");
    let spec = match read_json(&spec_path)? {
        // A cluster that exists keeps what it was made with; `up` only starts what is down.
        Some(spec) => spec,
        None => {
            let kubeconfig_out = args
                .kubeconfig_out
                .as_ref()
                .map(std::path::absolute)
                .transpose()?;
            let spec = json!({
                "id": format!("{:08x}", rand::random::<u32>()),
                "nodes": args.nodes,
                "store": args.store,
                "addr": args.addr.to_string(),
                "kubeconfigOut": kubeconfig_out,
                "leaseRenew": args.lease_renew,
                "nodeMonitorGrace": args.node_monitor_grace,
                "podEvictionTimeout": args.pod_eviction_timeout,
                "backoff": args.backoff,
                "evictionDiskFree": args.eviction_disk_free,
            });
            write_private(&spec_path, serde_json::to_string_pretty(&spec)?.as_bytes())?;
            spec
        }
    };
    let id = spec["id"]
        .as_str()
        .context("cluster.json has no id")?
        .to_owned();
    let plane = match read_json(&dir.join("control-plane.json"))? {
        Some(p) if ours(p["pid"].as_i64().unwrap_or(0) as i32, "control-plane") => p,
        _ => start_control_plane(global, &dir)?,
    };
    let server = plane["server"].as_str().context("no server")?.to_owned();
    let registry = plane["registry"]
        .as_str()
        .context("no registry")?
        .to_owned();
    let token = std::fs::read_to_string(dir.join("join-token"))?
        .trim()
        .to_owned();
    let ca_file = dir.join("api/pki/ca.crt");
    let names = node_names(spec["nodes"].as_u64().unwrap_or(3));
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut children = Vec::new();
    let mut started_pids = Vec::new();
    for name in &names {
        let node_dir = dir.join("nodes").join(name);
        if ours(pid_in(&node_dir.join("agent.pid")), "node") {
            continue;
        }
        std::fs::create_dir_all(&node_dir)?;
        // A stale pid file (an agent killed with SIGKILL leaves it) goes; the new agent writes
        // its own, which `up` waits for below.
        let _ = std::fs::remove_file(node_dir.join("agent.pid"));
        started_pids.push(node_dir.join("agent.pid"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node_dir.join("agent.log"))?;
        let f = |k: &str| spec[k].as_f64().unwrap_or(10.0).to_string();
        let child = Command::new(&exe)
            .arg("--root")
            .arg(&node_dir)
            .args([
                "node", "join", "--api", &server, "--name", name, "--port", "0",
            ])
            .arg("--ca-file")
            .arg(&ca_file)
            .arg("--cgroup-parent")
            .arg(cgroup_base(&id).join(name))
            .arg("--pid-file")
            .arg(node_dir.join("agent.pid"))
            .args(["--lease-renew", &f("leaseRenew")])
            .args(["--status-update", &f("leaseRenew")])
            .args(["--backoff", &f("backoff")])
            .args(["--eviction-disk-free", &f("evictionDiskFree")])
            .env("BERTH_JOIN_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting the agent of {name}"))?;
        eprintln!("berth: started node agent {name} (pid {})", child.id());
        children.push(child);
    }
    // Reap agents that die while we are attached (foreground), so they show as gone.
    for mut child in children {
        std::thread::spawn(move || child.wait());
    }
    let kubeconfig = dir.join("kubeconfig");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime
        .block_on(wait_ready(
            &kubeconfig,
            &names,
            Duration::from_secs_f64(args.timeout),
        ))
        .with_context(|| {
            format!(
                "waiting for the nodes to be Ready (logs: {})",
                dir.join("nodes/*/agent.log").display()
            )
        })?;
    // The Nodes of restarted agents may still be Ready from before: wait for the agents too.
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    while !started_pids.iter().all(|p| p.exists()) {
        if Instant::now() > deadline {
            bail!(
                "the node agents did not start (logs: {})",
                dir.join("nodes/*/agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    println!(
        "cluster up: {} nodes Ready in {:.2} s",
        names.len(),
        elapsed.as_secs_f64()
    );
    println!("  API server:  {server}");
    println!("  registry:    {registry}");
    println!("  kubeconfig:  export KUBECONFIG={}", kubeconfig.display());
    println!(
        "  join a node: berth --root DIR node join --api {server} --ca-file {} --token {token} --name NAME",
        ca_file.display()
    );
    println!(
        "  stop:        berth cluster down --root {}",
        global.root.display()
    );
    if args.foreground {
        runtime.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            anyhow::Ok(())
        })?;
        drop(runtime);
        down(global)?;
    }
    Ok(0)
}

/// Starts the control plane process and waits for its `ready` line.
fn start_control_plane(global: &Global, dir: &Path) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let log_path = dir.join("control-plane.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut child = Command::new(&exe)
        .arg("--root")
        .arg(&global.root)
        .args(["cluster", "control-plane"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the control plane")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).take(64 * 1024).read_line(&mut line);
    }
    let pid = child.id();
    std::thread::spawn(move || child.wait());
    match line.trim().strip_prefix("ready ") {
        Some(status) => {
            eprintln!("berth: started the control plane (pid {pid})");
            Ok(serde_json::from_str(status)?)
        }
        None => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the control plane did not start ({}):\n{}",
                log_path.display(),
                tail.join("\n")
            )
        }
    }
}

/// Polls the Nodes until every one of `names` is Ready.
async fn wait_ready(kubeconfig: &Path, names: &[String], timeout: Duration) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let nodes: kube::Api<Node> = kube::Api::all(client);
    let deadline = Instant::now() + timeout;
    let mut missing: Vec<String> = names.to_vec();
    loop {
        if let Ok(list) = nodes.list(&Default::default()).await {
            let ready: std::collections::HashSet<String> = list
                .items
                .iter()
                .filter(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .filter_map(|n| n.metadata.name.clone())
                .collect();
            missing = names
                .iter()
                .filter(|n| !ready.contains(*n))
                .cloned()
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("not Ready after {:?}: {}", timeout, missing.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the join endpoint needs.
struct Joiner {
    pki: berth_apiserver::tls::Pki,
    token: String,
    server: String,
}

/// A Kubernetes Status answer.
fn status(code: u16, reason: &str, message: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    (
        axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::BAD_REQUEST),
        axum::Json(body),
    )
        .into_response()
}

/// `POST /berth/v1/join` `{"name": NODE}` with `Authorization: Bearer <join token>`: answers
/// with a kubeconfig holding a client certificate for `system:node:<NODE>` in `system:nodes`
/// (Kubernetes' TLS bootstrap, in one step).
async fn join(
    axum::extract::State(joiner): axum::extract::State<Arc<Joiner>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant time in the token's length: no early exit on the first differing byte.
    let same = given.len() == joiner.token.len()
        && given
            .bytes()
            .zip(joiner.token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return status(401, "Unauthorized", "a valid join token is required".into());
    }
    let name = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["name"].as_str().map(str::to_owned))
        .unwrap_or_default();
    if !crate::node::valid_node_name(&name) {
        return status(
            400,
            "BadRequest",
            format!("{name:?} is not a valid node name"),
        );
    }
    let user = format!("{}{name}", berth_apiserver::authz::NODE_USER_PREFIX);
    match joiner.pki.kubeconfig(
        &joiner.server,
        &user,
        &[berth_apiserver::authz::NODES_GROUP],
    ) {
        Ok(config) => {
            tracing::info!(node = %name, "node joined");
            axum::Json(config).into_response()
        }
        Err(e) => status(500, "InternalError", format!("issuing a certificate: {e}")),
    }
}

/// The control plane: API server (TLS + join endpoint), registry, scheduler, controllers,
/// node lifecycle; prints `ready {json}` on stdout once serving, runs until SIGTERM/SIGINT.
fn control_plane(global: &Global) -> anyhow::Result<u8> {
    use berth_apiserver::{ApiServer, auth, tls};
    use berth_controllers::node_lifecycle::{NodeLifecycleConfig, NodeLifecycleController};
    use berth_registry::server as registry_server;
    use tokio_util::sync::CancellationToken;

    let dir = cluster_dir(global);
    let spec =
        read_json(&dir.join("cluster.json"))?.context("no cluster.json: run `berth cluster up`")?;
    let store =
        parse_store(spec["store"].as_str().unwrap_or("embedded")).map_err(anyhow::Error::msg)?;
    let addr: SocketAddr = spec["addr"].as_str().unwrap_or("127.0.0.1:0").parse()?;
    let token_path = dir.join("join-token");
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) => t.trim().to_owned(),
        Err(_) => {
            let t: String = (0..4)
                .map(|_| format!("{:08x}", rand::random::<u32>()))
                .collect();
            write_private(&token_path, t.as_bytes())?;
            t
        }
    };
    let pki_dir = dir.join("api/pki");
    let pki = tls::Pki::load_or_create(&pki_dir, &tls::default_hosts(addr))
        .with_context(|| format!("setting up the certificates in {}", pki_dir.display()))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let store = crate::api::open_store(&Global { root: dir.clone() }, &store).await?;
        let server = ApiServer::new(store).await?;
        // Components in this process talk to the server without a socket, as administrator.
        let local = kube::Client::new(server.router(), "default");
        let secured = server
            .clone()
            .with_authenticator(auth::Union::new().with(auth::ClientCertificates));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let mut local_addr = listener.local_addr()?;
        if local_addr.ip().is_unspecified() {
            local_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let url = format!("https://{local_addr}");
        let admin = serde_json::to_string_pretty(&pki.admin_kubeconfig(&url)?)?;
        write_private(&dir.join("kubeconfig"), admin.as_bytes())?;
        if let Some(out) = spec["kubeconfigOut"].as_str() {
            write_private(Path::new(out), admin.as_bytes())?;
        }
        let server_config = pki.server_config()?;
        let joiner = Arc::new(Joiner {
            pki,
            token,
            server: url.clone(),
        });
        let app = axum::Router::new()
            .route(crate::node::JOIN_PATH, axum::routing::post(join))
            .with_state(joiner)
            .fallback_service(secured.router());

        let registry_storage: Arc<dyn berth_registry::Storage> = Arc::new(
            berth_registry::FsStorage::open(dir.join("registry"))
                .context("opening the registry's storage")?,
        );
        let registry_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let registry_addr = registry_listener.local_addr()?;

        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn({
            let stop = stop.clone();
            async move {
                if let Err(e) =
                    tls::serve(listener, app, server_config, stop.cancelled_owned()).await
                {
                    tracing::error!(error = %e, "the API server stopped");
                }
            }
        });
        tasks.spawn({
            let stop = stop.clone();
            let router =
                registry_server::router(registry_storage, registry_server::ServerConfig::default());
            async move {
                if let Err(e) =
                    registry_server::serve(registry_listener, router, None, stop.cancelled_owned())
                        .await
                {
                    tracing::error!(error = %e, "the registry stopped");
                }
            }
        });
        let runner = berth_scheduler::runner::SchedulerRunner::new(
            local.clone(),
            &berth_scheduler::Config::default(),
        )?;
        tasks.spawn({
            let stop = stop.clone();
            async move {
                if let Err(e) = runner.run(stop.cancelled_owned()).await {
                    tracing::error!(error = %e, "the scheduler stopped");
                }
            }
        });
        let manager = berth_controllers::ControllerManager::new(local.clone())
            .register(berth_controllers::endpoints::ENDPOINTS_SPEC)
            .register(berth_controllers::endpoints::ENDPOINTSLICE_SPEC);
        tasks.spawn({
            let stop = stop.clone();
            async move {
                if let Err(e) = manager.run(stop).await {
                    tracing::error!(error = %e, "the controller manager stopped");
                }
            }
        });
        let grace = Duration::from_secs_f64(spec["nodeMonitorGrace"].as_f64().unwrap_or(40.0));
        let lifecycle = NodeLifecycleController::new(
            local.clone(),
            NodeLifecycleConfig {
                node_monitor_period: (grace / 4).min(Duration::from_secs(5)),
                node_monitor_grace_period: grace,
                default_toleration_seconds: spec["podEvictionTimeout"].as_i64().unwrap_or(300),
                ..NodeLifecycleConfig::default()
            },
        );
        tasks.spawn({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    () = lifecycle.run() => {}
                    () = stop.cancelled() => {}
                }
            }
        });
        let status = json!({
            "pid": std::process::id(),
            "server": url,
            "registry": registry_addr.to_string(),
        });
        write_private(
            &dir.join("control-plane.json"),
            serde_json::to_string_pretty(&status)?.as_bytes(),
        )?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready {status}")?;
            out.flush()?;
        }
        tracing::info!(%url, registry = %registry_addr, "control plane ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        let _ = std::fs::remove_file(dir.join("control-plane.json"));
        anyhow::Ok(0)
    })
}

/// Processes whose environment holds `BERTH_NODE_SHIM=<a path under dir>`: the container
/// shims of this cluster's nodes.
fn shims_under(dir: &Path) -> Vec<i32> {
    let prefix = format!("{}={}", berth_node::shim::SHIM_ENV, dir.display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|v| v.starts_with(prefix.as_bytes()))
            })
        })
        .collect()
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn down(global: &Global) -> anyhow::Result<()> {
    use berth_cgroups::CgroupManager;
    let dir = cluster_dir(global);
    if !dir.exists() {
        bail!("no cluster under {}", global.root.display());
    }
    let spec = read_json(&dir.join("cluster.json")).ok().flatten();
    let nodes_dir = dir.join("nodes");
    let nodes: Vec<(String, PathBuf)> = std::fs::read_dir(&nodes_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    // 1. The agents (their containers keep running: they go in step 3).
    for (name, node_dir) in &nodes {
        let pid = pid_in(&node_dir.join("agent.pid"));
        if ours(pid, "node") {
            eprintln!("berth: stopping node agent {name} (pid {pid})");
            stop_process(pid, "node", Duration::from_secs(10));
        }
    }
    // An agent `up` started that has not written its pid file yet: found by its command line.
    let needle = format!("--root {}/", nodes_dir.display());
    for pid in std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        if ours(pid, &needle) && ours(pid, " node ") {
            stop_process(pid, "node", Duration::from_secs(10));
        }
    }
    // 2. The control plane.
    if let Some(plane) = read_json(&dir.join("control-plane.json")).ok().flatten() {
        let pid = plane["pid"].as_i64().unwrap_or(0) as i32;
        if ours(pid, "control-plane") {
            eprintln!("berth: stopping the control plane (pid {pid})");
            stop_process(pid, "control-plane", Duration::from_secs(10));
        }
    }
    // 3. Every pod the agents left: containers, sandboxes, rootfs mounts, volumes, cgroups.
    let id = spec
        .as_ref()
        .and_then(|s| s["id"].as_str().map(str::to_owned));
    let mut pods = 0;
    for (name, node_dir) in &nodes {
        let mut config = berth_node::NodeConfig::new(name, node_dir);
        if let Some(id) = &id {
            config.cgroup_parent = cgroup_base(id).join(name);
        }
        match berth_node::host::Host::open(config) {
            Ok(host) => pods += host.remove_all_pods(),
            Err(e) => eprintln!("berth: warning: node {name}: {e}"),
        }
        // The node's pod bridge (its pods' veths went with their namespaces).
        let bridge = berth_node::network::bridge_name(name);
        if let Err(e) = berth_net::Netlink::open(None).and_then(|host| host.delete_link(&bridge)) {
            eprintln!("berth: warning: node {name}: removing the bridge {bridge}: {e}");
        }
    }
    // 4. Whatever is left: shims, the cluster's cgroup tree, mounts, the directory.
    for pid in shims_under(&dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let Some(id) = &id
        && let Ok(group) = berth_cgroups::manager(Path::new("/sys/fs/cgroup"), &cgroup_base(id))
        && group.exists()
    {
        let _ = group.kill_all(nix::sys::signal::Signal::SIGKILL);
        group
            .delete()
            .with_context(|| format!("removing the cgroup {}", cgroup_base(id).display()))?;
    }
    for m in mounts_under(&dir) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("berth: warning: unmounting {}: {e}", m.display());
        }
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    // The root itself, when the cluster was all it held.
    let _ = std::fs::remove_dir(&global.root);
    println!(
        "cluster down: {} node(s) stopped, {pods} pod(s) removed, {} removed",
        nodes.len(),
        dir.display()
    );
    Ok(())
}
