//! The admin listener (`metrics.prometheus_port`): `GET /health` for probes, `GET /metrics`
//! (Prometheus text format), `GET /performance` (QPS, success rate, latency percentiles, overall
//! and per key), `GET /errors` (error counts and the last 100 errors), the admin API under
//! `/api/` (see [`crate::api`]), and the web console on every other `GET` path (see
//! [`crate::console`]). `/health/live` and `/health/ready` are for Kubernetes probes.

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;

use crate::api::sign_in::SignInGuard;
use crate::body::GatewayBody;
use crate::error::google_error;
use crate::gateway::Gateway;
use crate::stack::{PanicResponse, ProxyBody};

/// The admin service. A panic in a handler is answered with Google's 500 shape (the same
/// catch-panic as the proxy stack), never a dropped connection.
pub fn service<B>(
    gateway: Arc<Gateway>,
) -> impl Service<Request<B>, Response = Response<ProxyBody>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let guard = Arc::new(SignInGuard::new());
    let handlers = tower::service_fn(move |req: Request<B>| {
        let gateway = gateway.clone();
        let guard = guard.clone();
        async move {
            if req.uri().path().starts_with("/api/") {
                return Ok::<_, Infallible>(crate::api::handle(gateway, &guard, req).await);
            }
            Ok(route(&gateway, &guard, &req))
        }
    });
    ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(PanicResponse))
        .service(handlers)
}

/// With `admin.protect_observability`, whether the request carries the admin credential:
/// `Err` is the refusal to answer with.
fn observer<B>(
    gateway: &Gateway,
    guard: &SignInGuard,
    req: &Request<B>,
) -> Result<(), Box<Response<GatewayBody>>> {
    if !gateway.live().config.admin.protect_observability {
        return Ok(());
    }
    let ip = crate::api::client_ip_of(gateway, req.headers(), req.extensions());
    crate::api::authorize(gateway, guard, ip, req.headers()).map(|_| ())
}

/// `/metrics` without the per-client series (`gem_proxy_client_*`, their `# HELP` and `# TYPE`
/// lines included).
fn without_client_series(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let name = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .unwrap_or(line);
            !name.starts_with("gem_proxy_client_")
        })
        .flat_map(|line| [line, "\n"])
        .collect()
}

fn route<B>(gateway: &Gateway, guard: &SignInGuard, req: &Request<B>) -> Response<GatewayBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/health") => json(StatusCode::OK, &health(gateway)),
        // Kubernetes probes: alive while the process serves; ready while a key can be used.
        (&Method::GET | &Method::HEAD, "/health/live") => {
            json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
        }
        (&Method::GET | &Method::HEAD, "/health/ready") => {
            let usable = usable_keys(gateway);
            let status = if usable > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                status,
                &serde_json::json!({
                    "status": if usable > 0 { "ready" } else { "no usable key" },
                    "usable_keys": usable,
                    "config_version": gateway.versions().version(),
                }),
            )
        }
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut text = gateway.metrics().render();
            // Scrapers without the credential still get everything but the client names.
            if observer(gateway, guard, req).is_err() {
                text = without_client_series(&text);
            }
            let mut res = Response::new(GatewayBody::full(text));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            res
        }
        (&Method::GET | &Method::HEAD, "/performance") => {
            json(StatusCode::OK, &gateway.metrics().performance())
        }
        (&Method::GET | &Method::HEAD, "/errors") => match observer(gateway, guard, req) {
            Ok(()) => json(StatusCode::OK, &gateway.metrics().errors()),
            Err(refused) => *refused,
        },
        (
            _,
            path @ ("/health" | "/health/live" | "/health/ready" | "/metrics" | "/performance"
            | "/errors"),
        ) => google_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "INVALID_ARGUMENT",
            &format!("use GET {path}"),
        ),
        // The web console: its assets, and its page for every other path (client-side routes).
        (&Method::GET | &Method::HEAD, _) => crate::console::respond(req),
        (_, path) => google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no admin route {path}"),
        ),
    }
}

/// `/health`: liveness with version, uptime, each key's state (never the key itself), and the
/// served TLS certificate (source, names, expiry).
fn health(gateway: &Gateway) -> serde_json::Value {
    let live = gateway.live();
    let now = tokio::time::Instant::now();
    let store = gateway.store();
    let mut counts = std::collections::BTreeMap::from([
        ("active", 0u32),
        ("cooling", 0),
        ("invalid", 0),
        ("disabled", 0),
    ]);
    let cache = gateway.cache().stats();
    let states: Vec<serde_json::Value> = live
        .keys
        .keys()
        .map(|k| {
            let mut status = store.status(&k.id, now);
            if !live.keys.is_enabled(&k.id) {
                status.state = "disabled";
            }
            *counts.entry(status.state).or_default() += 1;
            let mut v = serde_json::to_value(&status).unwrap_or_default();
            v["id"] = serde_json::Value::from(&*k.id);
            if let Some(vertex) = &k.vertex {
                v["vertex"] = vertex.health(now);
            }
            if let Some(proxy) = live.egress.for_key(&k.id) {
                v["proxy"] = serde_json::Value::from(proxy.shown());
            }
            v
        })
        .collect();
    serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": gateway.started().elapsed().as_secs(),
        "keys": {
            "total": live.keys.len(),
            "active": counts["active"],
            "cooling": counts["cooling"],
            "invalid": counts["invalid"],
            "disabled": counts["disabled"],
        },
        "key_states": states,
        "state": store.backend(),
        "tls": gateway.tls().health(),
        "cache": {
            "enabled": live.config.cache.enabled,
            "entries": cache.entries,
            "bytes": cache.bytes,
            "max_bytes": live.config.cache.max_bytes,
            "evicted": cache.evicted,
        },
        "config": {
            "version": gateway.versions().version(),
            "rejected_edit": gateway.versions().rejected_edit(),
        },
    })
}

/// Keys that are enabled and not invalid (resting keys count: they come back by themselves), and
/// Vertex members that can sign in.
fn usable_keys(gateway: &Gateway) -> usize {
    let live = gateway.live();
    let now = tokio::time::Instant::now();
    live.keys
        .keys()
        .filter(|k| live.keys.is_enabled(&k.id))
        .filter(|k| {
            k.vertex
                .as_ref()
                .is_none_or(|v| v.unusable_reason(now).is_none())
        })
        .filter(|k| {
            !matches!(
                gateway.store().status(&k.id, now).state,
                "invalid" | "disabled"
            )
        })
        .count()
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<GatewayBody> {
    let mut res = Response::new(GatewayBody::full(value.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
