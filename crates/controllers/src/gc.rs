//! The garbage collector: deletes objects whose owners are gone, and carries out Foreground and
//! Orphan deletion, following `metadata.ownerReferences` as Kubernetes' garbage collector does.
//!
//! The API server's part (already there): a DELETE with `propagationPolicy: Foreground` or
//! `Orphan` of an object that has dependents only marks it (deletionTimestamp) and adds the
//! `foregroundDeletion` or `orphan` finalizer; a Background (default) DELETE removes it at once.
//! This controller's part, over the graph of owner references built from the shared caches,
//! whenever a change can matter (an owner being deleted with a finalizer of ours, the deletion
//! of an object someone refers to as owner, a change to a dependent of a finalizing owner;
//! debounced) and every 5 s in any case; a pod created under a living owner costs no scan,
//! which matters at 10,000 pods:
//! - **Orphan**: an owner being deleted with the `orphan` finalizer has its reference removed
//!   from every dependent, then loses the finalizer (and is gone);
//! - **Foreground**: an owner being deleted with `foregroundDeletion` has its dependents deleted
//!   (themselves in the foreground when they have dependents); once no dependent with
//!   `blockOwnerDeletion: true` is left, it loses the finalizer;
//! - **Background**: an object whose owners are all gone (checked with a live GET, since the
//!   cache of another kind may lag) is deleted; one with some owners gone keeps the others and
//!   loses the dangling references.
//!
//! Which kinds: every resource the API server's discovery lists with `list`, `watch` and
//! `delete` (custom resources included), looked up at start and again every 30 s (a CRD added
//! later is followed from then on, at once when its CustomResourceDefinition shows on the
//! watch), as Kubernetes' collector does. The built-in kinds the
//! other controllers cache already are read from the shared caches; every other kind gets its
//! own watch here. Events are left out (they are many and nobody owns them).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Notify;

use crate::error::is_not_found;
use crate::runtime::{Cached, Context};

/// The finalizer that holds an owner until its dependents are deleted.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer that holds an owner until its dependents no longer refer to it.
pub const ORPHAN: &str = "orphan";

