//! The Live API through the gateway: WebSocket sessions relayed both ways to the mock upstream's
//! Live endpoint, with the pool's key, the client's limits and the key's rests applied.

use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use gem_proxy::auth::{Role, TokenRequest, issue, unix_now};
use gem_proxy::config::{Config, Secret};
use gem_proxy_mock::{MockOptions, QUOTA_CLOSE_REASON};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

pub(crate) const LIVE: &str =
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
pub(crate) const CONSTRAINED: &str =
    "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained";
pub(crate) const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";
const SETUP: &str = r#"{"setup":{"model":"models/gemini-live-2.5-flash"}}"#;

pub(crate) type Ws = WebSocketStream<TcpStream>;

pub(crate) fn enable_auth(c: &mut Config) {
    c.auth.enabled = true;
    c.auth.jwt_secret = Secret::new(SECRET);
}

fn token(h: &Harness, sub: &str, live_sessions: Option<u32>) -> String {
    let live = h.server.gateway().live();
    let req = TokenRequest {
        sub: sub.into(),
        ttl: Duration::from_secs(600),
        models: vec![],
        rpm: None,
        tpm: None,
        tpd: None,
        live_sessions,
        role: Role::Client,
    };
    issue(&live.config.auth, &req, unix_now()).unwrap().token
}

