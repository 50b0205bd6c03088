//! Seccomp profiles as ready BPF programs. libseccomp turns a profile into a rule database and
//! then into BPF; for Docker's default profile (~350 syscalls) that costs milliseconds of CPU on
//! every container start. So the runtime compiles a profile once, in the runtime process (not
//! in the container's init), keeps the program in a cache directory under its state root, keyed
//! by a SHA-256 of the profile, the libseccomp version and the architecture, and hands the init
//! the finished program, which the init loads with the bare `seccomp(2)` call.
#![allow(unsafe_code)]

use std::fs;
use std::io::{Read, Seek, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::sys::memfd::MFdFlags;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type Res<T> = std::result::Result<T, String>;

/// One `struct sock_filter` is 8 bytes; the kernel takes at most 4096 of them.
const INSTRUCTION_SIZE: usize = 8;
const MAX_INSTRUCTIONS: usize = 4096;

/// A compiled filter and the `seccomp(2)` flags to load it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SeccompProgram {
    /// The BPF program, `struct sock_filter`s in host byte order, hex-encoded on the wire.
    #[serde(with = "hex::serde")]
    pub(crate) bpf: Vec<u8>,
    /// `SECCOMP_FILTER_FLAG_*`.
    pub(crate) flags: libc::c_ulong,
}

/// The program for `profile`: from `cache_dir` when an earlier container compiled the same
/// profile, else compiled now with libseccomp and stored there (best effort: a cache that can't
/// be written only costs the next container a compile).
pub(crate) fn program(profile: &LinuxSeccomp, cache_dir: &Path) -> Res<SeccompProgram> {
    let flags = load_flags(profile);
    let path = cache_dir.join(format!("{}.bpf", cache_key(profile)?));
    if let Ok(bpf) = fs::read(&path)
        && valid_length(bpf.len())
    {
        return Ok(SeccompProgram { bpf, flags });
    }
    let filter = compile_seccomp(profile)?;
    let export = |e: &dyn std::fmt::Display| format!("seccomp export: {e}");
    let memfd = nix::sys::memfd::memfd_create(c"berth-seccomp", MFdFlags::MFD_CLOEXEC)
        .map_err(|e| export(&e))?;
    let mut file = fs::File::from(memfd);
    filter.export_bpf(&file).map_err(|e| export(&e))?;
    let mut bpf = Vec::new();
    file.rewind()
        .and_then(|_| file.read_to_end(&mut bpf))
        .map_err(|e| export(&e))?;
    if !valid_length(bpf.len()) {
        return Err(format!(
            "seccomp: the profile compiles to {} BPF instructions, more than the kernel's {MAX_INSTRUCTIONS}",
            bpf.len() / INSTRUCTION_SIZE
        ));
    }
    let _ = store(cache_dir, &path, &bpf);
    Ok(SeccompProgram { bpf, flags })
}

fn valid_length(len: usize) -> bool {
    len > 0 && len.is_multiple_of(INSTRUCTION_SIZE) && len / INSTRUCTION_SIZE <= MAX_INSTRUCTIONS
}

/// Writes the cache entry atomically (a reader never sees half a program).
fn store(cache_dir: &Path, path: &Path, bpf: &[u8]) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache_dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = file.write_all(bpf).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn cache_key(profile: &LinuxSeccomp) -> Res<String> {
    let json = serde_json::to_vec(profile).map_err(|e| format!("seccomp profile: {e}"))?;
    let version = libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(format!("{version}\0{}\0", std::env::consts::ARCH));
    hasher.update(&json);
    Ok(hex::encode(hasher.finalize()))
}

/// The flags libseccomp would pass: the profile's own, plus a notify listener when any rule
/// notifies. TSYNC is dropped with a listener (the init is single-threaded anyway).
fn load_flags(profile: &LinuxSeccomp) -> libc::c_ulong {
    let mut flags = 0;
    for flag in profile.flags().as_deref().unwrap_or_default() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            }
        };
    }
    if uses_notify(profile) {
        flags &= !libc::SECCOMP_FILTER_FLAG_TSYNC;
        flags |= libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
    }
    flags
}

