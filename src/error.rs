//! Errors the gateway makes itself, and the one place they become responses.
//!
//! Every error is answered in Google's own shape — `{"error":{"code","message","status"}}` with
//! Google's status names — so the official SDKs raise their usual exceptions. Errors *from* Google
//! never pass through here: the upstream's status and body reach the client untouched.
//! Messages never contain a key, a token or an upstream URL with a key in it.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::auth::AuthFailure;
use crate::body::GatewayBody;

/// `x-ratelimit-limit`: the client's requests per minute.
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `x-ratelimit-remaining`: requests left right now.
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `x-ratelimit-reset`: seconds until the whole per-minute budget is available again.
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// An error the gateway answers by itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The path is not part of the Gemini API.
    #[error(
        "no API route matches {method} {path}; the gateway serves /v1/, /v1beta/, /v1alpha/, /upload/ and /download/"
    )]
    NotFound {
        /// The request method.
        method: http::Method,
        /// The request path, without its query.
        path: String,
    },
    /// The request body is larger than `server.max_request_body_bytes`.
    #[error(
        "request body is larger than the gateway's limit of {limit} bytes (server.max_request_body_bytes)"
    )]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request cannot be classified with certainty (an ambiguous path, a body naming its
    /// model twice); it is refused rather than forwarded unchecked.
    #[error("{0}")]
    InvalidArgument(String),
    /// The client's token may not see this file, cached content or upload (another client
    /// created it), or the gateway does not know who created it. Google's own answer for a
    /// resource that does not exist, so nothing is learned from it.
    #[error("{0}")]
    ResourceNotFound(String),
    /// The client stopped sending its body half way, or sent a malformed one.
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    /// The client took longer than `server.request_body_timeout_seconds` to send its body.
    #[error(
        "the request body did not arrive within {0} seconds (server.request_body_timeout_seconds)"
    )]
    BodyTimeout(u64),
    /// No upstream key is configured or usable.
    #[error("no upstream API key is available")]
    NoKey,
    /// The upstream could not be reached (connect, TLS or protocol failure before a response).
    #[error("the upstream API could not be reached")]
    UpstreamUnavailable {
        /// The id of the key the attempt used (for failover: errors know their source).
        key: Arc<str>,
    },
    /// No connection to the upstream could be made (refused, unreachable, TLS handshake): the
    /// request was never sent, so replaying it elsewhere is always safe.
    #[error("the upstream API could not be reached")]
    UpstreamConnect {
        /// The id of the key the attempt used.
        key: Arc<str>,
        /// Whether the key leaves through an egress proxy (which may be what is down).
        via_proxy: bool,
    },
    /// Buffered request bodies in flight already fill `server.max_buffered_body_bytes`.
    #[error(
        "the gateway is holding as many request bodies as it may (server.max_buffered_body_bytes); retry in {retry_after_seconds} s"
    )]
    BodyBudgetExhausted {
        /// Seconds the client should wait (at least 1).
        retry_after_seconds: u64,
    },
    /// The model name is longer than any model Google serves.
    #[error("the model name is longer than {limit} characters")]
    ModelNameTooLong {
        /// The limit.
        limit: usize,
    },
    /// The upstream sent no response headers within `gemini.timeout_seconds`.
    #[error("the upstream API did not answer within {seconds} seconds (gemini.timeout_seconds)")]
    UpstreamTimeout {
        /// The time-out.
        seconds: u64,
        /// The id of the key the attempt used.
        key: Arc<str>,
    },
    /// Every usable upstream key is at its limit or resting.
    #[error(
        "all upstream API keys are at their quota for this model; retry in {retry_after_seconds} s"
    )]
    KeysExhausted {
        /// Seconds until the first key has headroom again (at least 1).
        retry_after_seconds: u64,
    },
    /// The client sent no token, or one we refuse; the reason is the message.
    #[error("{0}")]
    Unauthenticated(AuthFailure),
    /// The client's token does not allow this request (e.g. the model).
    #[error("{0}")]
    PermissionDenied(String),
    /// The client is over its per-minute limit.
    #[error(
        "rate limit exceeded: this client may send {limit} requests per minute; retry in {retry_after_seconds} s"
    )]
    RateLimited {
        /// Requests per minute allowed to this client.
        limit: u32,
        /// Seconds until the next request will be accepted (at least 1).
        retry_after_seconds: u64,
        /// Seconds until the whole per-minute budget is available again.
        reset_seconds: u64,
    },
    /// The client used up its token budget (`tpm` / `tpd` claim, `auth.default_tokens_per_day`).
    #[error("token budget exceeded: {message}")]
    TokenBudget {
        /// Which budget, how much was used, when it resets.
        message: String,
        /// The budget, in tokens.
        limit: u64,
        /// Seconds until it resets (at least 1).
        retry_after_seconds: u64,
    },
    /// The keys needed to check the client's token are not available yet (JWKS not fetched).
    #[error("{0}")]
    AuthUnavailable(AuthFailure),
    /// A Live API session would exceed `gemini.live.max_sessions_per_key` on every key, or the
    /// token's `live_sessions`; the message says which.
    #[error("{0}")]
    TooManySessions(&'static str),
    /// A bug: the request could not be handled.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl GatewayError {
    /// The HTTP status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyRead(_) | GatewayError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            GatewayError::ResourceNotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::NoKey => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamUnavailable { .. } | GatewayError::UpstreamConnect { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::BodyBudgetExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::ModelNameTooLong { .. } => StatusCode::BAD_REQUEST,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::KeysExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            GatewayError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            GatewayError::RateLimited { .. } | GatewayError::TokenBudget { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::TooManySessions(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Google's status name for the error (`google.rpc.Code`).
    pub fn google_status(&self) -> &'static str {
        match self {
            GatewayError::NotFound { .. } | GatewayError::ResourceNotFound(_) => "NOT_FOUND",
            GatewayError::PayloadTooLarge { .. }
            | GatewayError::BodyRead(_)
            | GatewayError::InvalidArgument(_)
            | GatewayError::ModelNameTooLong { .. } => "INVALID_ARGUMENT",
            GatewayError::BodyTimeout(_) | GatewayError::UpstreamTimeout { .. } => {
                "DEADLINE_EXCEEDED"
            }
            GatewayError::NoKey
            | GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamConnect { .. }
            | GatewayError::BodyBudgetExhausted { .. }
            | GatewayError::AuthUnavailable(_) => "UNAVAILABLE",
            GatewayError::Unauthenticated(_) => "UNAUTHENTICATED",
            GatewayError::PermissionDenied(_) => "PERMISSION_DENIED",
            GatewayError::RateLimited { .. }
            | GatewayError::KeysExhausted { .. }
            | GatewayError::TokenBudget { .. }
            | GatewayError::TooManySessions(_) => "RESOURCE_EXHAUSTED",
            GatewayError::Internal(_) => "INTERNAL",
        }
    }

    /// A stable, low-cardinality name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::NotFound { .. } => "not_found",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::BodyRead(_) => "body_read",
            GatewayError::InvalidArgument(_) => "invalid_argument",
            GatewayError::ResourceNotFound(_) => "resource_not_found",
            GatewayError::BodyTimeout(_) => "body_timeout",
            GatewayError::NoKey => "no_key",
            GatewayError::UpstreamUnavailable { .. } | GatewayError::UpstreamConnect { .. } => {
                "upstream_unavailable"
            }
            GatewayError::BodyBudgetExhausted { .. } => "body_budget",
            GatewayError::ModelNameTooLong { .. } => "model_name_too_long",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::KeysExhausted { .. } => "keys_exhausted",
            GatewayError::Unauthenticated(_) => "unauthenticated",
            GatewayError::PermissionDenied(_) => "permission_denied",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::TokenBudget { .. } => "token_budget",
            GatewayError::AuthUnavailable(_) => "auth_unavailable",
            GatewayError::TooManySessions(_) => "live_sessions",
            GatewayError::Internal(_) => "internal",
        }
    }

    /// Whether the gateway may answer this before it has read the request body (route, auth,
    /// client limit, body reading itself): on HTTP/1 the connection then cannot be reused. The
    /// errors that come after the body was buffered (no key, upstream failures) are `false`.
    pub fn refused_before_body(&self) -> bool {
        !matches!(
            self,
            GatewayError::NoKey
                | GatewayError::UpstreamUnavailable { .. }
                | GatewayError::UpstreamConnect { .. }
                | GatewayError::UpstreamTimeout { .. }
                | GatewayError::KeysExhausted { .. }
                | GatewayError::ResourceNotFound(_)
                | GatewayError::Internal(_)
        )
    }

    /// The upstream key an upstream failure happened on, for failover.
    pub fn upstream_key(&self) -> Option<&Arc<str>> {
        match self {
            GatewayError::UpstreamUnavailable { key }
            | GatewayError::UpstreamConnect { key, .. }
            | GatewayError::UpstreamTimeout { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The Google-shaped response. The error's [`kind`](Self::kind) rides along as an
    /// [`ErrorKind`] response extension for the access log and metrics.
    ///
    /// A 429 also carries `Retry-After`, `x-ratelimit-limit`, `x-ratelimit-remaining` and
    /// `x-ratelimit-reset`, and a `google.rpc.RetryInfo` detail as Google's own 429s do; a 401
    /// carries `WWW-Authenticate: Bearer`.
    pub fn into_response(self) -> Response<GatewayBody> {
        let retry_after = match &self {
            GatewayError::RateLimited {
                retry_after_seconds,
                ..
            }
            | GatewayError::KeysExhausted {
                retry_after_seconds,
            } => Some(*retry_after_seconds),
            GatewayError::TokenBudget {
                retry_after_seconds,
                ..
            } => Some(*retry_after_seconds),
            _ => None,
        };
        let mut res = match retry_after {
            Some(retry_after_seconds) => google_error_with_details(
                self.status(),
                self.google_status(),
                &self.to_string(),
                serde_json::json!([{
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format!("{retry_after_seconds}s"),
                }]),
            ),
            _ => google_error(self.status(), self.google_status(), &self.to_string()),
        };
        let headers = res.headers_mut();
        match &self {
            GatewayError::RateLimited {
                limit,
                retry_after_seconds,
                reset_seconds,
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
                headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(*limit));
                headers.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from_static("0"));
                headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(*reset_seconds));
            }
            GatewayError::KeysExhausted {
                retry_after_seconds,
            }
            | GatewayError::BodyBudgetExhausted {
                retry_after_seconds,
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
            }
            GatewayError::TokenBudget {
                limit,
                retry_after_seconds,
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
                headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(*limit));
                headers.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from_static("0"));
                headers.insert(
                    X_RATELIMIT_RESET.clone(),
                    HeaderValue::from(*retry_after_seconds),
                );
            }
            GatewayError::Unauthenticated(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        res.extensions_mut().insert(ErrorKind(self.kind()));
        if let GatewayError::Unauthenticated(f) | GatewayError::AuthUnavailable(f) = &self {
            res.extensions_mut().insert(ErrorReason(f.kind()));
        }
        res
    }
}

