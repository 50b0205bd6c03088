//! The runtime side of the lifecycle: [`Runtime`] creates containers from an OCI bundle (or a
//! [`Spec`] and a rootfs) and finds them again by id; [`Container`] starts, waits for, signals,
//! pauses, execs into and deletes one.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_cgroups::{AnyManager, CgroupManager};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxDeviceCgroup, LinuxDeviceType, LinuxIdMapping, LinuxNamespaceType, LinuxResources,
    Process, Spec,
};

use crate::channel::{Channel, Message};
use crate::hooks::{self, HookStage};
use crate::init::{INIT_ENV, InitConfig, InitKind};
use crate::state::{self, Record, State, Status};
use crate::{Error, Result, sys};

/// Where a container's stdin, stdout and stderr go.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The caller's own stdio (the default).
    #[default]
    Inherit,
    /// /dev/null for all three.
    Null,
    /// These three descriptors (files, sockets, pipe ends, …).
    Fds {
        /// Becomes fd 0.
        stdin: OwnedFd,
        /// Becomes fd 1.
        stdout: OwnedFd,
        /// Becomes fd 2.
        stderr: OwnedFd,
    },
    /// New pipes; take the caller's ends with [`Container::take_stdio`].
    Piped,
    /// A pty: the spec's `process.terminal` must be true; the master comes back through
    /// [`Container::take_console`] (or is sent to `console_socket`).
    Console,
}

impl Stdio {
    /// stdin from /dev/null, stdout and stderr appended to the file at `log` (created 0640).
    pub fn log_file(log: &Path) -> Result<Stdio> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(log)
            .map_err(|e| Error::io("open log", log, e))?;
        let null = File::open("/dev/null").map_err(|e| Error::io("open", "/dev/null", e))?;
        let err = file.try_clone().map_err(|e| Error::io("dup", log, e))?;
        Ok(Stdio::Fds {
            stdin: null.into(),
            stdout: file.into(),
            stderr: err.into(),
        })
    }
}

/// Options of [`Runtime::create`] and [`Container::exec`] beyond the spec.
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// Where stdio goes.
    pub stdio: Stdio,
    /// With a terminal: send the pty master to this unix socket (runc's `--console-socket`)
    /// instead of keeping it.
    pub console_socket: Option<PathBuf>,
    /// Pass the caller's fds 3..3+n into the container (runc's `--preserve-fds`).
    pub preserve_fds: u32,
    /// Write the container process's pid here (runc's `--pid-file`).
    pub pid_file: Option<PathBuf>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(Signal),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(sig) => 128 + sig as i32,
        }
    }
}

/// The binary the runtime re-executes as the container init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitBinary {
    /// The running executable (`/proc/self/exe`): its `main` must call
    /// [`crate::init::main_if_init`] first.
    CurrentExe,
    /// Another binary whose `main` calls [`crate::init::main_if_init`].
    Path(PathBuf),
}

/// Creates containers and finds them by id under a state root.
#[derive(Debug, Clone)]
pub struct Runtime {
    state_root: PathBuf,
    cgroup_root: PathBuf,
    cgroup_parent: PathBuf,
    init: InitBinary,
}

impl Runtime {
    /// A runtime keeping state under `state_root` (e.g. `/run/berth`), cgroups under
    /// `/sys/fs/cgroup/berth/<id>` unless a spec says otherwise, and re-executing the current
    /// binary as init.
    pub fn new(state_root: impl Into<PathBuf>) -> Runtime {
        Runtime {
            state_root: state_root.into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: PathBuf::from("berth"),
            init: InitBinary::CurrentExe,
        }
    }

    /// Uses another cgroup root (the cgroupfs mount point).
    pub fn with_cgroup_root(mut self, root: impl Into<PathBuf>) -> Runtime {
        self.cgroup_root = root.into();
        self
    }

    /// Puts containers without `linux.cgroupsPath` under this group (default `berth`).
    pub fn with_cgroup_parent(mut self, parent: impl Into<PathBuf>) -> Runtime {
        self.cgroup_parent = parent.into();
        self
    }

    /// Uses another init binary.
    pub fn with_init_binary(mut self, init: InitBinary) -> Runtime {
        self.init = init;
        self
    }

    /// The state root.
    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// Creates a container from an OCI bundle (a directory with config.json and the rootfs).
    /// The process is set up and waits for [`Container::start`].
    pub fn create(&self, id: &str, bundle: &Path, options: CreateOptions) -> Result<Container> {
        let bundle = std::path::absolute(bundle).map_err(|e| Error::io("resolve", bundle, e))?;
        let spec = load_config(&bundle)?;
        self.create_from_spec(id, &bundle, spec, options)
    }

