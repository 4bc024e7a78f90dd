//! Leasing arithmetic: how one replica spends its share of a key's quota without asking Redis
//! on the request path.
//!
//! For each key, model and limit a replica holds a [`Lease`]: a few *units* (requests) that Redis
//! granted it. A request spends a unit locally. In the background, every `sync_interval_ms` (or at
//! once when a lease runs low), [`Lease::plan`] says what to ask for: a block sized to the
//! replica's recent traffic, the units that expired unused (given back), and the units spent
//! without a lease (charged). [`Lease::answered`] books Redis's answer; [`Lease::unanswered`]
//! puts everything back when Redis could not be reached.
//!
//! Units spent without a lease:
//! - *cold start*: requests that find the lease empty — after a quiet spell, before Redis ever
//!   answered, or when a burst outran the top-ups — unless Redis said the quota is out. An empty
//!   lease runs ahead by its *cold block*:
//!   this replica's share of the quota Redis last said was free (`free / replicas`, refilled at
//!   the limit's pace since; the whole limit before Redis ever answered), at least one request and
//!   at most `max_block`. The spell ends with Redis's next answer; the syncs charge what it
//!   spent, and until they have, those units count against the next spell's block, so no more
//!   than one block is ever spent and not yet charged. A quiet lease holds
//!   nothing, so idle keys and clients cost Redis nothing, and the first burst after a pause (or
//!   one faster than the top-ups) is still served at once;
//! - *fallback share*: while Redis is unreachable, `limit / replicas` per window (the replicas
//!   counted while connected; 1 if never connected), on top of what the leases still hold.
//!
//! Bound: in any window a key and model carries at most `limit + replicas × 2 × max_block`
//! requests while Redis is reachable, where `max_block = max(1, limit / (2 × replicas))`: a
//! replica holds at most one block, which it may spend up to [`LEASE_TTL_SYNCS`] sync intervals
//! after Redis counted it, plus one cold block (at most `max_block`, always charged, so it only
//! runs ahead of Redis until the next sync). With `limit ≥ 2 × replicas` that is at most twice
//! the limit, and only when every replica runs ahead at once into a quota that the others
//! spent meanwhile. While Redis is gone, each replica adds at most its fallback share per
//! window; what it spent is charged when Redis is back.

use std::time::Duration;

use tokio::time::Instant;

use crate::key_pool::Admission;

/// Units expire unused after this many sync intervals (then they are given back).
pub const LEASE_TTL_SYNCS: u32 = 10;
/// Shortest lease lifetime, whatever the sync interval.
const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
/// Smoothed requests per sync interval below which a lease holds nothing.
const QUIET_DEMAND: f64 = 0.25;

/// Which window a lease counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Requests per minute (GCRA in Redis, a burst of the whole limit).
    Minute,
    /// Requests per Pacific-time day; the number identifies the day.
    Day(i64),
}

/// How the link to Redis is, for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Redis answered the last sync.
    pub connected: bool,
    /// Replicas sharing the quota (last seen while connected; at least 1).
    pub replicas: u32,
    /// `state.redis.sync_interval_ms`.
    pub sync_interval: Duration,
}

impl Link {
    /// How long a granted unit may be held.
    pub fn lease_ttl(&self) -> Duration {
        (self.sync_interval * LEASE_TTL_SYNCS).max(MIN_LEASE_TTL)
    }
}

/// What one sync asks Redis for one lease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    /// Units wanted.
    pub want: u32,
    /// Units given back (expired unused).
    pub give_back: u32,
    /// Units spent without a lease, to be counted.
    pub charge: u32,
}

impl Ask {
    /// Whether there is anything to tell Redis.
    pub fn is_empty(&self) -> bool {
        *self == Ask::default()
    }
}

