//! Per-client token budgets: the `tpm` (tokens per minute) and `tpd` (tokens per UTC day) claims,
//! and `auth.default_tokens_per_day` for tokens without `tpd`.
//!
//! Counted in memory from the `totalTokenCount` of each answer (the same reports the usage
//! history gets), in fixed windows: the current minute and the current UTC day. The client-limit
//! layer checks them before a request goes upstream, so the check never reads the database. An
//! answer is only counted once it is over, so requests already under way when the budget runs out
//! still finish (and may overdraw it a little); the next request is refused until the window
//! turns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::auth::Client;

const MINUTE: i64 = 60;
const DAY: i64 = 86_400;
/// Clients remembered before windows of past days are pruned.
const PRUNE_AT: usize = 4096;

/// A client's budgets, from its token and the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Tokens per minute, if limited.
    pub per_minute: Option<u64>,
    /// Tokens per UTC day, if limited.
    pub per_day: Option<u64>,
}

impl BudgetLimits {
    /// The client's budgets: its `tpm` and `tpd` claims (`0` = no limit), `tpd` defaulting to
    /// `default_per_day` (`0` = none). `None` when it has neither.
    pub fn of(client: &Client, default_per_day: u64) -> Option<Self> {
        let per_minute = client.tpm.filter(|&n| n > 0);
        let per_day = client.tpd.unwrap_or(default_per_day);
        let per_day = (per_day > 0).then_some(per_day);
        (per_minute.is_some() || per_day.is_some()).then_some(Self {
            per_minute,
            per_day,
        })
    }
}

/// A request refused for its client's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetExceeded {
    /// `tpm` or `tpd`.
    pub budget: &'static str,
    /// The budget.
    pub limit: u64,
    /// Tokens used in the window.
    pub used: u64,
    /// When the window turns, seconds since the epoch.
    pub resets_at: i64,
    /// Seconds from now until then (at least 1).
    pub retry_after_seconds: u64,
}

impl std::fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.budget {
            "tpm" => "tokens-per-minute budget (tpm)",
            _ => "tokens-per-day budget (tpd)",
        };
        write!(
            f,
            "this client used {} of its {what} of {}; it resets at {} (in {} s)",
            self.used,
            self.limit,
            crate::time::utc_time(self.resets_at.max(0) as u64),
            self.retry_after_seconds
        )
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    minute: i64,
    minute_tokens: u64,
    day: i64,
    day_tokens: u64,
}

impl Spent {
    fn roll(&mut self, now: i64) {
        let (minute, day) = (now.div_euclid(MINUTE), now.div_euclid(DAY));
        if self.minute != minute {
            self.minute = minute;
            self.minute_tokens = 0;
        }
        if self.day != day {
            self.day = day;
            self.day_tokens = 0;
        }
    }
}

impl From<BudgetExceeded> for crate::error::GatewayError {
    fn from(b: BudgetExceeded) -> Self {
        crate::error::GatewayError::TokenBudget {
            message: b.to_string(),
            limit: b.limit,
            retry_after_seconds: b.retry_after_seconds,
        }
    }
}

/// Tokens spent per client in the current minute and day.
#[derive(Debug, Default)]
pub struct Budgets {
    spent: Mutex<HashMap<Arc<str>, Spent>>,
}

impl Budgets {
    /// Whether `client` may send another request at `now` (seconds since the epoch).
    pub fn check(
        &self,
        client: &str,
        limits: BudgetLimits,
        now: i64,
    ) -> Result<(), BudgetExceeded> {
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = spent.get_mut(client) else {
            return Ok(());
        };
        s.roll(now);
        let exceeded = |budget, limit, used, window: i64| {
            let resets_at = (now.div_euclid(window) + 1) * window;
            BudgetExceeded {
                budget,
                limit,
                used,
                resets_at,
                retry_after_seconds: (resets_at - now).max(1) as u64,
            }
        };
        if let Some(limit) = limits.per_day
            && s.day_tokens >= limit
        {
            return Err(exceeded("tpd", limit, s.day_tokens, DAY));
        }
        if let Some(limit) = limits.per_minute
            && s.minute_tokens >= limit
        {
            return Err(exceeded("tpm", limit, s.minute_tokens, MINUTE));
        }
        Ok(())
    }

    /// Counts `tokens` against `client` at `now`.
    pub fn spend(&self, client: &Arc<str>, tokens: u64, now: i64) {
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        if spent.len() >= PRUNE_AT && !spent.contains_key(client) {
            let today = now.div_euclid(DAY);
            spent.retain(|_, s| s.day == today);
        }
        let s = spent.entry(client.clone()).or_default();
        s.roll(now);
        s.minute_tokens += tokens;
        s.day_tokens += tokens;
    }

    /// Tokens `client` spent today (UTC) as of `now`.
    pub fn spent_today(&self, client: &str, now: i64) -> u64 {
        let spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        spent
            .get(client)
            .filter(|s| s.day == now.div_euclid(DAY))
            .map_or(0, |s| s.day_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_START: i64 = 20_000 * DAY;

    #[test]
    fn a_day_budget_refuses_until_midnight_utc() {
        let b = Budgets::default();
        let alice: Arc<str> = "alice".into();
        let limits = BudgetLimits {
            per_minute: None,
            per_day: Some(100),
        };
        let now = DAY_START + 10 * 3600;
        assert!(b.check("alice", limits, now).is_ok());
        b.spend(&alice, 60, now);
        assert!(b.check("alice", limits, now).is_ok());
        b.spend(&alice, 60, now);
        let e = b.check("alice", limits, now + 5).unwrap_err();
        assert_eq!(e.budget, "tpd");
        assert_eq!(e.used, 120);
        assert_eq!(e.resets_at, DAY_START + DAY);
        assert_eq!(e.retry_after_seconds, (14 * 3600 - 5) as u64);
        assert!(e.to_string().contains("tokens-per-day budget (tpd) of 100"));
        // Another client is not affected; the next day starts afresh.
        assert!(b.check("bob", limits, now).is_ok());
        assert!(b.check("alice", limits, DAY_START + DAY).is_ok());
    }

    #[test]
    fn a_minute_budget_turns_with_the_minute() {
        let b = Budgets::default();
        let c: Arc<str> = "c".into();
        let limits = BudgetLimits {
            per_minute: Some(10),
            per_day: Some(1000),
        };
        let now = DAY_START + 125;
        b.spend(&c, 10, now);
        let e = b.check("c", limits, now).unwrap_err();
        assert_eq!((e.budget, e.resets_at), ("tpm", DAY_START + 180));
        assert!(b.check("c", limits, DAY_START + 180).is_ok());
        assert_eq!(b.spent_today("c", DAY_START + 180), 10);
    }

    #[test]
    fn limits_come_from_claims_then_the_default() {
        let mut client = Client {
            id: "x".into(),
            role: crate::auth::Role::Client,
            models: crate::auth::ModelPolicy::Any,
            rpm: None,
            tpm: None,
            tpd: None,
            live_sessions: None,
            overrides: None,
        };
        assert_eq!(BudgetLimits::of(&client, 0), None);
        assert_eq!(
            BudgetLimits::of(&client, 500).and_then(|l| l.per_day),
            Some(500)
        );
        client.tpd = Some(0);
        assert_eq!(BudgetLimits::of(&client, 500), None);
        client.tpm = Some(50);
        assert_eq!(
            BudgetLimits::of(&client, 500),
            Some(BudgetLimits {
                per_minute: Some(50),
                per_day: None
            })
        );
    }
}
