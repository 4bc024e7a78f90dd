//! The admin API's handlers. Each takes the request context and answers; the routing table is in
//! [`super::handle`].

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use std::net::IpAddr;

use super::sign_in::SignInGuard;
use super::{Admin, invalid, json};
use crate::auth::{
    IssueError, Role, TokenRequest, issue_with_overrides, parse_ttl, token_from_request, unix_now,
};
use crate::body::GatewayBody;
use crate::config::document::{ConfigDocument, masked_view};
use crate::config::versions::{Applied, ChangeError, VersionInfo};
use crate::config::{
    ApiKeyConfig, AuthConfig, MIN_JWT_SECRET_CHARS, Problem, clean_serde_message,
    is_known_example_secret,
};
use crate::error::google_error;
use crate::gateway::Gateway;
use crate::http_client::X_GOOG_API_KEY;
use crate::key_pool::store::KeyStatus;
use crate::key_pool::verdict::{Verdict, classify};
use crate::time::utc_time;

/// What every handler gets.
pub(super) struct Ctx<'a> {
    pub(super) gateway: &'a Gateway,
    pub(super) admin: &'a Admin,
    pub(super) headers: &'a HeaderMap,
    pub(super) body: &'a Bytes,
}

type Answer = Response<GatewayBody>;

/// Checks the admin credential: `admin.token`, or a JWT with `role: admin`.
///
/// Admin JWTs are accepted only with `auth.enabled` and a secret (or public key) that passed
/// validation: with auth off the secret is not checked at start-up, and may be the README's
/// example, which anyone can sign with. Failed sign-ins are counted per client address by
/// `guard` and logged without the credential.
pub(crate) fn authorize(
    gateway: &Gateway,
    guard: &SignInGuard,
    client_ip: IpAddr,
    headers: &HeaderMap,
) -> Result<Admin, Box<Answer>> {
    let now = tokio::time::Instant::now();
    let live = gateway.live();
    let max_failures = live.config.admin.max_failed_sign_ins_per_minute;
    if let Err(retry_after) = guard.check(client_ip, max_failures, now) {
        let mut res = google_error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            &format!("too many failed admin sign-ins from this address; retry in {retry_after} s"),
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return Err(Box::new(res));
    }
    let refuse = |status: StatusCode, google_status: &str, reason: &'static str, msg: &str| {
        // Only a wrong credential is a guess; none at all (a console before sign-in) is not.
        if !matches!(reason, "missing" | "admin_api_off") {
            guard.failed(client_ip, now);
        }
        tracing::warn!(
            target: "gem_proxy::audit",
            client_ip = %client_ip,
            reason,
            "admin sign-in refused"
        );
        let mut res = google_error(status, google_status, msg);
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        Box::new(res)
    };
    let unauthenticated =
        |reason, msg: &str| refuse(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", reason, msg);
    let admin_token = &live.config.admin.token;
    let jwt_usable = admin_jwts_usable(&live.config.auth);
    if admin_token.is_empty() && !jwt_usable {
        return Err(unauthenticated(
            "admin_api_off",
            "the admin API is off: set admin.token, or turn on auth (auth.enabled with a \
             32+ character auth.jwt_secret) to use admin tokens",
        ));
    }
    let uri = http::Uri::from_static("/");
    let Some(token) = token_from_request(headers, &uri) else {
        return Err(unauthenticated(
            "missing",
            "an admin credential is required: Authorization: Bearer <admin.token or admin JWT>",
        ));
    };
    if !admin_token.is_empty()
        && constant_time_eq(token.as_bytes(), admin_token.expose().as_bytes())
    {
        return Ok(Admin("admin-token".into()));
    }
    if !jwt_usable {
        return Err(unauthenticated(
            "bad_admin_token",
            "the admin credential is not valid (admin tokens are accepted only with auth.enabled)",
        ));
    }
    let Some(verifier) = &live.verifier else {
        return Err(unauthenticated(
            "verifier",
            "admin tokens cannot be checked with this auth configuration",
        ));
    };
    match verifier.verify(token, unix_now()) {
        Ok(client) if client.role == Role::Admin => Ok(Admin(format!("token:{}", client.id))),
        Ok(_) => Err(refuse(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "not_admin",
            "this token does not have the admin role",
        )),
        Err(e) => Err(unauthenticated(e.kind(), &e.to_string())),
    }
}

