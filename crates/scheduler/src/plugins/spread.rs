//! PodTopologySpread: `DoNotSchedule` constraints as a filter (maxSkew against the global
//! minimum over eligible domains, minDomains), `ScheduleAnyway` constraints as a score, and the
//! cluster-default constraints for pods that declare none.
//!
//! Pod counts per domain come from the cache's trackers, kept up to date by pod events, so a
//! cycle reads counts instead of listing pods.

use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::cache::{NO_DOMAIN, NodeId};
use crate::error::{Error, Result};
use crate::framework::{
    CycleContext, CycleState, Feasible, FilterPlugin, MAX_NODE_SCORE, NodeFilter, NodeScorer,
    Plugin, PreFilterPlugin, PreFilterResult, PreScorePlugin, Reject, Scope, ScorePlugin, Status,
};
use crate::labels::Selector;
use crate::plugins::basic::untolerated;
use crate::pod::{HOSTNAME, Namespaces, PodInfo, SpreadConstraint, ZONE};

/// A default constraint from the plugin's arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultConstraint {
    /// maxSkew.
    pub max_skew: i32,
    /// The topology key.
    pub topology_key: String,
    /// `DoNotSchedule` or `ScheduleAnyway`.
    pub when_unsatisfiable: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Args {
    #[serde(default)]
    default_constraints: Vec<DefaultConstraint>,
    #[serde(default)]
    defaulting_type: Option<String>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct PodTopologySpread {
    defaults: Vec<DefaultConstraint>,
}

impl Default for PodTopologySpread {
    fn default() -> Self {
        PodTopologySpread {
            defaults: system_defaults(),
        }
    }
}

fn system_defaults() -> Vec<DefaultConstraint> {
    vec![
        DefaultConstraint {
            max_skew: 3,
            topology_key: HOSTNAME.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
        },
        DefaultConstraint {
            max_skew: 5,
            topology_key: ZONE.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
        },
    ]
}

impl PodTopologySpread {
    /// Reads `PodTopologySpreadArgs` (`defaultingType: System` or `List` with
    /// `defaultConstraints`).
    pub fn from_args(args: Option<&serde_json::Value>) -> Result<Self> {
        let a: Args = match args {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::Config(format!("PodTopologySpread args: {e}")))?,
            None => Args::default(),
        };
        let defaults = match a.defaulting_type.as_deref().unwrap_or("System") {
            "System" => {
                if !a.default_constraints.is_empty() {
                    return Err(Error::Config(
                        "defaultConstraints need defaultingType: List".into(),
                    ));
                }
                system_defaults()
            }
            "List" => a.default_constraints,
            other => return Err(Error::Config(format!("unknown defaultingType {other:?}"))),
        };
        for d in &defaults {
            if d.max_skew < 1
                || !matches!(
                    d.when_unsatisfiable.as_str(),
                    "DoNotSchedule" | "ScheduleAnyway"
                )
            {
                return Err(Error::Config(format!("bad default constraint {d:?}")));
            }
        }
        Ok(PodTopologySpread { defaults })
    }

    /// The constraints that apply to `pod`: its own, or the defaults for a controlled pod
    /// (selecting its siblings by the pod's labels).
    pub fn constraints(&self, pod: &PodInfo) -> Vec<SpreadConstraint> {
        if !pod.spread.is_empty() {
            return pod.spread.clone();
        }
        if !pod.controlled || pod.labels.is_empty() {
            return Vec::new();
        }
        let selector = Selector::from_labels(pod.labels.iter());
        self.defaults
            .iter()
            .map(|d| SpreadConstraint {
                max_skew: d.max_skew,
                topology_key: d.topology_key.clone(),
                hard: d.when_unsatisfiable == "DoNotSchedule",
                selector: selector.clone(),
                min_domains: None,
                honor_affinity: true,
                honor_taints: false,
            })
            .collect()
    }
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
}

