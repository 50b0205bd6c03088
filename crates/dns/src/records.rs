//! The cluster's DNS records: an index of Services and their ready EndpointSlice addresses,
//! answering names under the cluster domain as CoreDNS's `kubernetes` plugin does.
//!
//! [`ClusterRecords`] is an immutable snapshot built from Services and EndpointSlices
//! ([`ClusterRecords::build`]); the watch replaces it whole on every change, so a query never
//! sees half an update. [`ClusterRecords::lookup`] answers one question with the records of
//! the answer and additional sections and the response code, telling apart a name that does
//! not exist (NXDOMAIN) from one that exists without records of the asked type (NODATA),
//! and says when a name lies outside the cluster domain ([`Lookup::Outside`]).
//!
//! Names served (`<zone>` is the cluster domain, `cluster.local` by default):
//! - `<svc>.<ns>.svc.<zone>` A/AAAA: the ClusterIPs; for a headless Service the ready endpoint
//!   addresses; for an ExternalName Service a CNAME to the external name.
//! - `<hostname>.<svc>.<ns>.svc.<zone>` A/AAAA: the endpoint of a headless Service whose
//!   `hostname` is set (pods with `hostname` + `subdomain`, StatefulSet pods), or whose address
//!   written with dashes (`10-1-2-3`) is the label.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV: per named port, targeting the Service name
//!   (ClusterIP) or each endpoint's name (headless), with the addresses as additional records;
//!   SRV at `<svc>.<ns>.svc.<zone>` lists every port.
//! - `<a-b-c-d>.<ns>.pod.<zone>` A: the address in the name (CoreDNS's `pods insecure`).
//! - `dns-version.<zone>` TXT: the version of Kubernetes' DNS specification (1.1.0).
//! - The zone's SOA and NS; negative answers carry the SOA for negative caching.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::{Error, Result};

/// Label naming the Service of an EndpointSlice (Kubernetes' `kubernetes.io/service-name`).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// TTL of the records served (CoreDNS's default `ttl 5`).
pub const DEFAULT_TTL: u32 = 5;

/// A Service as DNS sees it.
#[derive(Debug, Clone)]
struct ServiceEntry {
    kind: ServiceKind,
    ports: Vec<PortEntry>,
    /// Ready endpoints (headless Services only use them for A/AAAA, all for SRV).
    endpoints: Vec<EndpointEntry>,
}

#[derive(Debug, Clone)]
enum ServiceKind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(Name),
}

#[derive(Debug, Clone)]
struct PortEntry {
    /// Lower-case port name ("" for an unnamed port).
    name: String,
    /// Lower-case protocol (`tcp`, `udp`, `sctp`).
    protocol: String,
    port: u16,
}

#[derive(Debug, Clone)]
struct EndpointEntry {
    ip: IpAddr,
    /// Lower-case hostname, if the endpoint has one.
    hostname: Option<String>,
    /// (name, protocol, port) as in the EndpointSlice, lower-case.
    ports: Vec<PortEntry>,
}

impl EndpointEntry {
    /// The endpoint's label under its Service: its hostname, else its address with dashes.
    fn label(&self) -> String {
        match &self.hostname {
            Some(h) => h.clone(),
            None => dashed(self.ip),
        }
    }
}

/// The address written with dashes, as CoreDNS names endpoints without a hostname.
fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// An address written with dashes back to an address (`10-0-0-1`, `fd00--1`).
fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name is under the cluster domain: answer with these sections.
    Answer(Answer),
    /// The name lies outside the cluster domain (forward or refuse it).
    Outside,
}

/// An authoritative answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// NOERROR (with records, or none: NODATA) or NXDOMAIN.
    pub code: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the zone's SOA in negative answers).
    pub authorities: Vec<Record>,
    /// The additional section (addresses of SRV targets).
    pub additionals: Vec<Record>,
}

impl Answer {
    /// Whether the name exists but has no records of the asked type.
    pub fn is_nodata(&self) -> bool {
        self.code == ResponseCode::NoError && self.answers.is_empty()
    }
}

