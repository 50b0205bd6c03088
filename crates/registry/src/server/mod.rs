//! The registry's HTTP server: every endpoint of the OCI Distribution Spec v1.1 over a
//! [`Storage`], with optional htpasswd/bearer-token auth and TLS.
//!
//! [`router`] builds an axum [`Router`]; [`serve`] runs it on a listener (plain HTTP or rustls).
//! [`serve_with`] bounds what clients may hold (see [`ConnectionLimits`]): connections at once,
//! and time without progress before a request head, between requests, within a request body,
//! and on a blocked response write.
//! Request and response bodies stream: blobs go from the socket to the storage and back in
//! bounded chunks. On plain HTTP/1 connections a large upload raises its socket's receive
//! low-water mark, so the server wakes per quarter-megabyte rather than per TCP segment.

mod api_error;
mod conn;
mod routes;
mod socket;

use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderValue;

use crate::auth::{Htpasswd, TokenIssuer};
use crate::storage::{GcOptions, Storage};

use crate::{Error, Result};
pub use conn::{ConnectionLimits, default_max_connections};

pub use crate::manifest::DEFAULT_MAX_MANIFEST_SIZE;

/// Who may do what.
#[derive(Debug)]
pub struct AuthConfig {
    /// The users.
    pub htpasswd: Htpasswd,
    /// When set, clients get bearer tokens from `/token` (the Docker token flow); otherwise the
    /// challenge is HTTP Basic.
    pub tokens: Option<TokenIssuer>,
    /// Let unauthenticated clients pull (never push or delete).
    pub anonymous_pull: bool,
}

/// Server settings.
#[derive(Debug)]
pub struct ServerConfig {
    /// Authentication, or `None` for an open registry.
    pub auth: Option<AuthConfig>,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_size: u64,
    /// Service name in token challenges.
    pub service: String,
    /// Whether clients reach the server over TLS (the token realm is then `https://`).
    pub tls: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            auth: None,
            max_manifest_size: DEFAULT_MAX_MANIFEST_SIZE,
            service: "berth-registry".to_owned(),
            tls: false,
        }
    }
}

/// The axum router serving `/v2/…` (and `/token` when tokens are on) from `storage`.
pub fn router(storage: Arc<dyn Storage>, config: ServerConfig) -> Router {
    let state = Arc::new(routes::AppState { storage, config });
    Router::new()
        .route("/v2", axum::routing::any(routes::base))
        .route("/v2/", axum::routing::any(routes::base))
        .route("/v2/{*rest}", axum::routing::any(routes::dispatch))
        .route(
            "/token",
            axum::routing::get(routes::token).post(routes::token),
        )
        .with_state(state)
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                response.headers_mut().insert(
                    "docker-distribution-api-version",
                    HeaderValue::from_static("registry/2.0"),
                );
                response
            },
        ))
}

/// Loads a rustls server configuration from PEM certificate-chain and private-key files.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let cert_pem = std::fs::read(cert).map_err(Error::io("read", cert))?;
    let key_pem = std::fs::read(key).map_err(Error::io("read", key))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("certificates in {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("no certificate in {}", cert.display())));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| Error::Tls(format!("key in {}: {e}", key.display())))?
        .ok_or_else(|| Error::Tls(format!("no private key in {}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` on `listener` until `shutdown` completes; with `tls`, over rustls. Uses the
/// default [`ConnectionLimits`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, tls, ConnectionLimits::default(), shutdown).await
}

/// Serves `router` on `listener` until `shutdown` completes, within `limits`; with `tls`, over
/// rustls (HTTP/2 or HTTP/1.1 by ALPN). Plain connections speak HTTP/1.1 or h2c; their
/// requests carry a handle on the socket, so that uploads can tune how often they are woken
/// (see the `socket` module). On shutdown, requests in flight get 10 s to finish.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    conn::serve(listener, router, tls, limits, shutdown).await
}

/// Runs garbage collection on `storage` every `interval` until the task is dropped.
pub async fn collect_garbage_every(
    storage: Arc<dyn Storage>,
    interval: Duration,
    options: GcOptions,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match storage.collect_garbage(options).await {
            Ok(report) => tracing::info!(?report, "garbage collection"),
            Err(e) => {
                tracing::warn!(error = %api_error::DisplayChain(&e), "garbage collection failed")
            }
        }
    }
}
