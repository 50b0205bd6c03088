//! Spawning a container's init: the init binary (opened once, read-only), the clone from a
//! fresh single-threaded process, the sync protocol over the init channel (id maps, pid file,
//! console, hooks), and [`CreateGuard`](super::CreateGuard), which undoes a half-done create.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use berth_cgroups::CgroupManager;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

use crate::channel::{Channel, InitConfig, Message};
use crate::init::INIT_ENV;
use crate::state::Record;
use crate::{Error, Result, sys};

use super::{ContainerPipes, CreateGuard, InitBinary, Runtime, Spawned, Stdio};

impl Runtime {
    pub(super) fn init_fd(&self) -> Result<OwnedFd> {
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
    pub(super) fn spawn(
        &self,
        id: &str,
        config: InitConfig,
        stdio: Stdio,
        cgroup: &dyn CgroupManager,
        idmaps: Option<(Vec<LinuxIdMapping>, Vec<LinuxIdMapping>)>,
        guard: &mut CreateGuard,
    ) -> Result<Spawned> {
        // Encoded before the init exists: a config the channel cannot carry fails here.
        let preserve_fds = config.preserve_fds;
        let self_join = !config.cgroup_self_join.is_empty();
        let cgroup_path = config.cgroup.clone();
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
                            .map_err(|source| Error::cgroup(cgroup_path.clone(), source))
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
pub(super) fn config_too_large(spec: &Spec) -> Error {
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
pub(super) fn encoded_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

pub(super) fn write_id_map(pid: Pid, file: &str, map: &[LinuxIdMapping]) -> Result<()> {
    let path = format!("/proc/{pid}/{file}");
    let text: String = map
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect();
    std::fs::write(&path, text).map_err(|e| Error::io("write", path, e))
}

pub(super) fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("berth-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

/// Whether the spec hands a seccomp notify fd to a listener (which gets the state JSON).
pub(super) fn uses_seccomp_listener(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .is_some_and(|s| s.listener_path().is_some())
}

pub(super) fn seccomp_state_json(record: &Record) -> String {
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

impl CreateGuard {
    pub(super) fn disarm(&mut self) {
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

pub(super) fn ns_file(typ: LinuxNamespaceType) -> &'static str {
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
