//! Failed admin sign-ins, counted per client IP: after `admin.max_failed_sign_ins_per_minute`
//! in a [`WINDOW`], that address gets 429 (with `Retry-After`) without its credential being looked at,
//! until the window ends. Each refusal is logged (target `gem_proxy::audit`) with the address and
//! the reason, never the credential.
//!
//! Why not the client limiter's GCRA: that one counts every request, and an admin console makes
//! many good ones; only failures should cost here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The window failures are counted in, from the first one.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; expired windows are dropped first when it fills.
const MAX_TRACKED: usize = 10_000;

/// Failures per address.
#[derive(Debug, Default)]
pub struct SignInGuard {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl SignInGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Err(seconds)` while `ip` has used up its `max` failures: try again in that many seconds.
    /// `max` 0 means no limit.
    pub fn check(&self, ip: IpAddr, max: u32, now: Instant) -> Result<(), u64> {
        if max == 0 {
            return Ok(());
        }
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(&ip) {
            Some(&(count, start)) if count >= max && now < start + WINDOW => {
                Err((start + WINDOW - now).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed sign-in from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&ip) {
            failures.retain(|_, (_, start)| now < *start + WINDOW);
            if failures.len() >= MAX_TRACKED
                && let Some(any) = failures.keys().next().copied()
            {
                failures.remove(&any);
            }
        }
        let entry = failures.entry(ip).or_insert((0, now));
        if now >= entry.1 + WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let guard = SignInGuard::new();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        const MAX: u32 = 10;
        for _ in 0..MAX {
            assert_eq!(guard.check(a, MAX, Instant::now()), Ok(()));
            guard.failed(a, Instant::now());
        }
        assert_eq!(guard.check(a, 0, Instant::now()), Ok(()), "0: no limit");
        assert_eq!(guard.check(a, MAX, Instant::now()), Err(60));
        // Another address is not affected.
        assert_eq!(guard.check(b, MAX, Instant::now()), Ok(()));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(guard.check(a, MAX, Instant::now()), Err(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(guard.check(a, MAX, Instant::now()), Ok(()));
        // A new window starts with the next failure.
        guard.failed(a, Instant::now());
        assert_eq!(guard.check(a, MAX, Instant::now()), Ok(()));
    }
}
