//! The watch stream: a bounded queue of [`WatchEvent`]s between a backend ([`WatchSender`]) and a
//! caller ([`Watch`]). A sender never blocks: a watcher whose queue is full is ended with
//! [`Error::Lagged`], so one slow reader cannot stall the store or other watchers.
//!
//! Besides events a stream carries **progress notifications** ([`WatchItem::Progress`], etcd's
//! progress notify): "every change up to this revision has been delivered", which the API
//! server turns into bookmarks. A caller asks for one with [`Watch::request_progress`];
//! [`Watch::next`] skips them, [`Watch::next_item`] returns them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{Error, Result, WatchEvent};

/// Events a watcher may have queued before it counts as lagging.
pub(super) const DEFAULT_CAPACITY: usize = 64 * 1024;

/// What a [`Watch`] yields through [`Watch::next_item`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchItem {
    /// A change.
    Event(WatchEvent),
    /// Every change under the watched prefix up to `revision` has been delivered before this
    /// item; nothing later than `revision` has (a Kubernetes bookmark). `revision` never goes
    /// below the revision of an event already delivered.
    Progress {
        /// The revision the watcher is complete up to.
        revision: u64,
    },
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<WatchItem>,
    /// Set once the stream ends: `Some(Err)` to deliver before the end, `Some(Ok)` for a plain end.
    end: Option<Result<()>>,
    receiver_gone: bool,
    last_revision: u64,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    notify: Notify,
    /// For in-process backends: the revision up to which the store has published every change
    /// (see [`Watch::channel_with_progress`]). Without it, progress requests go to the backend.
    progress: Option<Arc<AtomicU64>>,
    /// The watch's start revision (a progress item never says less).
    after: u64,
    /// Wakes a backend that answers progress requests itself.
    requested: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A stream of [`WatchEvent`]s in revision order.
///
/// [`next`](Watch::next) yields `Some(Ok(event))` per change, `Some(Err(e))` once if the watch
/// failed ([`Error::Lagged`], [`Error::Compacted`], a backend error), then `None`. Dropping it
/// cancels the watch.
#[derive(Debug)]
pub struct Watch {
    shared: Arc<Shared>,
    done: bool,
}

/// The backend's end of a [`Watch`].
#[derive(Debug)]
pub struct WatchSender {
    shared: Arc<Shared>,
    capacity: usize,
}

impl Watch {
    /// A connected sender and stream; the stream lags once `capacity` events wait unread.
    /// Progress requests reach the backend through [`WatchSender::progress_requested`].
    pub fn channel(capacity: usize) -> (WatchSender, Watch) {
        Self::make(capacity, None, 0)
    }

    /// Like [`channel`](Watch::channel) for a backend that publishes every change to its
    /// watchers in revision order and then raises `published` to that revision: progress
    /// requests are answered at once from it (never below `after`, the watch's start).
    pub fn channel_with_progress(
        capacity: usize,
        published: Arc<AtomicU64>,
        after: u64,
    ) -> (WatchSender, Watch) {
        Self::make(capacity, Some(published), after)
    }

    fn make(capacity: usize, progress: Option<Arc<AtomicU64>>, after: u64) -> (WatchSender, Watch) {
        let shared = Arc::new(Shared {
            progress,
            after,
            ..Shared::default()
        });
        (
            WatchSender {
                shared: shared.clone(),
                capacity: capacity.max(1),
            },
            Watch {
                shared,
                done: false,
            },
        )
    }

