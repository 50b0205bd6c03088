//! Test topology: network namespaces joined by veth pairs (made with `ip`, deleted on drop), work
//! run inside a namespace on a thread that joined it, and small TCP/UDP servers that say who
//! they are and whom they saw.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Whether the netns tests can run here.
pub fn privileged(what: &str) -> bool {
    berth_testutil::require_root(what)
        && berth_testutil::require_command(what, "ip")
        && berth_testutil::require_command(what, "nft")
}

/// Runs `cmd` and fails with its stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> Result<Self> {
        let name = berth_testutil::unique_name(prefix);
        run(&["ip", "netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME args…`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["ip", "-n", self.name.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    /// `ip netns exec NAME args…`
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["ip", "netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Runs `f` on a thread that joined this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || -> Result<T> {
            enter(&path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    Ok(())
}

/// A veth pair between two namespaces with addresses `a_addr` (CIDR) on `a_if` and `b_addr`.
pub fn veth(
    a: &NetNs,
    a_if: &str,
    a_addr: &str,
    b: &NetNs,
    b_if: &str,
    b_addr: &str,
) -> Result<()> {
    run(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ])?;
    a.ip(&["addr", "add", a_addr, "dev", a_if])?;
    b.ip(&["addr", "add", b_addr, "dev", b_if])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// A TCP server in a namespace: each connection gets `"<name> <peer ip>\n"`. Stops on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn tcp(ns: &NetNs, addr: &str, name: &str) -> Result<Self> {
        let path = format!("/run/netns/{}", ns.name);
        let addr: SocketAddr = addr.parse()?;
        let name = name.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let listener = enter(&path).and_then(|_| {
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let listener = match listener {
                Ok(l) => {
                    tx.send(Ok(())).ok();
                    l
                }
                Err(e) => {
                    tx.send(Err(e)).ok();
                    return;
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = writeln!(s, "{name} {}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        rx.recv()??;
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }

    /// A UDP echo-ish server: answers each datagram with `"<name> <peer ip>\n"`.
    pub fn udp(ns: &NetNs, addr: &str, name: &str) -> Result<Self> {
        let path = format!("/run/netns/{}", ns.name);
        let addr: SocketAddr = addr.parse()?;
        let name = name.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let sock = enter(&path).and_then(|_| {
                let s = UdpSocket::bind(addr)?;
                s.set_read_timeout(Some(Duration::from_millis(20)))?;
                Ok(s)
            });
            let sock = match sock {
                Ok(s) => {
                    tx.send(Ok(())).ok();
                    s
                }
                Err(e) => {
                    tx.send(Err(e)).ok();
                    return;
                }
            };
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("{name} {}\n", peer.ip()).as_bytes(), peer);
                }
            }
        });
        rx.recv()??;
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` to `addr` and returns the server's line (or the error).
pub fn fetch(ns: &NetNs, addr: &str) -> Result<String> {
    let addr: SocketAddr = addr.parse()?;
    ns.run(move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim().to_string())
    })?
}

/// Sends one UDP datagram from inside `ns` and returns the answer.
pub fn fetch_udp(ns: &NetNs, addr: &str) -> Result<String> {
    let addr: SocketAddr = addr.parse()?;
    ns.run(move || -> Result<String> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(1500)))?;
        s.send_to(b"hi", addr)?;
        let mut buf = [0u8; 512];
        let (n, _) = s.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })?
}

/// `nft list table ip NAME` inside `ns` (None when the table does not exist).
pub fn nft_list(ns: &NetNs, table: &str) -> Option<String> {
    ns.exec(&["nft", "list", "table", "ip", table]).ok()
}

/// `nft list ruleset` inside `ns`.
pub fn nft_ruleset(ns: &NetNs) -> String {
    ns.exec(&["nft", "list", "ruleset"]).unwrap_or_default()
}

/// A node namespace routing to `pods` pod namespaces (pod i at 10.244.i.2, its server on :8080
/// answering `pod<i> <peer>`) and to a client namespace outside the cluster (10.78.0.2, default
/// route via the node at 10.78.0.1; the node's default route points back at it).
pub struct PodNetwork {
    pub node: NetNs,
    pub client: NetNs,
    pub pods: Vec<NetNs>,
    pub servers: Vec<Server>,
}

pub fn pod_network(pods: usize) -> Result<PodNetwork> {
    let node = NetNs::new("pnn")?;
    let client = NetNs::new("pnc")?;
    veth(
        &node,
        "ext0",
        "10.78.0.1/24",
        &client,
        "eth0",
        "10.78.0.2/24",
    )?;
    client.ip(&["route", "add", "default", "via", "10.78.0.1"])?;
    node.ip(&["route", "add", "default", "via", "10.78.0.2"])?;
    node.sysctl("net.ipv4.ip_forward", "1")?;
    let mut pod_ns = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=pods {
        let p = NetNs::new(&format!("pnp{i}"))?;
        veth(
            &node,
            &format!("p{i}"),
            &format!("10.244.{i}.1/24"),
            &p,
            "eth0",
            &format!("10.244.{i}.2/24"),
        )?;
        p.ip(&["route", "add", "default", "via", &format!("10.244.{i}.1")])?;
        servers.push(Server::tcp(&p, "0.0.0.0:8080", &format!("pod{i}"))?);
        pod_ns.push(p);
    }
    Ok(PodNetwork {
        node,
        client,
        pods: pod_ns,
        servers,
    })
}
