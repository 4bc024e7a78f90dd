//! [`RedisStore`]: key state shared by several replicas through Redis, decided locally.
//!
//! The request path only touches a local [`MemoryStore`] (rests, invalid and disabled keys,
//! counters, bindings) and this replica's quota leases ([`super::lease`]), under short locks.
//! Two background tasks talk to Redis:
//! - the **sync** task, every `state.redis.sync_interval_ms` (and at once when a lease runs low or
//!   an event is waiting): one script call ([`super::scripts::SYNC`]) that beats this replica's
//!   heartbeat, tops up its leases, gives back expired units, charges units spent without a lease
//!   and reports tokens; then it writes the events learned here (rests, invalid keys, disables,
//!   bindings), each with [`super::scripts::EVENT`];
//! - the **events** task, blocked on `XREAD` of the event stream, which applies every event (its
//!   own too: applying is idempotent) within a Redis round trip. On (re)connect it first reads the
//!   records back (each key's hash, every binding), so a replica that was apart catches up; when
//!   Redis lost its data (a new epoch), the replica writes its own state back instead.
//!
//! While Redis is unreachable the replica keeps deciding from what it holds (see
//! [`super::lease`] for the fallback share), logs once, reports `connected: false` in `/health` and
//! `gem_proxy_state_backend_up 0`, and keeps every event and charge to write when Redis is back.
//!
//! Redis keys, under `state.redis.key_prefix` (`P`): `P:replicas` (heartbeats), `P:rpm:<key>:<model>`
//! and `P:tpm:<key>:<model>` (GCRA arrival times, µs), `P:rpd:<key>:<model>:<day>` (the day's
//! count), `P:key:<key>` (hash: `disabled`, `invalid`, `rest:<model>`), `P:bind:<resource>`
//! (a binding, with its expiry), `P:config:latest` (hash: the latest admin-API config change `e`
//! and its version `v`, counted by `P:config:version`), `P:events` (the event stream), `P:epoch`.
//!
//! Config changes: a replica applies other replicas' changes as they arrive on the stream; one
//! that was apart reads `P:config:latest` back when it reconnects and applies it when its
//! version is newer than the last it saw (unless a change of its own is waiting to be written:
//! that one is newer). At start a replica takes its own config file and only notes the version.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::lease::{Ask, Lease, Link, TokenMeter, Window};
use super::scripts;
use crate::config::state::{RedisStateConfig, redacted_redis_url};
use crate::key_pool::store::{
    Admission, BackendStatus, Binding, BindingStats, ClientId, ConfigSink, KeyLimits, KeyOutcome,
    KeyStateStore, KeyStatus, MemoryStore, RestReason, SharedKeyState, Slot, Tokens,
};
use crate::time::until_pacific_midnight;

/// Heartbeats older than this no longer count a replica.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Approximate length of the event stream (older events are read back from the records).
const STREAM_LEN: u32 = 10_000;
/// How long an `XREAD` blocks before it is sent again.
const READ_BLOCK: Duration = Duration::from_secs(2);
/// Longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A Pacific day's key lives two days.
const DAY_KEY_MS: u64 = 2 * 86_400_000;

/// Key state shared through Redis (see the module docs).
#[derive(Debug)]
pub struct RedisStore {
    local: MemoryStore,
    leases: Mutex<Leases>,
    /// The pool's slots with their limits taken off, for the local store's checks.
    scratch: Mutex<Vec<(Slot, KeyLimits)>>,
    outbox: Mutex<Vec<Event>>,
    /// Wakes the sync task early (a lease ran low, an event waits).
    wake: Notify,
    link: LinkState,
    prefix: String,
    replica: String,
    sync_interval: Duration,
    /// `state.redis.url` without user or password, for `/health`.
    shown_url: String,
    /// The password (and user), to scrub from error messages before they are logged.
    scrub: Vec<String>,
    /// Where config changes from other replicas go (the gateway).
    config_sink: SinkCell,
    /// The version of the latest config change seen (`None` before the first read-back).
    config_seen: Mutex<Option<u64>>,
    /// Sync rounds run (leases and the link change with each): part of
    /// [`KeyStateStore::generation`].
    rounds: AtomicU64,
}

/// The config sink, set once by the gateway.
#[derive(Default)]
struct SinkCell(std::sync::OnceLock<ConfigSink>);

impl std::fmt::Debug for SinkCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "SinkCell(set)"
        } else {
            "SinkCell(unset)"
        })
    }
}

#[derive(Debug)]
struct LinkState {
    connected: AtomicBool,
    replicas: AtomicU32,
    /// When `connected` last changed (RFC 3339).
    since: Mutex<String>,
    /// Redis time (ms) at a local instant, from the last sync: converts times between replicas.
    clock: Mutex<Option<(Instant, i64)>>,
}

#[derive(Debug, Default)]
struct Leases {
    /// Key ids by slot.
    ids: Vec<Arc<str>>,
    by_key: HashMap<Arc<str>, HashMap<Arc<str>, ModelLeases>>,
    /// Client limits (`auth.rate_limit_per_minute`, the `rpm` claim), by subject or address.
    subjects: HashMap<Arc<str>, ClientLease>,
    ips: HashMap<IpAddr, ClientLease>,
}

