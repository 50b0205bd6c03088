//! A whole cluster in one process, wired from the libraries: the reader's guide to how
//! `berth cluster up` fits together (it does the same, with TLS, a registry and one process per
//! node agent).
//!
//! - berth-store / berth-apiserver: the Kubernetes API over a store (in memory here);
//! - berth-scheduler: `SchedulerRunner` binds pending pods to nodes;
//! - berth-controllers: `ControllerManager` turns Deployments into ReplicaSets into pods;
//! - berth-node: an `Agent` registers a Node and runs the pods bound to it as containers.
//!
//! Every component talks to the API server through a `kube::Client` over the server's axum
//! router, in-process, with no socket. Run as root (the agent makes namespaces, mounts and
//! cgroups), with an image a registry serves, e.g. the one `scripts/demo.sh` pushes:
//! `sudo cargo run -p berth-examples --example cluster -- 127.0.0.1:5000/demo/web:1`.

use std::time::Duration;

use berth_apiserver::ApiServer;
use berth_controllers::ControllerManager;
use berth_node::{Agent, NodeConfig};
use berth_scheduler::runner::SchedulerRunner;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    // The agent runs containers through this very executable (container init, shim, pause):
    // these return at once unless the process was started as one of them.
    berth_namespaces::init::main_if_init();
    berth_node::shim::main_if_shim();
    tracing_subscriber::fmt::init();
    let image = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: cluster IMAGE (pullable from a registry)"))?;
    let state = tempfile::tempdir()?;
    tokio::runtime::Runtime::new()?.block_on(run(image, state.path()))
}

async fn run(image: String, state: &std::path::Path) -> anyhow::Result<()> {
    // 1. The API server, and a client that reaches it in-process.
    let server = ApiServer::in_memory().await?;
    let client = kube::Client::new(server.router(), "default");

    // 2. The scheduler and the controllers, until `stop`.
    let stop = CancellationToken::new();
    let scheduler = SchedulerRunner::new(client.clone(), &berth_scheduler::Config::default())?;
    let scheduler = tokio::spawn(scheduler.run(stop.clone().cancelled_owned()));
    let controllers = tokio::spawn(ControllerManager::new(client.clone()).run(stop.clone()));

    // 3. A node agent with its own state root and cgroup, its HTTP API on any free port.
    let mut config = NodeConfig::new("node-1", state.join("node-1"));
    config.cgroup_parent = format!("berth-example-{}/node-1", std::process::id()).into();
    config.port = 0;
    let agent = Agent::new(client.clone(), config)?;
    let agent = tokio::spawn(agent.run(stop.clone().cancelled_owned()));

    // 4. A Deployment, as kubectl would send it.
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "web", "image": image}],
                },
            },
        },
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;

    // 5. Watch it converge: controllers make the pods, the scheduler binds them, the agent
    //    starts their containers and reports them Running.
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    for _ in 0..600 {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        if list.items.iter().filter(|p| running(p)).count() == 2 {
            for p in &list.items {
                let spec = p.spec.as_ref();
                println!(
                    "{} Running on {}",
                    p.metadata.name.as_deref().unwrap_or(""),
                    spec.and_then(|s| s.node_name.as_deref()).unwrap_or("")
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 6. Delete the Deployment (the garbage collector removes its pods, the agent their
    //    containers), then stop everything.
    deployments.delete("web", &Default::default()).await?;
    for _ in 0..300 {
        if pods.list(&ListParams::default()).await?.items.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let _ = tokio::join!(scheduler, controllers, agent);
    Ok(())
}
