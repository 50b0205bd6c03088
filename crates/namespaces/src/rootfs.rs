//! The container's root filesystem, built inside its new mount namespace: the rootfs bound on
//! itself, the spec's mounts in order, /dev device nodes and symlinks, `pivot_root`, then
//! sysctls, read-only and masked paths and an optional read-only root.
//!
//! Every target inside the rootfs is resolved with `openat2(RESOLVE_IN_ROOT)` on a directory
//! fd and mounted through `/proc/self/fd/N`, so a symlink planted in the image can never
//! redirect a mount (or a device node) outside the container.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};

type Res<T> = Result<T, String>;

/// Opens `path` (relative to `root`, never escaping it) with `flags`.
pub(crate) fn open_in_root(root: &impl AsFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(root.as_fd(), rel, how)
}

/// Creates `path` and its parents as directories inside `root` (like `mkdir -p`).
pub(crate) fn mkdir_all_in_root(root: &impl AsFd, path: &Path) -> Res<OwnedFd> {
    let mut current = open_in_root(root, Path::new("/"), OFlag::O_PATH | OFlag::O_DIRECTORY)
        .map_err(|e| format!("open rootfs: {e}"))?;
    let mut sofar = PathBuf::from("/");
    for component in path.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        sofar.push(name);
        match open_in_root(root, &sofar, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => current = fd,
            Err(nix::errno::Errno::ENOENT) => {
                nix::sys::stat::mkdirat(current.as_fd(), name, Mode::from_bits_truncate(0o755))
                    .or_else(|e| {
                        if e == nix::errno::Errno::EEXIST {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| format!("mkdir {}: {e}", sofar.display()))?;
                current = open_in_root(root, &sofar, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(|e| format!("open {}: {e}", sofar.display()))?;
            }
            Err(e) => return Err(format!("open {}: {e}", sofar.display())),
        }
    }
    Ok(current)
}

/// Creates an empty file at `path` inside `root` (a bind-mount target for a file).
fn touch_in_root(root: &impl AsFd, path: &Path) -> Res<OwnedFd> {
    if let Ok(fd) = open_in_root(root, path, OFlag::O_PATH) {
        return Ok(fd);
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| format!("bad mount target {}", path.display()))?;
    let dir = mkdir_all_in_root(root, parent)?;
    let fd = nix::fcntl::openat(
        dir.as_fd(),
        name,
        OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| format!("create {}: {e}", path.display()))?;
    drop(fd);
    open_in_root(root, path, OFlag::O_PATH).map_err(|e| format!("open {}: {e}", path.display()))
}

fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Mount options split into flags, propagation flags and the fs-specific data string.
#[derive(Debug, PartialEq)]
pub(crate) struct MountOptions {
    pub(crate) flags: MsFlags,
    pub(crate) clear: MsFlags,
    pub(crate) propagation: MsFlags,
    pub(crate) data: Vec<String>,
}

/// Parses `mount(8)`-style options as runc does.
pub(crate) fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for option in options {
        let (set, clear) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let base = match option.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                let rec = if option.starts_with('r') {
                    MsFlags::MS_REC
                } else {
                    MsFlags::empty()
                };
                out.propagation |= base | rec;
                continue;
            }
            // Accepted and meaningless here (SELinux relabel, idmap hints handled elsewhere).
            "z" | "Z" | "tmpcopyup" => continue,
            other => {
                out.data.push(other.to_string());
                continue;
            }
        };
        out.flags |= set;
        out.flags &= !clear;
        out.clear |= clear;
    }
    out
}

