//! A Live API session (WebSocket): the upstream connection, the client's upgrade, and the relay
//! of frames between them. [`crate::upstream`] calls [`open`] for a request whose route is
//! [`Api::Live`](crate::route::Api::Live), once every layer above has decided on it like on any
//! request (route, auth, client limit, the Live layer's session limits, key balance).
//!
//! - **Upstream first:** the WebSocket to Google is opened before the client's upgrade is
//!   answered, with the selected key in `x-goog-api-key` and every client credential removed
//!   (for the ephemeral-token endpoint, `…Constrained`, the token goes as `access_token=`). A
//!   handshake Google refuses (429, an invalid key, 5xx) comes back as Google's HTTP answer, so
//!   failover reads it and tries another key exactly as for a request. Own TCP (`TCP_NODELAY`)
//!   and TLS (rustls, aws-lc-rs, ALPN `http/1.1` only: a WebSocket cannot ride the pooled
//!   client's HTTP/2 connections) per session.
//! - **Then the client:** `101 Switching Protocols`, and the relay runs in its own task on the
//!   upgraded connection.
//! - **Relay:** every message is sent on as it arrives, both ways (text, binary, ping, pong;
//!   close frames with their code and reason). A message is flushed on its own; nothing is held
//!   back. The first client message, the `setup`, names the model: one the token's `models`
//!   claim does not allow ends the session with 1008 before it reaches Google.
//! - **Quota:** when Google closes a session with a quota reason (`RESOURCE_EXHAUSTED`, "exceeded
//!   your current quota"), the key rests for Live sessions and for the session's model, like an
//!   HTTP 429 (`gemini.default_retry_delay_seconds`, or until midnight Pacific for a daily
//!   quota); the client receives Google's close as it was.
//! - **Shutdown:** once the gateway starts shutting down, open sessions go on for
//!   `server.shutdown_grace_seconds`, then both sides get 1001 "going away".
//!
//! Counted in [`LiveSessions`](crate::live_sessions::LiveSessions): open sessions, frames and
//! bytes each way, durations and close reasons.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode, Uri};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::auth::Client;
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::http_client::X_GOOG_API_KEY;
use crate::key_pool::{KeyOutcome, RestReason, SelectedKey};
use crate::live_sessions::{ClientSlot, CloseReason, Direction, OpenSession, SessionHold, Slot};
use crate::route::Route;

/// The model key balance, key limits and rests count Live sessions under (the URL names no
/// model; the Live layer puts this one in the route). A quota close rests the key for it and for
/// the model of the session's `setup`.
pub const LIVE_MODEL: &str = "live";

/// Bytes read from a socket at a time, per side of a session. tungstenite allocates this up front
/// (128 KiB by default: a quarter of a MiB per session for both sides); Live messages are small
/// JSON and audio chunks of a few KiB, and larger ones are read in several steps.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The WebSocket settings of both sides: a small read buffer, and every message written out at
/// once (no write batching: the relay must not hold a frame back).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
}

/// How long the side that did not close gets to answer a close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `Sec-WebSocket-Key`.
static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
/// `Sec-WebSocket-Accept`.
static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
/// `Sec-WebSocket-Version`.
static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
/// `Sec-WebSocket-Extensions`: never negotiated (the relay passes messages, not compressed frames).
static SEC_WEBSOCKET_EXTENSIONS: HeaderName = HeaderName::from_static("sec-websocket-extensions");
/// `Sec-WebSocket-Protocol`.
static SEC_WEBSOCKET_PROTOCOL: HeaderName = HeaderName::from_static("sec-websocket-protocol");

/// Headers of the client's upgrade request that belong to its own WebSocket handshake (or carry
/// its credential) and never reach Google.
static NOT_FORWARDED: [&HeaderName; 8] = [
    &header::HOST,
    &header::AUTHORIZATION,
    &header::PROXY_AUTHORIZATION,
    &X_GOOG_API_KEY,
    &header::CONTENT_LENGTH,
    &SEC_WEBSOCKET_KEY,
    &SEC_WEBSOCKET_VERSION,
    &SEC_WEBSOCKET_EXTENSIONS,
];

