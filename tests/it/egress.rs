//! Egress proxies per key: each key's requests leave through its own proxy (an HTTP `CONNECT`
//! proxy and a SOCKS5 proxy, both with a user and password, started here), a stopped proxy rests
//! its key (`proxy_unreachable`) while clients keep getting answers from the other key, and proxy
//! credentials never show.

use std::sync::{Arc, Mutex};

use crate::support::*;
use gem_proxy::config::{Config, Secret};
use gem_proxy_mock::MockOptions;
use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const USER: &str = "egress-user";
const PASS: &str = "s3cret-proxy-pass";
const ADMIN_TOKEN: &str = "admin-token-for-egress-tests";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Connect,
    Socks5,
}

/// A small proxy of our own: it checks the user and password, tunnels to the destination, and
/// records which upstream keys (`x-goog-api-key`) went through it.
struct Proxy {
    addr: std::net::SocketAddr,
    keys: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
    tunnels: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(kind: Kind) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keys = Arc::new(Mutex::new(Vec::new()));
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let (seen, open) = (keys.clone(), tunnels.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                let tunnel = tokio::spawn(async move {
                    let _ = serve(kind, client, seen).await;
                });
                open.lock().unwrap().push(tunnel.abort_handle());
            }
        });
        Proxy {
            addr,
            keys,
            task,
            tunnels,
        }
    }

    fn url(&self, kind: Kind) -> String {
        let scheme = match kind {
            Kind::Connect => "http",
            Kind::Socks5 => "socks5h",
        };
        format!("{scheme}://{USER}:{PASS}@{}", self.addr)
    }

    fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }

    /// Stops, like a proxy that went down: no new connections, open tunnels cut.
    fn stop(&self) {
        self.task.abort();
        for t in self.tunnels.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn serve(
    kind: Kind,
    mut client: TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let target = match kind {
        Kind::Connect => connect_handshake(&mut client).await?,
        Kind::Socks5 => socks_handshake(&mut client).await?,
    };
    let Some(target) = target else {
        return Ok(());
    };
    let upstream = TcpStream::connect(&target).await?;
    upstream.set_nodelay(true)?;
    match kind {
        Kind::Connect => {
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?
        }
        Kind::Socks5 => client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?,
    }
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                return uw.shutdown().await;
            }
            record_keys(&buf[..n], &seen);
            uw.write_all(&buf[..n]).await?;
        }
    };
    let down = tokio::io::copy(&mut ur, &mut cw);
    let _ = tokio::join!(up, down);
    Ok(())
}

/// Notes every `x-goog-api-key` header in a chunk of tunnelled (plain HTTP) traffic.
fn record_keys(chunk: &[u8], seen: &Mutex<Vec<String>>) {
    let text = String::from_utf8_lossy(chunk).to_ascii_lowercase();
    let raw = String::from_utf8_lossy(chunk);
    for (at, _) in text.match_indices("x-goog-api-key:") {
        let value = raw[at + "x-goog-api-key:".len()..]
            .split("\r\n")
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        seen.lock().unwrap().push(value);
    }
}

