//! Berth's Ingress controller: an HTTP(S) reverse proxy on hyper serving
//! networking.k8s.io/v1 Ingress rules, driven by the API's watch.
//!
//! Where to start:
//! - [`IngressController`]: watch an API server and serve HTTP and HTTPS (`berth ingress`).
//! - [`table::RoutingTable`]: the rules resolved to backend addresses, a pure snapshot built
//!   from Ingresses, Services, EndpointSlices and TLS Secrets and swapped in whole on change
//!   ([`watch::watch`]), so a reload never drops a connection or a request in flight.
//! - [`proxy::Proxy`]: the hyper service routing through the table in force, with pooled
//!   keep-alive connections to the backends; [`tls`]: certificates by SNI from Secrets.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> berth_ingress::Result<()> {
//! let ingress = berth_ingress::IngressController::new(Default::default());
//! let http = tokio::net::TcpListener::bind("0.0.0.0:8080").await.unwrap();
//! ingress.run(client, Some(http), None).await
//! # }
//! ```

mod error;
pub mod proxy;
pub mod table;
pub mod tls;
pub mod watch;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

pub use error::{Error, Result};
pub use proxy::Proxy;
pub use table::{ClassConfig, RoutingTable};
pub use watch::WatchConfig;

/// An Ingress controller: the watch keeping the table current and the proxies serving it.
#[derive(Debug, Clone)]
pub struct IngressController {
    config: WatchConfig,
    table: Arc<ArcSwap<RoutingTable>>,
}

impl IngressController {
    /// A controller with an empty table (every request 404) until the watch has listed the
    /// cluster.
    pub fn new(config: WatchConfig) -> Self {
        IngressController {
            config,
            table: Arc::new(ArcSwap::from_pointee(RoutingTable::default())),
        }
    }

    /// The table in force.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// The proxy serving this controller's table.
    pub fn proxy(&self) -> Proxy {
        Proxy::new(self.table.clone())
    }

    /// Watch through `client` and serve HTTP on `http` and HTTPS on `https` until one fails.
    pub async fn run(
        &self,
        client: kube::Client,
        http: Option<TcpListener>,
        https: Option<TcpListener>,
    ) -> Result<()> {
        let watch = watch::watch(client, self.config.clone(), self.table.clone());
        let proxy = self.proxy();
        let http = async {
            match http {
                Some(l) => {
                    let addr = l.local_addr().map_err(|source| Error::Listen {
                        addr: ([0, 0, 0, 0], 0).into(),
                        source,
                    })?;
                    proxy
                        .clone()
                        .serve_http(l)
                        .await
                        .map_err(|source| Error::Listen { addr, source })
                }
                None => std::future::pending().await,
            }
        };
        let https = async {
            match https {
                Some(l) => self.proxy().serve_https(l).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = watch => r,
            r = http => r,
            r = https => r,
        }
    }
}
