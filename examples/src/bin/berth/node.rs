//! `berth node run`: a node agent (berth-node) registering with the API server a kubeconfig
//! names, running the pods bound to it under the state root (`--root`).
//!
//! `berth node join --api URL --token T [--ca-file F]`: the same agent on a host that has no
//! kubeconfig yet. It trades the cluster's join token (`berth cluster up` prints it) for a
//! node identity (a client certificate for `system:node:<name>` in `system:nodes`, so the API
//! server's node authorizer applies to it), writes `<root>/kubeconfig`, and runs the agent.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use berth_node::{Agent, NodeConfig};

use crate::Global;

/// Node agent subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum NodeCommand {
    /// Run a node agent (`--root` is its state root: images, pods, logs).
    Run(RunArgs),
    /// Join a cluster with its join token, then run a node agent.
    Join(JoinArgs),
}

/// Arguments of `berth node join`.
#[derive(Debug, clap::Args)]
pub(crate) struct JoinArgs {
    /// The API server's URL (`https://HOST:PORT`).
    #[arg(long, value_name = "URL")]
    api: String,
    /// The cluster's join token.
    #[arg(long, env = "BERTH_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The cluster CA to verify the API server with (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// The Node's name (default: this host's name).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    agent: AgentArgs,
}

/// Arguments of `berth node run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The kubeconfig of the API server.
    #[arg(long, value_name = "FILE")]
    kubeconfig: PathBuf,
    /// The Node's name.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    agent: AgentArgs,
}

/// What `berth node run` and `berth node join` share.
#[derive(Debug, clap::Args)]
pub(crate) struct AgentArgs {
    /// CPUs to report (default: the host's).
    #[arg(long)]
    cpus: Option<u64>,
    /// Memory to report, e.g. `8Gi` (default: the host's).
    #[arg(long)]
    memory: Option<String>,
    /// Pods this node accepts.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// A label `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// A taint `key[=value]:Effect` (repeatable).
    #[arg(long = "taint", value_name = "KEY=VALUE:EFFECT")]
    taints: Vec<String>,
    /// The node's address (default: the host's first route's source address).
    #[arg(long)]
    address: Option<String>,
    /// The port the API server reaches the agent on.
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// A registry reached over plain HTTP (repeatable; localhost always is).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// Seconds between Lease renewals.
    #[arg(long, default_value_t = 10.0)]
    lease_renew: f64,
    /// Seconds between node status updates.
    #[arg(long, default_value_t = 10.0)]
    status_update: f64,
    /// The first CrashLoopBackOff delay in seconds (doubling to 300).
    #[arg(long, default_value_t = 10.0)]
    backoff: f64,
    /// Disk pressure (and pod eviction) when the state root's filesystem has less than this
    /// percentage free (the kubelet's `nodefs.available<10%`).
    #[arg(long, default_value_t = 10.0)]
    eviction_disk_free: f64,
    /// The agent's cgroup under every hierarchy (default: `berth-node/<name>`).
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<PathBuf>,
    /// Write the agent's pid here (removed when it stops).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
}

