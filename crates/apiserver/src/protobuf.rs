//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`): the `k8s\0` magic,
//! then a `runtime.Unknown` whose `typeMeta` names the apiVersion and kind and whose `raw` is the
//! object's message. kubectl's typed commands (`create namespace|deployment|secret ...`,
//! `scale`, `rollout`) send their bodies this way.
//!
//! Messages are read with prost-reflect against the Kubernetes `.proto` descriptors
//! (`proto/kubernetes.desc`, see `proto/regenerate.sh`) and turned into the JSON the rest of the
//! server works with. The Kubernetes types whose JSON differs from their message are mapped as
//! Kubernetes maps them: `Time` and `MicroTime` as RFC 3339 strings, `Quantity` as its string,
//! `IntOrString` as a number or a string, `RawExtension`, `FieldsV1` and `JSON` as the JSON they
//! carry, bytes as base64. Go writes every non-pointer field, so zero values are dropped as Go's
//! `omitempty` would, except for the pointer fields where zero means something
//! ([`ZERO_MATTERS`]).
//!
//! The reverse ([`encode`]) answers clients that accept only protobuf.

use std::sync::LazyLock;

use base64::Engine;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value as Pb,
};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// The media type.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The magic prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!("../proto/kubernetes.desc")[..])
        .expect("the bundled Kubernetes descriptors decode")
});

/// Fields (by name) whose zero value is kept: Go pointers where 0 or false differs from unset.
pub(crate) const ZERO_MATTERS: &[&str] = &[
    "replicas",
    "terminationGracePeriodSeconds",
    "backoffLimit",
    "backoffLimitPerIndex",
    "parallelism",
    "completions",
    "revisionHistoryLimit",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "ttlSecondsAfterFinished",
    "startingDeadlineSeconds",
    "gracePeriodSeconds",
    "progressDeadlineSeconds",
    "activeDeadlineSeconds",
    "defaultMode",
    "mode",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "allowPrivilegeEscalation",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "hostUsers",
    "ready",
    "serving",
    "terminating",
    "minAvailable",
    "maxUnavailable",
    "maxSurge",
    "expirationSeconds",
    "leaseDurationSeconds",
    "leaseTransitions",
];

/// Message fields that Go's JSON inlines into their parent (`json:",inline"`).
const INLINE: &[(&str, &str)] = &[
    ("api.core.v1.Volume", "volumeSource"),
    ("api.core.v1.PersistentVolumeSpec", "persistentVolumeSource"),
    ("api.core.v1.EphemeralContainer", "ephemeralContainerCommon"),
    ("api.core.v1.Probe", "handler"),
];

fn inlined(message: &str, field: &str) -> bool {
    INLINE.iter().any(|(m, f)| *m == message && *f == field)
}

/// The protobuf package of an API group.
fn package(group: &str) -> Option<&'static str> {
    Some(match group {
        "" => "api.core",
        "apps" => "api.apps",
        "batch" => "api.batch",
        "coordination.k8s.io" => "api.coordination",
        "discovery.k8s.io" => "api.discovery",
        "networking.k8s.io" => "api.networking",
        "policy" => "api.policy",
        "autoscaling" => "api.autoscaling",
        "apiextensions.k8s.io" => "apiextensions_apiserver.pkg.apis.apiextensions",
        "meta.k8s.io" => "apimachinery.pkg.apis.meta",
        _ => return None,
    })
}

/// The message of `kind` in `api_version`; the `meta/v1` options types (DeleteOptions, ...)
/// are registered in every group, as in Kubernetes' scheme.
fn descriptor(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    package(group)
        .and_then(|p| POOL.get_message_by_name(&format!("{p}.{version}.{kind}")))
        .or_else(|| POOL.get_message_by_name(&format!("apimachinery.pkg.apis.meta.v1.{kind}")))
}

/// Decodes a protobuf body into the object's JSON (with apiVersion and kind).
pub(crate) fn decode(body: &[u8]) -> Result<Value> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| {
        Error::BadRequest("the protobuf body does not start with the k8s magic number".into())
    })?;
    let unknown = POOL
        .get_message_by_name("apimachinery.pkg.runtime.Unknown")
        .expect("runtime.Unknown is bundled");
    let unknown = DynamicMessage::decode(unknown, rest)
        .map_err(|e| Error::BadRequest(format!("invalid protobuf envelope: {e}")))?;
    let type_meta = unknown
        .get_field_by_name("typeMeta")
        .and_then(|v| v.as_message().cloned());
    let field = |name: &str| {
        type_meta
            .as_ref()
            .and_then(|t| t.get_field_by_name(name))
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if let Some(enc) = unknown
        .get_field_by_name("contentEncoding")
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|e| !e.is_empty())
    {
        return Err(Error::UnsupportedMediaType(format!(
            "protobuf with content encoding {enc:?} is not supported"
        )));
    }
    let raw = unknown
        .get_field_by_name("raw")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let desc = descriptor(&api_version, &kind).ok_or_else(|| {
        Error::BadRequest(format!(
            "no protobuf message is known for kind {kind:?} in {api_version:?}"
        ))
    })?;
    let msg = DynamicMessage::decode(desc, raw.as_ref())
        .map_err(|e| Error::BadRequest(format!("invalid protobuf {kind}: {e}")))?;
    let mut v = message_to_json(&msg);
    if let Some(m) = v.as_object_mut() {
        if !api_version.is_empty() {
            m.insert("apiVersion".into(), json!(api_version));
        }
        if !kind.is_empty() {
            m.insert("kind".into(), json!(kind));
        }
    }
    Ok(v)
}

