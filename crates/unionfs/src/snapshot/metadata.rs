//! The snapshot metadata (`<root>/metadata.log`): which snapshots exist, their kind, parent and
//! directory id, as an append-only log of small records, so that a change costs O(1) on disk
//! whatever the number of snapshots (a 10,000-layer image used to rewrite one JSON file of
//! every snapshot 10,000 times).
//!
//! Format: one record per line, `<checksum> <json>\n`, the checksum a 64-bit FNV-1a of the JSON
//! in hex. The first line is the header (version, backend, next directory id); each later line
//! is the list of operations (`put` a record, `del` a key) of one change, so a change is applied
//! whole or not at all. When the log holds more than twice as many operations as live snapshots
//! (plus a margin) it is compacted: rewritten as the header and one line of `put`s, to a
//! temporary file renamed over it.
//!
//! Sharing and crash safety: every change is made under an exclusive `flock` on
//! `<root>/metadata.lock`. Each process keeps the replayed state and the log's identity and
//! length; under the lock it reads only what other processes appended since (or everything,
//! when a compaction replaced the file). A line cut short by a crash (no newline, bad checksum,
//! and no valid line after it) is a torn tail: ignored, and cut off by the next writer; a bad
//! line followed by valid ones is corruption and an error, never silently dropped. Changes to
//! committed snapshots (image layers) are made durable (fsync before returning; compactions
//! also fsync the directory); an active snapshot or a view lives no longer than the container
//! or build that uses it, so losing its record in a power cut only leaves a directory that the
//! next open collects, and prepare/remove skip the fsync.
//!
//! A root written by an older version (`metadata.json`, the whole state rewritten on each
//! change) is read once and converted on its first change.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{Backend, SnapshotInfo, SnapshotKind};
use crate::{Error, Result};

const LOG_FILE: &str = "metadata.log";
const LEGACY_FILE: &str = "metadata.json";
const LOCK_FILE: &str = "metadata.lock";
const VERSION: u32 = 2;
/// Compaction slack: the log may hold this many operations more than twice the live records.
const COMPACT_MARGIN: u64 = 1024;

/// One snapshot's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: u64,
    pub(crate) kind: SnapshotKind,
    pub(crate) parent: Option<String>,
    /// Unix seconds.
    pub(crate) created: u64,
    /// Unix seconds.
    pub(crate) updated: u64,
}

impl Record {
    pub(crate) fn info(&self, name: &str) -> SnapshotInfo {
        SnapshotInfo {
            name: name.to_owned(),
            parent: self.parent.clone(),
            kind: self.kind,
            created: UNIX_EPOCH + Duration::from_secs(self.created),
            updated: UNIX_EPOCH + Duration::from_secs(self.updated),
        }
    }
}

/// One change to one key, as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Put { key: String, record: Record },
    Del { key: String },
}

/// The log's first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    version: u32,
    backend: Backend,
    next_id: u64,
}

/// The file of versions before the log.
#[derive(Debug, Deserialize)]
struct Legacy {
    backend: Backend,
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

/// Every snapshot's record, and the changes made to it since it was read.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub(crate) backend: Backend,
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
    pending: Vec<Op>,
}

impl Metadata {
    fn empty(backend: Backend) -> Self {
        Metadata {
            backend,
            next_id: 1,
            snapshots: BTreeMap::new(),
            pending: Vec::new(),
        }
    }

    /// The record of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&Record> {
        self.snapshots.get(key)
    }

    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.snapshots.contains_key(key)
    }

    /// Every record, sorted by key.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.snapshots.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.snapshots.len()
    }

    /// The directory id the next snapshot gets.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Adds or replaces the record of `key` (ids below [`Metadata::next_id`] are then taken).
    pub(crate) fn insert(&mut self, key: String, record: Record) {
        self.apply(Op::Put { key, record }, true);
    }

    /// Removes the record of `key`.
    pub(crate) fn remove(&mut self, key: &str) -> Option<Record> {
        let old = self.snapshots.get(key).cloned();
        if old.is_some() {
            self.apply(
                Op::Del {
                    key: key.to_owned(),
                },
                true,
            );
        }
        old
    }

    fn apply(&mut self, op: Op, record: bool) {
        match &op {
            Op::Put { key, record } => {
                self.next_id = self.next_id.max(record.id + 1);
                self.snapshots.insert(key.clone(), record.clone());
            }
            Op::Del { key } => {
                self.snapshots.remove(key);
            }
        }
        if record {
            self.pending.push(op);
        }
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The backend recorded in `root`'s metadata, if the root is in use.
pub(crate) fn recorded_backend(root: &Path) -> Option<Backend> {
    if let Ok(file) = File::open(root.join(LOG_FILE)) {
        let mut first = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(file), &mut first);
        let json = decode_line(first.as_bytes().strip_suffix(b"\n")?)?;
        return serde_json::from_slice::<Header>(json)
            .ok()
            .map(|h| h.backend);
    }
    let bytes = std::fs::read(root.join(LEGACY_FILE)).ok()?;
    serde_json::from_slice::<Legacy>(&bytes)
        .ok()
        .map(|m| m.backend)
}

