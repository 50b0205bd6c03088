//! [`Resources`]: the validated, version-neutral form of OCI `linux.resources`. Converting an OCI
//! spec with [`Resources::try_from`] checks every value (ranges, consistency, list syntax) before
//! any cgroup file is touched; the v1 and v2 managers then render it into their own files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxResources,
    LinuxThrottleDevice,
};

use crate::convert::{
    BLKIO_WEIGHT_MAX, BLKIO_WEIGHT_MIN, CFS_MIN_US, CFS_PERIOD_MAX_US, CPU_SHARES_MAX,
    CPU_SHARES_MIN,
};
use crate::{Error, Result};

/// Validated resource limits for one group. `None` everywhere means "leave as is".
///
/// Limits of `None` inside an `Option<Option<u64>>` mean "set to unlimited".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resources {
    /// Memory limits.
    pub memory: MemoryLimits,
    /// CPU limits.
    pub cpu: CpuLimits,
    /// Maximum number of tasks: `Some(None)` is unlimited.
    pub pids_max: Option<Option<u64>>,
    /// Block I/O limits.
    pub block_io: BlockIoLimits,
    /// Device access rules, applied in order (v1 devices controller).
    pub devices: Vec<DeviceRule>,
    /// Raw v2 files to write (`unified` in OCI): file name -> value. Refused on v1.
    pub unified: BTreeMap<String, String>,
    /// Hugepage limits in bytes per page size (`2MB`, `1GB`, …): `None` is unlimited.
    pub hugepages: BTreeMap<String, Option<u64>>,
}

/// Memory limits, in bytes. In each `Option<Option<u64>>`, `Some(None)` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryLimits {
    /// Hard limit (`memory.limit_in_bytes` / `memory.max`).
    pub limit: Option<Option<u64>>,
    /// Soft limit / reservation (`memory.soft_limit_in_bytes` / `memory.low`).
    pub reservation: Option<Option<u64>>,
    /// Memory plus swap, as OCI and v1 count it (v2 gets `swap - limit`).
    pub swap: Option<Option<u64>>,
    /// Swappiness 0..=100 (v1 only; ignored on v2, which has no per-group swappiness).
    pub swappiness: Option<u64>,
    /// Disable the OOM killer (v1 only).
    pub disable_oom_killer: bool,
}

/// CPU limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuLimits {
    /// Relative weight as v1 shares (2..=262144); v2 converts to a weight.
    pub shares: Option<u64>,
    /// CFS quota in microseconds per period: `Some(None)` is unlimited.
    pub quota: Option<Option<u64>>,
    /// CFS period in microseconds.
    pub period: Option<u64>,
    /// CPUs the group may run on.
    pub cpus: Option<CpuList>,
    /// Memory nodes the group may allocate from.
    pub mems: Option<CpuList>,
}

/// Block I/O limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockIoLimits {
    /// Relative weight 10..=1000 (v1 scale; v2 converts).
    pub weight: Option<u16>,
    /// Read bytes per second, per device.
    pub read_bps: Vec<Throttle>,
    /// Write bytes per second, per device.
    pub write_bps: Vec<Throttle>,
    /// Read operations per second, per device.
    pub read_iops: Vec<Throttle>,
    /// Write operations per second, per device.
    pub write_iops: Vec<Throttle>,
}

/// A per-device rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Rate (bytes or operations per second).
    pub rate: u64,
}

/// One device access rule (`devices.allow` / `devices.deny` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    /// Allow (true) or deny (false).
    pub allow: bool,
    /// `a` (all), `b` (block) or `c` (character).
    pub kind: char,
    /// Major number, `None` for any.
    pub major: Option<u64>,
    /// Minor number, `None` for any.
    pub minor: Option<u64>,
    /// Access: a non-empty subset of `rwm`.
    pub access: String,
}

impl fmt::Display for DeviceRule {
    /// The v1 `devices.allow`/`devices.deny` line, e.g. `c 1:3 rwm` or `a *:* rwm`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = |n: Option<u64>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
        write!(
            f,
            "{} {}:{} {}",
            self.kind,
            num(self.major),
            num(self.minor),
            self.access
        )
    }
}

/// A set of CPU or memory-node numbers, parsed from the kernel list format (`0-3,6`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuList(BTreeSet<u32>);

impl CpuList {
    /// Parses `0-3,6` style lists; an empty string is the empty set.
    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        let mut set = BTreeSet::new();
        for part in text
            .trim()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let number = |s: &str| {
                s.trim().parse::<u32>().map_err(|_| {
                    Error::invalid(field, format!("{s:?} is not a number in {text:?}"))
                })
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (number(a)?, number(b)?);
                    if a > b {
                        return Err(Error::invalid(
                            field,
                            format!("range {part:?} runs backwards"),
                        ));
                    }
                    if b - a > 65_536 {
                        return Err(Error::invalid(
                            field,
                            format!("range {part:?} is too large"),
                        ));
                    }
                    set.extend(a..=b);
                }
                None => {
                    set.insert(number(part)?);
                }
            }
        }
        Ok(CpuList(set))
    }

    /// True when no number is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when every number of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuList) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The numbers, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }
}

