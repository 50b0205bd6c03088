//! [`FsStorage`]: the registry on a local filesystem.
//!
//! Blob content lives in a [`berth_image::ContentStore`] opened at the root directory, the same
//! store images use, so its `blobs/` and `ingest/` directories sit beside the registry's own
//! per-repository links and upload sessions. Layout under the root directory (every path derived
//! from validated names and digests):
//!
//! ```text
//! blobs/<alg>/<hex>                                   content (the content store), shared by all repositories
//! ingest/                                             the content store's temp files
//! uploads/<uuid>/data, uploads/<uuid>/repository       upload sessions (survive restarts)
//! repositories/<name>/_layers/<alg>/<hex>              blobs linked to the repository
//! repositories/<name>/_manifests/revisions/<alg>/<hex> manifests (file holds the media type)
//! repositories/<name>/_manifests/tags/<tag>            tags (file holds the digest)
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex>  referrer descriptors by subject
//! tmp/                                                 staging for atomic renames
//! ```
//!
//! An upload is appended to `uploads/<uuid>/data` and hashed as it arrives (the hash state lives
//! in memory with the session); finishing it compares that hash with the client's digest, syncs
//! the file once and renames it into `blobs/` (the same file system, so no copy). Each blob is
//! thus hashed once and written once. After a restart the hash state is gone, and finishing
//! re-reads the file to hash it. Repository name components never start with `_`, so the
//! `_layers`-style directories cannot collide with them.

mod gc;
mod repositories;
mod uploads;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use berth_api::Digest;
use berth_image::ContentStore;
use bytes::Bytes;
use tokio::sync::RwLock;

use berth_image::UploadHash;

use super::file_io::{self, BufferPool};
use super::{BlobReader, ByteStream, GcOptions, GcReport, PutManifest, Storage, StoredManifest};
use crate::manifest::Descriptor;
use crate::name::{ManifestRef, RepositoryName};
use crate::{Error, Result};
use gc::collect_dirs_with;

/// Serialises the requests of one upload session and holds the running hash of its bytes (lost
/// on a restart: the data file is then hashed when the upload finishes). A session whose lock is
/// held is busy and never garbage-collected.
type UploadLock = Arc<tokio::sync::Mutex<Option<UploadHash>>>;

/// A [`Storage`] on a local filesystem (see the module docs for the layout).
pub struct FsStorage {
    root: PathBuf,
    content: ContentStore,
    /// Readers: anything that creates references (blob commits, manifest pushes, mounts).
    /// Writer: a garbage-collection pass.
    gc_lock: RwLock<()>,
    uploads: Mutex<HashMap<String, UploadLock>>,
    /// Buffers of blobs being served.
    buffers: BufferPool,
}

impl std::fmt::Debug for FsStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsStorage")
            .field("root", &self.root)
            .finish()
    }
}

/// Maps a content-store failure onto the registry's errors (a digest mismatch stays one).
fn content_error(e: berth_image::Error) -> Error {
    match e {
        berth_image::Error::DigestMismatch { expected, found } => {
            Error::DigestMismatch { expected, found }
        }
        e => Error::Content(e),
    }
}

fn blob_rel(digest: &Digest) -> PathBuf {
    Path::new(digest.algorithm().as_str()).join(digest.hex())
}

async fn exists(path: &Path) -> bool {
    tokio::fs::metadata(path).await.is_ok()
}

fn parse_upload_id(id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.as_hyphenated().to_string())
        .map_err(|_| Error::UploadUnknown(id.to_owned()))
}

impl FsStorage {
    /// Opens (creating if needed) a registry store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["uploads", "repositories", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(Error::io("create", &path))?;
        }
        let content = ContentStore::open(&root).map_err(content_error)?;
        Ok(FsStorage {
            root,
            content,
            gc_lock: RwLock::new(()),
            uploads: Mutex::new(HashMap::new()),
            buffers: BufferPool::default(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content store holding every repository's blobs.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    fn repo_dir(&self, repo: &RepositoryName) -> PathBuf {
        self.root.join("repositories").join(repo.as_str())
    }

    fn layer_link(&self, repo: &RepositoryName, digest: &Digest) -> PathBuf {
        self.repo_dir(repo).join("_layers").join(blob_rel(digest))
    }

    fn revision(&self, repo: &RepositoryName, digest: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_manifests/revisions")
            .join(blob_rel(digest))
    }

    fn tags_dir(&self, repo: &RepositoryName) -> PathBuf {
        self.repo_dir(repo).join("_manifests/tags")
    }

    fn referrers_dir(&self, repo: &RepositoryName, subject: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_referrers")
            .join(blob_rel(subject))
    }

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// Writes `data` to `path` atomically (staged in `tmp/`, then renamed).
    async fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        let tmp = self.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
        tokio::fs::write(&tmp, data)
            .await
            .map_err(Error::io("write", &tmp))?;
        self.rename_into(&tmp, path).await
    }

    async fn rename_into(&self, from: &Path, to: &Path) -> Result<()> {
        if let Some(parent) = to.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(Error::io("create", parent))?;
        }
        tokio::fs::rename(from, to)
            .await
            .map_err(Error::io("rename", to))
    }

    async fn link(&self, repo: &RepositoryName, digest: &Digest) -> Result<()> {
        let link = self.layer_link(repo, digest);
        if exists(&link).await {
            return Ok(());
        }
        self.write_atomic(&link, b"").await
    }

    /// Marks a blob as just used, so a concurrent garbage-collection grace period covers it.
    /// Refreshes a stored blob's time (a GC grace period counts from now).
    async fn touch_blob(&self, digest: &Digest) -> Result<()> {
        let (content, digest) = (self.content.clone(), digest.clone());
        tokio::task::spawn_blocking(move || content.touch(&digest).map(drop))
            .await
            .expect("touch task panicked")
            .map_err(content_error)
    }

    async fn upload_state(&self, repo: &RepositoryName, id: &str) -> Result<(String, UploadLock)> {
        let id = parse_upload_id(id)?;
        let owner = self.upload_dir(&id).join("repository");
        match tokio::fs::read_to_string(&owner).await {
            Ok(name) if name == repo.as_str() => {}
            _ => return Err(Error::UploadUnknown(id)),
        }
        let state = self
            .uploads
            .lock()
            .expect("uploads lock poisoned")
            .entry(id.clone())
            .or_default()
            .clone();
        Ok((id, state))
    }

    fn forget_upload(&self, id: &str) {
        self.uploads
            .lock()
            .expect("uploads lock poisoned")
            .remove(id);
    }

    async fn linked(&self, repo: &RepositoryName, digest: &Digest) -> bool {
        exists(&self.layer_link(repo, digest)).await && self.content.contains(digest)
    }

    async fn resolve(&self, repo: &RepositoryName, reference: &ManifestRef) -> Result<Digest> {
        let unknown = || Error::ManifestUnknown {
            repository: repo.to_string(),
            reference: reference.to_string(),
        };
        if !exists(&self.repo_dir(repo)).await {
            return Err(Error::NameUnknown(repo.to_string()));
        }
        match reference {
            ManifestRef::Digest(d) => Ok(d.clone()),
            ManifestRef::Tag(tag) => {
                let text = tokio::fs::read_to_string(self.tags_dir(repo).join(tag))
                    .await
                    .map_err(|_| unknown())?;
                text.trim().parse().map_err(|_| unknown())
            }
        }
    }
}

