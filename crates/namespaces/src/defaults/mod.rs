//! What Docker gives a container by default, as an OCI [`Spec`]: the engine (`berth run`, image
//! build `RUN`) and the cluster's pods start from [`spec`]; the OCI path (`berth-runtime`)
//! applies exactly what config.json says instead.
//!
//! The defaults: Docker's 14 capabilities, `no_new_privs`, Docker's masked and read-only paths,
//! its mounts (/proc, /dev tmpfs, /dev/pts, /dev/shm, /dev/mqueue, read-only /sys and
//! /sys/fs/cgroup), all namespaces but the user namespace, and [`seccomp_profile`]: an allowlist
//! in the spirit of Docker's profile that denies mount, kexec, keyctl, bpf, ptrace, module
//! loading, namespace creation, clock setting, reboot and the like with `EPERM`.

mod seccomp;

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType, Mount, PosixRlimitType,
    Process, Root, Spec,
};

pub use seccomp::seccomp_profile;

/// Docker's default capability set.
pub const CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths Docker masks (bind /dev/null over files, an empty read-only tmpfs over directories).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The default `PATH` of a container process.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A spec with Docker's defaults running `args` in `rootfs` (absolute, or relative to the
/// bundle directory): hostname `hostname`, user root, cwd `/`.
///
/// ```
/// let spec = berth_namespaces::defaults::spec("rootfs", &["/bin/sh", "-c", "echo hi"], "box");
/// assert_eq!(spec.hostname().as_deref(), Some("box"));
/// assert!(spec.linux().as_ref().unwrap().seccomp().is_some());
/// ```
pub fn spec(rootfs: impl AsRef<Path>, args: &[&str], hostname: &str) -> Spec {
    let mut spec = Spec::default();
    let mut root = Root::default();
    root.set_path(rootfs.as_ref().to_path_buf());
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    spec.set_hostname(Some(hostname.to_string()));
    spec.set_mounts(Some(mounts()));
    spec.set_annotations(None);

    let mut process = Process::default();
    process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    process.set_env(Some(vec![DEFAULT_PATH.to_string()]));
    process.set_cwd("/".into());
    process.set_no_new_privileges(Some(true));
    process.set_terminal(Some(false));
    process.set_capabilities(Some(capabilities()));
    let nofile_limit = nofile_limit();
    let nofile = oci_spec::runtime::PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(nofile_limit)
        .soft(nofile_limit)
        .build()
        .expect("valid rlimit");
    process.set_rlimits(Some(vec![nofile]));
    spec.set_process(Some(process));

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_namespaces(Some(namespaces()));
    linux.set_masked_paths(Some(MASKED_PATHS.iter().map(|p| p.to_string()).collect()));
    linux.set_readonly_paths(Some(READONLY_PATHS.iter().map(|p| p.to_string()).collect()));
    linux.set_seccomp(Some(seccomp_profile()));
    linux.set_resources(None);
    spec
}

/// Docker's `RLIMIT_NOFILE` (1048576), lowered to this process's hard limit: raising a hard
/// limit needs `CAP_SYS_RESOURCE`, which some hosts and sandboxes don't give even to root.
fn nofile_limit() -> u64 {
    const DOCKER_NOFILE: u64 = 1_048_576;
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(DOCKER_NOFILE, |(_, hard)| hard.min(DOCKER_NOFILE))
}

/// The namespaces Docker creates: pid, network, ipc, uts, mount and cgroup.
pub fn namespaces() -> Vec<LinuxNamespace> {
    [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ);
        ns
    })
    .collect()
}

/// Docker's capabilities in every set but ambient (as Docker gives a root process).
pub fn capabilities() -> LinuxCapabilities {
    let set: HashSet<Capability> = CAPABILITIES.into_iter().collect();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    caps
}

/// Docker's default mounts.
pub fn mounts() -> Vec<Mount> {
    let mount = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        let mut m = Mount::default();
        m.set_destination(dest.into());
        m.set_typ(Some(typ.to_string()));
        m.set_source(Some(source.into()));
        m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
        m
    };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    ]
}
