//! What a client may hold: thousands of silent sockets are closed after the header timeout while
//! real clients keep pushing and pulling; a full server queues new clients instead of failing
//! them; a stalled or crawling request body and a client that stops reading its response are cut
//! off; and a server out of descriptors backs off instead of spinning on `accept`.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_registry::client::{Client, ClientOptions};
use berth_registry::manifest::{Descriptor, OCI_MANIFEST};
use berth_registry::server::{ConnectionLimits, ServerConfig};
use berth_registry::{ManifestRef, RepositoryName};
use common::{LayoutDir, TestServer, http, image_manifest, noise};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Raises this process's soft descriptor limit to its hard limit; returns the new limit.
#[allow(unsafe_code)]
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one `rlimit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn local_image(dir: &LayoutDir, seed: u64) -> Descriptor {
    let config =
        dir.add(format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).as_bytes());
    let layers = [
        dir.add(&noise(2 << 20, seed)),
        dir.add(&noise(5000, seed + 1)),
    ];
    let mut d = dir.add(&image_manifest(&config, &layers));
    d.media_type = OCI_MANIFEST.to_owned();
    d
}

fn client(s: &TestServer) -> Client {
    Client::new(
        &s.host(),
        ClientOptions {
            insecure: true,
            chunk_size: 1 << 20,
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

/// Whether the server still holds `socket` open (nothing to read, no EOF).
fn still_open(socket: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(socket.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn open_silent(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(count);
    while sockets.len() < count {
        // Fewer at once than the listen backlog (128): a connection the kernel could not queue
        // looks established to the client but may never reach the server.
        let batch = (count - sockets.len()).min(64);
        let connecting = (0..batch).map(|_| TcpStream::connect(addr));
        for socket in futures_util::future::join_all(connecting).await {
            sockets.push(socket.unwrap());
        }
    }
    sockets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_are_closed_while_clients_keep_working() {
    let limit = raise_nofile();
    // Each silent socket costs two descriptors here: the test's end and the server's.
    let count = 3000.min((limit as usize).saturating_sub(1000) / 2);
    assert!(
        count >= 1000,
        "descriptor limit {limit} is too low for this test"
    );
    let timeout = Duration::from_secs(12);
    let limits = ConnectionLimits {
        header_read_timeout: timeout,
        idle_timeout: timeout,
        max_connections: count + 200,
        ..ConnectionLimits::default()
    };
    let s = TestServer::start_limited(ServerConfig::default(), limits).await;
    let baseline = open_descriptors();
    let opened = Instant::now();
    let mut sockets = open_silent(s.addr, count).await;
    // The server has accepted them and holds them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sockets.iter().all(still_open));
    assert!(
        open_descriptors() >= baseline + 2 * count - 50,
        "the server did not accept the silent sockets"
    );

    // Real clients keep working meanwhile: Berth's client pushes and pulls...
    let tmp = tempfile::tempdir().unwrap();
    let src = LayoutDir::new(&tmp.path().join("src"));
    let root = local_image(&src, 1);
    let c = client(&s);
    let repo = RepositoryName::new("limits/app").unwrap();
    for round in 0..2 {
        let dst = LayoutDir::new(&tmp.path().join(format!("dst{round}")));
        c.push_image(&repo, &format!("v{round}"), &root, &src, None)
            .await
            .unwrap();
        let pulled = c
            .pull_image(&repo, &ManifestRef::Tag(format!("v{round}")), &dst)
            .await
            .unwrap();
        assert_eq!(pulled.descriptor.digest, root.digest);
    }
    // ... and so does skopeo, pulling that image and pushing it back under another name.
    if berth_testutil::require_command("skopeo beside silent sockets", "skopeo") {
        let host = s.host();
        let layout = tmp.path().join("skopeo");
        tokio::task::spawn_blocking(move || {
            let layout = format!("oci:{}:v1", layout.display());
            for (from, to) in [
                (format!("docker://{host}/limits/app:v0"), layout.clone()),
                (layout, format!("docker://{host}/limits/copy:v1")),
            ] {
                let out = Command::new("skopeo")
                    .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
                    .args(["--dest-tls-verify=false", &from, &to])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "skopeo copy {from} {to}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
        .await
        .unwrap();
        let copied = c
            .pull_image(
                &RepositoryName::new("limits/copy").unwrap(),
                &ManifestRef::Tag("v1".into()),
                &LayoutDir::new(&tmp.path().join("copy")),
            )
            .await
            .unwrap();
        // skopeo re-serialises the manifest: same image, another digest.
        assert_eq!(copied.descriptor.media_type, OCI_MANIFEST);
    }
    let worked = opened.elapsed();
    if worked + Duration::from_secs(1) < timeout {
        // The clients worked while every silent socket was still held.
        assert!(sockets.iter().all(still_open));
    }

    // The server closes every silent socket once the header timeout has passed.
    let closing = sockets.iter_mut().map(|socket| async move {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(timeout + Duration::from_secs(30), socket.read(&mut buf));
        match read.await {
            Ok(Ok(0)) | Ok(Err(_)) => Instant::now(),
            Ok(Ok(n)) => panic!("a silent socket got {n} bytes"),
            Err(_) => panic!("a silent socket was not closed"),
        }
    });
    let closed = futures_util::future::join_all(closing).await;
    let first = closed.iter().min().unwrap().duration_since(opened);
    assert!(
        first + Duration::from_millis(600) >= timeout,
        "closed after {first:?}, before the {timeout:?} timeout"
    );
    drop(sockets);
    // The server's descriptors are released.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_descriptors() > baseline + 100 {
        assert!(
            Instant::now() < deadline,
            "the server still holds descriptors"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it still serves.
    let r = http().get(format!("{}/v2/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_queues_new_clients_until_a_slot_frees() {
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_millis(1500),
        max_connections: 20,
        ..ConnectionLimits::default()
    };
    let s = TestServer::start_limited(ServerConfig::default(), limits).await;
    let sockets = open_silent(s.addr, 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{}/v2/", s.url))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // It waited for the silent sockets to be closed, then got served.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "served after {waited:?}"
    );
    drop(sockets);
}

/// Sends `head` and `body` on a fresh connection, then reads the response until the server
/// closes the connection; returns it and how long that took.
async fn stall(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (String, Duration) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body).await.unwrap();
    let start = Instant::now();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut response))
        .await
        .expect("the server neither answered nor closed")
        .unwrap();
    (
        String::from_utf8_lossy(&response).into_owned(),
        start.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_crawling_bodies_fail_and_close_the_connection() {
    let limits = ConnectionLimits {
        body_read_timeout: Duration::from_secs(1),
        body_min_rate: 2048,
        ..ConnectionLimits::default()
    };
    let s = TestServer::start_limited(ServerConfig::default(), limits).await;
    let c = http();
    let r = c
        .post(format!("{}/v2/slow/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();

    // A large chunk (low-water mark raised) that stops after 1000 bytes.
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: 1000000\r\n\r\n"
    );
    let (response, took) = stall(s.addr, &head, &noise(1000, 1)).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // A small manifest that stops half-way.
    let head = "PUT /v2/slow/manifests/v1 HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                Content-Length: 500\r\n\r\n";
    let (response, _) = stall(s.addr, head, b"{\"schemaVersion\":").await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");

    // A body trickled at 100 bytes/s: each piece is in time, the rate is not.
    let mut socket = TcpStream::connect(s.addr).await.unwrap();
    let head = format!("PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut response = Vec::new();
    let trickle = async {
        loop {
            if socket.write_all(&[b'x'; 10]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = trickle => {}
        () = tokio::time::sleep(Duration::from_secs(20)) => panic!("the trickle was never cut off"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 408"),
        "{response}"
    );
    assert!(start.elapsed() < Duration::from_secs(15));
    // The session is still usable: the bytes that did arrive were kept.
    let r = c.get(format!("{}{location}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off() {
    let limits = ConnectionLimits {
        send_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let s = TestServer::start_limited(ServerConfig::default(), limits).await;
    let blob = noise(64 << 20, 3);
    let digest = berth_api::Digest::sha256(&blob);
    let r = http()
        .post(format!("{}/v2/big/blobs/uploads/?digest={digest}", s.url))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut socket = TcpStream::connect(s.addr).await.unwrap();
    let head = format!("GET /v2/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    // Read nothing for a while: the server's writes block, then it gives up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut received));
    let _ = read.await.expect("the connection was not closed");
    assert!(
        received.len() < blob.len(),
        "got the whole {} bytes: the connection was not cut",
        received.len()
    );
}

/// In a child process with a 40-descriptor limit, a server that runs out of descriptors on
/// `accept` must neither spin nor stop serving once descriptors free up.
#[test]
fn accept_backs_off_when_out_of_descriptors() {
    if !berth_testutil::require_command("accept backoff under a descriptor limit", "prlimit") {
        return;
    }
    let mut child = Command::new("prlimit")
        .arg("--nofile=40:40")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "serve_with_few_descriptors", "--include-ignored"])
        .args(["--nocapture", "--test-threads=1"])
        .env("BERTH_REGISTRY_FEW_FDS_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The child prints the address it serves on.
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        assert!(Instant::now() < deadline, "the child did not start");
        assert_eq!(out.read(&mut byte).unwrap(), 1, "the child exited early");
        if byte[0] == b'\n' {
            let text = String::from_utf8_lossy(&line).into_owned();
            // The harness prints "test NAME ... " on the same line.
            if let Some((_, addr)) = text.split_once("serving on ") {
                break addr.trim().to_owned();
            }
            line.clear();
        } else {
            line.push(byte[0]);
        }
    };
    let pid = child.id();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // utime and stime, in clock ticks (fields 14 and 15; 12 and 13 after the name).
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    // Far more connections than the child has descriptors: it runs out on accept.
    let held: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu();
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu() - before;
    // Spinning on EMFILE would burn ~300 ticks in 3 s.
    assert!(
        used < 60,
        "the server used {used} ticks in 3 s out of descriptors"
    );
    drop(held);
    // Descriptors free up: it serves again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut socket = std::net::TcpStream::connect(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        let _ = socket.read_to_string(&mut response);
        if response.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the server did not recover");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The child of `accept_backs_off_when_out_of_descriptors` (does nothing on its own).
#[tokio::test]
#[ignore = "child process of accept_backs_off_when_out_of_descriptors"]
async fn serve_with_few_descriptors() {
    if std::env::var_os("BERTH_REGISTRY_FEW_FDS_CHILD").is_none() {
        return;
    }
    let limits = ConnectionLimits {
        // More than the descriptors: accept itself fails.
        max_connections: 1000,
        header_read_timeout: Duration::from_secs(60),
        ..ConnectionLimits::default()
    };
    let s = TestServer::start_limited(ServerConfig::default(), limits).await;
    println!("serving on {}", s.addr);
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}