    /// The next event (progress notifications are skipped); see the type's documentation.
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        loop {
            match self.next_item().await? {
                Ok(WatchItem::Event(event)) => return Some(Ok(event)),
                Ok(WatchItem::Progress { .. }) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Asks for a [`WatchItem::Progress`] after the events already delivered. In-process
    /// backends answer at once; etcd answers when its watcher has caught up (a request made
    /// while it is still replaying history may go unanswered: ask again later). Does nothing
    /// on an ended watch.
    pub fn request_progress(&self) {
        match &self.shared.progress {
            Some(published) => {
                let mut queue = self.shared.lock();
                if queue.receiver_gone || queue.end.is_some() {
                    return;
                }
                let revision = published
                    .load(Ordering::Acquire)
                    .max(queue.last_revision)
                    .max(self.shared.after);
                queue.events.push_back(WatchItem::Progress { revision });
                drop(queue);
                self.shared.notify.notify_one();
            }
            None => self.shared.requested.notify_one(),
        }
    }

    /// The next event or progress notification; see the type's documentation.
    pub async fn next_item(&mut self) -> Option<Result<WatchItem>> {
        if self.done {
            return None;
        }
        loop {
            {
                let mut queue = self.shared.lock();
                if let Some(item) = queue.events.pop_front() {
                    return Some(Ok(item));
                }
                match queue.end.take() {
                    Some(Err(e)) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                    Some(Ok(())) => {
                        self.done = true;
                        return None;
                    }
                    None => {}
                }
            }
            self.shared.notify.notified().await;
        }
    }

    /// Every event already queued, without waiting (empty when none is; progress
    /// notifications are dropped).
    pub fn try_drain(&mut self) -> Vec<WatchEvent> {
        self.shared
            .lock()
            .events
            .drain(..)
            .filter_map(|item| match item {
                WatchItem::Event(event) => Some(event),
                WatchItem::Progress { .. } => None,
            })
            .collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.lock().receiver_gone = true;
    }
}

impl WatchSender {
    /// Queues events; returns `false` when the watch is over (the receiver went away or lagged),
    /// after which the backend drops this sender.
    pub fn send(&self, events: impl IntoIterator<Item = WatchEvent>) -> bool {
        let mut queue = self.shared.lock();
        if queue.receiver_gone || queue.end.is_some() {
            return false;
        }
        let before = queue.events.len();
        for event in events {
            if queue.events.len() >= self.capacity {
                queue.events.clear();
                queue.end = Some(Err(Error::Lagged {
                    revision: queue.last_revision,
                }));
                drop(queue);
                self.shared.notify.notify_one();
                return false;
            }
            queue.last_revision = event.revision();
            queue.events.push_back(WatchItem::Event(event));
        }
        let added = queue.events.len() > before;
        drop(queue);
        if added {
            self.shared.notify.notify_one();
        }
        true
    }

    /// Queues a progress notification (a backend that answers progress requests itself):
    /// every change up to `revision` was sent before it. Returns `false` when the watch is
    /// over. A revision below an event already sent is raised to it.
    pub fn send_progress(&self, revision: u64) -> bool {
        let mut queue = self.shared.lock();
        if queue.receiver_gone || queue.end.is_some() {
            return false;
        }
        let revision = revision.max(queue.last_revision).max(self.shared.after);
        queue.events.push_back(WatchItem::Progress { revision });
        drop(queue);
        self.shared.notify.notify_one();
        true
    }

    /// Resolves when the caller asked for progress ([`Watch::request_progress`]) on a stream
    /// made with [`Watch::channel`].
    pub async fn progress_requested(&self) {
        self.shared.requested.notified().await;
    }

    /// Ends the watch with `error` (delivered after the events already queued).
    pub fn fail(self, error: Error) {
        let mut queue = self.shared.lock();
        if queue.end.is_none() {
            queue.end = Some(Err(error));
        }
        drop(queue);
        self.shared.notify.notify_one();
    }

    /// Whether the receiver is gone (the backend may stop producing for it).
    pub fn is_closed(&self) -> bool {
        let queue = self.shared.lock();
        queue.receiver_gone || queue.end.is_some()
    }
}

impl Drop for WatchSender {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        if queue.end.is_none() {
            queue.end = Some(Ok(()));
        }
        drop(queue);
        self.shared.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventKind, KeyValue};

    fn event(revision: u64) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Put,
            kv: KeyValue {
                key: "/k".into(),
                mod_revision: revision,
                ..KeyValue::default()
            },
            prev: None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_ends_the_watch_with_lagged() {
        let (tx, mut rx) = Watch::channel(2);
        assert!(tx.send([event(1), event(2)]));
        assert!(!tx.send([event(3)]), "the third event overflows");
        match rx.next().await {
            Some(Err(Error::Lagged { revision: 2 })) => {}
            other => panic!("{other:?}"),
        }
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn events_then_end_when_the_sender_goes() {
        let (tx, mut rx) = Watch::channel(8);
        assert!(tx.send([event(1)]));
        drop(tx);
        assert_eq!(rx.next().await.unwrap().unwrap().revision(), 1);
        assert!(rx.next().await.is_none());
        let (tx, rx) = Watch::channel(8);
        drop(rx);
        assert!(!tx.send([event(1)]), "no receiver");
    }
}
