#![doc = include_str!("../README.md")]

mod builder;
mod cache;
mod context;
mod dockerfile;
mod error;
mod ignore;
mod words;
mod workspace;

use berth_api::error_chain;

pub use builder::{BuildOptions, BuildOutput, Builder, MAX_CONFIG_SIZE};
pub use dockerfile::{
    Command, Copy, Dockerfile, Instruction, InstructionKind, MAX_DOCKERFILE_SIZE,
    MAX_INSTRUCTION_SIZE, RunMount,
};
pub use error::{Error, Result};
pub use ignore::Ignore;
pub use words::Word;
pub use workspace::Workspace;

/// Cancels a build from another thread (a signal handler's watcher, a server's request
/// context): the running RUN step's container is stopped and removed, and the build returns
/// [`Error::Cancelled`] at the next step boundary. Clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}
