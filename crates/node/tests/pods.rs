//! Root tests of the node agent against the real kernel and the in-process API server: pods
//! are created with `spec.nodeName` set (no scheduler), run as real containers from a local
//! busybox image, and are checked on the host (namespaces, cgroup limits, processes, mounts).
//! A custom harness: this binary is re-executed as container init, shim and pause process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_image::{BaseImage, Reference};
use berth_node::shim::ShimState;
use berth_node::{Agent, NodeConfig};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn main() {
    berth_namespaces::init::main_if_init();
    berth_node::shim::main_if_shim();
    let tests: &[berth_testutil::HarnessTest] = &[
        ("pod_runs_isolated_and_deletes_gracefully", || {
            wrap(pod_runs_isolated_and_deletes_gracefully)
        }),
        ("restart_policies_and_crash_loop_backoff", || {
            wrap(restart_policies_and_crash_loop_backoff)
        }),
        ("memory_breach_is_oom_killed", || {
            wrap(memory_breach_is_oom_killed)
        }),
        ("agent_restart_adopts_running_containers", || {
            wrap(agent_restart_adopts_running_containers)
        }),
        ("env_and_volumes", || wrap(env_and_volumes)),
        ("configmap_volume_updates_in_place", || {
            wrap(configmap_volume_updates_in_place)
        }),
        ("probes_gate_readiness_and_restart", || {
            wrap(probes_gate_readiness_and_restart)
        }),
        ("init_containers_run_first_in_order", || {
            wrap(init_containers_run_first_in_order)
        }),
        ("bad_pods_fail_clearly", || wrap(bad_pods_fail_clearly)),
        ("agent_api_logs_exec_stats_metrics", || {
            wrap(agent_api_logs_exec_stats_metrics)
        }),
        (
            "pressure_evicts_besteffort_first_and_collects_images",
            || wrap(pressure_evicts_besteffort_first_and_collects_images),
        ),
    ];
    berth_testutil::run_harness(tests, |name| {
        berth_testutil::require_root(name) && berth_testutil::require_path(name, "/bin/busybox")
    });
}

fn wrap(f: fn() -> Result<()>) -> TestResult {
    f().map_err(|e| format!("{e:?}").into())
}

