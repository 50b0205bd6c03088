//! The few raw system calls nix does not wrap (clone with `CLONE_PARENT`, pidfds, `close_range`,
//! detached read-only mounts) and the `pre_exec` hook that places the init's sync socket.
//! Unsafe code in this crate lives here and in `bpf` (loading a filter with `seccomp(2)`), each
//! block with its `SAFETY` argument.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

use nix::errno::Errno;
use nix::unistd::Pid;

/// Forks the calling (single-threaded) process with `CLONE_PARENT`: the child becomes a child
/// of our parent, so the runtime that spawned the init can wait for it directly.
///
/// Returns `None` in the child and `Some(pid)` in the caller.
pub(crate) fn clone_parent() -> nix::Result<Option<Pid>> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a fork-like clone (no CLONE_VM, no new stack). Only the init process calls this,
    // and it is single-threaded (a freshly exec'd binary that started no threads), so the
    // child may run arbitrary code.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as i32))),
    }
}

/// `pidfd_open(2)`: a stable handle on a process, immune to pid reuse.
pub(crate) fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// `pidfd_send_signal(2)`.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> nix::Result<()> {
    // SAFETY: plain syscall; a null siginfo means "as kill(2) would".
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Marks every fd from `first` upwards close-on-exec (`close_range(.., CLOSE_RANGE_CLOEXEC)`),
/// so no fd of the runtime crosses into the container. Where `close_range` is refused (a
/// kernel before 5.11, or a seccomp profile that does not allow it) every open fd listed in
/// `/proc/self/fd` gets `FD_CLOEXEC` with `fcntl` instead.
pub(crate) fn cloexec_from(first: u32) -> nix::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: plain syscall with integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if ret == 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::EPERM | Errno::ENOSYS | Errno::EINVAL => cloexec_from_fcntl(first),
        e => Err(e),
    }
}

/// The `fcntl` fallback of [`cloexec_from`].
fn cloexec_from_fcntl(first: u32) -> nix::Result<()> {
    // Collect first: the directory's own fd is in the listing and closes with it.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first as RawFd)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only read and set the flag of a descriptor number; one that
        // was closed meanwhile (the listing's own) answers EBADF, which is skipped.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || flags & libc::FD_CLOEXEC != 0 {
            continue;
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            let e = Errno::last();
            if e != Errno::EBADF {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// `ioctl(NS_GET_NSTYPE)`: the `CLONE_NEW*` flag of the namespace behind `fd` (an nsfs file).
pub(crate) fn namespace_type(fd: BorrowedFd<'_>) -> nix::Result<i32> {
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type as the result.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

/// Opens `path` (a file) through a private, detached, read-only bind mount of its directory.
///
/// Executing the init binary through this fd makes `/proc/<pid>/exe` of every runtime process
/// point into a read-only mount, so a container cannot overwrite the host binary through it
/// (CVE-2019-5736), without copying the binary into a memfd on every start.
pub(crate) fn open_readonly_clone(path: &std::path::Path) -> nix::Result<OwnedFd> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    let name = path.file_name().ok_or(Errno::EINVAL)?;
    let dir_c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let name_c = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: dir_c is a valid NUL-terminated string for the duration of the call.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            dir_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a new fd that we now own.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: attr lives across the call and its size is passed; empty is a valid C string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: name_c is a valid C string; tree is an open directory fd.
    let fd = unsafe {
        libc::openat(
            tree.as_raw_fd(),
            name_c.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arranges for `fd` to appear as `target` in the child spawned by `command` (and not to be
/// close-on-exec there). The hook only calls `dup2`/`fcntl`, which are async-signal-safe, so
/// it is sound even when the caller is multi-threaded.
pub(crate) fn place_fd_in_child(command: &mut std::process::Command, fd: RawFd, target: RawFd) {
    // SAFETY: the closure runs between fork and exec and only performs async-signal-safe
    // system calls (dup2, fcntl); it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || {
            if fd == target {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Wraps a raw fd the init received at a known number (the sync socket) as owned.
pub(crate) fn own_inherited_fd(fd: RawFd) -> nix::Result<OwnedFd> {
    nix::fcntl::fcntl(
        // SAFETY: borrow only for the duration of the fcntl validity check.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )?;
    // SAFETY: the fd is open (checked above) and was handed to this process to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ioctl(TIOCSCTTY)`: makes `fd` (a terminal) the controlling terminal of this session.
pub(crate) fn set_controlling_terminal(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `ioctl(TIOCSWINSZ)`: sets a terminal's window size.
pub(crate) fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> nix::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize that lives across the call.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCSWINSZ,
            &size as *const libc::winsize,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `ioctl(TIOCGPTPEER)`: opens the peer (slave) of a pty master without a path lookup.
pub(crate) fn open_pty_peer(master: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    const TIOCGPTPEER: libc::c_ulong = 0x5441;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
    let ret = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// `ioctl(TIOCSPTLCK, 0)`: unlocks a pty master so its peer can be opened.
pub(crate) fn unlock_pty(master: BorrowedFd<'_>) -> nix::Result<()> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int that lives across the call.
    let ret = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCSPTLCK,
            &unlock as *const libc::c_int,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `setdomainname(2)` (nix only wraps `sethostname`).
pub(crate) fn set_domainname(name: &str) -> nix::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes for the duration of the call.
    let ret = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `dup2(fd, target)`: installs `fd` as `target` (used for stdio 0..2, which are not owned).
pub(crate) fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> nix::Result<()> {
    // SAFETY: plain syscall with integer arguments; `target` is a stdio slot we overwrite.
    let ret = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Resets every signal's disposition to the default and empties the signal mask, as runc does
/// before exec (exec keeps ignored signals and the mask). The raw `rt_sigaction` reaches the
/// signals glibc reserves for itself (32, 33), which its `signal()` refuses; SIGKILL and SIGSTOP
/// refuse any change, which is not an error.
pub(crate) fn reset_signals() -> nix::Result<()> {
    // The kernel's `struct sigaction` with SIG_DFL (0), no flags, no restorer and an empty mask
    // is all zeros, whatever the architecture's field order.
    let default = [0u64; 4];
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `default` is a valid, zeroed kernel sigaction that outlives the call; the
        // old action is not requested; the sigset size is the kernel's (8 bytes).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
        if ret < 0 {
            return Err(Errno::last());
        }
    }
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
}

/// Ignores SIGPIPE (`true`) or restores its default action (`false`): the startContainer hooks
/// run after [`reset_signals`], and a hook that exits without reading its stdin must not kill
/// the container process with SIGPIPE.
pub(crate) fn ignore_sigpipe(ignore: bool) -> nix::Result<()> {
    let handler = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: SIG_IGN and SIG_DFL install no handler, so no Rust code can run from a signal.
    if unsafe { libc::signal(libc::SIGPIPE, handler) } == libc::SIG_ERR {
        return Err(Errno::last());
    }
    Ok(())
}
