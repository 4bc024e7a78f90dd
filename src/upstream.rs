//! The innermost service: sends the request to Gemini with the selected key and streams the answer
//! back.
//!
//! What crosses, and what does not:
//! - method, path, query and body unchanged; end-to-end headers unchanged;
//! - hop-by-hop headers (RFC 9110 §7.6.1, and any the `Connection` header names) dropped both ways;
//! - every client credential dropped: `Authorization`, `x-goog-api-key`, `key=` in the query;
//! - the key injected as `x-goog-api-key`, or as `Authorization: Bearer` on the OpenAI-compatible
//!   surface (`/v1beta/openai/`);
//! - for a Vertex AI member, its own URL, credential (access token or express-mode `?key=`) and
//!   body fix-ups instead ([`crate::vertex`]), and a `:predict` answer put back in
//!   `batchEmbedContents`' shape;
//! - `Accept-Encoding: identity` instead of the client's: the gateway reads answers (usage,
//!   verdicts, scrubbing, affinity), so they come plain, and the compression layer compresses
//!   towards the client ([`crate::layers::compression`]); answers to streaming calls carry
//!   [`StreamedAnswer`] so they are never compressed;
//! - the resumable-upload URL Google answers with (`X-Goog-Upload-URL`, which carries the key) is
//!   rewritten to point at the gateway, without the key.
//!
//! A Live API session (WebSocket) never comes here: the Live layer hands it to [`crate::live`].
//!
//! Time limits: `gemini.connect_timeout_seconds` for the connection, `gemini.timeout_seconds` for the
//! response headers (504), `gemini.stream_idle_timeout_seconds` between body frames. An upstream that
//! cannot be reached is a 502. The upstream's own errors pass through untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::Full;
use tower::Service;

use crate::body::GatewayBody;
use crate::conn_pool::PooledBody;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::heartbeat::Beat;
use crate::http_client::{
    UpstreamTarget, X_GOOG_API_KEY, X_GOOG_UPLOAD_CONTROL_URL, X_GOOG_UPLOAD_URL, strip_key_param,
};
use crate::key_pool::SelectedKey;
use crate::route::{Api, Route};
use crate::vertex::Answer;

/// Headers that belong to one connection, never to be forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers, including those the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // One pass over the few headers a request or answer has instead of eight removals that
    // each hash and probe: most messages carry none of them. A name's length rules out nearly
    // every header before any comparison.
    if headers.keys().any(is_hop_by_hop) {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// Whether `name` is one of [`HOP_BY_HOP`] (names are lowercase).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let n = name.as_str();
    match n.len() {
        2 => n == "te",
        7 => n == "trailer" || n == "upgrade",
        10 => n == "connection" || n == "keep-alive",
        16 => n == "proxy-connection",
        17 => n == "transfer-encoding",
        18 => n == "proxy-authenticate",
        _ => false,
    }
}

/// The upstream client as a tower service over buffered requests.
#[derive(Clone)]
pub struct Upstream {
    gateway: Arc<Gateway>,
}

impl Upstream {
    /// The service for this gateway.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl Service<Request<Bytes>> for Upstream {
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let gateway = self.gateway.clone();
        Box::pin(async move { forward(&gateway, req).await })
    }
}

