//! `state`: where key state, limits and bindings live (one process, or several replicas sharing
//! one Redis). Read at start-up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;

/// `state`: the key-state backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `memory` (the default: one process, nothing to install) or `redis` (several replicas
    /// share limits, rests, invalid and disabled keys, and file/cache bindings).
    pub backend: StateBackend,
    /// The Redis backend; read only with `backend: redis`.
    pub redis: RedisStateConfig,
}

/// Which store holds key state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// In this process only.
    #[default]
    Memory,
    /// Shared through Redis, with a local copy that decides (see `src/state`).
    Redis,
}

/// `state.redis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisStateConfig {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://…` for TLS (rustls, the system's
    /// trust store). A secret: it may carry a password, so it is never shown (the admin API
    /// masks it, `/health` shows only scheme, host, port and database). Unset:
    /// [`DEFAULT_REDIS_URL`].
    pub url: Option<Secret>,
    /// Prefix of every Redis key and channel, so several gateways (or environments) can share
    /// one Redis.
    pub key_prefix: String,
    /// How often a replica reconciles with Redis in the background: tops up its quota leases,
    /// reports tokens, and refreshes its replica heartbeat. Rests, invalid keys, disables and
    /// bindings travel at once by pub/sub; this interval bounds how stale the rest may be.
    pub sync_interval_ms: u64,
}

impl Default for RedisStateConfig {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "gem-proxy".into(),
            sync_interval_ms: 200,
        }
    }
}

/// `state.redis.url` when none is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Bounds of `state.redis.sync_interval_ms`.
pub const SYNC_INTERVAL_MS: std::ops::RangeInclusive<u64> = 10..=10_000;

impl RedisStateConfig {
    /// The URL to connect to.
    pub fn url(&self) -> &str {
        self.url.as_ref().map_or(DEFAULT_REDIS_URL, Secret::expose)
    }

    /// `sync_interval_ms` as a duration.
    pub fn sync_interval(&self) -> Duration {
        Duration::from_millis(self.sync_interval_ms)
    }

    /// Problems with this section, as `(path, message)`; messages never show the password.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Err(msg) = check_redis_url(self.url()) {
            p.push(("state.redis.url".to_owned(), msg));
        }
        let prefix = &self.key_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            p.push((
                "state.redis.key_prefix".to_owned(),
                "must be 1 to 64 characters, without spaces".to_owned(),
            ));
        }
        if !SYNC_INTERVAL_MS.contains(&self.sync_interval_ms) {
            p.push((
                "state.redis.sync_interval_ms".to_owned(),
                format!(
                    "must be between {} and {}",
                    SYNC_INTERVAL_MS.start(),
                    SYNC_INTERVAL_MS.end()
                ),
            ));
        }
        p
    }
}

/// What may be shown of a Redis URL: scheme, host, port and database, never the user or the
/// password. `None` when it is not a Redis URL.
pub fn redacted_redis_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "redis" && scheme != "rediss" {
        return None;
    }
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    // The last `@` ends the user info (a password may itself contain `@`).
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    Some(format!("{scheme}://{host}{path}"))
}

fn check_redis_url(url: &str) -> Result<(), String> {
    let Some(shown) = redacted_redis_url(url) else {
        return Err("must start with redis:// or rediss://".to_owned());
    };
    let host = shown
        .split_once("://")
        .map(|(_, r)| r.split('/').next().unwrap_or_default())
        .unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{shown:?} has no host"));
    }
    if let Some((_, db)) = shown.split_once("://").and_then(|(_, r)| r.split_once('/'))
        && !db.is_empty()
        && db.parse::<u32>().is_err()
    {
        return Err(format!("{shown:?}: the database must be a number"));
    }
    // The redis crate parses it too: its verdict, without echoing the URL (it may hold a password).
    redis::parse_redis_url(url)
        .map(|_| ())
        .ok_or_else(|| format!("{shown:?} is not a usable Redis URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_never_show_user_or_password() {
        assert_eq!(
            redacted_redis_url("redis://user:p@ss@redis.internal:6380/2").as_deref(),
            Some("redis://redis.internal:6380/2")
        );
        assert_eq!(
            redacted_redis_url("rediss://:secret@h").as_deref(),
            Some("rediss://h")
        );
        assert_eq!(redacted_redis_url("http://h"), None);
    }

    #[test]
    fn problems_name_the_field_and_hide_the_password() {
        let mut c = RedisStateConfig {
            url: Some(Secret::new("redis://u:hunter2@/x")),
            key_prefix: String::new(),
            sync_interval_ms: 0,
        };
        let p = c.problems();
        let paths: Vec<&str> = p.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            paths,
            [
                "state.redis.url",
                "state.redis.key_prefix",
                "state.redis.sync_interval_ms"
            ]
        );
        assert!(p.iter().all(|(_, m)| !m.contains("hunter2")), "{p:?}");
        c = RedisStateConfig {
            url: Some(Secret::new("rediss://default:pw@redis:6379/0")),
            ..RedisStateConfig::default()
        };
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        c.url = Some(Secret::new("memcached://h"));
        assert_eq!(c.problems().len(), 1);
    }
}
