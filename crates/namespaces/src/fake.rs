//! [`FakeRuntime`]: an in-memory [`ContainerRuntime`] for tests of code built on this crate (a
//! node agent, an engine). Nothing is forked or mounted: containers are records whose
//! processes "exit" when a test says so ([`FakeRuntime::exit`]) or when they get a signal that
//! ends a program without handlers. Statuses, errors and the order of operations follow the
//! real [`Runtime`](crate::Runtime).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{Process, Spec};

use crate::traits::{ContainerHandle, ContainerRuntime, ProcessHandle};
use crate::{CreateOptions, Error, ExitStatus, Result, State, Status, state};

/// An in-memory container runtime. Clones share the same containers.
#[derive(Debug, Clone, Default)]
pub struct FakeRuntime {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    world: Mutex<World>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct World {
    containers: BTreeMap<String, Entry>,
    /// Exec'd processes by pid: `None` while they run.
    processes: BTreeMap<i32, Option<ExitStatus>>,
    last_pid: i32,
    fail_next_create: Option<String>,
}

#[derive(Debug)]
struct Entry {
    spec: Spec,
    bundle: PathBuf,
    pid: i32,
    status: Status,
    exit: Option<ExitStatus>,
    signals: Vec<Signal>,
    created: String,
    execs: Vec<i32>,
    exec_processes: Vec<Process>,
}

/// Signals that end a program which installed no handler for them.
fn ends_process(signal: Signal) -> bool {
    matches!(
        signal,
        Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT
    )
}

impl FakeRuntime {
    /// An empty fake runtime.
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.shared.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next create fail the way a container whose init fails does ([`Error::Init`]).
    pub fn fail_next_create(&self, message: impl Into<String>) {
        self.world().fail_next_create = Some(message.into());
    }

    /// Makes the running (or created) container `id`'s process exit with `code`.
    pub fn exit(&self, id: &str, code: i32) -> Result<()> {
        let mut world = self.world();
        let entry = world
            .containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        if entry.exit.is_none() {
            entry.exit = Some(ExitStatus::Exited(code));
            entry.status = Status::Stopped;
        }
        drop(world);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Makes the exec'd process `pid` exit with `code`.
    pub fn exit_process(&self, pid: Pid, code: i32) {
        let mut world = self.world();
        if let Some(exit) = world.processes.get_mut(&pid.as_raw())
            && exit.is_none()
        {
            *exit = Some(ExitStatus::Exited(code));
        }
        drop(world);
        self.shared.changed.notify_all();
    }

    /// The signals container `id`'s init process received, in order.
    pub fn signals(&self, id: &str) -> Vec<Signal> {
        self.world()
            .containers
            .get(id)
            .map(|e| e.signals.clone())
            .unwrap_or_default()
    }

    /// The processes exec'd into container `id`, in order.
    pub fn exec_processes(&self, id: &str) -> Vec<Process> {
        self.world()
            .containers
            .get(id)
            .map(|e| e.exec_processes.clone())
            .unwrap_or_default()
    }

    fn handle(&self, id: &str) -> FakeContainer {
        FakeContainer {
            runtime: self.clone(),
            id: id.to_string(),
        }
    }
}

impl ContainerRuntime for FakeRuntime {
    type Container = FakeContainer;

    fn create(&self, id: &str, bundle: &Path, options: CreateOptions) -> Result<FakeContainer> {
        let spec = crate::load_config(bundle)?;
        self.create_from_spec(id, bundle, spec, options)
    }

    fn create_from_spec(
        &self,
        id: &str,
        bundle: &Path,
        spec: Spec,
        _options: CreateOptions,
    ) -> Result<FakeContainer> {
        state::validate_id(id)?;
        if spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .is_none_or(|a| a.is_empty())
        {
            return Err(Error::InvalidSpec("process.args is empty".into()));
        }
        let mut world = self.world();
        if world.containers.contains_key(id) {
            return Err(Error::AlreadyExists(id.to_string()));
        }
        if let Some(message) = world.fail_next_create.take() {
            return Err(Error::Init {
                id: id.to_string(),
                message,
            });
        }
        world.last_pid += 1;
        let pid = 100_000 + world.last_pid;
        world.containers.insert(
            id.to_string(),
            Entry {
                spec,
                bundle: bundle.to_path_buf(),
                pid,
                status: Status::Created,
                exit: None,
                signals: Vec::new(),
                created: state::now_rfc3339(),
                execs: Vec::new(),
                exec_processes: Vec::new(),
            },
        );
        Ok(self.handle(id))
    }

