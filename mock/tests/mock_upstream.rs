//! The mock upstream seen from the outside, over real sockets.

mod support;

use std::time::Duration;

use bytes::Bytes;
use gem_proxy_mock::{
    Failure, MockOptions, MockUpstream, PROMPT_TOKEN_COUNT, THOUGHTS_TOKEN_COUNT, TOTAL_TOKEN_COUNT,
};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use support::{Answer, Call};

const GENERATE: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const STREAM_SSE: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
const STREAM_JSON: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
const CHAT: &str = "/v1beta/openai/chat/completions";

async fn mock() -> MockUpstream {
    MockUpstream::start(MockOptions::default()).await.unwrap()
}

fn prompt() -> Value {
    json!({ "contents": [{ "role": "user", "parts": [{ "text": "Hi" }] }] })
}

/// The SSE events of a complete body, checking Google's `data: <json>\r\n\r\n` framing.
fn sse_events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("\r\n\r\n"), "{body:?}");
    body.split_terminator("\r\n\r\n")
        .map(|event| {
            serde_json::from_str(event.strip_prefix("data: ").expect("a data line")).unwrap()
        })
        .collect()
}

/// Reads frames until the body so far holds `count` copies of `terminator` and ends with one;
/// `None` if the body ended first.
async fn read_until(
    body: &mut Incoming,
    seen: &mut Vec<u8>,
    terminator: &str,
    count: usize,
) -> Option<()> {
    let done = |seen: &[u8]| {
        let text = String::from_utf8_lossy(seen);
        text.matches(terminator).count() >= count && text.ends_with(terminator)
    };
    while !done(seen) {
        let frame = body.frame().await?.expect("a body frame");
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
        }
    }
    Some(())
}