/// Whether admin JWTs may be accepted under `auth`: only with auth on and a key that validation
/// accepted (a secret of 32+ characters that is not a published example, or a public key).
fn admin_jwts_usable(auth: &AuthConfig) -> bool {
    let secret = auth.jwt_secret.expose();
    let good_secret =
        auth.jwt_secret.char_len() >= MIN_JWT_SECRET_CHARS && !is_known_example_secret(secret);
    // A short or example secret must not verify anything, even next to a public key.
    let no_bad_secret = secret.is_empty() || good_secret;
    auth.enabled
        && no_bad_secret
        && (good_secret || auth.jwt_public_key_path.is_some() || auth.jwks_url.is_some())
}

/// Compares without leaking, through timing, how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// `GET /api/config`.
pub(super) fn get_config(ctx: &Ctx<'_>) -> Answer {
    let live = ctx.gateway.live();
    let view = masked_view(&live.config);
    let version = ctx.gateway.versions().version();
    let wants_yaml = ctx
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("yaml"));
    let mut res = if wants_yaml {
        let text = ConfigDocument::from_value(view)
            .map(|d| d.to_yaml())
            .unwrap_or_default();
        let mut res = Response::new(GatewayBody::full(text));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        );
        res
    } else {
        json(StatusCode::OK, &view)
    };
    res.headers_mut()
        .insert("x-config-version", HeaderValue::from(version));
    res.headers_mut().insert(header::ETAG, etag(version));
    res
}

/// `PUT /api/config`: the whole config (JSON, or YAML with a YAML content type).
pub(super) fn put_config(ctx: &Ctx<'_>) -> Answer {
    let is_yaml = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("yaml"));
    let incoming = if is_yaml {
        match std::str::from_utf8(ctx.body)
            .map_err(|_| vec![Problem::new("", "the body is not UTF-8")])
            .and_then(|t| ConfigDocument::from_yaml(t).map_err(|e| e.problems()))
        {
            Ok(doc) => doc.tree().clone(),
            Err(p) => return invalid("the configuration was not changed", &p),
        }
    } else {
        match serde_json::from_slice::<Value>(ctx.body) {
            Ok(v) => v,
            Err(e) => {
                return invalid(
                    "the configuration was not changed",
                    &[Problem::new("", format!("not valid JSON: {e}"))],
                );
            }
        }
    };
    // Masked values keep the current document's values, read under the write lock.
    edit_document(ctx, |current| {
        current
            .with_unmasked(incoming)
            .map_err(|p| Box::new(invalid("the configuration was not changed", &p)))
    })
}

/// Why an edit was not made: a change the versions refused, or an answer of the handler's own.
enum Refusal {
    Change(ChangeError),
    Answer(Box<Answer>),
}

impl From<ChangeError> for Refusal {
    fn from(e: ChangeError) -> Self {
        Refusal::Change(e)
    }
}

/// The version named by `If-Match` (`"5"`, `5` or `W/"5"`; `*` matches any). A value that is
/// no version at all is a 400.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Box<Answer>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<u64>()
        .map(Some)
        .map_err(|_| {
            Box::new(invalid(
                "the configuration was not changed",
                &[Problem::new(
                    "If-Match",
                    "must be a config version (the ETag of GET /api/config)",
                )],
            ))
        })
}

fn answer_change(result: Result<Applied, ChangeError>) -> Answer {
    match result {
        Ok(applied) => {
            let mut res = json(StatusCode::OK, &applied);
            res.headers_mut()
                .insert(header::ETAG, etag(applied.version));
            res
        }
        Err(e @ ChangeError::Stale { .. }) => google_error(
            StatusCode::PRECONDITION_FAILED,
            "FAILED_PRECONDITION",
            &e.to_string(),
        ),
        Err(ChangeError::Invalid(p)) => invalid("the configuration was not changed", &p),
        Err(ChangeError::UnknownVersion(v)) => google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no version {v} in the history"),
        ),
        Err(e @ ChangeError::Persist { .. }) => {
            tracing::error!(error = %e, "config applied but not persisted");
            google_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                &e.to_string(),
            )
        }
    }
}

/// The config history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct History {
    /// The running version.
    current_version: u64,
    /// Versions kept, oldest first.
    #[schema(value_type = Vec<Object>)]
    versions: Vec<VersionInfo>,
}

/// `GET /api/config/history`.
pub(super) fn history(ctx: &Ctx<'_>) -> Answer {
    let versions = ctx.gateway.versions();
    json(
        StatusCode::OK,
        &History {
            current_version: versions.version(),
            versions: versions.history(),
        },
    )
}