/// One replica's lease on one key, model and window.
#[derive(Debug, Clone)]
pub struct Lease {
    window: Window,
    limit: u32,
    /// Units this replica may spend.
    units: u32,
    /// When they expire.
    expires: Instant,
    /// Units spent since the last plan (the demand).
    used: u32,
    /// Smoothed demand per sync interval.
    demand: f64,
    /// When [`Lease::plan`] last ran.
    last_plan: Instant,
    /// Units spent without a lease, not yet charged.
    debt: u32,
    /// Expired units not yet given back.
    owed_back: u32,
    /// The cold block of the spell under way (0: none), set by its first request; the spell
    /// ends with the next answer from Redis.
    ahead: u32,
    /// Units spent in that spell.
    spent_ahead: u32,
    /// Units Redis said were free after its last answer, and when.
    free: Option<(u32, Instant)>,
    /// Redis said no unit is free before then.
    exhausted_until: Option<Instant>,
    /// The fallback share's GCRA (minute) or count (day) while Redis is gone.
    fallback_tat: Option<Instant>,
    fallback_count: u32,
}

impl Lease {
    /// A lease nothing was granted on yet.
    pub fn new(window: Window, limit: u32, now: Instant) -> Self {
        Self {
            window,
            limit: limit.max(1),
            units: 0,
            expires: now,
            used: 0,
            demand: 0.0,
            last_plan: now,
            debt: 0,
            owed_back: 0,
            ahead: 0,
            spent_ahead: 0,
            free: None,
            exhausted_until: None,
            fallback_tat: None,
            fallback_count: 0,
        }
    }

    /// Its limit per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window it counts in.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Units held now.
    pub fn units(&self, now: Instant) -> u32 {
        if self.expires > now { self.units } else { 0 }
    }

    /// Follows a reload that changed the limit, or a new Pacific day.
    pub fn update(&mut self, window: Window, limit: u32) {
        if window != self.window {
            // A new day: the old day's units and debts no longer matter.
            *self = Self::new(window, limit, self.expires);
            return;
        }
        self.limit = limit.max(1);
    }

    /// Whether one request may go ahead now (nothing is spent).
    pub fn check(&self, now: Instant, link: Link) -> Admission {
        self.decide(now, link)
            .map_or_else(Admission::NotUntil, |_| Admission::Yes)
    }

    /// Spends one unit if a request may go ahead now.
    pub fn take(&mut self, now: Instant, link: Link) -> Admission {
        match self.decide(now, link) {
            Ok(Spend::Unit) => self.units -= 1,
            Ok(Spend::Cold(block)) => {
                self.ahead = block;
                self.spent_ahead += 1;
                self.debt += 1;
            }
            Ok(Spend::Fallback(tat)) => {
                self.fallback_tat = tat;
                self.fallback_count += 1;
                self.debt += 1;
            }
            Err(t) => {
                // Refused attempts are demand too: the next block is sized for them.
                self.used += 1;
                return Admission::NotUntil(t);
            }
        }
        self.used += 1;
        Admission::Yes
    }

    /// Whether the next request would find the lease empty (then a sync should run at once).
    pub fn runs_low(&self, now: Instant) -> bool {
        self.units(now) <= self.target(1).max(1) / 2
    }

    fn decide(&self, now: Instant, link: Link) -> Result<Spend, Instant> {
        if self.units(now) > 0 {
            return Ok(Spend::Unit);
        }
        // Redis said the quota is out: that holds whether or not it can be asked now.
        if let Some(t) = self.exhausted_until.filter(|t| *t > now) {
            return Err(t);
        }
        if link.connected {
            // Empty (quiet until now, never granted yet, or outrun by a burst) with nothing
            // uncounted: run ahead by the cold block, counted at the next syncs.
            // What is spent but not yet charged counts against the block too, so a new spell
            // may start before the last one's units are charged without more than one block
            // ever being uncounted (a burst that outruns a small first grant is not refused).
            let block = if self.ahead > 0 {
                self.ahead
            } else {
                self.cold_block(now, link.replicas)
            };
            if self.spent_ahead < block && self.debt < block {
                return Ok(Spend::Cold(block));
            }
            return Err(now + link.sync_interval);
        }
        let share = (self.limit / link.replicas.max(1)).max(1);
        match self.window {
            Window::Minute => gcra(self.fallback_tat, now, share).map(|t| Spend::Fallback(Some(t))),
            Window::Day(_) if self.fallback_count < share => Ok(Spend::Fallback(self.fallback_tat)),
            // The day's share is spent: the caller waits for the day to turn.
            Window::Day(_) => Err(now + MINUTE),
        }
    }

