//! The scheduling framework: kube-scheduler's extension points as traits
//! (`pkg/scheduler/framework/interface.go`), and one scheduling cycle's algorithm.
//!
//! A cycle for one pod runs PreFilter (per-cycle state, optional node restriction), Filter
//! (rule nodes out), PostFilter when nothing fits (preemption), PreScore, Score (per plugin,
//! normalised, weighted), then Reserve, Permit (allow, wait, reject), PreBind and Bind.
//!
//! Filter and Score plugins are *prepared* once per cycle into a per-node check or scorer that
//! holds what it needs (no per-node map lookups), and each prepared check says its
//! [`Scope`]: whether its verdict depends only on the node's equivalence class (see
//! [`crate::cache`]). When every check and scorer is class-scoped, the cycle evaluates one node
//! per class, plus the few nodes a plugin singles out, instead of every node; the result is the
//! same as evaluating every node (same feasible set, same scores, same tie-break).

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::cache::{Cache, NodeId};
use crate::labels::Selector;
use crate::pod::PodInfo;

/// A pod in the queue, with its scheduling history.
#[derive(Debug, Clone)]
pub struct QueuedPod {
    /// The pod.
    pub info: Arc<PodInfo>,
    /// Scheduling attempts so far.
    pub attempts: u32,
    /// When it last entered the active queue.
    pub timestamp: Duration,
    /// When it first entered the queue.
    pub initial: Duration,
    /// Plugins that rejected it in its last attempt.
    pub rejected_by: Vec<&'static str>,
    /// Arrival order (ties in QueueSort).
    pub seq: u64,
}

/// A PodDisruptionBudget as preemption sees it.
#[derive(Debug, Clone)]
pub struct Pdb {
    /// `namespace/name`.
    pub key: String,
    /// The namespace.
    pub namespace: String,
    /// Which pods it protects.
    pub selector: Selector,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: i32,
}

/// The highest score a plugin gives a node (after normalisation).
pub const MAX_NODE_SCORE: i64 = 100;

/// A plugin: a named piece of scheduling policy registered at one or more extension points.
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's name, as in the configuration (`NodeResourcesFit`).
    fn name(&self) -> &'static str;
    /// The cluster events after which a pod this plugin rejected may fit (requeueing).
    fn events(&self) -> Events {
        Events::ALL
    }
}

/// Cluster events, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Events(pub u8);

impl Events {
    /// A node was added.
    pub const NODE_ADD: Events = Events(1);
    /// A node changed (labels, taints, allocatable, cordon).
    pub const NODE_UPDATE: Events = Events(2);
    /// A pod was deleted (or its node freed).
    pub const POD_DELETE: Events = Events(4);
    /// A pod was added or assigned.
    pub const POD_ADD: Events = Events(8);
    /// A PodDisruptionBudget changed.
    pub const PDB: Events = Events(16);
    /// Every event.
    pub const ALL: Events = Events(0xff);

    /// The union.
    pub const fn or(self, o: Events) -> Events {
        Events(self.0 | o.0)
    }

    /// Whether any event is in both sets.
    pub fn intersects(self, o: Events) -> bool {
        self.0 & o.0 != 0
    }
}

/// Per-cycle plugin data, keyed by type (kube's `CycleState`).
#[derive(Default)]
pub struct CycleState {
    map: FxHashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for CycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CycleState")
            .field("entries", &self.map.len())
            .finish()
    }
}

impl CycleState {
    /// Stores `value`, replacing any value of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.map.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// The stored value of type `T`.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.map.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// The stored value of type `T`, mutably.
    pub fn get_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.map.get_mut(&TypeId::of::<T>())?.downcast_mut()
    }
}

/// How a failure affects the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Does not fit now; preemption or cluster changes may help.
    Unschedulable,
    /// Does not fit and preemption cannot help (`UnschedulableAndUnresolvable`).
    Unresolvable,
    /// Something went wrong (a bug or bad input).
    Error,
}

/// A plugin's verdict at a pod-level extension point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The kind of failure.
    pub code: Code,
    /// The plugin that failed.
    pub plugin: &'static str,
    /// Human-readable reasons.
    pub reasons: Vec<String>,
}

