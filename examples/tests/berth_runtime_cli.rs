//! `berth-runtime` driven the way scripts drive runc (needs root): create, start, state JSON,
//! exec, ps, pause, resume, kill, delete, `run`'s exit code, `--root` isolation, bad bundles,
//! and a terminal session without a stray NUL byte.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_cgroups::CgroupManager;

const BIN: &str = env!("CARGO_BIN_EXE_berth-runtime");
const RUNC_SPEC: &str = include_str!("../../crates/namespaces/tests/fixtures/runc-spec.json");

/// A busybox bundle, a private state root, and a private cgroup parent (`cgroupsPath`), all
/// removed on drop, with every container under that root force-deleted first.
struct Fixture {
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Fixture {
    fn new(args: &[&str], terminal: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bundle/rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for applet in ["sh", "sleep", "echo", "cat", "true", "false", "grep"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let fixture = Fixture {
            dir,
            cgroup_parent: berth_testutil::unique_name("cli"),
        };
        fixture.write_config("c", args, terminal);
        fixture
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// config.json running `args`, its cgroup under this fixture's parent as `name`.
    fn write_config(&self, name: &str, args: &[&str], terminal: bool) {
        let mut spec: serde_json::Value = serde_json::from_str(RUNC_SPEC).unwrap();
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["terminal"] = serde_json::json!(terminal);
        spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{}/{name}", self.cgroup_parent));
        std::fs::write(self.bundle().join("config.json"), spec.to_string()).unwrap();
    }

    /// `berth-runtime --root <root> args…`, stdin and the container's stdio from /dev/null.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_in(&self.root(), args)
    }

    /// stdout and stderr go to files, not pipes: a detached container inherits them, and a
    /// pipe would stay open (and `output()` block) for as long as the container lives.
    fn cli_in(&self, root: &Path, args: &[&str]) -> Output {
        let out = tempfile::tempfile_in(self.dir.path()).unwrap();
        let err = tempfile::tempfile_in(self.dir.path()).unwrap();
        let status = Command::new(BIN)
            .arg("--root")
            .arg(root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .status()
            .unwrap();
        let read = |mut file: std::fs::File| {
            use std::io::Seek;
            let mut bytes = Vec::new();
            file.rewind().unwrap();
            file.read_to_end(&mut bytes).unwrap();
            bytes
        };
        Output {
            status,
            stdout: read(out),
            stderr: read(err),
        }
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn state(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    /// Waits up to 5 s for container `id` to reach `status`.
    fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.state(id)["status"] != status {
            assert!(Instant::now() < deadline, "{id} never became {status}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let list = self.cli(&["list", "-q"]);
        for id in text(&list.stdout).lines() {
            let _ = self.cli(&["delete", "--force", id]);
        }
        if let Ok(group) =
            berth_cgroups::manager(Path::new("/sys/fs/cgroup"), Path::new(&self.cgroup_parent))
        {
            let _ = group.delete();
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn create_start_state_exec_ps_pause_resume_kill_delete() {
    if !berth_testutil::require_root("runs berth-runtime containers") {
        return;
    }
    let f = Fixture::new(&["sleep", "30"], false);
    let bundle = f.bundle();
    let bundle = bundle.to_str().unwrap();
    let pid_file = f.dir.path().join("pid");
    f.ok(&[
        "create",
        "--bundle",
        bundle,
        "--pid-file",
        pid_file.to_str().unwrap(),
        "c1",
    ]);
    let state = f.state("c1");
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], "c1");
    assert_eq!(state["bundle"], bundle);
    let pid = state["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    // A second container with the same id is refused.
    assert!(
        !f.cli(&["create", "--bundle", bundle, "c1"])
            .status
            .success()
    );

    f.ok(&["start", "c1"]);
    assert_eq!(f.state("c1")["status"], "running");
    assert_eq!(f.ok(&["exec", "c1", "echo", "hi", "-n"]), "hi -n\n");
    let out = f.cli(&["exec", "c1", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let pids: Vec<i64> = serde_json::from_str(&f.ok(&["ps", "--format", "json", "c1"])).unwrap();
    assert_eq!(pids, [pid]);
    let list = f.ok(&["list"]);
    assert!(list.contains("c1") && list.contains("running"), "{list}");

    f.ok(&["pause", "c1"]);
    assert_eq!(f.state("c1")["status"], "paused");
    assert!(
        !f.cli(&["delete", "c1"]).status.success(),
        "paused needs --force"
    );
    f.ok(&["resume", "c1"]);
    assert_eq!(f.state("c1")["status"], "running");

    f.ok(&["kill", "c1", "KILL"]);
    f.wait_status("c1", "stopped");
    assert_eq!(f.state("c1")["pid"], 0);
    f.ok(&["delete", "c1"]);
    assert!(!f.cli(&["state", "c1"]).status.success());
    assert!(!f.root().join("c1").exists());
    // runc: deleting a missing container with --force succeeds.
    f.ok(&["delete", "--force", "c1"]);
}

#[test]
fn run_returns_the_exit_code_and_leaves_no_state() {
    if !berth_testutil::require_root("runs berth-runtime containers") {
        return;
    }
    let f = Fixture::new(&["sh", "-c", "echo out; exit 7"], false);
    let bundle = f.bundle();
    let out = f.cli(&["run", "-b", bundle.to_str().unwrap(), "r1"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(!f.root().join("r1").exists());
    assert_eq!(f.ok(&["list", "-q"]), "");
}

#[test]
fn roots_are_isolated() {
    if !berth_testutil::require_root("runs berth-runtime containers") {
        return;
    }
    let f = Fixture::new(&["sleep", "30"], false);
    let bundle = f.bundle();
    f.ok(&["run", "-d", "-b", bundle.to_str().unwrap(), "iso"]);
    let other = f.dir.path().join("other-root");
    let out = f.cli_in(&other, &["list", "-q"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "");
    let out = f.cli_in(&other, &["state", "iso"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(f.ok(&["list", "-q"]), "iso\n");
    f.ok(&["delete", "--force", "iso"]);
}

#[test]
fn bad_bundles_fail_and_leave_no_state() {
    if !berth_testutil::require_root("runs berth-runtime containers") {
        return;
    }
    let f = Fixture::new(&["true"], false);
    let bundle = f.bundle();
    let bundle = bundle.to_str().unwrap();
    std::fs::write(f.bundle().join("config.json"), "{ not json").unwrap();
    let out = f.cli(&["create", "-b", bundle, "bad1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("config"),
        "{}",
        text(&out.stderr)
    );
    assert!(!f.root().join("bad1").exists());

    f.write_config("c", &["no-such-program"], false);
    let out = f.cli(&["create", "-b", bundle, "bad2"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no-such-program"),
        "{}",
        text(&out.stderr)
    );
    assert!(!f.root().join("bad2").exists());

    std::fs::remove_dir_all(f.bundle().join("rootfs")).unwrap();
    let out = f.cli(&["create", "-b", bundle, "bad3"]);
    assert!(!out.status.success());
    assert!(!f.root().join("bad3").exists());
    // Command-line mistakes are usage errors.
    assert_eq!(f.cli(&["start"]).status.code(), Some(2));
    assert_eq!(f.cli(&["frobnicate", "x"]).status.code(), Some(2));
}

#[test]
fn terminal_session_starts_without_a_nul_byte() {
    if !berth_testutil::require_root("runs berth-runtime containers") {
        return;
    }
    let f = Fixture::new(&["echo", "hello"], true);
    let pty = nix::pty::openpty(None, None).unwrap();
    // An end-of-file typed before the session (what `script` sends when its input ends) sits
    // in the canonical-mode queue; a raw switch without flushing turns it into a NUL byte that
    // is forwarded to the container's terminal, which echoes it as "^@".
    nix::unistd::write(&pty.master, b"\x04").unwrap();
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let mut child = Command::new(BIN)
        .arg("--root")
        .arg(f.root())
        .args(["run", "-b", f.bundle().to_str().unwrap(), "tty1"])
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .spawn()
        .unwrap();
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // EIO once the runtime (the last holder of the slave) exits.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(child.wait().unwrap().success());
    let seen = text(&seen);
    assert!(seen.contains("hello"), "{seen:?}");
    assert!(!seen.contains('\0') && !seen.contains("^@"), "{seen:?}");
}
