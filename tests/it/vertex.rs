//! Vertex AI members in the pool: the mock's Vertex face and token endpoint behind the real stack.
//! The test service account's RSA key pair is generated here, per test (never a committed key).

use std::time::Duration;

use base64::Engine;
use gem_proxy::config::{ApiKeyConfig, Backend, Config, Secret, VertexConfig};
use gem_proxy_mock::{MockOptions, RecordedRequest};
use http::Method;
use serde_json::json;

use crate::support::{
    GENERATE_BODY, Harness, KEY1, assert_google_error, health, json, key_state, request, within,
};

const PROJECT: &str = "test-project";
const LOCATION: &str = "europe-west4";
const EXPRESS_KEY: &str = "AQ.TESTEXPRESSKEY";
const NO_ROLE_BODY: &str = r#"{"contents":[{"parts":[{"text":"Say hello"}]}]}"#;

/// A fresh RSA key pair: (PKCS#8 private key PEM, public key PEM).
fn key_pair() -> (String, String) {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::KeyPair as _;
    let pair = KeyPair::generate(KeySize::Rsa2048).expect("RSA key pair");
    let private: Pkcs8V1Der<'_> = pair.as_der().expect("PKCS#8");
    (
        pem("PRIVATE KEY", private.as_ref()),
        pem("RSA PUBLIC KEY", pair.public_key().as_ref()),
    )
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A service-account JSON key for `private_pem`, exchanged at the mock's token endpoint.
fn service_account_json(private_pem: &str, mock_base: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "test-key-1",
        "private_key": private_pem,
        "client_email": "gateway@test-project.iam.gserviceaccount.com",
        "token_uri": format!("{mock_base}/token"),
    })
    .to_string()
}

fn vertex_member(id: &str, credentials: String, mock_base: &str) -> ApiKeyConfig {
    ApiKeyConfig {
        id: id.into(),
        key: Secret::default(),
        weight: 1,
        max_requests_per_minute: None,
        max_requests_per_day: None,
        max_tokens_per_minute: None,
        enabled: true,
        label: None,
        notes: None,
        backend: Backend::Vertex,
        vertex: Some(VertexConfig {
            project: PROJECT.into(),
            location: LOCATION.into(),
            credentials: Secret::new(credentials),
            base_url: Some(mock_base.into()),
            ..VertexConfig::default()
        }),
        proxy: None,
    }
}

fn express_member(id: &str, mock_base: &str) -> ApiKeyConfig {
    ApiKeyConfig {
        key: Secret::new(EXPRESS_KEY),
        backend: Backend::VertexExpress,
        vertex: Some(VertexConfig {
            base_url: Some(mock_base.into()),
            ..VertexConfig::default()
        }),
        ..vertex_member(id, String::new(), mock_base)
    }
}

/// A gateway whose pool the `pool` closure builds from the mock's URL and the service account's
/// JSON key; the mock's token endpoint trusts that account.
async fn start(opts: MockOptions, pool: impl FnOnce(&str, String) -> Vec<ApiKeyConfig>) -> Harness {
    let (private, public) = key_pair();
    let opts = MockOptions {
        vertex_public_key_pem: Some(public),
        ..opts
    };
    Harness::start_with(opts, |c: &mut Config| {
        let base = c.gemini.base_url.clone();
        let sa = service_account_json(&private, &base);
        c.gemini.api_keys = pool(&base, sa);
    })
    .await
}

/// The AI Studio key of the test config (id `key1`), for pools that mix kinds.
fn ai_studio() -> ApiKeyConfig {
    ApiKeyConfig {
        key: Secret::new(KEY1),
        backend: Backend::AiStudio,
        vertex: None,
        ..vertex_member("key1", String::new(), "")
    }
}

