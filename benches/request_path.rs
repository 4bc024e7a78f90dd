//! What the request path's own reading of a request and its answer costs, per request.
//!
//! `cargo bench -p gem-proxy --bench request_path`. The groups:
//! - `route`: classifying a generate path and checking it for ambiguity (every request);
//! - `hop_by_hop`: dropping hop-by-hop headers from a request's headers (every request and
//!   answer);
//! - `usage`: finding the token counts in a ~1.1 KB generate answer (every successful answer);
//! - `layers`: the route and affinity layers as a generate request passes them (path and body
//!   searched for key-owned resources), in front of a service that answers at once.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gem_proxy::body::GatewayBody;
use gem_proxy::config::ConfigLoader;
use gem_proxy::error::GatewayError;
use gem_proxy::gateway::{Gateway, Live};
use gem_proxy::layers::affinity::AffinityLayer;
use gem_proxy::layers::route::RouteLayer;
use gem_proxy::route::Route;
use gem_proxy::upstream::strip_hop_by_hop;
use gem_proxy::usage::find_usage;
use http::{HeaderMap, HeaderValue, Request, Response};
use tower::Layer;

#[path = "support/mod.rs"]
mod support;
const PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const BODY: &str =
    r#"{"contents":[{"role":"user","parts":[{"text":"Say hello in one short paragraph."}]}]}"#;

/// The answer the load harness's nginx upstream gives (its usage at the end, as Google's).
fn answer() -> Vec<u8> {
    let text = "Hello! ".repeat(130);
    format!(
        r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{text}"}}],"role":"model"}},"finishReason":"STOP","index":0}}],"usageMetadata":{{"promptTokenCount":8,"candidatesTokenCount":226,"totalTokenCount":234,"promptTokensDetails":[{{"modality":"TEXT","tokenCount":8}}]}},"modelVersion":"gemini-2.5-flash","responseId":"bench"}}"#
    )
    .into_bytes()
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    g.bench_function("classify+ambiguity", |b| {
        b.iter(|| {
            assert!(Route::ambiguity(black_box(PATH)).is_none());
            Route::classify(black_box(PATH)).unwrap()
        })
    });
    g.finish();
}

fn hop_by_hop(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "google-genai-sdk/1.0 gl-python/3.11"),
        ("content-type", "application/json"),
        ("content-length", "88"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, deflate"),
        ("x-goog-api-client", "google-genai-sdk/1.0 gl-python/3.11"),
        ("x-request-id", "00000000000000000001"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    let mut g = c.benchmark_group("hop_by_hop");
    g.bench_function("request_headers", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| strip_hop_by_hop(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn usage(c: &mut Criterion) {
    let body = answer();
    let mut g = c.benchmark_group("usage");
    g.bench_function("generate_answer", |b| {
        b.iter(|| find_usage(black_box(&body)).unwrap())
    });
    g.finish();
}

fn layers(c: &mut Criterion) {
    let config = ConfigLoader::default()
        .load_str("gemini: { api_keys: [{ id: a, key: k }] }")
        .unwrap();
    let gateway = Gateway::new(Live::build(config).unwrap());
    let inner = tower::service_fn(|_req: Request<Bytes>| {
        std::future::ready(Ok::<_, GatewayError>(Response::new(GatewayBody::full(
            Bytes::new(),
        ))))
    });
    let mut service =
        RouteLayer::new(gateway.clone()).layer(AffinityLayer::new(gateway).layer(inner));
    let make = || {
        Request::builder()
            .method("POST")
            .uri(PATH)
            .header("content-type", "application/json")
            .body(Bytes::from_static(BODY.as_bytes()))
            .unwrap()
    };
    let mut g = c.benchmark_group("layers");
    g.bench_function("route+affinity", |b| {
        support::bench_ready_service(b, &mut service, make)
    });
    g.finish();
}

criterion_group!(benches, route, hop_by_hop, usage, layers);
criterion_main!(benches);
