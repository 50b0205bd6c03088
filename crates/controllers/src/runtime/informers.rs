//! One shared cache per kind for every controller in a process, in the shape of client-go's
//! `SharedInformerFactory`: a single watch per kind feeds a kube-runtime reflector
//! [`Store`], and each controller gets its own
//! [`ReflectHandle`] (kube-runtime's `store_shared` fan-out) as its trigger stream.
//!
//! A kind can also keep an [`Index`] (objects by namespace and by controller owner uid), so a
//! ReplicaSet with 10 pods among 10,000 looks at its 10, not at all of them, on every reconcile
//! (client-go's indexers). The index is updated from the watch events *before* the cache, so a
//! controller woken by the cache always finds at least as much in the index.
//!
//! Subscriptions are taken while controllers are built; [`Informers::start`] then spawns one
//! watch per kind. A controller must not act before the caches it reads are synced, so the
//! manager waits for [`Informers::wait_synced`] before running any reconcile.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// How many object references a kind's fan-out buffers for its slowest subscriber.
const FANOUT_BUFFER: usize = 4096;

/// The bounds a kind needs to be cached (every k8s-openapi type has them).
pub trait Cached:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}
impl<K> Cached for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

struct Entry<K: Cached> {
    reader: Store<K>,
    index: Option<Index<K>>,
    writer: Option<reflector::store::Writer<K>>,
    /// Deleted objects, after the cache dropped them: kube-runtime's shared streams carry
    /// applied objects only, so a controller would never hear that a pod or node went away.
    deletes: tokio::sync::broadcast::Sender<Arc<K>>,
}

type Starter = Box<dyn FnOnce(Client, CancellationToken) + Send>;

#[derive(Default)]
struct Inner {
    entries: HashMap<TypeId, Box<dyn Any + Send>>,
    starters: Vec<Starter>,
    waiters: Vec<Box<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>>,
    started: bool,
}

/// The shared caches of one process: one watch and one [`Store`] per kind.
#[derive(Clone)]
pub struct Informers {
    client: Client,
    inner: Arc<Mutex<Inner>>,
}

impl Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("Informers")
            .field("kinds", &inner.entries.len())
            .field("started", &inner.started)
            .finish()
    }
}

impl Informers {
    /// Caches for `client`; nothing is watched until [`start`](Self::start).
    pub fn new(client: Client) -> Self {
        Informers {
            client,
            inner: Arc::default(),
        }
    }

    fn with_entry<K: Cached, T>(&self, f: impl FnOnce(&mut Entry<K>) -> T) -> T {
        let mut inner = self.inner.lock();
        let id = TypeId::of::<K>();
        if !inner.entries.contains_key(&id) {
            if inner.started {
                tracing::warn!(
                    kind = K::kind(&()).as_ref(),
                    "kind first used after Informers::start: it is never watched"
                );
            }
            let (reader, writer) = reflector::store_shared::<K>(FANOUT_BUFFER);
            let ready = reader.clone();
            inner.waiters.push(Box::new(move || {
                let ready = ready.clone();
                Box::pin(async move {
                    let _ = ready.wait_until_ready().await;
                })
            }));
            inner.entries.insert(
                id,
                Box::new(Entry {
                    reader,
                    index: None,
                    writer: Some(writer),
                    deletes: tokio::sync::broadcast::channel(FANOUT_BUFFER).0,
                }),
            );
            let shared = self.inner.clone();
            inner.starters.push(Box::new(move |client, stop| {
                let taken = shared
                    .lock()
                    .entries
                    .get_mut(&id)
                    .and_then(|b| b.downcast_mut::<Entry<K>>())
                    .and_then(|e| Some((e.writer.take()?, e.deletes.clone(), e.index.clone())));
                let Some((writer, deletes, index)) = taken else { return };
                let api: Api<K> = Api::all(client);
                let stream = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .map(move |ev| {
                        if let (Some(index), Ok(ev)) = (&index, &ev) {
                            index.apply(ev);
                        }
                        ev
                    })
                    .reflect_shared(writer)
                    .for_each(move |ev| {
                        match ev {
                            Ok(watcher::Event::Delete(obj)) => {
                                let _ = deletes.send(Arc::new(obj));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::debug!(kind = K::kind(&()).as_ref(), error = %e, "watch error");
                            }
                        }
                        async {}
                    });
                tokio::spawn(async move {
                    tokio::select! {
                        () = stream => {}
                        () = stop.cancelled() => {}
                    }
                });
            }));
        }
        let entry = inner
            .entries
            .get_mut(&id)
            .and_then(|b| b.downcast_mut::<Entry<K>>())
            .expect("entry of this type");
        f(entry)
    }

