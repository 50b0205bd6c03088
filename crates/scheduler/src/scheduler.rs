//! [`Scheduler`]: the cache, the queue and the profiles put together. Feed it cluster events
//! (nodes, pods, PodDisruptionBudgets), call [`Scheduler::schedule_one`] or
//! [`Scheduler::run`], and it hands bindings, evictions and unschedulable conditions to your
//! [`Binder`]. It never blocks and does no I/O; time is what the caller says it is
//! ([`Scheduler::advance`]), so runs are reproducible.
//!
//! A runner against the API server (watchers feeding the event methods, a binder posting
//! `pods/binding`, deleting victims and patching the PodScheduled condition) is a thin layer
//! on top: see the crate documentation.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodCondition};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use rustc_hash::FxHashMap;

use crate::cache::{Cache, NodeId};
use crate::config::Config;
use crate::error::{Error, Result};
pub use crate::framework::Pdb;
use crate::framework::{
    Binder, CycleContext, CycleState, Events, Permit, PostFilterResult, Profile, Selection,
    Simulation, TopScores, Waiting, WaitingPods,
};
use crate::labels::Selector;
use crate::plugins::Registry;
use crate::pod::PodInfo;
use crate::queue::{QueueConfig, QueuedPod, SchedulingQueue};

/// What became of a pod taken from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Bound to `node`.
    Bound {
        /// `namespace/name`.
        pod: Arc<str>,
        /// The node.
        node: String,
    },
    /// Assumed on `node`, waiting at Permit (a gang member waiting for its siblings).
    Waiting {
        /// `namespace/name`.
        pod: Arc<str>,
        /// The node.
        node: String,
    },
    /// Fits nowhere; `message` is the PodScheduled condition's message.
    Unschedulable {
        /// `namespace/name`.
        pod: Arc<str>,
        /// Why, in kube-scheduler's words.
        message: String,
    },
    /// Victims were evicted so the pod fits on `node`; it is back in the queue.
    Preempting {
        /// `namespace/name`.
        pod: Arc<str>,
        /// The nominated node.
        node: String,
        /// The evicted pods.
        victims: Vec<Arc<str>>,
    },
    /// A plugin or the binder failed; the pod backs off and is retried.
    Error {
        /// `namespace/name`.
        pod: Arc<str>,
        /// What failed.
        message: String,
    },
}

/// Counters since the scheduler started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Scheduling cycles run.
    pub attempts: u64,
    /// Pods bound.
    pub bound: u64,
    /// Cycles that found no node.
    pub unschedulable: u64,
    /// Pods evicted by preemption.
    pub evicted: u64,
    /// Plugin or binder errors.
    pub errors: u64,
}

/// The `PodScheduled=False` condition kube-scheduler writes for a pod that fits nowhere.
pub fn unschedulable_condition(message: &str) -> PodCondition {
    PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some(message.to_owned()),
        ..Default::default()
    }
}

/// The last placement decision: the node, its weighted total score and how many nodes were
/// feasible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The chosen node.
    pub node: NodeId,
    /// Its weighted score (sum over score plugins of normalised score times weight).
    pub score: i64,
    /// Feasible nodes.
    pub feasible: usize,
    /// The best-scored nodes, best first (the chosen node is the first, unless the pod went to
    /// the node it was nominated for).
    pub top: TopScores,
}

/// See the module documentation.
pub struct Scheduler {
    cache: Cache,
    queue: SchedulingQueue,
    profiles: Vec<Arc<Profile>>,
    waiting: WaitingPods,
    pdbs: Vec<Pdb>,
    gated: FxHashMap<Arc<str>, Arc<PodInfo>>,
    interest: FxHashMap<&'static str, Events>,
    now: Duration,
    cursor: NodeId,
    stats: Stats,
    last: Option<Decision>,
    assume_ttl: Option<Duration>,
    assumed: FxHashMap<Arc<str>, Duration>,
    namespaces: FxHashMap<String, BTreeMap<String, String>>,
    nominated: FxHashMap<Arc<str>, (String, Arc<PodInfo>)>,
    selector_pods: rustc_hash::FxHashSet<Arc<str>>,
    evicting: rustc_hash::FxHashSet<Arc<str>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("nodes", &self.cache.node_count())
            .field("pods", &self.cache.pod_count())
            .field("queue", &self.queue)
            .field("waiting", &self.waiting.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new(crate::config::default_profiles(), QueueConfig::default())
            .expect("default profiles are valid")
    }
}

