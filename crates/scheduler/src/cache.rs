//! The node cache: what is placed where, updated incrementally from events and assumed pods, laid
//! out for the hot loop (per-node arrays indexed by [`NodeId`]).
//!
//! Besides requested resources, pod counts, host ports and images, the cache keeps the indexes
//! that make topology-aware plugins cheap: node domains per topology key, pod counts per domain
//! for every label selector some pod's spread constraint or affinity term uses ("trackers"), and
//! the (anti-)affinity terms of placed pods grouped by term. It also groups nodes into
//! equivalence classes (same labels except the hostname, taints, allocatable, images and
//! requested resources): plugins whose verdict depends only on the class let the framework
//! evaluate one node per class instead of every node.
//!
//! A scheduling cycle reads the cache through a shared borrow (the cycle's snapshot); the
//! cache is only changed between cycles, so nothing is copied per cycle.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use rustc_hash::FxHashMap;

use crate::error::{Error, Result};
use crate::labels::{Labels, Selector};
use crate::pod::{
    AffinityTerm, CPU, EPHEMERAL, HOSTNAME, HostPort, MEMORY, Namespaces, PODS, PodInfo,
    normalize_image,
};
use berth_api::quantity;

/// A node's slot in the cache's arrays. Slots of removed nodes are reused.
pub type NodeId = u32;
/// "No domain": the node lacks the topology label.
pub const NO_DOMAIN: u32 = u32::MAX;

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Taint {
    /// The key.
    pub key: String,
    /// The value (empty when unset).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// What does not change while pods come and go on a node.
#[derive(Debug, Clone)]
pub struct NodeStatic {
    /// The API object.
    pub node: Arc<Node>,
    /// The node's name.
    pub name: String,
    /// The node's labels.
    pub labels: Labels,
    /// The node's taints.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// Images present on the node (normalised names) and their sizes.
    pub images: FxHashMap<String, i64>,
    /// Allocatable CPU (millicores), memory, ephemeral storage and pod count.
    pub alloc: [i64; 4],
    /// Allocatable extended resources, sorted by name.
    pub alloc_scalars: Vec<(String, i64)>,
}

impl NodeStatic {
    /// Compiles a `Node`.
    pub fn new(node: Node) -> Result<Self> {
        let bad = |reason: String| Error::Object {
            kind: "Node",
            reason,
        };
        let name = node
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("metadata.name is missing".into()))?;
        let status = node.status.as_ref();
        let list = status
            .and_then(|s| s.allocatable.as_ref())
            .or_else(|| status.and_then(|s| s.capacity.as_ref()));
        let mut alloc = [0i64; 4];
        let mut alloc_scalars = Vec::new();
        for (k, q) in list.into_iter().flatten() {
            match k.as_str() {
                "cpu" => alloc[CPU] = quantity::milli(&q.0)?,
                "memory" => alloc[MEMORY] = quantity::value(&q.0)?,
                "ephemeral-storage" => alloc[EPHEMERAL] = quantity::value(&q.0)?,
                "pods" => alloc[PODS] = quantity::value(&q.0)?,
                other => alloc_scalars.push((other.to_owned(), quantity::value(&q.0)?)),
            }
        }
        alloc_scalars.sort();
        let spec = node.spec.as_ref();
        let taints = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .map(|t| Taint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
                effect: t.effect.clone(),
            })
            .collect();
        let mut images = FxHashMap::default();
        for img in status.and_then(|s| s.images.as_ref()).into_iter().flatten() {
            for n in img.names.iter().flatten() {
                images.insert(normalize_image(n), img.size_bytes.unwrap_or(0));
            }
        }
        Ok(NodeStatic {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            node: Arc::new(node),
            name,
            taints,
            images,
            alloc,
            alloc_scalars,
        })
    }

    fn key(&self) -> StaticKey {
        let mut images: Vec<(String, i64)> =
            self.images.iter().map(|(k, v)| (k.clone(), *v)).collect();
        images.sort();
        StaticKey {
            labels: self
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != HOSTNAME)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            has_hostname: self.labels.contains_key(HOSTNAME),
            taints: self.taints.clone(),
            unschedulable: self.unschedulable,
            alloc: self.alloc,
            alloc_scalars: self.alloc_scalars.clone(),
            images,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StaticKey {
    labels: Vec<(String, String)>,
    has_hostname: bool,
    taints: Vec<Taint>,
    unschedulable: bool,
    alloc: [i64; 4],
    alloc_scalars: Vec<(String, i64)>,
    images: Vec<(String, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClassKey {
    static_class: u32,
    req: [i64; 4],
    nonzero: [i64; 2],
    scalars: Vec<(String, i64)>,
}

/// Nodes that every class-scoped plugin treats alike.
#[derive(Debug)]
pub struct Class {
    key: ClassKey,
    members: BTreeSet<NodeId>,
}

impl Class {
    /// The member nodes, in slot order.
    pub fn members(&self) -> &BTreeSet<NodeId> {
        &self.members
    }
}

/// One topology key's domains.
#[derive(Debug, Default)]
struct TopoKey {
    name: String,
    domain_of: Vec<u32>,
    names: Vec<String>,
    ids: FxHashMap<String, u32>,
    nodes: Vec<Vec<NodeId>>,
}

/// Counts of pods matching one (namespaces, selector) pair, per node and per domain.
#[derive(Debug)]
struct Tracker {
    namespaces: Namespaces,
    selector: Selector,
    per_node: Vec<u32>,
    per_key: Vec<(u16, Vec<u32>)>,
}

/// What kind of term a placed pod carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TermKind {
    /// Required pod affinity (scored with the hard-affinity weight).
    RequiredAffinity,
    /// Required pod anti-affinity (a filter for incoming pods).
    RequiredAnti,
    /// Preferred pod affinity.
    PreferredAffinity,
    /// Preferred pod anti-affinity.
    PreferredAnti,
}

/// An (anti-)affinity term carried by placed pods, with how many carriers sit in each domain.
#[derive(Debug)]
pub struct TermEntry {
    /// The kind.
    pub kind: TermKind,
    /// The term.
    pub term: AffinityTerm,
    /// The weight (preferred terms).
    pub weight: i32,
    /// The topology key's id.
    pub key: u16,
    /// Carriers per domain of `key`.
    pub domain_counts: Vec<u32>,
    /// Carriers in total.
    pub carriers: u32,
}

#[derive(Debug)]
struct PodSlot {
    info: Arc<PodInfo>,
    node: NodeId,
    assumed: bool,
}

fn bump(counts: &mut Vec<u32>, i: u32, delta: i32) {
    let i = i as usize;
    if counts.len() <= i {
        counts.resize(i + 1, 0);
    }
    counts[i] = counts[i].wrapping_add_signed(delta);
}

/// The scheduler's view of the cluster. See the module documentation.
#[derive(Debug, Default)]
pub struct Cache {
    live: Vec<bool>,
    statics: Vec<Arc<NodeStatic>>,
    req: Vec<[i64; 4]>,
    nonzero: Vec<[i64; 2]>,
    scalar_req: Vec<Vec<(String, i64)>>,
    ports: Vec<Vec<HostPort>>,
    node_pods: Vec<Vec<Arc<PodInfo>>>,
    static_class: Vec<u32>,
    class_of: Vec<u32>,
    node_index: FxHashMap<String, NodeId>,
    free_nodes: Vec<NodeId>,
    live_nodes: Vec<NodeId>,
    pods: FxHashMap<Arc<str>, PodSlot>,
    orphans: FxHashMap<String, Vec<(Arc<PodInfo>, bool)>>,
    image_nodes: FxHashMap<String, u32>,
    prefer_no_schedule_nodes: u32,
    static_keys: FxHashMap<StaticKey, u32>,
    classes: Vec<Class>,
    class_index: FxHashMap<ClassKey, u32>,
    free_classes: Vec<u32>,
    keys: Vec<TopoKey>,
    key_ids: FxHashMap<String, u16>,
    trackers: Vec<Tracker>,
    tracker_ids: FxHashMap<(Namespaces, Selector), u32>,
    /// Trackers whose selector requires a `key = value`, by key and value: a pod event only
    /// visits the trackers indexed under its own labels (and the unindexed ones).
    tracker_index: FxHashMap<String, FxHashMap<String, Vec<u32>>>,
    unindexed_trackers: Vec<u32>,
    terms: Vec<TermEntry>,
    term_ids: FxHashMap<(TermKind, AffinityTerm, i32), u32>,
    groups_known: FxHashMap<String, u32>,
    groups_placed: FxHashMap<String, u32>,
    generation: u64,
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    // ---------------------------------------------------------------- nodes

    /// Adds a node or, if one of that name exists, updates it. Pods already recorded for a node
    /// of that name (seen before the node) are attached.
    pub fn add_node(&mut self, node: Node) -> Result<NodeId> {
        let st = NodeStatic::new(node)?;
        if let Some(&id) = self.node_index.get(&st.name) {
            self.replace_static(id, st);
            return Ok(id);
        }
        let id = match self.free_nodes.pop() {
            Some(id) => id,
            None => {
                let id = self.live.len() as NodeId;
                self.live.push(false);
                self.statics.push(Arc::new(st.clone()));
                self.req.push([0; 4]);
                self.nonzero.push([0; 2]);
                self.scalar_req.push(Vec::new());
                self.ports.push(Vec::new());
                self.node_pods.push(Vec::new());
                self.static_class.push(0);
                self.class_of.push(u32::MAX);
                for k in &mut self.keys {
                    k.domain_of.push(NO_DOMAIN);
                }
                for t in &mut self.trackers {
                    t.per_node.push(0);
                }
                id
            }
        };
        let name = st.name.clone();
        self.live[id as usize] = true;
        self.req[id as usize] = [0; 4];
        self.nonzero[id as usize] = [0; 2];
        self.scalar_req[id as usize].clear();
        self.ports[id as usize].clear();
        self.node_pods[id as usize].clear();
        self.install_static(id, st);
        self.node_index.insert(name.clone(), id);
        let pos = self.live_nodes.partition_point(|n| *n < id);
        self.live_nodes.insert(pos, id);
        self.reclass(id);
        if let Some(orphans) = self.orphans.remove(&name) {
            for (pod, assumed) in orphans {
                self.attach(pod, id, assumed);
            }
        }
        self.generation += 1;
        Ok(id)
    }

    fn install_static(&mut self, id: NodeId, st: NodeStatic) {
        let i = id as usize;
        for img in st.images.keys() {
            *self.image_nodes.entry(img.clone()).or_default() += 1;
        }
        if st.taints.iter().any(|t| t.effect == "PreferNoSchedule") {
            self.prefer_no_schedule_nodes += 1;
        }
        let key = st.key();
        let n = self.static_keys.len() as u32;
        self.static_class[i] = *self.static_keys.entry(key).or_insert(n);
        for k in 0..self.keys.len() {
            let d = self.domain_id(k, st.labels.get(&self.keys[k].name).cloned());
            self.keys[k].domain_of[i] = d;
            if d != NO_DOMAIN {
                self.keys[k].nodes[d as usize].push(id);
            }
        }
        self.statics[i] = Arc::new(st);
    }

    fn uninstall_static(&mut self, id: NodeId) {
        let st = self.statics[id as usize].clone();
        for img in st.images.keys() {
            if let Some(c) = self.image_nodes.get_mut(img) {
                *c -= 1;
                if *c == 0 {
                    self.image_nodes.remove(img);
                }
            }
        }
        if st.taints.iter().any(|t| t.effect == "PreferNoSchedule") {
            self.prefer_no_schedule_nodes -= 1;
        }
        for k in &mut self.keys {
            let d = k.domain_of[id as usize];
            if d != NO_DOMAIN {
                k.nodes[d as usize].retain(|n| *n != id);
            }
            k.domain_of[id as usize] = NO_DOMAIN;
        }
    }

    fn domain_id(&mut self, key: usize, value: Option<String>) -> u32 {
        let Some(v) = value else { return NO_DOMAIN };
        let k = &mut self.keys[key];
        if let Some(&d) = k.ids.get(&v) {
            return d;
        }
        let d = k.names.len() as u32;
        k.names.push(v.clone());
        k.nodes.push(Vec::new());
        k.ids.insert(v, d);
        d
    }

    fn replace_static(&mut self, id: NodeId, st: NodeStatic) {
        let pods = self.node_pods[id as usize].clone();
        for p in &pods {
            self.account_topology(p, id, -1);
        }
        self.uninstall_static(id);
        self.install_static(id, st);
        for p in &pods {
            self.account_topology(p, id, 1);
        }
        self.reclass(id);
        self.generation += 1;
    }

    /// Removes a node and the pods recorded on it; returns those pods.
    pub fn remove_node(&mut self, name: &str) -> Vec<Arc<PodInfo>> {
        let Some(id) = self.node_index.remove(name) else {
            return Vec::new();
        };
        let pods = self.node_pods[id as usize].clone();
        for p in &pods {
            self.remove_pod(&p.key);
        }
        self.uninstall_static(id);
        self.unclass(id);
        self.live[id as usize] = false;
        self.live_nodes.retain(|n| *n != id);
        self.free_nodes.push(id);
        self.generation += 1;
        pods
    }

    /// The slot of the node called `name`.
    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.node_index.get(name).copied()
    }

    /// The live nodes, in slot order.
    pub fn nodes(&self) -> &[NodeId] {
        &self.live_nodes
    }

    /// How many nodes there are.
    pub fn node_count(&self) -> usize {
        self.live_nodes.len()
    }

    /// One past the highest slot (the size of per-node arrays).
    pub fn capacity(&self) -> usize {
        self.live.len()
    }

    /// The node's unchanging part.
    pub fn node(&self, id: NodeId) -> &NodeStatic {
        &self.statics[id as usize]
    }

    /// Requested CPU, memory, ephemeral storage and pod count on the node.
    #[inline]
    pub fn requested(&self, id: NodeId) -> &[i64; 4] {
        &self.req[id as usize]
    }

    /// Requested CPU and memory counting kube-scheduler's defaults for pods requesting none.
    #[inline]
    pub fn nonzero_requested(&self, id: NodeId) -> &[i64; 2] {
        &self.nonzero[id as usize]
    }

    /// Allocatable CPU, memory, ephemeral storage and pod count.
    #[inline]
    pub fn allocatable(&self, id: NodeId) -> &[i64; 4] {
        &self.statics[id as usize].alloc
    }

    /// Requested extended resources on the node.
    pub fn scalar_requested(&self, id: NodeId) -> &[(String, i64)] {
        &self.scalar_req[id as usize]
    }

    /// Host ports in use on the node.
    pub fn used_ports(&self, id: NodeId) -> &[HostPort] {
        &self.ports[id as usize]
    }

    /// The pods on the node (bound and assumed).
    pub fn pods_on(&self, id: NodeId) -> &[Arc<PodInfo>] {
        &self.node_pods[id as usize]
    }

    /// How many nodes hold the (normalised) image.
    pub fn nodes_with_image(&self, image: &str) -> u32 {
        self.image_nodes.get(image).copied().unwrap_or(0)
    }

    /// Whether any node has a `PreferNoSchedule` taint.
    pub fn any_prefer_no_schedule(&self) -> bool {
        self.prefer_no_schedule_nodes > 0
    }

    /// Bumped on every change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    // ---------------------------------------------------------------- classes

    fn class_key(&self, id: NodeId) -> ClassKey {
        let i = id as usize;
        ClassKey {
            static_class: self.static_class[i],
            req: self.req[i],
            nonzero: self.nonzero[i],
            scalars: self.scalar_req[i].clone(),
        }
    }

    fn unclass(&mut self, id: NodeId) {
        let c = self.class_of[id as usize];
        if c == u32::MAX {
            return;
        }
        let class = &mut self.classes[c as usize];
        class.members.remove(&id);
        if class.members.is_empty() {
            let key = class.key.clone();
            self.class_index.remove(&key);
            self.free_classes.push(c);
        }
        self.class_of[id as usize] = u32::MAX;
    }

    fn reclass(&mut self, id: NodeId) {
        let key = self.class_key(id);
        let cur = self.class_of[id as usize];
        if cur != u32::MAX && self.classes[cur as usize].key == key {
            return;
        }
        self.unclass(id);
        let c = match self.class_index.get(&key) {
            Some(&c) => c,
            None => {
                let class = Class {
                    key: key.clone(),
                    members: BTreeSet::new(),
                };
                let c = match self.free_classes.pop() {
                    Some(c) => {
                        self.classes[c as usize] = class;
                        c
                    }
                    None => {
                        self.classes.push(class);
                        (self.classes.len() - 1) as u32
                    }
                };
                self.class_index.insert(key, c);
                c
            }
        };
        self.classes[c as usize].members.insert(id);
        self.class_of[id as usize] = c;
    }

    /// The non-empty equivalence classes.
    pub fn classes(&self) -> impl Iterator<Item = (u32, &Class)> {
        self.classes
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.members.is_empty())
            .map(|(i, c)| (i as u32, c))
    }

    /// A class by id (as given by [`Cache::classes`] or [`Cache::class_of`]).
    pub fn class(&self, id: u32) -> &Class {
        &self.classes[id as usize]
    }

    /// How many non-empty classes there are.
    pub fn class_count(&self) -> usize {
        self.class_index.len()
    }

    /// The node's class.
    pub fn class_of(&self, id: NodeId) -> u32 {
        self.class_of[id as usize]
    }

    // ---------------------------------------------------------------- pods

    /// Records a pod bound (or, with `assumed`, about to be bound) to `node`. A pod for a node
    /// the cache has not seen yet is kept aside until the node arrives. Recording a pod that is
    /// already recorded moves it (and confirms it when it was assumed and `assumed` is false).
    pub fn add_pod(&mut self, pod: Arc<PodInfo>, node: &str, assumed: bool) {
        if let Some(slot) = self.pods.get_mut(&pod.key) {
            if self.statics[slot.node as usize].name == node {
                slot.assumed = assumed;
                return;
            }
            let key = pod.key.clone();
            self.remove_pod(&key);
        }
        match self.node_index.get(node) {
            Some(&id) => self.attach(pod, id, assumed),
            None => self
                .orphans
                .entry(node.to_owned())
                .or_default()
                .push((pod, assumed)),
        }
        self.generation += 1;
    }

    fn attach(&mut self, pod: Arc<PodInfo>, id: NodeId, assumed: bool) {
        let i = id as usize;
        let r = &pod.requests;
        for k in 0..3 {
            self.req[i][k] += r.core[k];
        }
        self.req[i][PODS] += 1;
        self.nonzero[i][CPU] += r.nonzero[CPU];
        self.nonzero[i][MEMORY] += r.nonzero[MEMORY];
        for (n, v) in &r.scalars {
            let s = &mut self.scalar_req[i];
            match s.iter_mut().find(|(m, _)| m == n) {
                Some((_, x)) => *x += v,
                None => {
                    s.push((n.clone(), *v));
                    s.sort();
                }
            }
        }
        self.ports[i].extend(pod.host_ports.iter().cloned());
        self.account_topology(&pod, id, 1);
        if let Some((g, _)) = &pod.group {
            *self.groups_placed.entry(g.clone()).or_default() += 1;
        }
        self.node_pods[i].push(pod.clone());
        self.pods.insert(
            pod.key.clone(),
            PodSlot {
                info: pod,
                node: id,
                assumed,
            },
        );
        self.reclass(id);
    }

    /// Forgets a pod; returns it, its node and whether it was only assumed.
    pub fn remove_pod(&mut self, key: &str) -> Option<(Arc<PodInfo>, NodeId, bool)> {
        let Some(slot) = self.pods.remove(key) else {
            for list in self.orphans.values_mut() {
                list.retain(|(p, _)| &*p.key != key);
            }
            return None;
        };
        let (pod, id) = (slot.info, slot.node);
        let i = id as usize;
        let r = &pod.requests;
        for k in 0..3 {
            self.req[i][k] -= r.core[k];
        }
        self.req[i][PODS] -= 1;
        self.nonzero[i][CPU] -= r.nonzero[CPU];
        self.nonzero[i][MEMORY] -= r.nonzero[MEMORY];
        for (n, v) in &r.scalars {
            if let Some((_, x)) = self.scalar_req[i].iter_mut().find(|(m, _)| m == n) {
                *x -= v;
            }
        }
        self.scalar_req[i].retain(|(_, v)| *v != 0);
        for p in &pod.host_ports {
            if let Some(pos) = self.ports[i].iter().position(|q| q == p) {
                self.ports[i].swap_remove(pos);
            }
        }
        self.account_topology(&pod, id, -1);
        if let Some((g, _)) = &pod.group
            && let Some(c) = self.groups_placed.get_mut(g)
        {
            *c -= 1;
        }
        let list = &mut self.node_pods[i];
        if let Some(pos) = list.iter().position(|p| Arc::ptr_eq(p, &pod)) {
            list.swap_remove(pos);
        }
        self.reclass(id);
        self.generation += 1;
        Some((pod, id, slot.assumed))
    }

    /// The recorded pod called `key` (`namespace/name`) and its node.
    pub fn pod(&self, key: &str) -> Option<(&Arc<PodInfo>, NodeId)> {
        self.pods.get(key).map(|s| (&s.info, s.node))
    }

    /// Whether the pod is assumed (placed by the scheduler, binding not yet confirmed).
    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|s| s.assumed)
    }

    /// Marks an assumed pod as bound.
    pub fn confirm(&mut self, key: &str) {
        if let Some(s) = self.pods.get_mut(key) {
            s.assumed = false;
        }
    }

    /// How many pods are recorded.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Pods of the gang placed (assumed or bound).
    pub fn group_placed(&self, group: &str) -> u32 {
        self.groups_placed.get(group).copied().unwrap_or(0)
    }

    /// Pods of the gang the scheduler knows of (pending or placed).
    pub fn group_known(&self, group: &str) -> u32 {
        self.groups_known.get(group).copied().unwrap_or(0)
    }

    /// Counts a gang member in or out of [`Cache::group_known`].
    pub fn note_group_member(&mut self, group: &str, delta: i32) {
        let c = self.groups_known.entry(group.to_owned()).or_default();
        *c = c.saturating_add_signed(delta);
    }

    // ---------------------------------------------------------------- topology

    fn account_topology(&mut self, pod: &PodInfo, id: NodeId, delta: i32) {
        let i = id as usize;
        let Cache {
            trackers,
            tracker_index,
            unindexed_trackers,
            keys,
            ..
        } = self;
        let indexed = pod.labels.iter().flat_map(|(k, v)| {
            tracker_index
                .get(k.as_str())
                .and_then(|m| m.get(v.as_str()))
                .into_iter()
                .flatten()
        });
        for &t in unindexed_trackers.iter().chain(indexed) {
            let t = &mut trackers[t as usize];
            if t.namespaces.contains(&pod.namespace) && t.selector.matches(&pod.labels) {
                t.per_node[i] = t.per_node[i].wrapping_add_signed(delta);
                for (k, counts) in &mut t.per_key {
                    let d = keys[*k as usize].domain_of[i];
                    if d != NO_DOMAIN {
                        bump(counts, d, delta);
                    }
                }
            }
        }
        if !pod.has_pod_affinity_terms() {
            return;
        }
        let carried = pod
            .affinity
            .iter()
            .map(|t| (TermKind::RequiredAffinity, t, 0))
            .chain(
                pod.anti_affinity
                    .iter()
                    .map(|t| (TermKind::RequiredAnti, t, 0)),
            )
            .chain(
                pod.preferred_affinity
                    .iter()
                    .map(|(w, t)| (TermKind::PreferredAffinity, t, *w)),
            )
            .chain(
                pod.preferred_anti_affinity
                    .iter()
                    .map(|(w, t)| (TermKind::PreferredAnti, t, *w)),
            );
        for (kind, term, weight) in carried {
            let key = (kind, term.clone(), weight);
            let e = match self.term_ids.get(&key) {
                Some(&e) => e,
                None => {
                    let k = self.ensure_key(&term.topology_key);
                    self.terms.push(TermEntry {
                        kind,
                        term: term.clone(),
                        weight,
                        key: k,
                        domain_counts: Vec::new(),
                        carriers: 0,
                    });
                    let e = (self.terms.len() - 1) as u32;
                    self.term_ids.insert(key, e);
                    e
                }
            };
            let entry = &mut self.terms[e as usize];
            entry.carriers = entry.carriers.wrapping_add_signed(delta);
            let d = self.keys[entry.key as usize].domain_of[i];
            if d != NO_DOMAIN {
                bump(&mut entry.domain_counts, d, delta);
            }
        }
    }

    /// Registers a topology key (indexing every node's domain for it); returns its id.
    pub fn ensure_key(&mut self, name: &str) -> u16 {
        if let Some(&k) = self.key_ids.get(name) {
            return k;
        }
        let k = self.keys.len();
        self.keys.push(TopoKey {
            name: name.to_owned(),
            domain_of: vec![NO_DOMAIN; self.live.len()],
            ..Default::default()
        });
        for id in self.live_nodes.clone() {
            let d = self.domain_id(k, self.statics[id as usize].labels.get(name).cloned());
            self.keys[k].domain_of[id as usize] = d;
            if d != NO_DOMAIN {
                self.keys[k].nodes[d as usize].push(id);
            }
        }
        self.key_ids.insert(name.to_owned(), k as u16);
        k as u16
    }

    /// The id of a registered topology key.
    pub fn key_id(&self, name: &str) -> Option<u16> {
        self.key_ids.get(name).copied()
    }

    /// The node's domain for the key ([`NO_DOMAIN`] when it lacks the label).
    #[inline]
    pub fn domain(&self, key: u16, id: NodeId) -> u32 {
        self.keys[key as usize].domain_of[id as usize]
    }

    /// Every node's domain for the key, indexed by [`NodeId`].
    #[inline]
    pub fn domains(&self, key: u16) -> &[u32] {
        &self.keys[key as usize].domain_of
    }

    /// How many domain ids the key has handed out (some may have no node left).
    pub fn domain_count(&self, key: u16) -> usize {
        self.keys[key as usize].names.len()
    }

    /// The nodes in a domain.
    pub fn domain_nodes(&self, key: u16, domain: u32) -> &[NodeId] {
        &self.keys[key as usize].nodes[domain as usize]
    }

    /// The label value of a domain.
    pub fn domain_name(&self, key: u16, domain: u32) -> &str {
        &self.keys[key as usize].names[domain as usize]
    }

    /// Registers a pod counter for (namespaces, selector) with per-domain counts for `key`;
    /// returns its id. The first registration scans the placed pods once; later pod events keep
    /// it up to date.
    pub fn ensure_tracker(
        &mut self,
        namespaces: &Namespaces,
        selector: &Selector,
        key: u16,
    ) -> u32 {
        let id = match self
            .tracker_ids
            .get(&(namespaces.clone(), selector.clone()))
        {
            Some(&t) => t,
            None => {
                let mut per_node = vec![0u32; self.live.len()];
                for slot in self.pods.values() {
                    if namespaces.contains(&slot.info.namespace)
                        && selector.matches(&slot.info.labels)
                    {
                        per_node[slot.node as usize] += 1;
                    }
                }
                self.trackers.push(Tracker {
                    namespaces: namespaces.clone(),
                    selector: selector.clone(),
                    per_node,
                    per_key: Vec::new(),
                });
                let t = (self.trackers.len() - 1) as u32;
                match selector.required_pair() {
                    Some((k, v)) => self
                        .tracker_index
                        .entry(k.to_owned())
                        .or_default()
                        .entry(v.to_owned())
                        .or_default()
                        .push(t),
                    None => self.unindexed_trackers.push(t),
                }
                self.tracker_ids
                    .insert((namespaces.clone(), selector.clone()), t);
                t
            }
        };
        let t = &mut self.trackers[id as usize];
        if !t.per_key.iter().any(|(k, _)| *k == key) {
            let dom = &self.keys[key as usize];
            let mut counts = vec![0u32; dom.names.len()];
            for &n in &self.live_nodes {
                let d = dom.domain_of[n as usize];
                if d != NO_DOMAIN {
                    counts[d as usize] += t.per_node[n as usize];
                }
            }
            t.per_key.push((key, counts));
        }
        id
    }

    /// The id of a registered tracker.
    pub fn tracker(&self, namespaces: &Namespaces, selector: &Selector) -> Option<u32> {
        self.tracker_ids
            .get(&(namespaces.clone(), selector.clone()))
            .copied()
    }

    /// Matching pods per node of a tracker, indexed by [`NodeId`].
    #[inline]
    pub fn tracker_nodes(&self, tracker: u32) -> &[u32] {
        &self.trackers[tracker as usize].per_node
    }

    /// Matching pods per domain of `key` (registered with [`Cache::ensure_tracker`]); indexes
    /// past the end count 0.
    pub fn tracker_domains(&self, tracker: u32, key: u16) -> &[u32] {
        self.trackers[tracker as usize]
            .per_key
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| c.as_slice())
            .unwrap_or(&[])
    }

    /// The (anti-)affinity terms carried by placed pods.
    pub fn terms(&self) -> &[TermEntry] {
        &self.terms
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, NodeStatus, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn node(name: &str, zone: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    [
                        (HOSTNAME.to_string(), name.to_string()),
                        ("zone".to_string(), zone.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            status: Some(NodeStatus {
                allocatable: Some(
                    [("cpu", "4"), ("memory", "8Gi"), ("pods", "110")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), Quantity(v.into())))
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(name: &str, cpu: &str) -> Arc<PodInfo> {
        Arc::new(
            PodInfo::new(k8s_openapi::api::core::v1::Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "c".into(),
                        resources: Some(ResourceRequirements {
                            requests: Some([("cpu".to_string(), Quantity(cpu.into()))].into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .unwrap(),
        )
    }

    #[test]
    fn incremental_requests_classes_and_trackers() {
        let mut c = Cache::new();
        let a = c.add_node(node("a", "z1")).unwrap();
        let b = c.add_node(node("b", "z1")).unwrap();
        let z = c.add_node(node("c", "z2")).unwrap();
        assert_eq!(c.class_of(a), c.class_of(b), "same labels but hostname");
        assert_ne!(c.class_of(a), c.class_of(z));
        let zone = c.ensure_key("zone");
        let labels: Labels = [("app".to_string(), "web".to_string())].into();
        let sel = Selector::from_labels(labels.iter());
        let ns = Namespaces::List(vec!["default".into()]);
        let t = c.ensure_tracker(&ns, &sel, zone);
        c.add_pod(pod("p1", "500m"), "a", true);
        assert_eq!(c.requested(a)[CPU], 500);
        assert_eq!(c.requested(a)[PODS], 1);
        assert_ne!(c.class_of(a), c.class_of(b), "requests split the class");
        assert_eq!(c.tracker_nodes(t)[a as usize], 1);
        assert_eq!(c.tracker_domains(t, zone)[c.domain(zone, a) as usize], 1);
        assert!(c.is_assumed("default/p1"));
        c.add_pod(pod("p1", "500m"), "a", false);
        assert!(!c.is_assumed("default/p1"));
        // A pod seen before its node is attached when the node arrives.
        c.add_pod(pod("early", "1"), "late", false);
        let late = c.add_node(node("late", "z2")).unwrap();
        assert_eq!(c.requested(late)[CPU], 1000);
        assert_eq!(c.tracker_domains(t, zone)[c.domain(zone, late) as usize], 1);
        c.remove_pod("default/p1");
        assert_eq!(c.requested(a)[CPU], 0);
        assert_eq!(c.class_of(a), c.class_of(b));
        assert_eq!(c.tracker_nodes(t)[a as usize], 0);
        // Relabelling a node moves its pods' domain counts.
        let mut moved = node("late", "z1");
        moved
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        c.add_node(moved).unwrap();
        assert_eq!(c.tracker_domains(t, zone)[c.domain(zone, a) as usize], 1);
        assert_eq!(c.remove_node("late").len(), 1);
        assert_eq!(c.tracker_domains(t, zone)[c.domain(zone, a) as usize], 0);
        assert_eq!(c.node_count(), 3);
    }
}