#[derive(Debug)]
struct ClientLease {
    lease: Lease,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct ModelLeases {
    rpm: Option<Lease>,
    rpd: Option<Lease>,
    /// The tokens-per-minute limit and what this replica knows of the budget.
    tpm: Option<(u32, TokenMeter)>,
}

/// Something learned here that every replica must know.
#[derive(Debug, Clone)]
enum Event {
    Rest {
        key: Arc<str>,
        model: Arc<str>,
        until: Instant,
        reason: RestReason,
    },
    Invalid {
        key: Arc<str>,
        reason: String,
    },
    Disabled {
        key: Arc<str>,
        disabled: bool,
    },
    Bind {
        resource: Arc<str>,
        binding: Binding,
        expires: Instant,
    },
    Config {
        who: String,
        document: serde_json::Value,
    },
}

/// An event as Redis keeps it (times in Redis's clock, ms since the epoch).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Wire {
    Rest {
        key: String,
        model: String,
        until_ms: i64,
        reason: RestReason,
    },
    Invalid {
        key: String,
        reason: String,
    },
    Disable {
        key: String,
    },
    Enable {
        key: String,
    },
    Bind {
        resource: String,
        binding: WireBinding,
        until_ms: i64,
    },
    /// A config change made through the admin API of replica `origin` (secrets masked).
    Config {
        origin: String,
        who: String,
        document: serde_json::Value,
    },
}

/// A binding's record: the key, and the client that created the resource.
#[derive(Debug, Serialize, Deserialize)]
struct WireBinding {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

impl From<WireBinding> for Binding {
    fn from(w: WireBinding) -> Self {
        Binding {
            key: Arc::from(w.key),
            owner: w.owner.map(Arc::from),
        }
    }
}

impl RedisStore {
    /// A store for `config`, with its background tasks started on the current tokio runtime.
    /// Redis need not be reachable: the store serves from local state and connects when it can.
    pub fn start(config: &RedisStateConfig) -> Arc<Self> {
        let url = config.url().to_owned();
        let scrub = secrets_of(&url);
        let store = Arc::new(Self {
            local: MemoryStore::new(),
            leases: Mutex::default(),
            scratch: Mutex::default(),
            outbox: Mutex::default(),
            wake: Notify::new(),
            link: LinkState {
                connected: AtomicBool::new(false),
                replicas: AtomicU32::new(1),
                since: Mutex::new(crate::time::now_rfc3339()),
                clock: Mutex::new(None),
            },
            prefix: config.key_prefix.clone(),
            replica: random_id(),
            sync_interval: config.sync_interval(),
            shown_url: redacted_redis_url(&url).unwrap_or_default(),
            scrub,
            config_sink: SinkCell::default(),
            config_seen: Mutex::new(None),
            rounds: AtomicU64::new(0),
        });
        match redis::Client::open(url.as_str()) {
            Ok(client) => {
                tokio::spawn(sync_task(Arc::downgrade(&store), client.clone()));
                tokio::spawn(events_task(Arc::downgrade(&store), client));
            }
            Err(e) => tracing::error!(
                url = %store.shown_url,
                error = %store.scrubbed(&e),
                "state.redis.url cannot be used; key state stays local to this replica"
            ),
        }
        store
    }

    /// Whether the last sync reached Redis.
    pub fn connected(&self) -> bool {
        self.link.connected.load(Ordering::Relaxed)
    }

    fn link(&self) -> Link {
        Link {
            connected: self.connected(),
            replicas: self.link.replicas.load(Ordering::Relaxed).max(1),
            sync_interval: self.sync_interval,
        }
    }

    fn leases(&self) -> MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, event: Event) {
        self.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        self.wake.notify_one();
    }

    fn scrubbed(&self, e: &redis::RedisError) -> String {
        scrub(e, &self.scrub)
    }

    fn set_connected(&self, up: bool, error: Option<&redis::RedisError>) {
        if self.link.connected.swap(up, Ordering::Relaxed) == up {
            return;
        }
        *self.link.since.lock().unwrap_or_else(|e| e.into_inner()) = crate::time::now_rfc3339();
        if up {
            tracing::info!(url = %self.shown_url, "shared state: Redis reachable, sharing again");
        } else {
            tracing::warn!(
                url = %self.shown_url,
                error = %error.map(|e| self.scrubbed(e)).unwrap_or_default(),
                "shared state: Redis unreachable; deciding locally from current leases and the fallback share"
            );
        }
    }

    fn redis_ms(&self, t: Instant) -> Option<i64> {
        let (at, ms) = (*self.link.clock.lock().unwrap_or_else(|e| e.into_inner()))?;
        Some(if t >= at {
            ms + (t - at).as_millis() as i64
        } else {
            ms - (at - t).as_millis() as i64
        })
    }

    fn local_instant(&self, redis_ms: i64, now: Instant) -> Instant {
        let clock = *self.link.clock.lock().unwrap_or_else(|e| e.into_inner());
        let Some((at, ms)) = clock else {
            return now;
        };
        let delta = redis_ms - ms;
        if delta >= 0 {
            at + Duration::from_millis(delta as u64)
        } else {
            at.checked_sub(Duration::from_millis(delta.unsigned_abs()))
                .unwrap_or(now)
        }
    }

    fn key_name(&self, kind: &str, key: &str) -> String {
        format!("{}:{kind}:{key}", self.prefix)
    }
}

/// The user and password in a Redis URL, to scrub from error messages before they are logged.
pub(crate) fn secrets_of(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some(parsed) = redis::parse_redis_url(url) {
        if let Some(p) = parsed.password().filter(|p| !p.is_empty()) {
            secrets.push(p.to_owned());
        }
        if !parsed.username().is_empty() {
            secrets.push(parsed.username().to_owned());
        }
    }
    secrets
}

