//! The state store: a revisioned key/value space with compare-and-swap, watch, compaction and
//! leases, in the model etcd offers, so the embedded store, the etcd backend and [`MemoryStore`]
//! are interchangeable behind [`Store`].
//!
//! # The model
//! - One global **revision** counts committed writes. Every transaction that changes something gets
//!   the next revision (a lease revoke or expiry deleting several keys uses one revision for all).
//! - Each key remembers `create_revision`, `mod_revision` (the revision of its last write) and
//!   `version` (writes since creation). Callers pass `mod_revision` back as the precondition of an
//!   update or delete ([`Compare::ModRevision`]), which is how Kubernetes' `resourceVersion` works.
//! - Reads happen at a revision: the current one, or an older one still kept (MVCC). A paged
//!   [`range`](Store::range) continues at the revision of its first page, so the pages form one
//!   consistent snapshot.
//! - A [`watch`](Store::watch) after revision `R` delivers every change with a revision above `R`
//!   under a prefix, in revision order, exactly once, each with the key's previous value.
//! - [`compact`](Store::compact) forgets history before a revision; reading or watching from
//!   before it answers [`Error::Compacted`] (Kubernetes' 410 Gone: the caller relists).
//! - A **lease** has a TTL; keys written with it are deleted when it expires or is revoked (node
//!   heartbeats, leader election).
//!
//! Backends: [`MemoryStore`] here (tests, single process); the durable embedded store and the etcd
//! backend in the `berth-store` crate. The `conformance` module (feature `conformance`) is the
//! test suite every backend passes. [`Typed`] layers Berth's object kinds on top (JSON values under
//! `/registry/<Kind>/…`).

use std::time::Duration;

use async_trait::async_trait;

use crate::meta::{Object, is_valid_name, key, key_prefix};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod memory;
pub mod mvcc;
mod watch;

pub use memory::MemoryStore;
pub use watch::{Watch, WatchItem, WatchSender};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No value under the key.
    #[error("{key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// Create of a key that exists.
    #[error("{key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The comparison of a transaction failed: the key's mod revision is not the expected one.
    #[error("{key} was modified: expected revision {expected}, found {found}")]
    Conflict {
        /// The key.
        key: String,
        /// The mod revision the caller expected (0: absent).
        expected: u64,
        /// The key's current mod revision (0: absent).
        found: u64,
        /// The key's current value, so the caller can retry without another read.
        current: Option<Box<KeyValue>>,
    },
    /// A read or watch asked for history the store no longer keeps: relist.
    #[error("revision {requested} is compacted (compaction point {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The compaction point: the oldest revision that can still be read (0: the backend
        /// did not say).
        compacted: u64,
    },
    /// A read at a revision the store has not reached yet.
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's current revision (0: the backend did not say).
        current: u64,
    },
    /// A watcher fell too far behind and was dropped: relist, then watch again.
    #[error("watcher fell behind at revision {revision}")]
    Lagged {
        /// The revision of the last event it received.
        revision: u64,
    },
    /// The lease does not exist (never granted, expired or revoked).
    #[error("lease {id} not found")]
    LeaseNotFound {
        /// The lease.
        id: LeaseId,
    },
    /// A key that the store cannot hold (empty).
    #[error("invalid key {0:?}")]
    InvalidKey(String),
    /// A value bigger than the backend takes.
    #[error("value of {key} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The key.
        key: String,
        /// The value's size.
        size: usize,
        /// The backend's limit.
        limit: usize,
    },
    /// An object name that is not a DNS subdomain.
    #[error("invalid object name {0:?}")]
    InvalidName(String),
    /// A stored value that is not the JSON of its kind.
    #[error("value under {key} is not a valid object")]
    Decode {
        /// The key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The store was closed (or failed earlier and refuses further work).
    #[error("store is closed")]
    Closed,
    /// The backend failed (network, disk).
    #[error("store backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Whether the caller must relist before watching again ([`Compacted`](Error::Compacted),
    /// [`Lagged`](Error::Lagged)).
    pub fn requires_relist(&self) -> bool {
        matches!(self, Error::Compacted { .. } | Error::Lagged { .. })
    }
}

/// `Result` with [`store::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A lease's id (etcd's `int64`; never 0).
pub type LeaseId = i64;

