//! Per-plugin behaviour, written from kube-scheduler's documentation of each default plugin.

mod common;

use berth_scheduler::k8s_openapi::api::policy::v1::{
    PodDisruptionBudget, PodDisruptionBudgetSpec, PodDisruptionBudgetStatus,
};
use berth_scheduler::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use berth_scheduler::{Config, Outcome, Registry, Scheduler};
use common::*;

#[test]
fn resources_fit_explains_every_insufficient_resource() {
    let mut s = cluster(vec![node("a", "1", "1Gi"), node("b", "2", "1Gi").pods("0")]);
    let mut r = Recorder::default();
    place(&mut s, &mut r, vec![pod("big", "1500m", "2Gi")]);
    assert_eq!(r.node_of("big"), None);
    let c = &r.conditions["big"];
    assert_eq!(c.type_, "PodScheduled");
    assert_eq!(c.status, "False");
    assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
    assert!(
        r.message("big").starts_with(
            "0/2 nodes are available: 1 Insufficient cpu, 1 Too many pods, 2 Insufficient memory."
        ),
        "{}",
        r.message("big")
    );
}

#[test]
fn resources_fit_counts_extended_resources_and_init_containers() {
    let mut s = cluster(vec![
        node("plain", "4", "4Gi"),
        node("gpu", "4", "4Gi").alloc("example.com/gpu", "2"),
    ]);
    let mut r = Recorder::default();
    place(
        &mut s,
        &mut r,
        vec![
            pod("g1", "100m", "").request("example.com/gpu", "2"),
            pod("g2", "100m", "").request("example.com/gpu", "1"),
        ],
    );
    assert_eq!(r.node_of("g1"), Some("gpu"));
    assert_eq!(r.node_of("g2"), None);
    assert!(
        r.message("g2")
            .starts_with("0/2 nodes are available: 2 Insufficient example.com/gpu."),
        "{}",
        r.message("g2")
    );
}

