//! The mock's Vertex AI face, on the same port under Vertex's own paths, and an OAuth token
//! endpoint for service accounts.
//!
//! - `POST /token` (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=…`): checks
//!   the assertion's RS256 signature against the test service account's public key
//!   ([`MockOptions::vertex_public_key_pem`](crate::MockOptions)), its `aud` (this URL), `exp`
//!   and `scope`, and issues a token that lives [`MockOptions::vertex_token_lifetime`](crate::MockOptions)
//!   (on tokio's clock, so paused-time tests see it expire).
//! - `GET /computeMetadata/v1/instance/service-accounts/default/token` (the metadata server of
//!   GKE and Compute Engine): a token to any caller that says `Metadata-Flavor: Google`.
//! - `POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:{method}`: needs
//!   `Authorization: Bearer` with a token this mock issued and that has not expired, and no API
//!   key (Vertex's 401 otherwise).
//! - `POST /v1/publishers/google/models/{m}:{method}` (express mode): needs `?key=` (or
//!   `x-goog-api-key`), and no `Authorization`.
//! - `POST /v1/projects/{p}/locations/{l}/endpoints/openapi/chat/completions`: the OpenAI
//!   surface; a bearer token, and a `google/…` model.
//!
//! Methods: `generateContent`, `streamGenerateContent` (`alt=sse` or a JSON array),
//! `countTokens`, `embedContent`, `predict` (text embeddings: `instances[].content`). Like Vertex, a
//! `contents` entry without `role` is refused, and so is `countTokens`' Developer-API-only
//! `generateContentRequest`. `x-mock-error` and `mock-error-<code>` models work as on the
//! Developer API face; a 429 is Vertex's (no `RetryInfo`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::body::MockBody;
use crate::failure::{ErrorContext, Failure, google_error, invalid_key};
use crate::reply;
use crate::shared::Shared;
use crate::url::{percent_decode, query_param};

/// What the Vertex face remembers: the service account's public key and the tokens it issued.
pub(crate) struct VertexState {
    public_key: Option<DecodingKey>,
    lifetime: Duration,
    /// Token → when it expires.
    tokens: Mutex<HashMap<String, Instant>>,
    /// Every token issued, in order.
    issued: Mutex<Vec<String>>,
    next: AtomicU64,
    /// While set, the token endpoint refuses every assertion (an account disabled or deleted).
    refusing: AtomicBool,
}

impl VertexState {
    pub(crate) fn new(public_key_pem: Option<&str>, lifetime: Duration) -> Self {
        Self {
            public_key: public_key_pem
                .and_then(|pem| DecodingKey::from_rsa_pem(pem.as_bytes()).ok()),
            lifetime,
            tokens: Mutex::new(HashMap::new()),
            issued: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
            refusing: AtomicBool::new(false),
        }
    }

    /// Makes the token endpoint refuse (or accept again) every assertion.
    pub(crate) fn set_refusing(&self, on: bool) {
        self.refusing.store(on, Ordering::Relaxed);
    }

    /// Forgets every token issued so far (they are refused with 401 from now on, as when Google
    /// revokes an account's tokens).
    pub(crate) fn revoke_all(&self) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Every access token issued so far, oldest first.
    pub(crate) fn issued(&self) -> Vec<String> {
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn issue(&self) -> String {
        let token = format!(
            "ya29.mock-token-{}",
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone(), Instant::now() + self.lifetime);
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(token.clone());
        token
    }

    /// `Some(true)` for a live token, `Some(false)` for an expired one, `None` for one never issued.
    fn is_live(&self, token: &str) -> Option<bool> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(token).map(|expires| *expires > Instant::now())
    }
}

/// What the service does with a Vertex request.
pub(crate) enum VertexAnswer {
    /// This response.
    Reply(Response<MockBody>),
    /// A Gemini stream of this model, as SSE (`alt=sse`) or a JSON array.
    Stream { model: String, sse: bool },
    /// An OpenAI chat stream of this model.
    OpenAiStream { model: String },
}

/// Which Vertex endpoint a path is.
enum Endpoint<'a> {
    Model {
        express: bool,
        model: &'a str,
        method: &'a str,
    },
    OpenAiChat,
}

fn endpoint(path: &str) -> Option<Endpoint<'_>> {
    let rest = path.strip_prefix("/v1/")?;
    if let Some(model) = rest.strip_prefix("publishers/google/models/") {
        let (model, method) = model.split_once(':')?;
        return Some(Endpoint::Model {
            express: true,
            model,
            method,
        });
    }
    let rest = rest.strip_prefix("projects/")?;
    let (_project, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("locations/")?;
    let (_location, rest) = rest.split_once('/')?;
    if rest == "endpoints/openapi/chat/completions" {
        return Some(Endpoint::OpenAiChat);
    }
    let (model, method) = rest
        .strip_prefix("publishers/google/models/")?
        .split_once(':')?;
    Some(Endpoint::Model {
        express: false,
        model,
        method,
    })
}

