//! The routing table: Ingress rules resolved to backend addresses, built whole from the
//! cluster's objects and swapped in atomically.
//!
//! [`RoutingTable::build`] takes the Ingresses of this controller's class ([`ClassConfig`]),
//! their Services and EndpointSlices and the TLS Secrets they name. Each backend
//! (`service.name` + `service.port` by number or name) resolves to the ready addresses of the
//! EndpointSlice port of the same name; a missing Service or port leaves the backend with no
//! addresses, which the proxy answers with 503.
//!
//! Matching follows networking.k8s.io/v1: hosts exact (case-insensitive) before wildcard
//! (`*.example.com` matches exactly one more label) before rules without a host; within a
//! host the longest matching path wins and `Exact` wins a tie with `Prefix`; `Prefix` matches
//! whole path elements (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`; a trailing
//! slash in the rule is ignored); `ImplementationSpecific` is treated as `Prefix`. Requests
//! that match no rule go to the oldest Ingress's `defaultBackend`, else 404. When two
//! Ingresses claim the same host and path, the older one wins (ingress-nginx's rule).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use rustls::sign::CertifiedKey;

/// Label naming the Service of an EndpointSlice (Kubernetes' `kubernetes.io/service-name`).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Annotation marking an IngressClass as the cluster's default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The deprecated annotation naming an Ingress's class.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Which Ingresses this controller serves.
#[derive(Debug, Clone)]
pub struct ClassConfig {
    /// The IngressClass name served when the cluster has no IngressClass of this controller.
    pub class_name: String,
    /// This controller's name in `IngressClass.spec.controller`.
    pub controller: String,
    /// Also serve Ingresses without a class (as if this controller's class were the default).
    pub serve_unclassed: bool,
}

impl Default for ClassConfig {
    fn default() -> Self {
        ClassConfig {
            class_name: "berth".into(),
            controller: "berth.dev/ingress-controller".into(),
            serve_unclassed: false,
        }
    }
}

impl ClassConfig {
    /// The Ingresses among `ingresses` that this controller serves, given the cluster's
    /// IngressClasses (`None` when the API serves no IngressClass kind).
    pub fn select<'a>(
        &self,
        ingresses: impl IntoIterator<Item = &'a Ingress>,
        classes: Option<&[&IngressClass]>,
    ) -> Vec<&'a Ingress> {
        let (names, default): (Vec<&str>, bool) = match classes {
            Some(classes) if classes.iter().any(|c| self.is_ours(c)) => {
                let ours: Vec<&IngressClass> = classes
                    .iter()
                    .copied()
                    .filter(|c| self.is_ours(c))
                    .collect();
                let default = ours.iter().any(|c| {
                    c.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                        .is_some_and(|v| v == "true")
                });
                (
                    ours.iter()
                        .filter_map(|c| c.metadata.name.as_deref())
                        .collect(),
                    default,
                )
            }
            _ => (vec![self.class_name.as_str()], false),
        };
        ingresses
            .into_iter()
            .filter(|ing| {
                let class = ing
                    .spec
                    .as_ref()
                    .and_then(|s| s.ingress_class_name.as_deref())
                    .or_else(|| {
                        ing.metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(CLASS_ANNOTATION))
                            .map(String::as_str)
                    });
                match class {
                    Some(c) => names.contains(&c),
                    None => default || self.serve_unclassed,
                }
            })
            .collect()
    }

    fn is_ours(&self, class: &IngressClass) -> bool {
        class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(self.controller.as_str())
    }
}

/// One backend Service port with its ready addresses, balanced round-robin.
#[derive(Debug)]
pub struct Backend {
    /// `<ns>/<service>:<port>`, for logs and errors.
    pub name: String,
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Backend {
    /// The next address, or `None` when the Service has no ready endpoint.
    pub fn pick(&self) -> Option<SocketAddr> {
        match self.endpoints.len() {
            0 => None,
            1 => Some(self.endpoints[0]),
            n => Some(self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % n]),
        }
    }

    /// The ready addresses.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }
}

#[derive(Debug, Default)]
struct HostRoutes {
    exact: HashMap<String, Arc<Backend>>,
    /// Normalised prefixes (no trailing slash; "" for "/"), longest first.
    prefixes: Vec<(String, Arc<Backend>)>,
}

