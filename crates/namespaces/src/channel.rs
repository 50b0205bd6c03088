//! The sync channel between the runtime and its init process: length-prefixed JSON messages
//! over a unix stream socket, with an optional file descriptor attached (the console master),
//! and what they carry: the [`InitConfig`] the runtime sends (its own module's types, so the
//! init, the security setup and the seccomp compiler depend on the channel, never on each
//! other in a circle).

use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::bpf::SeccompProgram;

/// What the init is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum InitKind {
    /// Build a new container: namespaces, rootfs, then wait for `start`.
    Create,
    /// Join a running container's namespaces and exec a process right away.
    Exec,
}

/// Everything the init needs, sent by the runtime over the sync socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitConfig {
    pub(crate) id: String,
    pub(crate) kind: InitKind,
    /// The container's spec; for exec, its `process` is the exec'd process.
    pub(crate) spec: Spec,
    /// Absolute path of the root filesystem.
    pub(crate) rootfs: PathBuf,
    /// Absolute path of the bundle (relative mount sources resolve against it).
    pub(crate) bundle: PathBuf,
    /// The exec fifo that blocks the process until `start` (create only).
    pub(crate) fifo: Option<PathBuf>,
    /// Namespaces to join, in order, by path.
    pub(crate) join: Vec<(LinuxNamespaceType, PathBuf)>,
    /// Namespaces to create (clone flags).
    pub(crate) new_namespaces: i32,
    /// Allocate a pty and send its master back.
    pub(crate) console: bool,
    /// The container's cgroup, relative to each hierarchy's root.
    pub(crate) cgroup: PathBuf,
    /// cgroup v1 `tasks` files the container process writes `0` to, moving itself into its
    /// cgroup (no RCU wait, unlike a move by the runtime); empty: the runtime moves it.
    #[serde(default)]
    pub(crate) cgroup_self_join: Vec<PathBuf>,
    /// Number of fds after stdio (3..3+n) that cross into the container.
    pub(crate) preserve_fds: u32,
    /// The state passed to a seccomp notify listener.
    pub(crate) seccomp_state: Option<String>,
    /// The spec's seccomp profile, compiled by the runtime (see [`crate::bpf`]).
    pub(crate) seccomp: Option<SeccompProgram>,
}

/// Largest message accepted (a spec with a big seccomp profile is ~100 KiB).
pub(crate) const MAX_MESSAGE: usize = 16 << 20;

/// What flows over the channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Message {
    /// Runtime → init: what to build.
    Config(Box<InitConfig>),
    /// Init → runtime: a new user namespace exists; write its uid/gid maps.
    NeedIdMaps,
    /// Runtime → init: go on (after the id maps are written; after the container process was
    /// moved into its cgroup).
    Continue,
    /// Init → runtime: the container process (a child of the runtime) has this pid.
    Pid(i32),
    /// Init → runtime: the console master is attached to this message.
    Console,
    /// Init → runtime: everything is set up; the process waits for start (or is exec'ing).
    Ready,
    /// Init → runtime: setup failed.
    Error(String),
}

/// One end of the channel.
#[derive(Debug)]
pub(crate) struct Channel {
    stream: UnixStream,
}

impl Channel {
    pub(crate) fn pair() -> std::io::Result<(Channel, Channel)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Channel { stream: a }, Channel { stream: b }))
    }

    pub(crate) fn from_fd(fd: OwnedFd) -> Channel {
        Channel {
            stream: UnixStream::from(fd),
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Sends a message. `MSG_NOSIGNAL`: a peer that went away is an error, never a SIGPIPE
    /// (the container process runs with default signal dispositions).
    pub(crate) fn send(&mut self, message: &Message) -> std::io::Result<()> {
        let frame = Channel::encode(message)?;
        self.send_frame(&frame)
    }

    /// A message as sent: its length and its JSON body. A body over [`MAX_MESSAGE`] (which the
    /// peer would refuse) is an `E2BIG` error.
    pub(crate) fn encode(message: &Message) -> std::io::Result<Vec<u8>> {
        let mut frame = vec![0u8; 4];
        serde_json::to_writer(&mut frame, message).map_err(std::io::Error::other)?;
        let len = frame.len() - 4;
        if len > MAX_MESSAGE {
            return Err(std::io::Error::from_raw_os_error(libc::E2BIG));
        }
        frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(frame)
    }

    /// Sends a frame made by [`Channel::encode`].
    pub(crate) fn send_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.send_all(frame)
    }

    fn send_all(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match nix::sys::socket::send(self.stream.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => bytes = &bytes[n..],
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sends a message with `fd` attached (SCM_RIGHTS).
    pub(crate) fn send_with_fd(&mut self, message: &Message, fd: RawFd) -> std::io::Result<()> {
        let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
        let len = (body.len() as u32).to_le_bytes();
        let iov = [IoSlice::new(&len)];
        let fds = [fd];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            self.stream.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(std::io::Error::from)?;
        self.send_all(&body)
    }

    /// Receives the next message; `None` when the peer closed the channel.
    pub(crate) fn recv(&mut self) -> std::io::Result<Option<(Message, Option<OwnedFd>)>> {
        let mut len = [0u8; 4];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut fd = None;
        let got = {
            let mut iov = [IoSliceMut::new(&mut len)];
            let msg = recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    for raw in fds {
                        fd = Some(crate::sys::own_inherited_fd(raw).map_err(std::io::Error::from)?);
                    }
                }
            }
            msg.bytes
        };
        if got == 0 {
            return Ok(None);
        }
        if got < 4 {
            self.stream.read_exact(&mut len[got..])?;
        }
        let size = u32::from_le_bytes(len) as usize;
        if size > MAX_MESSAGE {
            return Err(std::io::Error::other(format!(
                "sync message of {size} bytes is too large"
            )));
        }
        let mut body = vec![0u8; size];
        self.stream.read_exact(&mut body)?;
        let message = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
        Ok(Some((message, fd)))
    }
}
