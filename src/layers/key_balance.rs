//! Key balance: chooses the upstream key for one attempt and inserts it as
//! [`SelectedKey`](crate::key_pool::SelectedKey).
//!
//! Sits inside failover (each attempt picks again, skipping the keys already tried, listed in
//! [`TriedKeys`]) and above usage and the upstream client. A request bound to a key by affinity
//! ([`BoundKey`]: a file or cached content that only that key can see) goes to that key.
//! Otherwise [`KeyPool::pick_for`](crate::key_pool::KeyPool::pick_for): smooth weighted
//! round-robin over the keys with headroom for the request's model that can serve its route (a
//! Vertex AI member only the routes Vertex has, and only with a valid token).
//!
//! Fallbacks (`gemini.models.fallbacks`): when every key is resting or at its limit for the
//! request's model, the next model of its list that the client's token allows and some key has
//! headroom for serves it instead — the path's (or the OpenAI body's) model and the route's model
//! are switched, so limits, rests and usage count the model that served, and the answer carries
//! `x-gem-proxy-model: <model>`. Counted in `gem_proxy_model_fallbacks_total`.
//!
//! Errors: 429 `RESOURCE_EXHAUSTED` with `Retry-After` (the earliest time a key has headroom) when
//! every usable key is at its limit or resting; 503 `UNAVAILABLE` when no key is usable at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::ShortCircuit;
use crate::auth::Client;
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::key_pool::{BoundKey, PickError, SelectedKey, TriedKeys};
use crate::route::{Route, RouteLabel, with_body_model, with_path_model};

/// The response header naming the model that served a request in place of the one it asked for.
pub const X_GEM_PROXY_MODEL: HeaderName = HeaderName::from_static("x-gem-proxy-model");

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

impl<S> Service<Request<Bytes>> for KeyBalance<S>
where
    S: Service<Request<Bytes>, Response = Response<GatewayBody>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = ShortCircuit<ServedBy<S::Future>, Result<S::Response, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let live = self.gateway.live();
        let store = self.gateway.store();
        let now = Instant::now();
        let ext = req.extensions();
        let route = ext.get::<Route>();
        let model = route.and_then(|r| r.model.as_deref()).unwrap_or("");
        // A body naming a file or cached content is routed like those resources: only members
        // of the Developer API can serve it (never a Vertex member).
        let as_resource;
        let route = match route {
            Some(r)
                if matches!(
                    r.label,
                    RouteLabel::Generate
                        | RouteLabel::Stream
                        | RouteLabel::CountTokens
                        | RouteLabel::OpenAiChat
                ) && crate::vertex::names_developer_resources(req.body()) =>
            {
                as_resource = Route {
                    label: RouteLabel::Files,
                    ..r.clone()
                };
                Some(&as_resource)
            }
            other => other,
        };
        let bound = ext.get::<BoundKey>().is_some();
        let mut picked = match ext.get::<BoundKey>() {
            // A member that cannot serve the route (a Vertex member asked for its files) has
            // nothing bound to it.
            Some(BoundKey(id)) => live.keys.pick_bound(store, id, model, now).and_then(|k| {
                if k.can_serve(route, now) {
                    Ok(k)
                } else {
                    Err(PickError::NoUsableKey)
                }
            }),
            None => {
                let tried = ext.get::<TriedKeys>().map_or(&[][..], |t| &t.0[..]);
                live.keys.pick_for(store, route, model, tried, now)
            }
        };
        // Every key resting (or at its limit) for the model: the next of its fallbacks the
        // client may use and some key has headroom for. A request bound to a key stays on it.
        let mut served_by = None;
        if matches!(picked, Err(PickError::Exhausted { .. })) && !bound {
            let client = ext.get::<Client>();
            for fallback in live.config.gemini.models.fallbacks_of(model) {
                if client.is_some_and(|c| !c.allows_model(fallback)) {
                    continue;
                }
                if let Ok(key) = live.keys.pick_for(store, route, fallback, &[], now) {
                    picked = Ok(key);
                    served_by = Some(fallback.as_str());
                    break;
                }
            }
        }
        let header = match served_by {
            Some(fallback) => match switch_model(&mut req, fallback) {
                Ok(header) => {
                    self.gateway.metrics().model_fallback();
                    Some(header)
                }
                Err(e) => return ShortCircuit::ready(Err(e)),
            },
            None => None,
        };
        match picked {
            Ok(key) => {
                req.extensions_mut().insert(SelectedKey(key));
                ShortCircuit::inner(ServedBy {
                    future: self.inner.call(req),
                    header,
                })
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

/// Points the request at `model`: the route, the path's model (native API), the body's `model`
/// (OpenAI-compatible surface, cached-content creation). The header value naming it.
fn switch_model(req: &mut Request<Bytes>, model: &str) -> Result<HeaderValue, GatewayError> {
    let header = HeaderValue::from_str(model)
        .map_err(|_| GatewayError::Internal("a fallback model is not a header value"))?;
    if let Some(uri) = with_path_model(req.uri(), model) {
        *req.uri_mut() = uri;
    } else if let Some(body) = with_body_model(req.body(), model) {
        *req.body_mut() = body;
    }
    if let Some(route) = req.extensions_mut().get_mut::<Route>() {
        route.model = Some(Arc::from(model));
    }
    Ok(header)
}

pin_project! {
    /// The inner service's answer, with `x-gem-proxy-model` set when a fallback model served it.
    pub struct ServedBy<F> {
        #[pin]
        future: F,
        header: Option<HeaderValue>,
    }
}

impl<F> Future for ServedBy<F>
where
    F: Future<Output = Result<Response<GatewayBody>, GatewayError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.future.poll(cx));
        if let (Ok(res), Some(value)) = (&mut out, this.header.take()) {
            res.headers_mut().insert(X_GEM_PROXY_MODEL, value);
        }
        Poll::Ready(out)
    }
}
