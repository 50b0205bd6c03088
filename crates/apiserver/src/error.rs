//! Errors, each answered as a Kubernetes `metav1.Status` with the HTTP code and `reason` that
//! kube-apiserver gives for the same failure (clients branch on both: kube-rs on `code`,
//! kubectl on `reason`).

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

/// One invalid field of an `Invalid` error (`details.causes` of the Status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The field path, e.g. `spec.template.metadata.labels`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Cause {
    /// A cause for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object (or resource type) does not exist: 404 NotFound.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// The resource (plural, with group), e.g. `deployments.apps`.
        resource: String,
        /// The object's name.
        name: String,
    },
    /// The path names no resource this server serves: 404 NotFound.
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// Create of a name that exists: 409 AlreadyExists.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// The resource.
        resource: String,
        /// The object's name.
        name: String,
    },
    /// An update against a stale resourceVersion, or a binding to a bound pod: 409 Conflict.
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {message}")]
    Conflict {
        /// The resource.
        resource: String,
        /// The object's name.
        name: String,
        /// Why.
        message: String,
    },
    /// A server-side apply would change fields other managers own: 409 Conflict, one
    /// `FieldManagerConflict` cause per field.
    #[error("Apply failed with {} conflict{}: {}", causes.len(), if causes.len() == 1 { "" } else { "s" }, conflict_summary(causes))]
    ApplyConflict {
        /// `field` is the path (`.spec.replicas`), `message` names the manager.
        causes: Vec<Cause>,
    },
    /// An eviction would break a PodDisruptionBudget: 429 TooManyRequests with a
    /// `DisruptionBudget` cause.
    #[error("{message}")]
    Evict {
        /// What happened.
        message: String,
        /// The budget that refused (message only).
        causes: Vec<Cause>,
    },
    /// The object, once decoded, is larger than the store takes: 413 RequestEntityTooLarge.
    #[error("Request entity too large: the object is {size} bytes, the limit is {limit}")]
    ObjectTooLarge {
        /// The object's encoded size.
        size: usize,
        /// The limit ([`MAX_OBJECT`](crate::MAX_OBJECT)).
        limit: usize,
    },
    /// The object fails validation: 422 Invalid.
    #[error("{kind} \"{name}\" is invalid: {}", causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>().join(", "))]
    Invalid {
        /// The kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The invalid fields.
        causes: Vec<Cause>,
    },
    /// A malformed request (bad JSON, name mismatch, bad selector): 400 BadRequest.
    #[error("{0}")]
    BadRequest(String),
    /// The verb is not allowed on this resource: 405 MethodNotAllowed.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// A watch or continue token from a compacted revision: 410 Expired (Gone).
    #[error("{0}")]
    Gone(String),
    /// The request body is larger than the limit: 413 RequestEntityTooLarge.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A list at a resourceVersion the store has not reached: 504 Timeout ("Too large resource
    /// version").
    #[error("Too large resource version: {0}")]
    TooNew(String),
    /// A body in a media type this endpoint does not take: 415 UnsupportedMediaType.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// No or an unknown bearer token: 401 Unauthorized.
    #[error("Unauthorized")]
    Unauthorized,
    /// A node (kubelet endpoint) could not be reached: 503 ServiceUnavailable.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// The store failed: 500 InternalError.
    #[error("store failed: {0}")]
    Store(#[source] berth_api::store::Error),
    /// The durable store could not be opened (damaged log, held by another process).
    #[error("opening the store")]
    Open(#[source] berth_store::Error),
    /// Anything else that is the server's fault: 500 InternalError.
    #[error("{0}")]
    Internal(String),
}

/// `conflict with "m" using v1: .a` for one, a line per field otherwise (structured-merge-diff's
/// wording).
fn conflict_summary(causes: &[Cause]) -> String {
    match causes {
        [one] => format!("{}: {}", one.message, one.field),
        many => many
            .iter()
            .map(|c| format!("{}: {}", c.message, c.field))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// `Result` with [`apiserver::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status code.
    pub fn code(&self) -> StatusCode {
        match self {
            Error::NotFound { .. } | Error::NoRoute => StatusCode::NOT_FOUND,
            Error::AlreadyExists { .. } | Error::Conflict { .. } | Error::ApplyConflict { .. } => {
                StatusCode::CONFLICT
            }
            Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Gone(_) => StatusCode::GONE,
            Error::TooLarge { .. } | Error::ObjectTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Evict { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::TooNew(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Store(_) | Error::Open(_) | Error::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The Status `reason` (metav1.StatusReason).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotFound { .. } | Error::NoRoute => "NotFound",
            Error::AlreadyExists { .. } => "AlreadyExists",
            Error::Conflict { .. } | Error::ApplyConflict { .. } => "Conflict",
            Error::Invalid { .. } => "Invalid",
            Error::BadRequest(_) => "BadRequest",
            Error::MethodNotAllowed => "MethodNotAllowed",
            Error::Gone(_) => "Expired",
            Error::TooLarge { .. } | Error::ObjectTooLarge { .. } => "RequestEntityTooLarge",
            Error::Evict { .. } => "TooManyRequests",
            Error::ServiceUnavailable(_) => "ServiceUnavailable",
            Error::TooNew(_) => "Timeout",
            Error::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Error::Unauthorized => "Unauthorized",
            Error::Store(_) | Error::Open(_) | Error::Internal(_) => "InternalError",
        }
    }

    /// The error as a `metav1.Status` object.
    pub fn status(&self) -> Value {
        let mut message = self.to_string();
        if let Error::Store(source) = self {
            message = format!("{message}: {source}");
        }
        let details = match self {
            Error::NotFound { resource, name }
            | Error::AlreadyExists { resource, name }
            | Error::Conflict { resource, name, .. } => {
                let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
                Some(json!({"name": name, "group": group, "kind": kind}))
            }
            Error::Invalid { kind, name, causes } => Some(json!({
                "name": name,
                "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": "FieldValueInvalid", "message": c.message, "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            Error::Evict { causes, .. } => Some(json!({
                "causes": causes.iter().map(|c| json!({
                    "reason": "DisruptionBudget", "message": c.message,
                })).collect::<Vec<_>>(),
            })),
            Error::TooNew(_) => Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            })),
            Error::ApplyConflict { causes } => Some(json!({
                "causes": causes.iter().map(|c| json!({
                    "reason": "FieldManagerConflict", "message": c.message, "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            _ => None,
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

impl From<berth_api::store::Error> for Error {
    fn from(e: berth_api::store::Error) -> Self {
        Error::Store(e)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.code().is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        (
            self.code(),
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}
