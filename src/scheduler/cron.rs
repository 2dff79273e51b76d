//! Cron expressions in a time zone, and what happens when daylight saving moves the clock.
//!
//! Accepted forms: standard five fields (`min hour day-of-month month day-of-week`, Sunday = 0 or
//! 7) and the `cron` crate's six and seven fields (seconds first, optional year; Sunday = 1).
//! Slots are computed on the wall clock of the pipeline's zone, then placed in time:
//! - a wall time that happens twice (autumn, clocks go back) fires once, at its first occurrence;
//! - a wall time that does not exist (spring, clocks go forward) is read with the offset in force
//!   before the change, as iCalendar (RFC 5545) does: 02:30 on a day that jumps from 02:00 to
//!   03:00 fires at 03:30 summer time, so a nightly job is never silently lost.

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// How far a daylight-saving change can move a wall time; candidates are searched this far around.
const SHIFT_WINDOW: Duration = Duration::hours(3);
/// Bounds the search for one slot (a schedule that never fires again ends it sooner); a
/// every-second schedule has 21,600 candidates in the window around a daylight-saving change.
const MAX_CANDIDATES: usize = 50_000;

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    schedule: cron::Schedule,
    tz: Tz,
}

impl CronSchedule {
    /// Parses an expression and an IANA zone name; errors say what is wrong with which.
    pub fn parse(expression: &str, time_zone: &str) -> Result<Self, String> {
        let tz = Tz::from_str(time_zone).map_err(|_| {
            format!("unknown time zone `{time_zone}` (use an IANA name such as Europe/Lisbon)")
        })?;
        let crate_form = to_crate_syntax(expression)?;
        let schedule = cron::Schedule::from_str(&crate_form)
            .map_err(|e| format!("invalid cron expression `{expression}`: {e}"))?;
        Ok(Self { schedule, tz })
    }

    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local_after = after.with_timezone(&self.tz).naive_local();
        let start = Utc.from_utc_datetime(&(local_after - self.window(after)));
        let mut best: Option<DateTime<Utc>> = None;
        for wall in self.schedule.after(&start).take(MAX_CANDIDATES) {
            let wall = wall.naive_utc();
            if best.is_some_and(|b| wall > b.with_timezone(&self.tz).naive_local() + SHIFT_WINDOW) {
                break;
            }
            let at = place(self.tz, wall);
            if at > after && best.is_none_or(|b| at < b) {
                best = Some(at);
            }
        }
        best
    }

    /// Up to `n` slots in `[from, to]`, latest first (for catching up after downtime without
    /// walking every missed slot).
    pub fn latest_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        n: usize,
    ) -> Vec<DateTime<Utc>> {
        let local_to = to.with_timezone(&self.tz).naive_local();
        let local_from = from.with_timezone(&self.tz).naive_local();
        // Walking back yields wall times strictly before the start.
        let start = Utc.from_utc_datetime(&(local_to + self.window(to) + Duration::seconds(1)));
        let mut out: Vec<DateTime<Utc>> = Vec::new();
        for wall in self.schedule.after(&start).rev().take(MAX_CANDIDATES) {
            let wall = wall.naive_utc();
            if wall < local_from - self.window(from) || out.len() > n + 2 {
                break;
            }
            let at = place(self.tz, wall);
            if at >= from && at <= to && !out.contains(&at) {
                out.push(at);
            }
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.truncate(n);
        out
    }
}

impl CronSchedule {
    /// How far around `at` wall times may land out of order: [`SHIFT_WINDOW`] when the zone's
    /// offset changes nearby, nothing otherwise (so frequent schedules stay cheap).
    fn window(&self, at: DateTime<Utc>) -> Duration {
        let offset = |t: DateTime<Utc>| t.with_timezone(&self.tz).offset().fix();
        if offset(at - SHIFT_WINDOW) == offset(at + SHIFT_WINDOW) {
            Duration::zero()
        } else {
            SHIFT_WINDOW
        }
    }
}

/// Where a wall time of `tz` falls in time (the rules in the module docs).
fn place(tz: Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: the offset of the last wall time before it.
            let offset = (1..=96)
                .map(|k| wall - Duration::minutes(15 * k))
                .find_map(|w| tz.from_local_datetime(&w).earliest())
                .map(|t| t.offset().fix())
                .unwrap_or_else(|| Utc.fix());
            Utc.from_utc_datetime(&(wall - offset))
        }
    }
}

/// Turns a five-field expression into the crate's six-field form (seconds 0, Sunday = 1).
fn to_crate_syntax(expression: &str) -> Result<String, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    match fields.len() {
        5 => {
            let dow = translate_day_of_week(fields[4])
                .map_err(|e| format!("invalid cron expression `{expression}`: {e}"))?;
            Ok(format!("0 {} {} {} {} {dow}", fields[0], fields[1], fields[2], fields[3]))
        }
        6 | 7 => Ok(fields.join(" ")),
        n => Err(format!(
            "invalid cron expression `{expression}`: {n} fields; use 5 (min hour dom month dow) or 6-7 (sec min hour dom month dow [year])"
        )),
    }
}