struct Resolved {
    c: SpreadConstraint,
    key: u16,
    tracker: u32,
    self_match: bool,
}

struct HardState {
    /// Per hard constraint: eligible matching pods per domain, and whether the domain is
    /// eligible.
    counts: Vec<Vec<u32>>,
    mins: Vec<i64>,
    exceptions: Option<Vec<NodeId>>,
}

struct SpreadState {
    hard: Vec<Resolved>,
    soft: Vec<Resolved>,
    hard_state: Option<HardState>,
}

fn eligible(pod: &PodInfo, c: &SpreadConstraint, cx: &CycleContext<'_>, node: NodeId) -> bool {
    let n = cx.cache.node(node);
    (!c.honor_affinity || pod.matches_node_selection(&n.labels, &n.name))
        && (!c.honor_taints || untolerated(&n.taints, &pod.tolerations).is_none())
}

impl PreFilterPlugin for PodTopologySpread {
    fn register(&self, pod: &PodInfo, cache: &mut crate::cache::Cache) {
        for c in self.constraints(pod) {
            let k = cache.ensure_key(&c.topology_key);
            cache.ensure_tracker(
                &Namespaces::List(vec![pod.namespace.clone()]),
                &c.selector,
                k,
            );
        }
    }

    fn pre_filter(
        &self,
        cx: CycleContext<'_>,
        state: &mut CycleState,
    ) -> Result<PreFilterResult, Status> {
        let constraints = self.constraints(cx.pod);
        if constraints.is_empty() {
            return Ok(PreFilterResult::default());
        }
        let ns = Namespaces::List(vec![cx.pod.namespace.clone()]);
        let mut hard = Vec::new();
        let mut soft = Vec::new();
        for c in constraints {
            let (Some(key), Some(tracker)) = (
                cx.cache.key_id(&c.topology_key),
                cx.cache.tracker(&ns, &c.selector),
            ) else {
                return Err(Status::error(
                    "PodTopologySpread",
                    "constraint not registered",
                ));
            };
            let r = Resolved {
                self_match: c.selector.matches(&cx.pod.labels),
                c,
                key,
                tracker,
            };
            if r.c.hard { hard.push(r) } else { soft.push(r) }
        }
        let hard_state = (!hard.is_empty()).then(|| {
            let mut counts: Vec<Vec<u32>> = hard
                .iter()
                .map(|r| vec![u32::MAX; cx.cache.domain_count(r.key)])
                .collect();
            let mut class_ok: FxHashMap<u32, bool> = FxHashMap::default();
            let needs_eligibility = hard.iter().any(|r| {
                (r.c.honor_affinity
                    && (cx.pod.node_selector.is_some() || cx.pod.required_node_affinity.is_some()))
                    || r.c.honor_taints
            });
            if !needs_eligibility && hard.len() == 1 {
                // Every node with the label counts: the tracker's per-domain counts are the
                // answer, for the domains that still have a node.
                let r = &hard[0];
                let dc = cx.cache.tracker_domains(r.tracker, r.key);
                for (d, slot) in counts[0].iter_mut().enumerate() {
                    if !cx.cache.domain_nodes(r.key, d as u32).is_empty() {
                        *slot = dc.get(d).copied().unwrap_or(0);
                    }
                }
            }
            for &n in cx.cache.nodes() {
                if !needs_eligibility && hard.len() == 1 {
                    break;
                }
                if hard.iter().any(|r| cx.cache.domain(r.key, n) == NO_DOMAIN) {
                    continue;
                }
                if needs_eligibility {
                    let ok = *class_ok
                        .entry(cx.cache.class_of(n))
                        .or_insert_with(|| hard.iter().all(|r| eligible(cx.pod, &r.c, &cx, n)));
                    if !ok {
                        continue;
                    }
                }
                for (i, r) in hard.iter().enumerate() {
                    let d = cx.cache.domain(r.key, n) as usize;
                    let add = cx.cache.tracker_nodes(r.tracker)[n as usize];
                    let slot = &mut counts[i][d];
                    *slot = if *slot == u32::MAX { add } else { *slot + add };
                }
            }
            let mut mins = Vec::new();
            let mut exceptions: Option<Vec<NodeId>> = None;
            for (i, r) in hard.iter().enumerate() {
                let present: Vec<u32> = counts[i]
                    .iter()
                    .copied()
                    .filter(|c| *c != u32::MAX)
                    .collect();
                let min = present.iter().copied().min().unwrap_or(0);
                let enough =
                    r.c.min_domains
                        .is_none_or(|m| present.len() >= m.max(1) as usize);
                mins.push(if enough { i64::from(min) } else { 0 });
                if r.c.topology_key == HOSTNAME {
                    let list = exceptions.get_or_insert_with(Vec::new);
                    let per_node = cx.cache.tracker_nodes(r.tracker);
                    for &n in cx.cache.nodes() {
                        if per_node[n as usize] > 0 {
                            list.push(n);
                        }
                    }
                }
            }
            HardState {
                counts,
                mins,
                exceptions,
            }
        });
        state.insert(SpreadState {
            hard,
            soft,
            hard_state,
        });
        Ok(PreFilterResult::default())
    }
}

