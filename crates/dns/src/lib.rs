//! Cluster DNS for Berth: what CoreDNS's `kubernetes` plugin does, on hickory.
//!
//! Names under the cluster domain are answered from the API: Services (ClusterIP A/AAAA,
//! headless Services' ready endpoints, ExternalName CNAMEs), SRV records per named port,
//! per-pod records of headless Services (`<hostname>.<subdomain>.<ns>.svc.<domain>`, which is
//! how StatefulSet pods are found), with NXDOMAIN and NODATA told apart; other names are
//! forwarded to the host's resolvers or refused. UDP and TCP.
//!
//! Where to start:
//! - [`ClusterDns`]: watch an API server and serve, in one call (`berth dns` uses it).
//! - [`records::ClusterRecords`]: the answers, a pure snapshot built from Services and
//!   EndpointSlices; [`watch::watch`] keeps one current; [`server`] puts it on the wire.
//! - For the node agent: [`resolv::pod_resolv_conf`] (a pod's `/etc/resolv.conf`) and
//!   [`env::service_env`] (the `<SVC>_SERVICE_HOST` variables).
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> berth_dns::Result<()> {
//! let dns = berth_dns::ClusterDns::new("cluster.local")?
//!     .upstream(berth_dns::Upstream::from_resolv_conf("/etc/resolv.conf")?);
//! let server = dns.bind("127.0.0.1:5353".parse().unwrap()).await?;
//! println!("cluster DNS on {}", server.local_addr());
//! dns.run(client, server).await
//! # }
//! ```

pub mod env;
mod error;
pub mod records;
pub mod resolv;
pub mod server;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use error::{Error, Result};
pub use hickory_proto;
pub use records::{ClusterRecords, Lookup};
pub use server::{DnsServer, Handler, Upstream};

/// The cluster domain Kubernetes uses unless told otherwise.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// A cluster DNS server: its settings and the snapshot it answers from.
#[derive(Debug, Clone)]
pub struct ClusterDns {
    domain: String,
    ttl: u32,
    upstream: Upstream,
    records: Arc<ArcSwap<ClusterRecords>>,
}

impl ClusterDns {
    /// A server for `domain` (no records until the watch has listed the cluster), refusing
    /// other names until [`ClusterDns::upstream`] says otherwise.
    pub fn new(domain: &str) -> Result<Self> {
        let records = ClusterRecords::empty(domain)?;
        Ok(ClusterDns {
            domain: domain.to_owned(),
            ttl: records::DEFAULT_TTL,
            upstream: Upstream::Refuse,
            records: Arc::new(ArcSwap::from_pointee(records)),
        })
    }

    /// Where names outside the cluster domain go.
    pub fn upstream(mut self, upstream: Upstream) -> Self {
        self.upstream = upstream;
        self
    }

    /// The TTL of served records.
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// The snapshot being served (for tests and status).
    pub fn records(&self) -> Arc<ClusterRecords> {
        self.records.load_full()
    }

    /// Listen on UDP and TCP at `addr`.
    pub async fn bind(&self, addr: SocketAddr) -> Result<DnsServer> {
        DnsServer::bind(
            addr,
            Handler::new(self.records.clone(), self.upstream.clone()),
        )
        .await
    }

    /// Keep the records current from `client` while `server` answers, until either ends.
    pub async fn run(&self, client: kube::Client, server: DnsServer) -> Result<()> {
        tokio::select! {
            r = self.watch(client) => r,
            r = server.run() => r,
        }
    }

    /// Only the watch half of [`ClusterDns::run`].
    pub async fn watch(&self, client: kube::Client) -> Result<()> {
        watch::watch(client, self.domain.clone(), self.ttl, self.records.clone()).await
    }
}
