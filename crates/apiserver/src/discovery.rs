//! Discovery documents: `/version`, `/api`, `/apis`, the per-group-version resource lists and
//! the aggregated discovery (`apidiscovery.k8s.io/v2`) kubectl 1.32 asks for first.

use serde_json::{Value, json};

use crate::kinds::Kind;

/// The Kubernetes version this server presents itself as (within kubectl 1.32's skew).
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "33");

/// `/version`.
pub(crate) fn version() -> Value {
    json!({
        "major": KUBERNETES_VERSION.0,
        "minor": KUBERNETES_VERSION.1,
        "gitVersion": format!("v{}.{}.0-berth", KUBERNETES_VERSION.0, KUBERNETES_VERSION.1),
        "gitCommit": "berth",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

fn verbs(kind: &Kind) -> Vec<&'static str> {
    vec![
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ]
    .into_iter()
    .filter(|v| kind.kind != "Namespace" || *v != "deletecollection")
    .collect()
}

/// The group/versions served, core first, in a stable order.
pub(crate) fn group_versions(kinds: &[Kind]) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for k in kinds {
        if !out.contains(&(k.group, k.version)) {
            out.push((k.group, k.version));
        }
    }
    out
}

/// `/api/v1` or `/apis/<g>/<v>`: an APIResourceList.
pub(crate) fn resource_list(kinds: &[Kind], group: &str, version: &str) -> Option<Value> {
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    for k in kinds
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": verbs(k),
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if !k.categories.is_empty() {
            r["categories"] = json!(k.categories);
        }
        resources.push(r);
        if k.status {
            resources.push(json!({
                "name": format!("{}/status", k.plural), "singularName": "", "namespaced": k.namespaced,
                "kind": k.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if k.scale {
            resources.push(json!({
                "name": format!("{}/scale", k.plural), "singularName": "", "namespaced": k.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"],
            }));
        }
        if k.kind == "Node" {
            resources.push(json!({
                "name": "nodes/proxy", "singularName": "", "namespaced": false,
                "kind": "NodeProxyOptions", "verbs": ["create", "delete", "get", "patch", "update"],
            }));
        }
        if k.kind == "Pod" {
            resources.push(json!({
                "name": "pods/binding", "singularName": "", "namespaced": true,
                "kind": "Binding", "verbs": ["create"],
            }));
            resources.push(json!({
                "name": "pods/eviction", "singularName": "", "namespaced": true,
                "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"],
            }));
            for (sub, kind, verbs) in [
                ("log", "Pod", &["get"][..]),
                ("exec", "PodExecOptions", &["create", "get"][..]),
                ("attach", "PodAttachOptions", &["create", "get"][..]),
                (
                    "portforward",
                    "PodPortForwardOptions",
                    &["create", "get"][..],
                ),
            ] {
                resources.push(json!({
                    "name": format!("pods/{sub}"), "singularName": "", "namespaced": true,
                    "kind": kind, "verbs": verbs,
                }));
            }
        }
    }
    if resources.is_empty() {
        return None;
    }
    if group.is_empty() {
        resources.push(json!({
            "name": "bindings", "singularName": "binding", "namespaced": true,
            "kind": "Binding", "verbs": ["create"],
        }));
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// `/api`: APIVersions.
pub(crate) fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_entry(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs[0].clone()})
}

/// `/apis`: APIGroupList of the named groups.
pub(crate) fn group_list(kinds: &[Kind]) -> Value {
    let groups: Vec<Value> = group_versions(kinds)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| group_entry(g, &[v]))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<g>`: APIGroup.
pub(crate) fn group(kinds: &[Kind], group: &str) -> Option<Value> {
    let versions: Vec<&str> = group_versions(kinds)
        .into_iter()
        .filter(|(g, _)| *g == group && !g.is_empty())
        .map(|(_, v)| v)
        .collect();
    if versions.is_empty() {
        return None;
    }
    let mut g = group_entry(group, &versions);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// The media type of aggregated discovery.
pub(crate) const AGGREGATED: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Aggregated discovery of `/api` (`core == true`) or `/apis`: APIGroupDiscoveryList.
pub(crate) fn aggregated(kinds: &[Kind], core: bool) -> Value {
    let items: Vec<Value> = group_versions(kinds)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(group, version)| {
            let resources: Vec<Value> = kinds
                .iter()
                .filter(|k| k.group == group && k.version == version)
                .map(|k| {
                    let mut subs = Vec::new();
                    if k.status {
                        subs.push(json!({"subresource": "status", "responseKind": {"group": group, "version": version, "kind": k.kind}, "verbs": ["get", "patch", "update"]}));
                    }
                    if k.scale {
                        subs.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
                    }
                    if k.kind == "Pod" {
                        subs.push(json!({"subresource": "binding", "responseKind": {"group": "", "version": "v1", "kind": "Binding"}, "verbs": ["create"]}));
                        subs.push(json!({"subresource": "eviction", "responseKind": {"group": "policy", "version": "v1", "kind": "Eviction"}, "verbs": ["create"]}));
                    }
                    let mut r = json!({
                        "resource": k.plural,
                        "responseKind": {"group": group, "version": version, "kind": k.kind},
                        "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": k.singular,
                        "verbs": verbs(k),
                    });
                    if !k.short_names.is_empty() {
                        r["shortNames"] = json!(k.short_names);
                    }
                    if !k.categories.is_empty() {
                        r["categories"] = json!(k.categories);
                    }
                    if !subs.is_empty() {
                        r["subresources"] = json!(subs);
                    }
                    r
                })
                .collect();
            json!({
                "metadata": {"name": group, "creationTimestamp": null},
                "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}
