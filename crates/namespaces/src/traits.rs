//! The traits an orchestrator programs against: [`ContainerRuntime`] (create, find, list and
//! delete containers by id), [`ContainerHandle`] (one container's lifecycle) and
//! [`ProcessHandle`] (a process started in it with `exec`). [`Runtime`] implements them for
//! real; [`FakeRuntime`](crate::FakeRuntime) implements them in memory for tests.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{Process, Spec};

use crate::{Container, CreateOptions, ExecProcess, ExitStatus, Result, Runtime, State, Status};

/// A container runtime: creates containers and finds them again by id.
pub trait ContainerRuntime: Send + Sync {
    /// One container of this runtime.
    type Container: ContainerHandle;

    /// Creates a container from an OCI bundle (config.json and its rootfs); its process waits
    /// for [`ContainerHandle::start`].
    fn create(&self, id: &str, bundle: &Path, options: CreateOptions) -> Result<Self::Container>;

    /// Creates a container from `spec`; `bundle` anchors relative paths.
    fn create_from_spec(
        &self,
        id: &str,
        bundle: &Path,
        spec: Spec,
        options: CreateOptions,
    ) -> Result<Self::Container>;

    /// Finds the container `id`; [`Error::NotFound`](crate::Error::NotFound) if there is none.
    fn load(&self, id: &str) -> Result<Self::Container>;

    /// The state of every container, sorted by id.
    fn list(&self) -> Result<Vec<State>>;

    /// Deletes the container `id` (see [`ContainerHandle::delete`]).
    fn delete(&self, id: &str, force: bool) -> Result<()> {
        self.load(id)?.delete(force)
    }
}

/// One container's lifecycle, as the OCI runtime-spec defines it.
pub trait ContainerHandle: Send {
    /// A process started with [`exec`](Self::exec).
    type Process: ProcessHandle;

    /// The container id.
    fn id(&self) -> &str;
    /// The host pid of the container's init process.
    fn pid(&self) -> Pid;
    /// The current status.
    fn status(&self) -> Status;
    /// The runc-compatible state.
    fn state(&self) -> State;
    /// The spec the container was created with.
    fn spec(&self) -> Result<Spec>;
    /// The pty master of a container created with [`Stdio::Console`](crate::Stdio::Console)
    /// (once; `None` where the runtime has no terminal).
    fn take_console(&mut self) -> Option<OwnedFd> {
        None
    }
    /// Lets the created process run the user's program.
    fn start(&mut self) -> Result<()>;
    /// Waits for the init process to exit (only the creating handle learns the status).
    fn wait(&mut self) -> Result<ExitStatus>;
    /// Sends `signal` to the init process.
    fn kill(&self, signal: Signal) -> Result<()>;
    /// Sends `signal` to every process of the container.
    fn kill_all(&self, signal: Signal) -> Result<()>;
    /// SIGTERM, up to `grace` to exit, then SIGKILL to every process.
    fn stop(&mut self, grace: Duration) -> Result<()>;
    /// Freezes every process.
    fn pause(&self) -> Result<()>;
    /// Thaws a paused container.
    fn resume(&self) -> Result<()>;
    /// Host pids of every process in the container.
    fn pids(&self) -> Result<Vec<Pid>>;
    /// Runs `process` in the running container.
    fn exec(&self, process: Process, options: CreateOptions) -> Result<Self::Process>;
    /// Deletes the container; a running or paused one needs `force`.
    fn delete(self, force: bool) -> Result<()>
    where
        Self: Sized;
}

/// A process started in a container with [`ContainerHandle::exec`].
pub trait ProcessHandle: Send {
    /// Its host pid.
    fn pid(&self) -> Pid;
    /// Sends it a signal.
    fn kill(&self, signal: Signal) -> Result<()>;
    /// Waits for it to exit.
    fn wait(&mut self) -> Result<ExitStatus>;
    /// The pty master of a process started with [`Stdio::Console`](crate::Stdio::Console)
    /// (once; `None` where the runtime has no terminal).
    fn take_console(&mut self) -> Option<OwnedFd> {
        None
    }
}

impl ContainerRuntime for Runtime {
    type Container = Container;

    fn create(&self, id: &str, bundle: &Path, options: CreateOptions) -> Result<Container> {
        Runtime::create(self, id, bundle, options)
    }

    fn create_from_spec(
        &self,
        id: &str,
        bundle: &Path,
        spec: Spec,
        options: CreateOptions,
    ) -> Result<Container> {
        Runtime::create_from_spec(self, id, bundle, spec, options)
    }

    fn load(&self, id: &str) -> Result<Container> {
        Runtime::load(self, id)
    }

    fn list(&self) -> Result<Vec<State>> {
        Runtime::list(self)
    }
}

impl ContainerHandle for Container {
    type Process = ExecProcess;

    fn id(&self) -> &str {
        Container::id(self)
    }
    fn pid(&self) -> Pid {
        Container::pid(self)
    }
    fn status(&self) -> Status {
        Container::status(self)
    }
    fn state(&self) -> State {
        Container::state(self)
    }
    fn spec(&self) -> Result<Spec> {
        Ok(Container::spec(self).clone())
    }
    fn take_console(&mut self) -> Option<OwnedFd> {
        Container::take_console(self)
    }
    fn start(&mut self) -> Result<()> {
        Container::start(self)
    }
    fn wait(&mut self) -> Result<ExitStatus> {
        Container::wait(self)
    }
    fn kill(&self, signal: Signal) -> Result<()> {
        Container::kill(self, signal)
    }
    fn kill_all(&self, signal: Signal) -> Result<()> {
        Container::kill_all(self, signal)
    }
    fn stop(&mut self, grace: Duration) -> Result<()> {
        Container::stop(self, grace)
    }
    fn pause(&self) -> Result<()> {
        Container::pause(self)
    }
    fn resume(&self) -> Result<()> {
        Container::resume(self)
    }
    fn pids(&self) -> Result<Vec<Pid>> {
        Container::pids(self)
    }
    fn exec(&self, process: Process, options: CreateOptions) -> Result<ExecProcess> {
        Container::exec(self, process, options)
    }
    fn delete(self, force: bool) -> Result<()> {
        Container::delete(self, force)
    }
}

impl ProcessHandle for ExecProcess {
    fn pid(&self) -> Pid {
        ExecProcess::pid(self)
    }
    fn kill(&self, signal: Signal) -> Result<()> {
        ExecProcess::kill(self, signal)
    }
    fn wait(&mut self) -> Result<ExitStatus> {
        ExecProcess::wait(self)
    }
    fn take_console(&mut self) -> Option<OwnedFd> {
        ExecProcess::take_console(self)
    }
}
