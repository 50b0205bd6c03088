//! The agent's configuration: its name and state root, what it reports about the host (or
//! what flags say instead), and its timings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;

use crate::logs::Rotation;

/// How a node agent runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Node's name.
    pub name: String,
    /// The state root: `engine/` (images, snapshots), `runtime/`, `pods/`, `logs/`.
    pub root: PathBuf,
    /// The cgroupfs mount point.
    pub cgroup_root: PathBuf,
    /// The agent's group under [`NodeConfig::cgroup_root`]; pods go to
    /// `<parent>/kubepods/[burstable|besteffort/]pod<uid>`.
    pub cgroup_parent: PathBuf,
    /// CPUs to report (default: the host's).
    pub cpus: Option<u64>,
    /// Memory bytes to report (default: the host's).
    pub memory: Option<u64>,
    /// Pods the node accepts.
    pub max_pods: u32,
    /// Labels added to the defaults (`kubernetes.io/hostname`, `kubernetes.io/os`,
    /// `kubernetes.io/arch` and their `beta.` forms).
    pub labels: BTreeMap<String, String>,
    /// Taints to register with.
    pub taints: Vec<Taint>,
    /// The node's address (its `InternalIP`, where the agent's HTTP server listens; default
    /// loopback: that server has no authentication yet).
    pub address: Option<String>,
    /// The port of the agent's HTTP server (`daemonEndpoints.kubeletEndpoint.port`; 0: any
    /// free port, reported in the Node).
    pub port: u16,
    /// How often the Lease is renewed.
    pub lease_renew: Duration,
    /// The Lease's duration.
    pub lease_duration: Duration,
    /// How often node status is posted when nothing changed.
    pub status_update: Duration,
    /// How often a pod worker looks at its containers.
    pub sync_period: Duration,
    /// The first CrashLoopBackOff delay (the kubelet's 10 s), doubled per restart...
    pub backoff_initial: Duration,
    /// ...up to this (5 min).
    pub backoff_max: Duration,
    /// A container that ran this long resets its backoff (10 min).
    pub backoff_reset: Duration,
    /// Log rotation.
    pub log_rotation: Rotation,
    /// Registries reached over plain HTTP (`host:port`); `localhost` and `127.0.0.1` always are.
    pub insecure_registries: Vec<String>,
    /// Memory pressure when less than this many bytes are available.
    pub eviction_memory_available: u64,
    /// Disk pressure when the root's filesystem has less than this fraction free.
    pub eviction_disk_free: f64,
    /// Image GC starts above this disk usage (percent, the kubelet's 85)...
    pub image_gc_high_percent: u8,
    /// ...and stops below this one (80).
    pub image_gc_low_percent: u8,
    /// How often pressure is checked (eviction, image GC).
    pub housekeeping_interval: Duration,
}

impl NodeConfig {
    /// The defaults for node `name` with state under `root` (the kubelet's timings).
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>) -> NodeConfig {
        let name = name.into();
        NodeConfig {
            cgroup_parent: PathBuf::from(format!("berth-node/{name}")),
            name,
            root: root.into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cpus: None,
            memory: None,
            max_pods: 110,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            address: None,
            port: 10250,
            lease_renew: Duration::from_secs(10),
            lease_duration: Duration::from_secs(40),
            status_update: Duration::from_secs(10),
            sync_period: Duration::from_millis(100),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            backoff_reset: Duration::from_secs(600),
            log_rotation: Rotation::default(),
            insecure_registries: Vec::new(),
            eviction_memory_available: 100 << 20,
            eviction_disk_free: 0.10,
            image_gc_high_percent: 85,
            image_gc_low_percent: 80,
            housekeeping_interval: Duration::from_secs(10),
        }
    }
}
