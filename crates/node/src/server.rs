//! The agent's HTTP server: the part of the kubelet API the API server proxies to.
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`, `previous`,
//!   `sinceSeconds`, `sinceTime`, `tailLines`, `timestamps`, `limitBytes` (`kubectl logs`).
//! - `GET /stats/summary` (node and pod cpu/memory, for `kubectl top` via metrics.k8s.io).
//! - `GET /metrics` and `GET /metrics/resource` (Prometheus text).
//! - `GET|POST /exec/{namespace}/{pod}/{container}?command=...&input=1&output=1&error=1&tty=1`
//!   over WebSocket with the `v5.channel.k8s.io` (or `v4`) subprotocol: what kubectl 1.32 speaks
//!   to the API server for `kubectl exec`, which an API server can pass through unchanged. Each
//!   binary message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the final
//!   `metav1.Status`, 4 terminal resize (`{"Width":..,"Height":..}`), 255 close (v5).
//! - `GET|POST /portForward/{namespace}/{pod}?port=N` over WebSocket (`v4.channel.k8s.io` or
//!   `portforward.k8s.io`, the kubelet's WebSocket port-forward): per port `i`, channel `2i`
//!   carries data and `2i+1` errors, each starting with the port (2 bytes, little endian); the
//!   connection is made from inside the pod's network namespace.
//! - The same over SPDY/3.1, as kubectl 1.32 asks: a WebSocket with the
//!   `SPDY/3.1+portforward.k8s.io` subprotocol (SPDY tunnelled in binary messages) or an
//!   `Upgrade: SPDY/3.1` connection (its fallback), served by [`crate::spdy`].
//! - `GET /healthz`.
//!
//! It has no authentication yet, so the agent binds it to the node's address, which defaults
//! to loopback.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::host::{Host, PodRecord};
use crate::logs::{Record, parse_line, read_all};
use crate::shim::ShimState;
use crate::stats::Rates;

#[derive(Clone)]
struct Ctx {
    host: Arc<Host>,
    rates: Arc<Rates>,
    memory: u64,
}

/// The router of the agent's API over `host` (`memory`: the node's memory capacity).
pub fn router(host: Arc<Host>, memory: u64) -> Router {
    let ctx = Ctx {
        host,
        rates: Arc::new(Rates::default()),
        memory,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/exec/{namespace}/{pod}/{container}", get(exec).post(exec))
        .route(
            "/portForward/{namespace}/{pod}",
            get(port_forward).post(port_forward),
        )
        .route("/stats/summary", get(summary))
        .route("/metrics", get(metrics))
        .route("/metrics/resource", get(metrics))
        .with_state(ctx)
}

/// A Close with status 1000: client-go's WebSocket streams end cleanly only on a normal
/// closure (a Close without a code reads as 1005, an error on every stream).
fn normal_close() -> axum::extract::ws::Message {
    axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, message.into()).into_response()
}

async fn summary(State(ctx): State<Ctx>) -> Response {
    let host = ctx.host.clone();
    let body =
        tokio::task::spawn_blocking(move || crate::stats::summary(&host, &ctx.rates, ctx.memory))
            .await
            .unwrap_or_default();
    axum::Json(body).into_response()
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    let host = ctx.host.clone();
    let text = tokio::task::spawn_blocking(move || crate::stats::prometheus(&host))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `kubectl logs` options.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    previous: Option<String>,
    since_seconds: Option<i64>,
    since_time: Option<String>,
    tail_lines: Option<i64>,
    #[serde(default)]
    timestamps: Option<String>,
    limit_bytes: Option<i64>,
}

fn flag(v: &Option<String>) -> bool {
    v.as_deref()
        .is_some_and(|v| v.is_empty() || v == "true" || v == "1")
}

/// Finds the pod `namespace/name` on this node (the newest when several share the name).
fn find_pod(host: &Host, namespace: &str, name: &str) -> Option<PodRecord> {
    let mut found: Vec<PodRecord> = host
        .pods_on_disk()
        .into_iter()
        .filter(|p| p.namespace == namespace && p.name == name)
        .collect();
    found.sort_by_key(|p| {
        std::fs::metadata(host.pod_dir(&p.uid))
            .and_then(|m| m.modified())
            .ok()
    });
    found.pop()
}

/// Renders records as `kubectl logs` prints them.
fn render(records: &[Record], timestamps: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line_start = true;
    for r in records {
        if timestamps && line_start {
            out.extend_from_slice(r.timestamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&r.text);
        if !r.partial {
            out.push(b'\n');
        }
        line_start = !r.partial;
    }
    out
}

async fn container_logs(
    State(ctx): State<Ctx>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let host = ctx.host.clone();
    let Some(record) = find_pod(&host, &namespace, &pod) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on this node"),
        );
    };
    let attempts = host.attempts(&record.uid, &container);
    let attempt = if flag(&q.previous) {
        match attempts.len().checked_sub(2).map(|i| attempts[i]) {
            Some(a) => a,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ),
                );
            }
        }
    } else {
        match attempts.last() {
            Some(a) => *a,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("container \"{container}\" in pod \"{pod}\" is waiting to start"),
                );
            }
        }
    };
    let path = host
        .log_dir(&record, &container)
        .join(format!("{attempt}.log"));
    let dir = host.container_dir(&record.uid, &container, attempt);
    let since = match (&q.since_time, q.since_seconds) {
        (Some(t), _) => chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
        (None, Some(s)) => Some(chrono::Utc::now() - chrono::Duration::seconds(s.max(0))),
        _ => None,
    };
    let timestamps = flag(&q.timestamps);
    let mut records = read_all(&path).unwrap_or_default();
    if let Some(since) = since {
        records.retain(|r| {
            chrono::DateTime::parse_from_rfc3339(&r.timestamp).is_ok_and(|t| t >= since)
        });
    }
    if let Some(tail) = q.tail_lines.filter(|t| *t >= 0) {
        // Count complete lines from the end.
        let mut lines = 0;
        let mut start = records.len();
        while start > 0 {
            if !records[start - 1].partial {
                if lines == tail {
                    break;
                }
                lines += 1;
            }
            start -= 1;
        }
        records.drain(..start);
    }
    let mut initial = render(&records, timestamps);
    let mut limit = q.limit_bytes.filter(|l| *l > 0).map(|l| l as usize);
    if let Some(l) = limit {
        initial.truncate(l);
        limit = Some(l - initial.len());
    }
    let exited = |dir: &std::path::Path| ShimState::load(dir).is_none_or(|s| s.exited);
    if !flag(&q.follow) || limit == Some(0) || (attempt != *attempts.last().unwrap_or(&0)) {
        return ([(header::CONTENT_TYPE, "text/plain")], initial).into_response();
    }
    // Follow: everything appended to the live file from here on, until the container ends.
    let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
    let state = (path, dir, offset, Some(initial), limit, false);
    let stream = futures::stream::unfold(
        state,
        move |(path, dir, mut offset, first, limit, done)| async move {
            if let Some(first) = first {
                return Some((
                    Ok::<_, std::io::Error>(first),
                    (path, dir, offset, None, limit, done),
                ));
            }
            if done {
                return None;
            }
            loop {
                let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                if len < offset {
                    offset = 0; // rotated
                }
                if len > offset {
                    let bytes = read_from(&path, offset, len);
                    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                    if end > 0 {
                        offset += end as u64;
                        let records: Vec<Record> = bytes[..end]
                            .split(|b| *b == b'\n')
                            .filter_map(parse_line)
                            .collect();
                        let mut out = render(&records, timestamps);
                        let mut limit = limit;
                        if let Some(l) = limit {
                            out.truncate(l);
                            limit = Some(l - out.len());
                        }
                        let done = limit == Some(0);
                        return Some((Ok(out), (path, dir, offset, None, limit, done)));
                    }
                }
                if exited(&dir) && std::fs::metadata(&path).map_or(0, |m| m.len()) <= offset {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn read_from(path: &std::path::Path, offset: u64, len: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.take(len - offset).read_to_end(&mut out);
    }
    out
}

/// What an exec asks for.
#[derive(Debug, Default)]
struct ExecParams {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn exec_params(query: Option<&str>) -> ExecParams {
    let mut p = ExecParams::default();
    let on = |v: &str| v.is_empty() || v == "1" || v == "true";
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "command" => p.command.push(v.into_owned()),
            "input" | "stdin" => p.stdin = on(&v),
            "output" | "stdout" => p.stdout = on(&v),
            "error" | "stderr" => p.stderr = on(&v),
            "tty" => p.tty = on(&v),
            _ => {}
        }
    }
    p
}

/// The running attempt of a container: its runtime id (or the error status and message).
fn running_id(
    host: &Host,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<String, (StatusCode, String)> {
    let record = find_pod(host, namespace, pod).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on this node"),
        )
    })?;
    host.running_containers(&record.uid)
        .into_iter()
        .find(|(name, _)| name == container)
        .map(|(name, attempt)| Host::container_id(&record.uid, &name, attempt))
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                format!("container {container} is not running in pod {namespace}/{pod}"),
            )
        })
}

async fn exec(
    State(ctx): State<Ctx>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let params = exec_params(query.as_deref());
    if params.command.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command",
        );
    }
    if !params.stdin && !params.stdout && !params.stderr {
        return error(
            StatusCode::BAD_REQUEST,
            "you must specify at least one of stdin, stdout, stderr",
        );
    }
    let id = match running_id(&ctx.host, &namespace, &pod, &container) {
        Ok(id) => id,
        Err((code, message)) => return error(code, message),
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| exec_session(ctx.host, id, params, socket))
}

fn status_frame(code: Result<i32, String>, command: &[String]) -> Vec<u8> {
    let status = match code {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(message) => serde_json::json!({
            "metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
        }),
    };
    let mut frame = vec![3u8];
    frame.extend_from_slice(status.to_string().as_bytes());
    frame
}

async fn exec_session(
    host: Arc<Host>,
    id: String,
    params: ExecParams,
    mut socket: axum::extract::ws::WebSocket,
) {
    use axum::extract::ws::Message;
    let v5 = socket
        .protocol()
        .is_some_and(|p| p.as_bytes() == b"v5.channel.k8s.io");
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let (in_tx, in_rx) = std::sync::mpsc::channel::<Input>();
    let command = params.command.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let code = run_exec(&host, &id, &params, out_tx.clone(), in_rx);
        let _ = out_tx.blocking_send(status_frame(code, &params.command));
    });
    let mut stdin_open = true;
    loop {
        tokio::select! {
            frame = out_rx.recv() => match frame {
                Some(f) => {
                    if socket.send(Message::Binary(f.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            msg = socket.recv(), if stdin_open => match msg {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                    0 => { let _ = in_tx.send(Input::Data(data[1..].to_vec())); }
                    4 => {
                        if let Ok(size) = serde_json::from_slice::<serde_json::Value>(&data[1..]) {
                            let w = size["Width"].as_u64().unwrap_or(80) as u16;
                            let h = size["Height"].as_u64().unwrap_or(24) as u16;
                            let _ = in_tx.send(Input::Resize(w, h));
                        }
                    }
                    255 if v5 && data.get(1) == Some(&0) => { let _ = in_tx.send(Input::Close); }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = in_tx.send(Input::Close);
                    stdin_open = false;
                }
                _ => {}
            },
        }
    }
    drop(in_tx);
    let _ = worker.await;
    let _ = socket.send(normal_close()).await;
    let _ = command;
}

enum Input {
    Data(Vec<u8>),
    Resize(u16, u16),
    Close,
}

/// Runs the exec and pumps its stdio; returns its exit code.
fn run_exec(
    host: &Host,
    id: &str,
    params: &ExecParams,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
    input: std::sync::mpsc::Receiver<Input>,
) -> Result<i32, String> {
    use berth_namespaces::{CreateOptions, Stdio};
    use std::io::{Read, Write};
    let container = host.runtime.load(id).map_err(|e| e.to_string())?;
    let mut process = container.spec().process().clone().unwrap_or_default();
    process.set_args(Some(params.command.clone()));
    process.set_terminal(Some(params.tty));
    let stdio = if params.tty {
        Stdio::Console
    } else {
        Stdio::Piped
    };
    let mut p = container
        .exec(
            process,
            CreateOptions {
                stdio,
                ..Default::default()
            },
        )
        .map_err(|e| crate::shim::error_chain(&e))?;
    let pump = |mut r: std::fs::File, channel: u8, out: tokio::sync::mpsc::Sender<Vec<u8>>| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(channel);
                        frame.extend_from_slice(&buf[..n]);
                        if out.blocking_send(frame).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let mut pumps = Vec::new();
    let mut stdin: Option<std::fs::File> = None;
    let mut master: Option<std::fs::File> = None;
    if params.tty {
        let m = std::fs::File::from(p.take_console().ok_or("no console")?);
        if params.stdout {
            pumps.push(pump(
                m.try_clone().map_err(|e| e.to_string())?,
                1,
                out.clone(),
            ));
        }
        stdin = Some(m.try_clone().map_err(|e| e.to_string())?);
        master = Some(m);
    } else if let Some(pipes) = p.take_stdio() {
        if let (true, Some(o)) = (params.stdout, pipes.stdout) {
            pumps.push(pump(o, 1, out.clone()));
        }
        if let (true, Some(e)) = (params.stderr, pipes.stderr) {
            pumps.push(pump(e, 2, out.clone()));
        }
        stdin = if params.stdin { pipes.stdin } else { None };
    }
    // stdin and resizes, until the client closes stdin or the session ends.
    let feeder = std::thread::spawn(move || {
        let mut stdin = stdin;
        while let Ok(msg) = input.recv() {
            match msg {
                Input::Data(d) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&d).is_err()
                    {
                        stdin = None;
                    }
                }
                Input::Resize(w, h) => {
                    if let Some(m) = &master {
                        let _ = crate::sys::set_window_size(m, w, h);
                    }
                }
                Input::Close => {
                    // A tty keeps its master for output; only a pipe is closed.
                    if master.is_none() {
                        stdin = None;
                    }
                }
            }
        }
    });
    let code = p.wait().map(|s| s.code()).map_err(|e| e.to_string());
    for t in pumps {
        let _ = t.join();
    }
    drop(feeder);
    code
}

async fn port_forward(
    State(ctx): State<Ctx>,
    UrlPath((namespace, pod)): UrlPath<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    let query = request.uri().query().map(str::to_owned);
    let mut ports = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k == "port" || k == "ports" {
            for p in v.split(',') {
                match p.trim().parse::<u16>() {
                    Ok(p) if p > 0 => ports.push(p),
                    _ => return error(StatusCode::BAD_REQUEST, format!("invalid port {p:?}")),
                }
            }
        }
    }
    let Some(record) = find_pod(&ctx.host, &namespace, &pod) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on this node"),
        );
    };
    let Some(sandbox) = ctx.host.sandbox(&record.uid).filter(|s| s.alive()) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("pod {namespace}/{pod} is not running"),
        );
    };
    let spdy_upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    if spdy_upgrade {
        // kubectl's SPDY port-forward: the ports come in each stream's headers.
        let mut request = request;
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(io) => {
                    crate::spdy::serve(hyper_util::rt::TokioIo::new(io), sandbox.pid).await;
                }
                Err(e) => tracing::warn!(error = %e, "port-forward upgrade failed"),
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1")
            .header(
                "X-Stream-Protocol-Version",
                crate::spdy::PORT_FORWARD_PROTOCOL,
            )
            .body(Body::empty())
            .unwrap_or_default();
    }
    let tunnel = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == crate::spdy::TUNNEL_PROTOCOL);
    let ws = {
        use axum::extract::FromRequest;
        match axum::extract::ws::WebSocketUpgrade::from_request(request, &()).await {
            Ok(ws) => ws,
            Err(rejection) => return rejection.into_response(),
        }
    };
    if tunnel {
        return ws
            .protocols([crate::spdy::TUNNEL_PROTOCOL])
            .on_upgrade(move |socket| tunnel_session(sandbox.pid, socket));
    }
    if ports.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameter \"port\" is required",
        );
    }
    ws.protocols(["v4.channel.k8s.io", "portforward.k8s.io"])
        .on_upgrade(move |socket| forward_session(sandbox.pid, ports, socket))
}

/// SPDY tunnelled in WebSocket binary messages (kubectl's first try): the messages become a
/// byte stream for [`crate::spdy::serve`].
async fn tunnel_session(pid: i32, mut socket: axum::extract::ws::WebSocket) {
    use axum::extract::ws::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let session = tokio::spawn(crate::spdy::serve(theirs, pid));
    let (mut from_session, mut to_session) = tokio::io::split(ours);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            n = from_session.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if socket.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(d))) => {
                    let written = to_session.write_all(&d).await;
                    if written.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                _ => {}
            },
        }
    }
    drop(to_session);
    session.abort();
    let _ = socket.send(normal_close()).await;
}

async fn forward_session(pid: i32, ports: Vec<u16>, mut socket: axum::extract::ws::WebSocket) {
    use axum::extract::ws::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let mut writers: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, err) = ((2 * i) as u8, (2 * i + 1) as u8);
        let le = port.to_le_bytes();
        for ch in [data, err] {
            let _ = socket
                .send(Message::Binary(vec![ch, le[0], le[1]].into()))
                .await;
        }
        let port = *port;
        let stream = crate::probe::in_netns(pid, move || {
            crate::probe::connect("127.0.0.1", port, Duration::from_secs(5))
        })
        .await
        .and_then(|s| {
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())
        });
        match stream {
            Ok(stream) => {
                let (mut r, w) = stream.into_split();
                writers.push(Some(w));
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let mut frame = Vec::with_capacity(n + 1);
                                frame.push(data);
                                frame.extend_from_slice(&buf[..n]);
                                if tx.send(frame).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
            Err(message) => {
                writers.push(None);
                let mut frame = vec![err];
                frame.extend_from_slice(
                    format!("error forwarding port {port} to pod: {message}").as_bytes(),
                );
                let _ = socket.send(Message::Binary(frame.into())).await;
            }
        }
    }
    drop(tx);
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(f) => {
                    if socket.send(Message::Binary(f.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(d))) if !d.is_empty() && d[0] % 2 == 0 => {
                    let i = usize::from(d[0] / 2);
                    if let Some(Some(w)) = writers.get_mut(i)
                        && w.write_all(&d[1..]).await.is_err()
                    {
                        writers[i] = None;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                _ => {}
            },
        }
    }
    let _ = socket.send(normal_close()).await;
}
