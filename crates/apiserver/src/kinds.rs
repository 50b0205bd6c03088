//! The per-kind strategies: what differs between kinds (scope, subresources, defaulting,
//! validation, table columns, selectable fields, schema), in the shape of kube-apiserver's
//! `pkg/registry/<group>/<kind>/strategy.go`. Everything else goes through one generic path
//! (the `registry` module). Adding a kind is adding a [`Kind`] here.

use std::collections::BTreeMap;

use k8s_openapi::api::{apps, batch, coordination, core, discovery, networking, policy};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::error::Cause;
use crate::validation;

/// A column of a kind's table (`Accept: application/json;as=Table`), as kubectl prints it.
#[derive(Clone, Copy)]
pub struct Column {
    /// Header, e.g. `Ready` (kubectl upper-cases it).
    pub name: &'static str,
    /// OpenAPI type of the cells: `string`, `integer`, `date`.
    pub kind: &'static str,
    /// 0: always printed; 1: only with `-o wide`.
    pub priority: u8,
    /// The cell for one object.
    pub cell: fn(&Value) -> Value,
}

/// A kind the server serves and everything that differs between kinds.
#[derive(Clone)]
pub struct Kind {
    /// API group, "" for core.
    pub group: &'static str,
    /// API version, e.g. `v1`.
    pub version: &'static str,
    /// Kind, e.g. `Deployment`.
    pub kind: &'static str,
    /// The resource (plural), e.g. `deployments`.
    pub plural: &'static str,
    /// Singular resource name, e.g. `deployment`.
    pub singular: &'static str,
    /// kubectl short names, e.g. `deploy`.
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Namespaced (true) or cluster-scoped.
    pub namespaced: bool,
    /// Has a `status` subresource: the main resource ignores status, `/status` changes only it.
    pub status: bool,
    /// Has a `scale` subresource (spec.replicas, status.replicas, spec.selector).
    pub scale: bool,
    /// Decodes a JSON object into the kind's type and back: type errors are caught and unknown
    /// fields dropped, as Kubernetes does.
    pub(crate) codec: fn(&Value) -> Result<Value, serde_json::Error>,
    /// The kind's JSON schema (with its definitions in the generator).
    pub(crate) schema: fn(&mut SchemaGenerator) -> Schema,
    /// Fills in Kubernetes' defaults.
    pub(crate) defaults: fn(&mut Value),
    /// Checks a new object (and, on update, against the old one).
    pub(crate) validate: fn(&Value, Option<&Value>, &mut Vec<Cause>),
    /// Table columns after `Name`.
    pub(crate) columns: &'static [Column],
    /// Value of a field selector's field beyond metadata.name/namespace (None: unsupported).
    pub(crate) field: fn(&Value, &str) -> Option<String>,
    /// A kind served for a CustomResourceDefinition: its schema and columns.
    pub(crate) custom: Option<std::sync::Arc<crate::crd::Custom>>,
}

impl Kind {
    /// `apps/v1` or `v1` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps` (or `pods`), the resource as errors name it.
    pub fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Store key prefix of every object of the kind (in `namespace`, if given).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{group}/{}/{ns}/", self.plural),
            _ => format!("/registry/{group}/{}/", self.plural),
        }
    }

    /// Store key of one object.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        format!("{}{name}", self.prefix(Some(namespace)))
    }
}

fn codec<K: Serialize + DeserializeOwned>(v: &Value) -> Result<Value, serde_json::Error> {
    let typed: K = K::deserialize(v)?;
    serde_json::to_value(typed)
}

fn schema<K: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<K>()
}

fn no_defaults(_: &mut Value) {}
fn no_validation(_: &Value, _: Option<&Value>, _: &mut Vec<Cause>) {}
fn no_fields(_: &Value, _: &str) -> Option<String> {
    None
}

macro_rules! kind {
    ($ty:ty, $group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $short:expr, namespaced: $ns:expr, status: $st:expr, scale: $sc:expr, $defaults:expr, $validate:expr, $columns:expr, $field:expr) => {
        Kind {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            short_names: $short,
            categories: if matches!(
                $kind,
                "Pod"
                    | "Service"
                    | "Deployment"
                    | "ReplicaSet"
                    | "DaemonSet"
                    | "StatefulSet"
                    | "Job"
                    | "CronJob"
            ) {
                &["all"]
            } else {
                &[]
            },
            namespaced: $ns,
            status: $st,
            scale: $sc,
            codec: codec::<$ty>,
            schema: schema::<$ty>,
            defaults: $defaults,
            validate: $validate,
            columns: $columns,
            field: $field,
            custom: None,
        }
    };
}

