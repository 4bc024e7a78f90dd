//! `usage`: the usage history (see [`crate::usage`]) and the price table for its cost estimates.

use serde::{Deserialize, Serialize};

/// `usage`: per-minute history of requests, errors and tokens per key, model, client and route,
/// kept in a local SQLite file across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Keep the history. Read at start-up.
    pub enabled: bool,
    /// The SQLite file; a relative path is taken from the config file's directory. Unset:
    /// `data/usage.db` beside the config file. Read at start-up.
    pub path: Option<String>,
    /// This replica's name on its rows (several replicas each write their own file; a shared view
    /// merges them by this id). Unset: the host name. Read at start-up.
    pub replica_id: Option<String>,
    /// Minute rows older than this are summed into hour rows.
    pub minute_retention_days: u32,
    /// Rows (and key events) older than this are deleted.
    pub retention_days: u32,
    /// Rows waiting for the writer at most; when the disk cannot keep up, further rows are
    /// dropped (and counted in `gem_proxy_usage_rows_dropped_total`), never queued without bound
    /// and never waited for. Read at start-up.
    pub queue_capacity: usize,
    /// How often the writer commits what it gathered, in milliseconds. Read at start-up.
    pub flush_interval_milliseconds: u64,
    /// With `state.backend: redis`: how often each replica sends its recent minute rows to Redis
    /// and copies the other replicas' rows into its file (the merged view), in milliseconds.
    /// Read at start-up.
    pub share_interval_milliseconds: u64,
    /// Prices for the cost estimate, first matching `model` pattern wins.
    pub prices: Vec<PriceConfig>,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            replica_id: None,
            minute_retention_days: 7,
            retention_days: 90,
            queue_capacity: 10_000,
            flush_interval_milliseconds: 1000,
            share_interval_milliseconds: 10_000,
            prices: Vec::new(),
        }
    }
}

/// One line of `usage.prices`: what a million tokens of a model cost (in any currency; the
/// estimate is in the same one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Model pattern: `*` matches any run of characters, `?` one (`gemini-2.5-flash*`).
    pub model: String,
    /// Per million input (prompt) tokens that were not served from a cache.
    #[serde(default)]
    pub input_per_million: f64,
    /// Per million output tokens (answer and thinking tokens: Google bills both as output).
    #[serde(default)]
    pub output_per_million: f64,
    /// Per million input tokens served from a context cache.
    #[serde(default)]
    pub cached_per_million: f64,
}

impl UsageConfig {
    /// What is wrong with this section, as `(path, message)`.
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.path.as_deref().is_some_and(|v| v.trim().is_empty()) {
            p.push((
                "usage.path".into(),
                "must not be empty (leave it out for the default)".into(),
            ));
        }
        if self
            .replica_id
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            p.push((
                "usage.replica_id".into(),
                "must not be empty (leave it out for the host name)".into(),
            ));
        }
        if self.minute_retention_days == 0 {
            p.push((
                "usage.minute_retention_days".into(),
                "must be at least 1".into(),
            ));
        }
        if self.retention_days < self.minute_retention_days {
            p.push((
                "usage.retention_days".into(),
                "must be at least usage.minute_retention_days".into(),
            ));
        }
        if self.queue_capacity == 0 {
            p.push(("usage.queue_capacity".into(), "must be at least 1".into()));
        }
        if self.flush_interval_milliseconds == 0 {
            p.push((
                "usage.flush_interval_milliseconds".into(),
                "must be > 0".into(),
            ));
        }
        if self.share_interval_milliseconds == 0 {
            p.push((
                "usage.share_interval_milliseconds".into(),
                "must be > 0".into(),
            ));
        }
        for (i, price) in self.prices.iter().enumerate() {
            if price.model.trim().is_empty() {
                p.push((
                    format!("usage.prices[{i}].model"),
                    "must not be empty".into(),
                ));
            }
            for (field, v) in [
                ("input_per_million", price.input_per_million),
                ("output_per_million", price.output_per_million),
                ("cached_per_million", price.cached_per_million),
            ] {
                if !v.is_finite() || v < 0.0 {
                    p.push((
                        format!("usage.prices[{i}].{field}"),
                        "must be a number ≥ 0".into(),
                    ));
                }
            }
        }
        p
    }
}
