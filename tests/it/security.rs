//! Hardening against the attacks of an outside review: admin takeover with auth off, one client
//! reading another's files, secrets pulled out of the environment through the admin API, and
//! requests that slip past the token's model policy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use gem_proxy::auth::unix_now;
use gem_proxy::config::document::ConfigDocument;
use gem_proxy::config::{Config, ConfigLoader, Secret};
use gem_proxy::gateway::{Gateway, Live};
use gem_proxy::server::Server;
use gem_proxy_mock::{MockOptions, MockUpstream};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef-security";
const ADMIN_TOKEN: &str = "admin-token-0123456789";
/// The original project's example secret.
const SEED_SECRET: &str = "your-jwt-secret-here";

/// The attacker's token: an admin JWT signed with a secret they know.
fn self_signed_admin_jwt(secret: &str) -> String {
    let claims = json!({ "sub": "x", "role": "admin", "exp": unix_now() + 600 });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A client token signed with [`SECRET`].
fn token(sub: &str, models: &[&str]) -> String {
    client_token(SECRET, sub, models)
}

fn with_auth(c: &mut Config) {
    c.auth.enabled = true;
    c.auth.jwt_secret = Secret::new(SECRET);
}

/// A gateway on `config` as it is: built without validation, the way a config that slipped past
/// it (or one validated by an older release) would run.
async fn serve_unvalidated(config: Config) -> Server {
    Server::start_gateway(Gateway::new(Live::build(config).unwrap()))
        .await
        .unwrap()
}

async fn admin_get(server: &Server, path: &str, credential: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::get(format!("http://{}{path}", server.admin_addr().unwrap()));
    if let Some(c) = credential {
        req = req.header("authorization", format!("Bearer {c}"));
    }
    let res = http1_client()
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (status, _, body) = read_all(res).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

const SEED_CONFIG: &str = r#"
server:
  host: "0.0.0.0"
  port: 8080
gemini:
  base_url: "https://generativelanguage.googleapis.com"
  timeout_seconds: 30
  api_keys:
    - id: "key1"
      key: "AIzaSyXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
      weight: 100
      max_requests_per_minute: 60
auth:
  enabled: false
  jwt_secret: "your-jwt-secret-here"
  rate_limit_per_minute: 100
metrics:
  enabled: true
  prometheus_port: 9090
"#;

/// Finding 1, the exact attack: the seed's config (auth off, the README's example secret) and
/// an admin JWT the attacker signed with that secret. The config is refused at start-up, and even
/// a gateway running it does not let the token near `/api/config`.
#[tokio::test]
async fn a_self_signed_admin_jwt_never_reaches_the_config_with_auth_off() {
    let err = ConfigLoader::default()
        .load_str(SEED_CONFIG)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("auth.jwt_secret: is a published example value"),
        "{err}"
    );
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    for secret in [SEED_SECRET, SECRET] {
        let mut config = test_config(&mock.base_url());
        config.auth.enabled = false;
        config.auth.jwt_secret = Secret::new(secret);
        config.admin.token = Secret::new(ADMIN_TOKEN);
        let server = serve_unvalidated(config).await;
        let attack = self_signed_admin_jwt(secret);
        let (status, body) = admin_get(&server, "/api/config", Some(&attack)).await;
        assert_eq!(status, 401, "secret {secret:?}: {body}");
        assert!(!body.contains("api_keys"), "{body}");
        // The operator's own credential still works.
        let (status, _) = admin_get(&server, "/api/config", Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200);
    }
    // With auth on, the same kind of token signed with the real secret is an admin.
    let mut config = test_config(&mock.base_url());
    with_auth(&mut config);
    let server = serve_unvalidated(config).await;
    let (status, _) = admin_get(&server, "/api/config", Some(&self_signed_admin_jwt(SECRET))).await;
    assert_eq!(status, 200);
    // ...but not with the example secret, even with auth on (a config that skipped validation).
    let mut config = test_config(&mock.base_url());
    config.auth.enabled = true;
    config.auth.jwt_secret = Secret::new(SEED_SECRET);
    let server = serve_unvalidated(config).await;
    let (status, _) = admin_get(
        &server,
        "/api/config",
        Some(&self_signed_admin_jwt(SEED_SECRET)),
    )
    .await;
    assert_eq!(status, 401);
}

/// Finding 1: guessing is slow. After `admin.max_failed_sign_ins_per_minute` wrong credentials
/// from one address, even the right one is refused with 429 until the minute is over.
#[tokio::test(start_paused = true)]
async fn failed_admin_sign_ins_are_limited_per_address() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.admin.token = Secret::new(ADMIN_TOKEN);
        c.admin.max_failed_sign_ins_per_minute = 3;
    })
    .await;
    for i in 0..3 {
        let (status, _) = admin_get(
            &h.server,
            "/api/keys",
            Some(&format!("guess-{i}-0123456789")),
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, body) = admin_get(&h.server, "/api/keys", Some(ADMIN_TOKEN)).await;
    assert_google_error(status, body.as_bytes(), 429, "RESOURCE_EXHAUSTED");
    // No credential at all is not a guess, and is not counted either.
    tokio::time::advance(Duration::from_secs(61)).await;
    let (status, _) = admin_get(&h.server, "/api/keys", None).await;
    assert_eq!(status, 401);
    let (status, _) = admin_get(&h.server, "/api/keys", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
}

/// Finding 4: the token allows flash only; paths that Google (or a proxy before it) could
/// normalise into pro are refused before anything is forwarded.
#[tokio::test]
async fn paths_that_could_name_another_model_are_refused() {
    let h = Harness::start_with(MockOptions::default(), with_auth).await;
    let flash_only = token("team-a", &["gemini-2.5-flash"]);
    let call = |path: &str| {
        let mut req = request(Method::POST, &h.url(path), GENERATE_BODY);
        req.headers_mut()
            .insert("x-goog-api-key", flash_only.parse().unwrap());
        h.call(req)
    };
    for path in [
        "/v1beta/models/gemini-2.5-flash/../gemini-2.5-pro:generateContent",
        "/v1beta/models/gemini-2.5-flash/%2e%2e/gemini-2.5-pro:generateContent",
        "/v1beta/models/gemini-2.5-flash/%2E%2E/gemini-2.5-pro:generateContent",
        "/v1beta/models/gemini-2.5-flash%2F..%2Fgemini-2.5-pro:generateContent",
        "/v1beta/models/gemini-2.5-flash%2f%2e%2e%2fgemini-2.5-pro:generateContent",
        "/v1beta/models//gemini-2.5-pro:generateContent",
    ] {
        let (status, _, body) = call(path).await;
        assert_google_error(status, &body, 400, "INVALID_ARGUMENT");
    }
    assert!(h.mock.requests().is_empty(), "nothing was forwarded");
    // An encoded model name is checked decoded, as Google reads it.
    let (status, _, body) = call("/v1beta/models/gemini-2.5-%70ro:generateContent").await;
    assert_google_error(status, &body, 403, "PERMISSION_DENIED");
    let (status, _, _) = call("/v1beta/models/gemini-2.5-flash:generateContent").await;
    assert_eq!(status, 200);
}

/// Finding 4: a body naming its model twice (or in a way serde would read differently from
/// Google) is refused, not forwarded unchecked.
#[tokio::test]
async fn a_body_naming_its_model_twice_is_refused() {
    let h = Harness::start_with(MockOptions::default(), with_auth).await;
    let flash_only = token("team-a", &["gemini-2.5-flash"]);
    let chat = |body: &str| {
        let mut req = request(
            Method::POST,
            &h.url("/v1beta/openai/chat/completions"),
            body,
        );
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {flash_only}").parse().unwrap(),
        );
        h.call(req)
    };
    let messages = r#""messages":[{"role":"user","content":"hi"}]"#;
    for body in [
        format!(r#"{{"model":"gemini-2.5-flash","model":"gemini-2.5-pro",{messages}}}"#),
        format!(r#"{{"model":"gemini-2.5-pro","model":"gemini-2.5-flash",{messages}}}"#),
        format!(r#"{{"model":"gemini-2.5-flash","mod\u0065l":"gemini-2.5-pro",{messages}}}"#),
        format!(r#"{{"model":["gemini-2.5-pro"],{messages}}}"#),
        format!(r#"{{"model":"gemini-2.5-flash",{messages}}}{{"model":"gemini-2.5-pro"}}"#),
    ] {
        let (status, _, answer) = chat(&body).await;
        assert_google_error(status, &answer, 400, "INVALID_ARGUMENT");
    }
    assert!(h.mock.requests().is_empty(), "nothing was forwarded");
    let (status, _, _) = chat(&format!(r#"{{"model":"gemini-2.5-pro",{messages}}}"#)).await;
    assert_eq!(status, 403);
    let (status, _, body) = chat(&format!(r#"{{"model":"gemini-2.5-flash",{messages}}}"#)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

fn as_client(mut req: Request<Full<Bytes>>, token: &str) -> Request<Full<Bytes>> {
    req.headers_mut()
        .insert("x-goog-api-key", token.parse().unwrap());
    req
}

/// Finding 2: with auth on, a client sees, reads, uses and deletes only the files and cached
/// contents it created; every other one is Google's 404, and listings show only its own.
#[tokio::test]
async fn clients_see_only_their_own_files_and_cached_contents() {
    let h = Harness::start_with(MockOptions::default(), with_auth).await;
    let (a, b) = (token("team-a", &[]), token("team-b", &[]));
    let upload = |who: &str| {
        let req = Request::post(h.url("/upload/v1beta/files"))
            .header("x-goog-upload-protocol", "raw")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        h.call(as_client(req, who))
    };
    let (status, _, body) = upload(&a).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let file = json(&body)["file"]["name"].as_str().unwrap().to_owned();
    let (status, _, body) = upload(&b).await;
    assert_eq!(status, 200);
    let b_file = json(&body)["file"]["name"].as_str().unwrap().to_owned();

    let (status, _, body) = h
        .call(as_client(
            request(
                Method::POST,
                &h.url("/v1beta/cachedContents"),
                r#"{"model":"models/gemini-2.5-flash","contents":[]}"#,
            ),
            &a,
        ))
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let cache = json(&body)["name"].as_str().unwrap().to_owned();

    let seen_before = h.mock.requests().len();
    for (method, path, body) in [
        (Method::GET, format!("/v1beta/{file}"), String::new()),
        (Method::DELETE, format!("/v1beta/{file}"), String::new()),
        (Method::GET, format!("/v1beta/{cache}"), String::new()),
        (Method::DELETE, format!("/v1beta/{cache}"), String::new()),
        (
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent".to_owned(),
            format!(r#"{{"cachedContent":"{cache}","contents":[]}}"#),
        ),
        (
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent".to_owned(),
            format!(
                r#"{{"contents":[{{"parts":[{{"fileData":{{"fileUri":"https://generativelanguage.googleapis.com/v1beta/{file}"}}}}]}}]}}"#
            ),
        ),
        // Unknown to the gateway: nobody can show it is theirs.
        (
            Method::GET,
            "/v1beta/files/never-created".to_owned(),
            String::new(),
        ),
    ] {
        let (status, _, answer) = h
            .call(as_client(request(method.clone(), &h.url(&path), &body), &b))
            .await;
        assert_google_error(status, &answer, 404, "NOT_FOUND");
        assert!(
            !String::from_utf8_lossy(&answer).contains("hello"),
            "{method} {path}"
        );
    }
    assert_eq!(
        h.mock.requests().len(),
        seen_before,
        "nothing was forwarded"
    );

    // A resumable upload another client started is not theirs to finish.
    let start = Request::post(h.url("/upload/v1beta/files"))
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", "5")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let (status, headers, _) = h.call(as_client(start, &a)).await;
    assert_eq!(status, 200);
    let upload_url = headers["x-goog-upload-url"].to_str().unwrap().to_owned();
    let finish = |who: &str| {
        let req = Request::post(upload_url.as_str())
            .header("x-goog-upload-command", "upload, finalize")
            .header("x-goog-upload-offset", "0")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        h.call(as_client(req, who))
    };
    // The upload URL carries a's capability: b's token beside it is refused outright.
    let (status, _, answer) = finish(&b).await;
    assert_google_error(status, &answer, 403, "PERMISSION_DENIED");
    let (status, _, answer) = finish(&a).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));

    // The owner still has everything.
    let (status, _, _) = h
        .call(as_client(
            request(Method::GET, &h.url(&format!("/v1beta/{file}")), ""),
            &a,
        ))
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = h
        .call(as_client(
            request(Method::GET, &h.url(&format!("/v1beta/{cache}")), ""),
            &a,
        ))
        .await;
    assert_eq!(status, 200);

    // Listings, merged over both keys, show each client its own only.
    let h = &h;
    let list = |who: &str, what: &'static str| {
        let req = as_client(
            request(Method::GET, &h.url(&format!("/v1beta/{what}")), ""),
            who,
        );
        async move {
            let (status, _, body) = h.call(req).await;
            assert_eq!(status, 200);
            let v = json(&body);
            v[what]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|i| i["name"].as_str().unwrap().to_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    let a_files = list(&a, "files").await;
    assert!(
        a_files.contains(&file) && !a_files.contains(&b_file),
        "{a_files:?}"
    );
    assert_eq!(
        a_files.len(),
        2,
        "the file and the finished upload: {a_files:?}"
    );
    assert_eq!(list(&b, "files").await, [b_file]);
    assert_eq!(list(&a, "cachedContents").await, [cache]);
    assert!(list(&b, "cachedContents").await.is_empty());
    let (status, _, _) = h
        .call(as_client(
            request(Method::DELETE, &h.url(&format!("/v1beta/{file}")), ""),
            &a,
        ))
        .await;
    assert_eq!(status, 200);
}

/// The admin harness: a gateway started from a config file whose key comes from the
/// environment.
struct FromFile {
    server: Server,
    _mock: MockUpstream,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

const ENV_KEY: &str = "AIzaFROMTHEENVIRONMENT";

impl FromFile {
    async fn start(extra: &str) -> FromFile {
        let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        let yaml = format!(
            r#"server: {{ host: "127.0.0.1", port: 0, workers: 1 }}
gemini:
  base_url: "{}"
  api_keys:
    - {{ id: "key1", key: "${{GEMINI_API_KEY_1}}", weight: 1 }}
metrics: {{ enabled: true, prometheus_port: 0 }}
admin: {{ token: "{ADMIN_TOKEN}", config_watch_interval_seconds: 0 }}
{extra}"#,
            mock.base_url()
        );
        std::fs::write(&path, &yaml).unwrap();
        let loader = ConfigLoader::with_env([("GEMINI_API_KEY_1", ENV_KEY)]);
        let config = loader.load_file(&path).unwrap();
        let gateway = Gateway::new(Live::build(config).unwrap());
        gateway.set_config_source(
            Some(path.clone()),
            loader,
            ConfigDocument::from_yaml(&yaml).unwrap(),
        );
        FromFile {
            server: Server::start_gateway(gateway).await.unwrap(),
            _mock: mock,
            path,
            _dir: dir,
        }
    }

    fn gateway(&self) -> &Arc<Gateway> {
        self.server.gateway()
    }

    async fn admin(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, http::HeaderMap, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!(
                "http://{}{path}",
                self.server.admin_addr().unwrap()
            ))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = http1_client()
            .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
            .await
            .unwrap();
        let (status, headers, body) = read_all(res).await;
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Finding 3: an admin cannot make the gateway expand `${GEMINI_API_KEY_1}` in a field it
/// shows; the secret never comes back through `/api/keys`, the history or `/health`.
#[tokio::test]
async fn an_admin_cannot_read_an_environment_secret_back() {
    let f = FromFile::start("").await;
    let reference = "${GEMINI_API_KEY_1}";
    let attempts = [
        (
            Method::POST,
            "/api/keys",
            json!({ "id": "probe", "key": "AIzaPROBE", "label": reference }).to_string(),
        ),
        (
            Method::POST,
            "/api/keys",
            json!({ "id": "probe", "key": "AIzaPROBE", "notes": reference }).to_string(),
        ),
        (
            Method::POST,
            "/api/keys",
            json!({ "id": reference, "key": "AIzaPROBE" }).to_string(),
        ),
    ];
    for (method, path, body) in attempts {
        let (status, _, answer) = f.admin(method, path, &[], &body).await;
        assert_google_error(status, answer.as_bytes(), 400, "INVALID_ARGUMENT");
        assert!(!answer.contains(ENV_KEY), "{answer}");
    }
    // The same through a whole-config PUT.
    let (_, _, config) = f.admin(Method::GET, "/api/config", &[], "").await;
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["gemini"]["api_keys"][0]["notes"] = reference.into();
    config["gemini"]["base_url"] = reference.into();
    let (status, _, answer) = f
        .admin(Method::PUT, "/api/config", &[], &config.to_string())
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(!answer.contains(ENV_KEY), "{answer}");
    // A type error does not repeat the value it refused either.
    let (status, _, answer) = f
        .admin(
            Method::POST,
            "/api/keys",
            &[],
            &json!({ "id": "n", "key": "AIzaPROBE", "weight": "AIzaSECRETINWRONGPLACE" })
                .to_string(),
        )
        .await;
    assert_eq!(status, 400);
    assert!(!answer.contains("AIzaSECRETINWRONGPLACE"), "{answer}");
    for path in ["/api/keys", "/api/config", "/api/config/history", "/health"] {
        let (status, _, answer) = f.admin(Method::GET, path, &[], "").await;
        assert_eq!(status, 200);
        assert!(!answer.contains(ENV_KEY), "{path}: {answer}");
    }
    assert_eq!(f.gateway().versions().version(), 1, "nothing changed");
    // The key itself still comes from the environment, and stays a reference on disk.
    assert_eq!(
        f.gateway().live().config.gemini.api_keys[0].key.expose(),
        ENV_KEY
    );
    assert!(
        std::fs::read_to_string(&f.path)
            .unwrap()
            .contains("${GEMINI_API_KEY_1}")
    );
}

/// Finding 10: many admins adding keys at once lose none of them; a write with a stale
/// `If-Match` is refused with 412 and changes nothing.
#[tokio::test]
async fn concurrent_admin_writes_lose_nothing_and_stale_ones_are_refused() {
    let f = Arc::new(FromFile::start("").await);
    let (status, headers, _) = f.admin(Method::GET, "/api/config", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["etag"], "\"1\"");
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move {
                let body = json!({ "id": format!("k{i}"), "key": format!("AIzaK{i}") });
                f.admin(Method::POST, "/api/keys", &[], &body.to_string())
                    .await
                    .0
            })
        })
        .collect();
    for w in writers {
        assert_eq!(w.await.unwrap(), 200);
    }
    let ids: Vec<String> = f
        .gateway()
        .live()
        .config
        .gemini
        .api_keys
        .iter()
        .map(|k| k.id.clone())
        .collect();
    assert_eq!(ids.len(), 9, "{ids:?}");
    assert_eq!(f.gateway().versions().version(), 9);

    // A PUT made from what the admin read at version 1 is stale now.
    let (_, _, config) = f.admin(Method::GET, "/api/config", &[], "").await;
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["gemini"]["timeout_seconds"] = 77.into();
    for (path, method, body) in [
        ("/api/config", Method::PUT, config.to_string()),
        ("/api/keys/k1", Method::DELETE, String::new()),
        ("/api/config/rollback/1", Method::POST, String::new()),
        ("/api/keys/k2/disable", Method::POST, String::new()),
    ] {
        let (status, _, answer) = f.admin(method, path, &[("if-match", "\"1\"")], &body).await;
        assert_google_error(status, answer.as_bytes(), 412, "FAILED_PRECONDITION");
    }
    assert_eq!(f.gateway().versions().version(), 9);
    assert_eq!(
        key_state(&f, "k2"),
        "active",
        "a refused disable leaves the key alone"
    );
    let (status, headers, _) = f
        .admin(
            Method::PUT,
            "/api/config",
            &[("if-match", "\"9\"")],
            &config.to_string(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["etag"], "\"10\"");
    assert_eq!(f.gateway().live().config.gemini.timeout_seconds, 77);
}

fn key_state(f: &FromFile, id: &str) -> &'static str {
    f.gateway()
        .store()
        .status(id, tokio::time::Instant::now())
        .state
}

/// Finding 11: a key disabled through the API comes back when a rollback re-enables it; a key
/// marked invalid is usable once its value is replaced under the same id.
#[tokio::test]
async fn rollbacks_re_enable_and_new_values_clear_invalid() {
    let f = FromFile::start("").await;
    let (status, _, _) = f
        .admin(Method::POST, "/api/keys/key1/disable", &[], "")
        .await;
    assert_eq!(status, 200);
    assert_eq!(key_state(&f, "key1"), "disabled");
    let (status, _, answer) = f
        .admin(Method::POST, "/api/config/rollback/1", &[], "")
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(f.gateway().live().config.gemini.api_keys[0].enabled);
    assert_eq!(key_state(&f, "key1"), "active");
    let (_, _, keys) = f.admin(Method::GET, "/api/keys", &[], "").await;
    let keys: serde_json::Value = serde_json::from_str(&keys).unwrap();
    assert_eq!(keys[0]["state"], "active", "{keys}");

    f.gateway().store().invalidate("key1", "API_KEY_INVALID");
    let (_, _, config) = f.admin(Method::GET, "/api/config", &[], "").await;
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    // The same value again is no replacement.
    let (status, _, _) = f
        .admin(Method::PUT, "/api/config", &[], &config.to_string())
        .await;
    assert_eq!(status, 200);
    assert_eq!(key_state(&f, "key1"), "invalid");
    config["gemini"]["api_keys"][0]["key"] = "AIzaREPLACEMENT".into();
    let (status, _, answer) = f
        .admin(Method::PUT, "/api/config", &[], &config.to_string())
        .await;
    assert_eq!(status, 200, "{answer}");
    let applied: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        applied["changes"],
        json!(["gemini.api_keys[key1].key: changed"])
    );
    assert!(!answer.contains("AIzaREPLACEMENT"));
    assert_eq!(key_state(&f, "key1"), "active");
}

/// Finding 5: with `admin.protect_observability`, `/errors` and the per-client series of
/// `/metrics` need the admin credential; everything else stays open to probes and scrapers.
#[tokio::test]
async fn observability_can_be_put_behind_the_admin_credential() {
    for protect in [false, true] {
        let h = Harness::start_with(MockOptions::default(), |c| {
            with_auth(c);
            c.metrics.per_client = true;
            c.admin.token = Secret::new(ADMIN_TOKEN);
            c.admin.protect_observability = protect;
        })
        .await;
        let req = as_client(
            request(
                Method::POST,
                &h.url("/v1beta/models/gemini-2.5-flash:generateContent"),
                GENERATE_BODY,
            ),
            &token("team-secret-name", &[]),
        );
        assert_eq!(h.call(req).await.0, 200);
        let (status, metrics) = admin_get(&h.server, "/metrics", None).await;
        assert_eq!(status, 200);
        assert_eq!(metrics.contains("team-secret-name"), !protect, "{metrics}");
        assert!(metrics.contains("gem_proxy_requests_total"));
        let (status, metrics) = admin_get(&h.server, "/metrics", Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200);
        assert!(metrics.contains("team-secret-name"), "{metrics}");
        let (status, _) = admin_get(&h.server, "/errors", None).await;
        assert_eq!(status, if protect { 401 } else { 200 });
        let (status, _) = admin_get(&h.server, "/errors", Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200);
        let (status, _) = admin_get(&h.server, "/health", None).await;
        assert_eq!(status, 200);
    }
}

/// Finding 5: an `http://` JWKS URL lets whoever is on the way sign any token: refused unless
/// the operator says so.
#[test]
fn an_http_jwks_url_needs_an_explicit_yes() {
    let yaml = |allow: bool| {
        format!(
            "gemini: {{ api_keys: [{{ id: a, key: k }}] }}\nauth: {{ enabled: true, jwt_secret: \"{SECRET}\", jwks_url: \"http://idp.internal/jwks\", allow_insecure_jwks_url: {allow} }}\n"
        )
    };
    let err = ConfigLoader::default()
        .load_str(&yaml(false))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("auth.jwks_url: must be https://"), "{err}");
    assert!(ConfigLoader::default().load_str(&yaml(true)).is_ok());
}
