//! The response cache shared through Redis (`state.backend: redis`), never waited on.
//!
//! The request path reads and fills only the local [`ResponseCache`](super::ResponseCache);
//! this mirror works from a bounded queue in background tasks:
//! - an answer kept here is written to Redis (`SET <prefix>:cache:<key> … PX <ttl>`) and its key
//!   announced on a capped stream (`<prefix>:cache:new`);
//! - every replica reads that stream (from its oldest kept entry at start-up) and copies
//!   announced answers into its local cache, so the next identical request there is a hit
//!   without asking Redis;
//! - a local miss asks Redis for the key in the background, so a replica that started after the
//!   answer was announced finds it from the following request on.
//!
//! When the queue is full (Redis slow or gone) jobs are dropped: the cache stays correct, only
//! less shared.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{CacheKey, CachedAnswer, ResponseCache};
use crate::config::state::RedisStateConfig;

/// Jobs waiting for the background task at most.
const QUEUE: usize = 1024;
/// Announcements kept in the stream (older ones are trimmed).
const STREAM_LEN: usize = 1000;
/// How long one read of the stream blocks.
const READ_BLOCK: Duration = Duration::from_secs(2);
/// Longest pause between two attempts to reach Redis.
const BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum Job {
    Store(CacheKey, CachedAnswer, Duration),
    Fetch(CacheKey),
}

/// The cache's link to Redis: a queue to its background tasks.
#[derive(Debug)]
pub struct Mirror {
    jobs: mpsc::Sender<Job>,
}

impl Mirror {
    /// Starts mirroring `cache` through the Redis `config` names (on the current runtime). Redis
    /// need not be reachable now.
    pub fn start(cache: &Arc<ResponseCache>, config: &RedisStateConfig) -> Option<Self> {
        let Ok(client) = redis::Client::open(config.url()) else {
            tracing::error!("cache: state.redis.url cannot be used; the cache stays local");
            return None;
        };
        let (jobs, rx) = mpsc::channel(QUEUE);
        let prefix = format!("{}:cache", config.key_prefix);
        tokio::spawn(jobs_task(
            Arc::downgrade(cache),
            client.clone(),
            prefix.clone(),
            rx,
        ));
        tokio::spawn(announcements_task(Arc::downgrade(cache), client, prefix));
        Some(Self { jobs })
    }

    /// Writes `answer` to Redis for `ttl`, in the background.
    pub fn store(&self, key: CacheKey, answer: CachedAnswer, ttl: Duration) {
        let _ = self.jobs.try_send(Job::Store(key, answer, ttl));
    }

    /// Looks `key` up in Redis, in the background; found, it is copied into the local cache.
    pub fn fetch(&self, key: &CacheKey) {
        let _ = self.jobs.try_send(Job::Fetch(*key));
    }
}

fn hex(key: &CacheKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<CacheKey> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// An answer as Redis holds it: the content type's length (one byte), the content type, the body.
fn encode(a: &CachedAnswer) -> Vec<u8> {
    let ct = a
        .content_type
        .as_ref()
        .map_or(&[][..], HeaderValue::as_bytes);
    let ct = &ct[..ct.len().min(255)];
    let mut out = Vec::with_capacity(1 + ct.len() + a.body.len());
    out.push(ct.len() as u8);
    out.extend_from_slice(ct);
    out.extend_from_slice(&a.body);
    out
}

fn decode(bytes: Vec<u8>) -> Option<CachedAnswer> {
    let n = usize::from(*bytes.first()?);
    let ct = bytes.get(1..1 + n)?;
    let content_type = if n == 0 {
        None
    } else {
        Some(HeaderValue::from_bytes(ct).ok()?)
    };
    let body = Bytes::from(bytes).slice(1 + n..);
    let tokens = crate::usage::find_usage(&body);
    Some(CachedAnswer {
        content_type,
        body,
        tokens,
    })
}

async fn connect(client: &redis::Client, response: Duration) -> Option<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response))
        .set_number_of_retries(1)
        .set_max_delay(BACKOFF);
    client.get_connection_manager_with_config(config).await.ok()
}

