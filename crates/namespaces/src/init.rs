//! The container init: a fresh, single-threaded process (the runtime re-executes a read-only
//! view of its init binary) that joins or creates the namespaces, forks the container process
//! as a sibling of itself (`CLONE_PARENT`, so the runtime is its parent and can wait on it),
//! builds the root filesystem, drops privileges and finally `exec`s the user's program.
//!
//! A binary that runs containers calls [`main_if_init`] first thing in `main`; the runtime
//! marks the init by the `_BERTH_INIT_FD` environment variable (the sync socket's number).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::LinuxNamespaceType;

use crate::bpf::{self, SeccompProgram};
use crate::channel::{Channel, InitConfig, InitKind, Message};
use crate::hooks::{self, HookStage};
use crate::{rootfs, security, sys};

/// The environment variable that tells a binary it was started as a Berth container init.
pub const INIT_ENV: &str = "_BERTH_INIT_FD";

/// If this process was started as a container init, runs it and never returns; otherwise
/// returns immediately. Call it first thing in `main` of any binary that is used as the init
/// binary (by default the runtime uses the current executable).
///
/// ```no_run
/// // First statement of `main`:
/// berth_namespaces::init::main_if_init();
/// // ... the program's normal main ...
/// ```
pub fn main_if_init() {
    let Some(fd) = std::env::var_os(INIT_ENV) else {
        return;
    };
    let code = match fd.to_str().and_then(|s| s.parse::<i32>().ok()) {
        Some(fd) => run(fd),
        None => {
            eprintln!("berth init: bad {INIT_ENV}");
            1
        }
    };
    std::process::exit(code);
}

fn run(fd: i32) -> i32 {
    let Ok(fd) = sys::own_inherited_fd(fd) else {
        eprintln!("berth init: sync fd {fd} is not open");
        return 1;
    };
    let mut channel = Channel::from_fd(fd);
    let config = match channel.recv() {
        Ok(Some((Message::Config(config), _))) => config,
        _ => return 1,
    };
    match stage1(&mut channel, &config) {
        Ok(()) => 0,
        Err(message) => {
            let _ = channel.send(&Message::Error(message));
            1
        }
    }
}

