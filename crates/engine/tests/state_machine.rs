//! The engine's container state machine (create, start, exit, `--rm`, `ps` correction, stop,
//! exec, rm, failed starts) against berth-namespaces' `FakeRuntime`: no root, no mounts, no
//! processes. Snapshots come from a copy snapshotter whose mounts are withheld, so a
//! container's rootfs is an empty directory the fake runtime never looks at.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_engine::namespaces::{
    ContainerHandle, ContainerRuntime, FakeRuntime, Signal, Status as RuntimeStatus, Stdio,
};
use berth_engine::{Container, Engine, Error, RunConfig, Status};
use berth_image::{BaseImage, Reference};
use berth_unionfs::{
    ApplyOptions, ApplyStats, Backend, CopySnapshotter, DiffOptions, DiffStats, Mount,
    SnapshotInfo, Snapshotter, Usage,
};

/// A copy snapshotter that shows no mounts: the engine's rootfs stays a plain directory.
struct Unmounted(CopySnapshotter);

impl Snapshotter for Unmounted {
    fn backend(&self) -> Backend {
        self.0.backend()
    }
    fn root(&self) -> &Path {
        self.0.root()
    }
    fn prepare(&self, key: &str, parent: Option<&str>) -> berth_unionfs::Result<Vec<Mount>> {
        self.0.prepare(key, parent).map(|_| Vec::new())
    }
    fn view(&self, key: &str, parent: Option<&str>) -> berth_unionfs::Result<Vec<Mount>> {
        self.0.view(key, parent).map(|_| Vec::new())
    }
    fn commit(&self, name: &str, key: &str) -> berth_unionfs::Result<()> {
        self.0.commit(name, key)
    }
    fn remove(&self, key: &str) -> berth_unionfs::Result<()> {
        self.0.remove(key)
    }
    fn stat(&self, key: &str) -> berth_unionfs::Result<SnapshotInfo> {
        self.0.stat(key)
    }
    fn list(&self) -> berth_unionfs::Result<Vec<SnapshotInfo>> {
        self.0.list()
    }
    fn usage(&self, key: &str) -> berth_unionfs::Result<Usage> {
        self.0.usage(key)
    }
    fn mounts(&self, key: &str) -> berth_unionfs::Result<Vec<Mount>> {
        self.0.mounts(key).map(|_| Vec::new())
    }
    fn apply_layer(
        &self,
        key: &str,
        tar: &mut dyn Read,
        opts: &ApplyOptions,
    ) -> berth_unionfs::Result<ApplyStats> {
        self.0.apply_layer(key, tar, opts)
    }
    fn diff(
        &self,
        key: &str,
        out: &mut dyn Write,
        opts: &DiffOptions,
    ) -> berth_unionfs::Result<DiffStats> {
        self.0.diff(key, out, opts)
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    fake: FakeRuntime,
    engine: Engine<FakeRuntime>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = CopySnapshotter::new(dir.path().join("copy-snapshots")).unwrap();
    let fake = FakeRuntime::new();
    let engine = Engine::open(dir.path())
        .unwrap()
        .with_snapshotter(Arc::new(Unmounted(snapshots)))
        .with_runtime(fake.clone());
    // The busybox binary of this host is the image's only file of note; nothing runs it.
    BaseImage::busybox(Path::new("/bin/busybox"))
        .unwrap()
        .commit(
            engine.images(),
            Some(&Reference::parse("busybox:fake").unwrap()),
        )
        .unwrap();
    Setup {
        _dir: dir,
        fake,
        engine,
    }
}

fn config(command: &[&str]) -> RunConfig {
    RunConfig {
        image: "busybox:fake".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn null_stdio() -> Stdio {
    Stdio::Null
}

/// Waits until `f` holds (the other side is a thread of this test).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn snapshot_exists(s: &Setup, c: &Container) -> bool {
    s.engine.snapshotter().stat(&c.snapshot).is_ok()
}

#[test]
fn create_start_exit_records_the_code_and_releases_the_runtime() {
    let s = setup();
    let c = s.engine.create(&config(&["echo", "hi"])).unwrap();
    assert_eq!(c.status, Status::Created);
    assert_eq!(c.command, ["echo", "hi"]);
    assert!(s.engine.container_dir(&c.id).join("config.json").is_file());
    assert!(
        s.fake.load(&c.id).is_err(),
        "nothing in the runtime before start"
    );
    assert!(s.engine.ps(false).unwrap().is_empty());

    let attached = s.engine.start(&c.id, null_stdio()).unwrap();
    let running = s.engine.inspect(&c.id).unwrap();
    assert_eq!(running.status, Status::Running);
    assert!(s.engine.is_running(&running));
    assert_eq!(s.fake.load(&c.id).unwrap().status(), RuntimeStatus::Running);
    assert_eq!(s.engine.ps(false).unwrap().len(), 1);
    // Only a created container starts.
    assert!(matches!(
        s.engine.start(&c.id, null_stdio()),
        Err(Error::InvalidState { .. })
    ));

    s.fake.exit(&c.id, 3).unwrap();
    assert_eq!(attached.wait().unwrap(), 3);
    let exited = s.engine.inspect(&c.id).unwrap();
    assert_eq!((exited.status, exited.exit_code), (Status::Exited, Some(3)));
    assert!(exited.finished.is_some() && exited.pid.is_none());
    assert!(s.fake.load(&c.id).is_err(), "runtime state deleted");
    assert!(snapshot_exists(&s, &exited), "the snapshot stays until rm");

    s.engine.remove(&c.id, false).unwrap();
    assert!(matches!(s.engine.inspect(&c.id), Err(Error::NotFound(_))));
    assert!(!snapshot_exists(&s, &exited));
    assert!(!s.engine.container_dir(&c.id).exists());
}

#[test]
fn auto_remove_run_leaves_nothing_and_returns_the_code() {
    let s = setup();
    let mut cfg = config(&["true"]);
    cfg.auto_remove = true;
    cfg.name = Some("gone".into());
    std::thread::scope(|scope| {
        let run = scope.spawn(|| s.engine.run(&cfg, None));
        let mut id = String::new();
        eventually("the container to run", || {
            match s.engine.ps(false).unwrap().first() {
                Some(c) => {
                    id = c.id.clone();
                    true
                }
                None => false,
            }
        });
        s.fake.exit(&id, 42).unwrap();
        let (record, code) = run.join().unwrap().unwrap();
        assert_eq!(code, 42);
        assert_eq!(record.name, "gone");
        assert!(matches!(s.engine.inspect(&id), Err(Error::NotFound(_))));
        assert!(!snapshot_exists(&s, &record));
        assert!(s.fake.load(&id).is_err());
    });
    // The name is free again.
    let again = s.engine.create(&cfg).unwrap();
    assert_eq!(again.name, "gone");
}

#[test]
fn ps_corrects_a_record_whose_reaper_died() {
    let s = setup();
    let c = s.engine.create(&config(&["sleep", "1d"])).unwrap();
    let attached = s.engine.start(&c.id, null_stdio()).unwrap();
    // The reaper dies without recording anything; then the process exits.
    std::mem::forget(attached);
    s.fake.exit(&c.id, 0).unwrap();
    assert!(s.engine.ps(false).unwrap().is_empty());
    let all = s.engine.ps(true).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].status, all[0].exit_code),
        (Status::Exited, Some(255))
    );
    // rm cleans up the runtime state the reaper left.
    s.engine.remove(&c.id, false).unwrap();
    assert!(s.fake.load(&c.id).is_err());
}