/// A Redis error's message without the user or password of the URL.
pub(crate) fn scrub(e: &redis::RedisError, secrets: &[String]) -> String {
    let mut s = e.to_string();
    for secret in secrets {
        s = s.replace(secret.as_str(), "***");
    }
    s
}

/// Today's number, counted in Pacific days (the day ends at the next Pacific midnight).
fn pacific_day() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    crate::time::next_pacific_midnight(secs)
}

fn random_id() -> String {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The later of two admissions' waits; `Never` wins.
fn combine(a: Admission, b: Admission) -> Admission {
    match (a, b) {
        (Admission::Never, _) | (_, Admission::Never) => Admission::Never,
        (Admission::NotUntil(x), Admission::NotUntil(y)) => Admission::NotUntil(x.max(y)),
        (Admission::NotUntil(x), _) | (_, Admission::NotUntil(x)) => Admission::NotUntil(x),
        _ => Admission::Yes,
    }
}

impl Leases {
    fn model(&self, key: &str, model: &str) -> Option<&ModelLeases> {
        self.by_key.get(key)?.get(model)
    }

    fn model_mut(&mut self, key: &str, model: &str) -> &mut ModelLeases {
        if !self.by_key.contains_key(key) {
            self.by_key.insert(Arc::from(key), HashMap::new());
        }
        let models = self.by_key.get_mut(key).expect("just inserted");
        if !models.contains_key(model) {
            models.insert(Arc::from(model), ModelLeases::default());
        }
        models.get_mut(model).expect("just inserted")
    }
}

impl ModelLeases {
    fn check(&self, limits: &KeyLimits, now: Instant, link: Link) -> Admission {
        let mut a = Admission::Yes;
        if limits.requests_per_minute.is_some()
            && let Some(l) = &self.rpm
        {
            a = combine(a, l.check(now, link));
        }
        if limits.requests_per_day.is_some()
            && let Some(l) = &self.rpd
        {
            a = combine(a, day_wait(l.check(now, link), now));
        }
        if limits.tokens_per_minute.is_some()
            && let Some((_, m)) = &self.tpm
        {
            a = combine(a, m.check(now));
        }
        a
    }

    /// Brings the leases in line with `limits` (a reload, a new day).
    fn follow(&mut self, limits: &KeyLimits, now: Instant) {
        match limits.requests_per_minute {
            Some(rpm) => match &mut self.rpm {
                Some(l) => l.update(Window::Minute, rpm),
                None => self.rpm = Some(Lease::new(Window::Minute, rpm, now)),
            },
            None => self.rpm = None,
        }
        match limits.requests_per_day {
            Some(rpd) => {
                let day = Window::Day(pacific_day());
                match &mut self.rpd {
                    Some(l) => l.update(day, rpd),
                    None => self.rpd = Some(Lease::new(day, rpd, now)),
                }
            }
            None => self.rpd = None,
        }
        match (limits.tokens_per_minute, &mut self.tpm) {
            (Some(tpm), Some((limit, _))) => *limit = tpm,
            (Some(tpm), None) => self.tpm = Some((tpm, TokenMeter::default())),
            (None, _) => self.tpm = None,
        }
    }

    fn take(&mut self, limits: &KeyLimits, now: Instant, link: Link) -> Admission {
        self.follow(limits, now);
        let a = self.check(limits, now, link);
        if a != Admission::Yes {
            return a;
        }
        for l in [&mut self.rpm, &mut self.rpd].into_iter().flatten() {
            l.take(now, link);
        }
        Admission::Yes
    }

    fn runs_low(&self, now: Instant) -> bool {
        [&self.rpm, &self.rpd]
            .into_iter()
            .flatten()
            .any(|l| l.runs_low(now))
    }
}

/// A day lease that is out waits until the Pacific day ends.
fn day_wait(a: Admission, now: Instant) -> Admission {
    match a {
        Admission::NotUntil(t) => Admission::NotUntil(t.max(now + until_pacific_midnight())),
        other => other,
    }
}

const NO_LIMITS: KeyLimits = KeyLimits {
    requests_per_minute: None,
    requests_per_day: None,
    tokens_per_minute: None,
};

impl RedisStore {
    /// [`KeyStateStore::admit`]: the local store (by `slot` when known), then the leases.
    fn admit_in(
        &self,
        slot: Option<Slot>,
        key: &str,
        model: &str,
        limits: &KeyLimits,
        now: Instant,
        take: bool,
    ) -> Admission {
        let local = |take| match slot {
            Some(slot) => self.local.admit_at(slot, key, model, &NO_LIMITS, now, take),
            None => self.local.admit(key, model, &NO_LIMITS, now, take),
        };
        let first = local(false);
        if first != Admission::Yes {
            return first;
        }
        if !model.is_empty() && has_limits(limits) {
            let link = self.link();
            let mut leases = self.leases();
            let a = if take {
                let m = leases.model_mut(key, model);
                let a = m.take(limits, now, link);
                if m.runs_low(now) {
                    self.wake.notify_one();
                }
                a
            } else {
                leases
                    .model(key, model)
                    .map_or(Admission::Yes, |m| m.check(limits, now, link))
            };
            if a != Admission::Yes {
                return a;
            }
        }
        if take { local(true) } else { Admission::Yes }
    }

    /// The token side of [`KeyStateStore::add_tokens`]: the key's tokens-per-minute lease.
    fn lease_tokens(
        &self,
        key: &str,
        model: &str,
        limits: &KeyLimits,
        tokens: Tokens,
        now: Instant,
    ) {
        if let (Some(tpm), false) = (limits.tokens_per_minute, model.is_empty()) {
            let link = self.link();
            let mut leases = self.leases();
            let m = leases.model_mut(key, model);
            let (_, meter) = m.tpm.get_or_insert_with(|| (tpm, TokenMeter::default()));
            meter.add(tokens.total, tpm, now, link);
        }
    }
}

fn has_limits(l: &KeyLimits) -> bool {
    l.requests_per_minute.is_some() || l.requests_per_day.is_some() || l.tokens_per_minute.is_some()
}

impl KeyStateStore for RedisStore {
    fn slot(&self, key: &str) -> Slot {
        let slot = self.local.slot(key);
        let mut leases = self.leases();
        if leases.ids.len() <= slot.0 {
            leases.ids.resize(slot.0 + 1, Arc::from(""));
        }
        if &*leases.ids[slot.0] != key {
            leases.ids[slot.0] = Arc::from(key);
        }
        slot
    }

    fn admit_all(
        &self,
        keys: &[(Slot, KeyLimits)],
        model: &str,
        now: Instant,
        out: &mut Vec<Admission>,
    ) {
        {
            let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            scratch.clear();
            scratch.extend(keys.iter().map(|(s, _)| (*s, NO_LIMITS)));
            self.local.admit_all(&scratch, model, now, out);
        }
        if model.is_empty() {
            return;
        }
        let link = self.link();
        let leases = self.leases();
        for ((slot, limits), admission) in keys.iter().zip(out.iter_mut()) {
            if *admission != Admission::Yes || !has_limits(limits) {
                continue;
            }
            let Some(id) = leases.ids.get(slot.0) else {
                continue;
            };
            if let Some(m) = leases.model(id, model) {
                *admission = m.check(limits, now, link);
            }
        }
    }

    fn generation(&self) -> Option<u64> {
        let local = self.local.generation()?;
        Some(local.wrapping_add(self.rounds.load(Ordering::Acquire)))
    }

    fn admit(
        &self,
        key: &str,
        model: &str,
        limits: &KeyLimits,
        now: Instant,
        take: bool,
    ) -> Admission {
        self.admit_in(None, key, model, limits, now, take)
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
        self.admit_in(Some(slot), key, model, limits, now, take)
    }

    fn add_tokens(&self, key: &str, model: &str, limits: &KeyLimits, tokens: Tokens, now: Instant) {
        self.local.add_tokens(key, model, &NO_LIMITS, tokens, now);
        self.lease_tokens(key, model, limits, tokens, now);
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
        self.local
            .add_tokens_at(slot, key, model, &NO_LIMITS, tokens, now);
        self.lease_tokens(key, model, limits, tokens, now);
    }

    fn rest(&self, key: &str, model: &str, until: Instant, reason: RestReason) {
        self.local.rest(key, model, until, reason);
        self.send(Event::Rest {
            key: Arc::from(key),
            model: Arc::from(model),
            until,
            reason,
        });
    }

    fn invalidate(&self, key: &str, reason: &str) {
        self.local.invalidate(key, reason);
        self.send(Event::Invalid {
            key: Arc::from(key),
            reason: reason.to_owned(),
        });
    }

    fn set_disabled(&self, key: &str, disabled: bool) {
        self.local.set_disabled(key, disabled);
        self.send(Event::Disabled {
            key: Arc::from(key),
            disabled,
        });
    }

    fn record(&self, key: &str, outcome: KeyOutcome) {
        self.local.record(key, outcome);
    }

    fn record_at(&self, slot: Slot, key: &str, outcome: KeyOutcome) {
        self.local.record_at(slot, key, outcome);
    }

    fn status(&self, key: &str, now: Instant) -> KeyStatus {
        self.local.status(key, now)
    }

    fn retain_keys(&self, keep: &[&str]) {
        self.local.retain_keys(keep);
        self.leases().by_key.retain(|id, _| keep.contains(&&**id));
    }

    fn bind(&self, resource: &str, binding: Binding, expires: Instant) {
        self.local.bind(resource, binding.clone(), expires);
        self.send(Event::Bind {
            resource: Arc::from(resource),
            binding,
            expires,
        });
    }

    fn bound(&self, resource: &str, now: Instant) -> Option<Binding> {
        self.local.bound(resource, now)
    }

    fn binding_stats(&self) -> BindingStats {
        self.local.binding_stats()
    }

    fn admit_client(&self, client: ClientId<'_>, rpm: u32, now: Instant) -> Option<Admission> {
        let link = self.link();
        let mut leases = self.leases();
        let new = || ClientLease {
            lease: Lease::new(Window::Minute, rpm, now),
            last_used: now,
        };
        let c = match client {
            ClientId::Subject(sub) => {
                if !leases.subjects.contains_key(sub) {
                    leases.subjects.insert(Arc::from(sub), new());
                }
                leases.subjects.get_mut(sub).expect("just inserted")
            }
            ClientId::Ip(ip) => leases.ips.entry(ip).or_insert_with(new),
        };
        c.lease.update(Window::Minute, rpm);
        c.last_used = now;
        let a = c.lease.take(now, link);
        if c.lease.runs_low(now) {
            self.wake.notify_one();
        }
        Some(a)
    }

    fn share_config(&self, who: &str, document: &serde_json::Value) {
        self.send(Event::Config {
            who: who.to_owned(),
            document: document.clone(),
        });
    }

    fn on_shared_config(&self, sink: ConfigSink) {
        let _ = self.config_sink.0.set(sink);
    }

    fn backend(&self) -> BackendStatus {
        BackendStatus {
            backend: "redis",
            connected: Some(self.connected()),
            since: Some(
                self.link
                    .since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            ),
            url: Some(self.shown_url.clone()),
            replicas: Some(self.link.replicas.load(Ordering::Relaxed).max(1)),
        }
    }
}

// ---- background: sync -------------------------------------------------------------------------

/// A connection manager that reconnects by itself (with short time-outs: a background task
/// retries rather than waits).
pub(crate) async fn connect(
    client: &redis::Client,
    response_timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(MAX_BACKOFF);
    client.get_connection_manager_with_config(config).await
}

async fn sync_task(store: Weak<RedisStore>, client: redis::Client) {
    let sync = Script::new(scripts::SYNC);
    let event = Script::new(scripts::EVENT);
    let mut conn: Option<ConnectionManager> = None;
    let mut logged_start = false;
    loop {
        let Some(s) = store.upgrade() else { return };
        let interval = s.sync_interval;
        s.rounds.fetch_add(1, Ordering::Release);
        if conn.is_none() {
            match connect(&client, Duration::from_secs(1).max(interval * 5)).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    if !logged_start {
                        logged_start = true;
                        tracing::warn!(
                            url = %s.shown_url,
                            error = %s.scrubbed(&e),
                            "shared state: Redis unreachable at start; serving from local state until it is"
                        );
                    }
                    drop(s);
                    tokio::time::sleep(interval.min(MAX_BACKOFF)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let synced = sync_once(&s, c, &sync).await;
        s.rounds.fetch_add(1, Ordering::Release);
        match synced {
            Ok(()) => {
                s.set_connected(true, None);
                if let Err(e) = flush_events(&s, c, &event).await {
                    s.set_connected(false, Some(&e));
                }
            }
            Err(e) => s.set_connected(false, Some(&e)),
        }
        // A lease running low wakes the next round early, but never sooner than a twentieth of
        // the interval after this one: under load, syncs do not run back to back. (Holding the
        // store meanwhile is harmless: the next round sees it gone.)
        let gap = interval / 20;
        tokio::time::sleep(gap).await;
        let _ = tokio::time::timeout(interval - gap, s.wake.notified()).await;
    }
}

/// One sync round: heartbeat, lease top-ups, returns, charges and tokens in one script call.
async fn sync_once(
    s: &RedisStore,
    conn: &mut ConnectionManager,
    script: &Script,
) -> redis::RedisResult<()> {
    let items = s.leases().plan(Instant::now(), s.link());
    let mut inv = script.prepare_invoke();
    inv.key(format!("{}:replicas", s.prefix));
    inv.arg(&s.replica).arg(HEARTBEAT.as_millis() as u64);
    for it in &items {
        let (kind, window_ms) = match it.what {
            What::Rpm | What::Client(_) => ("m", 60_000),
            What::Rpd(_) => ("d", DAY_KEY_MS),
            What::Tpm => ("t", 60_000),
        };
        inv.key(it.redis_key(&s.prefix));
        inv.arg(kind)
            .arg(it.limit)
            .arg(it.ask.want)
            .arg(it.ask.give_back)
            .arg(it.ask.charge)
            .arg(window_ms);
    }
    let answer: redis::RedisResult<Vec<i64>> = inv.invoke_async(conn).await;
    let now = Instant::now();
    let mut leases = s.leases();
    let answer = match answer {
        Ok(a) if a.len() == 2 + 2 * items.len() => a,
        other => {
            for it in &items {
                leases.undo(it);
            }
            return Err(other.err().unwrap_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Parse, "unexpected sync answer"))
            }));
        }
    };
    *s.link.clock.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, answer[0]));
    let replicas = u32::try_from(answer[1]).unwrap_or(1).max(1);
    s.link.replicas.store(replicas, Ordering::Relaxed);
    let link = Link {
        connected: true,
        replicas,
        sync_interval: s.sync_interval,
    };
    for (i, it) in items.iter().enumerate() {
        let granted = u32::try_from(answer[2 + 2 * i]).unwrap_or(0);
        leases.answered(it, granted, answer[3 + 2 * i], now, link);
    }
    Ok(())
}

