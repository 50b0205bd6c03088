//! What the agent keeps on the host for a pod, and the blocking operations on it: the pod's
//! directory and cgroup, its sandbox (pause) process, and each container attempt (image,
//! writable snapshot mounted as rootfs, OCI spec, shim).
//!
//! Layout under the node root:
//! ```text
//! engine/                      images and snapshots (berth-engine)
//! runtime/                     the runtime's container state (berth-namespaces)
//! pods/<uid>/pod.json          namespace, name, uid
//! pods/<uid>/sandbox.json      the pause process (pid + start time)
//! pods/<uid>/volumes/<name>/   emptyDir, configMap, secret, projected volumes
//! pods/<uid>/containers/<name>/<attempt>/  shim.json, config.json, state.json, rootfs/
//! logs/<ns>_<pod>_<uid>/<container>/<attempt>.log
//! ```

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcessStdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_cgroups::CgroupManager;
use berth_engine::Engine;
use berth_image::Reference;
use berth_namespaces::{Runtime, Signal};
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::shim::{PAUSE_ENV, SHIM_ENV, ShimConfig, ShimState};

/// The node's local machinery, shared by every pod worker.
pub struct Host {
    /// The configuration.
    pub config: NodeConfig,
    /// Images and snapshots.
    pub engine: Engine,
    /// The container runtime (state under `<root>/runtime`).
    pub runtime: Runtime,
    /// Serialises image pulls and unpacks (one per node, shared by pods).
    pub(crate) image_lock: tokio::sync::Mutex<()>,
    /// The pod network (berth-net), configured once the Node has a pod subnet.
    pub network: crate::network::NodeNetwork,
    /// Pods to evict: uid -> message.
    evictions: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Identity of a pod on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// A pod's pause process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// Its pid.
    pub pid: i32,
    /// Its start time (clock ticks since boot), so a recycled pid is never taken for it.
    pub start_time: u64,
}

impl Sandbox {
    /// True while the pause process lives.
    pub fn alive(&self) -> bool {
        berth_engine::state::process_start_time(self.pid) == Some(self.start_time)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::State {
                path: path.to_owned(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path)(e)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::State {
        path: path.to_owned(),
        source,
    })?;
    std::fs::write(&tmp, bytes).map_err(Error::io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("rename", path))
}

/// Reads one line a child reports on stdout (up to 64 KiB).
fn read_report(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).take(64 * 1024).read_line(&mut line);
    }
    line.trim().to_owned()
}

impl Host {
    /// Opens the node's state under `config.root`.
    pub fn open(config: NodeConfig) -> Result<Host> {
        std::fs::create_dir_all(config.root.join("pods"))
            .map_err(Error::io("create", config.root.join("pods")))?;
        let engine = Engine::open(config.root.join("engine"))?;
        let runtime =
            Runtime::new(config.root.join("runtime")).with_cgroup_root(&config.cgroup_root);
        let network = crate::network::NodeNetwork::new(&config);
        Ok(Host {
            network,
            config,
            engine,
            runtime,
            image_lock: tokio::sync::Mutex::new(()),
            evictions: Default::default(),
        })
    }

