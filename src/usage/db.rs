//! The SQLite side of the usage history: the schema, writing a batch, the roll-up, and the reads
//! the admin API makes. Everything here is blocking; it runs on the writer thread or, for reads,
//! on a blocking task with its own connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use super::{Counts, KeyEvent, RowKey};

/// A minute row covers this many seconds; an hour row [`HOUR`].
pub(crate) const MINUTE: i64 = 60;
/// Seconds in an hour row.
pub(crate) const HOUR: i64 = 3600;
pub(crate) const DAY: i64 = 86_400;

/// How long a connection waits for another one's lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The counter columns, in [`Counts::values`] order.
pub(crate) const COUNT_COLUMNS: [&str; 14] = [
    "requests",
    "successes",
    "rate_limited",
    "invalid",
    "overloaded",
    "server_errors",
    "client_errors",
    "cancelled",
    "input_tokens",
    "output_tokens",
    "thinking_tokens",
    "cached_tokens",
    "total_tokens",
    "stream_errors",
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    bucket INTEGER NOT NULL,
    width INTEGER NOT NULL,
    replica TEXT NOT NULL,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    client TEXT NOT NULL,
    route TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    successes INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0,
    invalid INTEGER NOT NULL DEFAULT 0,
    overloaded INTEGER NOT NULL DEFAULT 0,
    server_errors INTEGER NOT NULL DEFAULT 0,
    client_errors INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    thinking_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    stream_errors INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (width, bucket, replica, key, model, client, route)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (bucket);
CREATE TABLE IF NOT EXISTS key_events (
    at INTEGER NOT NULL,
    replica TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    model TEXT,
    reason TEXT NOT NULL,
    seconds INTEGER
);
CREATE INDEX IF NOT EXISTS key_events_by_key ON key_events (key, at);
";

/// Opens (creating when missing) the database for writing, with the schema in place.
pub(crate) fn open_for_writing(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL lets the admin API read while the writer writes.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Opens the database for the admin API's reads.
pub(crate) fn open_for_reading(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Adds one batch of minute rows and key events, in one transaction.
pub(crate) fn write_batch<S: std::hash::BuildHasher>(
    conn: &mut Connection,
    replica: &str,
    rows: &HashMap<RowKey, Counts, S>,
    events: &[KeyEvent],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut upsert = tx.prepare_cached(&upsert_sql())?;
        for (k, c) in rows {
            let v = c.values();
            upsert.execute(params![
                k.minute,
                MINUTE,
                replica,
                &*k.key,
                &*k.model,
                &*k.client,
                k.route,
                v[0] as i64,
                v[1] as i64,
                v[2] as i64,
                v[3] as i64,
                v[4] as i64,
                v[5] as i64,
                v[6] as i64,
                v[7] as i64,
                v[8] as i64,
                v[9] as i64,
                v[10] as i64,
                v[11] as i64,
                v[12] as i64,
                v[13] as i64,
            ])?;
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO key_events (at, replica, key, kind, model, reason, seconds)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for e in events {
            insert.execute(params![
                e.at,
                replica,
                &*e.key,
                e.kind.as_str(),
                e.model.as_deref(),
                e.reason,
                e.seconds.map(|s| s as i64),
            ])?;
        }
    }
    tx.commit()
}

fn upsert_sql() -> String {
    let cols = COUNT_COLUMNS.join(", ");
    let placeholders: Vec<String> = (8..8 + COUNT_COLUMNS.len())
        .map(|i| format!("?{i}"))
        .collect();
    let adds: Vec<String> = COUNT_COLUMNS
        .iter()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO usage (bucket, width, replica, key, model, client, route, {cols})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {})
         ON CONFLICT (width, bucket, replica, key, model, client, route) DO UPDATE SET {}",
        placeholders.join(", "),
        adds.join(", ")
    )
}

/// Sums minute rows older than `minute_retention_days` into hour rows (adding to an hour row
/// already there), then deletes rows and key events older than `retention_days`. `now` is in
/// seconds since the epoch. One transaction: a crash in the middle loses nothing and counts
/// nothing twice.
pub(crate) fn roll_up(
    conn: &mut Connection,
    now: i64,
    minute_retention_days: u32,
    retention_days: u32,
) -> rusqlite::Result<RollUp> {
    let minute_cutoff = now - i64::from(minute_retention_days) * DAY;
    let cutoff = now - i64::from(retention_days) * DAY;
    let cols = COUNT_COLUMNS.join(", ");
    let sums: Vec<String> = COUNT_COLUMNS.iter().map(|c| format!("SUM({c})")).collect();
    let adds: Vec<String> = COUNT_COLUMNS
        .iter()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect();
    let tx = conn.transaction()?;
    // `WHERE true` keeps SQLite from reading ON CONFLICT as part of the SELECT.
    let rolled = tx.execute(
        &format!(
            "INSERT INTO usage (bucket, width, replica, key, model, client, route, {cols})
             SELECT (bucket / {HOUR}) * {HOUR}, {HOUR}, replica, key, model, client, route, {}
             FROM usage WHERE width = {MINUTE} AND bucket < ?1 AND true
             GROUP BY (bucket / {HOUR}) * {HOUR}, replica, key, model, client, route
             ON CONFLICT (width, bucket, replica, key, model, client, route) DO UPDATE SET {}",
            sums.join(", "),
            adds.join(", ")
        ),
        params![minute_cutoff],
    )?;
    let minute_rows = tx.execute(
        &format!("DELETE FROM usage WHERE width = {MINUTE} AND bucket < ?1"),
        params![minute_cutoff],
    )?;
    let expired = tx.execute("DELETE FROM usage WHERE bucket < ?1", params![cutoff])?;
    let events = tx.execute("DELETE FROM key_events WHERE at < ?1", params![cutoff])?;
    tx.commit()?;
    Ok(RollUp {
        hour_rows: rolled,
        minute_rows,
        expired_rows: expired + events,
    })
}

/// What a roll-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RollUp {
    /// Hour rows written or added to.
    pub(crate) hour_rows: usize,
    /// Minute rows folded into them (and deleted).
    pub(crate) minute_rows: usize,
    /// Rows and key events deleted for age.
    pub(crate) expired_rows: usize,
}