/// Whether, and how, [`MetadataStore::update`] writes the changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteBack {
    /// Nothing changed.
    No,
    /// Appended, without waiting for the disk: the change concerns only an active snapshot or
    /// a view.
    Atomic,
    /// Appended and made durable (fsync) before returning.
    Durable,
}

/// What this process knows of the log: the state it replayed, and where it stopped.
#[derive(Debug)]
struct Cache {
    meta: Metadata,
    /// (device, inode) of the log replayed; `None` when there is no log yet.
    file: Option<(u64, u64)>,
    /// Bytes of the log replayed (the end of its last valid line).
    offset: u64,
    /// Operations in the log (for compaction).
    ops: u64,
}

/// Access to the metadata of one root.
#[derive(Debug)]
pub(crate) struct MetadataStore {
    root: PathBuf,
    backend: Backend,
    /// Serialises threads of this process (`flock` serialises processes) and holds the cache.
    cache: Mutex<Option<Cache>>,
    /// Bytes written to the log by this store (for tests of the O(1) cost of a change).
    written: AtomicU64,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn encode_line(json: &[u8]) -> Vec<u8> {
    let mut line = format!("{:016x} ", fnv1a(json)).into_bytes();
    line.extend_from_slice(json);
    line.push(b'\n');
    line
}

/// The JSON of a line (without its newline) whose checksum holds.
fn decode_line(line: &[u8]) -> Option<&[u8]> {
    if line.len() < 17 || line[16] != b' ' {
        return None;
    }
    let sum = u64::from_str_radix(std::str::from_utf8(&line[..16]).ok()?, 16).ok()?;
    let json = &line[17..];
    (fnv1a(json) == sum).then_some(json)
}

impl MetadataStore {
    pub(crate) fn new(root: PathBuf, backend: Backend) -> Self {
        MetadataStore {
            root,
            backend,
            cache: Mutex::new(None),
            written: AtomicU64::new(0),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.root.join(LOG_FILE)
    }

    /// Bytes this store has written to the log.
    #[cfg(test)]
    pub(crate) fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn corrupt(&self, at: u64, what: &str) -> Error {
        Error::InvalidRoot {
            path: self.log_path(),
            reason: format!("corrupt metadata log at byte {at}: {what}"),
        }
    }

    /// Replays the lines of `bytes` (the log from byte `start`) into `cache`; stops before a
    /// torn tail.
    fn replay(&self, cache: &mut Cache, bytes: &[u8], start: u64) -> Result<()> {
        let mut pos = 0;
        while pos < bytes.len() {
            let line = bytes[pos..]
                .iter()
                .position(|b| *b == b'\n')
                .and_then(|end| Some((decode_line(&bytes[pos..pos + end])?, end)));
            let Some((json, end)) = line else {
                // A torn tail, unless a valid line follows (then the log is damaged).
                let rest = &bytes[pos..];
                let valid_after = rest
                    .split(|b| *b == b'\n')
                    .skip(1)
                    .any(|l| decode_line(l).is_some());
                if valid_after {
                    return Err(self.corrupt(start + pos as u64, "a damaged record"));
                }
                break;
            };
            let at = start + pos as u64;
            if at == 0 {
                let header: Header = serde_json::from_slice(json)
                    .map_err(|e| self.corrupt(at, &format!("header: {e}")))?;
                if header.version > VERSION {
                    return Err(self.corrupt(
                        at,
                        &format!("version {} is newer than this program", header.version),
                    ));
                }
                cache.meta = Metadata::empty(header.backend);
                cache.meta.next_id = header.next_id;
            } else {
                let ops: Vec<Op> =
                    serde_json::from_slice(json).map_err(|e| self.corrupt(at, &e.to_string()))?;
                cache.ops += ops.len() as u64;
                for op in ops {
                    cache.meta.apply(op, false);
                }
            }
            pos += end + 1;
        }
        cache.offset = start + pos as u64;
        Ok(())
    }

    /// Brings the cache up to date with the log (under the lock).
    fn refresh(&self, slot: &mut Option<Cache>) -> Result<()> {
        let path = self.log_path();
        let stat = match std::fs::metadata(&path) {
            Ok(stat) => stat,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                *slot = Some(Cache {
                    meta: self.read_legacy()?,
                    file: None,
                    offset: 0,
                    ops: 0,
                });
                return Ok(());
            }
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        let identity = Some((stat.dev(), stat.ino()));
        let cache = match slot {
            Some(cache) if cache.file == identity && stat.len() >= cache.offset => cache,
            _ => slot.insert(Cache {
                meta: Metadata::empty(self.backend),
                file: identity,
                offset: 0,
                ops: 0,
            }),
        };
        if stat.len() > cache.offset {
            let mut file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
            let mut bytes = Vec::with_capacity((stat.len() - cache.offset) as usize);
            file.seek(SeekFrom::Start(cache.offset))
                .and_then(|_| file.read_to_end(&mut bytes))
                .map_err(|e| Error::io("read", &path, e))?;
            let start = cache.offset;
            self.replay(cache, &bytes, start)?;
        }
        Ok(())
    }

    /// The metadata of a root without a log: the old whole-state file, or nothing yet.
    fn read_legacy(&self) -> Result<Metadata> {
        let path = self.root.join(LEGACY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let legacy: Legacy = serde_json::from_slice(&bytes)
                    .map_err(|source| Error::Metadata { path, source })?;
                Ok(Metadata {
                    backend: legacy.backend,
                    next_id: legacy.next_id,
                    snapshots: legacy.snapshots,
                    pending: Vec::new(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Metadata::empty(self.backend)),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|source| Error::Metadata {
            path: self.log_path(),
            source,
        })
    }

    /// Writes the cache's pending changes: one appended line, or a compacted log.
    fn write(&self, cache: &mut Cache, durable: bool) -> Result<()> {
        let ops = std::mem::take(&mut cache.meta.pending);
        let live = cache.meta.len() as u64;
        if cache.file.is_none() || cache.ops + ops.len() as u64 > 2 * live + COMPACT_MARGIN {
            return self.compact(cache);
        }
        if ops.is_empty() {
            return Ok(());
        }
        let line = encode_line(&self.encode(&ops)?);
        let path = self.log_path();
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        // Cut off a torn tail left by a crash before appending after it.
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        if len > cache.offset {
            file.set_len(cache.offset)
                .map_err(|e| Error::io("truncate", &path, e))?;
        }
        file.write_all_at(&line, cache.offset)
            .and_then(|()| if durable { file.sync_data() } else { Ok(()) })
            .map_err(|e| Error::io("write", &path, e))?;
        cache.offset += line.len() as u64;
        cache.ops += ops.len() as u64;
        self.written.fetch_add(line.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Rewrites the log as the header and one line of every record, durably.
    fn compact(&self, cache: &mut Cache) -> Result<()> {
        let path = self.log_path();
        let tmp = self.root.join(format!("{LOG_FILE}.tmp"));
        let header = Header {
            version: VERSION,
            backend: cache.meta.backend,
            next_id: cache.meta.next_id,
        };
        let mut bytes = encode_line(&self.encode(&header)?);
        let puts: Vec<Op> = cache
            .meta
            .iter()
            .map(|(key, record)| Op::Put {
                key: key.clone(),
                record: record.clone(),
            })
            .collect();
        if !puts.is_empty() {
            bytes.extend(encode_line(&self.encode(&puts)?));
        }
        let mut file = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))?;
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync", &self.root, e))?;
        let stat = std::fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        cache.file = Some((stat.dev(), stat.ino()));
        cache.offset = bytes.len() as u64;
        cache.ops = puts.len() as u64;
        self.written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        // The log holds everything now: the old file would only mislead.
        match std::fs::remove_file(self.root.join(LEGACY_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", self.root.join(LEGACY_FILE), e)),
        }
        Ok(())
    }

    /// Runs `f` on the metadata under the lock; its changes are written as the [`WriteBack`]
    /// `f` returns says, before the lock is released. A root without a log gets one.
    pub(crate) fn update<R>(
        &self,
        f: impl FnOnce(&mut Metadata) -> Result<(R, WriteBack)>,
    ) -> Result<R> {
        let mut slot = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let lock_path = self.root.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::errno("lock", &lock_path, e))?;
        if let Err(e) = self.refresh(&mut slot) {
            *slot = None;
            return Err(e);
        }
        let cache = slot.as_mut().expect("refreshed");
        if cache.meta.backend != self.backend {
            return Err(Error::InvalidRoot {
                path: self.root.clone(),
                reason: format!(
                    "it holds {} snapshots, not {}",
                    cache.meta.backend, self.backend
                ),
            });
        }
        let outcome = match f(&mut cache.meta) {
            // A refusal (not found, wrong kind…) that changed nothing keeps the cache.
            Err(e) if cache.meta.pending.is_empty() => return Err(e),
            Err(e) => Err(e),
            Ok((result, write)) => match write {
                WriteBack::No if cache.meta.pending.is_empty() => return Ok(result),
                WriteBack::No => Err(Error::InvalidRoot {
                    path: self.root.clone(),
                    reason: "internal: a metadata change without a write".into(),
                }),
                WriteBack::Atomic => self.write(cache, false).map(|()| result),
                WriteBack::Durable => self.write(cache, true).map(|()| result),
            },
        };
        if outcome.is_err() {
            // The cached state may hold changes that were not written: read it again.
            *slot = None;
        }
        outcome
    }

    /// Runs `f` on a consistent copy of the metadata.
    pub(crate) fn read_with<R>(&self, f: impl FnOnce(&Metadata) -> Result<R>) -> Result<R> {
        self.update(|m| f(m).map(|r| (r, WriteBack::No)))
    }

    /// Whether the root has a log yet (a root is recorded on first open).
    pub(crate) fn has_log(&self) -> bool {
        self.log_path().exists()
    }
}
