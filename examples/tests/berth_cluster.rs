//! The cluster end to end, through the `berth` binary and kubectl, as root and for real:
//! `berth cluster up` with 3 nodes; an image built from busybox-static and pushed to the
//! cluster's registry; a Deployment's pods as isolated processes (own PID namespace, cgroup
//! limits in effect); `kubectl logs`, `exec` and `port-forward` through the API server's node
//! proxy; OOMKilled with a restart; a failing liveness probe; readiness gating Ready; a
//! ConfigMap volume updated in place; init containers first; a DaemonSet on every node; a Job
//! to completion; a bad manifest refused without a change; an agent restarted adopting its
//! containers; an agent killed (SIGKILL) going NotReady with its pods recreated elsewhere;
//! and `berth cluster down` leaving no mount, cgroup, process or state.
//!
//! One cluster serves every step (bringing it up takes about a second, the image build a few);
//! the steps run in order and print their names. Timeouts are short (`--lease-renew 0.5
//! --node-monitor-grace 3 --pod-eviction-timeout 1 --backoff 1 --eviction-disk-free 1`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// A cluster under a temporary root, brought down on drop.
struct Cluster {
    root: PathBuf,
    dir: tempfile::TempDir,
    registry: String,
    id: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.root.join("cluster").exists() {
            let _ = Command::new(BIN)
                .args(["cluster", "down", "--root"])
                .arg(&self.root)
                .stdout(Stdio::null())
                .status();
        }
    }
}

