//! The proxy crate's error type.

use std::io;

/// What went wrong programming nftables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The netlink socket could not be opened, written or read.
    #[error("netlink {op}")]
    Netlink {
        /// The operation that failed (open, send, receive).
        op: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a message of a batch; the whole batch was rolled back.
    #[error("nftables refused {what}")]
    Kernel {
        /// The object the refused message created or deleted (`table ip berth-x`, `rule in chain y`).
        what: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be parsed.
    #[error("malformed netlink answer: {0}")]
    Protocol(String),
    /// An API server request failed.
    #[cfg(feature = "runner")]
    #[error("API request failed")]
    Api(#[source] Box<kube::Error>),
    /// A caller-supplied value is out of range or malformed (checked before anything is sent).
    #[error("invalid {what}: {why}")]
    Invalid {
        /// What was invalid.
        what: String,
        /// Why.
        why: String,
    },
}

impl Error {
    pub(crate) fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            why: why.into(),
        }
    }
}

#[cfg(feature = "runner")]
impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Api(Box::new(e))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
