//! `GET /api/usage`, `GET /api/usage/summary` and `GET /api/keys/{id}/events`: the usage history
//! ([`crate::usage`]) read back. Reads run on a blocking thread with their own read-only
//! connection, under a time limit, so a stuck disk costs an admin request, never the proxy.

use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;

use super::handlers::Ctx;
use super::{invalid, json, percent_decode};
use crate::body::GatewayBody;
use crate::config::Problem;
use crate::error::google_error;
use crate::time::now_unix as unix_now;
use crate::usage::db::{self, GroupBy};
use crate::usage::query::{
    self, MAX_POINTS, Prices, Summary, UsageReport, auto_step, format_time, parse_step, parse_time,
    parse_window,
};

type Answer = Response<GatewayBody>;

/// Longest an admin read may wait for the database.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Events one answer lists at most.
const MAX_EVENTS: usize = 1000;

/// The query string as `(name, value)` pairs, refusing names not in `allowed` and repeats.
fn params<'a>(
    query: Option<&str>,
    allowed: &[&'a str],
) -> Result<Vec<(&'a str, String)>, Box<Answer>> {
    let mut out: Vec<(&'a str, String)> = Vec::new();
    let mut problems = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(&name.replace('+', " "));
        let value = percent_decode(&value.replace('+', " "));
        match allowed.iter().find(|a| **a == name) {
            Some(a) if out.iter().any(|(n, _)| n == a) => {
                problems.push(Problem::new(name, "given more than once"));
            }
            Some(a) => out.push((a, value)),
            None => problems.push(Problem::new(
                name,
                format!("not a parameter here (use {})", allowed.join(", ")),
            )),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Box::new(invalid("bad query parameters", &problems)))
    }
}

fn get<'p>(params: &'p [(&str, String)], name: &str) -> Option<&'p str> {
    params
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// The database path, or the answer saying the history is off.
fn db_path(ctx: &Ctx<'_>) -> Result<PathBuf, Box<Answer>> {
    ctx.gateway
        .usage()
        .path()
        .map(PathBuf::from)
        .ok_or_else(|| {
            Box::new(google_error(
                StatusCode::BAD_REQUEST,
                "FAILED_PRECONDITION",
                "the usage history is off (usage.enabled: false, or not started)",
            ))
        })
}

/// Runs `read` on a blocking thread with a read-only connection to `path`. A file not written
/// yet reads as empty (`empty`).
async fn read<T: Send + 'static>(
    path: PathBuf,
    empty: impl FnOnce() -> T + Send + 'static,
    read: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, Box<Answer>> {
    let task = tokio::task::spawn_blocking(move || {
        if !path.exists() {
            return Ok(empty());
        }
        let conn = db::open_for_reading(&path)?;
        match read(&conn) {
            // The writer has not made the tables yet.
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains("no such table") => {
                Ok(empty())
            }
            other => other,
        }
    });
    let unavailable = |msg: &str| {
        Box::new(google_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            msg,
        ))
    };
    match tokio::time::timeout(READ_TIMEOUT, task).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "usage history: read failed");
            Err(unavailable("the usage history could not be read"))
        }
        Ok(Err(_)) => Err(unavailable("the usage history read failed")),
        Err(_) => Err(unavailable(
            "the usage history did not answer in time (its disk may be stalled)",
        )),
    }
}

/// `from` and `to` from the parameters: defaults `to` = now, `from` = `to` − 24 h.
fn range(params: &[(&str, String)], problems: &mut Vec<Problem>) -> (i64, i64) {
    let now = unix_now();
    let mut time = |name: &str, default: i64| match get(params, name) {
        None => default,
        Some(v) => parse_time(v).unwrap_or_else(|| {
            problems.push(Problem::new(
                name,
                format!("{v:?} is not a time: use seconds since the epoch or RFC 3339"),
            ));
            default
        }),
    };
    let to = time("to", now);
    let from = time("from", to - 86_400);
    if from >= to {
        problems.push(Problem::new("from", "must be before to"));
    }
    (from, to)
}

