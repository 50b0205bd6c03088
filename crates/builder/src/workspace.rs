//! Where layer steps happen: a writable snapshot on the parent layer chain, mounted on a
//! scratch directory; COPY/ADD stream their files into it (resolved inside the root by
//! berth-unionfs), RUN runs its command in an isolated container on it (berth-namespaces:
//! Docker's default namespaces, capabilities, seccomp; the host's network, as `docker build`
//! gives one), and the snapshot's diff against its parent becomes the layer. Committed
//! snapshots are named by chain id, so images built here are already unpacked.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_api::Digest;
use berth_namespaces::{CreateOptions, Runtime, Stdio};
use berth_unionfs::fsroot::RootDir;
use berth_unionfs::{ApplyOptions, DiffOptions, MountGuard, Snapshotter};
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag};
use nix::sys::stat::{SFlag, fstatat};
use oci_spec::image::MediaType;
use oci_spec::runtime::LinuxNamespaceType;

use crate::builder::{TarWriter, chain_id};
use crate::error::{Error, Result};
use berth_image::manifest::descriptor;
use berth_image::store::{ImageStore, Layer};
use berth_namespaces::process::ProcessConfig;
use berth_namespaces::user::resolve_user;

/// The message of a RUN step stopped by [`crate::Cancel`].
pub(crate) const CANCELLED: &str = "cancelled";

/// What a RUN step executes.
#[derive(Debug, Clone)]
pub(crate) struct RunSpec {
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<String>,
    pub(crate) cwd: String,
    pub(crate) user: String,
    /// `RUN --mount`s.
    pub(crate) mounts: Vec<oci_spec::runtime::Mount>,
}

/// The snapshotter layer steps use, the runtime that runs RUN steps, and a scratch directory
/// for mount points.
#[derive(Clone)]
pub struct Workspace {
    snapshotter: Arc<dyn Snapshotter>,
    runtime: Runtime,
    scratch: PathBuf,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("snapshots", &self.snapshotter.root())
            .field("scratch", &self.scratch)
            .finish()
    }
}

fn snap_err(key: &str) -> impl FnOnce(berth_unionfs::Error) -> Error + '_ {
    move |source| Error::Snapshot {
        key: key.to_owned(),
        source,
    }
}

impl Workspace {
    /// Layer steps use `snapshotter` (committed layers are named by their chain id, as the image
    /// store's unpack names them), RUN steps `runtime` (its init binary must be able to run), and
    /// mount points live under `scratch`.
    pub fn new(
        snapshotter: Arc<dyn Snapshotter>,
        runtime: Runtime,
        scratch: impl Into<PathBuf>,
    ) -> Workspace {
        Workspace {
            snapshotter,
            runtime,
            scratch: scratch.into(),
        }
    }

    /// The snapshotter.
    pub fn snapshotter(&self) -> &Arc<dyn Snapshotter> {
        &self.snapshotter
    }

    /// Makes sure the committed snapshot chain of `layers` exists (unpacking what is missing
    /// from the content store) and returns the top key; `None` for no layers.
    pub(crate) fn ensure_chain(
        &self,
        store: &ImageStore,
        layers: &[Layer],
    ) -> Result<Option<String>> {
        let mut parent: Option<String> = None;
        for i in 0..layers.len() {
            let key = chain_id(&layers[..=i])
                .expect("at least one layer")
                .to_string();
            if self.snapshotter.stat(&key).is_err() {
                let mut tar = open_layer(store, &layers[i])?;
                match self.snapshotter.unpack_layer(
                    &key,
                    parent.as_deref(),
                    &mut tar,
                    &ApplyOptions::default(),
                ) {
                    Ok(_) | Err(berth_unionfs::Error::AlreadyExists { .. }) => {}
                    Err(source) => return Err(Error::Snapshot { key, source }),
                }
            }
            parent = Some(key);
        }
        Ok(parent)
    }

