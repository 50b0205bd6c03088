#![doc = include_str!("../README.md")]

mod engine;
mod error;
mod images;
pub mod network;
pub mod options;
mod spec;
pub mod state;

pub use engine::{Attached, Engine, MonitorCommand};
pub use error::{Error, Result};
pub use images::PruneReport;
pub use options::RunConfig;
pub use state::{Container, Status};

pub use berth_namespaces as namespaces;
pub use berth_namespaces::foreground::parse_signal;
