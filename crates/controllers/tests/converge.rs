//! Property: any sequence of user edits to a Deployment (scale, template change, pause,
//! resume), applied while the controllers work, converges to the desired replica count with
//! every pod on the final template and no ReplicaSet holding extra replicas.

mod common;

use std::time::Duration;

use berth_controllers::ControllerManager;
use common::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Edit {
    Scale(i32),
    Image(u8),
    Pause,
    Resume,
    Wait(u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..8i32).prop_map(Edit::Scale),
        (0..4u8).prop_map(Edit::Image),
        Just(Edit::Pause),
        Just(Edit::Resume),
        (0..150u64).prop_map(Edit::Wait),
    ]
}

async fn run(edits: Vec<Edit>) -> anyhow::Result<()> {
    let (_server, client) = server().await?;
    let _kubelet = FakeKubelet::start(client.clone(), Duration::from_millis(5));
    let m = ControllerManager::new(client.clone())
        .controllers(["replicaset", "deployment"])?
        .spawn();
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "prop"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "prop"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": "prop"}},
                "spec": {"containers": [{"name": "c", "image": "app:0"}]}
            }
        }
    }))?;
    api.create(&PostParams::default(), &d).await?;
    let (mut replicas, mut image) = (3, 0u8);
    let merge = |v: serde_json::Value| Patch::Merge(v);
    for e in &edits {
        match e {
            Edit::Scale(n) => {
                replicas = *n;
                api.patch(
                    "prop",
                    &PatchParams::default(),
                    &merge(json!({"spec": {"replicas": n}})),
                )
                .await?;
            }
            Edit::Image(i) => {
                image = *i;
                api.patch(
                    "prop",
                    &PatchParams::default(),
                    &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": format!("app:{i}")}]}}}})),
                )
                .await?;
            }
            Edit::Pause => {
                api.patch(
                    "prop",
                    &PatchParams::default(),
                    &merge(json!({"spec": {"paused": true}})),
                )
                .await?;
            }
            Edit::Resume => {
                api.patch(
                    "prop",
                    &PatchParams::default(),
                    &merge(json!({"spec": {"paused": false}})),
                )
                .await?;
            }
            Edit::Wait(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        }
    }
    api.patch(
        "prop",
        &PatchParams::default(),
        &merge(json!({"spec": {"paused": false}})),
    )
    .await?;
    let want_image = format!("app:{image}");
    let n = usize::try_from(replicas)?;
    wait_for("convergence", 30, || async {
        let pods = live_pods(&client, "default", "prop").await?;
        let rss: Api<ReplicaSet> = Api::default_namespaced(client.clone());
        let total: i32 = rss
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|r| r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
            .sum();
        let done =
            pods.len() == n && pods.iter().all(|p| image_of(p) == want_image) && total == replicas;
        Ok(done.then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e} after {edits:?}"))?;
    m.shutdown().await?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_edits_converge_to_the_desired_replicas(edits in proptest::collection::vec(edit(), 1..8)) {
        init_tracing();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(run(edits)).unwrap();
    }
}
