//! Safe path resolution inside a root directory: every lookup goes through `openat2(2)` with
//! `RESOLVE_IN_ROOT` on a directory fd, so `..`, absolute symlinks and symlink chains are all
//! resolved as if the root were `/`. Nothing here joins strings and then opens them.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Cleans an archive path into a path relative to the root: leading `/` and `.` are dropped and
/// `..` is applied lexically, clamped at the root (as if the path were joined onto `/`).
/// Returns `None` for the root itself.
pub fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
        }
    }
    if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    }
}

/// Splits a cleaned relative path into its parent (possibly empty) and its final name.
pub fn split(rel: &Path) -> (&Path, &OsStr) {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let name = rel.file_name().unwrap_or(rel.as_os_str());
    (parent, name)
}

/// The file type bits of a stat.
pub fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`, `None` when it does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<FileStat>, Errno> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the directory `name` in `dir` without following a symlink.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Lists a directory's entry names (without `.` and `..`), sorted bytewise.
pub fn list_sorted(dir: BorrowedFd<'_>) -> Result<Vec<OsString>, Errno> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut handle = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for entry in handle.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Removes `name` in `dir` and, if it is a directory, everything below it. Never follows symlinks.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if kind(&st) == SFlag::S_IFDIR {
        let sub = open_subdir(dir, name)?;
        for child in list_sorted(sub.as_fd())? {
            remove_all_at(sub.as_fd(), &child)?;
        }
        unlinkat(dir, name, UnlinkatFlags::RemoveDir)
    } else {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
    }
}

/// A directory treated as `/` for every lookup made through it.
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl RootDir {
    /// Opens `path`, which must be an existing directory.
    pub fn open(path: &Path) -> Result<Self, Errno> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(RootDir {
            fd,
            path: path.to_owned(),
        })
    }

    /// The root's path as given (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's directory fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the directory at `rel` (resolved inside the root; empty means the root).
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        self.open_at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
    }

    /// Opens `rel` with `flags` (`O_CLOEXEC` is added), every component resolved inside the
    /// root; empty means the root.
    pub fn open_at(&self, rel: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
        let path: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        loop {
            match openat2(self.fd.as_fd(), path, how) {
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                other => return other,
            }
        }
    }

    /// Like [`RootDir::open_dir`] but refuses a symlink as the final component.
    pub fn open_dir_nofollow(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        let (parent, name) = split(rel);
        let parent = self.open_dir(parent)?;
        open_subdir(parent.as_fd(), name)
    }

    /// Opens the directory at `rel`, creating missing components with `mode` (as `mkdir -p`
    /// would, but every component resolved inside the root). A dangling symlink on the way is
    /// followed (inside the root) and its target created, as unpackers do for layers whose
    /// symlinks point at directories a later entry fills.
    pub fn mkdir_all(&self, rel: &Path, mode: Mode) -> Result<OwnedFd, Errno> {
        self.mkdir_all_depth(rel, mode, 0)
    }

    fn mkdir_all_depth(&self, rel: &Path, mode: Mode, depth: u32) -> Result<OwnedFd, Errno> {
        const MAX_SYMLINKS: u32 = 40;
        match self.open_dir(rel) {
            Err(Errno::ENOENT) if !rel.as_os_str().is_empty() => {}
            other => return other,
        }
        let (parent, name) = split(rel);
        let parent_fd = self.mkdir_all_depth(parent, mode, depth)?;
        match mkdirat(parent_fd.as_fd(), name, mode) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        // Re-resolve from the root: `name` may be a symlink.
        match self.open_dir(rel) {
            Err(Errno::ENOENT) => {}
            other => return other,
        }
        // A dangling symlink: create its target (resolved inside the root), then retry.
        let Some(st) = lstat_at(parent_fd.as_fd(), name)? else {
            return Err(Errno::ENOENT);
        };
        if kind(&st) != SFlag::S_IFLNK {
            return Err(Errno::ENOENT);
        }
        if depth >= MAX_SYMLINKS {
            return Err(Errno::ELOOP);
        }
        let target = nix::fcntl::readlinkat(parent_fd.as_fd(), name)?;
        let joined = parent.join(Path::new(&target));
        if let Some(target_rel) = clean(&joined) {
            self.mkdir_all_depth(&target_rel, mode, depth + 1)?;
        }
        self.open_dir(rel)
    }
}
