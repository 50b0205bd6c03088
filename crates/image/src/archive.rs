//! `docker save`-style tar archives: import and export.
//!
//! The archive holds `manifest.json` (a list of `{Config, RepoTags, Layers}` naming files in the
//! archive), the config JSON files and uncompressed layer tars (`<id>/layer.tar`, or
//! `blobs/sha256/<hex>` in archives written by Docker 25 and later). Import streams every file of
//! the archive into the content store once (a tar can only be read in order, and `manifest.json`
//! may come last), then builds an OCI manifest for each image; blobs it added that no image uses
//! are removed again, and if the import fails, every blob it added is. Entry names are only ever
//! keys in a table: nothing is written to the file system by name.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use berth_api::Digest;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifestBuilder, MediaType};
use serde::{Deserialize, Serialize};

use crate::content::{BlobInfo, MAX_JSON_SIZE};
use crate::error::{Error, Result};
use crate::manifest::{Compression, canonical_json, descriptor, descriptor_digest};
use crate::reference::Reference;
use crate::store::{Image, ImageStore};
use crate::unpack::decompressor;

/// One entry of `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// An image read from an archive.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveImage {
    /// The names it was given (from `RepoTags`, or the name the caller chose).
    pub names: Vec<Reference>,
    /// Its manifest.
    pub descriptor: Descriptor,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidArchive {
        reason: reason.into(),
    }
}

/// Normalises an archive entry name (`./a/../b` is refused; `./a/b` becomes `a/b`).
fn entry_name(path: &Path) -> Result<String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => {
                return Err(invalid(format!(
                    "entry {} leaves the archive",
                    path.display()
                )));
            }
        }
    }
    out.into_os_string()
        .into_string()
        .map_err(|_| invalid("entry name is not UTF-8"))
}

impl ImageStore {
    /// Imports a `docker save` archive. With `name`, the archive must hold exactly one image,
    /// which gets that name; otherwise images are named by their `RepoTags` (and stay unnamed,
    /// i.e. collectable, without any).
    pub fn import_archive(
        &self,
        archive: impl Read,
        name: Option<&Reference>,
    ) -> Result<Vec<ArchiveImage>> {
        let _lease = self.lease()?;
        let mut added: Vec<Digest> = Vec::new();
        let result = self.import_archive_inner(archive, name, &mut added);
        match &result {
            Ok((_, used)) => {
                for d in added.iter().filter(|d| !used.contains(*d)) {
                    let _ = self.content().delete(d);
                }
            }
            Err(_) => {
                for d in &added {
                    let _ = self.content().delete(d);
                }
            }
        }
        result.map(|(images, _)| images)
    }