/// One node agent on a temporary root against an in-memory API server.
struct TestNode {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    config: NodeConfig,
    agent: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<berth_node::Result<()>>,
    )>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    fn new() -> Result<TestNode> {
        Self::with(|_| {})
    }

    fn with(adjust: impl FnOnce(&mut NodeConfig)) -> Result<TestNode> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let server = rt.block_on(berth_apiserver::ApiServer::in_memory())?;
        let client = {
            let _guard = rt.enter();
            kube::Client::new(server.router(), "default")
        };
        let dir = tempfile::tempdir()?;
        let name = berth_testutil::unique_name("node");
        let mut config = NodeConfig::new(&name, dir.path().join("root"));
        config.cgroup_parent = PathBuf::from(format!("berth-test/{name}"));
        config.lease_renew = Duration::from_millis(500);
        config.status_update = Duration::from_millis(500);
        config.sync_period = Duration::from_millis(50);
        config.backoff_initial = Duration::from_millis(800);
        config.backoff_max = Duration::from_secs(4);
        config.labels.insert("test".into(), "yes".into());
        config.port = 0;
        // The test machine's disk is shared and may be nearly full: only the eviction test
        // turns pressure on.
        config.eviction_disk_free = 0.0;
        adjust(&mut config);
        let mut node = TestNode {
            rt,
            client,
            config,
            agent: None,
            _dir: dir,
        };
        node.start_agent()?;
        let store = berth_image::ImageStore::open(node.config.root.join("engine/image"))?;
        BaseImage::busybox(Path::new("/bin/busybox"))?
            .commit(&store, Some(&Reference::parse("busybox:test")?))?;
        Ok(node)
    }

    fn start_agent(&mut self) -> Result<()> {
        let agent = Agent::new(self.client.clone(), self.config.clone())?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = self.rt.spawn(agent.run(async move {
            let _ = rx.await;
        }));
        self.agent = Some((tx, task));
        Ok(())
    }

    fn stop_agent(&mut self) -> Result<()> {
        if let Some((tx, task)) = self.agent.take() {
            let _ = tx.send(());
            self.rt.block_on(task)??;
        }
        Ok(())
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn create_pod(&self, name: &str, spec: Value) -> Result<Pod> {
        let mut spec = spec;
        spec["nodeName"] = json!(self.config.name);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "t"}},
            "spec": spec,
        }))?;
        Ok(self
            .rt
            .block_on(self.pods().create(&PostParams::default(), &pod))?)
    }

    fn get(&self, name: &str) -> Result<Option<Pod>> {
        Ok(self.rt.block_on(self.pods().get_opt(name))?)
    }

    /// Polls pod `name` until `check` returns true.
    fn wait(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&Pod) -> bool,
    ) -> Result<Pod> {
        let deadline = Instant::now() + timeout;
        loop {
            let pod = self.get(name)?;
            if let Some(p) = &pod
                && check(p)
            {
                return Ok(p.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for pod {name}: {what}; status: {}",
                    pod.and_then(|p| p.status)
                        .map(|s| serde_json::to_string(&s).unwrap())
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_gone(&self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.get(name)?.is_some() {
            if Instant::now() > deadline {
                bail!("pod {name} was not deleted");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn delete(&self, name: &str, grace: i64) -> Result<()> {
        let params = DeleteParams {
            grace_period_seconds: Some(grace as u32),
            ..Default::default()
        };
        self.rt.block_on(self.pods().delete(name, &params))?;
        Ok(())
    }

    fn uid(pod: &Pod) -> String {
        pod.metadata.uid.clone().unwrap_or_default()
    }

    fn state(&self, pod: &Pod, container: &str, attempt: u32) -> Option<ShimState> {
        let dir = self
            .config
            .root
            .join("pods")
            .join(Self::uid(pod))
            .join("containers")
            .join(container)
            .join(attempt.to_string());
        ShimState::load(&dir)
    }

    fn log(&self, pod: &Pod, container: &str, attempt: u32) -> String {
        let path = self
            .config
            .root
            .join("logs")
            .join(format!(
                "default_{}_{}",
                pod.metadata.name.as_deref().unwrap_or(""),
                Self::uid(pod)
            ))
            .join(container)
            .join(format!("{attempt}.log"));
        berth_node::logs::read_all(&path)
            .unwrap_or_default()
            .into_iter()
            .map(|r| String::from_utf8_lossy(&r.text).into_owned() + "\n")
            .collect()
    }

    fn memory_cgroup(&self, pod: &Pod, qos: Option<&str>) -> PathBuf {
        let mut p = PathBuf::from("/sys/fs/cgroup/memory")
            .join(&self.config.cgroup_parent)
            .join("kubepods");
        if let Some(q) = qos {
            p = p.join(q);
        }
        p.join(format!("pod{}", Self::uid(pod)))
    }

    /// Waits until nothing is mounted under the node root (a grace-0 delete removes the
    /// object at once; the agent cleans up after it).
    fn wait_unmounted(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.mounts_below_root().is_empty() {
            ensure!(
                Instant::now() < deadline,
                "still mounted: {:?}",
                self.mounts_below_root()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn mounts_below_root(&self) -> Vec<String> {
        let root = self.config.root.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.stop_agent();
        if let Ok(host) = berth_node::host::Host::open(self.config.clone()) {
            for p in host.pods_on_disk() {
                host.remove_pod(&p.uid, None);
            }
        }
        for m in self.mounts_below_root().into_iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for controller in [
            "memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "devices", "freezer", "unified",
            "hugetlb", "systemd",
        ] {
            let base = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&self.config.cgroup_parent);
            remove_tree(&base);
            let _ = std::fs::remove_dir(base.parent().unwrap());
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn status(pod: &Pod) -> Value {
    serde_json::to_value(pod.status.clone().unwrap_or_default()).unwrap_or_default()
}

fn phase(pod: &Pod) -> String {
    status(pod)["phase"].as_str().unwrap_or_default().to_owned()
}

fn container(pod: &Pod, name: &str) -> Value {
    status(pod)["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

fn condition(pod: &Pod, kind: &str) -> String {
    status(pod)["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn ns_of(pid: i32, ns: &str) -> Result<PathBuf> {
    Ok(std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))?)
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn pod_runs_isolated_and_deletes_gracefully() -> Result<()> {
    let node = TestNode::new()?;
    // The node registered, with its lease.
    let nodes: Api<Node> = Api::all(node.client.clone());
    let registered = node.rt.block_on(nodes.get(&node.config.name))?;
    let labels = registered.metadata.labels.clone().unwrap_or_default();
    ensure!(
        labels.get("kubernetes.io/hostname") == Some(&node.config.name),
        "hostname label"
    );
    ensure!(
        labels.get("test").map(String::as_str) == Some("yes"),
        "configured label"
    );
    let node_status = serde_json::to_value(registered.status.unwrap_or_default())?;
    ensure!(
        node_status["capacity"]["pods"] == "110",
        "capacity: {}",
        node_status["capacity"]
    );
    let ready = node_status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    ensure!(ready, "node Ready: {}", node_status["conditions"]);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(node.client.clone(), "kube-node-lease");
    let lease = node.rt.block_on(leases.get(&node.config.name))?;
    let first_renew = lease
        .spec
        .as_ref()
        .and_then(|s| s.renew_time.clone())
        .context("renewTime")?;
    std::thread::sleep(Duration::from_millis(1200));
    let lease = node.rt.block_on(leases.get(&node.config.name))?;
    ensure!(
        lease.spec.unwrap().renew_time.unwrap() != first_renew,
        "the lease is renewed"
    );

    let hostdir = tempfile::tempdir()?;
    let events = hostdir.path().join("events");
    let pod = node.create_pod("web", json!({
        "terminationGracePeriodSeconds": 20,
        "volumes": [{"name": "host", "hostPath": {"path": hostdir.path().to_str().unwrap()}}],
        "containers": [{
            "name": "main", "image": "busybox:test",
            "command": ["sh", "-c", "trap 'echo term >> /host/events; exit 0' TERM; echo hello; while true; do sleep 0.1; done"],
            "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
            "volumeMounts": [{"name": "host", "mountPath": "/host"}],
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /host/events"]}}},
        }],
    }))?;
    let running = node.wait("web", Duration::from_secs(30), "Running", |p| {
        phase(p) == "Running"
    })?;
    let st = status(&running);
    ensure!(st["qosClass"] == "Guaranteed", "qos: {}", st["qosClass"]);
    ensure!(condition(&running, "Ready") == "True", "Ready");
    ensure!(
        container(&running, "main")["state"]["running"]["startedAt"].is_string(),
        "running state"
    );
    ensure!(st["hostIP"].is_string(), "hostIP");
    let state = node.state(&pod, "main", 0).context("state.json")?;
    let pid = state.pid;
    ensure!(alive(pid), "container process alive");
    // Own PID namespace: PID 1 inside.
    let proc_status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("proc status")?;
    let nspid = proc_status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .context("NSpid")?;
    ensure!(
        nspid.split_whitespace().last() == Some("1"),
        "PID 1 in its namespace: {nspid}"
    );
    ensure!(
        ns_of(pid, "pid")? != ns_of(std::process::id() as i32, "pid")?,
        "own pid namespace"
    );
    ensure!(
        ns_of(pid, "mnt")? != ns_of(std::process::id() as i32, "mnt")?,
        "own mount namespace"
    );
    // The sandbox's network/IPC/UTS namespaces.
    let sandbox: Value = serde_json::from_slice(
        &std::fs::read(
            node.config
                .root
                .join("pods")
                .join(TestNode::uid(&pod))
                .join("sandbox.json"),
        )
        .context("sandbox.json")?,
    )?;
    let pause = sandbox["pid"].as_i64().context("pause pid")? as i32;
    for ns in ["net", "ipc", "uts"] {
        ensure!(
            ns_of(pid, ns)? == ns_of(pause, ns)?,
            "{ns} shared with the sandbox"
        );
        ensure!(
            ns_of(pid, ns)? != ns_of(std::process::id() as i32, ns)?,
            "{ns} not the host's"
        );
    }
    // Limits in effect in its cgroup, under the pod cgroup.
    let pod_cg = node.memory_cgroup(&pod, None);
    let id = format!("{}-main-0", TestNode::uid(&pod));
    let limit = std::fs::read_to_string(pod_cg.join(&id).join("memory.limit_in_bytes"))
        .with_context(|| format!("{}", pod_cg.join(&id).display()))?;
    ensure!(
        limit.trim() == (64u64 << 20).to_string(),
        "container memory limit {limit}"
    );
    let tasks = std::fs::read_to_string(pod_cg.join(&id).join("cgroup.procs"))?;
    ensure!(
        tasks.lines().any(|l| l.trim() == pid.to_string()),
        "the process is in its cgroup"
    );
    let pod_limit = std::fs::read_to_string(pod_cg.join("memory.limit_in_bytes"))?;
    ensure!(
        pod_limit.trim() == (64u64 << 20).to_string(),
        "pod memory limit {pod_limit}"
    );
    let quota = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/cpu")
            .join(&node.config.cgroup_parent)
            .join("kubepods")
            .join(format!("pod{}", TestNode::uid(&pod)))
            .join(&id)
            .join("cpu.cfs_quota_us"),
    )?;
    ensure!(quota.trim() == "50000", "cpu quota {quota}");
    // Logs in CRI format.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node.log(&pod, "main", 0).contains("hello") {
        ensure!(Instant::now() < deadline, "log has hello");
        std::thread::sleep(Duration::from_millis(50));
    }
    let raw = std::fs::read_to_string(
        node.config
            .root
            .join("logs")
            .join(format!("default_web_{}", TestNode::uid(&pod)))
            .join("main/0.log"),
    )?;
    let first = raw.lines().next().unwrap_or_default();
    ensure!(
        first.ends_with(" stdout F hello") && first.contains('T') && first.contains('Z'),
        "CRI line: {first:?}"
    );

    // Graceful deletion: preStop, then SIGTERM (handled), and no SIGKILL needed.
    let mounts_before = node.mounts_below_root();
    ensure!(!mounts_before.is_empty(), "rootfs mounted");
    let started = Instant::now();
    node.delete("web", 20)?;
    node.wait_gone("web", Duration::from_secs(20))?;
    ensure!(
        started.elapsed() < Duration::from_secs(15),
        "ended by SIGTERM, well before the grace period"
    );
    let events = std::fs::read_to_string(&events)?;
    ensure!(events == "prestop\nterm\n", "preStop then TERM: {events:?}");
    ensure!(!alive(pid), "container process gone");
    ensure!(!alive(pause), "pause process gone");
    ensure!(!pod_cg.exists(), "pod cgroup removed");
    ensure!(
        node.mounts_below_root().is_empty(),
        "no mounts left: {:?}",
        node.mounts_below_root()
    );
    ensure!(
        !node
            .config
            .root
            .join("pods")
            .join(TestNode::uid(&pod))
            .exists(),
        "pod dir removed"
    );
    Ok(())
}

fn restart_policies_and_crash_loop_backoff() -> Result<()> {
    let node = TestNode::new()?;
    node.create_pod("crash", json!({
        "restartPolicy": "Always",
        "containers": [{"name": "c", "image": "busybox:test", "command": ["sh", "-c", "echo run; exit 1"]}],
    }))?;
    node.create_pod(
        "done",
        json!({
            "restartPolicy": "OnFailure",
            "containers": [{"name": "c", "image": "busybox:test", "command": ["true"]}],
        }),
    )?;
    node.create_pod("fail", json!({
        "restartPolicy": "Never",
        "containers": [{"name": "c", "image": "busybox:test", "command": ["sh", "-c", "exit 3"]}],
    }))?;
    // Restart times: the first at once, then 0.8 s, 1.6 s, 3.2 s (doubling).
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    let mut saw_backoff = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.last().is_none_or(|(n, _)| *n < 4) {
        ensure!(Instant::now() < deadline, "restarts: {seen:?}");
        let pod = node.get("crash")?.context("pod")?;
        let c = container(&pod, "c");
        let n = c["restartCount"].as_u64().unwrap_or(0);
        if seen.last().is_none_or(|(last, _)| *last != n) {
            seen.push((n, Instant::now()));
        }
        if c["state"]["waiting"]["reason"] == "CrashLoopBackOff" {
            saw_backoff = true;
            ensure!(
                c["lastState"]["terminated"]["exitCode"] == 1,
                "last state: {c}"
            );
            ensure!(
                c["lastState"]["terminated"]["reason"] == "Error",
                "reason Error: {c}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(saw_backoff, "CrashLoopBackOff reported");
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    // gaps[k] is the time between restart k and k+1 (k >= 1 has a backoff of 0.8 * 2^(k-1) s).
    let n = gaps.len();
    ensure!(n >= 3, "gaps {gaps:?}");
    ensure!(
        gaps[n - 1] >= Duration::from_millis(2800),
        "the last backoff doubled: {gaps:?}"
    );
    ensure!(
        gaps[n - 2] >= Duration::from_millis(1400),
        "backoff doubled: {gaps:?}"
    );
    ensure!(gaps[n - 1] > gaps[n - 2], "backoff grows: {gaps:?}");

    let done = node.wait("done", Duration::from_secs(20), "Succeeded", |p| {
        phase(p) == "Succeeded"
    })?;
    let c = container(&done, "c");
    ensure!(
        c["state"]["terminated"]["reason"] == "Completed" && c["restartCount"] == 0,
        "completed: {c}"
    );
    let fail = node.wait("fail", Duration::from_secs(20), "Failed", |p| {
        phase(p) == "Failed"
    })?;
    let c = container(&fail, "c");
    ensure!(
        c["state"]["terminated"]["exitCode"] == 3 && c["state"]["terminated"]["reason"] == "Error",
        "failed: {c}"
    );
    ensure!(c["restartCount"] == 0, "Never does not restart");
    for name in ["crash", "done", "fail"] {
        node.delete(name, 1)?;
    }
    for name in ["crash", "done", "fail"] {
        node.wait_gone(name, Duration::from_secs(20))?;
    }
    Ok(())
}

fn memory_breach_is_oom_killed() -> Result<()> {
    let node = TestNode::new()?;
    let pod = node.create_pod(
        "hog",
        json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "c", "image": "busybox:test",
                // tail buffers a line that never ends: it grows until the limit.
                "command": ["tail", "/dev/zero"],
                "resources": {"limits": {"memory": "16Mi"}},
            }],
        }),
    )?;
    let failed = node.wait("hog", Duration::from_secs(30), "Failed", |p| {
        phase(p) == "Failed"
    })?;
    let c = container(&failed, "c");
    ensure!(
        c["state"]["terminated"]["reason"] == "OOMKilled",
        "OOMKilled: {c}"
    );
    ensure!(c["state"]["terminated"]["exitCode"] == 137, "exit 137: {c}");
    let _ = pod;
    node.delete("hog", 0)?;
    node.wait_gone("hog", Duration::from_secs(20))?;
    Ok(())
}

fn pids_in(cgroup: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<i32>) {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    walk(cgroup, &mut out);
    out.sort_unstable();
    out.dedup();
    out
}

fn agent_restart_adopts_running_containers() -> Result<()> {
    let mut node = TestNode::new()?;
    let pod = node.create_pod(
        "keep",
        json!({
            "containers": [{"name": "c", "image": "busybox:test", "command": ["sleep", "3600"]}],
        }),
    )?;
    node.wait("keep", Duration::from_secs(30), "Running", |p| {
        phase(p) == "Running"
    })?;
    let pid = node.state(&pod, "c", 0).context("state")?.pid;
    let cgroup = node.memory_cgroup(&pod, Some("besteffort"));
    let before = pids_in(&cgroup);
    ensure!(before.len() == 2, "pause + container: {before:?}");
    node.stop_agent()?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(alive(pid), "the container outlives the agent");
    node.start_agent()?;
    // A few rounds of the new agent.
    std::thread::sleep(Duration::from_secs(2));
    let pod_now = node.wait("keep", Duration::from_secs(10), "Running", |p| {
        phase(p) == "Running"
    })?;
    let c = container(&pod_now, "c");
    ensure!(c["restartCount"] == 0, "not restarted: {c}");
    ensure!(node.state(&pod, "c", 1).is_none(), "no second attempt");
    ensure!(alive(pid), "same process");
    let after = pids_in(&cgroup);
    ensure!(after == before, "no duplicates: {before:?} -> {after:?}");
    // The adopted container still stops and is cleaned up.
    node.delete("keep", 1)?;
    node.wait_gone("keep", Duration::from_secs(20))?;
    ensure!(!alive(pid), "stopped");
    ensure!(!cgroup.exists(), "cgroup gone");
    Ok(())
}

fn env_and_volumes() -> Result<()> {
    let node = TestNode::new()?;
    let cms: Api<ConfigMap> = Api::namespaced(node.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(node.client.clone(), "default");
    node.rt.block_on(cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
        "metadata": {"name": "cfg"}, "data": {"color": "blue", "size": "L"}}))?,
    ))?;
    node.rt.block_on(secrets.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
        "metadata": {"name": "sec"}, "stringData": {"password": "hunter2"}}))?,
    ))?;
    let pod = node.create_pod("env", json!({
        "restartPolicy": "Never",
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 256}},
            {"name": "proj", "projected": {"sources": [
                {"configMap": {"name": "cfg", "items": [{"key": "color", "path": "c/color"}]}},
                {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels['app']"}}]}},
            ]}},
        ],
        "containers": [{
            "name": "c", "image": "busybox:test",
            "command": ["sh", "-c", "env | sort; cat /cfg/color; echo; cat /sec/password; echo; cat /proj/c/color; echo; cat /proj/labels; echo; df -k /mem | tail -1; echo x > /scratch/f && echo wrote; grep ' /mem ' /proc/mounts"],
            "env": [
                {"name": "PLAIN", "value": "v1"},
                {"name": "EXPANDED", "value": "$(PLAIN)-x"},
                {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
                {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "MEM_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "MISSING", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": true}}},
            ],
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "resources": {"limits": {"memory": "32Mi"}},
            "volumeMounts": [
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "mem", "mountPath": "/mem"},
                {"name": "cfg", "mountPath": "/cfg"},
                {"name": "sec", "mountPath": "/sec"},
                {"name": "proj", "mountPath": "/proj"},
            ],
        }],
    }))?;
    node.wait("env", Duration::from_secs(30), "Succeeded", |p| {
        phase(p) == "Succeeded"
    })?;
    let out = node.log(&pod, "c", 0);
    for want in [
        "PLAIN=v1\n",
        "EXPANDED=v1-x\n",
        "COLOR=blue\n",
        "PASS=hunter2\n",
        "POD_NAME=env\n",
        &format!("NODE={}\n", node.config.name),
        "MEM_LIMIT=32\n",
        "CFG_color=blue\n",
        "CFG_size=L\n",
        "blue\nhunter2\nblue\nt\n",
        "wrote\n",
        "tmpfs /mem tmpfs",
    ] {
        ensure!(out.contains(want), "output has {want:?}:\n{out}");
    }
    ensure!(!out.contains("MISSING="), "optional missing key skipped");
    // sizeLimit: 8 MiB = 8192 KiB.
    ensure!(
        out.lines().any(|l| l.contains(" 8192 ")),
        "tmpfs of 8 MiB:\n{out}"
    );
    let scratch = node
        .config
        .root
        .join("pods")
        .join(TestNode::uid(&pod))
        .join("volumes/scratch/f");
    ensure!(
        std::fs::read_to_string(&scratch)? == "x\n",
        "emptyDir on the host"
    );
    let mode = std::fs::metadata(
        node.config
            .root
            .join("pods")
            .join(TestNode::uid(&pod))
            .join("volumes/sec/password"),
    )?;
    use std::os::unix::fs::PermissionsExt;
    ensure!(
        mode.permissions().mode() & 0o777 == 0o400,
        "secret defaultMode"
    );
    node.delete("env", 0)?;
    node.wait_gone("env", Duration::from_secs(20))?;
    node.wait_unmounted()?;
    Ok(())
}

