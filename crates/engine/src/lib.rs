//! Berth's single-host container engine: an image becomes a union snapshot becomes a running
//! container, with state, logs and stop; what `berth run` and the node agent use.
//!
//! (Being built: see issue "Images".)

mod error;

pub use error::{Error, Result};
