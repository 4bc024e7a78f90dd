//! Key state: headroom, rests, invalid and disabled keys, counters, and file/cache affinity.
//!
//! All of it sits behind [`KeyStateStore`], so the same pool logic can serve one process (the
//! in-memory [`MemoryStore`], here) or several replicas sharing state (a Redis backend). The trait
//! is synchronous on purpose: the request path never waits on a network round-trip. A shared
//! backend keeps a local copy like this one and reconciles in the background (leasing blocks of
//! quota, learning rests and invalid keys), so each replica decides locally, a little
//! conservatively when the shared store is slow or gone.
//!
//! State is keyed by key *id*, so a key that survives a config reload keeps its state.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashlink::LruCache;

use serde::Serialize;
use tokio::time::Instant;

use crate::deadline::after;
use crate::time::until_pacific_midnight;

/// Limits of one key, per model (Google's quotas are per project and model).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per minute.
    pub requests_per_minute: Option<u32>,
    /// Requests per Pacific-time day.
    pub requests_per_day: Option<u32>,
    /// Tokens per minute (counted from `usageMetadata` after each answer).
    pub tokens_per_minute: Option<u32>,
}

/// Why a key rests for a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestReason {
    /// Google answered 429 with a per-minute (or unspecified) quota.
    RateLimited,
    /// Google answered 429 with a per-day quota: parked until midnight Pacific.
    ExhaustedToday,
    /// Google said the key cannot use this model (e.g. billing or region): `FAILED_PRECONDITION`.
    Unusable,
    /// The key's egress proxy (`gemini.api_keys[].proxy` / `gemini.proxy`) could not be reached
    /// or refused the tunnel.
    ProxyUnreachable,
}

impl RestReason {
    /// `rate_limited`, `exhausted_today`, `unusable`, `proxy_unreachable` (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            RestReason::RateLimited => "rate_limited",
            RestReason::ExhaustedToday => "exhausted_today",
            RestReason::Unusable => "unusable",
            RestReason::ProxyUnreachable => "proxy_unreachable",
        }
    }
}

/// One request's outcome on a key, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// A 2xx/3xx answer.
    Success,
    /// 429 from Google.
    RateLimited,
    /// The key is invalid or suspended.
    Invalid,
    /// 503 overloaded: not the key's fault.
    Overloaded,
    /// 500/504, connect failures, time-outs.
    ServerError,
    /// A 4xx that is the request's fault.
    ClientError,
}

/// Tokens of one answer, from `usageMetadata`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tokens {
    /// `promptTokenCount`.
    pub prompt: u64,
    /// `candidatesTokenCount`.
    pub candidates: u64,
    /// `thoughtsTokenCount`.
    pub thoughts: u64,
    /// `cachedContentTokenCount`.
    pub cached: u64,
    /// `totalTokenCount`.
    pub total: u64,
}

/// What an operator sees of one key (never the key itself).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeyStatus {
    /// `active`, `cooling`, `invalid` or `disabled`.
    pub state: &'static str,
    /// Why the key is invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Models this key rests for, and until when.
    pub resting: Vec<RestStatus>,
    /// Counters since start.
    pub requests: u64,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Tokens by kind.
    pub tokens: Tokens,
}

/// A model a key rests for.
#[derive(Debug, Clone, Serialize)]
pub struct RestStatus {
    /// The model.
    pub model: String,
    /// Why.
    pub reason: RestReason,
    /// Seconds until it is used again.
    pub remaining_seconds: u64,
}

/// Error counters of a key.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ErrorCounts {
    /// 429s.
    pub rate_limited: u64,
    /// Invalid / suspended answers.
    pub invalid: u64,
    /// 503 overloaded.
    pub overloaded: u64,
    /// 500/504/connect/time-out.
    pub server: u64,
    /// The client's fault.
    pub client: u64,
}

impl ErrorCounts {
    fn count(&mut self, outcome: KeyOutcome) {
        match outcome {
            KeyOutcome::Success => {}
            KeyOutcome::RateLimited => self.rate_limited += 1,
            KeyOutcome::Invalid => self.invalid += 1,
            KeyOutcome::Overloaded => self.overloaded += 1,
            KeyOutcome::ServerError => self.server += 1,
            KeyOutcome::ClientError => self.client += 1,
        }
    }
}