/// One lease's part of a sync.
struct Item {
    key: Arc<str>,
    model: Arc<str>,
    what: What,
    limit: u32,
    ask: Ask,
}

#[derive(Clone)]
enum What {
    Rpm,
    Rpd(i64),
    Tpm,
    Client(ClientRef),
}

/// A client's lease, owned (the request path borrows: [`ClientId`]).
#[derive(Clone, PartialEq, Eq, Hash)]
enum ClientRef {
    Subject(Arc<str>),
    Ip(IpAddr),
}

impl Item {
    fn redis_key(&self, prefix: &str) -> String {
        let (key, model) = (&self.key, &self.model);
        match &self.what {
            What::Rpm => format!("{prefix}:rpm:{key}:{model}"),
            What::Rpd(day) => format!("{prefix}:rpd:{key}:{model}:{day}"),
            What::Tpm => format!("{prefix}:tpm:{key}:{model}"),
            What::Client(ClientRef::Subject(sub)) => format!("{prefix}:client:sub:{sub}"),
            What::Client(ClientRef::Ip(ip)) => format!("{prefix}:client:ip:{ip}"),
        }
    }
}

/// How long an idle client's lease is remembered (a minute: its GCRA window).
const CLIENT_IDLE: Duration = Duration::from_secs(60);

