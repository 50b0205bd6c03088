//! OCI image layout import and export (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`).
//!
//! The directory format skopeo (`oci:DIR:REF`), umoci (`DIR:TAG`) and buildah read and write. An
//! image in a layout is named by the `org.opencontainers.image.ref.name` annotation of its entry
//! in `index.json`. Import checks everything it can before it writes anything (layout version,
//! JSON, media types, config vs layers, every blob present with its size), then copies blobs
//! verifying each digest; if any copy fails, the blobs it added are removed again. Blob paths are
//! built from validated digests only and opened without following symlinks, so a hostile index
//! cannot reach outside the layout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use berth_api::Digest;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageIndexBuilder, MediaType};

use crate::content::{ContentStore, MAX_JSON_SIZE};
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest, canonical_json, descriptor_digest};
use crate::reference::Reference;
use crate::store::{ImageStore, check_image};

/// The annotation naming an image inside a layout.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The `imageLayoutVersion` Berth writes and reads.
pub const LAYOUT_VERSION: &str = "1.0.0";

/// One image found in (or written to) a layout.
#[derive(Debug, Clone, PartialEq)]
pub struct LayoutImage {
    /// Its `org.opencontainers.image.ref.name`, if any.
    pub ref_name: Option<String>,
    /// Its manifest or index descriptor.
    pub descriptor: Descriptor,
}

/// A blob the import has to copy: where it comes from, what it must be.
#[derive(Debug, Clone)]
struct PlannedBlob {
    digest: Digest,
    size: u64,
}

/// Reads the images listed in the layout at `dir` (no blobs are read).
pub fn list_layout(dir: &Path) -> Result<Vec<LayoutImage>> {
    let index = read_layout_index(dir)?;
    Ok(index
        .manifests()
        .iter()
        .map(|d| LayoutImage {
            ref_name: ref_name_of(d),
            descriptor: d.clone(),
        })
        .collect())
}

fn ref_name_of(d: &Descriptor) -> Option<String> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME_ANNOTATION).cloned())
}

fn invalid(dir: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidLayout {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_layout_index(dir: &Path) -> Result<ImageIndex> {
    let marker = dir.join("oci-layout");
    let data = read_small(&marker)?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct LayoutMarker {
        image_layout_version: String,
    }
    let marker_doc: LayoutMarker =
        serde_json::from_slice(&data).map_err(|source| Error::MalformedJson {
            what: "oci-layout",
            digest_or_path: marker.display().to_string(),
            source,
        })?;
    if !marker_doc.image_layout_version.starts_with("1.") {
        return Err(invalid(
            dir,
            format!(
                "unsupported imageLayoutVersion {:?}",
                marker_doc.image_layout_version
            ),
        ));
    }
    let index_path = dir.join("index.json");
    let data = read_small(&index_path)?;
    serde_json::from_slice(&data).map_err(|source| Error::MalformedJson {
        what: "index.json",
        digest_or_path: index_path.display().to_string(),
        source,
    })
}

fn read_small(path: &Path) -> Result<Vec<u8>> {
    let file = open_nofollow(path)?;
    let mut data = Vec::new();
    file.take(MAX_JSON_SIZE + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io("read", path, e))?;
    if data.len() as u64 > MAX_JSON_SIZE {
        return Err(Error::io(
            "read",
            path,
            io::Error::new(io::ErrorKind::InvalidData, "file too large"),
        ));
    }
    Ok(data)
}

fn open_nofollow(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

/// Reads a JSON blob from the layout, verifying size and digest.
fn read_layout_json(dir: &Path, descriptor: &Descriptor) -> Result<(Digest, Vec<u8>)> {
    let digest = descriptor_digest(descriptor)?;
    if descriptor.size() > MAX_JSON_SIZE {
        return Err(Error::InvalidImage {
            digest,
            reason: format!("document of {} bytes is too large", descriptor.size()),
        });
    }
    let path = blob_path(dir, &digest);
    let data = match read_small(&path) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Err(Error::BlobNotFound { digest }),
        Err(e) => return Err(e),
    };
    if data.len() as u64 != descriptor.size() {
        return Err(Error::SizeMismatch {
            digest,
            expected: descriptor.size(),
            found: data.len() as u64,
        });
    }
    let found = Digest::compute(digest.algorithm(), &data);
    if found != digest {
        return Err(Error::DigestMismatch {
            expected: digest,
            found,
        });
    }
    Ok((digest, data))
}

/// Checks a blob's presence and size in the layout.
fn check_layout_blob(dir: &Path, descriptor: &Descriptor) -> Result<PlannedBlob> {
    let digest = descriptor_digest(descriptor)?;
    let path = blob_path(dir, &digest);
    let meta = fs::symlink_metadata(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::BlobNotFound {
                digest: digest.clone(),
            }
        } else {
            Error::io("stat", &path, e)
        }
    })?;
    if !meta.is_file() {
        return Err(invalid(dir, format!("blob {digest} is not a regular file")));
    }
    if meta.len() != descriptor.size() {
        return Err(Error::SizeMismatch {
            digest,
            expected: descriptor.size(),
            found: meta.len(),
        });
    }
    Ok(PlannedBlob {
        digest,
        size: descriptor.size(),
    })
}

