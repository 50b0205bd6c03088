//! Events recorded for what controllers do (`SuccessfulCreate`, `ScalingReplicaSet`, ...), as
//! core/v1 Events so `kubectl describe` and `kubectl get events` show them.
//!
//! kube-runtime's `events::Recorder` writes `events.k8s.io/v1` Events; this recorder keeps its
//! shape (a [`Reporter`](kube::runtime::events::Reporter)-like component name, a reference, a
//! type, a reason and a note) but writes the core/v1 kind every Kubernetes client reads, and, as
//! client-go's broadcaster does, never blocks a reconcile: events go through a bounded queue to
//! one background task (dropped, with a debug log, when the queue is full), and a repeat of the
//! same event on the same object bumps `count` instead of creating another object.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

/// How many unsent events may wait before new ones are dropped.
const QUEUE: usize = 1024;
/// How many distinct (object, reason, note) keys are remembered for aggregation.
const REMEMBERED: usize = 4096;

/// Whether an event is routine or a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Routine.
    Normal,
    /// Something went wrong.
    Warning,
}

#[derive(Debug)]
struct Queued {
    reference: ObjectReference,
    type_: EventType,
    reason: String,
    note: String,
}

/// Records Events on behalf of one component. Cloning shares the queue.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Queued>>,
}

impl Recorder {
    /// A recorder writing through `client` as `component` (e.g. `replicaset-controller`).
    /// Spawns the writer task: call inside a Tokio runtime.
    pub fn new(client: Client, component: &str) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(client, component.to_owned(), rx));
        Recorder { tx: Some(tx) }
    }

    /// A recorder that drops everything (tests, benchmarks).
    pub fn disabled() -> Self {
        Recorder { tx: None }
    }

    /// Reports a burst of pod creations as the Kubernetes controllers do: `SuccessfulCreate`
    /// for the pods made, `FailedCreate` and an error for the first failure (`created` is what
    /// the slow-start bursts return).
    pub fn pods_created<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        key: &str,
        created: (usize, Option<kube::Error>),
    ) -> crate::Result<()> {
        if created.0 > 0 {
            self.publish(
                obj,
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created {} pod(s)", created.0),
            );
        }
        if let Some(e) = created.1 {
            self.publish(
                obj,
                EventType::Warning,
                "FailedCreate",
                format!("Error creating: {e}"),
            );
            return Err(crate::Error::api(format!("create pods for {key}"))(e));
        }
        Ok(())
    }

    /// Records `reason`/`note` about `obj`.
    pub fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: impl Into<String>,
    ) {
        let Some(tx) = &self.tx else { return };
        let reference = obj.object_ref(&());
        let ev = Queued {
            reference,
            type_,
            reason: reason.to_owned(),
            note: note.into(),
        };
        if tx.try_send(ev).is_err() {
            tracing::debug!(reason, "event queue full: event dropped");
        }
    }
}

async fn writer(client: Client, component: String, mut rx: mpsc::Receiver<Queued>) {
    // (namespace, uid, reason, note) -> (event name, count)
    let mut seen: HashMap<(String, String, String, String), (String, i32)> = HashMap::new();
    while let Some(ev) = rx.recv().await {
        let ns = ev
            .reference
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        let key = (
            ns.clone(),
            ev.reference.uid.clone().unwrap_or_default(),
            ev.reason.clone(),
            ev.note.clone(),
        );
        let now = Timestamp::now();
        if let Some((name, count)) = seen.get_mut(&key) {
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": Time(now)});
            if api
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .is_ok()
            {
                continue;
            }
        }
        let obj_name = ev.reference.name.clone().unwrap_or_default();
        let name = format!("{obj_name}.{:x}", now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns),
                ..Default::default()
            },
            involved_object: ev.reference,
            reason: Some(ev.reason),
            message: Some(ev.note),
            type_: Some(match ev.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            source: Some(EventSource {
                component: Some(component.clone()),
                host: None,
            }),
            reporting_component: Some(component.clone()),
            reporting_instance: Some(component.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            count: Some(1),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => {
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
                seen.insert(key, (created.name_any(), 1));
            }
            Err(e) => tracing::debug!(error = %e, "cannot record event"),
        }
    }
}
