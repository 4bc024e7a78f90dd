//! Metrics: what `/metrics`, `/performance` and `/errors` on the admin listener report.
//!
//! Instruments are made through the OpenTelemetry metrics API and read by the
//! `opentelemetry-prometheus` exporter into a private `prometheus::Registry`, rendered in the
//! Prometheus text format on `GET /metrics`. Counters end in `_total`, durations are histograms in
//! seconds.
//!
//! # Series
//! | name | type | labels |
//! |---|---|---|
//! | `gem_proxy_requests_total` | counter | `route`, `model`, `status_class`, `outcome` |
//! | `gem_proxy_request_duration_seconds` | histogram (5 ms … 10 min) | `route`, `model`, `status_class` |
//! | `gem_proxy_time_to_first_byte_seconds` | histogram, streamed answers | `route`, `model` |
//! | `gem_proxy_requests_in_flight` | gauge | — |
//! | `gem_proxy_upstream_attempts_total` | counter | `key_id`, `result` |
//! | `gem_proxy_upstream_attempt_duration_seconds` | histogram (to response headers) | `key_id` |
//! | `gem_proxy_retries_total` | counter: attempts replayed on another key (failovers) | `reason` |
//! | `gem_proxy_model_fallbacks_total` | counter: requests served by a fallback model (`gemini.models.fallbacks`) | — |
//! | `gem_proxy_stream_heartbeats_total` | counter: heartbeats written into silent event streams (`gemini.stream_heartbeat_seconds`) | — |
//! | `gem_proxy_live_sessions_open` | gauge: Live API sessions (WebSocket) open now | — |
//! | `gem_proxy_live_sessions_closed_total` | counter: Live sessions ended | `reason` (`client`, `upstream`, `quota`, `going_away`, `refused`, `broken`, `no_key`) |
//! | `gem_proxy_live_session_duration_seconds` | histogram (1 s … 1 h): Live sessions, upgrade to close | — |
//! | `gem_proxy_live_frames_total`, `gem_proxy_live_payload_bytes_total` | counters: Live messages and their payload bytes relayed | `direction` (`to_upstream`, `to_client`) |
//! | `gem_proxy_overridden_requests_total` | counter: request bodies changed by `gemini.overrides` | — |
//! | `gem_proxy_cache_requests_total` | counter: cacheable requests by what the response cache did (`hit`, `miss`, `bypass`: the client's `Cache-Control`) | `result` |
//! | `gem_proxy_cache_bytes` / `gem_proxy_cache_entries` / `gem_proxy_cache_evictions_total` | gauges / counter: what the response cache holds, and answers dropped to stay within `cache.max_bytes` | — |
//! | `gem_proxy_rate_limited_total` | counter | `limiter` (`client`, `key_pool`, `upstream`) |
//! | `gem_proxy_auth_failures_total` | counter | `reason` |
//! | `gem_proxy_gateway_errors_total` | counter: errors the gateway answered itself | `kind` |
//! | `gem_proxy_tokens_total` | counter, from `usageMetadata` | `kind` (`prompt`, `candidates`, `thoughts`, `cached`), `model` |
//! | `gem_proxy_key_cooldowns_total` | counter: rests started | `key_id`, `reason` |
//! | `gem_proxy_key_state` | gauge, 1 for the key's state | `key_id`, `state` (`active`, `cooling`, `invalid`, `disabled`) |
//! | `gem_proxy_key_cooldown_remaining_seconds` | gauge: longest rest left over its models | `key_id` |
//! | `gem_proxy_keys` | gauge: keys per state | `state` |
//! | `gem_proxy_key_requests_total`, `gem_proxy_key_errors_total`, `gem_proxy_key_tokens_total` | counters kept by the key-state store | `key_id` (+ `kind`) |
//! | `gem_proxy_affinity_bindings` / `gem_proxy_affinity_bindings_evicted_total` | gauge / counter: bindings held, and dropped at the cap (least recently used) | — |
//! | `gem_proxy_state_backend_up` | gauge: 1 while the key-state backend is usable (memory always; redis while it answers) | `backend` |
//! | `gem_proxy_connections_open` / `gem_proxy_connections_total` | gauge / counter | `listener` (`proxy`, `admin`) |
//! | `gem_proxy_tls_certificate_expiry_timestamp_seconds` | gauge, once TLS reports it | — |
//! | `gem_proxy_client_requests_total`, `gem_proxy_client_tokens_total` | counters, only with `metrics.per_client` | `client`, `status_class` / `kind` |
//! | `gem_proxy_usage_rows_dropped_total` | counter: usage-history reports dropped (writer behind) | — |
//! | `gem_proxy_build_info` | gauge = 1 | `version` |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_threads`, `process_start_time_seconds` | from `/proc/self` | — |
//!
//! # Bounded labels
//! Routes, status classes, outcomes, reasons and kinds come from fixed sets. Key ids come from the
//! config. A model enters the `model` label only once an answer for it succeeded, and at most
//! `metrics.max_model_labels` of them (then `other`), so made-up model names cannot grow the
//! label set. Clients are labelled only with `metrics.per_client: true`, at most
//! `metrics.max_client_labels` of them.
//!
//! # The hot path
//! Every series is recorded through a *bound* instrument (its attributes resolved once, on first
//! use, then cached in a lock-free cell), so recording a request costs a few atomic additions: no
//! lock, no allocation, no attribute lookup.

pub mod errors;
pub mod labels;
pub mod performance;
pub mod process;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, BoundUpDownCounter, Counter, Histogram, Meter, MeterProvider,
};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::config::MetricsConfig;
use crate::gateway::Gateway;
use crate::key_pool::verdict::Verdict;
use crate::key_pool::{RestReason, Slot, Tokens, UpstreamKey};
use crate::route::RouteLabel;
use errors::ErrorLog;
use labels::{BoundedSet, Outcome, StatusClass};
use performance::{Sample, Window};

/// Buckets of `gem_proxy_live_session_duration_seconds`: a Live session lasts seconds to an hour.
pub const LIVE_SESSION_BUCKETS: [f64; 11] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
];

