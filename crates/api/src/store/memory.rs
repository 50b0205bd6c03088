//! [`MemoryStore`]: the whole [`Store`] in memory, for tests and single-process use. Nothing
//! survives the process; the durable embedded store lives in `berth-store`.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::mvcc::{Change, Mvcc, Watchers, backlog};
use super::{
    KeyValue, Lease, LeaseId, Range, RangeResult, Result, Store, Txn, TxnOp, TxnResult, Watch,
    WatchEvent, ttl_seconds,
};

/// Revisions of history kept before [`MemoryStore`] compacts on its own.
const HISTORY: u64 = 10_000;
/// How often the lease reaper looks at the clock at most.
const REAPER_TICK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Inner {
    mvcc: Mvcc<Vec<u8>>,
    watchers: Watchers,
    reaper_running: bool,
}

/// The in-memory store: MVCC history of the last 10 000 revisions (older ones are compacted on
/// their own), watch, leases (expired by a small background thread while any lease exists).
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

#[allow(clippy::ptr_arg)] // called as `FnOnce(&V)` with `V = Vec<u8>`
fn read(v: &Vec<u8>) -> Vec<u8> {
    v.clone()
}

impl MemoryStore {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn start_reaper(&self, inner: &mut Inner) {
        if inner.reaper_running {
            return;
        }
        inner.reaper_running = true;
        let weak = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("berth-store-leases".into())
            .spawn(move || reaper(weak))
            .expect("spawn the lease reaper thread");
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

/// Expires leases until the store is dropped or holds no lease.
fn reaper(weak: Weak<Mutex<Inner>>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let wait = {
            let mut guard = lock(&inner);
            let now = Instant::now();
            for id in guard.mvcc.expired(now) {
                revoke(&mut guard, id).ok();
            }
            match guard.mvcc.next_deadline() {
                None => {
                    guard.reaper_running = false;
                    return;
                }
                Some(deadline) => deadline.saturating_duration_since(now).min(REAPER_TICK),
            }
        };
        drop(inner);
        std::thread::sleep(wait.max(Duration::from_millis(1)));
    }
}

fn events(changes: &[Change<Vec<u8>>]) -> Vec<WatchEvent> {
    changes.iter().map(|c| c.to_event(read)).collect()
}

fn revoke(inner: &mut Inner, id: LeaseId) -> Result<()> {
    let keys = inner.mvcc.remove_lease(id)?;
    if keys.is_empty() {
        return Ok(());
    }
    let revision = inner.mvcc.revision() + 1;
    let changes: Vec<_> = keys
        .iter()
        .filter_map(|k| inner.mvcc.delete(k, revision))
        .collect();
    let events = events(&changes);
    inner.watchers.publish(&events);
    inner.watchers.advance(revision);
    Ok(())
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let inner = self.lock();
        Ok(inner.mvcc.get(key, u64::MAX).map(|v| v.to_kv(key, read)))
    }

    async fn range(&self, range: Range) -> Result<RangeResult> {
        let inner = self.lock();
        let at = inner
            .mvcc
            .read_revision(range.revision, inner.mvcc.revision())?;
        let (kvs, more) =
            inner
                .mvcc
                .range(&range.prefix, range.start_after.as_deref(), range.limit, at);
        Ok(RangeResult {
            kvs: kvs.into_iter().map(|(k, v)| v.to_kv(k, read)).collect(),
            revision: at,
            more,
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let mut inner = self.lock();
        let prev = inner
            .mvcc
            .check(&txn, read)?
            .map(|v| v.to_kv(&txn.key, read));
        let revision = inner.mvcc.revision() + 1;
        let change = match txn.op {
            TxnOp::Put { value, lease } => inner.mvcc.put(&txn.key, value, lease, revision),
            TxnOp::Delete => inner
                .mvcc
                .delete(&txn.key, revision)
                .expect("check saw the key"),
        };
        if !inner.watchers.is_empty() {
            let events = events(std::slice::from_ref(&change));
            inner.watchers.publish(&events);
        }
        inner.watchers.advance(revision);
        if revision >= inner.mvcc.compacted() + HISTORY + HISTORY / 10 {
            inner.mvcc.compact(revision - HISTORY);
        }
        Ok(TxnResult { revision, prev })
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<Watch> {
        let mut inner = self.lock();
        let current = inner.mvcc.revision();
        let backlog = backlog(&inner.mvcc, prefix, after_revision, current, read)?;
        inner.watchers.advance(current);
        Ok(inner.watchers.add(prefix, after_revision, backlog))
    }

    async fn compact(&self, revision: u64) -> Result<()> {
        let mut inner = self.lock();
        let current = inner.mvcc.revision();
        if revision > current {
            return Err(super::Error::FutureRevision {
                requested: revision,
                current,
            });
        }
        inner.mvcc.compact(revision);
        Ok(())
    }

    async fn revision(&self) -> Result<u64> {
        Ok(self.lock().mvcc.revision())
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease> {
        let ttl = Duration::from_secs(ttl_seconds(ttl));
        let mut inner = self.lock();
        let id = inner.mvcc.next_lease_id();
        inner.mvcc.grant(id, ttl, Instant::now() + ttl);
        self.start_reaper(&mut inner);
        Ok(Lease { id, ttl })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease> {
        let ttl = self.lock().mvcc.keep_alive(id, Instant::now())?;
        Ok(Lease { id, ttl })
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        revoke(&mut self.lock(), id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        super::super::conformance::run_all(|| async {
            Arc::new(MemoryStore::new()) as Arc<dyn Store>
        })
        .await;
    }

    #[tokio::test]
    async fn compacts_history_on_its_own() {
        let store = MemoryStore::new();
        for i in 0..(HISTORY + HISTORY / 10) {
            store
                .put("/k", i.to_le_bytes().to_vec(), None)
                .await
                .unwrap();
        }
        let current = store.revision().await.unwrap();
        assert!(matches!(
            store.watch("/k", 1).await,
            Err(super::super::Error::Compacted { .. })
        ));
        assert!(store.watch("/k", current - HISTORY).await.is_ok());
    }
}
