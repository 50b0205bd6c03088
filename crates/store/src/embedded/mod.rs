//! [`EmbeddedStore`]: the durable store with no external service, Berth's default.
//!
//! Writes go to a write-ahead log (module `wal`) with **group commit**, and a **leader** fast
//! path in the manner of LevelDB's and RocksDB's writer queue: a writer checks its transaction
//! against the in-memory index and appends its record to the pending frame. If nobody is
//! writing the log and the writer does not expect company (the last group had one writer), it
//! becomes the leader: it writes every pending frame with one `pwrite`, syncs with one
//! `fdatasync` on its own thread, acknowledges whoever queued meanwhile, and returns, with no
//! thread hand-off. Otherwise it waits; the log thread writes its frame together with everyone
//! else's (waiting at most half a sync for as many writers as the last group had): one sync per
//! group. Nothing is acknowledged, visible to readers
//! or sent to watchers before its sync returns; a failed sync poisons the store (no retry of
//! fsync). The leader blocks its own thread for one write and sync, as a synchronous `write(2)`
//! would, after handing the runtime worker's other tasks (watchers woken by earlier writes) to
//! another thread (`block_in_place`); writers that arrive meanwhile only queue.
//!
//! The index ([`Mvcc`]) keeps every version since the compaction point in memory, each pointing
//! at its value in the log (segment, offset, length); values are read back with `pread` (the page
//! cache keeps hot ones in memory). Leases are logged when granted and revoked; on startup a lease
//! gets its full TTL again (as etcd does). Opening replays the log; a torn last frame is repaired,
//! any other damage is [`Error::Corrupt`].

mod wal;

use std::collections::{BTreeMap, VecDeque};
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
    /// Let a writer that finds the log idle write and sync its group on its own thread (default
    /// true). With `false` every group goes through the log thread, which costs a lone writer
    /// two thread hand-offs per write (~0.76x of a bare fdatasync loop instead of ~0.9x). On a
    /// multi-threaded tokio runtime the leader first hands its worker's other tasks to another
    /// thread (`block_in_place`), so its sync delays no watcher (BENCHMARKS.md, store).
    pub leader: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: 64 << 20,
            group_wait: true,
            leader: true,
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
    /// The open segment file, when it exists already (set when the batch is taken).
    file: Option<Arc<File>>,
    /// For a batch that creates its segment: the previous segment, synced first.
    prev_file: Option<Arc<File>>,
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
    /// Batches being written (their values are read from here until published).
    inflight: Vec<Arc<Batch>>,
    /// Someone (the log thread or a leading writer) is writing and syncing `inflight`.
    writing: bool,
    /// Group commit: records in the last group written.
    group_target: usize,
    /// How long the last write + sync took.
    last_sync: Duration,
    /// Until when the log thread lets the pending group wait for more writers.
    group_deadline: Option<Instant>,
    next_seq: u64,
    /// Records appended since the log thread last took the queue.
    pending_ops: usize,
    /// Where the next new frame starts.
    end_seg: u64,
    end_off: u64,
    /// New frames go to this segment or a later one (a checkpoint cut the log before it).
    min_seg: u64,
    /// The first segment after the newest checkpoint (0 without one).
    base_seg: u64,
    /// Size of the newest checkpoint file.
    checkpoint_bytes: u64,
    /// A checkpoint is being written.
    checkpointing: bool,
    /// Open log files by id ([`Loc::seg`]: a segment's number, or [`checkpoint_id`]).
    files: BTreeMap<u64, Arc<File>>,
    failed: Option<String>,
    shutdown: bool,
}

