//! LoadBalancer addresses from a configured pool, as k3s's service load balancer and MetalLB's
//! layer-2 mode give them on bare metal: each `type: LoadBalancer` Service gets one IPv4
//! address (its `spec.loadBalancerIP` when that is in the pool and free), recorded in
//! `status.loadBalancer.ingress`; the proxy then routes it like an external IP.
//!
//! On one host, packets for the address from the host itself are DNATed in the output hook
//! (a route to the address must exist, the default route does); for other machines of the L2
//! segment to reach it, the address must also answer ARP: put it on a dummy interface of the
//! node (MetalLB's speaker answers ARP itself instead). The allocation here is pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;

use crate::error::{Error, Result};
use crate::nat::Ipv4Net;

/// A pool of addresses: inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbPool {
    ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
}

impl LbPool {
    /// Parses `10.0.0.10-10.0.0.20,192.0.2.0/28` (ranges and CIDRs; a CIDR loses its network and
    /// broadcast addresses when it is larger than /31).
    pub fn parse(spec: &str) -> Result<Self> {
        let mut ranges = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |why: &str| Error::invalid(format!("address pool entry {part:?}"), why);
            if let Some((a, b)) = part.split_once('-') {
                let a: Ipv4Addr = a.trim().parse().map_err(|_| bad("not an IPv4 address"))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|_| bad("not an IPv4 address"))?;
                if a > b {
                    return Err(bad("range ends before it starts"));
                }
                ranges.push((a, b));
            } else if part.contains('/') {
                let net: Ipv4Net = part.parse()?;
                let start = u32::from(net.network());
                let size = 1u64 << (32 - u32::from(net.prefix));
                let mut end = (u64::from(start) + size - 1) as u32;
                let mut start = start;
                if net.prefix < 31 {
                    start += 1;
                    end -= 1;
                }
                ranges.push((Ipv4Addr::from(start), Ipv4Addr::from(end)));
            } else {
                let a: Ipv4Addr = part.parse().map_err(|_| bad("not an IPv4 address"))?;
                ranges.push((a, a));
            }
        }
        if ranges.is_empty() {
            return Err(Error::invalid("address pool", "empty"));
        }
        Ok(LbPool { ranges })
    }

    /// Whether `a` is in the pool.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        self.ranges.iter().any(|(s, e)| *s <= a && a <= *e)
    }

    fn iter(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|(s, e)| (u32::from(*s)..=u32::from(*e)).map(Ipv4Addr::from))
    }
}

/// `(namespace, name)`.
pub type ServiceKey = (String, String);

fn key(s: &Service) -> ServiceKey {
    (
        s.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        s.metadata.name.clone().unwrap_or_default(),
    )
}

fn is_lb(s: &Service) -> bool {
    s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && s.spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.as_ref())
            .is_none()
}

/// The IPv4 ingress address a Service's status holds, if any.
pub fn ingress_ip(s: &Service) -> Option<Ipv4Addr> {
    s.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .iter()
        .find_map(|i| i.ip.as_deref()?.parse().ok())
}

/// Decides addresses for LoadBalancer Services that have none yet (and takes away addresses of
/// Services that are no longer LoadBalancers). Returns the status changes: `Some(ip)` to set,
/// `None` to clear. Addresses already held stay with their Service; a Service whose
/// `spec.loadBalancerIP` is taken or outside the pool gets nothing (it stays pending, as with
/// MetalLB). When the pool is exhausted, the remaining Services stay pending.
pub fn allocate(pool: &LbPool, services: &[Service]) -> BTreeMap<ServiceKey, Option<Ipv4Addr>> {
    let mut used = BTreeSet::new();
    let mut kept = BTreeSet::new();
    let mut changes = BTreeMap::new();
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| key(s));
    for s in &sorted {
        if let Some(ip) = ingress_ip(s) {
            if is_lb(s) && pool.contains(ip) && used.insert(ip) {
                kept.insert(key(s));
                continue;
            }
            if !is_lb(s) && pool.contains(ip) {
                changes.insert(key(s), None);
            }
        }
    }
    for s in sorted {
        if !is_lb(s) || kept.contains(&key(s)) {
            continue;
        }
        let wanted = s
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
            .filter(|ip| !ip.is_empty());
        let ip = match wanted {
            Some(w) => w
                .parse::<Ipv4Addr>()
                .ok()
                .filter(|ip| pool.contains(*ip) && !used.contains(ip)),
            None => pool.iter().find(|ip| !used.contains(ip)),
        };
        if let Some(ip) = ip {
            used.insert(ip);
            changes.insert(key(s), Some(ip));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lb(name: &str, want: Option<&str>, has: Option<&str>) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "loadBalancerIP": want},
            "status": {"loadBalancer": {"ingress": has.map(|ip| vec![json!({"ip": ip})])}},
        }))
        .unwrap()
    }

    #[test]
    fn pools_parse_ranges_cidrs_and_single_addresses() {
        let p = LbPool::parse("10.0.0.10-10.0.0.12, 192.0.2.0/30,198.51.100.7").unwrap();
        let all: Vec<_> = p.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            all,
            [
                "10.0.0.10",
                "10.0.0.11",
                "10.0.0.12",
                "192.0.2.1",
                "192.0.2.2",
                "198.51.100.7"
            ]
        );
        for bad in ["", "10.0.0.5-10.0.0.1", "x", "10.0.0.0/40"] {
            assert!(LbPool::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allocation_keeps_held_addresses_honours_requests_and_stops_when_exhausted() {
        let pool = LbPool::parse("10.0.0.1-10.0.0.2").unwrap();
        let svcs = [
            lb("a", None, Some("10.0.0.1")),
            lb("b", None, None),
            lb("c", None, None),
            lb("d", Some("10.0.0.1"), None),
        ];
        let got = allocate(&pool, &svcs);
        let k = |n: &str| ("default".to_string(), n.to_string());
        assert_eq!(got.get(&k("a")), None, "a keeps its address");
        assert_eq!(got.get(&k("b")), Some(&Some(Ipv4Addr::new(10, 0, 0, 2))));
        assert_eq!(got.get(&k("c")), None, "pool exhausted: pending");
        assert_eq!(got.get(&k("d")), None, "requested address taken: pending");
    }
}
