//! Processes started in a running container ([`Container::exec`](crate::Container::exec)): they join its namespaces
//! and cgroup, and get the container's spec with another `process`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::Process;

use crate::channel::{InitConfig, InitKind};
use crate::state::Status;
use crate::{Error, Result, sys};

use super::handle::wait_pidfd;
use super::spawn::{ns_file, seccomp_state_json, uses_seccomp_listener, write_pid_file};
use super::stdio::send_console;
use super::{Container, ContainerPipes, CreateGuard, CreateOptions, ExecProcess, ExitStatus};

impl Container {
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
            self.cgroup.as_ref(),
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

    /// The caller's ends of [`Stdio::Piped`](crate::Stdio::Piped).
    pub fn take_stdio(&mut self) -> Option<ContainerPipes> {
        self.pipes.take()
    }
}