/// Shared key state. Every method is quick and never waits on I/O.
pub trait KeyStateStore: Send + Sync + fmt::Debug {
    /// A stable handle for `key`'s state, resolved once when a pool is built so a pick need not
    /// look keys up by name.
    fn slot(&self, key: &str) -> Slot;
    /// For each `(slot, limits)`, whether that key may take one request for `model` now (nothing is
    /// counted). `out` gets one answer per key, in order. The whole pool under one lock.
    fn admit_all(
        &self,
        keys: &[(Slot, KeyLimits)],
        model: &str,
        now: Instant,
        out: &mut Vec<Admission>,
    );
    /// Whether `key` may take one request for `model` now; with `take`, the request is counted.
    /// `Err` carries the earliest time it could.
    fn admit(
        &self,
        key: &str,
        model: &str,
        limits: &KeyLimits,
        now: Instant,
        take: bool,
    ) -> Admission;
    /// [`KeyStateStore::admit`] for a key whose [`slot`](KeyStateStore::slot) is known: a store
    /// that keeps its state by slot goes there directly instead of looking `key` up.
    fn admit_at(
        &self,
        slot: Slot,
        key: &str,
        model: &str,
        limits: &KeyLimits,
        now: Instant,
        take: bool,
    ) -> Admission {
        let _ = slot;
        self.admit(key, model, limits, now, take)
    }
    /// A number that changes whenever a key may have become usable sooner than the store last
    /// said (re-enabled, state from another replica, new leases); pools rebuild their turn order
    /// when it does. `None` (the default): unknown, so every pick asks about every key.
    fn generation(&self) -> Option<u64> {
        None
    }
    /// Counts the tokens of an answer against the key's tokens-per-minute and its counters.
    fn add_tokens(&self, key: &str, model: &str, limits: &KeyLimits, tokens: Tokens, now: Instant);
    /// [`KeyStateStore::add_tokens`] for a key whose slot is known.
    fn add_tokens_at(
        &self,
        slot: Slot,
        key: &str,
        model: &str,
        limits: &KeyLimits,
        tokens: Tokens,
        now: Instant,
    ) {
        let _ = slot;
        self.add_tokens(key, model, limits, tokens, now);
    }
    /// Rests `key` for `model` until `until`.
    fn rest(&self, key: &str, model: &str, until: Instant, reason: RestReason);
    /// Takes `key` out of rotation until it is re-enabled (or replaced).
    fn invalidate(&self, key: &str, reason: &str);
    /// Disables (or re-enables) a key; re-enabling also clears `invalid` and every rest.
    fn set_disabled(&self, key: &str, disabled: bool);
    /// Counts one request's outcome.
    fn record(&self, key: &str, outcome: KeyOutcome);
    /// [`KeyStateStore::record`] for a key whose slot is known.
    fn record_at(&self, slot: Slot, key: &str, outcome: KeyOutcome) {
        let _ = slot;
        self.record(key, outcome);
    }
    /// What an operator sees of `key`.
    fn status(&self, key: &str, now: Instant) -> KeyStatus;
    /// Drops the state of keys not in `keep` (after a reload removed them).
    fn retain_keys(&self, keep: &[&str]);
    /// Remembers who `resource` (`files/abc`, `cachedContents/xyz`, `upload:<id>`) belongs to:
    /// its key and the client that created it, until `expires`.
    fn bind(&self, resource: &str, binding: Binding, expires: Instant);
    /// Who `resource` belongs to, if known and not expired.
    fn bound(&self, resource: &str, now: Instant) -> Option<Binding>;
    /// How many bindings are held, and how many were dropped to stay within the cap.
    fn binding_stats(&self) -> BindingStats {
        BindingStats::default()
    }
    /// For a backend that shares client limits between replicas: whether `client` may send one
    /// more request under `rpm` requests per minute, counted if so. `None` (the default): client
    /// limits are not shared, the client-limit layer's own limiter decides.
    fn admit_client(&self, client: ClientId<'_>, rpm: u32, now: Instant) -> Option<Admission> {
        let _ = (client, rpm, now);
        None
    }
    /// For a shared backend: tells the other replicas that an operator changed the config
    /// through the admin API (`document`: the config document, secrets masked).
    fn share_config(&self, who: &str, document: &serde_json::Value) {
        let _ = (who, document);
    }
    /// For a shared backend: where config changes made on other replicas go.
    fn on_shared_config(&self, sink: ConfigSink) {
        let _ = sink;
    }
    /// Which backend this is and how it is doing (for `/health` and the backend metric).
    fn backend(&self) -> BackendStatus {
        BackendStatus {
            backend: "memory",
            connected: None,
            since: None,
            url: None,
            replicas: None,
        }
    }
}

