//! Building responses: content types, JSON encoding, Google-shaped errors the mock makes itself.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::body::MockBody;
use crate::failure::google_error;

/// The content type Google gives its JSON answers.
pub(crate) static JSON: HeaderValue = HeaderValue::from_static("application/json; charset=UTF-8");
/// The content type of an SSE stream.
pub(crate) static EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
/// The content type of an empty upload-protocol answer.
pub(crate) static TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// A response with `body` and `content_type`.
pub(crate) fn with_type(
    status: StatusCode,
    content_type: HeaderValue,
    body: MockBody,
) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: Bytes) -> Response<MockBody> {
    with_type(status, JSON.clone(), MockBody::full(body))
}

/// A 200 JSON response.
pub(crate) fn ok(body: Bytes) -> Response<MockBody> {
    json(StatusCode::OK, body)
}

/// Pretty-printed JSON, as Google sends its non-streamed answers.
pub(crate) fn pretty<T: Serialize + ?Sized>(value: &T) -> Bytes {
    // Serializing a `serde_json::Value` or a plain struct cannot fail.
    serde_json::to_vec_pretty(value).unwrap_or_default().into()
}

/// One-line JSON, for SSE events.
pub(crate) fn compact<T: Serialize + ?Sized>(value: &T) -> Bytes {
    serde_json::to_vec(value).unwrap_or_default().into()
}

/// A Google-shaped error response.
pub(crate) fn error(status: StatusCode, status_name: &str, message: &str) -> Response<MockBody> {
    json(
        status,
        google_error(status.as_u16(), status_name, message, None),
    )
}

/// 400 `INVALID_ARGUMENT`.
pub(crate) fn invalid_argument(message: &str) -> Response<MockBody> {
    error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
}

/// 403 `PERMISSION_DENIED`.
pub(crate) fn permission_denied(message: &str) -> Response<MockBody> {
    error(StatusCode::FORBIDDEN, "PERMISSION_DENIED", message)
}

/// 404 `NOT_FOUND`.
pub(crate) fn not_found(message: &str) -> Response<MockBody> {
    error(StatusCode::NOT_FOUND, "NOT_FOUND", message)
}
