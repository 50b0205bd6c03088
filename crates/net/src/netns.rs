//! Network namespaces: running a closure inside one (on a fresh thread that joined it, so the
//! caller's thread never changes namespace), and namespaces of our own kept alive by a bind mount
//! of their nsfs file (as `ip netns add` does), for user-defined networks and for tests that play
//! several hosts on one machine.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::{Error, Result};

/// Runs `f` on a new thread that first joined the network namespace at `netns` (a
/// `/proc/PID/ns/net` file or a bind-mounted one); `None` runs it in the caller's namespace, still
/// on a fresh thread so that `f` may block or build its own runtime.
pub fn in_netns<T: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = match netns {
        Some(path) => Some(File::open(path).map_err(Error::io("open network namespace", path))?),
        None => None,
    };
    let what = netns.map(|p| p.display().to_string()).unwrap_or_default();
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(file) = file {
                nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(Error::sys(format!("setns into {what}")))?;
            }
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A network namespace of our own, kept alive by a bind mount of its nsfs file at a path of our
/// choosing; dropping it unmounts and removes the file (the namespace goes when nothing else
/// holds it: no process in it and no other mount of it).
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
}

impl Netns {
    /// Creates a new, empty network namespace (only a down loopback in it) and binds it at `path`,
    /// which must not exist yet; its parent directory must.
    pub fn create(path: impl Into<PathBuf>) -> Result<Netns> {
        let path = path.into();
        File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Error::io("create", &path))?;
        let target = path.clone();
        let bound = in_netns(None, move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(Error::sys("unshare a network namespace"))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(Error::sys(format!(
                "bind the namespace at {}",
                target.display()
            )))
        });
        if let Err(e) = bound {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Netns { path })
    }

    /// Adopts a namespace bound at `path` earlier (by [`Netns::create`] in another process); it
    /// is removed when the returned value drops.
    pub fn adopt(path: impl Into<PathBuf>) -> Netns {
        Netns { path: path.into() }
    }

    /// The path of the bound namespace file (what [`in_netns`] and `PodNetwork::setup` take).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and removes the namespace file now, reporting errors (drop ignores them).
    pub fn remove(self) -> Result<()> {
        let path = self.path.clone();
        std::mem::forget(self);
        remove(&path)
    }
}

fn remove(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(Error::sys(format!("unmount {}", path.display()))(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path)(e)),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.path) {
            tracing::warn!(error = %e, "could not remove a network namespace");
        }
    }
}
