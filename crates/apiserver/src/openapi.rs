//! `/openapi/v2` and `/openapi/v3`: the schemas of every served kind, generated from the
//! k8s-openapi types (their `schemars` impls), with the Kubernetes extensions clients read:
//! `x-kubernetes-group-version-kind` (kubectl explain, validation), the patch merge keys of
//! [`crate::patch::merge_key`] (kubectl's strategic merge patches), and per-resource paths
//! whose PATCH takes `fieldValidation` (so kubectl validates on the server, never needing
//! `--validate=false`).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::discovery::{KUBERNETES_VERSION, group_versions};
use crate::kinds::Kind;

/// Merge keys published in the schemas: (definition, field, merge key or "" for a scalar set).
const MERGE_KEYS: &[(&str, &str, &str)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "volumes", "name"),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", "name"),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "ip"),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims", "name"),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates", "name"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "topologyKey",
    ),
    ("io.k8s.api.core.v1.Container", "env", "name"),
    ("io.k8s.api.core.v1.Container", "ports", "containerPort"),
    ("io.k8s.api.core.v1.Container", "volumeMounts", "mountPath"),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "devicePath",
    ),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", "name"),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        "containerPort",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "mountPath",
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "port"),
    ("io.k8s.api.core.v1.NodeSpec", "taints", "key"),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", "type"),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", "type"),
    ("io.k8s.api.core.v1.PodStatus", "conditions", "type"),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", "ip"),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", "ip"),
    ("io.k8s.api.core.v1.ServiceAccount", "secrets", "name"),
    ("io.k8s.api.apps.v1.DeploymentStatus", "conditions", "type"),
    ("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions", "type"),
    ("io.k8s.api.apps.v1.DaemonSetStatus", "conditions", "type"),
    ("io.k8s.api.apps.v1.StatefulSetStatus", "conditions", "type"),
    ("io.k8s.api.core.v1.NamespaceStatus", "conditions", "type"),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "uid",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "",
    ),
];

fn generate(settings: SchemaSettings, kinds: &[Kind], v3: bool) -> Map<String, Value> {
    let mut generator = settings.into_generator();
    for k in kinds {
        (k.schema)(&mut generator);
    }
    let mut defs = generator.take_definitions(true);
    let meta_ref = if v3 {
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    } else {
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    };
    for k in kinds {
        let Some(custom) = &k.custom else { continue };
        let mut schema = custom.schema.clone();
        if !schema.is_object() {
            schema = json!({});
        }
        schema["type"] = json!("object");
        let props = schema
            .as_object_mut()
            .expect("object")
            .entry("properties")
            .or_insert_with(|| json!({}));
        if let Some(p) = props.as_object_mut() {
            p.insert("apiVersion".into(), json!({"type": "string"}));
            p.insert("kind".into(), json!({"type": "string"}));
            p.insert("metadata".into(), json!({"$ref": meta_ref}));
        }
        defs.insert(definition_name(k), schema);
    }
    for k in kinds {
        let name = definition_name(k);
        if let Some(d) = defs.get_mut(&name).and_then(Value::as_object_mut) {
            d.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": k.group, "version": k.version, "kind": k.kind}]),
            );
        }
    }
    for (def, field, key) in MERGE_KEYS {
        if let Some(prop) = defs
            .get_mut(*def)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(*field))
            .and_then(Value::as_object_mut)
        {
            prop.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
            if !key.is_empty() {
                prop.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            }
        }
    }
    defs
}

/// `io.k8s.api.apps.v1.Deployment`: the definition name of a kind (a custom kind's is its group
/// reversed: `com.example.stable.v1.CronTab`).
fn definition_name(k: &Kind) -> String {
    if k.custom.is_some() {
        let reversed: Vec<&str> = k.group.split('.').rev().collect();
        return format!("{}.{}.{}", reversed.join("."), k.version, k.kind);
    }
    if k.group == "apiextensions.k8s.io" {
        return format!(
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{}.{}",
            k.version, k.kind
        );
    }
    let group = match k.group {
        "" => "core",
        g => g.strip_suffix(".k8s.io").unwrap_or(g),
    };
    format!("io.k8s.api.{group}.{}.{}", k.version, k.kind)
}

fn gvk(k: &Kind) -> Value {
    json!({"group": k.group, "version": k.version, "kind": k.kind})
}

fn prefix(k: &Kind) -> String {
    if k.group.is_empty() {
        format!("/api/{}", k.version)
    } else {
        format!("/apis/{}/{}", k.group, k.version)
    }
}

