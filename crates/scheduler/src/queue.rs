//! The scheduling queue: an active heap ordered by the QueueSort plugin, a backoff queue
//! (exponential backoff per failed attempt) and an unschedulable pool whose pods return when
//! an event a rejecting plugin cares about happens (kube's `PriorityQueue`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;

pub use crate::framework::QueuedPod;
use crate::framework::{Events, QueueSortPlugin};
use crate::pod::PodInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    Active(u64),
    Backoff(Duration, u64),
    Unschedulable,
    InFlight,
}

/// How long pods back off and stay unschedulable.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Backoff after the first failure (kube: 1 s).
    pub initial_backoff: Duration,
    /// Longest backoff (kube: 10 s).
    pub max_backoff: Duration,
    /// Longest stay in the unschedulable pool without an event (kube: 5 min).
    pub max_unschedulable: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_unschedulable: Duration::from_secs(300),
        }
    }
}

/// See the module documentation.
pub struct SchedulingQueue {
    sort: Arc<dyn QueueSortPlugin>,
    config: QueueConfig,
    heap: Vec<(u64, QueuedPod)>,
    backoff: BTreeMap<(Duration, u64), QueuedPod>,
    unschedulable: BTreeMap<Arc<str>, (QueuedPod, Duration)>,
    pods: FxHashMap<Arc<str>, Where>,
    seq: u64,
    generation: u64,
    move_cycle: u64,
    cycle: u64,
    last_stale_scan: Duration,
}

impl std::fmt::Debug for SchedulingQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulingQueue")
            .field("active", &self.active_len())
            .field("backoff", &self.backoff.len())
            .field("unschedulable", &self.unschedulable.len())
            .finish()
    }
}

impl SchedulingQueue {
    /// An empty queue ordered by `sort`.
    pub fn new(sort: Arc<dyn QueueSortPlugin>, config: QueueConfig) -> Self {
        SchedulingQueue {
            sort,
            config,
            heap: Vec::new(),
            backoff: BTreeMap::new(),
            unschedulable: BTreeMap::new(),
            pods: FxHashMap::default(),
            seq: 0,
            generation: 0,
            move_cycle: 0,
            cycle: 0,
            last_stale_scan: Duration::ZERO,
        }
    }