    /// Creates a container from `spec`; `bundle` anchors a relative `root.path` and relative
    /// bind-mount sources.
    pub fn create_from_spec(
        &self,
        id: &str,
        bundle: &Path,
        spec: Spec,
        mut options: CreateOptions,
    ) -> Result<Container> {
        state::validate_id(id)?;
        let bundle = std::path::absolute(bundle).map_err(|e| Error::io("resolve", bundle, e))?;
        let rootfs = validate_spec(&spec, &bundle)?;
        // A spec the init channel cannot carry fails before anything is created (the whole
        // config, with the compiled seccomp program, is checked again before it is sent).
        if encoded_len(&spec) > crate::channel::MAX_MESSAGE {
            return Err(config_too_large(&spec));
        }
        let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
        if matches!(options.stdio, Stdio::Console) != terminal && options.console_socket.is_none() {
            return Err(Error::InvalidSpec(if terminal {
                "process.terminal is true: use Stdio::Console or a console socket".into()
            } else {
                "Stdio::Console needs process.terminal = true".into()
            }));
        }
        std::fs::create_dir_all(&self.state_root)
            .map_err(|e| Error::io("create", &self.state_root, e))?;
        let dir = state::container_dir(&self.state_root, id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists(id.to_string()));
            }
            Err(e) => return Err(Error::io("create", &dir, e)),
        }
        let cgroup_path = self.cgroup_path(id, &spec);
        let mut guard = CreateGuard {
            dir: Some(dir.clone()),
            cgroup: None,
            pidfd: None,
            host_mounts: None,
        };
        let result = self.create_inner(
            id,
            &bundle,
            &rootfs,
            spec,
            &mut options,
            &dir,
            &cgroup_path,
            &mut guard,
        );
        match result {
            Ok(container) => {
                guard.disarm();
                Ok(container)
            }
            Err(e) => Err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create_inner(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: &Path,
        spec: Spec,
        options: &mut CreateOptions,
        dir: &Path,
        cgroup_path: &Path,
        guard: &mut CreateGuard,
    ) -> Result<Container> {
        let fifo = state::fifo_path(dir);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| Error::sys(format!("mkfifo {}", fifo.display()), e))?;

        let cgroup = berth_cgroups::manager(&self.cgroup_root, cgroup_path)
            .map_err(|source| Error::cgroup(cgroup_path.to_path_buf(), source))?;
        let resources = container_resources(&spec);
        guard.cgroup = Some(cgroup.clone());
        cgroup
            .apply(&resources)
            .map_err(|source| Error::cgroup(cgroup_path.to_path_buf(), source))?;

        let linux = spec.linux().clone().unwrap_or_default();
        let mut join = Vec::new();
        let mut new_namespaces = CloneFlags::empty();
        for ns in linux.namespaces().as_deref().unwrap_or_default() {
            match ns.path() {
                Some(path) => join.push((ns.typ(), path.clone())),
                None => new_namespaces |= CloneFlags::from_bits_truncate(ns.typ() as i32),
            }
        }
        let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
        // Without a mount namespace the rootfs is built in the host's mount table.
        let host_mounts = if linux
            .namespaces()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|ns| ns.typ() == LinuxNamespaceType::Mount)
        {
            None
        } else {
            let resolved =
                std::fs::canonicalize(rootfs).map_err(|e| Error::io("resolve", rootfs, e))?;
            let base = crate::rootfs::mounts_at(&resolved);
            Some((resolved, base))
        };
        guard.host_mounts = host_mounts.clone();
        let mut record = Record {
            id: id.to_string(),
            pid: 0,
            start_time: 0,
            bundle: bundle.to_path_buf(),
            rootfs: rootfs.to_path_buf(),
            created: state::now_rfc3339(),
            cgroup: cgroup_path.to_path_buf(),
            spec: spec.clone(),
            host_mounts,
        };
        record.save(dir)?;
        let seccomp_state = uses_seccomp_listener(&spec).then(|| seccomp_state_json(&record));
        let seccomp = self.seccomp_program(&spec)?;
        let config = InitConfig {
            id: id.to_string(),
            kind: InitKind::Create,
            spec: spec.clone(),
            rootfs: rootfs.to_path_buf(),
            bundle: bundle.to_path_buf(),
            fifo: Some(fifo),
            join,
            new_namespaces: new_namespaces.bits(),
            console: terminal,
            cgroup: cgroup_path.to_path_buf(),
            cgroup_self_join: cgroup.self_join_files().unwrap_or_default(),
            preserve_fds: options.preserve_fds,
            seccomp_state,
            seccomp,
        };
        let idmaps = new_namespaces.contains(CloneFlags::CLONE_NEWUSER).then(|| {
            (
                linux.uid_mappings().clone().unwrap_or_default(),
                linux.gid_mappings().clone().unwrap_or_default(),
            )
        });
        let stdio = std::mem::take(&mut options.stdio);
        let spawned = self.spawn(id, config, stdio, &cgroup, idmaps, guard)?;
        record.pid = spawned.pid.as_raw();
        record.start_time = state::process_start_time(record.pid)
            .map(|(t, _)| t)
            .unwrap_or(0);
        record.save(dir)?;
        if let Some(pid_file) = &options.pid_file {
            write_pid_file(pid_file, record.pid)?;
        }
        let mut container = Container {
            runtime: self.clone(),
            dir: dir.to_path_buf(),
            record,
            cgroup,
            pidfd: Some(spawned.pidfd),
            is_parent: true,
            console: spawned.console,
            pipes: spawned.pipes,
            exit: None,
        };
        if let Some(socket) = &options.console_socket {
            let master = container.console.take().ok_or_else(|| {
                Error::InvalidSpec("--console-socket needs process.terminal = true".into())
            })?;
            send_console(socket, &master)?;
        }
        let hooks = container.hooks();
        if hooks::any(hooks.prestart()) || hooks::any(hooks.create_runtime()) {
            let state = container.state_json();
            hooks::run(hooks.prestart(), HookStage::Prestart, &state)?;
            hooks::run(hooks.create_runtime(), HookStage::CreateRuntime, &state)?;
        }
        guard.pidfd = None;
        Ok(container)
    }

    /// Finds the container `id` (created by this or another process).
    pub fn load(&self, id: &str) -> Result<Container> {
        state::validate_id(id)?;
        let dir = state::container_dir(&self.state_root, id);
        let record = Record::load(&dir, id)?;
        let cgroup = berth_cgroups::manager(&self.cgroup_root, &record.cgroup)
            .map_err(|source| Error::cgroup(record.cgroup.clone(), source))?;
        let pidfd = if record.alive() {
            let pidfd = sys::pidfd_open(Pid::from_raw(record.pid)).ok();
            // Re-check after opening: the fd now pins the process, so a matching start time
            // proves it is ours and not a later process with a reused pid.
            pidfd.filter(|_| record.alive())
        } else {
            None
        };
        Ok(Container {
            runtime: self.clone(),
            dir,
            record,
            cgroup,
            pidfd,
            is_parent: false,
            console: None,
            pipes: None,
            exit: None,
        })
    }

    /// The state of every container under the state root (unreadable entries are skipped).
    pub fn list(&self) -> Result<Vec<State>> {
        let entries = match std::fs::read_dir(&self.state_root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &self.state_root, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            if let Some(id) = entry.file_name().to_str()
                && let Ok(container) = self.load(id)
            {
                out.push(container.state());
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The spec's seccomp profile as a BPF program, from the cache under the state root when
    /// another container used the same profile. (`@` keeps the cache apart from container ids.)
    fn seccomp_program(&self, spec: &Spec) -> Result<Option<crate::bpf::SeccompProgram>> {
        let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
            return Ok(None);
        };
        crate::bpf::program(profile, &self.state_root.join("@seccomp-cache"))
            .map(Some)
            .map_err(Error::InvalidSpec)
    }

    fn cgroup_path(&self, id: &str, spec: &Spec) -> PathBuf {
        match spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) {
            Some(path) => path
                .strip_prefix("/")
                .map(Path::to_path_buf)
                .unwrap_or(path),
            None => self.cgroup_parent.join(id),
        }
    }

    fn init_fd(&self) -> Result<OwnedFd> {
        static CACHE: Mutex<Option<(PathBuf, OwnedFd)>> = Mutex::new(None);
        let path = match &self.init {
            InitBinary::CurrentExe => std::fs::read_link("/proc/self/exe")
                .map_err(|e| Error::io("readlink", "/proc/self/exe", e))?,
            InitBinary::Path(path) => {
                std::path::absolute(path).map_err(|e| Error::io("resolve", path, e))?
            }
        };
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, fd)) = cache.as_ref()
            && *cached == path
        {
            return fd.try_clone().map_err(|e| Error::io("dup", &path, e));
        }
        let fd = sys::open_readonly_clone(&path)
            .map_err(|e| Error::sys(format!("open init binary {} read-only", path.display()), e))?;
        let copy = fd.try_clone().map_err(|e| Error::io("dup", &path, e))?;
        *cache = Some((path, fd));
        Ok(copy)
    }

    /// Starts an init process with `config` and runs the sync protocol until it is ready.
    fn spawn(
        &self,
        id: &str,
        config: InitConfig,
        stdio: Stdio,
        cgroup: &AnyManager,
        idmaps: Option<(Vec<LinuxIdMapping>, Vec<LinuxIdMapping>)>,
        guard: &mut CreateGuard,
    ) -> Result<Spawned> {
        // Encoded before the init exists: a config the channel cannot carry fails here.
        let preserve_fds = config.preserve_fds;
        let self_join = !config.cgroup_self_join.is_empty();
        let message = Message::Config(Box::new(config));
        let config_frame = match Channel::encode(&message) {
            Ok(frame) => frame,
            Err(e) if e.raw_os_error() == Some(libc::E2BIG) => {
                let Message::Config(config) = message else {
                    unreachable!("built above")
                };
                return Err(config_too_large(&config.spec));
            }
            Err(e) => return Err(Error::io("encode config", "sync", e)),
        };
        drop(message);
        let init_fd = self.init_fd()?;
        let (mut parent, child) =
            Channel::pair().map_err(|e| Error::io("socketpair", "sync", e))?;
        let target = 3 + preserve_fds as i32;
        // The exec path must survive the dup2 onto `target`.
        let init_fd = if init_fd.as_raw_fd() == target {
            nix::fcntl::fcntl(&init_fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(target + 1))
                .map(|fd| {
                    // F_DUPFD returns a new fd we own.
                    sys::own_inherited_fd(fd).expect("fresh fd")
                })
                .map_err(|e| Error::sys("dup init fd", e))?
        } else {
            init_fd
        };
        let mut command = Command::new(format!("/proc/self/fd/{}", init_fd.as_raw_fd()));
        command
            .arg0("berth-init")
            .env_clear()
            .env(INIT_ENV, target.to_string());
        let mut pipes = None;
        match stdio {
            Stdio::Inherit => {}
            Stdio::Null | Stdio::Console => {
                command
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            }
            Stdio::Fds {
                stdin,
                stdout,
                stderr,
            } => {
                command.stdin(stdin).stdout(stdout).stderr(stderr);
            }
            Stdio::Piped => {
                let (in_r, in_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| Error::sys("pipe", e))?;
                let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| Error::sys("pipe", e))?;
                let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| Error::sys("pipe", e))?;
                command.stdin(in_r).stdout(out_w).stderr(err_w);
                pipes = Some(ContainerPipes {
                    stdin: Some(in_w.into()),
                    stdout: Some(out_r.into()),
                    stderr: Some(err_r.into()),
                });
            }
        }
        sys::place_fd_in_child(&mut command, child.raw_fd(), target);
        let mut init = command.spawn().map_err(|e| {
            Error::io(
                "spawn init",
                format!("/proc/self/fd/{}", init_fd.as_raw_fd()),
                e,
            )
        })?;
        drop(command);
        drop(child);
        let init_pid = Pid::from_raw(init.id() as i32);
        let result = (|| -> Result<Spawned> {
            parent
                .send_frame(&config_frame)
                .map_err(|e| Error::io("send config", "sync", e))?;
            let mut console = None;
            let mut pid = None;
            let mut join_error = None;
            loop {
                let message = parent
                    .recv()
                    .map_err(|e| Error::io("sync with init", "sync", e))?;
                match message {
                    Some((Message::NeedIdMaps, _)) => {
                        let (uids, gids) = idmaps.clone().unwrap_or_default();
                        write_id_map(init_pid, "uid_map", &uids)?;
                        write_id_map(init_pid, "gid_map", &gids)?;
                        parent
                            .send(&Message::Continue)
                            .map_err(|e| Error::io("sync with init", "sync", e))?;
                    }
                    Some((Message::Pid(p), _)) => {
                        let p = Pid::from_raw(p);
                        let pidfd = sys::pidfd_open(p).map_err(|e| Error::sys("pidfd_open", e))?;
                        guard.pidfd = Some(
                            pidfd
                                .try_clone()
                                .map_err(|e| Error::io("dup", "pidfd", e))?,
                        );
                        pid = Some((p, pidfd));
                        if self_join {
                            // The process moves itself in (see `self_join_files`).
                            continue;
                        }
                        // Only the container process joins the cgroup (the init exits now).
                        // On cgroup v1 the move waits for an RCU grace period (often several
                        // ms); the process builds its root filesystem meanwhile and waits for
                        // `Continue` before anything that must be accounted to the container
                        // (a cgroup namespace, hooks, the user's program). If the move fails
                        // because the process already failed and exited, its own error is
                        // still to be read, and is the one reported.
                        let joined = cgroup
                            .add_process(p)
                            .map_err(|source| Error::cgroup(cgroup.path().to_path_buf(), source))
                            .and_then(|()| {
                                parent
                                    .send(&Message::Continue)
                                    .map_err(|e| Error::io("sync with init", "sync", e))
                            });
                        if let Err(e) = joined {
                            join_error = Some(e);
                        }
                    }
                    Some((Message::Console, fd)) => console = fd,
                    Some((Message::Ready, _)) => match join_error.take() {
                        Some(e) => return Err(e),
                        None => break,
                    },
                    Some((Message::Error(message), _)) => {
                        return Err(Error::Init {
                            id: id.to_string(),
                            message,
                        });
                    }
                    Some((other, _)) => {
                        return Err(Error::Init {
                            id: id.to_string(),
                            message: format!("unexpected sync message {other:?}"),
                        });
                    }
                    None => {
                        return Err(join_error.take().unwrap_or_else(|| Error::Init {
                            id: id.to_string(),
                            message: "init exited during setup".into(),
                        }));
                    }
                }
            }
            let (pid, pidfd) = pid.ok_or_else(|| Error::Init {
                id: id.to_string(),
                message: "init sent no pid".into(),
            })?;
            Ok(Spawned {
                pid,
                pidfd,
                console,
                pipes,
            })
        })();
        if result.is_err() {
            let _ = init.kill();
        }
        let _ = init.wait();
        result
    }
}

