//! [`PodInfo`]: a pod compiled once for scheduling (requests summed, selectors, tolerations,
//! affinity terms and spread constraints parsed), so the hot loop never reads the API object.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod};
use rustc_hash::FxHashMap;

use crate::error::{Error, Result};
use crate::labels::{Labels, NodeTerm, NodeTerms, Selector};
use crate::quantity;

/// The node label that names the node (the `kubernetes.io/hostname` topology).
pub const HOSTNAME: &str = "kubernetes.io/hostname";
/// The zone topology label.
pub const ZONE: &str = "topology.kubernetes.io/zone";
/// The label naming a pod's gang (coscheduling).
pub const POD_GROUP_LABEL: &str = "pod-group.scheduling.sigs.k8s.io/name";
/// The label giving a gang's minimum member count (coscheduling).
pub const POD_GROUP_MIN_LABEL: &str = "pod-group.scheduling.sigs.k8s.io/min-available";
/// CPU request counted for scoring when a container requests none (kube-scheduler's 100m).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Memory request counted for scoring when a container requests none (200 MiB).
pub const DEFAULT_MEMORY: i64 = 200 << 20;

/// Index of CPU (millicores) in resource arrays.
pub const CPU: usize = 0;
/// Index of memory (bytes) in resource arrays.
pub const MEMORY: usize = 1;
/// Index of ephemeral storage (bytes) in resource arrays.
pub const EPHEMERAL: usize = 2;
/// Index of the pod count in resource arrays.
pub const PODS: usize = 3;

/// What a pod asks of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Requests {
    /// CPU (millicores), memory, ephemeral storage (bytes); pods is always 1.
    pub core: [i64; 3],
    /// CPU and memory with kube-scheduler's defaults for containers that request none (scoring).
    pub nonzero: [i64; 2],
    /// Extended resources (`nvidia.com/gpu`, `hugepages-2Mi`), sorted by name.
    pub scalars: Vec<(String, i64)>,
}

impl Requests {
    /// Whether the pod requests nothing at all (a best-effort pod).
    pub fn is_empty(&self) -> bool {
        self.core.iter().all(|v| *v == 0) && self.scalars.iter().all(|(_, v)| *v == 0)
    }
}

#[derive(Default)]
struct Acc {
    core: [i64; 3],
    nonzero: [i64; 2],
    scalars: Vec<(String, i64)>,
}

impl Acc {
    fn add_scalar(&mut self, name: &str, v: i64) {
        match self.scalars.iter_mut().find(|(n, _)| n == name) {
            Some((_, x)) => *x += v,
            None => self.scalars.push((name.to_owned(), v)),
        }
    }
    fn add(&mut self, o: &Acc) {
        for i in 0..3 {
            self.core[i] += o.core[i];
        }
        for i in 0..2 {
            self.nonzero[i] += o.nonzero[i];
        }
        for (n, v) in &o.scalars {
            self.add_scalar(n, *v);
        }
    }
    fn max(&mut self, o: &Acc) {
        for i in 0..3 {
            self.core[i] = self.core[i].max(o.core[i]);
        }
        for i in 0..2 {
            self.nonzero[i] = self.nonzero[i].max(o.nonzero[i]);
        }
        for (n, v) in &o.scalars {
            match self.scalars.iter_mut().find(|(m, _)| m == n) {
                Some((_, x)) => *x = (*x).max(*v),
                None => self.scalars.push((n.clone(), *v)),
            }
        }
    }
    fn of_container(c: &Container) -> Result<Acc> {
        let mut a = Acc::default();
        let mut cpu_set = false;
        let mut mem_set = false;
        for (name, q) in c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .into_iter()
            .flatten()
        {
            match name.as_str() {
                "cpu" => {
                    a.core[CPU] = quantity::milli(&q.0)?;
                    cpu_set = true;
                }
                "memory" => {
                    a.core[MEMORY] = quantity::value(&q.0)?;
                    mem_set = true;
                }
                "ephemeral-storage" => a.core[EPHEMERAL] = quantity::value(&q.0)?,
                other => a.add_scalar(other, quantity::value(&q.0)?),
            }
        }
        a.nonzero[CPU] = if cpu_set {
            a.core[CPU]
        } else {
            DEFAULT_MILLI_CPU
        };
        a.nonzero[MEMORY] = if mem_set {
            a.core[MEMORY]
        } else {
            DEFAULT_MEMORY
        };
        Ok(a)
    }
}