/// A value and its revisions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value's bytes (empty in a delete event's `kv`).
    pub value: Vec<u8>,
    /// Revision that created the key (since its last deletion); 0 in a delete event's `kv`.
    pub create_revision: u64,
    /// Revision of the last write to this key (for a delete event: the deleting revision).
    pub mod_revision: u64,
    /// Writes since creation, starting at 1; 0 in a delete event's `kv`.
    pub version: u64,
    /// The lease the key is attached to.
    pub lease: Option<LeaseId>,
}

/// What a [`range`](Store::range) reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Range {
    /// Keys starting with this prefix ("" for all).
    pub prefix: String,
    /// Only keys strictly after this one: the last key of the previous page (continue).
    pub start_after: Option<String>,
    /// At most this many keys (0: no limit).
    pub limit: usize,
    /// Read at this revision (0: the current one). Pass the first page's revision to continue.
    pub revision: u64,
}

impl Range {
    /// Every key under `prefix` at the current revision.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Range {
            prefix: prefix.into(),
            ..Range::default()
        }
    }
}

/// The answer of a [`range`](Store::range).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    /// The keys, sorted by key (byte order).
    pub kvs: Vec<KeyValue>,
    /// The revision the range was read at (the store's current revision when none was asked).
    pub revision: u64,
    /// Whether more keys follow the last one returned (ask again with `start_after`).
    pub more: bool,
}

/// The condition of a [`Txn`], on the transaction's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compare {
    /// No condition.
    #[default]
    Always,
    /// The key must not exist (create).
    Absent,
    /// The key's mod revision must be this (update or delete of what the caller read).
    ModRevision(u64),
}

impl Compare {
    /// `Some(0)` → [`Absent`](Compare::Absent), `Some(r)` → [`ModRevision`](Compare::ModRevision),
    /// `None` → [`Always`](Compare::Always).
    pub fn from_expected(expected: Option<u64>) -> Self {
        match expected {
            None => Compare::Always,
            Some(0) => Compare::Absent,
            Some(r) => Compare::ModRevision(r),
        }
    }

    /// Whether a key whose current mod revision is `found` (0: absent) passes.
    pub fn passes(self, found: u64) -> bool {
        match self {
            Compare::Always => true,
            Compare::Absent => found == 0,
            Compare::ModRevision(r) => found == r,
        }
    }

    /// The expected mod revision for error messages (0: absent or any).
    pub fn expected(self) -> u64 {
        match self {
            Compare::Always | Compare::Absent => 0,
            Compare::ModRevision(r) => r,
        }
    }
}

/// What a [`Txn`] does when its comparison passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Write `value`, attached to `lease` if given.
    Put {
        /// The new value.
        value: Vec<u8>,
        /// The lease that owns the key from now on.
        lease: Option<LeaseId>,
    },
    /// Delete the key (it must exist).
    Delete,
}

/// A small transaction on one key: if `compare` holds, apply `op`, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// The key.
    pub key: String,
    /// The condition.
    pub compare: Compare,
    /// The write.
    pub op: TxnOp,
}

impl Txn {
    /// A put of `value` under `key` if `compare` holds.
    pub fn put(key: impl Into<String>, value: Vec<u8>, compare: Compare) -> Self {
        Txn {
            key: key.into(),
            compare,
            op: TxnOp::Put { value, lease: None },
        }
    }

    /// A delete of `key` if `compare` holds.
    pub fn delete(key: impl Into<String>, compare: Compare) -> Self {
        Txn {
            key: key.into(),
            compare,
            op: TxnOp::Delete,
        }
    }

    /// Attaches the put to `lease`.
    pub fn with_lease(mut self, lease: LeaseId) -> Self {
        if let TxnOp::Put { lease: l, .. } = &mut self.op {
            *l = Some(lease);
        }
        self
    }
}

/// The answer of a committed [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// The transaction's revision.
    pub revision: u64,
    /// The key's value before the transaction (`None`: it was absent).
    pub prev: Option<KeyValue>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Deleted (by a delete, or by its lease's expiry or revoke).
    Delete,
}

/// A change a watcher sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete: the key, an empty value and the deleting revision.
    pub kv: KeyValue,
    /// The key's value before the change (`None`: it was absent, or the store had compacted it).
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// Its time to live from now (whole seconds; a backend may raise a small request to its
    /// minimum, etcd's is about 2 s).
    pub ttl: Duration,
}

