//! NetworkPolicy enforced with nftables per pod IP: a pure function from Pods, Namespaces and
//! NetworkPolicies to one filter [`Table`] for the pods of one node.
//!
//! ```text
//! chain forward { type filter hook forward priority -5; policy accept;
//!   ct state established,related accept
//!   ip saddr vmap @egress-pods         # isolated-for-egress pod IP  -> jump egress-NS/POD
//!   ip daddr vmap @ingress-pods        # isolated-for-ingress pod IP -> jump ingress-NS/POD
//! }
//! chain ingress-NS/POD {               # one rule per (peer, port) of every selecting policy
//!   ip saddr @peers-… meta l4proto tcp th dport 80 return
//!   ip saddr 10.0.0.0/8 ip saddr != @except-… return                # ipBlock with except
//!   drop
//! }
//! ```
//!
//! Kubernetes' semantics: a pod is isolated for a direction only once a policy of its namespace
//! selects it for that direction (default allow); allowed traffic is the union of the selecting
//! policies' rules; an empty `from`/`to` means every peer and an empty `ports` every port;
//! replies to allowed connections pass (conntrack). Traffic between the node and its own pods
//! is not filtered (kubelet probes). Pods on one Linux bridge reach each other below the IP
//! layer: the forward hook sees them only with `br_netfilter` loaded
//! (`net.bridge.bridge-nf-call-iptables=1`); routed pod traffic needs nothing. Named ports are
//! resolved against the selected pod's containers (ingress) or the peer pods' (egress). IPv4.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::nat::Ipv4Net;
use crate::nft::{
    Chain, ChainType, CmpOp, Element, Expr, Hook, Reg, Rule, SCTP, Set, TCP, Table, UDP, Verdict,
};

/// Where the policy table goes and which pods it guards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The nftables table (e.g. `berth-policy-<node>`).
    pub table: String,
    /// Only pods with this `spec.nodeName` are guarded here (`None`: every pod, for one host).
    pub node_name: Option<String>,
}

/// Whether `labels` match `sel` (matchLabels and matchExpressions; an empty selector matches
/// everything).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels
        && ml.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or(&[]);
        let got = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => got.is_some_and(|g| values.contains(g)),
            "NotIn" => got.is_none_or(|g| !values.contains(g)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

struct PodInfo<'a> {
    ns: &'a str,
    name: &'a str,
    ip: Ipv4Addr,
    labels: BTreeMap<String, String>,
    node: Option<&'a str>,
    pod: &'a Pod,
}

fn pod_infos(pods: &[Pod]) -> Vec<PodInfo<'_>> {
    pods.iter()
        .filter_map(|p| {
            let spec = p.spec.as_ref()?;
            if spec.host_network == Some(true) {
                return None;
            }
            let ip = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            Some(PodInfo {
                ns: p.metadata.namespace.as_deref().unwrap_or("default"),
                name: p.metadata.name.as_deref()?,
                ip,
                labels: p.metadata.labels.clone().unwrap_or_default(),
                node: spec.node_name.as_deref(),
                pod: p,
            })
        })
        .collect()
}

fn ns_labels(namespaces: &[Namespace]) -> BTreeMap<String, BTreeMap<String, String>> {
    namespaces
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let mut l = n.metadata.labels.clone().unwrap_or_default();
            l.insert("kubernetes.io/metadata.name".into(), name.clone());
            Some((name, l))
        })
        .collect()
}