/// What a usage read groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// The upstream key's id.
    Key,
    /// The model.
    Model,
    /// The client (the token's `sub`; empty with auth off).
    Client,
    /// The route (`generate`, `stream`, `openai_chat`, …).
    Route,
}

impl GroupBy {
    /// Parses `key`, `model`, `client` or `route`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "key" => GroupBy::Key,
            "model" => GroupBy::Model,
            "client" => GroupBy::Client,
            "route" => GroupBy::Route,
            _ => return None,
        })
    }

    /// The column name (and the parameter's value).
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Model => "model",
            GroupBy::Client => "client",
            GroupBy::Route => "route",
        }
    }
}

/// One read row: counts of one group and model in one time step.
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    /// Start of the step, seconds since the epoch.
    pub(crate) time: i64,
    /// The group's value.
    pub(crate) group: Arc<str>,
    /// The model (for the cost).
    pub(crate) model: Arc<str>,
    /// The sums.
    pub(crate) counts: Counts,
}

/// Sums per `step` seconds (buckets start at multiples of it), group and model, for rows with
/// `from <= bucket < to`. Hour rows (older than the minute retention) fall into the step their
/// hour starts in.
pub(crate) fn read_cells(
    conn: &Connection,
    from: i64,
    to: i64,
    step: i64,
    group: GroupBy,
) -> rusqlite::Result<Vec<Cell>> {
    let sums: Vec<String> = COUNT_COLUMNS.iter().map(|c| format!("SUM({c})")).collect();
    let g = group.as_str();
    let mut stmt = conn.prepare(&format!(
        "SELECT (bucket / ?3) * ?3 AS t, {g}, model, {} FROM usage
         WHERE bucket >= ?1 AND bucket < ?2
         GROUP BY t, {g}, model ORDER BY t, {g}, model",
        sums.join(", ")
    ))?;
    let mut names: HashMap<String, Arc<str>> = HashMap::new();
    let mut intern = |s: String| -> Arc<str> {
        names
            .entry(s)
            .or_insert_with_key(|s| Arc::from(s.as_str()))
            .clone()
    };
    let rows = stmt.query_map(params![from, to, step.max(1)], |r| {
        let mut values = [0u64; COUNT_COLUMNS.len()];
        for (i, v) in values.iter_mut().enumerate() {
            *v = r.get::<_, i64>(3 + i)?.max(0) as u64;
        }
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            values,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (time, group, model, values) = row?;
        out.push(Cell {
            time,
            group: intern(group),
            model: intern(model),
            counts: Counts::from_values(values),
        });
    }
    Ok(out)
}

/// One minute row with its replica, as shared with the other replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SharedRow {
    pub(crate) replica: String,
    /// Start of the minute, seconds since the epoch.
    pub(crate) minute: i64,
    pub(crate) key: String,
    pub(crate) model: String,
    pub(crate) client: String,
    pub(crate) route: String,
    pub(crate) counts: Counts,
}

