//! [`AnyManager`], the enum that dispatches to the v1 or v2 manager, and [`manager`], which
//! detects the host's layout and builds the right one.

use std::path::Path;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::{CgroupManager, Resources, Result, Stats, V1Manager, V2Manager, detect};

/// A manager for whichever cgroup version the host uses.
#[derive(Debug, Clone)]
pub enum AnyManager {
    /// cgroup v1 (legacy or hybrid host).
    V1(V1Manager),
    /// cgroup v2 (unified host).
    V2(V2Manager),
}

/// Detects the layout under `root` (normally `/sys/fs/cgroup`; see [`detect`]) and returns a
/// manager for the group at the relative `path` (e.g. `berth/<container-id>`). A leading `/`
/// in `path` is accepted and means the same; `..` is refused. Nothing is created yet.
pub fn manager(root: &Path, path: &Path) -> Result<AnyManager> {
    if detect(root)?.is_v2() {
        Ok(AnyManager::V2(V2Manager::new(root, path)?))
    } else {
        Ok(AnyManager::V1(V1Manager::new(root, path)?))
    }
}

impl AnyManager {
    /// A manager for the child group `name` of this one (a container inside a pod group).
    pub fn child(&self, name: &str) -> Result<AnyManager> {
        match self {
            AnyManager::V1(m) => m.child(name).map(AnyManager::V1),
            AnyManager::V2(m) => m.child(name).map(AnyManager::V2),
        }
    }

    /// The group's path relative to the hierarchy root.
    pub fn path(&self) -> &Path {
        match self {
            AnyManager::V1(m) => m.path(),
            AnyManager::V2(m) => m.path(),
        }
    }

    /// Files through which a single-threaded process moves *itself* into the group, by
    /// writing `0` to each (cgroup v1's `tasks`), or `None` where there is no such fast path
    /// (cgroup v2): then [`CgroupManager::add_process`] is the way in.
    ///
    /// Why: moving another process (`add_process`, a pid written to `cgroup.procs`) takes the
    /// kernel's global threadgroup lock for writing, which waits for an RCU grace period
    /// (3-20 ms on an idle machine); a thread moving itself skips that lock (Linux 6.1+).
    /// Open the files while the group's paths are visible and write `0` from the process.
    pub fn self_join_files(&self) -> Option<Vec<std::path::PathBuf>> {
        match self {
            AnyManager::V1(m) => m.self_join_files(),
            AnyManager::V2(_) => None,
        }
    }

    /// True for a cgroup v2 manager.
    pub fn is_v2(&self) -> bool {
        matches!(self, AnyManager::V2(_))
    }
}

macro_rules! dispatch {
    ($self:ident, $m:ident => $e:expr) => {
        match $self {
            AnyManager::V1($m) => $e,
            AnyManager::V2($m) => $e,
        }
    };
}

impl CgroupManager for AnyManager {
    fn create(&self) -> Result<()> {
        dispatch!(self, m => m.create())
    }
    fn add_process(&self, pid: Pid) -> Result<()> {
        dispatch!(self, m => m.add_process(pid))
    }
    fn apply_resources(&self, resources: &Resources) -> Result<()> {
        dispatch!(self, m => m.apply_resources(resources))
    }
    fn freeze(&self) -> Result<()> {
        dispatch!(self, m => m.freeze())
    }
    fn thaw(&self) -> Result<()> {
        dispatch!(self, m => m.thaw())
    }
    fn is_frozen(&self) -> Result<bool> {
        dispatch!(self, m => m.is_frozen())
    }
    fn kill_all(&self, signal: Signal) -> Result<()> {
        dispatch!(self, m => m.kill_all(signal))
    }
    fn pids(&self) -> Result<Vec<Pid>> {
        dispatch!(self, m => m.pids())
    }
    fn stats(&self) -> Result<Stats> {
        dispatch!(self, m => m.stats())
    }
    fn oom_kills(&self) -> Result<u64> {
        dispatch!(self, m => m.oom_kills())
    }
    fn exists(&self) -> bool {
        dispatch!(self, m => m.exists())
    }
    fn delete(&self) -> Result<()> {
        dispatch!(self, m => m.delete())
    }
    fn self_join_files(&self) -> Option<Vec<std::path::PathBuf>> {
        AnyManager::self_join_files(self)
    }
}
