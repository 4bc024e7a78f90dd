//! Routing rules: model aliases (in the path, in OpenAI bodies, in the model listing, against the
//! token's policy and the per-model key limits) and fallbacks when every key rests for a model.

use std::collections::BTreeMap;

use crate::support::*;
use gem_proxy::auth::unix_now;
use gem_proxy::config::{Config, ModelsConfig, OverrideRule, Secret};
use gem_proxy_mock::MockOptions;
use http::{Method, StatusCode};

const SECRET: &str = "0123456789abcdef0123456789abcdef-routing";

fn aliases(c: &mut Config) {
    c.gemini.models = ModelsConfig {
        aliases: [
            ("flash".to_string(), "gemini-2.5-flash".to_string()),
            ("pro".to_string(), "gemini-2.5-pro".to_string()),
        ]
        .into(),
        fallbacks: BTreeMap::new(),
        suffixes: false,
    };
}

/// Both keys allow one request per minute per model; `gemini-2.5-pro` falls back to flash.
fn one_rpm_with_fallback(c: &mut Config) {
    aliases(c);
    for k in &mut c.gemini.api_keys {
        k.max_requests_per_minute = Some(1);
    }
    c.gemini.models.fallbacks = [(
        "gemini-2.5-pro".to_string(),
        vec!["gemini-2.5-flash".to_string()],
    )]
    .into();
}

fn with_auth(c: &mut Config) {
    c.auth.enabled = true;
    c.auth.jwt_secret = Secret::new(SECRET);
}

fn token(models: &[&str]) -> String {
    token_for("team-a", models)
}

fn token_for(sub: &str, models: &[&str]) -> String {
    client_token(SECRET, sub, models)
}

async fn post_as(
    h: &Harness,
    token: &str,
    path: &str,
    body: &str,
) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    let mut req = request(Method::POST, &h.url(path), body);
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    h.call(req).await
}

fn paths_seen(h: &Harness) -> Vec<String> {
    h.mock.requests().into_iter().map(|r| r.path).collect()
}

/// An alias in the path reaches Google as its real model; the answer's `modelVersion` is
/// Google's.
#[tokio::test]
async fn an_alias_in_the_path_reaches_the_upstream_as_its_model() {
    let h = Harness::start_with(MockOptions::default(), aliases).await;
    let (status, headers, body) = h
        .post("/v1beta/models/flash:generateContent", GENERATE_BODY)
        .await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["modelVersion"], "gemini-2.5-flash");
    assert!(headers.get("x-gem-proxy-model").is_none(), "no fallback");
    let (status, _, _) = h
        .post(
            "/v1beta/models/pro:streamGenerateContent?alt=sse",
            GENERATE_BODY,
        )
        .await;
    assert_eq!(status, 200);
    let seen = h.mock.requests();
    assert_eq!(
        seen.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        [
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
        ]
    );
    assert_eq!(seen[1].query.as_deref(), Some("alt=sse"));
}

/// An alias in an OpenAI-compatible body reaches Google as its real model.
#[tokio::test]
async fn an_alias_in_an_openai_body_reaches_the_upstream_as_its_model() {
    let h = Harness::start_with(MockOptions::default(), aliases).await;
    let (status, _, _) = h
        .post(
            "/v1beta/openai/chat/completions",
            r#"{"model":"flash","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(status, 200);
    let seen = h.mock.requests();
    let body = json(&seen[0].body);
    assert_eq!(body["model"], "gemini-2.5-flash");
    assert_eq!(body["messages"][0]["content"], "hi");
}

/// Per-model key limits count the real model: a request by alias and one by name spend the same
/// budget.
#[tokio::test(start_paused = true)]
async fn per_model_limits_apply_to_the_real_model() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        aliases(c);
        for k in &mut c.gemini.api_keys {
            k.max_requests_per_minute = Some(1);
        }
    })
    .await;
    assert_eq!(
        h.post("/v1beta/models/flash:generateContent", GENERATE_BODY)
            .await
            .0,
        200
    );
    assert_eq!(
        h.post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            GENERATE_BODY
        )
        .await
        .0,
        200
    );
    let (status, headers, body) = h
        .post("/v1beta/models/flash:generateContent", GENERATE_BODY)
        .await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
    assert!(headers.get("retry-after").is_some());
    // Another model still has its own budget.
    assert_eq!(
        h.post("/v1beta/models/pro:generateContent", GENERATE_BODY)
            .await
            .0,
        200
    );
}

