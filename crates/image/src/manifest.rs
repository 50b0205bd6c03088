//! The OCI image model (through `oci-spec`) and the Docker schema2 media types mapped onto it.
//!
//! A manifest blob is either an image manifest or an index (Docker's manifest list);
//! [`parse_manifest`] tells them apart by media type and shape and refuses anything else. Docker
//! schema2 documents have the same JSON shape as their OCI counterparts, so they parse into the
//! same `oci-spec` types; [`layer_compression`] maps every known layer media type to how its bytes
//! are compressed. [`Platform`] selects a host's manifest from an index. [`canonical_json`]
//! serialises documents with sorted keys so the same image always gets the same digest.

use std::fmt;
use std::io::Write;

use berth_api::Digest;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Serialize;

use crate::error::{Error, Result};

/// Docker schema2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema2 manifest list (the Docker counterpart of an OCI index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer (seen in `docker save` derived manifests).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker foreign (non-distributable) gzip layer.
pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Docker schema1 manifests: recognised only to be refused with a clear message.
pub const DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// A parsed manifest blob.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// An image manifest (OCI or Docker schema2).
    Image(Box<ImageManifest>),
    /// An image index (OCI) or manifest list (Docker).
    Index(Box<ImageIndex>),
}

/// Which kind of document a media type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest.
    Image,
    /// An index or manifest list.
    Index,
}

/// The kind of manifest `media_type` names, if it names one.
pub fn manifest_kind(media_type: &MediaType) -> Option<ManifestKind> {
    match media_type {
        MediaType::ImageManifest => Some(ManifestKind::Image),
        MediaType::ImageIndex => Some(ManifestKind::Index),
        MediaType::Other(s) if s == DOCKER_MANIFEST => Some(ManifestKind::Image),
        MediaType::Other(s) if s == DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
        _ => None,
    }
}

/// True when `media_type` is an image config (OCI or Docker).
pub fn is_config(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageConfig => true,
        MediaType::Other(s) => s == DOCKER_CONFIG,
        _ => false,
    }
}

/// How a layer's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> MediaType {
        match self {
            Compression::None => MediaType::ImageLayer,
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
        }
    }

    /// Detects gzip or zstd by magic number; anything else is taken as a plain tar.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// The compression of a layer of media type `media_type`, or an error for a media type that is
/// not a layer Berth can unpack.
pub fn layer_compression(media_type: &MediaType) -> Result<Compression> {
    Ok(match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Compression::Gzip,
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Compression::Zstd,
        MediaType::Other(s) if s == DOCKER_LAYER_GZIP || s == DOCKER_LAYER_FOREIGN_GZIP => {
            Compression::Gzip
        }
        MediaType::Other(s) if s == DOCKER_LAYER_TAR => Compression::None,
        other => {
            return Err(Error::UnsupportedMediaType {
                media_type: other.to_string(),
                what: "layer",
            });
        }
    })
}

/// Parses a manifest or index blob. `media_type` is what the referring descriptor claims (if any);
/// the document's own `mediaType` field and its shape must agree with it.
pub fn parse_manifest(
    data: &[u8],
    media_type: Option<&MediaType>,
    digest: &Digest,
) -> Result<Manifest> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        layers: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
    }
    let malformed = |source| Error::MalformedJson {
        what: "manifest",
        digest_or_path: digest.to_string(),
        source,
    };
    let probe: Probe = serde_json::from_slice(data).map_err(malformed)?;
    let declared = probe.media_type.as_deref().map(MediaType::from);
    for mt in declared.iter().chain(media_type) {
        if let MediaType::Other(s) = mt
            && DOCKER_SCHEMA1.contains(&s.as_str())
        {
            return Err(Error::UnsupportedMediaType {
                media_type: s.clone(),
                what: "manifest (Docker schema 1 is not supported)",
            });
        }
    }
    let kind_of = |mt: &MediaType| {
        manifest_kind(mt).ok_or_else(|| Error::UnsupportedMediaType {
            media_type: mt.to_string(),
            what: "manifest",
        })
    };
    let declared_kind = declared.as_ref().map(kind_of).transpose()?;
    let claimed_kind = media_type.map(kind_of).transpose()?;
    let shape_kind = if probe.manifests.is_some() {
        Some(ManifestKind::Index)
    } else if probe.layers.is_some() || probe.config.is_some() {
        Some(ManifestKind::Image)
    } else {
        None
    };
    let kinds = [declared_kind, claimed_kind, shape_kind];
    let mut known = kinds.iter().flatten();
    let Some(&kind) = known.next() else {
        return Err(Error::InvalidImage {
            digest: digest.clone(),
            reason: "document is neither an image manifest nor an index".to_owned(),
        });
    };
    if known.any(|&k| k != kind) {
        return Err(Error::InvalidImage {
            digest: digest.clone(),
            reason: "media type and content disagree on manifest vs index".to_owned(),
        });
    }
    if probe.schema_version != Some(2) {
        return Err(Error::InvalidImage {
            digest: digest.clone(),
            reason: format!("schemaVersion {:?}, expected 2", probe.schema_version),
        });
    }
    match kind {
        ManifestKind::Image => {
            let manifest: ImageManifest = serde_json::from_slice(data).map_err(malformed)?;
            if !is_config(manifest.config().media_type()) {
                // Artifacts (e.g. signatures) carry other config types; they are stored, not run.
                tracing::debug!(%digest, media_type = %manifest.config().media_type(), "manifest with a non-image config");
            }
            Ok(Manifest::Image(Box::new(manifest)))
        }
        ManifestKind::Index => Ok(Manifest::Index(Box::new(
            serde_json::from_slice(data).map_err(malformed)?,
        ))),
    }
}

