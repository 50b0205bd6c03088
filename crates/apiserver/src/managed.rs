//! Field ownership (`metadata.managedFields`) and server-side apply, in the shape of
//! Kubernetes' structured-merge-diff: every manager owns a set of fields (`fieldsV1`: `f:<field>`
//! for a map key, `k:{"name":"x"}` for a list element by its merge key, `v:<value>` for a set
//! element, `.` for the element itself); an apply owns exactly what it sends, conflicts with
//! other owners whose values it would change (409, unless `force`), and removes fields it no
//! longer sends when nobody else owns them. Create, update and the other patches
//! (`operation: Update`) take the fields they change from whoever owned them.
//!
//! Lists merge as the kind's strategic-merge keys say ([`merge_key`](crate::patch::merge_key)),
//! the list-map keys the OpenAPI documents publish; other lists are atomic (one leaf).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::error::{Cause, Error, Result};
use crate::patch::{ListStrategy, merge_key};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A map key (`f:name`).
    Field(String),
    /// A list element identified by its key fields (`k:{"name":"x"}`).
    Key(Value),
    /// A set element (`v:"x"`).
    Val(Value),
}

impl PartialOrd for Step {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Step {
    /// The order of the encoded steps (`f:...` < `k:...` < `v:...`, then the rest byte-wise),
    /// which is the order of `fieldsV1` keys, without encoding field names (the common case:
    /// a set is built with many comparisons).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        match (self, other) {
            (Step::Field(a), Step::Field(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Step::Field(_), _) => Ordering::Less,
            (_, Step::Field(_)) => Ordering::Greater,
            (Step::Key(_), Step::Val(_)) => Ordering::Less,
            (Step::Val(_), Step::Key(_)) => Ordering::Greater,
            _ => self.encode().cmp(&other.encode()),
        }
    }
}

impl Step {
    fn encode(&self) -> String {
        match self {
            Step::Field(f) => format!("f:{f}"),
            Step::Key(k) => format!("k:{}", serde_json::to_string(k).unwrap_or_default()),
            Step::Val(v) => format!("v:{}", serde_json::to_string(v).unwrap_or_default()),
        }
    }

    fn decode(s: &str) -> Option<Step> {
        let (tag, rest) = s.split_at_checked(2)?;
        match tag {
            "f:" => Some(Step::Field(rest.to_owned())),
            "k:" => serde_json::from_str(rest).ok().map(Step::Key),
            "v:" => serde_json::from_str(rest).ok().map(Step::Val),
            _ => None,
        }
    }

    /// How the path prints in a conflict (`.spec.containers[name="nginx"].image`).
    fn display(&self) -> String {
        match self {
            Step::Field(f) => format!(".{f}"),
            Step::Key(Value::Object(m)) => {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", parts.join(","))
            }
            Step::Key(v) | Step::Val(v) => format!("[={v}]"),
        }
    }
}

/// A path from the object root.
pub(crate) type Path = Vec<Step>;

/// A set of field paths, as a tree (`fieldsV1`). A node is "owned" when `own` is set (a leaf, or
/// `.` for a list element or map that is itself owned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSet {
    own: bool,
    children: BTreeMap<Step, FieldSet>,
}

impl FieldSet {
    /// Parses a `fieldsV1` object.
    pub(crate) fn from_v1(v: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let Some(m) = v.as_object() {
            for (k, child) in m {
                if k == "." {
                    set.own = true;
                } else if let Some(step) = Step::decode(k) {
                    let mut c = FieldSet::from_v1(child);
                    if child.as_object().is_some_and(Map::is_empty) {
                        c.own = true;
                    }
                    set.children.insert(step, c);
                }
            }
        }
        set
    }

    /// The `fieldsV1` object.
    pub(crate) fn to_v1(&self) -> Value {
        let mut m = Map::new();
        if self.own && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (step, child) in &self.children {
            m.insert(step.encode(), child.to_v1());
        }
        Value::Object(m)
    }

    pub(crate) fn is_empty(&self) -> bool {
        !self.own && self.children.is_empty()
    }

    pub(crate) fn insert(&mut self, path: &[Step]) {
        match path.split_first() {
            None => self.own = true,
            Some((s, rest)) => self.children.entry(s.clone()).or_default().insert(rest),
        }
    }