/// Plans the import of one image (manifest or index) from a layout: validates it and lists its
/// blobs. `platform` chooses which manifest of an index must be present.
fn plan_image(
    dir: &Path,
    store: &ImageStore,
    target: &Descriptor,
    plan: &mut BTreeMap<Digest, PlannedBlob>,
    depth: usize,
) -> Result<()> {
    if depth > 4 {
        return Err(invalid(dir, "indexes nested too deeply"));
    }
    let (digest, data) = read_layout_json(dir, target)?;
    match manifest::parse_manifest(&data, Some(target.media_type()), &digest)? {
        Manifest::Index(index) => {
            let selected = store.platform().select(&index).cloned();
            let Some(selected) = selected else {
                return Err(Error::NoMatchingPlatform {
                    digest,
                    platform: store.platform().to_string(),
                });
            };
            plan_image(dir, store, &selected, plan, depth + 1)?;
            // Other platforms' manifests come along when the layout has them.
            for child in index.manifests() {
                if child.digest() == selected.digest()
                    || manifest::manifest_kind(child.media_type()).is_none()
                {
                    continue;
                }
                let mut sub = BTreeMap::new();
                if plan_image(dir, store, child, &mut sub, depth + 1).is_ok() {
                    plan.extend(sub);
                }
            }
        }
        Manifest::Image(image) => {
            let (config_digest, config_data) = read_layout_json(dir, image.config())?;
            if !manifest::is_config(image.config().media_type()) {
                return Err(Error::UnsupportedMediaType {
                    media_type: image.config().media_type().to_string(),
                    what: "image config",
                });
            }
            let config: ImageConfiguration =
                serde_json::from_slice(&config_data).map_err(|source| Error::MalformedJson {
                    what: "image config",
                    digest_or_path: config_digest.to_string(),
                    source,
                })?;
            check_image(&digest, &image, &config)?;
            for layer in image.layers() {
                let blob = check_layout_blob(dir, layer)?;
                plan.insert(blob.digest.clone(), blob);
            }
            plan.insert(
                config_digest.clone(),
                PlannedBlob {
                    digest: config_digest,
                    size: config_data.len() as u64,
                },
            );
        }
    }
    plan.insert(
        digest.clone(),
        PlannedBlob {
            digest,
            size: data.len() as u64,
        },
    );
    Ok(())
}

/// Copies planned blobs into the store, verifying each; on failure removes what it added.
fn copy_blobs(
    dir: &Path,
    content: &ContentStore,
    plan: &BTreeMap<Digest, PlannedBlob>,
) -> Result<()> {
    let mut added = Vec::new();
    let result = (|| {
        for blob in plan.values() {
            if content.contains(&blob.digest) {
                continue;
            }
            let path = blob_path(dir, &blob.digest);
            let src = open_nofollow(&path)?;
            let mut writer = content.begin_write_with(blob.digest.algorithm())?;
            io::copy(&mut src.take(blob.size + 1), &mut writer)
                .map_err(|e| Error::io("copy", &path, e))?;
            if writer.size() != blob.size {
                return Err(Error::SizeMismatch {
                    digest: blob.digest.clone(),
                    expected: blob.size,
                    found: writer.size(),
                });
            }
            writer.commit(&blob.digest)?;
            added.push(blob.digest.clone());
        }
        Ok(())
    })();
    if result.is_err() {
        for digest in &added {
            let _ = content.delete(digest);
        }
    }
    result
}

impl ImageStore {
    /// Imports the images of the OCI layout at `dir` whose ref name is `ref_name` (all of them
    /// when `None`) into the content store, without naming them. Returns what was imported.
    pub fn import_layout(&self, dir: &Path, ref_name: Option<&str>) -> Result<Vec<LayoutImage>> {
        let _lease = self.lease()?;
        self.import_layout_leased(dir, ref_name)
    }

    fn import_layout_leased(&self, dir: &Path, ref_name: Option<&str>) -> Result<Vec<LayoutImage>> {
        let index = read_layout_index(dir)?;
        let selected: Vec<LayoutImage> = index
            .manifests()
            .iter()
            .map(|d| LayoutImage {
                ref_name: ref_name_of(d),
                descriptor: d.clone(),
            })
            .filter(|img| ref_name.is_none() || img.ref_name.as_deref() == ref_name)
            .collect();
        if selected.is_empty() {
            return Err(invalid(
                dir,
                match ref_name {
                    Some(r) => format!("no image named {r:?} in index.json"),
                    None => "index.json lists no images".to_owned(),
                },
            ));
        }
        let mut plan = BTreeMap::new();
        for image in &selected {
            if manifest::manifest_kind(image.descriptor.media_type()).is_none() {
                return Err(Error::UnsupportedMediaType {
                    media_type: image.descriptor.media_type().to_string(),
                    what: "index.json entry",
                });
            }
            plan_image(dir, self, &image.descriptor, &mut plan, 0)?;
        }
        copy_blobs(dir, self.content(), &plan)?;
        Ok(selected)
    }

