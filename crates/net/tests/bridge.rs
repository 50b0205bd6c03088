//! The bridge network for real (root): nodes played by network namespaces, pods in namespaces of
//! their own, TCP between them by pod address, and nothing left behind after teardown.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_net::netns::{Netns, in_netns};
use berth_net::{BridgeConfig, BridgeNetwork, Ipv4Net, Netlink, PeerRoute, PodNetwork};

fn root(what: &str) -> bool {
    berth_testutil::require_root(what)
}

/// A simulated host: a namespace with a bridge network in it.
struct Node {
    net: Option<BridgeNetwork>,
    ns: Netns,
}

impl Node {
    fn new(dir: &Path, name: &str, subnet: &str) -> Node {
        let ns = Netns::create(dir.join(format!("{name}.netns"))).unwrap();
        let lo = Netlink::open(Some(ns.path())).unwrap();
        let idx = lo.link("lo").unwrap().unwrap().index;
        lo.set_up(idx).unwrap();
        let net = BridgeNetwork::new(
            BridgeConfig::new("cbr0", subnet.parse().unwrap(), dir.join(name))
                .host_netns(ns.path()),
        )
        .unwrap();
        Node { net: Some(net), ns }
    }

    fn net(&self) -> &BridgeNetwork {
        self.net.as_ref().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The namespace takes its links with it; destroy first to exercise it even on failure.
        if let Some(net) = self.net.take() {
            let _ = net.destroy();
        }
    }
}

/// Connects two simulated hosts with a veth "wire": a gets 192.168.50.1/24, b .2.
fn wire(a: &Node, b: &Node) {
    let nl_a = Netlink::open(Some(a.ns.path())).unwrap();
    let b_file = std::fs::File::open(b.ns.path()).unwrap();
    let ia = nl_a
        .add_veth("wire0", "wire0", b_file.as_fd(), None)
        .unwrap();
    nl_a.add_address(ia, "192.168.50.1/24".parse().unwrap())
        .unwrap();
    let nl_b = Netlink::open(Some(b.ns.path())).unwrap();
    let ib = nl_b.link("wire0").unwrap().unwrap().index;
    nl_b.add_address(ib, "192.168.50.2/24".parse().unwrap())
        .unwrap();
    nl_b.set_up(ib).unwrap();
}

/// Listens in `netns` on `addr:0`, answers one connection's "ping" with "pong".
fn serve_once(netns: PathBuf, addr: Ipv4Addr) -> (u16, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        in_netns(Some(&netns), move || {
            let l = TcpListener::bind((addr, 0)).unwrap();
            tx.send(l.local_addr().unwrap().port()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"ping");
            s.write_all(b"pong").unwrap();
            Ok(())
        })
        .unwrap();
    });
    (rx.recv_timeout(Duration::from_secs(10)).unwrap(), handle)
}

fn ping_from(netns: &Path, to: SocketAddr) -> std::io::Result<String> {
    let r = in_netns(Some(netns), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).map_err(|e| {
            berth_net::Error::Io {
                op: "connect",
                path: to.to_string().into(),
                source: e,
            }
        })?;
        s.write_all(b"ping").unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        Ok(buf)
    });
    r.map_err(std::io::Error::other)
}

#[test]
fn pods_on_two_simulated_nodes_talk_over_tcp() {
    if !root("creates network namespaces, bridges and veths") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(dir.path(), "node-a", "10.244.0.0/24");
    let b = Node::new(dir.path(), "node-b", "10.244.1.0/24");
    wire(&a, &b);
    let via_b = PeerRoute {
        pod_cidr: "10.244.1.0/24".parse().unwrap(),
        node_ip: "192.168.50.2".parse().unwrap(),
    };
    let via_a = PeerRoute {
        pod_cidr: "10.244.0.0/24".parse().unwrap(),
        node_ip: "192.168.50.1".parse().unwrap(),
    };
    // Each node is handed every node (its own too); its own subnet and local addresses are skipped.
    let changes = a.net().sync_routes(&[via_a, via_b]).unwrap();
    assert_eq!(changes.added, vec![via_b]);
    assert_eq!(
        b.net().sync_routes(&[via_a, via_b]).unwrap().added,
        vec![via_a]
    );
    // Idempotent.
    assert_eq!(
        a.net().sync_routes(&[via_a, via_b]).unwrap(),
        Default::default()
    );

    let pod_a = Netns::create(dir.path().join("pod-a")).unwrap();
    let pod_b = Netns::create(dir.path().join("pod-b")).unwrap();
    let got_a = a.net().setup(pod_a.path(), "uid-a").unwrap();
    let got_b = b.net().setup(pod_b.path(), "uid-b").unwrap();
    assert_eq!(got_a.address, "10.244.0.2/24".parse::<Ipv4Net>().unwrap());
    assert_eq!(got_b.address, "10.244.1.2/24".parse::<Ipv4Net>().unwrap());
    assert_eq!(got_b.gateway, Ipv4Addr::new(10, 244, 1, 1));
    // Setup again (an agent that restarted mid-way): same address, still one port.
    assert_eq!(a.net().setup(pod_a.path(), "uid-a").unwrap(), got_a);
    assert_eq!(a.net().ports().unwrap(), vec![got_a.host_interface.clone()]);

    let (port, server) = serve_once(pod_b.path().to_owned(), got_b.address.addr());
    let answer = ping_from(pod_a.path(), (got_b.address.addr(), port).into()).unwrap();
    assert_eq!(answer, "pong");
    server.join().unwrap();

    // Node b leaves: a's route to it goes.
    let changes = a.net().sync_routes(&[via_a]).unwrap();
    assert_eq!(changes.removed, vec![via_b.pod_cidr]);

    // Teardown frees the address and the port; the pod's namespace has no eth0 any more.
    a.net().teardown("uid-a").unwrap();
    a.net().teardown("uid-a").unwrap();
    assert!(a.net().ports().unwrap().is_empty());
    assert!(a.net().ipam().leases().unwrap().is_empty());
    let in_pod = Netlink::open(Some(pod_a.path())).unwrap();
    assert!(in_pod.link("eth0").unwrap().is_none());
    b.net().teardown("uid-b").unwrap();
    assert!(b.net().ports().unwrap().is_empty());
}