impl Leases {
    /// What every lease tells Redis at this sync.
    fn plan(&mut self, now: Instant, link: Link) -> Vec<Item> {
        let mut items = Vec::new();
        for (key, models) in &mut self.by_key {
            for (model, m) in models.iter_mut() {
                let item = |what, limit, ask| Item {
                    key: key.clone(),
                    model: model.clone(),
                    what,
                    limit,
                    ask,
                };
                if let Some(l) = &mut m.rpm {
                    let ask = l.plan(now, link);
                    if !ask.is_empty() {
                        items.push(item(What::Rpm, l.limit(), ask));
                    }
                }
                if let Some(l) = &mut m.rpd
                    && let Window::Day(day) = l.window()
                {
                    let ask = l.plan(now, link);
                    if !ask.is_empty() {
                        items.push(item(What::Rpd(day), l.limit(), ask));
                    }
                }
                if let Some((limit, meter)) = &mut m.tpm {
                    // Always asked: the answer says what every replica spent.
                    let charge = u32::try_from(meter.report()).unwrap_or(u32::MAX);
                    let ask = Ask {
                        charge,
                        ..Ask::default()
                    };
                    items.push(item(What::Tpm, *limit, ask));
                }
            }
        }
        let none: Arc<str> = Arc::from("");
        let mut plan_client = |who: ClientRef, c: &mut ClientLease| -> bool {
            let ask = c.lease.plan(now, link);
            if !ask.is_empty() {
                items.push(Item {
                    key: none.clone(),
                    model: none.clone(),
                    what: What::Client(who),
                    limit: c.lease.limit(),
                    ask,
                });
                return true;
            }
            !(c.lease.is_idle(now) && c.last_used + CLIENT_IDLE <= now)
        };
        self.subjects
            .retain(|sub, c| plan_client(ClientRef::Subject(sub.clone()), c));
        self.ips.retain(|ip, c| plan_client(ClientRef::Ip(*ip), c));
        items
    }

