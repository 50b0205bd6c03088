//! Errors of berth-namespaces.

use std::path::PathBuf;

/// Everything that can go wrong in berth-namespaces.
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
    /// A system call failed.
    #[error("{op}")]
    Sys {
        /// What was being done ("clone", "pidfd_open", …).
        op: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The bundle's config.json could not be read or parsed.
    #[error("invalid bundle config {}", path.display())]
    InvalidConfig {
        /// The config.json path.
        path: PathBuf,
        /// Why it was rejected.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The spec asks for something this runtime cannot do or that is inconsistent.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The container id is not a valid name (empty, too long, or with `/`, `..`, …).
    #[error("invalid container id {0:?}: use letters, digits, `-`, `_`, `.` (max 1024)")]
    InvalidId(String),
    /// A container with this id already exists under the state root.
    #[error("container {0} already exists")]
    AlreadyExists(String),
    /// No container with this id exists under the state root.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// The operation is not allowed in the container's current status.
    #[error("container {id} is {status}, cannot {op}")]
    InvalidStatus {
        /// The container id.
        id: String,
        /// Its current status.
        status: String,
        /// What was attempted.
        op: &'static str,
    },
    /// The container's init process failed while setting the container up.
    #[error("container {id}: {message}")]
    Init {
        /// The container id.
        id: String,
        /// The failure as reported by the init process.
        message: String,
    },
    /// The state file of a container is unreadable.
    #[error("corrupt state for container {id}")]
    CorruptState {
        /// The container id.
        id: String,
        /// The parse failure.
        #[source]
        source: serde_json::Error,
    },
    /// A hook failed or timed out.
    #[error("{stage} hook {} failed: {reason}", path.display())]
    Hook {
        /// The lifecycle stage ("prestart", "poststop", …).
        stage: &'static str,
        /// The hook binary.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The seccomp profile could not be compiled or loaded.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// The container's config does not fit through the init channel (E2BIG): checked before
    /// anything is sent, naming the largest part of the spec.
    #[error(
        "config of {size} bytes is over the init channel's {limit}-byte limit (E2BIG); \
         the largest part is {field} ({field_size} bytes)"
    )]
    ConfigTooLarge {
        /// The encoded size of the whole config.
        size: usize,
        /// The channel's limit.
        limit: usize,
        /// The largest field of the spec (`process.env`, `process.args`, `mounts`, …).
        field: &'static str,
        /// Its encoded size.
        field_size: usize,
    },
    /// A cgroup operation failed.
    #[error("cgroup {}", path.display())]
    Cgroup {
        /// The cgroup path.
        path: PathBuf,
        /// The cgroups crate's error.
        #[source]
        source: Box<berth_cgroups::Error>,
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

    pub(crate) fn cgroup(path: impl Into<PathBuf>, source: berth_cgroups::Error) -> Self {
        Error::Cgroup {
            path: path.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn sys(op: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            op: op.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