impl Scheduler {
    /// A scheduler with these profiles (at least one).
    pub fn new(profiles: Vec<Profile>, queue: QueueConfig) -> Result<Self> {
        let first = profiles
            .first()
            .ok_or_else(|| Error::Config("no profile".into()))?;
        let mut interest: FxHashMap<&'static str, Events> = FxHashMap::default();
        for p in &profiles {
            for pl in p
                .filter
                .iter()
                .map(|f| (f.name(), f.events()))
                .chain(p.pre_filter.iter().map(|f| (f.name(), f.events())))
            {
                interest.insert(pl.0, pl.1);
            }
        }
        Ok(Scheduler {
            queue: SchedulingQueue::new(first.queue_sort.clone(), queue),
            profiles: profiles.into_iter().map(Arc::new).collect(),
            cache: Cache::new(),
            waiting: WaitingPods::default(),
            pdbs: Vec::new(),
            gated: FxHashMap::default(),
            interest,
            now: Duration::ZERO,
            cursor: 0,
            stats: Stats::default(),
            last: None,
            assume_ttl: None,
            assumed: FxHashMap::default(),
            namespaces: FxHashMap::default(),
            nominated: FxHashMap::default(),
            selector_pods: Default::default(),
            evicting: Default::default(),
        })
    }

    /// A scheduler configured from a `KubeSchedulerConfiguration`.
    pub fn from_config(config: &Config, registry: &Registry) -> Result<Self> {
        Self::new(config.build(registry)?, config.queue()?)
    }

    /// Keeps bound pods *assumed* until their binding is seen (an [`Scheduler::add_pod`] with
    /// `spec.nodeName` set), as kube-scheduler does against an API server: the cache counts the
    /// pod on its node from the moment it is bound, and a pod whose binding has not shown up
    /// `ttl` after it was bound is forgotten and scheduled again ([`Scheduler::advance`]).
    /// Preemption victims likewise stay in the cache (their resources held, the preemptor
    /// waiting) until [`Scheduler::delete_pod`] says they are gone.
    /// `None` (the default, for in-process callers whose binder acts at once) confirms a
    /// placement as soon as the binder accepts it and forgets a victim once it is evicted.
    pub fn set_assume_ttl(&mut self, ttl: Option<Duration>) {
        self.assume_ttl = ttl;
    }

    /// Pods bound but not yet seen bound (with [`Scheduler::set_assume_ttl`]).
    pub fn assumed_len(&self) -> usize {
        self.assumed.len()
    }

    /// A namespace appeared or changed: its labels are what `namespaceSelector` in pod
    /// affinity terms matches.
    pub fn set_namespace(&mut self, namespace: &Namespace) {
        let Some(name) = namespace.metadata.name.clone() else {
            return;
        };
        let labels = namespace.metadata.labels.clone().unwrap_or_default();
        if self.namespaces.get(&name) != Some(&labels) {
            self.namespaces.insert(name, labels);
            self.refresh_selector_pods();
            self.event(Events::NODE_UPDATE.or(Events::POD_ADD));
        }
    }