    /// How far a cold lease may run ahead of Redis: this replica's share of what Redis last said
    /// was free (refilled since at the limit's pace; the whole limit before any answer), within
    /// `1..=max_block`.
    pub fn cold_block(&self, now: Instant, replicas: u32) -> u32 {
        let free = match (self.free, self.window) {
            (None, _) => self.limit,
            (Some((free, _)), Window::Day(_)) => free,
            (Some((free, at)), Window::Minute) => {
                let refilled = now.saturating_duration_since(at).as_secs_f64()
                    / MINUTE.as_secs_f64()
                    * f64::from(self.limit);
                (f64::from(free) + refilled).min(f64::from(self.limit)) as u32
            }
        };
        (free / replicas.max(1)).clamp(1, self.max_block(replicas))
    }

    /// No traffic to speak of lately: nothing is held for it.
    fn is_quiet(&self) -> bool {
        self.demand < QUIET_DEMAND && self.used == 0
    }

    /// Nothing held, owed or wanted: the lease can be forgotten.
    pub fn is_idle(&self, now: Instant) -> bool {
        self.units(now) == 0 && self.debt == 0 && self.owed_back == 0 && self.is_quiet()
    }

    /// The largest block one replica holds.
    pub fn max_block(&self, replicas: u32) -> u32 {
        (self.limit / (2 * replicas.max(1))).max(1)
    }

    fn target(&self, replicas: u32) -> u32 {
        if self.is_quiet() {
            return 0;
        }
        // Four intervals' worth: a top-up is asked for at half, so two intervals of traffic
        // can pass (a busy or stalled event loop) before the lease runs dry.
        ((4.0 * self.demand).round() as u32 + 1).min(self.max_block(replicas))
    }

    /// What to tell Redis at this sync.
    pub fn plan(&mut self, now: Instant, link: Link) -> Ask {
        if self.units > 0 && self.expires <= now {
            self.owed_back += self.units;
            self.units = 0;
        }
        // Syncs come early when a lease runs low: count the demand per sync interval of time,
        // not per sync.
        let elapsed = now.saturating_duration_since(self.last_plan);
        self.last_plan = now;
        let per_interval = if elapsed.is_zero() {
            f64::from(self.used)
        } else {
            f64::from(self.used) * link.sync_interval.as_secs_f64()
                / elapsed
                    .as_secs_f64()
                    .max(link.sync_interval.as_secs_f64() / 10.0)
        };
        self.demand = 0.5 * self.demand + 0.5 * per_interval;
        self.used = 0;
        let target = self.target(link.replicas);
        // A replica that got quieter gives back what it no longer needs (with some slack, so a
        // noisy estimate does not return what the next burst takes).
        if self.units > 2 * target {
            self.owed_back += self.units - target;
            self.units = target;
        }
        let exhausted = self.exhausted_until.is_some_and(|t| t > now);
        let want = if exhausted {
            0
        } else {
            target.saturating_sub(self.units)
        };
        // Nothing spent long ago matters more than one window's worth.
        let charge = self.debt.min(self.limit);
        let ask = Ask {
            want,
            give_back: self.owed_back,
            charge,
        };
        self.debt = 0;
        self.owed_back = 0;
        ask
    }

    /// Books Redis's answer: `granted` units, the units still `free` after the grant, and — when
    /// the quota is out after the grant — when its next unit frees.
    pub fn answered(
        &mut self,
        granted: u32,
        free: u32,
        free_at: Option<Instant>,
        now: Instant,
        link: Link,
    ) {
        // A cold spell ends here: what it spent is charged (by this sync or the next), and the
        // next one waits until that is done.
        self.ahead = 0;
        self.spent_ahead = 0;
        self.free = Some((free, now));
        self.fallback_tat = None;
        self.fallback_count = 0;
        if granted > 0 {
            self.units += granted;
            self.expires = now + link.lease_ttl();
        }
        self.exhausted_until = free_at.filter(|t| *t > now);
    }