    /// Every owned path.
    pub(crate) fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.walk(&mut Vec::new(), &mut out);
        out
    }

    fn walk(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        if self.own {
            out.push(prefix.clone());
        }
        for (s, c) in &self.children {
            prefix.push(s.clone());
            c.walk(prefix, out);
            prefix.pop();
        }
    }

    pub(crate) fn contains(&self, path: &[Step]) -> bool {
        match path.split_first() {
            None => self.own,
            Some((s, rest)) => self.children.get(s).is_some_and(|c| c.contains(rest)),
        }
    }

    /// Whether any owned path starts with `path` (the subtree is someone's).
    fn owns_under(&self, path: &[Step]) -> bool {
        match path.split_first() {
            None => !self.is_empty(),
            Some((s, rest)) => self.children.get(s).is_some_and(|c| c.owns_under(rest)),
        }
    }

    pub(crate) fn remove(&mut self, path: &[Step]) {
        match path.split_first() {
            None => self.own = false,
            Some((s, rest)) => {
                if let Some(c) = self.children.get_mut(s) {
                    c.remove(rest);
                    if c.is_empty() {
                        self.children.remove(s);
                    }
                }
            }
        }
    }

    /// Paths in `self` but not in `other`.
    pub(crate) fn difference(&self, other: &FieldSet) -> Vec<Path> {
        self.paths()
            .into_iter()
            .filter(|p| !other.contains(p))
            .collect()
    }
}

/// Fields of `obj` that an apply or an update manages: everything but the identity fields
/// (apiVersion, kind, name, namespace) and what the server owns (uid, resourceVersion, ...),
/// and without `status` (when `status_subresource` and the write is to the main resource) or
/// everything but `status` (a write to `/status`).
pub(crate) fn fieldset(kind: &str, obj: &Value, scope: Scope) -> FieldSet {
    let mut set = FieldSet::default();
    let Some(m) = obj.as_object() else {
        return set;
    };
    for (k, v) in m {
        if matches!(k.as_str(), "apiVersion" | "kind") || v.is_null() {
            continue;
        }
        match scope {
            Scope::Main if k == "status" => continue,
            Scope::Status if k != "status" => continue,
            _ => {}
        }
        let mut path = vec![Step::Field(k.clone())];
        if k == "metadata" {
            let Some(meta) = v.as_object() else { continue };
            for (mk, mv) in meta {
                if matches!(
                    mk.as_str(),
                    "name"
                        | "namespace"
                        | "uid"
                        | "resourceVersion"
                        | "generation"
                        | "creationTimestamp"
                        | "deletionTimestamp"
                        | "deletionGracePeriodSeconds"
                        | "managedFields"
                        | "selfLink"
                ) || mv.is_null()
                {
                    continue;
                }
                path.push(Step::Field(mk.clone()));
                collect(
                    kind,
                    mv,
                    &mut vec!["metadata".into()],
                    mk,
                    &mut path,
                    &mut set,
                );
                path.pop();
            }
            continue;
        }
        collect(kind, v, &mut Vec::new(), k, &mut path, &mut set);
    }
    set
}

/// Which part of an object a write manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The whole object (a kind without a status subresource).
    All,
    /// All but status.
    Main,
    /// Only status.
    Status,
}

/// Adds the leaves of `v` (the value of field `field` under the field-name path `names`).
fn collect(
    kind: &str,
    v: &Value,
    names: &mut Vec<String>,
    field: &str,
    path: &mut Path,
    set: &mut FieldSet,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            names.push(field.to_owned());
            for (k, child) in m {
                if child.is_null() {
                    continue;
                }
                path.push(Step::Field(k.clone()));
                collect(kind, child, names, k, path, set);
                path.pop();
            }
            names.pop();
        }
        Value::Array(items) if !items.is_empty() => {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            match merge_key(kind, &refs, field) {
                ListStrategy::Replace => set.insert(path),
                ListStrategy::MergeScalars => {
                    for item in items {
                        path.push(Step::Val(item.clone()));
                        set.insert(path);
                        path.pop();
                    }
                }
                ListStrategy::MergeByKey(key) => {
                    names.push(field.to_owned());
                    for item in items {
                        let Some(id) = item.get(key) else {
                            continue;
                        };
                        path.push(Step::Key(json!({ key: id })));
                        set.insert(path);
                        if let Some(m) = item.as_object() {
                            for (k, child) in m {
                                if child.is_null() {
                                    continue;
                                }
                                path.push(Step::Field(k.clone()));
                                collect(kind, child, names, k, path, set);
                                path.pop();
                            }
                        }
                        path.pop();
                    }
                    names.pop();
                }
            }
        }
        _ => set.insert(path),
    }
}

