//! Pushing: blobs skipped when present (`HEAD`), mounted from another repository, uploaded
//! whole or in chunks that resume after a dropped connection; then the manifest tree.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_api::Digest;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header;
use reqwest::{Method, StatusCode};
use tokio::io::AsyncSeekExt;

use crate::manifest::{Descriptor, ParsedManifest};
use crate::name::{ManifestRef, RepositoryName};
use crate::{Error, Result};

use super::{Client, Direction, LocalContent, PushReport, Transfer, scope};

impl Client {
    /// Starts an upload session (or mounts `digest` from `mount_from`): returns the session's
    /// URL, or `None` when the mount succeeded.
    pub(super) async fn start_upload(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        mount_from: Option<&RepositoryName>,
    ) -> Result<Option<String>> {
        let mut url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let mut scope_value = scope(repo, "pull,push");
        if let Some(from) = mount_from {
            url.push_str(&format!("?mount={digest}&from={from}"));
            scope_value.push(' ');
            scope_value.push_str(&scope(from, "pull"));
        }
        let response = self
            .expect(
                Method::POST,
                &url,
                &scope_value,
                &[StatusCode::ACCEPTED, StatusCode::CREATED],
                |r| r.header(header::CONTENT_LENGTH, "0"),
            )
            .await?;
        if response.status() == StatusCode::CREATED {
            return Ok(None);
        }
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::BadRequest("upload started without a Location".into()))?;
        Ok(Some(self.resolve_location(&url, location)))
    }

    pub(super) fn resolve_location(&self, request_url: &str, location: &str) -> String {
        url::Url::parse(request_url)
            .and_then(|base| base.join(location))
            .map(String::from)
            .unwrap_or_else(|_| self.url(location))
    }

    /// The URL of the next request of an upload session, from a response's `Location`.
    pub(super) fn next_location(&self, current: &str, response: &reqwest::Response) -> String {
        response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| self.resolve_location(current, l))
            .unwrap_or_else(|| current.to_owned())
    }

    /// Uploads the blob at `path` to `repo`, skipping it when the registry has it and mounting
    /// it from `mount_from` when possible. Returns how it got there.
    pub async fn push_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        path: &Path,
        mount_from: Option<&RepositoryName>,
    ) -> Result<BlobPush> {
        let file = std::fs::File::open(path).map_err(Error::io("open", path))?;
        self.push_blob_file(repo, digest, &file, path, mount_from)
            .await
    }

    /// [`Client::push_blob`] from an open file (`name` names it in errors).
    pub(super) async fn push_blob_file(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        file: &std::fs::File,
        name: &Path,
        mount_from: Option<&RepositoryName>,
    ) -> Result<BlobPush> {
        if self.blob_size(repo, digest).await?.is_some() {
            return Ok(BlobPush::Skipped);
        }
        let path = name;
        let size = file.metadata().map_err(Error::io("stat", path))?.len();
        let Some(mut location) = self.start_upload(repo, digest, mount_from).await? else {
            return Ok(BlobPush::Mounted);
        };
        let scope_value = scope(repo, "pull,push");
        let bar = self.bar(digest, size, Direction::Push);
        let with_digest = |location: &str| {
            let sep = if location.contains('?') { '&' } else { '?' };
            format!("{location}{sep}digest={digest}")
        };
        if size <= self.options.chunk_size {
            // Monolithic: one PUT carrying the whole blob, retried from the start on failure.
            let mut attempt = 0;
            loop {
                let body = file_body(file, path, 0, size, bar.clone()).await?;
                let url = with_digest(&location);
                let result = self
                    .expect(
                        Method::PUT,
                        &url,
                        &scope_value,
                        &[StatusCode::CREATED],
                        move |r| {
                            r.header(header::CONTENT_TYPE, "application/octet-stream")
                                .header(header::CONTENT_LENGTH, size)
                                .body(body.take())
                        },
                    )
                    .await;
                match result {
                    Ok(_) => break,
                    Err(Error::Http { .. }) if attempt < self.options.retries => {
                        attempt += 1;
                        bar.set_position(0);
                        // The session may hold a partial body: start a fresh one.
                        if let Some(l) = self.start_upload(repo, digest, None).await? {
                            location = l;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        } else {
            // Chunked: PATCH with Content-Range; after a failure, ask the registry how much it
            // holds and continue from there.
            let mut offset = 0u64;
            let mut attempt = 0;
            while offset < size {
                let len = self.options.chunk_size.min(size - offset);
                let body = file_body(file, path, offset, len, bar.clone()).await?;
                let range = format!("{offset}-{}", offset + len - 1);
                let result = self
                    .expect(
                        Method::PATCH,
                        &location,
                        &scope_value,
                        &[StatusCode::ACCEPTED],
                        move |r| {
                            r.header(header::CONTENT_TYPE, "application/octet-stream")
                                .header(header::CONTENT_RANGE, range.as_str())
                                .header(header::CONTENT_LENGTH, len)
                                .body(body.take())
                        },
                    )
                    .await;
                match result {
                    Ok(response) => {
                        location = self.next_location(&location, &response);
                        offset += len;
                    }
                    Err(
                        Error::Http { .. }
                        | Error::Status {
                            status: 400 | 416 | 500..,
                            ..
                        },
                    ) if attempt < self.options.retries => {
                        attempt += 1;
                        offset = self.upload_offset(repo, &location).await?;
                        bar.set_position(offset);
                    }
                    Err(e) => return Err(e),
                }
            }
            let url = with_digest(&location);
            self.expect(
                Method::PUT,
                &url,
                &scope_value,
                &[StatusCode::CREATED],
                |r| r.header(header::CONTENT_LENGTH, "0"),
            )
            .await?;
        }
        bar.finish();
        Ok(BlobPush::Uploaded(size))
    }

    /// How many bytes an upload session holds (from its `Range` header). The query is asked
    /// right after a dropped connection, so a transport error is retried (it is idempotent).
    pub(super) async fn upload_offset(&self, repo: &RepositoryName, location: &str) -> Result<u64> {
        let mut attempt = 0;
        let response = loop {
            let result = self
                .expect(
                    Method::GET,
                    location,
                    &scope(repo, "pull,push"),
                    &[StatusCode::NO_CONTENT, StatusCode::OK],
                    |r| r,
                )
                .await;
            match result {
                Err(Error::Http { .. }) if attempt < self.options.retries => attempt += 1,
                other => break other?,
            }
        };
        let range = response
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0-0")
            .to_owned();
        let end = range
            .rsplit('-')
            .next()
            .and_then(|e| e.parse::<u64>().ok())
            .unwrap_or(0);
        // "0-0" is ambiguous (empty or one byte): assume empty, a re-sent byte is rejected
        // with 416 and retried from the reported offset anyway.
        Ok(if end == 0 { 0 } else { end + 1 })
    }

    /// Pushes the image whose top-level manifest is `root` from `local` to `repo` under `tag`:
    /// children of an index first, blobs of each manifest concurrently, manifests last.
    pub async fn push_image(
        &self,
        repo: &RepositoryName,
        tag: &str,
        root: &Descriptor,
        local: &dyn LocalContent,
        mount_from: Option<&RepositoryName>,
    ) -> Result<PushReport> {
        let mut report = PushReport::default();
        self.push_manifest_tree(repo, root, local, mount_from, &mut report)
            .await?;
        let bytes = Bytes::from(local.read(&root.digest)?);
        let digest = self
            .put_manifest(
                repo,
                &ManifestRef::Tag(tag.to_owned()),
                &root.media_type,
                bytes,
            )
            .await?;
        report.digest = Some(digest);
        Ok(report)
    }

    pub(super) async fn push_manifest_tree(
        &self,
        repo: &RepositoryName,
        descriptor: &Descriptor,
        local: &dyn LocalContent,
        mount_from: Option<&RepositoryName>,
        report: &mut PushReport,
    ) -> Result<()> {
        let bytes = local.read(&descriptor.digest)?;
        let parsed = ParsedManifest::parse(&bytes, Some(&descriptor.media_type))?;
        for child in parsed.children() {
            if !local.contains(&child.digest) {
                // Indexes may list platforms that were never fetched; skip those.
                continue;
            }
            Box::pin(self.push_manifest_tree(repo, child, local, mount_from, report)).await?;
            let child_bytes = Bytes::from(local.read(&child.digest)?);
            self.put_manifest(
                repo,
                &ManifestRef::Digest(child.digest.clone()),
                &child.media_type,
                child_bytes,
            )
            .await?;
        }
        let blobs: Vec<Descriptor> = parsed.blobs().cloned().collect();
        let results: Vec<(u64, BlobPush)> = futures_util::stream::iter(blobs)
            .map(|blob| async move {
                let file = local.open_blob(&blob.digest)?;
                let name = PathBuf::from(blob.digest.to_string());
                let how = self
                    .push_blob_file(repo, &blob.digest, &file, &name, mount_from)
                    .await?;
                Ok::<_, Error>((blob.size, how))
            })
            .buffer_unordered(self.options.concurrency.max(1))
            .try_collect()
            .await?;
        for (size, how) in results {
            match how {
                BlobPush::Skipped => report.skipped += 1,
                BlobPush::Mounted => report.mounted += 1,
                BlobPush::Uploaded(n) => {
                    report.uploaded += 1;
                    report.bytes += n.max(size);
                }
            }
        }
        Ok(())
    }
}

/// How a blob reached the registry in [`Client::push_blob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPush {
    /// The registry already had it.
    Skipped,
    /// Mounted from another repository.
    Mounted,
    /// Uploaded; the blob's size.
    Uploaded(u64),
}

/// A request body that streams `len` bytes of a file from `offset`, once.
struct OnceBody(Mutex<Option<reqwest::Body>>);

impl OnceBody {
    fn take(&self) -> reqwest::Body {
        self.0
            .lock()
            .expect("body lock poisoned")
            .take()
            .unwrap_or_else(|| reqwest::Body::from(Bytes::new()))
    }
}

async fn file_body(
    file: &std::fs::File,
    path: &Path,
    offset: u64,
    len: u64,
    bar: Arc<dyn Transfer>,
) -> Result<OnceBody> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::from_std(file.try_clone().map_err(Error::io("dup", path))?);
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(Error::io("seek", path))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 << 10).inspect(
        move |chunk| {
            if let Ok(c) = chunk {
                bar.advance(c.len() as u64);
            }
        },
    );
    Ok(OnceBody(Mutex::new(Some(reqwest::Body::wrap_stream(
        stream,
    )))))
}
