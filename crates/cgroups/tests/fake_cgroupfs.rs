//! The v1 and v2 managers against fake cgroupfs trees in a tempdir: every file format is
//! checked without root, and the v2 logic is exercised even on a v1 host.

use std::fs;
use std::path::Path;

use berth_cgroups::oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
    LinuxThrottleDeviceBuilder,
};
use berth_cgroups::{AnyManager, CgroupManager, Error, Layout, detect, manager};
use nix::unistd::Pid;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A hybrid v1 tree like this host's: separate hierarchies, a combined `cpu,cpuacct` with the
/// usual symlinks, and a controller-less cgroup2 at `unified`.
fn fake_v1() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for c in [
        "memory",
        "cpu,cpuacct",
        "cpuset",
        "pids",
        "blkio",
        "devices",
        "freezer",
    ] {
        fs::create_dir(root.join(c)).unwrap();
    }
    std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).unwrap();
    std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpuacct")).unwrap();
    write(&root.join("cpuset/cpuset.cpus"), "0-3\n");
    write(&root.join("cpuset/cpuset.mems"), "0\n");
    write(
        &root.join("memory/memory.memsw.limit_in_bytes"),
        "9223372036854771712\n",
    );
    write(&root.join("unified/cgroup.controllers"), "hugetlb\n");
    dir
}

/// A unified v2 tree offering the usual controllers.
fn fake_v2() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids\n",
    );
    write(&dir.path().join("cgroup.subtree_control"), "");
    write(&dir.path().join("cpuset.cpus.effective"), "0-3\n");
    write(&dir.path().join("cpuset.mems.effective"), "0\n");
    dir
}

fn full_resources() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 << 20)
                .reservation(32 << 20)
                .swap(128 << 20)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(1024u64)
                .quota(20_000i64)
                .period(100_000u64)
                .cpus("1-2")
                .mems("0")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(64).build().unwrap())
        .block_io(
            LinuxBlockIoBuilder::default()
                .throttle_read_bps_device(vec![
                    LinuxThrottleDeviceBuilder::default()
                        .major(8)
                        .minor(0)
                        .rate(1_048_576u64)
                        .build()
                        .unwrap(),
                ])
                .build()
                .unwrap(),
        )
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
        .unwrap()
}

#[test]
fn v1_create_inherits_cpuset_and_shares_combined_hierarchies() {
    let fake = fake_v1();
    let root = fake.path();
    assert_eq!(detect(root).unwrap(), Layout::Hybrid);
    let cg = manager(root, Path::new("/berth/c1")).unwrap();
    assert!(matches!(cg, AnyManager::V1(_)));
    assert!(!cg.exists());
    cg.create().unwrap();
    cg.create().unwrap(); // idempotent
    for c in [
        "memory",
        "cpu,cpuacct",
        "cpuset",
        "pids",
        "blkio",
        "devices",
        "freezer",
    ] {
        assert!(root.join(c).join("berth/c1").is_dir(), "{c}");
    }
    assert_eq!(read(&root.join("cpuset/berth/cpuset.cpus")), "0-3");
    assert_eq!(read(&root.join("cpuset/berth/c1/cpuset.cpus")), "0-3");
    assert_eq!(read(&root.join("cpuset/berth/c1/cpuset.mems")), "0");

    cg.add_process(Pid::from_raw(4242)).unwrap();
    // cpu and cpuacct share one directory: the pid is written once per hierarchy.
    assert_eq!(
        read(&root.join("cpu,cpuacct/berth/c1/cgroup.procs")),
        "4242"
    );
    assert_eq!(read(&root.join("memory/berth/c1/cgroup.procs")), "4242");
    assert_eq!(cg.pids().unwrap(), [Pid::from_raw(4242)]);

    fs::write(root.join("pids/berth/c1/cgroup.procs"), "").unwrap();
    cg.delete().unwrap();
    assert!(!cg.exists());
    for c in [
        "memory",
        "cpu,cpuacct",
        "cpuset",
        "pids",
        "blkio",
        "devices",
        "freezer",
    ] {
        assert!(!root.join(c).join("berth/c1").exists(), "{c}");
    }
}