/// The error for a config over the init channel's limit, naming its largest part.
fn config_too_large(spec: &Spec) -> Error {
    let process = spec.process().as_ref();
    let linux = spec.linux().as_ref();
    let parts: [(&'static str, usize); 12] = [
        (
            "process.args",
            encoded_len(&process.and_then(|p| p.args().as_ref())),
        ),
        (
            "process.env",
            encoded_len(&process.and_then(|p| p.env().as_ref())),
        ),
        (
            "process.rlimits",
            encoded_len(&process.and_then(|p| p.rlimits().as_ref())),
        ),
        (
            "process.capabilities",
            encoded_len(&process.and_then(|p| p.capabilities().as_ref())),
        ),
        ("mounts", encoded_len(spec.mounts())),
        ("hooks", encoded_len(spec.hooks())),
        ("annotations", encoded_len(spec.annotations())),
        (
            "linux.seccomp",
            encoded_len(&linux.and_then(|l| l.seccomp().as_ref())),
        ),
        (
            "linux.resources",
            encoded_len(&linux.and_then(|l| l.resources().as_ref())),
        ),
        (
            "linux.devices",
            encoded_len(&linux.and_then(|l| l.devices().as_ref())),
        ),
        (
            "linux.sysctl",
            encoded_len(&linux.and_then(|l| l.sysctl().as_ref())),
        ),
        ("hostname", encoded_len(spec.hostname())),
    ];
    let (field, field_size) = parts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .unwrap_or(("spec", 0));
    Error::ConfigTooLarge {
        size: encoded_len(spec),
        limit: crate::channel::MAX_MESSAGE,
        field,
        field_size,
    }
}

/// The length of `value` as JSON. (`to_vec`, whose serializer the state record already
/// instantiates for every spec type: a counting writer would add a copy of all that code.)
fn encoded_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

/// Reads a bundle's `config.json`, as [`Runtime::create`] does.
///
/// (Parsed from memory with `serde_json::from_slice`, the one JSON reader this crate
/// instantiates: every reader type duplicates the deserializers of every spec type.)
pub fn load_config(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let invalid = |source| Error::InvalidConfig {
        path: path.clone(),
        source,
    };
    let bytes = std::fs::read(&path).map_err(|e| invalid(e.into()))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(e.into()))
}