/// The value at `path` in `obj`.
fn lookup<'a>(obj: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in path {
        cur = match step {
            Step::Field(f) => cur.get(f)?,
            Step::Key(Value::Object(k)) => cur
                .as_array()?
                .iter()
                .find(|e| k.iter().all(|(kk, kv)| e.get(kk) == Some(kv)))?,
            Step::Val(v) => cur.as_array()?.iter().find(|e| *e == v)?,
            Step::Key(_) => return None,
        };
    }
    Some(cur)
}

/// Removes the value at `path` from `obj` (a map key, a list element).
fn remove_at(obj: &mut Value, path: &[Step]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for step in parent {
        let next = match step {
            Step::Field(f) => cur.get_mut(f),
            Step::Key(Value::Object(k)) => cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|e| k.iter().all(|(kk, kv)| e.get(kk) == Some(kv)))
            }),
            Step::Val(v) => cur
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|e| *e == v)),
            Step::Key(_) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(Value::Object(k)) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|e| !k.iter().all(|(kk, kv)| e.get(kk) == Some(kv)));
            }
        }
        Step::Val(v) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|e| e != v);
            }
        }
        Step::Key(_) => {}
    }
}

/// Removes maps and lists that removals left empty under `path`'s ancestors.
fn prune_empty(obj: &mut Value, path: &[Step]) {
    for n in (1..path.len()).rev() {
        let parent = &path[..n];
        if lookup(obj, parent).is_some_and(|v| {
            v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty)
        }) {
            remove_at(obj, parent);
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) manager: String,
    pub(crate) operation: String,
    pub(crate) api_version: String,
    pub(crate) time: String,
    pub(crate) subresource: String,
    pub(crate) fields: FieldSet,
}

impl Entry {
    fn from_json(v: &Value) -> Option<Entry> {
        Some(Entry {
            manager: v.get("manager")?.as_str()?.to_owned(),
            operation: v
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("Update")
                .to_owned(),
            api_version: v
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            time: v
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            subresource: v
                .get("subresource")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            fields: v.get("fieldsV1").map(FieldSet::from_v1).unwrap_or_default(),
        })
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_v1(),
        });
        if !self.subresource.is_empty() {
            v["subresource"] = json!(self.subresource);
        }
        v
    }

    fn same_slot(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

/// The entries of an object's `metadata.managedFields`.
pub(crate) fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Entry::from_json)
        .collect()
}

/// Writes `entries` into `obj` (none: the field is dropped).
pub(crate) fn set_entries(obj: &mut Value, entries: &[Entry]) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Who writes, and how.
#[derive(Debug, Clone)]
pub(crate) struct Writer<'a> {
    pub(crate) manager: &'a str,
    pub(crate) api_version: String,
    pub(crate) subresource: &'a str,
    pub(crate) scope: Scope,
    pub(crate) now: &'a str,
}

/// An update (create, PUT, or a non-apply patch) from `old` (None on create) to `new`: the
/// writer's Update entry takes every field whose value changed or appeared, other managers lose
/// them; fields gone from the object leave every set. `new`'s managedFields are replaced.
pub(crate) fn record_update(kind: &str, old: Option<&Value>, new: &mut Value, w: &Writer<'_>) {
    // A client that changed managedFields itself (kubectl moving client-side apply ownership to
    // server-side apply) is taken at its word; otherwise the stored sets are the base.
    let sent = new.pointer("/metadata/managedFields");
    let stored = old.and_then(|o| o.pointer("/metadata/managedFields"));
    let mut list = match sent {
        Some(s) if s.as_array().is_some_and(|a| !a.is_empty()) && Some(s) != stored => entries(new),
        _ => old.map(entries).unwrap_or_default(),
    };
    let now_set = fieldset(kind, new, w.scope);
    if old.is_none() && list.is_empty() {
        // A create: every field is new and the writer's (what the general path below computes,
        // without listing and looking up every path twice).
        if !now_set.is_empty() {
            list.push(Entry {
                manager: w.manager.to_owned(),
                operation: "Update".into(),
                api_version: w.api_version.clone(),
                time: w.now.to_owned(),
                subresource: w.subresource.to_owned(),
                fields: now_set,
            });
        }
        set_entries(new, &list);
        return;
    }
    let changed: Vec<Path> = now_set
        .paths()
        .into_iter()
        .filter(|p| old.and_then(|o| lookup(o, p)) != lookup(new, p))
        .collect();
    // Fields that no longer exist are nobody's.
    let all = fieldset(kind, new, Scope::All);
    for e in &mut list {
        for p in e.fields.paths() {
            if !all.contains(&p) && lookup(new, &p).is_none() {
                e.fields.remove(&p);
            }
        }
    }
    if !changed.is_empty() {
        for e in &mut list {
            if e.same_slot(w.manager, "Update", w.subresource) {
                continue;
            }
            for p in &changed {
                e.fields.remove(p);
            }
        }
        let slot = match list
            .iter()
            .position(|e| e.same_slot(w.manager, "Update", w.subresource))
        {
            Some(i) => i,
            None => {
                list.push(Entry {
                    manager: w.manager.to_owned(),
                    operation: "Update".into(),
                    api_version: w.api_version.clone(),
                    time: w.now.to_owned(),
                    subresource: w.subresource.to_owned(),
                    fields: FieldSet::default(),
                });
                list.len() - 1
            }
        };
        let e = &mut list[slot];
        for p in &changed {
            e.fields.insert(p);
        }
        e.time = w.now.to_owned();
        e.api_version = w.api_version.clone();
    }
    set_entries(new, &list);
}

