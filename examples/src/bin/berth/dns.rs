//! `berth dns`: cluster DNS (berth-dns) for an API server, answering Service and pod names
//! under the cluster domain on UDP and TCP and forwarding the rest to the host's resolvers.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config as KubeConfig};

/// Arguments of `berth dns`.
#[derive(Debug, clap::Args)]
pub(crate) struct DnsArgs {
    /// The kubeconfig to reach the API server with (`berth api serve` writes one).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Where to answer (UDP and TCP).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:53")]
    addr: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = berth_dns::DEFAULT_DOMAIN)]
    domain: String,
    /// TTL of the records served, in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// Forward other names to the nameservers of this resolv.conf.
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    upstream: PathBuf,
    /// Answer REFUSED for names outside the cluster domain instead of forwarding them.
    #[arg(long)]
    no_forward: bool,
}

pub(crate) fn run(args: DnsArgs) -> anyhow::Result<u8> {
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let upstream = if args.no_forward {
        berth_dns::Upstream::Refuse
    } else {
        berth_dns::Upstream::from_resolv_conf(&args.upstream)?
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let kube_config =
            KubeConfig::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using {}", args.kubeconfig.display()))?;
        let client = Client::try_from(kube_config).context("building the API client")?;
        let dns = berth_dns::ClusterDns::new(&args.domain)?
            .ttl(args.ttl)
            .upstream(upstream);
        let server = dns.bind(args.addr).await?;
        eprintln!(
            "berth: cluster DNS for {} on {} (udp+tcp)",
            args.domain,
            server.local_addr()
        );
        tokio::select! {
            r = dns.run(client, server) => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(0)
    })
}
