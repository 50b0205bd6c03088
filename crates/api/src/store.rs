//! The state store: a revisioned key/value space with compare-and-swap and watch, in the model
//! etcd offers, so an embedded store and an etcd backend are interchangeable behind [`Store`].
//!
//! Every write bumps one global revision; each key remembers the revision of its last write
//! (`mod_revision`), which callers pass back as the precondition of an update or delete.
//! [`Typed`] layers Berth's object kinds on top (JSON values under `/registry/<Kind>/…`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc};

use crate::meta::{Object, is_valid_name, key, key_prefix};

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
    /// The key's revision is not the one the caller expected (someone else wrote it).
    #[error("{key} was modified: expected revision {expected}, found {found}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller passed.
        expected: u64,
        /// The key's current revision (0: absent).
        found: u64,
    },
    /// A watch asked for history the store no longer keeps.
    #[error("revision {requested} is compacted; oldest kept is {oldest}")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision still available.
        oldest: u64,
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
    /// The backend failed (network, disk).
    #[error("store backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `Result` with [`store::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A value and the revision that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value's bytes.
    pub value: Vec<u8>,
    /// Revision of the last write to this key.
    pub mod_revision: u64,
}

/// What a watcher sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or updated.
    Put(KeyValue),
    /// A key was deleted; `mod_revision` is the deleting revision, `value` the last value.
    Delete(KeyValue),
}

impl WatchEvent {
    /// The event's key/value.
    pub fn kv(&self) -> &KeyValue {
        match self {
            WatchEvent::Put(kv) | WatchEvent::Delete(kv) => kv,
        }
    }
}

/// A stream of [`WatchEvent`]s; ends (`None`) when the watcher fell too far behind or the store
/// closed, after which the caller re-lists and watches again.
#[derive(Debug)]
pub struct Watch {
    events: mpsc::Receiver<WatchEvent>,
}

impl Watch {
    /// Wraps a channel of events (for backends).
    pub fn new(events: mpsc::Receiver<WatchEvent>) -> Self {
        Watch { events }
    }

    /// The next event, in revision order.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.events.recv().await
    }
}

/// A revisioned key/value store with compare-and-swap and watch.
#[async_trait]
pub trait Store: Send + Sync {
    /// The value under `key`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key starting with `prefix`, sorted, and the store revision they were read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64)>;
    /// Writes `value` under `key` if its current `mod_revision` is `expected` (0: must be absent).
    /// Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, expected: Option<u64>) -> Result<u64>;
    /// Deletes `key` if its current revision is `expected` (any, when `None`). Returns the revision.
    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<u64>;
    /// Events for keys under `prefix` with revisions above `after_revision`.
    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<Watch>;
}

/// How many past events [`MemoryStore`] keeps for watches that start in the past.
const HISTORY: usize = 10_000;
/// Buffer of each watcher's channel; a watcher further behind is closed.
const WATCH_BUFFER: usize = 4096;

#[derive(Default)]
struct MemoryState {
    revision: u64,
    data: BTreeMap<String, KeyValue>,
    history: VecDeque<(u64, WatchEvent)>,
}

/// The embedded store: everything in memory, watch history bounded to the last 10 000 writes.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<MemoryState>>,
    events: broadcast::Sender<(u64, WatchEvent)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        MemoryStore {
            state: Arc::new(Mutex::new(MemoryState::default())),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, state: &mut MemoryState, event: WatchEvent) {
        let revision = state.revision;
        if state.history.len() == HISTORY {
            state.history.pop_front();
        }
        state.history.push_back((revision, event.clone()));
        // No receivers is fine: nobody watches.
        let _ = self.events.send((revision, event));
    }
}

