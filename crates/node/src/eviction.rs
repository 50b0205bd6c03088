//! Keeping the node healthy: eviction under memory or disk pressure (the kubelet's hard
//! thresholds: `memory.available` and `nodefs.available`, configurable) and image garbage
//! collection between a high and a low disk-usage mark.
//!
//! Under pressure one pod is evicted per round, in the kubelet's order: BestEffort first, then
//! Burstable, then Guaranteed, the largest memory user first within a class. An evicted pod's
//! containers are killed and it ends `Failed` with reason `Evicted`; its object stays for its
//! controller to replace. Under disk pressure, or above the high mark, images no container on
//! the node uses are removed (oldest first) until usage is under the low mark, before any pod
//! is evicted.

use std::collections::HashSet;

use crate::host::Host;
use crate::stats::pod_samples;

/// Whether the node is under memory pressure and under disk pressure now.
pub fn pressure(host: &Host) -> (bool, bool) {
    let config = &host.config;
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    let memory = available.is_some_and(|a| a < config.eviction_memory_available);
    let disk = disk_usage(host).is_some_and(|(total, free)| {
        total > 0 && (free as f64) / (total as f64) < config.eviction_disk_free
    });
    (memory, disk)
}

/// Total and free bytes of the node root's filesystem.
pub fn disk_usage(host: &Host) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(&host.config.root).ok()?;
    let frsize = s.fragment_size();
    Some((s.blocks() * frsize, s.blocks_available() * frsize))
}

/// The images containers on this node use (their references as the pods give them).
pub fn images_in_use(host: &Host) -> HashSet<String> {
    let mut out = HashSet::new();
    for pod in host.pods_on_disk() {
        let containers = host.pod_dir(&pod.uid).join("containers");
        for entry in std::fs::read_dir(containers)
            .into_iter()
            .flatten()
            .flatten()
        {
            for attempt in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(image) = std::fs::read_to_string(attempt.path().join("image")) {
                    out.insert(image.trim().to_owned());
                }
            }
        }
    }
    out
}

/// Removes images no container uses, oldest first, while disk usage is above `low` percent
/// (all unused ones when usage can't be read). Returns the names removed.
pub fn image_gc(host: &Host, low_percent: u8) -> Vec<String> {
    let used: HashSet<String> = images_in_use(host)
        .iter()
        .filter_map(|r| berth_image::Reference::parse(r).ok())
        .map(|r| r.to_string())
        .collect();
    let mut images = host.engine.images().list().unwrap_or_default();
    images.sort_by(|a, b| a.created.cmp(&b.created));
    let mut removed = Vec::new();
    for image in images {
        let over = disk_usage(host).is_none_or(|(total, free)| {
            total == 0 || (total - free) * 100 > total * u64::from(low_percent)
        });
        if !over {
            break;
        }
        let canonical = berth_image::Reference::parse(&image.name)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| image.name.clone());
        if used.contains(&canonical) {
            continue;
        }
        if host.engine.remove_image(&image.name, false).is_ok() {
            removed.push(image.name);
        }
    }
    if !removed.is_empty() {
        let _ = host.engine.prune_images();
    }
    removed
}

/// One round: image GC when above `high` or under disk pressure, then at most one eviction.
/// Returns the uid of the pod evicted, if any.
pub fn housekeeping(host: &Host) -> Option<String> {
    let config = &host.config;
    let (memory, disk) = pressure(host);
    let above_high = disk_usage(host).is_some_and(|(total, free)| {
        total > 0 && (total - free) * 100 > total * u64::from(config.image_gc_high_percent)
    });
    if disk || above_high {
        let removed = image_gc(host, config.image_gc_low_percent);
        if !removed.is_empty() {
            tracing::info!(?removed, "image garbage collection");
        }
    }
    let (memory, disk) = if disk { pressure(host) } else { (memory, disk) };
    if !memory && !disk {
        return None;
    }
    let resource = if memory {
        "memory"
    } else {
        "ephemeral-storage"
    };
    let mut candidates: Vec<(u8, u64, String)> = pod_samples(host)
        .into_iter()
        .filter(|p| !host.is_evicted(&p.pod.uid))
        .map(|p| {
            let cgroup = host.find_pod_cgroup(&p.pod.uid).unwrap_or_default();
            let text = cgroup.to_string_lossy();
            let class = if text.contains("/besteffort/") {
                0
            } else if text.contains("/burstable/") {
                1
            } else {
                2
            };
            (class, p.sample.memory, p.pod.uid)
        })
        .collect();
    candidates.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let (_, _, uid) = candidates.into_iter().next()?;
    let message = format!("The node was low on resource: {resource}. ");
    tracing::warn!(%uid, %message, "evicting a pod");
    host.evict(&uid, message);
    Some(uid)
}