impl Status {
    /// An `Unschedulable` status.
    pub fn unschedulable(plugin: &'static str, reason: impl Into<String>) -> Self {
        Status {
            code: Code::Unschedulable,
            plugin,
            reasons: vec![reason.into()],
        }
    }

    /// An `UnschedulableAndUnresolvable` status.
    pub fn unresolvable(plugin: &'static str, reason: impl Into<String>) -> Self {
        Status {
            code: Code::Unresolvable,
            plugin,
            reasons: vec![reason.into()],
        }
    }

    /// An error status.
    pub fn error(plugin: &'static str, reason: impl Into<String>) -> Self {
        Status {
            code: Code::Error,
            plugin,
            reasons: vec![reason.into()],
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.plugin, self.reasons.join(", "))
    }
}

/// Why a node was ruled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The reasons, as kube-scheduler words them (`Insufficient cpu`).
    pub reasons: Vec<Cow<'static, str>>,
    /// Preemption cannot make the node fit.
    pub unresolvable: bool,
}

impl Reject {
    /// A rejection that preemption might resolve.
    pub fn unschedulable(reason: impl Into<Cow<'static, str>>) -> Self {
        Reject {
            reasons: vec![reason.into()],
            unresolvable: false,
        }
    }

    /// A rejection preemption cannot resolve.
    pub fn unresolvable(reason: impl Into<Cow<'static, str>>) -> Self {
        Reject {
            reasons: vec![reason.into()],
            unresolvable: true,
        }
    }
}

/// What a prepared check or scorer depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Only the node's equivalence class: labels other than the hostname, taints, unschedulable,
    /// allocatable, images, requested resources. Cluster-wide state fixed for the cycle (domain
    /// counts, image spread) may be read too.
    Class,
    /// The class, except for the listed nodes, which may differ from their class (a node
    /// hosting a pod an anti-affinity term matches).
    ClassExcept(Vec<NodeId>),
    /// Anything about the node.
    Node,
}

/// What a cycle's plugins see: the pod and the cache (the cycle's snapshot).
#[derive(Clone, Copy)]
pub struct CycleContext<'a> {
    /// The pod being scheduled.
    pub pod: &'a PodInfo,
    /// The cluster as the scheduler knows it.
    pub cache: &'a Cache,
}

/// Orders the active queue (kube's `QueueSort`).
pub trait QueueSortPlugin: Plugin {
    /// Whether `a` should be tried before `b`.
    fn less(&self, a: &QueuedPod, b: &QueuedPod) -> bool;
}

/// What PreFilter can say about the nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreFilterResult {
    /// Only these nodes can fit (`None`: any node may).
    pub nodes: Option<Vec<NodeId>>,
}

/// Runs once per cycle before filtering (kube's `PreFilter`).
pub trait PreFilterPlugin: Plugin {
    /// Registers the cache indexes this plugin will read for `pod` (topology keys, pod
    /// counters). Runs before the cycle, with the cache writable.
    fn register(&self, _pod: &PodInfo, _cache: &mut Cache) {}
    /// Computes per-cycle state; an error status makes every node fail with it.
    fn pre_filter(
        &self,
        cx: CycleContext<'_>,
        state: &mut CycleState,
    ) -> Result<PreFilterResult, Status>;
}

/// A filter prepared for one cycle.
pub trait NodeFilter: Send + Sync {
    /// What the verdict depends on.
    fn scope(&self) -> Scope {
        Scope::Node
    }
    /// `Err` when the pod cannot run on the node.
    fn filter(&self, node: NodeId) -> Result<(), Reject>;
}

/// Rules nodes out (kube's `Filter`).
pub trait FilterPlugin: Plugin {
    /// The check for this cycle, or `None` when the plugin has nothing to check for this pod.
    fn prepare<'a>(
        &'a self,
        cx: CycleContext<'a>,
        state: &'a CycleState,
    ) -> Option<Box<dyn NodeFilter + 'a>>;
}

/// Runs when no node fits (kube's `PostFilter`; preemption).
pub trait PostFilterPlugin: Plugin {
    /// Tries to make the pod fit, e.g. by choosing victims to evict.
    fn post_filter(
        &self,
        pod: &Arc<PodInfo>,
        sim: &mut Simulation<'_>,
        diagnosis: &Diagnosis,
    ) -> PostFilterResult;
}

