//! Writing a layer tar stream from a directory's changes: either an overlayfs upper dir
//! (translating its whiteout devices and opaque xattrs into OCI form) or two complete trees
//! compared file by file. Entries are written in sorted order with numeric owners only, so the
//! same tree always gives the same bytes.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag};
use tar::{EntryType, Header};
use xattr::FileExt;

use super::{
    DiffOptions, DiffSource, DiffStats, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX,
};
use crate::fsroot::{RootDir, kind, list_sorted, lstat_at, open_subdir};
use crate::{Error, Result};

/// Writes the changes `source` describes to `out` as an uncompressed OCI layer tar stream.
///
/// Entries come in a fixed order (depth first, names sorted bytewise), with numeric uid/gid and
/// no user or group names; with [`DiffOptions::mtime`] every entry gets that time, so the output
/// depends only on the tree's content. Hard links within the changes are kept as tar links.
/// Sockets cannot be archived and are left out.
pub fn diff(source: DiffSource<'_>, out: impl Write, opts: &DiffOptions) -> Result<DiffStats> {
    let (lower, upper, overlay) = match source {
        DiffSource::OverlayUpper(upper) => (None, upper, true),
        DiffSource::Trees { lower, upper } => (lower, upper, false),
    };
    let upper_root = RootDir::open(upper).map_err(|e| Error::errno("open", upper, e))?;
    let lower_root = lower
        .map(|l| RootDir::open(l).map_err(|e| Error::errno("open", l, e)))
        .transpose()?;
    let mut differ = Differ {
        builder: tar::Builder::new(out),
        opts,
        stats: DiffStats::default(),
        links: HashMap::new(),
        upper_path: upper,
    };
    let upper_fd = upper_root
        .fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("dup", upper, e))?;
    if overlay {
        differ.walk_upper(upper_fd.as_fd(), Path::new(""))?;
    } else {
        let lower_fd = lower_root
            .as_ref()
            .map(|l| {
                l.fd()
                    .try_clone_to_owned()
                    .map_err(|e| Error::io("dup", l.path(), e))
            })
            .transpose()?;
        differ.walk_trees(
            lower_fd.as_ref().map(|f| f.as_fd()),
            upper_fd.as_fd(),
            Path::new(""),
        )?;
    }
    differ
        .builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|source| Error::ArchiveWrite {
            entry: PathBuf::new(),
            source,
        })?;
    Ok(differ.stats)
}

struct Differ<'a, W: Write> {
    builder: tar::Builder<W>,
    opts: &'a DiffOptions,
    stats: DiffStats,
    /// (dev, ino) of files with several links → the path they were first written under.
    links: HashMap<(u64, u64), PathBuf>,
    upper_path: &'a Path,
}

fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name)
}

/// The xattrs of `name` in `dir` (not following a symlink), sorted, overlay's own left out.
fn xattrs_of(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<Vec<(OsString, Vec<u8>)>> {
    let path = proc_path(dir, name);
    let mut out = Vec::new();
    let names = match xattr::list(&path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e),
    };
    for xname in names {
        let bytes = xname.as_bytes();
        if bytes.starts_with(b"trusted.overlay.") || bytes.starts_with(b"user.overlay.") {
            continue;
        }
        if let Some(value) = xattr::get(&path, &xname)? {
            out.push((xname, value));
        }
    }
    out.sort();
    Ok(out)
}

