//! Request handling: routing `/v2/<name>/…` paths (names contain `/`, so routes are matched from
//! the end of the path), authorisation, and one function per endpoint.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_api::Digest;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;

use super::api_error::ApiError;
use super::socket::{BODY_LOW_WATER, ConnectionSocket, LowWaterBody};
use super::{AuthConfig, ServerConfig};
use crate::Error;
use crate::auth::{Access, TokenIssuer, parse_basic};
use crate::manifest::OCI_INDEX;
use crate::name::{ManifestRef, RepositoryName};
use crate::storage::{ByteStream, Storage};

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

/// The token endpoint of the bearer flow: `GET /token?service=…&scope=…` with Basic
/// credentials (the Docker token protocol), or `POST /token` with an OAuth2 form
/// (`grant_type=password` or `grant_type=refresh_token`, as docker and containerd send).
pub(crate) async fn token(State(state): State<Arc<AppState>>, req: Request) -> Response {
    token_response(&state, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Largest OAuth2 form accepted by the token endpoint.
const MAX_TOKEN_FORM: usize = 64 << 10;

fn unauthorized(state: &AppState, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message).header(
        header::WWW_AUTHENTICATE,
        &format!(r#"Basic realm="{}""#, state.config.service),
    )
}

/// Who asks for a token, and for what.
struct TokenRequest {
    /// The authenticated user; `None` for an anonymous client.
    user: Option<String>,
    /// Requested scopes (`repository:name:actions`).
    scopes: Vec<String>,
    /// Whether to add a refresh token (`offline_token=true`, `access_type=offline`).
    offline: bool,
    /// An OAuth2 (POST) request: the answer carries `token_type` and `scope`.
    oauth: bool,
}

fn scopes_of(pairs: &[(String, String)]) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn token_request(
    state: &AppState,
    auth: &AuthConfig,
    req: Request,
) -> Result<TokenRequest, ApiError> {
    let tokens = auth.tokens.as_ref().expect("token service is on");
    if req.method() == Method::GET {
        let pairs = query_pairs(&req);
        let user = match header_str(req.headers(), header::AUTHORIZATION).and_then(parse_basic) {
            Some((user, password)) if auth.htpasswd.verify(&user, &password) => Some(user),
            Some(_) => return Err(unauthorized(state, "invalid credentials")),
            None if auth.anonymous_pull => None,
            None => return Err(unauthorized(state, "credentials required")),
        };
        return Ok(TokenRequest {
            user,
            scopes: scopes_of(&pairs),
            offline: query(&pairs, "offline_token") == Some("true"),
            oauth: false,
        });
    }
    if req.method() != Method::POST {
        return Err(ApiError::unsupported(format!(
            "{} is not supported by the token endpoint",
            req.method()
        )));
    }
    let body = http_body_util::Limited::new(req.into_body(), MAX_TOKEN_FORM)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
                format!("token request body: {e}"),
            )
        })?
        .to_bytes();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let user = match query(&form, "grant_type") {
        Some("password") => {
            let (user, password) = (query(&form, "username"), query(&form, "password"));
            match (user, password) {
                (Some(u), Some(p)) if auth.htpasswd.verify(u, p) => u.to_owned(),
                _ => return Err(unauthorized(state, "invalid credentials")),
            }
        }
        Some("refresh_token") => {
            match query(&form, "refresh_token").and_then(|t| tokens.verify_refresh(t)) {
                // A user removed from the htpasswd file loses their refresh tokens too.
                Some(user) if auth.htpasswd.contains(&user) => user,
                _ => return Err(unauthorized(state, "invalid or expired refresh token")),
            }
        }
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
                format!("unsupported grant_type {other:?} (password or refresh_token)"),
            ));
        }
    };
    Ok(TokenRequest {
        user: Some(user),
        scopes: scopes_of(&form),
        offline: query(&form, "access_type") == Some("offline"),
        oauth: true,
    })
}

