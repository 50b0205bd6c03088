//! The content-addressed blob store: bytes by digest, written atomically and verified.
//!
//! Layout under the store's directory: `blobs/<algorithm>/<hex>` holds committed blobs (the same
//! shape as an OCI image layout's `blobs/`), `ingest/` holds blobs being written. A writer streams
//! into a temp file in `ingest/` while hashing; [`BlobWriter::commit`] checks the digest and renames
//! the file into `blobs/`, so a blob that fails verification is never visible and a reader never
//! sees a half-written one. Concurrent writers of the same blob each write their own temp file; the
//! first rename wins and the others find the blob present (its bytes are identical by definition).
//! The file system is the size index: a blob's size is its file's length.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use berth_api::{Algorithm, Digest, Hasher};
use serde::Deserialize;

use crate::error::{Error, Result};

mod resumable;

pub use resumable::{ResumableWriter, UploadHash};

/// The largest JSON document (manifest, index, config) Berth reads into memory.
pub const MAX_JSON_SIZE: u64 = 4 << 20;

/// What the store knows about one blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobInfo {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// Options for [`ContentStore::gc`].
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Blobs committed less than this long ago are kept even when unreferenced, so that content
    /// written by an operation still in progress (a push, a build) survives a concurrent GC.
    pub grace: Duration,
    /// Temp files in `ingest/` untouched for this long are abandoned writes and are removed.
    pub stale_ingest: Duration,
    /// Report what would be removed without removing it.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::ZERO,
            stale_ingest: Duration::from_secs(24 * 3600),
            dry_run: false,
        }
    }
}

/// What a GC run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs reachable from the roots (kept).
    pub kept: usize,
    /// Blobs removed (or that would be, on a dry run).
    pub removed: Vec<BlobInfo>,
    /// Bytes freed.
    pub freed: u64,
    /// Abandoned temp files removed.
    pub stale_ingests: usize,
}

/// A content-addressed blob store rooted at a directory.
///
/// Cheap to clone; clones share the same directory. Safe to use from several threads and from
/// several processes at once.
#[derive(Debug, Clone)]
pub struct ContentStore {
    inner: Arc<Paths>,
}

#[derive(Debug)]
struct Paths {
    root: PathBuf,
    blobs: PathBuf,
    ingest: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ContentStore {
    /// Opens (creating if needed) the store at `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let root = dir.as_ref().to_path_buf();
        let blobs = root.join("blobs");
        let ingest = root.join("ingest");
        for dir in [&blobs, &ingest] {
            fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        Ok(ContentStore {
            inner: Arc::new(Paths {
                root,
                blobs,
                ingest,
            }),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The directory for temp files: on the store's file system, so a file written there can be
    /// adopted with [`ContentStore::ingest_file`] by a rename.
    pub fn ingest_dir(&self) -> &Path {
        &self.inner.ingest
    }

    /// Where the blob `digest` lives (whether or not it is present). Not public: readers open a
    /// blob ([`ContentStore::open_blob`]), writers go through a verifying writer.
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner
            .blobs
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Starts writing a blob hashed with SHA-256 (the digest is checked at commit; committing
    /// against a SHA-512 digest re-reads the temp file once).
    pub fn begin_write(&self) -> Result<BlobWriter> {
        self.begin_write_with(Algorithm::Sha256)
    }

    /// Starts writing a blob hashed with `algorithm` as it streams.
    pub fn begin_write_with(&self, algorithm: Algorithm) -> Result<BlobWriter> {
        let (path, file) = self.temp_file()?;
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(BufWriter::with_capacity(256 * 1024, file)),
            path,
            hasher: Some(algorithm.hasher()),
            size: 0,
        })
    }

    /// Creates a fresh temp file in the ingest directory. The caller owns (and removes) it.
    pub(crate) fn temp_file(&self) -> Result<(PathBuf, File)> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self
                .inner
                .ingest
                .join(format!("{}-{n}-{now:x}", std::process::id()));
            match fs::OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create temp file", path, e)),
            }
        }
    }

    /// Writes `data` as a blob and returns its SHA-256 digest.
    pub fn write_blob(&self, data: &[u8]) -> Result<BlobInfo> {
        let mut writer = self.begin_write()?;
        writer.write_all(data).map_err(|e| writer.io_error(e))?;
        writer.commit_computed()
    }

