//! One shared cache per kind for every controller in a process, in the shape of client-go's
//! `SharedInformerFactory`: a single watch per kind feeds a kube-runtime reflector
//! [`Store`], and each controller gets its own
//! [`ReflectHandle`] (kube-runtime's `store_shared` fan-out) as its trigger stream.
//!
//! Subscriptions are taken while controllers are built; [`Informers::start`] then spawns one
//! watch per kind. A controller must not act before the caches it reads are synced, so the
//! manager waits for [`Informers::wait_synced`] before running any reconcile.

use std::any::{Any, TypeId};
use std::collections::HashMap;
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
                    .and_then(|e| Some((e.writer.take()?, e.deletes.clone())));
                let Some((writer, deletes)) = taken else { return };
                let api: Api<K> = Api::all(client);
                let stream = watcher(api, watcher::Config::default())
                    .default_backoff()
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
