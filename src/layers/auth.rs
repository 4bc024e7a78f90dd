//! Auth: checks the client's token and inserts who the client is as a [`Client`] extension.
//!
//! Sits right after route (it needs [`Route::model`] for the model policy) and before client
//! limits and body buffering: a request without a valid token is refused before its body is read
//! and before it costs anyone's rate budget.
//!
//! - **Config:** `auth.enabled` (off: every request passes untouched and no [`Client`] is
//!   inserted), `auth.jwt_secret`, `auth.jwt_public_key_path`, `auth.jwks_url`,
//!   `auth.jwks_refresh_seconds`, `auth.issuer`, `auth.audience`, `auth.leeway_seconds`,
//!   `auth.revoked_token_ids`. Read from the live config per request, so reloads apply; the
//!   [`Verifier`] built from them lives in the config snapshot ([`Live::verifier`]).
//! - **Capabilities:** an upload or download URL the gateway handed out carries a signed
//!   capability in `key=` ([`crate::auth::capability`]); it stands in for a token on exactly
//!   the upload or download it names (`auth.capability_secret`, `auth.capability_ttl_seconds`).
//!   A token sent beside it (the Node SDK does) must be the same client's. A capability dies
//!   with the token it was earned with: once that token's `jti` is in `auth.revoked_token_ids`
//!   (revoked here or on another replica, which shares the change as a config reload) the
//!   capability is refused too.
//! - **Errors:** 401 `UNAUTHENTICATED` saying what is wrong with the token or capability (never
//!   repeating it); 403 `PERMISSION_DENIED` when the token's `models` claim does not allow the
//!   model in the path, or a capability is used for another resource or beside another client's
//!   token; 503 `UNAVAILABLE` while an identity provider's keys (JWKS) have not been fetched yet.
//!
//! The token itself is left in the request: the upstream client strips every client credential.
//! It is never logged (the sensitive-headers layer hides the headers; the access log omits the
//! query).
//!
//! On the Live API's ephemeral-token endpoint, an ephemeral token minted through the gateway
//! (bound by the Live layer, [`crate::layers::live`]) stands for the client that minted it.
//!
//! The model policy applies here to the model named in the path. The OpenAI-compatible surface
//! names its model in the body, which is not read here: the body-model layer
//! ([`crate::layers::body_model`]) checks that one once the body is buffered.
//!
//! ```
//! # use std::sync::Arc;
//! # use gem_proxy::{config::ConfigLoader, gateway::{Gateway, Live}};
//! # use gem_proxy::layers::{auth::AuthLayer, route::RouteLayer};
//! # let config = ConfigLoader::default().load_str("gemini: { api_keys: [{ id: a, key: k }] }").unwrap();
//! # let gateway = Gateway::new(Live::build(config).unwrap());
//! # let inner = tower::service_fn(|_req: http::Request<()>| async {
//! #     Ok::<_, gem_proxy::error::GatewayError>(http::Response::new(()))
//! # });
//! let service = tower::ServiceBuilder::new()
//!     .layer(RouteLayer::new(gateway.clone()))
//!     .layer(AuthLayer::new(gateway))
//!     .service(inner);
//! # let _ = service;
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::ShortCircuit;
use crate::auth::{AuthFailure, Client, capability, token_from_request, unix_now};
use crate::error::GatewayError;
use crate::gateway::{Gateway, Live};
use crate::route::Route;

/// Applies [`Auth`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    gateway: Arc<Gateway>,
}

impl AuthLayer {
    /// Checks tokens against the gateway's live `auth` config (key material is loaded, and a
    /// JWKS fetch started, when the config snapshot is built).
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// Authenticates each request and inserts its [`Client`], or answers 401/403/503.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S> Auth<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for Auth<S>
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
        if !live.config.auth.enabled {
            return ShortCircuit::inner(self.inner.call(req));
        }
        let client = match ephemeral_client(&self.gateway, &req) {
            Some(client) => Ok(client),
            None => authenticate(&live, &req),
        };
        match client {
            Ok(client) => {
                req.extensions_mut().insert(client);
                ShortCircuit::inner(self.inner.call(req))
            }
            Err(e) => ShortCircuit::ready(Err(e)),
        }
    }
}

