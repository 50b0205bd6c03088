//! The node lifecycle controller: kube-controller-manager's `nodelifecycle` (and the orphan
//! half of `podgc`), on kube-runtime reflectors.
//!
//! Every [`NodeLifecycleConfig::node_monitor_period`] it looks at each Node's heartbeat (its
//! Lease in `kube-node-lease` and its Ready condition's `lastHeartbeatTime`, timed by this
//! controller's own clock when it sees them change, as Kubernetes does). A node not heard from
//! for [`NodeLifecycleConfig::node_monitor_grace_period`] gets its conditions set to
//! `Unknown`. A node whose Ready condition is not True gets the `node.kubernetes.io/unreachable`
//! (Unknown) or `node.kubernetes.io/not-ready` (False) taint with both `NoSchedule` and
//! `NoExecute` effects, and its pods are marked not Ready. Pods on a node with `NoExecute`
//! taints are evicted (deleted) once their toleration time has passed: a pod with no
//! toleration for `not-ready`/`unreachable` tolerates them for
//! [`NodeLifecycleConfig::default_toleration_seconds`], as the `DefaultTolerationSeconds`
//! admission plugin arranges; a pod that does not tolerate a taint at all goes at once. When
//! the node is Ready again the taints go. Pods bound to a node that no longer exists are
//! deleted with grace 0 after [`NodeLifecycleConfig::orphan_pod_quarantine`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// Taint key of a node whose Ready condition is False.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint key of a node whose Ready condition is Unknown (not heard from).
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// Timings of the node lifecycle controller (kube-controller-manager's flags).
#[derive(Debug, Clone)]
pub struct NodeLifecycleConfig {
    /// How often nodes are checked (`--node-monitor-period`, 5 s).
    pub node_monitor_period: Duration,
    /// How long a node may go without a heartbeat before it is `Unknown`
    /// (`--node-monitor-grace-period`, 50 s).
    pub node_monitor_grace_period: Duration,
    /// How long pods tolerate `not-ready`/`unreachable` when they say nothing about them
    /// (the `DefaultTolerationSeconds` admission plugin's 300 s).
    pub default_toleration_seconds: i64,
    /// How long a pod bound to a missing node waits before it is deleted (podgc's 40 s).
    pub orphan_pod_quarantine: Duration,
    /// Namespace of the node Leases.
    pub lease_namespace: String,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        NodeLifecycleConfig {
            node_monitor_period: Duration::from_secs(5),
            node_monitor_grace_period: Duration::from_secs(50),
            default_toleration_seconds: 300,
            orphan_pod_quarantine: Duration::from_secs(40),
            lease_namespace: "kube-node-lease".into(),
        }
    }
}

/// Heartbeats seen for one node, timed by this controller's clock.
#[derive(Debug)]
struct Health {
    lease_renew: Option<String>,
    ready_heartbeat: Option<String>,
    seen: Instant,
}

/// The node lifecycle controller; [`NodeLifecycleController::run`] runs it.
pub struct NodeLifecycleController {
    client: Client,
    config: NodeLifecycleConfig,
    health: HashMap<String, Health>,
    /// Pods already evicted or force-deleted (uid), so each is deleted once.
    deleted: HashSet<String>,
    /// Pods on missing nodes (uid -> first seen).
    orphans: HashMap<String, Instant>,
    /// Pods already marked not Ready (uid -> node Ready status at the time).
    marked: HashSet<String>,
}

impl std::fmt::Debug for NodeLifecycleController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLifecycleController")
            .field("config", &self.config)
            .field("nodes", &self.health.len())
            .finish_non_exhaustive()
    }
}

fn reflect<K>(api: Api<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .for_each(|_| futures::future::ready(()));
    tokio::spawn(stream);
    reader
}

/// The status of a node's Ready condition (`None` when it has none).
pub fn node_ready(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// Whether `toleration` tolerates `taint` (the API's matching rules).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    let op = toleration.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        return op == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match op {
        "Exists" => true,
        _ => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    }
}

/// How long `pod` may stay on a node with these `NoExecute` taints: `Some(None)` forever,
/// `Some(Some(s))` for `s` seconds after the taint was added, `None` not at all. Pods with no
/// toleration for `not-ready`/`unreachable` get `default_seconds` for those.
pub fn toleration_time(pod: &Pod, taint: &Taint, default_seconds: i64) -> Option<Option<i64>> {
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let mut best: Option<Option<i64>> = None;
    for t in tolerations.iter().filter(|t| tolerates(t, taint)) {
        best = match (best, t.toleration_seconds) {
            (Some(None), _) | (_, None) => Some(None),
            (Some(Some(a)), Some(b)) => Some(Some(a.max(b))),
            (None, Some(b)) => Some(Some(b)),
        };
    }
    if best.is_none() && (taint.key == TAINT_NOT_READY || taint.key == TAINT_UNREACHABLE) {
        // DefaultTolerationSeconds would have added this toleration at admission.
        let says_something = tolerations.iter().any(|t| {
            t.key.as_deref() == Some(taint.key.as_str())
                && t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "NoExecute")
        });
        if !says_something {
            best = Some(Some(default_seconds));
        }
    }
    best
}

