//! The engine's record of each container, one directory per container under
//! `<root>/containers/<id>/`: `state.json` (this record, written atomically under a lock),
//! `config.json` (the OCI spec), `rootfs/` (the mounted snapshot) and `container.log`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Its state exists; its process has not started (or failed to).
    Created,
    /// Its process runs.
    Running,
    /// Its process has exited; `exit_code` says how.
    Exited,
}

/// What the engine remembers about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    /// 64 hex digits; the first 12 are shown.
    pub id: String,
    /// A unique name (`--name`, or generated).
    pub name: String,
    /// The image reference as the user gave it.
    pub image: String,
    /// The image's manifest digest.
    pub image_digest: String,
    /// The process arguments.
    pub command: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Where it is in its life.
    pub status: Status,
    /// The host pid of the container's first process while running.
    #[serde(default)]
    pub pid: Option<i32>,
    /// That process's start time (clock ticks after boot), to tell it from a reused pid.
    #[serde(default)]
    pub pid_start_time: Option<u64>,
    /// Seconds since the epoch when the process started.
    #[serde(default)]
    pub started: Option<u64>,
    /// Seconds since the epoch when the process exited.
    #[serde(default)]
    pub finished: Option<u64>,
    /// The exit code (128+n when killed by signal n).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Remove the container when it exits (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// Started with `-d`: a monitor process reaps it and keeps its log.
    #[serde(default)]
    pub detached: bool,
    /// The writable snapshot's key in the snapshotter.
    pub snapshot: String,
    /// The signal `berth stop` sends first (from the image's STOPSIGNAL; default SIGTERM).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Why the last start failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

impl Container {
    /// The 12-digit short id.
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    /// Whether the recorded process is still the live one (a crashed monitor leaves `Running`
    /// behind; this checks the pid and its start time).
    pub fn is_alive(&self) -> bool {
        match (self.status, self.pid, self.pid_start_time) {
            (Status::Running, Some(pid), Some(start)) => process_start_time(pid) == Some(start),
            _ => false,
        }
    }
}

/// The directory of all containers' state.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating) `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<StateDir> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        Ok(StateDir { dir })
    }

    /// The directory of container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Creates the directory and first record of a new container; fails if the name is taken.
    pub fn create(&self, container: &Container) -> Result<()> {
        let _lock = self.lock_all()?;
        if let Some(existing) = self.list()?.into_iter().find(|c| c.name == container.name) {
            return Err(Error::NameInUse {
                name: container.name.clone(),
                id: existing.id,
            });
        }
        let dir = self.container_dir(&container.id);
        fs::create_dir(&dir).map_err(Error::io("create", &dir))?;
        write_atomic(&dir.join("state.json"), container)
    }

    /// Reads the record of `id` (a full id).
    pub fn load(&self, id: &str) -> Result<Container> {
        let path = self.container_dir(id).join("state.json");
        let bytes = fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(id.to_owned())
            } else {
                Error::Io {
                    op: "read",
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|source| Error::State { path, source })
    }

    /// Changes the record of `id` under its lock and returns the new record.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut Container)) -> Result<Container> {
        let _lock = self.lock(id)?;
        let mut container = self.load(id)?;
        change(&mut container);
        write_atomic(&self.container_dir(id).join("state.json"), &container)?;
        Ok(container)
    }

    /// Every container, oldest first. Directories without a readable record are skipped.
    pub fn list(&self) -> Result<Vec<Container>> {
        let entries = fs::read_dir(&self.dir).map_err(Error::io("read", &self.dir))?;
        let mut all = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("read", &self.dir))?;
            if let Some(id) = entry.file_name().to_str()
                && !id.starts_with('.')
                && let Ok(container) = self.load(id)
            {
                all.push(container);
            }
        }
        all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(all)
    }

    /// Finds a container by full id, unique id prefix, or name.
    pub fn find(&self, key: &str) -> Result<Container> {
        let all = self.list()?;
        if let Some(c) = all.iter().find(|c| c.id == key || c.name == key) {
            return Ok(c.clone());
        }
        let matches: Vec<&Container> = all.iter().filter(|c| c.id.starts_with(key)).collect();
        match matches.as_slice() {
            [one] if !key.is_empty() => Ok((*one).clone()),
            [] | [_] => Err(Error::NotFound(key.to_owned())),
            _ => Err(Error::Ambiguous(key.to_owned())),
        }
    }

    /// Removes the directory of `id` and everything in it.
    pub fn remove(&self, id: &str) -> Result<()> {
        let dir = self.container_dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io {
                op: "remove",
                path: dir,
                source: e,
            }),
        }
    }

    fn lock(&self, id: &str) -> Result<Flock<fs::File>> {
        let path = self.container_dir(id).join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::NotFound(id.to_owned())
                } else {
                    Error::Io {
                        op: "lock",
                        path: path.clone(),
                        source: e,
                    }
                }
            })?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Io {
            op: "lock",
            path,
            source: errno.into(),
        })
    }

    fn lock_all(&self) -> Result<Flock<fs::File>> {
        let path = self.dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("lock", &path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Io {
            op: "lock",
            path,
            source: errno.into(),
        })
    }
}