/// Receives a config change made on another replica: who made it, and the document with its
/// secrets masked.
pub type ConfigSink = Box<dyn Fn(&str, serde_json::Value) + Send + Sync>;

/// Whose budget a client request counts against, for [`KeyStateStore::admit_client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientId<'a> {
    /// An authenticated client: the token's `sub`.
    Subject(&'a str),
    /// An anonymous client: its address (IPv6 already reduced to its /64).
    Ip(std::net::IpAddr),
}

/// What `/health` shows of the state backend (`state`).
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// Whether the shared store answered the last sync (shared backends only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    /// When `connected` last changed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The shared store's address, without user or password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Replicas sharing the state, as last seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// The part of a key's state that replicas share: disabled, invalid, rests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedKeyState {
    /// Disabled by an operator.
    pub disabled: bool,
    /// Why the key is invalid, if it is.
    pub invalid: Option<String>,
    /// Models the key rests for: until when, and why.
    pub rests: Vec<(Arc<str>, Instant, RestReason)>,
}

/// The affinity bindings a store holds (see [`KeyStateStore::binding_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindingStats {
    /// Bindings held now.
    pub held: u64,
    /// Bindings dropped, least recently used first, because the cap was reached.
    pub evicted: u64,
}

/// Who a resource belongs to: the key (the Google project) that holds it — only that key can see
/// it — and the client (token `sub`) that created it, when auth was on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The key's id.
    pub key: Arc<str>,
    /// The creating client's id; `None` when it was created without auth.
    pub owner: Option<Arc<str>>,
}

/// A handle for one key's state in a [`KeyStateStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(pub usize);

/// The answer of [`KeyStateStore::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Yes,
    /// Not before this time.
    NotUntil(Instant),
    /// Invalid or disabled: not until an operator acts.
    Never,
}

/// The in-memory store: one process, nothing to install.
///
/// Bounded whatever clients send: at most [`MAX_MODELS`] model names are remembered (the least
/// recently used one without a rest makes room), and at most [`MAX_BINDINGS`] affinity
/// bindings (least recently used first; counted in [`BindingStats::evicted`]).
#[derive(Debug)]
pub struct MemoryStore {
    keys: Mutex<Keys>,
    /// See [`KeyStateStore::generation`].
    generation: AtomicU64,
    bindings: Mutex<LruCache<Box<str>, (Binding, Instant)>>,
    bindings_evicted: AtomicU64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_limits(MAX_MODELS, MAX_BINDINGS)
    }
}

/// Model names a [`MemoryStore`] keeps state for, at most. Google serves a few dozen models; a
/// client inventing names cannot grow memory (or slow picks) past this.
pub const MAX_MODELS: usize = 256;
/// Affinity bindings a [`MemoryStore`] keeps, at most (a binding is ~100 bytes).
pub const MAX_BINDINGS: usize = 100_000;

/// Key states by slot; slots are never reused, so a pool built before a reload stays valid.
#[derive(Debug, Default)]
struct Keys {
    slots: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    states: Vec<KeyState>,
    /// Model names interned to small numbers, so a pick compares numbers, not strings.
    models: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    /// By model number: its name and when it was last used (a tick of `clock`).
    model_names: Vec<(Arc<str>, u64)>,
    /// Numbers of evicted models, for reuse.
    free_models: Vec<u32>,
    clock: u64,
    max_models: usize,
}

impl Keys {
    fn slot(&mut self, key: &str) -> usize {
        if let Some(&slot) = self.slots.get(key) {
            return slot;
        }
        self.states.push(KeyState::default());
        self.slots.insert(Arc::from(key), self.states.len() - 1);
        self.states.len() - 1
    }

    fn state(&mut self, key: &str) -> &mut KeyState {
        let slot = self.slot(key);
        &mut self.states[slot]
    }

    /// The state at `slot` (from [`Keys::slot`]): no lookup by name. A slot this store never
    /// handed out falls back to the name.
    fn state_at(&mut self, slot: Slot, key: &str) -> &mut KeyState {
        if slot.0 < self.states.len() {
            &mut self.states[slot.0]
        } else {
            self.state(key)
        }
    }

