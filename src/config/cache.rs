//! `cache`: the response cache (off by default).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `cache`: exact-match answers kept for repeated requests (see `src/layers/response_cache.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Answer a repeated request from the cache. Off by default.
    pub enabled: bool,
    /// Share answers across clients. Off by default: the client's identity (the token's `sub`)
    /// is part of the cache key, so one client never receives another's answer.
    pub shared: bool,
    /// Bytes the cached answers (bodies and keys) may hold in this process at most; the least
    /// recently used go first.
    pub max_bytes: usize,
    /// How long an answer stays usable.
    pub ttl_seconds: u64,
    /// Answers larger than this are not cached (at most `max_bytes`).
    pub max_entry_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            shared: false,
            max_bytes: 64 * 1024 * 1024,
            ttl_seconds: 300,
            max_entry_bytes: 1024 * 1024,
        }
    }
}

impl CacheConfig {
    /// `ttl_seconds` as a duration.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_seconds)
    }

    /// `max_bytes` while the cache is on, 0 while it is off (nothing is kept then).
    pub fn max_bytes_while_on(&self) -> usize {
        if self.enabled { self.max_bytes } else { 0 }
    }

    /// Problems as `(path, message)`, paths under `cache`.
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.enabled {
            if self.ttl_seconds == 0 {
                p.push(("cache.ttl_seconds".into(), "must be at least 1".into()));
            }
            if self.max_bytes == 0 {
                p.push(("cache.max_bytes".into(), "must be at least 1".into()));
            }
        }
        if self.max_entry_bytes > self.max_bytes {
            p.push((
                "cache.max_entry_bytes".into(),
                "must be at most cache.max_bytes".into(),
            ));
        }
        p
    }
}
