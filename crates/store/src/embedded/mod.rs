//! [`EmbeddedStore`]: the durable store with no external service, Berth's default.
//!
//! Writes go to a write-ahead log (module `wal`) with **group commit**: a writer checks its
//! transaction against the in-memory index, appends its record to the pending frame and waits;
//! one log thread writes every pending frame with one `pwrite` and one `fdatasync` and then
//! acknowledges all of them. With one writer that is one sync per write (the physical limit);
//! with many, concurrent writers share a sync. Nothing is acknowledged, visible to readers or sent
//! to watchers before its sync returns; a failed sync poisons the store (no retry of fsync).
//!
//! The index ([`Mvcc`]) keeps every version since the compaction point in memory, each pointing
//! at its value in the log (segment, offset, length); values are read back with `pread` (the page
//! cache keeps hot ones in memory). Leases are logged when granted and revoked; on startup a lease
//! gets its full TTL again (as etcd does). Opening replays the log; a torn last frame is repaired,
//! any other damage is [`Error::Corrupt`].

mod wal;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_api::store::mvcc::{Change, Mvcc, Version, Watchers};
use berth_api::store::{
    self as api, EventKind, KeyValue, Lease, LeaseId, Range, RangeResult, Store, Txn, TxnOp,
    TxnResult, Watch, WatchEvent,
};
use tokio::sync::watch;

use crate::error::{Error, Result};
use wal::{HEADER, Record};

/// Tuning of an [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Size of each log segment file, preallocated when created (default 64 MiB). One frame
    /// (a group commit) takes at most half a segment, and one value at most a quarter, capped at
    /// 4 MiB.
    pub segment_size: u64,
    /// Group commit: let the log thread wait (at most half a sync) for as many writers as the
    /// last batch had before it syncs (default true; BENCHMARKS.md, store, measures both).
    pub group_wait: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: 64 << 20,
            group_wait: true,
        }
    }
}

impl Options {
    fn max_frame(&self) -> usize {
        wal::max_frame(self.segment_size)
    }

    fn max_value(&self) -> usize {
        self.max_frame() / 2
    }
}

/// Where a value lives in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    seg: u64,
    off: u64,
    len: u32,
}

/// Records waiting for (or being given) their sync.
#[derive(Debug)]
struct Batch {
    /// Sequence number: a writer waits until the durable sequence reaches its batch's.
    seq: u64,
    seg: u64,
    /// File offset of the frame header.
    off: u64,
    /// The frame: header room, then records.
    buf: Vec<u8>,
    /// Whether segment `seg` must be created before writing.
    new_segment: bool,
    /// The newest revision in the batch (0: none).
    revision: u64,
    changes: Vec<Change<Loc>>,
}

impl Batch {
    fn value(&self, loc: Loc) -> Option<&[u8]> {
        if loc.seg != self.seg || loc.off < self.off {
            return None;
        }
        let start = (loc.off - self.off) as usize;
        self.buf.get(start..start + loc.len as usize)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Durable {
    seq: u64,
    failed: bool,
}

struct State {
    mvcc: Mvcc<Loc>,
    watchers: Watchers,
    /// Readers see this revision: the newest one on disk.
    durable_revision: u64,
    /// Batches not yet taken by the log thread; only the last one grows.
    queue: VecDeque<Batch>,
    /// Batches the log thread is writing (their values are read from here until published).
    inflight: Vec<Arc<Batch>>,
    next_seq: u64,
    /// Records appended since the log thread last took the queue.
    pending_ops: usize,
    /// Where the next new frame starts.
    end_seg: u64,
    end_off: u64,
    first_seg: u64,
    files: Vec<Arc<File>>,
    failed: Option<String>,
    shutdown: bool,
}

struct Shared {
    dir: PathBuf,
    options: Options,
    state: Mutex<State>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
}

/// Owns the log thread: dropping the last store handle stops it after the pending writes.
struct Owner {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    _lock: nix::fcntl::Flock<File>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// The durable embedded store; see the [module documentation](self). Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.owner.shared.dir)
            .finish_non_exhaustive()
    }
}

/// What opening found in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// The revision the store resumed at.
    pub revision: u64,
    /// Bytes of a torn last write that were discarded (0 after a clean shutdown).
    pub torn_bytes: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn check_failed(&self) -> api::Result<()> {
        match &self.failed {
            Some(msg) => Err(Error::Failed(msg.clone()).into()),
            None if self.shutdown => Err(api::Error::Closed),
            None => Ok(()),
        }
    }

