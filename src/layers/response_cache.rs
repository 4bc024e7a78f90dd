//! Response cache (`cache`, off by default): answers a repeated request from memory instead of
//! spending a key on it.
//!
//! Exact match only. Cached: non-streaming `generateContent`, `countTokens`, `embedContent`,
//! `batchEmbedContents`, and OpenAI `chat/completions` / `embeddings` without `"stream": true`.
//! The key is the SHA-256 of the method, the path (the model already its real name, aliases
//! resolved), the query (without `key=`), the model, the body as it will be sent (after
//! overrides) and the client (the token's `sub`; left out with `cache.shared`, and empty with
//! auth off). Only a 200 whose whole body arrived is kept, and only when it is a JSON object
//! that is not an error and, for a generation, every candidate finished with `STOP`; an answer
//! a fallback model served (`x-gem-proxy-model`) or larger than `cache.max_entry_bytes` is not.
//! The answer is watched on its way to the client (a body observer), never held back.
//!
//! The client's `Cache-Control: no-cache` skips the lookup (the fresh answer is kept);
//! `no-store` skips the lookup and the keeping. Every request the cache could have answered
//! says what happened in `x-gem-proxy-cache: hit | miss | bypass`, counted in
//! `gem_proxy_cache_requests_total`. A hit spends no key quota (it never reaches key balance);
//! its tokens count for the client (metrics, usage history with an empty key id, token budget)
//! as the first answer's did.
//!
//! Sits after overrides (the body as sent) and auth (the client), and before affinity,
//! failover and key balance, so a hit picks no key.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::ShortCircuit;
use crate::auth::Client;
use crate::body::{BodyEnd, BodyObserver, GatewayBody};
use crate::cache::{CacheKey, CachedAnswer, ResponseCache, cacheable_answer, cacheable_route};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::http_client::strip_key_param;
use crate::metrics::CacheResult;
use crate::route::{Route, RouteLabel};

/// The response header that says what the cache did.
pub const X_GEM_PROXY_CACHE: &str = "x-gem-proxy-cache";

/// Applies [`ResponseCacheService`].
#[derive(Debug, Clone)]
pub struct ResponseCacheLayer {
    gateway: Arc<Gateway>,
}

impl ResponseCacheLayer {
    /// Caches by the live config's `cache`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for ResponseCacheLayer {
    type Service = ResponseCacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCacheService {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Answers repeated requests from the cache; keeps the answers it may.
#[derive(Debug, Clone)]
pub struct ResponseCacheService<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

/// What the client's `Cache-Control` asks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ClientDirectives {
    no_cache: bool,
    no_store: bool,
}

fn directives(headers: &http::HeaderMap) -> ClientDirectives {
    let mut d = ClientDirectives::default();
    for v in headers.get_all(header::CACHE_CONTROL) {
        for part in v.to_str().unwrap_or("").split(',') {
            let name = part.split('=').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("no-cache") {
                d.no_cache = true;
            } else if name.eq_ignore_ascii_case("no-store") {
                d.no_store = true;
            }
        }
    }
    d
}

/// Whether an OpenAI-compatible body asks for a stream.
fn asks_for_stream(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Stream {
        #[serde(default)]
        stream: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Stream>(body) {
        Ok(s) => s
            .stream
            .is_some_and(|v| v != serde_json::Value::Bool(false)),
        // Not a JSON object: Google answers it (an error), which is not kept anyway.
        Err(_) => true,
    }
}

impl<S> Service<Request<Bytes>> for ResponseCacheService<S>
where
    S: Service<Request<Bytes>, Response = Response<GatewayBody>, Error = GatewayError>,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let live = self.gateway.live();
        let config = &live.config.cache;
        let route = req.extensions().get::<Route>();
        let Some(route) = route.filter(|r| {
            config.enabled
                && req.method() == Method::POST
                && cacheable_route(r.label)
                && !(matches!(
                    r.label,
                    RouteLabel::OpenAiChat | RouteLabel::OpenAiEmbeddings
                ) && asks_for_stream(req.body()))
        }) else {
            return ResponseFuture::inner(self.inner.call(req), None);
        };
        let label = route.label;
        let model = route.model.clone().unwrap_or_else(|| Arc::from(""));
        let asked = directives(req.headers());
        let metrics = self.gateway.metrics();
        if asked.no_store {
            metrics.cache_lookup(CacheResult::Bypass);
            let tag = Tag {
                result: CacheResult::Bypass,
                fill: None,
            };
            return ResponseFuture::inner(self.inner.call(req), Some(tag));
        }
        let client = req
            .extensions()
            .get::<Client>()
            .filter(|_| !config.shared)
            .map(|c| c.id.clone());
        // Without credentials (`key=`): the key never holds one.
        let query = strip_key_param(req.uri().query().unwrap_or(""));
        let key = crate::cache::key(&[
            req.method().as_str().as_bytes(),
            req.uri().path().as_bytes(),
            query.as_bytes(),
            model.as_bytes(),
            client.as_deref().unwrap_or("").as_bytes(),
            req.body(),
        ]);
        let cache = self.gateway.cache();
        let now = Instant::now();
        if !asked.no_cache
            && let Some(answer) = cache.get(&key, now)
        {
            metrics.cache_lookup(CacheResult::Hit);
            self.count_hit(&req, &model, &answer);
            return ResponseFuture::ready(hit_response(answer));
        }
        let result = if asked.no_cache {
            CacheResult::Bypass
        } else {
            CacheResult::Miss
        };
        metrics.cache_lookup(result);
        let fill = Fill {
            cache: cache.clone(),
            key,
            label,
            ttl: config.ttl(),
            max_bytes: config.max_bytes,
            max_entry_bytes: config.max_entry_bytes,
        };
        ResponseFuture::inner(
            self.inner.call(req),
            Some(Tag {
                result,
                fill: Some(fill),
            }),
        )
    }
}

