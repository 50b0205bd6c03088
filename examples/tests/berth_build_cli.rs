//! `berth image build` interrupted (needs root): SIGINT stops the RUN step's container and
//! leaves no process, mount, cgroup, snapshot or runtime state; after a SIGKILL, the next build
//! collects what the killed one left (issue 18 item 5).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// A state root and a context; on drop, whatever a failed test left (processes in the build
/// cgroups, cgroups, mounts) is removed.
struct Fixture {
    dir: tempfile::TempDir,
    keys: Vec<String>,
}

impl Fixture {
    fn new(dockerfile: &str) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("berth-build-cli")
            .tempdir()
            .unwrap();
        let ctx = dir.path().join("ctx");
        fs::create_dir(&ctx).unwrap();
        fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        Fixture {
            dir,
            keys: Vec::new(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn ctx(&self) -> PathBuf {
        self.dir.path().join("ctx")
    }

    fn build(&self) -> Child {
        Command::new(BIN)
            .arg("--root")
            .arg(self.root())
            .args(["image", "build"])
            .arg(self.ctx())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Waits until the build's RUN command runs; returns its key and pids.
    fn wait_for_run(&mut self) -> (String, Vec<i32>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "the RUN step never started");
            if let Ok(entries) = fs::read_dir(self.root().join("runtime")) {
                for entry in entries.flatten() {
                    let key = entry.file_name().to_string_lossy().into_owned();
                    if !key.starts_with("build-") {
                        continue;
                    }
                    if !self.keys.contains(&key) {
                        self.keys.push(key.clone());
                    }
                    // Started: the command itself runs (not the init still waiting to exec).
                    let pids = cgroup_pids(&key);
                    let running = pids.iter().any(|pid| {
                        fs::read(format!("/proc/{pid}/cmdline"))
                            .is_ok_and(|c| c.windows(5).any(|w| w == b"sleep"))
                    });
                    if running {
                        return (key, pids);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What of build `key` (with RUN processes `pids`) is still there.
    fn leftovers(&self, key: &str, pids: &[i32]) -> Vec<String> {
        let mut left = Vec::new();
        for pid in pids {
            if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat"))
                && !stat.contains(") Z ")
            {
                left.push(format!("process {pid}"));
            }
        }
        left.extend(
            cgroup_dirs(key)
                .into_iter()
                .map(|d| d.display().to_string()),
        );
        left.extend(mounts_below(self.dir.path()));
        if self.root().join("runtime").join(key).exists() {
            left.push(format!("runtime state {key}"));
        }
        if let Ok(entries) = fs::read_dir(self.root().join("build/work")) {
            left.extend(entries.flatten().map(|e| e.path().display().to_string()));
        }
        let snapshots = berth_unionfs::open(self.root().join("snapshots")).unwrap();
        left.extend(
            snapshots
                .list()
                .unwrap()
                .into_iter()
                .filter(|s| s.name.starts_with("build-"))
                .map(|s| format!("snapshot {}", s.name)),
        );
        left
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for key in &self.keys {
            for pid in cgroup_pids(key) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
            for dir in cgroup_dirs(key) {
                let _ = fs::remove_dir(dir);
            }
        }
        for m in mounts_below(self.dir.path()).into_iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The cgroup directories of build `key` (every v1 controller and the unified hierarchy).
fn cgroup_dirs(key: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for controller in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = controller.path().join("berth").join(key);
        if dir.is_dir() {
            dirs.push(dir);
        }
    }
    dirs
}

fn cgroup_pids(key: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = cgroup_dirs(key)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn mounts_below(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&root))
        .collect()
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const SLEEPER: &str =
    "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sleep\", \"300\"]\n";

#[test]
fn sigint_cancels_the_run_step_and_leaves_nothing() {
    if !berth_testutil::require_root("sigint_cancels_the_run_step_and_leaves_nothing")
        || !berth_testutil::require_filesystem("build cancel", "overlay")
    {
        return;
    }
    for signal in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let mut fixture = Fixture::new(SLEEPER);
        let mut child = fixture.build();
        let (key, pids) = fixture.wait_for_run();
        let sent = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(20));
        assert_eq!(
            status.code(),
            Some(128 + signal as i32),
            "{signal}: {status}"
        );
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "{signal}: cancelling took {:?}",
            sent.elapsed()
        );
        let left = fixture.leftovers(&key, &pids);
        assert!(left.is_empty(), "{signal}: left behind {left:?}");
    }
}

#[test]
fn a_killed_builds_leftovers_are_collected_by_the_next_build() {
    if !berth_testutil::require_root("a_killed_builds_leftovers_are_collected_by_the_next_build")
        || !berth_testutil::require_filesystem("build collect", "overlay")
    {
        return;
    }
    let mut fixture = Fixture::new(SLEEPER);
    let mut child = fixture.build();
    let (key, pids) = fixture.wait_for_run();
    child.kill().unwrap();
    child.wait().unwrap();
    let left = fixture.leftovers(&key, &pids);
    assert!(
        left.iter().any(|l| l.starts_with("process")) && !mounts_below(&fixture.root()).is_empty(),
        "a SIGKILLed build leaves its RUN process and mount: {left:?}"
    );
    fs::write(
        fixture.ctx().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\n",
    )
    .unwrap();
    let status = wait_exit(&mut fixture.build(), Duration::from_secs(60));
    assert!(status.success(), "the next build: {status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = fixture.leftovers(&key, &pids);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not collected by the next build: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
