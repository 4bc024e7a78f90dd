//! Shared helpers for the black-box tests: a mock upstream, the real gateway stack on
//! 127.0.0.1:0, and plain hyper clients (HTTP/1.1 and HTTP/2 prior knowledge).

// Helpers are `pub` for the test modules of this binary, which is not a library.
#![allow(unreachable_pub)]

pub mod tls;

use std::time::Duration;

use bytes::Bytes;
use gem_proxy::config::{Config, ConfigLoader};
use gem_proxy::gateway::Live;
use gem_proxy::server::Server;
use gem_proxy_mock::{MockOptions, MockUpstream};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub const KEY1: &str = "AIzaTESTKEY1";
pub const KEY2: &str = "AIzaTESTKEY2";

/// A config for tests: two keys, both listeners on 127.0.0.1:0, the given upstream.
pub fn test_config(base_url: &str) -> Config {
    let yaml = format!(
        r#"
server: {{ host: "127.0.0.1", port: 0, workers: 1, shutdown_grace_seconds: 5 }}
gemini:
  base_url: "{base_url}"
  timeout_seconds: 30
  api_keys:
    - {{ id: "key1", key: "{KEY1}", weight: 1 }}
    - {{ id: "key2", key: "{KEY2}", weight: 1 }}
metrics: {{ enabled: true, prometheus_port: 0 }}
"#
    );
    ConfigLoader::default()
        .load_str(&yaml)
        .expect("test config is valid")
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http1_client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // Shorter than the gateway's 30 s keep-alive (header read) timeout, so tests that move paused
    // time forward never reuse a connection the gateway has closed.
    Client::builder(TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(10))
        .build(http)
}

pub fn http2_client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(http)
}

/// The mock upstream and a gateway in front of it.
pub struct Harness {
    pub mock: MockUpstream,
    pub server: Server,
    pub client: HttpClient,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(MockOptions::default(), |_| {}).await
    }

    pub async fn start_with(opts: MockOptions, edit: impl FnOnce(&mut Config)) -> Harness {
        let mock = MockUpstream::start(opts).await.expect("mock starts");
        let mut config = test_config(&mock.base_url());
        edit(&mut config);
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        let server = Server::start(Live::build(config).expect("config builds"))
            .await
            .expect("gateway starts");
        Harness {
            mock,
            server,
            client: http1_client(),
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.server.proxy_addr())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.server.admin_addr().expect("admin on")
        )
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        self.client.request(req).await.expect("gateway answers")
    }

    /// Sends and reads the whole answer.
    pub async fn call(&self, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
        read_all(self.send(req).await).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.call(request(Method::GET, &self.url(path), "")).await
    }

    pub async fn post(&self, path: &str, body: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.call(request(Method::POST, &self.url(path), body))
            .await
    }
}

pub fn request(method: Method, url: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

pub async fn read_all(res: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("whole body").to_bytes();
    (parts.status, parts.headers, body)
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Asserts a Google-shaped error with this code and status.
pub fn assert_google_error(status: StatusCode, body: &[u8], code: u16, google_status: &str) {
    assert_eq!(status.as_u16(), code, "{}", String::from_utf8_lossy(body));
    let v = json(body);
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["status"], google_status, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

/// A guard against hangs: a test that would wait forever fails instead.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub const GENERATE_BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"Say hello"}]}]}"#;

/// Streams an answer that the upstream breaks off after its second event (streams are held, so
/// the first event arrives before the break). Returns whether the client's stream ended with an
/// error — it must, never with a clean, truncated end.
pub async fn stream_broken_mid_way(h: &Harness) -> bool {
    h.mock.hold_streams(true);
    let mut req = request(
        Method::POST,
        &h.url("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
        GENERATE_BODY,
    );
    req.headers_mut()
        .insert("x-mock-fail-after-chunks", "2".parse().unwrap());
    let res = h.send(req).await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = within("first event", body.frame()).await.unwrap().unwrap();
    assert!(first.data_ref().unwrap().starts_with(b"data: "));
    // Let the second event out; the upstream then resets.
    h.mock.release_chunk();
    while let Some(frame) = within("stream end", body.frame()).await {
        if frame.is_err() {
            return true;
        }
    }
    false
}

/// The admin port's `/health`.
pub async fn health(h: &Harness) -> serde_json::Value {
    let res = h
        .client
        .request(request(Method::GET, &h.admin_url("/health"), ""))
        .await
        .unwrap();
    json(&read_all(res).await.2)
}

/// One key's entry in `/health`'s `key_states`.
pub fn key_state<'a>(health: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    health["key_states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
}

/// The upstream keys the mock saw, in order.
pub fn keys_seen(h: &Harness) -> Vec<String> {
    h.mock
        .requests()
        .into_iter()
        .filter_map(|r| r.key)
        .collect()
}

/// A client token for `sub` (limited to `models`; empty: any), signed with `secret`, valid an
/// hour.
pub fn client_token(secret: &str, sub: &str, models: &[&str]) -> String {
    issued_client_token(secret, sub, models).token
}

/// [`client_token`], with the token's id (`jti`) for revoking it.
pub fn issued_client_token(secret: &str, sub: &str, models: &[&str]) -> gem_proxy::auth::Issued {
    let auth = gem_proxy::config::AuthConfig {
        jwt_secret: gem_proxy::config::Secret::new(secret),
        ..Default::default()
    };
    let req = gem_proxy::auth::TokenRequest {
        sub: sub.into(),
        ttl: Duration::from_secs(3600),
        models: models.iter().map(|m| m.to_string()).collect(),
        rpm: None,
        tpm: None,
        tpd: None,
        live_sessions: None,
        role: gem_proxy::auth::Role::Client,
    };
    gem_proxy::auth::issue(&auth, &req, gem_proxy::auth::unix_now()).unwrap()
}
