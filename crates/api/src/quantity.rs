//! Resource quantities in Kubernetes notation (`100m`, `1.5`, `64Mi`, `1G`, `1e3`), read exactly
//! as apimachinery's `resource.Quantity` does: [`milli`] is `MilliValue` (CPU in millicores),
//! [`value`] is `Value` (bytes, pods, extended resources), both rounded up. This is Berth's one
//! quantity parser: k8s-openapi's `Quantity` is a string (`Quantity(pub String)`), so callers
//! pass `&q.0`; [`Cpu`] and [`Bytes`] are the typed, non-negative forms of Berth's own objects.

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

impl QuantityError {
    /// The text that was read.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Why it is not a quantity.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

fn bad(input: &str, reason: &'static str) -> QuantityError {
    QuantityError {
        input: input.to_owned(),
        reason,
    }
}

/// The quantity `s` times `10^scale`, rounded up (scale 3 gives millicores).
pub fn parse_scaled(s: &str, scale: u32) -> Result<i64, QuantityError> {
    i64::try_from(scaled(s, scale)?).map_err(|_| bad(s, "too large"))
}

fn scaled(s: &str, scale: u32) -> Result<i128, QuantityError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(bad(s, "empty"));
    }
    let (neg, body) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_end);
    if num.is_empty() || num == "." {
        return Err(bad(s, "no number"));
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if frac_part.contains('.') {
        return Err(bad(s, "two decimal points"));
    }
    let mut mantissa: i128 = 0;
    for c in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(c - b'0')))
            .ok_or_else(|| bad(s, "too large"))?;
    }
    // value = mantissa * 10^(exp10 - frac) * 2^(exp2)
    let mut exp10: i32 = -(frac_part.len() as i32) + scale as i32;
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        other => {
            let e = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))
                .ok_or_else(|| bad(s, "unknown suffix"))?;
            let e: i32 = e.parse().map_err(|_| bad(s, "bad exponent"))?;
            if e.abs() > 40 {
                return Err(bad(s, "exponent out of range"));
            }
            exp10 += e;
        }
    }
    let too_large = || bad(s, "too large");
    let mut v = mantissa.checked_shl(exp2).ok_or_else(too_large)?;
    if exp2 > 0 && v >> exp2 != mantissa {
        return Err(too_large());
    }
    if exp10 >= 0 {
        for _ in 0..exp10 {
            v = v.checked_mul(10).ok_or_else(too_large)?;
        }
    } else {
        let mut d: i128 = 1;
        for _ in 0..(-exp10).min(38) {
            d *= 10;
        }
        v = if neg { v / d } else { (v + d - 1) / d };
    }
    Ok(if neg { -v } else { v })
}

/// Millicores of a CPU quantity (`"1.5"` → 1500).
pub fn milli(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 3)
}

/// Whole units of a quantity (`"1Ki"` → 1024).
pub fn value(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 0)
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
        let m = scaled(s, 3)?;
        if m > i128::from(u64::MAX) {
            return Err(bad(s, "too large"));
        }
        u64::try_from(m)
            .map(Cpu)
            .map_err(|_| bad(s, "CPU must not be negative"))
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
        let v = scaled(s, 0)?;
        if v > i128::from(u64::MAX) {
            return Err(bad(s, "too large"));
        }
        u64::try_from(v)
            .map(Bytes)
            .map_err(|_| bad(s, "a size must not be negative"))
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
        assert_eq!(
            "1.5m".parse::<Cpu>().unwrap(),
            Cpu(2),
            "rounded up like MilliValue"
        );
        assert_eq!("1e3".parse::<Cpu>().unwrap(), Cpu(1_000_000));
        assert!("1e3m".parse::<Cpu>().is_err());
        assert_eq!(Cpu(1500).to_string(), "1500m");
        assert_eq!(Cpu(3000).to_string(), "3");
    }

    #[test]
    fn byte_forms() {
        assert_eq!("64Mi".parse::<Bytes>().unwrap(), Bytes(64 << 20));
        assert_eq!("1G".parse::<Bytes>().unwrap(), Bytes(1_000_000_000));
        assert_eq!("123".parse::<Bytes>().unwrap(), Bytes(123));
        assert!("12x".parse::<Bytes>().is_err());
        assert!("-1Ki".parse::<Bytes>().is_err());
        assert_eq!("1.5Gi".parse::<Bytes>().unwrap(), Bytes(3 << 29));
        assert!("99999999999Pi".parse::<Bytes>().is_err());
        assert_eq!(Bytes(64 << 20).to_string(), "64Mi");
    }

    #[test]
    fn reads_kubernetes_notation() {
        assert_eq!(milli("100m").unwrap(), 100);
        assert_eq!(milli("1.5").unwrap(), 1500);
        assert_eq!(milli("2").unwrap(), 2000);
        assert_eq!(milli("0.0001").unwrap(), 1, "rounded up like MilliValue");
        assert_eq!(value("64Mi").unwrap(), 64 << 20);
        assert_eq!(value("1G").unwrap(), 1_000_000_000);
        assert_eq!(value("1e3").unwrap(), 1000);
        assert_eq!(value("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(value("128974848").unwrap(), 128_974_848);
        assert_eq!(value("100m").unwrap(), 1, "fractions round up");
        assert_eq!(value("-1").unwrap(), -1);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "abc",
            "1.2.3",
            "1Zi",
            "1e",
            "99999999999999999999999999Ei",
            ".",
        ] {
            assert!(value(s).is_err(), "{s:?}");
        }
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
