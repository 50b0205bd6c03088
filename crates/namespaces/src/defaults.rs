//! What Docker gives a container by default, as an OCI [`Spec`]: the engine (`berth run`, image
//! build `RUN`) and the cluster's pods start from [`spec`]; the OCI path (`berth-runtime`)
//! applies exactly what config.json says instead.
//!
//! The defaults: Docker's 14 capabilities, `no_new_privs`, Docker's masked and read-only paths,
//! its mounts (/proc, /dev tmpfs, /dev/pts, /dev/shm, /dev/mqueue, read-only /sys and
//! /sys/fs/cgroup), all namespaces but the user namespace, and [`seccomp_profile`]: an allowlist
//! in the spirit of Docker's profile that denies mount, kexec, keyctl, bpf, ptrace, module
//! loading, namespace creation, clock setting, reboot and the like with `EPERM`.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType, LinuxSeccomp,
    LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator, LinuxSyscall, Mount,
    PosixRlimitType, Process, Root, Spec,
};

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

/// Syscalls the default profile allows unconditionally (Docker's list, minus the ones it only
/// allows with extra capabilities).
const ALLOWED_SYSCALLS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "arch_prctl",
    "modify_ldt",
    "socket",
    "personality",
];

/// Namespace flags `clone` may not carry under the default profile (Docker's mask).
const CLONE_NAMESPACE_MASK: u64 = 0x7E02_0000;

/// Docker's default seccomp profile in spirit: `EPERM` for everything not on the allowlist,
/// `clone` only without namespace flags, `clone3` answered with `ENOSYS` so libcs fall back
/// to `clone` (whose flags the filter can inspect).
pub fn seccomp_profile() -> LinuxSeccomp {
    let rule =
        |names: Vec<String>, action, errno: Option<u32>, args: Option<Vec<LinuxSeccompArg>>| {
            let mut s = LinuxSyscall::default();
            s.set_names(names);
            s.set_action(action);
            s.set_errno_ret(errno);
            s.set_args(args);
            s
        };
    let clone_arg = oci_spec::runtime::LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(CLONE_NAMESPACE_MASK)
        .value_two(0u64)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .expect("valid seccomp arg");
    let syscalls = vec![
        rule(
            ALLOWED_SYSCALLS.iter().map(|s| s.to_string()).collect(),
            LinuxSeccompAction::ScmpActAllow,
            None,
            None,
        ),
        rule(
            vec!["clone".into()],
            LinuxSeccompAction::ScmpActAllow,
            None,
            Some(vec![clone_arg]),
        ),
        rule(
            vec!["clone3".into()],
            LinuxSeccompAction::ScmpActErrno,
            Some(libc::ENOSYS as u32),
            None,
        ),
    ];
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    profile.set_architectures(Some(vec![
        oci_spec::runtime::Arch::ScmpArchX86_64,
        oci_spec::runtime::Arch::ScmpArchX86,
        oci_spec::runtime::Arch::ScmpArchX32,
    ]));
    profile.set_syscalls(Some(syscalls));
    profile
}
