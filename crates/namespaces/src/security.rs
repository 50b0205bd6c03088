//! Privileges of the container process: rlimits, user and groups, capabilities exactly as the
//! spec lists them (runc's order: bounding set, keep-caps across setuid, then effective,
//! permitted, inheritable, ambient) and seccomp filters compiled with libseccomp, including
//! `SCMP_ACT_NOTIFY` with the listener fd handed to `linux.seccomp.listenerPath`, and the LSM
//! labels (`process.apparmorProfile`, `process.selinuxLabel`), which are refused when the host
//! cannot apply them rather than silently dropped.

use std::collections::HashSet;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use caps::{CapSet, Capability as Cap, CapsHashSet};
use nix::sys::resource::Resource;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Capability, Linux, LinuxSeccompAction, PosixRlimitType, Process};

use crate::channel::InitConfig;

type Res<T> = Result<T, String>;

/// Applies `process.rlimits` (before privileges are dropped: raising a hard limit needs them).
pub(crate) fn apply_rlimits(process: &Process) -> Res<()> {
    for rlimit in process.rlimits().as_deref().unwrap_or_default() {
        let resource = match rlimit.typ() {
            PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
            PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
            PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
            PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
            PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
            PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
            PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
            PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
            PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
            PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
            PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
            PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
            PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
            PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
            PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
            PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
        };
        nix::sys::resource::setrlimit(resource, rlimit.soft(), rlimit.hard())
            .map_err(|e| format!("setrlimit {:?}: {e}", rlimit.typ()))?;
    }
    Ok(())
}

/// Converts the spec's capability names into the caps crate's.
pub(crate) fn to_caps(set: Option<&HashSet<Capability>>) -> Res<CapsHashSet> {
    let mut out = CapsHashSet::new();
    for cap in set.into_iter().flatten() {
        let name = format!("CAP_{cap}");
        let parsed: Cap = name
            .parse()
            .map_err(|_| format!("unknown capability {name}"))?;
        out.insert(parsed);
    }
    Ok(out)
}

/// Sets groups, gid and uid, and the five capability sets exactly as `process` asks.
pub(crate) fn set_user_and_caps(process: &Process) -> Res<()> {
    let spec_caps = process.capabilities().clone().unwrap_or_else(|| {
        let mut none = oci_spec::runtime::LinuxCapabilities::default();
        none.set_bounding(None);
        none.set_effective(None);
        none.set_permitted(None);
        none.set_inheritable(None);
        none.set_ambient(None);
        none
    });
    let bounding = to_caps(spec_caps.bounding().as_ref())?;
    let effective = to_caps(spec_caps.effective().as_ref())?;
    let permitted = to_caps(spec_caps.permitted().as_ref())?;
    let inheritable = to_caps(spec_caps.inheritable().as_ref())?;
    let ambient = to_caps(spec_caps.ambient().as_ref())?;

    // Caps the kernel does not know cannot be in any set: skip them as runc does.
    let known = caps::runtime::procfs_all_supported(None).unwrap_or_else(|_| caps::all());
    for cap in &known {
        if !bounding.contains(cap) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(|e| format!("drop {cap} from bounding set: {e}"))?;
        }
    }
    nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("keepcaps: {e}"))?;
    let user = process.user();
    let groups: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // setgroups is refused in a user namespace whose setgroups file says "deny".
    if let Err(e) = nix::unistd::setgroups(&groups)
        && !(e == nix::errno::Errno::EPERM && groups.is_empty())
    {
        return Err(format!("setgroups: {e}"));
    }
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setgid {gid}: {e}"))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setuid {uid}: {e}"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| format!("keepcaps: {e}"))?;

    let only_known = |set: &CapsHashSet| set.intersection(&known).copied().collect::<CapsHashSet>();
    caps::set(None, CapSet::Effective, &only_known(&effective))
        .map_err(|e| format!("set effective caps: {e}"))?;
    caps::set(None, CapSet::Permitted, &only_known(&permitted))
        .map_err(|e| format!("set permitted caps: {e}"))?;
    caps::set(None, CapSet::Inheritable, &only_known(&inheritable))
        .map_err(|e| format!("set inheritable caps: {e}"))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear ambient caps: {e}"))?;
    // As runc: an ambient cap that is not also permitted and inheritable cannot be raised;
    // that is not an error (runc only warns).
    for cap in only_known(&ambient) {
        let _ = caps::raise(None, CapSet::Ambient, cap);
    }
    Ok(())
}

/// Connects to the notify listener before the host filesystem disappears (when the profile
/// uses `SCMP_ACT_NOTIFY`).
pub(crate) fn connect_seccomp_listener(linux: &Linux) -> Res<Option<OwnedFd>> {
    let Some(profile) = linux.seccomp() else {
        return Ok(None);
    };
    let uses_notify = profile.default_action() == LinuxSeccompAction::ScmpActNotify
        || profile
            .syscalls()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify);
    if !uses_notify {
        return Ok(None);
    }
    let path = profile
        .listener_path()
        .as_ref()
        .ok_or("seccomp uses SCMP_ACT_NOTIFY but has no listenerPath")?;
    let stream = UnixStream::connect(path)
        .map_err(|e| format!("connect seccomp listener {}: {e}", path.display()))?;
    Ok(Some(OwnedFd::from(stream)))
}

/// Sends a notify listener the filter's notify fd and the container process state (the
/// runtime-spec's `ContainerProcessState`).
pub(crate) fn send_notify_fd(listener: &OwnedFd, notify: OwnedFd, config: &InitConfig) -> Res<()> {
    let state = config.seccomp_state.clone().unwrap_or_default();
    let state = state.replace("\"pid\":0", &format!("\"pid\":{}", std::process::id()));
    let fds = [notify.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    nix::sys::socket::sendmsg::<()>(
        listener.as_raw_fd(),
        &[IoSlice::new(state.as_bytes())],
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("send seccomp fd to listener: {e}"))?;
    Ok(())
}

/// True when AppArmor is loaded and enabled (runc's test: its securityfs directory exists and
/// the module parameter says `Y`).
pub(crate) fn apparmor_enabled() -> bool {
    std::path::Path::new("/sys/kernel/security/apparmor").is_dir()
        && std::fs::read("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|v| v.first() == Some(&b'Y'))
}

/// True when SELinux is enabled (selinuxfs is mounted at /sys/fs/selinux).
pub(crate) fn selinux_enabled() -> bool {
    const SELINUX_MAGIC: i64 = 0xf97c_ff8c;
    nix::sys::statfs::statfs("/sys/fs/selinux")
        .is_ok_and(|fs| fs.filesystem_type().0 == SELINUX_MAGIC)
}

/// Asks the kernel to apply the process's AppArmor profile and SELinux label at its `exec`.
pub(crate) fn set_exec_labels(process: &Process) -> Res<()> {
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        let value = format!("exec {profile}");
        std::fs::write("/proc/thread-self/attr/apparmor/exec", &value)
            .or_else(|_| std::fs::write("/proc/thread-self/attr/exec", &value))
            .map_err(|e| format!("apply AppArmor profile {profile:?}: {e}"))?;
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        std::fs::write("/proc/thread-self/attr/exec", label)
            .map_err(|e| format!("apply SELinux label {label:?}: {e}"))?;
    }
    Ok(())
}
