//! The Live API sessions a gateway holds open: how many per key and per client (for
//! `gemini.live.max_sessions_per_key` and the `live_sessions` claim), what they carried (for
//! `/metrics`), and what the listener lends each session ([`SessionHold`]: its connection's place
//! and the shutdown signal).
//!
//! Counting is a short lock on a small map when a session opens or closes, never per frame;
//! frame and byte counters are relaxed atomics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// Every open session of one gateway, and what the closed ones carried.
#[derive(Debug, Clone, Default)]
pub struct LiveSessions {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    per_key: Mutex<HashMap<Arc<str>, u32>>,
    per_client: Mutex<HashMap<Arc<str>, u32>>,
    open: AtomicU64,
    frames: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    closes: [AtomicU64; CloseReason::ALL.len()],
}

/// Which way a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to Google.
    ToUpstream,
    /// From Google to the client.
    ToClient,
}

impl Direction {
    /// Both, in index order.
    pub const ALL: [Direction; 2] = [Direction::ToUpstream, Direction::ToClient];

    /// The metric label: `to_upstream`, `to_client`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToUpstream => "to_upstream",
            Direction::ToClient => "to_client",
        }
    }
}

/// Why a session ended (a small fixed set: a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it.
    Client,
    /// Google closed it (normally, or with an error other than a quota).
    Upstream,
    /// Google closed it for a quota: the key rests.
    Quota,
    /// The gateway shut down and the grace period ran out (1001 "going away").
    GoingAway,
    /// The first message was not a `setup` (or none came in time), named a model the token
    /// does not allow, or Google refused the session itself.
    Refused,
    /// A connection broke without a close frame.
    Broken,
    /// No upstream key could take the session (quota, upstream errors): closed 1013 or 1011.
    NoKey,
}

impl CloseReason {
    /// Every value, in index order.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Client,
        CloseReason::Upstream,
        CloseReason::Quota,
        CloseReason::GoingAway,
        CloseReason::Refused,
        CloseReason::Broken,
        CloseReason::NoKey,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Upstream => "upstream",
            CloseReason::Quota => "quota",
            CloseReason::GoingAway => "going_away",
            CloseReason::Refused => "refused",
            CloseReason::Broken => "broken",
            CloseReason::NoKey => "no_key",
        }
    }
}

/// A place taken in a per-key or per-client count; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    inner: Arc<Inner>,
    id: Arc<str>,
    per_client: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let map = if self.per_client {
            &self.inner.per_client
        } else {
            &self.inner.per_key
        };
        let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.id);
            }
        }
    }
}

/// A request extension: a client slot the Live layer took for a session (shared, so the
/// request can be cloned for failover; the session keeps it while it runs).
#[derive(Debug, Clone)]
pub struct ClientSlot(pub Arc<Slot>);

/// One open session, counted in `open` until dropped.
#[derive(Debug)]
pub struct OpenSession {
    inner: Arc<Inner>,
    started: tokio::time::Instant,
}