/// Every built-in kind the server serves.
pub fn builtin() -> Vec<Kind> {
    vec![
        kind!(core::v1::Namespace, "", "v1", "Namespace", "namespaces", "namespace", &["ns"], namespaced: false, status: true, scale: false,
            namespace_defaults, no_validation, NAMESPACE, |o, f| match f { "status.phase" => str_at(o, "/status/phase"), _ => None }),
        kind!(core::v1::Node, "", "v1", "Node", "nodes", "node", &["no"], namespaced: false, status: true, scale: false,
            no_defaults, no_validation, NODE, |o, f| match f { "spec.unschedulable" => Some(o.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false).to_string()), _ => None }),
        kind!(core::v1::Pod, "", "v1", "Pod", "pods", "pod", &["po"], namespaced: true, status: true, scale: false,
            pod_defaults, validation::pod, POD, pod_field),
        kind!(core::v1::Service, "", "v1", "Service", "services", "service", &["svc"], namespaced: true, status: true, scale: false,
            service_defaults, validation::service, SERVICE, no_fields),
        kind!(core::v1::Endpoints, "", "v1", "Endpoints", "endpoints", "endpoints", &["ep"], namespaced: true, status: false, scale: false,
            no_defaults, no_validation, ENDPOINTS, no_fields),
        kind!(core::v1::ConfigMap, "", "v1", "ConfigMap", "configmaps", "configmap", &["cm"], namespaced: true, status: false, scale: false,
            no_defaults, validation::data_keys, CONFIGMAP, no_fields),
        kind!(core::v1::Secret, "", "v1", "Secret", "secrets", "secret", &[], namespaced: true, status: false, scale: false,
            secret_defaults, validation::data_keys, SECRET, |o, f| match f { "type" => str_at(o, "/type"), _ => None }),
        kind!(core::v1::ServiceAccount, "", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", &["sa"], namespaced: true, status: false, scale: false,
            no_defaults, no_validation, SERVICEACCOUNT, no_fields),
        kind!(core::v1::Event, "", "v1", "Event", "events", "event", &["ev"], namespaced: true, status: false, scale: false,
            no_defaults, no_validation, EVENT, event_field),
        kind!(apps::v1::Deployment, "apps", "v1", "Deployment", "deployments", "deployment", &["deploy"], namespaced: true, status: true, scale: true,
            deployment_defaults, validation::workload, DEPLOYMENT, no_fields),
        kind!(apps::v1::ReplicaSet, "apps", "v1", "ReplicaSet", "replicasets", "replicaset", &["rs"], namespaced: true, status: true, scale: true,
            replicaset_defaults, validation::workload, REPLICASET, no_fields),
        kind!(apps::v1::DaemonSet, "apps", "v1", "DaemonSet", "daemonsets", "daemonset", &["ds"], namespaced: true, status: true, scale: false,
            daemonset_defaults, validation::workload, DAEMONSET, no_fields),
        kind!(apps::v1::StatefulSet, "apps", "v1", "StatefulSet", "statefulsets", "statefulset", &["sts"], namespaced: true, status: true, scale: true,
            statefulset_defaults, validation::workload, STATEFULSET, no_fields),
        kind!(apps::v1::ControllerRevision, "apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", &[], namespaced: true, status: false, scale: false,
            no_defaults, no_validation, CONTROLLERREVISION, no_fields),
        kind!(batch::v1::Job, "batch", "v1", "Job", "jobs", "job", &[], namespaced: true, status: true, scale: false,
            job_defaults, validation::job, JOB, |o, f| match f { "status.successful" => Some(o.pointer("/status/succeeded").and_then(Value::as_i64).unwrap_or(0).to_string()), _ => None }),
        kind!(batch::v1::CronJob, "batch", "v1", "CronJob", "cronjobs", "cronjob", &["cj"], namespaced: true, status: true, scale: false,
            cronjob_defaults, no_validation, CRONJOB, no_fields),
        kind!(coordination::v1::Lease, "coordination.k8s.io", "v1", "Lease", "leases", "lease", &[], namespaced: true, status: false, scale: false,
            no_defaults, no_validation, LEASE, no_fields),
        kind!(discovery::v1::EndpointSlice, "discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", &[], namespaced: true, status: false, scale: false,
            no_defaults, no_validation, ENDPOINTSLICE, no_fields),
        kind!(networking::v1::Ingress, "networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", &["ing"], namespaced: true, status: true, scale: false,
            no_defaults, no_validation, INGRESS, no_fields),
        kind!(policy::v1::PodDisruptionBudget, "policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", &["pdb"],
            namespaced: true, status: true, scale: false,
            no_defaults, validation::pdb, PDB, no_fields),
        kind!(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
            "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", "customresourcedefinition", &["crd", "crds"],
            namespaced: false, status: true, scale: false,
            crd_defaults, crate::crd::validate_crd, CRD, no_fields),
    ]
}

