//! A Live API session (WebSocket): the client's upgrade, the key picked for the session's model,
//! the upstream connection, and the relay of frames between them. The Live layer
//! ([`crate::layers::live`]) calls [`open`] for a request whose route is
//! [`Api::Live`](crate::route::Api::Live) once everything that does not depend on the model is
//! decided (route, auth, client limit, the session limits); the layers below it never see the
//! session.
//!
//! - **The client first:** `101 Switching Protocols` at once, and the session runs in a task of
//!   its own on the upgraded connection. Its first message must be the `setup` (within
//!   [`SETUP_TIMEOUT`], else close 1008; anything else, close 1007). The setup names the model:
//!   an alias (`gemini.models.aliases`) becomes its real model (in the setup sent on too); one
//!   the token's `models` claim does not allow ends the session with 1008 before Google sees it.
//! - **Then the key,** picked for that model exactly as for an HTTP request: keys resting for
//!   it, at their limit for it, invalid or disabled are skipped, and the session counts as one
//!   request for the model on the key it gets; keys that carry
//!   `gemini.live.max_sessions_per_key` sessions are left out. With every key resting for the
//!   model, its first fallback (`gemini.models.fallbacks`) the token allows serves the session.
//!   The ephemeral-token endpoint (`…Constrained`) uses the key that minted the token.
//! - **Then Google:** the WebSocket is opened with the key in `x-goog-api-key` and every client
//!   credential removed (for the ephemeral-token endpoint the token goes as `access_token=`),
//!   and the setup is sent. A handshake Google refuses (429, an invalid key, 5xx) is read as
//!   failover reads an HTTP answer ([`classify`]) and applied to the key (rest for the model,
//!   invalid…), and so is a quota close in answer to the setup; the next key is tried, up to
//!   `gemini.max_retries` more. When no key can take the session the client gets a close like
//!   Google's own: 1013 `RESOURCE_EXHAUSTED: no upstream key has quota for MODEL`, 1011 for an
//!   upstream failure, 1008 with Google's message when Google refused the session itself.
//!   Own TCP (`TCP_NODELAY`) and TLS (rustls, aws-lc-rs, ALPN `http/1.1` only: a WebSocket
//!   cannot ride the pooled client's HTTP/2 connections) per session; a key with an egress
//!   proxy (`gemini.api_keys[].proxy`) opens its own tunnel through it
//!   ([`EgressClient::tunnel`]), and an unreachable proxy rests the key as for a request.
//! - **Relay:** every message is sent on as it arrives, both ways (text, binary, ping, pong;
//!   close frames with their code and reason). A message is flushed on its own; nothing is held
//!   back.
//! - **Usage:** a server message's `usageMetadata` (the end of a turn) counts its tokens like an
//!   HTTP answer's: against the key (its `max_tokens_per_minute`), in the usage history (client,
//!   key, model), against the client's `tpm` / `tpd` budget and in the token metrics.
//! - **Quota:** when Google closes a running session with a quota reason (`RESOURCE_EXHAUSTED`,
//!   "exceeded your current quota"), the key rests for the session's model, like after an HTTP
//!   429 (`gemini.default_retry_delay_seconds`, or until midnight Pacific for a daily quota);
//!   the client receives Google's close as it was.
//! - **Shutdown:** once the gateway starts shutting down, open sessions go on for
//!   `server.shutdown_grace_seconds`, then both sides get 1001 "going away".
//!
//! Counted in [`LiveSessions`](crate::live_sessions::LiveSessions): open sessions, frames and
//! bytes each way, durations and close reasons; each attempt on a key in the upstream attempt
//! metrics; the session's key in the "Live session opened" log line (the access log's line is
//! written at the 101, before the key is known).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri};
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
use crate::egress::EgressClient;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::http_client::X_GOOG_API_KEY;
use crate::key_pool::verdict::{RestFor, Verdict, classify};
use crate::key_pool::{BoundKey, KeyOutcome, PickError, RestReason, UpstreamKey};
use crate::live_sessions::{ClientSlot, CloseReason, Direction, OpenSession, SessionHold, Slot};
use crate::metrics::{AttemptResult, RetryReason};
use crate::route::Route;
use crate::usage::{RequestUsage, TokenSink, find_usage};