    /// The shared cache of kind `K` (registering the kind if needed).
    pub fn reader<K: Cached>(&self) -> Store<K> {
        self.with_entry::<K, _>(|e| e.reader.clone())
    }

    /// The index of kind `K` by namespace and controller owner (registering the kind and
    /// turning its index on if needed). Take it before [`start`](Self::start).
    pub fn index<K: Cached>(&self) -> Index<K> {
        self.with_entry::<K, _>(|e| e.index.get_or_insert_with(Index::default).clone())
    }

    /// A trigger stream of kind `K` for one controller: every object the watch applies or
    /// deletes, once the cache holds the change. Take it before [`start`](Self::start).
    pub fn subscribe<K: Cached>(&self) -> BoxStream<'static, Arc<K>> {
        let (applied, deletes): (ReflectHandle<K>, _) = self.with_entry::<K, _>(|e| {
            (
                e.writer
                    .as_ref()
                    .and_then(|w| w.subscribe())
                    .expect("subscribe before Informers::start"),
                e.deletes.subscribe(),
            )
        });
        let deleted = futures::stream::unfold(deletes, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(obj) => return Some((obj, rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        futures::stream::select(applied, deleted).boxed()
    }

    /// Starts one watch per registered kind (all namespaces); each runs until `stop`.
    pub fn start(&self, stop: CancellationToken) {
        let mut inner = self.inner.lock();
        if inner.started {
            return;
        }
        inner.started = true;
        let starters = std::mem::take(&mut inner.starters);
        drop(inner);
        for s in starters {
            s(self.client.clone(), stop.clone());
        }
    }

    /// Waits until every registered kind has completed its first list.
    pub async fn wait_synced(&self) {
        let waits: Vec<_> = {
            let inner = self.inner.lock();
            inner.waiters.iter().map(|w| w()).collect()
        };
        futures::future::join_all(waits).await;
    }
}

type Key = (String, String);

struct IndexState<K> {
    all: HashMap<Key, Arc<K>>,
    /// Controller owner uid -> its objects.
    by_owner: HashMap<String, HashSet<Key>>,
    /// Namespace -> objects without a controller owner.
    orphans: HashMap<String, HashSet<Key>>,
    /// Namespace -> every object in it.
    by_namespace: HashMap<String, HashSet<Key>>,
    /// A relist in progress: the new contents, swapped in when it completes.
    relist: Option<Vec<K>>,
}

impl<K> Default for IndexState<K> {
    fn default() -> Self {
        IndexState {
            all: HashMap::new(),
            by_owner: HashMap::new(),
            orphans: HashMap::new(),
            by_namespace: HashMap::new(),
            relist: None,
        }
    }
}

/// Objects of one kind by name, namespace and controller owner, kept from the kind's watch.
/// Cloning shares it.
pub struct Index<K> {
    state: Arc<parking_lot::RwLock<IndexState<K>>>,
}

impl<K> Clone for Index<K> {
    fn clone(&self) -> Self {
        Index {
            state: self.state.clone(),
        }
    }
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Index {
            state: Arc::default(),
        }
    }
}

impl<K> Debug for Index<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("objects", &self.state.read().all.len())
            .finish()
    }
}