async fn forward(
    gateway: &Arc<Gateway>,
    req: Request<Bytes>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let live = gateway.live();
    let (parts, body) = req.into_parts();
    let key = parts
        .extensions
        .get::<SelectedKey>()
        .cloned()
        .ok_or(GatewayError::Internal("no upstream key was selected"))?;
    let api = parts.extensions.get::<Route>().map(|r| r.api);

    let mut headers = parts.headers;
    // Where the client reached us, for rewriting the upload URL; read before Host is dropped.
    let client_origin = (api == Some(Api::Upload))
        .then(|| gateway.client_origin(&live.config, &parts.uri, &headers));
    strip_hop_by_hop(&mut headers);
    for name in [
        &header::HOST,
        &header::AUTHORIZATION,
        &header::PROXY_AUTHORIZATION,
        &X_GOOG_API_KEY,
        &header::CONTENT_LENGTH,
    ] {
        headers.remove(name);
    }
    // A Vertex AI member: its own URL, credential and body fix-ups ([`crate::vertex`]).
    let token_used = key.0.vertex.as_ref().and_then(|v| v.token_generation());
    let (uri, body, answer) = match (&key.0.vertex, parts.extensions.get::<Route>()) {
        (Some(vertex), Some(route)) => vertex.prepare(&parts.uri, route, &mut headers, body)?,
        (Some(_), None) => {
            return Err(GatewayError::Internal(
                "a Vertex AI request without a route",
            ));
        }
        (None, _) => {
            match api {
                Some(Api::OpenAi) => {
                    headers.insert(header::AUTHORIZATION, key.0.bearer_header.clone())
                }
                _ => headers.insert(X_GOOG_API_KEY.clone(), key.0.api_key_header.clone()),
            };
            (live.target.uri_for(&parts.uri)?, body, Answer::AsIs)
        }
    };
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let streamed = is_streaming_call(&parts.uri);
    // With tracing on, Google sees this attempt's span as the parent (same trace as the client's).
    if let Some(trace) = parts.extensions.get::<crate::trace::AttemptTrace>() {
        trace.inject(&mut headers);
    }

    let mut up = Request::new(Full::new(body));
    *up.method_mut() = parts.method;
    *up.uri_mut() = uri;
    // The pool sends HTTP/2 or HTTP/1.1 per connection (ALPN) whatever the version says.
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = headers;

    let gemini = &live.config.gemini;
    let egress = live.egress.for_key(&key.0.id);
    let sent = match egress {
        Some(proxy) => tokio::time::timeout(gemini.timeout(), proxy.request(up))
            .await
            .map(|r| {
                r.map(|res| res.map(PooledBody::from))
                    .map_err(|e| (e.is_connect(), error_chain(&e)))
            }),
        None => tokio::time::timeout(gemini.timeout(), live.client.request(up))
            .await
            .map(|r| r.map_err(|e| (e.is_connect(), error_chain(&e)))),
    };
    let res = match sent {
        Err(_) => {
            return Err(GatewayError::UpstreamTimeout {
                seconds: gemini.timeout_seconds,
                key: key.0.id.clone(),
            });
        }
        Ok(Err((is_connect, error))) => {
            let proxy = egress.map(|p| p.shown());
            tracing::warn!(key_id = %key.0.id, proxy, error = %error, "upstream request failed");
            let key = key.0.id.clone();
            // Only a failed connect proves the request never left: anything later may have
            // reached Google (see `gemini.retry_on_timeout`).
            return Err(if is_connect {
                GatewayError::UpstreamConnect {
                    key,
                    via_proxy: egress.is_some(),
                }
            } else {
                GatewayError::UpstreamUnavailable { key }
            });
        }
        Ok(Ok(res)) => res,
    };

    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(origin) = client_origin {
        rewrite_upload_url(&mut parts.headers, &live.target, &origin);
    }
    parts.extensions = http::Extensions::new();
    parts.extensions.insert(key);
    if let Some(used) = token_used {
        parts.extensions.insert(used);
    }
    let event_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streamed || event_stream {
        parts.extensions.insert(StreamedAnswer);
    }
    if answer == Answer::PredictToBatchEmbed && parts.status.is_success() {
        return Ok(predict_answer(parts, body, gemini.timeout()).await);
    }
    let mut body = GatewayBody::upstream(body, gemini.stream_idle_timeout());
    // Heartbeats only in a server-sent-events answer (`alt=sse`, OpenAI `stream: true`), never
    // in the JSON-array stream form or a plain answer.
    if let Some(every) = gemini.stream_heartbeat()
        && parts.status.is_success()
        && event_stream
    {
        let metrics = gateway.metrics().clone();
        body.heartbeat(Beat {
            every,
            bytes: Bytes::from_static(gemini.stream_heartbeat_style.bytes()),
            on_beat: Arc::new(move || metrics.stream_heartbeat()),
        });
    }
    Ok(Response::from_parts(parts, body))
}

/// A Vertex AI `:predict` answer, read whole (embeddings, never streamed) and put in
/// `batchEmbedContents`' shape.
async fn predict_answer(
    mut parts: http::response::Parts,
    body: PooledBody,
    limit: std::time::Duration,
) -> Response<GatewayBody> {
    use http_body_util::BodyExt;
    let bytes = match tokio::time::timeout(limit, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    };
    let bytes = crate::vertex::predict_to_batch_embed(&bytes).unwrap_or(bytes);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, GatewayBody::full(bytes))
}

/// A response extension: this answer is a stream (`:streamGenerateContent`, `alt=sse`,
/// `text/event-stream`) and must reach the client piece by piece, uncompressed (see
/// [`crate::layers::compression`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamedAnswer;