    fn load(&self, id: &str) -> Result<FakeContainer> {
        state::validate_id(id)?;
        if !self.world().containers.contains_key(id) {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(self.handle(id))
    }

    fn list(&self) -> Result<Vec<State>> {
        let ids: Vec<String> = self.world().containers.keys().cloned().collect();
        Ok(ids.iter().map(|id| self.handle(id).state()).collect())
    }
}

/// A container of a [`FakeRuntime`]. Unlike the real one, every handle can read the exit status.
#[derive(Debug)]
pub struct FakeContainer {
    runtime: FakeRuntime,
    id: String,
}

impl FakeContainer {
    /// Runs `f` on this container's record; `NotFound` once it was deleted.
    fn with<T>(&self, f: impl FnOnce(&mut Entry, &mut Vec<i32>) -> Result<T>) -> Result<T> {
        let mut world = self.runtime.world();
        let World {
            containers,
            processes,
            ..
        } = &mut *world;
        let entry = containers
            .get_mut(&self.id)
            .ok_or_else(|| Error::NotFound(self.id.clone()))?;
        let mut running: Vec<i32> = entry
            .execs
            .iter()
            .copied()
            .filter(|p| processes.get(p).is_some_and(|e| e.is_none()))
            .collect();
        let result = f(entry, &mut running);
        drop(world);
        self.runtime.shared.changed.notify_all();
        result
    }

    fn require(&self, entry: &Entry, op: &'static str, allowed: &[Status]) -> Result<()> {
        if allowed.contains(&entry.status) {
            Ok(())
        } else {
            Err(Error::InvalidStatus {
                id: self.id.clone(),
                status: entry.status.to_string(),
                op,
            })
        }
    }
}

impl ContainerHandle for FakeContainer {
    type Process = FakeProcess;

    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.with(|e, _| Ok(e.pid)).unwrap_or(0))
    }

    fn status(&self) -> Status {
        self.with(|e, _| Ok(e.status)).unwrap_or(Status::Stopped)
    }

    fn state(&self) -> State {
        let found = self.with(|e, _| {
            let rootfs = e
                .spec
                .root()
                .as_ref()
                .map(|r| e.bundle.join(r.path()))
                .unwrap_or_default();
            Ok(State {
                oci_version: e.spec.version().clone(),
                id: self.id.clone(),
                pid: if e.status == Status::Stopped {
                    0
                } else {
                    e.pid
                },
                status: e.status,
                bundle: e.bundle.clone(),
                rootfs,
                created: e.created.clone(),
                owner: String::new(),
                annotations: e.spec.annotations().clone().unwrap_or_default(),
            })
        });
        found.unwrap_or_else(|_| State {
            oci_version: String::new(),
            id: self.id.clone(),
            pid: 0,
            status: Status::Stopped,
            bundle: PathBuf::new(),
            rootfs: PathBuf::new(),
            created: String::new(),
            owner: String::new(),
            annotations: Default::default(),
        })
    }

    fn spec(&self) -> Result<Spec> {
        self.with(|e, _| Ok(e.spec.clone()))
    }

    fn start(&mut self) -> Result<()> {
        self.with(|e, _| {
            self.require(e, "start", &[Status::Created])?;
            e.status = Status::Running;
            Ok(())
        })
    }