fn protocol(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

/// A resolved port condition: protocol and an inclusive port range (`None`: every port).
type PortMatch = (u8, Option<(u16, u16)>);

fn named_port(pod: &Pod, name: &str, proto: u8) -> Option<u16> {
    pod.spec.as_ref()?.containers.iter().find_map(|c| {
        c.ports.iter().flatten().find_map(|p| {
            (p.name.as_deref() == Some(name) && protocol(p.protocol.as_deref()) == Some(proto))
                .then(|| u16::try_from(p.container_port).ok())
                .flatten()
        })
    })
}

/// Resolves a rule's ports; named ports against `pods` (the pods that own the port).
fn ports(list: Option<&[NetworkPolicyPort]>, pods: &[&Pod]) -> Option<Vec<PortMatch>> {
    let list = list.filter(|l| !l.is_empty())?;
    let mut out = Vec::new();
    for p in list {
        let Some(proto) = protocol(p.protocol.as_deref()) else {
            continue;
        };
        match &p.port {
            None => out.push((proto, None)),
            Some(IntOrString::Int(n)) => {
                let Ok(start) = u16::try_from(*n) else {
                    continue;
                };
                let end = p
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .filter(|e| *e >= start)
                    .unwrap_or(start);
                out.push((proto, Some((start, end))));
            }
            Some(IntOrString::String(name)) => {
                let mut resolved: Vec<u16> = pods
                    .iter()
                    .filter_map(|pod| named_port(pod, name, proto))
                    .collect();
                resolved.sort();
                resolved.dedup();
                out.extend(resolved.into_iter().map(|n| (proto, Some((n, n)))));
            }
        }
    }
    Some(out)
}

/// One peer condition.
enum PeerMatch {
    Any,
    Ips(Vec<Ipv4Addr>),
    Block { cidr: Ipv4Net, except: Vec<Ipv4Net> },
}

fn peers(
    list: Option<&[NetworkPolicyPeer]>,
    policy_ns: &str,
    pods: &[PodInfo<'_>],
    nss: &BTreeMap<String, BTreeMap<String, String>>,
) -> (Vec<PeerMatch>, Vec<usize>) {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return (vec![PeerMatch::Any], (0..pods.len()).collect());
    };
    let mut out = Vec::new();
    let mut peer_pods = Vec::new();
    let empty = BTreeMap::new();
    for peer in list {
        if let Some(b) = &peer.ip_block {
            let Ok(cidr) = b.cidr.parse::<Ipv4Net>() else {
                continue;
            };
            let except = b
                .except
                .iter()
                .flatten()
                .filter_map(|e| e.parse().ok())
                .collect();
            out.push(PeerMatch::Block { cidr, except });
            continue;
        }
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            continue;
        }
        let mut ips = Vec::new();
        for (i, p) in pods.iter().enumerate() {
            let ns_ok = match &peer.namespace_selector {
                Some(sel) => selector_matches(sel, nss.get(p.ns).unwrap_or(&empty)),
                None => p.ns == policy_ns,
            };
            let pod_ok = peer
                .pod_selector
                .as_ref()
                .is_none_or(|sel| selector_matches(sel, &p.labels));
            if ns_ok && pod_ok {
                ips.push(p.ip);
                peer_pods.push(i);
            }
        }
        ips.sort();
        ips.dedup();
        out.push(PeerMatch::Ips(ips));
    }
    (out, peer_pods)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

fn policy_types(p: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &p.spec else {
        return (false, false);
    };
    match &spec.policy_types {
        Some(t) if !t.is_empty() => (
            t.iter().any(|t| t == "Ingress"),
            t.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.is_some()),
    }
}

/// The policy table (pure: no I/O).
pub fn policy_table(
    cfg: &PolicyConfig,
    pods: &[Pod],
    namespaces: &[Namespace],
    policies: &[NetworkPolicy],
) -> Table {
    let infos = pod_infos(pods);
    let nss = ns_labels(namespaces);
    let mut t = Table::new(&cfg.table);
    let mut forward = Chain::base("forward", Hook::Forward, ChainType::Filter, -5);
    forward.push(Rule::new().ct_state_any(2 | 4).accept());
    forward.push(Rule::new().saddr_vmap("egress-pods"));
    forward.push(Rule::new().daddr_vmap("ingress-pods"));
    let mut chains = Vec::new();
    let mut sets = Vec::new();
    let mut ingress_pods = Set::verdict_map("ingress-pods", 4);
    let mut egress_pods = Set::verdict_map("egress-pods", 4);

    let mut sorted: Vec<&NetworkPolicy> = policies.iter().collect();
    sorted.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));

    for pod in &infos {
        if cfg
            .node_name
            .as_deref()
            .is_some_and(|n| pod.node != Some(n))
        {
            continue;
        }
        for dir in [Dir::Ingress, Dir::Egress] {
            let selecting: Vec<&NetworkPolicy> = sorted
                .iter()
                .copied()
                .filter(|p| {
                    p.metadata.namespace.as_deref().unwrap_or("default") == pod.ns
                        && p.spec.as_ref().is_some_and(|s| {
                            selector_matches(
                                s.pod_selector.as_ref().unwrap_or(&LabelSelector::default()),
                                &pod.labels,
                            )
                        })
                        && match dir {
                            Dir::Ingress => policy_types(p).0,
                            Dir::Egress => policy_types(p).1,
                        }
                })
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let tag = match dir {
                Dir::Ingress => "ingress",
                Dir::Egress => "egress",
            };
            let chain_name = format!("{tag}-{}/{}", pod.ns, pod.name);
            let mut c = Chain::regular(&chain_name);
            let mut n = 0;
            for pol in selecting {
                let spec = pol.spec.as_ref().expect("filtered on spec");
                let pol_ns = pol.metadata.namespace.as_deref().unwrap_or("default");
                let rules: Vec<(Option<&[NetworkPolicyPeer]>, Option<&[NetworkPolicyPort]>)> =
                    match dir {
                        Dir::Ingress => spec
                            .ingress
                            .iter()
                            .flatten()
                            .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                            .collect(),
                        Dir::Egress => spec
                            .egress
                            .iter()
                            .flatten()
                            .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                            .collect(),
                    };
                for (peer_list, port_list) in rules {
                    let (peer_matches, peer_pods) = peers(peer_list, pol_ns, &infos, &nss);
                    let owners: Vec<&Pod> = match dir {
                        Dir::Ingress => vec![pod.pod],
                        Dir::Egress => peer_pods.iter().map(|i| infos[*i].pod).collect(),
                    };
                    let port_matches = ports(port_list, &owners);
                    if port_matches.as_ref().is_some_and(Vec::is_empty) {
                        continue; // only unresolvable named ports: allows nothing
                    }
                    for pm in &peer_matches {
                        n += 1;
                        let base = match pm {
                            PeerMatch::Any => Rule::new(),
                            PeerMatch::Ips(ips) => {
                                if ips.is_empty() {
                                    continue;
                                }
                                let set = format!("peers-{chain_name}-{n}");
                                let mut s = Set::new(&set, 4);
                                s.elements =
                                    ips.iter().map(|ip| Element::key(ip.octets())).collect();
                                sets.push(s);
                                match dir {
                                    Dir::Ingress => Rule::new().saddr_in_set(set, true),
                                    Dir::Egress => Rule::new().daddr_in_set(set, true),
                                }
                            }
                            PeerMatch::Block { cidr, except } => {
                                let mut r = match dir {
                                    Dir::Ingress => {
                                        Rule::new().saddr_in(cidr.network(), cidr.prefix, true)
                                    }
                                    Dir::Egress => {
                                        Rule::new().daddr_in(cidr.network(), cidr.prefix, true)
                                    }
                                };
                                if !except.is_empty() {
                                    let set = format!("except-{chain_name}-{n}");
                                    let mut s = Set::new(&set, 4);
                                    s.interval = true;
                                    s.elements = merge_prefixes(except);
                                    sets.push(s);
                                    r = match dir {
                                        Dir::Ingress => r.saddr_in_set(set, false),
                                        Dir::Egress => r.daddr_in_set(set, false),
                                    };
                                }
                                r
                            }
                        };
                        match &port_matches {
                            None => {
                                c.push(base.ret());
                            }
                            Some(list) => {
                                for (proto, range) in list {
                                    let mut r = base.clone().l4proto(*proto);
                                    if let Some((lo, hi)) = range {
                                        r = port_range(r, *lo, *hi);
                                    }
                                    c.push(r.ret());
                                }
                            }
                        };
                    }
                }
            }
            c.push(Rule::new().drop_());
            chains.push(c);
            let e = Element::verdict(pod.ip.octets(), Verdict::Jump(chain_name));
            match dir {
                Dir::Ingress => ingress_pods.elements.push(e),
                Dir::Egress => egress_pods.elements.push(e),
            }
        }
    }
    let mut all = vec![forward];
    all.extend(chains);
    t.chains = all;
    sets.push(ingress_pods);
    sets.push(egress_pods);
    t.sets = sets;
    t
}