fn configmap_volume_updates_in_place() -> Result<()> {
    let node = TestNode::new()?;
    let cms: Api<ConfigMap> = Api::namespaced(node.client.clone(), "default");
    node.rt.block_on(cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
        "metadata": {"name": "live"}, "data": {"greeting": "hello"}}))?,
    ))?;
    let pod = node.create_pod("watcher", json!({
        "volumes": [{"name": "cfg", "configMap": {"name": "live"}}, {"name": "out", "emptyDir": {}}],
        "containers": [{
            "name": "c", "image": "busybox:test",
            "command": ["sh", "-c", "while true; do cat /cfg/greeting > /out/seen.tmp; mv /out/seen.tmp /out/seen; sleep 0.1; done"],
            "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "out", "mountPath": "/out"}],
        }],
    }))?;
    node.wait("watcher", Duration::from_secs(30), "Running", |p| {
        phase(p) == "Running"
    })?;
    let seen = node
        .config
        .root
        .join("pods")
        .join(TestNode::uid(&pod))
        .join("volumes/out/seen");
    let wait_for = |want: &str| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::fs::read_to_string(&seen).unwrap_or_default() != want {
            ensure!(
                Instant::now() < deadline,
                "container saw {:?}, wanted {want:?}",
                std::fs::read_to_string(&seen).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    };
    wait_for("hello")?;
    let pid = node.state(&pod, "c", 0).context("state")?.pid;
    node.rt.block_on(cms.patch(
        "live",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"greeting": "bonjour"}})),
    ))?;
    wait_for("bonjour")?;
    ensure!(alive(pid), "updated without a restart");
    node.delete("watcher", 0)?;
    node.wait_gone("watcher", Duration::from_secs(20))?;
    Ok(())
}

