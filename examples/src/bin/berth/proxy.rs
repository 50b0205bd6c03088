//! `berth proxy`: berth-proxy against an API server: Services (ClusterIP, NodePort,
//! LoadBalancer, externalTrafficPolicy Local, session affinity) programmed into nftables as
//! kube-proxy's nftables mode does, optionally NetworkPolicies and LoadBalancer addresses from a
//! pool. The cluster runs one per node.

use std::path::PathBuf;

use anyhow::Context;
use berth_proxy::kube::config::{KubeConfigOptions, Kubeconfig};
use berth_proxy::kube::{Client, Config as KubeConfig};
use berth_proxy::lb::LbPool;
use berth_proxy::policy::PolicyConfig;
use berth_proxy::runner::{ProxyRunner, RunnerOptions};
use berth_proxy::service::ProxyConfig;

/// Arguments of `berth proxy`.
#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    /// The kubeconfig to reach the API server with (`berth api serve` writes one).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// This node's name (endpoints on it are local for `externalTrafficPolicy: Local`).
    #[arg(long, env = "NODE_NAME", default_value = "localhost")]
    node_name: String,
    /// The cluster's pod CIDR: ClusterIP traffic from outside it is masqueraded.
    #[arg(long, value_name = "CIDR")]
    cluster_cidr: Option<String>,
    /// The nftables table for Services.
    #[arg(long, default_value = "berth-proxy")]
    table: String,
    /// Give LoadBalancer Services addresses from this pool (`10.0.0.10-10.0.0.20,192.0.2.0/28`);
    /// one proxy of a cluster should do it.
    #[arg(long, value_name = "RANGES")]
    lb_pool: Option<String>,
    /// Also enforce NetworkPolicies for this node's pods, in this table.
    #[arg(long, value_name = "TABLE")]
    policy_table: Option<String>,
    /// Delete the tables on exit (Ctrl-C).
    #[arg(long)]
    cleanup: bool,
}

pub(crate) fn run(args: ProxyArgs) -> anyhow::Result<u8> {
    let cluster_cidr = args
        .cluster_cidr
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--cluster-cidr")?;
    let lb_pool = args
        .lb_pool
        .as_deref()
        .map(LbPool::parse)
        .transpose()
        .context("--lb-pool")?;
    let cfg = ProxyConfig {
        table: args.table.clone(),
        node_name: args.node_name.clone(),
        cluster_cidr,
    };
    let opts = RunnerOptions {
        lb_pool,
        policy: args.policy_table.clone().map(|table| PolicyConfig {
            table,
            node_name: Some(args.node_name.clone()),
        }),
        cleanup_on_exit: args.cleanup,
    };
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let kube_config =
            KubeConfig::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using {}", args.kubeconfig.display()))?;
        eprintln!("berth: proxy talking to {}", kube_config.cluster_url);
        let client = Client::try_from(kube_config).context("building the API client")?;
        ProxyRunner::new(client, cfg, opts)
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        anyhow::Ok(0)
    })
}
