//! The engine's record of each container, one directory per container under
//! `<root>/containers/<id>/`: `state.json` (this record, written atomically under a lock),
//! `config.json` (the OCI spec), `rootfs/` (the mounted snapshot) and `container.log`.
//!
//! Names are reserved in `<root>/containers/.names/<name>` (holding the id), so a name stays
//! taken even when its container's record can't be read; a directory whose `state.json` is
//! unreadable is still listed (as [`Unreadable`]) and can still be found and removed.

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

/// A container directory whose `state.json` can't be read (truncated, corrupted by hand or by
/// a full disk). Its id is the directory's name; its name comes from the name index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The directory's name: the container id.
    pub id: String,
    /// Its name, when the name index has one for it.
    pub name: Option<String>,
    /// The record's path.
    pub path: PathBuf,
    /// Why it can't be read.
    pub error: String,
}

impl Unreadable {
    /// The 12-digit short id.
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
}

/// Every container directory: the readable records, and those that are not.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Readable records, oldest first.
    pub containers: Vec<Container>,
    /// Directories whose record can't be read, by id.
    pub unreadable: Vec<Unreadable>,
}

/// What [`StateDir::find_any`] found.
#[derive(Debug, Clone)]
pub enum Found {
    /// A readable record.
    Record(Container),
    /// A directory whose record can't be read.
    Unreadable(Unreadable),
}

/// The lock [`StateDir::create`] needs: while it is held no container is created, so a check
/// over every container (is an image in use?) and what follows it are one step.
#[derive(Debug)]
pub struct StateLock {
    _flock: Flock<fs::File>,
}

/// The directory of all containers' state.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

const NAMES_DIR: &str = ".names";

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

    /// Takes the lock every container creation holds (see [`StateLock`]).
    pub fn lock_all(&self) -> Result<StateLock> {
        let path = self.dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("lock", &path))?;
        let flock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Io {
            op: "lock",
            path,
            source: errno.into(),
        })?;
        Ok(StateLock { _flock: flock })
    }

    fn name_path(&self, name: &str) -> PathBuf {
        self.dir.join(NAMES_DIR).join(name)
    }

    /// The id holding `name`, if a container directory for it exists.
    fn name_owner(&self, name: &str) -> Option<String> {
        let id = fs::read_to_string(self.name_path(name)).ok()?;
        let id = id.trim();
        (!id.is_empty() && !id.contains('/') && self.container_dir(id).is_dir())
            .then(|| id.to_owned())
    }

    /// Every reserved name, by id (names whose container directory is gone are stale: skipped).
    fn names_by_id(&self) -> std::collections::HashMap<String, String> {
        let mut out = std::collections::HashMap::new();
        let Ok(entries) = fs::read_dir(self.dir.join(NAMES_DIR)) else {
            return out;
        };
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
                && let Some(id) = self.name_owner(name)
            {
                out.insert(id, name.to_owned());
            }
        }
        out
    }

    /// Creates the directory and first record of a new container under `lock` (from
    /// [`StateDir::lock_all`]); fails if the name is taken, even by a container whose record
    /// can't be read.
    pub fn create(&self, lock: &StateLock, container: &Container) -> Result<()> {
        let _ = lock;
        let in_use = |id: String| Error::NameInUse {
            name: container.name.clone(),
            id,
        };
        if let Some(id) = self.name_owner(&container.name) {
            return Err(in_use(id));
        }
        // Roots made before the name index: their names are only in the records.
        if let Some(existing) = self.list()?.into_iter().find(|c| c.name == container.name) {
            return Err(in_use(existing.id));
        }
        // The name first: a crash before the directory exists leaves a stale name, which the
        // next create of that name reclaims.
        let names = self.dir.join(NAMES_DIR);
        fs::create_dir_all(&names).map_err(Error::io("create", &names))?;
        write_bytes_atomic(&self.name_path(&container.name), container.id.as_bytes())?;
        let dir = self.container_dir(&container.id);
        let made = fs::create_dir(&dir)
            .map_err(Error::io("create", &dir))
            .and_then(|()| write_atomic(&dir.join("state.json"), container));
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&dir);
            let _ = fs::remove_file(self.name_path(&container.name));
            return Err(e);
        }
        Ok(())
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

    /// Every container with a readable record, oldest first ([`StateDir::list_all`] also
    /// reports the others).
    pub fn list(&self) -> Result<Vec<Container>> {
        Ok(self.scan(false)?.containers)
    }

    /// Every container directory: readable records oldest first, and the unreadable ones.
    pub fn list_all(&self) -> Result<Listing> {
        self.scan(true)
    }

    fn scan(&self, with_unreadable: bool) -> Result<Listing> {
        let entries = fs::read_dir(&self.dir).map_err(Error::io("read", &self.dir))?;
        let mut listing = Listing::default();
        for entry in entries {
            let entry = entry.map_err(Error::io("read", &self.dir))?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if id.starts_with('.') {
                continue;
            }
            match self.load(&id) {
                Ok(container) => listing.containers.push(container),
                // Removed meanwhile.
                Err(Error::NotFound(_)) if !self.container_dir(&id).is_dir() => {}
                Err(e) => {
                    if with_unreadable {
                        listing.unreadable.push(Unreadable {
                            path: self.container_dir(&id).join("state.json"),
                            id,
                            name: None,
                            error: error_text(&e),
                        });
                    }
                }
            }
        }
        listing
            .containers
            .sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        if !listing.unreadable.is_empty() {
            let names = self.names_by_id();
            for u in &mut listing.unreadable {
                u.name = names.get(&u.id).cloned();
            }
            listing.unreadable.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Ok(listing)
    }

    /// Finds a container by full id, unique id prefix, or name; a container whose record is
    /// unreadable is an error ([`Error::State`]; see [`StateDir::find_any`]).
    pub fn find(&self, key: &str) -> Result<Container> {
        match self.find_any(key)? {
            Found::Record(c) => Ok(c),
            Found::Unreadable(u) => Err(Error::Unreadable {
                id: u.id,
                path: u.path,
                message: u.error,
            }),
        }
    }

    /// Finds a container by full id, unique id prefix, or name, including those whose record
    /// can't be read (found by id, id prefix, or the name index).
    pub fn find_any(&self, key: &str) -> Result<Found> {
        let listing = self.list_all()?;
        if let Some(c) = listing
            .containers
            .iter()
            .find(|c| c.id == key || c.name == key)
        {
            return Ok(Found::Record(c.clone()));
        }
        if let Some(u) = listing
            .unreadable
            .iter()
            .find(|u| u.id == key || u.name.as_deref() == Some(key))
        {
            return Ok(Found::Unreadable(u.clone()));
        }
        let mut matches: Vec<Found> = listing
            .containers
            .into_iter()
            .filter(|c| c.id.starts_with(key))
            .map(Found::Record)
            .collect();
        matches.extend(
            listing
                .unreadable
                .into_iter()
                .filter(|u| u.id.starts_with(key))
                .map(Found::Unreadable),
        );
        match matches.len() {
            1 if !key.is_empty() => Ok(matches.pop().expect("one match")),
            0 | 1 => Err(Error::NotFound(key.to_owned())),
            _ => Err(Error::Ambiguous(key.to_owned())),
        }
    }

    /// Removes the directory of `id` and everything in it, then frees its name.
    pub fn remove(&self, id: &str) -> Result<()> {
        let name = match self.load(id) {
            Ok(c) => Some(c.name),
            Err(_) => self.names_by_id().remove(id),
        };
        let dir = self.container_dir(id);
        // A reaper finishing at the same time (the monitor of a container removed with force)
        // may still create its lock file in the directory: try again until it has given up.
        let mut attempts = 0;
        loop {
            match fs::remove_dir_all(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(Error::Io {
                        op: "remove",
                        path: dir,
                        source: e,
                    });
                }
            }
        }
        // Only if it is still ours: the directory is gone, so the name is free either way.
        if let Some(name) = name {
            let path = self.name_path(&name);
            if fs::read_to_string(&path).is_ok_and(|owner| owner.trim() == id) {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(())
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
}

/// Writes JSON to a temp file beside `path` and renames it into place.
fn write_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::State {
        path: path.to_owned(),
        source,
    })?;
    write_bytes_atomic(path, &bytes)
}

