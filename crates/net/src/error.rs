//! The crate's error type: what failed (a link, an address, a lease file), with the cause as source.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// What went wrong in berth-net.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory under the state dir (or a namespace file) could not be used.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done ("read", "write", "lock", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("netlink: {what}")]
    Netlink {
        /// The request ("create bridge berth0", ...).
        what: String,
        /// The kernel's (or the netlink library's) answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call other than file I/O failed (setns, unshare, mount).
    #[error("{what}")]
    Sys {
        /// The call and its argument.
        what: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// Every address of the subnet is leased.
    #[error("no free address left in {subnet}")]
    Exhausted {
        /// The subnet that is full.
        subnet: ipnet::Ipv4Net,
    },
    /// The lease file under the state dir was written for another subnet.
    #[error("the leases under {} are for {found}, not {expected}", dir.display())]
    SubnetChanged {
        /// The state directory.
        dir: PathBuf,
        /// The subnet asked for.
        expected: ipnet::Ipv4Net,
        /// The subnet in the file.
        found: ipnet::Ipv4Net,
    },
    /// The lease file could not be parsed (it is never written partially, so someone else wrote it).
    #[error("corrupt lease file {}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A name, id or subnet given by the caller is unusable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was given ("bridge name", "pod id", "subnet", ...).
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// An address asked for is not in the subnet (or is its network, gateway or broadcast address).
    #[error("{addr} is not a usable address of {subnet}")]
    OutOfRange {
        /// The address.
        addr: Ipv4Addr,
        /// The subnet.
        subnet: ipnet::Ipv4Net,
    },
    /// A link expected to exist does not.
    #[error("no link named {0}")]
    NoSuchLink(String),
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
        let what = what.into();
        move |source| Error::Netlink { what, source }
    }

    pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
        let what = what.into();
        move |source| Error::Sys { what, source }
    }
}

/// berth-net's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
