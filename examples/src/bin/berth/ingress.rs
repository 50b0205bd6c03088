//! `berth ingress`: the Ingress controller (berth-ingress) for an API server: an HTTP (and,
//! with `--https-addr`, HTTPS) reverse proxy serving the Ingresses of its class.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config as KubeConfig};

/// Arguments of `berth ingress`.
#[derive(Debug, clap::Args)]
pub(crate) struct IngressArgs {
    /// The kubeconfig to reach the API server with (`berth api serve` writes one).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Where to serve HTTP.
    #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:80")]
    addr: SocketAddr,
    /// Where to serve HTTPS (certificates from the Ingresses' TLS Secrets, chosen by SNI).
    #[arg(long, value_name = "HOST:PORT")]
    https_addr: Option<SocketAddr>,
    /// The IngressClass name served (when the API has no IngressClass of this controller).
    #[arg(long, default_value = "berth")]
    class: String,
    /// This controller's name in IngressClass.spec.controller.
    #[arg(long, default_value = "berth.dev/ingress-controller")]
    controller: String,
    /// Also serve Ingresses that name no class.
    #[arg(long)]
    serve_unclassed: bool,
    /// Address(es) to write into the served Ingresses' status.loadBalancer (IP or host name).
    #[arg(long, value_name = "ADDR")]
    publish: Vec<String>,
}

pub(crate) fn run(args: IngressArgs) -> anyhow::Result<u8> {
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let kube_config =
            KubeConfig::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using {}", args.kubeconfig.display()))?;
        let client = Client::try_from(kube_config).context("building the API client")?;
        let http = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("listening on {}", args.addr))?;
        let https = match args.https_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr}"))?,
            ),
            None => None,
        };
        let controller = berth_ingress::IngressController::new(berth_ingress::WatchConfig {
            class: berth_ingress::ClassConfig {
                class_name: args.class,
                controller: args.controller,
                serve_unclassed: args.serve_unclassed,
            },
            publish: args.publish,
        });
        eprintln!(
            "berth: ingress on http://{}{}",
            http.local_addr()?,
            https
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| format!(" and https://{a}"))
                .unwrap_or_default()
        );
        tokio::select! {
            r = controller.run(client, Some(http), https) => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(0)
    })
}
