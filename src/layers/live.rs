//! Live: decides on a Live API session (WebSocket upgrade) before anything is upgraded, hands it
//! to [`crate::live`], and binds the ephemeral tokens minted through the gateway to the key that
//! minted them.
//!
//! Sits right inside client limit (a session counts as one request against the client's RPM
//! there, before anything here). A Live session goes no further down the stack: the key is
//! picked once the session's `setup` names its model ([`crate::live`]), so buffer body,
//! failover, key balance, usage and upstream never see it. Every other request passes
//! untouched, except `POST …/auth_tokens`.
//!
//! For a request on a Live route ([`Api::Live`]), before the upgrade:
//! - not a WebSocket upgrade (`GET`, `Upgrade: websocket`, version 13, a key): 400;
//! - the token's `live_sessions` claim: that many sessions of the client at once, the next one
//!   429 `RESOURCE_EXHAUSTED` (a [`ClientSlot`] extension holds the place for the session);
//! - no key that could carry a session at all (every key invalid or disabled): 503;
//! - `gemini.live.max_sessions_per_key`: 429 when every such key carries that many sessions;
//! - the ephemeral-token endpoint (`…Constrained`): a token the gateway saw minted goes to the
//!   key that minted it ([`BoundKey`]); 503 when that key is unusable, 429 when it is full.
//!
//! `POST /v1alpha/auth_tokens` (minting an ephemeral token): a successful answer's `name`
//! (`auth_tokens/…`) is bound ([`KeyStateStore::bind`](crate::key_pool::KeyStateStore::bind))
//! to the key that answered and the client that asked, for a day (the longest a token lives).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, Either};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use tower::{Layer, Service};

use super::ShortCircuit;
use crate::auth::Client;
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::key_pool::store::Binding;
use crate::key_pool::{Admission, BoundKey, SelectedKey, UpstreamKey};
use crate::live::{ephemeral_token, not_an_upgrade};
use crate::live_sessions::ClientSlot;
use crate::route::{Api, Route};

/// How long a minted ephemeral token stays bound (Google's tokens live at most 20 hours).
const TOKEN_BINDING: Duration = Duration::from_secs(24 * 3600);
/// The largest token answer read.
const MAX_TOKEN_ANSWER_BYTES: usize = 64 * 1024;

/// Applies [`LiveSessionLimit`].
#[derive(Debug, Clone)]
pub struct LiveLayer {
    gateway: Arc<Gateway>,
}

impl LiveLayer {
    /// Decides from the gateway's live config and its open sessions.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for LiveLayer {
    type Service = LiveSessionLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LiveSessionLimit {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Checks Live sessions before their upgrade; binds minted ephemeral tokens.
#[derive(Debug, Clone)]
pub struct LiveSessionLimit<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S> LiveSessionLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

type Answer = Result<Response<GatewayBody>, GatewayError>;

impl<S, B> Service<Request<B>> for LiveSessionLimit<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = ShortCircuit<Either<S::Future, BoxFuture<'static, Answer>>, Answer>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(route) = req.extensions().get::<Route>() else {
            return ShortCircuit::inner(Either::Left(self.inner.call(req)));
        };
        if route.api == Api::Live {
            let constrained = route.is_constrained_live(req.uri().path());
            if let Err(e) = self.admit(&mut req, constrained) {
                return ShortCircuit::ready(Err(e));
            }
            // The session is answered here: the layers below (and their key pick) never see it.
            let (parts, _body) = req.into_parts();
            let gateway = self.gateway.clone();
            return ShortCircuit::inner(Either::Right(Box::pin(crate::live::open(gateway, parts))));
        }
        if req.method() == Method::POST && req.uri().path().ends_with("/auth_tokens") {
            let owner = req.extensions().get::<Client>().map(|c| c.id.clone());
            let gateway = self.gateway.clone();
            let answer = self.inner.call(req);
            return ShortCircuit::inner(Either::Right(Box::pin(async move {
                learn(&gateway, answer.await?, owner).await
            })));
        }
        ShortCircuit::inner(Either::Left(self.inner.call(req)))
    }
}

