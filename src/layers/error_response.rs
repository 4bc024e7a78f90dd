//! Error response: the one place a [`GatewayError`] becomes an HTTP response.
//!
//! Sits above every fallible layer, so everything inside it returns `Result<_, GatewayError>` and
//! nothing outside it sees an error. The response is Google-shaped (see [`crate::error`]) and
//! carries an [`ErrorKind`](crate::error::ErrorKind) extension for the access log and metrics.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderValue, Request, Response, Version, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{DRAIN_LIMIT, GatewayBody};
use crate::error::GatewayError;

/// Applies [`ErrorResponse`].
#[derive(Debug, Clone, Default)]
pub struct ErrorResponseLayer;

impl ErrorResponseLayer {
    /// Turns every [`GatewayError`] from below into Google's error shape.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse { inner }
    }
}

/// Turns the inner service's errors into Google-shaped responses.
#[derive(Debug, Clone)]
pub struct ErrorResponse<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ErrorResponse<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>, Error = GatewayError>,
{
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Inner layers are always ready; an error here would be a bug, answered on `call`.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let body_may_be_unread = req.version() < Version::HTTP_2 && body_not_drained(req.headers());
        ResponseFuture {
            future: self.inner.call(req),
            body_may_be_unread,
        }
    }
}

pin_project! {
    /// Response future of [`ErrorResponse`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        body_may_be_unread: bool,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<GatewayBody>, GatewayError>>,
{
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.future.poll(cx));
        let body_may_be_unread = *this.body_may_be_unread;
        Poll::Ready(Ok(res.unwrap_or_else(|e| {
            if e.status().is_server_error() {
                tracing::warn!(kind = e.kind(), error = %e, "request failed");
            }
            // A refused request's short body is drained (`connection::Drained`) and its
            // connection kept; one that is not (chunked, or over `DRAIN_LIMIT`) ends the
            // connection, and saying so keeps a client from sending its next request on it.
            let close = body_may_be_unread && e.refused_before_body();
            let mut res = e.into_response();
            if close {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            res
        })))
    }
}

/// Whether the request's body, if a refusal leaves it unread, stays on the wire: chunked, or a
/// `Content-Length` above [`DRAIN_LIMIT`] (a shorter one is drained and the connection kept).
fn body_not_drained(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).is_some_and(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .is_none_or(|n| n > DRAIN_LIMIT as u64)
        })
}
