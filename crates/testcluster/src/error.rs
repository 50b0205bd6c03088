//! The test cluster's error type.

/// What can go wrong starting or driving a [`TestCluster`](crate::TestCluster).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API server could not start (bootstrap of its namespaces failed).
    #[error("starting the API server")]
    ApiServer(#[source] berth_apiserver::Error),
    /// The durable store could not be opened.
    #[error("opening the store")]
    Store(#[source] berth_store::Error),
    /// An I/O error (binding the loopback socket, creating a temporary directory).
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A request to the API server failed.
    #[error("API request failed")]
    Kube(#[from] kube::Error),
    /// No simulated node has this name.
    #[error("no simulated node named {0:?}")]
    NoSuchNode(String),
    /// An object was not in the shape expected (e.g. a pod with no containers).
    #[error("{0}")]
    Invalid(String),
}

/// The test cluster's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
