//! The Ingress controller against the in-process API server, with local HTTP servers as the
//! Services' endpoints (EndpointSlice addresses 127.0.0.1 with distinct ports): two hosts to
//! two Services, Exact vs Prefix, round-robin, forwarding headers, TLS with SNI from Secrets,
//! a reload that keeps a request in flight, a missing Service answered 503, and the status
//! address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::extract::Request;
use berth_ingress::{ClassConfig, IngressController, WatchConfig};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::net::TcpListener;

/// A backend answering `<name> <path> xff=<..> proto=<..> host=<..>`; `/slow` takes 800 ms.
async fn backend(name: &'static str) -> Result<u16> {
    let reply = move |req: Request| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        format!(
            "{name} {} xff={} proto={} host={}",
            req.uri().path(),
            h("x-forwarded-for"),
            h("x-forwarded-proto"),
            h("x-forwarded-host")
        )
    };
    let app = axum::Router::new().fallback(reply);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

async fn apply<K>(client: &Client, body: serde_json::Value) -> Result<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &serde_json::from_value(body)?)
        .await?;
    Ok(())
}

async fn service(client: &Client, name: &str, ports: &[u16]) -> Result<()> {
    apply::<Service>(
        client,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }),
    )
    .await?;
    // One slice per endpoint port (a slice's ports apply to all its endpoints).
    for (i, port) in ports.iter().enumerate() {
        apply::<EndpointSlice>(
            client,
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-{i}"),
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
            }),
        )
        .await?;
    }
    Ok(())
}

fn tls_secret(name: &str, host: &str) -> Result<(Secret, String)> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec![host.to_owned()])?;
    let pem = cert.pem();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), ByteString(pem.clone().into_bytes())),
            (
                "tls.key".to_string(),
                ByteString(signing_key.serialize_pem().into_bytes()),
            ),
        ])),
        ..Default::default()
    };
    Ok((secret, pem))
}

fn path(p: &str, ty: &str, svc: &str) -> serde_json::Value {
    json!({"path": p, "pathType": ty,
           "backend": {"service": {"name": svc, "port": {"name": "http"}}}})
}

struct Http {
    client: reqwest::Client,
    http: SocketAddr,
    https: SocketAddr,
}

impl Http {
    async fn get(&self, host: &str, p: &str) -> Result<(u16, String)> {
        let url = format!("http://{host}:{}{p}", self.http.port());
        let resp = self.client.get(url).send().await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    }
    async fn get_tls(&self, host: &str, p: &str) -> Result<(u16, String)> {
        let url = format!("https://{host}:{}{p}", self.https.port());
        let resp = self.client.get(url).send().await.context("HTTPS request")?;
        Ok((resp.status().as_u16(), resp.text().await?))
    }
}

