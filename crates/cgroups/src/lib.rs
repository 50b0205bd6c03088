//! Resource limits and statistics for Berth containers, on cgroup v1 and v2.
//!
//! berth-cgroups owns every resource limit and every resource statistic of a container. It knows
//! nothing of images or namespaces: it is given a cgroup root (normally `/sys/fs/cgroup`) and a
//! relative group path (Berth uses `berth/<container-id>`, a pod uses `berth/<pod>/<container>`).
//!
//! # Where to start
//!
//! - [`manager`] detects the host's layout under a root ([`detect`]; a hybrid host counts as v1)
//!   and returns an [`AnyManager`] for one group.
//! - [`CgroupManager`] is the trait at the centre: `create`, `add_process` (before the container
//!   execs, so no child escapes), `apply` of OCI `linux.resources`, `freeze`/`thaw` (pause and
//!   resume), `kill_all`, `pids` (for `ps`), `stats`, `oom_kills`, and `delete`.
//! - [`V1Manager`] and [`V2Manager`] are the two real implementations; [`FakeManager`] records
//!   calls in memory for downstream tests.
//! - [`Resources`] is the validated form of OCI `linux.resources`; [`convert`] holds every unit
//!   conversion between OCI, v1 and v2 (shares ↔ weight, memory+swap ↔ swap, …).
//!
//! # The lifecycle, as a runtime drives it
//!
//! ```no_run
//! use std::path::Path;
//! use berth_cgroups::{CgroupManager, manager};
//! use nix::sys::signal::Signal;
//! use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cgroup = manager(Path::new("/sys/fs/cgroup"), Path::new("berth/web-1"))?;
//! let resources = LinuxResourcesBuilder::default()
//!     .memory(LinuxMemoryBuilder::default().limit(256 << 20).build()?)
//!     .build()?;
//! cgroup.apply(&resources)?; // validates everything first; creates the group if needed
//! # let child_pid = nix::unistd::Pid::from_raw(1);
//! cgroup.add_process(child_pid)?; // before the child execs
//! cgroup.freeze()?; // `berth pause`
//! cgroup.thaw()?; // `berth resume`
//! let stats = cgroup.stats()?;
//! println!("{} bytes, {} OOM kills", stats.memory.usage, stats.memory.oom_kills);
//! cgroup.kill_all(Signal::SIGKILL)?;
//! cgroup.delete()?; // waits for the group to empty, then removes every directory
//! # Ok(())
//! # }
//! ```
//!
//! # Reporting OOM kills
//!
//! Read [`CgroupManager::oom_kills`] when the container starts and again after its init exits:
//! if the count went up, report the container as `OOMKilled`, as Docker does.
//!
//! # What is not supported
//!
//! `net_cls`/`net_prio`, rdma, realtime CPU limits and per-device blkio weights are refused by
//! [`Resources::try_from`] with [`Error::Unsupported`]. Hugepage limits are written to a v1
//! `hugetlb` hierarchy, to cgroup v2, or on a hybrid host whose hugetlb is on the cgroup2 side
//! (`<root>/unified`) to a group there, which the container's processes join too. On cgroup v2,
//! device rules are **not enforced** (v2 needs an eBPF device program, which berth-cgroups
//! does not load): [`V2Manager`] accepts and ignores them. Kernel memory limits (`memory.kernel`,
//! `memory.kernelTCP`, deprecated in OCI and gone from current kernels) are ignored, as runc does.

mod any;
pub mod convert;
mod detect;
mod error;
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
pub trait CgroupManager: Send + Sync {
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
}