/// Builds the rootfs, calls `before_pivot` (the createContainer hooks), and pivots into it.
///
/// With `host_namespace` (a spec without a mount namespace: the container inherits the
/// runtime's) the mounts land in the host's table: the host's propagation is left alone, the
/// rootfs bind is made private (nothing under it propagates to the host's peers), and the
/// process `chroot`s instead of pivoting (which would move the root of every host process).
/// The runtime detaches that bind, and everything under it, on delete.
pub(crate) fn prepare(
    spec: &Spec,
    rootfs: &Path,
    bundle: &Path,
    cwd: &Path,
    cgroup: &Path,
    host_namespace: bool,
    before_pivot: &mut dyn FnMut() -> Res<()>,
) -> Res<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    let propagation = match linux.rootfs_propagation().as_deref() {
        Some("shared") | Some("rshared") => MsFlags::MS_SHARED,
        Some("private") | Some("rprivate") => MsFlags::MS_PRIVATE,
        Some("unbindable") | Some("runbindable") => MsFlags::MS_UNBINDABLE,
        _ => MsFlags::MS_SLAVE,
    };
    if !host_namespace {
        // Stop our mounts from propagating to the host (and host mounts into us, unless
        // shared).
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(|e| format!("make / rslave: {e}"))?;
    }
    nix::mount::mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind rootfs {}: {e}", rootfs.display()))?;
    if host_namespace {
        nix::mount::mount(
            None::<&str>,
            rootfs,
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("make rootfs {} private: {e}", rootfs.display()))?;
    }
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open rootfs {}: {e}", rootfs.display()))?;

    let mounts = spec.mounts().clone().unwrap_or_default();
    let mount_label = linux.mount_label().as_deref().filter(|l| !l.is_empty());
    for m in &mounts {
        mount_one(&root, m, bundle, cgroup, mount_label)?;
    }
    let has_dev = mounts.iter().any(|m| m.destination() == Path::new("/dev"));
    if has_dev {
        create_default_devices(
            &root,
            mounts
                .iter()
                .any(|m| m.destination() == Path::new("/dev/pts")),
        )?;
    }
    for device in linux.devices().as_deref().unwrap_or_default() {
        create_device(
            &root,
            device.path(),
            device.typ(),
            device.major(),
            device.minor(),
            device.file_mode(),
            device.uid(),
            device.gid(),
        )?;
    }
    if !cwd.as_os_str().is_empty() {
        mkdir_all_in_root(&root, cwd)?;
    }
    drop(root);
    before_pivot()?;

    if host_namespace {
        nix::unistd::chdir(rootfs).map_err(|e| format!("chdir rootfs: {e}"))?;
        nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
        return nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"));
    }
    // pivot_root(".", ".") stacks the old root on top of the new one; detach it.
    nix::unistd::chdir(rootfs).map_err(|e| format!("chdir rootfs: {e}"))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    nix::mount::mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| format!("make old root rslave: {e}"))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    if propagation != MsFlags::MS_SLAVE {
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | propagation,
            None::<&str>,
        )
        .map_err(|e| format!("set rootfs propagation: {e}"))?;
    }
    Ok(())
}

fn mount_one(
    root: &OwnedFd,
    m: &Mount,
    bundle: &Path,
    cgroup: &Path,
    mount_label: Option<&str>,
) -> Res<()> {
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(format!(
            "mount destination {} is not absolute",
            dest.display()
        ));
    }
    let options = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or("");
    let is_bind = options.flags.contains(MsFlags::MS_BIND) || typ == "bind";
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroups(root, dest, &options, cgroup);
    }
    let source = m.source().clone().unwrap_or_default();
    let target = if is_bind {
        let source = if source.is_absolute() {
            source.clone()
        } else {
            bundle.join(&source)
        };
        let meta = std::fs::metadata(&source)
            .map_err(|e| format!("bind mount source {}: {e}", source.display()))?;
        let target = if meta.is_dir() {
            mkdir_all_in_root(root, dest)?
        } else {
            touch_in_root(root, dest)?
        };
        let flags = MsFlags::MS_BIND | (options.flags & MsFlags::MS_REC);
        nix::mount::mount(
            Some(&source),
            fd_path(&target).as_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|e| format!("bind {} on {}: {e}", source.display(), dest.display()))?;
        let remount = options.flags - MsFlags::MS_BIND - MsFlags::MS_REC - MsFlags::MS_REMOUNT;
        if !remount.is_empty() {
            let mounted = open_in_root(root, dest, OFlag::O_PATH)
                .map_err(|e| format!("reopen {}: {e}", dest.display()))?;
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | remount;
            nix::mount::mount(
                None::<&str>,
                fd_path(&mounted).as_str(),
                None::<&str>,
                flags,
                None::<&str>,
            )
            .map_err(|e| format!("remount {} {:?}: {e}", dest.display(), remount))?;
        }
        open_in_root(root, dest, OFlag::O_PATH)
            .map_err(|e| format!("reopen {}: {e}", dest.display()))?
    } else {
        let target = mkdir_all_in_root(root, dest)?;
        let mut data = options.data.clone();
        // The SELinux mount label (only set where SELinux is enabled: checked at create).
        if let Some(label) = mount_label
            && !matches!(typ, "proc" | "sysfs" | "mqueue")
        {
            data.push(format!("context=\"{label}\""));
        }
        let data = data.join(",");
        let data = (!data.is_empty()).then_some(data);
        let source = if source.as_os_str().is_empty() {
            PathBuf::from(typ)
        } else {
            source
        };
        let result = nix::mount::mount(
            Some(&source),
            fd_path(&target).as_str(),
            Some(typ),
            options.flags,
            data.as_deref(),
        );
        match result {
            Ok(()) => {}
            // sysfs cannot be mounted in a user namespace that does not own the network
            // namespace; bind the host's instead, as runc does.
            Err(nix::errno::Errno::EPERM) if typ == "sysfs" => {
                nix::mount::mount(
                    Some("/sys"),
                    fd_path(&target).as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| format!("bind /sys on {}: {e}", dest.display()))?;
            }
            Err(e) => return Err(format!("mount {typ} on {}: {e}", dest.display())),
        }
        open_in_root(root, dest, OFlag::O_PATH)
            .map_err(|e| format!("reopen {}: {e}", dest.display()))?
    };
    if !options.propagation.is_empty() {
        nix::mount::mount(
            None::<&str>,
            fd_path(&target).as_str(),
            None::<&str>,
            options.propagation,
            None::<&str>,
        )
        .map_err(|e| format!("propagation of {}: {e}", dest.display()))?;
    }
    Ok(())
}