#[test]
fn v1_apply_writes_v1_formats() {
    let fake = fake_v1();
    let root = fake.path();
    let cg = manager(root, Path::new("berth/c2")).unwrap();
    cg.apply(&full_resources()).unwrap();
    let group = |c: &str, f: &str| read(&root.join(c).join("berth/c2").join(f));
    assert_eq!(
        group("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        group("memory", "memory.memsw.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    assert_eq!(
        group("memory", "memory.soft_limit_in_bytes"),
        (32u64 << 20).to_string()
    );
    assert_eq!(group("cpu", "cpu.shares"), "1024");
    assert_eq!(group("cpu", "cpu.cfs_quota_us"), "20000");
    assert_eq!(group("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(group("cpuset", "cpuset.cpus"), "1-2");
    assert_eq!(group("pids", "pids.max"), "64");
    assert_eq!(
        group("blkio", "blkio.throttle.read_bps_device"),
        "8:0 1048576"
    );
    // Each rule is one write; the fake keeps the last one of each file.
    assert_eq!(group("devices", "devices.deny"), "a *:* rwm");
    assert_eq!(group("devices", "devices.allow"), "c 1:3 rw");
}

#[test]
fn v1_invalid_limits_create_nothing() {
    let fake = fake_v1();
    let root = fake.path();
    let cg = manager(root, Path::new("berth/bad")).unwrap();
    let out_of_range = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().cpus("0-7").build().unwrap())
        .build()
        .unwrap();
    let err = cg.apply(&out_of_range).unwrap_err();
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
    assert!(err.to_string().contains("0-3"), "{err}");
    let zero = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(0).build().unwrap())
        .build()
        .unwrap();
    assert!(matches!(
        cg.apply(&zero),
        Err(Error::InvalidResources {
            field: "memory.limit",
            ..
        })
    ));
    let negative = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(-42).build().unwrap())
        .build()
        .unwrap();
    assert!(cg.apply(&negative).is_err());
    let unified = LinuxResourcesBuilder::default()
        .unified(
            [("memory.high".to_owned(), "1G".to_owned())]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .unwrap();
    assert!(matches!(cg.apply(&unified), Err(Error::Unsupported { .. })));
    assert!(!cg.exists());
    assert!(!root.join("memory/berth").exists());
}

#[test]
fn v1_stats_freeze_and_oom_read_v1_files() {
    let fake = fake_v1();
    let root = fake.path();
    let cg = manager(root, Path::new("berth/c3")).unwrap();
    cg.create().unwrap();
    let g = |c: &str| root.join(c).join("berth/c3");
    write(&g("memory").join("memory.usage_in_bytes"), "1048576\n");
    write(&g("memory").join("memory.max_usage_in_bytes"), "2097152\n");
    write(
        &g("memory").join("memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    write(&g("memory").join("memory.failcnt"), "7\n");
    write(
        &g("memory").join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    );
    write(&g("cpuacct").join("cpuacct.usage"), "3000\n");
    write(&g("cpuacct").join("cpuacct.usage_user"), "2000\n");
    write(&g("cpuacct").join("cpuacct.usage_sys"), "1000\n");
    write(
        &g("cpu").join("cpu.stat"),
        "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n",
    );
    write(&g("pids").join("pids.current"), "3\n");
    write(&g("pids").join("pids.max"), "max\n");
    write(
        &g("blkio").join("blkio.throttle.io_service_bytes_recursive"),
        "8:0 Read 10\n8:0 Write 20\nTotal 30\n",
    );
    let stats = cg.stats().unwrap();
    assert_eq!(stats.memory.usage, 1_048_576);
    assert_eq!(stats.memory.max_usage, 2_097_152);
    assert_eq!(stats.memory.limit, None);
    assert_eq!(stats.memory.limit_hits, 7);
    assert_eq!(stats.memory.oom_kills, 2);
    assert_eq!(cg.oom_kills().unwrap(), 2);
    assert_eq!(
        (stats.cpu.usage_ns, stats.cpu.user_ns, stats.cpu.system_ns),
        (3000, 2000, 1000)
    );
    assert_eq!(
        (
            stats.cpu.periods,
            stats.cpu.throttled_periods,
            stats.cpu.throttled_ns
        ),
        (10, 4, 5000)
    );
    assert_eq!((stats.pids.current, stats.pids.limit), (3, None));
    assert_eq!((stats.io.read_bytes, stats.io.write_bytes), (10, 20));

    cg.freeze().unwrap();
    assert_eq!(read(&g("freezer").join("freezer.state")), "FROZEN");
    assert!(cg.is_frozen().unwrap());
    cg.thaw().unwrap();
    assert_eq!(read(&g("freezer").join("freezer.state")), "THAWED");
    assert!(!cg.is_frozen().unwrap());
}

#[test]
fn v1_nested_groups_are_deleted_bottom_up() {
    let fake = fake_v1();
    let root = fake.path();
    let pod = manager(root, Path::new("berth/pod")).unwrap();
    let c1 = pod.child("c1").unwrap();
    assert_eq!(c1.path(), Path::new("berth/pod/c1"));
    assert!(pod.child("../x").is_err());
    assert!(pod.child("a/b").is_err());
    pod.create().unwrap();
    c1.create().unwrap();
    write(&root.join("pids/berth/pod/c1/cgroup.procs"), "11\n");
    write(&root.join("pids/berth/pod/cgroup.procs"), "");
    assert_eq!(pod.pids().unwrap(), [Pid::from_raw(11)]);
    write(&root.join("pids/berth/pod/c1/cgroup.procs"), "");
    pod.delete().unwrap();
    assert!(!root.join("memory/berth/pod").exists());
    assert!(root.join("memory/berth").exists()); // only the pod's own tree is removed
}

#[test]
fn v2_create_enables_controllers_and_apply_converts_units() {
    let fake = fake_v2();
    let root = fake.path();
    assert_eq!(detect(root).unwrap(), Layout::Unified);
    let cg = manager(root, Path::new("berth/c1")).unwrap();
    assert!(cg.is_v2());
    cg.create().unwrap();
    assert_eq!(
        read(&root.join("cgroup.subtree_control")),
        "+cpu +cpuset +io +memory +pids +hugetlb"
    );
    let group = root.join("berth/c1");
    write(&group.join("io.weight"), "default 100\n");
    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 << 20)
                .reservation(32 << 20)
                .swap(96 << 20)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(1024u64)
                .quota(20_000i64)
                .period(50_000u64)
                .cpus("1")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(-1).build().unwrap())
        .block_io(
            LinuxBlockIoBuilder::default()
                .weight(500u16)
                .throttle_read_bps_device(vec![
                    LinuxThrottleDeviceBuilder::default()
                        .major(8)
                        .minor(0)
                        .rate(100u64)
                        .build()
                        .unwrap(),
                ])
                .throttle_write_iops_device(vec![
                    LinuxThrottleDeviceBuilder::default()
                        .major(8)
                        .minor(0)
                        .rate(7u64)
                        .build()
                        .unwrap(),
                ])
                .build()
                .unwrap(),
        )
        .unified(
            [("memory.high".to_owned(), "50331648".to_owned())]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .unwrap();
    cg.apply(&resources).unwrap();
    assert_eq!(read(&group.join("memory.max")), (64u64 << 20).to_string());
    assert_eq!(read(&group.join("memory.low")), (32u64 << 20).to_string());
    // OCI's memory+swap total of 96 MiB is 32 MiB of swap alone.
    assert_eq!(
        read(&group.join("memory.swap.max")),
        (32u64 << 20).to_string()
    );
    assert_eq!(read(&group.join("cpu.weight")), "39");
    assert_eq!(read(&group.join("cpu.max")), "20000 50000");
    assert_eq!(read(&group.join("cpuset.cpus")), "1");
    assert_eq!(read(&group.join("pids.max")), "max");
    assert_eq!(read(&group.join("io.weight")), "default 4950");
    assert_eq!(read(&group.join("io.max")), "8:0 rbps=100 wiops=7");
    assert_eq!(read(&group.join("memory.high")), "50331648");

    // Only the quota changes: the period already written is kept.
    let quota_only = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().quota(-1i64).build().unwrap())
        .build()
        .unwrap();
    cg.apply(&quota_only).unwrap();
    assert_eq!(read(&group.join("cpu.max")), "max 50000");
}

#[test]
fn v2_invalid_or_unavailable_limits_create_nothing() {
    let fake = fake_v2();
    let root = fake.path();
    let cg = manager(root, Path::new("berth/bad")).unwrap();
    let out_of_range = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().cpus("4").build().unwrap())
        .build()
        .unwrap();
    assert!(matches!(
        cg.apply(&out_of_range),
        Err(Error::InvalidResources {
            field: "cpu.cpus",
            ..
        })
    ));
    write(&root.join("cgroup.controllers"), "cpu\n");
    let memory = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(1 << 20)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert!(matches!(
        cg.apply(&memory),
        Err(Error::ControllerMissing {
            controller: "memory",
            ..
        })
    ));
    assert!(!root.join("berth").exists());
}

#[test]
fn v2_stats_freeze_kill_and_delete_use_v2_files() {
    let fake = fake_v2();
    let root = fake.path();
    let cg = manager(root, Path::new("berth/c3")).unwrap();
    cg.create().unwrap();
    let group = root.join("berth/c3");
    write(&group.join("memory.current"), "4096\n");
    write(&group.join("memory.peak"), "8192\n");
    write(&group.join("memory.max"), "1048576\n");
    write(
        &group.join("memory.events"),
        "low 0\nhigh 0\nmax 5\noom 2\noom_kill 1\noom_group_kill 0\n",
    );
    write(
        &group.join("cpu.stat"),
        "usage_usec 30\nuser_usec 20\nsystem_usec 10\nnr_periods 9\nnr_throttled 3\nthrottled_usec 40\n",
    );
    write(&group.join("pids.current"), "2\n");
    write(&group.join("pids.max"), "100\n");
    write(
        &group.join("io.stat"),
        "8:0 rbytes=5 wbytes=6 rios=1 wios=1 dbytes=0 dios=0\n",
    );
    let stats = cg.stats().unwrap();
    assert_eq!(
        (
            stats.memory.usage,
            stats.memory.max_usage,
            stats.memory.limit
        ),
        (4096, 8192, Some(1_048_576))
    );
    assert_eq!(
        (
            stats.memory.limit_hits,
            stats.memory.oom_events,
            stats.memory.oom_kills
        ),
        (5, 2, 1)
    );
    assert_eq!(
        (stats.cpu.usage_ns, stats.cpu.user_ns, stats.cpu.system_ns),
        (30_000, 20_000, 10_000)
    );
    assert_eq!(
        (
            stats.cpu.periods,
            stats.cpu.throttled_periods,
            stats.cpu.throttled_ns
        ),
        (9, 3, 40_000)
    );
    assert_eq!((stats.pids.current, stats.pids.limit), (2, Some(100)));
    assert_eq!((stats.io.read_bytes, stats.io.write_bytes), (5, 6));
    assert_eq!(cg.oom_kills().unwrap(), 1);

    // The fake kernel reports the frozen state the managers wait for.
    write(&group.join("cgroup.events"), "populated 1\nfrozen 1\n");
    cg.freeze().unwrap();
    assert_eq!(read(&group.join("cgroup.freeze")), "1");
    assert!(cg.is_frozen().unwrap());
    write(&group.join("cgroup.events"), "populated 1\nfrozen 0\n");
    cg.thaw().unwrap();
    assert_eq!(read(&group.join("cgroup.freeze")), "0");

    write(&group.join("cgroup.kill"), "");
    cg.kill_all(nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(read(&group.join("cgroup.kill")), "1");

    cg.delete().unwrap();
    assert!(!group.exists());
    cg.delete().unwrap();
}

#[test]
fn v2_freeze_times_out_without_kernel_confirmation() {
    let fake = fake_v2();
    let cg = manager(fake.path(), Path::new("berth/stuck")).unwrap();
    cg.create().unwrap();
    write(
        &fake.path().join("berth/stuck/cgroup.events"),
        "populated 1\nfrozen 0\n",
    );
    // Without a `frozen 1` the freeze fails and thaws again rather than reporting success.
    let err = cg.freeze().unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_eq!(read(&fake.path().join("berth/stuck/cgroup.freeze")), "0");
}
