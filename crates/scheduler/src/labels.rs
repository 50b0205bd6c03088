//! Label selectors compiled once from their API form: `LabelSelector` (pods, spread constraints,
//! affinity terms) and `NodeSelector` terms (node affinity), with Kubernetes' matching rules.
//! A compiled [`Selector`] is hashable, so identical selectors share one counter in the cache.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::error::{Error, Result};

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// A selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// The label's value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label's value, read as an integer, is greater (node selectors only).
    Gt,
    /// The label's value, read as an integer, is smaller (node selectors only).
    Lt,
}

impl Op {
    fn parse(s: &str, node: bool) -> Result<Op> {
        Ok(match s {
            "In" => Op::In,
            "NotIn" => Op::NotIn,
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            "Gt" if node => Op::Gt,
            "Lt" if node => Op::Lt,
            other => return Err(Error::Selector(format!("unknown operator {other:?}"))),
        })
    }
}

/// One `key op values` requirement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub op: Op,
    /// The values, sorted.
    pub values: Vec<String>,
}

impl Requirement {
    fn new(key: &str, op: Op, values: Option<&Vec<String>>) -> Result<Self> {
        let mut values = values.cloned().unwrap_or_default();
        values.sort();
        values.dedup();
        match op {
            Op::In | Op::NotIn if values.is_empty() => {
                return Err(Error::Selector(format!("{key}: {op:?} needs values")));
            }
            Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                return Err(Error::Selector(format!("{key}: {op:?} takes no values")));
            }
            Op::Gt | Op::Lt if values.len() != 1 || values[0].parse::<i64>().is_err() => {
                return Err(Error::Selector(format!("{key}: {op:?} needs one integer")));
            }
            _ => {}
        }
        Ok(Requirement {
            key: key.to_owned(),
            op,
            values,
        })
    }

    fn matches_value(&self, value: Option<&str>) -> bool {
        match (self.op, value) {
            (Op::In, Some(v)) => self.values.iter().any(|x| x == v),
            (Op::In, None) => false,
            (Op::NotIn, Some(v)) => !self.values.iter().any(|x| x == v),
            (Op::NotIn, None) => true,
            (Op::Exists, v) => v.is_some(),
            (Op::DoesNotExist, v) => v.is_none(),
            (Op::Gt | Op::Lt, None) => false,
            (op, Some(v)) => {
                let (Ok(have), Ok(want)) = (v.parse::<i64>(), self.values[0].parse::<i64>()) else {
                    return false;
                };
                if op == Op::Gt {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }

    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_value(labels.get(&self.key).map(String::as_str))
    }
}

/// A compiled label selector: every requirement must hold. `Selector::nothing()` (what a missing
/// selector means in affinity terms and spread constraints) matches no object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Selector {
    reqs: Vec<Requirement>,
    nothing: bool,
}

impl Selector {
    /// Matches every object.
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Matches no object.
    pub fn nothing() -> Self {
        Selector {
            reqs: Vec::new(),
            nothing: true,
        }
    }

    /// Compiles a `LabelSelector`; `None` matches nothing, as in Kubernetes.
    pub fn from_label_selector(sel: Option<&LabelSelector>) -> Result<Self> {
        let Some(sel) = sel else {
            return Ok(Selector::nothing());
        };
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement {
                key: k.clone(),
                op: Op::In,
                values: vec![v.clone()],
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            reqs.push(Requirement::new(
                &e.key,
                Op::parse(&e.operator, false)?,
                e.values.as_ref(),
            )?);
        }
        reqs.sort();
        reqs.dedup();
        Ok(Selector {
            reqs,
            nothing: false,
        })
    }

    /// A selector requiring exactly these labels (`matchLabels`).
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let mut reqs: Vec<Requirement> = labels
            .into_iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Op::In,
                values: vec![v.clone()],
            })
            .collect();
        reqs.sort();
        Selector {
            reqs,
            nothing: false,
        }
    }

    /// Adds `key In [value]` (how `matchLabelKeys` narrows a selector to the pod's own value).
    pub fn and_label(&mut self, key: &str, value: &str) {
        if self.nothing {
            return;
        }
        self.reqs.push(Requirement {
            key: key.to_owned(),
            op: Op::In,
            values: vec![value.to_owned()],
        });
        self.reqs.sort();
        self.reqs.dedup();
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        !self.nothing && self.reqs.iter().all(|r| r.matches(labels))
    }

    /// A `key = value` every matching object must carry, if the selector has one (used to index
    /// selectors by label).
    pub fn required_pair(&self) -> Option<(&str, &str)> {
        if self.nothing {
            return None;
        }
        self.reqs
            .iter()
            .find(|r| r.op == Op::In && r.values.len() == 1)
            .map(|r| (r.key.as_str(), r.values[0].as_str()))
    }

    /// Whether a requirement reads the label `key`.
    pub fn reads(&self, key: &str) -> bool {
        self.reqs.iter().any(|r| r.key == key)
    }

    /// Whether this selector matches no object at all.
    pub fn is_nothing(&self) -> bool {
        self.nothing
    }
}

