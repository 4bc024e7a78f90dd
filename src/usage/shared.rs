//! The merged view of several replicas' history (`state.backend: redis`).
//!
//! Every replica keeps its own SQLite file. A background task (never the request path) shares
//! the minute rows through Redis every `usage.share_interval_milliseconds`:
//! - **publish**: this replica's minute rows of the last few minutes (at start: all it holds)
//!   go into one hash per minute, `P:usage:m:<minute>` (a field per replica, key, model, client
//!   and route; the row's whole counts as its value, so sending a row again is harmless), which
//!   expires with `usage.minute_retention_days`; the minutes written are marked changed in the
//!   sorted set `P:usage:changed` (scored by Redis's clock);
//! - **copy**: the minutes changed since the last round are read back and the other replicas'
//!   rows stored in the local file under their replica ids, replacing an earlier copy;
//! - **key events** (rests, invalidations, enable/disable) go the same way through the stream
//!   `P:usage:events`; a copy already in the file is not stored twice.
//!
//! The admin API then reads the local file as before and answers for every replica (the
//! `replicas` of an answer list them); the roll-up folds the copies into hours like the
//! replica's own rows. Redis slow or gone delays the view, never a request: the task retries at
//! the next round. A replica that joins later copies what Redis still holds: the other
//! replicas' minutes of the last `usage.minute_retention_days`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::Usage;
use super::db::{self, SharedRow};
use crate::config::state::{RedisStateConfig, redacted_redis_url};
use crate::state::redis::{connect, scrub, secrets_of};
use crate::time::now_unix as unix_now;

/// Rows sent to Redis in one pipeline at most.
const CHUNK: usize = 500;
/// Minutes before the last round that are sent again (rows of a minute reach the file up to a
/// flush interval after it ends).
const REPUBLISH: i64 = 3 * db::MINUTE;
/// Overlap of the changed-minutes reads (ms), for a mark written while the last read ran.
const READ_OVERLAP_MS: i64 = 10_000;
/// Key events sent or read in one round at most.
const EVENTS_PER_ROUND: usize = 1000;
/// Approximate length of the key-event stream.
const EVENTS_KEPT: usize = 100_000;

/// A key event in the stream.
#[derive(Debug, Serialize, Deserialize)]
struct WireEvent {
    replica: String,
    key: String,
    at: i64,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seconds: Option<u64>,
}

/// Marks minutes as changed, at Redis's time, and forgets marks older than the retention.
/// `KEYS[1]` the sorted set; `ARGV[1]` the retention (ms); then the minutes.
const MARK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return now
"#;

/// What the sharing task needs.
#[derive(Debug, Clone)]
pub(super) struct ShareOptions {
    pub(super) path: PathBuf,
    pub(super) replica: Arc<str>,
    pub(super) interval: Duration,
    pub(super) minute_retention_days: u32,
}

/// Starts the sharing task on the current runtime; it ends with `usage`.
pub(super) fn spawn(usage: Weak<Usage>, redis: &RedisStateConfig, options: ShareOptions) {
    let url = redis.url().to_owned();
    let shown = redacted_redis_url(&url).unwrap_or_default();
    let secrets = secrets_of(&url);
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(url = %shown, error = %scrub(&e, &secrets),
                "usage history: state.redis.url cannot be used; each replica shows only its own usage");
            return;
        }
    };
    let prefix = redis.key_prefix.clone();
    tokio::spawn(async move {
        let mut task = Sharer {
            options,
            prefix,
            published_up_to: None,
            read_since_ms: None,
            events_sent: 0,
            events_read: None,
            failing: false,
        };
        let mut conn: Option<ConnectionManager> = None;
        loop {
            tokio::time::sleep(task.options.interval).await;
            if usage.strong_count() == 0 {
                return;
            }
            if conn.is_none() {
                conn = connect(&client, Duration::from_secs(5)).await.ok();
            }
            let Some(c) = conn.as_mut() else {
                task.failed(&shown, "cannot connect");
                continue;
            };
            match task.round(c).await {
                Ok(()) => {
                    if task.failing {
                        tracing::info!(url = %shown, "usage history: sharing with the other replicas again");
                    }
                    task.failing = false;
                }
                Err(e) => task.failed(&shown, &scrub(&e, &secrets)),
            }
        }
    });
}