fn validate_spec(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("root is missing".into()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    match std::fs::metadata(&rootfs) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::InvalidSpec(format!(
                "rootfs {} is not a directory",
                rootfs.display()
            )));
        }
        Err(e) => return Err(Error::io("rootfs", &rootfs, e)),
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("process is missing".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidSpec("process.args is empty".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(Error::InvalidSpec(format!(
            "process.cwd {} is not absolute",
            process.cwd().display()
        )));
    }
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("linux is missing".into()))?;
    // Running with less confinement than asked is worse than not running (as runc and crun).
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
        && !crate::security::apparmor_enabled()
    {
        return Err(Error::InvalidSpec(format!(
            "process.apparmorProfile {profile:?} is set, but AppArmor is not enabled on this host"
        )));
    }
    let selinux = [
        ("process.selinuxLabel", process.selinux_label()),
        ("linux.mountLabel", linux.mount_label()),
    ];
    for (field, label) in selinux {
        if let Some(label) = label.as_deref().filter(|l| !l.is_empty())
            && !crate::security::selinux_enabled()
        {
            return Err(Error::InvalidSpec(format!(
                "{field} {label:?} is set, but SELinux is not enabled on this host"
            )));
        }
    }
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let has = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t);
    for (i, ns) in namespaces.iter().enumerate() {
        if namespaces[..i].iter().any(|n| n.typ() == ns.typ()) {
            return Err(Error::InvalidSpec(format!(
                "namespace {} listed twice",
                ns.typ()
            )));
        }
        if ns.typ() == LinuxNamespaceType::Time {
            return Err(Error::InvalidSpec(
                "time namespaces are not supported".into(),
            ));
        }
        if let Some(path) = ns.path() {
            check_namespace_path(ns.typ(), path)?;
        }
    }
    if spec.hostname().is_some() && !has(LinuxNamespaceType::Uts) {
        return Err(Error::InvalidSpec("hostname needs a uts namespace".into()));
    }
    let user_ns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    if user_ns && linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
        return Err(Error::InvalidSpec(
            "a new user namespace needs uidMappings and gidMappings".into(),
        ));
    }
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if !m.destination().is_absolute() {
            return Err(Error::InvalidSpec(format!(
                "mount destination {} is not absolute",
                m.destination().display()
            )));
        }
    }
    Ok(rootfs)
}

