//! Docker-style option values: memory sizes (`64m`, `1g`, `512k`, plain bytes), `--cpus 0.5`,
//! `-e KEY=VALUE`, `-v SRC:DST[:ro]`, turned into OCI `linux.resources` and mounts.

use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use crate::error::{Error, Result};

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

/// Parses `--cpus`: a positive decimal number of CPUs, returned as a CFS quota over
/// [`CPU_PERIOD_US`] (`0.5` -> 50000).
pub fn parse_cpus(input: &str) -> Result<i64> {
    let bad = |reason: &str| Error::Option {
        option: "--cpus",
        value: input.to_owned(),
        reason: reason.to_owned(),
    };
    let cpus: f64 = input.trim().parse().map_err(|_| bad("not a number"))?;
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(bad("must be greater than 0"));
    }
    let quota = (cpus * CPU_PERIOD_US as f64).round();
    if quota < 1000.0 || quota > i64::MAX as f64 {
        return Err(bad("out of range (at least 0.01)"));
    }
    Ok(quota as i64)
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
    /// The OCI `linux.resources` for these limits (`None` when no limit is set).
    pub fn to_resources(&self) -> Result<Option<LinuxResources>> {
        if *self == Limits::default() {
            return Ok(None);
        }
        let build = |e: oci_spec::OciSpecError| Error::Spec(e.to_string());
        let mut resources = LinuxResourcesBuilder::default();
        if let Some(bytes) = self.memory {
            let limit = i64::try_from(bytes)
                .map_err(|_| Error::Spec("memory limit out of range".into()))?;
            resources = resources.memory(
                LinuxMemoryBuilder::default()
                    .limit(limit)
                    .build()
                    .map_err(build)?,
            );
        }
        if let Some(quota) = self.cpu_quota {
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .quota(quota)
                    .period(CPU_PERIOD_US)
                    .build()
                    .map_err(build)?,
            );
        }
        if let Some(pids) = self.pids {
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
        Ok(BindMount {
            source: source.into(),
            destination: destination.into(),
            readonly,
        })
    }
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
        assert_eq!(parse_cpus("0.5").unwrap(), 50_000);
        assert_eq!(parse_cpus("2").unwrap(), 200_000);
        for bad in ["0", "-1", "abc", "0.001", "inf"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
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
        assert_eq!(
            parse_env("A=b=c").unwrap(),
            Some(("A".into(), "b=c".into()))
        );
        assert!(parse_env("=x").is_err());
    }
}
