//! Layered filesystems for Berth: overlayfs snapshots and OCI layer apply/diff with whiteouts.
//!
//! (Being built: see issue "Union filesystem".)

mod error;

pub use error::{Error, Result};
