//! Pulling: a blob streamed into local content with `Range` resumes and its digest verified,
//! and a whole image (manifest tree, then its blobs concurrently).

use std::path::PathBuf;
use std::time::Duration;

use berth_api::Digest;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::manifest::{self, Descriptor, ParsedManifest};
use crate::name::{ManifestRef, RepositoryName};
use crate::{Error, Result};

use super::{Client, Direction, LocalContent, PulledImage, scope};

impl Client {
    /// Downloads a blob into `local`, resuming with `Range` after a dropped connection and
    /// verifying its digest (and `size`, when known). Returns the bytes transferred.
    pub async fn pull_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: Option<u64>,
        local: &dyn LocalContent,
    ) -> Result<u64> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let staged =
            local
                .staging_dir()
                .join(format!("pull-{}-{}", digest.hex(), uuid::Uuid::new_v4()));
        let guard = RemoveOnDrop(staged.clone());
        let mut file = tokio::fs::File::create(&staged)
            .await
            .map_err(Error::io("create", &staged))?;
        let bar = self.bar(digest, size.unwrap_or(0), Direction::Pull);
        let mut hasher = digest.algorithm().hasher();
        let mut written = 0u64;
        let mut attempt = 0;
        loop {
            let resume = written;
            let response = self
                .expect(
                    Method::GET,
                    &url,
                    &scope(repo, "pull"),
                    &[StatusCode::OK, StatusCode::PARTIAL_CONTENT],
                    |r| {
                        if resume > 0 {
                            r.header(header::RANGE, format!("bytes={resume}-"))
                        } else {
                            r
                        }
                    },
                )
                .await;
            let response = match response {
                Ok(r) => r,
                Err(e @ Error::Http { .. }) if attempt < self.options.retries => {
                    attempt += 1;
                    tracing::debug!(%digest, error = %e, "retrying blob download");
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if written > 0 && response.status() == StatusCode::OK {
                // The server ignored the range: start over.
                file.set_len(0)
                    .await
                    .map_err(Error::io("truncate", &staged))?;
                file.seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(Error::io("seek", &staged))?;
                hasher = digest.algorithm().hasher();
                written = 0;
                bar.set_position(0);
            }
            if size.is_none()
                && let Some(len) = response.content_length()
            {
                bar.set_length(written + len);
            }
            let mut stream = response.bytes_stream();
            let mut broken = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => {
                        hasher.update(&chunk);
                        file.write_all(&chunk)
                            .await
                            .map_err(Error::io("write", &staged))?;
                        written += chunk.len() as u64;
                        bar.set_position(written);
                        if size.is_some_and(|s| written > s) {
                            break;
                        }
                    }
                    Err(source) => {
                        broken = Some(Error::Http {
                            url: url.clone(),
                            source,
                        });
                        break;
                    }
                }
            }
            match broken {
                Some(e) if attempt < self.options.retries => {
                    attempt += 1;
                    tracing::debug!(%digest, written, error = %e, "resuming blob download");
                }
                Some(e) => return Err(e),
                None => break,
            }
        }
        file.flush().await.map_err(Error::io("write", &staged))?;
        drop(file);
        if let Some(expected) = size.filter(|&s| s != written) {
            return Err(Error::SizeMismatch {
                digest: digest.clone(),
                expected,
                found: written,
            });
        }
        let found = hasher.finish();
        if &found != digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                found,
            });
        }
        local.ingest(&staged, digest)?;
        std::mem::forget(guard);
        bar.finish();
        Ok(written)
    }

    /// Pulls `reference` from `repo` into `local`: the top-level manifest, for an index the
    /// manifests of the client's platform, and every blob they name (concurrently, skipping
    /// blobs `local` already has).
    pub async fn pull_image(
        &self,
        repo: &RepositoryName,
        reference: &ManifestRef,
        local: &dyn LocalContent,
    ) -> Result<PulledImage> {
        let top = self.get_manifest(repo, reference).await?;
        let descriptor = Descriptor {
            media_type: top.media_type.clone(),
            digest: top.digest.clone(),
            size: top.bytes.len() as u64,
            artifact_type: None,
            annotations: None,
            urls: None,
            platform: None,
        };
        let mut pulled = PulledImage {
            descriptor,
            downloaded: 0,
            bytes: 0,
        };
        let mut manifests = vec![top];
        let mut blobs: Vec<Descriptor> = Vec::new();
        while let Some(m) = manifests.pop() {
            let parsed = ParsedManifest::parse(&m.bytes, Some(&m.media_type))?;
            if manifest::is_index(&parsed.media_type) {
                let wanted: Vec<&Descriptor> = parsed
                    .children()
                    .filter(|c| {
                        c.platform
                            .as_ref()
                            .is_some_and(|p| self.options.platform.matches(p))
                    })
                    .collect();
                if wanted.is_empty() {
                    return Err(Error::NoMatchingPlatform(self.options.platform.to_string()));
                }
                for child in wanted {
                    manifests.push(
                        self.get_manifest(repo, &ManifestRef::Digest(child.digest.clone()))
                            .await?,
                    );
                }
            } else {
                blobs.extend(parsed.blobs().cloned());
            }
            if !local.contains(&m.digest) {
                local.write_small(&m.digest, &m.bytes)?;
            }
        }
        blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        blobs.dedup_by(|a, b| a.digest == b.digest);
        blobs.retain(|b| !local.contains(&b.digest));
        let sizes: Vec<u64> = futures_util::stream::iter(blobs)
            .map(|blob| async move {
                self.pull_blob(repo, &blob.digest, Some(blob.size), local)
                    .await
            })
            .buffer_unordered(self.options.concurrency.max(1))
            .try_collect()
            .await?;
        pulled.downloaded = sizes.len();
        pulled.bytes = sizes.iter().sum();
        Ok(pulled)
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