/// Joins and creates namespaces, then forks the container process.
fn stage1(channel: &mut Channel, config: &InitConfig) -> Result<(), String> {
    // Nothing of the runtime crosses into the container.
    sys::cloexec_from(3 + config.preserve_fds).map_err(|e| format!("close_range: {e}"))?;
    // Open every namespace first: after joining a mount namespace the paths may not resolve.
    let mut joins = Vec::new();
    for (typ, path) in &config.join {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("open {typ} namespace {}: {e}", path.display()))?;
        joins.push((*typ, path, OwnedFd::from(file)));
    }
    // The user namespace first, so the others are owned by it; the mount namespace last.
    joins.sort_by_key(|(typ, _, _)| match typ {
        LinuxNamespaceType::User => 0,
        LinuxNamespaceType::Mount => 2,
        _ => 1,
    });
    // The exec fifo, opened read-write (so opening never blocks) while we are still host root
    // and the host path is visible; `start` writes one byte into it.
    let fifo = match &config.fifo {
        Some(path) => Some(
            nix::fcntl::open(
                path,
                nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| format!("open exec fifo: {e}"))?,
        ),
        None => None,
    };
    // The cgroup files the container process moves itself in through, opened on the host.
    let cgroup_files = config
        .cgroup_self_join
        .iter()
        .map(|path| {
            nix::fcntl::open(
                path,
                nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| format!("open {}: {e}", path.display()))
        })
        .collect::<Result<Vec<OwnedFd>, String>>()?;
    // A seccomp notify listener lives on the host: connect before leaving it.
    let linux = config.spec.linux().clone().unwrap_or_default();
    let listener = security::connect_seccomp_listener(&linux)?;
    let new = CloneFlags::from_bits_truncate(config.new_namespaces);
    for (typ, path, fd) in &joins {
        // The declared type: the kernel refuses a file of another namespace type.
        nix::sched::setns(fd, CloneFlags::from_bits_truncate(*typ as i32))
            .map_err(|e| format!("join {typ} namespace {}: {e}", path.display()))?;
        if *typ == LinuxNamespaceType::User {
            become_root()?;
        }
    }
    if new.contains(CloneFlags::CLONE_NEWUSER) {
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("unshare user namespace: {e}"))?;
        channel
            .send(&Message::NeedIdMaps)
            .map_err(|e| format!("sync: {e}"))?;
        match channel.recv() {
            Ok(Some((Message::Continue, _))) => {}
            other => return Err(format!("sync: expected continue, got {other:?}")),
        }
        become_root()?;
    }
    // The cgroup namespace is rooted at the cgroup of the process that creates it: the container
    // process creates it once the runtime has moved it into its cgroup (stage2).
    let others = new - CloneFlags::CLONE_NEWUSER - CloneFlags::CLONE_NEWCGROUP;
    if !others.is_empty() {
        nix::sched::unshare(others).map_err(|e| format!("unshare namespaces: {e}"))?;
    }
    let (go_read, go_write) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    match sys::clone_parent().map_err(|e| format!("clone: {e}"))? {
        Some(child) => {
            drop(go_read);
            channel
                .send(&Message::Pid(child.as_raw()))
                .map_err(|e| format!("sync: {e}"))?;
            let _ = nix::unistd::write(&go_write, b"g");
            Ok(())
        }
        None => {
            drop(go_write);
            let mut byte = [0u8; 1];
            let _ = nix::unistd::read(&go_read, &mut byte);
            drop(go_read);
            let code = match stage2(channel, config, fifo, listener, cgroup_files) {
                Ok(never) => match never {},
                Err(message) => {
                    let _ = channel.send(&Message::Error(message));
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

fn become_root() -> Result<(), String> {
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(|e| format!("setresgid(0) in user namespace: {e}"))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(|e| format!("setresuid(0) in user namespace: {e}"))
}

enum Never {}

/// The container process: rootfs, process attributes, wait for start, exec.
fn stage2(
    channel: &mut Channel,
    config: &InitConfig,
    fifo: Option<OwnedFd>,
    listener: Option<OwnedFd>,
    cgroup_files: Vec<OwnedFd>,
) -> Result<Never, String> {
    let spec = &config.spec;
    let process = spec.process().as_ref().ok_or("spec has no process")?;
    let linux = spec.linux().clone().unwrap_or_default();
    let new = CloneFlags::from_bits_truncate(config.new_namespaces);

    let mut cgroup = CgroupJoin::Pending;
    if !config.cgroup_self_join.is_empty() {
        // First thing: everything from here on is accounted to the container.
        for (fd, path) in cgroup_files.iter().zip(&config.cgroup_self_join) {
            nix::unistd::write(fd, b"0")
                .map_err(|e| format!("join cgroup {}: {e}", path.display()))?;
        }
        drop(cgroup_files);
        cgroup = CgroupJoin::Done;
    }
    if new.contains(CloneFlags::CLONE_NEWCGROUP) {
        cgroup.wait(channel)?;
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("unshare cgroup namespace: {e}"))?;
    }
    let hooks = spec.hooks().clone().unwrap_or_default();

    // A spec without a mount namespace inherits the runtime's (runtime-spec): the rootfs is
    // then built in the host's mount table, and the process chroots into it.
    let host_mounts = !new.contains(CloneFlags::CLONE_NEWNS)
        && !config
            .join
            .iter()
            .any(|(typ, _)| *typ == LinuxNamespaceType::Mount);
    if config.kind == InitKind::Exec && host_mounts {
        nix::unistd::chroot(&config.rootfs)
            .map_err(|e| format!("chroot {}: {e}", config.rootfs.display()))?;
        nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    }
    if config.kind == InitKind::Create {
        let env_cwd = process.cwd().clone();
        // createContainer: in the container's namespaces, after the mounts, before pivot_root
        // (so the hook's path resolves on the host). Hooks are processes: cgroup first.
        let mut create_container = || -> Result<(), String> {
            if hooks
                .create_container()
                .as_ref()
                .is_none_or(|h| h.is_empty())
            {
                return Ok(());
            }
            cgroup.wait(channel)?;
            let state = hook_state(config, "creating");
            hooks::run(hooks.create_container(), HookStage::CreateContainer, &state)
                .map_err(|e| e.to_string())
        };
        rootfs::prepare(
            spec,
            &config.rootfs,
            &config.bundle,
            &env_cwd,
            &config.cgroup,
            host_mounts,
            &mut create_container,
        )?;
        if let Some(hostname) = spec.hostname() {
            nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname: {e}"))?;
        }
        if let Some(domainname) = spec.domainname() {
            sys::set_domainname(domainname).map_err(|e| format!("setdomainname: {e}"))?;
        }
        if let Some(sysctl) = linux.sysctl() {
            rootfs::apply_sysctl(sysctl)?;
        }
        rootfs::finalize(spec)?;
    }

    if process.terminal() == Some(true) && config.console {
        setup_console(channel, process)?;
    } else if config.kind == InitKind::Create {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    }

    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("oom_score_adj: {e}"))?;
    }
    security::apply_rlimits(process)?;
    let env = build_env(process);
    let program = resolve_program(process, &env)?;
    let args = cstrings(process.args().as_deref().unwrap_or_default())?;
    let envp = cstrings(&env)?;
    let filter = config.seccomp.as_ref();
    let no_new_privs = process.no_new_privileges() == Some(true);
    if no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    }
    // As runc: the user's program starts with an empty signal mask and default dispositions
    // (this init is a Rust program, which ignores SIGPIPE; exec keeps ignored signals). Done
    // before any seccomp filter could deny rt_sigaction.
    sys::reset_signals().map_err(|e| format!("reset signals: {e}"))?;
    security::set_exec_labels(process)?;
    // Nothing of the runtime crosses into the container. Done before any seccomp filter is
    // loaded: a profile need not allow close_range (the OCI runtime-tools default does not).
    sys::cloexec_from(3 + config.preserve_fds).map_err(|e| format!("close_range: {e}"))?;
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it before dropping caps.
    let mut filter = filter;
    if !no_new_privs && let Some(f) = filter.take() {
        load_seccomp(f, listener.as_ref(), config)?;
    }
    security::set_user_and_caps(process)?;
    let cwd = process.cwd();
    nix::unistd::chdir(cwd).map_err(|e| format!("chdir {}: {e}", cwd.display()))?;
    if let Some(mask) = process.user().umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }

    cgroup.wait(channel)?;
    channel
        .send(&Message::Ready)
        .map_err(|e| format!("sync: {e}"))?;
    if let Some(fifo) = fifo {
        let mut byte = [0u8; 1];
        loop {
            match nix::unistd::read(&fifo, &mut byte) {
                Ok(1) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                other => {
                    eprintln!("berth init: waiting for start: {other:?}");
                    std::process::exit(1);
                }
            }
        }
    }
    // startContainer: after `start`, in the container, just before the user's program.
    if hooks
        .start_container()
        .as_ref()
        .is_some_and(|h| !h.is_empty())
    {
        let state = hook_state(config, "created");
        let ignored = sys::ignore_sigpipe(true).is_ok();
        if let Err(e) = hooks::run(hooks.start_container(), HookStage::StartContainer, &state) {
            eprintln!("berth init: {e}");
            std::process::exit(1);
        }
        if ignored && let Err(e) = sys::ignore_sigpipe(false) {
            eprintln!("berth init: restore SIGPIPE: {e}");
            std::process::exit(1);
        }
    }
    if let Some(f) = filter.take()
        && let Err(e) = load_seccomp(f, listener.as_ref(), config)
    {
        eprintln!("berth init: {e}");
        std::process::exit(1);
    }
    drop(listener);
    let err = nix::unistd::execve(&program, &args, &envp).unwrap_err();
    eprintln!("berth init: exec {}: {err}", program.to_string_lossy());
    std::process::exit(127);
}

