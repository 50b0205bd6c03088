//! A container's lifecycle in the engine: create (image, snapshot, rootfs, spec, record),
//! start (the runtime container, recorded as running), finish (exit recorded, runtime state and
//! mount gone, `--rm` honoured), clean up, and the listing that corrects records whose reaper
//! died.

use std::fs;
use std::path::{Path, PathBuf};

use berth_image::Reference;
use berth_namespaces::user::resolve_user;
use berth_namespaces::{ContainerHandle, ContainerRuntime, CreateOptions, Stdio};
use oci_spec::runtime::Spec;

use super::{Engine, SNAPSHOT_PREFIX};
use crate::error::{Error, Result};
use crate::options::{BindMount, RunConfig};
use crate::state::{self, Container, Status};

impl<R: ContainerRuntime> Engine<R> {
    /// Creates a container: resolves and unpacks the image, prepares a writable snapshot on it,
    /// mounts it, and writes the OCI spec. Nothing runs yet.
    pub fn create(&self, config: &RunConfig) -> Result<Container> {
        crate::options::validate_run(config)?;
        let reference = Reference::parse(&config.image)?;
        let image = self.images.image(&reference)?;
        let unpacked = self.images.unpack(&image, self.snapshotter.as_ref())?;
        let id = state::new_id()?;
        let name = match &config.name {
            Some(name) => validate_name(name)?,
            None => state::generated_name(&id),
        };
        let image_config = image.config.config().clone().unwrap_or_default();
        let snapshot = format!("{SNAPSHOT_PREFIX}{id}");
        let record = Container {
            id: id.clone(),
            name,
            image: config.image.clone(),
            image_digest: image.digest()?.to_string(),
            command: crate::spec::process_args(&image_config, config),
            created: state::now(),
            status: Status::Created,
            pid: None,
            pid_start_time: None,
            started: None,
            finished: None,
            exit_code: None,
            auto_remove: config.auto_remove,
            detached: false,
            snapshot: snapshot.clone(),
            stop_signal: image_config.stop_signal().clone(),
            error: None,
        };
        {
            // One step with `image rm`'s in-use check: the name must still point at the image
            // when the record appears, or `image rm` could remove it unseen.
            let lock = self.containers.lock_all()?;
            let now = self.images.resolve(&reference)?;
            if berth_image::manifest::descriptor_digest(&now)?
                != berth_image::manifest::descriptor_digest(&image.target)?
            {
                return Err(Error::ImageConfig {
                    image: config.image.clone(),
                    message: "the name was re-pointed at another image while the container was created; try again".into(),
                });
            }
            self.containers.create(&lock, &record)?;
        }
        let made = (|| -> Result<()> {
            self.snapshotter.prepare(&snapshot, unpacked.top())?;
            let rootfs = self.rootfs(&id);
            fs::create_dir_all(&rootfs).map_err(Error::io("create", &rootfs))?;
            self.mount_rootfs(&record)?;
            let user_text = config
                .user
                .clone()
                .or_else(|| image_config.user().clone())
                .unwrap_or_default();
            let user = resolve_user(&rootfs, &user_text).map_err(|message| Error::ImageConfig {
                image: config.image.clone(),
                message,
            })?;
            let config = self.with_anonymous_volumes(&id, &rootfs, &image_config, config)?;
            let mut spec =
                crate::spec::container_spec(&id, &rootfs, &image_config, &config, &user)?;
            let (network, ports) = (config.network.as_ref(), &config.publish);
            crate::network::prepare_spec(&mut spec, &self.container_dir(&id), network, ports)?;
            let path = self.container_dir(&id).join("config.json");
            spec.save(&path)
                .map_err(|e| Error::Spec(format!("{}: {e}", path.display())))?;
            Ok(())
        })();
        if let Err(e) = made {
            let _ = self.cleanup(&record);
            return Err(e);
        }
        Ok(record)
    }

