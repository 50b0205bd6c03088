//! Node-local IP address management: addresses of one subnet leased to ids (pods, containers),
//! persisted under a state directory so that no address is handed out twice, across threads,
//! processes and restarts.
//!
//! The leases live in one JSON file, `leases.json`, rewritten whole for every change: written to
//! `leases.json.tmp`, fsynced, renamed over the old file, and the directory fsynced, so a crash
//! leaves either the old or the new file, never a torn one. Every read-modify-write happens under
//! an exclusive `flock` of a separate `lock` file (a lock on the data file would be lost with the
//! rename), which serialises threads and processes alike. Addresses are handed out round robin
//! after the last one given (as CNI's host-local plugin does), so a just-released address is not
//! reused at once by the next pod. The subnet's network address, its first host (the gateway, held
//! by the bridge) and its broadcast address are never leased.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const LEASES: &str = "leases.json";
const TMP: &str = "leases.json.tmp";
const LOCK: &str = "lock";

/// The persisted state: the subnet it is for, the last address handed out, and address -> id.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    subnet: Option<Ipv4Net>,
    last: Option<Ipv4Addr>,
    leases: BTreeMap<Ipv4Addr, String>,
}

/// An address allocator over one subnet, with leases persisted under a directory.
///
/// Cheap to create: it holds no lock and caches nothing, so several `Ipam`s (in threads or
/// processes) over the same directory cooperate.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    subnet: Ipv4Net,
}

impl Ipam {
    /// Opens (creating it when missing) the lease directory `dir` for `subnet`. Fails with
    /// [`Error::SubnetChanged`] when the directory holds leases of another subnet, and with
    /// [`Error::Invalid`] for a subnet too small to hold a gateway and one address (/31, /32).
    pub fn open(dir: impl Into<PathBuf>, subnet: Ipv4Net) -> Result<Ipam> {
        let dir = dir.into();
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(Error::Invalid {
                what: "subnet",
                reason: format!("{subnet} has no room for a gateway and a pod (at most /30)"),
            });
        }
        std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        let ipam = Ipam { dir, subnet };
        ipam.update(|_| false)?;
        Ok(ipam)
    }

    /// The subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The gateway address: the subnet's first host, never leased.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.subnet)
    }

    /// Leases an address to `id`, or returns the one `id` already holds (so a retried setup, or
    /// one after a restart, gets its address back).
    pub fn allocate(&self, id: &str) -> Result<Ipv4Addr> {
        check_id(id)?;
        let subnet = self.subnet;
        let mut found = None;
        self.update(|state| {
            if let Some((addr, _)) = state.leases.iter().find(|(_, owner)| *owner == id) {
                found = Some(*addr);
                return false;
            }
            let first = u32::from(gateway(subnet)) + 1;
            let last = u32::from(subnet.broadcast()) - 1;
            let size = last - first + 1;
            let start = match state.last {
                Some(a) if subnet.contains(&a) && u32::from(a) >= first && u32::from(a) <= last => {
                    u32::from(a) - first + 1
                }
                _ => 0,
            };
            for i in 0..size {
                let addr = Ipv4Addr::from(first + (start + i) % size);
                if let std::collections::btree_map::Entry::Vacant(e) = state.leases.entry(addr) {
                    e.insert(id.to_owned());
                    state.last = Some(addr);
                    found = Some(addr);
                    return true;
                }
            }
            false
        })?;
        found.ok_or(Error::Exhausted { subnet })
    }

    /// Leases `addr` itself to `id` (a static address); fails when another id holds it.
    pub fn reserve(&self, id: &str, addr: Ipv4Addr) -> Result<()> {
        check_id(id)?;
        let subnet = self.subnet;
        if !subnet.contains(&addr)
            || addr == subnet.network()
            || addr == subnet.broadcast()
            || addr == gateway(subnet)
        {
            return Err(Error::OutOfRange { addr, subnet });
        }
        let mut taken = None;
        self.update(|state| match state.leases.get(&addr) {
            Some(owner) if owner == id => false,
            Some(owner) => {
                taken = Some(owner.clone());
                false
            }
            None => {
                state.leases.insert(addr, id.to_owned());
                true
            }
        })?;
        match taken {
            Some(owner) => Err(Error::Invalid {
                what: "address",
                reason: format!("{addr} is leased to {owner}"),
            }),
            None => Ok(()),
        }
    }

    /// Releases every address `id` holds; returns them (empty when it held none).
    pub fn release(&self, id: &str) -> Result<Vec<Ipv4Addr>> {
        let mut released = Vec::new();
        self.update(|state| {
            state.leases.retain(|addr, owner| {
                let keep = owner != id;
                if !keep {
                    released.push(*addr);
                }
                keep
            });
            !released.is_empty()
        })?;
        Ok(released)
    }

    /// The address `id` holds, if any.
    pub fn get(&self, id: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .leases()?
            .into_iter()
            .find(|(_, owner)| owner == id)
            .map(|(a, _)| a))
    }

    /// Every lease, address -> id.
    pub fn leases(&self) -> Result<BTreeMap<Ipv4Addr, String>> {
        let _lock = self.lock()?;
        Ok(self.load()?.leases)
    }

    fn lock(&self) -> Result<Flock<File>> {
        let path = self.dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("open", &path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("lock", &path)(std::io::Error::from(e)))
    }

    fn load(&self) -> Result<State> {
        let path = self.dir.join(LEASES);
        let state: State = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(Error::io("read", &path)(e)),
        };
        if let Some(found) = state.subnet
            && found != self.subnet
        {
            return Err(Error::SubnetChanged {
                dir: self.dir.clone(),
                expected: self.subnet,
                found,
            });
        }
        Ok(state)
    }

    /// Runs `change` on the state under the lock; writes it back when `change` says it changed
    /// something (or when the file does not exist yet).
    fn update(&self, change: impl FnOnce(&mut State) -> bool) -> Result<()> {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        let fresh = state.subnet.is_none();
        state.subnet = Some(self.subnet);
        if change(&mut state) || fresh {
            self.store(&state)?;
        }
        Ok(())
    }

    fn store(&self, state: &State) -> Result<()> {
        let tmp = self.dir.join(TMP);
        let path = self.dir.join(LEASES);
        let bytes = serde_json::to_vec(state).expect("lease state serialises");
        let mut file = File::create(&tmp).map_err(Error::io("create", &tmp))?;
        file.write_all(&bytes).map_err(Error::io("write", &tmp))?;
        file.sync_data().map_err(Error::io("fsync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::io("rename", &path))?;
        sync_dir(&self.dir)
    }
}

/// fsyncs a directory, making a rename or a new entry in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync", dir))
}