#[test]
fn failed_setup_leaves_nothing_and_retain_collects_orphans() {
    if !root("creates network namespaces, bridges and veths") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(dir.path(), "node", "10.245.0.0/29");
    // A namespace path that is no namespace: refused before anything is made.
    let not_ns = dir.path().join("plain-file");
    std::fs::write(&not_ns, b"").unwrap();
    assert!(a.net().setup(&not_ns, "bad").is_err());
    assert!(a.net().setup(&dir.path().join("missing"), "bad").is_err());
    assert!(a.net().ports().unwrap().is_empty());
    assert!(a.net().ipam().leases().unwrap().is_empty());

    // Pods whose ids the caller no longer knows are torn down by retain.
    let pods: Vec<Netns> = (0..3)
        .map(|i| Netns::create(dir.path().join(format!("p{i}"))).unwrap())
        .collect();
    for (i, p) in pods.iter().enumerate() {
        a.net().setup(p.path(), &format!("id{i}")).unwrap();
    }
    assert_eq!(a.net().ports().unwrap().len(), 3);
    // A new BridgeNetwork over the same state (an agent restart) adopts the bridge and leases.
    let again = BridgeNetwork::new(
        BridgeConfig::new(
            "cbr0",
            "10.245.0.0/29".parse().unwrap(),
            dir.path().join("node"),
        )
        .host_netns(a.ns.path()),
    )
    .unwrap();
    assert_eq!(
        again.attachment("id1").unwrap().unwrap(),
        a.net().attachment("id1").unwrap().unwrap()
    );
    let mut gone = again.retain(&["id1"]).unwrap();
    gone.sort();
    assert_eq!(gone, vec!["id0".to_owned(), "id2".to_owned()]);
    assert_eq!(a.net().ports().unwrap(), vec![a.net().host_veth("id1")]);
    assert_eq!(a.net().ipam().leases().unwrap().len(), 1);
}

#[test]
fn host_links_and_routes_as_they_were_after_destroy() {
    if !root("creates a bridge in the host's network namespace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unique = berth_testutil::unique_name("net");
    let bridge = format!("bt{}", &berth_net::host_veth_name("", &unique)[2..12]);
    let third = (std::process::id() % 200 + 20) as u8;
    let subnet: Ipv4Net = format!("10.251.{third}.0/24").parse().unwrap();
    let host = Netlink::open(None).unwrap();
    let links_before: Vec<String> = host.links().unwrap().into_iter().map(|l| l.name).collect();

    let net =
        BridgeNetwork::new(BridgeConfig::new(&bridge, subnet, dir.path().join("state"))).unwrap();
    let pod = Netns::create(dir.path().join("pod")).unwrap();
    let got = net.setup(pod.path(), "p").unwrap();
    // The host reaches the pod through the bridge.
    let (port, server) = serve_once(pod.path().to_owned(), got.address.addr());
    let mut s =
        TcpStream::connect_timeout(&(got.address.addr(), port).into(), Duration::from_secs(5))
            .unwrap();
    s.write_all(b"ping").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "pong");
    server.join().unwrap();
    let veth = got.host_interface.clone();
    assert!(host.link(&veth).unwrap().is_some());

    net.teardown("p").unwrap();
    net.destroy().unwrap();
    let links_after: Vec<String> = host.links().unwrap().into_iter().map(|l| l.name).collect();
    assert!(!links_after.contains(&bridge) && !links_after.contains(&veth));
    // Every link that was there is still there (others' tests may add links meanwhile).
    for l in &links_before {
        assert!(links_after.contains(l), "link {l} disappeared");
    }
    assert!(
        !host
            .routes()
            .unwrap()
            .iter()
            .any(|r| r.destination == subnet),
        "a route to {subnet} is left"
    );
}
