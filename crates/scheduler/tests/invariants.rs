//! Property tests over random clusters and pod streams: the invariants kube-scheduler users rely
//! on, checked against an independent oracle.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use berth_scheduler::config::default_profiles;
use berth_scheduler::{Outcome, Scheduler};
use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct GNode {
    cpu: i64,
    mem_mi: i64,
    zone: u8,
    ssd: bool,
    tainted: bool,
}

#[derive(Debug, Clone)]
struct GPod {
    cpu: i64,
    mem_mi: i64,
    ssd: bool,
    tolerate: bool,
    app: u8,
    anti: bool,
    spread: bool,
    priority: i32,
}

fn gnode() -> impl Strategy<Value = GNode> {
    (
        500i64..6000,
        256i64..8192,
        0u8..3,
        any::<bool>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(cpu, mem_mi, zone, ssd, tainted)| GNode {
            cpu,
            mem_mi,
            zone,
            ssd,
            tainted,
        })
}

fn gpod(priorities: bool) -> impl Strategy<Value = GPod> {
    (
        0i64..2000,
        0i64..3000,
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.3),
        0u8..4,
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.3),
        0i32..3,
    )
        .prop_map(
            move |(cpu, mem_mi, ssd, tolerate, app, anti, spread, priority)| GPod {
                cpu,
                mem_mi,
                ssd: ssd && !spread,
                tolerate,
                app,
                anti,
                spread,
                priority: if priorities { priority * 100 } else { 0 },
            },
        )
}

fn build_node(i: usize, g: &GNode) -> N {
    let mut n = node(
        &format!("n{i}"),
        &format!("{}m", g.cpu),
        &format!("{}Mi", g.mem_mi),
    )
    .zone(&format!("z{}", g.zone));
    if g.ssd {
        n = n.label("disk", "ssd");
    }
    if g.tainted {
        n = n.taint("dedicated", "x", "NoSchedule");
    }
    n
}

fn build_pod(i: usize, g: &GPod) -> P {
    let app = format!("a{}", g.app);
    let mut p = pod(
        &format!("p{i}"),
        &format!("{}m", g.cpu),
        &format!("{}Mi", g.mem_mi),
    )
    .label("app", &app)
    .priority(g.priority);
    if g.ssd {
        p = p.node_selector("disk", "ssd");
    }
    if g.tolerate {
        p = p.tolerate("dedicated", "Exists", "", "NoSchedule");
    }
    if g.anti {
        p = p.anti(HOST, &[("app", &app)]);
    }
    if g.spread {
        p = p.spread(ZONE, 1, true, &[("app", &app)]);
    }
    p
}

/// Where each bound pod is, from the binder's record (independent of the scheduler's cache).
fn placement(r: &Recorder) -> BTreeMap<usize, Vec<usize>> {
    let mut m: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (p, n) in &r.bound {
        m.entry(n[1..].parse().unwrap())
            .or_default()
            .push(p[1..].parse().unwrap());
    }
    m
}

/// Whether pod `p` may go on node `n` given the placement, by the rules themselves.
fn oracle_fits(
    nodes: &[GNode],
    pods: &[GPod],
    place: &BTreeMap<usize, Vec<usize>>,
    p: usize,
    n: usize,
) -> bool {
    let (gp, gn) = (&pods[p], &nodes[n]);
    let on: &[usize] = place.get(&n).map(Vec::as_slice).unwrap_or(&[]);
    let cpu: i64 = on.iter().map(|q| pods[*q].cpu).sum();
    let mem: i64 = on.iter().map(|q| pods[*q].mem_mi).sum();
    if cpu + gp.cpu > gn.cpu || mem + gp.mem_mi > gn.mem_mi || on.len() >= 110 {
        return false;
    }
    if gp.ssd && !gn.ssd || gn.tainted && !gp.tolerate {
        return false;
    }
    if gp.anti && on.iter().any(|q| pods[*q].app == gp.app) {
        return false;
    }
    if on.iter().any(|q| pods[*q].anti && pods[*q].app == gp.app) {
        return false;
    }
    if gp.spread {
        let mut zones: BTreeMap<u8, i64> = nodes.iter().map(|n| (n.zone, 0)).collect();
        for (node, list) in place {
            for q in list {
                if pods[*q].app == gp.app {
                    *zones.get_mut(&nodes[*node].zone).unwrap() += 1;
                }
            }
        }
        let min = *zones.values().min().unwrap();
        if zones[&gn.zone] + 1 - min > 1 {
            return false;
        }
    }
    true
}

