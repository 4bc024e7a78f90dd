//! The admin REST API, under `/api/` on the admin listener.
//!
//! Every route needs an admin credential: a JWT with `role: admin` (checked like any client
//! token) or `admin.token`, as `Authorization: Bearer …` (or `x-goog-api-key`). No answer ever
//! contains an upstream key or the JWT secret: config and keys are shown masked, and a masked value
//! sent back means "keep the current one".
//!
//! Config and key changes all take one path — validate → apply → persist → record — through
//! [`ConfigVersions`](crate::config::versions::ConfigVersions).
//!
//! | route | what |
//! |---|---|
//! | `GET /api/config` | the running config, secrets masked (JSON, or YAML with `Accept: application/yaml`) |
//! | `PUT /api/config` | replace it (400 with every problem, nothing changes) |
//! | `GET /api/config/history` | the versions kept |
//! | `POST /api/config/rollback/{version}` | make an earlier version current |
//! | `GET /api/keys` | keys with weight, limits, state, counters |
//! | `POST /api/keys` | add one key, or several (`{"keys": [...]}`) |
//! | `DELETE /api/keys/{id}` | remove a key |
//! | `POST /api/keys/{id}/enable`, `/disable` | (re-enabling also clears `invalid` and rests) |
//! | `POST /api/keys/{id}/test` | a cheap live call with the key: valid / invalid / quota exhausted |
//! | `GET /api/keys/{id}/events` | the key's rests, invalidations, enable/disable (usage history) |
//! | `GET /api/usage` | usage per step and key / model / client / route, with cost (JSON or CSV) |
//! | `GET /api/usage/summary` | top keys, models, clients over a window; error rate; tokens; cost |
//! | `POST /api/tokens` | issue a client token |
//! | `POST /api/tokens/revoke` | refuse a token id (`jti`) from now on |
//! | `GET /api/openapi.json` | this API as OpenAPI 3 |

mod handlers;
mod openapi;
pub mod sign_in;
mod usage;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;

use crate::body::GatewayBody;
use crate::client_addr::{ClientAddr, client_ip};
use crate::config::Problem;
use crate::error::google_error;
use crate::gateway::Gateway;

pub(crate) use handlers::authorize;
pub use openapi::ApiDoc;
use sign_in::SignInGuard;

/// Admin request bodies are small: config documents and key lists.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Who made an admin request, for the history and the audit log.
#[derive(Debug, Clone)]
pub struct Admin(pub String);

/// Answers one `/api/…` request; failed sign-ins are counted in `guard`.
pub async fn handle<B>(
    gateway: Arc<Gateway>,
    guard: &SignInGuard,
    req: Request<B>,
) -> Response<GatewayBody>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    if path == "/api/openapi.json" && parts.method == Method::GET {
        return json(StatusCode::OK, &openapi::document());
    }
    let ip = client_ip_of(&gateway, &parts.headers, &parts.extensions);
    let admin = match handlers::authorize(&gateway, guard, ip, &parts.headers) {
        Ok(admin) => admin,
        Err(res) => return *res,
    };
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return google_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "INVALID_ARGUMENT",
                "the request body is too large or could not be read",
            );
        }
    };
    // Key ids may hold any character; clients percent-encode them in the path.
    let decoded: Vec<String> = path
        .trim_start_matches("/api/")
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let query = parts.uri.query();
    let ctx = handlers::Ctx {
        gateway: &gateway,
        admin: &admin,
        headers: &parts.headers,
        body: &body,
    };
    match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["config"]) => handlers::get_config(&ctx),
        (&Method::PUT, ["config"]) => handlers::put_config(&ctx),
        (&Method::GET, ["config", "history"]) => handlers::history(&ctx),
        (&Method::POST, ["config", "rollback", version]) => handlers::rollback(&ctx, version),
        (&Method::GET, ["keys"]) => handlers::list_keys(&ctx),
        (&Method::POST, ["keys"]) => handlers::add_keys(&ctx),
        (&Method::DELETE, ["keys", id]) => handlers::delete_key(&ctx, id),
        (&Method::POST, ["keys", id, "enable"]) => handlers::set_key_enabled(&ctx, id, true),
        (&Method::POST, ["keys", id, "disable"]) => handlers::set_key_enabled(&ctx, id, false),
        (&Method::POST, ["keys", id, "test"]) => handlers::test_key(&ctx, id).await,
        (&Method::GET, ["keys", id, "events"]) => usage::key_events(&ctx, id, query).await,
        (&Method::GET, ["usage"]) => usage::usage(&ctx, query).await,
        (&Method::GET, ["usage", "summary"]) => usage::summary(&ctx, query).await,
        (&Method::POST, ["tokens"]) => handlers::issue_token(&ctx),
        (&Method::POST, ["tokens", "revoke"]) => handlers::revoke_token(&ctx),
        (method, segments) => match methods_of(segments) {
            [] => google_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("no admin API route {method} {path}"),
            ),
            allowed => {
                let allow = allowed.join(", ");
                let mut res = google_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "INVALID_ARGUMENT",
                    &format!("{path} answers {allow}, not {method}"),
                );
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    res.headers_mut().insert(header::ALLOW, v);
                }
                res
            }
        },
    }
}

/// The methods an admin API path answers (empty: no such path). Keep in step with the routes
/// above.
fn methods_of(segments: &[&str]) -> &'static [&'static str] {
    match segments {
        ["config"] => &["GET", "PUT"],
        ["config", "history"] => &["GET"],
        ["config", "rollback", _] => &["POST"],
        ["keys"] => &["GET", "POST"],
        ["keys", _] => &["DELETE"],
        ["keys", _, "enable" | "disable" | "test"] => &["POST"],
        ["tokens"] | ["tokens", "revoke"] => &["POST"],
        _ => &[],
    }
}

/// The address a request is attributed to (the peer, or the client a trusted proxy names).
pub(crate) fn client_ip_of(
    gateway: &Gateway,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> std::net::IpAddr {
    let peer = extensions.get::<ClientAddr>().map(|a| a.0.ip());
    client_ip(peer, headers, &gateway.live().config.server.trusted_proxies)
}

/// `%2F` → `/` and so on; a malformed escape is kept as written.
fn percent_decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_or_else(|_| segment.to_owned(), |s| s.into_owned())
}

/// A JSON answer.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<GatewayBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut res = Response::new(GatewayBody::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// 400 `INVALID_ARGUMENT` listing every problem as a `google.rpc.BadRequest` field violation.
pub(crate) fn invalid(message: &str, problems: &[Problem]) -> Response<GatewayBody> {
    let violations: Vec<serde_json::Value> = problems
        .iter()
        .map(|p| serde_json::json!({ "field": p.path, "description": p.message }))
        .collect();
    let body = serde_json::json!({
        "error": {
            "code": 400,
            "message": format!(
                "{message}: {}",
                problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            ),
            "status": "INVALID_ARGUMENT",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": violations,
            }],
        }
    });
    json(StatusCode::BAD_REQUEST, &body)
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("team%20a%2Fkey"), "team a/key");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%+1"), "%+1");
        assert_eq!(percent_decode("%ff"), "%ff");
    }
}
