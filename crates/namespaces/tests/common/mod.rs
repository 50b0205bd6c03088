//! Shared helpers: busybox bundles in temp dirs, a runtime with a private state root and
//! cgroup parent, and a guard that force-deletes containers even when a test fails.
#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::path::{Path, PathBuf};

use berth_namespaces::oci_spec::runtime::Spec;
use berth_namespaces::{Container, CreateOptions, ExitStatus, InitBinary, Runtime, Stdio};

/// The spec `runc spec` writes (runc 1.1.5), as a fixture.
pub const RUNC_SPEC: &str = include_str!("../fixtures/runc-spec.json");

/// A bundle dir with a busybox-static rootfs and the runc default spec.
pub struct Bundle {
    pub dir: tempfile::TempDir,
}

impl Bundle {
    pub fn busybox() -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
            }
        }
        for d in ["proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(dir.path().join("rootfs").join(d)).unwrap();
        }
        std::fs::write(dir.path().join("config.json"), RUNC_SPEC).unwrap();
        Bundle { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The runc default spec running `sh -c script` without a terminal.
    pub fn spec(&self, script: &str) -> Spec {
        let mut spec: Spec = serde_json::from_str(RUNC_SPEC).unwrap();
        let process = spec.process_mut().as_mut().unwrap();
        process.set_terminal(Some(false));
        process.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
        spec
    }
}

/// Sets `spec`'s seccomp profile from its runtime-spec JSON.
pub fn set_seccomp(spec: &mut Spec, profile: serde_json::Value) {
    let profile: berth_namespaces::oci_spec::runtime::LinuxSeccomp =
        serde_json::from_value(profile).unwrap();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_seccomp(Some(profile));
}

/// A runtime with a private state root and cgroup parent; both are removed on drop.
pub fn runtime() -> (Runtime, TestRoots) {
    let state = tempfile::tempdir().unwrap();
    let parent = berth_testutil::unique_name("ns");
    let runtime = Runtime::new(state.path())
        .with_cgroup_parent(&parent)
        .with_init_binary(InitBinary::Path(PathBuf::from(env!(
            "CARGO_BIN_EXE_berth-container-init"
        ))));
    (
        runtime,
        TestRoots {
            state,
            cgroup_parent: PathBuf::from(parent),
        },
    )
}

/// The per-test state root and cgroup parent.
pub struct TestRoots {
    pub state: tempfile::TempDir,
    pub cgroup_parent: PathBuf,
}

impl TestRoots {
    pub fn path(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for TestRoots {
    fn drop(&mut self) {
        use berth_cgroups::CgroupManager;
        if let Ok(m) = berth_cgroups::manager(Path::new("/sys/fs/cgroup"), &self.cgroup_parent) {
            let _ = m.delete();
        }
    }
}

/// Force-deletes the container on drop (a failed assertion must not leak it).
pub struct Cleanup {
    pub container: Option<Container>,
}

impl Cleanup {
    pub fn new(container: Container) -> Cleanup {
        Cleanup {
            container: Some(container),
        }
    }
    pub fn get(&mut self) -> &mut Container {
        self.container.as_mut().unwrap()
    }
    pub fn delete(mut self) {
        self.container.take().unwrap().delete(true).unwrap();
    }
}

/// Creates (not starts) a container `<prefix>-…` running `sleep 30` with null stdio; returns
/// its id and a guard that deletes it.
pub fn sleeper(rt: &Runtime, bundle: &Bundle, prefix: &str) -> (String, Cleanup) {
    let id = berth_testutil::unique_name(prefix);
    let container = rt
        .create_from_spec(
            &id,
            bundle.path(),
            bundle.spec("sleep 30"),
            CreateOptions {
                stdio: Stdio::Null,
                ..Default::default()
            },
        )
        .unwrap();
    (id, Cleanup::new(container))
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = self.container.take() {
            let _ = c.delete(true);
        }
    }
}

/// Creates, starts and waits for a container running `spec`; returns (exit, stdout+stderr).
pub fn run(runtime: &Runtime, bundle: &Bundle, spec: Spec) -> (ExitStatus, String) {
    let id = berth_testutil::unique_name("c");
    let options = CreateOptions {
        stdio: Stdio::Piped,
        ..Default::default()
    };
    let container = runtime
        .create_from_spec(&id, bundle.path(), spec, options)
        .unwrap();
    let mut guard = Cleanup::new(container);
    let mut pipes = guard.get().take_stdio().unwrap();
    drop(pipes.stdin.take());
    guard.get().start().unwrap();
    let mut out = String::new();
    pipes
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    pipes
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = guard.get().wait().unwrap();
    guard.delete();
    (status, out + &err)
}
