//! Detecting the cgroup layout under a root: unified (v2 only), hybrid (v1 controllers with a
//! controller-less cgroup2 beside them, as on this project's CI machine) or legacy (v1 only).
//! Detection reads the tree, not `statfs`, so a fake cgroupfs in a tempdir is detected the same way.

use std::path::Path;

use crate::v1::V1Controller;
use crate::{Error, Result};

/// How cgroups are mounted under a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only cgroup v1 hierarchies (`<root>/memory`, `<root>/cpu`, …).
    Legacy,
    /// v1 hierarchies plus a cgroup2 mount at `<root>/unified`; managed as v1, like runc does.
    Hybrid,
    /// One cgroup2 hierarchy at the root (`<root>/cgroup.controllers` exists).
    Unified,
}

impl Layout {
    /// True when groups are managed through cgroup v2 files.
    pub fn is_v2(self) -> bool {
        self == Layout::Unified
    }
}

/// Detects the layout under `root` (normally `/sys/fs/cgroup`).
pub fn detect(root: &Path) -> Result<Layout> {
    if root.join("cgroup.controllers").is_file() {
        return Ok(Layout::Unified);
    }
    let has_v1 = V1Controller::ALL
        .iter()
        .any(|c| root.join(c.name()).is_dir())
        || std::fs::read_dir(root)
            .map_err(|e| Error::io("list", root, e))?
            .flatten()
            .any(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .split(',')
                    .any(|n| V1Controller::from_name(n).is_some())
            });
    if !has_v1 {
        return Err(Error::NoHierarchy {
            root: root.to_owned(),
        });
    }
    if root.join("unified/cgroup.controllers").is_file() {
        Ok(Layout::Hybrid)
    } else {
        Ok(Layout::Legacy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_fake_layouts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(detect(dir.path()), Err(Error::NoHierarchy { .. })));
        std::fs::create_dir(dir.path().join("cpu,cpuacct")).unwrap();
        assert_eq!(detect(dir.path()).unwrap(), Layout::Legacy);
        std::fs::create_dir(dir.path().join("unified")).unwrap();
        std::fs::write(dir.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        assert_eq!(detect(dir.path()).unwrap(), Layout::Hybrid);

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(detect(v2.path()).unwrap(), Layout::Unified);
        assert!(detect(v2.path()).unwrap().is_v2());
    }

    #[test]
    fn this_host_is_detected() {
        let root = Path::new("/sys/fs/cgroup");
        if !berth_testutil::require_path("detects the host cgroup layout", root.join("memory")) {
            return;
        }
        // The CI machine is hybrid; a legacy host is v1 all the same.
        assert!(!detect(root).unwrap().is_v2());
    }
}