    /// Collects what builds killed in the middle of a layer step left behind (their RUN
    /// container with its processes, cgroups and runtime state, the overlay mount, the writable
    /// snapshot and the scratch directory), as the engine collects dead containers' snapshots.
    /// A live build holds an exclusive `flock` on its scratch directory, so it is never touched.
    /// Returns the keys collected.
    pub fn collect_leftovers(&self) -> Vec<String> {
        let mut collected = Vec::new();
        let Ok(entries) = fs::read_dir(&self.scratch) else {
            return collected;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = name.strip_prefix(".new-").unwrap_or(&name).to_owned();
            if !key.starts_with("build-") {
                continue;
            }
            let dir = entry.path();
            let Ok(file) = File::open(&dir) else {
                continue;
            };
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue; // a live build
            };
            if let Ok(container) = self.runtime.load(&key) {
                let _ = container.delete(true);
            }
            let rootfs = dir.join("rootfs");
            while nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
            let _ = self.snapshotter.remove(&key);
            use std::os::unix::fs::MetadataExt;
            let mounted = match (fs::metadata(&dir), fs::metadata(&rootfs)) {
                (Ok(d), Ok(r)) => d.dev() != r.dev(),
                _ => false,
            };
            if !mounted {
                let _ = fs::remove_dir_all(&dir);
            }
            drop(lock);
            tracing::info!(key, "collected the leftovers of an interrupted build");
            collected.push(key);
        }
        collected
    }

    /// Prepares and mounts a writable snapshot on `parent`.
    pub(crate) fn begin(&self, parent: Option<&str>, timestamp: u64) -> Result<Active<'_>> {
        let key = format!("build-{}-{}", std::process::id(), unique());
        let dir = self.scratch.join(&key);
        // Locked before it gets its name, so a collector never sees it unlocked.
        let new = self.scratch.join(format!(".new-{key}"));
        fs::create_dir_all(&new).map_err(Error::io("create", &new))?;
        let lock = File::open(&new)
            .map_err(Error::io("open", &new))
            .and_then(|f| {
                Flock::lock(f, FlockArg::LockExclusiveNonblock)
                    .map_err(|(_, e)| Error::io("lock", &new)(e.into()))
            });
        let lock = match lock {
            Ok(lock) => lock,
            Err(e) => {
                let _ = fs::remove_dir(&new);
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&new, &dir) {
            let _ = fs::remove_dir(&new);
            return Err(Error::io("rename", &new)(e));
        }
        let mut active = Active {
            _lock: lock,
            workspace: self,
            key: key.clone(),
            dir,
            guard: None,
            prepared: false,
            timestamp,
        };
        let rootfs = active.dir.join("rootfs");
        fs::create_dir(&rootfs).map_err(Error::io("create", &rootfs))?;
        let mounts = self
            .snapshotter
            .prepare(&key, parent)
            .map_err(snap_err(&key))?;
        active.prepared = true;
        active.guard = Some(MountGuard::mount(&mounts, &rootfs).map_err(snap_err(&key))?);
        Ok(active)
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(nanos) << 16) ^ N.fetch_add(1, Ordering::Relaxed)
}

/// A layer blob as a plain tar stream (decompressed as its media type says).
fn open_layer(store: &ImageStore, layer: &Layer) -> Result<Box<dyn Read>> {
    let digest = berth_image::manifest::descriptor_digest(&layer.descriptor)
        .map_err(|e| Error::Image(Box::new(e)))?;
    let file = store
        .content()
        .open_blob(&digest)
        .map_err(|e| Error::Image(Box::new(e)))?;
    let file = std::io::BufReader::new(file);
    let compression = berth_image::manifest::layer_compression(layer.descriptor.media_type())
        .map_err(|e| Error::Image(Box::new(e)))?;
    Ok(match compression {
        berth_image::Compression::None => Box::new(file),
        berth_image::Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        berth_image::Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(file)
                .map_err(Error::io("decompress", format!("layer {digest}")))?,
        ),
    })
}

/// A mounted writable snapshot; removed on drop unless [`Active::finish`]ed.
pub(crate) struct Active<'w> {
    /// Held while the step runs: tells [`Workspace::collect_leftovers`] the build is alive.
    _lock: Flock<File>,
    workspace: &'w Workspace,
    key: String,
    dir: PathBuf,
    guard: Option<MountGuard>,
    prepared: bool,
    timestamp: u64,
}

