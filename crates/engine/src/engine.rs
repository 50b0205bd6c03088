//! The [`Engine`]: images become snapshots become running containers. One state root holds
//! everything: `image/` (the image store), `snapshots/` (the snapshotter), `runtime/` (the
//! runtime's per-container state) and `containers/` (the engine's records, logs and rootfs
//! mount points).
//!
//! A container's process is always reaped by the process that started it: the caller of
//! [`Engine::run`] in the foreground, or a monitor process for detached containers (the caller
//! says how to start one, see [`MonitorCommand`]; it calls [`Engine::monitor`]). The reaper
//! records the exit code, deletes the runtime state and cgroup, and unmounts the rootfs.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio as ProcessStdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::error_chain;
use berth_builder::{Builder, Workspace};
use berth_image::{ImageStore, Reference};
use berth_namespaces::user::resolve_user;
use berth_namespaces::{CreateOptions, ExitStatus, Runtime, Signal, Stdio};
use berth_unionfs::Snapshotter;
use oci_spec::runtime::Spec;

use crate::error::{Error, Result};
use crate::options::{BindMount, Limits};
use crate::state::{self, Container, StateDir, Status};

/// How to run a container: `docker run`'s options.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    /// The image reference (`busybox`, `name:tag`, `name@sha256:…`).
    pub image: String,
    /// `--name`; generated when `None`.
    pub name: Option<String>,
    /// The command (replaces the image's CMD when not empty).
    pub command: Vec<String>,
    /// `--entrypoint` (replaces the image's ENTRYPOINT and drops its CMD).
    pub entrypoint: Option<Vec<String>>,
    /// `-e KEY=VALUE`.
    pub env: Vec<(String, String)>,
    /// `-v SRC:DST[:ro]`.
    pub binds: Vec<BindMount>,
    /// `--memory`, `--cpus`, `--pids-limit`.
    pub limits: Limits,
    /// `-t`: a pty.
    pub tty: bool,
    /// `-i`: keep stdin attached.
    pub interactive: bool,
    /// `--rm`: remove the container when it exits.
    pub auto_remove: bool,
    /// `-w`: the working directory (absolute).
    pub workdir: Option<String>,
    /// `-u`: `user[:group]` (names looked up in the image).
    pub user: Option<String>,
}

/// How to start the monitor process of a detached container: `program args… <id>`. The program
/// must call [`Engine::monitor`] for that id (the `berth` binary: `berth --root R
/// container-monitor ID`).
#[derive(Debug, Clone)]
pub struct MonitorCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the container id.
    pub args: Vec<OsString>,
}

/// The single-host engine over one state root.
pub struct Engine {
    root: PathBuf,
    images: ImageStore,
    snapshotter: Arc<dyn Snapshotter>,
    runtime: Runtime,
    containers: StateDir,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

const SNAPSHOT_PREFIX: &str = "container-";

impl Engine {
    /// Opens (creating) the engine state under `root`. Containers run through a runtime whose
    /// init binary is the current executable (whose `main` must call
    /// `berth_namespaces::init::main_if_init`); see [`Engine::with_runtime`].
    pub fn open(root: impl Into<PathBuf>) -> Result<Engine> {
        let root = root.into();
        let images = ImageStore::open(root.join("image"))?;
        let snapshotter: Arc<dyn Snapshotter> =
            Arc::from(berth_unionfs::open(root.join("snapshots"))?);
        let runtime = Runtime::new(root.join("runtime"));
        let containers = StateDir::open(root.join("containers"))?;
        Ok(Engine {
            root,
            images,
            snapshotter,
            runtime,
            containers,
        })
    }

