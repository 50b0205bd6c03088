//! The process of a container made from an image: Docker's defaults ([`crate::defaults::spec`])
//! completed with arguments, an environment merged over the default `PATH`, a working directory
//! and a user resolved in the image's own `/etc/passwd` ([`crate::user`]). Both `berth run` (the
//! engine) and the builder's `RUN` steps make their spec here, so the rules are written once.

use std::path::Path;

use oci_spec::runtime::{Spec, UserBuilder};

use crate::defaults::DEFAULT_PATH;
use crate::user::ResolvedUser;
use crate::{Error, Result};

/// What an image config (plus the caller's overrides) says about the process.
#[derive(Debug, Clone, Default)]
pub struct ProcessConfig {
    /// The command line (entrypoint and cmd, already combined).
    pub args: Vec<String>,
    /// `KEY=VALUE` entries applied in order over `PATH=`[`DEFAULT_PATH`]: a later entry
    /// replaces an earlier one with the same key (image env, then `-e`).
    pub env: Vec<String>,
    /// The working directory, absolute; empty means `/`.
    pub cwd: String,
    /// The user the process runs as.
    pub user: ResolvedUser,
    /// Whether the process gets a terminal.
    pub terminal: bool,
}

/// Sets `kv` (`KEY=VALUE`, or a bare `KEY`) in `env`, replacing any entry with the same key.
pub fn set_env(env: &mut Vec<String>, kv: impl Into<String>) {
    let kv = kv.into();
    let key = env_key(&kv).to_owned();
    env.retain(|e| env_key(e) != key);
    env.push(kv);
}

/// The value of `key` in `env`, if set.
pub fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn env_key(kv: &str) -> &str {
    kv.split_once('=').map_or(kv, |(k, _)| k)
}

/// The environment of `process`: [`DEFAULT_PATH`], then its entries in order.
pub fn environment(process: &ProcessConfig) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH.to_owned()];
    for kv in &process.env {
        set_env(&mut env, kv.clone());
    }
    env
}

/// Docker's default spec for `rootfs` and `hostname`, running `process`.
///
/// ```
/// use berth_namespaces::process::{ProcessConfig, spec};
///
/// let process = ProcessConfig {
///     args: vec!["/bin/sh".into()],
///     env: vec!["PATH=/app/bin".into(), "A=1".into(), "A=2".into()],
///     cwd: "/app".into(),
///     ..Default::default()
/// };
/// let spec = spec("rootfs", "box", &process).unwrap();
/// let p = spec.process().as_ref().unwrap();
/// assert_eq!(p.env().as_deref(), Some(&["PATH=/app/bin".to_owned(), "A=2".to_owned()][..]));
/// assert_eq!(p.cwd().to_str(), Some("/app"));
/// ```
pub fn spec(rootfs: impl AsRef<Path>, hostname: &str, process: &ProcessConfig) -> Result<Spec> {
    let cwd = if process.cwd.is_empty() {
        "/"
    } else {
        process.cwd.as_str()
    };
    if !cwd.starts_with('/') {
        return Err(Error::InvalidSpec(format!(
            "working directory {cwd:?} is not absolute"
        )));
    }
    let args: Vec<&str> = process.args.iter().map(String::as_str).collect();
    let mut spec = crate::defaults::spec(rootfs, &args, hostname);
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_env(Some(environment(process)));
    p.set_cwd(cwd.into());
    let mut user = UserBuilder::default()
        .uid(process.user.uid)
        .gid(process.user.gid);
    if !process.user.additional_gids.is_empty() {
        user = user.additional_gids(process.user.additional_gids.clone());
    }
    p.set_user(
        user.build()
            .map_err(|e| Error::InvalidSpec(e.to_string()))?,
    );
    p.set_terminal(Some(process.terminal));
    spec.set_process(Some(p));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_keys_replace_earlier_ones() {
        let mut env = vec!["A=1".to_owned(), "B=2".to_owned()];
        set_env(&mut env, "A=3");
        set_env(&mut env, "C");
        assert_eq!(env, ["B=2", "A=3", "C"]);
        assert_eq!(env_value(&env, "A"), Some("3"));
        assert_eq!(env_value(&env, "C"), None);
        let process = ProcessConfig {
            env: vec!["X=1".into()],
            ..Default::default()
        };
        assert_eq!(environment(&process), [DEFAULT_PATH, "X=1"]);
    }

    #[test]
    fn relative_working_directories_are_refused() {
        let process = ProcessConfig {
            args: vec!["true".into()],
            cwd: "app".into(),
            ..Default::default()
        };
        assert!(spec("/r", "h", &process).is_err());
    }
}
