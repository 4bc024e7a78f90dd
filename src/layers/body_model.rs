//! Body model: the model a request names in its JSON body rather than in its path — the
//! OpenAI-compatible surface (`{"model": "gemini-2.5-flash", …}`) and cached-content creation
//! (`{"model": "models/gemini-2.5-flash", …}`).
//!
//! Sits right after buffer body (it needs the body) and before affinity, failover and key balance:
//! it completes the [`Route`]'s model so per-model key limits and rests apply to these requests
//! too, and checks the model against the client's token (`models` claim) like the auth layer does
//! for path models — 403 `PERMISSION_DENIED` when the token does not allow it.

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request};
use serde::Deserialize;
use tower::{Layer, Service};

use super::ShortCircuit;
use crate::auth::Client;
use crate::error::GatewayError;
use crate::route::Route;

/// Applies [`BodyModel`].
#[derive(Debug, Clone, Default)]
pub struct BodyModelLayer;

impl BodyModelLayer {
    /// Checks the body's model for every buffered request (no settings of its own).
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for BodyModelLayer {
    type Service = BodyModel<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyModel { inner }
    }
}

/// Completes the route's model from the body, and checks it against the client's token.
#[derive(Debug, Clone)]
pub struct BodyModel<S> {
    inner: S,
}

#[derive(Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
}

/// The top-level `model` of a JSON body, without a `models/` prefix.
fn model_in(body: &[u8]) -> Option<String> {
    let m = serde_json::from_slice::<ModelOnly<'_>>(body).ok()?.model?;
    let m = m.strip_prefix("models/").unwrap_or(&m);
    (!m.is_empty()).then(|| m.to_owned())
}

impl<S> Service<Request<Bytes>> for BodyModel<S>
where
    S: Service<Request<Bytes>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = ShortCircuit<S::Future, Result<S::Response, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let needs_model = req.method() == Method::POST
            && req
                .extensions()
                .get::<Route>()
                .is_some_and(|r| r.model.is_none());
        if needs_model && let Some(model) = model_in(req.body()) {
            if let Some(client) = req.extensions().get::<Client>()
                && !client.allows_model(&model)
            {
                return ShortCircuit::ready(Err(GatewayError::PermissionDenied(format!(
                    "this token does not allow the model {model:?}"
                ))));
            }
            if let Some(route) = req.extensions_mut().get_mut::<Route>() {
                route.model = Some(Arc::from(model));
            }
        }
        ShortCircuit::inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_top_level_model_only() {
        assert_eq!(
            model_in(br#"{"model":"gemini-2.5-flash","messages":[]}"#).as_deref(),
            Some("gemini-2.5-flash")
        );
        assert_eq!(
            model_in(br#"{"model":"models/gemini-2.5-pro","contents":[]}"#).as_deref(),
            Some("gemini-2.5-pro")
        );
        assert_eq!(
            model_in(br#"{"messages":[{"content":"{\"model\":\"x\"}"}],"tools":[{"model":"y"}]}"#),
            None
        );
        assert_eq!(model_in(b"not json"), None);
        assert_eq!(model_in(br#"{"model":""}"#), None);
    }
}
