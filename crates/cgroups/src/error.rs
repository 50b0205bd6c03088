//! Errors of berth-cgroups: every variant names the group, file or field it is about.

use std::path::PathBuf;

/// Everything that can go wrong in berth-cgroups.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a cgroup file or directory failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done ("read", "write 100 to", "create", …).
        op: String,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A limit in the requested resources is out of range or inconsistent; nothing was written.
    #[error("invalid {field}: {reason}")]
    InvalidResources {
        /// The OCI field, e.g. `memory.limit` or `cpu.cpus`.
        field: &'static str,
        /// Why the value was refused.
        reason: String,
    },

    /// The cgroup path given for a container is not a clean relative path.
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },

    /// No cgroup hierarchy was found under the root.
    #[error("no cgroup hierarchy found under {}", root.display())]
    NoHierarchy {
        /// The cgroup root that was searched.
        root: PathBuf,
    },

    /// The operation needs a controller that is not mounted / not enabled on this host.
    #[error("the {controller} controller is not available (needed for {needed_for})")]
    ControllerMissing {
        /// Controller name, e.g. `freezer`.
        controller: &'static str,
        /// What it was needed for.
        needed_for: &'static str,
    },

    /// The requested feature is not supported by this cgroup version or by berth-cgroups.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What is unsupported.
        what: String,
    },

    /// A cgroup file held something that could not be parsed.
    #[error("cannot parse {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong with its contents.
        reason: String,
    },

    /// The group still had processes (or did not reach the wanted state) when time ran out.
    #[error("{} {what} after {waited_ms} ms", path.display())]
    Timeout {
        /// The group directory.
        path: PathBuf,
        /// What did not happen ("still has processes", "did not freeze").
        what: &'static str,
        /// How long was waited.
        waited_ms: u64,
    },

    /// A cgroups-rs operation failed.
    #[error("{op} {}", path.display())]
    Backend {
        /// What was being done.
        op: &'static str,
        /// The group directory it was done in.
        path: PathBuf,
        /// The error from cgroups-rs.
        #[source]
        source: cgroups_rs::fs::error::Error,
    },

    /// Sending a signal to a process of the group failed.
    #[error("send {signal} to pid {pid}")]
    Signal {
        /// The signal.
        signal: nix::sys::signal::Signal,
        /// The process.
        pid: nix::unistd::Pid,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

impl Error {
    pub(crate) fn io(
        op: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            op: op.into(),
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidResources {
            field,
            reason: reason.into(),
        }
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
