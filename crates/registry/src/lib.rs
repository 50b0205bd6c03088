#![doc = include_str!("../README.md")]

mod error;

pub mod auth;
#[cfg(feature = "client")]
pub mod client;
pub mod manifest;
pub mod name;
#[cfg(feature = "server")]
pub mod server;
pub mod storage;

pub use error::{Error, Result};
pub use name::{ManifestRef, RepositoryName};
pub use storage::{FsStorage, Storage};