    fn import_archive_inner(
        &self,
        archive: impl Read,
        name: Option<&Reference>,
        added: &mut Vec<Digest>,
    ) -> Result<(Vec<ArchiveImage>, HashSet<Digest>)> {
        let mut files: HashMap<String, BlobInfo> = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        let mut small: HashMap<String, Vec<u8>> = HashMap::new();
        let mut tar = tar::Archive::new(archive);
        let archive_err = |e: io::Error| invalid(format!("read archive: {e}"));
        for entry in tar.entries().map_err(archive_err)? {
            let mut entry = entry.map_err(archive_err)?;
            let path = entry.path().map_err(archive_err)?.into_owned();
            let name = entry_name(&path)?;
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    if (size <= MAX_JSON_SIZE && name.ends_with(".json")) || !name.contains('/') {
                        if size > MAX_JSON_SIZE {
                            return Err(invalid(format!("{name} is too large")));
                        }
                        let mut data = Vec::with_capacity(size as usize);
                        entry.read_to_end(&mut data).map_err(archive_err)?;
                        let existed = self.content().contains(&Digest::sha256(&data));
                        let info = self.content().write_blob(&data)?;
                        if !existed {
                            added.push(info.digest.clone());
                        }
                        small.insert(name.clone(), data);
                        files.insert(name, info);
                    } else {
                        let mut writer = self.content().begin_write()?;
                        io::copy(&mut entry, &mut writer).map_err(archive_err)?;
                        let existed = self.content().contains(&writer.digest());
                        let info = writer.commit_computed()?;
                        if !existed {
                            added.push(info.digest.clone());
                        }
                        files.insert(name, info);
                    }
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(archive_err)?
                        .ok_or_else(|| invalid(format!("link {name} has no target")))?;
                    let resolved = if entry.header().entry_type() == tar::EntryType::Symlink {
                        Path::new(&name)
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(target.as_ref())
                    } else {
                        target.into_owned()
                    };
                    links.insert(name, normalise_lexically(&resolved)?);
                }
                _ => {}
            }
        }
        let lookup = |name: &str| -> Result<BlobInfo> {
            let mut name = entry_name(Path::new(name))?;
            for _ in 0..16 {
                if let Some(info) = files.get(&name) {
                    return Ok(info.clone());
                }
                match links.get(&name) {
                    Some(next) => name = next.clone(),
                    None => break,
                }
            }
            Err(invalid(format!(
                "manifest.json names {name}, which the archive lacks"
            )))
        };
        let manifest_json = small
            .get("manifest.json")
            .ok_or_else(|| invalid("no manifest.json (not a docker save archive?)"))?;
        let entries: Vec<ArchiveManifest> =
            serde_json::from_slice(manifest_json).map_err(|source| Error::MalformedJson {
                what: "archive manifest.json",
                digest_or_path: "manifest.json".to_owned(),
                source,
            })?;
        if entries.is_empty() {
            return Err(invalid("manifest.json lists no images"));
        }
        if name.is_some() && entries.len() != 1 {
            return Err(invalid(format!(
                "archive holds {} images; a name can only be given to one",
                entries.len()
            )));
        }
        let mut used = HashSet::new();
        let mut images = Vec::new();
        for entry in &entries {
            if entry.layers.len() > crate::store::MAX_LAYERS {
                let config = lookup(&entry.config)?;
                return Err(crate::store::too_deep(config.digest, entry.layers.len()));
            }
            let config_info = lookup(&entry.config)?;
            let config_data = self.content().read_json(&config_info.digest)?;
            let config: ImageConfiguration =
                serde_json::from_slice(&config_data).map_err(|source| Error::MalformedJson {
                    what: "image config",
                    digest_or_path: entry.config.clone(),
                    source,
                })?;
            let diff_ids = config.rootfs().diff_ids();
            if diff_ids.len() != entry.layers.len() {
                return Err(invalid(format!(
                    "config {} names {} layers but manifest.json lists {}",
                    entry.config,
                    diff_ids.len(),
                    entry.layers.len()
                )));
            }
            let mut layers = Vec::new();
            for (layer_name, diff_id) in entry.layers.iter().zip(diff_ids) {
                let info = lookup(layer_name)?;
                let mut head = [0u8; 4];
                let n = self
                    .content()
                    .open_blob(&info.digest)?
                    .read(&mut head)
                    .map_err(|e| Error::io("read", self.content().blob_path(&info.digest), e))?;
                let compression = Compression::sniff(&head[..n]);
                if compression == Compression::None && info.digest.to_string() != *diff_id {
                    return Err(Error::DiffIdMismatch {
                        layer: info.digest.clone(),
                        expected: diff_id.parse().map_err(|source| Error::InvalidDigest {
                            value: diff_id.clone(),
                            source,
                        })?,
                        found: info.digest.clone(),
                    });
                }
                used.insert(info.digest.clone());
                layers.push(descriptor(
                    compression.oci_media_type(),
                    &info.digest,
                    info.size,
                ));
            }
            used.insert(config_info.digest.clone());
            let manifest = ImageManifestBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::ImageManifest)
                .config(descriptor(
                    MediaType::ImageConfig,
                    &config_info.digest,
                    config_info.size,
                ))
                .layers(layers)
                .build()
                .map_err(|source| Error::Oci {
                    what: "image manifest",
                    source,
                })?;
            let bytes = canonical_json(&manifest, "image manifest")?;
            let info = self.content().write_blob(&bytes)?;
            used.insert(info.digest.clone());
            let target = descriptor(MediaType::ImageManifest, &info.digest, info.size);
            self.load(&target)?;
            let names = match name {
                Some(n) => vec![n.clone()],
                None => entry
                    .repo_tags
                    .iter()
                    .flatten()
                    .map(|t| Reference::parse(t))
                    .collect::<Result<_>>()?,
            };
            images.push(ArchiveImage {
                names,
                descriptor: target,
            });
        }
        for image in &images {
            for name in &image.names {
                self.tag(name, &image.descriptor)?;
            }
        }
        Ok((images, used))
    }

    /// Writes the images `images` (each with the names to record in `RepoTags`) as a
    /// `docker save`-style archive to `out`. Layers are written uncompressed, as Docker does.
    pub fn export_archive(
        &self,
        images: &[(Image, Vec<Reference>)],
        out: impl Write,
    ) -> Result<()> {
        let _lease = self.lease()?;
        let mut tar = tar::Builder::new(out);
        let write_err = |e: io::Error| invalid(format!("write archive: {e}"));
        let mut written: HashSet<String> = HashSet::new();
        let mut manifest = Vec::new();
        for (image, names) in images {
            let config_digest = image.id()?;
            let config_name = format!("{}.json", config_digest.hex());
            if written.insert(config_name.clone()) {
                let file = self.content().open_blob(&config_digest)?;
                append_file(&mut tar, &config_name, image.manifest.config().size(), file)
                    .map_err(write_err)?;
            }
            let mut layer_names = Vec::new();
            for (layer, diff_id) in image.layers().iter().zip(image.diff_ids()?) {
                let name = format!("{}/layer.tar", diff_id.hex());
                if written.insert(name.clone()) {
                    let blob = descriptor_digest(layer)?;
                    if blob == diff_id {
                        let file = self.content().open_blob(&blob)?;
                        append_file(&mut tar, &name, layer.size(), file).map_err(write_err)?;
                    } else {
                        let (temp, mut file) = self.content().temp_file()?;
                        let copied = (|| -> Result<u64> {
                            let src = io::BufReader::new(self.content().open_blob(&blob)?);
                            let mut decoded =
                                decompressor(src).map_err(|e| Error::io("read layer", &temp, e))?;
                            let size = io::copy(&mut decoded, &mut file)
                                .map_err(|e| Error::io("decompress layer", &temp, e))?;
                            file.seek(SeekFrom::Start(0))
                                .map_err(|e| Error::io("seek", &temp, e))?;
                            Ok(size)
                        })();
                        let result = copied.and_then(|size| {
                            append_file(&mut tar, &name, size, &mut file).map_err(write_err)
                        });
                        let _ = fs::remove_file(&temp);
                        result?;
                    }
                }
                layer_names.push(name);
            }
            manifest.push(ArchiveManifest {
                config: config_name,
                repo_tags: Some(names.iter().map(Reference::familiar).collect()),
                layers: layer_names,
            });
        }
        let data = serde_json::to_vec(&manifest).map_err(|source| Error::Serialize {
            what: "manifest.json",
            source,
        })?;
        append_file(&mut tar, "manifest.json", data.len() as u64, &data[..]).map_err(write_err)?;
        tar.into_inner()
            .map_err(write_err)?
            .flush()
            .map_err(write_err)?;
        Ok(())
    }
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    tar.append_data(&mut header, name, data.take(size))
}

fn normalise_lexically(path: &Path) -> Result<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop().ok_or_else(|| {
                    invalid(format!("link to {} leaves the archive", path.display()))
                })?;
            }
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            _ => {
                return Err(invalid(format!(
                    "link to {} leaves the archive",
                    path.display()
                )));
            }
        }
    }
    Ok(parts.join("/"))
}
