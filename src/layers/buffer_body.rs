//! Buffer body: reads the request body into memory, up to `server.max_request_body_bytes`.
//!
//! Sits after route (a 404 never reads a body) and before failover, which replays the buffered
//! request on another key. Larger bodies are answered 413 (at once when `Content-Length` says so,
//! otherwise as soon as the limit is crossed); a body that does not arrive within
//! `server.request_body_timeout_seconds` is answered 408; a body the client abandons half way is a
//! 400 (which the client will not see: it has gone).
//!
//! Response bodies are never buffered: they stream through untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, header};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::gateway::Gateway;

/// Applies [`BufferBody`].
#[derive(Debug, Clone)]
pub struct BufferBodyLayer {
    gateway: Arc<Gateway>,
}

impl BufferBodyLayer {
    /// Limits come from the gateway's live config, so they follow reloads.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Buffers the request body, then calls the inner service with `Request<Bytes>`.
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<Bytes>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, GatewayError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (limit, timeout) = {
            let live = self.gateway.live();
            let s = &live.config.server;
            (s.max_request_body_bytes, s.request_body_timeout())
        };
        // The clone is not ready; the instance polled ready is the one we call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(GatewayError::PayloadTooLarge { limit });
            }
            let (parts, body) = req.into_parts();
            let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
                .await
                .map_err(|_| GatewayError::BodyTimeout(timeout.as_secs()))?;
            let bytes = match collected {
                Ok(c) => c.to_bytes(),
                Err(e) if e.is::<LengthLimitError>() => {
                    return Err(GatewayError::PayloadTooLarge { limit });
                }
                Err(e) => return Err(GatewayError::BodyRead(e.to_string())),
            };
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}
