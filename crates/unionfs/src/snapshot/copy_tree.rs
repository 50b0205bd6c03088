//! Copying a directory tree with everything a layer carries: owners, modes, times, xattrs,
//! hard links, symlinks and device nodes. Files are copied with `copy_file_range` (through
//! `std::io::copy`), which shares extents on filesystems that can (btrfs, XFS).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, mkdirat,
    mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};

use crate::fsroot::{RootDir, clean, kind, list_sorted, lstat_at, open_subdir};
use crate::{Error, Result};

/// Copies the tree at `src` to `dst`, which must not exist yet.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let from = RootDir::open(src).map_err(|e| Error::errno("open", src, e))?;
    copy_tree_from(from.fd(), src, dst)
}

/// Copies the directory at `rel` inside `root` (every component, symlinks included, resolved
/// as if `root` were `/`, so nothing outside it is reachable) to `dst`, a new directory with
/// the same owner, mode and contents: how a container's anonymous volume is seeded from its
/// image (`VOLUME` in a Dockerfile). When `rel` does not exist in `root` (or is not a
/// directory), `dst` is created empty and `false` returned.
pub fn copy_dir_in_root(root: &Path, rel: &Path, dst: &Path) -> Result<bool> {
    let root_dir = RootDir::open(root).map_err(|e| Error::errno("open", root, e))?;
    let Some(rel) = clean(rel) else {
        copy_tree_from(root_dir.fd(), root, dst)?;
        return Ok(true);
    };
    let src = root.join(&rel);
    match root_dir.open_dir(&rel) {
        Ok(from) => copy_tree_from(from.as_fd(), &src, dst).map(|()| true),
        Err(Errno::ENOENT | Errno::ENOTDIR) => {
            std::fs::create_dir(dst).map_err(|e| Error::io("create", dst, e))?;
            Ok(false)
        }
        Err(e) => Err(Error::errno("open", src, e)),
    }
}

fn copy_tree_from(from: BorrowedFd<'_>, src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir(dst).map_err(|e| Error::io("create", dst, e))?;
    let to = RootDir::open(dst).map_err(|e| Error::errno("open", dst, e))?;
    let mut copier = Copier {
        src,
        to_root: to.fd(),
        links: HashMap::new(),
        is_root: nix::unistd::geteuid().is_root(),
    };
    copier
        .copy_dir(from, to.fd(), Path::new(""))
        .map_err(|(rel, e)| Error::errno("copy", src.join(rel), e))?;
    let st = nix::sys::stat::fstat(from).map_err(|e| Error::errno("stat", src, e))?;
    copier
        .finish_fd(from, to.fd(), &st)
        .map_err(|(_, e)| Error::errno("copy", src, e))
}

type CopyResult<T = ()> = std::result::Result<T, (PathBuf, Errno)>;

struct Copier<'a> {
    src: &'a Path,
    to_root: BorrowedFd<'a>,
    /// (dev, ino) of multiply-linked source files → their path in the copy.
    links: HashMap<(u64, u64), PathBuf>,
    is_root: bool,
}

fn at(rel: &Path) -> impl Fn(Errno) -> (PathBuf, Errno) + '_ {
    move |e| (rel.to_owned(), e)
}

fn times(st: &FileStat) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::new(st.st_atime, st.st_atime_nsec),
        TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
    )
}

fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name)
}

