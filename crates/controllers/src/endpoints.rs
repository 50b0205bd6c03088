//! The Endpoints and EndpointSlice controllers: a Service's selector to the addresses and ports
//! of the pods it selects, as kube-controller-manager's `endpoint` and `endpointslice`
//! controllers do.
//!
//! One [`kube::runtime::Controller`] per kind of output, keyed by Service, watching Pods
//! through a mapper that finds the Services selecting a pod (and those that selected it before
//! its labels changed). A pod is included when it has an IP and has not ended; its ports are
//! the Service ports' `targetPort`s, resolved by number or by the container port's name (a
//! pod without a named port is left out of that port's group). Pods that are Ready (or all,
//! with `publishNotReadyAddresses`) are `addresses`, the others `notReadyAddresses`; in
//! EndpointSlices the `ready`/`serving`/`terminating` conditions say the same, terminating pods
//! stay in slices (not in Endpoints), and a slice holds at most
//! [`EndpointsConfig::max_endpoints_per_slice`] endpoints. Slices carry the
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by` labels; both
//! outputs are owned by their Service, so the garbage collector removes them with it.
//! Services without a selector are left alone (their Endpoints are the user's).
//!
//! Under a [`crate::ControllerManager`] ([`ENDPOINTS_SPEC`], [`ENDPOINTSLICE_SPEC`]) both read
//! the manager's shared Service and Pod caches (pods by namespace from its index); standalone
//! ([`run_endpoints`], [`run_endpoint_slices`]) each keeps its own watches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Label naming the Service of an EndpointSlice.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's `managed-by` value (kube-controller-manager's).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Label on the Endpoints of a headless Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// Settings of the Endpoints and EndpointSlice controllers.
#[derive(Debug, Clone)]
pub struct EndpointsConfig {
    /// Most endpoints in one EndpointSlice (`--max-endpoints-per-slice`, 100).
    pub max_endpoints_per_slice: usize,
    /// Requeue delay after a failed reconcile.
    pub retry: Duration,
}

impl Default for EndpointsConfig {
    fn default() -> Self {
        EndpointsConfig {
            max_endpoints_per_slice: 100,
            retry: Duration::from_millis(500),
        }
    }
}

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
#[error("writing endpoints")]
pub struct ReconcileError(#[source] kube::Error);

/// Where the pods come from: the controller's own watch (standalone), or the manager's shared
/// cache (under a [`crate::ControllerManager`], no second pod watch).
enum Pods {
    Own(Store<Pod>),
    Shared(crate::runtime::Index<Pod>),
}

impl Pods {
    fn in_namespace(&self, ns: &str) -> Vec<Arc<Pod>> {
        match self {
            Pods::Own(store) => store
                .state()
                .into_iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
                .collect(),
            Pods::Shared(index) => index.in_namespace(ns),
        }
    }

    /// Waits for the first list (the manager syncs shared caches before running anything).
    async fn ready(&self) -> bool {
        match self {
            Pods::Own(store) => store.wait_until_ready().await.is_ok(),
            Pods::Shared(_) => true,
        }
    }
}

struct Ctx {
    client: Client,
    pods: Pods,
    config: EndpointsConfig,
}

/// A resolved endpoint port: (name, port, protocol, appProtocol).
type PortRef = (String, i32, String, Option<String>);

/// One selected pod, resolved against a Service.
#[derive(Debug, Clone)]
struct Member {
    ip: String,
    node: Option<String>,
    name: String,
    namespace: String,
    uid: String,
    hostname: Option<String>,
    ready: bool,
    serving: bool,
    terminating: bool,
    /// Resolved (name, port, protocol, appProtocol) for each service port the pod has.
    ports: Vec<PortRef>,
}

/// Whether `selector` (a Service's map) selects `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The port `sp.targetPort` means in `pod`, by number or by container port name.
fn target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