/// How long a client has, after the 101, to send its `setup`.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest close reason a close frame carries (RFC 6455: 125 payload bytes, 2 of them the
/// code).
const MAX_CLOSE_REASON: usize = 123;

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
/// `Sec-WebSocket-Protocol`: never negotiated (the client's 101 is answered before Google's).
static SEC_WEBSOCKET_PROTOCOL: HeaderName = HeaderName::from_static("sec-websocket-protocol");

/// Headers of the client's upgrade request that belong to its own WebSocket handshake (or carry
/// its credential) and never reach Google.
static NOT_FORWARDED: [&HeaderName; 9] = [
    &header::HOST,
    &header::AUTHORIZATION,
    &header::PROXY_AUTHORIZATION,
    &X_GOOG_API_KEY,
    &header::CONTENT_LENGTH,
    &SEC_WEBSOCKET_KEY,
    &SEC_WEBSOCKET_VERSION,
    &SEC_WEBSOCKET_EXTENSIONS,
    &SEC_WEBSOCKET_PROTOCOL,
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

/// Answers the client's upgrade (101) and starts the session in a task of its own: the setup
/// read, the key picked for its model, the upstream WebSocket opened, then the relay. Called by
/// the Live layer once everything that does not depend on the model has been decided.
pub async fn open(
    gateway: Arc<Gateway>,
    mut parts: Parts,
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
    let accept =
        HeaderValue::try_from(accept).map_err(|_| GatewayError::Internal("bad accept key"))?;

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
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut ctx = Request::new(());
    *ctx.extensions_mut() = std::mem::take(&mut parts.extensions);
    let opening = Opening {
        gateway,
        uri,
        headers,
        ctx,
        request_id,
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
                opening.run(client).await;
            }
            Err(e) => tracing::debug!(error = %e, "Live client upgrade failed"),
        }
    });

    let mut res = Response::new(GatewayBody::full(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(SEC_WEBSOCKET_ACCEPT.clone(), accept);
    Ok(res)
}

/// A session between the client's 101 and its upstream WebSocket.
struct Opening {
    gateway: Arc<Gateway>,
    /// Google's Live endpoint (with `access_token=` for the constrained one).
    uri: Uri,
    /// The client's headers that go on to Google; the key is added per attempt.
    headers: HeaderMap,
    /// The upgrade request's extensions (route, client, slots, hold, trace), for the usage
    /// history and the session.
    ctx: Request<()>,
    request_id: Option<String>,
}

/// Why a session ended before its relay began: the close the client gets.
struct Refusal {
    reason: CloseReason,
    frame: Option<CloseFrame>,
}

impl Refusal {
    fn new(reason: CloseReason, code: CloseCode, text: &str) -> Self {
        Self {
            reason,
            frame: Some(CloseFrame {
                code,
                reason: close_reason(text).into(),
            }),
        }
    }
}

/// How the last upstream attempt of a session failed, for the client's close if no key does
/// better.
enum Failed {
    /// Quota (a 429, a quota close) or every key at its limit for the model: 1013.
    Quota,
    /// An upstream error, or no key usable: 1011 with this text.
    Upstream(String),
    /// Google refused the session itself (a 4xx that is not the key's fault): 1008 with its
    /// message.
    Refused(String),
}

/// A session Google took: what [`Session`] is made of.
struct Started {
    key: Arc<UpstreamKey>,
    model: Arc<str>,
    slots: (Slot, Option<ClientSlot>),
    history: Option<RequestUsage>,
    sink: Option<TokenSink>,
    upstream: Upstream,
    /// Google's first message (its answer to the setup), not yet relayed.
    first: Message,
    /// The setup's payload bytes (relayed: counted as the session's first frame).
    setup_len: usize,
}

/// What one attempt on a key ended with.
enum Attempt {
    /// The session runs: the upstream socket and Google's first message.
    Open(Box<Upstream>, Message),
    /// Try the next key after this failure (for `retry`), or stop when there is none.
    Failed {
        failed: Failed,
        retry: Option<RetryReason>,
    },
}

impl Opening {
    async fn run<C>(mut self, mut client: WebSocketStream<C>)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let gateway = self.gateway.clone();
        let counted = gateway.live_sessions().open();
        match self.start(&mut client).await {
            Ok(started) => {
                let session = Session {
                    gateway,
                    key: started.key,
                    model: started.model,
                    hold: self.ctx.extensions().get::<SessionHold>().cloned(),
                    counted,
                    history: started.history,
                    sink: started.sink,
                    _slots: started.slots,
                };
                session
                    .counted
                    .frame(Direction::ToUpstream, started.setup_len);
                session.relay(client, started.upstream, started.first).await;
            }
            Err(refusal) => {
                if let Some(frame) = refusal.frame {
                    tracing::info!(
                        request_id = self.request_id.as_deref().unwrap_or("-"),
                        code = u16::from(frame.code),
                        reason = frame.reason.as_str(),
                        "Live session refused"
                    );
                    let _ = client.close(Some(frame)).await;
                    drain(&mut client).await;
                }
                gateway
                    .metrics()
                    .live_session_ended(counted.close(refusal.reason).as_secs_f64());
            }
        }
    }

    /// Reads the setup, picks a key for its model and opens the upstream WebSocket, trying the
    /// next key as failover would.
    async fn start<C>(&mut self, client: &mut WebSocketStream<C>) -> Result<Started, Refusal>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let first = tokio::time::timeout(SETUP_TIMEOUT, async {
            loop {
                match client.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(msg)) => return Some(msg),
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await;
        let mut setup = match first {
            Err(_) => {
                return Err(Refusal::new(
                    CloseReason::Refused,
                    CloseCode::Policy,
                    &format!(
                        "no setup message within {} seconds",
                        SETUP_TIMEOUT.as_secs()
                    ),
                ));
            }
            Ok(None) => {
                return Err(Refusal {
                    reason: CloseReason::Broken,
                    frame: None,
                });
            }
            Ok(Some(Message::Close(_))) => {
                let _ = client.flush().await;
                return Err(Refusal {
                    reason: CloseReason::Client,
                    frame: None,
                });
            }
            Ok(Some(msg)) => msg,
        };
        let Some(mut model) = setup_model(&setup) else {
            return Err(Refusal::new(
                CloseReason::Refused,
                CloseCode::Invalid,
                "the first message must be setup, naming a model",
            ));
        };
        let live = self.gateway.live();
        if let Some(real) = live.config.gemini.models.resolve(&model) {
            model = real.to_owned();
            setup = with_setup_model(&setup, &model).ok_or_else(|| {
                Refusal::new(
                    CloseReason::Refused,
                    CloseCode::Invalid,
                    "the setup message is not JSON",
                )
            })?;
        }
        let client_id = self.ctx.extensions().get::<Client>().cloned();
        if let Some(c) = &client_id
            && !c.allows_model(&model)
        {
            return Err(Refusal::new(
                CloseReason::Refused,
                CloseCode::Policy,
                "this token may not use the model in setup",
            ));
        }
        let asked: Arc<str> = Arc::from(model);
        let mut model = asked.clone();
        let (mut history, mut sink) = self.count_as(&model);

        let gemini = &live.config.gemini;
        let bound = self.ctx.extensions().get::<BoundKey>().map(|b| b.0.clone());
        let attempts = if bound.is_some() {
            1
        } else {
            gemini.max_retries + 1
        };
        let max_per_key = gemini.live.max_sessions_per_key;
        let gateway = self.gateway.clone();
        let sessions = gateway.live_sessions();
        let store = gateway.store();
        let route = self.ctx.extensions().get::<Route>().cloned();
        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut failed: Option<Failed> = None;
        // Why the last attempt failed, counted as a retry once another key is tried.
        let mut retrying: Option<RetryReason> = None;
        for _ in 0..attempts {
            let now = tokio::time::Instant::now();
            let mut exclude = sessions.full_keys(max_per_key);
            exclude.extend(tried.iter().cloned());
            let mut picked = match &bound {
                Some(id) => live.keys.pick_bound(store, id, &model, now),
                None => live
                    .keys
                    .pick_for(store, route.as_ref(), &model, &exclude, now),
            };
            // Every key resting (or at its limit) for the model: the first of its fallbacks
            // the token allows and a key has headroom for, as key balance does. A session bound
            // to a key stays on it.
            if matches!(picked, Err(PickError::Exhausted { .. })) && bound.is_none() {
                let fallback = gemini.models.fallbacks_of(&model).iter().find_map(|f| {
                    if client_id.as_ref().is_some_and(|c| !c.allows_model(f)) {
                        return None;
                    }
                    let key = live.keys.pick_for(store, route.as_ref(), f, &exclude, now);
                    key.ok().map(|k| (f, k))
                });
                if let Some((f, key)) = fallback
                    && let Some(switched) = with_setup_model(&setup, f)
                {
                    tracing::info!(model = &*model, fallback = %f, "Live session on a fallback model");
                    self.gateway.metrics().model_fallback();
                    model = Arc::from(f.as_str());
                    setup = switched;
                    (history, sink) = self.count_as(&model);
                    picked = Ok(key);
                }
            }
            let key = match picked {
                Ok(key) => key,
                Err(PickError::Exhausted { .. }) => {
                    failed.get_or_insert(Failed::Quota);
                    break;
                }
                Err(PickError::NoUsableKey) => {
                    failed.get_or_insert(Failed::Upstream(
                        "UNAVAILABLE: no upstream key can take this Live session".into(),
                    ));
                    break;
                }
            };
            let Some(key_slot) = sessions.try_key(&key.id, max_per_key) else {
                // Filled by another session since the pick.
                tried.push(key.id.clone());
                failed = Some(Failed::Upstream(
                    "UNAVAILABLE: every upstream key carries its most Live sessions".into(),
                ));
                continue;
            };
            if let Some(reason) = retrying.take() {
                self.gateway.metrics().retry(reason);
            }
            match self.attempt(&key, &model, &setup, history.as_ref()).await {
                Attempt::Open(upstream, first) => {
                    tracing::info!(
                        request_id = self.request_id.as_deref().unwrap_or("-"),
                        key_id = %key.id,
                        model = &*model,
                        attempts = tried.len() + 1,
                        "Live session opened"
                    );
                    if let Some(h) = &history {
                        h.attempt(&key.id, KeyOutcome::Success);
                    }
                    let client_slot = self.ctx.extensions_mut().remove::<ClientSlot>();
                    return Ok(Started {
                        key,
                        model,
                        slots: (key_slot, client_slot),
                        history,
                        sink,
                        upstream: *upstream,
                        first,
                        setup_len: setup.len(),
                    });
                }
                Attempt::Failed { failed: f, retry } => {
                    failed = Some(f);
                    tried.push(key.id.clone());
                    match retry {
                        Some(reason) => retrying = Some(reason),
                        None => break,
                    }
                }
            }
        }
        Err(match failed {
            Some(Failed::Quota) | None => Refusal::new(
                CloseReason::NoKey,
                CloseCode::Again,
                &format!("RESOURCE_EXHAUSTED: no upstream key has quota for {asked}"),
            ),
            Some(Failed::Upstream(text)) => {
                Refusal::new(CloseReason::NoKey, CloseCode::Error, &text)
            }
            Some(Failed::Refused(text)) => {
                Refusal::new(CloseReason::Refused, CloseCode::Policy, &text)
            }
        })
    }

    /// Puts `model` in the session's route; where its tokens are reported (the usage history
    /// and the client's budget, the token metrics).
    fn count_as(&mut self, model: &Arc<str>) -> (Option<RequestUsage>, Option<TokenSink>) {
        if let Some(route) = self.ctx.extensions_mut().get_mut::<Route>() {
            route.model = Some(model.clone());
        }
        let tpd = self.gateway.live().config.auth.default_tokens_per_day;
        (
            self.gateway.usage().request(&self.ctx, model, tpd),
            TokenSink::for_request(&self.gateway, &self.ctx, model),
        )
    }

    /// Opens the upstream WebSocket with `key` and sends the setup; Google's answer to the
    /// handshake and to the setup is read as failover reads an answer.
    async fn attempt(
        &self,
        key: &Arc<UpstreamKey>,
        model: &str,
        setup: &Message,
        history: Option<&RequestUsage>,
    ) -> Attempt {
        let gateway = &self.gateway;
        let live = gateway.live();
        let gemini = &live.config.gemini;
        let metrics = gateway.metrics();
        let mut headers = self.headers.clone();
        headers.insert(X_GOOG_API_KEY.clone(), key.api_key_header.clone());
        let started = std::time::Instant::now();
        let unavailable = |why: &str, reason: RetryReason| Attempt::Failed {
            failed: Failed::Upstream(format!("UNAVAILABLE: {why}")),
            retry: Some(reason),
        };
        let broke = |result: AttemptResult| {
            metrics.attempt(&key.id, result, started.elapsed());
            gateway.store().record(&key.id, KeyOutcome::ServerError);
            if let Some(h) = history {
                h.attempt(&key.id, KeyOutcome::ServerError);
            }
        };
        let via = live.egress.for_key(&key.id);
        let connecting = connect(
            &self.uri,
            headers,
            via.map(|v| &**v),
            gemini.connect_timeout(),
            gemini.timeout(),
        );
        let mut upstream = match connecting.await {
            Ok(ws) => ws,
            Err(Failure::Refused(res)) => {
                let status = res.status();
                let body = res.into_body().unwrap_or_default();
                metrics.attempt(&key.id, AttemptResult::Status(status), started.elapsed());
                let verdict = classify(status, &body);
                gateway.apply_verdict(&key.id, model, &verdict);
                if let Some(h) = history {
                    h.attempt(&key.id, verdict.outcome());
                }
                tracing::info!(
                    key_id = %key.id,
                    status = status.as_u16(),
                    verdict = ?verdict,
                    "Live handshake refused"
                );
                let text = google_message(&body, status, key);
                let failed = match verdict {
                    Verdict::Rest(..) => Failed::Quota,
                    _ if verdict.retry_elsewhere() => Failed::Upstream(text),
                    _ => Failed::Refused(text),
                };
                return Attempt::Failed {
                    failed,
                    retry: RetryReason::for_verdict(&verdict),
                };
            }
            Err(Failure::TimedOut) => {
                broke(AttemptResult::Timeout);
                return unavailable("the upstream did not answer in time", RetryReason::Timeout);
            }
            Err(Failure::Connect(e)) => {
                tracing::warn!(
                    key_id = %key.id,
                    via_proxy = via.is_some(),
                    error = %e,
                    "Live upstream connect failed"
                );
                broke(AttemptResult::Unreachable);
                if via.is_some() {
                    // The key's own way out is down: it rests, the others serve.
                    let rest = Duration::from_secs(gemini.proxy_unreachable_rest_seconds);
                    gateway.rest_key(&key.id, model, rest, RestReason::ProxyUnreachable);
                }
                return unavailable(
                    "the upstream could not be reached",
                    RetryReason::Unreachable,
                );
            }
            Err(Failure::Other(e)) => {
                tracing::warn!(key_id = %key.id, error = %e, "Live upstream handshake failed");
                broke(AttemptResult::Unreachable);
                return unavailable("the upstream handshake failed", RetryReason::Unreachable);
            }
        };
        if upstream.send(setup.clone()).await.is_err() {
            broke(AttemptResult::Unreachable);
            return unavailable("the upstream connection broke", RetryReason::Unreachable);
        }
        // Google's answer to the setup: a quota close there means this key cannot take the
        // session, and nothing has reached the client yet, so another key may.
        let first = tokio::time::timeout(gemini.timeout(), async {
            loop {
                match upstream.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    other => return other,
                }
            }
        })
        .await;
        match first {
            Ok(Some(Ok(Message::Close(Some(frame))))) if is_quota(&frame.reason) => {
                metrics.attempt(
                    &key.id,
                    AttemptResult::Status(StatusCode::TOO_MANY_REQUESTS),
                    started.elapsed(),
                );
                let _ = upstream.flush().await;
                let verdict = rest_for_quota(gateway, &key.id, model, &frame.reason);
                if let Some(h) = history {
                    h.attempt(&key.id, KeyOutcome::RateLimited);
                }
                Attempt::Failed {
                    failed: Failed::Quota,
                    retry: RetryReason::for_verdict(&verdict),
                }
            }
            Ok(Some(Ok(msg))) => {
                metrics.attempt(
                    &key.id,
                    AttemptResult::Status(StatusCode::SWITCHING_PROTOCOLS),
                    started.elapsed(),
                );
                Attempt::Open(Box::new(upstream), msg)
            }
            Ok(Some(Err(_)) | None) => {
                broke(AttemptResult::Unreachable);
                unavailable("the upstream connection broke", RetryReason::Unreachable)
            }
            Err(_) => {
                broke(AttemptResult::Timeout);
                unavailable(
                    "the upstream did not answer the setup in time",
                    RetryReason::Timeout,
                )
            }
        }
    }
}