/// The answer to a Vertex request, or `None` when the path is not one of Vertex's.
pub(crate) fn respond(
    shared: &Shared,
    parts: &Parts,
    body: &Bytes,
    error_trigger: Option<&str>,
) -> Option<VertexAnswer> {
    let path = parts.uri.path();
    if parts.method == Method::POST && path == "/token" {
        return Some(VertexAnswer::Reply(token(shared, body)));
    }
    if parts.method == Method::GET && path == METADATA_TOKEN_PATH {
        return Some(VertexAnswer::Reply(metadata_token(shared, parts)));
    }
    let endpoint = endpoint(path)?;
    if parts.method != Method::POST {
        return Some(VertexAnswer::Reply(reply::not_found(&format!(
            "The requested URL {path} was not found on this server."
        ))));
    }
    let api_key = parts
        .headers
        .get("x-goog-api-key")
        .map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned())
        .or_else(|| query_param(parts.uri.query(), "key").map(percent_decode));
    let bearer = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let express = matches!(endpoint, Endpoint::Model { express: true, .. });
    if express {
        if parts.headers.contains_key(AUTHORIZATION) {
            return Some(VertexAnswer::Reply(unauthenticated(
                "Express mode takes an API key, not an Authorization header.",
                "CREDENTIALS_CONFLICT",
            )));
        }
        let Some(key) = api_key else {
            return Some(VertexAnswer::Reply(unauthenticated(
                "Request is missing required authentication credential. Expected OAuth 2 access \
                 token or API key.",
                "CREDENTIALS_MISSING",
            )));
        };
        if shared.invalid_keys.contains(&key) {
            return Some(VertexAnswer::Reply(reply::json(
                StatusCode::BAD_REQUEST,
                invalid_key(),
            )));
        }
    } else {
        if api_key.is_some() {
            return Some(VertexAnswer::Reply(unauthenticated(
                "API keys are not supported by this API. Expected OAuth2 access token or other \
                 authentication credentials that assert a principal.",
                "CREDENTIALS_MISSING",
            )));
        }
        let live = bearer.and_then(|t| shared.vertex.is_live(t));
        if live != Some(true) {
            let reason = if live == Some(false) {
                "ACCESS_TOKEN_EXPIRED"
            } else {
                "ACCESS_TOKEN_TYPE_UNSUPPORTED"
            };
            return Some(VertexAnswer::Reply(unauthenticated(
                "Request had invalid authentication credentials. Expected OAuth 2 access token, \
                 login cookie or other valid authentication credential.",
                reason,
            )));
        }
    }

    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Some(VertexAnswer::Reply(reply::invalid_argument(
            "Invalid JSON payload received.",
        )));
    };
    let model = match &endpoint {
        Endpoint::Model { model, .. } => (*model).to_owned(),
        Endpoint::OpenAiChat => match request["model"].as_str() {
            Some(m) if m.starts_with("google/") => m["google/".len()..].to_owned(),
            _ => {
                return Some(VertexAnswer::Reply(reply::invalid_argument(
                    "model must be a publisher model such as google/gemini-2.5-flash.",
                )));
            }
        },
    };
    if let Some(code) = error_trigger.or_else(|| model.strip_prefix("mock-error-")) {
        return Some(VertexAnswer::Reply(failure(code, &model)));
    }
    let answer = match endpoint {
        Endpoint::OpenAiChat => {
            if request["stream"].as_bool() == Some(true) {
                VertexAnswer::OpenAiStream { model }
            } else {
                VertexAnswer::Reply(reply::ok(
                    shared.canned.for_model(&model).openai_chat.clone(),
                ))
            }
        }
        Endpoint::Model { method, .. } => match method {
            "generateContent" | "streamGenerateContent" | "countTokens" => {
                if let Some(refusal) = refuse_contents(&request, method) {
                    return Some(VertexAnswer::Reply(refusal));
                }
                match method {
                    "generateContent" => VertexAnswer::Reply(reply::ok(
                        shared.canned.for_model(&model).generate.clone(),
                    )),
                    "streamGenerateContent" => VertexAnswer::Stream {
                        model,
                        sse: query_param(parts.uri.query(), "alt") == Some("sse"),
                    },
                    _ => VertexAnswer::Reply(reply::ok(shared.canned.count_tokens.clone())),
                }
            }
            "embedContent" => VertexAnswer::Reply(reply::ok(shared.canned.embed_content.clone())),
            "predict" => VertexAnswer::Reply(predict(&request)),
            _ => VertexAnswer::Reply(reply::not_found(&format!(
                "The requested URL {path} was not found on this server."
            ))),
        },
    };
    Some(answer)
}

/// Vertex's refusals of a Developer-API-shaped body.
fn refuse_contents(request: &Value, method: &str) -> Option<Response<MockBody>> {
    if method == "countTokens" && request.get("generateContentRequest").is_some() {
        return Some(reply::invalid_argument(
            "Invalid JSON payload received. Unknown name \"generateContentRequest\": Cannot find field.",
        ));
    }
    let contents = request.get("contents")?.as_array()?;
    let bad_role = contents.iter().any(|c| {
        !matches!(
            c.get("role").and_then(Value::as_str),
            Some("user" | "model")
        )
    });
    bad_role.then(|| reply::invalid_argument("Please use a valid role: user, model."))
}

