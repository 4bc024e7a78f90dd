//! Access log: one line per request, written when the response body ends (so a stream's line
//! carries its whole duration and size), under the target `gem_proxy::access`.
//!
//! Sits just inside the request-id layers (so it sees `x-request-id`) and outside the error
//! response layer (so it sees the gateway's own errors as statuses). Fields: method, path (never
//! the query, which may hold a `key=`), status, duration, bytes sent, upstream key id (never the
//! key), request id, how the body ended (`complete`, `error` or `client_gone`) and the gateway error
//! kind when there was one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{BodyEnd, BodyObserver, Observed};
use crate::error::ErrorKind;
use crate::key_pool::SelectedKey;

/// Applies [`AccessLog`].
#[derive(Debug, Clone, Default)]
pub struct AccessLogLayer;

impl AccessLogLayer {
    /// Writes one line per request to the `gem_proxy::access` log target.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner }
    }
}

/// Logs each request once its response body has ended.
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S, B, ResB> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: Body,
{
    type Response = Response<LoggedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Nothing to gather when the line would not be written (`log.level` above info for this
        // target, the default in production); asked per request, so a reload takes effect.
        let pending =
            tracing::enabled!(target: "gem_proxy::access", tracing::Level::INFO).then(|| Pending {
                start: Instant::now(),
                method: req.method().clone(),
                uri: req.uri().clone(),
                request_id: req.headers().get("x-request-id").cloned(),
            });
        ResponseFuture {
            future: self.inner.call(req),
            pending,
        }
    }
}

struct Pending {
    start: Instant,
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
}

pin_project! {
    /// Response future of [`AccessLog`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        pending: Option<Pending>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: Body,
{
    type Output = Result<Response<LoggedBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.future.poll(cx))?;
        let Some(p) = this.pending.take() else {
            return Poll::Ready(Ok(res.map(|inner| Observed::new(inner, None))));
        };
        let record = AccessLine {
            start: p.start,
            method: p.method,
            uri: p.uri,
            request_id: p.request_id,
            status: res.status(),
            key_id: res
                .extensions()
                .get::<SelectedKey>()
                .map(|k| k.0.id.clone()),
            error_kind: res.extensions().get::<ErrorKind>().map(|k| k.0),
            bytes: 0,
            ended: None,
        };
        Poll::Ready(Ok(res.map(|inner| Observed::new(inner, Some(record)))))
    }
}

/// Everything one access line says; written when dropped, i.e. when the body is done with.
pub struct AccessLine {
    start: Instant,
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
    status: StatusCode,
    key_id: Option<Arc<str>>,
    error_kind: Option<&'static str>,
    bytes: u64,
    /// How the body ended; `None` while it has not (the client went away first).
    ended: Option<BodyEnd>,
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        let ended = match self.ended {
            Some(BodyEnd::Complete) => "complete",
            Some(BodyEnd::Error) => "error",
            None => "client_gone",
        };
        tracing::info!(
            target: "gem_proxy::access",
            method = %self.method,
            path = self.uri.path(),
            status = self.status.as_u16(),
            duration_ms = (self.start.elapsed().as_micros() as f64) / 1000.0,
            bytes = self.bytes,
            key_id = self.key_id.as_deref().unwrap_or("-"),
            request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            ended,
            error = self.error_kind.unwrap_or("-"),
        );
    }
}

/// A response body that counts what it sends and writes the access line when it is done.
pub type LoggedBody<B> = Observed<B, AccessLine>;

impl BodyObserver for AccessLine {
    fn on_data(&mut self, data: &Bytes) {
        self.bytes += data.len() as u64;
    }

    fn on_end(&mut self, end: BodyEnd) {
        self.ended = Some(end);
    }
}