fn members(svc: &Service, pods: &Pods, include_terminating: bool) -> Option<Vec<Member>> {
    let spec = svc.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let ns = svc.namespace().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports: &[ServicePort] = spec.ports.as_deref().unwrap_or_default();
    let svc_name = svc.name_any();
    let mut out: Vec<Member> = pods
        .in_namespace(&ns)
        .iter()
        .filter(|p| selects(selector, p.labels()))
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                return None;
            }
            let terminating = p.metadata.deletion_timestamp.is_some();
            if terminating && !include_terminating && !publish {
                return None;
            }
            let ready = pod_ready(p);
            let pspec = p.spec.as_ref()?;
            let hostname = match (&pspec.hostname, &pspec.subdomain) {
                (Some(h), Some(sd)) if *sd == svc_name => Some(h.clone()),
                _ => None,
            };
            Some(Member {
                ip,
                node: pspec.node_name.clone(),
                name: p.name_any(),
                namespace: ns.clone(),
                uid: p.metadata.uid.clone().unwrap_or_default(),
                hostname,
                ready: publish || (ready && !terminating),
                serving: publish || ready,
                terminating,
                ports: ports
                    .iter()
                    .filter_map(|sp| {
                        Some((
                            sp.name.clone().unwrap_or_default(),
                            target_port(sp, p)?,
                            sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            sp.app_protocol.clone(),
                        ))
                    })
                    .collect(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.ip.cmp(&b.ip).then(a.name.cmp(&b.name)));
    Some(out)
}

/// Members sharing one resolved port set.
type PortGroup = (Vec<PortRef>, Vec<Member>);

/// Groups members by their resolved port set (pods of one Service may name ports differently).
fn by_ports(members: Vec<Member>) -> Vec<(Vec<PortRef>, Vec<Member>)> {
    let mut groups: Vec<PortGroup> = Vec::new();
    for m in members {
        match groups.iter_mut().find(|(p, _)| *p == m.ports) {
            Some((_, v)) => v.push(m),
            None => groups.push((m.ports.clone(), vec![m])),
        }
    }
    groups
}

fn owner(svc: &Service) -> Value {
    json!([{
        "apiVersion": "v1", "kind": "Service", "name": svc.name_any(),
        "uid": svc.uid().unwrap_or_default(),
        "controller": true, "blockOwnerDeletion": true,
    }])
}

fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn target_ref(m: &Member) -> Value {
    json!({"kind": "Pod", "namespace": m.namespace, "name": m.name, "uid": m.uid})
}

/// The Endpoints object for `svc` (`None` when the Service has no selector).
fn desired_endpoints(svc: &Service, pods: &Pods) -> Option<Value> {
    let members = members(svc, pods, false)?;
    let has_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|p| !p.is_empty());
    let subsets: Vec<Value> = by_ports(members)
        .into_iter()
        .filter(|(ports, _)| !ports.is_empty() || !has_ports)
        .map(|(ports, ms)| {
            let addr = |m: &Member| {
                let mut a = json!({"ip": m.ip, "targetRef": target_ref(m)});
                if let Some(n) = &m.node {
                    a["nodeName"] = json!(n);
                }
                if let Some(h) = &m.hostname {
                    a["hostname"] = json!(h);
                }
                a
            };
            let ready: Vec<Value> = ms.iter().filter(|m| m.ready).map(addr).collect();
            let not_ready: Vec<Value> = ms.iter().filter(|m| !m.ready).map(addr).collect();
            let mut s = json!({});
            if !ready.is_empty() {
                s["addresses"] = Value::Array(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = Value::Array(not_ready);
            }
            if !ports.is_empty() {
                s["ports"] = Value::Array(
                    ports
                        .iter()
                        .map(|(name, port, proto, app)| {
                            let mut p = json!({"port": port, "protocol": proto});
                            if !name.is_empty() {
                                p["name"] = json!(name);
                            }
                            if let Some(a) = app {
                                p["appProtocol"] = json!(a);
                            }
                            p
                        })
                        .collect(),
                );
            }
            s
        })
        .collect();
    let mut labels: BTreeMap<String, String> = svc.labels().clone();
    if headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    Some(json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": svc.name_any(),
            "namespace": svc.namespace(),
            "labels": labels,
            "ownerReferences": owner(svc),
        },
        "subsets": subsets,
    }))
}

/// The EndpointSlices for `svc`, at most `max` endpoints each (no names yet).
fn desired_slices(svc: &Service, pods: &Pods, max: usize) -> Option<Vec<Value>> {
    let members = members(svc, pods, true)?;
    let mut labels: BTreeMap<String, String> = svc.labels().clone();
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    if headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    let mut slices = Vec::new();
    for (ports, ms) in by_ports(members) {
        for chunk in ms.chunks(max.max(1)) {
            let endpoints: Vec<Value> = chunk
                .iter()
                .map(|m| {
                    let mut e = json!({
                        "addresses": [m.ip],
                        "conditions": {"ready": m.ready, "serving": m.serving, "terminating": m.terminating},
                        "targetRef": target_ref(m),
                    });
                    if let Some(n) = &m.node {
                        e["nodeName"] = json!(n);
                    }
                    if let Some(h) = &m.hostname {
                        e["hostname"] = json!(h);
                    }
                    e
                })
                .collect();
            slices.push(slice_body(svc, &labels, &ports, endpoints));
        }
    }
    if slices.is_empty() {
        // An empty slice says "no endpoints" (Kubernetes keeps one, with the Service's ports).
        let ports: Vec<PortRef> = Vec::new();
        slices.push(slice_body(svc, &labels, &ports, Vec::new()));
    }
    Some(slices)
}

