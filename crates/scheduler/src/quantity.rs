//! Kubernetes resource quantities (`100m`, `1.5`, `64Mi`, `1e3`) read exactly, as
//! `resource.Quantity` does: CPU in millicores (`MilliValue`), everything else in whole units
//! (`Value`), both rounded up.

use crate::error::{Error, Result};

fn bad(input: &str, reason: &'static str) -> Error {
    Error::Quantity {
        input: input.to_owned(),
        reason,
    }
}

/// The quantity `s` times `10^scale`, rounded up (scale 3 gives millicores).
pub fn parse_scaled(s: &str, scale: u32) -> Result<i64> {
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
    let v = if neg { -v } else { v };
    i64::try_from(v).map_err(|_| too_large())
}

/// Millicores of a CPU quantity (`"1.5"` → 1500).
pub fn milli(s: &str) -> Result<i64> {
    parse_scaled(s, 3)
}

/// Whole units of a quantity (`"1Ki"` → 1024).
pub fn value(s: &str) -> Result<i64> {
    parse_scaled(s, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