impl<W: Write> Differ<'_, W> {
    fn fail(&self, op: &'static str, rel: &Path, errno: Errno) -> Error {
        Error::errno(op, self.upper_path.join(rel), errno)
    }

    fn write_err(rel: &Path, source: std::io::Error) -> Error {
        Error::ArchiveWrite {
            entry: rel.to_owned(),
            source,
        }
    }

    fn walk_upper(&mut self, dir: BorrowedFd<'_>, rel: &Path) -> Result<()> {
        for name in list_sorted(dir).map_err(|e| self.fail("list", rel, e))? {
            let child_rel = rel.join(&name);
            let Some(st) = lstat_at(dir, &name).map_err(|e| self.fail("stat", &child_rel, e))?
            else {
                continue;
            };
            let k = kind(&st);
            if k == SFlag::S_IFCHR && st.st_rdev == 0 {
                self.whiteout(rel, &name)?;
                continue;
            }
            self.emit(dir, &name, &child_rel, &st)?;
            if k == SFlag::S_IFDIR {
                let sub = open_subdir(dir, &name).map_err(|e| self.fail("open", &child_rel, e))?;
                if is_opaque(sub.as_fd()) {
                    self.whiteout(
                        &child_rel,
                        OsStr::new(&OPAQUE_MARKER[WHITEOUT_PREFIX.len()..]),
                    )?;
                }
                self.walk_upper(sub.as_fd(), &child_rel)?;
            }
        }
        Ok(())
    }

    fn walk_trees(
        &mut self,
        lower: Option<BorrowedFd<'_>>,
        upper: BorrowedFd<'_>,
        rel: &Path,
    ) -> Result<()> {
        let upper_names = list_sorted(upper).map_err(|e| self.fail("list", rel, e))?;
        let lower_names = match lower {
            Some(l) => list_sorted(l).map_err(|e| self.fail("list lower", rel, e))?,
            None => Vec::new(),
        };
        let mut names: Vec<&OsString> = upper_names.iter().chain(lower_names.iter()).collect();
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        names.dedup();
        for name in names {
            let child_rel = rel.join(name);
            let up = lstat_at(upper, name).map_err(|e| self.fail("stat", &child_rel, e))?;
            let low = match lower {
                Some(l) => lstat_at(l, name).map_err(|e| self.fail("stat lower", &child_rel, e))?,
                None => None,
            };
            let Some(up) = up else {
                if low.is_some() {
                    self.whiteout(rel, name)?;
                }
                continue;
            };
            let up_dir = kind(&up) == SFlag::S_IFDIR;
            let same_kind = low.as_ref().is_some_and(|l| kind(l) == kind(&up));
            let changed = match &low {
                None => true,
                Some(_) if !same_kind => true,
                Some(low) => self.changed(
                    lower.expect("lower exists"),
                    upper,
                    name,
                    &child_rel,
                    low,
                    &up,
                )?,
            };
            if changed {
                self.emit(upper, name, &child_rel, &up)?;
            }
            if up_dir {
                let sub = open_subdir(upper, name).map_err(|e| self.fail("open", &child_rel, e))?;
                let lower_sub = match (lower, same_kind) {
                    (Some(l), true) => Some(
                        open_subdir(l, name).map_err(|e| self.fail("open lower", &child_rel, e))?,
                    ),
                    _ => None,
                };
                self.walk_trees(
                    lower_sub.as_ref().map(OwnedFd::as_fd),
                    sub.as_fd(),
                    &child_rel,
                )?;
            }
        }
        Ok(())
    }

    /// Whether `name` differs between the two trees (same file type assumed).
    fn changed(
        &self,
        lower: BorrowedFd<'_>,
        upper: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        low: &FileStat,
        up: &FileStat,
    ) -> Result<bool> {
        if low.st_mode != up.st_mode || low.st_uid != up.st_uid || low.st_gid != up.st_gid {
            return Ok(true);
        }
        let k = kind(up);
        if k != SFlag::S_IFDIR
            && (low.st_mtime != up.st_mtime || low.st_mtime_nsec != up.st_mtime_nsec)
        {
            return Ok(true);
        }
        if k == SFlag::S_IFDIR
            && (low.st_mtime != up.st_mtime || low.st_mtime_nsec != up.st_mtime_nsec)
        {
            return Ok(true);
        }
        if self.opts.xattrs {
            let lx = xattrs_of(lower, name)
                .map_err(|e| Error::io("read xattrs", self.upper_path.join(rel), e))?;
            let ux = xattrs_of(upper, name)
                .map_err(|e| Error::io("read xattrs", self.upper_path.join(rel), e))?;
            if lx != ux {
                return Ok(true);
            }
        }
        match k {
            SFlag::S_IFREG => {
                if low.st_size != up.st_size {
                    return Ok(true);
                }
                if up.st_mtime_nsec != 0 {
                    // Same size and same nanosecond mtime: the same content, as containerd assumes.
                    return Ok(false);
                }
                let open = |dir: BorrowedFd<'_>| {
                    openat(
                        dir,
                        name,
                        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map(File::from)
                    .map_err(|e| self.fail("open", rel, e))
                };
                let same = same_content(open(lower)?, open(upper)?)
                    .map_err(|e| Error::io("read", self.upper_path.join(rel), e))?;
                Ok(!same)
            }
            SFlag::S_IFLNK => {
                let a = readlinkat(lower, name).map_err(|e| self.fail("readlink", rel, e))?;
                let b = readlinkat(upper, name).map_err(|e| self.fail("readlink", rel, e))?;
                Ok(a != b)
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK => Ok(low.st_rdev != up.st_rdev),
            _ => Ok(false),
        }
    }

    fn header(&self, st: Option<&FileStat>, entry_type: EntryType) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(entry_type);
        header.set_size(0);
        let (mode, uid, gid, mtime) = match st {
            Some(st) => (
                st.st_mode & 0o7777,
                st.st_uid,
                st.st_gid,
                st.st_mtime.max(0) as u64,
            ),
            None => (0o600, 0, 0, 0),
        };
        header.set_mode(mode);
        header.set_uid(uid.into());
        header.set_gid(gid.into());
        header.set_mtime(
            self.opts
                .mtime
                .unwrap_or(if st.is_some() { mtime } else { 0 }),
        );
        header
    }

    fn whiteout(&mut self, dir_rel: &Path, name: &OsStr) -> Result<()> {
        let mut wh = OsString::from(WHITEOUT_PREFIX);
        wh.push(name);
        let rel = dir_rel.join(wh);
        let mut header = self.header(None, EntryType::Regular);
        self.builder
            .append_data(&mut header, &rel, std::io::empty())
            .map_err(|e| Self::write_err(&rel, e))?;
        self.stats.entries += 1;
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn emit(&mut self, dir: BorrowedFd<'_>, name: &OsStr, rel: &Path, st: &FileStat) -> Result<()> {
        let k = kind(st);
        if k == SFlag::S_IFSOCK {
            return Ok(());
        }
        if self.opts.xattrs {
            let xattrs = xattrs_of(dir, name)
                .map_err(|e| Error::io("read xattrs", self.upper_path.join(rel), e))?;
            if !xattrs.is_empty() {
                let records: Vec<(String, &[u8])> = xattrs
                    .iter()
                    .map(|(n, v)| {
                        (
                            format!("SCHILY.xattr.{}", n.to_string_lossy()),
                            v.as_slice(),
                        )
                    })
                    .collect();
                self.builder
                    .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                    .map_err(|e| Self::write_err(rel, e))?;
            }
        }
        let write = |e| Self::write_err(rel, e);
        match k {
            SFlag::S_IFREG => {
                if st.st_nlink > 1 {
                    let key = (st.st_dev, st.st_ino);
                    if let Some(first) = self.links.get(&key) {
                        let first = first.clone();
                        let mut header = self.header(Some(st), EntryType::Link);
                        self.builder
                            .append_link(&mut header, rel, &first)
                            .map_err(write)?;
                        self.stats.entries += 1;
                        return Ok(());
                    }
                    self.links.insert(key, rel.to_owned());
                }
                let file = openat(
                    dir,
                    name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map(File::from)
                .map_err(|e| self.fail("open", rel, e))?;
                let size = st.st_size as u64;
                let mut header = self.header(Some(st), EntryType::Regular);
                header.set_size(size);
                let mut reader = ExactReader {
                    inner: file.take(size),
                    remaining: size,
                };
                self.builder
                    .append_data(&mut header, rel, &mut reader)
                    .map_err(write)?;
                self.stats.bytes += size;
            }
            SFlag::S_IFDIR => {
                let mut header = self.header(Some(st), EntryType::Directory);
                let mut path = rel.as_os_str().to_owned();
                path.push("/");
                self.builder
                    .append_data(&mut header, Path::new(&path), std::io::empty())
                    .map_err(write)?;
            }
            SFlag::S_IFLNK => {
                let target = readlinkat(dir, name).map_err(|e| self.fail("readlink", rel, e))?;
                let mut header = self.header(Some(st), EntryType::Symlink);
                self.builder
                    .append_link(&mut header, rel, Path::new(&target))
                    .map_err(write)?;
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
                let entry_type = match k {
                    SFlag::S_IFCHR => EntryType::Char,
                    SFlag::S_IFBLK => EntryType::Block,
                    _ => EntryType::Fifo,
                };
                let mut header = self.header(Some(st), entry_type);
                if k != SFlag::S_IFIFO {
                    let major = nix::sys::stat::major(st.st_rdev);
                    let minor = nix::sys::stat::minor(st.st_rdev);
                    header.set_device_major(major as u32).map_err(write)?;
                    header.set_device_minor(minor as u32).map_err(write)?;
                }
                self.builder
                    .append_data(&mut header, rel, std::io::empty())
                    .map_err(write)?;
            }
            _ => return Ok(()),
        }
        self.stats.entries += 1;
        Ok(())
    }
}

/// Reads exactly `remaining` bytes: a file that shrank while being archived is padded with
/// zeros rather than producing a corrupt archive.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let mut n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn is_opaque(dir: BorrowedFd<'_>) -> bool {
    let Ok(fd) = dir.try_clone_to_owned() else {
        return false;
    };
    matches!(File::from(fd).get_xattr(OVERLAY_OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

fn same_content(mut a: File, mut b: File) -> std::io::Result<bool> {
    let mut x = vec![0u8; 64 * 1024];
    let mut y = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
