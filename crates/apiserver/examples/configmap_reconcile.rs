//! A kube-rs reconciler tested against the in-process API server: a `Controller` stamps every
//! ConfigMap labelled `greet=yes` with a `greeting` key; no cluster, no socket.
//!
//! Run: `cargo run -p berth-apiserver --example configmap_reconcile`

use std::sync::Arc;
use std::time::Duration;

use berth_apiserver::ApiServer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{Controller, controller::Action, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Error(#[from] kube::Error);

async fn reconcile(cm: Arc<ConfigMap>, api: Arc<Api<ConfigMap>>) -> Result<Action, Error> {
    let has = cm.data.as_ref().is_some_and(|d| d.contains_key("greeting"));
    if !has {
        let patch = json!({"data": {"greeting": format!("hello, {}", cm.name_any())}});
        api.patch(
            &cm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    }
    Ok(Action::await_change())
}

fn error_policy(_: Arc<ConfigMap>, _: &Error, _: Arc<Api<ConfigMap>>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    // The whole API server, in memory, as the client's transport.
    let server = ApiServer::in_memory().await?;
    let client = Client::new(server.router(), "default");
    let api: Api<ConfigMap> = Api::default_namespaced(client);

    let controller = Controller::new(api.clone(), watcher::Config::default().labels("greet=yes"))
        .run(reconcile, error_policy, Arc::new(api.clone()))
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    for name in ["alpha", "beta"] {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"greet": "yes"}}}),
        )?;
        api.create(&PostParams::default(), &cm).await?;
    }
    loop {
        let list = api.list(&ListParams::default().labels("greet=yes")).await?;
        let done: Vec<String> = list
            .items
            .iter()
            .filter_map(|c| c.data.as_ref()?.get("greeting").cloned())
            .collect();
        if done.len() == 2 {
            println!("{}", done.join("\n"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    Ok(())
}
