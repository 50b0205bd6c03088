//! OCI images for Berth: content-addressed blob store, manifests, image store, OCI layout, build.
//!
//! (Being built: see issue "Images".)

mod error;

pub use error::{Error, Result};

pub mod build;
