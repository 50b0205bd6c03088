//! Errors of the Dockerfile builder (`berth_builder::Error`).

use std::path::PathBuf;

/// Everything that can go wrong while parsing a Dockerfile or building an image from it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Dockerfile is malformed; `line` is 1-based and points at the instruction's first line.
    #[error("Dockerfile line {line}: {message}")]
    Parse {
        /// The 1-based line of the offending instruction.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A `.dockerignore` pattern is malformed.
    #[error(".dockerignore line {line}: bad pattern {pattern:?}")]
    IgnorePattern {
        /// The 1-based line of the pattern.
        line: usize,
        /// The pattern as written.
        pattern: String,
        /// Why the glob was rejected.
        #[source]
        source: globset::Error,
    },
    /// A COPY/ADD source is outside the context, missing, or matched nothing.
    #[error("step {step} (line {line}): {message}")]
    Source {
        /// The 1-based step number.
        step: usize,
        /// The Dockerfile line of the step.
        line: usize,
        /// What is wrong with the source.
        message: String,
    },
    /// A step could not be carried out (RUN failed, bad user, unsupported feature…).
    #[error("step {step} (line {line}) `{instruction}`: {message}")]
    Step {
        /// The 1-based step number.
        step: usize,
        /// The Dockerfile line of the step.
        line: usize,
        /// The instruction as written.
        instruction: String,
        /// What failed.
        message: String,
    },
    /// A RUN step's command exited non-zero.
    #[error("step {step} (line {line}) `{instruction}`: the command exited with status {status}")]
    RunFailed {
        /// The 1-based step number.
        step: usize,
        /// The Dockerfile line of the step.
        line: usize,
        /// The instruction as written.
        instruction: String,
        /// The exit status (128+n for a signal).
        status: i32,
    },
    /// An input (the Dockerfile, the image config being built) is over its size limit.
    #[error("{what} is over the limit of {limit} bytes")]
    TooLarge {
        /// What is too large.
        what: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The build was cancelled (see [`crate::Cancel`]); nothing of the interrupted step is left.
    #[error("the build was cancelled at step {step}")]
    Cancelled {
        /// The 1-based step that was running.
        step: usize,
    },
    /// `--target` names no stage.
    #[error("target stage {0:?} not found")]
    Target(String),
    /// A build argument given on the command line is malformed.
    #[error("bad build argument {0:?}: expected KEY=VALUE or KEY")]
    BuildArg(String),
    /// An I/O operation on a path failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done ("open", "read", …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The image store, content store or unpacking failed.
    #[error("image store")]
    Image(#[source] Box<berth_image::Error>),
    /// The snapshotter or layer diff failed.
    #[error("snapshot {key}")]
    Snapshot {
        /// The snapshot key involved.
        key: String,
        /// The underlying error.
        #[source]
        source: berth_unionfs::Error,
    },
    /// Serialising or parsing JSON (cache entries, image config) failed.
    #[error("JSON of {what}")]
    Json {
        /// What was being (de)serialised.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
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

/// `Result` with the builder's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