impl OpenSession {
    /// Counts a frame of `bytes` payload bytes going `direction`.
    pub fn frame(&self, direction: Direction, bytes: usize) {
        let i = direction as usize;
        self.inner.frames[i].fetch_add(1, Ordering::Relaxed);
        self.inner.bytes[i].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Ends the session for `reason`; how long it lasted.
    pub fn close(self, reason: CloseReason) -> Duration {
        self.inner.closes[reason as usize].fetch_add(1, Ordering::Relaxed);
        self.started.elapsed()
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What `/metrics` shows of the Live sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveTotals {
    /// Sessions open now.
    pub open: u64,
    /// Frames relayed, by [`Direction`].
    pub frames: [u64; 2],
    /// Payload bytes relayed, by [`Direction`].
    pub bytes: [u64; 2],
    /// Sessions ended, by [`CloseReason`].
    pub closes: [u64; CloseReason::ALL.len()],
}

impl LiveSessions {
    /// Takes a place for a session on `key` when it has fewer than `max` open (`0`: no limit).
    pub fn try_key(&self, key: &Arc<str>, max: u32) -> Option<Slot> {
        self.take(key, max, false)
    }

    /// Takes a place for a session of `client` when it has fewer than `max` open (`0`: no
    /// limit).
    pub fn try_client(&self, client: &Arc<str>, max: u32) -> Option<Slot> {
        self.take(client, max, true)
    }

    fn take(&self, id: &Arc<str>, max: u32, per_client: bool) -> Option<Slot> {
        let map = if per_client {
            &self.inner.per_client
        } else {
            &self.inner.per_key
        };
        let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(id.clone()).or_insert(0);
        if max != 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            inner: self.inner.clone(),
            id: id.clone(),
            per_client,
        })
    }

    /// The keys holding `max` sessions or more (none when `max` is `0`).
    pub fn full_keys(&self, max: u32) -> Vec<Arc<str>> {
        if max == 0 {
            return Vec::new();
        }
        let map = self
            .inner
            .per_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter(|(_, n)| **n >= max)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Sessions open on `key` now.
    pub fn open_on_key(&self, key: &str) -> u32 {
        let map = self
            .inner
            .per_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(key).copied().unwrap_or(0)
    }

    /// A session starts now.
    pub fn open(&self) -> OpenSession {
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        OpenSession {
            inner: self.inner.clone(),
            started: tokio::time::Instant::now(),
        }
    }

    /// The counters, for `/metrics`.
    pub fn totals(&self) -> LiveTotals {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LiveTotals {
            open: load(&self.inner.open),
            frames: self.inner.frames.each_ref().map(load),
            bytes: self.inner.bytes.each_ref().map(load),
            closes: self.inner.closes.each_ref().map(load),
        }
    }
}

/// A request extension the listener puts on every request: what a Live session needs from the
/// connection it was upgraded from. The session keeps it while it runs, so the connection still
/// counts as open (its `server.max_connections` place, and the shutdown waits for it) after
/// HTTP has handed its socket over.
#[derive(Clone)]
pub struct SessionHold {
    /// Turns `true` when the gateway starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// `server.shutdown_grace_seconds`: how long sessions may run after that.
    pub grace: Duration,
    _connection: Arc<dyn Send + Sync>,
}

impl SessionHold {
    /// A hold on `connection` (whatever keeps the connection counted), with the shutdown signal.
    pub fn new<T: Send + 'static>(
        shutdown: watch::Receiver<bool>,
        grace: Duration,
        connection: T,
    ) -> Self {
        Self {
            shutdown,
            grace,
            _connection: Arc::new(Mutex::new(connection)),
        }
    }
}

impl std::fmt::Debug for SessionHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHold")
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_up_to_the_limit_and_come_back_when_dropped() {
        let s = LiveSessions::default();
        let k: Arc<str> = Arc::from("a");
        let one = s.try_key(&k, 2).unwrap();
        let two = s.try_key(&k, 2).unwrap();
        assert!(s.try_key(&k, 2).is_none(), "a third session is refused");
        assert_eq!(s.full_keys(2), vec![k.clone()]);
        drop(one);
        assert!(s.full_keys(2).is_empty());
        let _three = s.try_key(&k, 2).unwrap();
        drop(two);
        assert_eq!(s.open_on_key("a"), 1);
        // Clients are counted apart from keys; 0 is no limit.
        for _ in 0..10 {
            std::mem::forget(s.try_client(&k, 0).unwrap());
        }
        assert_eq!(s.open_on_key("a"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_sessions_count_their_reason_and_duration() {
        let s = LiveSessions::default();
        let session = s.open();
        assert_eq!(s.totals().open, 1);
        session.frame(Direction::ToClient, 10);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(session.close(CloseReason::Quota), Duration::from_secs(3));
        let t = s.totals();
        assert_eq!(t.open, 0);
        assert_eq!(t.frames, [0, 1]);
        assert_eq!(t.bytes, [0, 10]);
        assert_eq!(t.closes[CloseReason::Quota as usize], 1);
    }
}
