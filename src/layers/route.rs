//! Route: which API a request is for, and which model.
//!
//! Sits after the error-response layer and before everything that needs to know the API (auth's
//! model policy, the key pool's per-model state, the upstream client's choice of credential
//! header). Makes sure the request has its [`Route`] (metrics or trace above parse it first when
//! they are on: one parse per request). Paths outside `/v1/`, `/v1beta/`, `/v1alpha/`, `/upload/` and `/download/` are
//! answered 404 `NOT_FOUND` in Google's shape without reading the body.
//!
//! Unknown paths under a known version pass through: Google adds endpoints often.
//!
//! A model name longer than [`MAX_MODEL_NAME_BYTES`] is answered 400 `INVALID_ARGUMENT`: no such
//! model exists, and made-up names must not reach the per-model key state.
//!
//! A model alias in the path (`gemini.models.aliases`) is replaced by its real model here (or in
//! metrics or trace above, whichever parses the route first), so the token policy, key limits,
//! rests, metrics and the upstream all see the real model.
//!
//! A path the gateway cannot classify with certainty ([`Route::ambiguity`]) is refused with 400
//! `INVALID_ARGUMENT` rather than forwarded: dot segments
//! (`models/gemini-2.5-flash/../gemini-2.5-pro:…`, also as `%2e%2e`), encoded slashes or
//! backslashes (`%2F`, `%5C`, `\`), empty segments, and model names with characters no Google
//! model has. Google (or a proxy before it) may normalise such a path into another model than
//! the one the token's `models` policy was checked against.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::ShortCircuit;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::route::{AmbiguousPath, MAX_MODEL_NAME_BYTES, Route};

/// Applies [`Routing`].
#[derive(Debug, Clone)]
pub struct RouteLayer {
    gateway: Arc<Gateway>,
}

impl RouteLayer {
    /// Classifies every request, with the live config's model aliases.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Routing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Routing {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Makes sure the request has its [`Route`] (parsed here unless a layer above did), or answers
/// 404.
#[derive(Debug, Clone)]
pub struct Routing<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S, B> Service<Request<B>> for Routing<S>
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
        if let Some(AmbiguousPath(why)) = Route::ambiguity(req.uri().path()) {
            return ShortCircuit::ready(Err(GatewayError::InvalidArgument(format!(
                "{why}; the gateway does not forward paths it cannot classify with certainty"
            ))));
        }
        Route::ensure(&mut req, &self.gateway.live().config.gemini.models);
        match req.extensions().get::<Route>() {
            Some(route)
                if route
                    .model
                    .as_ref()
                    .is_some_and(|m| m.len() > MAX_MODEL_NAME_BYTES) =>
            {
                ShortCircuit::ready(Err(GatewayError::ModelNameTooLong {
                    limit: MAX_MODEL_NAME_BYTES,
                }))
            }
            Some(_) => ShortCircuit::inner(self.inner.call(req)),
            None => ShortCircuit::ready(Err(GatewayError::NotFound {
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
            })),
        }
    }
}
