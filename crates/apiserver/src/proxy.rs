//! The node-facing subresources, proxied to the node agent's kubelet-like endpoint (the Node's
//! `status.addresses` and `status.daemonEndpoints.kubeletEndpoint.Port`), in the URL layout the
//! kubelet serves: `pods/log` → `/containerLogs/<ns>/<pod>/<container>`, `pods/exec` →
//! `/exec/<ns>/<pod>/<container>`, `pods/attach` → `/attach/...`, `pods/portforward` →
//! `/portForward/<ns>/<pod>`, `nodes/<name>/proxy/<path>` → `/<path>`.
//!
//! A plain pass-through: the request goes to the node as it came (method, query, headers but
//! `Authorization`, body); an upgrade (SPDY or WebSocket, as kubectl exec and port-forward ask)
//! is answered with the node's `101` and the two connections are spliced.

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::registry::Registry;

/// The node's kubelet endpoint (`host:port`).
pub(crate) async fn node_endpoint(registry: &Registry, node: &str) -> Result<String> {
    let kind = registry
        .kind("", "v1", "nodes")
        .expect("nodes are built in");
    let obj = registry.get(&kind, "", node).await?;
    let port = obj
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .filter(|p| *p > 0 && *p < 65536)
        .ok_or_else(|| Error::BadRequest(format!("node {node:?} has no kubelet endpoint port")))?;
    let addresses = obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let pick = |ty: &str| {
        addresses
            .iter()
            .find(|a| a["type"] == ty)
            .and_then(|a| a["address"].as_str())
            .map(str::to_owned)
    };
    let host = pick("InternalIP")
        .or_else(|| pick("ExternalIP"))
        .or_else(|| pick("Hostname"))
        .ok_or_else(|| Error::BadRequest(format!("node {node:?} has no address")))?;
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The kubelet path for a pod subresource (None: not a node-proxied subresource).
pub(crate) async fn pod_target(
    registry: &Registry,
    ns: &str,
    name: &str,
    sub: &str,
    query: &std::collections::BTreeMap<String, String>,
) -> Result<Option<(String, String)>> {
    if !matches!(sub, "log" | "exec" | "attach" | "portforward") {
        return Ok(None);
    }
    let kind = registry.kind("", "v1", "pods").expect("pods are built in");
    let pod = registry.get(&kind, ns, name).await?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::BadRequest(format!("pod {name} does not have a host assigned")))?
        .to_owned();
    let endpoint = node_endpoint(registry, &node).await?;
    if sub == "portforward" {
        return Ok(Some((endpoint, format!("/portForward/{ns}/{name}"))));
    }
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) => {
            let init = pod
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .is_some_and(|l| l.iter().any(|i| i["name"] == c.as_str()));
            if !containers.contains(c) && !init {
                return Err(Error::BadRequest(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.clone()
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(Error::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    let path = match sub {
        "log" => "containerLogs",
        other => other,
    };
    Ok(Some((endpoint, format!("/{path}/{ns}/{name}/{container}"))))
}

/// Sends `req` to `http://<endpoint><path>?<query>` and answers with the node's response,
/// splicing the connections when the node switches protocols.
pub(crate) async fn forward(req: Request, endpoint: &str, path: &str) -> Result<Response> {
    // The query re-encoded (clients send `?&a=b`), empty keys dropped.
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let query = if pairs.is_empty() {
        String::new()
    } else {
        format!(
            "?{}",
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&pairs)
                .finish()
        )
    };
    let stream = tokio::net::TcpStream::connect(endpoint)
        .await
        .map_err(|e| Error::ServiceUnavailable(format!("dialing the node at {endpoint}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Error::ServiceUnavailable(format!("talking to the node: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let (mut parts, body) = req.into_parts();
    let upgrade_requested = parts.headers.contains_key(header::UPGRADE);
    let client_upgrade = upgrade_requested.then(|| {
        // The client's side of a switched connection lives in the request's extensions.
        let mut probe = Request::new(Body::empty());
        std::mem::swap(probe.extensions_mut(), &mut parts.extensions);
        hyper::upgrade::on(probe)
    });
    let mut out = http::Request::builder()
        .method(parts.method.clone())
        .uri(format!("{path}{query}"));
    for (k, v) in &parts.headers {
        if k == header::AUTHORIZATION || k == header::HOST {
            continue;
        }
        out = out.header(k, v);
    }
    out = out.header(header::HOST, endpoint);
    let out = out
        .body(body)
        .map_err(|e| Error::Internal(format!("building the node request: {e}")))?;
    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|e| Error::ServiceUnavailable(format!("the node did not answer: {e}")))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let node_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client), Ok(node)) = (client_upgrade.await, node_upgrade.await) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut node = TokioIo::new(node);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
        });
        let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (k, v) in resp.headers() {
            answer = answer.header(k, v);
        }
        return answer
            .body(Body::empty())
            .map_err(|e| Error::Internal(format!("answering the upgrade: {e}")));
    }
    let (parts, body) = resp.into_parts();
    let mut answer = Response::from_parts(parts, Body::new(body));
    answer
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-cache, private"));
    Ok(answer.into_response())
}