struct Sharer {
    options: ShareOptions,
    prefix: String,
    /// When the last successful publish started (seconds); `None`: publish everything.
    published_up_to: Option<i64>,
    /// Redis's time (ms) when the last successful copy started; `None`: copy everything.
    read_since_ms: Option<i64>,
    /// The rowid of the last own key event sent.
    events_sent: i64,
    /// The stream id of the last key event read; `None`: read from the start.
    events_read: Option<String>,
    /// Logged once per outage.
    failing: bool,
}

impl Sharer {
    fn failed(&mut self, url: &str, error: &str) {
        if !self.failing {
            tracing::warn!(
                url,
                error,
                "usage history: cannot share with the other replicas through Redis; will retry"
            );
        }
        self.failing = true;
    }

    fn retention_ms(&self) -> i64 {
        i64::from(self.options.minute_retention_days.max(1)) * db::DAY * 1000
    }

    fn minute_key(&self, minute: i64) -> String {
        format!("{}:usage:m:{minute}", self.prefix)
    }

    async fn round(&mut self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let started = unix_now();
        let since = self.published_up_to.map_or(i64::MIN, |t| t - REPUBLISH);
        let rows = self.read_own(since).await;
        self.publish(conn, &rows).await?;
        self.published_up_to = Some(started);
        self.copy(conn).await?;
        self.send_events(conn).await?;
        self.read_events(conn).await
    }

    fn events_key(&self) -> String {
        format!("{}:usage:events", self.prefix)
    }

    /// Sends this replica's key events written since the last round.
    async fn send_events(&mut self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let path = self.options.path.clone();
        let replica = self.options.replica.clone();
        let after = self.events_sent;
        let read = tokio::task::spawn_blocking(move || {
            if !path.exists() {
                return Ok(Vec::new());
            }
            let conn = db::open_for_reading(&path)?;
            db::read_own_events(&conn, &replica, after, EVENTS_PER_ROUND)
        })
        .await;
        let Ok(Ok(events)) = read else {
            return Ok(());
        };
        let Some(last) = events.last().map(|(rowid, ..)| *rowid) else {
            return Ok(());
        };
        let mut pipe = redis::pipe();
        for (_, e, key) in events {
            let wire = WireEvent {
                replica: e.replica,
                key,
                at: e.at,
                kind: e.kind,
                model: e.model,
                reason: e.reason,
                seconds: e.seconds,
            };
            let Ok(json) = serde_json::to_string(&wire) else {
                continue;
            };
            pipe.cmd("XADD")
                .arg(self.events_key())
                .arg("MAXLEN")
                .arg("~")
                .arg(EVENTS_KEPT)
                .arg("*")
                .arg("e")
                .arg(json)
                .ignore();
        }
        let () = pipe.query_async(conn).await?;
        self.events_sent = last;
        Ok(())
    }

    /// Stores the other replicas' key events added to the stream since the last round.
    async fn read_events(&mut self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        type Entries = Vec<(String, BTreeMap<String, String>)>;
        let start = self
            .events_read
            .as_ref()
            .map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let entries: Entries = redis::cmd("XRANGE")
            .arg(self.events_key())
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(EVENTS_PER_ROUND)
            .query_async(conn)
            .await?;
        let Some(last) = entries.last().map(|(id, _)| id.clone()) else {
            return Ok(());
        };
        let events: Vec<(db::StoredEvent, String)> = entries
            .iter()
            .filter_map(|(_, fields)| serde_json::from_str::<WireEvent>(fields.get("e")?).ok())
            .filter(|w| *w.replica != *self.options.replica)
            .map(|w| {
                (
                    db::StoredEvent {
                        at: w.at,
                        replica: w.replica,
                        kind: w.kind,
                        model: w.model,
                        reason: w.reason,
                        seconds: w.seconds,
                    },
                    w.key,
                )
            })
            .collect();
        if !events.is_empty() {
            let path = self.options.path.clone();
            let stored = tokio::task::spawn_blocking(move || {
                let mut conn = db::open_for_writing(&path)?;
                db::store_shared_events(&mut conn, &events)
            })
            .await;
            if !matches!(stored, Ok(Ok(_))) {
                // Read again next round.
                return Ok(());
            }
        }
        self.events_read = Some(last);
        Ok(())
    }