/// One object of the graph: where it is and how it relates.
#[derive(Debug, Clone)]
struct GraphNode {
    kind: usize,
    namespace: Option<String>,
    name: String,
    uid: String,
    resource_version: Option<String>,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

/// A kind the collector follows: its API resource, whether namespaced, and a snapshot of its
/// cache.
struct Kind {
    ar: ApiResource,
    namespaced: bool,
    snapshot: Box<dyn Fn(usize) -> Vec<GraphNode> + Send + Sync>,
}

fn graph_node(index: usize, m: &ObjectMeta) -> GraphNode {
    GraphNode {
        kind: index,
        namespace: m.namespace.clone(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        resource_version: m.resource_version.clone(),
        owners: m.owner_references.clone().unwrap_or_default(),
        deleting: m.deletion_timestamp.is_some(),
        finalizers: m.finalizers.clone().unwrap_or_default(),
    }
}

/// Which changes are worth a scan. A pod created or updated under a living owner changes
/// nothing for the collector; what does: an object being deleted with one of our finalizers,
/// the deletion of an object someone refers to as owner, and any change to a dependent of an
/// owner being deleted in the foreground. Rebuilt at every scan, added to between scans.
#[derive(Debug, Default)]
struct Interest {
    /// Uids named in some ownerReference.
    referenced: HashSet<String>,
    /// Uids of owners being deleted in the foreground or with orphaning.
    finalizing: HashSet<String>,
}

impl Interest {
    fn wants(&mut self, meta: &ObjectMeta, gone: bool) -> bool {
        let owners = meta.owner_references.iter().flatten();
        let uid = meta.uid.as_deref().unwrap_or("");
        let finalizing = meta.deletion_timestamp.is_some()
            && meta
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == FOREGROUND || f == ORPHAN);
        if finalizing {
            self.finalizing.insert(uid.to_owned());
            return true;
        }
        let mut wanted = gone && self.referenced.contains(uid);
        for r in owners {
            wanted |= self.finalizing.contains(&r.uid);
            if !gone && !self.referenced.contains(&r.uid) {
                self.referenced.insert(r.uid.clone());
            }
        }
        wanted
    }
}

fn kind<K>(
    ctx: &Context,
    namespaced: bool,
    interest: Arc<parking_lot::Mutex<Interest>>,
) -> (Kind, impl Stream<Item = ()> + Send + 'static)
where
    K: Cached,
{
    let store: Store<K> = ctx.informers.reader::<K>();
    let lookup = store.clone();
    let trigger = ctx.informers.subscribe::<K>().filter_map(move |obj| {
        let meta = obj.meta();
        // Deletions come on the same stream, once the cache dropped the object.
        let gone = lookup
            .get(&ObjectRef::from_obj(&*obj))
            .is_none_or(|now| now.meta().uid != meta.uid);
        let wanted = interest.lock().wants(meta, gone);
        futures::future::ready(wanted.then_some(()))
    });
    let k = Kind {
        ar: ApiResource::erase::<K>(&()),
        namespaced,
        snapshot: Box::new(move |index| {
            store
                .state()
                .iter()
                .map(|o| graph_node(index, o.meta()))
                .collect()
        }),
    };
    (k, trigger)
}

/// A kind found by discovery that no shared cache holds: watched here, metadata only kept.
fn dynamic_kind(
    client: Client,
    ar: ApiResource,
    namespaced: bool,
    wake: Arc<Notify>,
    stop: tokio_util::sync::CancellationToken,
) -> Kind {
    let objects: Arc<parking_lot::RwLock<HashMap<String, ObjectMeta>>> = Arc::default();
    let writer = objects.clone();
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    tokio::spawn(async move {
        let mut relist: Option<HashMap<String, ObjectMeta>> = None;
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        loop {
            let ev = tokio::select! {
                ev = events.next() => ev,
                () = stop.cancelled() => return,
            };
            let Some(ev) = ev else { return };
            let Ok(ev) = ev else { continue };
            let uid = |o: &DynamicObject| o.metadata.uid.clone().unwrap_or_default();
            match ev {
                watcher::Event::Apply(o) => {
                    writer.write().insert(uid(&o), o.metadata);
                }
                watcher::Event::Delete(o) => {
                    writer.write().remove(&uid(&o));
                }
                watcher::Event::Init => relist = Some(HashMap::new()),
                watcher::Event::InitApply(o) => {
                    relist
                        .get_or_insert_with(HashMap::new)
                        .insert(uid(&o), o.metadata);
                }
                watcher::Event::InitDone => {
                    *writer.write() = relist.take().unwrap_or_default();
                }
            }
            wake.notify_one();
        }
    });
    Kind {
        ar,
        namespaced,
        snapshot: Box::new(move |index| {
            objects
                .read()
                .values()
                .map(|m| graph_node(index, m))
                .collect()
        }),
    }
}

/// How often discovery is asked again for new kinds.
const REDISCOVERY: Duration = Duration::from_secs(30);

/// Adds a watch for every listable, watchable, deletable kind discovery reports that the
/// collector does not follow yet.
async fn discover(gc: &Collector, wake: &Arc<Notify>, stop: &tokio_util::sync::CancellationToken) {
    let discovery = match Discovery::new(gc.client.clone()).run().await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "garbage collector: discovery failed");
            return;
        }
    };
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            let usable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| caps.supports_operation(v));
            if !usable || ar.kind == "Event" {
                continue;
            }
            let known = gc
                .kinds
                .read()
                .iter()
                .any(|k| k.ar.group == ar.group && k.ar.kind == ar.kind);
            if known {
                continue;
            }
            tracing::debug!(kind = %ar.kind, group = %ar.group, "garbage collector follows a discovered kind");
            let namespaced = caps.scope == Scope::Namespaced;
            let k = dynamic_kind(
                gc.client.clone(),
                ar,
                namespaced,
                wake.clone(),
                stop.clone(),
            );
            gc.kinds.write().push(k);
        }
    }
}

