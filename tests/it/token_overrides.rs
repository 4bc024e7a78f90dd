//! Tokens that carry request overrides (`overrides` claim), issued by `gem-proxy token
//! --overrides` and by `POST /api/tokens`: the rules apply to that client's requests only, and
//! rules `gemini.overrides` would refuse are refused.

use std::process::Command;

use crate::support::*;
use gem_proxy::config::{Config, Secret};
use gem_proxy_mock::MockOptions;
use http::Method;

const SECRET: &str = "0123456789abcdef0123456789abcdef-overrides";
const ADMIN_TOKEN: &str = "admin-token-for-overrides-tests";
const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const NO_THINKING: &str = r#"[{"match":{"models":["gemini-2.5-*"]},"set":{"generationConfig":{"thinkingConfig":{"thinkingBudget":0}}}}]"#;

fn auth_on(c: &mut Config) {
    c.auth.enabled = true;
    c.auth.jwt_secret = Secret::new(SECRET);
    c.admin.token = Secret::new(ADMIN_TOKEN);
}

async fn call_with(h: &Harness, token: &str) -> http::StatusCode {
    let mut req = request(Method::POST, &h.url(FLASH), GENERATE_BODY);
    req.headers_mut()
        .insert("x-goog-api-key", token.parse().unwrap());
    h.call(req).await.0
}

async fn issue_via_api(h: &Harness, body: &str) -> (http::StatusCode, serde_json::Value) {
    let mut req = request(Method::POST, &h.admin_url("/api/tokens"), body);
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    let (status, _, body) = h.call(req).await;
    (status, json(&body))
}

fn budget_seen(h: &Harness, i: usize) -> serde_json::Value {
    json(&h.mock.requests()[i].body)["generationConfig"]["thinkingConfig"]["thinkingBudget"].clone()
}

/// The admin API issues a token with rules; that client's body changes, another's does not.
#[tokio::test]
async fn the_admin_api_issues_a_token_with_overrides() {
    let h = Harness::start_with(MockOptions::default(), auth_on).await;
    let (status, with) = issue_via_api(
        &h,
        &format!(r#"{{"sub":"team-a","ttl":"1h","overrides":{NO_THINKING}}}"#),
    )
    .await;
    assert_eq!(status, 200, "{with}");
    let (status, without) = issue_via_api(&h, r#"{"sub":"team-b","ttl":"1h"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(call_with(&h, with["token"].as_str().unwrap()).await, 200);
    assert_eq!(call_with(&h, without["token"].as_str().unwrap()).await, 200);
    assert_eq!(budget_seen(&h, 0), 0);
    assert_eq!(budget_seen(&h, 1), serde_json::Value::Null);
    assert_eq!(&h.mock.requests()[1].body[..], GENERATE_BODY.as_bytes());

    // A rule that changes a field overrides may not: refused, nothing issued.
    let (status, refused) = issue_via_api(
        &h,
        r#"{"sub":"team-c","overrides":[{"set":{"contents":[]}}]}"#,
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused.to_string().contains("overrides"), "{refused}");
}

/// `gem-proxy token --overrides` signs the rules into the token; the gateway applies them.
#[tokio::test]
async fn the_command_line_issues_a_token_with_overrides() {
    let h = Harness::start_with(MockOptions::default(), auth_on).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "auth: {{ enabled: true, jwt_secret: \"{SECRET}\" }}\ngemini: {{ api_keys: [{{ id: a, key: AIzaA }}] }}\n"
        ),
    )
    .unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, NO_THINKING).unwrap();
    let run = |overrides: &str| {
        Command::new(env!("CARGO_BIN_EXE_gem-proxy"))
            .args([
                "token",
                "--config",
                config.to_str().unwrap(),
                "--sub",
                "team-a",
            ])
            .args(["--overrides", overrides])
            .env_remove("GEM_PROXY_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(&format!("@{}", rules.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 override rule"));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(call_with(&h, &token).await, 200);
    assert_eq!(budget_seen(&h, 0), 0);

    let bad = run(r#"[{"set":{"tools":[]}}]"#);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("overrides"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