#[tokio::test]
async fn generate_content_answers_like_google_and_is_recorded() {
    let mock = mock().await;
    let request = serde_json::to_vec(&prompt()).unwrap();
    let answer = Call::post(GENERATE)
        .key("key-a")
        .body(request.clone())
        .fetch(mock.addr())
        .await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    let json = answer.json();
    let candidate = &json["candidates"][0];
    assert!(
        candidate["content"]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .contains("gemini-2.5-flash")
    );
    assert_eq!(candidate["content"]["role"], "model");
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(
        json["usageMetadata"]["promptTokenCount"],
        PROMPT_TOKEN_COUNT
    );
    assert_eq!(
        json["usageMetadata"]["thoughtsTokenCount"],
        THOUGHTS_TOKEN_COUNT
    );
    assert_eq!(json["usageMetadata"]["totalTokenCount"], TOTAL_TOKEN_COUNT);
    assert_eq!(json["modelVersion"], "gemini-2.5-flash");
    assert!(json["responseId"].is_string());

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    let seen = &recorded[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, GENERATE);
    assert_eq!(seen.query, None);
    assert_eq!(seen.body, Bytes::from(request));
    assert_eq!(seen.key.as_deref(), Some("key-a"));
    assert_eq!(seen.header("X-Goog-Api-Key"), Some("key-a"));
    assert_eq!(seen.headers.first().map(|(n, _)| n.as_str()), Some("host"));

    mock.clear();
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn every_api_version_is_served() {
    let mock = mock().await;
    for version in ["v1", "v1beta", "v1alpha"] {
        let path = format!("/{version}/models/gemini-2.5-pro:generateContent");
        let answer = Call::post(&path)
            .key("k")
            .json(&prompt())
            .fetch(mock.addr())
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{version}");
        assert_eq!(answer.json()["modelVersion"], "gemini-2.5-pro");
    }
}

#[tokio::test]
async fn key_is_recorded_from_each_credential_place() {
    let mock = mock().await;
    let addr = mock.addr();
    Call::post(GENERATE)
        .key("from-header")
        .json(&prompt())
        .fetch(addr)
        .await;
    Call::post(&format!("{GENERATE}?key=from%2Dquery"))
        .json(&prompt())
        .fetch(addr)
        .await;
    Call::post(CHAT)
        .header("authorization", "Bearer from-bearer")
        .json(&json!({ "model": "gemini-2.5-flash", "messages": [] }))
        .fetch(addr)
        .await;
    Call::post(&format!("{GENERATE}?key=loser"))
        .key("winner")
        .json(&prompt())
        .fetch(addr)
        .await;

    let keys: Vec<_> = mock.requests().into_iter().map(|r| r.key).collect();
    let expected = ["from-header", "from-query", "from-bearer", "winner"];
    assert_eq!(keys, expected.map(|k| Some(k.to_owned())));
}

#[tokio::test]
async fn credentials_are_checked_like_google() {
    let mock = MockUpstream::start(MockOptions {
        invalid_keys: vec!["bad".into()],
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let addr = mock.addr();

    // Google looks at Authorization first, even beside a good key.
    let answer = Call::post(GENERATE)
        .key("good")
        .header("authorization", "Bearer leaked-client-token")
        .json(&prompt())
        .fetch(addr)
        .await;
    answer.google_error(401, "UNAUTHENTICATED");

    let answer = Call::post(GENERATE).json(&prompt()).fetch(addr).await;
    let error = answer.google_error(403, "PERMISSION_DENIED");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("Method doesn't allow unregistered callers")
    );

    let answer = Call::post(GENERATE)
        .key("bad")
        .json(&prompt())
        .fetch(addr)
        .await;
    let error = answer.google_error(400, "INVALID_ARGUMENT");
    assert_eq!(
        error["details"][0]["@type"],
        "type.googleapis.com/google.rpc.ErrorInfo"
    );
    assert_eq!(error["details"][0]["reason"], "API_KEY_INVALID");
    assert_eq!(error["details"][0]["domain"], "googleapis.com");
    assert_eq!(
        error["details"][0]["metadata"]["service"],
        "generativelanguage.googleapis.com"
    );

    // The OpenAI-compatible surface takes its key from Authorization.
    let answer = Call::post(CHAT)
        .header("authorization", "Bearer good")
        .json(&json!({ "model": "gemini-2.5-flash", "messages": [] }))
        .fetch(addr)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
}

#[tokio::test]
async fn sse_stream_frames_events_like_google() {
    let mock = mock().await;
    let answer = Call::post(STREAM_SSE)
        .key("k")
        .header("x-mock-chunks", "4")
        .json(&prompt())
        .fetch(mock.addr())
        .await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert_eq!(answer.header("content-length"), None);
    let events = sse_events(answer.text());
    assert_eq!(events.len(), 4);
    for event in &events[..3] {
        assert!(event["candidates"][0].get("finishReason").is_none());
    }
    let last = &events[3];
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["totalTokenCount"], TOTAL_TOKEN_COUNT);
}

#[tokio::test]
async fn json_stream_is_one_array_sent_in_pieces() {
    let mock = mock().await;
    let response = Call::post(STREAM_JSON)
        .key("k")
        .json(&prompt())
        .send(mock.addr())
        .await;
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=UTF-8"
    );

    let mut body = response.into_body();
    let mut seen = Vec::new();
    read_until(&mut body, &mut seen, "\n}\n", 1).await.unwrap();
    assert!(seen.starts_with(b"["));
    assert!(
        serde_json::from_slice::<Value>(&seen).is_err(),
        "the first piece is not the whole array"
    );
    read_until(&mut body, &mut seen, "\n]", 1).await.unwrap();
    assert!(body.frame().await.is_none());

    let array: Value = serde_json::from_slice(&seen).unwrap();
    let array = array.as_array().unwrap();
    assert_eq!(array.len(), 3);
    assert_eq!(array[2]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        array[2]["usageMetadata"]["totalTokenCount"],
        TOTAL_TOKEN_COUNT
    );
}