impl fmt::Display for CpuList {
    /// The kernel list format with ranges collapsed, e.g. `0-3,6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

/// An OCI limit where -1 means unlimited and 0 is refused (`memory.limit`).
fn positive_or_unlimited(field: &'static str, value: i64) -> Result<Option<u64>> {
    match value {
        -1 => Ok(None),
        v if v > 0 => Ok(Some(v as u64)),
        0 => Err(Error::invalid(
            field,
            "0 is not a limit (use -1 for unlimited)",
        )),
        v => Err(Error::invalid(
            field,
            format!("{v} is negative (only -1, unlimited, is allowed)"),
        )),
    }
}

/// An OCI limit where -1 means unlimited and 0 is a valid value (`memory.reservation`).
fn non_negative_or_unlimited(field: &'static str, value: i64) -> Result<Option<u64>> {
    match value {
        -1 => Ok(None),
        v if v >= 0 => Ok(Some(v as u64)),
        v => Err(Error::invalid(
            field,
            format!("{v} is negative (only -1, unlimited, is allowed)"),
        )),
    }
}

impl TryFrom<&LinuxResources> for Resources {
    type Error = Error;

    /// Validates an OCI `linux.resources` and converts it. Fields berth-cgroups cannot enforce
    /// (network class/priorities, rdma) are refused rather than ignored.
    fn try_from(oci: &LinuxResources) -> Result<Self> {
        if oci.network().is_some() {
            return Err(Error::Unsupported {
                what: "network (net_cls/net_prio)".into(),
            });
        }
        if oci.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(Error::Unsupported {
                what: "rdma".into(),
            });
        }
        let mut res = Resources::default();
        if let Some(memory) = oci.memory() {
            res.memory = memory_limits(memory)?;
        }
        if let Some(cpu) = oci.cpu() {
            res.cpu = cpu_limits(cpu)?;
        }
        if let Some(pids) = oci.pids() {
            // runc: 0 leaves the limit alone, a negative value means unlimited.
            res.pids_max = match pids.limit() {
                0 => None,
                n if n < 0 => Some(None),
                n => Some(Some(n as u64)),
            };
        }
        if let Some(block_io) = oci.block_io() {
            res.block_io = block_io_limits(block_io)?;
        }
        if let Some(devices) = oci.devices() {
            res.devices = devices.iter().map(device_rule).collect::<Result<_>>()?;
        }
        for limit in oci.hugepage_limits().as_deref().unwrap_or_default() {
            let size = limit.page_size();
            hugepage_size_kib(size)?;
            let bytes = non_negative_or_unlimited("hugepageLimits.limit", limit.limit())?;
            res.hugepages.insert(size.clone(), bytes);
        }
        if let Some(unified) = oci.unified() {
            for (key, value) in unified {
                validate_unified_key(key)?;
                res.unified.insert(key.clone(), value.clone());
            }
        }
        Ok(res)
    }
}

