//! Runtime-spec requirements checked side by side with crun and runc (issue 18, item 14): a
//! seccomp profile without close_range, hugepage limits, FIFOs in `linux.devices`, joining
//! namespaces by path (type-checked; the mount namespace too), a spec without a mount
//! namespace, hooks that fail after start, and LSM labels the host cannot apply.

mod common;

use std::path::Path;

use berth_namespaces::oci_spec::runtime::{
    Hooks, LinuxDevice, LinuxHugepageLimit, LinuxNamespace, LinuxNamespaceType, Spec,
};
use berth_namespaces::{CreateOptions, Error, ExitStatus, Stdio};
use common::{Bundle, Cleanup, run, runtime, set_seccomp};

/// The OCI runtime-tools' generated default profile (an allow-list from before close_range
/// existed), for the runc default spec's capabilities on x86_64.
const RUNTIME_TOOLS_SECCOMP: &str = include_str!("fixtures/runtime-tools-default-seccomp.json");

#[test]
fn a_profile_without_close_range_works_without_no_new_privileges() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    for nnp in [false, true] {
        let mut spec = bundle.spec("echo started; ls /proc/self/fd | wc -l");
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_no_new_privileges(Some(nnp));
        set_seccomp(
            &mut spec,
            serde_json::from_str(RUNTIME_TOOLS_SECCOMP).unwrap(),
        );
        let (status, out) = run(&rt, &bundle, spec);
        assert_eq!(status, ExitStatus::Exited(0), "nnp={nnp}: {out}");
        assert!(out.contains("started"), "nnp={nnp}: {out}");
        // stdio, plus the fd `ls` reads the directory through: nothing of the runtime leaked.
        assert_eq!(
            out.lines().nth(1).map(str::trim),
            Some("4"),
            "nnp={nnp}: {out}"
        );
    }
}

/// Sets the path of the spec's namespace of type `typ` (adding the entry when missing).
fn join_namespace(spec: &mut Spec, typ: LinuxNamespaceType, path: &str) {
    let linux = spec.linux_mut().as_mut().unwrap();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|ns| ns.typ() != typ);
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(Some(path.into()));
    namespaces.push(ns);
    linux.set_namespaces(Some(namespaces));
}

/// Entries of `dir` (the state root: one directory per container, plus caches starting `@`).
fn containers_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('@'))
                .collect()
        })
        .unwrap_or_default()
}

fn create_err(rt: &berth_namespaces::Runtime, bundle: &Bundle, spec: Spec) -> Error {
    let id = berth_testutil::unique_name("bad");
    match rt.create_from_spec(&id, bundle.path(), spec, null_stdio()) {
        Ok(c) => {
            let _ = c.delete(true);
            panic!("create succeeded");
        }
        Err(e) => e,
    }
}

fn null_stdio() -> CreateOptions {
    CreateOptions {
        stdio: Stdio::Null,
        ..Default::default()
    }
}

#[test]
fn hugepage_limits_apply_to_the_container() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let root = Path::new("/sys/fs/cgroup");
    let hierarchy = if root.join("hugetlb/cgroup.procs").is_file() {
        root.join("hugetlb")
    } else if std::fs::read_to_string(root.join("unified/cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "hugetlb"))
    {
        root.join("unified")
    } else if root.join("cgroup.controllers").is_file() {
        root.to_path_buf()
    } else {
        berth_testutil::skip("hugepage limits", "no hugetlb controller on this host");
        return;
    };
    let bundle = Bundle::busybox();
    let (rt, state) = runtime();
    let mut spec = bundle.spec("sleep 30");
    let limits: Vec<LinuxHugepageLimit> =
        serde_json::from_value(serde_json::json!([{"pageSize": "2MB", "limit": 8388608}])).unwrap();
    let linux = spec.linux_mut().as_mut().unwrap();
    let mut resources = linux.resources().clone().unwrap_or_default();
    resources.set_hugepage_limits(Some(limits));
    linux.set_resources(Some(resources));
    let id = berth_testutil::unique_name("huge");
    let c = rt
        .create_from_spec(&id, bundle.path(), spec, null_stdio())
        .unwrap();
    let c = Cleanup::new(c);
    let dir = hierarchy.join(&state.cgroup_parent).join(&id);
    let file = if hierarchy.ends_with("hugetlb") {
        "hugetlb.2MB.limit_in_bytes"
    } else {
        "hugetlb.2MB.max"
    };
    assert_eq!(
        std::fs::read_to_string(dir.join(file)).unwrap().trim(),
        "8388608"
    );
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    let pid = c.container.as_ref().unwrap().pid().to_string();
    assert!(procs.lines().any(|p| p == pid), "{procs}");
    c.delete();
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn a_fifo_in_linux_devices_is_created_without_a_cgroup_rule() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let mut spec = bundle.spec("[ -p /dev/berth-fifo ] && stat -c '%a %u' /dev/berth-fifo");
    let devices: Vec<LinuxDevice> = serde_json::from_value(serde_json::json!([
        {"path": "/dev/berth-fifo", "type": "p", "major": 0, "minor": 0, "fileMode": 0o640, "uid": 0, "gid": 0}
    ]))
    .unwrap();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_devices(Some(devices));
    let (status, out) = run(&rt, &bundle, spec);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert_eq!(out.trim(), "640 0");
}

#[test]
fn a_namespace_path_of_another_type_is_refused() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, state) = runtime();
    let mut spec = bundle.spec("true");
    join_namespace(&mut spec, LinuxNamespaceType::Cgroup, "/proc/self/ns/ipc");
    let err = create_err(&rt, &bundle, spec).to_string();
    assert!(
        err.contains("is a ipc namespace, not a cgroup namespace"),
        "{err}"
    );
    let mut spec = bundle.spec("true");
    join_namespace(&mut spec, LinuxNamespaceType::Network, "/etc/hostname");
    let err = create_err(&rt, &bundle, spec).to_string();
    assert!(err.contains("is not a namespace"), "{err}");
    assert!(containers_in(state.path()).is_empty());
}