/// Loads the filter; with a notify listener, sends it the notify fd and the process state.
fn load_seccomp(
    program: &SeccompProgram,
    listener: Option<&OwnedFd>,
    config: &InitConfig,
) -> Result<(), String> {
    let notify = bpf::load(program)?;
    match (listener, notify) {
        (Some(listener), Some(notify)) => security::send_notify_fd(listener, notify, config),
        _ => Ok(()),
    }
}

/// Whether the runtime has moved the container process into its cgroup yet.
enum CgroupJoin {
    Pending,
    Done,
}

impl CgroupJoin {
    /// Waits (once) for the runtime's `Continue`, sent after it moved us into the cgroup.
    fn wait(&mut self, channel: &mut Channel) -> Result<(), String> {
        if let CgroupJoin::Pending = self {
            match channel.recv() {
                Ok(Some((Message::Continue, _))) => *self = CgroupJoin::Done,
                other => return Err(format!("sync: expected continue, got {other:?}")),
            }
        }
        Ok(())
    }
}

/// The state the container-side hooks receive: `pid` as the container sees itself (as runc).
fn hook_state(config: &InitConfig, status: &str) -> String {
    hooks::state_json(
        &config.spec,
        &config.id,
        status,
        std::process::id() as i32,
        &config.bundle,
    )
}

