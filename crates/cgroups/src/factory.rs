//! [`CgroupFactory`]: how a container runtime gets the manager of a group from its path
//! without knowing the host's layout; [`HostCgroups`] is the host's hierarchy (v1 or v2,
//! detected), and a test or an embedder can hand the runtime its own.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{CgroupManager, Result, manager};

/// Makes the manager of the group at a path relative to a hierarchy (e.g.
/// `berth/<container-id>`; a leading `/` means the same). Nothing is created yet.
pub trait CgroupFactory: Send + Sync + fmt::Debug {
    /// The manager of the group at `path`.
    fn manager(&self, path: &Path) -> Result<Arc<dyn CgroupManager>>;
}

/// The host's cgroup hierarchy mounted at `root` (normally `/sys/fs/cgroup`): [`manager`]
/// detects its layout and builds a v1 or v2 manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCgroups {
    root: PathBuf,
}

impl HostCgroups {
    /// The hierarchy mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> HostCgroups {
        HostCgroups { root: root.into() }
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Default for HostCgroups {
    /// `/sys/fs/cgroup`.
    fn default() -> Self {
        HostCgroups::new("/sys/fs/cgroup")
    }
}

impl CgroupFactory for HostCgroups {
    fn manager(&self, path: &Path) -> Result<Arc<dyn CgroupManager>> {
        Ok(Arc::new(manager(&self.root, path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cgroups_refuse_escaping_paths_and_report_their_root() {
        let host = HostCgroups::new("/sys/fs/cgroup");
        assert_eq!(host.root(), Path::new("/sys/fs/cgroup"));
        assert!(host.manager(Path::new("berth/../../etc")).is_err());
        let missing = HostCgroups::new("/nonexistent-berth-cgroup-root");
        assert!(missing.manager(Path::new("berth/x")).is_err());
    }
}
