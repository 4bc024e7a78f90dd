//! `KeyPool::pick` with 1, 10 and 1,000 keys: the key-balance decision every request makes
//! (smooth weighted round-robin over the keys with headroom for the model, against the in-memory
//! state store). Two cases: no limits, and a per-minute limit on every key (so each candidate's
//! GCRA state is consulted).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gem_proxy::config::{ApiKeyConfig, Secret};
use gem_proxy::key_pool::{KeyPool, MemoryStore};
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

criterion_group!(benches, pick);
criterion_main!(benches);