fn berth(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(BIN).args(args).output()?;
    ensure!(
        out.status.success(),
        "berth {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match done() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what} (last error: {last:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    fn up() -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("berth-cluster-test-")
            .tempdir()?;
        let root = dir.path().join("root");
        let out = berth(&[
            "cluster",
            "up",
            "--root",
            root.to_str().unwrap(),
            "--nodes",
            "3",
            "--lease-renew",
            "0.5",
            "--node-monitor-grace",
            "3",
            "--pod-eviction-timeout",
            "1",
            "--backoff",
            "1",
            // Shared CI disks run fuller than the kubelet's 10%: no eviction for disk here.
            "--eviction-disk-free",
            "1",
        ])?;
        ensure!(out.contains("3 nodes Ready"), "cluster up said: {out}");
        let plane: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("cluster/control-plane.json"))?)?;
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("cluster/cluster.json"))?)?;
        Ok(Cluster {
            registry: plane["registry"].as_str().context("registry")?.to_owned(),
            id: spec["id"].as_str().context("id")?.to_owned(),
            root,
            dir,
        })
    }

    fn kubectl_raw(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.root.join("cluster/kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().expect("kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let (ok, out, err) = self.kubectl_raw(args, None);
        ensure!(ok, "kubectl {}: {err}", args.join(" "));
        Ok(out)
    }

    fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let (ok, _, err) = self.kubectl_raw(&["apply", "-f", "-"], Some(yaml));
        ensure!(ok, "kubectl apply: {err}");
        Ok(())
    }

    fn get(&self, what: &str, jsonpath: &str) -> anyhow::Result<String> {
        self.kubectl(&["get", what, "-o", &format!("jsonpath={jsonpath}")])
    }

    fn image(&self) -> String {
        format!("{}/test/busybox:1", self.registry)
    }

    /// Builds an image of busybox-static and pushes it to the cluster's registry.
    fn push_image(&self) -> anyhow::Result<()> {
        let ctx = self.dir.path().join("context");
        std::fs::create_dir_all(&ctx)?;
        std::fs::copy("/bin/busybox", ctx.join("busybox"))?;
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN mkdir -p /tmp\nCMD [\"sh\"]\n",
        )?;
        let build = self.dir.path().join("build");
        let build = build.to_str().unwrap();
        berth(&[
            "--root",
            build,
            "image",
            "build",
            "-q",
            "-t",
            &self.image(),
            ctx.to_str().unwrap(),
        ])?;
        berth(&[
            "--root",
            build,
            "image",
            "push",
            "--insecure",
            &self.image(),
        ])?;
        Ok(())
    }

    /// The pod's phase-independent status field at `jsonpath`.
    fn pod(&self, name: &str, jsonpath: &str) -> String {
        self.get(&format!("pod/{name}"), jsonpath)
            .unwrap_or_default()
    }

    /// The pods with label `app=<app>`: (name, node).
    fn pods(&self, app: &str) -> anyhow::Result<Vec<(String, String)>> {
        let out = self.kubectl(&[
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.len() >= 3 && f[2] == "Running" && f.get(3).is_none_or(|d| d.is_empty()))
                    .then(|| (f[0].to_owned(), f[1].to_owned()))
            })
            .collect())
    }

    /// The pids in the pod's container cgroup (memory hierarchy).
    fn container_pids(&self, uid: &str) -> Vec<i32> {
        let base = Path::new("/sys/fs/cgroup/memory").join(format!("berth-cluster-{}", self.id));
        let mut out = Vec::new();
        walk(&base, &mut |p| {
            if p.file_name().is_some_and(|n| n == "cgroup.procs")
                && p.to_string_lossy().contains(&format!("pod{uid}/"))
            {
                out.extend(
                    std::fs::read_to_string(p)
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| l.parse::<i32>().ok()),
                );
            }
        });
        out
    }

    fn agent_pid(&self, node: &str) -> anyhow::Result<i32> {
        Ok(
            std::fs::read_to_string(self.root.join("cluster/nodes").join(node).join("agent.pid"))?
                .trim()
                .parse()?,
        )
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector: {matchLabels: {app: web}}
      containers:
      - name: web
        image: IMAGE
        command: ["sh", "-c", "echo hello-$(hostname) > /tmp/index.html; echo web started; exec httpd -f -p 8080 -h /tmp"]
        resources:
          limits: {memory: 48Mi, cpu: 250m}
"#;

fn deployment_isolated(c: &Cluster) -> anyhow::Result<()> {
    c.apply(&WEB.replace("IMAGE", &c.image()))?;
    c.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"])?;
    let pods = c.pods("web")?;
    ensure!(pods.len() == 3, "3 web pods Running: {pods:?}");
    let nodes: std::collections::BTreeSet<_> = pods.iter().map(|(_, n)| n.clone()).collect();
    ensure!(nodes.len() >= 2, "the pods spread over nodes: {pods:?}");
    let (pod, _) = &pods[0];
    // Own PID namespace: the container's shell sees itself as a low pid and few processes.
    let out = c.kubectl(&["exec", pod, "--", "sh", "-c", "ls /proc | grep -c '^[0-9]'"])?;
    let visible: u32 = out.trim().parse()?;
    ensure!(
        visible < 6,
        "{visible} processes visible in the pod's PID namespace"
    );
    let out = c.kubectl(&["exec", pod, "--", "cat", "/proc/1/cmdline"])?;
    ensure!(out.contains("httpd"), "pid 1 is httpd: {out:?}");
    // Cgroup limits in effect: the container's memory group holds 48 MiB.
    let uid = c.pod(pod, "{.metadata.uid}");
    let pids = c.container_pids(&uid);
    ensure!(
        !pids.is_empty(),
        "the container's processes are in its cgroup"
    );
    let base = Path::new("/sys/fs/cgroup/memory").join(format!("berth-cluster-{}", c.id));
    let mut limits = Vec::new();
    walk(&base, &mut |p| {
        if p.ends_with("memory.limit_in_bytes")
            && p.to_string_lossy().contains(&format!("pod{uid}/"))
        {
            limits.push(
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            );
        }
    });
    ensure!(
        limits.iter().any(|l| l == &(48u64 << 20).to_string()),
        "a 48 MiB memory limit in the pod's cgroups: {limits:?}"
    );
    Ok(())
}

fn logs_exec_port_forward(c: &Cluster) -> anyhow::Result<()> {
    let (pod, _) = c.pods("web")?.into_iter().next().context("a web pod")?;
    let logs = c.kubectl(&["logs", &pod])?;
    ensure!(logs.contains("web started"), "kubectl logs: {logs:?}");
    let out = c.kubectl(&["exec", &pod, "--", "hostname"])?;
    ensure!(out.trim() == pod, "kubectl exec hostname: {out:?}");
    let (ok, _, err) = c.kubectl_raw(&["exec", &pod, "--", "sh", "-c", "exit 3"], None);
    ensure!(
        !ok && err.contains("exit code 3"),
        "exit code through exec: {err}"
    );
    // port-forward: kubectl picks a local port and says which.
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.root.join("cluster/kubeconfig"))
        .arg("--cache-dir")
        .arg(c.dir.path().join("kube-cache"))
        .args(["port-forward", &format!("pod/{pod}"), ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let result = (|| {
        let mut stdout = child.stdout.take().context("stdout")?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\n") {
            ensure!(stdout.read(&mut b)? == 1, "port-forward said nothing");
            line.push(b[0]);
        }
        let line = String::from_utf8_lossy(&line);
        let port: u16 = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .context("port")?
            .parse()?;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        ensure!(
            answer.contains(&format!("hello-{pod}")),
            "through port-forward: {answer:?}"
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn oom_killed(c: &Cluster) -> anyhow::Result<()> {
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  containers:
  - name: hog
    image: {}
    command: ["sh", "-c", "a=xxxxxxxxxxxxxxxx; while true; do a=$a$a; done"]
    resources: {{limits: {{memory: 16Mi}}}}
"#,
        c.image()
    ))?;
    wait_for("OOMKilled and a restart", Duration::from_secs(60), || {
        let reason = c.pod(
            "hog",
            "{.status.containerStatuses[0].lastState.terminated.reason}",
        );
        let restarts: u32 = c
            .pod("hog", "{.status.containerStatuses[0].restartCount}")
            .parse()
            .unwrap_or(0);
        Ok(reason == "OOMKilled" && restarts >= 1)
    })?;
    let code = c.pod(
        "hog",
        "{.status.containerStatuses[0].lastState.terminated.exitCode}",
    );
    ensure!(code == "137", "exit code {code}");
    c.kubectl(&["delete", "pod", "hog", "--wait=false"])?;
    Ok(())
}

fn probes(c: &Cluster) -> anyhow::Result<()> {
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  containers:
  - name: live
    image: {image}
    command: ["sleep", "3600"]
    livenessProbe:
      exec: {{command: ["cat", "/tmp/healthy"]}}
      periodSeconds: 1
      failureThreshold: 1
  - name: ready
    image: {image}
    command: ["sleep", "3600"]
    readinessProbe:
      exec: {{command: ["cat", "/tmp/ready"]}}
      periodSeconds: 1
"#,
        image = c.image()
    ))?;
    wait_for(
        "the liveness probe's restart",
        Duration::from_secs(60),
        || {
            let restarts: u32 = c
                .pod(
                    "probed",
                    "{.status.containerStatuses[?(@.name==\"live\")].restartCount}",
                )
                .parse()
                .unwrap_or(0);
            Ok(restarts >= 1)
        },
    )?;
    let ready = c.pod(
        "probed",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    );
    ensure!(ready == "False", "Ready before the readiness file: {ready}");
    c.kubectl(&["exec", "probed", "-c", "ready", "--", "touch", "/tmp/ready"])?;
    // The other container is still failing its liveness probe, so only the container's
    // readiness is asserted.
    wait_for("readiness", Duration::from_secs(30), || {
        Ok(c.pod(
            "probed",
            "{.status.containerStatuses[?(@.name==\"ready\")].ready}",
        ) == "true")
    })?;
    c.kubectl(&["delete", "pod", "probed", "--wait=false"])?;
    Ok(())
}

fn configmap_and_init(c: &Cluster) -> anyhow::Result<()> {
    c.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{greeting: one}}
---
apiVersion: v1
kind: Pod
metadata: {{name: configured}}
spec:
  initContainers:
  - name: first
    image: {image}
    command: ["sh", "-c", "echo init-ran > /work/marker"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "cat /work/marker; sleep 3600"]
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: settings, mountPath: /etc/settings}}
  volumes:
  - {{name: work, emptyDir: {{}}}}
  - {{name: settings, configMap: {{name: settings}}}}
