//! The container lifecycle against the real kernel (needs root): isolation, exit codes,
//! signals, exec, pause, and that delete leaves nothing behind.

mod common;

use std::io::Read;
use std::time::Duration;

use berth_namespaces::{CreateOptions, ExitStatus, Signal, Status, Stdio};
use common::{Bundle, Cleanup, run, runtime, set_seccomp, sleeper};

#[test]
fn isolated_pid_hostname_network_and_processes() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let script = "echo pid=$$; echo host=$(hostname); echo net=$(ls /sys/class/net); echo procs=$(ls /proc | grep -c '^[0-9]')";
    let (status, out) = run(&rt, &bundle, bundle.spec(script));
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(out.contains("host=runc\n"), "{out}");
    assert!(out.contains("net=lo\n"), "{out}");
    // sh, its command substitution subshell and ls: no host process is visible.
    let procs: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(procs <= 4, "{out}");
}

#[test]
fn exit_codes_and_signals_propagate() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let (status, _) = run(&rt, &bundle, bundle.spec("exit 7"));
    assert_eq!(status, ExitStatus::Exited(7));
    let (status, _) = run(&rt, &bundle, bundle.spec("kill -USR1 $$; sleep 5"));
    // PID 1 ignores signals it has no handler for, even from itself.
    assert_eq!(status, ExitStatus::Exited(0));

    let (_, mut c) = sleeper(&rt, &bundle, "sig");
    assert_eq!(c.get().status(), Status::Created);
    c.get().start().unwrap();
    assert_eq!(c.get().status(), Status::Running);
    c.get().kill(Signal::SIGKILL).unwrap();
    assert_eq!(
        c.get().wait().unwrap(),
        ExitStatus::Signaled(Signal::SIGKILL)
    );
    assert_eq!(c.get().status(), Status::Stopped);
    c.delete();
}

#[test]
fn graceful_stop_falls_back_to_sigkill() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let (_, mut c) = sleeper(&rt, &bundle, "stop");
    c.get().start().unwrap();
    let started = std::time::Instant::now();
    c.get().stop(Duration::from_millis(300)).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        c.get().wait().unwrap(),
        ExitStatus::Signaled(Signal::SIGKILL)
    );
    c.delete();
}

#[test]
fn capabilities_masked_paths_and_readonly_root_follow_the_spec() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let script = "grep -E '^Cap(Eff|Prm|Bnd|Inh|Amb)' /proc/self/status; echo timer_list=$(wc -c < /proc/timer_list); echo keys=$(wc -c < /proc/keys); touch /x 2>/dev/null && echo rw || echo ro; echo nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)";
    let (status, out) = run(&rt, &bundle, bundle.spec(script));
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    // AUDIT_WRITE | KILL | NET_BIND_SERVICE, what `runc spec` asks for.
    assert!(out.contains("CapEff:\t0000000020000420"), "{out}");
    assert!(out.contains("CapBnd:\t0000000020000420"), "{out}");
    assert!(out.contains("timer_list=0\n"), "{out}");
    assert!(out.contains("keys=0\n"), "{out}");
    assert!(out.contains("ro\n"), "{out}");
    assert!(out.contains("nnp=1"), "{out}");
}

#[test]
fn seccomp_denies_with_eperm() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let mut spec = bundle
        .spec("mkdir /tmp/denied; echo rc=$?; [ -d /tmp/denied ] && echo exists || echo absent");
    spec.root_mut().as_mut().unwrap().set_readonly(Some(false));
    set_seccomp(
        &mut spec,
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        }),
    );
    let (status, out) = run(&rt, &bundle, spec);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.contains("absent"), "{out}");
}

