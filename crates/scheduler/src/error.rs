//! Errors of berth-scheduler.

/// Why a pod could not be placed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No node passed every filter.
    #[error("pod {pod} is unschedulable: {}", reasons.join("; "))]
    Unschedulable {
        /// The pod's name.
        pod: String,
        /// Why each node was ruled out.
        reasons: Vec<String>,
    },
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