    /// Uses `runtime` (another init binary, cgroup root or parent) to run containers. Its state
    /// root should stay `<root>/runtime` unless every user of this root agrees.
    pub fn with_runtime(mut self, runtime: Runtime) -> Engine {
        self.runtime = runtime;
        self
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image store (`<root>/image`).
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The snapshotter (`<root>/snapshots`).
    pub fn snapshotter(&self) -> &Arc<dyn Snapshotter> {
        &self.snapshotter
    }

    /// The runtime containers run through.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// A Dockerfile builder on this root: images go to the image store, layers are built in
    /// the snapshotter (so built images need no unpack to run), RUN steps go through the
    /// runtime, and the layer cache lives in `<root>/build/cache`.
    pub fn builder(&self) -> Result<Builder> {
        let workspace = Workspace::new(
            self.snapshotter.clone(),
            self.runtime.clone(),
            self.root.join("build/work"),
        );
        Builder::new(
            self.images.clone(),
            workspace,
            &self.root.join("build/cache"),
        )
        .map_err(|e| Error::Build(Box::new(e)))
    }

    /// The lock container creation takes (see [`state::StateLock`]).
    pub(crate) fn containers_lock(&self) -> Result<state::StateLock> {
        self.containers.lock_all()
    }

    /// The directory of container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers.container_dir(id)
    }

    /// The log file of a detached container.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("container.log")
    }

    fn rootfs(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("rootfs")
    }

    /// Creates a container: resolves and unpacks the image, prepares a writable snapshot on it,
    /// mounts it, and writes the OCI spec. Nothing runs yet.
    pub fn create(&self, config: &RunConfig) -> Result<Container> {
        crate::options::validate_run(config)?;
        let reference = Reference::parse(&config.image)?;
        let image = self.images.image(&reference)?;
        let unpacked = self.images.unpack(&image, self.snapshotter.as_ref())?;
        let id = state::new_id()?;
        let name = match &config.name {
            Some(name) => validate_name(name)?,
            None => state::generated_name(&id),
        };
        let image_config = image.config.config().clone().unwrap_or_default();
        let snapshot = format!("{SNAPSHOT_PREFIX}{id}");
        let record = Container {
            id: id.clone(),
            name,
            image: config.image.clone(),
            image_digest: image.digest()?.to_string(),
            command: crate::spec::process_args(&image_config, config),
            created: state::now(),
            status: Status::Created,
            pid: None,
            pid_start_time: None,
            started: None,
            finished: None,
            exit_code: None,
            auto_remove: config.auto_remove,
            detached: false,
            snapshot: snapshot.clone(),
            stop_signal: image_config.stop_signal().clone(),
            error: None,
        };
        {
            // One step with `image rm`'s in-use check: the name must still point at the image
            // when the record appears, or `image rm` could remove it unseen.
            let lock = self.containers.lock_all()?;
            let now = self.images.resolve(&reference)?;
            if berth_image::manifest::descriptor_digest(&now)?
                != berth_image::manifest::descriptor_digest(&image.target)?
            {
                return Err(Error::ImageConfig {
                    image: config.image.clone(),
                    message: "the name was re-pointed at another image while the container was created; try again".into(),
                });
            }
            self.containers.create(&lock, &record)?;
        }
        let made = (|| -> Result<()> {
            self.snapshotter.prepare(&snapshot, unpacked.top())?;
            let rootfs = self.rootfs(&id);
            fs::create_dir_all(&rootfs).map_err(Error::io("create", &rootfs))?;
            self.mount_rootfs(&record)?;
            let user_text = config
                .user
                .clone()
                .or_else(|| image_config.user().clone())
                .unwrap_or_default();
            let user = resolve_user(&rootfs, &user_text).map_err(|message| Error::ImageConfig {
                image: config.image.clone(),
                message,
            })?;
            let config = self.with_anonymous_volumes(&id, &rootfs, &image_config, config)?;
            let spec = crate::spec::container_spec(&id, &rootfs, &image_config, &config, &user)?;
            let path = self.container_dir(&id).join("config.json");
            spec.save(&path)
                .map_err(|e| Error::Spec(format!("{}: {e}", path.display())))?;
            Ok(())
        })();
        if let Err(e) = made {
            let _ = self.cleanup(&record);
            return Err(e);
        }
        Ok(record)
    }

