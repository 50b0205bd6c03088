//! `berth node run`: a node agent (berth-node) registering with the API server a kubeconfig
//! names, running the pods bound to it under the state root (`--root`).

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
        NodeCommand::Run(args) => run_agent(global, args),
    }
}

fn run_agent(global: &Global, args: RunArgs) -> anyhow::Result<u8> {
    let mut config = NodeConfig::new(&args.name, &global.root);
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
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
            .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
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
