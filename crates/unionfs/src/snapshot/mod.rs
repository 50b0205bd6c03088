//! The [`Snapshotter`] trait, in the spirit of containerd's: snapshots are named directories
//! stacked on a parent chain. `prepare` makes a writable (active) snapshot, `view` a read-only
//! one, `commit` turns an active snapshot into an immutable layer others can build on. Two
//! implementations share one on-disk layout and metadata file: [`OverlaySnapshotter`] (kernel
//! overlayfs, no copying) and [`CopySnapshotter`] (full copies, for hosts without overlay).

mod copy_tree;
mod core;
mod metadata;

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::layer::{ApplyOptions, ApplyStats, DiffOptions, DiffStats};
use crate::{Mount, Result};

pub use self::copy_tree::copy_dir_in_root;
use self::core::Core;

/// The state of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// Read-only, made by [`Snapshotter::view`]; cannot be committed.
    View,
    /// Writable, made by [`Snapshotter::prepare`]; can be committed.
    Active,
    /// Immutable, made by [`Snapshotter::commit`]; can be a parent.
    Committed,
}

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotKind::View => "view",
            SnapshotKind::Active => "active",
            SnapshotKind::Committed => "committed",
        })
    }
}

/// What is known about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// Its key (active, view) or name (committed).
    pub name: String,
    /// The committed snapshot it is built on.
    pub parent: Option<String>,
    /// Its state.
    pub kind: SnapshotKind,
    /// When it was prepared.
    pub created: SystemTime,
    /// When it last changed state (commit).
    pub updated: SystemTime,
}

/// Disk use of one snapshot's own layer (not its parents').
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// Bytes allocated on disk (hard-linked files counted once).
    pub size: u64,
    /// Number of inodes.
    pub inodes: u64,
}

/// Which implementation backs a snapshot root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Backend {
    /// [`OverlaySnapshotter`].
    Overlay,
    /// [`CopySnapshotter`].
    Copy,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Overlay => "overlay",
            Backend::Copy => "copy",
        })
    }
}

impl Backend {
    /// The backend for `root`: the one recorded there if the root is already in use, otherwise
    /// overlay when this process can mount an overlay with several lower layers on `root`'s
    /// filesystem (root privileges, kernel support, a suitable filesystem), else copy.
    pub fn detect(root: &Path) -> Backend {
        if let Some(backend) = metadata::recorded_backend(root) {
            return backend;
        }
        if core::overlay_works(root) {
            Backend::Overlay
        } else {
            Backend::Copy
        }
    }
}

/// Opens (creating if needed) the snapshot root `root` with the [`Backend::detect`]ed backend.
pub fn open(root: impl AsRef<Path>) -> Result<Box<dyn Snapshotter>> {
    let root = root.as_ref();
    Ok(match Backend::detect(root) {
        Backend::Overlay => Box::new(OverlaySnapshotter::new(root)?),
        Backend::Copy => Box::new(CopySnapshotter::new(root)?),
    })
}

/// A store of layered snapshots. All methods are safe to call from several threads and from
/// several processes sharing one root (metadata updates hold a file lock).
///
/// Keys are free-form strings (image layers typically use their chain ID, containers their ID).
pub trait Snapshotter: Send + Sync {
    /// Which implementation this is.
    fn backend(&self) -> Backend;

    /// The directory this snapshotter keeps its snapshots and metadata in.
    fn root(&self) -> &Path;

    /// Creates a writable snapshot `key` on the committed snapshot `parent` (empty when `None`)
    /// and returns the mounts that show it.
    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>>;

    /// Creates a read-only snapshot `key` of the committed snapshot `parent` and returns its
    /// mounts.
    fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>>;

    /// Turns the active snapshot `key` into the committed snapshot `name`; `key` is gone
    /// afterwards. Unmount it first.
    fn commit(&self, name: &str, key: &str) -> Result<()>;

    /// Removes a snapshot and its files. A committed snapshot with children cannot be removed.
    /// Unmount it first.
    fn remove(&self, key: &str) -> Result<()>;

    /// Describes one snapshot.
    fn stat(&self, key: &str) -> Result<SnapshotInfo>;

    /// Describes every snapshot, sorted by name.
    fn list(&self) -> Result<Vec<SnapshotInfo>>;

    /// Disk use of a snapshot's own layer.
    fn usage(&self, key: &str) -> Result<Usage>;