fn crd_defaults(o: &mut Value) {
    if let Some(versions) = o
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for v in versions {
            default(v, "served", json!(true));
            default(v, "storage", json!(false));
        }
    }
    if let Some(names) = o.pointer_mut("/spec/names").and_then(Value::as_object_mut)
        && let Some(kind) = names.get("kind").and_then(Value::as_str).map(str::to_owned)
    {
        names
            .entry("singular")
            .or_insert_with(|| json!(kind.to_lowercase()));
        names
            .entry("listKind")
            .or_insert_with(|| json!(format!("{kind}List")));
    }
    if let Some(spec) = o.get_mut("spec") {
        default(spec, "conversion", json!({"strategy": "None"}));
    }
}

/// `since` for a printer column of type date.
pub(crate) fn age_of(ts: Option<&str>) -> Value {
    since(ts)
}

pub(crate) fn str_at(o: &Value, pointer: &str) -> Option<String> {
    o.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn pod_field(o: &Value, f: &str) -> Option<String> {
    Some(match f {
        "spec.nodeName" => str_at(o, "/spec/nodeName").unwrap_or_default(),
        "spec.restartPolicy" => str_at(o, "/spec/restartPolicy").unwrap_or_default(),
        "spec.schedulerName" => str_at(o, "/spec/schedulerName").unwrap_or_default(),
        "spec.serviceAccountName" => str_at(o, "/spec/serviceAccountName").unwrap_or_default(),
        "spec.hostNetwork" => o
            .pointer("/spec/hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        "status.phase" => str_at(o, "/status/phase").unwrap_or_default(),
        "status.podIP" => str_at(o, "/status/podIP").unwrap_or_default(),
        "status.nominatedNodeName" => str_at(o, "/status/nominatedNodeName").unwrap_or_default(),
        _ => return None,
    })
}

fn event_field(o: &Value, f: &str) -> Option<String> {
    let pointer = match f {
        "involvedObject.kind" => "/involvedObject/kind",
        "involvedObject.namespace" => "/involvedObject/namespace",
        "involvedObject.name" => "/involvedObject/name",
        "involvedObject.uid" => "/involvedObject/uid",
        "involvedObject.apiVersion" => "/involvedObject/apiVersion",
        "involvedObject.resourceVersion" => "/involvedObject/resourceVersion",
        "involvedObject.fieldPath" => "/involvedObject/fieldPath",
        "reason" => "/reason",
        "reportingComponent" => "/reportingComponent",
        "source" => "/source/component",
        "type" => "/type",
        _ => return None,
    };
    Some(str_at(o, pointer).unwrap_or_default())
}

// ---- defaulting -------------------------------------------------------------------------------

/// Sets `obj[key]` to `value` unless present.
fn default(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        map.entry(key.to_owned()).or_insert(value);
    }
}

/// The object at `pointer`, created (as `{}`) along the way if missing.
fn object_at<'a>(obj: &'a mut Value, pointer: &str) -> &'a mut Value {
    let mut cur = obj;
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = cur
            .as_object_mut()
            .expect("made an object above")
            .entry(part.to_owned())
            .or_insert_with(|| json!({}));
    }
    cur
}

fn namespace_defaults(obj: &mut Value) {
    default(object_at(obj, "/spec"), "finalizers", json!(["kubernetes"]));
    default(object_at(obj, "/status"), "phase", json!("Active"));
}

fn secret_defaults(obj: &mut Value) {
    default(obj, "type", json!("Opaque"));
    // `stringData` is write-only: merged into `data` (base64), as kube-apiserver does.
    if let Some(Value::Object(plain)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
        use base64::Engine;
        let data = object_at(obj, "/data");
        if let Some(data) = data.as_object_mut() {
            for (k, v) in plain {
                let text = v.as_str().unwrap_or_default();
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(text)),
                );
            }
        }
    }
}

fn container_defaults(c: &mut Value) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    let last = image.rsplit('/').next().unwrap_or("");
    let policy = if image.contains('@') {
        "IfNotPresent"
    } else {
        match last.split_once(':') {
            None => "Always",
            Some((_, "latest")) => "Always",
            Some(_) => "IfNotPresent",
        }
    };
    default(c, "imagePullPolicy", json!(policy));
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            default(p, "protocol", json!("TCP"));
        }
    }
}

