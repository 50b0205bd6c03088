//! The netlink socket: one batch (`BATCH_BEGIN` … `BATCH_END`) per call, sent in one `sendmsg`
//! so the kernel applies it as one transaction, then the answers read back.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, sockopt,
};
use nix::sys::time::TimeVal;

use super::wire::*;
use super::{Labels, Table, encode_delete, encode_replace, encode_update};
use crate::error::{Error, Result};

/// A netlink socket for nf_tables, in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Nft {
    fd: OwnedFd,
}

fn netlink(op: &'static str) -> impl FnOnce(nix::Error) -> Error {
    move |e| Error::Netlink {
        op,
        source: io::Error::from(e),
    }
}

impl Nft {
    /// Opens a socket in the current network namespace (needs CAP_NET_ADMIN to change rules).
    pub fn open() -> Result<Self> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(netlink("open"))?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(netlink("bind"))?;
        // A stuck answer must not hang a caller forever.
        socket::setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::from(libc_timeval(Duration::from_secs(30))),
        )
        .map_err(netlink("set receive timeout"))?;
        Ok(Nft { fd })
    }

    /// Replaces (or creates) `table` atomically with the given content.
    pub fn replace(&self, table: &Table) -> Result<()> {
        self.replace_all(std::slice::from_ref(table))
    }

    /// Replaces several tables in one transaction.
    pub fn replace_all(&self, tables: &[Table]) -> Result<()> {
        for t in tables {
            t.validate()?;
        }
        let mut b = Buf::default();
        let mut labels = Labels::new();
        begin_batch(&mut b);
        for t in tables {
            encode_replace(&mut b, t, &mut labels);
        }
        self.commit(b, labels)
    }

    /// Turns the installed `old` (what an earlier call installed) into `new` in one transaction,
    /// sending only the chains and set elements that differ: kube-proxy's way of keeping
    /// reprogramming cheap with many Services, and dynamic set content (session affinity) is
    /// kept. Falls back to [`Nft::replace`] without `old`, when a base chain or a set's shape
    /// changed, or when the kernel refuses the update (the table was changed behind our back).
    pub fn update(&self, old: Option<&Table>, new: &Table) -> Result<()> {
        let Some(old) = old else {
            return self.replace(new);
        };
        new.validate()?;
        let mut b = Buf::default();
        let mut labels = Labels::new();
        begin_batch(&mut b);
        if encode_update(&mut b, old, new, &mut labels).is_none() {
            return self.replace(new);
        }
        if labels.is_empty() {
            return Ok(()); // nothing changed
        }
        match self.commit(b, labels) {
            Ok(()) => Ok(()),
            Err(Error::Kernel { .. }) => self.replace(new),
            Err(e) => Err(e),
        }
    }

    /// Deletes table `name`; a missing table is not an error.
    pub fn delete_table(&self, name: &str) -> Result<()> {
        let mut b = Buf::default();
        let mut labels = Labels::new();
        begin_batch(&mut b);
        encode_delete(&mut b, name, &mut labels);
        match self.commit(b, labels) {
            Err(Error::Kernel { source, .. }) if source.raw_os_error() == Some(libc_enoent()) => {
                Ok(())
            }
            other => other,
        }
    }

    /// Sends a batch (its last message asks for an ack) and reads answers until that ack or
    /// an error, the first of which is returned (the kernel has then rolled the batch back).
    fn commit(&self, mut b: Buf, labels: Labels) -> Result<()> {
        let last = b.seq;
        // Ask for an ack of the last real message only: errors come regardless, and the kernel
        // reports every message's outcome only after processing the whole batch.
        patch_last_flags(&mut b, NLM_F_ACK);
        end_batch(&mut b);
        let len = b.bytes.len();
        if len + 4096 > 212_992 {
            socket::setsockopt(&self.fd, sockopt::SndBufForce, &(len + 65_536))
                .or_else(|_| socket::setsockopt(&self.fd, sockopt::SndBuf, &(len + 65_536)))
                .map_err(netlink("grow send buffer"))?;
        }
        let sent = socket::sendto(
            self.fd.as_raw_fd(),
            &b.bytes,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(netlink("send"))?;
        if sent != len {
            return Err(Error::Protocol(format!("sent {sent} of {len} bytes")));
        }
        let mut first_error: Option<Error> = None;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(netlink("receive"))?;
            let mut at = 0;
            while at + 16 <= n {
                let mlen = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap());
                if mlen < 16 || at + mlen > n {
                    return Err(Error::Protocol(format!("message length {mlen}")));
                }
                if ty == NLMSG_ERROR {
                    if mlen < 20 {
                        return Err(Error::Protocol("short error message".into()));
                    }
                    let errno = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap());
                    if errno != 0 && !labels.iter().any(|(s, _)| *s == seq) {
                        // The batch itself was refused (no CAP_NET_ADMIN, …): nothing else comes.
                        return Err(Error::Kernel {
                            what: "the batch".into(),
                            source: io::Error::from_raw_os_error(-errno),
                        });
                    }
                    if errno != 0 && first_error.is_none() {
                        let what = labels
                            .iter()
                            .find(|(s, _)| *s == seq)
                            .map(|(_, l)| l.clone())
                            .unwrap_or_else(|| format!("message {seq}"));
                        first_error = Some(Error::Kernel {
                            what,
                            source: io::Error::from_raw_os_error(-errno),
                        });
                    }
                    if seq == last {
                        return first_error.map_or(Ok(()), Err);
                    }
                } else if ty == NLMSG_DONE && seq == last {
                    return first_error.map_or(Ok(()), Err);
                }
                at += (mlen + 3) & !3;
            }
        }
    }
}

fn begin_batch(b: &mut Buf) {
    b.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
    b.end();
}

fn end_batch(b: &mut Buf) {
    b.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
    b.end();
}

/// ORs `flags` into the last message's header.
fn patch_last_flags(b: &mut Buf, flags: u16) {
    let last = b.msg_start;
    let f = u16::from_ne_bytes(b.bytes[last + 6..last + 8].try_into().unwrap()) | flags;
    b.bytes[last + 6..last + 8].copy_from_slice(&f.to_ne_bytes());
}

fn libc_timeval(d: Duration) -> nix::libc::timeval {
    nix::libc::timeval {
        tv_sec: d.as_secs() as _,
        tv_usec: d.subsec_micros() as _,
    }
}

fn libc_enoent() -> i32 {
    nix::libc::ENOENT
}
