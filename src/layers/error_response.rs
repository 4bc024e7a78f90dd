//! Error response: the one place a [`GatewayError`] becomes an HTTP response.
//!
//! Sits above every fallible layer, so everything inside it returns `Result<_, GatewayError>` and
//! nothing outside it sees an error. The response is Google-shaped (see [`crate::error`]) and
//! carries an [`ErrorKind`](crate::error::ErrorKind) extension for the access log and metrics.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::GatewayBody;
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
        ResponseFuture {
            future: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Response future of [`ErrorResponse`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<GatewayBody>, GatewayError>>,
{
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(self.project().future.poll(cx));
        Poll::Ready(Ok(res.unwrap_or_else(|e| {
            if e.status().is_server_error() {
                tracing::warn!(kind = e.kind(), error = %e, "request failed");
            }
            e.into_response()
        })))
    }
}
