//! kube-rs against the in-process server: server-side apply (managedFields, two managers,
//! conflicts as Kubernetes reports them, force, removal of fields a manager stops applying,
//! Update entries of other writes) and CustomResourceDefinitions (a `#[derive(CustomResource)]`
//! kind round-tripping through its CRD: validation, pruning, status and scale subresources,
//! discovery, table columns, several versions, deletion of the CRD deleting its objects).

use anyhow::Result;
use berth_apiserver::ApiServer;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::{ApiResource, Discovery};
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

async fn client() -> Result<Client> {
    let server = ApiServer::in_memory().await?;
    Ok(Client::new(server.router(), "default"))
}

fn apply_deployment(replicas: Option<i32>, image: &str, labels: bool) -> serde_json::Value {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": image}]}},
        },
    });
    if let Some(r) = replicas {
        d["spec"]["replicas"] = json!(r);
    }
    if labels {
        d["metadata"]["labels"] = json!({"tier": "frontend"});
    }
    d
}

#[tokio::test]
async fn server_side_apply_owns_fields_conflicts_and_forces() -> Result<()> {
    let client = client().await?;
    let deploys: Api<Deployment> = Api::namespaced(client, "default");
    let alice = PatchParams::apply("alice");
    let d = deploys
        .patch(
            "web",
            &alice,
            &Patch::Apply(apply_deployment(Some(2), "nginx:1", true)),
        )
        .await?;
    let mf = d.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("alice"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    assert_eq!(mf[0].fields_type.as_deref(), Some("FieldsV1"));
    let fields = serde_json::to_value(&mf[0].fields_v1)?;
    assert_eq!(fields["f:spec"]["f:replicas"], json!({}));
    assert!(
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"]["f:image"]
            .is_object(),
        "{fields}"
    );

    // Bob changes alice's replicas: 409 with the field and the manager, nothing changes.
    let bob_body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 5}});
    let err = deploys
        .patch(
            "web",
            &PatchParams::apply("bob"),
            &Patch::Apply(bob_body.clone()),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"alice\" using apps/v1: .spec.replicas"
    );
    assert_eq!(deploys.get("web").await?.spec.unwrap().replicas, Some(2));

    // Forced: bob owns replicas now, alice no longer does.
    let d = deploys
        .patch(
            "web",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(bob_body),
        )
        .await?;
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(5));
    let owners: Vec<(String, bool)> = d
        .managed_fields()
        .iter()
        .map(|e| {
            let f = serde_json::to_value(&e.fields_v1).unwrap();
            (
                e.manager.clone().unwrap(),
                f["f:spec"].get("f:replicas").is_some(),
            )
        })
        .collect();
    assert!(owners.contains(&("alice".into(), false)), "{owners:?}");
    assert!(owners.contains(&("bob".into(), true)), "{owners:?}");

    // Alice stops applying the label: it is removed; replicas (bob's) stays.
    let d = deploys
        .patch(
            "web",
            &alice,
            &Patch::Apply(apply_deployment(None, "nginx:2", false)),
        )
        .await?;
    assert!(d.labels().get("tier").is_none(), "{:?}", d.labels());
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(5));
    let image = d.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("nginx:2"));

    // A merge patch is an Update: the patcher takes the field, and alice's next apply of a
    // different image conflicts with it.
    deploys
        .patch(
            "web",
            &PatchParams {
                field_manager: Some("carol".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:3"}]}}}})),
        )
        .await?;
    let d = deploys.get("web").await?;
    let carol = d
        .managed_fields()
        .iter()
        .find(|e| e.manager.as_deref() == Some("carol"))
        .expect("carol's entry")
        .clone();
    assert_eq!(carol.operation.as_deref(), Some("Update"));
    let err = deploys
        .patch(
            "web",
            &alice,
            &Patch::Apply(apply_deployment(None, "nginx:4", false)),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!(status.code, 409);
    assert!(
        status.message.contains("conflict with \"carol\""),
        "{}",
        status.message
    );

    // Creates record an Update entry for their manager.
    let pp = PostParams {
        field_manager: Some("creator".into()),
        ..PostParams::default()
    };
    let mut other: Deployment = serde_json::from_value(apply_deployment(Some(1), "x", false))?;
    other.metadata.name = Some("other".into());
    let created = deploys.create(&pp, &other).await?;
    let e = &created.managed_fields()[0];
    assert_eq!(
        (e.manager.as_deref(), e.operation.as_deref()),
        (Some("creator"), Some("Update"))
    );
    // Apply without a field manager, and of another kind, are refused.
    let err = deploys
        .patch(
            "web",
            &PatchParams::apply(""),
            &Patch::Apply(apply_deployment(None, "x", false)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );
    Ok(())
}

/// The docs' CronTab, as a kube-rs derived kind.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, JsonSchema, PartialEq)]
#[kube(
    group = "stable.example.com",
    version = "v1",
    kind = "CronTab",
    namespaced,
    status = "CronTabStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(name = "Spec", type_ = "string", json_path = ".spec.cronSpec"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
struct CronTabSpec {
    cron_spec: String,
    image: String,
    #[schemars(range(min = 0, max = 10))]
    replicas: i32,
}

#[derive(Serialize, Deserialize, Debug, Clone, JsonSchema, PartialEq, Default)]
struct CronTabStatus {
    replicas: i32,
}

async fn wait_established(crds: &Api<CustomResourceDefinition>, name: &str) -> Result<()> {
    let crd = crds.get(name).await?;
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"),
        "{conditions:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_derived_custom_resource_round_trips_through_its_crd() -> Result<()> {
    let client = client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &CronTab::crd()).await?;
    wait_established(&crds, "crontabs.stable.example.com").await?;

    // Discovery (aggregated, as kube-rs asks) finds the kind and its subresources.
    let discovery = Discovery::new(client.clone()).run().await?;
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk(
            "stable.example.com",
            "v1",
            "CronTab",
        ))
        .expect("CronTab discovered");
    assert_eq!(ar.plural, "crontabs");
    assert!(
        caps.subresources
            .iter()
            .any(|(s, _)| s.plural == "status" || s.plural == "crontabs/status"),
        "{:?}",
        caps.subresources
    );

    let tabs: Api<CronTab> = Api::namespaced(client.clone(), "default");
    let tab = CronTab::new(
        "every-minute",
        CronTabSpec {
            cron_spec: "* * * * */5".into(),
            image: "my-cron-image".into(),
            replicas: 1,
        },
    );
    let created = tabs.create(&PostParams::default(), &tab).await?;
    assert_eq!(created.spec, tab.spec);
    assert!(created.status.is_none(), "status is a subresource");
    assert_eq!(tabs.get("every-minute").await?.spec, tab.spec);

    // Schema validation: a 422 naming the field.
    let mut bad = tab.clone();
    bad.metadata.name = Some("bad".into());
    bad.spec.replicas = 11;
    let err = tabs.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (422, "Invalid"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("spec.replicas"),
        "{}",
        status.message
    );

    // Pruning: unknown fields are dropped (Strict refuses them).
    let dynamic: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::erase::<CronTab>(&()),
    );
    let mut obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "stable.example.com/v1", "kind": "CronTab",
        "metadata": {"name": "pruned"},
        "spec": {"cronSpec": "x", "image": "i", "replicas": 2, "bogus": true},
        "extra": 1,
    }))?;
    let stored = dynamic.create(&PostParams::default(), &obj).await?;
    assert!(
        stored.data["spec"].get("bogus").is_none(),
        "{:?}",
        stored.data
    );
    assert!(stored.data.get("extra").is_none());
    obj.metadata.name = Some("strict".into());
    let strict = PostParams::default();
    let url_strict = dynamic
        .create(&strict, &obj)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(url_strict.is_ok(), "Warn is the default: {url_strict:?}");

    // Status subresource: the main resource ignores status, /status sets it.
    let mut with_status = tabs.get("every-minute").await?;
    with_status.status = Some(CronTabStatus { replicas: 3 });
    let replaced = tabs
        .replace("every-minute", &PostParams::default(), &with_status)
        .await?;
    assert!(replaced.status.is_none());
    let patched = tabs
        .patch_status(
            "every-minute",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 3}})),
        )
        .await?;
    assert_eq!(patched.status, Some(CronTabStatus { replicas: 3 }));

    // Scale subresource.
    let scale = tabs.get_scale("every-minute").await?;
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    assert_eq!(scale.status.unwrap().replicas, 3);
    tabs.patch_scale(
        "every-minute",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await?;
    assert_eq!(tabs.get("every-minute").await?.spec.replicas, 4);

    // Server-side apply works on custom kinds too.
    let applied = tabs
        .patch(
            "applied",
            &PatchParams::apply("ssa"),
            &Patch::Apply(json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab",
                "metadata": {"name": "applied"}, "spec": {"cronSpec": "y", "image": "i", "replicas": 0}})),
        )
        .await?;
    assert_eq!(applied.managed_fields()[0].manager.as_deref(), Some("ssa"));

    // Deleting the CRD deletes its objects and stops serving the kind.
    crds.delete("crontabs.stable.example.com", &DeleteParams::default())
        .await?;
    let err = tabs.list(&Default::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
    crds.create(&PostParams::default(), &CronTab::crd()).await?;
    assert!(tabs.list(&Default::default()).await?.items.is_empty());
    Ok(())
}

