//! The OCI spec of a pod's container: Docker's defaults (berth-namespaces), the image's
//! config under Kubernetes' rules (command replaces ENTRYPOINT, args replace CMD, `$(VAR)`
//! expanded from the environment), the pod sandbox's network, IPC and UTS namespaces joined,
//! its own PID and mount namespaces, the volumes as bind mounts, and the container's cgroup
//! under the pod's with its limits.

use std::path::{Path, PathBuf};

use berth_namespaces::user::resolve_user;
use k8s_openapi::api::core::v1::Container;
use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceType, LinuxResources, Mount, MountBuilder, Spec, UserBuilder,
};

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub source: PathBuf,
    /// Path in the container.
    pub destination: String,
    /// Mounted read-only.
    pub readonly: bool,
}

/// Everything [`container_spec`] needs beyond the container itself.
#[derive(Debug)]
pub struct SpecInputs<'a> {
    /// The mounted rootfs.
    pub rootfs: &'a Path,
    /// The image's config.
    pub image: &'a oci_spec::image::Config,
    /// The resolved environment, in order.
    pub env: &'a [(String, String)],
    /// The pause process whose namespaces are joined.
    pub sandbox_pid: i32,
    /// The cgroup path (absolute under the cgroup root).
    pub cgroup: &'a Path,
    /// The container's limits.
    pub resources: LinuxResources,
    /// Volume mounts.
    pub binds: &'a [Bind],
}

/// Expands `$(NAME)` from `env` (`$$` is a literal `$`; unknown names stay as written), as
/// Kubernetes does in command, args and env values.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The process arguments: Kubernetes' rules over the image's ENTRYPOINT and CMD.
pub fn process_args(
    c: &Container,
    image: &oci_spec::image::Config,
    env: &[(String, String)],
) -> Vec<String> {
    let entrypoint = image.entrypoint().clone().unwrap_or_default();
    let cmd = image.cmd().clone().unwrap_or_default();
    let args: Vec<String> = match (&c.command, &c.args) {
        (Some(command), args) if !command.is_empty() => command
            .iter()
            .map(|s| expand(s, env))
            .chain(args.iter().flatten().map(|s| expand(s, env)))
            .collect(),
        (_, Some(args)) if !args.is_empty() => entrypoint
            .into_iter()
            .chain(args.iter().map(|s| expand(s, env)))
            .collect(),
        _ => entrypoint.into_iter().chain(cmd).collect(),
    };
    args
}

/// The image's environment followed by the container's (later entries win).
pub fn merged_env(image: &oci_spec::image::Config, env: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in image.env().iter().flatten() {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        out.push((k.to_owned(), v.to_owned()));
    }
    for (k, v) in env {
        out.retain(|(ek, _)| ek != k);
        out.push((k.clone(), v.clone()));
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The OCI spec of container `c`.
pub fn container_spec(c: &Container, inputs: SpecInputs<'_>) -> Result<Spec, String> {
    let args = process_args(c, inputs.image, inputs.env);
    if args.is_empty() {
        return Err(format!(
            "container {:?}: no command: the image has no ENTRYPOINT or CMD and the pod gives none",
            c.name
        ));
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut spec = berth_namespaces::defaults::spec(inputs.rootfs, &arg_refs, "");
    spec.set_hostname(None);
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_env(Some(merged_env(inputs.image, inputs.env)));
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| inputs.image.working_dir().clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(format!(
            "container {:?}: workingDir {cwd:?} is not absolute",
            c.name
        ));
    }
    process.set_cwd(cwd.into());
    let security = c.security_context.as_ref();
    let user_text = match security.and_then(|s| s.run_as_user) {
        Some(uid) => match security.and_then(|s| s.run_as_group) {
            Some(gid) => format!("{uid}:{gid}"),
            None => uid.to_string(),
        },
        None => inputs.image.user().clone().unwrap_or_default(),
    };
    let user = resolve_user(inputs.rootfs, &user_text)
        .map_err(|e| format!("container {:?}: user {user_text:?}: {e}", c.name))?;
    process.set_user(
        UserBuilder::default()
            .uid(user.uid)
            .gid(user.gid)
            .additional_gids(user.additional_gids)
            .build()
            .map_err(|e| e.to_string())?,
    );
    process.set_terminal(Some(false));
    spec.set_process(Some(process));

    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    for b in inputs.binds {
        mounts.retain(|m| m.destination().as_path() != Path::new(&b.destination));
        let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
        if b.readonly {
            options.push("ro".into());
        }
        mounts.push(
            MountBuilder::default()
                .destination(&b.destination)
                .source(&b.source)
                .typ("bind")
                .options(options)
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    spec.set_mounts(Some(mounts));

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let mut namespaces: Vec<LinuxNamespace> = Vec::new();
    for ns in linux.namespaces().clone().unwrap_or_default() {
        let joined = match ns.typ() {
            LinuxNamespaceType::Network => Some("net"),
            LinuxNamespaceType::Ipc => Some("ipc"),
            LinuxNamespaceType::Uts => Some("uts"),
            _ => None,
        };
        let mut ns = ns;
        if let Some(file) = joined {
            ns.set_path(Some(PathBuf::from(format!(
                "/proc/{}/ns/{file}",
                inputs.sandbox_pid
            ))));
        }
        namespaces.push(ns);
    }
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(inputs.cgroup.to_owned()));
    linux.set_resources(Some(inputs.resources));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_and_args() {
        let env = vec![("A".to_owned(), "1".to_owned())];
        assert_eq!(expand("x$(A)y$(B)$$(A)$", &env), "x1y$(B)$(A)$");
        let image: oci_spec::image::Config = serde_json::from_value(serde_json::json!({
            "Entrypoint": ["/entry"], "Cmd": ["default"]
        }))
        .unwrap();
        let c = |v: serde_json::Value| -> Container { serde_json::from_value(v).unwrap() };
        assert_eq!(
            process_args(&c(serde_json::json!({"name": "a"})), &image, &env),
            ["/entry", "default"]
        );
        assert_eq!(
            process_args(
                &c(serde_json::json!({"name": "a", "args": ["$(A)"]})),
                &image,
                &env
            ),
            ["/entry", "1"]
        );
        assert_eq!(
            process_args(
                &c(serde_json::json!({"name": "a", "command": ["sh"]})),
                &image,
                &env
            ),
            ["sh"]
        );
    }
}