/// Histogram buckets for request and attempt durations, in seconds: from 5 ms to the ten minutes
/// a thinking model may take.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// Why a failed attempt was replayed on another key: the `reason` of `gem_proxy_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// Google answered 429 (per-minute or unspecified quota).
    RateLimited,
    /// Google answered 429 for a daily quota.
    ExhaustedToday,
    /// The key cannot use the model (`FAILED_PRECONDITION`).
    Unusable,
    /// The key is invalid or suspended.
    InvalidKey,
    /// 503: the model is overloaded.
    Overloaded,
    /// 500, 502, 504 and other 5xx from Google.
    ServerError,
    /// The upstream could not be reached.
    Unreachable,
    /// No response headers in time.
    Timeout,
}

impl RetryReason {
    const ALL: [RetryReason; 8] = [
        RetryReason::RateLimited,
        RetryReason::ExhaustedToday,
        RetryReason::Unusable,
        RetryReason::InvalidKey,
        RetryReason::Overloaded,
        RetryReason::ServerError,
        RetryReason::Unreachable,
        RetryReason::Timeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::RateLimited => "rate_limited",
            RetryReason::ExhaustedToday => "exhausted_today",
            RetryReason::Unusable => "unusable",
            RetryReason::InvalidKey => "invalid_key",
            RetryReason::Overloaded => "overloaded",
            RetryReason::ServerError => "server_error",
            RetryReason::Unreachable => "unreachable",
            RetryReason::Timeout => "timeout",
        }
    }

    /// Why a verdict leads to another key being tried; `None` when it does not.
    pub fn for_verdict(verdict: &Verdict) -> Option<RetryReason> {
        Some(match verdict {
            Verdict::Rest(_, RestReason::RateLimited) => RetryReason::RateLimited,
            Verdict::Rest(_, RestReason::ExhaustedToday) => RetryReason::ExhaustedToday,
            Verdict::Rest(_, RestReason::Unusable) => RetryReason::Unusable,
            Verdict::Rest(_, RestReason::ProxyUnreachable) => RetryReason::Unreachable,
            Verdict::Invalid(_) | Verdict::StaleCredential => RetryReason::InvalidKey,
            Verdict::Overloaded => RetryReason::Overloaded,
            Verdict::ServerError => RetryReason::ServerError,
            Verdict::Success | Verdict::ClientError => return None,
        })
    }
}

/// How one upstream attempt went: the `result` of `gem_proxy_upstream_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// An answer with this status.
    Status(http::StatusCode),
    /// The upstream could not be reached.
    Unreachable,
    /// No response headers in time.
    Timeout,
}

impl AttemptResult {
    const COUNT: usize = 7;

    fn index(self) -> usize {
        match self {
            AttemptResult::Status(s) if s.as_u16() == 429 => 0,
            AttemptResult::Status(s) => match StatusClass::of(s) {
                StatusClass::Informational | StatusClass::Success => 1,
                StatusClass::Redirection => 2,
                StatusClass::ClientError => 3,
                StatusClass::ServerError => 4,
            },
            AttemptResult::Unreachable => 5,
            AttemptResult::Timeout => 6,
        }
    }

    fn label(index: usize) -> &'static str {
        ["429", "2xx", "3xx", "4xx", "5xx", "unreachable", "timeout"][index]
    }
}

/// Token kinds, in the order of the `kind` label cells.
const TOKEN_KINDS: [&str; 4] = ["prompt", "candidates", "thoughts", "cached"];

fn token_values(t: &Tokens) -> [u64; 4] {
    [t.prompt, t.candidates, t.thoughts, t.cached]
}

/// Bound instruments of one model (lazily bound, cell by cell, on first use).
struct ModelCells {
    name: Arc<str>,
    requests: Box<[OnceLock<BoundCounter<u64>>]>,
    duration: Box<[OnceLock<BoundHistogram<f64>>]>,
    ttfb: Box<[OnceLock<BoundHistogram<f64>>]>,
    tokens: [OnceLock<BoundCounter<u64>>; 4],
}

impl ModelCells {
    fn new(name: Arc<str>) -> Self {
        let routes = RouteLabel::ALL.len();
        Self {
            name,
            requests: cells(routes * StatusClass::COUNT * Outcome::COUNT),
            duration: cells(routes * StatusClass::COUNT),
            ttfb: cells(routes),
            tokens: Default::default(),
        }
    }
}

/// Slots beyond this are looked up by id (a store hands out one slot per key id it has seen).
const MAX_KEY_SLOTS: usize = 1 << 16;

fn cells<T>(n: usize) -> Box<[OnceLock<T>]> {
    (0..n).map(|_| OnceLock::new()).collect()
}

/// Bound instruments and the `/performance` window of one upstream key.
struct KeyCells {
    id: Arc<str>,
    attempts: [OnceLock<BoundCounter<u64>>; AttemptResult::COUNT],
    attempt_duration: Option<BoundHistogram<f64>>,
    cooldowns: [OnceLock<BoundCounter<u64>>; 4],
    window: Window,
}

/// Bound instruments of one client (`metrics.per_client`).
struct ClientCells {
    requests: [OnceLock<BoundCounter<u64>>; StatusClass::COUNT],
    tokens: [OnceLock<BoundCounter<u64>>; 4],
}

/// The instruments, made once.
struct Instruments {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    ttfb: Histogram<f64>,
    attempts: Counter<u64>,
    attempt_duration: Histogram<f64>,
    tokens: Counter<u64>,
    cooldowns: Counter<u64>,
    client_requests: Counter<u64>,
    client_tokens: Counter<u64>,
    in_flight: BoundUpDownCounter<i64>,
    connections_open: [BoundUpDownCounter<i64>; 2],
    connections: [BoundCounter<u64>; 2],
    retries: [BoundCounter<u64>; RetryReason::ALL.len()],
    fallbacks: BoundCounter<u64>,
    heartbeats: BoundCounter<u64>,
    live_session_duration: BoundHistogram<f64>,
    overridden: BoundCounter<u64>,
    cache: [BoundCounter<u64>; 3],
    rate_limited: [BoundCounter<u64>; 3],
    auth_failures: Counter<u64>,
    gateway_errors: Counter<u64>,
}