async fn token_response(state: &AppState, req: Request) -> ApiResult {
    let auth = state
        .config
        .auth
        .as_ref()
        .filter(|a| a.tokens.is_some())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "UNSUPPORTED", "no token service"))?;
    let tokens = auth.tokens.as_ref().expect("filtered above");
    let request = token_request(state, auth, req).await?;
    let mut granted = Vec::new();
    for scope in &request.scopes {
        let Some(mut access) = Access::parse_scope(scope) else {
            continue;
        };
        access
            .actions
            .retain(|a| match (&request.user, a.as_str()) {
                (Some(_), "pull" | "push" | "delete" | "*") => true,
                (None, "pull") => access.kind == "repository",
                _ => false,
            });
        if !access.actions.is_empty() {
            granted.push(access);
        }
    }
    let scope = granted
        .iter()
        .map(Access::scope)
        .collect::<Vec<_>>()
        .join(" ");
    let subject = request.user.as_deref().unwrap_or("anonymous");
    let token = tokens.issue(subject, granted);
    let mut body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": tokens.lifetime().as_secs(),
        "issued_at": chrono::Utc::now().to_rfc3339(),
    });
    if request.oauth {
        body["token_type"] = "Bearer".into();
        body["scope"] = scope.into();
    }
    if let (true, Some(user)) = (request.offline, &request.user) {
        body["refresh_token"] = tokens.issue_refresh(user).into();
    }
    Ok(axum::Json(body).into_response())
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

/// True when an `Accept` header (possibly several) admits `media_type`.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let item = item.split(';').next().unwrap_or("").trim();
            if item.is_empty() {
                continue;
            }
            any = true;
            if item == media_type || item == "*/*" || item == "application/*" {
                return true;
            }
        }
    }
    !any
}

async fn get_manifest(
    storage: &dyn Storage,
    name: &RepositoryName,
    reference: &str,
    req: Request,
) -> ApiResult {
    let reference = ManifestRef::parse(reference)?;
    let stored = storage.get_manifest(name, &reference).await?;
    if matches!(reference, ManifestRef::Tag(_)) && !accepts(req.headers(), &stored.media_type) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!(
                "manifest is {}, which the Accept header does not admit",
                stored.media_type
            ),
        ));
    }
    let headers = [
        ("content-type", stored.media_type.clone()),
        ("content-length", stored.bytes.len().to_string()),
        ("docker-content-digest", stored.digest.to_string()),
        ("etag", format!("\"{}\"", stored.digest)),
    ];
    let body = if req.method() == Method::HEAD {
        Body::empty()
    } else {
        Body::from(stored.bytes)
    };
    Ok(response(StatusCode::OK, &headers, body))
}

async fn put_manifest(
    storage: &dyn Storage,
    config: &ServerConfig,
    name: &RepositoryName,
    reference: &str,
    req: Request,
) -> ApiResult {
    let mut reference = ManifestRef::parse(reference)?;
    // Tags by query parameter (`?tag=a&tag=b`), answered with `OCI-Tag`.
    let pairs = query_pairs(&req);
    let mut tags: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
    let param_tags = tags.len();
    // A push by tag may name the digest (and so its algorithm) the client computed.
    if let (ManifestRef::Tag(tag), Some(d)) = (&reference, query(&pairs, "digest")) {
        tags.push(tag.clone());
        reference = ManifestRef::Digest(digest(d)?);
    }
    let limit = config.max_manifest_size;
    let content_type = header_str(req.headers(), header::CONTENT_TYPE).map(str::to_owned);
    let declared =
        header_str(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&s| s > limit) {
        return Err(Error::ManifestTooLarge { size, limit }.into());
    }
    let body = http_body_util::Limited::new(req.into_body(), limit as usize)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::from(Error::ManifestTooLarge {
                    size: limit + 1,
                    limit,
                })
            } else if super::conn::is_body_timeout(&*e) {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "MANIFEST_INVALID",
                    e.to_string(),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string())
            }
        })?
        .to_bytes();
    let put = storage
        .put_manifest(name, &reference, content_type.as_deref(), body, &tags)
        .await?;
    let mut headers = vec![
        ("location", format!("/v2/{name}/manifests/{}", put.digest)),
        ("docker-content-digest", put.digest.to_string()),
        ("content-length", "0".to_owned()),
    ];
    if let Some(subject) = put.subject {
        headers.push(("oci-subject", subject.to_string()));
    }
    for tag in &tags[..param_tags] {
        headers.push(("oci-tag", tag.clone()));
    }
    Ok(response(StatusCode::CREATED, &headers, Body::empty()))
}

