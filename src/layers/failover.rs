//! Failover: reads what Google's answer means for the key (see
//! [`verdict`](crate::key_pool::verdict)), applies it to the key's state, and replays the buffered
//! request on another key when that can help.
//!
//! Sits below buffer body (the request is already in memory) and affinity, and above key balance,
//! so each attempt picks a key afresh, skipping the keys already tried ([`TriedKeys`]).
//!
//! - At most `gemini.max_retries` extra attempts, with short jittered backoff.
//! - Only while nothing has been sent to the client: a successful answer is passed on at once,
//!   streaming, and is never replayed. If it then fails mid-stream, the client's stream ends with
//!   an error (see [`crate::body`]).
//! - Error answers (small) are read whole, classified, and scrubbed of the upstream key before
//!   they are passed on; the last one reaches the client with Google's status and body.
//! - Requests bound to one key (a file or cached content) are not replayed elsewhere: no other key
//!   can see the resource.
//! - Only what cannot bill twice is replayed by default (see [`crate::replay`]): connect
//!   failures, 429, 503 overloaded, an invalid key. Time-outs and broken connections after the
//!   request was sent, and 500/502/504, are replayed only with `gemini.retry_on_timeout`, and
//!   never for a request that creates a resource.
//!
//! Config: `gemini.max_retries`, `gemini.retry_on_timeout`, `gemini.default_retry_delay_seconds`,
//! `gemini.unusable_rest_seconds`.

use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use opentelemetry::KeyValue;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::key_pool::verdict::{Verdict, classify};
use crate::key_pool::{BoundKey, KeyOutcome, RestReason, SelectedKey, TriedKeys, UpstreamKey};
use crate::metrics::{AttemptResult, Metrics, RetryReason};
use crate::replay::{ReplayPolicy, creates_resource};
use crate::route::Route;
use crate::trace::{AttemptTrace, RequestTrace};
use crate::vertex::TokenUsed;

/// Error answers larger than this are passed on unread (and classified by status alone).
const MAX_ERROR_BODY_BYTES: usize = 256 * 1024;

/// Applies [`Failover`].
#[derive(Debug, Clone)]
pub struct FailoverLayer {
    gateway: Arc<Gateway>,
}

impl FailoverLayer {
    /// Reads its settings from the gateway's live config on every request.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for FailoverLayer {
    type Service = Failover<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Failover {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Replays a failed attempt on another key.
#[derive(Debug, Clone)]
pub struct Failover<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S> Service<Request<Bytes>> for Failover<S>
where
    S: Service<Request<Bytes>, Response = Response<GatewayBody>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, GatewayError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(attempts(inner, self.gateway.clone(), req))
    }
}

