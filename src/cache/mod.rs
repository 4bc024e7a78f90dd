//! The response cache's store: answers kept by an exact-match key, least recently used first
//! out, bounded by bytes (`cache.max_bytes`) and by age (`cache.ttl_seconds`).
//!
//! The layer that decides what is cached and when is `src/layers/response_cache.rs`; this is
//! what it keeps, plus the pure rules it asks: what makes the key, and whether an answer may be
//! kept. One store per process, kept across config reloads (a change of `cache.max_bytes` applies
//! at the next insert). With `state.backend: redis` the store is mirrored through Redis in the
//! background ([`mirror`]); the request path only ever reads this process's memory.

pub mod mirror;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use aws_lc_rs::digest;
use bytes::Bytes;
use hashlink::LruCache;
use http::HeaderValue;
use serde_json::Value;
use tokio::time::Instant;

use crate::key_pool::Tokens;
use crate::route::RouteLabel;

/// A cache key: the SHA-256 of what identifies a request.
pub type CacheKey = [u8; 32];

/// What one cached entry costs beside its body: the key, the bookkeeping, the map's slot.
pub const ENTRY_OVERHEAD: usize = 160;

/// The key of a request made of `parts` (method, path, query, model, client, body): each part is
/// length-prefixed, so no two different lists of parts share a key.
pub fn key(parts: &[&[u8]]) -> CacheKey {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Whether the routes' answers may be cached at all (before the body is looked at).
pub fn cacheable_route(label: RouteLabel) -> bool {
    matches!(
        label,
        RouteLabel::Generate
            | RouteLabel::CountTokens
            | RouteLabel::Embed
            | RouteLabel::OpenAiChat
            | RouteLabel::OpenAiEmbeddings
    )
}

/// Whether a successful answer for `label` may be kept: a JSON object, not an error, and for a
/// generation every candidate (or OpenAI choice) finished with `STOP` (`stop`). An answer cut by
/// `MAX_TOKENS`, blocked by safety, or with no candidates is not.
pub fn cacheable_answer(label: RouteLabel, body: &[u8]) -> bool {
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    if answer.contains_key("error") {
        return false;
    }
    let all_finished = |list: &str, field: &str, want: &str| {
        answer
            .get(list)
            .and_then(Value::as_array)
            .is_some_and(|items| {
                !items.is_empty()
                    && items
                        .iter()
                        .all(|c| c.get(field).and_then(Value::as_str) == Some(want))
            })
    };
    match label {
        RouteLabel::Generate => all_finished("candidates", "finishReason", "STOP"),
        RouteLabel::OpenAiChat => all_finished("choices", "finish_reason", "stop"),
        _ => true,
    }
}

/// One answer as it is kept: its content type, its body, and the tokens it reported (counted
/// again for the client on every hit).
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    /// `Content-Type` of the answer.
    pub content_type: Option<HeaderValue>,
    /// The answer, as Google sent it.
    pub body: Bytes,
    /// Its `usageMetadata` (or OpenAI `usage`), if it had one.
    pub tokens: Option<Tokens>,
}

impl CachedAnswer {
    /// Bytes this answer holds in the cache.
    pub fn size(&self) -> usize {
        self.body.len() + self.content_type.as_ref().map_or(0, HeaderValue::len) + ENTRY_OVERHEAD
    }
}

#[derive(Debug)]
struct Entry {
    answer: CachedAnswer,
    expires: Instant,
}

#[derive(Debug)]
struct Inner {
    lru: LruCache<CacheKey, Entry>,
    bytes: usize,
}

/// Counts for metrics and `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers held.
    pub entries: usize,
    /// Bytes they hold (with [`ENTRY_OVERHEAD`] each).
    pub bytes: usize,
    /// Answers dropped to stay within `cache.max_bytes`.
    pub evicted: u64,
}

/// The answers held by this process.
#[derive(Debug)]
pub struct ResponseCache {
    inner: Mutex<Inner>,
    evicted: AtomicU64,
    /// `cache.max_bytes` as last set, 0 while the cache is off (for answers the mirror brings
    /// in).
    max_bytes: AtomicUsize,
    mirror: std::sync::OnceLock<mirror::Mirror>,
}

impl Default for ResponseCache {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                lru: LruCache::new_unbounded(),
                bytes: 0,
            }),
            evicted: AtomicU64::new(0),
            max_bytes: AtomicUsize::new(0),
            mirror: std::sync::OnceLock::new(),
        }
    }
}

impl ResponseCache {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mirrors this cache through Redis from now on (see [`mirror`]). Set once.
    pub fn set_mirror(&self, mirror: mirror::Mirror) {
        let _ = self.mirror.set(mirror);
    }

