//! Request handling: routing `/v2/<name>/…` paths (names contain `/`, so routes are matched from
//! the end of the path), authorisation, and one function per endpoint.

mod blobs;
mod manifests;
mod token;
mod uploads;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_api::Digest;
use futures_util::TryStreamExt;

use super::ServerConfig;
use super::api_error::ApiError;
use super::socket::{BODY_LOW_WATER, ConnectionSocket, LowWaterBody};
use crate::Error;
use crate::auth::{TokenIssuer, parse_basic};
use crate::name::{ManifestRef, RepositoryName};
use crate::storage::{ByteStream, Storage};

use blobs::get_blob;
#[cfg(test)]
use blobs::{RangeRequest, parse_range};
use manifests::{get_manifest, put_manifest, referrers};
pub(crate) use token::token;
use uploads::{finish_upload, patch_upload, start_upload, upload_response};

pub(crate) struct AppState {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) config: ServerConfig,
}

type ApiResult = std::result::Result<Response, ApiError>;

/// What a `/v2/…` path addresses.
#[derive(Debug)]
enum Route {
    Catalog,
    Tags(String),
    Manifest(String, String),
    Blob(String, String),
    UploadStart(String),
    Upload(String, String),
    Referrers(String, String),
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2/")?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let name = |k: usize| segments[..n - k].join("/");
    let last = |k: usize| percent_decode(segments[n - k]);
    if n >= 4 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads" {
        return Some(if segments[n - 1].is_empty() {
            Route::UploadStart(name(3))
        } else {
            Route::Upload(name(3), last(1))
        });
    }
    if n < 3 {
        return None;
    }
    match (segments[n - 2], segments[n - 1]) {
        ("blobs", "uploads") => Some(Route::UploadStart(name(2))),
        ("tags", "list") => Some(Route::Tags(name(2))),
        ("blobs", _) => Some(Route::Blob(name(2), last(1))),
        ("manifests", _) => Some(Route::Manifest(name(2), last(1))),
        ("referrers", _) => Some(Route::Referrers(name(2), last(1))),
        _ => None,
    }
}

