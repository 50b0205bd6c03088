//! Services as kube-proxy's nftables mode programs them: a pure function from Services and
//! EndpointSlices to one nftables [`Table`], installed atomically.
//!
//! ```text
//! chain services {                     # jumped to from nat prerouting and nat output
//!   ip daddr . meta l4proto . th dport vmap @service-ips          # ClusterIP, LoadBalancer, externalIPs
//!   fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
//! }
//! chain svc-NS/NAME/tcp/PORT {         # one per Service port
//!   ip daddr VIP tcp dport PORT ip saddr != CLUSTER_CIDR jump mark-for-masquerade
//!   ip saddr @aff-EP goto ep-…         # sessionAffinity ClientIP, one per endpoint
//!   numgen random mod N vmap @eps-NS/NAME/tcp/PORT                  # 0: goto ep-…, 1: goto ep-…
//! }
//! chain ep-NS/NAME/tcp/PORT__IP/PORT { # one per ready endpoint
//!   ip saddr IP jump mark-for-masquerade                            # hairpin
//!   update @aff-… { ip saddr }         # with affinity
//!   meta l4proto tcp dnat to IP:PORT
//! }
//! chain ext-NS/NAME/tcp/PORT {         # NodePort, LoadBalancer and external IPs
//!   jump mark-for-masquerade; goto svc-…                            # externalTrafficPolicy Cluster
//!   # Local: pods and the host itself go to every endpoint, others to this node's only (or drop)
//! }
//! chain masquerading { meta mark & 0x4000 == 0 return; meta mark set mark & ~0x4000; masquerade fully-random }
//! ```
//!
//! Services with no usable endpoint are rejected from filter chains (TCP reset for TCP, ICMP port
//! unreachable otherwise), as kube-proxy rejects them, instead of timing out. Only endpoints whose EndpointSlice condition `ready`
//! is true (or unset) get traffic; when none is ready, serving-and-terminating ones do
//! (kube-proxy's fallback). Headless and ExternalName Services get nothing. IPv4 only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::nat::Ipv4Net;
use crate::nft::types::{INET_PROTO, INET_SERVICE, INTEGER, IPV4_ADDR, concat};
use crate::nft::{
    Chain, ChainType, Element, Hook, MASQ_MARK, Rule, SCTP, Set, TCP, Table, UDP, Verdict,
};

/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// What the proxy on one node needs to know besides the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The nftables table (e.g. `berth-proxy-<node>`).
    pub table: String,
    /// This node's name (endpoints with this `nodeName` are local for
    /// `externalTrafficPolicy: Local`).
    pub node_name: String,
    /// The cluster's pod CIDR: traffic to a ClusterIP from outside it is masqueraded, as
    /// kube-proxy's `--cluster-cidr` does. `None`: no masquerading of ClusterIP traffic.
    pub cluster_cidr: Option<Ipv4Net>,
}

/// One endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Target port.
    pub port: u16,
    /// On this node.
    pub local: bool,
}

/// One Service port with everything the ruleset needs (the model [`service_table`] builds from
/// the API objects; tests and benches may build it directly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// IP protocol number.
    pub protocol: u8,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// The NodePort, if any.
    pub node_port: Option<u16>,
    /// LoadBalancer ingress IPs and externalIPs.
    pub external_ips: Vec<Ipv4Addr>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// sessionAffinity ClientIP timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// Usable endpoints, sorted.
    pub endpoints: Vec<Endpoint>,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        TCP => "tcp",
        UDP => "udp",
        _ => "sctp",
    }
}

fn proto_number(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

impl ServicePort {
    /// `NS/NAME/PROTO/PORT`, the base of this port's chain and map names.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            proto_name(self.protocol),
            self.port
        )
    }
}