"#,
        image = c.image()
    ))?;
    wait_for("the configured pod", Duration::from_secs(60), || {
        Ok(c.pod("configured", "{.status.phase}") == "Running")
    })?;
    let logs = c.kubectl(&["logs", "configured", "-c", "main"])?;
    ensure!(
        logs.contains("init-ran"),
        "the init container ran first: {logs:?}"
    );
    let v = c.kubectl(&["exec", "configured", "--", "cat", "/etc/settings/greeting"])?;
    ensure!(v == "one", "configMap volume: {v:?}");
    c.kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"greeting":"two"}}"#,
    ])?;
    wait_for(
        "the configMap volume's update",
        Duration::from_secs(60),
        || Ok(c.kubectl(&["exec", "configured", "--", "cat", "/etc/settings/greeting"])? == "two"),
    )?;
    c.kubectl(&["delete", "pod", "configured", "--wait=false"])?;
    Ok(())
}

fn daemonset_and_job(c: &Cluster) -> anyhow::Result<()> {
    c.apply(&format!(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: a, image: "{image}", command: ["sleep", "3600"]}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: once}}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: j, image: "{image}", command: ["sh", "-c", "echo job done"]}}]
"#,
        image = c.image()
    ))?;
    wait_for(
        "a DaemonSet pod on every node",
        Duration::from_secs(60),
        || {
            let nodes: std::collections::BTreeSet<String> =
                c.pods("agent")?.into_iter().map(|(_, n)| n).collect();
            Ok(nodes.len() == 3)
        },
    )?;
    c.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/once",
        "--timeout=60s",
    ])?;
    let logs = c.kubectl(&["logs", "job/once"])?;
    ensure!(logs.contains("job done"), "job logs: {logs:?}");
    c.kubectl(&["delete", "daemonset", "agent", "--wait=false"])?;
    Ok(())
}

