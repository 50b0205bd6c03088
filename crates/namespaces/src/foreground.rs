//! Running a container in the foreground of a terminal or supervisor, the part `docker run`,
//! `runc run` and `runc exec` share: which stdio the container gets ([`stdio`]), signal names
//! ([`parse_signal`]), forwarding the signals this process receives to the container's process
//! ([`forward_signals`]) and copying between this terminal and the container's pty
//! ([`proxy_console`]). The `berth` and `berth-runtime` binaries and berth-engine's
//! `Engine::run` use these.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::unistd::Pid;

use crate::{Error, Result, Stdio};

/// The signals a foreground runtime passes on to the container's process (runc's list):
/// interrupt, terminate, hang-up, quit, the two user signals and window changes.
pub const FORWARDED_SIGNALS: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// A signal by name or number: `SIGTERM`, `term`, `TERM`, `15`. `None` for anything else.
pub fn parse_signal(text: &str) -> Option<Signal> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

/// The stdio of a container in the foreground, as `docker run` chooses it: a pty with `tty`;
/// else this process's own stdio with `keep_stdin` (`-i`; `runc run` always keeps it); else
/// this process's stdout and stderr with stdin from /dev/null.
pub fn stdio(tty: bool, keep_stdin: bool) -> Result<Stdio> {
    if tty {
        return Ok(Stdio::Console);
    }
    if keep_stdin {
        return Ok(Stdio::Inherit);
    }
    let null: OwnedFd = File::open("/dev/null")
        .map_err(|e| Error::io("open", "/dev/null", e))?
        .into();
    let dup = |fd: std::os::fd::BorrowedFd<'_>, name: &str| {
        fd.try_clone_to_owned()
            .map_err(|e| Error::io("dup", name, e))
    };
    Ok(Stdio::Fds {
        stdin: null,
        stdout: dup(std::io::stdout().as_fd(), "stdout")?,
        stderr: dup(std::io::stderr().as_fd(), "stderr")?,
    })
}

/// Forwards [`FORWARDED_SIGNALS`] received by this process to `pid` until dropped. Call it
/// once the container's process exists (the signals are blocked in the calling thread from
/// now on, and a blocked mask would be inherited by a process cloned later) and keep `pid`
/// unreaped while the guard lives, so it cannot be reused. The dropped guard restores the
/// calling thread's signal mask.
pub fn forward_signals(pid: Pid) -> Result<SignalForwarder> {
    let mut set = SigSet::empty();
    for signal in FORWARDED_SIGNALS {
        set.add(signal);
    }
    let mut previous = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut previous))
        .map_err(|e| Error::sys("block forwarded signals", e))?;
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    // The thread inherits the blocked mask and takes the signals with sigwait.
    let spawned = std::thread::Builder::new()
        .name("signal-forwarder".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let _ = nix::sys::signal::kill(pid, signal);
            }
        });
    if let Err(e) = spawned {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
        return Err(Error::io("spawn", "signal forwarder thread", e));
    }
    Ok(SignalForwarder { done, previous })
}

/// Forwards signals to a container's process while it lives (see [`forward_signals`]).
#[derive(Debug)]
pub struct SignalForwarder {
    done: Arc<AtomicBool>,
    previous: SigSet,
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.previous), None);
    }
}

/// Copies between this process's stdin/stdout and a container's pty `master` until the
/// container closes its end; returns then. When stdin is a terminal it is in raw mode
/// meanwhile (restored afterwards), so keys reach the container as typed. When stdin ends, the
/// pty gets an end-of-file character (EOT).
pub fn proxy_console(master: OwnedFd) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = if nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
        tcgetattr(stdin.as_fd()).ok()
    } else {
        None
    };
    if let Some(saved) = &saved {
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        // TCSAFLUSH, not TCSANOW: an end-of-file (^D) still queued in canonical mode reads back
        // as a NUL byte once the terminal is raw, and would be typed into the container.
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &raw);
    }
    let mut master = File::from(master);
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 16 * 1024];
    let mut stdin_open = true;
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready =
            |fd: Option<&PollFd<'_>>| fd.and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        let master_ready = ready(fds.first());
        let stdin_ready = stdin_open && ready(fds.get(1));
        drop(fds);
        if master_ready {
            match master.read(&mut buf) {
                // EIO: every slave fd is closed.
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = stdout.write_all(&buf[..n]);
                    let _ = stdout.flush();
                }
            }
        }
        if stdin_ready {
            match stdin.lock().read(&mut buf) {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    let _ = master.write_all(&[4]);
                }
                Ok(n) => {
                    let _ = master.write_all(&buf[..n]);
                }
            }
        }
    }
    if let Some(saved) = &saved {
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(parse_signal("SIGINT"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("Kill"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("nope"), None);
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal(""), None);
    }

    #[test]
    fn stdio_choice_follows_docker_run() {
        assert!(matches!(stdio(true, true), Ok(Stdio::Console)));
        assert!(matches!(stdio(false, true), Ok(Stdio::Inherit)));
        assert!(matches!(stdio(false, false), Ok(Stdio::Fds { .. })));
    }

    #[test]
    fn forwarding_blocks_the_signals_here_until_dropped() {
        // (Delivery is tested end to end by the binaries' tests: a process-directed signal in
        // this multi-threaded test binary could land on any other test thread.)
        let before = SigSet::thread_get_mask().unwrap();
        assert!(!before.contains(Signal::SIGUSR2));
        {
            let _forward = forward_signals(nix::unistd::getpid()).unwrap();
            let now = SigSet::thread_get_mask().unwrap();
            assert!(FORWARDED_SIGNALS.iter().all(|s| now.contains(*s)));
        }
        let after = SigSet::thread_get_mask().unwrap();
        assert!(!after.contains(Signal::SIGUSR2));
    }
}
