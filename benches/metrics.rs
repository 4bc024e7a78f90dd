//! What metrics cost a request, measured with them on and off (`metrics.enabled`):
//!
//! - `metrics_layer/{on,off}`: the metrics and trace layers alone around a service that answers at
//!   once — the per-request recording work (labels, bound instruments, `/performance` window) with
//!   nothing else to hide it.
//! - `stack/{on,off}`: a whole generateContent request through the real stack to the mock
//!   upstream on loopback (one HTTP/1.1 round trip upstream), as a client would see it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use gem_proxy::config::{Config, ConfigLoader};
use gem_proxy::gateway::{Gateway, Live};
use gem_proxy::layers::metrics::MetricsLayer;
use gem_proxy::layers::trace::TraceLayer;
use gem_proxy_mock::{MockOptions, MockUpstream};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};

const BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"Say hello"}]}]}"#;
const PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

fn config(base_url: &str, metrics: bool) -> Config {
    let yaml = format!(
        r#"
server: {{ host: "127.0.0.1", port: 0 }}
gemini:
  base_url: "{base_url}"
  api_keys:
    - {{ id: "key1", key: "AIzaBENCH1" }}
    - {{ id: "key2", key: "AIzaBENCH2" }}
metrics: {{ enabled: {metrics}, prometheus_port: 0 }}
"#
    );
    ConfigLoader::default()
        .load_str(&yaml)
        .expect("bench config")
}

fn request() -> Request<Full<Bytes>> {
    Request::post(PATH)
        .header("content-type", "application/json")
        .header("x-request-id", "bench")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("metrics_layer");
    for (label, on) in [("off", false), ("on", true)] {
        let gateway = rt.block_on(async {
            Gateway::new(Live::build(config("http://127.0.0.1:9", on)).unwrap())
        });
        let svc = ServiceBuilder::new()
            .layer(MetricsLayer::new(gateway.clone()))
            .layer(TraceLayer::new(gateway.clone()))
            .service(tower::service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
            }));
        group.bench_function(label, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let res = svc.clone().oneshot(request()).await.unwrap();
                    res.into_body().collect().await.unwrap();
                })
            })
        });
    }
    group.finish();
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt
        .block_on(MockUpstream::start(MockOptions::default()))
        .unwrap();
    mock.set_recording(false);
    let mut group = c.benchmark_group("stack");
    for (label, on) in [("off", false), ("on", true)] {
        let gateway: Arc<Gateway> =
            rt.block_on(async { Gateway::new(Live::build(config(&mock.base_url(), on)).unwrap()) });
        let svc = gem_proxy::stack::build::<Full<Bytes>>(gateway);
        group.bench_function(label, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let res = svc.clone().oneshot(request()).await.unwrap();
                    assert_eq!(res.status(), 200);
                    res.into_body().collect().await.unwrap();
                })
            })
        });
    }
    group.finish();
    drop(mock);
}

criterion_group!(benches, layer, stack);
criterion_main!(benches);
