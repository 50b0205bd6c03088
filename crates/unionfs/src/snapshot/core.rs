//! What both snapshotters share: the directory layout under the root, the metadata
//! transactions, and the per-backend choices (mounts, how layers are applied and diffed).

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::stat::SFlag;

use super::metadata::{Metadata, MetadataStore, Record, WriteBack, now};
use super::{Backend, SnapshotInfo, SnapshotKind, Usage, copy_tree};
use crate::fsroot::{kind, list_sorted, lstat_at, open_subdir};
use crate::layer::{
    self, ApplyOptions, ApplyStats, DiffOptions, DiffSource, DiffStats, WhiteoutMode,
};
use crate::{Error, Mount, Result};

const SNAPSHOTS_DIR: &str = "snapshots";
const MAX_KEY_LEN: usize = 4096;

/// A key unique to this process, for temporary snapshots: `<prefix>-<pid>-<n>-<name>`.
pub(crate) fn temporary_key(prefix: &str, name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}-{name}", std::process::id())
}

fn validate_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "empty"
    } else if key.len() > MAX_KEY_LEN {
        "longer than 4096 bytes"
    } else if key.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey {
        key: key.chars().take(100).collect(),
        reason,
    })
}

fn record<'m>(meta: &'m Metadata, key: &str) -> Result<&'m Record> {
    meta.get(key)
        .ok_or_else(|| Error::NotFound { key: key.into() })
}

/// Shared implementation of [`super::OverlaySnapshotter`] and [`super::CopySnapshotter`].
#[derive(Debug)]
pub(crate) struct Core {
    root: PathBuf,
    backend: Backend,
    store: MetadataStore,
}