struct SpreadCheck<'a> {
    cx: CycleContext<'a>,
    s: &'a SpreadState,
    h: &'a HardState,
}

impl NodeFilter for SpreadCheck<'_> {
    fn scope(&self) -> Scope {
        match &self.h.exceptions {
            None => Scope::Class,
            Some(list) => Scope::ClassExcept(list.clone()),
        }
    }
    fn filter(&self, node: NodeId) -> Result<(), Reject> {
        for (i, r) in self.s.hard.iter().enumerate() {
            let d = self.cx.cache.domain(r.key, node);
            if d == NO_DOMAIN {
                return Err(Reject::unresolvable(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                ));
            }
            let count = match self.h.counts[i].get(d as usize) {
                Some(&c) if c != u32::MAX => i64::from(c),
                _ => 0,
            };
            let skew = count + i64::from(r.self_match) - self.h.mins[i];
            if skew > i64::from(r.c.max_skew) {
                return Err(Reject::unschedulable(
                    "node(s) didn't match pod topology spread constraints",
                ));
            }
        }
        Ok(())
    }
}

impl FilterPlugin for PodTopologySpread {
    fn prepare<'a>(
        &'a self,
        cx: CycleContext<'a>,
        state: &'a CycleState,
    ) -> Option<Box<dyn NodeFilter + 'a>> {
        let s = state.get::<SpreadState>()?;
        let h = s.hard_state.as_ref()?;
        Some(Box::new(SpreadCheck { cx, s, h }))
    }
}

struct ScoreState {
    /// Per soft constraint: matching pods per domain (non-hostname keys), `None` for hostname.
    pair_counts: Vec<Option<Vec<i64>>>,
    weights: Vec<f64>,
}

