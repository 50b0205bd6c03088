//! A harness in the shape of Kubernetes' scheduler_perf: schedules a workload on simulated
//! nodes with berth-scheduler and prints pods scheduled per second as its last line, plus the
//! placement quality next to the same workload scheduled by evaluating every node.
//!
//! ```text
//! cargo run --release -p berth-benches --bin scheduler_perf -- \
//!     --workload basic --nodes 5000 --existing-pods 1000 --pods 10000
//! ```
//! Workloads: `basic` (100m/500Mi pods), `spread` (zone spread, maxSkew 1, DoNotSchedule),
//! `affinity` (hostname anti-affinity within groups of 100 pods), `daemonset` (one pod per
//! node through `metadata.name` node affinity), `preemption` (nodes full of low-priority pods,
//! each high-priority pod evicts one), `gang` (coscheduled groups of 8).
//! `--no-full` skips the full-evaluation reference run.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, bail};
use berth_scheduler::k8s_openapi::api::core::v1::{
    Affinity, Container, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, NodeStatus, Pod, PodAffinityTerm, PodAntiAffinity, PodSpec,
    ResourceRequirements, TopologySpreadConstraint,
};
use berth_scheduler::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use berth_scheduler::k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use berth_scheduler::{BindError, Binder, Binding, PodInfo, Scheduler};

const ZONES: usize = 10;

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Basic,
    Spread,
    Affinity,
    DaemonSet,
    Preemption,
    Gang,
}

struct Args {
    workload: Workload,
    nodes: usize,
    existing: usize,
    pods: usize,
    full: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        workload: Workload::Basic,
        nodes: 5000,
        existing: 1000,
        pods: 10000,
        full: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--workload" => {
                a.workload = match val()?.as_str() {
                    "basic" => Workload::Basic,
                    "spread" => Workload::Spread,
                    "affinity" => Workload::Affinity,
                    "daemonset" => Workload::DaemonSet,
                    "preemption" => Workload::Preemption,
                    "gang" => Workload::Gang,
                    other => bail!("unknown workload {other}"),
                }
            }
            "--nodes" => a.nodes = val()?.parse()?,
            "--existing-pods" => a.existing = val()?.parse()?,
            "--pods" => a.pods = val()?.parse()?,
            "--no-full" => a.full = false,
            other => bail!("unknown flag {other}"),
        }
    }
    if a.nodes == 0 {
        bail!("--nodes must be positive");
    }
    Ok(a)
}

fn quantities(list: &[(&str, String)]) -> BTreeMap<String, Quantity> {
    list.iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
        .collect()
}

