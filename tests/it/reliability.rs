//! Failover that never blames a key for the client's mistake and never replays what may bill
//! twice; the gateway's own limits under abuse (idle connections, body budget, long model names).

use crate::support::*;
use bytes::Bytes;
use gem_proxy_mock::{Failure, MockOptions};
use http::{Method, Request};
use http_body_util::Full;

const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

fn with_error(
    h: &Harness,
    method: Method,
    path: &str,
    body: &str,
    code: &str,
) -> Request<Full<Bytes>> {
    let mut req = request(method, &h.url(path), body);
    req.headers_mut()
        .insert("x-mock-error", code.parse().unwrap());
    req
}

/// A resumable-upload chunk that reaches a key which does not own the upload (after a restart,
/// or on another replica) gets Google's 403: it passes to the client once, and no key leaves
/// rotation.
#[tokio::test]
async fn an_honest_403_passes_through_once_and_blames_no_key() {
    let h = Harness::start_with(MockOptions::default(), |c| c.gemini.max_retries = 5).await;
    let req = Request::post(
        h.url("/upload/v1beta/files?upload_id=unknown-upload&upload_protocol=resumable"),
    )
    .header("x-goog-upload-command", "upload")
    .header("x-goog-upload-offset", "0")
    .header("x-mock-error", "403-resource")
    .body(Full::new(Bytes::from_static(b"chunk")))
    .unwrap();
    let (status, _, body) = h.call(req).await;
    assert_google_error(status, &body, 403, "PERMISSION_DENIED");
    assert_eq!(keys_seen(&h).len(), 1, "not replayed on other keys");
    let v = health(&h).await;
    for id in ["key1", "key2"] {
        assert_eq!(key_state(&v, id)["state"], "active", "{id}: {v}");
    }
    // The same on a model call (a tuned model the key may not use).
    h.mock.clear();
    let (status, _, _) = h
        .call(with_error(
            &h,
            Method::POST,
            FLASH,
            GENERATE_BODY,
            "403-resource",
        ))
        .await;
    assert_eq!(status, 403);
    assert_eq!(keys_seen(&h).len(), 1);
    let v = health(&h).await;
    assert_eq!(key_state(&v, "key1")["state"], "active", "{v}");
    assert_eq!(key_state(&v, "key2")["state"], "active", "{v}");
}

/// Google's explicit word (a suspended consumer) still takes the key out, and the request is
/// replayed on the other key.
#[tokio::test]
async fn a_suspended_key_still_leaves_rotation() {
    let h = Harness::start().await;
    h.mock
        .set_key_failure(KEY1, Some(Failure::PermissionDenied));
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    assert_eq!(keys_seen(&h), [KEY1, KEY2]);
    let v = health(&h).await;
    assert_eq!(key_state(&v, "key1")["state"], "invalid", "{v}");
    assert_eq!(key_state(&v, "key2")["state"], "active", "{v}");
}

/// A 500 may come after Google ran (and billed) the request: by default it passes to the client
/// without a replay; with `gemini.retry_on_timeout` it is replayed on the next key.
#[tokio::test]
async fn a_500_is_replayed_only_when_configured() {
    let h = Harness::start().await;
    h.mock.set_key_failure(KEY1, Some(Failure::Internal));
    let (status, _, body) = h.post(FLASH, GENERATE_BODY).await;
    assert_google_error(status, &body, 500, "INTERNAL");
    assert_eq!(keys_seen(&h), [KEY1]);

    let h = Harness::start_with(MockOptions::default(), |c| c.gemini.retry_on_timeout = true).await;
    h.mock.set_key_failure(KEY1, Some(Failure::Internal));
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    assert_eq!(keys_seen(&h), [KEY1, KEY2]);
}

/// 429 and 503 prove Google did nothing: they are replayed whatever `retry_on_timeout` says.
#[tokio::test]
async fn refusals_are_always_replayed() {
    for failure in [
        Failure::Overloaded,
        Failure::RateLimited {
            retry_delay_seconds: Some(1),
            per_day: false,
        },
    ] {
        let h = Harness::start().await;
        h.mock.set_key_failure(KEY1, Some(failure.clone()));
        assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200, "{failure:?}");
        assert_eq!(keys_seen(&h), [KEY1, KEY2], "{failure:?}");
    }
}

