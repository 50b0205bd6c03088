//! `berth api serve --store`: objects written through the API survive a restart of the binary
//! (the embedded store under `--root`, killed with SIGKILL so nothing is flushed on the way out),
//! and the etcd backend serves the same API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// A running `berth api serve`, killed on drop.
struct Server {
    child: Child,
    kubeconfig: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &Path, extra: &[&str]) -> Server {
        let kubeconfig = dir.join("kubeconfig");
        let _ = std::fs::remove_file(&kubeconfig);
        let child = Command::new(BIN)
            .args(["api", "serve", "--addr", "127.0.0.1:0", "--root"])
            .arg(dir.join("root"))
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let server = Server { child, kubeconfig };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.kubeconfig.exists() {
            assert!(Instant::now() < deadline, "no kubeconfig written");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.kubeconfig.with_file_name("cache"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "kubectl {args:?} failed:\n{o}\n{e}");
        o
    }
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: durable
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: durable
data:
  answer: "42"
"#;

/// Writes objects, kills the server with SIGKILL, starts it again on the same root: the objects,
/// their uids and the resourceVersion sequence are all still there.
#[test]
fn objects_survive_a_restart_of_the_binary() {
    if !berth_testutil::require_command("berth api serve with kubectl", "kubectl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (uid, rv) = {
        let server = Server::start(dir.path(), &[]);
        server.kubectl(&["apply", "-f", "-"], Some(OBJECTS));
        let out = server.kubectl(
            &[
                "get",
                "configmap",
                "settings",
                "-n",
                "durable",
                "-o",
                "jsonpath={.metadata.uid} {.metadata.resourceVersion}",
            ],
            None,
        );
        let (uid, rv) = out.split_once(' ').unwrap();
        (uid.to_owned(), rv.parse::<u64>().unwrap())
        // Dropped: SIGKILL.
    };
    assert!(dir.path().join("root/api/store").is_dir());
    let server = Server::start(dir.path(), &["--store", "embedded"]);
    let out = server.kubectl(
        &[
            "get",
            "configmap",
            "settings",
            "-n",
            "durable",
            "-o",
            "jsonpath={.metadata.uid} {.data.answer}",
        ],
        None,
    );
    assert_eq!(out, format!("{uid} 42"));
    // New writes continue the revision sequence instead of reusing old resourceVersions.
    server.kubectl(
        &["label", "configmap", "settings", "-n", "durable", "x=y"],
        None,
    );
    let rv2: u64 = server
        .kubectl(
            &[
                "get",
                "configmap",
                "settings",
                "-n",
                "durable",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
            None,
        )
        .parse()
        .unwrap();
    assert!(rv2 > rv, "{rv2} after restart is not past {rv}");
    // The system namespaces were not created twice (no error, still one of each).
    let ns = server.kubectl(&["get", "namespaces", "-o", "name"], None);
    assert_eq!(ns.matches("namespace/default\n").count(), 1, "{ns}");
}

/// A second server on the same root is refused while the first holds the store.
#[test]
fn a_held_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _server = Server::start(dir.path(), &[]);
    let out = Command::new(BIN)
        .args(["api", "serve", "--addr", "127.0.0.1:0", "--root"])
        .arg(dir.path().join("root"))
        .arg("--kubeconfig-out")
        .arg(dir.path().join("other-kubeconfig"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening the store"), "{err}");
}

#[test]
fn a_bad_store_flag_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "api",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--store",
            "redis://x",
            "--root",
        ])
        .arg(dir.path().join("root"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("neither `embedded` nor `etcd://"), "{err}");
}

/// A free loopback port (bound, then released; etcd cannot be told to pick one itself).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// etcd, killed on drop.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serves_from_etcd_and_survives_a_restart() {
    if !berth_testutil::require_command("berth api serve with kubectl", "kubectl") {
        return;
    }
    if !berth_testutil::require_command("berth api serve on etcd", "etcd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let _etcd = Etcd(
        Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let store = format!("etcd://127.0.0.1:{client}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    {
        let server = Server::start(dir.path(), &["--store", &store]);
        server.kubectl(&["apply", "-f", "-"], Some(OBJECTS));
    }
    let server = Server::start(dir.path(), &["--store", &store]);
    let out = server.kubectl(
        &[
            "get",
            "configmap",
            "settings",
            "-n",
            "durable",
            "-o",
            "jsonpath={.data.answer}",
        ],
        None,
    );
    assert_eq!(out, "42");
    assert!(!dir.path().join("root/api/store").exists());
}
