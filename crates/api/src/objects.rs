//! The cluster's object kinds: Pod, Node, ReplicaSet, Deployment, DaemonSet and Job, in the shape
//! an experienced Kubernetes user expects (camelCase JSON, spec and status split).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{LabelSelector, Object, ObjectMeta};
use crate::quantity::{Bytes, Cpu};

macro_rules! object {
    ($ty:ident, $kind:literal, $namespaced:literal) => {
        impl Object for $ty {
            const KIND: &'static str = $kind;
            const NAMESPACED: bool = $namespaced;
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// CPU and memory amounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceList {
    /// CPU in millicores.
    pub cpu: Cpu,
    /// Memory in bytes.
    pub memory: Bytes,
    /// How many pods (used in node capacity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<u32>,
}

/// What a container asks for (scheduling) and may not exceed (cgroup limits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceRequirements {
    /// Reserved for the container by the scheduler.
    pub requests: ResourceList,
    /// Enforced by cgroups; zero means unlimited.
    pub limits: ResourceList,
}

/// One environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Variable value.
    #[serde(default)]
    pub value: String,
}

/// A container of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    /// Unique within the pod.
    pub name: String,
    /// Image reference, e.g. `registry:5000/app:1`.
    pub image: String,
    /// Overrides the image's entrypoint.
    pub command: Vec<String>,
    /// Overrides the image's cmd.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<EnvVar>,
    /// Requests and limits.
    pub resources: ResourceRequirements,
}

/// When a pod's containers are restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Always restart (Deployments, DaemonSets).
    #[default]
    Always,
    /// Restart only on failure (Jobs).
    OnFailure,
    /// Never restart.
    Never,
}

/// A taint repels pods that don't tolerate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    /// Taint key.
    pub key: String,
    /// Taint value.
    #[serde(default)]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// A pod's tolerance of a taint (empty key with `Exists` tolerates everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Toleration {
    /// Taint key to match; empty matches every key.
    pub key: String,
    /// `Equal` (default) or `Exists`.
    pub operator: String,
    /// Value to match with `Equal`.
    pub value: String,
    /// Effect to match; empty matches every effect.
    pub effect: String,
}

impl Toleration {
    /// True when this toleration tolerates `taint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        let effect_ok = self.effect.is_empty() || self.effect == taint.effect;
        let key_ok = self.key.is_empty() || self.key == taint.key;
        let value_ok = self.operator == "Exists" || self.value == taint.value;
        effect_ok && key_ok && value_ok
    }
}

/// What a pod should run and where it may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    /// The containers, started in order.
    pub containers: Vec<Container>,
    /// Set by the scheduler's binding; the node agent there runs the pod.
    pub node_name: Option<String>,
    /// Nodes must carry these labels.
    pub node_selector: BTreeMap<String, String>,
    /// Taints this pod tolerates.
    pub tolerations: Vec<Toleration>,
    /// Restart behaviour.
    pub restart_policy: RestartPolicy,
    /// Seconds between SIGTERM and SIGKILL on stop.
    pub termination_grace_period_seconds: Option<u64>,
}

impl PodSpec {
    /// The sum of the containers' requests.
    pub fn total_requests(&self) -> ResourceList {
        self.containers
            .iter()
            .fold(ResourceList::default(), |acc, c| ResourceList {
                cpu: Cpu(acc.cpu.0 + c.resources.requests.cpu.0),
                memory: Bytes(acc.memory.0 + c.resources.requests.memory.0),
                pods: None,
            })
    }
}

/// A pod's lifecycle phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    /// Accepted, not yet running.
    #[default]
    Pending,
    /// Bound and at least one container running.
    Running,
    /// Every container exited 0 and won't restart.
    Succeeded,
    /// Every container ended and at least one failed.
    Failed,
    /// The node stopped reporting.
    Unknown,
}

/// The state of one container as the node agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerStatus {
    /// Container name.
    pub name: String,
    /// True while running.
    pub running: bool,
    /// Exit code of the last run, if it ended.
    pub exit_code: Option<i32>,
    /// Why it ended (`Completed`, `Error`, `OOMKilled`).
    pub reason: Option<String>,
    /// How often it was restarted.
    pub restart_count: u32,
}

/// What the node agent reports about a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    /// Lifecycle phase.
    pub phase: PodPhase,
    /// The pod's IP address.
    pub pod_ip: Option<String>,
    /// Per-container state.
    pub container_statuses: Vec<ContainerStatus>,
    /// Human-readable reason for the phase.
    pub message: Option<String>,
}

/// The unit of scheduling: containers sharing network and lifecycle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pod {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: PodSpec,
    /// Observed state.
    pub status: PodStatus,
}
object!(Pod, "Pod", true);

