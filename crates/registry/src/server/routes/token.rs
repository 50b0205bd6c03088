//! The token endpoint of the bearer flow (Docker's token protocol with Basic credentials, or an
//! OAuth2 password / refresh-token form): scopes checked against the access rules, a signed
//! token back.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::super::AuthConfig;
use super::super::api_error::ApiError;
use super::{ApiResult, AppState, header_str, query, query_pairs};
use crate::auth::{Access, parse_basic};

/// The token endpoint of the bearer flow: `GET /token?service=…&scope=…` with Basic
/// credentials (the Docker token protocol), or `POST /token` with an OAuth2 form
/// (`grant_type=password` or `grant_type=refresh_token`, as docker and containerd send).
pub(crate) async fn token(State(state): State<Arc<AppState>>, req: Request) -> Response {
    token_response(&state, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Largest OAuth2 form accepted by the token endpoint.
pub(super) const MAX_TOKEN_FORM: usize = 64 << 10;

pub(super) fn unauthorized(state: &AppState, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message).header(
        header::WWW_AUTHENTICATE,
        &format!(r#"Basic realm="{}""#, state.config.service),
    )
}

/// Who asks for a token, and for what.
pub(super) struct TokenRequest {
    /// The authenticated user; `None` for an anonymous client.
    user: Option<String>,
    /// Requested scopes (`repository:name:actions`).
    scopes: Vec<String>,
    /// Whether to add a refresh token (`offline_token=true`, `access_type=offline`).
    offline: bool,
    /// An OAuth2 (POST) request: the answer carries `token_type` and `scope`.
    oauth: bool,
}

pub(super) fn scopes_of(pairs: &[(String, String)]) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(super) async fn token_request(
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

pub(super) async fn token_response(state: &AppState, req: Request) -> ApiResult {
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