/// Reads a `CONNECT host:port` request; answers 407 without the right credentials.
async fn connect_handshake(client: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 || head.len() > 8192 {
            return Ok(None);
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head
        .strip_prefix("CONNECT ")
        .and_then(|r| r.split(' ').next())
        .map(str::to_owned);
    use base64::Engine;
    let want = format!(
        "proxy-authorization: basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{USER}:{PASS}"))
            .to_ascii_lowercase()
    );
    if !head.to_ascii_lowercase().contains(&want) {
        client
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(None);
    }
    Ok(target)
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// RFC 1928 with RFC 1929 user/password: only that method is offered back.
async fn socks_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> std::io::Result<Option<String>> {
    let hello = read_exact(s, 2).await?;
    let methods = read_exact(s, usize::from(hello[1])).await?;
    if hello[0] != 5 || !methods.contains(&2) {
        s.write_all(&[5, 0xff]).await?;
        return Ok(None);
    }
    s.write_all(&[5, 2]).await?;
    let ver = read_exact(s, 2).await?;
    let user = read_exact(s, usize::from(ver[1])).await?;
    let plen = read_exact(s, 1).await?;
    let pass = read_exact(s, usize::from(plen[0])).await?;
    if user != USER.as_bytes() || pass != PASS.as_bytes() {
        s.write_all(&[1, 1]).await?;
        return Ok(None);
    }
    s.write_all(&[1, 0]).await?;
    let req = read_exact(s, 4).await?;
    let host = match req[3] {
        1 => {
            let a = read_exact(s, 4).await?;
            format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
        }
        3 => {
            let n = read_exact(s, 1).await?;
            String::from_utf8_lossy(&read_exact(s, usize::from(n[0])).await?).into_owned()
        }
        _ => return Ok(None),
    };
    let port = read_exact(s, 2).await?;
    Ok(Some(format!(
        "{host}:{}",
        u16::from_be_bytes([port[0], port[1]])
    )))
}

/// key1 leaves through `p1`, key2 through `p2`.
fn proxied(c: &mut Config, p1: &str, p2: &str) {
    c.gemini.api_keys[0].proxy = Some(Secret::new(p1));
    c.gemini.api_keys[1].proxy = Some(Secret::new(p2));
    c.admin.token = Secret::new(ADMIN_TOKEN);
}

/// Each proxy sees exactly the traffic of its key; answers are unchanged.
#[tokio::test]
async fn each_proxy_carries_exactly_its_keys_traffic() {
    let connect = Proxy::start(Kind::Connect).await;
    let socks = Proxy::start(Kind::Socks5).await;
    let (u1, u2) = (connect.url(Kind::Connect), socks.url(Kind::Socks5));
    let h = Harness::start_with(MockOptions::default(), |c| proxied(c, &u1, &u2)).await;
    for _ in 0..10 {
        let (status, _, body) = h.post(FLASH, GENERATE_BODY).await;
        assert_eq!(status, 200);
        assert_eq!(json(&body)["modelVersion"], "gemini-2.5-flash");
    }
    let (through_connect, through_socks) = (connect.keys(), socks.keys());
    assert!(!through_connect.is_empty() && !through_socks.is_empty());
    assert!(
        through_connect.iter().all(|k| k == KEY1),
        "{through_connect:?}"
    );
    assert!(through_socks.iter().all(|k| k == KEY2), "{through_socks:?}");
    assert_eq!(
        through_connect.len() + through_socks.len(),
        h.mock.requests().len()
    );
    let seen = keys_seen(&h);
    assert_eq!(
        seen.iter().filter(|k| *k == KEY1).count(),
        through_connect.len()
    );
}

/// `gemini.proxy` is every key's default; a key's `direct` leaves it out.
#[tokio::test]
async fn the_default_proxy_applies_unless_a_key_goes_direct() {
    let socks = Proxy::start(Kind::Socks5).await;
    let url = socks.url(Kind::Socks5);
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.gemini.proxy = Some(Secret::new(&url));
        c.gemini.api_keys[1].proxy = Some(Secret::new("direct"));
    })
    .await;
    for _ in 0..8 {
        assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    }
    let through = socks.keys();
    assert!(!through.is_empty());
    assert!(through.iter().all(|k| k == KEY1), "{through:?}");
    assert!(keys_seen(&h).iter().any(|k| k == KEY2), "key2 went direct");
}

