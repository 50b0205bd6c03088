//! A registry client: pulls and pushes images between a registry and local content.
//!
//! [`Client`] speaks the distribution API with the auth flows registries use (HTTP Basic and
//! Docker bearer tokens, negotiated from `WWW-Authenticate`). [`Client::push_image`] uploads all
//! blobs concurrently, skipping those the registry already has (`HEAD`), mounting from another
//! repository when asked, and uploading large blobs in chunks that resume after a dropped
//! connection; [`Client::pull_image`] downloads concurrently, resuming with `Range` requests and
//! verifying every digest. Local content is anything implementing [`LocalContent`].

mod auth;
mod local;
mod progress;
mod pull;
mod push;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{Algorithm, Digest};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header;
use reqwest::{Method, StatusCode};

pub use local::LocalContent;
pub use progress::{Direction, NoProgress, Progress, Transfer};
pub use push::BlobPush;

use berth_image::Platform;

use crate::manifest::{Descriptor, MANIFEST_MEDIA_TYPES, ParsedManifest};
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