#[test]
fn seccomp_programs_are_cached_and_notify_reaches_the_listener() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, state) = runtime();
    let listener_path = bundle.path().join("seccomp.sock");
    let listener = std::os::unix::net::UnixListener::bind(&listener_path).unwrap();
    let mut spec = bundle.spec("mkdir /tmp/notified; echo rc=$?");
    spec.root_mut().as_mut().unwrap().set_readonly(Some(false));
    set_seccomp(
        &mut spec,
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "listenerPath": listener_path,
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
        }),
    );
    // The listener takes the notify fd and the process state, then closes the fd: the kernel
    // fails the waiting mkdir (ENOSYS) instead of blocking it forever.
    let accepting = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (len, fds) = {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = nix::sys::socket::recvmsg::<()>(
                std::os::fd::AsRawFd::as_raw_fd(&stream),
                &mut iov,
                Some(&mut space),
                nix::sys::socket::MsgFlags::empty(),
            )
            .unwrap();
            let fds: Vec<std::os::fd::RawFd> = msg
                .cmsgs()
                .unwrap()
                .filter_map(|c| match c {
                    nix::sys::socket::ControlMessageOwned::ScmRights(fds) => Some(fds),
                    _ => None,
                })
                .flatten()
                .collect();
            (msg.bytes, fds)
        };
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        for fd in &fds {
            let _ = nix::unistd::close(*fd);
        }
        (fds.len(), text)
    });
    let (status, out) = run(&rt, &bundle, spec.clone());
    let (fds, state_json) = accepting.join().unwrap();
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert_eq!(fds, 1, "one notify fd");
    assert!(state_json.contains("seccompFd"), "{state_json}");
    assert!(out.contains("rc=1"), "the notified mkdir failed: {out}");

    // One cached program for one profile; a damaged entry is compiled again.
    let cache = state.path().join("@seccomp-cache");
    let entries = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    assert_eq!(entries().len(), 1, "{:?}", entries());
    let mut deny = bundle.spec("mkdir /tmp/denied; echo rc=$?");
    deny.root_mut().as_mut().unwrap().set_readonly(Some(false));
    set_seccomp(
        &mut deny,
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
        }),
    );
    for damage in [false, true] {
        if damage {
            for entry in entries() {
                std::fs::write(entry, b"short").unwrap();
            }
        }
        let (status, out) = run(&rt, &bundle, deny.clone());
        assert_eq!(status, ExitStatus::Exited(0), "{out}");
        assert!(out.contains("Permission denied"), "{out}");
        assert_eq!(entries().len(), 2, "{:?}", entries());
    }
    let sizes: Vec<u64> = entries()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert!(
        sizes.iter().any(|&n| n > 0 && n % 8 == 0),
        "the used entry was compiled again: {sizes:?}"
    );
}

#[test]
fn default_profile_blocks_mount_and_unshare() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let mut spec = bundle.spec("unshare -n true; echo unshare=$?; echo ok");
    let defaults = berth_namespaces::defaults::spec("rootfs", &["true"], "x");
    let linux = spec.linux_mut().as_mut().unwrap();
    linux.set_seccomp(defaults.linux().as_ref().unwrap().seccomp().clone());
    // Even with CAP_SYS_ADMIN the filter refuses.
    let process = spec.process_mut().as_mut().unwrap();
    let mut caps = process.capabilities().clone().unwrap();
    let mut all = caps.effective().clone().unwrap();
    all.insert(berth_namespaces::oci_spec::runtime::Capability::SysAdmin);
    caps.set_effective(Some(all.clone()));
    caps.set_permitted(Some(all.clone()));
    caps.set_bounding(Some(all));
    process.set_capabilities(Some(caps));
    let (status, out) = run(&rt, &bundle, spec);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert!(out.contains("unshare=1"), "{out}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn exec_joins_the_same_namespaces() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let (_, mut c) = sleeper(&rt, &bundle, "exec");
    c.get().start().unwrap();
    let pid = c.get().pid();
    let mut process = c.get().spec().process().clone().unwrap();
    process.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "for n in pid net ipc uts mnt; do readlink /proc/self/ns/$n; done; hostname; exit 4".into(),
    ]));
    let mut exec = c
        .get()
        .exec(
            process,
            CreateOptions {
                stdio: Stdio::Piped,
                ..Default::default()
            },
        )
        .unwrap();
    let mut pipes = exec.take_stdio().unwrap();
    drop(pipes.stdin.take());
    let mut out = String::new();
    pipes
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(exec.wait().unwrap(), ExitStatus::Exited(4));
    for ns in ["pid", "net", "ipc", "uts", "mnt"] {
        let host_view = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert!(out.contains(host_view.to_str().unwrap()), "{ns}: {out}");
    }
    assert!(out.contains("runc\n"), "{out}");
    // The exec'd process is in the container's cgroup too.
    assert!(c.get().pids().unwrap().contains(&pid));
    c.delete();
}

#[test]
fn pause_and_resume() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let (id, mut c) = sleeper(&rt, &bundle, "pause");
    c.get().start().unwrap();
    c.get().pause().unwrap();
    assert_eq!(c.get().status(), Status::Paused);
    assert_eq!(rt.load(&id).unwrap().state().status, Status::Paused);
    c.get().resume().unwrap();
    assert_eq!(c.get().status(), Status::Running);
    c.delete();
}