impl HostRoutes {
    fn route(&self, path: &str) -> Option<&Arc<Backend>> {
        if let Some(b) = self.exact.get(path) {
            // An exact match is as long as the path: no prefix can be longer.
            return Some(b);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| prefix_matches(p, path))
            .map(|(_, b)| b)
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

/// Whether the normalised prefix `p` matches `path` element-wise.
fn prefix_matches(p: &str, path: &str) -> bool {
    match path.strip_prefix(p) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The routes and certificates in force.
#[derive(Debug, Default)]
pub struct RoutingTable {
    exact_hosts: HashMap<String, HostRoutes>,
    /// Keyed by the part after `*.`.
    wildcard_hosts: HashMap<String, HostRoutes>,
    any_host: HostRoutes,
    default_backend: Option<Arc<Backend>>,
    certs: HashMap<String, Arc<CertifiedKey>>,
    wildcard_certs: HashMap<String, Arc<CertifiedKey>>,
    default_cert: Option<Arc<CertifiedKey>>,
    /// Problems met while building (bad TLS Secrets, unknown backends), for logs.
    pub warnings: Vec<String>,
}

/// The cluster objects a table is built from.
#[derive(Debug, Default, Clone, Copy)]
pub struct Objects<'a> {
    /// The Ingresses to serve (already selected by class).
    pub ingresses: &'a [&'a Ingress],
    /// All Services.
    pub services: &'a [&'a Service],
    /// All EndpointSlices.
    pub slices: &'a [&'a EndpointSlice],
    /// The Secrets (only `kubernetes.io/tls` ones named by the Ingresses are used).
    pub secrets: &'a [&'a Secret],
}

impl RoutingTable {
    /// Build the table from `objects`.
    pub fn build(objects: Objects<'_>) -> Self {
        let mut table = RoutingTable::default();
        let mut ingresses: Vec<&Ingress> = objects.ingresses.to_vec();
        // Oldest first: the first claim on a host+path wins.
        ingresses.sort_by(|a, b| {
            let key = |i: &Ingress| {
                (
                    i.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    i.metadata.namespace.clone(),
                    i.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        let resolver = Resolver::new(objects.services, objects.slices);
        let mut backends: HashMap<(String, String, String), Arc<Backend>> = HashMap::new();
        let mut backend = |ns: &str, b: &IngressBackend, warnings: &mut Vec<String>| {
            let Some(svc) = &b.service else {
                warnings.push(format!("{ns}: resource backends are not supported"));
                return None;
            };
            let port = svc
                .port
                .as_ref()
                .map_or(String::new(), |p| match (&p.name, p.number) {
                    (Some(name), _) if !name.is_empty() => name.clone(),
                    (_, Some(n)) => n.to_string(),
                    _ => String::new(),
                });
            let key = (ns.to_owned(), svc.name.clone(), port);
            Some(
                backends
                    .entry(key.clone())
                    .or_insert_with(|| Arc::new(resolver.backend(&key.0, &key.1, &key.2)))
                    .clone(),
            )
        };
        for ing in &ingresses {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            let Some(spec) = &ing.spec else { continue };
            if table.default_backend.is_none()
                && let Some(b) = &spec.default_backend
            {
                table.default_backend = backend(ns, b, &mut table.warnings);
            }
            for rule in spec.rules.iter().flatten() {
                let host = rule.host.as_deref().unwrap_or("").to_ascii_lowercase();
                let routes = if host.is_empty() {
                    &mut table.any_host
                } else if let Some(rest) = host.strip_prefix("*.") {
                    table.wildcard_hosts.entry(rest.to_owned()).or_default()
                } else {
                    table.exact_hosts.entry(host).or_default()
                };
                for path in rule.http.iter().flat_map(|h| &h.paths) {
                    let Some(b) = backend(ns, &path.backend, &mut table.warnings) else {
                        continue;
                    };
                    let p = path.path.as_deref().unwrap_or("/");
                    if path.path_type == "Exact" {
                        routes.exact.entry(p.to_owned()).or_insert(b);
                    } else {
                        let norm = p.trim_end_matches('/').to_owned();
                        if !routes.prefixes.iter().any(|(q, _)| *q == norm) {
                            routes.prefixes.push((norm, b));
                        }
                    }
                }
            }
            for tls in spec.tls.iter().flatten() {
                let Some(secret_name) = &tls.secret_name else {
                    continue;
                };
                let Some(key) = objects
                    .secrets
                    .iter()
                    .find(|s| {
                        s.metadata.namespace.as_deref() == Some(ns)
                            && s.metadata.name.as_deref() == Some(secret_name.as_str())
                    })
                    .and_then(|s| match crate::tls::certified_key(s) {
                        Ok(k) => Some(k),
                        Err(err) => {
                            table.warnings.push(format!("{ns}/{secret_name}: {err}"));
                            None
                        }
                    })
                else {
                    table.warnings.push(format!(
                        "{ns}/{secret_name}: TLS Secret not found or invalid"
                    ));
                    continue;
                };
                let hosts = tls.hosts.as_deref().unwrap_or_default();
                if hosts.is_empty() && table.default_cert.is_none() {
                    table.default_cert = Some(key.clone());
                }
                for h in hosts {
                    let h = h.to_ascii_lowercase();
                    match h.strip_prefix("*.") {
                        Some(rest) => {
                            table
                                .wildcard_certs
                                .entry(rest.to_owned())
                                .or_insert(key.clone());
                        }
                        None => {
                            table.certs.entry(h).or_insert(key.clone());
                        }
                    }
                }
            }
        }
        for routes in table
            .exact_hosts
            .values_mut()
            .chain(table.wildcard_hosts.values_mut())
            .chain(std::iter::once(&mut table.any_host))
        {
            routes
                .prefixes
                .sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        }
        table
    }

    /// The backend for a request to `host` (without port; any case) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Backend>> {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let candidates = [
            self.exact_hosts.get(host),
            host.split_once('.')
                .and_then(|(_, rest)| self.wildcard_hosts.get(rest)),
            Some(&self.any_host).filter(|r| !r.is_empty()),
        ];
        candidates
            .into_iter()
            .flatten()
            .find_map(|routes| routes.route(path))
            .or(self.default_backend.as_ref())
    }

    /// The certificate for a TLS server name (exact, then wildcard, then the default).
    pub fn cert(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = server_name.and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.certs.get(&name).cloned().or_else(|| {
                name.split_once('.')
                    .and_then(|(_, rest)| self.wildcard_certs.get(rest).cloned())
            })
        });
        by_name.or_else(|| self.default_cert.clone())
    }