/// On the Live API's ephemeral-token endpoint (`…Constrained`), a token minted through the
/// gateway is the credential (as at Google, where the token is the authority): the client is the
/// one that minted it, with the default limits (its own token's claims are not known here).
fn ephemeral_client<B>(gateway: &Gateway, req: &Request<B>) -> Option<Client> {
    let route = req.extensions().get::<Route>()?;
    if !route.is_constrained_live(req.uri().path()) {
        return None;
    }
    let token = crate::live::ephemeral_token(req.headers(), req.uri())?;
    let owner = gateway
        .store()
        .bound(token, tokio::time::Instant::now())?
        .owner?;
    Some(Client {
        id: owner,
        role: crate::auth::Role::Client,
        models: crate::auth::ModelPolicy::Any,
        rpm: None,
        tpm: None,
        tpd: None,
        live_sessions: None,
        overrides: None,
        token_id: None,
    })
}

fn authenticate<B>(live: &Live, req: &Request<B>) -> Result<Client, GatewayError> {
    let Some(verifier) = &live.verifier else {
        return Err(GatewayError::Internal(
            "auth is enabled but has no verifier",
        ));
    };
    let token = token_from_request(req.headers(), req.uri());
    let now = unix_now();
    let refused = |failure: AuthFailure| {
        tracing::debug!(reason = failure.kind(), "client token refused");
        match failure {
            AuthFailure::KeysUnavailable => GatewayError::AuthUnavailable(failure),
            other => GatewayError::Unauthenticated(other),
        }
    };
    // A link the gateway handed out (upload URL, download URL) carries a capability in `key=`.
    let link = match capability::in_query(req.uri()) {
        Some(cap) => Some(capability::verify(&live.config.auth, cap, now).map_err(refused)?),
        None => None,
    };
    if let Some(cap) = &link
        && cap
            .jti
            .as_deref()
            .is_some_and(|jti| verifier.is_revoked(jti))
    {
        return Err(refused(AuthFailure::CapabilityRevoked));
    }
    if let Some(cap) = &link
        && capability::opens(req.uri()).as_deref() != Some(cap.res.as_str())
    {
        tracing::debug!(client = %cap.sub, "capability used for another resource");
        return Err(GatewayError::PermissionDenied(
            "this link's capability is for another upload or file".into(),
        ));
    }
    let client = match (token, link) {
        // The link alone is the credential (google-genai sends none to an upload URL).
        (Some(t), Some(cap)) if capability::is_capability(t) => cap.client(),
        (Some(token), link) => {
            let client = verifier.verify(token, now).map_err(refused)?;
            // A token beside the link (the Node SDK sends its own): both must be one client's.
            if link.is_some_and(|cap| *cap.sub != *client.id) {
                tracing::debug!(client = %client.id, "capability of another client");
                return Err(GatewayError::PermissionDenied(
                    "this link's capability belongs to another client".into(),
                ));
            }
            client
        }
        (None, _) => return Err(refused(AuthFailure::Missing)),
    };
    if let Some(model) = req
        .extensions()
        .get::<Route>()
        .and_then(|r| r.model.as_deref())
        && !client.allows_model(model)
    {
        tracing::debug!(client = %client.id, model, "model not allowed for this client");
        return Err(GatewayError::PermissionDenied(format!(
            "this token does not allow the model {model:?}"
        )));
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, TokenRequest, issue};
    use crate::config::ConfigLoader;
    use std::time::Duration;
    use tower::ServiceExt;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn gateway(auth: &str) -> Arc<Gateway> {
        let yaml = format!("gemini: {{ api_keys: [{{ id: a, key: k }}] }}\nauth: {auth}");
        let config = ConfigLoader::default().load_str(&yaml).unwrap();
        Gateway::new(Live::build(config).unwrap())
    }

    fn enabled() -> String {
        format!("{{ enabled: true, jwt_secret: \"{SECRET}\" }}")
    }

    fn token(gw: &Gateway, models: &[&str]) -> String {
        let req = TokenRequest {
            sub: "alice".into(),
            ttl: Duration::from_secs(600),
            models: models.iter().map(|m| m.to_string()).collect(),
            rpm: Some(9),
            tpm: None,
            tpd: None,
            live_sessions: None,
            role: Role::Admin,
        };
        issue(&gw.live().config.auth, &req, unix_now())
            .unwrap()
            .token
    }

    /// Runs a request through route + auth; the client the inner service saw, or the error.
    async fn run(gw: &Arc<Gateway>, req: Request<()>) -> Result<Option<Client>, GatewayError> {
        let svc = tower::ServiceBuilder::new()
            .layer(crate::layers::route::RouteLayer::new(gw.clone()))
            .layer(AuthLayer::new(gw.clone()))
            .service(tower::service_fn(|req: Request<()>| async move {
                Ok::<_, GatewayError>(req.extensions().get::<Client>().cloned())
            }));
        svc.oneshot(req).await
    }

    fn get(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[tokio::test]
    async fn disabled_lets_everything_through_without_a_client() {
        let gw = gateway("{ enabled: false }");
        assert_eq!(run(&gw, get("/v1beta/models", &[])).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_good_token_anywhere_becomes_the_client() {
        let gw = gateway(&enabled());
        let t = token(&gw, &[]);
        let bearer = format!("Bearer {t}");
        for req in [
            get("/v1beta/models", &[("x-goog-api-key", &t)]),
            get("/v1beta/models", &[("authorization", &bearer)]),
            get(&format!("/v1beta/models?key={t}"), &[]),
        ] {
            let client = run(&gw, req).await.unwrap().expect("a client");
            assert_eq!(&*client.id, "alice");
            assert_eq!(client.role, Role::Admin);
            assert_eq!(client.rpm, Some(9));
        }
    }

    #[tokio::test]
    async fn missing_or_bad_tokens_are_401_and_never_echoed() {
        let gw = gateway(&enabled());
        let err = run(&gw, get("/v1beta/models", &[])).await.unwrap_err();
        assert_eq!(err.status(), 401);
        assert!(err.to_string().starts_with("missing credentials"), "{err}");

        let forged = format!("{}x", token(&gw, &[]));
        let err = run(&gw, get("/v1beta/models", &[("x-goog-api-key", &forged)]))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 401);
        assert_eq!(err.to_string(), "the token's signature is invalid");
        assert!(!format!("{err:?}").contains(&forged));
    }

    #[tokio::test]
    async fn a_model_outside_the_claim_is_403() {
        let gw = gateway(&enabled());
        let t = token(&gw, &["gemini-2.5-*"]);
        let ok = get(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &[("x-goog-api-key", &t)],
        );
        assert!(run(&gw, ok).await.unwrap().is_some());
        // Listing models names no model: allowed.
        assert!(
            run(&gw, get("/v1beta/models", &[("x-goog-api-key", &t)]))
                .await
                .is_ok()
        );
        let no = get(
            "/v1/models/gemini-3-pro:streamGenerateContent",
            &[("x-goog-api-key", &t)],
        );
        let err = run(&gw, no).await.unwrap_err();
        assert_eq!(err.status(), 403);
        assert_eq!(err.google_status(), "PERMISSION_DENIED");
        assert!(err.to_string().contains("gemini-3-pro"), "{err}");
    }

    #[tokio::test]
    async fn reloaded_auth_rules_apply_to_the_next_request() {
        let gw = gateway(&enabled());
        let layer = AuthLayer::new(gw.clone());
        let t = token(&gw, &[]);
        let jti = {
            let v = gw.live().verifier.clone().unwrap();
            assert!(v.verify(&t, unix_now()).is_ok());
            let payload = t.split('.').nth(1).unwrap();
            let json =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                    .unwrap();
            serde_json::from_slice::<serde_json::Value>(&json).unwrap()["jti"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let call = |layer: &AuthLayer| {
            layer
                .layer(tower::service_fn(|_req: Request<()>| async {
                    Ok::<_, GatewayError>(())
                }))
                .oneshot(get("/v1beta/models", &[("x-goog-api-key", &t)]))
        };
        assert!(call(&layer).await.is_ok());

        let mut config = gw.live().config.clone();
        config.auth.revoked_token_ids = vec![jti];
        gw.reload(config.clone()).unwrap();
        let err = call(&layer).await.unwrap_err();
        assert_eq!(err.to_string(), "the token has been revoked");

        // A reload that leaves `auth` alone keeps the verifier.
        let before = Arc::as_ptr(gw.live().verifier.as_ref().unwrap());
        config.server.max_connections += 1;
        gw.reload(config.clone()).unwrap();
        assert!(call(&layer).await.is_err());
        let after = Arc::as_ptr(gw.live().verifier.as_ref().unwrap());
        assert_eq!(before, after);

        config.auth.enabled = false;
        gw.reload(config).unwrap();
        assert!(call(&layer).await.is_ok());
    }

    #[tokio::test]
    async fn a_capability_dies_with_the_token_it_was_earned_with() {
        let gw = gateway(&format!(
            "{{ enabled: true, jwt_secret: \"{SECRET}\", revoked_token_ids: [gone] }}"
        ));
        let t = token(&gw, &[]);
        let client = run(&gw, get("/v1beta/models", &[("x-goog-api-key", &t)]))
            .await
            .unwrap()
            .expect("a client");
        assert_eq!(client.token_id.as_deref().map(str::len), Some(32));
        let upload = |token_id: Option<&str>| {
            let mut earner = client.clone();
            earner.token_id = token_id.map(Arc::from);
            let cap = capability::mint(&gw.live().config.auth, &earner, "upload:U1", unix_now());
            get(
                &format!("/upload/v1beta/files?upload_id=U1&upload_protocol=resumable&key={cap}"),
                &[],
            )
        };
        let err = run(&gw, upload(Some("gone"))).await.unwrap_err();
        assert_eq!(err.status(), 401);
        assert_eq!(err.google_status(), "UNAUTHENTICATED");
        assert_eq!(
            err.to_string(),
            "the link's capability belongs to a token that has been revoked"
        );
        // Another token of the same client, and a capability from before they carried an id.
        for other in [Some("kept"), None] {
            let got = run(&gw, upload(other)).await.unwrap().expect("a client");
            assert_eq!(&*got.id, "alice");
            assert_eq!(got.token_id.as_deref(), other);
        }
    }

    #[tokio::test]
    async fn until_the_jwks_is_fetched_its_tokens_get_503() {
        // Port 9 (discard) on loopback: the fetch fails quickly, the keys stay unloaded.
        let gw = gateway(&format!(
            "{{ enabled: true, jwt_secret: \"{SECRET}\", jwks_url: \"http://127.0.0.1:9/jwks\", allow_insecure_jwks_url: true }}"
        ));
        let rs = format!(
            "{}.{}.c2ln",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                r#"{"alg":"RS256","kid":"k1"}"#
            ),
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                r#"{"sub":"a","exp":4000000000}"#
            ),
        );
        let err = run(&gw, get("/v1beta/models", &[("x-goog-api-key", &rs)]))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 503);
        assert_eq!(err.google_status(), "UNAVAILABLE");
        // HS tokens keep working meanwhile.
        let t = token(&gw, &[]);
        assert!(
            run(&gw, get("/v1beta/models", &[("x-goog-api-key", &t)]))
                .await
                .is_ok()
        );
    }
}
