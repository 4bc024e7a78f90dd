//! Errors the gateway makes itself, and the one place they become responses.
//!
//! Every error is answered in Google's own shape — `{"error":{"code","message","status"}}` with
//! Google's status names — so the official SDKs raise their usual exceptions. Errors *from* Google
//! never pass through here: the upstream's status and body reach the client untouched.
//! Messages never contain a key, a token or an upstream URL with a key in it.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::GatewayBody;

/// Where an error came from, for logs and (later) metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something we cannot serve.
    Downstream,
    /// The upstream could not be reached or did not answer in time.
    Upstream,
    /// The gateway itself.
    Internal,
}

/// An error the gateway answers by itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The path is not part of the Gemini API.
    #[error(
        "no API route matches {method} {path}; the gateway serves /v1/, /v1beta/, /v1alpha/ and /upload/"
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
    UpstreamUnavailable,
    /// The upstream sent no response headers within `gemini.timeout_seconds`.
    #[error("the upstream API did not answer within {0} seconds (gemini.timeout_seconds)")]
    UpstreamTimeout(u64),
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
            GatewayError::BodyRead(_) => StatusCode::BAD_REQUEST,
            GatewayError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::NoKey => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Google's status name for the error (`google.rpc.Code`).
    pub fn google_status(&self) -> &'static str {
        match self {
            GatewayError::NotFound { .. } => "NOT_FOUND",
            GatewayError::PayloadTooLarge { .. } | GatewayError::BodyRead(_) => "INVALID_ARGUMENT",
            GatewayError::BodyTimeout(_) | GatewayError::UpstreamTimeout(_) => "DEADLINE_EXCEEDED",
            GatewayError::NoKey | GatewayError::UpstreamUnavailable => "UNAVAILABLE",
            GatewayError::Internal(_) => "INTERNAL",
        }
    }

    /// A stable, low-cardinality name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::NotFound { .. } => "not_found",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::BodyRead(_) => "body_read",
            GatewayError::BodyTimeout(_) => "body_timeout",
            GatewayError::NoKey => "no_key",
            GatewayError::UpstreamUnavailable => "upstream_unavailable",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::Internal(_) => "internal",
        }
    }

    /// Who is to blame.
    pub fn source(&self) -> Source {
        match self {
            GatewayError::NotFound { .. }
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::BodyRead(_)
            | GatewayError::BodyTimeout(_) => Source::Downstream,
            GatewayError::UpstreamUnavailable | GatewayError::UpstreamTimeout(_) => {
                Source::Upstream
            }
            GatewayError::NoKey | GatewayError::Internal(_) => Source::Internal,
        }
    }

    /// The Google-shaped response. The error's [`kind`](Self::kind) rides along as an
    /// [`ErrorKind`] response extension for the access log and metrics.
    pub fn into_response(self) -> Response<GatewayBody> {
        let mut res = google_error(self.status(), self.google_status(), &self.to_string());
        res.extensions_mut().insert(ErrorKind(self.kind()));
        res
    }
}

/// Marks a response the gateway made from an error; the value is [`GatewayError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind(pub &'static str);

/// A response with Google's error body: `{"error":{"code","message","status"}}`.
pub fn google_error(
    status: StatusCode,
    google_status: &str,
    message: &str,
) -> Response<GatewayBody> {
    let body = serde_json::json!({
        "error": { "code": status.as_u16(), "message": message, "status": google_status }
    });
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
}