#[test]
fn least_allocated_spreads_and_most_allocated_packs() {
    let mut s = cluster(vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")]);
    let mut r = Recorder::default();
    place(
        &mut s,
        &mut r,
        vec![pod("p1", "1", "1Gi"), pod("p2", "1", "1Gi")],
    );
    assert_ne!(r.node_of("p1"), r.node_of("p2"), "LeastAllocated spreads");

    let cfg = Config::from_yaml(
        r#"
profiles:
- schedulerName: default-scheduler
  plugins:
    score:
      disabled: [{name: NodeResourcesBalancedAllocation}]
  pluginConfig:
  - name: NodeResourcesFit
    args: {scoringStrategy: {type: MostAllocated}}
"#,
    )
    .unwrap();
    let mut s = Scheduler::from_config(&cfg, &Registry::default()).unwrap();
    for n in [node("a", "4", "8Gi"), node("b", "4", "8Gi")] {
        s.add_node(n.0).unwrap();
    }
    let mut r = Recorder::default();
    place(
        &mut s,
        &mut r,
        vec![pod("p1", "1", "1Gi"), pod("p2", "1", "1Gi")],
    );
    assert_eq!(r.node_of("p1"), r.node_of("p2"), "MostAllocated packs");
}

#[test]
fn requested_to_capacity_ratio_follows_the_shape() {
    // Score rises with utilisation: bin packing like MostAllocated.
    let cfg = Config::from_yaml(
        r#"
profiles:
- plugins:
    score:
      disabled: [{name: NodeResourcesBalancedAllocation}]
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: RequestedToCapacityRatio
        resources: [{name: cpu, weight: 1}]
        requestedToCapacityRatio:
          shape: [{utilization: 0, score: 0}, {utilization: 100, score: 10}]
"#,
    )
    .unwrap();
    let mut s = Scheduler::from_config(&cfg, &Registry::default()).unwrap();
    for n in [node("a", "4", "8Gi"), node("b", "4", "8Gi")] {
        s.add_node(n.0).unwrap();
    }
    s.add_pod(pod("existing", "2", "1Gi").on("b").0).unwrap();
    let mut r = Recorder::default();
    place(&mut s, &mut r, vec![pod("p", "1", "1Gi")]);
    assert_eq!(r.node_of("p"), Some("b"));
}

#[test]
fn balanced_allocation_prefers_balanced_use() {
    // With the pod placed, both nodes are equally free by LeastAllocated's average (50), but
    // on "cpu-heavy" CPU and memory use diverge (75% and 25%).
    let mut s = cluster(vec![
        node("cpu-heavy", "4", "4Gi"),
        node("even", "4", "4Gi"),
    ]);
    s.add_pod(pod("x", "2", "").request("memory", "0").on("cpu-heavy").0)
        .unwrap();
    s.add_pod(pod("y", "1", "1Gi").on("even").0).unwrap();
    let mut r = Recorder::default();
    place(&mut s, &mut r, vec![pod("p", "1", "1Gi")]);
    assert_eq!(r.node_of("p"), Some("even"));
}

#[test]
fn cordoned_nodes_take_only_pods_that_tolerate_it() {
    let mut s = cluster(vec![node("a", "4", "4Gi").cordon()]);
    let mut r = Recorder::default();
    place(&mut s, &mut r, vec![pod("p", "100m", "")]);
    assert!(
        r.message("p")
            .starts_with("0/1 nodes are available: 1 node(s) were unschedulable.")
    );
    place(
        &mut s,
        &mut r,
        vec![pod("q", "100m", "").tolerate(
            "node.kubernetes.io/unschedulable",
            "Exists",
            "",
            "NoSchedule",
        )],
    );
    assert_eq!(r.node_of("q"), Some("a"));
}

#[test]
fn taints_filter_and_prefer() {
    let mut s = cluster(vec![
        node("infra", "4", "4Gi").taint("dedicated", "infra", "NoSchedule"),
        node("soft", "4", "4Gi").taint("spot", "yes", "PreferNoSchedule"),
        node("plain", "1", "4Gi"),
    ]);
    let mut r = Recorder::default();
    place(
        &mut s,
        &mut r,
        vec![
            pod("p1", "100m", ""),
            pod("big", "2", ""),
            pod("t", "100m", "").tolerate("dedicated", "Equal", "infra", "NoSchedule"),
        ],
    );
    // PreferNoSchedule loses to an untainted node (TaintToleration weight 3) ...
    assert_eq!(r.node_of("p1"), Some("plain"));
    // ... but is usable when nothing else fits.
    assert_eq!(r.node_of("big"), Some("soft"));
    assert!(matches!(
        r.node_of("t"),
        Some("infra") | Some("soft") | Some("plain")
    ));
    place(&mut s, &mut r, vec![pod("huge", "3500m", "")]);
    let m = r.message("huge");
    assert!(
        m.contains("1 node(s) had untolerated taint {dedicated: infra}"),
        "{m}"
    );
}

#[test]
fn node_affinity_and_selector() {
    let mut s = cluster(vec![
        node("ssd", "2", "4Gi").label("disk", "ssd").zone("z1"),
        node("hdd", "8", "8Gi").label("disk", "hdd").zone("z2"),
        node("nvme", "8", "8Gi").label("disk", "nvme").zone("z2"),
    ]);
    let mut r = Recorder::default();
    place(
        &mut s,
        &mut r,
        vec![
            pod("sel", "100m", "").node_selector("disk", "ssd"),
            pod("notin", "100m", "").require_node("disk", "NotIn", &["hdd", "ssd"]),
            pod("pref", "100m", "").prefer_node(50, "disk", "hdd"),
            pod("none", "100m", "").node_selector("disk", "tape"),
            pod("ds", "100m", "").require_node_name("ssd"),
        ],
    );
    assert_eq!(r.node_of("sel"), Some("ssd"));
    assert_eq!(r.node_of("notin"), Some("nvme"));
    assert_eq!(r.node_of("pref"), Some("hdd"));
    assert_eq!(r.node_of("ds"), Some("ssd"));
    assert!(
        r.message("none").starts_with(
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
        ),
        "{}",
        r.message("none")
    );
}

#[test]
fn host_ports_conflict() {
    let mut s = cluster(vec![node("a", "4", "4Gi"), node("b", "4", "4Gi")]);
    let mut r = Recorder::default();
    place(
        &mut s,
        &mut r,
        (0..3)
            .map(|i| pod(&format!("p{i}"), "100m", "").host_port(8080))
            .collect(),
    );
    assert_ne!(r.node_of("p0"), r.node_of("p1"));
    assert_eq!(r.node_of("p2"), None);
    assert!(
        r.message("p2")
            .contains("2 node(s) didn't have free ports for the requested pod ports")
    );
}

#[test]
fn topology_spread_keeps_skew_and_min_domains() {
    let nodes = vec![
        node("a1", "8", "8Gi").zone("a"),
        node("a2", "8", "8Gi").zone("a"),
        node("b1", "1", "8Gi").zone("b"),
    ];
    let mut s = cluster(nodes);
    let mut r = Recorder::default();
    let spread = |n: &str| {
        pod(n, "400m", "")
            .label("app", "web")
            .spread(ZONE, 1, true, &[("app", "web")])
    };
    place(
        &mut s,
        &mut r,
        (0..4).map(|i| spread(&format!("w{i}"))).collect(),
    );
    // b fits only 2 pods of 400m; a then b alternate until b is full, then a can lead by 1.
    let in_a = (0..4)
        .filter(|i| {
            r.node_of(&format!("w{i}"))
                .is_some_and(|n| n.starts_with('a'))
        })
        .count();
    let in_b = (0..4)
        .filter(|i| r.node_of(&format!("w{i}")) == Some("b1"))
        .count();
    assert_eq!((in_a, in_b), (2, 2));
    place(&mut s, &mut r, vec![spread("w4"), spread("w5")]);
    assert!(r.node_of("w4").is_some_and(|n| n.starts_with('a')));
    assert_eq!(r.node_of("w5"), None, "b is full and a may not lead by 2");
    assert!(
        r.message("w5")
            .contains("didn't match pod topology spread constraints")
    );

    // minDomains 3 with only 2 zones: the global minimum counts as 0, so each zone holds at
    // most maxSkew pods.
    let mut s = cluster(vec![
        node("a", "8", "8Gi").zone("a"),
        node("b", "8", "8Gi").zone("b"),
    ]);
    let mut r = Recorder::default();
    let md = |n: &str| {
        pod(n, "100m", "")
            .label("app", "db")
            .spread(ZONE, 1, true, &[("app", "db")])
            .min_domains(3)
    };
    place(
        &mut s,
        &mut r,
        (0..3).map(|i| md(&format!("d{i}"))).collect(),
    );
    assert!(r.node_of("d0").is_some() && r.node_of("d1").is_some());
    assert_ne!(r.node_of("d0"), r.node_of("d1"));
    assert_eq!(r.node_of("d2"), None);
}

#[test]
fn topology_spread_missing_label_is_unresolvable() {
    let mut s = cluster(vec![node("nozone", "8", "8Gi")]);
    let mut r = Recorder::default();
    place(
        &mut s,
        &mut r,
        vec![
            pod("p", "100m", "")
                .label("app", "x")
                .spread(ZONE, 1, true, &[("app", "x")]),
        ],
    );
    assert!(r.message("p").contains(
        "1 node(s) didn't match pod topology spread constraints (missing required label)"
    ));
}

#[test]
fn soft_spread_prefers_emptier_zone() {
    let mut s = cluster(vec![
        node("a", "8", "8Gi").zone("a"),
        node("b", "8", "8Gi").zone("b"),
    ]);
    for i in 0..3 {
        s.add_pod(pod(&format!("e{i}"), "", "").label("app", "w").on("a").0)
            .unwrap();
    }
    // Make "a" the emptier node by resources so only the spread score favours "b".
    s.add_pod(pod("filler", "2", "2Gi").on("b").0).unwrap();
    let mut r = Recorder::default();
    place(
        &mut s,
        &mut r,
        vec![
            pod("p", "100m", "")
                .label("app", "w")
                .spread(ZONE, 1, false, &[("app", "w")]),
        ],
    );
    assert_eq!(r.node_of("p"), Some("b"));
}

#[test]
fn pod_anti_affinity_and_affinity() {
    let mut s = cluster(vec![
        node("n1", "8", "8Gi").zone("a"),
        node("n2", "8", "8Gi").zone("a"),
        node("n3", "8", "8Gi").zone("b"),
    ]);
    let mut r = Recorder::default();
    let anti = |n: &str| {
        pod(n, "100m", "")
            .label("app", "db")
            .anti(HOST, &[("app", "db")])
    };
    place(
        &mut s,
        &mut r,
        (0..4).map(|i| anti(&format!("db{i}"))).collect(),
    );
    let nodes: std::collections::BTreeSet<_> = (0..3)
        .map(|i| r.node_of(&format!("db{i}")).unwrap())
        .collect();
    assert_eq!(nodes.len(), 3, "one per node");
    assert_eq!(r.node_of("db3"), None);
    assert!(
        r.message("db3")
            .contains("3 node(s) didn't match pod anti-affinity rules"),
        "{}",
        r.message("db3")
    );

    // A pod matching existing pods' anti-affinity is kept away from them too.
    place(
        &mut s,
        &mut r,
        vec![pod("intruder", "100m", "").label("app", "db")],
    );
    assert_eq!(r.node_of("intruder"), None);
    assert!(
        r.message("intruder")
            .contains("3 node(s) didn't satisfy existing pods anti-affinity rules")
    );

    // Required affinity follows a pod into its zone; the first pod of a self-matching group
    // may go anywhere.
    let mut s = cluster(vec![
        node("x", "8", "8Gi").zone("a"),
        node("y", "8", "8Gi").zone("b"),
    ]);
    let mut r = Recorder::default();
    s.add_pod(pod("cache", "100m", "").label("app", "cache").on("y").0)
        .unwrap();
    place(
        &mut s,
        &mut r,
        vec![
            pod("web", "100m", "").with(ZONE, &[("app", "cache")]),
            pod("first", "100m", "")
                .label("grp", "g")
                .with(ZONE, &[("grp", "g")]),
            pod("lonely", "100m", "").with(ZONE, &[("app", "nothing")]),
        ],
    );
    assert_eq!(r.node_of("web"), Some("y"));
    assert!(r.node_of("first").is_some());
    assert_eq!(r.node_of("lonely"), None);
    assert!(
        r.message("lonely")
            .contains("didn't match pod affinity rules")
    );
}

#[test]
fn image_locality_prefers_nodes_with_the_image() {
    let mut s = cluster(vec![
        node("cold", "4", "4Gi"),
        node("warm", "4", "4Gi").image("registry.example/app:1", 800 << 20),
    ]);
    let mut r = Recorder::default();
    place(
        &mut s,
        &mut r,
        vec![pod("p", "100m", "").image("registry.example/app:1")],
    );
    assert_eq!(r.node_of("p"), Some("warm"));
}

#[test]
fn preemption_evicts_fewest_lowest_and_respects_pdbs() {
    let mut s = cluster(vec![node("a", "2", "4Gi"), node("b", "2", "4Gi")]);
    s.add_pod(
        pod("a-low", "2", "")
            .priority(1)
            .label("app", "protected")
            .on("a")
            .0,
    )
    .unwrap();
    s.add_pod(pod("b-low1", "1", "").priority(1).on("b").0)
        .unwrap();
    s.add_pod(pod("b-low2", "1", "").priority(5).on("b").0)
        .unwrap();
    s.set_pdb(&PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some("protect".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            selector: sel(&[("app", "protected")]),
            ..Default::default()
        }),
        status: Some(PodDisruptionBudgetStatus {
            disruptions_allowed: 0,
            ..Default::default()
        }),
    })
    .unwrap();
    let mut r = Recorder::default();
    place(&mut s, &mut r, vec![pod("high", "1", "").priority(100)]);
    // On "a" the victim is PDB-protected; on "b" one victim (the lowest priority) suffices.
    assert_eq!(r.evicted, vec!["b-low1".to_string()]);
    assert_eq!(r.node_of("high"), Some("b"));

    // Equal or higher priority pods are never victims.
    place(&mut s, &mut r, vec![pod("peer", "2", "").priority(1)]);
    assert_eq!(r.node_of("peer"), None);
    assert_eq!(r.evicted.len(), 1);
    assert!(
        r.message("peer")
            .contains("preemption: 0/2 nodes are available"),
        "{}",
        r.message("peer")
    );

    // preemptionPolicy: Never.
    place(
        &mut s,
        &mut r,
        vec![pod("polite", "2", "").priority(1000).never_preempt()],
    );
    assert_eq!(r.node_of("polite"), None);
    assert!(r.message("polite").contains("preemptionPolicy=Never"));
    assert_eq!(r.evicted.len(), 1);
}

