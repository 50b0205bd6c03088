//! Where a container's (or an exec'd process's) stdin, stdout and stderr go ([`Stdio`]), the
//! other create options, and handing a pty master to a `--console-socket` listener.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where a container's stdin, stdout and stderr go.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The caller's own stdio (the default).
    #[default]
    Inherit,
    /// /dev/null for all three.
    Null,
    /// These three descriptors (files, sockets, pipe ends, …).
    Fds {
        /// Becomes fd 0.
        stdin: OwnedFd,
        /// Becomes fd 1.
        stdout: OwnedFd,
        /// Becomes fd 2.
        stderr: OwnedFd,
    },
    /// New pipes; take the caller's ends with [`Container::take_stdio`](crate::Container::take_stdio).
    Piped,
    /// A pty: the spec's `process.terminal` must be true; the master comes back through
    /// [`Container::take_console`](crate::Container::take_console) (or is sent to `console_socket`).
    Console,
}

impl Stdio {
    /// stdin from /dev/null, stdout and stderr appended to the file at `log` (created 0640).
    pub fn log_file(log: &Path) -> Result<Stdio> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(log)
            .map_err(|e| Error::io("open log", log, e))?;
        let null = File::open("/dev/null").map_err(|e| Error::io("open", "/dev/null", e))?;
        let err = file.try_clone().map_err(|e| Error::io("dup", log, e))?;
        Ok(Stdio::Fds {
            stdin: null.into(),
            stdout: file.into(),
            stderr: err.into(),
        })
    }
}

/// Options of [`Runtime::create`](crate::Runtime::create) and [`Container::exec`](crate::Container::exec) beyond the spec.
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// Where stdio goes.
    pub stdio: Stdio,
    /// With a terminal: send the pty master to this unix socket (runc's `--console-socket`)
    /// instead of keeping it.
    pub console_socket: Option<PathBuf>,
    /// Pass the caller's fds 3..3+n into the container (runc's `--preserve-fds`).
    pub preserve_fds: u32,
    /// Write the container process's pid here (runc's `--pid-file`).
    pub pid_file: Option<PathBuf>,
}

/// The caller's ends of [`Stdio::Piped`](crate::Stdio::Piped).
#[derive(Debug)]
pub struct ContainerPipes {
    /// Write end of the container's stdin.
    pub stdin: Option<File>,
    /// Read end of the container's stdout.
    pub stdout: Option<File>,
    /// Read end of the container's stderr.
    pub stderr: Option<File>,
}

/// Sends the pty master to a `--console-socket` listener the way runc does (SCM_RIGHTS, with
/// the pty's name as payload).
pub(super) fn send_console(socket: &Path, master: &OwnedFd) -> Result<()> {
    use std::io::IoSlice;
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| Error::io("connect console socket", socket, e))?;
    let fds = [master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    nix::sys::socket::sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(b"/dev/ptmx")],
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| Error::sys(format!("send console to {}", socket.display()), e))?;
    Ok(())
}