/// The token's `models` policy is checked against the real model, in the path and in the body.
#[tokio::test]
async fn the_token_policy_sees_the_real_model() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        aliases(c);
        with_auth(c);
    })
    .await;
    let flash_only = token(&["gemini-2.5-flash"]);
    let (status, _, _) = post_as(
        &h,
        &flash_only,
        "/v1beta/models/flash:generateContent",
        GENERATE_BODY,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, body) = post_as(
        &h,
        &flash_only,
        "/v1beta/models/pro:generateContent",
        GENERATE_BODY,
    )
    .await;
    assert_google_error(status, &body, 403, "PERMISSION_DENIED");
    let (status, _, body) = post_as(
        &h,
        &flash_only,
        "/v1beta/openai/chat/completions",
        r#"{"model":"pro","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_google_error(status, &body, 403, "PERMISSION_DENIED");
    // A token naming the alias does not grant the model behind it.
    let alias_only = token(&["pro"]);
    let (status, _, body) = post_as(
        &h,
        &alias_only,
        "/v1beta/models/pro:generateContent",
        GENERATE_BODY,
    )
    .await;
    assert_google_error(status, &body, 403, "PERMISSION_DENIED");
    assert_eq!(
        paths_seen(&h),
        ["/v1beta/models/gemini-2.5-flash:generateContent"]
    );
}

/// When every key rests for a model, its fallback serves, named in `x-gem-proxy-model`, counted
/// in the metrics, and spending the fallback's budget.
#[tokio::test(start_paused = true)]
async fn a_fallback_serves_when_every_key_rests_for_the_model() {
    let h = Harness::start_with(MockOptions::default(), one_rpm_with_fallback).await;
    for _ in 0..2 {
        let (status, headers, _) = h
            .post("/v1beta/models/pro:generateContent", GENERATE_BODY)
            .await;
        assert_eq!(status, 200);
        assert!(headers.get("x-gem-proxy-model").is_none());
    }
    let (status, headers, body) = h
        .post("/v1beta/models/pro:generateContent", GENERATE_BODY)
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-gem-proxy-model"], "gemini-2.5-flash");
    assert_eq!(json(&body)["modelVersion"], "gemini-2.5-flash");
    // The OpenAI surface falls back too, its body switched.
    let (status, headers, _) = h
        .post(
            "/v1beta/openai/chat/completions",
            r#"{"model":"gemini-2.5-pro","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-gem-proxy-model"], "gemini-2.5-flash");
    let seen = h.mock.requests();
    assert_eq!(
        seen[2].path,
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(json(&seen[3].body)["model"], "gemini-2.5-flash");
    // Both keys have now spent their flash minute too: nothing left to fall back to.
    let (status, _, body) = h
        .post("/v1beta/models/pro:generateContent", GENERATE_BODY)
        .await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");

    let (_, _, metrics) = h
        .call(request(Method::GET, &h.admin_url("/metrics"), ""))
        .await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("gem_proxy_model_fallbacks_total 2"),
        "{metrics}"
    );
}

/// A token that may not use the fallback model is not served by it.
#[tokio::test(start_paused = true)]
async fn a_fallback_the_token_does_not_allow_is_skipped() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        one_rpm_with_fallback(c);
        with_auth(c);
    })
    .await;
    let pro_only = token(&["gemini-2.5-pro"]);
    for _ in 0..2 {
        assert_eq!(
            post_as(
                &h,
                &pro_only,
                "/v1beta/models/pro:generateContent",
                GENERATE_BODY
            )
            .await
            .0,
            200
        );
    }
    let (status, headers, body) = post_as(
        &h,
        &pro_only,
        "/v1beta/models/pro:generateContent",
        GENERATE_BODY,
    )
    .await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
    assert!(headers.get("x-gem-proxy-model").is_none());
    assert_eq!(h.mock.requests().len(), 2);
    // A token allowed both is served by the fallback.
    let both = token(&["gemini-2.5-pro", "gemini-2.5-flash"]);
    let (status, headers, _) = post_as(
        &h,
        &both,
        "/v1beta/models/gemini-2.5-pro:generateContent",
        GENERATE_BODY,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-gem-proxy-model"], "gemini-2.5-flash");
}

/// Without fallbacks configured, a resting model is a 429 as before.
#[tokio::test(start_paused = true)]
async fn fallbacks_are_off_by_default() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        one_rpm_with_fallback(c);
        c.gemini.models.fallbacks.clear();
    })
    .await;
    for _ in 0..2 {
        assert_eq!(
            h.post("/v1beta/models/pro:generateContent", GENERATE_BODY)
                .await
                .0,
            200
        );
    }
    let (status, _, body) = h
        .post("/v1beta/models/pro:generateContent", GENERATE_BODY)
        .await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
}

