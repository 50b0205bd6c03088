//! Directory-level work shared by the v1 and v2 managers: checking the relative group path,
//! writing files with their path in the error, listing and signalling a group's processes
//! (descendant groups included), and removing a group tree with retries until it is empty.
//!
//! This is done here rather than through cgroups-rs's `Cgroup` type because that type resolves
//! its hierarchy from `/proc/self/mountinfo` and the fixed `/sys/fs/cgroup` (`hierarchies::auto`),
//! so it cannot honour a configurable root, and its delete gives up after ~150 ms without
//! waiting for the group to empty.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, Result};

/// How long [`remove_tree`] waits for a group's processes to exit before giving up.
pub(crate) const DELETE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks that `path` names a group below a hierarchy's root: no `..`, no `.`, not empty. A
/// leading `/` is accepted and means the same as none (runc's `cgroupsPath` semantics for an
/// absolute path); the result is relative.
pub(crate) fn relative_group_path(path: &Path) -> Result<PathBuf> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => clean.push(part),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::InvalidPath {
                    path: path.to_owned(),
                    reason: "must not contain `.` or `..`",
                });
            }
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(Error::InvalidPath {
            path: path.to_owned(),
            reason: "names the root group",
        });
    }
    Ok(clean)
}

/// Writes `value` to `dir/file`, failing with the path and value in the error.
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|e| Error::io(format!("write {value:?} to"), path, e))
}

/// Fails for a hugepage size the host's kernel does not offer (when it lists its sizes under
/// /sys/kernel/mm/hugepages), before anything is written.
pub(crate) fn check_hugepage_sizes(res: &crate::Resources) -> Result<()> {
    let sizes = Path::new("/sys/kernel/mm/hugepages");
    if res.hugepages.is_empty() || !sizes.is_dir() {
        return Ok(());
    }
    for size in res.hugepages.keys() {
        let kib = crate::resources::hugepage_size_kib(size)?;
        if !sizes.join(format!("hugepages-{kib}kB")).is_dir() {
            return Err(Error::invalid(
                "hugepageLimits.pageSize",
                format!("this kernel has no {size} hugepages"),
            ));
        }
    }
    Ok(())
}

/// Writes each hugepage limit to `<prefix><size>.<suffix>` in `dir`, and to its `rsvd` twin
/// (reservations, kernel 5.7+) where the kernel has one, as runc does.
pub(crate) fn write_hugepages(
    dir: &Path,
    res: &crate::Resources,
    suffix: &str,
    unlimited: &str,
) -> Result<()> {
    for (size, limit) in &res.hugepages {
        let value = limit.map_or_else(|| unlimited.to_owned(), |l| l.to_string());
        write(dir, &format!("hugetlb.{size}.{suffix}"), &value)?;
        let rsvd = format!("hugetlb.{size}.rsvd.{suffix}");
        if dir.join(&rsvd).exists() {
            write(dir, &rsvd, &value)?;
        }
    }
    Ok(())
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))
}

/// Reads the pids in `dir/cgroup.procs`; a missing group has none.
pub(crate) fn procs(dir: &Path) -> Result<Vec<Pid>> {
    let path = dir.join("cgroup.procs");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse::<i32>()
                .map(Pid::from_raw)
                .map_err(|_| Error::Parse {
                    path: path.clone(),
                    reason: format!("{l:?} is not a pid"),
                })
        })
        .collect()
}

/// The group directories of the tree at `dir`, children before their parents.
pub(crate) fn tree_bottom_up(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    collect(dir, &mut out)?;
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        if entry
            .file_type()
            .map_err(|e| Error::io("stat", entry.path(), e))?
            .is_dir()
        {
            collect(&entry.path(), out)?;
        }
    }
    out.push(dir.to_owned());
    Ok(())
}