    fn lease_mut(&mut self, it: &Item) -> Option<&mut Lease> {
        match &it.what {
            What::Client(ClientRef::Subject(sub)) => {
                self.subjects.get_mut(sub).map(|c| &mut c.lease)
            }
            What::Client(ClientRef::Ip(ip)) => self.ips.get_mut(ip).map(|c| &mut c.lease),
            what => {
                let m = self.by_key.get_mut(&it.key)?.get_mut(&it.model)?;
                match what {
                    What::Rpm => m.rpm.as_mut(),
                    What::Rpd(_) => m.rpd.as_mut(),
                    _ => None,
                }
            }
        }
    }

    fn meter_mut(&mut self, it: &Item) -> Option<&mut TokenMeter> {
        let m = self.by_key.get_mut(&it.key)?.get_mut(&it.model)?;
        m.tpm.as_mut().map(|(_, meter)| meter)
    }

    /// Books Redis's answer: `granted` units, and `extra` (GCRA: ms its arrival time is past
    /// now; day: units left today).
    fn answered(&mut self, it: &Item, granted: u32, extra: i64, now: Instant, link: Link) {
        if let What::Tpm = it.what {
            if let Some(meter) = self.meter_mut(it) {
                meter.answered(Duration::from_millis(extra.max(0) as u64), it.limit, now);
            }
            return;
        }
        let (free, free_at) = match it.what {
            What::Rpd(_) => (
                u32::try_from(extra.max(0)).unwrap_or(u32::MAX),
                (extra == 0).then(|| now + until_pacific_midnight()),
            ),
            _ => {
                // Out when the next unit's arrival time is past the window; it frees when that
                // is one interval inside. Free: the units that fit between the arrival time and
                // the window's end.
                let limit = i64::from(it.limit.max(1));
                let interval = 60_000 / limit;
                let wait = extra + interval - 60_000;
                let free = (60_000 - extra.clamp(0, 60_000)) * limit / 60_000;
                (
                    u32::try_from(free).unwrap_or(0),
                    (wait > 0).then(|| now + Duration::from_millis(wait as u64)),
                )
            }
        };
        if let Some(l) = self.lease_mut(it) {
            l.answered(granted, free, free_at, now, link);
        }
    }

    /// Redis did not answer: the ask is kept for the next round.
    fn undo(&mut self, it: &Item) {
        if let What::Tpm = it.what {
            if let Some(meter) = self.meter_mut(it) {
                meter.unreported(u64::from(it.ask.charge));
            }
        } else if let Some(l) = self.lease_mut(it) {
            l.unanswered(it.ask);
        }
    }
}

/// Writes the events learned here; what Redis did not take stays for the next round.
async fn flush_events(
    s: &RedisStore,
    conn: &mut ConnectionManager,
    script: &Script,
) -> redis::RedisResult<()> {
    let events = std::mem::take(&mut *s.outbox.lock().unwrap_or_else(|e| e.into_inner()));
    let now = Instant::now();
    let mut sent = 0;
    let mut result = Ok(());
    for event in &events {
        let Some((kind, record, field, ttl_ms, wire)) = s.wire(event, now) else {
            sent += 1;
            continue;
        };
        let Ok(json) = serde_json::to_string(&wire) else {
            sent += 1;
            continue;
        };
        let r: redis::RedisResult<String> = script
            .key(format!("{}:events", s.prefix))
            .key(record)
            .key(s.key_name("config", "version"))
            .arg(kind)
            .arg(json)
            .arg(field)
            .arg(ttl_ms)
            .arg(STREAM_LEN)
            .invoke_async(conn)
            .await;
        if let Err(e) = r {
            result = Err(e);
            break;
        }
        sent += 1;
    }
    if sent < events.len() {
        let mut outbox = s.outbox.lock().unwrap_or_else(|e| e.into_inner());
        let rest: Vec<Event> = events[sent..].to_vec();
        outbox.splice(0..0, rest);
    }
    result
}