fn check(key: &str, current: Option<&KeyValue>, expected: Option<u64>) -> Result<()> {
    let found = current.map_or(0, |kv| kv.mod_revision);
    match expected {
        Some(expected) if expected != found => Err(Error::Conflict {
            key: key.to_owned(),
            expected,
            found,
        }),
        _ => Ok(()),
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.lock().data.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64)> {
        let state = self.lock();
        let items = state
            .data
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok((items, state.revision))
    }

    async fn put(&self, key: &str, value: Vec<u8>, expected: Option<u64>) -> Result<u64> {
        let mut state = self.lock();
        check(key, state.data.get(key), expected)?;
        state.revision += 1;
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            mod_revision: state.revision,
        };
        state.data.insert(key.to_owned(), kv.clone());
        self.record(&mut state, WatchEvent::Put(kv));
        Ok(state.revision)
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<u64> {
        let mut state = self.lock();
        let Some(current) = state.data.get(key) else {
            return Err(Error::NotFound {
                key: key.to_owned(),
            });
        };
        check(key, Some(current), expected)?;
        let mut kv = state.data.remove(key).expect("checked above");
        state.revision += 1;
        kv.mod_revision = state.revision;
        self.record(&mut state, WatchEvent::Delete(kv));
        Ok(state.revision)
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<Watch> {
        // Subscribe under the lock, so no event falls between the replayed history and the live feed.
        let (backlog, mut live) = {
            let state = self.lock();
            let oldest = state
                .history
                .front()
                .map_or(state.revision + 1, |(r, _)| *r);
            if after_revision + 1 < oldest && after_revision < state.revision {
                return Err(Error::Compacted {
                    requested: after_revision,
                    oldest,
                });
            }
            let backlog: Vec<(u64, WatchEvent)> = state
                .history
                .iter()
                .filter(|(r, e)| *r > after_revision && e.kv().key.starts_with(prefix))
                .cloned()
                .collect();
            (backlog, self.events.subscribe())
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut last = after_revision;
            for (revision, event) in backlog {
                last = revision;
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            // A lagging receiver ends the watch: the caller must re-list.
            while let Ok((revision, event)) = live.recv().await {
                if revision <= last || !event.kv().key.starts_with(&prefix) {
                    continue;
                }
                last = revision;
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(Watch::new(rx))
    }
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

    #[tokio::test]
    async fn compare_and_swap() {
        let store = MemoryStore::new();
        let r1 = store.put("/a", b"1".to_vec(), Some(0)).await.unwrap();
        assert!(matches!(
            store.put("/a", b"x".to_vec(), Some(0)).await,
            Err(Error::Conflict { found, .. }) if found == r1
        ));
        let r2 = store.put("/a", b"2".to_vec(), Some(r1)).await.unwrap();
        assert!(r2 > r1);
        assert!(store.delete("/a", Some(r1)).await.is_err());
        store.delete("/a", Some(r2)).await.unwrap();
        assert!(store.get("/a").await.unwrap().is_none());
        assert!(matches!(
            store.delete("/a", None).await,
            Err(Error::NotFound { .. })
        ));
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

    #[tokio::test]
    async fn watch_replays_history_then_follows() {
        let store = MemoryStore::new();
        store.put("/p/a", b"1".to_vec(), None).await.unwrap();
        store.put("/q/x", b"1".to_vec(), None).await.unwrap();
        let mut watch = store.watch("/p/", 0).await.unwrap();
        store.put("/p/b", b"2".to_vec(), None).await.unwrap();
        store.delete("/p/a", None).await.unwrap();
        let keys: Vec<_> = [
            watch.next().await.unwrap(),
            watch.next().await.unwrap(),
            watch.next().await.unwrap(),
        ]
        .iter()
        .map(|e| (matches!(e, WatchEvent::Put(_)), e.kv().key.clone()))
        .collect();
        assert_eq!(
            keys,
            vec![
                (true, "/p/a".to_owned()),
                (true, "/p/b".to_owned()),
                (false, "/p/a".to_owned())
            ]
        );
    }

    proptest::proptest! {
        /// A store never loses an acknowledged write: after any sequence of puts and deletes,
        /// each key holds the last value acknowledged for it.
        #[test]
        fn never_loses_acknowledged_writes(ops in proptest::collection::vec((0u8..4, proptest::option::of(0u8..=255)), 1..60)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let store = MemoryStore::new();
                let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                for (k, v) in ops {
                    let key = format!("/k/{k}");
                    match v {
                        Some(v) => {
                            store.put(&key, vec![v], None).await.unwrap();
                            model.insert(key, vec![v]);
                        }
                        None => {
                            let result = store.delete(&key, None).await;
                            assert_eq!(result.is_ok(), model.remove(&key).is_some());
                        }
                    }
                }
                let (items, _) = store.list("/k/").await.unwrap();
                let got: BTreeMap<String, Vec<u8>> = items.into_iter().map(|kv| (kv.key, kv.value)).collect();
                assert_eq!(got, model);
            });
        }
    }
}