/// Aliases are listed as models, and each can be fetched by its alias.
#[tokio::test]
async fn aliases_are_listed_as_models() {
    let h = Harness::start_with(MockOptions::default(), aliases).await;
    let (status, _, body) = h.get("/v1beta/models").await;
    assert_eq!(status, 200);
    let listing = json(&body);
    let names: Vec<&str> = listing["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"models/gemini-2.5-flash"), "{names:?}");
    assert!(names.contains(&"models/flash"), "{names:?}");
    assert!(names.contains(&"models/pro"), "{names:?}");
    let flash = listing["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "models/flash")
        .unwrap();
    let real = listing["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "models/gemini-2.5-flash")
        .unwrap();
    assert_eq!(flash["inputTokenLimit"], real["inputTokenLimit"]);

    let (status, _, body) = h.get("/v1beta/models/flash").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["name"], "models/gemini-2.5-flash");
}

/// Aliases change with the config, without a restart.
#[tokio::test]
async fn aliases_follow_a_reload() {
    let h = Harness::start().await;
    assert_eq!(
        h.post("/v1beta/models/flash:generateContent", GENERATE_BODY)
            .await
            .0,
        200
    );
    let mut config = h.server.gateway().live().config.clone();
    aliases(&mut config);
    h.server.gateway().reload(config).unwrap();
    assert_eq!(
        h.post("/v1beta/models/flash:generateContent", GENERATE_BODY)
            .await
            .0,
        200
    );
    assert_eq!(
        paths_seen(&h),
        [
            "/v1beta/models/flash:generateContent",
            "/v1beta/models/gemini-2.5-flash:generateContent"
        ]
    );
}

fn thinking_off_for_team_a(c: &mut Config) {
    aliases(c);
    with_auth(c);
    let rule: OverrideRule = serde_json::from_value(serde_json::json!({
        "match": { "models": ["gemini-2.5-flash"], "clients": ["team-a"] },
        "set": { "generationConfig": { "thinkingConfig": { "thinkingBudget": 0 } } },
        "default": { "generationConfig": { "maxOutputTokens": 256 } },
    }))
    .unwrap();
    c.gemini.overrides = vec![rule];
}

/// A rule for team-a and gemini-2.5-flash: team-a's bodies carry the budget (also when it calls
/// the model by an alias, and on the OpenAI surface), team-b's and other models' reach Google
/// byte for byte; `default` never replaces what the client sent.
#[tokio::test]
async fn overrides_apply_to_the_matching_client_and_model_only() {
    let h = Harness::start_with(MockOptions::default(), thinking_off_for_team_a).await;
    let a = token_for("team-a", &[]);
    let b = token_for("team-b", &[]);
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],  "generationConfig":{"thinkingConfig":{"thinkingBudget":1024},"maxOutputTokens":64}}"#;
    for (tok, path) in [
        (&a, "/v1beta/models/flash:generateContent"),
        (&b, "/v1beta/models/gemini-2.5-flash:generateContent"),
        (&a, "/v1beta/models/gemini-2.5-pro:generateContent"),
    ] {
        assert_eq!(post_as(&h, tok, path, body).await.0, 200);
    }
    let (status, _, _) = post_as(
        &h,
        &a,
        "/v1beta/openai/chat/completions",
        r#"{"model":"flash","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"high"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let seen = h.mock.requests();
    let team_a = json(&seen[0].body);
    assert_eq!(
        team_a["generationConfig"]["thinkingConfig"]["thinkingBudget"], 0,
        "set replaces the client's budget"
    );
    assert_eq!(
        team_a["generationConfig"]["maxOutputTokens"], 64,
        "default leaves what the client sent"
    );
    assert_eq!(team_a["contents"][0]["parts"][0]["text"], "hi");
    // Unmatched: byte for byte, the odd spacing included.
    assert_eq!(&seen[1].body[..], body.as_bytes());
    assert_eq!(&seen[2].body[..], body.as_bytes());
    let openai = json(&seen[3].body);
    assert_eq!(openai["model"], "gemini-2.5-flash");
    assert_eq!(
        openai["extra_body"]["google"]["thinking_config"]["thinking_budget"],
        0
    );
    assert!(
        openai.get("reasoning_effort").is_none(),
        "Google refuses both"
    );
    assert_eq!(openai["max_tokens"], 256, "default fills what was left out");
    let (_, _, metrics) = h
        .call(request(Method::GET, &h.admin_url("/metrics"), ""))
        .await;
    assert!(String::from_utf8_lossy(&metrics).contains("gem_proxy_overridden_requests_total 2"));
}

fn token_with_claims(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A token's own `overrides` claim applies to that client's requests for its models; a token
/// whose rules are not valid override rules is refused.
#[tokio::test]
async fn a_tokens_overrides_claim_applies_to_its_client() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        aliases(c);
        with_auth(c);
    })
    .await;
    let exp = unix_now() + 600;
    let tok = token_with_claims(serde_json::json!({
        "sub": "team-c",
        "exp": exp,
        "overrides": [{
            "match": { "models": ["gemini-2.5-*"] },
            "set": { "safetySettings": [{ "category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE" }] },
        }],
    }));
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
    assert_eq!(
        post_as(&h, &tok, "/v1beta/models/flash:generateContent", body)
            .await
            .0,
        200
    );
    assert_eq!(
        post_as(&h, &tok, "/v1beta/models/gemma-3:generateContent", body)
            .await
            .0,
        200
    );
    let seen = h.mock.requests();
    assert_eq!(
        json(&seen[0].body)["safetySettings"][0]["threshold"],
        "BLOCK_NONE"
    );
    assert_eq!(
        &seen[1].body[..],
        body.as_bytes(),
        "another model: untouched"
    );

    let bad = token_with_claims(serde_json::json!({
        "sub": "team-c",
        "exp": exp,
        "overrides": [{ "set": { "tools": [] } }],
    }));
    let (status, _, answer) = post_as(&h, &bad, "/v1beta/models/flash:generateContent", body).await;
    assert_google_error(status, &answer, 401, "UNAUTHENTICATED");
}