#[test]
fn gang_is_placed_whole_or_not_at_all() {
    let mut s = cluster(vec![node("a", "1", "4Gi"), node("b", "1", "4Gi")]);
    let mut r = Recorder::default();
    // Three members of 600m fit only two nodes: nobody binds.
    for i in 0..3 {
        s.add_pod(pod(&format!("g{i}"), "600m", "").gang("big", 3).0)
            .unwrap();
    }
    s.run(&mut r);
    assert!(r.bound.is_empty(), "{:?}", r.bound);
    assert_eq!(
        s.cache().pod_count(),
        0,
        "waiting members released their places"
    );
    // Two members of a gang of 2 fit: both bind together.
    for i in 0..2 {
        s.add_pod(pod(&format!("h{i}"), "100m", "").gang("small", 2).0)
            .unwrap();
    }
    s.run(&mut r);
    assert!(r.node_of("h0").is_some() && r.node_of("h1").is_some());
    // A gang whose members have not all arrived waits at PreFilter.
    s.add_pod(pod("k0", "100m", "").gang("late", 2).0).unwrap();
    s.run(&mut r);
    assert_eq!(r.node_of("k0"), None);
    assert!(
        r.message("k0").contains("cannot find enough sibling pods"),
        "{}",
        r.message("k0")
    );
}

