//! Root tests of the engine and the Dockerfile builder against the real kernel: a busybox image,
//! builds with RUN, the layer cache, reproducible digests, and `run`/`-d`/`logs`/`exec`/`stop`/
//! `rm` leaving no mounts, cgroups or state behind.
//!
//! A custom harness (`harness = false`): containers are started by re-executing this binary as
//! their init, so `main` calls `main_if_init` first; it also serves as the monitor process of
//! detached containers (`<exe> __monitor ROOT ID`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_builder::{BuildOptions, Error as BuildError};
use berth_engine::{Engine, MonitorCommand, RunConfig, Status};
use berth_image::{BaseImage, Reference};
use berth_namespaces::Stdio;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Test = berth_testutil::HarnessTest;

fn main() {
    berth_namespaces::init::main_if_init();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__monitor") {
        let engine = Engine::open(&args[2]).expect("open engine");
        let code = engine.monitor(&args[3], |report| println!("{report}"));
        std::process::exit(code.unwrap_or(125));
    }
    let tests: &[Test] = &[
        (
            "build_with_run_cache_and_reproducible_digest",
            build_with_run_cache_and_reproducible_digest,
        ),
        (
            "build_errors_leave_nothing_behind",
            build_errors_leave_nothing_behind,
        ),
        ("build_from_a_local_image", build_from_a_local_image),
        (
            "run_prints_output_and_returns_exit_codes",
            run_prints_output_and_returns_exit_codes,
        ),
        (
            "detached_logs_exec_stop_rm_leave_nothing",
            detached_logs_exec_stop_rm_leave_nothing,
        ),
        ("volumes_and_image_removal", volumes_and_image_removal),
        (
            "auto_remove_cleans_up_failed_starts",
            auto_remove_cleans_up_failed_starts,
        ),
        (
            "unreadable_record_is_listed_removed_and_keeps_its_name",
            unreadable_record_is_listed_removed_and_keeps_its_name,
        ),
        (
            "image_rm_and_create_race_is_one_step",
            image_rm_and_create_race_is_one_step,
        ),
    ];
    berth_testutil::run_harness(tests, |name| {
        berth_testutil::require_root(name) && berth_testutil::require_filesystem(name, "overlay")
    });
}

/// A state root in a tempdir, torn down (containers removed, mounts checked) on drop.
struct Root {
    dir: tempfile::TempDir,
    engine: Engine,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::Builder::new()
            .prefix("berth-engine-test")
            .tempdir()
            .expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open engine");
        Root { dir, engine }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn busybox(&self) -> Reference {
        let reference = Reference::parse("busybox:test").unwrap();
        BaseImage::busybox(Path::new("/bin/busybox"))
            .expect("busybox image")
            .commit(self.engine.images(), Some(&reference))
            .expect("commit busybox");
        reference
    }

    fn monitor(&self) -> MonitorCommand {
        MonitorCommand {
            program: std::env::current_exe().unwrap(),
            args: vec!["__monitor".into(), self.path().into()],
        }
    }