    /// A namespace is gone.
    pub fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.refresh_selector_pods();
        }
    }

    /// Recompiles the placed pods whose affinity terms select namespaces by label, so their
    /// terms match the namespaces' current labels.
    fn refresh_selector_pods(&mut self) {
        let keys: Vec<Arc<str>> = self.selector_pods.iter().cloned().collect();
        for key in keys {
            let Some((old, node)) = self.cache.pod(&key) else {
                self.selector_pods.remove(&key);
                continue;
            };
            let Ok(fresh) = PodInfo::with_namespaces((*old.pod).clone(), &self.namespaces) else {
                continue;
            };
            let node = self.cache.node(node).name.clone();
            let assumed = self.cache.is_assumed(&key);
            self.cache.remove_pod(&key);
            self.cache.add_pod(Arc::new(fresh), &node, assumed);
        }
    }

    /// The labels of the namespaces seen so far.
    pub fn namespace_labels(&self) -> &FxHashMap<String, BTreeMap<String, String>> {
        &self.namespaces
    }

    /// The cache (read-only).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The queue (read-only).
    pub fn queue(&self) -> &SchedulingQueue {
        &self.queue
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Pods waiting at Permit.
    pub fn waiting(&self) -> &WaitingPods {
        &self.waiting
    }

    /// The profiles.
    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.iter().map(|p| &**p)
    }

    /// The last placement decision (node, score, feasible nodes).
    pub fn last_decision(&self) -> Option<Decision> {
        self.last
    }

    /// The scheduler's clock.
    pub fn now(&self) -> Duration {
        self.now
    }

    fn event(&mut self, e: Events) {
        let interest = &self.interest;
        self.queue.on_event(e, self.now, |p| {
            interest.get(p).copied().unwrap_or(Events::ALL)
        });
    }

    // ---------------------------------------------------------------- events

    /// A node appeared or changed.
    pub fn add_node(&mut self, node: Node) -> Result<()> {
        let existed = node
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| self.cache.node_id(n).is_some());
        self.cache.add_node(node)?;
        self.event(if existed {
            Events::NODE_UPDATE
        } else {
            Events::NODE_ADD
        });
        Ok(())
    }

    /// A node is gone (its pods are forgotten with it).
    pub fn delete_node(&mut self, name: &str) {
        self.cache.remove_node(name);
    }

    /// A pod appeared or changed. Assigned pods (`spec.nodeName`) go to the cache (confirming
    /// an assumed placement); pending pods of one of our profiles go to the queue (or wait
    /// while they have scheduling gates); finished pods are forgotten.
    pub fn add_pod(&mut self, pod: Pod) -> Result<()> {
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let terminating = pod.metadata.deletion_timestamp.is_some()
            && pod.spec.as_ref().is_none_or(|s| s.node_name.is_none());
        let info = Arc::new(PodInfo::with_namespaces(pod, &self.namespaces)?);
        if finished || terminating {
            let key = info.key.clone();
            self.forget_pod(&key);
            return Ok(());
        }
        let known = self.cache.pod(&info.key).is_some()
            || self.queue.contains(&info.key)
            || self.gated.contains_key(&info.key);
        if !known && let Some((g, _)) = &info.group {
            self.cache.note_group_member(g, 1);
        }
        if let Some(node) = info.node_name.clone() {
            self.assumed.remove(&info.key);
            self.nominated.remove(&info.key);
            if info.namespace_selector {
                self.selector_pods.insert(info.key.clone());
            }
            self.gated.remove(&info.key);
            if self.queue.contains(&info.key) && !self.waiting.pods.contains_key(&info.key) {
                self.queue.take(&info.key);
            }
            self.queue.done(&info.key);
            self.waiting.pods.remove(&info.key);
            self.cache.add_pod(info, &node, false);
            self.event(Events::POD_ADD);
            return Ok(());
        }
        if !self.profiles.iter().any(|p| p.name == info.scheduler_name) {
            return Ok(()); // another scheduler's pod
        }
        if self.cache.pod(&info.key).is_some() || self.waiting.pods.contains_key(&info.key) {
            return Ok(()); // assumed by us, binding in flight
        }
        if info.gated {
            self.gated.insert(info.key.clone(), info);
            return Ok(());
        }
        if let Some(node) = info
            .pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .filter(|n| !n.is_empty())
        {
            // A nomination made before (by us before a restart, or by another instance).
            self.nominated
                .entry(info.key.clone())
                .or_insert_with(|| (node.to_owned(), info.clone()));
        }
        self.gated.remove(&info.key);
        if let Some(queued) = self.queue.get(&info.key)
            && same_scheduling_input(&queued.pod, &info.pod)
        {
            return Ok(()); // a status-only update (our own condition): no reason to retry now
        }
        self.queue.add(info, self.now);
        Ok(())
    }

    /// A pod is gone.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        self.forget_pod(&format!("{namespace}/{name}"));
    }

    fn forget_pod(&mut self, key: &str) {
        self.assumed.remove(key);
        self.nominated.remove(key);
        self.selector_pods.remove(key);
        self.evicting.remove(key);
        let mut group = None;
        if let Some(w) = self.waiting.pods.remove(key) {
            group = w.pod.group.clone();
            let profile = self.profiles[w.profile].clone();
            let mut state = w.state;
            self.cache.remove_pod(key);
            for r in profile.reserve.iter().rev() {
                r.unreserve(
                    CycleContext {
                        pod: &w.pod,
                        cache: &self.cache,
                    },
                    &mut state,
                    w.node,
                );
            }
            for p in &profile.permit {
                p.rejected(&w.pod, &mut self.waiting);
            }
        }
        if let Some((p, _, _)) = self.cache.remove_pod(key) {
            group = p.group.clone();
            self.event(Events::POD_DELETE);
        }
        if let Some(qp) = self.queue.take(key) {
            group = qp.info.group.clone();
        }
        self.queue.done(key);
        if let Some(p) = self.gated.remove(key) {
            group = p.group.clone();
        }
        if let Some((g, _)) = group {
            self.cache.note_group_member(&g, -1);
        }
    }

    /// A PodDisruptionBudget appeared or changed.
    pub fn set_pdb(&mut self, pdb: &PodDisruptionBudget) -> Result<()> {
        let ns = pdb
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let key = format!("{ns}/{}", pdb.metadata.name.clone().unwrap_or_default());
        let selector =
            Selector::from_label_selector(pdb.spec.as_ref().and_then(|s| s.selector.as_ref()))?;
        let allowed = pdb.status.as_ref().map_or(0, |s| s.disruptions_allowed);
        self.pdbs.retain(|p| p.key != key);
        self.pdbs.push(Pdb {
            key,
            namespace: ns,
            selector,
            disruptions_allowed: allowed,
        });
        self.event(Events::PDB);
        Ok(())
    }

    /// A PodDisruptionBudget is gone.
    pub fn delete_pdb(&mut self, namespace: &str, name: &str) {
        let key = format!("{namespace}/{name}");
        self.pdbs.retain(|p| p.key != key);
    }

    /// A binding the binder accepted earlier failed: the placement is undone and the pod
    /// retried after a backoff.
    pub fn binding_failed(&mut self, namespace: &str, name: &str) {
        let key = format!("{namespace}/{name}");
        self.assumed.remove(key.as_str());
        if let Some((info, _, true)) = self.cache.remove_pod(&key) {
            self.event(Events::POD_DELETE);
            self.queue.add(info, self.now);
        }
    }

    /// Sets the clock: pods whose backoff ended become active, Permit waits time out.
    pub fn advance(&mut self, now: Duration, binder: &mut dyn Binder) {
        self.now = self.now.max(now);
        let expired: Vec<Arc<str>> = self
            .waiting
            .pods
            .iter()
            .filter(|(_, w)| w.deadline <= self.now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.waiting
                .reject(&k, "rejected due to timeout while waiting at Permit");
        }
        self.process_waiting(binder);
        if !self.assumed.is_empty() {
            let now = self.now;
            let expired: Vec<Arc<str>> = self
                .assumed
                .iter()
                .filter(|(_, deadline)| **deadline <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                self.assumed.remove(&key);
                // The binding never showed up: free the node and try the pod again (a binding
                // that did happen answers the retry with a conflict, and its watch event
                // confirms the placement).
                if let Some((info, _, true)) = self.cache.remove_pod(&key) {
                    self.event(Events::POD_DELETE);
                    self.queue.add(info, self.now);
                }
            }
        }
        self.queue.flush(self.now);
    }

    // ---------------------------------------------------------------- scheduling

    /// Schedules pods until the active queue is empty; returns how many cycles ran.
    pub fn run(&mut self, binder: &mut dyn Binder) -> usize {
        let mut n = 0;
        while self.schedule_one(binder).is_some() {
            n += 1;
        }
        n
    }

    /// Takes the next pod from the active queue and runs one scheduling cycle (and, when the
    /// pod is allowed, its binding). `None` when no pod is active.
    pub fn schedule_one(&mut self, binder: &mut dyn Binder) -> Option<Outcome> {
        let mut qp = self.queue.pop(self.now)?;
        let cycle = self.queue.cycle();
        self.stats.attempts += 1;
        if qp.info.namespace_selector {
            // Namespace labels may have changed since the pod was queued.
            if let Ok(fresh) = PodInfo::with_namespaces((*qp.info.pod).clone(), &self.namespaces) {
                qp.info = Arc::new(fresh);
            }
        }
        let info = qp.info.clone();
        let Some(pidx) = self
            .profiles
            .iter()
            .position(|p| p.name == info.scheduler_name)
        else {
            self.queue.done(&info.key);
            return Some(Outcome::Error {
                pod: info.key.clone(),
                message: format!("no profile for scheduler {:?}", info.scheduler_name),
            });
        };
        let profile = self.profiles[pidx].clone();
        // Pods nominated after preemption, at least as important as this one, hold their
        // place on their node during this cycle (kube's "nominated pods" in Filter).
        let reserved = self.reserve_nominated(&info);
        profile.register(&info, &mut self.cache);
        let mut state = CycleState::default();
        let mut selection = profile.select(&info, &self.cache, &mut state, self.cursor);
        // A nominated pod goes to its nominated node when it fits there (kube evaluates that
        // node first).
        let nominated_node = self
            .nominated
            .get(&info.key)
            .and_then(|(n, _)| self.cache.node_id(n));
        if let (Some(n), Selection::Node { node, .. }) = (nominated_node, &selection)
            && *node != n
            && profile.fits(&info, &mut self.cache, n)
        {
            selection = Selection::Node {
                node: n,
                score: 0,
                feasible: 1,
                top: TopScores::one(n, 0),
            };
        }
        let mut nominated = None;
        if let Selection::None(diag) = &mut selection {
            let terminating = nominated_node.is_some_and(|n| {
                self.cache.pods_on(n).iter().any(|p| {
                    p.priority < info.priority
                        && (p.pod.metadata.deletion_timestamp.is_some()
                            || self.evicting.contains(&p.key))
                })
            });
            if terminating {
                // Its victims are still going away: wait for them instead of evicting more.
                diag.post_filter = Some(
                    "preemption: not eligible due to a terminating pod on the nominated node."
                        .into(),
                );
            } else {
                for pf in &profile.post_filter {
                    let mut sim = Simulation {
                        cache: &mut self.cache,
                        profile: &profile,
                        pdbs: &self.pdbs,
                        waiting: &mut self.waiting,
                    };
                    match pf.post_filter(&info, &mut sim, diag) {
                        PostFilterResult::Nominated { node, victims } => {
                            nominated = Some((node, victims));
                            break;
                        }
                        PostFilterResult::NotHelpful(msg) => {
                            if !msg.is_empty() {
                                diag.post_filter = Some(msg);
                            }
                        }
                    }
                }
            }
        }
        for key in reserved {
            self.cache.remove_pod(&key);
        }
        match selection {
            Selection::None(diag) => {
                self.process_waiting(binder);
                if let Some((node, victims)) = nominated {
                    for v in &victims {
                        if let Some((victim, _)) = self.cache.pod(v) {
                            let victim = victim.clone();
                            if let Err(e) = binder.evict(&victim, &info) {
                                self.stats.errors += 1;
                                let message = format!("evicting {}: {e}", victim.key);
                                self.queue.failed(qp, cycle, self.now, true);
                                return Some(Outcome::Error {
                                    pod: info.key.clone(),
                                    message,
                                });
                            }
                            self.stats.evicted += 1;
                            if self.assume_ttl.is_some() {
                                // Against an API server the victim holds its resources until
                                // the watch shows it gone (graceful termination).
                                self.evicting.insert(v.clone());
                            } else {
                                self.forget_pod(v);
                            }
                        }
                    }
                    self.queue.done(&info.key);
                    self.queue.add(info.clone(), self.now);
                    let node = self.cache.node(node).name.clone();
                    self.nominate(&info, &node, binder);
                    return Some(Outcome::Preempting {
                        pod: info.key.clone(),
                        node,
                        victims,
                    });
                }
                self.stats.unschedulable += 1;
                let message = diag.message();
                binder.unschedulable(&info, &unschedulable_condition(&message));
                let mut qp = qp;
                qp.rejected_by = diag.plugins.clone();
                self.queue.failed(
                    qp,
                    cycle,
                    self.now,
                    diag.pre_filter
                        .as_ref()
                        .is_some_and(|s| s.code == crate::framework::Code::Error),
                );
                Some(Outcome::Unschedulable {
                    pod: info.key.clone(),
                    message,
                })
            }
            Selection::Node {
                node,
                score,
                feasible,
                top,
            } => {
                self.last = Some(Decision {
                    node,
                    score,
                    feasible,
                    top,
                });
                self.cursor = node + 1;
                Some(self.assume_and_bind(qp, cycle, pidx, node, state, binder))
            }
        }
    }

    /// Puts the nominated pods that are at least as important as `pod` on their nodes, as
    /// assumed pods; returns their keys to take them off again.
    fn reserve_nominated(&mut self, pod: &PodInfo) -> Vec<Arc<str>> {
        if self.nominated.is_empty() {
            return Vec::new();
        }
        let mut reserved = Vec::new();
        for (key, (node, nominee)) in &self.nominated {
            if **key == *pod.key
                || nominee.priority < pod.priority
                || self.cache.pod(key).is_some()
                || self.cache.node_id(node).is_none()
            {
                continue;
            }
            self.cache.add_pod(nominee.clone(), node, true);
            reserved.push(key.clone());
        }
        reserved
    }

    /// Records that `pod` preempted its way onto `node`; less important pods nominated to the
    /// same node lose their nomination and are retried (kube does the same).
    fn nominate(&mut self, pod: &Arc<PodInfo>, node: &str, binder: &mut dyn Binder) {
        let displaced: Vec<Arc<str>> = self
            .nominated
            .iter()
            .filter(|(k, (n, p))| n == node && p.priority < pod.priority && **k != pod.key)
            .map(|(k, _)| k.clone())
            .collect();
        for key in displaced {
            if let Some((_, p)) = self.nominated.remove(&key) {
                binder.nominate(&p, None);
                if let Some(qp) = self.queue.take(&key) {
                    self.queue.add(qp.info, self.now);
                }
            }
        }
        self.nominated
            .insert(pod.key.clone(), (node.to_owned(), pod.clone()));
        binder.nominate(pod, Some(node));
    }

    /// The node each preemptor was nominated for (`status.nominatedNodeName`), by pod key.
    pub fn nominations(&self) -> impl Iterator<Item = (&str, &str)> {
        self.nominated.iter().map(|(k, (n, _))| (&**k, n.as_str()))
    }

    fn undo(
        &mut self,
        profile: &Profile,
        info: &PodInfo,
        node: NodeId,
        state: &mut CycleState,
        upto: usize,
    ) {
        for r in profile.reserve[..upto].iter().rev() {
            r.unreserve(
                CycleContext {
                    pod: info,
                    cache: &self.cache,
                },
                state,
                node,
            );
        }
        self.cache.remove_pod(&info.key);
    }

    fn assume_and_bind(
        &mut self,
        qp: QueuedPod,
        cycle: u64,
        pidx: usize,
        node: NodeId,
        mut state: CycleState,
        binder: &mut dyn Binder,
    ) -> Outcome {
        let profile = self.profiles[pidx].clone();
        let info = qp.info.clone();
        let node_name = self.cache.node(node).name.clone();
        self.cache.add_pod(info.clone(), &node_name, true);
        for (i, r) in profile.reserve.iter().enumerate() {
            let res = r.reserve(
                CycleContext {
                    pod: &info,
                    cache: &self.cache,
                },
                &mut state,
                node,
            );
            if let Err(s) = res {
                self.undo(&profile, &info, node, &mut state, i + 1);
                self.stats.errors += 1;
                self.queue
                    .failed(qp, cycle, self.now, s.code == crate::framework::Code::Error);
                return Outcome::Error {
                    pod: info.key.clone(),
                    message: s.to_string(),
                };
            }
        }
        let mut wait: Option<Duration> = None;
        let mut pending = Vec::new();
        for p in &profile.permit {
            let cx = CycleContext {
                pod: &info,
                cache: &self.cache,
            };
            match p.permit(cx, &mut state, node, &mut self.waiting) {
                Permit::Allow => {}
                Permit::Wait(d) => {
                    pending.push(p.name());
                    wait = Some(wait.map_or(d, |w| w.min(d)));
                }
                Permit::Reject(msg) => {
                    self.undo(&profile, &info, node, &mut state, profile.reserve.len());
                    for q in &profile.permit {
                        q.rejected(&info, &mut self.waiting);
                    }
                    self.process_waiting(binder);
                    self.stats.unschedulable += 1;
                    let message = format!("{}: {msg}", p.name());
                    binder.unschedulable(&info, &unschedulable_condition(&message));
                    self.queue.failed(qp, cycle, self.now, false);
                    return Outcome::Unschedulable {
                        pod: info.key.clone(),
                        message,
                    };
                }
            }
        }
        if let Some(d) = wait {
            self.waiting.pods.insert(
                info.key.clone(),
                Waiting {
                    pod: info.clone(),
                    node,
                    profile: pidx,
                    deadline: self.now + d,
                    pending,
                    rejected: None,
                    state,
                    queued: qp,
                    cycle,
                },
            );
            self.process_waiting(binder);
            return Outcome::Waiting {
                pod: info.key.clone(),
                node: node_name,
            };
        }
        let out = self.bind(qp, cycle, &profile, node, state, binder);
        self.process_waiting(binder);
        out
    }

    fn bind(
        &mut self,
        qp: QueuedPod,
        cycle: u64,
        profile: &Profile,
        node: NodeId,
        mut state: CycleState,
        binder: &mut dyn Binder,
    ) -> Outcome {
        let info = qp.info.clone();
        let mut failure = None;
        for p in &profile.pre_bind {
            let cx = CycleContext {
                pod: &info,
                cache: &self.cache,
            };
            if let Err(s) = p.pre_bind(cx, &mut state, node) {
                failure = Some(s.to_string());
                break;
            }
        }
        if failure.is_none() {
            let cx = CycleContext {
                pod: &info,
                cache: &self.cache,
            };
            failure = Some("no bind plugin bound the pod".into());
            for b in &profile.bind {
                match b.bind(cx, node, binder) {
                    None => continue,
                    Some(Ok(())) => {
                        failure = None;
                        break;
                    }
                    Some(Err(s)) => {
                        failure = Some(s.to_string());
                        break;
                    }
                }
            }
        }
        if let Some(message) = failure {
            self.undo(profile, &info, node, &mut state, profile.reserve.len());
            self.stats.errors += 1;
            self.queue.failed(qp, cycle, self.now, true);
            return Outcome::Error {
                pod: info.key.clone(),
                message,
            };
        }
        self.nominated.remove(&info.key);
        match self.assume_ttl {
            Some(ttl) => {
                self.assumed.insert(info.key.clone(), self.now + ttl);
            }
            None => self.cache.confirm(&info.key),
        }
        self.queue.done(&info.key);
        self.stats.bound += 1;
        if self.queue.unschedulable_len() > 0 {
            // What the informer's "assigned pod added" event would do (spread, affinity).
            self.event(Events::POD_ADD);
        }
        Outcome::Bound {
            pod: info.key.clone(),
            node: self.cache.node(node).name.clone(),
        }
    }

    /// Binds allowed waiting pods and undoes rejected ones, until nothing changes.
    fn process_waiting(&mut self, binder: &mut dyn Binder) {
        loop {
            let next = self
                .waiting
                .pods
                .iter()
                .find(|(_, w)| w.rejected.is_some() || w.pending.is_empty())
                .map(|(k, _)| k.clone());
            let Some(key) = next else { return };
            let w = self.waiting.pods.remove(&key).expect("present");
            let profile = self.profiles[w.profile].clone();
            let mut state = w.state;
            match w.rejected {
                Some(reason) => {
                    self.undo(&profile, &w.pod, w.node, &mut state, profile.reserve.len());
                    for p in &profile.permit {
                        p.rejected(&w.pod, &mut self.waiting);
                    }
                    self.stats.unschedulable += 1;
                    binder.unschedulable(&w.pod, &unschedulable_condition(&reason));
                    let mut qp = w.queued;
                    qp.rejected_by = vec!["Coscheduling"];
                    self.queue.failed(qp, w.cycle, self.now, true);
                }
                None => {
                    self.bind(w.queued, w.cycle, &profile, w.node, state, binder);
                }
            }
        }
    }

    /// Moves every unschedulable or backing-off pod to the active queue (kube's periodic
    /// flush, for callers that want to retry now).
    pub fn retry_all(&mut self) {
        self.queue.move_all_to_active(self.now);
    }

    /// Pods not yet placed: queued, waiting at Permit or gated.
    pub fn pending(&self) -> usize {
        self.queue.active_len()
            + self.queue.backoff_len()
            + self.queue.unschedulable_len()
            + self.waiting.len()
            + self.gated.len()
    }
}

/// Whether two versions of a pending pod ask the same of the scheduler: an update that changes
/// only the status or bookkeeping metadata (the PodScheduled condition we wrote, a new
/// resourceVersion) does not make a pod schedulable, so it does not cut its backoff short.
fn same_scheduling_input(a: &Pod, b: &Pod) -> bool {
    a.spec == b.spec
        && a.metadata.labels == b.metadata.labels
        && a.metadata.annotations == b.metadata.annotations
        && a.metadata.deletion_timestamp == b.metadata.deletion_timestamp
}