/// Writes JSON to a temp file beside `path` and renames it into place.
fn write_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::State {
        path: path.to_owned(),
        source,
    })?;
    let tmp = path.with_extension("json.tmp");
    let mut file = fs::File::create(&tmp).map_err(Error::io("create", &tmp))?;
    file.write_all(&bytes).map_err(Error::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(Error::io("rename", path))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks after boot.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A new random 64-hex-digit id.
pub fn new_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    let mut urandom = fs::File::open("/dev/urandom").map_err(Error::io("open", "/dev/urandom"))?;
    std::io::Read::read_exact(&mut urandom, &mut bytes)
        .map_err(Error::io("read", "/dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A Docker-like generated name (`adjective_noun`), derived from the id.
pub fn generated_name(id: &str) -> String {
    const ADJECTIVES: [&str; 16] = [
        "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
        "nifty", "proud", "quiet", "sharp", "tender", "vivid",
    ];
    const NOUNS: [&str; 16] = [
        "anchor", "beacon", "cove", "dock", "ferry", "galley", "harbor", "jetty", "keel", "lagoon",
        "mast", "pier", "quay", "rudder", "tide", "wharf",
    ];
    let n = u32::from_str_radix(&id[..8.min(id.len())], 16).unwrap_or(0) as usize;
    format!(
        "{}_{}_{}",
        ADJECTIVES[n % 16],
        NOUNS[(n >> 4) % 16],
        &id[..6.min(id.len())]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str) -> Container {
        Container {
            id: id.into(),
            name: name.into(),
            image: "busybox".into(),
            image_digest: "sha256:00".into(),
            command: vec!["true".into()],
            created: now(),
            status: Status::Created,
            pid: None,
            pid_start_time: None,
            started: None,
            finished: None,
            exit_code: None,
            auto_remove: false,
            detached: false,
            snapshot: format!("container-{id}"),
            stop_signal: None,
            error: None,
        }
    }

    #[test]
    fn create_find_update_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("containers")).unwrap();
        let a = new_id().unwrap();
        let b = format!("{}1", &a[..63]);
        dir.create(&record(&a, "web")).unwrap();
        assert!(matches!(
            dir.create(&record(&b, "web")),
            Err(Error::NameInUse { .. })
        ));
        dir.create(&record(&b, "db")).unwrap();
        assert_eq!(dir.find("web").unwrap().id, a);
        assert_eq!(dir.find(&b).unwrap().name, "db");
        assert!(matches!(dir.find(&a[..12]), Err(Error::Ambiguous(_))));
        assert!(matches!(dir.find("nope"), Err(Error::NotFound(_))));
        let updated = dir.update(&a, |c| c.status = Status::Exited).unwrap();
        assert_eq!(dir.load(&a).unwrap().status, updated.status);
        dir.remove(&a).unwrap();
        assert_eq!(dir.list().unwrap().len(), 1);
        assert!(matches!(dir.update(&a, |_| {}), Err(Error::NotFound(_))));
    }

    #[test]
    fn ids_and_liveness() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(generated_name(&id).contains('_'));
        let me = std::process::id() as i32;
        let mut c = record(&id, "x");
        c.status = Status::Running;
        c.pid = Some(me);
        c.pid_start_time = process_start_time(me);
        assert!(c.is_alive());
        c.pid_start_time = c.pid_start_time.map(|t| t + 1);
        assert!(!c.is_alive());
    }
}