/// Kubernetes' `SetDefaults_PodSpec` and its containers'.
pub(crate) fn pod_spec_defaults(spec: &mut Value) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(container_defaults);
        }
    }
}

fn pod_defaults(obj: &mut Value) {
    pod_spec_defaults(object_at(obj, "/spec"));
    if let Some(sa) = obj.pointer("/spec/serviceAccountName").cloned() {
        default(object_at(obj, "/spec"), "serviceAccount", sa);
    }
    default(object_at(obj, "/spec"), "enableServiceLinks", json!(true));
    default(object_at(obj, "/status"), "phase", json!("Pending"));
    default(object_at(obj, "/status"), "qosClass", json!("BestEffort"));
}

fn template_defaults(obj: &mut Value) {
    pod_spec_defaults(object_at(obj, "/spec/template/spec"));
}

fn deployment_defaults(obj: &mut Value) {
    let spec = object_at(obj, "/spec");
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    strategy_defaults(
        spec,
        "strategy",
        &[("maxSurge", json!("25%")), ("maxUnavailable", json!("25%"))],
    );
    template_defaults(obj);
}

/// An update strategy's type (RollingUpdate when unset) and, for RollingUpdate, each unset
/// rollingUpdate field (field by field, as Kubernetes' defaulting does: a protobuf body sends an
/// empty strategy).
fn strategy_defaults(spec: &mut Value, field: &str, rolling: &[(&str, Value)]) {
    let strategy = object_at(spec, &format!("/{field}"));
    default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        let ru = object_at(strategy, "/rollingUpdate");
        for (k, v) in rolling {
            default(ru, k, v.clone());
        }
    }
}

fn replicaset_defaults(obj: &mut Value) {
    default(object_at(obj, "/spec"), "replicas", json!(1));
    template_defaults(obj);
}

fn daemonset_defaults(obj: &mut Value) {
    let spec = object_at(obj, "/spec");
    default(spec, "revisionHistoryLimit", json!(10));
    strategy_defaults(
        spec,
        "updateStrategy",
        &[("maxSurge", json!(0)), ("maxUnavailable", json!(1))],
    );
    template_defaults(obj);
}

fn statefulset_defaults(obj: &mut Value) {
    let spec = object_at(obj, "/spec");
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "podManagementPolicy", json!("OrderedReady"));
    strategy_defaults(spec, "updateStrategy", &[("partition", json!(0))]);
    default(
        spec,
        "persistentVolumeClaimRetentionPolicy",
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
    );
    template_defaults(obj);
}

fn job_spec_defaults(spec: &mut Value) {
    default(spec, "completions", json!(1));
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    default(spec, "manualSelector", json!(false));
    default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
}

fn job_defaults(obj: &mut Value) {
    job_spec_defaults(object_at(obj, "/spec"));
    // A Job's pods get a selector on a generated controller-uid label (set on create).
    template_defaults(obj);
}

fn cronjob_defaults(obj: &mut Value) {
    let spec = object_at(obj, "/spec");
    default(spec, "concurrencyPolicy", json!("Allow"));
    default(spec, "suspend", json!(false));
    default(spec, "successfulJobsHistoryLimit", json!(3));
    default(spec, "failedJobsHistoryLimit", json!(1));
    let job = object_at(obj, "/spec/jobTemplate/spec");
    default(job, "backoffLimit", json!(6));
    default(job, "completionMode", json!("NonIndexed"));
    default(job, "suspend", json!(false));
    pod_spec_defaults(object_at(obj, "/spec/jobTemplate/spec/template/spec"));
}

fn service_defaults(obj: &mut Value) {
    let spec = object_at(obj, "/spec");
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    default(spec, "ipFamilyPolicy", json!("SingleStack"));
    default(spec, "ipFamilies", json!(["IPv4"]));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                default(p, "targetPort", port);
            }
        }
    }
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or("");
    if matches!(ty, "NodePort" | "LoadBalancer") {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    default(object_at(obj, "/status"), "loadBalancer", json!({}));
}

// ---- table columns ----------------------------------------------------------------------------