    /// Writes `data` as a blob that must hash to `expected`.
    pub fn write_blob_verified(&self, data: &[u8], expected: &Digest) -> Result<BlobInfo> {
        let mut writer = self.begin_write_with(expected.algorithm())?;
        writer.write_all(data).map_err(|e| writer.io_error(e))?;
        writer.commit(expected)
    }

    /// Adopts an already-written file as the blob `expected`: hashes it, and on a match moves it
    /// into the store (a rename when `path` is on the store's file system, e.g. in
    /// [`ContentStore::ingest_dir`]; a verified copy otherwise, leaving `path` in place). On a
    /// mismatch nothing is stored and `path` is left for the caller to remove.
    pub fn ingest_file(&self, path: &Path, expected: &Digest) -> Result<BlobInfo> {
        let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut hasher = expected.algorithm().hasher();
        let size = io::copy(&mut file, &mut hasher).map_err(|e| Error::io("read", path, e))?;
        let found = hasher.finish();
        if found != *expected {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                found,
            });
        }
        let target = self.blob_path(expected);
        if target.exists() {
            return Ok(BlobInfo {
                digest: expected.clone(),
                size,
            });
        }
        file.sync_data().map_err(|e| Error::io("sync", path, e))?;
        self.ensure_algorithm_dir(expected.algorithm())?;
        match fs::rename(path, &target) {
            Ok(()) => Ok(BlobInfo {
                digest: expected.clone(),
                size,
            }),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let mut src = File::open(path).map_err(|e| Error::io("open", path, e))?;
                let mut writer = self.begin_write_with(expected.algorithm())?;
                io::copy(&mut src, &mut writer).map_err(|e| writer.io_error(e))?;
                writer.commit(expected)
            }
            Err(e) => Err(Error::io("rename into store", target, e)),
        }
    }

    /// Makes the upload file at `path`, written with a [`ResumableWriter`] on this store's file
    /// system (e.g. a directory beside [`ContentStore::ingest_dir`]), the blob `expected` once
    /// it is verified: with `hash` when it covers the whole file under `expected`'s algorithm
    /// (every byte is then hashed exactly once), else by reading the file. On a mismatch
    /// ([`Error::DigestMismatch`]) nothing is stored and the file is left to the caller. The
    /// file is made durable, then renamed in; when the blob is already stored, the file is left
    /// alone and the stored blob's time is refreshed.
    pub fn commit_upload(
        &self,
        path: &Path,
        hash: Option<UploadHash>,
        expected: &Digest,
    ) -> Result<BlobInfo> {
        let size = fs::metadata(path)
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        let found = match hash.and_then(|h| h.finish_for(expected.algorithm(), size)) {
            Some(found) => found,
            None => {
                let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
                let mut hasher = expected.algorithm().hasher();
                io::copy(&mut file, &mut hasher).map_err(|e| Error::io("read", path, e))?;
                hasher.finish()
            }
        };
        if found != *expected {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                found,
            });
        }
        self.adopt_verified(path, expected)
    }

    /// Refreshes a stored blob's time, so a GC grace period counts from now (a registry mount
    /// of a blob that is about to be referenced again). [`Error::BlobNotFound`] when absent.
    pub fn touch(&self, digest: &Digest) -> Result<BlobInfo> {
        let target = self.blob_path(digest);
        let file = File::open(&target).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::BlobNotFound {
                    digest: digest.clone(),
                }
            } else {
                Error::io("open", &target, e)
            }
        })?;
        let size = file
            .metadata()
            .and_then(|m| {
                file.set_modified(std::time::SystemTime::now())?;
                Ok(m.len())
            })
            .map_err(|e| Error::io("touch", &target, e))?;
        Ok(BlobInfo {
            digest: digest.clone(),
            size,
        })
    }

    /// Moves `path` into the store as blob `digest` without reading it: for a file whose digest
    /// was verified as it was written ([`ContentStore::commit_upload`]). The file is made
    /// durable, then renamed in (on another file system it is copied and verified). When the
    /// blob is already stored, `path` is left alone and the stored blob's time is refreshed.
    fn adopt_verified(&self, path: &Path, digest: &Digest) -> Result<BlobInfo> {
        if let Ok(info) = self.touch(digest) {
            return Ok(info);
        }
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let size = file
            .sync_data()
            .and_then(|()| file.metadata())
            .map_err(|e| Error::io("sync", path, e))?
            .len();
        self.ensure_algorithm_dir(digest.algorithm())?;
        let target = self.blob_path(digest);
        match fs::rename(path, &target) {
            Ok(()) => Ok(BlobInfo {
                digest: digest.clone(),
                size,
            }),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => self.ingest_file(path, digest),
            Err(e) => Err(Error::io("rename into store", target, e)),
        }
    }

    /// True when the blob is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The blob's size, or [`Error::BlobNotFound`].
    pub fn stat(&self, digest: &Digest) -> Result<BlobInfo> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(BlobInfo {
                digest: digest.clone(),
                size: meta.len(),
            }),
            Ok(_) => Err(Error::BlobNotFound {
                digest: digest.clone(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::BlobNotFound {
                digest: digest.clone(),
            }),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    /// Opens the blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::BlobNotFound {
                    digest: digest.clone(),
                }
            } else {
                Error::io("open", path, e)
            }
        })
    }

    /// Reads a whole blob of at most `limit` bytes (manifests, configs).
    pub fn read_limited(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let info = self.stat(digest)?;
        if info.size > limit {
            return Err(Error::InvalidImage {
                digest: digest.clone(),
                reason: format!(
                    "document of {} bytes exceeds the {limit}-byte limit",
                    info.size
                ),
            });
        }
        let path = self.blob_path(digest);
        let mut data = Vec::with_capacity(info.size as usize);
        self.open_blob(digest)?
            .take(limit)
            .read_to_end(&mut data)
            .map_err(|e| Error::io("read", path, e))?;
        Ok(data)
    }

    /// Reads a JSON document blob (at most [`MAX_JSON_SIZE`]).
    pub fn read_json(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.read_limited(digest, MAX_JSON_SIZE)
    }

    /// Removes a blob. Returns whether it was present.
    pub fn delete(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    /// Every committed blob, sorted by digest.
    pub fn list(&self) -> Result<Vec<BlobInfo>> {
        let mut out = Vec::new();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.inner.blobs.join(algorithm.as_str());
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read directory", dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(digest) = Digest::new(algorithm, &name) else {
                    continue;
                };
                let meta = entry
                    .metadata()
                    .map_err(|e| Error::io("stat", entry.path(), e))?;
                if meta.is_file() {
                    out.push(BlobInfo {
                        digest,
                        size: meta.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// The blobs reachable from `roots`: the roots themselves and, for every reachable manifest or
    /// index, the config, layers, sub-manifests, blobs and subject it names.
    pub fn reachable(&self, roots: impl IntoIterator<Item = Digest>) -> Result<HashSet<Digest>> {
        let mut seen = HashSet::new();
        let mut queue: VecDeque<Digest> = roots.into_iter().collect();
        while let Some(digest) = queue.pop_front() {
            if !seen.insert(digest.clone()) {
                continue;
            }
            for child in self.children(&digest)? {
                if !seen.contains(&child) {
                    queue.push_back(child);
                }
            }
        }
        Ok(seen)
    }

    /// Digests a blob refers to, if it is a manifest or index; empty otherwise.
    fn children(&self, digest: &Digest) -> Result<Vec<Digest>> {
        let Ok(info) = self.stat(digest) else {
            return Ok(Vec::new());
        };
        if info.size > MAX_JSON_SIZE || info.size < 2 {
            return Ok(Vec::new());
        }
        let mut first = [0u8; 1];
        let mut file = self.open_blob(digest)?;
        if file.read_exact(&mut first).is_err() || first[0] != b'{' {
            return Ok(Vec::new());
        }
        let data = self.read_json(digest)?;
        let Ok(refs) = serde_json::from_slice::<References>(&data) else {
            return Ok(Vec::new());
        };
        Ok(refs
            .config
            .into_iter()
            .chain(refs.subject)
            .chain(refs.layers.into_iter().flatten())
            .chain(refs.manifests.into_iter().flatten())
            .chain(refs.blobs.into_iter().flatten())
            .filter_map(|d| d.digest.parse().ok())
            .collect())
    }

    /// Removes every blob not reachable from `roots` (see [`ContentStore::reachable`]) and stale
    /// temp files. The caller makes sure no writer is between committing a blob and recording a
    /// root for it, or sets [`GcOptions::grace`].
    pub fn gc(
        &self,
        roots: impl IntoIterator<Item = Digest>,
        options: &GcOptions,
    ) -> Result<GcReport> {
        let keep = self.reachable(roots)?;
        self.retain(&keep, options)
    }

    /// Removes every blob not in `keep` (no reference walking) and stale temp files.
    pub fn retain(&self, keep: &HashSet<Digest>, options: &GcOptions) -> Result<GcReport> {
        let now = SystemTime::now();
        let mut report = GcReport::default();
        for blob in self.list()? {
            if keep.contains(&blob.digest) {
                report.kept += 1;
                continue;
            }
            let path = self.blob_path(&blob.digest);
            if !options.grace.is_zero() && is_younger(&path, now, options.grace) {
                report.kept += 1;
                continue;
            }
            if !options.dry_run {
                self.delete(&blob.digest)?;
            }
            report.freed += blob.size;
            report.removed.push(blob);
        }
        let dir = &self.inner.ingest;
        let entries = fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !is_younger(&path, now, options.stale_ingest) {
                if !options.dry_run {
                    let _ = fs::remove_file(&path);
                }
                report.stale_ingests += 1;
            }
        }
        Ok(report)
    }

    fn ensure_algorithm_dir(&self, algorithm: Algorithm) -> Result<()> {
        let dir = self.inner.blobs.join(algorithm.as_str());
        fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", dir, e))
    }
}

fn is_younger(path: &Path, now: SystemTime, age: Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .map(|modified| now.duration_since(modified).unwrap_or_default() < age)
        .unwrap_or(true)
}

#[derive(Deserialize)]
struct References {
    config: Option<DescriptorRef>,
    subject: Option<DescriptorRef>,
    layers: Option<Vec<DescriptorRef>>,
    manifests: Option<Vec<DescriptorRef>>,
    blobs: Option<Vec<DescriptorRef>>,
}

#[derive(Deserialize)]
struct DescriptorRef {
    digest: String,
}

/// A blob being written: hashes the bytes as they stream into a temp file.
///
/// Finish with [`BlobWriter::commit`] (verify against an expected digest) or
/// [`BlobWriter::commit_computed`] (take whatever digest the bytes have). Dropping an uncommitted
/// writer removes its temp file.
pub struct BlobWriter {
    store: ContentStore,
    file: Option<BufWriter<File>>,
    path: PathBuf,
    hasher: Option<Hasher>,
    size: u64,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of the bytes written so far (under the writer's algorithm).
    pub fn digest(&self) -> Digest {
        match &self.hasher {
            Some(h) => h.clone().finish(),
            None => Digest::sha256(b""),
        }
    }

    /// The temp file being written.
    pub fn temp_path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, e: io::Error) -> Error {
        Error::io("write", &self.path, e)
    }

    /// Verifies the content against `expected` and makes it visible as that blob. On a mismatch
    /// the temp file is removed and nothing is stored.
    pub fn commit(mut self, expected: &Digest) -> Result<BlobInfo> {
        let found = self.finish_hash(Some(expected.algorithm()))?;
        if found != *expected {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                found,
            });
        }
        self.place(found)
    }

    /// Makes the content visible under the digest it hashes to.
    pub fn commit_computed(mut self) -> Result<BlobInfo> {
        let found = self.finish_hash(None)?;
        self.place(found)
    }

    fn finish_hash(&mut self, algorithm: Option<Algorithm>) -> Result<Digest> {
        let file = self.file.take().expect("writer used after commit");
        let file = file
            .into_inner()
            .map_err(|e| Error::io("write", &self.path, e.into_error()))?;
        file.sync_data()
            .map_err(|e| Error::io("sync", &self.path, e))?;
        let computed = self.hasher.take().expect("hasher present").finish();
        match algorithm {
            Some(algorithm) if algorithm != computed.algorithm() => {
                let mut hasher = algorithm.hasher();
                let mut file =
                    File::open(&self.path).map_err(|e| Error::io("open", &self.path, e))?;
                io::copy(&mut file, &mut hasher).map_err(|e| Error::io("read", &self.path, e))?;
                Ok(hasher.finish())
            }
            _ => Ok(computed),
        }
    }

    fn place(&mut self, digest: Digest) -> Result<BlobInfo> {
        let target = self.store.blob_path(&digest);
        let info = BlobInfo {
            digest,
            size: self.size,
        };
        if target.is_file() {
            return Ok(info);
        }
        self.store.ensure_algorithm_dir(info.digest.algorithm())?;
        fs::rename(&self.path, &target).map_err(|e| Error::io("rename into store", &target, e))?;
        self.path = PathBuf::new();
        Ok(info)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already committed"))?;
        let n = file.write(buf)?;
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&buf[..n]);
        }
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}