fn time_string(msg: &DynamicMessage, micro: bool) -> Value {
    let secs = msg
        .get_field_by_name("seconds")
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let nanos = msg
        .get_field_by_name("nanos")
        .and_then(|v| v.as_i32())
        .unwrap_or(0);
    if secs == 0 && nanos == 0 {
        // Go writes the zero Time of a non-pointer field; its JSON is null.
        return Value::Null;
    }
    let Some(t) = chrono::DateTime::from_timestamp(secs, nanos.max(0) as u32) else {
        return Value::Null;
    };
    Value::String(if micro {
        t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    })
}

/// A message as Kubernetes' JSON.
fn message_to_json(msg: &DynamicMessage) -> Value {
    let desc = msg.descriptor();
    let name = desc.full_name();
    let bytes_json = |field: &str| {
        msg.get_field_by_name(field)
            .and_then(|v| v.as_bytes().cloned())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null)
    };
    match name {
        "apimachinery.pkg.apis.meta.v1.Time" => return time_string(msg, false),
        "apimachinery.pkg.apis.meta.v1.MicroTime" => return time_string(msg, true),
        "apimachinery.pkg.api.resource.Quantity" => {
            return msg
                .get_field_by_name("string")
                .and_then(|v| v.as_str().map(|s| json!(s)))
                .unwrap_or(Value::Null);
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            let ty = msg
                .get_field_by_name("type")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            return if ty == 1 {
                json!(
                    msg.get_field_by_name("strVal")
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )
            } else {
                json!(
                    msg.get_field_by_name("intVal")
                        .and_then(|v| v.as_i32())
                        .unwrap_or(0)
                )
            };
        }
        "apimachinery.pkg.runtime.RawExtension" => return bytes_json("raw"),
        "apimachinery.pkg.apis.meta.v1.FieldsV1" => return bytes_json("Raw"),
        "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON" => return bytes_json("raw"),
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let nanos = msg
                .get_field_by_name("duration")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            return json!(format!("{}s", nanos as f64 / 1e9));
        }
        _ => {}
    }
    let mut out = Map::new();
    for (field, value) in msg.fields() {
        let key = field.name();
        let keep_zero = ZERO_MATTERS.contains(&key);
        let v = value_to_json(value);
        let zero = match &v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::Array(a) => a.is_empty(),
            Value::Object(m) => m.is_empty() && (field.is_map() || field.is_list()),
        };
        if zero && !keep_zero {
            continue;
        }
        if inlined(name, key) {
            if let Value::Object(m) = v {
                out.extend(m);
            }
            continue;
        }
        out.insert(key.to_owned(), v);
    }
    Value::Object(out)
}

fn value_to_json(v: &Pb) -> Value {
    match v {
        Pb::Bool(b) => json!(b),
        Pb::I32(n) => json!(n),
        Pb::I64(n) => json!(n),
        Pb::U32(n) => json!(n),
        Pb::U64(n) => json!(n),
        Pb::F32(n) => json!(n),
        Pb::F64(n) => json!(n),
        Pb::String(s) => json!(s),
        Pb::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Pb::EnumNumber(n) => json!(n),
        Pb::Message(m) => message_to_json(m),
        Pb::List(items) => Value::Array(items.iter().map(value_to_json).collect()),
        Pb::Map(m) => {
            let mut entries: Vec<(String, Value)> = m
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        MapKey::String(s) => s.clone(),
                        MapKey::Bool(b) => b.to_string(),
                        MapKey::I32(n) => n.to_string(),
                        MapKey::I64(n) => n.to_string(),
                        MapKey::U32(n) => n.to_string(),
                        MapKey::U64(n) => n.to_string(),
                    };
                    (key, value_to_json(v))
                })
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
    }
}

/// Encodes the JSON object `v` (with apiVersion and kind) as a Kubernetes protobuf body; None
/// when no message is known for its kind.
pub(crate) fn encode(v: &Value) -> Option<Vec<u8>> {
    let api_version = v.get("apiVersion")?.as_str()?;
    let kind = v.get("kind")?.as_str()?;
    let desc = descriptor(api_version, kind)?;
    let msg = json_to_message(&desc, v)?;
    let unknown_desc = POOL.get_message_by_name("apimachinery.pkg.runtime.Unknown")?;
    let type_meta_desc = POOL.get_message_by_name("apimachinery.pkg.runtime.TypeMeta")?;
    let mut type_meta = DynamicMessage::new(type_meta_desc);
    type_meta.set_field_by_name("apiVersion", Pb::String(api_version.to_owned()));
    type_meta.set_field_by_name("kind", Pb::String(kind.to_owned()));
    let mut unknown = DynamicMessage::new(unknown_desc);
    unknown.set_field_by_name("typeMeta", Pb::Message(type_meta));
    unknown.set_field_by_name("raw", Pb::Bytes(msg.encode_to_vec().into()));
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    Some(out)
}