    /// Redis did not answer: keep what must still be told.
    pub fn unanswered(&mut self, ask: Ask) {
        self.debt += ask.charge;
        self.owed_back += ask.give_back;
    }
}

enum Spend {
    Unit,
    /// Ahead of Redis, within the cold block.
    Cold(u32),
    Fallback(Option<Instant>),
}

/// GCRA for `limit` per minute with a burst of the whole limit: the new theoretical arrival time
/// after one request now, or when one would be allowed.
fn gcra(tat: Option<Instant>, now: Instant, limit: u32) -> Result<Instant, Instant> {
    let interval = MINUTE / limit.max(1);
    let new_tat = tat.map_or(now, |t| t.max(now)) + interval;
    match new_tat.checked_sub(MINUTE) {
        Some(allowed_at) if allowed_at > now => Err(allowed_at),
        _ => Ok(new_tat),
    }
}

/// Tokens per minute seen by one replica: its own tokens at once, everybody's at each sync.
#[derive(Debug, Clone, Default)]
pub struct TokenMeter {
    /// GCRA theoretical arrival time of the shared token budget, as last known plus own tokens.
    tat: Option<Instant>,
    /// Own tokens not yet told to Redis.
    unreported: u64,
}

impl TokenMeter {
    /// Whether the budget is not overdrawn (tokens are counted after the answer).
    pub fn check(&self, now: Instant) -> Admission {
        match self.tat {
            Some(t) if t.checked_sub(MINUTE).is_some_and(|a| a > now) => {
                Admission::NotUntil(t - MINUTE)
            }
            _ => Admission::Yes,
        }
    }

    /// Counts an answer's tokens. Without Redis, the other replicas' tokens are unknown: each
    /// token then weighs `replicas` tokens, so the replicas together stay within the budget.
    pub fn add(&mut self, tokens: u64, tpm: u32, now: Instant, link: Link) {
        self.unreported += tokens;
        let weight = if link.connected {
            1
        } else {
            u64::from(link.replicas.max(1))
        };
        let spent = tokens.saturating_mul(weight);
        let per_token = MINUTE / tpm.max(1);
        let cost = per_token.saturating_mul(u32::try_from(spent).unwrap_or(u32::MAX));
        self.tat = Some(self.tat.map_or(now, |t| t.max(now)) + cost);
    }

    /// Tokens to report at this sync (handed back by [`TokenMeter::unreported`] on failure).
    pub fn report(&mut self) -> u64 {
        std::mem::take(&mut self.unreported)
    }

    /// Redis did not take the report.
    pub fn unreported(&mut self, tokens: u64) {
        self.unreported += tokens;
    }

