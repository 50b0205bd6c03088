//! Errors of berth-image.
//!
//! One enum for the whole crate; every variant names the thing it is about (a path, a digest, a
//! reference, a media type), so a message read on its own says what failed.

use std::path::PathBuf;

use berth_api::Digest;

/// Everything that can go wrong in berth-image.
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
    /// Content did not hash to the digest it was expected to have.
    #[error("digest mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        /// The digest the caller or a descriptor named.
        expected: Digest,
        /// The digest of the bytes actually received.
        found: Digest,
    },
    /// Content had a different size than its descriptor says.
    #[error("size mismatch for {digest}: expected {expected} bytes, found {found}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size the descriptor names.
        expected: u64,
        /// The size actually found.
        found: u64,
    },
    /// A blob is not in the content store (or not in an image layout being imported).
    #[error("blob {digest} not found")]
    BlobNotFound {
        /// The missing blob.
        digest: Digest,
    },
    /// A digest string was malformed or used an unsupported algorithm.
    #[error("invalid digest {value:?}")]
    InvalidDigest {
        /// The string as found.
        value: String,
        /// Why it is invalid.
        #[source]
        source: berth_api::DigestError,
    },
    /// An image reference could not be parsed.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No image is known under this reference.
    #[error("image {reference} not found")]
    ImageNotFound {
        /// The reference looked up.
        reference: String,
    },
    /// A JSON document (manifest, index, config, layout file) could not be parsed.
    #[error("malformed {what} {digest_or_path}")]
    MalformedJson {
        /// What the document should have been ("image manifest", "index.json", …).
        what: &'static str,
        /// Its digest or path.
        digest_or_path: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A media type Berth does not handle where it appeared.
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        /// The media type.
        media_type: String,
        /// Where it was found ("layer", "manifest", …).
        what: &'static str,
    },
    /// An image is structurally invalid (e.g. its config names a different number of layers than
    /// its manifest has).
    #[error("invalid image {digest}: {reason}")]
    InvalidImage {
        /// The manifest's digest.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// An index offers no manifest for the requested platform.
    #[error("index {digest} has no manifest for platform {platform}")]
    NoMatchingPlatform {
        /// The index's digest.
        digest: Digest,
        /// The platform asked for (`linux/amd64`).
        platform: String,
    },
    /// An OCI image layout is invalid.
    #[error("invalid OCI image layout {}: {reason}", path.display())]
    InvalidLayout {
        /// The layout directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `docker save`-style archive is invalid.
    #[error("invalid image archive: {reason}")]
    InvalidArchive {
        /// What is wrong.
        reason: String,
    },
    /// A layer's uncompressed content does not match the config's diff id.
    #[error("layer {layer} does not match diff id {expected} (found {found})")]
    DiffIdMismatch {
        /// The layer blob.
        layer: Digest,
        /// The diff id the config names.
        expected: Digest,
        /// The digest of the uncompressed content.
        found: Digest,
    },
    /// A snapshotter operation failed while unpacking.
    #[error("snapshot {key}")]
    Snapshot {
        /// The snapshot key being worked on.
        key: String,
        /// The snapshotter's error.
        #[source]
        source: berth_unionfs::Error,
    },
    /// Serialising a document failed (should not happen for well-formed values).
    #[error("serialise {what}")]
    Serialize {
        /// What was being serialised.
        what: &'static str,
        /// The serialiser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// Building an OCI object failed.
    #[error("build {what}")]
    Oci {
        /// What was being built.
        what: &'static str,
        /// The oci-spec error.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

impl Error {
    /// An [`Error::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the error means "the thing does not exist" (a blob or an image).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::BlobNotFound { .. } | Error::ImageNotFound { .. } => true,
            Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