fn json_to_message(desc: &MessageDescriptor, v: &Value) -> Option<DynamicMessage> {
    let mut msg = DynamicMessage::new(desc.clone());
    let raw_field = |msg: &mut DynamicMessage, field: &str, v: &Value| {
        msg.set_field_by_name(
            field,
            Pb::Bytes(serde_json::to_vec(v).unwrap_or_default().into()),
        );
    };
    match desc.full_name() {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let t = chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
            msg.set_field_by_name("seconds", Pb::I64(t.timestamp()));
            msg.set_field_by_name("nanos", Pb::I32(t.timestamp_subsec_nanos() as i32));
            return Some(msg);
        }
        "apimachinery.pkg.api.resource.Quantity" => {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            msg.set_field_by_name("string", Pb::String(s));
            return Some(msg);
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            match v {
                Value::String(s) => {
                    msg.set_field_by_name("type", Pb::I64(1));
                    msg.set_field_by_name("strVal", Pb::String(s.clone()));
                }
                other => {
                    msg.set_field_by_name("type", Pb::I64(0));
                    msg.set_field_by_name("intVal", Pb::I32(other.as_i64()? as i32));
                }
            }
            return Some(msg);
        }
        "apimachinery.pkg.runtime.RawExtension"
        | "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON" => {
            raw_field(&mut msg, "raw", v);
            return Some(msg);
        }
        "apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            raw_field(&mut msg, "Raw", v);
            return Some(msg);
        }
        _ => {}
    }
    let obj = v.as_object()?;
    for field in desc.fields() {
        if inlined(desc.full_name(), field.name()) {
            if let prost_reflect::Kind::Message(m) = field.kind()
                && let Some(inner) = json_to_message(&m, v)
            {
                msg.set_field(&field, Pb::Message(inner));
            }
            continue;
        }
        let Some(value) = obj.get(field.name()) else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        if let Some(pb) = json_to_value(&field.kind(), field.is_list(), field.is_map(), value) {
            msg.set_field(&field, pb);
        }
    }
    Some(msg)
}

fn json_to_value(kind: &prost_reflect::Kind, list: bool, map: bool, v: &Value) -> Option<Pb> {
    use prost_reflect::Kind as K;
    if map {
        let K::Message(entry) = kind else {
            return None;
        };
        let value_field = entry.map_entry_value_field();
        let mut out = std::collections::HashMap::new();
        for (k, item) in v.as_object()? {
            if let Some(pb) = json_to_value(&value_field.kind(), false, false, item) {
                out.insert(MapKey::String(k.clone()), pb);
            }
        }
        return Some(Pb::Map(out));
    }
    if list {
        return Some(Pb::List(
            v.as_array()?
                .iter()
                .filter_map(|item| json_to_value(kind, false, false, item))
                .collect(),
        ));
    }
    Some(match kind {
        K::Bool => Pb::Bool(v.as_bool()?),
        K::Int32 | K::Sint32 | K::Sfixed32 => Pb::I32(v.as_i64()? as i32),
        K::Int64 | K::Sint64 | K::Sfixed64 => Pb::I64(v.as_i64()?),
        K::Uint32 | K::Fixed32 => Pb::U32(v.as_u64()? as u32),
        K::Uint64 | K::Fixed64 => Pb::U64(v.as_u64()?),
        K::Float => Pb::F32(v.as_f64()? as f32),
        K::Double => Pb::F64(v.as_f64()?),
        K::String => Pb::String(v.as_str()?.to_owned()),
        K::Bytes => Pb::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str()?)
                .ok()?
                .into(),
        ),
        K::Enum(_) => Pb::EnumNumber(v.as_i64()? as i32),
        K::Message(m) => Pb::Message(json_to_message(m, v)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_round_trips_through_protobuf() {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"},
                "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx",
                        "resources": {"limits": {"cpu": "500m"}},
                        "livenessProbe": {"httpGet": {"path": "/", "port": "http"}},
                        "ports": [{"containerPort": 80}]}],
                        "volumes": [{"name": "v", "emptyDir": {}}]}}},
        });
        let bytes = encode(&d).unwrap();
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(decode(&bytes).unwrap(), d);
    }

    #[test]
    fn secrets_keep_bytes_as_base64_and_garbage_is_refused() {
        let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"k": "aGVsbG8="}, "type": "Opaque"});
        assert_eq!(decode(&encode(&s).unwrap()).unwrap(), s);
        assert!(matches!(decode(b"{}"), Err(Error::BadRequest(_))));
        assert!(matches!(
            decode(b"k8s\0\xff\xff"),
            Err(Error::BadRequest(_))
        ));
    }
}