/// A pod's total requests the way kube-scheduler computes them: the sum of the containers and
/// restartable (sidecar) init containers, or the largest init container step if that is more,
/// plus the pod overhead.
pub fn pod_requests(pod: &Pod) -> Result<Requests> {
    let spec = pod.spec.as_ref();
    let mut sum = Acc::default();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        sum.add(&Acc::of_container(c)?);
    }
    let mut sidecars = Acc::default();
    let mut init_max = Acc::default();
    for c in spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
    {
        let a = Acc::of_container(c)?;
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&a);
            init_max.max(&sidecars);
        } else {
            let mut step = Acc::default();
            step.add(&sidecars);
            step.add(&a);
            init_max.max(&step);
        }
    }
    sum.add(&sidecars);
    sum.max(&init_max);
    if let Some(overhead) = spec.and_then(|s| s.overhead.as_ref()) {
        let mut o = Acc::default();
        for (name, q) in overhead {
            match name.as_str() {
                "cpu" => {
                    o.core[CPU] = quantity::milli(&q.0)?;
                    o.nonzero[CPU] = o.core[CPU];
                }
                "memory" => {
                    o.core[MEMORY] = quantity::value(&q.0)?;
                    o.nonzero[MEMORY] = o.core[MEMORY];
                }
                "ephemeral-storage" => o.core[EPHEMERAL] = quantity::value(&q.0)?,
                other => o.add_scalar(other, quantity::value(&q.0)?),
            }
        }
        sum.add(&o);
    }
    sum.scalars.sort();
    Ok(Requests {
        core: sum.core,
        nonzero: sum.nonzero,
        scalars: sum.scalars,
    })
}

/// A compiled toleration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Toleration {
    /// `None` with `exists` tolerates every key.
    pub key: Option<String>,
    /// Operator `Exists` (else `Equal`).
    pub exists: bool,
    /// The value compared under `Equal`.
    pub value: String,
    /// `None` tolerates every effect.
    pub effect: Option<String>,
}

impl Toleration {
    /// Whether this toleration tolerates a taint `key=value:effect`.
    pub fn tolerates(&self, key: &str, value: &str, effect: &str) -> bool {
        if let Some(e) = &self.effect
            && e != effect
        {
            return false;
        }
        match &self.key {
            None => self.exists,
            Some(k) if k != key => false,
            Some(_) => self.exists || self.value == value,
        }
    }
}

/// A host port a pod's container asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host IP (`0.0.0.0` when unset).
    pub ip: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports collide (same protocol and port, and the same IP or a wildcard).
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || self.ip == "0.0.0.0" || o.ip == "0.0.0.0")
    }
}

/// The namespaces an affinity term looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespaces {
    /// These namespaces (the pod's own when the term names none).
    List(Vec<String>),
    /// Every namespace (`namespaceSelector: {}`).
    All,
}

impl Namespaces {
    /// Whether `ns` is one of them.
    pub fn contains(&self, ns: &str) -> bool {
        match self {
            Namespaces::All => true,
            Namespaces::List(l) => l.iter().any(|n| n == ns),
        }
    }
}

/// A compiled pod (anti-)affinity term.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityTerm {
    /// Where matching pods are looked for.
    pub namespaces: Namespaces,
    /// Which pods match.
    pub selector: Selector,
    /// The topology the term is about (`kubernetes.io/hostname`, a zone label).
    pub topology_key: String,
}

impl AffinityTerm {
    /// Whether a pod in `ns` with `labels` matches the term.
    pub fn matches(&self, ns: &str, labels: &Labels) -> bool {
        self.namespaces.contains(ns) && self.selector.matches(labels)
    }
}

/// A compiled topology spread constraint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpreadConstraint {
    /// The largest allowed difference between domains.
    pub max_skew: i32,
    /// The node label whose values are the domains.
    pub topology_key: String,
    /// `DoNotSchedule` (a filter) rather than `ScheduleAnyway` (a score).
    pub hard: bool,
    /// Which pods count (in the pod's namespace).
    pub selector: Selector,
    /// Below this many eligible domains the global minimum counts as 0.
    pub min_domains: Option<i32>,
    /// `nodeAffinityPolicy: Honor` (the default): only nodes matching the pod's node affinity count.
    pub honor_affinity: bool,
    /// `nodeTaintsPolicy: Honor`: only nodes whose taints the pod tolerates count.
    pub honor_taints: bool,
}

