//! `V2Manager` against the kernel's real cgroup2 hierarchy (root only).
//!
//! The unified hierarchy is found in `/proc/self/mountinfo` (`/sys/fs/cgroup` on a v2 host,
//! `/sys/fs/cgroup/unified` on this project's hybrid machines). What is exercised is what
//! cgroup2 does whatever controllers it holds: creating and deleting a group, moving a process
//! in (`cgroup.procs`), listing it, freezing and thawing (`cgroup.freeze`, `cgroup.events`),
//! killing every process, and refusing to delete a group that still has one; hugetlb limits when
//! the hierarchy lists that controller. **Not covered here:** memory, cpu, io and pids limits
//! and their statistics, which need those controllers on cgroup2; on a hybrid host they are
//! bound to v1 hierarchies and a controller can only be on one (`tests/fake_cgroupfs.rs`
//! checks the files written for them; `tests/kernel.rs` runs the same limits on v1).

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_cgroups::{CgroupManager, V2Manager};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// The mount point of the cgroup2 hierarchy, if one is mounted.
fn unified_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // `... mountpoint ... - fstype source options`
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// One test at a time: they share the hierarchy's root and its `cgroup.subtree_control`.
static ROOT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Kills and deletes the group when the test ends, however it ends, and gives the root's
/// `cgroup.subtree_control` back as it was: `V2Manager::create` enables hugetlb there, and on
/// a hybrid host hugetlb left enabled on cgroup2 can no longer be mounted as a v1 hierarchy
/// (crun needs that; `tests/kernel.rs` checks the root is left alone).
struct Guard(
    V2Manager,
    PathBuf,
    String,
    #[allow(dead_code)] std::sync::MutexGuard<'static, ()>,
);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.thaw();
        let _ = self.0.kill_all(Signal::SIGKILL);
        let _ = self.0.delete();
        let control = self.1.join("cgroup.subtree_control");
        let now = std::fs::read_to_string(&control).unwrap_or_default();
        let off: Vec<String> = now
            .split_whitespace()
            .filter(|c| !self.2.split_whitespace().any(|b| b == *c))
            .map(|c| format!("-{c}"))
            .collect();
        if !off.is_empty() {
            let _ = std::fs::write(&control, off.join(" "));
        }
    }
}

fn group(what: &str, prefix: &str) -> Option<(Guard, PathBuf)> {
    if !berth_testutil::require_root(what) {
        return None;
    }
    let Some(root) = unified_root() else {
        // No cgroup2 mounted at all: report it the way other missing kernel features are.
        berth_testutil::require_path(what, "/sys/fs/cgroup/cgroup.controllers");
        return None;
    };
    let lock = ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let before = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
    let name = berth_testutil::unique_name(prefix);
    let manager = V2Manager::new(&root, Path::new(&name)).unwrap();
    Some((Guard(manager, root.clone(), before, lock), root.join(name)))
}

fn spawn_in(cg: &V2Manager, script: &str) -> Child {
    let mut child = Command::new("sh")
        .args(["-c", "read _go && exec sh -c \"$0\"", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cg.add_process(Pid::from_raw(child.id() as i32)).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    child
}

/// User plus system CPU ticks of `pid` (`/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the command.
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

#[test]
fn a_v2_group_holds_freezes_and_kills_its_processes() {
    let Some((g, dir)) = group("cgroup2: create, add, freeze, kill, delete", "v2") else {
        return;
    };
    let cg = &g.0;
    cg.create().unwrap();
    assert!(cg.exists() && dir.join("cgroup.procs").is_file());

    let mut child = spawn_in(cg, "while :; do :; done");
    let pid = child.id();
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    let pids = cg.pids().unwrap();
    assert!(pids.contains(&Pid::from_raw(pid as i32)), "{pids:?}");

    std::thread::sleep(Duration::from_millis(100));
    cg.freeze().unwrap();
    assert!(cg.is_frozen().unwrap());
    let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    let frozen_at = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        cpu_ticks(pid) <= frozen_at + 1,
        "a frozen group kept running"
    );
    cg.thaw().unwrap();
    assert!(!cg.is_frozen().unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    while cpu_ticks(pid) <= frozen_at + 5 {
        assert!(Instant::now() < deadline, "a thawed group does not run");
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGKILL of a frozen group works (it is thawed to let the processes die).
    cg.freeze().unwrap();
    cg.kill_all(Signal::SIGKILL).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(Signal::SIGKILL as i32));
    cg.delete().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn nested_v2_groups_are_deleted_with_their_parent_path() {
    let Some((g, dir)) = group("cgroup2: a pod group with a container group", "v2pod") else {
        return;
    };
    let root = unified_root().unwrap();
    let pod = g.0.clone();
    pod.create().unwrap();
    let child_path = Path::new(dir.file_name().unwrap()).join("c1");
    let container = V2Manager::new(&root, &child_path).unwrap();
    container.create().unwrap();
    let mut child = spawn_in(&container, "exec sleep 30");
    // The pod's processes are those of its containers.
    assert_eq!(pod.pids().unwrap(), [Pid::from_raw(child.id() as i32)]);
    container.kill_all(Signal::SIGKILL).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(Signal::SIGKILL as i32));
    container.delete().unwrap();
    assert!(!root.join(&child_path).exists());
    pod.delete().unwrap();
    assert!(!dir.exists());
}