/// A snapshot of the cluster's records. Cheap to query, rebuilt whole on change.
#[derive(Debug, Clone)]
pub struct ClusterRecords {
    zone: Name,
    ttl: u32,
    /// namespace -> service name -> entry (all lower-case).
    services: HashMap<String, HashMap<String, ServiceEntry>>,
}

impl ClusterRecords {
    /// No Services yet, for `domain` (e.g. `cluster.local`).
    pub fn empty(domain: &str) -> Result<Self> {
        let mut zone = Name::from_ascii(domain).map_err(|source| Error::Domain {
            domain: domain.to_owned(),
            source,
        })?;
        zone.set_fqdn(true);
        if zone.is_root() {
            return Err(Error::RootDomain);
        }
        Ok(ClusterRecords {
            zone: zone.to_lowercase(),
            ttl: DEFAULT_TTL,
            services: HashMap::new(),
        })
    }

    /// The records of `services` and their `slices` (slices of unknown Services are ignored).
    pub fn build<'a>(
        domain: &str,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Result<Self> {
        let mut records = Self::empty(domain)?;
        for svc in services {
            let (Some(ns), Some(name), Some(spec)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
                svc.spec.as_ref(),
            ) else {
                continue;
            };
            let kind = if spec.type_.as_deref() == Some("ExternalName") {
                let Some(target) = spec
                    .external_name
                    .as_deref()
                    .and_then(|n| Name::from_ascii(n).ok())
                else {
                    continue;
                };
                let mut target = target.to_lowercase();
                target.set_fqdn(true);
                ServiceKind::ExternalName(target)
            } else {
                let ips: Vec<&String> = match &spec.cluster_ips {
                    Some(ips) if !ips.is_empty() => ips.iter().collect(),
                    _ => spec.cluster_ip.iter().collect(),
                };
                if ips.iter().any(|ip| ip.as_str() == "None") {
                    ServiceKind::Headless
                } else {
                    let ips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
                    if ips.is_empty() {
                        // Not allocated yet: nothing to answer (the name does not exist yet).
                        continue;
                    }
                    ServiceKind::ClusterIp(ips)
                }
            };
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(PortEntry {
                        name: p.name.as_deref().unwrap_or("").to_ascii_lowercase(),
                        protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect();
            records
                .services
                .entry(ns.to_ascii_lowercase())
                .or_default()
                .insert(
                    name.to_ascii_lowercase(),
                    ServiceEntry {
                        kind,
                        ports,
                        endpoints: Vec::new(),
                    },
                );
        }
        for slice in slices {
            let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_deref(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            let Some(entry) = records
                .services
                .get_mut(&ns.to_ascii_lowercase())
                .and_then(|m| m.get_mut(&svc.to_ascii_lowercase()))
            else {
                continue;
            };
            if slice.address_type == "FQDN" {
                continue;
            }
            let ports: Vec<PortEntry> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(PortEntry {
                        name: p.name.as_deref().unwrap_or("").to_ascii_lowercase(),
                        protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                        port: u16::try_from(p.port?).ok()?,
                    })
                })
                .collect();
            for ep in &slice.endpoints {
                // A nil `ready` means ready (the EndpointSlice API's rule).
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                let hostname = ep
                    .hostname
                    .as_deref()
                    .filter(|h| !h.is_empty())
                    .map(str::to_ascii_lowercase);
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else {
                        continue;
                    };
                    if entry.endpoints.iter().any(|e| e.ip == ip) {
                        continue;
                    }
                    entry.endpoints.push(EndpointEntry {
                        ip,
                        hostname: hostname.clone(),
                        ports: ports.clone(),
                    });
                }
            }
        }
        // A stable order: answers do not reshuffle between identical snapshots.
        for svcs in records.services.values_mut() {
            for entry in svcs.values_mut() {
                entry.endpoints.sort_by_key(|e| e.ip);
            }
        }
        Ok(records)
    }

    /// Serve records with this TTL instead of [`DEFAULT_TTL`].
    pub fn with_ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// The cluster domain (fully qualified, lower-case).
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// How many Services the snapshot holds.
    pub fn service_count(&self) -> usize {
        self.services.values().map(HashMap::len).sum()
    }

