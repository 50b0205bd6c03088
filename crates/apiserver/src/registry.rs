//! The one generic storage path every kind goes through (kube-apiserver's
//! `registry/generic/registry/store.go`): create, get, list, update, patch, delete and watch
//! against the [`Storage`], with the object semantics Kubernetes clients rely on —
//! `resourceVersion` is the store revision, `uid` and `creationTimestamp` are set once,
//! `generation` moves on spec changes only, updates are optimistic (409 Conflict), status is a
//! subresource, finalizers hold deletion. What differs between kinds comes from [`Kind`].

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use crate::error::{Cause, Error, Result};
use crate::kinds::{Kind, labels};
use crate::managed::{self, Scope};
use crate::patch::{self, PatchType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::storage::{Change, Storage, Stored};
use crate::validation;

/// Largest object stored, once decoded and encoded again (etcd's default request limit, which
/// kube-apiserver inherits).
pub const MAX_OBJECT: usize = 1536 * 1024;

/// Namespaces every cluster starts with.
pub(crate) const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// What the query string of a list or watch says.
#[derive(Debug, Default, Clone)]
pub(crate) struct ListOptions {
    pub(crate) label_selector: LabelSelector,
    pub(crate) field_selector: FieldSelector,
    pub(crate) limit: usize,
    pub(crate) continue_token: Option<String>,
    pub(crate) resource_version: Option<String>,
    /// `resourceVersionMatch`: `Exact` or `NotOlderThan`.
    pub(crate) resource_version_match: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) bookmarks: bool,
    pub(crate) send_initial_events: bool,
}

/// `fieldValidation`: what happens to fields the kind does not have.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn (the default).
    #[default]
    Warn,
    /// Reject the request.
    Strict,
}

/// Options of a create, update or patch.
#[derive(Debug, Default, Clone)]
pub(crate) struct WriteOptions {
    pub(crate) dry_run: bool,
    pub(crate) field_validation: FieldValidation,
    /// The field manager (`fieldManager`, else derived from the User-Agent).
    pub(crate) field_manager: String,
    /// `force=true`: an apply takes conflicting fields over.
    pub(crate) force: bool,
    /// Set internally: managedFields were computed by a server-side apply.
    pub(crate) applied: bool,
}

impl WriteOptions {
    /// The manager name, `unknown` when neither the request nor its User-Agent names one.
    fn manager(&self) -> &str {
        if self.field_manager.is_empty() {
            "unknown"
        } else {
            &self.field_manager
        }
    }
}

/// Options of a delete (query string and `DeleteOptions` body).
#[derive(Debug, Default, Clone)]
pub(crate) struct DeleteOptions {
    pub(crate) dry_run: bool,
    pub(crate) grace_period: Option<i64>,
    pub(crate) propagation: Option<String>,
    pub(crate) precondition_uid: Option<String>,
    pub(crate) precondition_rv: Option<String>,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The object (status changes ignored when the kind has a status subresource).
    Main,
    /// `/status`: only status changes.
    Status,
}

/// The answer of a write: the object and warnings for the `Warning` header.
pub(crate) struct Written {
    pub(crate) object: Value,
    pub(crate) warnings: Vec<String>,
    pub(crate) created: bool,
}

