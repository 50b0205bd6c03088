//! OCI lifecycle hooks: each hook runs with its own args and env, receives the container state
//! as JSON on stdin, and is killed when it outlives its `timeout`. The runtime runs
//! `prestart`, `createRuntime`, `poststart` and `poststop`; the container process itself runs
//! `createContainer` (in the container's namespaces, after the mounts, before `pivot_root`) and
//! `startContainer` (after `start`, just before it execs the user's program).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Spec};

use crate::{Error, Result};

/// The lifecycle stage a hook belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookStage {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookStage {
    fn name(self) -> &'static str {
        match self {
            HookStage::Prestart => "prestart",
            HookStage::CreateRuntime => "createRuntime",
            HookStage::CreateContainer => "createContainer",
            HookStage::StartContainer => "startContainer",
            HookStage::Poststart => "poststart",
            HookStage::Poststop => "poststop",
        }
    }
}

/// The runtime-spec state hooks receive on stdin.
pub(crate) fn state_json(spec: &Spec, id: &str, status: &str, pid: i32, bundle: &Path) -> String {
    serde_json::json!({
        "ociVersion": spec.version(),
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": spec.annotations().clone().unwrap_or_default(),
    })
    .to_string()
}

/// Whether there is any hook in `hooks` (the state JSON is only built when there is).
pub(crate) fn any(hooks: &Option<Vec<Hook>>) -> bool {
    hooks.as_ref().is_some_and(|h| !h.is_empty())
}

/// Runs `hooks` in order; the first failure stops the sequence.
pub(crate) fn run(hooks: &Option<Vec<Hook>>, stage: HookStage, state: &str) -> Result<()> {
    for hook in hooks.as_deref().unwrap_or_default() {
        run_one(hook, stage, state)?;
    }
    Ok(())
}

/// Runs every hook of `hooks` in order; a failure is reported on stderr and the next hook
/// still runs (the runtime-spec's rule for poststart and poststop).
pub(crate) fn run_warning(hooks: &Option<Vec<Hook>>, stage: HookStage, state: &str) {
    for hook in hooks.as_deref().unwrap_or_default() {
        if let Err(e) = run_one(hook, stage, state) {
            eprintln!("berth: warning: {e}");
        }
    }
}

fn run_one(hook: &Hook, stage: HookStage, state: &str) -> Result<()> {
    let fail = |reason: String| Error::Hook {
        stage: stage.name(),
        path: hook.path().clone(),
        reason,
    };
    let mut command = Command::new(hook.path());
    if let Some(args) = hook.args()
        && let Some((first, rest)) = args.split_first()
    {
        command.arg0(first).args(rest);
    }
    command.env_clear();
    for pair in hook.env().as_deref().unwrap_or_default() {
        if let Some((k, v)) = pair.split_once('=') {
            command.env(k, v);
        }
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = command.spawn().map_err(|e| fail(format!("spawn: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state.as_bytes());
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait().map_err(|e| fail(format!("wait: {e}")))? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(fail(format!("exited with {status}"))),
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "timed out after {}s",
                hook.timeout().unwrap_or(0)
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