/// Checks that `path` is a namespace of type `typ` (the init's `setns` passes the type too,
/// but a mismatch found here fails before anything is created, with a clearer message).
fn check_namespace_path(typ: LinuxNamespaceType, path: &Path) -> Result<()> {
    let invalid = |what: String| {
        Error::InvalidSpec(format!("{typ} namespace path {}: {what}", path.display()))
    };
    let file = File::open(path).map_err(|e| invalid(e.to_string()))?;
    match sys::namespace_type(file.as_fd()) {
        Ok(actual) if actual == typ as i32 => Ok(()),
        Ok(actual) => {
            let name = NAMESPACE_TYPES
                .iter()
                .find(|t| **t as i32 == actual)
                .map_or_else(|| format!("{actual:#x}"), |t| t.to_string());
            Err(invalid(format!(
                "is a {name} namespace, not a {typ} namespace"
            )))
        }
        Err(_) => Err(invalid("is not a namespace file".into())),
    }
}

const NAMESPACE_TYPES: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::User,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Time,
];

/// The spec's `linux.resources` plus the devices every container needs (as runc adds them):
/// the default nodes, ptys, mknod of anything, and the spec's own `linux.devices`.
fn container_resources(spec: &Spec) -> LinuxResources {
    let linux = spec.linux().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_else(|| {
        let mut r = LinuxResources::default();
        r.set_devices(None);
        r
    });
    if let Some(rules) = resources.devices().clone() {
        let rule = |typ, major: Option<i64>, minor: Option<i64>, access: &str| {
            let mut d = LinuxDeviceCgroup::default();
            d.set_allow(true);
            d.set_typ(Some(typ));
            d.set_major(major);
            d.set_minor(minor);
            d.set_access(Some(access.to_string()));
            d
        };
        let mut rules = rules;
        rules.push(rule(LinuxDeviceType::C, None, None, "m"));
        rules.push(rule(LinuxDeviceType::B, None, None, "m"));
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            rules.push(rule(LinuxDeviceType::C, Some(major), Some(minor), "rwm"));
        }
        rules.push(rule(LinuxDeviceType::C, Some(136), None, "rwm"));
        // A FIFO (`p`) is a node, not a device: no cgroup rule governs it.
        for device in linux.devices().as_deref().unwrap_or_default() {
            if device.typ() != LinuxDeviceType::P {
                rules.push(LinuxDeviceCgroup::from(device));
            }
        }
        resources.set_devices(Some(rules));
    }
    resources
}

