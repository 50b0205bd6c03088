//! What a spec may ask before anything is created (root, namespaces and their paths, ids,
//! devices), reading a bundle's `config.json`, and the device rules every container gets.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxDeviceCgroup, LinuxDeviceType, LinuxNamespaceType, LinuxResources, Spec,
};

use crate::{Error, Result, sys};

/// Reads a bundle's `config.json`, as [`Runtime::create`](crate::Runtime::create) does.
///
/// (Parsed from memory with `serde_json::from_slice`, the one JSON reader this crate
/// instantiates: every reader type duplicates the deserializers of every spec type.)
pub fn load_config(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let invalid = |source| Error::InvalidConfig {
        path: path.clone(),
        source,
    };
    let bytes = std::fs::read(&path).map_err(|e| invalid(e.into()))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(e.into()))
}

pub(super) fn validate_spec(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("root is missing".into()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    match std::fs::metadata(&rootfs) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::InvalidSpec(format!(
                "rootfs {} is not a directory",
                rootfs.display()
            )));
        }
        Err(e) => return Err(Error::io("rootfs", &rootfs, e)),
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("process is missing".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidSpec("process.args is empty".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(Error::InvalidSpec(format!(
            "process.cwd {} is not absolute",
            process.cwd().display()
        )));
    }
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("linux is missing".into()))?;
    // Running with less confinement than asked is worse than not running (as runc and crun).
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
        && !crate::security::apparmor_enabled()
    {
        return Err(Error::InvalidSpec(format!(
            "process.apparmorProfile {profile:?} is set, but AppArmor is not enabled on this host"
        )));
    }
    let selinux = [
        ("process.selinuxLabel", process.selinux_label()),
        ("linux.mountLabel", linux.mount_label()),
    ];
    for (field, label) in selinux {
        if let Some(label) = label.as_deref().filter(|l| !l.is_empty())
            && !crate::security::selinux_enabled()
        {
            return Err(Error::InvalidSpec(format!(
                "{field} {label:?} is set, but SELinux is not enabled on this host"
            )));
        }
    }
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let has = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t);
    for (i, ns) in namespaces.iter().enumerate() {
        if namespaces[..i].iter().any(|n| n.typ() == ns.typ()) {
            return Err(Error::InvalidSpec(format!(
                "namespace {} listed twice",
                ns.typ()
            )));
        }
        if ns.typ() == LinuxNamespaceType::Time {
            return Err(Error::InvalidSpec(
                "time namespaces are not supported".into(),
            ));
        }
        if let Some(path) = ns.path() {
            check_namespace_path(ns.typ(), path)?;
        }
    }
    if spec.hostname().is_some() && !has(LinuxNamespaceType::Uts) {
        return Err(Error::InvalidSpec("hostname needs a uts namespace".into()));
    }
    let user_ns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    if user_ns && linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
        return Err(Error::InvalidSpec(
            "a new user namespace needs uidMappings and gidMappings".into(),
        ));
    }
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if !m.destination().is_absolute() {
            return Err(Error::InvalidSpec(format!(
                "mount destination {} is not absolute",
                m.destination().display()
            )));
        }
    }
    Ok(rootfs)
}

/// Checks that `path` is a namespace of type `typ` (the init's `setns` passes the type too,
/// but a mismatch found here fails before anything is created, with a clearer message).
pub(super) fn check_namespace_path(typ: LinuxNamespaceType, path: &Path) -> Result<()> {
    let invalid = |what: String| {
        Error::InvalidSpec(format!("{typ} namespace path {}: {what}", path.display()))
    };
    let file = File::open(path).map_err(|e| invalid(e.to_string()))?;
    match sys::namespace_type(file.as_fd()) {
        Ok(actual) if actual == typ as i32 => Ok(()),
        Ok(actual) => {
            let name = NAMESPACE_TYPES
                .iter()
                .find(|t| **t as i32 == actual)
                .map_or_else(|| format!("{actual:#x}"), |t| t.to_string());
            Err(invalid(format!(
                "is a {name} namespace, not a {typ} namespace"
            )))
        }
        Err(_) => Err(invalid("is not a namespace file".into())),
    }
}

pub(super) const NAMESPACE_TYPES: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::User,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Time,
];

/// The spec's `linux.resources` plus the devices every container needs (as runc adds them):
/// the default nodes, ptys, mknod of anything, and the spec's own `linux.devices`.
pub(super) fn container_resources(spec: &Spec) -> LinuxResources {
    let linux = spec.linux().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_else(|| {
        let mut r = LinuxResources::default();
        r.set_devices(None);
        r
    });
    if let Some(rules) = resources.devices().clone() {
        let rule = |typ, major: Option<i64>, minor: Option<i64>, access: &str| {
            let mut d = LinuxDeviceCgroup::default();
            d.set_allow(true);
            d.set_typ(Some(typ));
            d.set_major(major);
            d.set_minor(minor);
            d.set_access(Some(access.to_string()));
            d
        };
        let mut rules = rules;
        rules.push(rule(LinuxDeviceType::C, None, None, "m"));
        rules.push(rule(LinuxDeviceType::B, None, None, "m"));
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            rules.push(rule(LinuxDeviceType::C, Some(major), Some(minor), "rwm"));
        }
        rules.push(rule(LinuxDeviceType::C, Some(136), None, "rwm"));
        // A FIFO (`p`) is a node, not a device: no cgroup rule governs it.
        for device in linux.devices().as_deref().unwrap_or_default() {
            if device.typ() != LinuxDeviceType::P {
                rules.push(LinuxDeviceCgroup::from(device));
            }
        }
        resources.set_devices(Some(rules));
    }
    resources
}
