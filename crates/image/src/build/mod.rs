//! Building images from a Dockerfile (a Docker-compatible subset; see [`Dockerfile`]).

mod builder;
mod cache;
mod context;
mod dockerfile;
mod error;
mod ignore;
mod user;
mod words;
mod workspace;

pub use builder::{BuildOptions, BuildOutput, Builder, MAX_CONFIG_SIZE};
pub use dockerfile::{
    Command, Copy, Dockerfile, Instruction, Kind, MAX_DOCKERFILE_SIZE, MAX_INSTRUCTION_SIZE,
    RunMount,
};
pub use error::{Error, Result};
pub use ignore::Ignore;
pub use user::{ResolvedUser, resolve_user};
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

/// `e` and its chain of sources, joined with ": " (progress and step errors carry plain text).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