fn slice_body(
    svc: &Service,
    labels: &BTreeMap<String, String>,
    ports: &[PortRef],
    endpoints: Vec<Value>,
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, port, proto, app)| {
            let mut p = json!({"name": name, "port": port, "protocol": proto});
            if let Some(a) = app {
                p["appProtocol"] = json!(a);
            }
            p
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "generateName": format!("{}-", svc.name_any()),
            "namespace": svc.namespace(),
            "labels": labels,
            "ownerReferences": owner(svc),
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

async fn reconcile_endpoints(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    // Never write from a pod cache that has not listed yet.
    if !ctx.pods.ready().await {
        return Ok(Action::await_change());
    }
    let Some(desired) = desired_endpoints(&svc, &ctx.pods) else {
        return Ok(Action::await_change());
    };
    let ns = svc.namespace().unwrap_or_default();
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let current = api.get_opt(&svc.name_any()).await.map_err(ReconcileError)?;
    match current {
        None => {
            let ep: Endpoints = serde_json::from_value(desired)
                .map_err(|e| ReconcileError(kube::Error::SerdeError(e)))?;
            match api.create(&PostParams::default(), &ep).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Ok(Action::requeue(Duration::from_millis(50)));
                }
                Err(e) => return Err(ReconcileError(e)),
            }
        }
        Some(cur) => {
            let cur_v = serde_json::to_value(&cur).unwrap_or_default();
            let same = cur_v.get("subsets").cloned().unwrap_or(json!([])) == desired["subsets"]
                && cur_v
                    .pointer("/metadata/labels")
                    .cloned()
                    .unwrap_or(json!({}))
                    == desired["metadata"]["labels"];
            if !same {
                let patch = json!({
                    "metadata": {
                        "resourceVersion": cur.resource_version(),
                        "labels": desired["metadata"]["labels"],
                    },
                    "subsets": desired["subsets"],
                });
                match api
                    .patch(
                        &svc.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        return Ok(Action::requeue(Duration::from_millis(50)));
                    }
                    Err(e) => return Err(ReconcileError(e)),
                }
            }
        }
    }
    Ok(Action::await_change())
}

/// What a slice says, for comparison (its endpoints, ports, labels).
fn slice_content(v: &Value) -> (Value, Value, Value) {
    (
        v.get("endpoints").cloned().unwrap_or(json!([])),
        v.get("ports").cloned().unwrap_or(json!([])),
        v.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
    )
}

async fn reconcile_slices(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    // Never write from a pod cache that has not listed yet.
    if !ctx.pods.ready().await {
        return Ok(Action::await_change());
    }
    let Some(desired) = desired_slices(&svc, &ctx.pods, ctx.config.max_endpoints_per_slice) else {
        return Ok(Action::await_change());
    };
    let ns = svc.namespace().unwrap_or_default();
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&format!(
        "{SERVICE_NAME_LABEL}={},{MANAGED_BY_LABEL}={MANAGED_BY}",
        svc.name_any()
    ));
    let mut current = api.list(&lp).await.map_err(ReconcileError)?.items;
    current.sort_by_key(|s| s.name_any());
    let mut current: Vec<Value> = current
        .iter()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .collect();
    // Keep the slices that already say what is wanted; rewrite the others in place.
    let mut todo: Vec<Value> = Vec::new();
    for want in desired {
        let content = slice_content(&want);
        if let Some(i) = current.iter().position(|c| slice_content(c) == content) {
            current.remove(i);
        } else {
            todo.push(want);
        }
    }
    for want in todo {
        let result = if let Some(old) = current.pop() {
            let name = old
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let patch = json!({
                "metadata": {
                    "resourceVersion": old.pointer("/metadata/resourceVersion"),
                    "labels": want["metadata"]["labels"],
                },
                "endpoints": want["endpoints"],
                "ports": want["ports"],
            });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| ())
        } else {
            match serde_json::from_value::<EndpointSlice>(want) {
                Ok(s) => api.create(&PostParams::default(), &s).await.map(|_| ()),
                Err(e) => Err(kube::Error::SerdeError(e)),
            }
        };
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                return Ok(Action::requeue(Duration::from_millis(50)));
            }
            Err(e) => return Err(ReconcileError(e)),
        }
    }
    for old in current {
        let name = old
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(ReconcileError(e)),
        }
    }
    Ok(Action::await_change())
}

