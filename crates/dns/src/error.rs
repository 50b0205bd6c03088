//! Errors of berth-dns.

use std::path::PathBuf;

/// What can go wrong serving cluster DNS or writing a pod's DNS settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cluster domain is not a valid DNS name.
    #[error("invalid cluster domain {domain:?}")]
    Domain {
        /// The domain given.
        domain: String,
        /// Why it is invalid.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// The cluster domain is the root, which would capture every name.
    #[error("the cluster domain cannot be the DNS root")]
    RootDomain,
    /// Binding or serving a socket failed.
    #[error("serving DNS on {addr}")]
    Serve {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Reading a resolv.conf failed.
    #[error("reading {path}")]
    ReadResolvConf {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A pod with `dnsPolicy: ClusterFirst` but no cluster DNS address configured, or a
    /// `None` policy without `dnsConfig`.
    #[error("pod DNS: {0}")]
    PodDns(String),
}

/// berth-dns's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
