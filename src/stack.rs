//! The request path, built in one place.
//!
//! Every client request passes these layers, outermost first; each line says why it sits where it
//! does.
//!
//! 1. **catch-panic** (tower-http) — a bug in any layer below becomes a Google-shaped 500 for that
//!    request instead of a dropped connection.
//! 2. **compression** (tower-http, [`compression::layer`]) — gzip towards clients that accept
//!    it, except streams; outermost so every layer inside, and the upstream request (always
//!    `Accept-Encoding: identity`), deals in plain bytes.
//! 3. **set request id** (tower-http, [`CounterRequestId`]) — `x-request-id`, kept when the client
//!    sent one, so everything below can name the request.
//! 4. **propagate request id** (tower-http) — echoes it on the response, errors included.
//! 5. **access log** ([`AccessLogLayer`]) — outside the error layer so it sees the final status of
//!    every request; writes its line when the response body ends.
//! 6. **metrics** ([`MetricsLayer`]) — right inside the access log, for the same reasons: it sees
//!    every request and its final status, and records it (Prometheus series, `/performance`,
//!    `/errors`) when the response body ends, so streams count with their whole duration.
//! 7. **trace** ([`TraceLayer`]) — a span per request (OTLP, when `metrics.otlp.enabled`),
//!    continuing the client's `traceparent`; ends with the response body. Outside the error layer
//!    so the span carries the final status.
//! 8. **sensitive headers** (tower-http) — marks `Authorization` and `x-goog-api-key` sensitive so no
//!    `Debug` of a request below can print a credential.
//! 9. **error response** ([`ErrorResponseLayer`]) — the one place a [`GatewayError`] becomes a
//!    Google-shaped response; every layer below returns `Result<_, GatewayError>`.
//! 10. **route** ([`RouteLayer`]) — classifies the path (API, version, model); 404 before any body is
//!     read, 400 for a path it cannot classify with certainty (dot segments, encoded slashes). A
//!     model alias in the path becomes its real model here (or in metrics or trace, whichever
//!     parses the route first), before anything reads the model.
//! 11. **auth** ([`AuthLayer`]) — checks the client's token (JWT) when `auth.enabled`, or the
//!     signed capability of an upload or download URL the gateway handed out; 401 / 403 (model
//!     not allowed, a capability for another resource or client) before any body is read. After
//!     route because the model policy needs the model.
//! 12. **client stats** ([`ClientStatsLayer`]) — right inside auth, the first place the client is
//!     known: names it on the span and, with `metrics.per_client`, counts its requests (its
//!     client-limit rejections included).
//! 13. **client limit** ([`ClientLimitLayer`]) — per-client requests per minute (GCRA), keyed by
//!     token subject, or by client IP when auth is off, and token budgets (`tpm` / `tpd`, from
//!     in-memory counters); 429 before any body is read. After auth so an unauthenticated flood
//!     cannot spend a real client's budget.
//! 14. **live** ([`LiveLayer`]) — Live API sessions (WebSocket): 400 for a Live route that is
//!     not an upgrade, 429 over the token's `live_sessions` or when every key carries
//!     `gemini.live.max_sessions_per_key` sessions, 503 when no key could carry one (invalid,
//!     disabled); then it answers the upgrade itself and hands the
//!     session to [`crate::live`], which picks the key once the `setup` names the model (the
//!     layers below never see a session); and binds tokens minted through `POST …/auth_tokens`
//!     to their key. Inside client limit, so a session counts as one request there first.
//! 15. **buffer body** ([`BufferBodyLayer`]) — reads the body (≤ `server.max_request_body_bytes`;
//!     all bodies at once ≤ `server.max_buffered_body_bytes`) so an attempt can be replayed;
//!     413 / 408 / 503.
//! 16. **body model** ([`BodyModelLayer`]) — the model named in a JSON body (OpenAI-compatible
//!     surface, cached-content creation) completes the route's model and is checked against the
//!     token's `models` (an alias replaced by its real model first, in the body too); 403, or 400
//!     for a body it cannot read with certainty (`model` twice).
//!     Right after buffer body: the first place the body is there.
//! 17. **overrides** ([`OverridesLayer`]) — applies `gemini.overrides` (`set` / `default`) to
//!     the JSON body of a generate, stream or OpenAI chat request a rule matches by its real
//!     model and client; other bodies are sent byte for byte. After body model and auth: it
//!     needs the body, the model and the client.
//! 18. **model list** ([`ModelListLayer`]) — adds the model aliases (`gemini.models.aliases`)
//!     to the first page of `GET models` and to the OpenAI-compatible `GET openai/models`;
//!     every other request passes untouched. Inside auth so
//!     it lists only the aliases of models the token allows.
//! 19. **response cache** ([`ResponseCacheLayer`]) — with `cache.enabled`, answers a repeated
//!     non-streaming generate, count-tokens, embed or OpenAI chat/embeddings request from the
//!     cache (`x-gem-proxy-cache: hit`) and keeps the answers it may (200, whole, `STOP`),
//!     watched on their way out. After overrides (the key covers the body as sent) and auth (and
//!     the client); before affinity, failover and key balance so a hit picks and spends no key.
//! 20. **affinity** ([`AffinityLayer`]) — binds requests about a key-owned resource (file,
//!     cached content, batch, operation, tuned model, file search store, interaction…) to the
//!     key that created it (only that key can see it) and, with auth, to the client that created
//!     it (others get 404, listings are filtered; two keys' resources in one request, 400);
//!     learns new bindings from answers, points their download links at the gateway and, with
//!     auth, signs upload and download links for their client. After buffer body because it
//!     reads the body for resource references.
//! 21. **failover** ([`FailoverLayer`]) — reads what Google's answer means for the key (rest,
//!     invalid, overloaded…), applies it, and replays the buffered request on another key while
//!     nothing has reached the client. Above key balance so each attempt picks afresh. Records
//!     each attempt (duration, result, span) and each retry.
//! 22. **key balance** ([`KeyBalanceLayer`]) — weighted pick over the keys with headroom for the
//!     model that can serve the route (a Vertex AI member only the routes Vertex has, while it
//!     has a token); when none has and the model has fallbacks (`gemini.models.fallbacks`), the first
//!     fallback the token allows with a key that has headroom serves it (path, body and route
//!     switched; `x-gem-proxy-model` on the answer); else 429 with `Retry-After`.
//! 23. **usage** ([`UsageLayer`]) — taps successful answers for `usageMetadata` (tokens per key,
//!     model and client; `gen_ai.usage.*` on the span; the usage history and the client's token
//!     budget) without buffering them. Inside key balance: it needs the key. (Failover reports the
//!     error answers and key rests to the usage history.)
//! 24. **upstream** ([`Upstream`]) — strips client credentials and hop-by-hop headers, injects the
//!     key (and the attempt's `traceparent` when tracing; a Vertex AI member's URL, token or
//!     express key and body fix-ups come from [`crate::vertex`]), sends, streams the answer back (with
//!     heartbeats in a silent event stream when `gemini.stream_heartbeat_seconds` is set; the
//!     body observers above never see them).
//!
//! Request extensions (who inserts → who reads):
//! - [`Route`](crate::route::Route): the first of metrics, trace and route that runs (parsed
//!   once, model aliases resolved; body model completes its model, key balance switches it to a
//!   fallback) → metrics and trace (route label, model), route (404 when absent, 400 when
//!   ambiguous), auth and body model (model policy), model list, key balance and usage
//!   (per-model state), upstream (credential header choice).
//! - [`Client`](crate::auth::Client): auth (when `auth.enabled`; from the token, or from the
//!   capability of an upload or download link) → client stats, client limit (key and `rpm`),
//!   body model (`models`), overrides (`match.clients`), model list, response cache (the key), affinity (who owns a resource); later the admin API (`role`) and
//!   per-client statistics.
//! - [`BoundKey`](crate::key_pool::BoundKey): affinity → failover (no replay), key balance;
//!   live (ephemeral tokens) → its Live session's pick.
//! - [`TriedKeys`](crate::key_pool::TriedKeys): failover (retries) → key balance.
//! - [`ClientSlot`](crate::live_sessions::ClientSlot): live → the Live session, which holds it
//!   while it runs.
//! - [`SessionHold`](crate::live_sessions::SessionHold): server → the Live session (the
//!   connection's place and the shutdown signal).
//! - `OnUpgrade` (hyper): hyper → the Live session (the client's upgraded connection).
//! - [`SelectedKey`](crate::key_pool::SelectedKey): key balance → usage, upstream, which copies it
//!   onto the response for failover, affinity and the access log.
//! - [`ClientAddr`](crate::client_addr::ClientAddr): server → client limit (per-IP key when auth is off).
//! - `Arc<`[`BufferedShare`](crate::layers::buffer_body::BufferedShare)`>`: buffer body → nobody;
//!   it holds the body's share of the budget for as long as the request lives.
//! - [`RequestTrace`](crate::trace::RequestTrace) (tracing on): trace → client stats, failover
//!   (attempt spans), usage (token attributes).
//! - [`AttemptTrace`](crate::trace::AttemptTrace) (tracing on): failover → upstream
//!   (`traceparent`).
//!
//! Response extensions: [`ErrorKind`](crate::error::ErrorKind) (error response → access log,
//! metrics, trace), [`ErrorReason`](crate::error::ErrorReason) (error response → metrics),
//! [`SelectedKey`](crate::key_pool::SelectedKey) (upstream → usage, failover, affinity, access
//! log, metrics, trace), [`StreamedAnswer`](crate::upstream::StreamedAnswer)
//! (upstream → compression: never compressed).