async fn attempts<S>(
    mut inner: S,
    gateway: Arc<Gateway>,
    req: Request<Bytes>,
) -> Result<Response<GatewayBody>, GatewayError>
where
    S: Service<Request<Bytes>, Response = Response<GatewayBody>, Error = GatewayError>,
{
    let live = gateway.live();
    let gemini = &live.config.gemini;
    let bound = req.extensions().get::<BoundKey>().is_some();
    let max_retries = if bound { 0 } else { gemini.max_retries };
    let route = req.extensions().get::<Route>();
    let model: Arc<str> = route
        .and_then(|r| r.model.clone())
        .unwrap_or_else(|| Arc::from(""));
    let replay = ReplayPolicy {
        retry_on_timeout: gemini.retry_on_timeout,
        creates_resource: creates_resource(req.method(), req.uri().path(), route.map(|r| r.api)),
    };
    // Error answers go into the usage history here; successes where their body ends (usage).
    let usage = gateway
        .usage()
        .request(&req, &model, live.config.auth.default_tokens_per_day);
    let (parts, body) = req.into_parts();

    let mut tried: Vec<Arc<str>> = Vec::new();
    // The last failure (Google's error answer, or ours for a connect failure or time-out), passed
    // on if no other key does better.
    let mut last_failure: Option<Result<Response<GatewayBody>, GatewayError>> = None;
    for attempt in 0..=max_retries {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let mut req = Request::from_parts(parts.clone(), body.clone());
        if !tried.is_empty() {
            req.extensions_mut().insert(TriedKeys(tried.clone()));
        }
        let last_attempt = attempt == max_retries;
        let telemetry = Attempt::begin(&mut req, attempt);
        let res = match inner.ready().await?.call(req).await {
            Ok(res) => res,
            Err(e) => {
                let Some(key) = e.upstream_key().cloned() else {
                    telemetry.no_key();
                    // No key could be picked: the last failure says more than "no key" would.
                    return last_failure.unwrap_or(Err(e));
                };
                telemetry.failed(gateway.metrics(), &e);
                gateway.store().record(&key, KeyOutcome::ServerError);
                if let GatewayError::UpstreamConnect {
                    via_proxy: true, ..
                } = e
                {
                    // The key's own way out is down: it rests, the others serve.
                    let rest = Duration::from_secs(gemini.proxy_unreachable_rest_seconds);
                    gateway.rest_key(&key, &model, rest, RestReason::ProxyUnreachable);
                }
                if let Some(u) = &usage {
                    u.attempt(&key, KeyOutcome::ServerError);
                }
                let never_sent = matches!(e, GatewayError::UpstreamConnect { .. });
                if last_attempt || !(never_sent || replay.replay_unknown_outcome()) {
                    return Err(e);
                }
                gateway.metrics().retry(retry_reason_for_error(&e));
                tracing::info!(key_id = %key, attempt, error = e.kind(), "retrying on another key");
                tried.push(key);
                last_failure = Some(Err(e));
                continue;
            }
        };
        let status = res.status();
        let Some(key) = res.extensions().get::<SelectedKey>().cloned() else {
            telemetry.no_key();
            return Ok(res);
        };
        telemetry.answered(gateway.metrics(), &key.0, status);
        if !status.is_client_error() && !status.is_server_error() {
            return Ok(res);
        }

        let (mut res_parts, res_body) = res.into_parts();
        let bytes = match Limited::new(res_body, MAX_ERROR_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let mut verdict = classify(status, &bytes);
        // A Vertex service account's token can go stale before its expiry (revoked, rotated):
        // a new one is fetched and the member stays in the pool ([`crate::vertex`]).
        if status == StatusCode::UNAUTHORIZED
            && let Some(vertex) = &key.0.vertex
            && vertex.token_rejected(res_parts.extensions.get::<TokenUsed>(), Instant::now())
        {
            tracing::info!(key_id = %key.0.id, "vertex: access token refused, fetching a new one");
            verdict = Verdict::StaleCredential;
        }
        gateway.apply_verdict(&key.0.id, &model, &verdict);
        if let Some(u) = &usage {
            u.attempt(&key.0.id, verdict.outcome());
        }
        let bytes = scrub(bytes, key.0.secret.expose(), &key.0.id);
        res_parts.headers.remove(header::CONTENT_LENGTH);
        let answer = Response::from_parts(res_parts, GatewayBody::full(bytes));
        let replayable = verdict.refused_before_processing() || replay.replay_unknown_outcome();
        if !verdict.retry_elsewhere() || !replayable || last_attempt {
            return Ok(answer);
        }
        if let Some(reason) = RetryReason::for_verdict(&verdict) {
            gateway.metrics().retry(reason);
        }
        tracing::info!(
            key_id = %key.0.id,
            attempt,
            status = status.as_u16(),
            verdict = ?verdict,
            "retrying on another key"
        );
        tried.push(key.0.id.clone());
        last_failure = Some(Ok(answer));
    }
    last_failure.unwrap_or(Err(GatewayError::Internal(
        "failover ended without an answer",
    )))
}

/// 50 ms × attempt, ±50 % jitter, at most 1 s.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(50) * attempt;
    let jitter = std::hash::RandomState::new().hash_one(attempt) % 1000;
    (base / 2 + base * jitter as u32 / 1000).min(Duration::from_secs(1))
}