/// `POST /api/config/rollback/{version}`.
pub(super) fn rollback(ctx: &Ctx<'_>, version: &str) -> Answer {
    let Ok(version) = version.parse::<u64>() else {
        return invalid(
            "no rollback",
            &[Problem::new("version", "must be a version number")],
        );
    };
    let expected = match if_match(ctx.headers) {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let live = ctx.gateway.live();
    let result =
        ctx.gateway
            .versions()
            .rollback(version, &ctx.admin.0, expected, &live.config, |c| {
                ctx.gateway.reload(c)
            });
    share_if_applied(
        ctx,
        matches!(result, Ok(_) | Err(ChangeError::Persist { .. })),
    );
    answer_change(result)
}

/// One key as the admin API shows it: never the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyView {
    /// The key's id.
    id: String,
    /// Its weight.
    weight: u32,
    /// Its kind: `ai_studio`, `vertex` (a service account) or `vertex_express`.
    backend: String,
    /// Whether it is enabled in the config.
    enabled: bool,
    /// A short name for people (`label` in the config).
    label: Option<String>,
    /// Free-form notes (`notes` in the config).
    notes: Option<String>,
    /// Requests per minute per model.
    max_requests_per_minute: Option<u32>,
    /// Requests per Pacific day per model.
    max_requests_per_day: Option<u32>,
    /// Tokens per minute per model.
    max_tokens_per_minute: Option<u32>,
    /// State and counters.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    status: KeyStatus,
}

/// `GET /api/keys`.
pub(super) fn list_keys(ctx: &Ctx<'_>) -> Answer {
    json(StatusCode::OK, &key_views(ctx))
}

fn key_views(ctx: &Ctx<'_>) -> Vec<KeyView> {
    let live = ctx.gateway.live();
    let now = tokio::time::Instant::now();
    live.config
        .gemini
        .api_keys
        .iter()
        .map(|k| {
            let mut status = ctx.gateway.store().status(&k.id, now);
            if !k.enabled {
                status.state = "disabled";
            }
            KeyView {
                id: k.id.clone(),
                weight: k.weight,
                backend: k.backend.as_str().to_owned(),
                enabled: k.enabled,
                label: k.label.clone(),
                notes: k.notes.clone(),
                max_requests_per_minute: k.max_requests_per_minute,
                max_requests_per_day: k.max_requests_per_day,
                max_tokens_per_minute: k.max_tokens_per_minute,
                status,
            }
        })
        .collect()
}

/// `POST /api/keys`: one key object, a list, or `{"keys": [...]}`.
pub(super) fn add_keys(ctx: &Ctx<'_>) -> Answer {
    let body: Value = match serde_json::from_slice(ctx.body) {
        Ok(v) => v,
        Err(e) => {
            return invalid(
                "no key added",
                &[Problem::new("", format!("not valid JSON: {e}"))],
            );
        }
    };
    let new_keys: Vec<Value> = match body {
        Value::Array(items) => items,
        Value::Object(mut map) if map.contains_key("keys") => match map.remove("keys") {
            Some(Value::Array(items)) => items,
            _ => return invalid("no key added", &[Problem::new("keys", "must be a list")]),
        },
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return invalid(
                "no key added",
                &[Problem::new("", "send a key object or a list")],
            );
        }
    };
    // Each must be a key entry (unknown fields, missing id or key are reported with their place).
    let problems: Vec<Problem> = new_keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            serde_json::from_value::<ApiKeyConfig>(k.clone())
                .err()
                .map(|e| Problem::new(format!("keys[{i}]"), clean_serde_message(&e.to_string())))
        })
        .collect();
    if !problems.is_empty() || new_keys.is_empty() {
        let problems = if new_keys.is_empty() {
            vec![Problem::new("keys", "no key given")]
        } else {
            problems
        };
        return invalid("no key added", &problems);
    }
    edit_tree(ctx, |tree| {
        let keys = api_keys_mut(tree);
        keys.extend(new_keys);
        Ok(())
    })
}

/// `DELETE /api/keys/{id}`.
pub(super) fn delete_key(ctx: &Ctx<'_>, id: &str) -> Answer {
    edit_tree(ctx, |tree| {
        let keys = api_keys_mut(tree);
        let before = keys.len();
        keys.retain(|k| k.get("id").and_then(Value::as_str) != Some(id));
        if keys.len() == before {
            return Err(Box::new(not_found_key(id)));
        }
        Ok(())
    })
}