    fn mounts_below(&self) -> Vec<String> {
        let root = self.path().to_string_lossy().into_owned();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Ok(all) = self.engine.ps(true) {
            for c in all {
                let _ = self.engine.remove(&c.id, true);
            }
        }
        for m in self.mounts_below().into_iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn ensure(cond: bool, what: impl Into<String>) -> TestResult {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

fn layer_entries(
    root: &Root,
    descriptor: &berth_image::oci_spec::image::Descriptor,
) -> BTreeMap<String, (tar::EntryType, Vec<u8>)> {
    let digest = berth_image::manifest::descriptor_digest(descriptor).unwrap();
    let mut archive = tar::Archive::new(root.engine.images().content().open_blob(&digest).unwrap());
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(
            entry.path().unwrap().to_string_lossy().into_owned(),
            (entry.header().entry_type(), data),
        );
    }
    out
}

fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::copy("/bin/busybox", dir.path().join("busybox")).unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    dir
}

const SEVEN_STEPS: &str = r#"FROM scratch
ARG GREETING_ARG=default
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY hello.txt /data/
RUN echo "built $GREETING_ARG" > /data/out && mkdir -p /app
ENV GREETING=hi
CMD ["sh", "-c", "echo $GREETING"]
WORKDIR /app
EXPOSE 8080
LABEL org.example.test=yes
"#;

fn build_with_run_cache_and_reproducible_digest() -> TestResult {
    let root = Root::new();
    let ctx = context(&[
        ("Dockerfile", SEVEN_STEPS),
        ("hello.txt", "hello\n"),
        ("ignored.log", "x"),
        (".dockerignore", "*.log\n"),
    ]);
    let builder = root.engine.builder()?;
    let options = BuildOptions {
        context: ctx.path().to_owned(),
        tags: vec![Reference::parse("built:1")?],
        ..Default::default()
    };
    let mut progress = Vec::new();
    let first = builder.build(&options, &mut progress)?;
    let text = String::from_utf8_lossy(&progress);
    ensure(
        text.contains("Step 4/11 : RUN"),
        format!("progress per step: {text}"),
    )?;
    ensure(
        first.new_layers == 4 && first.cached_layers == 0,
        format!("{first:?}"),
    )?;

    let image = root.engine.images().image(&Reference::parse("built:1")?)?;
    ensure(image.layers().len() == 4, "four layers")?;
    let config = image.config.config().clone().unwrap();
    ensure(
        config
            .env()
            .as_ref()
            .unwrap()
            .contains(&"GREETING=hi".to_owned()),
        "ENV in config",
    )?;
    ensure(
        config.cmd().as_deref()
            == Some(&["sh".to_owned(), "-c".into(), "echo $GREETING".into()][..]),
        "CMD",
    )?;
    ensure(config.working_dir().as_deref() == Some("/app"), "WORKDIR")?;
    ensure(
        config.exposed_ports().as_deref() == Some(&["8080/tcp".to_owned()][..]),
        "EXPOSE",
    )?;
    ensure(
        config
            .labels()
            .as_ref()
            .unwrap()
            .get("org.example.test")
            .map(String::as_str)
            == Some("yes"),
        "LABEL",
    )?;
    ensure(
        !config
            .env()
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.starts_with("GREETING_ARG")),
        "ARG not in the image",
    )?;
    let history = image.config.history().clone().unwrap();
    ensure(
        history.len() == 10
            && history
                .iter()
                .filter(|h| h.empty_layer() != Some(true))
                .count()
                == 4,
        "history",
    )?;

    let install = layer_entries(&root, &image.layers()[1]);
    ensure(
        install
            .get("bin/sh")
            .is_some_and(|(t, _)| *t == tar::EntryType::Symlink),
        "RUN layer has bin/sh",
    )?;
    ensure(
        !install
            .keys()
            .any(|k| k.starts_with("proc") || k.starts_with("dev") || k.starts_with("sys")),
        format!(
            "no runtime mount points in the layer: {:?}",
            install.keys().take(5).collect::<Vec<_>>()
        ),
    )?;
    let copied = layer_entries(&root, &image.layers()[2]);
    ensure(
        copied
            .get("data/hello.txt")
            .is_some_and(|(_, d)| d == b"hello\n"),
        "COPY layer",
    )?;
    let run = layer_entries(&root, &image.layers()[3]);
    ensure(
        run.get("data/out")
            .is_some_and(|(_, d)| d == b"built default\n"),
        format!("RUN output: {:?}", run.get("data/out")),
    )?;

    // An unchanged rebuild: every layer from the cache, the same digest, fast.
    let started = Instant::now();
    let second = builder.build(&options, &mut Vec::new())?;
    let rebuild = started.elapsed();
    ensure(
        second.cached_layers == 4 && second.new_layers == 0,
        format!("{second:?}"),
    )?;
    ensure(
        second.digest == first.digest,
        "cached rebuild gives the same digest",
    )?;
    println!("  cached rebuild took {rebuild:.1?}");