/// `STATUS: message` of Google's error body (the key never in it), or the HTTP status.
fn google_message(body: &[u8], status: StatusCode, key: &UpstreamKey) -> String {
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Error,
    }
    #[derive(serde::Deserialize)]
    struct Error {
        #[serde(default)]
        status: String,
        #[serde(default)]
        message: String,
    }
    let text = match serde_json::from_slice::<Answer>(body) {
        Ok(Answer { error }) if !error.message.is_empty() => {
            format!("{}: {}", error.status, error.message)
        }
        _ => format!("the upstream refused the session: HTTP {}", status.as_u16()),
    };
    let secret = key.secret.expose();
    if secret.is_empty() {
        text
    } else {
        text.replace(secret, &format!("[key {}]", key.id))
    }
}

/// `text` cut to what a close frame carries (123 bytes), at a character boundary.
fn close_reason(text: &str) -> String {
    if text.len() <= MAX_CLOSE_REASON {
        return text.to_owned();
    }
    let mut end = MAX_CLOSE_REASON;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Google closed a session on `key` for a quota: the key rests for the model, like after an
/// HTTP 429 (`gemini.default_retry_delay_seconds`, or until midnight Pacific for a daily
/// quota). The verdict it applied.
fn rest_for_quota(gateway: &Gateway, key: &str, model: &str, reason: &str) -> Verdict {
    let daily = reason.to_ascii_lowercase().contains("per day") || reason.contains("PerDay");
    let verdict = if daily {
        Verdict::Rest(RestFor::UntilMidnightPacific, RestReason::ExhaustedToday)
    } else {
        Verdict::Rest(RestFor::Default, RestReason::RateLimited)
    };
    tracing::info!(
        key_id = key,
        model,
        "Live session closed for quota; key rests"
    );
    gateway.apply_verdict(key, model, &verdict);
    verdict
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

/// Opens the WebSocket at `uri` (`http`/`https`: the base URL's scheme) with `headers`, directly
/// or through the key's egress proxy (`via`: a `CONNECT` or SOCKS5 tunnel, TLS inside it).
async fn connect(
    uri: &Uri,
    headers: HeaderMap,
    via: Option<&EgressClient>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Upstream, Failure> {
    let tls = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or(Failure::Other("no host".into()))?;
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host_bracketless = host.trim_start_matches('[').trim_end_matches(']');
    let tcp: Box<dyn Io> = match via {
        Some(proxy) => Box::new(
            tokio::time::timeout(connect_timeout, proxy.tunnel(host_bracketless, port))
                .await
                .map_err(|_| Failure::TimedOut)?
                .map_err(Failure::Connect)?,
        ),
        None => {
            let tcp = tokio::time::timeout(
                connect_timeout,
                TcpStream::connect((host_bracketless, port)),
            )
            .await
            .map_err(|_| Failure::TimedOut)?
            .map_err(Failure::Connect)?;
            let _ = tcp.set_nodelay(true);
            Box::new(tcp)
        }
    };
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
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(res))) => Err(Failure::Refused(*res)),
        Ok(Err(e)) => Err(Failure::Other(e.to_string())),
    }
}

