//! Placing Berth pods on nodes: a filter/score plugin framework, a queue and binding decisions.

mod error;

pub use error::{Error, Result};