fn now_time() -> Value {
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or(Value::Null)
}

fn age_seconds(t: Option<&Time>) -> i64 {
    t.map(|t| {
        k8s_openapi::jiff::Timestamp::now()
            .duration_since(t.0)
            .as_secs()
    })
    .unwrap_or(0)
}

impl NodeLifecycleController {
    /// A controller acting through `client`.
    pub fn new(client: Client, config: NodeLifecycleConfig) -> Self {
        NodeLifecycleController {
            client,
            config,
            health: HashMap::new(),
            deleted: HashSet::new(),
            orphans: HashMap::new(),
            marked: HashSet::new(),
        }
    }

    /// Watches Nodes, Leases and Pods and acts every monitor period, until dropped.
    pub async fn run(mut self) {
        let nodes = reflect(Api::<Node>::all(self.client.clone()));
        let leases = reflect(Api::<Lease>::namespaced(
            self.client.clone(),
            &self.config.lease_namespace,
        ));
        let pods = reflect(Api::<Pod>::all(self.client.clone()));
        for ready in [
            nodes.wait_until_ready().await,
            leases.wait_until_ready().await,
            pods.wait_until_ready().await,
        ] {
            if ready.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval(self.config.node_monitor_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.pass(&nodes, &leases, &pods).await;
        }
    }

    /// One look at every node and its pods.
    async fn pass(&mut self, nodes: &Store<Node>, leases: &Store<Lease>, pods: &Store<Pod>) {
        let now = Instant::now();
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for pod in pods.state() {
            if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                by_node.entry(n).or_default().push(pod);
            }
        }
        let node_list = nodes.state();
        let names: HashSet<String> = node_list.iter().map(|n| n.name_any()).collect();
        self.health.retain(|n, _| names.contains(n));
        for node in node_list {
            let name = node.name_any();
            let lease = leases.get(&ObjectRef::new(&name).within(&self.config.lease_namespace));
            let renew = lease
                .as_ref()
                .and_then(|l| l.spec.as_ref()?.renew_time.as_ref())
                .map(|t| t.0.to_string());
            let heartbeat = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .map(|t| t.0.to_string());
            let h = self.health.entry(name.clone()).or_insert(Health {
                lease_renew: renew.clone(),
                ready_heartbeat: heartbeat.clone(),
                seen: now,
            });
            if h.lease_renew != renew || h.ready_heartbeat != heartbeat {
                h.lease_renew = renew;
                h.ready_heartbeat = heartbeat;
                h.seen = now;
            }
            let stale = now.duration_since(h.seen) > self.config.node_monitor_grace_period;
            let mut ready = node_ready(&node).unwrap_or("Unknown").to_owned();
            if stale && ready != "Unknown" {
                match self.mark_unknown(&node).await {
                    Ok(()) => ready = "Unknown".into(),
                    Err(e) => tracing::debug!(node = %name, error = %e, "marking node Unknown"),
                }
            }
            let node_pods = by_node.remove(&name).unwrap_or_default();
            if let Err(e) = self.taint(&node, &ready).await {
                tracing::debug!(node = %name, error = %e, "tainting node");
            }
            if ready != "True" {
                self.mark_pods_not_ready(&node_pods).await;
            } else {
                for p in &node_pods {
                    if let Some(uid) = p.metadata.uid.as_deref() {
                        self.marked.remove(uid);
                    }
                }
            }
            self.evict(&node, &node_pods).await;
        }
        // Pods bound to nodes that do not exist.
        let mut seen_orphans = HashSet::new();
        for (node, pods) in by_node {
            for pod in pods {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                seen_orphans.insert(uid.clone());
                let first = *self.orphans.entry(uid.clone()).or_insert(now);
                if now.duration_since(first) < self.config.orphan_pod_quarantine
                    || self.deleted.contains(&uid)
                {
                    continue;
                }
                // The cache may lag: ask the server whether the node is really gone.
                let nodes_api: Api<Node> = Api::all(self.client.clone());
                if !matches!(nodes_api.get_opt(&node).await, Ok(None)) {
                    continue;
                }
                match self.delete_pod(&pod, Some(0)).await {
                    Ok(()) => {
                        self.deleted.insert(uid);
                    }
                    Err(e) => {
                        tracing::debug!(pod = %pod.name_any(), error = %e, "deleting orphan pod")
                    }
                }
            }
        }
        self.orphans.retain(|uid, _| seen_orphans.contains(uid));
        let live: HashSet<String> = pods
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        self.deleted.retain(|uid| live.contains(uid));
        self.marked.retain(|uid| live.contains(uid));
    }

