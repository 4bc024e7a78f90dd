//! The admin API as an OpenAPI 3 document, generated from the handlers' own types (utoipa), so
//! the description cannot drift from what the API takes and answers.

use serde::Serialize;
use utoipa::{Modify, OpenApi, ToSchema};

use super::handlers::{History, IssuedToken, KeyTest, KeyView, NewToken, Revoke};
use super::usage::{KeyEventView, KeyEvents};
use crate::config::versions::Applied;
use crate::usage::Counts;
use crate::usage::query::{Point, Series, Summary, Top, Totals, UsageReport};

/// Google's error shape, as every admin error is answered.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GoogleError {
    /// The error.
    error: GoogleErrorBody,
}

/// The inside of [`GoogleError`].
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GoogleErrorBody {
    /// The HTTP status.
    code: u16,
    /// What went wrong.
    message: String,
    /// Google's status name (`INVALID_ARGUMENT`, `UNAUTHENTICATED`, …).
    status: String,
    /// For 400s: a `google.rpc.BadRequest` with one field violation per problem.
    #[schema(value_type = Option<Vec<Object>>)]
    details: Option<Vec<serde_json::Value>>,
}

/// The admin API.
#[derive(OpenApi)]
#[openapi(
    info(title = "gem-proxy admin API", description = "Configuration, keys, tokens and usage history of a running gem-proxy."),
    paths(
        paths::get_config,
        paths::put_config,
        paths::history,
        paths::rollback,
        paths::list_keys,
        paths::add_keys,
        paths::delete_key,
        paths::enable_key,
        paths::disable_key,
        paths::test_key,
        paths::key_events,
        paths::usage,
        paths::usage_summary,
        paths::issue_token,
        paths::revoke_token,
    ),
    components(schemas(GoogleError, GoogleErrorBody, Applied, History, KeyView, KeyTest, NewToken, IssuedToken, Revoke,
        Counts, Totals, Point, Series, UsageReport, Top, Summary, KeyEvents, KeyEventView)),
    modifiers(&BearerAuth, &Hardening),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What every route may answer besides its own: 429 after too many failed sign-ins from one
/// address; and, on every change, the `If-Match` header (the config version) with its 412.
struct Hardening;

impl Modify for Hardening {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("GoogleError")))
                        .build(),
                )
                .build()
        };
        let too_many = error("Too many failed admin sign-ins from this address");
        let stale = error("If-Match names a version that is no longer current");
        let if_match = ParameterBuilder::new()
            .name("If-Match")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "The config version the change was made from (the ETag of GET /api/config)",
            ))
            .schema(Some(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String),
            ))
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let changes_config = !path.ends_with("/test") && path != "/api/tokens";
            for (op, is_change) in [
                (item.get.as_mut(), false),
                (item.put.as_mut(), changes_config),
                (item.post.as_mut(), changes_config),
                (item.delete.as_mut(), changes_config),
            ] {
                let Some(op): Option<&mut Operation> = op else {
                    continue;
                };
                op.responses
                    .responses
                    .insert("429".into(), too_many.clone().into());
                if is_change {
                    op.responses
                        .responses
                        .insert("412".into(), stale.clone().into());
                    op.parameters
                        .get_or_insert_with(Vec::new)
                        .push(if_match.clone());
                }
            }
        }
    }
}

/// The document served at `/api/openapi.json`.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Path descriptions only: the handlers themselves are in `handlers.rs`.
#[allow(dead_code)]
mod paths {
    use super::*;

