//! Buffer body: reads the request body into memory, up to `server.max_request_body_bytes`.
//!
//! Sits after route (a 404 never reads a body) and before failover, which replays the buffered
//! request on another key. Larger bodies are answered 413 (at once when `Content-Length` says so,
//! otherwise as soon as the limit is crossed); a body that does not arrive within
//! `server.request_body_timeout_seconds` is answered 408; a body the client abandons half way is a
//! 400 (which the client will not see: it has gone).
//!
//! All bodies being buffered at once share one budget, `server.max_buffered_body_bytes`: a
//! request is answered 503 `UNAVAILABLE` with `Retry-After` when its body (its declared
//! `Content-Length` up front, then every chunk as it arrives) would go over it, so many large
//! bodies at once (many connections, many HTTP/2 streams) cannot exhaust memory. A body's share
//! is held until the request is over ([`BufferedShare`] rides along as a request extension).
//!
//! Response bodies are never buffered: they stream through untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Request, header};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::gateway::Gateway;

/// How long a client refused for the body budget is asked to wait.
const BUDGET_RETRY_AFTER_SECONDS: u64 = 1;

/// The bytes of request bodies buffered right now, across every request of one stack.
#[derive(Debug, Default)]
pub struct BodyBudget {
    used: AtomicUsize,
}

impl BodyBudget {
    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// A share of `bytes`, if that fits under `limit` with everything else held.
    fn share(self: &Arc<Self>, bytes: usize, limit: usize) -> Option<BufferedShare> {
        let mut share = BufferedShare {
            budget: self.clone(),
            held: 0,
        };
        share.grow_to(bytes, limit).then_some(share)
    }
}

/// One request's share of the [`BodyBudget`], given back when dropped. A request extension from
/// buffer body on, so the share lives as long as the buffered body may (replays included).
#[derive(Debug)]
pub struct BufferedShare {
    budget: Arc<BodyBudget>,
    held: usize,
}

impl BufferedShare {
    /// Grows the share to `total` bytes if that fits under `limit`.
    fn grow_to(&mut self, total: usize, limit: usize) -> bool {
        let Some(extra) = total.checked_sub(self.held).filter(|&n| n > 0) else {
            return true;
        };
        let grown = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(extra).filter(|&t| t <= limit)
            })
            .is_ok();
        if grown {
            self.held = total;
        }
        grown
    }
}

impl Drop for BufferedShare {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// Applies [`BufferBody`].
#[derive(Debug, Clone)]
pub struct BufferBodyLayer {
    gateway: Arc<Gateway>,
    budget: Arc<BodyBudget>,
}

impl BufferBodyLayer {
    /// Limits come from the gateway's live config, so they follow reloads. Every service this
    /// layer makes shares one [`BodyBudget`].
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self {
            gateway,
            budget: Arc::default(),
        }
    }

    /// The budget its services share.
    pub fn budget(&self) -> &Arc<BodyBudget> {
        &self.budget
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            gateway: self.gateway.clone(),
            budget: self.budget.clone(),
        }
    }
}

/// Buffers the request body, then calls the inner service with `Request<Bytes>`.
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    gateway: Arc<Gateway>,
    budget: Arc<BodyBudget>,
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
        let (limit, budget_limit, timeout) = {
            let live = self.gateway.live();
            let s = &live.config.server;
            (
                s.max_request_body_bytes,
                s.max_buffered_body_bytes,
                s.request_body_timeout(),
            )
        };
        let budget = self.budget.clone();
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
            let over_budget = || GatewayError::BodyBudgetExhausted {
                retry_after_seconds: BUDGET_RETRY_AFTER_SECONDS,
            };
            // The declared length is taken up front, so a crowd of slow senders cannot all
            // start.
            let declared = declared.map_or(0, |n| n as usize);
            let mut share = budget
                .share(declared, budget_limit)
                .ok_or_else(over_budget)?;
            let (mut parts, body) = req.into_parts();
            let collect = async {
                let mut body = std::pin::pin!(Limited::new(body, limit));
                let mut buf = BytesMut::with_capacity(declared.min(limit));
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| {
                        if e.is::<LengthLimitError>() {
                            GatewayError::PayloadTooLarge { limit }
                        } else {
                            GatewayError::BodyRead(e.to_string())
                        }
                    })?;
                    if let Ok(data) = frame.into_data() {
                        if !share.grow_to(buf.len() + data.len(), budget_limit) {
                            return Err(over_budget());
                        }
                        buf.extend_from_slice(&data);
                    }
                }
                Ok(buf.freeze())
            };
            let bytes = tokio::time::timeout(timeout, collect)
                .await
                .map_err(|_| GatewayError::BodyTimeout(timeout.as_secs()))??;
            parts.extensions.insert(Arc::new(share));
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}
