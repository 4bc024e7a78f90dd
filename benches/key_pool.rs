//! `KeyPool::pick` with 1, 10 and 1,000 keys: the key-balance decision every request makes
//! (smooth weighted round-robin over the keys with headroom for the model, against the in-memory
//! state store). Two cases: no limits, and a per-minute limit on every key (so each candidate's
//! GCRA state is consulted).
//!
//! `key_request/{3,1000}`: everything a request does with its key once picked, pool-size
//! dependent or not — the pick, the answer's tokens and outcome counted on the key's state, its
//! upstream attempt and its end recorded in the key's metrics (bound instruments and
//! `/performance` window) — cycling through the pool as a balanced load does, so with 1,000 keys
//! each request finds its key's state cold, as it would in the gateway.

use std::hint::black_box;
use std::sync::{Arc, Weak};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gem_proxy::config::{ApiKeyConfig, MetricsConfig, Secret};
use gem_proxy::key_pool::{KeyOutcome, KeyPool, KeyStateStore, MemoryStore, Tokens};
use gem_proxy::metrics::labels::Outcome;
use gem_proxy::metrics::{AttemptResult, Finished, Metrics};
use gem_proxy::route::RouteLabel;
use tokio::time::Instant;

fn keys(n: usize, rpm: Option<u32>) -> Vec<ApiKeyConfig> {
    (0..n)
        .map(|i| ApiKeyConfig {
            id: format!("key{i}"),
            key: Secret::new(format!("AIzaBENCH{i}")),
            weight: 1 + (i % 3) as u32,
            max_requests_per_minute: rpm,
            max_requests_per_day: None,
            max_tokens_per_minute: None,
            enabled: true,
            label: None,
            notes: None,
            backend: Default::default(),
            vertex: None,
            proxy: None,
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_pool_pick");
    for n in [1usize, 10, 1000] {
        for (label, rpm) in [("unlimited", None), ("rpm_limited", Some(u32::MAX / 2))] {
            let pool = KeyPool::new(&keys(n, rpm)).unwrap();
            let store = MemoryStore::new();
            let now = Instant::now();
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.iter(|| black_box(pool.pick(&store, "gemini-2.5-flash", &[], now).unwrap()))
            });
        }
    }
    group.finish();
}

fn key_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_request");
    let model = "gemini-2.5-flash";
    let tokens = Tokens {
        prompt: 8,
        candidates: 12,
        total: 20,
        ..Tokens::default()
    };
    for n in [3usize, 1000] {
        let pool = KeyPool::new(&keys(n, Some(u32::MAX / 2))).unwrap();
        let store = MemoryStore::new();
        let metrics = Metrics::new(&MetricsConfig::default(), Weak::new());
        let model_index = metrics.admit_model(model);
        let now = Instant::now();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let key = pool.pick(&store, model, &[], now).unwrap();
                let slot = key.slot().unwrap();
                store.add_tokens_at(slot, &key.id, model, &key.limits, tokens, now);
                store.record_at(slot, &key.id, KeyOutcome::Success);
                let ok = AttemptResult::Status(http::StatusCode::OK);
                metrics.key_attempt(&key, ok, Duration::from_millis(2));
                metrics.request_finished(&Finished {
                    route: RouteLabel::Generate,
                    model: model_index,
                    status: http::StatusCode::OK,
                    outcome: Outcome::Success,
                    duration: Duration::from_millis(3),
                    ttfb: None,
                    key_id: Some(Arc::clone(&key.id)),
                    key_slot: Some(slot),
                });
                black_box(key)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick, key_request);
criterion_main!(benches);