#[tokio::test]
async fn held_stream_sends_each_later_event_only_on_release() {
    let mock = mock().await;
    mock.hold_streams(true);
    let response = Call::post(STREAM_SSE)
        .key("k")
        .json(&prompt())
        .send(mock.addr())
        .await;
    let mut body = response.into_body();
    let mut seen = Vec::new();

    read_until(&mut body, &mut seen, "\r\n\r\n", 1)
        .await
        .unwrap();
    assert_eq!(sse_events(std::str::from_utf8(&seen).unwrap()).len(), 1);
    // Nothing more can arrive while held: if the gate leaked, the event would be here in microseconds.
    let early = tokio::time::timeout(Duration::from_millis(100), body.frame()).await;
    assert!(early.is_err(), "second event arrived without a release");

    mock.release_chunk();
    read_until(&mut body, &mut seen, "\r\n\r\n", 2)
        .await
        .unwrap();
    assert_eq!(sse_events(std::str::from_utf8(&seen).unwrap()).len(), 2);

    // Lifting the hold lets the rest through.
    mock.hold_streams(false);
    read_until(&mut body, &mut seen, "\r\n\r\n", 3)
        .await
        .unwrap();
    let events = sse_events(std::str::from_utf8(&seen).unwrap());
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["candidates"][0]["finishReason"], "STOP");
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn fail_after_chunks_ends_the_body_abnormally() {
    let mock = mock().await;
    for h2 in [false, true] {
        let call = Call::post(STREAM_SSE)
            .key("k")
            .header("x-mock-fail-after-chunks", "1")
            .json(&prompt());
        let response = if h2 {
            call.send_h2(mock.addr()).await
        } else {
            call.send(mock.addr()).await
        };
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut seen = Vec::new();
        let outcome = loop {
            match body.frame().await {
                Some(Ok(frame)) => seen.extend_from_slice(&frame.into_data().unwrap_or_default()),
                Some(Err(error)) => break Err(error),
                None => break Ok(()),
            }
        };
        assert!(outcome.is_err(), "h2={h2}: the body ended cleanly");
        assert_eq!(
            sse_events(std::str::from_utf8(&seen).unwrap()).len(),
            1,
            "h2={h2}"
        );
    }

    // Failing after no event: the headers arrive, then the body breaks.
    let call = Call::post(STREAM_SSE)
        .key("k")
        .header("x-mock-fail-after-chunks", "0")
        .json(&prompt());
    let response = call.send(mock.addr()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err());

    // Failing "after" more events than the stream has still ends abnormally, after all of them.
    let call = Call::post(STREAM_JSON)
        .key("k")
        .header("x-mock-fail-after-chunks", "10")
        .json(&prompt());
    let collected = call.send(mock.addr()).await.into_body().collect().await;
    assert!(collected.is_err());
}

#[tokio::test]
async fn rate_limit_errors_carry_quota_failure_and_retry_info() {
    let mock = mock().await;
    let answer = Call::post(GENERATE)
        .key("k")
        .header("x-mock-error", "429")
        .json(&prompt())
        .fetch(mock.addr())
        .await;
    let error = answer.google_error(429, "RESOURCE_EXHAUSTED");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("You exceeded your current quota")
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .ends_with("Please retry in 14.19s.")
    );
    let details = error["details"].as_array().unwrap();
    let quota = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.QuotaFailure")
        .unwrap();
    let violation = &quota["violations"][0];
    assert_eq!(
        violation["quotaId"],
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    );
    assert_eq!(
        violation["quotaDimensions"],
        json!({ "location": "global", "model": "gemini-2.5-flash" })
    );
    let retry = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .unwrap();
    assert_eq!(retry["retryDelay"], "14s");

    // Per-day quota through the model name, with a chosen delay.
    let answer = Call::post("/v1beta/models/mock-error-429-day:generateContent")
        .key("k")
        .header("x-mock-retry-delay-seconds", "3")
        .json(&prompt())
        .fetch(mock.addr())
        .await;
    let error = answer.google_error(429, "RESOURCE_EXHAUSTED");
    let violation = &error["details"][0]["violations"][0];
    assert_eq!(
        violation["quotaId"],
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    );
    assert_eq!(violation["quotaDimensions"]["model"], "mock-error-429-day");
    assert_eq!(error["details"][2]["retryDelay"], "3s");
}

