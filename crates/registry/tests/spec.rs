//! The registry server against the OCI Distribution Spec v1.1, endpoint by endpoint: status
//! codes, headers and error codes as the spec text gives them.

mod common;

use berth_api::{Algorithm, Digest};
use berth_registry::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use berth_registry::server::ServerConfig;
use berth_registry::storage::{GcOptions, Storage};
use common::{TestServer, error_code, http, image_manifest, noise};
use reqwest::StatusCode;

/// Pushes `data` to `repo` with POST + PUT and returns its digest.
async fn push_blob(s: &TestServer, repo: &str, data: &[u8]) -> Digest {
    let c = http();
    let digest = Digest::sha256(data);
    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .put(format!("{}{location}?digest={digest}", s.url))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    digest
}

/// Pushes an image (config + one layer) under `tag` and returns the manifest and its digest.
async fn push_image(s: &TestServer, repo: &str, tag: &str, seed: u64) -> (Vec<u8>, Digest) {
    let config = format!(r#"{{"seed":{seed}}}"#).into_bytes();
    let layer = noise(1000, seed);
    let cd = push_blob(s, repo, &config).await;
    let ld = push_blob(s, repo, &layer).await;
    let manifest = image_manifest(
        &common::descriptor("", &cd, config.len() as u64),
        &[common::descriptor("", &ld, layer.len() as u64)],
    );
    let r = http()
        .put(format!("{}/v2/{repo}/manifests/{tag}", s.url))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let digest = Digest::sha256(&manifest);
    (manifest, digest)
}

#[tokio::test]
async fn base_endpoint_answers_with_api_version() {
    let s = TestServer::start(ServerConfig::default()).await;
    let r = http().get(format!("{}/v2/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test]
async fn blob_get_head_and_ranges() {
    let s = TestServer::start(ServerConfig::default()).await;
    let data = noise(10_000, 1);
    let d = push_blob(&s, "a/b", &data).await;
    let c = http();
    let url = format!("{}/v2/a/b/blobs/{d}", s.url);

    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "10000");
    assert_eq!(r.headers()["docker-content-digest"], d.to_string().as_str());

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());

    for (range, start, end) in [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=9990-", 9990, 9999),
        ("bytes=-10", 9990, 9999),
        ("bytes=9000-20000", 9000, 9999),
    ] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{end}/10000").as_str()
        );
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &data[start..=end],
            "{range}"
        );
    }
    let r = c
        .get(&url)
        .header("range", "bytes=10000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */10000");

    // Unknown blob, blob of another repository, malformed digest.
    let other = Digest::sha256(b"nope");
    let r = c
        .get(format!("{}/v2/a/b/blobs/{other}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = c
        .get(format!("{}/v2/other/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    for bad in ["sha256:xyz", "md5:abcd", "nocolon", "sha256:ABCDEF"] {
        let r = c
            .get(format!("{}/v2/a/b/blobs/{bad}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(r).await, "DIGEST_INVALID");
    }

    // Delete unlinks it from the repository.
    let r = c.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        c.head(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn single_post_upload_and_wrong_digest_is_not_stored() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let data = noise(5000, 2);
    let d = Digest::sha256(&data);
    let r = c
        .post(format!("{}/v2/x/blobs/uploads/?digest={d}", s.url))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], format!("/v2/x/blobs/{d}").as_str());

    let wrong = Digest::sha256(b"something else");
    let r = c
        .post(format!("{}/v2/x/blobs/uploads/?digest={wrong}", s.url))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert!(!s.storage.content().contains(&wrong));
    let r = c
        .head(format!("{}/v2/x/blobs/{wrong}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // No upload session was left behind.
    assert_eq!(std::fs::read_dir(s.dir.join("uploads")).unwrap().count(), 0);

    // The same through a session: PUT with a wrong digest discards the session.
    let r = c
        .post(format!("{}/v2/x/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .put(format!("{}{location}?digest={wrong}", s.url))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert!(!s.storage.content().contains(&wrong));
    let r = c.get(format!("{}{location}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");

    // PUT without a digest.
    let r = c
        .post(format!("{}/v2/x/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c.put(format!("{}{location}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

#[tokio::test]
async fn chunked_upload_with_out_of_order_chunk_and_sha512() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let data = noise(30, 3);
    let r = c
        .post(format!("{}/v2/chunks/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-0");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let url = format!("{}{location}", s.url);
    let patch = |range: &str, body: &[u8]| {
        c.patch(&url)
            .header("content-range", range)
            .header("content-type", "application/octet-stream")
            .body(body.to_vec())
            .send()
    };
    let r = patch("0-9", &data[0..10]).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-9");
    // Out of order: starts past the end.
    let r = patch("20-29", &data[20..30]).await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["range"], "0-9");
    // Overlapping: starts before the end.
    let r = patch("5-14", &data[5..15]).await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Content-Range longer than the body: rejected and rolled back.
    let r = patch("10-29", &data[10..20]).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = patch("10-19", &data[10..20]).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-19");

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-19");

    // The final chunk rides on the PUT, closed with a sha512 digest.
    let d = Digest::compute(Algorithm::Sha512, &data);
    let r = c
        .put(format!("{url}?digest={d}"))
        .header("content-range", "20-29")
        .body(data[20..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = c
        .get(format!("{}/v2/chunks/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], d.to_string().as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
}

/// The server hashes an upload as it arrives, across PATCH requests and its own write batches;
/// a rejected chunk rolls that hash back with the bytes.
#[tokio::test]
async fn chunked_sha256_upload_hashes_across_requests_and_rollbacks() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let data = noise((3 << 20) + 17, 11);
    let r = c
        .post(format!("{}/v2/hashed/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let url = format!("{}{}", s.url, r.headers()["location"].to_str().unwrap());
    let patch = |start: usize, end: usize, body: &[u8]| {
        c.patch(&url)
            .header("content-range", format!("{start}-{}", end - 1))
            .body(body.to_vec())
            .send()
    };
    let cut = [0, 700_000, (1 << 20) + 5, (2 << 20) + 300_001, data.len()];
    for pair in cut.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // First a chunk with more bytes than its Content-Range: refused, nothing kept.
        let r = patch(a, b - 1, &data[a..b]).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = patch(a, b, &data[a..b]).await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(r.headers()["range"], format!("0-{}", b - 1).as_str());
    }
    let wrong = Digest::sha256(b"something else");
    let r = c.put(format!("{url}?digest={wrong}")).send().await.unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert!(!s.storage.content().contains(&wrong));
    // A failed finish ends the session.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");

    // Again, finished with the right digest.
    let r = c
        .post(format!("{}/v2/hashed/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let url = format!("{}{}", s.url, r.headers()["location"].to_str().unwrap());
    for pair in cut.windows(2) {
        let r = c
            .patch(&url)
            .header("content-range", format!("{}-{}", pair[0], pair[1] - 1))
            .body(data[pair[0]..pair[1]].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let d = Digest::sha256(&data);
    let r = c.put(format!("{url}?digest={d}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(s.storage.content().read_limited(&d, 1 << 30).unwrap(), data);
    // Nothing is left in the upload area.
    assert_eq!(std::fs::read_dir(s.dir.join("uploads")).unwrap().count(), 0);
}

/// Blobs larger than the server's read buffers come back whole, and ranges that cross buffer
/// boundaries come back exact.
#[tokio::test]
async fn large_blob_reads_cross_buffer_boundaries() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let data = noise((1 << 20) + 123, 12);
    let d = push_blob(&s, "big", &data).await;
    let url = format!("{}/v2/big/blobs/{d}", s.url);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    for (a, b) in [(300_000, 700_000), (262_143, 262_144), (0, data.len() - 1)] {
        let r = c
            .get(&url)
            .header("range", format!("bytes={a}-{b}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &data[a..=b]);
    }
    // Several clients at once share the server's buffers without mixing them up.
    let reads = (0..8).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(&url).send().await.unwrap().bytes().await.unwrap() }
    });
    for body in futures_util::future::join_all(reads).await {
        assert_eq!(body.as_ref(), data.as_slice());
    }
}

#[tokio::test]
async fn cancel_and_resume_across_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let c = http();
    let data = noise(2 << 20, 4);
    let location = {
        let s = TestServer::start_in(tmp.path(), ServerConfig::default(), None).await;
        // Cancel one session.
        let r = c
            .post(format!("{}/v2/r/blobs/uploads/", s.url))
            .send()
            .await
            .unwrap();
        let cancel = r.headers()["location"].to_str().unwrap().to_owned();
        let r = c.delete(format!("{}{cancel}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = c.get(format!("{}{cancel}", s.url)).send().await.unwrap();
        assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
        // Start another and send half.
        let r = c
            .post(format!("{}/v2/r/blobs/uploads/", s.url))
            .send()
            .await
            .unwrap();
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let r = c
            .patch(format!("{}{location}", s.url))
            .header("content-range", format!("0-{}", (1 << 20) - 1))
            .body(data[..1 << 20].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        location
    };
    // A new server over the same directory continues the session.
    let s = TestServer::start_in(tmp.path(), ServerConfig::default(), None).await;
    let url = format!("{}{location}", s.url);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(
        r.headers()["range"],
        format!("0-{}", (1 << 20) - 1).as_str()
    );
    let r = c
        .patch(&url)
        .header("content-range", format!("{}-{}", 1 << 20, (2 << 20) - 1))
        .body(data[1 << 20..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let d = Digest::sha256(&data);
    let r = c.put(format!("{url}?digest={d}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .get(format!("{}/v2/r/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 2 << 20);
}

#[tokio::test]
async fn cross_repository_mount() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let d = push_blob(&s, "src/repo", b"shared layer").await;
    let r = c
        .post(format!(
            "{}/v2/dst/blobs/uploads/?mount={d}&from=src/repo",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/dst/blobs/{d}").as_str()
    );
    assert_eq!(r.headers()["docker-content-digest"], d.to_string().as_str());
    let r = c
        .get(format!("{}/v2/dst/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"shared layer");
    // Not in the source: falls back to an upload session.
    let missing = Digest::sha256(b"missing");
    let r = c
        .post(format!(
            "{}/v2/dst/blobs/uploads/?mount={missing}&from=src/repo",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.headers().contains_key("docker-upload-uuid"));
}

#[tokio::test]
async fn manifests_by_tag_and_digest_with_negotiation() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let (manifest, d) = push_image(&s, "app", "v1", 5).await;
    let by_tag = format!("{}/v2/app/manifests/v1", s.url);
    let by_digest = format!("{}/v2/app/manifests/{d}", s.url);

    for url in [&by_tag, &by_digest] {
        let r = c
            .get(url)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(r.headers()["docker-content-digest"], d.to_string().as_str());
        assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
        let r = c.head(url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["content-length"],
            manifest.len().to_string().as_str()
        );
    }
    // Several Accept values, one matching; and none matching.
    let r = c
        .get(&by_tag)
        .header("accept", format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(&by_tag)
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    // A Docker schema 2 manifest is stored and served with its own media type.
    let docker = String::from_utf8(manifest.clone())
        .unwrap()
        .replace(OCI_MANIFEST, DOCKER_MANIFEST);
    let r = c
        .put(format!("{}/v2/app/manifests/docker", s.url))
        .header("content-type", DOCKER_MANIFEST)
        .body(docker.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .get(format!("{}/v2/app/manifests/docker", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], DOCKER_MANIFEST);

    // Push by digest: the digest must match.
    let r = c
        .put(format!(
            "{}/v2/app/manifests/{}",
            s.url,
            Digest::sha256(b"x")
        ))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");

    // Unknown tag, unknown repository.
    let r = c
        .get(format!("{}/v2/app/manifests/nope", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = c
        .get(format!("{}/v2/nothere/manifests/v1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");

    // Delete a tag, then the manifest by digest (which removes the remaining tags).
    let r = c.delete(&by_tag).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        c.get(&by_tag).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let r = c.get(&by_digest).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.delete(&by_digest).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c.get(&by_digest).send().await.unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = c.delete(&by_digest).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_manifests_get_spec_errors() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let put = |tag: &str, ct: &str, body: Vec<u8>| {
        c.put(format!("{}/v2/m/manifests/{tag}", s.url))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = put("t", OCI_MANIFEST, b"{not json".to_vec()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    // References a blob the repository lacks.
    let missing = common::descriptor("", &Digest::sha256(b"missing"), 7);
    let r = put("t", OCI_MANIFEST, image_manifest(&missing, &[]))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // Content-Type disagrees with mediaType.
    let cd = push_blob(&s, "m", b"{}").await;
    let ok = image_manifest(&common::descriptor("", &cd, 2), &[]);
    let r = put("t", OCI_INDEX, ok.clone()).await.unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    // Larger than 4 MiB.
    let mut big = ok.clone();
    big.pop();
    big.extend_from_slice(br#","annotations":{"x":""#);
    big.extend(std::iter::repeat_n(b'a', 5 << 20));
    big.extend_from_slice(b"\"}}");
    let r = put("t", OCI_MANIFEST, big).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "SIZE_INVALID");
    // Invalid tag, invalid names.
    let r = put("-bad", OCI_MANIFEST, ok.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    for name in ["Upper", "a//b", "_x", "a%2F..%2Fb", "a:b"] {
        let r = c
            .get(format!("{}/v2/{name}/tags/list", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(error_code(r).await, "NAME_INVALID", "{name}");
    }
    // The good one is accepted.
    assert_eq!(
        put("t", OCI_MANIFEST, ok).await.unwrap().status(),
        StatusCode::CREATED
    );
    // Unsupported method.
    let r = c
        .post(format!("{}/v2/m/manifests/t", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
}

#[tokio::test]
async fn tags_and_catalog_paginate_with_link() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let (manifest, _) = push_image(&s, "p/one", "a", 6).await;
    for tag in ["e", "c", "b", "d"] {
        let r = c
            .put(format!("{}/v2/p/one/manifests/{tag}", s.url))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    push_image(&s, "p/two", "x", 7).await;
    push_image(&s, "three", "x", 8).await;

    let list = |q: &str| c.get(format!("{}/v2/p/one/tags/list{q}", s.url)).send();
    let r = list("").await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["name"], "p/one");
    assert_eq!(body["tags"], serde_json::json!(["a", "b", "c", "d", "e"]));
    let r = list("?n=2").await.unwrap();
    assert_eq!(
        r.headers()["link"],
        r#"</v2/p/one/tags/list?n=2&last=b>; rel="next""#
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["a", "b"]));
    let r = list("?n=2&last=b").await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["c", "d"]));
    let r = list("?n=2&last=d").await.unwrap();
    assert!(!r.headers().contains_key("link"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["e"]));
    let r = list("?n=0").await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!([]));
    let r = c
        .get(format!("{}/v2/none/tags/list", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");

    let r = c
        .get(format!("{}/v2/_catalog", s.url))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["repositories"],
        serde_json::json!(["p/one", "p/two", "three"])
    );
    let r = c
        .get(format!("{}/v2/_catalog?n=1&last=p/one", s.url))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["link"]
            .to_str()
            .unwrap()
            .contains("last=p%2Ftwo")
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["repositories"], serde_json::json!(["p/two"]));
}

#[tokio::test]
async fn referrers_with_subject_and_artifact_type_filter() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let (subject_bytes, subject) = push_image(&s, "ref", "v1", 9).await;
    let empty = push_blob(&s, "ref", b"{}").await;
    let mut digests = Vec::new();
    for (i, artifact) in [
        "application/vnd.example.sbom",
        "application/vnd.example.sig",
    ]
    .iter()
    .enumerate()
    {
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_bytes.len()},
            "annotations": {"n": i.to_string()},
        }))
        .unwrap();
        let d = Digest::sha256(&body);
        let r = c
            .put(format!("{}/v2/ref/manifests/{d}", s.url))
            .header("content-type", OCI_MANIFEST)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["oci-subject"], subject.to_string().as_str());
        digests.push(d);
    }
    let url = format!("{}/v2/ref/referrers/{subject}", s.url);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["manifests"].as_array().unwrap().len(), 2);
    let r = c
        .get(format!("{url}?artifactType=application/vnd.example.sig"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let body: serde_json::Value = r.json().await.unwrap();
    let found = body["manifests"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["artifactType"], "application/vnd.example.sig");
    assert_eq!(found[0]["digest"], digests[1].to_string());
    assert_eq!(found[0]["annotations"]["n"], "1");
    // Deleting a referrer removes it from the list; unknown subjects list nothing.
    let r = c
        .delete(format!("{}/v2/ref/manifests/{}", s.url, digests[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: serde_json::Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["manifests"].as_array().unwrap().len(), 1);
    let other = Digest::sha256(b"other");
    let r = c
        .get(format!("{}/v2/ref/referrers/{other}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{}/v2/ref/referrers/sha256:zz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

#[tokio::test]
async fn image_index_requires_its_children() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let (child_bytes, child) = push_image(&s, "idx", "child", 10).await;
    let index = |d: &Digest| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": d, "size": child_bytes.len(),
                           "platform": {"architecture": "amd64", "os": "linux"}}],
        }))
        .unwrap()
    };
    let r = c
        .put(format!("{}/v2/idx/manifests/bad", s.url))
        .header("content-type", OCI_INDEX)
        .body(index(&Digest::sha256(b"no such child")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let r = c
        .put(format!("{}/v2/idx/manifests/multi", s.url))
        .header("content-type", OCI_INDEX)
        .body(index(&child))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn garbage_collection_keeps_referenced_and_recent_blobs() {
    let s = TestServer::start(ServerConfig::default()).await;
    let (_, manifest) = push_image(&s, "gc", "v1", 11).await;
    let orphan = push_blob(&s, "gc", b"orphan").await;
    let c = http();
    // An upload in progress, and an unreferenced blob younger than the grace period.
    let r = c
        .post(format!("{}/v2/gc/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let upload = r.headers()["location"].to_str().unwrap().to_owned();
    let report = s
        .storage
        .collect_garbage(GcOptions::default())
        .await
        .unwrap();
    assert_eq!(report.blobs_removed, 0);
    assert!(s.storage.content().contains(&orphan));

    // With no grace, the orphan goes; the image stays; the fresh upload stays.
    let options = GcOptions {
        blob_grace: std::time::Duration::ZERO,
        upload_max_age: std::time::Duration::from_secs(3600),
    };
    let report = s.storage.collect_garbage(options).await.unwrap();
    assert_eq!(report.blobs_removed, 1);
    assert_eq!(report.bytes_freed, 6);
    assert!(!s.storage.content().contains(&orphan));
    let r = c
        .head(format!("{}/v2/gc/blobs/{orphan}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .get(format!("{}/v2/gc/manifests/{manifest}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(format!("{}{upload}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Stale uploads go.
    let options = GcOptions {
        blob_grace: std::time::Duration::ZERO,
        upload_max_age: std::time::Duration::ZERO,
    };
    let report = s.storage.collect_garbage(options).await.unwrap();
    assert_eq!(report.uploads_removed, 1);
    let r = c.get(format!("{}{upload}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Deleting the manifest makes its blobs collectable.
    c.delete(format!("{}/v2/gc/manifests/{manifest}", s.url))
        .send()
        .await
        .unwrap();
    let report = s.storage.collect_garbage(options).await.unwrap();
    assert_eq!(report.blobs_removed, 3);
}

/// Reads one HTTP/1.1 response head (through the blank line) from `conn`.
async fn response_head(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut byte))
            .await
            .expect("response within 5 s")
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Large bodies are read in large steps (the server raises the socket's low-water mark), which
/// must never hold back the last bytes of a body, a request that follows on the same
/// connection, or a client that gives up halfway.
#[tokio::test]
async fn large_bodies_do_not_stall_the_connection() {
    use tokio::io::AsyncWriteExt as _;
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let start = || async {
        let r = c
            .post(format!("{}/v2/lowat/blobs/uploads/", s.url))
            .send()
            .await
            .unwrap();
        r.headers()["location"].to_str().unwrap().to_owned()
    };
    let data = noise((1 << 20) + 1, 13);

    // A whole body, then a small request on the same connection.
    let location = start().await;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&data).await.unwrap();
    let reply = response_head(&mut conn).await;
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = response_head(&mut conn).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // A client that promises 1 MiB, sends 300 000 bytes and hangs up: what arrived is kept.
    let location = start().await;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&data[..300_000]).await.unwrap();
    drop(conn);
    let url = format!("{}{location}", s.url);
    let mut range = String::new();
    for _ in 0..100 {
        let r = c.get(&url).send().await.unwrap();
        range = r.headers()["range"].to_str().unwrap().to_owned();
        if range == "0-299999" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(range, "0-299999");
}

/// Pushes `data` in one POST under the digest algorithm `algorithm`.
async fn push_blob_with(s: &TestServer, repo: &str, data: &[u8], algorithm: Algorithm) -> Digest {
    let digest = Digest::compute(algorithm, data);
    let r = http()
        .post(format!(
            "{}/v2/{repo}/blobs/uploads/?digest={digest}",
            s.url
        ))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    digest
}

/// An image manifest over a config and a layer pushed with `algorithm`.
async fn manifest_with(s: &TestServer, repo: &str, seed: u64, algorithm: Algorithm) -> Vec<u8> {
    let config = format!(r#"{{"seed":{seed}}}"#).into_bytes();
    let layer = noise(3000, seed);
    let cd = push_blob_with(s, repo, &config, algorithm).await;
    let ld = push_blob_with(s, repo, &layer, algorithm).await;
    image_manifest(
        &common::descriptor("", &cd, config.len() as u64),
        &[common::descriptor("", &ld, layer.len() as u64)],
    )
}

#[tokio::test]
async fn manifest_put_by_digest_with_tag_parameters() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    let manifest = manifest_with(&s, "tp", 1, Algorithm::Sha256).await;
    let digest = Digest::sha256(&manifest);
    let r = c
        .put(format!("{}/v2/tp/manifests/{digest}?tag=a&tag=b.2", s.url))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let tags: Vec<&str> = r
        .headers()
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["a", "b.2"]);
    for tag in ["a", "b.2"] {
        let r = c
            .get(format!("{}/v2/tp/manifests/{tag}", s.url))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["docker-content-digest"],
            digest.to_string().as_str()
        );
    }
    let r = c
        .get(format!("{}/v2/tp/tags/list", s.url))
        .send()
        .await
        .unwrap();
    let list: serde_json::Value = r.json().await.unwrap();
    assert_eq!(list["tags"], serde_json::json!(["a", "b.2"]));

    // One bad tag refuses the push: nothing is stored.
    let other = manifest_with(&s, "tp", 2, Algorithm::Sha256).await;
    let other_digest = Digest::sha256(&other);
    let r = c
        .put(format!(
            "{}/v2/tp/manifests/{other_digest}?tag=ok&tag=-bad",
            s.url
        ))
        .header("content-type", OCI_MANIFEST)
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "TAG_INVALID");
    for reference in [other_digest.to_string(), "ok".to_owned()] {
        let r = c
            .head(format!("{}/v2/tp/manifests/{reference}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{reference}");
    }
}

#[tokio::test]
async fn manifest_pushed_by_tag_is_digested_in_the_clients_algorithm() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    // Blobs named by sha512: the manifest pushed by tag gets a sha512 digest.
    let manifest = manifest_with(&s, "alg", 1, Algorithm::Sha512).await;
    let digest = Digest::compute(Algorithm::Sha512, &manifest);
    let r = c
        .put(format!("{}/v2/alg/manifests/v512", s.url))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["docker-content-digest"],
        digest.to_string().as_str()
    );
    assert_eq!(
        r.headers()["location"],
        format!("/v2/alg/manifests/{digest}").as_str()
    );
    for reference in ["v512".to_owned(), digest.to_string()] {
        let r = c
            .get(format!("{}/v2/alg/manifests/{reference}", s.url))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{reference}");
        assert_eq!(
            r.headers()["docker-content-digest"],
            digest.to_string().as_str()
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
    }
    // sha256 blobs keep sha256.
    let manifest = manifest_with(&s, "alg", 2, Algorithm::Sha256).await;
    let r = c
        .put(format!("{}/v2/alg/manifests/v256", s.url))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["docker-content-digest"],
        Digest::sha256(&manifest).to_string().as_str()
    );
    // A push by tag that names its digest gets that digest, checked.
    let named = Digest::compute(Algorithm::Sha512, &manifest);
    let r = c
        .put(format!("{}/v2/alg/manifests/named?digest={named}", s.url))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["docker-content-digest"],
        named.to_string().as_str()
    );
    let r = c
        .head(format!("{}/v2/alg/manifests/named", s.url))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["docker-content-digest"],
        named.to_string().as_str()
    );
    let wrong = Digest::compute(Algorithm::Sha512, b"something else");
    let r = c
        .put(format!("{}/v2/alg/manifests/wrong?digest={wrong}", s.url))
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = c
        .head(format!("{}/v2/alg/manifests/wrong", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unsatisfiable_ranges_get_416() {
    let s = TestServer::start(ServerConfig::default()).await;
    let data = noise(2048, 9);
    let d = push_blob(&s, "ranges", &data).await;
    for range in ["bytes=500-0", "bytes=5000-10000", "bytes=2048-"] {
        let r = http()
            .get(format!("{}/v2/ranges/blobs/{d}", s.url))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(r.headers()["content-range"], "bytes */2048", "{range}");
    }
    let r = http()
        .get(format!("{}/v2/ranges/blobs/{d}", s.url))
        .header("range", "bytes=2000-5000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 2000-2047/2048");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[2000..]);
}

#[tokio::test]
async fn mount_without_from_finds_a_readable_source() {
    let s = TestServer::start(ServerConfig::default()).await;
    let c = http();
    // The blob is in a repository that has no manifest, only blobs.
    let d = push_blob(&s, "somewhere/else", b"discoverable").await;
    let r = c
        .post(format!("{}/v2/dst/blobs/uploads/?mount={d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/dst/blobs/{d}").as_str()
    );
    let r = c
        .get(format!("{}/v2/dst/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"discoverable");
    // A blob nobody holds: an upload session instead.
    let missing = Digest::sha256(b"nowhere");
    let r = c
        .post(format!("{}/v2/dst2/blobs/uploads/?mount={missing}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.headers().contains_key("docker-upload-uuid"));
}

#[tokio::test]
async fn mount_without_from_only_from_repositories_the_caller_may_read() {
    use berth_registry::auth::{Htpasswd, TokenIssuer, basic_header};
    use berth_registry::server::AuthConfig;

    let config = ServerConfig {
        auth: Some(AuthConfig {
            htpasswd: Htpasswd::single("alice", "s3cret"),
            tokens: Some(TokenIssuer::new(std::time::Duration::from_secs(300))),
            anonymous_pull: false,
        }),
        ..ServerConfig::default()
    };
    let s = TestServer::start(config).await;
    let c = http();
    let basic = basic_header("alice", "s3cret");
    let data = b"secret layer";
    let d = Digest::sha256(data);
    let r = c
        .post(format!("{}/v2/secret/src/blobs/uploads/?digest={d}", s.url))
        .header("authorization", &basic)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = |scopes: &'static str| {
        let (c, url, basic) = (c.clone(), s.url.clone(), basic.clone());
        async move {
            let r = c
                .get(format!("{url}/token?service=berth-registry&{scopes}"))
                .header("authorization", basic)
                .send()
                .await
                .unwrap();
            let body: serde_json::Value = r.json().await.unwrap();
            format!("Bearer {}", body["token"].as_str().unwrap())
        }
    };
    // Push rights on dst only: the blob in secret/src is not discovered.
    let narrow = token("scope=repository:dst:pull,push").await;
    let r = c
        .post(format!("{}/v2/dst/blobs/uploads/?mount={d}", s.url))
        .header("authorization", &narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .head(format!("{}/v2/dst/blobs/{d}", s.url))
        .header("authorization", &narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // With pull rights on the source it is.
    let wide = token("scope=repository:dst:pull,push&scope=repository:secret/src:pull").await;
    let r = c
        .post(format!("{}/v2/dst/blobs/uploads/?mount={d}", s.url))
        .header("authorization", &wide)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}
