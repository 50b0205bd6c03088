#![doc = include_str!("../README.md")]

mod any;
pub mod convert;
mod detect;
mod error;
mod factory;
mod fake;
mod group;
mod resources;
mod stats;
mod v1;
mod v2;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub use any::{AnyManager, manager};
pub use detect::{Layout, detect};
pub use error::{Error, Result};
pub use factory::{CgroupFactory, HostCgroups};
pub use fake::{FakeCall, FakeManager};
pub use resources::{
    BlockIoLimits, CpuLimits, CpuList, DeviceRule, MemoryLimits, Resources, Throttle,
};
pub use stats::{CpuStats, IoStats, MemoryStats, PidsStats, Stats};
pub use v1::{V1Controller, V1Manager};
pub use v2::V2Manager;

pub use nix;
pub use oci_spec;

/// One control group, v1 or v2, and everything a container runtime does with it.
///
/// Every method is safe to call from several threads; none forks.
pub trait CgroupManager: Send + Sync + std::fmt::Debug {
    /// Creates the group (and missing parents) in every controller; idempotent. On v1 the
    /// cpuset group gets its parent's `cpus`/`mems`, so a process can be added right away.
    fn create(&self) -> Result<()>;

    /// Moves process `pid` (all its threads) into the group. Call it before the container's
    /// init execs, so every child it forks starts inside.
    fn add_process(&self, pid: Pid) -> Result<()>;

    /// Validates OCI `linux.resources` (see [`Resources::try_from`]), then creates the group if
    /// needed and writes the limits. Invalid input writes and creates nothing.
    fn apply(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let resources = Resources::try_from(resources)?;
        self.apply_resources(&resources)
    }

    /// Writes already validated [`Resources`]; checks what needs the host (cpuset ranges
    /// against the parent's) before writing anything, then creates the group if needed.
    fn apply_resources(&self, resources: &Resources) -> Result<()>;

    /// Freezes every process of the group and waits until the kernel reports it frozen.
    fn freeze(&self) -> Result<()>;

    /// Thaws the group and waits until it runs again.
    fn thaw(&self) -> Result<()>;

    /// True when the group is frozen (or freezing).
    fn is_frozen(&self) -> Result<bool>;

    /// Sends `signal` to every process of the group and of its descendant groups. For SIGKILL the
    /// group is frozen around the kill (or `cgroup.kill` is used on v2), so a forking process
    /// cannot escape. It does not wait for the processes to exit: [`delete`](Self::delete) does.
    fn kill_all(&self, signal: Signal) -> Result<()>;

    /// The processes of the group and of its descendant groups, sorted.
    fn pids(&self) -> Result<Vec<Pid>>;

    /// A snapshot of the group's resource use.
    fn stats(&self) -> Result<Stats>;

    /// How many processes of the group the OOM killer has killed so far.
    fn oom_kills(&self) -> Result<u64>;

    /// True when the group exists (in at least one controller).
    fn exists(&self) -> bool;

    /// Removes the group and its descendant groups in every controller. It kills nothing: it
    /// retries while processes are still exiting (up to 10 s), then fails with
    /// [`Error::Timeout`]. Deleting a group that does not exist succeeds.
    fn delete(&self) -> Result<()>;

    /// Files through which a single-threaded process moves *itself* into the group by writing
    /// `0` to each (cgroup v1's `tasks`), or `None` where there is no such fast path (v2, fakes):
    /// then [`add_process`](Self::add_process) is the way in. See
    /// [`AnyManager::self_join_files`] for why.
    fn self_join_files(&self) -> Option<Vec<std::path::PathBuf>> {
        None
    }
}