/// What a PostFilter plugin achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostFilterResult {
    /// The pod will fit on `node` once `victims` are gone.
    Nominated {
        /// The node.
        node: NodeId,
        /// Pods (keys) to evict.
        victims: Vec<Arc<str>>,
    },
    /// Nothing to do; the message explains why (appended to the pod's condition).
    NotHelpful(String),
}

/// Runs once per cycle before scoring, with the feasible nodes (kube's `PreScore`).
pub trait PreScorePlugin: Plugin {
    /// Computes per-cycle scoring state.
    fn pre_score(
        &self,
        cx: CycleContext<'_>,
        state: &mut CycleState,
        feasible: &[NodeId],
    ) -> Result<(), Status>;
}

/// A scorer prepared for one cycle.
pub trait NodeScorer: Send + Sync {
    /// The node's raw score.
    fn score(&self, node: NodeId) -> i64;
    /// Maps raw scores to `0..=MAX_NODE_SCORE`. It must depend on the set of scores only
    /// (minimum, maximum), not on how many nodes have each, so that scoring one node per class
    /// normalises like scoring every node.
    fn normalize(&self, _scores: &mut [i64]) {}
}

/// Ranks feasible nodes (kube's `Score` with `NormalizeScore`).
pub trait ScorePlugin: Plugin {
    /// What the score depends on for this pod, or `None` when the plugin would give every node
    /// the same score (it is then skipped: it cannot change the choice).
    fn scope(&self, cx: CycleContext<'_>, state: &CycleState) -> Option<Scope>;
    /// The scorer for this cycle (after PreScore).
    fn prepare<'a>(
        &'a self,
        cx: CycleContext<'a>,
        state: &'a CycleState,
    ) -> Box<dyn NodeScorer + 'a>;
}

/// Reserves and releases per-pod resources (kube's `Reserve`).
pub trait ReservePlugin: Plugin {
    /// Called once the pod is assumed on `node`.
    fn reserve(
        &self,
        cx: CycleContext<'_>,
        state: &mut CycleState,
        node: NodeId,
    ) -> Result<(), Status>;
    /// Undoes `reserve` when a later step fails.
    fn unreserve(&self, cx: CycleContext<'_>, state: &mut CycleState, node: NodeId);
}

/// A Permit plugin's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    /// Go on to binding.
    Allow,
    /// Hold the pod (assumed) until allowed, rejected or timed out.
    Wait(Duration),
    /// Give the placement up.
    Reject(String),
}

/// Pods held at Permit, which Permit plugins may release or reject.
#[derive(Debug, Default)]
pub struct WaitingPods {
    pub(crate) pods: BTreeMap<Arc<str>, Waiting>,
}

#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) pod: Arc<PodInfo>,
    pub(crate) node: NodeId,
    pub(crate) profile: usize,
    pub(crate) deadline: Duration,
    pub(crate) pending: Vec<&'static str>,
    pub(crate) rejected: Option<String>,
    pub(crate) state: CycleState,
    pub(crate) queued: QueuedPod,
    pub(crate) cycle: u64,
}

impl WaitingPods {
    /// The keys and pods waiting.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<PodInfo>)> {
        self.pods.iter().map(|(k, w)| (k, &w.pod))
    }

    /// How many pods wait.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// `plugin` allows the pod; it binds once every plugin that made it wait has allowed it.
    pub fn allow(&mut self, key: &str, plugin: &'static str) {
        if let Some(w) = self.pods.get_mut(key) {
            w.pending.retain(|p| *p != plugin);
        }
    }

    /// Rejects a waiting pod: its placement is undone and it goes back to the queue.
    pub fn reject(&mut self, key: &str, reason: impl Into<String>) {
        if let Some(w) = self.pods.get_mut(key) {
            w.rejected.get_or_insert_with(|| reason.into());
        }
    }
}

/// Holds or approves a placement before binding (kube's `Permit`; gang scheduling).
pub trait PermitPlugin: Plugin {
    /// Decides; may allow or reject other waiting pods through `waiting`.
    fn permit(
        &self,
        cx: CycleContext<'_>,
        state: &mut CycleState,
        node: NodeId,
        waiting: &mut WaitingPods,
    ) -> Permit;

