//! The key pool against the mock upstream: Google's quota signals become rests, invalid keys
//! leave rotation, failures are retried on other keys, files stay with their key.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use gem_proxy::gateway::Live;
use gem_proxy_mock::{Failure, MockOptions};
use http::{Method, Request, StatusCode};
use http_body_util::Full;

const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const PRO: &str = "/v1beta/models/gemini-2.5-pro:generateContent";

/// A 429 with `retryDelay: 30s` rests that key for that model only, for 30 s; the client never
/// sees the 429 because the request is replayed on the other key.
#[tokio::test(start_paused = true)]
async fn a_retry_delay_rests_the_key_for_that_model_only_for_that_long() {
    let h = Harness::start().await;
    h.mock.set_key_failure(
        KEY1,
        Some(Failure::RateLimited {
            retry_delay_seconds: Some(30),
            per_day: false,
        }),
    );
    let (status, _, _) = h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(status, 200, "replayed on key2");
    assert_eq!(keys_seen(&h), [KEY1, KEY2]);
    h.mock.set_key_failure(KEY1, None);

    let v = health(&h).await;
    let k1 = key_state(&v, "key1");
    assert_eq!(k1["state"], "cooling");
    assert_eq!(k1["resting"][0]["model"], "gemini-2.5-flash");
    assert_eq!(k1["resting"][0]["reason"], "rate_limited");
    assert_eq!(k1["resting"][0]["remaining_seconds"], 30);
    assert_eq!(v["keys"]["cooling"], 1);

    // Flash goes to key2 only; pro still uses key1.
    h.mock.clear();
    for _ in 0..3 {
        assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    }
    assert_eq!(keys_seen(&h), [KEY2, KEY2, KEY2]);
    h.mock.clear();
    for _ in 0..2 {
        assert_eq!(h.post(PRO, GENERATE_BODY).await.0, 200);
    }
    assert!(keys_seen(&h).contains(&KEY1.to_string()));

    // After 30 s key1 serves flash again.
    tokio::time::advance(Duration::from_secs(30)).await;
    h.mock.clear();
    for _ in 0..2 {
        assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    }
    assert!(
        keys_seen(&h).contains(&KEY1.to_string()),
        "{:?}",
        keys_seen(&h)
    );
    assert_eq!(key_state(&health(&h).await, "key1")["state"], "active");
}

/// A per-day quota parks the key for that model until midnight Pacific.
#[tokio::test(start_paused = true)]
async fn a_per_day_quota_parks_the_key_until_midnight_pacific() {
    let h = Harness::start().await;
    h.mock.set_key_failure(
        KEY1,
        Some(Failure::RateLimited {
            retry_delay_seconds: Some(14),
            per_day: true,
        }),
    );
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    let v = health(&h).await;
    let rest = &key_state(&v, "key1")["resting"][0];
    assert_eq!(rest["reason"], "exhausted_today");
    let remaining = rest["remaining_seconds"].as_u64().unwrap();
    let expected = gem_proxy::time::until_pacific_midnight().as_secs();
    assert!(
        remaining.abs_diff(expected) <= 2,
        "{remaining} vs {expected}"
    );
    // Still parked well after the 14 s retry delay.
    tokio::time::advance(Duration::from_secs(600)).await;
    h.mock.clear();
    h.mock.set_key_failure(KEY1, None);
    for _ in 0..3 {
        h.post(FLASH, GENERATE_BODY).await;
    }
    assert_eq!(keys_seen(&h), [KEY2, KEY2, KEY2]);
}

/// An invalid key leaves rotation at once; the request that found out still succeeds.
#[tokio::test]
async fn an_invalid_key_leaves_rotation_and_the_request_still_succeeds() {
    let h = Harness::start_with(
        MockOptions {
            invalid_keys: vec![KEY1.into()],
            ..MockOptions::default()
        },
        |_| {},
    )
    .await;
    let (status, _, body) = h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    h.mock.clear();
    for _ in 0..4 {
        assert_eq!(h.get("/v1beta/models").await.0, 200);
    }
    assert_eq!(keys_seen(&h), [KEY2; 4]);
    let v = health(&h).await;
    assert_eq!(key_state(&v, "key1")["state"], "invalid");
    assert_eq!(key_state(&v, "key1")["invalid_reason"], "API_KEY_INVALID");
    assert_eq!(v["keys"]["invalid"], 1);
}

