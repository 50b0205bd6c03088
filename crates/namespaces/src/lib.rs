#![doc = include_str!("../README.md")]

mod bpf;
mod channel;
mod container;
pub mod defaults;
mod error;
mod fake;
pub mod foreground;
mod hooks;
pub mod init;
pub mod process;
mod rootfs;
mod security;
mod state;
mod sys;
mod traits;
pub mod user;

pub use container::{
    Container, ContainerPipes, CreateOptions, ExecProcess, ExitStatus, InitBinary, Runtime, Stdio,
    load_config,
};
pub use error::{Error, Result};
pub use fake::{FakeContainer, FakeProcess, FakeRuntime};
pub use state::{State, Status, validate_id};
pub use traits::{ContainerHandle, ContainerRuntime, ProcessHandle};

pub use nix::sys::signal::Signal;
pub use oci_spec;