/// Copies the answer Redis holds for `key` (with its remaining life) into `cache`.
async fn fetch_into(
    cache: &ResponseCache,
    conn: &mut ConnectionManager,
    prefix: &str,
    key: &CacheKey,
) -> redis::RedisResult<()> {
    let name = format!("{prefix}:{}", hex(key));
    let (value, ttl_ms): (Option<Vec<u8>>, i64) = redis::pipe()
        .cmd("GET")
        .arg(&name)
        .cmd("PTTL")
        .arg(&name)
        .query_async(conn)
        .await?;
    if let (Some(answer), Ok(ms)) = (value.and_then(decode), u64::try_from(ttl_ms))
        && ms > 0
    {
        let expires = Instant::now() + Duration::from_millis(ms);
        cache.insert_local(*key, answer, expires, cache.max_bytes());
    }
    Ok(())
}

async fn jobs_task(
    cache: Weak<ResponseCache>,
    client: redis::Client,
    prefix: String,
    mut jobs: mpsc::Receiver<Job>,
) {
    let mut conn: Option<ConnectionManager> = None;
    let stream = format!("{prefix}:new");
    while let Some(job) = jobs.recv().await {
        if conn.is_none() {
            conn = connect(&client, Duration::from_secs(1)).await;
        }
        let (Some(c), Some(cache)) = (conn.as_mut(), cache.upgrade()) else {
            // Redis unreachable: this job is dropped, the next one tries again.
            continue;
        };
        let result = match job {
            Job::Store(key, answer, ttl) => {
                let hex = hex(&key);
                redis::pipe()
                    .cmd("SET")
                    .arg(format!("{prefix}:{hex}"))
                    .arg(encode(&answer))
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64)
                    .ignore()
                    .cmd("XADD")
                    .arg(&stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(STREAM_LEN)
                    .arg("*")
                    .arg("k")
                    .arg(&hex)
                    .ignore()
                    .query_async::<()>(c)
                    .await
            }
            Job::Fetch(key) => fetch_into(&cache, c, &prefix, &key).await,
        };
        if result.is_err() {
            conn = None;
        }
    }
}

/// `XREAD`'s answer: per stream, its entries (id, field-value pairs).
type StreamReply = Option<Vec<(String, Vec<(String, HashMap<String, String>)>)>>;

async fn announcements_task(cache: Weak<ResponseCache>, client: redis::Client, prefix: String) {
    let stream = format!("{prefix}:new");
    let mut conn: Option<ConnectionManager> = None;
    // From the oldest announcement kept: a replica that starts copies the recent answers.
    let mut last = "0-0".to_owned();
    loop {
        if cache.strong_count() == 0 {
            return;
        }
        if conn.is_none() {
            conn = connect(&client, READ_BLOCK * 2).await;
            if conn.is_none() {
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        }
        let c = conn.as_mut().expect("connected above");
        let read: redis::RedisResult<StreamReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&last)
            .query_async(c)
            .await;
        let Some(cache) = cache.upgrade() else { return };
        let entries = match read {
            Ok(reply) => reply.into_iter().flatten().flat_map(|(_, e)| e),
            Err(_) => {
                conn = None;
                drop(cache);
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let mut keys = Vec::new();
        for (id, fields) in entries {
            last = id;
            keys.extend(fields.get("k").and_then(|v| unhex(v)));
        }
        for key in keys {
            if !cache.contains(&key) && fetch_into(&cache, c, &prefix, &key).await.is_err() {
                conn = None;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_keys_survive_the_round_trip() {
        let a = CachedAnswer {
            content_type: Some(HeaderValue::from_static("application/json; charset=UTF-8")),
            body: Bytes::from_static(br#"{"usageMetadata":{"totalTokenCount":7}}"#),
            tokens: None,
        };
        let back = decode(encode(&a)).unwrap();
        assert_eq!(back.content_type, a.content_type);
        assert_eq!(back.body, a.body);
        assert_eq!(back.tokens.map(|t| t.total), Some(7));
        let k = super::super::key(&[b"x"]);
        assert_eq!(unhex(&hex(&k)), Some(k));
        assert_eq!(unhex("zz"), None);
    }
}