#[tokio::test]
async fn error_triggers_cover_every_code() {
    let mock = mock().await;
    let cases = [
        ("503", 503, "UNAVAILABLE"),
        ("500", 500, "INTERNAL"),
        ("504", 504, "DEADLINE_EXCEEDED"),
        ("400", 400, "INVALID_ARGUMENT"),
        ("400-key", 400, "INVALID_ARGUMENT"),
        ("403", 403, "PERMISSION_DENIED"),
        ("403-resource", 403, "PERMISSION_DENIED"),
        ("404", 404, "NOT_FOUND"),
    ];
    for (code, status, name) in cases {
        let answer = Call::post(STREAM_SSE)
            .key("k")
            .header("x-mock-error", code)
            .json(&prompt())
            .fetch(mock.addr())
            .await;
        answer.google_error(status, name);
    }
    let answer = Call::post("/v1beta/models/mock-error-503:generateContent")
        .key("k")
        .fetch(mock.addr())
        .await;
    let error = answer.google_error(503, "UNAVAILABLE");
    assert_eq!(
        error["message"],
        "The model is overloaded. Please try again later."
    );

    let answer = Call::post(GENERATE)
        .key("k")
        .header("x-mock-error", "418")
        .fetch(mock.addr())
        .await;
    assert!(
        answer.google_error(400, "INVALID_ARGUMENT")["message"]
            .as_str()
            .unwrap()
            .contains("418")
    );
}