/// Why a request on a Live route cannot become a session, if it cannot: not a WebSocket upgrade
/// (`GET`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, a `Sec-WebSocket-Key`).
pub fn not_an_upgrade(method: &http::Method, headers: &HeaderMap) -> Option<&'static str> {
    let has = |name: HeaderName, value: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(value))
            })
        })
    };
    if method != http::Method::GET
        || !has(header::UPGRADE, "websocket")
        || !has(header::CONNECTION, "upgrade")
    {
        return Some("the Live API needs a WebSocket upgrade (GET with Upgrade: websocket)");
    }
    if !has(SEC_WEBSOCKET_VERSION.clone(), "13") || !headers.contains_key(&SEC_WEBSOCKET_KEY) {
        return Some("the WebSocket upgrade needs Sec-WebSocket-Version: 13 and a key");
    }
    None
}

/// The ephemeral token a request to the constrained endpoint carries: `access_token=` in the
/// query, `Authorization: Token …` (Python SDK), or an `auth_tokens/…` value where a key goes.
pub fn ephemeral_token<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    let query = uri.query().unwrap_or("").split('&');
    if let Some(t) = query
        .filter_map(|p| p.strip_prefix("access_token="))
        .find(|t| !t.is_empty())
    {
        return Some(t);
    }
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some((scheme, token)) = v.trim().split_once(' ')
        && scheme.eq_ignore_ascii_case("token")
    {
        return Some(token.trim());
    }
    crate::auth::token_from_request(headers, uri).filter(|t| t.starts_with("auth_tokens/"))
}

/// Opens the upstream WebSocket with `key`, answers the client's upgrade and starts the relay.
pub async fn open(
    gateway: Arc<Gateway>,
    mut parts: Parts,
    key: SelectedKey,
) -> Result<Response<GatewayBody>, GatewayError> {
    let live = gateway.live();
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return Err(GatewayError::InvalidArgument(
            "the Live API needs an HTTP/1.1 WebSocket upgrade".into(),
        ));
    };
    let accept = parts
        .headers
        .get(&SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .ok_or(GatewayError::InvalidArgument(
            "the WebSocket upgrade has no Sec-WebSocket-Key".into(),
        ))?;
    let max = live.config.gemini.live.max_sessions_per_key;
    // The Live layer kept full keys out of the pick; this closes the race between two sessions.
    let key_slot =
        gateway
            .live_sessions()
            .try_key(&key.0.id, max)
            .ok_or(GatewayError::TooManySessions(
                "every upstream key carries gemini.live.max_sessions_per_key Live sessions",
            ))?;

    let constrained = parts
        .extensions
        .get::<Route>()
        .is_some_and(|r| r.is_constrained_live(parts.uri.path()));
    let client_uri = match crate::route::live_path(parts.uri.path()) {
        Some(path) if path.len() != parts.uri.path().len() => {
            let mut pq = path.to_owned();
            if let Some(q) = parts.uri.query() {
                pq.push('?');
                pq.push_str(q);
            }
            pq.parse::<Uri>()
                .map_err(|_| GatewayError::Internal("bad Live path"))?
        }
        _ => parts.uri.clone(),
    };
    let mut uri = live.target.uri_for(&client_uri)?;
    if constrained
        && !uri.query().unwrap_or("").contains("access_token=")
        && let Some(token) = ephemeral_token(&parts.headers, &parts.uri)
    {
        uri = with_query_param(&uri, "access_token", token)?;
    }
    let mut headers = parts.headers.clone();
    crate::upstream::strip_hop_by_hop(&mut headers);
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
    headers.insert(X_GOOG_API_KEY.clone(), key.0.api_key_header.clone());

    let gemini = &live.config.gemini;
    let upstream = match connect(&uri, headers, gemini.connect_timeout(), gemini.timeout()).await {
        Ok(ws) => ws,
        Err(Failure::Refused(res)) => {
            let (mut res_parts, body) = res.into_parts();
            crate::upstream::strip_hop_by_hop(&mut res_parts.headers);
            res_parts.headers.remove(header::CONTENT_LENGTH);
            res_parts.extensions = http::Extensions::new();
            res_parts.extensions.insert(key);
            return Ok(Response::from_parts(
                res_parts,
                GatewayBody::full(body.unwrap_or_default()),
            ));
        }
        Err(Failure::Connect(e)) => {
            tracing::warn!(key_id = %key.0.id, error = %e, "Live upstream connect failed");
            return Err(GatewayError::UpstreamConnect {
                key: key.0.id.clone(),
                via_proxy: false,
            });
        }
        Err(Failure::TimedOut) => {
            return Err(GatewayError::UpstreamTimeout {
                seconds: gemini.timeout_seconds,
                key: key.0.id.clone(),
            });
        }
        Err(Failure::Other(e)) => {
            tracing::warn!(key_id = %key.0.id, error = %e, "Live upstream handshake failed");
            return Err(GatewayError::UpstreamUnavailable {
                key: key.0.id.clone(),
            });
        }
    };
    let (upstream, protocol) = upstream;

    let session = Session {
        gateway: gateway.clone(),
        key: key.0.id.clone(),
        client: parts.extensions.get::<Client>().cloned(),
        hold: parts.extensions.get::<SessionHold>().cloned(),
        counted: gateway.live_sessions().open(),
        _slots: (key_slot, parts.extensions.remove::<ClientSlot>()),
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let client = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config()),
                )
                .await;
                session.relay(client, upstream).await;
            }
            Err(e) => tracing::debug!(error = %e, "Live client upgrade failed"),
        }
    });

    let mut res = Response::new(GatewayBody::full(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        SEC_WEBSOCKET_ACCEPT.clone(),
        HeaderValue::try_from(accept).map_err(|_| GatewayError::Internal("bad accept key"))?,
    );
    if let Some(p) = protocol {
        h.insert(SEC_WEBSOCKET_PROTOCOL.clone(), p);
    }
    res.extensions_mut().insert(key);
    Ok(res)
}

