//! The response cache (`cache`): repeated requests answered without the upstream, per client
//! unless shared, the client's `Cache-Control` obeyed, streams and errors never cached, memory
//! bounded, hits counted but spending no key quota, shared between replicas through Redis.

use std::time::Duration;

use crate::redis_state::Redis;
use crate::support::*;

use gem_proxy::config::{Config, Secret};
use gem_proxy::gateway::Live;
use gem_proxy::server::Server;
use gem_proxy_mock::{Failure, MockOptions};
use http::{HeaderMap, Method, StatusCode};

const SECRET: &str = "0123456789abcdef0123456789abcdef-caching";
const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const CHAT_BODY: &str =
    r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}"#;

fn cache_on(c: &mut Config) {
    c.cache.enabled = true;
}

fn with_auth(c: &mut Config) {
    cache_on(c);
    c.auth.enabled = true;
    c.auth.jwt_secret = Secret::new(SECRET);
}

fn token_for(sub: &str) -> String {
    client_token(SECRET, sub, &[])
}

/// Sends `body` to `path` with extra headers.
async fn post_with(
    h: &Harness,
    path: &str,
    body: &str,
    headers: &[(&'static str, String)],
) -> (StatusCode, HeaderMap, bytes::Bytes) {
    let mut req = request(Method::POST, &h.url(path), body);
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    h.call(req).await
}

fn bearer(sub: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {}", token_for(sub)))
}

fn cache_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-gem-proxy-cache")
        .map(|v| v.to_str().unwrap())
}

async fn metrics_text(h: &Harness) -> String {
    let res = h
        .client
        .request(request(Method::GET, &h.admin_url("/metrics"), ""))
        .await
        .unwrap();
    String::from_utf8(read_all(res).await.2.to_vec()).unwrap()
}

/// The value of the first series in `text` whose line starts with `series`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// The same request twice → one upstream call; the second is a hit with the same answer.
/// Every cacheable route behaves so.
#[tokio::test]
async fn the_same_request_twice_reaches_the_upstream_once() {
    let h = Harness::start_with(MockOptions::default(), cache_on).await;
    let cases = [
        (FLASH, GENERATE_BODY),
        ("/v1beta/models/gemini-2.5-flash:countTokens", GENERATE_BODY),
        (
            "/v1beta/models/text-embedding-004:embedContent",
            r#"{"content":{"parts":[{"text":"hi"}]}}"#,
        ),
        (
            "/v1beta/models/text-embedding-004:batchEmbedContents",
            r#"{"requests":[{"model":"models/text-embedding-004","content":{"parts":[{"text":"a"}]}}]}"#,
        ),
        ("/v1beta/openai/chat/completions", CHAT_BODY),
        (
            "/v1beta/openai/embeddings",
            r#"{"model":"text-embedding-004","input":"hi"}"#,
        ),
    ];
    for (path, body) in cases {
        h.mock.clear();
        let (s1, h1, b1) = h.post(path, body).await;
        let (s2, h2, b2) = h.post(path, body).await;
        assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{path}");
        assert_eq!(cache_header(&h1), Some("miss"), "{path}");
        assert_eq!(cache_header(&h2), Some("hit"), "{path}");
        assert_eq!(b1, b2, "{path}: the hit is the first answer");
        assert_eq!(h1.get("content-type"), h2.get("content-type"), "{path}");
        assert_eq!(h.mock.requests().len(), 1, "{path}: one upstream call");
    }
    // A different body is another request.
    let (_, headers, _) = h
        .post(
            FLASH,
            r#"{"contents":[{"role":"user","parts":[{"text":"Say bye"}]}]}"#,
        )
        .await;
    assert_eq!(cache_header(&headers), Some("miss"));
}

/// Off by default: nothing is cached and no header is set.
#[tokio::test]
async fn off_by_default() {
    let h = Harness::start().await;
    for _ in 0..2 {
        let (status, headers, _) = h.post(FLASH, GENERATE_BODY).await;
        assert_eq!(status, 200);
        assert_eq!(cache_header(&headers), None);
    }
    assert_eq!(h.mock.requests().len(), 2);
}

/// Answers are per client: another client's identical request is a miss, unless `cache.shared`.
#[tokio::test]
async fn another_client_misses_unless_the_cache_is_shared() {
    let h = Harness::start_with(MockOptions::default(), with_auth).await;
    let (_, a1, _) = post_with(&h, FLASH, GENERATE_BODY, &[bearer("team-a")]).await;
    let (_, a2, _) = post_with(&h, FLASH, GENERATE_BODY, &[bearer("team-a")]).await;
    let (status, b1, _) = post_with(&h, FLASH, GENERATE_BODY, &[bearer("team-b")]).await;
    assert_eq!(status, 200);
    assert_eq!(
        [a1, a2, b1].iter().map(cache_header).collect::<Vec<_>>(),
        [Some("miss"), Some("hit"), Some("miss")]
    );
    assert_eq!(h.mock.requests().len(), 2);

    let h = Harness::start_with(MockOptions::default(), |c| {
        with_auth(c);
        c.cache.shared = true;
    })
    .await;
    let (_, a, _) = post_with(&h, FLASH, GENERATE_BODY, &[bearer("team-a")]).await;
    let (_, b, _) = post_with(&h, FLASH, GENERATE_BODY, &[bearer("team-b")]).await;
    assert_eq!(cache_header(&a), Some("miss"));
    assert_eq!(cache_header(&b), Some("hit"));
    assert_eq!(h.mock.requests().len(), 1);
}

/// `Cache-Control: no-cache` goes upstream (and refreshes the answer); `no-store` goes upstream
/// and keeps nothing.
#[tokio::test]
async fn no_cache_and_no_store_bypass_the_cache() {
    let h = Harness::start_with(MockOptions::default(), cache_on).await;
    let no_cache = [("cache-control", "no-cache".to_string())];
    let no_store = [("cache-control", "no-store".to_string())];
    let (_, first, _) = h.post(FLASH, GENERATE_BODY).await;
    let (status, bypassed, _) = post_with(&h, FLASH, GENERATE_BODY, &no_cache).await;
    assert_eq!(status, 200);
    assert_eq!(cache_header(&first), Some("miss"));
    assert_eq!(cache_header(&bypassed), Some("bypass"));
    assert_eq!(h.mock.requests().len(), 2, "no-cache reached the upstream");
    let (_, again, _) = h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(cache_header(&again), Some("hit"));

    // no-store: not answered from the cache, and its answer is not kept.
    let other = r#"{"contents":[{"role":"user","parts":[{"text":"Other"}]}]}"#;
    let (_, stored, _) = post_with(&h, FLASH, other, &no_store).await;
    assert_eq!(cache_header(&stored), Some("bypass"));
    let (_, after, _) = h.post(FLASH, other).await;
    assert_eq!(cache_header(&after), Some("miss"), "no-store kept nothing");
    assert_eq!(h.mock.requests().len(), 4);
}

/// Streams are never cached: native streams and OpenAI `stream: true`.
#[tokio::test]
async fn a_streaming_request_is_never_cached() {
    let h = Harness::start_with(MockOptions::default(), cache_on).await;
    let stream = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let chat_stream =
        r#"{"model":"gemini-2.5-flash","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..2 {
        let (status, headers, body) = h.post(stream, GENERATE_BODY).await;
        assert_eq!(status, 200);
        assert!(body.starts_with(b"data: "));
        assert_eq!(cache_header(&headers), None);
        let (status, headers, _) = h.post("/v1beta/openai/chat/completions", chat_stream).await;
        assert_eq!(status, 200);
        assert_eq!(cache_header(&headers), None);
    }
    assert_eq!(h.mock.requests().len(), 4);
}

