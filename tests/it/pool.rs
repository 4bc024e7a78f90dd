//! The upstream connection pool (`gem_proxy::conn_pool`) against real servers on 127.0.0.1:
//! plain HTTP/1.1, and TLS where ALPN picks HTTP/2 or HTTP/1.1. Each server counts the
//! connections it accepted, so a test can tell a reused connection from a new one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gem_proxy::conn_pool::{ConnPool, IDLE_TIMEOUT, PooledBody};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::tls::{H2, HTTP11, client_config, eventually};

type Pool = ConnPool<hyper_rustls::HttpsConnector<HttpConnector>>;

struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    roots_pem: Vec<u8>,
}

impl Upstream {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }
}

/// Answers `VERSION HOST` (the request's HTTP version and its `Host` header, `-` without one);
/// `/big` answers 256 KiB.
async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/big" {
        return Ok(Response::new(Full::new(Bytes::from(vec![
            b'x';
            256 * 1024
        ]))));
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let body = format!("{:?} {host}", req.version());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// A hyper server (HTTP/1.1 and HTTP/2); with `alpn`, behind TLS offering those protocols.
async fn upstream(alpn: Option<&[&[u8]]>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let roots_pem = cert.cert.pem().into_bytes();
    let tls = alpn.map(|alpn| {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let tls = tls.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(tls) => {
                        let Ok(stream) = tls.accept(tcp).await else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service_fn(answer))
                            .await;
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(tcp), service_fn(answer))
                            .await;
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        accepted,
        roots_pem,
    }
}

/// A pool whose TLS trusts only `roots_pem` (offering `h2` and `http/1.1`, as the gateway's does).
fn pool(roots_pem: &[u8]) -> Pool {
    let tls = rustls::ClientConfig::clone(&client_config(roots_pem, &[]));
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    ConnPool::new(https)
}

/// The gateway's own upstream client (web roots; the plain-HTTP tests need none).
fn gateway_pool() -> Pool {
    gem_proxy::http_client::build_upstream_client(Duration::from_secs(5))
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

async fn text(res: Response<PooledBody>) -> String {
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn http1_answers_read_to_their_end_leave_the_connection_for_the_next_request() {
    let up = upstream(None).await;
    let pool = gateway_pool();
    for _ in 0..5 {
        let res = pool.request(get(&up.url("http", "/"))).await.unwrap();
        // The pool writes the Host header and sends the origin form.
        assert_eq!(text(res).await, format!("HTTP/1.1 {}", up.addr));
    }
    assert_eq!(up.accepted(), 1, "five requests in a row, one connection");
    assert_eq!(pool.idle_connections(), 1);
}

#[tokio::test]
async fn an_answer_dropped_before_its_end_takes_its_connection_with_it() {
    let up = upstream(None).await;
    let pool = gateway_pool();
    let res = pool.request(get(&up.url("http", "/big"))).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    assert_eq!(pool.idle_connections(), 0);
    let res = pool.request(get(&up.url("http", "/"))).await.unwrap();
    assert!(text(res).await.starts_with("HTTP/1.1"));
    assert_eq!(up.accepted(), 2, "the half-read connection was not reused");
}

#[tokio::test]
async fn concurrent_http1_requests_each_get_a_connection_and_all_come_back() {
    let up = upstream(None).await;
    let pool = Arc::new(gateway_pool());
    let answers = futures_join(&pool, &up.url("http", "/"), 8).await;
    assert!(answers.iter().all(|a| a.starts_with("HTTP/1.1")));
    let opened = up.accepted();
    assert!((1..=8).contains(&opened), "{opened}");
    assert_eq!(pool.idle_connections(), opened);
    // The next round needs no new connection.
    futures_join(&pool, &up.url("http", "/"), opened).await;
    assert_eq!(up.accepted(), opened);
}

async fn futures_join(pool: &Arc<Pool>, url: &str, n: usize) -> Vec<String> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let pool = pool.clone();
            let url = url.to_owned();
            tokio::spawn(async move { text(pool.request(get(&url)).await.unwrap()).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn tls_with_h2_by_alpn_shares_one_connection_and_sends_no_host_header() {
    let up = upstream(Some(&[H2, HTTP11])).await;
    let pool = Arc::new(pool(&up.roots_pem));
    let first = text(pool.request(get(&up.url("https", "/"))).await.unwrap()).await;
    assert_eq!(first, "HTTP/2.0 -", "HTTP/2 carries :authority, not Host");
    let answers = futures_join(&pool, &up.url("https", "/"), 16).await;
    assert!(answers.iter().all(|a| a == "HTTP/2.0 -"), "{answers:?}");
    assert_eq!(up.accepted(), 1, "17 requests, one HTTP/2 connection");
    assert_eq!(pool.idle_connections(), 1);
}

#[tokio::test]
async fn tls_with_http1_by_alpn_reuses_its_connection() {
    let up = upstream(Some(&[HTTP11])).await;
    let pool = pool(&up.roots_pem);
    for _ in 0..3 {
        let res = pool.request(get(&up.url("https", "/"))).await.unwrap();
        assert_eq!(text(res).await, format!("HTTP/1.1 {}", up.addr));
    }
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_skipped() {
    // Answers one request per connection, then closes it (without saying so in a header).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let pool = gateway_pool();
    let url = format!("http://{addr}/");
    for round in 1..=3 {
        let res = pool.request(get(&url)).await.unwrap();
        assert_eq!(text(res).await, "ok");
        eventually("the pool sees the upstream's close", 10, || async {
            (pool.idle_connections() == 0).then_some(())
        })
        .await;
        assert_eq!(accepted.load(Ordering::SeqCst), round);
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_idle_for_longer_than_the_idle_timeout_is_not_reused() {
    let up = upstream(None).await;
    let pool = gateway_pool();
    text(pool.request(get(&up.url("http", "/"))).await.unwrap()).await;
    assert_eq!(pool.idle_connections(), 1);
    tokio::time::advance(IDLE_TIMEOUT + Duration::from_secs(1)).await;
    text(pool.request(get(&up.url("http", "/"))).await.unwrap()).await;
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_error_and_a_dropped_exchange_is_not() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = closed.local_addr().unwrap();
    drop(closed);
    let pool = gateway_pool();
    let err = pool
        .request(get(&format!("http://{refused}/")))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    // Accepts, reads the request, and closes without an answer: the request may have arrived.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
        }
    });
    let err = pool
        .request(get(&format!("http://{addr}/")))
        .await
        .unwrap_err();
    assert!(!err.is_connect(), "{err:?}");

    let err = pool.request(get("/relative")).await.unwrap_err();
    assert!(!err.is_connect());
}
