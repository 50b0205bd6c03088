//! OCI bundles: a `runc spec` bundle runs unchanged (with its terminal), capabilities match
//! what runc gives on the same bundle, and bad bundles fail cleanly, leaving nothing behind.

mod common;

use std::io::{Read, Write};

use berth_namespaces::{CreateOptions, Error, ExitStatus, Stdio};
use common::{Bundle, Cleanup, runtime};

#[test]
fn runc_spec_bundle_runs_unchanged_with_a_console() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let bundle = Bundle::busybox();
    let (rt, _state) = runtime();
    let id = berth_testutil::unique_name("tty");
    let c = rt
        .create(
            &id,
            bundle.path(),
            CreateOptions {
                stdio: Stdio::Console,
                ..Default::default()
            },
        )
        .unwrap();
    let mut c = Cleanup::new(c);
    let master = std::fs::File::from(c.get().take_console().expect("a pty master"));
    c.get().start().unwrap();
    let mut writer = master.try_clone().unwrap();
    writer
        .write_all(b"tty -s && echo is-a-tty; echo sum-$((40+2)); exit 5\n")
        .unwrap();
    let mut out = Vec::new();
    let mut reader = master;
    let mut buf = [0u8; 1024];
    // Reading the master fails with EIO once the container's side is closed.
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&out);
    assert_eq!(c.get().wait().unwrap(), ExitStatus::Exited(5), "{out}");
    assert!(out.contains("is-a-tty"), "{out}");
    assert!(out.contains("sum-42"), "{out}");
    c.delete();
}

#[test]
fn capabilities_equal_what_runc_gives() {
    if !berth_testutil::require_root("creates containers")
        || !berth_testutil::require_command("compares with runc", "runc")
    {
        return;
    }
    let bundle = Bundle::busybox();
    let mut spec = bundle.spec("grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status");
    // A richer set than runc's default, including an ambient cap with its inheritable twin.
    let caps: berth_namespaces::oci_spec::runtime::LinuxCapabilities =
        serde_json::from_value(serde_json::json!({
            "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SETUID", "CAP_SYS_CHROOT"],
            "effective": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"],
            "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SETUID"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL"]
        }))
        .unwrap();
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_capabilities(Some(caps));
    std::fs::write(
        bundle.path().join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();

    let runc_root = tempfile::tempdir().unwrap();
    let runc_id = berth_testutil::unique_name("runc");
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(runc_root.path())
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(&runc_id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        runc.status.success(),
        "{}",
        String::from_utf8_lossy(&runc.stderr)
    );
    let runc_out = String::from_utf8_lossy(&runc.stdout).to_string();

    let (rt, _state) = runtime();
    let (status, ours) = common::run(&rt, &bundle, spec);
    assert_eq!(status, ExitStatus::Exited(0), "{ours}");
    assert_eq!(ours, runc_out);
    assert!(ours.contains("CapAmb:\t0000000000000020"), "{ours}");
}

#[test]
fn bad_bundles_fail_clearly_and_leave_nothing() {
    if !berth_testutil::require_root("creates containers") {
        return;
    }
    let (rt, state) = runtime();
    let empty = |what: &str| {
        let left: Vec<_> = std::fs::read_dir(state.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{what} left {left:?}");
    };

    // Missing rootfs.
    let bundle = Bundle::busybox();
    std::fs::remove_dir_all(bundle.path().join("rootfs")).unwrap();
    let err = rt
        .create("missing-rootfs", bundle.path(), CreateOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("rootfs"), "{err}");
    empty("missing rootfs");

    // Invalid JSON.
    let bundle = Bundle::busybox();
    std::fs::write(bundle.path().join("config.json"), b"{ not json").unwrap();
    let err = rt
        .create("bad-json", bundle.path(), CreateOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    empty("invalid json");

    // Unknown namespace type.
    let bundle = Bundle::busybox();
    let text = common::RUNC_SPEC.replace("\"type\": \"uts\"", "\"type\": \"bogus\"");
    std::fs::write(bundle.path().join("config.json"), text).unwrap();
    let err = rt
        .create("bad-ns", bundle.path(), CreateOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    empty("unknown namespace");

    // A program that does not exist: the init fails after the cgroup and namespaces exist.
    let bundle = Bundle::busybox();
    let mut spec = bundle.spec("true");
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_args(Some(vec!["/no/such/program".into()]));
    let id = berth_testutil::unique_name("noexe");
    let err = rt
        .create_from_spec(
            &id,
            bundle.path(),
            spec,
            CreateOptions {
                stdio: Stdio::Null,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("executable file not found"),
        "{err}"
    );
    empty("missing program");
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/pids")
            .join(&state.cgroup_parent)
            .join(&id)
            .exists()
    );

    // A hostile id.
    let bundle = Bundle::busybox();
    assert!(matches!(
        rt.create("../escape", bundle.path(), CreateOptions::default()),
        Err(Error::InvalidId(_))
    ));
    empty("bad id");

    // A duplicate id leaves the first container alone.
    let id = berth_testutil::unique_name("dup");
    let c = rt
        .create_from_spec(
            &id,
            bundle.path(),
            bundle.spec("sleep 10"),
            CreateOptions {
                stdio: Stdio::Null,
                ..Default::default()
            },
        )
        .unwrap();
    let c = Cleanup::new(c);
    let err = rt
        .create_from_spec(
            &id,
            bundle.path(),
            bundle.spec("true"),
            CreateOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
    assert!(rt.load(&id).is_ok());
    c.delete();
    empty("duplicate");
}
