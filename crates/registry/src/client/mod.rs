//! A registry client: pulls and pushes images between a registry and local content.
//!
//! [`Client`] speaks the distribution API with the auth flows registries use (HTTP Basic and
//! Docker bearer tokens, negotiated from `WWW-Authenticate`). [`Client::push_image`] uploads all
//! blobs concurrently, skipping those the registry already has (`HEAD`), mounting from another
//! repository when asked, and uploading large blobs in chunks that resume after a dropped
//! connection; [`Client::pull_image`] downloads concurrently, resuming with `Range` requests and
//! verifying every digest. Local content is anything implementing [`LocalContent`].

mod local;
mod progress;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{Algorithm, Digest};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

pub use local::LocalContent;
pub use progress::{Direction, NoProgress, Progress, Transfer};

use crate::auth::{Challenge, basic_header};
use berth_image::Platform;

use crate::manifest::{self, Descriptor, MANIFEST_MEDIA_TYPES, ParsedManifest};
use crate::name::{ManifestRef, RepositoryName};
use crate::storage::StoredManifest;
use crate::{Error, Result};

/// How a [`Client`] connects and behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Use plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Accept TLS certificates that do not verify (self-signed test registries).
    pub accept_invalid_certs: bool,
    /// User and password for Basic auth or the token endpoint.
    pub credentials: Option<(String, String)>,
    /// Blobs larger than this are uploaded in chunks of this size.
    pub chunk_size: u64,
    /// Blobs transferred at once.
    pub concurrency: usize,
    /// Attempts per blob before giving up (resuming each time).
    pub retries: u32,
    /// Where transfer progress goes ([`NoProgress`] by default).
    pub progress: Arc<dyn Progress>,
    /// The platform to pull from an index.
    pub platform: Platform,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            accept_invalid_certs: false,
            credentials: None,
            chunk_size: 32 << 20,
            concurrency: 4,
            retries: 5,
            progress: Arc::new(NoProgress),
            platform: Platform::host(),
        }
    }
}

