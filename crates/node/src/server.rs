//! The agent's HTTP server: the part of the kubelet API the API server proxies to.
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`, `previous`,
//!   `sinceSeconds`, `sinceTime`, `tailLines`, `timestamps`, `limitBytes` (`kubectl logs`).
//! - `GET /stats/summary` (node and pod cpu/memory, for `kubectl top` via metrics.k8s.io).
//! - `GET /metrics` and `GET /metrics/resource` (Prometheus text).
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
        .route("/stats/summary", get(summary))
        .route("/metrics", get(metrics))
        .route("/metrics/resource", get(metrics))
        .with_state(ctx)
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