fn probes_gate_readiness_and_restart() -> Result<()> {
    let node = TestNode::new()?;
    // Readiness by exec: not ready until /tmp/ready exists (after about 1.5 s).
    node.create_pod("ready", json!({
        "containers": [{
            "name": "c", "image": "busybox:test",
            "command": ["sh", "-c", "sleep 1.5; touch /tmp/ready; sleep 3600"],
            "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
        }],
    }))?;
    let p = node.wait("ready", Duration::from_secs(30), "Running", |p| {
        phase(p) == "Running"
    })?;
    ensure!(
        condition(&p, "Ready") == "False",
        "not ready before the probe passes"
    );
    node.wait("ready", Duration::from_secs(15), "Ready", |p| {
        condition(p, "Ready") == "True"
    })?;
    // Liveness by exec fails -> restarts.
    node.create_pod("live", json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "c", "image": "busybox:test", "command": ["sleep", "3600"],
            "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2},
        }],
    }))?;
    node.wait(
        "live",
        Duration::from_secs(30),
        "restarted by liveness",
        |p| container(p, "c")["restartCount"].as_u64() >= Some(1),
    )?;
    // HTTP and TCP in the pod's network namespace: busybox httpd on 8080.
    node.create_pod("http", json!({
        "containers": [{
            "name": "c", "image": "busybox:test",
            "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && httpd -f -p 8080 -h /www"],
            "ports": [{"name": "web", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/index.html", "port": "web"}, "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        }],
    }))?;
    node.wait("http", Duration::from_secs(30), "Ready", |p| {
        condition(p, "Ready") == "True"
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let p = node.get("http")?.context("pod")?;
    ensure!(
        container(&p, "c")["restartCount"] == 0,
        "TCP liveness passes"
    );
    // Something on the host's 8080 must not be what the probe reaches: a failing HTTP probe.
    node.create_pod("http-bad", json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "c", "image": "busybox:test", "command": ["sleep", "3600"],
            "livenessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1},
        }],
    }))?;
    node.wait(
        "http-bad",
        Duration::from_secs(30),
        "restarted by HTTP liveness",
        |p| container(p, "c")["restartCount"].as_u64() >= Some(1),
    )?;
    for name in ["ready", "live", "http", "http-bad"] {
        node.delete(name, 0)?;
    }
    for name in ["ready", "live", "http", "http-bad"] {
        node.wait_gone(name, Duration::from_secs(20))?;
    }
    Ok(())
}

