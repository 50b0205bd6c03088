//! Resource quantities in Kubernetes notation: CPU as cores or millicores (`2`, `500m`), memory
//! and storage as bytes with binary or decimal suffixes (`64Mi`, `1G`, `128974848`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a quantity string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {input:?}: {reason}")]
pub struct QuantityError {
    input: String,
    reason: &'static str,
}

fn bad(input: &str, reason: &'static str) -> QuantityError {
    QuantityError {
        input: input.to_owned(),
        reason,
    }
}

/// CPU in millicores (`1` core = `1000`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Cpu(pub u64);

impl FromStr for Cpu {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(millis) = s.strip_suffix('m') {
            return millis
                .parse::<u64>()
                .map(Cpu)
                .map_err(|_| bad(s, "millicores must be a whole number"));
        }
        let cores: f64 = s.parse().map_err(|_| bad(s, "not a number of cores"))?;
        if !cores.is_finite() || cores < 0.0 {
            return Err(bad(s, "cores must be a non-negative number"));
        }
        let millis = (cores * 1000.0).round();
        if millis > u64::MAX as f64 {
            return Err(bad(s, "too large"));
        }
        Ok(Cpu(millis as u64))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl TryFrom<String> for Cpu {
    type Error = QuantityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Cpu> for String {
    fn from(c: Cpu) -> String {
        c.to_string()
    }
}

/// A byte count (memory, storage).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Bytes(pub u64);

const SUFFIXES: &[(&str, u64)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
];

impl FromStr for Bytes {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (number, multiplier) = SUFFIXES
            .iter()
            .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
            .unwrap_or((s, 1));
        let n: u64 = number
            .parse()
            .map_err(|_| bad(s, "expected a whole number with an optional suffix"))?;
        n.checked_mul(multiplier)
            .map(Bytes)
            .ok_or_else(|| bad(s, "too large"))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, m) in SUFFIXES.iter().take(5).rev() {
            if self.0 != 0 && self.0.is_multiple_of(*m) {
                return write!(f, "{}{suffix}", self.0 / m);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl TryFrom<String> for Bytes {
    type Error = QuantityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Bytes> for String {
    fn from(b: Bytes) -> String {
        b.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!("500m".parse::<Cpu>().unwrap(), Cpu(500));
        assert_eq!("2".parse::<Cpu>().unwrap(), Cpu(2000));
        assert_eq!("0.25".parse::<Cpu>().unwrap(), Cpu(250));
        assert!("-1".parse::<Cpu>().is_err());
        assert!("1.5m".parse::<Cpu>().is_err());
        assert_eq!(Cpu(1500).to_string(), "1500m");
        assert_eq!(Cpu(3000).to_string(), "3");
    }

    #[test]
    fn byte_forms() {
        assert_eq!("64Mi".parse::<Bytes>().unwrap(), Bytes(64 << 20));
        assert_eq!("1G".parse::<Bytes>().unwrap(), Bytes(1_000_000_000));
        assert_eq!("123".parse::<Bytes>().unwrap(), Bytes(123));
        assert!("12x".parse::<Bytes>().is_err());
        assert!("99999999999Pi".parse::<Bytes>().is_err());
        assert_eq!(Bytes(64 << 20).to_string(), "64Mi");
    }

    proptest::proptest! {
        #[test]
        fn bytes_display_roundtrips(n: u64) {
            proptest::prop_assert_eq!(Bytes(n).to_string().parse::<Bytes>().unwrap(), Bytes(n));
        }

        #[test]
        fn cpu_display_roundtrips(n in 0u64..1u64 << 40) {
            proptest::prop_assert_eq!(Cpu(n).to_string().parse::<Cpu>().unwrap(), Cpu(n));
        }
    }
}