fn query_pairs(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn query<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's body as a stream; a body of known length on a plain HTTP/1 connection wakes
/// the server in large steps (see [`super::socket`]).
fn body_stream(req: Request) -> ByteStream {
    let socket = req.extensions().get::<ConnectionSocket>().cloned();
    let http1 = req.version() <= axum::http::Version::HTTP_11;
    let length = header_str(req.headers(), header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| !req.headers().contains_key(header::TRANSFER_ENCODING));
    let body = TryStreamExt::map_err(req.into_body().into_data_stream(), std::io::Error::other);
    match (socket, length) {
        (Some(socket), Some(length)) if http1 && length > BODY_LOW_WATER => {
            Box::pin(LowWaterBody::new(body, socket, length))
        }
        _ => Box::pin(body),
    }
}

fn response(status: StatusCode, headers: &[(&str, String)], body: Body) -> Response {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    builder.body(body).expect("valid response headers")
}

fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

// ---------------------------------------------------------------------------------------------
// Authorisation

enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    fn as_str(&self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// What a request must be allowed: an action on a repository, the catalog, or just `/v2/`.
enum Need<'a> {
    Base,
    Catalog,
    Repo(&'a str, Action),
}

fn challenge(state: &AppState, headers: &HeaderMap, need: &Need<'_>) -> ApiError {
    let auth = state
        .config
        .auth
        .as_ref()
        .expect("challenge only with auth");
    let value = if auth.tokens.is_some() {
        let host = header_str(headers, header::HOST).unwrap_or("localhost");
        let scheme = if state.config.tls { "https" } else { "http" };
        let mut v = format!(
            r#"Bearer realm="{scheme}://{host}/token",service="{}""#,
            state.config.service
        );
        match need {
            Need::Repo(name, action) => v.push_str(&format!(
                r#",scope="repository:{name}:{}""#,
                action.as_str()
            )),
            Need::Catalog => v.push_str(r#",scope="registry:catalog:*""#),
            Need::Base => {}
        }
        v
    } else {
        format!(r#"Basic realm="{}""#, state.config.service)
    };
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    )
    .header(header::WWW_AUTHENTICATE, &value)
}

fn authorize(state: &AppState, headers: &HeaderMap, need: Need<'_>) -> Result<(), ApiError> {
    let Some(auth) = &state.config.auth else {
        return Ok(());
    };
    let credentials = header_str(headers, header::AUTHORIZATION);
    if let Some((user, password)) = credentials.and_then(parse_basic) {
        if auth.htpasswd.verify(&user, &password) {
            return Ok(());
        }
        return Err(challenge(state, headers, &need));
    }
    if let (Some(tokens), Some(token)) = (
        &auth.tokens,
        credentials.and_then(|c| c.strip_prefix("Bearer ")),
    ) {
        if let Some(access) = tokens.verify(token.trim()) {
            let allowed = match &need {
                Need::Base => true,
                Need::Catalog => TokenIssuer::allows(&access, "registry", "catalog", "*"),
                Need::Repo(name, action) => {
                    TokenIssuer::allows(&access, "repository", name, action.as_str())
                }
            };
            if allowed {
                return Ok(());
            }
        }
        return Err(challenge(state, headers, &need));
    }
    let anonymous_ok =
        auth.anonymous_pull && matches!(need, Need::Base | Need::Repo(_, Action::Pull));
    if anonymous_ok {
        Ok(())
    } else {
        Err(challenge(state, headers, &need))
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoints

/// `GET /v2/`: API version check (and the first auth challenge).
pub(crate) async fn base(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match authorize(&state, &headers, Need::Base) {
        Ok(()) => axum::Json(serde_json::json!({})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Every `/v2/<name>/…` endpoint.
pub(crate) async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match handle(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn repo(name: &str) -> Result<RepositoryName, ApiError> {
    RepositoryName::new(name).map_err(ApiError::from)
}

fn digest(s: &str) -> Result<Digest, ApiError> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::from(Error::from(e)))
}

async fn handle(state: &AppState, req: Request) -> ApiResult {
    let Some(route) = parse_route(req.uri().path()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "no such endpoint",
        ));
    };
    let method = req.method().clone();
    let action = match method {
        Method::GET | Method::HEAD => Action::Pull,
        Method::DELETE => Action::Delete,
        _ => Action::Push,
    };
    let name = match &route {
        Route::Catalog => None,
        Route::Tags(n)
        | Route::Manifest(n, _)
        | Route::Blob(n, _)
        | Route::UploadStart(n)
        | Route::Upload(n, _)
        | Route::Referrers(n, _) => Some(repo(n)?),
    };
    let need = match &name {
        None => Need::Catalog,
        Some(n) => Need::Repo(n.as_str(), action),
    };
    authorize(state, req.headers(), need)?;
    let storage = state.storage.as_ref();
    match (route, method, name) {
        (Route::Catalog, Method::GET | Method::HEAD, _) => {
            catalog(storage, query_pairs(&req)).await
        }
        (Route::Tags(_), Method::GET | Method::HEAD, Some(n)) => {
            tags(storage, &n, query_pairs(&req)).await
        }
        (Route::Manifest(_, r), Method::GET | Method::HEAD, Some(n)) => {
            get_manifest(storage, &n, &r, req).await
        }
        (Route::Manifest(_, r), Method::PUT, Some(n)) => {
            put_manifest(storage, &state.config, &n, &r, req).await
        }
        (Route::Manifest(_, r), Method::DELETE, Some(n)) => {
            storage
                .delete_manifest(&n, &ManifestRef::parse(&r)?)
                .await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Route::Blob(_, d), Method::GET | Method::HEAD, Some(n)) => {
            get_blob(storage, &n, &digest(&d)?, req).await
        }
        (Route::Blob(_, d), Method::DELETE, Some(n)) => {
            storage.delete_blob(&n, &digest(&d)?).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Route::UploadStart(_), Method::POST, Some(n)) => start_upload(state, &n, req).await,
        (Route::Upload(_, id), Method::GET | Method::HEAD, Some(n)) => {
            let size = storage.upload_size(&n, &id).await?;
            Ok(upload_response(StatusCode::NO_CONTENT, &n, &id, size))
        }
        (Route::Upload(_, id), Method::PATCH, Some(n)) => patch_upload(storage, &n, &id, req).await,
        (Route::Upload(_, id), Method::PUT, Some(n)) => finish_upload(storage, &n, &id, req).await,
        (Route::Upload(_, id), Method::DELETE, Some(n)) => {
            storage.cancel_upload(&n, &id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Route::Referrers(_, d), Method::GET | Method::HEAD, Some(n)) => {
            referrers(storage, &n, &digest(&d)?, query_pairs(&req)).await
        }
        (_, method, _) => Err(ApiError::unsupported(format!(
            "{method} is not supported here"
        ))),
    }
}

/// Pagination by `n` and `last`: the page, and whether more follow.
fn paginate(
    all: Vec<String>,
    pairs: &[(String, String)],
) -> Result<(Vec<String>, Option<usize>), ApiError> {
    let n = match query(pairs, "n") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                "bad n",
            )
        })?),
        None => None,
    };
    let last = query(pairs, "last");
    let mut items: Vec<String> = all
        .into_iter()
        .filter(|t| last.is_none_or(|l| t.as_str() > l))
        .collect();
    let more = match n {
        Some(n) if items.len() > n => {
            items.truncate(n);
            Some(n)
        }
        _ => None,
    };
    Ok((items, more))
}

fn link_next(path: &str, n: usize, last: &str) -> String {
    let last: String = url::form_urlencoded::byte_serialize(last.as_bytes()).collect();
    format!(r#"<{path}?n={n}&last={last}>; rel="next""#)
}

async fn catalog(storage: &dyn Storage, pairs: Vec<(String, String)>) -> ApiResult {
    let (repos, more) = paginate(storage.repositories().await?, &pairs)?;
    let mut response = axum::Json(serde_json::json!({ "repositories": repos })).into_response();
    if let (Some(n), Some(last)) = (more, repos.last()) {
        response.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link_next("/v2/_catalog", n, last)).expect("valid link"),
        );
    }
    Ok(response)
}

