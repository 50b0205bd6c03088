//! `pods/log`, `pods/exec` (a protocol upgrade spliced through) and `nodes/proxy` go to the
//! node's kubelet endpoint: here a small fake node on loopback, with the API server on a real
//! socket (upgrades need one).

use anyhow::Result;
use axum::extract::Request;
use axum::response::IntoResponse;
use berth_apiserver::ApiServer;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, LogParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The fake node: logs echo their path and query, `/exec/...` switches to an echo protocol,
/// anything else answers `node <path>`.
async fn fake_node() -> Result<u16> {
    async fn handle(req: Request) -> axum::response::Response {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        if path.starts_with("/containerLogs/") {
            return format!("log of {path}?{query}\n").into_response();
        }
        if path.starts_with("/exec/") && req.headers().contains_key("upgrade") {
            let upgrade = hyper::upgrade::on(req);
            tokio::spawn(async move {
                if let Ok(io) = upgrade.await {
                    let mut io = hyper_util::rt::TokioIo::new(io);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            return (
                http::StatusCode::SWITCHING_PROTOCOLS,
                [("connection", "Upgrade"), ("upgrade", "echo")],
            )
                .into_response();
        }
        format!("node {path}").into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().fallback(handle)).await;
    });
    Ok(port)
}

#[tokio::test]
async fn logs_exec_and_node_proxy_reach_the_node() -> Result<()> {
    let node_port = fake_node().await?;
    let server = ApiServer::in_memory().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_addr = listener.local_addr()?;
    let router = server.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let config = kube::Config::new(format!("http://{api_addr}").parse()?);
    let client = kube::Client::try_from(config)?;

    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1"}}))?;
    nodes.create(&PostParams::default(), &node).await?;
    nodes
        .patch_status(
            "n1",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": node_port}}}})),
        )
        .await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "c", "image": "x"}]}}))?;
    pods.create(&PostParams::default(), &pod).await?;

    // pods/log with the one container picked and the options passed on.
    let log = pods
        .logs(
            "p",
            &LogParams {
                tail_lines: Some(5),
                ..LogParams::default()
            },
        )
        .await?;
    assert_eq!(log, "log of /containerLogs/default/p/c?tailLines=5\n");
    let err = pods
        .logs(
            "p",
            &LogParams {
                container: Some("nope".into()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );

    // nodes/proxy.
    let req = http::Request::get("/api/v1/nodes/n1/proxy/healthz").body(Vec::new())?;
    assert_eq!(client.request_text(req).await?, "node /healthz");

    // pods/exec: the upgrade is spliced through to the node.
    let mut conn = tokio::net::TcpStream::connect(api_addr).await?;
    conn.write_all(
        b"POST /api/v1/namespaces/default/pods/p/exec?command=sh&stdin=true HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\nContent-Length: 0\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).await?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    conn.write_all(b"ping").await?;
    let mut echoed = [0u8; 4];
    conn.read_exact(&mut echoed).await?;
    assert_eq!(&echoed, b"ping");

    // A pod on no node, or a node without an endpoint, is a clear error.
    let unbound: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "q"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}))?;
    pods.create(&PostParams::default(), &unbound).await?;
    let err = pods.logs("q", &LogParams::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );
    Ok(())
}