    /// Answer the question `name` `qtype`.
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Lookup {
        if !self.zone.zone_of(name) {
            return Lookup::Outside;
        }
        let depth = usize::from(name.num_labels() - self.zone.num_labels());
        // Labels below the zone, nearest the zone first.
        let mut rel: Vec<String> = name
            .iter()
            .take(depth)
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        rel.reverse();
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        Lookup::Answer(self.answer(&name, &rel, qtype))
    }

    fn answer(&self, name: &Name, rel: &[String], qtype: RecordType) -> Answer {
        let labels: Vec<&str> = rel.iter().map(String::as_str).collect();
        match labels.as_slice() {
            [] => match qtype {
                RecordType::SOA => self.positive(vec![self.soa()], vec![]),
                RecordType::NS => {
                    let ns = self.ns_name();
                    self.positive(
                        vec![Record::from_rdata(
                            self.zone.clone(),
                            self.ttl,
                            RData::NS(NS(ns)),
                        )],
                        vec![],
                    )
                }
                _ => self.nodata(),
            },
            ["dns-version"] => match qtype {
                RecordType::TXT => self.positive(
                    vec![Record::from_rdata(
                        name.clone(),
                        self.ttl,
                        RData::TXT(TXT::new(vec!["1.1.0".into()])),
                    )],
                    vec![],
                ),
                _ => self.nodata(),
            },
            ["svc"] => self.nodata(),
            ["svc", ns] => {
                if self.services.contains_key(*ns) {
                    self.nodata()
                } else {
                    self.nxdomain()
                }
            }
            ["svc", ns, svc] => match self.service(ns, svc) {
                Some(entry) => self.service_answer(name, ns, svc, entry, qtype),
                None => self.nxdomain(),
            },
            ["svc", ns, svc, label] => {
                let Some(entry) = self.service(ns, svc) else {
                    return self.nxdomain();
                };
                if let Some(proto) = label.strip_prefix('_') {
                    // `_tcp.<svc>...`: an empty non-terminal when a port of that protocol exists.
                    return if entry.ports.iter().any(|p| p.protocol == proto) {
                        self.nodata()
                    } else {
                        self.nxdomain()
                    };
                }
                if !matches!(entry.kind, ServiceKind::Headless) {
                    return self.nxdomain();
                }
                let wanted = undashed(label);
                let found: Vec<&EndpointEntry> = entry
                    .endpoints
                    .iter()
                    .filter(|e| {
                        e.hostname.as_deref() == Some(*label)
                            || (e.hostname.is_none() && Some(e.ip) == wanted)
                    })
                    .collect();
                if found.is_empty() {
                    return self.nxdomain();
                }
                let answers = found
                    .iter()
                    .filter_map(|e| self.address(name, e.ip, qtype))
                    .collect();
                self.positive(answers, vec![])
            }
            ["svc", ns, svc, proto, port] => {
                let (Some(proto), Some(port)) = (proto.strip_prefix('_'), port.strip_prefix('_'))
                else {
                    return self.nxdomain();
                };
                let Some(entry) = self.service(ns, svc) else {
                    return self.nxdomain();
                };
                let Some(sp) = entry
                    .ports
                    .iter()
                    .find(|p| p.protocol == proto && p.name == port)
                else {
                    return self.nxdomain();
                };
                if qtype != RecordType::SRV && qtype != RecordType::ANY {
                    return self.nodata();
                }
                let (answers, additionals) =
                    self.srv(name, ns, svc, entry, std::slice::from_ref(sp));
                self.positive(answers, additionals)
            }
            ["pod", _ns, label] => match undashed(label) {
                Some(ip) => {
                    let answers = self.address(name, ip, qtype).into_iter().collect();
                    self.positive(answers, vec![])
                }
                None => self.nxdomain(),
            },
            ["pod", ..] if labels.len() < 3 => self.nodata(),
            _ => self.nxdomain(),
        }
    }

    fn service(&self, ns: &str, svc: &str) -> Option<&ServiceEntry> {
        self.services.get(ns).and_then(|m| m.get(svc))
    }