/// `POST /api/keys/{id}/enable|disable`. Enabling also clears `invalid` and every rest.
pub(super) fn set_key_enabled(ctx: &Ctx<'_>, id: &str, enabled: bool) -> Answer {
    let live = ctx.gateway.live();
    let Some(current) = live.config.gemini.api_keys.iter().find(|k| k.id == id) else {
        return not_found_key(id);
    };
    // The config first: a refused change (a stale If-Match) must leave the key as it was.
    if current.enabled != enabled {
        let res = edit_tree(ctx, |tree| {
            let keys = api_keys_mut(tree);
            match keys
                .iter_mut()
                .find(|k| k.get("id").and_then(Value::as_str) == Some(id))
            {
                Some(Value::Object(k)) => {
                    k.insert("enabled".into(), Value::Bool(enabled));
                    Ok(())
                }
                _ => Err(Box::new(not_found_key(id))),
            }
        });
        if res.status() != StatusCode::OK {
            return res;
        }
    }
    ctx.gateway.store().set_disabled(id, !enabled);
    let kind = if enabled {
        crate::usage::KeyEventKind::Enabled
    } else {
        crate::usage::KeyEventKind::Disabled
    };
    ctx.gateway
        .usage()
        .key_event(id, kind, None, &format!("by {}", ctx.admin.0), None);
    tracing::info!(
        target: "gem_proxy::audit",
        who = %ctx.admin.0,
        key_id = id,
        enabled,
        "key {}",
        if enabled { "enabled" } else { "disabled" }
    );
    match key_views(ctx).into_iter().find(|k| k.id == id) {
        Some(view) => json(StatusCode::OK, &view),
        None => not_found_key(id),
    }
}

/// The result of a live key test.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyTest {
    /// The key's id.
    id: String,
    /// `valid`, `invalid`, `quota_exhausted` or `error`.
    result: &'static str,
    /// The upstream's HTTP status (absent when it could not be reached).
    status: Option<u16>,
    /// Why, when not valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// `POST /api/keys/{id}/test`: lists one model with the key.
pub(super) async fn test_key(ctx: &Ctx<'_>, id: &str) -> Answer {
    let live = ctx.gateway.live();
    let Some(key) = live.keys.keys().find(|k| &*k.id == id).cloned() else {
        return not_found_key(id);
    };
    let uri = match live
        .target
        .uri_for(&"/v1beta/models?pageSize=1".parse().expect("static URI"))
    {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert(X_GOOG_API_KEY.clone(), key.api_key_header.clone());
    let timeout = live.config.gemini.connect_timeout() * 3;
    let outcome = tokio::time::timeout(timeout, live.client.request(req)).await;
    let test = match outcome {
        Err(_) => KeyTest {
            id: id.into(),
            result: "error",
            status: None,
            detail: Some("the upstream did not answer in time".into()),
        },
        Ok(Err(_)) => KeyTest {
            id: id.into(),
            result: "error",
            status: None,
            detail: Some("the upstream could not be reached".into()),
        },
        Ok(Ok(res)) => {
            let status = res.status();
            let body = Limited::new(res.into_body(), 256 * 1024)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let (result, detail) = match classify(status, &body) {
                Verdict::Success => ("valid", None),
                Verdict::Invalid(reason) => ("invalid", Some(reason)),
                Verdict::Rest(..) => ("quota_exhausted", None),
                other => ("error", Some(format!("{other:?}"))),
            };
            KeyTest {
                id: id.into(),
                result,
                status: Some(status.as_u16()),
                detail,
            }
        }
    };
    json(StatusCode::OK, &test)
}

/// What `POST /api/tokens` takes: the options of `gem-proxy token`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    /// The client's identity (`sub`).
    sub: String,
    /// Lifetime such as `30d`, `12h`, `90m` (default `30d`).
    #[serde(default)]
    ttl: Option<String>,
    /// Allowed model patterns, e.g. `gemini-2.5-*`; empty: any model.
    #[serde(default)]
    models: Vec<String>,
    /// The client's own requests per minute.
    #[serde(default)]
    rpm: Option<u32>,
    /// The client's tokens per minute (`tpm`; `0` = none).
    #[serde(default)]
    tpm: Option<u64>,
    /// The client's tokens per UTC day (`tpd`; `0` = none; unset: `auth.default_tokens_per_day`).
    #[serde(default)]
    tpd: Option<u64>,
    /// Live API sessions the client may hold open at once (`live_sessions`; `0` or unset: no
    /// limit).
    #[serde(default)]
    live_sessions: Option<u32>,
    /// `admin` for an admin token; anything else is a client.
    #[serde(default)]
    role: Option<String>,
    /// Request overrides for this client (`overrides` claim): rules shaped like
    /// `gemini.overrides` (`match.models`, `set`, `default`), applied after the configured ones.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    overrides: Vec<crate::config::OverrideRule>,
}