impl Core {
    pub(crate) fn open(root: PathBuf, backend: Backend) -> Result<Core> {
        std::fs::create_dir_all(root.join(SNAPSHOTS_DIR))
            .map_err(|e| Error::io("create", &root, e))?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::io("resolve", &root, e))?;
        if backend == Backend::Overlay {
            let text = root.to_string_lossy();
            if text.contains(':') || text.contains(',') || text.contains('\n') {
                return Err(Error::InvalidRoot {
                    path: root,
                    reason: "overlay mount options cannot carry ':', ',' or newlines in paths"
                        .into(),
                });
            }
        }
        let core = Core {
            store: MetadataStore::new(root.clone(), backend),
            root,
            backend,
        };
        core.collect_garbage()?;
        Ok(core)
    }

    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join(SNAPSHOTS_DIR).join(id.to_string())
    }

    fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// Records the backend (first use) and removes snapshot directories the metadata does not
    /// know: left by a crash between creating them and recording them, or a failed removal.
    fn collect_garbage(&self) -> Result<()> {
        self.store.update(|meta| {
            let ids: std::collections::HashSet<String> =
                meta.iter().map(|(_, r)| r.id.to_string()).collect();
            let dir = self.root.join(SNAPSHOTS_DIR);
            let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
                let name = entry.file_name();
                if !ids.contains(name.to_string_lossy().as_ref()) {
                    let path = entry.path();
                    std::fs::remove_dir_all(&path).map_err(|e| Error::io("remove", &path, e))?;
                }
            }
            // Write the log on first use (or convert an old root's file), so the root records
            // its backend.
            let first_use = !self.store.has_log();
            Ok((
                (),
                if first_use {
                    WriteBack::Durable
                } else {
                    WriteBack::No
                },
            ))
        })
    }

    pub(crate) fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: SnapshotKind,
    ) -> Result<Vec<Mount>> {
        validate_key(key)?;
        self.store.update(|meta| {
            if meta.contains_key(key) {
                return Err(Error::AlreadyExists { key: key.into() });
            }
            let parent_id = match parent {
                Some(p) => {
                    let rec = record(meta, p)?;
                    if rec.kind != SnapshotKind::Committed {
                        return Err(Error::WrongKind {
                            key: p.into(),
                            expected: "committed (a parent)",
                            found: rec.kind,
                        });
                    }
                    Some(rec.id)
                }
                None => None,
            };
            let id = meta.next_id();
            let dir = self.dir(id);
            if let Err(e) = self.make_dirs(id, parent_id, kind) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            let t = now();
            meta.insert(
                key.to_owned(),
                Record {
                    id,
                    kind,
                    parent: parent.map(str::to_owned),
                    created: t,
                    updated: t,
                },
            );
            let mounts = self.mounts_in(meta, key)?;
            Ok((mounts, WriteBack::Atomic))
        })
    }

    fn make_dirs(&self, id: u64, parent_id: Option<u64>, kind: SnapshotKind) -> Result<()> {
        let dir = self.dir(id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let fs = self.fs(id);
        match (self.backend, kind, parent_id) {
            (Backend::Copy, SnapshotKind::Active, Some(parent)) => {
                copy_tree::copy_tree(&self.fs(parent), &fs)?
            }
            _ => std::fs::create_dir(&fs).map_err(|e| Error::io("create", &fs, e))?,
        }
        if self.backend == Backend::Overlay && kind == SnapshotKind::Active {
            let work = dir.join("work");
            std::fs::create_dir(&work).map_err(|e| Error::io("create", &work, e))?;
        }
        use std::os::unix::fs::PermissionsExt;
        if !(self.backend == Backend::Copy && parent_id.is_some() && kind == SnapshotKind::Active) {
            std::fs::set_permissions(&fs, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io("chmod", &fs, e))?;
        }
        Ok(())
    }

    /// The fs dirs of `key`'s parents, nearest first.
    fn chain(&self, meta: &Metadata, key: &str) -> Result<Vec<PathBuf>> {
        let mut chain = Vec::new();
        let mut next = record(meta, key)?.parent.clone();
        while let Some(name) = next {
            let rec = record(meta, &name)?;
            chain.push(self.fs(rec.id));
            next = rec.parent.clone();
            if chain.len() > meta.len() {
                return Err(Error::InvalidRoot {
                    path: self.root.clone(),
                    reason: format!("parent cycle at {name:?}"),
                });
            }
        }
        Ok(chain)
    }

    fn mounts_in(&self, meta: &Metadata, key: &str) -> Result<Vec<Mount>> {
        let rec = record(meta, key)?;
        let fs = self.fs(rec.id);
        let chain = self.chain(meta, key)?;
        let lowerdir = || {
            let joined: Vec<String> = chain
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            format!("lowerdir={}", joined.join(":"))
        };
        let mount = match (self.backend, rec.kind) {
            (_, SnapshotKind::Committed) => {
                return Err(Error::WrongKind {
                    key: key.into(),
                    expected: "active or view",
                    found: rec.kind,
                });
            }
            (Backend::Copy, SnapshotKind::Active) => Mount::bind(fs, false),
            (Backend::Copy, SnapshotKind::View) => {
                Mount::bind(chain.first().cloned().unwrap_or(fs), true)
            }
            (Backend::Overlay, SnapshotKind::Active) if chain.is_empty() => Mount::bind(fs, false),
            (Backend::Overlay, SnapshotKind::Active) => Mount {
                fs_type: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "index=off".into(),
                    "redirect_dir=off".into(),
                    format!("workdir={}", self.dir(rec.id).join("work").display()),
                    format!("upperdir={}", fs.display()),
                    lowerdir(),
                ],
            },
            (Backend::Overlay, SnapshotKind::View) if chain.len() <= 1 => {
                Mount::bind(chain.first().cloned().unwrap_or(fs), true)
            }
            (Backend::Overlay, SnapshotKind::View) => Mount {
                fs_type: "overlay".into(),
                source: "overlay".into(),
                options: vec!["ro".into(), "index=off".into(), lowerdir()],
            },
        };
        Ok(vec![mount])
    }

    pub(crate) fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.store.read_with(|meta| self.mounts_in(meta, key))
    }

    pub(crate) fn commit(&self, name: &str, key: &str) -> Result<()> {
        validate_key(name)?;
        self.store.update(|meta| {
            let rec = record(meta, key)?;
            if rec.kind != SnapshotKind::Active {
                return Err(Error::WrongKind {
                    key: key.into(),
                    expected: "active",
                    found: rec.kind,
                });
            }
            if meta.contains_key(name) {
                return Err(Error::AlreadyExists { key: name.into() });
            }
            let mut rec = meta.remove(key).expect("record exists");
            rec.kind = SnapshotKind::Committed;
            rec.updated = now();
            meta.insert(name.to_owned(), rec);
            Ok(((), WriteBack::Durable))
        })
    }

    pub(crate) fn remove(&self, key: &str) -> Result<()> {
        let id = self.store.update(|meta| {
            let rec = record(meta, key)?;
            let children: Vec<String> = meta
                .iter()
                .filter(|(_, r)| r.parent.as_deref() == Some(key))
                .map(|(k, _)| k.clone())
                .collect();
            if !children.is_empty() {
                return Err(Error::HasChildren {
                    key: key.into(),
                    children,
                });
            }
            let id = rec.id;
            let write = if rec.kind == SnapshotKind::Committed {
                WriteBack::Durable
            } else {
                WriteBack::Atomic
            };
            meta.remove(key);
            Ok((id, write))
        })?;
        // The record is gone, so the directory is unreachable; if removing it fails now, the next
        // open collects it.
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", dir, e)),
        }
    }

    pub(crate) fn stat(&self, key: &str) -> Result<SnapshotInfo> {
        self.store
            .read_with(|meta| record(meta, key).map(|r| r.info(key)))
    }

    pub(crate) fn list(&self) -> Result<Vec<SnapshotInfo>> {
        self.store
            .read_with(|meta| Ok(meta.iter().map(|(k, r)| r.info(k)).collect()))
    }

    pub(crate) fn usage(&self, key: &str) -> Result<Usage> {
        let id = self
            .store
            .read_with(|meta| record(meta, key).map(|r| r.id))?;
        let fs = self.fs(id);
        let dir = crate::fsroot::RootDir::open(&fs).map_err(|e| Error::errno("open", &fs, e))?;
        let mut usage = Usage::default();
        let mut seen = std::collections::HashSet::new();
        du(dir.fd(), &mut usage, &mut seen).map_err(|e| Error::errno("measure", &fs, e))?;
        Ok(usage)
    }

    /// The record of `key` and its parent's fs dir, checking that `key` has one of `kinds`.
    fn lookup(
        &self,
        key: &str,
        kinds: &[SnapshotKind],
        expected: &'static str,
    ) -> Result<(Record, Option<PathBuf>)> {
        self.store.read_with(|meta| {
            let rec = record(meta, key)?;
            if !kinds.contains(&rec.kind) {
                return Err(Error::WrongKind {
                    key: key.into(),
                    expected,
                    found: rec.kind,
                });
            }
            let parent = match &rec.parent {
                Some(p) => Some(self.fs(record(meta, p)?.id)),
                None => None,
            };
            Ok((rec.clone(), parent))
        })
    }

    pub(crate) fn apply_layer(
        &self,
        key: &str,
        tar: &mut dyn Read,
        opts: &ApplyOptions,
    ) -> Result<ApplyStats> {
        let (rec, _) = self.lookup(key, &[SnapshotKind::Active], "active")?;
        let mode = match self.backend {
            Backend::Overlay => WhiteoutMode::Overlay,
            Backend::Copy => WhiteoutMode::Remove,
        };
        let opts = opts.clone().with_whiteouts(mode);
        match layer::apply(tar, &self.fs(rec.id), &opts) {
            Ok(stats) => Ok(stats),
            Err(e) => {
                let _ = self.remove(key);
                Err(e)
            }
        }
    }

    pub(crate) fn diff(
        &self,
        key: &str,
        out: &mut dyn Write,
        opts: &DiffOptions,
    ) -> Result<DiffStats> {
        let (rec, parent) = self.lookup(
            key,
            &[SnapshotKind::Active, SnapshotKind::Committed],
            "active or committed",
        )?;
        let fs = self.fs(rec.id);
        let source = match self.backend {
            Backend::Overlay => DiffSource::OverlayUpper(&fs),
            Backend::Copy => DiffSource::Trees {
                lower: parent.as_deref(),
                upper: &fs,
            },
        };
        layer::diff(source, out, opts)
    }
}