/// Converts an `oci-spec` digest to a Berth digest (only sha256 and sha512 are accepted).
pub fn to_digest(d: &oci_spec::image::Digest) -> Result<Digest> {
    let s = d.to_string();
    s.parse()
        .map_err(|source| Error::InvalidDigest { value: s, source })
}

/// Converts a Berth digest to an `oci-spec` digest.
pub fn to_oci_digest(d: &Digest) -> oci_spec::image::Digest {
    d.to_string()
        .parse()
        .expect("a berth digest is a valid OCI digest")
}

/// The Berth digest of a descriptor.
pub fn descriptor_digest(descriptor: &Descriptor) -> Result<Digest> {
    to_digest(descriptor.digest())
}

/// A descriptor of `media_type` for a blob.
pub fn descriptor(media_type: MediaType, digest: &Digest, size: u64) -> Descriptor {
    Descriptor::new(media_type, size, to_oci_digest(digest))
}

/// An os/architecture/variant triple, as in an index's `platform`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, … (Go's names).
    pub architecture: String,
    /// `v7`, `v8`, … when it matters.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, in Go's naming.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let architecture = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().map(str::to_owned);
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant,
        })
    }

    /// Whether an index entry's platform can run here (same os and architecture, a compatible
    /// variant).
    pub fn matches(&self, platform: &oci_spec::image::Platform) -> bool {
        self.score(Some(platform)).is_some()
    }

    /// How well a descriptor's platform matches: `None` for no match, higher is better.
    fn score(&self, platform: Option<&oci_spec::image::Platform>) -> Option<u8> {
        let p = platform?;
        if p.os().to_string() != self.os || p.architecture().to_string() != self.architecture {
            return None;
        }
        match (p.variant(), &self.variant) {
            (Some(a), Some(b)) if a == b => Some(3),
            (None, _) => Some(2),
            (Some(_), None) => Some(1),
            (Some(a), Some(b)) => {
                // arm64 images are often marked v8 while the host says nothing.
                (a.trim_start_matches('v') <= b.trim_start_matches('v')).then_some(1)
            }
        }
    }

    /// The best manifest in `index` for this platform. An index whose entries carry no platform
    /// at all and hold exactly one manifest yields that manifest.
    pub fn select<'a>(&self, index: &'a ImageIndex) -> Option<&'a Descriptor> {
        let manifests = index.manifests();
        let best = manifests
            .iter()
            .filter(|d| manifest_kind(d.media_type()).is_some())
            .filter_map(|d| self.score(d.platform().as_ref()).map(|s| (s, d)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, d)| d);
        best.or_else(|| {
            let all_unplatformed = manifests.iter().all(|d| d.platform().is_none());
            (all_unplatformed && manifests.len() == 1).then(|| &manifests[0])
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Serialises `value` as compact JSON with object keys sorted, so equal documents always get equal
/// bytes (and digests) whatever the order of the maps they were built from.
pub fn canonical_json<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>> {
    let value = serde_json::to_value(value).map_err(|source| Error::Serialize { what, source })?;
    let mut out = Vec::new();
    write_canonical(&value, &mut out).map_err(|source| Error::Serialize {
        what,
        source: serde_json::Error::io(source),
    })?;
    Ok(out)
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) -> std::io::Result<()> {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_canonical(&map[key], out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_docker_media_types() {
        assert_eq!(
            manifest_kind(&MediaType::from(DOCKER_MANIFEST_LIST)),
            Some(ManifestKind::Index)
        );
        assert_eq!(
            layer_compression(&MediaType::from(DOCKER_LAYER_GZIP)).unwrap(),
            Compression::Gzip
        );
        assert!(matches!(
            layer_compression(&MediaType::from("application/x-evil")),
            Err(Error::UnsupportedMediaType { .. })
        ));
    }

    #[test]
    fn parses_docker_schema2_and_refuses_schema1() {
        let d = Digest::sha256(b"x");
        let cfg = Digest::sha256(b"cfg");
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","size":3,"digest":"{cfg}"}},"layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","size":1,"digest":"{d}"}}]}}"#
        );
        let m = parse_manifest(doc.as_bytes(), None, &d).unwrap();
        assert!(matches!(m, Manifest::Image(_)));
        let s1 = r#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+json","fsLayers":[]}"#;
        assert!(matches!(
            parse_manifest(s1.as_bytes(), None, &d),
            Err(Error::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            parse_manifest(b"{not json", None, &d),
            Err(Error::MalformedJson { .. })
        ));
        let idx = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(idx.as_bytes(), Some(&MediaType::ImageManifest), &d),
            Err(Error::InvalidImage { .. })
        ));
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let mut a = std::collections::HashMap::new();
        for k in ["z", "a", "m", "b"] {
            a.insert(k, 1);
        }
        assert_eq!(
            canonical_json(&a, "test").unwrap(),
            br#"{"a":1,"b":1,"m":1,"z":1}"#
        );
    }
}