fn write_id_map(pid: Pid, file: &str, map: &[LinuxIdMapping]) -> Result<()> {
    let path = format!("/proc/{pid}/{file}");
    let text: String = map
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect();
    std::fs::write(&path, text).map_err(|e| Error::io("write", path, e))
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("berth-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

/// Sends the pty master to a `--console-socket` listener the way runc does (SCM_RIGHTS, with
/// the pty's name as payload).
fn send_console(socket: &Path, master: &OwnedFd) -> Result<()> {
    use std::io::IoSlice;
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| Error::io("connect console socket", socket, e))?;
    let fds = [master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    nix::sys::socket::sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(b"/dev/ptmx")],
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| Error::sys(format!("send console to {}", socket.display()), e))?;
    Ok(())
}

/// Whether the spec hands a seccomp notify fd to a listener (which gets the state JSON).
fn uses_seccomp_listener(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .is_some_and(|s| s.listener_path().is_some())
}

fn seccomp_state_json(record: &Record) -> String {
    serde_json::json!({
        "ociVersion": record.spec.version(),
        "fds": ["seccompFd"],
        "pid": 0,
        "metadata": record.spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()).and_then(|s| s.listener_metadata().clone()).unwrap_or_default(),
        "state": {
            "ociVersion": record.spec.version(),
            "id": record.id,
            "status": "creating",
            "pid": 0,
            "bundle": record.bundle,
        }
    })
    .to_string()
}

struct Spawned {
    pid: Pid,
    pidfd: OwnedFd,
    console: Option<OwnedFd>,
    pipes: Option<ContainerPipes>,
}

/// Undoes a half-done create: kills the process, removes the cgroup and the state directory.
struct CreateGuard {
    dir: Option<PathBuf>,
    cgroup: Option<AnyManager>,
    pidfd: Option<OwnedFd>,
    host_mounts: Option<(PathBuf, usize)>,
}

