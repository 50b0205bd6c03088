//! Docker-style option values: memory sizes (`64m`, `1g`, `512k`, plain bytes), `--cpus 0.5`,
//! `-e KEY=VALUE`, `-v SRC:DST[:ro]`, turned into OCI `linux.resources` and mounts.
//!
//! Limits follow Docker's rules and words: `--memory` is at least 6 MB ([`MIN_MEMORY`]),
//! `--cpus` between 0.01 and the CPUs there are, `--pids-limit` positive; `0` (and `-1` for
//! `--pids-limit`) means no limit. Every message suggests only values these parsers accept.

use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use crate::error::{Error, Result};

/// How to run a container: `docker run`'s options.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    /// The image reference (`busybox`, `name:tag`, `name@sha256:…`).
    pub image: String,
    /// `--name`; generated when `None`.
    pub name: Option<String>,
    /// The command (replaces the image's CMD when not empty).
    pub command: Vec<String>,
    /// `--entrypoint` (replaces the image's ENTRYPOINT and drops its CMD).
    pub entrypoint: Option<Vec<String>>,
    /// `-e KEY=VALUE`.
    pub env: Vec<(String, String)>,
    /// `-v SRC:DST[:ro]`.
    pub binds: Vec<BindMount>,
    /// `--memory`, `--cpus`, `--pids-limit`.
    pub limits: Limits,
    /// `-t`: a pty.
    pub tty: bool,
    /// `-i`: keep stdin attached.
    pub interactive: bool,
    /// `--rm`: remove the container when it exits.
    pub auto_remove: bool,
    /// `-w`: the working directory (absolute).
    pub workdir: Option<String>,
    /// `-u`: `user[:group]` (names looked up in the image).
    pub user: Option<String>,
    /// `--network`; `None` keeps the container on loopback only (the library's default; the
    /// `berth` CLI passes `bridge`, Docker's default). See [`crate::network`].
    pub network: Option<crate::network::NetworkMode>,
    /// `-p`: published ports.
    pub publish: Vec<crate::network::PortMapping>,
}

/// The CFS period Docker uses for `--cpus` (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Parses a Docker memory size: a number with an optional unit `b`, `k`, `m`, `g`, `t` (powers of
/// 1024; an optional trailing `b` as in `64mb` is accepted; case-insensitive).
pub fn parse_size(input: &str) -> Result<u64> {
    let bad = |reason: &str| Error::Option {
        option: "size",
        value: input.to_owned(),
        reason: reason.to_owned(),
    };
    let s = input.trim().to_ascii_lowercase();
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    if number.is_empty() {
        return Err(bad(
            "expected a number with an optional unit (b, k, m, g, t)",
        ));
    }
    let shift = match unit
        .strip_suffix('b')
        .filter(|u| !u.is_empty())
        .unwrap_or(unit)
    {
        "" | "b" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad("unknown unit (use b, k, m, g or t)")),
    };
    let value: f64 = number.parse().map_err(|_| bad("not a number"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > i64::MAX as f64 {
        return Err(bad("out of range"));
    }
    Ok(bytes as u64)
}

/// The smallest memory limit Docker allows (6 MiB): below it a container can't even start.
pub const MIN_MEMORY: u64 = 6 << 20;

/// Parses `--memory`: a size as [`parse_size`] reads it; `0` means no limit (`None`), as in
/// Docker; anything else must be at least [`MIN_MEMORY`].
pub fn parse_memory(input: &str) -> Result<Option<u64>> {
    let bad = |reason: &str| Error::Option {
        option: "--memory",
        value: input.to_owned(),
        reason: reason.to_owned(),
    };
    if input.trim().starts_with('-') {
        return Err(bad("a size can't be negative (0 means no limit)"));
    }
    let bytes = parse_size(input).map_err(|e| match e {
        Error::Option { reason, .. } => bad(&reason),
        e => e,
    })?;
    if bytes == 0 {
        return Ok(None);
    }
    check_memory(bytes).map_err(|reason| bad(&reason))?;
    Ok(Some(bytes))
}

fn check_memory(bytes: u64) -> std::result::Result<(), String> {
    if bytes < MIN_MEMORY {
        return Err("Minimum memory limit allowed is 6MB".into());
    }
    Ok(())
}

/// How many CPUs this process may use (the upper bound of `--cpus`).
fn available_cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

fn check_cpu_quota(quota: f64) -> std::result::Result<(), String> {
    let cpus = available_cpus();
    if !quota.is_finite() || quota < 1000.0 || quota > (cpus * CPU_PERIOD_US) as f64 {
        return Err(format!(
            "Range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs available (0 means no limit)"
        ));
    }
    Ok(())
}

/// Parses `--cpus`: a decimal number of CPUs from 0.01 up to the CPUs available, returned as
/// a CFS quota over [`CPU_PERIOD_US`] (`0.5` -> 50000); `0` means no limit (`None`).
pub fn parse_cpus(input: &str) -> Result<Option<i64>> {
    let bad = |reason: &str| Error::Option {
        option: "--cpus",
        value: input.to_owned(),
        reason: reason.to_owned(),
    };
    let cpus: f64 = input
        .trim()
        .parse()
        .map_err(|_| bad("not a number (e.g. 0.5, or 0 for no limit)"))?;
    if cpus == 0.0 {
        return Ok(None);
    }
    let quota = (cpus * CPU_PERIOD_US as f64).round();
    check_cpu_quota(quota).map_err(|reason| bad(&reason))?;
    Ok(Some(quota as i64))
}

/// Checks `--pids-limit`: a positive number of processes; `0` and `-1` mean no limit (`None`),
/// as in Docker.
pub fn parse_pids_limit(limit: i64) -> Result<Option<i64>> {
    match limit {
        -1 | 0 => Ok(None),
        1.. => Ok(Some(limit)),
        _ => Err(Error::Option {
            option: "--pids-limit",
            value: limit.to_string(),
            reason: "must be a positive number of processes, or -1 for no limit".into(),
        }),
    }
}

/// Resource limits of a container, Docker's flags as numbers.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// `--memory`: bytes.
    pub memory: Option<u64>,
    /// `--cpus`: CFS quota in microseconds per [`CPU_PERIOD_US`].
    pub cpu_quota: Option<i64>,
    /// `--pids-limit`.
    pub pids: Option<i64>,
}

