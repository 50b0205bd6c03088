//! TLS from Secrets: `kubernetes.io/tls` Secrets to rustls certified keys, and the SNI
//! resolver that picks one from the routing table in force (so a certificate change takes
//! effect with the same atomic swap as the routes).

use std::sync::Arc;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Secret;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::Error;
use crate::table::RoutingTable;

/// The certified key of a TLS Secret (`tls.crt` chain and `tls.key`, PEM).
pub fn certified_key(secret: &Secret) -> Result<Arc<CertifiedKey>, Error> {
    let name = format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or(""),
        secret.metadata.name.as_deref().unwrap_or("")
    );
    let bad = |reason: &str| Error::TlsSecret {
        secret: name.clone(),
        reason: reason.to_owned(),
    };
    let data = secret.data.as_ref().ok_or_else(|| bad("no data"))?;
    let crt = data.get("tls.crt").ok_or_else(|| bad("no tls.crt"))?;
    let key = data.get("tls.key").ok_or_else(|| bad("no tls.key"))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut crt.0.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("tls.crt is not PEM"))?;
    if certs.is_empty() {
        return Err(bad("tls.crt holds no certificate"));
    }
    let key = rustls_pemfile::private_key(&mut key.0.as_slice())
        .map_err(|_| bad("tls.key is not PEM"))?
        .ok_or_else(|| bad("tls.key holds no private key"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| bad("unsupported private key type"))?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

/// Picks the certificate for a connection's SNI from the current routing table.
#[derive(Debug)]
pub struct SniResolver {
    table: Arc<ArcSwap<RoutingTable>>,
}

impl SniResolver {
    /// A resolver reading `table`.
    pub fn new(table: Arc<ArcSwap<RoutingTable>>) -> Self {
        SniResolver { table }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().cert(hello.server_name())
    }
}

/// A rustls server configuration (HTTP/2 and HTTP/1.1 by ALPN) choosing certificates by SNI
/// from `table`.
pub fn server_config(
    table: Arc<ArcSwap<RoutingTable>>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Tls(err.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(table)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
