//! The processes that outlive the agent: a **shim** per container and a **pause** process per
//! pod. Both are this executable started again by the agent (like containerd's shims), so a
//! container keeps running, and its exit is still recorded, while the agent restarts.
//!
//! - The shim (`BERTH_NODE_SHIM=<container dir>`) creates the container from the
//!   `config.json` the agent wrote, copies its stdout/stderr into the CRI log, is its parent
//!   (so it alone learns the exit status), and records `state.json`: running with the pid, then
//!   exited with the code, the signal and whether the OOM killer struck. It then deletes the
//!   runtime state and cgroup. It reports `started` (or the error) on stdout once.
//! - The pause process (`BERTH_NODE_PAUSE=<hostname>`) makes the pod's network, IPC and UTS
//!   namespaces, brings `lo` up, reports `ready`, and sleeps until it is signalled. The pod's
//!   containers join its namespaces.
//!
//! Any binary that runs the node agent calls [`main_if_shim`] first thing in `main`, right
//! after `berth_namespaces::init::main_if_init`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_namespaces::{CreateOptions, ExitStatus, Runtime, Stdio};
use serde::{Deserialize, Serialize};

use crate::logs::{Rotation, Writer};

/// The variable that makes this executable a container shim.
pub const SHIM_ENV: &str = "BERTH_NODE_SHIM";
/// The variable that makes this executable a pod's pause process.
pub const PAUSE_ENV: &str = "BERTH_NODE_PAUSE";

/// What the agent tells a shim (`shim.json` in the container directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    /// The runtime container id.
    pub id: String,
    /// The runtime's state root.
    pub runtime_root: PathBuf,
    /// The cgroupfs mount point.
    pub cgroup_root: PathBuf,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// How the log rotates.
    pub rotation: Rotation,
}

/// Where a container stands, as its shim records it (`state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimState {
    /// True once it exited (or failed to start).
    pub exited: bool,
    /// The shim's pid.
    pub shim_pid: i32,
    /// The container's init pid (host).
    pub pid: i32,
    /// When it started (RFC 3339).
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Its exit code (128 + n for signal n).
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// Whether the OOM killer killed a process of its cgroup.
    pub oom_killed: bool,
    /// Why it could not start.
    pub error: Option<String>,
}

impl ShimState {
    /// Reads `state.json` in `dir` (`None` when it does not exist yet).
    pub fn load(dir: &Path) -> Option<ShimState> {
        let bytes = std::fs::read(dir.join("state.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes `state.json` in `dir` atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(".state.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, dir.join("state.json"))
    }
}

/// Runs the shim or pause process when this process was started as one (never returns then);
/// returns at once otherwise.
pub fn main_if_shim() {
    if let Some(dir) = std::env::var_os(SHIM_ENV) {
        let code = shim(Path::new(&dir));
        std::process::exit(code);
    }
    if let Some(hostname) = std::env::var_os(PAUSE_ENV) {
        pause(&hostname.to_string_lossy());
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn report(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn shim(dir: &Path) -> i32 {
    // Its own session: the agent's terminal or process group going away doesn't touch it.
    let _ = nix::unistd::setsid();
    let mut state = ShimState {
        shim_pid: std::process::id() as i32,
        ..Default::default()
    };
    let fail = |state: &mut ShimState, message: String| {
        state.exited = true;
        state.exit_code = Some(128);
        state.finished_at = Some(now());
        state.error = Some(message.clone());
        let _ = state.save(dir);
        report(&format!("error: {message}"));
        1
    };
    let config: ShimConfig = match std::fs::read(dir.join("shim.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return fail(&mut state, format!("shim.json: {e}")),
    };
    let spec = match berth_namespaces::oci_spec::runtime::Spec::load(dir.join("config.json")) {
        Ok(s) => s,
        Err(e) => return fail(&mut state, format!("config.json: {e}")),
    };
    let log = match Writer::open(&config.log_path, config.rotation) {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            return fail(
                &mut state,
                format!("open log {}: {e}", config.log_path.display()),
            );
        }
    };
    let runtime = Runtime::new(&config.runtime_root).with_cgroup_root(&config.cgroup_root);
    let options = CreateOptions {
        stdio: Stdio::Piped,
        ..Default::default()
    };
    let mut container = match runtime.create_from_spec(&config.id, dir, spec, options) {
        Ok(c) => c,
        Err(e) => return fail(&mut state, error_chain(&e)),
    };
    let mut copiers = Vec::new();
    if let Some(pipes) = container.take_stdio() {
        drop(pipes.stdin);
        for (name, pipe) in [("stdout", pipes.stdout), ("stderr", pipes.stderr)] {
            if let Some(pipe) = pipe {
                let log = log.clone();
                copiers.push(std::thread::spawn(move || {
                    Writer::copy_from(&log, name, pipe)
                }));
            }
        }
    }
    let oom_before = container.cgroup().oom_kills().unwrap_or(0);
    if let Err(e) = container.start() {
        let message = error_chain(&e);
        let _ = container.delete(true);
        return fail(&mut state, message);
    }
    state.pid = container.pid().as_raw();
    state.started_at = Some(now());
    if let Err(e) = state.save(dir) {
        let _ = container.delete(true);
        return fail(&mut state, format!("write state: {e}"));
    }
    report("started");
    let status = container.wait();
    let oom_after = container.cgroup().oom_kills().unwrap_or(0);
    state.oom_killed = oom_after > oom_before;
    match status {
        Ok(ExitStatus::Exited(code)) => state.exit_code = Some(code),
        Ok(ExitStatus::Signaled(sig)) => {
            state.exit_code = Some(128 + sig as i32);
            state.signal = Some(sig as i32);
        }
        Err(e) => {
            state.exit_code = Some(255);
            state.error = Some(error_chain(&e));
        }
    }
    state.finished_at = Some(now());
    // Stray processes are killed and the cgroup removed; the pipes then close.
    let deleted = container.delete(true);
    for c in copiers {
        let _ = c.join();
    }
    if let Err(e) = deleted {
        state.error.get_or_insert(error_chain(&e));
    }
    state.exited = true;
    let _ = state.save(dir);
    0
}

fn pause(hostname: &str) -> ! {
    use nix::sched::CloneFlags;
    let _ = nix::unistd::setsid();
    let made = nix::sched::unshare(
        CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(|e| format!("unshare: {e}"))
    .and_then(|()| nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname: {e}")))
    .and_then(|()| crate::sys::loopback_up().map_err(|e| format!("bring lo up: {e}")));
    match made {
        Ok(()) => report("ready"),
        Err(e) => {
            report(&format!("error: {e}"));
            std::process::exit(1);
        }
    }
    // SIGTERM and SIGKILL end it (it is not a PID 1, so the default action applies).
    loop {
        nix::unistd::pause();
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