#[tokio::test]
async fn key_failure_applies_to_that_key_until_cleared() {
    let mock = mock().await;
    mock.set_key_failure("sick", Some(Failure::Overloaded));
    let addr = mock.addr();
    Call::post(GENERATE)
        .key("sick")
        .json(&prompt())
        .fetch(addr)
        .await
        .google_error(503, "UNAVAILABLE");
    assert_eq!(
        Call::post(GENERATE)
            .key("well")
            .json(&prompt())
            .fetch(addr)
            .await
            .status,
        StatusCode::OK
    );

    mock.set_key_failure(
        "sick",
        Some(Failure::RateLimited {
            retry_delay_seconds: None,
            per_day: false,
        }),
    );
    let error = Call::post(GENERATE)
        .key("sick")
        .fetch(addr)
        .await
        .google_error(429, "RESOURCE_EXHAUSTED");
    let details = error["details"].as_array().unwrap();
    assert!(
        details
            .iter()
            .all(|d| d["@type"] != "type.googleapis.com/google.rpc.RetryInfo")
    );

    mock.set_key_failure("sick", None);
    assert_eq!(
        Call::post(GENERATE)
            .key("sick")
            .json(&prompt())
            .fetch(addr)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn resumable_upload_belongs_to_the_key_that_made_it() {
    let mock = mock().await;
    let addr = mock.addr();
    let start = Call::post("/upload/v1beta/files")
        .key("owner")
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", "11")
        .header("x-goog-upload-header-content-type", "text/plain")
        .json(&json!({ "file": { "displayName": "notes" } }))
        .fetch(addr)
        .await;
    assert_eq!(start.status, StatusCode::OK);
    assert_eq!(start.header("x-goog-upload-status"), Some("active"));
    let url = start.header("x-goog-upload-url").unwrap();
    let prefix = format!("{}/upload/v1beta/files?upload_id=", mock.base_url());
    assert!(url.starts_with(&prefix), "{url}");
    assert!(
        url.ends_with("&upload_protocol=resumable&key=owner"),
        "{url}"
    );
    let path_and_query = &url[mock.base_url().len()..];

    // Another key cannot use the upload URL.
    let stolen = Call::post(path_and_query)
        .key("thief")
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body("hello world")
        .fetch(addr)
        .await;
    stolen.google_error(403, "PERMISSION_DENIED");

    // The URL alone (it carries the key) is enough to finish.
    let done = Call::post(path_and_query)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body("hello world")
        .fetch(addr)
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    assert_eq!(done.header("x-goog-upload-status"), Some("final"));
    let file = done.json()["file"].clone();
    let name = file["name"].as_str().unwrap();
    let id = name.strip_prefix("files/").unwrap();
    assert_eq!(file["displayName"], "notes");
    assert_eq!(file["mimeType"], "text/plain");
    assert_eq!(file["sizeBytes"], "11");
    assert_eq!(file["state"], "ACTIVE");
    assert_eq!(file["uri"], format!("{}/v1beta/{name}", mock.base_url()));
    assert!(file["createTime"].as_str().unwrap().ends_with('Z'));
    assert!(file["expirationTime"].is_string());

    let path = format!("/v1beta/{name}");
    let got = Call::get(&path).key("owner").fetch(addr).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json(), file);
    let denied = Call::get(&path).key("thief").fetch(addr).await;
    let error = denied.google_error(403, "PERMISSION_DENIED");
    assert!(error["message"].as_str().unwrap().contains(id));

    assert_eq!(
        Call::get("/v1beta/files")
            .key("owner")
            .fetch(addr)
            .await
            .json()["files"][0],
        file
    );
    assert_eq!(
        Call::get("/v1beta/files")
            .key("thief")
            .fetch(addr)
            .await
            .json(),
        json!({})
    );

    Call::new(Method::DELETE, &path)
        .key("thief")
        .fetch(addr)
        .await
        .google_error(403, "PERMISSION_DENIED");
    assert_eq!(
        Call::new(Method::DELETE, &path)
            .key("owner")
            .fetch(addr)
            .await
            .status,
        StatusCode::OK
    );
    Call::get(&path)
        .key("owner")
        .fetch(addr)
        .await
        .google_error(403, "PERMISSION_DENIED");
}

#[tokio::test]
async fn upload_in_several_chunks_checks_offsets() {
    let mock = mock().await;
    let addr = mock.addr();
    // The Python SDK names metadata fields the proto way.
    let start = Call::post("/upload/v1/files")
        .key("k")
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .json(&json!({ "file": { "display_name": "snake", "mime_type": "image/png" } }))
        .fetch(addr)
        .await;
    let url = start.header("x-goog-upload-url").unwrap().to_owned();
    let path = &url[mock.base_url().len()..];
    let chunk = |command: &str, offset: &str, body: &'static str| {
        Call::post(path)
            .key("k")
            .header("x-goog-upload-command", command)
            .header("x-goog-upload-offset", offset)
            .body(body)
    };

    let first = chunk("upload", "0", "abc").fetch(addr).await;
    assert_eq!(first.header("x-goog-upload-status"), Some("active"));
    chunk("upload", "0", "def")
        .fetch(addr)
        .await
        .google_error(400, "INVALID_ARGUMENT");
    let last = chunk("upload, finalize", "3", "defg").fetch(addr).await;
    assert_eq!(last.header("x-goog-upload-status"), Some("final"));
    assert_eq!(last.json()["file"]["sizeBytes"], "7");
    assert_eq!(last.json()["file"]["mimeType"], "image/png");
    assert_eq!(last.json()["file"]["displayName"], "snake");
    assert!(
        last.json()["file"]["uri"]
            .as_str()
            .unwrap()
            .contains("/v1/files/")
    );
}

