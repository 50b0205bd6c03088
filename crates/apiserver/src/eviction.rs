//! `pods/eviction` (`policy/v1` Eviction): a pod delete that honours PodDisruptionBudgets, as
//! kube-apiserver's `pkg/registry/core/pod/storage/eviction.go` does. The budgets' status
//! (expected and healthy pods, disruptions allowed, pods being disrupted) is computed by the
//! server from the pods their selector matches whenever an eviction asks, and kept on the budget.
//! An eviction that would leave fewer healthy pods than the budget wants is answered 429
//! TooManyRequests with a `DisruptionBudget` cause; one pod covered by two budgets is a 500, as in
//! Kubernetes.

use serde_json::{Value, json};

use crate::error::{Cause, Error, Result};
use crate::kinds::{Kind, labels};
use crate::registry::{DeleteOptions, Part, Registry, WriteOptions};
use crate::selector::LabelSelector;

fn ready(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
}

/// An IntOrString of a budget against `total` pods (percentages round up, as Kubernetes'
/// `GetScaledValueFromIntOrPercent(..., true)`).
fn scaled(v: &Value, total: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let p: i64 = s.strip_suffix('%')?.parse().ok()?;
            Some((p * total + 99) / 100)
        }
        _ => None,
    }
}

/// The status of `pdb` given the pods of its namespace.
fn status(pdb: &Value, pods: &[Value]) -> Value {
    let selector = pdb
        .pointer("/spec/selector")
        .map(LabelSelector::from_json)
        .and_then(|r| r.ok());
    let matching: Vec<&Value> = match &selector {
        Some(sel) => pods.iter().filter(|p| sel.matches(&labels(p))).collect(),
        None => Vec::new(),
    };
    let expected = matching.len() as i64;
    let healthy = matching.iter().filter(|p| ready(p)).count() as i64;
    let desired = if let Some(min) = pdb.pointer("/spec/minAvailable").filter(|v| !v.is_null()) {
        scaled(min, expected).unwrap_or(expected)
    } else if let Some(max) = pdb.pointer("/spec/maxUnavailable").filter(|v| !v.is_null()) {
        (expected - scaled(max, expected).unwrap_or(0)).max(0)
    } else {
        expected
    };
    let generation = pdb
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    let mut out = pdb.get("status").cloned().unwrap_or_else(|| json!({}));
    out["observedGeneration"] = generation;
    out["expectedPods"] = json!(expected);
    out["currentHealthy"] = json!(healthy);
    out["desiredHealthy"] = json!(desired);
    out["disruptionsAllowed"] = json!((healthy - desired).max(0));
    out
}

