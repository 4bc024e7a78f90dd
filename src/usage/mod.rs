//! Usage history: what every key, model, client and route did, per minute, kept across restarts
//! in a local SQLite file (`usage.path`), and per-client token budgets on the same counts.
//!
//! # How rows get there
//! The layers that already learn an answer's outcome report it here, and nothing else reads the
//! answer: failover for error answers and failed attempts (with what they mean for the key), the
//! usage layer for successful answers when their body ends (with the tokens it found in
//! `usageMetadata`), failover and the admin API for a key's rests, invalidations and
//! enable/disable. Each report is one [`try_send`](std::sync::mpsc::SyncSender::try_send) into a
//! bounded channel (`usage.queue_capacity`); a writer thread sums what arrives per minute and
//! commits it every `usage.flush_interval_milliseconds` in one transaction. When the disk stalls
//! the channel fills and further reports are dropped and counted
//! (`gem_proxy_usage_rows_dropped_total`): the request path never waits on the disk, and nothing
//! queues without bound.
//!
//! A request counts once per upstream attempt: one retried on another key counts on each key it
//! tried. `requests` = `successes` + the error columns + `cancelled` (the client went away during
//! the answer). Requests the gateway refuses before picking a key (auth, client limits, budgets)
//! are not in the history (they are in the metrics).
//!
//! # Retention
//! Minute rows older than `usage.minute_retention_days` are summed into hour rows; rows older
//! than `usage.retention_days` are deleted (at start and every ten minutes, on the writer).
//!
//! # Replicas
//! Each process writes its own file and stamps its rows with its replica id (`usage.replica_id`,
//! else the host name). With `state.backend: redis`, [`shared`] copies every replica's minute
//! rows into every file through Redis in the background, so the admin API, reading the local
//! file, answers for all replicas without counting anything twice.
//!
//! # Budgets
//! [`budget`] keeps each client's tokens of the current minute and UTC day in memory, fed by the
//! same reports, for the `tpm` / `tpd` claims and `auth.default_tokens_per_day`; with
//! `state.backend: redis`, shared by the replicas.

pub mod budget;
pub(crate) mod db;
pub mod query;
mod shared;
mod sink;
mod tokens;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Request;

use crate::auth::Client;
use crate::config::UsageConfig;
use crate::key_pool::{KeyOutcome, Tokens};
use crate::route::Route;
use crate::time::now_unix as unix_now;

pub use budget::{BudgetExceeded, BudgetLimits, Budgets};
pub use db::GroupBy;
pub use sink::TokenSink;
pub use tokens::find_usage;

/// The gateway's usage history and budgets. Always there; the history only once
/// [`Usage::start`] ran (the command line does, with `usage.enabled`).
#[derive(Debug, Default)]
pub struct Usage {
    recorder: OnceLock<Recorder>,
    budgets: Budgets,
    /// Reports dropped: the channel was full, or the writer had too many rows waiting.
    dropped: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Recorder {
    tx: SyncSender<Record>,
    path: PathBuf,
    replica: Arc<str>,
}

/// What the writer receives.
#[derive(Debug)]
enum Record {
    Row(RowKey, Counts),
    Event(KeyEvent),
    /// Commit now and say so (shutdown, tests).
    Flush(SyncSender<()>),
}

/// Where one row's counts go: a minute, a key, a model, a client, a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RowKey {
    /// Start of the minute, seconds since the epoch.
    pub(crate) minute: i64,
    pub(crate) key: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) client: Arc<str>,
    pub(crate) route: &'static str,
}

