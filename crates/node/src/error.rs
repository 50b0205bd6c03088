//! The node agent's errors.

use std::path::PathBuf;

/// What can go wrong in the node agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The API server refused or failed a request.
    #[error("API request failed: {what}")]
    Api {
        /// The request.
        what: String,
        /// Why it failed.
        #[source]
        source: kube::Error,
    },
    /// A pod's spec can't be run as written (bad quantity, unknown volume, ...).
    #[error("pod {pod}: {message}")]
    InvalidPod {
        /// `namespace/name`.
        pod: String,
        /// What is wrong.
        message: String,
    },
    /// The image could not be found, pulled or unpacked.
    #[error("image {image}: {message}")]
    Image {
        /// The reference.
        image: String,
        /// What went wrong.
        message: String,
    },
    /// The container runtime failed.
    #[error(transparent)]
    Runtime(#[from] berth_namespaces::Error),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] berth_cgroups::Error),
    /// The engine (image store, snapshots) failed.
    #[error(transparent)]
    Engine(#[from] berth_engine::Error),
    /// A snapshot operation failed.
    #[error(transparent)]
    Snapshot(#[from] berth_unionfs::Error),
    /// The image store failed.
    #[error(transparent)]
    ImageStore(#[from] berth_image::Error),
    /// A state file is not valid JSON of the expected shape.
    #[error("state file {}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A process the agent started failed to come up.
    #[error("{what}: {message}")]
    Start {
        /// Which process.
        what: String,
        /// Its report.
        message: String,
    },
    /// A system call failed.
    #[error("{op}")]
    Sys {
        /// What was being done.
        op: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

/// The node agent's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Api { what, source }
    }
}
