//! Black-box tests of the proxy path: the real stack on 127.0.0.1 in front of the mock upstream.

use crate::support::*;
use bytes::Bytes;
use gem_proxy_mock::MockOptions;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

/// Every endpoint a client uses answers through the gateway exactly as the upstream answers
/// directly: same status, same body.
#[tokio::test]
async fn endpoints_pass_through_with_status_and_body_intact() {
    let h = Harness::start().await;
    let direct = http1_client();
    let cases: &[(Method, &str, &str)] = &[
        (Method::GET, "/v1beta/models", ""),
        (Method::GET, "/v1/models/gemini-2.5-flash", ""),
        (
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            GENERATE_BODY,
        ),
        (
            Method::POST,
            "/v1/models/gemini-2.5-flash:generateContent",
            GENERATE_BODY,
        ),
        (
            Method::POST,
            "/v1alpha/models/gemini-2.5-flash:countTokens",
            GENERATE_BODY,
        ),
        (
            Method::POST,
            "/v1beta/models/text-embedding-004:embedContent",
            r#"{"content":{"parts":[{"text":"hi"}]}}"#,
        ),
        (
            Method::POST,
            "/v1beta/models/text-embedding-004:batchEmbedContents",
            r#"{"requests":[{"model":"models/text-embedding-004","content":{"parts":[{"text":"a"}]}},{"model":"models/text-embedding-004","content":{"parts":[{"text":"b"}]}}]}"#,
        ),
        (
            Method::POST,
            "/v1beta/openai/chat/completions",
            r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (Method::GET, "/v1beta/openai/models", ""),
        (
            Method::POST,
            "/v1beta/models/nope:generateContent",
            GENERATE_BODY,
        ),
    ];
    for (method, path, body) in cases {
        let via = h.call(request(method.clone(), &h.url(path), body)).await;
        let mut req = request(
            method.clone(),
            &format!("{}{path}", h.mock.base_url()),
            body,
        );
        let auth = if path.contains("/openai/") {
            ("authorization", format!("Bearer {KEY1}"))
        } else {
            ("x-goog-api-key", KEY1.to_string())
        };
        req.headers_mut().insert(auth.0, auth.1.parse().unwrap());
        let (status, _, body_direct) = read_all(direct.request(req).await.unwrap()).await;
        assert_eq!(via.0, status, "{method} {path}");
        assert_eq!(json(&via.2), json(&body_direct), "{method} {path}");
        assert_eq!(
            via.1["content-type"].to_str().unwrap().split(';').next(),
            Some("application/json"),
            "{method} {path}"
        );
    }
    let v = json(&h.get("/v1beta/models").await.2);
    assert!(v["models"].as_array().is_some_and(|m| !m.is_empty()), "{v}");
}

/// The upstream sees the configured key and none of the client's credentials, wherever the client
/// put them; the rest of the query and the end-to-end headers arrive unchanged.
#[tokio::test]
async fn client_credentials_are_replaced_by_the_upstream_key() {
    let h = Harness::start().await;
    let mut req = request(
        Method::POST,
        &h.url("/v1beta/models/gemini-2.5-flash:generateContent?alt=json&key=client-query-token"),
        GENERATE_BODY,
    );
    let headers = req.headers_mut();
    headers.insert(
        "authorization",
        "Bearer client-bearer-token".parse().unwrap(),
    );
    headers.insert("x-goog-api-key", "client-header-token".parse().unwrap());
    headers.insert("x-goog-api-client", "genai-py/1.0".parse().unwrap());
    headers.insert("user-agent", "test-agent/1".parse().unwrap());
    let (status, _, _) = h.call(req).await;
    assert_eq!(status, 200);

    let seen = h.mock.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.key.as_deref(), Some(KEY1));
    assert_eq!(r.header("x-goog-api-key"), Some(KEY1));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.query.as_deref(), Some("alt=json"));
    assert_eq!(r.header("x-goog-api-client"), Some("genai-py/1.0"));
    assert_eq!(r.header("user-agent"), Some("test-agent/1"));
    assert_eq!(&r.body[..], GENERATE_BODY.as_bytes());
    let all = format!("{:?}", seen);
    for token in [
        "client-query-token",
        "client-bearer-token",
        "client-header-token",
    ] {
        assert!(!all.contains(token), "{token} reached the upstream");
    }
}