fn node(i: usize) -> Node {
    let name = format!("node-{i}");
    Node {
        metadata: ObjectMeta {
            labels: Some(
                [
                    ("kubernetes.io/hostname".to_string(), name.clone()),
                    (
                        "topology.kubernetes.io/zone".to_string(),
                        format!("zone-{}", i % ZONES),
                    ),
                ]
                .into(),
            ),
            name: Some(name),
            ..Default::default()
        },
        status: Some(NodeStatus {
            allocatable: Some(quantities(&[
                ("cpu", "4".into()),
                ("memory", "32Gi".into()),
                ("pods", "110".into()),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(name: String, cpu: String, mem: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities(&[("cpu", cpu), ("memory", mem.into())])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn labels(p: &mut Pod, l: &[(&str, String)]) {
    p.metadata.labels = Some(l.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
}

fn selector(k: &str, v: &str) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some([(k.to_string(), v.to_string())].into()),
        ..Default::default()
    })
}

/// Existing pods (bound before the measurement) and the measured pods.
fn workload(a: &Args) -> (Vec<Pod>, Vec<Pod>) {
    let mut existing = Vec::new();
    let mut measured = Vec::new();
    let low_per_node = a.existing.div_ceil(a.nodes).max(1);
    for i in 0..a.existing {
        let mut p = match a.workload {
            Workload::Preemption => {
                let mut p = pod(
                    format!("low-{i}"),
                    format!("{}m", 4000 / low_per_node),
                    "500Mi",
                );
                p.spec.as_mut().unwrap().priority = Some(0);
                p
            }
            _ => pod(format!("existing-{i}"), "100m".into(), "500Mi"),
        };
        p.spec.as_mut().unwrap().node_name = Some(format!("node-{}", i % a.nodes));
        existing.push(p);
    }
    for i in 0..a.pods {
        let mut p = pod(format!("pod-{i}"), "100m".into(), "500Mi");
        let spec = p.spec.as_mut().unwrap();
        match a.workload {
            Workload::Basic => {}
            Workload::Spread => {
                labels(&mut p, &[("app", "spread".into())]);
                p.spec.as_mut().unwrap().topology_spread_constraints =
                    Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "topology.kubernetes.io/zone".into(),
                        when_unsatisfiable: "DoNotSchedule".into(),
                        label_selector: selector("app", "spread"),
                        ..Default::default()
                    }]);
            }
            Workload::Affinity => {
                let g = format!("g{}", i / 100);
                labels(&mut p, &[("group", g.clone())]);
                p.spec.as_mut().unwrap().affinity = Some(Affinity {
                    pod_anti_affinity: Some(PodAntiAffinity {
                        required_during_scheduling_ignored_during_execution: Some(vec![
                            PodAffinityTerm {
                                label_selector: selector("group", &g),
                                topology_key: "kubernetes.io/hostname".into(),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            Workload::DaemonSet => {
                spec.affinity = Some(Affinity {
                    node_affinity: Some(NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                            node_selector_terms: vec![NodeSelectorTerm {
                                match_fields: Some(vec![NodeSelectorRequirement {
                                    key: "metadata.name".into(),
                                    operator: "In".into(),
                                    values: Some(vec![format!("node-{}", i % a.nodes)]),
                                }]),
                                ..Default::default()
                            }],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            Workload::Preemption => {
                spec.priority = Some(1000);
                spec.containers[0].resources = Some(ResourceRequirements {
                    requests: Some(quantities(&[
                        ("cpu", format!("{}m", 4000 / low_per_node)),
                        ("memory", "500Mi".into()),
                    ])),
                    ..Default::default()
                });
            }
            Workload::Gang => {
                labels(
                    &mut p,
                    &[
                        (
                            "pod-group.scheduling.sigs.k8s.io/name",
                            format!("gang-{}", i / 8),
                        ),
                        ("pod-group.scheduling.sigs.k8s.io/min-available", "8".into()),
                    ],
                );
            }
        }
        measured.push(p);
    }
    (existing, measured)
}

#[derive(Default)]
struct Record {
    bound: BTreeMap<String, String>,
    evicted: usize,
}

impl Binder for Record {
    fn bind(&mut self, b: &Binding) -> Result<(), BindError> {
        self.bound.insert(b.name.clone(), b.node.clone());
        Ok(())
    }
    fn evict(&mut self, victim: &PodInfo, _: &PodInfo) -> Result<(), BindError> {
        self.bound
            .remove(victim.key.rsplit('/').next().unwrap_or_default());
        self.evicted += 1;
        Ok(())
    }
}

/// User plus system CPU time of this process so far, in seconds. The machine may be shared,
/// so the CPU time says what the scheduler costs, the wall time what it achieved here.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) else {
        return f64::NAN;
    };
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

struct Run {
    seconds: f64,
    cpu: f64,
    record: Record,
    scheduler: Scheduler,
    measured: usize,
}

fn run(a: &Args, full: bool) -> anyhow::Result<Run> {
    let (existing, measured) = workload(a);
    let mut profiles = berth_scheduler::config::default_profiles();
    for p in &mut profiles {
        p.full_evaluation = full;
    }
    let mut s = Scheduler::new(profiles, Default::default())?;
    for i in 0..a.nodes {
        s.add_node(node(i))?;
    }
    for p in existing {
        s.add_pod(p)?;
    }
    let mut record = Record::default();
    let n = measured.len();
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    for p in measured {
        s.add_pod(p)?;
    }
    loop {
        s.run(&mut record);
        if s.pending() == 0 || s.queue().backoff_len() == 0 {
            break;
        }
        // Backing-off pods (preempting pods wait for nothing here): move the clock on.
        let next = s.queue().next_backoff().unwrap_or_default();
        s.advance(next, &mut record);
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    Ok(Run {
        seconds,
        cpu,
        record,
        scheduler: s,
        measured: n,
    })
}

/// Standard deviation of CPU utilisation over nodes (lower is better balanced).
fn cpu_stddev(s: &Scheduler) -> f64 {
    let c = s.cache();
    let u: Vec<f64> = c
        .nodes()
        .iter()
        .map(|&n| c.requested(n)[0] as f64 / c.allocatable(n)[0].max(1) as f64)
        .collect();
    let mean = u.iter().sum::<f64>() / u.len() as f64;
    (u.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / u.len() as f64).sqrt()
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    // The machine is shared: say how busy it was (1-, 5-, 15-minute load averages).
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "load average at start: {} ({} CPUs)",
        load.join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let fast = run(&a, false)?;
    let pods_per_sec = fast.record.bound.len() as f64 / fast.seconds;
    println!(
        "scheduled {}/{} pods on {} nodes in {:.3} s wall, {:.3} s CPU ({:.0} pods per CPU-second; {} evicted, {} attempts, {} classes at the end)",
        fast.record.bound.len(),
        fast.measured,
        a.nodes,
        fast.seconds,
        fast.cpu,
        fast.record.bound.len() as f64 / fast.cpu,
        fast.record.evicted,
        fast.scheduler.stats().attempts,
        fast.scheduler.cache().class_count(),
    );
    if a.full {
        let full = run(&a, true)?;
        let same = fast
            .record
            .bound
            .iter()
            .filter(|(p, n)| full.record.bound.get(*p) == Some(n))
            .count();
        println!(
            "quality: cpu utilisation stddev {:.5} (full evaluation {:.5}); bound {} (full {}); identical placements {}/{}; full evaluation {:.0} pods/s ({:.0} per CPU-second)",
            cpu_stddev(&fast.scheduler),
            cpu_stddev(&full.scheduler),
            fast.record.bound.len(),
            full.record.bound.len(),
            same,
            full.record.bound.len(),
            full.record.bound.len() as f64 / full.seconds,
            full.record.bound.len() as f64 / full.cpu,
        );
    }
    println!("{pods_per_sec:.0} pods/s");
    Ok(())
}
