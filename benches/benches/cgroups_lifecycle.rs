//! cgroup lifecycle and stats cost, per operation, on this host's real cgroups (root only):
//! `cargo bench -p berth-benches --bench cgroups_lifecycle`.
//!
//! - `cgroups_lifecycle/create_add_delete`: create a group in every controller, move a live
//!   process into it (out of the previous iteration's group), delete the previous group.
//! - `cgroups_lifecycle/raw_mkdir_write_rmdir`: the same directory and `cgroup.procs` work done
//!   with bare `std::fs` calls, the floor any cgroup library stands on.
//! - `cgroups_stats/stats`: one full `stats()` snapshot of a group holding a process.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use berth_cgroups::nix::unistd::Pid;
use berth_cgroups::{AnyManager, CgroupManager, manager};
use criterion::{Criterion, criterion_group, criterion_main};

const ROOT: &str = "/sys/fs/cgroup";

/// A long-lived process moved from group to group; killed at the end.
struct Helper(Child);

impl Helper {
    fn start() -> Self {
        Helper(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lifecycle(c: &mut Criterion) {
    if !berth_testutil::require_root("cgroups_lifecycle bench") {
        return;
    }
    let root = Path::new(ROOT);
    let base = PathBuf::from(berth_testutil::unique_name("bench"));
    let helper = Helper::start();
    let mut group = c.benchmark_group("cgroups_lifecycle");

    let mut n = 0u64;
    let mut previous: Option<AnyManager> = None;
    group.bench_function("create_add_delete", |b| {
        b.iter(|| {
            n += 1;
            let cg = manager(root, &base.join(n.to_string())).unwrap();
            cg.create().unwrap();
            cg.add_process(helper.pid()).unwrap();
            if let Some(old) = previous.replace(cg) {
                old.delete().unwrap();
            }
        })
    });

    // The same work as bare syscalls, over the same hierarchies.
    let mut hierarchies: Vec<PathBuf> = [
        "blkio", "memory", "pids", "cpuset", "cpu", "cpuacct", "devices", "freezer",
    ]
    .iter()
    .filter_map(|c| std::fs::canonicalize(root.join(c)).ok())
    .map(|mount| mount.join(&base))
    .filter(|dir| dir.exists())
    .collect();
    hierarchies.dedup();
    let pid = helper.pid().to_string();
    let mut previous_raw: Option<String> = None;
    group.bench_function("raw_mkdir_write_rmdir", |b| {
        b.iter(|| {
            n += 1;
            let name = format!("raw{n}");
            for dir in &hierarchies {
                let group_dir = dir.join(&name);
                std::fs::create_dir(&group_dir).unwrap();
                if dir.join("cpuset.cpus").exists() {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let parent = std::fs::read_to_string(dir.join(file)).unwrap();
                        std::fs::write(group_dir.join(file), parent.trim()).unwrap();
                    }
                }
                std::fs::write(group_dir.join("cgroup.procs"), &pid).unwrap();
            }
            if let Some(old) = previous_raw.replace(name) {
                for dir in &hierarchies {
                    std::fs::remove_dir(dir.join(&old)).unwrap();
                }
            }
        })
    });
    group.finish();

    let mut stats_group = c.benchmark_group("cgroups_stats");
    let cg = previous
        .take()
        .unwrap_or_else(|| manager(root, &base.join("stats")).unwrap());
    cg.create().unwrap();
    cg.add_process(helper.pid()).unwrap();
    stats_group.bench_function("stats", |b| b.iter(|| cg.stats().unwrap()));
    stats_group.finish();

    drop(helper);
    // The helper is gone: the whole bench tree can go.
    let base_group = manager(root, &base).unwrap();
    base_group.delete().unwrap();
}

criterion_group!(benches, lifecycle);
criterion_main!(benches);
