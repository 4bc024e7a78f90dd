//! Metrics: records every request into [`Metrics`](crate::metrics::Metrics) — the Prometheus
//! series, the `/performance` windows and the `/errors` log — when its answer ends.
//!
//! Sits right inside the access log, outside the error-response layer, so it sees every request
//! (the gateway's own errors as statuses with their [`ErrorKind`]) and, like the access log,
//! wraps the response body: a stream is counted when it ends, with its whole duration, its time
//! to first byte, and whether it ended cleanly, broke off or lost its client.
//!
//! Labels come from the path (never the raw path, see [`RouteLabel`]; the request's [`Route`] is
//! parsed here, once, when metrics are on) and from response extensions:
//! [`ErrorKind`] and [`ErrorReason`] (error response), [`SelectedKey`] (upstream). Recording is a
//! few atomic additions into pre-bound instruments; with `metrics.enabled: false` the layer only
//! passes requests through.
//!
//! What the inner layers know and this one cannot see they record themselves, into the same
//! [`Metrics`](crate::metrics::Metrics): the client stats layer (per-client series), the usage
//! layer's token sink and failover's attempts and retries.
//!
//! ```
//! # use std::sync::Arc;
//! # use gem_proxy::{config::ConfigLoader, gateway::{Gateway, Live}};
//! # use gem_proxy::layers::metrics::MetricsLayer;
//! # let config = ConfigLoader::default().load_str("gemini: { api_keys: [{ id: a, key: k }] }").unwrap();
//! # let gateway = Gateway::new(Live::build(config).unwrap());
//! # let inner = tower::service_fn(|_req: http::Request<()>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//! # });
//! let service = tower::ServiceBuilder::new()
//!     .layer(MetricsLayer::new(gateway))
//!     .service(inner);
//! # let _ = service;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{BodyEnd, BodyObserver, Observed};
use crate::error::{ErrorKind, ErrorReason};
use crate::gateway::Gateway;
use crate::key_pool::{SelectedKey, Slot};
use crate::metrics::errors::{ErrorEntry, message_of};
use crate::metrics::labels::{OTHER, Outcome};
use crate::metrics::{Finished, Limiter, Metrics};
use crate::route::{Route, RouteLabel};

/// Error bodies are kept up to this size for the `/errors` message.
const ERROR_BODY_BYTES: usize = 4096;

/// Applies [`Metering`].
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
    gateway: Arc<Gateway>,
}

impl MetricsLayer {
    /// Records into the gateway's metrics.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self {
            metrics: gateway.metrics().clone(),
            gateway,
        }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metering<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metering {
            inner,
            metrics: self.metrics.clone(),
            gateway: self.gateway.clone(),
        }
    }
}

/// Records each request when its answer ends.
#[derive(Debug, Clone)]
pub struct Metering<S> {
    inner: S,
    metrics: Arc<Metrics>,
    /// For the model aliases the route is parsed with.
    gateway: Arc<Gateway>,
}

impl<S> Metering<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for Metering<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<MeteredBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let pending = self.metrics.enabled().then(|| {
            Route::ensure(&mut req, &self.gateway.live().config.gemini.models);
            let parsed = req.extensions().get::<Route>();
            let route = Route::label_of(parsed);
            let model_name = parsed.and_then(Route::labelled_model).unwrap_or("");
            let model_index = self.metrics.model_index(model_name);
            // Remember the name only while it may still be admitted (once the label set is
            // full, or the model known, nothing is copied).
            let new_model = (model_index == OTHER && self.metrics.model_room())
                .then(|| Box::<str>::from(model_name));
            self.metrics.request_started();
            Pending {
                metrics: self.metrics.clone(),
                start: Instant::now(),
                route,
                model_index,
                new_model,
                request_id: req.headers().get("x-request-id").cloned(),
            }
        });
        ResponseFuture {
            future: self.inner.call(req),
            pending,
        }
    }
}

/// What is known of a request before its answer.
struct Pending {
    metrics: Arc<Metrics>,
    start: Instant,
    route: RouteLabel,
    model_index: usize,
    new_model: Option<Box<str>>,
    request_id: Option<HeaderValue>,
}

