//! `berth controller-manager`: runs Berth's controllers (berth-controllers) against an API
//! server named by a kubeconfig, optionally behind leader election on a Lease, until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_controllers::ControllerManager;
use berth_controllers::leader::LeaseConfig;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::sync::CancellationToken;

use crate::Global;

/// Arguments of `berth controller-manager`.
#[derive(Debug, clap::Args)]
pub(crate) struct ControllerManagerArgs {
    /// The kubeconfig of the API server to work on.
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Act only while holding the Lease kube-system/berth-controller-manager.
    #[arg(long)]
    leader_elect: bool,
    /// Lease duration, renew deadline and retry period, in seconds (15, 10, 2 by default).
    #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [15.0, 10.0, 2.0])]
    leader_elect_timings: Vec<f64>,
    /// The controllers to run (`*` for all): replicaset, deployment, daemonset, statefulset,
    /// job, cronjob, serviceaccount, garbagecollector.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
}

pub(crate) fn run(_global: &Global, args: ControllerManagerArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
            .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .context("loading the kubeconfig")?;
        let client = kube::Client::try_from(config).context("building the API client")?;
        let mut manager = ControllerManager::new(client).controllers(&args.controllers)?;
        if args.leader_elect {
            let host = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "berth".into());
            let identity = format!("{host}_{}_{:x}", std::process::id(), rand::random::<u32>());
            let t: Vec<Duration> = args
                .leader_elect_timings
                .iter()
                .map(|s| Duration::from_secs_f64(s.max(0.05)))
                .collect();
            anyhow::ensure!(
                t[1] < t[0],
                "the renew deadline must be shorter than the lease duration"
            );
            manager = manager.leader_election(
                LeaseConfig::new("kube-system", "berth-controller-manager", &identity)
                    .timings(t[0], t[1], t[2]),
            );
            eprintln!("berth controller-manager: candidate {identity}");
        }
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        manager.run(stop).await?;
        Ok(0)
    })
}