fn key_of<K: Resource>(obj: &K) -> Key {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

fn owner_of<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

impl<K: Cached> IndexState<K> {
    fn remove(&mut self, key: &Key) {
        let Some(old) = self.all.remove(key) else {
            return;
        };
        let from = match owner_of(&*old) {
            Some(uid) => self.by_owner.get_mut(uid),
            None => self.orphans.get_mut(&key.0),
        };
        if let Some(set) = from {
            set.remove(key);
        }
        if let Some(set) = self.by_namespace.get_mut(&key.0) {
            set.remove(key);
        }
    }

    fn insert(&mut self, obj: K) {
        let key = key_of(&obj);
        self.remove(&key);
        match owner_of(&obj) {
            Some(uid) => self.by_owner.entry(uid.to_owned()).or_default(),
            None => self.orphans.entry(key.0.clone()).or_default(),
        }
        .insert(key.clone());
        self.by_namespace
            .entry(key.0.clone())
            .or_default()
            .insert(key.clone());
        self.all.insert(key, Arc::new(obj));
    }
}

impl<K: Cached> Index<K> {
    fn apply(&self, ev: &watcher::Event<K>) {
        let mut st = self.state.write();
        match ev {
            watcher::Event::Apply(o) => st.insert(o.clone()),
            watcher::Event::Delete(o) => st.remove(&key_of(o)),
            watcher::Event::Init => st.relist = Some(Vec::new()),
            watcher::Event::InitApply(o) => st.relist.get_or_insert_with(Vec::new).push(o.clone()),
            watcher::Event::InitDone => {
                let objs = st.relist.take().unwrap_or_default();
                *st = IndexState::default();
                for o in objs {
                    st.insert(o);
                }
            }
        }
    }

    fn collect<'a>(st: &IndexState<K>, keys: impl Iterator<Item = &'a Key>) -> Vec<Arc<K>> {
        keys.filter_map(|k| st.all.get(k).cloned()).collect()
    }

    /// The object `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.state
            .read()
            .all
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The objects whose controller owner has uid `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        let st = self.state.read();
        st.by_owner
            .get(uid)
            .map(|s| Self::collect(&st, s.iter()))
            .unwrap_or_default()
    }

    /// The objects in `namespace` without a controller owner (candidates for adoption).
    pub fn orphans(&self, namespace: &str) -> Vec<Arc<K>> {
        let st = self.state.read();
        st.orphans
            .get(namespace)
            .map(|s| Self::collect(&st, s.iter()))
            .unwrap_or_default()
    }

    /// What a controller with uid `uid` may claim in `namespace`: its own objects and the
    /// orphans.
    pub fn claimable(&self, namespace: &str, uid: &str) -> Vec<Arc<K>> {
        let st = self.state.read();
        let own = st.by_owner.get(uid).into_iter().flatten();
        let orphans = st.orphans.get(namespace).into_iter().flatten();
        Self::collect(&st, own.chain(orphans))
    }

    /// Every object in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let st = self.state.read();
        st.by_namespace
            .get(namespace)
            .map(|s| Self::collect(&st, s.iter()))
            .unwrap_or_default()
    }

    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.state.read().all.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str, owner: Option<&str>) -> Pod {
        let refs = owner.map(|uid| {
            serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                "uid": uid, "controller": true}])
        });
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}"),
                "ownerReferences": refs},
        }))
        .unwrap()
    }

    fn names(v: Vec<Arc<Pod>>) -> Vec<String> {
        let mut n: Vec<String> = v.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        n.sort();
        n
    }

    #[test]
    fn the_index_follows_owners_deletions_and_relists() {
        let index: Index<Pod> = Index::default();
        index.apply(&watcher::Event::Apply(pod("a", Some("rs1"))));
        index.apply(&watcher::Event::Apply(pod("b", Some("rs1"))));
        index.apply(&watcher::Event::Apply(pod("c", None)));
        assert_eq!(names(index.owned_by("rs1")), ["a", "b"]);
        assert_eq!(names(index.orphans("ns")), ["c"]);
        assert_eq!(names(index.claimable("ns", "rs1")), ["a", "b", "c"]);
        // Released by its owner, adopted by another, deleted.
        index.apply(&watcher::Event::Apply(pod("b", None)));
        index.apply(&watcher::Event::Apply(pod("c", Some("rs2"))));
        assert_eq!(names(index.owned_by("rs1")), ["a"]);
        assert_eq!(names(index.orphans("ns")), ["b"]);
        assert_eq!(names(index.owned_by("rs2")), ["c"]);
        index.apply(&watcher::Event::Delete(pod("a", Some("rs1"))));
        assert!(index.owned_by("rs1").is_empty());
        assert_eq!(index.len(), 2);
        // A relist replaces everything once it is done.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(pod("d", Some("rs1"))));
        assert_eq!(index.len(), 2, "unchanged until InitDone");
        index.apply(&watcher::Event::InitDone);
        assert_eq!(names(index.in_namespace("ns")), ["d"]);
        assert_eq!(names(index.owned_by("rs1")), ["d"]);
        assert!(index.get("ns", "b").is_none());
    }
}