/// One session: what the relay needs besides its two sockets.
struct Session {
    gateway: Arc<Gateway>,
    key: Arc<UpstreamKey>,
    /// The model of the session's setup (its real model when the setup named an alias).
    model: Arc<str>,
    hold: Option<SessionHold>,
    counted: OpenSession,
    /// The usage history and the client's token budget, when on.
    history: Option<RequestUsage>,
    /// Token metrics and the request's span, when on.
    sink: Option<TokenSink>,
    /// Given back when the session ends.
    _slots: (Slot, Option<ClientSlot>),
}

/// What ended the relay.
enum End {
    /// One side sent a close frame; the other got it.
    Closed(CloseReason),
    /// The gateway closed both (shutdown).
    ByGateway(CloseReason, CloseFrame),
    /// A connection broke.
    Broken,
}

impl Session {
    async fn relay<C>(self, mut client: WebSocketStream<C>, mut upstream: Upstream, first: Message)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let going_away = going_away(self.hold.clone());
        tokio::pin!(going_away);
        let mut end = self.on_upstream(first, &mut client, &mut upstream).await;
        let end = loop {
            if let Some(end) = end.take() {
                break end;
            }
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
                        self.counted.frame(Direction::ToUpstream, msg.len());
                        if upstream.send(msg).await.is_err() {
                            break End::Broken;
                        }
                    }
                    Some(Err(_)) | None => break End::Broken,
                },
                msg = upstream.next() => match msg {
                    Some(Ok(msg)) => end = self.on_upstream(msg, &mut client, &mut upstream).await,
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
        tracing::debug!(key_id = %self.key.id, reason = reason.as_str(), "Live session ended");
        let Session {
            counted, gateway, ..
        } = self;
        gateway
            .metrics()
            .live_session_ended(counted.close(reason).as_secs_f64());
    }

    /// Relays one message from Google; what ended the session, if it did.
    async fn on_upstream<C>(
        &self,
        msg: Message,
        client: &mut WebSocketStream<C>,
        upstream: &mut Upstream,
    ) -> Option<End>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        match msg {
            Message::Close(frame) => {
                let quota = frame.as_ref().is_some_and(|f| is_quota(&f.reason));
                if let Some(f) = frame.as_ref().filter(|_| quota) {
                    let _ = rest_for_quota(&self.gateway, &self.key.id, &self.model, &f.reason);
                }
                let _ = client.send(Message::Close(frame)).await;
                let _ = upstream.flush().await;
                drain(client).await;
                Some(End::Closed(if quota {
                    CloseReason::Quota
                } else {
                    CloseReason::Upstream
                }))
            }
            Message::Frame(_) => None,
            msg => {
                self.count_usage(&msg);
                self.counted.frame(Direction::ToClient, msg.len());
                client.send(msg).await.err().map(|_| End::Broken)
            }
        }
    }

    /// Counts the tokens a server message reports (`usageMetadata`, on a turn's end) against
    /// the key, the client's budget, the usage history and the token metrics. In memory or
    /// through the usage channel: the relay never waits on it.
    fn count_usage(&self, msg: &Message) {
        let bytes: &[u8] = match msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            _ => return,
        };
        if memchr::memmem::find(bytes, b"\"usageMetadata\"").is_none() {
            return;
        }
        let Some(tokens) = find_usage(bytes) else {
            return;
        };
        let k = &self.key;
        self.gateway.store().add_tokens(
            &k.id,
            &self.model,
            &k.limits,
            tokens,
            tokio::time::Instant::now(),
        );
        if let Some(sink) = &self.sink {
            sink.record(&tokens);
        }
        if let Some(h) = &self.history {
            h.tokens(&k.id, &tokens);
        }
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