#[test]
fn stop_signals_then_waits_for_the_reaper() {
    let s = setup();
    let c = s.engine.create(&config(&["sleep", "1d"])).unwrap();
    std::thread::scope(|scope| {
        let attached = s.engine.start(&c.id, null_stdio()).unwrap();
        let reaper = scope.spawn(move || attached.wait());
        let stopped = s.engine.stop(&c.id, Duration::from_secs(5)).unwrap();
        assert_eq!(stopped.status, Status::Exited);
        assert_eq!(stopped.exit_code, Some(128 + Signal::SIGTERM as i32));
        assert_eq!(reaper.join().unwrap().unwrap(), 143);
    });
    assert!(s.fake.load(&c.id).is_err(), "runtime state gone");
    // Stopping a stopped container changes nothing.
    let again = s.engine.stop(&c.id, Duration::from_secs(1)).unwrap();
    assert_eq!(again.exit_code, Some(143));
}

#[test]
fn rm_refuses_a_running_container_unless_forced() {
    let s = setup();
    let c = s.engine.create(&config(&["sleep", "1d"])).unwrap();
    std::thread::scope(|scope| {
        let attached = s.engine.start(&c.id, null_stdio()).unwrap();
        let reaper = scope.spawn(move || attached.wait());
        let refused = s.engine.remove(&c.id, false);
        assert!(
            matches!(&refused, Err(Error::InvalidState { status, .. }) if status == "running"),
            "{refused:?}"
        );
        assert_eq!(s.engine.inspect(&c.id).unwrap().status, Status::Running);
        s.engine.remove(&c.id, true).unwrap();
        assert_eq!(
            reaper.join().unwrap().unwrap(),
            128 + Signal::SIGKILL as i32
        );
    });
    assert!(matches!(s.engine.inspect(&c.id), Err(Error::NotFound(_))));
    assert!(s.fake.load(&c.id).is_err());
    assert!(!snapshot_exists(&s, &c));
}

