//! Model names: suffixes (`gemini.models.suffixes`, opt-in) — `-nothinking`,
//! `-thinking-<budget>` and `-search` reach Google as the real model with the thinking budget and
//! the search tool they ask for — and aliases in the OpenAI-compatible model listing.

use crate::support::*;
use gem_proxy::config::{Config, OverrideRule};
use gem_proxy_mock::MockOptions;
use serde_json::json;

fn suffixes_on(c: &mut Config) {
    c.gemini.models.suffixes = true;
    c.gemini
        .models
        .aliases
        .insert("flash".into(), "gemini-2.5-flash".into());
}

/// Native paths: the suffix comes off the model, its request goes into the body.
#[tokio::test]
async fn suffixes_in_the_path_become_a_thinking_budget_and_the_search_tool() {
    let h = Harness::start_with(MockOptions::default(), suffixes_on).await;
    let with_tools =
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"tools":[{"code_execution":{}}]}"#;
    for (path, body) in [
        (
            "/v1beta/models/gemini-2.5-flash-nothinking:generateContent",
            GENERATE_BODY,
        ),
        (
            "/v1beta/models/flash-thinking-512-search:streamGenerateContent?alt=sse",
            with_tools,
        ),
        (
            "/v1beta/models/gemini-2.5-pro-search:generateContent",
            GENERATE_BODY,
        ),
    ] {
        let (status, _, _) = h.post(path, body).await;
        assert_eq!(status, 200, "{path}");
    }
    let seen = h.mock.requests();
    assert_eq!(
        seen.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        [
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "/v1beta/models/gemini-2.5-pro:generateContent",
        ]
    );
    let bodies: Vec<_> = seen.iter().map(|r| json(&r.body)).collect();
    assert_eq!(
        bodies[0]["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        0
    );
    assert!(bodies[0].get("tools").is_none());
    assert_eq!(
        bodies[1]["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        512
    );
    assert_eq!(
        bodies[1]["tools"],
        json!([{"code_execution": {}}, {"google_search": {}}])
    );
    assert_eq!(bodies[2]["tools"], json!([{"google_search": {}}]));
    assert!(bodies[2].get("generationConfig").is_none());
}

/// On the OpenAI-compatible surface the model in the body loses its suffix and the budget is
/// written as Google reads it there.
#[tokio::test]
async fn a_suffix_in_an_openai_body_becomes_its_thinking_config() {
    let h = Harness::start_with(MockOptions::default(), suffixes_on).await;
    let (status, _, _) = h
        .post(
            "/v1beta/openai/chat/completions",
            r#"{"model":"gemini-2.5-flash-nothinking","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(status, 200);
    let body = json(&h.mock.requests()[0].body);
    assert_eq!(body["model"], "gemini-2.5-flash");
    assert_eq!(
        body["extra_body"]["google"]["thinking_config"]["thinking_budget"],
        0
    );
}

/// Off by default: a suffixed name is sent as it is (and Google would refuse it).
#[tokio::test]
async fn off_by_default_the_name_is_sent_as_it_is() {
    let h = Harness::start().await;
    let _ = h
        .post(
            "/v1beta/models/gemini-2.5-flash-nothinking:generateContent",
            GENERATE_BODY,
        )
        .await;
    let seen = h.mock.requests();
    assert_eq!(
        seen[0].path,
        "/v1beta/models/gemini-2.5-flash-nothinking:generateContent"
    );
    assert_eq!(&seen[0].body[..], GENERATE_BODY.as_bytes());
}

/// A configured `set` rule has the last word over what a suffix asks.
#[tokio::test]
async fn a_configured_rule_wins_over_the_suffix() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        suffixes_on(c);
        let rule: OverrideRule = serde_json::from_value(json!({
            "set": { "generationConfig": { "thinkingConfig": { "thinkingBudget": 64 } } }
        }))
        .unwrap();
        c.gemini.overrides = vec![rule];
    })
    .await;
    let (status, _, _) = h
        .post(
            "/v1beta/models/gemini-2.5-flash-thinking-4096:generateContent",
            GENERATE_BODY,
        )
        .await;
    assert_eq!(status, 200);
    let body = json(&h.mock.requests()[0].body);
    assert_eq!(
        body["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        64
    );
}

/// `GET /v1beta/openai/models` lists each alias as a copy of its model's entry.
#[tokio::test]
async fn aliases_are_listed_in_the_openai_model_listing() {
    let h = Harness::start_with(MockOptions::default(), suffixes_on).await;
    let (status, _, body) = h.get("/v1beta/openai/models").await;
    assert_eq!(status, 200);
    let listing = json(&body);
    let data = listing["data"].as_array().unwrap();
    let real = data
        .iter()
        .find(|m| m["id"] == "models/gemini-2.5-flash")
        .unwrap();
    let alias = data.iter().find(|m| m["id"] == "models/flash").unwrap();
    assert_eq!(alias["object"], "model");
    assert_eq!(alias["owned_by"], real["owned_by"]);
    assert_eq!(data.iter().filter(|m| m["id"] == "models/flash").count(), 1);
}
