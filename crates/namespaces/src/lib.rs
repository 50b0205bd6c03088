//! Berth's container runtime: namespaces, pivot_root, mounts, capabilities, seccomp and the OCI
//! runtime-spec lifecycle.
//!
//! (Being built: see issue "Isolation".)

mod error;

pub use error::{Error, Result};
