//! The image store: names (references) pointing at manifests in the content store.
//!
//! State lives in one directory: `content/` (a [`ContentStore`]), `images.json` (reference ->
//! target descriptor, rewritten atomically under `images.lock`) and `gc.lock` (held shared by
//! every operation that writes blobs before naming them — a [`Lease`] — and exclusively by
//! [`ImageStore::gc`], so a collection never removes content an import or build is still working
//! on). Several processes may use one store at once.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use berth_api::{Algorithm, Digest};
use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType,
};
use serde::{Deserialize, Serialize};

use crate::content::{BlobInfo, ContentStore, GcOptions, GcReport};
use crate::error::{Error, Result};
use crate::manifest::{
    self, Compression, Manifest, Platform, canonical_json, descriptor, descriptor_digest,
};
use crate::reference::Reference;

/// A named image as the store records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The full normalised reference (`docker.io/library/busybox:latest`).
    pub name: String,
    /// The manifest or index it points at.
    pub target: Descriptor,
    /// When the name was (last) set, RFC 3339.
    pub created: String,
}

impl ImageRecord {
    /// The record's name as a [`Reference`].
    pub fn reference(&self) -> Result<Reference> {
        Reference::parse(&self.name)
    }

    /// The target's digest.
    pub fn digest(&self) -> Result<Digest> {
        descriptor_digest(&self.target)
    }
}

/// The most layers an image may have: 125, Docker's limit (its daemon answers "max depth
/// exceeded" above it). A container's rootfs stacks every layer as an overlayfs lower dir, and the
/// kernel refuses more than 500 (fewer once the option string's page is full); Docker keeps a
/// margin below that for the container's own layer and the builder's. Deeper images are refused
/// when they enter the store (OCI layout and `docker save` imports, [`ImageStore::commit_image`],
/// [`ImageStore::tag`] of a pulled manifest) and when loaded, before any layer is unpacked.
pub const MAX_LAYERS: usize = 125;

/// The error for an image of `layers` layers, over [`MAX_LAYERS`].
pub(crate) fn too_deep(digest: Digest, layers: usize) -> Error {
    Error::InvalidImage {
        digest,
        reason: format!(
            "it has {layers} layers; at most {MAX_LAYERS} are supported (Docker's limit: \
             overlayfs stacks only so many layers under a container)"
        ),
    }
}

/// An image resolved down to one platform: its manifest, config and layers.
#[derive(Debug, Clone)]
pub struct Image {
    /// The descriptor a name points at (an index for multi-platform images).
    pub target: Descriptor,
    /// The platform-specific manifest's descriptor (equal to `target` for single-platform ones).
    pub manifest_descriptor: Descriptor,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The image config.
    pub config: ImageConfiguration,
}

impl Image {
    /// The image id: the digest of its config, as Docker shows it.
    pub fn id(&self) -> Result<Digest> {
        descriptor_digest(self.manifest.config())
    }

    /// The manifest's digest.
    pub fn digest(&self) -> Result<Digest> {
        descriptor_digest(&self.manifest_descriptor)
    }

    /// Layer descriptors, base first.
    pub fn layers(&self) -> &[Descriptor] {
        self.manifest.layers()
    }

    /// The config's diff ids (digests of the uncompressed layers), base first.
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        self.config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|s| {
                s.parse().map_err(|source| Error::InvalidDigest {
                    value: s.clone(),
                    source,
                })
            })
            .collect()
    }

    /// Total size of config and layers (compressed, as stored).
    pub fn size(&self) -> u64 {
        self.manifest.config().size() + self.layers().iter().map(|l| l.size()).sum::<u64>()
    }
}

/// A layer added to the store: the stored (possibly compressed) blob and its diff id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Descriptor of the stored blob (with its layer media type).
    pub descriptor: Descriptor,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
}

/// A shared hold on the store that keeps [`ImageStore::gc`] from running until dropped.
#[derive(Debug)]
pub struct Lease {
    _lock: Flock<File>,
}

/// The image store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    content: ContentStore,
    platform: Platform,
}

type Records = BTreeMap<String, ImageRecord>;

