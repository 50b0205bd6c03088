//! Authorization: may this user do this? A request becomes [`Attributes`] (Kubernetes'
//! `RequestInfo`: verb, API group, resource, subresource, namespace, name, or a non-resource
//! path) and an [`Authorizer`] decides. Built in:
//!
//! - [`GroupPolicy`]: fixed rules for the members of one group. [`GroupPolicy::cluster_admin`]
//!   (`system:masters`, everything), [`GroupPolicy::read_only`] (`berth:read-only`: get, list,
//!   watch of every resource but Secrets, like Kubernetes' `view` role), and
//!   [`GroupPolicy::basic`] (every authenticated user: discovery, OpenAPI, version, health, and
//!   the self reviews, as `system:discovery` and `system:basic-user` allow).
//! - The node authorizer (users `system:node:<name>` in `system:nodes`): Kubernetes' Node
//!   authorizer and NodeRestriction admission in one: a node reads what a kubelet reads
//!   (nodes, pods, services, endpoints; Secrets and ConfigMaps only when a pod bound to it
//!   uses them), writes only its own Node and its Lease in `kube-node-lease`, the status of
//!   and deletion of pods bound to it, and Events.
//! - [`Union`]: the first authorizer with an opinion decides; none means "forbidden".
//!
//! Denials are 403 Status answers with kube-apiserver's message shape:
//! `pods is forbidden: User "x" cannot list resource "pods" in API group "" in the namespace "default"`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::auth::UserInfo;
use crate::registry::{ListOptions, Registry};
use crate::selector::FieldSelector;

/// A boxed future, as [`Authorizer::authorize`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The group [`GroupPolicy::read_only`] applies to.
pub const READ_ONLY_GROUP: &str = "berth:read-only";
/// The group of node identities.
pub const NODES_GROUP: &str = "system:nodes";
/// The user-name prefix of node identities.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// What a request asks to do (Kubernetes' `authorizer.Attributes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Who asks.
    pub user: UserInfo,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// A request for an API resource (else a non-resource path such as `/version`).
    pub resource_request: bool,
    /// The URL path.
    pub path: String,
    /// The namespace, empty for cluster-scoped requests.
    pub namespace: String,
    /// The API group, empty for core.
    pub api_group: String,
    /// The API version.
    pub api_version: String,
    /// The resource (plural), e.g. `pods`.
    pub resource: String,
    /// The subresource, e.g. `status`.
    pub subresource: String,
    /// The object's name, when the request names one.
    pub name: String,
}

