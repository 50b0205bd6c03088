//! Unit conversions between OCI `linux.resources`, cgroup v1 files and cgroup v2 files: the one
//! place where shares become weights, blkio weights become io weights and OCI's memory+swap total
//! becomes v2's swap-only limit. The formulas are the ones runc and crun use, so a spec means the
//! same thing under every runtime.

/// Smallest `cpu.shares` the v1 kernel accepts.
pub const CPU_SHARES_MIN: u64 = 2;
/// Largest `cpu.shares` the v1 kernel accepts.
pub const CPU_SHARES_MAX: u64 = 262_144;
/// Smallest v2 `cpu.weight`.
pub const CPU_WEIGHT_MIN: u64 = 1;
/// Largest v2 `cpu.weight`.
pub const CPU_WEIGHT_MAX: u64 = 10_000;
/// Smallest v1 `blkio.weight`.
pub const BLKIO_WEIGHT_MIN: u16 = 10;
/// Largest v1 `blkio.weight`.
pub const BLKIO_WEIGHT_MAX: u16 = 1000;
/// Smallest CFS period / quota the kernel accepts, in microseconds.
pub const CFS_MIN_US: u64 = 1000;
/// Largest CFS period the kernel accepts, in microseconds.
pub const CFS_PERIOD_MAX_US: u64 = 1_000_000;
/// The kernel's default CFS period, in microseconds.
pub const CFS_PERIOD_DEFAULT_US: u64 = 100_000;

/// v1 `cpu.shares` (2..=262144) to v2 `cpu.weight` (1..=10000), as runc does it:
/// `1 + (shares - 2) * 9999 / 262142`. Shares 1024 (the default) give weight 39.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(CPU_SHARES_MIN, CPU_SHARES_MAX);
    1 + (shares - 2) * 9999 / 262_142
}

/// v2 `cpu.weight` to v1 `cpu.shares`, the inverse of [`shares_to_weight`] (rounded up, so that
/// `shares_to_weight(weight_to_shares(w)) == w` for every valid weight).
pub fn weight_to_shares(weight: u64) -> u64 {
    let weight = weight.clamp(CPU_WEIGHT_MIN, CPU_WEIGHT_MAX);
    2 + ((weight - 1) * 262_142).div_ceil(9999)
}

/// v1 `blkio.weight` (10..=1000) to v2 `io.weight` (1..=10000): `1 + (w - 10) * 9999 / 990`.
pub fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    let weight = u64::from(weight.clamp(BLKIO_WEIGHT_MIN, BLKIO_WEIGHT_MAX));
    1 + (weight - 10) * 9999 / 990
}

/// OCI `memory.swap` is the memory+swap total (v1's `memory.memsw.limit_in_bytes`); v2's
/// `memory.swap.max` is swap alone. Returns the v2 value for a memory limit and an OCI total,
/// both `None` meaning unlimited; `None` out means `max`.
pub fn memsw_to_swap_max(memory: Option<u64>, memsw: Option<u64>) -> Option<u64> {
    match (memory, memsw) {
        (_, None) => None,
        // A swap total without a memory limit: only the total is bounded, so swap alone is too.
        (None, Some(total)) => Some(total),
        (Some(mem), Some(total)) => Some(total.saturating_sub(mem)),
    }
}

/// v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us` to v2 `cpu.max` ("max 100000" or "20000 100000").
pub fn cpu_max_line(quota_us: Option<u64>, period_us: u64) -> String {
    match quota_us {
        Some(q) => format!("{q} {period_us}"),
        None => format!("max {period_us}"),
    }
}

/// Renders a byte/count limit for a v2 file: `max` when unlimited.
pub(crate) fn v2_limit(value: Option<u64>) -> String {
    value.map_or_else(|| "max".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_share_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10_000), 262_144);
    }

    #[test]
    fn known_io_weights() {
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(500), 4950);
        assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
    }

    #[test]
    fn swap_conversion() {
        assert_eq!(memsw_to_swap_max(Some(100), Some(300)), Some(200));
        assert_eq!(memsw_to_swap_max(Some(100), Some(100)), Some(0));
        assert_eq!(memsw_to_swap_max(Some(100), None), None);
        assert_eq!(memsw_to_swap_max(None, Some(50)), Some(50));
    }

    #[test]
    fn cpu_max_lines() {
        assert_eq!(cpu_max_line(Some(20_000), 100_000), "20000 100000");
        assert_eq!(cpu_max_line(None, 100_000), "max 100000");
    }

    proptest! {
        #[test]
        fn weight_round_trips(weight in CPU_WEIGHT_MIN..=CPU_WEIGHT_MAX) {
            prop_assert_eq!(shares_to_weight(weight_to_shares(weight)), weight);
        }

        #[test]
        fn shares_map_into_weight_range_monotonically(a in CPU_SHARES_MIN..=CPU_SHARES_MAX, b in CPU_SHARES_MIN..=CPU_SHARES_MAX) {
            let (wa, wb) = (shares_to_weight(a), shares_to_weight(b));
            prop_assert!((CPU_WEIGHT_MIN..=CPU_WEIGHT_MAX).contains(&wa));
            prop_assert!(a > b || wa <= wb);
        }

        #[test]
        fn io_weight_in_range(w in BLKIO_WEIGHT_MIN..=BLKIO_WEIGHT_MAX) {
            prop_assert!((1..=10_000).contains(&blkio_weight_to_io_weight(w)));
        }
    }
}
