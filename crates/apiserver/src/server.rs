//! The HTTP layer: Kubernetes' URL layout (`/api/v1/namespaces/<ns>/<resource>/<name>/<sub>`,
//! `/apis/<group>/<version>/...`), verbs from methods and query parameters, content
//! negotiation (JSON, YAML bodies, `as=Table`) and the body limit, over the
//! generic [`Registry`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::discovery;
use crate::error::{Error, Result};
use crate::kinds::{Kind, selector_string};
use crate::openapi::OpenApi;
use crate::patch::PatchType;
use crate::registry::{DeleteOptions, FieldValidation, ListOptions, Part, Registry, WriteOptions};
use crate::selector::{FieldSelector, LabelSelector};

/// Largest request body accepted (kube-apiserver's limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

impl Shared {
    /// The OpenAPI documents of the kinds served now (rebuilt when CRDs come and go).
    fn openapi(&self) -> Arc<OpenApi> {
        let generation = self.registry.generation();
        let mut cache = self.openapi.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, doc)) = cache.as_ref()
            && *g == generation
        {
            return doc.clone();
        }
        let doc = Arc::new(OpenApi::new(&self.registry.kinds()));
        *cache = Some((generation, doc.clone()));
        doc
    }
}

pub(crate) struct Shared {
    pub(crate) registry: Arc<Registry>,
    /// The OpenAPI documents for a generation of the registry's kinds.
    pub(crate) openapi: std::sync::Mutex<Option<(u64, Arc<OpenApi>)>>,
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        if let Ok(v) = http::HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "'"))) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn query(req: &Request) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

fn list_options(q: &BTreeMap<String, String>) -> Result<ListOptions> {
    let label_selector = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| Error::BadRequest(format!("unable to parse requirement: {e}")))?;
    let field_selector = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))
        .map_err(Error::BadRequest)?;
    let number = |k: &str| -> Result<Option<u64>> {
        q.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| Error::BadRequest(format!("invalid {k} {v:?}")))
            })
            .transpose()
    };
    let truthy = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    Ok(ListOptions {
        label_selector,
        field_selector,
        limit: number("limit")?.unwrap_or(0) as usize,
        continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version: q.get("resourceVersion").cloned(),
        resource_version_match: q
            .get("resourceVersionMatch")
            .filter(|v| !v.is_empty())
            .cloned(),
        timeout: number("timeoutSeconds")?.map(Duration::from_secs),
        bookmarks: truthy("allowWatchBookmarks"),
        send_initial_events: truthy("sendInitialEvents"),
    })
}

fn write_options(q: &BTreeMap<String, String>, headers: &HeaderMap) -> Result<WriteOptions> {
    let field_validation = match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            )));
        }
    };
    let field_manager = match q.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => {
            if m.len() > 128 || m.chars().any(|c| c.is_control()) {
                return Err(Error::BadRequest(
                    "fieldManager must be at most 128 printable characters".into(),
                ));
            }
            m.clone()
        }
        None => String::new(),
    };
    let mut opts = WriteOptions {
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        field_validation,
        field_manager,
        force: q.get("force").is_some_and(|v| v == "true" || v == "1"),
        applied: false,
    };
    default_manager(&mut opts, headers);
    Ok(opts)
}

/// Kubernetes' default field manager: the User-Agent up to its first `/` (`kubectl`).
fn default_manager(opts: &mut WriteOptions, headers: &HeaderMap) {
    if opts.field_manager.is_empty()
        && let Some(ua) = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
    {
        opts.field_manager = ua
            .split('/')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(128)
            .collect();
    }
}

/// Parses a JSON or YAML body into an object.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let essence = ct.split(';').next().unwrap_or("").trim();
    let v: Value = match essence {
        "application/json" | "" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            Error::BadRequest(format!("the body of the request is not valid JSON: {e}"))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml_ng::from_slice(body)
            .map_err(|e| {
                Error::BadRequest(format!("the body of the request is not valid YAML: {e}"))
            })?,
        crate::protobuf::MEDIA_TYPE => crate::protobuf::decode(body)?,
        other => {
            return Err(Error::UnsupportedMediaType(format!(
                "application/json, application/yaml, application/vnd.kubernetes.protobuf (not {other})"
            )));
        }
    };
    if !v.is_object() {
        return Err(Error::BadRequest(
            "the body of the request must be an object".into(),
        ));
    }
    Ok(v)
}

