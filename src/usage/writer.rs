//! The usage writer: one thread that drains the bounded channel, sums reports per row, and
//! commits them every flush interval. It owns the only writing connection; a slow or stuck disk
//! stalls this thread alone (the channel then fills and reports are dropped, see
//! [`super::Usage`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{Counts, KeyEvent, Record, RowKey, db};
use crate::time::now_unix as unix_now;

/// How often old minute rows are rolled up and expired rows deleted.
const ROLL_UP_EVERY: Duration = Duration::from_secs(600);
/// How often the writer looks at its channel: at most this late for a flush request, and a
/// channel of `usage.queue_capacity` rows takes this long at most to drain.
const TICK: Duration = Duration::from_millis(10);
/// Rows summed in memory at most while the database cannot be written; further ones are dropped.
const MAX_PENDING_ROWS: usize = 100_000;

/// What the writer needs.
#[derive(Debug, Clone)]
pub(super) struct WriterOptions {
    pub(super) path: PathBuf,
    pub(super) replica: Arc<str>,
    pub(super) capacity: usize,
    pub(super) flush_interval: Duration,
    pub(super) minute_retention_days: u32,
    pub(super) retention_days: u32,
    /// Where rows the writer itself has to drop are counted.
    pub(super) dropped: Arc<AtomicU64>,
}

/// Starts the writer thread; the sender is the request path's end of its channel. The thread
/// ends when every sender is gone, after a last commit.
pub(super) fn spawn(options: WriterOptions) -> std::io::Result<SyncSender<Record>> {
    let (tx, rx) = sync_channel(options.capacity);
    std::thread::Builder::new()
        .name("gem-proxy-usage".into())
        .spawn(move || run(options, rx))?;
    Ok(tx)
}

struct Writer {
    options: WriterOptions,
    conn: Option<Connection>,
    /// Summed per row (a row per key, model, client and route each minute: with a big pool, a
    /// row per request or so).
    rows: HashMap<RowKey, Counts, foldhash::fast::RandomState>,
    events: Vec<KeyEvent>,
    last_roll_up: Option<Instant>,
}

fn run(options: WriterOptions, rx: Receiver<Record>) {
    let mut w = Writer {
        options,
        conn: None,
        rows: HashMap::default(),
        events: Vec::new(),
        last_roll_up: None,
    };
    w.connect();
    w.roll_up();
    let mut next_flush = Instant::now() + w.options.flush_interval;
    loop {
        // Drain what arrived, then sleep a tick: the request path's `try_send` then never has a
        // parked thread to wake (a wake-up per request cost two context switches each).
        loop {
            match rx.try_recv() {
                Ok(Record::Row(key, counts)) => w.add(key, counts),
                Ok(Record::Event(e)) => w.events.push(e),
                Ok(Record::Flush(done)) => {
                    // Everything sent before the flush request is in the channel ahead of it.
                    w.flush();
                    let _ = done.try_send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    w.flush();
                    return;
                }
            }
        }
        if Instant::now() >= next_flush {
            w.flush();
            if w.last_roll_up.is_none_or(|t| t.elapsed() >= ROLL_UP_EVERY) {
                w.roll_up();
            }
            next_flush = Instant::now() + w.options.flush_interval;
        }
        let wait = next_flush.saturating_duration_since(Instant::now());
        std::thread::sleep(wait.min(TICK));
    }
}

impl Writer {
    fn add(&mut self, key: RowKey, counts: Counts) {
        if self.rows.len() >= MAX_PENDING_ROWS && !self.rows.contains_key(&key) {
            self.options.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.rows.entry(key).or_default().add(&counts);
    }

    fn connect(&mut self) {
        if self.conn.is_some() {
            return;
        }
        match db::open_for_writing(&self.options.path) {
            Ok(conn) => self.conn = Some(conn),
            Err(e) => tracing::warn!(
                path = %self.options.path.display(),
                error = %e,
                "usage history: cannot open the database; will retry"
            ),
        }
    }

    fn flush(&mut self) {
        if self.rows.is_empty() && self.events.is_empty() {
            return;
        }
        self.connect();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match db::write_batch(conn, &self.options.replica, &self.rows, &self.events) {
            Ok(()) => {
                self.rows.clear();
                self.events.clear();
            }
            Err(e) => {
                // Kept for the next try (bounded by MAX_PENDING_ROWS).
                tracing::warn!(error = %e, "usage history: cannot write; will retry");
                if self.events.len() > MAX_PENDING_ROWS {
                    let n = self.events.len() as u64;
                    self.options.dropped.fetch_add(n, Ordering::Relaxed);
                    self.events.clear();
                }
            }
        }
    }

    fn roll_up(&mut self) {
        self.connect();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        self.last_roll_up = Some(Instant::now());
        let o = &self.options;
        match db::roll_up(conn, unix_now(), o.minute_retention_days, o.retention_days) {
            Ok(r) if r.minute_rows > 0 || r.expired_rows > 0 => tracing::info!(
                minute_rows = r.minute_rows,
                hour_rows = r.hour_rows,
                expired_rows = r.expired_rows,
                "usage history rolled up"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "usage history: roll-up failed"),
        }
    }
}