/// Every pid in the tree at `dir` (the group and its descendant groups), sorted, deduplicated.
pub(crate) fn tree_procs(dir: &Path) -> Result<Vec<Pid>> {
    let mut pids = Vec::new();
    for group in tree_bottom_up(dir)? {
        pids.extend(procs(&group)?);
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Sends `signal` to every pid; a process that already exited is not an error.
pub(crate) fn signal_all(pids: &[Pid], signal: Signal) -> Result<()> {
    for &pid in pids {
        match kill(pid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(source) => {
                return Err(Error::Signal {
                    signal,
                    pid,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Removes the group tree at `dir`, children first. A group whose processes are still exiting
/// refuses `rmdir` with EBUSY; this retries with a growing delay until [`DELETE_TIMEOUT`], then
/// fails with [`Error::Timeout`]. It signals nothing. A missing tree is already removed.
pub(crate) fn remove_tree(dir: &Path) -> Result<()> {
    remove_tree_since(dir, Instant::now())
}

fn remove_tree_since(dir: &Path, start: Instant) -> Result<()> {
    let mut delay = Duration::from_millis(1);
    loop {
        // The common case, a leaf group with no processes left, costs one rmdir.
        match remove_group_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(Error::io("remove", dir, e)),
        }
        let children = subgroups(dir)?;
        if !children.is_empty() {
            for child in children {
                remove_tree_since(&child, start)?;
            }
            continue;
        }
        if start.elapsed() >= DELETE_TIMEOUT {
            return Err(Error::Timeout {
                path: dir.to_owned(),
                what: "still has processes",
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// The child group directories of `dir`.
fn subgroups(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        if entry
            .file_type()
            .map_err(|e| Error::io("stat", entry.path(), e))?
            .is_dir()
        {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// `rmdir` of one group. A real cgroupfs never answers ENOTEMPTY (its files vanish with the
/// directory); a fake tree of plain files in a tempdir does, so its files are removed first.
fn remove_group_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    std::fs::remove_file(entry.path())?;
                }
            }
            // Child groups left: report it the way cgroupfs does, so they are removed first.
            std::fs::remove_dir(dir).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTEMPTY) => std::io::Error::from_raw_os_error(libc::EBUSY),
                _ => e,
            })
        }
        Err(e) => Err(e),
    }
}

/// Polls `done` every few milliseconds until it returns true or `timeout` passes.
pub(crate) fn wait_until(
    dir: &Path,
    what: &'static str,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    let mut delay = Duration::from_micros(200);
    loop {
        if done()? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                path: dir.to_owned(),
                what,
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// Wraps a cgroups-rs result with the operation and group directory.
pub(crate) fn backend<T>(
    op: &'static str,
    dir: &Path,
    result: cgroups_rs::fs::error::Result<T>,
) -> Result<T> {
    result.map_err(|source| Error::Backend {
        op,
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_paths_are_relative_and_clean() {
        assert_eq!(
            relative_group_path(Path::new("/berth/abc")).unwrap(),
            Path::new("berth/abc")
        );
        assert_eq!(
            relative_group_path(Path::new("berth/abc")).unwrap(),
            Path::new("berth/abc")
        );
        assert!(relative_group_path(Path::new("berth/../../etc")).is_err());
        assert!(relative_group_path(Path::new("./x")).is_err());
        assert!(relative_group_path(Path::new("/")).is_err());
        assert!(relative_group_path(Path::new("")).is_err());
    }

    #[test]
    fn removes_a_fake_tree_bottom_up() {
        let dir = tempfile::tempdir().unwrap();
        let group = dir.path().join("pod/c1");
        std::fs::create_dir_all(&group).unwrap();
        std::fs::write(group.join("cgroup.procs"), "").unwrap();
        std::fs::write(dir.path().join("pod/cgroup.procs"), "").unwrap();
        remove_tree(&dir.path().join("pod")).unwrap();
        assert!(!dir.path().join("pod").exists());
        remove_tree(&dir.path().join("pod")).unwrap();
    }

    #[test]
    fn lists_procs_of_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("c1")).unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "5\n3\n").unwrap();
        std::fs::write(dir.path().join("c1/cgroup.procs"), "7\n3\n").unwrap();
        let pids: Vec<i32> = tree_procs(dir.path())
            .unwrap()
            .into_iter()
            .map(Pid::as_raw)
            .collect();
        assert_eq!(pids, [3, 5, 7]);
        std::fs::write(dir.path().join("cgroup.procs"), "x\n").unwrap();
        assert!(matches!(tree_procs(dir.path()), Err(Error::Parse { .. })));
    }
}
