//! Test helpers shared by Berth's crates.
//!
//! Tests that need root, a kernel feature or a peer binary (runc, skopeo, …) call one of the
//! `require_*` functions first. Outside CI a missing precondition prints why the test skips and
//! returns `false`; when [`REQUIRE_ENV`] is set (as `.ci/run` does, running as root with every peer
//! installed) a missing precondition panics instead, so a privileged test never passes in CI
//! without having run.
//!
//! Because cargo counts a test that returned early as passed, every skip is also appended to the
//! file named by [`SKIP_LOG_ENV`] when it is set; `scripts/test.sh` (the README's test command)
//! sets it and reports those tests as skipped, not passed, in its closing summary.
//!
//! ```
//! fn mounts_overlay() {
//!     if !berth_testutil::require_root("mounts an overlay") {
//!         return;
//!     }
//!     // ... the real test ...
//! }
//! # mounts_overlay();
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that turns every skip into a failure (set by `.ci/run`).
pub const REQUIRE_ENV: &str = "BERTH_REQUIRE_PRIVILEGED";

/// The environment variable naming a file to which every skip appends one line,
/// `<test name>\t<what>: <why>` (set by `scripts/test.sh`).
pub const SKIP_LOG_ENV: &str = "BERTH_SKIP_LOG";

/// Reports a missing precondition: a printed skip (also appended to the file named by
/// [`SKIP_LOG_ENV`]) locally, a panic when [`REQUIRE_ENV`] is set.
///
/// Returns `false` so callers can write `if !require(..) { return; }`.
pub fn skip(what: &str, why: &str) -> bool {
    if std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{what}: {why}, but {REQUIRE_ENV} is set, so this test must run");
    }
    eprintln!("skipped: {what}: {why}");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV).filter(|v| !v.is_empty()) {
        record_skip(Path::new(&log), what, why);
    }
    false
}

/// Appends one skip line to `log`. libtest names each test's thread after the test; the binary
/// name tells doctests and custom harnesses apart. One `write` of a short line with `O_APPEND` is
/// atomic, so test binaries running at the same time don't interleave their lines.
fn record_skip(log: &Path, what: &str, why: &str) {
    use std::io::Write;
    let binary = std::env::args()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let test = match std::thread::current().name() {
        Some(name) if name != "main" => format!("{binary}::{name}"),
        _ => binary,
    };
    let mut line = format!("{test}\t{what}: {why}").replace(['\r', '\n'], " ");
    line.push('\n');
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("could not record the skip in {}: {e}", log.display());
    }
}

/// True when running as root (effective uid 0); otherwise skips (see [`skip`]).
pub fn require_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        skip(what, "needs root")
    }
}

/// True when `program` is found on `PATH`; otherwise skips (see [`skip`]).
pub fn require_command(what: &str, program: &str) -> bool {
    if find_command(program).is_some() {
        true
    } else {
        skip(what, &format!("needs `{program}` on PATH (apt package)"))
    }
}

/// True when `path` exists; otherwise skips (see [`skip`]).
pub fn require_path(what: &str, path: impl AsRef<Path>) -> bool {
    let path = path.as_ref();
    if path.exists() {
        true
    } else {
        skip(what, &format!("needs {}", path.display()))
    }
}

/// True when the kernel lists `fs` in /proc/filesystems (e.g. "overlay"); otherwise skips.
pub fn require_filesystem(what: &str, fs: &str) -> bool {
    let listed = std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.split_whitespace().last() == Some(fs)))
        .unwrap_or(false);
    if listed {
        true
    } else {
        skip(what, &format!("needs the {fs} filesystem in the kernel"))
    }
}

/// A test of a custom-harness (`harness = false`) test binary: its name and its body.
pub type HarnessTest = (&'static str, fn() -> Result<(), Box<dyn std::error::Error>>);

/// Runs the tests of a custom-harness test binary (one that must own `main`, e.g. because it is
/// re-executed as a container's init) one after another on the main thread.
///
/// The first argument that is not a flag filters by name, as libtest's does. A test runs only
/// when `precondition(name)` holds (call the `require_*` functions there: a skip is reported as
/// they report it, and counted as passed like a libtest test that returns early). Prints
/// libtest's lines, `test NAME ... ok` and a closing `test result:` line that runners count,
/// and exits with status 1 when a test failed.
pub fn run_harness(tests: &[HarnessTest], precondition: impl Fn(&str) -> bool) {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let selected: Vec<&HarnessTest> = tests
        .iter()
        .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let started = std::time::Instant::now();
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in &selected {
        if !precondition(name) {
            println!("test {name} ... ok (skipped)");
            passed += 1;
            continue;
        }
        let test_started = std::time::Instant::now();
        match test() {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.2?})", test_started.elapsed());
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED: {}", error_chain(&*e));
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed == 0 { "ok" } else { "FAILED" },
        tests.len() - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

/// `error: source: source…`, the whole chain on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// The full path of `program` on `PATH`, if any.
pub fn find_command(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A name unique to this process and call, safe for process-global resources (cgroups,
/// network namespaces, mount points) that outlive a failed test: `berth-test-<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("berth-test-{prefix}-{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("a"), unique_name("a"));
        assert!(unique_name("x").starts_with("berth-test-x-"));
    }

    #[test]
    fn skips_are_logged_with_the_test_name() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        record_skip(&log, "mounts an overlay", "needs root");
        record_skip(&log, "runs runc", "needs `runc` on PATH");
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].contains("skips_are_logged_with_the_test_name\tmounts an overlay: needs root"),
            "{text}"
        );
    }

    #[test]
    fn finds_sh() {
        assert!(find_command("sh").is_some());
        assert!(find_command("definitely-not-a-berth-command").is_none());
    }
}
