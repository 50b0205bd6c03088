//! Masquerade and published ports for real, in network namespaces: a "host" namespace between a
//! "container" namespace (10.77.0.0/24, behind the host) and an "outside" namespace (10.78.0.0/24,
//! with no route to the containers).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::Result;
use berth_proxy::{HostNat, Masquerade, NatRules, Nft, Protocol, PublishedPort};
use common::{NetNs, Server, fetch, fetch_udp, nft_list, veth};

struct Topology {
    host: NetNs,
    ctr: NetNs,
    out: NetNs,
}

fn topology() -> Result<Topology> {
    let host = NetNs::new("pxh")?;
    let ctr = NetNs::new("pxc")?;
    let out = NetNs::new("pxo")?;
    veth(&host, "ctr0", "10.77.0.1/24", &ctr, "eth0", "10.77.0.2/24")?;
    veth(&host, "ext0", "10.78.0.1/24", &out, "eth0", "10.78.0.2/24")?;
    ctr.ip(&["route", "add", "default", "via", "10.77.0.1"])?;
    host.sysctl("net.ipv4.ip_forward", "1")?;
    Ok(Topology { host, ctr, out })
}

fn apply(ns: &NetNs, nat: &HostNat, rules: NatRules) -> Result<()> {
    let nat = nat.clone();
    ns.run(move || -> berth_proxy::Result<()> { nat.apply(&Nft::open()?, &rules) })??;
    Ok(())
}

fn delete(ns: &NetNs, nat: &HostNat) -> Result<()> {
    let nat = nat.clone();
    ns.run(move || -> berth_proxy::Result<()> { nat.delete(&Nft::open()?) })??;
    Ok(())
}

/// Deletes the table even when the test fails half-way.
struct TableGuard<'a>(&'a NetNs, HostNat);

impl Drop for TableGuard<'_> {
    fn drop(&mut self) {
        let _ = delete(self.0, &self.1);
    }
}

#[test]
fn masquerade_lets_a_subnet_reach_outside_and_goes_away_with_its_table() -> Result<()> {
    if !common::privileged("masquerade in netns") {
        return Ok(());
    }
    let t = topology()?;
    let _server = Server::tcp(&t.out, "10.78.0.2:9000", "out")?;
    // Without masquerade the outside host cannot answer (it has no route to 10.77.0.0/24).
    assert!(fetch(&t.ctr, "10.78.0.2:9000").is_err());

    let nat = HostNat::new(berth_testutil::unique_name("nat"));
    let _guard = TableGuard(&t.host, nat.clone());
    apply(
        &t.host,
        &nat,
        NatRules {
            masquerade: vec![Masquerade::subnet("10.77.0.0/24".parse()?)],
            ..NatRules::default()
        },
    )?;
    assert_eq!(fetch(&t.ctr, "10.78.0.2:9000")?, "out 10.78.0.1");
    let listing = nft_list(&t.host, nat.name()).expect("table exists");
    assert!(listing.contains("masquerade"), "{listing}");

    delete(&t.host, &nat)?;
    assert!(nft_list(&t.host, nat.name()).is_none());
    assert!(fetch(&t.ctr, "10.78.0.2:9000").is_err());
    // Deleting again is fine.
    delete(&t.host, &nat)?;
    Ok(())
}

