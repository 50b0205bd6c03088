//! InterPodAffinity: required pod affinity and anti-affinity (the pod's own terms and the
//! anti-affinity terms of pods already placed) as a filter, preferred terms (both sides, and
//! placed pods' required affinity with the hard-affinity weight) as a score.
//!
//! Counts come from the cache: trackers count pods matching the incoming pod's terms per
//! domain, and the cache groups placed pods' terms with their carriers per domain, so a cycle
//! costs O(terms), not O(pods).

use serde::Deserialize;

use crate::cache::{Cache, NO_DOMAIN, NodeId, TermKind};
use crate::error::{Error, Result};
use crate::framework::{
    CycleContext, CycleState, FilterPlugin, MAX_NODE_SCORE, NodeFilter, NodeScorer, Plugin,
    PreFilterPlugin, PreFilterResult, Reject, Scope, ScorePlugin, Status,
};
use crate::pod::{AffinityTerm, HOSTNAME, PodInfo};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Args {
    #[serde(default = "one")]
    hard_pod_affinity_weight: i32,
    #[serde(default)]
    ignore_preferred_terms_of_existing_pods: bool,
}

fn one() -> i32 {
    1
}

/// See the module documentation.
#[derive(Debug)]
pub struct InterPodAffinity {
    hard_weight: i32,
    ignore_existing_preferred: bool,
}

impl Default for InterPodAffinity {
    fn default() -> Self {
        InterPodAffinity {
            hard_weight: 1,
            ignore_existing_preferred: false,
        }
    }
}

impl InterPodAffinity {
    /// Reads `InterPodAffinityArgs`.
    pub fn from_args(args: Option<&serde_json::Value>) -> Result<Self> {
        let Some(v) = args else {
            return Ok(Self::default());
        };
        let a: Args = serde_json::from_value(v.clone())
            .map_err(|e| Error::Config(format!("InterPodAffinity args: {e}")))?;
        if !(0..=100).contains(&a.hard_pod_affinity_weight) {
            return Err(Error::Config("hardPodAffinityWeight must be 0-100".into()));
        }
        Ok(InterPodAffinity {
            hard_weight: a.hard_pod_affinity_weight,
            ignore_existing_preferred: a.ignore_preferred_terms_of_existing_pods,
        })
    }
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
}

fn all_terms(pod: &PodInfo) -> impl Iterator<Item = &AffinityTerm> {
    pod.affinity
        .iter()
        .chain(&pod.anti_affinity)
        .chain(pod.preferred_affinity.iter().map(|(_, t)| t))
        .chain(pod.preferred_anti_affinity.iter().map(|(_, t)| t))
}

/// A term resolved to its cache counter.
#[derive(Clone, Copy)]
struct Counted {
    key: u16,
    tracker: u32,
}

fn resolve(cache: &Cache, t: &AffinityTerm) -> Option<Counted> {
    let key = cache.key_id(&t.topology_key)?;
    Some(Counted {
        key,
        tracker: cache.tracker(&t.namespaces, &t.selector)?,
    })
}

struct FilterState {
    affinity: Vec<Counted>,
    anti: Vec<Counted>,
    /// Placed pods' required anti-affinity terms that match the incoming pod.
    existing_anti: Vec<usize>,
    /// Some pod matches one of the incoming pod's affinity terms somewhere.
    affinity_somewhere: bool,
    /// The pod matches all its own affinity terms (it may start its group).
    self_match: bool,
    exceptions: Option<Vec<NodeId>>,
}

fn domain_count(cache: &Cache, c: Counted, d: u32) -> u32 {
    cache
        .tracker_domains(c.tracker, c.key)
        .get(d as usize)
        .copied()
        .unwrap_or(0)
}

impl PreFilterPlugin for InterPodAffinity {
    fn register(&self, pod: &PodInfo, cache: &mut Cache) {
        for t in all_terms(pod) {
            let k = cache.ensure_key(&t.topology_key);
            cache.ensure_tracker(&t.namespaces, &t.selector, k);
        }
    }

