//! Builders for nodes and pods, and a binder that records what the scheduler decided.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use berth_scheduler::k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerImage, ContainerPort, Node, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, NodeSpec, NodeStatus, Pod, PodAffinity,
    PodAffinityTerm, PodAntiAffinity, PodCondition, PodSpec, PreferredSchedulingTerm,
    ResourceRequirements, Taint, Toleration, TopologySpreadConstraint,
};
use berth_scheduler::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use berth_scheduler::k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use berth_scheduler::{BindError, Binder, Binding, Outcome, PodInfo, Scheduler};

pub const HOST: &str = "kubernetes.io/hostname";
pub const ZONE: &str = "topology.kubernetes.io/zone";

pub fn q(list: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    list.iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

pub struct N(pub Node);

pub fn node(name: &str, cpu: &str, mem: &str) -> N {
    N(Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(HOST.to_string(), name.to_string())].into()),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(q(&[("cpu", cpu), ("memory", mem), ("pods", "110")])),
            ..Default::default()
        }),
    })
}

impl N {
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_default()
            .insert(k.into(), v.into());
        self
    }
    pub fn zone(self, z: &str) -> Self {
        self.label(ZONE, z)
    }
    pub fn taint(mut self, k: &str, v: &str, effect: &str) -> Self {
        self.0
            .spec
            .get_or_insert_default()
            .taints
            .get_or_insert_default()
            .push(Taint {
                key: k.into(),
                value: Some(v.into()),
                effect: effect.into(),
                ..Default::default()
            });
        self
    }
    pub fn cordon(mut self) -> Self {
        self.0.spec.get_or_insert_default().unschedulable = Some(true);
        self
    }
    pub fn pods(mut self, n: &str) -> Self {
        let st = self.0.status.as_mut().unwrap();
        st.allocatable
            .as_mut()
            .unwrap()
            .insert("pods".into(), Quantity(n.into()));
        self
    }
    pub fn alloc(mut self, k: &str, v: &str) -> Self {
        let st = self.0.status.as_mut().unwrap();
        st.allocatable
            .as_mut()
            .unwrap()
            .insert(k.into(), Quantity(v.into()));
        self
    }
    pub fn image(mut self, name: &str, size: i64) -> Self {
        self.0
            .status
            .as_mut()
            .unwrap()
            .images
            .get_or_insert_default()
            .push(ContainerImage {
                names: Some(vec![name.into()]),
                size_bytes: Some(size),
            });
        self
    }
}

pub struct P(pub Pod);

pub fn pod(name: &str, cpu: &str, mem: &str) -> P {
    let mut requests = Vec::new();
    if !cpu.is_empty() {
        requests.push(("cpu", cpu));
    }
    if !mem.is_empty() {
        requests.push(("memory", mem));
    }
    P(Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(q(&requests)),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub fn sel(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    })
}

fn term(key: &str, pairs: &[(&str, &str)]) -> PodAffinityTerm {
    PodAffinityTerm {
        label_selector: sel(pairs),
        topology_key: key.into(),
        ..Default::default()
    }
}