/// A stopped proxy rests its key with `proxy_unreachable`; clients keep getting 200s from the
/// other key.
#[tokio::test]
async fn a_stopped_proxy_rests_its_key_and_clients_keep_getting_answers() {
    let connect = Proxy::start(Kind::Connect).await;
    let socks = Proxy::start(Kind::Socks5).await;
    let (u1, u2) = (connect.url(Kind::Connect), socks.url(Kind::Socks5));
    let h = Harness::start_with(MockOptions::default(), |c| proxied(c, &u1, &u2)).await;
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    connect.stop();
    let before = socks.keys().len();
    for i in 0..10 {
        let (status, _, _) = h.post(FLASH, GENERATE_BODY).await;
        assert_eq!(status, 200, "request {i} after the proxy stopped");
    }
    assert_eq!(socks.keys().len(), before + 10, "key2 served them all");
    let health = health(&h).await;
    let key1 = key_state(&health, "key1");
    assert_eq!(key1["state"], "cooling", "{key1}");
    assert_eq!(key1["resting"][0]["reason"], "proxy_unreachable", "{key1}");
    assert_eq!(key1["resting"][0]["model"], "gemini-2.5-flash");
    assert_eq!(
        key1["proxy"],
        format!("http://{}", connect.addr),
        "shown without user and password"
    );
    assert_eq!(key_state(&health, "key2")["state"], "active");
    let text = health.to_string();
    assert!(!text.contains(PASS) && !text.contains(USER), "{text}");
}

/// Proxy URLs are secrets: the admin API masks them, and a masked value sent back keeps them.
#[tokio::test]
async fn proxy_credentials_never_show_in_the_admin_api() {
    let connect = Proxy::start(Kind::Connect).await;
    let socks = Proxy::start(Kind::Socks5).await;
    let (u1, u2) = (connect.url(Kind::Connect), socks.url(Kind::Socks5));
    let h = Harness::start_with(MockOptions::default(), |c| {
        proxied(c, &u1, &u2);
        c.gemini.proxy = Some(Secret::new(&u2));
    })
    .await;
    let mut req = request(Method::GET, &h.admin_url("/api/config"), "");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    let (status, _, body) = h.call(req).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(PASS), "{text}");
    let config = json(&body);
    let config = config.get("config").unwrap_or(&config);
    assert_eq!(config["gemini"]["proxy"], Secret::MASK);
    assert_eq!(config["gemini"]["api_keys"][0]["proxy"], Secret::MASK);
    // Still working through them.
    assert_eq!(h.post(FLASH, GENERATE_BODY).await.0, 200);
    assert!(!connect.keys().is_empty() || !socks.keys().is_empty());
}

/// Live API sessions leave through their key's proxy too (their own tunnel: a WebSocket cannot
/// ride the pooled client), frames relayed both ways through it.
#[tokio::test]
async fn live_sessions_leave_through_their_keys_proxy() {
    use crate::live::{LIVE, close_frame, connect, live_requests, next_json, setup, turn};
    use futures_util::SinkExt;

    let connect_proxy = Proxy::start(Kind::Connect).await;
    let socks = Proxy::start(Kind::Socks5).await;
    let (u1, u2) = (connect_proxy.url(Kind::Connect), socks.url(Kind::Socks5));
    let h = Harness::start_with(MockOptions::default(), |c| proxied(c, &u1, &u2)).await;
    for i in 0..4 {
        let mut ws = connect(&h, LIVE, &[]).await.unwrap();
        setup(&mut ws).await;
        ws.send(turn(&format!("through a proxy {i}")))
            .await
            .unwrap();
        assert_eq!(
            next_json(&mut ws).await["serverContent"]["modelTurn"]["parts"][0]["text"],
            format!("Echo: through a proxy {i}")
        );
        ws.close(None).await.unwrap();
        let _ = close_frame(&mut ws).await;
    }
    let seen: Vec<String> = live_requests(&h)
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.contains(&KEY1.to_owned()) && seen.contains(&KEY2.to_owned()),
        "{seen:?}"
    );
    // Each session's handshake went through its key's proxy, and only there.
    let (through_connect, through_socks) = (connect_proxy.keys(), socks.keys());
    assert!(
        through_connect.iter().all(|k| k == KEY1),
        "{through_connect:?}"
    );
    assert!(through_socks.iter().all(|k| k == KEY2), "{through_socks:?}");
    assert_eq!(
        (through_connect.len(), through_socks.len()),
        (
            seen.iter().filter(|k| *k == KEY1).count(),
            seen.iter().filter(|k| *k == KEY2).count()
        )
    );
}
