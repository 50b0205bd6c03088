//! The snapshot metadata file (`<root>/metadata.json`): which snapshots exist, their kind,
//! parent and directory id. Every change is made under an exclusive `flock` on
//! `<root>/metadata.lock` and written atomically (temporary file, rename), so it is shared
//! safely by several processes. Changes to committed snapshots (image layers) are also made
//! durable (fsync of the file and the directory); an active snapshot or a view lives no longer
//! than the container or build that uses it, so losing its record in a power cut only leaves a
//! directory that the next open collects, and prepare/remove skip the two fsyncs.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{Backend, Info, Kind};
use crate::{Error, Result};

const METADATA_FILE: &str = "metadata.json";
const LOCK_FILE: &str = "metadata.lock";

/// One snapshot's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: u64,
    pub(crate) kind: Kind,
    pub(crate) parent: Option<String>,
    /// Unix seconds.
    pub(crate) created: u64,
    /// Unix seconds.
    pub(crate) updated: u64,
}

impl Record {
    pub(crate) fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_owned(),
            parent: self.parent.clone(),
            kind: self.kind,
            created: UNIX_EPOCH + Duration::from_secs(self.created),
            updated: UNIX_EPOCH + Duration::from_secs(self.updated),
        }
    }
}

/// The whole metadata file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Metadata {
    pub(crate) version: u32,
    pub(crate) backend: Backend,
    pub(crate) next_id: u64,
    pub(crate) snapshots: BTreeMap<String, Record>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The backend recorded in `root`'s metadata, if the root is in use.
pub(crate) fn recorded_backend(root: &Path) -> Option<Backend> {
    let bytes = std::fs::read(root.join(METADATA_FILE)).ok()?;
    serde_json::from_slice::<Metadata>(&bytes)
        .ok()
        .map(|m| m.backend)
}

/// Whether, and how, [`MetadataStore::update`] writes the metadata back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteBack {
    /// Nothing changed.
    No,
    /// Atomically (rename), without waiting for the disk: the change concerns only an active
    /// snapshot or a view.
    Atomic,
    /// Atomically and durably (fsync of the file and the directory before returning).
    Durable,
}

/// Access to the metadata file of one root.
#[derive(Debug)]
pub(crate) struct MetadataStore {
    root: PathBuf,
    backend: Backend,
    /// Serialises threads of this process (`flock` serialises processes).
    guard: Mutex<()>,
}

impl MetadataStore {
    pub(crate) fn new(root: PathBuf, backend: Backend) -> Self {
        MetadataStore {
            root,
            backend,
            guard: Mutex::new(()),
        }
    }

    fn path(&self) -> PathBuf {
        self.root.join(METADATA_FILE)
    }

    fn read(&self) -> Result<Metadata> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| Error::Metadata { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Metadata {
                version: 1,
                backend: self.backend,
                next_id: 1,
                snapshots: BTreeMap::new(),
            }),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    fn write(&self, meta: &Metadata, durable: bool) -> Result<()> {
        let path = self.path();
        let tmp = self.root.join(format!("{METADATA_FILE}.tmp"));
        let bytes = serde_json::to_vec(meta).map_err(|source| Error::Metadata {
            path: path.clone(),
            source,
        })?;
        let mut file = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        file.write_all(&bytes)
            .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
            .map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))?;
        if !durable {
            return Ok(());
        }
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync", &self.root, e))
    }

    /// Runs `f` on the metadata under the lock; the changed metadata is written back as the
    /// [`WriteBack`] `f` returns says, before the lock is released.
    pub(crate) fn update<R>(
        &self,
        f: impl FnOnce(&mut Metadata) -> Result<(R, WriteBack)>,
    ) -> Result<R> {
        let _thread = self
            .guard
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
        let mut meta = self.read()?;
        if meta.backend != self.backend {
            return Err(Error::InvalidRoot {
                path: self.root.clone(),
                reason: format!("it holds {} snapshots, not {}", meta.backend, self.backend),
            });
        }
        let (result, write) = f(&mut meta)?;
        match write {
            WriteBack::No => {}
            WriteBack::Atomic => self.write(&meta, false)?,
            WriteBack::Durable => self.write(&meta, true)?,
        }
        Ok(result)
    }

    /// Runs `f` on a consistent copy of the metadata.
    pub(crate) fn read_with<R>(&self, f: impl FnOnce(&Metadata) -> Result<R>) -> Result<R> {
        self.update(|m| f(m).map(|r| (r, WriteBack::No)))
    }
}