use std::any::Any;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::{CatchPanicLayer, ResponseForPanic};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::body::{BoxError, GatewayBody};
use crate::error::{ErrorKind, GatewayError, google_error};
use crate::gateway::Gateway;
use crate::http_client::X_GOOG_API_KEY;
use crate::layers::access_log::AccessLogLayer;
use crate::layers::affinity::AffinityLayer;
use crate::layers::auth::AuthLayer;
use crate::layers::body_model::BodyModelLayer;
use crate::layers::buffer_body::BufferBodyLayer;
use crate::layers::client_limit::ClientLimitLayer;
use crate::layers::client_stats::ClientStatsLayer;
use crate::layers::compression;
use crate::layers::error_response::ErrorResponseLayer;
use crate::layers::failover::FailoverLayer;
use crate::layers::key_balance::KeyBalanceLayer;
use crate::layers::live::LiveLayer;
use crate::layers::metrics::MetricsLayer;
use crate::layers::model_list::ModelListLayer;
use crate::layers::overrides::OverridesLayer;
use crate::layers::request_id::CounterRequestId;
use crate::layers::response_cache::ResponseCacheLayer;
use crate::layers::route::RouteLayer;
use crate::layers::trace::TraceLayer;
use crate::layers::usage::UsageLayer;
use crate::upstream::Upstream;