/// Marks a response the gateway made from an error; the value is [`GatewayError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind(pub &'static str);

/// A finer, still low-cardinality reason next to [`ErrorKind`], for metrics: why a client's token
/// was refused ([`AuthFailure::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorReason(pub &'static str);

/// A response with Google's error body: `{"error":{"code","message","status"}}`.
pub fn google_error(
    status: StatusCode,
    google_status: &str,
    message: &str,
) -> Response<GatewayBody> {
    let body = serde_json::json!({
        "error": { "code": status.as_u16(), "message": message, "status": google_status }
    });
    json_response(status, &body)
}

/// [`google_error`] with Google's `details` list (`google.rpc.RetryInfo` and the like).
fn google_error_with_details(
    status: StatusCode,
    google_status: &str,
    message: &str,
    details: serde_json::Value,
) -> Response<GatewayBody> {
    let body = serde_json::json!({
        "error": {
            "code": status.as_u16(),
            "message": message,
            "status": google_status,
            "details": details,
        }
    });
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<GatewayBody> {
    let mut res = Response::new(GatewayBody::full(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn shaped_like_google() {
        let res = GatewayError::PayloadTooLarge { limit: 10 }.into_response();
        assert_eq!(res.status(), 413);
        assert_eq!(
            res.extensions().get::<ErrorKind>(),
            Some(&ErrorKind("payload_too_large"))
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], 413);
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
        assert!(v["error"]["message"].as_str().unwrap().contains("10 bytes"));
    }

    #[tokio::test]
    async fn rate_limited_carries_retry_headers_and_retry_info() {
        let res = GatewayError::RateLimited {
            limit: 60,
            retry_after_seconds: 2,
            reset_seconds: 60,
        }
        .into_response();
        assert_eq!(res.status(), 429);
        let h = res.headers();
        assert_eq!(h["retry-after"], "2");
        assert_eq!(h["x-ratelimit-limit"], "60");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h["x-ratelimit-reset"], "60");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(v["error"]["details"][0]["retryDelay"], "2s");
    }

    #[tokio::test]
    async fn unauthenticated_says_why() {
        let res = GatewayError::Unauthenticated(AuthFailure::Expired).into_response();
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(v["error"]["message"], "the token has expired");
    }
}