/// A node's desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeSpec {
    /// Cordoned: no new pods.
    pub unschedulable: bool,
    /// Taints.
    pub taints: Vec<Taint>,
}

/// What the node agent reports about its node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeStatus {
    /// Total resources.
    pub capacity: ResourceList,
    /// Resources available to pods.
    pub allocatable: ResourceList,
    /// True while the agent heartbeats.
    pub ready: bool,
    /// Seconds since the epoch of the last heartbeat.
    pub last_heartbeat: u64,
    /// The address the agent listens on.
    pub address: Option<String>,
}

/// A machine that runs pods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    /// Metadata (cluster-scoped: empty namespace).
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: NodeSpec,
    /// Observed state.
    pub status: NodeStatus,
}
object!(Node, "Node", false);

/// The pod a workload stamps out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodTemplate {
    /// Labels and annotations of the pods.
    pub metadata: ObjectMeta,
    /// The pods' spec.
    pub spec: PodSpec,
}

/// Replica counts a workload controller reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadStatus {
    /// Pods that exist.
    pub replicas: u32,
    /// Pods that are running and ready.
    pub ready_replicas: u32,
    /// Pods on the current template.
    pub updated_replicas: u32,
    /// The generation this status describes.
    pub observed_generation: u64,
}

/// Desired state of a ReplicaSet or Deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReplicaSpec {
    /// How many pods.
    pub replicas: u32,
    /// Which pods count as this workload's.
    pub selector: LabelSelector,
    /// The pod to stamp out.
    pub template: PodTemplate,
}

/// Keeps a number of identical pods running.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicaSet {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: ReplicaSpec,
    /// Observed state.
    pub status: WorkloadStatus,
}
object!(ReplicaSet, "ReplicaSet", true);

/// Rolls a ReplicaSet forward when its template changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deployment {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: ReplicaSpec,
    /// Observed state.
    pub status: WorkloadStatus,
}
object!(Deployment, "Deployment", true);

/// Desired state of a DaemonSet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DaemonSetSpec {
    /// Which pods count as this workload's.
    pub selector: LabelSelector,
    /// The pod to run on every eligible node.
    pub template: PodTemplate,
}

/// Runs one pod on every eligible node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DaemonSet {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: DaemonSetSpec,
    /// Observed state.
    pub status: WorkloadStatus,
}
object!(DaemonSet, "DaemonSet", true);

/// Desired state of a Job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JobSpec {
    /// Successful pods needed.
    pub completions: u32,
    /// Pods run at once.
    pub parallelism: u32,
    /// Failed pods tolerated before the job fails.
    pub backoff_limit: u32,
    /// The pod to run.
    pub template: PodTemplate,
}

/// Observed state of a Job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JobStatus {
    /// Pods running.
    pub active: u32,
    /// Pods that succeeded.
    pub succeeded: u32,
    /// Pods that failed.
    pub failed: u32,
    /// True once completions were reached.
    pub complete: bool,
}

/// Runs pods to completion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Job {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: JobSpec,
    /// Observed state.
    pub status: JobStatus,
}
object!(Job, "Job", true);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_json_is_kubernetes_shaped() {
        let json = r#"{
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "containers": [{"name": "c", "image": "busybox",
                    "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}],
                "nodeSelector": {"disk": "ssd"},
                "restartPolicy": "OnFailure"
            }
        }"#;
        let pod: Pod = serde_json::from_str(json).unwrap();
        assert_eq!(pod.spec.total_requests().cpu, Cpu(250));
        assert_eq!(pod.spec.total_requests().memory, Bytes(64 << 20));
        assert_eq!(pod.spec.restart_policy, RestartPolicy::OnFailure);
        let back = serde_json::to_value(&pod).unwrap();
        assert_eq!(
            back["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "250m"
        );
        assert!(
            serde_json::from_str::<Pod>(
                r#"{"spec":{"containers":[{"resources":{"requests":{"cpu":"lots"}}}]}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn tolerations() {
        let taint = Taint {
            key: "gpu".into(),
            value: "yes".into(),
            effect: "NoSchedule".into(),
        };
        let exact = Toleration {
            key: "gpu".into(),
            value: "yes".into(),
            ..Default::default()
        };
        assert!(exact.tolerates(&taint));
        let wrong = Toleration {
            key: "gpu".into(),
            value: "no".into(),
            ..Default::default()
        };
        assert!(!wrong.tolerates(&taint));
        let all = Toleration {
            operator: "Exists".into(),
            ..Default::default()
        };
        assert!(all.tolerates(&taint));
    }
}