/// kubectl's `HumanDuration`.
pub(crate) fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = s / 60;
    if minutes < 10 {
        let rem = s % 60;
        return if rem == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{rem}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let rem = minutes % 60;
        return if rem == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{rem}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let rem = hours % 24;
        return if rem == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{rem}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Age of a timestamp string, as kubectl prints it (`<unknown>` when absent).
pub(crate) fn since(ts: Option<&str>) -> Value {
    let Some(ts) = ts else {
        return json!("<unknown>");
    };
    match chrono::DateTime::parse_from_rfc3339(ts) {
        Ok(t) => json!(human_duration(
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds()
        )),
        Err(_) => json!("<unknown>"),
    }
}

fn age(o: &Value) -> Value {
    since(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
    )
}

fn int(o: &Value, pointer: &str) -> i64 {
    o.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn text(o: &Value, pointer: &str, absent: &str) -> Value {
    json!(
        o.pointer(pointer)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(absent)
    )
}

fn none_or(s: String) -> Value {
    json!(if s.is_empty() { "<none>".to_owned() } else { s })
}

/// `app=web,tier=front` of a label selector, `<none>` when empty.
pub(crate) fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else { return String::new() };
    let mut parts = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        parts.extend(
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))),
        );
    }
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => parts.push(format!("{key} in ({})", values.join(","))),
                "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
                "Exists" => parts.push(key.to_owned()),
                "DoesNotExist" => parts.push(format!("!{key}")),
                _ => {}
            }
        }
    }
    parts.join(",")
}

fn containers_of(o: &Value, pointer: &str) -> Vec<Value> {
    o.pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn names(o: &Value, pointer: &str, field: &str) -> Value {
    json!(
        containers_of(o, pointer)
            .iter()
            .filter_map(|c| c.get(field).and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(",")
    )
}

const T: &str = "/spec/template/spec/containers";

macro_rules! col {
    ($name:expr, $kind:expr, $prio:expr, $cell:expr) => {
        Column {
            name: $name,
            kind: $kind,
            priority: $prio,
            cell: $cell,
        }
    };
}

const NAMESPACE: &[Column] = &[
    col!("Status", "string", 0, |o| text(o, "/status/phase", "")),
    col!("Age", "string", 0, age),
];

fn node_ready(o: &Value) -> Value {
    let ready = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .and_then(|c| c.get("status").and_then(Value::as_str))
        .unwrap_or("Unknown");
    let mut status = match ready {
        "True" => "Ready".to_owned(),
        _ => "NotReady".to_owned(),
    };
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

fn node_roles(o: &Value) -> Value {
    let roles: Vec<String> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    none_or(roles.join(","))
}

fn node_address(o: &Value, ty: &str) -> Value {
    let addr = o
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|x| x.get("type").and_then(Value::as_str) == Some(ty))
        })
        .and_then(|x| x.get("address").and_then(Value::as_str))
        .unwrap_or("");
    none_or(addr.to_owned())
}

const NODE: &[Column] = &[
    col!("Status", "string", 0, node_ready),
    col!("Roles", "string", 0, node_roles),
    col!("Age", "string", 0, age),
    col!("Version", "string", 0, |o| text(
        o,
        "/status/nodeInfo/kubeletVersion",
        ""
    )),
    col!("Internal-IP", "string", 1, |o| node_address(
        o,
        "InternalIP"
    )),
    col!("External-IP", "string", 1, |o| node_address(
        o,
        "ExternalIP"
    )),
    col!("OS-Image", "string", 1, |o| text(
        o,
        "/status/nodeInfo/osImage",
        "<unknown>"
    )),
    col!("Kernel-Version", "string", 1, |o| text(
        o,
        "/status/nodeInfo/kernelVersion",
        "<unknown>"
    )),
    col!("Container-Runtime", "string", 1, |o| text(
        o,
        "/status/nodeInfo/containerRuntimeVersion",
        "<unknown>"
    )),
];

fn pod_ready(o: &Value) -> Value {
    let total = containers_of(o, "/spec/containers").len();
    let ready = containers_of(o, "/status/containerStatuses")
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    json!(format!("{ready}/{total}"))
}

fn pod_status(o: &Value) -> Value {
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        return json!("Terminating");
    }
    if let Some(reason) = o
        .pointer("/status/reason")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        return json!(reason);
    }
    for c in containers_of(o, "/status/containerStatuses") {
        if let Some(reason) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            return json!(reason);
        }
        if let Some(reason) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            return json!(reason);
        }
    }
    text(o, "/status/phase", "Pending")
}

fn pod_restarts(o: &Value) -> Value {
    json!(
        containers_of(o, "/status/containerStatuses")
            .iter()
            .map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0))
            .sum::<i64>()
    )
}