    fn less(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.heap[a].1, &self.heap[b].1);
        if self.sort.less(x, y) {
            return true;
        }
        if self.sort.less(y, x) {
            return false;
        }
        x.seq < y.seq
    }

    fn push_heap(&mut self, mut qp: QueuedPod, now: Duration) {
        qp.timestamp = now;
        self.generation += 1;
        self.pods
            .insert(qp.info.key.clone(), Where::Active(self.generation));
        self.heap.push((self.generation, qp));
        let mut i = self.heap.len() - 1;
        while i > 0 {
            let parent = (i - 1) / 2;
            if !self.less(i, parent) {
                break;
            }
            self.heap.swap(i, parent);
            i = parent;
        }
    }

    fn pop_heap(&mut self) -> Option<(u64, QueuedPod)> {
        if self.heap.is_empty() {
            return None;
        }
        let last = self.heap.len() - 1;
        self.heap.swap(0, last);
        let top = self.heap.pop();
        let n = self.heap.len();
        let mut i = 0;
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut m = i;
            if l < n && self.less(l, m) {
                m = l;
            }
            if r < n && self.less(r, m) {
                m = r;
            }
            if m == i {
                break;
            }
            self.heap.swap(i, m);
            i = m;
        }
        top
    }

    /// Adds a new pending pod to the active queue (replacing a queued pod of the same key).
    pub fn add(&mut self, info: Arc<PodInfo>, now: Duration) {
        if let Some(mut qp) = self.take(&info.key) {
            qp.info = info;
            self.push_heap(qp, now);
            return;
        }
        self.seq += 1;
        let qp = QueuedPod {
            info,
            attempts: 0,
            timestamp: now,
            initial: now,
            rejected_by: Vec::new(),
            seq: self.seq,
        };
        self.push_heap(qp, now);
    }

    /// Removes a pod wherever it is queued; returns it.
    pub fn take(&mut self, key: &str) -> Option<QueuedPod> {
        match self.pods.remove(key)? {
            Where::Active(g) => {
                let pos = self.heap.iter().position(|(h, _)| *h == g)?;
                let (_, qp) = self.heap.swap_remove(pos);
                // Restore the heap property.
                let items = std::mem::take(&mut self.heap);
                for (g, p) in items {
                    self.heap.push((g, p));
                    let mut i = self.heap.len() - 1;
                    while i > 0 {
                        let parent = (i - 1) / 2;
                        if !self.less(i, parent) {
                            break;
                        }
                        self.heap.swap(i, parent);
                        i = parent;
                    }
                }
                Some(qp)
            }
            Where::Backoff(t, s) => self.backoff.remove(&(t, s)),
            Where::Unschedulable => self.unschedulable.remove(key).map(|(qp, _)| qp),
            Where::InFlight => None,
        }
    }

    /// The queued version of a pod (`None` when it is not queued or is being scheduled).
    pub fn get(&self, key: &str) -> Option<&Arc<PodInfo>> {
        match *self.pods.get(key)? {
            Where::Active(g) => self
                .heap
                .iter()
                .find(|(h, _)| *h == g)
                .map(|(_, qp)| &qp.info),
            Where::Backoff(t, s) => self.backoff.get(&(t, s)).map(|qp| &qp.info),
            Where::Unschedulable => self.unschedulable.get(key).map(|(qp, _)| &qp.info),
            Where::InFlight => None,
        }
    }

    /// Whether the pod is queued or being scheduled.
    pub fn contains(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }

    /// Moves pods whose backoff is over, and pods unschedulable for too long, to the active
    /// queue.
    pub fn flush(&mut self, now: Duration) {
        while let Some((&(t, s), _)) = self.backoff.first_key_value() {
            if t > now {
                break;
            }
            let qp = self.backoff.remove(&(t, s)).expect("present");
            self.push_heap(qp, now);
        }
        // Pods stay unschedulable for minutes: scanning for stale ones every few seconds is
        // enough, and keeps `pop` O(log n).
        if self.unschedulable.is_empty()
            || now
                < self.last_stale_scan + Duration::from_secs(5).min(self.config.max_unschedulable)
        {
            return;
        }
        self.last_stale_scan = now;
        let stale: Vec<Arc<str>> = self
            .unschedulable
            .iter()
            .filter(|(_, (_, since))| now.saturating_sub(*since) >= self.config.max_unschedulable)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            let (qp, _) = self.unschedulable.remove(&k).expect("present");
            self.requeue_backoff_or_active(qp, now);
        }
    }

    /// The next pod to schedule; it stays "in flight" until [`Self::done`] or
    /// [`Self::failed`].
    pub fn pop(&mut self, now: Duration) -> Option<QueuedPod> {
        self.flush(now);
        loop {
            let (g, mut qp) = self.pop_heap()?;
            if self.pods.get(&qp.info.key) == Some(&Where::Active(g)) {
                self.cycle += 1;
                qp.attempts += 1;
                self.pods.insert(qp.info.key.clone(), Where::InFlight);
                return Some(qp);
            }
        }
    }

    /// The current scheduling cycle number.
    pub fn cycle(&self) -> u64 {
        self.cycle
    }

    /// The pod left the queue for good (bound, or deleted).
    pub fn done(&mut self, key: &str) {
        self.pods.remove(key);
    }

    fn backoff_for(&self, attempts: u32) -> Duration {
        let mut d = self.config.initial_backoff;
        for _ in 1..attempts {
            d = d.saturating_mul(2);
            if d >= self.config.max_backoff {
                return self.config.max_backoff;
            }
        }
        d.min(self.config.max_backoff)
    }

    fn requeue_backoff_or_active(&mut self, qp: QueuedPod, now: Duration) {
        let until = qp.timestamp + self.backoff_for(qp.attempts);
        if until > now {
            self.pods
                .insert(qp.info.key.clone(), Where::Backoff(until, qp.seq));
            self.backoff.insert((until, qp.seq), qp);
        } else {
            self.push_heap(qp, now);
        }
    }

    /// A scheduling attempt that started in cycle `cycle` failed. The pod goes to the
    /// unschedulable pool, or to backoff when an event that might help arrived meanwhile (or
    /// when the failure was an error rather than a verdict).
    pub fn failed(&mut self, mut qp: QueuedPod, cycle: u64, now: Duration, error: bool) {
        if self.pods.get(&qp.info.key) != Some(&Where::InFlight) {
            return; // deleted meanwhile
        }
        qp.timestamp = now;
        if error || self.move_cycle >= cycle {
            let until = now + self.backoff_for(qp.attempts);
            self.pods
                .insert(qp.info.key.clone(), Where::Backoff(until, qp.seq));
            self.backoff.insert((until, qp.seq), qp);
        } else {
            self.pods.insert(qp.info.key.clone(), Where::Unschedulable);
            self.unschedulable.insert(qp.info.key.clone(), (qp, now));
        }
    }

    /// A cluster event: unschedulable pods rejected by a plugin interested in it move to the
    /// backoff or active queue. `interest(plugin)` says which events a plugin cares about.
    pub fn on_event(&mut self, event: Events, now: Duration, interest: impl Fn(&str) -> Events) {
        self.move_cycle = self.cycle;
        let moving: Vec<Arc<str>> = self
            .unschedulable
            .iter()
            .filter(|(_, (qp, _))| {
                qp.rejected_by.is_empty()
                    || qp.rejected_by.iter().any(|p| interest(p).intersects(event))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in moving {
            let (qp, _) = self.unschedulable.remove(&k).expect("present");
            self.requeue_backoff_or_active(qp, now);
        }
    }

    /// Moves every unschedulable and backing-off pod to the active queue.
    pub fn move_all_to_active(&mut self, now: Duration) {
        let pods: Vec<QueuedPod> = std::mem::take(&mut self.unschedulable)
            .into_values()
            .map(|(qp, _)| qp)
            .chain(std::mem::take(&mut self.backoff).into_values())
            .collect();
        for qp in pods {
            self.push_heap(qp, now);
        }
    }

    /// Pods in the active queue.
    pub fn active_len(&self) -> usize {
        self.pods
            .values()
            .filter(|w| matches!(w, Where::Active(_)))
            .count()
    }

    /// Pods backing off.
    pub fn backoff_len(&self) -> usize {
        self.backoff.len()
    }

    /// Pods waiting for an event.
    pub fn unschedulable_len(&self) -> usize {
        self.unschedulable.len()
    }

    /// The earliest time a backing-off pod becomes active.
    pub fn next_backoff(&self) -> Option<Duration> {
        self.backoff.keys().next().map(|(t, _)| *t)
    }

    /// Whether the active queue has a pod.
    pub fn has_active(&self) -> bool {
        self.heap
            .iter()
            .any(|(g, qp)| self.pods.get(&qp.info.key) == Some(&Where::Active(*g)))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Pod, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::plugins::PrioritySort;

    fn info(name: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(
            PodInfo::new(Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    priority: Some(priority),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .unwrap(),
        )
    }

    #[test]
    fn priority_order_backoff_and_events() {
        let mut q = SchedulingQueue::new(Arc::new(PrioritySort), QueueConfig::default());
        let t0 = Duration::ZERO;
        q.add(info("low", 1), t0);
        q.add(info("high", 10), t0);
        q.add(info("low2", 1), t0);
        let order: Vec<_> = std::iter::from_fn(|| q.pop(t0))
            .map(|p| p.info.key.to_string())
            .collect();
        assert_eq!(order, ["default/high", "default/low", "default/low2"]);

        // A failure with no event in between goes to the unschedulable pool...
        q.add(info("p", 0), t0);
        let p = q.pop(t0).unwrap();
        let cycle = q.cycle();
        q.failed(
            QueuedPod {
                rejected_by: vec!["NodeResourcesFit"],
                ..p
            },
            cycle,
            t0,
            false,
        );
        assert_eq!(q.unschedulable_len(), 1);
        // ...an event its plugin does not care about leaves it there...
        q.on_event(Events::PDB, t0, |_| Events::NODE_ADD);
        assert_eq!(q.unschedulable_len(), 1);
        // ...one it cares about moves it to backoff (1 s after the first attempt).
        q.on_event(Events::NODE_ADD, t0, |_| Events::NODE_ADD);
        assert_eq!((q.unschedulable_len(), q.backoff_len()), (0, 1));
        assert!(q.pop(Duration::from_millis(500)).is_none());
        let p = q.pop(Duration::from_secs(1)).unwrap();
        assert_eq!(p.attempts, 2);
        // Backoff doubles per attempt up to the maximum.
        assert_eq!(q.backoff_for(1), Duration::from_secs(1));
        assert_eq!(q.backoff_for(3), Duration::from_secs(4));
        assert_eq!(q.backoff_for(20), Duration::from_secs(10));
        // Deleted pods disappear wherever they are.
        q.add(info("gone", 0), t0);
        assert!(q.take("default/gone").is_some());
        assert!(q.pop(Duration::from_secs(100)).is_none());
    }
}
