//! Mount descriptions, as a snapshotter returns them, and the code that performs them: overlay
//! mounts (through the fd-based mount API with one `lowerdir+` per layer when the classic option
//! string would exceed a page), bind mounts, and unmounting with a guard.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::sys;
use crate::{Error, Result};

/// The longest option string `mount(2)` accepts (one page, including the NUL).
const MAX_MOUNT_DATA: usize = 4095;

/// One mount to perform, in containerd's shape: a filesystem type, a source and options.
///
/// Snapshotters produce `"overlay"` mounts (options `lowerdir=…`, `upperdir=…`, `workdir=…`;
/// lowerdir lists the nearest layer first) and `"bind"` mounts (options `rbind`, `ro`/`rw`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The filesystem type: `"overlay"`, `"bind"`, or any type `mount(2)` knows.
    pub fs_type: String,
    /// The source (`"overlay"` for overlay mounts, a directory for bind mounts).
    pub source: PathBuf,
    /// Mount options: flags (`ro`, `nosuid`, `rbind`, …) and filesystem data (`key=value`).
    pub options: Vec<String>,
}

/// Splits mount options into `MsFlags` and the filesystem's data options.
fn parse_options(options: &[String]) -> (MsFlags, Vec<&str>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags.remove(MsFlags::MS_RDONLY),
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "suid" | "dev" | "exec" | "defaults" => {}
            other => data.push(other),
        }
    }
    (flags, data)
}

impl Mount {
    /// A bind mount of `source`, read-only when `readonly`.
    pub fn bind(source: impl Into<PathBuf>, readonly: bool) -> Mount {
        Mount {
            fs_type: "bind".into(),
            source: source.into(),
            options: vec!["rbind".into(), if readonly { "ro" } else { "rw" }.into()],
        }
    }

    /// True when the mount is read-only.
    pub fn is_readonly(&self) -> bool {
        parse_options(&self.options).0.contains(MsFlags::MS_RDONLY)
    }

