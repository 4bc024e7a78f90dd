//! Several replicas on one real Redis (`state.backend: redis`): key limits, rests, invalid and
//! disabled keys, and upload bindings are shared; Redis going away never stops traffic.
//!
//! Each test starts its own `redis-server` (Debian's, installed by `scripts/setup.sh`) on a free
//! 127.0.0.1 port with persistence off, in a temporary directory, and stops exactly that process.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use gem_proxy::config::Config;
use gem_proxy::gateway::Live;
use gem_proxy::server::Server;
use gem_proxy_mock::{Failure, MockOptions, MockUpstream};
use http::{Method, Request};
use http_body_util::Full;

const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const PRO: &str = "/v1beta/models/gemini-2.5-pro:generateContent";
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123";
/// Short, so propagation is quick; the deadlines below are generous.
const SYNC_MS: u64 = 50;
const DEADLINE: Duration = Duration::from_secs(10);

/// A `redis-server` of our own (also used by the response cache and shared usage tests).
pub(crate) struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/setup.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while !self.pong() {
            assert!(Instant::now() < deadline, "redis-server answers PING");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pong(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// SIGKILL, like a crashed pod.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(base_url: &str, redis: &Redis, key1_rpm: Option<u32>) -> Config {
    let mut c = test_config(base_url);
    c.state.backend = gem_proxy::config::state::StateBackend::Redis;
    c.state.redis.url = Some(gem_proxy::config::Secret::new(redis.url()));
    c.state.redis.sync_interval_ms = SYNC_MS;
    c.admin.token = gem_proxy::config::Secret::new(ADMIN_TOKEN);
    c.admin.config_watch_interval_seconds = 0;
    c.gemini.api_keys[0].max_requests_per_minute = key1_rpm;
    c
}

/// The JWT secret of the replicas [`Replicas::start_with_auth`] starts.
const AUTH_SECRET: &str = "a-test-secret-of-at-least-32-characters";

struct Replicas {
    mock: MockUpstream,
    servers: Vec<Server>,
    client: HttpClient,
}

impl Replicas {
    /// `n` replicas with auth on (secret [`AUTH_SECRET`]), once each is connected to Redis.
    async fn start_with_auth(redis: &Redis, n: usize) -> Replicas {
        let r = Replicas::start(redis, n, |c| {
            c.auth.enabled = true;
            c.auth.jwt_secret = gem_proxy::config::Secret::new(AUTH_SECRET);
        })
        .await;
        r.until_all("connected", |h| connected(h) == Some(true))
            .await;
        r
    }

    async fn start(redis: &Redis, n: usize, edit: impl Fn(&mut Config)) -> Replicas {
        let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
        let mut servers = Vec::new();
        for _ in 0..n {
            servers.push(start_one(&mock, redis, &edit).await);
        }
        Replicas {
            mock,
            servers,
            client: http1_client(),
        }
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.servers[i].proxy_addr())
    }

    async fn post(
        &self,
        i: usize,
        path: &str,
        body: &str,
    ) -> (http::StatusCode, http::HeaderMap, Bytes) {
        let res = self
            .client
            .request(request(Method::POST, &self.url(i, path), body))
            .await
            .unwrap();
        read_all(res).await
    }

    async fn health(&self, i: usize) -> serde_json::Value {
        let url = format!("http://{}/health", self.servers[i].admin_addr().unwrap());
        let res = self
            .client
            .request(request(Method::GET, &url, ""))
            .await
            .unwrap();
        json(&read_all(res).await.2)
    }

    /// Polls every replica's `/health` until `pred` holds for each (bounded by [`DEADLINE`]).
    async fn until_all(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        for i in 0..self.servers.len() {
            loop {
                let h = self.health(i).await;
                if pred(&h) {
                    break;
                }
                assert!(Instant::now() < deadline, "replica {i}: {what}: {h}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Polls every replica's `gem_proxy_affinity_bindings` until each holds at least `n`.
    async fn until_bindings(&self, n: u64) {
        let deadline = Instant::now() + DEADLINE;
        for i in 0..self.servers.len() {
            let url = format!("http://{}/metrics", self.servers[i].admin_addr().unwrap());
            loop {
                let res = self
                    .client
                    .request(request(Method::GET, &url, ""))
                    .await
                    .unwrap();
                let text = String::from_utf8_lossy(&read_all(res).await.2).into_owned();
                let held = text
                    .lines()
                    .find(|l| {
                        l.starts_with("gem_proxy_affinity_bindings ")
                            || l.starts_with("gem_proxy_affinity_bindings{")
                    })
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
                if held >= n as f64 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {i} holds {held} bindings, not {n}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    fn keys_seen(&self) -> Vec<String> {
        self.mock
            .requests()
            .into_iter()
            .filter_map(|r| r.key)
            .collect()
    }

    /// Starts a five-byte resumable upload on replica `i` (as the holder of `token`, if any);
    /// the upload URL it hands back.
    async fn start_upload(&self, i: usize, token: Option<&str>) -> String {
        let mut start = Request::post(self.url(i, "/upload/v1beta/files"))
            .header("x-goog-upload-protocol", "resumable")
            .header("x-goog-upload-command", "start")
            .header("x-goog-upload-header-content-length", "5")
            .header("x-goog-upload-header-content-type", "text/plain")
            .header("content-type", "application/json");
        if let Some(t) = token {
            start = start.header("x-goog-api-key", t);
        }
        let start = start
            .body(Full::new(Bytes::from_static(
                br#"{"file":{"display_name":"hello"}}"#,
            )))
            .unwrap();
        let (status, headers, body) = read_all(self.client.request(start).await.unwrap()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        headers["x-goog-upload-url"].to_str().unwrap().to_owned()
    }

    /// Revokes the token id `jti` through replica `i`'s admin API.
    /// Replica `i`'s config history (`GET /api/config/history`), as text.
    async fn config_history(&self, i: usize) -> String {
        let url = format!(
            "http://{}/api/config/history",
            self.servers[i].admin_addr().unwrap()
        );
        let req = Request::get(url)
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, _, body) = read_all(self.client.request(req).await.unwrap()).await;
        assert_eq!(status, 200);
        String::from_utf8_lossy(&body).into_owned()
    }

    async fn revoke(&self, i: usize, jti: &str) {
        let url = format!(
            "http://{}/api/tokens/revoke",
            self.servers[i].admin_addr().unwrap()
        );
        let revoke = Request::post(url)
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(r#"{{"jti":"{jti}"}}"#))))
            .unwrap();
        let (status, _, body) = read_all(self.client.request(revoke).await.unwrap()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

async fn start_one(mock: &MockUpstream, redis: &Redis, edit: &impl Fn(&mut Config)) -> Server {
    let mut c = config(&mock.base_url(), redis, None);
    edit(&mut c);
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    Server::start(Live::build(c).unwrap()).await.unwrap()
}

fn rests_for(health: &serde_json::Value, id: &str, model: &str) -> bool {
    key_state(health, id)["resting"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["model"] == model)
}

fn connected(h: &serde_json::Value) -> Option<bool> {
    h["state"]["connected"].as_bool()
}

/// One key limited to 30 requests per minute, three replicas, 90 requests round-robin: the key
/// carries its limit plus at most the documented bound, the rest are 429 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_keys_requests_per_minute() {
    let redis = Redis::start();
    let r = Replicas::start(&redis, 3, |c| {
        c.gemini.api_keys.truncate(1);
        c.gemini.api_keys[0].max_requests_per_minute = Some(30);
    })
    .await;
    r.until_all("three replicas counted", |h| h["state"]["replicas"] == 3)
        .await;
    let started = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..90 {
        let (status, headers, body) = r.post(i % 3, FLASH, GENERATE_BODY).await;
        match status.as_u16() {
            200 => ok += 1,
            429 => {
                assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
                assert!(headers.contains_key("retry-after"), "{headers:?}");
                limited += 1;
            }
            other => panic!("{other}: {}", String::from_utf8_lossy(&body)),
        }
    }
    let elapsed = started.elapsed();
    let upstream = r.keys_seen().len();
    eprintln!("upstream {upstream} in {elapsed:?}");
    assert_eq!(upstream, ok);
    assert_eq!(ok + limited, 90);
    // GCRA refills one request every 2 s after the burst of 30; the bound is 3 × 2 × block 5
    // (a held block and a cold block per replica).
    let refill = elapsed.as_secs() as usize / 2 + 1;
    let bound = 3 * 2 * 5;
    assert!(
        upstream <= 30 + refill + bound,
        "{upstream} reached the upstream"
    );
    assert!(
        upstream >= 30 - bound,
        "the quota is used, not sat on: {upstream}"
    );
}

/// A burst that finds a replica's lease cold (nothing granted yet, or given back after a quiet
/// spell) is served at once from the cold block instead of waiting for Redis's grant: 8
/// concurrent requests on each of three replicas, one key of 60 rpm (cold block 60 / 3, capped
/// at the largest block, 10), all answered 200; the same again after a quiet spell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_a_cold_lease_is_served_at_once() {
    let redis = Redis::start();
    let r = Replicas::start(&redis, 3, |c| {
        c.gemini.api_keys.truncate(1);
        c.gemini.api_keys[0].max_requests_per_minute = Some(60);
    })
    .await;
    r.until_all("three replicas counted", |h| h["state"]["replicas"] == 3)
        .await;
    let burst = |round: &'static str| {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..3 {
            for _ in 0..8 {
                let req = request(Method::POST, &r.url(i, FLASH), GENERATE_BODY);
                let client = r.client.clone();
                set.spawn(async move {
                    let (status, _, body) = read_all(client.request(req).await.unwrap()).await;
                    (i, status, body)
                });
            }
        }
        async move {
            for (i, status, body) in set.join_all().await {
                assert_eq!(
                    status,
                    200,
                    "{round}: replica {i}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    };
    burst("first burst").await;
    // A quiet spell: the leases' units expire (after a second) and go back, the demand decays.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    burst("after a quiet spell").await;
    assert_eq!(r.keys_seen().len(), 48);
}

/// A 429 with `RetryInfo` answered to replica A rests the key for that model on B and C too,
/// within a sync interval or so; they still send other models to it. Then `API_KEY_INVALID`
/// learned on A, and an admin disable through B, reach every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rests_invalid_keys_and_disables_reach_every_replica() {
    let redis = Redis::start();
    let r = Replicas::start(&redis, 3, |_| {}).await;
    r.until_all("connected", |h| connected(h) == Some(true))
        .await;

    r.mock.set_key_failure(
        KEY1,
        Some(Failure::RateLimited {
            retry_delay_seconds: Some(60),
            per_day: false,
        }),
    );
    // Rotation on A reaches key1 within two requests; both are answered (key2 takes the replay).
    for _ in 0..2 {
        assert_eq!(r.post(0, FLASH, GENERATE_BODY).await.0, 200);
    }
    r.mock.set_key_failure(KEY1, None);
    r.until_all("key1 rests for flash", |h| {
        rests_for(h, "key1", "gemini-2.5-flash")
    })
    .await;
    r.mock.clear();
    for i in 0..6 {
        assert_eq!(r.post(1 + i % 2, FLASH, GENERATE_BODY).await.0, 200);
    }
    assert!(
        r.keys_seen().iter().all(|k| k == KEY2),
        "{:?}",
        r.keys_seen()
    );
    r.mock.clear();
    for i in 0..4 {
        assert_eq!(r.post(1 + i % 2, PRO, GENERATE_BODY).await.0, 200);
    }
    assert!(
        r.keys_seen().iter().any(|k| k == KEY1),
        "pro still uses key1: {:?}",
        r.keys_seen()
    );

    // API_KEY_INVALID for key2 on A.
    r.mock.set_key_failure(KEY2, Some(Failure::InvalidKey));
    for _ in 0..2 {
        assert_eq!(r.post(0, PRO, GENERATE_BODY).await.0, 200);
    }
    r.mock.set_key_failure(KEY2, None);
    r.until_all("key2 invalid", |h| {
        key_state(h, "key2")["state"] == "invalid"
    })
    .await;
    r.mock.clear();
    for i in 0..4 {
        assert_eq!(r.post(1 + i % 2, PRO, GENERATE_BODY).await.0, 200);
    }
    assert!(
        r.keys_seen().iter().all(|k| k == KEY1),
        "{:?}",
        r.keys_seen()
    );

    // An admin disable of key1 through B; enabling key2 through C clears its invalid state.
    for (i, path) in [(1, "/api/keys/key1/disable"), (2, "/api/keys/key2/enable")] {
        let url = format!("http://{}{path}", r.servers[i].admin_addr().unwrap());
        let req = Request::post(url)
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, _, body) = read_all(r.client.request(req).await.unwrap()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    r.until_all("key1 disabled, key2 active", |h| {
        key_state(h, "key1")["state"] == "disabled" && key_state(h, "key2")["state"] == "active"
    })
    .await;
    r.mock.clear();
    for i in 0..3 {
        assert_eq!(r.post(i, PRO, GENERATE_BODY).await.0, 200);
    }
    assert!(
        r.keys_seen().iter().all(|k| k == KEY2),
        "{:?}",
        r.keys_seen()
    );
}

/// A resumable upload started on A, finished through B, read through C and used in a
/// `generateContent` through C: every request reaches the key that created the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_started_on_one_replica_is_finished_and_used_through_the_others() {
    let redis = Redis::start();
    let r = Replicas::start(&redis, 3, |_| {}).await;
    r.until_all("connected", |h| connected(h) == Some(true))
        .await;
    // Rotation would put the next request on key2 on B and C: make it matter.
    for i in 1..3 {
        assert_eq!(r.post(i, FLASH, GENERATE_BODY).await.0, 200);
    }
    r.mock.clear();
    let url = r.start_upload(0, None).await;
    let creator = r.keys_seen()[0].clone();
    // B learns the upload session's binding (a Redis round trip after A's answer).
    r.until_bindings(1).await;
    let a = r.servers[0].proxy_addr().to_string();
    let via_b = url.replace(&a, &r.servers[1].proxy_addr().to_string());
    assert_ne!(via_b, url);
    let finalize = Request::post(&via_b)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (status, _, body) = read_all(r.client.request(finalize).await.unwrap()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let file = json(&body);
    let name = file["file"]["name"].as_str().unwrap().to_owned();
    let uri = file["file"]["uri"].as_str().unwrap().to_owned();
    r.until_bindings(2).await;
    let get = request(Method::GET, &r.url(2, &format!("/v1beta/{name}")), "");
    let (status, _, body) = read_all(r.client.request(get).await.unwrap()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let generate = format!(
        r#"{{"contents":[{{"parts":[{{"fileData":{{"fileUri":"{uri}","mimeType":"text/plain"}}}},{{"text":"summarise"}}]}}]}}"#
    );
    for _ in 0..2 {
        let (status, _, body) = r.post(2, FLASH, &generate).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let keys = r.keys_seen();
    assert_eq!(keys.len(), 1 + 1 + 1 + 2, "{keys:?}");
    assert!(keys.iter().all(|k| *k == creator), "{keys:?}");
}

/// An upload URL that A handed out for a token then revoked through A's admin API: B learns the
/// revocation as a shared config change and refuses the URL's capability from then on, as it
/// refuses the token, although the capability itself has not expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_url_dies_on_every_replica_with_the_token_revoked_on_one() {
    const SECRET: &str = AUTH_SECRET;
    let redis = Redis::start();
    let r = Replicas::start_with_auth(&redis, 2).await;
    let issued = issued_client_token(SECRET, "leaver", &[]);
    let url = r.start_upload(0, Some(&issued.token)).await;
    r.until_bindings(1).await;
    let via_b = url.replace(
        &r.servers[0].proxy_addr().to_string(),
        &r.servers[1].proxy_addr().to_string(),
    );
    let chunk = |command: &'static str, offset: &'static str, bytes: &'static [u8]| {
        let req = Request::post(&via_b)
            .header("x-goog-upload-command", command)
            .header("x-goog-upload-offset", offset)
            .body(Full::new(Bytes::from_static(bytes)))
            .unwrap();
        let client = r.client.clone();
        async move { read_all(client.request(req).await.unwrap()).await }
    };
    let (status, _, body) = chunk("upload", "0", b"hel").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    r.revoke(0, &issued.jti).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut req = request(Method::POST, &r.url(1, FLASH), GENERATE_BODY);
        req.headers_mut()
            .insert("x-goog-api-key", issued.token.parse().unwrap());
        if read_all(r.client.request(req).await.unwrap()).await.0 == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "replica 1 refuses the token");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = r.mock.requests().len();
    let (status, _, body) = chunk("upload, finalize", "3", b"lo").await;
    assert_google_error(status, &body, 401, "UNAUTHENTICATED");
    assert!(String::from_utf8_lossy(&body).contains("revoked"));
    assert_eq!(r.mock.requests().len(), before, "nothing reached Google");
}

/// Redis SIGKILLed under steady load: no request fails because of it, `/health` says
/// disconnected, key1's limit holds within the fallback share; a replica started meanwhile
/// serves; Redis back: every replica reconnects by itself and shares again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_never_stops_traffic_and_sharing_resumes_when_it_returns() {
    let mut redis = Redis::start();
    let mut r = Replicas::start(&redis, 3, |c| {
        c.gemini.api_keys[0].max_requests_per_minute = Some(30);
    })
    .await;
    r.until_all("three replicas counted", |h| h["state"]["replicas"] == 3)
        .await;
    for i in 0..9 {
        assert_eq!(r.post(i % 3, FLASH, GENERATE_BODY).await.0, 200);
    }

    redis.kill();
    // Steady load while the replicas notice: every request is answered.
    let deadline = Instant::now() + DEADLINE;
    let mut i = 0;
    loop {
        let (status, _, body) = r.post(i % 3, FLASH, GENERATE_BODY).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        i += 1;
        let mut all_down = true;
        for j in 0..3 {
            all_down &= connected(&r.health(j).await) == Some(false);
        }
        if all_down {
            break;
        }
        assert!(Instant::now() < deadline, "replicas notice Redis is gone");
    }
    let h = r.health(0).await;
    assert_eq!(h["state"]["backend"], "redis");
    assert!(
        h["state"]["since"].as_str().is_some_and(|s| !s.is_empty()),
        "{h}"
    );
    let metrics_url = format!("http://{}/metrics", r.servers[0].admin_addr().unwrap());
    let metrics = read_all(
        r.client
            .request(request(Method::GET, &metrics_url, ""))
            .await
            .unwrap(),
    )
    .await
    .2;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gem_proxy_state_backend_up{") && l.ends_with(" 0")),
        "{metrics}"
    );

    // A model no replica has a lease for: each may give key1 its share, 30 / 3 = 10.
    r.mock.clear();
    const OTHER: &str = "/v1beta/models/gemini-2.0-flash:generateContent";
    for i in 0..90 {
        let (status, _, body) = r.post(i % 3, OTHER, GENERATE_BODY).await;
        assert_eq!(
            status,
            200,
            "key2 takes the rest: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let on_key1 = r.keys_seen().iter().filter(|k| *k == KEY1).count();
    assert!((3..=30).contains(&on_key1), "key1 carried {on_key1}");

    // A replica started while Redis is down serves.
    r.servers.push(
        start_one(&r.mock, &redis, &|c: &mut Config| {
            c.gemini.api_keys[0].max_requests_per_minute = Some(30);
        })
        .await,
    );
    assert_eq!(r.post(3, FLASH, GENERATE_BODY).await.0, 200);
    assert_eq!(connected(&r.health(3).await), Some(false));

    // Redis back, empty: every replica reconnects, and a rest learned on one reaches the others.
    redis.spawn();
    r.until_all("reconnected", |h| connected(h) == Some(true))
        .await;
    r.until_all("four replicas counted", |h| h["state"]["replicas"] == 4)
        .await;
    r.mock.set_key_failure(
        KEY2,
        Some(Failure::RateLimited {
            retry_delay_seconds: Some(60),
            per_day: false,
        }),
    );
    for _ in 0..2 {
        r.post(3, PRO, GENERATE_BODY).await;
    }
    r.mock.set_key_failure(KEY2, None);
    r.until_all("key2 rests for pro", |h| {
        rests_for(h, "key2", "gemini-2.5-pro")
    })
    .await;
}

/// A password in `state.redis.url` never shows: not in `/health`, not in the admin API's config.
/// Redis refusing it (no such user) leaves the gateway serving from local state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_never_shows_and_a_refused_login_still_serves() {
    let redis = Redis::start();
    let r = Replicas::start(&redis, 1, |c| {
        c.state.redis.url = Some(gem_proxy::config::Secret::new(format!(
            "redis://someone:hunter2-secret@127.0.0.1:{}/0",
            redis.port
        )));
    })
    .await;
    assert_eq!(r.post(0, FLASH, GENERATE_BODY).await.0, 200);
    let h = r.health(0).await;
    assert_eq!(connected(&h), Some(false), "{h}");
    assert_eq!(
        h["state"]["url"],
        format!("redis://127.0.0.1:{}/0", redis.port)
    );
    let url = format!("http://{}/api/config", r.servers[0].admin_addr().unwrap());
    let req = Request::get(url)
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = read_all(r.client.request(req).await.unwrap()).await;
    assert_eq!(status, 200);
    for text in [h.to_string(), String::from_utf8_lossy(&body).into_owned()] {
        assert!(
            !text.contains("hunter2") && !text.contains("someone"),
            "{text}"
        );
    }
}

/// A client whose token carries `rpm: 30`, spread round-robin over three replicas: 90 requests
/// reach the upstream at most 30 + the bound times; the rest are 429 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_rpm_claim_is_shared_by_three_replicas() {
    const SECRET: &str = AUTH_SECRET;
    let redis = Redis::start();
    let r = Replicas::start(&redis, 3, |c| {
        c.auth.enabled = true;
        c.auth.jwt_secret = gem_proxy::config::Secret::new(SECRET);
    })
    .await;
    r.until_all("three replicas counted", |h| h["state"]["replicas"] == 3)
        .await;
    let auth = gem_proxy::config::AuthConfig {
        jwt_secret: gem_proxy::config::Secret::new(SECRET),
        ..Default::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let req = gem_proxy::auth::TokenRequest {
        sub: "spread-client".into(),
        ttl: Duration::from_secs(600),
        models: Vec::new(),
        rpm: Some(30),
        tpm: None,
        tpd: None,
        live_sessions: None,
        role: gem_proxy::auth::Role::Client,
    };
    let token = gem_proxy::auth::issue(&auth, &req, now).unwrap().token;
    let started = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..90 {
        let mut req = request(Method::POST, &r.url(i % 3, FLASH), GENERATE_BODY);
        req.headers_mut()
            .insert("x-goog-api-key", token.parse().unwrap());
        let (status, headers, body) = read_all(r.client.request(req).await.unwrap()).await;
        match status.as_u16() {
            200 => ok += 1,
            429 => {
                assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
                assert!(headers.contains_key("retry-after"), "{headers:?}");
                assert_eq!(headers["x-ratelimit-limit"], "30");
                limited += 1;
            }
            other => panic!("{other}: {}", String::from_utf8_lossy(&body)),
        }
    }
    let upstream = r.keys_seen().len();
    eprintln!("client: upstream {upstream} in {:?}", started.elapsed());
    assert_eq!(upstream, ok);
    assert_eq!(ok + limited, 90);
    let refill = started.elapsed().as_secs() as usize / 2 + 1;
    let bound = 3 * 2 * 5;
    assert!(
        upstream <= 30 + refill + bound,
        "{upstream} reached the upstream"
    );
    assert!(upstream >= 30 - bound, "{upstream}");
}

/// A token revoked through replica A's admin API is refused by B and C too: the change travels
/// as a config change (secrets masked; each replica fills them from its own config) and shows in
/// their history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_replica_is_refused_by_every_replica() {
    const SECRET: &str = AUTH_SECRET;
    let redis = Redis::start();
    let r = Replicas::start_with_auth(&redis, 3).await;
    let issued = issued_client_token(SECRET, "leaver", &[]);
    let call = |i: usize| {
        let mut req = request(Method::POST, &r.url(i, FLASH), GENERATE_BODY);
        req.headers_mut()
            .insert("x-goog-api-key", issued.token.parse().unwrap());
        let client = r.client.clone();
        async move { read_all(client.request(req).await.unwrap()).await.0 }
    };
    for i in 0..3 {
        assert_eq!(call(i).await, 200);
    }
    r.revoke(0, &issued.jti).await;
    for i in 0..3 {
        let deadline = Instant::now() + DEADLINE;
        while call(i).await != 401 {
            assert!(
                Instant::now() < deadline,
                "replica {i} still accepts the revoked token"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // B's history names the change as made elsewhere; the upstream keys still work there.
    let text = r.config_history(1).await;
    assert!(text.contains("on another replica"), "{text}");
    let other = issued_client_token(SECRET, "stayer", &[]);
    let mut req = request(Method::POST, &r.url(1, FLASH), GENERATE_BODY);
    req.headers_mut()
        .insert("x-goog-api-key", other.token.parse().unwrap());
    assert_eq!(read_all(r.client.request(req).await.unwrap()).await.0, 200);
}

/// A TCP relay between one replica and Redis that the test can cut (existing connections
/// dropped, new ones refused) and restore: a network partition of that replica alone.
struct Partition {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    relays: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Partition {
    async fn start(redis_port: u16) -> Partition {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let relays = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, r) = (cut.clone(), relays.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                r.lock().unwrap().push(relay.abort_handle());
            }
        });
        Partition {
            port,
            cut,
            relays,
            accept,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A replica cut off from Redis while a token is revoked through another replica's admin API
/// misses the change at the time (it still accepts the token), and catches up when it can reach
/// Redis again: it reads the latest config change back and refuses the token too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_apart_when_the_config_changes_catches_up_when_it_reconnects() {
    const SECRET: &str = AUTH_SECRET;
    let redis = Redis::start();
    let partition = Partition::start(redis.port).await;
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let auth_on = |c: &mut Config| {
        c.auth.enabled = true;
        c.auth.jwt_secret = gem_proxy::config::Secret::new(SECRET);
    };
    let cut_off_url = partition.url();
    let servers = vec![
        start_one(&mock, &redis, &auth_on).await,
        start_one(&mock, &redis, &auth_on).await,
        start_one(&mock, &redis, &|c: &mut Config| {
            auth_on(c);
            c.state.redis.url = Some(gem_proxy::config::Secret::new(cut_off_url.clone()));
        })
        .await,
    ];
    let r = Replicas {
        mock,
        servers,
        client: http1_client(),
    };
    r.until_all("three replicas counted", |h| h["state"]["replicas"] == 3)
        .await;
    let issued = issued_client_token(SECRET, "leaver", &[]);
    let call = |i: usize| {
        let mut req = request(Method::POST, &r.url(i, FLASH), GENERATE_BODY);
        req.headers_mut()
            .insert("x-goog-api-key", issued.token.parse().unwrap());
        let client = r.client.clone();
        async move { read_all(client.request(req).await.unwrap()).await.0 }
    };
    for i in 0..3 {
        assert_eq!(call(i).await, 200);
    }

    // C is cut off; it says so.
    partition.cut();
    let deadline = Instant::now() + DEADLINE;
    while connected(&r.health(2).await) != Some(false) {
        assert!(Instant::now() < deadline, "replica 2 notices it is cut off");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The token is revoked through A: B refuses it soon, C cannot know.
    r.revoke(0, &issued.jti).await;
    let deadline = Instant::now() + DEADLINE;
    while call(1).await != 401 {
        assert!(Instant::now() < deadline, "replica 1 refuses the token");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        call(2).await,
        200,
        "replica 2 is apart and missed the change"
    );

    // C can reach Redis again: it reconnects by itself and catches up.
    partition.restore();
    let deadline = Instant::now() + DEADLINE;
    while call(2).await != 401 {
        assert!(
            Instant::now() < deadline,
            "replica 2 still accepts the revoked token after reconnecting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = r.config_history(2).await;
    assert!(text.contains("on another replica"), "{text}");
}
