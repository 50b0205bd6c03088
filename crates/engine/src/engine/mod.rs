//! The [`Engine`]: images become snapshots become running containers. One state root holds
//! everything: `image/` (the image store), `snapshots/` (the snapshotter), `runtime/` (the
//! runtime's per-container state) and `containers/` (the engine's records, logs and rootfs
//! mount points).
//!
//! A container's process is always reaped by the process that started it: the caller of
//! [`Engine::run`] in the foreground, or a monitor process for detached containers (the caller
//! says how to start one, see [`MonitorCommand`]; it calls [`Engine::monitor`]). The reaper
//! records the exit code, deletes the runtime state and cgroup, and unmounts the rootfs.
//!
//! The methods live by concern: `lifecycle` (create, start, finish, clean up, list), `run`
//! (foreground and detached runs, the monitor, [`Attached`]) and `control` (exec, stop,
//! remove).

mod control;
mod lifecycle;
mod run;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_builder::{Builder, Workspace};
use berth_image::ImageStore;
use berth_namespaces::Runtime;
use berth_unionfs::Snapshotter;

use crate::error::{Error, Result};
use crate::state::{self, StateDir};

pub use control::parse_signal;
pub use run::{Attached, MonitorCommand};

/// The single-host engine over one state root.
pub struct Engine {
    root: PathBuf,
    images: ImageStore,
    snapshotter: Arc<dyn Snapshotter>,
    runtime: Runtime,
    containers: StateDir,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

const SNAPSHOT_PREFIX: &str = "container-";

impl Engine {
    /// Opens (creating) the engine state under `root`. Containers run through a runtime whose
    /// init binary is the current executable (whose `main` must call
    /// `berth_namespaces::init::main_if_init`); see [`Engine::with_runtime`].
    pub fn open(root: impl Into<PathBuf>) -> Result<Engine> {
        let root = root.into();
        let images = ImageStore::open(root.join("image"))?;
        let snapshotter: Arc<dyn Snapshotter> =
            Arc::from(berth_unionfs::open(root.join("snapshots"))?);
        let runtime = Runtime::new(root.join("runtime"));
        let containers = StateDir::open(root.join("containers"))?;
        Ok(Engine {
            root,
            images,
            snapshotter,
            runtime,
            containers,
        })
    }

    /// Uses `runtime` (another init binary, cgroup root or parent) to run containers. Its state
    /// root should stay `<root>/runtime` unless every user of this root agrees.
    pub fn with_runtime(mut self, runtime: Runtime) -> Engine {
        self.runtime = runtime;
        self
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image store (`<root>/image`).
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The snapshotter (`<root>/snapshots`).
    pub fn snapshotter(&self) -> &Arc<dyn Snapshotter> {
        &self.snapshotter
    }

    /// The runtime containers run through.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// A Dockerfile builder on this root: images go to the image store, layers are built in
    /// the snapshotter (so built images need no unpack to run), RUN steps go through the
    /// runtime, and the layer cache lives in `<root>/build/cache`.
    pub fn builder(&self) -> Result<Builder> {
        let workspace = Workspace::new(
            self.snapshotter.clone(),
            self.runtime.clone(),
            self.root.join("build/work"),
        );
        Builder::new(
            self.images.clone(),
            workspace,
            &self.root.join("build/cache"),
        )
        .map_err(|e| Error::Build(Box::new(e)))
    }

    /// The lock container creation takes (see [`state::StateLock`]).
    pub(crate) fn containers_lock(&self) -> Result<state::StateLock> {
        self.containers.lock_all()
    }

    /// The directory of container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers.container_dir(id)
    }

    /// The log file of a detached container.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("container.log")
    }

    fn rootfs(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("rootfs")
    }
}
