//! Acting on an existing container: `exec` into it, `stop` it (stop signal, grace period,
//! SIGKILL of its cgroup) and `remove` it (also one whose record can't be read).

use std::time::{Duration, Instant};

use berth_namespaces::{CreateOptions, Signal, Stdio};

use super::{Engine, SNAPSHOT_PREFIX};
use crate::error::{Error, Result};
use crate::state::{self, Container, Status};

impl Engine {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGINT"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("nope"), None);
    }
}
