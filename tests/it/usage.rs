//! The usage history and token budgets, black-box: traffic through the real stack against the
//! mock, read back through the admin API; a restart on the same file; a stalled disk; budgets.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    GENERATE_BODY, HttpClient, assert_google_error, http1_client, json, read_all, within,
};
use bytes::Bytes;
use gem_proxy::config::{Config, ConfigLoader};
use gem_proxy::gateway::{Gateway, Live};
use gem_proxy::server::Server;
use gem_proxy_mock::{
    CANDIDATES_TOKEN_COUNT, Failure, MockOptions, MockUpstream, PROMPT_TOKEN_COUNT,
    THOUGHTS_TOKEN_COUNT, TOTAL_TOKEN_COUNT,
};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const JWT_SECRET: &str = "jwt-secret-0123456789abcdefghijklmnop";
const KEYS: [(&str, &str); 3] = [
    ("key1", "AIzaUSAGEKEY1"),
    ("key2", "AIzaUSAGEKEY2"),
    ("key3", "AIzaUSAGEKEY3"),
];

pub(crate) fn config(base_url: &str, db: &Path, extra: &str) -> Config {
    let keys: String = KEYS
        .iter()
        .map(|(id, key)| format!("    - {{ id: \"{id}\", key: \"{key}\" }}\n"))
        .collect();
    let yaml = format!(
        r#"
server: {{ host: "127.0.0.1", port: 0, workers: 1, shutdown_grace_seconds: 5 }}
gemini:
  base_url: "{base_url}"
  max_retries: 2
  api_keys:
{keys}
metrics: {{ enabled: true, prometheus_port: 0 }}
admin: {{ token: "{ADMIN_TOKEN}", config_watch_interval_seconds: 0 }}
auth: {{ enabled: true, jwt_secret: "{JWT_SECRET}" }}
usage:
  path: "{}"
  flush_interval_milliseconds: 20
  prices:
    - {{ model: "gemini-2.5-pro*", input_per_million: 1.25, output_per_million: 10, cached_per_million: 0.31 }}
    - {{ model: "gemini-2.5-flash*", input_per_million: 0.3, output_per_million: 2.5 }}
{extra}
"#,
        db.display()
    );
    ConfigLoader::default()
        .load_str(&yaml)
        .expect("test config is valid")
}

pub(crate) struct Gw {
    pub(crate) server: Server,
    client: HttpClient,
}

impl Gw {
    pub(crate) async fn start(config: Config) -> Gw {
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        let usage = config.usage.clone();
        let gateway = Gateway::new(Live::build(config).expect("config builds"));
        gateway.usage().start(&usage, None).expect("usage starts");
        gateway.usage().share(&usage, &gateway.live().config.state);
        let server = Server::start_gateway(gateway)
            .await
            .expect("gateway starts");
        Gw {
            server,
            client: http1_client(),
        }
    }

    fn gateway(&self) -> &Arc<Gateway> {
        self.server.gateway()
    }

    pub(crate) fn token(&self, sub: &str, tpd: Option<u64>) -> String {
        gem_proxy::auth::issue(
            &self.gateway().live().config.auth,
            &gem_proxy::auth::TokenRequest {
                sub: sub.into(),
                ttl: Duration::from_secs(600),
                models: vec![],
                rpm: None,
                tpm: None,
                tpd,
                live_sessions: None,
                role: gem_proxy::auth::Role::Client,
            },
            gem_proxy::auth::unix_now(),
        )
        .expect("token")
        .token
    }

