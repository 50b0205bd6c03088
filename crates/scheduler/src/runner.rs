//! The scheduler against an API server (feature `runner`, on by default): kube-rs watchers feed
//! a [`Scheduler`] (pods, nodes, namespaces and, where the server serves them,
//! PodDisruptionBudgets), and a binder posts `pods/binding`, deletes preemption victims, sets
//! `status.nominatedNodeName`, and writes the PodScheduled condition and an Event for pods that
//! fit nowhere, as kube-scheduler does.
//!
//! The decisions stay in the I/O-free core: one task owns the [`Scheduler`], applies watch
//! events, runs scheduling cycles, and hands the resulting API calls to concurrent tasks. A
//! bound pod stays *assumed* in the cache until the pod watch shows its `spec.nodeName`; a
//! binding that fails is undone and the pod retried, and one that never shows up is forgotten
//! after [`RunnerOptions::assume_ttl`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use berth_scheduler::runner::SchedulerRunner;
//!
//! let client = berth_scheduler::kube::Client::try_default().await?;
//! let runner = SchedulerRunner::new(client, &berth_scheduler::Config::default())?;
//! runner.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, EventSource, Namespace, Node, ObjectReference, Pod, PodCondition,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::framework::{BindError, Binder, Binding};
use crate::plugins::Registry;
use crate::pod::PodInfo;
use crate::scheduler::Scheduler;

/// How the runner behaves around the scheduler.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// How long a bound pod may stay unconfirmed (its binding not yet seen by the pod watch)
    /// before the scheduler forgets the placement and tries the pod again.
    pub assume_ttl: Duration,
    /// The scheduler's clock tick: how often backoffs and Permit timeouts are looked at when no
    /// event arrives.
    pub tick: Duration,
    /// API calls (bindings, evictions, status patches, events) in flight at once.
    pub max_in_flight: usize,
    /// Write an Event for each binding (`Scheduled`) and unschedulable verdict
    /// (`FailedScheduling`), as kube-scheduler does.
    pub events: bool,
    /// The `source.component` / `reportingComponent` of those events.
    pub component: String,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            assume_ttl: Duration::from_secs(30),
            tick: Duration::from_millis(100),
            max_in_flight: 64,
            events: true,
            component: "default-scheduler".into(),
        }
    }
}

/// See the module documentation.
pub struct SchedulerRunner {
    client: Client,
    scheduler: Scheduler,
    options: RunnerOptions,
}

impl std::fmt::Debug for SchedulerRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerRunner")
            .field("scheduler", &self.scheduler)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SchedulerRunner {
    /// A runner with the profiles of `config` (built from the default plugin registry).
    pub fn new(client: Client, config: &Config) -> Result<Self> {
        let scheduler = Scheduler::from_config(config, &Registry::default())?;
        Ok(Self::with_scheduler(
            client,
            scheduler,
            RunnerOptions::default(),
        ))
    }

    /// A runner around a scheduler built by the caller (own plugins, own registry).
    pub fn with_scheduler(
        client: Client,
        mut scheduler: Scheduler,
        options: RunnerOptions,
    ) -> Self {
        scheduler.set_assume_ttl(Some(options.assume_ttl));
        SchedulerRunner {
            client,
            scheduler,
            options,
        }
    }

    /// Changes the options.
    pub fn options(mut self, options: RunnerOptions) -> Self {
        self.scheduler.set_assume_ttl(Some(options.assume_ttl));
        self.options = options;
        self
    }

    /// Watches, schedules and binds until `shutdown` completes (then waits for the API calls
    /// in flight). Watch errors are retried with backoff, as kube-rs's watchers do; the
    /// scheduler starts deciding once every watcher has listed its objects once.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let SchedulerRunner {
            client,
            mut scheduler,
            options,
        } = self;
        let mut inputs: SelectAll<BoxStream<'static, Input>> = SelectAll::new();
        inputs.push(watch::<Pod>(Api::all(client.clone()), Input::Pod));
        inputs.push(watch::<Node>(Api::all(client.clone()), Input::Node));
        inputs.push(watch::<Namespace>(
            Api::all(client.clone()),
            Input::Namespace,
        ));
        let mut watchers = 3;
        let pdbs: Api<PodDisruptionBudget> = Api::all(client.clone());
        match pdbs.list(&ListParams::default().limit(1)).await {
            Ok(_) => {
                inputs.push(watch(pdbs, Input::Pdb));
                watchers += 1;
            }
            Err(e) => tracing::info!(
                error = %e,
                "PodDisruptionBudgets cannot be listed: preemption goes without them"
            ),
        }

        let mut state = State {
            client,
            options,
            start: Instant::now(),
            known: Default::default(),
            synced: HashSet::new(),
            watchers,
            reported: HashMap::new(),
            tasks: JoinSet::new(),
            permits: Arc::new(Semaphore::new(1)),
            feedback: mpsc::unbounded_channel(),
        };
        state.permits = Arc::new(Semaphore::new(state.options.max_in_flight.max(1)));
        let mut tick = tokio::time::interval(state.options.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = shutdown.fuse();
        futures::pin_mut!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                input = inputs.next() => match input {
                    Some(input) => state.apply(&mut scheduler, input),
                    None => break,
                },
                Some(fb) = state.feedback.1.recv() => state.on_feedback(&mut scheduler, fb),
                Some(_) = state.tasks.join_next(), if !state.tasks.is_empty() => {}
                _ = tick.tick() => {}
            }
            // Take in whatever else is ready before deciding, so a burst of events costs one
            // round of scheduling (bounded, so the clock keeps moving under a flood).
            for _ in 0..4096 {
                match inputs.next().now_or_never() {
                    Some(Some(input)) => state.apply(&mut scheduler, input),
                    _ => break,
                }
            }
            while let Ok(fb) = state.feedback.1.try_recv() {
                state.on_feedback(&mut scheduler, fb);
            }
            while let Some(Some(_)) = state.tasks.join_next().now_or_never() {}
            if state.synced.len() < state.watchers {
                continue;
            }
            let mut out = Collect::default();
            scheduler.advance(state.start.elapsed(), &mut out);
            scheduler.run(&mut out);
            for action in out.0 {
                state.dispatch(action);
            }
        }
        while state.tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// One watch event, by kind.