    /// This replica's minute rows since `since` (none while the file cannot be read).
    async fn read_own(&self, since: i64) -> Vec<SharedRow> {
        let path = self.options.path.clone();
        let replica = self.options.replica.clone();
        let read = tokio::task::spawn_blocking(move || {
            if !path.exists() {
                return Ok(Vec::new());
            }
            let conn = db::open_for_reading(&path)?;
            db::read_minute_rows(&conn, &replica, since)
        })
        .await;
        match read {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "usage history: cannot read rows to share");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    async fn publish(
        &self,
        conn: &mut ConnectionManager,
        rows: &[SharedRow],
    ) -> redis::RedisResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let retention_ms = self.retention_ms();
        for chunk in rows.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            let mut minutes = BTreeSet::new();
            for row in chunk {
                let field = field(row);
                let value = row
                    .counts
                    .values()
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                pipe.hset(self.minute_key(row.minute), field, value)
                    .ignore();
                minutes.insert(row.minute);
            }
            for minute in &minutes {
                pipe.cmd("PEXPIREAT")
                    .arg(self.minute_key(*minute))
                    .arg(minute * 1000 + retention_ms)
                    .ignore();
            }
            let mut mark = redis::cmd("EVAL");
            mark.arg(MARK)
                .arg(1)
                .arg(format!("{}:usage:changed", self.prefix))
                .arg(retention_ms);
            for minute in &minutes {
                mark.arg(*minute);
            }
            pipe.add_command(mark).ignore();
            let () = pipe.query_async(conn).await?;
        }
        Ok(())
    }

    /// Copies the other replicas' rows of the minutes changed since the last copy.
    async fn copy(&mut self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
        let now_ms = secs * 1000 + micros / 1000;
        let from = self
            .read_since_ms
            .map_or_else(|| "-inf".to_owned(), |t| (t - READ_OVERLAP_MS).to_string());
        let minutes: Vec<i64> = redis::cmd("ZRANGEBYSCORE")
            .arg(format!("{}:usage:changed", self.prefix))
            .arg(from)
            .arg("+inf")
            .query_async(conn)
            .await?;
        let mut rows = Vec::new();
        for chunk in minutes.chunks(100) {
            let mut pipe = redis::pipe();
            for minute in chunk {
                pipe.hgetall(self.minute_key(*minute));
            }
            let hashes: Vec<BTreeMap<String, String>> = pipe.query_async(conn).await?;
            for (minute, hash) in chunk.iter().zip(hashes) {
                rows.extend(
                    hash.iter()
                        .filter_map(|(f, v)| parse(*minute, f, v))
                        .filter(|r| *r.replica != *self.options.replica),
                );
            }
        }
        if !rows.is_empty() {
            // Rows the roll-up may have folded already (with an hour to spare) are not copied.
            let not_before = unix_now() - self.retention_ms() / 1000 + db::HOUR;
            let path = self.options.path.clone();
            let stored = tokio::task::spawn_blocking(move || {
                let mut conn = db::open_for_writing(&path)?;
                db::store_shared_rows(&mut conn, &rows, not_before)
            })
            .await;
            match stored {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    // Tried again next round (the marks are read again from the same time).
                    tracing::warn!(error = %e, "usage history: cannot store other replicas' rows");
                    return Ok(());
                }
                Err(_) => return Ok(()),
            }
        }
        self.read_since_ms = Some(now_ms);
        Ok(())
    }
}