/// What the response cache did with a request it could have answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Answered from the cache.
    Hit = 0,
    /// Not there (or stale): sent upstream.
    Miss = 1,
    /// The client's `Cache-Control: no-cache` / `no-store`: sent upstream.
    Bypass = 2,
}

impl CacheResult {
    /// The `x-gem-proxy-cache` header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The client-facing proxy listener.
    Proxy,
    /// The admin listener.
    Admin,
}

/// Who rejected a request with 429: the `limiter` of `gem_proxy_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    /// The client's own per-minute limit.
    Client,
    /// Every usable key was at its quota for the model.
    KeyPool,
    /// Google's 429, passed on after failover found no better key.
    Upstream,
}

/// What the metrics layer learned about one request, recorded when its answer ends.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its route.
    pub route: RouteLabel,
    /// Its model's index in the model label set.
    pub model: usize,
    /// The status the client got.
    pub status: http::StatusCode,
    /// How it ended.
    pub outcome: Outcome,
    /// From arrival to the end of the answer.
    pub duration: Duration,
    /// From arrival to the first byte of a streamed answer.
    pub ttfb: Option<Duration>,
    /// The upstream key of the last attempt.
    pub key_id: Option<Arc<str>>,
    /// That key's state slot ([`UpstreamKey::slot`]), when known: its cells are found by it.
    pub key_slot: Option<Slot>,
}