async fn eventually<F, Fut>(what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    for _ in 0..200 {
        if f().await.unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("timed out waiting for {what}")
}

#[tokio::test]
async fn routes_two_hosts_tls_reload_and_bad_backends() -> Result<()> {
    let server = berth_apiserver::ApiServer::in_memory().await?;
    let client = Client::new(server.router(), "default");

    let alpha1 = backend("alpha1").await?;
    let alpha2 = backend("alpha2").await?;
    let beta = backend("beta").await?;
    service(&client, "alpha", &[alpha1, alpha2]).await?;
    service(&client, "beta", &[beta]).await?;
    let (a_secret, a_pem) = tls_secret("a-tls", "a.example")?;
    let (b_secret, b_pem) = tls_secret("b-tls", "b.example")?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    secrets.create(&PostParams::default(), &a_secret).await?;
    secrets.create(&PostParams::default(), &b_secret).await?;

    apply::<Ingress>(
        &client,
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web"},
            "spec": {
                "ingressClassName": "berth",
                "tls": [{"hosts": ["a.example"], "secretName": "a-tls"},
                        {"hosts": ["b.example"], "secretName": "b-tls"}],
                "rules": [
                    {"host": "a.example", "http": {"paths": [path("/", "Prefix", "alpha")]}},
                    {"host": "b.example", "http": {"paths": [
                        path("/app", "Prefix", "beta"),
                        path("/exact", "Exact", "alpha"),
                    ]}},
                    {"host": "c.example", "http": {"paths": [path("/", "Prefix", "ghost")]}},
                ],
            },
        }),
    )
    .await?;
    // Another class's Ingress is not served.
    apply::<Ingress>(&client, json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "other"},
        "spec": {"ingressClassName": "nginx",
                 "rules": [{"host": "d.example", "http": {"paths": [path("/", "Prefix", "beta")]}}]},
    }))
    .await?;

    let controller = IngressController::new(WatchConfig {
        class: ClassConfig::default(),
        publish: vec!["127.0.0.1".into()],
    });
    let http_listener = TcpListener::bind("127.0.0.1:0").await?;
    let https_listener = TcpListener::bind("127.0.0.1:0").await?;
    let (http_addr, https_addr) = (http_listener.local_addr()?, https_listener.local_addr()?);
    let runner = controller.clone();
    let watch_client = client.clone();
    let task = tokio::spawn(async move {
        runner
            .run(watch_client, Some(http_listener), Some(https_listener))
            .await
    });

    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .add_root_certificate(reqwest::Certificate::from_pem(a_pem.as_bytes())?)
        .add_root_certificate(reqwest::Certificate::from_pem(b_pem.as_bytes())?);
    for host in ["a.example", "b.example", "c.example", "d.example"] {
        builder = builder.resolve(host, http_addr).resolve(host, https_addr);
    }
    let http = Http {
        client: builder.build()?,
        http: http_addr,
        https: https_addr,
    };

    eventually("routes", || async {
        Ok(http.get("a.example", "/").await?.0 == 200)
    })
    .await?;

    // Host rules, Prefix per element, Exact, round-robin and forwarding headers.
    let (status, body) = http.get("a.example", "/shop/cart").await?;
    assert_eq!(status, 200);
    assert!(body.starts_with("alpha"), "{body}");
    assert!(body.contains("/shop/cart"), "{body}");
    assert!(body.contains("xff=127.0.0.1"), "{body}");
    assert!(body.contains("proto=http "), "{body}");
    assert!(
        body.contains(&format!("host=a.example:{}", http_addr.port())),
        "{body}"
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (_, body) = http.get("a.example", "/").await?;
        seen.insert(body.split(' ').next().unwrap_or("").to_owned());
    }
    assert_eq!(seen.len(), 2, "balanced over both endpoints: {seen:?}");
    assert!(http.get("b.example", "/app/x").await?.1.starts_with("beta"));
    assert!(http.get("b.example", "/app").await?.1.starts_with("beta"));
    assert_eq!(
        http.get("b.example", "/appx").await?.0,
        404,
        "Prefix matches whole elements"
    );
    assert!(
        http.get("b.example", "/exact")
            .await?
            .1
            .starts_with("alpha")
    );
    assert_eq!(
        http.get("b.example", "/exact/more").await?.0,
        404,
        "Exact is exact"
    );
    assert_eq!(
        http.get("d.example", "/").await?.0,
        404,
        "another class's Ingress"
    );
    // A missing Service: 503, and the proxy keeps serving.
    assert_eq!(http.get("c.example", "/").await?.0, 503);

    // TLS: each host gets its own certificate by SNI (the client checks it).
    let (status, body) = http.get_tls("a.example", "/t").await?;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("alpha") && body.contains("proto=https"),
        "{body}"
    );
    let (status, body) = http.get_tls("b.example", "/app").await?;
    assert_eq!(status, 200);
    assert!(body.starts_with("beta"), "{body}");
    assert!(
        http.get_tls("c.example", "/").await.is_err(),
        "no certificate for c.example"
    );

    // The status shows the published address.
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "default");
    eventually("the status", || async {
        let ing = ingresses.get("web").await?;
        Ok(ing
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .is_some_and(|l| l.iter().any(|i| i.ip.as_deref() == Some("127.0.0.1"))))
    })
    .await?;
    assert!(
        ingresses
            .get("other")
            .await?
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .is_none(),
        "another class's Ingress gets no status from us"
    );

    // Reload with a request in flight: it completes on the backend it started on.
    let slow = {
        let c = http.client.clone();
        let url = format!("http://a.example:{}/slow", http_addr.port());
        tokio::spawn(async move {
            let r = c.get(url).send().await?;
            anyhow::Ok((r.status().as_u16(), r.text().await?))
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    ingresses
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rules": [
                {"host": "a.example", "http": {"paths": [path("/", "Prefix", "beta")]}},
            ]}})),
        )
        .await?;
    eventually("the new route", || async {
        Ok(http.get("a.example", "/").await?.1.starts_with("beta"))
    })
    .await?;
    let (status, body) = slow.await??;
    assert_eq!(status, 200, "the in-flight request survived the reload");
    assert!(
        body.starts_with("alpha") && body.contains("/slow"),
        "{body}"
    );

    task.abort();
    Ok(())
}
