//! [`FakeManager`]: an in-memory [`CgroupManager`] for downstream tests. It records every call,
//! validates resources exactly like the real managers, and mimics the rules callers must follow
//! (a group must exist before a process joins it; a group with processes cannot be deleted;
//! SIGKILL through `kill_all` empties it).

use std::sync::{Mutex, MutexGuard};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::{CgroupManager, Error, Resources, Result, Stats};

/// One call made to a [`FakeManager`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FakeCall {
    /// `create`.
    Create,
    /// `add_process(pid)`.
    AddProcess(Pid),
    /// `apply`/`apply_resources`, with the validated resources.
    Apply(Box<Resources>),
    /// `freeze`.
    Freeze,
    /// `thaw`.
    Thaw,
    /// `kill_all(signal)`.
    KillAll(Signal),
    /// `delete`.
    Delete,
}

#[derive(Debug, Default)]
struct FakeState {
    calls: Vec<FakeCall>,
    created: bool,
    frozen: bool,
    pids: Vec<Pid>,
    stats: Stats,
}

/// An in-memory cgroup for tests of code that drives a [`CgroupManager`].
#[derive(Debug, Default)]
pub struct FakeManager {
    state: Mutex<FakeState>,
}

impl FakeManager {
    /// A fake group that does not exist yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The resources of the last successful `apply`, if any.
    pub fn applied(&self) -> Option<Resources> {
        self.lock().calls.iter().rev().find_map(|c| match c {
            FakeCall::Apply(r) => Some(Resources::clone(r)),
            _ => None,
        })
    }

    /// Sets what `stats` (and `oom_kills`, from `stats.memory.oom_kills`) will report.
    pub fn set_stats(&self, stats: Stats) {
        self.lock().stats = stats;
    }

    /// Simulates a process leaving the group on its own (it exited).
    pub fn remove_process(&self, pid: Pid) {
        self.lock().pids.retain(|p| *p != pid);
    }

    fn not_created(op: &'static str) -> Error {
        Error::io(op, "fake cgroup", std::io::ErrorKind::NotFound.into())
    }
}

impl CgroupManager for FakeManager {
    fn create(&self) -> Result<()> {
        let mut state = self.lock();
        state.created = true;
        state.calls.push(FakeCall::Create);
        Ok(())
    }

    fn add_process(&self, pid: Pid) -> Result<()> {
        let mut state = self.lock();
        if !state.created {
            return Err(Self::not_created("write cgroup.procs of"));
        }
        if !state.pids.contains(&pid) {
            state.pids.push(pid);
            state.pids.sort_unstable();
        }
        state.calls.push(FakeCall::AddProcess(pid));
        Ok(())
    }

    fn apply_resources(&self, resources: &Resources) -> Result<()> {
        let mut state = self.lock();
        state.created = true;
        state
            .calls
            .push(FakeCall::Apply(Box::new(resources.clone())));
        Ok(())
    }

    fn freeze(&self) -> Result<()> {
        let mut state = self.lock();
        if !state.created {
            return Err(Self::not_created("freeze"));
        }
        state.frozen = true;
        state.calls.push(FakeCall::Freeze);
        Ok(())
    }

    fn thaw(&self) -> Result<()> {
        let mut state = self.lock();
        if !state.created {
            return Err(Self::not_created("thaw"));
        }
        state.frozen = false;
        state.calls.push(FakeCall::Thaw);
        Ok(())
    }

    fn is_frozen(&self) -> Result<bool> {
        Ok(self.lock().frozen)
    }

    fn kill_all(&self, signal: Signal) -> Result<()> {
        let mut state = self.lock();
        if signal == Signal::SIGKILL {
            state.pids.clear();
        }
        state.calls.push(FakeCall::KillAll(signal));
        Ok(())
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        Ok(self.lock().pids.clone())
    }

    fn stats(&self) -> Result<Stats> {
        let state = self.lock();
        if !state.created {
            return Err(Self::not_created("read stats of"));
        }
        let mut stats = state.stats.clone();
        stats.pids.current = state.pids.len() as u64;
        Ok(stats)
    }

    fn oom_kills(&self) -> Result<u64> {
        Ok(self.lock().stats.memory.oom_kills)
    }

    fn exists(&self) -> bool {
        self.lock().created
    }

    fn delete(&self) -> Result<()> {
        let mut state = self.lock();
        if !state.pids.is_empty() {
            return Err(Error::Timeout {
                path: "fake cgroup".into(),
                what: "still has processes",
                waited_ms: 0,
            });
        }
        state.created = false;
        state.frozen = false;
        state.calls.push(FakeCall::Delete);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder};

    #[test]
    fn records_the_lifecycle() {
        let fake = FakeManager::new();
        assert!(fake.add_process(Pid::from_raw(10)).is_err());
        let oci = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(1 << 20)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        fake.apply(&oci).unwrap();
        fake.add_process(Pid::from_raw(10)).unwrap();
        assert!(matches!(fake.delete(), Err(Error::Timeout { .. })));
        fake.kill_all(Signal::SIGKILL).unwrap();
        fake.delete().unwrap();
        assert_eq!(fake.applied().unwrap().memory.limit, Some(Some(1 << 20)));
        assert_eq!(fake.calls().len(), 4);
        assert!(!fake.exists());
    }

    #[test]
    fn refuses_invalid_resources_like_the_real_ones() {
        let fake = FakeManager::new();
        let oci = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(0).build().unwrap())
            .build()
            .unwrap();
        assert!(fake.apply(&oci).is_err());
        assert!(fake.calls().is_empty());
        assert!(!fake.exists());
    }
}
