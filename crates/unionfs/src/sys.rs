//! Thin wrappers over the fd-based mount API (`fsopen`, `fsconfig`, `fsmount`, `move_mount`),
//! which nix does not cover. This is the only module of the crate with `unsafe` code.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_SET_FD: libc::c_uint = 5;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

/// The longest string value `fsconfig(FSCONFIG_SET_STRING)` accepts (the kernel copies at most
/// 256 bytes including the NUL).
pub(crate) const FSCONFIG_MAX_STRING: usize = 255;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `MOUNT_ATTR_*` bits for [`fsmount`].
pub(crate) const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
pub(crate) const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;

fn cstring(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| Errno::EINVAL)
}

/// `fsopen(fs_type, FSOPEN_CLOEXEC)`: a filesystem context fd.
pub(crate) fn fsopen(fs_type: &str) -> Result<OwnedFd, Errno> {
    let name = cstring(fs_type)?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the kernel
    // returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    Errno::result(fd)?;
    // SAFETY: the syscall succeeded, so `fd` is a fresh descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `fsconfig(FSCONFIG_SET_STRING)`, or `FSCONFIG_SET_FLAG` when `value` is `None`.
pub(crate) fn fsconfig_set(
    fs: BorrowedFd<'_>,
    key: &str,
    value: Option<&str>,
) -> Result<(), Errno> {
    let key = cstring(key)?;
    let value = value.map(cstring).transpose()?;
    let (cmd, value_ptr) = match &value {
        Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
        None => (FSCONFIG_SET_FLAG, std::ptr::null()),
    };
    // SAFETY: both pointers are NUL-terminated strings (or null for a flag) that outlive the
    // call; `fs` is a valid fs context fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            key.as_ptr(),
            value_ptr,
            0 as libc::c_int,
        )
    };
    Errno::result(r).map(drop)
}

/// `fsconfig(FSCONFIG_SET_FD)`: passes a file descriptor as the value of `key` (overlayfs takes
/// its layers this way since Linux 6.13).
pub(crate) fn fsconfig_set_fd(
    fs: BorrowedFd<'_>,
    key: &str,
    value: BorrowedFd<'_>,
) -> Result<(), Errno> {
    let key = cstring(key)?;
    // SAFETY: `key` is a NUL-terminated string that outlives the call; the value pointer must be
    // null for FSCONFIG_SET_FD; both fds are valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_FD,
            key.as_ptr(),
            std::ptr::null::<libc::c_void>(),
            value.as_raw_fd(),
        )
    };
    Errno::result(r).map(drop)
}

/// `fsconfig(FSCONFIG_CMD_CREATE)`: creates the superblock.
pub(crate) fn fsconfig_create(fs: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: no pointers are passed; `fs` is a valid fs context fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0 as libc::c_int,
        )
    };
    Errno::result(r).map(drop)
}

/// `fsmount(fs, FSMOUNT_CLOEXEC, attrs)`: a detached mount fd.
pub(crate) fn fsmount(fs: BorrowedFd<'_>, attrs: libc::c_uint) -> Result<OwnedFd, Errno> {
    // SAFETY: no pointers are passed; `fs` is a valid fs context fd.
    let fd = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    Errno::result(fd)?;
    // SAFETY: the syscall succeeded, so `fd` is a fresh descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `move_mount(mnt, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attaches a detached mount.
pub(crate) fn move_mount(mnt: BorrowedFd<'_>, target: &std::path::Path) -> Result<(), Errno> {
    use std::os::unix::ffi::OsStrExt;
    let target = CString::new(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let empty = c"";
    // SAFETY: both paths are NUL-terminated strings that outlive the call; `mnt` is a valid
    // mount fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(r).map(drop)
}

/// Reads the messages the kernel queued on an fs context (after a failed `fsconfig`).
pub(crate) fn fs_messages(fs: BorrowedFd<'_>) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match nix::unistd::read(fs, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !out.is_empty() {
                    out.push(b';');
                    out.push(b' ');
                }
                out.extend_from_slice(&buf[..n]);
            }
        }
    }
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).trim().to_owned())
}