/// A revisioned key/value store with small transactions, watch, compaction and leases.
///
/// Object-safe: hold it as `Arc<dyn Store>` or `&dyn Store`. Every method is safe to call
/// concurrently. A write is acknowledged (its future resolves `Ok`) only once it is as durable
/// as the backend promises (on disk for the embedded store, on a quorum for etcd, nowhere for
/// [`MemoryStore`]); a read never returns a write that is not yet acknowledged-durable.
#[async_trait]
pub trait Store: Send + Sync {
    /// The value under `key` at the current revision.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys under a prefix in key order, at the current revision or an older one.
    ///
    /// Errors: [`Error::Compacted`] for a revision before the compaction point,
    /// [`Error::FutureRevision`] for one not reached yet. Pages read with the same `revision`
    /// (the first page's [`RangeResult::revision`]) form one consistent snapshot.
    async fn range(&self, range: Range) -> Result<RangeResult>;

    /// Applies a [`Txn`] atomically: compares, then puts or deletes, under a new revision.
    ///
    /// Errors: [`Error::Conflict`] (with the current value) when the comparison fails,
    /// [`Error::NotFound`] for a delete of an absent key without a failing comparison,
    /// [`Error::LeaseNotFound`] for a put with an unknown lease. A failed transaction
    /// changes nothing and uses no revision.
    async fn txn(&self, txn: Txn) -> Result<TxnResult>;

    /// Every change to keys under `prefix` with a revision above `after_revision`, in revision
    /// order, each exactly once, with the previous value.
    ///
    /// Pass the revision of a [`range`](Store::range) to follow it without a gap. Errors:
    /// [`Error::Compacted`] when `after_revision` is before the compaction point (relist). The
    /// stream may later yield [`Error::Lagged`] if the watcher stops reading for long; it then
    /// ends. Progress notifications (bookmarks): [`Watch::request_progress`], then
    /// [`Watch::next_item`] yields [`WatchItem::Progress`] once every change up to that revision
    /// has been delivered.
    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<Watch>;

    /// Forgets the history before `revision`: reads at older revisions and watches after them
    /// answer [`Error::Compacted`]. The current value of every key stays. Compacting to a
    /// revision at or before the compaction point does nothing; one above the current revision is
    /// [`Error::FutureRevision`].
    async fn compact(&self, revision: u64) -> Result<()>;

    /// The current revision (the newest acknowledged write's).
    async fn revision(&self) -> Result<u64>;

    /// Grants a lease that expires `ttl` from now unless kept alive (rounded up to whole seconds).
    async fn lease_grant(&self, ttl: Duration) -> Result<Lease>;

    /// Renews a lease for its full TTL. Errors: [`Error::LeaseNotFound`] once it expired.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease>;

    /// Revokes a lease now, deleting its keys under one revision. Errors:
    /// [`Error::LeaseNotFound`].
    async fn lease_revoke(&self, id: LeaseId) -> Result<()>;

    /// Every key under `prefix` at one revision, and that revision (pages through
    /// [`range`](Store::range)).
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64)> {
        let mut range = Range::prefix(prefix);
        range.limit = 1000;
        let mut all = Vec::new();
        loop {
            let page = self.range(range.clone()).await?;
            range.revision = page.revision;
            range.start_after = page.kvs.last().map(|kv| kv.key.clone());
            all.extend(page.kvs);
            if !page.more {
                return Ok((all, page.revision));
            }
        }
    }

    /// Writes `value` under `key` if its mod revision is `expected` (`Some(0)`: must be absent,
    /// `None`: any). Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, expected: Option<u64>) -> Result<u64> {
        let txn = Txn::put(key, value, Compare::from_expected(expected));
        Ok(self.txn(txn).await?.revision)
    }

    /// Deletes `key` if its mod revision is `expected` (any, when `None`). Returns the revision.
    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<u64> {
        let compare = match expected {
            None => Compare::Always,
            Some(r) => Compare::ModRevision(r),
        };
        Ok(self.txn(Txn::delete(key, compare)).await?.revision)
    }
}