impl Limits {
    /// Checks the limits as Docker does (see the module docs), for callers that build
    /// [`Limits`] without the parsers.
    pub fn validate(&self) -> Result<()> {
        if let Some(bytes) = self.memory.filter(|b| *b != 0) {
            check_memory(bytes).map_err(|reason| Error::Option {
                option: "--memory",
                value: bytes.to_string(),
                reason,
            })?;
        }
        if let Some(quota) = self.cpu_quota.filter(|q| *q != 0) {
            check_cpu_quota(quota as f64).map_err(|reason| Error::Option {
                option: "--cpus",
                value: format!("{:.2}", quota as f64 / CPU_PERIOD_US as f64),
                reason,
            })?;
        }
        if let Some(pids) = self.pids {
            parse_pids_limit(pids)?;
        }
        Ok(())
    }

    /// The OCI `linux.resources` for these limits (`None` when no limit is set; `0`, and `-1`
    /// for pids, set none, as in Docker).
    pub fn to_resources(&self) -> Result<Option<LinuxResources>> {
        let limits = Limits {
            memory: self.memory.filter(|b| *b != 0),
            cpu_quota: self.cpu_quota.filter(|q| *q != 0),
            pids: self.pids.filter(|p| *p > 0),
        };
        if limits == Limits::default() {
            return Ok(None);
        }
        let build = |e: oci_spec::OciSpecError| Error::Spec(e.to_string());
        let mut resources = LinuxResourcesBuilder::default();
        if let Some(bytes) = limits.memory {
            let limit = i64::try_from(bytes)
                .map_err(|_| Error::Spec("memory limit out of range".into()))?;
            resources = resources.memory(
                LinuxMemoryBuilder::default()
                    .limit(limit)
                    .build()
                    .map_err(build)?,
            );
        }
        if let Some(quota) = limits.cpu_quota {
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .quota(quota)
                    .period(CPU_PERIOD_US)
                    .build()
                    .map_err(build)?,
            );
        }
        if let Some(pids) = limits.pids {
            resources = resources.pids(
                LinuxPidsBuilder::default()
                    .limit(pids)
                    .build()
                    .map_err(build)?,
            );
        }
        resources.build().map(Some).map_err(build)
    }
}

/// A `-v SRC:DST[:ro|rw]` bind mount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindMount {
    /// The host path (absolute).
    pub source: PathBuf,
    /// The path in the container (absolute).
    pub destination: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
}

impl std::str::FromStr for BindMount {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Option {
            option: "-v",
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (source, destination, readonly) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            [_, _, _] => return Err(bad("the mode must be ro or rw")),
            _ => {
                return Err(bad(
                    "expected SRC:DST[:ro|rw] (named volumes are not supported)",
                ));
            }
        };
        if !source.starts_with('/') || !destination.starts_with('/') {
            return Err(bad("both paths must be absolute"));
        }
        if destination.split('/').any(|c| c == "..") {
            return Err(bad("the destination must not contain .."));
        }
        let bind = BindMount {
            source: source.into(),
            destination: destination.into(),
            readonly,
        };
        bind.validate().map_err(|_| bad(ROOT_DESTINATION))?;
        Ok(bind)
    }
}

const ROOT_DESTINATION: &str =
    "destination can't be '/' (a bind mount can't replace the container's root)";

