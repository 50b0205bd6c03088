//! Building blocks for [`Store`](super::Store) backends that keep their index in memory:
//! [`Mvcc`], the multi-version key index with leases, and [`Watchers`], the fan-out of committed
//! events to watchers. [`MemoryStore`](super::MemoryStore) keeps values in it; a durable backend
//! keeps the location of each value on disk instead (the `V` parameter).
//!
//! Nothing here locks or does I/O: the backend holds an `Mvcc` under its own lock, checks a
//! transaction ([`Mvcc::check`]), makes it durable, then applies it ([`Mvcc::put`],
//! [`Mvcc::delete`]) and hands the resulting events to [`Watchers::publish`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::watch::DEFAULT_CAPACITY;
use super::{Error, KeyValue, LeaseId, Result, Txn, TxnOp, Watch, WatchEvent, WatchSender};

/// One version of a key: a value (or a deletion) and its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version<V> {
    /// The revision of this write.
    pub mod_revision: u64,
    /// The revision that created the key (0 for a deletion).
    pub create_revision: u64,
    /// Writes since creation (0 for a deletion).
    pub version: u64,
    /// The lease the key was attached to.
    pub lease: Option<LeaseId>,
    /// The value; `None` marks a deletion.
    pub value: Option<V>,
}

impl<V> Version<V> {
    /// Whether the key exists in this version.
    pub fn is_live(&self) -> bool {
        self.value.is_some()
    }