async fn read_body(req: Request) -> Result<(HeaderMap, Bytes)> {
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > MAX_BODY
    {
        return Err(Error::TooLarge { limit: MAX_BODY });
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| Error::TooLarge { limit: MAX_BODY })?;
    Ok((parts.headers, bytes))
}

/// The request's target, parsed from the path.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(registry: &Registry, segs: &[&str]) -> Result<Target> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(Error::NoRoute),
    };
    let kind_of = |plural: &str| registry.kind(group, version, plural);
    // namespaces/<ns>/<resource>[/<name>[/<sub>]] for namespaced kinds.
    if let ["namespaces", ns, res, rest @ ..] = rest
        && let Some(kind) = kind_of(res).filter(|k| k.namespaced)
    {
        let (name, sub) = match rest {
            [] => (None, None),
            [name] => (Some(*name), None),
            [name, sub] => (Some(*name), Some(*sub)),
            _ => return Err(Error::NoRoute),
        };
        return Ok(Target {
            kind,
            namespace: Some((*ns).to_owned()),
            name: name.map(str::to_owned),
            sub: sub.map(str::to_owned),
        });
    }
    let (res, name, sub) = match rest {
        [res] => (*res, None, None),
        [res, name] => (*res, Some(*name), None),
        [res, name, sub] => (*res, Some(*name), Some(*sub)),
        _ => return Err(Error::NoRoute),
    };
    let kind = kind_of(res).ok_or(Error::NoRoute)?;
    if kind.namespaced && name.is_some() {
        return Err(Error::NoRoute);
    }
    Ok(Target {
        kind,
        namespace: None,
        name: name.map(str::to_owned),
        sub: sub.map(str::to_owned),
    })
}

/// The axum handler for everything.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let protobuf_only = accepts_only_protobuf(req.headers());
    let resp = match route(shared, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if protobuf_only {
        return to_protobuf(resp).await;
    }
    resp
}

/// The client takes protobuf and not JSON (client-go with only the protobuf media type).
fn accepts_only_protobuf(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let types: Vec<&str> = accept
        .split(',')
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .collect();
    types.contains(&crate::protobuf::MEDIA_TYPE)
        && !types.iter().any(|t| {
            matches!(
                *t,
                "application/json" | "*/*" | "application/*" | "application/yaml"
            )
        })
}

/// Re-encodes a JSON answer as protobuf (a watch stream stays JSON: none is asked for here).
async fn to_protobuf(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    let streaming = resp.headers().get(header::CACHE_CONTROL).is_some();
    if !is_json || streaming {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Error::Internal("reading the answer".into()).into_response();
    };
    let encoded = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| crate::protobuf::encode(&v));
    match encoded {
        Some(pb) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(crate::protobuf::MEDIA_TYPE),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(pb))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}