    fn read(&self, loc: Loc) -> Result<Vec<u8>> {
        for batch in self.queue.iter().chain(self.inflight.iter().map(|b| &**b)) {
            if let Some(v) = batch.value(loc) {
                return Ok(v.to_vec());
            }
        }
        let file = &self.files[(loc.seg - self.first_seg) as usize];
        let mut buf = vec![0; loc.len as usize];
        file.read_exact_at(&mut buf, loc.off)
            .map_err(|e| Error::io(Path::new("log segment"), e))?;
        Ok(buf)
    }

    fn kv(&self, key: &str, v: &Version<Loc>) -> Result<KeyValue> {
        Ok(KeyValue {
            key: key.to_owned(),
            value: match v.value {
                Some(loc) => self.read(loc)?,
                None => Vec::new(),
            },
            create_revision: v.create_revision,
            mod_revision: v.mod_revision,
            version: v.version,
            lease: v.lease,
        })
    }

    fn event(&self, change: &Change<Loc>) -> Result<WatchEvent> {
        Ok(WatchEvent {
            kind: if change.new.is_live() {
                EventKind::Put
            } else {
                EventKind::Delete
            },
            kv: self.kv(&change.key, &change.new)?,
            prev: change
                .prev
                .as_ref()
                .map(|p| self.kv(&change.key, p))
                .transpose()?,
        })
    }

    /// Appends `record` to the pending frame (or a new one); returns the batch sequence and, for
    /// a put, where its value will be.
    fn append(&mut self, record: &Record<'_>, options: &Options) -> (u64, Option<Loc>) {
        let len = record.encoded_len();
        let fits = |b: &Batch| {
            b.buf.len() + len <= HEADER + options.max_frame()
                && b.off + (b.buf.len() + len) as u64 <= options.segment_size
        };
        if !self.queue.back().is_some_and(fits) {
            let (mut seg, mut off, mut new_segment) = (self.end_seg, self.end_off, false);
            if off + (HEADER + len) as u64 > options.segment_size {
                seg += 1;
                off = 0;
                new_segment = true;
            }
            self.next_seq += 1;
            let mut buf = Vec::with_capacity(HEADER + len.max(4096));
            buf.resize(HEADER, 0);
            self.queue.push_back(Batch {
                seq: self.next_seq,
                seg,
                off,
                buf,
                new_segment,
                revision: 0,
                changes: Vec::new(),
            });
            self.end_seg = seg;
            self.end_off = off + HEADER as u64;
        }
        let batch = self.queue.back_mut().expect("just ensured");
        let at = record.encode(&mut batch.buf);
        self.pending_ops += 1;
        self.end_off += len as u64;
        let loc = match (record, at) {
            (Record::Put { value, .. }, Some(at)) => Some(Loc {
                seg: batch.seg,
                off: batch.off + at as u64,
                len: value.len() as u32,
            }),
            _ => None,
        };
        (batch.seq, loc)
    }

    fn note_change(&mut self, revision: u64, change: Change<Loc>) {
        let batch = self.queue.back_mut().expect("a record was appended");
        batch.revision = batch.revision.max(revision);
        batch.changes.push(change);
    }