/// A node selector term: label expressions and `metadata.name` field expressions, all ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeTerm {
    exprs: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl NodeTerm {
    /// Compiles a `NodeSelectorTerm`.
    pub fn compile(t: &NodeSelectorTerm) -> Result<Self> {
        let reqs = |list: Option<&Vec<NodeSelectorRequirement>>, fields: bool| {
            list.into_iter()
                .flatten()
                .map(|r| {
                    if fields && r.key != "metadata.name" {
                        return Err(Error::Selector(format!(
                            "unsupported field selector key {:?}",
                            r.key
                        )));
                    }
                    Requirement::new(&r.key, Op::parse(&r.operator, true)?, r.values.as_ref())
                })
                .collect::<Result<Vec<_>>>()
        };
        Ok(NodeTerm {
            exprs: reqs(t.match_expressions.as_ref(), false)?,
            fields: reqs(t.match_fields.as_ref(), true)?,
        })
    }

    /// Whether a node with these labels and name satisfies the term. An empty term matches
    /// nothing, as in Kubernetes.
    pub fn matches(&self, labels: &Labels, name: &str) -> bool {
        (!self.exprs.is_empty() || !self.fields.is_empty())
            && self.exprs.iter().all(|r| r.matches(labels))
            && self.fields.iter().all(|r| r.matches_value(Some(name)))
    }

    /// Whether the term reads the node's name or the given label key.
    pub fn reads_name_or(&self, key: &str) -> bool {
        !self.fields.is_empty() || self.exprs.iter().any(|r| r.key == key)
    }

    /// The node names this term is limited to (`metadata.name In [...]`), if it is.
    pub fn names(&self) -> Option<&[String]> {
        self.fields
            .iter()
            .find(|r| r.op == Op::In)
            .map(|r| r.values.as_slice())
    }
}

/// Required node affinity: the node must match at least one term.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeTerms(pub Vec<NodeTerm>);

impl NodeTerms {
    /// Compiles a `NodeSelector`.
    pub fn compile(sel: &NodeSelector) -> Result<Self> {
        Ok(NodeTerms(
            sel.node_selector_terms
                .iter()
                .map(NodeTerm::compile)
                .collect::<Result<_>>()?,
        ))
    }

    /// Whether any term matches.
    pub fn matches(&self, labels: &Labels, name: &str) -> bool {
        self.0.iter().any(|t| t.matches(labels, name))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_semantics() {
        let nil = Selector::from_label_selector(None).unwrap();
        assert!(
            !nil.matches(&labels(&[])),
            "a missing selector matches nothing"
        );
        let empty = Selector::from_label_selector(Some(&LabelSelector::default())).unwrap();
        assert!(
            empty.matches(&labels(&[("a", "b")])),
            "an empty selector matches all"
        );
        let sel = Selector::from_label_selector(Some(&LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        }))
        .unwrap();
        assert!(sel.matches(&labels(&[("app", "web")])));
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!sel.matches(&labels(&[("app", "api")])));
    }

    #[test]
    fn node_terms_and_gt() {
        let term = NodeTerm::compile(&NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: "cores".into(),
                operator: "Gt".into(),
                values: Some(vec!["4".into()]),
            }]),
            match_fields: None,
        })
        .unwrap();
        assert!(term.matches(&labels(&[("cores", "8")]), "n"));
        assert!(!term.matches(&labels(&[("cores", "4")]), "n"));
        assert!(!term.matches(&labels(&[]), "n"));
        let empty = NodeTerm::compile(&NodeSelectorTerm::default()).unwrap();
        assert!(
            !empty.matches(&labels(&[]), "n"),
            "an empty term matches nothing"
        );
        let bad = NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: "k".into(),
                operator: "Near".into(),
                values: None,
            }]),
            match_fields: None,
        };
        assert!(NodeTerm::compile(&bad).is_err());
    }
}
