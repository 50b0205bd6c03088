//! Berth's reconcile loops: ReplicaSet, Deployment, DaemonSet, Job, GC, node lifecycle and the
//! node agent.
//!
//! Each controller implements [`Reconciler`]: level-triggered, idempotent, reading and writing
//! only through a [`berth_api::store::Store`]. The controllers themselves come with the cluster
//! issues; this crate fixes the contract they share.
//!
//! ```
//! use berth_api::store::Store;
//! use berth_controllers::{Action, ObjectKey, Reconciler};
//!
//! struct Noop;
//!
//! #[async_trait::async_trait]
//! impl Reconciler for Noop {
//!     fn kind(&self) -> &'static str {
//!         "Pod"
//!     }
//!     async fn reconcile(&self, _: &dyn Store, _: &ObjectKey) -> berth_controllers::Result<Action> {
//!         Ok(Action::AwaitChange)
//!     }
//! }
//! ```

pub mod endpoints;
mod error;
pub mod node_lifecycle;
pub mod reconciler;

pub use error::{Error, Result};
pub use reconciler::{Action, ObjectKey, Reconciler};
