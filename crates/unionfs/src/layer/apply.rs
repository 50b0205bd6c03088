//! Applying a layer tar stream onto a directory. Every entry's parent is resolved inside the
//! root with `openat2(RESOLVE_IN_ROOT)` and the entry itself is created relative to that parent
//! fd with `O_NOFOLLOW`/`O_EXCL`-style calls, so nothing in the archive can reach outside the
//! root. Directory modes and times are set last, once their children are written.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, mkdirat, mknodat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;
use xattr::FileExt;

use super::{
    ApplyOptions, ApplyStats, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX, WhiteoutMode,
};
use crate::fsroot::{
    RootDir, clean, kind, list_sorted, lstat_at, open_subdir, remove_all_at, split,
};
use crate::{Error, Result};

/// Applies the layer tar stream `tar` onto the directory `root`.
///
/// Entries are created, replaced or (for whiteouts) removed as the OCI image spec's changeset
/// rules say; with [`WhiteoutMode::Overlay`] deletions are written in overlayfs form instead.
/// `..` components are clamped at the root, and symlinks met while resolving an entry's parent
/// (absolute ones included) are resolved as if `root` were `/`. A hard link must name a file
/// that already exists inside the root.
///
/// On error the directory is left partly written; callers that need all-or-nothing apply into a
/// fresh directory and remove it (as [`crate::Snapshotter::apply_layer`] does).
pub fn apply(tar: impl Read, root: &Path, opts: &ApplyOptions) -> Result<ApplyStats> {
    let root_dir = RootDir::open(root).map_err(|e| Error::errno("open root", root, e))?;
    let mut applier = Applier {
        root: &root_dir,
        opts,
        stats: ApplyStats::default(),
        written: HashSet::new(),
        dirs: Vec::new(),
        parent: None,
        buf: vec![0; 1 << 20],
        is_root: nix::unistd::geteuid().is_root(),
    };
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(|source| Error::Archive {
        entry: PathBuf::new(),
        source,
    })?;
    let mut last = PathBuf::new();
    for entry in entries {
        let mut entry = entry.map_err(|source| Error::Archive {
            entry: last.clone(),
            source,
        })?;
        let path = entry
            .path()
            .map_err(|source| Error::Archive {
                entry: last.clone(),
                source,
            })?
            .into_owned();
        applier.entry(&mut entry, &path)?;
        last = path;
    }
    applier.finish()?;
    Ok(applier.stats)
}

/// Metadata of one archive entry, with PAX overrides applied.
#[derive(Clone)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn meta_of<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> Result<Meta> {
    let bad = |source: std::io::Error| Error::Archive {
        entry: path.to_owned(),
        source,
    };
    let header = entry.header();
    let mode = header.mode().map_err(bad)? & 0o7777;
    let mut uid = header.uid().map_err(bad)?;
    let mut gid = header.gid().map_err(bad)?;
    let mut secs = header.mtime().map_err(bad)? as i64;
    let mut nanos = 0i64;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(bad)? {
        for ext in pax {
            let ext = ext.map_err(bad)?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.push((name.as_bytes().to_vec(), value.to_vec()));
            } else if key == "uid" || key == "gid" {
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                match (key, parsed) {
                    ("uid", Some(v)) => uid = v,
                    ("gid", Some(v)) => gid = v,
                    _ => {}
                }
            } else if key == "mtime"
                && let Some((s, n)) = std::str::from_utf8(value).ok().and_then(parse_pax_time)
            {
                secs = s;
                nanos = n;
            }
        }
    }
    let id = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| Error::UnsafeEntry {
            entry: path.to_owned(),
            reason: format!("{what} {v} out of range"),
        })
    };
    Ok(Meta {
        mode,
        uid: id(uid, "uid")?,
        gid: id(gid, "gid")?,
        mtime: TimeSpec::new(secs, nanos),
        xattrs,
    })
}

/// Parses a PAX time ("1700000000.5") into seconds and nanoseconds.
fn parse_pax_time(value: &str) -> Option<(i64, i64)> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs = secs.parse::<i64>().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32)
    };
    Some((secs, nanos))
}

