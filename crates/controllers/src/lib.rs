//! Berth's reconcile loops: ReplicaSet, Deployment, DaemonSet, Job, GC, node lifecycle and the
//! node agent.

mod error;

pub use error::{Error, Result};