    /// Revokes lease `id`: logs it and the deletes of its keys (one revision for all).
    fn revoke(&mut self, id: LeaseId, options: &Options) -> api::Result<u64> {
        let keys = self.mvcc.remove_lease(id)?;
        let (mut seq, _) = self.append(&Record::Revoke { id }, options);
        if !keys.is_empty() {
            let revision = self.mvcc.revision() + 1;
            for key in keys {
                seq = self
                    .append(
                        &Record::Delete {
                            revision,
                            key: &key,
                        },
                        options,
                    )
                    .0;
                if let Some(change) = self.mvcc.delete(&key, revision) {
                    self.note_change(revision, change);
                }
            }
        }
        Ok(seq)
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` with default [`Options`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, Options::default()).map(|(store, _)| store)
    }

    /// Opens (or creates) the store in `dir`, replaying its log; says what recovery found.
    ///
    /// Blocking (it reads the whole log): call it at startup or from `spawn_blocking`. Fails with
    /// [`Error::Corrupt`] on a damaged log and [`Error::Locked`] when another process has `dir`
    /// open.
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<(Self, Recovery)> {
        let dir = dir.as_ref().to_owned();
        if options.segment_size < 64 << 10 || options.segment_size > 1 << 31 {
            return Err(Error::InvalidOption(format!(
                "segment_size {} is outside 64 KiB..=2 GiB",
                options.segment_size
            )));
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| Error::Locked(dir.clone()))?;

        let mut seqs = wal::list_segments(&dir)?;
        if seqs.is_empty() {
            wal::create_segment(&dir, 0, options.segment_size)?;
            seqs.push(0);
        }
        let mut mvcc = Mvcc::<Loc>::new();
        let now = Instant::now();
        let tail = wal::recover(&dir, &seqs, |seg, base, payload| {
            let applied = wal::decode(payload, |record, at| {
                match record {
                    Record::Put {
                        revision,
                        lease,
                        key,
                        value,
                    } => {
                        let loc = Loc {
                            seg,
                            off: base + at as u64,
                            len: value.len() as u32,
                        };
                        mvcc.put(key, loc, lease, revision);
                    }
                    Record::Delete { revision, key } => {
                        if mvcc.delete(key, revision).is_none() {
                            mvcc.set_revision(revision);
                        }
                    }
                    Record::Grant { id, ttl_secs } => {
                        let ttl = Duration::from_secs(ttl_secs);
                        mvcc.grant(id, ttl, now + ttl);
                    }
                    Record::Revoke { id } => {
                        mvcc.remove_lease(id).ok();
                    }
                    Record::Compact { revision } => {
                        mvcc.compact(revision);
                    }
                }
                Ok(())
            });
            match applied {
                Ok(r) => r,
                Err(reason) => Err(Error::Corrupt {
                    path: wal::segment_path(&dir, seg),
                    offset: base,
                    reason: reason.to_owned(),
                }),
            }
        })?;
        let mut files = Vec::new();
        for &seq in &seqs {
            let path = wal::segment_path(&dir, seq);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            files.push(Arc::new(file));
        }
        let revision = mvcc.revision();
        let state = State {
            mvcc,
            watchers: Watchers::new(),
            durable_revision: revision,
            queue: VecDeque::new(),
            inflight: Vec::new(),
            next_seq: 0,
            pending_ops: 0,
            end_seg: tail.seq,
            end_off: tail.offset,
            first_seg: seqs[0],
            files,
            failed: None,
            shutdown: false,
        };
        let shared = Arc::new(Shared {
            dir,
            options,
            state: Mutex::new(state),
            wake: Condvar::new(),
            durable: watch::Sender::new(Durable::default()),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("berth-store-log".into())
                .spawn(move || log_thread(&shared))
                .map_err(|e| Error::io(Path::new("log thread"), e))?
        };
        let store = EmbeddedStore {
            owner: Arc::new(Owner {
                shared,
                thread: Some(thread),
                _lock: lock,
            }),
        };
        Ok((
            store,
            Recovery {
                revision,
                torn_bytes: tail.torn_bytes,
            },
        ))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.owner.shared.dir
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// Waits until batch `seq` is on disk.
    async fn durable(&self, seq: u64) -> api::Result<()> {
        let shared = self.shared();
        shared.wake.notify_one();
        let mut rx = shared.durable.subscribe();
        let state = rx
            .wait_for(|d| d.seq >= seq || d.failed)
            .await
            .map(|d| *d)
            .map_err(|_| api::Error::Closed)?;
        if state.seq >= seq {
            Ok(())
        } else {
            Err(Error::Failed("a log write failed".into()).into())
        }
    }
}

/// The log thread: takes every pending batch, writes them, syncs once, then acknowledges and
/// publishes; expires leases in between.
/// How the log thread sizes a group commit.
struct Gather {
    enabled: bool,
    /// Writers in the last batch.
    target: usize,
    /// How long the last write + sync took.
    last_sync: Duration,
    /// Until when the current batch may wait for more writers.
    deadline: Option<Instant>,
}

fn log_thread(shared: &Shared) {
    let mut current: Option<(u64, Arc<File>)> = None;
    let mut gather = Gather {
        enabled: shared.options.group_wait,
        target: 1,
        last_sync: Duration::ZERO,
        deadline: None,
    };
    loop {
        let batches: Vec<Arc<Batch>> = {
            let mut st = shared.lock();
            loop {
                if st.failed.is_some() {
                    return;
                }
                let now = Instant::now();
                for id in st.mvcc.expired(now) {
                    st.revoke(id, &shared.options).ok();
                }
                if !st.queue.is_empty() {
                    // Group commit: when the last batch had more writers than are waiting now,
                    // give the others (just acknowledged, about to write again) a moment to
                    // join, at most a fraction of a sync. One writer never waits.
                    if st.pending_ops >= gather.target || st.shutdown || !gather.enabled {
                        break;
                    }
                    let deadline = *gather
                        .deadline
                        .get_or_insert_with(|| now + gather.last_sync / 2);
                    if now >= deadline {
                        break;
                    }
                    st = shared
                        .wake
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    continue;
                }
                if st.shutdown {
                    return;
                }
                let wait = st.mvcc.next_deadline().map_or(Duration::from_secs(1), |d| {
                    d.saturating_duration_since(now)
                        .max(Duration::from_millis(1))
                });
                st = shared
                    .wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let taken: Vec<Arc<Batch>> = st
                .queue
                .drain(..)
                .map(|mut b| {
                    wal::seal(&mut b.buf);
                    Arc::new(b)
                })
                .collect();
            st.inflight.extend(taken.iter().cloned());
            gather.target = std::mem::take(&mut st.pending_ops).max(1);
            gather.deadline = None;
            taken
        };
        let started = Instant::now();
        let written = write_batches(shared, &batches, &mut current);
        gather.last_sync = started.elapsed().min(Duration::from_millis(2));
        if let Err(e) = written {
            tracing::error!(error = %e, "store log write failed; the store stops");
            let mut st = shared.lock();
            st.failed = Some(e.to_string());
            st.watchers.close();
            drop(st);
            shared.durable.send_modify(|d| d.failed = true);
            return;
        }
        let mut st = shared.lock();
        let last = batches.last().expect("at least one batch");
        if let Some(revision) = batches.iter().map(|b| b.revision).max().filter(|r| *r > 0) {
            st.durable_revision = st.durable_revision.max(revision);
        }
        if !st.watchers.is_empty() {
            let events: Result<Vec<WatchEvent>> = batches
                .iter()
                .flat_map(|b| b.changes.iter())
                .map(|c| st.event(c))
                .collect();
            match events {
                Ok(events) => st.watchers.publish(&events),
                Err(e) => {
                    tracing::error!(error = %e, "reading back the log failed; watches end");
                    st.watchers.close();
                }
            }
        }
        st.inflight.clear();
        let seq = last.seq;
        drop(st);
        shared.durable.send_modify(|d| d.seq = seq);
    }
}

fn write_batches(
    shared: &Shared,
    batches: &[Arc<Batch>],
    current: &mut Option<(u64, Arc<File>)>,
) -> Result<()> {
    let dir = &shared.dir;
    for batch in batches {
        if batch.new_segment {
            // The old segment is complete: make it durable before the next one exists, so only
            // the last segment can ever end in a torn frame.
            if let Some((seq, file)) = current.take() {
                file.sync_data()
                    .map_err(|e| Error::io(&wal::segment_path(dir, seq), e))?;
            }
            let file = Arc::new(wal::create_segment(
                dir,
                batch.seg,
                shared.options.segment_size,
            )?);
            shared.lock().files.push(file.clone());
            *current = Some((batch.seg, file));
        }
        let file = match current {
            Some((seq, file)) if *seq == batch.seg => file.clone(),
            _ => {
                let st = shared.lock();
                let file = st.files[(batch.seg - st.first_seg) as usize].clone();
                *current = Some((batch.seg, file.clone()));
                file
            }
        };
        file.write_all_at(&batch.buf, batch.off)
            .map_err(|e| Error::io(&wal::segment_path(dir, batch.seg), e))?;
    }
    if let Some((seq, file)) = current {
        file.sync_data()
            .map_err(|e| Error::io(&wal::segment_path(dir, *seq), e))?;
    }
    Ok(())
}

fn too_large(txn: &Txn, options: &Options) -> api::Result<()> {
    let size = match &txn.op {
        TxnOp::Put { value, .. } => value.len() + txn.key.len(),
        TxnOp::Delete => txn.key.len(),
    };
    if size > options.max_value() {
        return Err(api::Error::TooLarge {
            key: txn.key.clone(),
            size,
            limit: options.max_value(),
        });
    }
    Ok(())
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> api::Result<Option<KeyValue>> {
        let st = self.shared().lock();
        st.check_failed()?;
        let at = st.durable_revision;
        Ok(st.mvcc.get(key, at).map(|v| st.kv(key, v)).transpose()?)
    }

    async fn range(&self, range: Range) -> api::Result<RangeResult> {
        let st = self.shared().lock();
        st.check_failed()?;
        let at = st.mvcc.read_revision(range.revision, st.durable_revision)?;
        let (versions, more) =
            st.mvcc
                .range(&range.prefix, range.start_after.as_deref(), range.limit, at);
        let kvs = versions
            .into_iter()
            .map(|(k, v)| st.kv(k, v))
            .collect::<Result<Vec<_>>>()?;
        Ok(RangeResult {
            kvs,
            revision: at,
            more,
        })
    }

    async fn txn(&self, txn: Txn) -> api::Result<TxnResult> {
        let shared = self.shared();
        too_large(&txn, &shared.options)?;
        let (seq, result) = {
            let mut guard = shared.lock();
            let st = &mut *guard;
            st.check_failed()?;
            let prev = match st.mvcc.check(&txn, |_| Vec::new()) {
                Ok(prev) => prev.map(|v| st.kv(&txn.key, v)).transpose()?,
                Err(api::Error::Conflict {
                    key,
                    expected,
                    found,
                    ..
                }) => {
                    let current = st.mvcc.get(&key, u64::MAX);
                    let current = current.map(|v| st.kv(&key, v)).transpose()?;
                    return Err(api::Error::Conflict {
                        key,
                        expected,
                        found,
                        current: current.map(Box::new),
                    });
                }
                Err(e) => return Err(e),
            };
            let revision = st.mvcc.revision() + 1;
            let (seq, change) = match &txn.op {
                TxnOp::Put { value, lease } => {
                    let record = Record::Put {
                        revision,
                        lease: *lease,
                        key: &txn.key,
                        value,
                    };
                    let (seq, loc) = st.append(&record, &shared.options);
                    let loc = loc.expect("a put has a value");
                    (seq, st.mvcc.put(&txn.key, loc, *lease, revision))
                }
                TxnOp::Delete => {
                    let record = Record::Delete {
                        revision,
                        key: &txn.key,
                    };
                    let (seq, _) = st.append(&record, &shared.options);
                    let change = st.mvcc.delete(&txn.key, revision).expect("check saw it");
                    (seq, change)
                }
            };
            st.note_change(revision, change);
            (seq, TxnResult { revision, prev })
        };
        self.durable(seq).await?;
        Ok(result)
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> api::Result<Watch> {
        let mut guard = self.shared().lock();
        let st = &mut *guard;
        st.check_failed()?;
        st.mvcc.check_watch(after_revision)?;
        let backlog = st
            .mvcc
            .changes(prefix, after_revision, st.durable_revision)
            .iter()
            .map(|c| st.event(c))
            .collect::<Result<Vec<_>>>()?;
        Ok(st.watchers.add(prefix, after_revision, backlog))
    }

    async fn compact(&self, revision: u64) -> api::Result<()> {
        let shared = self.shared();
        let seq = {
            let mut st = shared.lock();
            st.check_failed()?;
            if revision > st.durable_revision {
                return Err(api::Error::FutureRevision {
                    requested: revision,
                    current: st.durable_revision,
                });
            }
            if revision <= st.mvcc.compacted() {
                return Ok(());
            }
            let (seq, _) = st.append(&Record::Compact { revision }, &shared.options);
            st.mvcc.compact(revision);
            seq
        };
        self.durable(seq).await
    }

    async fn revision(&self) -> api::Result<u64> {
        let st = self.shared().lock();
        st.check_failed()?;
        Ok(st.durable_revision)
    }

    async fn lease_grant(&self, ttl: Duration) -> api::Result<Lease> {
        let shared = self.shared();
        let ttl_secs = api::ttl_seconds(ttl);
        let ttl = Duration::from_secs(ttl_secs);
        let (seq, id) = {
            let mut st = shared.lock();
            st.check_failed()?;
            let id = st.mvcc.next_lease_id();
            let (seq, _) = st.append(&Record::Grant { id, ttl_secs }, &shared.options);
            st.mvcc.grant(id, ttl, Instant::now() + ttl);
            (seq, id)
        };
        self.durable(seq).await?;
        // The TTL runs from the acknowledgement, not from the append before the sync.
        self.shared()
            .lock()
            .mvcc
            .keep_alive(id, Instant::now())
            .ok();
        Ok(Lease { id, ttl })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> api::Result<Lease> {
        let mut st = self.shared().lock();
        st.check_failed()?;
        let ttl = st.mvcc.keep_alive(id, Instant::now())?;
        Ok(Lease { id, ttl })
    }

    async fn lease_revoke(&self, id: LeaseId) -> api::Result<()> {
        let shared = self.shared();
        let seq = {
            let mut st = shared.lock();
            st.check_failed()?;
            st.revoke(id, &shared.options)?
        };
        self.durable(seq).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_locations_point_at_the_value() {
        let options = Options {
            segment_size: 64 << 10,
            ..Options::default()
        };
        let mut st = State {
            mvcc: Mvcc::new(),
            watchers: Watchers::new(),
            durable_revision: 0,
            queue: VecDeque::new(),
            inflight: Vec::new(),
            next_seq: 0,
            pending_ops: 0,
            end_seg: 0,
            end_off: 100,
            first_seg: 0,
            files: Vec::new(),
            failed: None,
            shutdown: false,
        };
        let value = vec![7u8; 1000];
        let mut locs = Vec::new();
        for revision in 1..100 {
            let record = Record::Put {
                revision,
                lease: None,
                key: "/k",
                value: &value,
            };
            let (_, loc) = st.append(&record, &options);
            locs.push(loc.unwrap());
        }
        // Frames never cross a segment's end, and each value reads back from its batch.
        assert!(st.queue.len() > 1);
        assert!(st.queue.iter().any(|b| b.new_segment));
        for b in &st.queue {
            assert!(b.off + b.buf.len() as u64 <= options.segment_size);
        }
        for loc in locs {
            assert_eq!(loc.len, 1000);
            assert_eq!(st.read(loc).unwrap(), value);
        }
    }
}
