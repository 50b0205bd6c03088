//! Simulated nodes, in the manner of kwok's fake nodes: each registers a Node, renews a Lease in
//! `kube-node-lease`, and turns the pods bound to it Running and Ready with a pod IP; a pod
//! marked for deletion is removed with grace 0, as a kubelet does once its containers stopped.
//!
//! The whole fleet is one `Fleet`: one pod watch, one node watch and one heartbeat loop serve
//! every node, so 5,000 nodes cost a map entry each, not 5,000 watchers. Status writes go
//! through a bounded number of concurrent requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Namespace of the node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// Annotation every simulated Node carries (kwok uses `kwok.x-k8s.io/node: fake`).
pub const SIMULATED_ANNOTATION: &str = "berth.dev/simulated-node";

/// What every simulated node looks like and how often it heartbeats.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `status.capacity.cpu` (and allocatable), e.g. `"32"`.
    pub cpu: String,
    /// `status.capacity.memory`, e.g. `"256Gi"`.
    pub memory: String,
    /// `status.capacity.pods`: the most pods the node takes (kubelet's default is 110).
    pub pods: u32,
    /// Extra labels on every node (`kubernetes.io/hostname`, `kubernetes.io/os` and
    /// `kubernetes.io/arch` are always set).
    pub labels: Vec<(String, String)>,
    /// How often each node renews its Lease (kubelet: 10 s).
    pub heartbeat_interval: Duration,
    /// `spec.leaseDurationSeconds` of the Leases (kubelet: 40 s).
    pub lease_duration_seconds: i32,
    /// Node names are this prefix and a number (`node-0`, `node-1`, ...).
    pub name_prefix: String,
    /// Most status writes in flight at once, across the fleet.
    pub max_in_flight: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: 110,
            labels: Vec::new(),
            heartbeat_interval: Duration::from_secs(10),
            lease_duration_seconds: 40,
            name_prefix: "node-".into(),
            max_in_flight: 64,
        }
    }
}

#[derive(Debug)]
struct SimNode {
    ip: String,
    silent: bool,
}

#[derive(Debug, Default)]
struct PodRec {
    ip: String,
    /// A start (Running) write was issued for this pod.
    started: bool,
    /// The deleting write was issued.
    deleting: bool,
    /// Told not to be Ready (`set_ready(false)`).
    unready: bool,
    /// A readiness fix is in flight.
    fixing: bool,
}

/// The simulated nodes of one cluster and the loops that animate them.
pub(crate) struct Fleet {
    client: Client,
    config: NodeConfig,
    nodes: Mutex<HashMap<String, SimNode>>,
    pods: Mutex<HashMap<String, PodRec>>,
    next_node: AtomicU32,
    next_ip: AtomicU32,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("nodes", &self.nodes.lock().len())
            .finish_non_exhaustive()
    }
}

fn now_time() -> Value {
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or(Value::Null)
}

fn now_micro() -> Value {
    serde_json::to_value(MicroTime(k8s_openapi::jiff::Timestamp::now())).unwrap_or(Value::Null)
}

/// The n-th address of a /8-sized range starting at `base` (n >= 1), never ending in .0.
fn address(base: [u8; 4], n: u32) -> String {
    let v = u32::from_be_bytes(base).wrapping_add(n);
    let [a, b, c, d] = v.to_be_bytes();
    format!("{a}.{b}.{c}.{d}")
}

fn condition(ty: &str, status: bool, now: &Value) -> Value {
    json!({
        "type": ty,
        "status": if status { "True" } else { "False" },
        "lastProbeTime": null,
        "lastTransitionTime": now,
    })
}

fn is_ready(conditions: Option<&Vec<k8s_openapi::api::core::v1::PodCondition>>) -> Option<bool> {
    conditions?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status == "True")
}

impl Fleet {
    pub(crate) fn new(client: Client, config: NodeConfig) -> Arc<Self> {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        Arc::new(Fleet {
            client,
            config,
            nodes: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            next_node: AtomicU32::new(0),
            next_ip: AtomicU32::new(0),
            in_flight,
        })
    }

