//! Container state on disk: `<state root>/<id>/state.json` (plus `exec.fifo` until started),
//! so any process can find a container by id, and the runc-compatible view of it
//! ([`State`], what `berth-runtime state ID` prints).

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The lifecycle status of a container, as the OCI runtime spec names it (plus `paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created; the process waits for `start`.
    Created,
    /// The user's process runs.
    Running,
    /// Frozen by the cgroup freezer.
    Paused,
    /// The process has exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.pad(s)
    }
}

/// The state of a container as `runc state` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The OCI runtime-spec version of the bundle.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// The container id.
    pub id: String,
    /// The init process pid on the host (0 once stopped).
    pub pid: i32,
    /// The current status.
    pub status: Status,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The root filesystem.
    pub rootfs: PathBuf,
    /// When the container was created (RFC 3339, UTC).
    pub created: String,
    /// The owner (empty: root).
    pub owner: String,
    /// The spec's annotations.
    #[serde(default, skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub annotations: std::collections::HashMap<String, String>,
}

/// What the runtime records for each container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) pid: i32,
    /// Field 22 of /proc/<pid>/stat, to tell our process from a later one with the same pid.
    pub(crate) start_time: u64,
    pub(crate) bundle: PathBuf,
    pub(crate) rootfs: PathBuf,
    pub(crate) created: String,
    /// The cgroup path (relative to the cgroup root).
    pub(crate) cgroup: PathBuf,
    pub(crate) spec: Spec,
    /// Without a mount namespace: the (resolved) rootfs and how many mounts sat on it before
    /// the container; the container's own are detached on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) host_mounts: Option<(PathBuf, usize)>,
}

/// Validates a container id: it becomes a directory name under the state root.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

pub(crate) fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

pub(crate) fn fifo_path(dir: &Path) -> PathBuf {
    dir.join("exec.fifo")
}

impl Record {
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join("state.json.tmp");
        let data = serde_json::to_vec(self)
            .map_err(|e| Error::io("encode", &tmp, std::io::Error::other(e)))?;
        std::fs::write(&tmp, data).map_err(|e| Error::io("write", &tmp, e))?;
        let path = dir.join("state.json");
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))
    }

    pub(crate) fn load(dir: &Path, id: &str) -> Result<Record> {
        let path = dir.join("state.json");
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()));
            }
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        serde_json::from_slice(&data).map_err(|source| Error::CorruptState {
            id: id.to_string(),
            source,
        })
    }

    /// True while the recorded process (not a later one reusing its pid) is alive and not a
    /// zombie.
    pub(crate) fn alive(&self) -> bool {
        self.pid > 0
            && process_start_time(self.pid)
                .is_some_and(|(start, zombie)| start == self.start_time && !zombie)
    }
}

/// Start time (field 22) of `/proc/<pid>/stat` and whether the process is a zombie.
pub(crate) fn process_start_time(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = matches!(fields.first(), Some(&"Z") | Some(&"X"));
    Some((fields.get(19)?.parse().ok()?, zombie))
}

/// Now, as RFC 3339 with nanoseconds in UTC (what runc writes in `created`).
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_are_rejected() {
        for bad in ["", ".", "..", "a/b", "../x", "a b", "x\0"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        for good in ["abc", "a-b_c.d", "0123456789abcdef"] {
            assert!(validate_id(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn own_start_time_is_readable() {
        let (start, zombie) = process_start_time(std::process::id() as i32).unwrap();
        assert!(start > 0);
        assert!(!zombie);
    }

    proptest::proptest! {
        #[test]
        fn valid_ids_stay_one_path_component(id in "[a-zA-Z0-9._+-]{1,64}") {
            if validate_id(&id).is_ok() {
                let dir = container_dir(Path::new("/run/berth"), &id);
                proptest::prop_assert_eq!(dir.parent(), Some(Path::new("/run/berth")));
            }
        }
    }
}