    /// The [`KeyValue`] of a live version, its value produced by `read`.
    pub fn to_kv(&self, key: &str, read: impl FnOnce(&V) -> Vec<u8>) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value.as_ref().map(read).unwrap_or_default(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// A change applied to the index, for watchers and for logs: the key, the new version and the one
/// it replaced.
#[derive(Debug, Clone)]
pub struct Change<V> {
    /// The key.
    pub key: String,
    /// The new version (a deletion has `value: None`).
    pub new: Version<V>,
    /// The live version before, if any.
    pub prev: Option<Version<V>>,
}

impl<V> Change<V> {
    /// The watch event of this change, values produced by `read`.
    pub fn to_event(&self, mut read: impl FnMut(&V) -> Vec<u8>) -> WatchEvent {
        let kind = if self.new.is_live() {
            super::EventKind::Put
        } else {
            super::EventKind::Delete
        };
        WatchEvent {
            kind,
            kv: self.new.to_kv(&self.key, &mut read),
            prev: self.prev.as_ref().map(|p| p.to_kv(&self.key, &mut read)),
        }
    }
}

#[derive(Debug, Clone)]
struct LeaseState {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

/// The multi-version index: every kept version of every key, the revision counters and the leases.
#[derive(Debug, Clone)]
pub struct Mvcc<V> {
    keys: BTreeMap<String, Vec<Version<V>>>,
    revision: u64,
    compacted: u64,
    leases: HashMap<LeaseId, LeaseState>,
    next_lease: LeaseId,
}

impl<V> Default for Mvcc<V> {
    fn default() -> Self {
        Mvcc {
            keys: BTreeMap::new(),
            revision: 0,
            compacted: 0,
            leases: HashMap::new(),
            next_lease: 1,
        }
    }
}

impl<V: Clone> Mvcc<V> {
    /// An empty index at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The newest revision applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The compaction point: the oldest revision that can be read.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Checks that `at` (0: `current`) can be read; returns the revision to read at.
    pub fn read_revision(&self, at: u64, current: u64) -> Result<u64> {
        if at == 0 {
            return Ok(current);
        }
        if at > current {
            return Err(Error::FutureRevision {
                requested: at,
                current,
            });
        }
        if at < self.compacted {
            return Err(Error::Compacted {
                requested: at,
                compacted: self.compacted,
            });
        }
        Ok(at)
    }

    fn version_at(versions: &[Version<V>], at: u64) -> Option<&Version<V>> {
        let idx = versions.partition_point(|v| v.mod_revision <= at);
        idx.checked_sub(1).map(|i| &versions[i])
    }

    /// The live version of `key` at revision `at`.
    pub fn get(&self, key: &str, at: u64) -> Option<&Version<V>> {
        self.keys
            .get(key)
            .and_then(|versions| Self::version_at(versions, at))
            .filter(|v| v.is_live())
    }

    /// Live keys under `prefix` after `start_after` at revision `at`, at most `limit` (0: all);
    /// and whether more follow.
    pub fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: u64,
    ) -> (Vec<(&str, &Version<V>)>, bool) {
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        for (key, versions) in self
            .keys
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            if let Some(v) = Self::version_at(versions, at).filter(|v| v.is_live()) {
                if limit != 0 && out.len() == limit {
                    return (out, true);
                }
                out.push((key.as_str(), v));
            }
        }
        (out, false)
    }

    /// Checks a transaction against the newest versions: its comparison, its key and its lease.
    /// Returns the key's live version, which the write will replace.
    pub fn check(
        &self,
        txn: &Txn,
        read: impl FnOnce(&V) -> Vec<u8>,
    ) -> Result<Option<&Version<V>>> {
        if txn.key.is_empty() {
            return Err(Error::InvalidKey(txn.key.clone()));
        }
        let current = self.get(&txn.key, u64::MAX);
        let found = current.map_or(0, |v| v.mod_revision);
        if !txn.compare.passes(found) {
            return Err(Error::Conflict {
                key: txn.key.clone(),
                expected: txn.compare.expected(),
                found,
                current: current.map(|v| Box::new(v.to_kv(&txn.key, read))),
            });
        }
        match &txn.op {
            TxnOp::Delete if current.is_none() => Err(Error::NotFound {
                key: txn.key.clone(),
            }),
            TxnOp::Put {
                lease: Some(id), ..
            } if !self.leases.contains_key(id) => Err(Error::LeaseNotFound { id: *id }),
            _ => Ok(current),
        }
    }

    fn push(&mut self, key: &str, new: Version<V>) -> Change<V> {
        let versions = self.keys.entry(key.to_owned()).or_default();
        let prev = versions.last().filter(|v| v.is_live()).cloned();
        versions.push(new.clone());
        Change {
            key: key.to_owned(),
            new,
            prev,
        }
    }

    fn detach(&mut self, key: &str, prev: Option<&Version<V>>) {
        if let Some(id) = prev.and_then(|p| p.lease)
            && let Some(lease) = self.leases.get_mut(&id)
        {
            lease.keys.remove(key);
        }
    }

    /// Writes `value` under `key` at `revision` (above every applied one), attached to `lease`.
    /// The caller checked the transaction first.
    pub fn put(&mut self, key: &str, value: V, lease: Option<LeaseId>, revision: u64) -> Change<V> {
        debug_assert!(revision >= self.revision);
        self.revision = revision;
        let prev = self.get(key, u64::MAX).cloned();
        self.detach(key, prev.as_ref());
        if let Some(id) = lease
            && let Some(l) = self.leases.get_mut(&id)
        {
            l.keys.insert(key.to_owned());
        }
        let new = Version {
            mod_revision: revision,
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
            value: Some(value),
        };
        self.push(key, new)
    }

    /// Deletes `key` at `revision`; `None` if it was absent.
    pub fn delete(&mut self, key: &str, revision: u64) -> Option<Change<V>> {
        debug_assert!(revision >= self.revision);
        self.revision = revision;
        let prev = self.get(key, u64::MAX).cloned()?;
        self.detach(key, Some(&prev));
        let new = Version {
            mod_revision: revision,
            create_revision: 0,
            version: 0,
            lease: None,
            value: None,
        };
        Some(self.push(key, new))
    }

    /// Appends a version as it was recorded (a checkpoint's), keeping its revisions and version
    /// count; the key joins its lease when the version is live. Versions of a key come in
    /// revision order.
    pub fn restore(&mut self, key: &str, version: Version<V>) {
        self.revision = self.revision.max(version.mod_revision);
        let prev = self.get(key, u64::MAX).cloned();
        self.detach(key, prev.as_ref());
        if version.is_live()
            && let Some(id) = version.lease
            && let Some(l) = self.leases.get_mut(&id)
        {
            l.keys.insert(key.to_owned());
        }
        self.keys.entry(key.to_owned()).or_default().push(version);
    }

    /// Every kept version, mutable (a durable backend moving values between files).
    pub fn versions_mut(&mut self) -> impl Iterator<Item = (&str, &mut Version<V>)> + '_ {
        self.keys
            .iter_mut()
            .flat_map(|(k, versions)| versions.iter_mut().map(move |v| (k.as_str(), v)))
    }