#[test]
fn profiles_are_chosen_by_scheduler_name() {
    let cfg = Config::from_yaml(
        r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
- schedulerName: packer
  pluginConfig:
  - name: NodeResourcesFit
    args: {scoringStrategy: {type: MostAllocated}}
  plugins:
    multiPoint:
      disabled: [{name: NodeResourcesBalancedAllocation}]
"#,
    )
    .unwrap();
    let mut s = Scheduler::from_config(&cfg, &Registry::default()).unwrap();
    for n in [node("a", "4", "8Gi"), node("b", "4", "8Gi")] {
        s.add_node(n.0).unwrap();
    }
    let mut r = Recorder::default();
    place(
        &mut s,
        &mut r,
        vec![
            pod("p1", "1", "1Gi").scheduler("packer"),
            pod("p2", "1", "1Gi").scheduler("packer"),
            pod("other", "1", "1Gi").scheduler("someone-else"),
        ],
    );
    assert_eq!(r.node_of("p1"), r.node_of("p2"));
    assert_eq!(
        r.node_of("other"),
        None,
        "another scheduler's pod is left alone"
    );
    assert_eq!(s.pending(), 0);
}

#[test]
fn bad_configuration_is_rejected() {
    for (yaml, want) in [
        (
            "profiles: [{plugins: {score: {enabled: [{name: Nope}]}}}]",
            "unknown plugin",
        ),
        (
            "apiVersion: kubescheduler.config.k8s.io/v1beta1",
            "unsupported apiVersion",
        ),
        (
            "profiles: [{schedulerName: a}, {schedulerName: a}]",
            "duplicate",
        ),
        (
            "profiles: [{plugins: {filter: {enabled: [{name: ImageLocality}]}}}]",
            "no filter",
        ),
        (
            "profiles: [{plugins: {queueSort: {disabled: [{name: '*'}]}}}]",
            "queueSort",
        ),
        (
            "profiles: [{pluginConfig: [{name: NodeResourcesFit, args: {scoringStrategy: {type: X}}}]}]",
            "unknown scoring strategy",
        ),
        ("profiles: [{bogusField: 1}]", "unknown field"),
    ] {
        let err = Config::from_yaml(yaml)
            .and_then(|c| c.build(&Registry::default()).map(|_| ()))
            .unwrap_err();
        let msg = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(msg.contains(want), "{yaml}: {msg}");
    }
}