/// Opens a WebSocket to the gateway at `path_and_query` with extra `headers`.
pub(crate) async fn connect(
    h: &Harness,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, WsError> {
    connect_to(h.server.proxy_addr(), path_and_query, headers).await
}

/// [`connect`] to the gateway listening at `addr`.
pub(crate) async fn connect_to(
    addr: std::net::SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, WsError> {
    let mut req = format!("ws://{addr}{path_and_query}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (ws, res) = within("handshake", tokio_tungstenite::client_async(req, tcp)).await?;
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    Ok(ws)
}

/// The next server message that carries JSON (binary frames, as Google sends them).
pub(crate) async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match within("server message", ws.next()).await {
            Some(Ok(Message::Binary(b))) => return json(&b),
            Some(Ok(Message::Text(t))) => return json(t.as_bytes()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Reads until the close frame and returns it.
pub(crate) async fn close_frame(ws: &mut Ws) -> Option<CloseFrame> {
    loop {
        match within("close frame", ws.next()).await {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

pub(crate) async fn setup(ws: &mut Ws) {
    ws.send(Message::text(SETUP)).await.unwrap();
    assert_eq!(next_json(ws).await, json!({"setupComplete": {}}));
}

pub(crate) fn turn(text: &str) -> Message {
    Message::text(
        json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": true}})
            .to_string(),
    )
}

/// The handshakes of Live sessions the mock received.
pub(crate) fn live_requests(h: &Harness) -> Vec<gem_proxy_mock::RecordedRequest> {
    h.mock
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/ws/"))
        .collect()
}

/// Sends the HTTP request a refused session gets its answer to (an upgrade that is not
/// upgraded) and returns the Google-shaped answer.
pub(crate) async fn refused(
    h: &Harness,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, bytes::Bytes) {
    match connect(h, path, headers).await {
        Err(WsError::Http(res)) => {
            let status = res.status();
            (status, res.into_body().unwrap_or_default().into())
        }
        Ok(_) => panic!("the session was accepted"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn frames_are_relayed_both_ways_with_a_pool_key_and_no_client_credential() {
    let h = Harness::start().await;
    let mut ws = connect(&h, &format!("{LIVE}?key=client-secret&alt=x"), &[])
        .await
        .unwrap();
    setup(&mut ws).await;

    ws.send(turn("hello there")).await.unwrap();
    let answer = next_json(&mut ws).await;
    assert_eq!(
        answer["serverContent"]["modelTurn"]["parts"][0]["text"],
        "Echo: hello there"
    );
    assert_eq!(
        next_json(&mut ws).await["serverContent"]["turnComplete"],
        true
    );

    // Binary frames that are not JSON come back byte for byte.
    let raw = vec![0xff, 0x00, 0x80, 0x7f, 0xfe];
    ws.send(Message::binary(raw.clone())).await.unwrap();
    match within("binary echo", ws.next()).await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &raw[..]),
        other => panic!("expected the binary echo, got {other:?}"),
    }

    // A ping is answered.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match within("pong", ws.next()).await {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }

    // The client's close code and reason reach Google; the close completes.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "done here".into(),
    })))
    .await
    .unwrap();
    let frame = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Library(4000));

    let seen = live_requests(&h);
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    let key = r.key.as_deref().unwrap();
    assert!(key == KEY1 || key == KEY2, "a pool key, got {key}");
    assert_eq!(
        r.query.as_deref(),
        Some("alt=x"),
        "the client's key= is gone"
    );
    assert!(r.header("authorization").is_none());
    assert!(
        r.headers.iter().all(|(_, v)| !v.contains("client-secret")),
        "the client's credential never reaches Google: {:?}",
        r.headers
    );
}

#[tokio::test]
async fn googles_close_code_and_reason_reach_the_client_and_goaway_passes() {
    let h = Harness::start().await;
    let mut ws = connect(&h, LIVE, &[]).await.unwrap();
    setup(&mut ws).await;
    ws.send(turn("mock:goaway")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["goAway"]["timeLeft"], "10s");
    ws.send(turn("mock:close:4003:model turn limit"))
        .await
        .unwrap();
    let frame = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Library(4003));
    assert_eq!(frame.reason, "model turn limit");
    // Not a quota: no key rests.
    let health = health(&h).await;
    for id in ["key1", "key2"] {
        assert_eq!(key_state(&health, id)["state"], "active", "{health}");
    }
}

#[tokio::test]
async fn a_quota_close_rests_the_key_and_the_next_sessions_go_to_the_other_key() {
    let h = Harness::start().await;
    let mut ws = connect(&h, LIVE, &[]).await.unwrap();
    setup(&mut ws).await;
    ws.send(turn("mock:quota")).await.unwrap();
    let frame = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Error);
    assert_eq!(
        frame.reason, QUOTA_CLOSE_REASON,
        "Google's reason, as it was"
    );
    let rested = live_requests(&h)[0].key.clone().unwrap();
    let (rested_id, other) = if rested == KEY1 {
        ("key1", KEY2)
    } else {
        ("key2", KEY1)
    };
    let health = health(&h).await;
    assert_eq!(
        key_state(&health, rested_id)["state"],
        "cooling",
        "{health}"
    );

    for _ in 0..3 {
        let mut ws = connect(&h, LIVE, &[]).await.unwrap();
        setup(&mut ws).await;
        ws.close(None).await.unwrap();
    }
    let keys: Vec<_> = live_requests(&h)[1..]
        .iter()
        .map(|r| r.key.clone().unwrap())
        .collect();
    assert_eq!(
        keys,
        vec![other; 3],
        "every later session avoided the resting key"
    );
}

#[tokio::test]
async fn a_refused_handshake_fails_over_to_another_key() {
    let h = Harness::start().await;
    h.mock
        .set_key_failure(KEY1, Some(gem_proxy_mock::Failure::Overloaded));
    for _ in 0..2 {
        let mut ws = connect(&h, LIVE, &[]).await.unwrap();
        setup(&mut ws).await;
        ws.close(None).await.unwrap();
    }
    let keys: Vec<_> = live_requests(&h)
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    assert_eq!(keys.iter().filter(|k| *k == KEY2).count(), 2, "{keys:?}");
}

#[tokio::test]
async fn sessions_per_key_are_bounded_and_refused_google_shaped_before_the_upgrade() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.gemini.live.max_sessions_per_key = 1;
    })
    .await;
    let mut a = connect(&h, LIVE, &[]).await.unwrap();
    setup(&mut a).await;
    let mut b = connect(&h, LIVE, &[]).await.unwrap();
    setup(&mut b).await;
    let keys: Vec<_> = live_requests(&h)
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    assert_ne!(keys[0], keys[1], "the second session went to the free key");

    let (status, body) = refused(&h, LIVE, &[]).await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
    assert_eq!(
        live_requests(&h).len(),
        2,
        "a refused session never reached Google"
    );

    a.close(None).await.unwrap();
    let _ = close_frame(&mut a).await;
    // The place comes back once the session has ended.
    let mut c = support_eventually_connect(&h).await;
    setup(&mut c).await;
}

