//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): a stored CRD becomes one [`Kind`] per
//! served version, built from its names, scope, subresources, printer columns and
//! `openAPIV3Schema` — a strategy made from a schema instead of from a Rust type (kube-apiserver's
//! `apiextensions-apiserver/pkg/registry/customresource`). All versions share one storage key
//! prefix (conversion `None`: only `apiVersion` changes).
//!
//! Objects of a custom kind are pruned (fields the schema does not declare are dropped, unless
//! `x-kubernetes-preserve-unknown-fields`), defaulted (`default`) and validated (type, required,
//! enum, bounds, lengths, pattern, items, additionalProperties) against the schema.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use crate::error::Cause;
use crate::kinds::{Column, Kind};

/// What a custom kind carries beyond a built-in [`Kind`].
#[derive(Debug)]
pub(crate) struct Custom {
    /// The version's `openAPIV3Schema` (or `{}` when none).
    pub(crate) schema: Value,
    /// `additionalPrinterColumns`.
    pub(crate) columns: Vec<PrinterColumn>,
    /// The scale subresource's paths.
    pub(crate) scale: Option<ScalePaths>,
}

/// One `additionalPrinterColumns` entry.
#[derive(Debug, Clone)]
pub(crate) struct PrinterColumn {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) format: String,
    pub(crate) description: String,
    pub(crate) priority: i64,
    pub(crate) json_path: String,
}

/// `subresources.scale`.
#[derive(Debug, Clone)]
pub(crate) struct ScalePaths {
    pub(crate) spec_replicas: String,
    pub(crate) status_replicas: String,
    pub(crate) label_selector: Option<String>,
}

/// A name that lives as long as the process, stored once however often CRDs come and go.
fn intern(s: &str) -> &'static str {
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut guard = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let set = guard.get_or_insert_with(HashSet::new);
    if let Some(found) = set.get(s) {
        return found;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

fn intern_list(v: Option<&Value>) -> &'static [&'static str] {
    let names: Vec<&'static str> = v
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(intern)
        .collect();
    if names.is_empty() {
        return &[];
    }
    // Interned per distinct list, like the names.
    static LISTS: Mutex<Vec<&'static [&'static str]>> = Mutex::new(Vec::new());
    let mut lists = LISTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = lists.iter().find(|l| **l == names.as_slice()) {
        return found;
    }
    let leaked: &'static [&'static str] = Box::leak(names.into_boxed_slice());
    lists.push(leaked);
    leaked
}

fn identity(v: &Value) -> Result<Value, serde_json::Error> {
    Ok(v.clone())
}

fn no_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::Schema::default()
}

fn no_defaults(_: &mut Value) {}
fn no_validation(_: &Value, _: Option<&Value>, _: &mut Vec<Cause>) {}
fn no_fields(_: &Value, _: &str) -> Option<String> {
    None
}

const NO_COLUMNS: &[Column] = &[];

/// The kinds a stored CRD serves: one per served version.
pub(crate) fn kinds_of(crd: &Value) -> Vec<Kind> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or("");
    let plural = names["plural"].as_str().unwrap_or("");
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    let singular = names["singular"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| kind.to_lowercase());
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        let Some(version) = v["name"].as_str() else {
            continue;
        };
        let scale = v.pointer("/subresources/scale").map(|s| ScalePaths {
            spec_replicas: s["specReplicasPath"]
                .as_str()
                .unwrap_or(".spec.replicas")
                .to_owned(),
            status_replicas: s["statusReplicasPath"]
                .as_str()
                .unwrap_or(".status.replicas")
                .to_owned(),
            label_selector: s["labelSelectorPath"].as_str().map(str::to_owned),
        });
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: c["name"].as_str().unwrap_or("").to_owned(),
                kind: c["type"].as_str().unwrap_or("string").to_owned(),
                format: c["format"].as_str().unwrap_or("").to_owned(),
                description: c["description"].as_str().unwrap_or("").to_owned(),
                priority: c["priority"].as_i64().unwrap_or(0),
                json_path: c["jsonPath"].as_str().unwrap_or("").to_owned(),
            })
            .collect();
        let custom = Custom {
            schema: v
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .unwrap_or_else(|| json!({})),
            columns,
            scale: scale.clone(),
        };
        out.push(Kind {
            group: intern(group),
            version: intern(version),
            kind: intern(kind),
            plural: intern(plural),
            singular: intern(&singular),
            short_names: intern_list(names.get("shortNames")),
            categories: intern_list(names.get("categories")),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            status: v.pointer("/subresources/status").is_some(),
            scale: scale.is_some(),
            codec: identity,
            schema: no_schema,
            defaults: no_defaults,
            validate: no_validation,
            columns: NO_COLUMNS,
            field: no_fields,
            custom: Some(Arc::new(custom)),
        });
    }
    out
}