/// A client for one registry.
pub struct Client {
    http: reqwest::Client,
    base: String,
    options: ClientOptions,
    /// `Authorization` values by scope (`""` for Basic, which covers every scope).
    auth: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

/// What [`Client::push_image`] did.
#[derive(Debug, Clone, Default)]
pub struct PushReport {
    /// Digest of the pushed top-level manifest.
    pub digest: Option<Digest>,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry already had.
    pub skipped: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// What [`Client::pull_image`] fetched.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The top-level manifest (an index or an image manifest).
    pub descriptor: Descriptor,
    /// Blobs downloaded (those already present locally are not).
    pub downloaded: usize,
    /// Bytes downloaded.
    pub bytes: u64,
}

fn scope(repo: &RepositoryName, actions: &str) -> String {
    format!("repository:{repo}:{actions}")
}

async fn status_error(method: &Method, url: &str, response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    let mut body = response.text().await.unwrap_or_default();
    body.truncate(1024);
    Error::Status {
        method: method.to_string(),
        url: url.to_owned(),
        status,
        body,
    }
}

impl Client {
    /// A client for the registry at `registry` (`host[:port]`).
    pub fn new(registry: &str, options: ClientOptions) -> Result<Self> {
        let scheme = if options.insecure { "http" } else { "https" };
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(options.accept_invalid_certs)
            .connect_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(options.concurrency.max(1) * 2)
            .user_agent(concat!("berth-registry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| Error::Http {
                url: registry.to_owned(),
                source,
            })?;
        Ok(Client {
            http,
            base: format!("{scheme}://{registry}"),
            options,
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// The registry's base URL (`http://127.0.0.1:5000`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn cached_auth(&self, scope: &str) -> Option<String> {
        let cache = self.auth.lock().expect("auth cache poisoned");
        cache.get("").or_else(|| cache.get(scope)).cloned()
    }

    async fn authenticate(&self, url: &str, challenge: &str, scope: &str) -> Result<String> {
        let auth_error = |reason: String| Error::Auth {
            url: url.to_owned(),
            reason,
        };
        match Challenge::parse(challenge) {
            Some(Challenge::Basic) => {
                let (user, password) = self
                    .options
                    .credentials
                    .as_ref()
                    .ok_or_else(|| auth_error("the registry wants credentials".into()))?;
                let value = basic_header(user, password);
                self.auth
                    .lock()
                    .expect("auth cache poisoned")
                    .insert(String::new(), value.clone());
                Ok(value)
            }
            Some(Challenge::Bearer { realm, service, .. }) => {
                let mut request = self.http.get(&realm);
                let mut query = vec![("scope", scope.to_owned())];
                if let Some(service) = service {
                    query.push(("service", service));
                }
                request = request.query(&query);
                if let Some((user, password)) = &self.options.credentials {
                    request = request.basic_auth(user, Some(password));
                }
                let response = request.send().await.map_err(|source| Error::Http {
                    url: realm.clone(),
                    source,
                })?;
                if !response.status().is_success() {
                    return Err(auth_error(format!(
                        "token endpoint {realm} answered {}",
                        response.status()
                    )));
                }
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body: TokenResponse = response.json().await.map_err(|source| Error::Http {
                    url: realm.clone(),
                    source,
                })?;
                let token = body
                    .token
                    .or(body.access_token)
                    .ok_or_else(|| auth_error("token endpoint sent no token".into()))?;
                let value = format!("Bearer {token}");
                self.auth
                    .lock()
                    .expect("auth cache poisoned")
                    .insert(scope.to_owned(), value.clone());
                Ok(value)
            }
            None => Err(auth_error(format!("unsupported challenge {challenge:?}"))),
        }
    }

    /// Sends a request built by `build`, answering one auth challenge if the registry asks.
    async fn send(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let mut auth = self.cached_auth(scope);
        for attempt in 0..2 {
            let mut request = build(self.http.request(method.clone(), url));
            if let Some(value) = &auth {
                request = request.header(header::AUTHORIZATION, value);
            }
            let response = request.send().await.map_err(|source| Error::Http {
                url: url.to_owned(),
                source,
            })?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = response
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                auth = Some(self.authenticate(url, &challenge, scope).await?);
                continue;
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Sends and expects one of `ok`; anything else becomes [`Error::Status`].
    async fn expect(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        ok: &[StatusCode],
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let response = self.send(method.clone(), url, scope, build).await?;
        if ok.contains(&response.status()) {
            Ok(response)
        } else {
            Err(status_error(&method, url, response).await)
        }
    }

    /// `GET /v2/`: checks that the registry answers (authenticating if it asks).
    pub async fn ping(&self) -> Result<()> {
        let url = self.url("/v2/");
        self.expect(Method::GET, &url, "", &[StatusCode::OK], |r| r)
            .await
            .map(drop)
    }

    /// The size of a blob in `repo`, or `None` when the registry does not have it.
    pub async fn blob_size(&self, repo: &RepositoryName, digest: &Digest) -> Result<Option<u64>> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let response = self
            .expect(
                Method::HEAD,
                &url,
                &scope(repo, "pull"),
                &[StatusCode::OK, StatusCode::NOT_FOUND],
                |r| r,
            )
            .await?;
        Ok((response.status() == StatusCode::OK).then(|| response.content_length().unwrap_or(0)))
    }

    /// Fetches a manifest (any of the OCI and Docker media types), verifying its digest.
    pub async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &ManifestRef,
    ) -> Result<StoredManifest> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let accept = MANIFEST_MEDIA_TYPES.join(", ");
        let response = self
            .expect(
                Method::GET,
                &url,
                &scope(repo, "pull"),
                &[StatusCode::OK],
                |r| r.header(header::ACCEPT, &accept),
            )
            .await?;
        let media_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let bytes =
            read_limited(response, crate::manifest::DEFAULT_MAX_MANIFEST_SIZE, &url).await?;
        let algorithm = match (reference, &header_digest) {
            (ManifestRef::Digest(d), _) => d.algorithm(),
            (_, Some(d)) => d.algorithm(),
            _ => Algorithm::Sha256,
        };
        let digest = Digest::compute(algorithm, &bytes);
        let expected = match reference {
            ManifestRef::Digest(d) => Some(d.clone()),
            ManifestRef::Tag(_) => header_digest,
        };
        if let Some(expected) = expected.filter(|e| *e != digest) {
            return Err(Error::DigestMismatch {
                expected,
                found: digest,
            });
        }
        let parsed = ParsedManifest::parse(&bytes, media_type.as_deref())?;
        Ok(StoredManifest {
            digest,
            media_type: parsed.media_type,
            bytes,
        })
    }

    /// Pushes a manifest under `reference` and returns its digest.
    pub async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &ManifestRef,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        self.expect(
            Method::PUT,
            &url,
            &scope(repo, "pull,push"),
            &[StatusCode::CREATED, StatusCode::OK],
            |r| {
                r.header(header::CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            },
        )
        .await?;
        Ok(Digest::sha256(&bytes))
    }

    /// Every tag of `repo`, following `Link` pagination.
    pub async fn tags(&self, repo: &RepositoryName) -> Result<Vec<String>> {
        let mut url = self.url(&format!("/v2/{repo}/tags/list"));
        let mut tags = Vec::new();
        loop {
            let response = self
                .expect(
                    Method::GET,
                    &url,
                    &scope(repo, "pull"),
                    &[StatusCode::OK],
                    |r| r,
                )
                .await?;
            let next = response
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once('<'))
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(link, _)| self.url(link));
            #[derive(serde::Deserialize)]
            struct TagList {
                tags: Option<Vec<String>>,
            }
            let page: TagList = response.json().await.map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) => url = next,
                None => return Ok(tags),
            }
        }
    }

    fn bar(&self, digest: &Digest, size: u64, direction: Direction) -> Arc<dyn Transfer> {
        self.options.progress.start(digest, size, direction)
    }

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

    /// Starts an upload session (or mounts `digest` from `mount_from`): returns the session's
    /// URL, or `None` when the mount succeeded.
    async fn start_upload(
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

    fn resolve_location(&self, request_url: &str, location: &str) -> String {
        url::Url::parse(request_url)
            .and_then(|base| base.join(location))
            .map(String::from)
            .unwrap_or_else(|_| self.url(location))
    }

    /// The URL of the next request of an upload session, from a response's `Location`.
    fn next_location(&self, current: &str, response: &reqwest::Response) -> String {
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
        if self.blob_size(repo, digest).await?.is_some() {
            return Ok(BlobPush::Skipped);
        }
        let size = tokio::fs::metadata(path)
            .await
            .map_err(Error::io("stat", path))?
            .len();
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
                let body = file_body(path, 0, size, bar.clone()).await?;
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
                let body = file_body(path, offset, len, bar.clone()).await?;
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
    async fn upload_offset(&self, repo: &RepositoryName, location: &str) -> Result<u64> {
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

    async fn push_manifest_tree(
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
                let path = local
                    .blob_path(&blob.digest)
                    .ok_or_else(|| Error::BlobUnknown {
                        repository: "local".into(),
                        digest: blob.digest.clone(),
                    })?;
                let how = self
                    .push_blob(repo, &blob.digest, &path, mount_from)
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

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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

async fn file_body(path: &Path, offset: u64, len: u64, bar: Arc<dyn Transfer>) -> Result<OnceBody> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(Error::io("open", path))?;
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

async fn read_limited(response: reqwest::Response, limit: u64, url: &str) -> Result<Bytes> {
    if response.content_length().is_some_and(|l| l > limit) {
        return Err(Error::ManifestTooLarge {
            size: response.content_length().unwrap_or(0),
            limit,
        });
    }
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| Error::Http {
            url: url.to_owned(),
            source,
        })?;
        out.extend_from_slice(&chunk);
        if out.len() as u64 > limit {
            return Err(Error::ManifestTooLarge {
                size: out.len() as u64,
                limit,
            });
        }
    }
    Ok(Bytes::from(out))
}