impl RedisStore {
    /// An event as written to Redis: `(kind, record key, hash field, ttl ms, event)`.
    fn wire(
        &self,
        event: &Event,
        now: Instant,
    ) -> Option<(&'static str, String, String, u64, Wire)> {
        Some(match event {
            Event::Rest {
                key,
                model,
                until,
                reason,
            } => {
                if *until <= now {
                    return None;
                }
                (
                    "rest",
                    self.key_name("key", key),
                    format!("rest:{model}"),
                    0,
                    Wire::Rest {
                        key: key.to_string(),
                        model: model.to_string(),
                        until_ms: self.redis_ms(*until)?,
                        reason: *reason,
                    },
                )
            }
            Event::Invalid { key, reason } => (
                "invalid",
                self.key_name("key", key),
                "invalid".into(),
                0,
                Wire::Invalid {
                    key: key.to_string(),
                    reason: reason.clone(),
                },
            ),
            Event::Disabled {
                key,
                disabled: true,
            } => (
                "disable",
                self.key_name("key", key),
                "disabled".into(),
                0,
                Wire::Disable {
                    key: key.to_string(),
                },
            ),
            Event::Disabled {
                key,
                disabled: false,
            } => (
                "enable",
                self.key_name("key", key),
                String::new(),
                0,
                Wire::Enable {
                    key: key.to_string(),
                },
            ),
            Event::Config { who, document } => (
                "config",
                self.key_name("config", "latest"),
                String::new(),
                0,
                Wire::Config {
                    origin: self.replica.clone(),
                    who: who.clone(),
                    document: document.clone(),
                },
            ),
            Event::Bind {
                resource,
                binding,
                expires,
            } => {
                if *expires <= now {
                    return None;
                }
                (
                    "bind",
                    self.key_name("bind", resource),
                    String::new(),
                    (*expires - now).as_millis() as u64,
                    Wire::Bind {
                        resource: resource.to_string(),
                        binding: WireBinding {
                            key: binding.key.to_string(),
                            owner: binding.owner.as_deref().map(str::to_owned),
                        },
                        until_ms: self.redis_ms(*expires)?,
                    },
                )
            }
        })
    }

    /// Applies an event read from Redis to the local copy (never sent on again).
    fn apply(&self, wire: Wire, now: Instant) {
        match wire {
            Wire::Rest {
                key,
                model,
                until_ms,
                reason,
            } => {
                let until = self.local_instant(until_ms, now);
                if until > now {
                    self.local.rest(&key, &model, until, reason);
                }
            }
            Wire::Invalid { key, reason } => self.local.invalidate(&key, &reason),
            Wire::Disable { key } => self.local.set_disabled(&key, true),
            Wire::Enable { key } => self.local.set_disabled(&key, false),
            Wire::Bind {
                resource,
                binding,
                until_ms,
            } => {
                let expires = self.local_instant(until_ms, now);
                if expires > now {
                    self.local.bind(&resource, binding.into(), expires);
                }
            }
            // Its own changes are not applied twice.
            Wire::Config {
                origin,
                who,
                document,
            } => {
                if origin != self.replica
                    && let Some(sink) = self.config_sink.0.get()
                {
                    sink(&who, document);
                }
            }
        }
    }

    /// Notes a config change's version read live from the stream (applied by [`Self::apply`]).
    fn saw_config(&self, version: u64) {
        *self.config_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(version);
    }

    /// After (re)connecting: applies the latest config change (`{v, e}` of `P:config:latest`)
    /// when it is newer than the last one this replica saw. The first read-back of a process
    /// only notes the version (at start, the replica's own config file wins); after Redis lost
    /// its data the versions start again.
    fn catch_up_config(&self, latest: &HashMap<String, String>, lost: bool) {
        let version = latest
            .get("v")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let mut seen = self.config_seen.lock().unwrap_or_else(|e| e.into_inner());
        let missed = match *seen {
            None => false,
            Some(_) if lost => version > 0,
            Some(s) => version > s,
        };
        *seen = Some(version);
        drop(seen);
        if !missed {
            return;
        }
        let own_waiting = self
            .outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|e| matches!(e, Event::Config { .. }));
        if own_waiting {
            // A change made here while apart is about to be written: it is the newer one.
            return;
        }
        if let Some(wire @ Wire::Config { .. }) = latest
            .get("e")
            .and_then(|e| serde_json::from_str::<Wire>(e).ok())
        {
            tracing::info!(
                version,
                "shared state: applying the config change made on another replica while apart"
            );
            self.apply(wire, Instant::now());
        }
    }

    /// This replica's whole shared state as events (to write back into a Redis that lost it).
    fn everything(&self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        for id in self.local.key_ids() {
            let st = self.local.shared_state(&id);
            if st.disabled {
                events.push(Event::Disabled {
                    key: id.clone(),
                    disabled: true,
                });
            }
            if let Some(reason) = st.invalid {
                events.push(Event::Invalid {
                    key: id.clone(),
                    reason,
                });
            }
            for (model, until, reason) in st.rests {
                if until > now {
                    events.push(Event::Rest {
                        key: id.clone(),
                        model,
                        until,
                        reason,
                    });
                }
            }
        }
        for (resource, binding, expires) in self.local.bindings(now) {
            events.push(Event::Bind {
                resource,
                binding,
                expires,
            });
        }
        events
    }
}

// ---- background: events ------------------------------------------------------------------------

