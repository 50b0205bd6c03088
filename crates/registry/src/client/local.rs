//! [`LocalContent`]: the local side of a push or pull, a content-addressed store the client reads
//! blobs from and stages downloads into.

use std::path::{Path, PathBuf};

use berth_api::Digest;

use crate::Result;

/// Local content-addressed storage a [`super::Client`] pushes from and pulls into.
///
/// Berth's image store implements it over its content store; anything with a
/// `blobs/<alg>/<hex>`-style layout can.
pub trait LocalContent: Send + Sync {
    /// True when the blob is present.
    fn contains(&self, digest: &Digest) -> bool;

    /// Opens a present blob for reading (pushes stream from it).
    fn open_blob(&self, digest: &Digest) -> Result<std::fs::File>;

    /// Reads a small blob (a manifest or config) whole.
    fn read(&self, digest: &Digest) -> Result<Vec<u8>>;

    /// A directory on the store's filesystem where downloads are staged before
    /// [`LocalContent::ingest`] adopts them by rename.
    fn staging_dir(&self) -> PathBuf;

    /// Adopts the verified file `staged` as the blob `digest`.
    fn ingest(&self, staged: &Path, digest: &Digest) -> Result<()>;

    /// Stores a small blob (a manifest) already held in memory and verified.
    fn write_small(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let staged =
            self.staging_dir()
                .join(format!("small-{}-{}", digest.hex(), uuid::Uuid::new_v4()));
        std::fs::write(&staged, bytes).map_err(crate::Error::io("write", &staged))?;
        let result = self.ingest(&staged, digest);
        let _ = std::fs::remove_file(&staged);
        result
    }
}

/// Berth's content store is the client's local side: pulls land in it verified, pushes read
/// from it.
impl LocalContent for berth_image::ContentStore {
    fn contains(&self, digest: &Digest) -> bool {
        berth_image::ContentStore::contains(self, digest)
    }

    fn open_blob(&self, digest: &Digest) -> Result<std::fs::File> {
        berth_image::ContentStore::open_blob(self, digest).map_err(crate::Error::Content)
    }

    fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.read_limited(digest, crate::manifest::DEFAULT_MAX_MANIFEST_SIZE)
            .map_err(crate::Error::Content)
    }

    fn staging_dir(&self) -> PathBuf {
        self.ingest_dir().to_owned()
    }

    fn ingest(&self, staged: &Path, digest: &Digest) -> Result<()> {
        self.ingest_file(staged, digest)
            .map(drop)
            .map_err(crate::Error::Content)
    }
}