#[async_trait]
impl Storage for FsStorage {
    async fn blob_size(&self, repo: &RepositoryName, digest: &Digest) -> Result<u64> {
        let unknown = || Error::BlobUnknown {
            repository: repo.to_string(),
            digest: digest.clone(),
        };
        if !exists(&self.layer_link(repo, digest)).await {
            return Err(unknown());
        }
        self.content
            .stat(digest)
            .map(|info| info.size)
            .map_err(|_| unknown())
    }

    async fn read_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<BlobReader> {
        let size = self.blob_size(repo, digest).await?;
        let file = self
            .content
            .open_blob(digest)
            .map_err(|_| Error::BlobUnknown {
                repository: repo.to_string(),
                digest: digest.clone(),
            })?;
        let offset = offset.min(size);
        Ok(BlobReader {
            size,
            body: file_io::read_stream(&self.buffers, file, offset, len.min(size - offset)),
        })
    }

    async fn delete_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<()> {
        let link = self.layer_link(repo, digest);
        tokio::fs::remove_file(&link)
            .await
            .map_err(|_| Error::BlobUnknown {
                repository: repo.to_string(),
                digest: digest.clone(),
            })
    }

    async fn mount_blob(
        &self,
        from: &RepositoryName,
        to: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let _gc = self.gc_lock.read().await;
        match self.blob_size(from, digest).await {
            Ok(size) => {
                self.touch_blob(digest).await?;
                self.link(to, digest).await?;
                Ok(Some(size))
            }
            Err(Error::BlobUnknown { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn repositories_with_blob(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Vec<RepositoryName>> {
        if !self.content.contains(digest) {
            return Ok(Vec::new());
        }
        let (root, rel) = (self.root.join("repositories"), blob_rel(digest));
        tokio::task::spawn_blocking(move || {
            let mut repos = Vec::new();
            collect_dirs_with(&root, "", &mut repos);
            Ok(repos
                .into_iter()
                .filter(|r| root.join(r).join("_layers").join(&rel).exists())
                .filter_map(|r| RepositoryName::new(&r).ok())
                .take(limit)
                .collect())
        })
        .await
        .expect("blob search task panicked")
    }

    async fn start_upload(&self, repo: &RepositoryName) -> Result<String> {
        self.start_upload_session(repo).await
    }

    async fn upload_size(&self, repo: &RepositoryName, id: &str) -> Result<u64> {
        self.upload_session_size(repo, id).await
    }

    async fn write_upload(
        &self,
        repo: &RepositoryName,
        id: &str,
        offset: Option<u64>,
        expected_len: Option<u64>,
        data: ByteStream,
    ) -> Result<u64> {
        self.append_upload(repo, id, offset, expected_len, data)
            .await
    }

    async fn finish_upload(&self, repo: &RepositoryName, id: &str, digest: &Digest) -> Result<u64> {
        self.finish_upload_session(repo, id, digest).await
    }

    async fn cancel_upload(&self, repo: &RepositoryName, id: &str) -> Result<()> {
        self.cancel_upload_session(repo, id).await
    }

    async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &ManifestRef,
    ) -> Result<StoredManifest> {
        self.read_manifest(repo, reference).await
    }

    async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &ManifestRef,
        content_type: Option<&str>,
        bytes: Bytes,
        tags: &[String],
    ) -> Result<PutManifest> {
        self.store_manifest(repo, reference, content_type, bytes, tags)
            .await
    }

    async fn delete_manifest(&self, repo: &RepositoryName, reference: &ManifestRef) -> Result<()> {
        self.remove_manifest(repo, reference).await
    }

    async fn tags(&self, repo: &RepositoryName) -> Result<Vec<String>> {
        self.list_tags(repo).await
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        self.list_repositories_sorted().await
    }

    async fn referrers(&self, repo: &RepositoryName, subject: &Digest) -> Result<Vec<Descriptor>> {
        self.list_referrers(repo, subject).await
    }

    async fn collect_garbage(&self, options: GcOptions) -> Result<GcReport> {
        self.run_gc(options).await
    }
}