/// The OpenAI-compatible surface gets the key as a Bearer token, and no x-goog-api-key.
#[tokio::test]
async fn openai_surface_gets_the_key_as_bearer() {
    let h = Harness::start().await;
    let mut req = request(
        Method::POST,
        &h.url("/v1beta/openai/chat/completions"),
        r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}"#,
    );
    req.headers_mut()
        .insert("authorization", "Bearer client-token".parse().unwrap());
    let (status, _, body) = h.call(req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let r = &h.mock.requests()[0];
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY1}").as_str())
    );
    assert_eq!(r.header("x-goog-api-key"), None);
}

#[tokio::test]
async fn keys_are_used_in_turn() {
    let h = Harness::start().await;
    for _ in 0..4 {
        let (status, _, _) = h.get("/v1beta/models").await;
        assert_eq!(status, 200);
    }
    let keys: Vec<_> = h
        .mock
        .requests()
        .into_iter()
        .map(|r| r.key.unwrap())
        .collect();
    assert_eq!(keys, [KEY1, KEY2, KEY1, KEY2]);
}

/// Hop-by-hop headers cross in neither direction; end-to-end ones do.
#[tokio::test]
async fn hop_by_hop_headers_do_not_cross() {
    let h = Harness::start().await;
    let mut req = request(Method::GET, &h.url("/v1beta/models"), "");
    let headers = req.headers_mut();
    headers.insert("connection", "x-client-hop".parse().unwrap());
    headers.insert("x-client-hop", "1".parse().unwrap());
    headers.insert("proxy-authorization", "Basic abc".parse().unwrap());
    headers.insert("x-end-to-end", "yes".parse().unwrap());
    headers.insert("x-mock-hop-headers", "1".parse().unwrap());
    let (status, res_headers, _) = h.call(req).await;
    assert_eq!(status, 200);

    let r = &h.mock.requests()[0];
    for name in [
        "connection",
        "x-client-hop",
        "proxy-authorization",
        "keep-alive",
        "te",
    ] {
        assert_eq!(r.header(name), None, "{name} reached the upstream");
    }
    assert_eq!(r.header("x-end-to-end"), Some("yes"));
    for name in ["x-custom-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!res_headers.contains_key(name), "{name} reached the client");
    }
    assert_eq!(res_headers["x-end-to-end"], "yes");
}

/// Google's own errors reach the client byte for byte, with their status.
#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    // No retries, so each answer is exactly what one key got; a model per case, so one case's
    // rest does not affect the next; the key-invalidating cases last.
    let h = Harness::start_with(MockOptions::default(), |c| c.gemini.max_retries = 0).await;
    let direct = http1_client();
    for code in [
        "429",
        "429-day",
        "503",
        "500",
        "400",
        "404",
        "403-resource",
        "403",
        "400-key",
    ] {
        let path = format!("/v1beta/models/m-{code}:generateContent");
        let mut req = request(Method::POST, &h.url(&path), GENERATE_BODY);
        req.headers_mut()
            .insert("x-mock-error", code.parse().unwrap());
        let (status, _, body) = h.call(req).await;
        let key = h.mock.requests().last().unwrap().key.clone().unwrap();

        let mut req = request(
            Method::POST,
            &format!("{}{path}", h.mock.base_url()),
            GENERATE_BODY,
        );
        req.headers_mut()
            .insert("x-mock-error", code.parse().unwrap());
        req.headers_mut()
            .insert("x-goog-api-key", key.parse().unwrap());
        let (d_status, _, d_body) = read_all(direct.request(req).await.unwrap()).await;
        assert_eq!(status, d_status, "{code}");
        assert!(
            status.is_client_error() || status.is_server_error(),
            "{code}"
        );
        assert_eq!(body, d_body, "{code}: body must be byte for byte");
    }
}