/// A `cgroup` mount: a tmpfs with one fresh mount of each host hierarchy (seen from the
/// container's cgroup namespace), read-only when asked. Without a cgroup namespace, or where a
/// fresh mount is refused (cgroup v1 inside a user namespace), the container's own group
/// (`cgroup`, relative to each hierarchy) is bound instead, as runc does.
fn mount_cgroups(root: &OwnedFd, dest: &Path, options: &MountOptions, cgroup: &Path) -> Res<()> {
    let own_namespace = cgroup_namespaced();
    let target = mkdir_all_in_root(root, dest)?;
    let base = options.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    nix::mount::mount(
        Some("tmpfs"),
        fd_path(&target).as_str(),
        Some("tmpfs"),
        base,
        Some("mode=755"),
    )
    .map_err(|e| format!("mount tmpfs on {}: {e}", dest.display()))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read mountinfo: {e}"))?;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split_whitespace();
        let (fstype, _source, super_opts) =
            (right.next(), right.next(), right.next().unwrap_or(""));
        let mount_point = left.split_whitespace().nth(4).unwrap_or("");
        let Some(name) = mount_point.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if name.contains('/') {
            continue;
        }
        let data = match fstype {
            Some("cgroup") => super_opts
                .split(',')
                .filter(|o| *o != "rw" && *o != "ro")
                .collect::<Vec<_>>()
                .join(","),
            Some("cgroup2") => String::new(),
            _ => continue,
        };
        let sub = dest.join(name);
        let sub_fd = mkdir_all_in_root(root, &sub)?;
        let flags = base | (options.flags & MsFlags::MS_RDONLY);
        // Without a cgroup namespace a fresh mount would show the host's whole tree.
        let fresh = if own_namespace {
            nix::mount::mount(
                Some("cgroup"),
                fd_path(&sub_fd).as_str(),
                fstype,
                flags,
                Some(data.as_str()),
            )
        } else {
            Err(nix::errno::Errno::EPERM)
        };
        match fresh {
            Ok(()) => {}
            Err(nix::errno::Errno::EPERM) => {
                let own = Path::new(mount_point).join(cgroup);
                if !own.exists() {
                    // A hierarchy the runtime does not manage (name=systemd): left empty.
                    continue;
                }
                nix::mount::mount(
                    Some(&own),
                    fd_path(&sub_fd).as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| format!("bind {} on {}: {e}", own.display(), sub.display()))?;
                if flags.contains(MsFlags::MS_RDONLY) {
                    let again = open_in_root(root, &sub, OFlag::O_PATH)
                        .map_err(|e| format!("reopen {}: {e}", sub.display()))?;
                    nix::mount::mount(
                        None::<&str>,
                        fd_path(&again).as_str(),
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
                        None::<&str>,
                    )
                    .map_err(|e| format!("remount {} ro: {e}", sub.display()))?;
                }
            }
            Err(e) => {
                return Err(format!(
                    "mount {} on {}: {e}",
                    fstype.unwrap_or(""),
                    sub.display()
                ));
            }
        }
    }
    if options.flags.contains(MsFlags::MS_RDONLY) {
        let target = open_in_root(root, dest, OFlag::O_PATH)
            .map_err(|e| format!("reopen {}: {e}", dest.display()))?;
        nix::mount::mount(
            None::<&str>,
            fd_path(&target).as_str(),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base,
            Some("mode=755"),
        )
        .map_err(|e| format!("remount {} ro: {e}", dest.display()))?;
    }
    Ok(())
}

