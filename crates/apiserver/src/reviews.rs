//! Access reviews, computed from the server's [`Authorizer`](crate::authz::Authorizer):
//! `authorization.k8s.io/v1` SelfSubjectAccessReview (`kubectl auth can-i`),
//! SubjectAccessReview, LocalSubjectAccessReview and SelfSubjectRulesReview (`kubectl auth
//! can-i --list`), and `authentication.k8s.io/v1` SelfSubjectReview (`kubectl auth whoami`).
//! All are create-only and stored nowhere; their groups appear in discovery.

use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::auth::UserInfo;
use crate::authz::{Attributes, Authorizer, Decision};
use crate::error::Error;

const AUTHZ: &str = "authorization.k8s.io";
const AUTHN: &str = "authentication.k8s.io";

/// (group, resource, kind, namespaced) of every review.
const RESOURCES: &[(&str, &str, &str, bool)] = &[
    (
        AUTHZ,
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
    ),
    (AUTHZ, "subjectaccessreviews", "SubjectAccessReview", false),
    (
        AUTHZ,
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
    (
        AUTHZ,
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
    ),
    (AUTHN, "selfsubjectreviews", "SelfSubjectReview", false),
];

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// Whether `path` belongs to the review groups (served here, not by the registry).
pub(crate) fn is_review_path(path: &str) -> bool {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    matches!(segs.as_slice(), ["apis", g, ..] if *g == AUTHZ || *g == AUTHN)
}

/// The discovery documents of the review groups: `/apis/<g>` and `/apis/<g>/v1`.
pub(crate) fn discovery(path: &str) -> Option<Value> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["apis", g] if *g == AUTHZ || *g == AUTHN => {
            let mut e = group_entry(g);
            e["kind"] = json!("APIGroup");
            e["apiVersion"] = json!("v1");
            Some(e)
        }
        ["apis", g, "v1"] if *g == AUTHZ || *g == AUTHN => {
            let resources: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.0 == *g)
                .map(|(_, plural, kind, namespaced)| {
                    json!({"name": plural, "singularName": kind.to_ascii_lowercase(), "namespaced": namespaced, "kind": kind, "verbs": ["create"]})
                })
                .collect();
            Some(json!({
                "kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": format!("{g}/v1"), "resources": resources,
            }))
        }
        _ => None,
    }
}

fn group_entry(g: &str) -> Value {
    let v = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
    json!({"name": g, "versions": [v.clone()], "preferredVersion": v})
}

/// Adds the review groups to `/apis` (APIGroupList or aggregated APIGroupDiscoveryList).
pub(crate) fn amend_apis(doc: &mut Value) {
    match doc["kind"].as_str() {
        Some("APIGroupList") => {
            if let Some(groups) = doc["groups"].as_array_mut() {
                groups.push(group_entry(AUTHN));
                groups.push(group_entry(AUTHZ));
            }
        }
        Some("APIGroupDiscoveryList") => {
            if let Some(items) = doc["items"].as_array_mut() {
                for g in [AUTHN, AUTHZ] {
                    let resources: Vec<Value> = RESOURCES
                        .iter()
                        .filter(|r| r.0 == g)
                        .map(|(_, plural, kind, namespaced)| {
                            json!({
                                "resource": plural,
                                "responseKind": {"group": g, "version": "v1", "kind": kind},
                                "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": kind.to_ascii_lowercase(),
                                "verbs": ["create"],
                            })
                        })
                        .collect();
                    items.push(json!({
                        "metadata": {"name": g, "creationTimestamp": null},
                        "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
                    }));
                }
            }
        }
        _ => {}
    }
}

/// Attributes from a review's `spec.resourceAttributes` / `spec.nonResourceAttributes`.
fn review_attributes(user: UserInfo, spec: &Value) -> Result<Attributes, Error> {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attributes {
            user,
            verb: s(r, "verb"),
            resource_request: true,
            path: String::new(),
            namespace: s(r, "namespace"),
            api_group: s(r, "group"),
            api_version: s(r, "version"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            name: s(r, "name"),
        });
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attributes {
            user,
            verb: s(n, "verb"),
            path: s(n, "path"),
            ..Attributes::default()
        });
    }
    Err(Error::Invalid {
        kind: "SubjectAccessReview".into(),
        name: String::new(),
        causes: vec![crate::error::Cause::new(
            "spec.resourceAttributes",
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )],
    })
}

