//! The Live API's key pick waits for the session's `setup`: the key is chosen for the model it
//! names (rests, per-model limits, aliases), refused handshakes and quota answers to the setup
//! fail over to the next key, and the tokens a session reports are counted.

use std::time::Duration;

use crate::live::{
    LIVE, close_frame, connect, connect_to, enable_auth, live_requests, next_json, setup, turn,
};
use crate::support::*;
use futures_util::SinkExt;
use gem_proxy::auth::{Role, TokenRequest, issue, unix_now};
use gem_proxy_mock::{
    CANDIDATES_TOKEN_COUNT, Failure, MockOptions, MockUpstream, PROMPT_TOKEN_COUNT,
};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const MODEL: &str = "gemini-live-2.5-flash";
const OTHER_MODEL: &str = "gemini-2.0-flash-live-001";

fn rate_limited() -> Option<Failure> {
    Some(Failure::RateLimited {
        retry_delay_seconds: Some(600),
        per_day: false,
    })
}

fn setup_for(model: &str) -> Message {
    Message::text(json!({"setup": {"model": format!("models/{model}")}}).to_string())
}

/// A session on `model` that Google took: setup, `setupComplete`, close.
async fn session_on(h: &Harness, model: &str, headers: &[(&str, &str)]) {
    let mut ws = connect(h, LIVE, headers).await.unwrap();
    ws.send(setup_for(model)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"setupComplete": {}}));
    ws.close(None).await.unwrap();
    let _ = close_frame(&mut ws).await;
}

/// The keys of the Live handshakes the mock saw from index `from` on.
fn live_keys(h: &Harness, from: usize) -> Vec<String> {
    live_requests(h)[from..]
        .iter()
        .map(|r| r.key.clone().unwrap())
        .collect()
}

/// The id of the test key `key`.
fn key_id(key: &str) -> &'static str {
    if key == KEY1 { "key1" } else { "key2" }
}

/// The models `id` rests for, per `/health`.
async fn resting_models(h: &Harness, id: &str) -> Vec<String> {
    let health = health(h).await;
    key_state(&health, id)["resting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap().to_owned())
        .collect()
}

/// Rests the keys in `failing` for `model` the way Google does it: HTTP requests for the model
/// that those keys answer with a 429 and a `RetryInfo`.
async fn rest_over_http(h: &Harness, failing: &[&str], model: &str) {
    for key in failing {
        h.mock.set_key_failure(key, rate_limited());
    }
    for _ in 0..2 {
        h.post(
            &format!("/v1beta/models/{model}:generateContent"),
            GENERATE_BODY,
        )
        .await;
    }
    for key in failing {
        h.mock.set_key_failure(key, None);
    }
}

#[tokio::test]
async fn a_key_resting_for_the_setup_model_is_skipped_and_still_serves_other_models() {
    let h = Harness::start().await;
    rest_over_http(&h, &[KEY1], MODEL).await;
    assert_eq!(resting_models(&h, "key1").await, [MODEL]);

    // key1 would answer now (its failure is gone): only its rest for the model keeps it out.
    for _ in 0..3 {
        session_on(&h, MODEL, &[]).await;
    }
    assert_eq!(
        live_keys(&h, 0),
        [KEY2; 3],
        "sessions on {MODEL} avoid key1"
    );
    for _ in 0..2 {
        session_on(&h, OTHER_MODEL, &[]).await;
    }
    assert!(
        live_keys(&h, 3).contains(&KEY1.to_owned()),
        "key1 still carries sessions on another model: {:?}",
        live_keys(&h, 3)
    );
}

#[tokio::test]
async fn a_keys_per_minute_limit_counts_sessions_per_model() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.gemini.api_keys[0].max_requests_per_minute = Some(1);
    })
    .await;
    for _ in 0..3 {
        session_on(&h, MODEL, &[]).await;
    }
    let on_model = live_keys(&h, 0);
    assert_eq!(
        on_model.iter().filter(|k| *k == KEY1).count(),
        1,
        "key1 takes one session a minute on {MODEL}: {on_model:?}"
    );
    // The limit is per model: key1 has room for another one.
    for _ in 0..2 {
        session_on(&h, OTHER_MODEL, &[]).await;
    }
    assert!(
        live_keys(&h, 3).contains(&KEY1.to_owned()),
        "{:?}",
        live_keys(&h, 3)
    );
}

