//! The patch formats of `PATCH`: JSON Patch (RFC 6902), JSON merge patch (RFC 7386) and
//! Kubernetes' strategic merge patch, whose lists merge by key (containers by name, ports by
//! containerPort, ...) with the `$patch`, `$setElementOrder`, `$retainKeys` and
//! `$deleteFromPrimitiveList` directives (apimachinery's `strategicpatch`). The merge keys of the
//! built-in kinds live in [`merge_key`], the same table the OpenAPI documents publish.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The kinds of `PATCH` body, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let essence = ct.split(';').next().unwrap_or("").trim();
        Some(match essence {
            "application/json-patch+json" => PatchType::Json,
            "application/merge-patch+json" => PatchType::Merge,
            "application/strategic-merge-patch+json" => PatchType::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
            _ => return None,
        })
    }
}

/// How a list field merges under a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Objects merged by this key.
    MergeByKey(&'static str),
    /// A set of scalars (finalizers).
    MergeScalars,
    /// Replaced whole (the default).
    Replace,
}

/// The strategy of the list field `field`, whose path of field names from the object root is
/// `path` (without `field`), in an object of `kind`.
pub fn merge_key(kind: &str, path: &[&str], field: &str) -> ListStrategy {
    let parent = path.last().copied().unwrap_or("");
    let in_container = matches!(
        parent,
        "containers" | "initContainers" | "ephemeralContainers"
    );
    match field {
        "containers" | "initContainers" | "ephemeralContainers" if parent == "spec" => {
            ListStrategy::MergeByKey("name")
        }
        "env" if in_container => ListStrategy::MergeByKey("name"),
        "volumeMounts" if in_container => ListStrategy::MergeByKey("mountPath"),
        "volumeDevices" if in_container => ListStrategy::MergeByKey("devicePath"),
        "ports" if in_container => ListStrategy::MergeByKey("containerPort"),
        "ports" if kind == "Service" && path == ["spec"] => ListStrategy::MergeByKey("port"),
        "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates"
            if parent == "spec" =>
        {
            ListStrategy::MergeByKey("name")
        }
        "hostAliases" if parent == "spec" => ListStrategy::MergeByKey("ip"),
        "topologySpreadConstraints" if parent == "spec" => ListStrategy::MergeByKey("topologyKey"),
        "taints" if kind == "Node" => ListStrategy::MergeByKey("key"),
        "addresses" if kind == "Node" && parent == "status" => ListStrategy::MergeByKey("type"),
        "conditions" if parent == "status" => ListStrategy::MergeByKey("type"),
        "podIPs" | "hostIPs" if parent == "status" => ListStrategy::MergeByKey("ip"),
        "secrets" if kind == "ServiceAccount" => ListStrategy::MergeByKey("name"),
        "ownerReferences" if parent == "metadata" => ListStrategy::MergeByKey("uid"),
        "finalizers" if parent == "metadata" => ListStrategy::MergeScalars,
        _ => ListStrategy::Replace,
    }
}

/// Applies a patch of `ty` to `doc`.
pub fn apply(ty: PatchType, kind: &str, doc: &mut Value, body: &[u8]) -> Result<()> {
    match ty {
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| Error::BadRequest(format!("invalid JSON Patch: {e}")))?;
            json_patch::patch(doc, &patch.0).map_err(|e| Error::Invalid {
                kind: kind.to_owned(),
                name: doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                causes: vec![crate::error::Cause::new("", e.to_string())],
            })
        }
        PatchType::Merge => {
            let patch = parse_object(body)?;
            json_patch::merge(doc, &patch);
            Ok(())
        }
        PatchType::Strategic | PatchType::Apply => {
            let patch = parse_object(body)?;
            strategic_merge(kind, doc, &patch)
        }
    }
}

/// A JSON (or, being a superset, YAML) object body.
fn parse_object(body: &[u8]) -> Result<Value> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(json_err) => serde_yaml_ng::from_slice(body)
            .map_err(|_| Error::BadRequest(format!("invalid patch body: {json_err}")))?,
    };
    if !v.is_object() {
        return Err(Error::BadRequest(
            "invalid patch body: must be an object".into(),
        ));
    }
    Ok(v)
}

/// Applies a strategic merge patch to `doc`.
pub fn strategic_merge(kind: &str, doc: &mut Value, patch: &Value) -> Result<()> {
    let Some(p) = patch.as_object() else {
        return Err(Error::BadRequest("patch must be an object".into()));
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let mut path = Vec::new();
    if merge_map(kind, doc.as_object_mut().expect("object"), p, &mut path)? {
        *doc = Value::Object(Map::new());
    }
    Ok(())
}

/// Strips directives from a value that is inserted whole.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.get("$patch").is_none())
                .map(clean)
                .collect(),
        ),
        v => v.clone(),
    }
}