/// `uri` with `name=value` added to its query.
fn with_query_param(uri: &Uri, name: &str, value: &str) -> Result<Uri, GatewayError> {
    let mut s = uri.to_string();
    s.push(if uri.query().is_some() { '&' } else { '?' });
    s.push_str(name);
    s.push('=');
    s.push_str(value);
    s.parse()
        .map_err(|_| GatewayError::InvalidArgument("the ephemeral token is not usable".into()))
}

/// The socket to Google: plain TCP (tests, a local base URL) or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed [`Io`], so one `WebSocketStream` type serves both.
struct UpstreamIo(Box<dyn Io>);

impl AsyncRead for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Why the upstream WebSocket could not be opened.
enum Failure {
    /// Google answered the handshake with an HTTP error: status, headers, body.
    Refused(tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>),
    /// No TCP or TLS connection (nothing was sent).
    Connect(io::Error),
    /// `gemini.connect_timeout_seconds` or `gemini.timeout_seconds` ran out.
    TimedOut,
    /// Anything else in the handshake.
    Other(String),
}

type Upstream = WebSocketStream<UpstreamIo>;

/// TLS for the upstream WebSocket: webpki roots, HTTP/1.1 only. Built once.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("aws-lc-rs supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// Opens the WebSocket at `uri` (`http`/`https`: the base URL's scheme) with `headers`; the
/// subprotocol Google chose, if any.
async fn connect(
    uri: &Uri,
    headers: HeaderMap,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<(Upstream, Option<HeaderValue>), Failure> {
    let tls = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or(Failure::Other("no host".into()))?;
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host_bracketless = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(
        connect_timeout,
        TcpStream::connect((host_bracketless, port)),
    )
    .await
    .map_err(|_| Failure::TimedOut)?
    .map_err(Failure::Connect)?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if tls {
        let name = rustls::pki_types::ServerName::try_from(host_bracketless.to_owned())
            .map_err(|e| Failure::Other(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(tls_config());
        let stream = tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| Failure::TimedOut)?
            .map_err(Failure::Connect)?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let ws_uri: Uri = format!(
        "{}://{}{}",
        if tls { "wss" } else { "ws" },
        uri.authority().map_or(host, |a| a.as_str()),
        uri.path_and_query().map_or("/", |pq| pq.as_str())
    )
    .parse()
    .map_err(|_| Failure::Other("bad upstream URI".into()))?;
    let mut request = ws_uri
        .into_client_request()
        .map_err(|e| Failure::Other(e.to_string()))?;
    for (name, value) in &headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    let handshake =
        tokio_tungstenite::client_async_with_config(request, UpstreamIo(io), Some(ws_config()));
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(Failure::TimedOut),
        Ok(Ok((ws, res))) => Ok((ws, res.headers().get(&SEC_WEBSOCKET_PROTOCOL).cloned())),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(res))) => Err(Failure::Refused(*res)),
        Ok(Err(e)) => Err(Failure::Other(e.to_string())),
    }
}