#[test]
fn state_is_visible_to_other_handles_and_delete_leaves_nothing() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    // Only mounts of this bundle count: other tests on the machine mount and unmount too.
    let ours = |path: &std::path::Path| {
        let path = path.to_str().unwrap().to_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&path))
            .count()
    };
    let mounts_before = ours(bundle.path());
    let (rt, state) = runtime();
    let (id, mut c) = sleeper(&rt, &bundle, "state");
    let other = rt.load(&id).unwrap();
    let s = other.state();
    assert_eq!(s.status, Status::Created);
    assert_eq!(s.pid, c.get().pid().as_raw());
    assert_eq!(s.bundle, bundle.path());
    let json = serde_json::to_value(&s).unwrap();
    for key in [
        "ociVersion",
        "id",
        "pid",
        "status",
        "bundle",
        "rootfs",
        "created",
        "owner",
    ] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }
    c.get().start().unwrap();
    assert_eq!(rt.load(&id).unwrap().state().status, Status::Running);
    assert_eq!(rt.list().unwrap().len(), 1);
    let cgroup = c.get().cgroup().clone();
    // A running container is not deleted without force.
    assert!(rt.load(&id).unwrap().delete(false).is_err());
    rt.load(&id).unwrap().delete(true).unwrap();
    c.container = None;
    assert!(std::fs::read_dir(state.path()).unwrap().next().is_none());
    assert!(!cgroup.exists());
    assert_eq!(mounts_before, ours(bundle.path()));
}

#[test]
fn log_file_stdio() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let log = bundle.path().join("out.log");
    let id = berth_testutil::unique_name("log");
    let c = rt
        .create_from_spec(
            &id,
            bundle.path(),
            bundle.spec("echo to-out; echo to-err >&2"),
            CreateOptions {
                stdio: Stdio::log_file(&log).unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    let mut c = Cleanup::new(c);
    c.get().start().unwrap();
    assert_eq!(c.get().wait().unwrap(), ExitStatus::Exited(0));
    c.delete();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("to-out") && text.contains("to-err"), "{text}");
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_range() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let mut spec =
        bundle.spec("cat /proc/self/uid_map; echo uid=$(id -u); cat /dev/null && echo devnull-ok");
    let linux = spec.linux_mut().as_mut().unwrap();
    let mut namespaces = linux.namespaces().clone().unwrap();
    let mut user = berth_namespaces::oci_spec::runtime::LinuxNamespace::default();
    user.set_typ(berth_namespaces::oci_spec::runtime::LinuxNamespaceType::User);
    namespaces.push(user);
    linux.set_namespaces(Some(namespaces));
    let map: Vec<berth_namespaces::oci_spec::runtime::LinuxIdMapping> = serde_json::from_value(
        serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]),
    )
    .unwrap();
    linux.set_uid_mappings(Some(map.clone()));
    linux.set_gid_mappings(Some(map));
    let (status, out) = run(&rt, &bundle, spec);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    let line: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(line, ["0", "100000", "65536"], "{out}");
    assert!(out.contains("uid=0"), "{out}");
    assert!(out.contains("devnull-ok"), "{out}");
}

#[test]
fn hooks_receive_the_state() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let dir = bundle.path().to_path_buf();
    let hook = |name: &str| -> berth_namespaces::oci_spec::runtime::Hook {
        serde_json::from_value(serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{name}.json", dir.display())]
        }))
        .unwrap()
    };
    let mut spec = bundle.spec("true");
    let hooks: berth_namespaces::oci_spec::runtime::Hooks =
        serde_json::from_value(serde_json::json!({
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        }))
        .unwrap();
    spec.set_hooks(Some(hooks));
    let (status, _) = run(&rt, &bundle, spec);
    assert_eq!(status, ExitStatus::Exited(0));
    for (stage, status) in [
        ("createRuntime", "created"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{stage}.json"))).unwrap();
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(state["bundle"], dir.to_str().unwrap(), "{stage}: {text}");
        assert!(
            state["id"].as_str().unwrap().starts_with("berth-test-c-"),
            "{stage}: {text}"
        );
        if stage != "poststart" {
            assert_eq!(state["status"], status, "{stage}: {text}");
        }
    }
}