enum Input {
    Pod(Box<Event<Pod>>),
    Node(Box<Event<Node>>),
    Namespace(Box<Event<Namespace>>),
    Pdb(Box<Event<PodDisruptionBudget>>),
}

/// A kube-rs watcher with kube's default backoff; errors are logged (the watcher retries).
fn watch<K>(api: Api<K>, wrap: fn(Box<Event<K>>) -> Input) -> BoxStream<'static, Input>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |r| {
            futures::future::ready(match r {
                Ok(e) => Some(wrap(Box::new(e))),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying");
                    None
                }
            })
        })
        .boxed()
}

/// What an API call reports back to the scheduling loop.
enum Feedback {
    /// The binding was refused (or the pod is gone): undo the placement.
    BindFailed { namespace: String, name: String },
}

/// An API call to make.
enum Action {
    Bind(Binding),
    Evict {
        namespace: String,
        name: String,
        uid: Option<String>,
        preemptor: String,
    },
    Nominate {
        namespace: String,
        name: String,
        node: Option<String>,
    },
    Unschedulable(Box<(ObjectReference, PodCondition)>),
}

/// The binder the scheduling loop hands to the core: it only records what to do.
#[derive(Default)]
struct Collect(Vec<Action>);

impl Binder for Collect {
    fn bind(&mut self, binding: &Binding) -> std::result::Result<(), BindError> {
        self.0.push(Action::Bind(binding.clone()));
        Ok(())
    }

    fn evict(
        &mut self,
        victim: &PodInfo,
        preemptor: &PodInfo,
    ) -> std::result::Result<(), BindError> {
        let meta = &victim.pod.metadata;
        self.0.push(Action::Evict {
            namespace: victim.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            preemptor: preemptor.key.to_string(),
        });
        Ok(())
    }

    fn nominate(&mut self, pod: &PodInfo, node: Option<&str>) {
        self.0.push(Action::Nominate {
            namespace: pod.namespace.clone(),
            name: pod.pod.metadata.name.clone().unwrap_or_default(),
            node: node.map(str::to_owned),
        });
    }

    fn unschedulable(&mut self, pod: &PodInfo, condition: &PodCondition) {
        let meta = &pod.pod.metadata;
        self.0.push(Action::Unschedulable(Box::new((
            ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(pod.namespace.clone()),
                name: meta.name.clone(),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                ..Default::default()
            },
            condition.clone(),
        ))));
    }
}

/// Keys listed before, to turn a relist into deletions of what is gone.
#[derive(Default)]
struct Relist {
    known: HashSet<String>,
    seen: Option<HashSet<String>>,
}

