//! The upstream client: one request and its 1.1 KB answer over a kept-alive HTTP/1.1 connection
//! to a server on 127.0.0.1, with the gateway's connection pool (`gem_proxy::conn_pool`) and
//! with hyper-util's legacy client it replaced, measured in the same run.
//!
//! `cargo bench -p gem-proxy --bench upstream_client`. Both clients and the server share one
//! current-thread runtime, so a figure is the whole exchange on one core: the client's work,
//! the server's, and the loopback system calls. The difference between the two is the client's.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An answer the size of the load harness's generate answer.
fn answer() -> Bytes {
    Bytes::from(format!(
        r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{}"}}]}}}}]}}"#,
        "x".repeat(1050)
    ))
}

async fn serve(listener: TcpListener) {
    let body = answer();
    while let Ok((tcp, _)) = listener.accept().await {
        tcp.set_nodelay(true).unwrap();
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let body = body.clone();
                async move { Ok::<_, hyper::Error>(Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn request(url: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"contents":[]}"#)))
        .unwrap()
}

fn upstream_client(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        format!("http://{addr}/v1beta/models/m:generateContent")
    });
    let pool = gem_proxy::http_client::build_upstream_client(Duration::from_secs(5));
    let legacy = gem_proxy::http_client::build_client(Duration::from_secs(5));

    let mut g = c.benchmark_group("upstream_client");
    g.bench_function("conn_pool", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = pool.request(request(&url)).await.unwrap();
                black_box(res.into_body().collect().await.unwrap().to_bytes())
            })
        })
    });
    g.bench_function("legacy_client", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = legacy.request(request(&url)).await.unwrap();
                black_box(res.into_body().collect().await.unwrap().to_bytes())
            })
        })
    });
    g.finish();
}

criterion_group!(benches, upstream_client);
criterion_main!(benches);