struct Shared {
    dir: PathBuf,
    options: Options,
    state: Mutex<State>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
    /// The background checkpoint thread, if one was started.
    checkpointer: Mutex<Option<JoinHandle<()>>>,
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
        let checkpointer = self
            .shared
            .checkpointer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = checkpointer {
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
    /// The revision of the checkpoint the log was replayed from, if one was.
    pub checkpoint: Option<u64>,
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
        let file = self
            .files
            .get(&loc.seg)
            .ok_or_else(|| Error::Failed(format!("no log file {} for a value", loc.seg)))?;
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
        let min_seg = self.min_seg;
        let fits = |b: &Batch| {
            b.seg >= min_seg
                && b.buf.len() + len <= HEADER + options.max_frame()
                && b.off + (b.buf.len() + len) as u64 <= options.segment_size
        };
        if !self.queue.back().is_some_and(fits) {
            let (mut seg, mut off, mut new_segment) = (self.end_seg, self.end_off, false);
            if self.end_seg < min_seg {
                // A checkpoint cut the log: the next frame opens the segment after the cut.
                seg = min_seg;
                off = 0;
                new_segment = true;
            } else if off + (HEADER + len) as u64 > options.segment_size {
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
                file: None,
                prev_file: None,
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

        let listing = wal::list(&dir)?;
        let mut mvcc = Mvcc::<Loc>::new();
        let now = Instant::now();
        let mut files = BTreeMap::new();
        // The newest checkpoint, if any, holds the state of every segment before it.
        let (base, checkpoint) = match listing.checkpoints.last() {
            None => (0, None),
            Some(&cut) => {
                let path = wal::checkpoint_path(&dir, cut);
                let size = load_checkpoint(&path, cut, &mut mvcc, now)?;
                let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
                files.insert(checkpoint_id(cut), Arc::new(file));
                (cut, Some((mvcc.revision(), size)))
            }
        };
        let mut seqs: Vec<u64> = listing
            .segments
            .iter()
            .copied()
            .filter(|s| *s >= base)
            .collect();
        wal::check_contiguous(&dir, &seqs, base)?;
        // What a crash during the last checkpoint left: the covered segments, older
        // checkpoints, an unfinished one.
        let stale = listing
            .segments
            .iter()
            .filter(|s| **s < base)
            .map(|s| wal::segment_path(&dir, *s))
            .chain(
                listing
                    .checkpoints
                    .iter()
                    .filter(|c| **c < base)
                    .map(|c| wal::checkpoint_path(&dir, *c)),
            )
            .chain(listing.temps.iter().cloned())
            .collect::<Vec<_>>();
        remove_files(&dir, &stale)?;
        if seqs.is_empty() {
            wal::create_segment(&dir, base, options.segment_size)?;
            seqs.push(base);
        }
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
                    Record::Checkpoint { .. } | Record::Version { .. } => {
                        return Err(Error::Corrupt {
                            path: wal::segment_path(&dir, seg),
                            offset: base,
                            reason: "a checkpoint record in a log segment".into(),
                        });
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
        for &seq in &seqs {
            let path = wal::segment_path(&dir, seq);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            files.insert(seq, Arc::new(file));
        }
        let revision = mvcc.revision();
        let state = State {
            mvcc,
            watchers: Watchers::new(),
            durable_revision: revision,
            queue: VecDeque::new(),
            inflight: Vec::new(),
            writing: false,
            group_target: 1,
            last_sync: Duration::ZERO,
            group_deadline: None,
            next_seq: 0,
            pending_ops: 0,
            end_seg: tail.seq,
            end_off: tail.offset,
            min_seg: base,
            base_seg: base,
            checkpoint_bytes: checkpoint.map_or(0, |(_, size)| size),
            checkpointing: false,
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
            checkpointer: Mutex::new(None),
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
                checkpoint: checkpoint.map(|(revision, _)| revision),
            },
        ))
    }

    /// Writes a checkpoint now: the state of every segment before the current one (the kept
    /// versions since the compaction point, the leases) goes into one file, and those segments
    /// and older checkpoints are deleted. This is how disk space comes back after
    /// [`compact`](Store::compact), which starts one on its own once the log behind the current
    /// segment is two segments long and longer than the last checkpoint. Returns `false` if a
    /// checkpoint was already running. Blocking (it copies the live values): call it from
    /// `spawn_blocking` or a thread.
    pub fn checkpoint(&self) -> Result<bool> {
        self.owner.shared.checkpoint()
    }

    /// Bytes the store's log files take on disk (segments and checkpoint).
    pub fn disk_usage(&self) -> Result<u64> {
        let dir = self.dir();
        let listing = wal::list(dir)?;
        let paths = listing
            .segments
            .iter()
            .map(|s| wal::segment_path(dir, *s))
            .chain(
                listing
                    .checkpoints
                    .iter()
                    .map(|c| wal::checkpoint_path(dir, *c)),
            )
            .chain(listing.temps);
        let mut total = 0;
        for path in paths {
            use std::os::unix::fs::MetadataExt;
            match std::fs::metadata(&path) {
                Ok(m) => total += m.blocks() * 512,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Ok(total)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.owner.shared.dir
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// The writer's answer: at once when it led the group, else once batch `seq` is on disk.
    async fn durable(&self, commit: Commit) -> api::Result<()> {
        let shared = self.shared();
        let seq = match commit {
            Commit::Lead(batches) => {
                return off_worker(|| shared.write_group(&batches)).map_err(Into::into);
            }
            Commit::Wait(seq) => seq,
        };
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

/// Whether a writer that just appended should lead (write and sync the pending group itself).
enum Commit {
    /// The writer leads: it writes and syncs these batches itself ([`Shared::write_group`]).
    Lead(Vec<Arc<Batch>>),
    /// Another writer or the log thread will sync batch `seq`: wait for it.
    Wait(u64),
}

impl State {
    /// Whether the pending group should be written now rather than wait for more writers.
    fn group_ready(&self, options: &Options) -> bool {
        !options.group_wait || self.shutdown || self.pending_ops >= self.group_target
    }

    /// Takes every pending batch for writing: seals their frames and resolves their files.
    fn take(&mut self) -> Vec<Arc<Batch>> {
        debug_assert!(!self.writing);
        self.writing = true;
        self.group_target = std::mem::take(&mut self.pending_ops).max(1);
        self.group_deadline = None;
        let taken: Vec<Arc<Batch>> = self
            .queue
            .drain(..)
            .map(|mut b| {
                wal::seal(&mut b.buf);
                b.file = self.files.get(&b.seg).cloned();
                if b.new_segment {
                    b.prev_file = b
                        .seg
                        .checked_sub(1)
                        .and_then(|p| self.files.get(&p).cloned());
                }
                Arc::new(b)
            })
            .collect();
        self.inflight.extend(taken.iter().cloned());
        taken
    }

    /// Publishes written batches: readers see them, watchers get their events. Returns the
    /// sequence number writers wait for.
    fn publish(&mut self, batches: &[Arc<Batch>], took: Duration) -> u64 {
        self.writing = false;
        self.last_sync = took.min(Duration::from_millis(2));
        if let Some(revision) = batches.iter().map(|b| b.revision).max().filter(|r| *r > 0) {
            self.durable_revision = self.durable_revision.max(revision);
        }
        if !self.watchers.is_empty() {
            let events: Result<Vec<WatchEvent>> = batches
                .iter()
                .flat_map(|b| b.changes.iter())
                .map(|c| self.event(c))
                .collect();
            match events {
                Ok(events) => self.watchers.publish(&events),
                Err(e) => {
                    tracing::error!(error = %e, "reading back the log failed; watches end");
                    self.watchers.close();
                }
            }
        }
        self.watchers.advance(self.durable_revision);
        self.inflight.clear();
        batches.last().map_or(0, |b| b.seq)
    }
}

impl Shared {
    /// Writes and syncs `batches` (taken by this thread), then publishes and acknowledges them.
    fn write_group(&self, batches: &[Arc<Batch>]) -> Result<()> {
        let started = Instant::now();
        if let Err(e) = write_batches(self, batches) {
            tracing::error!(error = %e, "store log write failed; the store stops");
            let mut st = self.lock();
            st.failed = Some(e.to_string());
            st.writing = false;
            st.watchers.close();
            drop(st);
            self.durable.send_modify(|d| d.failed = true);
            self.wake.notify_all();
            return Err(e);
        }
        let took = started.elapsed();
        let mut st = self.lock();
        let seq = st.publish(batches, took);
        let more = !st.queue.is_empty();
        drop(st);
        self.durable.send_modify(|d| d.seq = d.seq.max(seq));
        if more {
            // Writers queued during the sync: the log thread takes them.
            self.wake.notify_one();
        }
        Ok(())
    }

    /// After a writer appended batch `seq`'s record under `st`: lead when the log is idle and the
    /// last group had one writer, otherwise leave it to the log thread. Groups of several
    /// writers stay with the log thread: a leader blocks its runtime worker for the sync, and
    /// the writers it wakes would wait behind it (measured: 16 clients lost up to 3x under CPU
    /// contention when the writer completing a group led it).
    fn commit(&self, mut st: MutexGuard<'_, State>, seq: u64) -> Commit {
        if !self.options.leader || st.writing || st.group_target > 1 {
            drop(st);
            self.wake.notify_one();
            return Commit::Wait(seq);
        }
        let batches = st.take();
        drop(st);
        Commit::Lead(batches)
    }
}

/// Runs `f` (a write and sync) on the calling thread, handing this runtime worker's other tasks
/// to another thread first (`block_in_place`) on a multi-threaded runtime: the leader's sync
/// then delays nobody but its own writer. Without that hand-off, tasks woken on the leader's
/// worker (watchers of the previous write) waited behind each sync: watch delivery to 1,000
/// watchers went from p99 0.33 ms to 51-238 ms (BENCHMARKS.md, store).
fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The log thread: writes the groups that no writer led (writers that arrived during another
/// group's sync, groups that waited for company), and expires leases.
fn log_thread(shared: &Shared) {
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
                if !st.queue.is_empty() && !st.writing {
                    // Group commit: when the last group had more writers than are waiting now,
                    // give the others (just acknowledged, about to write again) a moment to
                    // join, at most half a sync.
                    if st.group_ready(&shared.options) {
                        break;
                    }
                    let wait = st.last_sync / 2;
                    let deadline = *st.group_deadline.get_or_insert(now + wait);
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
                if st.shutdown && st.queue.is_empty() && !st.writing {
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
            st.take()
        };
        if shared.write_group(&batches).is_err() {
            return;
        }
    }
}

/// Writes `batches` in order (creating segments as they start) and syncs once.
fn write_batches(shared: &Shared, batches: &[Arc<Batch>]) -> Result<()> {
    let dir = &shared.dir;
    let mut current: Option<(u64, Arc<File>)> = None;
    for batch in batches {
        if batch.new_segment {
            // The old segment is complete: make it durable before the next one exists, so only
            // the last segment can ever end in a torn frame.
            let prev = current
                .take()
                .or_else(|| batch.prev_file.clone().map(|f| (batch.seg - 1, f)));
            if let Some((seq, file)) = prev {
                file.sync_data()
                    .map_err(|e| Error::io(&wal::segment_path(dir, seq), e))?;
            }
            let file = Arc::new(wal::create_segment(
                dir,
                batch.seg,
                shared.options.segment_size,
            )?);
            shared.lock().files.insert(batch.seg, file.clone());
            current = Some((batch.seg, file));
        } else if current.as_ref().is_none_or(|(seq, _)| *seq != batch.seg) {
            let file = batch
                .file
                .clone()
                .ok_or_else(|| Error::Failed(format!("log segment {} is not open", batch.seg)))?;
            current = Some((batch.seg, file));
        }
        let (_, file) = current.as_ref().expect("set above");
        file.write_all_at(&batch.buf, batch.off)
            .map_err(|e| Error::io(&wal::segment_path(dir, batch.seg), e))?;
    }
    if let Some((seq, file)) = &current {
        file.sync_data()
            .map_err(|e| Error::io(&wal::segment_path(dir, *seq), e))?;
    }
    Ok(())
}

/// Ids of checkpoint files in [`State::files`] (segments use their number).
const CHECKPOINT_BIT: u64 = 1 << 63;

/// The file id of the checkpoint that ends before segment `cut`.
fn checkpoint_id(cut: u64) -> u64 {
    CHECKPOINT_BIT | cut
}

/// Whether file id `id` is older than checkpoint `cut` (a segment before it or an older
/// checkpoint): what a completed checkpoint replaces.
fn replaced_by(id: u64, cut: u64) -> bool {
    if id & CHECKPOINT_BIT != 0 {
        id < checkpoint_id(cut)
    } else {
        id < cut
    }
}

/// Removes `paths` (a missing one is fine) and makes the removal durable.
fn remove_files(dir: &Path, paths: &[PathBuf]) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    wal::sync_dir(dir)
}

/// Loads checkpoint `path` (covering the segments before `cut`) into an empty index; returns
/// the file's size.
fn load_checkpoint(path: &Path, cut: u64, mvcc: &mut Mvcc<Loc>, now: Instant) -> Result<u64> {
    let corrupt = |offset: u64, reason: &str| Error::Corrupt {
        path: path.to_owned(),
        offset,
        reason: reason.to_owned(),
    };
    let mut header = None;
    let size = wal::read_checkpoint(path, |base, payload| {
        let decoded = wal::decode(payload, |record, at| {
            match (record, &header) {
                (
                    Record::Checkpoint {
                        revision,
                        compacted,
                        next_lease,
                        segment,
                    },
                    None,
                ) => {
                    if segment != cut {
                        return Err(corrupt(base, "checkpoint names another segment"));
                    }
                    header = Some(revision);
                    mvcc.set_revision(revision);
                    mvcc.set_compacted(compacted);
                    mvcc.set_next_lease_id(next_lease);
                }
                (Record::Grant { id, ttl_secs }, Some(_)) => {
                    let ttl = Duration::from_secs(ttl_secs);
                    mvcc.grant(id, ttl, now + ttl);
                }
                (
                    Record::Version {
                        key,
                        mod_revision,
                        create_revision,
                        version,
                        lease,
                        value,
                    },
                    Some(_),
                ) => {
                    let value = value.map(|v| Loc {
                        seg: checkpoint_id(cut),
                        off: base + at as u64,
                        len: v.len() as u32,
                    });
                    mvcc.restore(
                        key,
                        Version {
                            mod_revision,
                            create_revision,
                            version,
                            lease,
                            value,
                        },
                    );
                }
                _ => return Err(corrupt(base, "unexpected record in a checkpoint")),
            }
            Ok(())
        });
        match decoded {
            Ok(r) => r,
            Err(reason) => Err(corrupt(base, reason)),
        }
    })?;
    let Some(revision) = header else {
        return Err(corrupt(0, "checkpoint without a header"));
    };
    // The header's revision is the newest one covered (a dropped deletion may be newer than any
    // kept version).
    mvcc.set_revision(revision);
    Ok(size)
}

/// What a checkpoint copies, taken under the lock at the cut.
struct Cut {
    /// The first segment after the checkpoint.
    seg: u64,
    /// The last batch before the cut: the checkpoint waits until it is durable.
    last_batch: u64,
    revision: u64,
    compacted: u64,
    next_lease: LeaseId,
    leases: Vec<(LeaseId, u64)>,
    versions: Vec<(String, Version<Loc>)>,
}

impl Shared {
    /// Writes a checkpoint of the log before the current segment and deletes what it replaces.
    /// Returns `false` when another checkpoint is running. Blocking.
    fn checkpoint(&self) -> Result<bool> {
        let cut = {
            let mut st = self.lock();
            if let Some(msg) = &st.failed {
                return Err(Error::Failed(msg.clone()));
            }
            if st.checkpointing {
                return Ok(false);
            }
            st.checkpointing = true;
            let seg = st.end_seg + 1;
            st.min_seg = seg;
            Cut {
                seg,
                last_batch: st.next_seq,
                revision: st.mvcc.revision(),
                compacted: st.mvcc.compacted(),
                next_lease: st.mvcc.peek_next_lease_id(),
                leases: st
                    .mvcc
                    .leases()
                    .map(|(id, ttl)| (id, ttl.as_secs()))
                    .collect(),
                versions: st
                    .mvcc
                    .all_versions()
                    .map(|(k, v)| (k.to_owned(), v.clone()))
                    .collect(),
            }
        };
        let result = self.write_checkpoint(&cut);
        self.lock().checkpointing = false;
        result.map(|()| true)
    }

    fn write_checkpoint(&self, cut: &Cut) -> Result<()> {
        // Everything before the cut must be on disk before it is copied.
        loop {
            let durable = *self.durable.borrow();
            if durable.failed {
                return Err(Error::Failed("a log write failed".into()));
            }
            if durable.seq >= cut.last_batch {
                break;
            }
            self.wake.notify_one();
            std::thread::sleep(Duration::from_micros(200));
        }
        let files = self.lock().files.clone();
        let dir = &self.dir;
        let path = wal::checkpoint_path(dir, cut.seg);
        let tmp = path.with_extension("ckpt.tmp");
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let mut moved: std::collections::HashMap<(&str, u64), Loc> =
            std::collections::HashMap::new();
        let mut frame = vec![0; HEADER];
        let mut file_off = 0u64;
        let flush = |frame: &mut Vec<u8>, file_off: &mut u64| -> Result<()> {
            if frame.len() > HEADER {
                wal::seal(frame);
                file.write_all_at(frame, *file_off)
                    .map_err(|e| Error::io(&tmp, e))?;
                *file_off += frame.len() as u64;
                frame.truncate(HEADER);
            }
            Ok(())
        };
        Record::Checkpoint {
            revision: cut.revision,
            compacted: cut.compacted,
            next_lease: cut.next_lease,
            segment: cut.seg,
        }
        .encode(&mut frame);
        for &(id, ttl_secs) in &cut.leases {
            Record::Grant { id, ttl_secs }.encode(&mut frame);
        }
        for (key, v) in &cut.versions {
            let value = match v.value {
                Some(loc) => {
                    let file = files.get(&loc.seg).ok_or_else(|| {
                        Error::Failed(format!("no log file {} for a value", loc.seg))
                    })?;
                    let mut buf = vec![0; loc.len as usize];
                    file.read_exact_at(&mut buf, loc.off)
                        .map_err(|e| Error::io(&wal::segment_path(dir, loc.seg), e))?;
                    Some(buf)
                }
                None => None,
            };
            let record = Record::Version {
                key,
                mod_revision: v.mod_revision,
                create_revision: v.create_revision,
                version: v.version,
                lease: v.lease,
                value: value.as_deref(),
            };
            if frame.len() + record.encoded_len() > (1 << 20) {
                flush(&mut frame, &mut file_off)?;
            }
            if let (Some(at), Some(value)) = (record.encode(&mut frame), &value) {
                moved.insert(
                    (key.as_str(), v.mod_revision),
                    Loc {
                        seg: checkpoint_id(cut.seg),
                        off: file_off + at as u64,
                        len: value.len() as u32,
                    },
                );
            }
        }
        flush(&mut frame, &mut file_off)?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        wal::sync_dir(dir)?;
        // The checkpoint is durable: values move to it, and what it replaces goes.
        let reader = Arc::new(File::open(&path).map_err(|e| Error::io(&path, e))?);
        let stale = {
            let mut st = self.lock();
            st.files.insert(checkpoint_id(cut.seg), reader);
            let mut left = 0usize;
            for (key, v) in st.mvcc.versions_mut() {
                if let Some(loc) = &mut v.value
                    && replaced_by(loc.seg, cut.seg)
                {
                    match moved.get(&(key, v.mod_revision)) {
                        Some(new) => *loc = *new,
                        None => left += 1,
                    }
                }
            }
            if left > 0 {
                // Cannot happen (every version before the cut was copied); keep the old files.
                tracing::error!(left, "values outside the checkpoint; old log files kept");
                return Ok(());
            }
            let stale: Vec<u64> = st
                .files
                .keys()
                .copied()
                .filter(|id| replaced_by(*id, cut.seg))
                .collect();
            for id in &stale {
                st.files.remove(id);
            }
            st.base_seg = cut.seg;
            st.checkpoint_bytes = file_off;
            stale
        };
        let paths: Vec<PathBuf> = stale
            .into_iter()
            .map(|id| {
                if id & CHECKPOINT_BIT != 0 {
                    wal::checkpoint_path(dir, id & !CHECKPOINT_BIT)
                } else {
                    wal::segment_path(dir, id)
                }
            })
            .collect();
        remove_files(dir, &paths)?;
        tracing::debug!(
            segment = cut.seg,
            revision = cut.revision,
            bytes = file_off,
            "store checkpoint written"
        );
        Ok(())
    }

    /// After a compaction: checkpoint in the background once the log behind the current
    /// segment holds at least two segments and more bytes than the last checkpoint (so rewriting
    /// the live data costs at most as much as the log written since).
    fn maybe_checkpoint(self: &Arc<Self>) {
        let st = self.lock();
        let sealed = st.end_seg.saturating_sub(st.base_seg);
        if st.checkpointing
            || st.failed.is_some()
            || sealed < 2
            || sealed * self.options.segment_size < st.checkpoint_bytes
        {
            return;
        }
        drop(st);
        let shared = self.clone();
        let spawned = std::thread::Builder::new()
            .name("berth-store-checkpoint".into())
            .spawn(move || {
                if let Err(e) = shared.checkpoint() {
                    tracing::warn!(error = %e, "store checkpoint failed");
                }
            });
        match spawned {
            // The store's owner joins it before it lets go of the directory.
            Ok(handle) => {
                let mut slot = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(old) = slot.replace(handle) {
                    old.join().ok();
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not start the store checkpoint"),
        }
    }
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
        let (commit, result) = {
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
            (shared.commit(guard, seq), TxnResult { revision, prev })
        };
        self.durable(commit).await?;
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
        st.watchers.advance(st.durable_revision);
        Ok(st.watchers.add(prefix, after_revision, backlog))
    }

    async fn compact(&self, revision: u64) -> api::Result<()> {
        let shared = self.shared();
        let commit = {
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
            shared.commit(st, seq)
        };
        self.durable(commit).await?;
        self.owner.shared.maybe_checkpoint();
        Ok(())
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
        let (commit, id) = {
            let mut st = shared.lock();
            st.check_failed()?;
            let id = st.mvcc.next_lease_id();
            let (seq, _) = st.append(&Record::Grant { id, ttl_secs }, &shared.options);
            st.mvcc.grant(id, ttl, Instant::now() + ttl);
            (shared.commit(st, seq), id)
        };
        self.durable(commit).await?;
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
        let commit = {
            let mut st = shared.lock();
            st.check_failed()?;
            let seq = st.revoke(id, &shared.options)?;
            shared.commit(st, seq)
        };
        self.durable(commit).await
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
            writing: false,
            group_target: 1,
            last_sync: Duration::ZERO,
            group_deadline: None,
            next_seq: 0,
            pending_ops: 0,
            end_seg: 0,
            end_off: 100,
            min_seg: 0,
            base_seg: 0,
            checkpoint_bytes: 0,
            checkpointing: false,
            files: BTreeMap::new(),
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