/// Waits until `/health` says the member has a token.
async fn token_ready(h: &Harness, id: &str) -> serde_json::Value {
    within("the first access token", async {
        loop {
            let health = health(h).await;
            if key_state(&health, id)["vertex"]["token"]["ready"] == true {
                return health;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn vertex_requests(h: &Harness) -> Vec<RecordedRequest> {
    h.mock
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/projects/") || r.path.starts_with("/v1/publishers/"))
        .collect()
}

/// A request as a client with its own credential sends it.
async fn post_as_client(h: &Harness, path: &str, body: &str) -> (http::StatusCode, bytes::Bytes) {
    let mut req = request(Method::POST, &h.url(path), body);
    req.headers_mut()
        .insert("x-goog-api-key", "AIzaCLIENTCREDENTIAL".parse().unwrap());
    let (status, _, body) = h.call(req).await;
    (status, body)
}

#[tokio::test]
async fn a_mixed_pool_alternates_and_vertex_gets_the_mapped_path_and_its_own_token() {
    let h = start(MockOptions::default(), |base, sa| {
        vec![ai_studio(), vertex_member("vertex-eu", sa, base)]
    })
    .await;
    token_ready(&h, "vertex-eu").await;
    let issued = h.mock.vertex_tokens_issued();
    assert_eq!(issued.len(), 1, "{issued:?}");

    for path in [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        "/v1/models/gemini-2.5-flash:countTokens",
        "/v1/models/gemini-2.5-flash:countTokens",
    ] {
        let (status, body) = post_as_client(&h, path, NO_ROLE_BODY).await;
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        if path.contains("alt=sse") {
            assert!(body.starts_with(b"data: "), "{path}");
        }
    }
    let seen = h.mock.requests();
    let members: Vec<&str> = seen
        .iter()
        .filter(|r| r.path != "/token")
        .map(|r| {
            if r.path.starts_with("/v1/projects/") {
                "vertex"
            } else {
                "studio"
            }
        })
        .collect();
    assert_eq!(
        members,
        ["studio", "vertex", "studio", "vertex", "studio", "vertex"]
    );
    let vertex = vertex_requests(&h);
    let prefix = format!("/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models");
    let paths: Vec<String> = vertex.iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        [
            format!("{prefix}/gemini-2.5-flash:generateContent"),
            format!("{prefix}/gemini-2.5-flash:streamGenerateContent"),
            format!("{prefix}/gemini-2.5-flash:countTokens"),
        ]
    );
    assert_eq!(vertex[1].query.as_deref(), Some("alt=sse"));
    for r in &vertex {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {}", issued[0]).as_str())
        );
        assert_eq!(r.header("x-goog-api-key"), None, "client credential leaked");
        assert!(!r.query.as_deref().unwrap_or("").contains("key="));
        // Vertex refuses contents without a role; the gateway filled it in.
        assert_eq!(json(&r.body)["contents"][0]["role"], "user");
    }
    // The AI Studio key still got its own key and the body byte for byte.
    let studio: Vec<&RecordedRequest> = seen
        .iter()
        .filter(|r| r.path.starts_with("/v1beta/") || r.path.starts_with("/v1/models"))
        .collect();
    assert!(studio.iter().all(|r| r.key.as_deref() == Some(KEY1)));
    assert_eq!(&studio[0].body[..], NO_ROLE_BODY.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn the_token_is_refreshed_in_the_background_before_it_expires() {
    let h = start(MockOptions::default(), |base, sa| {
        vec![ai_studio(), vertex_member("vertex-eu", sa, base)]
    })
    .await;
    let ready = token_ready(&h, "vertex-eu").await;
    assert_eq!(
        key_state(&ready, "vertex-eu")["vertex"]["token"]["fetched"],
        1
    );
    let first = h.mock.vertex_tokens_issued();
    assert_eq!(first.len(), 1);

    // 50 minutes in (the token lives an hour): still the first token, no fetch on the way.
    tokio::time::advance(Duration::from_secs(50 * 60)).await;
    for _ in 0..2 {
        assert_eq!(
            h.post("/v1beta/models/m:generateContent", GENERATE_BODY)
                .await
                .0,
            200
        );
    }
    assert_eq!(h.mock.vertex_tokens_issued().len(), 1);

    // 55 minutes in, five minutes before expiry, the refresh runs by itself.
    h.mock.clear();
    tokio::time::advance(Duration::from_secs(5 * 60 + 1)).await;
    let second = within("the refresh", async {
        loop {
            let issued = h.mock.vertex_tokens_issued();
            if issued.len() == 2 {
                return issued[1].clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_ne!(second, first[0]);
    // The refresh was the only thing that reached the token endpoint, and no request was sent
    // while it ran: it happened with no request in flight.
    assert!(h.mock.requests().iter().all(|r| r.path == "/token"));
    for _ in 0..2 {
        assert_eq!(
            h.post("/v1beta/models/m:generateContent", GENERATE_BODY)
                .await
                .0,
            200
        );
    }
    let vertex = vertex_requests(&h);
    assert_eq!(vertex.len(), 1);
    assert_eq!(
        vertex[0].header("authorization"),
        Some(format!("Bearer {second}").as_str())
    );

    // The account is refused from now on: the member keeps its valid token, then, once it
    // expires, is skipped with the reason in /health and the AI Studio key carries everything.
    h.mock.refuse_vertex_tokens(true);
    tokio::time::advance(Duration::from_secs(55 * 60 + 1)).await;
    within("the refused refresh", async {
        loop {
            let health = health(&h).await;
            if key_state(&health, "vertex-eu")["vertex"]["token"]["error"].is_string() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::time::advance(Duration::from_secs(5 * 60)).await;
    let health = health(&h).await;
    let member = &key_state(&health, "vertex-eu")["vertex"];
    assert_eq!(member["token"]["ready"], false, "{member}");
    let reason = member["skipped"].as_str().unwrap();
    assert!(reason.contains("invalid_grant"), "{reason}");
    h.mock.clear();
    for _ in 0..3 {
        assert_eq!(
            h.post("/v1beta/models/m:generateContent", GENERATE_BODY)
                .await
                .0,
            200
        );
    }
    assert!(vertex_requests(&h).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_is_replaced_and_the_member_stays_in_the_pool() {
    let h = start(MockOptions::default(), |base, sa| {
        vec![ai_studio(), vertex_member("vertex-eu", sa, base)]
    })
    .await;
    token_ready(&h, "vertex-eu").await;
    let first = h.mock.vertex_tokens_issued();
    assert_eq!(first.len(), 1);

    // Ten minutes in, Google revokes the account's tokens (well before their expiry).
    tokio::time::advance(Duration::from_secs(10 * 60)).await;
    h.mock.revoke_vertex_tokens();
    h.mock.clear();
    // Every client still gets its answer: the refused attempt is replayed on the AI Studio key.
    for _ in 0..4 {
        let (status, _, body) = h
            .post("/v1beta/models/m:generateContent", GENERATE_BODY)
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    // A new token was fetched at once, and the member was not taken out of rotation.
    let ready = token_ready(&h, "vertex-eu").await;
    let member = key_state(&ready, "vertex-eu");
    assert_ne!(member["state"], "invalid", "{member}");
    let issued = h.mock.vertex_tokens_issued();
    assert_eq!(issued.len(), 2, "{issued:?}");
    h.mock.clear();
    for _ in 0..4 {
        assert_eq!(
            h.post("/v1beta/models/m:generateContent", GENERATE_BODY)
                .await
                .0,
            200
        );
    }
    let vertex = vertex_requests(&h);
    assert!(!vertex.is_empty(), "the member carries traffic again");
    let bearer = format!("Bearer {}", issued[1]);
    assert!(
        vertex
            .iter()
            .all(|r| r.header("authorization") == Some(bearer.as_str()))
    );

    // A token refused right after it was fetched means the account itself is refused: the member
    // is taken out like an invalid key.
    h.mock.revoke_vertex_tokens();
    for _ in 0..4 {
        assert_eq!(
            h.post("/v1beta/models/m:generateContent", GENERATE_BODY)
                .await
                .0,
            200
        );
    }
    let after = health(&h).await;
    let member = key_state(&after, "vertex-eu");
    assert_eq!(member["state"], "invalid", "{member}");
}

#[tokio::test]
async fn express_mode_sends_its_key_in_the_query_and_never_the_clients() {
    let h = start(MockOptions::default(), |base, _| {
        vec![express_member("vertex-express", base)]
    })
    .await;
    for path in [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=AIzaCLIENTQUERY",
        "/v1beta/models/gemini-2.5-flash:countTokens",
    ] {
        let (status, body) = post_as_client(&h, path, NO_ROLE_BODY).await;
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    }
    let seen = h.mock.requests();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/publishers/google/models/gemini-2.5-flash:generateContent",
            "/v1/publishers/google/models/gemini-2.5-flash:streamGenerateContent",
            "/v1/publishers/google/models/gemini-2.5-flash:countTokens",
        ]
    );
    assert_eq!(
        seen[1].query.as_deref(),
        Some("alt=sse&key=AQ.TESTEXPRESSKEY")
    );
    for r in &seen {
        assert_eq!(r.key.as_deref(), Some(EXPRESS_KEY));
        assert_eq!(r.header("x-goog-api-key"), None);
        assert_eq!(r.header("authorization"), None);
    }
    assert!(h.mock.vertex_tokens_issued().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_vertex_429_rests_the_member_for_that_model_only() {
    let h = start(MockOptions::default(), |base, sa| {
        vec![vertex_member("vertex-eu", sa, base)]
    })
    .await;
    token_ready(&h, "vertex-eu").await;
    let mut req = request(
        Method::POST,
        &h.url("/v1beta/models/gemini-2.5-pro:generateContent"),
        GENERATE_BODY,
    );
    req.headers_mut()
        .insert("x-mock-error", "429".parse().unwrap());
    let (status, _, body) = h.call(req).await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
    assert!(String::from_utf8_lossy(&body).contains("Resource exhausted"));
    let before = vertex_requests(&h).len();

    // The member rests for that model: the gateway answers without asking Vertex…
    let (status, headers, body) = h
        .post(
            "/v1beta/models/gemini-2.5-pro:generateContent",
            GENERATE_BODY,
        )
        .await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
    assert!(headers.get("retry-after").is_some());
    assert_eq!(vertex_requests(&h).len(), before);
    // …and serves every other model.
    let (status, _, _) = h
        .post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            GENERATE_BODY,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(vertex_requests(&h).len(), before + 1);
}

#[tokio::test]
async fn developer_api_only_routes_never_reach_a_vertex_member() {
    let h = start(MockOptions::default(), |base, sa| {
        vec![
            ai_studio(),
            vertex_member("vertex-eu", sa, base),
            express_member("vertex-express", base),
        ]
    })
    .await;
    token_ready(&h, "vertex-eu").await;
    for _ in 0..3 {
        assert_eq!(h.get("/v1beta/files").await.0, 200);
        assert_eq!(h.get("/v1beta/models").await.0, 200);
        assert_eq!(h.get("/v1beta/cachedContents").await.0, 200);
    }
    // Bodies naming a file or a cached content go where those live, too.
    let file = r#"{"contents":[{"role":"user","parts":[{"fileData":{"mimeType":"text/plain","fileUri":"https://generativelanguage.googleapis.com/v1beta/files/abc"}}]}]}"#;
    let cached = r#"{"cachedContent":"cachedContents/xyz","contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
    for body in [file, cached, file, cached] {
        h.post("/v1beta/models/gemini-2.5-flash:generateContent", body)
            .await;
    }
    let seen = h.mock.requests();
    let api: Vec<&RecordedRequest> = seen.iter().filter(|r| r.path != "/token").collect();
    assert_eq!(api.len(), 13);
    assert!(
        api.iter().all(|r| r.key.as_deref() == Some(KEY1)),
        "{api:?}"
    );

    // With only Vertex members, such a request finds no member at all.
    let h = start(MockOptions::default(), |base, _| {
        vec![express_member("vertex-express", base)]
    })
    .await;
    let (status, _, body) = h.get("/v1beta/files").await;
    assert_google_error(status, &body, 503, "UNAVAILABLE");
    assert!(h.mock.requests().is_empty());
}

#[tokio::test]
async fn embeddings_map_to_embed_content_and_predict_or_a_clear_400() {
    let h = start(MockOptions::default(), |base, sa| {
        vec![vertex_member("vertex-eu", sa, base)]
    })
    .await;
    token_ready(&h, "vertex-eu").await;
    let (status, _, _) = h
        .post(
            "/v1beta/models/gemini-embedding-001:embedContent",
            r#"{"content":{"parts":[{"text":"hello"}]}}"#,
        )
        .await;
    assert_eq!(status, 200);

    let batch = r#"{"requests":[
        {"model":"models/text-embedding-005","content":{"parts":[{"text":"one"}]},"taskType":"RETRIEVAL_DOCUMENT","outputDimensionality":4},
        {"model":"models/text-embedding-005","content":{"parts":[{"text":"two"}]}}]}"#;
    let (status, _, body) = h
        .post(
            "/v1beta/models/text-embedding-005:batchEmbedContents",
            batch,
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer = json(&body);
    let embeddings = answer["embeddings"].as_array().unwrap();
    assert_eq!(embeddings.len(), 2);
    assert_eq!(embeddings[0]["values"].as_array().unwrap().len(), 4);

    let vertex = vertex_requests(&h);
    let prefix = format!("/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models");
    assert_eq!(
        vertex[0].path,
        format!("{prefix}/gemini-embedding-001:embedContent")
    );
    assert_eq!(
        vertex[1].path,
        format!("{prefix}/text-embedding-005:predict")
    );
    let predict = json(&vertex[1].body);
    assert_eq!(predict["instances"][0]["content"], "one");
    assert_eq!(predict["instances"][0]["task_type"], "RETRIEVAL_DOCUMENT");
    assert_eq!(predict["parameters"]["outputDimensionality"], 4);

    // An image has no :predict equivalent: the gateway says so and Vertex never sees it.
    let image = r#"{"requests":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"AAAA"}}]}}]}"#;
    let (status, _, body) = h
        .post(
            "/v1beta/models/text-embedding-005:batchEmbedContents",
            image,
        )
        .await;
    assert_google_error(status, &body, 400, "INVALID_ARGUMENT");
    assert!(String::from_utf8_lossy(&body).contains("no Vertex AI equivalent"));
    assert_eq!(vertex_requests(&h).len(), 2);
}

#[tokio::test]
async fn vertex_errors_pass_through_and_openai_chat_maps_to_its_endpoint() {
    let h = start(MockOptions::default(), |base, sa| {
        vec![vertex_member("vertex-eu", sa, base)]
    })
    .await;
    token_ready(&h, "vertex-eu").await;
    let mut req = request(
        Method::POST,
        &h.url("/v1beta/models/gemini-2.5-flash:generateContent"),
        GENERATE_BODY,
    );
    req.headers_mut()
        .insert("x-mock-error", "404".parse().unwrap());
    let (status, _, body) = h.call(req).await;
    assert_google_error(status, &body, 404, "NOT_FOUND");

    let (status, _, body) = h
        .post(
            "/v1beta/openai/chat/completions",
            r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen = vertex_requests(&h);
    let chat = seen.last().unwrap();
    assert_eq!(
        chat.path,
        format!("/v1/projects/{PROJECT}/locations/{LOCATION}/endpoints/openapi/chat/completions")
    );
    assert_eq!(json(&chat.body)["model"], "google/gemini-2.5-flash");
    assert!(
        chat.header("authorization")
            .unwrap()
            .starts_with("Bearer ya29.")
    );
}

#[tokio::test]
async fn broken_service_account_keys_are_refused_by_name_or_skipped_with_a_reason() {
    // At validation (check-config): the member is named, the key never shown.
    let mut config = crate::support::test_config("http://127.0.0.1:9");
    let mut member = vertex_member("vertex-eu", String::new(), "http://127.0.0.1:9");
    member.vertex.as_mut().unwrap().credentials = Secret::default();
    member.vertex.as_mut().unwrap().credentials_file = Some("/nonexistent/sa.json".into());
    config.gemini.api_keys.push(member);
    let mut garbage = vertex_member(
        "vertex-us",
        r#"{"type":"service_account","client_email":"a@b","private_key":"NOTAKEY"}"#.into(),
        "http://127.0.0.1:9",
    );
    garbage.vertex.as_mut().unwrap().location = String::new();
    config.gemini.api_keys.push(garbage);
    let problems: Vec<String> = config.validate().iter().map(ToString::to_string).collect();
    assert!(
        problems.iter().any(
            |p| p.starts_with("gemini.api_keys[2].vertex.credentials_file")
                && p.contains("\"vertex-eu\"")
                && p.contains("/nonexistent/sa.json")
        ),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("gemini.api_keys[3].vertex.credentials:")
                && p.contains("\"vertex-us\"")
                && p.contains("not an RSA private key")
                && !p.contains("NOTAKEY")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("gemini.api_keys[3].vertex.location"))
    );

    // At runtime: a key the token endpoint does not accept (signed by another key pair).
    let (other_private, _) = key_pair();
    let h = start(MockOptions::default(), |base, _| {
        vec![
            ai_studio(),
            vertex_member(
                "vertex-eu",
                service_account_json(&other_private, base),
                base,
            ),
        ]
    })
    .await;
    let reason = within("the refused exchange", async {
        loop {
            let health = health(&h).await;
            if let Some(reason) = key_state(&health, "vertex-eu")["vertex"]["skipped"].as_str()
                && reason.contains("Invalid JWT Signature")
            {
                return reason.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reason.contains("no access token"), "{reason}");
    for _ in 0..3 {
        assert_eq!(
            h.post("/v1beta/models/m:generateContent", GENERATE_BODY)
                .await
                .0,
            200
        );
    }
    assert!(vertex_requests(&h).is_empty());
}

/// `gem-proxy check-config` on a config with a broken service-account file: exit 1, the member
/// named; with a good one: OK.
#[test]
fn check_config_names_the_member_whose_key_file_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let sa = dir.path().join("sa.json");
    std::fs::write(&sa, r#"{"type":"service_account","client_email":"a@b"}"#).unwrap();
    let config = dir.path().join("proxy.yaml");
    let yaml = |file: &std::path::Path| {
        format!(
            "gemini:\n  api_keys:\n    - {{ id: studio, key: AIzaX }}\n    - id: vertex-eu\n      backend: vertex\n      vertex: {{ project: p, location: global, credentials_file: \"{}\" }}\n",
            file.display()
        )
    };
    std::fs::write(&config, yaml(&sa)).unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_gem-proxy"))
            .args(["check-config", "--config", config.to_str().unwrap()])
            .env_remove("GEM_PROXY_CONFIG")
            .output()
            .expect("binary runs")
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("gemini.api_keys[1].vertex.credentials_file")
            && stderr.contains("\"vertex-eu\"")
            && stderr.contains("private_key"),
        "{stderr}"
    );

    let (private, _) = key_pair();
    std::fs::write(
        &sa,
        service_account_json(&private, "https://oauth2.googleapis.com"),
    )
    .unwrap();
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One token per service account, across config reloads too: a reload (here a weight change)
/// keeps the member's token, so it neither fetches another nor drops out of rotation.
#[tokio::test]
async fn a_config_reload_keeps_the_members_token() {
    let h = start(MockOptions::default(), |base, sa| {
        vec![ai_studio(), vertex_member("vertex-eu", sa, base)]
    })
    .await;
    token_ready(&h, "vertex-eu").await;
    let mut config = h.server.gateway().live().config.clone();
    config.gemini.api_keys[1].weight = 3;
    h.server.gateway().reload(config).unwrap();
    let after = health(&h).await;
    let member = &key_state(&after, "vertex-eu")["vertex"];
    assert_eq!(member["token"]["ready"], true, "{member}");
    for _ in 0..4 {
        assert_eq!(
            h.post("/v1beta/models/m:generateContent", GENERATE_BODY)
                .await
                .0,
            200
        );
    }
    assert_eq!(vertex_requests(&h).len(), 3);
    assert_eq!(h.mock.vertex_tokens_issued().len(), 1);
}