/// An issued token: shown once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IssuedToken {
    /// The token. It is not stored anywhere: keep it now.
    token: String,
    /// Its id, for revoking it.
    jti: String,
    /// When it expires (RFC 3339, UTC).
    expires_at: String,
}

/// `POST /api/tokens`.
pub(super) fn issue_token(ctx: &Ctx<'_>) -> Answer {
    let body: Value = match serde_json::from_slice(ctx.body) {
        Ok(v) => v,
        Err(e) => {
            return invalid(
                "no token issued",
                &[Problem::new("", format!("not valid JSON: {e}"))],
            );
        }
    };
    let problems = numeric_claim_problems(&body);
    if !problems.is_empty() {
        return invalid("no token issued", &problems);
    }
    let new: NewToken = match serde_json::from_value(body) {
        Ok(n) => n,
        Err(e) => {
            return invalid(
                "no token issued",
                &[Problem::new("", clean_serde_message(&e.to_string()))],
            );
        }
    };
    let ttl = match parse_ttl(new.ttl.as_deref().unwrap_or("30d")) {
        Ok(t) => t,
        Err(e) => return invalid("no token issued", &[Problem::new("ttl", e)]),
    };
    let role = match new.role.as_deref() {
        Some("admin") => Role::Admin,
        None | Some("client") | Some("") => Role::Client,
        Some(other) => {
            return invalid(
                "no token issued",
                &[Problem::new(
                    "role",
                    format!("{other:?} is not a role: use admin or client"),
                )],
            );
        }
    };
    let req = TokenRequest {
        sub: new.sub,
        ttl,
        models: new.models,
        rpm: new.rpm,
        tpm: new.tpm,
        tpd: new.tpd,
        live_sessions: new.live_sessions,
        role,
    };
    let live = ctx.gateway.live();
    match issue_with_overrides(&live.config.auth, &req, &new.overrides, unix_now()) {
        Ok(issued) => {
            tracing::info!(
                target: "gem_proxy::audit",
                who = %ctx.admin.0,
                sub = %req.sub,
                jti = %issued.jti,
                role = role.as_str(),
                "token issued"
            );
            json(
                StatusCode::OK,
                &IssuedToken {
                    token: issued.token,
                    jti: issued.jti,
                    expires_at: utc_time(issued.expires_at),
                },
            )
        }
        Err(e @ IssueError::BadOverrides(_)) => invalid(
            "no token issued",
            &[Problem::new("overrides", e.to_string())],
        ),
        Err(e) => invalid(
            "no token issued",
            &[Problem::new("auth.jwt_secret", e.to_string())],
        ),
    }
}

/// The numeric claims `POST /api/tokens` takes, with the largest value each may have.
const NUMERIC_CLAIMS: [(&str, u64); 4] = [
    ("rpm", u32::MAX as u64),
    ("tpm", u64::MAX),
    ("tpd", u64::MAX),
    ("live_sessions", u32::MAX as u64),
];

/// A numeric claim that is negative, fractional or no number at all, by its field (serde's own
/// message would name a type and a column, not the field).
fn numeric_claim_problems(body: &Value) -> Vec<Problem> {
    NUMERIC_CLAIMS
        .iter()
        .filter_map(|&(field, max)| {
            let value = body.get(field).filter(|v| !v.is_null())?;
            match value.as_u64() {
                Some(n) if n <= max => None,
                _ => Some(Problem::new(
                    field,
                    format!("must be a whole number from 0 to {max}"),
                )),
            }
        })
        .collect()
}

/// What `POST /api/tokens/revoke` takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Revoke {
    /// The token id (`jti`) to refuse from now on.
    jti: String,
}

