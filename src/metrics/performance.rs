//! `/performance`: a small in-process recorder of the last five minutes — requests, successes,
//! and latency / time-to-first-byte histograms — for QPS, success rate and P50/P95/P99, overall and
//! per key, without a Prometheus server.
//!
//! Time is cut into 5-second slots kept in a ring of 61 (five minutes plus the slot being
//! filled). Recording is lock-free: a few relaxed atomic additions into the current slot. The
//! thread that first sees a new slot clears the slot it reuses; an addition racing with that
//! clear may be lost, which a rate over minutes does not notice. Latencies go into log-scale
//! buckets (each 25 % wider than the last, from 1 ms to ~20 min), so a percentile is exact to
//! within about 12 %.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

const SLOT_SECONDS: u64 = 5;
const SLOTS: usize = 61;
const BUCKETS: usize = 64;
const RATIO: f64 = 1.25;

/// One slot of the ring, aligned to a cache line. A request is counted by its latency bucket
/// alone (the requests are the buckets' sum), so one that takes under ~15 ms touches just the
/// slot's first line: the period, the successes and the first 13 latency buckets. With many keys
/// (a window each) that is one line per request instead of two or three.
#[derive(Debug)]
#[repr(C, align(64))]
struct Slot {
    /// Which 5-second period (counted from the window's origin, plus one) the slot holds; 0 when
    /// never used.
    period: AtomicU64,
    successes: AtomicU32,
    latency: [AtomicU32; BUCKETS],
    ttfb: [AtomicU32; BUCKETS],
}

// The first line holds the buckets up to ~15 ms (13 of them; bucket 12 ends at 1.25^12 ms).
const _: () = assert!((64 - std::mem::offset_of!(Slot, latency)) / 4 >= 13);

impl Slot {
    fn new() -> Self {
        Self {
            period: AtomicU64::new(0),
            successes: AtomicU32::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
            ttfb: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn clear(&self) {
        self.successes.store(0, Relaxed);
        // Two plain loops: a chained iterator costs several times the stores themselves.
        for b in &self.latency {
            b.store(0, Relaxed);
        }
        for b in &self.ttfb {
            b.store(0, Relaxed);
        }
    }
}

/// Requests over the last five minutes, in 5-second slots.
#[derive(Debug)]
pub struct Window {
    origin: Instant,
    slots: Box<[Slot]>,
}

impl Default for Window {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

/// What one request adds to a [`Window`].
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Whether it succeeded (a 1xx–3xx answer delivered whole).
    pub success: bool,
    /// From its arrival to the end of its answer.
    pub latency: Duration,
    /// From its arrival to the first byte of a streamed answer.
    pub ttfb: Option<Duration>,
}

impl Window {
    /// An empty window whose periods count from `origin`.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        }
    }

    fn period(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs() / SLOT_SECONDS + 1
    }

    /// Adds one request that ended at `now`.
    pub fn record(&self, now: Instant, sample: Sample) {
        let period = self.period(now);
        let slot = &self.slots[(period % SLOTS as u64) as usize];
        let seen = slot.period.load(Relaxed);
        if seen != period {
            if seen > period {
                return; // a late recorder from a period long gone
            }
            if slot
                .period
                .compare_exchange(seen, period, Relaxed, Relaxed)
                .is_ok()
            {
                slot.clear();
            }
        }
        if sample.success {
            slot.successes.fetch_add(1, Relaxed);
        }
        slot.latency[bucket(sample.latency)].fetch_add(1, Relaxed);
        if let Some(ttfb) = sample.ttfb {
            slot.ttfb[bucket(ttfb)].fetch_add(1, Relaxed);
        }
    }

    /// The figures as of `now`.
    pub fn summary(&self, now: Instant) -> Summary {
        let current = self.period(now);
        let mut agg = [Agg::default(), Agg::default()];
        for slot in self.slots.iter() {
            let p = slot.period.load(Relaxed);
            if p == 0 || p > current {
                continue;
            }
            let age = current - p;
            for (i, span_slots) in [60 / SLOT_SECONDS, 300 / SLOT_SECONDS]
                .into_iter()
                .enumerate()
            {
                if age <= span_slots {
                    agg[i].add(slot);
                }
            }
        }
        // The current slot is only partly over: divide by the time actually covered, and never by
        // more than the time since the window started.
        let elapsed = now.saturating_duration_since(self.origin).as_secs_f64();
        let into_current = elapsed - ((current - 1) * SLOT_SECONDS) as f64;
        let covered = |seconds: f64| (seconds + into_current).min(elapsed).max(1.0);
        let [one, five] = agg;
        Summary {
            qps_1m: round3(one.requests as f64 / covered(60.0)),
            qps_5m: round3(five.requests as f64 / covered(300.0)),
            requests_1m: one.requests,
            requests_5m: five.requests,
            success_rate_1m: rate(one.successes, one.requests),
            success_rate_5m: rate(five.successes, five.requests),
            latency_ms: Percentiles::of(&five.latency),
            ttfb_ms: Percentiles::of(&five.ttfb),
        }
    }
}

struct Agg {
    requests: u64,
    successes: u64,
    latency: [u64; BUCKETS],
    ttfb: [u64; BUCKETS],
}

impl Default for Agg {
    fn default() -> Self {
        Self {
            requests: 0,
            successes: 0,
            latency: [0; BUCKETS],
            ttfb: [0; BUCKETS],
        }
    }
}

impl Agg {
    fn add(&mut self, slot: &Slot) {
        self.successes += u64::from(slot.successes.load(Relaxed));
        for i in 0..BUCKETS {
            let n = u64::from(slot.latency[i].load(Relaxed));
            self.requests += n;
            self.latency[i] += n;
            self.ttfb[i] += u64::from(slot.ttfb[i].load(Relaxed));
        }
    }
}

/// QPS, success rate and percentiles of one window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Requests per second over the last minute.
    pub qps_1m: f64,
    /// Requests per second over the last five minutes.
    pub qps_5m: f64,
    /// Requests in the last minute.
    pub requests_1m: u64,
    /// Requests in the last five minutes.
    pub requests_5m: u64,
    /// Share of the last minute's requests that succeeded (`null` without requests).
    pub success_rate_1m: Option<f64>,
    /// Share of the last five minutes' requests that succeeded.
    pub success_rate_5m: Option<f64>,
    /// Latency percentiles over five minutes, in milliseconds.
    pub latency_ms: Percentiles,
    /// Time to first byte of streamed answers over five minutes, in milliseconds.
    pub ttfb_ms: Percentiles,
}