impl PreScorePlugin for PodTopologySpread {
    fn pre_score(
        &self,
        cx: CycleContext<'_>,
        state: &mut CycleState,
        feasible: &[NodeId],
    ) -> Result<(), Status> {
        let Some(s) = state.get::<SpreadState>() else {
            return Ok(());
        };
        if s.soft.is_empty() {
            return Ok(());
        }
        let mut pair_counts: Vec<Option<Vec<i64>>> = Vec::new();
        let mut weights = Vec::new();
        let ignored = |n: NodeId| {
            s.soft
                .iter()
                .any(|r| cx.cache.domain(r.key, n) == NO_DOMAIN)
        };
        let sizes = state
            .get::<Feasible>()
            .map(|f| f.sizes.as_slice())
            .unwrap_or_default();
        let considered: Vec<NodeId> = feasible.iter().copied().filter(|n| !ignored(*n)).collect();
        let considered_nodes: usize = feasible
            .iter()
            .enumerate()
            .filter(|(_, n)| !ignored(**n))
            .map(|(i, _)| sizes.get(i).map_or(1, |s| *s as usize))
            .sum();
        for r in &s.soft {
            if r.c.topology_key == HOSTNAME {
                pair_counts.push(None);
                weights.push(((considered_nodes + 2) as f64).ln());
                continue;
            }
            // Domains of the feasible nodes (-1: not a domain of a feasible node).
            let mut counts = vec![-1i64; cx.cache.domain_count(r.key)];
            for &n in &considered {
                counts[cx.cache.domain(r.key, n) as usize] = 0;
            }
            let size = counts.iter().filter(|c| **c >= 0).count();
            weights.push(((size + 2) as f64).ln());
            pair_counts.push(Some(counts));
        }
        let mut class_ok: FxHashMap<u32, bool> = FxHashMap::default();
        for &n in cx.cache.nodes() {
            if ignored(n) {
                continue;
            }
            let ok = *class_ok
                .entry(cx.cache.class_of(n))
                .or_insert_with(|| s.soft.iter().all(|r| eligible(cx.pod, &r.c, &cx, n)));
            if !ok {
                continue;
            }
            for (i, r) in s.soft.iter().enumerate() {
                if let Some(counts) = &mut pair_counts[i] {
                    let d = cx.cache.domain(r.key, n) as usize;
                    if counts[d] >= 0 {
                        counts[d] += i64::from(cx.cache.tracker_nodes(r.tracker)[n as usize]);
                    }
                }
            }
        }
        state.insert(ScoreState {
            pair_counts,
            weights,
        });
        Ok(())
    }
}

struct SpreadScorer<'a> {
    cx: CycleContext<'a>,
    s: &'a SpreadState,
    st: &'a ScoreState,
}

impl NodeScorer for SpreadScorer<'_> {
    fn score(&self, node: NodeId) -> i64 {
        let mut score = 0f64;
        for (i, r) in self.s.soft.iter().enumerate() {
            let d = self.cx.cache.domain(r.key, node);
            if d == NO_DOMAIN {
                return -1; // ignored node
            }
            let cnt = match &self.st.pair_counts[i] {
                None => i64::from(self.cx.cache.tracker_nodes(r.tracker)[node as usize]),
                Some(c) => c.get(d as usize).copied().unwrap_or(0).max(0),
            };
            score += cnt as f64 * self.st.weights[i] + f64::from(r.c.max_skew - 1);
        }
        score.round() as i64
    }
    fn normalize(&self, scores: &mut [i64]) {
        let valid = scores.iter().copied().filter(|s| *s >= 0);
        let min = valid.clone().min().unwrap_or(0);
        let max = valid.max().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if *s < 0 {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *s) / max
            };
        }
    }
}

impl ScorePlugin for PodTopologySpread {
    fn scope(&self, cx: CycleContext<'_>, state: &CycleState) -> Option<Scope> {
        let s = state.get::<SpreadState>()?;
        if s.soft.is_empty() {
            return None;
        }
        let mut except = Vec::new();
        let mut any_host = false;
        for r in s.soft.iter().filter(|r| r.c.topology_key == HOSTNAME) {
            any_host = true;
            let per_node = cx.cache.tracker_nodes(r.tracker);
            except.extend(
                cx.cache
                    .nodes()
                    .iter()
                    .copied()
                    .filter(|n| per_node[*n as usize] > 0),
            );
        }
        Some(if any_host {
            Scope::ClassExcept(except)
        } else {
            Scope::Class
        })
    }
    fn prepare<'a>(
        &'a self,
        cx: CycleContext<'a>,
        state: &'a CycleState,
    ) -> Box<dyn NodeScorer + 'a> {
        let s = state.get::<SpreadState>().expect("scope checked");
        let st = state.get::<ScoreState>().expect("pre_score ran");
        Box::new(SpreadScorer { cx, s, st })
    }
}
