//! Host NAT for one owner (`berth run`'s bridge, a node's pod network): masquerading of source
//! subnets leaving the host and published ports (host port -> container ip:port), each owner
//! in its own nftables table so that cleanup is deleting that table.
//!
//! The rules are what Docker installs with `userland-proxy: false`, written for nftables:
//!
//! ```text
//! table ip <name> {
//!   chain prerouting  { type nat hook prerouting priority dstnat; fib daddr type local jump published }
//!   chain output      { type nat hook output priority dstnat;     fib daddr type local jump published }
//!   chain published   { [ip daddr HOST_IP] meta l4proto tcp th dport 8080 dnat to 10.88.0.2:80 … }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!                       ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade
//!                       ct status dnat ip daddr 10.88.0.2 tcp dport 80 ip saddr 127.0.0.0/8 masquerade   # from localhost
//!                       ct status dnat ip daddr 10.88.0.2 tcp dport 80 ip saddr 10.88.0.0/16 masquerade  # hairpin
//!   }
//! }
//! ```
//!
//! What the caller does besides (this module does not): enable `net.ipv4.ip_forward`; connections
//! to `127.0.0.1:HOSTPORT` also need `route_localnet` on the link the containers sit behind
//! ([`NatRules::localhost_via`] sets it, as Docker does, and leaves it set on delete). IPv4 only.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::nft::{Chain, ChainType, Hook, Nft, Rule, TCP, Table, UDP, priority};

/// An IPv4 subnet, `10.88.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    /// An address in the subnet (host bits are ignored).
    pub addr: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub prefix: u8,
}

impl Ipv4Net {
    /// `addr/prefix`; errors when `prefix > 32`.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self> {
        if prefix > 32 {
            return Err(Error::invalid(
                format!("subnet {addr}/{prefix}"),
                "prefix length above 32",
            ));
        }
        Ok(Ipv4Net { addr, prefix })
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(u32::from(self.addr) & mask)
    }

    /// Whether `a` is inside.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        Ipv4Net {
            addr: a,
            prefix: self.prefix,
        }
        .network()
            == self.network()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid(format!("subnet {s:?}"), why);
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
        let addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix = p.parse().map_err(|_| bad("prefix is not a number"))?;
        Ipv4Net::new(addr, prefix)
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => TCP,
            Protocol::Udp => UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Masquerade traffic from `source` that leaves it (the destination is outside `source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    /// The subnet (a bridge's or a node's pod CIDR).
    pub source: Ipv4Net,
    /// Additionally, don't masquerade when leaving through this interface (Docker's
    /// `! -o docker0`).
    pub except_out_interface: Option<String>,
}

impl Masquerade {
    /// Masquerade `source` leaving its subnet.
    pub fn subnet(source: Ipv4Net) -> Self {
        Masquerade {
            source,
            except_out_interface: None,
        }
    }
}

/// A host port forwarded to a container (`-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/udp]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublishedPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Only this host address (`None`: every local address, 127.0.0.1 included).
    pub host_ip: Option<Ipv4Addr>,
    /// The host port.
    pub host_port: u16,
    /// Where connections go.
    pub container: SocketAddrV4,
}

/// Everything one owner's table holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatRules {
    /// Source subnets to masquerade.
    pub masquerade: Vec<Masquerade>,
    /// Published ports.
    pub ports: Vec<PublishedPort>,
    /// Links behind which published containers sit; [`HostNat::apply`] sets `route_localnet` on
    /// each so `127.0.0.1:HOST_PORT` works.
    pub localhost_via: Vec<String>,
}

const LOOPBACK: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(127, 0, 0, 0),
    prefix: 8,
};

/// The table for `rules` (pure; [`HostNat::apply`] installs it).
pub fn nat_table(name: &str, rules: &NatRules) -> Result<Table> {
    for (i, p) in rules.ports.iter().enumerate() {
        let what = || format!("published port {}/{}", p.host_port, p.protocol);
        if p.host_port == 0 || p.container.port() == 0 {
            return Err(Error::invalid(what(), "port 0"));
        }
        if p.container.ip().is_unspecified() {
            return Err(Error::invalid(what(), "container address 0.0.0.0"));
        }
        // Two mappings of one host port collide unless both name different host addresses.
        let clash = rules.ports[..i].iter().any(|q| {
            q.protocol == p.protocol
                && q.host_port == p.host_port
                && (q.host_ip.is_none() || p.host_ip.is_none() || q.host_ip == p.host_ip)
        });
        if clash {
            return Err(Error::invalid(what(), "published twice"));
        }
    }
    for i in &rules.localhost_via {
        check_ifname(i)?;
    }
    for m in &rules.masquerade {
        if let Some(i) = &m.except_out_interface {
            check_ifname(i)?;
        }
    }

    let mut table = Table::new(name);
    let mut pre = Chain::base(
        "prerouting",
        Hook::Prerouting,
        ChainType::Nat,
        priority::DSTNAT,
    );
    let mut out = Chain::base("output", Hook::Output, ChainType::Nat, priority::DSTNAT);
    let mut published = Chain::regular("published");
    let mut post = Chain::base(
        "postrouting",
        Hook::Postrouting,
        ChainType::Nat,
        priority::SRCNAT,
    );
    if !rules.ports.is_empty() {
        pre.push(Rule::new().daddr_local().jump("published"));
        out.push(Rule::new().daddr_local().jump("published"));
    }
    for p in &rules.ports {
        let mut r = Rule::new();
        if let Some(ip) = p.host_ip {
            r = r.daddr(ip, true);
        }
        published.push(
            r.l4proto(p.protocol.number())
                .dport(p.host_port)
                .dnat(*p.container.ip(), Some(p.container.port()))
                .comment(format!(
                    "{}{}/{} -> {}",
                    p.host_ip.map(|i| format!("{i}:")).unwrap_or_default(),
                    p.host_port,
                    p.protocol,
                    p.container
                )),
        );
    }
    for m in &rules.masquerade {
        let mut r = Rule::new()
            .saddr_in(m.source.network(), m.source.prefix, true)
            .daddr_in(m.source.network(), m.source.prefix, false);
        if let Some(i) = &m.except_out_interface {
            r = r.oifname(i, false);
        }
        post.push(
            r.masquerade(false)
                .comment(format!("masquerade {}", m.source)),
        );
    }
    let mut hairpin_seen = HashSet::new();
    for p in &rules.ports {
        let key = (p.protocol, p.container);
        if !hairpin_seen.insert(key) {
            continue;
        }
        let sources = std::iter::once(LOOPBACK).chain(
            rules
                .masquerade
                .iter()
                .map(|m| m.source)
                .filter(|s| s.contains(*p.container.ip())),
        );
        for src in sources {
            post.push(
                Rule::new()
                    .ct_dnat()
                    .daddr(*p.container.ip(), true)
                    .l4proto(p.protocol.number())
                    .dport(p.container.port())
                    .saddr_in(src.network(), src.prefix, true)
                    .masquerade(false),
            );
        }
    }
    table.chains = vec![pre, out, published, post];
    Ok(table)
}

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', '\0', ' '])
        || name == "."
        || name == ".."
    {
        return Err(Error::invalid(
            format!("interface name {name:?}"),
            "must be 1 to 15 bytes without '/', space or NUL",
        ));
    }
    Ok(())
}