async fn access_status(authorizer: &dyn Authorizer, a: &Attributes) -> Value {
    match authorizer.authorize(a).await {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(reason) if !reason.is_empty() => {
            json!({"allowed": false, "denied": true, "reason": reason})
        }
        _ => json!({"allowed": false}),
    }
}

/// Answers a review request (the caller has authorized `create` on it).
pub(crate) async fn handle(
    authorizer: &dyn Authorizer,
    user: &UserInfo,
    method: &Method,
    path: &str,
    body: &Value,
) -> Result<Response, Error> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, namespace, resource) = match segs.as_slice() {
        ["apis", g, "v1", r] => (*g, None, *r),
        ["apis", g, "v1", "namespaces", ns, r] => (*g, Some(*ns), *r),
        _ => return Err(Error::NoRoute),
    };
    let Some(&(_, _, kind, namespaced)) =
        RESOURCES.iter().find(|r| r.0 == group && r.1 == resource)
    else {
        return Err(Error::NoRoute);
    };
    if namespaced != namespace.is_some() {
        return Err(Error::NoRoute);
    }
    if *method != Method::POST {
        return Err(Error::MethodNotAllowed);
    }
    if body
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != kind)
    {
        return Err(Error::BadRequest(format!(
            "the body names kind {:?}, this endpoint takes {kind}",
            body["kind"]
        )));
    }
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match resource {
        "selfsubjectreviews" => json!({"userInfo": user_json(user)}),
        "selfsubjectaccessreviews" => {
            access_status(authorizer, &review_attributes(user.clone(), &spec)?).await
        }
        "subjectaccessreviews" | "localsubjectaccessreviews" => {
            let subject = UserInfo {
                name: spec["user"].as_str().unwrap_or("").to_owned(),
                uid: spec["uid"].as_str().unwrap_or("").to_owned(),
                groups: spec["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.as_str().map(str::to_owned))
                    .collect(),
            };
            if subject.name.is_empty() && subject.groups.is_empty() {
                return Err(Error::Invalid {
                    kind: kind.into(),
                    name: String::new(),
                    causes: vec![crate::error::Cause::new(
                        "spec.user",
                        "Invalid value: \"\": at least one of user or group must be specified",
                    )],
                });
            }
            let a = review_attributes(subject, &spec)?;
            if let Some(ns) = namespace
                && a.namespace != ns
            {
                return Err(Error::Invalid {
                    kind: kind.into(),
                    name: String::new(),
                    causes: vec![crate::error::Cause::new(
                        "spec.resourceAttributes.namespace",
                        format!(
                            "Invalid value: {:?}: must match metadata.namespace",
                            a.namespace
                        ),
                    )],
                });
            }
            access_status(authorizer, &a).await
        }
        "selfsubjectrulesreviews" => {
            let ns = spec["namespace"].as_str().unwrap_or("");
            let rules = authorizer.rules(user, ns);
            json!({
                "resourceRules": rules.resource.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                "nonResourceRules": rules.non_resource.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                "incomplete": rules.incomplete,
            })
        }
        _ => return Err(Error::NoRoute),
    };
    let mut metadata = body.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if !metadata.is_object() {
        metadata = json!({});
    }
    metadata["creationTimestamp"] = Value::Null;
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": kind,
            "apiVersion": format!("{group}/v1"),
            "metadata": metadata,
            "spec": spec,
            "status": status,
        }),
    ))
}

fn user_json(u: &UserInfo) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    v
}

/// One field of a protobuf message.
enum Field<'a> {
    Scalar,
    Bytes(&'a [u8]),
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of a protobuf message, in order; None when it is malformed.
fn fields(mut b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let value = match key & 7 {
            0 => {
                varint(&mut b)?;
                Field::Scalar
            }
            1 => {
                b = b.get(8..)?;
                Field::Scalar
            }
            2 => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                let (v, rest) = (b.get(..n)?, b.get(n..)?);
                b = rest;
                Field::Bytes(v)
            }
            5 => {
                b = b.get(4..)?;
                Field::Scalar
            }
            _ => return None,
        };
        out.push((key >> 3, value));
    }
    Some(out)
}