impl BindMount {
    /// Checks what parsing (`str::parse`) checks, for a mount built by hand: absolute paths,
    /// no `..` in the destination, and a destination that is not the container's root.
    pub fn validate(&self) -> Result<()> {
        use std::path::Component;
        let bad = |reason: &str| Error::Option {
            option: "-v",
            value: format!("{}:{}", self.source.display(), self.destination.display()),
            reason: reason.to_owned(),
        };
        if !self.source.is_absolute() || !self.destination.is_absolute() {
            return Err(bad("both paths must be absolute"));
        }
        let parts: Vec<Component<'_>> = self.destination.components().collect();
        if parts.contains(&Component::ParentDir) {
            return Err(bad("the destination must not contain .."));
        }
        if parts
            .iter()
            .all(|c| matches!(c, Component::RootDir | Component::CurDir))
        {
            return Err(bad(ROOT_DESTINATION));
        }
        Ok(())
    }
}

/// Checks the options of a run that the parsers check, for configs built by hand.
pub(crate) fn validate_run(config: &RunConfig) -> Result<()> {
    config.limits.validate()?;
    for bind in &config.binds {
        bind.validate()?;
    }
    Ok(())
}

/// Splits `-e KEY=VALUE`; a bare `KEY` takes the value from the caller's environment (as Docker
/// does) and is dropped when unset there.
pub fn parse_env(item: &str) -> Result<Option<(String, String)>> {
    match item.split_once('=') {
        Some(("", _)) => Err(Error::Option {
            option: "-e",
            value: item.to_owned(),
            reason: "empty name".into(),
        }),
        Some((k, v)) => Ok(Some((k.to_owned(), v.to_owned()))),
        None => Ok(std::env::var(item).ok().map(|v| (item.to_owned(), v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("10b").unwrap(), 10);
        for bad in ["", "m", "64x", "-1m", "1e400", "6.4.1m"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5").unwrap(), Some(50_000));
        assert_eq!(parse_cpus("1").unwrap(), Some(100_000));
        assert_eq!(parse_cpus("0").unwrap(), None);
        for bad in ["-1", "abc", "0.001", "inf", "100000"] {
            let err = parse_cpus(bad).unwrap_err().to_string();
            assert!(
                err.contains("0 means no limit") || err.contains("0 for no limit"),
                "{bad}: {err}"
            );
        }
        // The message's suggestion is accepted.
        assert!(parse_cpus("0.01").is_ok());
    }

    #[test]
    fn memory_and_pids_messages_suggest_what_is_accepted() {
        assert_eq!(parse_memory("64m").unwrap(), Some(64 << 20));
        assert_eq!(parse_memory("6m").unwrap(), Some(MIN_MEMORY));
        assert_eq!(parse_memory("0").unwrap(), None);
        let err = parse_memory("1").unwrap_err().to_string();
        assert!(err.contains("Minimum memory limit allowed is 6MB"), "{err}");
        let err = parse_memory("-1").unwrap_err().to_string();
        assert!(err.contains("0 means no limit"), "{err}");
        assert!(parse_memory("x").is_err());

        assert_eq!(parse_pids_limit(-1).unwrap(), None);
        assert_eq!(parse_pids_limit(0).unwrap(), None);
        assert_eq!(parse_pids_limit(5).unwrap(), Some(5));
        let err = parse_pids_limit(-5).unwrap_err().to_string();
        assert!(err.contains("-1 for no limit"), "{err}");

        let limits = |memory, cpu_quota, pids| Limits {
            memory,
            cpu_quota,
            pids,
        };
        assert!(limits(Some(1), None, None).validate().is_err());
        assert!(limits(None, Some(10), None).validate().is_err());
        assert!(limits(None, None, Some(-5)).validate().is_err());
        assert!(
            limits(Some(MIN_MEMORY), Some(1000), Some(1))
                .validate()
                .is_ok()
        );
        let none = limits(Some(0), Some(0), Some(-1));
        assert!(none.validate().is_ok() && none.to_resources().unwrap().is_none());
    }

    #[test]
    fn limits_to_resources() {
        let limits = Limits {
            memory: Some(64 << 20),
            cpu_quota: Some(50_000),
            pids: Some(10),
        };
        let r = limits.to_resources().unwrap().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(r.cpu().as_ref().unwrap().period(), Some(CPU_PERIOD_US));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 10);
        assert!(Limits::default().to_resources().unwrap().is_none());
    }

    #[test]
    fn binds_and_env() {
        let b: BindMount = "/src:/dst:ro".parse().unwrap();
        assert_eq!(
            b,
            BindMount {
                source: "/src".into(),
                destination: "/dst".into(),
                readonly: true
            }
        );
        assert!("rel:/dst".parse::<BindMount>().is_err());
        assert!("/a:/b/../c".parse::<BindMount>().is_err());
        assert!("/a:/b:x".parse::<BindMount>().is_err());
        assert!("vol".parse::<BindMount>().is_err());
        for root in ["/etc:/", "/etc://", "/etc:/.", "/etc:/./"] {
            let err = root.parse::<BindMount>().unwrap_err().to_string();
            assert!(err.contains("destination can't be '/'"), "{root}: {err}");
        }
        assert_eq!(
            parse_env("A=b=c").unwrap(),
            Some(("A".into(), "b=c".into()))
        );
        assert!(parse_env("=x").is_err());
    }
}
