//! kubectl 1.32 against `berth api serve` over TLS with the kubeconfig it writes (the cluster
//! CA and an administrator's client certificate): apply (create, configure, unchanged) of the
//! Kubernetes documentation's examples, get as table / wide / json / yaml / jsonpath / -l /
//! -A / -w, scale, label, annotate, patch of all three types, edit with a scripted EDITOR,
//! describe, diff, explain, api-resources, delete (with --cascade), strict validation; then
//! security: `auth whoami`, `auth can-i` for the admin, a read-only user and a node, a
//! read-only user's denied write, a node writing another node's pod, no credentials.

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

    /// The written kubeconfig.
    fn config(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.path("kubeconfig")).unwrap()).unwrap()
    }

    /// A kubeconfig like the written one (same server, same CA) whose user is `user`
    /// (e.g. `{"token": "..."}`), as `--kubeconfig` arguments.
    fn as_user(&self, name: &str, user: serde_json::Value) -> Vec<String> {
        let mut config = self.config();
        config["users"][0]["user"] = user;
        let path = self.path(&format!("kubeconfig-{name}"));
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        vec!["--kubeconfig".into(), path.to_str().unwrap().to_owned()]
    }

    /// `kubectl` with extra leading arguments (a later `--kubeconfig` wins).
    fn kubectl_with(&self, pre: &[String], args: &[&str]) -> (bool, String, String) {
        let all: Vec<&str> = pre
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        self.kubectl_raw(&all, None)
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

#[test]
fn plain_http_is_refused_off_loopback() {
    let out = Command::new(BIN)
        .args([
            "api",
            "serve",
            "--insecure-http",
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

#[test]
fn the_kubeconfig_speaks_tls_and_the_pki_survives_a_restart() {
    let mut server = Server::start(&[]);
    let config = server.config();
    let cluster = &config["clusters"][0]["cluster"];
    assert!(
        cluster["server"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:")
    );
    assert!(cluster["certificate-authority-data"].is_string());
    assert!(config["users"][0]["user"]["client-certificate-data"].is_string());
    let pki = server.path("root/api/pki");
    let ca = std::fs::read(pki.join("ca.crt")).unwrap();
    for key in ["ca.key", "apiserver.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // The store allows one server at a time: stop the first.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let root = server.path("root");
    let kubeconfig = server.path("kubeconfig2");
    let mut second = Command::new(BIN)
        .args(["api", "serve", "--addr", "127.0.0.1:0", "--root"])
        .arg(&root)
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kubeconfig.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = second.kill();
    let _ = second.wait();
    assert!(kubeconfig.exists());
    assert_eq!(
        ca,
        std::fs::read(pki.join("ca.crt")).unwrap(),
        "the CA is reused"
    );
}

/// The Kubernetes documentation's Secret, Job, CronJob, DaemonSet and StatefulSet (with its
/// headless Service), in the `docs` namespace.
const MORE_MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: docs
---
apiVersion: v1
kind: Secret
metadata:
  name: secret-basic-auth
  namespace: docs
type: kubernetes.io/basic-auth
stringData:
  username: admin
  password: t0p-Secret
---
apiVersion: batch/v1
kind: Job
metadata:
  name: pi
  namespace: docs
spec:
  template:
    spec:
      containers:
      - name: pi
        image: perl:5.34.0
        command: ["perl",  "-Mbignum=bpi", "-wle", "print bpi(2000)"]
      restartPolicy: Never
  backoffLimit: 4
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: hello
  namespace: docs
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - name: hello
            image: busybox:1.28
            imagePullPolicy: IfNotPresent
            command:
            - /bin/sh
            - -c
            - date; echo Hello from the Kubernetes cluster
          restartPolicy: OnFailure
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: fluentd-elasticsearch
  namespace: docs
  labels:
    k8s-app: fluentd-logging
spec:
  selector:
    matchLabels:
      name: fluentd-elasticsearch
  template:
    metadata:
      labels:
        name: fluentd-elasticsearch
    spec:
      tolerations:
      - key: node-role.kubernetes.io/control-plane
        operator: Exists
        effect: NoSchedule
      containers:
      - name: fluentd-elasticsearch
        image: quay.io/fluentd_elasticsearch/fluentd:v2.5.2
        resources:
          limits:
            memory: 200Mi
          requests:
            cpu: 100m
            memory: 200Mi
        volumeMounts:
        - name: varlog
          mountPath: /var/log
      terminationGracePeriodSeconds: 30
      volumes:
      - name: varlog
        hostPath:
          path: /var/log
---
apiVersion: v1
kind: Service
metadata:
  name: nginx
  namespace: docs
  labels:
    app: nginx
spec:
  ports:
  - port: 80
    name: web
  clusterIP: None
  selector:
    app: nginx
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  namespace: docs
spec:
  selector:
    matchLabels:
      app: nginx
  serviceName: "nginx"
  replicas: 3
  minReadySeconds: 10
  template:
    metadata:
      labels:
        app: nginx
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: nginx
        image: registry.k8s.io/nginx-slim:0.24
        ports:
        - containerPort: 80
          name: web
        volumeMounts:
        - name: www
          mountPath: /usr/share/nginx/html
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ "ReadWriteOnce" ]
      storageClassName: "my-storage-class"
      resources:
        requests:
          storage: 1Gi
"#;

#[test]
fn kubectl_applies_the_documentation_examples_edits_and_cascades() {
    if !berth_testutil::require_command("kubectl against berth api serve", "kubectl") {
        return;
    }
    let server = Server::start(&[]);
    let dir = server.dir.path();
    let more = write(dir, "more.yaml", MORE_MANIFESTS);
    let out = server.kubectl(&["apply", "-f", &more]);
    for created in [
        "namespace/docs created",
        "secret/secret-basic-auth created",
        "job.batch/pi created",
        "cronjob.batch/hello created",
        "daemonset.apps/fluentd-elasticsearch created",
        "service/nginx created",
        "statefulset.apps/web created",
    ] {
        assert!(out.contains(created), "{created}: {out}");
    }
    // (A Secret with stringData, and a StatefulSet whose volumeClaimTemplates the server
    // defaults, report "configured" on every apply, in Kubernetes too.)
    let out = server.kubectl(&["apply", "-f", &more]);
    for unchanged in [
        "job.batch/pi unchanged",
        "cronjob.batch/hello unchanged",
        "daemonset.apps/fluentd-elasticsearch unchanged",
        "service/nginx unchanged",
    ] {
        assert!(out.contains(unchanged), "{unchanged}: {out}");
    }
    let password = server.kubectl(&[
        "get",
        "secret",
        "-n",
        "docs",
        "secret-basic-auth",
        "-o",
        "jsonpath={.data.password}",
    ]);
    assert_eq!(
        password, "dDBwLVNlY3JldA==",
        "stringData is stored as base64 data"
    );
    let out = server.kubectl(&["get", "cronjob", "-n", "docs"]);
    assert!(out.contains("hello") && out.contains("* * * * *"), "{out}");

    // create namespace (a typed client: protobuf body).
    let out = server.kubectl(&["create", "namespace", "made-by-kubectl"]);
    assert!(out.contains("namespace/made-by-kubectl created"), "{out}");
    assert_eq!(
        server.kubectl(&[
            "get",
            "ns",
            "made-by-kubectl",
            "-o",
            "jsonpath={.status.phase}"
        ]),
        "Active"
    );

    // get -A lists every namespace with a NAMESPACE column.
    let manifests = write(dir, "app.yaml", MANIFESTS);
    server.kubectl(&["apply", "-f", &manifests]);
    let out = server.kubectl(&["get", "services", "-A"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[..2], ["NAMESPACE", "NAME"], "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("docs") && l.contains("nginx") && l.contains("None")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("default") && l.contains("my-service")),
        "{out}"
    );

    // edit with a scripted editor: kubectl fetches, runs $EDITOR on the file, patches.
    let editor = write(
        dir,
        "editor.sh",
        "#!/bin/sh\nsed -i 's/user-interface.properties/edited.properties/' \"$1\"\n",
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(server.path("kubeconfig"))
        .arg("--cache-dir")
        .arg(server.path("cache"))
        .args(["edit", "configmap", "game-demo"])
        .env("KUBE_EDITOR", &editor)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("configmap/game-demo edited"), "{text}");
    assert_eq!(
        server.kubectl(&[
            "get",
            "cm",
            "game-demo",
            "-o",
            "jsonpath={.data.ui_properties_file_name}"
        ]),
        "edited.properties"
    );

    // delete --cascade: an owner with a dependent keeps the policy's finalizer (no garbage
    // collector runs here to release it); background deletes at once.
    let uid = server.kubectl(&[
        "get",
        "deploy",
        "nginx-deployment",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let owned = |name: &str, owner: &str, uid: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  ownerReferences:\n  - apiVersion: apps/v1\n    kind: Deployment\n    name: {owner}\n    uid: {uid}\n"
        )
    };
    server.kubectl(&[
        "apply",
        "-f",
        &write(dir, "dep1.yaml", &owned("dep1", "nginx-deployment", &uid)),
    ]);
    let out = server.kubectl(&[
        "delete",
        "deployment",
        "nginx-deployment",
        "--cascade=orphan",
        "--wait=false",
    ]);
    assert!(out.contains("deleted"), "{out}");
    let out = server.kubectl(&[
        "get",
        "deploy",
        "nginx-deployment",
        "-o",
        "jsonpath={.metadata.finalizers} {.metadata.deletionTimestamp}",
    ]);
    assert!(out.starts_with("[\"orphan\"] 20"), "{out}");
    let uid = server.kubectl(&[
        "get",
        "statefulset",
        "-n",
        "docs",
        "web",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let mut dependent = owned("dep2", "web", &uid).replace("kind: Deployment", "kind: StatefulSet");
    dependent = dependent.replace("metadata:\n", "metadata:\n  namespace: docs\n");
    server.kubectl(&["apply", "-f", &write(dir, "dep2.yaml", &dependent)]);
    server.kubectl(&[
        "delete",
        "statefulset",
        "-n",
        "docs",
        "web",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let out = server.kubectl(&[
        "get",
        "statefulset",
        "-n",
        "docs",
        "web",
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert_eq!(out, "[\"foregroundDeletion\"]");
    server.kubectl(&["delete", "daemonset", "-n", "docs", "fluentd-elasticsearch"]);
    let (ok, _, err) = server.kubectl_raw(
        &["get", "daemonset", "-n", "docs", "fluentd-elasticsearch"],
        None,
    );
    assert!(!ok && err.contains("NotFound"), "{err}");
}

#[test]
fn kubectl_auth_and_what_each_identity_may_do() {
    if !berth_testutil::require_command("kubectl against berth api serve", "kubectl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "reader-token,rita,1001,\"berth:read-only\"\nnode-token,system:node:n1,1002,\"system:nodes\"\n",
    )
    .unwrap();
    let server = Server::start(&["--token-file", tokens.to_str().unwrap()]);
    let reader = server.as_user("reader", serde_json::json!({"token": "reader-token"}));
    let node = server.as_user("node", serde_json::json!({"token": "node-token"}));
    let nobody = server.as_user(
        "nobody",
        serde_json::json!({"username": "nobody", "password": "none"}),
    );
    let wrong = server.as_user("wrong", serde_json::json!({"token": "wrong"}));

    // whoami
    let out = server.kubectl(&["auth", "whoami"]);
    assert!(
        out.contains("berth-admin") && out.contains("system:masters"),
        "{out}"
    );
    let (ok, out, err) = server.kubectl_with(&reader, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{err}");
    let me: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(me["status"]["userInfo"]["username"], "rita");
    assert_eq!(me["status"]["userInfo"]["uid"], "1001");

    // can-i: yes/no on stdout, exit status 0/1.
    assert_eq!(
        server.kubectl(&["auth", "can-i", "create", "pods"]).trim(),
        "yes"
    );
    let (ok, out, _) = server.kubectl_with(&reader, &["auth", "can-i", "create", "pods"]);
    assert!(!ok && out.trim() == "no", "{out}");
    let (ok, out, _) = server.kubectl_with(&reader, &["auth", "can-i", "list", "pods"]);
    assert!(ok && out.trim() == "yes", "{out}");
    let (ok, out, _) = server.kubectl_with(&node, &["auth", "can-i", "create", "pods"]);
    assert!(!ok && out.starts_with("no - node \"n1\" can only"), "{out}");
    let (ok, out, _) = server.kubectl_with(&node, &["auth", "can-i", "get", "nodes"]);
    assert!(ok && out.trim() == "yes", "{out}");
    let (ok, out, _) = server.kubectl_with(
        &reader,
        &["auth", "can-i", "--list", "--namespace", "default"],
    );
    assert!(
        ok && out.contains("pods") && out.contains("[get list watch]"),
        "{out}"
    );

    // A read-only user's write is refused with Kubernetes' message; nothing is created.
    let cm = write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: by-rita\ndata:\n  a: b\n",
    );
    let (ok, _, err) = server.kubectl_with(&reader, &["apply", "-f", &cm]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("configmaps \"by-rita\" is forbidden: User \"rita\" cannot")
            || err.contains("configmaps is forbidden: User \"rita\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"default\""),
        "{err}"
    );
    let (ok, _, err) = server.kubectl_raw(&["get", "cm", "by-rita"], None);
    assert!(!ok && err.contains("NotFound"), "{err}");
    let (ok, out, err) = server.kubectl_with(&reader, &["get", "namespaces"]);
    assert!(ok && out.contains("kube-system"), "{err}");

    // A node writing another node's pod: 403; its own: allowed.
    let pods = write(
        dir.path(),
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: mine\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: busybox\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: theirs\nspec:\n  nodeName: n2\n  containers:\n  - name: c\n    image: busybox\n",
    );
    server.kubectl(&["apply", "-f", &pods]);
    let running = r#"{"status":{"phase":"Running"}}"#;
    let (ok, _, err) = server.kubectl_with(
        &node,
        &[
            "patch",
            "pod",
            "mine",
            "--subresource=status",
            "--type=merge",
            "-p",
            running,
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = server.kubectl_with(
        &node,
        &[
            "patch",
            "pod",
            "theirs",
            "--subresource=status",
            "--type=merge",
            "-p",
            running,
        ],
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("Forbidden")
            && err.contains("User \"system:node:n1\" cannot patch resource \"pods/status\""),
        "{err}"
    );
    let (ok, _, err) = server.kubectl_with(&node, &["delete", "pod", "theirs", "--wait=false"]);
    assert!(!ok && err.contains("forbidden"), "{err}");
    assert_eq!(
        server.kubectl(&["get", "pod", "theirs", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );

    // No credentials, or a wrong token: 401.
    // (kubectl prompts for a password when a kubeconfig has no credentials for an https
    // server; basic auth, which Kubernetes no longer accepts either, stops the prompt and
    // sends no token or certificate.)
    let (ok, out, err) = server.kubectl_with(&nobody, &["get", "pods"]);
    assert!(!ok && err.contains("Unauthorized"), "{out}{err}");
    let (ok, _, err) = server.kubectl_with(&wrong, &["get", "pods"]);
    assert!(!ok && err.contains("Unauthorized"), "{err}");
}