    /// `config` plus a bind mount for each `VOLUME` of the image that no `-v` covers: a new
    /// directory under the container's own, seeded with what the image has at that path (as
    /// Docker's anonymous volumes are). They live as long as the container.
    fn with_anonymous_volumes(
        &self,
        id: &str,
        rootfs: &Path,
        image_config: &oci_spec::image::Config,
        config: &RunConfig,
    ) -> Result<RunConfig> {
        let mut config = config.clone();
        // The image config keeps volumes as a JSON object: sort them, so that a parent
        // directory is mounted before the volumes inside it and the numbering is stable.
        let mut volumes = image_config.volumes().clone().unwrap_or_default();
        volumes.sort();
        volumes.dedup();
        for (index, volume) in volumes.iter().enumerate() {
            let destination = PathBuf::from(volume);
            if !destination.is_absolute() {
                return Err(Error::ImageConfig {
                    image: config.image.clone(),
                    message: format!("VOLUME {volume:?} is not an absolute path"),
                });
            }
            let covered = config
                .binds
                .iter()
                .any(|b| b.destination.components().eq(destination.components()));
            if covered {
                continue;
            }
            let source = self
                .container_dir(id)
                .join("volumes")
                .join(index.to_string());
            if let Some(parent) = source.parent() {
                fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
            }
            berth_unionfs::copy_dir_in_root(rootfs, &destination, &source)?;
            config.binds.push(BindMount {
                source,
                destination,
                readonly: false,
            });
        }
        Ok(config)
    }

    fn mount_rootfs(&self, record: &Container) -> Result<()> {
        let rootfs = self.rootfs(&record.id);
        if is_mount_point(&rootfs) {
            return Ok(());
        }
        let mounts = self.snapshotter.mounts(&record.snapshot)?;
        berth_unionfs::mount_all(&mounts, &rootfs)?;
        Ok(())
    }

    /// Creates the runtime container, starts it and records it as running.
    pub(super) fn start_process(&self, record: &Container, stdio: Stdio) -> Result<R::Container> {
        if record.status != Status::Created {
            return Err(Error::InvalidState {
                id: record.id.clone(),
                status: format!("{:?}", record.status).to_lowercase(),
                message: "only a created container can be started".into(),
            });
        }
        self.mount_rootfs(record)?;
        let dir = self.container_dir(&record.id);
        let config = dir.join("config.json");
        let spec =
            Spec::load(&config).map_err(|e| Error::Spec(format!("{}: {e}", config.display())))?;
        let started = (|| -> Result<R::Container> {
            let mut container = self.runtime.create_from_spec(
                &record.id,
                &dir,
                spec,
                CreateOptions {
                    stdio,
                    ..Default::default()
                },
            )?;
            let pid = container.pid().as_raw();
            if let Err(e) = self.attach_network(&dir, &record.id, &record.name, pid) {
                let _ = container.delete(true);
                return Err(e);
            }
            if let Err(e) = container.start() {
                let _ = container.delete(true);
                self.detach_network(&dir, &record.id);
                return Err(e.into());
            }
            Ok(container)
        })();
        let container = match started {
            Ok(c) => c,
            Err(e) => {
                // `--rm`: a container that never ran is removed too, as Docker does; nothing
                // (record, snapshot, mount) is left to block `image rm`.
                if record.auto_remove {
                    let _ = self.cleanup(record);
                    return Err(e);
                }
                let message = e.to_string();
                let _ = self.containers.update(&record.id, |c| {
                    c.status = Status::Exited;
                    c.exit_code = Some(127);
                    c.finished = Some(state::now());
                    c.error = Some(message);
                });
                let _ = self.unmount_rootfs(&record.id);
                return Err(e);
            }
        };
        let pid = container.pid().as_raw();
        self.containers.update(&record.id, |c| {
            c.status = Status::Running;
            c.pid = Some(pid);
            c.pid_start_time = state::process_start_time(pid);
            c.started = Some(state::now());
        })?;
        Ok(container)
    }

