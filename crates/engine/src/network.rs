//! Docker's networking for `berth run`, on berth-net: networks of bridge-attached containers
//! (the default `bridge` network and user-defined ones from `berth network create`), `--network
//! none|host|bridge|<name>`, and `-p HOSTPORT:CONTAINERPORT[/udp]` values.
//!
//! A network is a directory `<root>/networks/<name>/` holding `network.json` (its bridge and
//! subnet), its leases (berth-net's `Ipam`) and `members.json` (container id -> name, address,
//! hosts file). Containers find each other by name through `/etc/hosts`: each attached container
//! gets its own hosts file (bind-mounted read-only at `/etc/hosts`), rewritten in place whenever
//! a container joins or leaves its network, listing every member by name and short id (Docker
//! does the same with an embedded DNS server at 127.0.0.11; a hosts file needs no daemon, which
//! this engine has none of). The default network gets the bridge `berth0` for the default root;
//! another root (tests) gets `bb` + a hash of the root, so engines never share a bridge. Subnets
//! are picked from 10.89.0.0/16 in /24s (the default network: 10.88.0.0/16 when free), skipping
//! any that overlaps a route the host already has, under a host-wide lock.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use berth_net::{Attachment, BridgeConfig, BridgeNetwork, Ipv4Net, Netlink, PodNetwork};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name of the default network.
pub const DEFAULT_NETWORK: &str = "bridge";
/// The host-wide lock that serialises subnet choice between engines.
const SUBNET_LOCK: &str = "/run/berth-net-subnets.lock";

/// How a container is networked (`--network`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "name")]
pub enum NetworkMode {
    /// Its own namespace with loopback only.
    None,
    /// The host's namespace.
    Host,
    /// A named network (`bridge` is the default one).
    Named(String),
}

impl Default for NetworkMode {
    fn default() -> Self {
        NetworkMode::Named(DEFAULT_NETWORK.to_owned())
    }
}

impl NetworkMode {
    /// Parses a `--network` value.
    pub fn parse(s: &str) -> Result<NetworkMode> {
        match s {
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            "" | "default" => Ok(NetworkMode::Named(DEFAULT_NETWORK.into())),
            name => {
                check_name(name)?;
                Ok(NetworkMode::Named(name.to_owned()))
            }
        }
    }

    /// The network a container joins, if any.
    pub fn network(&self) -> Option<&str> {
        match self {
            NetworkMode::Named(n) => Some(n),
            _ => None,
        }
    }
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A published port: `-p [HOSTIP:]HOSTPORT:CONTAINERPORT[/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address it listens on (unspecified: every address).
    pub host_ip: Ipv4Addr,
    /// The host port.
    pub host_port: u16,
    /// The container port.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

impl PortMapping {
    /// Parses a `-p` value.
    pub fn parse(s: &str) -> Result<PortMapping> {
        let bad = |reason: &str| Error::Option {
            option: "-p",
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (s, Protocol::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host, container) = match parts.as_slice() {
            [h, c] => (Ipv4Addr::UNSPECIFIED, *h, *c),
            [ip, h, c] => (
                ip.parse()
                    .map_err(|_| bad("the host address must be IPv4"))?,
                *h,
                *c,
            ),
            _ => return Err(bad("expected HOSTPORT:CONTAINERPORT[/udp]")),
        };
        let port = |p: &str| -> Result<u16> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad("ports are numbers from 1 to 65535")),
            }
        };
        Ok(PortMapping {
            host_ip,
            host_port: port(host)?,
            container_port: port(container)?,
            protocol,
        })
    }
}

/// Checks a network name: Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 characters.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok && name != "none" && name != "host" {
        Ok(())
    } else {
        Err(Error::Option {
            option: "network",
            value: name.to_owned(),
            reason: "a network name is [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 64), not none or host"
                .into(),
        })
    }
}

/// A network as `berth network ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// Its name.
    pub name: String,
    /// Its bridge.
    pub bridge: String,
    /// Its subnet; the gateway is the first address.
    pub subnet: Ipv4Net,
}

/// One attached container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Member {
    name: String,
    address: Ipv4Addr,
    hosts: PathBuf,
}

