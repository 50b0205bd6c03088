//! Berth's client against Berth's server: push and pull round trips (concurrent, chunked,
//! skipped and mounted blobs), Basic and bearer-token auth, and TLS.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use berth_registry::auth::{Htpasswd, TokenIssuer, basic_header};
use berth_registry::client::{Client, ClientOptions};
use berth_registry::manifest::{Descriptor, OCI_MANIFEST};
use berth_registry::server::{AuthConfig, ServerConfig};
use berth_registry::{Error, ManifestRef, RepositoryName};
use common::{LayoutDir, TestServer, http, image_manifest, noise};
use reqwest::StatusCode;

/// A local image with a config and three layers, one of `big` bytes.
fn local_image(dir: &LayoutDir, seed: u64, big: usize) -> Descriptor {
    let config =
        dir.add(format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).as_bytes());
    let layers = [
        dir.add(&noise(1000, seed)),
        dir.add(&noise(big, seed + 1)),
        dir.add(&noise(70_000, seed + 2)),
    ];
    let manifest = image_manifest(&config, &layers);
    let mut d = dir.add(&manifest);
    d.media_type = OCI_MANIFEST.to_owned();
    d
}

fn options() -> ClientOptions {
    ClientOptions {
        insecure: true,
        chunk_size: 1 << 20,
        ..ClientOptions::default()
    }
}

fn repo(s: &str) -> RepositoryName {
    RepositoryName::new(s).unwrap()
}