const POD: &[Column] = &[
    col!("Ready", "string", 0, pod_ready),
    col!("Status", "string", 0, pod_status),
    col!("Restarts", "string", 0, pod_restarts),
    col!("Age", "string", 0, age),
    col!("IP", "string", 1, |o| text(o, "/status/podIP", "<none>")),
    col!("Node", "string", 1, |o| text(o, "/spec/nodeName", "<none>")),
    col!("Nominated Node", "string", 1, |o| text(
        o,
        "/status/nominatedNodeName",
        "<none>"
    )),
    col!("Readiness Gates", "string", 1, |o| {
        let gates = containers_of(o, "/spec/readinessGates");
        if gates.is_empty() {
            json!("<none>")
        } else {
            json!(format!("0/{}", gates.len()))
        }
    }),
];

fn service_ports(o: &Value) -> Value {
    let ports: Vec<String> = containers_of(o, "/spec/ports")
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    none_or(ports.join(","))
}

fn service_external(o: &Value) -> Value {
    let mut ips: Vec<String> = containers_of(o, "/spec/externalIPs")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    for ing in containers_of(o, "/status/loadBalancer/ingress") {
        if let Some(ip) = ing
            .get("ip")
            .or_else(|| ing.get("hostname"))
            .and_then(Value::as_str)
        {
            ips.push(ip.to_owned());
        }
    }
    if ips.is_empty() {
        return json!(match o.pointer("/spec/type").and_then(Value::as_str) {
            Some("LoadBalancer") => "<pending>",
            Some("ExternalName") => o
                .pointer("/spec/externalName")
                .and_then(Value::as_str)
                .unwrap_or("<none>"),
            _ => "<none>",
        });
    }
    json!(ips.join(","))
}

fn map_selector(o: &Value, pointer: &str) -> Value {
    let s: Vec<String> = o
        .pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    none_or(s.join(","))
}

const SERVICE: &[Column] = &[
    col!("Type", "string", 0, |o| text(o, "/spec/type", "")),
    col!("Cluster-IP", "string", 0, |o| text(
        o,
        "/spec/clusterIP",
        "<none>"
    )),
    col!("External-IP", "string", 0, service_external),
    col!("Port(s)", "string", 0, service_ports),
    col!("Age", "string", 0, age),
    col!("Selector", "string", 1, |o| map_selector(
        o,
        "/spec/selector"
    )),
];

const ENDPOINTS: &[Column] = &[
    col!("Endpoints", "string", 0, |o| {
        let mut eps = Vec::new();
        for subset in containers_of(o, "/subsets") {
            let ports = containers_of(&subset, "/ports");
            for addr in containers_of(&subset, "/addresses") {
                let ip = addr.get("ip").and_then(Value::as_str).unwrap_or("");
                if ports.is_empty() {
                    eps.push(ip.to_owned());
                }
                for p in &ports {
                    eps.push(format!(
                        "{ip}:{}",
                        p.get("port").and_then(Value::as_i64).unwrap_or(0)
                    ));
                }
            }
        }
        none_or(eps.join(","))
    }),
    col!("Age", "string", 0, age),
];

fn data_count(o: &Value) -> Value {
    let count = |k: &str| o.get(k).and_then(Value::as_object).map_or(0, |m| m.len());
    json!(count("data") + count("binaryData"))
}

const CONFIGMAP: &[Column] = &[
    col!("Data", "integer", 0, data_count),
    col!("Age", "string", 0, age),
];

const SECRET: &[Column] = &[
    col!("Type", "string", 0, |o| text(o, "/type", "")),
    col!("Data", "integer", 0, |o| json!(
        o.get("data")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len())
    )),
    col!("Age", "string", 0, age),
];

const SERVICEACCOUNT: &[Column] = &[
    col!("Secrets", "integer", 0, |o| json!(
        containers_of(o, "/secrets").len()
    )),
    col!("Age", "string", 0, age),
];

