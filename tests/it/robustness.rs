//! Hostile or broken input never takes the gateway down, and never disturbs other requests.

use crate::support::*;
use bytes::Bytes;
use gem_proxy_mock::MockOptions;
use http::{Method, Request};
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

async fn still_serving(h: &Harness) {
    let (status, _, body) = h.post(PATH, GENERATE_BODY).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Reads whatever the gateway answers until it closes the connection.
async fn read_to_close(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = within("gateway answers or closes", s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_http_is_refused_and_the_gateway_keeps_serving() {
    let h = Harness::start().await;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /v1beta/models HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"POST /v1beta/models HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        &[0u8; 4096],
    ] {
        let mut s = TcpStream::connect(h.server.proxy_addr()).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let answer = read_to_close(s).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{answer}"
        );
        still_serving(&h).await;
    }
    assert!(h.mock.requests().iter().all(|r| r.path == PATH));
}

/// A 100 MB upload is cut off at the limit with a 413, without the gateway holding it all.
#[tokio::test]
async fn a_100_mb_body_is_refused_and_others_are_unaffected() {
    let h = Harness::start().await;
    // Declared: refused from the headers alone.
    let mut s = TcpStream::connect(h.server.proxy_addr()).await.unwrap();
    s.write_all(
        format!(
            "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            100 << 20
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&[b'a'; 65536]).await.unwrap();
    let mut head = [0u8; 12];
    within("413", s.read_exact(&mut head)).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    drop(s);

    // Streamed without a length: 100 MB of chunks, refused once past 20 MiB.
    let frames = (0..1600)
        .map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'b'; 65536]))));
    let body = http_body_util::StreamBody::new(IterStream(frames));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = Request::post(h.url(PATH)).body(body).unwrap();
    match within("chunked 100 MB", client.request(req)).await {
        Ok(res) => assert_eq!(res.status(), 413),
        // The gateway may close while the client is still writing: also a refusal.
        Err(e) => assert!(
            e.is_connect()
                || format!("{e:?}").contains("Canceled")
                || format!("{e:?}").contains("Io"),
            "{e:?}"
        ),
    }
    assert!(
        h.mock.requests().is_empty(),
        "nothing oversized reached the upstream"
    );
    still_serving(&h).await;
}

/// A client that announces a body and hangs up half way costs nothing upstream.
#[tokio::test]
async fn a_body_that_stops_half_way_never_reaches_the_upstream() {
    let h = Harness::start().await;
    let mut s = TcpStream::connect(h.server.proxy_addr()).await.unwrap();
    s.write_all(
        format!("POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{\"contents\":")
            .as_bytes(),
    )
    .await
    .unwrap();
    s.shutdown().await.unwrap();
    let _ = read_to_close(s).await;
    still_serving(&h).await;
    assert_eq!(
        h.mock.requests().len(),
        1,
        "only the good request went upstream"
    );
}

/// A client that stalls mid-body gets a 408 after `server.request_body_timeout_seconds` (paused
/// time: the virtual clock jumps while the gateway waits).
#[tokio::test(start_paused = true)]
async fn a_stalled_body_is_answered_408() {
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.server.request_body_timeout_seconds = 5
    })
    .await;
    let mut s = TcpStream::connect(h.server.proxy_addr()).await.unwrap();
    s.write_all(
        format!("POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    within("408", s.read_exact(&mut head)).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 408");
    assert!(h.mock.requests().is_empty());
}

/// Many requests at once, some of them failing upstream mid-stream: each gets its own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_streams_do_not_disturb_concurrent_requests() {
    let h = std::sync::Arc::new(Harness::start().await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = request(
                Method::POST,
                &h.url("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
                GENERATE_BODY,
            );
            if i % 2 == 0 {
                req.headers_mut()
                    .insert("x-mock-fail-after-chunks", "1".parse().unwrap());
            }
            match h.client.request(req).await {
                Ok(res) => {
                    let ok = http_body_util::BodyExt::collect(res.into_body())
                        .await
                        .is_ok();
                    (i, ok)
                }
                Err(_) => (i, false),
            }
        }));
    }
    for t in tasks {
        let (i, ok) = within("request", t).await.unwrap();
        assert_eq!(ok, i % 2 == 1, "request {i}");
    }
    still_serving(&h).await;
}

struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// `server.max_connections` caps open client connections: one more waits, unanswered, in the
/// listen backlog until a connection closes (paused time: the wait is virtual).
#[tokio::test(start_paused = true)]
async fn connections_over_the_cap_wait_until_one_closes() {
    let h = Harness::start_with(MockOptions::default(), |c| c.server.max_connections = 1).await;
    let request = "GET /v1beta/models HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = TcpStream::connect(h.server.proxy_addr()).await.unwrap();
    first.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    within("first answer", first.read_exact(&mut head))
        .await
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let mut second = TcpStream::connect(h.server.proxy_addr()).await.unwrap();
    second.write_all(request.as_bytes()).await.unwrap();
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        second.read_exact(&mut head),
    )
    .await;
    assert!(
        waited.is_err(),
        "the second connection was served while the first was open"
    );

    drop(first);
    within("second answer", second.read_exact(&mut head))
        .await
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}