    /// The pod's placement was undone after Permit (rejected or timed out); the plugin may
    /// reject other waiting pods (a gang's siblings).
    fn rejected(&self, _pod: &PodInfo, _waiting: &mut WaitingPods) {}
}

/// Work before binding (kube's `PreBind`).
pub trait PreBindPlugin: Plugin {
    /// `Err` aborts the binding; the pod is requeued.
    fn pre_bind(
        &self,
        cx: CycleContext<'_>,
        state: &mut CycleState,
        node: NodeId,
    ) -> Result<(), Status>;
}

/// A placement to carry out: set the pod's node (`pods/binding`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid, when it has one.
    pub uid: Option<String>,
    /// The node's name.
    pub node: String,
}

/// Why a binder could not act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BindError(pub String);

/// The caller's side of scheduling: the only place where decisions leave the scheduler. An
/// in-process caller applies them directly; the API-server runner posts `pods/binding`, deletes
/// victims and patches the PodScheduled condition. A binder that works asynchronously returns
/// `Ok` once the work is queued and reports a later failure with
/// [`crate::Scheduler::binding_failed`].
pub trait Binder {
    /// Binds a pod to a node.
    fn bind(&mut self, binding: &Binding) -> Result<(), BindError>;
    /// Evicts a preemption victim (deletes the pod).
    fn evict(&mut self, victim: &PodInfo, preemptor: &PodInfo) -> Result<(), BindError> {
        let _ = (victim, preemptor);
        Err(BindError("this binder does not evict".into()))
    }
    /// Records (`Some`) or clears (`None`) the node a preemptor was nominated for
    /// (`status.nominatedNodeName`).
    fn nominate(&mut self, pod: &PodInfo, node: Option<&str>) {
        let _ = (pod, node);
    }
    /// Reports that a pod could not be scheduled: write `condition` into its status and an
    /// event (`FailedScheduling`) with its message.
    fn unschedulable(
        &mut self,
        pod: &PodInfo,
        condition: &k8s_openapi::api::core::v1::PodCondition,
    ) {
        let _ = (pod, condition);
    }
}

/// Binds pods (kube's `Bind`); the first plugin that does not skip binds.
pub trait BindPlugin: Plugin {
    /// Binds through `binder`; `None` skips to the next Bind plugin.
    fn bind(
        &self,
        cx: CycleContext<'_>,
        node: NodeId,
        binder: &mut dyn Binder,
    ) -> Option<Result<(), Status>>;
}

/// The extension points one plugin implements (what a registry factory returns).
#[derive(Clone, Default)]
pub struct PluginSet {
    /// QueueSort.
    pub queue_sort: Option<Arc<dyn QueueSortPlugin>>,
    /// PreFilter.
    pub pre_filter: Option<Arc<dyn PreFilterPlugin>>,
    /// Filter.
    pub filter: Option<Arc<dyn FilterPlugin>>,
    /// PostFilter.
    pub post_filter: Option<Arc<dyn PostFilterPlugin>>,
    /// PreScore.
    pub pre_score: Option<Arc<dyn PreScorePlugin>>,
    /// Score.
    pub score: Option<Arc<dyn ScorePlugin>>,
    /// Reserve.
    pub reserve: Option<Arc<dyn ReservePlugin>>,
    /// Permit.
    pub permit: Option<Arc<dyn PermitPlugin>>,
    /// PreBind.
    pub pre_bind: Option<Arc<dyn PreBindPlugin>>,
    /// Bind.
    pub bind: Option<Arc<dyn BindPlugin>>,
}

impl fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginSet").finish_non_exhaustive()
    }
}

