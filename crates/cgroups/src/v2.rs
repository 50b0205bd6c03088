//! [`V2Manager`]: one group in the unified cgroup v2 hierarchy under a root. Files are written
//! here directly rather than through cgroups-rs, whose v2 paths get several of them wrong in 0.5
//! (`set_swappiness` writes `memory.swap.max`, `set_weight` writes `io.bfq.weight`, and
//! `set_memswap_limit` writes OCI's memory+swap total where v2 wants swap alone); freezing still
//! goes through cgroups-rs's freezer, which handles `cgroup.freeze` correctly.
//!
//! On a hybrid host the v1 manager uses one of these for hugetlb, which only the cgroup2 side
//! offers there.
//!
//! Device rules are not enforced on v2 (that needs a BPF_CGROUP_DEVICE program): they are
//! accepted and ignored, as documented at the crate root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cgroups_rs::fs::freezer::FreezerController;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::convert::{
    blkio_weight_to_io_weight, cpu_max_line, memsw_to_swap_max, shares_to_weight, v2_limit,
};
use crate::group::{self, backend};
use crate::stats::{self, CpuStats, MemoryStats, PidsStats, Stats};
use crate::{CgroupManager, CpuList, Error, Resources, Result};

/// How long freeze and thaw wait for `cgroup.events` to report the new state.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The controllers enabled for Berth's groups, when the parent offers them.
const WANTED: [&str; 6] = ["cpu", "cpuset", "io", "memory", "pids", "hugetlb"];

/// A group in the cgroup v2 hierarchy under a root.
#[derive(Debug, Clone)]
pub struct V2Manager {
    root: PathBuf,
    path: PathBuf,
}