fn init_containers_run_first_in_order() -> Result<()> {
    let node = TestNode::new()?;
    let pod = node.create_pod("init", json!({
        "volumes": [{"name": "work", "emptyDir": {}}],
        "initContainers": [
            {"name": "one", "image": "busybox:test", "command": ["sh", "-c", "sleep 0.3; echo one >> /work/order"],
             "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
            {"name": "two", "image": "busybox:test", "command": ["sh", "-c", "echo two >> /work/order"],
             "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
        ],
        "containers": [{"name": "main", "image": "busybox:test",
            "command": ["sh", "-c", "echo main >> /work/order; sleep 3600"],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
    }))?;
    let p = node.wait("init", Duration::from_secs(30), "Running", |p| {
        phase(p) == "Running"
    })?;
    ensure!(condition(&p, "Initialized") == "True", "Initialized");
    let inits = status(&p)["initContainerStatuses"].clone();
    ensure!(
        inits[0]["state"]["terminated"]["reason"] == "Completed",
        "init statuses: {inits}"
    );
    let order = node
        .config
        .root
        .join("pods")
        .join(TestNode::uid(&pod))
        .join("volumes/work/order");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&order)
        .unwrap_or_default()
        .contains("main")
    {
        ensure!(Instant::now() < deadline, "main ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        std::fs::read_to_string(&order)? == "one\ntwo\nmain\n",
        "order"
    );
    node.delete("init", 0)?;
    node.wait_gone("init", Duration::from_secs(20))?;
    Ok(())
}

fn bad_pods_fail_clearly() -> Result<()> {
    let node = TestNode::new()?;
    node.create_pod(
        "noimage",
        json!({
            "containers": [{"name": "c", "image": "nothere:1", "imagePullPolicy": "Never"}],
        }),
    )?;
    let p = node.wait(
        "noimage",
        Duration::from_secs(20),
        "ErrImageNeverPull",
        |p| container(p, "c")["state"]["waiting"]["reason"] == "ErrImageNeverPull",
    )?;
    ensure!(phase(&p) == "Pending", "pending");
    node.create_pod("nocm", json!({
        "containers": [{"name": "c", "image": "busybox:test", "command": ["true"],
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]}],
    }))?;
    let p = node.wait(
        "nocm",
        Duration::from_secs(20),
        "CreateContainerConfigError",
        |p| container(p, "c")["state"]["waiting"]["reason"] == "CreateContainerConfigError",
    )?;
    let msg = container(&p, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(msg.contains("absent"), "message names the configmap: {msg}");
    node.create_pod(
        "nocmd",
        json!({
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox:test", "command": ["/does/not/exist"]}],
        }),
    )?;
    let p = node.wait("nocmd", Duration::from_secs(20), "Failed", |p| {
        phase(p) == "Failed"
    })?;
    let c = container(&p, "c");
    ensure!(
        c["state"]["terminated"]["reason"] == "StartError"
            || c["state"]["terminated"]["exitCode"] == 127,
        "start error: {c}"
    );
    node.create_pod(
        "escape",
        json!({
            "restartPolicy": "Never",
            "volumes": [{"name": "v", "emptyDir": {}}],
            "containers": [{"name": "c", "image": "busybox:test", "command": ["true"],
                "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "../../../etc"}]}],
        }),
    )?;
    let p = node.wait("escape", Duration::from_secs(20), "subPath refused", |p| {
        container(p, "c")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    })?;
    let _ = p;
    for name in ["noimage", "nocm", "nocmd", "escape"] {
        node.delete(name, 0)?;
    }
    for name in ["noimage", "nocm", "nocmd", "escape"] {
        node.wait_gone(name, Duration::from_secs(20))?;
    }
    node.wait_unmounted()?;
    Ok(())
}

/// A raw HTTP/1.0 GET (close-delimited body); reads until `until` appears or the body ends.
fn http_get(port: u16, path: &str, until: Option<&str>) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(u) = until
            && String::from_utf8_lossy(&data).contains(u)
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&data).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP response")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("status")?;
    Ok((code, body.to_owned()))
}

fn ws_exec(port: u16, query: &str, stdin: Option<&[u8]>) -> Result<(Vec<u8>, Vec<u8>, Value)> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut req =
            format!("ws://127.0.0.1:{port}/exec/default/talk/c?{query}").into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse()?);
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await?;
        ensure!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.as_bytes())
                == Some(b"v5.channel.k8s.io"),
            "v5 negotiated"
        );
        if let Some(data) = stdin {
            let mut frame = vec![0u8];
            frame.extend_from_slice(data);
            ws.send(Message::Binary(frame.into())).await?;
            ws.send(Message::Binary(vec![255u8, 0].into())).await?;
        }
        let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Value::Null);
        while let Some(msg) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            match msg? {
                Message::Binary(b) if !b.is_empty() => match b[0] {
                    1 => out.extend_from_slice(&b[1..]),
                    2 => err.extend_from_slice(&b[1..]),
                    3 => status = serde_json::from_slice(&b[1..])?,
                    _ => {}
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok((out, err, status))
    })
}