/// The counters of one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Upstream attempts.
    pub requests: u64,
    /// Answered with success, body complete.
    pub successes: u64,
    /// 429 from Google.
    pub rate_limited: u64,
    /// The key was invalid or suspended.
    pub invalid: u64,
    /// 503 overloaded.
    pub overloaded: u64,
    /// 500/504, connect failures, time-outs.
    pub server_errors: u64,
    /// 4xx that were the request's fault.
    pub client_errors: u64,
    /// The client went away during the answer.
    pub cancelled: u64,
    /// `promptTokenCount` (cached tokens included).
    pub input_tokens: u64,
    /// `candidatesTokenCount`.
    pub output_tokens: u64,
    /// `thoughtsTokenCount`.
    pub thinking_tokens: u64,
    /// `cachedContentTokenCount`.
    pub cached_tokens: u64,
    /// `totalTokenCount`.
    pub total_tokens: u64,
    /// Successful answers whose stream then broke off (counted in `server_errors` too).
    pub stream_errors: u64,
}

impl Counts {
    /// In [`db::COUNT_COLUMNS`] order.
    pub(crate) fn values(&self) -> [u64; 14] {
        [
            self.requests,
            self.successes,
            self.rate_limited,
            self.invalid,
            self.overloaded,
            self.server_errors,
            self.client_errors,
            self.cancelled,
            self.input_tokens,
            self.output_tokens,
            self.thinking_tokens,
            self.cached_tokens,
            self.total_tokens,
            self.stream_errors,
        ]
    }

    pub(crate) fn from_values(v: [u64; 14]) -> Self {
        Self {
            requests: v[0],
            successes: v[1],
            rate_limited: v[2],
            invalid: v[3],
            overloaded: v[4],
            server_errors: v[5],
            client_errors: v[6],
            cancelled: v[7],
            input_tokens: v[8],
            output_tokens: v[9],
            thinking_tokens: v[10],
            cached_tokens: v[11],
            total_tokens: v[12],
            stream_errors: v[13],
        }
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &Counts) {
        let mut v = self.values();
        for (a, b) in v.iter_mut().zip(other.values()) {
            *a += b;
        }
        *self = Self::from_values(v);
    }

    /// Error answers and failed attempts (cancelled requests are not errors).
    pub fn errors(&self) -> u64 {
        self.rate_limited + self.invalid + self.overloaded + self.server_errors + self.client_errors
    }

    /// One attempt that ended with `outcome`.
    fn attempt(outcome: KeyOutcome) -> Self {
        let mut c = Counts {
            requests: 1,
            ..Counts::default()
        };
        match outcome {
            KeyOutcome::Success => c.successes = 1,
            KeyOutcome::RateLimited => c.rate_limited = 1,
            KeyOutcome::Invalid => c.invalid = 1,
            KeyOutcome::Overloaded => c.overloaded = 1,
            KeyOutcome::ServerError => c.server_errors = 1,
            KeyOutcome::ClientError => c.client_errors = 1,
        }
        c
    }
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEventKind {
    /// It rests for a model.
    Rest,
    /// Taken out of rotation (invalid or suspended).
    Invalid,
    /// An operator disabled it.
    Disabled,
    /// An operator enabled it (clearing rests and `invalid`).
    Enabled,
}

impl KeyEventKind {
    /// `rest`, `invalid`, `disabled`, `enabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEventKind::Rest => "rest",
            KeyEventKind::Invalid => "invalid",
            KeyEventKind::Disabled => "disabled",
            KeyEventKind::Enabled => "enabled",
        }
    }
}

/// One key event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyEvent {
    pub(crate) at: i64,
    pub(crate) key: Arc<str>,
    pub(crate) kind: KeyEventKind,
    pub(crate) model: Option<Arc<str>>,
    pub(crate) reason: String,
    pub(crate) seconds: Option<u64>,
}

impl Usage {
    /// Opens the history at `usage.path` (relative to `config_dir`; default
    /// `config_dir/data/usage.db`) and starts its writer. The file is opened by the writer, so a
    /// slow or stuck disk never holds up the start. Does nothing with `usage.enabled: false` or
    /// when already started.
    pub fn start(&self, config: &UsageConfig, config_dir: Option<&Path>) -> std::io::Result<()> {
        if !config.enabled || self.recorder.get().is_some() {
            return Ok(());
        }
        let path = resolve_path(config.path.as_deref(), config_dir);
        let replica: Arc<str> = config.replica_id.clone().unwrap_or_else(host_name).into();
        let tx = writer::spawn(writer::WriterOptions {
            path: path.clone(),
            replica: replica.clone(),
            capacity: config.queue_capacity.max(1),
            flush_interval: Duration::from_millis(config.flush_interval_milliseconds.max(1)),
            minute_retention_days: config.minute_retention_days,
            retention_days: config.retention_days,
            dropped: self.dropped.clone(),
        })?;
        tracing::info!(path = %path.display(), replica = %replica, "usage history on");
        let _ = self.recorder.set(Recorder { tx, path, replica });
        Ok(())
    }