/// The generic registry.
pub(crate) struct Registry {
    pub(crate) storage: Storage,
    /// The built-in kinds, then those of the CustomResourceDefinitions (replaced whole when a
    /// CRD changes).
    kinds: std::sync::RwLock<std::sync::Arc<Vec<Kind>>>,
    builtin: Vec<Kind>,
    /// Bumped whenever the served kinds change (discovery and OpenAPI caches key on it).
    generation: std::sync::atomic::AtomicU64,
    /// Serialises Service address allocation so no address is handed out twice.
    allocation: tokio::sync::Mutex<()>,
    /// Watch events decoded once for every watcher.
    events: crate::fanout::EventCache,
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn name_of(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn meta_mut(o: &mut Value) -> &mut Map<String, Value> {
    if !o.is_object() {
        *o = json!({});
    }
    let obj = o.as_object_mut().expect("object");
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("object")
}

/// The part of an object that counts as its spec (everything but metadata and status).
fn spec_part(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        for k in ["metadata", "status", "kind", "apiVersion"] {
            m.remove(k);
        }
    }
    o
}

/// Paths of fields in `input` that the typed round trip dropped (unknown fields). `path` is the
/// path so far (grown and truncated in place: no allocation per field visited).
fn unknown_fields(input: &Value, output: &Value, path: &mut String, out: &mut Vec<String>) {
    let len = path.len();
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match o.get(k) {
                    None if !v.is_null() => out.push(path.clone()),
                    None => {}
                    Some(ov) => unknown_fields(v, ov, path, out),
                }
                path.truncate(len);
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                use std::fmt::Write;
                let _ = write!(path, "[{n}]");
                unknown_fields(iv, ov, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// A random suffix from Kubernetes' alphabet (no vowels, no confusable digits).
fn random_suffix(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
}

impl Registry {
    pub(crate) fn new(storage: Storage, kinds: Vec<Kind>) -> Self {
        Registry {
            storage,
            kinds: std::sync::RwLock::new(std::sync::Arc::new(kinds.clone())),
            builtin: kinds,
            generation: std::sync::atomic::AtomicU64::new(0),
            allocation: tokio::sync::Mutex::new(()),
            events: crate::fanout::EventCache::default(),
        }
    }

    /// The kinds served now.
    pub(crate) fn kinds(&self) -> std::sync::Arc<Vec<Kind>> {
        self.kinds.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes whenever the served kinds change.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The kind serving `plural` in `group`/`version`.
    pub(crate) fn kind(&self, group: &str, version: &str, plural: &str) -> Option<Kind> {
        self.kinds()
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
            .cloned()
    }

    /// Rebuilds the served kinds from the stored CustomResourceDefinitions.
    pub(crate) async fn refresh_custom(&self) -> Result<()> {
        let page = self
            .storage
            .list(
                "/registry/apiextensions.k8s.io/customresourcedefinitions/",
                None,
                0,
                0,
            )
            .await?;
        let mut kinds = self.builtin.clone();
        for stored in &page.items {
            let crd: Value = serde_json::from_slice(&stored.value).unwrap_or_default();
            if crd.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            for k in crate::crd::kinds_of(&crd) {
                // A built-in resource keeps its name.
                if !kinds
                    .iter()
                    .any(|b| b.group == k.group && b.version == k.version && b.plural == k.plural)
                {
                    kinds.push(k);
                }
            }
        }
        *self.kinds.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(kinds);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// After a CRD was written: its status says it is established, and its kinds are served.
    async fn crd_written(&self, name: &str) -> Result<()> {
        let crd_kind = self
            .kind("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .expect("CRDs are built in");
        for _ in 0..16 {
            let Some(stored) = self.storage.get(&crd_kind.key("", name)).await? else {
                break;
            };
            let mut crd: Value = serde_json::from_slice(&stored.value)
                .map_err(|e| Error::Internal(format!("stored CRD is not JSON: {e}")))?;
            if crd.pointer("/metadata/deletionTimestamp").is_some() {
                break;
            }
            let mut status = crate::crd::accepted_status(&crd, &now());
            // Keep transition times of conditions that did not change.
            if let Some(old) = crd.pointer("/status/conditions")
                && old.as_array().map(Vec::len) == Some(2)
                && old
                    .as_array()
                    .is_some_and(|c| c.iter().all(|c| c["status"] == "True"))
            {
                status["conditions"] = old.clone();
            }
            if crd.get("status") == Some(&status) {
                break;
            }
            crd["status"] = status;
            match self
                .storage
                .update(
                    &stored.key,
                    serde_json::to_vec(&crd).expect("JSON"),
                    stored.revision,
                    || Self::conflict(&crd_kind, name),
                )
                .await
            {
                Ok(_) => break,
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        self.refresh_custom().await
    }

    /// Deletes every object of a CRD's kind (all versions share one prefix).
    async fn delete_custom_objects(&self, crd: &Value) -> Result<()> {
        let (Some(group), Some(plural)) = (
            crd.pointer("/spec/group").and_then(Value::as_str),
            crd.pointer("/spec/names/plural").and_then(Value::as_str),
        ) else {
            return Ok(());
        };
        let prefix = format!("/registry/{group}/{plural}/");
        let page = self.storage.list(&prefix, None, 0, 0).await?;
        for stored in page.items {
            match self
                .storage
                .delete(&stored.key, stored.revision, || {
                    Error::Internal("raced".into())
                })
                .await
            {
                Ok(_) | Err(Error::Internal(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn apply_writer<'a>(
        &self,
        kind: &'a Kind,
        part: Part,
        opts: &'a WriteOptions,
        now: &'a str,
    ) -> managed::Writer<'a> {
        managed::Writer {
            manager: opts.manager(),
            api_version: kind.api_version(),
            subresource: if part == Part::Status { "status" } else { "" },
            scope: match (part, kind.status) {
                (Part::Status, _) => Scope::Status,
                (Part::Main, true) => Scope::Main,
                (Part::Main, false) => Scope::All,
            },
            now,
        }
    }

    /// Creates the namespaces every cluster has, if missing.
    pub(crate) async fn bootstrap(&self) -> Result<()> {
        self.refresh_custom().await?;
        let ns = self
            .kind("", "v1", "namespaces")
            .expect("namespaces are built in");
        for name in SYSTEM_NAMESPACES {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match self.create(&ns, "", obj, &WriteOptions::default()).await {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A stored value as the API returns it: apiVersion, kind and resourceVersion set.
    pub(crate) fn decode(&self, kind: &Kind, stored: &Stored) -> Result<Value> {
        let mut v: Value = serde_json::from_slice(&stored.value)
            .map_err(|e| Error::Internal(format!("stored {} is not JSON: {e}", stored.key)))?;
        self.stamp(kind, &mut v, stored.revision);
        Ok(v)
    }

    fn stamp(&self, kind: &Kind, v: &mut Value, revision: u64) {
        if let Some(m) = v.as_object_mut() {
            m.insert("apiVersion".into(), json!(kind.api_version()));
            m.insert("kind".into(), json!(kind.kind));
        }
        meta_mut(v).insert("resourceVersion".into(), json!(revision.to_string()));
    }

    fn encode(v: &Value) -> Vec<u8> {
        if v.pointer("/metadata/resourceVersion").is_none() && v.get("metadata").is_some() {
            // Nothing to leave out (a create): no copy.
            return serde_json::to_vec(v).expect("JSON values serialize");
        }
        let mut v = v.clone();
        meta_mut(&mut v).remove("resourceVersion");
        serde_json::to_vec(&v).expect("JSON values serialize")
    }

    /// [`encode`](Self::encode), refusing objects over [`MAX_OBJECT`].
    fn encode_checked(v: &Value) -> Result<Vec<u8>> {
        let bytes = Self::encode(v);
        if bytes.len() > MAX_OBJECT {
            return Err(Error::ObjectTooLarge {
                size: bytes.len(),
                limit: MAX_OBJECT,
            });
        }
        Ok(bytes)
    }

    fn not_found(kind: &Kind, name: &str) -> Error {
        Error::NotFound {
            resource: kind.resource(),
            name: name.to_owned(),
        }
    }

    fn conflict(kind: &Kind, name: &str) -> Error {
        Error::Conflict {
            resource: kind.resource(),
            name: name.to_owned(),
            message: "the object has been modified; please apply your changes to the latest version and try again".into(),
        }
    }

    /// The current object and its revision.
    pub(crate) async fn get_stored(
        &self,
        kind: &Kind,
        namespace: &str,
        name: &str,
    ) -> Result<(Value, u64)> {
        let stored = self
            .storage
            .get(&kind.key(namespace, name))
            .await?
            .ok_or_else(|| Self::not_found(kind, name))?;
        Ok((self.decode(kind, &stored)?, stored.revision))
    }

    /// GET of one object.
    pub(crate) async fn get(&self, kind: &Kind, namespace: &str, name: &str) -> Result<Value> {
        Ok(self.get_stored(kind, namespace, name).await?.0)
    }

    fn matches(&self, kind: &Kind, o: &Value, opts: &ListOptions) -> Result<bool> {
        if !opts.label_selector.matches(&labels(o)) {
            return Ok(false);
        }
        for (field, value, eq) in &opts.field_selector.terms {
            let actual = match field.as_str() {
                "metadata.name" => name_of(o).to_owned(),
                "metadata.namespace" => o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                f => (kind.field)(o, f)
                    .ok_or_else(|| Error::BadRequest(format!("field label not supported: {f}")))?,
            };
            if (actual == *value) != *eq {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// LIST: the matching objects, one page of them, and the list's resourceVersion.
    pub(crate) async fn list(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Value> {
        let mut items = Vec::new();
        let metadata = self
            .list_with(kind, namespace, opts, |stored| {
                let o = self.decode(kind, stored)?;
                if self.matches(kind, &o, opts)? {
                    items.push(o);
                    return Ok(true);
                }
                Ok(false)
            })
            .await?;
        Ok(json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.kind),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// LIST answered as JSON bytes without building the objects: each stored value is copied
    /// with its resourceVersion spliced in (only its top level and metadata are parsed, and the
    /// labels when a label selector asks). Lists with a field selector go through
    /// [`list`](Self::list).
    pub(crate) async fn list_json(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Vec<u8>> {
        if !opts.field_selector.terms.is_empty() {
            return Ok(serde_json::to_vec(&self.list(kind, namespace, opts).await?)
                .expect("JSON values serialize"));
        }
        let api_version = kind.api_version();
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(b"{\"apiVersion\":");
        serde_json::to_writer(&mut out, &api_version).expect("JSON");
        out.extend_from_slice(b",\"kind\":");
        serde_json::to_writer(&mut out, &format!("{}List", kind.kind)).expect("JSON");
        out.extend_from_slice(b",\"items\":[");
        let mut first = true;
        let metadata = self
            .list_with(kind, namespace, opts, |stored| {
                let at = out.len();
                if !first {
                    out.push(b',');
                }
                match raw_item(kind, &api_version, stored, &opts.label_selector, &mut out) {
                    Ok(true) => {
                        first = false;
                        Ok(true)
                    }
                    Ok(false) => {
                        out.truncate(at);
                        Ok(false)
                    }
                    Err(e) => Err(Error::Internal(format!(
                        "stored {} is not JSON: {e}",
                        stored.key
                    ))),
                }
            })
            .await?;
        out.extend_from_slice(b"],\"metadata\":");
        serde_json::to_writer(&mut out, &metadata).expect("JSON");
        out.push(b'}');
        Ok(out)
    }

    /// The paging of a LIST: calls `item` with each stored object in key order until the page
    /// is full (`item` says whether it matched); returns the list's metadata.
    async fn list_with(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        opts: &ListOptions,
        mut item: impl FnMut(&Stored) -> Result<bool>,
    ) -> Result<Value> {
        // Check the field selector once even when nothing is stored.
        self.matches(kind, &json!({}), opts)?;
        let prefix = kind.prefix(namespace);
        let mut start = match &opts.continue_token {
            Some(token) => {
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(token)
                    .map_err(|_| Error::BadRequest("invalid continue token".into()))?;
                let t: ContinueToken = serde_json::from_slice(&raw)
                    .map_err(|_| Error::BadRequest("invalid continue token".into()))?;
                if !t.start.starts_with(&prefix) {
                    return Err(Error::BadRequest("invalid continue token".into()));
                }
                Some((t.start, t.rv))
            }
            None => None,
        };
        let (mut start, mut revision) = match start.take() {
            Some((key, rv)) => (Some(key), rv),
            None => (None, 0),
        };
        let rv = opts.resource_version.as_deref().unwrap_or("");
        let rv_number = || -> Result<u64> {
            rv.parse()
                .map_err(|_| Error::BadRequest(format!("invalid resource version {rv:?}")))
        };
        // What the list must reflect: exactly `rv`, or at least `rv`.
        let (exact, at_least) = match (opts.resource_version_match.as_deref(), rv) {
            (Some(_), _) if opts.continue_token.is_some() => {
                return Err(Error::BadRequest(
                    "resourceVersionMatch is forbidden when continue is provided".into(),
                ));
            }
            (Some(_), "") => {
                return Err(Error::BadRequest(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
                ));
            }
            (Some("Exact"), "0") => {
                return Err(Error::BadRequest(
                    "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"".into(),
                ));
            }
            (Some("Exact"), _) => (Some(rv_number()?), None),
            (Some("NotOlderThan"), _) => (None, Some(rv_number()?)),
            (Some(other), _) => {
                return Err(Error::BadRequest(format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
            // Legacy: a paged list from a version is exact, an unpaged one "not older than".
            (None, "" | "0") => (None, None),
            (None, _) if opts.continue_token.is_some() => (None, None),
            (None, _) if opts.limit > 0 => (Some(rv_number()?), None),
            (None, _) => (None, Some(rv_number()?)),
        };
        if exact.is_some() || at_least.is_some() {
            let current = self.storage.list(&prefix, None, 1, 0).await?.revision;
            let wanted = exact.or(at_least).unwrap_or(0);
            if wanted > current {
                return Err(Error::TooNew(format!(
                    "the store is at {current}, {wanted} was asked for"
                )));
            }
            if let Some(e) = exact {
                revision = e;
            }
        }
        let mut matched = 0usize;
        let mut next = None;
        let mut remaining = None;
        loop {
            let page_size = if opts.limit == 0 {
                0
            } else {
                opts.limit.max(100)
            };
            let page = self
                .storage
                .list(&prefix, start.as_deref(), page_size, revision)
                .await?;
            revision = page.revision;
            let mut last_key = None;
            for stored in &page.items {
                last_key = Some(stored.key.clone());
                if item(stored)? {
                    matched += 1;
                    if opts.limit > 0 && matched == opts.limit {
                        break;
                    }
                }
            }
            let stopped_early = last_key.as_deref() != page.items.last().map(|s| s.key.as_str());
            if opts.limit > 0 && matched == opts.limit && (page.more || stopped_early) {
                next = last_key;
                if opts.label_selector.requirements.is_empty()
                    && opts.field_selector.terms.is_empty()
                {
                    let skipped = page.items.len()
                        - page
                            .items
                            .iter()
                            .position(|s| Some(&s.key) == next.as_ref())
                            .map_or(0, |i| i + 1);
                    remaining = page.remaining.map(|r| r + skipped);
                }
                break;
            }
            if !page.more {
                break;
            }
            start = last_key;
        }
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if let Some(start) = next {
            let token = serde_json::to_vec(&ContinueToken {
                rv: revision,
                start,
            })
            .expect("token serializes");
            metadata["continue"] =
                json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
            if let Some(r) = remaining {
                metadata["remainingItemCount"] = json!(r);
            }
        }
        Ok(metadata)
    }

    /// Decodes a request body into the kind's shape: apiVersion/kind checked, unknown fields
    /// handled per `fieldValidation`, type errors rejected.
    fn normalize(
        &self,
        kind: &Kind,
        mut body: Value,
        opts: &WriteOptions,
        warnings: &mut Vec<String>,
    ) -> Result<Value> {
        let Some(map) = body.as_object_mut() else {
            return Err(Error::BadRequest(format!(
                "the body of the request must be a {} object",
                kind.kind
            )));
        };
        match map.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v != kind.api_version() => {
                return Err(Error::BadRequest(format!(
                    "the API version in the data ({v}) does not match the expected API version ({})",
                    kind.api_version()
                )));
            }
            _ => {}
        }
        match map.get("kind").and_then(Value::as_str) {
            Some(k) if k != kind.kind => {
                return Err(Error::BadRequest(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    kind.kind
                )));
            }
            _ => {}
        }
        map.insert("apiVersion".into(), json!(kind.api_version()));
        map.insert("kind".into(), json!(kind.kind));
        if let Some(custom) = &kind.custom {
            let mut unknown = Vec::new();
            crate::crd::prune(&mut body, &custom.schema, &mut unknown);
            let mut typed = body;
            // metadata still goes through ObjectMeta.
            if let Some(meta) = typed.get("metadata") {
                let m: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
                    serde_json::from_value(meta.clone()).map_err(|e| {
                        Error::BadRequest(format!(
                            "error decoding {} from request body: metadata: {e}",
                            kind.kind
                        ))
                    })?;
                typed["metadata"] = serde_json::to_value(m).expect("ObjectMeta serializes");
            }
            self.unknown_field_policy(&unknown, opts, warnings)?;
            return Ok(typed);
        }
        let mut typed = (kind.codec)(&body).map_err(|e| {
            Error::BadRequest(format!(
                "error decoding {} from request body: {e}",
                kind.kind
            ))
        })?;
        // Go's `omitempty`: empty metadata maps and lists are not kept.
        if let Some(meta) = typed.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|_, v| match v {
                Value::Object(m) => !m.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::String(s) => !s.is_empty(),
                Value::Null => false,
                _ => true,
            });
        }
        if opts.field_validation != FieldValidation::Ignore {
            let mut unknown = Vec::new();
            unknown_fields(&body, &typed, &mut String::new(), &mut unknown);
            self.unknown_field_policy(&unknown, opts, warnings)?;
        }
        Ok(typed)
    }

    /// Strict: unknown fields are an error; Warn: a warning each; Ignore: nothing.
    fn unknown_field_policy(
        &self,
        unknown: &[String],
        opts: &WriteOptions,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        if unknown.is_empty() || opts.field_validation == FieldValidation::Ignore {
            return Ok(());
        }
        let msgs: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        if opts.field_validation == FieldValidation::Strict {
            return Err(Error::BadRequest(format!(
                "strict decoding error: {}",
                msgs.join(", ")
            )));
        }
        warnings.extend(msgs);
        Ok(())
    }

    fn validate(&self, kind: &Kind, obj: &Value, old: Option<&Value>) -> Result<()> {
        let mut causes = Vec::new();
        let name = name_of(obj);
        let dns_label_only = matches!(kind.kind, "Namespace" | "Service");
        let valid_name = if dns_label_only {
            validation::is_dns_label(name)
        } else {
            validation::is_dns_subdomain(name)
        };
        if name.is_empty() {
            causes.push(Cause::new(
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        } else if !valid_name {
            causes.push(Cause::new(
                "metadata.name",
                format!("Invalid value: {name:?}: a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character", if dns_label_only { "label" } else { "subdomain" }),
            ));
        }
        validation::metadata(obj, &mut causes);
        (kind.validate)(obj, old, &mut causes);
        if let Some(custom) = &kind.custom {
            crate::crd::validate(obj, &custom.schema, &mut causes);
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid {
                kind: kind.kind.to_owned(),
                name: name.to_owned(),
                causes,
            })
        }
    }

    async fn namespace_exists(&self, namespace: &str) -> Result<()> {
        let key = format!("/registry/core/namespaces/{namespace}");
        match self.storage.get(&key).await? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound {
                resource: "namespaces".into(),
                name: namespace.to_owned(),
            }),
        }
    }

    /// Allocates a Service's cluster IP and node ports, never one already in use.
    async fn allocate(&self, obj: &mut Value) -> Result<()> {
        let ty = obj
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_owned();
        if ty == "ExternalName" {
            return Ok(());
        }
        let services = self
            .storage
            .list("/registry/core/services/", None, 0, 0)
            .await?;
        let mut ips = std::collections::BTreeSet::new();
        let mut ports = std::collections::BTreeSet::new();
        for s in &services.items {
            let v: Value = serde_json::from_slice(&s.value).unwrap_or_default();
            if let Some(ip) = v.pointer("/spec/clusterIP").and_then(Value::as_str) {
                ips.insert(ip.to_owned());
            }
            for p in v
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                    ports.insert(np);
                }
            }
        }
        let spec = obj
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Error::BadRequest("spec is required".into()))?;
        match spec.get("clusterIP").and_then(Value::as_str) {
            Some("None") => {
                spec.insert("clusterIPs".into(), json!(["None"]));
            }
            Some(ip) if !ip.is_empty() => {
                if ips.contains(ip) {
                    return Err(Error::Invalid {
                        kind: "Service".into(),
                        name: name_of(&Value::Null).to_owned(),
                        causes: vec![Cause::new(
                            "spec.clusterIP",
                            format!("Invalid value: {ip:?}: provided IP is already allocated"),
                        )],
                    });
                }
                let ip = ip.to_owned();
                spec.insert("clusterIPs".into(), json!([ip]));
            }
            _ => {
                // 10.96.0.0/12; .0.1 is the kubernetes Service's.
                let ip = (1u32..(1 << 20))
                    .map(|n| {
                        let a = (10u32 << 24) | (96 << 16) | n;
                        format!(
                            "{}.{}.{}.{}",
                            a >> 24,
                            (a >> 16) & 255,
                            (a >> 8) & 255,
                            a & 255
                        )
                    })
                    .find(|ip| !ips.contains(ip))
                    .ok_or_else(|| Error::Internal("service address range is full".into()))?;
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
            }
        }
        if matches!(ty.as_str(), "NodePort" | "LoadBalancer")
            && let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut)
        {
            for p in list {
                if p.get("nodePort").is_none() {
                    let port = (30000..=32767)
                        .find(|n| !ports.contains(n))
                        .ok_or_else(|| Error::Internal("node port range is full".into()))?;
                    ports.insert(port);
                    p["nodePort"] = json!(port);
                } else if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
                    && (!(30000..=32767).contains(&np) || !ports.insert(np))
                {
                    return Err(Error::Invalid {
                        kind: "Service".into(),
                        name: String::new(),
                        causes: vec![Cause::new(
                            "spec.ports.nodePort",
                            format!(
                                "Invalid value: {np}: provided port is already allocated or out of range"
                            ),
                        )],
                    });
                }
            }
        }
        Ok(())
    }

    /// POST: a new object.
    pub(crate) async fn create(
        &self,
        kind: &Kind,
        namespace: &str,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Written> {
        let mut warnings = Vec::new();
        let mut obj = self.normalize(kind, body, opts, &mut warnings)?;
        let meta = meta_mut(&mut obj);
        if kind.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() && ns != namespace => {
                    return Err(Error::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), json!(namespace));
                }
            }
        } else {
            meta.remove("namespace");
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty()
            && let Some(prefix) = meta.get("generateName").and_then(Value::as_str)
        {
            let mut prefix = prefix.to_owned();
            prefix.truncate(63 - 5);
            let generated = format!("{prefix}{}", random_suffix(5));
            meta.insert("name".into(), json!(generated));
        }
        let uid = uuid::Uuid::new_v4().to_string();
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now()));
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(k);
        }
        if kind.status {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        if kind.status && kind.kind != "Namespace" && kind.kind != "Node" {
            // Clients cannot set status on create (kube-apiserver resets it).
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        if kind.kind == "Job" {
            job_selector(&mut obj, &uid);
        }
        (kind.defaults)(&mut obj);
        if !opts.applied {
            let now = now();
            managed::record_update(
                kind.kind,
                None,
                &mut obj,
                &managed::Writer {
                    manager: opts.manager(),
                    api_version: kind.api_version(),
                    subresource: "",
                    scope: if kind.status { Scope::Main } else { Scope::All },
                    now: &now,
                },
            );
        }
        self.validate(kind, &obj, None)?;
        let name = name_of(&obj).to_owned();
        if kind.namespaced {
            self.namespace_exists(namespace).await?;
        }
        let key = kind.key(namespace, &name);
        let exists = || Error::AlreadyExists {
            resource: kind.resource(),
            name: name.clone(),
        };
        let _guard;
        if kind.kind == "Service" {
            _guard = self.allocation.lock().await;
            if self.storage.get(&key).await?.is_some() {
                return Err(exists());
            }
            self.allocate(&mut obj).await?;
        }
        let revision = if opts.dry_run {
            if self.storage.get(&key).await?.is_some() {
                return Err(exists());
            }
            0
        } else {
            self.storage
                .create(&key, Self::encode_checked(&obj)?, exists)
                .await?
        };
        self.stamp(kind, &mut obj, revision);
        if is_crd(kind) && !opts.dry_run {
            self.crd_written(&name).await?;
        }
        Ok(Written {
            object: obj,
            warnings,
            created: true,
        })
    }

    /// PUT: replaces an object (or its status).
    pub(crate) async fn update(
        &self,
        kind: &Kind,
        namespace: &str,
        name: &str,
        body: Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Written> {
        let mut warnings = Vec::new();
        let obj = self.normalize(kind, body, opts, &mut warnings)?;
        let body_name = name_of(&obj);
        if body_name != name {
            return Err(Error::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if kind.namespaced
            && let Some(ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
            && !ns.is_empty()
            && ns != namespace
        {
            return Err(Error::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        let (old, revision) = self.get_stored(kind, namespace, name).await?;
        let precondition = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty());
        if let Some(rv) = precondition
            && rv != revision.to_string()
        {
            return Err(Self::conflict(kind, name));
        }
        let mut written = self
            .write_update(kind, namespace, old, revision, obj, part, opts)
            .await?;
        written.warnings.extend(warnings);
        Ok(written)
    }

    /// The common tail of update and patch: merge by part, keep system metadata, bump the
    /// generation on spec changes, validate, write if anything changed.
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        kind: &Kind,
        namespace: &str,
        old: Value,
        revision: u64,
        mut obj: Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Written> {
        let name = name_of(&old).to_owned();
        if part == Part::Status {
            let mut merged = old.clone();
            match obj.get("status") {
                Some(s) => merged["status"] = s.clone(),
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            obj = merged;
        } else if kind.status {
            match old.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        {
            let old_meta = old.get("metadata").cloned().unwrap_or_default();
            let meta = meta_mut(&mut obj);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match old_meta.get(k) {
                    Some(v) => meta.insert(k.to_owned(), v.clone()),
                    None => meta.remove(k),
                };
            }
        }
        (kind.defaults)(&mut obj);
        if opts.applied {
            // Server-side apply computed the sets; keep them.
        } else {
            let now = now();
            managed::record_update(
                kind.kind,
                Some(&old),
                &mut obj,
                &managed::Writer {
                    manager: opts.manager(),
                    api_version: kind.api_version(),
                    subresource: if part == Part::Status { "status" } else { "" },
                    scope: match (part, kind.status) {
                        (Part::Status, _) => Scope::Status,
                        (Part::Main, true) => Scope::Main,
                        (Part::Main, false) => Scope::All,
                    },
                    now: &now,
                },
            );
        }
        if kind.status && spec_part(&obj) != spec_part(&old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut obj).insert("generation".into(), json!(generation + 1));
        }
        if part == Part::Main {
            self.validate(kind, &obj, Some(&old))?;
        }
        let key = kind.key(namespace, &name);
        // Finalizers gone from an object being deleted: the deletion completes.
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers_left = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers_left && !opts.dry_run {
            if is_crd(kind) {
                self.delete_custom_objects(&old).await?;
            }
            let rev = self
                .storage
                .delete(&key, revision, || Self::conflict(kind, &name))
                .await?;
            if is_crd(kind) {
                self.refresh_custom().await?;
            }
            self.stamp(kind, &mut obj, rev);
            return Ok(Written {
                object: obj,
                warnings: Vec::new(),
                created: false,
            });
        }
        let mut unchanged = obj.clone();
        meta_mut(&mut unchanged).insert("resourceVersion".into(), json!(revision.to_string()));
        if unchanged == old || opts.dry_run {
            let rv = revision;
            self.stamp(kind, &mut obj, rv);
            return Ok(Written {
                object: obj,
                warnings: Vec::new(),
                created: false,
            });
        }
        let new_revision = self
            .storage
            .update(&key, Self::encode_checked(&obj)?, revision, || {
                Self::conflict(kind, &name)
            })
            .await?;
        self.stamp(kind, &mut obj, new_revision);
        if is_crd(kind) {
            self.crd_written(&name).await?;
        }
        Ok(Written {
            object: obj,
            warnings: Vec::new(),
            created: false,
        })
    }

    /// PATCH: reads, patches and writes, retrying when another writer got in between.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn patch(
        &self,
        kind: &Kind,
        namespace: &str,
        name: &str,
        ty: PatchType,
        body: &[u8],
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Written> {
        for _ in 0..16 {
            let (old, revision) = match self.get_stored(kind, namespace, name).await {
                Ok(found) => found,
                Err(Error::NotFound { .. }) if ty == PatchType::Apply && part == Part::Main => {
                    let applied = apply_body(kind, name, body)?;
                    let now = now();
                    let mut obj = managed::apply(
                        kind.kind,
                        &json!({}),
                        &applied,
                        &self.apply_writer(kind, part, opts, &now),
                        opts.force,
                    )?;
                    for k in ["apiVersion", "kind"] {
                        obj[k] = applied[k].clone();
                    }
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                    let opts = WriteOptions {
                        applied: true,
                        ..opts.clone()
                    };
                    return self.create(kind, namespace, obj, &opts).await;
                }
                Err(e) => return Err(e),
            };
            let mut obj = old.clone();
            let applied_opts;
            let opts = if ty == PatchType::Apply {
                let applied = apply_body(kind, name, body)?;
                let now = now();
                obj = managed::apply(
                    kind.kind,
                    &old,
                    &applied,
                    &self.apply_writer(kind, part, opts, &now),
                    opts.force,
                )?;
                applied_opts = WriteOptions {
                    applied: true,
                    ..opts.clone()
                };
                &applied_opts
            } else {
                patch::apply(ty, kind.kind, &mut obj, body)?;
                opts
            };
            let mut warnings = Vec::new();
            let obj = self.normalize(kind, obj, opts, &mut warnings)?;
            if name_of(&obj) != name {
                return Err(Error::BadRequest(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    name_of(&obj)
                )));
            }
            let precondition = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !precondition.is_empty() && precondition != revision.to_string() {
                return Err(Self::conflict(kind, name));
            }
            match self
                .write_update(kind, namespace, old, revision, obj, part, opts)
                .await
            {
                Err(Error::Conflict { .. }) => continue,
                Ok(mut w) => {
                    w.warnings.extend(warnings);
                    return Ok(w);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Self::conflict(kind, name))
    }

    /// DELETE of one object: immediate, or marked (deletionTimestamp) while finalizers or a
    /// graceful pod shutdown hold it.
    pub(crate) async fn delete(
        &self,
        kind: &Kind,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value> {
        for _ in 0..16 {
            let (mut obj, revision) = self.get_stored(kind, namespace, name).await?;
            if let Some(uid) = &opts.precondition_uid
                && obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
            {
                return Err(Error::Conflict {
                    resource: kind.resource(),
                    name: name.to_owned(),
                    message: format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        obj.pointer("/metadata/uid")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                    ),
                });
            }
            if let Some(rv) = &opts.precondition_rv
                && *rv != revision.to_string()
            {
                return Err(Error::Conflict {
                    resource: kind.resource(),
                    name: name.to_owned(),
                    message: format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {revision}"
                    ),
                });
            }
            if opts.dry_run {
                return Ok(obj);
            }
            let key = kind.key(namespace, name);
            if kind.kind == "Namespace" {
                self.delete_namespace_contents(name).await?;
            }
            let mut finalizers: Vec<Value> = obj
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let added = match opts.propagation.as_deref() {
                Some("Foreground") => Some("foregroundDeletion"),
                Some("Orphan") => Some("orphan"),
                _ => None,
            };
            // The garbage collector drops these finalizers at once when nothing is owned.
            let uid = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if let Some(f) = added
                && !finalizers.contains(&json!(f))
                && self.has_dependents(namespace, &uid).await?
            {
                finalizers.push(json!(f));
            }
            let grace = if kind.kind == "Pod"
                && obj
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some()
                && obj.pointer("/status/phase").and_then(Value::as_str) != Some("Succeeded")
                && obj.pointer("/status/phase").and_then(Value::as_str) != Some("Failed")
            {
                opts.grace_period.unwrap_or_else(|| {
                    obj.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(30)
                })
            } else {
                0
            };
            if finalizers.is_empty() && grace <= 0 {
                if is_crd(kind) {
                    self.delete_custom_objects(&obj).await?;
                }
                match self
                    .storage
                    .delete(&key, revision, || Self::conflict(kind, name))
                    .await
                {
                    Ok(rev) => {
                        if is_crd(kind) {
                            self.refresh_custom().await?;
                        }
                        self.stamp(kind, &mut obj, rev);
                        return Ok(obj);
                    }
                    Err(Error::Conflict { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            let meta = meta_mut(&mut obj);
            if meta.get("deletionTimestamp").is_none() {
                meta.insert("deletionTimestamp".into(), json!(now()));
            }
            if grace > 0 {
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            if !finalizers.is_empty() {
                meta.insert("finalizers".into(), Value::Array(finalizers));
            }
            match self
                .storage
                .update(&key, Self::encode(&obj), revision, || {
                    Self::conflict(kind, name)
                })
                .await
            {
                Ok(rev) => {
                    self.stamp(kind, &mut obj, rev);
                    return Ok(obj);
                }
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Self::conflict(kind, name))
    }

    /// Whether any object in `namespace` (or cluster-scoped) names `uid` as an owner.
    async fn has_dependents(&self, namespace: &str, uid: &str) -> Result<bool> {
        for kind in self.kinds().iter() {
            let prefix = if kind.namespaced {
                kind.prefix(Some(namespace))
            } else {
                kind.prefix(None)
            };
            let page = self.storage.list(&prefix, None, 0, 0).await?;
            for stored in &page.items {
                let v: Value = serde_json::from_slice(&stored.value).unwrap_or_default();
                let owned = v
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                    });
                if owned {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Deletes everything in a namespace (what the namespace controller does).
    async fn delete_namespace_contents(&self, namespace: &str) -> Result<()> {
        let kinds: Vec<Kind> = self
            .kinds()
            .iter()
            .filter(|k| k.namespaced)
            .cloned()
            .collect();
        for kind in kinds {
            let page = self
                .storage
                .list(&kind.prefix(Some(namespace)), None, 0, 0)
                .await?;
            for stored in page.items {
                let o = self.decode(&kind, &stored)?;
                let opts = DeleteOptions {
                    grace_period: Some(0),
                    ..DeleteOptions::default()
                };
                match Box::pin(self.delete(&kind, namespace, name_of(&o), &opts)).await {
                    Ok(_) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// DELETE of a collection: every matching object.
    pub(crate) async fn delete_collection(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> Result<Value> {
        let all = self.list(kind, namespace, list).await?;
        let mut deleted = Vec::new();
        for item in all["items"].as_array().into_iter().flatten() {
            let ns = item
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            match self.delete(kind, ns, name_of(item), opts).await {
                Ok(o) => deleted.push(o),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.kind),
            "metadata": {"resourceVersion": all["metadata"]["resourceVersion"].clone()},
            "items": deleted,
        }))
    }

    /// WATCH: newline-delimited watch events until the timeout, the client leaving, or the
    /// store ending the stream.
    pub(crate) async fn watch(
        self: std::sync::Arc<Self>,
        kind: Kind,
        namespace: Option<String>,
        opts: ListOptions,
    ) -> Result<futures::stream::BoxStream<'static, Bytes>> {
        // Validate selectors before answering 200.
        self.matches(&kind, &json!({}), &opts)?;
        let prefix = kind.prefix(namespace.as_deref());
        let rv = opts.resource_version.clone().unwrap_or_default();
        let (initial, start) = if rv.is_empty() || rv == "0" || opts.send_initial_events {
            let mut list_opts = opts.clone();
            list_opts.limit = 0;
            list_opts.continue_token = None;
            // A watch-list's NotOlderThan (with or without a version) is a fresh list here.
            list_opts.resource_version_match = None;
            list_opts.resource_version = None;
            let list = self.list(&kind, namespace.as_deref(), &list_opts).await?;
            let revision: u64 = list["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let items = list["items"].as_array().cloned().unwrap_or_default();
            (items, revision)
        } else {
            let revision: u64 = rv
                .parse()
                .map_err(|_| Error::BadRequest(format!("invalid resource version {rv:?}")))?;
            (Vec::new(), revision)
        };
        let storage_watch = self.storage.watch(&prefix, start).await;
        let mut head: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
        let watch = match storage_watch {
            Ok(w) => Some(w),
            Err(e) => {
                head.push_back(crate::fanout::line("ERROR", &e.status()));
                None
            }
        };
        let deadline =
            tokio::time::Instant::now() + opts.timeout.unwrap_or(Duration::from_secs(1800));
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + BOOKMARK_INTERVAL,
            BOOKMARK_INTERVAL,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end_bookmark = watch.is_some() && opts.send_initial_events && opts.bookmarks;
        let state = WatchState {
            // A watch the store refused sends its error and nothing else.
            initial: if watch.is_some() { initial } else { Vec::new() }.into_iter(),
            registry: self,
            kind,
            opts,
            end_bookmark,
            head,
            watch,
            deadline,
            ticker,
            last: start,
        };
        Ok(futures::stream::unfold(state, |mut st| async move {
            let line = st.next_line().await?;
            Some((line, st))
        })
        .boxed())
    }
}

/// A watch in progress: the lines still to send, then the store's events.
struct WatchState {
    registry: std::sync::Arc<Registry>,
    kind: Kind,
    opts: ListOptions,
    /// The initial list (ADDED events), sent first.
    initial: std::vec::IntoIter<Value>,
    /// A watch-list's bookmark with `k8s.io/initial-events-end` follows the initial events.
    end_bookmark: bool,
    /// Lines to send before anything else (an error).
    head: std::collections::VecDeque<Bytes>,
    watch: Option<crate::storage::Watch>,
    deadline: tokio::time::Instant,
    ticker: tokio::time::Interval,
    /// The revision of the last event seen (bookmarks carry it).
    last: u64,
}

impl WatchState {
    fn bookmark(&self, revision: u64, end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        crate::fanout::line(
            "BOOKMARK",
            &json!({"apiVersion": self.kind.api_version(), "kind": self.kind.kind, "metadata": meta}),
        )
    }

    /// The next line of the watch response; None ends it (timeout, the store ended the watch,
    /// or an error was sent).
    async fn next_line(&mut self) -> Option<Bytes> {
        if let Some(line) = self.head.pop_front() {
            return Some(line);
        }
        if let Some(item) = self.initial.next() {
            return Some(crate::fanout::line("ADDED", &item));
        }
        if std::mem::take(&mut self.end_bookmark) {
            return Some(self.bookmark(self.last, true));
        }
        loop {
            let watch = self.watch.as_mut()?;
            let event = tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => return None,
                _ = self.ticker.tick() => None,
                event = watch.next() => Some(event),
            };
            let event = match event {
                None => {
                    if self.opts.bookmarks {
                        return Some(self.bookmark(self.last, false));
                    }
                    continue;
                }
                Some(None) => return None,
                Some(Some(Err(e))) => {
                    self.watch = None;
                    return Some(crate::fanout::line("ERROR", &e.status()));
                }
                Some(Some(Ok(e))) => e,
            };
            self.last = event.revision;
            if let Some(line) = self.event_line(&event) {
                return Some(line);
            }
        }
    }

    /// The line for a store event, if this watch's selectors let it through.
    fn event_line(&self, event: &crate::storage::Event) -> Option<Bytes> {
        let (registry, kind, opts) = (&self.registry, &self.kind, &self.opts);
        // Decoded and serialised once for all watchers (fanout).
        let decoded = registry.events.decode(kind, &event.key, event, |o| {
            registry.stamp(kind, o, event.revision)
        });
        let object = decoded.object.as_ref()?;
        let selects =
            !opts.label_selector.requirements.is_empty() || !opts.field_selector.terms.is_empty();
        let now_matches = !selects || registry.matches(kind, object, opts).unwrap_or(false);
        // Whether the previous value matched (None: there was none); only computed where it
        // decides the type.
        let prev_matches = || {
            event.prev.as_ref().map(|_| {
                !selects
                    || decoded
                        .prev()
                        .is_some_and(|p| registry.matches(kind, p, opts).unwrap_or(false))
            })
        };
        use crate::fanout::EventType;
        let ty = match (event.change, now_matches) {
            (Change::Deleted, true) => EventType::Deleted,
            (Change::Deleted, false) => return None,
            (_, false) => match prev_matches() {
                Some(true) => EventType::Deleted,
                _ => return None,
            },
            (Change::Added, true) => EventType::Added,
            (Change::Modified, true) => match prev_matches() {
                Some(false) => EventType::Added,
                _ => EventType::Modified,
            },
        };
        Some(decoded.line(ty))
    }
}

fn is_crd(kind: &Kind) -> bool {
    kind.kind == "CustomResourceDefinition" && kind.group == "apiextensions.k8s.io"
}

/// The object a server-side apply sends: JSON or YAML, with apiVersion, kind and a name that
/// matches the URL.
fn apply_body(kind: &Kind, name: &str, body: &[u8]) -> Result<Value> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => serde_yaml_ng::from_slice(body)
            .map_err(|e| Error::BadRequest(format!("error decoding YAML: {e}")))?,
    };
    if !v.is_object() {
        return Err(Error::BadRequest(
            "the apply configuration must be an object".into(),
        ));
    }
    let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let k = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || k.is_empty() {
        return Err(Error::BadRequest(
            "apiVersion and kind must be set in an apply configuration".into(),
        ));
    }
    if api_version != kind.api_version() || k != kind.kind {
        return Err(Error::BadRequest(format!(
            "the apply configuration is a {k} of {api_version}, not a {} of {}",
            kind.kind,
            kind.api_version()
        )));
    }
    if let Some(n) = v.pointer("/metadata/name").and_then(Value::as_str)
        && n != name
    {
        return Err(Error::BadRequest(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    Ok(v)
}

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);

/// A Job's generated selector and the labels its pods carry (`batch/v1` with manualSelector
/// unset).
fn job_selector(obj: &mut Value, uid: &str) {
    if obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let name = name_of(obj).to_owned();
    let labels: BTreeMap<&str, &str> = [
        ("batch.kubernetes.io/controller-uid", uid),
        ("batch.kubernetes.io/job-name", name.as_str()),
        ("controller-uid", uid),
        ("job-name", name.as_str()),
    ]
    .into_iter()
    .collect();
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        let template = spec.entry("template").or_insert_with(|| json!({}));
        let meta = template
            .as_object_mut()
            .map(|t| t.entry("metadata").or_insert_with(|| json!({})));
        if let Some(meta) = meta.and_then(Value::as_object_mut) {
            let l = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = l.as_object_mut() {
                for (k, v) in labels {
                    l.insert(k.to_owned(), json!(v));
                }
            }
        }
    }
}

/// Writes stored object `stored` as the API shows it (apiVersion, kind, resourceVersion set)
/// to `out` if its labels match `selector`; returns whether it did. Parses only the top level
/// and `metadata` (and the labels when the selector has requirements); everything else is
/// copied as it was stored.
fn raw_item(
    kind: &Kind,
    api_version: &str,
    stored: &Stored,
    selector: &LabelSelector,
    out: &mut Vec<u8>,
) -> std::result::Result<bool, serde_json::Error> {
    use serde_json::value::RawValue;
    type Fields<'a> = BTreeMap<String, &'a RawValue>;
    let mut top: Fields<'_> = serde_json::from_slice(&stored.value)?;
    let mut meta: Fields<'_> = match top.get("metadata") {
        Some(m) => serde_json::from_str(m.get())?,
        None => Fields::new(),
    };
    if !selector.requirements.is_empty() {
        let labels: BTreeMap<String, String> = match meta.get("labels") {
            Some(l) => serde_json::from_str(l.get())?,
            None => BTreeMap::new(),
        };
        if !selector.matches(&labels) {
            return Ok(false);
        }
    }
    let rv = RawValue::from_string(format!("\"{}\"", stored.revision))?;
    meta.insert("resourceVersion".into(), &rv);
    let meta = serde_json::value::to_raw_value(&meta)?;
    let api_version = serde_json::value::to_raw_value(api_version)?;
    let kind_name = serde_json::value::to_raw_value(kind.kind)?;
    top.insert("metadata".into(), &meta);
    top.insert("apiVersion".into(), &api_version);
    top.insert("kind".into(), &kind_name);
    serde_json::to_writer(out, &top)?;
    Ok(true)
}