impl<S> LiveSessionLimit<S> {
    /// The checks that do not depend on the session's model; what the session needs from them
    /// goes into `req`'s extensions.
    fn admit<B>(&self, req: &mut Request<B>, constrained: bool) -> Result<(), GatewayError> {
        if let Some(why) = not_an_upgrade(req.method(), req.headers()) {
            return Err(GatewayError::InvalidArgument(why.into()));
        }
        let sessions = self.gateway.live_sessions();
        if let Some(client) = req.extensions().get::<Client>()
            && let Some(max) = client.live_sessions.filter(|n| *n > 0)
        {
            let slot =
                sessions
                    .try_client(&client.id, max)
                    .ok_or(GatewayError::TooManySessions(
                        "this token's live_sessions limit of open Live sessions is reached",
                    ))?;
            req.extensions_mut().insert(ClientSlot(Arc::new(slot)));
        }
        let live = self.gateway.live();
        let store = self.gateway.store();
        let now = tokio::time::Instant::now();
        let route = req.extensions().get::<Route>();
        let usable = |k: &UpstreamKey| {
            live.keys.is_enabled(&k.id)
                && k.can_serve(route, now)
                && store.admit(&k.id, "", &k.limits, now, false) != Admission::Never
        };
        if constrained
            && let Some(token) = ephemeral_token(req.headers(), req.uri())
            && let Some(binding) = store.bound(token, now)
        {
            // A token the gateway saw minted goes to the key that minted it, or nowhere.
            if !live.keys.keys().any(|k| k.id == binding.key && usable(k)) {
                return Err(GatewayError::NoKey);
            }
            let max = live.config.gemini.live.max_sessions_per_key;
            if sessions.full_keys(max).contains(&binding.key) {
                return Err(GatewayError::TooManySessions(
                    "the key that minted this ephemeral token carries \
                     gemini.live.max_sessions_per_key Live sessions",
                ));
            }
            req.extensions_mut().insert(BoundKey(binding.key));
            return Ok(());
        }
        let candidates: Vec<&Arc<UpstreamKey>> = live.keys.keys().filter(|k| usable(k)).collect();
        if candidates.is_empty() {
            return Err(GatewayError::NoKey);
        }
        let max = live.config.gemini.live.max_sessions_per_key;
        let full = sessions.full_keys(max);
        if candidates.iter().all(|k| full.contains(&k.id)) {
            return Err(GatewayError::TooManySessions(
                "every upstream key carries gemini.live.max_sessions_per_key Live sessions",
            ));
        }
        Ok(())
    }
}

/// Binds the token in a successful `auth_tokens` answer to the key that minted it.
async fn learn(gateway: &Gateway, res: Response<GatewayBody>, owner: Option<Arc<str>>) -> Answer {
    let Some(key) = res.extensions().get::<SelectedKey>().cloned() else {
        return Ok(res);
    };
    if !res.status().is_success() {
        return Ok(res);
    }
    let (parts, body) = res.into_parts();
    let bytes = match Limited::new(body, MAX_TOKEN_ANSWER_BYTES).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(GatewayError::UpstreamUnavailable {
                key: key.0.id.clone(),
            });
        }
    };
    #[derive(serde::Deserialize)]
    struct Minted {
        name: String,
    }
    if let Ok(Minted { name }) = serde_json::from_slice(&bytes)
        && name.starts_with("auth_tokens/")
    {
        let now = tokio::time::Instant::now();
        gateway.store().bind(
            &name,
            Binding {
                key: key.0.id.clone(),
                owner,
            },
            crate::deadline::after(now, TOKEN_BINDING),
        );
    }
    Ok(Response::from_parts(parts, GatewayBody::full(bytes)))
}
