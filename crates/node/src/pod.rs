//! One pod on this node: a worker task that converges the host to the pod's spec and reports
//! its status. Everything it knows about containers is read back from disk each round (the
//! shims' `state.json`), so a worker started after an agent restart adopts running containers
//! instead of starting them again; only backoff timers and condition times live in memory.
//!
//! A round: the sandbox (pause process in the pod cgroup, restarted with every container if it
//! died), the volumes (configMap/secret/projected rewritten in place when their sources
//! change), the init containers one at a time in order, then every container; exits handled
//! by `restartPolicy` with CrashLoopBackOff (first restart at once, then the initial delay,
//! doubling to the maximum; reset after a long enough run); probes; then the status. On
//! deletion: preStop hooks, SIGTERM, the grace period, SIGKILL, everything removed from the
//! host, and the pod object deleted with grace 0.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::env::Resolver;
use crate::host::{Host, PodRecord};
use crate::probe::{ProbeKind, Prober};
use crate::shim::ShimState;

/// Facts about the node a pod worker needs.
#[derive(Debug, Clone)]
pub(crate) struct NodeFacts {
    /// The node's address (`status.hostIP`).
    pub(crate) host_ip: String,
    /// Allocatable CPU in millicores.
    pub(crate) cpu_millis: u64,
    /// Allocatable memory in bytes.
    pub(crate) memory: u64,
}

/// What the last round saw of one container.
#[derive(Debug, Default)]
struct Track {
    /// The delay before the next restart after the next exit.
    backoff: Option<Duration>,
    /// No start before this.
    next_start: Option<Instant>,
    /// The attempt whose exit was handled.
    handled_exit: Option<u32>,
    /// Why the last start failed before a process existed (reason, message).
    waiting: Option<(String, String)>,
}

/// One attempt of a container as seen on disk.
#[derive(Debug, Clone)]
struct Seen {
    attempt: u32,
    state: ShimState,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn parse_time(t: &Option<String>) -> Option<chrono::DateTime<chrono::Utc>> {
    t.as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn secs(t: &Option<String>) -> Option<String> {
    parse_time(t).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The worker of one pod.
pub(crate) struct Worker {
    host: Arc<Host>,
    pods: Api<Pod>,
    record: PodRecord,
    facts: Arc<NodeFacts>,
    resolver: Resolver,
    tracks: HashMap<String, Track>,
    conditions: BTreeMap<&'static str, (bool, String)>,
    last_status: Option<Value>,
    volumes_ready: bool,
    volumes_checked: Option<Instant>,
    start_time: String,
    terminal: Option<&'static str>,
    failure: Option<(String, String)>,
    prober: Prober,
}

impl Worker {
    pub(crate) fn new(
        host: Arc<Host>,
        client: kube::Client,
        record: PodRecord,
        facts: Arc<NodeFacts>,
    ) -> Worker {
        Worker {
            pods: Api::namespaced(client.clone(), &record.namespace),
            resolver: Resolver::new(client.clone(), &record.namespace),
            host,
            record,
            facts,
            tracks: HashMap::new(),
            conditions: BTreeMap::new(),
            last_status: None,
            volumes_ready: false,
            volumes_checked: None,
            start_time: now_rfc3339(),
            terminal: None,
            failure: None,
            prober: Prober::default(),
        }
    }

    /// Runs until the pod is gone from the node. `rx` carries the latest object (`None` once
    /// it was deleted from the API).
    pub(crate) async fn run(mut self, mut rx: watch::Receiver<Option<Arc<Pod>>>) {
        let period = self.host.config.sync_period;
        let mut last_pod: Option<Arc<Pod>> = None;
        if let Some(p) = rx.borrow().clone() {
            if let Some(t) = p.status.as_ref().and_then(|s| s.start_time.as_ref()) {
                self.start_time = t.0.to_string();
            }
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            self.terminal = match phase {
                Some("Succeeded") => Some("Succeeded"),
                Some("Failed") => Some("Failed"),
                _ => None,
            };
        }
        loop {
            let pod = rx.borrow_and_update().clone();
            match pod {
                None => {
                    self.terminate(last_pod.as_deref(), false).await;
                    return;
                }
                Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                    self.terminate(Some(&pod), true).await;
                    return;
                }
                Some(pod) => {
                    self.sync(&pod).await;
                    last_pod = Some(pod);
                }
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The agent is shutting down: containers keep running.
                        return;
                    }
                }
                () = tokio::time::sleep(period) => {}
            }
        }
    }

