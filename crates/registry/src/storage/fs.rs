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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use berth_api::{Algorithm, Digest};
use berth_image::ContentStore;
use bytes::Bytes;
use tokio::sync::RwLock;

use super::file_io::{self, Appender, BufferPool, RunningHash};
use super::{BlobReader, ByteStream, GcOptions, GcReport, PutManifest, Storage, StoredManifest};
use crate::manifest::{Descriptor, ParsedManifest};
use crate::name::{ManifestRef, RepositoryName};
use crate::{Error, Result};

/// Serialises the requests of one upload session and holds the running hash of its bytes (lost
/// on a restart: the data file is then hashed when the upload finishes). A session whose lock is
/// held is busy and never garbage-collected.
type UploadLock = Arc<tokio::sync::Mutex<Option<RunningHash>>>;

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

    /// Path of a blob's content (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.content.blob_path(digest)
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
    async fn touch(path: &Path) -> Result<()> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()))
                .map_err(Error::io("touch", &path))
        })
        .await
        .expect("touch task panicked")
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
                Self::touch(&self.blob_path(digest)).await?;
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
        let id = uuid::Uuid::new_v4().as_hyphenated().to_string();
        let dir = self.upload_dir(&id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(Error::io("create", &dir))?;
        let data = dir.join("data");
        tokio::fs::File::create(&data)
            .await
            .map_err(Error::io("create", &data))?;
        // Written last: an upload directory without it is incomplete and never served.
        tokio::fs::write(dir.join("repository"), repo.as_str())
            .await
            .map_err(Error::io("write", dir.join("repository")))?;
        self.uploads
            .lock()
            .expect("uploads lock poisoned")
            .insert(id.clone(), Arc::new(Some(RunningHash::new()).into()));
        Ok(id)
    }

    async fn upload_size(&self, repo: &RepositoryName, id: &str) -> Result<u64> {
        let (id, _) = self.upload_state(repo, id).await?;
        let data = self.upload_dir(&id).join("data");
        tokio::fs::metadata(&data)
            .await
            .map(|m| m.len())
            .map_err(|_| Error::UploadUnknown(id))
    }

    async fn write_upload(
        &self,
        repo: &RepositoryName,
        id: &str,
        offset: Option<u64>,
        expected_len: Option<u64>,
        data: ByteStream,
    ) -> Result<u64> {
        let (id, lock) = self.upload_state(repo, id).await?;
        let session = lock.lock_owned().await;
        let path = self.upload_dir(&id).join("data");
        let (appender, start) =
            match tokio::task::spawn_blocking(move || Appender::open(path, session))
                .await
                .expect("open task panicked")
            {
                Ok(opened) => opened,
                Err(_) => return Err(Error::UploadUnknown(id)),
            };
        if let Some(offset) = offset
            && offset != start
        {
            appender.close();
            return Err(Error::RangeInvalid {
                expected: start,
                got: offset,
            });
        }
        // What the file held before this chunk, to roll back to.
        let rollback = appender.hash().cloned();
        let (mut appender, failure) = file_io::append(appender, expected_len, data).await;
        let written = appender.written();
        let short = failure.is_none() && expected_len.is_some_and(|n| n != written);
        if short || matches!(failure, Some(Error::BadRequest(_))) {
            // A chunk that does not match its Content-Range is not kept.
            let (appender, truncated) = tokio::task::spawn_blocking(move || {
                let result = appender.truncate(start, rollback);
                (appender, result)
            })
            .await
            .expect("truncate task panicked");
            appender.close();
            truncated?;
            return Err(failure.unwrap_or_else(|| {
                Error::BadRequest("chunk is shorter than its Content-Range".into())
            }));
        }
        appender.close();
        match failure {
            Some(e) => Err(e),
            None => Ok(start + written),
        }
    }

    async fn finish_upload(&self, repo: &RepositoryName, id: &str, digest: &Digest) -> Result<u64> {
        let (id, lock) = self.upload_state(repo, id).await?;
        let mut hash = lock.lock().await;
        let dir = self.upload_dir(&id);
        let data = dir.join("data");
        let size = match tokio::fs::metadata(&data).await {
            Ok(meta) => meta.len(),
            Err(_) => return Err(Error::UploadUnknown(id)),
        };
        let result = {
            let _gc = self.gc_lock.read().await;
            let known = hash
                .take()
                .and_then(|h| h.finish_for(digest.algorithm(), size));
            let (content, staged, expected) = (self.content.clone(), data.clone(), digest.clone());
            let committed = tokio::task::spawn_blocking(move || {
                let found = match known {
                    Some(found) => found,
                    None => file_io::hash_file(&staged, expected.algorithm())?.0,
                };
                if found != expected {
                    return Err(Error::DigestMismatch { expected, found });
                }
                commit_verified(&content, &staged, &expected)
            })
            .await
            .expect("commit task panicked");
            match committed {
                Ok(()) => self.link(repo, digest).await.map(|()| size),
                Err(e) => Err(e),
            }
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        drop(hash);
        self.forget_upload(&id);
        result
    }

    async fn cancel_upload(&self, repo: &RepositoryName, id: &str) -> Result<()> {
        let (id, lock) = self.upload_state(repo, id).await?;
        let _busy = lock.lock().await;
        let dir = self.upload_dir(&id);
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|_| Error::UploadUnknown(id.clone()))?;
        self.forget_upload(&id);
        Ok(())
    }

    async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &ManifestRef,
    ) -> Result<StoredManifest> {
        let unknown = || Error::ManifestUnknown {
            repository: repo.to_string(),
            reference: reference.to_string(),
        };
        let digest = self.resolve(repo, reference).await?;
        let media_type = tokio::fs::read_to_string(self.revision(repo, &digest))
            .await
            .map_err(|_| unknown())?;
        let bytes = tokio::fs::read(self.blob_path(&digest))
            .await
            .map_err(|_| unknown())?;
        Ok(StoredManifest {
            digest,
            media_type,
            bytes: Bytes::from(bytes),
        })
    }

    async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &ManifestRef,
        content_type: Option<&str>,
        bytes: Bytes,
        tags: &[String],
    ) -> Result<PutManifest> {
        if let Some(bad) = tags.iter().find(|t| !crate::name::valid_tag(t)) {
            return Err(Error::InvalidTag(bad.clone()));
        }
        let parsed = ParsedManifest::parse(&bytes, content_type)?;
        let digest = match reference {
            ManifestRef::Digest(expected) => {
                let found = Digest::compute(expected.algorithm(), &bytes);
                if &found != expected {
                    return Err(Error::DigestMismatch {
                        expected: expected.clone(),
                        found,
                    });
                }
                found
            }
            ManifestRef::Tag(_) => Digest::compute(parsed.digest_algorithm(), &bytes),
        };
        let _gc = self.gc_lock.read().await;
        for blob in parsed.blobs() {
            if !self.linked(repo, &blob.digest).await {
                return Err(Error::ManifestBlobUnknown {
                    repository: repo.to_string(),
                    digest: blob.digest.clone(),
                });
            }
        }
        for child in parsed.children() {
            if !exists(&self.revision(repo, &child.digest)).await {
                return Err(Error::ManifestBlobUnknown {
                    repository: repo.to_string(),
                    digest: child.digest.clone(),
                });
            }
        }
        let blob = self.blob_path(&digest);
        if exists(&blob).await {
            Self::touch(&blob).await?;
        } else {
            let (content, expected, data) = (self.content.clone(), digest.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || content.write_blob_verified(&data, &expected))
                .await
                .expect("manifest write task panicked")
                .map_err(content_error)?;
        }
        self.link(repo, &digest).await?;
        self.write_atomic(&self.revision(repo, &digest), parsed.media_type.as_bytes())
            .await?;
        let subject = parsed.manifest.subject.as_ref().map(|s| s.digest.clone());
        if let Some(subject) = &subject {
            let descriptor = parsed.referrer_descriptor(&digest, bytes.len() as u64);
            let json = serde_json::to_vec(&descriptor).map_err(|source| Error::Json {
                what: format!("referrer {digest}"),
                source,
            })?;
            let name = format!("{}-{}", digest.algorithm(), digest.hex());
            self.write_atomic(&self.referrers_dir(repo, subject).join(name), &json)
                .await?;
        }
        let named = match reference {
            ManifestRef::Tag(tag) => Some(tag),
            ManifestRef::Digest(_) => None,
        };
        for tag in named.into_iter().chain(tags) {
            self.write_atomic(
                &self.tags_dir(repo).join(tag),
                digest.to_string().as_bytes(),
            )
            .await?;
        }
        Ok(PutManifest { digest, subject })
    }

    async fn delete_manifest(&self, repo: &RepositoryName, reference: &ManifestRef) -> Result<()> {
        let unknown = || Error::ManifestUnknown {
            repository: repo.to_string(),
            reference: reference.to_string(),
        };
        let digest = self.resolve(repo, reference).await?;
        let _gc = self.gc_lock.read().await;
        if let ManifestRef::Tag(tag) = reference {
            return tokio::fs::remove_file(self.tags_dir(repo).join(tag))
                .await
                .map_err(|_| unknown());
        }
        let stored = self.get_manifest(repo, reference).await?;
        tokio::fs::remove_file(self.revision(repo, &digest))
            .await
            .map_err(|_| unknown())?;
        let tags = self.tags(repo).await.unwrap_or_default();
        for tag in tags {
            let path = self.tags_dir(repo).join(&tag);
            if let Ok(text) = tokio::fs::read_to_string(&path).await
                && text.trim() == digest.to_string()
            {
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
        if let Ok(parsed) = ParsedManifest::parse(&stored.bytes, Some(&stored.media_type))
            && let Some(subject) = parsed.manifest.subject
        {
            let name = format!("{}-{}", digest.algorithm(), digest.hex());
            let _ =
                tokio::fs::remove_file(self.referrers_dir(repo, &subject.digest).join(name)).await;
        }
        Ok(())
    }

    async fn tags(&self, repo: &RepositoryName) -> Result<Vec<String>> {
        if !exists(&self.repo_dir(repo).join("_manifests")).await {
            return Err(Error::NameUnknown(repo.to_string()));
        }
        let dir = self.tags_dir(repo);
        let mut tags = Vec::new();
        if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(Error::io("read", &dir))?
            {
                if let Some(name) = entry.file_name().to_str() {
                    tags.push(name.to_owned());
                }
            }
        }
        tags.sort();
        Ok(tags)
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        let root = self.root.join("repositories");
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            list_repositories(&root, String::new(), &mut found)?;
            found.sort();
            Ok(found)
        })
        .await
        .expect("catalog task panicked")
    }

    async fn referrers(&self, repo: &RepositoryName, subject: &Digest) -> Result<Vec<Descriptor>> {
        if !exists(&self.repo_dir(repo)).await {
            return Err(Error::NameUnknown(repo.to_string()));
        }
        let dir = self.referrers_dir(repo, subject);
        let mut found = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
            return Ok(found);
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(Error::io("read", &dir))?
        {
            let Ok(json) = tokio::fs::read(entry.path()).await else {
                continue;
            };
            if let Ok(d) = serde_json::from_slice::<Descriptor>(&json)
                && exists(&self.revision(repo, &d.digest)).await
            {
                found.push(d);
            }
        }
        found.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(found)
    }

    async fn collect_garbage(&self, options: GcOptions) -> Result<GcReport> {
        let _gc = self.gc_lock.write().await;
        // Uploads being written to right now are busy: never collected.
        let busy: HashSet<String> = self
            .uploads
            .lock()
            .expect("uploads lock poisoned")
            .iter()
            .filter(|(_, s)| s.try_lock().is_err())
            .map(|(id, _)| id.clone())
            .collect();
        let (root, content) = (self.root.clone(), self.content.clone());
        let report = tokio::task::spawn_blocking(move || collect(&root, &content, options, &busy))
            .await
            .expect("gc task panicked")?;
        let live: HashSet<String> = std::fs::read_dir(self.root.join("uploads"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        self.uploads
            .lock()
            .expect("uploads lock poisoned")
            .retain(|id, _| live.contains(id));
        Ok(report)
    }
}

/// Moves a staged upload, hashed while it streamed in, into the content store as `digest`
/// without hashing it again.
fn commit_verified(content: &ContentStore, staged: &Path, digest: &Digest) -> Result<()> {
    content
        .adopt_verified(staged, digest)
        .map(drop)
        .map_err(content_error)
}

fn list_repositories(dir: &Path, prefix: String, found: &mut Vec<String>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('_') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let full = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        if path.join("_manifests").is_dir() {
            found.push(full.clone());
        }
        list_repositories(&path, full, found)?;
    }
    Ok(())
}

