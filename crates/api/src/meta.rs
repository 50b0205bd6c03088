//! Metadata every stored object carries, in the shape of Kubernetes' `ObjectMeta`, and the
//! [`Object`] trait that ties a type to its kind and its place in the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Name, namespace, labels and bookkeeping of a stored object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    /// Unique within its kind and namespace.
    pub name: String,
    /// Empty for cluster-scoped kinds (Node).
    pub namespace: String,
    /// Set by the store on create; unique over the object's lifetime.
    pub uid: String,
    /// Selectable key/value pairs.
    pub labels: BTreeMap<String, String>,
    /// Free-form key/value pairs.
    pub annotations: BTreeMap<String, String>,
    /// The store revision of the last write; the precondition of an update.
    pub resource_version: u64,
    /// Bumped by the API on every spec change; controllers compare it to `observedGeneration`.
    pub generation: u64,
    /// Owners, for garbage collection.
    pub owner_references: Vec<OwnerReference>,
    /// Seconds since the epoch at creation.
    pub creation_timestamp: u64,
    /// Set when deletion was requested and finalizers still run.
    pub deletion_timestamp: Option<u64>,
}

/// Points at the object that owns this one (a ReplicaSet owns its Pods).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    /// The owner's kind.
    pub kind: String,
    /// The owner's name.
    pub name: String,
    /// The owner's uid.
    pub uid: String,
    /// True for the managing controller.
    #[serde(default)]
    pub controller: bool,
}

/// A kind of object the store holds.
pub trait Object: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The kind, e.g. `Pod`.
    const KIND: &'static str;
    /// True for kinds that live in a namespace.
    const NAMESPACED: bool = true;

    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;
    /// The object's metadata, mutably.
    fn meta_mut(&mut self) -> &mut ObjectMeta;
}

/// The store key prefix of every object of kind `T` (in `namespace`, if given).
pub fn key_prefix<T: Object>(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if T::NAMESPACED => format!("/registry/{}/{ns}/", T::KIND),
        _ => format!("/registry/{}/", T::KIND),
    }
}

/// The store key of the object of kind `T` called `name` in `namespace`.
pub fn key<T: Object>(namespace: &str, name: &str) -> String {
    if T::NAMESPACED {
        format!("/registry/{}/{namespace}/{name}", T::KIND)
    } else {
        format!("/registry/{}/{name}", T::KIND)
    }
}

/// True when `name` is a valid object name (an RFC 1123 DNS subdomain, at most 253 characters).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A label selector: every pair in `match_labels` must be present with the same value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelSelector {
    /// Required labels.
    pub match_labels: BTreeMap<String, String>,
}

impl LabelSelector {
    /// True when `labels` satisfies this selector (an empty selector matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("web-1"));
        assert!(is_valid_name("a.b.c"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("Web"));
        assert!(!is_valid_name("-a"));
        assert!(!is_valid_name("a..b"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(&"a".repeat(254)));
    }

    #[test]
    fn selector() {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_owned(), "web".to_owned());
        let mut sel = LabelSelector::default();
        assert!(sel.matches(&labels));
        sel.match_labels.insert("app".into(), "web".into());
        assert!(sel.matches(&labels));
        sel.match_labels.insert("tier".into(), "front".into());
        assert!(!sel.matches(&labels));
    }
}
