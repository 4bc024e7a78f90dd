//! Black-box tests of `/metrics`, `/performance` and `/errors`: the real stack in front of the
//! mock upstream, read back through the admin listener.

use crate::support::*;
use gem_proxy_mock::{
    CANDIDATES_TOKEN_COUNT, Failure, MockOptions, PROMPT_TOKEN_COUNT, THOUGHTS_TOKEN_COUNT,
};
use http::{Method, StatusCode};

const MODEL: &str = "gemini-2.5-flash";

async fn scrape(h: &Harness) -> String {
    let (status, headers, body) = h
        .client
        .request(request(Method::GET, &h.admin_url("/metrics"), ""))
        .await
        .map(read_all)
        .expect("admin answers")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of the series whose line starts with `series` (name and labels exactly), if any.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn expect(text: &str, series: &str, want: f64) {
    assert_eq!(value(text, series), Some(want), "{series} in\n{text}");
}

async fn admin_json(h: &Harness, path: &str) -> serde_json::Value {
    let (status, _, body) = h.call(request(Method::GET, &h.admin_url(path), "")).await;
    assert_eq!(status, StatusCode::OK);
    json(&body)
}

#[tokio::test]
async fn requests_streams_tokens_keys_and_the_process_are_reported() {
    let h = Harness::start().await;
    let generate = format!("/v1beta/models/{MODEL}:generateContent");
    let stream = format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse");
    for _ in 0..2 {
        assert_eq!(h.post(&generate, GENERATE_BODY).await.0, StatusCode::OK);
    }
    let (status, _, body) = h.post(&stream, GENERATE_BODY).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(b"data: "));
    assert_eq!(h.get("/nope").await.0, StatusCode::NOT_FOUND);
    // A model nobody has had an answer for stays out of the label set.
    let made_up = "/v1beta/models/made-up-model-123:generateContent";
    let mut req = request(Method::POST, &h.url(made_up), GENERATE_BODY);
    req.headers_mut()
        .insert("x-mock-error", "404".parse().unwrap());
    assert_eq!(h.call(req).await.0, StatusCode::NOT_FOUND);

    let text = scrape(&h).await;
    let ok = format!(r#"model="{MODEL}",outcome="success""#);
    expect(
        &text,
        &format!(r#"gem_proxy_requests_total{{{ok},route="generate",status_class="2xx"}}"#),
        2.0,
    );
    expect(
        &text,
        &format!(r#"gem_proxy_requests_total{{{ok},route="stream",status_class="2xx"}}"#),
        1.0,
    );
    expect(
        &text,
        r#"gem_proxy_requests_total{model="",outcome="client_error",route="not_found",status_class="4xx"}"#,
        1.0,
    );
    expect(
        &text,
        r#"gem_proxy_requests_total{model="other",outcome="client_error",route="generate",status_class="4xx"}"#,
        1.0,
    );
    assert!(!text.contains("made-up-model-123"), "{text}");
    // Durations up to minutes, and the stream's time to first byte.
    expect(
        &text,
        &format!(
            r#"gem_proxy_request_duration_seconds_bucket{{model="{MODEL}",route="generate",status_class="2xx",le="600"}}"#
        ),
        2.0,
    );
    expect(
        &text,
        &format!(r#"gem_proxy_time_to_first_byte_seconds_count{{model="{MODEL}",route="stream"}}"#),
        1.0,
    );
    // Tokens from plain and streamed answers (3 answers).
    expect(
        &text,
        &format!(r#"gem_proxy_tokens_total{{kind="prompt",model="{MODEL}"}}"#),
        3.0 * PROMPT_TOKEN_COUNT as f64,
    );
    expect(
        &text,
        &format!(r#"gem_proxy_tokens_total{{kind="candidates",model="{MODEL}"}}"#),
        3.0 * CANDIDATES_TOKEN_COUNT as f64,
    );
    expect(
        &text,
        &format!(r#"gem_proxy_tokens_total{{kind="thoughts",model="{MODEL}"}}"#),
        3.0 * THOUGHTS_TOKEN_COUNT as f64,
    );
    // Attempts per key: 2 keys, round robin over 4 upstream requests.
    let attempts: f64 = ["key1", "key2"]
        .iter()
        .map(|k| {
            value(
                &text,
                &format!(r#"gem_proxy_upstream_attempts_total{{key_id="{k}",result="2xx"}}"#),
            )
            .unwrap_or(0.0)
                + value(
                    &text,
                    &format!(r#"gem_proxy_upstream_attempts_total{{key_id="{k}",result="4xx"}}"#),
                )
                .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(attempts, 4.0, "{text}");
    expect(
        &text,
        r#"gem_proxy_key_state{key_id="key1",state="active"}"#,
        1.0,
    );
    expect(
        &text,
        r#"gem_proxy_key_state{key_id="key1",state="cooling"}"#,
        0.0,
    );
    expect(&text, r#"gem_proxy_keys{state="active"}"#, 2.0);
    expect(&text, "gem_proxy_requests_in_flight", 0.0);
    // This scrape's own connection is open.
    assert!(value(&text, r#"gem_proxy_connections_open{listener="admin"}"#).unwrap() >= 1.0);
    assert!(value(&text, r#"gem_proxy_connections_total{listener="proxy"}"#).unwrap() >= 1.0);
    for series in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            value(&text, series).is_some_and(|v| v > 0.0),
            "{series} in\n{text}"
        );
    }
    // No client label unless asked for.
    assert!(!text.contains("gem_proxy_client_requests_total"), "{text}");

    let perf = admin_json(&h, "/performance").await;
    let overall = &perf["overall"];
    assert_eq!(overall["requests_1m"], 5, "{perf}");
    assert_eq!(overall["success_rate_1m"], 0.6, "{perf}");
    assert!(overall["latency_ms"]["p50"].as_f64().is_some(), "{perf}");
    assert!(overall["latency_ms"]["p99"].as_f64().is_some(), "{perf}");
    assert_eq!(overall["ttfb_ms"]["count"], 1, "{perf}");
    assert!(
        perf["keys"]["key1"]["requests_5m"].as_u64().unwrap() >= 1,
        "{perf}"
    );

    let errors = admin_json(&h, "/errors").await;
    assert_eq!(errors["total"], 2, "{errors}");
    assert_eq!(errors["by_status"]["404"], 2, "{errors}");
    assert_eq!(errors["by_kind"]["not_found"], 1, "{errors}");
    assert_eq!(errors["by_kind"]["upstream"], 1, "{errors}");
    let recent = errors["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 2);
    let newest = &recent[0];
    assert_eq!(newest["route"], "generate");
    assert_eq!(newest["status"], 404);
    assert!(newest["key_id"].is_string(), "{newest}");
    assert!(newest["request_id"].is_string(), "{newest}");
    assert!(newest["time"].as_str().unwrap().ends_with('Z'), "{newest}");
    assert!(!newest["message"].as_str().unwrap().is_empty(), "{newest}");
    assert_eq!(recent[1]["kind"], "not_found");
    assert!(!errors.to_string().contains(KEY1) && !errors.to_string().contains(KEY2));
}

#[tokio::test]
async fn failover_retries_cooldowns_and_rate_limits_are_counted() {
    let h = Harness::start().await;
    h.mock.set_key_failure(
        KEY1,
        Some(Failure::RateLimited {
            retry_delay_seconds: Some(30),
            per_day: false,
        }),
    );
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    // Whichever key is picked first, the request succeeds on key2.
    assert_eq!(h.post(&path, GENERATE_BODY).await.0, StatusCode::OK);
    assert_eq!(h.post(&path, GENERATE_BODY).await.0, StatusCode::OK);
    h.mock.set_key_failure(KEY2, Some(Failure::Overloaded));
    // key1 rests, key2 is overloaded: the 503 reaches the client.
    assert_eq!(
        h.post(&path, GENERATE_BODY).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let text = scrape(&h).await;
    expect(
        &text,
        r#"gem_proxy_upstream_attempts_total{key_id="key1",result="429"}"#,
        1.0,
    );
    expect(
        &text,
        r#"gem_proxy_retries_total{reason="rate_limited"}"#,
        1.0,
    );
    expect(
        &text,
        r#"gem_proxy_key_cooldowns_total{key_id="key1",reason="rate_limited"}"#,
        1.0,
    );
    expect(
        &text,
        r#"gem_proxy_key_state{key_id="key1",state="cooling"}"#,
        1.0,
    );
    assert!(
        value(
            &text,
            r#"gem_proxy_key_cooldown_remaining_seconds{key_id="key1"}"#
        )
        .is_some_and(|v| v > 20.0 && v <= 30.0),
        "{text}"
    );
    expect(
        &text,
        r#"gem_proxy_upstream_attempts_total{key_id="key2",result="5xx"}"#,
        1.0,
    );
    expect(
        &text,
        &format!(
            r#"gem_proxy_requests_total{{model="{MODEL}",outcome="upstream_error",route="generate",status_class="5xx"}}"#
        ),
        1.0,
    );
    assert!(
        value(
            &text,
            r#"gem_proxy_upstream_attempt_duration_seconds_count{key_id="key2"}"#
        )
        .is_some_and(|v| v >= 2.0),
        "{text}"
    );
    let errors = admin_json(&h, "/errors").await;
    assert_eq!(errors["by_key"]["key2"]["by_status"]["503"], 1, "{errors}");
    assert!(
        errors["recent"][0]["message"]
            .as_str()
            .unwrap()
            .contains("overloaded"),
        "{errors}"
    );
}

#[tokio::test]
async fn auth_failures_and_client_limits_are_counted_and_clients_labelled_when_asked() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.auth.enabled = true;
        c.auth.jwt_secret = gem_proxy::config::Secret::new(SECRET.to_owned());
        c.metrics.per_client = true;
    })
    .await;
    let token = gem_proxy::auth::issue(
        &h.server.gateway().live().config.auth,
        &gem_proxy::auth::TokenRequest {
            sub: "team-a".into(),
            ttl: std::time::Duration::from_secs(600),
            models: vec![],
            rpm: Some(1),
            tpm: None,
            tpd: None,
            live_sessions: None,
            role: gem_proxy::auth::Role::Client,
        },
        gem_proxy::auth::unix_now(),
    )
    .unwrap()
    .token;
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    let send = |key: Option<&str>| {
        let mut req = request(Method::POST, &h.url(&path), GENERATE_BODY);
        if let Some(k) = key {
            req.headers_mut()
                .insert("x-goog-api-key", k.parse().unwrap());
        }
        h.call(req)
    };
    assert_eq!(send(None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(send(Some("not-a-jwt")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(send(Some(&token)).await.0, StatusCode::OK);
    // rpm 1: the second request within the minute is the client limit's.
    assert_eq!(send(Some(&token)).await.0, StatusCode::TOO_MANY_REQUESTS);

    let text = scrape(&h).await;
    expect(
        &text,
        r#"gem_proxy_auth_failures_total{reason="missing"}"#,
        1.0,
    );
    expect(
        &text,
        r#"gem_proxy_auth_failures_total{reason="malformed"}"#,
        1.0,
    );
    expect(
        &text,
        r#"gem_proxy_rate_limited_total{limiter="client"}"#,
        1.0,
    );
    expect(
        &text,
        r#"gem_proxy_rate_limited_total{limiter="key_pool"}"#,
        0.0,
    );
    expect(
        &text,
        r#"gem_proxy_client_requests_total{client="team-a",status_class="2xx"}"#,
        1.0,
    );
    expect(
        &text,
        r#"gem_proxy_client_requests_total{client="team-a",status_class="4xx"}"#,
        1.0,
    );
    expect(
        &text,
        r#"gem_proxy_client_tokens_total{client="team-a",kind="prompt"}"#,
        PROMPT_TOKEN_COUNT as f64,
    );
    assert!(!text.contains(&token), "the token never appears");
}

#[tokio::test]
async fn admin_metrics_routes_are_get_only() {
    let h = Harness::start().await;
    let (status, _, body) = h
        .call(request(Method::POST, &h.admin_url("/metrics"), ""))
        .await;
    assert_google_error(status, &body, 405, "INVALID_ARGUMENT");
}
