//! Errors of berth-controllers.

/// Why a reconcile (or the manager) failed; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A call to the API server failed.
    #[error("API request failed: {context}")]
    Api {
        /// What the controller was doing.
        context: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// An object the controller works on is malformed (bad selector, bad intstr, bad schedule).
    #[error("invalid {what}: {message}")]
    Invalid {
        /// What is invalid (`ReplicaSet default/web selector`).
        what: String,
        /// Why.
        message: String,
    },
    /// An object could not be turned into JSON or back.
    #[error("cannot convert {what}")]
    Serde {
        /// The object.
        what: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A name given to the manager is not a known controller.
    #[error("unknown controller {0:?}")]
    UnknownController(String),
    /// The leader lease was lost: this manager must stop acting.
    #[error("lost the leader lease {0}")]
    LeaseLost(String),
}

impl Error {
    /// Wraps a client error with what the controller was doing.
    pub fn api(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let context = context.into();
        move |source| Error::Api { context, source }
    }

    /// Whether this is the API server's 409 Conflict (a stale cache: retry soon).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// Whether a client error is the API server's 404 Not Found.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether a client error is the API server's 409 AlreadyExists / Conflict.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