fn setup_console(
    channel: &mut Channel,
    process: &oci_spec::runtime::Process,
) -> Result<(), String> {
    use nix::fcntl::OFlag;
    let master = nix::fcntl::open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("open /dev/ptmx: {e}"))?;
    sys::unlock_pty(master.as_fd()).map_err(|e| format!("unlockpt: {e}"))?;
    let slave = sys::open_pty_peer(master.as_fd()).map_err(|e| format!("open pty peer: {e}"))?;
    if let Some(size) = process.console_size() {
        sys::set_window_size(slave.as_fd(), size.height() as u16, size.width() as u16)
            .map_err(|e| format!("set console size: {e}"))?;
    }
    channel
        .send_with_fd(&Message::Console, master.as_raw_fd())
        .map_err(|e| format!("send console: {e}"))?;
    drop(master);
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    sys::set_controlling_terminal(slave.as_fd()).map_err(|e| format!("TIOCSCTTY: {e}"))?;
    for target in 0..3 {
        sys::dup_onto(slave.as_fd(), target).map_err(|e| format!("dup console: {e}"))?;
    }
    Ok(())
}

/// The process environment: the spec's, plus `HOME` from the container's /etc/passwd (or `/`)
/// when the spec sets none, as runc does.
fn build_env(process: &oci_spec::runtime::Process) -> Vec<String> {
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let uid = process.user().uid();
        let home = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|passwd| {
                passwd.lines().find_map(|line| {
                    let fields: Vec<&str> = line.split(':').collect();
                    (fields.len() >= 6 && fields[2].parse() == Ok(uid))
                        .then(|| fields[5].to_string())
                })
            })
            .unwrap_or_else(|| "/".to_string());
        env.push(format!("HOME={home}"));
    }
    env
}

/// Resolves `args[0]` with the container's `PATH` (checked before `Ready`, so `create` reports
/// a missing executable as runc does).
fn resolve_program(
    process: &oci_spec::runtime::Process,
    env: &[String],
) -> Result<CString, String> {
    let args = process.args().as_deref().unwrap_or_default();
    let first = args.first().ok_or("process.args is empty")?;
    let candidate = |p: &Path| -> bool {
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && !p.is_dir()
    };
    let found = if first.contains('/') {
        let p = PathBuf::from(first);
        let full = if p.is_absolute() {
            p
        } else {
            process.cwd().join(p)
        };
        candidate(&full).then_some(full)
    } else {
        let vars: HashMap<&str, &str> = env.iter().filter_map(|e| e.split_once('=')).collect();
        let path = vars
            .get("PATH")
            .copied()
            .unwrap_or(&crate::defaults::DEFAULT_PATH[5..]);
        path.split(':')
            .map(|dir| Path::new(dir).join(first))
            .find(|p| candidate(p))
    };
    let found =
        found.ok_or_else(|| format!("exec: {first:?}: executable file not found in $PATH"))?;
    CString::new(found.as_os_str().as_bytes()).map_err(|_| "program path contains NUL".to_string())
}

fn cstrings(items: &[String]) -> Result<Vec<CString>, String> {
    items
        .iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| format!("{s:?} contains a NUL byte")))
        .collect()
}
