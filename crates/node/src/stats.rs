//! Node and pod statistics from cgroups and /proc: the kubelet's `/stats/summary` (what
//! `kubectl top` reads through metrics.k8s.io) and the Prometheus text of `/metrics` and
//! `/metrics/resource` (the names metrics-server scrapes).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use berth_cgroups::CgroupManager;
use serde_json::{Value, json};

use crate::host::{Host, PodRecord};

/// Cumulative CPU and current memory of something.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// CPU time used so far (ns).
    pub cpu_ns: u64,
    /// Memory in use (bytes; the working set where known).
    pub memory: u64,
}

/// A container's sample.
#[derive(Debug, Clone)]
pub struct ContainerSample {
    /// Container name.
    pub name: String,
    /// The numbers.
    pub sample: Sample,
}

/// A pod's sample.
#[derive(Debug, Clone)]
pub struct PodSample {
    /// The pod.
    pub pod: PodRecord,
    /// The pod cgroup's numbers.
    pub sample: Sample,
    /// Its running containers.
    pub containers: Vec<ContainerSample>,
}

/// Keeps the previous CPU reading per key to report rates (`usageNanoCores`).
#[derive(Debug, Default)]
pub struct Rates {
    last: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Rates {
    /// The CPU rate in nanocores since the previous call for `key` (0 the first time).
    pub fn nano_cores(&self, key: &str, cpu_ns: u64) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let rate = match last.get(key) {
            Some((prev, at)) if cpu_ns >= *prev && now > *at => {
                let secs = (now - *at).as_secs_f64();
                ((cpu_ns - prev) as f64 / secs) as u64
            }
            _ => 0,
        };
        last.insert(key.to_owned(), (cpu_ns, now));
        rate
    }
}

fn cgroup_sample(host: &Host, path: &std::path::Path) -> Option<Sample> {
    let group = berth_cgroups::manager(&host.config.cgroup_root, path).ok()?;
    if !group.exists() {
        return None;
    }
    let stats = group.stats().ok()?;
    Some(Sample {
        cpu_ns: stats.cpu.usage_ns,
        memory: stats.memory.usage,
    })
}

/// The node's sample (all CPUs' busy time from /proc/stat; memory total - available).
pub fn node_sample() -> Sample {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .take(8)
        .map(|(_, v)| *v)
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Sample {
        cpu_ns: busy * (1_000_000_000 / hz.max(1)),
        memory: field("MemTotal:").saturating_sub(field("MemAvailable:")),
    }
}