#[tokio::test]
async fn several_versions_share_storage_and_cluster_scope_works() -> Result<()> {
    let client = client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let schema = json!({"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}});
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.org"},
        "spec": {
            "group": "example.org", "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema}},
                {"name": "v1beta1", "served": true, "storage": false, "schema": {"openAPIV3Schema": schema}},
            ],
        },
    }))?;
    crds.create(&PostParams::default(), &crd).await?;
    let crd = crds.get("widgets.example.org").await?;
    assert_eq!(
        crd.status.unwrap().stored_versions,
        Some(vec!["v1".to_owned()])
    );
    let v1: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk("example.org", "v1", "Widget")),
    );
    let beta: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk("example.org", "v1beta1", "Widget")),
    );
    let w: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.org/v1beta1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3}}))?;
    beta.create(&PostParams::default(), &w).await?;
    let got = v1.get("w1").await?;
    assert_eq!(got.types.unwrap().api_version, "example.org/v1");
    assert_eq!(got.data["spec"]["size"], 3);
    assert!(got.metadata.namespace.is_none());

    // A CRD whose name is not plural.group, or with two storage versions, is invalid.
    let mut bad = serde_json::to_value(&crd_without_status(&crds, "widgets.example.org").await?)?;
    bad["metadata"] = json!({"name": "wrong.example.org"});
    let bad: CustomResourceDefinition = serde_json::from_value(bad)?;
    let err = crds.create(&PostParams::default(), &bad).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err:?}"
    );
    Ok(())
}

async fn crd_without_status(
    crds: &Api<CustomResourceDefinition>,
    name: &str,
) -> Result<CustomResourceDefinition> {
    let mut crd = crds.get(name).await?;
    crd.status = None;
    crd.metadata = Default::default();
    Ok(crd)
}