fn port16(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// Builds the per-port model from the API objects (skipping headless, ExternalName, IPv6 and
/// malformed Services).
pub fn service_ports(
    cfg: &ProxyConfig,
    services: &[Service],
    slices: &[EndpointSlice],
) -> Vec<ServicePort> {
    // Slices by (namespace, service name).
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            by_service.entry((ns, svc.as_str())).or_default().push(s);
        }
    }
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let (Some(name), ns) = (
            svc.metadata.name.as_deref(),
            svc.metadata.namespace.as_deref().unwrap_or("default"),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue; // headless ("None"), unset or IPv6
        };
        let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        let mut external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        if spec.type_.as_deref() == Some("LoadBalancer") {
            external_ips.extend(
                svc.status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()),
            );
        }
        external_ips.sort();
        external_ips.dedup();
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local")
            && (node_ports || !external_ips.is_empty());
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let svc_slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        for sp in ports {
            let (Some(protocol), Some(port)) =
                (proto_number(sp.protocol.as_deref()), port16(sp.port))
            else {
                continue;
            };
            let port_name = sp.name.as_deref().unwrap_or("");
            let mut ready = BTreeSet::new();
            let mut terminating = BTreeSet::new();
            for slice in svc_slices {
                for ep_port in slice.ports.iter().flatten() {
                    if ep_port.name.as_deref().unwrap_or("") != port_name
                        || proto_number(ep_port.protocol.as_deref()) != Some(protocol)
                    {
                        continue;
                    }
                    let Some(target) = ep_port.port.and_then(port16) else {
                        continue;
                    };
                    for ep in &slice.endpoints {
                        let c = ep.conditions.as_ref();
                        let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
                        let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
                        let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                        let local = ep.node_name.as_deref() == Some(cfg.node_name.as_str());
                        for a in &ep.addresses {
                            let Ok(ip) = a.parse::<Ipv4Addr>() else {
                                continue;
                            };
                            let e = Endpoint {
                                ip,
                                port: target,
                                local,
                            };
                            if is_ready {
                                ready.insert(e);
                            } else if serving && is_terminating {
                                terminating.insert(e);
                            }
                        }
                    }
                }
            }
            let endpoints = if ready.is_empty() { terminating } else { ready };
            out.push(ServicePort {
                namespace: ns.to_string(),
                name: name.to_string(),
                protocol,
                cluster_ip,
                port,
                node_port: if node_ports {
                    sp.node_port.and_then(port16)
                } else {
                    None
                },
                external_ips: external_ips.clone(),
                external_local,
                affinity_seconds,
                endpoints: endpoints.into_iter().collect(),
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.namespace, &a.name, a.protocol, a.port).cmp(&(
            &b.namespace,
            &b.name,
            b.protocol,
            b.port,
        ))
    });
    out
}

/// The whole ruleset for `services` and `slices` (pure: no I/O).
pub fn service_table(cfg: &ProxyConfig, services: &[Service], slices: &[EndpointSlice]) -> Table {
    ports_table(cfg, &service_ports(cfg, services, slices))
}