    fn node_object(&self, name: &str, ip: &str) -> Value {
        let mut labels = serde_json::Map::new();
        labels.insert("kubernetes.io/hostname".into(), json!(name));
        labels.insert("kubernetes.io/os".into(), json!("linux"));
        labels.insert("kubernetes.io/arch".into(), json!("amd64"));
        labels.insert("type".into(), json!("simulated"));
        for (k, v) in &self.config.labels {
            labels.insert(k.clone(), json!(v));
        }
        let resources = json!({
            "cpu": self.config.cpu,
            "memory": self.config.memory,
            "pods": self.config.pods.to_string(),
            "ephemeral-storage": "1Ti",
        });
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {SIMULATED_ANNOTATION: "true"},
            },
            "spec": {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": self.node_conditions(),
                "addresses": [
                    {"type": "InternalIP", "address": ip},
                    {"type": "Hostname", "address": name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": format!(
                        "v{}.{}.0-berth-sim",
                        berth_apiserver::KUBERNETES_VERSION.0,
                        berth_apiserver::KUBERNETES_VERSION.1
                    ),
                    "kubeProxyVersion": "",
                    "containerRuntimeVersion": "berth-sim://0.1.0",
                    "kernelVersion": "",
                    "osImage": "berth simulated node",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
                "phase": "Running",
            },
        })
    }

    fn node_conditions(&self) -> Value {
        let now = now_time();
        let c = |ty: &str, status: &str, reason: &str| {
            json!({
                "type": ty, "status": status, "reason": reason,
                "message": reason,
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            })
        };
        json!([
            c("Ready", "True", "KubeletReady"),
            c("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            c("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            c("PIDPressure", "False", "KubeletHasSufficientPID"),
            c("NetworkUnavailable", "False", "RouteCreated"),
        ])
    }

    /// Registers one more node (Node and Lease); returns its name.
    pub(crate) async fn add_node(&self) -> Result<String> {
        let index = self.next_node.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}{index}", self.config.name_prefix);
        let ip = address([172, 16, 0, 0], index + 1);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let body = self.node_object(&name, &ip);
        let node: Node = serde_json::from_value(body)
            .map_err(|e| Error::Invalid(format!("node object: {e}")))?;
        let created = match nodes.create(&PostParams::default(), &node).await {
            Ok(n) => n,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Re-registering over a durable store: the kubelet posts fresh status.
                nodes
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"conditions": self.node_conditions()}})),
                    )
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NODE_LEASE_NAMESPACE);
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "namespace": NODE_LEASE_NAMESPACE,
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": name,
                    "uid": created.uid().unwrap_or_default(),
                }],
            },
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": self.config.lease_duration_seconds,
                "renewTime": now_micro(),
            },
        }))
        .map_err(|e| Error::Invalid(format!("lease object: {e}")))?;
        match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => self.renew(&name).await?,
            Err(e) => return Err(e.into()),
        }
        self.nodes
            .lock()
            .insert(name.clone(), SimNode { ip, silent: false });
        Ok(name)
    }

    /// Registers `n` nodes, a few at a time.
    pub(crate) async fn add_nodes(&self, n: usize) -> Result<Vec<String>> {
        futures::stream::iter(0..n)
            .map(|_| self.add_node())
            .buffer_unordered(32)
            .try_collect()
            .await
    }

    pub(crate) fn node_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.nodes.lock().keys().cloned().collect();
        names.sort_by_key(|n| {
            n.strip_prefix(&self.config.name_prefix)
                .and_then(|i| i.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        names
    }

    pub(crate) fn has_node(&self, name: &str) -> bool {
        self.nodes.lock().contains_key(name)
    }

    async fn renew(&self, name: &str) -> Result<()> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NODE_LEASE_NAMESPACE);
        leases
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"renewTime": now_micro(), "holderIdentity": name}})),
            )
            .await?;
        Ok(())
    }

    /// Renews every live node's Lease once per heartbeat interval, spread over the interval.
    pub(crate) async fn heartbeat_loop(self: Arc<Self>) {
        const SLICES: u32 = 10;
        let slice = self.config.heartbeat_interval / SLICES;
        loop {
            let names: Vec<String> = self
                .nodes
                .lock()
                .iter()
                .filter(|(_, n)| !n.silent)
                .map(|(k, _)| k.clone())
                .collect();
            let per = names.len().div_ceil(SLICES as usize).max(1);
            let mut chunks = names.chunks(per);
            for _ in 0..SLICES {
                let started = tokio::time::Instant::now();
                if let Some(chunk) = chunks.next() {
                    let this = &self;
                    futures::stream::iter(chunk)
                        .for_each_concurrent(16, |name| async move {
                            // A node silenced meanwhile skips its beat.
                            if this.nodes.lock().get(name).is_some_and(|n| !n.silent)
                                && let Err(e) = this.renew(name).await
                            {
                                tracing::debug!(node = %name, error = %e, "lease renewal failed");
                            }
                        })
                        .await;
                }
                tokio::time::sleep_until(started + slice).await;
            }
        }
    }

    /// Watches every pod and acts for the ones bound to live simulated nodes.
    pub(crate) async fn pod_loop(self: Arc<Self>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let stream = watcher(api, watcher::Config::default().any_semantic());
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    self.clone().sync_pod(pod)
                }
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        self.pods.lock().remove(uid);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "pod watch failed, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Watches Nodes: a live simulated node whose Ready condition someone else changed posts
    /// Ready again (as a kubelet's status sync does); one deleted by someone else is forgotten.
    pub(crate) async fn node_loop(self: Arc<Self>) {
        let api: Api<Node> = Api::all(self.client.clone());
        let stream = watcher(api, watcher::Config::default().any_semantic());
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                    let name = node.name_any();
                    let live = self.nodes.lock().get(&name).is_some_and(|n| !n.silent);
                    let ready = node
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                        .is_some_and(|c| c.status == "True");
                    if live && !ready {
                        let this = self.clone();
                        tokio::spawn(async move {
                            let _permit = this.in_flight.acquire().await;
                            if let Err(e) = this.post_ready(&name).await {
                                tracing::debug!(node = %name, error = %e, "node status failed");
                            }
                        });
                    }
                }
                Ok(watcher::Event::Delete(node)) => {
                    self.nodes.lock().remove(&node.name_any());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "node watch failed, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn post_ready(&self, name: &str) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": self.node_conditions()}})),
            )
            .await?;
        Ok(())
    }

    /// Decides what a kubelet would do about `pod`, and does it in the background.
    fn sync_pod(self: Arc<Self>, pod: Pod) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let host_ip = match self.nodes.lock().get(&node) {
            Some(n) if !n.silent => n.ip.clone(),
            _ => return,
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        enum Work {
            Delete,
            Start(String),
            Ready(bool),
        }
        let work = {
            let mut pods = self.pods.lock();
            let rec = pods.entry(uid.clone()).or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                if rec.deleting {
                    return;
                }
                rec.deleting = true;
                Work::Delete
            } else {
                match phase {
                    Some("Succeeded" | "Failed") => return,
                    Some("Running") => {
                        let want = !rec.unready;
                        let ready =
                            is_ready(pod.status.as_ref().and_then(|s| s.conditions.as_ref()));
                        if ready == Some(want) || rec.fixing {
                            return;
                        }
                        rec.fixing = true;
                        Work::Ready(want)
                    }
                    _ => {
                        if rec.started {
                            return;
                        }
                        rec.started = true;
                        if rec.ip.is_empty() {
                            let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
                            // 10.64.0.0 upwards, skipping addresses ending in .0 and .255.
                            let n = n + n / 254 * 2 + 1;
                            rec.ip = address([10, 64, 0, 0], n);
                        }
                        Work::Start(rec.ip.clone())
                    }
                }
            }
        };
        tokio::spawn(async move {
            let _permit = self.in_flight.acquire().await;
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let result = match work {
                Work::Delete => {
                    let dp = DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: Some(Preconditions {
                            uid: Some(uid.clone()),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    api.delete(&name, &dp).await.map(|_| ())
                }
                Work::Start(ip) => {
                    let status = running_status(&pod, &ip, &host_ip, true);
                    let r = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                        .await
                        .map(|_| ());
                    if r.is_err()
                        && let Some(rec) = self.pods.lock().get_mut(&uid)
                    {
                        rec.started = false;
                    }
                    r
                }
                Work::Ready(ready) => {
                    let r = set_ready_patch(&api, &pod, ready).await;
                    if let Some(rec) = self.pods.lock().get_mut(&uid) {
                        rec.fixing = false;
                    }
                    r
                }
            };
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    tracing::debug!(pod = %name, error = %e, "simulated kubelet write failed")
                }
            }
        });
    }

    /// Stops a node's heartbeat and pod handling (the node is cut off).
    pub(crate) fn set_silent(&self, name: &str, silent: bool) -> Result<()> {
        match self.nodes.lock().get_mut(name) {
            Some(n) => {
                n.silent = silent;
                Ok(())
            }
            None => Err(Error::NoSuchNode(name.to_owned())),
        }
    }

    /// A silent node comes back: renews its Lease, posts Ready, and catches up on its pods.
    pub(crate) async fn come_back(self: &Arc<Self>, name: &str) -> Result<()> {
        self.set_silent(name, false)?;
        self.renew(name).await?;
        self.post_ready(name).await?;
        let api: Api<Pod> = Api::all(self.client.clone());
        let pods = api
            .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
            .await?;
        for pod in pods {
            self.clone().sync_pod(pod);
        }
        Ok(())
    }

    /// Removes a node: it stops, and its Node object is deleted (its Lease goes with it).
    pub(crate) async fn remove(&self, name: &str) -> Result<()> {
        if self.nodes.lock().remove(name).is_none() {
            return Err(Error::NoSuchNode(name.to_owned()));
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NODE_LEASE_NAMESPACE);
        match leases.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes a pod's containers exit with `exit_code`; see [`crate::TestCluster::fail_pod`].
    pub(crate) async fn fail_pod(&self, ns: &str, name: &str, exit_code: i32) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = api.get(name).await?;
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always");
        let restarts = match policy {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        };
        let now = now_time();
        let terminated = json!({
            "exitCode": exit_code,
            "reason": if exit_code == 0 { "Completed" } else { "Error" },
            "startedAt": now, "finishedAt": now,
        });
        let statuses: Vec<Value> = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|cs| {
                let mut v = serde_json::to_value(&cs).unwrap_or_else(|_| json!({}));
                if restarts {
                    v["restartCount"] = json!(cs.restart_count + 1);
                    v["lastState"] = json!({"terminated": terminated});
                    v["state"] = json!({"running": {"startedAt": now}});
                } else {
                    v["state"] = json!({"terminated": terminated});
                    v["ready"] = json!(false);
                    v["started"] = json!(false);
                }
                v
            })
            .collect();
        if statuses.is_empty() {
            return Err(Error::Invalid(format!(
                "pod {ns}/{name} has no running containers to fail"
            )));
        }
        let patch = if restarts {
            json!({"status": {"containerStatuses": statuses}})
        } else {
            let phase = if exit_code == 0 {
                "Succeeded"
            } else {
                "Failed"
            };
            let mut conditions = pod_conditions(&pod, false, &now);
            conditions.retain(|c| c["type"] != "PodReadyToStartContainers");
            json!({"status": {
                "phase": phase,
                "conditions": conditions,
                "containerStatuses": statuses,
            }})
        };
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    /// Sets a pod's readiness (it stays until changed again; see [`crate::TestCluster::set_ready`]).
    pub(crate) async fn set_ready(&self, ns: &str, name: &str, ready: bool) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = api.get(name).await?;
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.pods.lock().entry(uid.to_owned()).or_default().unready = !ready;
        }
        set_ready_patch(&api, &pod, ready).await?;
        Ok(())
    }
}