    fn wait(&mut self) -> Result<ExitStatus> {
        let shared = &self.runtime.shared;
        let mut world = self.runtime.world();
        loop {
            let entry = world
                .containers
                .get(&self.id)
                .ok_or_else(|| Error::NotFound(self.id.clone()))?;
            if let Some(exit) = entry.exit {
                return Ok(exit);
            }
            world = shared
                .changed
                .wait(world)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn kill(&self, signal: Signal) -> Result<()> {
        self.with(|e, _| {
            self.require(
                e,
                "kill",
                &[Status::Created, Status::Running, Status::Paused],
            )?;
            e.signals.push(signal);
            // A frozen process only dies of SIGKILL; the others wait for the thaw.
            let frozen = e.status == Status::Paused && signal != Signal::SIGKILL;
            if ends_process(signal) && !frozen {
                e.exit = Some(ExitStatus::Signaled(signal));
                e.status = Status::Stopped;
            }
            Ok(())
        })
    }

    fn kill_all(&self, signal: Signal) -> Result<()> {
        let pids = self.with(|_, running| Ok(running.clone()))?;
        if self.status() != Status::Stopped {
            self.kill(signal)?;
        }
        if ends_process(signal) {
            let mut world = self.runtime.world();
            for pid in pids {
                world
                    .processes
                    .insert(pid, Some(ExitStatus::Signaled(signal)));
            }
        }
        self.runtime.shared.changed.notify_all();
        Ok(())
    }

    fn stop(&mut self, _grace: Duration) -> Result<()> {
        match self.status() {
            Status::Stopped => return Ok(()),
            Status::Paused => self.resume()?,
            _ => {}
        }
        self.kill(Signal::SIGTERM)?;
        self.wait().map(|_| ())
    }

    fn pause(&self) -> Result<()> {
        self.with(|e, _| {
            self.require(e, "pause", &[Status::Running])?;
            e.status = Status::Paused;
            Ok(())
        })
    }

    fn resume(&self) -> Result<()> {
        self.with(|e, _| {
            self.require(e, "resume", &[Status::Paused])?;
            e.status = Status::Running;
            Ok(())
        })
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        self.with(|e, running| {
            let mut pids = Vec::new();
            if e.status != Status::Stopped {
                pids.push(e.pid);
                pids.append(running);
            }
            pids.sort_unstable();
            Ok(pids.into_iter().map(Pid::from_raw).collect())
        })
    }

    fn exec(&self, process: Process, _options: CreateOptions) -> Result<FakeProcess> {
        let mut world = self.runtime.world();
        let status = world
            .containers
            .get(&self.id)
            .map(|e| e.status)
            .ok_or_else(|| Error::NotFound(self.id.clone()))?;
        if !matches!(status, Status::Running | Status::Created) {
            return Err(Error::InvalidStatus {
                id: self.id.clone(),
                status: status.to_string(),
                op: "exec",
            });
        }
        world.last_pid += 1;
        let pid = 100_000 + world.last_pid;
        world.processes.insert(pid, None);
        if let Some(entry) = world.containers.get_mut(&self.id) {
            entry.execs.push(pid);
            entry.exec_processes.push(process);
        }
        Ok(FakeProcess {
            runtime: self.runtime.clone(),
            pid,
        })
    }

    fn delete(self, force: bool) -> Result<()> {
        let status = self.status();
        if matches!(status, Status::Running | Status::Paused) && !force {
            return Err(Error::InvalidStatus {
                id: self.id.clone(),
                status: status.to_string(),
                op: "delete (without force)",
            });
        }
        let mut world = self.runtime.world();
        let entry = world
            .containers
            .remove(&self.id)
            .ok_or_else(|| Error::NotFound(self.id.clone()))?;
        for pid in entry.execs {
            world.processes.remove(&pid);
        }
        drop(world);
        self.runtime.shared.changed.notify_all();
        Ok(())
    }
}

/// A process exec'd into a [`FakeContainer`]; it runs until [`FakeRuntime::exit_process`] or a
/// signal that ends it.
#[derive(Debug)]
pub struct FakeProcess {
    runtime: FakeRuntime,
    pid: i32,
}

impl ProcessHandle for FakeProcess {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.pid)
    }

