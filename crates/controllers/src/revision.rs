//! ControllerRevisions: the template history of DaemonSets and StatefulSets.
//!
//! Each version of an owner's pod template is stored once as a `ControllerRevision` named
//! `<owner>-<hash>`, controlled by the owner, labelled like its pods plus
//! `controller-revision-hash`, with `data: {"spec": {"template": ...}}` and a `revision` number
//! one higher than the owner's previous newest. Pods carry the same label so a controller knows
//! which version each runs; history beyond `revisionHistoryLimit` is pruned, never a revision a
//! live pod or the status still names.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::error::{Error, Result, is_conflict, is_not_found};
use crate::pods;

/// The label with a pod's (and revision's) template version.
pub const REVISION_HASH: &str = "controller-revision-hash";

/// The revisions `owner` (uid `uid`) controls, oldest first.
pub fn owned_by(
    revisions: &Store<ControllerRevision>,
    ns: &str,
    uid: &str,
) -> Vec<Arc<ControllerRevision>> {
    let mut mine: Vec<Arc<ControllerRevision>> = revisions
        .state()
        .into_iter()
        .filter(|r| r.metadata.namespace.as_deref() == Some(ns) && pods::controlled_by(&**r, uid))
        .collect();
    mine.sort_by_key(|r| r.revision);
    mine
}

/// The pod template a revision recorded.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let data = rev.data.as_ref()?;
    serde_json::from_value(data.0.pointer("/spec/template")?.clone()).ok()
}

/// Records `template` as revision `<owner>-<hash>` unless `mine` (from [`owned_by`]) has it;
/// returns the revision's name. `labels` are the owner's selector labels.
pub async fn ensure<K: Resource<DynamicType = ()>>(
    client: &Client,
    owner: &K,
    mine: &[Arc<ControllerRevision>],
    labels: BTreeMap<String, String>,
    template: &PodTemplateSpec,
    hash: &str,
) -> Result<String> {
    let ns = owner.namespace().unwrap_or_default();
    let name = format!("{}-{hash}", owner.name_any());
    if mine.iter().any(|r| r.name_any() == name) {
        return Ok(name);
    }
    let revision = mine.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
    let mut labels = labels;
    labels.insert(REVISION_HASH.into(), hash.into());
    let cr = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            owner_references: Some(vec![pods::owner_ref(owner)]),
            ..Default::default()
        },
        data: Some(RawExtension(json!({"spec": {"template": template}}))),
        revision,
    };
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams::default(), &cr).await {
        Ok(_) => Ok(name),
        Err(e) if is_conflict(&e) => Ok(name),
        Err(e) => Err(Error::api(format!("create ControllerRevision {name}"))(e)),
    }
}

/// Deletes the oldest revisions of `mine` beyond `limit`, keeping every name in `keep` (the
/// current and update revisions, those live pods run).
pub async fn prune(
    client: &Client,
    ns: &str,
    mine: &[Arc<ControllerRevision>],
    keep: &[&str],
    limit: i32,
) -> Result<()> {
    let limit = usize::try_from(limit.max(0)).unwrap_or(0);
    let removable: Vec<&Arc<ControllerRevision>> = mine
        .iter()
        .filter(|r| !keep.contains(&r.name_any().as_str()))
        .collect();
    if removable.len() <= limit {
        return Ok(());
    }
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    for r in &removable[..removable.len() - limit] {
        match api.delete(&r.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(Error::api(format!(
                    "delete ControllerRevision {}",
                    r.name_any()
                ))(e));
            }
        }
    }
    Ok(())
}