async fn route(shared: Arc<Shared>, req: Request) -> Result<Response> {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if matches!(segs.first(), Some(&"healthz" | &"readyz" | &"livez")) {
        return Ok((StatusCode::OK, "ok").into_response());
    }
    let registry = &shared.registry;
    let kinds_now = registry.kinds();
    let kinds = kinds_now.as_slice();
    let method = req.method().clone();
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if method == Method::GET {
        let aggregated = accept.contains("as=APIGroupDiscoveryList")
            && accept
                .split(',')
                .next()
                .is_some_and(|f| f.contains("v=v2;") || f.ends_with("v=v2") || f.contains("v=v2,"));
        let doc = match segs.as_slice() {
            ["version"] => Some(discovery::version()),
            ["api"] if aggregated => {
                let mut r = json_response(StatusCode::OK, &discovery::aggregated(kinds, true));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(discovery::AGGREGATED),
                );
                return Ok(r);
            }
            ["apis"] if aggregated => {
                let mut r = json_response(StatusCode::OK, &discovery::aggregated(kinds, false));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(discovery::AGGREGATED),
                );
                return Ok(r);
            }
            ["api"] => Some(discovery::api_versions()),
            ["apis"] => Some(discovery::group_list(kinds)),
            ["api", v] => discovery::resource_list(kinds, "", v),
            ["apis", g] => discovery::group(kinds, g),
            ["apis", g, v] => discovery::resource_list(kinds, g, v),
            ["openapi", "v2"] => {
                if accept.contains("protobuf") && !accept.contains("json") {
                    return Ok(
                        (StatusCode::NOT_ACCEPTABLE, "only application/json").into_response()
                    );
                }
                Some(shared.openapi().v2.clone())
            }
            ["openapi", "v3"] => Some(shared.openapi().v3_index.clone()),
            ["openapi", "v3", rest @ ..] => {
                let key = rest.join("/");
                let doc = shared
                    .openapi()
                    .v3
                    .get(&key)
                    .cloned()
                    .ok_or(Error::NoRoute)?;
                let mut r = json_response(StatusCode::OK, &doc);
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    http::HeaderValue::from_static("public, immutable"),
                );
                return Ok(r);
            }
            _ => None,
        };
        if let Some(doc) = doc {
            return Ok(json_response(StatusCode::OK, &doc));
        }
        if matches!(
            segs.as_slice(),
            ["version" | "api" | "apis" | "openapi", ..]
        ) && segs.len() <= 3
            && !matches!(segs.as_slice(), ["api", _, _] | ["apis", _, _, ..])
        {
            return Err(Error::NoRoute);
        }
    }
    // Binding a pod through the bindings collection names the pod in the body.
    if let ["api", "v1", "namespaces", ns, "bindings"] = segs.as_slice() {
        if method != Method::POST {
            return Err(Error::MethodNotAllowed);
        }
        let ns = (*ns).to_owned();
        let (headers, body) = read_body(req).await?;
        let binding = parse_body(&headers, &body)?;
        let name = binding
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        return bind(registry, &ns, &name, &binding).await;
    }
    // nodes/<name>/proxy/<path...>: straight to the node's endpoint.
    if let ["api", "v1", "nodes", node, "proxy", rest @ ..] = segs.as_slice() {
        let endpoint = crate::proxy::node_endpoint(registry, node).await?;
        let path = format!("/{}", rest.join("/"));
        return crate::proxy::forward(req, &endpoint, &path).await;
    }
    let target = parse_target(registry, &segs)?;
    let q = query(&req);
    if target.kind.kind == "Pod"
        && let (Some(ns), Some(name), Some(sub)) = (
            target.namespace.as_deref(),
            target.name.as_deref(),
            target.sub.as_deref(),
        )
        && let Some((endpoint, path)) =
            crate::proxy::pod_target(registry, ns, name, sub, &q).await?
    {
        return crate::proxy::forward(req, &endpoint, &path).await;
    }
    let table = wants_table(req.headers());
    let kind = target.kind.clone();
    let ns = target.namespace.clone().unwrap_or_default();
    let namespace = target.namespace.as_deref();
    match (&method, target.name.as_deref(), target.sub.as_deref()) {
        (&Method::GET, None, None) => {
            let opts = list_options(&q)?;
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let lines = registry
                    .clone()
                    .watch(kind.clone(), target.namespace.clone(), opts)
                    .await?;
                return Ok(watch_response(lines, table.then_some(kind), &q));
            }
            if table {
                let list = registry.list(&kind, namespace, &opts).await?;
                return Ok(json_response(StatusCode::OK, &to_table(&kind, &list, &q)));
            }
            let body = registry.list_json(&kind, namespace, &opts).await?;
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response())
        }
        (&Method::GET, Some(name), None) => {
            let obj = registry.get(&kind, &ns, name).await?;
            if table {
                let list = json!({"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"].clone()}, "items": [obj]});
                return Ok(json_response(StatusCode::OK, &to_table(&kind, &list, &q)));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        (&Method::GET, Some(name), Some("status")) if kind.status => Ok(json_response(
            StatusCode::OK,
            &registry.get(&kind, &ns, name).await?,
        )),
        (&Method::GET, Some(name), Some("scale")) if kind.scale => Ok(json_response(
            StatusCode::OK,
            &to_scale(&kind, &registry.get(&kind, &ns, name).await?),
        )),
        (&Method::POST, None, None) => {
            if kind.namespaced && namespace.is_none() {
                return Err(Error::MethodNotAllowed);
            }
            let opts = write_options(&q, req.headers())?;
            let (headers, body) = read_body(req).await?;
            let obj = parse_body(&headers, &body)?;
            let w = registry.create(&kind, &ns, obj, &opts).await?;
            if kind.kind == "PodDisruptionBudget" && !opts.dry_run {
                let name = w.object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                crate::eviction::refresh_status(registry, &ns, &name).await?;
                let fresh = registry.get(&kind, &ns, &name).await?;
                return Ok(with_warnings(
                    json_response(StatusCode::CREATED, &fresh),
                    &w.warnings,
                ));
            }
            Ok(with_warnings(
                json_response(StatusCode::CREATED, &w.object),
                &w.warnings,
            ))
        }
        (&Method::POST, Some(name), Some("eviction")) if kind.kind == "Pod" => {
            let name = name.to_owned();
            let (headers, body) = read_body(req).await?;
            let eviction = parse_body(&headers, &body)?;
            let status = crate::eviction::evict(registry, &ns, &name, &eviction).await?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        (&Method::POST, Some(name), Some("binding")) if kind.kind == "Pod" => {
            let name = name.to_owned();
            let (headers, body) = read_body(req).await?;
            let binding = parse_body(&headers, &body)?;
            bind(registry, &ns, &name, &binding).await
        }
        (&Method::PUT, Some(name), sub) => {
            let part = match sub {
                None => Part::Main,
                Some("status") if kind.status => Part::Status,
                Some("scale") if kind.scale => {
                    let name = name.to_owned();
                    let (headers, body) = read_body(req).await?;
                    let scale = parse_body(&headers, &body)?;
                    return scale_update(
                        registry,
                        &kind,
                        &ns,
                        &name,
                        &scale,
                        &write_options(&q, &headers)?,
                    )
                    .await;
                }
                _ => return Err(Error::NoRoute),
            };
            let name = name.to_owned();
            let opts = write_options(&q, req.headers())?;
            let (headers, body) = read_body(req).await?;
            let obj = parse_body(&headers, &body)?;
            let w = registry.update(&kind, &ns, &name, obj, part, &opts).await?;
            Ok(with_warnings(
                json_response(StatusCode::OK, &w.object),
                &w.warnings,
            ))
        }
        (&Method::PATCH, Some(name), sub) => {
            let name = name.to_owned();
            let opts = write_options(&q, req.headers())?;
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let ty = PatchType::from_content_type(&ct).ok_or_else(|| {
                Error::UnsupportedMediaType(
                    "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml".into(),
                )
            })?;
            if ty == PatchType::Apply && q.get("fieldManager").is_none_or(String::is_empty) {
                return Err(Error::BadRequest(
                    "PATCH requests with apply must have a fieldManager".into(),
                ));
            }
            let (_, body) = read_body(req).await?;
            let part = match sub {
                None => Part::Main,
                Some("status") if kind.status => Part::Status,
                Some("scale") if kind.scale => {
                    let current = registry.get(&kind, &ns, &name).await?;
                    let mut scale = to_scale(&kind, &current);
                    crate::patch::apply(ty, "Scale", &mut scale, &body)?;
                    return scale_update(registry, &kind, &ns, &name, &scale, &opts).await;
                }
                _ => return Err(Error::NoRoute),
            };
            let w = registry
                .patch(&kind, &ns, &name, ty, &body, part, &opts)
                .await?;
            let code = if w.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(with_warnings(json_response(code, &w.object), &w.warnings))
        }
        (&Method::DELETE, name, None) => {
            let mut opts = DeleteOptions {
                dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
                grace_period: q.get("gracePeriodSeconds").and_then(|v| v.parse().ok()),
                propagation: q.get("propagationPolicy").cloned(),
                ..DeleteOptions::default()
            };
            let list = list_options(&q)?;
            let name = name.map(str::to_owned);
            let (headers, body) = read_body(req).await?;
            if !body.is_empty() {
                let d = parse_body(&headers, &body)?;
                if let Some(g) = d.get("gracePeriodSeconds").and_then(Value::as_i64) {
                    opts.grace_period = Some(g);
                }
                if let Some(p) = d.get("propagationPolicy").and_then(Value::as_str) {
                    opts.propagation = Some(p.to_owned());
                }
                if let Some(uid) = d.pointer("/preconditions/uid").and_then(Value::as_str) {
                    opts.precondition_uid = Some(uid.to_owned());
                }
                if let Some(rv) = d
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                {
                    opts.precondition_rv = Some(rv.to_owned());
                }
                if d.get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|v| v == "All"))
                {
                    opts.dry_run = true;
                }
            }
            if let Some(p) = &opts.propagation
                && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
            {
                return Err(Error::BadRequest(format!(
                    "propagationPolicy must be Orphan, Background or Foreground, not {p:?}"
                )));
            }
            let result = match name {
                Some(name) => registry.delete(&kind, &ns, &name, &opts).await?,
                None => {
                    registry
                        .delete_collection(&kind, namespace, &list, &opts)
                        .await?
                }
            };
            Ok(json_response(StatusCode::OK, &result))
        }
        (_, _, Some(_)) => Err(Error::NoRoute),
        _ => Err(Error::MethodNotAllowed),
    }
}