impl ImageStore {
    /// Opens (creating if needed) the image store in `dir` (the `berth` binary uses
    /// `<root>/image`). Images resolve for the host's platform.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let content = ContentStore::open(dir.join("content"))?;
        Ok(ImageStore {
            dir,
            content,
            platform: Platform::host(),
        })
    }

    /// The same store, resolving multi-platform images for `platform` instead of the host's.
    pub fn with_platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    /// The platform images resolve for.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The blob store underneath.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    fn lock(&self, name: &str, arg: FlockArg) -> Result<Flock<File>> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open lock", &path, e))?;
        Flock::lock(file, arg).map_err(|(_, errno)| Error::io("lock", &path, errno.into()))
    }

    /// Takes a shared lease: GC waits until every lease is dropped. Hold one while writing blobs
    /// that no name points at yet (a build, a pull, an import).
    pub fn lease(&self) -> Result<Lease> {
        Ok(Lease {
            _lock: self.lock("gc.lock", FlockArg::LockShared)?,
        })
    }

    /// The GC lock, exclusively: no [`Lease`] is held while it is.
    pub(crate) fn exclusive_gc_lock(&self) -> Result<Flock<File>> {
        self.lock("gc.lock", FlockArg::LockExclusive)
    }

    fn read_records(&self) -> Result<Records> {
        let path = self.dir.join("images.json");
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| Error::MalformedJson {
                what: "image records",
                digest_or_path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Records::new()),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    fn write_records(&self, records: &Records) -> Result<()> {
        let path = self.dir.join("images.json");
        let tmp = self
            .dir
            .join(format!("images.json.{}.tmp", std::process::id()));
        let data = serde_json::to_vec_pretty(records).map_err(|source| Error::Serialize {
            what: "image records",
            source,
        })?;
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&data)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("write", &path, e)
        })
    }

    fn update_records<T>(&self, f: impl FnOnce(&mut Records) -> Result<T>) -> Result<T> {
        let _guard = self.lock("images.lock", FlockArg::LockExclusive)?;
        let mut records = self.read_records()?;
        let out = f(&mut records)?;
        self.write_records(&records)?;
        Ok(out)
    }

    /// Every named image, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let _guard = self.lock("images.lock", FlockArg::LockShared)?;
        Ok(self.read_records()?.into_values().collect())
    }

    /// The record a tag reference names.
    pub fn get(&self, reference: &Reference) -> Result<ImageRecord> {
        let key = record_key(reference);
        let _guard = self.lock("images.lock", FlockArg::LockShared)?;
        self.read_records()?
            .remove(&key)
            .ok_or_else(|| Error::ImageNotFound {
                reference: reference.familiar(),
            })
    }

    /// Resolves a reference to the descriptor it names: a tag through the records, a digest
    /// through the content store (the blob must be a manifest or index).
    pub fn resolve(&self, reference: &Reference) -> Result<Descriptor> {
        if let Some(digest) = reference.digest() {
            return self.descriptor_for_blob(digest).map_err(|e| {
                if e.is_not_found() {
                    Error::ImageNotFound {
                        reference: reference.familiar(),
                    }
                } else {
                    e
                }
            });
        }
        Ok(self.get(reference)?.target)
    }

    /// Resolves what a user typed: a reference, an image id (`sha256:…` config digest) or a
    /// unique prefix of one (at least 4 hex characters).
    pub fn resolve_str(&self, s: &str) -> Result<Descriptor> {
        let by_reference = Reference::parse(s).and_then(|r| self.resolve(&r));
        match by_reference {
            Ok(d) => Ok(d),
            Err(e) if !(e.is_not_found() || matches!(e, Error::InvalidReference { .. })) => Err(e),
            Err(e) => {
                let prefix = s.strip_prefix("sha256:").unwrap_or(s);
                if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(e);
                }
                let mut found: Option<Descriptor> = None;
                for record in self.list()? {
                    let Ok(image) = self.load(&record.target) else {
                        continue;
                    };
                    let id = image.id()?;
                    let manifest = image.digest()?;
                    if id.hex().starts_with(prefix) || manifest.hex().starts_with(prefix) {
                        match &found {
                            Some(f) if f.digest() != record.target.digest() => {
                                return Err(Error::InvalidReference {
                                    reference: s.to_owned(),
                                    reason: "ambiguous image id prefix".to_owned(),
                                });
                            }
                            _ => found = Some(record.target.clone()),
                        }
                    }
                }
                found.ok_or(e)
            }
        }
    }

    /// A descriptor for a manifest or index blob already in the store.
    pub fn descriptor_for_blob(&self, digest: &Digest) -> Result<Descriptor> {
        let data = self.content.read_json(digest)?;
        let media_type = match manifest::parse_manifest(&data, None, digest)? {
            Manifest::Image(m) => m.media_type().clone().unwrap_or(MediaType::ImageManifest),
            Manifest::Index(i) => i.media_type().clone().unwrap_or(MediaType::ImageIndex),
        };
        Ok(descriptor(media_type, digest, data.len() as u64))
    }

    /// Reads and parses the manifest or index `descriptor` points at (checking its size).
    pub fn read_manifest(&self, descriptor: &Descriptor) -> Result<Manifest> {
        let digest = descriptor_digest(descriptor)?;
        let data = self.content.read_json(&digest)?;
        if data.len() as u64 != descriptor.size() {
            return Err(Error::SizeMismatch {
                digest,
                expected: descriptor.size(),
                found: data.len() as u64,
            });
        }
        manifest::parse_manifest(&data, Some(descriptor.media_type()), &digest)
    }

    /// Reads an image index (or Docker manifest list).
    pub fn read_index(&self, descriptor: &Descriptor) -> Result<ImageIndex> {
        match self.read_manifest(descriptor)? {
            Manifest::Index(index) => Ok(*index),
            Manifest::Image(_) => Err(Error::UnsupportedMediaType {
                media_type: descriptor.media_type().to_string(),
                what: "index (found an image manifest)",
            }),
        }
    }

    /// Reads an image config blob.
    pub fn read_config(&self, descriptor: &Descriptor) -> Result<ImageConfiguration> {
        let digest = descriptor_digest(descriptor)?;
        if !manifest::is_config(descriptor.media_type()) {
            return Err(Error::UnsupportedMediaType {
                media_type: descriptor.media_type().to_string(),
                what: "image config",
            });
        }
        let data = self.content.read_json(&digest)?;
        serde_json::from_slice(&data).map_err(|source| Error::MalformedJson {
            what: "image config",
            digest_or_path: digest.to_string(),
            source,
        })
    }

    /// Loads the image `target` points at, choosing this store's platform from an index, and
    /// checks it is complete and consistent: config present and parseable, every layer a known
    /// layer type and present, as many diff ids as layers.
    pub fn load(&self, target: &Descriptor) -> Result<Image> {
        let mut manifest_descriptor = target.clone();
        let mut depth = 0;
        let manifest = loop {
            match self.read_manifest(&manifest_descriptor)? {
                Manifest::Image(m) => break *m,
                Manifest::Index(index) => {
                    depth += 1;
                    if depth > 4 {
                        return Err(Error::InvalidImage {
                            digest: descriptor_digest(target)?,
                            reason: "indexes nested too deeply".to_owned(),
                        });
                    }
                    manifest_descriptor =
                        self.platform
                            .select(&index)
                            .cloned()
                            .ok_or_else(|| -> Error {
                                match descriptor_digest(&manifest_descriptor) {
                                    Ok(digest) => Error::NoMatchingPlatform {
                                        digest,
                                        platform: self.platform.to_string(),
                                    },
                                    Err(e) => e,
                                }
                            })?;
                }
            }
        };
        let digest = descriptor_digest(&manifest_descriptor)?;
        let config = self.read_config(manifest.config())?;
        check_image(&digest, &manifest, &config)?;
        for layer in manifest.layers() {
            let layer_digest = descriptor_digest(layer)?;
            let info = self.content.stat(&layer_digest)?;
            if info.size != layer.size() {
                return Err(Error::SizeMismatch {
                    digest: layer_digest,
                    expected: layer.size(),
                    found: info.size,
                });
            }
        }
        Ok(Image {
            target: target.clone(),
            manifest_descriptor,
            manifest,
            config,
        })
    }

    /// Resolves and loads a reference: `resolve` then `load`.
    pub fn image(&self, reference: &Reference) -> Result<Image> {
        self.load(&self.resolve(reference)?)
    }

    /// Points `reference` at `target` (which must be in the store). A reference with a tag is
    /// (re)pointed; one with only a digest records that digest under the repository's name.
    pub fn tag(&self, reference: &Reference, target: &Descriptor) -> Result<()> {
        let digest = descriptor_digest(target)?;
        if let Some(pinned) = reference.digest()
            && *pinned != digest
        {
            return Err(Error::DigestMismatch {
                expected: pinned.clone(),
                found: digest,
            });
        }
        let info = self.content.stat(&digest)?;
        if info.size != target.size() {
            return Err(Error::SizeMismatch {
                digest,
                expected: target.size(),
                found: info.size,
            });
        }
        if manifest::manifest_kind(target.media_type()).is_none() {
            return Err(Error::UnsupportedMediaType {
                media_type: target.media_type().to_string(),
                what: "image target",
            });
        }
        self.refuse_too_deep(target)?;
        let key = record_key(reference);
        let mut target = target.clone();
        target.set_annotations(None);
        target.set_platform(None);
        self.update_records(|records| {
            records.insert(
                key.clone(),
                ImageRecord {
                    name: key,
                    target,
                    created: now_rfc3339(),
                },
            );
            Ok(())
        })
    }

    /// Refuses to name an image (the manifest, or this platform's manifest of an index, when
    /// present) with more than [`MAX_LAYERS`] layers: a pulled image is named last.
    fn refuse_too_deep(&self, target: &Descriptor) -> Result<()> {
        let mut descriptor = target.clone();
        for _ in 0..4 {
            match self.read_manifest(&descriptor) {
                Ok(Manifest::Image(m)) if m.layers().len() > MAX_LAYERS => {
                    return Err(too_deep(descriptor_digest(&descriptor)?, m.layers().len()));
                }
                Ok(Manifest::Index(index)) => match self.platform.select(&index) {
                    Some(child) => descriptor = child.clone(),
                    None => return Ok(()),
                },
                // Unreadable content is refused by `load`, with its own message.
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Gives the image `source` names the additional name `target` (`docker tag`).
    pub fn tag_image(&self, source: &Reference, target: &Reference) -> Result<()> {
        let descriptor = self.resolve(source)?;
        self.tag(target, &descriptor)
    }

    /// Removes a name. A digest-only reference removes every name pointing at that digest.
    /// Returns the removed records (content stays until [`ImageStore::gc`]).
    pub fn remove(&self, reference: &Reference) -> Result<Vec<ImageRecord>> {
        let removed = self.update_records(|records| {
            let mut removed = Vec::new();
            if reference.tag().is_some() {
                if let Some(r) = records.remove(&record_key(reference)) {
                    removed.push(r);
                }
            } else if let Some(digest) = reference.digest() {
                let name = reference.name();
                let keys: Vec<String> = records
                    .iter()
                    .filter(|(_, r)| {
                        r.digest().ok().as_ref() == Some(digest)
                            && r.reference().map(|rr| rr.name() == name).unwrap_or(false)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    removed.extend(records.remove(&k));
                }
            }
            Ok(removed)
        })?;
        if removed.is_empty() {
            return Err(Error::ImageNotFound {
                reference: reference.familiar(),
            });
        }
        Ok(removed)
    }

    /// Removes every name pointing at `digest` (a manifest or index). Returns the removed records.
    pub fn remove_digest(&self, digest: &Digest) -> Result<Vec<ImageRecord>> {
        self.update_records(|records| {
            let keys: Vec<String> = records
                .iter()
                .filter(|(_, r)| r.digest().ok().as_ref() == Some(digest))
                .map(|(k, _)| k.clone())
                .collect();
            Ok(keys
                .into_iter()
                .filter_map(|k| records.remove(&k))
                .collect())
        })
    }

    /// Removes every blob no name references (directly or through indexes and manifests).
    /// Waits for outstanding [`Lease`]s, so it must not be called while this process holds one.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let _exclusive = self.exclusive_gc_lock()?;
        let roots: Vec<Digest> = self
            .list()?
            .iter()
            .map(ImageRecord::digest)
            .collect::<Result<_>>()?;
        self.content.gc(roots, options)
    }

    /// Every blob some name references.
    pub fn referenced(&self) -> Result<HashSet<Digest>> {
        let roots: Vec<Digest> = self
            .list()?
            .iter()
            .map(ImageRecord::digest)
            .collect::<Result<_>>()?;
        self.content.reachable(roots)
    }

    /// Stores a layer tar, compressing it with `compression`; computes its diff id in the same
    /// pass. Deterministic: the same tar gives the same blob.
    pub fn add_layer(&self, tar: impl Read, compression: Compression) -> Result<Layer> {
        add_layer(&self.content, tar, compression)
    }

    /// Writes `config` (its `rootfs` set from `layers`) and a manifest naming `layers`, and
    /// returns the manifest's descriptor. Nothing is named yet: [`ImageStore::tag`] it. The
    /// layers must already be in the store. JSON is written canonically, so the same input gives
    /// the same digest.
    pub fn commit_image(
        &self,
        mut config: ImageConfiguration,
        layers: &[Layer],
    ) -> Result<Descriptor> {
        if layers.len() > MAX_LAYERS {
            let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
            return Err(too_deep(
                Digest::sha256(diff_ids.join(" ").as_bytes()),
                layers.len(),
            ));
        }
        for layer in layers {
            let digest = descriptor_digest(&layer.descriptor)?;
            let info = self.content.stat(&digest)?;
            if info.size != layer.descriptor.size() {
                return Err(Error::SizeMismatch {
                    digest,
                    expected: layer.descriptor.size(),
                    found: info.size,
                });
            }
        }
        let mut rootfs = config.rootfs().clone();
        rootfs.set_typ("layers".to_owned());
        rootfs.set_diff_ids(layers.iter().map(|l| l.diff_id.to_string()).collect());
        config.set_rootfs(rootfs);
        let config_bytes = canonical_json(&config, "image config")?;
        let config_info = self.content.write_blob(&config_bytes)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(
                MediaType::ImageConfig,
                &config_info.digest,
                config_info.size,
            ))
            .layers(
                layers
                    .iter()
                    .map(|l| l.descriptor.clone())
                    .collect::<Vec<_>>(),
            )
            .build()
            .map_err(|source| Error::Oci {
                what: "image manifest",
                source,
            })?;
        let manifest_bytes = canonical_json(&manifest, "image manifest")?;
        let info = self.content.write_blob(&manifest_bytes)?;
        Ok(descriptor(
            MediaType::ImageManifest,
            &info.digest,
            info.size,
        ))
    }
}

/// Stores a layer tar with `compression`, computing blob digest and diff id in one pass.
pub(crate) fn add_layer(
    content: &ContentStore,
    mut tar: impl Read,
    compression: Compression,
) -> Result<Layer> {
    let writer = content.begin_write()?;
    let mut diff_hasher = Algorithm::Sha256.hasher();
    let mut buf = vec![0u8; 256 * 1024];
    let temp = writer.temp_path().to_path_buf();
    let io_err = |e| Error::io("write layer", &temp, e);
    let writer = match compression {
        Compression::None => {
            let mut w = writer;
            pump(&mut tar, &mut diff_hasher, &mut w, &mut buf).map_err(io_err)?;
            w
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(writer, flate2::Compression::default());
            pump(&mut tar, &mut diff_hasher, &mut enc, &mut buf).map_err(io_err)?;
            enc.finish().map_err(io_err)?
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(writer, 3).map_err(io_err)?;
            pump(&mut tar, &mut diff_hasher, &mut enc, &mut buf).map_err(io_err)?;
            enc.finish().map_err(io_err)?
        }
    };
    let info: BlobInfo = writer.commit_computed()?;
    Ok(Layer {
        descriptor: descriptor(compression.oci_media_type(), &info.digest, info.size),
        diff_id: diff_hasher.finish(),
    })
}

fn pump(
    src: &mut impl Read,
    hasher: &mut berth_api::Hasher,
    dst: &mut impl Write,
    buf: &mut [u8],
) -> std::io::Result<()> {
    loop {
        let n = match src.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
}

/// Structural checks on a manifest + config pair.
pub(crate) fn check_image(
    digest: &Digest,
    manifest: &ImageManifest,
    config: &ImageConfiguration,
) -> Result<()> {
    let invalid = |reason: String| Error::InvalidImage {
        digest: digest.clone(),
        reason,
    };
    if manifest.layers().len() > MAX_LAYERS {
        return Err(too_deep(digest.clone(), manifest.layers().len()));
    }
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(format!(
            "config names {} layers (diff ids) but the manifest has {}",
            diff_ids.len(),
            manifest.layers().len()
        )));
    }
    for d in diff_ids {
        d.parse::<Digest>().map_err(|source| Error::InvalidDigest {
            value: d.clone(),
            source,
        })?;
    }
    for layer in manifest.layers() {
        manifest::layer_compression(layer.media_type())?;
        descriptor_digest(layer)?;
    }
    Ok(())
}

fn record_key(reference: &Reference) -> String {
    match (reference.tag(), reference.digest()) {
        (Some(tag), _) => format!("{}:{tag}", reference.name()),
        (None, Some(d)) => format!("{}@{d}", reference.name()),
        (None, None) => reference.to_string(),
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