    /// The id the next granted lease gets.
    pub fn peek_next_lease_id(&self) -> LeaseId {
        self.next_lease
    }

    /// Raises the next lease id to at least `id` (recovery).
    pub fn set_next_lease_id(&mut self, id: LeaseId) {
        self.next_lease = self.next_lease.max(id);
    }

    /// Moves the revision forward without a change (a replayed log entry that changed nothing).
    pub fn set_revision(&mut self, revision: u64) {
        self.revision = self.revision.max(revision);
    }

    /// Forgets versions that no read at or after `revision` can see. Returns the values dropped
    /// (a durable backend may reclaim their space). `revision` must not exceed the current one;
    /// one at or before the compaction point does nothing.
    pub fn compact(&mut self, revision: u64) -> Vec<V> {
        let mut dropped = Vec::new();
        if revision <= self.compacted {
            return dropped;
        }
        self.compacted = revision;
        self.keys.retain(|_, versions| {
            // Keep the newest version at or before `revision` and everything after it.
            let idx = versions.partition_point(|v| v.mod_revision <= revision);
            let keep_from = idx.saturating_sub(1);
            for v in versions.drain(..keep_from) {
                dropped.extend(v.value);
            }
            // A deletion at or before the compaction point is no longer needed.
            if versions.len() == 1 && !versions[0].is_live() && versions[0].mod_revision <= revision
            {
                versions.clear();
            }
            !versions.is_empty()
        });
        dropped
    }

    /// Every change under `prefix` with a revision in `(after, upto]`, in revision order.
    pub fn changes(&self, prefix: &str, after: u64, upto: u64) -> Vec<Change<V>> {
        let mut out = Vec::new();
        for (key, versions) in self
            .keys
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            let start = versions.partition_point(|v| v.mod_revision <= after);
            for i in start..versions.len() {
                let new = &versions[i];
                if new.mod_revision > upto {
                    break;
                }
                let prev = i
                    .checked_sub(1)
                    .map(|p| &versions[p])
                    .filter(|p| p.is_live())
                    .cloned();
                out.push(Change {
                    key: key.clone(),
                    new: new.clone(),
                    prev,
                });
            }
        }
        out.sort_by(|a, b| {
            a.new
                .mod_revision
                .cmp(&b.new.mod_revision)
                .then_with(|| a.key.cmp(&b.key))
        });
        out
    }

    /// Checks that a watch after `after` can start (not before the compaction point).
    pub fn check_watch(&self, after: u64) -> Result<()> {
        if after < self.compacted {
            return Err(Error::Compacted {
                requested: after,
                compacted: self.compacted,
            });
        }
        Ok(())
    }

    /// Number of keys with any kept version (live or not).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    // ---- leases ----

    /// A fresh lease id (above every id granted or restored).
    pub fn next_lease_id(&mut self) -> LeaseId {
        let id = self.next_lease;
        self.next_lease += 1;
        id
    }

    /// Records a lease `id` with `ttl` expiring at `deadline` (grant, or restore on recovery).
    pub fn grant(&mut self, id: LeaseId, ttl: Duration, deadline: Instant) {
        self.next_lease = self.next_lease.max(id + 1);
        self.leases.entry(id).or_insert(LeaseState {
            ttl,
            deadline,
            keys: BTreeSet::new(),
        });
    }

    /// Whether lease `id` exists.
    pub fn has_lease(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    /// Renews lease `id` to expire `ttl` after `now`; returns its TTL.
    pub fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<Duration> {
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(Error::LeaseNotFound { id })?;
        lease.deadline = now + lease.ttl;
        Ok(lease.ttl)
    }

    /// Removes lease `id`, returning the keys attached to it (the caller deletes them).
    pub fn remove_lease(&mut self, id: LeaseId) -> Result<Vec<String>> {
        let lease = self.leases.remove(&id).ok_or(Error::LeaseNotFound { id })?;
        Ok(lease.keys.into_iter().collect())
    }

    /// Leases whose deadline is at or before `now`.
    pub fn expired(&self, now: Instant) -> Vec<LeaseId> {
        let mut ids: Vec<_> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The earliest lease deadline, if any lease exists.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|l| l.deadline).min()
    }

    /// Every lease with its TTL (for snapshots).
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, Duration)> + '_ {
        self.leases.iter().map(|(id, l)| (*id, l.ttl))
    }

    /// The newest live version of every key (for snapshots).
    pub fn live(&self) -> impl Iterator<Item = (&str, &Version<V>)> + '_ {
        self.keys.iter().filter_map(|(k, versions)| {
            versions
                .last()
                .filter(|v| v.is_live())
                .map(|v| (k.as_str(), v))
        })
    }

    /// Every kept version of every key (for snapshots that keep history).
    pub fn all_versions(&self) -> impl Iterator<Item = (&str, &Version<V>)> + '_ {
        self.keys
            .iter()
            .flat_map(|(k, versions)| versions.iter().map(move |v| (k.as_str(), v)))
    }

    /// Sets the compaction point without dropping anything (recovery).
    pub fn set_compacted(&mut self, revision: u64) {
        self.compacted = self.compacted.max(revision);
    }
}