    fn service_answer(
        &self,
        name: &Name,
        ns: &str,
        svc: &str,
        entry: &ServiceEntry,
        qtype: RecordType,
    ) -> Answer {
        match (&entry.kind, qtype) {
            (ServiceKind::ExternalName(target), _) => {
                // A CNAME answers every type at the name (the resolver follows it).
                self.positive(
                    vec![Record::from_rdata(
                        name.clone(),
                        self.ttl,
                        RData::CNAME(CNAME(target.clone())),
                    )],
                    vec![],
                )
            }
            (_, RecordType::SRV) => {
                let ports: Vec<PortEntry> = entry
                    .ports
                    .iter()
                    .filter(|p| !p.name.is_empty())
                    .cloned()
                    .collect();
                let (answers, additionals) = self.srv(name, ns, svc, entry, &ports);
                self.positive(answers, additionals)
            }
            (ServiceKind::ClusterIp(ips), _) => {
                let answers = ips
                    .iter()
                    .filter_map(|ip| self.address(name, *ip, qtype))
                    .collect();
                self.positive(answers, vec![])
            }
            (ServiceKind::Headless, _) => {
                let answers = entry
                    .endpoints
                    .iter()
                    .filter_map(|e| self.address(name, e.ip, qtype))
                    .collect();
                self.positive(answers, vec![])
            }
        }
    }

    /// SRV records for `ports` of a Service (targets and their addresses).
    fn srv(
        &self,
        name: &Name,
        ns: &str,
        svc: &str,
        entry: &ServiceEntry,
        ports: &[PortEntry],
    ) -> (Vec<Record>, Vec<Record>) {
        let svc_name = self.service_name(ns, svc);
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        match &entry.kind {
            ServiceKind::ClusterIp(ips) => {
                let weight = (100 / ports.len().max(1)) as u16;
                for p in ports {
                    answers.push(Record::from_rdata(
                        name.clone(),
                        self.ttl,
                        RData::SRV(SRV::new(0, weight, p.port, svc_name.clone())),
                    ));
                }
                if !ports.is_empty() {
                    for ip in ips {
                        additionals.push(address_record(&svc_name, *ip, self.ttl));
                    }
                }
            }
            ServiceKind::Headless => {
                let mut targets = Vec::new();
                for p in ports {
                    for e in &entry.endpoints {
                        // The endpoint's own port of that name (its targetPort).
                        let Some(ep) = e
                            .ports
                            .iter()
                            .find(|ep| ep.name == p.name && ep.protocol == p.protocol)
                        else {
                            continue;
                        };
                        let Ok(target) =
                            Name::from_ascii(e.label()).and_then(|l| l.append_domain(&svc_name))
                        else {
                            continue;
                        };
                        targets.push((ep.port, target, e.ip));
                    }
                }
                let weight = (100 / targets.len().max(1)) as u16;
                for (port, target, ip) in targets {
                    additionals.push(address_record(&target, ip, self.ttl));
                    answers.push(Record::from_rdata(
                        name.clone(),
                        self.ttl,
                        RData::SRV(SRV::new(0, weight, port, target)),
                    ));
                }
            }
            ServiceKind::ExternalName(_) => {}
        }
        (answers, additionals)
    }

    /// `<svc>.<ns>.svc.<zone>`.
    fn service_name(&self, ns: &str, svc: &str) -> Name {
        Name::from_ascii(format!("{svc}.{ns}.svc"))
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone())
    }

    /// An A or AAAA record for `ip` if it answers `qtype`.
    fn address(&self, name: &Name, ip: IpAddr, qtype: RecordType) -> Option<Record> {
        match (ip, qtype) {
            (IpAddr::V4(_), RecordType::A | RecordType::ANY)
            | (IpAddr::V6(_), RecordType::AAAA | RecordType::ANY) => {
                Some(address_record(name, ip, self.ttl))
            }
            _ => None,
        }
    }

    fn ns_name(&self) -> Name {
        Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone())
    }

    /// The zone's SOA, as CoreDNS writes it.
    fn soa(&self) -> Record {
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone());
        Record::from_rdata(
            self.zone.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                self.ns_name(),
                rname,
                1,
                7200,
                1800,
                86400,
                self.ttl,
            )),
        )
    }

    fn positive(&self, answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
        if answers.is_empty() {
            return self.nodata();
        }
        Answer {
            code: ResponseCode::NoError,
            answers,
            authorities: vec![],
            additionals,
        }
    }

    fn nodata(&self) -> Answer {
        Answer {
            code: ResponseCode::NoError,
            answers: vec![],
            authorities: vec![self.soa()],
            additionals: vec![],
        }
    }

    fn nxdomain(&self) -> Answer {
        Answer {
            code: ResponseCode::NXDomain,
            answers: vec![],
            authorities: vec![self.soa()],
            additionals: vec![],
        }
    }
}