    /// With `state.backend: redis`, starts sharing the token budgets and (when kept) the history
    /// with the other replicas (see [`shared`]) on the current async runtime. Does nothing with
    /// the memory backend or outside a runtime.
    pub fn share(
        self: &Arc<Self>,
        config: &UsageConfig,
        state: &crate::config::state::StateConfig,
    ) {
        if state.backend != crate::config::state::StateBackend::Redis
            || tokio::runtime::Handle::try_current().is_err()
        {
            return;
        }
        let replica: Arc<str> = match self.recorder.get() {
            Some(r) => r.replica.clone(),
            None => config.replica_id.clone().unwrap_or_else(host_name).into(),
        };
        self.budgets.share();
        shared::spawn_budgets(
            Arc::downgrade(self),
            &state.redis,
            replica,
            state.redis.sync_interval(),
        );
        let Some(r) = self.recorder.get() else {
            return;
        };
        shared::spawn(
            Arc::downgrade(self),
            &state.redis,
            shared::ShareOptions {
                path: r.path.clone(),
                replica: r.replica.clone(),
                interval: Duration::from_millis(config.share_interval_milliseconds.max(1)),
                minute_retention_days: config.minute_retention_days,
            },
        );
    }

    /// Whether the history is kept.
    pub fn is_recording(&self) -> bool {
        self.recorder.get().is_some()
    }

    /// The database file, when the history is kept.
    pub fn path(&self) -> Option<&Path> {
        self.recorder.get().map(|r| r.path.as_path())
    }

    /// This replica's id on its rows.
    pub fn replica(&self) -> Option<&str> {
        self.recorder.get().map(|r| &*r.replica)
    }

    /// Reports dropped because the writer could not keep up (or was gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Per-client token budgets.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Asks the writer to commit what it holds and waits up to `timeout` for it; `false` when it
    /// did not answer in time (its disk is stuck) or the history is off.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(r) = self.recorder.get() else {
            return false;
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if r.tx.try_send(Record::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }

    /// The context for one request's reports: its model, client and route. `None` when there is
    /// nothing to report to (no history, and the client has no budget).
    /// `default_tokens_per_day` is `auth.default_tokens_per_day`.
    pub fn request<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        model: &Arc<str>,
        default_tokens_per_day: u64,
    ) -> Option<RequestUsage> {
        let client = req.extensions().get::<Client>();
        let budgeted =
            client.is_some_and(|c| BudgetLimits::of(c, default_tokens_per_day).is_some());
        if !self.is_recording() && !budgeted {
            return None;
        }
        Some(RequestUsage {
            usage: self.clone(),
            model: model.clone(),
            client: client.map(|c| c.id.clone()),
            budgeted,
            route: Route::label_of(req.extensions().get::<Route>()).as_str(),
        })
    }

    /// A key's event (from failover and the admin API).
    pub fn key_event(
        &self,
        key: &str,
        kind: KeyEventKind,
        model: Option<&str>,
        reason: &str,
        seconds: Option<u64>,
    ) {
        self.send(Record::Event(KeyEvent {
            at: unix_now(),
            key: key.into(),
            kind,
            model: model.filter(|m| !m.is_empty()).map(Arc::from),
            reason: reason.to_owned(),
            seconds,
        }));
    }

    fn send(&self, record: Record) {
        let Some(r) = self.recorder.get() else {
            return;
        };
        match r.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One request's reporting context (see [`Usage::request`]).
#[derive(Debug, Clone)]
pub struct RequestUsage {
    usage: Arc<Usage>,
    model: Arc<str>,
    client: Option<Arc<str>>,
    /// Whether the client's tokens count against a budget.
    budgeted: bool,
    route: &'static str,
}

impl RequestUsage {
    /// An attempt on `key` ended with an error `outcome` (failover), or the answer's body ended
    /// (the usage layer: a success with its tokens, or a broken stream).
    pub fn attempt(&self, key: &Arc<str>, outcome: KeyOutcome) {
        self.row(key, Counts::attempt(outcome));
    }

    /// A successful answer from `key` ended completely, reporting `tokens` (if it did).
    pub fn answered(&self, key: &Arc<str>, tokens: Option<&Tokens>) {
        let mut c = Counts::attempt(KeyOutcome::Success);
        if let Some(t) = tokens {
            c.input_tokens = t.prompt;
            c.output_tokens = t.candidates;
            c.thinking_tokens = t.thoughts;
            c.cached_tokens = t.cached;
            c.total_tokens = t.total;
            if let Some(client) = self.client.as_ref().filter(|_| self.budgeted) {
                self.usage.budgets.spend(client, t.total, unix_now());
            }
        }
        self.row(key, c);
    }

    /// A Live session on `key` reported `tokens` for a turn: counted in the history (no
    /// request: the session counted as one when it opened) and against the client's budget.
    pub fn tokens(&self, key: &Arc<str>, t: &Tokens) {
        if let Some(client) = self.client.as_ref().filter(|_| self.budgeted) {
            self.usage.budgets.spend(client, t.total, unix_now());
        }
        self.row(
            key,
            Counts {
                input_tokens: t.prompt,
                output_tokens: t.candidates,
                thinking_tokens: t.thoughts,
                cached_tokens: t.cached,
                total_tokens: t.total,
                ..Counts::default()
            },
        );
    }

    /// A successful answer's stream broke off mid-way.
    pub fn broke_off(&self, key: &Arc<str>) {
        let mut c = Counts::attempt(KeyOutcome::ServerError);
        c.stream_errors = 1;
        self.row(key, c);
    }

    /// The client went away before a successful answer ended.
    pub fn cancelled(&self, key: &Arc<str>) {
        self.row(
            key,
            Counts {
                requests: 1,
                cancelled: 1,
                ..Counts::default()
            },
        );
    }

    fn row(&self, key: &Arc<str>, counts: Counts) {
        if !self.usage.is_recording() {
            return;
        }
        let now = unix_now();
        self.usage.send(Record::Row(
            RowKey {
                minute: now - now.rem_euclid(db::MINUTE),
                key: key.clone(),
                model: self.model.clone(),
                client: self.client.clone().unwrap_or_else(|| Arc::from("")),
                route: self.route,
            },
            counts,
        ));
    }
}

/// `usage.path` resolved: relative paths start at the config file's directory.
fn resolve_path(path: Option<&str>, config_dir: Option<&Path>) -> PathBuf {
    let path = Path::new(path.unwrap_or("data/usage.db"));
    match config_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// The host name (`HOSTNAME`, else `/etc/hostname`), else `local`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_start_beside_the_config() {
        assert_eq!(
            resolve_path(None, Some(Path::new("/etc/gp"))),
            Path::new("/etc/gp/data/usage.db")
        );
        assert_eq!(
            resolve_path(
                Some("/var/lib/gem-proxy/usage.db"),
                Some(Path::new("/etc/gp"))
            ),
            Path::new("/var/lib/gem-proxy/usage.db")
        );
        assert_eq!(resolve_path(Some("u.db"), None), Path::new("u.db"));
    }

    #[test]
    fn counts_split_into_successes_errors_and_cancelled() {
        let mut c = Counts::attempt(KeyOutcome::Success);
        c.add(&Counts::attempt(KeyOutcome::RateLimited));
        c.add(&Counts::attempt(KeyOutcome::ClientError));
        assert_eq!(
            (c.requests, c.successes, c.errors(), c.rate_limited),
            (3, 1, 2, 1)
        );
    }
}
