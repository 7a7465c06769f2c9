//! Aodh's time constraints: when an alarm has any, it is evaluated only while one of them is
//! open. A constraint opens at each time its five-field cron expression names, read in its time
//! zone (UTC when none), and stays open `duration` seconds; like Aodh, only the latest opening
//! at or before now counts.
//!
//! The API checks constraints with [`check`] before storing them; the evaluator asks
//! [`is_open`] every cycle. Both bound the work: a window lasts at most [`MAX_DURATION`], so the
//! search for the latest opening looks back a bounded number of days.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::model::TimeConstraint;

/// The longest window accepted (a leap year), in seconds.
pub const MAX_DURATION: u64 = 366 * 24 * 3600;

/// Most time constraints on one alarm.
pub const MAX_CONSTRAINTS: usize = 16;

/// Days looked back for the latest opening: a window never lasts longer.
const LOOKBACK_DAYS: i64 = 368;

/// A parsed cron expression: which minutes, hours, days of the month, months and weekdays
/// match (Sunday is 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    /// Cron's rule: when both day fields are restricted, a day matching either matches.
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    /// Parses `minute hour day-of-month month day-of-week`, each `*`, a number or name, a
    /// range `a-b`, any of them with a step `/n`, or a comma list of those.
    pub fn parse(expression: &str) -> Result<Self, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields.as_slice() else {
            return Err(format!(
                "{expression:?} is not a cron expression of five fields \
                 (minute hour day-of-month month day-of-week)"
            ));
        };
        let mut weekdays = field(weekday, 0, 7, &WEEKDAYS, "day-of-week")?;
        // 7 is Sunday too.
        if weekdays[7] {
            weekdays[0] = true;
        }
        weekdays.truncate(7);
        Ok(Self {
            minutes: field(minute, 0, 59, &[], "minute")?,
            hours: field(hour, 0, 23, &[], "hour")?,
            days: field(day, 1, 31, &[], "day-of-month")?,
            months: field(month, 1, 12, &MONTHS, "month")?,
            weekdays,
            days_restricted: !day.starts_with('*'),
            weekdays_restricted: !weekday.starts_with('*'),
        })
    }

    fn matches_day(&self, date: NaiveDate) -> bool {
        if !self.months[date.month() as usize] {
            return false;
        }
        let by_day = self.days[date.day() as usize];
        let by_weekday = self.weekdays[date.weekday().num_days_from_sunday() as usize];
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => by_day || by_weekday,
            (true, false) => by_day,
            (false, true) => by_weekday,
            (false, false) => true,
        }
    }

    /// The latest time at or before `now` that the expression names, read in `tz`; `None`
    /// when there is none in the last 368 days (a window never lasts longer).
    pub fn latest_at_or_before(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local_now = now.with_timezone(&tz).naive_local();
        let today = local_now.date();
        for back in 0..LOOKBACK_DAYS {
            let date = today - Duration::days(back);
            if !self.matches_day(date) {
                continue;
            }
            for hour in (0..24u32).rev().filter(|h| self.hours[*h as usize]) {
                for minute in (0..60u32).rev().filter(|m| self.minutes[*m as usize]) {
                    let Some(local) = date.and_hms_opt(hour, minute, 0) else {
                        continue;
                    };
                    if local > local_now {
                        continue;
                    }
                    // A time skipped by a clock change never happens; a repeated one counts
                    // from its first occurrence.
                    if let Some(at) = tz.from_local_datetime(&local).earliest() {
                        let at = at.with_timezone(&Utc);
                        if at <= now {
                            return Some(at);
                        }
                    }
                }
            }
        }
        None
    }
}

/// One cron field as a table of `min..=max` (indexed by value).
fn field(text: &str, min: u32, max: u32, names: &[&str], what: &str) -> Result<Vec<bool>, String> {
    let bad = || format!("{what} field {text:?} is not valid");
    let value = |part: &str| -> Result<u32, String> {
        let lower = part.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names count from 1, weekday names from 0.
            return Ok(u32::try_from(i).map_err(|_| bad())? + u32::from(min == 1));
        }
        part.parse::<u32>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(bad)
    };
    let mut table = vec![false; max as usize + 1];
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (
                range,
                step.parse::<u32>()
                    .ok()
                    .filter(|s| *s >= 1)
                    .ok_or_else(bad)?,
            ),
            None => (item, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let single = value(range)?;
            // `a/n` runs from a to the end, as in cron.
            (single, if item.contains('/') { max } else { single })
        };
        if low > high {
            return Err(bad());
        }
        for v in (low..=high).step_by(step as usize) {
            table[v as usize] = true;
        }
    }
    Ok(table)
}

/// The time zone named by `name`; UTC when empty.
fn zone(name: &str) -> Result<Tz, String> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    name.parse::<Tz>()
        .map_err(|_| format!("Timezone {name} is not valid"))
}

