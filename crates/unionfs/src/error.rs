//! Errors of berth-unionfs: one enum for the whole crate, each variant carrying the path, key or
//! archive entry it is about.

use std::path::PathBuf;

/// Everything that can go wrong in berth-unionfs.
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
    /// The layer archive could not be read (truncated, bad checksum, bad header).
    #[error("read layer archive (entry {})", entry.display())]
    Archive {
        /// The entry being read, or empty when the failure came before the first one.
        entry: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A layer entry was refused because applying it would be unsafe or is impossible.
    #[error("layer entry {}: {reason}", entry.display())]
    UnsafeEntry {
        /// The entry's path as written in the archive.
        entry: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// Writing a layer archive failed.
    #[error("write layer archive (entry {})", entry.display())]
    ArchiveWrite {
        /// The entry being written.
        entry: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No snapshot has this key.
    #[error("snapshot {key:?} not found")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A snapshot with this key already exists.
    #[error("snapshot {key:?} already exists")]
    AlreadyExists {
        /// The key asked for.
        key: String,
    },
    /// The snapshot is of the wrong kind for the operation (e.g. committing a view).
    #[error("snapshot {key:?} is {found}, the operation needs {expected}")]
    WrongKind {
        /// The snapshot's key.
        key: String,
        /// The kind(s) the operation needs.
        expected: &'static str,
        /// The kind it has.
        found: crate::SnapshotKind,
    },
    /// The snapshot cannot be removed while other snapshots are built on it.
    #[error("snapshot {key:?} has children: {children:?}")]
    HasChildren {
        /// The snapshot's key.
        key: String,
        /// The keys of its children.
        children: Vec<String>,
    },
    /// A snapshot key is not acceptable (empty, too long, NUL byte).
    #[error("invalid snapshot key {key:?}: {reason}")]
    InvalidKey {
        /// The key given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The snapshotter root cannot be used.
    #[error("snapshotter root {}: {reason}", path.display())]
    InvalidRoot {
        /// The root directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The metadata file is corrupt or cannot be encoded.
    #[error("snapshot metadata {}", path.display())]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A mount or unmount failed.
    #[error("{op} {fs_type} on {}{}", target.display(), detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Mount {
        /// "mount", "unmount", "fsconfig", …
        op: &'static str,
        /// The filesystem type ("overlay", "bind").
        fs_type: String,
        /// The mount point.
        target: PathBuf,
        /// The kernel's own message (from the fs context), when it gave one.
        detail: Option<String>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The mount description cannot be mounted as given.
    #[error("invalid mount {fs_type}: {reason}")]
    InvalidMount {
        /// The filesystem type.
        fs_type: String,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn errno(op: &'static str, path: impl Into<PathBuf>, errno: nix::Error) -> Self {
        Error::io(op, path, std::io::Error::from(errno))
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
