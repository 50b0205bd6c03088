//! The managers against this host's real cgroups (root only; on this project's machines that is
//! cgroup v1 in a hybrid layout). Every group has a unique name and is killed and deleted by a
//! guard even when an assertion fails.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_cgroups::oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder,
    LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};
use berth_cgroups::{AnyManager, CgroupManager, Error, manager};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

const ROOT: &str = "/sys/fs/cgroup";

/// Kills and deletes the group when the test ends, however it ends.
struct Guard(AnyManager);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill_all(Signal::SIGKILL);
        let _ = self.0.delete();
    }
}

fn group(what: &str, prefix: &str) -> Option<Guard> {
    if !berth_testutil::require_root(what)
        || !berth_testutil::require_path(what, Path::new(ROOT).join("memory"))
    {
        return None;
    }
    let name = berth_testutil::unique_name(prefix);
    Some(Guard(manager(Path::new(ROOT), Path::new(&name)).unwrap()))
}

/// Starts `script` with `sh -c` inside the group: the shell joins before it execs the script,
/// so nothing the script forks can start outside.
fn spawn_in(cg: &AnyManager, script: &str) -> Child {
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

fn memory(limit: i64, swap: i64) -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(swap)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn hugepages(size: &str, limit: i64) -> LinuxResources {
    LinuxResourcesBuilder::default()
        .hugepage_limits(vec![
            LinuxHugepageLimitBuilder::default()
                .page_size(size)
                .limit(limit)
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap()
}

/// Every directory the group had, in any v1 hierarchy.
fn leftovers(path: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(ROOT)
        .unwrap()
        .flatten()
        .map(|e| e.path().join(path))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn oom_kill_is_counted_and_reported() {
    let Some(g) = group("OOM-kills a process over its memory limit", "oom") else {
        return;
    };
    let cg = &g.0;
    cg.apply(&memory(32 << 20, 32 << 20)).unwrap();
    assert_eq!(cg.oom_kills().unwrap(), 0);
    // dd touches its whole 256 MiB buffer while reading /dev/zero into it.
    let status = spawn_in(cg, "exec dd if=/dev/zero of=/dev/null bs=256M count=1")
        .wait()
        .unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status:?}");
    assert!(cg.oom_kills().unwrap() >= 1);
    let stats = cg.stats().unwrap();
    assert!(stats.memory.oom_kills >= 1);
    assert_eq!(stats.memory.limit, Some(32 << 20));
    assert!(stats.memory.max_usage <= 32 << 20);
}

#[test]
fn fork_bomb_is_held_at_pids_max() {
    let Some(g) = group("holds forks at pids.max", "pids") else {
        return;
    };
    let cg = &g.0;
    let limit = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
        .build()
        .unwrap();
    cg.apply(&limit).unwrap();
    // A bounded "bomb": 50 background forks against a limit of 10.
    let mut child = spawn_in(
        cg,
        "i=0; while [ $i -lt 50 ]; do sleep 5 & i=$((i+1)); done; wait",
    );
    let start = Instant::now();
    let mut highest = 0;
    while start.elapsed() < Duration::from_secs(2) && highest < 10 {
        let stats = cg.stats().unwrap();
        assert!(
            stats.pids.current <= 10,
            "{} tasks under a limit of 10",
            stats.pids.current
        );
        highest = highest.max(stats.pids.current);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(highest, 10, "the forks should have reached the limit");
    assert_eq!(cg.stats().unwrap().pids.limit, Some(10));
    cg.kill_all(Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    cg.delete().unwrap();
    assert!(leftovers(cg.path()).is_empty());
}

#[test]
fn cpu_quota_of_a_fifth_holds_a_busy_loop_near_20_percent() {
    let Some(g) = group("holds a busy loop to its CPU quota", "cpu") else {
        return;
    };
    let cg = &g.0;
    let quota = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .quota(20_000i64)
                .period(100_000u64)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    cg.apply(&quota).unwrap();
    let mut child = spawn_in(cg, "while :; do :; done");
    std::thread::sleep(Duration::from_millis(200));
    let (t0, u0) = (Instant::now(), cg.stats().unwrap().cpu.usage_ns);
    std::thread::sleep(Duration::from_secs(1));
    let stats = cg.stats().unwrap();
    let share = (stats.cpu.usage_ns - u0) as f64 / t0.elapsed().as_nanos() as f64;
    // The quota is a hard ceiling; the floor is generous because other builds share the cores.
    assert!(
        (0.05..=0.3).contains(&share),
        "busy loop used {share:.3} of a core under a 0.2 quota"
    );
    assert!(stats.cpu.throttled_periods > 0);
    cg.kill_all(Signal::SIGKILL).unwrap();
    child.wait().unwrap();
}

#[test]
fn freeze_stops_progress_and_thaw_resumes_it() {
    let Some(g) = group("freezes and thaws a busy loop", "freeze") else {
        return;
    };
    let cg = &g.0;
    cg.create().unwrap();
    let mut child = spawn_in(cg, "while :; do :; done");
    std::thread::sleep(Duration::from_millis(100));
    cg.freeze().unwrap();
    assert!(cg.is_frozen().unwrap());
    let frozen_at = cg.stats().unwrap().cpu.usage_ns;
    std::thread::sleep(Duration::from_millis(300));
    let still = cg.stats().unwrap().cpu.usage_ns;
    assert!(
        still - frozen_at < 5_000_000,
        "a frozen group used {} ns",
        still - frozen_at
    );
    cg.thaw().unwrap();
    assert!(!cg.is_frozen().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let resumed = cg.stats().unwrap().cpu.usage_ns;
    assert!(
        resumed - still > 20_000_000,
        "a thawed group used only {} ns",
        resumed - still
    );
    // SIGKILL of a paused container works too (the group is thawed to let it die).
    cg.freeze().unwrap();
    cg.kill_all(Signal::SIGKILL).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(Signal::SIGKILL as i32));
}

#[test]
fn stats_move_with_the_workload() {
    let Some(g) = group("reports memory, cpu and pids use", "stats") else {
        return;
    };
    let cg = &g.0;
    cg.create().unwrap();
    let idle = cg.stats().unwrap();
    assert_eq!(idle.pids.current, 0);
    let mut child = spawn_in(cg, "dd if=/dev/zero of=/dev/null bs=16M count=50; sleep 5");
    let start = Instant::now();
    while cg.stats().unwrap().cpu.usage_ns < 10_000_000 && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy = cg.stats().unwrap();
    assert!(busy.pids.current >= 1);
    assert_eq!(cg.pids().unwrap().len() as u64, busy.pids.current);
    assert!(busy.cpu.usage_ns >= 10_000_000);
    assert!(busy.cpu.user_ns + busy.cpu.system_ns > 0);
    assert!(
        busy.memory.max_usage >= 4 << 20,
        "peak {} bytes",
        busy.memory.max_usage
    );
    assert!(busy.memory.usage > 0 && busy.memory.usage <= busy.memory.max_usage);
    cg.kill_all(Signal::SIGKILL).unwrap();
    child.wait().unwrap();
}

#[test]
fn invalid_limits_fail_before_anything_is_created() {
    let Some(g) = group("refuses invalid limits", "invalid") else {
        return;
    };
    let cg = &g.0;
    let cpus = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().cpus("0-4095").build().unwrap())
        .build()
        .unwrap();
    let err = cg.apply(&cpus).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidResources {
                field: "cpu.cpus",
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        cg.apply(&memory(0, 0)),
        Err(Error::InvalidResources { .. })
    ));
    assert!(matches!(
        cg.apply(&memory(-5, 0)),
        Err(Error::InvalidResources { .. })
    ));
    assert!(matches!(
        cg.apply(&memory(64 << 20, 32 << 20)),
        Err(Error::InvalidResources { .. })
    ));
    assert!(!cg.exists());
    assert!(leftovers(cg.path()).is_empty());
}

#[test]
fn killed_container_leaves_no_group_behind() {
    let Some(g) = group("deletes a killed container's group", "leak") else {
        return;
    };
    let cg = &g.0;
    cg.apply(&memory(64 << 20, -1)).unwrap();
    let mut child = spawn_in(cg, "sleep 30 & sleep 30 & wait");
    let start = Instant::now();
    while cg.pids().unwrap().len() < 3 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        cg.pids().unwrap().len(),
        3,
        "the shell and both sleeps are inside"
    );
    cg.kill_all(Signal::SIGKILL).unwrap();
    // Delete right away: the processes may still be exiting, so this exercises the retries.
    cg.delete().unwrap();
    assert!(!cg.exists());
    assert!(
        leftovers(cg.path()).is_empty(),
        "{:?}",
        leftovers(cg.path())
    );
    assert_eq!(child.wait().unwrap().signal(), Some(Signal::SIGKILL as i32));
}

#[test]
fn pod_group_holds_its_containers() {
    let Some(g) = group("nests container groups in a pod group", "pod") else {
        return;
    };
    let pod = &g.0;
    pod.apply(&memory(256 << 20, -1)).unwrap();
    let c1 = pod.child("c1").unwrap();
    let c2 = pod.child("c2").unwrap();
    c1.apply(&memory(64 << 20, -1)).unwrap();
    c2.create().unwrap();
    let mut a = spawn_in(&c1, "exec sleep 30");
    let mut b = spawn_in(&c2, "exec sleep 30");
    let expected = {
        let mut v = vec![Pid::from_raw(a.id() as i32), Pid::from_raw(b.id() as i32)];
        v.sort();
        v
    };
    assert_eq!(pod.pids().unwrap(), expected);
    assert_eq!(c1.pids().unwrap(), [Pid::from_raw(a.id() as i32)]);
    pod.kill_all(Signal::SIGKILL).unwrap();
    pod.delete().unwrap();
    assert!(leftovers(pod.path()).is_empty());
    a.wait().unwrap();
    b.wait().unwrap();
}

#[test]
fn device_rules_are_enforced() {
    let Some(g) = group("enforces device rules", "devices") else {
        return;
    };
    let cg = &g.0;
    let rules = LinuxResourcesBuilder::default()
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(1)
                .minor(3)
                .access("rw")
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    cg.apply(&rules).unwrap();
    // /dev/null (1:3) is allowed, /dev/zero (1:5) is not.
    let script =
        "echo hi > /dev/null || exit 1; head -c 1 /dev/zero > /dev/null 2>&1 && exit 2; exit 0";
    let status = spawn_in(cg, script).wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn hugepage_limits_are_written_where_the_host_has_hugetlb() {
    let Some(guard) = group("writes hugepage limits", "huge") else {
        return;
    };
    let cg = &guard.0;
    let unified = Path::new(ROOT).join("unified");
    let v1 = Path::new(ROOT).join("hugetlb");
    let (dir, file) = if v1.join("cgroup.procs").is_file() {
        (v1.join(cg.path()), "hugetlb.2MB.limit_in_bytes")
    } else if std::fs::read_to_string(unified.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "hugetlb"))
    {
        (unified.join(cg.path()), "hugetlb.2MB.max")
    } else {
        berth_testutil::skip("hugepage limits", "this host has no hugetlb controller");
        return;
    };
    let subtree_before = std::fs::read_to_string(unified.join("cgroup.subtree_control")).ok();
    let resources = hugepages("2MB", 4 << 20);
    cg.apply(&resources).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join(file)).unwrap().trim(),
        "4194304"
    );
    let mut child = spawn_in(cg, "sleep 30");
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|p| p == child.id().to_string()),
        "{procs}"
    );
    cg.kill_all(Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    cg.delete().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        leftovers(cg.path()).is_empty(),
        "{:?}",
        leftovers(cg.path())
    );
    // The cgroup2 root is left as it was (hugetlb stays mountable as v1 for crun).
    assert_eq!(
        std::fs::read_to_string(unified.join("cgroup.subtree_control")).ok(),
        subtree_before
    );

    // Bad sizes are refused before anything is created.
    for bad in ["3MB", "2mb", "../2MB", "MB", "0MB"] {
        let resources = hugepages(bad, 1);
        assert!(cg.apply(&resources).is_err(), "{bad}");
        assert!(!cg.exists(), "{bad} created the group");
    }
}
