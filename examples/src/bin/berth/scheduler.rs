//! `berth scheduler`: berth-scheduler against an API server (kube-rs watchers, bindings
//! through `pods/binding`), configured like kube-scheduler (`--config` takes a
//! `KubeSchedulerConfiguration`).

use std::path::PathBuf;

use anyhow::Context;
use berth_scheduler::kube::config::{KubeConfigOptions, Kubeconfig};
use berth_scheduler::kube::{Client, Config as KubeConfig};
use berth_scheduler::runner::{RunnerOptions, SchedulerRunner};

/// Arguments of `berth scheduler`.
#[derive(Debug, clap::Args)]
pub(crate) struct SchedulerArgs {
    /// The kubeconfig to reach the API server with (`berth api serve` writes one).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// A `KubeSchedulerConfiguration` (YAML or JSON): profiles, plugins, weights, backoff.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seconds a bound pod may stay unconfirmed by the pod watch before it is scheduled again.
    #[arg(long, default_value_t = 30)]
    assume_ttl: u64,
    /// Do not write `Scheduled` / `FailedScheduling` events.
    #[arg(long)]
    no_events: bool,
}

pub(crate) fn run(args: SchedulerArgs) -> anyhow::Result<u8> {
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            berth_scheduler::Config::from_yaml(&text)
                .with_context(|| format!("reading {}", path.display()))?
        }
        None => berth_scheduler::Config::default(),
    };
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let kube_config =
            KubeConfig::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using {}", args.kubeconfig.display()))?;
        eprintln!("berth: scheduler talking to {}", kube_config.cluster_url);
        let client = Client::try_from(kube_config).context("building the API client")?;
        let runner = SchedulerRunner::new(client, &config)?.options(RunnerOptions {
            assume_ttl: std::time::Duration::from_secs(args.assume_ttl),
            events: !args.no_events,
            ..Default::default()
        });
        runner
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        anyhow::Ok(0)
    })
}