/// Maps a pod to the Services that select it now or selected it at its previous sighting.
fn pod_mapper(
    services: Store<Service>,
) -> impl Fn(&Pod) -> Vec<ObjectRef<Service>> + Send + Sync + 'static {
    let last: Mutex<HashMap<String, HashSet<ObjectRef<Service>>>> = Mutex::new(HashMap::new());
    move |pod: &Pod| {
        let ns = pod.namespace().unwrap_or_default();
        let now: HashSet<ObjectRef<Service>> = services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
            .filter(|s| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.selector.as_ref())
                    .is_some_and(|sel| selects(sel, pod.labels()))
            })
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut last = last.lock();
        let mut all = now.clone();
        if let Some(before) = last.get(&uid) {
            all.extend(before.iter().cloned());
        }
        if now.is_empty() {
            last.remove(&uid);
        } else {
            last.insert(uid, now);
        }
        all.into_iter().collect()
    }
}

/// Which output a controller writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Endpoints,
    Slices,
}

async fn run(client: Client, config: EndpointsConfig, output: Output) {
    // One pod watch feeds both the cache the reconciles read and the trigger: an event is in
    // the cache before the reconcile it causes runs.
    let (pods, writer) = kube::runtime::reflector::store();
    let pod_events = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects();
    let services: Api<Service> = Api::all(client.clone());
    let controller = Controller::new(services, watcher::Config::default().any_semantic());
    let mapper = pod_mapper(controller.store());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods: Pods::Own(pods),
        config,
    });
    let controller = controller.watches_stream(pod_events, move |p: Pod| mapper(&p));
    drive_output(controller, ctx, output).await
}

/// Runs the controller on the manager's shared caches: its Services and pods come from the
/// process-wide watches (no watch of its own).
fn run_shared(
    ctx: &crate::runtime::Context,
    config: EndpointsConfig,
    output: Output,
) -> futures::future::BoxFuture<'static, ()> {
    let services = ctx.informers.reader::<Service>();
    let mapper = pod_mapper(services.clone());
    let controller = Controller::for_shared_stream(ctx.informers.subscribe::<Service>(), services)
        .watches_shared_stream(ctx.informers.subscribe::<Pod>(), move |p: Arc<Pod>| {
            mapper(&p)
        });
    let state = Arc::new(Ctx {
        client: ctx.client.clone(),
        pods: Pods::Shared(ctx.informers.index::<Pod>()),
        config,
    });
    let stop = ctx.shutdown.clone();
    Box::pin(async move {
        tokio::select! {
            () = drive_output(controller, state, output) => {}
            () = stop.cancelled() => {}
        }
    })
}

async fn drive_output(controller: Controller<Service>, ctx: Arc<Ctx>, output: Output) {
    let retry = ctx.config.retry;
    let error_policy = move |_: Arc<Service>, e: &ReconcileError, _: Arc<Ctx>| {
        tracing::debug!(error = %e, "endpoints reconcile failed");
        Action::requeue(retry)
    };
    match output {
        Output::Endpoints => {
            controller
                .run(reconcile_endpoints, error_policy, ctx)
                .for_each(|_| futures::future::ready(()))
                .await
        }
        Output::Slices => {
            controller
                .run(reconcile_slices, error_policy, ctx)
                .for_each(|_| futures::future::ready(()))
                .await
        }
    }
}

/// Runs the Endpoints controller until dropped.
pub async fn run_endpoints(client: Client, config: EndpointsConfig) {
    run(client, config, Output::Endpoints).await
}

/// Runs the EndpointSlice controller until dropped.
pub async fn run_endpoint_slices(client: Client, config: EndpointsConfig) {
    run(client, config, Output::Slices).await
}

fn start_endpoints(ctx: &crate::runtime::Context) -> futures::future::BoxFuture<'static, ()> {
    run_shared(ctx, EndpointsConfig::default(), Output::Endpoints)
}

fn start_slices(ctx: &crate::runtime::Context) -> futures::future::BoxFuture<'static, ()> {
    run_shared(ctx, EndpointsConfig::default(), Output::Slices)
}

/// The [`crate::ControllerSpec`] of the Endpoints controller (`endpoint`).
pub const ENDPOINTS_SPEC: crate::ControllerSpec = crate::ControllerSpec {
    name: "endpoint",
    start: start_endpoints,
};

/// The [`crate::ControllerSpec`] of the EndpointSlice controller (`endpointslice`).
pub const ENDPOINTSLICE_SPEC: crate::ControllerSpec = crate::ControllerSpec {
    name: "endpointslice",
    start: start_slices,
};
