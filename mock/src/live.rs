//! The Live API: WebSocket sessions at
//! `/ws/google.ai.generativelanguage.{v}.GenerativeService.BidiGenerateContent` (and
//! `…Constrained` with an ephemeral token), and minting those tokens (`POST /{v}/auth_tokens`).
//!
//! Checked before the upgrade, like Google: a key (`x-goog-api-key` or `?key=`; 403 without, 400
//! `API_KEY_INVALID` for an invalid one); on the constrained endpoint an ephemeral token
//! (`access_token=`) that the same key minted (401 unknown, 403 another key's); a key failure set
//! with [`MockUpstream::set_key_failure`](crate::MockUpstream::set_key_failure) other than a 429
//! is answered as that HTTP error.
//!
//! A session, as Google's: the first message must be `setup` with a `model` (else close 1007);
//! the answer is `setupComplete`. Server messages are binary frames of JSON, as Google sends them.
//! - `clientContent` → a model turn `Echo: <last text>`, then `turnComplete` with `usageMetadata`;
//! - `realtimeInput` audio (`audio` or `mediaChunks`) → the same bytes back as the model's audio
//!   (`inlineData`, `audio/pcm;rate=24000`), then `turnComplete`; `realtimeInput.text` → as
//!   `clientContent`;
//! - a binary frame that is not JSON is echoed as it is; pings are answered with pongs.
//!
//! Triggers, as the text of a client turn: `mock:goaway` (a `goAway` message), `mock:quota` (the
//! quota close below), `mock:close:<code>:<reason>` (close with that code and reason). A key set
//! to fail with a 429, or a `setup` model named `mock-error-429`, gets the quota close right after
//! `setup`: code 1011 with Google's reason [`QUOTA_CLOSE_REASON`] — or, when the upgrade request
//! carries `x-mock-live-quota: handshake`, the key's 429 as the answer to the handshake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::body::MockBody;
use crate::failure::{ErrorContext, Failure, invalid_key};
use crate::reply;
use crate::shared::Shared;
use crate::url::query_param;

/// The close reason Google gives a Live session over its quota (code 1011).
pub const QUOTA_CLOSE_REASON: &str =
    "You exceeded your current quota, please check your plan and billing details.";

const WS_PREFIX: &str = "/ws/google.ai.generativelanguage.";

/// Which ephemeral tokens exist, and the key that minted each.
#[derive(Default)]
pub(crate) struct LiveTokens(Mutex<HashMap<String, String>>);

/// Answers a Live request (a session upgrade, or minting a token); `None` for any other request.
pub(crate) fn handle(
    shared: &Arc<Shared>,
    parts: &mut Parts,
    key: Option<&str>,
) -> Option<Response<MockBody>> {
    let path = parts.uri.path();
    let mint = parts.method == Method::POST
        && [
            "/v1alpha/auth_tokens",
            "/v1beta/auth_tokens",
            "/v1/auth_tokens",
        ]
        .contains(&path);
    let session = path.strip_prefix(WS_PREFIX).and_then(|rest| {
        let (_version, method) = rest.split_once(".GenerativeService.")?;
        match method {
            "BidiGenerateContent" => Some(false),
            "BidiGenerateContentConstrained" => Some(true),
            _ => None,
        }
    });
    if !mint && session.is_none() {
        return None;
    }
    let Some(key) = key else {
        return Some(reply::permission_denied(
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        ));
    };
    if shared.invalid_keys.contains(key) {
        return Some(reply::json(StatusCode::BAD_REQUEST, invalid_key()));
    }
    let failure = shared.key_failure(key);
    let refuse_handshake = parts
        .headers
        .get("x-mock-live-quota")
        .is_some_and(|v| v.as_bytes() == b"handshake");
    if let Some(f) = failure
        .as_ref()
        .filter(|f| mint || refuse_handshake || !matches!(f, Failure::RateLimited { .. }))
    {
        let ctx = ErrorContext {
            model: None,
            version: "v1beta",
            retry_delay_seconds: None,
        };
        return Some(f.response(&ctx));
    }
    if mint {
        let token = format!("auth_tokens/{}", shared.new_id());
        shared
            .live_tokens
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.clone(), key.to_owned());
        let body = json!({
            "name": token,
            "uses": 1,
            "expireTime": "2099-01-01T00:00:00Z",
            "newSessionExpireTime": "2099-01-01T00:00:00Z",
        });
        return Some(reply::ok(reply::compact(&body)));
    }
    if session == Some(true) {
        let token = query_param(parts.uri.query(), "access_token");
        let owner = token.and_then(|t| {
            shared
                .live_tokens
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&crate::url::percent_decode(t))
                .cloned()
        });
        match owner {
            None => {
                return Some(reply::error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHENTICATED",
                    "The ephemeral token is missing or unknown.",
                ));
            }
            Some(owner) if owner != key => {
                return Some(reply::permission_denied(
                    "The ephemeral token belongs to another project.",
                ));
            }
            Some(_) => {}
        }
    }
    let Some(accept) = parts
        .headers
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return Some(reply::invalid_argument("A WebSocket upgrade is required."));
    };
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return Some(reply::invalid_argument("A WebSocket upgrade is required."));
    };
    let quota = matches!(failure, Some(Failure::RateLimited { .. }));
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            session_loop(ws, quota).await;
        }
    });
    let mut res = Response::new(MockBody::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::try_from(accept) {
        h.insert("sec-websocket-accept", v);
    }
    Some(res)
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

fn server_message(value: &Value) -> Message {
    Message::binary(Bytes::from(value.to_string()))
}

async fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
    let _ = ws
        .close(Some(CloseFrame {
            code,
            reason: reason.to_owned().into(),
        }))
        .await;
    // Read until the client's answer, so the close completes.
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            break;
        }
    }
}

