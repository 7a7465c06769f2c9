//! Timestamps as Ceilometer's notification agent writes them: `oslo_utils.timeutils
//! .parse_isotime` (the `iso8601` package: `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, a space or `T`,
//! `HH`, `HH:MM`, `HH:MM:SS`, a fraction after `.` or `,`, `Z` or `±HH[:MM]`; no zone means
//! UTC), then Python's `isoformat()`: the offset kept as it was given (`+02:00` stays), the
//! fraction cut to microseconds and left out when zero.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeDelta};

/// A parsed time with the offset it was given.
pub type IsoTime = DateTime<FixedOffset>;

/// `parse_isotime`, or `None` where it raises.
pub fn parse_isotime(text: &str) -> Option<IsoTime> {
    let b = text.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize, min: usize, max: usize| -> Option<u32> {
        let start = *i;
        while *i < b.len() && *i - start < max && b[*i].is_ascii_digit() {
            *i += 1;
        }
        if *i - start < min {
            return None;
        }
        text[start..*i].parse().ok()
    };
    let year = i32::try_from(digits(&mut i, 4, 4)?).ok()?;
    let (mut month, mut day) = (1, 1);
    let (mut hour, mut minute, mut second, mut micros) = (0, 0, 0, 0);
    let mut offset_seconds = 0;
    if i < b.len() {
        // Month: `-M`/`-MM`, or `MM` (then more must follow: `YYYYMM` alone is refused).
        if b[i] == b'-' {
            i += 1;
            month = digits(&mut i, 1, 2)?;
        } else {
            month = digits(&mut i, 2, 2)?;
            if i == b.len() {
                return None;
            }
        }
        if i < b.len() {
            if b[i] == b'-' {
                i += 1;
                day = digits(&mut i, 1, 2)?;
            } else {
                day = digits(&mut i, 2, 2)?;
            }
            if i < b.len() {
                if b[i] != b' ' && b[i] != b'T' {
                    return None;
                }
                i += 1;
                hour = digits(&mut i, 2, 2)?;
                let colon = |i: &mut usize| {
                    if b.get(*i) == Some(&b':') {
                        *i += 1;
                    }
                };
                let mut j = i;
                colon(&mut j);
                if b.get(j).is_some_and(u8::is_ascii_digit) {
                    i = j;
                    minute = digits(&mut i, 2, 2)?;
                    let mut k = i;
                    colon(&mut k);
                    if b.get(k).is_some_and(u8::is_ascii_digit) {
                        i = k;
                        second = digits(&mut i, 1, 2)?;
                        if matches!(b.get(i), Some(b'.' | b','))
                            && b.get(i + 1).is_some_and(u8::is_ascii_digit)
                        {
                            i += 1;
                            let start = i;
                            while i < b.len() && b[i].is_ascii_digit() {
                                i += 1;
                            }
                            // Decimal("0.<digits>") * 10**6, truncated.
                            let fraction = &text[start..i];
                            let six: String =
                                fraction.chars().chain("000000".chars()).take(6).collect();
                            micros = six.parse().ok()?;
                        }
                    }
                }
                if i < b.len() {
                    match b[i] {
                        b'Z' => i += 1,
                        sign @ (b'+' | b'-') => {
                            i += 1;
                            let hours = i32::try_from(digits(&mut i, 2, 2)?).ok()?;
                            colon(&mut i);
                            let minutes = if b.get(i).is_some_and(u8::is_ascii_digit) {
                                i32::try_from(digits(&mut i, 2, 2)?).ok()?
                            } else {
                                0
                            };
                            offset_seconds = hours * 3600 + minutes * 60;
                            if sign == b'-' {
                                offset_seconds = -offset_seconds;
                            }
                        }
                        _ => return None,
                    }
                }
            }
        }
    }
    if i != b.len() {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    let time = NaiveTime::from_hms_micro_opt(hour, minute, second, micros)?;
    let offset = FixedOffset::east_opt(offset_seconds)?;
    date.and_time(time).and_local_timezone(offset).single()
}

/// Python's `datetime.isoformat()` of an aware time: `2026-11-20T09:15:44.601733+00:00`,
/// `2026-11-20T09:15:44+02:00`.
pub fn isoformat(time: &IsoTime) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    let offset = time.offset().local_minus_utc();
    let sign = if offset < 0 { '-' } else { '+' };
    let offset = offset.unsigned_abs();
    // Written directly: chrono's `format` parses its pattern on every call.
    let mut text = String::with_capacity(32);
    let _ = write!(
        text,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    );
    let micros = time.nanosecond() / 1000;
    if micros != 0 {
        let _ = write!(text, ".{micros:06}");
    }
    let _ = write!(text, "{sign}{:02}:{:02}", offset / 3600, offset % 3600 / 60);
    text
}

/// Ceilometer's `timedelta` plugin: `abs((end - start).total_seconds())`.
pub fn seconds_between(start: &IsoTime, end: &IsoTime) -> f64 {
    let delta: TimeDelta = *end - *start;
    let micros = delta.num_microseconds().unwrap_or(i64::MAX);
    (micros as f64 / 1e6).abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(text: &str) -> Option<String> {
        parse_isotime(text).map(|t| isoformat(&t))
    }

    #[test]
    fn oslo_forms_read_as_ceilometer_writes_them() {
        assert_eq!(
            iso("2026-11-20 09:15:44.601733").as_deref(),
            Some("2026-11-20T09:15:44.601733+00:00")
        );
        assert_eq!(
            iso("2026-11-20T09:15:44Z").as_deref(),
            Some("2026-11-20T09:15:44+00:00")
        );
        assert_eq!(
            iso("2026-11-20T09:15:44.000000").as_deref(),
            Some("2026-11-20T09:15:44+00:00")
        );
        assert_eq!(
            iso("2026-11-20T11:15:44.5+02:00").as_deref(),
            Some("2026-11-20T11:15:44.500000+02:00")
        );
        assert_eq!(
            iso("2026-11-20T09:15:44.1234567-0130").as_deref(),
            Some("2026-11-20T09:15:44.123456-01:30")
        );
        assert_eq!(
            iso("2026-11-20").as_deref(),
            Some("2026-11-20T00:00:00+00:00")
        );
        assert_eq!(iso("2026").as_deref(), Some("2026-01-01T00:00:00+00:00"));
        assert_eq!(
            iso("20261120T0915").as_deref(),
            Some("2026-11-20T09:15:00+00:00")
        );
    }

    #[test]
    fn what_parse_isotime_refuses() {
        for bad in [
            "",
            "yesterday",
            "202611",
            "2026-13-01",
            "2026-11-20X09",
            "2026-11-20 25:00",
            "2026-11-20 10:00:00 junk",
        ] {
            assert_eq!(iso(bad), None, "{bad}");
        }
    }

    #[test]
    fn timedelta_is_absolute_seconds() {
        let a = parse_isotime("2026-11-20 09:15:44").unwrap();
        let b = parse_isotime("2026-11-20 09:16:45.5").unwrap();
        assert_eq!(seconds_between(&b, &a), 61.5);
    }
}
