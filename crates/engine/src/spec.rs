//! The OCI spec of a container: Docker's defaults (from berth-namespaces) completed from the
//! image config (entrypoint, cmd, env, working dir, user, stop signal) and the run options
//! (command and entrypoint overrides, `-e`, `-v`, resources, `-t`), as `docker run` does.

use std::path::Path;

use berth_image::oci_spec::image::Config as ImageConfig;
use berth_namespaces::process::ProcessConfig;
use berth_namespaces::user::ResolvedUser;
use oci_spec::runtime::{MountBuilder, Spec};

use crate::error::{Error, Result};
use crate::options::RunConfig;

/// The process arguments `docker run` would use: `--entrypoint` replaces the image's
/// entrypoint (and drops its CMD), a command replaces the CMD.
pub(crate) fn process_args(image: &ImageConfig, run: &RunConfig) -> Vec<String> {
    let entrypoint = match &run.entrypoint {
        Some(e) => e.clone(),
        None => image.entrypoint().clone().unwrap_or_default(),
    };
    let cmd = if !run.command.is_empty() {
        run.command.clone()
    } else if run.entrypoint.is_some() {
        Vec::new()
    } else {
        image.cmd().clone().unwrap_or_default()
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// The environment entries over the default PATH: HOSTNAME, the image's, TERM with a tty, then
/// `-e` (later keys win: [`berth_namespaces::process::environment`]).
pub(crate) fn process_env(image: &ImageConfig, run: &RunConfig, hostname: &str) -> Vec<String> {
    let mut env = vec![format!("HOSTNAME={hostname}")];
    env.extend(image.env().clone().unwrap_or_default());
    if run.tty {
        env.push("TERM=xterm".to_owned());
    }
    env.extend(run.env.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

/// The complete spec for container `id` on `rootfs`.
pub(crate) fn container_spec(
    id: &str,
    rootfs: &Path,
    image: &ImageConfig,
    run: &RunConfig,
    user: &ResolvedUser,
) -> Result<Spec> {
    let hostname = &id[..12.min(id.len())];
    let args = process_args(image, run);
    if args.is_empty() {
        return Err(Error::ImageConfig {
            image: run.image.clone(),
            message: "no command specified (the image has no CMD or ENTRYPOINT)".into(),
        });
    }
    let build = |e: oci_spec::OciSpecError| Error::Spec(e.to_string());
    let cwd = run
        .workdir
        .clone()
        .or_else(|| image.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(Error::Option {
            option: "-w",
            value: cwd,
            reason: "must be absolute".into(),
        });
    }
    let process = ProcessConfig {
        args,
        env: process_env(image, run, hostname),
        cwd,
        user: user.clone(),
        terminal: run.tty,
    };
    let mut spec = berth_namespaces::process::spec(rootfs, hostname, &process)?;

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for bind in &run.binds {
        let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
        if bind.readonly {
            options.push("ro".to_owned());
        }
        mounts.push(
            MountBuilder::default()
                .destination(bind.destination.clone())
                .typ("bind")
                .source(bind.source.clone())
                .options(options)
                .build()
                .map_err(build)?,
        );
    }
    spec.set_mounts(Some(mounts));

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_cgroups_path(Some(format!("/berth/{id}").into()));
    linux.set_resources(run.limits.to_resources()?);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{BindMount, Limits};

    fn image() -> ImageConfig {
        let mut c = ImageConfig::default();
        c.set_entrypoint(Some(vec!["/entry".into()]));
        c.set_cmd(Some(vec!["default".into()]));
        c.set_env(Some(vec!["PATH=/custom".into(), "A=1".into()]));
        c.set_working_dir(Some("/app".into()));
        c
    }

    fn run() -> RunConfig {
        RunConfig {
            image: "img".into(),
            ..Default::default()
        }
    }

    #[test]
    fn docker_argument_rules() {
        assert_eq!(process_args(&image(), &run()), ["/entry", "default"]);
        let r = RunConfig {
            command: vec!["x".into()],
            ..run()
        };
        assert_eq!(process_args(&image(), &r), ["/entry", "x"]);
        let r = RunConfig {
            entrypoint: Some(vec!["/other".into()]),
            ..run()
        };
        assert_eq!(process_args(&image(), &r), ["/other"]);
        let r = RunConfig {
            entrypoint: Some(vec![]),
            command: vec!["sh".into()],
            ..run()
        };
        assert_eq!(process_args(&image(), &r), ["sh"]);
    }

    #[test]
    fn spec_from_image_and_options() {
        let r = RunConfig {
            env: vec![("A".into(), "2".into())],
            binds: vec![BindMount {
                source: "/src".into(),
                destination: "/dst".into(),
                readonly: true,
            }],
            limits: Limits {
                memory: Some(1 << 26),
                cpu_quota: None,
                pids: Some(5),
            },
            tty: true,
            ..run()
        };
        let user = ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![5],
        };
        let id = "0123456789abcdef";
        let spec = container_spec(id, Path::new("/rootfs"), &image(), &r, &user).unwrap();
        let p = spec.process().as_ref().unwrap();
        let env = p.env().as_ref().unwrap();
        assert!(env.contains(&"PATH=/custom".to_owned()));
        assert!(env.contains(&"A=2".to_owned()) && !env.contains(&"A=1".to_owned()));
        assert!(env.contains(&"HOSTNAME=0123456789ab".to_owned()));
        assert!(env.contains(&"TERM=xterm".to_owned()));
        assert_eq!(p.cwd(), Path::new("/app"));
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(spec.hostname().as_deref(), Some("0123456789ab"));
        let bind = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/dst"))
            .unwrap();
        assert!(bind.options().as_ref().unwrap().contains(&"ro".to_owned()));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/berth/0123456789abcdef"))
        );
        assert_eq!(
            linux
                .resources()
                .as_ref()
                .unwrap()
                .pids()
                .as_ref()
                .unwrap()
                .limit(),
            5
        );

        let mut empty = ImageConfig::default();
        empty.set_cmd(None);
        assert!(container_spec(id, Path::new("/r"), &empty, &run(), &user).is_err());
    }
}
