//! The distribution spec's JSON error bodies (`{"errors":[{"code":…}]}`) and the status code each
//! error is answered with.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::Error;

/// An error response of the registry API.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// Extra headers (boxed: most errors have none).
    pub(crate) headers: Option<Box<HeaderMap>>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: None,
        }
    }

    pub(crate) fn header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.get_or_insert_default().insert(name, v);
        }
        self
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            Error::InvalidName(_) => (S::BAD_REQUEST, "NAME_INVALID"),
            Error::InvalidTag(_) => (S::BAD_REQUEST, "TAG_INVALID"),
            Error::Digest(_) | Error::DigestMismatch { .. } => (S::BAD_REQUEST, "DIGEST_INVALID"),
            Error::SizeMismatch { .. } => (S::BAD_REQUEST, "SIZE_INVALID"),
            Error::BlobUnknown { .. } => (S::NOT_FOUND, "BLOB_UNKNOWN"),
            Error::ManifestUnknown { .. } => (S::NOT_FOUND, "MANIFEST_UNKNOWN"),
            Error::ManifestBlobUnknown { .. } => (S::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            Error::ManifestInvalid(_) => (S::BAD_REQUEST, "MANIFEST_INVALID"),
            Error::ManifestTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            Error::NameUnknown(_) => (S::NOT_FOUND, "NAME_UNKNOWN"),
            Error::UploadUnknown(_) => (S::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            Error::RangeInvalid { .. } => (S::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            Error::Stream(e) if super::conn::is_body_timeout(e) => {
                (S::REQUEST_TIMEOUT, "BLOB_UPLOAD_INVALID")
            }
            Error::BadRequest(_) | Error::Stream(_) => (S::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            _ => {
                tracing::error!(error = %DisplayChain(&e), "registry request failed");
                (S::INTERNAL_SERVER_ERROR, "UNKNOWN")
            }
        };
        ApiError::new(status, code, DisplayChain(&e).to_string())
    }
}

/// Displays an error with its sources, `a: b: c`.
pub(crate) use berth_api::ErrorChain as DisplayChain;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": null }]
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(headers) = self.headers {
            response.headers_mut().extend(*headers);
        }
        response
    }
}
