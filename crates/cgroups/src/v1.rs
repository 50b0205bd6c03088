//! [`V1Manager`]: one group across the cgroup v1 hierarchies under a root (`<root>/memory`,
//! `<root>/cpu`, … or combined mounts such as `<root>/cpu,cpuacct`). Limits are written through
//! cgroups-rs's v1 controllers; the directory lifecycle and the statistics are done here (see
//! `group.rs` for why, and `stats` below: cgroups-rs's readers turn errors into zeros).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cgroups_rs::FreezerState;
use cgroups_rs::fs::MaxValue;
use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::devices::{DevicePermissions, DeviceType, DevicesController};
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::group::{self, backend};
use crate::stats::{self, CpuStats, IoStats, MemoryStats, PidsStats, Stats};
use crate::{CgroupManager, CpuList, Error, Resources, Result, V2Manager};

/// The group's hugetlb directory on a v1 or hybrid host.
enum HugetlbGroup {
    /// In a v1 `hugetlb` hierarchy.
    V1(PathBuf),
    /// On the cgroup2 side of a hybrid host.
    Unified(V2Manager),
}

/// How long freeze and thaw wait for the kernel to report the new state.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The cgroup v1 controllers berth-cgroups manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum V1Controller {
    /// Block I/O (joined before memory: writeback accounting needs blkio first).
    Blkio,
    /// Memory.
    Memory,
    /// Task counts.
    Pids,
    /// CPU and memory-node placement.
    Cpuset,
    /// CPU accounting.
    Cpuacct,
    /// CPU bandwidth and shares.
    Cpu,
    /// Device access.
    Devices,
    /// Freezing (pause/resume).
    Freezer,
}

impl V1Controller {
    /// Every managed controller, in the order a process joins them.
    pub const ALL: [V1Controller; 8] = [
        V1Controller::Blkio,
        V1Controller::Memory,
        V1Controller::Pids,
        V1Controller::Cpuset,
        V1Controller::Cpuacct,
        V1Controller::Cpu,
        V1Controller::Devices,
        V1Controller::Freezer,
    ];

    /// The kernel's name for it (`memory`, `cpuacct`, …).
    pub fn name(self) -> &'static str {
        match self {
            V1Controller::Blkio => "blkio",
            V1Controller::Memory => "memory",
            V1Controller::Pids => "pids",
            V1Controller::Cpuset => "cpuset",
            V1Controller::Cpuacct => "cpuacct",
            V1Controller::Cpu => "cpu",
            V1Controller::Devices => "devices",
            V1Controller::Freezer => "freezer",
        }
    }

    /// The controller with kernel name `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// A group in the cgroup v1 hierarchies under a root.
#[derive(Debug, Clone)]
pub struct V1Manager {
    root: PathBuf,
    path: PathBuf,
    /// Hierarchy directory (mount point) of each controller found under the root.
    mounts: BTreeMap<V1Controller, PathBuf>,
}

impl V1Manager {
    /// A manager for the group at relative `path` in the v1 hierarchies found under `root`
    /// (`<root>/<controller>` directories, combined mounts like `cpu,cpuacct` included).
    /// Nothing is created.
    pub fn new(root: &Path, path: &Path) -> Result<Self> {
        let path = group::relative_group_path(path)?;
        let mut mounts = BTreeMap::new();
        let entries: Vec<String> = std::fs::read_dir(root)
            .map_err(|e| Error::io("list", root, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for controller in V1Controller::ALL {
            let exact = root.join(controller.name());
            let dir = if exact.is_dir() {
                Some(exact)
            } else {
                entries
                    .iter()
                    .find(|name| name.split(',').any(|n| n == controller.name()))
                    .map(|name| root.join(name))
                    .filter(|dir| dir.is_dir())
            };
            if let Some(dir) = dir {
                // Resolve `cpu -> cpu,cpuacct` symlinks so a shared hierarchy is handled once.
                let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io("resolve", &dir, e))?;
                mounts.insert(controller, dir);
            }
        }
        if mounts.is_empty() {
            return Err(Error::NoHierarchy {
                root: root.to_owned(),
            });
        }
        Ok(V1Manager {
            root: root.to_owned(),
            path,
            mounts,
        })
    }

    /// A manager for the child group `name` (a container inside a pod group).
    pub fn child(&self, name: &str) -> Result<Self> {
        let path = group::relative_group_path(&self.path.join(name))?;
        if path.parent() != Some(self.path.as_path()) {
            return Err(Error::InvalidPath {
                path: name.into(),
                reason: "must be one path component",
            });
        }
        Ok(V1Manager {
            root: self.root.clone(),
            path,
            mounts: self.mounts.clone(),
        })
    }

    /// The group's path relative to each hierarchy's root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The controllers found under the root.
    pub fn controllers(&self) -> impl Iterator<Item = V1Controller> + '_ {
        self.mounts.keys().copied()
    }