fn taint(text: &str) -> anyhow::Result<berth_node::k8s_openapi::api::core::v1::Taint> {
    let (kv, effect) = text
        .rsplit_once(':')
        .with_context(|| format!("taint {text:?}: expected KEY[=VALUE]:EFFECT"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        bail!("taint {text:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (kv, None),
    };
    Ok(berth_node::k8s_openapi::api::core::v1::Taint {
        key: key.to_owned(),
        value,
        effect: effect.to_owned(),
        time_added: None,
    })
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    if !s.is_finite() || s <= 0.0 {
        bail!("--{flag} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

pub(crate) fn run(global: &Global, cmd: NodeCommand) -> anyhow::Result<u8> {
    match cmd {
        NodeCommand::Run(args) => run_agent(global, &args.name, &args.kubeconfig, args.agent),
        NodeCommand::Join(args) => join(global, args),
    }
}

/// The path of the join request on the API server's address (served beside the API by
/// `berth cluster up`).
pub(crate) const JOIN_PATH: &str = "/berth/v1/join";

/// Whether `name` is a valid Node name (a DNS-1123 subdomain).
pub(crate) fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn join(global: &Global, args: JoinArgs) -> anyhow::Result<u8> {
    let name = match args.name {
        Some(n) => n,
        None => nix::unistd::gethostname()?.to_string_lossy().to_lowercase(),
    };
    if !valid_node_name(&name) {
        bail!("{name:?} is not a valid node name (lowercase letters, digits, '-' and '.')");
    }
    let url = args.api.trim_end_matches('/').to_owned();
    if !url.starts_with("https://") {
        bail!("--api {url:?}: the API server is reached over https://");
    }
    let mut cluster = serde_json::json!({ "server": url });
    if let Some(ca) = &args.ca_file {
        let ca = std::fs::canonicalize(ca).with_context(|| format!("reading {}", ca.display()))?;
        cluster["certificate-authority"] = serde_json::json!(ca);
    }
    let bootstrap: kube::config::Kubeconfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "join", "cluster": cluster}],
        "users": [{"name": "join", "user": {"token": args.token}}],
        "contexts": [{"name": "join", "context": {"cluster": "join", "user": "join"}}],
        "current-context": "join",
    }))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let kubeconfig = runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(bootstrap, &Default::default()).await?;
        let client = kube::Client::try_from(config)?;
        let request = axum::http::Request::post(JOIN_PATH)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&serde_json::json!({ "name": name }))?)?;
        let answer: serde_json::Value = client
            .request(request)
            .await
            .with_context(|| format!("joining the cluster at {url}"))?;
        anyhow::Ok(answer)
    })?;
    drop(runtime);
    let path = global.root.join("kubeconfig");
    crate::api::write_private(&path, serde_json::to_string_pretty(&kubeconfig)?.as_bytes())?;
    eprintln!("berth: joined {url} as node {name}");
    run_agent(global, &name, &path, args.agent)
}

/// Writes our pid to `path` and removes the file when dropped.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: &std::path::Path) -> anyhow::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(PidFile(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run_agent(
    global: &Global,
    name: &str,
    kubeconfig_path: &std::path::Path,
    args: AgentArgs,
) -> anyhow::Result<u8> {
    let mut config = NodeConfig::new(name, &global.root);
    if let Some(parent) = &args.cgroup_parent {
        if parent.is_absolute()
            || parent
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!(
                "--cgroup-parent {}: a relative path without `..`",
                parent.display()
            );
        }
        config.cgroup_parent = parent.clone();
    }
    config.cpus = args.cpus;
    config.memory = args
        .memory
        .as_deref()
        .map(|m| m.parse::<berth_api::quantity::Bytes>().map(|b| b.0))
        .transpose()?;
    config.max_pods = args.max_pods;
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("label {l:?}: expected KEY=VALUE"))?;
        config.labels.insert(k.to_owned(), v.to_owned());
    }
    config.taints = args
        .taints
        .iter()
        .map(|t| taint(t))
        .collect::<anyhow::Result<_>>()?;
    config.address = args.address;
    config.port = args.port;
    config.insecure_registries = args.insecure_registries;
    config.lease_renew = seconds("lease-renew", args.lease_renew)?;
    config.status_update = seconds("status-update", args.status_update)?;
    config.backoff_initial = seconds("backoff", args.backoff)?;
    if !(0.0..=100.0).contains(&args.eviction_disk_free) {
        bail!("--eviction-disk-free is a percentage (0 to 100)");
    }
    config.eviction_disk_free = args.eviction_disk_free / 100.0;
    let runtime = tokio::runtime::Runtime::new()?;
    let _pid_file = args.pid_file.as_deref().map(PidFile::create).transpose()?;
    runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig_path)
            .with_context(|| format!("reading {}", kubeconfig_path.display()))?;
        let client_config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let client = kube::Client::try_from(client_config)?;
        let agent = Agent::new(client, config)?;
        agent
            .run(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await?;
        anyhow::Ok(0)
    })
}
