//! Base images made from host files, for a machine that cannot download any.
//!
//! [`BaseImage`] collects host files, directories and symlinks at chosen paths and writes them as
//! one reproducible layer (entries sorted, owner root, timestamps zero) on top of `scratch`.
//! [`BaseImage::busybox`] is the common case: a static busybox at `/bin/busybox` with a symlink
//! for every applet it lists, and `sh` as the command.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use oci_spec::image::{ConfigBuilder, Descriptor, ImageConfiguration, ImageConfigurationBuilder};

use crate::error::{Error, Result};
use crate::manifest::Compression;
use crate::reference::Reference;
use crate::store::ImageStore;

/// The `PATH` Docker images conventionally set.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone)]
enum Entry {
    File { source: PathBuf, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// A single-layer image assembled from host files.
#[derive(Debug, Clone)]
pub struct BaseImage {
    entries: BTreeMap<PathBuf, Entry>,
    config: ImageConfiguration,
    compression: Compression,
}

impl Default for BaseImage {
    fn default() -> Self {
        Self::new()
    }
}

impl BaseImage {
    /// An empty image (`scratch`) with `PATH` set and the host's platform.
    pub fn new() -> Self {
        let config = ImageConfigurationBuilder::default()
            .config(
                ConfigBuilder::default()
                    .env(vec![DEFAULT_PATH.to_owned()])
                    .build()
                    .expect("a config with only env builds"),
            )
            .build()
            .expect("a default image configuration builds");
        BaseImage {
            entries: BTreeMap::new(),
            config,
            compression: Compression::Gzip,
        }
    }

    /// A busybox image: `busybox` (a static binary) at `/bin/busybox`, a symlink for each applet
    /// `busybox --list-full` names, the usual empty directories, and `CMD ["sh"]`.
    pub fn busybox(busybox: &Path) -> Result<Self> {
        let output = Command::new(busybox)
            .arg("--list-full")
            .output()
            .map_err(|e| Error::io("run", busybox, e))?;
        if !output.status.success() {
            return Err(Error::io(
                "run",
                busybox,
                std::io::Error::other(format!("`--list-full` exited with {}", output.status)),
            ));
        }
        let mut image = BaseImage::new().file(busybox, "/bin/busybox")?;
        for applet in String::from_utf8_lossy(&output.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "bin/busybox" {
                continue;
            }
            image = image.symlink(&format!("/{applet}"), "/bin/busybox")?;
        }
        for dir in [
            "/tmp", "/etc", "/root", "/proc", "/sys", "/dev", "/var", "/home",
        ] {
            image = image.dir(dir, if dir == "/tmp" { 0o1777 } else { 0o755 })?;
        }
        let mut config = image.config.clone();
        let mut inner = config.config().clone().unwrap_or_default();
        inner.set_cmd(Some(vec!["sh".to_owned()]));
        config.set_config(Some(inner));
        Ok(image.with_config(config))
    }

    /// Adds the host file `source` at `path` in the image, keeping its permission bits.
    pub fn file(mut self, source: impl AsRef<Path>, path: &str) -> Result<Self> {
        let source = source.as_ref();
        let meta = fs::metadata(source).map_err(|e| Error::io("stat", source, e))?;
        if !meta.is_file() {
            return Err(Error::io(
                "add",
                source,
                std::io::Error::other("not a regular file"),
            ));
        }
        let key = image_path(path)?;
        self.entries.insert(
            key,
            Entry::File {
                source: source.to_path_buf(),
                mode: meta.permissions().mode() & 0o7777,
            },
        );
        Ok(self)
    }

    /// Adds a directory at `path` with `mode`.
    pub fn dir(mut self, path: &str, mode: u32) -> Result<Self> {
        self.entries.insert(
            image_path(path)?,
            Entry::Dir {
                mode: mode & 0o7777,
            },
        );
        Ok(self)
    }

    /// Adds a symlink at `path` pointing at `target`.
    pub fn symlink(mut self, path: &str, target: &str) -> Result<Self> {
        self.entries.insert(
            image_path(path)?,
            Entry::Symlink {
                target: target.to_owned(),
            },
        );
        Ok(self)
    }

    /// Replaces the image config (its `rootfs` is filled in when the image is committed).
    pub fn with_config(mut self, config: ImageConfiguration) -> Self {
        self.config = config;
        self
    }

    /// Chooses the layer compression (gzip by default).
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// The image config as it stands.
    pub fn config(&self) -> &ImageConfiguration {
        &self.config
    }

    /// Writes the layer tar to `out`: parents first, sorted, root-owned, timestamps zero.
    pub fn write_tar(&self, out: impl std::io::Write) -> Result<()> {
        let mut all: BTreeMap<PathBuf, Entry> = BTreeMap::new();
        for path in self.entries.keys() {
            let mut parent = path.parent();
            while let Some(p) = parent {
                if !p.as_os_str().is_empty() {
                    all.entry(p.to_path_buf())
                        .or_insert(Entry::Dir { mode: 0o755 });
                }
                parent = p.parent();
            }
        }
        for (path, entry) in &self.entries {
            all.insert(path.clone(), entry.clone());
        }
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e| Error::io("write layer entry", path, e)
        };
        for (path, entry) in &all {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match entry {
                Entry::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    let mut dir = path.clone().into_os_string();
                    dir.push("/");
                    tar.append_data(&mut header, Path::new(&dir), std::io::empty())
                        .map_err(io_err(path))?;
                }
                Entry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)
                        .map_err(io_err(path))?;
                }
                Entry::File { source, mode } => {
                    let file = File::open(source).map_err(|e| Error::io("open", source, e))?;
                    let len = file
                        .metadata()
                        .map_err(|e| Error::io("stat", source, e))?
                        .len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(len);
                    tar.append_data(&mut header, path, file)
                        .map_err(io_err(path))?;
                }
            }
        }
        tar.into_inner()
            .map_err(|e| Error::io("finish layer", PathBuf::from("<tar>"), e))?;
        Ok(())
    }

    /// Stores the layer, config and manifest in `store`, names the image `name` if given, and
    /// returns the manifest descriptor. The same inputs always give the same digest.
    pub fn commit(&self, store: &ImageStore, name: Option<&Reference>) -> Result<Descriptor> {
        let _lease = store.lease()?;
        let (temp, mut file) = store.content().temp_file()?;
        let result = (|| {
            self.write_tar(&mut file)?;
            file.seek(SeekFrom::Start(0))
                .map_err(|e| Error::io("seek", &temp, e))?;
            let layer = store.add_layer(&mut file, self.compression)?;
            let descriptor = store.commit_image(self.config.clone(), &[layer])?;
            if let Some(name) = name {
                store.tag(name, &descriptor)?;
            }
            Ok(descriptor)
        })();
        let _ = fs::remove_file(&temp);
        result
    }
}

/// Normalises an absolute image path to a relative tar path, refusing `..`.
fn image_path(path: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(c) => out.push(c),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::InvalidArchive {
                    reason: format!("image path {path:?} leaves the root"),
                });
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Error::InvalidArchive {
            reason: format!("image path {path:?} names the root"),
        });
    }
    Ok(out)
}