/// The watchers of a store: each a prefix and a [`WatchSender`], and the revision up to which
/// every change has been published (answers progress requests).
#[derive(Debug, Default)]
pub struct Watchers {
    watchers: Vec<(String, u64, WatchSender)>,
    published: Arc<AtomicU64>,
}

impl Watchers {
    /// No watchers.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new watcher of `prefix` whose stream starts with `backlog` (events already committed
    /// after its start revision). Register it under the same lock that orders commits, so no
    /// event falls between the backlog and the live feed.
    /// Live events at or before `after` (a watch from a revision not reached yet) are skipped.
    pub fn add(&mut self, prefix: &str, after: u64, backlog: Vec<WatchEvent>) -> Watch {
        let (tx, rx) =
            Watch::channel_with_progress(DEFAULT_CAPACITY, self.published.clone(), after);
        if tx.send(backlog) {
            self.watchers.push((prefix.to_owned(), after, tx));
        }
        rx
    }

    /// Records that every change up to `revision` has been published (call it under the lock
    /// that orders commits, after [`publish`](Watchers::publish), and before [`add`](Watchers::add)
    /// with the revision the backlog reaches).
    pub fn advance(&self, revision: u64) {
        self.published.fetch_max(revision, Ordering::Release);
    }

    /// Whether any watcher is registered (lets a backend skip building events).
    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Delivers committed events (in revision order) to every watcher whose prefix matches.
    pub fn publish(&mut self, events: &[WatchEvent]) {
        if events.is_empty() {
            return;
        }
        self.watchers.retain(|(prefix, after, tx)| {
            let mut matching = events
                .iter()
                .filter(|e| e.revision() > *after && e.kv.key.starts_with(prefix.as_str()));
            match matching.next() {
                None => !tx.is_closed(),
                Some(first) => tx.send(std::iter::once(first.clone()).chain(matching.cloned())),
            }
        });
    }

    /// Ends every watch with [`Error::Closed`] (the store shut down or failed).
    pub fn close(&mut self) {
        for (_, _, tx) in self.watchers.drain(..) {
            tx.fail(Error::Closed);
        }
    }
}

/// Builds the watch backlog of a new watcher: changes under `prefix` in `(after, upto]`, after
/// checking `after` against the compaction point.
pub fn backlog<V: Clone>(
    mvcc: &Mvcc<V>,
    prefix: &str,
    after: u64,
    upto: u64,
    mut read: impl FnMut(&V) -> Vec<u8>,
) -> Result<Vec<WatchEvent>> {
    mvcc.check_watch(after)?;
    Ok(mvcc
        .changes(prefix, after, upto)
        .iter()
        .map(|c| c.to_event(&mut read))
        .collect())
}