    /// Sets every condition of a node not heard from to Unknown.
    async fn mark_unknown(&self, node: &Node) -> kube::Result<()> {
        let now = now_time();
        let conditions: Vec<Value> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let mut v = serde_json::to_value(&c).unwrap_or_else(|_| json!({}));
                if c.status != "Unknown" && c.type_ != "NetworkUnavailable" {
                    v["status"] = json!("Unknown");
                    v["reason"] = json!("NodeStatusUnknown");
                    v["message"] = json!("Kubelet stopped posting node status.");
                    v["lastTransitionTime"] = now.clone();
                }
                v
            })
            .collect();
        let conditions = if conditions.is_empty() {
            vec![json!({
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                "message": "Kubelet never posted node status.", "lastTransitionTime": now,
            })]
        } else {
            conditions
        };
        let api: Api<Node> = Api::all(self.client.clone());
        api.patch_status(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": node.resource_version()},
                "status": {"conditions": conditions},
            })),
        )
        .await?;
        Ok(())
    }

    /// Makes the node's `not-ready`/`unreachable` taints match its Ready status.
    async fn taint(&self, node: &Node, ready: &str) -> kube::Result<()> {
        let want_key = match ready {
            "True" => None,
            "False" => Some(TAINT_NOT_READY),
            _ => Some(TAINT_UNREACHABLE),
        };
        let current: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let ours = |t: &Taint| {
            (t.key == TAINT_NOT_READY || t.key == TAINT_UNREACHABLE)
                && (t.effect == "NoExecute" || t.effect == "NoSchedule")
        };
        let mut taints: Vec<Taint> = current
            .iter()
            .filter(|t| !ours(t) || Some(t.key.as_str()) == want_key)
            .cloned()
            .collect();
        if let Some(key) = want_key {
            for effect in ["NoSchedule", "NoExecute"] {
                if !taints.iter().any(|t| t.key == key && t.effect == effect) {
                    taints.push(Taint {
                        key: key.into(),
                        effect: effect.into(),
                        time_added: Some(Time(k8s_openapi::jiff::Timestamp::now())),
                        value: None,
                    });
                }
            }
        }
        if taints == current {
            return Ok(());
        }
        let api: Api<Node> = Api::all(self.client.clone());
        api.patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": node.resource_version()},
                "spec": {"taints": taints},
            })),
        )
        .await?;
        Ok(())
    }

    /// Sets Ready=False on the pods of a node that is not Ready (once per pod and outage).
    async fn mark_pods_not_ready(&mut self, pods: &[Arc<Pod>]) {
        let now = now_time();
        for pod in pods {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            let conditions = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            let ready = conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready || self.marked.contains(&uid) {
                continue;
            }
            let conditions: Vec<Value> = conditions
                .into_iter()
                .map(|c| {
                    let mut v = serde_json::to_value(&c).unwrap_or_else(|_| json!({}));
                    if c.type_ == "Ready" {
                        v["status"] = json!("False");
                        v["lastTransitionTime"] = now.clone();
                    }
                    v
                })
                .collect();
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            match api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"conditions": conditions}})),
                )
                .await
            {
                Ok(_) => {
                    self.marked.insert(uid);
                }
                Err(e) => {
                    tracing::debug!(pod = %pod.name_any(), error = %e, "marking pod not Ready")
                }
            }
        }
    }

    /// Deletes the pods whose toleration of the node's `NoExecute` taints has run out.
    async fn evict(&mut self, node: &Node, pods: &[Arc<Pod>]) {
        let taints: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        if taints.is_empty() {
            return;
        }
        for pod in pods {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() || self.deleted.contains(&uid) {
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let due = taints.iter().any(|taint| {
                match toleration_time(pod, taint, self.config.default_toleration_seconds) {
                    None => true,
                    Some(None) => false,
                    Some(Some(secs)) => age_seconds(taint.time_added.as_ref()) >= secs,
                }
            });
            if !due {
                continue;
            }
            match self.delete_pod(pod, None).await {
                Ok(()) => {
                    tracing::info!(pod = %pod.name_any(), node = %node.name_any(), "evicted pod from tainted node");
                    self.deleted.insert(uid);
                }
                Err(e) => tracing::debug!(pod = %pod.name_any(), error = %e, "evicting pod"),
            }
        }
    }

    async fn delete_pod(&self, pod: &Pod, grace: Option<i64>) -> kube::Result<()> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: grace.map(|g| g as u32),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Starts the controller with the default timings under a [`crate::ControllerManager`].
pub fn start(ctx: &crate::runtime::Context) -> futures::future::BoxFuture<'static, ()> {
    let controller =
        NodeLifecycleController::new(ctx.client.clone(), NodeLifecycleConfig::default());
    let stop = ctx.shutdown.clone();
    Box::pin(async move {
        tokio::select! {
            _ = controller.run() => {}
            _ = stop.cancelled() => {}
        }
    })
}

/// The [`crate::ControllerSpec`] of this controller (`nodelifecycle`).
pub const SPEC: crate::ControllerSpec = crate::ControllerSpec {
    name: "nodelifecycle",
    start,
};