impl Relist {
    /// Records an event; returns the keys that a finished relist shows deleted.
    fn note<K: ResourceExt>(&mut self, event: &Event<K>) -> Vec<String> {
        let key = |o: &K| o.key();
        match event {
            Event::Init => {
                self.seen = Some(HashSet::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                let k = key(o);
                self.seen.get_or_insert_with(HashSet::new).insert(k.clone());
                self.known.insert(k);
                Vec::new()
            }
            Event::Apply(o) => {
                self.known.insert(key(o));
                Vec::new()
            }
            Event::Delete(o) => {
                self.known.remove(&key(o));
                Vec::new()
            }
            Event::InitDone => {
                let seen = self.seen.take().unwrap_or_default();
                let gone: Vec<String> = self.known.difference(&seen).cloned().collect();
                self.known = seen;
                gone
            }
        }
    }
}

trait Keyed {
    fn key(&self) -> String;
}

impl<K: ResourceExt> Keyed for K {
    fn key(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{ns}/{}", self.name_any()),
            None => self.name_any(),
        }
    }
}

/// The scheduling loop's state beside the scheduler.
struct State {
    client: Client,
    options: RunnerOptions,
    start: Instant,
    known: [Relist; 4],
    synced: HashSet<usize>,
    watchers: usize,
    /// The last unschedulable message written per pod (kube's recorder does not repeat itself).
    reported: HashMap<String, String>,
    tasks: JoinSet<()>,
    permits: Arc<Semaphore>,
    feedback: (
        mpsc::UnboundedSender<Feedback>,
        mpsc::UnboundedReceiver<Feedback>,
    ),
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

impl State {
    fn apply(&mut self, s: &mut Scheduler, input: Input) {
        match input {
            Input::Pod(e) => {
                let e = *e;
                for gone in self.known[0].note(&e) {
                    let (ns, name) = split(&gone);
                    s.delete_pod(ns, name);
                    self.reported.remove(&gone);
                }
                match e {
                    Event::Apply(p) | Event::InitApply(p) => {
                        let key = p.key();
                        if p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
                            self.reported.remove(&key);
                        }
                        if let Err(err) = s.add_pod(p) {
                            tracing::warn!(pod = %key, error = %err, "pod ignored");
                        }
                    }
                    Event::Delete(p) => {
                        let key = p.key();
                        let (ns, name) = split(&key);
                        s.delete_pod(ns, name);
                        self.reported.remove(&key);
                    }
                    Event::InitDone => {
                        self.synced.insert(0);
                    }
                    Event::Init => {}
                }
            }
            Input::Node(e) => {
                let e = *e;
                for gone in self.known[1].note(&e) {
                    s.delete_node(&gone);
                }
                match e {
                    Event::Apply(n) | Event::InitApply(n) => {
                        let name = n.name_any();
                        if let Err(err) = s.add_node(n) {
                            tracing::warn!(node = %name, error = %err, "node ignored");
                        }
                    }
                    Event::Delete(n) => s.delete_node(&n.name_any()),
                    Event::InitDone => {
                        self.synced.insert(1);
                    }
                    Event::Init => {}
                }
            }
            Input::Namespace(e) => {
                let e = *e;
                for gone in self.known[2].note(&e) {
                    s.delete_namespace(&gone);
                }
                match e {
                    Event::Apply(n) | Event::InitApply(n) => s.set_namespace(&n),
                    Event::Delete(n) => s.delete_namespace(&n.name_any()),
                    Event::InitDone => {
                        self.synced.insert(2);
                    }
                    Event::Init => {}
                }
            }
            Input::Pdb(e) => {
                let e = *e;
                for gone in self.known[3].note(&e) {
                    let (ns, name) = split(&gone);
                    s.delete_pdb(ns, name);
                }
                match e {
                    Event::Apply(p) | Event::InitApply(p) => {
                        if let Err(err) = s.set_pdb(&p) {
                            tracing::warn!(pdb = %p.key(), error = %err, "PodDisruptionBudget ignored");
                        }
                    }
                    Event::Delete(p) => {
                        let key = p.key();
                        let (ns, name) = split(&key);
                        s.delete_pdb(ns, name);
                    }
                    Event::InitDone => {
                        self.synced.insert(3);
                    }
                    Event::Init => {}
                }
            }
        }
    }

    fn on_feedback(&mut self, s: &mut Scheduler, fb: Feedback) {
        match fb {
            Feedback::BindFailed { namespace, name } => s.binding_failed(&namespace, &name),
        }
    }

