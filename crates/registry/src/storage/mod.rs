//! The registry's storage: a [`Storage`] trait the HTTP server is written against, and
//! [`FsStorage`], a filesystem backend. Other backends (object stores, memory) implement the
//! same trait.
//!
//! Blobs arrive as streams and leave as readers: no method holds a whole blob in memory.

mod file_io;
mod fs;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use berth_api::Digest;
use bytes::Bytes;
use futures_util::Stream;

pub use fs::FsStorage;

use crate::Result;
use crate::manifest::Descriptor;
use crate::name::{ManifestRef, RepositoryName};

/// A stream of body bytes, as a request body or a client download delivers it.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A byte range of a blob being read.
pub struct BlobReader {
    /// The blob's total size.
    pub size: u64,
    /// Bytes from the requested offset, at most the requested length, in chunks as the backend
    /// produces them (they go to the socket as they are).
    pub body: ByteStream,
}

/// A manifest as stored: its bytes, digest and media type.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Digest of `bytes`.
    pub digest: Digest,
    /// The media type it was pushed with.
    pub media_type: String,
    /// The manifest exactly as pushed.
    pub bytes: Bytes,
}

/// What storing a manifest did.
#[derive(Debug, Clone)]
pub struct PutManifest {
    /// The manifest's digest.
    pub digest: Digest,
    /// The subject it refers to, if any (the server echoes it as `OCI-Subject`).
    pub subject: Option<Digest>,
}

/// Limits of a garbage-collection pass.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Blobs younger than this are kept even when unreferenced: a push uploads its blobs before
    /// the manifest that references them.
    pub blob_grace: Duration,
    /// Upload sessions untouched for this long are removed.
    pub upload_max_age: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            blob_grace: Duration::from_secs(3600),
            upload_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a garbage-collection pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs deleted.
    pub blobs_removed: usize,
    /// Bytes those blobs held.
    pub bytes_freed: u64,
    /// Stale upload sessions deleted.
    pub uploads_removed: usize,
}

/// Storage for an OCI distribution registry.
///
/// Blobs are content-addressed and shared; each repository links the blobs and manifests pushed
/// to it, and only those are visible through it.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The size of a blob linked to `repo`, or [`crate::Error::BlobUnknown`].
    async fn blob_size(&self, repo: &RepositoryName, digest: &Digest) -> Result<u64>;

    /// Reads `len` bytes (clamped to the blob) from `offset` of a blob linked to `repo`.
    async fn read_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<BlobReader>;

    /// Unlinks a blob from `repo` (garbage collection frees it once nothing else uses it).
    async fn delete_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<()>;

    /// Links into `to` a blob that `from` holds; returns its size, or `None` when `from` does
    /// not hold it.
    async fn mount_blob(
        &self,
        from: &RepositoryName,
        to: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<u64>>;

    /// Repositories that hold blob `digest` (for a mount that names no source), at most
    /// `limit` of them. The default asks every repository with manifests; backends that know
    /// repositories holding only blobs override it.
    async fn repositories_with_blob(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Vec<RepositoryName>> {
        let mut found = Vec::new();
        for name in self.repositories().await? {
            let Ok(repo) = RepositoryName::new(&name) else {
                continue;
            };
            if found.len() < limit && self.blob_size(&repo, digest).await.is_ok() {
                found.push(repo);
            }
        }
        Ok(found)
    }

    /// Starts an upload session for `repo` and returns its id.
    async fn start_upload(&self, repo: &RepositoryName) -> Result<String>;

    /// The number of bytes an upload session holds so far.
    async fn upload_size(&self, repo: &RepositoryName, id: &str) -> Result<u64>;

    /// Appends `data` to an upload. With `offset`, the chunk must start exactly where the upload
    /// ends ([`crate::Error::RangeInvalid`] otherwise); with `expected_len`, it must be that
    /// long, or it is rolled back. Returns the new size. When the stream breaks, the bytes
    /// received so far are kept, so the client can resume.
    async fn write_upload(
        &self,
        repo: &RepositoryName,
        id: &str,
        offset: Option<u64>,
        expected_len: Option<u64>,
        data: ByteStream,
    ) -> Result<u64>;

    /// Verifies the upload against `digest` and commits it as a blob linked to `repo`. On a
    /// mismatch the session is discarded and nothing is stored. Returns the blob's size.
    async fn finish_upload(&self, repo: &RepositoryName, id: &str, digest: &Digest) -> Result<u64>;

    /// Discards an upload session.
    async fn cancel_upload(&self, repo: &RepositoryName, id: &str) -> Result<()>;

    /// Stores a whole blob in one go (a monolithic upload).
    async fn put_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        data: ByteStream,
    ) -> Result<u64> {
        let id = self.start_upload(repo).await?;
        if let Err(e) = self.write_upload(repo, &id, Some(0), None, data).await {
            let _ = self.cancel_upload(repo, &id).await;
            return Err(e);
        }
        self.finish_upload(repo, &id, digest).await
    }

    /// Fetches a manifest by tag or digest.
    async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &ManifestRef,
    ) -> Result<StoredManifest>;

    /// Validates and stores a manifest, and points `tags` at it (and `reference` when it is a
    /// tag). Every blob and child manifest it names must already be in `repo`. A manifest
    /// pushed by tag is digested with the algorithm its descriptors use
    /// ([`crate::manifest::ParsedManifest::digest_algorithm`]).
    async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &ManifestRef,
        content_type: Option<&str>,
        bytes: Bytes,
        tags: &[String],
    ) -> Result<PutManifest>;

    /// Deletes a tag, or a manifest (with every tag pointing at it) by digest.
    async fn delete_manifest(&self, repo: &RepositoryName, reference: &ManifestRef) -> Result<()>;

    /// The tags of `repo`, sorted; [`crate::Error::NameUnknown`] when it does not exist.
    async fn tags(&self, repo: &RepositoryName) -> Result<Vec<String>>;

    /// Every repository holding manifests, sorted.
    async fn repositories(&self) -> Result<Vec<String>>;

    /// The manifests in `repo` whose `subject` is `subject`.
    async fn referrers(&self, repo: &RepositoryName, subject: &Digest) -> Result<Vec<Descriptor>>;

    /// Removes unreferenced blobs and stale uploads, without racing pushes in progress.
    async fn collect_garbage(&self, options: GcOptions) -> Result<GcReport>;
}
