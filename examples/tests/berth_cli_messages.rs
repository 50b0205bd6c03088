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

/// A state root with the busybox image; every container is force-removed on drop.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::Builder::new()
            .prefix("berth-cli-test")
            .tempdir()
            .unwrap();
        let root = Root { dir };
        let out = root.berth(&["image", "import", "--busybox", "/bin/busybox", "busybox"]);
        assert!(out.status.success(), "{}", stderr(&out));
        root
    }

    fn berth(&self, args: &[&str]) -> Output {
        berth(self.dir.path(), args)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let ids = self.berth(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            let _ = self.berth(&["rm", "-f", id]);
        }
        let root = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut below: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        below.reverse();
        for m in below {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn ps_reports_an_unreadable_record_and_rm_f_removes_it() {
    if !berth_testutil::require_root("ps_reports_an_unreadable_record_and_rm_f_removes_it") {
        return;
    }
    let root = Root::new();
    let name = berth_testutil::unique_name("run1").replace('_', "-");
    let out = root.berth(&["run", "-d", "--name", &name, "busybox", "sleep", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let state = root
        .dir
        .path()
        .join("containers")
        .join(&id)
        .join("state.json");
    std::fs::write(&state, "{\"id\": \"tru").unwrap();

    let ps = root.berth(&["ps"]);
    let (text, warning) = (String::from_utf8_lossy(&ps.stdout), stderr(&ps));
    assert!(
        ps.status.success() && text.contains(&id[..12]) && text.contains("Unknown"),
        "{text}"
    );
    assert!(
        warning.contains("unreadable record") && warning.contains(&id[..12]),
        "{warning}"
    );
    let again = root.berth(&["run", "-d", "--name", &name, "busybox", "true"]);
    assert!(
        !again.status.success() && stderr(&again).contains("already in use"),
        "{}",
        stderr(&again)
    );
    let rm = root.berth(&["rm", "-f", &name]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    let ps = root.berth(&["ps", "-a"]);
    assert!(
        ps.stderr.is_empty() && String::from_utf8_lossy(&ps.stdout).lines().count() == 1,
        "{:?}",
        ps
    );
}

#[test]
fn run_rm_that_fails_to_start_leaves_nothing() {
    if !berth_testutil::require_root("run_rm_that_fails_to_start_leaves_nothing") {
        return;
    }
    let root = Root::new();
    let missing = format!("/{}:/x", berth_testutil::unique_name("berth-missing"));
    for args in [
        &["run", "--rm", "-v", missing.as_str(), "busybox", "true"][..],
        &["run", "--rm", "busybox", "/no/such/command"],
        &["run", "--rm", "-m", "1", "busybox", "true"],
    ] {
        let out = root.berth(args);
        assert!(!out.status.success(), "{args:?} must fail");
    }
    let ps = root.berth(&["ps", "-aq"]);
    assert!(
        ps.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&ps.stdout)
    );
    let rm = root.berth(&["image", "rm", "busybox"]);
    assert!(rm.status.success(), "{}", stderr(&rm));
}