    /// `config` plus a bind mount for each `VOLUME` of the image that no `-v` covers: a new
    /// directory under the container's own, seeded with what the image has at that path (as
    /// Docker's anonymous volumes are). They live as long as the container.
    fn with_anonymous_volumes(
        &self,
        id: &str,
        rootfs: &Path,
        image_config: &oci_spec::image::Config,
        config: &RunConfig,
    ) -> Result<RunConfig> {
        let mut config = config.clone();
        // The image config keeps volumes as a JSON object: sort them, so that a parent
        // directory is mounted before the volumes inside it and the numbering is stable.
        let mut volumes = image_config.volumes().clone().unwrap_or_default();
        volumes.sort();
        volumes.dedup();
        for (index, volume) in volumes.iter().enumerate() {
            let destination = PathBuf::from(volume);
            if !destination.is_absolute() {
                return Err(Error::ImageConfig {
                    image: config.image.clone(),
                    message: format!("VOLUME {volume:?} is not an absolute path"),
                });
            }
            let covered = config
                .binds
                .iter()
                .any(|b| b.destination.components().eq(destination.components()));
            if covered {
                continue;
            }
            let source = self
                .container_dir(id)
                .join("volumes")
                .join(index.to_string());
            if let Some(parent) = source.parent() {
                fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
            }
            berth_unionfs::copy_dir_in_root(rootfs, &destination, &source)?;
            config.binds.push(BindMount {
                source,
                destination,
                readonly: false,
            });
        }
        Ok(config)
    }

    fn mount_rootfs(&self, record: &Container) -> Result<()> {
        let rootfs = self.rootfs(&record.id);
        if is_mount_point(&rootfs) {
            return Ok(());
        }
        let mounts = self.snapshotter.mounts(&record.snapshot)?;
        berth_unionfs::mount_all(&mounts, &rootfs)?;
        Ok(())
    }

