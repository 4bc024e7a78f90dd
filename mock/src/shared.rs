//! State shared by every connection of one mock.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::MockOptions;
use crate::canned::Canned;
use crate::failure::Failure;
use crate::gate::ReleaseGate;
use crate::owned::Owned;
use crate::recorded::RecordedRequest;
use crate::resources::Resources;

/// Everything a request handler reads or changes. No lock is held across an await.
pub(crate) struct Shared {
    /// `http://HOST:PORT`, for URLs the mock hands out (upload URLs, file URIs).
    pub(crate) base_url: String,
    pub(crate) chunk_delay: Duration,
    pub(crate) invalid_keys: HashSet<String>,
    pub(crate) canned: Canned,
    pub(crate) gate: Arc<ReleaseGate>,
    pub(crate) resources: Resources,
    pub(crate) owned: Owned,
    pub(crate) vertex: crate::vertex::VertexState,
    pub(crate) live_tokens: crate::live::LiveTokens,
    recording: AtomicBool,
    requests: Mutex<Vec<RecordedRequest>>,
    key_failures: RwLock<HashMap<String, Failure>>,
    next_id: AtomicU64,
    id_seed: u64,
}

impl Shared {
    pub(crate) fn new(base_url: String, opts: MockOptions) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Shared {
            base_url,
            chunk_delay: opts.chunk_delay,
            invalid_keys: opts.invalid_keys.into_iter().collect(),
            canned: Canned::new(opts.chunks),
            gate: Arc::new(ReleaseGate::new()),
            resources: Resources::default(),
            owned: Owned::default(),
            vertex: crate::vertex::VertexState::new(
                opts.vertex_public_key_pem.as_deref(),
                opts.vertex_token_lifetime,
            ),
            live_tokens: Default::default(),
            recording: AtomicBool::new(true),
            requests: Mutex::new(Vec::new()),
            key_failures: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            id_seed: nanos as u64 ^ u64::from(std::process::id()),
        }
    }

    pub(crate) fn is_recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    pub(crate) fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    pub(crate) fn record(&self, request: RecordedRequest) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn clear_requests(&self) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub(crate) fn set_key_failure(&self, key: &str, failure: Option<Failure>) {
        let mut failures = self
            .key_failures
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match failure {
            Some(failure) => failures.insert(key.to_owned(), failure),
            None => failures.remove(key),
        };
    }

    pub(crate) fn key_failure(&self, key: &str) -> Option<Failure> {
        let failures = self
            .key_failures
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if failures.is_empty() {
            return None;
        }
        failures.get(key).cloned()
    }

    pub(crate) fn clear_key_failures(&self) {
        self.key_failures
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// A fresh id, unique in this process and unlikely to repeat across runs: 16 lowercase hex digits.
    pub(crate) fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}", splitmix64(self.id_seed.wrapping_add(n)))
    }
}

/// A bijective mix (SplitMix64's finalizer), so distinct counters give distinct ids.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
