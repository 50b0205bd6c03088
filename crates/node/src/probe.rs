//! Probes and lifecycle hooks. Liveness, readiness and startup probes with the kubelet's
//! defaults (period 10 s, timeout 1 s, failure threshold 3, success threshold 1, initial delay
//! from the container's start); each is an exec in the container, an HTTP GET or a TCP connect
//! made from inside the pod's network namespace (a fresh thread joins it, connects, and ends),
//! so `localhost` is the pod. A failed startup or liveness probe restarts the container; readiness
//! gates the Ready condition. Hooks (postStart, preStop) use the same handlers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_namespaces::{CreateOptions, Signal, Stdio};
use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Pod, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::host::Host;

/// Which probe asked for a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// The liveness probe failed its threshold.
    Liveness,
    /// The startup probe failed its threshold.
    Startup,
}

#[derive(Debug, Default)]
struct State {
    attempt: u32,
    started: bool,
    ready: bool,
    failures: HashMap<&'static str, i32>,
    successes: HashMap<&'static str, i32>,
    last: HashMap<&'static str, Instant>,
}

/// The probe state of a pod's containers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prober {
    state: Arc<Mutex<HashMap<String, State>>>,
}

/// A handler to run: what a probe or a hook does.
enum Action<'a> {
    Exec(&'a ExecAction),
    Http(&'a HTTPGetAction),
    Tcp(&'a TCPSocketAction),
    Sleep(i64),
}

fn probe_action(p: &Probe) -> Option<Action<'_>> {
    if let Some(e) = &p.exec {
        return Some(Action::Exec(e));
    }
    if let Some(h) = &p.http_get {
        return Some(Action::Http(h));
    }
    p.tcp_socket.as_ref().map(Action::Tcp)
}

impl Prober {
    fn with<T>(&self, name: &str, f: impl FnOnce(&mut State) -> T) -> T {
        let mut map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(name.to_owned()).or_default())
    }

    /// Forgets a container's probe results (its attempt ended).
    pub(crate) fn forget(&self, name: &str) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Whether the container counts as ready (no readiness probe: once started).
    pub(crate) fn ready(&self, name: &str, c: &Container) -> bool {
        if c.readiness_probe.is_none() {
            return self.started(name, c);
        }
        self.with(name, |s| s.ready)
    }

    /// Whether the startup probe passed (none: started).
    pub(crate) fn started(&self, name: &str, c: &Container) -> bool {
        c.startup_probe.is_none() || self.with(name, |s| s.started)
    }

    /// Runs the probes that are due for the running attempt `attempt` of `c`; returns the
    /// probe whose failures call for a restart.
    pub(crate) async fn tick(
        &self,
        host: &Arc<Host>,
        id: &str,
        c: &Container,
        pod: &Pod,
        attempt: u32,
        started_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<ProbeKind> {
        self.with(&c.name, |s| {
            if s.attempt != attempt {
                *s = State {
                    attempt,
                    ..Default::default()
                };
            }
        });
        let running_for = started_at
            .and_then(|t| (chrono::Utc::now() - t).to_std().ok())
            .unwrap_or_default();
        if let Some(p) = &c.startup_probe
            && !self.started(&c.name, c)
        {
            match self
                .run_due(host, id, pod, c, "startup", p, running_for)
                .await
            {
                Some(true) => self.with(&c.name, |s| s.started = true),
                Some(false) if self.failed_enough(&c.name, "startup", p) => {
                    return Some(ProbeKind::Startup);
                }
                _ => {}
            }
            return None;
        }
        if let Some(p) = &c.liveness_probe
            && self
                .run_due(host, id, pod, c, "liveness", p, running_for)
                .await
                == Some(false)
            && self.failed_enough(&c.name, "liveness", p)
        {
            return Some(ProbeKind::Liveness);
        }
        if let Some(p) = &c.readiness_probe {
            match self
                .run_due(host, id, pod, c, "readiness", p, running_for)
                .await
            {
                Some(true) => {
                    let threshold = p.success_threshold.unwrap_or(1).max(1);
                    self.with(&c.name, |s| {
                        if s.successes.get("readiness").copied().unwrap_or(0) >= threshold {
                            s.ready = true;
                        }
                    });
                }
                Some(false) if self.failed_enough(&c.name, "readiness", p) => {
                    self.with(&c.name, |s| s.ready = false);
                }
                _ => {}
            }
        }
        None
    }

    fn failed_enough(&self, name: &str, kind: &'static str, p: &Probe) -> bool {
        let threshold = p.failure_threshold.unwrap_or(3).max(1);
        self.with(name, |s| {
            s.failures.get(kind).copied().unwrap_or(0) >= threshold
        })
    }

    /// Runs probe `p` when due; `Some(result)` when it ran.
    #[allow(clippy::too_many_arguments)]
    async fn run_due(
        &self,
        host: &Arc<Host>,
        id: &str,
        pod: &Pod,
        c: &Container,
        kind: &'static str,
        p: &Probe,
        running_for: Duration,
    ) -> Option<bool> {
        let delay = Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        if running_for < delay {
            return None;
        }
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let due = self.with(&c.name, |s| {
            s.last.get(kind).is_none_or(|t| t.elapsed() >= period)
        });
        if !due {
            return None;
        }
        self.with(&c.name, |s| s.last.insert(kind, Instant::now()));
        let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
        let action = probe_action(p)?;
        let ok = run_action(host, id, pod, c, action, timeout).await.is_ok();
        self.with(&c.name, |s| {
            if ok {
                s.failures.insert(kind, 0);
                *s.successes.entry(kind).or_default() += 1;
            } else {
                s.successes.insert(kind, 0);
                *s.failures.entry(kind).or_default() += 1;
            }
        });
        Some(ok)
    }

    /// Runs a lifecycle hook's handler in container `id`.
    pub(crate) async fn run_handler(
        &self,
        host: &Arc<Host>,
        id: &str,
        handler: &LifecycleHandler,
        pod: &Pod,
        timeout: Duration,
    ) -> Result<(), String> {
        let c = Container::default();
        let action = if let Some(e) = &handler.exec {
            Action::Exec(e)
        } else if let Some(h) = &handler.http_get {
            Action::Http(h)
        } else if let Some(t) = &handler.tcp_socket {
            Action::Tcp(t)
        } else if let Some(s) = &handler.sleep {
            Action::Sleep(s.seconds)
        } else {
            return Err("the hook has no handler".into());
        };
        run_action(host, id, pod, &c, action, timeout).await
    }
}

fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("port {p} out of range")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no port named {name:?}")),
    }
}

