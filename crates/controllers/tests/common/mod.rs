//! Shared test scaffolding: an in-process API server, a stand-in kubelet that marks pods
//! Running and Ready, and polling helpers.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

pub async fn server() -> anyhow::Result<(berth_apiserver::ApiServer, Client)> {
    let server = berth_apiserver::ApiServer::in_memory().await?;
    let client = Client::new(server.router(), "default");
    Ok((server, client))
}

/// A kubelet stand-in: turns every new pod Running and Ready (after `delay`) while enabled.
#[derive(Clone)]
pub struct FakeKubelet {
    pub enabled: Arc<AtomicBool>,
}

impl FakeKubelet {
    pub fn start(client: Client, delay: Duration) -> Self {
        let enabled = Arc::new(AtomicBool::new(true));
        let on = enabled.clone();
        let api: Api<Pod> = Api::all(client.clone());
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(pod)) = stream.try_next().await {
                if !on.load(Ordering::SeqCst) || pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                if berth_controllers::pods::is_ready(&pod) {
                    continue;
                }
                let client = client.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = mark_ready(&client, &pod).await;
                });
            }
        });
        FakeKubelet { enabled }
    }

    pub fn pause(&self) {
        self.enabled.store(false, Ordering::SeqCst);
    }
}

pub async fn mark_ready(client: &Client, pod: &Pod) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)?
        .to_string();
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        }})),
    )
    .await?;
    Ok(())
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `secs`.
pub async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pods in `ns` with label `app=<app>` that are not being deleted.
pub async fn live_pods(client: &Client, ns: &str, app: &str) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&kube::api::ListParams::default().labels(&format!("app={app}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

pub fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
