//! Kernel settings under `/proc/sys` the pod network needs (IPv4 forwarding), set in a given
//! network namespace: `net.*` settings are per namespace, and a file under `/proc/sys/net` shows
//! the namespace of the thread that opens it.

use std::path::{Path, PathBuf};

use crate::netns::in_netns;
use crate::{Error, Result};

/// Sets `key` (dotted, `net.ipv4.ip_forward`) to `value` in the namespace at `netns` (the caller's
/// with `None`); does not write when it already has that value. Returns the previous value.
pub fn set(netns: Option<&Path>, key: &str, value: &str) -> Result<String> {
    if key.is_empty()
        || !key.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
    {
        return Err(Error::Invalid {
            what: "sysctl",
            reason: format!("{key:?} is not a dotted sysctl name"),
        });
    }
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let value = value.to_owned();
    in_netns(netns, move || {
        let old = std::fs::read_to_string(&path).map_err(Error::io("read", &path))?;
        let old = old.trim().to_owned();
        if old != value {
            std::fs::write(&path, value.as_bytes()).map_err(Error::io("write", &path))?;
        }
        Ok(old)
    })
}

/// Turns IPv4 forwarding on in the namespace at `netns` (pods reach beyond their bridge, and
/// other nodes' pods reach them, only through a forwarding host).
pub fn enable_ip_forward(netns: Option<&Path>) -> Result<()> {
    set(netns, "net.ipv4.ip_forward", "1").map(drop)
}