impl Copier<'_> {
    fn copy_dir(&mut self, from: BorrowedFd<'_>, to: BorrowedFd<'_>, rel: &Path) -> CopyResult {
        for name in list_sorted(from).map_err(at(rel))? {
            let child = rel.join(&name);
            let Some(st) = lstat_at(from, &name).map_err(at(&child))? else {
                continue;
            };
            match kind(&st) {
                SFlag::S_IFDIR => {
                    mkdirat(to, name.as_os_str(), Mode::from_bits_truncate(0o700))
                        .map_err(at(&child))?;
                    let f = open_subdir(from, &name).map_err(at(&child))?;
                    let t = open_subdir(to, &name).map_err(at(&child))?;
                    self.copy_dir(f.as_fd(), t.as_fd(), &child)?;
                    self.finish_fd(f.as_fd(), t.as_fd(), &st)?;
                }
                SFlag::S_IFREG => {
                    if st.st_nlink > 1 {
                        if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                            linkat(
                                self.to_root,
                                first.as_path(),
                                to,
                                name.as_os_str(),
                                AtFlags::empty(),
                            )
                            .map_err(at(&child))?;
                            continue;
                        }
                        self.links.insert((st.st_dev, st.st_ino), child.clone());
                    }
                    let f = openat(
                        from,
                        name.as_os_str(),
                        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(at(&child))?;
                    let t = openat(
                        to,
                        name.as_os_str(),
                        OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    )
                    .map_err(at(&child))?;
                    let (mut f, mut t) = (File::from(f), File::from(t));
                    std::io::copy(&mut f, &mut t).map_err(|e| {
                        (
                            child.clone(),
                            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                        )
                    })?;
                    self.finish_fd(f.as_fd(), t.as_fd(), &st)?;
                }
                SFlag::S_IFLNK => {
                    let target = readlinkat(from, name.as_os_str()).map_err(at(&child))?;
                    symlinkat(target.as_os_str(), to, name.as_os_str()).map_err(at(&child))?;
                    self.finish_at(from, to, &name, &child, &st, false)?;
                }
                SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
                    mknodat(
                        to,
                        name.as_os_str(),
                        kind(&st),
                        Mode::from_bits_truncate(0o600),
                        st.st_rdev,
                    )
                    .map_err(at(&child))?;
                    self.finish_at(from, to, &name, &child, &st, true)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn chown_error(&self, rel: &Path, e: Errno) -> CopyResult {
        if e == Errno::EPERM && !self.is_root {
            Ok(())
        } else {
            Err((rel.to_owned(), e))
        }
    }

    fn copy_xattrs(&self, from: &Path, to: &Path, rel: &Path) -> CopyResult {
        let names = match xattr::list(from) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
            Err(e) => {
                return Err((
                    rel.to_owned(),
                    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                ));
            }
        };
        for name in names {
            if let Ok(Some(value)) = xattr::get(from, &name)
                && let Err(e) = xattr::set(to, &name, &value)
            {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                let tolerated = errno == libc::ENOTSUP || (errno == libc::EPERM && !self.is_root);
                if !tolerated {
                    return Err((rel.to_owned(), Errno::from_raw(errno)));
                }
            }
        }
        Ok(())
    }

    fn finish_fd(&self, from: BorrowedFd<'_>, to: BorrowedFd<'_>, st: &FileStat) -> CopyResult {
        let rel = Path::new(self.src);
        if let Err(e) = fchown(
            to,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        ) {
            self.chown_error(rel, e)?;
        }
        self.copy_xattrs(
            &Path::new("/proc/self/fd").join(from.as_raw_fd().to_string()),
            &Path::new("/proc/self/fd").join(to.as_raw_fd().to_string()),
            rel,
        )?;
        fchmod(to, Mode::from_bits_truncate(st.st_mode & 0o7777)).map_err(at(rel))?;
        let (atime, mtime) = times(st);
        futimens(to, &atime, &mtime).map_err(at(rel))
    }

    fn finish_at(
        &self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        st: &FileStat,
        chmod: bool,
    ) -> CopyResult {
        if let Err(e) = fchownat(
            to,
            name,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            self.chown_error(rel, e)?;
        }
        self.copy_xattrs(&proc_path(from, name), &proc_path(to, name), rel)?;
        if chmod {
            fchmodat(
                to,
                name,
                Mode::from_bits_truncate(st.st_mode & 0o7777),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(at(rel))?;
        }
        let (atime, mtime) = times(st);
        utimensat(to, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink).map_err(at(rel))
    }
}