#[tokio::test]
async fn with_every_key_resting_for_the_model_the_client_gets_1013_naming_it() {
    let h = Harness::start().await;
    rest_over_http(&h, &[KEY1, KEY2], MODEL).await;
    assert_eq!(resting_models(&h, "key1").await, [MODEL]);
    assert_eq!(resting_models(&h, "key2").await, [MODEL]);

    let mut ws = connect(&h, LIVE, &[]).await.unwrap();
    ws.send(setup_for(MODEL)).await.unwrap();
    let frame = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Again);
    assert_eq!(
        frame.reason,
        format!("RESOURCE_EXHAUSTED: no upstream key has quota for {MODEL}")
    );
    assert!(live_requests(&h).is_empty(), "Google never saw the session");

    // Another model is not held back.
    session_on(&h, OTHER_MODEL, &[]).await;
    within("the refused session counted", async {
        while !metrics(&h)
            .await
            .contains(r#"gem_proxy_live_sessions_closed_total{reason="no_key"} 1"#)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_handshake_refused_with_a_429_fails_over_and_rests_the_key_for_the_model() {
    let h = Harness::start().await;
    h.mock.set_key_failure(KEY1, rate_limited());
    let refuse = [("x-mock-live-quota", "handshake")];
    for _ in 0..2 {
        session_on(&h, MODEL, &refuse).await;
    }
    let keys = live_keys(&h, 0);
    assert_eq!(
        keys.iter().filter(|k| *k == KEY1).count(),
        1,
        "key1 refused once, then rested: {keys:?}"
    );
    assert_eq!(keys.iter().filter(|k| *k == KEY2).count(), 2, "{keys:?}");
    assert_eq!(resting_models(&h, "key1").await, [MODEL]);
    let text = metrics(&h).await;
    assert!(
        text.contains(r#"gem_proxy_retries_total{reason="rate_limited"} 1"#),
        "the failover is counted like an HTTP request's: {text}"
    );
}

#[tokio::test]
async fn a_quota_close_in_answer_to_the_setup_fails_over_before_the_client_sees_it() {
    let h = Harness::start().await;
    // The mock's rate-limited key takes the handshake and closes with the quota reason right
    // after the setup, as Google does.
    h.mock.set_key_failure(KEY1, rate_limited());
    for _ in 0..2 {
        session_on(&h, MODEL, &[]).await;
    }
    let keys = live_keys(&h, 0);
    assert_eq!(keys.iter().filter(|k| *k == KEY1).count(), 1, "{keys:?}");
    assert_eq!(keys.iter().filter(|k| *k == KEY2).count(), 2, "{keys:?}");
    assert_eq!(resting_models(&h, "key1").await, [MODEL]);
}

#[tokio::test]
async fn a_first_message_that_is_not_a_setup_is_closed_1007_before_google_sees_it() {
    let h = Harness::start().await;
    let mut ws = connect(&h, LIVE, &[]).await.unwrap();
    ws.send(turn("hello first")).await.unwrap();
    let frame = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Invalid);
    assert_eq!(
        frame.reason,
        "the first message must be setup, naming a model"
    );
    assert!(live_requests(&h).is_empty());
}

#[tokio::test]
async fn an_alias_in_the_setup_is_its_real_model_for_the_token_and_the_key() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        enable_auth(c);
        c.gemini
            .models
            .aliases
            .insert("live-fast".into(), MODEL.into());
    })
    .await;
    let token = issue(
        &h.server.gateway().live().config.auth,
        &TokenRequest {
            sub: "aliased".into(),
            ttl: Duration::from_secs(600),
            models: vec![MODEL.into()],
            rpm: None,
            tpm: None,
            tpd: None,
            live_sessions: None,
            role: Role::Client,
        },
        unix_now(),
    )
    .unwrap()
    .token;
    let mut ws = connect(&h, LIVE, &[("x-goog-api-key", &token)])
        .await
        .unwrap();
    ws.send(setup_for("live-fast")).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"setupComplete": {}}));
    // A quota close rests the key for the real model: the one Google was asked for.
    ws.send(turn("mock:quota")).await.unwrap();
    let _ = close_frame(&mut ws).await;
    let key = live_requests(&h)[0].key.clone().unwrap();
    assert_eq!(resting_models(&h, key_id(&key)).await, [MODEL]);
}