fn older_than(meta: &std::fs::Metadata, age: std::time::Duration) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|elapsed| elapsed >= age)
}

/// Every `(alg, hex)` digest file directly under `dir/<alg>/`.
fn digests_under(dir: &Path) -> Vec<(Digest, PathBuf)> {
    let mut out = Vec::new();
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        let Ok(entries) = std::fs::read_dir(dir.join(alg.as_str())) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|hex| Digest::new(alg, hex).ok())
            {
                out.push((d, entry.path()));
            }
        }
    }
    out
}

fn collect(
    root: &Path,
    content: &ContentStore,
    options: GcOptions,
    busy: &HashSet<String>,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    let mut repos = Vec::new();
    list_repositories(&root.join("repositories"), String::new(), &mut repos)?;
    // Layer links exist for repositories without manifests too.
    let mut all_repos = Vec::new();
    collect_dirs_with(&root.join("repositories"), "", &mut all_repos);

    // Mark: every manifest revision, and everything it references.
    let mut marked = HashSet::new();
    for repo in &repos {
        let revisions = root
            .join("repositories")
            .join(repo)
            .join("_manifests/revisions");
        for (digest, path) in digests_under(&revisions) {
            let media_type = std::fs::read_to_string(&path).unwrap_or_default();
            if let Ok(bytes) = std::fs::read(content.blob_path(&digest))
                && let Ok(parsed) = ParsedManifest::parse(&bytes, Some(&media_type))
            {
                marked.extend(parsed.blobs().map(|d| d.digest.clone()));
                marked.extend(parsed.children().map(|d| d.digest.clone()));
            }
            marked.insert(digest);
        }
    }

    // Sweep blobs that are unreferenced and older than the grace period, and the content
    // store's abandoned temp files.
    let swept = content
        .retain(
            &marked,
            &berth_image::GcOptions {
                grace: options.blob_grace,
                stale_ingest: options.upload_max_age,
                dry_run: false,
            },
        )
        .map_err(content_error)?;
    report.blobs_removed += swept.removed.len();
    report.bytes_freed += swept.freed;
    // Drop links to blobs that no longer exist.
    for repo in &all_repos {
        let layers = root.join("repositories").join(repo).join("_layers");
        for (digest, link) in digests_under(&layers) {
            if !content.contains(&digest) {
                let _ = std::fs::remove_file(link);
            }
        }
    }
    // Stale uploads.
    if let Ok(entries) = std::fs::read_dir(root.join("uploads")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if busy.contains(&name) {
                continue;
            }
            let data = entry.path().join("data");
            let stale = std::fs::metadata(&data)
                .or_else(|_| entry.metadata())
                .is_ok_and(|m| older_than(&m, options.upload_max_age));
            if stale && std::fs::remove_dir_all(entry.path()).is_ok() {
                report.uploads_removed += 1;
            }
        }
    }
    // Staging leftovers from a crash.
    if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
        for entry in entries.flatten() {
            if entry
                .metadata()
                .is_ok_and(|m| older_than(&m, options.upload_max_age))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(report)
}

/// Relative paths of every directory under `dir` that holds a `_layers` directory.
fn collect_dirs_with(dir: &Path, prefix: &str, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('_') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let full = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if entry.path().join("_layers").is_dir() {
            found.push(full.clone());
        }
        collect_dirs_with(&entry.path(), &full, found);
    }
}