impl Attributes {
    /// Kubernetes' `RequestInfo` of a request: resource requests are
    /// `/api/<v>/...` and `/apis/<g>/<v>/...` with at least a resource; everything else is a
    /// non-resource path with the method's verb (`get`, `post`, ...).
    pub fn from_request(user: UserInfo, method: &http::Method, path: &str, query: &str) -> Self {
        let mut a = Attributes {
            user,
            path: path.to_owned(),
            verb: method.as_str().to_ascii_lowercase(),
            ..Attributes::default()
        };
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, mut rest) = match segs.as_slice() {
            ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
            ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
            _ => return a,
        };
        a.resource_request = true;
        a.api_group = group.to_owned();
        a.api_version = version.to_owned();
        let mut watch_path = false;
        if rest.first() == Some(&"watch") {
            watch_path = true;
            rest = &rest[1..];
        }
        if let ["namespaces", ns, more @ ..] = rest {
            a.namespace = (*ns).to_owned();
            if more.is_empty() {
                a.resource = "namespaces".into();
                a.name = (*ns).to_owned();
            } else {
                rest = more;
            }
        }
        if a.resource.is_empty() {
            if let Some(r) = rest.first() {
                a.resource = (*r).to_owned();
            }
            if let Some(n) = rest.get(1) {
                a.name = (*n).to_owned();
            }
            if let Some(s) = rest.get(2) {
                a.subresource = (*s).to_owned();
            }
        }
        let q: BTreeMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let watch = watch_path || q.get("watch").is_some_and(|w| w == "true" || w == "1");
        a.verb = match *method {
            http::Method::GET | http::Method::HEAD if a.name.is_empty() => {
                if watch { "watch" } else { "list" }.into()
            }
            http::Method::GET | http::Method::HEAD => if watch { "watch" } else { "get" }.into(),
            http::Method::POST => "create".into(),
            http::Method::PUT => "update".into(),
            http::Method::PATCH => "patch".into(),
            http::Method::DELETE if a.name.is_empty() => "deletecollection".into(),
            http::Method::DELETE => "delete".into(),
            _ => a.verb,
        };
        // A list or watch of one object by field selector names it (as Kubernetes does).
        if matches!(a.verb.as_str(), "list" | "watch")
            && let Some(fs) = q.get("fieldSelector")
            && let Ok(fs) = FieldSelector::parse(fs)
            && let [(field, value, true)] = fs.terms.as_slice()
            && field == "metadata.name"
        {
            a.name = value.clone();
        }
        a
    }

    /// `resource/subresource`, or the resource.
    pub fn full_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// kube-apiserver's "User ... cannot ..." sentence.
    pub fn forbidden_sentence(&self) -> String {
        let user = &self.user.name;
        let verb = &self.verb;
        if !self.resource_request {
            return format!("User {user:?} cannot {verb} path {:?}", self.path);
        }
        let resource = self.full_resource();
        let group = &self.api_group;
        if self.namespace.is_empty() {
            format!(
                "User {user:?} cannot {verb} resource {resource:?} in API group {group:?} at the cluster scope"
            )
        } else {
            format!(
                "User {user:?} cannot {verb} resource {resource:?} in API group {group:?} in the namespace {:?}",
                self.namespace
            )
        }
    }

    /// The 403 `metav1.Status` for a denial, with the authorizer's reason if any.
    pub fn forbidden_status(&self, reason: &str) -> Value {
        let mut sentence = self.forbidden_sentence();
        if !reason.is_empty() {
            sentence = format!("{sentence}: {reason}");
        }
        let qualified = if self.api_group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.api_group)
        };
        let message = if !self.resource_request {
            format!("forbidden: {sentence}")
        } else if self.name.is_empty() {
            format!("{qualified} is forbidden: {sentence}")
        } else {
            format!("{qualified} {:?} is forbidden: {sentence}", self.name)
        };
        let mut details = json!({"group": self.api_group, "kind": self.resource});
        if !self.name.is_empty() {
            details["name"] = json!(self.name);
        }
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "Forbidden", "details": details, "code": 403,
        })
    }
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Forbidden, with a reason; no later authorizer is asked.
    Deny(String),
    /// This authorizer has no say; the next one decides.
    NoOpinion,
}

