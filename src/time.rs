//! Wall-clock helpers on the `time` crate: RFC 3339 UTC strings for people (tokens, certificates,
//! the config history, `/errors`) and midnight in Pacific time, when Google resets daily quotas.
//!
//! US Pacific time is UTC−8 (PST), or UTC−7 (PDT) from 02:00 local on the second Sunday of March
//! to 02:00 local on the first Sunday of November: a few lines on `time`'s calendar instead of a
//! time-zone database.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::time::{Date, Month, OffsetDateTime, PrimitiveDateTime};

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Seconds since the epoch as an RFC 3339 UTC time (`2026-12-24T18:00:00Z`), for people. Times
/// past the year 9999 show as its last second.
pub fn utc_time(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or_else(|| PrimitiveDateTime::MAX.assume_utc());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Now as RFC 3339 UTC, to the second.
pub fn now_rfc3339() -> String {
    utc_time(now_unix().max(0) as u64)
}

/// Time from now until the next midnight in Pacific time (Google's daily quota reset); at least
/// a second.
pub fn until_pacific_midnight() -> Duration {
    let now = now_unix();
    Duration::from_secs((next_pacific_midnight(now) - now).max(1) as u64)
}

/// Seconds since the Unix epoch of the first Pacific midnight strictly after `now` (also seconds
/// since the epoch).
pub fn next_pacific_midnight(now: i64) -> i64 {
    let local = now - offset_hours(now) * HOUR;
    let next_local_midnight = (local.div_euclid(DAY) + 1) * DAY;
    // Daylight time applies at that midnight if the UTC instant it would be under PDT is in DST.
    let as_pdt = next_local_midnight + 7 * HOUR;
    if is_dst(as_pdt) {
        as_pdt
    } else {
        next_local_midnight + 8 * HOUR
    }
}

/// Hours behind UTC at `t`: 7 in daylight time, 8 otherwise.
fn offset_hours(t: i64) -> i64 {
    if is_dst(t) { 7 } else { 8 }
}

fn is_dst(t: i64) -> bool {
    let Ok(year) = OffsetDateTime::from_unix_timestamp(t).map(OffsetDateTime::year) else {
        return false;
    };
    // Starts 02:00 PST (10:00 UTC) on the second Sunday of March,
    // ends 02:00 PDT (09:00 UTC) on the first Sunday of November.
    let (Some(start), Some(end)) = (
        nth_sunday(year, Month::March, 2),
        nth_sunday(year, Month::November, 1),
    ) else {
        return false;
    };
    let start = unix_midnight(start) + 10 * HOUR;
    let end = unix_midnight(end) + 9 * HOUR;
    (start..end).contains(&t)
}

/// The `n`th Sunday of `month`.
fn nth_sunday(year: i32, month: Month, n: u8) -> Option<Date> {
    let first = Date::from_calendar_date(year, month, 1).ok()?;
    let to_sunday = (7 - first.weekday().number_days_from_sunday()) % 7;
    Date::from_calendar_date(year, month, 1 + to_sunday + 7 * (n - 1)).ok()
}

fn unix_midnight(date: Date) -> i64 {
    date.midnight().assume_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, mo: u8, d: u8, h: u8, mi: u8) -> i64 {
        Date::from_calendar_date(y, Month::try_from(mo).unwrap(), d)
            .unwrap()
            .with_hms(h, mi, 0)
            .unwrap()
            .assume_utc()
            .unix_timestamp()
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_time(1_800_000_000), "2027-01-15T08:00:00Z");
        assert_eq!(utc_time(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(utc_time(u64::MAX), "9999-12-31T23:59:59Z");
        assert!(now_rfc3339().ends_with('Z'));
    }

    #[test]
    fn the_next_reset_is_at_most_a_day_away() {
        let left = until_pacific_midnight();
        assert!(left >= Duration::from_secs(1), "{left:?}");
        assert!(left <= Duration::from_secs(25 * 3600), "{left:?}");
    }

    #[test]
    fn second_sunday_of_march_and_first_of_november() {
        let day = |y, m, n| {
            let d = nth_sunday(y, m, n).unwrap();
            (d.year(), u8::from(d.month()), d.day())
        };
        assert_eq!(day(2026, Month::March, 2), (2026, 3, 8));
        assert_eq!(day(2026, Month::November, 1), (2026, 11, 1));
        assert_eq!(day(2025, Month::March, 2), (2025, 3, 9));
        assert_eq!(day(2025, Month::November, 1), (2025, 11, 2));
    }

    #[test]
    fn next_midnight_in_standard_and_daylight_time() {
        // Winter, PST: 12:00 UTC is 04:00 local; next midnight is 08:00 UTC the next day.
        assert_eq!(
            next_pacific_midnight(utc(2026, 11, 26, 12, 0)),
            utc(2026, 11, 27, 8, 0)
        );
        // Just before midnight PST.
        assert_eq!(
            next_pacific_midnight(utc(2026, 11, 27, 7, 59)),
            utc(2026, 11, 27, 8, 0)
        );
        // Exactly at midnight: the next one, a day later.
        assert_eq!(
            next_pacific_midnight(utc(2026, 11, 27, 8, 0)),
            utc(2026, 11, 28, 8, 0)
        );
        // Summer, PDT: 06:00 UTC is 23:00 local the day before; midnight is 07:00 UTC.
        assert_eq!(
            next_pacific_midnight(utc(2026, 7, 1, 6, 0)),
            utc(2026, 7, 1, 7, 0)
        );
    }

    #[test]
    fn across_the_clock_changes() {
        // 2026-03-08 01:00 PST (09:00 UTC): DST starts at 02:00; the next midnight is in PDT.
        assert_eq!(
            next_pacific_midnight(utc(2026, 3, 8, 9, 0)),
            utc(2026, 3, 9, 7, 0)
        );
        // 2026-11-01 01:30 PDT (08:30 UTC): DST ends at 02:00; the next midnight is in PST.
        assert_eq!(
            next_pacific_midnight(utc(2026, 11, 1, 8, 30)),
            utc(2026, 11, 2, 8, 0)
        );
    }
}