/// `setup` with its model replaced by `model` (`models/…`), as the same kind of frame.
fn with_setup_model(setup: &Message, model: &str) -> Option<Message> {
    let bytes: &[u8] = match setup {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => return None,
    };
    let mut value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    *value.pointer_mut("/setup/model")? = serde_json::Value::String(format!("models/{model}"));
    let text = value.to_string();
    Some(match setup {
        Message::Binary(_) => Message::binary(text.into_bytes()),
        _ => Message::text(text),
    })
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
        let key = gateway.live().keys.keys().next().unwrap().clone();
        let session = Session {
            gateway: gateway.clone(),
            key: key.clone(),
            model: Arc::from("m"),
            hold: Some(SessionHold::new(stop_rx, grace, ())),
            counted: gateway.live_sessions().open(),
            history: None,
            sink: None,
            _slots: (gateway.live_sessions().try_key(&key.id, 0).unwrap(), None),
        };
        let client_side = WebSocketStream::from_raw_socket(relay_client, Role::Server, None).await;
        let upstream_side = WebSocketStream::from_raw_socket(
            UpstreamIo(Box::new(relay_upstream)),
            Role::Client,
            None,
        )
        .await;
        tokio::spawn(session.relay(client_side, upstream_side, Message::text("setupComplete")));
        let mut client = WebSocketStream::from_raw_socket(client_end, Role::Client, None).await;
        let upstream = WebSocketStream::from_raw_socket(upstream_end, Role::Server, None).await;
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::text("setupComplete"),
            "Google's answer to the setup is relayed first"
        );
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
        assert_eq!(t.frames, [1, 2]);
        assert_eq!(
            gateway.live_sessions().open_on_key("a"),
            0,
            "the key's place is back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_no_setup_is_closed_1008_when_the_setup_time_runs_out() {
        let config = ConfigLoader::default()
            .load_str("gemini: { api_keys: [{ id: a, key: k }] }")
            .unwrap();
        let gateway = Gateway::new(Live::build(config).unwrap());
        let opening = Opening {
            gateway: gateway.clone(),
            uri: "http://127.0.0.1:9/ws".parse().unwrap(),
            headers: HeaderMap::new(),
            ctx: Request::new(()),
            request_id: None,
        };
        let (client_end, relay_client) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(relay_client, Role::Server, None).await;
        tokio::spawn(opening.run(server));
        let mut client = WebSocketStream::from_raw_socket(client_end, Role::Client, None).await;
        // Pings do not count as the setup.
        client.send(Message::Ping(Bytes::new())).await.unwrap();
        let started = tokio::time::Instant::now();
        let frame = loop {
            match client.next().await {
                Some(Ok(Message::Close(Some(frame)))) => break frame,
                Some(Ok(Message::Pong(_))) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(started.elapsed(), SETUP_TIMEOUT);
        assert_eq!(frame.code, CloseCode::Policy);
        assert_eq!(frame.reason, "no setup message within 30 seconds");
        drop(client);
        while gateway.live_sessions().totals().open != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = gateway.live_sessions().totals();
        assert_eq!(t.closes[CloseReason::Refused as usize], 1);
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
    fn an_aliased_setup_names_the_real_model_in_the_same_kind_of_frame() {
        let m = Message::text(r#"{"setup":{"model":"models/fast","generationConfig":{}}}"#);
        let out = with_setup_model(&m, "gemini-live-2.5-flash").unwrap();
        assert!(out.is_text());
        assert_eq!(setup_model(&out).as_deref(), Some("gemini-live-2.5-flash"));
        assert!(out.to_text().unwrap().contains("generationConfig"));
        let b = Message::binary(br#"{"setup":{"model":"fast"}}"#.to_vec());
        assert!(with_setup_model(&b, "x").unwrap().is_binary());
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON && long.starts_with(&cut));
        assert_eq!(close_reason("short"), "short");
    }

    #[test]
    fn live_usage_counts_the_response_tokens() {
        let m = br#"{"serverContent":{"turnComplete":true},"usageMetadata":{"promptTokenCount":8,"responseTokenCount":12,"totalTokenCount":20}}"#;
        let t = find_usage(m).unwrap();
        assert_eq!((t.prompt, t.candidates, t.total), (8, 12, 20));
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