    fn pre_filter(
        &self,
        cx: CycleContext<'_>,
        state: &mut CycleState,
    ) -> Result<PreFilterResult, Status> {
        let cache = cx.cache;
        let pod = cx.pod;
        let unregistered = || Status::error("InterPodAffinity", "term not registered");
        let affinity = pod
            .affinity
            .iter()
            .map(|t| resolve(cache, t).ok_or_else(unregistered))
            .collect::<Result<Vec<_>, _>>()?;
        let anti = pod
            .anti_affinity
            .iter()
            .map(|t| resolve(cache, t).ok_or_else(unregistered))
            .collect::<Result<Vec<_>, _>>()?;
        let existing_anti: Vec<usize> = cache
            .terms()
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.kind == TermKind::RequiredAnti
                    && e.carriers > 0
                    && e.term.matches(&pod.namespace, &pod.labels)
            })
            .map(|(i, _)| i)
            .collect();
        if affinity.is_empty() && anti.is_empty() && existing_anti.is_empty() {
            return Ok(PreFilterResult::default());
        }
        let affinity_somewhere = affinity.iter().any(|c| {
            cache
                .tracker_domains(c.tracker, c.key)
                .iter()
                .any(|n| *n > 0)
        });
        let self_match = pod
            .affinity
            .iter()
            .all(|t| t.matches(&pod.namespace, &pod.labels));
        // Hostname-keyed terms single out the nodes in non-empty domains.
        let mut exceptions: Option<Vec<NodeId>> = None;
        let host = cache.key_id(HOSTNAME);
        let mut add_domains = |key: u16, counts: &[u32]| {
            let list = exceptions.get_or_insert_with(Vec::new);
            for (d, c) in counts.iter().enumerate() {
                if *c > 0 {
                    list.extend_from_slice(cache.domain_nodes(key, d as u32));
                }
            }
        };
        for c in affinity.iter().chain(&anti) {
            if Some(c.key) == host {
                add_domains(c.key, cache.tracker_domains(c.tracker, c.key));
            }
        }
        for &i in &existing_anti {
            let e = &cache.terms()[i];
            if Some(e.key) == host {
                add_domains(e.key, &e.domain_counts);
            }
        }
        state.insert(FilterState {
            affinity,
            anti,
            existing_anti,
            affinity_somewhere,
            self_match,
            exceptions,
        });
        Ok(PreFilterResult::default())
    }
}

struct AffinityCheck<'a> {
    cx: CycleContext<'a>,
    s: &'a FilterState,
}

impl NodeFilter for AffinityCheck<'_> {
    fn scope(&self) -> Scope {
        match &self.s.exceptions {
            None => Scope::Class,
            Some(l) => Scope::ClassExcept(l.clone()),
        }
    }

    fn filter(&self, node: NodeId) -> Result<(), Reject> {
        let cache = self.cx.cache;
        if !self.s.affinity.is_empty() {
            let mut exist = true;
            for &c in &self.s.affinity {
                let d = cache.domain(c.key, node);
                if d == NO_DOMAIN {
                    return Err(Reject::unresolvable(
                        "node(s) didn't match pod affinity rules",
                    ));
                }
                if domain_count(cache, c, d) == 0 {
                    exist = false;
                }
            }
            if !exist && (self.s.affinity_somewhere || !self.s.self_match) {
                return Err(Reject::unschedulable(
                    "node(s) didn't match pod affinity rules",
                ));
            }
        }
        for &c in &self.s.anti {
            let d = cache.domain(c.key, node);
            if d != NO_DOMAIN && domain_count(cache, c, d) > 0 {
                return Err(Reject::unschedulable(
                    "node(s) didn't match pod anti-affinity rules",
                ));
            }
        }
        for &i in &self.s.existing_anti {
            let e = &cache.terms()[i];
            let d = cache.domain(e.key, node);
            if d != NO_DOMAIN && e.domain_counts.get(d as usize).is_some_and(|c| *c > 0) {
                return Err(Reject::unschedulable(
                    "node(s) didn't satisfy existing pods anti-affinity rules",
                ));
            }
        }
        Ok(())
    }
}