fn bad_manifest(c: &Cluster) -> anyhow::Result<()> {
    let before = c.kubectl(&["get", "deployments,pods", "-o", "name"])?;
    let (ok, _, err) = c.kubectl_raw(
        &["apply", "-f", "-"],
        Some("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: broken}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: one}}\n  template:\n    metadata: {labels: {app: two}}\n    spec: {containers: []}\n"),
    );
    ensure!(!ok, "a bad Deployment was accepted");
    ensure!(
        err.contains("broken") && (err.contains("selector") || err.contains("containers")),
        "a clear error: {err}"
    );
    let (ok, _, err) = c.kubectl_raw(
        &["apply", "-f", "-"],
        Some("kind: Pod\nmetadata: {name: x}\n"),
    );
    ensure!(
        !ok && !err.is_empty(),
        "a manifest without apiVersion: {err}"
    );
    let after = c.kubectl(&["get", "deployments,pods", "-o", "name"])?;
    ensure!(!after.contains("broken"), "nothing created: {after}");
    ensure!(
        before
            .lines()
            .filter(|l| l.starts_with("deployment"))
            .count()
            == after
                .lines()
                .filter(|l| l.starts_with("deployment"))
                .count(),
        "deployments unchanged"
    );
    Ok(())
}

fn agent_restart_adopts(c: &Cluster) -> anyhow::Result<()> {
    let (pod, node) = c.pods("web")?.into_iter().next().context("a web pod")?;
    let uid = c.pod(&pod, "{.metadata.uid}");
    let before = c.container_pids(&uid);
    let restarts = c.pod(&pod, "{.status.containerStatuses[0].restartCount}");
    let agent = c.agent_pid(&node)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    std::thread::sleep(Duration::from_millis(200));
    berth(&["cluster", "up", "--root", c.root.to_str().unwrap()])?;
    ensure!(c.agent_pid(&node)? != agent, "a new agent runs");
    // Give the new agent a few sync periods: it must keep the same container.
    std::thread::sleep(Duration::from_secs(3));
    let after = c.container_pids(&uid);
    ensure!(
        before == after,
        "the container kept running as is: {before:?} -> {after:?}"
    );
    ensure!(
        c.pod(&pod, "{.status.containerStatuses[0].restartCount}") == restarts,
        "no restart"
    );
    ensure!(c.pod(&pod, "{.status.phase}") == "Running", "still Running");
    Ok(())
}

