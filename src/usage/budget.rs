//! Per-client token budgets: the `tpm` (tokens per minute) and `tpd` (tokens per UTC day) claims,
//! and `auth.default_tokens_per_day` for tokens without `tpd`.
//!
//! Counted in memory from the `totalTokenCount` of each answer (the same reports the usage
//! history gets), in fixed windows: the current minute and the current UTC day. The client-limit
//! layer checks them before a request goes upstream, so the check never reads the database. An
//! answer is only counted once it is over, so requests already under way when the budget runs out
//! still finish (and may overdraw it a little); the next request is refused until the window
//! turns.
//!
//! With `state.backend: redis` the budgets are shared by the replicas: in the background, every
//! `state.redis.sync_interval_ms`, each replica writes its own tokens of the current minute and
//! day per client into Redis and reads the others' back ([`Budgets::own`],
//! [`Budgets::set_others`]); a request is decided from its own tokens plus the others' as last
//! read, never waiting for Redis. A client new to a replica is looked up from its first request
//! on. Overdraft across replicas: what the others spent since the last read (about one sync
//! interval of the client's traffic), on top of the answers under way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Other replicas' tokens in this minute and day, as last read from Redis.
    others_minute: u64,
    others_day: u64,
}

impl Spent {
    fn roll(&mut self, now: i64) {
        let (minute, day) = (now.div_euclid(MINUTE), now.div_euclid(DAY));
        if self.minute != minute {
            self.minute = minute;
            self.minute_tokens = 0;
            self.others_minute = 0;
        }
        if self.day != day {
            self.day = day;
            self.day_tokens = 0;
            self.others_day = 0;
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
    /// Shared with other replicas: a client is remembered from its first check, so its tokens
    /// elsewhere are read.
    shared: AtomicBool,
}

/// One client's own tokens in a minute and a day (to share).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnSpent {
    pub(crate) client: Arc<str>,
    pub(crate) minute: i64,
    pub(crate) minute_tokens: u64,
    pub(crate) day: i64,
    pub(crate) day_tokens: u64,
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
        if !spent.contains_key(client) && self.shared.load(Ordering::Relaxed) {
            Self::make_room(&mut spent, now);
            spent.insert(Arc::from(client), Spent::default());
        }
        let Some(s) = spent.get_mut(client) else {
            return Ok(());
        };
        s.roll(now);
        let (day_tokens, minute_tokens) = (
            s.day_tokens + s.others_day,
            s.minute_tokens + s.others_minute,
        );
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
            && day_tokens >= limit
        {
            return Err(exceeded("tpd", limit, day_tokens, DAY));
        }
        if let Some(limit) = limits.per_minute
            && minute_tokens >= limit
        {
            return Err(exceeded("tpm", limit, minute_tokens, MINUTE));
        }
        Ok(())
    }

    fn make_room(spent: &mut HashMap<Arc<str>, Spent>, now: i64) {
        if spent.len() >= PRUNE_AT {
            let today = now.div_euclid(DAY);
            spent.retain(|_, s| s.day == today);
        }
    }

    /// Shares the budgets with other replicas from now on (see the module docs).
    pub(crate) fn share(&self) {
        self.shared.store(true, Ordering::Relaxed);
    }

    /// Every client's own tokens of the current minute and day at `now`.
    pub(crate) fn own(&self, now: i64) -> Vec<OwnSpent> {
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let today = now.div_euclid(DAY);
        spent.retain(|_, s| s.day == today);
        spent
            .iter_mut()
            .map(|(client, s)| {
                s.roll(now);
                OwnSpent {
                    client: client.clone(),
                    minute: s.minute,
                    minute_tokens: s.minute_tokens,
                    day: s.day,
                    day_tokens: s.day_tokens,
                }
            })
            .collect()
    }

    /// The other replicas' tokens of `client` in `minute` and `day` (as [`Budgets::own`] gave
    /// them); ignored for a window that has turned since.
    pub(crate) fn set_others(
        &self,
        client: &str,
        minute: i64,
        minute_tokens: u64,
        day: i64,
        day_tokens: u64,
    ) {
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = spent.get_mut(client) {
            if s.minute == minute {
                s.others_minute = minute_tokens;
            }
            if s.day == day {
                s.others_day = day_tokens;
            }
        }
    }

    /// Counts `tokens` against `client` at `now`.
    pub fn spend(&self, client: &Arc<str>, tokens: u64, now: i64) {
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        if !spent.contains_key(client) {
            Self::make_room(&mut spent, now);
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
            .map_or(0, |s| s.day_tokens + s.others_day)
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
    fn other_replicas_tokens_count_until_their_window_turns() {
        let b = Budgets::default();
        b.share();
        let limits = BudgetLimits {
            per_minute: Some(100),
            per_day: Some(1000),
        };
        let now = DAY_START + 30;
        // A client new here is remembered from its first check, so its tokens elsewhere are read.
        assert!(b.check("alice", limits, now).is_ok());
        let own = b.own(now);
        assert_eq!(own.len(), 1);
        assert_eq!((own[0].minute_tokens, own[0].day_tokens), (0, 0));
        b.set_others("alice", own[0].minute, 100, own[0].day, 400);
        let e = b.check("alice", limits, now).unwrap_err();
        assert_eq!((e.budget, e.used), ("tpm", 100));
        // The next minute: the others' minute no longer counts, their day still does.
        let later = DAY_START + 60;
        assert!(b.check("alice", limits, later).is_ok());
        b.spend(&"alice".into(), 600, later);
        let e = b.check("alice", limits, later).unwrap_err();
        assert_eq!((e.budget, e.used), ("tpd", 1000));
        // A read for a minute that has turned is not applied to the new one.
        b.set_others("alice", own[0].minute, 100, own[0].day, 0);
        assert_eq!(b.spent_today("alice", later), 600);
        assert!(
            b.check(
                "alice",
                BudgetLimits {
                    per_minute: Some(700),
                    per_day: None
                },
                later
            )
            .is_ok()
        );
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
            token_id: None,
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
