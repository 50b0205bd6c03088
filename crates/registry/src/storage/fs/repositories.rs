//! Manifests, tags, referrers and the repository list of [`FsStorage`](super::FsStorage):
//! `repositories/<name>/_manifests`, `_referrers`, written atomically through `tmp/`.

use std::path::Path;

use berth_api::Digest;
use bytes::Bytes;

use super::super::{PutManifest, Storage, StoredManifest};
use crate::manifest::{Descriptor, ParsedManifest};
use crate::name::{ManifestRef, RepositoryName};
use crate::{Error, Result};

use super::*;

impl FsStorage {
    pub(super) async fn read_manifest(
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
        let (content, blob) = (self.content.clone(), digest.clone());
        let bytes = tokio::task::spawn_blocking(move || {
            // Stored manifests were size-checked when they were put: read them whole.
            content.read_limited(&blob, u64::MAX)
        })
        .await
        .expect("manifest read task panicked")
        .map_err(|_| unknown())?;
        Ok(StoredManifest {
            digest,
            media_type,
            bytes: Bytes::from(bytes),
        })
    }

    pub(super) async fn store_manifest(
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
        if self.content.contains(&digest) {
            self.touch_blob(&digest).await?;
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

    pub(super) async fn remove_manifest(
        &self,
        repo: &RepositoryName,
        reference: &ManifestRef,
    ) -> Result<()> {
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

    pub(super) async fn list_tags(&self, repo: &RepositoryName) -> Result<Vec<String>> {
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

    pub(super) async fn list_repositories_sorted(&self) -> Result<Vec<String>> {
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

    pub(super) async fn list_referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>> {
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
}

pub(super) fn list_repositories(dir: &Path, prefix: String, found: &mut Vec<String>) -> Result<()> {
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
