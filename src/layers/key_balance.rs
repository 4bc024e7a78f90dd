//! Key select: chooses the upstream key for a request and inserts it as
//! [`SelectedKey`](crate::key_pool::SelectedKey).
//!
//! Sits right above the upstream client (and, once failover lands, inside it, so each attempt can
//! pick another key). Keys are used in turn; an empty pool is answered 503 `UNAVAILABLE`.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::ShortCircuit;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::key_pool::SelectedKey;

/// Applies [`KeySelect`].
#[derive(Debug, Clone)]
pub struct KeySelectLayer {
    gateway: Arc<Gateway>,
}

impl KeySelectLayer {
    /// Picks from the gateway's live key pool.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for KeySelectLayer {
    type Service = KeySelect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeySelect {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Inserts the key for this request.
#[derive(Debug, Clone)]
pub struct KeySelect<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S, B> Service<Request<B>> for KeySelect<S>
where
    S: Service<Request<B>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = ShortCircuit<S::Future, Result<S::Response, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let picked = self.gateway.live().keys.pick().cloned();
        match picked {
            Some(key) => {
                req.extensions_mut().insert(SelectedKey(key));
                ShortCircuit::inner(self.inner.call(req))
            }
            None => ShortCircuit::ready(Err(GatewayError::NoKey)),
        }
    }
}