/// An error is never cached: once the upstream works again, the request reaches it.
#[tokio::test]
async fn errors_are_never_cached() {
    let h = Harness::start_with(MockOptions::default(), cache_on).await;
    for key in [KEY1, KEY2] {
        h.mock.set_key_failure(key, Some(Failure::BadRequest));
    }
    for _ in 0..2 {
        let (status, headers, _) = h.post(FLASH, GENERATE_BODY).await;
        assert_eq!(status, 400);
        assert_eq!(cache_header(&headers), Some("miss"));
    }
    let errors_seen = h.mock.requests().len();
    assert_eq!(errors_seen, 2, "each error came from the upstream");
    for key in [KEY1, KEY2] {
        h.mock.set_key_failure(key, None);
    }
    let (status, headers, _) = h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(status, 200);
    assert_eq!(cache_header(&headers), Some("miss"));
    assert_eq!(h.mock.requests().len(), errors_seen + 1);
}

/// A flood of distinct requests keeps the cache within `cache.max_bytes`, dropping the least
/// recently used answers.
#[tokio::test]
async fn memory_stays_under_max_bytes_under_a_flood_of_distinct_bodies() {
    const MAX: usize = 16 * 1024;
    let h = Harness::start_with(MockOptions::default(), |c| {
        cache_on(c);
        c.cache.max_bytes = MAX;
        c.cache.max_entry_bytes = MAX;
    })
    .await;
    for i in 0..200 {
        let body = format!(r#"{{"contents":[{{"role":"user","parts":[{{"text":"n{i}"}}]}}]}}"#);
        let (status, headers, _) = h.post(FLASH, &body).await;
        assert_eq!(status, 200);
        assert_eq!(cache_header(&headers), Some("miss"));
    }
    let text = metrics_text(&h).await;
    let bytes = metric(&text, "gem_proxy_cache_bytes");
    let entries = metric(&text, "gem_proxy_cache_entries");
    let evicted = metric(&text, "gem_proxy_cache_evictions_total");
    assert!(bytes > 0.0 && bytes <= MAX as f64, "{bytes} bytes held");
    assert!(entries > 0.0 && entries < 200.0, "{entries} entries");
    assert_eq!(
        entries + evicted,
        200.0,
        "every answer was kept, then some dropped"
    );
    let shown = health(&h).await["cache"].clone();
    assert_eq!(shown["bytes"].as_f64(), Some(bytes), "{shown}");
    assert_eq!(shown["max_bytes"], MAX);
    // The newest is still there; the oldest went first.
    let newest = r#"{"contents":[{"role":"user","parts":[{"text":"n199"}]}]}"#;
    let oldest = r#"{"contents":[{"role":"user","parts":[{"text":"n0"}]}]}"#;
    assert_eq!(cache_header(&h.post(FLASH, newest).await.1), Some("hit"));
    assert_eq!(cache_header(&h.post(FLASH, oldest).await.1), Some("miss"));
}

/// Hits spend no key quota, and count in metrics and usage: with one request per minute on
/// each key, the same request answers again and again, and two new ones still find a key.
#[tokio::test]
async fn hits_spend_no_key_quota_and_are_counted() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        cache_on(c);
        for k in &mut c.gemini.api_keys {
            k.max_requests_per_minute = Some(1);
        }
    })
    .await;
    for i in 0..5 {
        let (status, headers, _) = h.post(FLASH, GENERATE_BODY).await;
        assert_eq!(status, 200, "request {i}");
        assert_eq!(
            cache_header(&headers),
            Some(if i == 0 { "miss" } else { "hit" })
        );
    }
    let other = r#"{"contents":[{"role":"user","parts":[{"text":"Other"}]}]}"#;
    let (status, _, _) = h.post(FLASH, other).await;
    assert_eq!(status, 200, "the second key still had its request");
    let third = r#"{"contents":[{"role":"user","parts":[{"text":"Third"}]}]}"#;
    let (status, _, _) = h.post(FLASH, third).await;
    assert_eq!(
        status, 429,
        "both keys spent: only two requests reached them"
    );
    assert_eq!(h.mock.requests().len(), 2);

    let text = metrics_text(&h).await;
    assert_eq!(
        metric(&text, "gem_proxy_cache_requests_total{result=\"hit\""),
        4.0
    );
    assert_eq!(
        metric(&text, "gem_proxy_cache_requests_total{result=\"miss\""),
        3.0
    );
    // Tokens are counted for every answer the client received, hits included.
    let prompt = text
        .lines()
        .find(|l| {
            l.starts_with("gem_proxy_tokens_total")
                && l.contains("kind=\"prompt\"")
                && l.contains("gemini-2.5-flash")
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().unwrap());
    assert_eq!(
        prompt,
        Some((6 * gem_proxy_mock::PROMPT_TOKEN_COUNT) as f64),
        "six answers counted, four of them hits"
    );
}

