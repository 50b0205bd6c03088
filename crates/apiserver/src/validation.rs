//! The validation Kubernetes applies before storing: name and label syntax, required fields,
//! selectors that match their template, immutable fields (`k8s.io/apimachinery/pkg/util/validation`
//! and `pkg/apis/*/validation` in kubernetes/kubernetes, the parts clients meet most).

use serde_json::Value;

use crate::error::Cause;
use crate::kinds::labels;

/// RFC 1123 label: lower-case alphanumerics and '-', at most 63, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label value or the name part of a qualified name: at most 63 of `[A-Za-z0-9_.-]`,
/// alphanumeric at both ends (an empty value is allowed for label values).
fn is_qualified_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A label or annotation key: `[prefix/]name`, prefix a DNS subdomain.
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_part(name),
        None => is_qualified_part(s),
    }
}

/// A label value: empty or a qualified part.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_part(s)
}

/// Checks labels and annotations of `metadata`.
pub(crate) fn metadata(obj: &Value, causes: &mut Vec<Cause>) {
    for (k, v) in labels(obj) {
        if !is_qualified_name(&k) {
            causes.push(Cause::new(
                "metadata.labels",
                format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
            ));
        }
        if !is_label_value(&v) {
            causes.push(Cause::new(
                "metadata.labels",
                format!("Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
            ));
        }
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > 256 * 1024 {
            causes.push(Cause::new(
                "metadata.annotations",
                "Too long: must have at most 262144 bytes",
            ));
        }
        for k in ann.keys() {
            if !is_qualified_name(k) {
                causes.push(Cause::new(
                    "metadata.annotations",
                    format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"),
                ));
            }
        }
    }
}

fn containers(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let list = spec.get("containers").and_then(Value::as_array);
    match list {
        None => causes.push(Cause::new(format!("{path}.containers"), "Required value")),
        Some(cs) if cs.is_empty() => {
            causes.push(Cause::new(format!("{path}.containers"), "Required value"))
        }
        Some(_) => {}
    }
    let mut seen = std::collections::BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let field = format!("{path}.{list}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                causes.push(Cause::new(format!("{field}.name"), "Required value"));
            } else if !is_dns_label(name) {
                causes.push(Cause::new(
                    format!("{field}.name"),
                    format!("Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"),
                ));
            } else if !seen.insert(name.to_owned()) {
                causes.push(Cause::new(
                    format!("{field}.name"),
                    format!("Duplicate value: {name:?}"),
                ));
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                causes.push(Cause::new(format!("{field}.image"), "Required value"));
            }
            for (j, p) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push(Cause::new(
                        format!("{field}.ports[{j}].containerPort"),
                        format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
                    ));
                }
            }
        }
    }
}

/// A Pod: containers, and on update only the mutable parts of the spec may change.
pub(crate) fn pod(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    containers(&spec, "spec", causes);
    if let Some(old) = old {
        let strip = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
            if let Some(m) = s.as_object_mut() {
                // Mutable: images, activeDeadlineSeconds, tolerations (additions), and a
                // nodeName set once by binding.
                m.remove("activeDeadlineSeconds");
                m.remove("tolerations");
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = m.get_mut(list).and_then(Value::as_array_mut) {
                        for c in cs {
                            if let Some(c) = c.as_object_mut() {
                                c.remove("image");
                            }
                        }
                    }
                }
            }
            s
        };
        let mut new_spec = strip(obj);
        let old_spec = strip(old);
        if old_spec.get("nodeName").is_none()
            && let Some(m) = new_spec.as_object_mut()
        {
            m.remove("nodeName");
        }
        let mut old_cmp = old_spec;
        if let Some(m) = old_cmp.as_object_mut()
            && obj.pointer("/spec/nodeName").is_some()
            && old.pointer("/spec/nodeName").is_none()
        {
            m.remove("nodeName");
        }
        if new_spec != old_cmp {
            causes.push(Cause::new(
                "spec",
                "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations)",
            ));
        }
    }
}

/// A Service: ports in range, clusterIP immutable.
pub(crate) fn service(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let ty = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(Cause::new(
            "spec.type",
            format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
    }
    let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
    if ty != "ExternalName" && ports.is_none_or(Vec::is_empty) {
        causes.push(Cause::new("spec.ports", "Required value"));
    }
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::new(
                format!("spec.ports[{i}].port"),
                format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
            ));
        }
        if ports.is_some_and(|ps| ps.len() > 1) && p.get("name").is_none() {
            causes.push(Cause::new(
                format!("spec.ports[{i}].name"),
                "Required value",
            ));
        }
    }
    if let Some(old) = old {
        let before = old.pointer("/spec/clusterIP");
        let after = obj.pointer("/spec/clusterIP");
        if before.is_some() && after.is_some() && before != after {
            causes.push(Cause::new(
                "spec.clusterIP",
                "Invalid value: field is immutable",
            ));
        }
    }
}