    /// Starts the created container `id` with `stdio`; this process becomes its reaper: call
    /// [`Attached::wait`] (dropping it unwaited kills the container).
    pub fn start(&self, id: &str, stdio: Stdio) -> Result<Attached<'_>> {
        let record = self.containers.find(id)?;
        let container = self.start_process(&record, stdio)?;
        Ok(Attached {
            engine: self,
            id: record.id,
            container: Some(container),
        })
    }

    /// Starts container `id` with `stdio` and waits for it in this process; returns its exit
    /// code (128+n for signal n). With [`Stdio::Console`], `attach` gets the pty master (and
    /// runs until the container closes it).
    pub fn start_attached(
        &self,
        id: &str,
        stdio: Stdio,
        attach: Option<&mut dyn FnMut(std::os::fd::OwnedFd)>,
    ) -> Result<i32> {
        let mut attached = self.start(id, stdio)?;
        if let (Some(attach), Some(master)) = (attach, attached.take_console()) {
            attach(master);
        }
        attached.wait()
    }

    /// Creates the runtime container, starts it and records it as running.
    fn start_process(
        &self,
        record: &Container,
        stdio: Stdio,
    ) -> Result<berth_namespaces::Container> {
        if record.status != Status::Created {
            return Err(Error::InvalidState {
                id: record.id.clone(),
                status: format!("{:?}", record.status).to_lowercase(),
                message: "only a created container can be started".into(),
            });
        }
        self.mount_rootfs(record)?;
        let dir = self.container_dir(&record.id);
        let config = dir.join("config.json");
        let spec =
            Spec::load(&config).map_err(|e| Error::Spec(format!("{}: {e}", config.display())))?;
        let started = (|| -> Result<berth_namespaces::Container> {
            let mut container = self.runtime.create_from_spec(
                &record.id,
                &dir,
                spec,
                CreateOptions {
                    stdio,
                    ..Default::default()
                },
            )?;
            if let Err(e) = container.start() {
                let _ = container.delete(true);
                return Err(e.into());
            }
            Ok(container)
        })();
        let container = match started {
            Ok(c) => c,
            Err(e) => {
                // `--rm`: a container that never ran is removed too, as Docker does; nothing
                // (record, snapshot, mount) is left to block `image rm`.
                if record.auto_remove {
                    let _ = self.cleanup(record);
                    return Err(e);
                }
                let message = e.to_string();
                let _ = self.containers.update(&record.id, |c| {
                    c.status = Status::Exited;
                    c.exit_code = Some(127);
                    c.finished = Some(state::now());
                    c.error = Some(message);
                });
                let _ = self.unmount_rootfs(&record.id);
                return Err(e);
            }
        };
        let pid = container.pid().as_raw();
        self.containers.update(&record.id, |c| {
            c.status = Status::Running;
            c.pid = Some(pid);
            c.pid_start_time = state::process_start_time(pid);
            c.started = Some(state::now());
        })?;
        Ok(container)
    }

    /// After the process exited: records `code`, deletes the runtime state and cgroup, unmounts
    /// the rootfs; removes everything with `--rm`.
    fn finish(&self, id: &str, code: i32) -> Result<()> {
        if let Ok(container) = self.runtime.load(id) {
            let _ = container.delete(true);
        }
        // Unmount before recording the exit: whoever waits for `Exited` finds nothing mounted.
        let unmounted = self.unmount_rootfs(id);
        let record = self.containers.update(id, |c| {
            c.status = Status::Exited;
            c.exit_code = Some(code);
            c.finished = Some(state::now());
            c.pid = None;
            c.pid_start_time = None;
        })?;
        unmounted?;
        if record.auto_remove {
            self.cleanup(&record)?;
        }
        Ok(())
    }

    fn unmount_rootfs(&self, id: &str) -> Result<()> {
        let rootfs = self.rootfs(id);
        if is_mount_point(&rootfs) {
            berth_unionfs::unmount(&rootfs)?;
        }
        Ok(())
    }

    /// Removes a stopped container's runtime state, rootfs mount, snapshot and record.
    fn cleanup(&self, record: &Container) -> Result<()> {
        self.cleanup_id(&record.id, &record.snapshot)
    }

    /// [`Engine::cleanup`] by id and snapshot key (a record that can't be read has neither
    /// its name nor its snapshot key: the key follows from the id).
    fn cleanup_id(&self, id: &str, snapshot: &str) -> Result<()> {
        if let Ok(container) = self.runtime.load(id) {
            container.delete(true)?;
        }
        self.unmount_rootfs(id)?;
        match self.snapshotter.remove(snapshot) {
            Ok(()) | Err(berth_unionfs::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.containers.remove(id)
    }

    /// `rm` of a container whose record can't be read: its process (known to the runtime)
    /// is killed only with `force`; then runtime state, cgroup, mount, snapshot and directory go.
    fn remove_unreadable(&self, unreadable: &state::Unreadable, force: bool) -> Result<()> {
        if let Ok(container) = self.runtime.load(&unreadable.id) {
            let status = container.status();
            if !force && status != berth_namespaces::Status::Stopped {
                return Err(Error::InvalidState {
                    id: unreadable.id.clone(),
                    status: status.to_string(),
                    message: "its record is unreadable: remove it with force".into(),
                });
            }
            // Kills every process of its cgroup, waits for the first to exit, deletes the
            // cgroup and the runtime state. The monitor (if any) may race us to it.
            if let Err(e) = container.delete(true)
                && self.runtime.load(&unreadable.id).is_ok()
            {
                return Err(e.into());
            }
        }
        self.cleanup_id(
            &unreadable.id,
            &format!("{SNAPSHOT_PREFIX}{}", unreadable.id),
        )
    }

    /// `docker run` in the foreground: creates, starts, waits; returns the exit code. Output goes
    /// to this process's stdio (or the pty handed to `attach` with `-t`).
    pub fn run(
        &self,
        config: &RunConfig,
        attach: Option<&mut dyn FnMut(std::os::fd::OwnedFd)>,
    ) -> Result<(Container, i32)> {
        let record = self.create(config)?;
        let stdio = if config.tty {
            Stdio::Console
        } else if config.interactive {
            Stdio::Inherit
        } else {
            let null: std::os::fd::OwnedFd = fs::File::open("/dev/null")
                .map_err(Error::io("open", "/dev/null"))?
                .into();
            let stdout = std::io::stdout().as_fd_owned()?;
            let stderr = std::io::stderr().as_fd_owned()?;
            Stdio::Fds {
                stdin: null,
                stdout,
                stderr,
            }
        };
        let code = self.start_attached(&record.id, stdio, attach)?;
        Ok((record, code))
    }

    /// `docker run -d`: creates the container and starts a monitor process that starts it,
    /// keeps its output in [`Engine::log_path`] and reaps it. Returns once the container runs
    /// (or failed to start).
    pub fn run_detached(&self, config: &RunConfig, monitor: &MonitorCommand) -> Result<Container> {
        let record = self.create(config)?;
        let record = self.containers.update(&record.id, |c| c.detached = true)?;
        let mut child = std::process::Command::new(&monitor.program)
            .args(&monitor.args)
            .arg(&record.id)
            .stdin(ProcessStdio::null())
            .stdout(ProcessStdio::piped())
            .stderr(ProcessStdio::null())
            .spawn()
            .map_err(Error::io("spawn", &monitor.program))?;
        let mut report = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).take(64 * 1024).read_line(&mut report);
        }
        // Reap the monitor whenever it ends, so a long-running caller keeps no zombie.
        std::thread::spawn(move || child.wait());
        let report = report.trim();
        if report != "started" {
            let message = if report.is_empty() {
                "the monitor exited without a report".to_owned()
            } else {
                report.to_owned()
            };
            // The monitor removes a `--rm` container it failed to start; one that died before
            // trying leaves a created record, removed here.
            if record.auto_remove
                && let Ok(left) = self.containers.load(&record.id)
                && left.status == Status::Created
            {
                let _ = self.cleanup(&left);
            }
            return Err(Error::Monitor {
                id: record.id,
                message,
            });
        }
        self.containers.load(&record.id)
    }

    /// The body of a detached container's monitor process: starts container `id` with its
    /// output in the log file, calls `ready` with `"started"` (or the error) once it runs,
    /// waits for it and records how it ended. Returns the exit code.
    pub fn monitor(&self, id: &str, ready: impl FnOnce(&str)) -> Result<i32> {
        let record = self.containers.find(id)?;
        let started = Stdio::log_file(&self.log_path(&record.id))
            .map_err(Error::from)
            .and_then(|stdio| self.start_process(&record, stdio));
        let mut container = match started {
            Ok(c) => {
                ready("started");
                c
            }
            Err(e) => {
                ready(&error_chain(&e));
                return Err(e);
            }
        };
        let code = container.wait().map(ExitStatus::code).unwrap_or(255);
        drop(container);
        self.finish(&record.id, code)?;
        Ok(code)
    }

    /// Every container (`all`) or the running ones, oldest first. Records of processes whose
    /// reaper died are corrected to exited. Containers whose record can't be read are left
    /// out: [`Engine::ps_all`] reports them.
    pub fn ps(&self, all: bool) -> Result<Vec<Container>> {
        Ok(self.ps_all(all)?.containers)
    }

    /// [`Engine::ps`], and every container directory whose record can't be read (whatever
    /// `all` says: it may be running). `rm -f` removes those.
    pub fn ps_all(&self, all: bool) -> Result<state::Listing> {
        let listing = self.containers.list_all()?;
        let mut out = Vec::new();
        for mut c in listing.containers {
            if c.status == Status::Running && !c.is_alive() {
                c = self.containers.update(&c.id, |c| {
                    if c.status == Status::Running && !c.is_alive() {
                        c.status = Status::Exited;
                        c.exit_code.get_or_insert(255);
                        c.finished.get_or_insert(state::now());
                    }
                })?;
            }
            if all || c.status == Status::Running {
                out.push(c);
            }
        }
        Ok(state::Listing {
            containers: out,
            unreadable: listing.unreadable,
        })
    }

    /// Finds a container by id, id prefix or name.
    pub fn inspect(&self, key: &str) -> Result<Container> {
        self.containers.find(key)
    }

    /// `docker exec`: runs `args` in the running container `key` with its spec's user, cwd and
    /// environment (plus `env`); returns the exit code. With `tty`, `attach` gets the pty.
    pub fn exec(
        &self,
        key: &str,
        args: &[String],
        env: &[(String, String)],
        tty: bool,
        attach: Option<&mut dyn FnMut(std::os::fd::OwnedFd)>,
    ) -> Result<i32> {
        let record = self.containers.find(key)?;
        if !record.is_alive() {
            return Err(not_running(&record, "exec needs a running container"));
        }
        if args.is_empty() {
            return Err(Error::Option {
                option: "exec",
                value: String::new(),
                reason: "no command given".into(),
            });
        }
        let container = self.runtime.load(&record.id)?;
        let mut process = container.spec().process().clone().unwrap_or_default();
        process.set_args(Some(args.to_vec()));
        process.set_terminal(Some(tty));
        let mut all_env = process.env().clone().unwrap_or_default();
        for (k, v) in env {
            berth_namespaces::process::set_env(&mut all_env, format!("{k}={v}"));
        }
        process.set_env(Some(all_env));
        let stdio = if tty { Stdio::Console } else { Stdio::Inherit };
        let mut exec = container.exec(
            process,
            CreateOptions {
                stdio,
                ..Default::default()
            },
        )?;
        if let (Some(attach), Some(master)) = (attach, exec.take_console()) {
            attach(master);
        }
        Ok(exec.wait()?.code())
    }

    /// `docker stop`: the stop signal (the image's STOPSIGNAL, else SIGTERM), up to `grace` for
    /// the process to exit, then SIGKILL to every process of the container's cgroup. Waits
    /// until the reaper recorded the exit. A container that is not running is left as it is.
    pub fn stop(&self, key: &str, grace: Duration) -> Result<Container> {
        let record = self.containers.find(key)?;
        if !record.is_alive() {
            return Ok(record);
        }
        let signal = record
            .stop_signal
            .as_deref()
            .and_then(parse_signal)
            .unwrap_or(Signal::SIGTERM);
        if let Ok(container) = self.runtime.load(&record.id) {
            let _ = container.kill(signal);
            if !self.wait_exit(&record.id, grace) {
                let _ = container.kill_all(Signal::SIGKILL);
            }
        }
        if !self.wait_exit(&record.id, Duration::from_secs(10)) {
            return Err(not_running(&record, "did not exit after SIGKILL"));
        }
        self.wait_recorded(&record.id)
    }

    /// Waits up to `timeout` for the process to be gone; true if it is.
    fn wait_exit(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.containers.load(id) {
                Ok(c) if c.is_alive() => {}
                _ => return true,
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (briefly) for the reaper to record the exit; finishes the container itself when
    /// there is no reaper any more.
    fn wait_recorded(&self, id: &str) -> Result<Container> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let c = match self.containers.load(id) {
                Ok(c) => c,
                // --rm: the reaper removed it.
                Err(Error::NotFound(_)) => return Err(Error::NotFound(id.to_owned())),
                Err(e) => return Err(e),
            };
            if c.status == Status::Exited {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                self.finish(id, 255)?;
                return self.containers.load(id);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `docker rm`: removes a stopped container (with `force`, kills a running one first):
    /// runtime state, cgroup, rootfs mount, snapshot and record.
    pub fn remove(&self, key: &str, force: bool) -> Result<()> {
        let record = match self.containers.find_any(key)? {
            state::Found::Record(record) => record,
            state::Found::Unreadable(unreadable) => {
                return self.remove_unreadable(&unreadable, force);
            }
        };
        if record.is_alive() {
            if !force {
                return Err(not_running(
                    &record,
                    "stop it first, or remove it with force",
                ));
            }
            if let Ok(container) = self.runtime.load(&record.id) {
                let _ = container.kill_all(Signal::SIGKILL);
            }
            if !self.wait_exit(&record.id, Duration::from_secs(10)) {
                return Err(not_running(&record, "did not exit after SIGKILL"));
            }
            match self.wait_recorded(&record.id) {
                Ok(_) => {}
                Err(Error::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        let record = match self.containers.load(&record.id) {
            Ok(r) => r,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.cleanup(&record)
    }
}

/// A container started by [`Engine::start`], reaped by this process.
pub struct Attached<'e> {
    engine: &'e Engine,
    id: String,
    container: Option<berth_namespaces::Container>,
}

impl std::fmt::Debug for Attached<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Attached<'_> {
    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host pid of the container's first process.
    pub fn pid(&self) -> i32 {
        self.container.as_ref().map_or(0, |c| c.pid().as_raw())
    }

    /// The pty master, for a container started with [`Stdio::Console`] (once).
    pub fn take_console(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.container.as_mut()?.take_console()
    }

    /// Waits for the process, records its exit code (128+n for signal n), deletes its runtime
    /// state and unmounts its rootfs (removes everything with `--rm`). Returns the exit code.
    pub fn wait(mut self) -> Result<i32> {
        self.reap()
    }

    fn reap(&mut self) -> Result<i32> {
        let Some(mut container) = self.container.take() else {
            return Ok(255);
        };
        let status = container.wait();
        let code = status.as_ref().map(|s| s.code()).unwrap_or(255);
        drop(container);
        self.engine.finish(&self.id, code)?;
        status?;
        Ok(code)
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if let Some(container) = &self.container {
            let _ = container.kill_all(Signal::SIGKILL);
            let _ = self.reap();
        }
    }
}

fn not_running(record: &Container, message: &str) -> Error {
    let status = if record.is_alive() {
        "running".to_owned()
    } else {
        format!("{:?}", record.status).to_lowercase()
    };
    Error::InvalidState {
        id: record.id.clone(),
        status,
        message: message.to_owned(),
    }
}

/// Docker's name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn validate_name(name: &str) -> Result<String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if !ok {
        return Err(Error::Option {
            option: "--name",
            value: name.to_owned(),
            reason: "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed".into(),
        });
    }
    Ok(name.to_owned())
}

/// `SIGTERM`, `TERM`, `15`.
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Some(parent)) = (fs::symlink_metadata(path), path.parent()) else {
        return false;
    };
    let Ok(parent_meta) = fs::metadata(parent) else {
        return false;
    };
    // A different device, or the same inode as the parent (a bind of the parent's fs root).
    meta.dev() != parent_meta.dev()
        || fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
            let wanted = path.to_string_lossy();
            info.lines()
                .any(|l| l.split(' ').nth(4) == Some(wanted.as_ref()))
        })
}

trait AsFdOwned {
    fn as_fd_owned(&self) -> Result<std::os::fd::OwnedFd>;
}

impl<T: std::os::fd::AsFd> AsFdOwned for T {
    fn as_fd_owned(&self) -> Result<std::os::fd::OwnedFd> {
        self.as_fd()
            .try_clone_to_owned()
            .map_err(Error::io("dup", "stdio"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_signals() {
        assert!(validate_name("web-1.a_b").is_ok());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("").is_err());
        assert_eq!(parse_signal("SIGINT"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("nope"), None);
    }
}