/// A pod compiled for scheduling.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// The API object.
    pub pod: Arc<Pod>,
    /// `namespace/name`, the pod's identity in the scheduler.
    pub key: Arc<str>,
    /// The namespace.
    pub namespace: String,
    /// The labels.
    pub labels: Labels,
    /// `spec.priority` (0 when unset).
    pub priority: i32,
    /// `preemptionPolicy: Never`.
    pub never_preempts: bool,
    /// `spec.schedulerName` (`default-scheduler` when unset).
    pub scheduler_name: String,
    /// `spec.nodeName`, when the pod is already assigned.
    pub node_name: Option<String>,
    /// Whether `spec.schedulingGates` holds the pod back.
    pub gated: bool,
    /// The requests.
    pub requests: Requests,
    /// `spec.nodeSelector` as a selector.
    pub node_selector: Option<Selector>,
    /// Required node affinity.
    pub required_node_affinity: Option<NodeTerms>,
    /// Preferred node affinity: weight and term.
    pub preferred_node_affinity: Vec<(i32, NodeTerm)>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Host ports of the containers.
    pub host_ports: Vec<HostPort>,
    /// Explicit topology spread constraints.
    pub spread: Vec<SpreadConstraint>,
    /// Required pod affinity terms.
    pub affinity: Vec<AffinityTerm>,
    /// Required pod anti-affinity terms.
    pub anti_affinity: Vec<AffinityTerm>,
    /// Preferred pod affinity terms with weights.
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    /// Preferred pod anti-affinity terms with weights.
    pub preferred_anti_affinity: Vec<(i32, AffinityTerm)>,
    /// Container images, normalised (`:latest` added when untagged).
    pub images: Vec<String>,
    /// Number of containers (regular and init), for image locality.
    pub containers: usize,
    /// The gang this pod belongs to and the gang's minimum size.
    pub group: Option<(String, u32)>,
    /// Whether a ReplicaSet, StatefulSet or ReplicationController controls the pod (the system
    /// default spread constraints apply to such pods).
    pub controlled: bool,
    /// Whether an affinity term selects namespaces by label (its namespaces depend on the
    /// namespaces' labels at compile time).
    pub namespace_selector: bool,
}