#[test]
fn a_mount_namespace_is_joined_by_path() {
    if !berth_testutil::require_root("creates containers")
        || !berth_testutil::require_command("holds a mount namespace", "unshare")
    {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let mut holder = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sleep", "30"])
        .spawn()
        .unwrap();
    let mnt = format!("/proc/{}/ns/mnt", holder.id());
    let host = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_link(&mnt).ok().as_ref() == Some(&host) || !Path::new(&mnt).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "unshare did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let expected = std::fs::read_link(&mnt).unwrap();
    let mut spec = bundle.spec("readlink /proc/self/ns/mnt");
    join_namespace(&mut spec, LinuxNamespaceType::Mount, &mnt);
    let (status, out) = run(&rt, &bundle, spec);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert_eq!(out.trim(), expected.to_str().unwrap());
}

#[test]
fn without_a_mount_namespace_the_callers_is_inherited_and_nothing_stays_mounted() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let mut spec = bundle.spec("readlink /proc/self/ns/mnt; [ -c /dev/null ] && echo dev-ok; ls /proc/1/exe >/dev/null && echo proc-ok");
    let linux = spec.linux_mut().as_mut().unwrap();
    let mut namespaces = linux.namespaces().clone().unwrap();
    namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Mount);
    linux.set_namespaces(Some(namespaces));
    let rootfs = std::fs::canonicalize(bundle.path().join("rootfs")).unwrap();
    let mounted_under_rootfs = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|p| Path::new(p).starts_with(&rootfs))
            })
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (status, out) = run(&rt, &bundle, spec);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    let host = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_eq!(out.lines().next(), host.to_str(), "{out}");
    assert!(out.contains("dev-ok") && out.contains("proc-ok"), "{out}");
    assert_eq!(mounted_under_rootfs(), Vec::<String>::new());
}

#[test]
fn failing_poststart_and_poststop_hooks_warn_and_the_next_ones_run() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let dir = bundle.path().to_path_buf();
    let marker = |name: &str| -> serde_json::Value {
        serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("touch {}/{name}", dir.display())]})
    };
    let fail = serde_json::json!({"path": "/bin/false"});
    let hooks: Hooks = serde_json::from_value(serde_json::json!({
        "poststart": [fail.clone(), marker("poststart-2")],
        "poststop": [fail, marker("poststop-2")],
    }))
    .unwrap();
    let mut spec = bundle.spec("true");
    spec.set_hooks(Some(hooks));
    let (status, _) = run(&rt, &bundle, spec);
    assert_eq!(status, ExitStatus::Exited(0));
    assert!(dir.join("poststart-2").exists());
    assert!(dir.join("poststop-2").exists());
}

#[test]
fn lsm_labels_the_host_cannot_apply_are_refused() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, state) = runtime();
    let apparmor = Path::new("/sys/kernel/security/apparmor").is_dir();
    let selinux = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(" - selinuxfs ");
    if !apparmor {
        let mut spec = bundle.spec("true");
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_apparmor_profile(Some("berth-test-profile".into()));
        let err = create_err(&rt, &bundle, spec).to_string();
        assert!(err.contains("AppArmor is not enabled"), "{err}");
    }
    if !selinux {
        let mut spec = bundle.spec("true");
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_selinux_label(Some("system_u:system_r:container_t:s0".into()));
        let err = create_err(&rt, &bundle, spec).to_string();
        assert!(err.contains("SELinux is not enabled"), "{err}");
        let mut spec = bundle.spec("true");
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .set_mount_label(Some("system_u:object_r:container_file_t:s0".into()));
        let err = create_err(&rt, &bundle, spec).to_string();
        assert!(err.contains("linux.mountLabel"), "{err}");
    }
    if apparmor && selinux {
        berth_testutil::skip("refusing LSM labels", "this host has AppArmor and SELinux");
    }
    assert!(containers_in(state.path()).is_empty());
}

#[test]
fn a_config_over_the_init_channel_limit_is_e2big_naming_the_field() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, state) = runtime();
    let mut spec = bundle.spec("true");
    let process = spec.process_mut().as_mut().unwrap();
    let mut env = process.env().clone().unwrap_or_default();
    env.push(format!("BIG={}", "x".repeat(17 << 20)));
    process.set_env(Some(env));
    let id = berth_testutil::unique_name("big");
    let err = match rt.create_from_spec(&id, bundle.path(), spec, null_stdio()) {
        Ok(c) => {
            let _ = c.delete(true);
            panic!("a 17 MiB env was accepted");
        }
        Err(e) => e,
    };
    assert!(
        matches!(
            err,
            Error::ConfigTooLarge {
                field: "process.env",
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("E2BIG") && text.contains("process.env"),
        "{text}"
    );
    // Nothing is left: no state, no cgroup.
    assert!(containers_in(state.path()).is_empty());
    let cgroup =
        berth_cgroups::manager(Path::new("/sys/fs/cgroup"), &state.cgroup_parent.join(&id))
            .unwrap();
    use berth_cgroups::CgroupManager;
    assert!(!cgroup.exists());
}