/// Adds up allocated bytes and inodes below `dir`, counting hard-linked inodes once.
fn du(
    dir: BorrowedFd<'_>,
    usage: &mut Usage,
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> nix::Result<()> {
    for name in list_sorted(dir)? {
        let Some(st) = lstat_at(dir, &name)? else {
            continue;
        };
        if seen.insert((st.st_dev, st.st_ino)) {
            usage.inodes += 1;
            usage.size += st.st_blocks as u64 * 512;
        }
        if kind(&st) == SFlag::S_IFDIR {
            let sub = open_subdir(dir, &name)?;
            du(sub.as_fd(), usage, seen)?;
        }
    }
    Ok(())
}

/// Whether an overlay with two lower layers can be mounted on `root`'s filesystem by this process.
pub(crate) fn overlay_works(root: &Path) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    let listed = std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false);
    if !listed || std::fs::create_dir_all(root).is_err() {
        return false;
    }
    let probe = root.join(temporary_key(".probe", "overlay"));
    let made = ["l1", "l2", "u", "w", "m"]
        .iter()
        .all(|d| std::fs::create_dir_all(probe.join(d)).is_ok());
    let mut works = false;
    if made {
        let mount = Mount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                "redirect_dir=off".into(),
                format!(
                    "lowerdir={}:{}",
                    probe.join("l1").display(),
                    probe.join("l2").display()
                ),
                format!("upperdir={}", probe.join("u").display()),
                format!("workdir={}", probe.join("w").display()),
            ],
        };
        if mount.mount(&probe.join("m")).is_ok() {
            works = true;
            let _ = crate::mount::unmount(&probe.join("m"));
        }
    }
    let _ = std::fs::remove_dir_all(&probe);
    works
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_name(n: usize) -> String {
        format!("sha256:{n:064x}")
    }

    /// Unpacks `count` empty layers as a chain on `parent`, as an image unpack does.
    fn unpack_chain(core: &Core, from: usize, count: usize) {
        for n in from..from + count {
            let parent = n.checked_sub(1).map(layer_name);
            let key = temporary_key("extract", &layer_name(n));
            core.create(&key, parent.as_deref(), SnapshotKind::Active)
                .unwrap();
            core.commit(&layer_name(n), &key).unwrap();
        }
    }

    #[test]
    fn a_change_writes_the_same_whatever_the_number_of_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let core = Core::open(tmp.path().join("root"), Backend::Copy).unwrap();
        let mut per_block = Vec::new();
        for block in 0..4 {
            let before = core.store.bytes_written();
            unpack_chain(&core, block * 150, 150);
            per_block.push(core.store.bytes_written() - before);
        }
        println!("metadata bytes written per 150 layers: {per_block:?}");
        // Rewriting every record on each change made the fourth block cost ~7x the first.
        assert!(
            per_block[3] <= per_block[0] * 5 / 4,
            "metadata bytes written per 150 layers: {per_block:?}"
        );
        assert!(
            per_block[0] < 150 * 1000,
            "under 1 KB per layer: {per_block:?}"
        );
        drop(core);
        let core = Core::open(tmp.path().join("root"), Backend::Copy).unwrap();
        assert_eq!(core.list().unwrap().len(), 600);
        assert_eq!(
            core.stat(&layer_name(599)).unwrap().parent,
            Some(layer_name(598))
        );
    }

    #[test]
    fn the_log_is_compacted_and_shared_between_openers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let a = Core::open(root.clone(), Backend::Copy).unwrap();
        let b = Core::open(root.clone(), Backend::Copy).unwrap();
        // Enough churn to compact several times; the other opener follows every change.
        for round in 0..800 {
            let key = format!("churn-{round}");
            a.create(&key, None, SnapshotKind::Active).unwrap();
            assert_eq!(b.stat(&key).unwrap().kind, SnapshotKind::Active);
            b.remove(&key).unwrap();
            assert!(a.stat(&key).is_err());
        }
        unpack_chain(&a, 0, 3);
        let log = std::fs::read_to_string(root.join("metadata.log")).unwrap();
        assert!(
            log.lines().count() < 1000,
            "compacted: {} lines",
            log.lines().count()
        );
        assert_eq!(b.list().unwrap().len(), 3);
        let dirs = std::fs::read_dir(root.join(SNAPSHOTS_DIR)).unwrap().count();
        assert_eq!(dirs, 3, "no directory left by the churn");
    }

    #[test]
    fn a_torn_tail_is_ignored_and_damage_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let core = Core::open(root.clone(), Backend::Copy).unwrap();
        unpack_chain(&core, 0, 2);
        drop(core);
        let log = root.join("metadata.log");
        let good = std::fs::read(&log).unwrap();

        // A crash in the middle of an append: the record is lost, nothing else.
        let mut torn = good.clone();
        torn.extend_from_slice(b"0123456789abcdef [{\"del\":{\"key\":\"sha");
        std::fs::write(&log, &torn).unwrap();
        let core = Core::open(root.clone(), Backend::Copy).unwrap();
        assert_eq!(core.list().unwrap().len(), 2);
        unpack_chain(&core, 2, 1);
        drop(core);
        let core = Core::open(root.clone(), Backend::Copy).unwrap();
        assert_eq!(
            core.list().unwrap().len(),
            3,
            "the tail was cut before the append"
        );
        drop(core);

        // A damaged record followed by valid ones is an error, not a silent loss.
        let text = std::fs::read(&log).unwrap();
        let first_nl = text.iter().position(|b| *b == b'\n').unwrap();
        let mut damaged = text.clone();
        damaged[first_nl + 3] ^= 1;
        std::fs::write(&log, &damaged).unwrap();
        let err = Core::open(root.clone(), Backend::Copy).unwrap_err();
        assert!(err.to_string().contains("metadata"), "{err}");
        assert!(
            root.join(SNAPSHOTS_DIR).join("1").exists(),
            "nothing collected from a damaged log"
        );
    }

    #[test]
    fn an_old_metadata_file_is_converted() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join(SNAPSHOTS_DIR).join("7/fs")).unwrap();
        std::fs::write(
            root.join("metadata.json"),
            r#"{"version":1,"backend":"copy","next_id":8,"snapshots":{"base":{"id":7,"kind":"committed","parent":null,"created":1,"updated":1}}}"#,
        )
        .unwrap();
        assert_eq!(
            super::super::metadata::recorded_backend(&root),
            Some(Backend::Copy)
        );
        let core = Core::open(root.clone(), Backend::Copy).unwrap();
        assert_eq!(core.stat("base").unwrap().kind, SnapshotKind::Committed);
        assert!(!root.join("metadata.json").exists() && root.join("metadata.log").exists());
        core.create("next", Some("base"), SnapshotKind::Active)
            .unwrap();
        assert!(root.join(SNAPSHOTS_DIR).join("8").exists(), "ids continue");
        assert_eq!(
            super::super::metadata::recorded_backend(&root),
            Some(Backend::Copy)
        );
    }
}