const EVENT: &[Column] = &[
    col!("Last Seen", "string", 0, |o| since(
        o.get("lastTimestamp")
            .or_else(|| o.get("eventTime"))
            .and_then(Value::as_str)
    )),
    col!("Type", "string", 0, |o| text(o, "/type", "")),
    col!("Reason", "string", 0, |o| text(o, "/reason", "")),
    col!("Object", "string", 0, |o| {
        let kind = o
            .pointer("/involvedObject/kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_lowercase();
        let name = o
            .pointer("/involvedObject/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        json!(format!("{kind}/{name}"))
    }),
    col!("Message", "string", 0, |o| text(o, "/message", "")),
];

fn ready_of(o: &Value, desired: &str) -> Value {
    json!(format!(
        "{}/{}",
        int(o, "/status/readyReplicas"),
        int(o, desired)
    ))
}

const WIDE: [Column; 3] = [
    col!("Containers", "string", 1, |o| names(o, T, "name")),
    col!("Images", "string", 1, |o| names(o, T, "image")),
    col!("Selector", "string", 1, |o| none_or(selector_string(
        o.pointer("/spec/selector")
    ))),
];

const DEPLOYMENT: &[Column] = &[
    col!("Ready", "string", 0, |o| ready_of(o, "/spec/replicas")),
    col!("Up-to-date", "integer", 0, |o| json!(int(
        o,
        "/status/updatedReplicas"
    ))),
    col!("Available", "integer", 0, |o| json!(int(
        o,
        "/status/availableReplicas"
    ))),
    col!("Age", "string", 0, age),
    WIDE[0],
    WIDE[1],
    WIDE[2],
];

const REPLICASET: &[Column] = &[
    col!("Desired", "integer", 0, |o| json!(int(o, "/spec/replicas"))),
    col!("Current", "integer", 0, |o| json!(int(
        o,
        "/status/replicas"
    ))),
    col!("Ready", "integer", 0, |o| json!(int(
        o,
        "/status/readyReplicas"
    ))),
    col!("Age", "string", 0, age),
    WIDE[0],
    WIDE[1],
    WIDE[2],
];

const DAEMONSET: &[Column] = &[
    col!("Desired", "integer", 0, |o| json!(int(
        o,
        "/status/desiredNumberScheduled"
    ))),
    col!("Current", "integer", 0, |o| json!(int(
        o,
        "/status/currentNumberScheduled"
    ))),
    col!("Ready", "integer", 0, |o| json!(int(
        o,
        "/status/numberReady"
    ))),
    col!("Up-to-date", "integer", 0, |o| json!(int(
        o,
        "/status/updatedNumberScheduled"
    ))),
    col!("Available", "integer", 0, |o| json!(int(
        o,
        "/status/numberAvailable"
    ))),
    col!("Node Selector", "string", 0, |o| map_selector(
        o,
        "/spec/template/spec/nodeSelector"
    )),
    col!("Age", "string", 0, age),
    WIDE[0],
    WIDE[1],
    WIDE[2],
];

const STATEFULSET: &[Column] = &[
    col!("Ready", "string", 0, |o| ready_of(o, "/spec/replicas")),
    col!("Age", "string", 0, age),
    WIDE[0],
    WIDE[1],
];

const CONTROLLERREVISION: &[Column] = &[
    col!("Controller", "string", 0, |o| {
        let owner = containers_of(o, "/metadata/ownerReferences")
            .into_iter()
            .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true));
        match owner {
            Some(r) => json!(format!(
                "{}/{}",
                r.get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_lowercase(),
                r.get("name").and_then(Value::as_str).unwrap_or("")
            )),
            None => json!("<none>"),
        }
    }),
    col!("Revision", "integer", 0, |o| json!(int(o, "/revision"))),
    col!("Age", "string", 0, age),
];

fn job_status(o: &Value) -> Value {
    let conds = containers_of(o, "/status/conditions");
    let has = |t: &str| {
        conds.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(t)
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    };
    json!(if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if has("Suspended") {
        "Suspended"
    } else {
        "Running"
    })
}

const JOB: &[Column] = &[
    col!("Status", "string", 0, job_status),
    col!("Completions", "string", 0, |o| json!(format!(
        "{}/{}",
        int(o, "/status/succeeded"),
        o.pointer("/spec/completions")
            .and_then(Value::as_i64)
            .unwrap_or(1)
    ))),
    col!("Duration", "string", 0, |o| {
        let start = o.pointer("/status/startTime").and_then(Value::as_str);
        let end = o.pointer("/status/completionTime").and_then(Value::as_str);
        match (start, end) {
            (Some(s), Some(e)) => {
                match (
                    chrono::DateTime::parse_from_rfc3339(s),
                    chrono::DateTime::parse_from_rfc3339(e),
                ) {
                    (Ok(s), Ok(e)) => json!(human_duration((e - s).num_seconds())),
                    _ => json!(""),
                }
            }
            (Some(s), None) => since(Some(s)),
            _ => json!(""),
        }
    }),
    col!("Age", "string", 0, age),
    WIDE[0],
    WIDE[1],
    WIDE[2],
];