/// P50, P95, P99 (`null` without data).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples behind them.
    pub count: u64,
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

impl Percentiles {
    fn of(buckets: &[u64; BUCKETS]) -> Self {
        let count: u64 = buckets.iter().sum();
        let at = |q: f64| -> Option<f64> {
            if count == 0 {
                return None;
            }
            let rank = ((q * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, n) in buckets.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Some(round3(representative_ms(i)));
                }
            }
            None
        };
        Self {
            count,
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
        }
    }
}

/// Bucket 0 holds everything under 1 ms; bucket `i` holds `[1.25^(i-1), 1.25^i)` ms.
fn bucket(d: Duration) -> usize {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        return 0;
    }
    ((ms.ln() / RATIO.ln()) as usize + 1).min(BUCKETS - 1)
}

/// A value standing for bucket `i`: its geometric middle.
fn representative_ms(i: usize) -> f64 {
    if i == 0 {
        0.5
    } else {
        RATIO.powf(i as f64 - 0.5)
    }
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| round3(part as f64 / whole as f64))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, success: bool) -> Sample {
        Sample {
            success,
            latency: Duration::from_millis(ms),
            ttfb: None,
        }
    }

    #[test]
    fn qps_success_rate_and_percentiles() {
        let t0 = Instant::now();
        let w = Window::new(t0);
        // 100 requests over the first 10 s: 1..=100 ms, every tenth one failed.
        for i in 1..=100u64 {
            let at = t0 + Duration::from_millis(i * 100);
            w.record(at, sample(i, i % 10 != 0));
        }
        let s = w.summary(t0 + Duration::from_secs(10));
        assert_eq!(s.requests_1m, 100);
        assert_eq!(s.requests_5m, 100);
        // Only 10 s have passed: QPS is over the time covered.
        assert!((s.qps_1m - 10.0).abs() < 0.6, "{s:?}");
        assert_eq!(s.success_rate_1m, Some(0.9));
        let p50 = s.latency_ms.p50.unwrap();
        let p99 = s.latency_ms.p99.unwrap();
        assert!((40.0..=62.5).contains(&p50), "{p50}");
        assert!((88.0..=125.0).contains(&p99), "{p99}");
        assert_eq!(s.ttfb_ms.p50, None);
    }

    #[test]
    fn old_slots_leave_the_window_and_reused_slots_are_cleared() {
        let t0 = Instant::now();
        let w = Window::new(t0);
        w.record(t0 + Duration::from_secs(1), sample(5, true));
        // Two minutes later: out of the 1-minute window, still in the 5-minute one.
        let s = w.summary(t0 + Duration::from_secs(121));
        assert_eq!((s.requests_1m, s.requests_5m), (0, 1));
        // Six minutes later the same ring slot is reused: the old request is gone.
        let later = t0 + Duration::from_secs(1 + SLOT_SECONDS * SLOTS as u64);
        w.record(later, sample(7, false));
        let s = w.summary(later);
        assert_eq!((s.requests_1m, s.requests_5m), (1, 1));
        assert_eq!(s.success_rate_5m, Some(0.0));
    }

    #[test]
    fn buckets_grow_by_a_quarter() {
        assert_eq!(bucket(Duration::from_micros(10)), 0);
        assert_eq!(bucket(Duration::from_millis(1)), 1);
        assert!(bucket(Duration::from_secs(1200)) < BUCKETS);
        assert_eq!(bucket(Duration::from_secs(100_000)), BUCKETS - 1);
        for ms in [3u64, 40, 900, 25_000] {
            let r = representative_ms(bucket(Duration::from_millis(ms)));
            assert!((r / ms as f64 - 1.0).abs() < 0.13, "{ms} -> {r}");
        }
    }
}
