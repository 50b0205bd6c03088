//! Layered filesystems for Berth: overlayfs snapshots and OCI layer changesets.
//!
//! Two halves:
//!
//! - [`layer`]: turn a layer tar stream into files ([`layer::apply`], honouring `.wh.` whiteouts,
//!   opaque directories, hard links, symlinks, devices, xattrs, owners, modes and times) and
//!   files back into a layer tar stream ([`layer::diff`], reproducible: sorted, numeric owners,
//!   optional fixed mtime). Every path is resolved inside the target root with
//!   `openat2(RESOLVE_IN_ROOT)`: `..`, absolute symlinks and hard links cannot escape it.
//! - [`Snapshotter`]: containerd-style snapshots under a root directory you choose.
//!   [`OverlaySnapshotter`] stacks committed layers as overlayfs lower dirs under a per-snapshot
//!   upper dir; [`CopySnapshotter`] copies trees for hosts without overlay; [`open`] picks one
//!   by [`Backend::detect`]. Metadata lives in `<root>/metadata.log` (an append-only
//!   log: a change costs the same whatever the number of snapshots) and survives restarts.
//!   Snapshotters return [`Mount`]s; [`mount_all`], [`unmount`] and [`MountGuard`] perform them.
//!   [`copy_dir_in_root`] copies a directory of a rootfs, resolved inside it (volume seeding).
//! - [`fsroot`]: the `openat2(RESOLVE_IN_ROOT)` lookups both halves use, for other crates that
//!   read or write inside a root they do not trust (the Dockerfile builder's build context).
//!
//! Start with [`open`] (or [`OverlaySnapshotter::new`]), then `unpack_layer` each image layer,
//! `prepare` a container's writable snapshot on the top layer and mount it.
//!
//! ```no_run
//! use berth_unionfs::{ApplyOptions, DiffOptions, MountGuard, Snapshotter};
//! use std::path::Path;
//!
//! # fn main() -> berth_unionfs::Result<()> {
//! let snapshots = berth_unionfs::open("/var/lib/berth/snapshots")?;
//!
//! // Unpack an image: each (uncompressed) layer on the previous one, named by its chain ID.
//! let mut layer = std::fs::File::open("layer.tar").expect("layer");
//! snapshots.unpack_layer("sha256:chain1", None, &mut layer, &ApplyOptions::default())?;
//!
//! // A container: a writable snapshot on the image's top layer, mounted as its rootfs.
//! let mounts = snapshots.prepare("container-1", Some("sha256:chain1"))?;
//! let rootfs = Path::new("/run/berth/container-1/rootfs");
//! let guard = MountGuard::mount(&mounts, rootfs)?;
//! // ... run the container, then:
//! guard.unmount()?;
//!
//! // A build step: the container's changes as a new layer.
//! let mut out = Vec::new();
//! snapshots.diff("container-1", &mut out, &DiffOptions::new().with_mtime(Some(0)))?;
//! snapshots.remove("container-1")?;
//! # Ok(())
//! # }
//! ```

mod error;
pub mod fsroot;
pub mod layer;
mod mount;
mod snapshot;
mod sys;

pub use error::{Error, Result};
pub use layer::{ApplyOptions, ApplyStats, DiffOptions, DiffSource, DiffStats, WhiteoutMode};
pub use mount::{Mount, MountGuard, mount_all, unmount};
pub use snapshot::{
    Backend, CopySnapshotter, Info, Kind, OverlaySnapshotter, Snapshotter, Usage, copy_dir_in_root,
    open,
};