    fn uid(&self) -> &str {
        &self.record.uid
    }

    fn seen(&self, name: &str) -> (Option<Seen>, Option<Seen>) {
        let attempts = self.host.attempts(self.uid(), name);
        let load = |attempt: u32| -> Seen {
            let dir = self.host.container_dir(self.uid(), name, attempt);
            let state = ShimState::load(&dir).unwrap_or_else(|| {
                // A start the agent did not finish (it died in between): never ran.
                ShimState {
                    exited: true,
                    exit_code: Some(128),
                    error: Some("the container was never started".into()),
                    ..Default::default()
                }
            });
            Seen { attempt, state }
        };
        let current = attempts.last().map(|a| load(*a));
        let previous = attempts.len().checked_sub(2).map(|i| load(attempts[i]));
        (current, previous)
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Host) -> T + Send + 'static) -> T {
        let host = self.host.clone();
        tokio::task::spawn_blocking(move || f(&host))
            .await
            .expect("blocking task panicked")
    }

    async fn sync(&mut self, pod: &Pod) {
        let Some(spec) = pod.spec.clone() else { return };
        if self.terminal.is_some() {
            // Done: nothing runs any more; the sandbox goes.
            let uid = self.uid().to_owned();
            self.blocking(move |h| h.stop_sandbox(&uid)).await;
            self.report(pod).await;
            return;
        }
        if let Some(message) = self.host.eviction(self.uid()) {
            self.evicted(pod, message).await;
            return;
        }
        let qos = match crate::resources::qos_class(pod) {
            Ok(q) => q,
            Err(e) => {
                self.failure = Some(("InvalidResources".into(), e));
                self.terminal = Some("Failed");
                self.report(pod).await;
                return;
            }
        };
        let cgroup = self.host.pod_cgroup(self.uid(), qos);
        if let Err(e) = self.ensure_sandbox(pod, &cgroup).await {
            self.failure = Some(("SandboxError".into(), e));
            self.report(pod).await;
            return;
        }
        if let Err(e) = self.ensure_volumes(pod).await {
            self.failure = Some(("VolumeError".into(), e));
            self.report(pod).await;
            return;
        }
        self.failure = None;
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut initialized = true;
        for c in spec.init_containers.iter().flatten() {
            let (current, _) = self.seen(&c.name);
            match current {
                None => {
                    self.try_start(pod, c, 0, &cgroup).await;
                    initialized = false;
                    break;
                }
                Some(s) if !s.state.exited => {
                    initialized = false;
                    break;
                }
                Some(s) => {
                    self.handle_exit(&c.name, &s).await;
                    if succeeded(&s.state) {
                        continue;
                    }
                    initialized = false;
                    if policy == "Never" {
                        self.terminal = Some("Failed");
                    } else {
                        self.try_start(pod, c, s.attempt + 1, &cgroup).await;
                    }
                    break;
                }
            }
        }
        if initialized {
            for c in &spec.containers {
                let (current, _) = self.seen(&c.name);
                match current {
                    None => self.try_start(pod, c, 0, &cgroup).await,
                    Some(s) if !s.state.exited => self.probe(pod, c, &s).await,
                    Some(s) => {
                        self.handle_exit(&c.name, &s).await;
                        if restarts(&policy, &s.state) {
                            self.try_start(pod, c, s.attempt + 1, &cgroup).await;
                        }
                    }
                }
            }
            // All done for good?
            let all_done = spec.containers.iter().all(|c| {
                let (current, _) = self.seen(&c.name);
                current.is_some_and(|s| s.state.exited && !restarts(&policy, &s.state))
            });
            if all_done {
                let failed = spec.containers.iter().any(|c| {
                    let (current, _) = self.seen(&c.name);
                    current.is_some_and(|s| !succeeded(&s.state))
                });
                self.terminal = Some(if failed { "Failed" } else { "Succeeded" });
            }
        }
        if self.terminal.is_some() {
            let uid = self.uid().to_owned();
            self.blocking(move |h| h.stop_sandbox(&uid)).await;
        }
        self.report(pod).await;
    }

    /// Kills every container at once and ends the pod `Failed`, reason `Evicted`.
    async fn evicted(&mut self, pod: &Pod, message: String) {
        let uid = self.uid().to_owned();
        let names: Vec<String> = all_containers(pod).map(|c| c.name.clone()).collect();
        self.blocking(move |h| {
            for name in &names {
                if let Some(a) = h.attempts(&uid, name).last() {
                    let dir = h.container_dir(&uid, name, *a);
                    let id = Host::container_id(&uid, name, *a);
                    h.stop_container(&dir, &id, Duration::ZERO);
                    h.release_rootfs(&dir, &id);
                }
            }
            h.stop_sandbox(&uid);
        })
        .await;
        self.terminal = Some("Failed");
        self.failure = Some(("Evicted".into(), message));
        self.report(pod).await;
    }

    async fn ensure_sandbox(&mut self, pod: &Pod, cgroup: &std::path::Path) -> Result<(), String> {
        let uid = self.uid().to_owned();
        if self.host.sandbox(&uid).is_some_and(|s| s.alive()) {
            return Ok(());
        }
        let had = self.host.sandbox(&uid).is_some();
        let record = self.record.clone();
        let hostname = pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| record.name.clone());
        let resources = crate::resources::pod_resources(pod)?;
        let cgroup = cgroup.to_owned();
        let names: Vec<String> = all_containers(pod).map(|c| c.name.clone()).collect();
        self.blocking(move |h| {
            if had {
                // The sandbox died: its containers go with it and start again.
                tracing::warn!(pod = %record.name, "pod sandbox died; restarting its containers");
                for name in &names {
                    if let Some(a) = h.attempts(&uid, name).last() {
                        let dir = h.container_dir(&uid, name, *a);
                        h.stop_container(&dir, &Host::container_id(&uid, name, *a), Duration::ZERO);
                    }
                }
            }
            h.record_pod(&record).map_err(|e| e.to_string())?;
            h.start_sandbox(&uid, &hostname, &cgroup, &resources)
                .map(drop)
                .map_err(|e| crate::shim::error_chain(&e))
        })
        .await
    }

    async fn ensure_volumes(&mut self, pod: &Pod) -> Result<(), String> {
        let refresh = self
            .volumes_checked
            .is_none_or(|t| t.elapsed() >= self.host.config.sync_period * 10);
        if self.volumes_ready && !refresh {
            return Ok(());
        }
        let pod_dir = self.host.pod_dir(self.uid());
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        for v in &volumes {
            if !self.volumes_ready {
                let (dir, v2) = (pod_dir.clone(), v.clone());
                self.blocking(move |_| crate::volumes::prepare(&dir, &v2))
                    .await?;
            }
            if let Some(files) = self
                .resolver
                .volume_files(pod, v, &self.facts.host_ip)
                .await?
            {
                let dir = crate::volumes::volume_dir(&pod_dir, &v.name);
                self.blocking(move |_| crate::volumes::write_atomic(&dir, &files))
                    .await?;
            }
        }
        self.volumes_ready = true;
        self.volumes_checked = Some(Instant::now());
        Ok(())
    }

    /// Handles an attempt's exit once: releases its rootfs, sets the next backoff.
    async fn handle_exit(&mut self, name: &str, seen: &Seen) {
        let track = self.tracks.entry(name.to_owned()).or_default();
        if track.handled_exit == Some(seen.attempt) {
            return;
        }
        track.handled_exit = Some(seen.attempt);
        let config = &self.host.config;
        let ran = match (
            parse_time(&seen.state.started_at),
            parse_time(&seen.state.finished_at),
        ) {
            (Some(s), Some(f)) => (f - s).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let delay = match track.backoff {
            Some(_) if ran >= config.backoff_reset => Duration::ZERO,
            Some(d) => d,
            // The first restart after a fresh start (or an agent restart) is at once.
            None => Duration::ZERO,
        };
        track.next_start = Some(Instant::now() + delay);
        track.backoff = Some(if delay.is_zero() {
            config.backoff_initial
        } else {
            (delay * 2).min(config.backoff_max)
        });
        let (uid, name, attempt) = (self.uid().to_owned(), name.to_owned(), seen.attempt);
        self.prober.forget(&name);
        self.blocking(move |h| {
            let dir = h.container_dir(&uid, &name, attempt);
            h.release_rootfs(&dir, &Host::container_id(&uid, &name, attempt));
        })
        .await;
    }

    async fn try_start(
        &mut self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
        cgroup: &std::path::Path,
    ) {
        let track = self.tracks.entry(c.name.clone()).or_default();
        if track.next_start.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if let Err((reason, message)) = self.start(pod, c, attempt, cgroup).await {
            tracing::warn!(pod = %self.record.name, container = %c.name, %reason, %message, "start failed");
            let config = &self.host.config;
            let track = self.tracks.entry(c.name.clone()).or_default();
            let delay = track.backoff.unwrap_or(config.backoff_initial);
            track.next_start = Some(Instant::now() + delay);
            track.backoff = Some((delay * 2).min(config.backoff_max));
            track.waiting = Some((reason, message));
        } else if let Some(t) = self.tracks.get_mut(&c.name) {
            t.waiting = None;
        }
    }

    async fn start(
        &mut self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
        cgroup: &std::path::Path,
    ) -> Result<(), (String, String)> {
        crate::images::ensure(&self.host, c)
            .await
            .map_err(|e| (e.reason.to_owned(), e.message))?;
        let env = self
            .resolver
            .env(
                pod,
                c,
                &self.facts.host_ip,
                self.facts.cpu_millis,
                self.facts.memory,
            )
            .await
            .map_err(|e| ("CreateContainerConfigError".to_owned(), e))?;
        let pod_dir = self.host.pod_dir(self.uid());
        let binds = crate::volumes::binds(pod, c, &pod_dir)
            .map_err(|e| ("CreateContainerConfigError".to_owned(), e))?;
        let resources = crate::resources::container_resources(c)
            .map_err(|e| ("CreateContainerConfigError".to_owned(), e))?;
        let uid = self.uid().to_owned();
        let record = self.record.clone();
        let c2 = c.clone();
        let cgroup = cgroup.join(Host::container_id(&uid, &c.name, attempt));
        self.blocking(move |h| -> Result<(), (String, String)> {
            let id = Host::container_id(&uid, &c2.name, attempt);
            let dir = h.container_dir(&uid, &c2.name, attempt);
            let err = |reason: &str| {
                let reason = reason.to_owned();
                move |e: String| (reason, e)
            };
            std::fs::create_dir_all(&dir)
                .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
            // For image GC: which image this attempt uses.
            let _ = std::fs::write(dir.join("image"), c2.image.as_deref().unwrap_or_default());
            let sandbox = h.sandbox(&uid).ok_or_else(|| {
                (
                    "CreateContainerError".to_owned(),
                    "no pod sandbox".to_owned(),
                )
            })?;
            let made = (|| -> Result<(), (String, String)> {
                let image = h
                    .image(c2.image.as_deref().unwrap_or_default())
                    .map_err(|e| crate::shim::error_chain(&e))
                    .map_err(err("CreateContainerError"))?;
                let rootfs = h
                    .prepare_rootfs(&image, &dir, &id)
                    .map_err(|e| crate::shim::error_chain(&e))
                    .map_err(err("CreateContainerError"))?;
                let image_config = image.config.config().clone().unwrap_or_default();
                let spec = crate::spec::container_spec(
                    &c2,
                    crate::spec::SpecInputs {
                        rootfs: &rootfs,
                        image: &image_config,
                        env: &env,
                        sandbox_pid: sandbox.pid,
                        cgroup: &PathBuf::from("/").join(&cgroup),
                        resources,
                        binds: &binds,
                    },
                )
                .map_err(err("CreateContainerError"))?;
                spec.save(dir.join("config.json"))
                    .map_err(|e| e.to_string())
                    .map_err(err("CreateContainerError"))?;
                let log = h.log_dir(&record, &c2.name).join(format!("{attempt}.log"));
                h.start_shim(&dir, &id, &log)
                    .map_err(|e| crate::shim::error_chain(&e))
                    .map_err(err("RunContainerError"))
            })();
            if let Err((_, message)) = &made {
                if ShimState::load(&dir).is_none() {
                    let state = ShimState {
                        exited: true,
                        exit_code: Some(128),
                        error: Some(message.clone()),
                        finished_at: Some(now_rfc3339()),
                        ..Default::default()
                    };
                    let _ = state.save(&dir);
                }
                h.release_rootfs(&dir, &id);
            }
            // Keep this attempt and the one before (logs --previous); older ones go.
            for old in h.attempts(&uid, &c2.name) {
                if old + 1 < attempt {
                    let _ = std::fs::remove_dir_all(h.container_dir(&uid, &c2.name, old));
                    let _ = std::fs::remove_file(
                        h.log_dir(&record, &c2.name).join(format!("{old}.log")),
                    );
                }
            }
            made
        })
        .await?;
        // postStart: a failure kills the container (the kubelet's FailedPostStartHook).
        if let Some(handler) = c.lifecycle.as_ref().and_then(|l| l.post_start.clone()) {
            let id = Host::container_id(self.uid(), &c.name, attempt);
            let result = self
                .prober
                .run_handler(&self.host, &id, &handler, pod, Duration::from_secs(30))
                .await;
            if let Err(message) = result {
                tracing::warn!(container = %c.name, %message, "postStart hook failed");
                let dir = self.host.container_dir(self.uid(), &c.name, attempt);
                self.blocking(move |h| h.stop_container(&dir, &id, Duration::ZERO))
                    .await;
            }
        }
        Ok(())
    }

    async fn probe(&mut self, pod: &Pod, c: &Container, seen: &Seen) {
        let id = Host::container_id(self.uid(), &c.name, seen.attempt);
        let started = parse_time(&seen.state.started_at);
        let verdict = self
            .prober
            .tick(&self.host, &id, c, pod, seen.attempt, started)
            .await;
        if verdict == Some(ProbeKind::Liveness) || verdict == Some(ProbeKind::Startup) {
            tracing::info!(pod = %self.record.name, container = %c.name, "probe failed; restarting the container");
            let grace = termination_grace(pod, None);
            let dir = self.host.container_dir(self.uid(), &c.name, seen.attempt);
            self.blocking(move |h| h.stop_container(&dir, &id, grace))
                .await;
        }
    }

    async fn report(&mut self, pod: &Pod) {
        let status = self.status(pod);
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let name = self.record.name.clone();
        match self
            .pods
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(e) => tracing::debug!(pod = %name, error = %e, "status update failed"),
        }
    }

    fn condition(&mut self, kind: &'static str, value: bool) -> Value {
        let entry = self
            .conditions
            .entry(kind)
            .or_insert_with(|| (value, now_rfc3339()));
        if entry.0 != value {
            *entry = (value, now_rfc3339());
        }
        json!({
            "type": kind,
            "status": if value { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": entry.1,
        })
    }

    fn container_status(&self, c: &Container, policy: &str, init_pending: bool) -> (Value, Bucket) {
        let (current, previous) = self.seen(&c.name);
        let track = self.tracks.get(&c.name);
        let image_id = self
            .host
            .image(c.image.as_deref().unwrap_or_default())
            .ok()
            .and_then(|i| i.digest().ok())
            .map(|d| d.to_string())
            .unwrap_or_default();
        let terminated = |s: &Seen| {
            json!({"terminated": {
                "exitCode": s.state.exit_code.unwrap_or(0),
                "signal": s.state.signal,
                "reason": reason(&s.state),
                "message": s.state.error,
                "startedAt": secs(&s.state.started_at),
                "finishedAt": secs(&s.state.finished_at),
                "containerID": format!("berth://{}", Host::container_id(self.uid(), &c.name, s.attempt)),
            }})
        };
        let waiting = |reason: &str, message: Option<String>| json!({"waiting": {"reason": reason, "message": message}});
        let restart_count = current.as_ref().map_or(0, |s| s.attempt);
        let (state, last, bucket, container_id) = match &current {
            None => {
                let (reason, message) = match track.and_then(|t| t.waiting.clone()) {
                    Some((r, m)) => (r, Some(m)),
                    None if init_pending => ("PodInitializing".into(), None),
                    None => ("ContainerCreating".into(), None),
                };
                (waiting(&reason, message), json!({}), Bucket::Waiting, None)
            }
            Some(s) if !s.state.exited => (
                json!({"running": {"startedAt": secs(&s.state.started_at)}}),
                previous.as_ref().map_or(json!({}), terminated),
                Bucket::Running,
                Some(s.attempt),
            ),
            Some(s) if self.terminal.is_none() && restarts(policy, &s.state) => {
                let (reason, message) = match track.and_then(|t| t.waiting.clone()) {
                    Some((r, m)) => (r, m),
                    None => (
                        "CrashLoopBackOff".to_owned(),
                        format!(
                            "back-off restarting failed container {} in pod {}_{}({})",
                            c.name, self.record.name, self.record.namespace, self.record.uid
                        ),
                    ),
                };
                (
                    waiting(&reason, Some(message)),
                    terminated(s),
                    Bucket::Restarting,
                    Some(s.attempt),
                )
            }
            Some(s) => (
                terminated(s),
                previous.as_ref().map_or(json!({}), terminated),
                if succeeded(&s.state) {
                    Bucket::Succeeded
                } else {
                    Bucket::Failed
                },
                Some(s.attempt),
            ),
        };
        let running = bucket == Bucket::Running;
        let ready = running && self.prober.ready(&c.name, c);
        let started = running && self.prober.started(&c.name, c);
        let mut status = json!({
            "name": c.name,
            "image": c.image,
            "imageID": image_id,
            "restartCount": restart_count,
            "ready": ready,
            "started": started,
            "state": state,
            "lastState": last,
        });
        if let Some(a) = container_id {
            status["containerID"] = json!(format!(
                "berth://{}",
                Host::container_id(self.uid(), &c.name, a)
            ));
        }
        (status, bucket)
    }

    fn status(&mut self, pod: &Pod) -> Value {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut init_statuses = Vec::new();
        let mut initialized = true;
        // Init containers are restarted only when they fail (unless the pod never restarts).
        let init_policy = if policy == "Never" {
            "Never"
        } else {
            "OnFailure"
        };
        for c in spec.init_containers.iter().flatten() {
            let (s, bucket) = self.container_status(c, init_policy, false);
            if bucket != Bucket::Succeeded {
                initialized = false;
            }
            init_statuses.push(s);
        }
        let mut statuses = Vec::new();
        let mut buckets = Vec::new();
        let mut all_ready = true;
        for c in &spec.containers {
            let (s, bucket) = self.container_status(c, &policy, !initialized);
            all_ready &= s["ready"] == json!(true);
            statuses.push(s);
            buckets.push(bucket);
        }
        let phase = match self.terminal {
            Some(p) => p,
            None if !initialized => "Pending",
            None if buckets.contains(&Bucket::Waiting) => "Pending",
            None => "Running",
        };
        let ready = all_ready && phase == "Running";
        let qos = crate::resources::qos_class(pod)
            .map(|q| q.as_str())
            .unwrap_or("BestEffort");
        let conditions = vec![
            self.condition("PodScheduled", true),
            self.condition("Initialized", initialized),
            self.condition("ContainersReady", ready),
            self.condition("Ready", ready),
        ];
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.facts.host_ip,
            "hostIPs": [{"ip": self.facts.host_ip}],
            "startTime": self.start_time,
            "qosClass": qos,
            "containerStatuses": statuses,
        });
        if let Some(ip) = self.host.network.pod_ip(self.uid()) {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        if let Some((reason, message)) = &self.failure {
            status["reason"] = json!(reason);
            status["message"] = json!(message);
        }
        status
    }

    /// Graceful termination: preStop hooks, SIGTERM, the grace period, SIGKILL; then the pod
    /// leaves the host, and (when `delete`) its object is deleted with grace 0.
    async fn terminate(&mut self, pod: Option<&Pod>, delete: bool) {
        let grace = match pod {
            Some(p) if delete => termination_grace(p, p.metadata.deletion_grace_period_seconds),
            _ => Duration::ZERO,
        };
        let deadline = Instant::now() + grace;
        let mut running = Vec::new();
        if let Some(pod) = pod {
            for c in all_containers(pod) {
                if let (Some(s), _) = self.seen(&c.name)
                    && !s.state.exited
                {
                    running.push((c.clone(), s.attempt));
                }
            }
            // preStop hooks, all at once, within the grace period.
            let mut hooks = Vec::new();
            for (c, attempt) in &running {
                if let Some(handler) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()) {
                    let id = Host::container_id(self.uid(), &c.name, *attempt);
                    let prober = self.prober.clone();
                    let host = self.host.clone();
                    let pod = pod.clone();
                    hooks.push(async move {
                        let _ = prober.run_handler(&host, &id, &handler, &pod, grace).await;
                    });
                }
            }
            if !hooks.is_empty() && !grace.is_zero() {
                let _ = tokio::time::timeout(grace, futures::future::join_all(hooks)).await;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let mut stops = Vec::new();
        for (c, attempt) in running {
            let uid = self.uid().to_owned();
            let host = self.host.clone();
            stops.push(tokio::task::spawn_blocking(move || {
                let dir = host.container_dir(&uid, &c.name, attempt);
                host.stop_container(&dir, &Host::container_id(&uid, &c.name, attempt), left);
            }));
        }
        for s in stops {
            let _ = s.await;
        }
        let cgroup = pod
            .and_then(|p| crate::resources::qos_class(p).ok())
            .map(|q| self.host.pod_cgroup(self.uid(), q));
        let (uid, record) = (self.uid().to_owned(), self.record.clone());
        self.blocking(move |h| {
            h.remove_pod(&uid, cgroup.as_deref());
            h.remove_logs(&record);
        })
        .await;
        if delete {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.record.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match self.pods.delete(&self.record.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => tracing::warn!(pod = %self.record.name, error = %e, "delete failed"),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    Waiting,
    Running,
    Restarting,
    Succeeded,
    Failed,
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.into_iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
    })
}

fn succeeded(s: &ShimState) -> bool {
    s.exit_code == Some(0) && s.error.is_none()
}

fn restarts(policy: &str, s: &ShimState) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => !succeeded(s),
        _ => true,
    }
}

fn reason(s: &ShimState) -> &'static str {
    if s.error.is_some() && s.started_at.is_none() {
        "StartError"
    } else if s.oom_killed {
        "OOMKilled"
    } else if s.exit_code == Some(0) {
        "Completed"
    } else {
        "Error"
    }
}

fn termination_grace(pod: &Pod, override_secs: Option<i64>) -> Duration {
    let secs = override_secs
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}
