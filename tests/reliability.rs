//! Failover that never blames a key for the client's mistake and never replays what may bill
//! twice; the gateway's own limits under abuse (idle connections, body budget, long model names).

mod support;

use bytes::Bytes;
use gem_proxy_mock::{Failure, MockOptions};
use http::{Method, Request};
use http_body_util::Full;
use support::*;

const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

async fn health(h: &Harness) -> serde_json::Value {
    let res = h
        .client
        .request(request(Method::GET, &h.admin_url("/health"), ""))
        .await
        .unwrap();
    json(&read_all(res).await.2)
}

fn key_state<'a>(health: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    health["key_states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
}

fn keys_seen(h: &Harness) -> Vec<String> {
    h.mock
        .requests()
        .into_iter()
        .filter_map(|r| r.key)
        .collect()
}

fn with_error(
    h: &Harness,
    method: Method,
    path: &str,
    body: &str,
    code: &str,
) -> Request<Full<Bytes>> {
    let mut req = request(method, &h.url(path), body);
    req.headers_mut()
        .insert("x-mock-error", code.parse().unwrap());
    req
}

/// A resumable-upload chunk that reaches a key which does not own the upload (after a restart,
/// or on another replica) gets Google's 403: it passes to the client once, and no key leaves
/// rotation.
#[tokio::test]
async fn an_honest_403_passes_through_once_and_blames_no_key() {
    let h = Harness::start_with(MockOptions::default(), |c| c.gemini.max_retries = 5).await;
    let req = Request::post(
        h.url("/upload/v1beta/files?upload_id=unknown-upload&upload_protocol=resumable"),
    )
    .header("x-goog-upload-command", "upload")
    .header("x-goog-upload-offset", "0")
    .header("x-mock-error", "403-resource")
    .body(Full::new(Bytes::from_static(b"chunk")))
    .unwrap();
    let (status, _, body) = h.call(req).await;
    assert_google_error(status, &body, 403, "PERMISSION_DENIED");
    assert_eq!(keys_seen(&h).len(), 1, "not replayed on other keys");
    let v = health(&h).await;
    for id in ["key1", "key2"] {
        assert_eq!(key_state(&v, id)["state"], "active", "{id}: {v}");
    }
    // The same on a model call (a tuned model the key may not use).
    h.mock.clear();
    let (status, _, _) = h
        .call(with_error(
            &h,
            Method::POST,
            FLASH,
            GENERATE_BODY,
            "403-resource",
        ))
        .await;
    assert_eq!(status, 403);
    assert_eq!(keys_seen(&h).len(), 1);
    let v = health(&h).await;
    assert_eq!(key_state(&v, "key1")["state"], "active", "{v}");
    assert_eq!(key_state(&v, "key2")["state"], "active", "{v}");
}

/// Google's explicit word (a suspended consumer) still takes the key out, and the request is
/// replayed on the other key.
#[tokio::test]
async fn a_suspended_key_still_leaves_rotation() {
    let h = Harness::start().await;
    h.mock
        .set_key_failure(KEY1, Some(Failure::PermissionDenied));
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    assert_eq!(keys_seen(&h), [KEY1, KEY2]);
    let v = health(&h).await;
    assert_eq!(key_state(&v, "key1")["state"], "invalid", "{v}");
    assert_eq!(key_state(&v, "key2")["state"], "active", "{v}");
}

/// A 500 may come after Google ran (and billed) the request: by default it passes to the client
/// without a replay; with `gemini.retry_on_timeout` it is replayed on the next key.
#[tokio::test]
async fn a_500_is_replayed_only_when_configured() {
    let h = Harness::start().await;
    h.mock.set_key_failure(KEY1, Some(Failure::Internal));
    let (status, _, body) = h.post(FLASH, GENERATE_BODY).await;
    assert_google_error(status, &body, 500, "INTERNAL");
    assert_eq!(keys_seen(&h), [KEY1]);

    let h = Harness::start_with(MockOptions::default(), |c| c.gemini.retry_on_timeout = true).await;
    h.mock.set_key_failure(KEY1, Some(Failure::Internal));
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    assert_eq!(keys_seen(&h), [KEY1, KEY2]);
}

/// 429 and 503 prove Google did nothing: they are replayed whatever `retry_on_timeout` says.
#[tokio::test]
async fn refusals_are_always_replayed() {
    for failure in [
        Failure::Overloaded,
        Failure::RateLimited {
            retry_delay_seconds: Some(1),
            per_day: false,
        },
    ] {
        let h = Harness::start().await;
        h.mock.set_key_failure(KEY1, Some(failure.clone()));
        assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200, "{failure:?}");
        assert_eq!(keys_seen(&h), [KEY1, KEY2], "{failure:?}");
    }
}

/// Creating a resource is never replayed on an unknown outcome, even with
/// `gemini.retry_on_timeout`: a second cached content (or file, or batch) would be left behind.
#[tokio::test]
async fn resource_creation_is_never_replayed_on_an_unknown_outcome() {
    let h = Harness::start_with(MockOptions::default(), |c| c.gemini.retry_on_timeout = true).await;
    h.mock.set_key_failure(KEY1, Some(Failure::Internal));
    h.mock.set_key_failure(KEY2, Some(Failure::Internal));
    let create = r#"{"model":"models/gemini-2.5-flash","contents":[{"role":"user","parts":[{"text":"a long document"}]}]}"#;
    let (status, _, _) = h.post("/v1beta/cachedContents", create).await;
    assert_eq!(status, 500);
    assert_eq!(keys_seen(&h).len(), 1);
    // A batch, too.
    h.mock.clear();
    let (status, _, _) = h
        .post("/v1beta/models/gemini-2.5-flash:batchGenerateContent", "{}")
        .await;
    assert_eq!(status, 500);
    assert_eq!(keys_seen(&h).len(), 1);
    // While a generate call is replayed under the same setting.
    h.mock.clear();
    h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(keys_seen(&h).len(), 2);
}

/// An upstream that never answers within `gemini.timeout_seconds` may still be working on the
/// request: by default the 504 is not replayed on another key. Paused time.
#[tokio::test(start_paused = true)]
async fn an_upstream_timeout_is_not_replayed_by_default() {
    let h = Harness::start_with(MockOptions::default(), |c| c.gemini.timeout_seconds = 2).await;
    let mut req = request(Method::POST, &h.url(FLASH), GENERATE_BODY);
    req.headers_mut()
        .insert("x-mock-delay-headers-ms", "120000".parse().unwrap());
    let (status, _, body) = h.call(req).await;
    assert_google_error(status, &body, 504, "DEADLINE_EXCEEDED");
    assert_eq!(keys_seen(&h).len(), 1);
}

/// A connection that cannot be made never reached Google: it is replayed on every key.
#[tokio::test]
async fn connect_failures_are_replayed() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.gemini.base_url = format!("http://127.0.0.1:{port}");
    })
    .await;
    let (status, _, body) = h.post(FLASH, GENERATE_BODY).await;
    assert_google_error(status, &body, 502, "UNAVAILABLE");
    let v = health(&h).await;
    for id in ["key1", "key2"] {
        assert_eq!(key_state(&v, id)["errors"]["server"], 1, "{id} tried: {v}");
    }
}