/// Whether `constraint` can be evaluated: its cron expression, duration and time zone; the
/// message says what is wrong.
pub fn check(constraint: &TimeConstraint) -> Result<(), String> {
    Cron::parse(&constraint.start)?;
    zone(&constraint.timezone)?;
    if constraint.duration > MAX_DURATION {
        return Err(format!("duration: at most {MAX_DURATION} seconds"));
    }
    Ok(())
}

/// Whether an alarm with these constraints is evaluated at `now`: always without constraints,
/// else while one of them is open. A constraint that no longer parses is treated as closed
/// (and logged), so a bad definition stops evaluation rather than running unconstrained.
pub fn is_open(constraints: &[TimeConstraint], now: DateTime<Utc>) -> bool {
    if constraints.is_empty() {
        return true;
    }
    constraints.iter().any(|constraint| {
        let parsed = Cron::parse(&constraint.start).and_then(|cron| {
            let tz = zone(&constraint.timezone)?;
            Ok((cron, tz))
        });
        match parsed {
            Ok((cron, tz)) => cron.latest_at_or_before(now, tz).is_some_and(|start| {
                let elapsed = (now - start).num_seconds();
                u64::try_from(elapsed).is_ok_and(|e| e <= constraint.duration)
            }),
            Err(error) => {
                tracing::warn!(constraint = %constraint.name, %error, "time constraint ignored");
                false
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn constraint(start: &str, duration: u64, timezone: &str) -> TimeConstraint {
        TimeConstraint {
            name: "c".into(),
            description: String::new(),
            start: start.into(),
            duration,
            timezone: timezone.into(),
        }
    }

    #[test]
    fn a_window_is_open_from_its_start_for_its_duration() {
        let nightly = [constraint("0 23 * * *", 3 * 3600, "")];
        assert!(is_open(&nightly, at("2026-03-10T23:00:00Z")));
        assert!(is_open(&nightly, at("2026-03-11T01:59:00Z")));
        assert!(is_open(&nightly, at("2026-03-11T02:00:00Z")));
        assert!(!is_open(&nightly, at("2026-03-11T02:00:01Z")));
        assert!(!is_open(&nightly, at("2026-03-10T22:59:59Z")));
        assert!(is_open(&[], at("2026-03-10T12:00:00Z")), "no constraint");
    }

    #[test]
    fn the_start_is_read_in_the_constraints_time_zone() {
        // 09:00 in Tokyo is 00:00 UTC.
        let tokyo = [constraint("0 9 * * *", 600, "Asia/Tokyo")];
        assert!(is_open(&tokyo, at("2026-03-10T00:05:00Z")));
        assert!(!is_open(&tokyo, at("2026-03-10T09:05:00Z")));
        // New York is UTC-5 in winter and UTC-4 in summer.
        let new_york = [constraint("30 8 * * *", 60, "America/New_York")];
        assert!(is_open(&new_york, at("2026-01-15T13:30:30Z")));
        assert!(is_open(&new_york, at("2026-07-15T12:30:30Z")));
        assert!(!is_open(&new_york, at("2026-07-15T13:30:30Z")));
    }

    #[test]
    fn weekdays_months_lists_ranges_and_steps_are_cron_s() {
        let office = [constraint("0 9 * * mon-fri", 8 * 3600, "")];
        assert!(is_open(&office, at("2026-03-13T16:00:00Z")), "a Friday");
        assert!(!is_open(&office, at("2026-03-14T10:00:00Z")), "a Saturday");
        let quarter = [constraint("*/15 * * * *", 60, "")];
        assert!(is_open(&quarter, at("2026-03-14T10:45:59Z")));
        assert!(!is_open(&quarter, at("2026-03-14T10:47:00Z")));
        let sunday = [constraint("0 0 * * 7", 3600, "")];
        assert!(is_open(&sunday, at("2026-03-15T00:30:00Z")));
        let january = [constraint("0 0 1 jan *", 86400, "")];
        assert!(is_open(&january, at("2026-01-01T12:00:00Z")));
        assert!(!is_open(&january, at("2026-02-01T12:00:00Z")));
    }

    #[test]
    fn bad_constraints_are_refused_with_the_reason() {
        for (c, says) in [
            (constraint("0 23 * *", 60, ""), "five fields"),
            (constraint("61 * * * *", 60, ""), "minute"),
            (constraint("0 0 * * 8", 60, ""), "day-of-week"),
            (constraint("0 0 * * *", 60, "Mars/Olympus"), "Timezone"),
            (constraint("0 0 * * *", MAX_DURATION + 1, ""), "duration"),
            (constraint("*/0 * * * *", 60, ""), "minute"),
        ] {
            let error = check(&c).unwrap_err();
            assert!(error.contains(says), "{c:?}: {error}");
        }
        assert!(check(&constraint("0 23 * * *", 10800, "Europe/Ljubljana")).is_ok());
    }
}