/// A scheduling profile: the plugins (and score weights) that pods naming its scheduler get.
pub struct Profile {
    /// `schedulerName` of the pods it schedules.
    pub name: String,
    pub(crate) queue_sort: Arc<dyn QueueSortPlugin>,
    pub(crate) pre_filter: Vec<Arc<dyn PreFilterPlugin>>,
    pub(crate) filter: Vec<Arc<dyn FilterPlugin>>,
    pub(crate) post_filter: Vec<Arc<dyn PostFilterPlugin>>,
    pub(crate) pre_score: Vec<Arc<dyn PreScorePlugin>>,
    pub(crate) score: Vec<(Arc<dyn ScorePlugin>, i64)>,
    pub(crate) reserve: Vec<Arc<dyn ReservePlugin>>,
    pub(crate) permit: Vec<Arc<dyn PermitPlugin>>,
    pub(crate) pre_bind: Vec<Arc<dyn PreBindPlugin>>,
    pub(crate) bind: Vec<Arc<dyn BindPlugin>>,
    /// Evaluate every node even when plugins allow evaluating one per class (a reference for
    /// benchmarks and tests; same result, slower).
    pub full_evaluation: bool,
    /// Evaluate nodes on several threads from this many nodes on.
    pub parallel_threshold: usize,
    /// `percentageOfNodesToScore` (`None` or 0: kube's adaptive default).
    pub percentage_of_nodes_to_score: Option<u32>,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field(
                "filters",
                &self.filter.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field(
                "scores",
                &self
                    .score
                    .iter()
                    .map(|(p, w)| (p.name(), *w))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Why a pod fits nowhere: reasons counted over nodes (kube's `Diagnosis`).
#[derive(Debug, Clone, Default)]
pub struct Diagnosis {
    /// Nodes considered.
    pub nodes: usize,
    /// How many nodes each reason ruled out.
    pub reasons: BTreeMap<Cow<'static, str>, usize>,
    /// A PreFilter failure that ruled out every node.
    pub pre_filter: Option<Status>,
    /// Nodes ruled out by a reason preemption might resolve.
    pub resolvable: Vec<NodeId>,
    /// Plugins that rejected nodes (for requeueing on events).
    pub plugins: Vec<&'static str>,
    /// What PostFilter said.
    pub post_filter: Option<String>,
}

impl Diagnosis {
    fn note(&mut self, plugin: &'static str) {
        if !self.plugins.contains(&plugin) {
            self.plugins.push(plugin);
        }
    }

    /// The message kube-scheduler writes into the PodScheduled condition:
    /// `0/5 nodes are available: 2 node(s) had untolerated taint {gpu: }, 3 Insufficient cpu.`
    pub fn message(&self) -> String {
        if self.nodes == 0 {
            return "no nodes available to schedule pods".into();
        }
        let mut msg = format!("0/{} nodes are available:", self.nodes);
        match &self.pre_filter {
            Some(s) => {
                msg.push(' ');
                msg.push_str(&s.reasons.join(", "));
                msg.push('.');
            }
            None => {
                let mut parts: Vec<String> = self
                    .reasons
                    .iter()
                    .map(|(r, n)| format!("{n} {r}"))
                    .collect();
                parts.sort();
                msg.push(' ');
                msg.push_str(&parts.join(", "));
                msg.push('.');
            }
        }
        if let Some(p) = &self.post_filter {
            msg.push(' ');
            msg.push_str(p);
        }
        msg
    }
}

/// How many nodes each node passed to PreScore stands for (when the framework evaluated one
/// node per class), stored in the [`CycleState`] before PreScore.
#[derive(Debug, Clone, Default)]
pub struct Feasible {
    /// Feasible nodes in all.
    pub total: usize,
    /// Per node passed to PreScore, the nodes it stands for (itself included).
    pub sizes: Vec<u32>,
}

/// The outcome of the filter and score phases.
#[derive(Debug)]
pub(crate) enum Selection {
    Node {
        node: NodeId,
        score: i64,
        feasible: usize,
        top: TopScores,
    },
    None(Diagnosis),
}

/// The best-scored nodes of a cycle, best first (at most three): what `kube-scheduler -v=10`
/// logs as the top scores. With equivalence classes each entry is the node its class would
/// place on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopScores {
    entries: [(NodeId, i64); 3],
    len: u8,
}

impl TopScores {
    /// One node, unscored.
    pub(crate) fn one(node: NodeId, score: i64) -> Self {
        TopScores {
            entries: [(node, score); 3],
            len: 1,
        }
    }

    /// `(node, weighted total score)`, best first.
    pub fn as_slice(&self) -> &[(NodeId, i64)] {
        &self.entries[..usize::from(self.len)]
    }

    /// Offers a candidate; `before(a, b)` says whether `a` ranks above `b`.
    fn offer(&mut self, c: (NodeId, i64), before: impl Fn(&(NodeId, i64), &(NodeId, i64)) -> bool) {
        let len = usize::from(self.len);
        let mut i = len;
        while i > 0 && before(&c, &self.entries[i - 1]) {
            i -= 1;
        }
        if i >= self.entries.len() {
            return;
        }
        let end = len.min(self.entries.len() - 1);
        self.entries.copy_within(i..end, i + 1);
        self.entries[i] = c;
        self.len = (len + 1).min(self.entries.len()) as u8;
    }
}

/// Access to the cache and the profile for PostFilter plugins that try placements out
/// (preemption removes victims from the cache, re-runs the filters on one node, and puts them
/// back).
pub struct Simulation<'a> {
    /// The cache, writable; every change must be undone before `post_filter` returns.
    pub cache: &'a mut Cache,
    pub(crate) profile: &'a Profile,
    /// PodDisruptionBudgets known to the scheduler.
    pub pdbs: &'a [Pdb],
    /// Pods waiting at Permit.
    pub waiting: &'a mut WaitingPods,
}

impl Simulation<'_> {
    /// Whether `pod` passes every PreFilter and Filter on `node` in the cache's current state.
    pub fn fits(&mut self, pod: &PodInfo, node: NodeId) -> bool {
        self.profile.fits(pod, self.cache, node)
    }
}

impl Profile {
    /// How many feasible nodes kube-scheduler would look for among `all` before scoring
    /// (`numFeasibleNodesToFind`): every node below 100 nodes or at 100 %, otherwise the
    /// configured share, or adaptively 50 % minus 1 % per 125 nodes, at least 5 %, and never
    /// fewer than 100 nodes.
    ///
    /// Berth does not sample by this number, because scoring a sample can miss the best node:
    /// the equivalence classes make evaluating every node cheap instead. It stops early only
    /// where that provably gives full evaluation's answer: when no score plugin applies to the
    /// pod, any feasible node is as good as another, and the first feasible node in tie-break
    /// order (which full evaluation would also pick) ends the search.
    pub fn nodes_to_find(&self, all: usize) -> usize {
        const MIN_NODES: usize = 100;
        const MIN_PERCENT: usize = 5;
        if all < MIN_NODES {
            return all;
        }
        let mut pct = self.percentage_of_nodes_to_score.unwrap_or(0) as usize;
        if pct >= 100 {
            return all;
        }
        if pct == 0 {
            pct = 50usize.saturating_sub(all / 125).max(MIN_PERCENT);
        }
        (all * pct / 100).max(MIN_NODES)
    }