/// Merges `patch` into `orig`; returns true when the patch deletes the whole map.
fn merge_map(
    kind: &str,
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<bool> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *orig = clean(&Value::Object(patch.clone()))
                .as_object()
                .cloned()
                .unwrap_or_default();
            return Ok(false);
        }
        Some("delete") => return Ok(true),
        Some("merge") | None => {}
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "unknown patch directive {other:?}"
            )));
        }
    }
    let mut orders = Vec::new();
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_owned(), v.clone()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) = (
                orig.get_mut(field).and_then(Value::as_array_mut),
                v.as_array(),
            ) {
                list.retain(|e| !del.contains(e));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            orig.remove(k);
            continue;
        }
        let Some(cur) = orig.get_mut(k) else {
            if v.as_object()
                .and_then(|m| m.get("$patch"))
                .and_then(Value::as_str)
                == Some("delete")
            {
                continue;
            }
            let value = clean(v);
            // A map patch that only deleted keys of an absent map adds nothing.
            if !(v.is_object() && value.as_object().is_some_and(Map::is_empty))
                || v.as_object().is_some_and(|m| m.is_empty())
            {
                orig.insert(k.clone(), value);
            }
            continue;
        };
        match (cur, v) {
            (Value::Object(cm), Value::Object(pm)) => {
                path.push(k.clone());
                let deleted = merge_map(kind, cm, pm, path)?;
                path.pop();
                if deleted {
                    orig.remove(k);
                }
            }
            (Value::Array(ca), Value::Array(pa)) => {
                let names: Vec<&str> = path.iter().map(String::as_str).collect();
                let strategy = merge_key(kind, &names, k);
                path.push(k.clone());
                merge_list(kind, ca, pa, strategy, path)?;
                path.pop();
            }
            (cur, v) => *cur = clean(v),
        }
    }
    for (field, order) in orders {
        let names: Vec<&str> = path.iter().map(String::as_str).collect();
        let strategy = merge_key(kind, &names, &field);
        if let (Some(list), Some(order)) = (
            orig.get_mut(&field).and_then(Value::as_array_mut),
            order.as_array(),
        ) {
            reorder(list, order, strategy);
        }
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(false)
}

fn key_of<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|m| m.get(key))
}

fn merge_list(
    kind: &str,
    orig: &mut Vec<Value>,
    patch: &[Value],
    strategy: ListStrategy,
    path: &mut Vec<String>,
) -> Result<()> {
    let replace = patch
        .iter()
        .any(|e| key_of(e, "$patch").and_then(Value::as_str) == Some("replace"));
    match strategy {
        _ if replace => {
            *orig = patch
                .iter()
                .filter(|e| key_of(e, "$patch").is_none())
                .map(clean)
                .collect();
        }
        ListStrategy::Replace => *orig = patch.iter().map(clean).collect(),
        ListStrategy::MergeScalars => {
            for e in patch {
                if !orig.contains(e) {
                    orig.push(e.clone());
                }
            }
        }
        ListStrategy::MergeByKey(key) => {
            for e in patch {
                let Some(id) = key_of(e, key).cloned() else {
                    return Err(Error::BadRequest(format!(
                        "map: {e} does not contain declared merge key: {key}"
                    )));
                };
                let delete = key_of(e, "$patch").and_then(Value::as_str) == Some("delete");
                let pos = orig.iter().position(|o| key_of(o, key) == Some(&id));
                match (pos, delete) {
                    (Some(_), true) => orig.retain(|o| key_of(o, key) != Some(&id)),
                    (None, true) => {}
                    (Some(i), false) => {
                        if let (Some(om), Some(pm)) = (orig[i].as_object_mut(), e.as_object()) {
                            if merge_map(kind, om, pm, path)? {
                                orig.remove(i);
                            }
                        } else {
                            orig[i] = clean(e);
                        }
                    }
                    (None, false) => orig.push(clean(e)),
                }
            }
        }
    }
    Ok(())
}

/// Orders `list` as `order` says; elements it does not name keep their place at the end.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let same = |a: &Value, b: &Value| match strategy {
        ListStrategy::MergeByKey(key) => {
            key_of(a, key).is_some() && key_of(a, key) == key_of(b, key)
        }
        _ => a == b,
    };
    let mut rest = std::mem::take(list);
    for o in order {
        if let Some(i) = rest.iter().position(|e| same(e, o)) {
            list.push(rest.remove(i));
        }
    }
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name() {
        let mut doc = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"},
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [
                {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
                {"name": "b", "$patch": "delete"},
                {"name": "c", "image": "c:1"},
            ],
        }}}});
        strategic_merge("Deployment", &mut doc, &patch).unwrap();
        assert_eq!(
            doc["spec"]["template"]["spec"]["containers"],
            json!([
                {"name": "a", "image": "a:2", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                {"name": "c", "image": "c:1"},
            ])
        );
    }

    #[test]
    fn nulls_delete_and_atomic_lists_replace() {
        let mut doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"tolerations": [{"key": "k"}], "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"metadata": {"labels": {"a": null, "c": "3"}, "finalizers": ["y"]},
            "spec": {"tolerations": [{"key": "j"}], "strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        strategic_merge("Deployment", &mut doc, &patch).unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}, "finalizers": ["x", "y"]},
                "spec": {"tolerations": [{"key": "j"}], "strategy": {"type": "Recreate"}}})
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let mut doc = json!({"spec": {"ports": [{"port": 80, "name": "http"}]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "name": "https"}]}});
        strategic_merge("Service", &mut doc, &patch).unwrap();
        assert_eq!(
            doc["spec"]["ports"],
            json!([{"port": 80, "name": "http", "targetPort": 8080}, {"port": 443, "name": "https"}])
        );
    }
}