/// 503 "overloaded" is retried elsewhere, the client sees 200, and the key is not blamed.
#[tokio::test]
async fn overload_is_retried_elsewhere_without_blaming_the_key() {
    let h = Harness::start().await;
    h.mock.set_key_failure(KEY1, Some(Failure::Overloaded));
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    assert_eq!(keys_seen(&h), [KEY1, KEY2]);
    h.mock.set_key_failure(KEY1, None);
    let v = health(&h).await;
    let k1 = key_state(&v, "key1");
    assert_eq!(k1["state"], "active");
    assert_eq!(k1["errors"]["overloaded"], 1);
    h.mock.clear();
    h.post(FLASH, GENERATE_BODY).await;
    h.post(FLASH, GENERATE_BODY).await;
    assert!(
        keys_seen(&h).contains(&KEY1.to_string()),
        "key1 still in rotation"
    );
}

/// A 400 is the request's fault: passed on, not retried.
#[tokio::test]
async fn a_bad_request_is_not_retried() {
    let h = Harness::start().await;
    let mut req = request(Method::POST, &h.url(FLASH), GENERATE_BODY);
    req.headers_mut()
        .insert("x-mock-error", "400".parse().unwrap());
    let (status, _, body) = h.call(req).await;
    assert_google_error(status, &body, 400, "INVALID_ARGUMENT");
    assert_eq!(h.mock.requests().len(), 1);
    assert_eq!(key_state(&health(&h).await, "key1")["state"], "active");
}

/// Every key fails: the client gets Google's last answer (retries exhausted), not a made-up one.
/// (A 500 is replayed only with `gemini.retry_on_timeout`: Google may have run the request.)
#[tokio::test]
async fn when_every_key_fails_the_last_answer_passes_through() {
    let h = Harness::start_with(MockOptions::default(), |c| c.gemini.retry_on_timeout = true).await;
    h.mock.set_key_failure(KEY1, Some(Failure::Internal));
    h.mock.set_key_failure(KEY2, Some(Failure::Internal));
    let (status, _, body) = h.post(FLASH, GENERATE_BODY).await;
    assert_google_error(status, &body, 500, "INTERNAL");
    // One try per key (max_retries 2, but only two keys).
    assert_eq!(keys_seen(&h), [KEY1, KEY2]);
}

/// A stream that fails after its first event is never replayed: the client sees an error.
#[tokio::test]
async fn a_started_stream_is_never_replayed() {
    let h = Harness::start().await;
    assert!(
        stream_broken_mid_way(&h).await,
        "the client must see the failure"
    );
    assert_eq!(h.mock.requests().len(), 1, "not replayed");
    assert_eq!(key_state(&health(&h).await, "key1")["errors"]["server"], 1);
}

/// All keys at their limit: 429 RESOURCE_EXHAUSTED with Retry-After = when the first frees up.
#[tokio::test(start_paused = true)]
async fn all_keys_exhausted_is_429_with_the_right_retry_after() {
    let h = Harness::start().await;
    h.mock.set_key_failure(
        KEY1,
        Some(Failure::RateLimited {
            retry_delay_seconds: Some(45),
            per_day: false,
        }),
    );
    h.mock.set_key_failure(
        KEY2,
        Some(Failure::RateLimited {
            retry_delay_seconds: Some(30),
            per_day: false,
        }),
    );
    // Both keys get a 429 and rest; Google's last 429 reaches the client.
    let (status, _, body) = h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    // Now nobody is asked: the gateway knows both rest, the first for 30 s more.
    h.mock.clear();
    let (status, headers, body) = h.post(FLASH, GENERATE_BODY).await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
    assert_eq!(headers["retry-after"], "30");
    assert!(h.mock.requests().is_empty());
    tokio::time::advance(Duration::from_secs(10)).await;
    let (_, headers, _) = h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(headers["retry-after"], "20");
}

/// Per-key requests per minute, enforced locally: a key at its limit is skipped.
#[tokio::test(start_paused = true)]
async fn a_key_at_its_rpm_limit_is_skipped_until_the_window_allows() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.gemini.api_keys[0].max_requests_per_minute = Some(1);
        c.gemini.api_keys[1].max_requests_per_minute = Some(1);
    })
    .await;
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    let (status, headers, _) = h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "60");
    assert_eq!(h.mock.requests().len(), 2);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
}