impl Active<'_> {
    /// The mounted root.
    pub(crate) fn root(&self) -> &Path {
        self.guard.as_ref().map_or(&self.dir, |g| g.target())
    }

    /// Streams the tar `write` produces into the root (paths resolved inside it).
    pub(crate) fn apply(&self, write: TarWriter<'_>) -> std::result::Result<(), String> {
        let (reader, mut writer) = std::io::pipe().map_err(|e| e.to_string())?;
        let root = self.root().to_owned();
        std::thread::scope(|s| {
            let applier = s.spawn(move || {
                berth_unionfs::layer::apply(reader, &root, &ApplyOptions::default())
            });
            let written = write(&mut writer);
            drop(writer);
            let applied = applier
                .join()
                .map_err(|_| "the layer writer panicked".to_owned())?;
            applied.map_err(|e| crate::error_chain(&e))?;
            written.map_err(|e| e.to_string())
        })
    }

    /// Runs `run` in a container on the root; its output goes to `progress`. Returns the exit
    /// code (128+n for signal n).
    ///
    /// When `cancel` is set while the command runs, the container is signalled (SIGTERM), its
    /// cgroup killed after a short grace, and deleted; the error is then "cancelled".
    pub(crate) fn run(
        &self,
        run: &RunSpec,
        progress: &mut dyn Write,
        cancel: &crate::Cancel,
    ) -> std::result::Result<i32, String> {
        let root = self.root().to_owned();
        // The working directory exists before the command starts (as WORKDIR promises).
        let workdir = crate::builder::clean_in_root(&run.cwd);
        let dirs = missing_dirs(&root, &workdir);
        if !dirs.is_empty() {
            self.apply(Box::new(move |out: &mut dyn Write| {
                let mut b = tar::Builder::new(out);
                for d in &dirs {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{d}/"), std::io::empty())?;
                }
                b.into_inner()?.flush()
            }))?;
        }
        let user = resolve_user(&root, &run.user)?;
        let process = ProcessConfig {
            args: run.args.clone(),
            env: run.env.clone(),
            cwd: format!("/{workdir}"),
            user,
            terminal: false,
        };
        let mut spec = berth_namespaces::process::spec(&root, "berth-build", &process)
            .map_err(|e| crate::error_chain(&e))?;
        if !run.mounts.is_empty() {
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            mounts.extend(run.mounts.iter().cloned());
            spec.set_mounts(Some(mounts));
        }
        // Mount points the runtime creates must not end up in the layer.
        let mount_points: Vec<String> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| crate::builder::clean_in_root(&m.destination().to_string_lossy()))
            .filter(|p| !p.is_empty() && !exists_in_root(&root, p))
            .collect();
        if let Some(linux) = spec.linux_mut() {
            let namespaces = linux.namespaces().clone().unwrap_or_default();
            linux.set_namespaces(Some(
                namespaces
                    .into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::Network)
                    .collect(),
            ));
            linux.set_cgroups_path(Some(format!("/berth/{}", self.key).into()));
        }

        let (reader, writer) = std::io::pipe().map_err(|e| e.to_string())?;
        let stdout: OwnedFd = writer.into();
        let stderr = stdout.try_clone().map_err(|e| e.to_string())?;
        let stdin: OwnedFd = File::open("/dev/null").map_err(|e| e.to_string())?.into();
        let options = CreateOptions {
            stdio: Stdio::Fds {
                stdin,
                stdout,
                stderr,
            },
            ..Default::default()
        };
        let mut container = self
            .workspace
            .runtime
            .create_from_spec(&self.key, &self.dir, spec, options)
            .map_err(|e| crate::error_chain(&e))?;
        let result = (|| {
            container.start().map_err(|e| crate::error_chain(&e))?;
            let mut reader = reader;
            let mut buf = [0u8; 8192];
            loop {
                if cancel.is_cancelled() {
                    let _ = progress.flush();
                    let _ = container.stop(std::time::Duration::from_secs(1));
                    return Err(CANCELLED.to_owned());
                }
                let mut fds = [nix::poll::PollFd::new(
                    reader.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)) {
                    Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                    Ok(_) => {}
                    Err(_) => break,
                }
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let _ = progress.write_all(&buf[..n]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = progress.flush();
            container
                .wait()
                .map(|s| s.code())
                .map_err(|e| crate::error_chain(&e))
        })();
        let deleted = container.delete(true).map_err(|e| crate::error_chain(&e));
        let code = result?;
        deleted?;
        for point in mount_points.iter().rev() {
            remove_empty_dir_in_root(&root, point);
        }
        Ok(code)
    }

    /// Unmounts, writes the diff as a layer blob (uncompressed, fixed timestamps) and commits the
    /// snapshot under the new chain id (`parent_chain` + the layer).
    pub(crate) fn finish(
        mut self,
        store: &ImageStore,
        parent_chain: Option<&Digest>,
        written: &std::sync::Mutex<Vec<Digest>>,
    ) -> Result<Layer> {
        if let Some(guard) = self.guard.take() {
            guard.unmount().map_err(snap_err(&self.key))?;
        }
        let snapshotter = &self.workspace.snapshotter;
        let mut writer = store
            .content()
            .begin_write()
            .map_err(|e| Error::Image(Box::new(e)))?;
        snapshotter
            .diff(
                &self.key,
                &mut writer,
                &DiffOptions::new().with_mtime(Some(self.timestamp)),
            )
            .map_err(snap_err(&self.key))?;
        let info = writer
            .commit_computed()
            .map_err(|e| Error::Image(Box::new(e)))?;
        written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(info.digest.clone());
        let chain = match parent_chain {
            None => info.digest.clone(),
            Some(parent) => Digest::sha256(format!("{parent} {}", info.digest).as_bytes()),
        }
        .to_string();
        if snapshotter.stat(&chain).is_err() {
            match snapshotter.commit(&chain, &self.key) {
                Ok(()) => self.prepared = false,
                // Another build committed the same layer first: ours is a duplicate.
                Err(berth_unionfs::Error::AlreadyExists { .. }) => {}
                Err(source) => return Err(Error::Snapshot { key: chain, source }),
            }
        }
        Ok(Layer {
            descriptor: descriptor(MediaType::ImageLayer, &info.digest, info.size),
            diff_id: info.digest,
        })
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            let _ = guard.unmount();
        }
        if self.prepared {
            let _ = self.workspace.snapshotter.remove(&self.key);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn open_in_root(root: &Path, rel: &str, flags: OFlag) -> Option<OwnedFd> {
    RootDir::open(root)
        .ok()?
        .open_at(Path::new(rel), flags)
        .ok()
}

/// Whether `rel` (root-relative) is a directory inside `root`, symlinks resolved in the root.
pub(crate) fn is_dir_in_root(root: &Path, rel: &str) -> bool {
    open_in_root(root, rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY).is_some()
}

fn exists_in_root(root: &Path, rel: &str) -> bool {
    open_in_root(root, rel, OFlag::O_PATH).is_some()
}

/// The ancestors of `rel` (and `rel` itself) that do not exist in `root`, outermost first.
pub(crate) fn missing_dirs(root: &Path, rel: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let mut prefix = String::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        if !missing.is_empty() || !exists_in_root(root, &prefix) {
            missing.push(prefix.clone());
        }
    }
    missing
}

/// Removes the directory `rel` inside `root` if it is (still) an empty directory.
fn remove_empty_dir_in_root(root: &Path, rel: &str) {
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    let Some(dir) = open_in_root(root, parent, OFlag::O_DIRECTORY | OFlag::O_RDONLY) else {
        return;
    };
    let is_dir = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| {
        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
    });
    if is_dir {
        // Fails (and is left alone) when the command put something there.
        let _ = nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::RemoveDir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_root_lookups_follow_links_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("/usr/bin", root.path().join("bin")).unwrap();
        std::os::unix::fs::symlink("/tmp", root.path().join("escape")).unwrap();
        assert!(is_dir_in_root(root.path(), "bin"));
        assert!(is_dir_in_root(root.path(), ""));
        assert_eq!(
            missing_dirs(root.path(), "bin/sub/deeper"),
            ["bin/sub", "bin/sub/deeper"]
        );
        assert_eq!(missing_dirs(root.path(), "usr/bin"), Vec::<String>::new());
        // /tmp exists on the host, but not inside the root.
        assert!(!is_dir_in_root(root.path(), "escape"));
        fs::create_dir(root.path().join("empty")).unwrap();
        remove_empty_dir_in_root(root.path(), "empty");
        assert!(!root.path().join("empty").exists());
        remove_empty_dir_in_root(root.path(), "usr");
        assert!(root.path().join("usr").exists());
    }
}