    /// Marks pod `uid` for eviction with `message`; its worker kills it.
    pub fn evict(&self, uid: &str, message: String) {
        self.evictions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_owned(), message);
    }

    /// Whether pod `uid` was marked for eviction.
    pub fn is_evicted(&self, uid: &str) -> bool {
        self.eviction(uid).is_some()
    }

    /// The eviction message of pod `uid`, if it was marked.
    pub fn eviction(&self, uid: &str) -> Option<String> {
        self.evictions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    /// `<root>/pods/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.config.root.join("pods").join(uid)
    }

    /// The pods with a directory on this node.
    pub fn pods_on_disk(&self) -> Vec<PodRecord> {
        let Ok(entries) = std::fs::read_dir(self.config.root.join("pods")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                read_json::<PodRecord>(&e.path().join("pod.json"))
                    .ok()
                    .flatten()
            })
            .collect()
    }

    /// Records a pod's identity (creating its directory).
    pub fn record_pod(&self, pod: &PodRecord) -> Result<()> {
        let dir = self.pod_dir(&pod.uid);
        std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        write_json(&dir.join("pod.json"), pod)
    }

    /// The directory of a container's logs.
    pub fn log_dir(&self, pod: &PodRecord, container: &str) -> PathBuf {
        self.config
            .root
            .join("logs")
            .join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid))
            .join(container)
    }

    /// The pod's cgroup path (relative to the cgroup root).
    pub fn pod_cgroup(&self, uid: &str, qos: crate::resources::QosClass) -> PathBuf {
        let mut p = self.config.cgroup_parent.join("kubepods");
        if let Some(dir) = qos.cgroup_dir() {
            p = p.join(dir);
        }
        p.join(format!("pod{uid}"))
    }

    /// The pod's cgroup, whichever QoS class it was made under.
    pub fn find_pod_cgroup(&self, uid: &str) -> Option<PathBuf> {
        use crate::resources::QosClass;
        [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ]
        .into_iter()
        .map(|q| self.pod_cgroup(uid, q))
        .find(|p| berth_cgroups::manager(&self.config.cgroup_root, p).is_ok_and(|g| g.exists()))
    }

    /// The containers of a pod whose latest attempt runs: (name, attempt).
    pub fn running_containers(&self, uid: &str) -> Vec<(String, u32)> {
        let dir = self.pod_dir(uid).join("containers");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(a) = self.attempts(uid, &name).last()
                && ShimState::load(&self.container_dir(uid, &name, *a)).is_some_and(|s| !s.exited)
            {
                out.push((name, *a));
            }
        }
        out.sort();
        out
    }

    /// The pod's sandbox recorded on disk.
    pub fn sandbox(&self, uid: &str) -> Option<Sandbox> {
        read_json(&self.pod_dir(uid).join("sandbox.json"))
            .ok()
            .flatten()
    }

    /// Starts the pod's pause process in its cgroup (created with `resources`).
    pub fn start_sandbox(
        &self,
        uid: &str,
        hostname: &str,
        cgroup: &Path,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<Sandbox> {
        let group = berth_cgroups::manager(&self.config.cgroup_root, cgroup)?;
        group.apply(resources)?;
        let exe = std::env::current_exe().map_err(Error::io("find", "/proc/self/exe"))?;
        let mut child = Command::new(&exe)
            .env(PAUSE_ENV, hostname)
            .stdin(ProcessStdio::null())
            .stdout(ProcessStdio::piped())
            .stderr(ProcessStdio::null())
            .spawn()
            .map_err(Error::io("spawn", &exe))?;
        let report = read_report(&mut child);
        let pid = child.id() as i32;
        // The agent reaps the pause process while it lives; after a restart, init does.
        std::thread::spawn(move || child.wait());
        if report != "ready" {
            return Err(Error::Start {
                what: "pod sandbox".into(),
                message: report,
            });
        }
        group.add_process(nix::unistd::Pid::from_raw(pid))?;
        if let Err(e) = self.network.attach(uid, pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            return Err(e);
        }
        let sandbox = Sandbox {
            pid,
            start_time: berth_engine::state::process_start_time(pid).unwrap_or(0),
        };
        write_json(&self.pod_dir(uid).join("sandbox.json"), &sandbox)?;
        Ok(sandbox)
    }

    /// Kills the pause process (if alive) and waits until it is gone.
    pub fn stop_sandbox(&self, uid: &str) {
        if let Some(sb) = self.sandbox(uid)
            && sb.alive()
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sb.pid), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while sb.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = std::fs::remove_file(self.pod_dir(uid).join("sandbox.json"));
        self.network.detach(uid);
    }

    /// Removes a pod cgroup (after every process in it is gone), and its QoS parent when
    /// that is empty.
    pub fn remove_pod_cgroup(&self, cgroup: &Path) {
        if let Ok(group) = berth_cgroups::manager(&self.config.cgroup_root, cgroup)
            && group.exists()
        {
            let _ = group.kill_all(Signal::SIGKILL);
            let _ = group.delete();
        }
        self.prune_cgroup_parents();
    }

    /// Removes the agent's empty parent groups (`besteffort`, `burstable`, `kubepods`, the
    /// node's parent) in every hierarchy, so the host is left as found once no pod runs; a
    /// group still in use stays (rmdir of a non-empty cgroup fails).
    pub fn prune_cgroup_parents(&self) {
        let kubepods = self.config.cgroup_parent.join("kubepods");
        let mut chain = vec![
            kubepods.join("besteffort"),
            kubepods.join("burstable"),
            kubepods,
        ];
        let mut p = self.config.cgroup_parent.clone();
        loop {
            chain.push(p.clone());
            if !p.pop() || p.as_os_str().is_empty() {
                break;
            }
        }
        let mut hierarchies = vec![self.config.cgroup_root.clone()];
        for e in std::fs::read_dir(&self.config.cgroup_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                hierarchies.push(e.path());
            }
        }
        for h in &hierarchies {
            for dir in &chain {
                let _ = std::fs::remove_dir(h.join(dir));
            }
        }
    }

    /// The directory of attempt `attempt` of container `name`.
    pub fn container_dir(&self, uid: &str, name: &str, attempt: u32) -> PathBuf {
        self.pod_dir(uid)
            .join("containers")
            .join(name)
            .join(attempt.to_string())
    }

    /// The attempts of container `name` on disk, in order.
    pub fn attempts(&self, uid: &str, name: &str) -> Vec<u32> {
        let dir = self.pod_dir(uid).join("containers").join(name);
        let mut out: Vec<u32> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        out.sort_unstable();
        out
    }

    /// The runtime id of an attempt.
    pub fn container_id(uid: &str, name: &str, attempt: u32) -> String {
        format!("{uid}-{name}-{attempt}")
    }

    fn snapshot_key(id: &str) -> String {
        format!("node-{id}")
    }

    /// The image of `reference` from the node's store (resolving, not pulling).
    pub fn image(&self, reference: &str) -> Result<berth_image::Image> {
        let r = Reference::parse(reference)?;
        Ok(self.engine.images().image(&r)?)
    }

    /// Unpacks `image`, prepares and mounts a writable snapshot at `<dir>/rootfs`. Returns
    /// the rootfs path.
    pub fn prepare_rootfs(
        &self,
        image: &berth_image::Image,
        dir: &Path,
        id: &str,
    ) -> Result<PathBuf> {
        let snapshotter = self.engine.snapshotter();
        let unpacked = self.engine.images().unpack(image, snapshotter.as_ref())?;
        let key = Self::snapshot_key(id);
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(Error::io("create", &rootfs))?;
        if snapshotter.stat(&key).is_err() {
            snapshotter.prepare(&key, unpacked.top())?;
        }
        let mounts = snapshotter.mounts(&key)?;
        if let Err(e) = berth_unionfs::mount_all(&mounts, &rootfs) {
            let _ = snapshotter.remove(&key);
            return Err(e.into());
        }
        Ok(rootfs)
    }

    /// Unmounts an attempt's rootfs and removes its snapshot (its state and log stay).
    pub fn release_rootfs(&self, dir: &Path, id: &str) {
        let rootfs = dir.join("rootfs");
        if rootfs.exists() {
            let _ = berth_unionfs::unmount(&rootfs);
            let _ = std::fs::remove_dir(&rootfs);
        }
        let _ = self.engine.snapshotter().remove(&Self::snapshot_key(id));
    }

    /// Starts the shim of the attempt in `dir` (whose `config.json` is written) and waits
    /// for its report.
    pub fn start_shim(&self, dir: &Path, id: &str, log_path: &Path) -> Result<()> {
        let config = ShimConfig {
            id: id.to_owned(),
            runtime_root: self.runtime.state_root().to_owned(),
            cgroup_root: self.config.cgroup_root.clone(),
            log_path: log_path.to_owned(),
            rotation: self.config.log_rotation,
        };
        write_json(&dir.join("shim.json"), &config)?;
        let exe = std::env::current_exe().map_err(Error::io("find", "/proc/self/exe"))?;
        let log = std::fs::File::create(dir.join("shim.log")).map_err(Error::io("create", dir))?;
        let mut child = Command::new(&exe)
            .env(SHIM_ENV, dir)
            .stdin(ProcessStdio::null())
            .stdout(ProcessStdio::piped())
            .stderr(log)
            .spawn()
            .map_err(Error::io("spawn", &exe))?;
        let report = read_report(&mut child);
        std::thread::spawn(move || child.wait());
        if report == "started" {
            Ok(())
        } else {
            Err(Error::Start {
                what: format!("container {id}"),
                message: report.trim_start_matches("error: ").to_owned(),
            })
        }
    }

    /// Stops a running attempt: `signal` (SIGTERM), up to `grace`, then SIGKILL to its whole
    /// cgroup; waits until its shim recorded the exit (10 s at most after the kill).
    pub fn stop_container(&self, dir: &Path, id: &str, grace: Duration) {
        let exited = |d: &Path| ShimState::load(d).is_none_or(|s| s.exited);
        if exited(dir) {
            return;
        }
        if let Ok(c) = self.runtime.load(id) {
            if !grace.is_zero() {
                let _ = c.kill(Signal::SIGTERM);
                let deadline = Instant::now() + grace;
                while !exited(dir) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if !exited(dir) {
                let _ = c.kill_all(Signal::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !exited(dir) && Instant::now() < deadline {
            if let Some(s) = ShimState::load(dir)
                && !shim_alive(&s)
            {
                // The shim died: record the end for it.
                let mut s = s;
                s.exited = true;
                s.exit_code.get_or_insert(137);
                s.finished_at
                    .get_or_insert_with(|| chrono::Utc::now().to_rfc3339());
                let _ = s.save(dir);
                if let Ok(c) = self.runtime.load(id) {
                    let _ = c.delete(true);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes everything of a pod on the host: containers (killed), rootfs mounts and
    /// snapshots, the sandbox, the cgroup, volumes and the pod directory (logs stay until
    /// [`Host::remove_logs`]).
    pub fn remove_pod(&self, uid: &str, cgroup: Option<&Path>) {
        let containers = self.pod_dir(uid).join("containers");
        for entry in std::fs::read_dir(&containers)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            for attempt in self.attempts(uid, &name) {
                let dir = self.container_dir(uid, &name, attempt);
                let id = Self::container_id(uid, &name, attempt);
                self.stop_container(&dir, &id, Duration::ZERO);
                self.release_rootfs(&dir, &id);
            }
        }
        self.stop_sandbox(uid);
        if let Some(cgroup) = cgroup {
            self.remove_pod_cgroup(cgroup);
        } else {
            for qos in [
                crate::resources::QosClass::Guaranteed,
                crate::resources::QosClass::Burstable,
                crate::resources::QosClass::BestEffort,
            ] {
                self.remove_pod_cgroup(&self.pod_cgroup(uid, qos));
            }
        }
        crate::volumes::unmount_all(&self.pod_dir(uid).join("volumes"));
        let _ = std::fs::remove_dir_all(self.pod_dir(uid));
    }

    /// Removes every pod on this node (what `berth cluster down` does once the agent is
    /// stopped): each pod directory's containers, sandbox, cgroups and volumes, then the logs
    /// and the agent's empty cgroup parents. Returns how many pods were removed.
    pub fn remove_all_pods(&self) -> usize {
        let uids: Vec<String> = std::fs::read_dir(self.config.root.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for uid in &uids {
            self.remove_pod(uid, None);
        }
        let _ = std::fs::remove_dir_all(self.config.root.join("logs"));
        self.prune_cgroup_parents();
        uids.len()
    }

    /// Removes a pod's logs.
    pub fn remove_logs(&self, pod: &PodRecord) {
        if let Some(dir) = self.log_dir(pod, "x").parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// True while the shim that wrote `state` lives (a container's state says running only
/// while its shim does).
pub fn shim_alive(state: &ShimState) -> bool {
    state.shim_pid > 0
        && std::fs::read_to_string(format!("/proc/{}/environ", state.shim_pid))
            .is_ok_and(|env| env.split('\0').any(|v| v.starts_with(SHIM_ENV)))
}

/// A host shared by the agent's tasks.
pub type SharedHost = Arc<Host>;
