//! Progress of blob transfers, reported to whoever drives the client (a terminal UI, a log,
//! nothing): the library draws nothing itself.

use std::fmt;
use std::sync::Arc;

use berth_api::Digest;

/// Which way a blob moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Direction {
    /// From the registry to the local store.
    Pull,
    /// From the local store to the registry.
    Push,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Pull => "pulling",
            Direction::Push => "pushing",
        })
    }
}

/// Receives the progress of every blob a [`super::Client`] transfers.
pub trait Progress: fmt::Debug + Send + Sync {
    /// A transfer of `digest` starts; `size` is 0 when the registry did not say.
    fn start(&self, digest: &Digest, size: u64, direction: Direction) -> Arc<dyn Transfer>;
}

/// One blob's transfer. A retry resumes or restarts it with [`Transfer::set_position`].
pub trait Transfer: Send + Sync {
    /// The total size became known (or changed, on a resumed download).
    fn set_length(&self, _len: u64) {}
    /// Bytes transferred so far.
    fn set_position(&self, _position: u64) {}
    /// `bytes` more were transferred.
    fn advance(&self, _bytes: u64) {}
    /// The transfer ended (done, or given up).
    fn finish(&self) {}
}

/// Reports nothing (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

struct Silent;

impl Transfer for Silent {}

impl Progress for NoProgress {
    fn start(&self, _: &Digest, _: u64, _: Direction) -> Arc<dyn Transfer> {
        Arc::new(Silent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_reads_as_a_verb() {
        assert_eq!(Direction::Pull.to_string(), "pulling");
        assert_eq!(Direction::Push.to_string(), "pushing");
    }
}
