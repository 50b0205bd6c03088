//! Cron schedules as CronJobs write them: five fields (minute, hour, day of month, month, day
//! of week) with `*`, lists, ranges, steps and names (`jan`, `mon`), `?` for `*`, and the
//! `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly` shorthands; evaluated in a time zone
//! (jiff's, from the system's tz database), so `timeZone: Europe/Berlin` keeps 09:00 at 09:00
//! across daylight saving changes.

use k8s_openapi::jiff::civil::{Date, DateTime};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Timestamp, ToSpan};

use crate::error::{Error, Result};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day of month and day of week both restricted: either matches (cron's rule).
    either_day: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn invalid(spec: &str, message: impl Into<String>) -> Error {
    Error::Invalid {
        what: format!("schedule {spec:?}"),
        message: message.into(),
    }
}

fn field(spec: &str, text: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool)> {
    let value = |s: &str| -> Result<u32> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names start at 1, day names at 0.
            return Ok(u32::try_from(i).unwrap_or(0) + min.min(1));
        }
        s.parse::<u32>()
            .map_err(|_| invalid(spec, format!("{s:?} is not a number")))
    };
    let mut bits = 0u64;
    let mut restricted = true;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| invalid(spec, format!("bad step in {part:?}")))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            if step == 1 && text.split(',').count() == 1 {
                restricted = false;
            }
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(invalid(
                spec,
                format!("{part:?} is outside {min}-{max} or reversed"),
            ));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, restricted))
}

impl Schedule {
    /// Parses a CronJob's `spec.schedule`.
    pub fn parse(spec: &str) -> Result<Self> {
        let text = match spec.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") => {
                return Err(invalid(
                    spec,
                    "use spec.timeZone instead of TZ= in the schedule",
                ));
            }
            s => s,
        };
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() != 5 {
            return Err(invalid(
                spec,
                format!("expected 5 fields, found {}", f.len()),
            ));
        }
        let (minutes, _) = field(spec, f[0], 0, 59, &[])?;
        let (hours, _) = field(spec, f[1], 0, 23, &[])?;
        let (days, dom_r) = field(spec, f[2], 1, 31, &[])?;
        let (months, _) = field(spec, f[3], 1, 12, &MONTHS)?;
        let (mut weekdays, dow_r) = field(spec, f[4], 0, 7, &DAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            either_day: dom_r && dow_r,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first time strictly after `after` that the schedule fires, in `tz`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let zoned = after.to_zoned(tz.clone());
        // The next whole minute.
        let start = zoned.datetime().checked_add(1.minute()).ok()?;
        let mut t = DateTime::new(
            start.year(),
            start.month(),
            start.day(),
            start.hour(),
            start.minute(),
            0,
            0,
        )
        .ok()?;
        // Five years of minutes is enough for any valid schedule (Feb 29 included).
        for _ in 0..(5 * 366 * 24 * 60) {
            let month = u32::try_from(t.month()).ok()?;
            if self.months & (1 << month) == 0 {
                t = t.first_of_month().checked_add(1.month()).ok()?;
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t
                    .date()
                    .checked_add(1.day())
                    .ok()?
                    .to_datetime(Default::default());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = DateTime::new(t.year(), t.month(), t.day(), t.hour(), 0, 0, 0)
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            let ts = tz.to_timestamp(t).ok()?;
            if ts > after {
                return Some(ts);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

/// The time zone named `name` (IANA), or UTC when `None`.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone> {
    match name {
        None => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|e| Error::Invalid {
            what: format!("time zone {n:?}"),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn next_times_follow_the_fields() {
        let utc = TimeZone::UTC;
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            every5.next_after(ts("2026-01-01T00:00:30Z"), &utc),
            Some(ts("2026-01-01T00:05:00Z"))
        );
        assert_eq!(
            every5.next_after(ts("2026-01-01T00:05:00Z"), &utc),
            Some(ts("2026-01-01T00:10:00Z"))
        );
        let weekdays = Schedule::parse("30 9 * * mon-fri").unwrap();
        // 2026-01-03 is a Saturday: next is Monday the 5th.
        assert_eq!(
            weekdays.next_after(ts("2026-01-03T00:00:00Z"), &utc),
            Some(ts("2026-01-05T09:30:00Z"))
        );
        let leap = Schedule::parse("0 0 29 feb *").unwrap();
        assert_eq!(
            leap.next_after(ts("2026-03-01T00:00:00Z"), &utc),
            Some(ts("2028-02-29T00:00:00Z"))
        );
        let either = Schedule::parse("0 0 1 * sun").unwrap();
        // The 1st or any Sunday: 2026-01-04 is a Sunday.
        assert_eq!(
            either.next_after(ts("2026-01-01T00:00:00Z"), &utc),
            Some(ts("2026-01-04T00:00:00Z"))
        );
        assert_eq!(
            Schedule::parse("@hourly")
                .unwrap()
                .next_after(ts("2026-01-01T10:59:59Z"), &utc),
            Some(ts("2026-01-01T11:00:00Z"))
        );
    }

    #[test]
    fn time_zones_shift_the_schedule() {
        let tokyo = time_zone(Some("Asia/Tokyo")).unwrap();
        let nine = Schedule::parse("0 9 * * *").unwrap();
        assert_eq!(
            nine.next_after(ts("2026-01-01T01:00:00Z"), &tokyo),
            Some(ts("2026-01-02T00:00:00Z"))
        );
        assert!(time_zone(Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in [
            "* * * *",
            "61 * * * *",
            "*/0 * * * *",
            "x * * * *",
            "5-1 * * * *",
            "TZ=UTC * * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
