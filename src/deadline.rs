//! Clock arithmetic that cannot panic.
//!
//! `Instant + Duration` panics when the sum does not fit the clock, and some durations come from
//! outside (a `retryDelay` in Google's answer, a time-out in the config, a token count times an
//! interval). Every deadline computed from such a duration goes through [`after`].

use std::time::Duration;

use tokio::time::Instant;

/// Thirty years: what "never" means for a deadline (tokio's own far future).
pub const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `now + d`, or `now` + [`FAR_FUTURE`] when `d` is longer than that (or the sum would overflow).
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(FAR_FUTURE))
        .unwrap_or_else(|| now.checked_add(FAR_FUTURE).unwrap_or(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_duration_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(after(now, Duration::from_secs(u64::MAX)), now + FAR_FUTURE);
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
    }
}