async fn tags(
    storage: &dyn Storage,
    name: &RepositoryName,
    pairs: Vec<(String, String)>,
) -> ApiResult {
    let (tags, more) = paginate(storage.tags(name).await?, &pairs)?;
    let mut response =
        axum::Json(serde_json::json!({ "name": name.as_str(), "tags": tags })).into_response();
    if let (Some(n), Some(last)) = (more, tags.last()) {
        let path = format!("/v2/{name}/tags/list");
        response.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link_next(&path, n, last)).expect("valid link"),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_from_the_end() {
        assert!(matches!(parse_route("/v2/_catalog"), Some(Route::Catalog)));
        assert!(matches!(parse_route("/v2/a/b/tags/list"), Some(Route::Tags(n)) if n == "a/b"));
        assert!(
            matches!(parse_route("/v2/a/blobs/uploads/"), Some(Route::UploadStart(n)) if n == "a")
        );
        assert!(
            matches!(parse_route("/v2/a/blobs/uploads/x"), Some(Route::Upload(n, id)) if n == "a" && id == "x")
        );
        assert!(
            matches!(parse_route("/v2/blobs/blobs/sha256%3Aab"), Some(Route::Blob(n, d)) if n == "blobs" && d == "sha256:ab")
        );
        assert!(
            matches!(parse_route("/v2/x/manifests/latest"), Some(Route::Manifest(n, r)) if n == "x" && r == "latest")
        );
        assert!(parse_route("/v2/x").is_none());
    }

    #[test]
    fn ranges() {
        assert!(matches!(parse_range(None, 10), RangeRequest::Full));
        assert!(matches!(
            parse_range(Some("bytes=0-3"), 10),
            RangeRequest::Partial(0, 3)
        ));
        assert!(matches!(
            parse_range(Some("bytes=5-"), 10),
            RangeRequest::Partial(5, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=-3"), 10),
            RangeRequest::Partial(7, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=8-100"), 10),
            RangeRequest::Partial(8, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=10-"), 10),
            RangeRequest::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(Some("bytes=-0"), 10),
            RangeRequest::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(Some("bytes=0-0"), 0),
            RangeRequest::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(Some("bytes=5-2"), 10),
            RangeRequest::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(Some("bytes=500-0"), 2048),
            RangeRequest::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(Some("bytes=5000-10000"), 2048),
            RangeRequest::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(Some("bytes=x-3"), 10),
            RangeRequest::Full
        ));
    }
}