/// Shares the per-client token budgets (see [`super::budget`]) every `interval`
/// (`state.redis.sync_interval_ms`): one pipeline writes this replica's tokens of each client's
/// minute and day (`P:budget:m:<minute>:<client>` and `P:budget:d:<day>:<client>`, a field per
/// replica holding its whole count, so a repeated write counts once) and reads the others' back.
pub(super) fn spawn_budgets(
    usage: Weak<Usage>,
    redis: &RedisStateConfig,
    replica: Arc<str>,
    interval: Duration,
) {
    let url = redis.url().to_owned();
    let shown = redacted_redis_url(&url).unwrap_or_default();
    let secrets = secrets_of(&url);
    let Ok(client) = redis::Client::open(url.as_str()) else {
        // Said once by the usage task or the state store.
        return;
    };
    let prefix = redis.key_prefix.clone();
    tokio::spawn(async move {
        let mut conn: Option<ConnectionManager> = None;
        let mut failing = false;
        loop {
            tokio::time::sleep(interval).await;
            let Some(u) = usage.upgrade() else { return };
            let own = u.budgets().own(unix_now());
            if own.is_empty() {
                continue;
            }
            if conn.is_none() {
                conn = connect(&client, Duration::from_secs(1).max(interval * 5))
                    .await
                    .ok();
            }
            let Some(c) = conn.as_mut() else { continue };
            let mut pipe = redis::pipe();
            for o in &own {
                for (key, tokens, ttl_ms) in [
                    (
                        format!("{prefix}:budget:m:{}:{}", o.minute, o.client),
                        o.minute_tokens,
                        120_000,
                    ),
                    (
                        format!("{prefix}:budget:d:{}:{}", o.day, o.client),
                        o.day_tokens,
                        2 * db::DAY * 1000,
                    ),
                ] {
                    if tokens > 0 {
                        pipe.hset(&key, &*replica, tokens)
                            .ignore()
                            .pexpire(&key, ttl_ms)
                            .ignore();
                    }
                    pipe.hgetall(&key);
                }
            }
            let read: redis::RedisResult<Vec<BTreeMap<String, u64>>> = pipe.query_async(c).await;
            match read {
                Ok(hashes) if hashes.len() == 2 * own.len() => {
                    let others = |h: &BTreeMap<String, u64>| {
                        h.iter()
                            .filter(|(r, _)| **r != *replica)
                            .map(|(_, t)| *t)
                            .sum::<u64>()
                    };
                    for (o, pair) in own.iter().zip(hashes.chunks(2)) {
                        u.budgets().set_others(
                            &o.client,
                            o.minute,
                            others(&pair[0]),
                            o.day,
                            others(&pair[1]),
                        );
                    }
                    failing = false;
                }
                Ok(_) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(url = %shown, error = %scrub(&e, &secrets),
                            "token budgets: cannot share with the other replicas through Redis; deciding from this replica's tokens and the others' as last read");
                    }
                    failing = true;
                }
            }
        }
    });
}

/// A row's field in its minute's hash: `[replica, key, model, client, route]` as JSON (any of
/// them may hold any character).
fn field(row: &SharedRow) -> String {
    serde_json::to_string(&[&row.replica, &row.key, &row.model, &row.client, &row.route])
        .unwrap_or_default()
}

/// A row back from its field and value; `None` for anything malformed (skipped).
fn parse(minute: i64, field: &str, value: &str) -> Option<SharedRow> {
    let [replica, key, model, client, route]: [String; 5] = serde_json::from_str(field).ok()?;
    let mut values = [0u64; db::COUNT_COLUMNS.len()];
    let mut parts = value.split(',');
    for v in &mut values {
        *v = parts.next()?.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(SharedRow {
        replica,
        minute,
        key,
        model,
        client,
        route,
        counts: super::Counts::from_values(values),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_survives_its_trip_through_redis_and_garbage_is_skipped() {
        let row = SharedRow {
            replica: "pod-a".into(),
            minute: 1_700_000_040,
            key: "key,1".into(),
            model: "gemini-2.5-flash".into(),
            client: "\"odd\" client".into(),
            route: "generate".into(),
            counts: super::super::Counts {
                requests: 3,
                successes: 2,
                rate_limited: 1,
                total_tokens: 42,
                ..Default::default()
            },
        };
        let value = row
            .counts
            .values()
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse(row.minute, &field(&row), &value), Some(row.clone()));
        assert_eq!(parse(row.minute, "not json", &value), None);
        assert_eq!(parse(row.minute, &field(&row), "1,2,3"), None);
        assert_eq!(parse(row.minute, &field(&row), &format!("{value},9")), None);
    }
}