/// Connects once a place is free (the previous session's end is seen by the gateway shortly
/// after its close completes).
async fn support_eventually_connect(h: &Harness) -> Ws {
    within("a free session place", async {
        loop {
            match connect(h, LIVE, &[]).await {
                Ok(ws) => return ws,
                Err(WsError::Http(res)) if res.status() == StatusCode::TOO_MANY_REQUESTS => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn the_token_is_checked_before_the_upgrade_and_live_sessions_bounds_a_client() {
    let h = Harness::start_with(MockOptions::default(), enable_auth).await;
    let (status, body) = refused(&h, LIVE, &[]).await;
    assert_google_error(status, &body, 401, "UNAUTHENTICATED");
    let (status, body) = refused(&h, LIVE, &[("x-goog-api-key", "not-a-token")]).await;
    assert_google_error(status, &body, 401, "UNAUTHENTICATED");
    assert!(live_requests(&h).is_empty());

    let t = token(&h, "alice", Some(1));
    let mut first = connect(&h, LIVE, &[("x-goog-api-key", &t)]).await.unwrap();
    setup(&mut first).await;
    let (status, body) = refused(&h, &format!("{LIVE}?key={t}"), &[]).await;
    assert_google_error(status, &body, 429, "RESOURCE_EXHAUSTED");
    // Another client is not held back by alice's limit.
    let bob = token(&h, "bob", Some(1));
    let auth = format!("Bearer {bob}");
    let mut other = connect(&h, LIVE, &[("authorization", &auth)])
        .await
        .unwrap();
    setup(&mut other).await;

    for r in live_requests(&h) {
        let key = r.key.clone().unwrap();
        assert!(key == KEY1 || key == KEY2);
        assert!(r.header("authorization").is_none());
        assert!(
            r.headers
                .iter()
                .all(|(_, v)| !v.contains(&t) && !v.contains(&bob))
        );
    }
}

#[tokio::test]
async fn a_setup_naming_a_model_the_token_does_not_allow_is_closed_before_google_sees_it() {
    let h = Harness::start_with(MockOptions::default(), enable_auth).await;
    let live = h.server.gateway().live();
    let req = TokenRequest {
        sub: "flash-only".into(),
        ttl: Duration::from_secs(600),
        models: vec!["gemini-2.5-flash".into()],
        rpm: None,
        tpm: None,
        tpd: None,
        live_sessions: None,
        role: Role::Client,
    };
    let t = issue(&live.config.auth, &req, unix_now()).unwrap().token;
    let mut ws = connect(&h, LIVE, &[("x-goog-api-key", &t)]).await.unwrap();
    ws.send(Message::text(SETUP)).await.unwrap();
    let frame = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Policy);
    // The key is picked after the setup: Google never saw the session.
    assert!(live_requests(&h).is_empty());
    let health = health(&h).await;
    assert_eq!(key_state(&health, "key1")["state"], "active");
}

#[tokio::test]
async fn a_plain_request_on_a_live_route_is_a_400() {
    let h = Harness::start().await;
    let (status, _, body) = h.get(LIVE).await;
    assert_google_error(status, &body, 400, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn an_ephemeral_token_minted_through_the_gateway_reaches_the_key_that_minted_it() {
    let h = Harness::start_with(MockOptions::default(), enable_auth).await;
    let t = token(&h, "carol", None);
    let mut req = request(
        Method::POST,
        &h.url("/v1alpha/auth_tokens"),
        r#"{"uses":1}"#,
    );
    req.headers_mut()
        .insert("x-goog-api-key", t.parse().unwrap());
    let (status, _, body) = h.call(req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let name = json(&body)["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("auth_tokens/"));
    let minted_with = h
        .mock
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1alpha/auth_tokens")
        .and_then(|r| r.key)
        .unwrap();

    // Several sessions, each with only the ephemeral token (as the SDKs send it): each reaches
    // the minting key, never the other one.
    for headers in [
        vec![("authorization", format!("Token {name}"))],
        vec![],
        vec![("x-goog-api-key", name.clone())],
    ] {
        let path = if headers.is_empty() {
            format!("{CONSTRAINED}?access_token={name}")
        } else {
            CONSTRAINED.to_owned()
        };
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut ws = connect(&h, &path, &headers).await.unwrap();
        setup(&mut ws).await;
        ws.send(turn("ephemeral")).await.unwrap();
        assert_eq!(
            next_json(&mut ws).await["serverContent"]["modelTurn"]["parts"][0]["text"],
            "Echo: ephemeral"
        );
        ws.close(None).await.unwrap();
    }
    let sessions = live_requests(&h);
    assert_eq!(sessions.len(), 3);
    for r in sessions {
        assert_eq!(r.key.as_deref(), Some(minted_with.as_str()));
        assert!(
            r.query
                .as_deref()
                .unwrap_or("")
                .contains("access_token=auth_tokens/")
        );
        assert!(r.header("authorization").is_none());
    }
    // A token the gateway never saw minted is not a credential.
    let (status, body) = refused(
        &h,
        &format!("{CONSTRAINED}?access_token=auth_tokens/forged"),
        &[],
    )
    .await;
    assert_google_error(status, &body, 401, "UNAUTHENTICATED");
}

#[tokio::test]
async fn on_shutdown_a_session_runs_on_until_the_grace_period_then_gets_1001() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.server.shutdown_grace_seconds = 1;
    })
    .await;
    let mut ws = connect(&h, LIVE, &[]).await.unwrap();
    setup(&mut ws).await;
    h.server.shutdown();
    // Still relayed after the shutdown began.
    ws.send(turn("still here")).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await["serverContent"]["modelTurn"]["parts"][0]["text"],
        "Echo: still here"
    );
    let frame = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason, "going away");
}

async fn metrics(h: &Harness) -> String {
    let url = h.admin_url("/metrics");
    let res = h
        .client
        .request(request(Method::GET, &url, ""))
        .await
        .unwrap();
    String::from_utf8(read_all(res).await.2.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_session_run_until_the_grace_period_then_1001_and_exit_zero() {
    let mock = gem_proxy_mock::MockUpstream::start(MockOptions::default())
        .await
        .unwrap();
    let config = format!(
        r#"
server: {{ host: "127.0.0.1", port: 0, shutdown_grace_seconds: 2 }}
gemini: {{ base_url: "{}", api_keys: [{{ id: k, key: "{KEY1}" }}] }}
metrics: {{ enabled: false }}
log: {{ format: json }}
"#,
        mock.base_url()
    );
    let (mut child, addr, _dir) = crate::shutdown::spawn_gateway(&config);
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut ws, _) = within(
        "handshake",
        tokio_tungstenite::client_async(format!("ws://{addr}{LIVE}"), tcp),
    )
    .await
    .unwrap();
    setup(&mut ws).await;
    crate::shutdown::sigterm(&child);
    // New connections are refused; the open session goes on.
    within("listener closes", async {
        while TcpStream::connect(&addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    ws.send(turn("after SIGTERM")).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await["serverContent"]["modelTurn"]["parts"][0]["text"],
        "Echo: after SIGTERM"
    );
    let frame = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(
        (frame.code, frame.reason.as_str()),
        (CloseCode::Away, "going away")
    );
    let status = crate::shutdown::exits(&mut child).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn live_metrics_count_sessions_frames_and_close_reasons() {
    let h = Harness::start().await;
    let mut ws = connect(&h, LIVE, &[]).await.unwrap();
    setup(&mut ws).await;
    ws.send(turn("x")).await.unwrap();
    next_json(&mut ws).await;
    next_json(&mut ws).await;
    let text = metrics(&h).await;
    assert!(text.contains("gem_proxy_live_sessions_open 1"), "{text}");
    ws.send(turn("mock:close:1000:bye")).await.unwrap();
    let _ = close_frame(&mut ws).await;
    let text = within("the session's end counted", async {
        loop {
            let text = metrics(&h).await;
            if text.contains("gem_proxy_live_sessions_open 0") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        text.contains(r#"gem_proxy_live_sessions_closed_total{reason="upstream"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gem_proxy_live_frames_total{direction="to_upstream"} 3"#),
        "{text}"
    );
    assert!(
        text.contains("gem_proxy_live_session_duration_seconds_count 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_key_whose_egress_proxy_is_down_rests_and_sessions_go_to_the_other_key() {
    // key1 must leave through a proxy nobody listens at: its session attempt fails before
    // anything is sent, key1 rests (proxy_unreachable) and every session opens on key2.
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.gemini.api_keys[0].proxy = Some(Secret::new("http://127.0.0.1:9"));
    })
    .await;
    for _ in 0..4 {
        let mut ws = connect(&h, LIVE, &[]).await.unwrap();
        setup(&mut ws).await;
        ws.close(None).await.unwrap();
        let _ = close_frame(&mut ws).await;
    }
    let keys: Vec<_> = live_requests(&h)
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    assert_eq!(keys, vec![KEY2.to_owned(); 4]);
    let health = health(&h).await;
    let rests = &key_state(&health, "key1")["resting"];
    assert_eq!(rests[0]["reason"], "proxy_unreachable", "{health}");

    // With every key's proxy down, the client gets Google's "try later" kind of close: 1011.
    let h = Harness::start_with(MockOptions::default(), |c| {
        for k in &mut c.gemini.api_keys {
            k.proxy = Some(Secret::new("http://127.0.0.1:9"));
        }
    })
    .await;
    let mut ws = connect(&h, LIVE, &[]).await.unwrap();
    ws.send(Message::text(SETUP)).await.unwrap();
    let frame = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Error);
    assert_eq!(
        frame.reason,
        "UNAVAILABLE: the upstream could not be reached"
    );
    assert!(live_requests(&h).is_empty());
}