/// True when this process has its own cgroup namespace (not the host's).
fn cgroup_namespaced() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/cgroup"),
        std::fs::read_link("/proc/1/ns/cgroup"),
    ) {
        (Ok(ours), Ok(host)) => ours != host,
        _ => false,
    }
}

/// The devices every container gets (runc's list) and the /dev symlinks.
fn create_default_devices(root: &OwnedFd, has_pts: bool) -> Res<()> {
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        create_device(
            root,
            Path::new(&format!("/dev/{name}")),
            LinuxDeviceType::C,
            major,
            minor,
            Some(0o666),
            Some(0),
            Some(0),
        )?;
    }
    let dev = open_in_root(root, Path::new("/dev"), OFlag::O_PATH | OFlag::O_DIRECTORY)
        .map_err(|e| format!("open /dev: {e}"))?;
    let mut links = vec![
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("core", "/proc/kcore"));
    }
    if has_pts {
        links.push(("ptmx", "pts/ptmx"));
    }
    for (name, target) in links {
        match nix::unistd::symlinkat(target, dev.as_fd(), name) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("symlink /dev/{name}: {e}")),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn create_device(
    root: &OwnedFd,
    path: &Path,
    typ: LinuxDeviceType,
    major: i64,
    minor: i64,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Res<()> {
    let kind = match typ {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(format!("device {}: type 'a' is not a node", path.display()));
        }
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| format!("bad device path {}", path.display()))?;
    let dir = mkdir_all_in_root(root, parent)?;
    let perm = Mode::from_bits_truncate(mode.unwrap_or(0o666) & 0o7777);
    let dev = nix::sys::stat::makedev(major as u64, minor as u64);
    match nix::sys::stat::mknodat(dir.as_fd(), name, kind, perm, dev) {
        Ok(()) => {}
        Err(nix::errno::Errno::EEXIST) => return Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            // In a user namespace mknod is not allowed: bind the host's node instead.
            let target = touch_in_root(root, path)?;
            return nix::mount::mount(
                Some(path),
                fd_path(&target).as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind device {}: {e}", path.display()));
        }
        Err(e) => return Err(format!("mknod {}: {e}", path.display())),
    }
    // mknod is subject to the umask: set the exact mode and owner.
    nix::sys::stat::fchmodat(
        dir.as_fd(),
        name,
        perm,
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .or_else(|e| {
        if e == nix::errno::Errno::EOPNOTSUPP {
            Ok(())
        } else {
            Err(e)
        }
    })
    .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    nix::unistd::fchownat(
        dir.as_fd(),
        name,
        Some(nix::unistd::Uid::from_raw(uid.unwrap_or(0))),
        Some(nix::unistd::Gid::from_raw(gid.unwrap_or(0))),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| format!("chown {}: {e}", path.display()))
}

/// How many mounts of the caller's mount table sit exactly at `path` (a stack of mounts on
/// one mount point counts each).
pub(crate) fn mounts_at(path: &Path) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let wanted = path.as_os_str().as_encoded_bytes();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| unescape_mountinfo(point) == wanted)
        .count()
}