/// A parsed `Range: bytes=…` request against a blob of `size` bytes.
enum RangeRequest {
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        // Multiple ranges: serving the whole blob is allowed (RFC 9110 §14.2).
        return RangeRequest::Full;
    }
    let Some((start, end)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        // Suffix range: the last `end` bytes.
        match end.parse::<u64>() {
            Ok(0) | Err(_) => return RangeRequest::Unsatisfiable,
            Ok(n) => (size.saturating_sub(n), size.saturating_sub(1)),
        }
    } else {
        let Ok(start) = start.parse::<u64>() else {
            return RangeRequest::Full;
        };
        let end = if end.is_empty() {
            size.saturating_sub(1)
        } else {
            match end.parse::<u64>() {
                Ok(e) if e >= start => e.min(size.saturating_sub(1)),
                // `bytes=500-0`: a range that ends before it starts matches nothing (the
                // distribution spec's conformance suite expects 416, not the whole blob).
                Ok(_) => return RangeRequest::Unsatisfiable,
                Err(_) => return RangeRequest::Full,
            }
        };
        (start, end)
    };
    if size == 0 || range.0 >= size {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Partial(range.0, range.1)
    }
}

async fn get_blob(
    storage: &dyn Storage,
    name: &RepositoryName,
    digest: &Digest,
    req: Request,
) -> ApiResult {
    let size = storage.blob_size(name, digest).await?;
    let range = parse_range(header_str(req.headers(), header::RANGE), size);
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        RangeRequest::Unsatisfiable => {
            return Ok(response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &[("content-range", format!("bytes */{size}"))],
                Body::empty(),
            ));
        }
    };
    let mut headers = vec![
        ("content-type", "application/octet-stream".to_owned()),
        ("content-length", len.to_string()),
        ("docker-content-digest", digest.to_string()),
        ("accept-ranges", "bytes".to_owned()),
        ("etag", format!("\"{digest}\"")),
    ];
    if status == StatusCode::PARTIAL_CONTENT {
        headers.push((
            "content-range",
            format!("bytes {start}-{}/{size}", start + len - 1),
        ));
    }
    if req.method() == Method::HEAD {
        return Ok(response(status, &headers, Body::empty()));
    }
    let blob = storage.read_blob(name, digest, start, len).await?;
    Ok(response(status, &headers, Body::from_stream(blob.body)))
}

fn upload_response(status: StatusCode, name: &RepositoryName, id: &str, size: u64) -> Response {
    response(
        status,
        &[
            ("location", format!("/v2/{name}/blobs/uploads/{id}")),
            ("range", range_header(size)),
            ("docker-upload-uuid", id.to_owned()),
            ("content-length", "0".to_owned()),
        ],
        Body::empty(),
    )
}

fn blob_created(name: &RepositoryName, digest: &Digest) -> Response {
    response(
        StatusCode::CREATED,
        &[
            ("location", format!("/v2/{name}/blobs/{digest}")),
            ("docker-content-digest", digest.to_string()),
            ("content-length", "0".to_owned()),
        ],
        Body::empty(),
    )
}