/// Replaces every occurrence of the upstream key in an error body (Google sometimes quotes it, as
/// in "Consumer 'api_key:…' has been suspended") with a mention of its id.
fn scrub(body: Bytes, secret: &str, id: &str) -> Bytes {
    let needle = secret.as_bytes();
    if needle.is_empty() || !body.windows(needle.len()).any(|w| w == needle) {
        return body;
    }
    let text = String::from_utf8_lossy(&body);
    Bytes::from(text.replace(secret, &format!("[key {id}]")))
}

/// One upstream attempt, for failover: its duration and result per key, and its span.
#[derive(Debug)]
pub struct Attempt {
    started: std::time::Instant,
    trace: Option<AttemptTrace>,
}

impl Attempt {
    /// Attempt `n` (0 for the first) of this request starts now. With tracing on, its span's
    /// context goes onto the request, for the upstream client's `traceparent`.
    pub fn begin<B>(req: &mut Request<B>, n: u32) -> Attempt {
        let trace = req.extensions().get::<RequestTrace>().map(|t| t.attempt(n));
        if let Some(t) = &trace {
            req.extensions_mut().insert(t.clone());
        }
        Attempt {
            started: std::time::Instant::now(),
            trace,
        }
    }

    /// The attempt got response headers from `key`.
    pub fn answered(self, metrics: &Metrics, key: &UpstreamKey, status: StatusCode) {
        let result = AttemptResult::Status(status);
        metrics.key_attempt(key, result, self.started.elapsed());
        self.end_trace(Some(&key.id), result);
    }

    /// The attempt failed before an answer: `error` is the gateway's error for it.
    pub fn failed(self, metrics: &Metrics, error: &GatewayError) {
        let result = match error {
            GatewayError::UpstreamTimeout { .. } => AttemptResult::Timeout,
            _ => AttemptResult::Unreachable,
        };
        self.end(metrics, error.upstream_key().map(|k| &**k), result);
    }

    fn end(self, metrics: &Metrics, key: Option<&str>, result: AttemptResult) {
        if let Some(key) = key {
            metrics.attempt(key, result, self.started.elapsed());
        }
        self.end_trace(key, result);
    }

    /// Ends the attempt's span, with its key and result.
    fn end_trace(self, key: Option<&str>, result: AttemptResult) {
        if let Some(t) = self.trace {
            let mut attrs = Vec::with_capacity(2);
            if let Some(key) = key {
                attrs.push(KeyValue::new("gem_proxy.key_id", key.to_owned()));
            }
            let error = match result {
                AttemptResult::Status(s) => {
                    attrs.push(KeyValue::new(
                        "http.response.status_code",
                        i64::from(s.as_u16()),
                    ));
                    (s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS)
                        .then_some("upstream error answer")
                }
                AttemptResult::Unreachable => Some("upstream unreachable"),
                AttemptResult::Timeout => Some("upstream timeout"),
            };
            t.end(attrs, error);
        }
    }

    /// No key could be picked for the attempt: nothing was sent.
    pub fn no_key(self) {
        if let Some(t) = self.trace {
            t.end(vec![], Some("no upstream key available"));
        }
    }
}

/// Why an attempt that failed without an answer is retried.
pub fn retry_reason_for_error(error: &GatewayError) -> RetryReason {
    match error {
        GatewayError::UpstreamTimeout { .. } => RetryReason::Timeout,
        _ => RetryReason::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_the_key_and_keeps_the_rest() {
        let body = Bytes::from_static(
            b"{\"message\":\"Consumer 'api_key:AIzaSECRET' has been suspended.\"}",
        );
        let out = scrub(body, "AIzaSECRET", "key1");
        assert_eq!(
            &out[..],
            &b"{\"message\":\"Consumer 'api_key:[key key1]' has been suspended.\"}"[..]
        );
        let clean = Bytes::from_static(b"{}");
        assert_eq!(scrub(clean.clone(), "AIzaSECRET", "k"), clean);
    }

    #[test]
    fn backoff_is_short_and_jittered() {
        for attempt in 1..5 {
            let b = backoff(attempt);
            assert!(
                b >= Duration::from_millis(25) * attempt && b <= Duration::from_secs(1),
                "{b:?}"
            );
        }
    }
}