fn assert_same_blobs(a: &LayoutDir, b: &LayoutDir, root: &Descriptor) {
    let manifest = std::fs::read(a.path(&root.digest)).unwrap();
    assert_eq!(std::fs::read(b.path(&root.digest)).unwrap(), manifest);
    let parsed =
        berth_registry::manifest::ParsedManifest::parse(&manifest, Some(OCI_MANIFEST)).unwrap();
    for blob in parsed.blobs() {
        assert_eq!(
            std::fs::read(a.path(&blob.digest)).unwrap(),
            std::fs::read(b.path(&blob.digest)).unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_round_trip() {
    let s = TestServer::start(ServerConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = LayoutDir::new(&tmp.path().join("src"));
    let root = local_image(&src, 1, (3 << 20) + 17);
    let client = Client::new(&s.host(), options()).unwrap();
    client.ping().await.unwrap();

    let report = client
        .push_image(&repo("demo/app"), "1", &root, &src, None)
        .await
        .unwrap();
    assert_eq!(report.digest.as_ref(), Some(&root.digest));
    assert_eq!((report.uploaded, report.skipped), (4, 0));
    // Everything is there now: a second push uploads nothing.
    let report = client
        .push_image(&repo("demo/app"), "2", &root, &src, None)
        .await
        .unwrap();
    assert_eq!((report.uploaded, report.skipped), (0, 4));
    // Another repository mounts from the first.
    let report = client
        .push_image(&repo("other"), "1", &root, &src, Some(&repo("demo/app")))
        .await
        .unwrap();
    assert_eq!((report.uploaded, report.mounted), (0, 4));
    assert_eq!(client.tags(&repo("demo/app")).await.unwrap(), ["1", "2"]);

    let dst = LayoutDir::new(&tmp.path().join("dst"));
    let pulled = client
        .pull_image(&repo("demo/app"), &ManifestRef::Tag("1".into()), &dst)
        .await
        .unwrap();
    assert_eq!(pulled.descriptor.digest, root.digest);
    assert_eq!(pulled.downloaded, 4);
    assert_same_blobs(&src, &dst, &root);
    // Pulling again downloads nothing.
    let pulled = client
        .pull_image(
            &repo("other"),
            &ManifestRef::Digest(root.digest.clone()),
            &dst,
        )
        .await
        .unwrap();
    assert_eq!(pulled.downloaded, 0);
    // No staging leftovers.
    assert_eq!(
        std::fs::read_dir(dst.staging_dir_path()).unwrap().count(),
        0
    );
}

trait StagingPath {
    fn staging_dir_path(&self) -> std::path::PathBuf;
}

impl StagingPath for LayoutDir {
    fn staging_dir_path(&self) -> std::path::PathBuf {
        self.root.join("staging")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_refuses_a_corrupted_blob() {
    let s = TestServer::start(ServerConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = LayoutDir::new(&tmp.path().join("src"));
    let root = local_image(&src, 20, 5000);
    let client = Client::new(&s.host(), options()).unwrap();
    client
        .push_image(&repo("c"), "1", &root, &src, None)
        .await
        .unwrap();
    // Corrupt one stored layer behind the server's back.
    let manifest = std::fs::read(src.path(&root.digest)).unwrap();
    let parsed =
        berth_registry::manifest::ParsedManifest::parse(&manifest, Some(OCI_MANIFEST)).unwrap();
    let layer = parsed.blobs().nth(1).unwrap().digest.clone();
    // The documented layout: blobs/<alg>/<hex> under the storage root.
    let path = s
        .dir
        .join("blobs")
        .join(layer.algorithm().as_str())
        .join(layer.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let dst = LayoutDir::new(&tmp.path().join("dst"));
    let err = client
        .pull_image(&repo("c"), &ManifestRef::Tag("1".into()), &dst)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(!dst.path(&layer).exists());
}

fn auth_config(tokens: bool, anonymous_pull: bool) -> ServerConfig {
    ServerConfig {
        auth: Some(AuthConfig {
            htpasswd: Htpasswd::single("alice", "s3cret"),
            tokens: tokens.then(|| TokenIssuer::new(Duration::from_secs(300))),
            anonymous_pull,
        }),
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_refuses_unauthenticated_push() {
    let s = TestServer::start(auth_config(false, true)).await;
    let c = http();
    let r = c
        .post(format!("{}/v2/x/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
    assert_eq!(common::error_code(r).await, "UNAUTHORIZED");
    let r = c
        .post(format!("{}/v2/x/blobs/uploads/", s.url))
        .header("authorization", basic_header("alice", "wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Anonymous pull is on: reads need no credentials.
    let r = c.get(format!("{}/v2/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let tmp = tempfile::tempdir().unwrap();
    let src = LayoutDir::new(&tmp.path().join("src"));
    let root = local_image(&src, 30, 2000);
    let anonymous = Client::new(&s.host(), options()).unwrap();
    let err = anonymous
        .push_image(&repo("x"), "1", &root, &src, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    let alice = Client::new(
        &s.host(),
        ClientOptions {
            credentials: Some(("alice".into(), "s3cret".into())),
            ..options()
        },
    )
    .unwrap();
    alice
        .push_image(&repo("x"), "1", &root, &src, None)
        .await
        .unwrap();
    let dst = LayoutDir::new(&tmp.path().join("dst"));
    anonymous
        .pull_image(&repo("x"), &ManifestRef::Tag("1".into()), &dst)
        .await
        .unwrap();
    assert_same_blobs(&src, &dst, &root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_scoped_per_repository() {
    let s = TestServer::start(auth_config(true, false)).await;
    let c = http();
    let r = c.get(format!("{}/v2/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with(&format!(r#"Bearer realm="{}/token""#, s.url)),
        "{challenge}"
    );
    // No anonymous tokens when anonymous pull is off.
    let r = c
        .get(format!("{}/token?scope=repository:a:pull", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A token for pushing to `a` does not let its holder push to `b`.
    let r = c
        .get(format!(
            "{}/token?service=berth-registry&scope=repository:a:pull,push",
            s.url
        ))
        .header("authorization", basic_header("alice", "s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    let post = |name: &str| {
        c.post(format!("{}/v2/{name}/blobs/uploads/", s.url))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(post("a").await.unwrap().status(), StatusCode::ACCEPTED);
    let r = post("b").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(r#"scope="repository:b:push""#)
    );

    // The client follows the flow on its own.
    let tmp = tempfile::tempdir().unwrap();
    let src = LayoutDir::new(&tmp.path().join("src"));
    let root = local_image(&src, 40, 3000);
    let alice = Client::new(
        &s.host(),
        ClientOptions {
            credentials: Some(("alice".into(), "s3cret".into())),
            ..options()
        },
    )
    .unwrap();
    alice
        .push_image(&repo("tok/app"), "1", &root, &src, None)
        .await
        .unwrap();
    let dst = LayoutDir::new(&tmp.path().join("dst"));
    alice
        .pull_image(&repo("tok/app"), &ManifestRef::Tag("1".into()), &dst)
        .await
        .unwrap();
    assert_same_blobs(&src, &dst, &root);
    let anonymous = Client::new(&s.host(), options()).unwrap();
    let err = anonymous
        .pull_image(&repo("tok/app"), &ManifestRef::Tag("1".into()), &dst)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_with_a_certificate_and_key() {
    if !berth_testutil::require_command("serves TLS", "openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let tls = berth_registry::server::load_tls(&cert, &key).unwrap();
    assert!(berth_registry::server::load_tls(&key, &key).is_err());
    let store = tmp.path().join("store");
    let s = TestServer::start_in(&store, ServerConfig::default(), Some(tls)).await;
    let src = LayoutDir::new(&tmp.path().join("src"));
    let root = local_image(&src, 50, 4000);
    let client = Client::new(
        &s.host(),
        ClientOptions {
            insecure: false,
            accept_invalid_certs: true,
            ..options()
        },
    )
    .unwrap();
    client
        .push_image(&repo("tls"), "1", &root, &src, None)
        .await
        .unwrap();
    // A verifying client refuses the self-signed certificate.
    let strict = Client::new(&s.host(), ClientOptions::default()).unwrap();
    assert!(strict.ping().await.is_err());
}

/// A TCP proxy in front of a server that cuts one connection once `cut_after` bytes have flowed
/// in the direction chosen (`downstream`: server to client), and counts bytes both ways.
struct FlakyProxy {
    addr: std::net::SocketAddr,
    down: Arc<AtomicU64>,
    up: Arc<AtomicU64>,
}

impl FlakyProxy {
    async fn start(target: std::net::SocketAddr, cut_after: u64, downstream: bool) -> FlakyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (down, up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let cut = Arc::new(AtomicBool::new(false));
        let (d, u) = (down.clone(), up.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(target).await.unwrap();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let (d, u, cut) = (d.clone(), u.clone(), cut.clone());
                let cut2 = cut.clone();
                let a = tokio::spawn(pipe(sr, cw, d, cut_after, downstream, cut));
                let b = tokio::spawn(pipe(cr, sw, u, cut_after, !downstream, cut2));
                tokio::spawn(async move {
                    // When either direction ends or is cut, close both: a dropped connection.
                    let (abort_a, abort_b) = (a.abort_handle(), b.abort_handle());
                    tokio::select! { _ = a => {}, _ = b => {} }
                    abort_a.abort();
                    abort_b.abort();
                });
            }
        });
        FlakyProxy { addr, down, up }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
    cut_after: u64,
    may_cut: bool,
    cut: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let total = count.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        if may_cut && total > cut_after && !cut.swap(true, Ordering::SeqCst) {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_resume_after_a_dropped_connection() {
    let s = TestServer::start(ServerConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = LayoutDir::new(&tmp.path().join("src"));
    let big = 4 << 20;
    let root = local_image(&src, 60, big);

    // Push in 1 MiB chunks; the connection drops after 2.5 MiB went up.
    let proxy = FlakyProxy::start(s.addr, (5 << 20) / 2, false).await;
    let client = Client::new(&proxy.addr.to_string(), options()).unwrap();
    client
        .push_image(&repo("resume"), "1", &root, &src, None)
        .await
        .unwrap();
    let sent = proxy.up.load(Ordering::SeqCst);
    assert!(sent < (big as u64) * 3 / 2, "re-sent too much: {sent}");

    // Pull; the connection drops after 1 MiB came down, the rest arrives by Range.
    let proxy = FlakyProxy::start(s.addr, 1 << 20, true).await;
    let client = Client::new(&proxy.addr.to_string(), options()).unwrap();
    let dst = LayoutDir::new(&tmp.path().join("dst"));
    client
        .pull_image(&repo("resume"), &ManifestRef::Tag("1".into()), &dst)
        .await
        .unwrap();
    assert_same_blobs(&src, &dst, &root);
    let received = proxy.down.load(Ordering::SeqCst);
    assert!(
        received < (big as u64) * 5 / 4,
        "downloaded too much: {received}"
    );
}

/// `POST /token` as docker and containerd send it (OAuth2 password and refresh-token grants),
/// and a signing key kept under the registry root, so tokens outlive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_post_and_tokens_that_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("registry");
    std::fs::create_dir_all(&dir).unwrap();
    let config = || ServerConfig {
        auth: Some(AuthConfig {
            htpasswd: Htpasswd::single("alice", "s3cret"),
            tokens: Some(
                TokenIssuer::persistent(&dir.join("token.key"), Duration::from_secs(300)).unwrap(),
            ),
            anonymous_pull: false,
        }),
        ..ServerConfig::default()
    };
    let s = TestServer::start_in(&dir, config(), None).await;
    let c = http();
    let form = |body: &str| {
        c.post(format!("{}/token", s.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
    };
    let r = form(
        "grant_type=password&username=alice&password=s3cret&service=berth-registry\
         &client_id=test&access_type=offline&scope=repository%3Aa%3Apull%2Cpush",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "repository:a:pull,push");
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();

    let r = form("grant_type=password&username=alice&password=wrong&scope=repository%3Aa%3Apull")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = form("grant_type=client_credentials").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = form(&format!("grant_type=refresh_token&refresh_token={access}"))
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "an access token is no refresh token"
    );

    // The refresh token buys a new access token, but is no access token itself.
    let r = form(&format!(
        "grant_type=refresh_token&refresh_token={refresh}&scope=repository%3Aa%3Apull"
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["scope"], "repository:a:pull");
    let pull_only = body["access_token"].as_str().unwrap().to_owned();
    let upload = |url: String, token: String| {
        let c = c.clone();
        async move {
            c.post(format!("{url}/v2/a/blobs/uploads/"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        upload(s.url.clone(), refresh.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        upload(s.url.clone(), pull_only).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        upload(s.url.clone(), access.clone()).await,
        StatusCode::ACCEPTED
    );

    // A restart over the same root keeps the key: the old token still works.
    drop(s);
    let s = TestServer::start_in(&dir, config(), None).await;
    assert_eq!(upload(s.url.clone(), access).await, StatusCode::ACCEPTED);
}