    fn model(&mut self, model: &str) -> u32 {
        self.clock += 1;
        if let Some(&id) = self.models.get(model) {
            self.model_names[id as usize].1 = self.clock;
            return id;
        }
        if self.models.len() >= self.max_models.max(1) {
            self.evict_model();
        }
        let name: Arc<str> = Arc::from(model);
        let id = match self.free_models.pop() {
            Some(id) => {
                self.model_names[id as usize] = (name.clone(), self.clock);
                id
            }
            None => {
                self.model_names.push((name.clone(), self.clock));
                (self.model_names.len() - 1) as u32
            }
        };
        self.models.insert(name, id);
        id
    }

    /// Forgets the least recently used model, preferring one no key rests for.
    fn evict_model(&mut self) {
        let now = Instant::now();
        let resting = |id: u32| {
            self.states.iter().any(|k| {
                k.model(id)
                    .and_then(|m| m.rest)
                    .is_some_and(|(until, _)| until > now)
            })
        };
        let Some(&victim) = self
            .models
            .values()
            .min_by_key(|&&id| (resting(id), self.model_names[id as usize].1))
        else {
            return;
        };
        let name = self.model_names[victim as usize].0.clone();
        self.models.remove(&name);
        for k in &mut self.states {
            k.models.retain(|(m, _)| *m != victim);
        }
        self.free_models.push(victim);
    }
}

#[derive(Debug, Default)]
struct KeyState {
    disabled: bool,
    invalid: Option<String>,
    /// Per-model state, by interned model number (a key sees few models: a short list).
    models: Vec<(u32, ModelState)>,
    requests: u64,
    errors: ErrorCounts,
    tokens: Tokens,
}

