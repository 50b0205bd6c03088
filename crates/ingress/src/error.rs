//! Errors of berth-ingress.

/// What can go wrong running the Ingress proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A TLS Secret cannot be used.
    #[error("TLS Secret {secret}: {reason}")]
    TlsSecret {
        /// `<ns>/<name>`.
        secret: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Building the TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Binding or accepting on a listener failed.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An API request (status update, discovery) failed.
    #[error("API request: {what}")]
    Api {
        /// What was asked.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// berth-ingress's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