    /// The mounts that show an active or view snapshot (as `prepare`/`view` returned them).
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// Applies an uncompressed layer tar stream to the active snapshot `key` without mounting
    /// it (the overlay backend writes into the upper dir, with overlay-form whiteouts). The
    /// whiteout mode in `opts` is chosen by the backend. If it fails, the snapshot is removed:
    /// a half-applied layer never stays around.
    fn apply_layer(&self, key: &str, tar: &mut dyn Read, opts: &ApplyOptions)
    -> Result<ApplyStats>;

    /// Writes the changes of snapshot `key` (active or committed) against its parent to `out`
    /// as an uncompressed OCI layer tar stream.
    fn diff(&self, key: &str, out: &mut dyn Write, opts: &DiffOptions) -> Result<DiffStats>;

    /// Unpacks a layer: prepares a temporary snapshot on `parent`, applies `tar` to it and
    /// commits it as `name` (e.g. the layer's chain ID). Nothing is left behind on failure.
    /// Fails with [`crate::Error::AlreadyExists`] if `name` exists (another unpack got there
    /// first: the layer is there, use it).
    fn unpack_layer(
        &self,
        name: &str,
        parent: Option<&str>,
        tar: &mut dyn Read,
        opts: &ApplyOptions,
    ) -> Result<ApplyStats> {
        if self.stat(name).is_ok() {
            return Err(crate::Error::AlreadyExists { key: name.into() });
        }
        let key = core::temporary_key("extract", name);
        self.prepare(&key, parent)?;
        let stats = self.apply_layer(&key, tar, opts)?;
        if let Err(e) = self.commit(name, &key) {
            let _ = self.remove(&key);
            return Err(e);
        }
        Ok(stats)
    }
}

macro_rules! delegate_snapshotter {
    ($ty:ty) => {
        impl Snapshotter for $ty {
            fn backend(&self) -> Backend {
                self.core.backend()
            }
            fn root(&self) -> &Path {
                self.core.root()
            }
            fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>> {
                self.core.create(key, parent, SnapshotKind::Active)
            }
            fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>> {
                self.core.create(key, parent, SnapshotKind::View)
            }
            fn commit(&self, name: &str, key: &str) -> Result<()> {
                self.core.commit(name, key)
            }
            fn remove(&self, key: &str) -> Result<()> {
                self.core.remove(key)
            }
            fn stat(&self, key: &str) -> Result<SnapshotInfo> {
                self.core.stat(key)
            }
            fn list(&self) -> Result<Vec<SnapshotInfo>> {
                self.core.list()
            }
            fn usage(&self, key: &str) -> Result<Usage> {
                self.core.usage(key)
            }
            fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
                self.core.mounts(key)
            }
            fn apply_layer(
                &self,
                key: &str,
                tar: &mut dyn Read,
                opts: &ApplyOptions,
            ) -> Result<ApplyStats> {
                self.core.apply_layer(key, tar, opts)
            }
            fn diff(
                &self,
                key: &str,
                out: &mut dyn Write,
                opts: &DiffOptions,
            ) -> Result<DiffStats> {
                self.core.diff(key, out, opts)
            }
        }
    };
}

/// Snapshots as overlayfs layers: committed snapshots are lower dirs, an active snapshot is an
/// upper dir and work dir over its parent chain, so preparing a snapshot copies nothing.
///
/// Layout under the root: `metadata.log` (append-only, see the crate docs), `snapshots/<id>/fs` (the
/// layer), `snapshots/<id>/work` (overlay's work dir). Long parent chains are mounted through
/// the fd-based mount API (see [`Mount::mount`]).
#[derive(Debug)]
pub struct OverlaySnapshotter {
    core: Core,
}

impl OverlaySnapshotter {
    /// Opens (creating if needed) an overlay snapshot root. Fails if the root was created by
    /// another backend or its path contains `:` or `,` (which overlay options cannot carry).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        Ok(OverlaySnapshotter {
            core: Core::open(root.into(), Backend::Overlay)?,
        })
    }
}

delegate_snapshotter!(OverlaySnapshotter);

/// Snapshots as full directory copies: preparing on a parent copies the parent's tree
/// (`copy_file_range`, so reflinks where the filesystem has them) and mounts are bind mounts.
/// Works without overlayfs and, except for mounting, without root.
#[derive(Debug)]
pub struct CopySnapshotter {
    core: Core,
}

impl CopySnapshotter {
    /// Opens (creating if needed) a copy snapshot root. Fails if the root was created by
    /// another backend.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        Ok(CopySnapshotter {
            core: Core::open(root.into(), Backend::Copy)?,
        })
    }
}

delegate_snapshotter!(CopySnapshotter);