/// Every metric of one gateway: instruments, the Prometheus registry that reads them, the
/// `/performance` windows and the `/errors` log.
pub struct Metrics {
    enabled: bool,
    per_client: bool,
    registry: prometheus::Registry,
    provider: Option<SdkMeterProvider>,
    inst: Option<Instruments>,
    models: BoundedSet,
    model_cells: Box<[OnceLock<ModelCells>]>,
    clients: BoundedSet,
    client_cells: Box<[OnceLock<ClientCells>]>,
    /// Per key, looked up on every request (foldhash: a key id is hashed each time).
    keys: ArcSwap<HashMap<Arc<str>, Arc<KeyCells>, foldhash::fast::RandomState>>,
    /// The same cells by the key's state slot ([`UpstreamKey::slot`]): what a request uses, so
    /// it indexes a vector instead of hashing the id. Filled from `keys` on a key's first use.
    key_slots: ArcSwap<Vec<Option<Arc<KeyCells>>>>,
    keys_admit: Mutex<()>,
    overall: Window,
    errors: ErrorLog,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .field("per_client", &self.per_client)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics for a gateway; `gateway` is read at scrape time for key states.
    /// With `metrics.enabled: false` nothing is recorded.
    pub fn new(config: &MetricsConfig, gateway: Weak<Gateway>) -> Self {
        let registry = prometheus::Registry::new();
        let models = BoundedSet::new(config.max_model_labels);
        let clients = BoundedSet::new(if config.per_client {
            config.max_client_labels
        } else {
            0
        });
        let mut metrics = Self {
            enabled: config.enabled,
            per_client: config.per_client,
            registry: registry.clone(),
            provider: None,
            inst: None,
            model_cells: cells(models.slots()),
            models,
            client_cells: cells(clients.slots()),
            clients,
            keys: ArcSwap::from_pointee(HashMap::default()),
            key_slots: ArcSwap::from_pointee(Vec::new()),
            keys_admit: Mutex::new(()),
            overall: Window::default(),
            errors: ErrorLog::default(),
        };
        if !config.enabled {
            return metrics;
        }
        let exporter = match opentelemetry_prometheus::exporter()
            .with_registry(registry)
            .without_target_info()
            .scope_info_enabled(false)
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "metrics: the Prometheus exporter failed to start; /metrics stays empty");
                return metrics;
            }
        };
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("gem-proxy");
        metrics.inst = Some(Instruments::new(&meter));
        register_observers(&meter, gateway);
        metrics.provider = Some(provider);
        metrics
    }

    /// Whether anything is recorded.
    pub fn enabled(&self) -> bool {
        self.inst.is_some()
    }

    /// Whether clients are labelled (`metrics.per_client`).
    pub fn per_client(&self) -> bool {
        self.per_client && self.inst.is_some()
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The `/performance` document.
    pub fn performance(&self) -> serde_json::Value {
        let now = Instant::now();
        let keys: serde_json::Map<String, serde_json::Value> = self
            .keys
            .load()
            .iter()
            .map(|(id, k)| {
                (
                    id.to_string(),
                    serde_json::to_value(k.window.summary(now)).unwrap_or_default(),
                )
            })
            .collect();
        serde_json::json!({
            "window_seconds": { "qps_1m": 60, "qps_5m": 300, "percentiles": 300 },
            "overall": self.overall.summary(now),
            "keys": keys,
        })
    }

    /// The `/errors` document.
    pub fn errors(&self) -> serde_json::Value {
        self.errors.snapshot()
    }

    /// The error log, for the metrics layer.
    pub fn error_log(&self) -> &ErrorLog {
        &self.errors
    }

    /// The index of a model for labels: its own once admitted, else `other`.
    pub fn model_index(&self, model: &str) -> usize {
        self.models.get(model)
    }

    /// Admits a model to the label set (called once an answer for it succeeded).
    pub fn admit_model(&self, model: &str) -> usize {
        self.models.get_or_admit(model)
    }

    /// Whether the model label set can still admit a model.
    pub fn model_room(&self) -> bool {
        self.models.has_room()
    }

    /// A request failed without any answer (the stack below answered with an error value).
    pub fn request_abandoned(&self) {
        if let Some(i) = &self.inst {
            i.in_flight.add(-1);
        }
    }

    /// A request arrived: `gem_proxy_requests_in_flight` + 1.
    pub fn request_started(&self) {
        if let Some(i) = &self.inst {
            i.in_flight.add(1);
        }
    }

    /// A request's answer ended (or was dropped): every per-request series.
    pub fn request_finished(&self, f: &Finished) {
        let Some(inst) = &self.inst else { return };
        inst.in_flight.add(-1);
        let model = self.model(f.model);
        let class = StatusClass::of(f.status);
        let r = f.route.index();
        let c = class.index();
        model.requests[(r * StatusClass::COUNT + c) * Outcome::COUNT + f.outcome.index()]
            .get_or_init(|| {
                inst.requests.bind(&[
                    KeyValue::new("route", f.route.as_str()),
                    KeyValue::new("model", model.name.clone()),
                    KeyValue::new("status_class", class.as_str()),
                    KeyValue::new("outcome", f.outcome.as_str()),
                ])
            })
            .add(1);
        model.duration[r * StatusClass::COUNT + c]
            .get_or_init(|| {
                inst.duration.bind(&[
                    KeyValue::new("route", f.route.as_str()),
                    KeyValue::new("model", model.name.clone()),
                    KeyValue::new("status_class", class.as_str()),
                ])
            })
            .record(f.duration.as_secs_f64());
        if let Some(ttfb) = f.ttfb {
            model.ttfb[r]
                .get_or_init(|| {
                    inst.ttfb.bind(&[
                        KeyValue::new("route", f.route.as_str()),
                        KeyValue::new("model", model.name.clone()),
                    ])
                })
                .record(ttfb.as_secs_f64());
        }
        let now = Instant::now();
        let sample = Sample {
            success: f.outcome == Outcome::Success,
            latency: f.duration,
            ttfb: f.ttfb,
        };
        self.overall.record(now, sample);
        if let Some(key) = &f.key_id {
            self.with_key(f.key_slot, key, |k| k.window.record(now, sample));
        }
    }

    /// A response the gateway answered itself (`ErrorKind`), with its finer reason if any.
    pub fn gateway_error(&self, kind: &'static str, reason: Option<&'static str>) {
        let Some(inst) = &self.inst else { return };
        // A handful of kinds, each a small fixed string: the attribute lookup is cheap and only
        // on error answers.
        inst.gateway_errors.add(1, &[KeyValue::new("kind", kind)]);
        match kind {
            "rate_limited" => self.rate_limited(Limiter::Client),
            "keys_exhausted" => self.rate_limited(Limiter::KeyPool),
            "unauthenticated" | "auth_unavailable" => inst
                .auth_failures
                .add(1, &[KeyValue::new("reason", reason.unwrap_or("unknown"))]),
            "permission_denied" => inst
                .auth_failures
                .add(1, &[KeyValue::new("reason", "model_not_allowed")]),
            _ => {}
        }
    }

    /// A 429 reached the client.
    pub fn rate_limited(&self, limiter: Limiter) {
        if let Some(i) = &self.inst {
            i.rate_limited[limiter as usize].add(1);
        }
    }

    /// One upstream attempt ended (response headers, or a failure to get them).
    pub fn attempt(&self, key_id: &str, result: AttemptResult, duration: Duration) {
        self.attempt_at(None, key_id, result, duration);
    }

    /// [`Metrics::attempt`] for a key whose state slot is known (found by it, not by its id).
    pub fn key_attempt(&self, key: &UpstreamKey, result: AttemptResult, duration: Duration) {
        self.attempt_at(key.slot(), &key.id, result, duration);
    }

    fn attempt_at(
        &self,
        slot: Option<Slot>,
        key_id: &str,
        result: AttemptResult,
        duration: Duration,
    ) {
        let Some(inst) = &self.inst else { return };
        self.with_key(slot, key_id, |k| {
            let i = result.index();
            k.attempts[i]
                .get_or_init(|| {
                    inst.attempts.bind(&[
                        KeyValue::new("key_id", key_id.to_owned()),
                        KeyValue::new("result", AttemptResult::label(i)),
                    ])
                })
                .add(1);
            if let Some(h) = &k.attempt_duration {
                h.record(duration.as_secs_f64());
            }
        });
    }

    /// A failed attempt is replayed on another key.
    pub fn retry(&self, reason: RetryReason) {
        if let Some(i) = &self.inst {
            i.retries[reason as usize].add(1);
        }
    }

    /// A request is served by a fallback model.
    pub fn model_fallback(&self) {
        if let Some(i) = &self.inst {
            i.fallbacks.add(1);
        }
    }

    /// A Live API session ended after `seconds`.
    pub fn live_session_ended(&self, seconds: f64) {
        if let Some(i) = &self.inst {
            i.live_session_duration.record(seconds);
        }
    }

    /// A heartbeat is written into a silent event stream.
    pub fn stream_heartbeat(&self) {
        if let Some(i) = &self.inst {
            i.heartbeats.add(1);
        }
    }

    /// A request body is changed by `gemini.overrides`.
    pub fn overridden_request(&self) {
        if let Some(i) = &self.inst {
            i.overridden.add(1);
        }
    }

    /// The response cache answered (`hit`), missed (`miss`) or was told by the client to
    /// step aside (`bypass`).
    pub fn cache_lookup(&self, result: CacheResult) {
        if let Some(i) = &self.inst {
            i.cache[result as usize].add(1);
        }
    }

    /// A key starts resting for a model.
    pub fn cooldown(&self, key_id: &str, reason: crate::key_pool::RestReason) {
        let Some(inst) = &self.inst else { return };
        use crate::key_pool::RestReason;
        let (i, label) = match reason {
            RestReason::RateLimited => (0, "rate_limited"),
            RestReason::ExhaustedToday => (1, "exhausted_today"),
            RestReason::Unusable => (2, "unusable"),
            RestReason::ProxyUnreachable => (3, "proxy_unreachable"),
        };
        self.key(key_id).cooldowns[i]
            .get_or_init(|| {
                inst.cooldowns.bind(&[
                    KeyValue::new("key_id", key_id.to_owned()),
                    KeyValue::new("reason", label),
                ])
            })
            .add(1);
    }

    /// Tokens of one answer, for the model label `model` (an index from [`Self::model_index`]).
    pub fn tokens(&self, model: usize, tokens: &Tokens) {
        let Some(inst) = &self.inst else { return };
        let cells = self.model(model);
        for (i, n) in token_values(tokens).into_iter().enumerate() {
            if n > 0 {
                cells.tokens[i]
                    .get_or_init(|| {
                        inst.tokens.bind(&[
                            KeyValue::new("kind", TOKEN_KINDS[i]),
                            KeyValue::new("model", cells.name.clone()),
                        ])
                    })
                    .add(n);
            }
        }
    }

    /// The label index of a client (`metrics.per_client`), admitting it if there is room.
    pub fn client_index(&self, client: &str) -> usize {
        self.clients.get_or_admit(client)
    }

    /// A client's request got its answer head (`metrics.per_client`).
    pub fn client_request(&self, client: usize, status: http::StatusCode) {
        let Some(inst) = self.inst.as_ref().filter(|_| self.per_client) else {
            return;
        };
        let cells = self.client(client);
        let class = StatusClass::of(status);
        cells.requests[class.index()]
            .get_or_init(|| {
                inst.client_requests.bind(&[
                    KeyValue::new("client", self.clients.name(client)),
                    KeyValue::new("status_class", class.as_str()),
                ])
            })
            .add(1);
    }

    /// A client's tokens (`metrics.per_client`).
    pub fn client_tokens(&self, client: usize, tokens: &Tokens) {
        let Some(inst) = self.inst.as_ref().filter(|_| self.per_client) else {
            return;
        };
        let cells = self.client(client);
        for (i, n) in token_values(tokens).into_iter().enumerate() {
            if n > 0 {
                cells.tokens[i]
                    .get_or_init(|| {
                        inst.client_tokens.bind(&[
                            KeyValue::new("client", self.clients.name(client)),
                            KeyValue::new("kind", TOKEN_KINDS[i]),
                        ])
                    })
                    .add(n);
            }
        }
    }

    /// A connection opened on `listener`; it counts as open until the guard is dropped.
    pub fn connection_opened(self: &Arc<Self>, listener: Listener) -> ConnectionGuard {
        if let Some(i) = &self.inst {
            i.connections[listener as usize].add(1);
            i.connections_open[listener as usize].add(1);
        }
        ConnectionGuard {
            metrics: self.clone(),
            listener,
        }
    }

    fn model(&self, index: usize) -> &ModelCells {
        let index = index.min(self.model_cells.len() - 1);
        self.model_cells[index].get_or_init(|| ModelCells::new(self.models.name(index)))
    }

    fn client(&self, index: usize) -> &ClientCells {
        let index = index.min(self.client_cells.len() - 1);
        self.client_cells[index].get_or_init(|| ClientCells {
            requests: Default::default(),
            tokens: Default::default(),
        })
    }

    /// The cells of a key, made on its first use. Key ids come from the config, so the map stays
    /// as small as the key pool; it is replaced whole (copy on write) when a key is first seen.
    fn key(&self, id: &str) -> Arc<KeyCells> {
        if let Some(k) = self.keys.load().get(id) {
            return k.clone();
        }
        let _guard = self.keys_admit.lock().unwrap_or_else(|e| e.into_inner());
        let map = self.keys.load();
        if let Some(k) = map.get(id) {
            return k.clone();
        }
        let inst = self.inst.as_ref();
        let cells = Arc::new(KeyCells {
            id: Arc::from(id),
            attempts: Default::default(),
            attempt_duration: inst.map(|i| {
                i.attempt_duration
                    .bind(&[KeyValue::new("key_id", id.to_owned())])
            }),
            cooldowns: Default::default(),
            window: Window::default(),
        });
        let mut next = HashMap::clone(&map);
        next.insert(Arc::from(id), cells.clone());
        self.keys.store(Arc::new(next));
        cells
    }

    /// Runs `f` on the cells of key `id`, found by its state `slot` when given (a vector index,
    /// the cells' id checked), else by id.
    fn with_key<R>(&self, slot: Option<Slot>, id: &str, f: impl FnOnce(&KeyCells) -> R) -> R {
        let Some(Slot(slot)) = slot.filter(|s| s.0 < MAX_KEY_SLOTS) else {
            return f(&self.key(id));
        };
        if let Some(Some(k)) = self.key_slots.load().get(slot)
            && *k.id == *id
        {
            return f(k);
        }
        let cells = self.key(id);
        let _guard = self.keys_admit.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Vec::clone(&self.key_slots.load());
        if next.len() <= slot {
            next.resize(slot + 1, None);
        }
        next[slot] = Some(cells.clone());
        self.key_slots.store(Arc::new(next));
        f(&cells)
    }
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    listener: Listener,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(i) = &self.metrics.inst {
            i.connections_open[self.listener as usize].add(-1);
        }
    }
}

