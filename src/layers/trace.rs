//! Trace: a server span per request, exported over OTLP (see [`crate::trace`]), when
//! `metrics.otlp.enabled`.
//!
//! Sits right inside the metrics layer and outside the error-response layer, so the span carries
//! the final status of every request, the gateway's own errors included. It continues the trace of
//! the client's W3C `traceparent`, and inserts the span as a [`RequestTrace`] request extension
//! for the layers inside it (client, attempt spans, token counts). The span ends when the
//! response body ends, so a stream's span lasts as long as the stream.
//!
//! Span attributes: `http.request.method`, `url.path`, `http.route` (the route label),
//! `gen_ai.provider.name`, `gen_ai.request.model`, `gem_proxy.request_id`,
//! `http.response.status_code`, `gem_proxy.key_id`, `error.type` (the gateway's error kind),
//! `enduser.id` (client-stats layer), `gen_ai.usage.*` (usage layer).
//!
//! With tracing off the layer passes requests through untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{BodyEnd, BodyObserver, Observed};
use crate::error::ErrorKind;
use crate::gateway::Gateway;
use crate::key_pool::SelectedKey;
use crate::route::Route;
use crate::trace::{RequestTrace, Tracing};

/// Applies [`Trace`].
#[derive(Debug, Clone)]
pub struct TraceLayer {
    tracing: Option<Arc<Tracing>>,
    gateway: Arc<Gateway>,
}

impl TraceLayer {
    /// Traces into the gateway's tracer, if it has one.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self {
            tracing: gateway.tracing().cloned(),
            gateway,
        }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            inner,
            tracing: self.tracing.clone(),
            gateway: self.gateway.clone(),
        }
    }
}

/// Starts a span per request and ends it with the answer.
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    tracing: Option<Arc<Tracing>>,
    /// For the model aliases the route is parsed with.
    gateway: Arc<Gateway>,
}

impl<S, B, ResB> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<TracedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let trace = self.tracing.as_ref().map(|t| {
            Route::ensure(&mut req, &self.gateway.live().config.gemini.models);
            let parsed = req.extensions().get::<Route>();
            let route = Route::label_of(parsed);
            let model = parsed.and_then(Route::labelled_model);
            let path = req.uri().path();
            let mut attributes = vec![
                KeyValue::new("http.request.method", req.method().as_str().to_owned()),
                KeyValue::new("url.path", path.to_owned()),
                KeyValue::new("http.route", route.as_str()),
                KeyValue::new("gen_ai.provider.name", "gcp.gemini"),
            ];
            if let Some(model) = model {
                attributes.push(KeyValue::new("gen_ai.request.model", model.to_owned()));
            }
            if let Some(id) = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
            {
                attributes.push(KeyValue::new("gem_proxy.request_id", id.to_owned()));
            }
            let name = format!("{} {}", req.method(), route.as_str());
            let trace = t.start_request(req.headers(), name, attributes);
            req.extensions_mut().insert(trace.clone());
            trace
        });
        ResponseFuture {
            future: self.inner.call(req),
            trace,
        }
    }
}

pin_project! {
    /// Response future of [`Trace`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        trace: Option<RequestTrace>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: Body,
{
    type Output = Result<Response<TracedBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match ready!(this.future.poll(cx)) {
            Ok(res) => res,
            Err(e) => {
                if let Some(t) = this.trace.take() {
                    t.fail("no answer");
                    t.end();
                }
                return Poll::Ready(Err(e));
            }
        };
        let trace = this.trace.take().map(|t| {
            let status = res.status();
            let mut attrs = vec![KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            )];
            if let Some(key) = res.extensions().get::<SelectedKey>() {
                attrs.push(KeyValue::new("gem_proxy.key_id", key.0.id.to_string()));
            }
            if let Some(kind) = res.extensions().get::<ErrorKind>() {
                attrs.push(KeyValue::new("error.type", kind.0));
            }
            t.set(attrs);
            if status.is_server_error() {
                t.fail(status.to_string());
            }
            SpanGuard(t)
        });
        Poll::Ready(Ok(res.map(|inner| Observed::new(inner, trace))))
    }
}

/// Ends the request's span when dropped.
pub struct SpanGuard(RequestTrace);

impl Drop for SpanGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that ends its request's span when it ends.
pub type TracedBody<B> = Observed<B, SpanGuard>;

impl BodyObserver for SpanGuard {
    fn on_end(&mut self, end: BodyEnd) {
        if end == BodyEnd::Error {
            self.0.fail("the answer broke off");
        }
    }
}