/// Sets a pod's `spec.nodeName` once (`pods/binding`).
async fn bind(registry: &Registry, ns: &str, name: &str, binding: &Value) -> Result<Response> {
    let kind = registry.kind("", "v1", "pods").expect("pods are built in");
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::BadRequest("binding has no target.name".into()))?
        .to_owned();
    if let Some(body_name) = binding.pointer("/metadata/name").and_then(Value::as_str)
        && body_name != name
    {
        return Err(Error::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    for _ in 0..16 {
        let (mut pod, _revision) = registry.get_stored(&kind, ns, name).await?;
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(Error::Conflict {
                resource: "pods".into(),
                name: name.to_owned(),
                message: format!("pod {name} is being deleted, cannot be assigned to a host"),
            });
        }
        // The binding names the pod it was decided for: a pod deleted and created again under
        // the same name since is another pod (kube-apiserver checks the same precondition).
        if let Some(uid) = binding
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        {
            let current = pod
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("");
            if uid != current {
                return Err(Error::Conflict {
                    resource: "pods/binding".into(),
                    name: name.to_owned(),
                    message: format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {current}"
                    ),
                });
            }
        }
        if let Some(current) = pod.pointer("/spec/nodeName").and_then(Value::as_str) {
            return Err(Error::Conflict {
                resource: "pods/binding".into(),
                name: name.to_owned(),
                message: format!("pod {name} is already assigned to node {current:?}"),
            });
        }
        pod["spec"]["nodeName"] = json!(node);
        match registry
            .update(&kind, ns, name, pod, Part::Main, &WriteOptions::default())
            .await
        {
            Ok(_) => {
                return Ok(json_response(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ));
            }
            Err(Error::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflict {
        resource: "pods".into(),
        name: name.to_owned(),
        message: "too many concurrent writers".into(),
    })
}

/// JSON pointers of a kind's replicas (spec, status) and label selector (a string for custom
/// kinds, a LabelSelector for built-in ones).
fn scale_paths(kind: &Kind) -> (String, String, Option<String>) {
    let pointer = |p: &str| p.trim_start_matches('.').replace('.', "/");
    match kind.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        Some(sc) => (
            format!("/{}", pointer(&sc.spec_replicas)),
            format!("/{}", pointer(&sc.status_replicas)),
            sc.label_selector
                .as_ref()
                .map(|l| format!("/{}", pointer(l))),
        ),
        None => ("/spec/replicas".into(), "/status/replicas".into(), None),
    }
}

