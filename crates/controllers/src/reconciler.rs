//! The reconcile contract every Berth controller implements: given the name of an object, make
//! the world match its spec, idempotently, and say when to look again.

use std::time::Duration;

use async_trait::async_trait;
use berth_api::store::Store;

use crate::error::Result;

/// Identifies the object a reconcile is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What the controller loop should do after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the object or something it watches changes.
    AwaitChange,
    /// Reconcile the same key again after this long (polling, backoff).
    RequeueAfter(Duration),
}

/// A level-triggered reconcile loop body, in the shape of kube-runtime's `reconcile`.
///
/// Implementations read the desired state from the store, compare it with the observed state,
/// and write the difference; they must be idempotent, since the same key may be reconciled
/// again at any time (after a restart, a missed event, or a requeue).
#[async_trait]
pub trait Reconciler: Send + Sync {
    /// The kind this reconciler owns (e.g. `ReplicaSet`).
    fn kind(&self) -> &'static str;

    /// Brings the object `key` to its desired state.
    async fn reconcile(&self, store: &dyn Store, key: &ObjectKey) -> Result<Action>;
}