impl Instruments {
    fn new(m: &Meter) -> Self {
        let seconds = |name: &'static str, help: &'static str| {
            m.f64_histogram(name)
                .with_unit("s")
                .with_description(help)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        let counter = |name: &'static str, help: &'static str| {
            m.u64_counter(name).with_description(help).build()
        };
        let connections_open = m
            .i64_up_down_counter("gem_proxy.connections.open")
            .with_description("Open client connections, by listener.")
            .build();
        let connections = counter(
            "gem_proxy.connections",
            "Connections accepted, by listener.",
        );
        let retries = counter(
            "gem_proxy.retries",
            "Failed upstream attempts replayed on another key (failovers), by reason.",
        );
        let rate_limited = counter(
            "gem_proxy.rate_limited",
            "Requests answered 429, by who limited them: the client's own limit, the key pool (every key at its quota), or Google.",
        );
        let listener = |l: &'static str| [KeyValue::new("listener", l)];
        Self {
            requests: counter(
                "gem_proxy.requests",
                "Requests, by route, model, status class and outcome; counted when the answer ends.",
            ),
            duration: seconds(
                "gem_proxy.request.duration",
                "Time from a request's arrival to the end of its answer (streams included).",
            ),
            ttfb: seconds(
                "gem_proxy.time_to_first_byte",
                "Time from a request's arrival to the first byte of a streamed answer.",
            ),
            attempts: counter(
                "gem_proxy.upstream.attempts",
                "Upstream attempts, by key id and result (status class, 429, unreachable, timeout).",
            ),
            attempt_duration: seconds(
                "gem_proxy.upstream.attempt.duration",
                "Time from sending an attempt upstream to its response headers (or failure), by key id.",
            ),
            tokens: counter(
                "gem_proxy.tokens",
                "Tokens reported in usageMetadata (plain and streamed answers), by kind and model.",
            ),
            cooldowns: counter(
                "gem_proxy.key.cooldowns",
                "Rests (cooldowns) started for a key after Google's answer, by key id and reason.",
            ),
            client_requests: counter(
                "gem_proxy.client.requests",
                "Requests per authenticated client, by status class (metrics.per_client).",
            ),
            client_tokens: counter(
                "gem_proxy.client.tokens",
                "Tokens per authenticated client, by kind (metrics.per_client).",
            ),
            in_flight: m
                .i64_up_down_counter("gem_proxy.requests.in_flight")
                .with_description("Requests being served (until their answer ends).")
                .build()
                .bind(&[]),
            connections_open: [
                connections_open.bind(&listener("proxy")),
                connections_open.bind(&listener("admin")),
            ],
            connections: [
                connections.bind(&listener("proxy")),
                connections.bind(&listener("admin")),
            ],
            fallbacks: counter(
                "gem_proxy.model.fallbacks",
                "Requests served by a fallback model because every key was resting for the one asked for.",
            )
            .bind(&[]),
            heartbeats: counter(
                "gem_proxy.stream.heartbeats",
                "Heartbeats written into silent server-sent-events answers (gemini.stream_heartbeat_seconds).",
            )
            .bind(&[]),
            live_session_duration: m
                .f64_histogram("gem_proxy.live.session.duration")
                .with_unit("s")
                .with_description("How long Live API sessions lasted, from upgrade to close.")
                .with_boundaries(LIVE_SESSION_BUCKETS.to_vec())
                .build()
                .bind(&[]),
            overridden: counter(
                "gem_proxy.overridden_requests",
                "Request bodies changed by gemini.overrides before they were sent.",
            )
            .bind(&[]),
            cache: {
                let c = counter(
                    "gem_proxy.cache.requests",
                    "Cacheable requests, by what the response cache did: hit, miss, or bypass (the client's Cache-Control).",
                );
                [CacheResult::Hit, CacheResult::Miss, CacheResult::Bypass]
                    .map(|r| c.bind(&[KeyValue::new("result", r.as_str())]))
            },
            retries: RetryReason::ALL.map(|r| retries.bind(&[KeyValue::new("reason", r.as_str())])),
            rate_limited: ["client", "key_pool", "upstream"]
                .map(|l| rate_limited.bind(&[KeyValue::new("limiter", l)])),
            auth_failures: counter(
                "gem_proxy.auth.failures",
                "Requests refused by client authentication, by reason.",
            ),
            gateway_errors: counter(
                "gem_proxy.gateway.errors",
                "Error answers the gateway made itself, by kind.",
            ),
        }
    }
}

/// The Live API's series (`crate::live_sessions`), read at scrape time: open sessions, frames
/// and payload bytes each way, ended sessions by reason. (Their durations are a histogram.)
fn register_live_observers(m: &Meter, gateway: Weak<Gateway>) {
    use crate::live_sessions::{CloseReason, Direction, LiveTotals};
    fn totals(g: &Weak<Gateway>) -> Option<LiveTotals> {
        g.upgrade().map(|gw| gw.live_sessions().totals())
    }
    let g = gateway.clone();
    m.i64_observable_gauge("gem_proxy.live.sessions.open")
        .with_description("Live API sessions (WebSocket) open now.")
        .with_callback(move |o| {
            if let Some(t) = totals(&g) {
                o.observe(t.open as i64, &[]);
            }
        })
        .build();
    let g = gateway.clone();
    m.u64_observable_counter("gem_proxy.live.frames")
        .with_description("Live API messages relayed, by direction (to_upstream, to_client).")
        .with_callback(move |o| {
            if let Some(t) = totals(&g) {
                for d in Direction::ALL {
                    o.observe(
                        t.frames[d as usize],
                        &[KeyValue::new("direction", d.as_str())],
                    );
                }
            }
        })
        .build();
    let g = gateway.clone();
    m.u64_observable_counter("gem_proxy.live.payload")
        .with_unit("By")
        .with_description("Live API message payload bytes relayed, by direction.")
        .with_callback(move |o| {
            if let Some(t) = totals(&g) {
                for d in Direction::ALL {
                    o.observe(
                        t.bytes[d as usize],
                        &[KeyValue::new("direction", d.as_str())],
                    );
                }
            }
        })
        .build();
    let g = gateway;
    m.u64_observable_counter("gem_proxy.live.sessions.closed")
        .with_description("Live API sessions ended, by reason (client, upstream, quota, going_away, refused, broken).")
        .with_callback(move |o| {
            if let Some(t) = totals(&g) {
                for r in CloseReason::ALL {
                    o.observe(t.closes[r as usize], &[KeyValue::new("reason", r.as_str())]);
                }
            }
        })
        .build();
}

/// Series read at scrape time: key states, store counters, certificate expiry, the process.
fn register_observers(m: &Meter, gateway: Weak<Gateway>) {
    use crate::key_pool::store::KeyStatus;

    register_live_observers(m, gateway.clone());

    /// Every key's id and status, or nothing once the gateway is gone.
    fn statuses(gateway: &Weak<Gateway>) -> Vec<(Arc<str>, KeyStatus)> {
        let Some(gw) = gateway.upgrade() else {
            return Vec::new();
        };
        let live = gw.live();
        let now = tokio::time::Instant::now();
        live.keys
            .keys()
            .map(|k| {
                let mut status = gw.store().status(&k.id, now);
                if !live.keys.is_enabled(&k.id) {
                    status.state = "disabled";
                }
                (k.id.clone(), status)
            })
            .collect()
    }
    const STATES: [&str; 4] = ["active", "cooling", "invalid", "disabled"];

    let g = gateway.clone();
    m.i64_observable_gauge("gem_proxy.state.backend.up")
        .with_description("1 while the key-state backend is usable (memory always; redis while it answers), 0 otherwise.")
        .with_callback(move |o| {
            if let Some(gw) = g.upgrade() {
                let b = gw.store().backend();
                o.observe(
                    i64::from(b.connected.unwrap_or(true)),
                    &[KeyValue::new("backend", b.backend)],
                );
            }
        })
        .build();

    let g = gateway.clone();
    m.i64_observable_gauge("gem_proxy.key.state")
        .with_description("1 for the state each upstream key is in (active, cooling, invalid, disabled), 0 for the others.")
        .with_callback(move |o| {
            for (id, s) in statuses(&g) {
                for state in STATES {
                    o.observe(
                        i64::from(s.state == state),
                        &[KeyValue::new("key_id", id.clone()), KeyValue::new("state", state)],
                    );
                }
            }
        })
        .build();
    let g = gateway.clone();
    m.i64_observable_gauge("gem_proxy.keys")
        .with_description("Upstream keys per state.")
        .with_callback(move |o| {
            let all = statuses(&g);
            for state in STATES {
                let n = all.iter().filter(|(_, s)| s.state == state).count();
                o.observe(n as i64, &[KeyValue::new("state", state)]);
            }
        })
        .build();
    let g = gateway.clone();
    m.f64_observable_gauge("gem_proxy.key.cooldown.remaining")
        .with_unit("s")
        .with_description("Longest rest a key still has for any model (0 when it rests for none).")
        .with_callback(move |o| {
            for (id, s) in statuses(&g) {
                let left = s
                    .resting
                    .iter()
                    .map(|r| r.remaining_seconds)
                    .max()
                    .unwrap_or(0);
                o.observe(left as f64, &[KeyValue::new("key_id", id)]);
            }
        })
        .build();
    let g = gateway.clone();
    m.u64_observable_counter("gem_proxy.key.requests")
        .with_description("Requests each key has carried since start (key-state store).")
        .with_callback(move |o| {
            for (id, s) in statuses(&g) {
                o.observe(s.requests, &[KeyValue::new("key_id", id)]);
            }
        })
        .build();
    let g = gateway.clone();
    m.u64_observable_counter("gem_proxy.key.errors")
        .with_description("Error answers per key since start, by kind (key-state store).")
        .with_callback(move |o| {
            for (id, s) in statuses(&g) {
                let e = s.errors;
                for (kind, n) in [
                    ("rate_limited", e.rate_limited),
                    ("invalid", e.invalid),
                    ("overloaded", e.overloaded),
                    ("server", e.server),
                    ("client", e.client),
                ] {
                    o.observe(
                        n,
                        &[
                            KeyValue::new("key_id", id.clone()),
                            KeyValue::new("kind", kind),
                        ],
                    );
                }
            }
        })
        .build();
    let g = gateway.clone();
    m.i64_observable_gauge("gem_proxy.affinity.bindings")
        .with_description("Affinity bindings (file, cached content, upload → key) held.")
        .with_callback(move |o| {
            if let Some(gw) = g.upgrade() {
                o.observe(gw.store().binding_stats().held as i64, &[]);
            }
        })
        .build();
    let g = gateway.clone();
    m.u64_observable_counter("gem_proxy.affinity.bindings.evicted")
        .with_description(
            "Affinity bindings dropped (least recently used first) to stay within the cap.",
        )
        .with_callback(move |o| {
            if let Some(gw) = g.upgrade() {
                o.observe(gw.store().binding_stats().evicted, &[]);
            }
        })
        .build();
    let g = gateway.clone();
    m.u64_observable_gauge("gem_proxy.cache")
        .with_unit("By")
        .with_description("Bytes the response cache holds (bodies and per-entry overhead), at most cache.max_bytes.")
        .with_callback(move |o| {
            if let Some(gw) = g.upgrade() {
                o.observe(gw.cache().stats().bytes as u64, &[]);
            }
        })
        .build();
    let g = gateway.clone();
    m.u64_observable_gauge("gem_proxy.cache.entries")
        .with_description("Answers the response cache holds.")
        .with_callback(move |o| {
            if let Some(gw) = g.upgrade() {
                o.observe(gw.cache().stats().entries as u64, &[]);
            }
        })
        .build();
    let g = gateway.clone();
    m.u64_observable_counter("gem_proxy.cache.evictions")
        .with_description("Answers dropped from the response cache (least recently used first) to stay within cache.max_bytes.")
        .with_callback(move |o| {
            if let Some(gw) = g.upgrade() {
                o.observe(gw.cache().stats().evicted, &[]);
            }
        })
        .build();
    let g = gateway.clone();
    m.u64_observable_counter("gem_proxy.usage.rows.dropped")
        .with_description(
            "Usage-history reports dropped because the writer could not keep up (its disk is slow or stuck).",
        )
        .with_callback(move |o| {
            if let Some(gw) = g.upgrade()
                && gw.usage().is_recording()
            {
                o.observe(gw.usage().dropped(), &[]);
            }
        })
        .build();
    let g = gateway.clone();
    m.u64_observable_counter("gem_proxy.key.tokens")
        .with_description("Tokens per key since start, by kind (key-state store).")
        .with_callback(move |o| {
            for (id, s) in statuses(&g) {
                for (i, n) in token_values(&s.tokens).into_iter().enumerate() {
                    o.observe(
                        n,
                        &[
                            KeyValue::new("key_id", id.clone()),
                            KeyValue::new("kind", TOKEN_KINDS[i]),
                        ],
                    );
                }
            }
        })
        .build();
    m.i64_observable_gauge("gem_proxy.tls.certificate.expiry.timestamp")
        .with_unit("s")
        .with_description(
            "When the certificate the proxy serves expires, in seconds since the Unix epoch.",
        )
        .with_callback(move |o| {
            if let Some(t) = gateway
                .upgrade()
                .and_then(|g| g.tls().expiry_unix_seconds())
            {
                o.observe(t, &[]);
            }
        })
        .build();
    m.i64_observable_gauge("gem_proxy.build.info")
        .with_description("The running version (always 1).")
        .with_callback(|o| o.observe(1, &[KeyValue::new("version", env!("CARGO_PKG_VERSION"))]))
        .build();

    // The process: one /proc read per series and scrape, a few microseconds each.
    fn with_stats(f: impl Fn(process::ProcessStats)) {
        if let Some(s) = process::ProcessStats::read() {
            f(s);
        }
    }
    m.f64_observable_counter("process.cpu")
        .with_unit("s")
        .with_description("Total user and system CPU time spent in seconds.")
        .with_callback(|o| with_stats(|s| o.observe(s.cpu_seconds, &[])))
        .build();
    m.u64_observable_gauge("process.resident_memory")
        .with_unit("By")
        .with_description("Resident memory size in bytes.")
        .with_callback(|o| with_stats(|s| o.observe(s.resident_memory_bytes, &[])))
        .build();
    m.u64_observable_gauge("process.virtual_memory")
        .with_unit("By")
        .with_description("Virtual memory size in bytes.")
        .with_callback(|o| with_stats(|s| o.observe(s.virtual_memory_bytes, &[])))
        .build();
    m.u64_observable_gauge("process.open_fds")
        .with_description("Number of open file descriptors.")
        .with_callback(|o| with_stats(|s| o.observe(s.open_fds, &[])))
        .build();
    m.u64_observable_gauge("process.max_fds")
        .with_description("Maximum number of open file descriptors.")
        .with_callback(|o| {
            with_stats(|s| {
                if let Some(max) = s.max_fds {
                    o.observe(max, &[]);
                }
            })
        })
        .build();
    m.u64_observable_gauge("process.threads")
        .with_description("Number of OS threads in the process.")
        .with_callback(|o| with_stats(|s| o.observe(s.threads, &[])))
        .build();
    m.f64_observable_gauge("process.start_time")
        .with_unit("s")
        .with_description("Start time of the process since unix epoch in seconds.")
        .with_callback(|o| with_stats(|s| o.observe(s.start_time_seconds, &[])))
        .build();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        let config = MetricsConfig::default();
        Metrics::new(&config, Weak::new())
    }