/// The `autoscaling/v1` Scale of an object.
fn to_scale(kind: &Kind, obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let (spec, status, selector_path) = scale_paths(kind);
    let selector = match selector_path {
        Some(p) => obj
            .pointer(&p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        None => selector_string(obj.pointer("/spec/selector")),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer(&spec).cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer(&status).cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// Sets the value at a JSON pointer, creating objects along the way.
fn set_pointer(obj: &mut Value, pointer: &str, value: Value) {
    let mut cur = obj;
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = cur
            .as_object_mut()
            .expect("object")
            .entry(part.to_owned())
            .or_insert(Value::Null);
    }
    *cur = value;
}

async fn scale_update(
    registry: &Registry,
    kind: &Kind,
    ns: &str,
    name: &str,
    scale: &Value,
    opts: &WriteOptions,
) -> Result<Response> {
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::BadRequest("Scale has no spec.replicas".into()))?;
    if replicas < 0 {
        return Err(Error::Invalid {
            kind: "Scale".into(),
            name: name.to_owned(),
            causes: vec![crate::error::Cause::new(
                "spec.replicas",
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )],
        });
    }
    let (mut obj, revision) = registry.get_stored(kind, ns, name).await?;
    if let Some(rv) = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        && rv != revision.to_string()
    {
        return Err(Error::Conflict {
            resource: kind.resource(),
            name: name.to_owned(),
            message: "the object has been modified; please apply your changes to the latest version and try again".into(),
        });
    }
    set_pointer(&mut obj, &scale_paths(kind).0, json!(replicas));
    let w = registry
        .update(kind, ns, name, obj, Part::Main, opts)
        .await?;
    Ok(json_response(StatusCode::OK, &to_scale(kind, &w.object)))
}

/// A list as a `meta.k8s.io/v1` Table with the kind's columns.
fn to_table(kind: &Kind, list: &Value, q: &BTreeMap<String, String>) -> Value {
    let include = q
        .get("includeObject")
        .map_or("Metadata", String::as_str)
        .to_owned();
    let mut columns = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    columns.extend(kind.columns.iter().map(|c| {
        json!({"name": c.name, "type": c.kind, "format": "", "priority": c.priority, "description": ""})
    }));
    if let Some(custom) = &kind.custom {
        if custom.columns.is_empty() {
            columns.push(json!({"name": "Age", "type": "date", "format": "", "priority": 0,
                "description": "CreationTimestamp is a timestamp representing the server time when this object was created."}));
        }
        columns.extend(custom.columns.iter().map(|c| {
            json!({"name": c.name, "type": c.kind, "format": c.format, "priority": c.priority, "description": c.description})
        }));
    }
    let rows: Vec<Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| row(kind, o, &include))
        .collect();
    let mut metadata = json!({"resourceVersion": list["metadata"]["resourceVersion"].clone()});
    if let Some(c) = list["metadata"].get("continue") {
        metadata["continue"] = c.clone();
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn row(kind: &Kind, o: &Value, include: &str) -> Value {
    let mut cells = vec![o["metadata"]["name"].clone()];
    cells.extend(kind.columns.iter().map(|c| (c.cell)(o)));
    if let Some(custom) = &kind.custom {
        if custom.columns.is_empty() {
            cells.push(crate::kinds::age_of(
                o.pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str),
            ));
        }
        cells.extend(
            custom
                .columns
                .iter()
                .map(|c| crate::crd::cell(o, c, crate::kinds::age_of)),
        );
    }
    let object = match include {
        "None" => Value::Null,
        "Object" => o.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o["metadata"].clone(),
        }),
    };
    let mut r = json!({"cells": cells});
    if !object.is_null() {
        r["object"] = object;
    }
    r
}