struct Applier<'a> {
    root: &'a RootDir,
    opts: &'a ApplyOptions,
    stats: ApplyStats,
    /// Paths this layer wrote: its own whiteouts and opaque markers must not hide them.
    written: HashSet<PathBuf>,
    /// Directories whose mode and mtime are set at the end: (path, mode, mtime).
    dirs: Vec<(PathBuf, u32, TimeSpec)>,
    /// The last entry's parent directory, reused while entries stay in one directory.
    parent: Option<(PathBuf, OwnedFd)>,
    buf: Vec<u8>,
    is_root: bool,
}

impl Applier<'_> {
    fn fail(&self, op: &'static str, rel: &Path, errno: Errno) -> Error {
        Error::errno(op, self.root.path().join(rel), errno)
    }

    /// The fd of the directory `rel`, created (as `mkdir -p`) when missing.
    fn parent_dir(&mut self, rel: &Path) -> Result<BorrowedFd<'_>> {
        let cached = matches!(&self.parent, Some((p, _)) if p == rel);
        if !cached {
            let fd = self
                .root
                .mkdir_all(rel, Mode::from_bits_truncate(0o755))
                .map_err(|e| Error::errno("create directory", self.root.path().join(rel), e))?;
            self.parent = Some((rel.to_owned(), fd));
        }
        Ok(self
            .parent
            .as_ref()
            .map(|(_, fd)| fd.as_fd())
            .expect("parent was just set"))
    }

    /// [`Self::parent_dir`] as an owned fd, for work that needs `&mut self` meanwhile; `what`
    /// names the entry in an error.
    fn owned_parent_dir(&mut self, rel: &Path, what: &Path) -> Result<OwnedFd> {
        self.parent_dir(rel)?
            .try_clone_to_owned()
            .map_err(|e| Error::io("dup", what, e))
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, path: &Path) -> Result<()> {
        self.stats.entries += 1;
        let Some(rel) = clean(path) else {
            // The root directory itself: a layer does not get to change the root's metadata.
            self.stats.skipped += 1;
            return Ok(());
        };
        let entry_type = entry.header().entry_type();
        let (parent_rel, name) = split(&rel);
        let parent_rel = parent_rel.to_owned();
        let name = name.to_owned();
        if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(path, &parent_rel, &name);
        }
        if matches!(
            entry_type,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            self.stats.skipped += 1;
            return Ok(());
        }
        let meta = meta_of(entry, path)?;
        match entry_type {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(entry, &rel, &parent_rel, &name, &meta)?
            }
            EntryType::Directory => self.directory(&rel, &parent_rel, &name, &meta)?,
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|source| Error::Archive {
                        entry: path.to_owned(),
                        source,
                    })?
                    .ok_or_else(|| Error::UnsafeEntry {
                        entry: path.to_owned(),
                        reason: "symlink without a target".into(),
                    })?
                    .into_owned();
                self.symlink(&rel, &parent_rel, &name, &target, &meta)?
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|source| Error::Archive {
                        entry: path.to_owned(),
                        source,
                    })?
                    .ok_or_else(|| Error::UnsafeEntry {
                        entry: path.to_owned(),
                        reason: "hard link without a target".into(),
                    })?
                    .into_owned();
                self.hardlink(path, &rel, &parent_rel, &name, &target)?
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let kind = match entry_type {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                if kind != SFlag::S_IFIFO && !self.opts.devices {
                    self.stats.skipped += 1;
                    return Ok(());
                }
                self.special(
                    &rel,
                    &parent_rel,
                    &name,
                    kind,
                    nix::sys::stat::makedev(major.into(), minor.into()),
                    &meta,
                )?
            }
            _ => {
                self.stats.skipped += 1;
                return Ok(());
            }
        }
        self.written.insert(rel);
        Ok(())
    }

    /// Removes whatever is at `name` in `dir` so a new entry can take its place. Returns true
    /// when what was there was an overlay whiteout.
    fn clear_slot(
        &mut self,
        dir: BorrowedFd<'_>,
        rel: &Path,
        name: &OsStr,
        keep_dir: bool,
    ) -> Result<(bool, bool)> {
        let Some(st) = lstat_at(dir, name).map_err(|e| self.fail("stat", rel, e))? else {
            return Ok((false, false));
        };
        let k = kind(&st);
        if k == SFlag::S_IFDIR {
            if keep_dir {
                return Ok((true, false));
            }
            remove_all_at(dir, name).map_err(|e| self.fail("remove", rel, e))?;
            self.parent = None;
            return Ok((false, false));
        }
        let was_whiteout = k == SFlag::S_IFCHR && st.st_rdev == 0;
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(|e| self.fail("remove", rel, e))?;
        Ok((false, was_whiteout))
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        parent_rel: &Path,
        name: &OsStr,
        meta: &Meta,
    ) -> Result<()> {
        let dir = self.owned_parent_dir(parent_rel, rel)?;
        self.clear_slot(dir.as_fd(), rel, name, false)?;
        let fd = openat(
            dir.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.fail("create", rel, e))?;
        let mut file = File::from(fd);
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Archive {
                        entry: rel.to_owned(),
                        source,
                    });
                }
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| Error::io("write", self.root.path().join(rel), e))?;
            self.stats.bytes += n as u64;
        }
        self.finish_fd(file.as_fd(), rel, meta, true)
    }

    /// Sets owner, xattrs, mode and (when `times`) mtime on an open file or directory.
    fn finish_fd(&self, fd: BorrowedFd<'_>, rel: &Path, meta: &Meta, times: bool) -> Result<()> {
        if self.opts.preserve_ownership {
            fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| self.fail("chown", rel, e))?;
        }
        self.set_xattrs_fd(fd, rel, meta)?;
        fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(|e| self.fail("chmod", rel, e))?;
        if times {
            futimens(fd, &meta.mtime, &meta.mtime).map_err(|e| self.fail("set times", rel, e))?;
        }
        Ok(())
    }

    fn set_xattrs_fd(&self, fd: BorrowedFd<'_>, rel: &Path, meta: &Meta) -> Result<()> {
        if !self.opts.xattrs || meta.xattrs.is_empty() {
            return Ok(());
        }
        let file = File::from(
            fd.try_clone_to_owned()
                .map_err(|e| Error::io("dup", rel, e))?,
        );
        for (name, value) in &meta.xattrs {
            if is_reserved_xattr(name) {
                continue;
            }
            if let Err(e) = file.set_xattr(OsStr::from_bytes(name), value) {
                self.xattr_error(rel, e)?;
            }
        }
        Ok(())
    }

    fn xattr_error(&self, rel: &Path, e: std::io::Error) -> Result<()> {
        match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(()),
            Some(libc::EPERM) if !self.is_root => Ok(()),
            _ => Err(Error::io("set xattr", self.root.path().join(rel), e)),
        }
    }

    fn directory(
        &mut self,
        rel: &Path,
        parent_rel: &Path,
        name: &OsStr,
        meta: &Meta,
    ) -> Result<()> {
        let dir = self.owned_parent_dir(parent_rel, rel)?;
        let (exists, was_whiteout) = self.clear_slot(dir.as_fd(), rel, name, true)?;
        if !exists {
            mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700))
                .map_err(|e| self.fail("mkdir", rel, e))?;
        }
        let fd = open_subdir(dir.as_fd(), name).map_err(|e| self.fail("open", rel, e))?;
        let mut mode_now = meta.clone();
        if !self.is_root {
            // Keep the directory writable for us until its children are in.
            mode_now.mode |= 0o700;
        }
        self.finish_fd(fd.as_fd(), rel, &mode_now, false)?;
        if was_whiteout && self.opts.whiteouts == WhiteoutMode::Overlay {
            // Deleted by an earlier whiteout and created again: nothing below may show through.
            File::from(fd)
                .set_xattr(OVERLAY_OPAQUE_XATTR, b"y")
                .map_err(|e| Error::io("set xattr", self.root.path().join(rel), e))?;
        }
        self.dirs.push((rel.to_owned(), meta.mode, meta.mtime));
        self.parent = None;
        Ok(())
    }

    fn symlink(
        &mut self,
        rel: &Path,
        parent_rel: &Path,
        name: &OsStr,
        target: &Path,
        meta: &Meta,
    ) -> Result<()> {
        let dir = self.owned_parent_dir(parent_rel, rel)?;
        self.clear_slot(dir.as_fd(), rel, name, false)?;
        symlinkat(target, dir.as_fd(), name).map_err(|e| self.fail("symlink", rel, e))?;
        self.finish_at(dir.as_fd(), rel, name, meta, false)?;
        self.parent = None;
        Ok(())
    }

    /// Sets owner, xattrs, (unless a symlink) mode, and mtime on `name` in `dir`, never
    /// following a symlink.
    fn finish_at(
        &self,
        dir: BorrowedFd<'_>,
        rel: &Path,
        name: &OsStr,
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        if self.opts.preserve_ownership {
            fchownat(
                dir,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.fail("chown", rel, e))?;
        }
        if self.opts.xattrs && !meta.xattrs.is_empty() {
            use std::os::fd::AsRawFd;
            let proc_path = Path::new("/proc/self/fd")
                .join(dir.as_raw_fd().to_string())
                .join(name);
            for (xname, value) in &meta.xattrs {
                if is_reserved_xattr(xname) {
                    continue;
                }
                // `xattr::set` uses lsetxattr: the final component is not followed.
                if let Err(e) = xattr::set(&proc_path, OsStr::from_bytes(xname), value) {
                    self.xattr_error(rel, e)?;
                }
            }
        }
        if chmod {
            fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| self.fail("chmod", rel, e))?;
        }
        utimensat(
            dir,
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.fail("set times", rel, e))
    }

    fn hardlink(
        &mut self,
        path: &Path,
        rel: &Path,
        parent_rel: &Path,
        name: &OsStr,
        target: &Path,
    ) -> Result<()> {
        let refuse = |reason: String| Error::UnsafeEntry {
            entry: path.to_owned(),
            reason,
        };
        let Some(target_rel) = clean(target) else {
            return Err(refuse("hard link to the root directory".into()));
        };
        if target_rel == rel {
            return Ok(());
        }
        let (target_parent, target_name) = split(&target_rel);
        let target_dir = self.root.open_dir(target_parent).map_err(|e| {
            refuse(format!(
                "hard link target {} not in the layer's tree ({e})",
                target.display()
            ))
        })?;
        let target_st = lstat_at(target_dir.as_fd(), target_name)
            .map_err(|e| self.fail("stat", &target_rel, e))?
            .ok_or_else(|| {
                refuse(format!(
                    "hard link target {} does not exist in the layer's tree",
                    target.display()
                ))
            })?;
        if kind(&target_st) == SFlag::S_IFDIR {
            return Err(refuse(format!(
                "hard link to directory {}",
                target.display()
            )));
        }
        let dir = self.owned_parent_dir(parent_rel, rel)?;
        if let Some(st) = lstat_at(dir.as_fd(), name).map_err(|e| self.fail("stat", rel, e))?
            && st.st_ino == target_st.st_ino
            && st.st_dev == target_st.st_dev
        {
            return Ok(());
        }
        self.clear_slot(dir.as_fd(), rel, name, false)?;
        linkat(
            target_dir.as_fd(),
            target_name,
            dir.as_fd(),
            name,
            AtFlags::empty(),
        )
        .map_err(|e| self.fail("link", rel, e))
    }

    fn special(
        &mut self,
        rel: &Path,
        parent_rel: &Path,
        name: &OsStr,
        kind: SFlag,
        dev: libc::dev_t,
        meta: &Meta,
    ) -> Result<()> {
        let dir = self.owned_parent_dir(parent_rel, rel)?;
        self.clear_slot(dir.as_fd(), rel, name, false)?;
        mknodat(
            dir.as_fd(),
            name,
            kind,
            Mode::from_bits_truncate(0o600),
            dev,
        )
        .map_err(|e| self.fail("mknod", rel, e))?;
        self.finish_at(dir.as_fd(), rel, name, meta, true)
    }

    fn whiteout(&mut self, path: &Path, parent_rel: &Path, name: &OsStr) -> Result<()> {
        self.stats.whiteouts += 1;
        if name.as_bytes() == OPAQUE_MARKER.as_bytes() {
            let dir = self.owned_parent_dir(parent_rel, parent_rel)?;
            self.clear_unwritten(dir.as_fd(), parent_rel)?;
            if self.opts.whiteouts == WhiteoutMode::Overlay {
                File::from(dir)
                    .set_xattr(OVERLAY_OPAQUE_XATTR, b"y")
                    .map_err(|e| Error::io("set xattr", self.root.path().join(parent_rel), e))?;
            }
            self.parent = None;
            return Ok(());
        }
        let target = OsStr::from_bytes(&name.as_bytes()[WHITEOUT_PREFIX.len()..]);
        if target.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other `.wh..wh.` names are aufs bookkeeping (e.g. `.wh..wh.plnk`): ignore them.
            self.stats.whiteouts -= 1;
            self.stats.skipped += 1;
            return Ok(());
        }
        if target.is_empty() || target == "." || target == ".." || target.as_bytes().contains(&b'/')
        {
            return Err(Error::UnsafeEntry {
                entry: path.to_owned(),
                reason: "whiteout without a valid name".into(),
            });
        }
        let target_rel = parent_rel.join(target);
        if self.written.contains(&target_rel) {
            return Ok(());
        }
        self.parent = None;
        match self.opts.whiteouts {
            WhiteoutMode::Remove => {
                let dir = match self.root.open_dir(parent_rel) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
                    Err(e) => return Err(self.fail("open", parent_rel, e)),
                };
                remove_all_at(dir.as_fd(), target).map_err(|e| self.fail("remove", &target_rel, e))
            }
            WhiteoutMode::Overlay => {
                let dir = self.owned_parent_dir(parent_rel, parent_rel)?;
                remove_all_at(dir.as_fd(), target)
                    .map_err(|e| self.fail("remove", &target_rel, e))?;
                self.parent = None;
                mknodat(dir.as_fd(), target, SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(|e| self.fail("mknod whiteout", &target_rel, e))
            }
        }
    }

    /// Removes everything below `dir` that this layer did not write (an opaque directory).
    fn clear_unwritten(&self, dir: BorrowedFd<'_>, dir_rel: &Path) -> Result<()> {
        for child in list_sorted(dir).map_err(|e| self.fail("list", dir_rel, e))? {
            let child_rel = dir_rel.join(&child);
            if !self.written.contains(&child_rel) {
                remove_all_at(dir, &child).map_err(|e| self.fail("remove", &child_rel, e))?;
            } else if let Ok(sub) = open_subdir(dir, &child) {
                self.clear_unwritten(sub.as_fd(), &child_rel)?;
            }
        }
        Ok(())
    }

    /// Sets each directory's final mode and mtime, deepest first.
    fn finish(&mut self) -> Result<()> {
        self.parent = None;
        for (rel, mode, mtime) in self.dirs.iter().rev() {
            let fd = match self.root.open_dir_nofollow(rel) {
                Ok(fd) => fd,
                // Replaced or removed by a later entry.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => return Err(self.fail("open", rel, e)),
            };
            fchmod(fd.as_fd(), Mode::from_bits_truncate(*mode))
                .map_err(|e| self.fail("chmod", rel, e))?;
            futimens(fd.as_fd(), mtime, mtime).map_err(|e| self.fail("set times", rel, e))?;
        }
        Ok(())
    }
}

/// Xattrs a layer may not set: overlayfs's own, which would let a layer forge whiteouts,
/// redirects or metacopy files in an upper dir.
fn is_reserved_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}