/// Standard cron numbers days 0-7 with Sunday 0 and 7; the crate numbers them 1-7 from Sunday.
fn translate_day_of_week(field: &str) -> Result<String, String> {
    let day = |s: &str| -> Result<String, String> {
        if s.chars().all(|c| c.is_ascii_alphabetic()) || s == "*" || s == "?" {
            return Ok(s.to_string());
        }
        match s.parse::<u8>() {
            Ok(7) | Ok(0) => Ok("1".into()),
            Ok(n @ 1..=6) => Ok((n + 1).to_string()),
            _ => Err(format!("day of week `{s}` is not 0-7 or a day name")),
        }
    };
    let items: Result<Vec<String>, String> = field
        .split(',')
        .map(|item| {
            let (base, step) = match item.split_once('/') {
                Some((b, s)) => (b, Some(s)),
                None => (item, None),
            };
            let base = match base.split_once('-') {
                // A range ending on Sunday-as-7 wraps in the crate's numbering: 5-7 is Fri,Sat,Sun.
                Some((a, "7")) if a != "0" => format!("{}-7,1", day(a)?),
                Some((a, b)) => format!("{}-{}", day(a)?, day(b)?),
                None => day(base)?,
            };
            Ok(match step {
                Some(s) => format!("{base}/{s}"),
                None => base,
            })
        })
        .collect();
    Ok(items?.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn five_fields_use_standard_day_numbers() {
        // 2026-11-23 is a Monday.
        let monday = CronSchedule::parse("0 9 * * 1", "UTC").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            monday.next_after(utc(2026, 11, 21, 0, 0)),
            Some(utc(2026, 11, 23, 9, 0))
        );
        for sunday in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN"] {
            let s = CronSchedule::parse(sunday, "UTC").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                s.next_after(utc(2026, 11, 21, 0, 0)),
                Some(utc(2026, 11, 22, 9, 0)),
                "{sunday}"
            );
        }
        let weekend = CronSchedule::parse("0 9 * * 5-7", "UTC").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            weekend.next_after(utc(2026, 11, 22, 10, 0)),
            Some(utc(2026, 11, 27, 9, 0)),
            "Friday next"
        );
        let secs = CronSchedule::parse("*/15 * * * * *", "UTC").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            secs.next_after(utc(2026, 1, 1, 0, 0)),
            Some(utc(2026, 1, 1, 0, 0) + Duration::seconds(15))
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        assert!(CronSchedule::parse("0 9 * *", "UTC").is_err_and(|e| e.contains("4 fields")));
        assert!(CronSchedule::parse("0 25 * * *", "UTC").is_err_and(|e| e.contains("0 25 * * *")));
        assert!(CronSchedule::parse("0 9 * * 8", "UTC").is_err_and(|e| e.contains("day of week")));
        assert!(CronSchedule::parse("0 9 * * *", "Europe/Atlantis")
            .is_err_and(|e| e.contains("Europe/Atlantis")));
    }

    #[test]
    fn spring_forward_gap_fires_shifted_by_the_gap() {
        // Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
        let s =
            CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap_or_else(|e| panic!("{e}"));
        let day_before = s.next_after(utc(2026, 3, 27, 12, 0));
        assert_eq!(day_before, Some(utc(2026, 3, 28, 1, 30)), "02:30 CET");
        let gap_day = s.next_after(utc(2026, 3, 28, 1, 30));
        assert_eq!(gap_day, Some(utc(2026, 3, 29, 1, 30)), "03:30 CEST");
        assert_eq!(
            s.next_after(utc(2026, 3, 29, 1, 30)),
            Some(utc(2026, 3, 30, 0, 30)),
            "02:30 CEST"
        );
    }

    #[test]
    fn autumn_repeated_hour_fires_once() {
        // Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
        let s =
            CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap_or_else(|e| panic!("{e}"));
        let first = s.next_after(utc(2026, 10, 24, 12, 0));
        assert_eq!(
            first,
            Some(utc(2026, 10, 25, 0, 30)),
            "the first 02:30 (CEST)"
        );
        assert_eq!(
            s.next_after(utc(2026, 10, 25, 0, 30)),
            Some(utc(2026, 10, 26, 1, 30)),
            "not the second"
        );
        let between = s.latest_between(utc(2026, 10, 24, 12, 0), utc(2026, 10, 26, 12, 0), 10);
        assert_eq!(
            between,
            vec![utc(2026, 10, 26, 1, 30), utc(2026, 10, 25, 0, 30)]
        );
    }

    #[test]
    fn latest_between_walks_back_from_the_end() {
        let s = CronSchedule::parse("* * * * *", "UTC").unwrap_or_else(|e| panic!("{e}"));
        let got = s.latest_between(utc(2026, 1, 1, 0, 0), utc(2026, 1, 8, 0, 0), 3);
        assert_eq!(
            got,
            vec![
                utc(2026, 1, 8, 0, 0),
                utc(2026, 1, 7, 23, 59),
                utc(2026, 1, 7, 23, 58)
            ]
        );
        assert!(s
            .latest_between(
                utc(2026, 1, 1, 0, 0),
                utc(2026, 1, 1, 0, 0) - Duration::seconds(1),
                3
            )
            .is_empty());
    }
}
