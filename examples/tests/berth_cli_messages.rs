//! `berth`'s messages and exits as a user meets them: limits refused with Docker's words and
//! only suggestions the CLI accepts, a bind over the container's root refused, listing
//! commands that end quietly when their reader goes away (`berth image ls | head -1`), and
//! `berth ps` reporting a container whose record is unreadable.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

fn berth(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run berth")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn limit_messages_suggest_only_accepted_values() {
    let root = tempfile::tempdir().unwrap();
    let refused = |args: &[&str], wanted: &str| {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["nosuchimage", "true"]);
        let out = berth(root.path(), &all);
        assert!(!out.status.success(), "{args:?} must fail");
        let text = stderr(&out);
        assert!(text.contains(wanted), "{args:?}: {text}");
    };
    refused(&["-m", "1"], "Minimum memory limit allowed is 6MB");
    refused(&["--memory", "5m"], "Minimum memory limit allowed is 6MB");
    refused(&["-m", "-1"], "0 means no limit");
    refused(&["--cpus", "-1"], "Range of CPUs is from 0.01 to");
    refused(&["--cpus", "100000"], "0 means no limit");
    refused(&["--pids-limit", "-5"], "-1 for no limit");
    refused(&["-v", "/etc:/"], "destination can't be '/'");
    // What the messages suggest gets past the option checks (to the missing image).
    for ok in [
        &["-m", "0"][..],
        &["-m", "6m"],
        &["--cpus", "0"],
        &["--cpus", "0.01"],
        &["--pids-limit", "-1"],
        &["--pids-limit", "0"],
    ] {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(ok);
        all.extend_from_slice(&["nosuchimage", "true"]);
        let out = berth(root.path(), &all);
        let text = stderr(&out);
        assert!(
            !out.status.success() && text.contains("nosuchimage") && !text.contains("invalid"),
            "{ok:?} is accepted: {text}"
        );
    }
}

/// Runs `berth args` with stdout a pipe whose reader is already gone.
fn into_closed_pipe(root: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run berth");
    child.wait_with_output().unwrap()
}

#[test]
fn listing_commands_end_quietly_when_the_reader_goes_away() {
    if !berth_testutil::require_root("listing_commands_end_quietly_when_the_reader_goes_away") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    for args in [
        &["image", "ls"][..],
        &["image", "ls", "--digests"],
        &["ps"],
        &["ps", "-a"],
    ] {
        let out = into_closed_pipe(root.path(), args);
        let quiet = out.status.success() || out.status.signal() == Some(libc::SIGPIPE);
        assert!(
            quiet && out.stderr.is_empty(),
            "{args:?}: {:?} {:?}",
            out.status,
            stderr(&out)
        );
    }
}