/// Creating a resource is never replayed on an unknown outcome, even with
/// `gemini.retry_on_timeout`: a second cached content (or file, or batch) would be left behind.
#[tokio::test]
async fn resource_creation_is_never_replayed_on_an_unknown_outcome() {
    let h = Harness::start_with(MockOptions::default(), |c| c.gemini.retry_on_timeout = true).await;
    h.mock.set_key_failure(KEY1, Some(Failure::Internal));
    h.mock.set_key_failure(KEY2, Some(Failure::Internal));
    let create = r#"{"model":"models/gemini-2.5-flash","contents":[{"role":"user","parts":[{"text":"a long document"}]}]}"#;
    let (status, _, _) = h.post("/v1beta/cachedContents", create).await;
    assert_eq!(status, 500);
    assert_eq!(keys_seen(&h).len(), 1);
    // A batch, too.
    h.mock.clear();
    let (status, _, _) = h
        .post("/v1beta/models/gemini-2.5-flash:batchGenerateContent", "{}")
        .await;
    assert_eq!(status, 500);
    assert_eq!(keys_seen(&h).len(), 1);
    // While a generate call is replayed under the same setting.
    h.mock.clear();
    h.post(FLASH, GENERATE_BODY).await;
    assert_eq!(keys_seen(&h).len(), 2);
}

/// An upstream that never answers within `gemini.timeout_seconds` may still be working on the
/// request: by default the 504 is not replayed on another key. Paused time.
#[tokio::test(start_paused = true)]
async fn an_upstream_timeout_is_not_replayed_by_default() {
    let h = Harness::start_with(MockOptions::default(), |c| c.gemini.timeout_seconds = 2).await;
    let mut req = request(Method::POST, &h.url(FLASH), GENERATE_BODY);
    req.headers_mut()
        .insert("x-mock-delay-headers-ms", "120000".parse().unwrap());
    let (status, _, body) = h.call(req).await;
    assert_google_error(status, &body, 504, "DEADLINE_EXCEEDED");
    assert_eq!(keys_seen(&h).len(), 1);
}

/// A connection that cannot be made never reached Google: it is replayed on every key.
#[tokio::test]
async fn connect_failures_are_replayed() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.gemini.base_url = format!("http://127.0.0.1:{port}");
    })
    .await;
    let (status, _, body) = h.post(FLASH, GENERATE_BODY).await;
    assert_google_error(status, &body, 502, "UNAVAILABLE");
    let v = health(&h).await;
    for id in ["key1", "key2"] {
        assert_eq!(key_state(&v, id)["errors"]["server"], 1, "{id} tried: {v}");
    }
}

mod idle_connections {
    use std::time::Duration;

    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use super::*;

    const IDLE: u64 = 5;

    async fn harness() -> Harness {
        Harness::start_with(MockOptions::default(), |c| {
            c.server.idle_connection_timeout_seconds = IDLE;
        })
        .await
    }

    /// Reads until the gateway closes the connection; returns what it sent.
    async fn read_to_close(conn: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        within(
            "the gateway closes the connection",
            conn.read_to_end(&mut got),
        )
        .await
        .unwrap_or(0);
        got
    }

    /// A client that connects and never sends a byte is closed after the idle timeout, on the
    /// proxy and the admin listener alike. Paused time.
    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_idle_timeout() {
        let h = harness().await;
        for addr in [h.server.proxy_addr(), h.server.admin_addr().unwrap()] {
            let started = Instant::now();
            let mut silent = TcpStream::connect(addr).await.unwrap();
            assert!(read_to_close(&mut silent).await.is_empty());
            assert!(started.elapsed() >= Duration::from_secs(IDLE), "{addr}");
        }
    }

    /// A kept-alive HTTP/1.1 connection is closed once it has been idle for the timeout after
    /// its last answer.
    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
        let h = harness().await;
        let mut conn = TcpStream::connect(h.server.proxy_addr()).await.unwrap();
        conn.write_all(b"GET /v1beta/models HTTP/1.1\r\nhost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        conn.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        let answered = Instant::now();
        read_to_close(&mut conn).await;
        assert!(answered.elapsed() >= Duration::from_secs(IDLE));
    }