impl V2Manager {
    /// A manager for the group at relative `path` under the cgroup2 mount `root`. Nothing is
    /// created.
    pub fn new(root: &Path, path: &Path) -> Result<Self> {
        Ok(V2Manager {
            root: root.to_owned(),
            path: group::relative_group_path(path)?,
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
        Ok(V2Manager {
            root: self.root.clone(),
            path,
        })
    }

    /// The group's path relative to the root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The group's directory.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.path)
    }

    /// Controllers listed in `dir/file` (`cgroup.controllers` or `cgroup.subtree_control`).
    fn controller_list(dir: &Path, file: &str) -> Result<BTreeSet<String>> {
        Ok(read_optional(&dir.join(file))?
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    /// Fails unless the root offers `controller`.
    fn require(&self, controller: &'static str, needed_for: &'static str) -> Result<()> {
        if Self::controller_list(&self.root, "cgroup.controllers")?.contains(controller) {
            Ok(())
        } else {
            Err(Error::ControllerMissing {
                controller,
                needed_for,
            })
        }
    }

    /// The nearest ancestor's effective cpuset (`cpuset.cpus.effective` / `.mems.effective`).
    fn parent_effective(&self, file: &str) -> Result<Option<CpuList>> {
        let mut dir = self.dir();
        while dir.pop() && dir.starts_with(&self.root) {
            if let Some(text) = read_optional(&dir.join(file))?
                && !text.trim().is_empty()
            {
                return CpuList::parse("cpu.cpus", &text).map(Some);
            }
        }
        Ok(None)
    }

    fn check(&self, res: &Resources) -> Result<()> {
        let mem = &res.memory;
        if mem.limit.is_some() || mem.reservation.is_some() || mem.swap.is_some() {
            self.require("memory", "memory limits")?;
        }
        if let (None, Some(Some(_))) = (mem.limit, mem.swap) {
            return Err(Error::invalid(
                "memory.swap",
                "cgroup v2 needs memory.limit to convert a memory+swap total",
            ));
        }
        let cpu = &res.cpu;
        if cpu.shares.is_some() || cpu.quota.is_some() || cpu.period.is_some() {
            self.require("cpu", "cpu weight and quota")?;
        }
        for (field, list, file) in [
            ("cpu.cpus", &cpu.cpus, "cpuset.cpus.effective"),
            ("cpu.mems", &cpu.mems, "cpuset.mems.effective"),
        ] {
            if let Some(list) = list {
                self.require("cpuset", "cpus and mems")?;
                if let Some(available) = self.parent_effective(file)?
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
            self.require("pids", "the pids limit")?;
        }
        let bio = &res.block_io;
        if bio.weight.is_some()
            || !bio.read_bps.is_empty()
            || !bio.write_bps.is_empty()
            || !bio.read_iops.is_empty()
            || !bio.write_iops.is_empty()
        {
            self.require("io", "block I/O limits")?;
        }
        if !res.hugepages.is_empty() {
            self.require("hugetlb", "hugepage limits")?;
            group::check_hugepage_sizes(res)?;
        }
        Ok(())
    }

    fn write_limits(&self, res: &Resources) -> Result<()> {
        let dir = self.dir();
        let mem = &res.memory;
        if let Some(swap) = mem.swap {
            // Lower swap before lowering memory is harmless in v2 (the files are independent).
            let limit = mem.limit.flatten();
            group::write(
                &dir,
                "memory.swap.max",
                &v2_limit(memsw_to_swap_max(limit, swap)),
            )?;
        }
        if let Some(limit) = mem.limit {
            group::write(&dir, "memory.max", &v2_limit(limit))?;
        }
        if let Some(reservation) = mem.reservation {
            group::write(&dir, "memory.low", &v2_limit(reservation))?;
        }
        let cpu = &res.cpu;
        if let Some(shares) = cpu.shares {
            group::write(&dir, "cpu.weight", &shares_to_weight(shares).to_string())?;
        }
        if cpu.quota.is_some() || cpu.period.is_some() {
            let current = read_optional(&dir.join("cpu.max"))?.unwrap_or_default();
            let mut parts = current.split_whitespace();
            let current_quota = parts.next().and_then(|q| q.parse::<u64>().ok());
            let current_period = parts.next().and_then(|p| p.parse::<u64>().ok());
            let quota = cpu.quota.unwrap_or(current_quota);
            let period = cpu
                .period
                .or(current_period)
                .unwrap_or(crate::convert::CFS_PERIOD_DEFAULT_US);
            group::write(&dir, "cpu.max", &cpu_max_line(quota, period))?;
        }
        if let Some(cpus) = &cpu.cpus {
            group::write(&dir, "cpuset.cpus", &cpus.to_string())?;
        }
        if let Some(mems) = &cpu.mems {
            group::write(&dir, "cpuset.mems", &mems.to_string())?;
        }
        if let Some(max) = res.pids_max {
            group::write(&dir, "pids.max", &v2_limit(max))?;
        }
        let bio = &res.block_io;
        if let Some(weight) = bio.weight {
            if dir.join("io.weight").exists() {
                group::write(
                    &dir,
                    "io.weight",
                    &format!("default {}", blkio_weight_to_io_weight(weight)),
                )?;
            } else {
                // BFQ's weight keeps the blkio scale (1..=1000).
                group::write(&dir, "io.bfq.weight", &weight.to_string())?;
            }
        }
        let mut io_max: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
        for (key, list) in [
            ("rbps", &bio.read_bps),
            ("wbps", &bio.write_bps),
            ("riops", &bio.read_iops),
            ("wiops", &bio.write_iops),
        ] {
            for t in list {
                io_max
                    .entry((t.major, t.minor))
                    .or_default()
                    .push(format!("{key}={}", t.rate));
            }
        }
        for ((major, minor), limits) in io_max {
            group::write(
                &dir,
                "io.max",
                &format!("{major}:{minor} {}", limits.join(" ")),
            )?;
        }
        group::write_hugepages(&dir, res, "max", "max")?;
        for (file, value) in &res.unified {
            group::write(&dir, file, value)?;
        }
        Ok(())
    }

    fn freezer(&self) -> (PathBuf, FreezerController) {
        let dir = self.dir();
        (
            dir.clone(),
            FreezerController::new(dir, self.root.clone(), true),
        )
    }

    /// Whether `cgroup.events` reports the group frozen.
    fn events_frozen(&self) -> Result<bool> {
        let path = self.dir().join("cgroup.events");
        let events = stats::read_flat_keyed(&path)?;
        events
            .get("frozen")
            .map(|&f| f == 1)
            .ok_or_else(|| Error::Unsupported {
                what: format!(
                    "freezing: {} has no `frozen` key (kernel older than 5.2)",
                    path.display()
                ),
            })
    }
}

/// Reads a file, `None` when it does not exist (a controller that is not enabled).
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

impl CgroupManager for V2Manager {
    fn create(&self) -> Result<()> {
        let mut dir = self.root.clone();
        for part in self.path.components() {
            // Enable the wanted controllers for the children of every ancestor.
            let available = Self::controller_list(&dir, "cgroup.controllers")?;
            let enabled = Self::controller_list(&dir, "cgroup.subtree_control")?;
            let missing: Vec<String> = WANTED
                .iter()
                .filter(|c| available.contains(**c) && !enabled.contains(**c))
                .map(|c| format!("+{c}"))
                .collect();
            if !missing.is_empty() {
                group::write(&dir, "cgroup.subtree_control", &missing.join(" "))?;
            }
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create", &dir, e)),
            }
        }
        Ok(())
    }

    fn add_process(&self, pid: Pid) -> Result<()> {
        group::write(&self.dir(), "cgroup.procs", &pid.to_string())
    }

    fn apply_resources(&self, resources: &Resources) -> Result<()> {
        self.check(resources)?;
        self.create()?;
        self.write_limits(resources)
    }

    fn freeze(&self) -> Result<()> {
        let (dir, ctl) = self.freezer();
        backend("freeze", &dir, ctl.freeze())?;
        let result = group::wait_until(&dir, "did not freeze", FREEZE_TIMEOUT, || {
            self.events_frozen()
        });
        if result.is_err() {
            let _ = ctl.thaw();
        }
        result
    }

    fn thaw(&self) -> Result<()> {
        let (dir, ctl) = self.freezer();
        backend("thaw", &dir, ctl.thaw())?;
        group::wait_until(&dir, "did not thaw", FREEZE_TIMEOUT, || {
            Ok(!self.events_frozen()?)
        })
    }

    fn is_frozen(&self) -> Result<bool> {
        let path = self.dir().join("cgroup.freeze");
        Ok(stats::read(&path)?.trim() == "1")
    }

    fn kill_all(&self, signal: Signal) -> Result<()> {
        let dir = self.dir();
        if !dir.is_dir() {
            return Ok(());
        }
        if signal == Signal::SIGKILL && dir.join("cgroup.kill").exists() {
            // Kernel 5.14+: kills the whole subtree atomically, forks included.
            return group::write(&dir, "cgroup.kill", "1");
        }
        let freeze_around = signal == Signal::SIGKILL;
        if freeze_around && !self.is_frozen()? {
            // Best effort: a group that will not freeze (a task in D state) is still killed.
            let _ = self.freeze();
        }
        let result = group::tree_procs(&dir).and_then(|pids| group::signal_all(&pids, signal));
        if freeze_around {
            self.thaw()?;
        }
        result
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        group::tree_procs(&self.dir())
    }

    fn stats(&self) -> Result<Stats> {
        let dir = self.dir();
        if !dir.is_dir() {
            return Err(Error::io(
                "read stats of",
                dir,
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        let events = read_optional(&dir.join("memory.events"))?.unwrap_or_default();
        let events = stats::flat_keyed(&events);
        let memory = MemoryStats {
            usage: read_optional(&dir.join("memory.current"))?
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            max_usage: read_optional(&dir.join("memory.peak"))?
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            limit: match read_optional(&dir.join("memory.max"))? {
                Some(text) => stats::parse_limit(&dir.join("memory.max"), &text)?,
                None => None,
            },
            limit_hits: events.get("max").copied().unwrap_or(0),
            oom_events: events.get("oom").copied().unwrap_or(0),
            oom_kills: events.get("oom_kill").copied().unwrap_or(0),
        };
        let cpu_stat = read_optional(&dir.join("cpu.stat"))?.unwrap_or_default();
        let cpu_stat = stats::flat_keyed(&cpu_stat);
        let usec = |key: &str| cpu_stat.get(key).copied().unwrap_or(0) * 1000;
        let cpu = CpuStats {
            usage_ns: usec("usage_usec"),
            user_ns: usec("user_usec"),
            system_ns: usec("system_usec"),
            periods: cpu_stat.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: cpu_stat.get("nr_throttled").copied().unwrap_or(0),
            throttled_ns: usec("throttled_usec"),
        };
        let pids = PidsStats {
            current: read_optional(&dir.join("pids.current"))?
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            limit: match read_optional(&dir.join("pids.max"))? {
                Some(text) => stats::parse_limit(&dir.join("pids.max"), &text)?,
                None => None,
            },
        };
        let io = stats::parse_io_stat(&read_optional(&dir.join("io.stat"))?.unwrap_or_default());
        Ok(Stats {
            memory,
            cpu,
            pids,
            io,
        })
    }

    fn oom_kills(&self) -> Result<u64> {
        let path = self.dir().join("memory.events");
        match read_optional(&path)? {
            Some(text) => Ok(stats::flat_keyed(&text)
                .get("oom_kill")
                .copied()
                .unwrap_or(0)),
            None => Err(Error::ControllerMissing {
                controller: "memory",
                needed_for: "OOM kill counts",
            }),
        }
    }

    fn exists(&self) -> bool {
        self.dir().is_dir()
    }

    fn delete(&self) -> Result<()> {
        group::remove_tree(&self.dir())
    }
}
