//! Errors of berth-scheduler.

/// What went wrong while configuring the scheduler or reading an object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A resource quantity (`500m`, `1Gi`) could not be read.
    #[error("invalid quantity {input:?}: {reason}")]
    Quantity {
        /// The text that was read.
        input: String,
        /// Why it is not a quantity.
        reason: &'static str,
    },
    /// A label or node selector is malformed (unknown operator, missing values).
    #[error("invalid selector: {0}")]
    Selector(String),
    /// The scheduler configuration file is not valid YAML or JSON.
    #[error("invalid scheduler configuration")]
    ConfigParse(#[source] serde_yaml_ng::Error),
    /// The scheduler configuration names something that does not exist or makes no sense.
    #[error("invalid scheduler configuration: {0}")]
    Config(String),
    /// An object lacks a field the scheduler needs (a pod without a name).
    #[error("invalid {kind} object: {reason}")]
    Object {
        /// `Pod`, `Node`, ...
        kind: &'static str,
        /// What is missing or wrong.
        reason: String,
    },
    /// An API server request failed (the runner).
    #[cfg(feature = "runner")]
    #[error("API request failed")]
    Api(#[source] Box<kube::Error>),
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
