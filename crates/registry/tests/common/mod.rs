//! Shared helpers of the registry's integration tests: a server on a free loopback port over a
//! temp directory, a local OCI-layout blob directory, and test images.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_api::Digest;
use berth_registry::client::LocalContent;
use berth_registry::manifest::{Descriptor, OCI_MANIFEST};
use berth_registry::server::{self, ConnectionLimits, ServerConfig};
use berth_registry::{Error, FsStorage};

/// A registry server running in the test's runtime; stops when dropped.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub url: String,
    pub storage: Arc<FsStorage>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Self::start_in(&dir, config, None).await;
        s._tmp = Some(tmp);
        s
    }

    /// A server with `limits` on its connections.
    pub async fn start_limited(config: ServerConfig, limits: ConnectionLimits) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Self::start_full(&dir, config, None, limits).await;
        s._tmp = Some(tmp);
        s
    }

    pub async fn start_in(
        dir: &Path,
        config: ServerConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> TestServer {
        Self::start_full(dir, config, tls, ConnectionLimits::default()).await
    }

    pub async fn start_full(
        dir: &Path,
        config: ServerConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        limits: ConnectionLimits,
    ) -> TestServer {
        let storage = Arc::new(FsStorage::open(dir).unwrap());
        let router = server::router(storage.clone(), config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            server::serve_with(listener, router, tls, limits, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            addr,
            url: format!("{scheme}://{addr}"),
            storage,
            dir: dir.to_owned(),
            _tmp: None,
            stop: Some(stop),
        }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An OCI image layout's `blobs/` directory as local content.
pub struct LayoutDir {
    pub root: PathBuf,
}

impl LayoutDir {
    pub fn new(root: &Path) -> LayoutDir {
        std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        std::fs::create_dir_all(root.join("staging")).unwrap();
        LayoutDir {
            root: root.to_owned(),
        }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    pub fn add(&self, bytes: &[u8]) -> Descriptor {
        let digest = Digest::sha256(bytes);
        std::fs::write(self.path(&digest), bytes).unwrap();
        descriptor("application/octet-stream", &digest, bytes.len() as u64)
    }
}

impl LocalContent for LayoutDir {
    fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }
    fn open_blob(&self, digest: &Digest) -> Result<std::fs::File, Error> {
        let path = self.path(digest);
        std::fs::File::open(&path).map_err(|source| Error::Io {
            op: "open",
            path,
            source,
        })
    }
    fn read(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let path = self.path(digest);
        std::fs::read(&path).map_err(|source| Error::Io {
            op: "read",
            path,
            source,
        })
    }
    fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }
    fn ingest(&self, staged: &Path, digest: &Digest) -> Result<(), Error> {
        let target = self.path(digest);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::rename(staged, &target).map_err(|source| Error::Io {
            op: "rename",
            path: target,
            source,
        })
    }
}

pub fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: digest.clone(),
        size,
        artifact_type: None,
        annotations: None,
        urls: None,
        platform: None,
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An OCI image manifest over `config` and `layers` (all descriptors of blobs).
pub fn image_manifest(config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    let mut config = config.clone();
    config.media_type = "application/vnd.oci.image.config.v1+json".into();
    let layers: Vec<Descriptor> = layers
        .iter()
        .cloned()
        .map(|mut l| {
            l.media_type = "application/vnd.oci.image.layer.v1.tar".into();
            l
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    }))
    .unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

/// The `code` of the first error in a spec error body.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["errors"][0]["code"].as_str().unwrap_or("").to_owned()
}