/// Whether the request asks for a streamed answer: `…:streamGenerateContent` (JSON-array pieces,
/// or SSE with `alt=sse`), or any `alt=sse`.
fn is_streaming_call(uri: &Uri) -> bool {
    let method = uri.path().rsplit(':').next().unwrap_or("");
    method.starts_with("stream")
        || uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "alt=sse"))
}

/// Points the upload URLs Google answers with (`X-Goog-Upload-URL`, `X-Goog-Upload-Control-URL`) at
/// the gateway and removes the key from them, so the client's next upload request comes back
/// through us and never sees an upstream key.
fn rewrite_upload_url(headers: &mut HeaderMap, target: &UpstreamTarget, client_origin: &str) {
    for name in [&X_GOOG_UPLOAD_URL, &X_GOOG_UPLOAD_CONTROL_URL] {
        let Some(value) = headers.get(name) else {
            continue;
        };
        let rewritten = value
            .to_str()
            .ok()
            .and_then(|s| s.parse::<Uri>().ok())
            .and_then(|uri| {
                let path = uri.path();
                let path = path.strip_prefix(target.prefix()).unwrap_or(path);
                let mut url = format!("{client_origin}{path}");
                if let Some(q) = uri.query().map(strip_key_param).filter(|q| !q.is_empty()) {
                    url.push('?');
                    url.push_str(&q);
                }
                HeaderValue::try_from(url).ok()
            });
        match rewritten {
            Some(v) => {
                headers.insert(name.clone(), v);
            }
            // Never let a URL we could not clean reach the client: it may carry the key.
            None => {
                headers.remove(name);
            }
        }
    }
}

/// An error and its causes on one line (hyper's top-level messages are terse).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn key_params_are_removed_and_the_rest_kept() {
        assert_eq!(strip_key_param("alt=sse&key=SECRET"), "alt=sse");
        assert_eq!(strip_key_param("key=SECRET&alt=sse&x=1"), "alt=sse&x=1");
        assert_eq!(strip_key_param("alt=sse&keyword=1"), "alt=sse&keyword=1");
        assert!(matches!(strip_key_param("alt=sse"), Cow::Borrowed(_)));
        assert_eq!(strip_key_param("key"), "");
    }

    #[test]
    fn upstream_uri_keeps_path_and_query_and_applies_prefix() {
        let t = UpstreamTarget::parse("https://example.com").unwrap();
        let u = t
            .uri_for(
                &"/v1beta/models/m:streamGenerateContent?alt=sse&key=K"
                    .parse()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(
            u.to_string(),
            "https://example.com/v1beta/models/m:streamGenerateContent?alt=sse"
        );
        let t = UpstreamTarget::parse("http://127.0.0.1:9/base/").unwrap();
        let u = t
            .uri_for(&"/v1/models?pageSize=5".parse().unwrap())
            .unwrap();
        assert_eq!(
            u.to_string(),
            "http://127.0.0.1:9/base/v1/models?pageSize=5"
        );
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom-hop"),
        );
        h.insert("x-custom-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-end-to-end", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-end-to-end"]);
    }

    #[test]
    fn every_hop_by_hop_header_alone_is_dropped_and_nothing_else() {
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert("x-end-to-end", HeaderValue::from_static("yes"));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} was forwarded");
            assert!(h.contains_key("x-end-to-end"));
        }
        // Same lengths as hop-by-hop names, end to end all the same.
        for name in [
            "tx",
            "trailed",
            "connexion",
            "proxy-connexion",
            "content-encoding",
        ] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert!(h.contains_key(name), "{name} was dropped");
        }
    }

    #[test]
    fn upload_url_points_at_the_gateway_without_the_key() {
        let t = UpstreamTarget::parse("https://generativelanguage.googleapis.com").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            X_GOOG_UPLOAD_URL.clone(),
            HeaderValue::from_static(
                "https://generativelanguage.googleapis.com/upload/v1beta/files?key=AIzaSECRET&upload_id=abc&upload_protocol=resumable",
            ),
        );
        rewrite_upload_url(&mut h, &t, "http://gw.local:8080");
        assert_eq!(
            h[&X_GOOG_UPLOAD_URL],
            "http://gw.local:8080/upload/v1beta/files?upload_id=abc&upload_protocol=resumable"
        );
    }
}
