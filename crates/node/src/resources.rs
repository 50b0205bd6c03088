//! Requests and limits: a pod's QoS class (Guaranteed, Burstable, BestEffort, as
//! `pkg/apis/core/v1/helper/qos` decides it) and the cgroup settings of the pod and of each
//! container (memory limit; CPU shares from requests, CFS quota from limits).

use std::collections::BTreeMap;

use berth_api::quantity::{Bytes, Cpu};
use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResources, LinuxResourcesBuilder,
};

/// A pod's quality-of-service class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    /// Every container has equal CPU and memory requests and limits.
    Guaranteed,
    /// Some requests or limits, but not Guaranteed.
    Burstable,
    /// No requests or limits at all.
    BestEffort,
}

impl QosClass {
    /// The name in `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// The group under `kubepods` the kubelet uses (Guaranteed pods sit directly in it).
    pub fn cgroup_dir(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// CPU (millicores) and memory (bytes) of one requirement list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    /// Millicores.
    pub cpu: Option<u64>,
    /// Bytes.
    pub memory: Option<u64>,
}

fn parse(list: Option<&BTreeMap<String, Quantity>>) -> Result<Amounts, String> {
    let Some(list) = list else {
        return Ok(Amounts::default());
    };
    let cpu = list
        .get("cpu")
        .map(|q| q.0.parse::<Cpu>().map(|c| c.0).map_err(|e| e.to_string()))
        .transpose()?;
    let memory = list
        .get("memory")
        .map(|q| q.0.parse::<Bytes>().map(|b| b.0).map_err(|e| e.to_string()))
        .transpose()?;
    Ok(Amounts { cpu, memory })
}

/// A container's requests and limits (a missing request defaults to the limit, as the API
/// server's defaulting does).
pub fn container_amounts(c: &Container) -> Result<(Amounts, Amounts), String> {
    let empty = ResourceRequirements::default();
    let r = c.resources.as_ref().unwrap_or(&empty);
    let limits = parse(r.limits.as_ref())?;
    let mut requests = parse(r.requests.as_ref())?;
    requests.cpu = requests.cpu.or(limits.cpu);
    requests.memory = requests.memory.or(limits.memory);
    Ok((requests, limits))
}

/// The QoS class of `pod`.
pub fn qos_class(pod: &Pod) -> Result<QosClass, String> {
    let spec = pod.spec.as_ref().ok_or("no spec")?;
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let (req, lim) = container_amounts(c)?;
        any |=
            req.cpu.is_some() || req.memory.is_some() || lim.cpu.is_some() || lim.memory.is_some();
        let cpu_ok = lim.cpu.is_some() && req.cpu == lim.cpu;
        let mem_ok = lim.memory.is_some() && req.memory == lim.memory;
        guaranteed &= cpu_ok && mem_ok;
    }
    Ok(if !any {
        QosClass::BestEffort
    } else if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    })
}

/// The CFS period used for CPU limits (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// CPU shares for `millis` of request: 1024 per core, at least 2 (the kubelet's `MilliCPUToShares`).
pub fn shares(millis: Option<u64>) -> u64 {
    match millis {
        Some(m) if m > 0 => (m * 1024 / 1000).max(2),
        _ => 2,
    }
}

/// The quota for a `millis` CPU limit over [`CPU_PERIOD_US`] (at least 1 ms, as the kubelet).
pub fn quota(millis: u64) -> i64 {
    ((millis * CPU_PERIOD_US / 1000).max(1000)) as i64
}

/// The container cgroup's `linux.resources`: memory limit, shares, quota.
pub fn container_resources(c: &Container) -> Result<LinuxResources, String> {
    let (req, lim) = container_amounts(c)?;
    build(req.cpu, lim.cpu, lim.memory)
}

/// The pod cgroup's `linux.resources`: the sums of the containers' (an init container's
/// limit counts when larger, as the kubelet's effective request), a limit only when every
/// container has one.
pub fn pod_resources(pod: &Pod) -> Result<LinuxResources, String> {
    let spec = pod.spec.as_ref().ok_or("no spec")?;
    let mut cpu_req = 0;
    let mut cpu_lim = Some(0);
    let mut mem_lim = Some(0);
    for c in &spec.containers {
        let (req, lim) = container_amounts(c)?;
        cpu_req += req.cpu.unwrap_or(0);
        cpu_lim = cpu_lim.zip(lim.cpu).map(|(a, b)| a + b);
        mem_lim = mem_lim.zip(lim.memory).map(|(a, b)| a + b);
    }
    for c in spec.init_containers.iter().flatten() {
        let (req, lim) = container_amounts(c)?;
        cpu_req = cpu_req.max(req.cpu.unwrap_or(0));
        cpu_lim = cpu_lim.and_then(|a| lim.cpu.map(|b| a.max(b)));
        mem_lim = mem_lim.and_then(|a| lim.memory.map(|b| a.max(b)));
    }
    build(Some(cpu_req), cpu_lim, mem_lim)
}

fn build(
    cpu_request: Option<u64>,
    cpu_limit: Option<u64>,
    memory_limit: Option<u64>,
) -> Result<LinuxResources, String> {
    let e = |e: oci_spec::OciSpecError| e.to_string();
    let mut cpu = LinuxCpuBuilder::default().shares(shares(cpu_request));
    if let Some(l) = cpu_limit.filter(|l| *l > 0) {
        cpu = cpu.quota(quota(l)).period(CPU_PERIOD_US);
    }
    let mut r = LinuxResourcesBuilder::default().cpu(cpu.build().map_err(e)?);
    if let Some(m) = memory_limit.filter(|m| *m > 0) {
        let m = i64::try_from(m).map_err(|_| "memory limit out of range")?;
        r = r.memory(LinuxMemoryBuilder::default().limit(m).build().map_err(e)?);
    }
    r.build().map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": containers},
        }))
        .unwrap()
    }

    #[test]
    fn qos_classes() {
        let best = pod(serde_json::json!([{"name": "a", "image": "x"}]));
        assert_eq!(qos_class(&best).unwrap(), QosClass::BestEffort);
        let guaranteed = pod(serde_json::json!([{"name": "a", "image": "x",
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}]));
        assert_eq!(qos_class(&guaranteed).unwrap(), QosClass::Guaranteed);
        let burstable = pod(serde_json::json!([{"name": "a", "image": "x",
            "resources": {"requests": {"memory": "32Mi"}, "limits": {"memory": "64Mi"}}}]));
        assert_eq!(qos_class(&burstable).unwrap(), QosClass::Burstable);
        let r = pod_resources(&guaranteed).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(512));
        let bad = pod(serde_json::json!([{"name": "a", "image": "x",
            "resources": {"limits": {"memory": "lots"}}}]));
        assert!(qos_class(&bad).is_err());
    }
}
