//! The Node object and its heartbeats: registration (capacity from the host or the
//! configuration, labels, taints, addresses, daemon endpoint, node info), the Lease in
//! `kube-node-lease` renewed every `lease_renew`, and status conditions (Ready,
//! MemoryPressure, DiskPressure, PIDPressure) posted every `status_update` or on a change.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::config::NodeConfig;
use crate::error::{Error, Result};

/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What the agent learned about its host.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// CPUs.
    pub cpus: u64,
    /// Memory bytes.
    pub memory: u64,
    /// Bytes of the root's filesystem.
    pub storage: u64,
    /// The node address.
    pub address: String,
    /// Kernel release.
    pub kernel: String,
    /// OS image (PRETTY_NAME).
    pub os_image: String,
    /// Boot id.
    pub boot_id: String,
    /// Machine id.
    pub machine_id: String,
}

fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn statvfs(path: &std::path::Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = s.fragment_size() as u64;
    Some((
        s.blocks() as u64 * frsize,
        s.blocks_available() as u64 * frsize,
    ))
}

/// The default node address: loopback, because the agent's API (exec, logs) has no
/// authentication yet and is served on this address; `--address` opens it to a network.
fn default_address() -> String {
    "127.0.0.1".into()
}

impl HostInfo {
    /// Reads the host (flags in `config` win).
    pub fn detect(config: &NodeConfig) -> HostInfo {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "Linux".into());
        HostInfo {
            cpus: config.cpus.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
            }),
            memory: config
                .memory
                .unwrap_or_else(|| meminfo("MemTotal:").unwrap_or(0)),
            storage: statvfs(&config.root).map_or(0, |(total, _)| total),
            address: config.address.clone().unwrap_or_else(default_address),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os_image,
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            machine_id: read("/etc/machine-id"),
        }
    }
}

/// The architecture name Kubernetes uses (`amd64`, `arm64`, ...).
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The Node's labels: the defaults plus the configured ones.
pub fn labels(config: &NodeConfig) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("kubernetes.io/hostname".into(), config.name.clone());
    l.insert("kubernetes.io/os".into(), "linux".into());
    l.insert("kubernetes.io/arch".into(), arch().into());
    l.insert("beta.kubernetes.io/os".into(), "linux".into());
    l.insert("beta.kubernetes.io/arch".into(), arch().into());
    l.extend(config.labels.clone());
    l
}

fn quantity_bytes(b: u64) -> String {
    format!("{}Ki", b / 1024)
}

/// The node conditions now.
pub fn conditions(
    config: &NodeConfig,
    transitions: &mut BTreeMap<String, (String, String)>,
) -> Vec<Value> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let memory_pressure =
        meminfo("MemAvailable:").is_some_and(|a| a < config.eviction_memory_available);
    let disk_pressure = statvfs(&config.root).is_some_and(|(total, free)| {
        total > 0 && (free as f64) / (total as f64) < config.eviction_disk_free
    });
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u64::MAX);
    let pids = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count() as u64
        })
        .unwrap_or(0);
    let pid_pressure = pids * 10 > pid_max * 9;
    let items = [
        (
            "MemoryPressure",
            memory_pressure,
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            "memory available",
        ),
        (
            "DiskPressure",
            disk_pressure,
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            "disk space available",
        ),
        (
            "PIDPressure",
            pid_pressure,
            "KubeletHasInsufficientPID",
            "KubeletHasSufficientPID",
            "PIDs available",
        ),
        (
            "Ready",
            true,
            "KubeletReady",
            "KubeletNotReady",
            "kubelet is posting ready status",
        ),
    ];
    items
        .iter()
        .map(|(kind, on, reason_on, reason_off, what)| {
            let status = if *on { "True" } else { "False" };
            let entry = transitions
                .entry(kind.to_string())
                .or_insert_with(|| (status.to_owned(), now.clone()));
            if entry.0 != status {
                *entry = (status.to_owned(), now.clone());
            }
            let (reason, message) = if *kind == "Ready" {
                (*reason_on, what.to_string())
            } else if *on {
                (*reason_on, format!("kubelet has insufficient {what}"))
            } else {
                (*reason_off, format!("kubelet has sufficient {what}"))
            };
            json!({
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": entry.1,
            })
        })
        .collect()
}

/// The Node's status.
pub fn status(config: &NodeConfig, info: &HostInfo, conditions: Vec<Value>) -> Value {
    let capacity = json!({
        "cpu": info.cpus.to_string(),
        "memory": quantity_bytes(info.memory),
        "pods": config.max_pods.to_string(),
        "ephemeral-storage": quantity_bytes(info.storage),
    });
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": conditions,
        "addresses": [
            {"type": "InternalIP", "address": info.address},
            {"type": "Hostname", "address": config.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": config.port}},
        "nodeInfo": {
            "architecture": arch(),
            "bootID": info.boot_id,
            "containerRuntimeVersion": format!("berth://{}", env!("CARGO_PKG_VERSION")),
            "kernelVersion": info.kernel,
            "kubeProxyVersion": "",
            "kubeletVersion": format!("v1.33.0-berth.{}", env!("CARGO_PKG_VERSION")),
            "machineID": info.machine_id,
            "operatingSystem": "linux",
            "osImage": info.os_image,
            "systemUUID": info.machine_id,
        },
    })
}

/// Creates the Node (or updates its labels and taints) and posts its status. Returns its uid.
pub async fn register(
    client: &kube::Client,
    config: &NodeConfig,
    info: &HostInfo,
    transitions: &mut BTreeMap<String, (String, String)>,
) -> Result<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let object: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": config.name, "labels": labels(config)},
        "spec": {"taints": config.taints},
    }))
    .map_err(|source| Error::State {
        path: "Node".into(),
        source,
    })?;
    match nodes.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = json!({
                "metadata": {"labels": labels(config)},
                "spec": {"taints": config.taints, "unschedulable": null},
            });
            nodes
                .patch(&config.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(Error::api(format!("update node {}", config.name)))?;
        }
        Err(e) => return Err(Error::api(format!("register node {}", config.name))(e)),
    }
    let node = post_status(client, config, info, transitions).await?;
    Ok(node.metadata.uid.unwrap_or_default())
}

/// Posts the node's status (conditions with a fresh heartbeat).
pub async fn post_status(
    client: &kube::Client,
    config: &NodeConfig,
    info: &HostInfo,
    transitions: &mut BTreeMap<String, (String, String)>,
) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let status = status(config, info, conditions(config, transitions));
    nodes
        .patch_status(
            &config.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .map_err(Error::api(format!("update node {} status", config.name)))
}

/// Renews (creating) the node's Lease.
pub async fn renew_lease(client: &kube::Client, config: &NodeConfig, node_uid: &str) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let patch = json!({"spec": {"holderIdentity": config.name, "renewTime": now,
        "leaseDurationSeconds": config.lease_duration.as_secs()}});
    match leases
        .patch(&config.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": config.name,
                    "namespace": LEASE_NAMESPACE,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": config.name, "uid": node_uid}],
                },
                "spec": {"holderIdentity": config.name, "leaseDurationSeconds": config.lease_duration.as_secs(), "renewTime": now},
            }))
            .map_err(|source| Error::State {
                path: "Lease".into(),
                source,
            })?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(drop)
                .map_err(Error::api(format!("create lease {}", config.name)))
        }
        Err(e) => Err(Error::api(format!("renew lease {}", config.name))(e)),
    }
}