/// The engine's networks under `<root>/networks`.
#[derive(Debug, Clone)]
pub struct Networks {
    dir: PathBuf,
    default_bridge: String,
}

fn net_err(e: berth_net::Error) -> Error {
    Error::Network(e)
}

impl Networks {
    /// The networks of the engine rooted at `root`; `default_root` says whether it is the
    /// host's default engine (its default network's bridge is then `berth0`).
    pub fn open(root: &Path, default_root: bool) -> Networks {
        let default_bridge = if default_root {
            "berth0".to_owned()
        } else {
            let h = berth_net::host_veth_name("engine", &root.display().to_string());
            format!("bb{}", &h[2..12])
        };
        Networks {
            dir: root.join("networks"),
            default_bridge,
        }
    }

    fn lock(&self) -> Result<Flock<File>> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io("create", &self.dir))?;
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("open", &path))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("lock", &path)(std::io::Error::from(e)))
    }

    fn info_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("network.json")
    }

    fn read_info(&self, name: &str) -> Result<Option<NetworkInfo>> {
        let path = self.info_path(name);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Spec(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    /// Every network.
    pub fn list(&self) -> Result<Vec<NetworkInfo>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("read", &self.dir)(e)),
        };
        for e in entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        {
            if let Some(info) = self.read_info(&e.file_name().to_string_lossy())? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates network `name` (`subnet`, or a free /24 of 10.89.0.0/16); the bridge is made
    /// when the first container joins.
    pub fn create(&self, name: &str, subnet: Option<Ipv4Net>) -> Result<NetworkInfo> {
        check_name(name)?;
        let _lock = self.lock()?;
        if self.read_info(name)?.is_some() {
            return Err(Error::Option {
                option: "network",
                value: name.to_owned(),
                reason: "a network with this name exists".into(),
            });
        }
        self.create_locked(name, subnet)
    }

    fn create_locked(&self, name: &str, subnet: Option<Ipv4Net>) -> Result<NetworkInfo> {
        let bridge = if name == DEFAULT_NETWORK {
            self.default_bridge.clone()
        } else {
            let h = berth_net::host_veth_name(&self.dir.display().to_string(), name);
            format!("bu{}", &h[2..12])
        };
        let subnet = match subnet {
            Some(s) => s.trunc(),
            None => self.pick_subnet(name == DEFAULT_NETWORK)?,
        };
        let info = NetworkInfo {
            name: name.to_owned(),
            bridge,
            subnet,
        };
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        write_atomic(
            &self.info_path(name),
            &serde_json::to_vec_pretty(&info).expect("serialises"),
        )?;
        Ok(info)
    }

    /// A subnet no route of the host and no other network of this engine overlaps.
    fn pick_subnet(&self, default: bool) -> Result<Ipv4Net> {
        let _host = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(SUBNET_LOCK)
            .ok()
            .and_then(|f| Flock::lock(f, FlockArg::LockExclusive).ok());
        let routes: Vec<Ipv4Net> = Netlink::open(None)
            .and_then(|n| n.routes())
            .map_err(net_err)?
            .into_iter()
            .map(|r| r.destination)
            .filter(|d| d.prefix_len() > 0)
            .collect();
        let mine: Vec<Ipv4Net> = self.list()?.into_iter().map(|n| n.subnet).collect();
        let overlaps = |s: &Ipv4Net| {
            routes
                .iter()
                .chain(mine.iter())
                .any(|r| r.contains(&s.network()) || s.contains(&r.network()))
        };
        let default_net: Ipv4Net = "10.88.0.0/16".parse().expect("valid");
        if default && !overlaps(&default_net) {
            return Ok(default_net);
        }
        let pool: Ipv4Net = "10.89.0.0/16".parse().expect("valid");
        pool.subnets(24)
            .expect("valid prefix")
            .find(|s| !overlaps(s))
            .ok_or_else(|| Error::Option {
                option: "network",
                value: pool.to_string(),
                reason: "no free /24 left in the pool".into(),
            })
    }

    /// The network `name`, creating the default one on first use.
    pub fn get(&self, name: &str) -> Result<NetworkInfo> {
        if let Some(info) = self.read_info(name)? {
            return Ok(info);
        }
        if name == DEFAULT_NETWORK {
            let _lock = self.lock()?;
            if let Some(info) = self.read_info(name)? {
                return Ok(info);
            }
            return self.create_locked(name, None);
        }
        Err(Error::Option {
            option: "--network",
            value: name.to_owned(),
            reason: "no such network (berth network create NAME makes one)".into(),
        })
    }

    fn bridge(&self, info: &NetworkInfo) -> Result<BridgeNetwork> {
        BridgeNetwork::new(BridgeConfig::new(
            &info.bridge,
            info.subnet,
            self.dir.join(&info.name),
        ))
        .map_err(net_err)
    }

    fn members(&self, name: &str) -> Result<BTreeMap<String, Member>> {
        let path = self.dir.join(name).join("members.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Spec(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    fn save_members(&self, name: &str, members: &BTreeMap<String, Member>) -> Result<()> {
        write_atomic(
            &self.dir.join(name).join("members.json"),
            &serde_json::to_vec(members).expect("serialises"),
        )
    }

    /// Attaches container `id` (named `container_name`) running in the namespace at `netns` to
    /// `network`, and makes `hosts` (the file bind-mounted at its `/etc/hosts`) and every other
    /// member's list it. Returns its address.
    pub fn attach(
        &self,
        network: &str,
        id: &str,
        container_name: &str,
        netns: &Path,
        hosts: &Path,
    ) -> Result<Attachment> {
        let info = self.get(network)?;
        let _lock = self.lock()?;
        let net = self.bridge(&info)?;
        let got = net.setup(netns, id).map_err(net_err)?;
        let mut members = self.members(network)?;
        members.insert(
            id.to_owned(),
            Member {
                name: container_name.to_owned(),
                address: got.address.addr(),
                hosts: hosts.to_owned(),
            },
        );
        let saved = self.save_members(network, &members);
        if let Err(e) = saved {
            let _ = net.teardown(id);
            return Err(e);
        }
        write_hosts_files(&members);
        Ok(got)
    }

    /// Detaches container `id` from `network` (its veth and address go; the others' hosts files
    /// forget it). Nothing happens when it is not attached.
    pub fn detach(&self, network: &str, id: &str) -> Result<()> {
        let Some(info) = self.read_info(network)? else {
            return Ok(());
        };
        let _lock = self.lock()?;
        let mut members = self.members(network)?;
        let was = members.remove(id).is_some();
        let net = self.bridge(&info)?;
        net.teardown(id).map_err(net_err)?;
        if was {
            self.save_members(network, &members)?;
            write_hosts_files(&members);
        }
        Ok(())
    }

    /// The address of container `id` on `network`.
    pub fn address(&self, network: &str, id: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self.members(network)?.get(id).map(|m| m.address))
    }

    /// Removes network `name` (refused while a container is attached): its bridge and state.
    pub fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let info = self.read_info(name)?.ok_or_else(|| Error::Option {
            option: "network",
            value: name.to_owned(),
            reason: "no such network".into(),
        })?;
        let _lock = self.lock()?;
        let members = self.members(name)?;
        if !members.is_empty() {
            return Err(Error::Option {
                option: "network",
                value: name.to_owned(),
                reason: format!(
                    "containers are attached: {}",
                    members
                        .values()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        self.bridge(&info)?.destroy().map_err(net_err)?;
        let dir = self.dir.join(name);
        std::fs::remove_dir_all(&dir).map_err(Error::io("remove", &dir))?;
        drop(_lock);
        self.publish("", Ipv4Addr::UNSPECIFIED, &[])
    }
}

/// The hosts file a member sees: localhost lines, then every member by name and short id.
fn hosts_text(members: &BTreeMap<String, Member>) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (id, m) in members {
        s.push_str(&format!(
            "{}\t{} {}\n",
            m.address,
            m.name,
            &id[..12.min(id.len())]
        ));
    }
    s
}

/// Rewrites every member's hosts file in place (a bind mount follows the inode, not the name).
fn write_hosts_files(members: &BTreeMap<String, Member>) {
    let text = hosts_text(members);
    for m in members.values() {
        let written = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&m.hosts)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        // A member whose container went without detaching has no file: the next detach of it
        // forgets it.
        drop(written);
    }
}

/// Writes a file atomically (temp file, fsync, rename, directory fsync).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(Error::io("create", &tmp))?;
    f.write_all(bytes).map_err(Error::io("write", &tmp))?;
    f.sync_data().map_err(Error::io("fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("rename", path))?;
    if let Some(dir) = path.parent() {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_modes() {
        let p = PortMapping::parse("8080:80").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        let p = PortMapping::parse("127.0.0.1:53:5353/udp").unwrap();
        assert_eq!(p.host_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(p.protocol, Protocol::Udp);
        for bad in [
            "80",
            "0:80",
            "x:80",
            "80:80/sctp",
            "1:2:3:4",
            "70000:80",
            "::1:80:80",
        ] {
            assert!(PortMapping::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(NetworkMode::parse("none").unwrap(), NetworkMode::None);
        assert_eq!(NetworkMode::parse("host").unwrap(), NetworkMode::Host);
        assert_eq!(
            NetworkMode::parse("bridge").unwrap().network(),
            Some("bridge")
        );
        assert_eq!(
            NetworkMode::parse("my-net").unwrap().network(),
            Some("my-net")
        );
        assert!(NetworkMode::parse("../x").is_err());
        assert!(NetworkMode::parse("-x").is_err());
    }

    #[test]
    fn hosts_lists_every_member() {
        let mut m = BTreeMap::new();
        m.insert(
            "0123456789abcdef".to_owned(),
            Member {
                name: "web".into(),
                address: Ipv4Addr::new(10, 89, 0, 2),
                hosts: PathBuf::new(),
            },
        );
        let t = hosts_text(&m);
        assert!(t.contains("10.89.0.2\tweb 0123456789ab\n"), "{t}");
        assert!(t.starts_with("127.0.0.1\tlocalhost\n"));
    }
}

/// What a container asked for, kept beside its spec (`<container dir>/network.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Wanted {
    mode: NetworkMode,
    ports: Vec<PortMapping>,
}

const WANTED: &str = "network.json";
const HOSTS: &str = "hosts";

/// Puts the network choice into a container's spec at create time: `host` drops the network
/// namespace; a network mounts the container's own hosts file at `/etc/hosts`; `-p` needs a
/// network. Records the choice in `dir` for start and finish.
pub(crate) fn prepare_spec(
    spec: &mut oci_spec::runtime::Spec,
    dir: &Path,
    mode: Option<&NetworkMode>,
    ports: &[PortMapping],
) -> Result<()> {
    let Some(mode) = mode else {
        if !ports.is_empty() {
            return Err(Error::Option {
                option: "-p",
                value: format!("{}", ports[0].host_port),
                reason: "publishing a port needs a network (--network bridge or a name)".into(),
            });
        }
        return Ok(());
    };
    if mode.network().is_none() && !ports.is_empty() {
        return Err(Error::Option {
            option: "-p",
            value: format!("{}", ports[0].host_port),
            reason: "publishing a port needs a network (--network bridge or a name)".into(),
        });
    }
    if let Some(linux) = spec.linux_mut()
        && *mode == NetworkMode::Host
        && let Some(ns) = linux.namespaces_mut()
    {
        ns.retain(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Network);
    }
    if mode.network().is_some() {
        let hosts = dir.join(HOSTS);
        std::fs::write(&hosts, b"127.0.0.1\tlocalhost\n").map_err(Error::io("write", &hosts))?;
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination("/etc/hosts")
                .typ("bind")
                .source(hosts)
                .options(vec!["bind".to_owned(), "ro".to_owned()])
                .build()
                .map_err(|e| Error::Spec(e.to_string()))?,
        );
        spec.set_mounts(Some(mounts));
    }
    write_atomic(
        &dir.join(WANTED),
        &serde_json::to_vec(&Wanted {
            mode: mode.clone(),
            ports: ports.to_vec(),
        })
        .expect("serialises"),
    )
}

fn wanted(dir: &Path) -> Option<Wanted> {
    serde_json::from_slice(&std::fs::read(dir.join(WANTED)).ok()?).ok()
}

impl<R: berth_namespaces::ContainerRuntime> crate::Engine<R> {
    /// The engine's networks (`berth network ...`).
    pub fn networks(&self) -> Networks {
        Networks::open(self.root(), self.root() == Path::new("/var/lib/berth"))
    }

    /// Attaches the created (not yet started) container `id` whose first process is `pid` to
    /// the network it asked for, and publishes its ports.
    pub(crate) fn attach_network(&self, dir: &Path, id: &str, name: &str, pid: i32) -> Result<()> {
        let Some(w) = wanted(dir) else { return Ok(()) };
        let Some(network) = w.mode.network() else {
            return Ok(());
        };
        let networks = self.networks();
        let got = networks.attach(
            network,
            id,
            name,
            format!("/proc/{pid}/ns/net").as_ref(),
            &dir.join(HOSTS),
        )?;
        let published = networks.publish(id, got.address.addr(), &w.ports);
        if let Err(e) = published {
            let _ = networks.detach(network, id);
            return Err(e);
        }
        Ok(())
    }

    /// Detaches container `id` (exited or removed) from its network and withdraws its ports.
    pub(crate) fn detach_network(&self, dir: &Path, id: &str) {
        let Some(w) = wanted(dir) else { return };
        let Some(network) = w.mode.network() else {
            return;
        };
        let networks = self.networks();
        let _ = networks.publish(id, Ipv4Addr::UNSPECIFIED, &[]);
        let _ = networks.detach(network, id);
    }
}

impl Networks {
    fn nat_name(&self) -> String {
        let h = berth_net::host_veth_name("nat", &self.dir.display().to_string());
        format!("berth-engine-{}", &h[2..12])
    }

    /// Records container `id`'s published ports (none: withdraws them) and re-programs the
    /// engine's NAT table: every network's subnet masqueraded on its way out, every published
    /// port forwarded.
    fn publish(&self, id: &str, address: Ipv4Addr, ports: &[PortMapping]) -> Result<()> {
        let _lock = self.lock()?;
        let path = self.dir.join("ports.json");
        let mut all: BTreeMap<String, (Ipv4Addr, Vec<PortMapping>)> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        if ports.is_empty() {
            all.remove(id);
        } else {
            all.insert(id.to_owned(), (address, ports.to_vec()));
        }
        let networks = self.list()?;
        write_atomic(&path, &serde_json::to_vec(&all).expect("serialises"))?;
        let proxy_err = |e: berth_proxy::Error| Error::Spec(format!("NAT rules: {e}"));
        let net = |s: Ipv4Net| {
            berth_proxy::Ipv4Net::new(s.network(), s.prefix_len()).expect("valid prefix")
        };
        let rules = berth_proxy::NatRules {
            masquerade: networks
                .iter()
                .map(|n| berth_proxy::Masquerade {
                    source: net(n.subnet),
                    except_out_interface: Some(n.bridge.clone()),
                })
                .collect(),
            ports: all
                .values()
                .flat_map(|(addr, ports)| {
                    ports.iter().map(|p| berth_proxy::PublishedPort {
                        protocol: match p.protocol {
                            Protocol::Tcp => berth_proxy::Protocol::Tcp,
                            Protocol::Udp => berth_proxy::Protocol::Udp,
                        },
                        host_ip: (!p.host_ip.is_unspecified()).then_some(p.host_ip),
                        host_port: p.host_port,
                        container: std::net::SocketAddrV4::new(*addr, p.container_port),
                    })
                })
                .collect(),
            localhost_via: networks
                .iter()
                .filter(|n| Path::new("/sys/class/net").join(&n.bridge).exists())
                .map(|n| n.bridge.clone())
                .collect(),
        };
        let nft = berth_proxy::Nft::open().map_err(proxy_err)?;
        let nat = berth_proxy::HostNat::new(self.nat_name());
        if networks.is_empty() && all.is_empty() {
            // Nothing left to program: the table goes (an absent table is fine).
            let _ = nat.delete(&nft);
            return Ok(());
        }
        nat.apply(&nft, &rules).map_err(proxy_err)
    }
}