/// Deployment, ReplicaSet, DaemonSet, StatefulSet: a selector that matches the template's
/// labels, a valid template, an immutable selector.
pub(crate) fn workload(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let selector = obj.pointer("/spec/selector");
    match selector {
        None | Some(Value::Null) => causes.push(Cause::new("spec.selector", "Required value")),
        Some(sel) => {
            let empty = sel
                .get("matchLabels")
                .is_none_or(|m| m.as_object().is_none_or(|m| m.is_empty()))
                && sel
                    .get("matchExpressions")
                    .is_none_or(|m| m.as_array().is_none_or(|m| m.is_empty()));
            if empty {
                causes.push(Cause::new(
                    "spec.selector",
                    "Invalid value: empty selector is invalid for deployment",
                ));
            }
            let template_labels = obj
                .pointer("/spec/template/metadata/labels")
                .and_then(Value::as_object);
            let tl = template_labels
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            match crate::selector::LabelSelector::from_json(sel) {
                Ok(s) if !empty && !s.matches(&tl) => causes.push(Cause::new(
                    "spec.template.metadata.labels",
                    format!(
                        "Invalid value: {}: `selector` does not match template `labels`",
                        serde_json::to_string(&template_labels).unwrap_or_default()
                    ),
                )),
                Err(e) => causes.push(Cause::new("spec.selector", e)),
                _ => {}
            }
        }
    }
    let spec = obj
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or(Value::Null);
    containers(&spec, "spec.template.spec", causes);
    if let Some(replicas) = obj.pointer("/spec/replicas").and_then(Value::as_i64)
        && replicas < 0
    {
        causes.push(Cause::new(
            "spec.replicas",
            format!("Invalid value: {replicas}: must be greater than or equal to 0"),
        ));
    }
    if let Some(old) = old
        && obj.get("kind").and_then(Value::as_str) != Some("Job")
        && old.pointer("/spec/selector") != obj.pointer("/spec/selector")
    {
        causes.push(Cause::new(
            "spec.selector",
            "Invalid value: field is immutable",
        ));
    }
}

/// A Job: its pod template; restartPolicy Never or OnFailure.
pub(crate) fn job(obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or(Value::Null);
    containers(&spec, "spec.template.spec", causes);
    let policy = spec
        .get("restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !matches!(policy, "Never" | "OnFailure") {
        causes.push(Cause::new(
            "spec.template.spec.restartPolicy",
            format!("Unsupported value: {policy:?}: supported values: \"OnFailure\", \"Never\""),
        ));
    }
}

/// ConfigMap and Secret keys: `[-._a-zA-Z0-9]+`.
pub(crate) fn data_keys(obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
    for field in ["data", "binaryData", "stringData"] {
        for k in obj
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys())
        {
            let ok = !k.is_empty()
                && k.len() <= 253
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                causes.push(Cause::new(
                    format!("{field}[{k}]"),
                    format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
                ));
            }
        }
    }
    if obj.get("immutable").and_then(Value::as_bool) == Some(true)
        && let Some(old) = _old
        && old.get("immutable").and_then(Value::as_bool) == Some(true)
        && (old.get("data") != obj.get("data") || old.get("binaryData") != obj.get("binaryData"))
    {
        causes.push(Cause::new(
            "data",
            "Forbidden: field is immutable when `immutable` is set",
        ));
    }
}

/// A PodDisruptionBudget: a selector, and minAvailable or maxUnavailable but not both.
pub(crate) fn pdb(obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
    let min = obj.pointer("/spec/minAvailable").filter(|v| !v.is_null());
    let max = obj.pointer("/spec/maxUnavailable").filter(|v| !v.is_null());
    if min.is_some() && max.is_some() {
        causes.push(Cause::new(
            "spec",
            "Invalid value: minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for (field, v) in [("spec.minAvailable", min), ("spec.maxUnavailable", max)] {
        match v {
            Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n < 0) => causes.push(
                Cause::new(field, format!("Invalid value: {n}: must be greater than or equal to 0")),
            ),
            Some(Value::String(s))
                if s.strip_suffix('%')
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_none_or(|p| p > 100) =>
            {
                causes.push(Cause::new(
                    field,
                    format!("Invalid value: {s:?}: must be an integer or a percentage between 0% and 100%"),
                ))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(is_dns_subdomain("web-1.example"));
        assert!(!is_dns_subdomain("Web"));
        assert!(!is_dns_label("a.b"));
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(is_qualified_name("app"));
        assert!(!is_qualified_name("-app"));
        assert!(!is_qualified_name("a/b/c"));
        assert!(is_label_value(""));
        assert!(!is_label_value("has space"));
    }
}
