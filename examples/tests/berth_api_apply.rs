//! kubectl 1.32 against `berth api serve`: server-side apply (managedFields, conflicts between
//! field managers, `--force-conflicts`), the typed commands that send protobuf bodies
//! (`create namespace|configmap|secret|deployment|service|job|cronjob|serviceaccount`, `scale`,
//! `rollout restart|status|history`, `set image`), and a CRD with an object of it whose
//! printer columns `kubectl get` prints.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// A running `berth api serve`, killed on drop.
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
    fn start() -> Option<Server> {
        if !berth_testutil::require_command("kubectl against berth api serve", "kubectl") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Command::new(BIN)
            .args(["api", "serve", "--addr", "127.0.0.1:0", "--root"])
            .arg(dir.path().join("root"))
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !kubeconfig.exists() {
            assert!(Instant::now() < deadline, "no kubeconfig written");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kubectl <args>` (stdin from `input`): (success, stdout, stderr).
    fn run(&self, args: &[&str], input: &str) -> (bool, String, String) {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.path("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
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

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, "")
    }

    fn ok_with(&self, args: &[&str], input: &str) -> String {
        let (ok, out, err) = self.run(args, input);
        assert!(ok, "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}");
        out
    }
}

const DEPLOYMENT: &str = r#"
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
"#;

#[test]
fn server_side_apply_conflicts_and_force() {
    let Some(s) = Server::start() else { return };
    let out = s.ok_with(&["apply", "--server-side", "-f", "-"], DEPLOYMENT);
    assert!(
        out.contains("deployment.apps/nginx-deployment serverside-applied"),
        "{out}"
    );
    // Again: unchanged content, same manager.
    s.ok_with(&["apply", "--server-side", "-f", "-"], DEPLOYMENT);
    let managers = s.ok(&[
        "get",
        "deployment",
        "nginx-deployment",
        "--show-managed-fields",
        "-o",
        "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation} {end}",
    ]);
    assert_eq!(managers.trim(), "kubectl/Apply", "{managers}");
    // Another manager changing replicas conflicts, as kube-apiserver words it.
    let other = DEPLOYMENT.replace("replicas: 3", "replicas: 5");
    let (ok, out, err) = s.run(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "other",
            "-f",
            "-",
        ],
        &other,
    );
    assert!(!ok, "{out}");
    assert!(err.contains("conflict with \"kubectl\""), "{err}");
    assert!(err.contains(".spec.replicas"), "{err}");
    let replicas = s.ok(&[
        "get",
        "deployment",
        "nginx-deployment",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "3");
    s.ok_with(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "other",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &other,
    );
    let replicas = s.ok(&[
        "get",
        "deployment",
        "nginx-deployment",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "5");
    // kubectl scale is an Update by its own manager.
    s.ok(&["scale", "deployment", "nginx-deployment", "--replicas", "2"]);
    let managers = s.ok(&[
        "get",
        "deployment",
        "nginx-deployment",
        "--show-managed-fields",
        "-o",
        "jsonpath={range .metadata.managedFields[*]}{.manager} {end}",
    ]);
    assert!(managers.contains("kubectl"), "{managers}");
}

#[test]
fn typed_commands_send_protobuf_and_work() {
    let Some(s) = Server::start() else { return };
    assert_eq!(
        s.ok(&["create", "namespace", "proto"]).trim(),
        "namespace/proto created"
    );
    s.ok(&[
        "create",
        "configmap",
        "cm",
        "-n",
        "proto",
        "--from-literal",
        "a=1",
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "configmap",
            "cm",
            "-n",
            "proto",
            "-o",
            "jsonpath={.data.a}"
        ]),
        "1"
    );
    s.ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        "-n",
        "proto",
        "--from-literal",
        "k=hello",
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "secret",
            "sec",
            "-n",
            "proto",
            "-o",
            "jsonpath={.data.k}"
        ]),
        "aGVsbG8="
    );
    s.ok(&["create", "serviceaccount", "robot", "-n", "proto"]);
    s.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "proto",
        "--image",
        "nginx:1.27",
        "--replicas",
        "2",
        "--port",
        "80",
    ]);
    let d = s.ok(&[
        "get", "deployment", "web", "-n", "proto", "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.strategy.rollingUpdate.maxSurge}",
    ]);
    assert_eq!(d, "2 nginx:1.27 80 25%");
    s.ok(&[
        "create",
        "service",
        "clusterip",
        "web",
        "-n",
        "proto",
        "--tcp",
        "80:8080",
    ]);
    let svc = s.ok(&[
        "get",
        "service",
        "web",
        "-n",
        "proto",
        "-o",
        "jsonpath={.spec.ports[0].targetPort} {.spec.clusterIP}",
    ]);
    assert!(svc.starts_with("8080 10.96."), "{svc}");
    s.ok(&[
        "create", "job", "once", "-n", "proto", "--image", "busybox", "--", "true",
    ]);
    s.ok(&[
        "create",
        "cronjob",
        "tick",
        "-n",
        "proto",
        "--image",
        "busybox",
        "--schedule",
        "*/5 * * * *",
        "--",
        "true",
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "cronjob",
            "tick",
            "-n",
            "proto",
            "-o",
            "jsonpath={.spec.schedule}"
        ]),
        "*/5 * * * *"
    );
    s.ok(&[
        "scale",
        "deployment",
        "web",
        "-n",
        "proto",
        "--replicas",
        "4",
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "deployment",
            "web",
            "-n",
            "proto",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "4"
    );
    s.ok(&[
        "set",
        "image",
        "deployment/web",
        "-n",
        "proto",
        "nginx=nginx:1.28",
    ]);
    s.ok(&["rollout", "restart", "deployment/web", "-n", "proto"]);
    let ann = s.ok(&[
        "get",
        "deployment",
        "web",
        "-n",
        "proto",
        "-o",
        "jsonpath={.spec.template.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}",
    ]);
    assert!(!ann.is_empty());
    s.ok(&["rollout", "history", "deployment/web", "-n", "proto"]);
    s.ok(&["label", "namespace", "proto", "team=a"]);
    s.ok(&["delete", "namespace", "proto"]);
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                cronSpec:
                  type: string
                image:
                  type: string
                replicas:
                  type: integer
      additionalPrinterColumns:
      - name: Spec
        type: string
        description: The cron spec defining the interval a CronJob is run
        jsonPath: .spec.cronSpec
      - name: Replicas
        type: integer
        description: The number of jobs launched by the CronJob
        jsonPath: .spec.replicas
      - name: Age
        type: date
        jsonPath: .metadata.creationTimestamp
  scope: Namespaced
  names:
    plural: crontabs
    singular: crontab
    kind: CronTab
    shortNames:
    - ct
"#;

const CRONTAB: &str = r#"
apiVersion: "stable.example.com/v1"
kind: CronTab
metadata:
  name: my-new-cron-object
spec:
  cronSpec: "* * * * */5"
  image: my-awesome-cron-image
  replicas: 1
"#;

#[test]
fn a_crd_and_an_object_of_it() {
    let Some(s) = Server::start() else { return };
    s.ok_with(&["apply", "-f", "-"], CRD);
    s.ok(&[
        "wait",
        "--for",
        "condition=Established",
        "crd/crontabs.stable.example.com",
        "--timeout",
        "20s",
    ]);
    let out = s.ok_with(&["apply", "-f", "-"], CRONTAB);
    assert!(
        out.contains("crontab.stable.example.com/my-new-cron-object created"),
        "{out}"
    );
    let table = s.ok(&["get", "crontabs"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SPEC", "REPLICAS", "AGE"], "{table}");
    let row = lines.next().unwrap();
    assert!(row.starts_with("my-new-cron-object"), "{table}");
    assert!(
        row.contains("* * * * */5") && row.contains(" 1 "),
        "{table}"
    );
    // Short name, server-side apply and explain of the custom kind.
    s.ok(&["get", "ct", "my-new-cron-object", "-o", "yaml"]);
    s.ok_with(
        &["apply", "--server-side", "-f", "-"],
        &CRONTAB.replace("replicas: 1", "replicas: 2"),
    );
    assert_eq!(
        s.ok(&[
            "get",
            "ct",
            "my-new-cron-object",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "2"
    );
    s.ok(&["explain", "crontab.spec"]);
    let resources = s.ok(&["api-resources", "--api-group", "stable.example.com"]);
    assert!(resources.contains("crontabs"), "{resources}");
    s.ok(&["delete", "crd", "crontabs.stable.example.com"]);
    let (ok, _, err) = s.run(&["get", "crontabs"], "");
    assert!(!ok, "{err}");
}