    /// An HTTP/2 connection that only answers pings is idle: the gateway ends it (GOAWAY).
    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_that_only_pings_is_closed() {
        let h = harness().await;
        let io = TokioIo::new(TcpStream::connect(h.server.proxy_addr()).await.unwrap());
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(1))
            .keep_alive_while_idle(true)
            .handshake::<_, Full<Bytes>>(io)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let res = send
            .send_request(
                Request::get(h.url("/v1beta/models"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        drop(res);
        let answered = Instant::now();
        within("GOAWAY", conn).await.unwrap().unwrap();
        assert!(answered.elapsed() >= Duration::from_secs(IDLE));
    }

    /// A stream that runs longer than the idle timeout is a request in progress: never cut.
    #[tokio::test(start_paused = true)]
    async fn a_long_stream_is_not_idle() {
        let h = Harness::start_with(
            MockOptions {
                chunks: 4,
                chunk_delay: Duration::from_secs(3),
                ..MockOptions::default()
            },
            |c| c.server.idle_connection_timeout_seconds = IDLE,
        )
        .await;
        let (status, _, body) = h
            .post(
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                GENERATE_BODY,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8_lossy(&body).matches("data: ").count(),
            4,
            "every event arrived"
        );
    }

    /// Every regular admin connection taken by idle clients: a `/health` probe on a new
    /// connection is still answered (the reserve), long before the idle ones time out.
    #[tokio::test(start_paused = true)]
    async fn health_probes_are_answered_while_idle_clients_fill_the_admin_listener() {
        let h = Harness::start_with(MockOptions::default(), |c| {
            c.server.idle_connection_timeout_seconds = 3600;
        })
        .await;
        let admin = h.server.admin_addr().unwrap();
        let mut idle = Vec::new();
        for _ in 0..gem_proxy::server::ADMIN_CONNECTIONS + 2 * gem_proxy::server::ADMIN_RESERVE {
            idle.push(TcpStream::connect(admin).await.unwrap());
        }
        for _ in 0..3 {
            let mut probe = TcpStream::connect(admin).await.unwrap();
            probe
                .write_all(b"GET /health HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let answer = read_to_close(&mut probe).await;
            assert!(
                answer.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&answer)
            );
        }
        drop(idle);
    }
}

/// A model name longer than any Google serves is refused at the edge, in the path or in the
/// body, before it can reach the per-model key state.
#[tokio::test]
async fn overlong_model_names_are_refused() {
    let h = Harness::start().await;
    let long = "m".repeat(129);
    let (status, _, body) = h
        .post(
            &format!("/v1beta/models/{long}:generateContent"),
            GENERATE_BODY,
        )
        .await;
    assert_google_error(status, &body, 400, "INVALID_ARGUMENT");
    let (status, _, body) = h
        .post(
            "/v1beta/openai/chat/completions",
            &format!(r#"{{"model":"{long}","messages":[]}}"#),
        )
        .await;
    assert_google_error(status, &body, 400, "INVALID_ARGUMENT");
    assert!(h.mock.requests().is_empty(), "nothing reached the upstream");
    // 128 is still fine.
    let ok = "m".repeat(128);
    let (status, _, _) = h
        .post(
            &format!("/v1beta/models/{ok}:generateContent"),
            GENERATE_BODY,
        )
        .await;
    assert_ne!(status, 400);
}

/// Bodies buffered at once share `server.max_buffered_body_bytes`: while one large body is
/// arriving, a second that would go over the budget is answered 503 with `Retry-After`; once the
/// first is done, the second goes through.
#[tokio::test]
async fn buffered_bodies_share_one_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MIB: usize = 1024 * 1024;
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.server.max_request_body_bytes = MIB;
        c.server.max_buffered_body_bytes = MIB + MIB / 2;
    })
    .await;
    let big = format!(
        r#"{{"contents":[{{"parts":[{{"text":"{}"}}]}}]}}"#,
        "a".repeat(MIB - 100)
    );
    let mut slow = tokio::net::TcpStream::connect(h.server.proxy_addr())
        .await
        .unwrap();
    let head = format!(
        "POST {FLASH} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        big.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&big.as_bytes()[..1000]).await.unwrap();
    // The first body holds its declared length; the second does not fit beside it.
    let refused = within("the budget check", async {
        loop {
            let (status, headers, body) = h.post(FLASH, &big).await;
            if status == 503 {
                break (status, headers, body);
            }
        }
    })
    .await;
    assert_google_error(refused.0, &refused.2, 503, "UNAVAILABLE");
    assert_eq!(refused.1["retry-after"], "1");
    // A small request still fits.
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);

    slow.write_all(&big.as_bytes()[1000..]).await.unwrap();
    let mut answer = Vec::new();
    within("the slow request's answer", slow.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..64.min(answer.len())])
    );
    assert_eq!(h.post(FLASH, &big).await.0, 200);
}

mod compression {
    use std::io::Read;

    use http_body_util::BodyExt;

    use super::*;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    fn gzip_accepting(h: &Harness, path: &str, body: &str) -> Request<Full<Bytes>> {
        let mut req = request(Method::POST, &h.url(path), body);
        req.headers_mut()
            .insert("accept-encoding", "gzip".parse().unwrap());
        req
    }

    /// A client that accepts gzip gets gzip, and still every token is counted: the gateway asks
    /// Google for plain answers (it reads them) and compresses towards the client itself.
    #[tokio::test]
    async fn tokens_are_counted_when_the_client_accepts_gzip() {
        let h = Harness::start().await;
        let (status, headers, body) = h.call(gzip_accepting(&h, FLASH, GENERATE_BODY)).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-encoding"], "gzip");
        let answer = json(&gunzip(&body));
        let total = answer["usageMetadata"]["totalTokenCount"].as_u64().unwrap();
        assert!(total > 0);
        assert_eq!(
            h.mock.requests()[0].header("accept-encoding"),
            Some("identity"),
            "the upstream is asked for plain answers"
        );
        let v = health(&h).await;
        assert_eq!(key_state(&v, "key1")["tokens"]["total"], total, "{v}");
    }

