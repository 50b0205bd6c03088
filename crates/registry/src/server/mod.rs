//! The registry's HTTP server: every endpoint of the OCI Distribution Spec v1.1 over a
//! [`Storage`], with optional htpasswd/bearer-token auth and TLS.
//!
//! [`router`] builds an axum [`Router`]; [`serve`] runs it on a listener (plain HTTP or rustls).
//! Request and response bodies stream: blobs go from the socket to the storage and back in
//! bounded chunks. On plain HTTP/1 connections a large upload raises its socket's receive
//! low-water mark, so the server wakes per quarter-megabyte rather than per TCP segment.

mod api_error;
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

/// Default limit on a manifest's size (the spec suggests registries accept at least 4 MiB).
pub const DEFAULT_MAX_MANIFEST_SIZE: u64 = 4 << 20;

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

/// Serves `router` on `listener` until `shutdown` completes; with `tls`, over rustls.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    match tls {
        None => {
            serve_plain(
                tokio::net::TcpListener::from_std(listener)?,
                router,
                shutdown,
            )
            .await
        }
        Some(config) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                stopper.graceful_shutdown(Some(Duration::from_secs(10)));
            });
            axum_server::from_tcp_rustls(
                listener,
                axum_server::tls_rustls::RustlsConfig::from_config(config),
            )
            .handle(handle)
            .serve(router.into_make_service())
            .await
        }
    }
}

/// Plain HTTP (1.1 or h2c): each connection's requests carry a handle on its socket, so that
/// uploads can tune how often they are woken (see [`socket`]).
async fn serve_plain(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt as _;

    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let socket = socket::ConnectionSocket::new(&stream);
        let service = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                if let Some(socket) = &socket {
                    req.extensions_mut().insert(socket.clone());
                }
                req
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            )
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Requests in flight finish; idle connections close.
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
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
