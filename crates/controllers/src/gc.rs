//! The garbage collector: deletes objects whose owners are gone, and carries out Foreground and
//! Orphan deletion, following `metadata.ownerReferences` as Kubernetes' garbage collector does.
//!
//! The API server's part (already there): a DELETE with `propagationPolicy: Foreground` or
//! `Orphan` of an object that has dependents only marks it (deletionTimestamp) and adds the
//! `foregroundDeletion` or `orphan` finalizer; a Background (default) DELETE removes it at once.
//! This controller's part, on every change to any cached kind (debounced), over the graph of
//! owner references built from the shared caches:
//! - **Orphan**: an owner being deleted with the `orphan` finalizer has its reference removed
//!   from every dependent, then loses the finalizer (and is gone);
//! - **Foreground**: an owner being deleted with `foregroundDeletion` has its dependents deleted
//!   (themselves in the foreground when they have dependents); once no dependent with
//!   `blockOwnerDeletion: true` is left, it loses the finalizer;
//! - **Background**: an object whose owners are all gone (checked with a live GET, since the
//!   cache of another kind may lag) is deleted; one with some owners gone keeps the others and
//!   loses the dangling references.

use std::collections::HashMap;
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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::runtime::reflector::Store;
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
    snapshot: Box<dyn Fn() -> Vec<GraphNode> + Send + Sync>,
}

fn kind<K>(
    ctx: &Context,
    index: usize,
    namespaced: bool,
) -> (Kind, impl Stream<Item = ()> + Send + 'static)
where
    K: Cached,
{
    let store: Store<K> = ctx.informers.reader::<K>();
    let trigger = ctx.informers.subscribe::<K>().map(|_| ());
    let k = Kind {
        ar: ApiResource::erase::<K>(&()),
        namespaced,
        snapshot: Box::new(move || {
            store
                .state()
                .iter()
                .map(|o| {
                    let m = o.meta();
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
                })
                .collect()
        }),
    };
    (k, trigger)
}

/// Builds the garbage collector on `ctx` (see [`crate::manager::ControllerSpec`]).
pub fn start(ctx: &Context) -> BoxFuture<'static, ()> {
    let mut kinds = Vec::new();
    let mut triggers = Vec::new();
    macro_rules! follow {
        ($($t:ty => $ns:expr),* $(,)?) => {$(
            let (k, t) = kind::<$t>(ctx, kinds.len(), $ns);
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
        kinds,
    });
    let notify = Arc::new(Notify::new());
    let stop = ctx.shutdown.clone();
    let wake = notify.clone();
    Box::pin(async move {
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
            () = stop.cancelled() => {}
        }
    })
}

struct Collector {
    client: Client,
    kinds: Vec<Kind>,
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
        let k = &self.kinds[kind];
        match namespace {
            Some(ns) if k.namespaced => Api::namespaced_with(self.client.clone(), ns, &k.ar),
            _ => Api::all_with(self.client.clone(), &k.ar),
        }
    }

    fn kind_of(&self, r: &OwnerReference) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.ar.kind == r.kind && k.ar.api_version == r.api_version)
    }

    /// One pass over the graph; true if it changed anything.
    async fn scan(&self) -> bool {
        let nodes: HashMap<String, GraphNode> = self
            .kinds
            .iter()
            .flat_map(|k| (k.snapshot)())
            .map(|n| (n.uid.clone(), n))
            .collect();
        let mut dependents: HashMap<&str, Vec<&GraphNode>> = HashMap::new();
        for n in nodes.values() {
            for r in &n.owners {
                dependents.entry(r.uid.as_str()).or_default().push(n);
            }
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
                tracing::debug!(kind = %self.kinds[n.kind].ar.kind, name = %n.name, "collected");
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