    /// `API_KEY_INVALID` is recognised (and the request replayed) whatever the client accepts.
    #[tokio::test]
    async fn an_invalid_key_is_recognised_when_the_client_accepts_gzip() {
        let h = Harness::start().await;
        h.mock.set_key_failure(KEY1, Some(Failure::InvalidKey));
        let (status, _, body) = h.call(gzip_accepting(&h, FLASH, GENERATE_BODY)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&gunzip(&body)));
        assert_eq!(keys_seen(&h), [KEY1, KEY2]);
        let v = health(&h).await;
        assert_eq!(key_state(&v, "key1")["state"], "invalid", "{v}");
    }

    /// Streams are never compressed (an encoder would hold events back): each SSE event reaches
    /// a gzip-accepting client while the upstream still holds the next.
    #[tokio::test]
    async fn sse_is_not_compressed_and_flushes_per_event() {
        let h = Harness::start_with(
            MockOptions {
                chunks: 3,
                ..MockOptions::default()
            },
            |_| {},
        )
        .await;
        h.mock.hold_streams(true);
        for path in [
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        ] {
            let res = h.send(gzip_accepting(&h, path, GENERATE_BODY)).await;
            assert_eq!(res.status(), 200);
            assert!(res.headers().get("content-encoding").is_none(), "{path}");
            let mut body = res.into_body();
            let first = within("the first piece", body.frame())
                .await
                .unwrap()
                .unwrap();
            assert!(!first.data_ref().unwrap().is_empty(), "{path}");
            // Let the rest out and read to the end.
            for _ in 0..3 {
                h.mock.release_chunk();
            }
            while let Some(frame) = within("stream end", body.frame()).await {
                frame.unwrap();
            }
        }
    }
}

/// The upstream breaks a stream off mid-way while the client talks HTTP/2 to the gateway: the
/// client's stream ends with an error (`RST_STREAM`), never with a clean, truncated end.
#[tokio::test]
async fn a_stream_broken_mid_way_is_an_error_over_http2_too() {
    let mut h = Harness::start().await;
    h.client = http2_client();
    assert!(
        stream_broken_mid_way(&h).await,
        "the HTTP/2 client must see the failure"
    );
    assert_eq!(h.mock.requests().len(), 1, "not replayed");
    // The connection itself survives: the next request on it succeeds.
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
}

/// A request refused before its body was read (here: an ambiguous path, answered by the route
/// layer) keeps its HTTP/1.1 connection: the gateway reads the body off the wire and the client's
/// next request on the same connection is served. A body announced longer than the drain limit
/// closes the connection instead.
mod refused_bodies {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::support::*;

    const BODY: &str = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;

    fn head(path: &str, content_length: usize) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             content-length: {content_length}\r\n\r\n"
        )
    }

    /// Reads one response with a `content-length` from `c`; its status code, or `None` when the
    /// connection ended first.
    async fn response(c: &mut TcpStream) -> Option<u16> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let read = async {
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() >= end + 4 + len {
                        return head.get(9..12).and_then(|s| s.parse().ok());
                    }
                }
                match c.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("an answer or a close within 10 s")
    }

    #[tokio::test]
    async fn a_refused_request_keeps_its_connection_once_its_body_is_drained() {
        let h = Harness::start().await;
        let mut c = TcpStream::connect(h.server.proxy_addr()).await.unwrap();
        // The headers alone: the gateway answers before the body is even sent.
        let refused = "/v1beta//models/gemini-2.5-flash:generateContent";
        c.write_all(head(refused, BODY.len()).as_bytes())
            .await
            .unwrap();
        assert_eq!(response(&mut c).await, Some(400));
        c.write_all(BODY.as_bytes()).await.unwrap();
        let ok = "/v1beta/models/gemini-2.5-flash:generateContent";
        c.write_all(format!("{}{BODY}", head(ok, BODY.len())).as_bytes())
            .await
            .unwrap();
        assert_eq!(
            response(&mut c).await,
            Some(200),
            "the next request on the connection is served"
        );
    }

    #[tokio::test]
    async fn a_refused_request_with_a_long_body_closes_its_connection() {
        let h = Harness::start().await;
        let mut c = TcpStream::connect(h.server.proxy_addr()).await.unwrap();
        let refused = "/v1beta//models/gemini-2.5-flash:generateContent";
        let long = gem_proxy::body::DRAIN_LIMIT + 1;
        c.write_all(head(refused, long).as_bytes()).await.unwrap();
        assert_eq!(response(&mut c).await, Some(400));
        assert_eq!(response(&mut c).await, None, "closed, not drained");
    }
}
