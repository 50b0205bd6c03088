//! Security through kube-rs over TCP + TLS with the kubeconfigs the PKI writes: the CA and
//! certificates (made once, reused, keys 0600 and refused when readable by others), x509 and
//! token authentication (401 without), the built-in authorizers (cluster-admin, read-only,
//! node identities with NodeRestriction: 403 with Kubernetes' messages), the access reviews,
//! and the limits (413 bodies, 429 beyond the in-flight limit with watches exempt).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::Result;
use berth_apiserver::{ApiServer, auth, limits::Limits, tls};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    SelfSubjectRulesReview, SelfSubjectRulesReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

/// A TLS server on a free loopback port, its PKI and directory.
struct Tls {
    url: String,
    pki: tls::Pki,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tls {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const TOKENS: &str = "reader-token,rita,1001,\"berth:read-only\"\nnode-token,system:node:n1,1002,system:nodes\nplain-token,paul,1003\n";

async fn start_with(server: ApiServer) -> Result<Tls> {
    let dir = tempfile::tempdir()?;
    let pki = tls::Pki::load_or_create(dir.path().join("pki"), &["127.0.0.1".to_owned()])?;
    let tokens = auth::StaticTokens::parse_csv(std::path::Path::new("tokens.csv"), TOKENS)?
        .merge(auth::StaticTokens::admin("admin-token"));
    let server = server.with_authenticator(
        auth::Union::new()
            .with(auth::ClientCertificates)
            .with(tokens),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}", listener.local_addr()?);
    let config = pki.server_config()?;
    let router = server.router();
    let task = tokio::spawn(async move {
        let _ = tls::serve(listener, router, config, std::future::pending()).await;
    });
    Ok(Tls {
        url,
        pki,
        _dir: dir,
        task,
    })
}

async fn start() -> Result<Tls> {
    start_with(ApiServer::in_memory().await?).await
}

async fn client_from(kubeconfig: Value) -> Result<Client> {
    let kc: Kubeconfig = serde_json::from_value(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

impl Tls {
    async fn admin(&self) -> Result<Client> {
        client_from(self.pki.admin_kubeconfig(&self.url)?).await
    }

    async fn cert(&self, user: &str, groups: &[&str]) -> Result<Client> {
        client_from(self.pki.kubeconfig(&self.url, user, groups)?).await
    }

    async fn token(&self, token: Option<&str>) -> Result<Client> {
        let credential = match token {
            Some(t) => tls::Credential::Token(t.to_owned()),
            None => tls::Credential::None,
        };
        client_from(tls::kubeconfig(
            &self.url,
            Some(self.pki.ca_pem()),
            credential,
        ))
        .await
    }
}

fn api_error<T: std::fmt::Debug>(r: kube::Result<T>) -> (u16, String, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

fn pod(name: &str, node: &str, secret: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "busybox", "env": [
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": secret, "key": "pw"}}},
            ]}],
        },
    }))
    .unwrap()
}

async fn can_i(client: &Client, verb: &str, resource: &str, namespace: &str) -> Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let out = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(out.status.unwrap().allowed)
}