/// `name:latest` for an untagged, undigested image reference.
pub fn normalize_image(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

fn obj_err(reason: String) -> Error {
    Error::Object {
        kind: "Pod",
        reason,
    }
}

impl PodInfo {
    /// Compiles `pod`; errors on unreadable quantities or selectors, or a missing name. An
    /// affinity term's non-empty `namespaceSelector` selects no namespace here: use
    /// [`PodInfo::with_namespaces`] to resolve it against namespace labels.
    pub fn new(pod: Pod) -> Result<Self> {
        Self::with_namespaces(pod, &FxHashMap::default())
    }

    /// Compiles `pod`, resolving affinity terms' `namespaceSelector` against `namespaces`
    /// (namespace name to labels): a term looks in the namespaces it lists and in those whose
    /// labels the selector matches, as kube-scheduler does.
    pub fn with_namespaces(pod: Pod, namespaces: &FxHashMap<String, Labels>) -> Result<Self> {
        let pod = Arc::new(pod);
        let meta = &pod.metadata;
        let name = meta
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| obj_err("metadata.name is missing".into()))?;
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let key: Arc<str> = format!("{namespace}/{name}").into();
        let labels = meta.labels.clone().unwrap_or_default();
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| obj_err(format!("{key}: spec is missing")))?;
        let requests = pod_requests(&pod)?;
        let node_selector = spec
            .node_selector
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| Selector::from_labels(s.iter()));
        let node_affinity = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref());
        let required_node_affinity = node_affinity
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(NodeTerms::compile)
            .transpose()?;
        let preferred_node_affinity = node_affinity
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .filter(|p| p.weight != 0)
            .map(|p| Ok((p.weight, NodeTerm::compile(&p.preference)?)))
            .collect::<Result<_>>()?;
        let tolerations = spec
            .tolerations
            .iter()
            .flatten()
            .map(|t| Toleration {
                key: t.key.clone().filter(|k| !k.is_empty()),
                exists: t.operator.as_deref() == Some("Exists"),
                value: t.value.clone().unwrap_or_default(),
                effect: t.effect.clone().filter(|e| !e.is_empty()),
            })
            .collect();
        let mut host_ports = Vec::new();
        let inits = spec.init_containers.iter().flatten();
        for c in spec
            .containers
            .iter()
            .chain(inits.filter(|c| c.restart_policy.as_deref() == Some("Always")))
        {
            for p in c.ports.iter().flatten() {
                if let Some(port) = p.host_port.filter(|p| *p > 0) {
                    host_ports.push(HostPort {
                        ip: p
                            .host_ip
                            .clone()
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port,
                    });
                }
            }
        }
        let mut spread = Vec::new();
        for c in spec.topology_spread_constraints.iter().flatten() {
            if c.max_skew < 1 {
                return Err(obj_err(format!("{key}: maxSkew must be at least 1")));
            }
            let mut selector = Selector::from_label_selector(c.label_selector.as_ref())?;
            for k in c.match_label_keys.iter().flatten() {
                if let Some(v) = labels.get(k) {
                    selector.and_label(k, v);
                }
            }
            spread.push(SpreadConstraint {
                max_skew: c.max_skew,
                topology_key: c.topology_key.clone(),
                hard: match c.when_unsatisfiable.as_str() {
                    "DoNotSchedule" => true,
                    "ScheduleAnyway" => false,
                    other => {
                        return Err(obj_err(format!(
                            "{key}: unknown whenUnsatisfiable {other:?}"
                        )));
                    }
                },
                selector,
                min_domains: c.min_domains,
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            });
        }
        let namespace_selector = std::cell::Cell::new(false);
        let term = |t: &k8s_openapi::api::core::v1::PodAffinityTerm| -> Result<AffinityTerm> {
            let namespaces = match (&t.namespaces, &t.namespace_selector) {
                (_, Some(sel))
                    if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty()) =>
                {
                    Namespaces::All
                }
                (list, Some(sel)) => {
                    namespace_selector.set(true);
                    let sel = Selector::from_label_selector(Some(sel))?;
                    let mut l: Vec<String> = list.iter().flatten().cloned().collect();
                    l.extend(
                        namespaces
                            .iter()
                            .filter(|(_, labels)| sel.matches(labels))
                            .map(|(n, _)| n.clone()),
                    );
                    l.sort();
                    l.dedup();
                    Namespaces::List(l)
                }
                (Some(list), None) if !list.is_empty() => {
                    let mut l = list.clone();
                    l.sort();
                    Namespaces::List(l)
                }
                _ => Namespaces::List(vec![namespace.clone()]),
            };
            let mut selector = Selector::from_label_selector(t.label_selector.as_ref())?;
            for k in t.match_label_keys.iter().flatten() {
                if let Some(v) = labels.get(k) {
                    selector.and_label(k, v);
                }
            }
            if t.topology_key.is_empty() {
                return Err(obj_err(format!("{key}: affinity term without topologyKey")));
            }
            Ok(AffinityTerm {
                namespaces,
                selector,
                topology_key: t.topology_key.clone(),
            })
        };
        let aff = spec.affinity.as_ref();
        let pa = aff.and_then(|a| a.pod_affinity.as_ref());
        let paa = aff.and_then(|a| a.pod_anti_affinity.as_ref());
        let affinity = pa
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(term)
            .collect::<Result<_>>()?;
        let anti_affinity = paa
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(term)
            .collect::<Result<_>>()?;
        let preferred_affinity = pa
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|w| Ok((w.weight, term(&w.pod_affinity_term)?)))
            .collect::<Result<_>>()?;
        let preferred_anti_affinity = paa
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|w| Ok((w.weight, term(&w.pod_affinity_term)?)))
            .collect::<Result<_>>()?;
        let images = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter_map(|c| c.image.as_deref())
            .map(normalize_image)
            .collect();
        let containers = spec.containers.len() + spec.init_containers.as_ref().map_or(0, Vec::len);
        let group = match labels.get(POD_GROUP_LABEL) {
            Some(g) => {
                let min = labels
                    .get(POD_GROUP_MIN_LABEL)
                    .map(|m| m.parse::<u32>())
                    .transpose()
                    .map_err(|_| obj_err(format!("{key}: bad {POD_GROUP_MIN_LABEL}")))?
                    .unwrap_or(1);
                Some((format!("{namespace}/{g}"), min))
            }
            None => None,
        };
        let controlled = meta.owner_references.iter().flatten().any(|o| {
            o.controller == Some(true)
                && matches!(
                    o.kind.as_str(),
                    "ReplicaSet" | "StatefulSet" | "ReplicationController"
                )
        });
        Ok(PodInfo {
            namespace_selector: namespace_selector.get(),
            key,
            priority: spec.priority.unwrap_or(0),
            never_preempts: spec.preemption_policy.as_deref() == Some("Never"),
            scheduler_name: spec
                .scheduler_name
                .clone()
                .unwrap_or_else(|| "default-scheduler".into()),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            gated: spec
                .scheduling_gates
                .as_ref()
                .is_some_and(|g| !g.is_empty()),
            requests,
            node_selector,
            required_node_affinity,
            preferred_node_affinity,
            tolerations,
            host_ports,
            spread,
            affinity,
            anti_affinity,
            preferred_affinity,
            preferred_anti_affinity,
            images,
            containers,
            group,
            controlled,
            namespace,
            labels,
            pod,
        })
    }

    /// Whether the node's labels and name satisfy the pod's nodeSelector and required node
    /// affinity.
    pub fn matches_node_selection(&self, labels: &Labels, name: &str) -> bool {
        self.node_selector
            .as_ref()
            .is_none_or(|s| s.matches(labels))
            && self
                .required_node_affinity
                .as_ref()
                .is_none_or(|t| t.matches(labels, name))
    }

    /// Whether the pod has any pod (anti-)affinity term.
    pub fn has_pod_affinity_terms(&self) -> bool {
        !(self.affinity.is_empty()
            && self.anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }
}
