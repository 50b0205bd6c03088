//! Errors of berth-controllers.

/// Why a reconcile failed; the loop retries with backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store refused or failed a read or write.
    #[error("state store operation failed")]
    Store(#[from] berth_api::store::Error),
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