#[test]
fn the_pki_is_made_once_reused_and_keys_stay_private() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki_dir = dir.path().join("pki");
    let hosts = tls::default_hosts("127.0.0.1:6443".parse()?);
    let first = tls::Pki::load_or_create(&pki_dir, &hosts)?;
    for key in ["ca.key", "apiserver.key"] {
        let mode = std::fs::metadata(pki_dir.join(key))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let serving = std::fs::read(pki_dir.join("apiserver.crt"))?;
    let again = tls::Pki::load_or_create(&pki_dir, &hosts)?;
    assert_eq!(first.ca_pem(), again.ca_pem(), "the CA is reused");
    assert_eq!(serving, std::fs::read(pki_dir.join("apiserver.crt"))?);
    // A new address gets a new serving certificate from the same CA.
    let more = [hosts.clone(), vec!["10.1.2.3".to_owned()]].concat();
    let third = tls::Pki::load_or_create(&pki_dir, &more)?;
    assert_eq!(first.ca_pem(), third.ca_pem());
    assert_ne!(serving, std::fs::read(pki_dir.join("apiserver.crt"))?);
    // A key others may read is refused, naming the file.
    std::fs::set_permissions(
        pki_dir.join("ca.key"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    let err = tls::Pki::load_or_create(&pki_dir, &hosts).unwrap_err();
    assert!(matches!(err, tls::Error::Insecure { .. }), "{err}");
    assert!(err.to_string().contains("ca.key"), "{err}");
    Ok(())
}

#[tokio::test]
async fn admin_certificate_and_tokens_authenticate_and_nothing_else_does() -> Result<()> {
    let s = start().await?;
    let admin = s.admin().await?;
    let cms = Api::<ConfigMap>::namespaced(admin.clone(), "default");
    cms.create(&PostParams::default(), &configmap("a")).await?;
    assert_eq!(cms.list(&ListParams::default()).await?.items.len(), 1);
    let me = Api::<SelfSubjectReview>::all(admin.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let info = me.status.unwrap().user_info.unwrap();
    assert_eq!(info.username.as_deref(), Some(tls::ADMIN_USER));
    let groups = info.groups.unwrap();
    assert!(
        groups.contains(&"system:masters".to_owned())
            && groups.contains(&"system:authenticated".to_owned()),
        "{groups:?}"
    );

    // The admin token works too.
    let by_token = s.token(Some("admin-token")).await?;
    assert_eq!(
        Api::<ConfigMap>::namespaced(by_token, "default")
            .list(&ListParams::default())
            .await?
            .items
            .len(),
        1
    );

    // No credentials, a wrong token: 401 Status, nothing changed; health and version stay open.
    let anonymous = s.token(None).await?;
    let (code, reason, _) = api_error(
        Api::<ConfigMap>::namespaced(anonymous.clone(), "default")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!((code, reason.as_str()), (401, "Unauthorized"));
    let (code, _, _) = api_error(
        Api::<ConfigMap>::namespaced(anonymous.clone(), "default")
            .create(&PostParams::default(), &configmap("b"))
            .await,
    );
    assert_eq!(code, 401);
    let wrong = s.token(Some("nope")).await?;
    let (code, _, _) = api_error(
        Api::<ConfigMap>::namespaced(wrong, "default")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(code, 401);
    assert_eq!(
        anonymous
            .request_text(http::Request::get("/healthz").body(vec![])?)
            .await?,
        "ok"
    );
    anonymous.apiserver_version().await?;
    assert_eq!(cms.list(&ListParams::default()).await?.items.len(), 1);

    // A certificate from another CA is refused at the handshake.
    let other_dir = tempfile::tempdir()?;
    let other = tls::Pki::load_or_create(other_dir.path(), &["127.0.0.1".to_owned()])?;
    let mut kc = other.admin_kubeconfig(&s.url)?;
    kc["clusters"][0]["cluster"]["certificate-authority-data"] = json!(base64_ca(&s.pki));
    let stranger = client_from(kc).await?;
    assert!(
        Api::<ConfigMap>::namespaced(stranger, "default")
            .list(&ListParams::default())
            .await
            .is_err()
    );
    Ok(())
}

fn base64_ca(pki: &tls::Pki) -> String {
    tls::kubeconfig("", Some(pki.ca_pem()), tls::Credential::None)["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn read_only_users_read_but_do_not_write() -> Result<()> {
    let s = start().await?;
    Api::<ConfigMap>::namespaced(s.admin().await?, "default")
        .create(&PostParams::default(), &configmap("a"))
        .await?;
    let reader = s.token(Some("reader-token")).await?;
    let cms = Api::<ConfigMap>::namespaced(reader.clone(), "default");
    assert_eq!(cms.list(&ListParams::default()).await?.items.len(), 1);
    cms.get("a").await?;
    let (code, reason, message) =
        api_error(cms.create(&PostParams::default(), &configmap("b")).await);
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "configmaps is forbidden: User \"rita\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    let (code, _, message) = api_error(cms.delete("a", &Default::default()).await);
    assert_eq!(code, 403);
    assert!(
        message.starts_with("configmaps \"a\" is forbidden: User \"rita\" cannot delete"),
        "{message}"
    );
    let (code, _, _) = api_error(
        Api::<Secret>::namespaced(reader.clone(), "default")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(code, 403, "secrets are not readable");
    assert!(can_i(&reader, "list", "pods", "default").await?);
    assert!(!can_i(&reader, "create", "pods", "default").await?);
    // A user in no group gets nothing but discovery and the self reviews.
    let plain = s.token(Some("plain-token")).await?;
    let (code, _, _) = api_error(
        Api::<ConfigMap>::namespaced(plain.clone(), "default")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(code, 403);
    plain.list_api_groups().await?;
    assert!(!can_i(&plain, "get", "pods", "default").await?);
    let rules = Api::<SelfSubjectRulesReview>::all(reader)
        .create(
            &PostParams::default(),
            &SelfSubjectRulesReview {
                spec: SelfSubjectRulesReviewSpec {
                    namespace: Some("default".into()),
                },
                ..Default::default()
            },
        )
        .await?
        .status
        .unwrap();
    assert!(!rules.incomplete);
    assert!(rules.resource_rules.iter().any(|r| {
        r.verbs == ["get", "list", "watch"]
            && r.resources
                .as_ref()
                .is_some_and(|rs| rs.contains(&"pods".to_owned()))
    }));
    Ok(())
}

#[tokio::test]
async fn nodes_write_only_their_own_objects() -> Result<()> {
    let s = start().await?;
    let admin = s.admin().await?;
    let n1 = s.cert("system:node:n1", &["system:nodes"]).await?;
    let node_api = Api::<Node>::all(n1.clone());
    let node = |name: &str| -> Node {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    node_api.create(&PostParams::default(), &node("n1")).await?;
    let (code, _, message) = api_error(node_api.create(&PostParams::default(), &node("n2")).await);
    assert_eq!(code, 403);
    assert!(
        message.contains("node \"n1\" is not allowed to create node \"n2\""),
        "{message}"
    );
    Api::<Node>::all(admin.clone())
        .create(&PostParams::default(), &node("n2"))
        .await?;
    let label = Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}));
    node_api
        .patch("n1", &PatchParams::default(), &label)
        .await?;
    let (code, _, _) = api_error(node_api.patch("n2", &PatchParams::default(), &label).await);
    assert_eq!(code, 403);
    assert_eq!(
        node_api.list(&ListParams::default()).await?.items.len(),
        2,
        "nodes read all nodes"
    );

    // Pods: status of its own pods only.
    let pods_admin = Api::<Pod>::namespaced(admin.clone(), "default");
    pods_admin
        .create(&PostParams::default(), &pod("mine", "n1", "s-mine"))
        .await?;
    pods_admin
        .create(&PostParams::default(), &pod("theirs", "n2", "s-theirs"))
        .await?;
    let pods = Api::<Pod>::namespaced(n1.clone(), "default");
    let running = Patch::Merge(json!({"status": {"phase": "Running"}}));
    pods.patch_status("mine", &PatchParams::default(), &running)
        .await?;
    let (code, reason, message) = api_error(
        pods.patch_status("theirs", &PatchParams::default(), &running)
            .await,
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert!(message.starts_with("pods \"theirs\" is forbidden: User \"system:node:n1\" cannot patch resource \"pods/status\" in API group \"\" in the namespace \"default\""), "{message}");
    let phase = pods_admin.get("theirs").await?.status.and_then(|s| s.phase);
    assert_ne!(phase.as_deref(), Some("Running"), "unchanged");
    let (code, _, _) = api_error(
        pods.create(&PostParams::default(), &pod("new", "n1", "x"))
            .await,
    );
    assert_eq!(code, 403, "nodes do not create pods");
    assert_eq!(pods.list(&ListParams::default()).await?.items.len(), 2);

    // Secrets: only those a pod bound to the node uses.
    let secret = |name: &str| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"pw": "x"}}))
            .unwrap()
    };
    let secrets_admin = Api::<Secret>::namespaced(admin.clone(), "default");
    secrets_admin
        .create(&PostParams::default(), &secret("s-mine"))
        .await?;
    secrets_admin
        .create(&PostParams::default(), &secret("s-theirs"))
        .await?;
    let secrets = Api::<Secret>::namespaced(n1.clone(), "default");
    secrets.get("s-mine").await?;
    let (code, _, _) = api_error(secrets.get("s-theirs").await);
    assert_eq!(code, 403);
    let (code, _, _) = api_error(secrets.list(&ListParams::default()).await);
    assert_eq!(code, 403);

    // Leases: its own, in kube-node-lease.
    let lease = |name: &str| -> Lease {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"holderIdentity": name}}),
        )
        .unwrap()
    };
    let leases = Api::<Lease>::namespaced(n1.clone(), "kube-node-lease");
    leases.create(&PostParams::default(), &lease("n1")).await?;
    let (code, _, _) = api_error(leases.create(&PostParams::default(), &lease("n2")).await);
    assert_eq!(code, 403);
    let (code, _, _) = api_error(
        Api::<Lease>::namespaced(n1.clone(), "default")
            .create(&PostParams::default(), &lease("n1"))
            .await,
    );
    assert_eq!(code, 403);

    // can-i agrees with what happened.
    assert!(can_i(&n1, "list", "pods", "default").await?);
    assert!(!can_i(&n1, "create", "pods", "default").await?);
    assert!(can_i(&admin, "create", "pods", "default").await?);
    Ok(())
}