/// `ip . proto . port` as a 12-byte concatenated set key.
pub fn key_ip_proto_port(ip: Ipv4Addr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.extend_from_slice(&ip.octets());
    k.extend_from_slice(&[proto, 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

/// `proto . port` as an 8-byte concatenated set key.
pub fn key_proto_port(proto: u8, port: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(8);
    k.extend_from_slice(&[proto, 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

const SERVICES: &str = "services";
const MARK_FOR_MASQ: &str = "mark-for-masquerade";
const MASQUERADING: &str = "masquerading";
const REJECT: &str = "reject-chain";
const EP_CHECK: &str = "service-endpoints-check";
const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_EP_SERVICES: &str = "no-endpoint-services";
const NO_EP_NODEPORTS: &str = "no-endpoint-nodeports";
/// Filter chains run before the usual `filter` priority 0.
const FILTER_PRIORITY: i32 = -110;

/// The ruleset for already-resolved Service ports.
pub fn ports_table(cfg: &ProxyConfig, ports: &[ServicePort]) -> Table {
    let mut t = Table::new(&cfg.table);
    let mut chains: Vec<Chain> = Vec::new();
    let mut sets: Vec<Set> = Vec::new();

    chains.push(base_jump(
        "nat-prerouting",
        Hook::Prerouting,
        ChainType::Nat,
        -100,
        SERVICES,
    ));
    chains.push(base_jump(
        "nat-output",
        Hook::Output,
        ChainType::Nat,
        -100,
        SERVICES,
    ));
    chains.push(base_jump(
        "nat-postrouting",
        Hook::Postrouting,
        ChainType::Nat,
        100,
        MASQUERADING,
    ));
    for (name, hook) in [
        ("filter-input", Hook::Input),
        ("filter-forward", Hook::Forward),
        ("filter-output", Hook::Output),
    ] {
        let mut c = Chain::base(name, hook, ChainType::Filter, FILTER_PRIORITY);
        c.push(Rule::new().ct_state_any(8).jump(EP_CHECK)); // ct state new
        chains.push(c);
    }
    let mut check = Chain::regular(EP_CHECK);
    check.push(Rule::new().load_daddr_proto_port().vmap(NO_EP_SERVICES));
    check.push(
        Rule::new()
            .daddr_local()
            .daddr_in(Ipv4Addr::new(127, 0, 0, 0), 8, false)
            .load_proto_port()
            .vmap(NO_EP_NODEPORTS),
    );
    chains.push(check);
    let mut services = Chain::regular(SERVICES);
    services.push(Rule::new().load_daddr_proto_port().vmap(SERVICE_IPS));
    services.push(
        Rule::new()
            .daddr_local()
            .daddr_in(Ipv4Addr::new(127, 0, 0, 0), 8, false)
            .load_proto_port()
            .vmap(SERVICE_NODEPORTS),
    );
    chains.push(services);
    let mut masq = Chain::regular(MASQUERADING);
    masq.push(Rule::new().mark_has(MASQ_MARK, false).ret());
    masq.push(Rule::new().mark_clear(MASQ_MARK));
    masq.push(Rule::new().masquerade(true));
    chains.push(masq);
    let mut mark = Chain::regular(MARK_FOR_MASQ);
    mark.push(Rule::new().mark_or(MASQ_MARK));
    chains.push(mark);
    let mut reject = Chain::regular(REJECT);
    // A TCP reset for TCP (immediate, not rate-limited like ICMP errors), ICMP for the rest.
    reject.push(Rule::new().reject_tcp_reset());
    reject.push(Rule::new().reject());
    chains.push(reject);

    let ip_proto_port = concat(&[IPV4_ADDR, INET_PROTO, INET_SERVICE]);
    let proto_port = concat(&[INET_PROTO, INET_SERVICE]);
    let mut service_ips = Set::verdict_map(SERVICE_IPS, 12).key_type(ip_proto_port);
    let mut service_nodeports = Set::verdict_map(SERVICE_NODEPORTS, 8).key_type(proto_port);
    let mut no_ep_services = Set::verdict_map(NO_EP_SERVICES, 12).key_type(ip_proto_port);
    let mut no_ep_nodeports = Set::verdict_map(NO_EP_NODEPORTS, 8).key_type(proto_port);
    let goto_reject = || Verdict::Goto(REJECT.into());

    for sp in ports {
        let id = sp.id();
        let svc_chain = format!("svc-{id}");
        let ext_chain = format!("ext-{id}");
        let has_external = sp.node_port.is_some() || !sp.external_ips.is_empty();
        let proto = sp.protocol;

        if sp.endpoints.is_empty() {
            no_ep_services.elements.push(Element::verdict(
                key_ip_proto_port(sp.cluster_ip, proto, sp.port),
                goto_reject(),
            ));
            for ip in &sp.external_ips {
                no_ep_services.elements.push(Element::verdict(
                    key_ip_proto_port(*ip, proto, sp.port),
                    goto_reject(),
                ));
            }
            if let Some(np) = sp.node_port {
                no_ep_nodeports
                    .elements
                    .push(Element::verdict(key_proto_port(proto, np), goto_reject()));
            }
            continue;
        }

        // Endpoint chains.
        let ep_chain = |e: &Endpoint| format!("ep-{id}__{}/{}", e.ip, e.port);
        let aff_set = |e: &Endpoint| format!("aff-{id}__{}/{}", e.ip, e.port);
        for e in &sp.endpoints {
            let mut c = Chain::regular(ep_chain(e));
            c.push(Rule::new().saddr(e.ip, true).jump(MARK_FOR_MASQ));
            if let Some(secs) = sp.affinity_seconds {
                let mut s = Set::new(aff_set(e), 4);
                s.timeout_ms = Some(u64::from(secs) * 1000);
                sets.push(s);
                c.push(Rule::new().update_saddr(aff_set(e), u64::from(secs) * 1000));
            }
            c.push(Rule::new().l4proto(proto).dnat(e.ip, Some(e.port)));
            chains.push(c);
        }

        // The Service chain: masquerade from outside the cluster, affinity, then spread.
        let mut c = Chain::regular(&svc_chain);
        if let Some(cidr) = cfg.cluster_cidr {
            c.push(
                Rule::new()
                    .daddr(sp.cluster_ip, true)
                    .l4proto(proto)
                    .dport(sp.port)
                    .saddr_in(cidr.network(), cidr.prefix, false)
                    .jump(MARK_FOR_MASQ),
            );
        }
        spread(
            &mut c,
            &mut sets,
            sp,
            &sp.endpoints,
            &svc_chain,
            &ep_chain,
            &aff_set,
        );
        chains.push(c);
        service_ips.elements.push(Element::verdict(
            key_ip_proto_port(sp.cluster_ip, proto, sp.port),
            Verdict::Goto(svc_chain.clone()),
        ));

        if has_external {
            let mut ext = Chain::regular(&ext_chain);
            if sp.external_local {
                // Pods and the host itself may use every endpoint; outside clients only this
                // node's (their source address is kept), or none.
                if let Some(cidr) = cfg.cluster_cidr {
                    ext.push(
                        Rule::new()
                            .saddr_in(cidr.network(), cidr.prefix, true)
                            .goto(&svc_chain),
                    );
                }
                ext.push(Rule::new().saddr_local().jump(MARK_FOR_MASQ));
                ext.push(Rule::new().saddr_local().goto(&svc_chain));
                let local: Vec<Endpoint> =
                    sp.endpoints.iter().filter(|e| e.local).cloned().collect();
                if local.is_empty() {
                    ext.push(Rule::new().drop_().comment("no local endpoints"));
                } else {
                    let local_chain = format!("local-{id}");
                    let mut lc = Chain::regular(&local_chain);
                    spread(
                        &mut lc,
                        &mut sets,
                        sp,
                        &local,
                        &local_chain,
                        &ep_chain,
                        &aff_set,
                    );
                    chains.push(lc);
                    ext.push(Rule::new().goto(&local_chain));
                }
            } else {
                ext.push(Rule::new().jump(MARK_FOR_MASQ));
                ext.push(Rule::new().goto(&svc_chain));
            }
            chains.push(ext);
            for ip in &sp.external_ips {
                service_ips.elements.push(Element::verdict(
                    key_ip_proto_port(*ip, proto, sp.port),
                    Verdict::Goto(ext_chain.clone()),
                ));
            }
            if let Some(np) = sp.node_port {
                service_nodeports.elements.push(Element::verdict(
                    key_proto_port(proto, np),
                    Verdict::Goto(ext_chain.clone()),
                ));
            }
        }
    }
    sets.extend([
        service_ips,
        service_nodeports,
        no_ep_services,
        no_ep_nodeports,
    ]);
    t.chains = chains;
    t.sets = sets;
    t
}

/// Affinity lookups, then a random pick among `endpoints` (numgen over a verdict map named
/// after `chain`).
fn spread(
    c: &mut Chain,
    sets: &mut Vec<Set>,
    sp: &ServicePort,
    endpoints: &[Endpoint],
    chain: &str,
    ep_chain: &dyn Fn(&Endpoint) -> String,
    aff_set: &dyn Fn(&Endpoint) -> String,
) {
    if sp.affinity_seconds.is_some() {
        for e in endpoints {
            c.push(Rule::new().saddr_in_set(aff_set(e), true).goto(ep_chain(e)));
        }
    }
    if let [only] = endpoints {
        c.push(Rule::new().goto(ep_chain(only)));
        return;
    }
    let map = format!("eps-{}", &chain[chain.find('-').map_or(0, |i| i + 1)..]);
    let map = if chain.starts_with("local-") {
        format!("local{map}")
    } else {
        map
    };
    let mut m = Set::verdict_map(&map, 4).key_type(INTEGER);
    for (i, e) in endpoints.iter().enumerate() {
        m.elements.push(Element::verdict(
            (i as u32).to_ne_bytes().to_vec(),
            Verdict::Goto(ep_chain(e)),
        ));
    }
    sets.push(m);
    c.push(Rule::new().numgen_vmap(endpoints.len() as u32, map));
}

fn base_jump(name: &str, hook: Hook, kind: ChainType, priority: i32, to: &str) -> Chain {
    let mut c = Chain::base(name, hook, kind, priority);
    c.push(Rule::new().jump(to));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::Expr;
    use serde_json::json;

    fn cfg() -> ProxyConfig {
        ProxyConfig {
            table: "t".into(),
            node_name: "n1".into(),
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        }
    }

    fn svc(name: &str, spec: serde_json::Value, status: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    /// A slice with endpoints `(ip, ready, terminating, node)` on port `http`/8080.
    fn slice(svc: &str, eps: &[(&str, bool, bool, &str)]) -> EndpointSlice {
        let endpoints: Vec<_> = eps
            .iter()
            .map(|(ip, ready, term, node)| {
                json!({"addresses": [ip], "nodeName": node,
                       "conditions": {"ready": ready, "serving": *ready || *term, "terminating": term}})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-abc"), "namespace": "ns",
                         "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }))
        .unwrap()
    }

    fn web(extra: serde_json::Value) -> serde_json::Value {
        let mut spec = json!({"clusterIP": "10.96.0.10",
                              "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        spec
    }

    fn set<'a>(t: &'a Table, name: &str) -> &'a Set {
        t.sets
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no set {name}"))
    }

    fn chain<'a>(t: &'a Table, name: &str) -> Option<&'a Chain> {
        t.chains.iter().find(|c| c.name == name)
    }

    #[test]
    fn cluster_ip_spreads_over_ready_endpoints_only() {
        let t = service_table(
            &cfg(),
            &[svc("web", web(json!({})), json!({}))],
            &[slice(
                "web",
                &[
                    ("10.244.1.2", true, false, "n1"),
                    ("10.244.1.3", true, false, "n2"),
                    ("10.244.1.4", false, false, "n2"),
                ],
            )],
        );
        t.validate().unwrap();
        let ips = set(&t, SERVICE_IPS);
        assert_eq!(ips.elements.len(), 1);
        assert_eq!(
            ips.elements[0].key,
            key_ip_proto_port("10.96.0.10".parse().unwrap(), TCP, 80)
        );
        assert_eq!(
            ips.elements[0].verdict,
            Some(Verdict::Goto("svc-ns/web/tcp/80".into()))
        );
        let eps = set(&t, "eps-ns/web/tcp/80");
        assert_eq!(eps.elements.len(), 2, "the not-ready endpoint is left out");
        assert!(chain(&t, "ep-ns/web/tcp/80__10.244.1.4/8080").is_none());
        let svc_chain = chain(&t, "svc-ns/web/tcp/80").unwrap();
        assert!(
            svc_chain
                .rules
                .last()
                .unwrap()
                .exprs
                .iter()
                .any(|e| matches!(
                    e,
                    Expr::Numgen {
                        modulus: 2,
                        random: true,
                        ..
                    }
                ))
        );
        assert!(set(&t, NO_EP_SERVICES).elements.is_empty());
    }

    #[test]
    fn no_ready_endpoint_rejects_and_terminating_ones_are_a_fallback() {
        let s = [svc("web", web(json!({})), json!({}))];
        let t = service_table(
            &cfg(),
            &s,
            &[slice("web", &[("10.244.1.4", false, false, "n1")])],
        );
        assert_eq!(set(&t, NO_EP_SERVICES).elements.len(), 1);
        assert!(set(&t, SERVICE_IPS).elements.is_empty());
        let t = service_table(
            &cfg(),
            &s,
            &[slice("web", &[("10.244.1.4", false, true, "n1")])],
        );
        assert!(set(&t, NO_EP_SERVICES).elements.is_empty());
        assert!(chain(&t, "ep-ns/web/tcp/80__10.244.1.4/8080").is_some());
    }

    #[test]
    fn headless_and_external_name_services_get_nothing() {
        let t = service_table(
            &cfg(),
            &[
                svc("h", web(json!({"clusterIP": "None"})), json!({})),
                svc(
                    "x",
                    json!({"type": "ExternalName", "externalName": "example.org"}),
                    json!({}),
                ),
            ],
            &[slice("h", &[("10.244.1.2", true, false, "n1")])],
        );
        assert!(set(&t, SERVICE_IPS).elements.is_empty());
        assert!(!t.chains.iter().any(|c| c.name.starts_with("svc-")));
    }

    #[test]
    fn node_port_and_load_balancer_go_through_the_external_chain() {
        let t = service_table(
            &cfg(),
            &[svc(
                "web",
                web(json!({"type": "LoadBalancer",
                           "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
                json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}),
            )],
            &[slice("web", &[("10.244.1.2", true, false, "n1")])],
        );
        t.validate().unwrap();
        let np = set(&t, SERVICE_NODEPORTS);
        assert_eq!(np.elements[0].key, key_proto_port(TCP, 30080));
        assert_eq!(
            np.elements[0].verdict,
            Some(Verdict::Goto("ext-ns/web/tcp/80".into()))
        );
        let ips = set(&t, SERVICE_IPS);
        assert!(ips.elements.iter().any(|e| e.key
            == key_ip_proto_port("192.0.2.10".parse().unwrap(), TCP, 80)
            && e.verdict == Some(Verdict::Goto("ext-ns/web/tcp/80".into()))));
        // Cluster policy: masquerade, then every endpoint.
        let ext = chain(&t, "ext-ns/web/tcp/80").unwrap();
        assert_eq!(ext.rules.len(), 2);
    }

    #[test]
    fn external_traffic_policy_local_uses_only_this_nodes_endpoints() {
        let t = service_table(
            &cfg(),
            &[svc(
                "web",
                web(json!({"type": "NodePort", "externalTrafficPolicy": "Local",
                           "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
                json!({}),
            )],
            &[slice(
                "web",
                &[
                    ("10.244.1.2", true, false, "n1"),
                    ("10.244.2.2", true, false, "n2"),
                ],
            )],
        );
        t.validate().unwrap();
        // One local endpoint: the local chain goes straight to it.
        let local = chain(&t, "local-ns/web/tcp/80").unwrap();
        assert_eq!(
            local.rules[0].exprs.last(),
            Some(&Expr::Verdict(Verdict::Goto(
                "ep-ns/web/tcp/80__10.244.1.2/8080".into()
            )))
        );
        // No local endpoint: outside traffic is dropped.
        let t = service_table(
            &cfg(),
            &[svc(
                "web",
                web(json!({"type": "NodePort", "externalTrafficPolicy": "Local",
                           "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
                json!({}),
            )],
            &[slice("web", &[("10.244.2.2", true, false, "n2")])],
        );
        let ext = chain(&t, "ext-ns/web/tcp/80").unwrap();
        assert_eq!(
            ext.rules.last().unwrap().exprs,
            vec![Expr::Verdict(Verdict::Drop)]
        );
    }

    #[test]
    fn session_affinity_adds_timeout_sets_per_endpoint() {
        let t = service_table(
            &cfg(),
            &[svc(
                "web",
                web(json!({"sessionAffinity": "ClientIP",
                           "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}})),
                json!({}),
            )],
            &[slice(
                "web",
                &[
                    ("10.244.1.2", true, false, "n1"),
                    ("10.244.1.3", true, false, "n1"),
                ],
            )],
        );
        t.validate().unwrap();
        let aff = set(&t, "aff-ns/web/tcp/80__10.244.1.2/8080");
        assert_eq!(aff.timeout_ms, Some(60_000));
        let svc_chain = chain(&t, "svc-ns/web/tcp/80").unwrap();
        // masquerade rule, two affinity lookups, numgen.
        assert_eq!(svc_chain.rules.len(), 4);
    }

    #[test]
    fn the_ruleset_is_deterministic_whatever_the_input_order() {
        let a = svc("a", web(json!({"clusterIP": "10.96.0.11"})), json!({}));
        let b = svc("b", web(json!({})), json!({}));
        let sa = slice(
            "a",
            &[
                ("10.244.1.2", true, false, "n1"),
                ("10.244.1.3", true, false, "n1"),
            ],
        );
        let sb = slice("b", &[("10.244.1.4", true, false, "n1")]);
        let t1 = service_table(&cfg(), &[a.clone(), b.clone()], &[sa.clone(), sb.clone()]);
        let t2 = service_table(&cfg(), &[b, a], &[sb, sa]);
        assert_eq!(t1, t2);
    }
}