    /// Redis's view: its budget is `ahead` past now (tokens reported since are added again).
    pub fn answered(&mut self, ahead: Duration, tpm: u32, now: Instant) {
        let per_token = MINUTE / tpm.max(1);
        let pending = per_token.saturating_mul(u32::try_from(self.unreported).unwrap_or(u32::MAX));
        self.tat = Some(now + ahead + pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNC: Duration = Duration::from_millis(200);

    fn link(connected: bool, replicas: u32) -> Link {
        Link {
            connected,
            replicas,
            sync_interval: SYNC,
        }
    }

    /// Redis's side of a minute lease, the way the grant script computes it: GCRA over all
    /// replicas' grants.
    struct Shared {
        tat: Instant,
        limit: u32,
    }

    impl Shared {
        fn new(limit: u32) -> Self {
            Self {
                tat: Instant::now(),
                limit,
            }
        }
        fn grant(&mut self, ask: Ask, now: Instant) -> (u32, u32, Option<Instant>) {
            let iv = MINUTE / self.limit;
            let mut tat = self.tat.max(now);
            tat = tat.checked_sub(iv * ask.give_back).unwrap_or(now).max(now);
            tat += iv * ask.charge;
            let room =
                ((now + MINUTE).saturating_duration_since(tat).as_micros() / iv.as_micros()) as u32;
            let g = ask.want.min(room);
            tat += iv * g;
            self.tat = tat;
            let free =
                ((now + MINUTE).saturating_duration_since(tat).as_micros() / iv.as_micros()) as u32;
            let next = (tat + iv).checked_sub(MINUTE).filter(|t| *t > now);
            (g, free, next)
        }
    }

    fn sync(lease: &mut Lease, shared: &mut Shared, link: Link) -> Ask {
        let now = Instant::now();
        let ask = lease.plan(now, link);
        let (g, free, next) = shared.grant(ask, now);
        lease.answered(g, free, next, now, link);
        ask
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_that_outruns_a_small_first_grant_is_not_refused() {
        // A limit far above the traffic (a client's `auth.rate_limit_per_minute`): the first
        // request's early sync is answered with a small block while the burst goes on.
        let l1 = link(true, 1);
        let mut shared = Shared::new(1_000_000);
        let mut lease = Lease::new(Window::Minute, 1_000_000, Instant::now());
        let now = Instant::now();
        assert_eq!(lease.take(now, l1), Admission::Yes);
        // The answer ends the cold spell; its unit is charged with the next sync.
        let (g, free, next) = shared.grant(
            Ask {
                want: 2,
                give_back: 0,
                charge: 0,
            },
            now,
        );
        lease.answered(g, free, next, now, l1);
        for i in 0..64 {
            assert_eq!(
                lease.take(now, l1),
                Admission::Yes,
                "request {i} of the burst"
            );
        }
        // Never more than one block uncounted: the next sync charges everything spent ahead.
        let ask = sync(&mut lease, &mut shared, l1);
        assert_eq!(ask.charge, 1 + 64 - 2);
        assert!(ask.charge <= lease.max_block(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_lease_runs_ahead_by_its_cold_block_then_waits_for_a_lease() {
        let l1 = link(true, 3);
        let mut lease = Lease::new(Window::Minute, 30, Instant::now());
        let now = Instant::now();
        // Before any answer: a third of the limit, capped at the largest block (30 / 6 = 5).
        assert_eq!(lease.cold_block(now, 3), 5);
        for i in 0..5 {
            assert_eq!(lease.take(now, l1), Admission::Yes, "cold start {i}");
        }
        // The next one waits for a grant (at most one sync away).
        assert_eq!(lease.take(now, l1), Admission::NotUntil(now + SYNC));
        let mut shared = Shared::new(30);
        let ask = sync(&mut lease, &mut shared, l1);
        assert_eq!(ask.charge, 5, "the cold start is counted");
        assert!(ask.want >= 1);
        assert_eq!(lease.take(now, l1), Admission::Yes);
    }

    #[tokio::test(start_paused = true)]
    async fn blocks_grow_with_traffic_up_to_the_cap_and_shrink_when_quiet() {
        let l = link(true, 3);
        // The shared budget is large: what the lease asks for is granted.
        let mut shared = Shared::new(60_000);
        let mut lease = Lease::new(Window::Minute, 600, Instant::now());
        assert_eq!(lease.max_block(3), 100);
        let first = sync(&mut lease, &mut shared, l);
        assert_eq!(first.want, 0, "no traffic yet: nothing held");
        // A busy replica: 50 requests per interval.
        let mut wants = Vec::new();
        for _ in 0..12 {
            let now = Instant::now();
            for _ in 0..50 {
                if lease.take(now, l) != Admission::Yes {
                    break;
                }
            }
            wants.push(sync(&mut lease, &mut shared, l).want);
            tokio::time::advance(SYNC).await;
        }
        // The first interval runs on the cold block; the block then follows the traffic (four
        // intervals' worth) and stops at the cap.
        assert!(wants[0] >= 50, "{wants:?}");
        assert!(wants.iter().all(|w| *w <= 100), "{wants:?}");
        let held = lease.units(Instant::now());
        assert!(
            (90..=100).contains(&held),
            "about one whole block, never more: {held} {wants:?}"
        );
        // Quiet: the demand decays, the block shrinks to one unit; the rest expires and goes back.
        for _ in 0..20 {
            sync(&mut lease, &mut shared, l);
            tokio::time::advance(SYNC).await;
        }
        let ask = lease.plan(Instant::now(), l);
        assert!(ask.want <= 1, "{ask:?}");
        assert!(
            lease.units(Instant::now()) <= 1,
            "{}",
            lease.units(Instant::now())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_sync_does_not_shrink_a_busy_lease() {
        let l = link(true, 1);
        let mut shared = Shared::new(60_000);
        let mut lease = Lease::new(Window::Minute, 60_000, Instant::now());
        // 100 requests per interval for a while.
        for _ in 0..10 {
            let now = Instant::now();
            for _ in 0..100 {
                lease.take(now, l);
            }
            sync(&mut lease, &mut shared, l);
            tokio::time::advance(SYNC).await;
        }
        let before = lease.units(Instant::now());
        assert!(before >= 150, "{before}");
        // The lease ran low somewhere: a sync a twentieth of an interval later sees few requests,
        // which at that pace is the same demand.
        tokio::time::advance(SYNC / 20).await;
        let now = Instant::now();
        for _ in 0..5 {
            lease.take(now, l);
        }
        sync(&mut lease, &mut shared, l);
        assert!(
            lease.units(now) + 5 >= before,
            "{} < {before}",
            lease.units(now)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unused_units_expire_and_are_given_back() {
        let l = link(true, 1);
        let mut shared = Shared::new(60);
        let mut lease = Lease::new(Window::Minute, 60, Instant::now());
        let now = Instant::now();
        lease.take(now, l);
        lease.answered(5, 55, None, now, l);
        assert_eq!(lease.units(now), 5);
        tokio::time::advance(l.lease_ttl()).await;
        let now = Instant::now();
        assert_eq!(lease.units(now), 0, "expired");
        let ask = lease.plan(now, l);
        assert_eq!(ask.give_back, 5);
        // Given back, the shared budget has those units again.
        let before = shared.tat;
        shared.tat = now + Duration::from_secs(5);
        shared.grant(
            Ask {
                want: 0,
                give_back: 5,
                charge: 0,
            },
            now,
        );
        assert!(shared.tat <= before.max(now));
    }

    #[tokio::test(start_paused = true)]
    async fn three_replicas_never_carry_more_than_the_bound_in_a_minute() {
        let l = link(true, 3);
        let mut shared = Shared::new(30);
        let mut leases: Vec<Lease> = (0..3)
            .map(|_| Lease::new(Window::Minute, 30, Instant::now()))
            .collect();
        let bound = 30 + 3 * 2 * leases[0].max_block(3);
        let mut admitted = 0;
        let start = Instant::now();
        // Requests round-robin, 10 per sync interval, for one minute.
        while Instant::now() < start + MINUTE {
            let now = Instant::now();
            for i in 0..10 {
                if leases[i % 3].take(now, l) == Admission::Yes {
                    admitted += 1;
                }
            }
            for lease in &mut leases {
                sync(lease, &mut shared, l);
            }
            tokio::time::advance(SYNC).await;
        }
        // GCRA refills 30 per minute after the burst of 30: at most 60 in this minute, plus the bound.
        assert!(admitted <= bound + 30, "{admitted} > {}", bound + 30);
        assert!(admitted >= 50, "the quota is used, not sat on: {admitted}");
    }

    #[tokio::test(start_paused = true)]
    async fn apart_from_redis_a_replica_spends_its_share_and_it_is_charged_on_return() {
        let mut shared = Shared::new(30);
        let mut lease = Lease::new(Window::Minute, 30, Instant::now());
        let up = link(true, 3);
        lease.take(Instant::now(), up);
        sync(&mut lease, &mut shared, up);
        let held = lease.units(Instant::now());
        // Redis goes: the replica spends what it holds, then its share of 30 / 3 = 10.
        let down = link(false, 3);
        let now = Instant::now();
        let mut admitted = 0;
        while lease.take(now, down) == Admission::Yes {
            admitted += 1;
        }
        assert_eq!(admitted, held + 10);
        let ask = lease.plan(now, down);
        lease.unanswered(ask);
        // Back: the 10 are charged once (not twice, although one sync failed in between).
        let ask = lease.plan(now, up);
        assert_eq!(ask.charge, 10);
        let tat_before = shared.tat.max(now);
        let (_, free, _) = shared.grant(ask, now);
        lease.answered(0, free, None, now, up);
        assert!(shared.tat >= tat_before + (MINUTE / 30) * 10);
        assert_eq!(lease.plan(now, up).charge, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quota_redis_said_was_out_stays_out_when_redis_goes() {
        let mut shared = Shared::new(3);
        let mut lease = Lease::new(Window::Minute, 3, Instant::now());
        let up = link(true, 1);
        let now = Instant::now();
        // Spend the whole minute through Redis.
        let mut admitted = 0;
        for _ in 0..10 {
            while lease.take(now, up) == Admission::Yes {
                admitted += 1;
            }
            sync(&mut lease, &mut shared, up);
        }
        assert_eq!(admitted, 3);
        assert!(matches!(lease.take(now, up), Admission::NotUntil(t) if t > now + SYNC));
        // Redis goes: no fallback share before the time Redis gave.
        let down = link(false, 1);
        let Admission::NotUntil(t) = lease.take(now, down) else {
            panic!("the fallback share must not undo what Redis said");
        };
        tokio::time::advance(t - now).await;
        assert_eq!(lease.take(Instant::now(), down), Admission::Yes);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_never_reached_redis_assumes_it_is_alone() {
        let mut lease = Lease::new(Window::Minute, 5, Instant::now());
        let down = link(false, 1);
        let now = Instant::now();
        let admitted = (0..10)
            .filter(|_| lease.take(now, down) == Admission::Yes)
            .count();
        assert_eq!(admitted, 5);
    }

    /// Busy, then quiet until the lease holds nothing: returns the instant the quiet spell ends.
    async fn go_quiet(leases: &mut [Lease], shared: &mut Shared, l: Link) {
        for _ in 0..40 {
            for lease in leases.iter_mut() {
                sync(lease, shared, l);
            }
            tokio::time::advance(SYNC).await;
        }
        let now = Instant::now();
        assert!(
            leases
                .iter()
                .all(|lease| lease.units(now) == 0 && lease.is_quiet())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_burst_after_a_quiet_spell_is_served_without_waiting_for_redis() {
        let l = link(true, 3);
        let mut shared = Shared::new(600);
        let mut lease = Lease::new(Window::Minute, 600, Instant::now());
        // Busy for a while, then quiet: the block went back to Redis.
        for _ in 0..10 {
            let now = Instant::now();
            for _ in 0..20 {
                lease.take(now, l);
            }
            sync(&mut lease, &mut shared, l);
            tokio::time::advance(SYNC).await;
        }
        go_quiet(std::slice::from_mut(&mut lease), &mut shared, l).await;
        // A burst of 64 at once (a load balancer's connections waking up): all served from the
        // cold block (600 free / 3 replicas, capped at the largest block, 100), none refused
        // while the lease is on its way.
        let now = Instant::now();
        assert_eq!(lease.cold_block(now, 3), 100);
        let served = (0..64)
            .filter(|_| lease.take(now, l) == Admission::Yes)
            .count();
        assert_eq!(served, 64);
        // The next sync charges all of them and sizes the block for the burst.
        let ask = sync(&mut lease, &mut shared, l);
        assert_eq!(ask.charge, 64);
        assert!(ask.want > 1, "{ask:?}");
        assert_eq!(lease.take(now, l), Admission::Yes, "the lease took over");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_that_outruns_the_top_ups_runs_ahead_once_until_redis_answers() {
        let l = link(true, 3);
        let mut shared = Shared::new(6000);
        let mut lease = Lease::new(Window::Minute, 6000, Instant::now());
        // Steady: 10 requests per interval, the block follows.
        for _ in 0..10 {
            let now = Instant::now();
            for _ in 0..10 {
                assert_eq!(lease.take(now, l), Admission::Yes);
            }
            sync(&mut lease, &mut shared, l);
            tokio::time::advance(SYNC).await;
        }
        // A burst far beyond the held block, before the next sync: the block, then one cold
        // block (a third of what Redis said was free, capped at the largest block, 1000), then
        // a wait for Redis.
        let now = Instant::now();
        let held = lease.units(now);
        let block = lease.cold_block(now, 3);
        assert_eq!(block, 1000);
        let served = (0..5000)
            .take_while(|_| lease.take(now, l) == Admission::Yes)
            .count() as u32;
        assert_eq!(served, held + block);
        assert_eq!(lease.take(now, l), Admission::NotUntil(now + SYNC));
        // Redis counts them; the grant follows the burst.
        let ask = sync(&mut lease, &mut shared, l);
        assert_eq!(ask.charge, block);
        assert!(lease.units(now) > held, "{}", lease.units(now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_block_is_a_share_of_what_redis_last_said_was_free() {
        let l = link(true, 3);
        let mut shared = Shared::new(60);
        let mut lease = Lease::new(Window::Minute, 60, Instant::now());
        // Others spent all but 6 of the minute.
        shared.tat = Instant::now() + Duration::from_secs(54);
        lease.take(Instant::now(), l);
        sync(&mut lease, &mut shared, l);
        go_quiet(std::slice::from_mut(&mut lease), &mut shared, l).await;
        // Quiet for 8 s: one unit a second refilled. What Redis said was free then, plus the
        // refill, split three ways, is what this replica may run ahead by.
        let now = Instant::now();
        let block = lease.cold_block(now, 3);
        assert!((1..=5).contains(&block), "{block}");
        let served = (0..10)
            .filter(|_| lease.take(now, l) == Admission::Yes)
            .count() as u32;
        assert_eq!(served, block);
    }

    #[tokio::test(start_paused = true)]
    async fn cold_blocks_keep_three_replicas_within_the_bound() {
        // The worst case: every replica wakes from a quiet spell into a burst at the same
        // moment, again and again, for a minute.
        let l = link(true, 3);
        let limit = 60;
        let mut shared = Shared::new(limit);
        let mut leases: Vec<Lease> = (0..3)
            .map(|_| Lease::new(Window::Minute, limit, Instant::now()))
            .collect();
        let max_block = leases[0].max_block(3);
        let start = Instant::now();
        let mut admitted = 0;
        let mut bursts = 0;
        while Instant::now() < start + MINUTE {
            let now = Instant::now();
            for lease in &mut leases {
                admitted += (0..1000)
                    .take_while(|_| lease.take(now, l) == Admission::Yes)
                    .count() as u32;
            }
            bursts += 1;
            go_quiet(&mut leases, &mut shared, l).await;
        }
        assert!(bursts >= 5, "{bursts}");
        // GCRA allows the burst of the limit and refills the limit in the minute; the leases and
        // cold blocks add at most `replicas × 2 × max_block`.
        let bound = 2 * limit + 3 * 2 * max_block;
        assert!(admitted <= bound, "{admitted} > {bound}");
        // And the quota was used: each burst got more than the one request a cold lease used to.
        assert!(admitted > 3 * bursts, "{admitted} in {bursts} bursts");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_weigh_more_while_apart_and_redis_view_replaces_the_local_one() {
        let mut m = TokenMeter::default();
        let now = Instant::now();
        m.add(500, 1000, now, link(true, 2));
        assert_eq!(m.check(now), Admission::Yes);
        // Apart, 500 tokens weigh 1000 with two replicas: the budget is overdrawn for 60 s...
        m.add(500, 1000, now, link(false, 2));
        assert!(matches!(m.check(now), Admission::NotUntil(_)));
        let reported = m.report();
        assert_eq!(reported, 1000);
        // Redis says everybody's tokens put the budget 30 s ahead: no longer overdrawn.
        m.answered(Duration::from_secs(30), 1000, now);
        assert_eq!(m.check(now), Admission::Yes);
    }
}