const CRONJOB: &[Column] = &[
    col!("Schedule", "string", 0, |o| text(o, "/spec/schedule", "")),
    col!("Timezone", "string", 0, |o| text(
        o,
        "/spec/timeZone",
        "<none>"
    )),
    col!("Suspend", "boolean", 0, |o| json!(
        o.pointer("/spec/suspend")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    )),
    col!("Active", "integer", 0, |o| json!(
        containers_of(o, "/status/active").len()
    )),
    col!("Last Schedule", "string", 0, |o| match o
        .pointer("/status/lastScheduleTime")
        .and_then(Value::as_str)
    {
        Some(t) => since(Some(t)),
        None => json!("<none>"),
    }),
    col!("Age", "string", 0, age),
    col!("Containers", "string", 1, |o| names(
        o,
        "/spec/jobTemplate/spec/template/spec/containers",
        "name"
    )),
    col!("Images", "string", 1, |o| names(
        o,
        "/spec/jobTemplate/spec/template/spec/containers",
        "image"
    )),
    col!("Selector", "string", 1, |o| none_or(selector_string(
        o.pointer("/spec/jobTemplate/spec/selector")
    ))),
];

const LEASE: &[Column] = &[
    col!("Holder", "string", 0, |o| text(
        o,
        "/spec/holderIdentity",
        "<none>"
    )),
    col!("Age", "string", 0, age),
];

const ENDPOINTSLICE: &[Column] = &[
    col!("AddressType", "string", 0, |o| text(o, "/addressType", "")),
    col!("Ports", "string", 0, |o| {
        let ports: Vec<String> = containers_of(o, "/ports")
            .iter()
            .filter_map(|p| p.get("port").and_then(Value::as_i64))
            .map(|p| p.to_string())
            .collect();
        none_or(ports.join(","))
    }),
    col!("Endpoints", "string", 0, |o| {
        let addrs: Vec<String> = containers_of(o, "/endpoints")
            .iter()
            .flat_map(|e| containers_of(e, "/addresses"))
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        none_or(addrs.join(","))
    }),
    col!("Age", "string", 0, age),
];

const INGRESS: &[Column] = &[
    col!("Class", "string", 0, |o| text(
        o,
        "/spec/ingressClassName",
        "<none>"
    )),
    col!("Hosts", "string", 0, |o| {
        let hosts: Vec<String> = containers_of(o, "/spec/rules")
            .iter()
            .filter_map(|r| r.get("host").and_then(Value::as_str).map(str::to_owned))
            .collect();
        json!(if hosts.is_empty() {
            "*".to_owned()
        } else {
            hosts.join(",")
        })
    }),
    col!("Address", "string", 0, |o| {
        let a: Vec<String> = containers_of(o, "/status/loadBalancer/ingress")
            .iter()
            .filter_map(|i| {
                i.get("ip")
                    .or_else(|| i.get("hostname"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        json!(a.join(","))
    }),
    col!("Ports", "string", 0, |o| json!(
        if containers_of(o, "/spec/tls").is_empty() {
            "80"
        } else {
            "80, 443"
        }
    )),
    col!("Age", "string", 0, age),
];

/// Labels of an object (empty when none).
pub(crate) fn labels(o: &Value) -> BTreeMap<String, String> {
    o.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

const CRD: &[Column] = &[col!("Created At", "date", 0, |o| o
    .pointer("/metadata/creationTimestamp")
    .cloned()
    .unwrap_or(Value::Null))];

const PDB: &[Column] = &[
    col!(
        "Min Available",
        "string",
        0,
        |o| match o.pointer("/spec/minAvailable") {
            Some(v) if !v.is_null() =>
                json!(v.as_str().map_or_else(|| v.to_string(), str::to_owned)),
            _ => json!("N/A"),
        }
    ),
    col!(
        "Max Unavailable",
        "string",
        0,
        |o| match o.pointer("/spec/maxUnavailable") {
            Some(v) if !v.is_null() =>
                json!(v.as_str().map_or_else(|| v.to_string(), str::to_owned)),
            _ => json!("N/A"),
        }
    ),
    col!("Allowed Disruptions", "integer", 0, |o| json!(int(
        o,
        "/status/disruptionsAllowed"
    ))),
    col!("Age", "string", 0, age),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
    }

    #[test]
    fn secret_string_data_becomes_data() {
        let mut s = json!({"stringData": {"user": "admin"}, "data": {"x": "eA=="}});
        secret_defaults(&mut s);
        assert_eq!(
            s,
            json!({"type": "Opaque", "data": {"x": "eA==", "user": "YWRtaW4="}})
        );
    }

    #[test]
    fn image_pull_policy_follows_the_tag() {
        for (image, policy) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("localhost:5000/nginx", "Always"),
            ("nginx@sha256:abc", "IfNotPresent"),
        ] {
            let mut c = json!({"name": "c", "image": image});
            container_defaults(&mut c);
            assert_eq!(c["imagePullPolicy"], policy, "{image}");
        }
    }
}
