//! Test helpers shared by Berth's crates.
//!
//! Tests that need root, a kernel feature or a peer binary (runc, skopeo, …) call one of the
//! `require_*` functions first. Outside CI a missing precondition prints why the test skips and
//! returns `false`; when [`REQUIRE_ENV`] is set (as `.ci/run` does, running as root with every peer
//! installed) a missing precondition panics instead, so a privileged test never passes in CI
//! without having run.
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

/// Reports a missing precondition: a printed skip locally, a panic when [`REQUIRE_ENV`] is set.
///
/// Returns `false` so callers can write `if !require(..) { return; }`.
pub fn skip(what: &str, why: &str) -> bool {
    if std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{what}: {why}, but {REQUIRE_ENV} is set, so this test must run");
    }
    eprintln!("skipped: {what}: {why}");
    false
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
    fn finds_sh() {
        assert!(find_command("sh").is_some());
        assert!(find_command("definitely-not-a-berth-command").is_none());
    }
}