    #[test]
    fn a_request_shows_in_the_exposition_with_bounded_labels() {
        let m = metrics();
        m.request_started();
        let model = m.admit_model("gemini-2.5-flash");
        m.request_finished(&Finished {
            route: RouteLabel::Generate,
            model,
            status: http::StatusCode::OK,
            outcome: Outcome::Success,
            duration: Duration::from_millis(120),
            ttfb: None,
            key_id: Some(Arc::from("key1")),
            key_slot: None,
        });
        m.attempt(
            "key1",
            AttemptResult::Status(http::StatusCode::OK),
            Duration::from_millis(100),
        );
        m.tokens(
            model,
            &Tokens {
                prompt: 3,
                candidates: 5,
                ..Tokens::default()
            },
        );
        m.retry(RetryReason::Overloaded);
        m.gateway_error("unauthenticated", Some("expired"));
        let text = m.render();
        for needle in [
            r#"gem_proxy_requests_total{model="gemini-2.5-flash",outcome="success",route="generate",status_class="2xx"} 1"#,
            r#"gem_proxy_request_duration_seconds_bucket{model="gemini-2.5-flash",route="generate",status_class="2xx",le="0.25"} 1"#,
            r#"gem_proxy_request_duration_seconds_bucket{model="gemini-2.5-flash",route="generate",status_class="2xx",le="600"} 1"#,
            "gem_proxy_requests_in_flight 0",
            r#"gem_proxy_upstream_attempts_total{key_id="key1",result="2xx"} 1"#,
            r#"gem_proxy_tokens_total{kind="candidates",model="gemini-2.5-flash"} 5"#,
            r#"gem_proxy_retries_total{reason="overloaded"} 1"#,
            r#"gem_proxy_retries_total{reason="timeout"} 0"#,
            r#"gem_proxy_auth_failures_total{reason="expired"} 1"#,
            r#"gem_proxy_build_info{version=""#,
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(!text.contains("otel_scope"), "{text}");
        let perf = m.performance();
        assert_eq!(perf["overall"]["requests_1m"], 1);
        assert_eq!(perf["keys"]["key1"]["requests_1m"], 1);
    }

    #[test]
    fn per_key_figures_found_by_slot_belong_to_that_key() {
        let m = metrics();
        let finished = |id: &str, slot: usize| Finished {
            route: RouteLabel::Generate,
            model: 0,
            status: http::StatusCode::OK,
            outcome: Outcome::Success,
            duration: Duration::from_millis(5),
            ttfb: None,
            key_id: Some(Arc::from(id)),
            key_slot: Some(Slot(slot)),
        };
        // Slot 0 first seen for "a"; a key given the same slot by another store (a stale
        // handle) is still counted as itself, and by-id lookups see the same cells.
        m.request_finished(&finished("a", 0));
        m.request_finished(&finished("a", 0));
        m.request_finished(&finished("b", 0));
        m.attempt(
            "a",
            AttemptResult::Status(http::StatusCode::OK),
            Duration::from_millis(1),
        );
        let perf = m.performance();
        assert_eq!(perf["keys"]["a"]["requests_1m"], 2);
        assert_eq!(perf["keys"]["b"]["requests_1m"], 1);
        assert!(
            m.render()
                .contains(r#"gem_proxy_upstream_attempts_total{key_id="a",result="2xx"} 1"#),
            "{}",
            m.render()
        );
    }

    #[test]
    fn unknown_models_are_other_and_disabled_metrics_record_nothing() {
        let m = metrics();
        assert_eq!(m.model_index("made-up"), labels::OTHER);
        let config = MetricsConfig {
            enabled: false,
            ..MetricsConfig::default()
        };
        let off = Metrics::new(&config, Weak::new());
        assert!(!off.enabled());
        off.request_started();
        assert_eq!(off.render(), "");
    }

    #[test]
    fn certificate_expiry_is_read_from_the_gateways_tls_status() {
        let config = crate::config::ConfigLoader::default()
            .load_str("gemini: { api_keys: [{ id: a, key: k }] }")
            .unwrap();
        let gateway = crate::gateway::Gateway::new(crate::gateway::Live::build(config).unwrap());
        let gauge = "gem_proxy_tls_certificate_expiry_timestamp_seconds";
        assert!(!gateway.metrics().render().contains(gauge));
        let mut status = crate::tls::CertificateStatus::acme_pending(&["example.com".to_owned()]);
        status.not_after_unix = Some(1_900_000_000);
        gateway.tls().set(status);
        assert!(
            gateway
                .metrics()
                .render()
                .contains(&format!("{gauge} 1900000000"))
        );
    }
}
