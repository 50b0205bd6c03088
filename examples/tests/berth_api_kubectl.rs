//! kubectl 1.32 against `berth api serve` over loopback with the kubeconfig it writes: apply
//! (create, configure, unchanged), get as table / wide / json / yaml / jsonpath / -l, scale,
//! label, patch of all three types, explain, api-resources, delete, and strict validation.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// A running `berth api serve`, killed on drop, and kubectl pointed at it.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Command::new(BIN)
            .args(["api", "serve", "--addr", "127.0.0.1:0", "--root"])
            .arg(dir.path().join("root"))
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !kubeconfig.exists() {
            assert!(Instant::now() < deadline, "no kubeconfig written");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kubectl <args>` with this server's kubeconfig and a private cache: (success, stdout, stderr).
    fn kubectl_raw(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.path("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl_raw(args, None);
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.to_str().unwrap().to_owned()
}

/// The Kubernetes documentation's nginx Deployment, a Service and a ConfigMap.
const MANIFESTS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx:1.14.2
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: my-service
spec:
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - protocol: TCP
      port: 80
      targetPort: 9376
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: game-demo
  labels:
    app: demo
data:
  player_initial_lives: "3"
  ui_properties_file_name: "user-interface.properties"
"#;

#[test]
fn kubectl_drives_berth_api_serve() {
    if !berth_testutil::require_command("kubectl against berth api serve", "kubectl") {
        return;
    }
    let server = Server::start(&[]);
    let dir = server.dir.path();
    let manifests = write(dir, "app.yaml", MANIFESTS);

    let out = server.kubectl(&["apply", "-f", &manifests]);
    assert!(
        out.contains("deployment.apps/nginx-deployment created"),
        "{out}"
    );
    assert!(out.contains("service/my-service created"), "{out}");
    assert!(out.contains("configmap/game-demo created"), "{out}");
    let out = server.kubectl(&["apply", "-f", &manifests]);
    assert!(
        out.contains("deployment.apps/nginx-deployment unchanged"),
        "{out}"
    );

    // Table, wide, json, yaml, jsonpath, label selector.
    let out = server.kubectl(&["get", "deployments"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{out}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["nginx-deployment", "0/3", "0", "0"], "{out}");
    let out = server.kubectl(&["get", "deploy", "-o", "wide"]);
    assert!(
        out.contains("CONTAINERS") && out.contains("nginx:1.14.2") && out.contains("app=nginx"),
        "{out}"
    );
    let out = server.kubectl(&["get", "svc", "my-service"]);
    assert!(
        out.contains("ClusterIP") && out.contains("10.96.") && out.contains("80/TCP"),
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_str(&server.kubectl(&[
        "get",
        "deployment",
        "nginx-deployment",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(json["spec"]["replicas"], 3);
    assert_eq!(json["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(json["metadata"]["generation"], 1);
    let yaml = server.kubectl(&["get", "configmap", "game-demo", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: ConfigMap") && yaml.contains("player_initial_lives: \"3\""),
        "{yaml}"
    );
    let out = server.kubectl(&["get", "cm", "-l", "app=demo", "-o", "name"]);
    assert_eq!(out.trim(), "configmap/game-demo");
    let out = server.kubectl(&["get", "cm", "-l", "app!=demo", "-o", "name"]);
    assert!(!out.contains("game-demo"), "{out}");
    let out = server.kubectl(&["get", "namespaces"]);
    assert!(
        out.contains("kube-system") && out.contains("Active"),
        "{out}"
    );

    // A changed manifest is configured through a strategic merge patch.
    let changed = write(
        dir,
        "changed.yaml",
        &MANIFESTS.replace("nginx:1.14.2", "nginx:1.16.1"),
    );
    let out = server.kubectl(&["apply", "-f", &changed]);
    assert!(
        out.contains("deployment.apps/nginx-deployment configured"),
        "{out}"
    );
    let out = server.kubectl(&[
        "get",
        "deploy",
        "nginx-deployment",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image} {.metadata.generation}",
    ]);
    assert_eq!(out, "nginx:1.16.1 2");

    // scale, label, annotate, patch (strategic, merge, json).
    let out = server.kubectl(&["scale", "deployment", "nginx-deployment", "--replicas=5"]);
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(
        server.kubectl(&[
            "get",
            "deploy",
            "nginx-deployment",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "5"
    );
    server.kubectl(&["label", "deployment", "nginx-deployment", "tier=web"]);
    server.kubectl(&["annotate", "configmap", "game-demo", "note=hi"]);
    assert_eq!(
        server
            .kubectl(&["get", "deploy", "-l", "tier=web", "-o", "name"])
            .trim(),
        "deployment.apps/nginx-deployment"
    );
    server.kubectl(&[
        "patch",
        "deployment",
        "nginx-deployment",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox"}]}}}}"#,
    ]);
    server.kubectl(&[
        "patch",
        "configmap",
        "game-demo",
        "--type=merge",
        "-p",
        r#"{"data":{"extra":"1"}}"#,
    ]);
    server.kubectl(&[
        "patch",
        "configmap",
        "game-demo",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/data/player_initial_lives"}]"#,
    ]);
    let out = server.kubectl(&[
        "get",
        "deploy",
        "nginx-deployment",
        "-o",
        "jsonpath={.spec.template.spec.containers[*].name}",
    ]);
    assert_eq!(out, "nginx sidecar");
    let out = server.kubectl(&["get", "cm", "game-demo", "-o", "jsonpath={.data}"]);
    let data: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"extra": "1", "ui_properties_file_name": "user-interface.properties"})
    );

    // describe and diff (a server-side dry run).
    let out = server.kubectl(&["describe", "deployment", "nginx-deployment"]);
    assert!(
        out.contains("RollingUpdateStrategy:  25% max unavailable, 25% max surge"),
        "{out}"
    );
    let again = write(
        dir,
        "again.yaml",
        &MANIFESTS.replace("nginx:1.14.2", "nginx:1.17"),
    );
    let (ok, out, err) = server.kubectl_raw(&["diff", "-f", &again], None);
    assert!(!ok && out.contains("image: nginx:1.17"), "{out}{err}");
    assert_eq!(
        server.kubectl(&[
            "get",
            "deploy",
            "nginx-deployment",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "nginx:1.16.1",
        "diff changed nothing"
    );

    // get -w prints the change of a watched object.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(server.path("kubeconfig"))
        .arg("--cache-dir")
        .arg(server.path("cache"))
        .args([
            "get",
            "cm",
            "game-demo",
            "-w",
            "-o",
            "jsonpath={.metadata.labels.round}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(watch.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut reader, &mut first).unwrap();
    server.kubectl(&["label", "configmap", "game-demo", "round=two"]);
    let mut second = String::new();
    std::io::BufRead::read_line(&mut reader, &mut second).unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(second.trim(), "two");

    // Discovery and schema.
    let out = server.kubectl(&["api-resources"]);
    assert!(
        out.contains("deployments") && out.contains("deploy") && out.contains("apps/v1"),
        "{out}"
    );
    let out = server.kubectl(&["explain", "deployment.spec.replicas"]);
    assert!(out.contains("replicas") && out.contains("integer"), "{out}");

    // Strict validation refuses unknown fields; nothing is created.
    let bad = write(
        dir,
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\nbogus: 1\n",
    );
    let (ok, _, err) = server.kubectl_raw(&["apply", "-f", &bad], None);
    assert!(!ok && err.contains("bogus"), "{err}");
    let (ok, _, err) = server.kubectl_raw(&["get", "cm", "bad"], None);
    assert!(!ok && err.contains("NotFound"), "{err}");

    // Delete.
    let out = server.kubectl(&["delete", "-f", &manifests]);
    assert!(
        out.contains("deployment.apps \"nginx-deployment\" deleted"),
        "{out}"
    );
    let (ok, _, err) = server.kubectl_raw(&["get", "deployment", "nginx-deployment"], None);
    assert!(!ok && err.contains("NotFound"), "{err}");
}

/// `GET path` over a raw HTTP/1.0 connection: the status code.
fn http_status(server: &str, path: &str, token: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(server).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {server}\r\n{auth}\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_token_is_required() {
    // kubectl (client-go) only sends credentials over TLS, so this speaks HTTP itself.
    let server = Server::start(&["--token", "t0ken"]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(server.path("kubeconfig")).unwrap()).unwrap();
    assert_eq!(config["users"][0]["user"]["token"], "t0ken");
    let url = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let addr = url.strip_prefix("http://").unwrap();
    assert_eq!(http_status(addr, "/api/v1/namespaces", None), 401);
    assert_eq!(http_status(addr, "/api/v1/namespaces", Some("wrong")), 401);
    assert_eq!(http_status(addr, "/api/v1/namespaces", Some("t0ken")), 200);
    assert_eq!(http_status(addr, "/healthz", None), 200);
}

#[test]
fn plain_http_is_refused_off_loopback() {
    let out = Command::new(BIN)
        .args([
            "api",
            "serve",
            "--addr",
            "0.0.0.0:0",
            "--root",
            "/nonexistent-berth-root",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