/// Evicts `name` in `ns` (the Eviction in `body` may carry deleteOptions).
pub(crate) async fn evict(
    registry: &Registry,
    ns: &str,
    name: &str,
    body: &Value,
) -> Result<Value> {
    if let Some(n) = body.pointer("/metadata/name").and_then(Value::as_str)
        && !n.is_empty()
        && n != name
    {
        return Err(Error::BadRequest(format!(
            "name in URL does not match name in Eviction object: {name} != {n}"
        )));
    }
    let pods_kind = registry.kind("", "v1", "pods").expect("pods are built in");
    let pdb_kind = registry
        .kind("policy", "v1", "poddisruptionbudgets")
        .expect("budgets are built in");
    let delete_options = {
        let d = body.get("deleteOptions").cloned().unwrap_or_default();
        DeleteOptions {
            dry_run: d
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v == "All")),
            grace_period: d.get("gracePeriodSeconds").and_then(Value::as_i64),
            propagation: d
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_owned),
            precondition_uid: d
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
            precondition_rv: d
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    };
    for _ in 0..16 {
        let pod = registry.get(&pods_kind, ns, name).await?;
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        // Terminal and not yet started pods need no budget; nor does one already going away.
        let exempt = matches!(phase, "Succeeded" | "Failed" | "Pending" | "")
            || pod.pointer("/metadata/deletionTimestamp").is_some();
        if !exempt {
            let budgets = matching_budgets(registry, &pdb_kind, ns, &pod).await?;
            if budgets.len() > 1 {
                return Err(Error::Internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
                ));
            }
            if let Some((pdb, revision)) = budgets.into_iter().next() {
                let pods = registry
                    .list(&pods_kind, Some(ns), &Default::default())
                    .await?;
                let pods = pods["items"].as_array().cloned().unwrap_or_default();
                let mut st = status(&pdb, &pods);
                let allowed = st["disruptionsAllowed"].as_i64().unwrap_or(0);
                let pod_healthy = ready(&pod);
                // An unhealthy pod may go while the budget is met (IfHealthyBudget).
                let healthy_budget = st["currentHealthy"].as_i64() >= st["desiredHealthy"].as_i64();
                if (pod_healthy && allowed <= 0) || (!pod_healthy && !healthy_budget) {
                    let pdb_name = pdb["metadata"]["name"].as_str().unwrap_or("").to_owned();
                    return Err(Error::Evict {
                        message:
                            "Cannot evict pod as it would violate the pod's disruption budget."
                                .into(),
                        causes: vec![Cause::new(
                            "",
                            format!(
                                "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                                st["desiredHealthy"], st["currentHealthy"]
                            ),
                        )],
                    });
                }
                if pod_healthy && !delete_options.dry_run {
                    st["disruptionsAllowed"] = json!(allowed - 1);
                    let mut disrupted = st
                        .get("disruptedPods")
                        .cloned()
                        .unwrap_or_else(|| json!({}));
                    disrupted[name] =
                        json!(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string());
                    st["disruptedPods"] = disrupted;
                    let mut updated = pdb.clone();
                    updated["status"] = st;
                    updated["metadata"]["resourceVersion"] = json!(revision.to_string());
                    let pdb_name = pdb["metadata"]["name"].as_str().unwrap_or("").to_owned();
                    match registry
                        .update(
                            &pdb_kind,
                            ns,
                            &pdb_name,
                            updated,
                            Part::Status,
                            &WriteOptions {
                                field_manager: "eviction".into(),
                                ..WriteOptions::default()
                            },
                        )
                        .await
                    {
                        Ok(_) => {}
                        // Another eviction used the budget first: count again.
                        Err(Error::Conflict { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        registry
            .delete(&pods_kind, ns, name, &delete_options)
            .await?;
        return Ok(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Success", "code": 201,
        }));
    }
    Err(Error::Conflict {
        resource: "poddisruptionbudgets.policy".into(),
        name: name.to_owned(),
        message: "too many concurrent evictions".into(),
    })
}

/// The budgets in `ns` whose selector matches `pod`, with their revisions.
async fn matching_budgets(
    registry: &Registry,
    pdb_kind: &Kind,
    ns: &str,
    pod: &Value,
) -> Result<Vec<(Value, u64)>> {
    let list = registry
        .list(pdb_kind, Some(ns), &Default::default())
        .await?;
    let pod_labels = labels(pod);
    let mut out = Vec::new();
    for pdb in list["items"].as_array().into_iter().flatten() {
        let Some(sel) = pdb
            .pointer("/spec/selector")
            .map(LabelSelector::from_json)
            .and_then(|r| r.ok())
        else {
            continue;
        };
        // An empty selector matches every pod in policy/v1.
        if sel.matches(&pod_labels) {
            let rv = pdb
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            out.push((pdb.clone(), rv));
        }
    }
    Ok(out)
}

/// Fills in a new or changed budget's status from the pods it selects.
pub(crate) async fn refresh_status(registry: &Registry, ns: &str, name: &str) -> Result<()> {
    let pods_kind = registry.kind("", "v1", "pods").expect("pods are built in");
    let pdb_kind = registry
        .kind("policy", "v1", "poddisruptionbudgets")
        .expect("budgets are built in");
    let (pdb, revision) = registry.get_stored(&pdb_kind, ns, name).await?;
    let pods = registry
        .list(&pods_kind, Some(ns), &Default::default())
        .await?;
    let st = status(
        &pdb,
        pods["items"].as_array().map_or(&[][..], Vec::as_slice),
    );
    if pdb.get("status") == Some(&st) {
        return Ok(());
    }
    let mut updated = pdb;
    updated["status"] = st;
    updated["metadata"]["resourceVersion"] = json!(revision.to_string());
    match registry
        .update(
            &pdb_kind,
            ns,
            name,
            updated,
            Part::Status,
            &WriteOptions::default(),
        )
        .await
    {
        Ok(_) | Err(Error::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