#[test]
fn exec_runs_in_the_container_with_its_environment() {
    let s = setup();
    let c = s.engine.create(&config(&["sleep", "1d"])).unwrap();
    // Not running yet: refused.
    assert!(matches!(
        s.engine.exec(&c.id, &["ls".into()], &[], false, None),
        Err(Error::InvalidState { .. })
    ));
    std::thread::scope(|scope| {
        let attached = s.engine.start(&c.id, null_stdio()).unwrap();
        let exec = scope.spawn(|| {
            s.engine.exec(
                &c.id,
                &["env".into()],
                &[("A".into(), "1".into())],
                false,
                None,
            )
        });
        eventually("the exec", || !s.fake.exec_processes(&c.id).is_empty());
        let process = &s.fake.exec_processes(&c.id)[0];
        assert_eq!(process.args().as_deref(), Some(&["env".to_owned()][..]));
        let env = process.env().clone().unwrap_or_default();
        assert!(env.contains(&"A=1".to_owned()), "{env:?}");
        assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
        let handle = s.fake.load(&c.id).unwrap();
        let pids = handle.pids().unwrap();
        let exec_pid = *pids.iter().max_by_key(|p| p.as_raw()).unwrap();
        s.fake.exit_process(exec_pid, 7);
        assert_eq!(exec.join().unwrap().unwrap(), 7);
        s.fake.exit(&c.id, 0).unwrap();
        assert_eq!(attached.wait().unwrap(), 0);
    });
}

#[test]
fn failed_starts_are_recorded_or_removed_with_auto_remove() {
    let s = setup();
    let c = s.engine.create(&config(&["nope"])).unwrap();
    s.fake.fail_next_create("exec: nope: not found");
    let err = s.engine.start(&c.id, null_stdio()).unwrap_err();
    assert!(format!("{err:?}").contains("not found"), "{err:?}");
    let failed = s.engine.inspect(&c.id).unwrap();
    assert_eq!(
        (failed.status, failed.exit_code),
        (Status::Exited, Some(127))
    );
    assert!(failed.error.as_deref().is_some());
    assert!(s.fake.load(&c.id).is_err());

    let mut cfg = config(&["nope"]);
    cfg.auto_remove = true;
    let c = s.engine.create(&cfg).unwrap();
    s.fake.fail_next_create("exec: nope: not found");
    assert!(s.engine.start(&c.id, null_stdio()).is_err());
    assert!(matches!(s.engine.inspect(&c.id), Err(Error::NotFound(_))));
    assert!(!snapshot_exists(&s, &c));
}

#[test]
fn bad_input_creates_nothing() {
    let s = setup();
    let mut cfg = config(&["true"]);
    cfg.name = Some("-bad".into());
    assert!(matches!(s.engine.create(&cfg), Err(Error::Option { .. })));
    let mut cfg = config(&["true"]);
    cfg.image = "missing:tag".into();
    assert!(s.engine.create(&cfg).is_err());
    let mut cfg = config(&["true"]);
    cfg.workdir = Some("relative".into());
    assert!(s.engine.create(&cfg).is_err());
    assert!(s.engine.ps(true).unwrap().is_empty());
    assert!(s.engine.ps_all(true).unwrap().unreadable.is_empty());
}