fn settle(s: &mut Scheduler, r: &mut Recorder) {
    let mut t = s.now();
    for _ in 0..6 {
        s.run(r);
        t += Duration::from_secs(70);
        s.advance(t, r);
    }
    s.retry_all();
    s.run(r);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// No node is over-committed; selectors, taints, anti-affinity and spread constraints
    /// always hold; no pod is left pending while some node fits it; class evaluation places
    /// exactly like full evaluation; the same input gives the same placements.
    #[test]
    fn placements_respect_every_constraint(
        nodes in prop::collection::vec(gnode(), 1..8),
        pods in prop::collection::vec(gpod(false), 1..40),
    ) {
        let mut runs = Vec::new();
        for full in [false, true, false] {
            let mut profiles = default_profiles();
            profiles[0].full_evaluation = full;
            let mut s = Scheduler::new(profiles, Default::default()).unwrap();
            for (i, n) in nodes.iter().enumerate() {
                s.add_node(build_node(i, n).0).unwrap();
            }
            for (i, p) in pods.iter().enumerate() {
                s.add_pod(build_pod(i, p).0).unwrap();
            }
            let mut r = Recorder::default();
            settle(&mut s, &mut r);
            runs.push(r);
        }
        prop_assert_eq!(&runs[0].order, &runs[1].order, "class path == full evaluation");
        prop_assert_eq!(&runs[0].order, &runs[2].order, "deterministic");
        let r = &runs[0];
        let place = placement(r);
        // Replaying the bindings in order, each must have been allowed at its time.
        let mut so_far: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (p, n) in &r.order {
            let (p, n): (usize, usize) = (p[1..].parse().unwrap(), n[1..].parse().unwrap());
            prop_assert!(oracle_fits(&nodes, &pods, &so_far, p, n), "p{p} on n{n}");
            so_far.entry(n).or_default().push(p);
        }
        // Nothing pending fits anywhere now.
        for p in 0..pods.len() {
            if r.bound.contains_key(&format!("p{p}")) {
                continue;
            }
            for n in 0..nodes.len() {
                prop_assert!(!oracle_fits(&nodes, &pods, &place, p, n), "p{p} fits n{n} but is pending");
            }
        }
    }

    /// Preemption evicts only lower-priority pods, and the preemptor then fits; resources are
    /// never over-committed.
    #[test]
    fn preemption_only_evicts_lower_priority(
        nodes in prop::collection::vec(gnode(), 1..5),
        pods in prop::collection::vec(gpod(true), 1..30),
    ) {
        let nodes: Vec<GNode> = nodes.into_iter().map(|n| GNode { tainted: false, ..n }).collect();
        let pods: Vec<GPod> = pods
            .into_iter()
            .map(|p| GPod { anti: false, spread: false, ssd: false, ..p })
            .collect();
        let mut s = Scheduler::default();
        for (i, n) in nodes.iter().enumerate() {
            s.add_node(build_node(i, n).0).unwrap();
        }
        let mut r = Recorder::default();
        for (i, p) in pods.iter().enumerate() {
            s.add_pod(build_pod(i, p).0).unwrap();
            while let Some(o) = s.schedule_one(&mut r) {
                if let Outcome::Preempting { pod, node, victims } = o {
                    let pre: usize = pod.rsplit('/').next().unwrap()[1..].parse().unwrap();
                    for v in &victims {
                        let v: usize = v.rsplit('/').next().unwrap()[1..].parse().unwrap();
                        prop_assert!(pods[v].priority < pods[pre].priority);
                    }
                    let n: usize = node[1..].parse().unwrap();
                    prop_assert!(oracle_fits(&nodes, &pods, &placement(&r), pre, n));
                }
            }
        }
        for (n, list) in placement(&r) {
            let cpu: i64 = list.iter().map(|p| pods[*p].cpu).sum();
            let mem: i64 = list.iter().map(|p| pods[*p].mem_mi).sum();
            prop_assert!(cpu <= nodes[n].cpu && mem <= nodes[n].mem_mi);
        }
    }

    /// A gang is placed whole or not at all.
    #[test]
    fn gangs_are_all_or_nothing(
        nodes in prop::collection::vec((500i64..3000, 0u8..1), 1..5),
        gangs in prop::collection::vec((1usize..5, 100i64..1500), 1..6),
    ) {
        let mut s = Scheduler::default();
        for (i, (cpu, _)) in nodes.iter().enumerate() {
            s.add_node(node(&format!("n{i}"), &format!("{cpu}m"), "8Gi").0).unwrap();
        }
        let mut members = Vec::new();
        for (g, (size, cpu)) in gangs.iter().enumerate() {
            for m in 0..*size {
                let name = format!("g{g}-{m}");
                s.add_pod(pod(&name, &format!("{cpu}m"), "").gang(&format!("gang{g}"), *size as u32).0).unwrap();
                members.push((g, name));
            }
        }
        let mut r = Recorder::default();
        settle(&mut s, &mut r);
        let t = s.now() + Duration::from_secs(120);
        s.advance(t, &mut r);
        for (g, (size, _)) in gangs.iter().enumerate() {
            let bound = members.iter().filter(|(h, n)| *h == g && r.bound.contains_key(n)).count();
            prop_assert!(bound == 0 || bound >= *size, "gang {g}: {bound} of {size} bound");
        }
        for (n, list) in &r.bound.iter().fold(BTreeMap::<&str, i64>::new(), |mut m, (p, n)| {
            let g: usize = p[1..p.find('-').unwrap()].parse().unwrap();
            *m.entry(n.as_str()).or_default() += gangs[g].1;
            m
        }) {
            let i: usize = n[1..].parse().unwrap();
            prop_assert!(*list <= nodes[i].0);
        }
    }
}