    /// Imports the single image named `ref_name` (or the only image, when `None`) from the OCI
    /// layout at `dir` and names it `name`. Returns its descriptor.
    pub fn import_oci(
        &self,
        dir: &Path,
        ref_name: Option<&str>,
        name: &Reference,
    ) -> Result<Descriptor> {
        let _lease = self.lease()?;
        let mut images = self.import_layout_leased(dir, ref_name)?;
        if images.len() != 1 {
            return Err(invalid(
                dir,
                format!(
                    "layout holds {} images; name one as DIR:REF (refs: {})",
                    images.len(),
                    images
                        .iter()
                        .map(|i| i.ref_name.as_deref().unwrap_or("<none>"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let image = images.remove(0);
        // Check the image is usable here before naming it.
        self.load(&image.descriptor)?;
        let mut target = image.descriptor;
        target.set_annotations(None);
        self.tag(name, &target)?;
        Ok(target)
    }

    /// Exports the image `target` into the OCI layout at `dir` (created if missing; an existing
    /// layout keeps its other images) under `ref_name`. An index is exported with every
    /// platform's manifest the store holds.
    pub fn export_oci(
        &self,
        target: &Descriptor,
        dir: &Path,
        ref_name: Option<&str>,
    ) -> Result<()> {
        let _lease = self.lease()?;
        let mut blobs = Vec::new();
        self.collect_blobs(target, &mut blobs, 0)?;
        fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let marker = dir.join("oci-layout");
        let mut index = if marker.exists() {
            read_layout_index(dir)?
        } else {
            write_atomic(
                &marker,
                format!(r#"{{"imageLayoutVersion":"{LAYOUT_VERSION}"}}"#).as_bytes(),
            )?;
            ImageIndexBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::ImageIndex)
                .manifests(Vec::<Descriptor>::new())
                .build()
                .map_err(|source| Error::Oci {
                    what: "index.json",
                    source,
                })?
        };
        for digest in blobs {
            let dest = blob_path(dir, &digest);
            if dest.is_file() {
                continue;
            }
            let parent = dest.parent().expect("blob path has a parent");
            fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
            let tmp = parent.join(format!(".{}.tmp-{}", digest.hex(), std::process::id()));
            let src = self.content().blob_path(&digest);
            fs::copy(&src, &tmp).map_err(|e| {
                let _ = fs::remove_file(&tmp);
                Error::io("copy", &src, e)
            })?;
            fs::rename(&tmp, &dest).map_err(|e| Error::io("rename", &dest, e))?;
        }
        let mut entry = target.clone();
        let mut annotations = HashMap::new();
        if let Some(r) = ref_name {
            annotations.insert(REF_NAME_ANNOTATION.to_owned(), r.to_owned());
        }
        entry.set_annotations((!annotations.is_empty()).then_some(annotations));
        let mut manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| ref_name.is_none_or(|r| ref_name_of(d).as_deref() != Some(r)))
            .filter(|d| {
                !(ref_name.is_none() && ref_name_of(d).is_none() && d.digest() == entry.digest())
            })
            .cloned()
            .collect();
        manifests.push(entry);
        index.set_manifests(manifests);
        if index.media_type().is_none() {
            index.set_media_type(Some(MediaType::ImageIndex));
        }
        let data = canonical_json(&index, "index.json")?;
        write_atomic(&dir.join("index.json"), &data)
    }

    /// Every blob an image consists of (for an index: each manifest present in the store).
    fn collect_blobs(
        &self,
        target: &Descriptor,
        out: &mut Vec<Digest>,
        depth: usize,
    ) -> Result<()> {
        let digest = descriptor_digest(target)?;
        match self.read_manifest(target)? {
            Manifest::Index(index) => {
                if depth > 4 {
                    return Err(Error::InvalidImage {
                        digest,
                        reason: "indexes nested too deeply".to_owned(),
                    });
                }
                let mut any = false;
                for child in index.manifests() {
                    let child_digest = descriptor_digest(child)?;
                    if self.content().contains(&child_digest) {
                        self.collect_blobs(child, out, depth + 1)?;
                        any = true;
                    }
                }
                if !any {
                    return Err(Error::InvalidImage {
                        digest,
                        reason: "no manifest of the index is in the store".to_owned(),
                    });
                }
            }
            Manifest::Image(_) => {
                let image = self.load(target)?;
                out.push(image.id()?);
                for layer in image.layers() {
                    out.push(descriptor_digest(layer)?);
                }
            }
        }
        out.push(digest);
        let mut seen = HashSet::new();
        out.retain(|d| seen.insert(d.clone()));
        Ok(())
    }
}

/// Writes `data` to `path` through a temp file and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("write", path, e)
    })
}