    /// One proxied request; the status and body.
    pub(crate) async fn call(
        &self,
        token: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Bytes) {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}{path}", self.server.proxy_addr()))
            .header("content-type", "application/json")
            .header("x-goog-api-key", token);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req.body(Full::new(Bytes::from(GENERATE_BODY))).unwrap();
        let res = within("proxied request", self.client.request(req))
            .await
            .expect("gateway answers");
        let (status, _, body) = within("answer body", read_all(res)).await;
        (status, body)
    }

    pub(crate) async fn admin(
        &self,
        method: Method,
        path: &str,
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        let req = Request::builder()
            .method(method)
            .uri(format!(
                "http://{}{path}",
                self.server.admin_addr().expect("admin on")
            ))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = within("admin request", self.client.request(req))
            .await
            .expect("admin answers");
        within("admin body", read_all(res)).await
    }

    pub(crate) async fn usage(&self, query: &str) -> Value {
        let (status, _, body) = self
            .admin(Method::GET, &format!("/api/usage?{query}"))
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        json(&body)
    }

    /// Asks the writer to commit (off the runtime: it waits for the writer thread).
    async fn flush(&self) -> bool {
        let usage = self.gateway().usage().clone();
        tokio::task::spawn_blocking(move || usage.flush(Duration::from_secs(10)))
            .await
            .unwrap()
    }

    /// The report once it counts `requests` in all: an answer is reported when its body ends,
    /// which may be just after the client has read it.
    pub(crate) async fn settle(&self, query: &str, requests: u64) -> Value {
        within("the usage rows", async {
            loop {
                // (Refused while the writer's queue is full.)
                self.flush().await;
                let report = self.usage(query).await;
                if report["totals"]["requests"].as_u64() == Some(requests) {
                    return report;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    pub(crate) async fn stop(self) {
        assert!(self.flush().await);
        self.server.shutdown();
        self.server.wait().await;
    }
}

/// `name → (requests, total tokens)` of a report's groups.
pub(crate) fn by_group(report: &Value) -> BTreeMap<String, (u64, u64)> {
    report["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            let t = &g["totals"];
            (
                g["name"].as_str().unwrap().to_owned(),
                (
                    t["requests"].as_u64().unwrap(),
                    t["total_tokens"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

pub(crate) const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
pub(crate) const PRO: &str = "/v1beta/models/gemini-2.5-pro:generateContent";
const PRO_STREAM: &str = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse";

#[tokio::test]
async fn usage_by_key_model_and_client_is_exactly_what_was_sent_and_survives_a_restart() {
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let gw = Gw::start(config(&mock.base_url(), &db, "")).await;
    let (alice, bob) = (gw.token("alice", None), gw.token("bob", None));

    // alice: 4 flash + 2 streamed pro; bob: 3 pro and one the upstream refuses (400).
    for _ in 0..4 {
        assert_eq!(gw.call(&alice, FLASH, &[]).await.0, 200);
    }
    for _ in 0..2 {
        let (status, body) = gw.call(&alice, PRO_STREAM, &[]).await;
        assert_eq!(status, 200);
        assert!(body.starts_with(b"data: "));
    }
    for _ in 0..3 {
        assert_eq!(gw.call(&bob, PRO, &[]).await.0, 200);
    }
    assert_eq!(gw.call(&bob, PRO, &[("x-mock-error", "400")]).await.0, 400);
    let t = TOTAL_TOKEN_COUNT;
    let report = gw.settle("group_by=client", 10).await;
    assert_eq!(
        by_group(&report),
        BTreeMap::from([
            ("alice".to_owned(), (6, 6 * t)),
            ("bob".to_owned(), (4, 3 * t))
        ])
    );
    let totals = &report["totals"];
    assert_eq!(totals["requests"], 10);
    assert_eq!(totals["successes"], 9);
    assert_eq!(totals["client_errors"], 1);
    assert_eq!(totals["errors"], 1);
    assert_eq!(totals["input_tokens"], 9 * PROMPT_TOKEN_COUNT);
    assert_eq!(totals["output_tokens"], 9 * CANDIDATES_TOKEN_COUNT);
    assert_eq!(totals["thinking_tokens"], 9 * THOUGHTS_TOKEN_COUNT);
    assert!((totals["error_rate"].as_f64().unwrap() - 0.1).abs() < 1e-9);

    let by_model = by_group(&gw.usage("group_by=model").await);
    assert_eq!(
        by_model,
        BTreeMap::from([
            ("gemini-2.5-flash".to_owned(), (4, 4 * t)),
            ("gemini-2.5-pro".to_owned(), (6, 5 * t))
        ])
    );

    // Per key: exactly what the mock saw with each key.
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for r in mock.requests() {
        let id = KEYS
            .iter()
            .find(|(_, k)| r.key.as_deref() == Some(*k))
            .expect("a pool key")
            .0;
        *seen.entry(id.to_owned()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "all three keys carried traffic: {seen:?}");
    let by_key = by_group(&gw.usage("group_by=key").await);
    assert_eq!(
        by_key
            .iter()
            .map(|(k, (r, _))| (k.clone(), *r))
            .collect::<BTreeMap<_, _>>(),
        seen
    );
    assert_eq!(by_key.values().map(|(_, tok)| tok).sum::<u64>(), 9 * t);

    // Cost: pro at 1.25 / 10 per million, flash at 0.3 / 2.5; thinking is billed as output.
    let out = (CANDIDATES_TOKEN_COUNT + THOUGHTS_TOKEN_COUNT) as f64;
    let pro = 5.0 * (PROMPT_TOKEN_COUNT as f64 * 1.25 + out * 10.0) / 1e6;
    let flash = 4.0 * (PROMPT_TOKEN_COUNT as f64 * 0.3 + out * 2.5) / 1e6;
    let cost = report["totals"]["cost"].as_f64().unwrap();
    assert!((cost - (pro + flash)).abs() < 1e-12, "{cost}");

    // The summary ranks them.
    let (status, _, body) = gw.admin(Method::GET, "/api/usage/summary?window=1h").await;
    assert_eq!(status, 200);
    let summary = json(&body);
    assert_eq!(summary["clients"][0]["name"], "alice");
    assert_eq!(summary["clients"][0]["requests"], 6);
    assert_eq!(summary["models"][0]["name"], "gemini-2.5-pro");
    assert_eq!(summary["totals"]["requests"], 10);
    assert_eq!(summary["keys"].as_array().unwrap().len(), 3);

    // CSV: the same numbers, one line per client and minute.
    let (status, headers, body) = gw
        .admin(Method::GET, "/api/usage?group_by=client&step=1m&format=csv")
        .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[..3], ["time", "client", "requests"]);
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let mut csv: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let e = csv.entry(f[1].to_owned()).or_default();
        e.0 += f[col("requests")].parse::<u64>().unwrap();
        e.1 += f[col("total_tokens")].parse::<u64>().unwrap();
    }
    assert_eq!(csv, by_group(&report));

    // Restart on the same file: the history is still there.
    let before = gw.usage("group_by=client").await["groups"].clone();
    gw.stop().await;
    let gw = Gw::start(config(&mock.base_url(), &db, "")).await;
    assert_eq!(gw.usage("group_by=client").await["groups"], before);
    // And new traffic adds to it.
    let carol = gw.token("carol", None);
    assert_eq!(gw.call(&carol, FLASH, &[]).await.0, 200);
    let after = by_group(&gw.settle("group_by=client", 11).await);
    assert_eq!(after["carol"], (1, t));
    assert_eq!(after["alice"], (6, 6 * t));
}

#[tokio::test]
async fn key_events_record_rests_invalid_keys_and_operators() {
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::start(config(&mock.base_url(), &dir.path().join("u.db"), "")).await;
    let alice = gw.token("alice", None);
    mock.set_key_failure(
        KEYS[0].1,
        Some(Failure::RateLimited {
            retry_delay_seconds: Some(30),
            per_day: false,
        }),
    );
    mock.set_key_failure(KEYS[1].1, Some(Failure::InvalidKey));
    // key1 rests, key2 is taken out, key3 answers.
    assert_eq!(gw.call(&alice, FLASH, &[]).await.0, 200);
    assert_eq!(
        gw.admin(Method::POST, "/api/keys/key3/disable").await.0,
        200
    );
    assert_eq!(gw.admin(Method::POST, "/api/keys/key3/enable").await.0, 200);
    // The attempts are in the history too, with their error kinds.
    let totals = gw.settle("group_by=key", 3).await["totals"].clone();
    assert_eq!(totals["rate_limited"], 1);
    assert_eq!(totals["invalid"], 1);
    assert_eq!(totals["successes"], 1);

    let events = |id: &'static str| {
        let gw = &gw;
        async move {
            let (status, _, body) = gw
                .admin(Method::GET, &format!("/api/keys/{id}/events"))
                .await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            json(&body)["events"].clone()
        }
    };
    let key1 = events("key1").await;
    assert_eq!(key1.as_array().unwrap().len(), 1, "{key1}");
    assert_eq!(key1[0]["kind"], "rest");
    assert_eq!(key1[0]["reason"], "rate_limited");
    assert_eq!(key1[0]["model"], "gemini-2.5-flash");
    assert_eq!(key1[0]["seconds"], 30);
    let key2 = events("key2").await;
    assert_eq!(key2[0]["kind"], "invalid");
    assert_eq!(key2[0]["reason"], "API_KEY_INVALID");
    let key3 = events("key3").await;
    let kinds: Vec<&str> = key3
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["enabled", "disabled"], "newest first");
    assert_eq!(key3[0]["reason"], "by admin-token");

    let (status, _, body) = gw.admin(Method::GET, "/api/keys/nope/events").await;
    assert_google_error(status, &body, 404, "NOT_FOUND");
}

#[tokio::test]
async fn bad_usage_parameters_are_google_shaped_400s() {
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::start(config(&mock.base_url(), &dir.path().join("u.db"), "")).await;
    for query in [
        "/api/usage?step=2m",
        "/api/usage?group_by=colour",
        "/api/usage?from=yesterday",
        "/api/usage?from=200&to=100",
        "/api/usage?format=xml",
        "/api/usage?from=0&step=1m",
        "/api/usage?step=1m&step=1h",
        "/api/usage?nonsense=1",
        "/api/usage/summary?window=forever",
        "/api/usage/summary?window=%C2%80",
        "/api/usage/summary?window=1000d",
        "/api/keys/key1/events?from=soon",
    ] {
        let (status, _, body) = gw.admin(Method::GET, query).await;
        assert_google_error(status, &body, 400, "INVALID_ARGUMENT");
    }
    // RFC 3339 and epoch seconds both work; an empty history is an empty report.
    let report = gw
        .usage("from=2026-01-01T00:00:00Z&to=1767268800&step=1h")
        .await;
    assert_eq!(report["groups"], serde_json::json!([]));
    assert_eq!(report["step_seconds"], 3600);
    // Without an admin credential: 401.
    let req = Request::builder()
        .uri(format!(
            "http://{}/api/usage",
            gw.server.admin_addr().unwrap()
        ))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = read_all(gw.client.request(req).await.unwrap()).await;
    assert_google_error(status, &body, 401, "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_stalled_disk_never_blocks_requests_and_drops_rows_with_a_count() {
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let gw = Gw::start(config(&mock.base_url(), &db, "  queue_capacity: 4")).await;
    let alice = gw.token("alice", None);
    // The writer is up (it made the file); now the database is held under an exclusive lock, so
    // every write it tries waits (and then fails) as on a stalled disk.
    assert!(gw.flush().await);
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // One answer, then a commit the writer cannot finish: from here on it is stuck in the write.
    assert_eq!(gw.call(&alice, FLASH, &[]).await.0, 200);
    let usage = gw.gateway().usage().clone();
    let answered = tokio::task::spawn_blocking(move || usage.flush(Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(!answered, "the writer is stuck on the locked file");
    const N: u64 = 30;
    for _ in 0..N {
        assert_eq!(gw.call(&alice, FLASH, &[]).await.0, 200);
    }
    let dropped = gw.gateway().usage().dropped();
    // At most the queue's capacity (4) waited for the stuck writer; the rest was dropped.
    assert!((N - 4..=N).contains(&dropped), "dropped {dropped} of {N}");
    let (status, _, body) = gw.admin(Method::GET, "/metrics").await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.lines()
            .any(|l| l.starts_with("gem_proxy_usage_rows_dropped_total")
                && l.ends_with(&format!(" {dropped}"))),
        "{}",
        text.lines()
            .filter(|l| l.contains("usage"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Once the disk is back, what was queued is written: every answer is either stored or
    // counted as dropped, never both, never neither.
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    gw.settle("group_by=client", 1 + N - dropped).await;
}

#[tokio::test]
async fn a_client_over_its_daily_token_budget_gets_429_and_others_do_not() {
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A default daily budget of one answer; alice's own claim allows two; bob's 0 means none.
    let mut cfg = config(&mock.base_url(), &dir.path().join("u.db"), "");
    cfg.auth.default_tokens_per_day = TOTAL_TOKEN_COUNT;
    let gw = Gw::start(cfg).await;
    let alice = gw.token("alice", Some(2 * TOTAL_TOKEN_COUNT));
    let bob = gw.token("bob", Some(0));
    let carol = gw.token("carol", None);

    for _ in 0..2 {
        assert_eq!(gw.call(&alice, FLASH, &[]).await.0, 200);
    }
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{FLASH}", gw.server.proxy_addr()))
        .header("x-goog-api-key", &alice)
        .body(Full::new(Bytes::from(GENERATE_BODY)))
        .unwrap();
    req.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    let (status, headers, body) = read_all(gw.client.request(req).await.unwrap()).await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
    let message = json(&body)["error"]["message"].as_str().unwrap().to_owned();
    let now = gem_proxy::auth::unix_now();
    let midnight = (now / 86_400 + 1) * 86_400;
    assert!(message.contains("tokens-per-day budget (tpd)"), "{message}");
    assert!(
        message.contains(&gem_proxy::time::utc_time(midnight)),
        "names when it resets: {message}"
    );
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        retry_after >= 1 && retry_after <= midnight - now + 1,
        "{retry_after}"
    );
    let upstream_before = mock.requests().len();

    // carol has the default budget: one answer, then 429; bob has none and is never refused.
    assert_eq!(gw.call(&carol, FLASH, &[]).await.0, 200);
    assert_eq!(gw.call(&carol, FLASH, &[]).await.0, 429);
    for _ in 0..4 {
        assert_eq!(gw.call(&bob, FLASH, &[]).await.0, 200);
    }
    // The refused requests never reached the upstream.
    assert_eq!(mock.requests().len(), upstream_before + 5);
}

/// `gem-proxy token --tpd N` issues a token whose daily budget the gateway enforces.
#[tokio::test]
async fn a_daily_budget_from_the_command_line_is_enforced() {
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::start(config(&mock.base_url(), &dir.path().join("u.db"), "")).await;
    let cli_config = dir.path().join("proxy.yaml");
    std::fs::write(
        &cli_config,
        format!(
            "gemini: {{ api_keys: [{{ id: a, key: k }}] }}\nauth: {{ enabled: true, jwt_secret: \"{JWT_SECRET}\" }}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gem-proxy"))
        .args(["token", "--config", cli_config.to_str().unwrap()])
        .args(["--sub", "dave", "--tpd", &TOTAL_TOKEN_COUNT.to_string()])
        .env_remove("GEM_PROXY_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("tpd {TOTAL_TOKEN_COUNT}")),
        "{stderr}"
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(gw.call(&token, FLASH, &[]).await.0, 200);
    let (status, body) = gw.call(&token, FLASH, &[]).await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
    assert!(String::from_utf8_lossy(&body).contains("(tpd)"));
}
