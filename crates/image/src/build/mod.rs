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

pub use builder::{BuildOptions, BuildOutput, Builder};
pub use dockerfile::{Command, Copy, Dockerfile, Instruction, Kind};
pub use error::{Error, Result};
pub use ignore::Ignore;
pub use user::{ResolvedUser, resolve_user};
pub use words::Word;
pub use workspace::Workspace;
