#![doc = include_str!("../README.md")]

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
    Backend, CopySnapshotter, OverlaySnapshotter, SnapshotInfo, SnapshotKind, Snapshotter, Usage,
    copy_dir_in_root, open,
};