/// The size in KiB of a hugepage size as OCI and the hugetlb files name it (`64KB`, `2MB`,
/// `1GB`); anything else (which would also make a bad file name) is refused.
pub(crate) fn hugepage_size_kib(size: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(
            "hugepageLimits.pageSize",
            format!("{size:?} is not <number><KB|MB|GB>"),
        )
    };
    let (number, shift) = if let Some(n) = size.strip_suffix("KB") {
        (n, 0)
    } else if let Some(n) = size.strip_suffix("MB") {
        (n, 10)
    } else if let Some(n) = size.strip_suffix("GB") {
        (n, 20)
    } else {
        return Err(bad());
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || number.len() > 9 {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok(n << shift)
}

fn memory_limits(memory: &LinuxMemory) -> Result<MemoryLimits> {
    let limit = memory
        .limit()
        .map(|v| positive_or_unlimited("memory.limit", v))
        .transpose()?;
    let reservation = memory
        .reservation()
        .map(|v| non_negative_or_unlimited("memory.reservation", v))
        .transpose()?;
    // runc: a swap of 0 leaves the swap limit alone.
    let swap = match memory.swap() {
        None | Some(0) => None,
        Some(v) => Some(positive_or_unlimited("memory.swap", v)?),
    };
    if let (Some(Some(limit)), Some(Some(swap))) = (limit, swap)
        && swap < limit
    {
        return Err(Error::invalid(
            "memory.swap",
            format!("memory+swap total {swap} is below the memory limit {limit}"),
        ));
    }
    if let (Some(Some(limit)), Some(Some(reservation))) = (limit, reservation)
        && reservation > limit
    {
        return Err(Error::invalid(
            "memory.reservation",
            format!("reservation {reservation} is above the memory limit {limit}"),
        ));
    }
    let swappiness = memory.swappiness();
    if let Some(s) = swappiness
        && s > 100
    {
        return Err(Error::invalid(
            "memory.swappiness",
            format!("{s} is above 100"),
        ));
    }
    Ok(MemoryLimits {
        limit,
        reservation,
        swap,
        swappiness,
        disable_oom_killer: memory.disable_oom_killer().unwrap_or(false),
    })
}

fn cpu_limits(cpu: &LinuxCpu) -> Result<CpuLimits> {
    // runc: shares of 0 leave the value alone.
    let shares = match cpu.shares() {
        None | Some(0) => None,
        Some(s) if !(CPU_SHARES_MIN..=CPU_SHARES_MAX).contains(&s) => {
            return Err(Error::invalid(
                "cpu.shares",
                format!("{s} is outside {CPU_SHARES_MIN}..={CPU_SHARES_MAX}"),
            ));
        }
        Some(s) => Some(s),
    };
    let quota = match cpu.quota() {
        None => None,
        Some(q) if q <= 0 && q != -1 && q != 0 => {
            return Err(Error::invalid(
                "cpu.quota",
                format!("{q} is negative (only -1, unlimited)"),
            ));
        }
        Some(q) if q <= 0 => Some(None),
        Some(q) if (q as u64) < CFS_MIN_US => {
            return Err(Error::invalid(
                "cpu.quota",
                format!("{q} us is below the {CFS_MIN_US} us minimum"),
            ));
        }
        Some(q) => Some(Some(q as u64)),
    };
    let period = match cpu.period() {
        None | Some(0) => None,
        Some(p) if !(CFS_MIN_US..=CFS_PERIOD_MAX_US).contains(&p) => {
            return Err(Error::invalid(
                "cpu.period",
                format!("{p} us is outside {CFS_MIN_US}..={CFS_PERIOD_MAX_US}"),
            ));
        }
        Some(p) => Some(p),
    };
    if cpu.realtime_runtime().is_some_and(|v| v != 0)
        || cpu.realtime_period().is_some_and(|v| v != 0)
    {
        return Err(Error::Unsupported {
            what: "cpu.realtimeRuntime/realtimePeriod".into(),
        });
    }
    let list = |field: &'static str, text: &Option<String>| -> Result<Option<CpuList>> {
        match text.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(text) => {
                let list = CpuList::parse(field, text)?;
                if list.is_empty() {
                    return Err(Error::invalid(field, "the list is empty"));
                }
                Ok(Some(list))
            }
        }
    };
    Ok(CpuLimits {
        shares,
        quota,
        period,
        cpus: list("cpu.cpus", cpu.cpus())?,
        mems: list("cpu.mems", cpu.mems())?,
    })
}

fn block_io_limits(block_io: &LinuxBlockIo) -> Result<BlockIoLimits> {
    let weight = match block_io.weight() {
        None | Some(0) => None,
        Some(w) if !(BLKIO_WEIGHT_MIN..=BLKIO_WEIGHT_MAX).contains(&w) => {
            return Err(Error::invalid(
                "blockIO.weight",
                format!("{w} is outside {BLKIO_WEIGHT_MIN}..={BLKIO_WEIGHT_MAX}"),
            ));
        }
        Some(w) => Some(w),
    };
    if block_io.leaf_weight().is_some_and(|w| w != 0)
        || block_io
            .weight_device()
            .as_ref()
            .is_some_and(|d| !d.is_empty())
    {
        return Err(Error::Unsupported {
            what: "blockIO.leafWeight/weightDevice".into(),
        });
    }
    let throttles =
        |field: &'static str, list: &Option<Vec<LinuxThrottleDevice>>| -> Result<Vec<Throttle>> {
            list.iter()
                .flatten()
                .map(|d| {
                    let (major, minor) = (d.major(), d.minor());
                    if major < 0 || minor < 0 {
                        return Err(Error::invalid(
                            field,
                            format!("device {major}:{minor} is negative"),
                        ));
                    }
                    Ok(Throttle {
                        major: major as u64,
                        minor: minor as u64,
                        rate: d.rate(),
                    })
                })
                .collect()
        };
    Ok(BlockIoLimits {
        weight,
        read_bps: throttles(
            "blockIO.throttleReadBpsDevice",
            block_io.throttle_read_bps_device(),
        )?,
        write_bps: throttles(
            "blockIO.throttleWriteBpsDevice",
            block_io.throttle_write_bps_device(),
        )?,
        read_iops: throttles(
            "blockIO.throttleReadIOPSDevice",
            block_io.throttle_read_iops_device(),
        )?,
        write_iops: throttles(
            "blockIO.throttleWriteIOPSDevice",
            block_io.throttle_write_iops_device(),
        )?,
    })
}

