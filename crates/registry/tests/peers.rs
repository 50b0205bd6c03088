//! Interoperability with real peers: skopeo copies an OCI layout to Berth's registry and back
//! bit-identical, and Berth's client pushes to and pulls from Debian's docker-registry 2.8.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_registry::client::{Client, ClientOptions};
use berth_registry::manifest::{Descriptor, OCI_MANIFEST, ParsedManifest};
use berth_registry::server::ServerConfig;
use berth_registry::{ManifestRef, RepositoryName};
use common::{LayoutDir, TestServer, image_manifest, noise};

/// Writes an OCI image layout at `dir` with gzip-compressed tar layers; returns the manifest.
fn make_layout(dir: &Path) -> Descriptor {
    let layout = LayoutDir::new(dir);
    let mut layers = Vec::new();
    for i in 0..3u64 {
        let content = dir.join(format!("content{i}"));
        std::fs::create_dir_all(&content).unwrap();
        std::fs::write(content.join("file"), noise(50_000 * (i as usize + 1), i)).unwrap();
        let tarball = dir.join(format!("layer{i}.tar.gz"));
        let ok = Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(&content)
            .arg(".")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let mut d = layout.add(&std::fs::read(&tarball).unwrap());
        d.media_type = "application/vnd.oci.image.layer.v1.tar+gzip".into();
        layers.push(d);
        std::fs::remove_file(tarball).unwrap();
        std::fs::remove_dir_all(content).unwrap();
    }
    let config = layout
        .add(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
    let manifest = image_manifest(&config, &layers).to_vec();
    // image_manifest marks layers as plain tar: restore the gzip media type.
    let manifest = String::from_utf8(manifest)
        .unwrap()
        .replace(
            "application/vnd.oci.image.layer.v1.tar\"",
            "application/vnd.oci.image.layer.v1.tar+gzip\"",
        )
        .into_bytes();
    let mut root = layout.add(&manifest);
    root.media_type = OCI_MANIFEST.into();
    let mut tagged = root.clone();
    tagged.annotations = Some(
        [(
            "org.opencontainers.image.ref.name".to_owned(),
            "v1".to_owned(),
        )]
        .into_iter()
        .collect(),
    );
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [tagged],
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::remove_dir_all(dir.join("staging")).unwrap();
    root
}

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_to_berth_and_back_bit_identical() {
    if !berth_testutil::require_command("skopeo round trip", "skopeo") {
        return;
    }
    let s = TestServer::start(ServerConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let root = make_layout(&src);
    let remote = format!("docker://{}/skopeo/test:v1", s.host());
    let (src_ref, dst_ref) = (
        format!("oci:{}:v1", src.display()),
        format!("oci:{}:v1", tmp.path().join("dst").display()),
    );
    let host = s.host();
    tokio::task::spawn_blocking(move || {
        skopeo(&["copy", "--dest-tls-verify=false", &src_ref, &remote]);
        skopeo(&["copy", "--src-tls-verify=false", &remote, &dst_ref]);
        skopeo(&[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{host}/skopeo/test:v1"),
        ]);
    })
    .await
    .unwrap();

    let dst = tmp.path().join("dst");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dst.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], root.digest.to_string());
    let (a, b) = (LayoutDir::new(&src), LayoutDir::new(&dst));
    let manifest = std::fs::read(a.path(&root.digest)).unwrap();
    assert_eq!(std::fs::read(b.path(&root.digest)).unwrap(), manifest);
    let parsed = ParsedManifest::parse(&manifest, Some(OCI_MANIFEST)).unwrap();
    for blob in parsed.blobs() {
        assert_eq!(
            std::fs::read(a.path(&blob.digest)).unwrap(),
            std::fs::read(b.path(&blob.digest)).unwrap(),
            "{}",
            blob.digest
        );
    }
}

/// docker-registry running on a free loopback port; killed on drop.
struct DockerRegistry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    fn start() -> DockerRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let registry = DockerRegistry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pushes_to_and_pulls_from_docker_registry() {
    if !berth_testutil::require_command("push to docker-registry", "docker-registry") {
        return;
    }
    let registry = DockerRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = LayoutDir::new(&tmp.path().join("src"));
    let config = src.add(br#"{"architecture":"amd64","os":"linux"}"#);
    let layers = [src.add(&noise(3 << 20, 7)), src.add(&noise(1234, 8))];
    let mut root = src.add(&image_manifest(&config, &layers));
    root.media_type = OCI_MANIFEST.into();
    let client = Client::new(
        &registry.addr,
        ClientOptions {
            insecure: true,
            chunk_size: 1 << 20,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    client.ping().await.unwrap();
    let repo = RepositoryName::new("peer/app").unwrap();
    let report = client
        .push_image(&repo, "v1", &root, &src, None)
        .await
        .unwrap();
    assert_eq!(report.uploaded, 3);
    let other = RepositoryName::new("peer/other").unwrap();
    let report = client
        .push_image(&other, "v1", &root, &src, Some(&repo))
        .await
        .unwrap();
    assert_eq!(report.mounted, 3);
    assert_eq!(client.tags(&repo).await.unwrap(), ["v1"]);
    let dst = LayoutDir::new(&tmp.path().join("dst"));
    let pulled = client
        .pull_image(&repo, &ManifestRef::Tag("v1".into()), &dst)
        .await
        .unwrap();
    assert_eq!(pulled.descriptor.digest, root.digest);
    for d in layers.iter().chain([&config, &root]) {
        assert_eq!(
            std::fs::read(src.path(&d.digest)).unwrap(),
            std::fs::read(dst.path(&d.digest)).unwrap()
        );
    }
}

/// Range requests, valid and not, get the same status and `Content-Range` from Berth's server
/// as from docker-registry (Go's `http.ServeContent`): 206 or 416, never the whole blob for a
/// range that cannot be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_answers_match_docker_registry() {
    if !berth_testutil::require_command("ranges beside docker-registry", "docker-registry") {
        return;
    }
    let registry = DockerRegistry::start();
    let berth = TestServer::start(ServerConfig::default()).await;
    let data = noise(2048, 5);
    let digest = berth_api::Digest::sha256(&data);
    let c = common::http();
    let mut answers = Vec::new();
    for base in [format!("http://{}", registry.addr), berth.url.clone()] {
        let r = c
            .post(format!("{base}/v2/ranges/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{base}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("{base}{location}")
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = c
            .put(format!("{location}{sep}digest={digest}"))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{base}");
        let mut got = Vec::new();
        for range in [
            "bytes=500-1499",
            "bytes=500-",
            "bytes=-500",
            "bytes=2000-5000",
            "bytes=500-0",
            "bytes=5000-10000",
            "bytes=2048-",
        ] {
            let r = c
                .get(format!("{base}/v2/ranges/blobs/{digest}"))
                .header("range", range)
                .send()
                .await
                .unwrap();
            let content_range = r
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_owned());
            let status = r.status().as_u16();
            // Only 206 bodies are read: docker-registry cuts its 416 bodies short.
            if status == 206 {
                let body = r.bytes().await.unwrap();
                let (start, end) = content_range
                    .as_deref()
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('/').next())
                    .and_then(|v| v.split_once('-'))
                    .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
                    .unwrap();
                assert_eq!(body.as_ref(), &data[start..=end], "{base} {range}");
            }
            // Statuses must match, and the range served; on a 416 Berth always names the size
            // (`bytes */2048`, as RFC 9110 asks) where Go omits it for a malformed range.
            got.push((range, status, content_range.filter(|_| status == 206)));
        }
        answers.push(got);
    }
    assert_eq!(answers[0], answers[1], "docker-registry vs Berth");
}
