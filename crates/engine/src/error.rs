//! Errors of berth-engine.

use std::path::PathBuf;

/// Everything that can go wrong in berth-engine.
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
    /// Container networking (berth-net) failed.
    #[error("container network")]
    Network(#[source] berth_net::Error),
    /// A command-line style option value is malformed.
    #[error("invalid {option} value {value:?}: {reason}")]
    Option {
        /// The option (`--memory`, `-v`, …).
        option: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// No container has this id, id prefix or name.
    #[error("no such container: {0}")]
    NotFound(String),
    /// An id prefix matches more than one container.
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// The name is taken.
    #[error("the container name {name:?} is already in use by container {id}")]
    NameInUse {
        /// The name.
        name: String,
        /// The container that has it.
        id: String,
    },
    /// The operation needs the container in another state.
    #[error("container {id} is {status}: {message}")]
    InvalidState {
        /// The container.
        id: String,
        /// Its current status.
        status: String,
        /// What was refused.
        message: String,
    },
    /// A container's `state.json` is unreadable.
    #[error("container state {}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A container's `state.json` can't be read: it is listed and can be removed (with
    /// force if it may run), nothing else.
    #[error(
        "container {id}: its record {} is unreadable ({message}); remove it with force",
        path.display()
    )]
    Unreadable {
        /// The container id.
        id: String,
        /// The record.
        path: PathBuf,
        /// Why it can't be read.
        message: String,
    },
    /// The OCI spec could not be built.
    #[error("building the OCI spec: {0}")]
    Spec(String),
    /// The image config asks for something the engine can't do (unknown user, …).
    #[error("image {image}: {message}")]
    ImageConfig {
        /// The image.
        image: String,
        /// What is wrong.
        message: String,
    },
    /// The image is the last name of an image a container was created from.
    #[error(
        "unable to remove {image}: container {container} uses it (remove the container, or force)"
    )]
    ImageInUse {
        /// The name given.
        image: String,
        /// The container's short id.
        container: String,
    },
    /// The image store failed (unknown image, unpack…).
    #[error("image")]
    Image(#[from] berth_image::Error),
    /// The snapshotter failed.
    #[error("snapshot")]
    Snapshot(#[from] berth_unionfs::Error),
    /// The container runtime failed.
    #[error("runtime")]
    Runtime(#[from] berth_namespaces::Error),
    /// The Dockerfile builder failed.
    #[error("build")]
    Build(#[source] Box<berth_builder::Error>),
    /// The monitor of a detached container failed to start it.
    #[error("container {id} failed to start: {message}")]
    Monitor {
        /// The container.
        id: String,
        /// What the monitor reported.
        message: String,
    },
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