impl P {
    fn spec(&mut self) -> &mut PodSpec {
        self.0.spec.as_mut().unwrap()
    }
    fn affinity(&mut self) -> &mut Affinity {
        self.spec().affinity.get_or_insert_default()
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_default()
            .insert(k.into(), v.into());
        self
    }
    pub fn priority(mut self, p: i32) -> Self {
        self.spec().priority = Some(p);
        self
    }
    pub fn on(mut self, node: &str) -> Self {
        self.spec().node_name = Some(node.into());
        self
    }
    pub fn scheduler(mut self, name: &str) -> Self {
        self.spec().scheduler_name = Some(name.into());
        self
    }
    pub fn image(mut self, image: &str) -> Self {
        self.spec().containers[0].image = Some(image.into());
        self
    }
    pub fn request(mut self, k: &str, v: &str) -> Self {
        self.spec().containers[0]
            .resources
            .as_mut()
            .unwrap()
            .requests
            .get_or_insert_default()
            .insert(k.into(), Quantity(v.into()));
        self
    }
    pub fn node_selector(mut self, k: &str, v: &str) -> Self {
        self.spec()
            .node_selector
            .get_or_insert_default()
            .insert(k.into(), v.into());
        self
    }
    pub fn tolerate(mut self, k: &str, op: &str, v: &str, effect: &str) -> Self {
        self.spec()
            .tolerations
            .get_or_insert_default()
            .push(Toleration {
                key: (!k.is_empty()).then(|| k.into()),
                operator: Some(op.into()),
                value: (!v.is_empty()).then(|| v.into()),
                effect: (!effect.is_empty()).then(|| effect.into()),
                ..Default::default()
            });
        self
    }
    pub fn host_port(mut self, port: i32) -> Self {
        self.spec().containers[0]
            .ports
            .get_or_insert_default()
            .push(ContainerPort {
                container_port: port,
                host_port: Some(port),
                ..Default::default()
            });
        self
    }
    pub fn require_node(mut self, key: &str, op: &str, values: &[&str]) -> Self {
        let na = self.affinity().node_affinity.get_or_insert_default();
        let ns = na
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(|| NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm::default()],
            });
        ns.node_selector_terms[0]
            .match_expressions
            .get_or_insert_default()
            .push(NodeSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            });
        self
    }
    pub fn require_node_name(mut self, name: &str) -> Self {
        let na = self
            .affinity()
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_fields: Some(vec![NodeSelectorRequirement {
                    key: "metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![name.into()]),
                }]),
                ..Default::default()
            }],
        });
        self
    }
    pub fn prefer_node(mut self, weight: i32, key: &str, value: &str) -> Self {
        self.affinity()
            .node_affinity
            .get_or_insert_default()
            .preferred_during_scheduling_ignored_during_execution
            .get_or_insert_default()
            .push(PreferredSchedulingTerm {
                weight,
                preference: NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: key.into(),
                        operator: "In".into(),
                        values: Some(vec![value.into()]),
                    }]),
                    ..Default::default()
                },
            });
        self
    }
    pub fn spread(mut self, key: &str, skew: i32, hard: bool, pairs: &[(&str, &str)]) -> Self {
        self.spec()
            .topology_spread_constraints
            .get_or_insert_default()
            .push(TopologySpreadConstraint {
                max_skew: skew,
                topology_key: key.into(),
                when_unsatisfiable: if hard {
                    "DoNotSchedule"
                } else {
                    "ScheduleAnyway"
                }
                .into(),
                label_selector: sel(pairs),
                ..Default::default()
            });
        self
    }
    pub fn min_domains(mut self, n: i32) -> Self {
        let c = self.spec().topology_spread_constraints.as_mut().unwrap();
        c.last_mut().unwrap().min_domains = Some(n);
        self
    }
    pub fn anti(mut self, key: &str, pairs: &[(&str, &str)]) -> Self {
        self.affinity()
            .pod_anti_affinity
            .get_or_insert_with(PodAntiAffinity::default)
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_default()
            .push(term(key, pairs));
        self
    }
    pub fn with(mut self, key: &str, pairs: &[(&str, &str)]) -> Self {
        self.affinity()
            .pod_affinity
            .get_or_insert_with(PodAffinity::default)
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_default()
            .push(term(key, pairs));
        self
    }
    pub fn gang(self, name: &str, min: u32) -> Self {
        self.label("pod-group.scheduling.sigs.k8s.io/name", name)
            .label(
                "pod-group.scheduling.sigs.k8s.io/min-available",
                &min.to_string(),
            )
    }
    pub fn never_preempt(mut self) -> Self {
        self.spec().preemption_policy = Some("Never".into());
        self
    }
}

/// Records bindings (pod name → node), evictions and unschedulable conditions.
#[derive(Default, Debug)]
pub struct Recorder {
    pub bound: BTreeMap<String, String>,
    pub order: Vec<(String, String)>,
    pub evicted: Vec<String>,
    pub conditions: BTreeMap<String, PodCondition>,
}

impl Binder for Recorder {
    fn bind(&mut self, b: &Binding) -> Result<(), BindError> {
        self.bound.insert(b.name.clone(), b.node.clone());
        self.order.push((b.name.clone(), b.node.clone()));
        Ok(())
    }
    fn evict(&mut self, victim: &PodInfo, _: &PodInfo) -> Result<(), BindError> {
        let name = victim.pod.metadata.name.clone().unwrap();
        self.bound.remove(&name);
        self.evicted.push(name);
        Ok(())
    }
    fn unschedulable(&mut self, pod: &PodInfo, condition: &PodCondition) {
        self.conditions
            .insert(pod.pod.metadata.name.clone().unwrap(), condition.clone());
    }
}

impl Recorder {
    pub fn node_of(&self, pod: &str) -> Option<&str> {
        self.bound.get(pod).map(String::as_str)
    }
    pub fn message(&self, pod: &str) -> String {
        self.conditions
            .get(pod)
            .and_then(|c| c.message.clone())
            .unwrap_or_default()
    }
}

/// A default scheduler with these nodes.
pub fn cluster(nodes: Vec<N>) -> Scheduler {
    let mut s = Scheduler::default();
    for n in nodes {
        s.add_node(n.0).unwrap();
    }
    s
}

/// Adds pods one at a time and schedules each before the next (order matters in many tests),
/// following preemptions until the pod is placed or gives up.
pub fn place(s: &mut Scheduler, r: &mut Recorder, pods: Vec<P>) {
    for p in pods {
        s.add_pod(p.0).unwrap();
        while let Some(o) = s.schedule_one(r) {
            if !matches!(o, Outcome::Preempting { .. }) {
                break;
            }
        }
    }
}
