//! The filter in front of every request, in kube-apiserver's order: in-flight limits (429),
//! authentication (401), authorization (403), then the access reviews (answered here) and
//! NodeRestriction's check of the name a node creates; what passes reaches the handlers
//! with its [`UserInfo`] as a request extension. `/apis` gets the review groups added.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, StatusCode, header};
use serde_json::Value;

use crate::auth::{Authenticator, Outcome, UserInfo};
use crate::authz::{Attributes, Authorizer, Decision, GroupPolicy, NodeAuthorizer, Union};
use crate::error::Error;
use crate::limits::{InFlight, Limits};
use crate::registry::Registry;
use crate::reviews;
use crate::server::MAX_BODY;

/// The security configuration of an [`ApiServer`](crate::ApiServer).
pub(crate) struct Security {
    /// None: every request is [`UserInfo::unsecured_admin`] (the in-process server).
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    /// Consulted after the built-in policies.
    pub(crate) extra: Vec<Arc<dyn Authorizer>>,
    pub(crate) limits: Limits,
    /// Built from the above.
    authorizer: Union,
    in_flight: InFlight,
}

impl Security {
    pub(crate) fn new(
        registry: &Arc<Registry>,
        authenticator: Option<Arc<dyn Authenticator>>,
        extra: Vec<Arc<dyn Authorizer>>,
        limits: Limits,
    ) -> Self {
        let kinds = registry.kinds();
        let resources: Vec<(&str, &str)> = kinds.iter().map(|k| (k.group, k.plural)).collect();
        let mut authorizer = Union::new()
            .with(GroupPolicy::cluster_admin())
            .with(NodeAuthorizer {
                registry: registry.clone(),
            })
            .with(GroupPolicy::read_only(&resources))
            .with(GroupPolicy::basic());
        for a in &extra {
            authorizer = authorizer.with_arc(a.clone());
        }
        Security {
            authenticator,
            extra,
            limits,
            authorizer,
            in_flight: InFlight::new(limits),
        }
    }

    /// The server's authorizer (built-ins, then the extra ones).
    pub(crate) fn authorizer(&self) -> &Union {
        &self.authorizer
    }
}

/// Paths anonymous requests may read (Kubernetes' `system:public-info-viewer`).
fn public(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "/healthz" | "/livez" | "/readyz" | "/version"
    ) || ["/healthz/", "/livez/", "/readyz/"]
        .iter()
        .any(|p| path.starts_with(p))
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// Reads a body up to [`MAX_BODY`]: 413 when the length says more, or once more arrives.
async fn read_limited(parts: &http::request::Parts, body: Body) -> Result<Bytes, Error> {
    if parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY)
    {
        return Err(Error::TooLarge { limit: MAX_BODY });
    }
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| Error::TooLarge { limit: MAX_BODY })
}

fn parse_object(parts: &http::request::Parts, body: &[u8]) -> Result<Value, Error> {
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let v: Value = if ct.contains("protobuf") {
        reviews::decode_protobuf(body)?
    } else if ct.contains("yaml") {
        serde_yaml_ng::from_slice(body).map_err(|e| {
            Error::BadRequest(format!("the body of the request is not valid YAML: {e}"))
        })?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            Error::BadRequest(format!("the body of the request is not valid JSON: {e}"))
        })?
    };
    if !v.is_object() {
        return Err(Error::BadRequest(
            "the body of the request must be an object".into(),
        ));
    }
    Ok(v)
}

/// The axum middleware.
pub(crate) async fn filter(State(sec): State<Arc<Security>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let _permit = match sec.in_flight.admit(&method, &path, &query) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let (mut parts, body) = req.into_parts();
    let user = match &sec.authenticator {
        None => UserInfo::unsecured_admin(),
        Some(a) => match a.authenticate(&parts) {
            Outcome::User(u) => u,
            Outcome::NoCredentials if public(&path) => UserInfo::anonymous(),
            Outcome::NoCredentials | Outcome::Rejected(_) => {
                return Error::Unauthorized.into_response();
            }
        },
    };
    if user.name != crate::auth::ANONYMOUS {
        let attrs = Attributes::from_request(user.clone(), &method, &path, &query);
        match sec.authorizer.authorize(&attrs).await {
            Decision::Allow => {}
            Decision::Deny(reason) => {
                return json_response(StatusCode::FORBIDDEN, &attrs.forbidden_status(&reason));
            }
            Decision::NoOpinion => {
                return json_response(StatusCode::FORBIDDEN, &attrs.forbidden_status(""));
            }
        }
        if reviews::is_review_path(&path) {
            if method == Method::GET
                && let Some(doc) = reviews::discovery(&path)
            {
                return json_response(StatusCode::OK, &doc);
            }
            let result = async {
                let bytes = read_limited(&parts, body).await?;
                let obj = parse_object(&parts, &bytes)?;
                reviews::handle(&sec.authorizer, &user, &method, &path, &obj).await
            }
            .await;
            return result.unwrap_or_else(IntoResponse::into_response);
        }
        // NodeRestriction: the Node or Lease a node creates carries its own name.
        if let Some(node) = crate::authz::node_name(&user)
            && attrs.verb == "create"
            && attrs.subresource.is_empty()
            && matches!(
                (attrs.api_group.as_str(), attrs.resource.as_str()),
                ("", "nodes") | ("coordination.k8s.io", "leases")
            )
        {
            let bytes = match read_limited(&parts, body).await {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            };
            let name = parse_object(&parts, &bytes).ok().and_then(|o| {
                o.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            if name.as_deref() != Some(node) {
                let mut a = attrs.clone();
                a.name = name.unwrap_or_default();
                let what = if a.resource == "nodes" {
                    "node"
                } else {
                    "lease"
                };
                return json_response(
                    StatusCode::FORBIDDEN,
                    &a.forbidden_status(&format!(
                        "node {node:?} is not allowed to create {what} {:?}",
                        a.name
                    )),
                );
            }
            parts.extensions.insert(user);
            let resp = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            return resp;
        }
    }
    parts.extensions.insert(user);
    let resp = next.run(Request::from_parts(parts, body)).await;
    if method == Method::GET && path.trim_end_matches('/') == "/apis" && resp.status().is_success()
    {
        return amend_apis(resp).await;
    }
    resp
}

/// Adds the review groups to the `/apis` document.
async fn amend_apis(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 * MAX_BODY).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    reviews::amend_apis(&mut doc);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(
        parts,
        Body::from(serde_json::to_vec(&doc).unwrap_or_default()),
    )
}