#[tokio::test]
async fn cached_contents_belong_to_the_key_that_made_them() {
    let mock = mock().await;
    let addr = mock.addr();
    let created = Call::post("/v1beta/cachedContents")
        .key("owner")
        .json(&json!({ "model": "models/gemini-2.5-flash", "contents": [], "ttl": "300s", "displayName": "c" }))
        .fetch(addr)
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    let cache = created.json();
    let name = cache["name"].as_str().unwrap();
    assert!(name.starts_with("cachedContents/"));
    assert_eq!(cache["model"], "models/gemini-2.5-flash");
    assert_eq!(cache["displayName"], "c");

    let path = format!("/v1beta/{name}");
    assert_eq!(
        Call::get(&path).key("owner").fetch(addr).await.json(),
        cache
    );
    Call::get(&path)
        .key("other")
        .fetch(addr)
        .await
        .google_error(403, "PERMISSION_DENIED");
    assert_eq!(
        Call::get("/v1beta/cachedContents")
            .key("owner")
            .fetch(addr)
            .await
            .json()["cachedContents"][0],
        cache
    );
    let patched = Call::new(Method::PATCH, &path)
        .key("owner")
        .json(&json!({ "ttl": "60s" }))
        .fetch(addr)
        .await;
    assert_eq!(patched.json()["name"], name);
    Call::new(Method::DELETE, &path)
        .key("other")
        .fetch(addr)
        .await
        .google_error(403, "PERMISSION_DENIED");
    assert_eq!(
        Call::new(Method::DELETE, &path)
            .key("owner")
            .fetch(addr)
            .await
            .status,
        StatusCode::OK
    );
    Call::get(&path)
        .key("owner")
        .fetch(addr)
        .await
        .google_error(403, "PERMISSION_DENIED");
}

#[tokio::test]
async fn openai_chat_answers_and_streams_until_done() {
    let mock = mock().await;
    let addr = mock.addr();
    let bearer = "Bearer k";
    let answer = Call::post(CHAT)
        .header("authorization", bearer)
        .json(&json!({ "model": "gemini-2.5-flash", "messages": [{ "role": "user", "content": "Hi" }] }))
        .fetch(addr)
        .await;
    let json = answer.json();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["choices"][0]["message"]["role"], "assistant");
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    assert_eq!(json["usage"]["total_tokens"], TOTAL_TOKEN_COUNT);

    let answer = Call::post(CHAT)
        .header("authorization", bearer)
        .json(&json!({ "model": "models/gemini-2.5-flash", "messages": [], "stream": true }))
        .fetch(addr)
        .await;
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    let text = answer.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text:?}");
    let chunks: Vec<Value> = text
        .split_terminator("\n\n")
        .map(|event| event.strip_prefix("data: ").unwrap())
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    assert_eq!(chunks.len(), 3);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[2]["model"], "gemini-2.5-flash");

    let answer = Call::post(CHAT)
        .header("authorization", bearer)
        .json(&json!({ "model": "mock-error-429", "messages": [] }))
        .fetch(addr)
        .await;
    let error = answer.google_error(429, "RESOURCE_EXHAUSTED");
    assert_eq!(
        error["details"][0]["violations"][0]["quotaDimensions"]["model"],
        "mock-error-429"
    );

    let models = Call::get("/v1beta/openai/models")
        .header("authorization", bearer)
        .fetch(addr)
        .await
        .json();
    assert_eq!(models["object"], "list");
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "models/gemini-2.5-flash")
    );
    // The OpenAI SDK percent-encodes the slash of a model id.
    let model = Call::get("/v1beta/openai/models/models%2Fgemini-2.5-flash")
        .header("authorization", bearer)
        .fetch(addr)
        .await;
    assert_eq!(model.json()["id"], "models/gemini-2.5-flash");
}

