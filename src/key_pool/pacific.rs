//! Midnight in Pacific time, when Google resets daily quotas.
//!
//! US Pacific time is UTC−8 (PST), or UTC−7 (PDT) from 02:00 local on the second Sunday of March
//! to 02:00 local on the first Sunday of November. A few lines of calendar arithmetic instead of a
//! time-zone database.

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;

/// Seconds since the Unix epoch of the first Pacific midnight strictly after `now` (also seconds
/// since the epoch).
pub fn next_midnight(now: i64) -> i64 {
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
    let (year, _, _) = civil_from_days(t.div_euclid(DAY));
    // Starts 02:00 PST (10:00 UTC) on the second Sunday of March,
    // ends 02:00 PDT (09:00 UTC) on the first Sunday of November.
    let start = nth_sunday(year, 3, 2) * DAY + 10 * HOUR;
    let end = nth_sunday(year, 11, 1) * DAY + 9 * HOUR;
    (start..end).contains(&t)
}

/// Days since the epoch of the `n`th Sunday of `month`.
fn nth_sunday(year: i64, month: u32, n: i64) -> i64 {
    let first = days_from_civil(year, month, 1);
    // 1970-01-01 was a Thursday: weekday 0 = Sunday.
    let weekday = (first + 4).rem_euclid(7);
    first + (7 - weekday) % 7 + 7 * (n - 1)
}

/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's `civil_from_days`.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * DAY + h * HOUR + mi * 60
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1000, 0, 1, 20_000, 20_600] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }

    #[test]
    fn second_sunday_of_march_and_first_of_november() {
        assert_eq!(civil_from_days(nth_sunday(2026, 3, 2)), (2026, 3, 8));
        assert_eq!(civil_from_days(nth_sunday(2026, 11, 1)), (2026, 11, 1));
        assert_eq!(civil_from_days(nth_sunday(2025, 3, 2)), (2025, 3, 9));
        assert_eq!(civil_from_days(nth_sunday(2025, 11, 1)), (2025, 11, 2));
    }

    #[test]
    fn next_midnight_in_standard_and_daylight_time() {
        // Winter, PST: 12:00 UTC is 04:00 local; next midnight is 08:00 UTC the next day.
        assert_eq!(
            next_midnight(utc(2026, 11, 26, 12, 0)),
            utc(2026, 11, 27, 8, 0)
        );
        // Just before midnight PST.
        assert_eq!(
            next_midnight(utc(2026, 11, 27, 7, 59)),
            utc(2026, 11, 27, 8, 0)
        );
        // Exactly at midnight: the next one, a day later.
        assert_eq!(
            next_midnight(utc(2026, 11, 27, 8, 0)),
            utc(2026, 11, 28, 8, 0)
        );
        // Summer, PDT: 06:00 UTC is 23:00 local the day before; midnight is 07:00 UTC.
        assert_eq!(next_midnight(utc(2026, 7, 1, 6, 0)), utc(2026, 7, 1, 7, 0));
    }

    #[test]
    fn across_the_clock_changes() {
        // 2026-03-08 01:00 PST (09:00 UTC): DST starts at 02:00; the next midnight is in PDT.
        assert_eq!(next_midnight(utc(2026, 3, 8, 9, 0)), utc(2026, 3, 9, 7, 0));
        // 2026-11-01 01:30 PDT (08:30 UTC): DST ends at 02:00; the next midnight is in PST.
        assert_eq!(
            next_midnight(utc(2026, 11, 1, 8, 30)),
            utc(2026, 11, 2, 8, 0)
        );
    }
}