    /// The answer kept for `key`, if it is still fresh; a stale one is dropped. A miss asks the
    /// mirror (in the background) so a later request may find what another replica kept.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<CachedAnswer> {
        let mut inner = self.inner();
        match inner.lru.get(key) {
            Some(e) if e.expires > now => return Some(e.answer.clone()),
            Some(_) => {
                if let Some(e) = inner.lru.remove(key) {
                    inner.bytes -= e.answer.size();
                }
            }
            None => {}
        }
        drop(inner);
        if let Some(m) = self.mirror.get() {
            m.fetch(key);
        }
        None
    }

    /// Keeps `answer` for `ttl`, dropping the least recently used answers until everything fits
    /// in `max_bytes`; an answer larger than `max_bytes` alone is not kept. Sent on to the
    /// mirror (in the background) unless it came from there.
    pub fn insert(
        &self,
        key: CacheKey,
        answer: CachedAnswer,
        ttl: Duration,
        max_bytes: usize,
        now: Instant,
    ) -> bool {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        if !self.insert_local(key, answer.clone(), now + ttl, max_bytes) {
            return false;
        }
        if let Some(m) = self.mirror.get() {
            m.store(key, answer, ttl);
        }
        true
    }

    /// Keeps `answer` until `expires` in this process only.
    pub fn insert_local(
        &self,
        key: CacheKey,
        answer: CachedAnswer,
        expires: Instant,
        max_bytes: usize,
    ) -> bool {
        let size = answer.size();
        if size > max_bytes {
            return false;
        }
        let mut inner = self.inner();
        if let Some(old) = inner.lru.remove(&key) {
            inner.bytes -= old.answer.size();
        }
        let mut evicted = 0;
        while inner.bytes + size > max_bytes {
            let Some((_, e)) = inner.lru.remove_lru() else {
                break;
            };
            inner.bytes -= e.answer.size();
            evicted += 1;
        }
        inner.bytes += size;
        inner.lru.insert(key, Entry { answer, expires });
        drop(inner);
        if evicted > 0 {
            self.evicted.fetch_add(evicted, Ordering::Relaxed);
        }
        true
    }

    /// Sets `cache.max_bytes` for answers the mirror brings in (each insert sets it too).
    pub fn set_max_bytes(&self, max_bytes: usize) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// `cache.max_bytes` as last set.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes.load(Ordering::Relaxed)
    }

    /// Whether an answer (fresh or not) is held for `key`; does not count as a use.
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.inner().lru.contains_key(key)
    }

    /// Drops every answer (admin API).
    pub fn clear(&self) -> usize {
        let mut inner = self.inner();
        let n = inner.lru.len();
        inner.lru.clear();
        inner.bytes = 0;
        n
    }

    /// Entries, bytes and evictions.
    pub fn stats(&self) -> CacheStats {
        let inner = self.inner();
        CacheStats {
            entries: inner.lru.len(),
            bytes: inner.bytes,
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: usize) -> CachedAnswer {
        CachedAnswer {
            content_type: None,
            body: Bytes::from(vec![b'x'; n]),
            tokens: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_after_their_ttl() {
        let cache = ResponseCache::default();
        let k = key(&[b"a"]);
        let now = Instant::now();
        assert!(cache.insert(k, answer(10), Duration::from_secs(5), 10_000, now));
        assert!(cache.get(&k, now).is_some());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(cache.get(&k, Instant::now()).is_none());
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn the_least_recently_used_go_first_and_bytes_stay_bounded() {
        let cache = ResponseCache::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let max = 3 * (100 + ENTRY_OVERHEAD);
        let [a, b, c, d] = [b"a", b"b", b"c", b"d"].map(|p| key(&[p]));
        for k in [a, b, c] {
            assert!(cache.insert(k, answer(100), ttl, max, now));
        }
        assert!(cache.get(&a, now).is_some(), "a is now the most recent");
        assert!(cache.insert(d, answer(100), ttl, max, now));
        assert!(
            cache.get(&b, now).is_none(),
            "b was the least recently used"
        );
        assert!(cache.get(&a, now).is_some());
        let s = cache.stats();
        assert_eq!((s.entries, s.evicted), (3, 1));
        assert!(s.bytes <= max);
        assert!(!cache.insert(key(&[b"big"]), answer(max), ttl, max, now));
    }

    #[test]
    fn keys_do_not_run_parts_together() {
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        assert_eq!(key(&[b"ab", b"c"]), key(&[b"ab", b"c"]));
    }

    #[test]
    fn only_finished_answers_are_kept() {
        let stop = br#"{"candidates":[{"finishReason":"STOP"}]}"#;
        let max = br#"{"candidates":[{"finishReason":"MAX_TOKENS"}]}"#;
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"}}"#;
        assert!(cacheable_answer(RouteLabel::Generate, stop));
        assert!(!cacheable_answer(RouteLabel::Generate, max));
        assert!(!cacheable_answer(RouteLabel::Generate, blocked));
        assert!(!cacheable_answer(
            RouteLabel::Generate,
            br#"{"candidates":[{"finishReason":"STOP"},{"finishReason":"SAFETY"}]}"#
        ));
        assert!(cacheable_answer(
            RouteLabel::OpenAiChat,
            br#"{"choices":[{"finish_reason":"stop"}]}"#
        ));
        assert!(!cacheable_answer(
            RouteLabel::OpenAiChat,
            br#"{"choices":[{"finish_reason":"length"}]}"#
        ));
        assert!(cacheable_answer(
            RouteLabel::CountTokens,
            br#"{"totalTokens":3}"#
        ));
        assert!(!cacheable_answer(
            RouteLabel::Embed,
            br#"{"error":{"code":400}}"#
        ));
        assert!(!cacheable_answer(RouteLabel::Embed, b"not json"));
    }
}