    /// Registers the cache indexes the pod's cycle reads.
    pub(crate) fn register(&self, pod: &PodInfo, cache: &mut Cache) {
        for p in &self.pre_filter {
            p.register(pod, cache);
        }
    }

    pub(crate) fn fits(&self, pod: &PodInfo, cache: &mut Cache, node: NodeId) -> bool {
        self.register(pod, cache);
        let cx = CycleContext { pod, cache };
        let mut state = CycleState::default();
        for p in &self.pre_filter {
            match p.pre_filter(cx, &mut state) {
                Ok(r) => {
                    if r.nodes.is_some_and(|n| !n.contains(&node)) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        self.filter
            .iter()
            .filter_map(|f| f.prepare(cx, &state))
            .all(|c| c.filter(node).is_ok())
    }

    /// Runs PreFilter, Filter, PreScore and Score for `pod`; picks the best node. Ties go to the
    /// first node at or after `cursor` in slot order (wrapping), which spreads equal choices
    /// round-robin and is the same whichever way nodes are evaluated.
    pub(crate) fn select(
        &self,
        pod: &PodInfo,
        cache: &Cache,
        state: &mut CycleState,
        cursor: NodeId,
    ) -> Selection {
        let cx = CycleContext { pod, cache };
        let mut diag = Diagnosis {
            nodes: cache.node_count(),
            ..Default::default()
        };
        let mut restrict: Option<Vec<NodeId>> = None;
        for p in &self.pre_filter {
            match p.pre_filter(cx, state) {
                Ok(r) => {
                    if let Some(nodes) = r.nodes {
                        restrict = Some(match restrict {
                            None => nodes,
                            Some(prev) => prev.into_iter().filter(|n| nodes.contains(n)).collect(),
                        });
                    }
                }
                Err(s) => {
                    diag.note(s.plugin);
                    if s.code == Code::Unschedulable {
                        diag.resolvable = cache.nodes().to_vec();
                    }
                    diag.pre_filter = Some(s);
                    return Selection::None(diag);
                }
            }
        }
        let checks: Vec<(&'static str, Box<dyn NodeFilter + '_>)> = self
            .filter
            .iter()
            .filter_map(|f| f.prepare(cx, state).map(|c| (f.name(), c)))
            .collect();
        let scorers: Vec<(usize, Scope)> = self
            .score
            .iter()
            .enumerate()
            .filter_map(|(i, (s, _))| s.scope(cx, state).map(|sc| (i, sc)))
            .collect();
        let cap = cache.capacity() as u32;
        let order = |n: NodeId| (n + cap - cursor % cap.max(1)) % cap.max(1);

        // ---- Filter.
        let mut exceptions: Vec<NodeId> = Vec::new();
        let class_path = restrict.is_none()
            && !self.full_evaluation
            && checks
                .iter()
                .map(|(_, c)| c.scope())
                .chain(scorers.iter().map(|(_, s)| s.clone()))
                .all(|s| match s {
                    Scope::Class => true,
                    Scope::ClassExcept(list) => {
                        exceptions.extend(list);
                        true
                    }
                    Scope::Node => false,
                });
        // A candidate: a node to score, standing for `weight` nodes; `pick` is the node chosen
        // if it wins (the tie-break member of its class).
        struct Cand {
            rep: NodeId,
            pick: NodeId,
            size: u32,
        }
        let run_checks = |n: NodeId| -> Result<(), (&'static str, Reject)> {
            for (name, c) in &checks {
                c.filter(n).map_err(|r| (*name, r))?;
            }
            Ok(())
        };
        let mut cands: Vec<Cand> = Vec::new();
        let record = |diag: &mut Diagnosis, name: &'static str, r: Reject, nodes: &[NodeId]| {
            diag.note(name);
            for reason in r.reasons {
                *diag.reasons.entry(reason).or_default() += nodes.len();
            }
            if !r.unresolvable {
                diag.resolvable.extend_from_slice(nodes);
            }
        };
        if class_path {
            exceptions.sort_unstable();
            exceptions.dedup();
            for &n in &exceptions {
                match run_checks(n) {
                    Ok(()) => cands.push(Cand {
                        rep: n,
                        pick: n,
                        size: 1,
                    }),
                    Err((name, r)) => record(&mut diag, name, r, &[n]),
                }
            }
            let is_exc = |n: &NodeId| exceptions.binary_search(n).is_ok();
            let mut exc_per_class: FxHashMap<u32, usize> = FxHashMap::default();
            let mut resolvable_classes: Vec<u32> = Vec::new();
            for &n in &exceptions {
                *exc_per_class.entry(cache.class_of(n)).or_default() += 1;
            }
            for (cid, class) in cache.classes() {
                let members = class.members();
                let Some(rep) = members.iter().copied().find(|n| !is_exc(n)) else {
                    continue;
                };
                match run_checks(rep) {
                    Ok(()) => {
                        let c = cursor % cap.max(1);
                        let pick = members
                            .range(c..)
                            .chain(members.range(..c))
                            .copied()
                            .find(|n| !is_exc(n))
                            .unwrap_or(rep);
                        let size = members.len() - exc_per_class.get(&cid).copied().unwrap_or(0);
                        cands.push(Cand {
                            rep,
                            pick,
                            size: size as u32,
                        });
                    }
                    Err((name, r)) => {
                        // Count now; list the nodes only if preemption will need them.
                        let size = members.len() - exc_per_class.get(&cid).copied().unwrap_or(0);
                        diag.note(name);
                        for reason in r.reasons {
                            *diag.reasons.entry(reason).or_default() += size;
                        }
                        if !r.unresolvable {
                            resolvable_classes.push(cid);
                        }
                    }
                }
            }
            if cands.is_empty() {
                for cid in resolvable_classes {
                    let members = cache.class(cid).members();
                    diag.resolvable
                        .extend(members.iter().copied().filter(|n| !is_exc(n)));
                }
            }
        } else {
            let nodes: &[NodeId] = restrict.as_deref().unwrap_or(cache.nodes());
            if let Some(r) = &restrict {
                let excluded = cache.node_count().saturating_sub(r.len());
                if excluded > 0 {
                    *diag
                        .reasons
                        .entry(Cow::Borrowed(
                            "node(s) didn't satisfy plugin(s) [NodeAffinity]",
                        ))
                        .or_default() += excluded;
                }
            }
            if scorers.is_empty() && !self.full_evaluation {
                // No score applies: the first feasible node in tie-break order is the answer
                // full evaluation gives, so stop there.
                let mut sorted: Vec<NodeId> = nodes.to_vec();
                sorted.sort_unstable_by_key(|&n| order(n));
                for n in sorted {
                    match run_checks(n) {
                        Ok(()) => {
                            return Selection::Node {
                                node: n,
                                score: 0,
                                feasible: 1,
                                top: TopScores::one(n, 0),
                            };
                        }
                        Err((name, r)) => record(&mut diag, name, r, &[n]),
                    }
                }
                return Selection::None(diag);
            }
            type Chunk = (Vec<NodeId>, Vec<(&'static str, Reject, NodeId)>);
            let eval = |chunk: &[NodeId]| -> Chunk {
                let mut ok = Vec::new();
                let mut bad = Vec::new();
                for &n in chunk {
                    match run_checks(n) {
                        Ok(()) => ok.push(n),
                        Err((name, r)) => bad.push((name, r, n)),
                    }
                }
                (ok, bad)
            };
            let parts: Vec<Chunk> = if nodes.len() >= self.parallel_threshold {
                nodes.par_chunks(256).map(eval).collect()
            } else {
                vec![eval(nodes)]
            };
            for (ok, bad) in parts {
                cands.extend(ok.into_iter().map(|n| Cand {
                    rep: n,
                    pick: n,
                    size: 1,
                }));
                for (name, r, n) in bad {
                    record(&mut diag, name, r, &[n]);
                }
            }
        }
        drop(checks);
        if cands.is_empty() {
            return Selection::None(diag);
        }
        let feasible = cands.len();
        if cands.len() == 1 || scorers.is_empty() {
            let best = cands
                .iter()
                .min_by_key(|c| order(c.pick))
                .expect("non-empty");
            return Selection::Node {
                node: best.pick,
                score: 0,
                feasible,
                top: TopScores::one(best.pick, 0),
            };
        }

        // ---- Score.
        let reps: Vec<NodeId> = cands.iter().map(|c| c.rep).collect();
        state.insert(Feasible {
            total: cands.iter().map(|c| c.size as usize).sum(),
            sizes: cands.iter().map(|c| c.size).collect(),
        });
        for p in &self.pre_score {
            if let Err(s) = p.pre_score(cx, state, &reps) {
                diag.pre_filter = Some(s);
                return Selection::None(diag);
            }
        }
        let state: &CycleState = state;
        let mut total = vec![0i64; reps.len()];
        for (i, _) in &scorers {
            let (plugin, weight) = &self.score[*i];
            let scorer = plugin.prepare(cx, state);
            let mut scores: Vec<i64> = if reps.len() >= self.parallel_threshold {
                reps.par_iter().map(|&n| scorer.score(n)).collect()
            } else {
                reps.iter().map(|&n| scorer.score(n)).collect()
            };
            scorer.normalize(&mut scores);
            for (t, s) in total.iter_mut().zip(scores) {
                *t += s * weight;
            }
        }
        let before = |a: &(NodeId, i64), b: &(NodeId, i64)| {
            a.1 > b.1 || (a.1 == b.1 && order(a.0) < order(b.0))
        };
        let mut top = TopScores::default();
        for (c, s) in cands.iter().zip(&total) {
            top.offer((c.pick, *s), before);
        }
        let (best, score) = top.as_slice()[0];
        Selection::Node {
            node: best,
            score,
            feasible,
            top,
        }
    }
}
