//! Errors of berth-registry: storage, protocol and client failures, each with its context.

use std::path::PathBuf;

use berth_api::{Digest, DigestError};

/// Everything that can go wrong in berth-registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a path failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done ("open", "create", …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading a request or response body failed.
    #[error("reading a body stream")]
    Stream(#[source] std::io::Error),
    /// A repository name that the distribution spec does not allow.
    #[error("invalid repository name {0:?}")]
    InvalidName(String),
    /// A tag that the distribution spec does not allow.
    #[error("invalid tag {0:?}")]
    InvalidTag(String),
    /// The content store holding the blobs failed.
    #[error("content store")]
    Content(#[source] berth_image::Error),
    /// A malformed or unsupported digest.
    #[error("invalid digest")]
    Digest(#[from] DigestError),
    /// Content did not hash to the digest it was announced with.
    #[error("content digest mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        /// The digest the client named.
        expected: Digest,
        /// The digest of the bytes received.
        found: Digest,
    },
    /// Content had a different size than announced.
    #[error("size mismatch for {digest}: expected {expected} bytes, found {found}")]
    SizeMismatch {
        /// The content's digest.
        digest: Digest,
        /// The announced size.
        expected: u64,
        /// The size received.
        found: u64,
    },
    /// The blob is not in the store (or not linked to the repository).
    #[error("blob {digest} unknown to repository {repository}")]
    BlobUnknown {
        /// The repository asked.
        repository: String,
        /// The blob's digest.
        digest: Digest,
    },
    /// The manifest (by tag or digest) is not in the repository.
    #[error("manifest {reference} unknown to repository {repository}")]
    ManifestUnknown {
        /// The repository asked.
        repository: String,
        /// The tag or digest asked for.
        reference: String,
    },
    /// A manifest refers to a blob or manifest the repository does not hold.
    #[error("manifest refers to {digest}, unknown to repository {repository}")]
    ManifestBlobUnknown {
        /// The repository.
        repository: String,
        /// The missing blob.
        digest: Digest,
    },
    /// A manifest that is not valid JSON or not a valid manifest.
    #[error("invalid manifest: {0}")]
    ManifestInvalid(String),
    /// A manifest larger than the registry accepts.
    #[error("manifest of {size} bytes exceeds the {limit}-byte limit")]
    ManifestTooLarge {
        /// Bytes received (at least).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The repository does not exist.
    #[error("repository {0} unknown")]
    NameUnknown(String),
    /// The upload session does not exist (finished, cancelled or collected).
    #[error("upload {0} unknown")]
    UploadUnknown(String),
    /// A chunk did not start where the upload ends.
    #[error("chunk starts at {got}, but the upload holds {expected} bytes")]
    RangeInvalid {
        /// The current size of the upload.
        expected: u64,
        /// The offset the chunk claimed.
        got: u64,
    },
    /// A request or header the registry cannot make sense of.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An htpasswd file that cannot be used.
    #[error("htpasswd file {}: {reason}", path.display())]
    Htpasswd {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The token signing key file cannot be used.
    #[error("token signing key {}: {reason}", path.display())]
    TokenKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS configuration (certificate or key) could not be loaded.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// JSON that could not be encoded or decoded.
    #[error("JSON for {what}")]
    Json {
        /// What was being (de)serialised.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// An HTTP request of the client failed below the protocol level.
    #[cfg(feature = "client")]
    #[error("HTTP request to {url}")]
    Http {
        /// The URL requested.
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: registry answered {status}: {body}")]
    Status {
        /// The request method.
        method: String,
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The (truncated) response body, usually the spec's JSON errors.
        body: String,
    },
    /// Authentication was required and failed or was impossible.
    #[error("authentication with {url} failed: {reason}")]
    Auth {
        /// The URL that asked for it.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// An index lists no manifest for the wanted platform.
    #[error("no manifest for platform {0} in the image index")]
    NoMatchingPlatform(String),
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
