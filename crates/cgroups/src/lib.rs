//! Resource limits and statistics for Berth containers, on cgroup v1 and v2.
//!
//! (Being built: see issue "Resource control".)

mod error;

pub use error::{Error, Result};