/// The string fields of a message as a JSON object, by field number -> name.
fn strings_of(msg: &[u8], names: &[(u64, &str)]) -> Option<Value> {
    let mut o = serde_json::Map::new();
    for (n, f) in fields(msg)? {
        if let (Some((_, name)), Field::Bytes(b)) = (names.iter().find(|(k, _)| *k == n), f) {
            o.insert((*name).to_owned(), json!(std::str::from_utf8(b).ok()?));
        }
    }
    Some(Value::Object(o))
}

/// Decodes the protobuf body (`application/vnd.kubernetes.protobuf`: `k8s\0` and a
/// `runtime.Unknown`) of a review, or of any object as far as `metadata.name` (NodeRestriction
/// needs no more), into JSON. kubectl's typed clients (`auth can-i`, `auth whoami`) send these.
pub(crate) fn decode_protobuf(body: &[u8]) -> Result<Value, Error> {
    let bad = || Error::BadRequest("the body of the request is not a valid protobuf object".into());
    let unknown = body.strip_prefix(b"k8s\0").ok_or_else(bad)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(unknown).ok_or_else(bad)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                let tm = strings_of(tm, &[(1, "apiVersion"), (2, "kind")]).ok_or_else(bad)?;
                api_version = tm["apiVersion"].as_str().unwrap_or("").to_owned();
                kind = tm["kind"].as_str().unwrap_or("").to_owned();
            }
            (2, Field::Bytes(r)) => raw = r,
            (3, Field::Bytes(enc)) if !enc.is_empty() => {
                return Err(Error::UnsupportedMediaType(
                    "protobuf without content encoding".into(),
                ));
            }
            _ => {}
        }
    }
    let mut obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {}});
    let resource = [
        (1, "namespace"),
        (2, "verb"),
        (3, "group"),
        (4, "version"),
        (5, "resource"),
        (6, "subresource"),
        (7, "name"),
    ];
    for (n, f) in fields(raw).ok_or_else(bad)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => {
                obj["metadata"] =
                    strings_of(b, &[(1, "name"), (2, "generateName"), (3, "namespace")])
                        .ok_or_else(bad)?;
            }
            2 if kind == "SelfSubjectRulesReview" => {
                obj["spec"] = strings_of(b, &[(1, "namespace")]).ok_or_else(bad)?;
            }
            2 if kind.ends_with("SubjectAccessReview") => {
                let mut spec = json!({});
                let mut groups = Vec::new();
                for (n, f) in fields(b).ok_or_else(bad)? {
                    let Field::Bytes(b) = f else { continue };
                    let text = || std::str::from_utf8(b).map(str::to_owned).map_err(|_| bad());
                    match n {
                        1 => {
                            spec["resourceAttributes"] = strings_of(b, &resource).ok_or_else(bad)?
                        }
                        2 => {
                            spec["nonResourceAttributes"] =
                                strings_of(b, &[(1, "path"), (2, "verb")]).ok_or_else(bad)?
                        }
                        3 => spec["user"] = json!(text()?),
                        4 => groups.push(json!(text()?)),
                        6 => spec["uid"] = json!(text()?),
                        _ => {}
                    }
                }
                if !groups.is_empty() {
                    spec["groups"] = Value::Array(groups);
                }
                obj["spec"] = spec;
            }
            _ => {}
        }
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3 | 2) as u8, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn decodes_a_protobuf_access_review() {
        let attrs = [field(2, b"create"), field(5, b"pods"), field(1, b"default")].concat();
        let spec = field(1, &attrs);
        let raw = [field(1, &field(1, b"x")), field(2, &spec)].concat();
        let type_meta = [
            field(1, b"authorization.k8s.io/v1"),
            field(2, b"SelfSubjectAccessReview"),
        ]
        .concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let v = decode_protobuf(&body).unwrap();
        assert_eq!(v["kind"], "SelfSubjectAccessReview");
        assert_eq!(v["metadata"]["name"], "x");
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"verb": "create", "resource": "pods", "namespace": "default"})
        );
        assert!(decode_protobuf(b"k8s\0\x0a\x05ab").is_err());
        assert!(decode_protobuf(b"{}").is_err());
    }
}