    fn dispatch(&mut self, action: Action) {
        let client = self.client.clone();
        let permits = self.permits.clone();
        let feedback = self.feedback.0.clone();
        let options = self.options.clone();
        match action {
            Action::Bind(b) => {
                self.reported.remove(&format!("{}/{}", b.namespace, b.name));
                self.tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    if let Err(e) = bind(&client, &b).await {
                        tracing::warn!(pod = %format!("{}/{}", b.namespace, b.name), node = %b.node, error = %e, "binding failed");
                        let _ = feedback.send(Feedback::BindFailed {
                            namespace: b.namespace.clone(),
                            name: b.name.clone(),
                        });
                        return;
                    }
                    if options.events {
                        let message = format!(
                            "Successfully assigned {}/{} to {}",
                            b.namespace, b.name, b.node
                        );
                        let pod = ObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Pod".into()),
                            namespace: Some(b.namespace.clone()),
                            name: Some(b.name.clone()),
                            uid: b.uid.clone(),
                            ..Default::default()
                        };
                        record(&client, &options, &pod, "Normal", "Scheduled", &message).await;
                    }
                });
            }
            Action::Evict {
                namespace,
                name,
                uid,
                preemptor,
            } => {
                self.tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                    let mut dp = DeleteParams::default();
                    if let Some(uid) = uid {
                        dp.preconditions = Some(kube::api::Preconditions {
                            uid: Some(uid),
                            resource_version: None,
                        });
                    }
                    match api.delete(&name, &dp).await {
                        Ok(_) => {
                            if options.events {
                                let pod = ObjectReference {
                                    api_version: Some("v1".into()),
                                    kind: Some("Pod".into()),
                                    namespace: Some(namespace.clone()),
                                    name: Some(name.clone()),
                                    ..Default::default()
                                };
                                let message = format!("Preempted by pod {preemptor}");
                                record(&client, &options, &pod, "Normal", "Preempted", &message)
                                    .await;
                            }
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => {
                            tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "evicting a preemption victim failed")
                        }
                    }
                });
            }
            Action::Nominate {
                namespace,
                name,
                node,
            } => {
                self.tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let api: Api<Pod> = Api::namespaced(client, &namespace);
                    let patch = json!({"status": {"nominatedNodeName": node}});
                    if let Err(e) = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        tracing::debug!(pod = %format!("{namespace}/{name}"), error = %e, "setting nominatedNodeName failed");
                    }
                });
            }
            Action::Unschedulable(unschedulable) => {
                let (pod, condition) = *unschedulable;
                let key = format!(
                    "{}/{}",
                    pod.namespace.as_deref().unwrap_or_default(),
                    pod.name.as_deref().unwrap_or_default()
                );
                let message = condition.message.clone().unwrap_or_default();
                if self.reported.get(&key) == Some(&message) {
                    return; // said already
                }
                self.reported.insert(key, message.clone());
                self.tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let ns = pod.namespace.clone().unwrap_or_default();
                    let name = pod.name.clone().unwrap_or_default();
                    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                    let mut condition = condition;
                    condition.last_transition_time = Some(Time(Timestamp::now()));
                    let patch = json!({"status": {"conditions": [condition]}});
                    match api
                        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => return,
                        Err(e) => {
                            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "writing the PodScheduled condition failed")
                        }
                    }
                    if options.events {
                        record(&client, &options, &pod, "Warning", "FailedScheduling", &message)
                            .await;
                    }
                });
            }
        }
    }
}

/// Posts `pods/binding`.
async fn bind(client: &Client, b: &Binding) -> kube::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &b.namespace);
    let body = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": b.name, "namespace": b.namespace, "uid": b.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": b.node},
    });
    let _: serde_json::Value = api
        .create_subresource("binding", &b.name, &PostParams::default(), &body)
        .await?;
    Ok(())
}

/// Creates a core/v1 Event about `pod` (what `kubectl describe pod` lists).
async fn record(
    client: &Client,
    options: &RunnerOptions,
    pod: &ObjectReference,
    type_: &str,
    reason: &str,
    message: &str,
) {
    let ns = pod.namespace.clone().unwrap_or_else(|| "default".into());
    let now = Timestamp::now();
    let event = CoreEvent {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{:x}",
                pod.name.as_deref().unwrap_or("pod"),
                now.as_nanosecond()
            )),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: pod.clone(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(type_.into()),
        source: Some(EventSource {
            component: Some(options.component.clone()),
            host: None,
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        action: Some(
            if reason == "Scheduled" {
                "Binding"
            } else {
                "Scheduling"
            }
            .into(),
        ),
        reporting_component: Some(options.component.clone()),
        reporting_instance: Some(options.component.clone()),
        ..Default::default()
    };
    let api: Api<CoreEvent> = Api::namespaced(client.clone(), &ns);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        tracing::debug!(error = %e, reason, "writing an event failed");
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Api(Box::new(e))
    }
}