#[tokio::test]
async fn unknown_paths_are_404_in_googles_shape() {
    let h = Harness::start().await;
    for path in ["/", "/v2/models", "/admin", "/health"] {
        let (status, _, body) = h.get(path).await;
        assert_google_error(status, &body, 404, "NOT_FOUND");
    }
    assert!(h.mock.requests().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn oversized_bodies_are_413_whether_declared_or_streamed() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.server.max_request_body_bytes = 1024;
    })
    .await;
    let path = "/v1beta/models/gemini-2.5-flash:generateContent";
    let big = "x".repeat(2048);
    // Declared by Content-Length.
    let (status, _, body) = h.post(path, &big).await;
    assert_google_error(status, &body, 413, "INVALID_ARGUMENT");
    // Streamed without a length (chunked), crossing the limit half way.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..4)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'y'; 512]))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::StreamBody<_>>();
    let req = Request::post(h.url(path)).body(body).unwrap();
    let (status, _, body) = read_all(client.request(req).await.unwrap()).await;
    assert_google_error(status, &body, 413, "INVALID_ARGUMENT");
    assert!(h.mock.requests().is_empty());
    // A body just under the limit goes through.
    let (status, _, _) = h.post(path, &"z".repeat(1000)).await;
    assert_eq!(status, 200);
}

/// An iterator as a `Stream`, to send a chunked body without a length.
fn futures_iter<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Unpin {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test]
async fn unreachable_upstream_is_502_in_googles_shape() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.gemini.base_url = format!("http://127.0.0.1:{port}");
    })
    .await;
    let (status, _, body) = h
        .post("/v1beta/models/m:generateContent", GENERATE_BODY)
        .await;
    assert_google_error(status, &body, 502, "UNAVAILABLE");
    assert!(!String::from_utf8_lossy(&body).contains(KEY1));
}

/// An upstream that sends no headers within `gemini.timeout_seconds` is a 504. Paused time: the
/// mock's 120 s delay and the gateway's 2 s timeout race on the virtual clock.
#[tokio::test(start_paused = true)]
async fn slow_upstream_headers_are_504_in_googles_shape() {
    let h = Harness::start_with(MockOptions::default(), |c| c.gemini.timeout_seconds = 2).await;
    let mut req = request(
        Method::POST,
        &h.url("/v1beta/models/m:generateContent"),
        GENERATE_BODY,
    );
    req.headers_mut()
        .insert("x-mock-delay-headers-ms", "120000".parse().unwrap());
    let started = tokio::time::Instant::now();
    let (status, _, body) = h.call(req).await;
    assert_google_error(status, &body, 504, "DEADLINE_EXCEEDED");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(2) && waited < std::time::Duration::from_secs(120),
        "{waited:?}"
    );
}