impl CreateGuard {
    fn disarm(&mut self) {
        self.dir = None;
        self.cgroup = None;
        self.pidfd = None;
        self.host_mounts = None;
    }
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            let _ = nix::sys::wait::waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
        }
        if let Some(cgroup) = self.cgroup.take() {
            let _ = cgroup.kill_all(Signal::SIGKILL);
            let _ = cgroup.delete();
        }
        if let Some((rootfs, base)) = self.host_mounts.take() {
            let _ = crate::rootfs::detach_mounts_above(&rootfs, base);
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The caller's ends of [`Stdio::Piped`].
#[derive(Debug)]
pub struct ContainerPipes {
    /// Write end of the container's stdin.
    pub stdin: Option<File>,
    /// Read end of the container's stdout.
    pub stdout: Option<File>,
    /// Read end of the container's stderr.
    pub stderr: Option<File>,
}

/// One container, as created by [`Runtime::create`] or found by [`Runtime::load`].
#[derive(Debug)]
pub struct Container {
    runtime: Runtime,
    dir: PathBuf,
    record: Record,
    cgroup: AnyManager,
    pidfd: Option<OwnedFd>,
    is_parent: bool,
    console: Option<OwnedFd>,
    pipes: Option<ContainerPipes>,
    exit: Option<ExitStatus>,
}

impl Container {
    /// The container id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The host pid of the container's init process.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.record.pid)
    }

    /// The spec the container was created with.
    pub fn spec(&self) -> &Spec {
        &self.record.spec
    }

    /// The cgroup of the container.
    pub fn cgroup(&self) -> &AnyManager {
        &self.cgroup
    }

    /// The current status.
    pub fn status(&self) -> Status {
        if self.exit.is_some() || self.pidfd.is_none() || !self.record.alive() {
            return Status::Stopped;
        }
        if state::fifo_path(&self.dir).exists() {
            return Status::Created;
        }
        if self.cgroup.is_frozen().unwrap_or(false) {
            return Status::Paused;
        }
        Status::Running
    }

    /// The runc-compatible state.
    pub fn state(&self) -> State {
        let status = self.status();
        State {
            oci_version: self.record.spec.version().clone(),
            id: self.record.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.record.pid
            },
            status,
            bundle: self.record.bundle.clone(),
            rootfs: self.record.rootfs.clone(),
            created: self.record.created.clone(),
            owner: String::new(),
            annotations: self.record.spec.annotations().clone().unwrap_or_default(),
        }
    }

    fn state_json(&self) -> String {
        let state = self.state();
        hooks::state_json(
            &self.record.spec,
            &state.id,
            &state.status.to_string(),
            state.pid,
            &state.bundle,
        )
    }

    fn hooks(&self) -> oci_spec::runtime::Hooks {
        self.record.spec.hooks().clone().unwrap_or_default()
    }

    fn require(&self, op: &'static str, allowed: &[Status]) -> Result<Status> {
        let status = self.status();
        if allowed.contains(&status) {
            Ok(status)
        } else {
            Err(Error::InvalidStatus {
                id: self.record.id.clone(),
                status: status.to_string(),
                op,
            })
        }
    }

    /// The pty master of a container created with [`Stdio::Console`].
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// The caller's ends of a container created with [`Stdio::Piped`].
    pub fn take_stdio(&mut self) -> Option<ContainerPipes> {
        self.pipes.take()
    }

    /// Lets the created process exec the user's program, then runs the poststart hooks.
    pub fn start(&mut self) -> Result<()> {
        self.require("start", &[Status::Created])?;
        let fifo = state::fifo_path(&self.dir);
        let fd = nix::fcntl::open(
            &fifo,
            nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::sys(format!("open {}", fifo.display()), e))?;
        nix::unistd::write(&fd, b"0").map_err(|e| Error::sys("signal start", e))?;
        drop(fd);
        std::fs::remove_file(&fifo).map_err(|e| Error::io("remove", &fifo, e))?;
        let hooks = self.hooks();
        // Poststart failures are logged, and the next hooks still run (runtime-spec).
        if hooks::any(hooks.poststart()) {
            hooks::run_warning(hooks.poststart(), HookStage::Poststart, &self.state_json());
        }
        Ok(())
    }

    /// Waits for the container's init to exit. Only the process that created the container can
    /// learn the exit status; any other gets [`Error::InvalidStatus`] once it has stopped.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let pidfd = self.pidfd.as_ref().ok_or_else(|| Error::InvalidStatus {
            id: self.record.id.clone(),
            status: "stopped".into(),
            op: "wait",
        })?;
        if !self.is_parent {
            wait_readable(pidfd, None);
            return Err(Error::InvalidStatus {
                id: self.record.id.clone(),
                status: "stopped".into(),
                op: "read the exit status of (not its parent)",
            });
        }
        let status = wait_pidfd(pidfd)?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Sends `signal` to the container's init.
    pub fn kill(&self, signal: Signal) -> Result<()> {
        self.require("kill", &[Status::Created, Status::Running, Status::Paused])?;
        let pidfd = self
            .pidfd
            .as_ref()
            .ok_or_else(|| Error::NotFound(self.record.id.clone()))?;
        sys::pidfd_send_signal(pidfd.as_fd(), signal as i32)
            .map_err(|e| Error::sys(format!("kill {}", self.record.id), e))
    }

    /// Sends `signal` to every process of the container (its cgroup).
    pub fn kill_all(&self, signal: Signal) -> Result<()> {
        self.cgroup
            .kill_all(signal)
            .map_err(|source| Error::cgroup(self.record.cgroup.clone(), source))
    }

    /// Graceful stop: SIGTERM, up to `grace` for the init to exit, then SIGKILL to the whole
    /// cgroup (PID 1 has no default handler for SIGTERM).
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if self.status() == Status::Stopped {
            return Ok(());
        }
        if self.status() == Status::Paused {
            self.resume()?;
        }
        let _ = self.kill(Signal::SIGTERM);
        let exited = self
            .pidfd
            .as_ref()
            .is_none_or(|fd| wait_readable(fd, Some(grace)));
        if !exited {
            self.kill_all(Signal::SIGKILL)?;
            if let Some(fd) = &self.pidfd {
                let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                wait_readable(fd, None);
            }
        }
        if self.is_parent && self.exit.is_none() {
            self.wait()?;
        }
        Ok(())
    }

    /// Freezes every process of the container.
    pub fn pause(&self) -> Result<()> {
        self.require("pause", &[Status::Running])?;
        self.cgroup
            .freeze()
            .map_err(|source| Error::cgroup(self.record.cgroup.clone(), source))
    }

    /// Thaws a paused container.
    pub fn resume(&self) -> Result<()> {
        self.require("resume", &[Status::Paused])?;
        self.cgroup
            .thaw()
            .map_err(|source| Error::cgroup(self.record.cgroup.clone(), source))
    }

    /// Host pids of every process in the container.
    pub fn pids(&self) -> Result<Vec<Pid>> {
        self.cgroup
            .pids()
            .map_err(|source| Error::cgroup(self.record.cgroup.clone(), source))
    }

    /// Runs `process` inside the running container (joining all its namespaces and its
    /// cgroup); returns once it is about to exec.
    pub fn exec(&self, process: Process, options: CreateOptions) -> Result<ExecProcess> {
        self.require("exec", &[Status::Running, Status::Created])?;
        let mut spec = self.record.spec.clone();
        let terminal = process.terminal() == Some(true);
        spec.set_process(Some(process));
        let linux = spec.linux().clone().unwrap_or_default();
        let join = linux
            .namespaces()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|ns| {
                (
                    ns.typ(),
                    PathBuf::from(format!(
                        "/proc/{}/ns/{}",
                        self.record.pid,
                        ns_file(ns.typ())
                    )),
                )
            })
            .collect();
        let seccomp = self.runtime.seccomp_program(&spec)?;
        let config = InitConfig {
            id: self.record.id.clone(),
            kind: InitKind::Exec,
            spec,
            rootfs: self.record.rootfs.clone(),
            bundle: self.record.bundle.clone(),
            fifo: None,
            join,
            new_namespaces: 0,
            console: terminal,
            cgroup: self.record.cgroup.clone(),
            cgroup_self_join: self.cgroup.self_join_files().unwrap_or_default(),
            preserve_fds: options.preserve_fds,
            seccomp_state: uses_seccomp_listener(&self.record.spec)
                .then(|| seccomp_state_json(&self.record)),
            seccomp,
        };
        let mut guard = CreateGuard {
            dir: None,
            cgroup: None,
            pidfd: None,
            host_mounts: None,
        };
        let spawned = self.runtime.spawn(
            &self.record.id,
            config,
            options.stdio,
            &self.cgroup,
            None,
            &mut guard,
        )?;
        guard.disarm();
        if let Some(pid_file) = &options.pid_file {
            write_pid_file(pid_file, spawned.pid.as_raw())?;
        }
        let mut console = spawned.console;
        if let Some(socket) = &options.console_socket {
            let master = console
                .take()
                .ok_or_else(|| Error::InvalidSpec("--console-socket needs a terminal".into()))?;
            send_console(socket, &master)?;
        }
        Ok(ExecProcess {
            pid: spawned.pid,
            pidfd: spawned.pidfd,
            console,
            pipes: spawned.pipes,
            exit: None,
        })
    }

    /// Deletes the container: its cgroup and its state. A running or paused container needs
    /// `force` (it is killed first); a created one is killed without it, as runc does.
    pub fn delete(mut self, force: bool) -> Result<()> {
        let status = self.status();
        match status {
            Status::Running | Status::Paused if !force => {
                return Err(Error::InvalidStatus {
                    id: self.record.id.clone(),
                    status: status.to_string(),
                    op: "delete (without force)",
                });
            }
            Status::Stopped => {}
            _ => {
                if status == Status::Paused {
                    let _ = self.cgroup.thaw();
                }
                let _ = self.kill_all(Signal::SIGKILL);
                if let Some(fd) = &self.pidfd {
                    let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                    wait_readable(fd, None);
                }
            }
        }
        if self.is_parent && self.exit.is_none() && self.pidfd.is_some() {
            let _ = self.wait();
        }
        // Stray processes (a container's init exited but its children live on) are killed.
        if !self.pids().unwrap_or_default().is_empty() {
            let _ = self.kill_all(Signal::SIGKILL);
        }
        self.cgroup
            .delete()
            .map_err(|source| Error::cgroup(self.record.cgroup.clone(), source))?;
        if let Some((rootfs, base)) = &self.record.host_mounts {
            crate::rootfs::detach_mounts_above(rootfs, *base).map_err(Error::InvalidSpec)?;
        }
        let hooks = self.hooks();
        let state = hooks::any(hooks.poststop()).then(|| self.state_json());
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io("remove", &self.dir, e))?;
        // Poststop failures are logged, and the next hooks still run (runtime-spec).
        if let Some(state) = state {
            hooks::run_warning(hooks.poststop(), HookStage::Poststop, &state);
        }
        Ok(())
    }
}