async fn run_action(
    host: &Arc<Host>,
    id: &str,
    pod: &Pod,
    c: &Container,
    action: Action<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    match action {
        Action::Sleep(secs) => {
            tokio::time::sleep(Duration::from_secs(secs.max(0) as u64).min(timeout)).await;
            Ok(())
        }
        Action::Exec(e) => {
            let command = e.command.clone().unwrap_or_default();
            let (host, id) = (host.clone(), id.to_owned());
            tokio::task::spawn_blocking(move || exec(&host, &id, command, timeout))
                .await
                .map_err(|e| e.to_string())?
        }
        Action::Http(h) => {
            let port = resolve_port(&h.port, c)?;
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let target = h
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".into());
            let headers: Vec<(String, String)> = h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            let sandbox = host.sandbox(&uid).ok_or("no pod sandbox")?;
            in_netns(sandbox.pid, move || {
                http_get(&target, port, &path, &headers, timeout)
            })
            .await
        }
        Action::Tcp(t) => {
            let port = resolve_port(&t.port, c)?;
            let target = t
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".into());
            let sandbox = host.sandbox(&uid).ok_or("no pod sandbox")?;
            in_netns(sandbox.pid, move || {
                connect(&target, port, timeout).map(drop)
            })
            .await
        }
    }
}

/// Runs `f` on a fresh thread that joined the network namespace of `pid`.
pub(crate) async fn in_netns<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                .map_err(|e| format!("open the pod's network namespace: {e}"))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("join the pod's network namespace: {e}"))?;
            f()
        })();
        let _ = tx.send(result);
    });
    rx.await.map_err(|_| "probe thread died".to_owned())?
}

pub(crate) fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("dial {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    Ok(stream)
}

fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let mut stream = connect(host, port, timeout)?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Runs `command` in container `id` with its process settings; fails on a non-zero exit or
/// after `timeout` (the process is then killed).
pub(crate) fn exec(
    host: &Host,
    id: &str,
    command: Vec<String>,
    timeout: Duration,
) -> Result<(), String> {
    if command.is_empty() {
        return Err("exec: no command".into());
    }
    let container = host.runtime.load(id).map_err(|e| e.to_string())?;
    let mut process = container.spec().process().clone().unwrap_or_default();
    process.set_args(Some(command));
    process.set_terminal(Some(false));
    let mut p = container
        .exec(
            process,
            CreateOptions {
                stdio: Stdio::Null,
                ..Default::default()
            },
        )
        .map_err(|e| crate::shim::error_chain(&e))?;
    let pid = p.pid();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if !done.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
        })
    };
    let status = p.wait().map_err(|e| e.to_string());
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watchdog.join();
    match status?.code() {
        0 => Ok(()),
        code => Err(format!("command exited with {code}")),
    }
}