/// `replica`'s minute rows with `bucket >= since`.
pub(crate) fn read_minute_rows(
    conn: &Connection,
    replica: &str,
    since: i64,
) -> rusqlite::Result<Vec<SharedRow>> {
    let cols = COUNT_COLUMNS.join(", ");
    let mut stmt = conn.prepare(&format!(
        "SELECT bucket, key, model, client, route, {cols} FROM usage
         WHERE width = {MINUTE} AND replica = ?1 AND bucket >= ?2"
    ))?;
    let rows = stmt.query_map(params![replica, since], |r| {
        let mut values = [0u64; COUNT_COLUMNS.len()];
        for (i, v) in values.iter_mut().enumerate() {
            *v = r.get::<_, i64>(5 + i)?.max(0) as u64;
        }
        Ok(SharedRow {
            replica: replica.to_owned(),
            minute: r.get(0)?,
            key: r.get(1)?,
            model: r.get(2)?,
            client: r.get(3)?,
            route: r.get(4)?,
            counts: Counts::from_values(values),
        })
    })?;
    rows.collect()
}

/// Stores other replicas' minute rows, replacing what an earlier copy of the same row said
/// (each copy carries the row's whole counts, so a row copied twice counts once). Rows older than
/// `not_before` are skipped: the roll-up may already have folded them into hours.
pub(crate) fn store_shared_rows(
    conn: &mut Connection,
    rows: &[SharedRow],
    not_before: i64,
) -> rusqlite::Result<usize> {
    let cols = COUNT_COLUMNS.join(", ");
    let placeholders: Vec<String> = (8..8 + COUNT_COLUMNS.len())
        .map(|i| format!("?{i}"))
        .collect();
    let sets: Vec<String> = COUNT_COLUMNS
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let tx = conn.transaction()?;
    let mut stored = 0;
    {
        let mut replace = tx.prepare(&format!(
            "INSERT INTO usage (bucket, width, replica, key, model, client, route, {cols})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {})
             ON CONFLICT (width, bucket, replica, key, model, client, route) DO UPDATE SET {}",
            placeholders.join(", "),
            sets.join(", ")
        ))?;
        for row in rows.iter().filter(|r| r.minute >= not_before) {
            let v = row.counts.values().map(|v| v as i64);
            let mut p: Vec<&dyn rusqlite::ToSql> = vec![
                &row.minute,
                &MINUTE,
                &row.replica,
                &row.key,
                &row.model,
                &row.client,
                &row.route,
            ];
            p.extend(v.iter().map(|v| v as &dyn rusqlite::ToSql));
            replace.execute(p.as_slice())?;
            stored += 1;
        }
    }
    tx.commit()?;
    Ok(stored)
}