/// Builds the garbage collector on `ctx` (see [`crate::manager::ControllerSpec`]).
pub fn start(ctx: &Context) -> BoxFuture<'static, ()> {
    let mut kinds = Vec::new();
    let mut triggers = Vec::new();
    let interest: Arc<parking_lot::Mutex<Interest>> = Arc::default();
    macro_rules! follow {
        ($($t:ty => $ns:expr),* $(,)?) => {$(
            let (k, t) = kind::<$t>(ctx, $ns, interest.clone());
            kinds.push(k);
            triggers.push(t.boxed());
        )*};
    }
    follow!(
        Pod => true,
        ReplicaSet => true,
        Deployment => true,
        DaemonSet => true,
        StatefulSet => true,
        ControllerRevision => true,
        Job => true,
        CronJob => true,
        ConfigMap => true,
        Secret => true,
        Service => true,
        Endpoints => true,
        EndpointSlice => true,
        ServiceAccount => true,
        Lease => true,
        Node => false,
    );
    let gc = Arc::new(Collector {
        client: ctx.client.clone(),
        kinds: parking_lot::RwLock::new(kinds),
        interest,
    });
    let notify = Arc::new(Notify::new());
    let stop = ctx.shutdown.clone();
    let wake = notify.clone();
    let finder = gc.clone();
    let finder_wake = notify.clone();
    let finder_stop = stop.clone();
    Box::pin(async move {
        let rediscover = async move {
            // A CRD created or changed: look again at once (its kind may be served a moment
            // later, so twice).
            let crds: Api<CustomResourceDefinition> = Api::all(finder.client.clone());
            let mut changes = watcher(crds, watcher::Config::default())
                .default_backoff()
                .boxed();
            loop {
                discover(&finder, &finder_wake, &finder_stop).await;
                let changed = async {
                    loop {
                        match changes.next().await {
                            Some(Ok(watcher::Event::Apply(_))) => return,
                            Some(_) => {}
                            None => std::future::pending::<()>().await,
                        }
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(REDISCOVERY) => {}
                    () = changed => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        };
        let mut events = futures::stream::select_all(triggers);
        let pump = async move {
            while events.next().await.is_some() {
                wake.notify_one();
            }
        };
        let work = async move {
            loop {
                tokio::select! {
                    () = notify.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                // Let a burst of changes land before looking.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if gc.scan().await {
                    // Something was done; look again soon even if no event says so.
                    notify.notify_one();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        tokio::select! {
            () = pump => {}
            () = work => {}
            () = rediscover => {}
            () = stop.cancelled() => {}
        }
    })
}

struct Collector {
    client: Client,
    /// Only ever appended to: a [`GraphNode`]'s `kind` is an index into it.
    kinds: parking_lot::RwLock<Vec<Kind>>,
    interest: Arc<parking_lot::Mutex<Interest>>,
}

/// How a dependent sees one of its owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Exists and is not waiting for its dependents.
    Solid,
    /// Gone (or replaced by another object with the same name).
    Dangling,
    /// Being deleted in the foreground.
    Waiting,
}

impl Collector {
    fn api(&self, kind: usize, namespace: Option<&str>) -> Api<DynamicObject> {
        let kinds = self.kinds.read();
        let k = &kinds[kind];
        match namespace {
            Some(ns) if k.namespaced => Api::namespaced_with(self.client.clone(), ns, &k.ar),
            _ => Api::all_with(self.client.clone(), &k.ar),
        }
    }

    fn kind_of(&self, r: &OwnerReference) -> Option<usize> {
        self.kinds
            .read()
            .iter()
            .position(|k| k.ar.kind == r.kind && k.ar.api_version == r.api_version)
    }

    /// One pass over the graph; true if it changed anything.
    async fn scan(&self) -> bool {
        let nodes: HashMap<String, GraphNode> = self
            .kinds
            .read()
            .iter()
            .enumerate()
            .flat_map(|(i, k)| (k.snapshot)(i))
            .map(|n| (n.uid.clone(), n))
            .collect();
        let mut dependents: HashMap<&str, Vec<&GraphNode>> = HashMap::new();
        for n in nodes.values() {
            for r in &n.owners {
                dependents.entry(r.uid.as_str()).or_default().push(n);
            }
        }
        {
            let mut interest = self.interest.lock();
            interest.referenced = dependents.keys().map(|k| (*k).to_owned()).collect();
            interest.finalizing = nodes
                .values()
                .filter(|n| {
                    n.deleting && n.finalizers.iter().any(|f| f == FOREGROUND || f == ORPHAN)
                })
                .map(|n| n.uid.clone())
                .collect();
        }
        let mut acted = false;
        // Owners being deleted with a finalizer of ours.
        for owner in nodes.values().filter(|n| n.deleting) {
            let deps = dependents
                .get(owner.uid.as_str())
                .cloned()
                .unwrap_or_default();
            if owner.finalizers.iter().any(|f| f == ORPHAN) {
                acted = true;
                let mut all = true;
                for d in &deps {
                    let refs: Vec<_> = d
                        .owners
                        .iter()
                        .filter(|r| r.uid != owner.uid)
                        .cloned()
                        .collect();
                    all &= self.set_owners(d, refs).await;
                }
                if all {
                    self.drop_finalizer(owner, ORPHAN).await;
                }
            } else if owner.finalizers.iter().any(|f| f == FOREGROUND) {
                acted = true;
                for d in deps.iter().filter(|d| !d.deleting) {
                    let has_deps = dependents.contains_key(d.uid.as_str());
                    self.delete(d, has_deps).await;
                }
                let blocking = deps.iter().any(|d| {
                    d.owners
                        .iter()
                        .any(|r| r.uid == owner.uid && r.block_owner_deletion == Some(true))
                });
                if !blocking {
                    self.drop_finalizer(owner, FOREGROUND).await;
                }
            }
        }
        // Dependents whose owners are gone or going.
        let mut verified: HashMap<String, Owner> = HashMap::new();
        for n in nodes
            .values()
            .filter(|n| !n.owners.is_empty() && !n.deleting)
        {
            let mut classes = Vec::with_capacity(n.owners.len());
            for r in &n.owners {
                let class = match nodes.get(&r.uid) {
                    Some(o) if o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND) => {
                        Owner::Waiting
                    }
                    Some(_) => Owner::Solid,
                    None => match verified.get(&r.uid) {
                        Some(c) => *c,
                        None => {
                            let c = self.verify(n, r).await;
                            verified.insert(r.uid.clone(), c);
                            c
                        }
                    },
                };
                classes.push(class);
            }
            let solid = classes.contains(&Owner::Solid);
            if solid {
                if classes.iter().any(|c| *c != Owner::Solid) {
                    let keep: Vec<_> = n
                        .owners
                        .iter()
                        .zip(&classes)
                        .filter(|(_, c)| **c == Owner::Solid)
                        .map(|(r, _)| r.clone())
                        .collect();
                    acted = true;
                    self.set_owners(n, keep).await;
                }
            } else if classes.contains(&Owner::Waiting) {
                acted = true;
                self.delete(n, dependents.contains_key(n.uid.as_str()))
                    .await;
            } else {
                acted = true;
                self.delete(n, false).await;
            }
        }
        acted
    }

    /// Whether owner `r` of `n`, absent from the caches, really is gone.
    async fn verify(&self, n: &GraphNode, r: &OwnerReference) -> Owner {
        let Some(kind) = self.kind_of(r) else {
            // A kind we do not follow: never collect on its account.
            return Owner::Solid;
        };
        match self.api(kind, n.namespace.as_deref()).get(&r.name).await {
            Ok(o) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                let foreground = o
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == FOREGROUND);
                if o.metadata.deletion_timestamp.is_some() && foreground {
                    Owner::Waiting
                } else {
                    Owner::Solid
                }
            }
            Ok(_) => Owner::Dangling,
            Err(e) if is_not_found(&e) => Owner::Dangling,
            Err(e) => {
                tracing::debug!(error = %e, owner = %r.name, "cannot verify owner");
                Owner::Solid
            }
        }
    }

    async fn delete(&self, n: &GraphNode, foreground: bool) -> bool {
        let dp = DeleteParams {
            propagation_policy: Some(if foreground {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            }),
            preconditions: Some(Preconditions {
                uid: Some(n.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self
            .api(n.kind, n.namespace.as_deref())
            .delete(&n.name, &dp)
            .await
        {
            Ok(_) => {
                tracing::debug!(kind = %self.kinds.read()[n.kind].ar.kind, name = %n.name, "collected");
                true
            }
            Err(e) if is_not_found(&e) => true,
            Err(e) => {
                tracing::debug!(error = %e, name = %n.name, "cannot delete dependent");
                false
            }
        }
    }

    async fn set_owners(&self, n: &GraphNode, refs: Vec<OwnerReference>) -> bool {
        let patch =
            json!({"metadata": {"ownerReferences": refs, "resourceVersion": n.resource_version}});
        match self
            .api(n.kind, n.namespace.as_deref())
            .patch(&n.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => true,
            Err(e) => {
                tracing::debug!(error = %e, name = %n.name, "cannot update owner references");
                false
            }
        }
    }

    async fn drop_finalizer(&self, n: &GraphNode, finalizer: &str) {
        let left: Vec<&String> = n.finalizers.iter().filter(|f| *f != finalizer).collect();
        let patch =
            json!({"metadata": {"finalizers": left, "resourceVersion": n.resource_version}});
        if let Err(e) = self
            .api(n.kind, n.namespace.as_deref())
            .patch(&n.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            && !is_not_found(&e)
        {
            tracing::debug!(error = %e, name = %n.name, "cannot remove finalizer");
        }
    }
}