fn address_record(name: &Name, ip: IpAddr, ttl: u32) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(ns: &str, name: &str, ip: &str, ports: &[(&str, i32)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(
        ns: &str,
        svc: &str,
        eps: &[(&str, Option<&str>, bool)],
        port: (&str, i32),
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{svc}-abc")),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(ip, host, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    hostname: host.map(str::to_owned),
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some(port.0.into()),
                port: Some(port.1),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        }
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn answer(r: &ClusterRecords, n: &str, t: RecordType) -> Answer {
        match r.lookup(&name(n), t) {
            Lookup::Answer(a) => a,
            Lookup::Outside => panic!("{n} outside"),
        }
    }

    #[test]
    fn service_headless_srv_and_negative_answers() {
        let services = [
            svc("default", "web", "10.96.0.10", &[("http", 80)]),
            svc("db", "pg", "None", &[("pg", 5432)]),
        ];
        let slices = [slice(
            "db",
            "pg",
            &[
                ("10.1.0.5", Some("pg-0"), true),
                ("10.1.0.6", None, true),
                ("10.1.0.7", None, false),
            ],
            ("pg", 15432),
        )];
        let r = ClusterRecords::build("cluster.local", &services, &slices).unwrap();

        let a = answer(&r, "WEB.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(
            a.answers[0].data,
            RData::A(A("10.96.0.10".parse().unwrap()))
        );
        assert!(answer(&r, "web.default.svc.cluster.local.", RecordType::AAAA).is_nodata());
        let nx = answer(&r, "nope.default.svc.cluster.local.", RecordType::A);
        assert_eq!(nx.code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities.len(), 1);
        assert!(answer(&r, "default.svc.cluster.local.", RecordType::A).is_nodata());
        assert_eq!(
            answer(&r, "nons.svc.cluster.local.", RecordType::A).code,
            ResponseCode::NXDomain
        );

        let h = answer(&r, "pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(h.answers.len(), 2, "only ready endpoints");
        let pod = answer(&r, "pg-0.pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(
            pod.answers[0].data,
            RData::A(A("10.1.0.5".parse().unwrap()))
        );
        let dashed = answer(&r, "10-1-0-6.pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(dashed.answers.len(), 1);
        assert_eq!(
            answer(&r, "10-1-0-7.pg.db.svc.cluster.local.", RecordType::A).code,
            ResponseCode::NXDomain
        );

        let srv = answer(
            &r,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        let RData::SRV(s) = &srv.answers[0].data else {
            panic!()
        };
        assert_eq!(s.port, 80);
        assert_eq!(s.target, name("web.default.svc.cluster.local."));
        assert_eq!(srv.additionals.len(), 1);
        let hsrv = answer(&r, "_pg._tcp.pg.db.svc.cluster.local.", RecordType::SRV);
        assert_eq!(hsrv.answers.len(), 2);
        assert!(
            hsrv.answers
                .iter()
                .all(|a| matches!(&a.data, RData::SRV(s) if s.port == 15432))
        );
        assert_eq!(
            answer(
                &r,
                "_nope._tcp.web.default.svc.cluster.local.",
                RecordType::SRV
            )
            .code,
            ResponseCode::NXDomain
        );
        assert!(answer(&r, "_tcp.web.default.svc.cluster.local.", RecordType::SRV).is_nodata());

        assert_eq!(
            r.lookup(&name("example.com."), RecordType::A),
            Lookup::Outside
        );
        let p = answer(&r, "10-1-2-3.default.pod.cluster.local.", RecordType::A);
        assert_eq!(p.answers[0].data, RData::A(A("10.1.2.3".parse().unwrap())));
        assert_eq!(
            answer(&r, "cluster.local.", RecordType::SOA).answers.len(),
            1
        );
    }
}