#[test]
fn a_second_container_joins_the_first_ones_network_namespace() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let (_, mut pod) = sleeper(&rt, &bundle, "pod");
    pod.get().start().unwrap();
    let net = format!("/proc/{}/ns/net", pod.get().pid());
    let mut spec = bundle.spec("readlink /proc/self/ns/net");
    let linux = spec.linux_mut().as_mut().unwrap();
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .map(|mut ns| {
            if ns.typ() == berth_namespaces::oci_spec::runtime::LinuxNamespaceType::Network {
                ns.set_path(Some(net.clone().into()));
            }
            ns
        })
        .collect();
    linux.set_namespaces(Some(namespaces));
    let (status, out) = run(&rt, &bundle, spec);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert_eq!(
        out.trim(),
        std::fs::read_link(&net).unwrap().to_str().unwrap()
    );
    pod.delete();
}

#[test]
fn signal_mask_and_dispositions_are_reset_before_exec() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    // This test process ignores SIGPIPE (Rust's std does it for every binary, the init too),
    // and blocks SIGUSR2: neither may reach the container's program.
    let mut blocked = nix::sys::signal::SigSet::empty();
    blocked.add(Signal::SIGUSR2);
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&blocked),
        None,
    )
    .unwrap();
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    // grep itself is the container's program (a shell would change its own signals).
    let mut spec = bundle.spec("");
    let args = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"];
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    let (status, out) = run(&rt, &bundle, spec);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
    assert!(out.contains("SigIgn:\t0000000000000000"), "{out}");
}

#[test]
fn create_container_and_start_container_hooks_run_inside() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let dir = bundle.path().to_path_buf();
    let hooks: berth_namespaces::oci_spec::runtime::Hooks =
        serde_json::from_value(serde_json::json!({
            // Resolved on the host, run in the container's namespaces before pivot_root.
            "createContainer": [{
                "path": "/bin/sh",
                "args": ["sh", "-c", format!(
                    "cat > {0}/createContainer.json; readlink /proc/self/ns/mnt > {0}/mnt",
                    dir.display()
                )]
            }],
            // Resolved in the container (busybox's sh; the root is read-only), run just before the
            // program.
            "startContainer": [{
                "path": "/bin/sh",
                "args": ["sh", "-c", "cat > /dev/shm/startContainer.json"]
            }],
        }))
        .unwrap();
    let mut spec = bundle.spec("cat /dev/shm/startContainer.json");
    spec.set_hooks(Some(hooks));
    let (status, out) = run(&rt, &bundle, spec);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    let started: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(started["status"], "created", "{out}");
    assert_eq!(started["pid"], 1, "{out}");
    assert!(started["id"].as_str().unwrap().starts_with("berth-test-c-"));

    let text = std::fs::read_to_string(dir.join("createContainer.json")).unwrap();
    let created: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created["status"], "creating", "{text}");
    assert_eq!(created["bundle"], dir.to_str().unwrap(), "{text}");
    let hook_mnt = std::fs::read_to_string(dir.join("mnt")).unwrap();
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(hook_mnt.trim(), host_mnt.to_str().unwrap());
}

#[test]
fn a_failing_create_container_hook_fails_create_and_leaves_nothing() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, state) = runtime();
    let hooks: berth_namespaces::oci_spec::runtime::Hooks =
        serde_json::from_value(serde_json::json!({
            "createContainer": [{ "path": "/bin/false" }],
        }))
        .unwrap();
    let mut spec = bundle.spec("true");
    spec.set_hooks(Some(hooks));
    let id = berth_testutil::unique_name("hookfail");
    let err = rt
        .create_from_spec(&id, bundle.path(), spec, CreateOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("createContainer"), "{err}");
    assert!(!state.path().join(&id).exists());
}

#[test]
fn the_container_process_is_in_its_cgroup_in_every_hierarchy() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, state) = runtime();
    let (id, mut c) = sleeper(&rt, &bundle, "join");
    // Created: the process has joined (itself, on v1) before `create` returned.
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", c.get().pid())).unwrap();
    let want = format!("/{}/{id}", state.cgroup_parent.display());
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(
            cgroups.lines().any(|l| l == format!("0::{want}")),
            "{cgroups}"
        );
        c.delete();
        return;
    }
    for controller in [
        "memory", "pids", "cpuset", "cpu", "devices", "freezer", "blkio",
    ] {
        let line = cgroups
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == controller))
            })
            .unwrap_or_else(|| panic!("{controller} missing in {cgroups}"));
        assert!(line.ends_with(&want), "{controller}: {line} (want {want})");
    }
    c.get().start().unwrap();
    c.delete();
}