/// One session: what the relay needs besides its two sockets.
struct Session {
    gateway: Arc<Gateway>,
    key: Arc<str>,
    client: Option<Client>,
    hold: Option<SessionHold>,
    counted: OpenSession,
    /// Given back when the session ends.
    _slots: (Slot, Option<ClientSlot>),
}

/// What ended the relay.
enum End {
    /// One side sent a close frame; the other got it.
    Closed(CloseReason),
    /// The gateway closed both (shutdown, a refused setup).
    ByGateway(CloseReason, CloseFrame),
    /// A connection broke.
    Broken,
}

impl Session {
    async fn relay<C>(self, mut client: WebSocketStream<C>, mut upstream: Upstream)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let going_away = going_away(self.hold.clone());
        tokio::pin!(going_away);
        let mut model: Option<String> = None;
        let end = loop {
            tokio::select! {
                msg = client.next() => match msg {
                    Some(Ok(Message::Close(frame))) => {
                        let _ = upstream.send(Message::Close(frame)).await;
                        let _ = client.flush().await;
                        drain(&mut upstream).await;
                        break End::Closed(CloseReason::Client);
                    }
                    Some(Ok(Message::Frame(_))) => {}
                    Some(Ok(msg)) => {
                        if model.is_none() && let Some(m) = setup_model(&msg) {
                            if let Some(c) = &self.client && !c.allows_model(&m) {
                                break End::ByGateway(CloseReason::Refused, CloseFrame {
                                    code: CloseCode::Policy,
                                    reason: "this token may not use the model in setup".into(),
                                });
                            }
                            model = Some(m);
                        }
                        self.counted.frame(Direction::ToUpstream, msg.len());
                        if upstream.send(msg).await.is_err() {
                            break End::Broken;
                        }
                    }
                    Some(Err(_)) | None => break End::Broken,
                },
                msg = upstream.next() => match msg {
                    Some(Ok(Message::Close(frame))) => {
                        let quota = frame.as_ref().is_some_and(|f| is_quota(&f.reason));
                        if quota {
                            self.rest(model.as_deref(), frame.as_ref().map_or("", |f| f.reason.as_str()));
                        }
                        let _ = client.send(Message::Close(frame)).await;
                        let _ = upstream.flush().await;
                        drain(&mut client).await;
                        break End::Closed(if quota { CloseReason::Quota } else { CloseReason::Upstream });
                    }
                    Some(Ok(Message::Frame(_))) => {}
                    Some(Ok(msg)) => {
                        self.counted.frame(Direction::ToClient, msg.len());
                        if client.send(msg).await.is_err() {
                            break End::Broken;
                        }
                    }
                    Some(Err(_)) | None => break End::Broken,
                },
                () = &mut going_away => break End::ByGateway(CloseReason::GoingAway, CloseFrame {
                    code: CloseCode::Away,
                    reason: "going away".into(),
                }),
            }
        };
        let reason = match end {
            End::Closed(reason) => reason,
            End::ByGateway(reason, frame) => {
                let (a, b) = tokio::join!(
                    client.close(Some(frame.clone())),
                    upstream.close(Some(frame))
                );
                let _ = (a, b);
                tokio::join!(drain(&mut client), drain(&mut upstream));
                reason
            }
            End::Broken => {
                let frame = CloseFrame {
                    code: CloseCode::Away,
                    reason: "the other side went away".into(),
                };
                let _ = tokio::join!(
                    client.close(Some(frame.clone())),
                    upstream.close(Some(frame))
                );
                CloseReason::Broken
            }
        };
        tracing::debug!(key_id = %self.key, reason = reason.as_str(), "Live session ended");
        let Session {
            counted, gateway, ..
        } = self;
        gateway
            .metrics()
            .live_session_ended(counted.close(reason).as_secs_f64());
    }

    /// Google closed the session for a quota: the key rests for Live sessions and for the
    /// session's model, like after an HTTP 429.
    fn rest(&self, model: Option<&str>, reason: &str) {
        let gateway = &self.gateway;
        let gemini = &gateway.live().config.gemini;
        let daily = reason.to_ascii_lowercase().contains("per day") || reason.contains("PerDay");
        let (rest, why) = if daily {
            (
                crate::time::until_pacific_midnight(),
                RestReason::ExhaustedToday,
            )
        } else {
            (
                Duration::from_secs(gemini.default_retry_delay_seconds),
                RestReason::RateLimited,
            )
        };
        let until = crate::deadline::after(tokio::time::Instant::now(), rest);
        let store = gateway.store();
        store.record(&self.key, KeyOutcome::RateLimited);
        store.rest(&self.key, LIVE_MODEL, until, why);
        if let Some(m) = model.filter(|m| !m.is_empty()) {
            store.rest(&self.key, m, until, why);
        }
        gateway.metrics().cooldown(&self.key, why);
        tracing::info!(
            key_id = %self.key,
            model = model.unwrap_or(""),
            rest_seconds = rest.as_secs(),
            "Live session closed for quota; key rests"
        );
    }
}