#[tokio::test]
async fn bodies_over_3_mib_get_413_and_nothing_is_stored() -> Result<()> {
    let s = start().await?;
    let admin = s.admin().await?;
    let cms = Api::<ConfigMap>::namespaced(admin, "default");
    let mut big = configmap("big");
    big.data = Some([("k".to_owned(), "x".repeat(3 * 1024 * 1024 + 1))].into());
    let (code, reason, _) = api_error(cms.create(&PostParams::default(), &big).await);
    assert_eq!((code, reason.as_str()), (413, "RequestEntityTooLarge"));
    let (code, _, _) = api_error(cms.get("big").await);
    assert_eq!(code, 404);
    Ok(())
}

/// A request whose body never ends holds its in-flight permit.
fn stalled_post(
    path: &str,
) -> (
    http::Request<axum::body::Body>,
    futures::channel::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
) {
    let (tx, rx) = futures::channel::mpsc::channel(1);
    let req = http::Request::post(path)
        .header("content-type", "application/json")
        .body(axum::body::Body::from_stream(rx))
        .unwrap();
    (req, tx)
}

#[tokio::test]
async fn in_flight_limits_answer_429_and_spare_watches() -> Result<()> {
    use tower::ServiceExt;
    let server = ApiServer::in_memory().await?.with_limits(Limits {
        max_read_only: 1,
        max_mutating: 1,
    });
    let router = server.router();
    let (held, _tx) = stalled_post("/api/v1/namespaces/default/configmaps");
    let holder = tokio::spawn(router.clone().oneshot(held));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (second, _tx2) = stalled_post("/api/v1/namespaces/default/configmaps");
    let resp = router.clone().oneshot(second).await?;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await?)?;
    assert_eq!(body["reason"], "TooManyRequests");
    // Reads have their own pool, and watches take no permit from it.
    let watch = router
        .clone()
        .oneshot(
            http::Request::get("/api/v1/namespaces/default/configmaps?watch=true")
                .body(axum::body::Body::empty())?,
        )
        .await?;
    assert_eq!(watch.status(), 200);
    let list = router
        .clone()
        .oneshot(
            http::Request::get("/api/v1/namespaces/default/configmaps")
                .body(axum::body::Body::empty())?,
        )
        .await?;
    assert_eq!(list.status(), 200);
    drop(watch);
    holder.abort();
    Ok(())
}

#[tokio::test]
async fn the_in_process_server_stays_unauthenticated_admin() -> Result<()> {
    let server = ApiServer::in_memory().await?;
    let client = Client::new(server.router(), "default");
    assert!(can_i(&client, "delete", "nodes", "").await?);
    let me = Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    assert_eq!(
        me.status.unwrap().user_info.unwrap().username.as_deref(),
        Some("system:admin")
    );
    Ok(())
}
