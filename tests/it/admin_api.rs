//! The admin API against a gateway started from a real config file: access control, config
//! changes (validate → apply → persist), history and rollback, the file watch, keys and tokens.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use gem_proxy::config::ConfigLoader;
use gem_proxy::config::document::ConfigDocument;
use gem_proxy::gateway::{Gateway, Live};
use gem_proxy::server::Server;
use gem_proxy_mock::{MockOptions, MockUpstream};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const JWT_SECRET: &str = "jwt-secret-0123456789abcdefghijklmnop";
const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

struct Admin {
    mock: MockUpstream,
    server: Server,
    client: HttpClient,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Admin {
    async fn start() -> Admin {
        Self::start_with("", 2).await
    }

    async fn start_with(extra: &str, watch_seconds: u64) -> Admin {
        let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        let yaml = format!(
            r#"server: {{ host: "127.0.0.1", port: 0, workers: 1 }}
gemini:
  base_url: "{}"
  api_keys:
    - {{ id: "key1", key: "${{TEST_KEY_1}}", weight: 1 }}
    - {{ id: "key2", key: "{KEY2}", weight: 1 }}
auth: {{ enabled: false, jwt_secret: "{JWT_SECRET}" }}
metrics: {{ enabled: true, prometheus_port: 0 }}
admin: {{ token: "{ADMIN_TOKEN}", config_watch_interval_seconds: {watch_seconds} }}
{extra}"#,
            mock.base_url()
        );
        std::fs::write(&path, &yaml).unwrap();
        let loader = ConfigLoader::with_env([("TEST_KEY_1", KEY1)]);
        let config = loader.load_file(&path).unwrap();
        let gateway = Gateway::new(Live::build(config).unwrap());
        gateway.set_config_source(
            Some(path.clone()),
            loader,
            ConfigDocument::from_yaml(&yaml).unwrap(),
        );
        let server = Server::start_gateway(gateway).await.unwrap();
        Admin {
            mock,
            server,
            client: http1_client(),
            path,
            _dir: dir,
        }
    }

    fn gateway(&self) -> &Arc<Gateway> {
        self.server.gateway()
    }

    async fn api(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, serde_json::Value, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!(
                "http://{}{path}",
                self.server.admin_addr().unwrap()
            ))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let res = self
            .client
            .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
            .await
            .unwrap();
        let (status, _, body) = read_all(res).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, value, text)
    }

    async fn admin(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value, String) {
        self.api(method, path, Some(ADMIN_TOKEN), body).await
    }

    async fn generate(&self) -> StatusCode {
        let req = request(
            Method::POST,
            &format!("http://{}{FLASH}", self.server.proxy_addr()),
            GENERATE_BODY,
        );
        read_all(self.client.request(req).await.unwrap()).await.0
    }

    fn keys_seen(&self) -> Vec<String> {
        self.mock
            .requests()
            .into_iter()
            .filter_map(|r| r.key)
            .collect()
    }

    /// Turns client auth on through the API; a request without a token is then refused.
    async fn require_client_tokens(&self) {
        let (_, mut config, _) = self.admin(Method::GET, "/api/config", "").await;
        config["auth"]["enabled"] = true.into();
        let (status, _, text) = self
            .admin(Method::PUT, "/api/config", &config.to_string())
            .await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(self.generate().await, 401);
    }
}

fn client_jwt(role: &str) -> String {
    let config = gem_proxy::config::AuthConfig {
        jwt_secret: gem_proxy::config::Secret::new(JWT_SECRET),
        ..Default::default()
    };
    let req = gem_proxy::auth::TokenRequest {
        sub: "someone".into(),
        ttl: Duration::from_secs(3600),
        models: vec![],
        rpm: None,
        tpm: None,
        tpd: None,
        live_sessions: None,
        role: if role == "admin" {
            gem_proxy::auth::Role::Admin
        } else {
            gem_proxy::auth::Role::Client
        },
    };
    gem_proxy::auth::issue(&config, &req, gem_proxy::auth::unix_now())
        .unwrap()
        .token
}

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/config"),
    ("PUT", "/api/config"),
    ("GET", "/api/config/history"),
    ("POST", "/api/config/rollback/1"),
    ("GET", "/api/keys"),
    ("POST", "/api/keys"),
    ("DELETE", "/api/keys/key1"),
    ("POST", "/api/keys/key1/enable"),
    ("POST", "/api/keys/key1/disable"),
    ("POST", "/api/keys/key1/test"),
    ("POST", "/api/tokens"),
    ("POST", "/api/tokens/revoke"),
];