fn port_range(r: Rule, lo: u16, hi: u16) -> Rule {
    if lo == hi {
        return r.dport(lo);
    }
    r.expr(Expr::Payload {
        base: crate::nft::Base::Transport,
        offset: 2,
        len: 2,
        dreg: Reg::R2,
    })
    .expr(Expr::Cmp {
        sreg: Reg::R2,
        op: CmpOp::Gte,
        data: lo.to_be_bytes().to_vec(),
    })
    .expr(Expr::Cmp {
        sreg: Reg::R2,
        op: CmpOp::Lte,
        data: hi.to_be_bytes().to_vec(),
    })
}

/// Non-overlapping interval elements covering `nets` (the kernel refuses overlaps).
pub fn merge_prefixes(nets: &[Ipv4Net]) -> Vec<Element> {
    let mut ranges: Vec<(u64, u64)> = nets
        .iter()
        .map(|n| {
            let (s, e) = crate::nft::prefix_range(n.network(), n.prefix);
            (
                u64::from(u32::from(s)),
                e.map_or(1u64 << 32, |e| u64::from(u32::from(e))),
            )
        })
        .collect();
    ranges.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
        .into_iter()
        .map(|(s, e)| Element {
            key: (s as u32).to_be_bytes().to_vec(),
            key_end: (e <= u64::from(u32::MAX)).then(|| (e as u32).to_be_bytes().to_vec()),
            verdict: None,
            value: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(selector_matches(&sel(json!({})), &l));
        assert!(selector_matches(
            &sel(json!({"matchLabels": {"app": "web"}})),
            &l
        ));
        assert!(!selector_matches(
            &sel(json!({"matchLabels": {"app": "db"}})),
            &l
        ));
        let expr = |op: &str, values: serde_json::Value| {
            sel(json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]}))
        };
        assert!(selector_matches(&expr("In", json!(["front", "x"])), &l));
        assert!(!selector_matches(&expr("NotIn", json!(["front"])), &l));
        assert!(selector_matches(&expr("Exists", json!(null)), &l));
        assert!(!selector_matches(&expr("DoesNotExist", json!(null)), &l));
    }

    fn pod(name: &str, ip: &str, app: &str, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": []},
            "status": {"podIP": ip},
        }))
        .unwrap()
    }

    #[test]
    fn only_selected_pods_of_this_node_are_isolated() {
        let cfg = PolicyConfig {
            table: "p".into(),
            node_name: Some("n1".into()),
        };
        let pods = [
            pod("a", "10.0.0.1", "web", "n1"),
            pod("b", "10.0.0.2", "db", "n1"),
            pod("c", "10.0.0.3", "web", "n2"),
        ];
        let pol: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                         "except": ["10.1.0.0/16", "10.1.0.0/24", "10.2.0.0/16"]}}]}]}
        }))
        .unwrap();
        let t = policy_table(&cfg, &pods, &[], &[pol]);
        t.validate().unwrap();
        let ingress = t.sets.iter().find(|s| s.name == "ingress-pods").unwrap();
        assert_eq!(ingress.elements.len(), 1, "only pod a (web, on n1)");
        assert_eq!(ingress.elements[0].key, vec![10, 0, 0, 1]);
        let except = t
            .sets
            .iter()
            .find(|s| s.name.starts_with("except-"))
            .unwrap();
        // 10.1.0.0/16 swallows 10.1.0.0/24; 10.2.0.0/16 is adjacent, so one range.
        assert_eq!(except.elements.len(), 1);
        assert_eq!(except.elements[0].key, vec![10, 1, 0, 0]);
        assert_eq!(except.elements[0].key_end, Some(vec![10, 3, 0, 0]));
        // No policy: nothing isolated.
        let t = policy_table(&cfg, &pods, &[], &[]);
        assert!(t.sets.iter().all(|s| s.elements.is_empty()));
    }
}