/// Rounds a requested TTL up to whole seconds, at least one.
pub fn ttl_seconds(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

/// Typed access to one object kind in a [`Store`], the way kube-rs' `Api<K>` does it.
pub struct Typed<'s, T> {
    store: &'s dyn Store,
    _kind: std::marker::PhantomData<fn() -> T>,
}

impl<'s, T: Object> Typed<'s, T> {
    /// Objects of kind `T` in `store`.
    pub fn new(store: &'s dyn Store) -> Self {
        Typed {
            store,
            _kind: std::marker::PhantomData,
        }
    }

    fn decode(kv: &KeyValue) -> Result<T> {
        let mut obj: T = serde_json::from_slice(&kv.value).map_err(|source| Error::Decode {
            key: kv.key.clone(),
            source,
        })?;
        obj.meta_mut().resource_version = kv.mod_revision;
        Ok(obj)
    }

    fn encode(obj: &T) -> Vec<u8> {
        serde_json::to_vec(obj).expect("object kinds always serialize")
    }

    /// The object `name` in `namespace` (ignored for cluster-scoped kinds).
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<T>> {
        let key = key::<T>(namespace, name);
        self.store
            .get(&key)
            .await?
            .as_ref()
            .map(Self::decode)
            .transpose()
    }

    /// Every object of the kind (in `namespace`, if given) and the revision of the list.
    pub async fn list(&self, namespace: Option<&str>) -> Result<(Vec<T>, u64)> {
        let (items, revision) = self.store.list(&key_prefix::<T>(namespace)).await?;
        let objects = items.iter().map(Self::decode).collect::<Result<_>>()?;
        Ok((objects, revision))
    }

    /// Stores a new object; fails if it exists. Returns it with its resource version set.
    pub async fn create(&self, mut obj: T) -> Result<T> {
        let meta = obj.meta();
        if !is_valid_name(&meta.name) {
            return Err(Error::InvalidName(meta.name.clone()));
        }
        let key = key::<T>(&meta.namespace, &meta.name);
        obj.meta_mut().resource_version = 0;
        match self.store.put(&key, Self::encode(&obj), Some(0)).await {
            Err(Error::Conflict { .. }) => Err(Error::AlreadyExists { key }),
            Err(e) => Err(e),
            Ok(revision) => {
                obj.meta_mut().resource_version = revision;
                Ok(obj)
            }
        }
    }

    /// Replaces an object if nobody wrote it since its `resource_version` was read.
    pub async fn update(&self, mut obj: T) -> Result<T> {
        let meta = obj.meta();
        let key = key::<T>(&meta.namespace, &meta.name);
        let expected = meta.resource_version;
        if expected == 0 {
            return Err(Error::Conflict {
                key,
                expected,
                found: 0,
                current: None,
            });
        }
        let revision = self
            .store
            .put(&key, Self::encode(&obj), Some(expected))
            .await?;
        obj.meta_mut().resource_version = revision;
        Ok(obj)
    }

    /// Deletes `name` in `namespace`.
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<()> {
        self.store
            .delete(&key::<T>(namespace, name), None)
            .await
            .map(drop)
    }

    /// Watches the kind (in `namespace`, if given) after `revision`.
    pub async fn watch(&self, namespace: Option<&str>, revision: u64) -> Result<Watch> {
        self.store
            .watch(&key_prefix::<T>(namespace), revision)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Pod;

    fn pod(name: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = name.to_owned();
        p.metadata.namespace = "default".to_owned();
        p
    }

    #[test]
    fn ttl_rounds_up() {
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(3)), 3);
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
    }

    #[tokio::test]
    async fn typed_objects() {
        let store = MemoryStore::new();
        let pods = Typed::<Pod>::new(&store);
        let created = pods.create(pod("web")).await.unwrap();
        assert!(created.metadata.resource_version > 0);
        assert!(matches!(
            pods.create(pod("web")).await,
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            pods.create(pod("Bad_Name")).await,
            Err(Error::InvalidName(_))
        ));

        let mut stale = created.clone();
        let mut fresh = created.clone();
        fresh.spec.node_name = Some("n1".into());
        pods.update(fresh).await.unwrap();
        stale.spec.node_name = Some("n2".into());
        assert!(matches!(
            pods.update(stale).await,
            Err(Error::Conflict { .. })
        ));

        let (all, _) = pods.list(Some("default")).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].spec.node_name.as_deref(), Some("n1"));
    }
}