#[tokio::test]
async fn every_api_route_needs_an_admin_credential() {
    let a = Admin::start().await;
    // With auth off, admin JWTs are not accepted at all (their secret was never validated).
    let (status, _, _) = a
        .api(Method::GET, "/api/keys", Some(&client_jwt("admin")), "")
        .await;
    assert_eq!(status, 401);
    // Turn auth on, and the sign-in limit off for the many wrong credentials below.
    let (_, mut config, _) = a.admin(Method::GET, "/api/config", "").await;
    config["auth"]["enabled"] = true.into();
    config["admin"]["max_failed_sign_ins_per_minute"] = 0.into();
    let (status, _, text) = a
        .admin(Method::PUT, "/api/config", &config.to_string())
        .await;
    assert_eq!(status, 200, "{text}");
    let client = client_jwt("client");
    for (method, path) in ROUTES {
        let m: Method = method.parse().unwrap();
        let (status, body, _) = a.api(m.clone(), path, None, "{}").await;
        assert_eq!(status, 401, "{method} {path} without a credential");
        assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
        let (status, _, _) = a
            .api(m.clone(), path, Some("wrong-token-0123456789"), "{}")
            .await;
        assert_eq!(status, 401, "{method} {path} with a bad credential");
        let (status, body, _) = a.api(m.clone(), path, Some(&client), "{}").await;
        assert_eq!(status, 403, "{method} {path} with a client token");
        assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    }
    // An admin JWT works like the static token.
    let (status, _, _) = a
        .api(Method::GET, "/api/keys", Some(&client_jwt("admin")), "")
        .await;
    assert_eq!(status, 200);
    // /health and /metrics stay open.
    let (status, _, _) = a.api(Method::GET, "/health", None, "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn no_answer_shows_a_key_or_the_jwt_secret() {
    let a = Admin::start().await;
    for path in ["/api/config", "/api/keys", "/api/config/history", "/health"] {
        let (status, _, text) = a.admin(Method::GET, path, "").await;
        assert_eq!(status, 200, "{path}");
        for secret in [KEY1, KEY2, JWT_SECRET, ADMIN_TOKEN] {
            assert!(!text.contains(secret), "{path} shows a secret: {text}");
        }
    }
    let (_, config, _) = a.admin(Method::GET, "/api/config", "").await;
    assert_eq!(config["gemini"]["api_keys"][0]["key"], "********");
    assert_eq!(config["auth"]["jwt_secret"], "********");
}

#[tokio::test]
async fn a_put_with_new_keys_applies_to_the_next_request_while_a_running_stream_finishes() {
    let a = Admin::start().await;
    a.mock.hold_streams(true);
    let stream = a
        .client
        .request(request(
            Method::POST,
            &format!(
                "http://{}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                a.server.proxy_addr()
            ),
            GENERATE_BODY,
        ))
        .await
        .unwrap();
    let mut body = stream.into_body();
    within("first event", body.frame()).await.unwrap().unwrap();

    // GET → edit → PUT: replace both keys by a new one; masked secrets are never sent.
    let (_, mut config, _) = a.admin(Method::GET, "/api/config", "").await;
    config["gemini"]["api_keys"] = serde_json::json!([{ "id": "key3", "key": "AIzaNEWKEY3" }]);
    let (status, applied, text) = a
        .admin(Method::PUT, "/api/config", &config.to_string())
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(applied["version"], 2);
    assert!(applied["changes"].to_string().contains("key3"), "{applied}");
    assert!(!text.contains("AIzaNEWKEY3"));

    a.mock.clear();
    assert_eq!(a.generate().await, 200);
    assert_eq!(a.keys_seen(), ["AIzaNEWKEY3"]);

    // The running stream finishes on the old config.
    a.mock.release_chunk();
    a.mock.release_chunk();
    let mut n = 1;
    while let Some(frame) = within("rest", body.frame()).await {
        frame.expect("clean stream");
        n += 1;
    }
    assert!(n >= 3);

    // Persisted, keeping the env reference out (key1 is gone) and the new key literal.
    let on_disk = std::fs::read_to_string(&a.path).unwrap();
    assert!(
        on_disk.contains("key3") && !on_disk.contains("key1"),
        "{on_disk}"
    );
    assert!(a.path.with_file_name("proxy.yaml.prev").exists());
}

#[tokio::test]
async fn masked_secrets_sent_back_keep_their_values_and_env_references() {
    let a = Admin::start().await;
    let (_, mut config, _) = a.admin(Method::GET, "/api/config", "").await;
    config["gemini"]["timeout_seconds"] = 77.into();
    let (status, _, text) = a
        .admin(Method::PUT, "/api/config", &config.to_string())
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(a.gateway().live().config.gemini.timeout_seconds, 77);
    assert_eq!(
        a.gateway().live().config.gemini.api_keys[0].key.expose(),
        KEY1
    );
    let on_disk = std::fs::read_to_string(&a.path).unwrap();
    assert!(
        on_disk.contains("${TEST_KEY_1}"),
        "the env reference must stay: {on_disk}"
    );
    assert!(
        !on_disk.contains(KEY1),
        "the env value must not be written: {on_disk}"
    );
}

#[tokio::test]
async fn an_invalid_put_changes_nothing() {
    let a = Admin::start().await;
    let before_file = std::fs::read_to_string(&a.path).unwrap();
    let (_, mut config, _) = a.admin(Method::GET, "/api/config", "").await;
    config["gemini"]["api_keys"][1]["weight"] = 0.into();
    config["gemini"]["timeout_seconds"] = 0.into();
    config["gemini"]["bogus"] = true.into();
    let (status, body, _) = a
        .admin(Method::PUT, "/api/config", &config.to_string())
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    let violations = body["error"]["details"][0]["fieldViolations"]
        .as_array()
        .unwrap();
    assert!(!violations.is_empty());
    // Fix the unknown field: both value problems are listed at once.
    config["gemini"].as_object_mut().unwrap().remove("bogus");
    let (status, body, _) = a
        .admin(Method::PUT, "/api/config", &config.to_string())
        .await;
    assert_eq!(status, 400);
    let fields: Vec<_> = body["error"]["details"][0]["fieldViolations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        fields.contains(&"gemini.timeout_seconds".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"gemini.api_keys[1].weight".to_string()),
        "{fields:?}"
    );
    assert_eq!(std::fs::read_to_string(&a.path).unwrap(), before_file);
    assert_eq!(a.gateway().versions().version(), 1);
    assert_eq!(a.gateway().live().config.gemini.timeout_seconds, 600);
    assert_eq!(a.generate().await, 200);
}

#[tokio::test]
async fn history_and_rollback() {
    let a = Admin::start().await;
    let (_, mut config, _) = a.admin(Method::GET, "/api/config", "").await;
    config["gemini"]["timeout_seconds"] = 77.into();
    a.admin(Method::PUT, "/api/config", &config.to_string())
        .await;
    let (_, history, _) = a.admin(Method::GET, "/api/config/history", "").await;
    assert_eq!(history["current_version"], 2);
    assert_eq!(history["versions"][1]["who"], "admin-token");
    assert_eq!(
        history["versions"][1]["changes"][0],
        "gemini.timeout_seconds: 600 → 77"
    );

    let (status, applied, _) = a.admin(Method::POST, "/api/config/rollback/1", "").await;
    assert_eq!(status, 200);
    assert_eq!(applied["version"], 3);
    assert_eq!(a.gateway().live().config.gemini.timeout_seconds, 600);
    assert!(
        std::fs::read_to_string(&a.path)
            .unwrap()
            .contains("${TEST_KEY_1}")
    );
    let (status, _, _) = a.admin(Method::POST, "/api/config/rollback/99", "").await;
    assert_eq!(status, 404);
}

/// An edit on disk is picked up; a broken one is refused, reported in /health, and the running
/// config keeps serving. Paused time drives the watch.
#[tokio::test(start_paused = true)]
async fn edits_on_disk_are_applied_and_broken_ones_refused() {
    let a = Admin::start_with("", 2).await;
    let text = std::fs::read_to_string(&a.path).unwrap();
    std::fs::write(
        &a.path,
        text.replace("api_keys:", "timeout_seconds: 55\n  api_keys:"),
    )
    .unwrap();
    // Applied once it stayed the same across two polls (2 s apart).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(a.gateway().live().config.gemini.timeout_seconds, 55);
    assert_eq!(a.gateway().versions().history().last().unwrap().who, "file");

    std::fs::write(&a.path, "gemini: { api_keys: [] }\n").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(a.gateway().live().config.gemini.api_keys.len(), 2);
    let (_, health, _) = a.admin(Method::GET, "/health", "").await;
    assert_eq!(
        health["config"]["rejected_edit"]["problems"][0],
        "gemini.api_keys: at least one key is required"
    );
    assert_eq!(a.generate().await, 200);
}

#[tokio::test]
async fn keys_can_be_added_disabled_enabled_tested_and_deleted() {
    let a = Admin::start().await;
    let (status, _, text) = a
        .admin(Method::POST, "/api/keys", r#"{"keys":[{"id":"key3","key":"AIzaKEY3","weight":1},{"id":"key4","key":"AIzaKEY4"}]}"#)
        .await;
    assert_eq!(status, 200, "{text}");
    let (_, keys, text) = a.admin(Method::GET, "/api/keys", "").await;
    assert_eq!(keys.as_array().unwrap().len(), 4);
    assert!(!text.contains("AIzaKEY3"));
    a.mock.clear();
    for _ in 0..4 {
        a.generate().await;
    }
    assert!(
        a.keys_seen().contains(&"AIzaKEY3".to_string()),
        "{:?}",
        a.keys_seen()
    );

    // Duplicates are refused with the field named.
    let (status, body, _) = a
        .admin(
            Method::POST,
            "/api/keys",
            r#"{"id":"key3","key":"AIzaDUP"}"#,
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("duplicate id"), "{body}");

    let (status, _, _) = a.admin(Method::POST, "/api/keys/key3/disable", "").await;
    assert_eq!(status, 200);
    a.mock.clear();
    for _ in 0..6 {
        a.generate().await;
    }
    assert!(!a.keys_seen().contains(&"AIzaKEY3".to_string()));
    let (_, keys, _) = a.admin(Method::GET, "/api/keys", "").await;
    assert_eq!(keys[2]["state"], "disabled");
    a.admin(Method::POST, "/api/keys/key3/enable", "").await;

    let (status, test, _) = a.admin(Method::POST, "/api/keys/key3/test", "").await;
    assert_eq!(status, 200);
    assert_eq!(test["result"], "valid");
    a.mock
        .set_key_failure("AIzaKEY4", Some(gem_proxy_mock::Failure::InvalidKey));
    let (_, test, _) = a.admin(Method::POST, "/api/keys/key4/test", "").await;
    assert_eq!(test["result"], "invalid");
    a.mock.set_key_failure(
        "AIzaKEY4",
        Some(gem_proxy_mock::Failure::RateLimited {
            retry_delay_seconds: Some(5),
            per_day: false,
        }),
    );
    let (_, test, _) = a.admin(Method::POST, "/api/keys/key4/test", "").await;
    assert_eq!(test["result"], "quota_exhausted");

    let (status, _, _) = a.admin(Method::DELETE, "/api/keys/key4", "").await;
    assert_eq!(status, 200);
    let (status, _, _) = a.admin(Method::DELETE, "/api/keys/key4", "").await;
    assert_eq!(status, 404);
    assert!(!std::fs::read_to_string(&a.path).unwrap().contains("key4"));
}

#[tokio::test]
async fn tokens_are_issued_and_revoked_end_to_end() {
    let a = Admin::start_with("", 2).await;
    a.require_client_tokens().await;

    let (status, issued, _) = a
        .admin(
            Method::POST,
            "/api/tokens",
            r#"{"sub":"team-a","ttl":"1h","models":["gemini-2.5-*"],"rpm":100}"#,
        )
        .await;
    assert_eq!(status, 200);
    let token = issued["token"].as_str().unwrap().to_owned();
    let jti = issued["jti"].as_str().unwrap().to_owned();
    let call = |token: String| {
        let url = format!("http://{}{FLASH}", a.server.proxy_addr());
        let client = a.client.clone();
        async move {
            let req = Request::post(url)
                .header("x-goog-api-key", token)
                .body(Full::new(Bytes::from_static(GENERATE_BODY.as_bytes())))
                .unwrap();
            client.request(req).await.unwrap().status()
        }
    };
    assert_eq!(call(token.clone()).await, 200);

    let (status, _, _) = a
        .admin(
            Method::POST,
            "/api/tokens/revoke",
            &format!(r#"{{"jti":"{jti}"}}"#),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(call(token).await, 401);
    assert!(std::fs::read_to_string(&a.path).unwrap().contains(&jti));
    let (status, _, _) = a
        .admin(Method::POST, "/api/tokens", r#"{"sub":"x","role":"root"}"#)
        .await;
    assert_eq!(status, 400);
}

/// The claims of a JWT, read without checking it.
fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[tokio::test]
async fn a_token_issued_with_live_sessions_carries_the_claim_and_bounds_the_client() {
    let a = Admin::start().await;
    a.require_client_tokens().await;
    for (bad, why) in [
        ("-1", "negative"),
        (r#""two""#, "not a number"),
        ("1.5", "not whole"),
    ] {
        let body = format!(r#"{{"sub":"live-app","live_sessions":{bad}}}"#);
        let (status, err, text) = a.admin(Method::POST, "/api/tokens", &body).await;
        assert_google_error(status, text.as_bytes(), 400, "INVALID_ARGUMENT");
        let violations = err["error"]["details"][0]["fieldViolations"].clone();
        assert_eq!(violations[0]["field"], "live_sessions", "{why}: {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("live_sessions"),
            "{why}: {err}"
        );
    }

    let (status, issued, text) = a
        .admin(
            Method::POST,
            "/api/tokens",
            r#"{"sub":"live-app","ttl":"1h","live_sessions":1}"#,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let token = issued["token"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&token)["live_sessions"], 1);

    let live = format!(
        "ws://{}/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
        a.server.proxy_addr()
    );
    let open = || async {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                live.as_str(),
            )
            .unwrap();
        req.headers_mut()
            .insert("x-goog-api-key", token.parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(a.server.proxy_addr())
            .await
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        within("handshake", tokio_tungstenite::client_async(req, tcp)).await
    };
    let (mut first, res) = open().await.expect("the first session opens");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let setup = r#"{"setup":{"model":"models/gemini-live-2.5-flash"}}"#;
        first.send(Message::text(setup)).await.unwrap();
        let reply = match within("setupComplete", first.next()).await {
            Some(Ok(Message::Binary(b))) => json(&b),
            Some(Ok(Message::Text(t))) => json(t.as_bytes()),
            other => panic!("expected setupComplete, got {other:?}"),
        };
        assert_eq!(reply, serde_json::json!({"setupComplete": {}}));
    }
    match open().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let status = res.status();
            let body = res.into_body().unwrap_or_default();
            assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
        }
        Ok(_) => panic!("a second session over the token's live_sessions was accepted"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let a = Admin::start().await;
    let (status, doc, _) = a.api(Method::GET, "/api/openapi.json", None, "").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (method, path) in ROUTES {
        let path = path
            .replace("/rollback/1", "/rollback/{version}")
            .replace("key1", "{id}");
        assert!(
            doc["paths"][&path][method.to_lowercase()].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn readiness_follows_the_keys() {
    let a = Admin::start().await;
    let (status, _, _) = a.api(Method::GET, "/health/ready", None, "").await;
    assert_eq!(status, 200);
    a.admin(Method::POST, "/api/keys/key1/disable", "").await;
    a.admin(Method::POST, "/api/keys/key2/disable", "").await;
    let (status, body, _) = a.api(Method::GET, "/health/ready", None, "").await;
    assert_eq!(status, 503, "{body}");
    let (status, _, _) = a.api(Method::GET, "/health/live", None, "").await;
    assert_eq!(status, 200);
}

/// Key ids may hold any character: clients percent-encode them in the path.
#[tokio::test]
async fn key_ids_are_percent_decoded_in_paths() {
    let a = Admin::start().await;
    let (status, _, text) = a
        .admin(
            Method::POST,
            "/api/keys",
            r#"{"id":"team a/1","key":"AIzaKEY5"}"#,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let (status, key, _) = a
        .admin(Method::POST, "/api/keys/team%20a%2F1/disable", "")
        .await;
    assert_eq!(status, 200);
    assert_eq!(key["id"], "team a/1");
    assert_eq!(key["state"], "disabled");
    let (status, _, _) = a.admin(Method::DELETE, "/api/keys/team%20a%2F1", "").await;
    assert_eq!(status, 200);
}

/// A known path with the wrong method is a 405 that names the right ones; an unknown path a 404.
#[tokio::test]
async fn a_wrong_method_is_405_and_an_unknown_path_404() {
    let a = Admin::start().await;
    let (status, body, _) = a.admin(Method::DELETE, "/api/config", "").await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["error"]["code"], 405);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("GET, PUT"), "{message}");
    let (status, _, _) = a.admin(Method::GET, "/api/keys/a/enable", "").await;
    assert_eq!(status, 405);
    let (status, _, _) = a.admin(Method::GET, "/api/nothing-here", "").await;
    assert_eq!(status, 404);
    // The running config is untouched.
    let (status, _, _) = a.admin(Method::GET, "/api/config", "").await;
    assert_eq!(status, 200);
}
