//! A container's lifecycle through its [`Container`] handle: status and state, start, wait
//! (through its pidfd), signals, stop, pause/resume, pids and delete.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_cgroups::CgroupManager;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::hooks::{self, HookStage};
use crate::state::{self, State, Status};
use crate::{Error, Result, sys};

use super::{Container, ContainerPipes};

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
    pub fn cgroup(&self) -> &Arc<dyn CgroupManager> {
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

    pub(super) fn state_json(&self) -> String {
        let state = self.state();
        hooks::state_json(
            &self.record.spec,
            &state.id,
            &state.status.to_string(),
            state.pid,
            &state.bundle,
        )
    }

    pub(super) fn hooks(&self) -> oci_spec::runtime::Hooks {
        self.record.spec.hooks().clone().unwrap_or_default()
    }

    pub(super) fn require(&self, op: &'static str, allowed: &[Status]) -> Result<Status> {
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

    /// The pty master of a container created with [`Stdio::Console`](crate::Stdio::Console).
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// The caller's ends of a container created with [`Stdio::Piped`](crate::Stdio::Piped).
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

/// Reaps our child through its pidfd (immune to the SIGCHLD races of waitpid(-1)).
pub(super) fn wait_pidfd(pidfd: &OwnedFd) -> Result<ExitStatus> {
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
pub(super) fn wait_readable(pidfd: &OwnedFd, timeout: Option<Duration>) -> bool {
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