async fn metrics(h: &Harness) -> String {
    let url = h.admin_url("/metrics");
    let res = h
        .client
        .request(request(http::Method::GET, &url, ""))
        .await
        .unwrap();
    String::from_utf8(read_all(res).await.2.to_vec()).unwrap()
}

#[tokio::test]
async fn a_sessions_tokens_reach_the_usage_history_and_spend_the_clients_budget() {
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = crate::usage::Gw::start(crate::usage::config(
        &mock.base_url(),
        &dir.path().join("usage.db"),
        "",
    ))
    .await;
    // A Live turn's usage: the prompt and the response (no thoughts).
    let turn_tokens = PROMPT_TOKEN_COUNT + CANDIDATES_TOKEN_COUNT;
    // A daily budget smaller than one turn's tokens.
    let token = gw.token("live-user", Some(turn_tokens / 2));
    let mut ws = connect_to(gw.server.proxy_addr(), LIVE, &[("x-goog-api-key", &token)])
        .await
        .unwrap();
    setup(&mut ws).await;
    ws.send(turn("count me")).await.unwrap();
    next_json(&mut ws).await;
    let done = next_json(&mut ws).await;
    assert_eq!(done["serverContent"]["turnComplete"], true);
    ws.close(None).await.unwrap();
    let _ = close_frame(&mut ws).await;

    // The session is one request, with the turn's tokens, by model and by client.
    let report = gw.settle("group_by=model", 1).await;
    assert_eq!(
        crate::usage::by_group(&report).get(MODEL),
        Some(&(1, turn_tokens)),
        "{report}"
    );
    let by_client = crate::usage::by_group(&gw.usage("group_by=client").await);
    assert_eq!(by_client.get("live-user"), Some(&(1, turn_tokens)));

    // The turn spent the client's budget: its next request is refused.
    let (status, body) = gw
        .call(
            &token,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &[],
        )
        .await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
    gw.stop().await;
}

#[tokio::test]
async fn with_every_key_resting_for_the_model_its_fallback_serves_the_session() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.gemini
            .models
            .fallbacks
            .insert(MODEL.into(), vec![OTHER_MODEL.into()]);
        // One HTTP request rests both keys (two attempts) without a fallback of its own.
        c.gemini.max_retries = 1;
    })
    .await;
    for key in [KEY1, KEY2] {
        h.mock.set_key_failure(key, rate_limited());
    }
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    assert_eq!(h.post(&path, GENERATE_BODY).await.0, 429);
    for key in [KEY1, KEY2] {
        h.mock.set_key_failure(key, None);
        assert_eq!(resting_models(&h, key_id(key)).await, [MODEL]);
    }
    let mut ws = connect(&h, LIVE, &[]).await.unwrap();
    ws.send(setup_for(MODEL)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"setupComplete": {}}));
    // The fallback served: a quota close now rests the key for it, not for the model asked.
    ws.send(turn("mock:quota")).await.unwrap();
    let _ = close_frame(&mut ws).await;
    let key = live_requests(&h)[0].key.clone().unwrap();
    let mut rests = resting_models(&h, key_id(&key)).await;
    rests.sort();
    assert_eq!(rests, [OTHER_MODEL, MODEL]);
    let text = metrics(&h).await;
    assert!(text.contains("gem_proxy_model_fallbacks_total 1"), "{text}");
}