/// The gateway of a pod subnet: its first host address.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 253 || id.chars().any(|c| c.is_control()) {
        return Err(Error::Invalid {
            what: "lease id",
            reason: format!("{id:?} must be 1-253 printable characters"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_round_robin_skipping_gateway_and_broadcast() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), net("10.1.0.0/29")).unwrap();
        let got: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&format!("p{i}")).unwrap())
            .collect();
        let want: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(10, 1, 0, h)).collect();
        assert_eq!(got, want);
        assert!(matches!(ipam.allocate("p5"), Err(Error::Exhausted { .. })));
        // Same id, same address.
        assert_eq!(ipam.allocate("p2").unwrap(), Ipv4Addr::new(10, 1, 0, 4));
        // A released address is not the next one handed out unless it is the only one free.
        assert_eq!(
            ipam.release("p1").unwrap(),
            vec![Ipv4Addr::new(10, 1, 0, 3)]
        );
        assert_eq!(ipam.allocate("q").unwrap(), Ipv4Addr::new(10, 1, 0, 3));
        assert!(ipam.release("nobody").unwrap().is_empty());
    }

    #[test]
    fn leases_survive_reopen_and_refuse_another_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ipam::open(dir.path(), net("10.2.0.0/24"))
            .unwrap()
            .allocate("a")
            .unwrap();
        let ipam = Ipam::open(dir.path(), net("10.2.0.0/24")).unwrap();
        assert_eq!(ipam.get("a").unwrap(), Some(a));
        assert_ne!(ipam.allocate("b").unwrap(), a);
        let err = Ipam::open(dir.path(), net("10.3.0.0/24")).unwrap_err();
        assert!(matches!(err, Error::SubnetChanged { .. }), "{err}");
    }

    #[test]
    fn bad_input_is_refused_without_state() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Ipam::open(dir.path().join("x"), net("10.0.0.0/31")),
            Err(Error::Invalid { .. })
        ));
        assert!(!dir.path().join("x").exists());
        let ipam = Ipam::open(dir.path(), net("10.0.0.0/24")).unwrap();
        assert!(ipam.allocate("").is_err());
        assert!(ipam.allocate("a\nb").is_err());
        assert!(matches!(
            ipam.reserve("x", Ipv4Addr::new(10, 0, 0, 1)),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            ipam.reserve("x", Ipv4Addr::new(10, 0, 1, 5)),
            Err(Error::OutOfRange { .. })
        ));
        ipam.reserve("x", Ipv4Addr::new(10, 0, 0, 9)).unwrap();
        assert!(ipam.reserve("y", Ipv4Addr::new(10, 0, 0, 9)).is_err());
        assert!(ipam.leases().unwrap().len() == 1);
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_pool() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LEASES), b"{not json").unwrap();
        assert!(matches!(
            Ipam::open(dir.path(), net("10.0.0.0/24")),
            Err(Error::Corrupt { .. })
        ));
    }
}