/// Samples of every pod on the node with running containers.
pub fn pod_samples(host: &Host) -> Vec<PodSample> {
    let mut out = Vec::new();
    for pod in host.pods_on_disk() {
        let Some(cgroup) = host.find_pod_cgroup(&pod.uid) else {
            continue;
        };
        let Some(sample) = cgroup_sample(host, &cgroup) else {
            continue;
        };
        let mut containers = Vec::new();
        for (name, attempt) in host.running_containers(&pod.uid) {
            let id = Host::container_id(&pod.uid, &name, attempt);
            if let Some(s) = cgroup_sample(host, &cgroup.join(&id)) {
                containers.push(ContainerSample { name, sample: s });
            }
        }
        out.push(PodSample {
            pod,
            sample,
            containers,
        });
    }
    out
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The kubelet's stats summary (`stats/v1alpha1`): node and pods, cpu and memory.
pub fn summary(host: &Host, rates: &Rates, memory_capacity: u64) -> Value {
    let t = now();
    let cpu = |key: &str, s: &Sample| json!({"time": t, "usageNanoCores": rates.nano_cores(key, s.cpu_ns), "usageCoreNanoSeconds": s.cpu_ns});
    let memory = |s: &Sample, limit: Option<u64>| {
        let mut m = json!({"time": t, "usageBytes": s.memory, "workingSetBytes": s.memory});
        if let Some(limit) = limit {
            m["availableBytes"] = json!(limit.saturating_sub(s.memory));
        }
        m
    };
    let node = node_sample();
    let pods: Vec<Value> = pod_samples(host)
        .iter()
        .map(|p| {
            json!({
                "podRef": {"name": p.pod.name, "namespace": p.pod.namespace, "uid": p.pod.uid},
                "startTime": t,
                "cpu": cpu(&format!("pod/{}", p.pod.uid), &p.sample),
                "memory": memory(&p.sample, None),
                "containers": p.containers.iter().map(|c| json!({
                    "name": c.name,
                    "startTime": t,
                    "cpu": cpu(&format!("container/{}/{}", p.pod.uid, c.name), &c.sample),
                    "memory": memory(&c.sample, None),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "node": {
            "nodeName": host.config.name,
            "startTime": t,
            "cpu": cpu("node", &node),
            "memory": memory(&node, Some(memory_capacity)),
        },
        "pods": pods,
    })
}

/// Prometheus text: the resource metrics (as `/metrics/resource`) and the agent's own.
pub fn prometheus(host: &Host) -> String {
    let mut out = String::new();
    let node = node_sample();
    let millis = chrono::Utc::now().timestamp_millis();
    let pods = pod_samples(host);
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let _ = writeln!(
        out,
        "# HELP node_cpu_usage_seconds_total Cumulative cpu time consumed by the node in core-seconds"
    );
    let _ = writeln!(out, "# TYPE node_cpu_usage_seconds_total counter");
    let _ = writeln!(
        out,
        "node_cpu_usage_seconds_total {} {millis}",
        node.cpu_ns as f64 / 1e9
    );
    let _ = writeln!(
        out,
        "# HELP node_memory_working_set_bytes Current working set of the node in bytes"
    );
    let _ = writeln!(out, "# TYPE node_memory_working_set_bytes gauge");
    let _ = writeln!(
        out,
        "node_memory_working_set_bytes {} {millis}",
        node.memory
    );
    let _ = writeln!(
        out,
        "# HELP pod_cpu_usage_seconds_total Cumulative cpu time consumed by the pod in core-seconds"
    );
    let _ = writeln!(out, "# TYPE pod_cpu_usage_seconds_total counter");
    for p in &pods {
        let _ = writeln!(
            out,
            "pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"{}\"}} {} {millis}",
            esc(&p.pod.namespace),
            esc(&p.pod.name),
            p.sample.cpu_ns as f64 / 1e9
        );
    }
    let _ = writeln!(
        out,
        "# HELP pod_memory_working_set_bytes Current working set of the pod in bytes"
    );
    let _ = writeln!(out, "# TYPE pod_memory_working_set_bytes gauge");
    for p in &pods {
        let _ = writeln!(
            out,
            "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}} {} {millis}",
            esc(&p.pod.namespace),
            esc(&p.pod.name),
            p.sample.memory
        );
    }
    let _ = writeln!(
        out,
        "# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed by the container in core-seconds"
    );
    let _ = writeln!(out, "# TYPE container_cpu_usage_seconds_total counter");
    for p in &pods {
        for c in &p.containers {
            let _ = writeln!(
                out,
                "container_cpu_usage_seconds_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {millis}",
                esc(&c.name),
                esc(&p.pod.namespace),
                esc(&p.pod.name),
                c.sample.cpu_ns as f64 / 1e9
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP container_memory_working_set_bytes Current working set of the container in bytes"
    );
    let _ = writeln!(out, "# TYPE container_memory_working_set_bytes gauge");
    for p in &pods {
        for c in &p.containers {
            let _ = writeln!(
                out,
                "container_memory_working_set_bytes{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {millis}",
                esc(&c.name),
                esc(&p.pod.namespace),
                esc(&p.pod.name),
                c.sample.memory
            );
        }
    }
    let running: usize = pods.iter().map(|p| p.containers.len()).sum();
    let _ = writeln!(
        out,
        "# HELP kubelet_running_pods Number of pods that have a running pod sandbox"
    );
    let _ = writeln!(out, "# TYPE kubelet_running_pods gauge");
    let _ = writeln!(out, "kubelet_running_pods {}", pods.len());
    let _ = writeln!(
        out,
        "# HELP kubelet_running_containers Number of containers currently running"
    );
    let _ = writeln!(out, "# TYPE kubelet_running_containers gauge");
    let _ = writeln!(
        out,
        "kubelet_running_containers{{container_state=\"running\"}} {running}"
    );
    out
}
