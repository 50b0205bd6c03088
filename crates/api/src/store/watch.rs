//! The watch stream: a bounded queue of [`WatchEvent`]s between a backend ([`WatchSender`]) and a
//! caller ([`Watch`]). A sender never blocks: a watcher whose queue is full is ended with
//! [`Error::Lagged`], so one slow reader cannot stall the store or other watchers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{Error, Result, WatchEvent};

/// Events a watcher may have queued before it counts as lagging.
pub(super) const DEFAULT_CAPACITY: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<WatchEvent>,
    /// Set once the stream ends: `Some(Err)` to deliver before the end, `Some(Ok)` for a plain end.
    end: Option<Result<()>>,
    receiver_gone: bool,
    last_revision: u64,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    notify: Notify,
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
    pub fn channel(capacity: usize) -> (WatchSender, Watch) {
        let shared = Arc::new(Shared::default());
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

    /// The next event; see the type's documentation.
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        if self.done {
            return None;
        }
        loop {
            {
                let mut queue = self.shared.lock();
                if let Some(event) = queue.events.pop_front() {
                    return Some(Ok(event));
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

    /// Every event already queued, without waiting (empty when none is).
    pub fn try_drain(&mut self) -> Vec<WatchEvent> {
        self.shared.lock().events.drain(..).collect()
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
            queue.events.push_back(event);
        }
        let added = queue.events.len() > before;
        drop(queue);
        if added {
            self.shared.notify.notify_one();
        }
        true
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