    /// Whether any TLS certificate is configured.
    pub fn has_certs(&self) -> bool {
        !self.certs.is_empty() || !self.wildcard_certs.is_empty() || self.default_cert.is_some()
    }
}

/// Service ports to ready endpoint addresses.
struct Resolver<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> Resolver<'a> {
    fn new(services: &[&'a Service], slices: &[&'a EndpointSlice]) -> Self {
        let services = services
            .iter()
            .filter_map(|s| {
                Some((
                    (
                        s.metadata.namespace.as_deref()?,
                        s.metadata.name.as_deref()?,
                    ),
                    *s,
                ))
            })
            .collect();
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            if let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_deref(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) {
                by_service
                    .entry((ns, svc.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        Resolver {
            services,
            slices: by_service,
        }
    }

    /// The backend for Service `ns/name` port `port` (a number or a name).
    fn backend(&self, ns: &str, name: &str, port: &str) -> Backend {
        let label = format!("{ns}/{name}:{port}");
        let mut endpoints = Vec::new();
        let service_port = self
            .services
            .get(&(ns, name))
            .and_then(|s| s.spec.as_ref())
            .and_then(|spec| {
                spec.ports
                    .iter()
                    .flatten()
                    .find(|p| match port.parse::<i32>() {
                        Ok(n) => p.port == n,
                        Err(_) => p.name.as_deref() == Some(port),
                    })
            });
        if let Some(sp) = service_port {
            let port_name = sp.name.as_deref().unwrap_or("");
            for slice in self.slices.get(&(ns, name)).into_iter().flatten() {
                let Some(target) = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for addr in &ep.addresses {
                        if let Ok(ip) = addr.parse::<IpAddr>() {
                            let sa = SocketAddr::new(ip, target);
                            if !endpoints.contains(&sa) {
                                endpoints.push(sa);
                            }
                        }
                    }
                }
            }
        }
        endpoints.sort();
        Backend {
            name: label,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(name: &str, created: &str, spec: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
            "spec": spec,
        }))
        .unwrap()
    }

    fn service(name: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": ports},
        }))
        .unwrap()
    }

    fn slice(svc: &str, port_name: &str, port: u16, addrs: &[&str]) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port}],
            "endpoints": addrs.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn backend(svc: &str, port: serde_json::Value) -> serde_json::Value {
        json!({"service": {"name": svc, "port": port}})
    }

    #[test]
    fn hosts_paths_and_precedence() {
        let a = ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({
                "defaultBackend": backend("dflt", json!({"number": 80})),
                "rules": [
                    {"host": "shop.example", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": backend("web", json!({"name": "http"}))},
                        {"path": "/api/", "pathType": "Prefix", "backend": backend("api", json!({"number": 8080}))},
                        {"path": "/api/v1", "pathType": "Exact", "backend": backend("web", json!({"number": 80}))},
                    ]}},
                    {"host": "*.apps.example", "http": {"paths": [
                        {"path": "/", "pathType": "ImplementationSpecific", "backend": backend("api", json!({"number": 8080}))},
                    ]}},
                ],
            }),
        );
        // Younger and claims shop.example "/": loses to `a`.
        let b = ingress(
            "b",
            "2026-02-01T00:00:00Z",
            json!({
                "rules": [{"host": "shop.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": backend("missing", json!({"number": 1}))},
                ]}}],
            }),
        );
        let services = [
            service("web", json!([{"name": "http", "port": 80}])),
            service("api", json!([{"name": "grpc", "port": 8080}])),
            service("dflt", json!([{"port": 80}])),
        ];
        let slices = [
            slice("web", "http", 8000, &["10.0.0.1", "10.0.0.2"]),
            slice("api", "grpc", 9000, &["10.0.0.3"]),
            slice("dflt", "", 7000, &["10.0.0.4"]),
        ];
        let ings = [&a, &b];
        let svcs: Vec<&Service> = services.iter().collect();
        let sls: Vec<&EndpointSlice> = slices.iter().collect();
        let t = RoutingTable::build(Objects {
            ingresses: &ings,
            services: &svcs,
            slices: &sls,
            secrets: &[],
        });
        let name = |host: &str, path: &str| t.route(host, path).map(|b| b.name.clone());
        assert_eq!(name("shop.example", "/").unwrap(), "default/web:http");
        assert_eq!(name("SHOP.example", "/cart").unwrap(), "default/web:http");
        assert_eq!(
            name("shop.example", "/api").unwrap(),
            "default/api:8080",
            "trailing slash ignored"
        );
        assert_eq!(name("shop.example", "/api/x").unwrap(), "default/api:8080");
        assert_eq!(
            name("shop.example", "/apix").unwrap(),
            "default/web:http",
            "per element"
        );
        assert_eq!(
            name("shop.example", "/api/v1").unwrap(),
            "default/web:80",
            "exact wins"
        );
        assert_eq!(
            name("shop.example", "/api/v1/").unwrap(),
            "default/api:8080"
        );
        assert_eq!(name("x.apps.example", "/q").unwrap(), "default/api:8080");
        assert_eq!(
            name("y.x.apps.example", "/q").unwrap(),
            "default/dflt:80",
            "one label only"
        );
        assert_eq!(name("other.example", "/").unwrap(), "default/dflt:80");

        let web = t.route("shop.example", "/").unwrap();
        let picks: Vec<SocketAddr> = (0..4).filter_map(|_| web.pick()).collect();
        assert_eq!(picks[0], picks[2]);
        assert_ne!(picks[0], picks[1], "round-robin over both endpoints");
        assert_eq!(
            web.endpoints()[0].port(),
            8000,
            "the EndpointSlice's target port"
        );
        let dflt = t.route("none", "/").unwrap();
        assert_eq!(dflt.pick(), Some("10.0.0.4:7000".parse().unwrap()));
    }

    #[test]
    fn missing_service_has_no_endpoints() {
        let a = ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({
                "rules": [{"http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": backend("ghost", json!({"number": 80}))},
                ]}}],
            }),
        );
        let t = RoutingTable::build(Objects {
            ingresses: &[&a],
            ..Default::default()
        });
        let b = t.route("anything", "/x").unwrap();
        assert_eq!(b.pick(), None);
    }

    #[test]
    fn class_selection() {
        let mk = |name: &str, class: Option<&str>, annotation: Option<&str>| -> Ingress {
            let mut v = json!({"metadata": {"name": name, "namespace": "default"}, "spec": {}});
            if let Some(c) = class {
                v["spec"]["ingressClassName"] = json!(c);
            }
            if let Some(a) = annotation {
                v["metadata"]["annotations"] = json!({CLASS_ANNOTATION: a});
            }
            serde_json::from_value(v).unwrap()
        };
        let ings = [
            mk("mine", Some("berth"), None),
            mk("theirs", Some("nginx"), None),
            mk("annotated", None, Some("berth")),
            mk("unclassed", None, None),
        ];
        let names = |sel: Vec<&Ingress>| -> Vec<String> {
            sel.iter()
                .map(|i| i.metadata.name.clone().unwrap())
                .collect()
        };
        let cfg = ClassConfig::default();
        assert_eq!(names(cfg.select(&ings, None)), ["mine", "annotated"]);
        let default_class: IngressClass = serde_json::from_value(json!({
            "metadata": {"name": "edge", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "spec": {"controller": "berth.dev/ingress-controller"},
        }))
        .unwrap();
        // With an IngressClass of ours named "edge" marked default: "berth" is no longer ours.
        assert_eq!(
            names(cfg.select(&ings, Some(&[&default_class]))),
            ["unclassed"]
        );
        let unclassed = ClassConfig {
            serve_unclassed: true,
            ..ClassConfig::default()
        };
        assert_eq!(
            names(unclassed.select(&ings, None)),
            ["mine", "annotated", "unclassed"]
        );
    }
}
