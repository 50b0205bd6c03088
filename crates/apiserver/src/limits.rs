//! Request limits: kube-apiserver's `--max-requests-inflight` and
//! `--max-mutating-requests-inflight`. Read-only and mutating requests each have their own
//! pool; a request over its pool's limit is answered at once with 429 TooManyRequests and
//! `Retry-After: 1` (a Status, as Kubernetes sends). Long-running requests (watches) are
//! exempt: they hold a connection, not a worker. The request body limit
//! ([`MAX_BODY`](crate::MAX_BODY), 3 MiB, 413) is enforced where bodies are read.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// In-flight limits; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Read-only requests (get, list; not watch) served at once. Kubernetes' default: 400.
    pub max_read_only: usize,
    /// Mutating requests (create, update, patch, delete) served at once. Default: 200.
    pub max_mutating: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_read_only: 400,
            max_mutating: 200,
        }
    }
}

impl Limits {
    /// No limits (the in-process server's default).
    pub fn unlimited() -> Self {
        Limits {
            max_read_only: 0,
            max_mutating: 0,
        }
    }
}

/// The two pools.
#[derive(Debug)]
pub(crate) struct InFlight {
    read_only: Option<Arc<Semaphore>>,
    mutating: Option<Arc<Semaphore>>,
}

fn pool(n: usize) -> Option<Arc<Semaphore>> {
    (n > 0).then(|| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS))))
}

/// Whether a request is long-running: a watch (by query or the legacy `/watch/` path).
pub(crate) fn long_running(method: &Method, path: &str, query: &str) -> bool {
    method == Method::GET
        && (url::form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
            || path
                .split('/')
                .filter(|s| !s.is_empty())
                .nth(2)
                .is_some_and(|s| s == "watch")
            || path.starts_with("/apis/") && path.split('/').nth(4) == Some("watch"))
}

impl InFlight {
    pub(crate) fn new(limits: Limits) -> Self {
        InFlight {
            read_only: pool(limits.max_read_only),
            mutating: pool(limits.max_mutating),
        }
    }

    /// A permit for this request, `Ok(None)` if it needs none, or the 429 answer.
    pub(crate) fn admit(
        &self,
        method: &Method,
        path: &str,
        query: &str,
    ) -> Result<Option<OwnedSemaphorePermit>, TooManyRequests> {
        if long_running(method, path, query) {
            return Ok(None);
        }
        let mutating = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let pool = if mutating {
            &self.mutating
        } else {
            &self.read_only
        };
        let Some(pool) = pool else {
            return Ok(None);
        };
        pool.clone()
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| TooManyRequests)
    }
}

/// The answer over the limit: 429 with `Retry-After: 1` and a TooManyRequests Status.
#[derive(Debug)]
pub(crate) struct TooManyRequests;

impl IntoResponse for TooManyRequests {
    fn into_response(self) -> Response {
        {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Too many requests, please try again later.",
                "reason": "TooManyRequests", "details": {"retryAfterSeconds": 1}, "code": 429,
            });
            (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::RETRY_AFTER, "1"),
                ],
                serde_json::to_vec(&status).unwrap_or_default(),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_long_running() {
        assert!(long_running(&Method::GET, "/api/v1/pods", "watch=true"));
        assert!(long_running(&Method::GET, "/api/v1/watch/pods", ""));
        assert!(long_running(
            &Method::GET,
            "/apis/apps/v1/watch/deployments",
            ""
        ));
        assert!(!long_running(&Method::GET, "/api/v1/pods", "watch=false"));
        assert!(!long_running(&Method::POST, "/api/v1/pods", "watch=true"));
    }

    #[test]
    fn pools_are_separate_and_answer_429() {
        let f = InFlight::new(Limits {
            max_read_only: 1,
            max_mutating: 1,
        });
        let r = f.admit(&Method::GET, "/api/v1/pods", "").unwrap();
        assert!(r.is_some());
        let over = f
            .admit(&Method::GET, "/api/v1/pods", "")
            .unwrap_err()
            .into_response();
        assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(over.headers()[header::RETRY_AFTER], "1");
        let m = f
            .admit(&Method::POST, "/api/v1/namespaces/d/pods", "")
            .unwrap();
        assert!(m.is_some(), "the mutating pool is its own");
        assert!(
            f.admit(&Method::GET, "/api/v1/pods", "watch=1")
                .unwrap()
                .is_none()
        );
        drop(r);
        assert!(f.admit(&Method::GET, "/api/v1/pods", "").is_ok());
    }
}