fn device_rule(rule: &LinuxDeviceCgroup) -> Result<DeviceRule> {
    let kind = match rule.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => 'a',
        LinuxDeviceType::B => 'b',
        LinuxDeviceType::C | LinuxDeviceType::U => 'c',
        LinuxDeviceType::P => {
            return Err(Error::invalid(
                "devices.type",
                "FIFOs (p) have no device cgroup rule",
            ));
        }
    };
    let number = |field: &'static str, n: Option<i64>| match n {
        None | Some(-1) => Ok(None),
        Some(n) if n >= 0 => Ok(Some(n as u64)),
        Some(n) => Err(Error::invalid(
            field,
            format!("{n} is negative (only -1, any, is allowed)"),
        )),
    };
    let access = rule.access().clone().unwrap_or_else(|| "rwm".to_owned());
    if access.is_empty() || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(Error::invalid(
            "devices.access",
            format!("{access:?} is not a subset of \"rwm\""),
        ));
    }
    Ok(DeviceRule {
        allow: rule.allow(),
        kind,
        major: number("devices.major", rule.major())?,
        minor: number("devices.minor", rule.minor())?,
        access,
    })
}

fn validate_unified_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && !key.contains('/')
        && key.contains('.')
        && !key.starts_with('.')
        && !key.starts_with("cgroup.");
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "unified",
            format!("{key:?} is not a controller file name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};

    fn with_memory(limit: i64) -> LinuxResources {
        LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(limit).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn memory_limits_are_checked() {
        assert!(matches!(
            Resources::try_from(&with_memory(0)),
            Err(Error::InvalidResources {
                field: "memory.limit",
                ..
            })
        ));
        assert!(Resources::try_from(&with_memory(-2)).is_err());
        assert_eq!(
            Resources::try_from(&with_memory(-1)).unwrap().memory.limit,
            Some(None)
        );
        assert_eq!(
            Resources::try_from(&with_memory(1 << 20))
                .unwrap()
                .memory
                .limit,
            Some(Some(1 << 20))
        );
    }

    #[test]
    fn swap_below_limit_is_refused() {
        let oci = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(200)
                    .swap(100)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let err = Resources::try_from(&oci).unwrap_err().to_string();
        assert!(err.contains("memory.swap"), "{err}");
    }

    #[test]
    fn cpu_values_are_checked() {
        let cpu = |b: LinuxCpuBuilder| {
            LinuxResourcesBuilder::default()
                .cpu(b.build().unwrap())
                .build()
                .unwrap()
        };
        assert!(Resources::try_from(&cpu(LinuxCpuBuilder::default().shares(1u64))).is_err());
        assert!(Resources::try_from(&cpu(LinuxCpuBuilder::default().quota(-5i64))).is_err());
        assert!(Resources::try_from(&cpu(LinuxCpuBuilder::default().quota(10i64))).is_err());
        assert!(Resources::try_from(&cpu(LinuxCpuBuilder::default().period(10u64))).is_err());
        assert!(Resources::try_from(&cpu(LinuxCpuBuilder::default().cpus("3-1"))).is_err());
        assert!(Resources::try_from(&cpu(LinuxCpuBuilder::default().cpus("x"))).is_err());
        let ok = Resources::try_from(&cpu(LinuxCpuBuilder::default()
            .quota(20_000i64)
            .period(100_000u64)
            .cpus("0")))
        .unwrap();
        assert_eq!(ok.cpu.quota, Some(Some(20_000)));
        assert_eq!(ok.cpu.cpus.unwrap().to_string(), "0");
    }

    #[test]
    fn cpu_lists_round_trip() {
        let list = CpuList::parse("cpu.cpus", "0-3, 5,7-8,9").unwrap();
        assert_eq!(list.to_string(), "0-3,5,7-9");
        assert!(CpuList::parse("cpu.cpus", "").unwrap().is_empty());
        assert!(CpuList::parse("cpu.cpus", "0-99999999").is_err());
    }

    #[test]
    fn device_rules_render_like_v1() {
        let rule = DeviceRule {
            allow: true,
            kind: 'c',
            major: Some(1),
            minor: None,
            access: "rw".into(),
        };
        assert_eq!(rule.to_string(), "c 1:* rw");
    }

    #[test]
    fn unified_keys_are_file_names() {
        assert!(validate_unified_key("memory.high").is_ok());
        assert!(validate_unified_key("../etc").is_err());
        assert!(validate_unified_key("memory/../x").is_err());
        assert!(validate_unified_key("cgroup.procs").is_err());
    }
}