/// A resource rule of a [`Rules`] list (`authorization.k8s.io/v1` ResourceRule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRule {
    /// Verbs, `*` for all.
    pub verbs: Vec<String>,
    /// API groups, `*` for all.
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/status`, `*`, `*/scale`).
    pub resources: Vec<String>,
    /// Names it is restricted to; empty for all.
    pub resource_names: Vec<String>,
}

/// A non-resource rule (`authorization.k8s.io/v1` NonResourceRule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonResourceRule {
    /// Verbs (`get`), `*` for all.
    pub verbs: Vec<String>,
    /// Paths; a trailing `*` matches a prefix.
    pub urls: Vec<String>,
}

/// What a user may do, as far as an authorizer can say (SelfSubjectRulesReview).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    /// Resource rules.
    pub resource: Vec<ResourceRule>,
    /// Non-resource rules.
    pub non_resource: Vec<NonResourceRule>,
    /// Whether the authorizer decides by more than these rules (the list is incomplete).
    pub incomplete: bool,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

impl ResourceRule {
    /// A rule for `verbs` on `resources` in `groups`.
    pub fn new(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Self {
        ResourceRule {
            verbs: strings(verbs),
            api_groups: strings(groups),
            resources: strings(resources),
            resource_names: Vec::new(),
        }
    }

    /// Whether the rule allows `a` (a resource request).
    pub fn matches(&self, a: &Attributes) -> bool {
        let any = |v: &[String], x: &str| v.iter().any(|s| s == "*" || s == x);
        let full = a.full_resource();
        any(&self.verbs, &a.verb)
            && any(&self.api_groups, &a.api_group)
            && self.resources.iter().any(|r| {
                r == "*"
                    || *r == full
                    || (a.subresource.is_empty() && r == &a.resource)
                    || r.strip_prefix("*/").is_some_and(|s| s == a.subresource)
            })
            && (self.resource_names.is_empty() || self.resource_names.contains(&a.name))
    }

    /// As `authorization.k8s.io/v1` JSON.
    pub fn to_json(&self) -> Value {
        let mut v =
            json!({"verbs": self.verbs, "apiGroups": self.api_groups, "resources": self.resources});
        if !self.resource_names.is_empty() {
            v["resourceNames"] = json!(self.resource_names);
        }
        v
    }
}

impl NonResourceRule {
    /// A rule for `verbs` on `urls`.
    pub fn new(verbs: &[&str], urls: &[&str]) -> Self {
        NonResourceRule {
            verbs: strings(verbs),
            urls: strings(urls),
        }
    }

    /// Whether the rule allows `a` (a non-resource request).
    pub fn matches(&self, a: &Attributes) -> bool {
        self.verbs.iter().any(|v| v == "*" || *v == a.verb)
            && self.urls.iter().any(|u| match u.strip_suffix('*') {
                Some(prefix) => a.path.starts_with(prefix),
                None => *u == a.path,
            })
    }

    /// As `authorization.k8s.io/v1` JSON.
    pub fn to_json(&self) -> Value {
        json!({"verbs": self.verbs, "nonResourceURLs": self.urls})
    }
}

impl Rules {
    /// Whether some rule allows `a`.
    pub fn allows(&self, a: &Attributes) -> bool {
        if a.resource_request {
            self.resource.iter().any(|r| r.matches(a))
        } else {
            self.non_resource.iter().any(|r| r.matches(a))
        }
    }
}

/// Decides requests (Kubernetes' `authorizer.Authorizer` and `RuleResolver`).
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `a` is allowed. May look at stored objects (the node authorizer does).
    fn authorize<'a>(&'a self, a: &'a Attributes) -> BoxFuture<'a, Decision>;

    /// The rules `user` has in `namespace` under this authorizer, for SelfSubjectRulesReview.
    fn rules(&self, user: &UserInfo, namespace: &str) -> Rules {
        let _ = (user, namespace);
        Rules {
            incomplete: true,
            ..Rules::default()
        }
    }
}

/// Fixed rules for the members of one group.
#[derive(Debug, Clone)]
pub struct GroupPolicy {
    group: String,
    rules: Rules,
}

impl GroupPolicy {
    /// `rules` for members of `group`.
    pub fn new(group: impl Into<String>, rules: Rules) -> Self {
        GroupPolicy {
            group: group.into(),
            rules,
        }
    }

    /// Everything, for `system:masters` (Kubernetes' cluster-admin).
    pub fn cluster_admin() -> Self {
        GroupPolicy::new(
            crate::tls::MASTERS_GROUP,
            Rules {
                resource: vec![ResourceRule::new(&["*"], &["*"], &["*"])],
                non_resource: vec![NonResourceRule::new(&["*"], &["*"])],
                incomplete: false,
            },
        )
    }

    /// get, list and watch of `resources` (each `(group, plural)`, plus their `status` and
    /// `scale`), for `berth:read-only`. Secrets are left out, as Kubernetes' `view` role does:
    /// they hold credentials.
    pub fn read_only(resources: &[(&str, &str)]) -> Self {
        let mut by_group: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (g, r) in resources
            .iter()
            .filter(|(g, r)| !(g.is_empty() && *r == "secrets"))
        {
            let e = by_group.entry(g).or_default();
            e.push((*r).to_owned());
            e.push(format!("{r}/status"));
            e.push(format!("{r}/scale"));
        }
        let resource = by_group
            .into_iter()
            .map(|(g, rs)| ResourceRule {
                verbs: strings(&["get", "list", "watch"]),
                api_groups: vec![g.to_owned()],
                resources: rs,
                resource_names: Vec::new(),
            })
            .collect();
        GroupPolicy::new(
            READ_ONLY_GROUP,
            Rules {
                resource,
                non_resource: Vec::new(),
                incomplete: false,
            },
        )
    }

    /// What every authenticated user may do: discovery, OpenAPI, version, health checks, and
    /// the self reviews (`system:discovery`, `system:public-info-viewer`, `system:basic-user`).
    pub fn basic() -> Self {
        GroupPolicy::new(
            crate::auth::AUTHENTICATED,
            Rules {
                resource: vec![
                    ResourceRule::new(
                        &["create"],
                        &["authorization.k8s.io"],
                        &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    ),
                    ResourceRule::new(
                        &["create"],
                        &["authentication.k8s.io"],
                        &["selfsubjectreviews"],
                    ),
                ],
                non_resource: vec![NonResourceRule::new(
                    &["get"],
                    &[
                        "/api",
                        "/api/*",
                        "/apis",
                        "/apis/*",
                        "/openapi",
                        "/openapi/*",
                        "/version",
                        "/version/",
                        "/healthz",
                        "/livez",
                        "/readyz",
                    ],
                )],
                incomplete: false,
            },
        )
    }
}

impl Authorizer for GroupPolicy {
    fn authorize<'a>(&'a self, a: &'a Attributes) -> BoxFuture<'a, Decision> {
        let d = if a.user.in_group(&self.group) && self.rules.allows(a) {
            Decision::Allow
        } else {
            Decision::NoOpinion
        };
        Box::pin(std::future::ready(d))
    }

    fn rules(&self, user: &UserInfo, _namespace: &str) -> Rules {
        if user.in_group(&self.group) {
            self.rules.clone()
        } else {
            Rules::default()
        }
    }
}

/// Several authorizers: the first with an opinion decides; with none the request is denied.
#[derive(Clone, Default)]
pub struct Union(Vec<Arc<dyn Authorizer>>);

impl std::fmt::Debug for Union {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Union({} authorizers)", self.0.len())
    }
}

impl Union {
    /// No authorizers: everything is denied.
    pub fn new() -> Self {
        Union::default()
    }

    /// Adds `a` after those present.
    pub fn with(mut self, a: impl Authorizer) -> Self {
        self.0.push(Arc::new(a));
        self
    }

    /// Adds a shared authorizer.
    pub fn with_arc(mut self, a: Arc<dyn Authorizer>) -> Self {
        self.0.push(a);
        self
    }
}

impl Authorizer for Union {
    fn authorize<'a>(&'a self, a: &'a Attributes) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            for z in &self.0 {
                match z.authorize(a).await {
                    Decision::NoOpinion => continue,
                    d => return d,
                }
            }
            Decision::Deny(String::new())
        })
    }

    fn rules(&self, user: &UserInfo, namespace: &str) -> Rules {
        let mut out = Rules::default();
        for z in &self.0 {
            let r = z.rules(user, namespace);
            out.resource.extend(r.resource);
            out.non_resource.extend(r.non_resource);
            out.incomplete |= r.incomplete;
        }
        out
    }
}

/// The node name of a node identity (`system:node:<name>` in `system:nodes`).
pub fn node_name(user: &UserInfo) -> Option<&str> {
    user.name
        .strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty() && user.in_group(NODES_GROUP))
}

/// Kubernetes' Node authorizer with NodeRestriction's object checks, over the stored pods.
pub(crate) struct NodeAuthorizer {
    pub(crate) registry: Arc<Registry>,
}

/// The Secrets and ConfigMaps a pod uses (volumes, projected sources, env, envFrom, image
/// pull secrets): (secrets, configmaps).
fn pod_references(pod: &Value) -> (Vec<String>, Vec<String>) {
    let (mut secrets, mut configmaps) = (Vec::new(), Vec::new());
    let s = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let arr = |v: &Value, p: &str| -> Vec<Value> {
        v.pointer(p)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for vol in arr(pod, "/spec/volumes") {
        secrets.extend(s(&vol, "/secret/secretName"));
        configmaps.extend(s(&vol, "/configMap/name"));
        for src in arr(&vol, "/projected/sources") {
            secrets.extend(s(&src, "/secret/name"));
            configmaps.extend(s(&src, "/configMap/name"));
        }
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in arr(pod, &format!("/spec/{list}")) {
            for e in arr(&c, "/env") {
                secrets.extend(s(&e, "/valueFrom/secretKeyRef/name"));
                configmaps.extend(s(&e, "/valueFrom/configMapKeyRef/name"));
            }
            for e in arr(&c, "/envFrom") {
                secrets.extend(s(&e, "/secretRef/name"));
                configmaps.extend(s(&e, "/configMapRef/name"));
            }
        }
    }
    for p in arr(pod, "/spec/imagePullSecrets") {
        secrets.extend(s(&p, "/name"));
    }
    (secrets, configmaps)
}

impl NodeAuthorizer {
    /// The pod's node, if the pod exists.
    async fn pod_node(&self, namespace: &str, name: &str) -> Option<String> {
        let kind = self.registry.kind("", "v1", "pods")?;
        let pod = self.registry.get(&kind, namespace, name).await.ok()?;
        pod.pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// Whether a pod bound to `node` in `namespace` uses the Secret (or ConfigMap) `name`.
    async fn referenced(&self, node: &str, namespace: &str, secret: bool, name: &str) -> bool {
        let Some(kind) = self.registry.kind("", "v1", "pods") else {
            return false;
        };
        let Ok(field_selector) = FieldSelector::parse(&format!("spec.nodeName={node}")) else {
            return false;
        };
        let opts = ListOptions {
            field_selector,
            ..ListOptions::default()
        };
        let Ok(list) = self.registry.list(&kind, Some(namespace), &opts).await else {
            return false;
        };
        list["items"].as_array().into_iter().flatten().any(|pod| {
            let (secrets, configmaps) = pod_references(pod);
            if secret { secrets } else { configmaps }
                .iter()
                .any(|n| n == name)
        })
    }

    async fn decide(&self, node: &str, a: &Attributes) -> Decision {
        if !a.resource_request {
            return Decision::NoOpinion;
        }
        let read = matches!(a.verb.as_str(), "get" | "list" | "watch");
        let deny = |why: String| Decision::Deny(why);
        match (a.api_group.as_str(), a.resource.as_str()) {
            ("", "nodes") => {
                if read && a.subresource.is_empty() {
                    return Decision::Allow;
                }
                let own = a.name == node;
                match (a.verb.as_str(), a.subresource.as_str()) {
                    // The name of a created Node is checked against the body (admission).
                    ("create", "") => Decision::Allow,
                    ("update" | "patch" | "delete", "")
                    | ("update" | "patch" | "get", "status")
                        if own =>
                    {
                        Decision::Allow
                    }
                    _ => deny(format!(
                        "node {node:?} is not allowed to modify node {:?}",
                        a.name
                    )),
                }
            }
            ("coordination.k8s.io", "leases") => {
                if a.namespace != "kube-node-lease" {
                    return deny(format!(
                        "node {node:?} may only use leases in the kube-node-lease namespace"
                    ));
                }
                match a.verb.as_str() {
                    "get" | "list" | "watch" | "create" => Decision::Allow,
                    "update" | "patch" | "delete" if a.name == node => Decision::Allow,
                    _ => deny(format!(
                        "node {node:?} is not allowed to modify lease {:?}",
                        a.name
                    )),
                }
            }
            ("" | "events.k8s.io", "events") => match a.verb.as_str() {
                "create" | "update" | "patch" => Decision::Allow,
                _ => Decision::NoOpinion,
            },
            ("", "pods") => {
                if read && matches!(a.subresource.as_str(), "" | "status") {
                    return Decision::Allow;
                }
                let writes_pod = matches!(
                    (a.verb.as_str(), a.subresource.as_str()),
                    ("update" | "patch", "status") | ("delete", "")
                );
                if !writes_pod {
                    return deny(format!(
                        "node {node:?} can only update the status of and delete pods bound to it"
                    ));
                }
                match self.pod_node(&a.namespace, &a.name).await {
                    Some(n) if n == node => Decision::Allow,
                    Some(n) if !n.is_empty() => deny(format!(
                        "node {node:?} can only update pods with spec.nodeName set to itself (pod {:?} is bound to {n:?})",
                        a.name
                    )),
                    _ => deny(format!(
                        "no relationship found between node {node:?} and this object"
                    )),
                }
            }
            ("", "services" | "endpoints") | ("discovery.k8s.io", "endpointslices") if read => {
                Decision::Allow
            }
            ("", kind @ ("secrets" | "configmaps")) => {
                if a.verb != "get" && !(matches!(a.verb.as_str(), "list" | "watch")) {
                    return deny(format!("node {node:?} may only read {kind}"));
                }
                if !a.name.is_empty()
                    && self
                        .referenced(node, &a.namespace, kind == "secrets", &a.name)
                        .await
                {
                    Decision::Allow
                } else {
                    deny(format!(
                        "no relationship found between node {node:?} and this object"
                    ))
                }
            }
            _ => Decision::NoOpinion,
        }
    }
}

impl Authorizer for NodeAuthorizer {
    fn authorize<'a>(&'a self, a: &'a Attributes) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            match node_name(&a.user) {
                Some(node) => self.decide(node, a).await,
                None => Decision::NoOpinion,
            }
        })
    }

    fn rules(&self, user: &UserInfo, _namespace: &str) -> Rules {
        let Some(node) = node_name(user) else {
            return Rules::default();
        };
        let mut own_node = ResourceRule::new(
            &["update", "patch", "delete"],
            &[""],
            &["nodes", "nodes/status"],
        );
        own_node.resource_names = vec![node.to_owned()];
        let mut own_lease = ResourceRule::new(
            &["update", "patch", "delete"],
            &["coordination.k8s.io"],
            &["leases"],
        );
        own_lease.resource_names = vec![node.to_owned()];
        Rules {
            resource: vec![
                ResourceRule::new(
                    &["get", "list", "watch"],
                    &[""],
                    &["nodes", "pods", "services", "endpoints"],
                ),
                ResourceRule::new(
                    &["get", "list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                ResourceRule::new(&["create"], &[""], &["nodes"]),
                own_node,
                ResourceRule::new(
                    &["get", "list", "watch", "create"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
                own_lease,
                ResourceRule::new(
                    &["create", "update", "patch"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
            ],
            non_resource: Vec::new(),
            // Pods, Secrets and ConfigMaps depend on what is bound to the node.
            incomplete: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: http::Method, path: &str, query: &str) -> Attributes {
        Attributes::from_request(UserInfo::new("u", &[]), &method, path, query)
    }

    #[test]
    fn request_info_like_kubernetes() {
        let a = attrs(http::Method::GET, "/api/v1/namespaces/default/pods", "");
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_str(), a.resource.as_str()),
            ("list", "default", "pods")
        );
        let a = attrs(
            http::Method::GET,
            "/api/v1/namespaces/default/pods",
            "watch=true",
        );
        assert_eq!(a.verb, "watch");
        let a = attrs(http::Method::PUT, "/api/v1/namespaces/ns/pods/p/status", "");
        assert_eq!(
            (a.verb.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("update", "p", "status")
        );
        let a = attrs(http::Method::GET, "/api/v1/namespaces/kube-system", "");
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.name.as_str()),
            ("get", "namespaces", "kube-system")
        );
        let a = attrs(
            http::Method::DELETE,
            "/apis/apps/v1/namespaces/x/deployments",
            "",
        );
        assert_eq!(
            (a.verb.as_str(), a.api_group.as_str()),
            ("deletecollection", "apps")
        );
        let a = attrs(
            http::Method::GET,
            "/api/v1/namespaces/x/secrets",
            "fieldSelector=metadata.name%3Ds1&watch=1",
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "s1"));
        let a = attrs(http::Method::GET, "/apis/apps/v1", "");
        assert!(!a.resource_request);
        assert_eq!(a.verb, "get");
        let a = attrs(http::Method::GET, "/api/v1/nodes/n1", "");
        assert_eq!(
            (a.namespace.as_str(), a.resource.as_str(), a.name.as_str()),
            ("", "nodes", "n1")
        );
    }

    #[test]
    fn forbidden_messages_match_kubernetes() {
        let mut a = attrs(http::Method::GET, "/api/v1/namespaces/default/pods", "");
        a.user.name = "x".into();
        assert_eq!(
            a.forbidden_status("")["message"],
            "pods is forbidden: User \"x\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let a = attrs(
            http::Method::PATCH,
            "/apis/apps/v1/namespaces/d/deployments/web/scale",
            "",
        );
        assert_eq!(
            a.forbidden_status("")["message"],
            "deployments.apps \"web\" is forbidden: User \"u\" cannot patch resource \"deployments/scale\" in API group \"apps\" in the namespace \"d\""
        );
        let a = attrs(http::Method::GET, "/api/v1/nodes", "");
        assert!(a.forbidden_sentence().ends_with("at the cluster scope"));
        let a = attrs(http::Method::GET, "/metrics", "");
        assert_eq!(
            a.forbidden_status("")["message"],
            "forbidden: User \"u\" cannot get path \"/metrics\""
        );
    }

    #[test]
    fn rules_match_like_rbac() {
        let r = ResourceRule::new(&["get"], &["apps"], &["deployments"]);
        let a = attrs(
            http::Method::GET,
            "/apis/apps/v1/namespaces/d/deployments/x",
            "",
        );
        assert!(r.matches(&a));
        let s = attrs(
            http::Method::GET,
            "/apis/apps/v1/namespaces/d/deployments/x/status",
            "",
        );
        assert!(!r.matches(&s), "a resource does not cover its subresources");
        assert!(ResourceRule::new(&["*"], &["*"], &["*"]).matches(&s));
        assert!(ResourceRule::new(&["get"], &["apps"], &["*/status"]).matches(&s));
        let n = NonResourceRule::new(&["get"], &["/apis/*"]);
        assert!(n.matches(&attrs(http::Method::GET, "/apis/apps", "")));
        assert!(!n.matches(&attrs(http::Method::GET, "/metrics", "")));
    }
}