    /// The group's directory in `controller`'s hierarchy, if that controller is mounted.
    pub fn group_dir(&self, controller: V1Controller) -> Option<PathBuf> {
        self.mounts
            .get(&controller)
            .map(|mount| mount.join(&self.path))
    }

    /// Each distinct group directory once (combined hierarchies share one), in join order.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut seen = Vec::<PathBuf>::new();
        for controller in V1Controller::ALL {
            if let Some(dir) = self.group_dir(controller)
                && !seen.contains(&dir)
            {
                seen.push(dir);
            }
        }
        seen
    }

    fn require(
        &self,
        controller: V1Controller,
        needed_for: &'static str,
    ) -> Result<(PathBuf, PathBuf)> {
        let mount = self
            .mounts
            .get(&controller)
            .ok_or(Error::ControllerMissing {
                controller: controller.name(),
                needed_for,
            })?;
        Ok((mount.join(&self.path), mount.clone()))
    }

    /// Where hugepage limits go: a v1 `hugetlb` hierarchy when one is mounted, else the
    /// cgroup2 side of a hybrid host (`<root>/unified`) when it offers hugetlb (as on hosts
    /// where systemd leaves hugetlb to cgroup2).
    fn hugetlb_group(&self) -> Option<HugetlbGroup> {
        let v1 = self.root.join("hugetlb");
        if v1.join("cgroup.procs").is_file() {
            return Some(HugetlbGroup::V1(v1.join(&self.path)));
        }
        let unified = self.root.join("unified");
        let controllers = std::fs::read_to_string(unified.join("cgroup.controllers")).ok()?;
        if controllers.split_whitespace().any(|c| c == "hugetlb") {
            return V2Manager::new(&unified, &self.path)
                .ok()
                .map(HugetlbGroup::Unified);
        }
        None
    }

    /// The hugetlb group directories that exist (a group only has one once limits were set).
    fn hugetlb_dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        ["hugetlb", "unified"]
            .into_iter()
            .map(|h| self.root.join(h).join(&self.path))
            .filter(|dir| dir.is_dir())
    }

    fn write_hugetlb(&self, res: &Resources) -> Result<()> {
        if res.hugepages.is_empty() {
            return Ok(());
        }
        match self.hugetlb_group() {
            Some(HugetlbGroup::V1(dir)) => {
                group::create_dir(&dir)?;
                group::write_hugepages(&dir, res, "limit_in_bytes", "-1")
            }
            Some(HugetlbGroup::Unified(group)) => {
                group.create()?;
                group::write_hugepages(&group.dir(), res, "max", "max")
            }
            None => Err(Error::ControllerMissing {
                controller: "hugetlb",
                needed_for: "hugepage limits",
            }),
        }
    }

    /// Removes the group's cgroup2 hugetlb directory, then the ancestors left empty, and
    /// disables hugetlb for the cgroup2 root's children when nothing else uses it: while it is
    /// enabled there, hugetlb cannot be mounted as a v1 hierarchy (which crun needs on a
    /// hybrid host), so the host is left as it was found.
    fn delete_unified_hugetlb(&self) -> Result<()> {
        let unified = self.root.join("unified");
        let mut dir = unified.join(&self.path);
        if !dir.is_dir() {
            return Ok(());
        }
        group::remove_tree(&dir)?;
        while dir.pop() && dir != unified && dir.starts_with(&unified) {
            if std::fs::remove_dir(&dir).is_err() {
                return Ok(());
            }
        }
        let _ = std::fs::write(unified.join("cgroup.subtree_control"), "-hugetlb");
        Ok(())
    }

    /// The `tasks` file of each of the group's directories, for a process that moves itself
    /// in ([`AnyManager::self_join_files`](crate::AnyManager::self_join_files)); `None` when
    /// the group also has a cgroup2 hugetlb directory, which has no fast self-move.
    pub fn self_join_files(&self) -> Option<Vec<PathBuf>> {
        if self.root.join("unified").join(&self.path).is_dir() {
            return None;
        }
        Some(
            self.dirs()
                .into_iter()
                .chain(self.hugetlb_dirs())
                .map(|dir| dir.join("tasks"))
                .collect(),
        )
    }

    /// The directory whose `cgroup.procs` tree lists the group's processes.
    fn primary_dir(&self) -> PathBuf {
        [
            V1Controller::Pids,
            V1Controller::Freezer,
            V1Controller::Memory,
        ]
        .into_iter()
        .find_map(|c| self.group_dir(c))
        .unwrap_or_else(|| self.dirs().remove(0))
    }

    /// Creates the cpuset group level by level, giving each new level its parent's `cpus` and
    /// `mems` (v1 starts them empty, and an empty cpuset refuses processes).
    fn create_cpuset(&self, mount: &Path) -> Result<()> {
        let mut dir = mount.to_path_buf();
        for part in self.path.components() {
            let parent = dir.clone();
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create", &dir, e)),
            }
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if read_or_empty(&dir.join(file))?.trim().is_empty() {
                    let inherited = read_or_empty(&parent.join(file))?;
                    group::write(&dir, file, inherited.trim())?;
                }
            }
        }
        Ok(())
    }

    /// The nearest non-empty `file` of the group's ancestors (the parent's effective set).
    fn parent_cpuset(&self, mount: &Path, file: &str) -> Result<Option<CpuList>> {
        let mut dir = mount.join(&self.path);
        while dir.pop() && dir.starts_with(mount) {
            let text = read_or_empty(&dir.join(file))?;
            if !text.trim().is_empty() {
                return CpuList::parse("cpu.cpus", &text).map(Some);
            }
        }
        Ok(None)
    }

    /// Everything in `res` that depends on the host, checked before anything is written.
    fn check(&self, res: &Resources) -> Result<()> {
        if !res.unified.is_empty() {
            return Err(Error::Unsupported {
                what: "`unified` resources on cgroup v1".into(),
            });
        }
        let mem = &res.memory;
        if mem.limit.is_some()
            || mem.reservation.is_some()
            || mem.swap.is_some()
            || mem.swappiness.is_some()
        {
            let (_, mount) = self.require(V1Controller::Memory, "memory limits")?;
            if mem.swap.is_some() && !mount.join("memory.memsw.limit_in_bytes").exists() {
                return Err(Error::Unsupported {
                    what: "memory.swap: the kernel has no swap accounting (memory.memsw.*)".into(),
                });
            }
        }
        let cpu = &res.cpu;
        if cpu.shares.is_some() || cpu.quota.is_some() || cpu.period.is_some() {
            self.require(V1Controller::Cpu, "cpu shares and quota")?;
        }
        for (field, list, file) in [
            ("cpu.cpus", &cpu.cpus, "cpuset.cpus"),
            ("cpu.mems", &cpu.mems, "cpuset.mems"),
        ] {
            if let Some(list) = list {
                let (_, mount) = self.require(V1Controller::Cpuset, "cpus and mems")?;
                if let Some(available) = self.parent_cpuset(&mount, file)?
                    && !list.is_subset(&available)
                {
                    return Err(Error::invalid(
                        field,
                        format!("{list} is not within the available {available}"),
                    ));
                }
            }
        }
        if res.pids_max.is_some() {
            self.require(V1Controller::Pids, "the pids limit")?;
        }
        let bio = &res.block_io;
        if bio.weight.is_some()
            || !bio.read_bps.is_empty()
            || !bio.write_bps.is_empty()
            || !bio.read_iops.is_empty()
            || !bio.write_iops.is_empty()
        {
            let (_, mount) = self.require(V1Controller::Blkio, "block I/O limits")?;
            if bio.weight.is_some() && !mount.join("blkio.weight").exists() {
                return Err(Error::Unsupported {
                    what: "blockIO.weight: the kernel has no blkio.weight (no CFQ/BFQ weights)"
                        .into(),
                });
            }
        }
        if !res.devices.is_empty() {
            self.require(V1Controller::Devices, "device rules")?;
        }
        if !res.hugepages.is_empty() {
            if self.hugetlb_group().is_none() {
                return Err(Error::ControllerMissing {
                    controller: "hugetlb",
                    needed_for: "hugepage limits",
                });
            }
            group::check_hugepage_sizes(res)?;
        }
        Ok(())
    }

    fn write_memory(&self, res: &Resources) -> Result<()> {
        let mem = &res.memory;
        let Some((dir, mount)) = self
            .mounts
            .get(&V1Controller::Memory)
            .map(|m| (m.join(&self.path), m.clone()))
        else {
            return Ok(());
        };
        let ctl = MemController::new(dir.clone(), mount, false);
        let to_i64 = |v: Option<u64>| v.map_or(-1, |v| v.min(i64::MAX as u64) as i64);
        let memsw_file = dir.join("memory.memsw.limit_in_bytes");
        // memory.memsw must stay >= memory.limit at every step, so the order depends on direction.
        let swap = match (mem.limit, mem.swap) {
            // Lifting the memory limit needs memory+swap lifted first.
            (Some(None), None) if memsw_file.exists() => Some(None),
            (_, swap) => swap,
        };
        match (mem.limit, swap) {
            (limit, Some(swap)) => {
                // A fake tree has no such file yet: treat it as unlimited.
                let current = match read_or_empty(&memsw_file)? {
                    text if text.trim().is_empty() => None,
                    text => stats::parse_limit(&memsw_file, &text)?,
                };
                let raise_swap_first = match (swap, current) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(new), Some(cur)) => new > cur,
                };
                if raise_swap_first {
                    backend(
                        "set memory+swap limit",
                        &dir,
                        ctl.set_memswap_limit(to_i64(swap)),
                    )?;
                }
                if let Some(limit) = limit {
                    backend("set memory limit", &dir, ctl.set_limit(to_i64(limit)))?;
                }
                if !raise_swap_first {
                    backend(
                        "set memory+swap limit",
                        &dir,
                        ctl.set_memswap_limit(to_i64(swap)),
                    )?;
                }
            }
            (Some(limit), None) => backend("set memory limit", &dir, ctl.set_limit(to_i64(limit)))?,
            (None, None) => {}
        }
        if let Some(reservation) = mem.reservation {
            backend(
                "set memory reservation",
                &dir,
                ctl.set_soft_limit(to_i64(reservation)),
            )?;
        }
        if let Some(swappiness) = mem.swappiness {
            backend("set swappiness", &dir, ctl.set_swappiness(swappiness))?;
        }
        if mem.disable_oom_killer {
            backend("disable the OOM killer", &dir, ctl.disable_oom_killer())?;
        }
        Ok(())
    }

    fn write_cpu(&self, res: &Resources) -> Result<()> {
        let cpu = &res.cpu;
        if let Some(mount) = self.mounts.get(&V1Controller::Cpu) {
            let dir = mount.join(&self.path);
            let ctl = CpuController::new(dir.clone(), mount.clone(), false);
            if let Some(shares) = cpu.shares {
                backend("set cpu shares", &dir, ctl.set_shares(shares))?;
            }
            let quota = cpu.quota.map(|q| q.map_or(-1, |q| q as i64));
            let period_then_quota = || -> cgroups_rs::fs::error::Result<()> {
                if let Some(period) = cpu.period {
                    ctl.set_cfs_period(period)?;
                }
                if let Some(quota) = quota {
                    ctl.set_cfs_quota(quota)?;
                }
                Ok(())
            };
            // The kernel checks quota against period at each write; if one order is refused,
            // the other one is valid (runc does the same).
            if period_then_quota().is_err() {
                if let Some(quota) = quota {
                    backend("set cpu quota", &dir, ctl.set_cfs_quota(quota))?;
                }
                if let Some(period) = cpu.period {
                    backend("set cpu period", &dir, ctl.set_cfs_period(period))?;
                }
            }
        }
        if let Some(mount) = self.mounts.get(&V1Controller::Cpuset) {
            let dir = mount.join(&self.path);
            let ctl = CpuSetController::new(dir.clone(), mount.clone(), false);
            if let Some(cpus) = &cpu.cpus {
                backend("set cpuset.cpus", &dir, ctl.set_cpus(&cpus.to_string()))?;
            }
            if let Some(mems) = &cpu.mems {
                backend("set cpuset.mems", &dir, ctl.set_mems(&mems.to_string()))?;
            }
        }
        Ok(())
    }

    fn write_pids_blkio_devices(&self, res: &Resources) -> Result<()> {
        if let (Some(max), Some(mount)) = (res.pids_max, self.mounts.get(&V1Controller::Pids)) {
            let dir = mount.join(&self.path);
            let ctl = PidController::new(dir.clone(), mount.clone(), false);
            let max = max.map_or(MaxValue::Max, |n| {
                MaxValue::Value(n.min(i64::MAX as u64) as i64)
            });
            backend("set pids.max", &dir, ctl.set_pid_max(max))?;
        }
        if let Some(mount) = self.mounts.get(&V1Controller::Blkio) {
            let dir = mount.join(&self.path);
            let ctl = BlkIoController::new(dir.clone(), mount.clone(), false);
            let bio = &res.block_io;
            if let Some(weight) = bio.weight {
                backend("set blkio.weight", &dir, ctl.set_weight(u64::from(weight)))?;
            }
            for t in &bio.read_bps {
                backend(
                    "throttle read bps",
                    &dir,
                    ctl.throttle_read_bps_for_device(t.major, t.minor, t.rate),
                )?;
            }
            for t in &bio.write_bps {
                backend(
                    "throttle write bps",
                    &dir,
                    ctl.throttle_write_bps_for_device(t.major, t.minor, t.rate),
                )?;
            }
            for t in &bio.read_iops {
                backend(
                    "throttle read iops",
                    &dir,
                    ctl.throttle_read_iops_for_device(t.major, t.minor, t.rate),
                )?;
            }
            for t in &bio.write_iops {
                backend(
                    "throttle write iops",
                    &dir,
                    ctl.throttle_write_iops_for_device(t.major, t.minor, t.rate),
                )?;
            }
        }
        if let Some(mount) = self.mounts.get(&V1Controller::Devices) {
            let dir = mount.join(&self.path);
            let ctl = DevicesController::new(dir.clone(), mount.clone());
            for rule in &res.devices {
                let kind = DeviceType::from_char(Some(rule.kind)).unwrap_or(DeviceType::All);
                let access: Vec<DevicePermissions> = rule
                    .access
                    .chars()
                    .filter_map(DevicePermissions::from_char)
                    .collect();
                let major = rule.major.map_or(-1, |n| n as i64);
                let minor = rule.minor.map_or(-1, |n| n as i64);
                if rule.allow {
                    backend(
                        "allow device",
                        &dir,
                        ctl.allow_device(kind, major, minor, &access),
                    )?;
                } else {
                    backend(
                        "deny device",
                        &dir,
                        ctl.deny_device(kind, major, minor, &access),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn freezer(&self, needed_for: &'static str) -> Result<(PathBuf, FreezerController)> {
        let (dir, mount) = self.require(V1Controller::Freezer, needed_for)?;
        Ok((dir.clone(), FreezerController::new(dir, mount, false)))
    }

    fn memory_stats(&self) -> Result<MemoryStats> {
        let Some(dir) = self.group_dir(V1Controller::Memory) else {
            return Ok(MemoryStats::default());
        };
        let oom_kills = self.oom_kills()?;
        Ok(MemoryStats {
            usage: stats::read_u64(&dir.join("memory.usage_in_bytes"))?,
            max_usage: stats::read_u64(&dir.join("memory.max_usage_in_bytes"))?,
            limit: stats::read_limit(&dir.join("memory.limit_in_bytes"))?,
            limit_hits: stats::read_u64(&dir.join("memory.failcnt"))?,
            oom_events: oom_kills,
            oom_kills,
        })
    }

    fn cpu_stats(&self) -> Result<CpuStats> {
        let mut cpu = CpuStats::default();
        if let Some(dir) = self.group_dir(V1Controller::Cpuacct) {
            cpu.usage_ns = stats::read_u64(&dir.join("cpuacct.usage"))?;
            cpu.user_ns = stats::read_u64(&dir.join("cpuacct.usage_user"))?;
            cpu.system_ns = stats::read_u64(&dir.join("cpuacct.usage_sys"))?;
        }
        if let Some(dir) = self.group_dir(V1Controller::Cpu) {
            let stat = stats::read_flat_keyed(&dir.join("cpu.stat"))?;
            cpu.periods = stat.get("nr_periods").copied().unwrap_or(0);
            cpu.throttled_periods = stat.get("nr_throttled").copied().unwrap_or(0);
            cpu.throttled_ns = stat.get("throttled_time").copied().unwrap_or(0);
        }
        Ok(cpu)
    }
}

/// Reads a file, treating a missing one as empty (a fresh level of a fake cpuset tree).
fn read_or_empty(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

impl CgroupManager for V1Manager {
    fn create(&self) -> Result<()> {
        let cpuset_mount = self.mounts.get(&V1Controller::Cpuset);
        for dir in self.dirs() {
            match cpuset_mount {
                Some(mount) if dir == mount.join(&self.path) => self.create_cpuset(mount)?,
                _ => group::create_dir(&dir)?,
            }
        }
        Ok(())
    }

    fn add_process(&self, pid: Pid) -> Result<()> {
        let pid = pid.to_string();
        for dir in self.dirs().into_iter().chain(self.hugetlb_dirs()) {
            group::write(&dir, "cgroup.procs", &pid)?;
        }
        Ok(())
    }

    fn apply_resources(&self, resources: &Resources) -> Result<()> {
        self.check(resources)?;
        self.create()?;
        self.write_memory(resources)?;
        self.write_cpu(resources)?;
        self.write_pids_blkio_devices(resources)?;
        self.write_hugetlb(resources)
    }

    fn freeze(&self) -> Result<()> {
        let (dir, ctl) = self.freezer("freeze")?;
        let result = group::wait_until(&dir, "did not freeze", FREEZE_TIMEOUT, || {
            // Writing FROZEN again nudges a group stuck in FREEZING (runc does the same).
            backend("freeze", &dir, ctl.freeze())?;
            Ok(matches!(
                backend("read freezer.state", &dir, ctl.state())?,
                FreezerState::Frozen
            ))
        });
        if result.is_err() {
            let _ = ctl.thaw();
        }
        result
    }

    fn thaw(&self) -> Result<()> {
        let (dir, ctl) = self.freezer("thaw")?;
        backend("thaw", &dir, ctl.thaw())?;
        group::wait_until(&dir, "did not thaw", FREEZE_TIMEOUT, || {
            Ok(matches!(
                backend("read freezer.state", &dir, ctl.state())?,
                FreezerState::Thawed
            ))
        })
    }

    fn is_frozen(&self) -> Result<bool> {
        let (dir, ctl) = self.freezer("reading the freezer state")?;
        Ok(!matches!(
            backend("read freezer.state", &dir, ctl.state())?,
            FreezerState::Thawed
        ))
    }

    fn kill_all(&self, signal: Signal) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let freeze_around =
            signal == Signal::SIGKILL && self.mounts.contains_key(&V1Controller::Freezer);
        if freeze_around && !self.is_frozen()? {
            // Best effort: a group that will not freeze (a task in D state) is still killed.
            let _ = self.freeze();
        }
        let result = group::tree_procs(&self.primary_dir())
            .and_then(|pids| group::signal_all(&pids, signal));
        if freeze_around {
            // Killed tasks only die once thawed; a paused container is thawed too, to die.
            self.thaw()?;
        }
        result
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        group::tree_procs(&self.primary_dir())
    }

    fn stats(&self) -> Result<Stats> {
        let pids = match self.group_dir(V1Controller::Pids) {
            Some(dir) => PidsStats {
                current: stats::read_u64(&dir.join("pids.current"))?,
                limit: stats::read_limit(&dir.join("pids.max"))?,
            },
            None => PidsStats::default(),
        };
        let io = match self.group_dir(V1Controller::Blkio) {
            Some(dir) => {
                let recursive = dir.join("blkio.throttle.io_service_bytes_recursive");
                let file = if recursive.exists() {
                    recursive
                } else {
                    dir.join("blkio.throttle.io_service_bytes")
                };
                stats::parse_blkio_service_bytes(&stats::read(&file)?)
            }
            None => IoStats::default(),
        };
        Ok(Stats {
            memory: self.memory_stats()?,
            cpu: self.cpu_stats()?,
            pids,
            io,
        })
    }

    fn oom_kills(&self) -> Result<u64> {
        let (dir, _) = self.require(V1Controller::Memory, "OOM kill counts")?;
        let control = stats::read_flat_keyed(&dir.join("memory.oom_control"))?;
        Ok(control.get("oom_kill").copied().unwrap_or(0))
    }

    fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.is_dir())
    }

    fn delete(&self) -> Result<()> {
        for dir in self.dirs() {
            group::remove_tree(&dir)?;
        }
        group::remove_tree(&self.root.join("hugetlb").join(&self.path))?;
        self.delete_unified_hugetlb()
    }

    fn self_join_files(&self) -> Option<Vec<PathBuf>> {
        V1Manager::self_join_files(self)
    }
}