pin_project! {
    /// Response future of [`Metering`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        pending: Option<Pending>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: Body<Data = Bytes>,
{
    type Output = Result<Response<MeteredBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match ready!(this.future.poll(cx)) {
            Ok(res) => res,
            Err(e) => {
                if let Some(p) = this.pending.take() {
                    p.metrics.request_abandoned();
                }
                return Poll::Ready(Err(e));
            }
        };
        let Some(p) = this.pending.take() else {
            return Poll::Ready(Ok(res.map(|inner| Observed::new(inner, None))));
        };
        let status = res.status();
        let ext = res.extensions();
        let kind = ext.get::<ErrorKind>().map(|k| k.0);
        match kind {
            Some(kind) => p
                .metrics
                .gateway_error(kind, ext.get::<ErrorReason>().map(|r| r.0)),
            None if status == StatusCode::TOO_MANY_REQUESTS => {
                p.metrics.rate_limited(Limiter::Upstream)
            }
            None => {}
        }
        let streamed = p.route == RouteLabel::Stream
            || res
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let record = RequestRecord {
            key: ext
                .get::<SelectedKey>()
                .map(|k| (k.0.id.clone(), k.0.slot())),
            status,
            kind,
            streamed,
            ttfb: None,
            error_body: (status.is_client_error() || status.is_server_error()).then(Vec::new),
            ended: None,
            p,
        };
        Poll::Ready(Ok(res.map(|inner| Observed::new(inner, Some(record)))))
    }
}

/// Everything recorded about one request; recorded when dropped, i.e. when the body is done.
pub struct RequestRecord {
    p: Pending,
    /// The upstream key of the last attempt: its id and state slot.
    key: Option<(Arc<str>, Option<Slot>)>,
    status: StatusCode,
    kind: Option<&'static str>,
    streamed: bool,
    ttfb: Option<Duration>,
    /// The start of an error answer, for its message in `/errors`.
    error_body: Option<Vec<u8>>,
    /// How the body ended; `None` while it has not (the client went away first).
    ended: Option<BodyEnd>,
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let head = Outcome::of(self.status, self.kind);
        let outcome = match (head, self.ended) {
            (Outcome::Success, Some(BodyEnd::Complete)) => Outcome::Success,
            (Outcome::Success, Some(BodyEnd::Error)) => Outcome::StreamError,
            (Outcome::Success, None) => Outcome::ClientGone,
            (Outcome::RateLimited | Outcome::ClientError, Some(BodyEnd::Error)) => {
                Outcome::StreamError
            }
            (other, _) => other,
        };
        let m = &self.p.metrics;
        let model = match &self.p.new_model {
            Some(name) if outcome == Outcome::Success => m.admit_model(name),
            _ => self.p.model_index,
        };
        let duration = self.p.start.elapsed();
        m.request_finished(&Finished {
            route: self.p.route,
            model,
            status: self.status,
            outcome,
            duration,
            ttfb: self.ttfb,
            key_id: self.key.as_ref().map(|(id, _)| id.clone()),
            key_slot: self.key.as_ref().and_then(|(_, slot)| *slot),
        });
        if self.error_body.is_some() || outcome == Outcome::StreamError {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let (kind, message) = if outcome == Outcome::StreamError {
                (
                    "stream_error",
                    "the answer broke off before its end".to_owned(),
                )
            } else {
                (
                    self.kind.unwrap_or("upstream"),
                    message_of(self.error_body.as_deref().unwrap_or_default()),
                )
            };
            m.error_log().record(ErrorEntry {
                time: format!(
                    "{}.{:03}Z",
                    crate::time::utc_time(now.as_secs()).trim_end_matches('Z'),
                    now.subsec_millis()
                ),
                unix_time: now.as_secs(),
                request_id: self
                    .p
                    .request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                route: self.p.route.as_str(),
                key_id: self.key.as_ref().map(|(id, _)| id.clone()),
                status: self.status.as_u16(),
                kind,
                message,
            });
        }
    }
}

/// A response body that records its request when it is done.
pub type MeteredBody<B> = Observed<B, RequestRecord>;

impl BodyObserver for RequestRecord {
    fn on_data(&mut self, d: &Bytes) {
        if self.streamed && self.ttfb.is_none() && !d.is_empty() {
            self.ttfb = Some(self.p.start.elapsed());
        }
        if let Some(buf) = &mut self.error_body {
            let room = ERROR_BODY_BYTES.saturating_sub(buf.len());
            buf.extend_from_slice(&d[..d.len().min(room)]);
        }
    }

    fn on_end(&mut self, end: BodyEnd) {
        self.ended = Some(end);
    }
}