/// `replica`'s key events after `after` (a rowid), oldest first, at most `limit`, each with its
/// rowid.
pub(crate) fn read_own_events(
    conn: &Connection,
    replica: &str,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, StoredEvent, String)>> {
    let mut stmt = conn.prepare(
        "SELECT rowid, at, kind, model, reason, seconds, key FROM key_events
         WHERE replica = ?1 AND rowid > ?2 ORDER BY rowid LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![replica, after, limit as i64], |r| {
        Ok((
            r.get(0)?,
            StoredEvent {
                at: r.get(1)?,
                replica: replica.to_owned(),
                kind: r.get(2)?,
                model: r.get(3)?,
                reason: r.get(4)?,
                seconds: r.get::<_, Option<i64>>(5)?.map(|s| s.max(0) as u64),
            },
            r.get(6)?,
        ))
    })?;
    rows.collect()
}

/// Stores other replicas' key events (`(event, key)`), each once: an event already in the file
/// (the same time, replica, key, kind, model and reason) is not stored again.
pub(crate) fn store_shared_events(
    conn: &mut Connection,
    events: &[(StoredEvent, String)],
) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let mut stored = 0;
    {
        let mut insert = tx.prepare(
            "INSERT INTO key_events (at, replica, key, kind, model, reason, seconds)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE NOT EXISTS (
                 SELECT 1 FROM key_events WHERE key = ?3 AND at = ?1 AND replica = ?2
                 AND kind = ?4 AND model IS ?5 AND reason = ?6)",
        )?;
        for (e, key) in events {
            stored += insert.execute(params![
                e.at,
                e.replica,
                key,
                e.kind,
                e.model,
                e.reason,
                e.seconds.map(|s| s as i64),
            ])?;
        }
    }
    tx.commit()?;
    Ok(stored)
}

/// The replicas whose rows are in the file.
pub(crate) fn replicas(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT DISTINCT replica FROM usage ORDER BY replica")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// One key's events with `from <= at < to`, newest first, at most `limit`.
pub(crate) fn read_key_events(
    conn: &Connection,
    key: &str,
    from: i64,
    to: i64,
    limit: usize,
) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt = conn.prepare(
        "SELECT at, replica, kind, model, reason, seconds FROM key_events
         WHERE key = ?1 AND at >= ?2 AND at < ?3 ORDER BY at DESC, rowid DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![key, from, to, limit as i64], |r| {
        Ok(StoredEvent {
            at: r.get(0)?,
            replica: r.get(1)?,
            kind: r.get(2)?,
            model: r.get(3)?,
            reason: r.get(4)?,
            seconds: r.get::<_, Option<i64>>(5)?.map(|s| s.max(0) as u64),
        })
    })?;
    rows.collect()
}

