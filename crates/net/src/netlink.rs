//! A blocking netlink (rtnetlink) handle bound to one network namespace: the links, addresses
//! and routes the pod network needs, without running `ip`.
//!
//! The socket is opened on a thread that joined the namespace (a netlink socket belongs to the
//! namespace it was created in, whichever thread uses it later); requests then run on a private
//! current-thread tokio runtime. Every call blocks, so async callers use `spawn_blocking`.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::netns::in_netns;
use crate::{Error, Result};

/// The route protocol number berth-net marks its routes with (see `/etc/iproute2/rt_protos`;
/// 0xbe is unassigned), so it recognises them after a restart and never touches others'.
pub const ROUTE_PROTOCOL: u8 = 0xbe;

/// A link as netlink lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// The index of the bridge (or other controller) it is a port of.
    pub controller: Option<u32>,
    /// Administratively up.
    pub up: bool,
}

/// An IPv4 route of the main table as netlink lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub destination: Ipv4Net,
    /// Next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface, if any.
    pub interface: Option<u32>,
    /// The protocol number it was added with (kernel routes are 2, ours [`ROUTE_PROTOCOL`]).
    pub protocol: u8,
}

/// A blocking rtnetlink connection in one network namespace.
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

fn errno(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => -m.raw_code(),
        _ => 0,
    }
}

