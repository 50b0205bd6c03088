//! The runtime side of the lifecycle: [`Runtime`] creates containers from an OCI bundle (or a
//! [`Spec`] and a rootfs) and finds them again by id; [`Container`] starts, waits for, signals,
//! pauses, execs into and deletes one.
//!
//! By concern: `stdio` (where a process's stdio goes, the console socket), `spawn` (the init
//! process and its sync protocol, undoing a half-done create), `validation` (what a spec may
//! ask, the devices every container gets), `handle` (a container's lifecycle) and `exec`
//! (processes started in a running container).

mod exec;
mod handle;
mod spawn;
mod stdio;
mod validation;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_cgroups::{CgroupFactory, CgroupManager, HostCgroups};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::channel::{InitConfig, InitKind};
use crate::hooks::{self, HookStage};
use crate::state::{self, Record, State};
use crate::{Error, Result, sys};

pub use handle::ExitStatus;
pub use stdio::{ContainerPipes, CreateOptions, Stdio};
pub use validation::load_config;

use spawn::{
    config_too_large, encoded_len, seccomp_state_json, uses_seccomp_listener, write_pid_file,
};
use stdio::send_console;
use validation::{container_resources, validate_spec};

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
    cgroups: Arc<dyn CgroupFactory>,
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
            cgroups: Arc::new(HostCgroups::default()),
            cgroup_parent: PathBuf::from("berth"),
            init: InitBinary::CurrentExe,
        }
    }

    /// Uses the host's cgroup hierarchy mounted at `root` (default `/sys/fs/cgroup`).
    pub fn with_cgroup_root(self, root: impl Into<PathBuf>) -> Runtime {
        self.with_cgroups(HostCgroups::new(root))
    }

    /// Gets each container's cgroup manager from `cgroups` (default: [`HostCgroups`] on
    /// `/sys/fs/cgroup`), with the group's path (`linux.cgroupsPath`, else the cgroup parent
    /// joined with the id).
    pub fn with_cgroups(mut self, cgroups: impl CgroupFactory + 'static) -> Runtime {
        self.cgroups = Arc::new(cgroups);
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

        let cgroup = self
            .cgroups
            .manager(cgroup_path)
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
        let spawned = self.spawn(id, config, stdio, cgroup.as_ref(), idmaps, guard)?;
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
        let cgroup = self
            .cgroups
            .manager(&record.cgroup)
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
    cgroup: Option<Arc<dyn CgroupManager>>,
    pidfd: Option<OwnedFd>,
    host_mounts: Option<(PathBuf, usize)>,
}

/// One container, as created by [`Runtime::create`] or found by [`Runtime::load`].
#[derive(Debug)]
pub struct Container {
    runtime: Runtime,
    dir: PathBuf,
    record: Record,
    cgroup: Arc<dyn CgroupManager>,
    pidfd: Option<OwnedFd>,
    is_parent: bool,
    console: Option<OwnedFd>,
    pipes: Option<ContainerPipes>,
    exit: Option<ExitStatus>,
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