/// A key event as read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredEvent {
    pub(crate) at: i64,
    pub(crate) replica: String,
    pub(crate) kind: String,
    pub(crate) model: Option<String>,
    pub(crate) reason: String,
    pub(crate) seconds: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::KeyEventKind;

    fn row(minute: i64, key: &str, model: &str) -> RowKey {
        RowKey {
            minute,
            key: key.into(),
            model: model.into(),
            client: "alice".into(),
            route: "generate",
        }
    }

    fn counts(requests: u64, tokens: u64) -> Counts {
        Counts {
            requests,
            successes: requests,
            input_tokens: tokens,
            total_tokens: tokens,
            ..Counts::default()
        }
    }

    fn totals(conn: &Connection, group: GroupBy) -> Vec<(String, u64, u64)> {
        let mut by: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for c in read_cells(conn, 0, i64::MAX, i64::MAX, group).unwrap() {
            let e = by.entry(c.group.to_string()).or_default();
            e.0 += c.counts.requests;
            e.1 += c.counts.total_tokens;
        }
        by.into_iter().map(|(g, (r, t))| (g, r, t)).collect()
    }

    fn width_counts(conn: &Connection) -> (i64, i64) {
        conn.query_row(
            "SELECT SUM(width = 60), SUM(width = 3600) FROM usage",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    #[test]
    fn batches_add_up_and_roll_up_keeps_the_sums() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_for_writing(&dir.path().join("u.db")).unwrap();
        // Day 0, 10:00–10:59 and 11:00: three minutes in two hours, two keys.
        let t0 = 10 * HOUR;
        let mut batch = HashMap::new();
        batch.insert(row(t0, "k1", "m"), counts(2, 20));
        batch.insert(row(t0 + 30 * MINUTE, "k1", "m"), counts(3, 30));
        batch.insert(row(t0 + 30 * MINUTE, "k2", "m"), counts(1, 7));
        batch.insert(row(t0 + HOUR, "k1", "m"), counts(4, 40));
        write_batch(&mut conn, "r1", &batch, &[]).unwrap();
        // The same minute again: added, not replaced.
        let mut again = HashMap::new();
        again.insert(row(t0, "k1", "m"), counts(1, 5));
        write_batch(&mut conn, "r1", &again, &[]).unwrap();
        let before = totals(&conn, GroupBy::Key);
        assert_eq!(before, [("k1".into(), 10, 95), ("k2".into(), 1, 7)]);

        // Eight days later with a 7-day minute retention: every minute row becomes hour rows.
        let now = t0 + 8 * DAY;
        let r = roll_up(&mut conn, now, 7, 90).unwrap();
        assert_eq!(r.minute_rows, 4);
        assert_eq!(width_counts(&conn), (0, 3));
        assert_eq!(totals(&conn, GroupBy::Key), before);
        // Hour rows land on the hour: 10:00 holds both of k1's minutes there.
        let cells = read_cells(&conn, 0, i64::MAX, HOUR, GroupBy::Key).unwrap();
        let k1_10: Vec<_> = cells
            .iter()
            .filter(|c| &*c.group == "k1" && c.time == t0)
            .collect();
        assert_eq!(k1_10.len(), 1);
        assert_eq!(k1_10[0].counts.requests, 6);

        // Newer minute rows of an hour already rolled up are added to it, not lost.
        let mut late = HashMap::new();
        late.insert(row(t0 + 59 * MINUTE, "k1", "m"), counts(1, 1));
        write_batch(&mut conn, "r1", &late, &[]).unwrap();
        roll_up(&mut conn, now, 7, 90).unwrap();
        assert_eq!(width_counts(&conn), (0, 3));
        assert_eq!(
            totals(&conn, GroupBy::Key),
            [("k1".into(), 11, 96), ("k2".into(), 1, 7)]
        );

        // Past the retention, everything goes.
        roll_up(&mut conn, t0 + 91 * DAY, 7, 90).unwrap();
        assert!(totals(&conn, GroupBy::Key).is_empty());
    }

    #[test]
    fn recent_minute_rows_stay_minute_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_for_writing(&dir.path().join("u.db")).unwrap();
        let now = 100 * DAY;
        let mut batch = HashMap::new();
        batch.insert(row(now - 6 * DAY, "k1", "m"), counts(1, 1));
        batch.insert(row(now - 8 * DAY, "k1", "m"), counts(1, 1));
        write_batch(&mut conn, "r1", &batch, &[]).unwrap();
        roll_up(&mut conn, now, 7, 90).unwrap();
        assert_eq!(width_counts(&conn), (1, 1));
    }

    #[test]
    fn key_events_are_read_back_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_for_writing(&dir.path().join("u.db")).unwrap();
        let events = [
            KeyEvent {
                at: 100,
                key: "k1".into(),
                kind: KeyEventKind::Rest,
                model: Some("m".into()),
                reason: "rate_limited".into(),
                seconds: Some(30),
            },
            KeyEvent {
                at: 200,
                key: "k1".into(),
                kind: KeyEventKind::Disabled,
                model: None,
                reason: "admin-token".into(),
                seconds: None,
            },
            KeyEvent {
                at: 150,
                key: "k2".into(),
                kind: KeyEventKind::Invalid,
                model: None,
                reason: "API_KEY_INVALID".into(),
                seconds: None,
            },
        ];
        write_batch(&mut conn, "r1", &HashMap::new(), &events).unwrap();
        let read = read_key_events(&conn, "k1", 0, i64::MAX, 10).unwrap();
        assert_eq!(
            read.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["disabled", "rest"]
        );
        assert_eq!(read[1].seconds, Some(30));
        assert_eq!(read[1].model.as_deref(), Some("m"));
    }
}