impl Netlink {
    /// Opens a connection in the namespace at `netns` (a `/proc/PID/ns/net` file or a bound one),
    /// or in the caller's own with `None`.
    pub fn open(netns: Option<&Path>) -> Result<Netlink> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(Error::io(
                "start a runtime for",
                netns.unwrap_or(Path::new("netlink")),
            ))?;
        let rt = runtime.handle().clone();
        let label = netns.unwrap_or(Path::new("netlink socket")).to_owned();
        let (connection, handle, _) = in_netns(netns, move || {
            let _entered = rt.enter();
            rtnetlink::new_connection().map_err(Error::io("open a netlink socket in", label))
        })?;
        runtime.spawn(connection);
        Ok(Netlink { runtime, handle })
    }

    fn block<T>(&self, f: impl Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// The link named `name`, if there is one.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        let got = self.block(
            self.handle
                .link()
                .get()
                .match_name(name.to_owned())
                .execute()
                .try_next(),
        );
        match got {
            Ok(m) => Ok(m.map(|m| link_of(&m))),
            Err(e) if errno(&e) == libc::ENODEV => Ok(None),
            Err(e) => Err(Error::netlink(format!("get link {name}"))(e)),
        }
    }

    /// Every link of the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        self.block(self.handle.link().get().execute().try_collect::<Vec<_>>())
            .map(|v| v.iter().map(link_of).collect())
            .map_err(Error::netlink("list links"))
    }

    /// Returns the index of the bridge `name`, creating it (up) when missing.
    pub fn ensure_bridge(&self, name: &str) -> Result<u32> {
        if let Some(l) = self.link(name)? {
            if !l.up {
                self.set_up(l.index)?;
            }
            return Ok(l.index);
        }
        let added = self.block(
            self.handle
                .link()
                .add(LinkBridge::new(name).up().build())
                .execute(),
        );
        match added {
            Ok(()) => {}
            // Created by another agent or thread in between.
            Err(e) if errno(&e) == libc::EEXIST => {}
            Err(e) => return Err(Error::netlink(format!("create bridge {name}"))(e)),
        }
        self.link(name)?
            .map(|l| l.index)
            .ok_or_else(|| Error::NoSuchLink(name.to_owned()))
    }

    /// Creates a veth pair: `name` here (a port of `controller` when given, up), and `peer` in the
    /// namespace open as `peer_netns` (down; the caller configures it there). Returns the index of
    /// `name`.
    pub fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
        controller: Option<u32>,
    ) -> Result<u32> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .setns_by_fd(peer_netns.as_raw_fd())
            .build();
        let mut builder = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_owned())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .up();
        if let Some(c) = controller {
            builder = builder.controller(c);
        }
        self.block(self.handle.link().add(builder.build()).execute())
            .map_err(Error::netlink(format!("create veth {name} (peer {peer})")))?;
        self.link(name)?
            .map(|l| l.index)
            .ok_or_else(|| Error::NoSuchLink(name.to_owned()))
    }

    /// Deletes the link `name`; false when there was none.
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link(name)? else {
            return Ok(false);
        };
        match self.block(self.handle.link().del(link.index).execute()) {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == libc::ENODEV => Ok(false),
            Err(e) => Err(Error::netlink(format!("delete link {name}"))(e)),
        }
    }

    /// Sets the link up.
    pub fn set_up(&self, index: u32) -> Result<()> {
        self.block(
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute(),
        )
        .map_err(Error::netlink(format!("set link {index} up")))
    }

    /// Turns hairpin mode on for a bridge port, so a pod can reach itself through an address that
    /// is translated back to it (a Service's ClusterIP).
    pub fn set_hairpin(&self, port: u32) -> Result<()> {
        self.block(
            self.handle
                .link()
                .set_port(LinkBridgePort::new(port).hairpin(true).build())
                .execute(),
        )
        .map_err(Error::netlink(format!("set hairpin on port {port}")))
    }

    /// Adds `addr` (address and prefix) to the link; an address it already has is fine.
    pub fn add_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        let added = self.block(
            self.handle
                .address()
                .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
                .execute(),
        );
        match added {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == libc::EEXIST => Ok(()),
            Err(e) => Err(Error::netlink(format!(
                "add address {addr} to link {index}"
            ))(e)),
        }
    }

    /// The IPv4 addresses of the namespace (every link's).
    pub fn addresses(&self) -> Result<Vec<Ipv4Addr>> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let msgs: Vec<_> = self
            .block(self.handle.address().get().execute().try_collect())
            .map_err(Error::netlink("list addresses"))?;
        Ok(msgs
            .iter()
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(a))
                | AddressAttribute::Address(IpAddr::V4(a)) => Some(*a),
                _ => None,
            })
            .collect())
    }

    /// Adds (or replaces) a route of the main table to `destination`, through `gateway` and/or
    /// out of `interface`, marked with [`ROUTE_PROTOCOL`].
    pub fn replace_route(
        &self,
        destination: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        interface: Option<u32>,
    ) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        if let Some(gw) = gateway {
            b = b.gateway(gw);
        } else {
            b = b.scope(RouteScope::Link);
        }
        if let Some(oif) = interface {
            b = b.output_interface(oif);
        }
        self.block(self.handle.route().add(b.build()).replace().execute())
            .map_err(Error::netlink(format!("add route to {destination}")))
    }

    /// Deletes a route; false when there was none.
    pub fn delete_route(&self, route: &Route) -> Result<bool> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.destination.network(), route.destination.prefix_len())
            .protocol(RouteProtocol::from(route.protocol));
        if let Some(gw) = route.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = route.interface {
            b = b.output_interface(oif);
        }
        match self.block(self.handle.route().del(b.build()).execute()) {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == libc::ESRCH || errno(&e) == libc::ENOENT => Ok(false),
            Err(e) => Err(Error::netlink(format!(
                "delete route to {}",
                route.destination
            ))(e)),
        }
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&self) -> Result<Vec<Route>> {
        let msgs: Vec<RouteMessage> = self
            .block(
                self.handle
                    .route()
                    .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                    .execute()
                    .try_collect(),
            )
            .map_err(Error::netlink("list routes"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.table == 254)
            .filter_map(route_of)
            .collect())
    }
}

fn link_of(m: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut controller = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name.clone_from(n),
            LinkAttribute::Controller(c) => controller = Some(*c),
            _ => {}
        }
    }
    Link {
        index: m.header.index,
        name,
        controller,
        up: m.header.flags.contains(LinkFlags::Up),
    }
}

fn route_of(m: &RouteMessage) -> Option<Route> {
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut interface = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Oif(i) => interface = Some(*i),
            _ => {}
        }
    }
    Some(Route {
        destination: Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?,
        gateway,
        interface,
        protocol: u8::from(m.header.protocol),
    })
}