    // Without the cache: every layer rebuilt, still one digest (fixed timestamps, sorted).
    let third = builder.build(
        &BuildOptions {
            no_cache: true,
            ..options.clone()
        },
        &mut Vec::new(),
    )?;
    ensure(
        third.new_layers == 4 && third.digest == first.digest,
        format!("reproducible: {} vs {}", third.digest, first.digest),
    )?;

    // A changed file invalidates its step and everything after.
    fs::write(ctx.path().join("hello.txt"), "changed\n")?;
    let fourth = builder.build(&options, &mut Vec::new())?;
    ensure(
        fourth.cached_layers == 2 && fourth.new_layers == 2 && fourth.digest != first.digest,
        format!("{fourth:?}"),
    )?;

    // A build arg reaches RUN and the cache key.
    let mut args = BTreeMap::new();
    args.insert("GREETING_ARG".to_owned(), "from-cli".to_owned());
    let with_arg = builder.build(
        &BuildOptions {
            build_args: args,
            tags: vec![Reference::parse("built:arg")?],
            ..options.clone()
        },
        &mut Vec::new(),
    )?;
    ensure(
        with_arg.digest != fourth.digest,
        "build arg changes the image",
    )?;

    // The built image runs without another unpack.
    let mut out = Vec::new();
    let code = run_captured(
        &root,
        RunConfig {
            image: "built:1".into(),
            auto_remove: true,
            ..Default::default()
        },
        &mut out,
    )?;
    ensure(
        code == 0 && out == b"hi\n",
        format!(
            "built image runs: {code} {:?}",
            String::from_utf8_lossy(&out)
        ),
    )?;
    ensure(
        root.mounts_below().is_empty(),
        format!("no mounts left: {:?}", root.mounts_below()),
    )?;
    let snapshots = root.engine.snapshotter().list()?;
    ensure(
        snapshots
            .iter()
            .all(|s| !s.name.starts_with("build-") && !s.name.starts_with("container-")),
        "no build or container snapshots left",
    )?;
    Ok(())
}

fn build_errors_leave_nothing_behind() -> TestResult {
    let root = Root::new();
    let builder = root.engine.builder()?;
    let build = |dockerfile: &str| -> Result<(), BuildError> {
        let ctx = context(&[("Dockerfile", dockerfile)]);
        builder
            .build(
                &BuildOptions {
                    context: ctx.path().to_owned(),
                    ..Default::default()
                },
                &mut Vec::new(),
            )
            .map(|_| ())
    };
    let err = build("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"exit 3\"]\n").unwrap_err();
    ensure(
        matches!(
            err,
            BuildError::RunFailed {
                status: 3,
                line: 3,
                ..
            }
        ),
        format!("RUN failure: {err}"),
    )?;
    let err =
        build("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/nonexistent\"]\n").unwrap_err();
    ensure(
        err.to_string().contains("line 3"),
        format!("missing binary: {err}"),
    )?;
    let err = build("FROM scratch\nCOPY missing.txt /x\n").unwrap_err();
    ensure(
        err.to_string().contains("line 2") && err.to_string().contains("missing.txt"),
        format!("{err}"),
    )?;
    let err = build("FROM nosuchimage\n").unwrap_err();
    ensure(err.to_string().contains("nosuchimage"), format!("{err}"))?;
    let err = build("FROM scratch\nBOGUS x\n").unwrap_err();
    ensure(
        err.to_string() == "Dockerfile line 2: unknown instruction \"BOGUS\"",
        format!("{err}"),
    )?;
    ensure(
        root.mounts_below().is_empty(),
        format!("no mounts left: {:?}", root.mounts_below()),
    )?;
    let snapshots = root.engine.snapshotter().list()?;
    ensure(
        snapshots.iter().all(|s| !s.name.starts_with("build-")),
        format!("no active build snapshots: {snapshots:?}"),
    )?;
    ensure(
        fs::read_dir(root.path().join("build/work")).map_or(true, |mut d| d.next().is_none()),
        "scratch dirs removed",
    )?;
    Ok(())
}