/// Server-side apply of `applied` by `w` onto `current` (an empty object for a create):
/// the new object with its managedFields, or a 409 naming the conflicting fields and managers.
pub(crate) fn apply(
    kind: &str,
    current: &Value,
    applied: &Value,
    w: &Writer<'_>,
    force: bool,
) -> Result<Value> {
    let mut list = entries(current);
    let applied_set = fieldset(kind, applied, w.scope);
    let previous = list
        .iter()
        .find(|e| e.same_slot(w.manager, "Apply", w.subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    // Conflicts: fields another manager owns whose value the apply would change.
    let mut conflicts: Vec<(String, String, Path)> = Vec::new();
    for e in &list {
        if e.manager == w.manager && e.subresource == w.subresource {
            continue;
        }
        for p in applied_set.paths() {
            if e.fields.contains(&p) && differs(current, applied, &p) {
                conflicts.push((e.manager.clone(), e.api_version.clone(), p));
            }
        }
    }
    // kubectl moving from client-side to server-side apply takes over what its last
    // client-side apply set (kube-apiserver's lastAppliedManager).
    if w.manager == "kubectl"
        && let Some(last) = current
            .pointer("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration")
            .and_then(Value::as_str)
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
    {
        let last_set = fieldset(kind, &last, w.scope);
        let (taken, rest): (Vec<_>, Vec<_>) = conflicts
            .into_iter()
            .partition(|(_, _, p)| last_set.contains(p));
        for e in &mut list {
            for (m, _, p) in &taken {
                if &e.manager == m {
                    e.fields.remove(p);
                }
            }
        }
        conflicts = rest;
    }
    if !conflicts.is_empty() {
        if !force {
            let causes: Vec<Cause> = conflicts
                .iter()
                .map(|(m, v, p)| {
                    Cause::new(
                        p.iter().map(Step::display).collect::<String>(),
                        format!("conflict with \"{m}\" using {v}"),
                    )
                })
                .collect();
            return Err(Error::ApplyConflict { causes });
        }
        for e in &mut list {
            for (m, _, p) in &conflicts {
                if &e.manager == m {
                    e.fields.remove(p);
                }
            }
        }
    }
    // Fields the manager no longer applies: removed when nobody else owns them.
    let mut obj = current.clone();
    for p in previous.difference(&applied_set) {
        let other_owner = list
            .iter()
            .any(|e| !e.same_slot(w.manager, "Apply", w.subresource) && e.fields.owns_under(&p));
        if !other_owner {
            remove_at(&mut obj, &p);
            prune_empty(&mut obj, &p);
        }
    }
    // Everything applied now lands (lists with keys merge by key, others replace).
    let mut patch = applied.clone();
    if let Some(m) = patch.as_object_mut() {
        if w.scope == Scope::Main {
            m.remove("status");
        }
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
            meta.remove("resourceVersion");
        }
    }
    crate::patch::strategic_merge(kind, &mut obj, &patch)?;
    // Ownership: the apply owns what it sent; other managers keep the rest.
    for e in &mut list {
        if e.same_slot(w.manager, "Apply", w.subresource) {
            continue;
        }
        if e.manager == w.manager && e.subresource == w.subresource {
            // The same manager's earlier updates are superseded by what it now applies.
            for p in applied_set.paths() {
                e.fields.remove(&p);
            }
        }
    }
    match list
        .iter_mut()
        .find(|e| e.same_slot(w.manager, "Apply", w.subresource))
    {
        Some(e) => {
            e.fields = applied_set;
            e.time = w.now.to_owned();
            e.api_version = w.api_version.clone();
        }
        None => list.push(Entry {
            manager: w.manager.to_owned(),
            operation: "Apply".into(),
            api_version: w.api_version.clone(),
            time: w.now.to_owned(),
            subresource: w.subresource.to_owned(),
            fields: applied_set,
        }),
    }
    if !obj.is_object() {
        obj = json!({});
    }
    if obj.get("metadata").is_none() {
        obj["metadata"] = json!({});
    }
    set_entries(&mut obj, &list);
    Ok(obj)
}

/// Whether applying `applied` changes the value at `path` (a leaf or an owned element).
fn differs(current: &Value, applied: &Value, path: &[Step]) -> bool {
    match (lookup(current, path), lookup(applied, path)) {
        (Some(c), Some(a)) => {
            // An element or map the apply only adds to is not changed by it.
            if c.is_object() && a.is_object() {
                return false;
            }
            c != a
        }
        (None, None) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1".into(),
            subresource: "",
            scope: Scope::Main,
            now: "2026-01-01T00:00:00Z",
        }
    }

    #[test]
    fn fields_v1_round_trips_with_keys_and_sets() {
        let obj = json!({"metadata": {"name": "x", "labels": {"a": "1"}, "finalizers": ["f"]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let set = fieldset("Deployment", &obj, Scope::Main);
        let v1 = set.to_v1();
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:a": {}}, "f:finalizers": {"v:\"f\"": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
        );
        assert_eq!(FieldSet::from_v1(&v1), set);
    }

    #[test]
    fn two_managers_conflict_and_force_takes_over() {
        let a = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        let obj = apply("Deployment", &json!({}), &a, &writer("alice"), false).unwrap();
        // Bob sets another field: no conflict, both own their fields.
        let b = json!({"metadata": {"name": "d", "labels": {"team": "b"}}});
        let obj = apply("Deployment", &obj, &b, &writer("bob"), false).unwrap();
        assert_eq!(entries(&obj).len(), 2);
        // Bob changes alice's replicas: conflict; the same value is no conflict.
        let b2 = json!({"metadata": {"name": "d"}, "spec": {"replicas": 3}});
        let err = apply("Deployment", &obj, &b2, &writer("bob"), false).unwrap_err();
        let Error::ApplyConflict { causes } = &err else {
            panic!("{err}")
        };
        assert_eq!(causes[0].field, ".spec.replicas");
        assert_eq!(causes[0].message, "conflict with \"alice\" using apps/v1");
        let same = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}});
        apply("Deployment", &obj, &same, &writer("bob"), false).unwrap();
        let obj = apply("Deployment", &obj, &b2, &writer("bob"), true).unwrap();
        assert_eq!(obj["spec"]["replicas"], 3);
        let alice = entries(&obj)
            .into_iter()
            .find(|e| e.manager == "alice")
            .unwrap();
        assert!(
            !alice
                .fields
                .contains(&[Step::Field("spec".into()), Step::Field("replicas".into())])
        );
        // Bob stops applying the label: it goes; alice stops applying the container: it goes.
        let b3 = json!({"metadata": {"name": "d"}, "spec": {"replicas": 3}});
        let obj = apply("Deployment", &obj, &b3, &writer("bob"), false).unwrap();
        assert!(obj.pointer("/metadata/labels").is_none(), "{obj}");
        let a2 = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        let obj = apply("Deployment", &obj, &a2, &writer("alice"), false).unwrap();
        assert_eq!(obj["spec"]["replicas"], 3, "bob's replicas stay");
    }

    #[test]
    fn updates_take_ownership_without_conflict() {
        let a = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}});
        let obj = apply("Deployment", &json!({}), &a, &writer("alice"), false).unwrap();
        let mut new = obj.clone();
        new["spec"]["replicas"] = json!(5);
        record_update("Deployment", Some(&obj), &mut new, &writer("kubectl-scale"));
        let list = entries(&new);
        let scale = list.iter().find(|e| e.manager == "kubectl-scale").unwrap();
        assert_eq!(scale.operation, "Update");
        assert!(
            scale
                .fields
                .contains(&[Step::Field("spec".into()), Step::Field("replicas".into())])
        );
        // Alice's apply of her old value now conflicts with the scaler.
        let err = apply("Deployment", &new, &a, &writer("alice"), false).unwrap_err();
        assert!(err.to_string().contains("kubectl-scale"), "{err}");
    }
}
