//! OCI layer changesets: [`apply`] a layer tar stream onto a directory, and [`diff`] a directory
//! (an overlay upper dir, or a tree against its parent tree) into a layer tar stream.
//!
//! OCI layers mark deletions with `.wh.NAME` files and opaque directories with `.wh..wh..opq`;
//! overlayfs marks them with 0/0 character devices and the `trusted.overlay.opaque=y` xattr.
//! [`WhiteoutMode`] says which form [`apply`] writes; [`DiffSource`] says which form [`diff`] reads.
//! Paths are always resolved inside the target root (`openat2` with `RESOLVE_IN_ROOT`), so no
//! entry, symlink or hard link of a layer can reach outside it.

mod apply;
mod diff;

pub use apply::apply;
pub use diff::diff;

use std::path::Path;

/// The OCI whiteout file-name prefix.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI opaque-directory marker's file name.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat an upper directory as opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How [`apply`] carries out a layer's deletions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhiteoutMode {
    /// The target is a complete tree (the layers below already applied to it): whiteouts delete
    /// files, opaque markers empty directories of what lower layers put there.
    #[default]
    Remove,
    /// The target is an overlayfs upper dir: whiteouts become 0/0 character devices and opaque
    /// markers the `trusted.overlay.opaque=y` xattr (needs root).
    Overlay,
}

/// Options for [`apply`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ApplyOptions {
    /// How deletions are written (default: [`WhiteoutMode::Remove`]).
    pub whiteouts: WhiteoutMode,
    /// Give files the archive's uid/gid (default: true when running as root).
    pub preserve_ownership: bool,
    /// Restore extended attributes (`SCHILY.xattr.*` PAX records; `trusted.overlay.*` is never
    /// restored). Default true. Attributes the filesystem or privilege level refuses are skipped.
    pub xattrs: bool,
    /// Create block and character devices (default: true when running as root). When false,
    /// device entries are skipped and counted in [`ApplyStats::skipped`].
    pub devices: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        let root = nix::unistd::geteuid().is_root();
        ApplyOptions {
            whiteouts: WhiteoutMode::Remove,
            preserve_ownership: root,
            xattrs: true,
            devices: root,
        }
    }
}

impl ApplyOptions {
    /// Sets [`ApplyOptions::whiteouts`].
    pub fn with_whiteouts(mut self, mode: WhiteoutMode) -> Self {
        self.whiteouts = mode;
        self
    }

    /// Sets [`ApplyOptions::devices`].
    pub fn with_devices(mut self, devices: bool) -> Self {
        self.devices = devices;
        self
    }

    /// Sets [`ApplyOptions::xattrs`].
    pub fn with_xattrs(mut self, xattrs: bool) -> Self {
        self.xattrs = xattrs;
        self
    }

    /// Sets [`ApplyOptions::preserve_ownership`].
    pub fn with_ownership(mut self, preserve: bool) -> Self {
        self.preserve_ownership = preserve;
        self
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyStats {
    /// Archive entries processed (including whiteouts).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Entries skipped (devices when not allowed, sockets, unknown types, the root entry).
    pub skipped: u64,
}

/// Where [`diff`] reads the changes from.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum DiffSource<'a> {
    /// An overlayfs upper dir: everything in it is a change; 0/0 character devices are
    /// deletions and directories with `trusted.overlay.opaque=y` are opaque.
    OverlayUpper(&'a Path),
    /// Two complete trees: what differs in `upper` from `lower` (all of `upper` when `lower` is
    /// `None`); files in `lower` but not `upper` become whiteouts.
    Trees {
        /// The tree before (the parent layers, merged), if any.
        lower: Option<&'a Path>,
        /// The tree after.
        upper: &'a Path,
    },
}

/// Options for [`diff`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DiffOptions {
    /// Write this modification time (Unix seconds) on every entry instead of the file's own,
    /// for reproducible layers (e.g. `SOURCE_DATE_EPOCH`). Default: the files' own times.
    pub mtime: Option<u64>,
    /// Write extended attributes as `SCHILY.xattr.*` PAX records (default true;
    /// `trusted.overlay.*` is never written).
    pub xattrs: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions::new()
    }
}

impl DiffOptions {
    /// Default options with xattrs included and the files' own mtimes.
    pub fn new() -> Self {
        DiffOptions {
            mtime: None,
            xattrs: true,
        }
    }

    /// Sets [`DiffOptions::xattrs`].
    pub fn with_xattrs(mut self, xattrs: bool) -> Self {
        self.xattrs = xattrs;
        self
    }

    /// Sets [`DiffOptions::mtime`].
    pub fn with_mtime(mut self, mtime: Option<u64>) -> Self {
        self.mtime = mtime;
        self
    }
}

/// What [`diff`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiffStats {
    /// Entries written (including whiteouts).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Whiteouts and opaque markers written.
    pub whiteouts: u64,
}