/// A process started with [`Container::exec`].
#[derive(Debug)]
pub struct ExecProcess {
    pid: Pid,
    pidfd: OwnedFd,
    console: Option<OwnedFd>,
    pipes: Option<ContainerPipes>,
    exit: Option<ExitStatus>,
}

impl ExecProcess {
    /// Its host pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends it a signal.
    pub fn kill(&self, signal: Signal) -> Result<()> {
        sys::pidfd_send_signal(self.pidfd.as_fd(), signal as i32)
            .map_err(|e| Error::sys("kill exec process", e))
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let status = wait_pidfd(&self.pidfd)?;
        self.exit = Some(status);
        Ok(status)
    }

    /// The pty master when it runs with a terminal.
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// The caller's ends of [`Stdio::Piped`].
    pub fn take_stdio(&mut self) -> Option<ContainerPipes> {
        self.pipes.take()
    }
}

fn ns_file(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Reaps our child through its pidfd (immune to the SIGCHLD races of waitpid(-1)).
fn wait_pidfd(pidfd: &OwnedFd) -> Result<ExitStatus> {
    loop {
        match nix::sys::wait::waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Exited(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(ExitStatus::Signaled(signal)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("waitid", e)),
        }
    }
}

/// Waits until the process behind `pidfd` has exited (or `timeout` passed); true if it exited.
fn wait_readable(pidfd: &OwnedFd, timeout: Option<Duration>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let remaining = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, remaining) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}