/// Resolves `grace` after the gateway starts shutting down; never without a hold.
async fn going_away(hold: Option<SessionHold>) {
    let Some(mut hold) = hold else {
        return std::future::pending().await;
    };
    if hold.shutdown.wait_for(|stop| *stop).await.is_err() {
        // The listener is gone without a shutdown signal: nothing to wait for.
        return std::future::pending().await;
    }
    tokio::time::sleep(hold.grace).await;
}

/// Reads what is left of a side that was sent a close frame, until its close answer (or
/// [`CLOSE_TIMEOUT`]).
async fn drain<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
}

/// The model a `setup` message names (`models/` dropped), if `msg` is one.
fn setup_model(msg: &Message) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct First {
        setup: Setup,
    }
    #[derive(serde::Deserialize)]
    struct Setup {
        model: String,
    }
    let bytes: &[u8] = match msg {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => return None,
    };
    let first: First = serde_json::from_slice(bytes).ok()?;
    let model = first.setup.model;
    Some(model.strip_prefix("models/").unwrap_or(&model).to_owned())
}

/// Whether Google's close reason is a quota error.
fn is_quota(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("quota") || r.contains("resource_exhausted") || r.contains("resource exhausted")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigLoader;
    use crate::gateway::Live;

    /// A relay between a test client and a test upstream over in-memory pipes, with a shutdown
    /// signal and a grace period.
    async fn relay_pair(
        grace: Duration,
    ) -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
        tokio::sync::watch::Sender<bool>,
        Arc<Gateway>,
    ) {
        let config = ConfigLoader::default()
            .load_str("gemini: { api_keys: [{ id: a, key: k }] }")
            .unwrap();
        let gateway = Gateway::new(Live::build(config).unwrap());
        let (client_end, relay_client) = tokio::io::duplex(64 * 1024);
        let (relay_upstream, upstream_end) = tokio::io::duplex(64 * 1024);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let key: Arc<str> = Arc::from("a");
        let session = Session {
            gateway: gateway.clone(),
            key: key.clone(),
            client: None,
            hold: Some(SessionHold::new(stop_rx, grace, ())),
            counted: gateway.live_sessions().open(),
            _slots: (gateway.live_sessions().try_key(&key, 0).unwrap(), None),
        };
        let client_side = WebSocketStream::from_raw_socket(relay_client, Role::Server, None).await;
        let upstream_side = WebSocketStream::from_raw_socket(
            UpstreamIo(Box::new(relay_upstream)),
            Role::Client,
            None,
        )
        .await;
        tokio::spawn(session.relay(client_side, upstream_side));
        let client = WebSocketStream::from_raw_socket(client_end, Role::Client, None).await;
        let upstream = WebSocketStream::from_raw_socket(upstream_end, Role::Server, None).await;
        (client, upstream, stop_tx, gateway)
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_shutdown_sessions_run_for_the_grace_period_then_both_sides_get_1001() {
        let grace = Duration::from_secs(30);
        let (mut client, mut upstream, stop, gateway) = relay_pair(grace).await;
        stop.send(true).unwrap();
        let started = tokio::time::Instant::now();
        tokio::time::sleep(grace - Duration::from_secs(1)).await;
        client.send(Message::text("still relayed")).await.unwrap();
        assert_eq!(
            upstream.next().await.unwrap().unwrap(),
            Message::text("still relayed")
        );
        upstream.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::binary(vec![1, 2, 3])
        );
        for ws in [&mut client, &mut upstream] {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(frame.code, CloseCode::Away);
                    assert_eq!(frame.reason, "going away");
                }
                other => panic!("expected 1001, got {other:?}"),
            }
        }
        assert_eq!(
            started.elapsed(),
            grace,
            "closed exactly when the grace ran out"
        );
        // Both answered the close: the session ends and is counted as going away.
        drop((client, upstream));
        while gateway.live_sessions().totals().open != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = gateway.live_sessions().totals();
        assert_eq!(t.closes[CloseReason::GoingAway as usize], 1);
        assert_eq!(t.frames, [1, 1]);
        assert_eq!(
            gateway.live_sessions().open_on_key("a"),
            0,
            "the key's place is back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_shutdown_a_quiet_session_stays_open() {
        let (mut client, mut upstream, _stop, _gateway) = relay_pair(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        client.send(Message::text("an hour later")).await.unwrap();
        assert_eq!(
            upstream.next().await.unwrap().unwrap(),
            Message::text("an hour later")
        );
    }

    #[test]
    fn setup_names_the_model() {
        let m = Message::text(r#"{"setup":{"model":"models/gemini-live-2.5-flash"}}"#);
        assert_eq!(setup_model(&m).as_deref(), Some("gemini-live-2.5-flash"));
        let m = Message::binary(br#"{"setup":{"model":"m"}}"#.to_vec());
        assert_eq!(setup_model(&m).as_deref(), Some("m"));
        assert_eq!(setup_model(&Message::text(r#"{"clientContent":{}}"#)), None);
    }

    #[test]
    fn quota_reasons_are_recognised() {
        assert!(is_quota(
            "You exceeded your current quota, please check your plan and billing details."
        ));
        assert!(is_quota("RESOURCE_EXHAUSTED"));
        assert!(!is_quota("Internal error encountered."));
    }

    #[test]
    fn ephemeral_tokens_are_found_where_sdks_put_them() {
        let uri: Uri = "/ws/x?access_token=auth_tokens/abc".parse().unwrap();
        assert_eq!(
            ephemeral_token(&HeaderMap::new(), &uri),
            Some("auth_tokens/abc")
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Token auth_tokens/xyz"),
        );
        let uri: Uri = "/ws/x".parse().unwrap();
        assert_eq!(ephemeral_token(&h, &uri), Some("auth_tokens/xyz"));
        let mut h = HeaderMap::new();
        h.insert(
            X_GOOG_API_KEY.clone(),
            HeaderValue::from_static("a.jwt.token"),
        );
        assert_eq!(ephemeral_token(&h, &uri), None);
    }

    #[test]
    fn upgrades_are_told_apart_from_plain_requests() {
        let mut h = HeaderMap::new();
        assert!(not_an_upgrade(&http::Method::GET, &h).is_some());
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(not_an_upgrade(&http::Method::GET, &h).is_some());
        h.insert("sec-websocket-version", HeaderValue::from_static("13"));
        h.insert(
            SEC_WEBSOCKET_KEY.clone(),
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(not_an_upgrade(&http::Method::GET, &h), None);
        assert!(not_an_upgrade(&http::Method::POST, &h).is_some());
    }
}