/// Detaches the mounts stacked on `path` above the `base` that was there before the container
/// (its rootfs bind and, with it, every mount the container made beneath).
pub(crate) fn detach_mounts_above(path: &Path, base: usize) -> Res<()> {
    let mut left = mounts_at(path);
    while left > base {
        nix::mount::umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| format!("detach {}: {e}", path.display()))?;
        let now = mounts_at(path);
        if now >= left {
            return Err(format!("detach {}: the mount stays", path.display()));
        }
        left = now;
    }
    Ok(())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Writes `linux.sysctl` under /proc/sys (after `pivot_root`, into the container's /proc).
pub(crate) fn apply_sysctl(sysctl: &HashMap<String, String>) -> Res<()> {
    let proc_root = nix::fcntl::open(
        "/proc/sys",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open /proc/sys: {e}"))?;
    for (key, value) in sysctl {
        let rel = key.replace('.', "/");
        let fd = open_in_root(
            &proc_root,
            Path::new(&rel),
            OFlag::O_WRONLY | OFlag::O_TRUNC,
        )
        .map_err(|e| format!("sysctl {key}: {e}"))?;
        nix::unistd::write(&fd, value.as_bytes())
            .map_err(|e| format!("sysctl {key}={value}: {e}"))?;
    }
    Ok(())
}

/// After `pivot_root`: read-only paths, masked paths, read-only root.
pub(crate) fn finalize(spec: &Spec) -> Res<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open /: {e}"))?;
    let needs_proc = linux
        .readonly_paths()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
        || linux.masked_paths().as_ref().is_some_and(|p| !p.is_empty());
    if needs_proc {
        // We mount through /proc/self/fd: make sure /proc is a real procfs, not a planted tree.
        let fs = nix::sys::statfs::statfs("/proc").map_err(|e| format!("statfs /proc: {e}"))?;
        if fs.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
            return Err("/proc in the container is not procfs; cannot mask paths safely".into());
        }
    }
    for path in linux.readonly_paths().as_deref().unwrap_or_default() {
        let fd = match open_in_root(&root, Path::new(path), OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(format!("readonly path {path}: {e}")),
        };
        let p = fd_path(&fd);
        nix::mount::mount(
            Some(p.as_str()),
            p.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("bind readonly path {path}: {e}"))?;
        let fd = open_in_root(&root, Path::new(path), OFlag::O_PATH)
            .map_err(|e| format!("reopen {path}: {e}"))?;
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        nix::mount::mount(
            None::<&str>,
            fd_path(&fd).as_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|e| format!("remount readonly path {path}: {e}"))?;
    }
    for path in linux.masked_paths().as_deref().unwrap_or_default() {
        let fd = match open_in_root(&root, Path::new(path), OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(format!("masked path {path}: {e}")),
        };
        let is_dir = nix::sys::stat::fstat(&fd)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .unwrap_or(false);
        let result = if is_dir {
            nix::mount::mount(
                Some("tmpfs"),
                fd_path(&fd).as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
        } else {
            nix::mount::mount(
                Some("/dev/null"),
                fd_path(&fd).as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        result.map_err(|e| format!("mask {path}: {e}"))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        nix::mount::mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .map_err(|e| format!("remount / read-only: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_flags_propagation_and_data() {
        let o = opts(&["nosuid", "ro", "rbind", "rslave", "mode=755", "size=65536k"]);
        assert!(o.flags.contains(
            MsFlags::MS_NOSUID | MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC
        ));
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
    }

    #[test]
    fn later_options_override_earlier() {
        let o = opts(&["ro", "rw"]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn resolution_never_escapes_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("evil")).unwrap();
        std::os::unix::fs::symlink("../../../../", dir.path().join("up")).unwrap();
        let root = nix::fcntl::open(
            dir.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        // "/evil/passwd" resolves to <root>/etc/passwd, which does not exist.
        assert_eq!(
            open_in_root(&root, Path::new("/evil/passwd"), OFlag::O_PATH).unwrap_err(),
            nix::errno::Errno::ENOENT
        );
        // mkdir -p through a symlink to "/" creates inside the root, never on the host.
        mkdir_all_in_root(&root, Path::new("/up/berth-escape-test")).unwrap();
        assert!(dir.path().join("berth-escape-test").is_dir());
        assert!(!Path::new("/berth-escape-test").exists());
    }
}