fn build_from_a_local_image() -> TestResult {
    let root = Root::new();
    root.busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox:test\nUSER 1000:1000\nRUN id -u > /tmp/uid\nUSER root\nRUN rm /bin/ls && mkdir -p /srv && cp /tmp/uid /srv/uid\nSTOPSIGNAL SIGINT\n",
    )]);
    let builder = root.engine.builder()?;
    let out = builder.build(
        &BuildOptions {
            context: ctx.path().to_owned(),
            tags: vec![Reference::parse("derived")?],
            ..Default::default()
        },
        &mut Vec::new(),
    )?;
    let image = root.engine.images().load(&out.manifest)?;
    ensure(image.layers().len() == 3, "base layer + two")?;
    let last = layer_entries(&root, &image.layers()[2]);
    ensure(
        last.get("srv/uid").is_some_and(|(_, d)| d == b"1000\n"),
        "USER applies to RUN",
    )?;
    ensure(
        last.contains_key("bin/.wh.ls"),
        format!(
            "a deletion is a whiteout: {:?}",
            last.keys().collect::<Vec<_>>()
        ),
    )?;
    ensure(
        image
            .config
            .config()
            .as_ref()
            .unwrap()
            .stop_signal()
            .as_deref()
            == Some("SIGINT"),
        "STOPSIGNAL",
    )?;
    Ok(())
}

/// The layer snapshots (named by chain id) the engine's snapshotter holds.
fn layer_snapshots(root: &Root) -> Vec<String> {
    let mut names: Vec<String> = root
        .engine
        .snapshotter()
        .list()
        .unwrap()
        .into_iter()
        .filter(|s| s.name.starts_with("sha256:"))
        .map(|s| s.name)
        .collect();
    names.sort();
    names
}

fn volumes_and_image_removal() -> TestResult {
    let root = Root::new();
    let busybox = root.engine.images().image(&root.busybox())?;
    root.engine
        .images()
        .unpack(&busybox, root.engine.snapshotter().as_ref())?;
    let base_layers = layer_snapshots(&root);
    ensure(!base_layers.is_empty(), "busybox unpacked")?;
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox:test\nRUN mkdir -p /data /etc/mine && echo seeded > /data/f && echo own > /etc/mine/x && ln -s /etc /evil\nVOLUME [\"/data\", \"/evil\"]\n",
    )]);
    root.engine.builder()?.build(
        &BuildOptions {
            context: ctx.path().to_owned(),
            tags: vec![Reference::parse("volumes:test")?],
            ..Default::default()
        },
        &mut Vec::new(),
    )?;
    ensure(
        layer_snapshots(&root).len() == base_layers.len() + 1,
        "the build's layer is a snapshot",
    )?;

    // VOLUME: seeded from the image, writable, kept apart from the rootfs snapshot; a volume
    // behind a symlink is resolved inside the image (its /etc, never the host's).
    let mut out = Vec::new();
    let config = RunConfig {
        image: "volumes:test".into(),
        name: Some("keeper".into()),
        command: vec![
            "sh".into(),
            "-c".into(),
            "cat /data/f && echo new > /data/g && ls /evil/mine".into(),
        ],
        ..Default::default()
    };
    let code = run_captured(&root, config, &mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    ensure(
        code == 0 && text == "seeded\nx\n",
        format!("{code} {text:?}"),
    )?;
    let container = root.engine.inspect("keeper")?;
    let volumes = root.engine.container_dir(&container.id).join("volumes");
    ensure(
        fs::read_to_string(volumes.join("0/g")).ok().as_deref() == Some("new\n"),
        format!("the write landed in the volume {}", volumes.display()),
    )?;
    ensure(
        volumes.join("1/mine/x").exists() && !volumes.join("1/os-release").exists(),
        "the symlinked volume copied the image's /etc, not the host's",
    )?;

    // `image rm`: refused while a container uses the image, then the layer only it needed goes.
    let err = root.engine.remove_image("volumes:test", false).unwrap_err();
    ensure(
        matches!(err, berth_engine::Error::ImageInUse { .. }),
        format!("in use: {err}"),
    )?;
    root.engine.remove("keeper", false)?;
    let removed = root.engine.remove_image("volumes:test", false)?;
    ensure(removed.len() == 1, "one name removed")?;
    let report = root.engine.prune_images()?;
    ensure(
        report.snapshots.len() == 1 && layer_snapshots(&root) == base_layers,
        format!("only the built layer pruned: {:?}", report.snapshots),
    )?;
    ensure(!report.blobs.removed.is_empty(), "its blobs are collected")?;
    root.engine.remove_image("busybox:test", false)?;
    root.engine.prune_images()?;
    ensure(
        layer_snapshots(&root).is_empty(),
        format!("every layer snapshot pruned: {:?}", layer_snapshots(&root)),
    )?;
    ensure(
        root.engine.images().list()?.is_empty(),
        "no image names left",
    )?;
    Ok(())
}