fn watch_response(
    lines: futures::stream::BoxStream<'static, Bytes>,
    table: Option<Kind>,
    q: &BTreeMap<String, String>,
) -> Response {
    let include = q
        .get("includeObject")
        .map_or("Metadata", String::as_str)
        .to_owned();
    let stream = futures::stream::unfold(
        (lines, table, include, true),
        |(mut lines, table, include, first)| async move {
            let line = futures::StreamExt::next(&mut lines).await?;
            let out = match &table {
                None => line,
                Some(kind) => {
                    let mut event: Value = serde_json::from_slice(&line).unwrap_or_default();
                    let ty = event["type"].as_str().unwrap_or("").to_owned();
                    if ty != "ERROR" && ty != "BOOKMARK" {
                        let list = json!({"metadata": {"resourceVersion": event["object"]["metadata"]["resourceVersion"].clone()}, "items": [event["object"].clone()]});
                        let mut t = to_table(
                            kind,
                            &list,
                            &BTreeMap::from([("includeObject".to_owned(), include.clone())]),
                        );
                        if !first {
                            t["columnDefinitions"] = json!([]);
                        }
                        event["object"] = t;
                    }
                    let mut v = serde_json::to_vec(&event).unwrap_or_default();
                    v.push(b'\n');
                    Bytes::from(v)
                }
            };
            Some((Ok::<_, Infallible>(out), (lines, table, include, false)))
        },
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
