//! The layer cache: a layer-producing step (COPY, ADD, RUN) is keyed on its parent (the digest of
//! the image config built so far, which names every earlier layer and setting), the instruction
//! after variable expansion, and what else it depends on (the content digest of COPY/ADD sources,
//! the build arguments a RUN sees). A hit reuses the stored layer, so an unchanged rebuild writes
//! no new layer. Entries live as small JSON files `<dir>/<key hex>.json`, written atomically; an
//! entry whose blob was garbage-collected is a miss.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use berth_api::{Algorithm, Digest, Hasher};
use oci_spec::image::{Descriptor, MediaType};
use serde::{Deserialize, Serialize};

use berth_image::ContentStore;
use berth_image::manifest::descriptor;
use berth_image::store::Layer;

/// The cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    blob: Digest,
    media_type: String,
    size: u64,
    diff_id: Digest,
}

/// The key of a step: the parent, the instruction and its extra inputs, length-prefixed so no
/// two different inputs hash alike.
pub(crate) fn key(parent: &Digest, instruction: &str, extra: &[&str]) -> Digest {
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(b"berth-build-cache-v1\0");
    for part in [parent.to_string().as_str(), instruction]
        .into_iter()
        .chain(extra.iter().copied())
    {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finish()
}

impl Cache {
    /// Opens (creating) the cache in `dir`.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Cache> {
        fs::create_dir_all(dir)?;
        Ok(Cache {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!("{}.json", key.hex()))
    }

    /// The layer cached under `key`, if its blob is still in `content`.
    pub(crate) fn get(&self, key: &Digest, content: &ContentStore) -> Option<Layer> {
        let bytes = fs::read(self.path(key)).ok()?;
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        let info = content.stat(&entry.blob).ok()?;
        if info.size != entry.size {
            return None;
        }
        let media_type = MediaType::from(entry.media_type.as_str());
        Some(Layer {
            descriptor: descriptor(media_type, &entry.blob, entry.size),
            diff_id: entry.diff_id,
        })
    }

    /// The blobs some cache entry refers to.
    pub(crate) fn blobs(&self) -> std::io::Result<std::collections::HashSet<Digest>> {
        let mut blobs = std::collections::HashSet::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Ok(bytes) = fs::read(&path)
                && let Ok(entry) = serde_json::from_slice::<Entry>(&bytes)
            {
                blobs.insert(entry.blob);
            }
        }
        Ok(blobs)
    }

    /// Records `layer` under `key`.
    pub(crate) fn put(&self, key: &Digest, layer: &Layer) -> std::io::Result<()> {
        let entry = Entry {
            blob: blob_digest(&layer.descriptor)?,
            media_type: layer.descriptor.media_type().to_string(),
            size: layer.descriptor.size(),
            diff_id: layer.diff_id.clone(),
        };
        let path = self.path(key);
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(&entry).map_err(std::io::Error::other)?)?;
        fs::rename(&tmp, &path)
    }
}

fn blob_digest(d: &Descriptor) -> std::io::Result<Digest> {
    d.digest()
        .to_string()
        .parse()
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_image::Compression;

    #[test]
    fn hit_miss_and_collected_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let store = berth_image::ImageStore::open(tmp.path().join("image")).unwrap();
        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        let parent = Digest::sha256(b"parent");
        let k = key(&parent, "RUN true", &[]);
        assert_ne!(k, key(&parent, "RUN true", &[""]));
        assert_ne!(key(&parent, "ab", &["c"]), key(&parent, "a", &["bc"]));
        assert!(cache.get(&k, store.content()).is_none());
        let layer = store
            .add_layer(&b"not really a tar"[..], Compression::None)
            .unwrap();
        cache.put(&k, &layer).unwrap();
        assert_eq!(cache.get(&k, store.content()), Some(layer.clone()));
        store
            .content()
            .delete(&blob_digest(&layer.descriptor).unwrap())
            .unwrap();
        assert!(cache.get(&k, store.content()).is_none());
    }
}
