//! [`Stats`]: one snapshot of a group's resource use, in the same units on v1 and v2 (bytes,
//! nanoseconds, counts), plus the small parsers for the kernel's flat-keyed files.

use std::collections::HashMap;
use std::path::Path;

use crate::{Error, Result};

/// A snapshot of a group's resource use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Memory use.
    pub memory: MemoryStats,
    /// CPU use.
    pub cpu: CpuStats,
    /// Task counts.
    pub pids: PidsStats,
    /// Block I/O totals.
    pub io: IoStats,
}

/// Memory use, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Current usage.
    pub usage: u64,
    /// Highest usage seen (v2: `memory.peak`, 0 when the kernel lacks it).
    pub max_usage: u64,
    /// The hard limit, `None` when unlimited.
    pub limit: Option<u64>,
    /// Times the group hit its limit (v1 `memory.failcnt`, v2 `max` in `memory.events`).
    pub limit_hits: u64,
    /// Times the group ran out of memory (v2 `oom`; on v1 the kernel does not count this and
    /// it equals `oom_kills`).
    pub oom_events: u64,
    /// Processes killed by the OOM killer in this group.
    pub oom_kills: u64,
}

/// CPU use, in nanoseconds, and CFS throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuStats {
    /// Total CPU time.
    pub usage_ns: u64,
    /// User-mode CPU time.
    pub user_ns: u64,
    /// Kernel-mode CPU time.
    pub system_ns: u64,
    /// CFS periods that elapsed with the group runnable.
    pub periods: u64,
    /// Periods in which the group was throttled.
    pub throttled_periods: u64,
    /// Total time throttled.
    pub throttled_ns: u64,
}

/// Task counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PidsStats {
    /// Tasks now in the group.
    pub current: u64,
    /// The limit, `None` when unlimited.
    pub limit: Option<u64>,
}

/// Block I/O totals over all devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IoStats {
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
}

/// Reads a file, mapping errors to [`Error::Io`].
pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))
}

/// Reads a file that holds one number (or `max`, returned as `None`).
pub(crate) fn read_limit(path: &Path) -> Result<Option<u64>> {
    parse_limit(path, &read(path)?)
}

/// Parses one number, `max` (None) or a v1 "unlimited" value (≥ 2^62, also None).
pub(crate) fn parse_limit(path: &Path, text: &str) -> Result<Option<u64>> {
    let text = text.trim();
    if text == "max" || text == "-1" {
        return Ok(None);
    }
    let value: u64 = text.parse().map_err(|_| Error::Parse {
        path: path.to_owned(),
        reason: format!("{text:?} is not a number or \"max\""),
    })?;
    // v1 reports "unlimited" as PAGE_COUNTER_MAX pages: 9223372036854771712 on 4 KiB pages.
    Ok((value < (1 << 62)).then_some(value))
}

/// Reads a file of one number.
pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    let text = read(path)?;
    text.trim().parse().map_err(|_| Error::Parse {
        path: path.to_owned(),
        reason: format!("{:?} is not a number", text.trim()),
    })
}

/// Parses a flat-keyed file (`key value` per line) into a map; lines that don't fit are skipped.
pub(crate) fn flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let key = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            Some((key, value))
        })
        .collect()
}

/// Reads a flat-keyed file into owned keys.
pub(crate) fn read_flat_keyed(path: &Path) -> Result<HashMap<String, u64>> {
    Ok(flat_keyed(&read(path)?)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect())
}

/// Sums `rbytes=`/`wbytes=` over every device line of a v2 `io.stat`.
pub(crate) fn parse_io_stat(text: &str) -> IoStats {
    let mut io = IoStats::default();
    for field in text.split_whitespace() {
        if let Some((key, value)) = field.split_once('=') {
            let value: u64 = value.parse().unwrap_or(0);
            match key {
                "rbytes" => io.read_bytes += value,
                "wbytes" => io.write_bytes += value,
                _ => {}
            }
        }
    }
    io
}

/// Sums the `Read`/`Write` lines of a v1 `blkio.throttle.io_service_bytes`
/// (`8:0 Read 4096` … `Total 8192`).
pub(crate) fn parse_blkio_service_bytes(text: &str) -> IoStats {
    let mut io = IoStats::default();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [_device, op, value] = parts[..] {
            let value: u64 = value.parse().unwrap_or(0);
            match op {
                "Read" => io.read_bytes += value,
                "Write" => io.write_bytes += value,
                _ => {}
            }
        }
    }
    io
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        let p = Path::new("x");
        assert_eq!(parse_limit(p, "max\n").unwrap(), None);
        assert_eq!(parse_limit(p, "9223372036854771712\n").unwrap(), None);
        assert_eq!(parse_limit(p, "1048576\n").unwrap(), Some(1_048_576));
        assert!(parse_limit(p, "lots").is_err());
    }

    #[test]
    fn io_stat_sums_devices() {
        let io = parse_io_stat(
            "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2 rios=0\n",
        );
        assert_eq!(
            io,
            IoStats {
                read_bytes: 101,
                write_bytes: 202
            }
        );
    }

    #[test]
    fn blkio_sums_devices() {
        let text = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\n8:16 Read 1\nTotal 12289\n";
        assert_eq!(
            parse_blkio_service_bytes(text),
            IoStats {
                read_bytes: 4097,
                write_bytes: 8192
            }
        );
    }

    #[test]
    fn flat_keyed_skips_junk() {
        let map = flat_keyed("oom 1\noom_kill 2\ngarbage\nlow x\n");
        assert_eq!(map.get("oom"), Some(&1));
        assert_eq!(map.get("oom_kill"), Some(&2));
        assert_eq!(map.len(), 2);
    }
}