/// Checks a CRD the way kube-apiserver does before accepting it.
pub(crate) fn validate_crd(crd: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = spec
        .pointer("/names/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if group.is_empty() {
        causes.push(Cause::new("spec.group", "Required value"));
    } else if !group.contains('.') {
        causes.push(Cause::new(
            "spec.group",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::new("spec.names.plural", "Required value"));
    } else if !crate::validation::is_dns_label(plural) {
        causes.push(Cause::new(
            "spec.names.plural",
            format!("Invalid value: {plural:?}: a lowercase RFC 1123 label is required"),
        ));
    }
    if kind.is_empty() {
        causes.push(Cause::new("spec.names.kind", "Required value"));
    }
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::new(
            "metadata.name",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    match spec["scope"].as_str() {
        Some("Namespaced" | "Cluster") => {}
        Some(other) => causes.push(Cause::new(
            "spec.scope",
            format!("Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""),
        )),
        None => causes.push(Cause::new("spec.scope", "Required value")),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::new(
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::new(
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    let mut seen = HashSet::new();
    for (i, v) in versions.iter().enumerate() {
        let vname = v["name"].as_str().unwrap_or("");
        if !seen.insert(vname.to_owned()) {
            causes.push(Cause::new(
                format!("spec.versions[{i}].name"),
                format!("Duplicate value: {vname:?}"),
            ));
        }
        if v.pointer("/schema/openAPIV3Schema").is_none() {
            causes.push(Cause::new(
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "Required value: schemas are required",
            ));
        }
    }
    if let Some(old) = old {
        for field in ["group", "scope"] {
            if old["spec"][field] != spec[field] && field == "group" {
                causes.push(Cause::new(
                    format!("spec.{field}"),
                    "Invalid value: field is immutable",
                ));
            }
        }
    }
}

/// The status kube-apiserver's CRD controllers give an accepted CRD: names accepted,
/// established, the storage version recorded.
pub(crate) fn accepted_status(crd: &Value, now: &str) -> Value {
    let spec = &crd["spec"];
    let storage: Vec<Value> = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    let mut stored = crd
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for s in storage {
        if !stored.contains(&s) {
            stored.push(s);
        }
    }
    let mut names = spec["names"].clone();
    if names.get("singular").is_none()
        && let Some(k) = names["kind"].as_str()
    {
        names["singular"] = json!(k.to_lowercase());
    }
    if names.get("listKind").is_none()
        && let Some(k) = names["kind"].as_str()
    {
        names["listKind"] = json!(format!("{k}List"));
    }
    let condition = |ty: &str, reason: &str, message: &str| json!({"type": ty, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": names,
        "storedVersions": stored,
    })
}

// ---- schema: pruning, defaulting, validation --------------------------------------------------

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

/// Drops fields the schema does not declare (collecting their paths) and fills in defaults.
/// `apiVersion`, `kind` and `metadata` at the root are always kept.
pub(crate) fn prune(obj: &mut Value, schema: &Value, unknown: &mut Vec<String>) {
    prune_at(obj, schema, "", true, unknown);
}

fn prune_at(v: &mut Value, schema: &Value, path: &str, root: bool, unknown: &mut Vec<String>) {
    if schema.as_object().is_none_or(Map::is_empty) {
        // No schema: nothing to prune below (only the root has one always).
        if !root {
            return;
        }
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let embedded = schema["x-kubernetes-embedded-resource"].as_bool() == Some(true);
            // Defaults of absent properties.
            if let Some(props) = props {
                for (k, s) in props {
                    if !m.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                }
            }
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if (root || embedded) && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_schema = props
                    .and_then(|p| p.get(&k))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match child_schema {
                    Some(s) => {
                        if let Some(child) = m.get_mut(&k) {
                            prune_at(child, s, &child_path, false, unknown);
                        }
                    }
                    None if preserves(schema) || additional == Some(&Value::Bool(true)) => {}
                    None => {
                        m.remove(&k);
                        unknown.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(item, item_schema, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Validates `obj` against the schema, as kube-apiserver words it
/// (`spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer`).
pub(crate) fn validate(obj: &Value, schema: &Value, causes: &mut Vec<Cause>) {
    validate_at(obj, schema, "", true, causes);
}

fn validate_at(v: &Value, schema: &Value, path: &str, root: bool, causes: &mut Vec<Cause>) {
    let Some(s) = schema.as_object() else {
        return;
    };
    let shown = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if s.get("nullable").and_then(Value::as_bool) != Some(true) && !root {
            causes.push(Cause::new(
                shown,
                format!(
                    "Invalid value: \"null\": {shown} in body must be of type {}: \"null\"",
                    s.get("type").and_then(Value::as_str).unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = s.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    if let Some(ty) = s.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = actual == ty
            || (ty == "number" && actual == "integer")
            || (int_or_string && matches!(actual, "integer" | "string"));
        if !ok {
            causes.push(Cause::new(
                shown,
                format!("Invalid value: \"{actual}\": {shown} in body must be of type {ty}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        let list: Vec<String> = options.iter().map(Value::to_string).collect();
        causes.push(Cause::new(
            shown,
            format!(
                "Unsupported value: {v}: supported values: {}",
                list.join(", ")
            ),
        ));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            causes.push(Cause::new(
                shown,
                format!(
                    "Invalid value: {v}: {shown} in body should be greater than or equal to {min}"
                ),
            ));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            causes.push(Cause::new(
                shown,
                format!(
                    "Invalid value: {v}: {shown} in body should be less than or equal to {max}"
                ),
            ));
        }
    }
    if let Some(text) = v.as_str() {
        let len = text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            causes.push(Cause::new(
                shown,
                format!("Invalid value: {v}: {shown} in body should be at least {min} chars long"),
            ));
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            causes.push(Cause::new(
                shown,
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str)
            && let Ok(re) = regex::Regex::new(p)
            && !re.is_match(text)
        {
            causes.push(Cause::new(
                shown,
                format!("Invalid value: {v}: {shown} in body should match '{p}'"),
            ));
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(min) = s.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            causes.push(Cause::new(
                shown,
                format!(
                    "Invalid value: {}: {shown} in body should have at least {min} items",
                    items.len()
                ),
            ));
        }
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            causes.push(Cause::new(
                shown,
                format!("Too many: {}: must have at most {max} items", items.len()),
            ));
        }
        if let Some(item_schema) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate_at(item, item_schema, &format!("{path}[{i}]"), false, causes);
            }
        }
    }
    if let Some(m) = v.as_object() {
        for req in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = req.as_str()
                && !m.contains_key(r)
            {
                let p = if path.is_empty() {
                    r.to_owned()
                } else {
                    format!("{path}.{r}")
                };
                causes.push(Cause::new(p, "Required value"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        let additional = s.get("additionalProperties").filter(|a| a.is_object());
        for (k, child) in m {
            if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if let Some(cs) = props.and_then(|p| p.get(k)).or(additional) {
                validate_at(child, cs, &p, false, causes);
            }
        }
    }
}

// ---- printer columns ----------------------------------------------------------------------------

/// Evaluates a printer column's simple JSONPath (`.spec.replicas`, `.status.conditions[0].type`,
/// `.metadata.labels.app`).
pub(crate) fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut cur = obj;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

/// A column's cell: dates as ages (kubectl prints them as `5m`), others as they are.
pub(crate) fn cell(obj: &Value, c: &PrinterColumn, age: fn(Option<&str>) -> Value) -> Value {
    match json_path(obj, &c.json_path) {
        None | Some(Value::Null) => Value::Null,
        Some(v) if c.kind == "date" => age(v.as_str()),
        Some(v) => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "tags": {"type": "array", "items": {"type": "string"}},
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        }})
    }

    #[test]
    fn prunes_defaults_and_keeps_preserved_fields() {
        let mut o = json!({"apiVersion": "x.io/v1", "kind": "K", "metadata": {"name": "n"},
            "spec": {"size": 2, "extra": 1, "free": {"any": {"thing": 1}}}, "junk": true});
        let mut unknown = Vec::new();
        prune(&mut o, &schema(), &mut unknown);
        assert_eq!(unknown, vec!["junk".to_owned(), "spec.extra".to_owned()]);
        assert_eq!(
            o["spec"],
            json!({"size": 2, "mode": "a", "free": {"any": {"thing": 1}}})
        );
    }

    #[test]
    fn validates_types_required_enum_and_bounds() {
        let mut causes = Vec::new();
        validate(
            &json!({"spec": {"size": "big", "mode": "c", "tags": [1]}}),
            &schema(),
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["spec.mode", "spec.size", "spec.tags[0]"],
            "{causes:?}"
        );
        assert!(
            causes[1].message.contains("must be of type integer"),
            "{causes:?}"
        );
        let mut causes = Vec::new();
        validate(&json!({"spec": {"size": 0}}), &schema(), &mut causes);
        assert!(causes[0].message.contains("greater than or equal to 1"));
        let mut causes = Vec::new();
        validate(&json!({"spec": {}}), &schema(), &mut causes);
        assert_eq!(causes[0].field, "spec.size");
    }
}