#[test]
fn unschedulable_pods_return_when_a_node_arrives() {
    let mut s = cluster(vec![node("small", "1", "1Gi")]);
    let mut r = Recorder::default();
    place(&mut s, &mut r, vec![pod("p", "2", "")]);
    assert_eq!(s.queue().unschedulable_len(), 1);
    // A pod deletion does not help a pod that NodeResourcesFit... it does: it is requeued with
    // backoff. A new node makes it active (after its backoff).
    s.add_node(node("big", "4", "4Gi").0).unwrap();
    assert_eq!(s.queue().unschedulable_len(), 0);
    assert_eq!(s.run(&mut r), 0, "still backing off");
    s.advance(std::time::Duration::from_secs(2), &mut r);
    s.run(&mut r);
    assert_eq!(r.node_of("p"), Some("big"));
}

#[test]
fn no_nodes_at_all() {
    let mut s = Scheduler::default();
    let mut r = Recorder::default();
    place(&mut s, &mut r, vec![pod("p", "100m", "")]);
    assert_eq!(r.message("p"), "no nodes available to schedule pods");
}

#[test]
fn scheduling_gates_hold_pods_back() {
    use berth_scheduler::k8s_openapi::api::core::v1::PodSchedulingGate;
    let mut s = cluster(vec![node("a", "1", "1Gi")]);
    let mut r = Recorder::default();
    let mut p = pod("gated", "100m", "");
    p.0.spec.as_mut().unwrap().scheduling_gates = Some(vec![PodSchedulingGate {
        name: "wait".into(),
    }]);
    s.add_pod(p.0.clone()).unwrap();
    assert_eq!(s.run(&mut r), 0);
    p.0.spec.as_mut().unwrap().scheduling_gates = None;
    s.add_pod(p.0).unwrap();
    s.run(&mut r);
    assert_eq!(r.node_of("gated"), Some("a"));
}