/// One owner's NAT table.
#[derive(Debug, Clone)]
pub struct HostNat {
    name: String,
}

impl HostNat {
    /// The owner's table name (e.g. `berth-bridge`, `berth-node-a`).
    pub fn new(table: impl Into<String>) -> Self {
        HostNat { name: table.into() }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replaces the table's content with `rules`, atomically; on an error nothing changed.
    pub fn apply(&self, nft: &Nft, rules: &NatRules) -> Result<()> {
        let table = nat_table(&self.name, rules)?;
        table.validate()?;
        for i in &rules.localhost_via {
            allow_localhost_dnat(i)?;
        }
        nft.replace(&table)
    }

    /// Deletes the table (nothing of it is left); a missing table is fine.
    pub fn delete(&self, nft: &Nft) -> Result<()> {
        nft.delete_table(&self.name)
    }
}

/// Sets `net.ipv4.conf.<interface>.route_localnet = 1` (in the caller's network namespace), so
/// connections from 127.0.0.1 DNATed to a container on that link are routed.
pub fn allow_localhost_dnat(interface: &str) -> Result<()> {
    check_ifname(interface)?;
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/route_localnet");
    std::fs::write(&path, "1").map_err(|e| Error::Kernel {
        what: format!("writing {path}"),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(hp: u16, ip: Option<Ipv4Addr>) -> PublishedPort {
        PublishedPort {
            protocol: Protocol::Tcp,
            host_ip: ip,
            host_port: hp,
            container: SocketAddrV4::new(Ipv4Addr::new(10, 88, 0, 2), 80),
        }
    }

    #[test]
    fn subnets_parse_and_contain() {
        let n: Ipv4Net = "10.88.3.7/16".parse().unwrap();
        assert_eq!(n.to_string(), "10.88.0.0/16");
        assert!(n.contains(Ipv4Addr::new(10, 88, 200, 1)));
        assert!(!n.contains(Ipv4Addr::new(10, 89, 0, 1)));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0.0/x"] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_has_dnat_masquerade_and_hairpin_rules() {
        let t = nat_table(
            "t",
            &NatRules {
                masquerade: vec![Masquerade::subnet("10.88.0.0/16".parse().unwrap())],
                ports: vec![port(8080, None)],
                localhost_via: vec![],
            },
        )
        .unwrap();
        t.validate().unwrap();
        let names: Vec<&str> = t.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["prerouting", "output", "published", "postrouting"]);
        assert_eq!(t.chains[2].rules.len(), 1);
        // masquerade + loopback hairpin + same-subnet hairpin.
        assert_eq!(t.chains[3].rules.len(), 3);
    }

    #[test]
    fn clashing_or_zero_ports_are_refused() {
        let rules = |ports| NatRules {
            ports,
            ..NatRules::default()
        };
        let lo = Some(Ipv4Addr::LOCALHOST);
        let other = Some(Ipv4Addr::new(10, 0, 0, 1));
        assert!(nat_table("t", &rules(vec![port(0, None)])).is_err());
        assert!(nat_table("t", &rules(vec![port(80, None), port(80, lo)])).is_err());
        assert!(nat_table("t", &rules(vec![port(80, lo), port(80, None)])).is_err());
        assert!(nat_table("t", &rules(vec![port(80, lo), port(80, lo)])).is_err());
        assert!(nat_table("t", &rules(vec![port(80, lo), port(80, other)])).is_ok());
        let mut udp = port(80, None);
        udp.protocol = Protocol::Udp;
        assert!(nat_table("t", &rules(vec![port(80, None), udp])).is_ok());
        let bad_if = NatRules {
            localhost_via: vec!["a/b".into()],
            ..NatRules::default()
        };
        assert!(nat_table("t", &bad_if).is_err());
    }
}
