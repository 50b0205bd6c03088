//! Helpers every workload controller needs: pod state (active, ready, available), label
//! selectors, owner references and adoption, pods from templates, and `IntOrString` percentages.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{Error, Result, is_not_found};

/// The pod is neither finished nor being deleted (Kubernetes' `IsPodActive`).
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The pod's phase (`Pending` when unset).
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// When the pod's Ready condition turned True, if it is True.
pub fn ready_since(pod: &Pod) -> Option<Option<crate::runtime::clock::Timestamp>> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map(|t| t.0))
}

/// The pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now` (Kubernetes' `IsPodAvailable`).
pub fn is_available(
    pod: &Pod,
    min_ready_seconds: i32,
    now: crate::runtime::clock::Timestamp,
) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(t)) => crate::runtime::clock::plus_secs(t, i64::from(min_ready_seconds)) <= now,
    }
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether `obj`'s controller is the object with uid `uid`.
pub fn controlled_by<K: Resource>(obj: &K, uid: &str) -> bool {
    controller_of(obj.meta()).is_some_and(|r| r.uid == uid)
}

/// The controller owner reference pointing at `owner` (`controller` and `blockOwnerDeletion`
/// set, as Kubernetes' controllers set them).
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A label selector, parsed once, matching label maps.
#[derive(Debug, Clone)]
pub struct Selector {
    labels: BTreeMap<String, String>,
    exprs: Vec<(String, String, Vec<String>)>,
    /// `selector: {}` matches everything; a missing selector matches nothing.
    empty: bool,
}

impl Selector {
    /// Parses `sel`; an unknown operator is an error naming `what`.
    pub fn new(sel: Option<&LabelSelector>, what: &str) -> Result<Self> {
        let Some(sel) = sel else {
            return Ok(Selector {
                labels: BTreeMap::new(),
                exprs: Vec::new(),
                empty: false,
            });
        };
        let mut exprs = Vec::new();
        for e in sel.match_expressions.iter().flatten() {
            if !matches!(
                e.operator.as_str(),
                "In" | "NotIn" | "Exists" | "DoesNotExist"
            ) {
                return Err(Error::Invalid {
                    what: what.to_owned(),
                    message: format!("unknown selector operator {:?}", e.operator),
                });
            }
            exprs.push((
                e.key.clone(),
                e.operator.clone(),
                e.values.clone().unwrap_or_default(),
            ));
        }
        let labels = sel.match_labels.clone().unwrap_or_default();
        Ok(Selector {
            empty: labels.is_empty() && exprs.is_empty(),
            labels,
            exprs,
        })
    }

    /// Whether `labels` match.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        if self.empty {
            return true;
        }
        if self.labels.is_empty() && self.exprs.is_empty() {
            return false;
        }
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|(k, op, vals)| {
                let v = labels.get(k);
                match op.as_str() {
                    "In" => v.is_some_and(|v| vals.contains(v)),
                    "NotIn" => v.is_none_or(|v| !vals.contains(v)),
                    "Exists" => v.is_some(),
                    _ => v.is_none(),
                }
            })
    }
}

/// A pod for `owner` from `template`: its labels and annotations, its spec, a controller
/// owner reference, and `generateName` `<prefix>`.
pub fn pod_from_template<K: Resource<DynamicType = ()>>(
    template: &PodTemplateSpec,
    owner: &K,
    generate_name: &str,
) -> Pod {
    let tmeta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name.to_owned()),
            namespace: owner.namespace(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![owner_ref(owner)]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Resolves `maxSurge`/`maxUnavailable` against `total`: a number, or a percentage rounded
/// up (`round_up`, surge) or down (unavailable).
pub fn int_or_percent(
    v: Option<&IntOrString>,
    total: i32,
    round_up: bool,
    default: &str,
) -> Result<i32> {
    let s = match v {
        Some(IntOrString::Int(i)) => return Ok((*i).max(0)),
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    let pct: i64 = s
        .strip_suffix('%')
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| Error::Invalid {
            what: "int-or-percent".into(),
            message: format!("{s:?} is neither an integer nor a percentage"),
        })?;
    let num = pct * i64::from(total);
    let v = if round_up {
        (num + 99) / 100
    } else {
        num / 100
    };
    Ok(i32::try_from(v.max(0)).unwrap_or(i32::MAX))
}

/// The objects `owner` controls among `candidates` (same namespace), after adopting matching
/// orphans and releasing owned objects that no longer match (Kubernetes'
/// `ControllerRefManager.Claim*`). An owner being deleted adopts nothing.
pub async fn claim<K, O>(
    api: &Api<K>,
    owner: &O,
    uid: &str,
    selector: &Selector,
    candidates: &[Arc<K>],
) -> Result<Vec<Arc<K>>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    O: Resource<DynamicType = ()>,
{
    let mut owned = Vec::new();
    let deleting = owner.meta().deletion_timestamp.is_some();
    for obj in candidates {
        let meta = obj.meta();
        let matches = selector.matches(obj.labels());
        match controller_of(meta) {
            Some(r) if r.uid == uid => {
                if matches || meta.deletion_timestamp.is_some() {
                    owned.push(obj.clone());
                } else {
                    let refs: Vec<_> = meta
                        .owner_references
                        .iter()
                        .flatten()
                        .filter(|r| r.uid != uid)
                        .cloned()
                        .collect();
                    set_owner_refs(api, obj, refs, "release").await?;
                }
            }
            Some(_) => {}
            None if matches && !deleting && meta.deletion_timestamp.is_none() => {
                let mut refs = meta.owner_references.clone().unwrap_or_default();
                refs.push(owner_ref(owner));
                if let Some(adopted) = set_owner_refs(api, obj, refs, "adopt").await? {
                    owned.push(Arc::new(adopted));
                }
            }
            None => {}
        }
    }
    Ok(owned)
}

/// Replaces `obj`'s owner references, if it did not change since it was read.
async fn set_owner_refs<K>(
    api: &Api<K>,
    obj: &K,
    refs: Vec<OwnerReference>,
    what: &str,
) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": obj.meta().resource_version,
    }});
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(o) => Ok(Some(o)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(Error::api(format!(
            "{what} {} {}",
            K::kind(&()),
            obj.name_any()
        ))(e)),
    }
}

/// The `namespace/name` key of an object.
pub fn key_of<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_kubernetes_does() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(int_or_percent(Some(&p("25%")), 10, true, "0").unwrap(), 3);
        assert_eq!(int_or_percent(Some(&p("25%")), 10, false, "0").unwrap(), 2);
        assert_eq!(
            int_or_percent(Some(&IntOrString::Int(4)), 10, false, "0").unwrap(),
            4
        );
        assert_eq!(int_or_percent(None, 4, true, "25%").unwrap(), 1);
        assert!(int_or_percent(Some(&p("x")), 4, true, "0").is_err());
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }))
        .unwrap();
        let s = Selector::new(Some(&sel), "t").unwrap();
        let l = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(s.matches(&l(&[("app", "web")])));
        assert!(!s.matches(&l(&[("app", "web"), ("tier", "db")])));
        assert!(!s.matches(&l(&[("app", "api")])));
        assert!(
            !Selector::new(None, "t")
                .unwrap()
                .matches(&l(&[("app", "web")]))
        );
    }
}
