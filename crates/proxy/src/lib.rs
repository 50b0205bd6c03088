//! Host packet rules on nftables, programmed over netlink (never by running `nft`).
//!
//! - [`nat`]: masquerade of a source subnet leaving the host and published ports (host port ->
//!   container ip:port), what `berth run`'s bridge and a node's pod network need. Start with
//!   [`HostNat`].
//! - [`nft`]: the layer underneath: a declarative [`nft::Table`] (chains, rules, sets, verdict
//!   maps) installed atomically with [`Nft::replace`] and removed with [`Nft::delete_table`].
//!
//! Each owner of rules has its own table (its name chosen by the caller), so its rules never mix
//! with another owner's and cleanup is deleting the table.
//!
//! ```no_run
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use berth_proxy::{HostNat, Masquerade, NatRules, Nft, Protocol, PublishedPort};
//!
//! # fn main() -> berth_proxy::Result<()> {
//! let nft = Nft::open()?;
//! let nat = HostNat::new("berth-bridge");
//! nat.apply(&nft, &NatRules {
//!     masquerade: vec![Masquerade::subnet("10.88.0.0/16".parse()?)],
//!     ports: vec![PublishedPort {
//!         protocol: Protocol::Tcp,
//!         host_ip: None,
//!         host_port: 8080,
//!         container: SocketAddrV4::new(Ipv4Addr::new(10, 88, 0, 2), 80),
//!     }],
//!     localhost_via: vec!["berth0".into()],
//! })?;
//! // ... later: the table and every rule in it go away.
//! nat.delete(&nft)?;
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod lb;
pub mod nat;
pub mod nft;
pub mod policy;
#[cfg(feature = "runner")]
pub mod runner;
pub mod service;

#[cfg(feature = "runner")]
pub use kube;

pub use error::{Error, Result};
pub use nat::{
    HostNat, Ipv4Net, Masquerade, NatRules, Protocol, PublishedPort, allow_localhost_dnat,
};
pub use nft::Nft;
