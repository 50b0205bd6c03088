//! Watch fan-out: every watch has its own stream from the store, but a stored event is decoded,
//! stamped and serialised once and then shared by every watcher that receives it (the job of
//! kube-apiserver's cacher). Delivering one change to 1,000 watchers then costs one JSON parse
//! and at most one serialisation per event type (`ADDED`, `MODIFIED`, `DELETED`), not 1,000
//! of each; each watcher only matches its selectors and queues a shared buffer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde_json::Value;

use crate::kinds::Kind;
use crate::storage::Event;

/// Revisions whose decoded events are kept for watchers that have not reached them yet.
const KEPT_REVISIONS: usize = 4096;

/// The watch event types a decoded event is serialised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added = 0,
    Modified = 1,
    Deleted = 2,
}

impl EventType {
    fn name(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One stored event as the API shows it, shared by the watchers that receive it.
pub(crate) struct Decoded {
    /// The object, stamped with apiVersion, kind and resourceVersion (None: not JSON).
    pub(crate) object: Option<Value>,
    prev_raw: Option<Vec<u8>>,
    prev: OnceLock<Option<Value>>,
    lines: [OnceLock<Bytes>; 3],
}

impl Decoded {
    /// The previous value, parsed on first use (None: there was none, or not JSON).
    pub(crate) fn prev(&self) -> Option<&Value> {
        self.prev
            .get_or_init(|| {
                self.prev_raw
                    .as_deref()
                    .and_then(|p| serde_json::from_slice(p).ok())
            })
            .as_ref()
    }

    /// The watch line `{"type":...,"object":...}\n`, serialised on first use.
    pub(crate) fn line(&self, ty: EventType) -> Bytes {
        self.lines[ty as usize]
            .get_or_init(|| {
                let object = self.object.as_ref().unwrap_or(&Value::Null);
                line(ty.name(), object)
            })
            .clone()
    }
}

/// `{"type":TY,"object":OBJECT}` and a newline, without copying the object into a new value.
pub(crate) fn line(ty: &str, object: &Value) -> Bytes {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(b"{\"type\":\"");
    v.extend_from_slice(ty.as_bytes());
    v.extend_from_slice(b"\",\"object\":");
    serde_json::to_writer(&mut v, object).expect("JSON values serialize");
    v.extend_from_slice(b"}\n");
    Bytes::from(v)
}

/// One decoded event of a revision: (key, group, version, decoded).
type Entry = (String, &'static str, &'static str, Arc<Decoded>);

#[derive(Default)]
struct Entries {
    /// revision -> (key, group, version, decoded): a revision usually changes one key (a lease
    /// expiry deletes several at one revision); CRD versions share keys but not apiVersions.
    by_revision: HashMap<u64, Vec<Entry>>,
    order: VecDeque<u64>,
}

/// Decoded events by revision, bounded to the newest [`KEPT_REVISIONS`].
#[derive(Default)]
pub(crate) struct EventCache {
    entries: Mutex<Entries>,
}

impl EventCache {
    /// The shared decoding of `event` (under `key`) as `kind` shows it; `stamp` sets
    /// apiVersion, kind and resourceVersion on a freshly parsed object.
    pub(crate) fn decode(
        &self,
        kind: &Kind,
        key: &str,
        event: &Event,
        stamp: impl FnOnce(&mut Value),
    ) -> Arc<Decoded> {
        let find = |entries: &Entries| {
            entries.by_revision.get(&event.revision).and_then(|list| {
                list.iter()
                    .find(|(k, g, v, _)| k == key && *g == kind.group && *v == kind.version)
                    .map(|(_, _, _, d)| d.clone())
            })
        };
        if let Some(d) = find(&self.lock()) {
            return d;
        }
        // Parse outside the lock; if another watcher got there first, use its copy.
        let object = serde_json::from_slice::<Value>(&event.value)
            .ok()
            .map(|mut o| {
                stamp(&mut o);
                o
            });
        let decoded = Arc::new(Decoded {
            object,
            prev_raw: event.prev.clone(),
            prev: OnceLock::new(),
            lines: Default::default(),
        });
        let mut entries = self.lock();
        if let Some(d) = find(&entries) {
            return d;
        }
        if !entries.by_revision.contains_key(&event.revision) {
            entries.order.push_back(event.revision);
            while entries.order.len() > KEPT_REVISIONS {
                if let Some(old) = entries.order.pop_front() {
                    entries.by_revision.remove(&old);
                }
            }
        }
        entries
            .by_revision
            .entry(event.revision)
            .or_default()
            .push((key.to_owned(), kind.group, kind.version, decoded.clone()));
        decoded
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}