/// Whether the profile's default or any rule's action is `SCMP_ACT_NOTIFY`.
pub(crate) fn uses_notify(profile: &LinuxSeccomp) -> bool {
    profile.default_action() == LinuxSeccompAction::ScmpActNotify
        || profile
            .syscalls()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|rule| rule.action() == LinuxSeccompAction::ScmpActNotify)
}

/// Loads `program` into the calling thread; returns the notify listener fd when the program
/// was compiled with one.
pub(crate) fn load(program: &SeccompProgram) -> Res<Option<OwnedFd>> {
    if !valid_length(program.bpf.len()) {
        return Err(format!(
            "seccomp: malformed program of {} bytes",
            program.bpf.len()
        ));
    }
    let filters: Vec<libc::sock_filter> = program
        .bpf
        .chunks_exact(INSTRUCTION_SIZE)
        .map(|i| libc::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: filters.len() as u16,
        filter: filters.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `filters`, which outlives the call; the kernel copies the
    // program and validates every instruction, so a bad program is an error, not UB.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            program.flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if ret < 0 {
        return Err(format!("seccomp load: {}", std::io::Error::last_os_error()));
    }
    if program.flags & libc::SECCOMP_FILTER_FLAG_NEW_LISTENER != 0 {
        // SAFETY: with NEW_LISTENER the call returns a new fd that nothing else owns.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(ret as i32) }));
    }
    Ok(None)
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> ScmpAction {
    match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32)
        }
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16)
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
    }
}

fn arch(arch: Arch) -> Option<ScmpArch> {
    Some(match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        _ => return None,
    })
}

fn compare(arg: &oci_spec::runtime::LinuxSeccompArg) -> ScmpArgCompare {
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(arg.value()),
    };
    let datum = match arg.op() {
        LinuxSeccompOperator::ScmpCmpMaskedEq => arg.value_two().unwrap_or(0),
        _ => arg.value(),
    };
    ScmpArgCompare::new(arg.index() as u32, op, datum)
}

/// Compiles `profile` into a libseccomp filter (not yet loaded). Syscall names this libseccomp
/// does not know are skipped, as runc does; everything else that is wrong is an error.
fn compile_seccomp(profile: &LinuxSeccomp) -> Res<ScmpFilterContext> {
    let default = action(profile.default_action(), profile.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| format!("seccomp init: {e}"))?;
    // We set no_new_privs ourselves, exactly as the spec says.
    ctx.set_ctl_nnp(false)
        .map_err(|e| format!("seccomp nnp attr: {e}"))?;
    for a in profile.architectures().as_deref().unwrap_or_default() {
        if let Some(a) = arch(*a) {
            match ctx.add_arch(a) {
                Ok(_) => {}
                Err(e) if e.errno() == Some(libseccomp::error::SeccompErrno::EEXIST) => {}
                Err(e) => return Err(format!("seccomp arch {a:?}: {e}")),
            }
        }
    }
    for flag in profile.flags().as_deref().unwrap_or_default() {
        let r = match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => ctx.set_ctl_waitkill(true),
        };
        r.map_err(|e| format!("seccomp flag {flag:?}: {e}"))?;
    }
    for rule in profile.syscalls().as_deref().unwrap_or_default() {
        let act = action(rule.action(), rule.errno_ret());
        if act == default {
            continue;
        }
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let args = rule.args().as_deref().unwrap_or_default();
            let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
            indexes.sort_unstable();
            indexes.dedup();
            let result = if args.is_empty() {
                ctx.add_rule(act, syscall).map(|_| ())
            } else if indexes.len() == args.len() {
                let cmps: Vec<ScmpArgCompare> = args.iter().map(compare).collect();
                ctx.add_rule_conditional(act, syscall, &cmps).map(|_| ())
            } else {
                // Several conditions on one argument: one rule each (libseccomp cannot AND them).
                args.iter().try_for_each(|a| {
                    ctx.add_rule_conditional(act, syscall, &[compare(a)])
                        .map(|_| ())
                })
            };
            result.map_err(|e| format!("seccomp rule {name}: {e}"))?;
        }
    }
    Ok(ctx)
}