impl FilterPlugin for InterPodAffinity {
    fn prepare<'a>(
        &'a self,
        cx: CycleContext<'a>,
        state: &'a CycleState,
    ) -> Option<Box<dyn NodeFilter + 'a>> {
        let s = state.get::<FilterState>()?;
        Some(Box::new(AffinityCheck { cx, s }))
    }
}

/// Score per domain, per topology key.
struct Topo(Vec<(u16, Vec<i64>)>);

impl Topo {
    fn add(&mut self, key: u16, counts: &[u32], weight: i64) {
        if weight == 0 {
            return;
        }
        let idx = match self.0.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.0.push((key, Vec::new()));
                self.0.len() - 1
            }
        };
        let v = &mut self.0[idx].1;
        if v.len() < counts.len() {
            v.resize(counts.len(), 0);
        }
        for (d, c) in counts.iter().enumerate() {
            v[d] += i64::from(*c) * weight;
        }
    }
}

impl InterPodAffinity {
    fn topology(&self, cx: &CycleContext<'_>) -> Topo {
        let (cache, pod) = (cx.cache, cx.pod);
        let mut topo = Topo(Vec::new());
        for (w, t) in &pod.preferred_affinity {
            if let Some(c) = resolve(cache, t) {
                topo.add(
                    c.key,
                    cache.tracker_domains(c.tracker, c.key),
                    i64::from(*w),
                );
            }
        }
        for (w, t) in &pod.preferred_anti_affinity {
            if let Some(c) = resolve(cache, t) {
                topo.add(
                    c.key,
                    cache.tracker_domains(c.tracker, c.key),
                    -i64::from(*w),
                );
            }
        }
        for e in cache.terms() {
            if e.carriers == 0 {
                continue;
            }
            let w = match e.kind {
                TermKind::RequiredAffinity => i64::from(self.hard_weight),
                TermKind::PreferredAffinity if !self.ignore_existing_preferred => {
                    i64::from(e.weight)
                }
                TermKind::PreferredAnti if !self.ignore_existing_preferred => -i64::from(e.weight),
                _ => continue,
            };
            if e.term.matches(&pod.namespace, &pod.labels) {
                topo.add(e.key, &e.domain_counts, w);
            }
        }
        topo
    }
}

struct AffinityScorer<'a> {
    cx: CycleContext<'a>,
    topo: Topo,
}

impl NodeScorer for AffinityScorer<'_> {
    fn score(&self, node: NodeId) -> i64 {
        self.topo
            .0
            .iter()
            .map(|(k, v)| {
                let d = self.cx.cache.domain(*k, node);
                if d == NO_DOMAIN {
                    0
                } else {
                    v.get(d as usize).copied().unwrap_or(0)
                }
            })
            .sum()
    }
    fn normalize(&self, scores: &mut [i64]) {
        let min = scores.iter().copied().min().unwrap_or(0);
        let max = scores.iter().copied().max().unwrap_or(0);
        let diff = max - min;
        for s in scores {
            *s = if diff > 0 {
                (MAX_NODE_SCORE as f64 * ((*s - min) as f64 / diff as f64)) as i64
            } else {
                0
            };
        }
    }
}

impl ScorePlugin for InterPodAffinity {
    fn scope(&self, cx: CycleContext<'_>, _: &CycleState) -> Option<Scope> {
        let topo = self.topology(&cx);
        if topo.0.iter().all(|(_, v)| v.iter().all(|x| *x == 0)) {
            return None;
        }
        let host = cx.cache.key_id(HOSTNAME);
        let mut except = Vec::new();
        let mut any_host = false;
        for (k, v) in &topo.0 {
            if Some(*k) == host {
                any_host = true;
                for (d, x) in v.iter().enumerate() {
                    if *x != 0 {
                        except.extend_from_slice(cx.cache.domain_nodes(*k, d as u32));
                    }
                }
            }
        }
        Some(if any_host {
            Scope::ClassExcept(except)
        } else {
            Scope::Class
        })
    }
    fn prepare<'a>(&'a self, cx: CycleContext<'a>, _: &'a CycleState) -> Box<dyn NodeScorer + 'a> {
        let topo = self.topology(&cx);
        Box::new(AffinityScorer { cx, topo })
    }
}