async fn session_loop(mut ws: Ws, quota: bool) {
    let mut setup_done = false;
    while let Some(Ok(msg)) = ws.next().await {
        let bytes: Bytes = match msg {
            Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
            if setup_done && !bytes.is_empty() && std::str::from_utf8(&bytes).is_err() {
                // Not JSON and not text: echoed as it came.
                if ws.send(Message::binary(bytes)).await.is_err() {
                    break;
                }
                continue;
            }
            close(
                &mut ws,
                CloseCode::Invalid,
                "Invalid JSON payload received.",
            )
            .await;
            return;
        };
        if !setup_done {
            let Some(model) = value.pointer("/setup/model").and_then(Value::as_str) else {
                close(
                    &mut ws,
                    CloseCode::Invalid,
                    "Invalid JSON payload received. The first message must be setup.",
                )
                .await;
                return;
            };
            if quota || model.trim_start_matches("models/") == "mock-error-429" {
                close(&mut ws, CloseCode::Error, QUOTA_CLOSE_REASON).await;
                return;
            }
            setup_done = true;
            if ws
                .send(server_message(&json!({"setupComplete": {}})))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        // Google reads protobuf JSON: top-level fields in camelCase or snake_case (the Python SDK
        // sends `client_content`, `realtime_input`).
        let client_content = value
            .get("clientContent")
            .or_else(|| value.get("client_content"));
        let realtime = value
            .get("realtimeInput")
            .or_else(|| value.get("realtime_input"));
        let text = client_content
            .and_then(|c| c.get("turns"))
            .and_then(Value::as_array)
            .and_then(|turns| turns.last())
            .and_then(|turn| turn.get("parts"))
            .and_then(Value::as_array)
            .and_then(|parts| parts.iter().find_map(|p| p.get("text")?.as_str()))
            .or_else(|| realtime.and_then(|r| r.get("text")).and_then(Value::as_str))
            .map(str::to_owned);
        let audio = realtime
            .and_then(|r| {
                r.pointer("/audio/data")
                    .or_else(|| r.pointer("/mediaChunks/0/data"))
            })
            .and_then(Value::as_str)
            .map(str::to_owned);
        let replies = if let Some(text) = text {
            if text == "mock:goaway" {
                vec![json!({"goAway": {"timeLeft": "10s"}})]
            } else if text == "mock:quota" {
                close(&mut ws, CloseCode::Error, QUOTA_CLOSE_REASON).await;
                return;
            } else if let Some(spec) = text.strip_prefix("mock:close:") {
                let (code, reason) = spec.split_once(':').unwrap_or((spec, ""));
                let code = code
                    .parse::<u16>()
                    .map_or(CloseCode::Normal, CloseCode::from);
                close(&mut ws, code, reason).await;
                return;
            } else {
                vec![
                    json!({"serverContent": {"modelTurn": {"role": "model", "parts": [{"text": format!("Echo: {text}")}]}}}),
                    turn_complete(),
                ]
            }
        } else if let Some(data) = audio {
            vec![
                json!({"serverContent": {"modelTurn": {"role": "model", "parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}}]}}}),
                turn_complete(),
            ]
        } else {
            Vec::new()
        };
        for reply in replies {
            if ws.send(server_message(&reply)).await.is_err() {
                return;
            }
        }
    }
}

fn turn_complete() -> Value {
    json!({
        "serverContent": {"turnComplete": true},
        "usageMetadata": {
            "promptTokenCount": crate::PROMPT_TOKEN_COUNT,
            "responseTokenCount": crate::CANDIDATES_TOKEN_COUNT,
            "totalTokenCount": crate::PROMPT_TOKEN_COUNT + crate::CANDIDATES_TOKEN_COUNT,
        }
    })
}