fn agent_api_logs_exec_stats_metrics() -> Result<()> {
    let node = TestNode::new()?;
    node.create_pod("talk", json!({
        "containers": [{"name": "c", "image": "busybox:test",
            "command": ["sh", "-c", "echo first; echo oops >&2; i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.2; done"],
            "resources": {"limits": {"memory": "32Mi"}}}],
    }))?;
    node.wait("talk", Duration::from_secs(30), "Running", |p| {
        phase(p) == "Running"
    })?;
    let nodes: Api<Node> = Api::all(node.client.clone());
    let n = serde_json::to_value(
        node.rt
            .block_on(nodes.get(&node.config.name))?
            .status
            .unwrap_or_default(),
    )?;
    let port = n["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .context("port")? as u16;
    ensure!(
        port != 0 && port != 10250,
        "a free port was chosen and reported: {port}"
    );
    // Logs: all, tail, timestamps, follow (once a few ticks are out).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !http_get(port, "/containerLogs/default/talk/c", None)?
        .1
        .contains("tick3\n")
    {
        ensure!(Instant::now() < deadline, "ticks in the log");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = http_get(port, "/containerLogs/default/talk/c", None)?;
    ensure!(
        code == 200
            && body.contains("first\n")
            && body.contains("oops\n")
            && body.contains("tick1\n"),
        "{code} {body:?}"
    );
    let (_, tail) = http_get(port, "/containerLogs/default/talk/c?tailLines=2", None)?;
    ensure!(
        tail.lines().count() == 2 && tail.lines().all(|l| l.starts_with("tick")),
        "tail: {tail:?}"
    );
    let (_, stamped) = http_get(
        port,
        "/containerLogs/default/talk/c?timestamps=true&tailLines=1",
        None,
    )?;
    ensure!(
        stamped.starts_with("20") && stamped.contains("Z tick"),
        "timestamps: {stamped:?}"
    );
    let (_, followed) = http_get(
        port,
        "/containerLogs/default/talk/c?follow=true&tailLines=0",
        Some("tick12"),
    )?;
    ensure!(
        followed.contains("tick12") && !followed.contains("first"),
        "follow: {followed:?}"
    );
    let (code, _) = http_get(port, "/containerLogs/default/talk/c?previous=true", None)?;
    ensure!(code == 400, "no previous container: {code}");
    let (code, _) = http_get(port, "/containerLogs/default/nope/c", None)?;
    ensure!(code == 404, "unknown pod: {code}");
    // Stats and metrics.
    let (_, summary) = http_get(port, "/stats/summary", None)?;
    let summary: Value = serde_json::from_str(&summary)?;
    ensure!(
        summary["node"]["nodeName"] == json!(node.config.name),
        "summary node"
    );
    let pod = &summary["pods"][0];
    ensure!(pod["podRef"]["name"] == "talk", "summary pod: {summary}");
    ensure!(
        pod["memory"]["workingSetBytes"].as_u64() > Some(0),
        "pod memory: {pod}"
    );
    ensure!(
        pod["containers"][0]["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
        "container cpu: {pod}"
    );
    let (_, metrics) = http_get(port, "/metrics", None)?;
    ensure!(
        metrics.contains(
            "container_memory_working_set_bytes{container=\"c\",namespace=\"default\",pod=\"talk\"}"
        ),
        "metrics: {metrics}"
    );
    ensure!(metrics.contains("kubelet_running_pods 1"), "running pods");
    // Exec over WebSocket (v5.channel.k8s.io): output, exit code, stdin.
    let (out, err, status) = ws_exec(
        port,
        "command=sh&command=-c&command=echo%20hi;echo%20bad%20%3E%262;exit%203&output=1&error=1",
        None,
    )?;
    ensure!(
        out == b"hi\n" && err == b"bad\n",
        "exec output {:?} {:?}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    ensure!(
        status["reason"] == "NonZeroExitCode" && status["details"]["causes"][0]["message"] == "3",
        "status {status}"
    );
    let (out, _, status) = ws_exec(port, "command=cat&input=1&output=1", Some(b"from stdin"))?;
    ensure!(
        out == b"from stdin" && status["status"] == "Success",
        "stdin: {:?} {status}",
        String::from_utf8_lossy(&out)
    );
    let (out, _, _) = ws_exec(port, "command=hostname&output=1", None)?;
    ensure!(
        String::from_utf8_lossy(&out).trim() == "talk",
        "the pod's UTS namespace: {:?}",
        String::from_utf8_lossy(&out)
    );
    // Port-forward over WebSocket into the pod's network namespace.
    node.create_pod("web", json!({
        "containers": [{"name": "c", "image": "busybox:test",
            "command": ["sh", "-c", "mkdir -p /www && echo served > /www/index.html && httpd -f -p 8080 -h /www"],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}],
    }))?;
    node.wait("web", Duration::from_secs(30), "Ready", |p| {
        condition(p, "Ready") == "True"
    })?;
    let page = port_forward(port, "web", 8080, b"GET /index.html HTTP/1.0\r\n\r\n")?;
    ensure!(
        page.starts_with("HTTP/1.") && page.contains("served"),
        "forwarded: {page:?}"
    );
    for name in ["talk", "web"] {
        node.delete(name, 0)?;
    }
    for name in ["talk", "web"] {
        node.wait_gone(name, Duration::from_secs(20))?;
    }
    Ok(())
}

fn port_forward(port: u16, pod: &str, target: u16, request: &[u8]) -> Result<String> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut req = format!("ws://127.0.0.1:{port}/portForward/default/{pod}?port={target}")
            .into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
        let mut headers = 0;
        let mut body = Vec::new();
        let mut sent = false;
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            match msg? {
                Message::Binary(b) if !b.is_empty() => {
                    if headers < 2 {
                        ensure!(
                            b.len() == 3 && u16::from_le_bytes([b[1], b[2]]) == target,
                            "port header {b:?}"
                        );
                        headers += 1;
                        if headers == 2 && !sent {
                            let mut frame = vec![0u8];
                            frame.extend_from_slice(request);
                            ws.send(Message::Binary(frame.into())).await?;
                            sent = true;
                        }
                        continue;
                    }
                    ensure!(
                        b[0] == 0,
                        "error channel: {}",
                        String::from_utf8_lossy(&b[1..])
                    );
                    body.extend_from_slice(&b[1..]);
                    if String::from_utf8_lossy(&body).contains("served") {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    })
}

fn pressure_evicts_besteffort_first_and_collects_images() -> Result<()> {
    let mut node = TestNode::new()?;
    let store = berth_image::ImageStore::open(node.config.root.join("engine/image"))?;
    store.tag_image(
        &Reference::parse("busybox:test")?,
        &Reference::parse("extra:1")?,
    )?;
    node.create_pod(
        "guaranteed",
        json!({
            "containers": [{"name": "c", "image": "busybox:test", "command": ["sleep", "3600"],
                "resources": {"limits": {"memory": "32Mi", "cpu": "100m"}}}],
        }),
    )?;
    node.create_pod(
        "besteffort",
        json!({
            "containers": [{"name": "c", "image": "busybox:test", "command": ["sleep", "3600"]}],
        }),
    )?;
    for name in ["guaranteed", "besteffort"] {
        node.wait(name, Duration::from_secs(30), "Running", |p| {
            phase(p) == "Running"
        })?;
    }
    // The same node restarted always under memory pressure, with image GC always above its
    // marks (it adopts both pods).
    node.stop_agent()?;
    node.config.eviction_memory_available = u64::MAX / 2;
    node.config.image_gc_high_percent = 0;
    node.config.image_gc_low_percent = 0;
    node.config.housekeeping_interval = Duration::from_secs(3);
    node.start_agent()?;
    let evicted = node.wait("besteffort", Duration::from_secs(30), "Evicted", |p| {
        status(p)["reason"] == "Evicted"
    })?;
    ensure!(phase(&evicted) == "Failed", "evicted pods fail");
    ensure!(
        status(&evicted)["message"]
            .as_str()
            .unwrap_or_default()
            .contains("memory"),
        "message names memory"
    );
    let g = node.get("guaranteed")?.context("pod")?;
    ensure!(
        phase(&g) == "Running",
        "the Guaranteed pod goes last: {}",
        phase(&g)
    );
    let uid = TestNode::uid(&evicted);
    let sandbox: Value = serde_json::from_slice(
        &std::fs::read(
            node.config
                .root
                .join("pods")
                .join(&uid)
                .join("sandbox.json"),
        )
        .unwrap_or_default(),
    )
    .unwrap_or(Value::Null);
    if let Some(pid) = sandbox["pid"].as_i64() {
        ensure!(!alive(pid as i32), "the evicted pod's sandbox is gone");
    }
    node.wait("guaranteed", Duration::from_secs(30), "Evicted", |p| {
        status(p)["reason"] == "Evicted"
    })?;
    // The node reports the pressure.
    let nodes: Api<Node> = Api::all(node.client.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = serde_json::to_value(
            node.rt
                .block_on(nodes.get(&node.config.name))?
                .status
                .unwrap_or_default(),
        )?;
        let pressure = n["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "MemoryPressure" && c["status"] == "True");
        if pressure {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "MemoryPressure condition: {}",
            n["conditions"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Image GC removed the unused name and kept the one containers use.
    let names: Vec<String> = store.list()?.into_iter().map(|i| i.name).collect();
    ensure!(
        !names.iter().any(|n| n.contains("extra")),
        "unused image collected: {names:?}"
    );
    ensure!(
        names.iter().any(|n| n.contains("busybox:test")),
        "used image kept: {names:?}"
    );
    for name in ["guaranteed", "besteffort"] {
        node.delete(name, 0)?;
    }
    for name in ["guaranteed", "besteffort"] {
        node.wait_gone(name, Duration::from_secs(20))?;
    }
    Ok(())
}