fn pod_conditions(pod: &Pod, ready: bool, now: &Value) -> Vec<Value> {
    let _ = pod;
    vec![
        condition("PodReadyToStartContainers", true, now),
        condition("Initialized", true, now),
        condition("Ready", ready, now),
        condition("ContainersReady", ready, now),
        condition("PodScheduled", true, now),
    ]
}

async fn set_ready_patch(api: &Api<Pod>, pod: &Pod, ready: bool) -> kube::Result<()> {
    let now = now_time();
    let statuses: Vec<Value> = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|cs| {
            let mut v = serde_json::to_value(&cs).unwrap_or_else(|_| json!({}));
            v["ready"] = json!(ready);
            v
        })
        .collect();
    let patch = json!({"status": {
        "conditions": pod_conditions(pod, ready, &now),
        "containerStatuses": statuses,
    }});
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

/// The status a kubelet reports for a pod whose containers all started.
fn running_status(pod: &Pod, ip: &str, host_ip: &str, ready: bool) -> Value {
    let now = now_time();
    let spec = pod.spec.as_ref();
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let status_of = |c: &k8s_openapi::api::core::v1::Container, state: Value, ready: bool| {
        json!({
            "name": c.name,
            "image": c.image.clone().unwrap_or_default(),
            "imageID": format!("berth-sim://{}", c.image.clone().unwrap_or_default()),
            "containerID": format!("berth-sim://{uid}-{}", c.name),
            "ready": ready,
            "started": ready,
            "restartCount": 0,
            "state": state,
        })
    };
    let containers: Vec<Value> = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| status_of(c, json!({"running": {"startedAt": now}}), ready))
        .collect();
    let mut status = json!({
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": now,
        "qosClass": "BestEffort",
        "conditions": pod_conditions(pod, ready, &now),
        "containerStatuses": containers,
    });
    if let Some(init) = spec.and_then(|s| s.init_containers.as_ref())
        && !init.is_empty()
    {
        let done = json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}});
        status["initContainerStatuses"] = Value::Array(
            init.iter()
                .map(|c| status_of(c, done.clone(), false))
                .collect(),
        );
    }
    json!({"status": status})
}

#[cfg(test)]
mod tests {
    use super::address;

    #[test]
    fn addresses_count_up_through_octets() {
        assert_eq!(address([10, 64, 0, 0], 1), "10.64.0.1");
        assert_eq!(address([10, 64, 0, 0], 256), "10.64.1.0");
        assert_eq!(address([172, 16, 0, 0], 65_536 + 2), "172.17.0.2");
    }
}