/// `:predict` for a text embedding model.
fn predict(request: &Value) -> Response<MockBody> {
    let Some(instances) = request.get("instances").and_then(Value::as_array) else {
        return reply::invalid_argument("instances is required.");
    };
    let mut predictions = Vec::with_capacity(instances.len());
    for instance in instances {
        let Some(content) = instance.get("content").and_then(Value::as_str) else {
            return reply::invalid_argument("Each instance needs a content string.");
        };
        let dims = request["parameters"]["outputDimensionality"]
            .as_u64()
            .unwrap_or(3)
            .min(3072) as usize;
        let values: Vec<f64> = (0..dims).map(|i| 0.01 * (i + 1) as f64).collect();
        predictions.push(json!({
            "embeddings": {
                "values": values,
                "statistics": { "truncated": false, "token_count": content.split_whitespace().count() }
            }
        }));
    }
    reply::ok(reply::pretty(&json!({ "predictions": predictions })))
}

/// An error on demand, Vertex-shaped: its 429 has no `RetryInfo`.
fn failure(code: &str, model: &str) -> Response<MockBody> {
    if code == "429" {
        return reply::json(
            StatusCode::TOO_MANY_REQUESTS,
            google_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource exhausted. Please try again later. Please refer to \
                 https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
                None,
            ),
        );
    }
    match Failure::from_code(code) {
        Some(failure) => failure.response(&ErrorContext {
            model: Some(model),
            version: "v1",
            retry_delay_seconds: None,
        }),
        None => reply::invalid_argument(&format!("gem-proxy-mock: unknown error code {code:?}.")),
    }
}

fn unauthenticated(message: &str, reason: &str) -> Response<MockBody> {
    reply::json(
        StatusCode::UNAUTHORIZED,
        google_error(
            401,
            "UNAUTHENTICATED",
            message,
            Some(json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": { "service": "aiplatform.googleapis.com" },
            }])),
        ),
    )
}

/// The metadata server's token URL (GKE, Compute Engine).
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// `GET {METADATA_TOKEN_PATH}`: the machine's default account's token, to any caller that says
/// `Metadata-Flavor: Google`.
fn metadata_token(shared: &Shared, parts: &Parts) -> Response<MockBody> {
    if parts
        .headers
        .get("metadata-flavor")
        .and_then(|v| v.to_str().ok())
        != Some("Google")
    {
        return reply::json(
            StatusCode::FORBIDDEN,
            Bytes::from_static(b"Missing required header: Metadata-Flavor\n"),
        );
    }
    if shared.vertex.refusing.load(Ordering::Relaxed) {
        return reply::json(
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"gem-proxy-mock is refusing tokens\n"),
        );
    }
    issued_answer(shared)
}

fn issued_answer(shared: &Shared) -> Response<MockBody> {
    let token = shared.vertex.issue();
    reply::ok(reply::compact(&json!({
        "access_token": token,
        "expires_in": shared.vertex.lifetime.as_secs(),
        "token_type": "Bearer",
    })))
}

/// `POST /token`: an assertion in, an access token out.
fn token(shared: &Shared, body: &Bytes) -> Response<MockBody> {
    #[derive(Deserialize)]
    struct Claims {
        iss: String,
        scope: String,
    }
    let refuse = |error: &str, description: &str| {
        reply::json(
            StatusCode::BAD_REQUEST,
            reply::compact(&json!({ "error": error, "error_description": description })),
        )
    };
    let form = String::from_utf8_lossy(body);
    let field = |name: &str| {
        form.split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .map(percent_decode)
    };
    if field("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return refuse("unsupported_grant_type", "Invalid grant_type.");
    }
    let Some(assertion) = field("assertion") else {
        return refuse("invalid_request", "Missing required parameter: assertion");
    };
    let Some(key) = &shared.vertex.public_key else {
        return refuse(
            "invalid_client",
            "gem-proxy-mock: no service-account public key configured.",
        );
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[format!("{}/token", shared.base_url)]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let claims = match jsonwebtoken::decode::<Claims>(&assertion, key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            let description = match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => "Invalid JWT Signature.",
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    "Invalid JWT: Token must be a short-lived token."
                }
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    "Invalid JWT: aud is not the token endpoint."
                }
                _ => "Invalid JWT.",
            };
            return refuse("invalid_grant", description);
        }
    };
    if claims.iss.is_empty()
        || !claims
            .scope
            .split(' ')
            .any(|s| s == "https://www.googleapis.com/auth/cloud-platform")
    {
        return refuse("invalid_scope", "The cloud-platform scope is required.");
    }
    if shared.vertex.refusing.load(Ordering::Relaxed) {
        return refuse(
            "invalid_grant",
            "Invalid grant: account not found (gem-proxy-mock is refusing tokens).",
        );
    }
    issued_answer(shared)
}