    fn kill(&self, signal: Signal) -> Result<()> {
        let mut world = self.runtime.world();
        match world.processes.get_mut(&self.pid) {
            Some(exit @ None) if ends_process(signal) => *exit = Some(ExitStatus::Signaled(signal)),
            Some(_) => {}
            None => return Err(Error::NotFound(format!("process {}", self.pid))),
        }
        drop(world);
        self.runtime.shared.changed.notify_all();
        Ok(())
    }

    fn wait(&mut self) -> Result<ExitStatus> {
        let shared = &self.runtime.shared;
        let mut world = self.runtime.world();
        loop {
            match world.processes.get(&self.pid) {
                Some(Some(exit)) => return Ok(*exit),
                Some(None) => {}
                None => return Err(Error::NotFound(format!("process {}", self.pid))),
            }
            world = shared
                .changed
                .wait(world)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        let mut spec = Spec::default();
        if let Some(p) = spec.process_mut().as_mut() {
            p.set_args(Some(vec!["sleep".into(), "60".into()]));
        }
        spec
    }

    fn create(rt: &FakeRuntime, id: &str) -> FakeContainer {
        rt.create_from_spec(id, Path::new("/bundle"), spec(), CreateOptions::default())
            .unwrap()
    }

    #[test]
    fn lifecycle_follows_the_runtime_spec() {
        let rt = FakeRuntime::new();
        let mut c = create(&rt, "web");
        assert_eq!(c.status(), Status::Created);
        assert!(matches!(
            rt.create_from_spec("web", Path::new("/b"), spec(), CreateOptions::default()),
            Err(Error::AlreadyExists(_))
        ));
        assert!(c.pause().is_err(), "a created container cannot be paused");
        c.start().unwrap();
        assert_eq!(rt.load("web").unwrap().status(), Status::Running);
        c.pause().unwrap();
        assert_eq!(c.state().status, Status::Paused);
        c.resume().unwrap();
        assert!(matches!(
            rt.load("web").unwrap().delete(false),
            Err(Error::InvalidStatus { .. })
        ));
        let waiter = {
            let rt = rt.clone();
            std::thread::spawn(move || rt.load("web").unwrap().wait().unwrap())
        };
        rt.exit("web", 3).unwrap();
        assert_eq!(waiter.join().unwrap(), ExitStatus::Exited(3));
        assert_eq!(c.state().pid, 0);
        assert_eq!(rt.list().unwrap().len(), 1);
        rt.delete("web", false).unwrap();
        assert!(matches!(rt.load("web"), Err(Error::NotFound(_))));
        assert!(rt.list().unwrap().is_empty());
    }

    #[test]
    fn signals_stop_exec_and_injected_failures() {
        let rt = FakeRuntime::new();
        let mut c = create(&rt, "a");
        c.start().unwrap();
        c.kill(Signal::SIGUSR1).unwrap();
        assert_eq!(c.status(), Status::Running, "SIGUSR1 is only recorded");
        let mut p = c
            .exec(Process::default(), CreateOptions::default())
            .unwrap();
        assert_eq!(c.pids().unwrap().len(), 2);
        rt.exit_process(p.pid(), 5);
        assert_eq!(p.wait().unwrap(), ExitStatus::Exited(5));
        c.stop(Duration::from_secs(1)).unwrap();
        assert_eq!(c.wait().unwrap(), ExitStatus::Signaled(Signal::SIGTERM));
        assert_eq!(rt.signals("a"), [Signal::SIGUSR1, Signal::SIGTERM]);
        assert!(
            c.exec(Process::default(), CreateOptions::default())
                .is_err()
        );

        rt.fail_next_create("no such file");
        assert!(matches!(
            rt.create_from_spec("b", Path::new("/b"), spec(), CreateOptions::default()),
            Err(Error::Init { .. })
        ));
        assert!(matches!(rt.load("b"), Err(Error::NotFound(_))));
        assert!(
            rt.create_from_spec("../x", Path::new("/b"), spec(), CreateOptions::default())
                .is_err()
        );
    }
}