impl<S> ResponseCacheService<S> {
    /// Counts a hit's tokens for its client: the token metrics and the usage history (with no
    /// key) and the client's token budget; no key is charged.
    fn count_hit(&self, req: &Request<Bytes>, model: &Arc<str>, answer: &CachedAnswer) {
        let metrics = self.gateway.metrics();
        if let Some(t) = &answer.tokens
            && metrics.enabled()
        {
            metrics.tokens(metrics.admit_model(model), t);
            if let Some(c) = req.extensions().get::<Client>()
                && metrics.per_client()
            {
                metrics.client_tokens(metrics.client_index(&c.id), t);
            }
        }
        let default_tpd = self.gateway.live().config.auth.default_tokens_per_day;
        if let Some(history) = self.gateway.usage().request(req, model, default_tpd) {
            history.answered(&Arc::from(""), answer.tokens.as_ref());
        }
    }
}

/// The response for a hit.
fn hit_response(answer: CachedAnswer) -> Result<Response<GatewayBody>, GatewayError> {
    let mut res = Response::new(GatewayBody::full(answer.body));
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    if let Some(ct) = answer.content_type {
        h.insert(header::CONTENT_TYPE, ct);
    }
    h.insert(X_GEM_PROXY_CACHE, HeaderValue::from_static("hit"));
    Ok(res)
}

/// What a request the cache could have answered carries to its response.
#[derive(Debug)]
struct Tag {
    result: CacheResult,
    /// Where to keep the answer (not with `no-store`).
    fill: Option<Fill>,
}

/// Where and how long an answer is kept.
#[derive(Debug)]
struct Fill {
    cache: Arc<ResponseCache>,
    key: CacheKey,
    label: RouteLabel,
    ttl: Duration,
    max_bytes: usize,
    max_entry_bytes: usize,
}

pin_project! {
    /// Response future of [`ResponseCacheService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: ShortCircuit<F, Result<Response<GatewayBody>, GatewayError>>,
        tag: Option<Tag>,
    }
}

impl<F> ResponseFuture<F> {
    fn inner(future: F, tag: Option<Tag>) -> Self {
        Self {
            inner: ShortCircuit::inner(future),
            tag,
        }
    }

    fn ready(result: Result<Response<GatewayBody>, GatewayError>) -> Self {
        Self {
            inner: ShortCircuit::ready(result),
            tag: None,
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<GatewayBody>, GatewayError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(tag) = this.tag.take() {
            res.headers_mut().insert(
                X_GEM_PROXY_CACHE,
                HeaderValue::from_static(tag.result.as_str()),
            );
            if let Some(fill) = tag.fill
                && res.status() == StatusCode::OK
                && !res.headers().contains_key("x-gem-proxy-model")
            {
                let content_type = res.headers().get(header::CONTENT_TYPE).cloned();
                res.body_mut().tap(Box::new(Keep {
                    fill,
                    content_type,
                    body: BytesMut::new(),
                    too_big: false,
                }));
            }
        }
        Poll::Ready(Ok(res))
    }
}

/// Collects an answer as it passes (up to `cache.max_entry_bytes`) and keeps it once it ended
/// whole and may be kept.
struct Keep {
    fill: Fill,
    content_type: Option<HeaderValue>,
    body: BytesMut,
    too_big: bool,
}

impl BodyObserver for Keep {
    fn on_data(&mut self, data: &Bytes) {
        if self.too_big {
            return;
        }
        if self.body.len() + data.len() > self.fill.max_entry_bytes {
            self.too_big = true;
            self.body = BytesMut::new();
            return;
        }
        self.body.extend_from_slice(data);
    }

    fn on_end(&mut self, end: BodyEnd) {
        if end != BodyEnd::Complete || self.too_big {
            return;
        }
        let body = std::mem::take(&mut self.body).freeze();
        let f = &self.fill;
        if !cacheable_answer(f.label, &body) {
            return;
        }
        let answer = CachedAnswer {
            content_type: self.content_type.take(),
            tokens: crate::usage::find_usage(&body),
            body,
        };
        f.cache
            .insert(f.key, answer, f.ttl, f.max_bytes, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_clients_cache_control() {
        let mut h = http::HeaderMap::new();
        assert_eq!(directives(&h), ClientDirectives::default());
        h.insert(
            header::CACHE_CONTROL,
            "max-age=0, No-Cache".parse().unwrap(),
        );
        assert!(directives(&h).no_cache && !directives(&h).no_store);
        h.append(header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert!(directives(&h).no_store);
    }

    #[test]
    fn the_key_never_holds_the_credential() {
        assert_eq!(strip_key_param("key=AIza&alt=json"), "alt=json");
        assert_eq!(strip_key_param("alt=sse"), "alt=sse");
        assert_eq!(strip_key_param(""), "");
    }

    #[test]
    fn openai_streams_are_recognised() {
        assert!(asks_for_stream(br#"{"model":"m","stream":true}"#));
        assert!(!asks_for_stream(br#"{"model":"m","stream":false}"#));
        assert!(!asks_for_stream(br#"{"model":"m"}"#));
        assert!(asks_for_stream(b"[1]"));
    }
}