fn query_param(name: &str, v3: bool) -> Value {
    if v3 {
        json!({"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": true})
    } else {
        json!({"name": name, "in": "query", "type": "string", "uniqueItems": true})
    }
}

/// The paths of one kind (object and collection), in OpenAPI v3 or Swagger 2.0 form.
fn paths(k: &Kind, v3: bool, refs: &str) -> Vec<(String, Value)> {
    let base = if k.namespaced {
        format!("{}/namespaces/{{namespace}}/{}", prefix(k), k.plural)
    } else {
        format!("{}/{}", prefix(k), k.plural)
    };
    let obj_ref = json!({"$ref": format!("{refs}{}", definition_name(k))});
    let response = |schema: Value| {
        if v3 {
            json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}})
        } else {
            json!({"200": {"description": "OK", "schema": schema}})
        }
    };
    let op = |action: &str, params: &[&str]| {
        let mut o = json!({
            "operationId": format!("{action}{}", k.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk(k),
            "parameters": params.iter().map(|p| query_param(p, v3)).collect::<Vec<_>>(),
            "responses": response(obj_ref.clone()),
        });
        if action == "patch" {
            let types = [
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ];
            if v3 {
                let content: Map<String, Value> = types
                    .iter()
                    .map(|t| ((*t).to_owned(), json!({"schema": {"type": "object"}})))
                    .collect();
                o["requestBody"] = json!({"content": content, "required": true});
            } else {
                o["consumes"] = json!(types);
            }
        } else if matches!(action, "put" | "post") {
            if v3 {
                o["requestBody"] = json!({"content": {"application/json": {"schema": obj_ref.clone()}}, "required": true});
            } else {
                o["consumes"] = json!(["application/json"]);
            }
        }
        o
    };
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let mut item = json!({
        "get": op("get", &["pretty"]),
        "put": op("put", &write),
        "patch": op("patch", &["dryRun", "fieldManager", "fieldValidation", "force", "pretty"]),
        "delete": op("delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy", "pretty"]),
    });
    let list = json!({
        "get": op("list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch", "timeoutSeconds"]),
        "post": op("post", &write),
    });
    item["get"]["operationId"] = json!(format!("read{}", k.kind));
    let mut out = vec![(format!("{base}/{{name}}"), item), (base.clone(), list)];
    if k.status {
        out.push((
            format!("{base}/{{name}}/status"),
            json!({"get": op("get", &["pretty"]), "put": op("put", &write), "patch": op("patch", &["dryRun", "fieldManager", "fieldValidation", "force"])}),
        ));
        let (_, status) = out.last_mut().expect("pushed");
        for m in ["get", "put", "patch"] {
            status[m]["operationId"] = json!(format!("{m}{}Status", k.kind));
        }
    }
    out
}

fn hash_of(v: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// The OpenAPI documents, built once.
pub(crate) struct OpenApi {
    /// `/openapi/v2` (JSON).
    pub(crate) v2: Value,
    /// `/openapi/v3`: the index.
    pub(crate) v3_index: Value,
    /// `/openapi/v3/<api/v1 | apis/g/v>`.
    pub(crate) v3: BTreeMap<String, Value>,
}

impl OpenApi {
    pub(crate) fn new(kinds: &[Kind]) -> Self {
        let info = json!({"title": "Kubernetes", "version": format!("v{}.{}.0", KUBERNETES_VERSION.0, KUBERNETES_VERSION.1)});
        let v2_settings = SchemaSettings::draft07().with(|s| {
            s.definitions_path = "/definitions".into();
            s.meta_schema = None;
        });
        let v3_settings = SchemaSettings::openapi3().with(|s| s.meta_schema = None);
        let v2_defs = generate(v2_settings, kinds, false);
        let v3_defs = generate(v3_settings, kinds, true);

        let mut v2_paths = Map::new();
        for k in kinds {
            v2_paths.extend(paths(k, false, "#/definitions/"));
        }
        let v2 = json!({"swagger": "2.0", "info": info, "paths": v2_paths, "definitions": v2_defs});

        let mut v3 = BTreeMap::new();
        let mut index = Map::new();
        for (group, version) in group_versions(kinds) {
            let key = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            let mut p = Map::new();
            for k in kinds
                .iter()
                .filter(|k| k.group == group && k.version == version)
            {
                p.extend(paths(k, true, "#/components/schemas/"));
            }
            let doc = json!({
                "openapi": "3.0.0",
                "info": info,
                "paths": p,
                "components": {"schemas": v3_defs.clone()},
            });
            index.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash_of(&doc))}),
            );
            v3.insert(key, doc);
        }
        OpenApi {
            v2,
            v3_index: json!({"paths": index}),
            v3,
        }
    }
}