/// `GET /api/usage?from=&to=&step=&group_by=&format=`.
pub(super) async fn usage(ctx: &Ctx<'_>, query: Option<&str>) -> Answer {
    let params = match params(query, &["from", "to", "step", "group_by", "format"]) {
        Ok(p) => p,
        Err(res) => return *res,
    };
    let mut problems = Vec::new();
    let (from, to) = range(&params, &mut problems);
    let (step_name, step) = match get(&params, "step") {
        None => auto_step(to - from),
        Some(s) => parse_step(s).unwrap_or_else(|| {
            problems.push(Problem::new(
                "step",
                format!("{s:?} is not a step: use 1m, 5m, 1h or 1d"),
            ));
            auto_step(to - from)
        }),
    };
    if (to - from) / step > MAX_POINTS {
        problems.push(Problem::new(
            "step",
            format!("too small for this range (more than {MAX_POINTS} points)"),
        ));
    }
    let group = match get(&params, "group_by") {
        None => GroupBy::Key,
        Some(g) => GroupBy::parse(g).unwrap_or_else(|| {
            problems.push(Problem::new(
                "group_by",
                format!("{g:?}: use key, model, client or route"),
            ));
            GroupBy::Key
        }),
    };
    let csv = match get(&params, "format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(f) => {
            problems.push(Problem::new("format", format!("{f:?}: use json or csv")));
            false
        }
    };
    if !problems.is_empty() {
        return invalid("bad usage query", &problems);
    }
    let path = match db_path(ctx) {
        Ok(p) => p,
        Err(res) => return *res,
    };
    let prices = Prices::new(&ctx.gateway.live().config.usage.prices);
    let read = read(
        path,
        || (Vec::new(), Vec::new()),
        move |conn| {
            Ok((
                db::read_cells(conn, from, to, step, group)?,
                db::replicas(conn)?,
            ))
        },
    )
    .await;
    let (cells, replicas) = match read {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let (totals, groups) = query::series(&cells, &prices);
    let report = UsageReport {
        from: format_time(from),
        to: format_time(to),
        step: step_name.to_owned(),
        step_seconds: step,
        group_by: group.as_str().to_owned(),
        replicas,
        totals,
        groups,
    };
    if !csv {
        return json(StatusCode::OK, &report);
    }
    let mut res = Response::new(GatewayBody::full(query::csv(&report)));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    let name = format!(
        "attachment; filename=\"usage-{}-{from}-{to}.csv\"",
        group.as_str()
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `GET /api/usage/summary?window=24h`.
pub(super) async fn summary(ctx: &Ctx<'_>, query: Option<&str>) -> Answer {
    let params = match params(query, &["window"]) {
        Ok(p) => p,
        Err(res) => return *res,
    };
    let window_name = get(&params, "window").unwrap_or("24h").to_owned();
    let max = i64::from(ctx.gateway.live().config.usage.retention_days.max(1)) * 86_400;
    let Some(window) = parse_window(&window_name).filter(|&w| w <= max) else {
        return invalid(
            "bad usage summary query",
            &[Problem::new(
                "window",
                format!(
                    "{window_name:?} is not a window: use e.g. 90m, 24h, 7d (at most usage.retention_days)"
                ),
            )],
        );
    };
    let path = match db_path(ctx) {
        Ok(p) => p,
        Err(res) => return *res,
    };
    let to = unix_now() + 1;
    let from = to - window;
    let prices = Prices::new(&ctx.gateway.live().config.usage.prices);
    let step = i64::MAX / 2;
    let read = read(
        path,
        || (Vec::new(), Vec::new(), Vec::new()),
        move |conn| {
            Ok((
                db::read_cells(conn, from, to, step, GroupBy::Key)?,
                db::read_cells(conn, from, to, step, GroupBy::Model)?,
                db::read_cells(conn, from, to, step, GroupBy::Client)?,
            ))
        },
    )
    .await;
    let (keys, models, clients) = match read {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let (totals, keys) = query::top(&keys, &prices);
    let summary = Summary {
        window: window_name,
        from: format_time(from),
        to: format_time(to),
        totals,
        keys,
        models: query::top(&models, &prices).1,
        clients: query::top(&clients, &prices).1,
    };
    json(StatusCode::OK, &summary)
}

/// One event of a key.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyEventView {
    /// When (RFC 3339).
    time: String,
    /// `rest`, `invalid`, `disabled` or `enabled`.
    kind: String,
    /// The model a rest is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// Why: the rest's reason (`rate_limited`, `exhausted_today`, `unusable`), Google's reason
    /// for an invalid key, or who enabled or disabled it.
    reason: String,
    /// How long a rest lasts, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<u64>,
    /// The replica that saw it.
    replica: String,
}

/// `GET /api/keys/{id}/events`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyEvents {
    /// The key's id.
    key: String,
    /// Its events, newest first.
    events: Vec<KeyEventView>,
}

/// `GET /api/keys/{id}/events?from=&to=`.
pub(super) async fn key_events(ctx: &Ctx<'_>, id: &str, query: Option<&str>) -> Answer {
    let params = match params(query, &["from", "to"]) {
        Ok(p) => p,
        Err(res) => return *res,
    };
    let mut problems = Vec::new();
    let now = unix_now();
    let (from, to) = {
        let (f, t) = range(&params, &mut problems);
        // Without `from`, the whole history.
        let f = if get(&params, "from").is_none() { 0 } else { f };
        (
            f,
            if get(&params, "to").is_none() {
                now + 1
            } else {
                t
            },
        )
    };
    if !problems.is_empty() {
        return invalid("bad key events query", &problems);
    }
    let path = match db_path(ctx) {
        Ok(p) => p,
        Err(res) => return *res,
    };
    let known = ctx
        .gateway
        .live()
        .config
        .gemini
        .api_keys
        .iter()
        .any(|k| k.id == id);
    let key = id.to_owned();
    let read = read(path, Vec::new, move |conn| {
        db::read_key_events(conn, &key, from, to, MAX_EVENTS)
    })
    .await;
    let events = match read {
        Ok(v) => v,
        Err(res) => return *res,
    };
    if !known && events.is_empty() {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no key with id {id:?}"),
        );
    }
    let events = events
        .into_iter()
        .map(|e| KeyEventView {
            time: format_time(e.at),
            kind: e.kind,
            model: e.model,
            reason: e.reason,
            seconds: e.seconds,
            replica: e.replica,
        })
        .collect();
    json(
        StatusCode::OK,
        &KeyEvents {
            key: id.to_owned(),
            events,
        },
    )
}