/// Each SSE event reaches the client while the upstream is still holding the next one back: the
/// gateway does not buffer. The mock releases event n+1 only when the test says so.
#[tokio::test]
async fn sse_events_reach_the_client_before_the_upstream_writes_the_next() {
    let h = Harness::start_with(
        MockOptions {
            chunks: 4,
            ..MockOptions::default()
        },
        |_| {},
    )
    .await;
    h.mock.hold_streams(true);
    let res = h
        .send(request(
            Method::POST,
            &h.url("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
            GENERATE_BODY,
        ))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let mut events = Vec::new();
    let mut buf = String::new();
    for i in 0..4 {
        // Read until one whole event has arrived; the upstream has not been allowed to write the
        // next one yet, so it cannot be sitting in a buffer.
        while !buf.contains("\r\n\r\n") {
            let frame = within("next SSE event", body.frame())
                .await
                .expect("more frames")
                .unwrap();
            if let Some(d) = frame.data_ref() {
                buf.push_str(std::str::from_utf8(d).unwrap());
            }
        }
        let end = buf.find("\r\n\r\n").unwrap() + 4;
        let event: String = buf.drain(..end).collect();
        assert!(event.starts_with("data: "), "{event}");
        assert!(
            buf.is_empty(),
            "event {i}: more than one event arrived: {buf}"
        );
        events.push(json(event.trim_start_matches("data: ").trim().as_bytes()));
        if i < 3 {
            h.mock.release_chunk();
        }
    }
    assert!(
        within("end of stream", body.frame()).await.is_none(),
        "clean end"
    );
    assert_eq!(events[3]["candidates"][0]["finishReason"], "STOP");
    assert!(events[3]["usageMetadata"]["totalTokenCount"].is_number());
}

/// The JSON-array form of streaming (no `alt=sse`) streams too, and arrives as one valid array.
#[tokio::test]
async fn json_array_streams_arrive_piece_by_piece() {
    let h = Harness::start().await;
    h.mock.hold_streams(true);
    let res = h
        .send(request(
            Method::POST,
            &h.url("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            GENERATE_BODY,
        ))
        .await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = within("first piece", body.frame()).await.unwrap().unwrap();
    let first = first.into_data().unwrap();
    assert!(first.starts_with(b"["), "{first:?}");
    // Everything else only after the release.
    let mut all = first.to_vec();
    for _ in 0..10 {
        h.mock.release_chunk();
    }
    while let Some(frame) = within("rest", body.frame()).await {
        if let Ok(d) = frame.unwrap().into_data() {
            all.extend_from_slice(&d);
        }
    }
    let v = json(&all);
    assert_eq!(v.as_array().map(Vec::len), Some(3));
}

/// An upstream that dies mid-stream must not look like a clean end to the client: the events
/// sent so far arrive, then the client's stream fails.
#[tokio::test]
async fn upstream_reset_mid_stream_ends_the_client_stream_abnormally() {
    let h = Harness::start().await;
    assert!(
        stream_broken_mid_way(&h).await,
        "the client must see an error, not a clean truncated end"
    );
    // The gateway is fine.
    assert_eq!(h.get("/v1beta/models").await.0, 200);
}

#[tokio::test]
async fn http2_clients_work() {
    let h = Harness::start().await;
    let h2 = http2_client();
    let req = request(
        Method::POST,
        &h.url("/v1beta/models/gemini-2.5-flash:generateContent"),
        GENERATE_BODY,
    );
    let res = h2.request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let (status, _, body) = read_all(res).await;
    assert_eq!(status, 200);
    assert!(json(&body)["candidates"].is_array());

    let req = request(
        Method::POST,
        &h.url("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
        GENERATE_BODY,
    );
    let (status, _, body) = read_all(h2.request(req).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body).matches("data: ").count(), 3);
    // The upstream saw an ordinary request with the key.
    assert!(h.mock.requests().iter().all(|r| r.key.is_some()));
}

/// Requests get an `x-request-id` (the client's own is kept).
#[tokio::test]
async fn responses_carry_a_request_id() {
    let h = Harness::start().await;
    let (_, headers, _) = h.get("/v1beta/models").await;
    assert!(headers.contains_key("x-request-id"));
    let mut req = request(Method::GET, &h.url("/nope"), "");
    req.headers_mut()
        .insert("x-request-id", "abc-123".parse().unwrap());
    let (_, headers, _) = h.call(req).await;
    assert_eq!(headers["x-request-id"], "abc-123");
}

/// The resumable upload's URL comes back pointing at the gateway and without the key; the client's
/// next request to it goes through the gateway and finishes the upload.
#[tokio::test]
async fn upload_url_points_at_the_gateway_without_the_key() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        // One key, so the follow-up lands on the key that started the upload.
        c.gemini.api_keys.truncate(1);
    })
    .await;
    let req = Request::post(h.url("/upload/v1beta/files"))
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", "5")
        .header("x-goog-upload-header-content-type", "text/plain")
        .header("content-type", "application/json")
        .header("x-goog-api-key", "client-token")
        .body(Full::new(Bytes::from_static(
            br#"{"file":{"display_name":"hello"}}"#,
        )))
        .unwrap();
    let (status, headers, body) = h.call(req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let url = headers["x-goog-upload-url"].to_str().unwrap().to_owned();
    assert!(url.starts_with(&h.url("/upload/v1beta/files?")), "{url}");
    assert!(!url.contains(KEY1) && !url.contains("key="), "{url}");
    for (name, value) in headers.iter() {
        assert!(
            !value
                .as_bytes()
                .windows(KEY1.len())
                .any(|w| w == KEY1.as_bytes()),
            "{name}"
        );
    }

    let req = Request::post(&url)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (status, _, body) = h.call(req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let file = json(&body);
    let name = file["file"]["name"].as_str().unwrap().to_owned();
    let (status, _, _) = h.get(&format!("/v1beta/{name}")).await;
    assert_eq!(status, 200);
}

/// `/health` on the admin listener.
#[tokio::test]
async fn health_reports_status_version_and_keys() {
    let h = Harness::start().await;
    let res = h
        .client
        .request(request(Method::GET, &h.admin_url("/health"), ""))
        .await
        .unwrap();
    let (status, _, body) = read_all(res).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["keys"]["total"], 2);
    assert_eq!(v["keys"]["active"], 2);
    assert_eq!(v["key_states"][0]["id"], "key1");
    assert_eq!(v["key_states"][0]["state"], "active");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_number());
    assert!(!String::from_utf8_lossy(&body).contains("AIza"));
}