#[test]
fn published_ports_answer_from_outside_from_the_host_and_from_localhost() -> Result<()> {
    if !common::privileged("published ports in netns") {
        return Ok(());
    }
    let t = topology()?;
    let _web = Server::tcp(&t.ctr, "0.0.0.0:80", "ctr")?;
    let _dns = Server::udp(&t.ctr, "0.0.0.0:53", "ctr-udp")?;
    let nat = HostNat::new(berth_testutil::unique_name("pub"));
    let _guard = TableGuard(&t.host, nat.clone());
    let ctr = Ipv4Addr::new(10, 77, 0, 2);
    apply(
        &t.host,
        &nat,
        NatRules {
            masquerade: vec![Masquerade::subnet("10.77.0.0/24".parse()?)],
            ports: vec![
                PublishedPort {
                    protocol: Protocol::Tcp,
                    host_ip: None,
                    host_port: 8080,
                    container: SocketAddrV4::new(ctr, 80),
                },
                PublishedPort {
                    protocol: Protocol::Udp,
                    host_ip: None,
                    host_port: 5353,
                    container: SocketAddrV4::new(ctr, 53),
                },
                PublishedPort {
                    protocol: Protocol::Tcp,
                    host_ip: Some(Ipv4Addr::new(10, 78, 0, 1)),
                    host_port: 8081,
                    container: SocketAddrV4::new(ctr, 80),
                },
            ],
            localhost_via: vec!["ctr0".into()],
        },
    )?;
    let listing = nft_list(&t.host, nat.name()).expect("table exists");
    assert!(listing.contains("dnat to 10.77.0.2:80"), "{listing}");

    // From outside: the client's address is kept, as Docker keeps it.
    assert_eq!(fetch(&t.out, "10.78.0.1:8080")?, "ctr 10.78.0.2");
    assert_eq!(fetch_udp(&t.out, "10.78.0.1:5353")?, "ctr-udp 10.78.0.2");
    assert_eq!(fetch(&t.out, "10.78.0.1:8081")?, "ctr 10.78.0.2");
    // From the host itself, to its own address and to 127.0.0.1 (masqueraded).
    assert!(fetch(&t.host, "10.78.0.1:8080")?.starts_with("ctr "));
    assert_eq!(fetch(&t.host, "127.0.0.1:8080")?, "ctr 10.77.0.1");
    // Port 8081 is published on 10.78.0.1 only.
    assert!(fetch(&t.host, "127.0.0.1:8081").is_err());
    // Hairpin: the container reaches itself through the host's published port.
    assert!(fetch(&t.ctr, "10.78.0.1:8080")?.starts_with("ctr "));

    delete(&t.host, &nat)?;
    assert!(nft_list(&t.host, nat.name()).is_none());
    assert!(fetch(&t.out, "10.78.0.1:8080").is_err());
    Ok(())
}

#[test]
fn bad_rules_are_refused_and_leave_the_installed_table_unchanged() -> Result<()> {
    if !common::privileged("nat validation in netns") {
        return Ok(());
    }
    let host = NetNs::new("pxv")?;
    let nat = HostNat::new(berth_testutil::unique_name("bad"));
    let _guard = TableGuard(&host, nat.clone());
    let good = NatRules {
        masquerade: vec![Masquerade::subnet("10.77.0.0/24".parse()?)],
        ..NatRules::default()
    };
    apply(&host, &nat, good)?;
    let before = nft_list(&host, nat.name()).expect("table exists");
    let port = |hp, ip: Option<Ipv4Addr>| PublishedPort {
        protocol: Protocol::Tcp,
        host_ip: ip,
        host_port: hp,
        container: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 80),
    };
    for bad in [
        NatRules {
            ports: vec![port(0, None)],
            ..NatRules::default()
        },
        NatRules {
            ports: vec![port(80, None), port(80, Some(Ipv4Addr::LOCALHOST))],
            ..NatRules::default()
        },
        NatRules {
            localhost_via: vec!["../../etc".into()],
            ..NatRules::default()
        },
    ] {
        let err = apply(&host, &nat, bad).unwrap_err();
        assert!(err.to_string().contains("invalid"), "{err:#}");
    }
    assert_eq!(
        nft_list(&host, nat.name()).as_deref(),
        Some(before.as_str())
    );
    // A bad table name is refused too, and creates nothing.
    let long = HostNat::new("x".repeat(300));
    assert!(apply(&host, &long, NatRules::default()).is_err());
    Ok(())
}
