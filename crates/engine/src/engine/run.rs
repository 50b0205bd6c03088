//! Running containers: in the foreground ([`Engine::run`], [`Engine::start`] and the
//! [`Attached`] handle whose owner reaps the process) and detached ([`Engine::run_detached`]
//! starts a monitor process, which calls [`Engine::monitor`] to start, log and reap).

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::Stdio as ProcessStdio;

use berth_api::error_chain;
use berth_namespaces::{ExitStatus, Signal, Stdio};

use super::Engine;
use crate::error::{Error, Result};
use crate::options::RunConfig;
use crate::state::{Container, Status};

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

impl Engine {
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
