//! The only module that talks to the [`Store`] trait: keys, pages, conditional writes and watch
//! streams in the shape the generic registry needs, so a change of the trait stays local here.

use std::sync::Arc;

use berth_api::store::{self, Store};

use crate::error::{Error, Result};

/// A stored value and the revision that wrote it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) revision: u64,
}

/// One page of a prefix listing.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) items: Vec<Stored>,
    /// The revision the page was read at.
    pub(crate) revision: u64,
    /// More keys follow the last item.
    pub(crate) more: bool,
    /// Keys after this page, when the store tells (Kubernetes' optional `remainingItemCount`).
    pub(crate) remaining: Option<usize>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Created (the key had no previous value).
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

/// A change seen by a watch. For a delete, `value` is the last value (empty when the store no
/// longer had it).
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) change: Change,
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) prev: Option<Vec<u8>>,
    pub(crate) revision: u64,
}

/// The Store, as the registry uses it.
#[derive(Clone)]
pub(crate) struct Storage {
    store: Arc<dyn Store>,
}

/// Maps the store's "comparison failed" into the caller's error.
fn conflict_or(e: store::Error, conflict: impl FnOnce() -> Error) -> Error {
    match e {
        store::Error::Conflict { .. } | store::Error::AlreadyExists { .. } => conflict(),
        store::Error::Compacted { .. } => Error::Gone(format!("too old resource version: {e}")),
        e => Error::Store(e),
    }
}

impl Storage {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Storage { store }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Stored>> {
        Ok(self.store.get(key).await?.map(|kv| Stored {
            key: kv.key,
            value: kv.value,
            revision: kv.mod_revision,
        }))
    }

    /// Keys under `prefix` strictly after `start_after`, at most `limit` (0: all), read at
    /// `revision` (0: the current one; a continued list passes its first page's revision, so
    /// its pages form one snapshot).
    pub(crate) async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: u64,
    ) -> Result<Page> {
        let page = self
            .store
            .range(store::Range {
                prefix: prefix.to_owned(),
                start_after: start_after.map(str::to_owned),
                limit,
                revision,
            })
            .await
            .map_err(|e| match e {
                store::Error::Compacted { .. } => Error::Gone(format!(
                    "the continue token's resource version is compacted: {e}; list again"
                )),
                e => Error::Store(e),
            })?;
        Ok(Page {
            items: page
                .kvs
                .into_iter()
                .map(|kv| Stored {
                    key: kv.key,
                    value: kv.value,
                    revision: kv.mod_revision,
                })
                .collect(),
            revision: page.revision,
            more: page.more,
            remaining: None,
        })
    }

    /// Writes a new key; `exists` is the error when it is already there.
    pub(crate) async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        exists: impl FnOnce() -> Error,
    ) -> Result<u64> {
        self.store
            .put(key, value, Some(0))
            .await
            .map_err(|e| conflict_or(e, exists))
    }

    /// Replaces `key` if its revision is still `expected`; `conflict` is the error otherwise.
    pub(crate) async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: u64,
        conflict: impl FnOnce() -> Error,
    ) -> Result<u64> {
        self.store
            .put(key, value, Some(expected))
            .await
            .map_err(|e| conflict_or(e, conflict))
    }

    /// Deletes `key` if its revision is still `expected`.
    pub(crate) async fn delete(
        &self,
        key: &str,
        expected: u64,
        conflict: impl FnOnce() -> Error,
    ) -> Result<u64> {
        self.store
            .delete(key, Some(expected))
            .await
            .map_err(|e| conflict_or(e, conflict))
    }

    /// Changes under `prefix` after `revision`.
    pub(crate) async fn watch(&self, prefix: &str, revision: u64) -> Result<Watch> {
        let inner = self
            .store
            .watch(prefix, revision)
            .await
            .map_err(|e| match e {
                store::Error::Compacted { .. } => {
                    Error::Gone(format!("too old resource version: {revision} ({e})"))
                }
                e => Error::Store(e),
            })?;
        Ok(Watch { inner })
    }
}

/// A stream of [`Event`]s; `None` when the store ended it (the client re-watches).
pub(crate) struct Watch {
    inner: store::Watch,
}

impl Watch {
    pub(crate) async fn next(&mut self) -> Option<Result<Event>> {
        let event = match self.inner.next().await? {
            Ok(event) => event,
            Err(store::Error::Compacted { .. } | store::Error::Lagged { .. }) => {
                return Some(Err(Error::Gone(
                    "the watch fell behind the store's history; list again".into(),
                )));
            }
            Err(e) => return Some(Err(Error::Store(e))),
        };
        let revision = event.revision();
        let prev = event.prev.map(|kv| kv.value);
        Some(Ok(match event.kind {
            store::EventKind::Put => Event {
                key: event.kv.key,
                change: if prev.is_none() && event.kv.version == 1 {
                    Change::Added
                } else {
                    Change::Modified
                },
                value: event.kv.value,
                prev,
                revision,
            },
            store::EventKind::Delete => Event {
                key: event.kv.key,
                change: Change::Deleted,
                value: prev.clone().unwrap_or_default(),
                prev,
                revision,
            },
        }))
    }
}