async fn start_upload(state: &AppState, name: &RepositoryName, req: Request) -> ApiResult {
    let storage = state.storage.as_ref();
    let pairs = query_pairs(&req);
    if let Some(mount) = query(&pairs, "mount") {
        let mount = digest(mount)?;
        // Not the request itself: its body is not `Sync`, and this is held across awaits.
        let headers = req.headers().clone();
        let may_pull = |from: &RepositoryName| {
            authorize(state, &headers, Need::Repo(from.as_str(), Action::Pull)).is_ok()
        };
        let sources = match query(&pairs, "from") {
            Some(from) => vec![repo(from)?],
            // No source named: any repository holding the blob that the caller may read
            // (automatic content discovery).
            None => storage
                .repositories_with_blob(&mount, MOUNT_CANDIDATES)
                .await?
                .into_iter()
                .filter(|r| r != name)
                .collect(),
        };
        for from in sources.iter().filter(|r| may_pull(r)) {
            if storage.mount_blob(from, name, &mount).await?.is_some() {
                return Ok(blob_created(name, &mount));
            }
        }
    } else if let Some(d) = query(&pairs, "digest") {
        let d = digest(d)?;
        storage.put_blob(name, &d, body_stream(req)).await?;
        return Ok(blob_created(name, &d));
    }
    let id = storage.start_upload(name).await?;
    Ok(upload_response(StatusCode::ACCEPTED, name, &id, 0))
}

/// Repositories considered for a mount that names no source.
const MOUNT_CANDIDATES: usize = 64;

/// Parses `Content-Range: <start>-<end>` (also `bytes <start>-<end>/<total>`).
fn parse_content_range(value: &str) -> Result<(u64, u64), ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            format!("bad Content-Range {value:?}"),
        )
    };
    let v = value.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let v = v.split('/').next().unwrap_or(v);
    let (start, end) = v.split_once('-').ok_or_else(bad)?;
    let start = start.trim().parse::<u64>().map_err(|_| bad())?;
    let end = end.trim().parse::<u64>().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok((start, end))
}

async fn write_chunk(
    storage: &dyn Storage,
    name: &RepositoryName,
    id: &str,
    req: Request,
) -> Result<u64, ApiError> {
    let range = header_str(req.headers(), header::CONTENT_RANGE)
        .map(parse_content_range)
        .transpose()?;
    let (offset, expected) = match range {
        Some((start, end)) => (Some(start), Some(end - start + 1)),
        None => (None, None),
    };
    match storage
        .write_upload(name, id, offset, expected, body_stream(req))
        .await
    {
        Ok(size) => Ok(size),
        Err(Error::RangeInvalid { expected, got }) => Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            format!("chunk starts at {got}, but the upload holds {expected} bytes"),
        )
        .header(header::RANGE, &range_header(expected))
        .header(header::LOCATION, &format!("/v2/{name}/blobs/uploads/{id}"))),
        Err(e) => Err(e.into()),
    }
}

async fn patch_upload(
    storage: &dyn Storage,
    name: &RepositoryName,
    id: &str,
    req: Request,
) -> ApiResult {
    let size = write_chunk(storage, name, id, req).await?;
    Ok(upload_response(StatusCode::ACCEPTED, name, id, size))
}

async fn finish_upload(
    storage: &dyn Storage,
    name: &RepositoryName,
    id: &str,
    req: Request,
) -> ApiResult {
    let pairs = query_pairs(&req);
    let Some(d) = query(&pairs, "digest") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "the digest query parameter is required",
        ));
    };
    let d = digest(d)?;
    let has_body = header_str(req.headers(), header::CONTENT_LENGTH).is_some_and(|l| l != "0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        write_chunk(storage, name, id, req).await?;
    }
    storage.finish_upload(name, id, &d).await?;
    Ok(blob_created(name, &d))
}

async fn referrers(
    storage: &dyn Storage,
    name: &RepositoryName,
    subject: &Digest,
    pairs: Vec<(String, String)>,
) -> ApiResult {
    let mut found = match storage.referrers(name, subject).await {
        Ok(found) => found,
        Err(Error::NameUnknown(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let filter = query(&pairs, "artifactType");
    if let Some(filter) = filter {
        found.retain(|d| d.artifact_type.as_deref() == Some(filter));
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": found,
    }))
    .expect("index serialises");
    let mut headers = vec![("content-type", OCI_INDEX.to_owned())];
    if filter.is_some() {
        headers.push(("oci-filters-applied", "artifactType".to_owned()));
    }
    Ok(response(
        StatusCode::OK,
        &headers,
        Body::from(Bytes::from(body)),
    ))
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
