//! Errors of the store backends ([`Error`]); each converts into the trait's
//! [`berth_api::store::Error`] as its `Backend` variant.

use std::path::PathBuf;

/// Why opening or running a backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("I/O on {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The log is damaged somewhere other than a torn last write: the store refuses to open
    /// rather than serve partial state.
    #[error("corrupt log {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Another process has the store directory open.
    #[error("store directory {0} is in use by another process")]
    Locked(PathBuf),
    /// An option out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// An earlier write failed to reach the disk; the store refuses further work (reopen it).
    #[error("store failed earlier: {0}")]
    Failed(String),
    /// The etcd client failed (connection, TLS, auth, request).
    #[cfg(feature = "etcd")]
    #[error("etcd request failed")]
    Etcd(#[source] Box<etcd_client::Error>),
}

impl Error {
    #[cfg(feature = "embedded")]
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl From<Error> for berth_api::store::Error {
    fn from(e: Error) -> Self {
        berth_api::store::Error::Backend(Box::new(e))
    }
}

/// `Result` with [`berth_store::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;