/// Tokens from usageMetadata are counted per key, for plain and streamed answers, and feed the
/// tokens-per-minute budget.
#[tokio::test(start_paused = true)]
async fn tokens_are_counted_and_limited_per_key() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.gemini.api_keys.truncate(1);
        c.gemini.api_keys[0].max_tokens_per_minute = Some(40);
    })
    .await;
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    let (status, _, _) = h
        .post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            GENERATE_BODY,
        )
        .await;
    assert_eq!(status, 200);
    let v = health(&h).await;
    let tokens = &key_state(&v, "key1")["tokens"];
    let per_answer = gem_proxy_mock::TOTAL_TOKEN_COUNT;
    assert_eq!(tokens["total"], 2 * per_answer);
    assert_eq!(tokens["prompt"], 2 * gem_proxy_mock::PROMPT_TOKEN_COUNT);
    assert_eq!(tokens["thoughts"], 2 * gem_proxy_mock::THOUGHTS_TOKEN_COUNT);
    // 48 tokens spent of 40 per minute: the key waits until the budget recovers.
    let (status, headers, _) = h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "12");
}

/// A file uploaded through key A is read back (and used) through key A, although rotation
/// would pick B; the client never sees an upstream key.
#[tokio::test]
async fn files_stay_with_the_key_that_uploaded_them() {
    let h = Harness::start().await;
    let start = Request::post(h.url("/upload/v1beta/files"))
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", "5")
        .header("x-goog-upload-header-content-type", "text/plain")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"file":{"display_name":"hello"}}"#,
        )))
        .unwrap();
    let (status, headers, _) = h.call(start).await;
    assert_eq!(status, 200);
    let url = headers["x-goog-upload-url"].to_str().unwrap().to_owned();
    let finalize = Request::post(&url)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (status, headers, body) = h.call(finalize).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let file = json(&body);
    let name = file["file"]["name"].as_str().unwrap().to_owned();
    let uri = file["file"]["uri"].as_str().unwrap().to_owned();
    for value in headers.values() {
        assert!(!value.to_str().unwrap_or("").contains("AIza"));
    }
    assert!(!String::from_utf8_lossy(&body).contains("AIza"));

    // Read it back, several times, and use it in a generate call: always key1.
    for _ in 0..3 {
        let (status, _, body) = h.get(&format!("/v1beta/{name}")).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let generate = format!(
        r#"{{"contents":[{{"parts":[{{"fileData":{{"fileUri":"{uri}","mimeType":"text/plain"}}}},{{"text":"summarise"}}]}}]}}"#
    );
    for _ in 0..2 {
        assert_eq!(h.post(FLASH, &generate).await.0, 200);
    }
    let keys = keys_seen(&h);
    assert_eq!(keys.len(), 2 + 3 + 2);
    assert!(keys.iter().all(|k| k == KEY1), "{keys:?}");
    // Ordinary traffic still alternates.
    h.mock.clear();
    h.get("/v1beta/models").await;
    h.get("/v1beta/models").await;
    assert_eq!(keys_seen(&h).len(), 2);
    assert!(keys_seen(&h).contains(&KEY2.to_string()));
}

/// Reloading the config keeps the state of keys whose id survives.
#[tokio::test]
async fn a_reload_keeps_the_state_of_surviving_keys() {
    let h = Harness::start_with(
        MockOptions {
            invalid_keys: vec![KEY1.into()],
            ..MockOptions::default()
        },
        |_| {},
    )
    .await;
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    let mut config = h.server.gateway().live().config.clone();
    config
        .gemini
        .api_keys
        .push(config.gemini.api_keys[1].clone());
    config.gemini.api_keys[2].id = "key3".into();
    h.server.gateway().replace(Live::build(config).unwrap());
    let v = health(&h).await;
    assert_eq!(v["keys"]["total"], 3);
    assert_eq!(key_state(&v, "key1")["state"], "invalid");
    assert_eq!(key_state(&v, "key3")["state"], "active");
    assert_eq!(StatusCode::OK, h.post(FLASH, GENERATE_BODY).await.0);
}

/// Each key sees only its own files; listing them through the gateway shows all of them.
#[tokio::test]
async fn a_file_listing_merges_every_keys_files() {
    let h = Harness::start().await;
    let mut names = Vec::new();
    for i in 0..2 {
        let upload = Request::post(h.url("/upload/v1beta/files"))
            .header("x-goog-upload-protocol", "multipart")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(format!("file {i}"))))
            .unwrap();
        let (status, _, body) = h.call(upload).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        names.push(json(&body)["file"]["name"].as_str().unwrap().to_owned());
    }
    let owners: Vec<String> = keys_seen(&h);
    assert_eq!(owners, [KEY1, KEY2], "the two files live on different keys");
    h.mock.clear();
    let (status, _, body) = h.get("/v1beta/files").await;
    assert_eq!(status, 200);
    let listed: Vec<String> = json(&body)["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    for name in &names {
        assert!(listed.contains(name), "{name} missing from {listed:?}");
    }
    assert_eq!(keys_seen(&h), [KEY1, KEY2], "one listing per key");
}
