//! Manifest media types and the validation a registry does before storing a manifest: it must
//! be JSON of a known kind, agree with its `Content-Type`, and name the blobs, child manifests
//! and subject it depends on.

use std::collections::BTreeMap;

use berth_api::Digest;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Default limit on a manifest's size (the spec suggests registries accept at least 4 MiB).
pub const DEFAULT_MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest media type the registry stores, in the order a client prefers them.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// True for the two index kinds (manifests that list other manifests).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// An OCI content descriptor, as manifests, indexes and the referrers API carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Artifact type (referrers and artifact manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Foreign URLs (non-distributable layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<berth_image::oci_spec::image::Platform>,
}

/// An image manifest or index, as far as a registry needs to read it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the document states it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Artifact type (OCI 1.1 artifacts).
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Config blob (image manifests).
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// Layer blobs (image manifests).
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    /// Child manifests (indexes).
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    /// The manifest this one refers to (referrers API).
    #[serde(default)]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A validated manifest with its effective media type.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    /// The media type it is stored and served under.
    pub media_type: String,
    /// The parsed document.
    pub manifest: Manifest,
}

impl ParsedManifest {
    /// Parses `bytes` sent with `content_type` (if any) and checks that it is a manifest the
    /// registry can serve.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::ManifestInvalid(format!("not a manifest: {e}")))?;
        if manifest.schema_version != 2 {
            return Err(Error::ManifestInvalid(format!(
                "schemaVersion {} is not 2",
                manifest.schema_version
            )));
        }
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| !c.is_empty());
        let media_type = match (content_type, manifest.media_type.as_deref()) {
            (Some(c), Some(m)) if c != m => {
                return Err(Error::ManifestInvalid(format!(
                    "Content-Type {c} differs from mediaType {m}"
                )));
            }
            (_, Some(m)) => m.to_owned(),
            (Some(c), None) => c.to_owned(),
            (None, None) if manifest.manifests.is_some() => OCI_INDEX.to_owned(),
            (None, None) if manifest.config.is_some() => OCI_MANIFEST.to_owned(),
            (None, None) => return Err(Error::ManifestInvalid("no media type".into())),
        };
        if !MANIFEST_MEDIA_TYPES.contains(&media_type.as_str()) {
            return Err(Error::ManifestInvalid(format!(
                "unsupported manifest media type {media_type}"
            )));
        }
        if is_index(&media_type) {
            if manifest.manifests.is_none() {
                return Err(Error::ManifestInvalid("index without manifests".into()));
            }
        } else if manifest.config.is_none() || manifest.layers.is_none() {
            return Err(Error::ManifestInvalid(
                "image manifest without config or layers".into(),
            ));
        }
        Ok(ParsedManifest {
            media_type,
            manifest,
        })
    }

    /// Blobs the repository must hold for this manifest: config and layers, except
    /// non-distributable layers that carry foreign URLs.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.manifest
            .config
            .iter()
            .chain(self.manifest.layers.iter().flatten())
            .filter(|d| d.urls.as_ref().is_none_or(|u| u.is_empty()))
    }

    /// The digest algorithm the manifest's author works in: sha512 when every descriptor it
    /// holds (config, layers, child manifests, subject) is a sha512 digest, sha256 otherwise.
    /// A manifest pushed by tag is digested with it, as a client that names its blobs by
    /// sha512 expects its manifests to be.
    pub fn digest_algorithm(&self) -> berth_api::Algorithm {
        let m = &self.manifest;
        let mut descriptors = m
            .config
            .iter()
            .chain(m.layers.iter().flatten())
            .chain(m.manifests.iter().flatten())
            .chain(m.subject.iter())
            .peekable();
        let sha512 = descriptors.peek().is_some()
            && descriptors.all(|d| d.digest.algorithm() == berth_api::Algorithm::Sha512);
        if sha512 {
            berth_api::Algorithm::Sha512
        } else {
            berth_api::Algorithm::Sha256
        }
    }

    /// Child manifests the repository must hold (indexes only).
    pub fn children(&self) -> impl Iterator<Item = &Descriptor> {
        self.manifest.manifests.iter().flatten()
    }

    /// The artifact type the referrers API reports: `artifactType`, else the config's media type.
    pub fn artifact_type(&self) -> Option<String> {
        self.manifest
            .artifact_type
            .clone()
            .or_else(|| self.manifest.config.as_ref().map(|c| c.media_type.clone()))
    }

    /// The descriptor under which this manifest is listed among its subject's referrers.
    pub fn referrer_descriptor(&self, digest: &Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: digest.clone(),
            size,
            artifact_type: self.artifact_type(),
            annotations: self.manifest.annotations.clone(),
            urls: None,
            platform: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(config: &Digest) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[]}}"#
        )
    }

    #[test]
    fn parses_and_checks_media_type() {
        let d = Digest::sha256(b"{}");
        let m = ParsedManifest::parse(image(&d).as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.blobs().count(), 1);
        assert!(ParsedManifest::parse(image(&d).as_bytes(), Some(OCI_INDEX)).is_err());
        assert!(ParsedManifest::parse(b"{", None).is_err());
        assert!(ParsedManifest::parse(br#"{"schemaVersion":1}"#, None).is_err());
        let bad_digest = image(&d).replace(&d.to_string(), "sha256:xyz");
        assert!(ParsedManifest::parse(bad_digest.as_bytes(), None).is_err());
    }
}
