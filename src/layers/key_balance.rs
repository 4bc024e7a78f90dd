//! Key balance: chooses the upstream key for one attempt and inserts it as
//! [`SelectedKey`](crate::key_pool::SelectedKey).
//!
//! Sits inside failover (each attempt picks again, skipping the keys already tried, listed in
//! [`TriedKeys`]) and above usage and the upstream client. A request bound to a key by affinity
//! ([`BoundKey`]: a file or cached content that only that key can see) goes to that key.
//! Otherwise [`KeyPool::pick`](crate::key_pool::KeyPool::pick): smooth weighted round-robin over
//! the keys with headroom for the request's model.
//!
//! Errors: 429 `RESOURCE_EXHAUSTED` with `Retry-After` (the earliest time a key has headroom) when
//! every usable key is at its limit or resting; 503 `UNAVAILABLE` when no key is usable at all.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::ShortCircuit;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::key_pool::{BoundKey, PickError, SelectedKey, TriedKeys};
use crate::route::Route;

/// Applies [`KeyBalance`].
#[derive(Debug, Clone)]
pub struct KeyBalanceLayer {
    gateway: Arc<Gateway>,
}

impl KeyBalanceLayer {
    /// Picks from the gateway's live key pool.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for KeyBalanceLayer {
    type Service = KeyBalance<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyBalance {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Inserts the key for this attempt.
#[derive(Debug, Clone)]
pub struct KeyBalance<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S, B> Service<Request<B>> for KeyBalance<S>
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
        let live = self.gateway.live();
        let store = self.gateway.store();
        let now = Instant::now();
        let ext = req.extensions();
        let model = ext
            .get::<Route>()
            .and_then(|r| r.model.as_deref())
            .unwrap_or("");
        let picked = match ext.get::<BoundKey>() {
            Some(BoundKey(id)) => live.keys.pick_bound(store, id, model, now),
            None => {
                let tried = ext.get::<TriedKeys>().map_or(&[][..], |t| &t.0[..]);
                live.keys.pick(store, model, tried, now)
            }
        };
        match picked {
            Ok(key) => {
                req.extensions_mut().insert(SelectedKey(key));
                ShortCircuit::inner(self.inner.call(req))
            }
            Err(PickError::Exhausted { retry_after }) => {
                ShortCircuit::ready(Err(GatewayError::KeysExhausted {
                    retry_after_seconds: retry_after.as_secs_f64().ceil().max(1.0) as u64,
                }))
            }
            Err(PickError::NoUsableKey) => ShortCircuit::ready(Err(GatewayError::NoKey)),
        }
    }
}