/// Runs `config` in the foreground with stdout+stderr into `out`; returns the exit code.
fn run_captured(
    root: &Root,
    config: RunConfig,
    out: &mut Vec<u8>,
) -> Result<i32, Box<dyn std::error::Error>> {
    let container = root.engine.create(&config)?;
    let (mut reader, writer) = std::io::pipe()?;
    let stdout: std::os::fd::OwnedFd = writer.into();
    let stderr = stdout.try_clone()?;
    let stdin: std::os::fd::OwnedFd = fs::File::open("/dev/null")?.into();
    let reading = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        buf
    });
    let code = root.engine.start_attached(
        &container.id,
        Stdio::Fds {
            stdin,
            stdout,
            stderr,
        },
        None,
    )?;
    *out = reading.join().unwrap();
    Ok(code)
}

fn run_prints_output_and_returns_exit_codes() -> TestResult {
    let root = Root::new();
    root.busybox();
    let sh = |script: &str| RunConfig {
        image: "busybox:test".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        auto_remove: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    let code = run_captured(
        &root,
        sh("echo hello from $HOSTNAME; echo err >&2"),
        &mut out,
    )?;
    let text = String::from_utf8_lossy(&out).into_owned();
    ensure(
        code == 0 && text.starts_with("hello from ") && text.ends_with("err\n"),
        format!("{code} {text:?}"),
    )?;
    ensure(
        run_captured(&root, sh("exit 42"), &mut out)? == 42,
        "exit code",
    )?;
    // A signal from outside (PID 1 ignores SIGKILL from inside its namespace).
    let killer = {
        let engine = Engine::open(root.path())?;
        std::thread::spawn(move || {
            for _ in 0..500 {
                if let Some(pid) = engine
                    .ps(false)
                    .ok()
                    .and_then(|r| r.first().and_then(|c| c.pid))
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let code = run_captured(&root, sh("exec sleep 1000"), &mut out)?;
    killer.join().unwrap();
    ensure(code == 137, format!("signal -> 128+9: {code}"))?;

    // Limits land in the container's cgroup; -e and -v reach the process.
    let host_dir = tempfile::tempdir()?;
    fs::write(host_dir.path().join("f"), "from host")?;
    let config = RunConfig {
        env: vec![("X".into(), "y".into())],
        binds: vec![format!("{}:/mnt:ro", host_dir.path().display()).parse()?],
        limits: berth_engine::options::Limits {
            memory: Some(64 << 20),
            cpu_quota: Some(50_000),
            pids: Some(20),
        },
        ..sh(
            "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us; echo $X; cat /mnt/f; touch /mnt/g || echo readonly",
        )
    };
    let code = run_captured(&root, config, &mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    ensure(
        code == 0
            && text.contains("20\n67108864\n50000\ny\nfrom host")
            && text.contains("readonly"),
        format!("{code} {text:?}"),
    )?;

    let err = root
        .engine
        .create(&RunConfig {
            image: "nosuch".into(),
            ..Default::default()
        })
        .unwrap_err();
    ensure(err.to_string().contains("image"), format!("{err}"))?;
    ensure(
        root.engine.ps(true)?.is_empty(),
        "--rm removed every container",
    )?;
    ensure(
        root.mounts_below().is_empty(),
        format!("no mounts left: {:?}", root.mounts_below()),
    )?;
    Ok(())
}

fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = entry.path().join("berth").join(id);
        if dir.exists() {
            found.push(dir);
        }
    }
    found
}

fn detached_logs_exec_stop_rm_leave_nothing() -> TestResult {
    let root = Root::new();
    root.busybox();
    let name = berth_testutil::unique_name("web").replace('_', "-");
    let config = RunConfig {
        image: "busybox:test".into(),
        name: Some(name.clone()),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo started; exec sleep 1000".into(),
        ],
        ..Default::default()
    };
    let started = Instant::now();
    let c = root.engine.run_detached(&config, &root.monitor())?;
    println!("  run -d returned after {:.1?}", started.elapsed());
    let running = root.engine.ps(false)?;
    ensure(
        running.len() == 1 && running[0].name == name && running[0].status == Status::Running,
        format!("{running:?}"),
    )?;
    ensure(!cgroup_dirs(&c.id).is_empty(), "the container has a cgroup")?;

    let log = root.engine.log_path(&c.id);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("started")
    {
        ensure(Instant::now() < deadline, "the log shows the output")?;
        std::thread::sleep(Duration::from_millis(10));
    }
    ensure(
        root.engine.exec(
            &name,
            &["sh".into(), "-c".into(), "test -d /proc/1".into()],
            &[],
            false,
            None,
        )? == 0,
        "exec",
    )?;
    ensure(
        root.engine.exec(
            &c.id[..12],
            &["sh".into(), "-c".into(), "exit 7".into()],
            &[],
            false,
            None,
        )? == 7,
        "exec exit code",
    )?;
    let err = root.engine.remove(&name, false).unwrap_err();
    ensure(
        err.to_string().contains("running"),
        format!("rm of a running container: {err}"),
    )?;

    // `sleep` as PID 1 ignores SIGTERM: stop waits the grace period, then kills the cgroup.
    let stopped = root.engine.stop(&name, Duration::from_millis(300))?;
    ensure(
        stopped.status == Status::Exited && stopped.exit_code == Some(137),
        format!("{stopped:?}"),
    )?;
    ensure(
        cgroup_dirs(&c.id).is_empty(),
        format!("cgroup removed: {:?}", cgroup_dirs(&c.id)),
    )?;
    ensure(
        root.mounts_below().is_empty(),
        format!("rootfs unmounted after exit: {:?}", root.mounts_below()),
    )?;
    ensure(
        root.engine.ps(false)?.is_empty() && root.engine.ps(true)?.len() == 1,
        "ps -a shows the exited container",
    )?;

    root.engine.remove(&name, false)?;
    ensure(root.engine.ps(true)?.is_empty(), "rm removes the record")?;
    ensure(
        !root.engine.container_dir(&c.id).exists(),
        "state dir removed",
    )?;
    ensure(
        root.engine.snapshotter().stat(&c.snapshot).is_err(),
        "snapshot removed",
    )?;
    ensure(
        !root.path().join("runtime").join(&c.id).exists(),
        "runtime state removed",
    )?;

    // rm -f of a running one.
    let c2 = root.engine.run_detached(
        &RunConfig {
            name: None,
            ..config
        },
        &root.monitor(),
    )?;
    root.engine.remove(&c2.id, true)?;
    ensure(
        root.engine.ps(true)?.is_empty()
            && cgroup_dirs(&c2.id).is_empty()
            && root.mounts_below().is_empty(),
        "rm -f cleans up",
    )?;
    Ok(())
}

/// Container directories left under the state root (dot files are locks and indexes).
fn container_dirs(root: &Root) -> Vec<String> {
    fs::read_dir(root.path().join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// `--rm` removes a container whose start fails (a missing bind source, a missing command, a
/// memory limit too small to start), foreground and detached, as Docker does: no record, no
/// snapshot, no mount is left, and the image can be removed.
fn auto_remove_cleans_up_failed_starts() -> TestResult {
    let root = Root::new();
    root.busybox();
    let missing = format!("/{}", berth_testutil::unique_name("berth-missing"));
    let config = |command: &[&str]| RunConfig {
        image: "busybox:test".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        auto_remove: true,
        ..Default::default()
    };
    let failing = [
        RunConfig {
            binds: vec![format!("{missing}:/x").parse()?],
            ..config(&["true"])
        },
        config(&["/no/such/command"]),
        RunConfig {
            limits: berth_engine::options::Limits {
                memory: Some(1),
                ..Default::default()
            },
            ..config(&["true"])
        },
    ];
    for run in &failing {
        let mut out = Vec::new();
        let outcome = run_captured(&root, run.clone(), &mut out);
        ensure(
            !matches!(outcome, Ok(0)),
            format!("{:?} must fail: {outcome:?}", run.command),
        )?;
        let detached = root.engine.run_detached(run, &root.monitor());
        ensure(
            detached.is_err() || run.command[0] == "/no/such/command",
            format!("-d {:?} must fail: {detached:?}", run.command),
        )?;
    }
    // A detached container whose command is missing exits at once: its reaper removes it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !root.engine.ps(true)?.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    ensure(
        root.engine.ps(true)?.is_empty(),
        format!("no container left: {:?}", root.engine.ps(true)?),
    )?;
    ensure(
        container_dirs(&root).is_empty(),
        format!("no container directory left: {:?}", container_dirs(&root)),
    )?;
    let snapshots = root.engine.snapshotter().list()?;
    ensure(
        snapshots.iter().all(|s| !s.name.starts_with("container-")),
        format!("no container snapshot left: {snapshots:?}"),
    )?;
    ensure(
        root.mounts_below().is_empty(),
        format!("no mounts left: {:?}", root.mounts_below()),
    )?;
    root.engine.remove_image("busybox:test", false)?;
    Ok(())
}

/// A truncated `state.json` of a running detached container: `ps` reports it (it used to
/// vanish), its name stays taken, and `rm -f` by name or id prefix kills its process and removes
/// cgroup, mount, snapshot and directory.
fn unreadable_record_is_listed_removed_and_keeps_its_name() -> TestResult {
    let root = Root::new();
    root.busybox();
    let name = berth_testutil::unique_name("run1").replace('_', "-");
    let config = RunConfig {
        image: "busybox:test".into(),
        name: Some(name.clone()),
        command: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    };
    let c = root.engine.run_detached(&config, &root.monitor())?;
    let pid = c.pid.ok_or("a running container has a pid")?;
    let state = root.engine.container_dir(&c.id).join("state.json");
    let text = fs::read(&state)?;
    fs::write(&state, &text[..text.len() / 3])?;

    let listing = root.engine.ps_all(false)?;
    ensure(
        listing.containers.is_empty()
            && listing.unreadable.len() == 1
            && listing.unreadable[0].id == c.id
            && listing.unreadable[0].name.as_deref() == Some(name.as_str()),
        format!("ps reports the unreadable record: {listing:?}"),
    )?;
    let err = root
        .engine
        .run_detached(&config, &root.monitor())
        .unwrap_err();
    ensure(
        matches!(err, berth_engine::Error::NameInUse { ref id, .. } if *id == c.id),
        format!("the name stays taken: {err}"),
    )?;
    ensure(
        root.engine.ps_all(true)?.containers.is_empty(),
        "the refused run left no container",
    )?;
    let err = root.engine.remove(&name, false).unwrap_err();
    ensure(
        err.to_string().contains("force"),
        format!("rm without force of a running one: {err}"),
    )?;
    ensure(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
        "still running after a refused rm",
    )?;

    root.engine.remove(&c.id[..12], true)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while berth_engine::state::process_start_time(pid) == c.pid_start_time
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    ensure(
        berth_engine::state::process_start_time(pid) != c.pid_start_time,
        "the process is gone",
    )?;
    ensure(
        cgroup_dirs(&c.id).is_empty(),
        format!("cgroup removed: {:?}", cgroup_dirs(&c.id)),
    )?;
    ensure(
        root.engine.snapshotter().stat(&c.snapshot).is_err(),
        "snapshot removed",
    )?;
    ensure(
        !root.engine.container_dir(&c.id).exists() && container_dirs(&root).is_empty(),
        "directory removed",
    )?;
    ensure(
        root.mounts_below().is_empty(),
        format!("no mounts left: {:?}", root.mounts_below()),
    )?;
    let listing = root.engine.ps_all(true)?;
    ensure(
        listing.containers.is_empty() && listing.unreadable.is_empty(),
        format!("nothing listed: {listing:?}"),
    )?;
    // The name is free again.
    let again = root.engine.create(&config)?;
    root.engine.remove(&again.id, true)?;
    Ok(())
}

/// `image rm` concurrent with container creation on the same image: either the removal is
/// refused (a container uses the image) or no container was created on it.
fn image_rm_and_create_race_is_one_step() -> TestResult {
    let root = Root::new();
    let busybox = root.busybox();
    let image = root.engine.images().image(&busybox)?;
    let digest = image.digest()?.to_string();
    root.engine
        .images()
        .unpack(&image, root.engine.snapshotter().as_ref())?;
    let mut removed_rounds = 0;
    const ROUNDS: u64 = 16;
    for round in 0..ROUNDS {
        root.engine.images().tag(&busybox, &image.target)?;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(7));
        let creators: Vec<_> = (0..6)
            .map(|_| {
                let engine = Engine::open(root.path()).expect("open engine");
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    // Stagger, so that in some rounds the removal comes first.
                    std::thread::sleep(Duration::from_micros(round % 3 * 3000));
                    let mut ids = Vec::new();
                    for _ in 0..2 {
                        if let Ok(c) = engine.create(&RunConfig {
                            image: "busybox:test".into(),
                            command: vec!["true".into()],
                            ..Default::default()
                        }) {
                            ids.push(c.id);
                        }
                    }
                    ids
                })
            })
            .collect();
        barrier.wait();
        std::thread::sleep(Duration::from_micros(round % 5 * 500));
        let removal = root.engine.remove_image("busybox:test", false);
        let created: Vec<String> = creators
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        match removal {
            Ok(_) => {
                removed_rounds += 1;
                let on_image: Vec<_> = root
                    .engine
                    .ps(true)?
                    .into_iter()
                    .filter(|c| c.image_digest == digest)
                    .collect();
                // A create that finished before the removal would have made it fail.
                ensure(
                    on_image.is_empty(),
                    format!(
                        "round {round}: image rm said Deleted while {} containers use it",
                        on_image.len()
                    ),
                )?;
            }
            Err(berth_engine::Error::ImageInUse { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        for id in created {
            root.engine.remove(&id, true)?;
        }
    }
    println!("  image rm succeeded in {removed_rounds} of {ROUNDS} rounds");
    Ok(())
}