/// Writes `bytes` to a temp file beside `path` and renames it into place.
fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // A dot name: no container name starts with a dot, so no name file is ever a temp file.
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut file = fs::File::create(&tmp).map_err(Error::io("create", &tmp))?;
    file.write_all(bytes).map_err(Error::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(Error::io("rename", path))
}

fn error_text(e: &Error) -> String {
    berth_api::error_chain(e)
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
        let lock = dir.lock_all().unwrap();
        dir.create(&lock, &record(&a, "web")).unwrap();
        assert!(matches!(
            dir.create(&lock, &record(&b, "web")),
            Err(Error::NameInUse { .. })
        ));
        dir.create(&lock, &record(&b, "db")).unwrap();
        assert_eq!(dir.find("web").unwrap().id, a);
        assert_eq!(dir.find(&b).unwrap().name, "db");
        assert!(matches!(dir.find(&a[..12]), Err(Error::Ambiguous(_))));
        assert!(matches!(dir.find("nope"), Err(Error::NotFound(_))));
        let updated = dir.update(&a, |c| c.status = Status::Exited).unwrap();
        assert_eq!(dir.load(&a).unwrap().status, updated.status);
        dir.remove(&a).unwrap();
        assert_eq!(dir.list().unwrap().len(), 1);
        assert!(matches!(dir.update(&a, |_| {}), Err(Error::NotFound(_))));
        // The name is free again once its container is gone.
        let c = format!("{}2", &a[..63]);
        dir.create(&lock, &record(&c, "web")).unwrap();
    }

    #[test]
    fn unreadable_records_stay_listed_found_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("containers")).unwrap();
        let lock = dir.lock_all().unwrap();
        let a = new_id().unwrap();
        dir.create(&lock, &record(&a, "run1")).unwrap();
        let state = dir.container_dir(&a).join("state.json");
        let text = fs::read(&state).unwrap();
        fs::write(&state, &text[..text.len() / 2]).unwrap();

        assert!(dir.list().unwrap().is_empty());
        let listing = dir.list_all().unwrap();
        assert!(listing.containers.is_empty());
        assert_eq!(listing.unreadable.len(), 1);
        assert_eq!(listing.unreadable[0].id, a);
        assert_eq!(listing.unreadable[0].name.as_deref(), Some("run1"));
        for key in [a.as_str(), &a[..12], "run1"] {
            assert!(
                matches!(dir.find_any(key), Ok(Found::Unreadable(_))),
                "{key}"
            );
            assert!(
                matches!(dir.find(key), Err(Error::Unreadable { .. })),
                "{key}"
            );
        }
        // Its name stays taken.
        let b = new_id().unwrap();
        assert!(matches!(
            dir.create(&lock, &record(&b, "run1")),
            Err(Error::NameInUse { id, .. }) if id == a
        ));
        dir.remove(&a).unwrap();
        assert!(dir.list_all().unwrap().unreadable.is_empty());
        dir.create(&lock, &record(&b, "run1")).unwrap();
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