/// `POST /api/tokens/revoke`: adds the id to `auth.revoked_token_ids`.
pub(super) fn revoke_token(ctx: &Ctx<'_>) -> Answer {
    let revoke: Revoke = match serde_json::from_slice(ctx.body) {
        Ok(r) => r,
        Err(e) => {
            return invalid(
                "nothing revoked",
                &[Problem::new("", clean_serde_message(&e.to_string()))],
            );
        }
    };
    if revoke.jti.trim().is_empty() {
        return invalid(
            "nothing revoked",
            &[Problem::new("jti", "must not be empty")],
        );
    }
    edit_tree(ctx, |tree| {
        let auth = object_mut(tree, "auth");
        let ids = auth
            .entry("revoked_token_ids")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !ids.is_array() {
            *ids = Value::Array(Vec::new());
        }
        let list = ids.as_array_mut().expect("just made an array");
        if !list.iter().any(|v| v.as_str() == Some(&revoke.jti)) {
            list.push(Value::String(revoke.jti.clone()));
        }
        Ok(())
    })
}

/// Makes the document `edit` computes from the current one current, like a `PUT`: the edit
/// runs under the versions' write lock, so concurrent edits never lose one another, and with
/// `If-Match` only while the version the client read is still the current one.
fn edit_document(
    ctx: &Ctx<'_>,
    edit: impl FnOnce(&ConfigDocument) -> Result<ConfigDocument, Box<Answer>>,
) -> Answer {
    let expected = match if_match(ctx.headers) {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let live = ctx.gateway.live();
    let result = ctx.gateway.versions().update(
        &ctx.admin.0,
        expected,
        &live.config,
        |doc| edit(doc).map_err(Refusal::Answer),
        |c| ctx.gateway.reload(c),
    );
    share_if_applied(
        ctx,
        matches!(
            result,
            Ok(_) | Err(Refusal::Change(ChangeError::Persist { .. }))
        ),
    );
    match result {
        Ok(applied) => answer_change(Ok(applied)),
        Err(Refusal::Change(e)) => answer_change(Err(e)),
        Err(Refusal::Answer(res)) => *res,
    }
}

/// Tells the other replicas (through a shared state store) about a change applied here, also when
/// it could not be written (a read-only ConfigMap, say).
fn share_if_applied(ctx: &Ctx<'_>, applied: bool) {
    if applied {
        ctx.gateway.share_config(&ctx.admin.0);
    }
}

/// Changes the current document's tree with `edit`, then applies it like a `PUT`.
fn edit_tree(ctx: &Ctx<'_>, edit: impl FnOnce(&mut Value) -> Result<(), Box<Answer>>) -> Answer {
    edit_document(ctx, |doc| {
        let mut tree = doc.tree().clone();
        edit(&mut tree)?;
        ConfigDocument::from_value(tree)
            .map_err(|e| Box::new(invalid("the configuration was not changed", &e.problems())))
    })
}

/// The `ETag` of a config version.
fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes")
}

fn object_mut<'a>(tree: &'a mut Value, key: &str) -> &'a mut serde_json::Map<String, Value> {
    let map = tree
        .as_object_mut()
        .expect("a config document is a mapping");
    let entry = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Default::default()));
    if !entry.is_object() {
        *entry = Value::Object(Default::default());
    }
    entry.as_object_mut().expect("just made a mapping")
}

fn api_keys_mut(tree: &mut Value) -> &mut Vec<Value> {
    let gemini = object_mut(tree, "gemini");
    let keys = gemini
        .entry("api_keys")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !keys.is_array() {
        *keys = Value::Array(Vec::new());
    }
    keys.as_array_mut().expect("just made a list")
}

fn not_found_key(id: &str) -> Answer {
    google_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!("no key with id {id:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokem"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn numeric_claims_are_whole_numbers_named_by_their_field() {
        let fields = |body: Value| -> Vec<String> {
            numeric_claim_problems(&body)
                .into_iter()
                .map(|p| p.path)
                .collect()
        };
        let none: Vec<String> = Vec::new();
        assert_eq!(
            fields(serde_json::json!({"sub": "a", "rpm": 0, "tpd": 5, "live_sessions": 4})),
            none
        );
        assert_eq!(fields(serde_json::json!({"live_sessions": null})), none);
        assert_eq!(
            fields(serde_json::json!({"live_sessions": -1})),
            ["live_sessions"]
        );
        assert_eq!(
            fields(serde_json::json!({"live_sessions": "two"})),
            ["live_sessions"]
        );
        assert_eq!(
            fields(serde_json::json!({"live_sessions": 1.5})),
            ["live_sessions"]
        );
        assert_eq!(
            fields(serde_json::json!({"rpm": 4_294_967_296_u64, "tpm": -3})),
            ["rpm", "tpm"]
        );
    }
}