#[derive(Debug, Default)]
struct ModelState {
    /// GCRA theoretical arrival time for requests per minute.
    rpm_tat: Option<Instant>,
    /// GCRA theoretical arrival time for tokens per minute.
    tpm_tat: Option<Instant>,
    /// Requests counted in the current Pacific day, and when that day ends.
    day: Option<(u32, Instant)>,
    rest: Option<(Instant, RestReason)>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl MemoryStore {
    /// An empty store with the default bounds ([`MAX_MODELS`], [`MAX_BINDINGS`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that remembers at most `max_models` model names and `max_bindings`
    /// affinity bindings.
    pub fn with_limits(max_models: usize, max_bindings: usize) -> Self {
        Self {
            keys: Mutex::new(Keys {
                max_models,
                ..Keys::default()
            }),
            bindings: Mutex::new(LruCache::new(max_bindings.max(1))),
            bindings_evicted: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// A key may be usable sooner than the store said: see [`KeyStateStore::generation`].
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        // A panic while holding the lock cannot leave the counters inconsistent in a way that
        // matters more than losing the whole pool: keep going.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ids of every key this store has state for.
    pub fn key_ids(&self) -> Vec<Arc<str>> {
        self.keys().slots.keys().cloned().collect()
    }

    /// `key`'s disabled flag, invalid reason and rests.
    pub fn shared_state(&self, key: &str) -> SharedKeyState {
        let keys = self.keys();
        let Some(k) = keys.slots.get(key).map(|&slot| &keys.states[slot]) else {
            return SharedKeyState::default();
        };
        SharedKeyState {
            disabled: k.disabled,
            invalid: k.invalid.clone(),
            rests: k
                .models
                .iter()
                .filter_map(|(m, s)| {
                    let (until, reason) = s.rest?;
                    Some((keys.model_names[*m as usize].0.clone(), until, reason))
                })
                .collect(),
        }
    }

    /// Replaces `key`'s disabled flag, invalid reason and rests (counters and limits stay).
    pub fn set_shared_state(&self, key: &str, shared: SharedKeyState) {
        self.bump();
        let mut keys = self.keys();
        let models: Vec<u32> = shared.rests.iter().map(|(m, ..)| keys.model(m)).collect();
        let k = keys.state(key);
        k.disabled = shared.disabled;
        k.invalid = shared.invalid;
        for (_, m) in &mut k.models {
            m.rest = None;
        }
        for (model, (_, until, reason)) in models.into_iter().zip(shared.rests) {
            let m = k.model_mut(model);
            if m.rest.is_none_or(|(u, _)| u < until) {
                m.rest = Some((until, reason));
            }
        }
    }

    /// Every binding that has not expired: resource, binding, expiry.
    pub fn bindings(&self, now: Instant) -> Vec<(Arc<str>, Binding, Instant)> {
        let b = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        b.iter()
            .filter(|(_, (_, exp))| *exp > now)
            .map(|(r, (binding, exp))| (Arc::from(&**r), binding.clone(), *exp))
            .collect()
    }

    fn with_key<R>(&self, key: &str, f: impl FnOnce(&mut KeyState) -> R) -> R {
        f(self.keys().state(key))
    }

    fn add_tokens_to(
        &self,
        slot: Option<Slot>,
        key: &str,
        model: &str,
        limits: &KeyLimits,
        tokens: Tokens,
        now: Instant,
    ) {
        let mut keys = self.keys();
        let model = (!model.is_empty()).then(|| keys.model(model));
        let k = match slot {
            Some(slot) => keys.state_at(slot, key),
            None => keys.state(key),
        };
        k.tokens.prompt += tokens.prompt;
        k.tokens.candidates += tokens.candidates;
        k.tokens.thoughts += tokens.thoughts;
        k.tokens.cached += tokens.cached;
        k.tokens.total += tokens.total;
        if let (Some(tpm), Some(model)) = (limits.tokens_per_minute, model) {
            let m = k.model_mut(model);
            let cost = u32::try_from(tokens.total).unwrap_or(u32::MAX);
            // Overdrawing is allowed: the key then waits until the budget recovers.
            let interval = MINUTE / tpm.max(1);
            let base = m.tpm_tat.map_or(now, |t| t.max(now));
            m.tpm_tat = Some(after(base, interval.saturating_mul(cost)));
        }
    }

    /// `key`'s state for `model`, created if new.
    fn with_model<R>(&self, key: &str, model: &str, f: impl FnOnce(&mut ModelState) -> R) -> R {
        let mut keys = self.keys();
        let model = keys.model(model);
        f(keys.state(key).model_mut(model))
    }
}

impl KeyState {
    fn model(&self, model: u32) -> Option<&ModelState> {
        self.models
            .iter()
            .find(|(m, _)| *m == model)
            .map(|(_, s)| s)
    }

    fn model_mut(&mut self, model: u32) -> &mut ModelState {
        match self.models.iter().position(|(m, _)| *m == model) {
            Some(i) => &mut self.models[i].1,
            None => {
                self.models.push((model, ModelState::default()));
                &mut self.models.last_mut().expect("just pushed").1
            }
        }
    }

    fn admit(
        &mut self,
        model: Option<u32>,
        limits: &KeyLimits,
        now: Instant,
        take: bool,
    ) -> Admission {
        if self.disabled || self.invalid.is_some() {
            return Admission::Never;
        }
        let Some(model) = model else {
            return Admission::Yes;
        };
        let admission = if take {
            self.model_mut(model).admit(limits, now, true)
        } else {
            match self.model(model) {
                Some(m) => m.peek(limits, now),
                None => Admission::Yes,
            }
        };
        if take && admission == Admission::Yes {
            self.requests += 1;
        }
        admission
    }
}

impl ModelState {
    /// Whether a request fits now, changing nothing.
    fn peek(&self, limits: &KeyLimits, now: Instant) -> Admission {
        if let Some((until, _)) = self.rest
            && until > now
        {
            return Admission::NotUntil(until);
        }
        self.check(limits, now)
    }

    fn admit(&mut self, limits: &KeyLimits, now: Instant, take: bool) -> Admission {
        if self.rest.is_some_and(|(until, _)| until <= now) {
            self.rest = None;
        }
        let admission = self.peek(limits, now);
        if take && admission == Admission::Yes {
            if let Some(rpm) = limits.requests_per_minute {
                self.rpm_tat = gcra(self.rpm_tat, now, rpm, 1).ok();
            }
            if limits.requests_per_day.is_some() {
                self.day = Some(match self.day {
                    Some((count, ends)) if ends > now => (count + 1, ends),
                    _ => (1, after(now, until_pacific_midnight())),
                });
            }
        }
        admission
    }

    /// The limits alone.
    fn check(&self, limits: &KeyLimits, now: Instant) -> Admission {
        let mut earliest: Option<Instant> = None;
        let mut later = |t: Instant| earliest = Some(earliest.map_or(t, |e| e.max(t)));
        if let Some(rpm) = limits.requests_per_minute
            && let Err(t) = gcra(self.rpm_tat, now, rpm, 1)
        {
            later(t);
        }
        // Tokens are counted after the answer, so only check the budget is not overdrawn.
        if let Some(tpm) = limits.tokens_per_minute
            && let Err(t) = gcra(self.tpm_tat, now, tpm, 0)
        {
            later(t);
        }
        if let (Some(rpd), Some((count, ends))) = (limits.requests_per_day, self.day)
            && ends > now
            && count >= rpd
        {
            later(ends);
        }
        match earliest {
            Some(t) => Admission::NotUntil(t),
            None => Admission::Yes,
        }
    }
}

/// GCRA for `limit` units per minute with a burst of a whole minute: the new theoretical arrival
/// time after spending `cost` units now, or the earliest time that would be allowed.
fn gcra(tat: Option<Instant>, now: Instant, limit: u32, cost: u32) -> Result<Instant, Instant> {
    let interval = MINUTE / limit.max(1);
    let new_tat = after(
        tat.map_or(now, |t| t.max(now)),
        interval.saturating_mul(cost),
    );
    match new_tat.checked_sub(MINUTE) {
        Some(allowed_at) if allowed_at > now => Err(allowed_at),
        _ => Ok(new_tat),
    }
}

impl KeyStateStore for MemoryStore {
    fn slot(&self, key: &str) -> Slot {
        Slot(self.keys().slot(key))
    }

    fn admit_all(
        &self,
        keys: &[(Slot, KeyLimits)],
        model: &str,
        now: Instant,
        out: &mut Vec<Admission>,
    ) {
        out.clear();
        let mut all = self.keys();
        let model = (!model.is_empty()).then(|| all.models.get(model).copied());
        for (slot, limits) in keys {
            let admission = match (all.states.get_mut(slot.0), model) {
                (None, _) => Admission::Yes,
                // A model this store has never seen has no state anywhere yet.
                (Some(state), Some(None)) => state.admit(None, limits, now, false),
                (Some(state), Some(Some(m))) => state.admit(Some(m), limits, now, false),
                (Some(state), None) => state.admit(None, limits, now, false),
            };
            out.push(admission);
        }
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
    }

    fn admit(
        &self,
        key: &str,
        model: &str,
        limits: &KeyLimits,
        now: Instant,
        take: bool,
    ) -> Admission {
        let mut keys = self.keys();
        let model = (!model.is_empty()).then(|| keys.model(model));
        keys.state(key).admit(model, limits, now, take)
    }

    fn admit_at(
        &self,
        slot: Slot,
        key: &str,
        model: &str,
        limits: &KeyLimits,
        now: Instant,
        take: bool,
    ) -> Admission {
        let mut keys = self.keys();
        let model = (!model.is_empty()).then(|| keys.model(model));
        keys.state_at(slot, key).admit(model, limits, now, take)
    }

    fn add_tokens(&self, key: &str, model: &str, limits: &KeyLimits, tokens: Tokens, now: Instant) {
        self.add_tokens_to(None, key, model, limits, tokens, now);
    }

    fn add_tokens_at(
        &self,
        slot: Slot,
        key: &str,
        model: &str,
        limits: &KeyLimits,
        tokens: Tokens,
        now: Instant,
    ) {
        self.add_tokens_to(Some(slot), key, model, limits, tokens, now);
    }

    fn rest(&self, key: &str, model: &str, until: Instant, reason: RestReason) {
        self.with_model(key, model, |m| {
            // Never shorten a longer rest (a per-day park outlasts a 30 s retry delay).
            if m.rest.is_none_or(|(u, _)| u < until) {
                m.rest = Some((until, reason));
            }
        });
    }

    fn invalidate(&self, key: &str, reason: &str) {
        self.with_key(key, |k| k.invalid = Some(reason.to_owned()));
    }

    fn set_disabled(&self, key: &str, disabled: bool) {
        self.bump();
        self.with_key(key, |k| {
            k.disabled = disabled;
            if !disabled {
                k.invalid = None;
                for (_, m) in &mut k.models {
                    m.rest = None;
                }
            }
        });
    }

    fn record(&self, key: &str, outcome: KeyOutcome) {
        self.with_key(key, |k| k.errors.count(outcome));
    }

    fn record_at(&self, slot: Slot, key: &str, outcome: KeyOutcome) {
        self.keys().state_at(slot, key).errors.count(outcome);
    }

    fn status(&self, key: &str, now: Instant) -> KeyStatus {
        let keys = self.keys();
        let Some(k) = keys.slots.get(key).map(|&slot| &keys.states[slot]) else {
            return KeyStatus {
                state: "active",
                ..KeyStatus::default()
            };
        };
        let mut resting: Vec<RestStatus> = k
            .models
            .iter()
            .filter_map(|(model, m)| {
                let (until, reason) = m.rest?;
                (until > now).then(|| RestStatus {
                    model: keys.model_names[*model as usize].0.to_string(),
                    reason,
                    remaining_seconds: (until - now).as_secs_f64().ceil() as u64,
                })
            })
            .collect();
        resting.sort_by(|a, b| a.model.cmp(&b.model));
        let state = if k.disabled {
            "disabled"
        } else if k.invalid.is_some() {
            "invalid"
        } else if !resting.is_empty() {
            "cooling"
        } else {
            "active"
        };
        KeyStatus {
            state,
            invalid_reason: k.invalid.clone(),
            resting,
            requests: k.requests,
            errors: k.errors,
            tokens: k.tokens,
        }
    }

    fn retain_keys(&self, keep: &[&str]) {
        self.bump();
        // Slots stay (pools built earlier may still use them); only the state is forgotten.
        let mut keys = self.keys();
        let Keys { slots, states, .. } = &mut *keys;
        for (id, &slot) in slots.iter() {
            if !keep.contains(&&**id) {
                states[slot] = KeyState::default();
            }
        }
    }

    fn bind(&self, resource: &str, binding: Binding, expires: Instant) {
        let mut b = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= b.capacity() && !b.contains_key(resource) {
            // Make room: expired bindings first, then the least recently used.
            let now = Instant::now();
            b.retain(|_, (_, exp)| *exp > now);
            if b.len() >= b.capacity() {
                b.remove_lru();
                self.bindings_evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        b.insert(resource.into(), (binding, expires));
    }

    fn bound(&self, resource: &str, now: Instant) -> Option<Binding> {
        let mut b = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        b.get(resource)
            .filter(|(_, exp)| *exp > now)
            .map(|(binding, _)| binding.clone())
    }

    fn binding_stats(&self) -> BindingStats {
        let held = self
            .bindings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        BindingStats {
            held: held as u64,
            evicted: self.bindings_evicted.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "gemini-2.5-flash";

    fn rpm(n: u32) -> KeyLimits {
        KeyLimits {
            requests_per_minute: Some(n),
            ..KeyLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_allows_a_burst_then_one_per_interval() {
        let s = MemoryStore::new();
        let now = Instant::now();
        for _ in 0..6 {
            assert_eq!(s.admit("k", M, &rpm(6), now, true), Admission::Yes);
        }
        // The seventh waits 10 s (60 s / 6).
        assert_eq!(
            s.admit("k", M, &rpm(6), now, true),
            Admission::NotUntil(now + Duration::from_secs(10))
        );
        // Checking without taking changes nothing.
        assert_eq!(
            s.admit("k", M, &rpm(6), now, false),
            Admission::NotUntil(now + Duration::from_secs(10))
        );
        // Other models on the same key are unaffected.
        assert_eq!(
            s.admit("k", "gemini-2.5-pro", &rpm(6), now, true),
            Admission::Yes
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            s.admit("k", M, &rpm(6), Instant::now(), true),
            Admission::Yes
        );
        assert_eq!(s.status("k", Instant::now()).requests, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_per_minute_blocks_once_overdrawn() {
        let s = MemoryStore::new();
        let limits = KeyLimits {
            tokens_per_minute: Some(1000),
            ..KeyLimits::default()
        };
        let now = Instant::now();
        assert_eq!(s.admit("k", M, &limits, now, true), Admission::Yes);
        let tokens = Tokens {
            total: 1500,
            ..Tokens::default()
        };
        s.add_tokens("k", M, &limits, tokens, now);
        // 1500 tokens at 1000/min: the budget is back in 30 s.
        assert_eq!(
            s.admit("k", M, &limits, now, true),
            Admission::NotUntil(now + Duration::from_secs(30))
        );
        assert_eq!(s.status("k", now).tokens.total, 1500);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_day_park_until_the_day_ends() {
        let s = MemoryStore::new();
        let limits = KeyLimits {
            requests_per_day: Some(2),
            ..KeyLimits::default()
        };
        let now = Instant::now();
        assert_eq!(s.admit("k", M, &limits, now, true), Admission::Yes);
        assert_eq!(s.admit("k", M, &limits, now, true), Admission::Yes);
        match s.admit("k", M, &limits, now, true) {
            Admission::NotUntil(t) => {
                let wait = t - now;
                let expected = until_pacific_midnight();
                assert!(
                    wait <= expected && wait + Duration::from_secs(2) >= expected,
                    "{wait:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rests_are_per_model_and_never_shortened() {
        let s = MemoryStore::new();
        let now = Instant::now();
        s.rest(
            "k",
            M,
            now + Duration::from_secs(3600),
            RestReason::ExhaustedToday,
        );
        s.rest(
            "k",
            M,
            now + Duration::from_secs(30),
            RestReason::RateLimited,
        );
        assert_eq!(
            s.admit("k", M, &KeyLimits::default(), now, true),
            Admission::NotUntil(now + Duration::from_secs(3600))
        );
        assert_eq!(
            s.admit("k", "other", &KeyLimits::default(), now, true),
            Admission::Yes
        );
        let st = s.status("k", now);
        assert_eq!(st.state, "cooling");
        assert_eq!(st.resting[0].reason, RestReason::ExhaustedToday);
    }

    #[test]
    fn invalid_and_disabled_keys_are_never_admitted_until_re_enabled() {
        let s = MemoryStore::new();
        let now = Instant::now();
        s.invalidate("k", "API_KEY_INVALID");
        assert_eq!(
            s.admit("k", M, &KeyLimits::default(), now, true),
            Admission::Never
        );
        assert_eq!(
            s.admit("k", "", &KeyLimits::default(), now, true),
            Admission::Never
        );
        assert_eq!(s.status("k", now).state, "invalid");
        s.set_disabled("k", false);
        assert_eq!(
            s.admit("k", M, &KeyLimits::default(), now, true),
            Admission::Yes
        );
        s.set_disabled("k", true);
        assert_eq!(s.status("k", now).state, "disabled");
    }

    #[tokio::test(start_paused = true)]
    async fn bindings_expire() {
        let s = MemoryStore::new();
        let now = Instant::now();
        let binding = Binding {
            key: "k1".into(),
            owner: Some("team-a".into()),
        };
        s.bind("files/abc", binding.clone(), now + Duration::from_secs(10));
        assert_eq!(s.bound("files/abc", now), Some(binding));
        assert_eq!(s.bound("files/abc", now + Duration::from_secs(10)), None);
        assert_eq!(s.bound("files/zzz", now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_model_names_stays_bounded_and_keeps_rests() {
        let s = MemoryStore::with_limits(4, 10);
        let now = Instant::now();
        s.rest(
            "k",
            M,
            now + Duration::from_secs(3600),
            RestReason::ExhaustedToday,
        );
        for i in 0..1000 {
            let model = format!("random-{i}");
            assert_eq!(s.admit("k", &model, &rpm(10), now, true), Admission::Yes);
        }
        {
            let keys = s.keys();
            assert!(keys.models.len() <= 4, "{}", keys.models.len());
            assert!(keys.states.iter().all(|k| k.models.len() <= 4));
            assert!(keys.model_names.len() <= 4);
        }
        // The resting model was never the one evicted.
        assert_eq!(
            s.admit("k", M, &KeyLimits::default(), now, true),
            Admission::NotUntil(now + Duration::from_secs(3600))
        );
        // A model evicted and seen again starts afresh, under its own name.
        assert_eq!(
            s.admit("k", "random-0", &rpm(10), now, true),
            Admission::Yes
        );
        assert_eq!(s.status("k", now).resting[0].model, M);
    }

    #[tokio::test(start_paused = true)]
    async fn bindings_are_capped_least_recently_used_first() {
        let s = MemoryStore::with_limits(4, 3);
        let now = Instant::now();
        let later = now + Duration::from_secs(3600);
        let to = |key: &str| Binding {
            key: key.into(),
            owner: None,
        };
        for r in ["files/a", "files/b", "files/c"] {
            s.bind(r, to("k1"), later);
        }
        // Reading `a` makes `b` the least recently used.
        assert!(s.bound("files/a", now).is_some());
        s.bind("files/d", to("k2"), later);
        assert_eq!(s.bound("files/b", now), None);
        for r in ["files/a", "files/c", "files/d"] {
            assert!(s.bound(r, now).is_some(), "{r}");
        }
        assert_eq!(
            s.binding_stats(),
            BindingStats {
                held: 3,
                evicted: 1
            }
        );
        // Expired bindings make room before a live one is dropped.
        s.bind("files/short", to("k1"), now + Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        s.bind("files/e", to("k1"), later);
        assert_eq!(
            s.binding_stats().evicted,
            2,
            "files/short had expired: no live binding dropped for files/e"
        );
    }
}
