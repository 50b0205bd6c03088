//! OCI lifecycle hooks: each hook runs with its own args and env, receives the container state
//! as JSON on stdin, and is killed when it outlives its `timeout`.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::{Error, Result};

/// The lifecycle stage a hook belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookStage {
    Prestart,
    CreateRuntime,
    Poststart,
    Poststop,
}

impl HookStage {
    fn name(self) -> &'static str {
        match self {
            HookStage::Prestart => "prestart",
            HookStage::CreateRuntime => "createRuntime",
            HookStage::Poststart => "poststart",
            HookStage::Poststop => "poststop",
        }
    }
}

/// Runs `hooks` in order; the first failure stops the sequence.
pub(crate) fn run(hooks: &Option<Vec<Hook>>, stage: HookStage, state: &str) -> Result<()> {
    for hook in hooks.as_deref().unwrap_or_default() {
        run_one(hook, stage, state)?;
    }
    Ok(())
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
