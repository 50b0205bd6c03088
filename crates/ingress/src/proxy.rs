//! The reverse proxy: hyper servers (HTTP/1.1 and HTTP/2, plain and TLS) that route each
//! request through the routing table in force and relay it to a backend over pooled
//! keep-alive HTTP/1.1 connections.
//!
//! A request loads the current table (one atomic load, no lock, no copy), picks a backend
//! address and lets go of the table before any I/O, so a reload never waits for requests and
//! a request in flight keeps the backend it chose. Answers: 404 when no rule or default
//! backend matches, 503 when the backend Service has no ready endpoint, 502 when the backend
//! cannot be reached. `X-Forwarded-For` (appended), `-Proto`, `-Host` and `-Port` are set;
//! hop-by-hop headers are not relayed. Protocol upgrades (WebSocket) are not relayed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::table::RoutingTable;

/// The body of a proxied response: the backend's, streamed, or a short local one.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Hop-by-hop headers (RFC 9110 7.6.1), never relayed.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Routes requests through a routing table to backends.
#[derive(Clone)]
pub struct Proxy {
    table: Arc<ArcSwap<RoutingTable>>,
    client: Client<HttpConnector, Incoming>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy routing through `table` (swap its content to change the routes).
    pub fn new(table: Arc<ArcSwap<RoutingTable>>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Proxy { table, client }
    }

    /// The table the proxy routes through.
    pub fn table(&self) -> &Arc<ArcSwap<RoutingTable>> {
        &self.table
    }

    /// Handle one request from `remote` that arrived on `local` (over TLS when `tls`).
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        local: SocketAddr,
        tls: bool,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let host = request_host(&req).map(str::to_owned);
        let hostname = host.as_deref().map(strip_port).unwrap_or("");
        let picked = {
            let table = self.table.load();
            table
                .route(hostname, req.uri().path())
                .map(|backend| backend.pick())
        };
        let addr = match picked {
            None => return Ok(local_response(StatusCode::NOT_FOUND, "no route\n")),
            Some(None) => {
                return Ok(local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no ready endpoint\n",
                ));
            }
            Some(Some(addr)) => addr,
        };

        // The upstream request: origin URI to the endpoint, HTTP/1.1, forwarding headers.
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let uri = match Uri::builder()
            .scheme("http")
            .authority(addr.to_string())
            .path_and_query(path)
            .build()
        {
            Ok(uri) => uri,
            Err(_) => return Ok(local_response(StatusCode::BAD_REQUEST, "bad request URI\n")),
        };
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        let client_ip = remote.ip().to_string();
        let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {client_ip}"),
            None => client_ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        if let Some(v) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(X_FORWARDED_HOST.clone(), v.clone());
            // An HTTP/2 request carries its host in the URI only.
            headers.entry(header::HOST).or_insert(v);
        }
        if let Ok(v) = HeaderValue::from_str(&local.port().to_string()) {
            headers.insert(X_FORWARDED_PORT.clone(), v);
        }

        match self.client.request(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Either::Left(body)))
            }
            Err(err) => {
                tracing::debug!(%addr, %err, "backend request failed");
                Ok(local_response(
                    StatusCode::BAD_GATEWAY,
                    "backend unreachable\n",
                ))
            }
        }
    }

    /// Serve plain HTTP (HTTP/1.1 and h2c) on `listener` until it fails.
    pub async fn serve_http(self, listener: TcpListener) -> std::io::Result<()> {
        self.serve(listener, None).await
    }

    /// Serve HTTPS on `listener`, certificates chosen by SNI from the table.
    pub async fn serve_https(self, listener: TcpListener) -> crate::Result<()> {
        let config = crate::tls::server_config(self.table.clone())?;
        let addr = listener
            .local_addr()
            .map_err(|source| crate::Error::Listen {
                addr: ([0, 0, 0, 0], 0).into(),
                source,
            })?;
        self.serve(listener, Some(TlsAcceptor::from(config)))
            .await
            .map_err(|source| crate::Error::Listen { addr, source })
    }

    async fn serve(self, listener: TcpListener, tls: Option<TlsAcceptor>) -> std::io::Result<()> {
        let local = listener.local_addr()?;
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(conn) => conn,
                Err(err) => {
                    // Per-connection failures and EMFILE: back off a little, keep listening.
                    tracing::warn!(%err, "accept failed; continuing");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let is_tls = tls.is_some();
                let service = hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { proxy.handle(req, remote, local, is_tls).await }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let result = match tls {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                        Err(err) => {
                            tracing::debug!(%remote, %err, "TLS handshake failed");
                            return;
                        }
                    },
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
                if let Err(err) = result {
                    tracing::debug!(%remote, %err, "connection ended with an error");
                }
            });
        }
    }
}

/// The request's host: the `Host` header, else the URI's authority (HTTP/2).
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// `host:port` or `[v6]:port` to the host alone.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

fn local_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_without_ports() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "::1");
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get(header::CONNECTION).is_none());
        assert!(h.get("x-kept").is_some());
    }
}