#[tokio::test]
async fn embeddings_count_their_inputs() {
    let mock = mock().await;
    let addr = mock.addr();
    let single = Call::post("/v1beta/models/gemini-embedding-001:embedContent")
        .key("k")
        .json(&prompt())
        .fetch(addr)
        .await;
    assert!(
        !single.json()["embedding"]["values"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let batch = json!({ "requests": [{ "content": {} }, { "content": {} }, { "content": {} }] });
    let answer = Call::post("/v1beta/models/gemini-embedding-001:batchEmbedContents")
        .key("k")
        .json(&batch)
        .fetch(addr)
        .await;
    let embeddings = answer.json()["embeddings"].as_array().unwrap().clone();
    assert_eq!(embeddings.len(), 3);
    assert!(embeddings.iter().all(|e| e["values"].is_array()));

    let answer = Call::post("/v1beta/openai/embeddings")
        .header("authorization", "Bearer k")
        .json(&json!({ "model": "gemini-embedding-001", "input": ["a", "b"] }))
        .fetch(addr)
        .await;
    let json = answer.json();
    assert_eq!(json["data"].as_array().unwrap().len(), 2);
    assert_eq!(json["data"][1]["index"], 1);

    let count = Call::post("/v1beta/models/gemini-2.5-flash:countTokens")
        .key("k")
        .json(&prompt())
        .fetch(addr)
        .await;
    assert_eq!(count.json()["totalTokens"], PROMPT_TOKEN_COUNT);

    let batch = json!({ "batch": { "displayName": "b", "inputConfig": { "requests": { "requests": [{}, {}] } } } });
    let answer = Call::post("/v1beta/models/gemini-2.5-flash:batchGenerateContent")
        .key("k")
        .json(&batch)
        .fetch(addr)
        .await;
    let json = answer.json();
    assert!(json["name"].as_str().unwrap().starts_with("batches/"));
    assert_eq!(json["metadata"]["batchStats"]["requestCount"], "2");
}

#[tokio::test]
async fn models_are_listed_and_described() {
    let mock = mock().await;
    let list = Call::get("/v1beta/models")
        .key("k")
        .fetch(mock.addr())
        .await
        .json();
    let models = list["models"].as_array().unwrap();
    assert!(models.len() >= 3);
    for model in models {
        assert!(
            model["name"]
                .as_str()
                .unwrap()
                .starts_with("models/gemini-")
        );
        assert!(model["displayName"].is_string());
        assert!(model["inputTokenLimit"].is_u64());
        assert!(model["outputTokenLimit"].is_u64());
        assert!(model["supportedGenerationMethods"].is_array());
    }
    let one = Call::get("/v1/models/gemini-2.5-flash")
        .key("k")
        .fetch(mock.addr())
        .await
        .json();
    assert_eq!(one["name"], "models/gemini-2.5-flash");
    assert_eq!(one["displayName"], "Gemini 2.5 Flash");
}

#[tokio::test]
async fn unknown_paths_get_googles_404() {
    let mock = mock().await;
    for (method, path) in [
        (Method::GET, "/v1beta/interactions"),
        (Method::GET, "/nope"),
        (Method::GET, GENERATE),
    ] {
        Call::new(method, path)
            .key("k")
            .fetch(mock.addr())
            .await
            .google_error(404, "NOT_FOUND");
    }
    assert_eq!(mock.requests().len(), 3, "unknown paths are recorded too");
}

#[tokio::test]
async fn hop_by_hop_headers_on_request() {
    let mock = mock().await;
    let answer = Call::post(GENERATE)
        .key("k")
        .header("x-mock-hop-headers", "1")
        .json(&prompt())
        .fetch(mock.addr())
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("connection"), Some("x-custom-hop"));
    assert_eq!(answer.header("x-custom-hop"), Some("1"));
    assert_eq!(answer.header("keep-alive"), Some("timeout=5"));
    assert_eq!(answer.header("proxy-authenticate"), Some("Basic"));
    assert_eq!(answer.header("x-end-to-end"), Some("yes"));

    let plain = Call::post(GENERATE)
        .key("k")
        .json(&prompt())
        .fetch(mock.addr())
        .await;
    assert_eq!(plain.header("x-custom-hop"), None);
}

#[tokio::test(start_paused = true)]
async fn header_delay_holds_back_the_response() {
    let mock = mock().await;
    let started = tokio::time::Instant::now();
    let response = Call::post(GENERATE)
        .key("k")
        .header("x-mock-delay-headers-ms", "30000")
        .send(mock.addr())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn chunk_delay_spaces_stream_events() {
    let mock = MockUpstream::start(MockOptions {
        chunk_delay: Duration::from_secs(5),
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let answer = Call::post(STREAM_SSE).key("k").fetch(mock.addr()).await;
    assert_eq!(sse_events(answer.text()).len(), 3);
    assert!(started.elapsed() >= Duration::from_secs(10));

    // A request can ask for its own delay.
    let started = tokio::time::Instant::now();
    let answer = Call::post(STREAM_SSE)
        .key("k")
        .header("x-mock-chunk-delay-ms", "0")
        .fetch(mock.addr())
        .await;
    assert_eq!(sse_events(answer.text()).len(), 3);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn control_endpoints_steer_the_mock() {
    let mock = mock().await;
    let addr = mock.addr();
    let set = Call::post("/_mock/key-failure")
        .json(&json!({ "key": "k", "failure": "429-day", "retry_delay_seconds": 7 }))
        .fetch(addr)
        .await;
    assert_eq!(set.status, StatusCode::OK);
    let error = Call::post(GENERATE)
        .key("k")
        .body("{}")
        .fetch(addr)
        .await
        .google_error(429, "RESOURCE_EXHAUSTED");
    assert_eq!(error["details"][2]["retryDelay"], "7s");

    let recorded = Call::get("/_mock/requests").fetch(addr).await.json();
    let recorded = recorded.as_array().unwrap();
    assert_eq!(recorded.len(), 1, "control calls are not recorded");
    assert_eq!(recorded[0]["path"], GENERATE);
    assert_eq!(recorded[0]["body"], "{}");
    assert_eq!(recorded[0]["key"], "k");
    assert!(
        recorded[0]["headers"]
            .as_array()
            .unwrap()
            .contains(&json!(["x-goog-api-key", "k"]))
    );

    assert_eq!(
        Call::post("/_mock/reset").fetch(addr).await.status,
        StatusCode::OK
    );
    assert_eq!(
        Call::post(GENERATE).key("k").fetch(addr).await.status,
        StatusCode::OK
    );
    assert_eq!(mock.requests().len(), 1);

    Call::post("/_mock/key-failure")
        .json(&json!({ "key": "k", "failure": "503" }))
        .fetch(addr)
        .await;
    Call::post(GENERATE)
        .key("k")
        .fetch(addr)
        .await
        .google_error(503, "UNAVAILABLE");
    Call::post("/_mock/key-failure")
        .json(&json!({ "key": "k", "failure": null }))
        .fetch(addr)
        .await;
    assert_eq!(
        Call::post(GENERATE).key("k").fetch(addr).await.status,
        StatusCode::OK
    );

    Call::post("/_mock/key-failure")
        .json(&json!({ "key": "k", "failure": "nope" }))
        .fetch(addr)
        .await
        .google_error(400, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let mock = mock().await;
    let response = Call::post(STREAM_SSE)
        .key("k")
        .json(&prompt())
        .send_h2(mock.addr())
        .await;
    assert_eq!(response.version(), http::Version::HTTP_2);
    let answer = Answer::read(response).await;
    assert_eq!(sse_events(answer.text()).len(), 3);
    assert_eq!(mock.requests()[0].key.as_deref(), Some("k"));
}

#[tokio::test]
async fn dropping_the_mock_stops_it() {
    let mock = mock().await;
    let addr = mock.addr();
    assert_eq!(
        Call::get("/v1beta/models")
            .key("k")
            .fetch(addr)
            .await
            .status,
        StatusCode::OK
    );
    drop(mock);
    tokio::task::yield_now().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