async fn events_task(store: Weak<RedisStore>, client: redis::Client) {
    let mut conn: Option<ConnectionManager> = None;
    let mut epoch: Option<String> = None;
    let mut last_id: Option<String> = None;
    loop {
        let Some(s) = store.upgrade() else { return };
        let backoff = s.sync_interval.min(MAX_BACKOFF);
        if conn.is_none() {
            match connect(&client, READ_BLOCK * 2).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    drop(s);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let result = match &last_id {
            None => resync(&s, c, &mut epoch).await.map(|id| last_id = Some(id)),
            Some(id) => read_events(&s, c, id).await.map(|id| last_id = Some(id)),
        };
        drop(s);
        if result.is_err() {
            // Read everything back once Redis answers again: events may have been missed.
            last_id = None;
            tokio::time::sleep(backoff).await;
        }
    }
}

/// Reads the records back after (re)connecting; answers the stream id to read on from.
async fn resync(
    s: &RedisStore,
    conn: &mut ConnectionManager,
    epoch: &mut Option<String>,
) -> redis::RedisResult<String> {
    let events_key = format!("{}:events", s.prefix);
    // The stream's position first, so nothing written during the read-back is missed.
    let newest: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
        .arg(&events_key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let from = newest
        .first()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone());
    let epoch_key = format!("{}:epoch", s.prefix);
    let _: bool = redis::cmd("SET")
        .arg(&epoch_key)
        .arg(random_id())
        .arg("NX")
        .query_async(conn)
        .await
        .map(|v: Option<String>| v.is_some())?;
    let current: String = conn.get(&epoch_key).await?;
    let now = Instant::now();
    let lost = epoch.as_ref().is_some_and(|e| *e != current);
    *epoch = Some(current);
    if lost {
        // Redis came back empty: what this replica knows is written back, nothing is cleared.
        tracing::info!("shared state: Redis lost its data; writing this replica's state back");
        let all = s.everything(now);
        s.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(all);
        s.wake.notify_one();
    }
    // The latest config change: applied when this replica missed it while apart.
    let latest: HashMap<String, String> = conn.hgetall(s.key_name("config", "latest")).await?;
    s.catch_up_config(&latest, lost);
    // Keys: each hash is the whole shared state of a key (a key without one is clean).
    let mut records: HashMap<String, SharedKeyState> = HashMap::new();
    let pattern = format!("{}:key:*", s.prefix);
    let names = scan(conn, &pattern).await?;
    for name in names {
        let fields: HashMap<String, String> = conn.hgetall(&name).await?;
        let mut st = SharedKeyState::default();
        let mut id = name[s.prefix.len() + 5..].to_owned();
        for (field, value) in fields {
            match serde_json::from_str::<Wire>(&value) {
                Ok(Wire::Disable { key }) => {
                    st.disabled = true;
                    id = key;
                }
                Ok(Wire::Invalid { key, reason }) => {
                    st.invalid = Some(reason);
                    id = key;
                }
                Ok(Wire::Rest {
                    key,
                    model,
                    until_ms,
                    reason,
                }) => {
                    let until = s.local_instant(until_ms, now);
                    if until > now {
                        st.rests.push((Arc::from(model.as_str()), until, reason));
                    } else {
                        let _: redis::RedisResult<()> = conn.hdel(&name, &field).await;
                    }
                    id = key;
                }
                _ => {}
            }
        }
        records.insert(id, st);
    }
    for id in s.local.key_ids() {
        let remote = records.remove(&*id).unwrap_or_default();
        if lost {
            // Merge only: the replica's own state is being written back.
            let mut mine = s.local.shared_state(&id);
            mine.disabled |= remote.disabled;
            if mine.invalid.is_none() {
                mine.invalid = remote.invalid;
            }
            mine.rests.extend(remote.rests);
            s.local.set_shared_state(&id, mine);
        } else {
            s.local.set_shared_state(&id, remote);
        }
    }
    // Bindings.
    let pattern = format!("{}:bind:*", s.prefix);
    for name in scan(conn, &pattern).await? {
        let (value, ttl): (Option<String>, i64) = redis::pipe()
            .get(&name)
            .pttl(&name)
            .query_async(conn)
            .await?;
        if let (Some(value), true) = (value, ttl > 0)
            && let Ok(Wire::Bind {
                resource, binding, ..
            }) = serde_json::from_str::<Wire>(&value)
        {
            s.local.bind(
                &resource,
                binding.into(),
                now + Duration::from_millis(ttl as u64),
            );
        }
    }
    Ok(from)
}

async fn scan(conn: &mut ConnectionManager, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut names = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        names.extend(batch);
        if next == 0 {
            return Ok(names);
        }
        cursor = next;
    }
}

/// Waits for events after `from` and applies them; answers the last id read.
async fn read_events(
    s: &RedisStore,
    conn: &mut ConnectionManager,
    from: &str,
) -> redis::RedisResult<String> {
    type Reply = Option<Vec<(String, Vec<(String, HashMap<String, String>)>)>>;
    let reply: Reply = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(1000)
        .arg("BLOCK")
        .arg(READ_BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(format!("{}:events", s.prefix))
        .arg(from)
        .query_async(conn)
        .await?;
    let mut last = from.to_owned();
    let now = Instant::now();
    for (_, entries) in reply.unwrap_or_default() {
        for (id, fields) in entries {
            if let Some(wire) = fields
                .get("e")
                .and_then(|e| serde_json::from_str::<Wire>(e).ok())
            {
                if let Some(v) = fields.get("v").and_then(|v| v.parse::<u64>().ok()) {
                    s.saw_config(v);
                }
                s.apply(wire, now);
            }
            last = id;
        }
    }
    Ok(last)
}