    #[utoipa::path(get, path = "/api/config", tag = "config",
        responses(
            (status = 200, description = "The running config, secrets masked", body = Object),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError)))]
    pub(super) fn get_config() {}

    #[utoipa::path(put, path = "/api/config", tag = "config",
        request_body(content = Object, description = "The whole config; masked secrets keep their current value"),
        responses(
            (status = 200, description = "Applied", body = Applied),
            (status = 400, description = "Invalid: nothing changed", body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError),
            (status = 413, body = GoogleError)))]
    pub(super) fn put_config() {}

    #[utoipa::path(get, path = "/api/config/history", tag = "config",
        responses((status = 200, body = History),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError)))]
    pub(super) fn history() {}

    #[utoipa::path(post, path = "/api/config/rollback/{version}", tag = "config",
        params(("version" = u64, Path, description = "A version from the history")),
        responses((status = 200, body = Applied),
            (status = 400, body = GoogleError), (status = 404, body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError)))]
    pub(super) fn rollback() {}

    #[utoipa::path(get, path = "/api/keys", tag = "keys",
        responses((status = 200, body = Vec<KeyView>),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError)))]
    pub(super) fn list_keys() {}

    #[utoipa::path(post, path = "/api/keys", tag = "keys",
        request_body(content = Object, description = "A key {id, key, weight?, max_requests_per_minute?, …}, a list of them, or {\"keys\": [...]}"),
        responses((status = 200, body = Applied), (status = 400, body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError),
            (status = 413, body = GoogleError)))]
    pub(super) fn add_keys() {}

    #[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys",
        params(("id" = String, Path, description = "The key's id")),
        responses((status = 200, body = Applied), (status = 400, body = GoogleError),
            (status = 404, body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError)))]
    pub(super) fn delete_key() {}

    #[utoipa::path(post, path = "/api/keys/{id}/enable", tag = "keys",
        params(("id" = String, Path, description = "The key's id")),
        responses((status = 200, description = "The key, enabled", body = KeyView),
            (status = 400, body = GoogleError), (status = 404, body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError)))]
    pub(super) fn enable_key() {}

    #[utoipa::path(post, path = "/api/keys/{id}/disable", tag = "keys",
        params(("id" = String, Path, description = "The key's id")),
        responses((status = 200, description = "The key, disabled", body = KeyView),
            (status = 400, body = GoogleError), (status = 404, body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError)))]
    pub(super) fn disable_key() {}

    #[utoipa::path(post, path = "/api/keys/{id}/test", tag = "keys",
        params(("id" = String, Path, description = "The key's id")),
        responses((status = 200, body = KeyTest), (status = 404, body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError)))]
    pub(super) fn test_key() {}

    #[utoipa::path(post, path = "/api/tokens", tag = "tokens",
        request_body = NewToken,
        responses((status = 200, body = IssuedToken), (status = 400, body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError)))]
    pub(super) fn issue_token() {}

    #[utoipa::path(post, path = "/api/tokens/revoke", tag = "tokens",
        request_body = Revoke,
        responses((status = 200, body = Applied), (status = 400, body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError)))]
    pub(super) fn revoke_token() {}

    #[utoipa::path(get, path = "/api/keys/{id}/events", tag = "usage",
        params(("id" = String, Path, description = "The key's id"),
            ("from" = Option<String>, Query, description = "Start: seconds since the epoch or RFC 3339 (default: the whole history)"),
            ("to" = Option<String>, Query, description = "End, exclusive (default: now)")),
        responses((status = 200, description = "The key's rests, invalidations, enable/disable, newest first", body = KeyEvents),
            (status = 400, body = GoogleError), (status = 404, body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError),
            (status = 503, body = GoogleError)))]
    pub(super) fn key_events() {}

    #[utoipa::path(get, path = "/api/usage", tag = "usage",
        params(
            ("from" = Option<String>, Query, description = "Start: seconds since the epoch or RFC 3339 (default: `to` − 24 h)"),
            ("to" = Option<String>, Query, description = "End, exclusive (default: now)"),
            ("step" = Option<String>, Query, description = "1m, 5m, 1h or 1d (default: from the range). Rows older than usage.minute_retention_days are hourly."),
            ("group_by" = Option<String>, Query, description = "key (default), model, client or route"),
            ("format" = Option<String>, Query, description = "json (default) or csv (a download: one line per group and step)")),
        responses((status = 200, description = "Requests, errors, tokens and estimated cost per step and group",
                content((UsageReport = "application/json"), (String = "text/csv"))),
            (status = 400, body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError),
            (status = 503, body = GoogleError)))]
    pub(super) fn usage() {}

    #[utoipa::path(get, path = "/api/usage/summary", tag = "usage",
        params(("window" = Option<String>, Query, description = "How far back: 90m, 24h (default), 7d …")),
        responses((status = 200, description = "Totals, error rate and the busiest keys, models and clients", body = Summary),
            (status = 400, body = GoogleError),
            (status = 401, body = GoogleError), (status = 403, body = GoogleError),
            (status = 503, body = GoogleError)))]
    pub(super) fn usage_summary() {}
}