#[test]
fn bad_objects_are_rejected_without_state() {
    let mut s = cluster(vec![node("a", "1", "1Gi")]);
    let bad = pod("p", "lots", "");
    assert!(s.add_pod(bad.0).is_err());
    assert_eq!(s.pending(), 0);
    let mut n = node("b", "1", "1Gi");
    n.0.status
        .as_mut()
        .unwrap()
        .allocatable
        .as_mut()
        .unwrap()
        .insert(
            "cpu".into(),
            berth_scheduler::k8s_openapi::apimachinery::pkg::api::resource::Quantity("1x".into()),
        );
    assert!(s.add_node(n.0).is_err());
    assert_eq!(s.cache().node_count(), 1);
    let mut r = Recorder::default();
    let _ = s.run(&mut r);
    let _ = Outcome::Bound {
        pod: "x".into(),
        node: "y".into(),
    };
}

#[test]
fn a_nominated_pod_keeps_its_place_from_lower_priority_pods() {
    use berth_scheduler::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let mut s = cluster(vec![node("a", "2", "4Gi")]);
    let mut r = Recorder::default();
    s.add_pod(pod("low", "2", "").priority(1).on("a").0)
        .unwrap();
    s.add_pod(pod("high", "2", "").priority(100).0).unwrap();
    // High preempts: "low" is evicted and "high" is nominated to "a".
    match s.schedule_one(&mut r) {
        Some(Outcome::Preempting { node, victims, .. }) => {
            assert_eq!(node, "a");
            assert_eq!(victims.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.nominations().collect::<Vec<_>>(), [("default/high", "a")]);
    // The watch shows the victim terminating (it still holds its resources): no more victims,
    // "high" waits.
    let mut low = pod("low", "2", "").priority(1).on("a").0;
    low.metadata.deletion_timestamp = Some(Time(
        berth_scheduler::k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    s.add_pod(low).unwrap();
    match s.schedule_one(&mut r) {
        Some(Outcome::Unschedulable { message, .. }) => assert!(
            message.contains("not eligible due to a terminating pod on the nominated node"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.evicted, ["low"]);
    // The victim goes; "high" backs off, and a less important pod arriving meanwhile does not
    // take the place "high" was promised.
    s.delete_pod("default", "low");
    s.add_pod(pod("sneaky", "1", "").priority(5).0).unwrap();
    match s.schedule_one(&mut r) {
        Some(Outcome::Unschedulable { pod, message }) => {
            assert_eq!(&*pod, "default/sneaky");
            assert!(message.contains("Insufficient cpu"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    s.advance(std::time::Duration::from_secs(60), &mut r);
    s.run(&mut r);
    assert_eq!(r.node_of("high"), Some("a"));
    assert_eq!(r.node_of("sneaky"), None);
    assert_eq!(s.nominations().count(), 0);
}

#[test]
fn a_more_important_pod_is_not_held_back_by_a_nomination() {
    let mut s = cluster(vec![node("a", "2", "4Gi")]);
    let mut r = Recorder::default();
    s.add_pod(pod("low", "2", "").priority(1).on("a").0)
        .unwrap();
    s.add_pod(pod("mid", "2", "").priority(50).0).unwrap();
    assert!(matches!(
        s.schedule_one(&mut r),
        Some(Outcome::Preempting { .. })
    ));
    // Before "mid" is retried, a more important pod takes the freed node: the reservation
    // of a less important nominee does not stop it.
    s.add_pod(pod("top", "2", "").priority(1000).0).unwrap();
    assert!(matches!(
        s.schedule_one(&mut r),
        Some(Outcome::Bound { .. })
    ));
    assert_eq!(r.node_of("top"), Some("a"));
}

#[test]
fn namespace_selector_in_affinity_terms_uses_namespace_labels() {
    use berth_scheduler::k8s_openapi::api::core::v1::Namespace;
    use berth_scheduler::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let ns = |name: &str, team: &str| Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("team".to_string(), team.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut s = cluster(vec![
        node("a", "4", "8Gi").zone("z1"),
        node("b", "4", "8Gi").zone("z2"),
    ]);
    s.set_namespace(&ns("red-1", "red"));
    s.set_namespace(&ns("blue-1", "blue"));
    let mut r = Recorder::default();
    let mut db = pod("db", "1", "").label("app", "db").on("a");
    db.0.metadata.namespace = Some("red-1".into());
    s.add_pod(db.0).unwrap();
    let mut other_db = pod("db", "1", "").label("app", "db").on("b");
    other_db.0.metadata.namespace = Some("blue-1".into());
    s.add_pod(other_db.0).unwrap();
    // Anti-affinity with app=db pods in namespaces labelled team=red: only node b is allowed
    // (the blue db does not count).
    let mut web = pod("web", "1", "").anti("kubernetes.io/hostname", &[("app", "db")]);
    {
        let spec = web.0.spec.as_mut().unwrap();
        let term = &mut spec
            .affinity
            .as_mut()
            .unwrap()
            .pod_anti_affinity
            .as_mut()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_mut()
            .unwrap()[0];
        term.namespace_selector = Some(LabelSelector {
            match_labels: Some([("team".to_string(), "red".to_string())].into()),
            ..Default::default()
        });
    }
    place(&mut s, &mut r, vec![P(web.0.clone())]);
    assert_eq!(r.node_of("web"), Some("b"));
    // Relabel: now the blue namespace is red too, and both nodes carry a matching db.
    s.set_namespace(&ns("blue-1", "red"));
    web.0.metadata.name = Some("web2".into());
    place(&mut s, &mut r, vec![web]);
    assert_eq!(r.node_of("web2"), None);
    assert!(
        r.message("web2")
            .contains("didn't match pod anti-affinity rules"),
        "{}",
        r.message("web2")
    );
}

#[test]
fn percentage_of_nodes_to_score_follows_kube_and_is_validated() {
    let cfg = Config::from_yaml("percentageOfNodesToScore: 30\nprofiles:\n- schedulerName: a\n- schedulerName: b\n  percentageOfNodesToScore: 0\n").unwrap();
    let profiles = cfg.build(&Registry::default()).unwrap();
    assert_eq!(profiles[0].nodes_to_find(5000), 1500);
    // 0: kube's adaptive default, 50 % - 5000/125 % = 10 %.
    assert_eq!(profiles[1].nodes_to_find(5000), 500);
    assert_eq!(profiles[1].nodes_to_find(50), 50);
    assert_eq!(profiles[1].nodes_to_find(200), 100);
    assert_eq!(profiles[1].nodes_to_find(100_000), 5000);
    for bad in [
        "percentageOfNodesToScore: 101",
        "percentageOfNodesToScore: -1",
    ] {
        let err = Config::from_yaml(bad)
            .unwrap()
            .build(&Registry::default())
            .unwrap_err();
        assert!(err.to_string().contains("between 0 and 100"), "{err}");
    }
}

#[test]
fn without_scores_the_first_feasible_node_in_turn_is_chosen() {
    // A profile with no score plugin: nodes are taken in round-robin order, skipping nodes
    // that do not fit, exactly as full evaluation does.
    let yaml = "profiles:\n- plugins:\n    score:\n      disabled: [{name: '*'}]\n";
    let cfg = Config::from_yaml(yaml).unwrap();
    let run = |full: bool| {
        let mut profiles = cfg.build(&Registry::default()).unwrap();
        profiles[0].full_evaluation = full;
        profiles[0].parallel_threshold = usize::MAX;
        let mut s = Scheduler::new(profiles, Default::default()).unwrap();
        for (i, cpu) in ["1", "4", "1", "4", "4"].iter().enumerate() {
            s.add_node(
                node(&format!("n{i}"), cpu, "8Gi")
                    .label("i", &i.to_string())
                    .0,
            )
            .unwrap();
        }
        let mut r = Recorder::default();
        let pods = (0..8).map(|i| pod(&format!("p{i}"), "2", "")).collect();
        place(&mut s, &mut r, pods);
        r.order
    };
    let fast = run(false);
    assert_eq!(fast, run(true));
    assert_eq!(fast.len(), 6, "{fast:?}");
    assert!(fast.iter().all(|(_, n)| n != "n0" && n != "n2"), "{fast:?}");
}

#[test]
fn a_decision_lists_the_top_scores() {
    let mut s = cluster(vec![
        node("busy", "4", "8Gi"),
        node("idle", "4", "8Gi"),
        node("half", "4", "8Gi"),
        node("full", "4", "8Gi"),
    ]);
    let mut r = Recorder::default();
    s.add_pod(pod("x", "3", "6Gi").on("busy").0).unwrap();
    s.add_pod(pod("y", "2", "4Gi").on("half").0).unwrap();
    s.add_pod(pod("z", "4", "8Gi").on("full").0).unwrap();
    place(&mut s, &mut r, vec![pod("p", "500m", "1Gi")]);
    let d = s.last_decision().unwrap();
    let names: Vec<&str> = d
        .top
        .as_slice()
        .iter()
        .map(|&(n, _)| s.cache().node(n).name.as_str())
        .collect();
    assert_eq!(names, ["idle", "half", "busy"], "{d:?}");
    let scores: Vec<i64> = d.top.as_slice().iter().map(|&(_, s)| s).collect();
    assert!(scores.windows(2).all(|w| w[0] > w[1]), "{scores:?}");
    assert_eq!(
        (d.top.as_slice()[0].0, d.score, d.feasible),
        (d.node, scores[0], 3)
    );
}