/// The body of every proxied response (boxed once, by the catch-panic layer).
pub type ProxyBody = tower_http::body::UnsyncBoxBody<Bytes, BoxError>;

/// Builds the whole request path for `gateway`.
pub fn build<B>(
    gateway: Arc<Gateway>,
) -> impl Service<Request<B>, Response = Response<ProxyBody>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(PanicResponse))
        .layer(compression::layer())
        .layer(SetRequestIdLayer::x_request_id(CounterRequestId::default()))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(AccessLogLayer::new())
        .layer(MetricsLayer::new(gateway.clone()))
        .layer(TraceLayer::new(gateway.clone()))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            X_GOOG_API_KEY.clone(),
        ]))
        .layer(ErrorResponseLayer::new())
        .layer(RouteLayer::new(gateway.clone()))
        .layer(AuthLayer::new(gateway.clone()))
        .layer(ClientStatsLayer::new(gateway.clone()))
        .layer(ClientLimitLayer::new(gateway.clone()))
        .layer(LiveLayer::new(gateway.clone()))
        .layer(BufferBodyLayer::new(gateway.clone()))
        .layer(BodyModelLayer::new(gateway.clone()))
        .layer(OverridesLayer::new(gateway.clone()))
        .layer(ModelListLayer::new(gateway.clone()))
        .layer(ResponseCacheLayer::new(gateway.clone()))
        .layer(AffinityLayer::new(gateway.clone()))
        .layer(FailoverLayer::new(gateway.clone()))
        .layer(KeyBalanceLayer::new(gateway.clone()))
        .layer(UsageLayer::new(gateway.clone()))
        .service(Upstream::new(gateway))
}

/// Answers a panic with Google's 500 shape; the panic message is logged, never sent. Used by the
/// proxy stack and by the admin service.
#[derive(Debug, Clone, Copy)]
pub struct PanicResponse;

impl ResponseForPanic for PanicResponse {
    type ResponseBody = GatewayBody;

    fn response_for_panic(&mut self, err: Box<dyn Any + Send + 'static>) -> Response<GatewayBody> {
        let msg = err
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| err.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        tracing::error!(panic = msg, "a request handler panicked");
        let e = GatewayError::Internal("the gateway failed to handle this request");
        let mut res = google_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.google_status(),
            &e.to_string(),
        );
        res.extensions_mut().insert(ErrorKind("panic"));
        res
    }
}