    /// Mounts this description on `target` (an existing directory).
    pub fn mount(&self, target: &Path) -> Result<()> {
        let (flags, data) = parse_options(&self.options);
        let fail = |op: &'static str, detail: Option<String>, errno: Errno| Error::Mount {
            op,
            fs_type: self.fs_type.clone(),
            target: target.to_owned(),
            detail,
            source: errno.into(),
        };
        if flags.contains(MsFlags::MS_BIND) || self.fs_type == "bind" {
            let bind = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
            nix::mount::mount(
                Some(self.source.as_path()),
                target,
                None::<&str>,
                bind,
                None::<&str>,
            )
            .map_err(|e| fail("mount", None, e))?;
            let extra = flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
            if !extra.is_empty() {
                let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra;
                if let Err(e) =
                    nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
                {
                    let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
                    return Err(fail("remount", None, e));
                }
            }
            return Ok(());
        }
        let joined = data.join(",");
        if joined.len() <= MAX_MOUNT_DATA {
            nix::mount::mount(
                Some(self.source.as_path()),
                target,
                Some(self.fs_type.as_str()),
                flags,
                Some(joined.as_str()),
            )
            .map_err(|e| fail("mount", None, e))
        } else if self.fs_type == "overlay" {
            self.mount_fd_api(target, flags, &data)
        } else {
            Err(Error::InvalidMount {
                fs_type: self.fs_type.clone(),
                reason: format!("options are {} bytes, more than a page", joined.len()),
            })
        }
    }

    /// Mounts an overlay through fsopen/fsconfig/fsmount/move_mount, passing each lower layer
    /// on its own (`lowerdir+`, Linux 6.8+), so the chain's length is not limited by a page.
    fn mount_fd_api(&self, target: &Path, flags: MsFlags, data: &[&str]) -> Result<()> {
        let fail = |op: &'static str, detail: Option<String>, errno: Errno| Error::Mount {
            op,
            fs_type: self.fs_type.clone(),
            target: target.to_owned(),
            detail,
            source: errno.into(),
        };
        let fs = sys::fsopen(&self.fs_type).map_err(|e| fail("fsopen", None, e))?;
        let set = |key: &str, value: Option<&str>| {
            let result = match value {
                // Paths longer than fsconfig's string limit go in as O_PATH fds.
                Some(path)
                    if path.len() > sys::FSCONFIG_MAX_STRING
                        && matches!(key, "lowerdir+" | "upperdir" | "workdir" | "datadir+") =>
                {
                    nix::fcntl::open(
                        path,
                        nix::fcntl::OFlag::O_PATH
                            | nix::fcntl::OFlag::O_DIRECTORY
                            | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )
                    .and_then(|dir| sys::fsconfig_set_fd(fs.as_fd(), key, dir.as_fd()))
                }
                _ => sys::fsconfig_set(fs.as_fd(), key, value),
            };
            result.map_err(|e| Error::Mount {
                op: "fsconfig",
                fs_type: self.fs_type.clone(),
                target: target.to_owned(),
                detail: Some(format!(
                    "{key}: {}",
                    sys::fs_messages(fs.as_fd()).unwrap_or_default()
                )),
                source: e.into(),
            })
        };
        for option in data {
            match option.split_once('=') {
                Some(("lowerdir", layers)) => {
                    for layer in layers.split(':').filter(|l| !l.is_empty()) {
                        set("lowerdir+", Some(layer))?;
                    }
                }
                Some((key, value)) => set(key, Some(value))?,
                None => set(option, None)?,
            }
        }
        sys::fsconfig_create(fs.as_fd())
            .map_err(|e| fail("fsconfig create", sys::fs_messages(fs.as_fd()), e))?;
        let mut attrs = 0;
        for (flag, attr) in [
            (MsFlags::MS_RDONLY, sys::MOUNT_ATTR_RDONLY),
            (MsFlags::MS_NOSUID, sys::MOUNT_ATTR_NOSUID),
            (MsFlags::MS_NODEV, sys::MOUNT_ATTR_NODEV),
            (MsFlags::MS_NOEXEC, sys::MOUNT_ATTR_NOEXEC),
        ] {
            if flags.contains(flag) {
                attrs |= attr;
            }
        }
        let mnt = sys::fsmount(fs.as_fd(), attrs)
            .map_err(|e| fail("fsmount", sys::fs_messages(fs.as_fd()), e))?;
        sys::move_mount(mnt.as_fd(), target).map_err(|e| fail("move_mount", None, e))
    }
}

/// Mounts `mounts` one over the other on `target`, in order. If one fails, those already
/// mounted are unmounted again.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for (done, m) in mounts.iter().enumerate() {
        if let Err(e) = m.mount(target) {
            for _ in 0..done {
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts everything mounted on `target` (a stack of mounts is unmounted top-down). Not
/// being a mount point is not an error. Busy mounts are detached lazily.
pub fn unmount(target: &Path) -> Result<()> {
    loop {
        match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => continue,
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) => {
                nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                    .map_err(|e| Error::Mount {
                        op: "unmount",
                        fs_type: String::new(),
                        target: target.to_owned(),
                        detail: None,
                        source: e.into(),
                    })?;
            }
            Err(e) => {
                return Err(Error::Mount {
                    op: "unmount",
                    fs_type: String::new(),
                    target: target.to_owned(),
                    detail: None,
                    source: e.into(),
                });
            }
        }
    }
}

/// Mounts on creation and unmounts on drop: for tests, builds and short-lived views.
#[derive(Debug)]
#[must_use = "the mounts are undone when the guard is dropped"]
pub struct MountGuard {
    target: PathBuf,
    active: bool,
}

impl MountGuard {
    /// Mounts `mounts` on `target` (see [`mount_all`]).
    pub fn mount(mounts: &[Mount], target: &Path) -> Result<MountGuard> {
        mount_all(mounts, target)?;
        Ok(MountGuard {
            target: target.to_owned(),
            active: true,
        })
    }

    /// The mount point.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts now, reporting failure (dropping the guard ignores it).
    pub fn unmount(mut self) -> Result<()> {
        self.active = false;
        unmount(&self.target)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.active {
            let _ = unmount(&self.target);
        }
    }
}