fn agent_killed(c: &Cluster) -> anyhow::Result<()> {
    let (_, node) = c.pods("web")?.into_iter().next().context("a web pod")?;
    let agent = c.agent_pid(&node)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    wait_for("the node NotReady", Duration::from_secs(30), || {
        Ok(c.get(
            &format!("node/{node}"),
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        )? != "True")
    })?;
    wait_for(
        "3 web pods Running on the other nodes",
        Duration::from_secs(60),
        || {
            let pods = c.pods("web")?;
            Ok(pods.iter().filter(|(_, n)| n != &node).count() >= 3)
        },
    )?;
    // Back again: the returning agent removes the pods it no longer has.
    berth(&["cluster", "up", "--root", c.root.to_str().unwrap()])?;
    Ok(())
}

fn nothing_left(c: &Cluster) -> anyhow::Result<()> {
    let root = c.root.clone();
    berth(&["cluster", "down", "--root", root.to_str().unwrap()])?;
    ensure!(
        !root.join("cluster").exists(),
        "the cluster's directory is gone"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(
        !mounts.contains(root.to_str().unwrap()),
        "no mount left under {}",
        root.display()
    );
    for h in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let g = h.path().join(format!("berth-cluster-{}", c.id));
        ensure!(!g.exists(), "cgroup left: {}", g.display());
    }
    for p in std::fs::read_dir("/proc")?.flatten() {
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let env = std::fs::read(p.path().join("environ")).unwrap_or_default();
        let needle = root.to_str().unwrap().as_bytes();
        let has = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle);
        ensure!(
            !has(&cmd) && !has(&env),
            "process {} left: {}",
            p.file_name().to_string_lossy(),
            String::from_utf8_lossy(&cmd)
        );
    }
    Ok(())
}

/// One step of the end-to-end test, on the shared cluster.
type Step = fn(&Cluster) -> anyhow::Result<()>;

#[test]
fn cluster_end_to_end() -> anyhow::Result<()> {
    if !berth_testutil::require_root("berth cluster")
        || !berth_testutil::require_command("berth cluster", "kubectl")
        || !berth_testutil::require_path("berth cluster", "/bin/busybox")
    {
        return Ok(());
    }
    let started = Instant::now();
    let cluster = Cluster::up()?;
    println!("cluster up ({:.1?})", started.elapsed());
    let steps: &[(&str, Step)] = &[
        ("image built and pushed", |c| c.push_image()),
        ("deployment pods isolated", deployment_isolated),
        ("logs, exec, port-forward", logs_exec_port_forward),
        ("bad manifest", bad_manifest),
        ("OOMKilled", oom_killed),
        ("probes", probes),
        ("configMap and init", configmap_and_init),
        ("daemonset and job", daemonset_and_job),
        ("agent restart adopts", agent_restart_adopts),
        ("agent killed", agent_killed),
        ("cluster down leaves nothing", nothing_left),
    ];
    // BERTH_CLUSTER_STEPS=word runs only the steps whose name holds it (and the setup ones).
    let only = std::env::var("BERTH_CLUSTER_STEPS").ok();
    for (name, step) in steps {
        let needed = ["image", "deployment", "down"]
            .iter()
            .any(|w| name.contains(w));
        if let Some(only) = &only
            && !needed
            && !name.contains(only.as_str())
        {
            continue;
        }
        let t = Instant::now();
        step(&cluster).with_context(|| format!("step {name:?}"))?;
        println!("step {name}: ok ({:.1?})", t.elapsed());
    }
    Ok(())
}