    /// After the process exited: records `code`, deletes the runtime state and cgroup, unmounts
    /// the rootfs; removes everything with `--rm`.
    pub(super) fn finish(&self, id: &str, code: i32) -> Result<()> {
        if let Ok(container) = self.runtime.load(id) {
            let _ = container.delete(true);
        }
        self.detach_network(&self.container_dir(id), id);
        // Unmount before recording the exit: whoever waits for `Exited` finds nothing mounted.
        let unmounted = self.unmount_rootfs(id);
        let record = self.containers.update(id, |c| {
            c.status = Status::Exited;
            c.exit_code = Some(code);
            c.finished = Some(state::now());
            c.pid = None;
            c.pid_start_time = None;
        })?;
        unmounted?;
        if record.auto_remove {
            self.cleanup(&record)?;
        }
        Ok(())
    }

    pub(super) fn unmount_rootfs(&self, id: &str) -> Result<()> {
        let rootfs = self.rootfs(id);
        if is_mount_point(&rootfs) {
            berth_unionfs::unmount(&rootfs)?;
        }
        Ok(())
    }

    /// Removes a stopped container's runtime state, rootfs mount, snapshot and record.
    pub(super) fn cleanup(&self, record: &Container) -> Result<()> {
        self.cleanup_id(&record.id, &record.snapshot)
    }

    /// [`Engine::cleanup`] by id and snapshot key (a record that can't be read has neither
    /// its name nor its snapshot key: the key follows from the id).
    pub(super) fn cleanup_id(&self, id: &str, snapshot: &str) -> Result<()> {
        if let Ok(container) = self.runtime.load(id) {
            container.delete(true)?;
        }
        self.detach_network(&self.container_dir(id), id);
        self.unmount_rootfs(id)?;
        match self.snapshotter.remove(snapshot) {
            Ok(()) | Err(berth_unionfs::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.containers.remove(id)
    }

    /// reaper died are corrected to exited. Containers whose record can't be read are left
    /// out: [`Engine::ps_all`] reports them.
    pub fn ps(&self, all: bool) -> Result<Vec<Container>> {
        Ok(self.ps_all(all)?.containers)
    }

    /// [`Engine::ps`], and every container directory whose record can't be read (whatever
    /// `all` says: it may be running). `rm -f` removes those.
    pub fn ps_all(&self, all: bool) -> Result<state::Listing> {
        let listing = self.containers.list_all()?;
        let mut out = Vec::new();
        for mut c in listing.containers {
            if c.status == Status::Running && !self.is_running(&c) {
                c = self.containers.update(&c.id, |c| {
                    if c.status == Status::Running && !self.is_running(c) {
                        c.status = Status::Exited;
                        c.exit_code.get_or_insert(255);
                        c.finished.get_or_insert(state::now());
                    }
                })?;
            }
            if all || c.status == Status::Running {
                out.push(c);
            }
        }
        Ok(state::Listing {
            containers: out,
            unreadable: listing.unreadable,
        })
    }

    /// Finds a container by id, id prefix or name.
    pub fn inspect(&self, key: &str) -> Result<Container> {
        self.containers.find(key)
    }
}

/// Docker's name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn validate_name(name: &str) -> Result<String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if !ok {
        return Err(Error::Option {
            option: "--name",
            value: name.to_owned(),
            reason: "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed".into(),
        });
    }
    Ok(name.to_owned())
}

fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Some(parent)) = (fs::symlink_metadata(path), path.parent()) else {
        return false;
    };
    let Ok(parent_meta) = fs::metadata(parent) else {
        return false;
    };
    // A different device, or the same inode as the parent (a bind of the parent's fs root).
    meta.dev() != parent_meta.dev()
        || fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
            let wanted = path.to_string_lossy();
            info.lines()
                .any(|l| l.split(' ').nth(4) == Some(wanted.as_ref()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("web-1.a_b").is_ok());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("").is_err());
    }
}