/// `cache.enabled` and the limits follow a config change without a restart.
#[tokio::test]
async fn turning_the_cache_on_applies_without_a_restart() {
    let h = Harness::start().await;
    let (_, before, _) = h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(cache_header(&before), None);
    let gw = h.server.gateway();
    let mut config = gw.live().config.clone();
    config.cache.enabled = true;
    gw.reload(config).unwrap();
    let (_, first, _) = h.post(FLASH, GENERATE_BODY).await;
    let (_, second, _) = h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(cache_header(&first), Some("miss"));
    assert_eq!(cache_header(&second), Some("hit"));
}

/// With `state.backend: redis`, an answer kept by one replica is served by another without a
/// second upstream call (copied there in the background).
#[tokio::test]
async fn replicas_share_answers_through_redis() {
    let redis = Redis::start();
    let mock = gem_proxy_mock::MockUpstream::start(MockOptions::default())
        .await
        .unwrap();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut c = test_config(&mock.base_url());
        cache_on(&mut c);
        c.state.backend = gem_proxy::config::state::StateBackend::Redis;
        c.state.redis.url = Some(Secret::new(redis.url()));
        c.state.redis.sync_interval_ms = 50;
        servers.push(Server::start(Live::build(c).unwrap()).await.unwrap());
    }
    let client = http1_client();
    let post = |i: usize| {
        let url = format!("http://{}{FLASH}", servers[i].proxy_addr());
        let client = client.clone();
        async move {
            let res = client
                .request(request(Method::POST, &url, GENERATE_BODY))
                .await
                .unwrap();
            read_all(res).await
        }
    };
    let (status, headers, _) = post(0).await;
    assert_eq!(status, 200);
    assert_eq!(cache_header(&headers), Some("miss"));
    // Replica 1 hears of the answer and copies it in the background; no request of its own
    // is needed (nor made) for that.
    within("replica 1 copies replica 0's answer", async {
        while servers[1].gateway().cache().stats().entries == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for i in [1, 0, 1] {
        let (status, headers, _) = post(i).await;
        assert_eq!(status, 200);
        assert_eq!(cache_header(&headers), Some("hit"), "replica {i}");
    }
    assert_eq!(
        mock.requests().len(),
        1,
        "one upstream call for both replicas"
    );
}
