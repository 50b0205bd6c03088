//! An OCI Distribution Spec registry server and client for Berth.
//!
//! (Being built: see issue "Registry".)

mod error;

pub use error::{Error, Result};
